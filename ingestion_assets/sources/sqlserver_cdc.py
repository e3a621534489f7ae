"""SQL Server change data capture as a cdc feed (`cdc: {feed: sqlserver_cdc}`).

CDC keeps each change of a captured table in its capture instance's change table for the
retention period (3 days by default), read through the function Microsoft documents for it,
`cdc.fn_cdc_get_all_changes_<capture>(from_lsn, to_lsn, N'all')`. The choices:

- The first run (no cursor) reads the table itself as inserts (operation 2), stamped with
  `sys.fn_cdc_get_max_lsn()` read *before* the table: the change table holds only the recent
  changes, never a row unchanged since capture began, so it cannot load the table. A change
  committed while the table is read is read again by the next run (applying it twice changes
  nothing), never missed.
- A later run reads the changes from `sys.fn_cdc_increment_lsn(cursor)` to
  `sys.fn_cdc_get_max_lsn()`, both computed in one statement first and then bound (the function
  refuses a range outside the capture's timeline), in (`__$start_lsn`, `__$seqval`) order.
  The read reports `max_lsn` as its position: every change up to it is read, even when none
  was new. Before either read, the columns read are tried on the function (no rows): one added
  to the table since capture began is not captured, and fails the run with the fix.
- A cursor whose next LSN is below the capture instance's minimum LSN fails with the fix, a
  full refresh: the changes in between were cleaned up, and a read past them would leave the
  lake wrong without a word.
- The sensor asks for the capture instance's own newest change, not `sys.fn_cdc_get_max_lsn()`,
  which every captured table (and an idle capture job) moves.
- The capture instance is part of a function's name, which cannot be bound: only a name of
  letters, digits and underscores is accepted.
- Elsewhere (PostgreSQL, MariaDB, SQLite) the change table (`cdc.change_table`) is read as a
  table past the cursor, and a first run reads the table stamped with the change table's
  newest LSN: how the same apply runs without SQL Server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, cast

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import mssql
from sqlalchemy.sql.selectable import TableValuedAlias

from ingestion_assets.errors import SourceError, where
from ingestion_assets.sources.sql import SqlSource, SqlTableReader, _first_line
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.tracking import FULL_REFRESH, _qualified
from ingestion_assets.sources.watchdog import StallBreaker, watched_call
from ingestion_assets.specs import DatasetSpec, TableSpec

START = "__$start_lsn"
SEQVAL = "__$seqval"
OPERATION = "__$operation"
INSERT = 2
LSN = mssql.BINARY(10)
# the LSN before any change: a first read of an empty change table starts there
ZERO_LSN = bytes(10)
# the events' own columns as SQL Server's functions return them
MSSQL_FIELDS = (
    pa.field(START, pa.binary(), nullable=False),
    pa.field(SEQVAL, pa.binary(), nullable=False),
    pa.field(OPERATION, pa.int32(), nullable=False),
)
_CAPTURE_NAME = re.compile(r"[A-Za-z0-9_]+")


def capture_instance(dataset: DatasetSpec, label: str) -> str:
    """The table's capture instance (`cdc.capture_instance`, default `<schema>_<table>`),
    refused unless it is a plain name: it is spliced into the function's name."""
    spec = cast(TableSpec, dataset)
    feed = spec.cdc
    capture = (
        feed.capture_instance if feed else None
    ) or f"{spec.schema_name or 'dbo'}_{spec.name}"
    if not _CAPTURE_NAME.fullmatch(capture):
        raise SourceError(
            f"{label}: the capture instance {capture!r} is not a name of letters, digits and "
            "underscores, so it cannot name the function cdc.fn_cdc_get_all_changes_<capture "
            "instance> (a function's name cannot be a parameter). Set `cdc.capture_instance` to the table's capture instance, as "
            "`EXEC sys.sp_cdc_help_change_data_capture` lists it."
        )
    return capture


