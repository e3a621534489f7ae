"""SQL Server Change Tracking as a cdc feed: the SQL Server reads pinned as the `mssql` dialect
compiles them (there is no SQL Server here), and the same apply end to end on PostgreSQL,
MariaDB and SQLite through a change table of CHANGETABLE's shape: a first run loads the table
whole, later runs apply the changes past the cursor so that the Delta table equals the source,
a run with nothing new commits nothing."""

from __future__ import annotations

import decimal
import pathlib
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, materialize

from ingestion_assets.errors import SourceError
from ingestion_assets.merge_asset import CURSOR, read_spec
from ingestion_assets.sources.sql import SqlSource
from ingestion_assets.sources.tracking import (
    OPERATION,
    VERSION,
    changes_query,
    changetable,
    check_tracking,
    newest_tracked_change,
    read_tracked_changes,
    snapshot_query,
    tracking_state_query,
)
from ingestion_assets.specs import TableSpec
from ingestion_assets_tests.conftest import SourceDatabase, build_project

LABEL = "source 'erp', table 'dbo.Customer', the whole table"


def _mssql() -> sa.Dialect:
    dialect = sa.create_engine("mssql+pyodbc://").dialect  # compiles only: never connects
    dialect.server_version_info = (16, 0)
    return dialect


def _sql(query: sa.Select[Any], dialect: sa.Dialect) -> tuple[str, dict[str, Any]]:
    compiled = query.compile(dialect=dialect)
    return " ".join(str(compiled).split()), compiled.params


def test_the_sql_server_reads_compile_to_changetable_joined_to_the_table() -> None:
    spec = TableSpec.model_validate(
        {
            "schema": "dbo",
            "name": "Customer",
            "primary_key": ["CustomerID"],
            "mode": "cdc",
            "cdc": {"feed": "sqlserver_change_tracking"},
        }
    )
    # the feed is read with the table itself; its cursor is the version
    assert read_spec(spec) == (spec, VERSION)
    table = sa.Table(
        "Customer",
        sa.MetaData(),
        sa.Column("CustomerID", sa.Integer, primary_key=True),
        sa.Column("Name", sa.Unicode(50)),
        schema="dbo",
    )
    dialect = _mssql()
    selected = {column.name: column for column in table.c}
    feed = changetable(table, ["CustomerID"], 42, dialect)
    assert _sql(changes_query(table, selected, feed), dialect) == (
        "SELECT ct.[SYS_CHANGE_VERSION], ct.[SYS_CHANGE_OPERATION], ct.[CustomerID], "
        "dbo.[Customer].[Name] FROM CHANGETABLE(CHANGES dbo.[Customer], ?) AS ct "
        "LEFT OUTER JOIN dbo.[Customer] ON dbo.[Customer].[CustomerID] = ct.[CustomerID] "
        "ORDER BY ct.[SYS_CHANGE_VERSION]",
        {"since": 42},
    )
    assert _sql(snapshot_query(table, selected, 7), dialect) == (
        "SELECT ? AS [SYS_CHANGE_VERSION], 'I' AS [SYS_CHANGE_OPERATION], "
        "dbo.[Customer].[CustomerID], dbo.[Customer].[Name] FROM dbo.[Customer]",
        {"version": 7},
    )
    assert _sql(tracking_state_query(table, dialect), dialect) == (
        "SELECT CHANGE_TRACKING_CURRENT_VERSION() AS [CHANGE_TRACKING_CURRENT_VERSION_1], "
        "CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(?)) AS "
        "[CHANGE_TRACKING_MIN_VALID_VERSION_1]",
        {"qualified": "dbo.[Customer]"},
    )


def test_a_cursor_older_than_the_minimum_valid_version_or_tracking_off_is_refused() -> None:
    check_tracking(100, 40, 40, LABEL, "dbo.Customer")
    check_tracking(100, 40, None, LABEL, "dbo.Customer")
    with pytest.raises(SourceError) as stale:
        check_tracking(100, 40, 39, LABEL, "dbo.Customer")
    assert str(stale.value).startswith(LABEL + ": the stored cursor, change tracking version 39")
    assert "minimum valid version 40" in str(stale.value)
    assert "`ingest/full_refresh=true`" in str(stale.value)
    with pytest.raises(SourceError, match=r"not enabled on the database.*SET CHANGE_TRACKING"):
        check_tracking(None, None, None, LABEL, "dbo.Customer")
    with pytest.raises(SourceError, match=r"ALTER TABLE dbo\.Customer ENABLE CHANGE_TRACKING"):
        check_tracking(100, None, 40, LABEL, "dbo.Customer")


