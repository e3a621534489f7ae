"""`make demo` on a fresh copy of the repository: exits 0, quietly, saying what it does before each
long stretch, and lands exactly the demo database; then `make ui` starts quietly over it, and its
new-data sensor requests the days `make demo-change` wrote."""

from __future__ import annotations

import collections
import datetime
import functools
import os
import pathlib
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from deltalake import DeltaTable

from ingestion_assets.demo.__main__ import instance_file_text
from ingestion_assets.demo.schema import ORDER_TABLES, SNAPSHOT_TABLES
from ingestion_assets.specs import snake_case
from ingestion_assets_tests.test_ui import _sigint_inheritable, _stop, free_port, wait_until

pytestmark = pytest.mark.e2e

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


def _fresh_copy(target: pathlib.Path) -> None:
    """The files a clone would have: tracked plus new, not ignored (so the test sees this change)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPOSITORY,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPOSITORY / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def _source_counts(demo: pathlib.Path, logical: str) -> dict[str, int]:
    schema, table = logical.split(".")
    connection = sqlite3.connect(demo / f"{schema}.db")
    try:
        rows = connection.execute(
            f'SELECT substr("ModifiedDate", 1, 10), count(*) FROM "{table}" GROUP BY 1'
        ).fetchall()
    finally:
        connection.close()
    return {day: count for day, count in rows}


@dataclass(frozen=True)
class Demo:
    """A fresh copy of the repository after `make demo`, and what `make demo` printed (stdout
    and stderr as one stream)."""

    checkout: pathlib.Path
    environment: dict[str, str]
    completed: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """`make demo` run once on a fresh copy, for the tests of this module."""
    checkout = tmp_path_factory.mktemp("demo") / "checkout"
    _fresh_copy(checkout)
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DAGSTER_HOME", "VIRTUAL_ENV", "INGEST_PROJECT_FILE")
    }
    # one stream, in the order printed: the demo's lines (stdout) among Dagster's logs (stderr)
    completed = subprocess.run(
        ["make", "demo"],
        cwd=checkout,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1500,
    )
    assert completed.returncode == 0, completed.stdout[-6000:]
    return Demo(checkout, environment, completed)


def _after(lines: list[str], first: str, then: str) -> bool:
    """Whether a line containing `then` comes right after the first line containing `first`."""
    index = next(i for i, line in enumerate(lines) if first in line)
    return then in lines[index + 1]


@pytest.mark.timeout(1200)
def test_make_demo_from_a_fresh_copy_lands_every_row(demo: Demo) -> None:
    checkout, completed = demo.checkout, demo.completed
    assert "delta version" in completed.stdout
    # quiet: no Beta/Preview/Supersession (or any other Python) warning from the demo's run
    output = completed.stdout
    assert not [line for line in output.splitlines() if "Warning:" in line], output[-3000:]
    # a line before each stretch that takes a while: building the database, loading the
    # definitions, each job's planning, and each asset's recording of its events
    lines = completed.stdout.splitlines()
    assert _after(lines, "building the demo database in .data/demo", "demo database: ")
    assert _after(lines, "demo database: ", "landing zone .data/landing: 120 daily currency-rate")
    assert _after(lines, "landing zone ", "loading definitions from ingestion_assets/demo/")
    assert _after(
        lines,
        "loading definitions from",
        "running job ingest_adventureworks: 7 assets over partitions 2024-01-01..2024-04-29 "
        "(120 days) in one run",
    )
    assert _after(
        lines,
        "job ingest_adventureworks: run",
        "running job ingest_adventureworks_api: 4 assets over partitions",
    )
    wrote = [
        i
        for i, line in enumerate(lines)
        if "table adventureworks" in line and ": wrote " in line and " rows as Delta " in line
    ]
    # the partitioned and snapshot tables write; the merge tables (customer, product) merge
    assert len(wrote) == 9, "\n".join(lines)
    merged = [line for line in lines if ", merge: " in line and " inserted, " in line]
    assert len(merged) == 2, "\n".join(lines)
    for index in wrote:
        assert "recording " in lines[index + 1], lines[index : index + 2]
    assert "recording 120 materialization(s) and 361 check result(s)" in completed.stdout
    summary = {
        line.split()[0]: line.split()
        for line in completed.stdout.splitlines()
        if line.startswith(("adventureworks", "landing/"))
    }
    # each job's wall time and checks, after the assets
    jobs = {
        line.split()[0]: line.split()
        for line in completed.stdout.splitlines()
        if line.startswith("ingest_")
    }
    assert set(jobs) == {"ingest_adventureworks", "ingest_adventureworks_api", "ingest_landing"}
    for line in jobs.values():
        assert line[2] == "120", line
        assert float(line[3]) > 0, line
        assert line[4] == line[6], f"every check passed: {line}"
    # four order tables, the vendor snapshot, the customer merge table, the product history
    assert jobs["ingest_adventureworks"][4] == f"{4 * 361 + 3 + 2 + 3:,}"
    assert " ".join(summary["adventureworks/product"][8:]) == (
        "current_keys_unique, current_rows_match_source, history_unbroken"
    )

    demo_dir, lake = checkout / ".data" / "demo", checkout / ".data" / "lake"
    for logical in ORDER_TABLES:
        table = DeltaTable(str(lake / "adventureworks" / snake_case(logical.split(".")[1])))
        days = table.to_pyarrow_table(columns=["_partition_date"]).column(0).to_pylist()
        lake_counts = collections.Counter(day.isoformat() for day in days)
        source_counts = _source_counts(demo_dir, logical)
        assert sum(source_counts.values()) > 1000
        assert dict(lake_counts) == source_counts, logical
        # the summary's rows are the run's (not the table's total once per partition)
        line = summary[f"adventureworks/{snake_case(logical.split('.')[1])}"]
        assert line[2] == f"{sum(source_counts.values()):,}", line
        assert line[5] == line[7] == "361", f"every check passed: {line}"
        assert " ".join(line[8:]) == (
            "primary_key, row_count, schema_contract per day; unpartitioned_rows"
        ), line
    for logical in SNAPSHOT_TABLES:
        schema, name = logical.split(".")
        connection = sqlite3.connect(demo_dir / f"{schema}.db")
        (expected,) = connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()
        connection.close()
        table = DeltaTable(str(lake / "adventureworks" / snake_case(name)))
        assert table.to_pyarrow_table().num_rows == expected

    # the layers ran last, over every day: silver without the return lines, which are in its
    # quarantine; their expectations counted in the summary
    assert _after(
        lines, "job ingest_adventureworks_api: run", "running job ingest_landing: 3 assets"
    )
    assert _after(lines, "job ingest_landing: run", "running job build_layers: 3 assets")
    connection = sqlite3.connect(demo_dir / "Sales.db")
    (returns,) = connection.execute(
        'SELECT count(*) FROM "SalesOrderDetail" WHERE "OrderQty" < 0'
    ).fetchone()
    (early,) = connection.execute(
        'SELECT count(*) FROM "SalesOrderDetail" AS d JOIN "SalesOrderHeader" AS h '
        'ON h."SalesOrderID" = d."SalesOrderID" WHERE h."ShipDate" < h."OrderDate"'
    ).fetchone()
    connection.close()
    assert returns > 0
    assert early > 0
    silver = DeltaTable(str(lake / "silver" / "sales_orders")).to_pyarrow_table()
    quarantine = DeltaTable(str(lake / "silver" / "sales_orders_quarantine")).to_pyarrow_table()
    assert quarantine.num_rows == returns
    assert min(silver.column("OrderQty").to_pylist()) >= 0
    expectations = {
        tuple(line.split()[:3]): line.split()[3]
        for line in lines
        if line.startswith("silver/sales_orders ") and len(line.split()) == 4
    }
    assert expectations == {
        ("silver/sales_orders", "known_customer", "fail"): "0",
        ("silver/sales_orders", "non_negative_quantity_and_price", "drop"): f"{returns:,}",
        ("silver/sales_orders", "ordered_before_shipped", "warn"): f"{early:,}",
    }
    assert "gold/daily_revenue_by_territory: " in output

    # the demo API's streams hold exactly what the SQL path landed, day by day
    for logical in ORDER_TABLES:
        name = snake_case(logical.split(".")[1])
        from_sql = _content(lake / "adventureworks" / name)
        from_api = _content(lake / "adventureworks_api" / name)
        assert len(from_api) == sum(_source_counts(demo_dir, logical).values())
        assert from_api == from_sql, logical

    # the landing zone's tables hold exactly its files' rows: each rates file in its day, the
    # product exports (both formats, the same values as the database) in the demo's last day
    landing = checkout / ".data" / "landing"
    rates = DeltaTable(str(lake / "landing" / "currency_rate")).to_pyarrow_table()
    landed = collections.Counter(
        (row["_source_file"], row["_partition_date"].isoformat()) for row in rates.to_pylist()
    )
    files = {
        (f"currency_rates/{path.name}", path.stem): len(path.read_text().splitlines())
        for path in sorted((landing / "currency_rates").glob("*.tsv"))
    }
    assert len(files) == 120
    assert dict(landed) == files
    assert summary["landing/currency_rate"][2] == f"{sum(files.values()):,}"
    connection = sqlite3.connect(demo_dir / "Production.db")
    products = [row[0] for row in connection.execute('SELECT "ProductID" FROM "Product"')]
    connection.close()
    for name in ("product_parquet", "product_ndjson"):
        table = DeltaTable(str(lake / "landing" / name)).to_pyarrow_table()
        assert sorted(table.column("ProductID").to_pylist()) == sorted(products), name
        assert set(table.column("_partition_date").to_pylist()) == {datetime.date(2024, 4, 29)}
        assert table.column("_rescued_data").null_count == table.num_rows, name
    parquet = DeltaTable(str(lake / "landing" / "product_parquet")).to_pyarrow_table()
    ndjson = DeltaTable(str(lake / "landing" / "product_ndjson")).to_pyarrow_table()
    exported = [name for name in parquet.column_names if not name.startswith("_")]
    assert ndjson.select(exported).sort_by("ProductID") == parquet.select(exported).sort_by(
        "ProductID"
    )

    # the runs are recorded in the local instance that `make ui` opens: the demo's, whose pools
    # have a limit (the UI shows their slots, not a warning)
    home = checkout / ".data" / "dagster"
    assert (home / "dagster.yaml").read_text() == instance_file_text(home)
    with DagsterInstance.from_config(str(home)) as instance:
        runs = sorted(run.job_name for run in instance.get_runs())
        assert runs == [
            "build_layers",
            "ingest_adventureworks",
            "ingest_adventureworks_api",
            "ingest_landing",
        ]
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
        for pool in ("adventureworks", "adventureworks_api", "landing"):
            assert instance.event_log_storage.get_concurrency_info(pool).limit == 2, pool
        assert not instance.telemetry_enabled


def _content(uri: pathlib.Path) -> list[dict[str, object]]:
    """A Delta table's rows without the run-specific lineage, in a stable order."""
    table = DeltaTable(str(uri)).to_pyarrow_table().drop_columns(["_ingested_at", "_run_id"])
    rows = table.to_pylist()
    return sorted(rows, key=lambda row: sorted((k, str(v)) for k, v in row.items()))


