"""SQL Server Change Tracking as a cdc feed (`cdc: {feed: sqlserver_change_tracking}`).

Change Tracking keeps, for each changed key, the version and the operation of its last change,
not the row: a read joins `CHANGETABLE(CHANGES table, :since)` to the table, so an insert or an
update carries the row as it is now and a delete only its key. The choices:

- The first run (no cursor) reads the whole table as inserts, stamped with the version current
  *before* the table is read: a change committed while it is read is read again by the next run
  (applying it twice changes nothing), never missed.
- A cursor older than the table's minimum valid version (its changes cleaned up after the
  retention period, or the table truncated) fails with the fix, a full refresh: the changes in
  between cannot be read, and a read past them would leave the lake wrong without a word.
- The sensor asks for the newest version among the table's own changes, not the database's
  current version, which every tracked table moves.
- `cdc.change_table`, when set, names a table of CHANGETABLE's shape (SYS_CHANGE_VERSION,
  SYS_CHANGE_OPERATION, the key columns) read in its place with the same join: how the same
  apply runs on PostgreSQL, MariaDB and SQLite. It may hold several changes of a key (a log);
  the apply keeps the latest by version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from ingestion_assets.errors import SourceError, where
from ingestion_assets.sources.sql import SqlSource, _first_line
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.watchdog import StallBreaker, watched_call
from ingestion_assets.specs import DatasetSpec

VERSION = "SYS_CHANGE_VERSION"
OPERATION = "SYS_CHANGE_OPERATION"
FULL_REFRESH = "run the asset with the tag `ingest/full_refresh=true` to read the whole table again"


@dataclass(frozen=True)
class Feed:
    """Where a read's changes come from (CHANGETABLE or a change table, as `ct`): its version,
    operation and key columns, and what keeps the changes past the cursor (CHANGETABLE keeps
    them itself)."""

    changes: sa.FromClause
    version: sa.ColumnElement[Any]
    operation: sa.ColumnElement[Any]
    keys: Mapping[str, sa.ColumnElement[Any]]
    past: sa.ColumnElement[bool] | None = None


def changetable(table: sa.Table, keys: Sequence[str], since: int, dialect: sa.Dialect) -> Feed:
    """`CHANGETABLE(CHANGES schema.table, :since) AS ct`: the latest change of each key changed
    after version `since` (T-SQL takes a value or a parameter there, no expression)."""
    name = dialect.identifier_preparer.format_table(table)
    changes = (
        sa.func.CHANGETABLE(
            sa.literal_column(f"CHANGES {name}"),
            sa.bindparam("since", since, type_=sa.BigInteger),
        )
        .table_valued(
            sa.column(VERSION, sa.BigInteger),
            sa.column(OPERATION, sa.Unicode(1)),
            *(sa.column(key, table.c[key].type) for key in keys),
        )
        .alias("ct")
    )
    return Feed(
        changes, changes.c[VERSION], changes.c[OPERATION], {key: changes.c[key] for key in keys}
    )


def change_log(change_table: sa.Table, keys: Sequence[str], since: int | None, label: str) -> Feed:
    """A change table of CHANGETABLE's shape as `ct`, past `since` (every change when None); its
    columns are found whatever their case (PostgreSQL folds unquoted names to lower case)."""
    wanted = [VERSION, OPERATION, *keys]
    found = {name: _column(change_table, name) for name in wanted}
    names = {name: column.name for name, column in found.items() if column is not None}
    missing = [name for name in wanted if name not in names]
    if missing:
        raise SourceError(
            f"{label}: the change table {_qualified(change_table)} (`cdc.change_table`) has no "
            f"column {', '.join(missing)}; it needs {', '.join(wanted)} (one row per change: "
            f"its version, 'I', 'U' or 'D', and the key), and has "
            f"{', '.join(change_table.c.keys())}. Fix the table or `cdc.change_table`."
        )
    changes = change_table.alias("ct")
    column = {name: changes.c[actual] for name, actual in names.items()}
    past = None
    if since is not None:
        past = column[VERSION] > sa.bindparam("since", since, type_=sa.BigInteger)
    return Feed(
        changes, column[VERSION], column[OPERATION], {key: column[key] for key in keys}, past
    )


def changes_query(
    table: sa.Table, selected: Mapping[str, sa.ColumnElement[Any]], feed: Feed
) -> sa.Select[Any]:
    """Each change with the table's row as it is now, in version order: the version, the
    operation, then the table's columns, the key's from the feed (a deleted key has no row) and
    the others from the table (NULL for a deleted key)."""
    joined = feed.changes.outerjoin(
        table, sa.and_(*(table.c[key] == column for key, column in feed.keys.items()))
    )
    query = sa.select(
        feed.version,
        feed.operation,
        *(feed.keys.get(name, expression) for name, expression in selected.items()),
    ).select_from(joined)
    if feed.past is not None:
        query = query.where(feed.past)
    return query.order_by(feed.version)


def snapshot_query(
    table: sa.Table, selected: Mapping[str, sa.ColumnElement[Any]], version: int
) -> sa.Select[Any]:
    """The whole table as inserts at `version` (read before the table: see the module)."""
    return sa.select(
        sa.bindparam("version", version, type_=sa.BigInteger).label(VERSION),
        sa.literal_column("'I'", sa.Unicode(1)).label(OPERATION),
        *selected.values(),
    ).select_from(table)


def tracking_state_query(table: sa.Table, dialect: sa.Dialect) -> sa.Select[Any]:
    """SQL Server: the database's current change tracking version and the table's minimum valid
    one (NULL when tracking is off, for the database or the table)."""
    name = dialect.identifier_preparer.format_table(table)
    return sa.select(
        sa.func.CHANGE_TRACKING_CURRENT_VERSION(),
        sa.func.CHANGE_TRACKING_MIN_VALID_VERSION(
            sa.func.OBJECT_ID(sa.bindparam("qualified", name, type_=sa.Unicode))
        ),
    )


def check_tracking(
    current: int | None, min_valid: int | None, since: int | None, label: str, table: str
) -> None:
    """Refuse a read that change tracking cannot answer whole: tracking off, or a cursor older
    than the table's minimum valid version."""
    if current is None:
        raise SourceError(
            f"{label}: change tracking is not enabled on the database "
            "(CHANGE_TRACKING_CURRENT_VERSION() is NULL). Enable it: `ALTER DATABASE <database> "
            "SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 7 DAYS, AUTO_CLEANUP = ON)`, then "
            f"`ALTER TABLE {table} ENABLE CHANGE_TRACKING`."
        )
    if min_valid is None:
        raise SourceError(
            f"{label}: change tracking is not enabled on the table, or the user may not see it "
            f"(CHANGE_TRACKING_MIN_VALID_VERSION is NULL). Enable it: `ALTER TABLE {table} "
            f"ENABLE CHANGE_TRACKING`, and grant the user `VIEW CHANGE TRACKING ON {table}`."
        )
    if since is not None and since < min_valid:
        raise SourceError(
            f"{label}: the stored cursor, change tracking version {since}, is older than the "
            f"table's minimum valid version {min_valid}: the changes in between were cleaned up "
            "(past the database's CHANGE_RETENTION) or the table was truncated, so they cannot "
            f"be read. To fix it, {FULL_REFRESH}; keep runs closer together than the retention "
            "period (or raise CHANGE_RETENTION) so that it does not happen again."
        )


