"""Schema evolution never wedges a table: after a column was added (or dropped, or changed type)
at the source, re-runs of any day, compaction, vacuum and checkpoints keep working, or fail
naming the table, the column and the fix while leaving the table writable.

Every write goes through the Delta IO manager in a Dagster run, as in production."""

from __future__ import annotations

import datetime
import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any

import duckdb
import duckdb_extension_delta
import pyarrow as pa
import pytest
from dagster import DagsterInstance, DailyPartitionsDefinition, asset, materialize
from deltalake import DeltaTable
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.lake.compaction import maintain_table
from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets_tests.conftest import RANGE_END_TAG, RANGE_START_TAG, failure_message

FIRST_DAY = datetime.date(2024, 1, 1)
LAST_DAY = datetime.date(2024, 3, 31)  # three months: three month files
DAYS = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-04-01")
ROWS_PER_DAY = 2
TABLE = "t.events"
# columns a source may grow, with their types; `id` and `day` are always there
EXTRA_COLUMNS: dict[str, pa.DataType] = {
    "note": pa.string(),
    "amount": pa.decimal128(12, 2),
    "flag": pa.bool_(),
}


def _days(first: datetime.date, last: datetime.date) -> list[datetime.date]:
    return [first + datetime.timedelta(days=n) for n in range((last - first).days + 1)]


def _value(column: str, day: datetime.date, row_id: int, generation: int) -> Any:
    """The value the source holds for a column of a row, at a run `generation`."""
    if column == "note":
        return f"{day.isoformat()}/{row_id}/{generation}"
    if column == "amount":
        return pa.scalar(day.day * 100 + row_id + generation, pa.decimal128(12, 2)).as_py()
    return (day.day + row_id + generation) % 2 == 0


def _source_rows(
    days: list[datetime.date], columns: Mapping[str, pa.DataType], generation: int
) -> pa.Table:
    """What the source returns for `days`: ROWS_PER_DAY rows a day, with `columns`."""
    rows = [
        {
            "day": day,
            "id": day.toordinal() * 10 + n,
            **{name: _value(name, day, n, generation) for name in columns},
        }
        for day in days
        for n in range(ROWS_PER_DAY)
    ]
    schema = pa.schema(
        [("day", pa.date32()), ("id", pa.int64()), *((n, t) for n, t in columns.items())]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _materialize(
    lake: pathlib.Path,
    instance: DagsterInstance,
    rows: pa.Table,
    first: datetime.date,
    last: datetime.date,
    policy: str = "evolve",
) -> Any:
    """One run of `t/events` for first..last through the Delta IO manager."""

    @asset(
        key=["t", "events"],
        partitions_def=DAYS,
        metadata={"ingestion/partition_column": "day", "ingestion/schema_policy": policy},
    )
    def events() -> pa.RecordBatchReader:
        # several batches, as a source streams them
        return pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches(max_chunksize=7))

    return materialize(
        [events],
        instance=instance,
        resources={"io_manager": DeltaLakeIOManager(root_uri=str(lake))},
        tags={RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()},
        raise_on_error=False,
    )


def _duckdb() -> duckdb.DuckDBPyConnection:
    """DuckDB with the delta extension of the `duckdb-extension-delta` package, loaded by path
    (nothing is downloaded)."""
    connection = duckdb.connect()
    package = pathlib.Path(duckdb_extension_delta.__file__).parent
    connection.execute(f"LOAD '{next(package.rglob('*.duckdb_extension'))}'")
    return connection


def _rows_by_delta_rs(uri: pathlib.Path) -> list[dict[str, Any]]:
    table = DeltaTable(str(uri)).to_pyarrow_table().drop_columns(["_ingested_at", "_run_id"])
    return sorted(table.to_pylist(), key=lambda row: row["id"])


def _rows_by_duckdb(connection: duckdb.DuckDBPyConnection, uri: pathlib.Path) -> list[dict]:
    relation = connection.sql(
        f"SELECT * EXCLUDE (_ingested_at, _run_id) FROM delta_scan('{uri}') ORDER BY id"
    )
    return relation.arrow().read_all().to_pylist()