def _tables(database: SourceDatabase) -> tuple[sa.Table, sa.Table]:
    """The data table (keys 1..5) and its change table, holding their inserts as versions 1..5."""
    metadata = sa.MetaData()
    schema = database.schema("Sales")
    table = sa.Table(
        "Customer",
        metadata,
        sa.Column("CustomerID", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("Name", sa.String(50)),
        # NOT NULL: a deleted key's change carries NULL there all the same
        sa.Column("Credit", sa.Numeric(12, 2), nullable=False),
        schema=schema,
    )
    log = sa.Table(
        "Customer_CT",
        metadata,
        sa.Column(VERSION, sa.BigInteger, nullable=False),
        sa.Column(OPERATION, sa.String(1), nullable=False),
        sa.Column("CustomerID", sa.Integer, nullable=False),
        schema=schema,
    )
    engine = database.engine()
    with engine.begin() as connection:
        if database.dialect == "postgresql":
            connection.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        metadata.create_all(connection)
    engine.dispose()
    for key in range(1, 6):
        _insert(database, table, log, key, key, f"customer {key}")
    return table, log


def _changed(
    database: SourceDatabase, log: sa.Table, version: int, operation: str, key: int, statement: Any
) -> None:
    """One change of the table, logged in the same transaction (as Change Tracking does)."""
    engine = database.engine()
    with engine.begin() as connection:
        connection.execute(statement)
        connection.execute(
            log.insert().values({VERSION: version, OPERATION: operation, "CustomerID": key})
        )
    engine.dispose()


def _insert(
    database: SourceDatabase, table: sa.Table, log: sa.Table, version: int, key: int, name: str
) -> None:
    row = {"CustomerID": key, "Name": name, "Credit": decimal.Decimal(f"{key}0.25")}
    _changed(database, log, version, "I", key, table.insert().values(row))


def _update(
    database: SourceDatabase, table: sa.Table, log: sa.Table, version: int, key: int, name: str
) -> None:
    statement = table.update().where(table.c.CustomerID == key).values(Name=name)
    _changed(database, log, version, "U", key, statement)


def _delete(
    database: SourceDatabase, table: sa.Table, log: sa.Table, version: int, key: int
) -> None:
    statement = table.delete().where(table.c.CustomerID == key)
    _changed(database, log, version, "D", key, statement)


def _source_rows(database: SourceDatabase, table: sa.Table) -> dict[int, tuple[Any, ...]]:
    engine = database.engine()
    with engine.connect() as connection:
        rows = connection.execute(sa.select(table)).all()
    engine.dispose()
    return {row.CustomerID: (row.Name, row.Credit) for row in rows}


def _entry(database: SourceDatabase, change_table: bool = True) -> dict[str, Any]:
    schema = database.schema("Sales")
    feed = {"feed": "sqlserver_change_tracking"}
    if change_table:
        feed["change_table"] = f"{schema}.Customer_CT"
    return {
        "schema": schema,
        "name": "Customer",
        "primary_key": ["CustomerID"],
        "mode": "cdc",
        "cdc": feed,
    }


def _source(database: SourceDatabase) -> SqlSource:
    return SqlSource("src", sa.make_url(database.url), database.sqlite_attach)


def test_a_tracked_table_is_loaded_whole_then_kept_equal_to_the_source_by_its_changes(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    table, log = _tables(source_database)
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
        assert not {VERSION, OPERATION} & set(delta.schema.names)
        return {row["CustomerID"]: (row["Name"], row["Credit"]) for row in delta.to_pylist()}

    first = run()
    assert lake() == _source_rows(source_database, table)
    # every row an insert, at the change table's newest version when the read began
    assert (first["rows_inserted"], first[CURSOR]) == (5, "5")

    _update(source_database, table, log, 6, 2, "two, renamed")
    _delete(source_database, table, log, 7, 3)
    # one key changed three times between runs: the latest change wins
    _insert(source_database, table, log, 8, 6, "six")
    _update(source_database, table, log, 9, 6, "six, renamed")
    _update(source_database, table, log, 10, 6, "six, renamed again")
    # deleted and inserted again: an update of the row the lake holds
    _delete(source_database, table, log, 11, 4)
    _insert(source_database, table, log, 12, 4, "four again")
    # inserted and deleted between runs: never in the lake
    _insert(source_database, table, log, 13, 7, "seven")
    _delete(source_database, table, log, 14, 7)
    second = run()
    assert lake() == _source_rows(source_database, table)
    assert lake()[6] == ("six, renamed again", decimal.Decimal("60.25"))
    assert (second["rows_inserted"], second["rows_updated"], second["rows_deleted"]) == (1, 2, 1)
    assert second[CURSOR] == "14"

    version = project.delta("customer").version()
    third = run()
    assert project.delta("customer").version() == version
    assert (third["rows_read"], third[CURSOR]) == (0, "14")
    assert lake() == _source_rows(source_database, table)


def test_an_empty_first_read_keeps_the_version_it_started_at_as_the_cursor(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    """A tracked table empty at the first run: the run stores the version it read at, so the
    next run reads the changes past it, not the whole table again."""
    table, log = _tables(sqlite_database)
    _execute_all(sqlite_database, table.delete(), log.delete())
    _changed(sqlite_database, log, 9, "D", 1, table.delete())
    project = build_project(sqlite_database, tmp_path / "lake", [_entry(sqlite_database)])
    asset = project.defs.get_assets_def(AssetKey(["src", "customer"]))

    def run() -> dict[str, Any]:
        result = materialize([asset], instance=instance, resources=project.defs.resources)
        metadata = result.asset_materializations_for_node("src__customer")[0].metadata
        return {name: getattr(value, "value", value) for name, value in metadata.items()}

    first = run()
    assert (first["rows_read"], first[CURSOR]) == (0, "9")
    _insert(sqlite_database, table, log, 10, 1, "one")
    second = run()
    assert second["cursor_before"] == "9"
    assert (second["rows_read"], second["rows_inserted"], second[CURSOR]) == (1, 1, "10")


def _execute_all(database: SourceDatabase, *statements: Any) -> None:
    engine = database.engine()
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(statement)
    engine.dispose()


def test_a_first_read_starts_at_the_version_before_the_table_and_newest_asks_past_the_cursor(
    source_database: SourceDatabase,
) -> None:
    table, log = _tables(source_database)
    spec = TableSpec.model_validate(_entry(source_database))
    source = _source(source_database)
    try:
        assert newest_tracked_change(source, spec, None) == "5"
        assert newest_tracked_change(source, spec, "5") is None
        stream = read_tracked_changes(source, spec, None)
        # a change committed once the read has its version, before the table is read
        _update(source_database, table, log, 6, 1, "one, during the first read")
        snapshot = stream.reader.read_all()
        # the table's columns typed as a plain read of it types them; all but the key nullable
        plain = source.read(
            TableSpec.model_validate({"schema": spec.schema_name, "name": "Customer"}), None
        )
        assert [(f.name, f.type) for f in snapshot.schema] == [
            (VERSION, pa.int64()),
            (OPERATION, pa.string()),
            *((f.name, f.type) for f in plain.reader.schema),
        ]
        assert [f.nullable for f in snapshot.schema][2:] == [False, True, True]
        assert set(snapshot.column(VERSION).to_pylist()) == {5}
        assert set(snapshot.column(OPERATION).to_pylist()) == {"I"}
        assert "one, during the first read" in snapshot.column("Name").to_pylist()
        # ... so the next read, past version 5, reads it again
        assert newest_tracked_change(source, spec, "5") == "6"
        _delete(source_database, table, log, 7, 2)
        changes = read_tracked_changes(source, spec, "5").reader.read_all()
        assert changes.select([VERSION, OPERATION, "CustomerID", "Name", "Credit"]).to_pylist() == [
            {
                VERSION: 6,
                OPERATION: "U",
                "CustomerID": 1,
                "Name": "one, during the first read",
                "Credit": decimal.Decimal("10.25"),
            },
            # a deleted key: its key alone
            {VERSION: 7, OPERATION: "D", "CustomerID": 2, "Name": None, "Credit": None},
        ]
        assert newest_tracked_change(source, spec, "6") == "7"
        assert newest_tracked_change(source, spec, "7") is None
    finally:
        source.close()


def test_a_feed_without_changetable_or_a_change_table_of_its_shape_is_refused(
    sqlite_database: SourceDatabase,
) -> None:
    _tables(sqlite_database)
    source = _source(sqlite_database)
    where = "source 'src', table 'Sales.Customer', the whole table"
    try:
        bare = TableSpec.model_validate(_entry(sqlite_database, change_table=False))
        for ask in (read_tracked_changes, newest_tracked_change):
            with pytest.raises(SourceError) as refused:
                ask(source, bare, None)
            assert str(refused.value) == (
                f"{where}: a sqlserver_change_tracking feed reads SQL Server's CHANGETABLE, "
                "which sqlite does not have: set `cdc.change_table` to a table (schema.table) of "
                "the table's changes with columns SYS_CHANGE_VERSION (an ascending integer), "
                "SYS_CHANGE_OPERATION ('I', 'U' or 'D') and the key (CustomerID), one row per "
                "change."
            )
        # the data table named as its own change table: it lacks the feed's columns
        entry = _entry(sqlite_database)
        entry["cdc"]["change_table"] = "Sales.Customer"
        wrong = TableSpec.model_validate(entry)
        with pytest.raises(SourceError, match=r"has no column SYS_CHANGE_VERSION, SYS_CHANGE_OP"):
            read_tracked_changes(source, wrong, "5")
        with pytest.raises(SourceError, match=r"the stored cursor 'x' is no change tracking"):
            read_tracked_changes(source, wrong, "x")
    finally:
        source.close()