def read_tracked_changes(
    source: SqlSource, dataset: DatasetSpec, since: str | None
) -> SourceStream:
    """The table's changes after version `since` joined to its rows, in version order; with no
    cursor, the whole table as inserts at the version current before the read."""
    reader = source.reader(dataset)
    label = where(source.source_name, dataset.qualified_name, None)
    version = _cursor_version(since, label)
    _require_a_feed(source, dataset, label)

    def planned(
        breaker: StallBreaker,
    ) -> tuple[sa.Select[Any], int | None, pa.Schema, frozenset[str]]:
        with reader._connect(None) as connection:
            breaker.add_connection(connection.connection.dbapi_connection)
            table = reader.reflect(connection)
            columns = reader._selected_columns(table)
            keys = _keys(dataset, columns, label)
            expressions = reader._select_expressions(connection, table, columns)
            selected = dict(zip([c.name for c in columns], expressions, strict=True))
            schema = _feed_schema(reader.arrow_schema(table, connection.dialect.name), keys)
            reader.source_types = reader._source_types(columns, connection.dialect)
            try:
                query, start = _read_query(
                    connection, dataset, table, selected, keys, version, label
                )
            except sa.exc.DBAPIError as error:
                raise _failed("reading the change feed", error, label) from None
        return query, start, schema, reader._booleans(columns)

    query, start, schema, booleans = watched_call(
        planned,
        reader._answer_seconds(),
        lambda: reader._unanswered("the change feed's reflection", None),
    )
    return SourceStream(
        reader=pa.RecordBatchReader.from_batches(
            schema, reader.watched_rows(query, schema, booleans)
        ),
        path="rows",
        source_types=reader.source_types,
        # the version the first read is stamped with: the cursor even when the table is empty
        position=None if start is None else str(start),
    )


