"""`python -m ingestion_assets.demo change`: the demo's new-data sensor requests exactly the days
it changed, and the demo API serves the change."""

from __future__ import annotations

import datetime
import pathlib
import re
import sqlite3
from typing import Any

import pytest
import requests
from dagster import AssetKey, DagsterInstance, Definitions, build_sensor_context, materialize
from deltalake import DeltaTable

from ingestion_assets.definitions import build_definitions
from ingestion_assets.demo.__main__ import main
from ingestion_assets.demo.api import DemoApi
from ingestion_assets.demo.change import CORRECTION
from ingestion_assets.demo.generate import DemoScale, create_demo_sqlite
from ingestion_assets.demo.landing import write_landing_files
from ingestion_assets.project import DEMO_PROJECT_FILE, load_project

# the demo's 120 days (its project file's partitions), few orders a day
SCALE = DemoScale(days=120, orders_per_day=4)
OLD_DAY, NEW_DAY = "2024-01-30", "2024-04-29"


def _demo_project(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[pathlib.Path, Definitions]:
    """A demo database in `tmp_path` and the demo project's definitions over it."""
    # the demo project file names .data/demo relative to the working directory
    monkeypatch.chdir(tmp_path)
    demo = tmp_path / ".data" / "demo"
    create_demo_sqlite(demo, SCALE)
    write_landing_files(tmp_path / ".data" / "landing", demo, SCALE)
    monkeypatch.setenv("DEMO_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("DEMO_API_PASSWORD", "not-used")
    return demo, build_definitions(load_project(DEMO_PROJECT_FILE))


def _tick(defs: Definitions, instance: DagsterInstance, cursor: str | None) -> Any:
    sensor = defs.resolve_sensor_def("adventureworks_new_data")
    with build_sensor_context(
        instance=instance, cursor=cursor, resources=defs.resources, definitions=defs
    ) as context:
        return sensor.evaluate_tick(context)


def _requested(result: Any) -> set[tuple[str, str]]:
    """(asset, partition) of each run request; the demo's changed days are not contiguous."""
    requested = set()
    for request in result.run_requests:
        assert request.partition_key, request
        for key in request.asset_selection:
            requested.add((key.to_user_string(), request.partition_key))
    return requested


def _orders(demo: pathlib.Path, day: str) -> dict[int, tuple[str | None, str]]:
    """SalesOrderID -> (Comment, LoadedAt) of a day's orders, from the SQLite file."""
    connection = sqlite3.connect(demo / "Sales.db")
    try:
        rows = connection.execute(
            'SELECT "SalesOrderID", "Comment", "LoadedAt" FROM "SalesOrderHeader" '
            'WHERE substr("ModifiedDate", 1, 10) = ?',
            (day,),
        ).fetchall()
    finally:
        connection.close()
    return {order: (comment, loaded) for order, comment, loaded in rows}


def _api_orders(api: DemoApi, password: str, day: str) -> dict[int, dict[str, Any]]:
    """The day's SalesOrderHeader records from the demo API, by key."""
    next_day = (datetime.date.fromisoformat(day) + datetime.timedelta(days=1)).isoformat()
    response = requests.get(
        f"{api.url}/api/SalesOrderHeader",
        params={
            "ModifiedDate_gte": f"{day}T00:00:00",
            "ModifiedDate_lt": f"{next_day}T00:00:00",
            "limit": "500",
        },
        auth=("demo", password),
        timeout=30,
    )
    response.raise_for_status()
    return {record["SalesOrderID"]: record for record in response.json()["data"]}


def test_demo_change_makes_the_sensor_request_exactly_its_two_days_of_the_sales_tables(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    instance: DagsterInstance,
    capsys: pytest.CaptureFixture[str],
) -> None:
    demo, defs = _demo_project(tmp_path, monkeypatch)

    first = _tick(defs, instance, None)
    assert not first.run_requests
    assert "cursor set" in first.skip_message
    unchanged = _tick(defs, instance, first.cursor)
    assert not unchanged.run_requests
    before = {day: _orders(demo, day) for day in (OLD_DAY, NEW_DAY)}

    assert main(["change"]) == 0
    printed = capsys.readouterr().out
    assert (
        f"the sensor adventureworks_new_data should request partitions {OLD_DAY} and {NEW_DAY} "
        "of adventureworks/sales_order_header and adventureworks/sales_order_detail"
    ) in printed, printed
    assert f"Sales.SalesOrderHeader  {OLD_DAY}: 2 updated, 3 added; {NEW_DAY}: 3 added" in printed
    late = tmp_path / ".data" / "landing" / "currency_rates" / "2024-04-29_late.tsv"
    assert f"dropped {late.relative_to(tmp_path)} (" in printed, printed
    assert "partition 2024-04-29 of landing/currency_rate" in printed, printed
    assert len(late.read_text().splitlines()) > 0

    changed = _tick(defs, instance, unchanged.cursor)
    assert _requested(changed) == {
        (asset, day)
        for asset in ("adventureworks/sales_order_header", "adventureworks/sales_order_detail")
        for day in (OLD_DAY, NEW_DAY)
    }
    # requested once: the next tick finds nothing new
    assert not _tick(defs, instance, changed.cursor).run_requests

    # the old day: two orders corrected in place (same day, newer LoadedAt), three added
    after = {day: _orders(demo, day) for day in (OLD_DAY, NEW_DAY)}
    corrected = [
        order
        for order, (comment, loaded) in after[OLD_DAY].items()
        if order in before[OLD_DAY] and (comment, loaded) != before[OLD_DAY][order]
    ]
    assert len(corrected) == 2
    assert all(after[OLD_DAY][order][0] == CORRECTION for order in corrected)
    assert len(after[OLD_DAY]) == len(before[OLD_DAY]) + 3
    assert len(after[NEW_DAY]) == len(before[NEW_DAY]) + 3

    # the demo API reads the same files: it serves the added and corrected orders
    with DemoApi(demo, "demo", "secret") as api:
        for day in (OLD_DAY, NEW_DAY):
            served = _api_orders(api, "secret", day)
            assert set(served) == set(after[day]), day
        served_old = _api_orders(api, "secret", OLD_DAY)
        assert {order for order in served_old if served_old[order]["Comment"] == CORRECTION} == {
            *corrected
        }


def test_demo_change_without_a_demo_database_says_to_build_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["change"]) == 1
    assert "build it first with `make demo`" in capsys.readouterr().err


def test_demo_change_without_a_landing_zone_changes_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    demo = tmp_path / ".data" / "demo"
    create_demo_sqlite(demo, SCALE)
    before = {day: _orders(demo, day) for day in (OLD_DAY, NEW_DAY)}
    assert main(["change"]) == 1
    assert "no landing zone in .data/landing: build it first with `make demo`" in (
        capsys.readouterr().err
    )
    # refused before either part changed: the database is as it was
    assert {day: _orders(demo, day) for day in (OLD_DAY, NEW_DAY)} == before


def test_demo_change_moves_customers_in_the_merge_table_and_versions_a_price_in_the_dimension(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    instance: DagsterInstance,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, defs = _demo_project(tmp_path, monkeypatch)
    keys = [AssetKey(["adventureworks", name]) for name in ("customer", "product")]

    def run() -> dict[str, dict[str, Any]]:
        result = materialize(
            [defs.get_assets_def(key) for key in keys], instance=instance, resources=defs.resources
        )
        return {
            event.asset_key.path[-1]: {k: v.value for k, v in event.metadata.items()}
            for event in result.asset_materializations_for_node("adventureworks__customer")
            + result.asset_materializations_for_node("adventureworks__product")
        }

    first = run()
    assert first["customer"]["rows_inserted"] == first["customer"]["dagster/row_count"] > 0
    assert main(["change"]) == 0
    printed = capsys.readouterr().out
    assert "Sales.Customer  customers 1, 2 updated (ModifiedDate now)" in printed, printed
    second = run()
    # the merge table reads the two moved customers (and those at the old cursor: lookback)
    assert second["customer"]["rows_updated"] == 2
    assert second["customer"]["rows_read"] < first["customer"]["rows_read"]
    # the dimension: the repriced product opens a version, the withdrawn one closes
    assert (second["product"]["rows_inserted"], second["product"]["rows_deleted"]) == (1, 1)
    product = DeltaTable(str(tmp_path / ".data" / "lake" / "adventureworks" / "product"))
    versions = product.to_pyarrow_table(
        columns=["ProductID", "ListPrice", "_is_current", "_deleted"]
    ).to_pylist()
    named = re.search(r"product (\d+) repriced \(ListPrice \+10%\), product (\d+) deleted", printed)
    assert named is not None, printed
    repriced, withdrawn_key = int(named.group(1)), int(named.group(2))
    lines = sorted(
        (v["_is_current"], v["ListPrice"]) for v in versions if v["ProductID"] == repriced
    )
    assert [current for current, _ in lines] == [False, True]
    assert lines[1][1] > lines[0][1]
    withdrawn = [v for v in versions if v["ProductID"] == withdrawn_key]
    assert [(v["_is_current"], v["_deleted"]) for v in withdrawn] == [(False, True)]
