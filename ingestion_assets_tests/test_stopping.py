"""Stopping and failing cleanly: a run cancelled with SIGTERM, or whose lake disk fills, ends
within seconds with nothing partial in the table, and stops its reader threads, pipes and the
source's query on the way out."""

from __future__ import annotations

import datetime
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pyarrow as pa
import pytest
import sqlalchemy as sa
import yaml
from deltalake import DeltaTable

from ingestion_assets.lake.files import ClusteredFileWriter, read_ahead, table_filesystem
from ingestion_assets.lake.replace import commit, create_table, held_interrupts
from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets.sources.cancel import on_cancel
from ingestion_assets.sources.sql import SqlTableReader
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import TableSpec
from ingestion_assets_tests.conftest import SourceDatabase

FAST_ROWS = 300_000
# the slow part of the source: SLOW_ROWS rows, SLOW_SECONDS_PER_ROW each, far longer than any
# bound below; a run that waited for it would be caught
SLOW_ROWS = 1200
SLOW_SECONDS_PER_ROW = 0.1
# a stopped or failed run's process must be gone this long after the signal or the failure
EXIT_SECONDS = 10.0
START_SECONDS = 120.0


def _slow_source(database: SourceDatabase) -> None:
    """`public.events`: FAST_ROWS rows on 2024-01-01..02 at once, then a slow 2024-01-03."""
    engine = database.engine()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE events_fast AS SELECT (date '2024-01-01' + (i % 2)) AS day, "
                f"i::bigint AS id, md5(i::text) AS value FROM generate_series(1, {FAST_ROWS}) i"
            )
        )
        connection.execute(
            sa.text(
                "CREATE VIEW events AS SELECT day, id, value FROM events_fast UNION ALL "
                "SELECT date '2024-01-03', i::bigint, 'slow' "
                f"FROM generate_series(1, {SLOW_ROWS}) i "
                f"WHERE length(pg_sleep({SLOW_SECONDS_PER_ROW})::text) = 0"
            )
        )
    engine.dispose()


def _project_file(
    database: SourceDatabase, lake: pathlib.Path, folder: pathlib.Path
) -> pathlib.Path:
    path = folder / "ingestion.yaml"
    project = {
        "lake": {"root": str(lake)},
        "sources": {
            "src": {
                "type": "sql",
                "connection": database.connection_spec(),
                "start_date": "2024-01-01",
                "tables": [{"schema": "public", "name": "events", "partition_column": "day"}],
            }
        },
    }
    path.write_text(yaml.safe_dump(project), encoding="utf-8")
    return path


def _run(project: pathlib.Path, first: str, last: str, *options: str) -> subprocess.Popen[str]:
    """The run as a process of its own; its log goes to a file beside the project file (a
    pipe nobody reads while polling would fill and stall it)."""
    log = (project.parent / f"run-{first}-{last}.log").open("w", encoding="utf-8")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingestion_assets_tests.project_process",
            str(project),
            "events",
            first,
            last,
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
        env={**os.environ, "DAGSTER_HOME": ""},
    )
    log.close()
    process.log = pathlib.Path(log.name)  # type: ignore[attr-defined]
    return process


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.wait(timeout=START_SECONDS)
    log: pathlib.Path = process.log  # type: ignore[attr-defined]
    return process.returncode, log.read_text(encoding="utf-8")


def _wait_for_exit(process: subprocess.Popen[str], since: float, seconds: float, what: str) -> None:
    """Poll until the process ends; past `seconds` after `since`, fail with every thread's stack
    (SIGUSR1, see project_process) and the end of its log, and kill it."""
    while process.poll() is None:
        if time.monotonic() - since < seconds:
            time.sleep(0.05)
            continue
        process.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        process.kill()
        process.wait(timeout=START_SECONDS)
        log: pathlib.Path = process.log  # type: ignore[attr-defined]
        pytest.fail(
            f"{what} after {seconds:.0f} s; its threads and log:\n"
            f"{log.read_text(encoding='utf-8')[-12000:]}"
        )


def _stored_files(uri: pathlib.Path) -> set[str]:
    return {path.name for path in uri.glob("*.parquet")}


