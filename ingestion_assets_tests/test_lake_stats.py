"""Column statistics in the add actions: every column bounded and counted, as delta-rs reads them,
so readers skip files on any column."""

from __future__ import annotations

import datetime
import decimal
import json
import pathlib
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import DagsterInstance, DailyPartitionsDefinition, asset, materialize
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import AddAction

from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.lake.replace import commit, create_table
from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets.lake.stats import FileStatistics
from ingestion_assets_tests.conftest import RANGE_END_TAG, RANGE_START_TAG

UTC = datetime.UTC
JANUARY, FEBRUARY = datetime.date(2024, 1, 10), datetime.date(2024, 2, 20)
DAYS = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-03-01")
BIG = decimal.Decimal("12345678901234567890123456.123456")
LONG = "x" * 40
MIXED = pa.schema(
    [
        ("day", pa.date32()),
        ("id", pa.int64()),
        ("small", pa.int8()),
        ("ratio", pa.float64()),
        ("flag", pa.bool_()),
        ("name", pa.string()),
        ("note", pa.string()),
        ("amount", pa.decimal128(38, 6)),
        ("at", pa.timestamp("us", "UTC")),
        ("local", pa.timestamp("us")),
        ("blob", pa.binary()),
        ("tags", pa.list_(pa.string())),
        ("point", pa.struct([("x", pa.int32()), ("y", pa.string())])),
    ]
)


def _rows() -> pa.Table:
    """Three rows in January (one NaN ratio), three in February (ids from 1000)."""
    noon = datetime.datetime(2024, 1, 10, 12, 0, 0, 123456, tzinfo=UTC)
    rows: list[dict[str, Any]] = [
        {
            "day": JANUARY,
            "id": 1,
            "small": -3,
            "ratio": float("nan"),
            "flag": True,
            "name": "b",
            "note": LONG,
            "amount": BIG,
            "at": noon,
            "local": noon.replace(tzinfo=None),
            "blob": b"\x00",
            "tags": ["a"],
            "point": {"x": 1, "y": "p"},
        },
        {"day": JANUARY, "id": 2, "small": None, "ratio": 0.5, "flag": False, "name": "a"},
        {"day": JANUARY, "id": 3, "small": 7, "ratio": -1.5, "point": {"x": None, "y": "q"}},
    ]
    rows += [
        {
            "day": FEBRUARY,
            "id": 1000 + n,
            "small": n,
            "ratio": n / 4,
            "flag": True,
            "name": f"name {n}",
            "note": "short",
            "amount": decimal.Decimal(f"-{n}.5"),
            "at": datetime.datetime(2024, 2, 20, n, tzinfo=UTC),
            "local": datetime.datetime(2024, 2, 20, n),
            "point": None,
        }
        for n in range(3)
    ]
    return pa.Table.from_pylist(rows, schema=MIXED)


def _materialize(lake: pathlib.Path, instance: DagsterInstance) -> pathlib.Path:
    @asset(key=["t", "mixed"], partitions_def=DAYS, metadata={"ingestion/partition_column": "day"})
    def mixed() -> pa.Table:
        return _rows()

    tags = {RANGE_START_TAG: JANUARY.isoformat(), RANGE_END_TAG: FEBRUARY.isoformat()}
    resources = {"io_manager": DeltaLakeIOManager(root_uri=str(lake))}
    assert materialize([mixed], instance=instance, resources=resources, tags=tags).success
    return lake / "t" / "mixed"


def _actions(uri: pathlib.Path) -> dict[datetime.date, dict[str, Any]]:
    """Each file's flattened add action, by the month's day it holds."""
    entries = pa.table(DeltaTable(str(uri)).get_add_actions(flatten=True)).to_pylist()
    return {entry[f"min.{PARTITION_DATE}"]: entry for entry in entries}