def lsn_state_query(capture: str, cursor: bytes | None) -> sa.Select[Any]:
    """The capture instance's minimum LSN (0x00... when it does not exist or the user may not
    read it), the newest LSN the capture job processed, and, past a cursor, the LSN after it."""
    columns: list[sa.ColumnElement[Any]] = [
        sa.func.sys.fn_cdc_get_min_lsn(sa.bindparam("capture", capture, type_=sa.Unicode)).label(
            "min_lsn"
        ),
        sa.func.sys.fn_cdc_get_max_lsn().label("max_lsn"),
    ]
    if cursor is not None:
        following = sa.func.sys.fn_cdc_increment_lsn(sa.bindparam("cursor", cursor, type_=LSN))
        columns.append(following.label("from_lsn"))
    return sa.select(*columns)


def check_capture(
    min_lsn: bytes | None,
    max_lsn: bytes | None,
    cursor: bytes | None,
    from_lsn: bytes | None,
    capture: str,
    label: str,
) -> None:
    """Refuse a read CDC cannot answer whole: no capture instance the user may read, no LSN
    the capture job processed since capture began, or changes past the cursor cleaned up."""
    if not min_lsn or min_lsn == ZERO_LSN:
        raise SourceError(
            f"{label}: SQL Server has no capture instance '{capture}' this user may read "
            "(sys.fn_cdc_get_min_lsn returned 0x00000000000000000000). Enable change data "
            "capture on the table (`EXEC sys.sp_cdc_enable_table @source_schema = ..., "
            "@source_name = ..., @role_name = NULL`) or set `cdc.capture_instance` to its "
            "capture instance, and grant the user SELECT on the table's captured columns."
        )
    if max_lsn is None or max_lsn < min_lsn:
        raise SourceError(
            f"{label}: the capture job has not yet read the log since capture instance "
            f"'{capture}' began (sys.fn_cdc_get_max_lsn() is "
            f"{'NULL' if max_lsn is None else f'0x{max_lsn.hex()}'}, its minimum LSN "
            f"0x{min_lsn.hex()}). Make sure SQL Server Agent runs the database's CDC capture "
            "job (`EXEC sys.sp_cdc_start_job`), then run again."
        )
    if cursor is not None and from_lsn is not None and from_lsn < min_lsn:
        raise SourceError(
            f"{label}: the stored cursor, LSN 0x{cursor.hex()}, is older than capture instance "
            f"'{capture}''s minimum LSN 0x{min_lsn.hex()}: the changes in between were cleaned "
            "up (past the CDC retention, 3 days by default), so they cannot be read. To fix it, "
            f"{FULL_REFRESH}; keep runs closer together than the retention, or lengthen it "
            "(`EXEC sys.sp_cdc_change_job @job_type = N'cleanup', @retention = <minutes>`), so "
            "that it does not happen again."
        )


def capture_changes(
    capture: str, columns: Sequence[sa.Column[Any]], from_lsn: bytes, to_lsn: bytes
) -> TableValuedAlias:
    """`cdc.fn_cdc_get_all_changes_<capture>(:from_lsn, :to_lsn, N'all') AS ct`: every change
    in the range, an update as its row after it; the captured `columns` typed as the table's."""
    function = getattr(sa.func.cdc, f"fn_cdc_get_all_changes_{capture}")
    changes: TableValuedAlias = function(
        sa.bindparam("from_lsn", from_lsn, type_=LSN),
        sa.bindparam("to_lsn", to_lsn, type_=LSN),
        sa.literal_column("N'all'"),
    ).table_valued(
        sa.column(START, LSN),
        sa.column(SEQVAL, LSN),
        sa.column(OPERATION, sa.Integer),
        *(sa.column(column.name, column.type) for column in columns),
        name="ct",
    )
    return changes


def changes_query(
    changes: TableValuedAlias, selected: Sequence[sa.ColumnElement[Any]]
) -> sa.Select[Any]:
    """The changes in commit order, then in their order within a transaction."""
    own = [changes.c[START], changes.c[SEQVAL]]
    return sa.select(*own, changes.c[OPERATION], *selected).select_from(changes).order_by(*own)


def newest_query(changes: TableValuedAlias) -> sa.Select[Any]:
    """The LSN of the newest change in the range."""
    return sa.select(sa.func.max(changes.c[START]).label("newest")).select_from(changes)