def newest_tracked_change(source: SqlSource, dataset: DatasetSpec, since: str | None) -> str | None:
    """The newest version among the table's changes after `since` (None: none). SQL Server, no
    cursor: the current version (where a first run would start); a cursor past its validity: the
    current version too, so that the run it asks for fails with the fix."""
    reader = source.reader(dataset)
    label = where(source.source_name, dataset.qualified_name, None)
    version = _cursor_version(since, label)
    _require_a_feed(source, dataset, label)

    def asked(breaker: StallBreaker) -> int | None:
        with reader._connect(None) as connection:
            breaker.add_connection(connection.connection.dbapi_connection)
            table = reader.reflect(connection)
            try:
                log = _change_table(connection, dataset, label)
                if log is not None:
                    feed = change_log(log, (), version, label)
                else:
                    current, min_valid = _state(connection, table, None, label)
                    if version is None or version < min_valid:
                        return current
                    feed = changetable(table, (), version, connection.dialect)
                query = sa.select(sa.func.max(feed.version)).select_from(feed.changes)
                if feed.past is not None:
                    query = query.where(feed.past)
                newest = connection.execute(query).scalar()
            except sa.exc.DBAPIError as error:
                raise _failed("asking for the newest change", error, label) from None
        return None if newest is None else int(newest)

    newest = watched_call(
        asked,
        reader._answer_seconds(),
        lambda: reader._unanswered("asking for the newest change", None),
    )
    return None if newest is None or (version is not None and newest <= version) else str(newest)


def _read_query(
    connection: sa.Connection,
    dataset: DatasetSpec,
    table: sa.Table,
    selected: Mapping[str, sa.ColumnElement[Any]],
    keys: Sequence[str],
    version: int | None,
    label: str,
) -> tuple[sa.Select[Any], int | None]:
    """The changes past `version`; with none, the table at the version current now (before the
    table is read), and that version."""
    log = _change_table(connection, dataset, label)
    if log is None:
        current, _ = _state(connection, table, version, label)
        if version is None:
            return snapshot_query(table, selected, current), current
        feed = changetable(table, keys, version, connection.dialect)
        return changes_query(table, selected, feed), None
    feed = change_log(log, keys, version, label)
    if version is not None:
        return changes_query(table, selected, feed), None
    newest = sa.select(sa.func.coalesce(sa.func.max(feed.version), 0)).select_from(feed.changes)
    start = int(connection.execute(newest).scalar_one())
    return snapshot_query(table, selected, start), start


