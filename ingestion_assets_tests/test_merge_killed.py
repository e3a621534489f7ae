"""A merge run killed (SIGKILL, no chance to clean up) after it read changes and before its
MERGE leaves the Delta table and the stored cursor as they were; the next run applies the
changes exactly once. The run is a process of its own on a Dagster instance kept on disk, as a
run worker's is."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import sqlalchemy as sa
import yaml
from dagster import AssetKey, DagsterInstance, materialize
from dagster._core.instance.ref import InstanceRef
from deltalake import DeltaTable

from ingestion_assets.definitions import build_definitions
from ingestion_assets.merge_asset import CURSOR, stored_cursor
from ingestion_assets.project import parse_project
from ingestion_assets_tests.conftest import SourceDatabase

ROWS = 20_000
# the slow tail of the changed rows: far longer than the test waits
SLOW_ROWS = 600
SLOW_SECONDS_PER_ROW = 0.1
START_SECONDS = 120.0
KEY = AssetKey(["src", "customers"])

CHILD = textwrap.dedent(
    """
    import pathlib, sys
    from dagster import AssetKey, DagsterInstance, materialize
    from ingestion_assets.definitions import build_definitions
    from ingestion_assets.project import parse_project

    path = pathlib.Path(sys.argv[1])
    defs = build_definitions(parse_project(path.read_text(), str(path)))
    materialize(
        [defs.get_assets_def(AssetKey(["src", "customers"]))],
        instance=DagsterInstance.get(),
        resources=defs.resources,
    )
    """
)


def _view(database: SourceDatabase, slow: bool) -> None:
    """`public.customers`: the table, and with `slow` a tail of changed rows that takes
    minutes to arrive (after ROWS rows that arrive at once)."""
    tail = (
        " UNION ALL SELECT 1000000 + i, 'slow', timestamp '2030-01-01' FROM "
        f"generate_series(1, {SLOW_ROWS}) i WHERE length(pg_sleep({SLOW_SECONDS_PER_ROW})::text) = 0"
        if slow
        else ""
    )
    _execute(
        database,
        "DROP VIEW IF EXISTS customers",
        f"CREATE VIEW customers AS SELECT id, name, modified FROM customers_data{tail}",
    )


def _execute(database: SourceDatabase, *statements: str) -> None:
    engine = database.engine()
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement))
    engine.dispose()


def test_a_merge_run_killed_after_reading_leaves_the_table_and_the_cursor_as_they_were(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    _execute(
        postgres_database,
        "CREATE TABLE customers_data AS SELECT i::bigint AS id, md5(i::text) AS name, "
        f"timestamp '2024-01-01' AS modified FROM generate_series(1, {ROWS}) i",
    )
    _view(postgres_database, slow=False)
    project = tmp_path / "ingestion.yaml"
    entry = {
        "schema": "public",
        "name": "customers",
        "primary_key": ["id"],
        "mode": "merge",
        "cursor_column": "modified",
    }
    project.write_text(
        yaml.safe_dump(
            {
                "lake": {"root": str(tmp_path / "lake")},
                "sources": {
                    "src": {
                        "type": "sql",
                        "connection": postgres_database.connection_spec(),
                        "start_date": "2024-01-01",
                        # row batches of 2,000 through a server-side cursor: the fast rows
                        # reach the spill file at once (COPY parses blocks of megabytes)
                        "batch_size": 2_000,
                        "fast_path": False,
                        "tables": [entry],
                    }
                },
            }
        ),
        encoding="utf-8",
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    defs = build_definitions(parse_project(project.read_text(), str(project)))
    uri = str(tmp_path / "lake" / "src" / "customers")

    def run_here() -> None:
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            materialize([defs.get_assets_def(KEY)], instance=instance, resources=defs.resources)

    def cursor() -> str | None:
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            return stored_cursor(instance, KEY)

    run_here()
    version, first_cursor = DeltaTable(uri).version(), cursor()
    assert first_cursor == "2024-01-01T00:00:00"

    # every row changed, then a slow tail: the killed run has read the first ones
    _execute(
        postgres_database, "UPDATE customers_data SET name = 'changed', modified = '2024-02-01'"
    )
    _view(postgres_database, slow=True)
    spill = tmp_path / "spill"
    spill.mkdir()
    log = (tmp_path / "killed-run.log").open("w", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(project)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "DAGSTER_HOME": str(home), "TMPDIR": str(spill)},
    )
    log.close()
    try:
        deadline = time.monotonic() + START_SECONDS
        # the run's spill file holds more than its header: changed rows were read
        while not any(f.stat().st_size > 100_000 for f in spill.glob("ingestion-merge-*/*")):
            assert process.poll() is None, (tmp_path / "killed-run.log").read_text()
            assert time.monotonic() < deadline, "the run never read a change"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    # the killed run's query sleeps on in the server (it sends nothing, so it does not notice
    # the closed connection) and holds the view: end it
    _execute(
        postgres_database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
        "current_database() AND pid <> pg_backend_pid() AND query LIKE '%customers%'",
    )
    assert DeltaTable(uri).version() == version
    assert set(DeltaTable(uri).to_pyarrow_table(columns=["name"]).column("name").to_pylist()) != {
        "changed"
    }
    assert cursor() == first_cursor

    # the source answers again: the next run applies the changes once, past the same cursor
    _view(postgres_database, slow=False)
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        result = materialize(
            [defs.get_assets_def(KEY)], instance=instance, resources=defs.resources
        )
    metadata = result.asset_materializations_for_node("src__customers")[0].metadata
    assert metadata["cursor_before"].value == first_cursor
    assert metadata["rows_updated"].value == ROWS
    assert metadata[CURSOR].value == "2024-02-01T00:00:00"
    names = DeltaTable(uri).to_pyarrow_table(columns=["id", "name"])
    assert names.num_rows == ROWS
    assert set(names.column("name").to_pylist()) == {"changed"}