def read_cdc_changes(source: SqlSource, dataset: DatasetSpec, since: str | None) -> SourceStream:
    """The table's changes after LSN `since`, in order; with no cursor, the whole table as
    inserts at the LSN reached before it is read."""
    label = where(source.source_name, dataset.qualified_name, None)
    cursor = _cursor_lsn(since, label)
    if source.engine.dialect.name == "mssql":
        return _read_capture(source.reader(dataset), capture_instance(dataset, label), cursor)
    return _read_change_table(source, source.reader(dataset), cursor)


def newest_cdc_change(source: SqlSource, dataset: DatasetSpec, since: str | None) -> str | None:
    """The LSN of the table's newest change after `since` (None: none), hex. SQL Server, no
    cursor: the newest LSN (where a first run would start); a cursor past cleanup: the newest
    LSN too, so that the run it asks for fails with the fix."""
    label = where(source.source_name, dataset.qualified_name, None)
    cursor = _cursor_lsn(since, label)
    reader = source.reader(dataset)
    mssql_source = source.engine.dialect.name == "mssql"
    capture = capture_instance(dataset, label) if mssql_source else ""
    changes = source.reader(_change_spec(reader.table, None))

    def asked(breaker: StallBreaker) -> bytes | None:
        with reader._connect(None) as connection:
            breaker.add_connection(connection.connection.dbapi_connection)
            if not mssql_source:
                log = _change_table(connection, changes, label)
                return _newest_logged(connection, log, cursor, label)
            try:
                state = connection.execute(lsn_state_query(capture, cursor)).one()
                min_lsn, max_lsn = state.min_lsn, state.max_lsn
                check_capture(min_lsn, max_lsn, None, None, capture, label)
                if cursor is None or state.from_lsn < min_lsn:
                    return bytes(max_lsn)
                if state.from_lsn > max_lsn:
                    return None
                ranged = capture_changes(capture, (), state.from_lsn, max_lsn)
                newest = connection.execute(newest_query(ranged)).scalar()
            except sa.exc.DBAPIError as error:
                raise _failed("asking for the newest change", error, capture, label) from None
        return None if newest is None else bytes(newest)

    newest = watched_call(
        asked,
        reader._answer_seconds(),
        lambda: reader._unanswered("asking for the newest change", None),
    )
    if newest is None or (cursor is not None and newest <= cursor):
        return None
    return newest.hex()


def _read_capture(reader: SqlTableReader, capture: str, cursor: bytes | None) -> SourceStream:
    """SQL Server: the table at the newest LSN, or the capture's changes past the cursor."""
    label = reader._where(None)

    def planned(
        breaker: StallBreaker,
    ) -> tuple[sa.Select[Any] | None, pa.Schema, bytes, frozenset[str]]:
        with reader._connect(None) as connection:
            breaker.add_connection(connection.connection.dbapi_connection)
            try:
                state = connection.execute(lsn_state_query(capture, cursor)).one()
                from_lsn = state.from_lsn if cursor is not None else None
                check_capture(state.min_lsn, state.max_lsn, cursor, from_lsn, capture, label)
                max_lsn = bytes(state.max_lsn)
                table = reader.reflect(connection)
                columns = reader._selected_columns(table)
                schema = _events_schema(
                    MSSQL_FIELDS, reader.arrow_schema(table, "mssql"), reader.table.primary_key
                )
                reader.source_types = reader._source_types(columns, connection.dialect)
                # the columns read must be captured (one added since capture began is not)
                first = from_lsn if from_lsn is not None and from_lsn <= max_lsn else max_lsn
                changes = capture_changes(capture, columns, first, max_lsn)
                selected = reader._select_expressions(
                    connection,
                    cast(sa.Table, changes),
                    [cast(sa.Column[Any], changes.c[column.name]) for column in columns],
                )
                query = changes_query(changes, selected)
                connection.execute(query.limit(0)).all()
            except sa.exc.DBAPIError as error:
                raise _failed("reading the capture instance", error, capture, label) from None
        if cursor is not None and from_lsn is not None and from_lsn > max_lsn:
            return None, schema, max_lsn, frozenset()
        return query, schema, max_lsn, reader._booleans(columns)

    query, schema, max_lsn, booleans = watched_call(
        planned,
        reader._answer_seconds(),
        lambda: reader._unanswered("the capture instance's LSNs", None),
    )
    if cursor is None:
        whole = reader.read(None)
        return SourceStream(
            reader=pa.RecordBatchReader.from_batches(schema, _stamped(whole, max_lsn, schema)),
            path=f"{reader.path} (the whole table, at LSN 0x{max_lsn.hex()}, read before it)",
            source_types=reader.source_types,
            position=max_lsn.hex(),
        )
    batches: Iterator[pa.RecordBatch] = iter(())
    if query is not None:
        batches = reader.watched_rows(query, schema, booleans)
    return SourceStream(
        reader=pa.RecordBatchReader.from_batches(schema, batches),
        path=f"rows (cdc.fn_cdc_get_all_changes_{capture} after LSN 0x{cursor.hex()} to "
        f"0x{max_lsn.hex()})",
        source_types=reader.source_types,
        # where the read reached: the changes up to it are all read, even when none was new
        position=max(cursor, max_lsn).hex(),
    )