@pytest.fixture
def lake(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "lake"


def test_a_column_added_mid_backfill_keeps_old_day_re_runs_and_maintenance_working(
    lake: pathlib.Path, instance: DagsterInstance
) -> None:
    uri = lake / "t" / "events"
    assert _materialize(
        lake, instance, _source_rows(_days(FIRST_DAY, LAST_DAY), {}, 0), FIRST_DAY, LAST_DAY
    ).success
    # the source gains `note` in the middle of February: the run that brings it rewrites the
    # February file through delta-rs's writer (schema_mode merge); January's file has no note
    february = _days(datetime.date(2024, 2, 10), datetime.date(2024, 2, 20))
    note = {"note": pa.string()}
    assert _materialize(
        lake, instance, _source_rows(february, note, 1), february[0], february[-1]
    ).success
    assert "note" in DeltaTable(str(uri)).schema().to_arrow().names

    # re-runs of a day in the month written before the column: with and without it at the source
    old_day, other_old_day = datetime.date(2024, 1, 10), datetime.date(2024, 1, 11)
    for day, columns in ((old_day, note), (other_old_day, {})):
        result = _materialize(lake, instance, _source_rows([day], columns, 2), day, day)
        assert result.success, failure_message(result)
    report = maintain_table(str(uri), None, compact=True, vacuum_retention_hours=0, checkpoint=True)
    assert report.months_compacted >= 1
    # and after maintenance: a new day, an old day, the whole range again
    for day in (datetime.date(2024, 3, 5), datetime.date(2024, 1, 20)):
        result = _materialize(lake, instance, _source_rows([day], note, 3), day, day)
        assert result.success, failure_message(result)

    rows = {row["id"]: row for row in _rows_by_delta_rs(uri)}
    assert len(rows) == len(_days(FIRST_DAY, LAST_DAY)) * ROWS_PER_DAY
    for row_id, row in rows.items():
        day = row["day"]
        if day == old_day or day in (datetime.date(2024, 3, 5), datetime.date(2024, 1, 20)):
            generation = 2 if day == old_day else 3
            assert row["note"] == _value("note", day, row_id % 10, generation)
        elif day in february:
            assert row["note"] == _value("note", day, row_id % 10, 1)
        else:
            assert row["note"] is None, row
    assert _rows_by_duckdb(_duckdb(), uri) == sorted(rows.values(), key=lambda row: row["id"])

    result = _materialize(
        lake, instance, _source_rows(_days(FIRST_DAY, LAST_DAY), note, 4), FIRST_DAY, LAST_DAY
    )
    assert result.success, failure_message(result)
    assert {row["note"] for row in _rows_by_delta_rs(uri)} == {
        _value("note", day, n, 4) for day in _days(FIRST_DAY, LAST_DAY) for n in range(2)
    }


def test_a_column_dropped_at_the_source_stays_with_nulls_or_fails_clearly_under_freeze(
    lake: pathlib.Path, instance: DagsterInstance
) -> None:
    uri = lake / "t" / "events"
    january = _days(FIRST_DAY, datetime.date(2024, 1, 31))
    note = {"note": pa.string()}
    assert _materialize(
        lake, instance, _source_rows(january, note, 0), january[0], january[-1]
    ).success
    day = datetime.date(2024, 1, 15)

    frozen = _materialize(lake, instance, _source_rows([day], {}, 1), day, day, policy="freeze")
    assert not frozen.success
    message = failure_message(frozen)
    assert TABLE in message
    assert "partition 2024-01-15" in message
    assert "missing column note (string)" in message
    assert "schema_policy" in message
    assert "evolve" in message
    assert DeltaTable(str(uri)).version() == 1  # created, then the backfill

    evolved = _materialize(lake, instance, _source_rows([day], {}, 1), day, day)
    assert evolved.success, failure_message(evolved)
    rows = {row["id"]: row for row in _rows_by_delta_rs(uri)}
    assert len(rows) == len(january) * ROWS_PER_DAY
    assert {row["note"] for row in rows.values() if row["day"] == day} == {None}
    assert all(row["note"] is not None for row in rows.values() if row["day"] != day)
    # the column coming back at the source fills it again
    back = _materialize(lake, instance, _source_rows([day], note, 2), day, day, policy="freeze")
    assert back.success, failure_message(back)
    assert _rows_by_duckdb(_duckdb(), uri) == _rows_by_delta_rs(uri)


def test_a_later_type_change_fails_naming_both_types_and_leaves_the_table_writable(
    lake: pathlib.Path, instance: DagsterInstance
) -> None:
    uri = lake / "t" / "events"
    days = _days(FIRST_DAY, datetime.date(2024, 2, 29))
    assert _materialize(lake, instance, _source_rows(days, {}, 0), days[0], days[-1]).success
    day = datetime.date(2024, 2, 3)
    note = {"note": pa.string()}
    assert _materialize(lake, instance, _source_rows([day], note, 1), day, day).success
    version, before = DeltaTable(str(uri)).version(), _rows_by_delta_rs(uri)

    changed = _source_rows([day], {"note": pa.string()}, 2)
    changed = changed.set_column(2, "note", pa.array([1, 2], pa.int32()))
    result = _materialize(lake, instance, changed, day, day)
    assert not result.success
    message = failure_message(result)
    assert TABLE in message
    assert "column note changed type from string to integer" in message
    assert "Change the column back at the source" in message
    assert DeltaTable(str(uri)).version() == version
    assert _rows_by_delta_rs(uri) == before

    again = datetime.date(2024, 1, 4)
    result = _materialize(lake, instance, _source_rows([again], note, 3), again, again)
    assert result.success, failure_message(result)
    maintain_table(str(uri), None, compact=True, vacuum_retention_hours=0, checkpoint=True)
    assert _rows_by_duckdb(_duckdb(), uri) == _rows_by_delta_rs(uri)


class SchemaChanges(RuleBasedStateMachine):
    """Columns come and go at the source while old and new days are re-run and the table is
    compacted and vacuumed; after every step delta-rs and DuckDB read exactly the source model."""

    def __init__(self) -> None:
        super().__init__()
        self.source_columns: dict[str, pa.DataType] = {}
        # the model: each row id's expected values (every column the table ever got)
        self.expected: dict[int, dict[str, Any]] = {}
        self.table_columns: list[str] = []
        self.generation = 0

    @initialize()
    def backfill(self) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="schema-changes-")
        self.lake = pathlib.Path(self.folder.name) / "lake"
        self.uri = self.lake / "t" / "events"
        self.instance = DagsterInstance.ephemeral()
        self.duckdb = _duckdb()
        self._run(FIRST_DAY, LAST_DAY)

    def _run(self, first: datetime.date, last: datetime.date) -> None:
        self.generation += 1
        days = _days(first, last)
        rows = _source_rows(days, self.source_columns, self.generation)
        result = _materialize(self.lake, self.instance, rows, first, last)
        assert result.success, failure_message(result)
        for name in self.source_columns:
            if name not in self.table_columns:
                self.table_columns.append(name)
        for row in rows.to_pylist():
            self.expected[row["id"]] = {
                "day": row["day"],
                PARTITION_DATE: row["day"],
                "id": row["id"],
                **{name: row.get(name) for name in self.table_columns},
            }
        # a column added now is null in the rows written before
        for row in self.expected.values():
            for name in self.table_columns:
                row.setdefault(name, None)

    @rule(name=st.sampled_from(sorted(EXTRA_COLUMNS)))
    def add_column(self, name: str) -> None:
        self.source_columns[name] = EXTRA_COLUMNS[name]

    @precondition(lambda self: bool(self.source_columns))
    @rule(data=st.data())
    def drop_column(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.source_columns)))
        del self.source_columns[name]

    @rule(offset=st.integers(0, 30), length=st.integers(0, 3))
    def rerun_an_old_day(self, offset: int, length: int) -> None:
        first = FIRST_DAY + datetime.timedelta(days=offset)
        self._run(first, first + datetime.timedelta(days=length))

    @rule(offset=st.integers(0, 20), length=st.integers(0, 10))
    def rerun_a_new_day(self, offset: int, length: int) -> None:
        first = datetime.date(2024, 3, 1) + datetime.timedelta(days=offset)
        self._run(first, min(LAST_DAY, first + datetime.timedelta(days=length)))

    @rule()
    def compact(self) -> None:
        maintain_table(
            str(self.uri), None, compact=True, vacuum_retention_hours=None, checkpoint=True
        )

    @rule()
    def vacuum(self) -> None:
        maintain_table(
            str(self.uri), None, compact=False, vacuum_retention_hours=0, checkpoint=False
        )

    def teardown(self) -> None:
        if hasattr(self, "folder"):
            self.duckdb.close()
            self.folder.cleanup()

    @invariant()
    def readers_see_the_model(self) -> None:
        if not hasattr(self, "uri"):
            return
        expected = [self.expected[key] for key in sorted(self.expected)]
        columns = ["day", "id", PARTITION_DATE, *self.table_columns]
        by_delta_rs = [{c: row.get(c) for c in columns} for row in _rows_by_delta_rs(self.uri)]
        assert by_delta_rs == [{c: row[c] for c in columns} for row in expected]
        by_duckdb = _rows_by_duckdb(self.duckdb, self.uri)
        assert [{c: row.get(c) for c in columns} for row in by_duckdb] == by_delta_rs
        assert set(by_duckdb[0]) == set(columns)


@pytest.mark.slow
def test_any_sequence_of_column_changes_re_runs_and_maintenance_keeps_the_table_readable() -> None:
    machine = settings(
        max_examples=20,
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )(SchemaChanges)
    machine.TestCase().runTest()
