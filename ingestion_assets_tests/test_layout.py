"""How rows sit in a Delta table: one file per month of days, windows replaced exactly, reading
overlapped with writing."""

from __future__ import annotations

import ast
import datetime
import json
import pathlib
import random
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, DailyPartitionsDefinition, asset, materialize
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import AddAction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ingestion_assets
from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.lake.compaction import maintain_table
from ingestion_assets.lake.files import read_ahead
from ingestion_assets.lake.replace import (
    commit,
    create_table,
    fit_schema,
    open_table,
    write_partitions,
)
from ingestion_assets.lake.rows import PARTITION_DATE, WritePlan, lake_schema
from ingestion_assets.sources.window import PartitionWindow
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


@pytest.mark.slow
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


def _lake_plan(schema: pa.Schema, first: datetime.date, last: datetime.date) -> WritePlan:
    return WritePlan(
        table_label="table t.events",
        window=PartitionWindow.of_days(first, last),
        target=lake_schema(schema, "error"),
        partition_column="day",
        ingested_at=datetime.datetime.now(datetime.UTC),
        run_id="test",
        nanoseconds="error",
    )


def _lake_write(
    uri: pathlib.Path, rows: pa.Table, first: datetime.date, last: datetime.date
) -> None:
    """Replace first..last with `rows` through the lake package alone (no Dagster run)."""
    plan = _lake_plan(rows.schema, first, last)
    existing = open_table(str(uri), None)
    plan.target, mode = fit_schema(existing, plan.target, "evolve", "t.events", str(uri))
    write_partitions(
        str(uri), None, existing, rows.to_batches(50_000), plan, mode, None, lambda _message: None
    )


def test_re_running_a_day_reads_the_straddling_month_file_one_row_group_at_a_time(
    tmp_path: pathlib.Path,
) -> None:
    uri = tmp_path / "events"
    per_day = 40_000
    days = 31 * per_day
    ids = pa.array(range(days), pa.int64())
    month = pa.table(
        {
            "day": pa.array([_day(i) for i in range(31)], pa.date32()).take(
                pc.divide(ids, per_day)
            ),
            "id": ids,
            "value": pc.binary_join_element_wise(pc.cast(ids, pa.string()), "v" * 90, " "),
        }
    )
    _lake_write(uri, month, _day(0), _day(30))
    (data_file,) = DeltaTable(str(uri)).file_uris()
    metadata = pq.read_metadata(data_file)
    assert metadata.num_row_groups >= 5
    decoded = pq.read_table(data_file).nbytes
    del month

    day = _day(14)
    rerun = pa.table({"day": pa.array([day], pa.date32()), "id": [1], "value": ["rerun"]})
    previous = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(previous)
    pa.set_memory_pool(pool)
    try:
        _lake_write(uri, rerun, day, day)
        replace_peak = pool.max_memory()
        # the measure works: reading the file whole goes past what the rerun may use
        pq.read_table(data_file)
        whole_peak = pool.max_memory()
    finally:
        pa.set_memory_pool(previous)
    assert whole_peak >= decoded
    assert replace_peak < decoded / 3, (replace_peak, decoded)
    table = DeltaTable(str(uri)).to_pyarrow_table(columns=["day", "id"])
    assert table.num_rows == days - per_day + 1
    assert table.filter(pc.equal(table.column("day"), day)).column("id").to_pylist() == [1]

    # a week holds whole row groups, which are dropped unread; the others keep their rows
    groups = [
        metadata.row_group(index).column(0).statistics  # the `day` column
        for metadata in map(pq.read_metadata, DeltaTable(str(uri)).file_uris())
        for index in range(metadata.num_row_groups)
    ]
    assert any(_day(3) <= group.min and group.max <= _day(9) for group in groups)
    week = pa.table({"day": pa.array([_day(5)], pa.date32()), "id": [2], "value": ["week"]})
    _lake_write(uri, week, _day(3), _day(9))
    table = DeltaTable(str(uri)).to_pyarrow_table(columns=["day", "id"])
    assert table.num_rows == days - 8 * per_day + 2
    assert sorted(table.column("day").unique().to_pylist()) == [
        _day(i) for i in range(31) if not 3 <= i <= 9 or i == 5
    ]