def _read_change_table(
    source: SqlSource, reader: SqlTableReader, cursor: bytes | None
) -> SourceStream:
    """Elsewhere: the table stamped with its change table's newest LSN, or the change table's
    events past the cursor; both typed as the table and the change table declare them."""
    label = reader._where(None)

    def planned(breaker: StallBreaker) -> tuple[pa.Schema, SqlTableReader, bytes | None]:
        with reader._connect(None) as connection:
            breaker.add_connection(connection.connection.dbapi_connection)
            table = reader.reflect(connection)
            columns = reader._selected_columns(table)
            changes = source.reader(_change_spec(reader.table, [c.name for c in columns]))
            log = _change_table(connection, changes, label)
            dialect = connection.dialect.name
            own = changes.arrow_schema(log, dialect)
            schema = _events_schema(
                [own.field(START), own.field(SEQVAL), own.field(OPERATION)],
                reader.arrow_schema(table, dialect),
                reader.table.primary_key,
            )
            reader.source_types = reader._source_types(columns, connection.dialect)
            if cursor is not None:
                return schema, changes, None
            return schema, changes, _newest_logged(connection, log, None, label) or ZERO_LSN

    schema, changes, start = watched_call(
        planned,
        reader._answer_seconds(),
        lambda: reader._unanswered("the change table's reflection", None),
    )
    qualified = changes.table.qualified_name
    if cursor is not None:
        changes.changes_since = cursor.hex()
        events = changes.read(None)
        return SourceStream(
            reader=pa.RecordBatchReader.from_batches(
                schema, _conformed(events, schema, qualified, label)
            ),
            path=f"{changes.path} ({qualified} from LSN 0x{cursor.hex()})",
            source_types=reader.source_types,
        )
    assert start is not None  # read in the plan when there is no cursor
    whole = reader.read(None)
    return SourceStream(
        reader=pa.RecordBatchReader.from_batches(schema, _stamped(whole, start, schema)),
        path=f"{reader.path} (the whole table, at LSN 0x{start.hex()}, the newest of "
        f"{qualified} before it)",
        source_types=reader.source_types,
        position=start.hex(),
    )


def _change_spec(spec: TableSpec, names: Sequence[str] | None) -> TableSpec:
    """The change table (`cdc.change_table`) as a table read past `__$start_lsn`: the
    events' own columns and the table's `names` (every column when None)."""
    assert spec.cdc is not None
    schema, name = spec.cdc.feed_table(spec.schema_name, spec.name)
    return spec.model_copy(
        update={
            "schema_name": schema,
            "name": name,
            "columns": None if names is None else (START, SEQVAL, OPERATION, *names),
            "cursor_column": START,
            "delete_column": None,
        }
    )


