"""Soak: one partition re-materialized 200 times while its source rows change between runs."""

from __future__ import annotations

import datetime
import pathlib
import random
import sqlite3
from decimal import Decimal

import pytest
from dagster import AssetKey, DagsterInstance

from ingestion_assets.maintenance_job import MAINTENANCE_JOB
from ingestion_assets_tests.conftest import TEST_SCALE, SourceDatabase, build_project

pytestmark = pytest.mark.slow

RUNS = 200
MAINTENANCE_EVERY = 50
DAY = TEST_SCALE.start_date + datetime.timedelta(days=2)
NEXT_DAY = DAY + datetime.timedelta(days=1)
CENTS = Decimal("0.01")


def _source_rows(connection: sqlite3.Connection) -> list[tuple[int, str, Decimal]]:
    rows = connection.execute(
        "SELECT id, note, amount FROM soak WHERE ModifiedDate >= ? AND ModifiedDate < ?",
        (DAY.isoformat(), NEXT_DAY.isoformat()),
    ).fetchall()
    # SQLite keeps NUMERIC(12, 2) values as REAL: their shortest text is the declared value
    return sorted((row[0], row[1], Decimal(str(row[2])).quantize(CENTS)) for row in rows)


def _change(connection: sqlite3.Connection, rng: random.Random, run: int) -> None:
    """Insert, update and delete some of the day's rows, and touch the next day's."""
    ids = [
        row[0]
        for row in connection.execute(
            "SELECT id FROM soak WHERE ModifiedDate < ?", (NEXT_DAY.isoformat(),)
        )
    ]
    for _ in range(rng.randint(0, 8)):
        moment = datetime.datetime.combine(
            DAY, datetime.time(rng.randint(0, 23), rng.randint(0, 59))
        )
        connection.execute(
            "INSERT INTO soak (ModifiedDate, note, amount) VALUES (?, ?, ?)",
            (moment.isoformat(sep=" "), f"run {run}", f"{rng.randint(0, 10**8) / 100:.2f}"),
        )
    for row_id in rng.sample(ids, k=min(len(ids), rng.randint(0, 4))):
        connection.execute(
            "UPDATE soak SET note = ?, amount = ? WHERE id = ?",
            (f"changed in run {run}", f"{rng.randint(0, 10**6) / 100:.2f}", row_id),
        )
    for row_id in rng.sample(ids, k=min(len(ids), rng.randint(0, 3))):
        connection.execute("DELETE FROM soak WHERE id = ?", (row_id,))
    # a row of the next day: never in this partition
    connection.execute(
        "INSERT INTO soak (ModifiedDate, note, amount) VALUES (?, 'next day', '1.00')",
        (f"{NEXT_DAY.isoformat()} 00:00:00",),
    )
    connection.commit()


def test_two_hundred_reruns_of_a_changing_partition_keep_the_table_equal_to_the_source(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    database = sqlite_database.sqlite_attach["Sales"]
    connection = sqlite3.connect(database)
    connection.execute(
        "CREATE TABLE soak (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "ModifiedDate TIMESTAMP NOT NULL, note VARCHAR(40), amount NUMERIC(12, 2) NOT NULL)"
    )
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [
            {
                "schema": "Sales",
                "name": "soak",
                "partition_column": "ModifiedDate",
                "primary_key": ["id"],
            }
        ],
        lake_options={"maintenance": {"vacuum_retention_hours": 0}},
    )
    rng = random.Random(20261125)
    most_files = 0
    maintenance_runs = 0
    rows_checked = 0
    try:
        for run in range(1, RUNS + 1):
            _change(connection, rng, run)
            expected = _source_rows(connection)
            assert project.materialize(["soak"], instance, partition=DAY.isoformat()).success
            table = project.delta("soak").to_pyarrow_table()
            assert set(table.column("_partition_date").to_pylist()) <= {DAY}
            landed = sorted(
                zip(
                    table.column("id").to_pylist(),
                    table.column("note").to_pylist(),
                    table.column("amount").to_pylist(),
                    strict=True,
                )
            )
            assert landed == expected, f"run {run}: the table differs from the source"
            rows_checked += len(landed)
            most_files = max(most_files, len(project.delta("soak").file_uris()))
            if run % MAINTENANCE_EVERY == 0:
                result = project.defs.resolve_job_def(MAINTENANCE_JOB).execute_in_process(
                    instance=instance
                )
                assert result.success
                maintenance_runs += 1
                stored = list((tmp_path / "lake" / "src" / "soak").glob("*.parquet"))
                # compacted to one file; with no retention, the replaced files are gone
                assert len(project.delta("soak").file_uris()) == 1
                assert len(stored) == 1
    finally:
        connection.close()
    observations = instance.fetch_observations(AssetKey(["src", "soak"]), limit=10).records
    assert len(observations) == maintenance_runs == RUNS // MAINTENANCE_EVERY
    metadata = observations[0].asset_observation.metadata
    assert metadata["files_after"].value == 1
    # between maintenance runs a one-day rerun adds at most its own file
    assert most_files <= 2
    print(f"soak: {RUNS} runs, {rows_checked} rows compared with the source, 0 lost, 0 duplicated")
