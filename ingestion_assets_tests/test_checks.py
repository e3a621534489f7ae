"""Data-quality checks pass on good data and fail, with actionable metadata, on data broken on purpose."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import pyarrow as pa
import pytest
from dagster import (
    AssetIn,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    ExecuteInProcessResult,
    asset,
    materialize,
)
from deltalake import DeltaTable, write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion_assets.checks import (
    AuditData,
    key_violations,
    keys_by_day,
    row_count,
    schema_contract,
)
from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets_tests.conftest import (
    IngestProject,
    SourceDatabase,
    build_project,
    table_entry,
)

DAY = "2024-01-04"
KEY = AssetKey(["src", "sales_order_header"])


def _project(database: SourceDatabase, lake: pathlib.Path, **checks: Any) -> IngestProject:
    database.load_demo()
    entry = table_entry(database, "Sales.SalesOrderHeader")
    if checks:
        entry["checks"] = checks
    return build_project(database, lake, [entry])


def _run_checks(project: IngestProject, instance: DagsterInstance) -> dict[str, Any]:
    """Run every check of the header table for DAY; name -> evaluation."""
    # the asset's own checks, and the checks of their own on it (reconciliation), if any
    checks = [
        definition
        for definition in project.defs.asset_checks or []
        if any(key.asset_key == KEY for key in definition.check_keys)
    ]
    result = materialize(
        [project.asset("sales_order_header"), *checks],
        instance=instance,
        resources=project.defs.resources,
        # a checks-only selection has no asset to take the partition from: name it by tag
        tags={"dagster/partition": DAY},
        selection=AssetSelection.checks_for_assets(KEY),
        raise_on_error=False,
    )
    return {
        evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()
    }


def _rewrite(project: IngestProject, change: Any) -> None:
    """Replace the Delta table's content with `change(table)`, as a broken writer would."""
    uri = project.table_uri("sales_order_header")
    table = DeltaTable(uri).to_pyarrow_table()
    write_deltalake(
        uri, change(table), mode="overwrite", schema_mode="overwrite", partition_by=[PARTITION_DATE]
    )


