"""SQL Server change data capture as a cdc feed: the SQL Server reads pinned as the `mssql`
dialect compiles them (there is no SQL Server here), the reads CDC cannot answer refused with
the fix, and the same apply end to end on PostgreSQL, MariaDB and SQLite through a change table
of CDC's shape: a first run loads the table whole (rows never changed since capture began
included), later runs apply the changes past the cursor so that the Delta table equals the
source, a run with nothing new commits nothing."""

from __future__ import annotations

import decimal
import pathlib
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, materialize
from sqlalchemy.dialects import mysql

from ingestion_assets.errors import SourceError
from ingestion_assets.merge_asset import CURSOR
from ingestion_assets.sources.sql import SqlSource, SqlTableReader
from ingestion_assets.sources.sqlserver_cdc import (
    OPERATION,
    SEQVAL,
    START,
    ZERO_LSN,
    capture_changes,
    capture_instance,
    changes_query,
    check_capture,
    lsn_state_query,
    newest_cdc_change,
    newest_query,
    read_cdc_changes,
)
from ingestion_assets.specs import TableSpec
from ingestion_assets_tests.conftest import SourceDatabase, build_project

LABEL = "source 'erp', table 'dbo.Customer', the whole table"


def _lsn(number: int) -> bytes:
    """A log sequence number: binary(10), compared byte by byte."""
    return number.to_bytes(10, "big")


def _mssql() -> sa.Dialect:
    dialect = sa.create_engine("mssql+pyodbc://").dialect  # compiles only: never connects
    dialect.server_version_info = (16, 0)
    return dialect


def _sql(query: sa.Select[Any], dialect: sa.Dialect) -> tuple[str, dict[str, Any]]:
    compiled = query.compile(dialect=dialect)
    return " ".join(str(compiled).split()), compiled.params


def _spec(**feed: Any) -> TableSpec:
    return TableSpec.model_validate(
        {
            "schema": "dbo",
            "name": "Customer",
            "primary_key": ["CustomerID"],
            "mode": "cdc",
            "cdc": {"feed": "sqlserver_cdc", **feed},
        }
    )


def test_the_sql_server_reads_compile_to_the_capture_instance_functions() -> None:
    dialect = _mssql()
    table = sa.Table(
        "Customer",
        sa.MetaData(),
        sa.Column("CustomerID", sa.Integer, primary_key=True),
        sa.Column("Name", sa.Unicode(50)),
        schema="dbo",
    )
    capture = capture_instance(_spec(), LABEL)
    assert capture == "dbo_Customer"
    # a first run: the capture instance's LSNs, then the table itself, stamped with max_lsn
    assert _sql(lsn_state_query(capture, None), dialect) == (
        "SELECT sys.fn_cdc_get_min_lsn(?) AS min_lsn, sys.fn_cdc_get_max_lsn() AS max_lsn",
        {"capture": "dbo_Customer"},
    )
    engine = sa.create_engine("mssql+pyodbc://")
    reader = SqlTableReader(engine, "erp", _spec(), 1000)
    assert _sql(reader._query(table, list(table.c), None, None), dialect) == (
        "SELECT dbo.[Customer].[CustomerID], dbo.[Customer].[Name] FROM dbo.[Customer]",
        {},
    )
    # a later run: the minimum LSN checked and the range computed in one statement ...
    assert _sql(lsn_state_query(capture, _lsn(42)), dialect) == (
        "SELECT sys.fn_cdc_get_min_lsn(?) AS min_lsn, sys.fn_cdc_get_max_lsn() AS max_lsn, "
        "sys.fn_cdc_increment_lsn(?) AS from_lsn",
        {"capture": "dbo_Customer", "cursor": _lsn(42)},
    )
    # ... then bound to the capture instance's function
    changes = capture_changes(capture, list(table.c), _lsn(43), _lsn(50))
    assert _sql(changes_query(changes, [changes.c.CustomerID, changes.c.Name]), dialect) == (
        "SELECT ct.__$start_lsn, ct.__$seqval, ct.__$operation, ct.[CustomerID], ct.[Name] "
        "FROM cdc.fn_cdc_get_all_changes_dbo_Customer(?, ?, N'all') AS ct "
        "ORDER BY ct.__$start_lsn, ct.__$seqval",
        {"from_lsn": _lsn(43), "to_lsn": _lsn(50)},
    )
    # the sensor: the capture instance's own newest change, not the database's newest LSN
    newest = capture_changes("Sales_Orders_v2", (), _lsn(43), _lsn(50))
    assert _sql(newest_query(newest), dialect) == (
        "SELECT max(ct.__$start_lsn) AS newest "
        "FROM cdc.fn_cdc_get_all_changes_Sales_Orders_v2(?, ?, N'all') AS ct",
        {"from_lsn": _lsn(43), "to_lsn": _lsn(50)},
    )