def test_every_column_has_its_bounds_and_null_count_in_the_add_actions(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    uri = _materialize(tmp_path / "lake", instance)
    files = _actions(uri)
    assert set(files) == {JANUARY, FEBRUARY}
    january, february = files[JANUARY], files[FEBRUARY]
    assert january["num_records"] == february["num_records"] == 3

    assert (january["min.id"], january["max.id"], january["null_count.id"]) == (1, 3, 0)
    assert (january["min.small"], january["max.small"], january["null_count.small"]) == (-3, 7, 1)
    # a NaN compares above every number in some readers: no bounds rather than false ones
    assert january["min.ratio"] is None
    assert january["max.ratio"] is None
    assert (february["min.ratio"], february["max.ratio"]) == (0.0, 0.5)
    assert (january["min.flag"], january["max.flag"], january["null_count.flag"]) == (
        False,
        True,
        1,
    )
    assert (january["min.name"], january["max.name"], january["null_count.name"]) == ("a", "b", 1)
    # long text is cut to 32 characters; the cut max is raised so that it stays above the value
    assert january["min.note"] == "x" * 32
    assert january["max.note"] == "x" * 31 + "y"
    assert january["null_count.note"] == 2
    # decimals keep every digit (a float would round the max below the value)
    assert (january["min.amount"], january["max.amount"]) == (BIG, BIG)
    assert (february["min.amount"], february["max.amount"]) == (
        decimal.Decimal("-2.5"),
        decimal.Decimal("-0.5"),
    )
    # milliseconds, as Delta keeps them: the max rounded up so that it stays a true bound
    assert january["min.at"] == datetime.datetime(2024, 1, 10, 12, 0, 0, 123000, tzinfo=UTC)
    assert january["max.at"] == datetime.datetime(2024, 1, 10, 12, 0, 0, 124000, tzinfo=UTC)
    assert january["max.local"] == datetime.datetime(2024, 1, 10, 12, 0, 0, 124000)
    assert (february["min.local"], february["max.local"]) == (
        datetime.datetime(2024, 2, 20, 0),
        datetime.datetime(2024, 2, 20, 2),
    )
    # binary and nested columns: null counts only (a struct's per field, a list's none)
    assert january["null_count.blob"] == 2
    assert january.get("min.blob") is None
    assert january["null_count.tags"] is None
    assert (january["null_count.point.x"], january["null_count.point.y"]) == (2, 1)
    assert (february["null_count.point.x"], february["null_count.point.y"]) == (3, 3)
    # the lineage columns too
    assert january[f"max.{PARTITION_DATE}"] == JANUARY
    assert january["null_count._run_id"] == 0
    assert january["min._ingested_at"] is not None


def test_every_bound_holds_for_the_rows_of_its_file(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    uri = _materialize(tmp_path / "lake", instance)
    for entry in _actions(uri).values():
        rows = pq.read_table(uri / entry["path"])
        for name in rows.column_names:
            values = [value for value in rows.column(name).to_pylist() if value is not None]
            low, high = entry.get(f"min.{name}"), entry.get(f"max.{name}")
            if low is not None:
                assert all(low <= value for value in values), (entry["path"], name)
            if high is not None:
                assert all(value <= high for value in values), (entry["path"], name)
            if not pa.types.is_nested(rows.schema.field(name).type):
                assert entry[f"null_count.{name}"] == rows.column(name).null_count, name


def test_delta_rs_skips_files_on_a_column_that_is_not_the_partition_day(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    uri = _materialize(tmp_path / "lake", instance)
    table = DeltaTable(str(uri))
    february = _actions(uri)[FEBRUARY]["path"]
    assert len(table.file_uris()) == 2
    for predicate in ("id >= 1000", "name > 'c'", "amount < 0", "at >= '2024-02-01T00:00:00Z'"):
        kept = table.file_uris(file_pruning_predicate=predicate)
        assert [pathlib.Path(path).name for path in kept] == [february], predicate
    assert table.file_uris(file_pruning_predicate="id > 5000") == []
    # the rows the pruned scan finds are the rows a full scan finds
    dataset = table.to_pyarrow_dataset(file_pruning_predicate="id >= 1000")
    assert sorted(dataset.to_table().column("id").to_pylist()) == [1000, 1001, 1002]


def test_the_statistics_read_back_as_delta_rs_reads_its_own_for_the_same_rows(
    tmp_path: pathlib.Path,
) -> None:
    # the columns where both writers state the same bounds (the others differ on purpose:
    # NaN, long text, sub-millisecond maxima, decimals beyond a float)
    rows = _rows().drop_columns(["ratio", "note", "at", "local", "amount"])
    write_deltalake(str(tmp_path / "theirs"), rows)
    theirs = pa.table(DeltaTable(str(tmp_path / "theirs")).get_add_actions(flatten=True))
    statistics = FileStatistics(rows.schema)
    statistics.add(rows)
    uri = tmp_path / "ours"
    table = create_table(str(uri), rows.schema, None)
    pq.write_table(rows, uri / "part-0.parquet")
    action = AddAction(
        path="part-0.parquet",
        size=(uri / "part-0.parquet").stat().st_size,
        partition_values={},
        modification_time=0,
        data_change=True,
        stats=statistics.json(),
    )
    commit(table, [action], rows.schema)
    ours = pa.table(DeltaTable(str(uri)).get_add_actions(flatten=True))
    compared = [
        name
        for name in theirs.column_names
        # delta-rs bounds a struct's fields and leaves binary uncounted; ours counts only
        if name.startswith(("min.", "max.", "null_count."))
        and not name.startswith(("min.point", "max.point"))
        and name != "null_count.blob"
    ]
    assert len(compared) >= 15
    for name in compared:
        assert ours.column(name).to_pylist() == theirs.column(name).to_pylist(), name


def test_timestamps_of_year_1_keep_four_digits_of_year_and_read_back() -> None:
    first = datetime.datetime(1, 1, 1, 0, 0, 0, 1500)
    for kind, value, text in (
        (pa.timestamp("us"), first, "0001-01-01 00:00:00.001"),
        (pa.timestamp("us", "UTC"), first.replace(tzinfo=UTC), "0001-01-01T00:00:00.001Z"),
    ):
        statistics = FileStatistics(pa.schema([("at", kind)]))
        statistics.add(pa.table({"at": pa.array([value], kind)}))
        assert json.loads(statistics.json())["minValues"]["at"] == text


def test_a_timestamp_in_the_last_millisecond_of_year_9999_has_no_max_but_a_min() -> None:
    last = datetime.datetime.max.replace(tzinfo=UTC)
    for kind, value in (
        (pa.timestamp("us", "UTC"), last),
        (pa.timestamp("us"), last.replace(tzinfo=None)),
    ):
        statistics = FileStatistics(pa.schema([("at", kind)]))
        statistics.add(pa.table({"at": pa.array([value], kind)}))
        stats = json.loads(statistics.json())
        assert "at" not in stats["maxValues"]
        assert stats["minValues"]["at"].startswith("9999-12-31")
        assert stats["nullCount"]["at"] == 0


def test_a_time_beyond_year_9999_leaves_its_column_unbounded_instead_of_failing_the_write() -> None:
    kind = pa.timestamp("us")
    statistics = FileStatistics(pa.schema([("at", kind)]))
    statistics.add(pa.table({"at": pa.array([0, 20_000 * 365 * 86_400 * 10**6], kind)}))
    stats = json.loads(statistics.json())
    assert "at" not in stats["minValues"]
    assert "at" not in stats["maxValues"]
    assert stats["nullCount"]["at"] == 0
