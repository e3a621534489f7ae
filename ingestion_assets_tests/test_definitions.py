"""The demo project's graph, pinned by name: what `dagster dev` loads from `ingestion_assets`.

Every table and stream of ingestion_assets/demo/ingestion.yaml gives one asset and its checks;
every job, schedule and sensor resolves by name. A change to any name fails here on purpose.
"""

from __future__ import annotations

import datetime

import pytest
from dagster import AssetKey, Definitions, FreshnessPolicy

from ingestion_assets.definitions import defs
from ingestion_assets.project import DEMO_PROJECT_FILE
from ingestion_assets.specs import snake_case

ORDER_ASSETS = {
    "sales_order_header",
    "sales_order_detail",
    "purchase_order_header",
    "purchase_order_detail",
}
# the landing zone's files: daily currency rates, the product export as Parquet and NDJSON
LANDING_ASSETS = {
    f"landing/{name}" for name in ("currency_rate", "product_parquet", "product_ndjson")
}
ASSET_KEYS = {
    *(f"adventureworks/{name}" for name in {*ORDER_ASSETS, "product", "vendor", "customer"}),
    *(f"adventureworks_api/{name}" for name in ORDER_ASSETS),
    *LANDING_ASSETS,
}
# the demo's silver and gold layers and their checks: their expectations and primary keys
LAYER_CHECKS = {
    "silver/sales_orders": {
        "non_negative_quantity_and_price",
        "ordered_before_shipped",
        "known_customer",
        "primary_key",
    },
    "gold/daily_revenue_by_territory": {"primary_key"},
    "gold/daily_sales_by_product": {"positive_revenue", "primary_key"},
}
# the checks every table gets by default (the demo file turns none off)
CHECKS = {"schema_contract", "row_count", "primary_key"}
JOBS = {
    "ingest_adventureworks",
    "ingest_adventureworks_api",
    "ingest_landing",
    "build_layers",
    "maintain_tables",
    "check_sources",
}
SCHEDULE_JOBS = {
    "ingest_adventureworks_daily": "ingest_adventureworks",
    "ingest_adventureworks_api_daily": "ingest_adventureworks_api",
    "ingest_landing_daily": "ingest_landing",
    "maintain_tables_schedule": "maintain_tables",
}
SENSORS = {
    "adventureworks_new_data",
    "adventureworks_api_new_data",
    "landing_new_data",
    "ingestion_run_failures",
    # the layers follow their inputs' days (declarative automation)
    "default_automation_condition_sensor",
}