def _change_table(connection: sa.Connection, changes: SqlTableReader, label: str) -> sa.Table:
    """The reflected change table, with every column the read needs."""
    spec = changes.table
    try:
        exists = sa.inspect(connection).has_table(spec.name, schema=spec.schema_name)
    except sa.exc.DBAPIError:
        exists = False
    if not exists:
        raise SourceError(
            f"{label}: the change table {spec.qualified_name} does not exist at the source. "
            f"Without SQL Server's CDC functions a sqlserver_cdc feed reads a table of its "
            f"change table's shape ({START}, {SEQVAL}, {OPERATION} and the table's columns, "
            "one row per change): set `cdc.change_table` (schema.table) to it."
        )
    log = changes.reflect(connection)
    wanted = spec.columns or (START, SEQVAL, OPERATION)
    missing = [name for name in wanted if name not in log.c]
    if missing:
        raise SourceError(
            f"{label}: the change table {spec.qualified_name} has no column "
            f"{', '.join(missing)}; it needs {', '.join(wanted)} and has "
            f"{', '.join(log.c.keys())}. Add them to the change table, or list the table's "
            "`columns` it holds."
        )
    return log


def _newest_logged(
    connection: sa.Connection, log: sa.Table, after: bytes | None, label: str
) -> bytes | None:
    """The change table's newest LSN (after `after`): its highest, as one row (PostgreSQL has
    no max() of bytea)."""
    column = log.c[START]
    query = sa.select(column).order_by(column.desc()).limit(1)
    if after is not None:
        query = query.where(column > sa.bindparam("after", after, type_=column.type))
    try:
        newest = connection.execute(query).scalar()
    except sa.exc.DBAPIError as error:
        raise SourceError(
            f"{label}: asking the change table {_qualified(log)} for its newest LSN failed: "
            f"{_first_line(error.orig)}. Check that the user may read it."
        ) from None
    return None if newest is None else bytes(newest)


def _events_schema(own: Sequence[pa.Field], table: pa.Schema, keys: Sequence[str]) -> pa.Schema:
    """The events' columns: their own (LSN, sequence value, operation), then the table's as
    reflected, any but the key nullable (SQL Server leaves large values out of a delete)."""
    return pa.schema([*own, *(f if f.name in keys else f.with_nullable(True) for f in table)])


def _stamped(
    batches: pa.RecordBatchReader, lsn: bytes, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """The table's batches as inserts at `lsn` (its sequence value too)."""
    for batch in batches:
        rows = batch.num_rows
        stamps = [
            pa.repeat(pa.scalar(lsn, schema.field(START).type), rows),
            pa.repeat(pa.scalar(lsn, schema.field(SEQVAL).type), rows),
            pa.repeat(pa.scalar(INSERT, schema.field(OPERATION).type), rows),
        ]
        yield pa.RecordBatch.from_arrays([*stamps, *batch.columns], schema=schema)


def _conformed(
    batches: pa.RecordBatchReader, schema: pa.Schema, qualified: str, label: str
) -> Iterator[pa.RecordBatch]:
    """The change table's batches typed as the table's columns (a first run's types)."""
    for batch in batches:
        try:
            arrays = [batch.column(field.name).cast(field.type) for field in schema]
        except pa.ArrowException as error:
            raise SourceError(
                f"{label}: the change table {qualified} holds a value the table's column type "
                f"does not: {error}. Declare the change table's columns as the table's."
            ) from None
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _cursor_lsn(since: str | None, label: str) -> bytes | None:
    """The stored cursor as an LSN: binary(10), stored as 20 hex digits."""
    if since is None:
        return None
    try:
        lsn = bytes.fromhex(since)
    except ValueError:
        lsn = b""
    if len(lsn) != len(ZERO_LSN):
        raise SourceError(
            f"{label}: the stored cursor {since!r} is no LSN (binary(10), 20 hex digits); "
            f"{FULL_REFRESH}."
        )
    return lsn


def _failed(what: str, error: sa.exc.DBAPIError, capture: str, label: str) -> SourceError:
    """A statement the server refused, with the driver's first line (never the connection)."""
    return SourceError(
        f"{label}: {what} failed: {_first_line(error.orig)}. Check that change data capture is "
        f"enabled on the table with capture instance '{capture}' (`cdc.capture_instance`), "
        "that it captures every column read (a column added since capture began is not: list "
        "the table's `columns` without it, or enable a new capture instance), and that the user "
        "may read them."
    )