def _state(
    connection: sa.Connection, table: sa.Table, since: int | None, label: str
) -> tuple[int, int]:
    """SQL Server: (current version, the table's minimum valid version), checked for `since`."""
    current, min_valid = connection.execute(tracking_state_query(table, connection.dialect)).one()
    check_tracking(current, min_valid, since, label, _qualified(table))
    return int(current), int(min_valid)


def _require_a_feed(source: SqlSource, dataset: DatasetSpec, label: str) -> None:
    """Only SQL Server has CHANGETABLE: elsewhere the feed needs its change table."""
    dialect = source.engine.dialect.name
    if dialect == "mssql" or (dataset.cdc is not None and dataset.cdc.change_table):
        return
    keys = ", ".join(dataset.primary_key)
    raise SourceError(
        f"{label}: a sqlserver_change_tracking feed reads SQL Server's CHANGETABLE, which "
        f"{dialect} does not have: set `cdc.change_table` to a table (schema.table) of the "
        f"table's changes with columns {VERSION} (an ascending integer), {OPERATION} ('I', 'U' "
        f"or 'D') and the key ({keys}), one row per change."
    )


def _change_table(connection: sa.Connection, dataset: DatasetSpec, label: str) -> sa.Table | None:
    """The reflected `cdc.change_table`; None when it is not set (SQL Server's CHANGETABLE)."""
    feed = dataset.cdc
    if feed is None or not feed.change_table:
        return None
    schema, name = feed.feed_table(None, "")
    try:
        return sa.Table(name, sa.MetaData(), schema=schema, autoload_with=connection)
    except sa.exc.NoSuchTableError:
        raise SourceError(
            f"{label}: the change table {feed.change_table} (`cdc.change_table`) does not exist "
            "at the source; fix `cdc.change_table` (schema.table)."
        ) from None


def _keys(dataset: DatasetSpec, columns: Sequence[sa.Column[Any]], label: str) -> tuple[str, ...]:
    """The primary key, every column of it among the columns read (the join needs them)."""
    names = [column.name for column in columns]
    missing = [key for key in dataset.primary_key if key not in names]
    if missing:
        raise SourceError(
            f"{label}: primary key column(s) {', '.join(missing)} are not among the columns "
            f"read ({', '.join(names)}); fix `primary_key`, or add them to `columns`."
        )
    return tuple(dataset.primary_key)


def _feed_schema(table_schema: pa.Schema, keys: Sequence[str]) -> pa.Schema:
    """The read's columns: the version, the operation, then the table's as reflected (any but
    the key may be NULL: a deleted key has no row)."""
    return pa.schema(
        [
            pa.field(VERSION, pa.int64()),
            pa.field(OPERATION, pa.string()),
            *(f if f.name in keys else f.with_nullable(True) for f in table_schema),
        ]
    )


def _cursor_version(since: str | None, label: str) -> int | None:
    """The stored cursor as a change tracking version (an integer)."""
    if since is None:
        return None
    try:
        return int(since)
    except ValueError:
        raise SourceError(
            f"{label}: the stored cursor {since!r} is no change tracking version (an integer); "
            f"{FULL_REFRESH}."
        ) from None


def _column(table: sa.Table, name: str) -> sa.Column[Any] | None:
    """The column `name`, or the one column named so in another case."""
    if name in table.c:
        return table.c[name]
    matches = [column for column in table.c if column.name.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def _qualified(table: sa.Table) -> str:
    """`schema.table` as a message (and an ALTER TABLE in one) names it."""
    return f"{table.schema}.{table.name}" if table.schema else table.name


def _failed(what: str, error: sa.exc.DBAPIError, label: str) -> SourceError:
    """A statement the server refused, with the driver's first line (never the connection)."""
    return SourceError(
        f"{label}: {what} failed: {_first_line(error.orig)}. Check that change tracking is "
        "enabled on the table (or `cdc.change_table` names its changes) and that the user may "
        "read it."
    )