def test_a_table_written_with_partition_day_statistics_only_is_replaced_and_compacted(
    tmp_path: pathlib.Path,
) -> None:
    # tables written before every column had statistics: their add actions bound
    # `_partition_date` alone
    uri = tmp_path / "events"
    rows = pa.table(
        {
            "day": pa.array([_day(i % 60) for i in range(600)], pa.date32()),
            "id": pa.array(range(600), pa.int64()),
            "value": ["old"] * 600,
        }
    )
    plan = _lake_plan(rows.schema, _day(0), _day(59))
    converted = pa.Table.from_batches([plan.convert(batch) for batch in rows.to_batches()])
    table = create_table(str(uri), plan.target, None)
    actions = []
    for month_start, month_end in ((0, 30), (31, 59)):
        days = pc.field(PARTITION_DATE)
        part = converted.filter((days >= _day(month_start)) & (days <= _day(month_end)))
        name = f"part-old-{month_start}.parquet"
        pq.write_table(part, uri / name)
        stats = {
            "numRecords": part.num_rows,
            "minValues": {PARTITION_DATE: _day(month_start).isoformat()},
            "maxValues": {PARTITION_DATE: _day(month_end).isoformat()},
            "nullCount": {PARTITION_DATE: 0},
        }
        actions.append(
            AddAction(
                path=name,
                size=(uri / name).stat().st_size,
                partition_values={},
                modification_time=0,
                data_change=True,
                stats=json.dumps(stats),
            )
        )
    commit(table, actions, plan.target)
    # read: the table holds the old rows
    assert DeltaTable(str(uri)).to_pyarrow_table().num_rows == 600

    day = _day(40)
    _lake_write(
        uri, pa.table({"day": pa.array([day], pa.date32()), "id": [9], "value": ["new"]}), day, day
    )
    content = DeltaTable(str(uri)).to_pyarrow_table(columns=["day", "id", "value"])
    assert content.num_rows == 600 - 10 + 1
    assert content.filter(pc.equal(content.column("day"), day)).column("value").to_pylist() == [
        "new"
    ]

    report = maintain_table(
        str(uri), None, compact=True, vacuum_retention_hours=0, checkpoint=False
    )
    assert (report.files_before, report.files_after) == (3, 2)
    _assert_files_are_months_with_true_statistics(uri)
    merged = [
        entry
        for entry in _files(DeltaTable(str(uri)))
        if entry[f"min.{PARTITION_DATE}"] == _day(31)
    ]
    # the merged file has every column's statistics
    assert merged[0]["min.id"] is not None
    assert sorted(
        DeltaTable(str(uri)).to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    ) == sorted(content.column("id").to_pylist())


def test_nothing_below_the_lake_and_modes_packages_imports_dagster() -> None:
    package = pathlib.Path(ingestion_assets.__file__).parent
    seen: set[str] = set()
    pending = [
        f"ingestion_assets.{folder}.{path.stem}"
        for folder in ("lake", "modes")
        for path in (package / folder).glob("*.py")
    ]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = package.parent / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = path.with_suffix("") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] != "dagster", f"{module} imports {name}"
                if name.startswith("ingestion_assets."):
                    pending.append(name)
    # the walk reached the modules the lake builds on
    assert {"ingestion_assets.errors", "ingestion_assets.sources.window"} <= seen


def test_a_day_re_run_in_a_month_written_before_a_column_was_added_keeps_the_old_rows(
    tmp_path: pathlib.Path,
) -> None:
    uri = tmp_path / "events"
    january = pa.table(
        {"day": pa.array([_day(i) for i in range(31)], pa.date32()), "id": range(31)}
    )
    _lake_write(uri, january, _day(0), _day(30))
    # February brings a column: the table evolves, January's file has no such column
    february = pa.table({"day": pa.array([_day(31)], pa.date32()), "id": [100], "extra": ["new"]})
    _lake_write(uri, february, _day(31), _day(31))
    rerun = pa.table({"day": pa.array([_day(9)], pa.date32()), "id": [9], "extra": ["rerun"]})
    _lake_write(uri, rerun, _day(9), _day(9))
    maintain_table(str(uri), None, compact=True, vacuum_retention_hours=None, checkpoint=False)

    content = DeltaTable(str(uri)).to_pyarrow_table(columns=["day", "id", "extra"]).sort_by("id")
    assert content.column("id").to_pylist() == [*range(31), 100]
    ids, values = content.column("id").to_pylist(), content.column("extra").to_pylist()
    extras = dict(zip(ids, values, strict=True))
    assert extras[9] == "rerun"
    assert extras[100] == "new"
    assert {value for key, value in extras.items() if key not in (9, 100)} == {None}