@pytest.fixture
def checked(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> IngestProject:
    project = _project(sqlite_database, tmp_path / "lake")
    assert project.materialize(["sales_order_header"], instance, partition=DAY).success
    return project


def test_every_check_passes_on_good_data(checked: IngestProject, instance: DagsterInstance) -> None:
    evaluations = _run_checks(checked, instance)
    assert set(evaluations) == {
        "schema_contract",
        "row_count",
        "primary_key",
        "unpartitioned_rows",
    }
    for name, evaluation in evaluations.items():
        assert evaluation.passed, (name, evaluation.description)
    rows = evaluations["row_count"].metadata
    assert rows["lake_rows"].value == rows["source_rows"].value > 0
    assert rows["difference"].value == 0
    assert {evaluation.partition for evaluation in evaluations.values()} == {DAY, None}


def test_a_dropped_column_and_a_changed_type_fail_the_schema_contract(
    checked: IngestProject, instance: DagsterInstance
) -> None:
    def drop_and_retype(table: pa.Table) -> pa.Table:
        table = table.drop_columns(["Comment"])
        status = table.schema.get_field_index("Status")
        return table.set_column(status, "Status", table.column("Status").cast(pa.string()))

    _rewrite(checked, drop_and_retype)
    evaluation = _run_checks(checked, instance)["schema_contract"]
    assert not evaluation.passed
    assert evaluation.metadata["missing_columns"].value == ["Comment"]
    assert evaluation.metadata["changed_columns"].value == {"Status": "int16 -> string"}
    assert evaluation.severity.value == "ERROR"


def test_deleted_rows_fail_the_reconciliation_with_both_numbers(
    checked: IngestProject, instance: DagsterInstance
) -> None:
    DeltaTable(checked.table_uri("sales_order_header")).delete('"SalesOrderID" % 3 = 0')
    evaluation = _run_checks(checked, instance)["row_count"]
    assert not evaluation.passed
    lake, source = evaluation.metadata["lake_rows"].value, evaluation.metadata["source_rows"].value
    assert lake < source
    assert evaluation.metadata["difference"].value == lake - source


def test_a_duplicate_and_a_null_key_fail_the_key_check_with_samples(
    checked: IngestProject, instance: DagsterInstance
) -> None:
    def break_keys(table: pa.Table) -> pa.Table:
        first = table.slice(0, 1)
        no_key = table.slice(1, 1).set_column(
            table.schema.get_field_index("SalesOrderID"),
            "SalesOrderID",
            pa.nulls(1, table.schema.field("SalesOrderID").type),
        )
        return pa.concat_tables([table, first, no_key])

    _rewrite(checked, break_keys)
    evaluation = _run_checks(checked, instance)["primary_key"]
    assert not evaluation.passed
    assert evaluation.metadata["duplicate_keys"].value == 1
    assert evaluation.metadata["null_keys"].value == 1
    sample = evaluation.metadata["duplicate_sample"].value
    assert sample[0]["copies"] == 2
    assert "SalesOrderID" in sample[0]


def test_a_failing_blocking_check_stops_a_downstream_asset(
    checked: IngestProject, instance: DagsterInstance
) -> None:
    DeltaTable(checked.table_uri("sales_order_header")).delete('"SalesOrderID" % 2 = 0')
    header = checked.asset("sales_order_header")

    @asset(
        key=["clean", "orders"],
        partitions_def=header.partitions_def,
        ins={"orders": AssetIn(key=KEY)},
        metadata={"ingestion/partition_column": "day"},
    )
    def clean_orders(orders: pa.Table) -> pa.Table:
        return pa.table({"day": orders.column(PARTITION_DATE)})

    result: ExecuteInProcessResult = materialize(
        [header, clean_orders],
        instance=instance,
        resources=checked.defs.resources,
        partition_key=DAY,
        selection=AssetSelection.checks_for_assets(KEY) | AssetSelection.assets(clean_orders),
        raise_on_error=False,
    )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["row_count"].passed
    assert not result.success
    assert not result.asset_materializations_for_node("clean__orders")
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "src__sales_order_header" in started
    assert "clean__orders" not in started, "a failed blocking check must hold the step back"


def test_check_functions_report_what_a_person_needs() -> None:
    contract = schema_contract({"a": "int32", "b": "string"}, {"a": "int64", "c": "string"}, True)
    assert not contract.passed
    assert contract.metadata["missing_columns"] == ["b"]
    assert contract.metadata["changed_columns"] == {"a": "int32 -> int64"}
    assert contract.metadata["added_columns"] == ["c"]
    frozen = schema_contract({"a": "int32"}, {"a": "int32", "c": "string"}, allow_added=False)
    assert not frozen.passed
    days = [datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)]
    counted = row_count({days[0]: 5}, days, min_rows=1, source_rows=5)
    assert not counted.passed
    assert counted.metadata["days_below_min_rows"] == ["2024-01-02"]
    keys = key_violations(pa.table({"k": [1, 1, 2, None], PARTITION_DATE: days * 2}), ["k"])
    assert keys.metadata["duplicate_keys"] == 1
    assert keys.metadata["null_keys"] == 1


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.one_of(st.none(), st.integers(0, 8)), st.integers(0, 3)), max_size=30
    ),
    kept=st.lists(st.integers(0, 12), max_size=10),
)
def test_a_day_fails_the_key_audit_exactly_when_one_of_its_rows_has_a_null_or_shared_key(
    rows: list[tuple[int | None, int]], kept: list[int]
) -> None:
    first = datetime.date(2024, 1, 1)
    window = PartitionWindow.of_days(first, first + datetime.timedelta(days=3))
    keys = pa.table(
        {
            "k": pa.array([key for key, _ in rows], pa.int64()),
            PARTITION_DATE: pa.array(
                [first + datetime.timedelta(days=day) for _, day in rows], pa.date32()
            ),
        }
    )
    data = AuditData(window, {}, keys=keys, other_keys=pa.table({"k": pa.array(kept, pa.int64())}))

    verdicts = keys_by_day(data, ["k"])

    every_key = [key for key, _ in rows if key is not None] + kept
    for offset in range(4):
        day = first + datetime.timedelta(days=offset)
        on_day = [key for key, row_day in rows if row_day == offset]
        bad = any(key is None or every_key.count(key) > 1 for key in on_day)
        assert verdicts[day].passed is not bad, (day, on_day, kept)
