"""Writers racing for one Delta table, and a writer killed in the middle of a write."""

from __future__ import annotations

import datetime
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from ingestion_assets.lake.compaction import maintain_table
from ingestion_assets.lake.rows import PARTITION_DATE

pytestmark = pytest.mark.slow

ROWS_PER_DAY = 500
PROCESS_SECONDS = 120
# the same month: every writer's window shares (or rewrites) February's files
RACE_DAYS = [datetime.date(2024, 2, day) for day in (3, 10, 17, 24, 28)]


def _writer(
    lake: pathlib.Path | str,
    first: datetime.date,
    last: datetime.date,
    tag: str,
    *options: str,
) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "ingestion_assets_tests.writer_process",
        str(lake),
        first.isoformat(),
        last.isoformat(),
        tag,
        "--rows-per-day",
        str(ROWS_PER_DAY),
        *options,
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DAGSTER_HOME": ""},
    )


def _race(
    lake: pathlib.Path | str,
    work: pathlib.Path,
    windows: list[tuple[datetime.date, str]],
    *options: str,
) -> None:
    """Start one process per (day, tag) (with the writer `options`), release them at the same
    moment, wait for all."""
    go = work / "go"
    go.unlink(missing_ok=True)
    processes = []
    for day, tag in windows:
        ready = work / f"ready-{tag}"
        ready.unlink(missing_ok=True)
        processes.append(
            (
                tag,
                ready,
                # each write lasts half a second after it read the table: the writes overlap
                _writer(
                    lake,
                    day,
                    day,
                    tag,
                    "--ready",
                    str(ready),
                    "--go",
                    str(go),
                    "--delay-per-day",
                    "0.5",
                    *options,
                ),
            )
        )
    deadline = time.monotonic() + PROCESS_SECONDS
    while not all(ready.exists() for _, ready, _ in processes):
        assert time.monotonic() < deadline, "the writers did not start"
        assert all(process.poll() is None for _, _, process in processes), "a writer died early"
        time.sleep(0.01)
    go.touch()
    for tag, _, process in processes:
        _, errors = process.communicate(timeout=PROCESS_SECONDS)
        assert process.returncode == 0, f"writer {tag} failed:\n{errors[-3000:]}"


def _rows(lake: pathlib.Path | str, storage_options: dict[str, str] | None = None) -> pa.Table:
    return DeltaTable(f"{lake}/t/events", storage_options=storage_options).to_pyarrow_table(
        columns=[PARTITION_DATE, "id", "value"]
    )


def _assert_table_is(
    lake: pathlib.Path | str,
    expected: dict[datetime.date, set[str]],
    storage_options: dict[str, str] | None = None,
) -> None:
    """Each day holds ids 0..N-1 exactly once, all from one of the writers allowed for it."""
    table = _rows(lake, storage_options)
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


def test_two_processes_writing_the_same_partition_leave_exactly_one_copy(
    tmp_path: pathlib.Path,
) -> None:
    lake = tmp_path / "lake"
    expected: dict[datetime.date, set[str]] = {}
    # 10 races: the first creates the table, the next four land new days beside the others,
    # the last five replace days both writers find in the table
    for race in range(10):
        day = RACE_DAYS[race % len(RACE_DAYS)]
        tags = [f"race{race}-a", f"race{race}-b"]
        _race(lake, tmp_path, [(day, tag) for tag in tags])
        expected[day] = set(tags)
        _assert_table_is(lake, expected)
        winner = set(
            _rows(lake)
            .filter(pa.compute.equal(_rows(lake).column(PARTITION_DATE), day))
            .column("value")
            .to_pylist()
        )
        expected[day] = winner
    history = DeltaTable(str(lake / "t" / "events")).history()
    # every writer committed: the loser of each race replaced the winner's rows
    assert len([entry for entry in history if entry["operation"] == "WRITE"]) == 20


def test_different_partitions_written_at_once_all_land(tmp_path: pathlib.Path) -> None:
    lake = tmp_path / "lake"
    # one day first, so that the table exists and every writer rewrites February's file
    _race(lake, tmp_path, [(datetime.date(2024, 2, 1), "first")])
    windows = [(day, f"day{day.day}") for day in RACE_DAYS[:3]]
    _race(lake, tmp_path, windows)
    expected = {day: {tag} for day, tag in windows}
    expected[datetime.date(2024, 2, 1)] = {"first"}
    _assert_table_is(lake, expected)


def _stored_data_files(uri: pathlib.Path) -> set[str]:
    return {path.name for path in uri.glob("*.parquet")}


def _referenced_files(uri: pathlib.Path) -> set[str]:
    return set(
        pa.table(DeltaTable(str(uri)).get_add_actions(flatten=True)).column("path").to_pylist()
    )


def test_a_write_killed_midway_leaves_the_previous_version_and_maintenance_removes_its_files(
    tmp_path: pathlib.Path,
) -> None:
    lake = tmp_path / "lake"
    uri = lake / "t" / "events"
    january = datetime.date(2024, 1, 10)
    _race(lake, tmp_path, [(january, "before")])
    version, before = DeltaTable(str(uri)).version(), _rows(lake)

    # a backfill of 40 days, a second per day: killed as soon as its first file exists
    first, last = datetime.date(2024, 2, 1), datetime.date(2024, 3, 11)
    slow = _writer(lake, first, last, "killed", "--delay-per-day", "1")
    deadline = time.monotonic() + PROCESS_SECONDS
    while not _stored_data_files(uri) - _referenced_files(uri):
        assert slow.poll() is None, f"the writer ended before it was killed: {slow.stderr}"
        assert time.monotonic() < deadline, "the writer never wrote a file"
        time.sleep(0.05)
    os.kill(slow.pid, signal.SIGKILL)
    slow.wait(timeout=PROCESS_SECONDS)
    assert slow.returncode == -signal.SIGKILL
    orphans = _stored_data_files(uri) - _referenced_files(uri)
    assert orphans, "the killed run left its first file behind"

    table = DeltaTable(str(uri))
    assert table.version() == version
    assert _rows(lake).sort_by("id").equals(before.sort_by("id"))

    # the next run of the same window succeeds, and lands every day once
    rerun = _writer(lake, first, last, "rerun")
    _, errors = rerun.communicate(timeout=PROCESS_SECONDS)
    assert rerun.returncode == 0, errors[-3000:]
    days = [first + datetime.timedelta(days=n) for n in range((last - first).days + 1)]
    _assert_table_is(lake, {january: {"before"}, **{day: {"rerun"} for day in days}})

    report = maintain_table(str(uri), None, compact=True, vacuum_retention_hours=0, checkpoint=True)
    assert report.files_vacuumed >= len(orphans)
    assert not orphans & _stored_data_files(uri)
    assert _stored_data_files(uri) == _referenced_files(uri)
    _assert_table_is(lake, {january: {"before"}, **{day: {"rerun"} for day in days}})
