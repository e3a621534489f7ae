"""Backfills from the Dagster CLI: a partition range is one run, and lands exactly those days."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import subprocess
import sys

import pytest
from dagster import DagsterInstance
from deltalake import DeltaTable

from ingestion_assets.demo.generate import DemoScale, create_demo_sqlite

pytestmark = pytest.mark.slow

BIN = pathlib.Path(sys.executable).parent


def test_a_cli_partition_range_is_one_run_and_lands_those_days(tmp_path: pathlib.Path) -> None:
    create_demo_sqlite(tmp_path / ".data" / "demo", DemoScale(days=40))
    home = tmp_path / "dagster"
    home.mkdir()
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        # the demo file names the demo API too; this run selects only a SQL table
        "DEMO_API_URL": "http://127.0.0.1:9",
        "DEMO_API_PASSWORD": "not-used",
    }
    environment.pop("INGEST_PROJECT_FILE", None)
    result = subprocess.run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "ingestion_assets.definitions",
            "--select",
            "adventureworks/sales_order_header",
            "--partition-range",
            "2024-01-05...2024-01-24",
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1
        assert runs[0].tags["dagster/asset_partition_range_start"] == "2024-01-05"
    table = DeltaTable(str(tmp_path / ".data" / "lake" / "adventureworks" / "sales_order_header"))
    days = table.to_pyarrow_table(columns=["_partition_date"]).column(0).to_pylist()
    lake = {}
    for day in days:
        lake[day.isoformat()] = lake.get(day.isoformat(), 0) + 1
    connection = sqlite3.connect(tmp_path / ".data" / "demo" / "Sales.db")
    source = dict(
        connection.execute(
            'SELECT substr("ModifiedDate", 1, 10), count(*) FROM "SalesOrderHeader" '
            "WHERE \"ModifiedDate\" >= '2024-01-05' AND \"ModifiedDate\" < '2024-01-25' GROUP BY 1"
        ).fetchall()
    )
    connection.close()
    assert lake == source
    # one commit of data (creating the table is a metadata commit of its own)
    assert [entry["operation"] for entry in table.history()].count("WRITE") == 1


def test_a_whole_source_with_a_snapshot_table_backfills_from_the_cli_in_one_run(
    tmp_path: pathlib.Path,
) -> None:
    demo = tmp_path / "demo"
    create_demo_sqlite(demo, DemoScale(days=10))
    project = tmp_path / "ingestion.yaml"
    project.write_text(
        f"""
lake: {{root: {tmp_path / "lake"}}}
sources:
  erp:
    type: sql
    connection:
      url: sqlite:///{demo / "main.db"}
      sqlite_attach: {{Sales: {demo / "Sales.db"}}}
    start_date: 2024-01-01
    tables:
      - {{schema: Sales, name: SalesOrderHeader, partition_column: ModifiedDate}}
      - {{schema: Sales, name: Customer, primary_key: [CustomerID]}}
"""
    )
    home = tmp_path / "dagster"
    home.mkdir()
    environment = {**os.environ, "DAGSTER_HOME": str(home), "INGEST_PROJECT_FILE": str(project)}
    result = subprocess.run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "ingestion_assets.definitions",
            "--select",
            "group:erp",
            "--partition-range",
            "2024-01-02...2024-01-04",
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with DagsterInstance.from_config(str(home)) as instance:
        assert len(instance.get_runs()) == 1
    orders = DeltaTable(str(tmp_path / "lake" / "erp" / "sales_order_header"))
    days = orders.to_pyarrow_table(columns=["_partition_date"]).column(0).to_pylist()
    assert sorted({day.isoformat() for day in days}) == ["2024-01-02", "2024-01-03", "2024-01-04"]
    connection = sqlite3.connect(demo / "Sales.db")
    (customers,) = connection.execute('SELECT count(*) FROM "Customer"').fetchone()
    connection.close()
    assert DeltaTable(str(tmp_path / "lake" / "erp" / "customer")).count() == customers
