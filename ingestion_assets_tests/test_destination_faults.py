"""The Iceberg and PostgreSQL writers under faults, each run a process of its own: a run killed
(SIGKILL) in the middle of its write leaves the previous rows and nothing partial, and a re-run
lands every day once; two runs of one day leave one copy, runs of different days all land."""

from __future__ import annotations

import datetime
import os
import pathlib
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg2  # type: ignore[import-untyped]
import pyarrow as pa
import pytest

from ingestion_assets.io_managers.iceberg import IcebergIOManager
from ingestion_assets.io_managers.postgres import PostgresIOManager
from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets_tests.test_concurrency import (
    PROCESS_SECONDS,
    RACE_DAYS,
    ROWS_PER_DAY,
    _race,
    _writer,
)

pytestmark = pytest.mark.slow

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
PATH = ("t", "events")


@dataclass
class Destination:
    """Where the writer processes land `t/events`, and how the test reads it back."""

    kind: str
    lake: str
    options: tuple[str, ...]
    manager: IcebergIOManager | PostgresIOManager
    folder: pathlib.Path | None = None

    def rows(self) -> pa.Table:
        rows = self.manager.committed_rows(PATH, None, ["id", "value"])
        assert rows is not None, "the table was never written"
        return rows

    def version(self) -> object:
        """What a reader sees of the table's state: its snapshot, or its rows."""
        if isinstance(self.manager, IcebergIOManager):
            table = self.manager.open_table(PATH)
            assert table is not None
            snapshot = table.current_snapshot()
            return snapshot.snapshot_id if snapshot else None
        return sorted(self.rows().to_pylist(), key=str)


@pytest.fixture(params=["iceberg", "postgres"])
def destination(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Destination]:
    if request.param == "iceberg":
        folder = tmp_path / "lake"
        folder.mkdir()
        yield Destination(
            "iceberg",
            str(folder),
            # a data file per day: the killed run has written some before it dies
            ("--writer", "iceberg", "--rows-per-file", str(ROWS_PER_DAY)),
            IcebergIOManager(
                catalog_uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}/warehouse"
            ),
            folder,
        )
        return
    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield Destination(
        "postgres",
        SERVER,
        ("--writer", "postgres", "--db-schema", schema),
        PostgresIOManager(url=SERVER, db_schema=schema),
    )
    connection = psycopg2.connect(SERVER)
    connection.autocommit = True
    connection.cursor().execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    connection.close()


def _assert_table_is(destination: Destination, expected: dict[datetime.date, set[str]]) -> None:
    """Each day holds ids 0..N-1 exactly once, all from one of the writers allowed for it."""
    table = destination.rows()
    keys = Counter(
        zip(table.column(PARTITION_DATE).to_pylist(), table.column("id").to_pylist(), strict=True)
    )
    duplicated = {key: count for key, count in keys.items() if count > 1}
    assert not duplicated, f"rows landed twice: {list(duplicated.items())[:5]}"
    assert set(keys) == {(day, i) for day in expected for i in range(ROWS_PER_DAY)}
    for day, allowed in expected.items():
        day_rows = table.filter(pa.compute.equal(table.column(PARTITION_DATE), day))
        tags = set(day_rows.column("value").to_pylist())
        assert len(tags) == 1, f"{day}: rows of several writers {tags}"
        assert tags <= allowed, f"{day}: {tags} is not one of {allowed}"


def _tag_of(destination: Destination, day: datetime.date) -> set[str]:
    table = destination.rows()
    return set(
        table.filter(pa.compute.equal(table.column(PARTITION_DATE), day))["value"].to_pylist()
    )


def test_two_runs_of_one_day_leave_one_copy_and_runs_of_different_days_all_land(
    destination: Destination, tmp_path: pathlib.Path
) -> None:
    day = RACE_DAYS[0]
    # two runs create the table at once, then two replace the day they both find there
    expected: dict[datetime.date, set[str]] = {}
    for race in ("create", "replace"):
        tags = [f"{race}-a", f"{race}-b"]
        _race(destination.lake, tmp_path, [(day, tag) for tag in tags], *destination.options)
        expected[day] = set(tags)
        _assert_table_is(destination, expected)
        expected[day] = _tag_of(destination, day)
    windows = [(other, f"day{other.day}") for other in RACE_DAYS[1:4]]
    _race(destination.lake, tmp_path, windows, *destination.options)
    expected.update({other: {tag} for other, tag in windows})
    _assert_table_is(destination, expected)


def _wait_until_writing(destination: Destination, writer: object) -> None:
    """Until the run has staged rows and not committed them: an Iceberg data file no snapshot
    names, or a COPY into the staging table of a transaction still open."""
    deadline = time.monotonic() + PROCESS_SECONDS
    while True:
        assert writer.poll() is None, "the writer ended before it was killed"  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the writer never started writing"
        if destination.folder is not None:
            stored = {f"file://{p}" for p in (destination.folder / "warehouse").rglob("*.parquet")}
            if stored - _referenced(destination):
                return
        elif _copying_backends():
            return
        time.sleep(0.05)


def _referenced(destination: Destination) -> set[str]:
    assert isinstance(destination.manager, IcebergIOManager)
    table = destination.manager.open_table(PATH)
    assert table is not None
    return {task.file.file_path for task in table.scan().plan_files()}


def _copying_backends() -> int:
    connection = psycopg2.connect(SERVER)
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY _staging%%' "
            "AND state = 'idle in transaction'"
        )
        return int(cursor.fetchone()[0])
    finally:
        connection.close()


def test_a_run_killed_midway_leaves_the_previous_rows_and_a_rerun_lands_every_day_once(
    destination: Destination, tmp_path: pathlib.Path
) -> None:
    january = datetime.date(2024, 1, 10)
    _race(destination.lake, tmp_path, [(january, "before")], *destination.options)
    version, before = destination.version(), destination.rows()

    # a backfill of 40 days, a second per day: killed while it writes
    first, last = datetime.date(2024, 2, 1), datetime.date(2024, 3, 11)
    slow = _writer(
        destination.lake, first, last, "killed", "--delay-per-day", "1", *destination.options
    )
    _wait_until_writing(destination, slow)
    os.kill(slow.pid, signal.SIGKILL)
    slow.wait(timeout=PROCESS_SECONDS)
    assert slow.returncode == -signal.SIGKILL

    assert destination.version() == version
    assert destination.rows().sort_by("id").equals(before.sort_by("id"))
    if destination.folder is None:
        # the server ended the killed run's transaction: its staging rows went with it
        deadline = time.monotonic() + PROCESS_SECONDS
        while _copying_backends():
            assert time.monotonic() < deadline, "the killed run's transaction stayed open"
            time.sleep(0.1)

    rerun = _writer(destination.lake, first, last, "rerun", *destination.options)
    _, errors = rerun.communicate(timeout=PROCESS_SECONDS)
    assert rerun.returncode == 0, errors[-3000:]
    days = [first + datetime.timedelta(days=n) for n in range((last - first).days + 1)]
    _assert_table_is(destination, {january: {"before"}, **{day: {"rerun"} for day in days}})
