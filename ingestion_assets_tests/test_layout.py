"""How rows sit in a Delta table: one file per month of days, windows replaced exactly, reading
overlapped with writing."""

from __future__ import annotations

import datetime
import pathlib
import random
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, DailyPartitionsDefinition, asset, materialize
from deltalake import DeltaTable, write_deltalake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.lake.compaction import maintain_table
from ingestion_assets.lake.files import read_ahead
from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets_tests.conftest import RANGE_END_TAG, RANGE_START_TAG

FIRST_DAY = datetime.date(2024, 1, 1)
DAY_COUNT = 121  # 2024-01-01 .. 2024-04-30: four months
DAYS = DailyPartitionsDefinition(
    start_date=FIRST_DAY.isoformat(),
    end_date=(FIRST_DAY + datetime.timedelta(days=DAY_COUNT)).isoformat(),
)


def _day(index: int) -> datetime.date:
    return FIRST_DAY + datetime.timedelta(days=index)


def _write_window(
    lake: pathlib.Path,
    instance: DagsterInstance,
    rows: list[dict[str, Any]],
    first: datetime.date,
    last: datetime.date,
    batches: int = 3,
) -> None:
    """Materialize the window first..last with `rows` (in the given order, in `batches`)."""
    schema = pa.schema([("day", pa.date32()), ("id", pa.int64()), ("value", pa.string())])

    @asset(key=["t", "events"], partitions_def=DAYS, metadata={"ingestion/partition_column": "day"})
    def events() -> pa.RecordBatchReader:
        table = pa.Table.from_pylist(rows, schema=schema)
        size = max(1, -(-table.num_rows // batches))
        return pa.RecordBatchReader.from_batches(schema, table.to_batches(max_chunksize=size))

    tags = {RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()}
    result = materialize(
        [events],
        instance=instance,
        resources={"io_manager": DeltaLakeIOManager(root_uri=str(lake))},
        tags=tags,
    )
    assert result.success


def _files(table: DeltaTable) -> list[dict[str, Any]]:
    return pa.table(table.get_add_actions(flatten=True)).to_pylist()


def _assert_files_are_months_with_true_statistics(uri: pathlib.Path) -> None:
    """Every file holds days of one month, and its statistics say exactly what it holds."""
    table = DeltaTable(str(uri))
    assert table.metadata().partition_columns == []
    for entry in _files(table):
        days = pq.read_table(uri / entry["path"]).column(PARTITION_DATE).to_pylist()
        assert days, f"{entry['path']} is empty"
        assert entry["num_records"] == len(days)
        assert entry[f"min.{PARTITION_DATE}"] == min(days)
        assert entry[f"max.{PARTITION_DATE}"] == max(days)
        assert (min(days).year, min(days).month) == (max(days).year, max(days).month)


def _content(uri: pathlib.Path) -> list[tuple[datetime.date, int, str]]:
    table = DeltaTable(str(uri)).to_pyarrow_table()
    return sorted(
        zip(
            table.column(PARTITION_DATE).to_pylist(),
            table.column("id").to_pylist(),
            table.column("value").to_pylist(),
            strict=True,
        )
    )


def test_a_four_month_backfill_makes_one_file_per_month_and_maintenance_keeps_it_so(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    lake = tmp_path / "lake"
    uri = lake / "t" / "events"
    rows = [
        {"day": _day(i), "id": i * 10 + n, "value": "backfill"}
        for i in range(DAY_COUNT)
        for n in range(3)
    ]
    random.Random(5).shuffle(rows)  # no ORDER BY at the source: days arrive in any order
    _write_window(lake, instance, rows, _day(0), _day(DAY_COUNT - 1), batches=7)
    assert len(_files(DeltaTable(str(uri)))) == 4
    _assert_files_are_months_with_true_statistics(uri)

    day = datetime.date(2024, 2, 14)
    _write_window(lake, instance, [{"day": day, "id": 1, "value": "rerun"}], day, day)
    table = DeltaTable(str(uri))
    # February's other days rewritten to a file of their own, beside the new day's
    assert len(_files(table)) == 5
    _assert_files_are_months_with_true_statistics(uri)
    content = _content(uri)
    assert [row for row in content if row[0] == day] == [(day, 1, "rerun")]
    assert len(content) == DAY_COUNT * 3 - 3 + 1
    assert {row[2] for row in content if row[0] != day} == {"backfill"}
    history = table.history()
    assert history[0]["operation"] == "WRITE"  # one commit for the rerun
    assert len([entry for entry in history if entry["operation"] != "CREATE TABLE"]) == 2

    report = maintain_table(str(uri), None, compact=True, vacuum_retention_hours=0, checkpoint=True)
    assert (report.files_before, report.files_after) == (5, 4)
    assert (report.months_compacted, report.files_compacted) == (1, 2)
    # the replaced files (the backfill's February, the rerun's two) are gone from storage
    assert report.files_vacuumed == 3
    assert len(list(uri.glob("*.parquet"))) == 4
    assert _content(uri) == content
    _assert_files_are_months_with_true_statistics(uri)
    assert (
        uri / "_delta_log" / f"{DeltaTable(str(uri)).version():020}.checkpoint.parquet"
    ).exists()
    # nothing left to merge: a second pass changes nothing
    again = maintain_table(str(uri), None, compact=True, vacuum_retention_hours=0, checkpoint=False)
    assert (again.files_compacted, again.files_vacuumed, again.files_after) == (0, 0, 4)


windows = st.tuples(
    st.integers(0, DAY_COUNT - 1), st.integers(0, 45), st.integers(0, 2**32 - 1)
).map(lambda t: (t[0], min(DAY_COUNT - 1, t[0] + t[1]), t[2]))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(windows, min_size=1, max_size=4))
def test_any_window_replaces_exactly_its_rows_and_no_others(
    tmp_path_factory: pytest.TempPathFactory,
    instance: DagsterInstance,
    steps: list[tuple[int, int, int]],
) -> None:
    lake = tmp_path_factory.mktemp("lake")
    uri = lake / "t" / "events"
    expected: dict[datetime.date, list[tuple[datetime.date, int, str]]] = {}
    for step, (first, last, seed) in enumerate(steps):
        generator = random.Random(seed)
        rows = [
            {"day": _day(i), "id": i * 10 + n, "value": f"step {step}"}
            for i in range(first, last + 1)
            for n in range(generator.randint(0, 3))  # some days have no rows at all
        ]
        generator.shuffle(rows)
        _write_window(lake, instance, rows, _day(first), _day(last), generator.randint(1, 5))
        for i in range(first, last + 1):
            expected[_day(i)] = []
        for row in rows:
            expected[row["day"]].append((row["day"], row["id"], row["value"]))
        if DeltaTable.is_deltatable(str(uri)):
            assert _content(uri) == sorted(r for day_rows in expected.values() for r in day_rows)
            _assert_files_are_months_with_true_statistics(uri)


def test_a_table_written_hive_partitioned_by_day_keeps_its_layout_and_is_replaced_exactly(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    lake = tmp_path / "lake"
    uri = lake / "t" / "events"
    old = pa.table(
        {
            "day": pa.array([_day(0), _day(1), _day(2)], pa.date32()),
            "id": pa.array([1, 2, 3], pa.int64()),
            "value": ["old", "old", "old"],
            PARTITION_DATE: pa.array([_day(0), _day(1), _day(2)], pa.date32()),
            "_ingested_at": pa.array([None] * 3, pa.timestamp("us", "UTC")),
            "_run_id": pa.array(["x"] * 3, pa.string()),
        }
    )
    write_deltalake(str(uri), old, partition_by=[PARTITION_DATE])
    _write_window(lake, instance, [{"day": _day(1), "id": 9, "value": "new"}], _day(1), _day(1))
    assert DeltaTable(str(uri)).metadata().partition_columns == [PARTITION_DATE]
    assert _content(uri) == [(_day(0), 1, "old"), (_day(1), 9, "new"), (_day(2), 3, "old")]


def _numbers(count: int, closed: threading.Event, fail_at: int | None = None) -> Iterator[int]:
    try:
        for number in range(count):
            if number == fail_at:
                raise ConnectionResetError("the source went away at batch 3")
            yield number
    finally:
        closed.set()


def test_read_ahead_yields_everything_in_order_and_closes_the_source() -> None:
    closed = threading.Event()
    assert list(read_ahead(_numbers(100, closed), depth=2)) == list(range(100))  # type: ignore[arg-type]
    assert closed.is_set()


def test_read_ahead_reraises_the_source_error_after_the_batches_before_it() -> None:
    closed = threading.Event()
    seen: list[int] = []
    with pytest.raises(ConnectionResetError, match="went away at batch 3"):
        seen.extend(read_ahead(_numbers(10, closed, fail_at=3)))  # type: ignore[arg-type]
    assert seen == [0, 1, 2]
    assert closed.is_set()


def test_read_ahead_stops_the_reader_when_the_writer_stops() -> None:
    closed = threading.Event()
    batches = read_ahead(_numbers(10_000, closed), depth=2)  # type: ignore[arg-type]
    assert next(batches) == 0
    batches.close()  # e.g. writing failed
    assert closed.wait(5)
    assert not [t for t in threading.enumerate() if t.name == "ingestion-read-ahead"]