@pytest.fixture
def demo_defs(monkeypatch: pytest.MonkeyPatch) -> Definitions:
    """The definitions of the demo file, loaded through the module's `defs` as Dagster does."""
    monkeypatch.delenv("INGEST_PROJECT_FILE", raising=False)
    # the demo file names the demo API's variables; loading only checks that they are set
    monkeypatch.setenv("DEMO_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("DEMO_API_PASSWORD", "not-used")
    return defs()


def test_every_demo_table_stream_and_layer_is_one_asset(demo_defs: Definitions) -> None:
    keys = [key.to_user_string() for key in demo_defs.resolve_all_asset_keys()]
    assert len(keys) == len(set(keys))
    assert set(keys) == ASSET_KEYS | set(LAYER_CHECKS)
    # bronze -> silver -> gold
    graph = demo_defs.resolve_asset_graph()
    assert {
        key.to_user_string() for key in graph.get(AssetKey(["silver", "sales_orders"])).parent_keys
    } == {
        "adventureworks/sales_order_header",
        "adventureworks/sales_order_detail",
        "adventureworks/customer",
    }
    for gold in ("daily_revenue_by_territory", "daily_sales_by_product"):
        assert graph.get(AssetKey(["gold", gold])).parent_keys == {
            AssetKey(["silver", "sales_orders"])
        }


MERGE_CHECKS = {
    "adventureworks/customer": {"current_keys_unique", "current_rows_match_source"},
    # an SCD type 2 dimension: its versions are judged too
    "adventureworks/product": {
        "current_keys_unique",
        "current_rows_match_source",
        "history_unbroken",
    },
}


def test_every_demo_asset_has_its_three_checks_and_no_other(demo_defs: Definitions) -> None:
    checks = {
        (check.asset_key.to_user_string(), check.name)
        for check in demo_defs.resolve_asset_graph().asset_check_keys
    }
    # and the partitioned SQL tables a table-wide count of the rows no partition reaches
    unreachable = {(f"adventureworks/{name}", "unpartitioned_rows") for name in ORDER_ASSETS}
    replaced = {(key, name) for key in ASSET_KEYS - set(MERGE_CHECKS) for name in CHECKS}
    merged = {(key, name) for key, names in MERGE_CHECKS.items() for name in names}
    layers = {(key, name) for key, names in LAYER_CHECKS.items() for name in names}
    assert checks == replaced | unreachable | merged | layers


def test_every_demo_job_schedule_and_sensor_resolves_by_name(demo_defs: Definitions) -> None:
    assert {job.name for job in demo_defs.jobs or []} == JOBS
    for name in JOBS:
        assert demo_defs.resolve_job_def(name).name == name
    assert {schedule.name for schedule in demo_defs.schedules or []} == set(SCHEDULE_JOBS)
    for name, job_name in SCHEDULE_JOBS.items():
        assert demo_defs.resolve_schedule_def(name).job_name == job_name
    assert {sensor.name for sensor in demo_defs.sensors or []} == SENSORS
    for name in SENSORS:
        assert demo_defs.resolve_sensor_def(name).name == name


def _assert_links_to_its_entry(demo_defs: Definitions, key: str) -> None:
    lines = DEMO_PROJECT_FILE.read_text().splitlines()
    asset = demo_defs.get_assets_def(AssetKey.from_user_string(key))
    metadata = asset.metadata_by_key[asset.key]
    assert "dagster/code_references" in metadata, key
    references = metadata["dagster/code_references"].code_references
    assert len(references) == 1, key
    reference = references[0]
    assert reference.file_path == str(DEMO_PROJECT_FILE.resolve())
    # the line where the table's or stream's own entry begins (`- schema: ...` or
    # `- name: ...`), its name on it or on one of the next lines
    assert lines[reference.line_number - 1].lstrip().startswith("- "), key
    entry = lines[reference.line_number - 1 : reference.line_number + 3]
    names = [line.split("name:", 1)[1].strip() for line in entry if " name:" in f" {line}"]
    assert snake_case(names[0]) == key.split("/")[1], (key, entry)


def test_every_ingestion_asset_links_to_its_entry_in_the_project_file(
    demo_defs: Definitions,
) -> None:
    for key in ASSET_KEYS - LANDING_ASSETS:
        _assert_links_to_its_entry(demo_defs, key)
    for key in ASSET_KEYS:
        # and shows who owns it
        asset = demo_defs.get_assets_def(AssetKey.from_user_string(key))
        assert asset.specs_by_key[asset.key].owners == ["team:data-platform"], key


def test_every_landing_dataset_links_to_its_entry_in_the_project_file(
    demo_defs: Definitions,
) -> None:
    for key in sorted(LANDING_ASSETS):
        _assert_links_to_its_entry(demo_defs, key)


def test_the_demo_tables_carry_a_freshness_policy_and_no_automation_condition(
    demo_defs: Definitions,
) -> None:
    daily = FreshnessPolicy.time_window(
        fail_window=datetime.timedelta(hours=25), warn_window=datetime.timedelta(hours=24)
    )
    for key in ASSET_KEYS:
        asset = demo_defs.get_assets_def(AssetKey.from_user_string(key))
        spec = asset.specs_by_key[asset.key]
        # the SQL source sets one for its tables; the API's streams and the files have none
        assert spec.freshness_policy == (daily if key.startswith("adventureworks/") else None), key
        # the demo runs by its schedules and sensors: no condition, so no automation sensor
        assert spec.automation_condition is None, key