SENSOR = "adventureworks_new_data"
FILES_SENSOR = "landing_new_data"
UI_STARTUP_SECONDS = 300
SENSOR_SECONDS = 180
RUN_SECONDS = 600
FINAL_STATUSES = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def _sensor_ticks(instance: DagsterInstance, sensor: str = SENSOR) -> list[Any]:
    """A demo sensor's ticks, newest first (none before the daemon's first)."""
    states = [s for s in instance.all_instigator_state() if s.instigator_name == sensor]
    if not states:
        return []
    (state,) = states
    return list(instance.get_ticks(state.instigator_origin_id, state.selector_id))


def _sensor_runs(instance: DagsterInstance, sensor: str = SENSOR) -> list[DagsterRun]:
    return list(instance.get_runs(RunsFilter(tags={"dagster/sensor_name": sensor})))


@pytest.mark.timeout(1800)
def test_make_ui_starts_quietly_and_its_sensor_runs_the_days_make_demo_change_wrote(
    demo: Demo,
) -> None:
    checkout, home = demo.checkout, demo.checkout / ".data" / "dagster"
    port = free_port()
    log = checkout / "make-ui.log"
    with log.open("wb") as output, _sigint_inheritable():
        process = subprocess.Popen(
            ["make", "ui", f"PORT={port}"],
            cwd=checkout,
            env=demo.environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def log_tail() -> str:
            return log.read_text(errors="replace")[-4000:]

        def answers() -> bool:
            if process.poll() is not None:
                pytest.fail(f"make ui exited with {process.returncode}\n{log_tail()}")
            try:
                return requests.get(f"http://127.0.0.1:{port}/server_info", timeout=5).ok
            except requests.ConnectionError:
                return False

        wait_until(answers, UI_STARTUP_SECONDS, lambda: f"no UI on port {port}\n{log_tail()}")
        with DagsterInstance.from_config(str(home)) as instance:
            # the daemon's first tick only marks where the source is
            for sensor in (SENSOR, FILES_SENSOR):
                wait_until(
                    functools.partial(_sensor_ticks, instance, sensor),
                    SENSOR_SECONDS,
                    functools.partial(lambda name: f"no tick of {name}\n{log_tail()}", sensor),
                )
            assert not _sensor_runs(instance)
            changed = subprocess.run(
                ["make", "demo-change"],
                cwd=checkout,
                env=demo.environment,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert changed.returncode == 0, changed.stdout + changed.stderr
            expected = {
                (asset, day)
                for asset in (
                    "adventureworks/sales_order_header",
                    "adventureworks/sales_order_detail",
                )
                for day in ("2024-01-30", "2024-04-29")
            }
            days = " and ".join(sorted({day for _, day in expected}))
            assert f"should request partitions {days}" in changed.stdout, changed.stdout
            assert (
                f"the sensor {FILES_SENSOR} should request partition 2024-04-29 of "
                "landing/currency_rate"
            ) in changed.stdout, changed.stdout
            # and one run of the customer merge table, whose source moved past its cursor
            expected.add(("adventureworks/customer", "unpartitioned"))

            def requested() -> set[tuple[str, str]] | None:
                runs = _sensor_runs(instance)
                found = {
                    (key.to_user_string(), run.tags.get("dagster/partition", "unpartitioned"))
                    for run in runs
                    for key in run.asset_selection or ()
                }
                return found if len(found) >= len(expected) else None

            found = wait_until(
                requested, SENSOR_SECONDS, lambda: f"{SENSOR} requested nothing\n{log_tail()}"
            )
            assert found == expected

            def finished() -> bool:
                statuses = {run.status for run in _sensor_runs(instance)}
                assert not statuses & {DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}, (
                    log_tail()
                )
                return statuses == {DagsterRunStatus.SUCCESS}

            wait_until(finished, RUN_SECONDS, lambda: f"the sensor's runs not done\n{log_tail()}")

            # the late rates file: one run of its day
            def files_requested() -> list[tuple[str, str, DagsterRunStatus]] | None:
                runs = [
                    (
                        key.to_user_string(),
                        run.tags.get("dagster/partition", "unpartitioned"),
                        run.status,
                    )
                    for run in _sensor_runs(instance, FILES_SENSOR)
                    for key in run.asset_selection or ()
                ]
                done = runs and all(status in FINAL_STATUSES for _, _, status in runs)
                return runs if done else None

            landed = wait_until(
                files_requested, RUN_SECONDS, lambda: f"{FILES_SENSOR} ran nothing\n{log_tail()}"
            )
            assert landed == [("landing/currency_rate", "2024-04-29", DagsterRunStatus.SUCCESS)]
    finally:
        _stop(process)
    text = log.read_text(errors="replace")
    # quiet: no Python warning, no Dagster WARNING (a dagster.yaml at the root, telemetry)
    assert not [line for line in text.splitlines() if "Warning:" in line or "WARNING" in line], (
        text[-4000:]
    )
    lines = text.splitlines()
    started = next(i for i, line in enumerate(lines) if "starting the Dagster UI on" in line)
    assert f"http://127.0.0.1:{port}" in lines[started]
    assert not any(" - dagster" in line for line in lines[:started])