def _referenced_files(uri: pathlib.Path) -> set[str]:
    return set(
        pa.table(DeltaTable(str(uri)).get_add_actions(flatten=True)).column("path").to_pylist()
    )


def _active_queries(database: SourceDatabase) -> list[str]:
    """Statements still running in the test database, from other sessions."""
    admin = sa.create_engine(sa.make_url(database.url).set(database="postgres"))
    name = sa.make_url(database.url).database
    try:
        with admin.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT query FROM pg_stat_activity WHERE datname = :name "
                    "AND state = 'active' AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            return [row.query for row in rows]
    finally:
        admin.dispose()


def _wait_for_no_query(database: SourceDatabase) -> None:
    deadline = time.monotonic() + EXIT_SECONDS
    while queries := _active_queries(database):
        assert time.monotonic() < deadline, f"the source query is still running: {queries}"
        time.sleep(0.1)


@pytest.fixture
def slow_project(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path
) -> Iterator[tuple[pathlib.Path, pathlib.Path]]:
    """(project file, table folder) with 2024-01-01..02 already written once."""
    _slow_source(postgres_database)
    lake = tmp_path / "lake"
    project = _project_file(postgres_database, lake, tmp_path)
    code, errors = _finish(_run(project, "2024-01-01", "2024-01-02"))
    assert code == 0, errors[-3000:]
    yield project, lake / "src" / "events"
    _wait_for_no_query(postgres_database)


@pytest.mark.slow
def test_a_run_stopped_with_sigterm_mid_write_exits_within_seconds_and_leaves_the_table_as_it_was(
    slow_project: tuple[pathlib.Path, pathlib.Path], postgres_database: SourceDatabase
) -> None:
    project, uri = slow_project
    version, before = DeltaTable(str(uri)).version(), DeltaTable(str(uri)).to_pyarrow_table()
    process = _run(project, "2024-01-01", "2024-01-03")
    deadline = time.monotonic() + START_SECONDS
    # mid-write: a file of this run exists (the fast days), the slow day is still coming
    while not _stored_files(uri) - _referenced_files(uri):
        assert process.poll() is None, f"the run ended before it was stopped: {_finish(process)}"
        assert time.monotonic() < deadline, "the run never wrote a file"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _wait_for_exit(process, time.monotonic(), EXIT_SECONDS, "the run outlived its SIGTERM")
    code, errors = _finish(process)
    assert code == 1, errors[-3000:]
    assert "run failed" in errors

    table = DeltaTable(str(uri))
    assert table.version() == version
    assert table.to_pyarrow_table().sort_by("id").equals(before.sort_by("id"))
    # the stopped run removed its files on the way out; its query on the server is cancelled
    assert _stored_files(uri) == _referenced_files(uri)
    _wait_for_no_query(postgres_database)

    code, errors = _finish(_run(project, "2024-01-02", "2024-01-02"))
    assert code == 0, errors[-3000:]
    days = DeltaTable(str(uri)).to_pyarrow_table().column(PARTITION_DATE).to_pylist()
    assert set(days) == {datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)}
    assert len(days) == FAST_ROWS


@pytest.mark.slow
def test_a_run_whose_lake_disk_fills_fails_with_the_table_unchanged_and_its_process_exits(
    slow_project: tuple[pathlib.Path, pathlib.Path], postgres_database: SourceDatabase
) -> None:
    project, uri = slow_project
    version = DeltaTable(str(uri)).version()
    # files past 256 KiB fail with EFBIG, as on a full disk: the first row group already does
    started = time.monotonic()
    process = _run(project, "2024-01-01", "2024-01-03", "--file-size-limit", str(256 << 10))
    # the source alone would take SLOW_ROWS * SLOW_SECONDS_PER_ROW (two minutes)
    _wait_for_exit(process, started, START_SECONDS / 2, "the failed run did not exit")
    code, errors = _finish(process)
    assert code == 1
    assert "run failed" in errors
    assert "File too large" in errors
    assert "table src.events (partitions 2024-01-01..2024-01-03)" in errors
    assert "The table is unchanged at its previous version; re-run the partition." in errors
    assert DeltaTable(str(uri)).version() == version
    assert _stored_files(uri) == _referenced_files(uri)
    _wait_for_no_query(postgres_database)

    code, errors = _finish(_run(project, "2024-01-01", "2024-01-01"))
    assert code == 0, errors[-3000:]


