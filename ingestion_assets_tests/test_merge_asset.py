"""Merge tables end to end on PostgreSQL, MariaDB and SQLite: inserts, updates and deletes
between runs land so that the Delta table's current rows equal the source after every run; a
re-run with the same cursor changes nothing; a run that fails after reading leaves the cursor and
the table as they were; a full refresh finds the rows deleted at the source."""

from __future__ import annotations

import datetime
import decimal
import pathlib
import threading
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, build_sensor_context, materialize
from sqlalchemy.dialects import mssql

from ingestion_assets.merge_asset import (
    ALLOW_MASS_DELETE_TAG,
    CURSOR,
    FULL_REFRESH_TAG,
    KEY_SCAN_TAG,
    MATCHES_SOURCE,
    read_spec,
)
from ingestion_assets.modes.merge import DELETED, IS_CURRENT, VALID_FROM, VALID_TO
from ingestion_assets.sources.sql import SqlTableReader
from ingestion_assets.sources.sqlserver_cdc import capture_changes, capture_instance, changes_query
from ingestion_assets.specs import TableSpec
from ingestion_assets_tests.conftest import (
    IngestProject,
    SourceDatabase,
    build_project,
    failure_message,
)

T0 = datetime.datetime(2024, 3, 1, 8, 0, 0)


def _create(database: SourceDatabase, table: sa.Table) -> None:
    """Create `table` (in the database's Sales schema, made first on PostgreSQL)."""
    engine = database.engine()
    with engine.begin() as connection:
        if database.dialect == "postgresql":
            connection.execute(sa.schema.CreateSchema(database.schema("Sales"), if_not_exists=True))
        table.create(connection)
    engine.dispose()


