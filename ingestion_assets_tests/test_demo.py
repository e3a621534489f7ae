"""`make demo` on a fresh copy of the repository: exits 0 and lands exactly the demo database."""

from __future__ import annotations

import collections
import os
import pathlib
import shutil
import sqlite3
import subprocess

import pytest
from dagster import DagsterInstance
from deltalake import DeltaTable

from ingestion_assets.demo.schema import ORDER_TABLES, SNAPSHOT_TABLES
from ingestion_assets.specs import snake_case

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


def test_make_demo_from_a_fresh_copy_lands_every_row(tmp_path: pathlib.Path) -> None:
    checkout = tmp_path / "checkout"
    _fresh_copy(checkout)
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DAGSTER_HOME", "VIRTUAL_ENV", "INGEST_PROJECT_FILE")
    }
    completed = subprocess.run(
        ["make", "demo"],
        cwd=checkout,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "delta version" in completed.stdout
    # quiet: no Beta/Preview/Supersession (or any other Python) warning from the demo's run
    output = completed.stdout + completed.stderr
    assert not [line for line in output.splitlines() if "Warning:" in line], output[-3000:]
    summary = {
        line.split()[0]: line.split()
        for line in completed.stdout.splitlines()
        if line.startswith("adventureworks")
    }

    demo, lake = checkout / ".data" / "demo", checkout / ".data" / "lake"
    for logical in ORDER_TABLES:
        table = DeltaTable(str(lake / "adventureworks" / snake_case(logical.split(".")[1])))
        days = table.to_pyarrow_table(columns=["_partition_date"]).column(0).to_pylist()
        lake_counts = collections.Counter(day.isoformat() for day in days)
        source_counts = _source_counts(demo, logical)
        assert sum(source_counts.values()) > 1000
        assert dict(lake_counts) == source_counts, logical
        # the summary's rows are the run's (not the table's total once per partition)
        line = summary[f"adventureworks/{snake_case(logical.split('.')[1])}"]
        assert line[2] == f"{sum(source_counts.values()):,}", line
        assert line[-3] == line[-1], f"every check passed: {line}"
    for logical in SNAPSHOT_TABLES:
        schema, name = logical.split(".")
        connection = sqlite3.connect(demo / f"{schema}.db")
        (expected,) = connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()
        connection.close()
        table = DeltaTable(str(lake / "adventureworks" / snake_case(name)))
        assert table.to_pyarrow_table().num_rows == expected

    # the demo API's streams hold exactly what the SQL path landed, day by day
    for logical in ORDER_TABLES:
        name = snake_case(logical.split(".")[1])
        from_sql = _content(lake / "adventureworks" / name)
        from_api = _content(lake / "adventureworks_api" / name)
        assert len(from_api) == sum(_source_counts(demo, logical).values())
        assert from_api == from_sql, logical

    # the runs are recorded in the local instance that `make ui` opens
    with DagsterInstance.from_config(str(checkout / ".data" / "dagster")) as instance:
        jobs = sorted(run.job_name for run in instance.get_runs())
        assert jobs == ["ingest_adventureworks", "ingest_adventureworks_api"]


def _content(uri: pathlib.Path) -> list[dict[str, object]]:
    """A Delta table's rows without the run-specific lineage, in a stable order."""
    table = DeltaTable(str(uri)).to_pyarrow_table().drop_columns(["_ingested_at", "_run_id"])
    rows = table.to_pylist()
    return sorted(rows, key=lambda row: sorted((k, str(v)) for k, v in row.items()))