@pytest.mark.parametrize(
    ("feed", "name"),
    [
        ({"capture_instance": "dbo_Customer'); DROP TABLE x; --"}, "Customer"),
        ({"capture_instance": "dbo Customer"}, "Customer"),
        # the default, `<schema>_<table>`, of a table whose name holds a space
        ({}, "Customer Notes"),
    ],
)
def test_a_capture_instance_that_is_no_plain_name_is_refused_before_any_sql(
    feed: dict[str, str], name: str
) -> None:
    spec = _spec(**feed).model_copy(update={"name": name})
    # never connects: the name is refused first
    source = SqlSource("erp", sa.make_url("mssql+pyodbc://"))
    for ask in (read_cdc_changes, newest_cdc_change):
        with pytest.raises(SourceError) as refused:
            ask(source, spec, _lsn(1).hex())
        message = str(refused.value)
        assert message.startswith(f"source 'erp', table 'dbo.{name}', the whole table: ")
        assert "is not a name of letters, digits and underscores" in message
        assert "Set `cdc.capture_instance`" in message
    with pytest.raises(SourceError, match=r"the stored cursor 'xyz' is no LSN"):
        read_cdc_changes(source, _spec(), "xyz")


def test_a_read_cdc_cannot_answer_whole_is_refused_with_the_fix() -> None:
    check_capture(_lsn(10), _lsn(90), None, None, "dbo_Customer", LABEL)
    check_capture(_lsn(10), _lsn(90), _lsn(9), _lsn(10), "dbo_Customer", LABEL)
    with pytest.raises(SourceError) as stale:
        check_capture(_lsn(10), _lsn(90), _lsn(8), _lsn(9), "dbo_Customer", LABEL)
    assert str(stale.value).startswith(
        f"{LABEL}: the stored cursor, LSN 0x{_lsn(8).hex()}, is older than capture instance "
        f"'dbo_Customer''s minimum LSN 0x{_lsn(10).hex()}"
    )
    assert "`ingest/full_refresh=true`" in str(stale.value)
    assert "@retention" in str(stale.value)
    with pytest.raises(SourceError, match=r"no capture instance 'dbo_Customer' this user may"):
        check_capture(ZERO_LSN, _lsn(90), None, None, "dbo_Customer", LABEL)
    with pytest.raises(SourceError, match=r"capture job has not yet read .* is NULL"):
        check_capture(_lsn(10), None, None, None, "dbo_Customer", LABEL)
    with pytest.raises(SourceError, match=r"sp_cdc_start_job"):
        check_capture(_lsn(10), _lsn(9), None, None, "dbo_Customer", LABEL)