def _customers(database: SourceDatabase) -> sa.Table:
    table = sa.Table(
        "Customer",
        sa.MetaData(),
        sa.Column("CustomerID", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("Name", sa.String(50)),
        sa.Column("Credit", sa.Numeric(12, 2)),
        sa.Column("IsDeleted", sa.Boolean),
        sa.Column("ModifiedDate", sa.DateTime),
        schema=database.schema("Sales"),
    )
    _create(database, table)
    _execute(
        database,
        table.insert().values(
            [
                {
                    "CustomerID": key,
                    "Name": f"customer {key} Łódź",
                    "Credit": decimal.Decimal(f"{key}00.25"),
                    "IsDeleted": False,
                    "ModifiedDate": T0 + datetime.timedelta(minutes=key),
                }
                for key in range(1, 6)
            ],
        ),
    )
    return table


def _execute(database: SourceDatabase, *statements: Any) -> None:
    engine = database.engine()
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(statement)
    engine.dispose()


def _source_rows(database: SourceDatabase, table: sa.Table) -> dict[int, tuple[Any, ...]]:
    engine = database.engine()
    with engine.connect() as connection:
        rows = connection.execute(sa.select(table).where(sa.not_(table.c.IsDeleted))).all()
    engine.dispose()
    return {row.CustomerID: (row.Name, row.Credit, row.ModifiedDate) for row in rows}


def _lake_rows(project: IngestProject, history: bool = False) -> dict[int, tuple[Any, ...]]:
    table = project.delta("customer").to_pyarrow_table()
    rows = {}
    for row in table.to_pylist():
        if row.get(DELETED) or (history and not row[IS_CURRENT]):
            continue
        assert row["CustomerID"] not in rows, "a key is held twice among the current rows"
        rows[row["CustomerID"]] = (row["Name"], row["Credit"], row["ModifiedDate"])
    return rows


def _run(
    project: IngestProject,
    instance: DagsterInstance,
    tags: dict[str, str] | None = None,
    failing: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Materialize the merge table; its metadata. Every check but `failing` passes."""
    result = materialize(
        [project.defs.get_assets_def(AssetKey(["src", "customer"]))],
        instance=instance,
        resources=project.defs.resources,
        tags=tags,
    )
    metadata = result.asset_materializations_for_node("src__customer")[0].metadata
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert {name for name, passed in checks.items() if not passed} == failing, checks
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


def _project(database: SourceDatabase, tmp_path: pathlib.Path, **entry: Any) -> IngestProject:
    table = {
        "schema": database.schema("Sales"),
        "name": "Customer",
        "primary_key": ["CustomerID"],
        "mode": "merge",
        **entry,
    }
    return build_project(database, tmp_path / "lake", [table])


def _stored_cursor(instance: DagsterInstance) -> Any:
    event = instance.get_latest_materialization_event(AssetKey(["src", "customer"]))
    assert event is not None
    assert event.asset_materialization is not None
    return event.asset_materialization.metadata[CURSOR].value


def test_inserts_updates_and_deletes_between_runs_keep_the_merge_table_equal_to_the_source(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    table = _customers(source_database)
    project = _project(
        source_database,
        tmp_path,
        cursor_column="ModifiedDate",
        deletes="soft",
        delete_column="IsDeleted",
        schema_policy="freeze",
    )
    first = _run(project, instance)
    assert (first["rows_inserted"], first["rows_read"]) == (5, 5)
    assert _lake_rows(project) == _source_rows(source_database, table)

    later = T0 + datetime.timedelta(hours=1)
    _execute(
        source_database,
        table.update()
        .where(table.c.CustomerID == 2)
        .values(Name="renamed", Credit=decimal.Decimal("0.01"), ModifiedDate=later),
        table.update().where(table.c.CustomerID == 3).values(IsDeleted=True, ModifiedDate=later),
        table.insert().values(
            CustomerID=6,
            Name="new",
            Credit=decimal.Decimal("-7.50"),
            IsDeleted=False,
            ModifiedDate=later,
        ),
    )
    second = _run(project, instance)
    assert (second["rows_inserted"], second["rows_updated"], second["rows_deleted"]) == (1, 1, 1)
    # only the changed rows are read: those at or past the first run's newest ModifiedDate
    assert second["rows_read"] == 4
    assert _lake_rows(project) == _source_rows(source_database, table)
    deleted = [r for r in project.delta("customer").to_pyarrow_table().to_pylist() if r[DELETED]]
    assert [r["CustomerID"] for r in deleted] == [3]
    assert deleted[0]["_deleted_at"] is not None

    version = project.delta("customer").version()
    again = _run(project, instance)
    assert project.delta("customer").version() == version
    assert (again["rows_inserted"], again["rows_updated"], again["rows_deleted"]) == (0, 0, 0)
    cursor = _stored_cursor(instance)

    # a change read, then the run fails (a new source column under schema_policy: freeze)
    _execute(
        source_database,
        table.update()
        .where(table.c.CustomerID == 4)
        .values(Name="late", ModifiedDate=later + datetime.timedelta(hours=1)),
        sa.text(f"ALTER TABLE {_qualified(source_database, table)} ADD COLUMN Extra INTEGER"),
    )
    failed = materialize(
        [project.defs.get_assets_def(AssetKey(["src", "customer"]))],
        instance=instance,
        resources=project.defs.resources,
        raise_on_error=False,
    )
    assert not failed.success
    assert "added column extra" in failure_message(failed).lower()
    assert project.delta("customer").version() == version
    assert _stored_cursor(instance) == cursor
    _execute(
        source_database,
        sa.text(f"ALTER TABLE {_qualified(source_database, table)} DROP COLUMN Extra"),
    )
    # the re-run reads the same change again and lands it
    fixed = _run(project, instance)
    assert fixed["rows_updated"] == 1
    assert _lake_rows(project) == _source_rows(source_database, table)


def _qualified(database: SourceDatabase, table: sa.Table) -> str:
    engine = database.engine()
    preparer = engine.dialect.identifier_preparer
    engine.dispose()
    return preparer.format_table(table)


def test_a_full_refresh_removes_the_rows_deleted_at_the_source(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    table = _customers(source_database)
    project = _project(source_database, tmp_path, cursor_column="ModifiedDate", deletes="hard")
    _run(project, instance)
    _execute(source_database, table.delete().where(table.c.CustomerID.in_([2, 5])))
    # an incremental read cannot see a row that is gone; the count check sees the difference
    incremental = _run(project, instance, failing=frozenset({MATCHES_SOURCE}))
    assert incremental["rows_deleted"] == 0
    assert len(_lake_rows(project)) == 5
    refreshed = _run(project, instance, {FULL_REFRESH_TAG: "true"})
    assert refreshed["rows_deleted"] == 2
    assert refreshed["full_read"] is True
    assert _lake_rows(project) == _source_rows(source_database, table)


def test_a_key_scan_finds_the_rows_deleted_at_the_source_and_keeps_the_cursor(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    """`key_scan_cron` (or the tag): the source's keys alone against the table's, the gone
    rows flagged (soft), the incremental cursor carried over; a scan of a source that lost
    most of its rows stops unless told it may."""
    table = _customers(source_database)
    project = _project(
        source_database,
        tmp_path,
        cursor_column="ModifiedDate",
        deletes="soft",
        key_scan_cron="0 3 * * 0",
    )
    schedule = project.defs.get_schedule_def("src__customer_key_scan")
    assert schedule.cron_schedule == "0 3 * * 0"
    assert schedule.tags == {KEY_SCAN_TAG: "true"}
    _run(project, instance)
    cursor = _stored_cursor(instance)
    _execute(source_database, table.delete().where(table.c.CustomerID.in_([2, 5])))
    scanned = _run(project, instance, {KEY_SCAN_TAG: "true"})
    assert (scanned["source_keys"], scanned["table_keys"], scanned["rows_deleted"]) == (3, 5, 2)
    assert _stored_cursor(instance) == cursor
    assert _lake_rows(project) == _source_rows(source_database, table)
    flagged = {
        r["CustomerID"]
        for r in project.delta("customer").to_pyarrow_table().to_pylist()
        if r[DELETED]
    }
    assert flagged == {2, 5}
    # a rescan finds nothing more; the incremental run goes on from the same cursor
    assert _run(project, instance, {KEY_SCAN_TAG: "true"})["rows_deleted"] == 0
    later = T0 + datetime.timedelta(hours=1)
    _execute(
        source_database,
        table.update().where(table.c.CustomerID == 4).values(Name="moved", ModifiedDate=later),
    )
    assert _run(project, instance)["rows_read"] == 1
    assert _lake_rows(project) == _source_rows(source_database, table)

    # a source that lost more than half of the table: the scan refuses, then is told it may
    _execute(
        source_database,
        table.insert().values(
            [
                {
                    "CustomerID": key,
                    "Name": "n",
                    "Credit": 1,
                    "IsDeleted": False,
                    "ModifiedDate": T0,
                }
                for key in range(10, 30)
            ]
        ),
    )
    _run(project, instance, {FULL_REFRESH_TAG: "true"})
    _execute(source_database, table.delete().where(table.c.CustomerID >= 4))
    version = project.delta("customer").version()
    refused = materialize(
        [project.defs.get_assets_def(AssetKey(["src", "customer"]))],
        instance=instance,
        resources=project.defs.resources,
        tags={KEY_SCAN_TAG: "true"},
        raise_on_error=False,
    )
    assert not refused.success
    assert f"{ALLOW_MASS_DELETE_TAG}=true" in failure_message(refused)
    assert project.delta("customer").version() == version
    allowed = _run(project, instance, {KEY_SCAN_TAG: "true", ALLOW_MASS_DELETE_TAG: "true"})
    assert allowed["rows_deleted"] == 21
    assert _lake_rows(project) == _source_rows(source_database, table)


def test_a_snapshot_table_kept_with_history_opens_a_version_per_tracked_change(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    table = _customers(source_database)
    project = _project(
        source_database, tmp_path, history=True, tracked_columns=["Credit"], deletes="hard"
    )
    _run(project, instance)
    _execute(
        source_database,
        table.update().where(table.c.CustomerID == 1).values(Credit=decimal.Decimal("1.00")),
        table.update().where(table.c.CustomerID == 2).values(Name="untracked change"),
    )
    second = _run(project, instance)
    assert (second["rows_inserted"], second["rows_updated"]) == (1, 2)
    # customer 1 has two versions by now: only its current one closes
    closed_first = {
        r[VALID_FROM]: r[VALID_TO]
        for r in project.delta("customer").to_pyarrow_table().to_pylist()
        if r["CustomerID"] == 1
    }
    _execute(source_database, table.delete().where(table.c.CustomerID.in_([1, 5])))
    third = _run(project, instance)
    assert third["rows_deleted"] == 2
    history = project.delta("customer").to_pyarrow_table()
    versions = sorted(
        (r["CustomerID"], r[VALID_FROM], r[VALID_TO], r[IS_CURRENT], r["Credit"], r["Name"])
        for r in history.to_pylist()
    )
    one = [v for v in versions if v[0] == 1]
    assert [(v[3], v[4]) for v in one] == [
        (False, decimal.Decimal("100.25")),
        (False, decimal.Decimal("1.00")),
    ]
    assert one[0][2] == one[1][1]  # the old version ends where the new one begins
    # the version closed before the delete kept its end; the current one closed at the delete
    assert one[0][2] == closed_first[one[0][1]]
    assert closed_first[one[1][1]] is None
    assert one[1][2] is not None
    two = [v for v in versions if v[0] == 2]
    assert [v[5] for v in two] == ["untracked change"]
    five = [r for r in history.to_pylist() if r["CustomerID"] == 5]
    assert [(r[IS_CURRENT], r[VALID_TO] is not None) for r in five] == [(False, True)]
    assert _lake_rows(project, history=True) == {
        key: row for key, row in _source_rows(source_database, table).items()
    }
    assert pa.types.is_timestamp(history.schema.field(VALID_FROM).type)


def _lsn(number: int) -> bytes:
    """A SQL Server log sequence number: binary(10), compared byte by byte."""
    return number.to_bytes(10, "big")


def _change_table(database: SourceDatabase) -> sa.Table:
    """A change table of the shape SQL Server CDC keeps (`cdc.<capture>_CT`)."""
    table = sa.Table(
        "Customer_CT",
        sa.MetaData(),
        sa.Column(
            "__$start_lsn",
            sa.LargeBinary(10).with_variant(sa.dialects.mysql.VARBINARY(10), "mysql"),
        ),
        sa.Column(
            "__$end_lsn", sa.LargeBinary(10).with_variant(sa.dialects.mysql.VARBINARY(10), "mysql")
        ),
        sa.Column(
            "__$seqval", sa.LargeBinary(10).with_variant(sa.dialects.mysql.VARBINARY(10), "mysql")
        ),
        sa.Column("__$operation", sa.Integer),
        sa.Column(
            "__$update_mask",
            sa.LargeBinary(8).with_variant(sa.dialects.mysql.VARBINARY(8), "mysql"),
        ),
        sa.Column("CustomerID", sa.Integer),
        sa.Column("Name", sa.String(50)),
        sa.Column("Credit", sa.Numeric(12, 2)),
        schema=database.schema("Sales"),
    )
    _create(database, table)
    return table


def _event(lsn: int, seq: int, operation: int, key: int, name: str, credit: str) -> dict[str, Any]:
    return {
        "__$start_lsn": _lsn(lsn),
        "__$end_lsn": None,
        "__$seqval": _lsn(seq),
        "__$operation": operation,
        "__$update_mask": b"\x07",
        "CustomerID": key,
        "Name": name,
        "Credit": decimal.Decimal(credit),
    }


def _applied(
    events: list[dict[str, Any]], loaded: dict[int, tuple[str, decimal.Decimal]]
) -> dict[int, tuple[str, decimal.Decimal]]:
    """The reference: the rows `loaded` before capture began, then the events in (start_lsn,
    seqval) order; 1 deletes, 2 and 4 upsert, 3 is the image before an update."""
    rows = dict(loaded)
    for event in sorted(events, key=lambda e: (e["__$start_lsn"], e["__$seqval"])):
        if event["__$operation"] == 1:
            rows.pop(event["CustomerID"], None)
        elif event["__$operation"] in (2, 4):
            rows[event["CustomerID"]] = (event["Name"], event["Credit"])
    return rows


def test_a_sql_server_cdc_change_table_is_applied_in_sequence_order_with_deletes_and_redeliveries(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    """The first run loads the table itself at the change table's newest LSN (a row no event
    holds included); later runs apply the events past the cursor in sequence order."""
    feed = _change_table(source_database)
    table = sa.Table(
        "Customer",
        sa.MetaData(),
        sa.Column("CustomerID", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("Name", sa.String(50)),
        sa.Column("Credit", sa.Numeric(12, 2)),
        schema=source_database.schema("Sales"),
    )
    _create(source_database, table)

    def source_holds(rows: dict[int, tuple[str, decimal.Decimal]]) -> None:
        """The table as the source's changes left it."""
        values = [{"CustomerID": k, "Name": n, "Credit": c} for k, (n, c) in rows.items()]
        _execute(source_database, table.delete(), table.insert().values(values))

    # loaded before capture began: in no event
    loaded = {4: ("four, never changed", decimal.Decimal("40.00"))}
    first = [
        _event(1, 1, 2, 1, "one", "10.00"),
        _event(1, 2, 2, 2, "two", "20.00"),
        _event(1, 3, 2, 3, "three", "30.00"),
        # an update: the image before it (3) and after it (4), one sequence value
        _event(2, 1, 4, 2, "two, renamed", "21.50"),
        _event(2, 1, 3, 2, "two", "20.00"),
        _event(3, 1, 1, 3, "three", "30.00"),
    ]
    _execute(source_database, feed.insert().values(first))
    source_holds(_applied(first, loaded))
    project = _project(
        source_database,
        tmp_path,
        mode="cdc",
        cdc={
            "feed": "sqlserver_cdc",
            "change_table": f"{source_database.schema('Sales')}.Customer_CT",
        },
    )

    def lake() -> dict[int, tuple[str, decimal.Decimal]]:
        table = project.delta("customer").to_pyarrow_table()
        assert "__$operation" not in table.schema.names
        return {r["CustomerID"]: (r["Name"], r["Credit"]) for r in table.to_pylist()}

    applied = _run(project, instance)
    assert lake() == _applied(first, loaded)
    assert (applied["rows_inserted"], applied["rows_deleted"]) == (3, 0)
    assert _stored_cursor(instance) == _lsn(3).hex()

    later = [
        _event(5, 1, 2, 3, "three again", "33.00"),
        _event(4, 1, 4, 1, "one, renamed", "11.00"),
        _event(4, 1, 3, 1, "one", "10.00"),
        _event(6, 1, 1, 4, "four, never changed", "40.00"),
        # the last transaction of the first read, delivered again
        _event(3, 1, 1, 3, "three", "30.00"),
    ]
    _execute(source_database, feed.insert().values(later))
    source_holds(_applied(first + later, loaded))
    second = _run(project, instance)
    assert lake() == _applied(first + later, loaded)
    # the events from the cursor's LSN on, the image before the update left out
    assert second["rows_read"] == 5
    assert (second["rows_inserted"], second["rows_updated"], second["rows_deleted"]) == (1, 1, 1)
    assert _stored_cursor(instance) == _lsn(6).hex()
    version = project.delta("customer").version()
    _run(project, instance)
    assert project.delta("customer").version() == version
    assert lake() == _applied(first + later, loaded)
    assert _stored_cursor(instance) == _lsn(6).hex()


def test_a_feed_whose_deletes_are_ignored_leaves_its_delete_events_out(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    """`deletes: ignore` on a cdc table: a delete event neither removes the row nor, taken as
    an upsert, blanks it."""
    feed = _change_table(sqlite_database)
    table = sa.Table(
        "Customer",
        sa.MetaData(),
        sa.Column("CustomerID", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("Name", sa.String(50)),
        sa.Column("Credit", sa.Numeric(12, 2)),
        schema=sqlite_database.schema("Sales"),
    )
    _create(sqlite_database, table)
    _execute(
        sqlite_database,
        table.insert().values(CustomerID=1, Name="one", Credit=decimal.Decimal("10.00")),
        feed.insert().values([_event(1, 1, 2, 1, "one", "10.00")]),
    )
    project = _project(
        sqlite_database,
        tmp_path,
        mode="cdc",
        deletes="ignore",
        cdc={
            "feed": "sqlserver_cdc",
            "change_table": f"{sqlite_database.schema('Sales')}.Customer_CT",
        },
    )
    _run(project, instance)
    # the delete carries the key alone, as many feeds send one
    _execute(
        sqlite_database,
        table.delete(),
        feed.insert().values([{**_event(2, 1, 1, 1, "", "0"), "Name": None, "Credit": None}]),
    )
    applied = _run(project, instance, failing=frozenset({MATCHES_SOURCE}))
    assert applied["rows_deleted"] == 0
    rows = project.delta("customer").to_pyarrow_table().to_pylist()
    assert [(r["CustomerID"], r["Name"], r["Credit"]) for r in rows] == [
        (1, "one", decimal.Decimal("10.00"))
    ]


def test_the_sql_server_cdc_read_compiles_to_the_table_then_its_changes_past_the_cursor() -> None:
    spec = TableSpec.model_validate(
        {
            "schema": "dbo",
            "name": "Customer",
            "primary_key": ["CustomerID"],
            "mode": "cdc",
            "cdc": {"feed": "sqlserver_cdc", "capture_instance": "erp_customers"},
        }
    )
    feed, cursor = read_spec(spec)
    # read with the table itself: a first run loads it, later runs read its capture's changes
    assert (feed, cursor) == (spec, "__$start_lsn")
    assert spec.cdc is not None
    # where the change table is, for a source without SQL Server's CDC functions
    assert spec.cdc.feed_table("dbo", "Customer") == ("cdc", "erp_customers_CT")
    table = sa.Table(
        "Customer",
        sa.MetaData(),
        sa.Column("CustomerID", sa.Integer),
        sa.Column("Name", mssql.NVARCHAR(50)),
        schema="dbo",
    )
    engine = sa.create_engine("mssql+pyodbc://")  # compiles only: never connects
    dialect = engine.dialect
    dialect.server_version_info = (16, 0)
    whole = SqlTableReader(engine, "erp", spec, 1000)._query(table, list(table.c), None, None)
    assert " ".join(str(whole.compile(dialect=dialect)).split()) == (
        "SELECT dbo.[Customer].[CustomerID], dbo.[Customer].[Name] FROM dbo.[Customer]"
    )
    changes = capture_changes(capture_instance(spec, "erp"), list(table.c), _lsn(43), _lsn(50))
    compiled = changes_query(changes, [changes.c.CustomerID, changes.c.Name]).compile(
        dialect=dialect
    )
    # `__$start_lsn` is a regular T-SQL identifier ($ may follow the first character)
    assert " ".join(str(compiled).split()) == (
        "SELECT ct.__$start_lsn, ct.__$seqval, ct.__$operation, ct.[CustomerID], ct.[Name] "
        "FROM cdc.fn_cdc_get_all_changes_erp_customers(?, ?, N'all') AS ct "
        "ORDER BY ct.__$start_lsn, ct.__$seqval"
    )
    # the range past the cursor, computed by the server first (sys.fn_cdc_increment_lsn)
    assert compiled.params == {"from_lsn": _lsn(43), "to_lsn": _lsn(50)}


def test_the_new_data_sensor_requests_a_merge_table_once_its_source_changed_past_the_cursor(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    table = _customers(source_database)
    project = _project(source_database, tmp_path, cursor_column="ModifiedDate")
    sensor = project.defs.get_sensor_def("src_new_data")

    def tick() -> list[Any]:
        with build_sensor_context(
            instance=instance, resources=project.defs.resources, definitions=project.defs
        ) as context:
            return list(sensor.evaluate_tick(context).run_requests)

    # never materialized: the first load is not the sensor's
    assert tick() == []
    _run(project, instance)
    assert tick() == []
    changed_at = T0 + datetime.timedelta(days=1)
    _execute(
        source_database,
        table.update().where(table.c.CustomerID == 4).values(Name="moved", ModifiedDate=changed_at),
    )
    (request,) = tick()
    assert request.asset_selection == [AssetKey(["src", "customer"])]
    assert request.run_key == f"src/customer:{changed_at.isoformat()}"
    _run(project, instance)
    assert tick() == []


def test_two_runs_of_one_merge_table_at_once_leave_it_equal_to_the_source_without_duplicates(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    table = _customers(postgres_database)
    _execute(
        postgres_database,
        table.insert().values(
            [
                {
                    "CustomerID": key,
                    "Name": f"customer {key}",
                    "Credit": decimal.Decimal("1.00"),
                    "IsDeleted": False,
                    "ModifiedDate": T0 + datetime.timedelta(seconds=key),
                }
                for key in range(6, 3000)
            ]
        ),
    )
    project = _project(postgres_database, tmp_path, cursor_column="ModifiedDate")
    results: list[Any] = []

    def run() -> None:
        # each run its own instance: both start with no cursor and read every row
        results.append(
            materialize(
                [project.defs.get_assets_def(AssetKey(["src", "customer"]))],
                instance=DagsterInstance.ephemeral(),
                resources=project.defs.resources,
                raise_on_error=False,
            )
        )

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [result.success for result in results] == [True, True]
    inserted = sorted(
        result.asset_materializations_for_node("src__customer")[0].metadata["rows_inserted"].value
        for result in results
    )
    # each key inserted once: by one run, or by both runs' shares of the one that lost the race
    assert sum(inserted) == 2999
    assert _lake_rows(project) == _source_rows(postgres_database, table)