def test_a_reader_blocked_in_its_source_is_cancelled_when_the_writer_stops() -> None:
    released = threading.Event()
    cancelled = threading.Event()

    def blocked_source() -> Iterator[int]:
        yield 1
        # a read that only a cancel ends (a query waiting on its server)
        with on_cancel(cancelled.set):
            while not cancelled.wait(0.05):
                pass
        released.set()
        yield 2

    batches = read_ahead(blocked_source())  # type: ignore[arg-type]
    assert next(batches) == 1
    batches.close()
    assert cancelled.is_set()
    assert released.is_set()
    assert not [t for t in threading.enumerate() if t.name == "ingestion-read-ahead"]


def test_a_copy_the_consumer_stops_early_is_cancelled_on_the_server(
    postgres_database: SourceDatabase,
) -> None:
    _slow_source(postgres_database)
    engine = postgres_database.engine()
    window = PartitionWindow(
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        datetime.datetime(2024, 1, 4, tzinfo=datetime.UTC),
        "partitions 2024-01-01..2024-01-03",
    )
    spec = TableSpec(schema="public", name="events", partition_column="day")
    source = SqlTableReader(engine, "src", spec, 50_000)
    batches = read_ahead(source.read(window))
    assert next(batches).num_rows == 50_000
    assert source.path == "copy"
    batches.close()
    # the query is cancelled on the server, and the reading threads end: closing waits for them
    # a bounded while, which a loaded machine can outlast, so this polls with a deadline
    _wait_for_no_query(postgres_database)
    deadline = time.monotonic() + EXIT_SECONDS
    while alive := [
        t for t in threading.enumerate() if t.name in ("postgres-copy", "ingestion-read-ahead")
    ]:
        assert time.monotonic() < deadline, f"the reading threads are still running: {alive}"
        time.sleep(0.1)
    engine.dispose()


def test_a_sigterm_during_a_held_block_is_delivered_once_the_block_is_done() -> None:
    class Stopped(BaseException):
        pass

    def stop(_number: int, _frame: object) -> None:
        raise Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    steps: list[str] = []

    def held_block() -> None:
        with held_interrupts():
            signal.raise_signal(signal.SIGTERM)
            steps.append("after the signal")
        steps.append("after the block")

    try:
        with pytest.raises(Stopped):
            held_block()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert steps == ["after the signal"]


def test_an_interrupt_once_the_commit_landed_keeps_the_committed_files(
    tmp_path: pathlib.Path,
) -> None:
    class Stopped(BaseException):
        pass

    class InterruptedRightAfterTheCommit(ClusteredFileWriter):
        def committed(self) -> None:
            signal.raise_signal(signal.SIGTERM)  # the run is cancelled at this very moment
            super().committed()

    def stop(_number: int, _frame: object) -> None:
        raise Stopped

    uri = tmp_path / "events"
    schema = pa.schema([("id", pa.int64()), (PARTITION_DATE, pa.date32())])
    rows = pa.table({"id": [1, 2], PARTITION_DATE: [datetime.date(2024, 1, 1)] * 2}, schema=schema)
    table = create_table(str(uri), schema, None)
    writer = InterruptedRightAfterTheCommit(table_filesystem(str(uri), None), schema)
    writer.write(rows)
    adds = writer.finish()

    def write() -> None:
        try:
            commit(table, list(adds), schema, files=(writer,))
        except BaseException:
            writer.abort()  # what a failed write does with its files
            raise

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped):
            write()
    finally:
        signal.signal(signal.SIGTERM, previous)
    landed = DeltaTable(str(uri))
    assert landed.version() == 1
    assert landed.to_pyarrow_table().column("id").to_pylist() == [1, 2]
    assert _stored_files(uri) == _referenced_files(uri)