def _tables(database: SourceDatabase) -> tuple[sa.Table, sa.Table]:
    """The table, keys 1..5 loaded before capture began (so in no change), and its change
    table of CDC's shape, empty."""
    metadata = sa.MetaData()
    schema = database.schema("Sales")
    binary = sa.LargeBinary(10).with_variant(mysql.VARBINARY(10), "mysql")
    table = sa.Table(
        "Customer",
        metadata,
        sa.Column("CustomerID", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("Name", sa.String(50)),
        sa.Column("Credit", sa.Numeric(12, 2), nullable=False),
        schema=schema,
    )
    log = sa.Table(
        "Customer_CT",
        metadata,
        sa.Column(START, binary, nullable=False),
        sa.Column("__$end_lsn", binary),
        sa.Column(SEQVAL, binary, nullable=False),
        sa.Column(OPERATION, sa.Integer, nullable=False),
        sa.Column("__$update_mask", sa.LargeBinary(8).with_variant(mysql.VARBINARY(8), "mysql")),
        sa.Column("CustomerID", sa.Integer),
        sa.Column("Name", sa.String(50)),
        sa.Column("Credit", sa.Numeric(12, 2)),
        schema=schema,
    )
    engine = database.engine()
    with engine.begin() as connection:
        if database.dialect == "postgresql":
            connection.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        metadata.create_all(connection)
        connection.execute(
            table.insert().values(
                [
                    {"CustomerID": key, "Name": f"customer {key}", "Credit": _credit(key)}
                    for key in range(1, 6)
                ]
            )
        )
    engine.dispose()
    return table, log


def _credit(key: int) -> decimal.Decimal:
    return decimal.Decimal(f"{key}0.25")


def _commit(
    database: SourceDatabase, table: sa.Table, log: sa.Table, lsn: int, *changes: tuple[Any, ...]
) -> None:
    """One transaction at `lsn`: each change, ("insert", key, name), ("update", key, name) or
    ("delete", key), applied to the table and logged as CDC logs it (an update as its image
    before, 3, and after, 4, under one sequence value; a delete with the row it removed)."""
    engine = database.engine()
    with engine.begin() as connection:
        for seq, (kind, key, *name) in enumerate(changes, start=1):
            where = table.c.CustomerID == key
            found = connection.execute(sa.select(table).where(where)).one_or_none()
            before = found._asdict() if found is not None else {}
            if kind == "insert":
                row = {"CustomerID": key, "Name": name[0], "Credit": _credit(key)}
                connection.execute(table.insert().values(row))
                images = [(2, row)]
            elif kind == "update":
                connection.execute(table.update().where(where).values(Name=name[0]))
                images = [(3, before), (4, {**before, "Name": name[0]})]
            else:
                connection.execute(table.delete().where(where))
                images = [(1, before)]
            for operation, row in images:
                event = {START: _lsn(lsn), SEQVAL: _lsn(seq), OPERATION: operation}
                connection.execute(log.insert().values({**event, **row}))
    engine.dispose()


def _source_rows(database: SourceDatabase, table: sa.Table) -> dict[int, tuple[Any, ...]]:
    engine = database.engine()
    with engine.connect() as connection:
        rows = connection.execute(sa.select(table)).all()
    engine.dispose()
    return {row.CustomerID: (row.Name, row.Credit) for row in rows}


def _entry(database: SourceDatabase, change_table: str = "Customer_CT") -> dict[str, Any]:
    schema = database.schema("Sales")
    return {
        "schema": schema,
        "name": "Customer",
        "primary_key": ["CustomerID"],
        "mode": "cdc",
        "cdc": {"feed": "sqlserver_cdc", "change_table": f"{schema}.{change_table}"},
    }


def _source(database: SourceDatabase) -> SqlSource:
    return SqlSource("src", sa.make_url(database.url), database.sqlite_attach)


def test_a_captured_table_is_loaded_whole_then_kept_equal_to_the_source_by_its_changes(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    table, log = _tables(source_database)
    # the change table holds only what changed since capture began
    _commit(source_database, table, log, 1, ("update", 2, "two, renamed"))
    _commit(source_database, table, log, 2, ("insert", 6, "six"))
    project = build_project(source_database, tmp_path / "lake", [_entry(source_database)])
    key = AssetKey(["src", "customer"])

    def run() -> dict[str, Any]:
        result = materialize(
            [project.defs.get_assets_def(key)], instance=instance, resources=project.defs.resources
        )
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert all(checks.values()), checks
        metadata = result.asset_materializations_for_node("src__customer")[0].metadata
        return {name: getattr(value, "value", value) for name, value in metadata.items()}

    def lake() -> dict[int, tuple[Any, ...]]:
        delta = project.delta("customer").to_pyarrow_table()
        assert not {OPERATION, SEQVAL, "__$end_lsn", "__$update_mask"} & set(delta.schema.names)
        return {row["CustomerID"]: (row["Name"], row["Credit"]) for row in delta.to_pylist()}

    first = run()
    # every row, those the change table never held included, at its newest LSN
    assert lake() == _source_rows(source_database, table)
    assert len(lake()) == 6
    assert (first["rows_inserted"], first[CURSOR]) == (6, _lsn(2).hex())

    _commit(source_database, table, log, 3, ("delete", 3))
    # one key changed three times in one transaction: its last change wins
    _commit(
        source_database,
        table,
        log,
        4,
        ("update", 6, "six, renamed"),
        ("update", 6, "six, renamed again"),
        ("update", 1, "one, renamed"),
    )
    # deleted and inserted again: an update of the row the lake holds
    _commit(source_database, table, log, 5, ("delete", 4), ("insert", 4, "four again"))
    # inserted and deleted between runs: never in the lake
    _commit(source_database, table, log, 6, ("insert", 7, "seven"))
    _commit(source_database, table, log, 7, ("delete", 7))
    second = run()
    assert lake() == _source_rows(source_database, table)
    assert lake()[6] == ("six, renamed again", _credit(6))
    # the cursor's own transaction read again (1), then 8 events: the images before an update
    # left out, the key inserted and deleted between runs neither inserted nor deleted
    counts = ("rows_read", "rows_inserted", "rows_updated", "rows_deleted")
    assert [second[name] for name in counts] == [9, 0, 3, 1]
    assert second[CURSOR] == _lsn(7).hex()

    version = project.delta("customer").version()
    third = run()
    assert project.delta("customer").version() == version
    assert third[CURSOR] == _lsn(7).hex()
    assert lake() == _source_rows(source_database, table)


def test_a_first_read_starts_at_the_newest_lsn_before_the_table_and_newest_asks_past_it(
    source_database: SourceDatabase,
) -> None:
    table, log = _tables(source_database)
    spec = TableSpec.model_validate(_entry(source_database))
    source = _source(source_database)
    try:
        # an empty change table: the read starts before any change, and keeps that position
        assert newest_cdc_change(source, spec, None) is None
        empty = read_cdc_changes(source, spec, None)
        assert (empty.position, empty.reader.read_all().num_rows) == (ZERO_LSN.hex(), 5)
        _commit(source_database, table, log, 1, ("update", 1, "one, renamed"))
        assert newest_cdc_change(source, spec, None) == _lsn(1).hex()
        assert newest_cdc_change(source, spec, _lsn(1).hex()) is None
        stream = read_cdc_changes(source, spec, None)
        # a change committed once the read has its LSN, before the table is read ...
        _commit(source_database, table, log, 2, ("update", 2, "two, during the first read"))
        snapshot = stream.reader.read_all()
        # the change table's own columns, then the table's typed as a plain read types them
        plain = source.read(
            TableSpec.model_validate({"schema": spec.schema_name, "name": "Customer"}), None
        )
        operation = pa.int64() if source_database.dialect == "sqlite" else pa.int32()
        assert [(f.name, f.type) for f in snapshot.schema][:3] == [
            (START, pa.binary()),
            (SEQVAL, pa.binary()),
            (OPERATION, operation),
        ]
        assert [(f.name, f.type) for f in snapshot.schema][3:] == [
            (f.name, f.type) for f in plain.reader.schema
        ]
        # any column but the key may be NULL in an event
        assert [f.nullable for f in snapshot.schema][3:] == [False, True, True]
        assert stream.position == _lsn(1).hex()
        assert set(snapshot.column(START).to_pylist()) == {_lsn(1)}
        assert set(snapshot.column(SEQVAL).to_pylist()) == {_lsn(1)}
        assert set(snapshot.column(OPERATION).to_pylist()) == {2}
        assert "two, during the first read" in snapshot.column("Name").to_pylist()
        # ... so the next read, past LSN 1, reads it again
        assert newest_cdc_change(source, spec, _lsn(1).hex()) == _lsn(2).hex()
        changes = read_cdc_changes(source, spec, _lsn(1).hex()).reader.read_all()
        assert changes.schema == snapshot.schema
        later = [row for row in changes.to_pylist() if row[START] == _lsn(2)]
        assert sorted((r[OPERATION], r["CustomerID"], r["Name"]) for r in later) == [
            (3, 2, "customer 2"),
            (4, 2, "two, during the first read"),
        ]
    finally:
        source.close()


def test_a_change_table_that_is_missing_or_lacks_the_columns_read_is_refused(
    sqlite_database: SourceDatabase,
) -> None:
    _tables(sqlite_database)
    source = _source(sqlite_database)
    where = "source 'src', table 'Sales.Customer', the whole table"
    try:
        missing = TableSpec.model_validate(_entry(sqlite_database, "Nothing_CT"))
        with pytest.raises(SourceError) as refused:
            read_cdc_changes(source, missing, None)
        assert str(refused.value) == (
            f"{where}: the change table Sales.Nothing_CT does not exist at the source. Without "
            "SQL Server's CDC functions a sqlserver_cdc feed reads a table of its change "
            "table's shape (__$start_lsn, __$seqval, __$operation and the table's columns, one "
            "row per change): set `cdc.change_table` (schema.table) to it."
        )
        # the table named as its own change table: it lacks the events' columns
        itself = TableSpec.model_validate(_entry(sqlite_database, "Customer"))
        with pytest.raises(SourceError, match=r"has no column __\$start_lsn, __\$seqval, __\$op"):
            read_cdc_changes(source, itself, _lsn(1).hex())
    finally:
        source.close()
