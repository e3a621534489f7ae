"""Read a SQL table's partition window as a stream of Arrow record batches, through SQLAlchemy."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import difflib
import math
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import mssql, mysql

from ingestion_assets.errors import SourceError, where
from ingestion_assets.sources import columnar, logical
from ingestion_assets.sources.base import (
    ChangedDays,
    DeclaredColumn,
    Finding,
    Source,
    did_you_mean,
)
from ingestion_assets.sources.cancel import on_cancel
from ingestion_assets.sources.odbc import (
    ascii_statement,
    odbc_batches,
    odbc_connection_string,
    odbc_statement,
    odbc_supported,
    redact_connection_string,
)
from ingestion_assets.sources.postgres import (
    copy_batches,
    copy_columns,
    copy_statement,
    copy_supported,
    finite_guard,
    not_finite_message,
)
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.types import (
    ArrayBuilder,
    array_builder,
    arrow_type,
    declared_type,
    integer_booleans,
    mysql_boolean,
)
from ingestion_assets.sources.watchdog import StallBreaker, watched_batches, watched_call
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import DatasetSpec, TableSpec

# ODBC type codes whose values pyodbc would otherwise cut to microseconds
SQL_TYPE_TIMESTAMP = 93
SQL_SS_TIMESTAMPOFFSET = -155
# SQLGetInfo code of the server product's name (pyodbc.SQL_DBMS_NAME)
SQL_DBMS_NAME = 17
_EPOCH = datetime.datetime(1970, 1, 1)


def _timestamp_nanoseconds(raw: bytes | None) -> int | None:
    """SQL_TIMESTAMP_STRUCT (year, month, day, hour, minute, second, fraction in ns) -> ns."""
    if raw is None:
        return None
    year, month, day, hour, minute, second, fraction = struct.unpack("<6hI", raw[:16])
    whole = datetime.datetime(year, month, day, hour, minute, second) - _EPOCH
    return int((whole.days * 86_400 + whole.seconds) * 1_000_000_000 + fraction)


def _timestamp_offset_nanoseconds(raw: bytes | None) -> int | None:
    """SQL Server's datetimeoffset struct -> ns since the epoch in UTC."""
    if raw is None:
        return None
    *parts, fraction, offset_hours, offset_minutes = struct.unpack("<6hI2h", raw[:20])
    local = datetime.datetime(*parts) - _EPOCH
    offset = (offset_hours * 60 + offset_minutes) * 60
    seconds = local.days * 86_400 + local.seconds - offset
    return int(seconds * 1_000_000_000 + fraction)


def install_odbc_converters(dbapi_connection: Any) -> None:
    """Make a pyodbc connection return timestamps as exact nanoseconds (pyodbc keeps only us)."""
    # A converter makes pyodbc fetch the column as SQL_C_BINARY. Only SQL Server's drivers answer
    # with the timestamp structs decoded below (and only SQL Server has 100 ns digits to keep);
    # MariaDB's driver answers with text, PostgreSQL's refuses the conversion.
    if dbapi_connection.getinfo(SQL_DBMS_NAME) != "Microsoft SQL Server":
        return
    dbapi_connection.add_output_converter(SQL_TYPE_TIMESTAMP, _timestamp_nanoseconds)
    dbapi_connection.add_output_converter(SQL_SS_TIMESTAMPOFFSET, _timestamp_offset_nanoseconds)


_URL_WITH_RAW_AT = (
    "the connection url has more than one '@' before its host, so its host cannot be told from "
    "its password: percent-encode every '@' in the user name or password as %40 (e.g. "
    "postgresql://user:p%40ss@host/db), or give the password on its own as "
    "password: ${DB_PASSWORD}"
)


def source_url(text: str, source_name: str) -> sa.URL:
    """A source's URL text (resolved from the environment) as a SQLAlchemy URL; an unencoded `@`
    in the user or password, or text that is no URL, is refused without echoing any of it."""
    scheme, separator, rest = text.partition("://")
    # SQLAlchemy reads a password up to its first '@' and takes what follows for the host (or
    # port): a raw '@' in a password would send part of it to DNS and print it as the host
    # (a raw '?' or '/' in the password ends the host early too, so the '@' is counted over
    # the whole text: one there must be percent-encoded wherever it is)
    raw_at = bool(separator) and rest.count("@") > 1
    try:
        url = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError):
        # SQLAlchemy's message quotes the whole text, password included
        if raw_at:
            raise SourceError(f"source '{source_name}': {_URL_WITH_RAW_AT}") from None
        raise _not_a_url(source_name, scheme if separator else "") from None
    if raw_at or "@" in (url.host or ""):
        raise SourceError(f"source '{source_name}': {_URL_WITH_RAW_AT}")
    if "@" in rest and not url.host:
        # a raw '?' or '/' in the password ended the host early: no part of it is shown
        raise _not_a_url(source_name, scheme)
    return url


def _not_a_url(source_name: str, scheme: str) -> SourceError:
    """The error of URL text SQLAlchemy cannot take apart; only a plain scheme is shown (text
    without :// may be anything, a bare password too)."""
    plain = re.fullmatch(r"[a-z0-9+_]{1,40}", scheme)
    shown = f" (scheme '{scheme}')" if plain else ""
    return SourceError(
        f"source '{source_name}': the connection url is not a SQLAlchemy URL{shown}; write it "
        "as dialect+driver://user:password@host:port/db, with reserved characters in the "
        "password percent-encoded (@ as %40, ? as %3F)"
    )


@dataclass(frozen=True)
class SessionLimits:
    """How long a source may take: to connect, per statement (server side), between batches of
    a read, and the silence after which TCP keepalives probe the server (all in seconds)."""

    connect_timeout: float = 30.0
    statement_timeout: float | None = None
    read_stall_timeout: float | None = 300.0
    tcp_keepalive: int = 60


def _connect_parameters(driver: str, limits: SessionLimits, parameters: dict[str, Any]) -> None:
    """The driver's own connect timeout and keepalive settings, unless the URL sets them."""
    seconds = max(1, math.ceil(limits.connect_timeout))
    if driver == "psycopg2":
        # libpq counts whole seconds and treats less than 2 as 2
        parameters.setdefault("connect_timeout", max(2, seconds))
        parameters.setdefault("keepalives", 1)
        parameters.setdefault("keepalives_idle", limits.tcp_keepalive)
        parameters.setdefault("keepalives_interval", max(1, limits.tcp_keepalive // 6))
        parameters.setdefault("keepalives_count", 5)
    elif driver == "pymysql":
        parameters.setdefault("connect_timeout", seconds)
        if limits.read_stall_timeout is not None:
            # a backstop for the statements outside a watched read (reflection, counts): no
            # single wait for the server lasts longer than twice the stall timeout
            parameters.setdefault("read_timeout", math.ceil(2 * limits.read_stall_timeout))
    elif driver == "pyodbc":
        # the ODBC login timeout
        parameters.setdefault("timeout", seconds)


def _set_keepalive(dbapi_connection: Any, idle_seconds: int) -> None:
    """TCP keepalives on PyMySQL's socket (PyMySQL has no option for them)."""
    sock = getattr(dbapi_connection, "_sock", None)
    if not isinstance(sock, socket.socket):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", idle_seconds),
        ("TCP_KEEPINTVL", max(1, idle_seconds // 6)),
        ("TCP_KEEPCNT", 5),
    ):
        if hasattr(socket, option):  # Linux names; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _set_statement_timeout(dbapi_connection: Any, dialect: str, seconds: float) -> None:
    """The server-side limit of one statement, in the dialect's own setting."""
    if type(dbapi_connection).__module__.startswith("pyodbc") and dialect == "mssql":
        # SQL_ATTR_QUERY_TIMEOUT, whole seconds
        dbapi_connection.timeout = max(1, math.ceil(seconds))
        return
    cursor = dbapi_connection.cursor()
    try:
        if dialect == "postgresql":
            cursor.execute(f"SET statement_timeout = {max(1, round(seconds * 1000))}")
        elif dialect in ("mysql", "mariadb"):
            cursor.execute("SELECT VERSION()")
            version = str(cursor.fetchone()[0])
            if "mariadb" in version.lower():
                # MariaDB: max_statement_time, in seconds (fractions allowed)
                cursor.execute(f"SET SESSION max_statement_time = {seconds:.3f}")
            else:
                # MySQL: max_execution_time, in milliseconds, for SELECT statements
                cursor.execute(f"SET SESSION max_execution_time = {max(1, round(seconds * 1000))}")
    finally:
        cursor.close()


# the package extra that installs a driver for each SQLAlchemy dialect (pyproject.toml)
DRIVER_EXTRAS = {
    "postgresql": ("postgres", "psycopg2"),
    "mysql": ("mysql", "pymysql"),
    "mariadb": ("mysql", "pymysql"),
}


def driver_install_hint(drivername: str) -> str:
    """How to install the driver of a `dialect+driver` URL, for an error message."""
    dialect, _, driver = drivername.partition("+")
    if dialect not in DRIVER_EXTRAS:
        return (
            f"install the SQLAlchemy dialect and driver of {drivername} into Dagster's "
            "environment, or use one the project ships: postgresql+psycopg2 or mysql+pymysql "
            "(extras postgres, mysql), mssql+pyodbc, sqlite"
        )
    extra, extra_driver = DRIVER_EXTRAS[dialect]
    hint = (
        f"install the '{extra}' extra: `uv sync --inexact --extra {extra}` in the repository, "
        f"or `pip install 'ingestion_assets[{extra}]'`"
    )
    if driver != extra_driver:
        hint += f", and name its driver in the URL: '{dialect}+{extra_driver}://...'"
    return hint


class DriverNotInstalledError(SourceError):
    """A source URL whose SQLAlchemy dialect or driver is not installed, and how to install it."""

    def __init__(self, source_name: str, drivername: str, error: Exception) -> None:
        self.problem = (
            f"the database driver of '{drivername}' URLs is not installed "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        )
        self.fix = driver_install_hint(drivername)
        super().__init__(f"source '{source_name}': {self.problem}; {self.fix}")


def create_source_engine(
    url: sa.URL,
    sqlite_attach: Mapping[str, str] | None = None,
    limits: SessionLimits | None = None,
) -> sa.Engine:
    """An engine for a source: ODBC timestamp converters, SQLite schemas, connect and statement
    timeouts and TCP keepalives set up on connect."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    attachments = dict(sqlite_attach or {})
    dialect = engine.dialect.name

    if limits is not None:

        @sa.event.listens_for(engine, "do_connect")
        def _connect_limits(
            _dialect: Any, _record: Any, _arguments: Any, parameters: dict[str, Any]
        ) -> None:
            _connect_parameters(engine.dialect.driver, limits, parameters)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        module = type(dbapi_connection).__module__
        if module.startswith("pyodbc"):
            install_odbc_converters(dbapi_connection)
        if limits is not None:
            _set_keepalive(dbapi_connection, limits.tcp_keepalive)
            if limits.statement_timeout is not None:
                _set_statement_timeout(dbapi_connection, dialect, limits.statement_timeout)
        if module.startswith("psycopg2"):
            # zone-aware values in UTC whatever the server's default: a value near the end of
            # time stays a valid datetime (9999-12-31 23:59+00 is year 10000 in Tokyo)
            cursor = dbapi_connection.cursor()
            cursor.execute("SET TIME ZONE 'UTC'")
            cursor.close()
            dbapi_connection.commit()
        if attachments:
            cursor = dbapi_connection.cursor()
            for schema, path in attachments.items():
                cursor.execute("ATTACH DATABASE ? AS " + _sqlite_quote(schema), (path,))
            cursor.close()

    return engine


def _sqlite_quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def window_bounds(
    column_type: sa.types.TypeEngine[Any], window: PartitionWindow
) -> tuple[Any, Any]:
    """The window's bounds as values comparable with the partition column's type."""
    if isinstance(column_type, sa.Date):
        return window.start.date(), window.end.date()
    if isinstance(column_type, mssql.DATETIMEOFFSET) or getattr(column_type, "timezone", False):
        return window.start, window.end
    # a naive column holds local times of the source's zone, as the window's bounds are
    return window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)


def window_query(
    table: sa.Table,
    columns: Sequence[sa.ColumnElement[Any]],
    partition_column: str | None,
    window: PartitionWindow | None,
    dialect: str = "",
) -> sa.Select[Any]:
    """`SELECT columns FROM table WHERE partition >= :start AND partition < :end` (bound values)."""
    query = sa.select(*columns)
    if partition_column is None or window is None:
        return query.select_from(table)
    column = table.c[partition_column]
    if dialect == "sqlite" and isinstance(column.type, sa.Date | sa.DateTime):
        return query.where(*_sqlite_window(column, window))
    start, end = window_bounds(column.type, window)
    return query.where(column >= sa.bindparam("window_start", start, type_=column.type)).where(
        column < sa.bindparam("window_end", end, type_=column.type)
    )


def _sqlite_window(
    column: sa.Column[Any], window: PartitionWindow
) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    """SQLite keeps dates and times as text in whatever form they were written
    (`2024-01-04 00:00:00`, `2024-01-04T00:00:00.000000`, ...), and text compares character by
    character: `'2024-01-04 00:00:00' < '2024-01-04 00:00:00.000000'` is true. Both sides are put
    in SQLite's own form first; the bounds are whole seconds, so the fraction that `datetime()`
    drops cannot move a row across them."""
    normalized, start, end = _sqlite_normalized(column, window)
    return (
        normalized >= sa.bindparam("window_start", start, type_=sa.String()),
        normalized < sa.bindparam("window_end", end, type_=sa.String()),
    )


def _sqlite_normalized(
    column: sa.Column[Any], window: PartitionWindow
) -> tuple[sa.ColumnElement[Any], str, str]:
    """The column in SQLite's own date (time) form, and the window's bounds in that form."""
    if isinstance(column.type, sa.DateTime):
        start = window.start.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S")
        end = window.end.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S")
        return sa.func.datetime(column), start, end
    return sa.func.date(column), window.start.date().isoformat(), window.end.date().isoformat()


@dataclass(frozen=True)
class PartitionRange:
    """The days a table's partitions cover, `[first_day, end_day)`; no end_day: open-ended
    (a row dated after today is reached once its day comes)."""

    first_day: datetime.date
    end_day: datetime.date | None
    timezone: str = "UTC"

    def window(self) -> PartitionWindow:
        """The range as a window (an open end is ignored by `unreachable_query`), named for
        messages."""
        last_day = self.end_day - datetime.timedelta(days=1) if self.end_day else self.first_day
        window = PartitionWindow.of_days(self.first_day, last_day, self.timezone)
        after = f" or on/after {self.end_day.isoformat()}" if self.end_day else ""
        name = (
            "the rows no partition reaches (partition column NULL, before "
            f"{self.first_day.isoformat()}{after})"
        )
        return PartitionWindow(window.start, window.end, name)


def unreachable_query(
    table: sa.Table,
    columns: Sequence[sa.ColumnElement[Any]],
    partition_column: str,
    partitions: PartitionRange,
    dialect: str = "",
) -> sa.Select[Any]:
    """`SELECT columns FROM table WHERE col IS NULL OR col < :start OR col >= :end`: the rows no
    partition of the range reaches (bound values, compared as `window_query` compares)."""
    column = table.c[partition_column]
    window = partitions.window()
    conditions: list[sa.ColumnElement[bool]] = [column.is_(None)]
    if dialect == "sqlite" and isinstance(column.type, sa.Date | sa.DateTime):
        # text that is no date normalizes to NULL: no window reaches it either
        normalized, start, end = _sqlite_normalized(column, window)
        conditions.append(normalized.is_(None))
        conditions.append(normalized < sa.bindparam("range_start", start, type_=sa.String()))
        if partitions.end_day is not None:
            conditions.append(normalized >= sa.bindparam("range_end", end, type_=sa.String()))
    else:
        start_value, end_value = window_bounds(column.type, window)
        conditions.append(column < sa.bindparam("range_start", start_value, type_=column.type))
        if partitions.end_day is not None:
            conditions.append(column >= sa.bindparam("range_end", end_value, type_=column.type))
    return sa.select(*columns).select_from(table).where(sa.or_(*conditions))


# SQL Server types SQLAlchemy cannot reflect, read as text through their own conversion
_MSSQL_TEXT_EXPRESSIONS = {
    "hierarchyid": "{column}.ToString()",
    "geography": "{column}.STAsText()",
    "geometry": "{column}.STAsText()",
}


def mssql_select_expression(
    table: sa.Table, column: sa.Column[Any], data_type: str
) -> sa.ColumnElement[Any]:
    """A select-list expression that turns an unknown SQL Server type into text."""
    template = _MSSQL_TEXT_EXPRESSIONS.get(data_type.lower())
    if template is not None:
        preparer = mssql.dialect().identifier_preparer  # type: ignore[no-untyped-call]
        quoted = f"{preparer.quote(table.name)}.{preparer.quote(column.name)}"
        return sa.literal_column(template.format(column=quoted), sa.UnicodeText).label(column.name)
    return sa.cast(column, mssql.NVARCHAR(None)).label(column.name)


class SqlTableReader:
    """Streams one table (or one partition window of it) from a SQL source as Arrow batches."""

    def __init__(
        self,
        engine: sa.Engine,
        source_name: str,
        table: TableSpec,
        batch_size: int,
        fast_path: bool = True,
        limits: SessionLimits | None = None,
        tinyint1_as_bool: bool = True,
    ) -> None:
        self.engine = engine
        self.source_name = source_name
        self.table = table
        self.batch_size = batch_size
        self.limits = limits or SessionLimits()
        # MySQL's TINYINT(1) (BOOLEAN) read as a boolean
        self.tinyint1_as_bool = tinyint1_as_bool
        # the driver's bulk path where it is exact: COPY parsed by Arrow for PostgreSQL through
        # psycopg2, arrow-odbc for pyodbc sources, ConnectorX for MySQL/MariaDB, ADBC for
        # SQLite; otherwise rows through SQLAlchemy
        self.fast_path = fast_path
        # how the last read() fetches: "copy", "odbc bulk fetch", "connectorx", "adbc" or "rows"
        self.path = "rows"
        # the last read's columns, each with its type as the source declares it
        self.source_types: dict[str, str] = {}
        # SQLite: the databases attached to the source's connections (name -> file)
        self._sqlite_files: dict[str, str] = {}
        # a merge table's read: only the rows whose cursor column is at or past this value
        self.changes_since: str | None = None

    def _where(self, window: PartitionWindow | None) -> str:
        return where(self.source_name, self.table.qualified_name, window.label if window else None)

    def reflect(self, connection: sa.Connection, window: PartitionWindow | None = None) -> sa.Table:
        """The source table's columns, read now (never while definitions load)."""
        inspector = sa.inspect(connection)
        schema, name = self.table.schema_name, self.table.name
        try:
            schemas = inspector.get_schema_names() if schema is not None else []
            # a first check for a clearer message; case-blind, as some servers are
            if schema is not None and schema.lower() not in {s.lower() for s in schemas}:
                listing = ", ".join(sorted(schemas)[:30]) or "none"
                raise SourceError(
                    f"{self._where(window)}: the table does not exist at the source: there is no "
                    f"schema '{schema}'. Tables in schema '{schema}': none. Schemas: {listing}. "
                    "Fix `schema` in the project file."
                )
            if not inspector.has_table(name, schema=schema):
                existing = inspector.get_table_names(schema=schema) + inspector.get_view_names(
                    schema=schema
                )
                close = difflib.get_close_matches(name, existing, n=3)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                listing = ", ".join(sorted(existing)[:30]) or "none"
                raise SourceError(
                    f"{self._where(window)}: the table does not exist at the source. {hint}"
                    f"Tables in schema '{schema or 'default'}': {listing}. Fix `name`/`schema` "
                    "in the project file."
                )
            table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=connection)
        except sa.exc.DBAPIError as error:
            raise SourceError(
                f"{self._where(window)}: reading the table's columns failed: "
                f"{_first_line(error.orig)}. Check `schema`/`name` and the user's rights."
            ) from None
        if connection.dialect.name in ("mysql", "mariadb") and any("``" in c.name for c in table.c):
            # MySQL reflection keeps SHOW CREATE TABLE's doubled backtick in a column's name
            table = sa.Table(
                name,
                sa.MetaData(),
                *[
                    sa.Column(c.name.replace("``", "`"), c.type, nullable=c.nullable)
                    for c in table.c
                ],
                schema=schema,
            )
        return table

    def _selected_columns(self, table: sa.Table) -> list[sa.Column[Any]]:
        wanted = list(self.table.columns) if self.table.columns else [c.name for c in table.c]
        needed = [*wanted, *([self.table.partition_column] if self.table.partition_column else [])]
        missing = [name for name in dict.fromkeys(needed) if name not in table.c]
        if missing:
            raise SourceError(
                f"{where(self.source_name, self.table.qualified_name, None)}: column(s) "
                f"{', '.join(missing)} not found; the table has: "
                f"{', '.join(c.name for c in table.c)}. Fix `columns`/`partition_column`."
            )
        if self.table.partition_column and self.table.partition_column not in wanted:
            # the IO manager assigns each row to its day from this column
            wanted.append(self.table.partition_column)
        return [table.c[name] for name in wanted]

    def _select_expressions(
        self, connection: sa.Connection, table: sa.Table, columns: list[sa.Column[Any]]
    ) -> list[sa.ColumnElement[Any]]:
        unknown = [c for c in columns if isinstance(c.type, sa.types.NullType)]
        if connection.dialect.name == "postgresql":
            schema = self.arrow_schema(table, "postgresql")
            return [finite_guard(c, field) for c, field in zip(columns, schema, strict=True)]
        if not unknown or connection.dialect.name != "mssql":
            return [_driver_values(c) for c in columns]
        rows = connection.execute(
            sa.text(
                "SELECT COLUMN_NAME, DATA_TYPE FROM INFORMATION_SCHEMA.COLUMNS "
                "WHERE TABLE_SCHEMA = :schema AND TABLE_NAME = :name"
            ),
            {"schema": self.table.schema_name or "dbo", "name": self.table.name},
        )
        data_types = {row[0]: row[1] for row in rows}
        return [
            mssql_select_expression(table, c, data_types.get(c.name, ""))
            if isinstance(c.type, sa.types.NullType)
            else c
            for c in columns
        ]

    def arrow_schema(self, table: sa.Table, dialect: str) -> pa.Schema:
        """The exact Arrow schema of the selected columns, from the declared source types."""
        return pa.schema(
            [
                pa.field(
                    c.name,
                    arrow_type(c.type, dialect, self.tinyint1_as_bool),
                    nullable=bool(c.nullable),
                )
                for c in self._selected_columns(table)
            ]
        )

    def _booleans(self, columns: Sequence[sa.Column[Any]]) -> frozenset[str]:
        """The TINYINT(1) columns read as booleans."""
        if not self.tinyint1_as_bool:
            return frozenset()
        return frozenset(c.name for c in columns if mysql_boolean(c.type))

    def _source_types(
        self, columns: Sequence[sa.Column[Any]], dialect: sa.Dialect
    ) -> dict[str, str]:
        """Each selected column's type as the source declares it, for the column descriptions."""
        booleans = self._booleans(columns)
        return {
            c.name: declared_type(c.type, dialect)
            + ("" if c.nullable else " NOT NULL")
            + (" (MySQL's BOOLEAN, read as boolean)" if c.name in booleans else "")
            for c in columns
        }

    def read(
        self, window: PartitionWindow | None, unreachable: PartitionRange | None = None
    ) -> pa.RecordBatchReader:
        """Reflect the table, then stream `[window.start, window.end)` in bounded batches; with
        `unreachable`, the rows no partition of that range reaches instead."""
        if unreachable is not None:
            window = unreachable.window()

        def reflected(
            breaker: StallBreaker,
        ) -> tuple[sa.Table, list[Any], pa.Schema, list[sa.ColumnElement[Any]]]:
            with self._connect(window) as connection:
                breaker.add_connection(connection.connection.dbapi_connection)
                table = self.reflect(connection, window)
                columns = self._selected_columns(table)
                schema = self.arrow_schema(table, connection.dialect.name)
                expressions = self._select_expressions(connection, table, columns)
                self.source_types = self._source_types(columns, connection.dialect)
            return table, columns, schema, expressions

        # the table's reflection is bounded like the read that follows it (connecting has its
        # own bound, connect_timeout, and its own message)
        table, columns, schema, expressions = watched_call(
            reflected,
            self._answer_seconds(),
            lambda: self._unanswered("the table's reflection", window),
        )
        driver = self.engine.dialect.driver
        breaker = StallBreaker()
        booleans = self._booleans(columns)
        batches: Iterator[pa.RecordBatch] | None = None
        if self.fast_path and driver == "psycopg2" and copy_supported(schema):
            query = self._query(table, copy_columns(expressions, schema), window, unreachable)
            batches, self.path = self._copy_batches(query, schema, window, breaker), "copy"
        elif (
            self.fast_path
            and driver == "pyodbc"
            and odbc_supported(schema, [c.type for c in columns])
        ):
            query = self._query(table, expressions, window, unreachable)
            statement, parameters = odbc_statement(query, self.engine.dialect)
            if ascii_statement(statement):
                batches = self._odbc_batches(statement, parameters, schema, window, booleans)
                self.path = "odbc bulk fetch"
        elif (
            self.fast_path
            and self.engine.dialect.name in ("mysql", "mariadb", "sqlite")
            and self._columnar_reads(table, columns, expressions, schema, window, unreachable)
        ):
            batches = self._columnar_batches(
                table, expressions, schema, window, unreachable, breaker, booleans
            )
        if batches is None:
            query = self._query(table, expressions, window, unreachable)
            batches = self._batches(query, schema, window, breaker, booleans)
            self.path = "rows"
        watched = watched_batches(
            batches,
            self.limits.read_stall_timeout,
            breaker,
            lambda rows: self._stalled(window, rows),
        )
        # the streaming connection is opened when the first batch is asked for, so a reader
        # that is never consumed holds no connection
        return pa.RecordBatchReader.from_batches(schema, watched)

    def _query(
        self,
        table: sa.Table,
        columns: Sequence[sa.ColumnElement[Any]],
        window: PartitionWindow | None,
        unreachable: PartitionRange | None,
    ) -> sa.Select[Any]:
        dialect = self.engine.dialect.name
        if unreachable is not None:
            if self.table.partition_column is None:
                raise SourceError(
                    f"{self._where(window)}: the table has no partition column, so every row "
                    "is reached by its snapshot"
                )
            return unreachable_query(
                table, columns, self.table.partition_column, unreachable, dialect
            )
        query = window_query(table, columns, self.table.partition_column, window, dialect)
        if self.changes_since is not None and self.table.cursor_column is not None:
            query = query.where(self._changed_since(table, self.changes_since, dialect))
        return query

    def _changed_since(self, table: sa.Table, since: str, dialect: str) -> sa.ColumnElement[bool]:
        """`cursor_column >= :since`, the cursor bound as the column's own type (SQLite: both
        sides in SQLite's date-time form, to the millisecond)."""
        name = self.table.cursor_column or ""
        if name not in table.c:
            raise SourceError(
                f"{self._where(None)}: cursor column {name} not found; fix `cursor_column` "
                f"(the table has {', '.join(table.c.keys())})"
            )
        column = table.c[name]
        try:
            bound = _bound_value(column.type, since)
        except ValueError as error:
            raise SourceError(
                f"{self._where(None)}: the stored cursor {since!r} does not fit cursor column "
                f"{name} ({column.type}): {error}. Run the asset with the tag "
                "`ingest/full_refresh=true` to read every row again."
            ) from None
        if dialect == "sqlite" and isinstance(bound, datetime.datetime):
            text = bound.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
            return sa.func.strftime("%Y-%m-%d %H:%M:%f", column) >= sa.bindparam(
                "changes_since", text, type_=sa.String()
            )
        return column >= sa.bindparam("changes_since", bound, type_=column.type)

    def select_query(self, window: PartitionWindow | None) -> tuple[sa.Select[Any], pa.Schema]:
        """The row path's query of the window and the schema it yields (as every path selects:
        the same expressions, the same refusals in the server)."""
        with self._connect(window) as connection:
            table = self.reflect(connection, window)
            columns = self._selected_columns(table)
            schema = self.arrow_schema(table, connection.dialect.name)
            expressions = self._select_expressions(connection, table, columns)
        return self._query(table, expressions, window, None), schema

    def _raise_refused(self, reason: str, window: PartitionWindow | None) -> None:
        """A value the select list refused in the server (see postgres.finite_guard)."""
        refused = not_finite_message(reason)
        if refused is not None:
            raise SourceError(f"{self._where(window)}: {refused}.") from None

    def _stalled(self, window: PartitionWindow | None, rows: int) -> SourceError:
        seconds = self.limits.read_stall_timeout
        return SourceError(
            f"{self._where(window)}: the source sent no rows for {seconds:g} s "
            f"(read_stall_timeout) after {rows} row(s) of the read; the connection was closed "
            "and nothing was written. If the source is only slow (a query that takes long "
            "before its first rows), raise `read_stall_timeout` on the source in the project "
            "file (or lower `batch_size`); otherwise re-run the partition once the source "
            "answers."
        )

    def _odbc_batches(
        self,
        statement: str,
        parameters: list[str | None],
        schema: pa.Schema,
        window: PartitionWindow | None,
        booleans: frozenset[str] = frozenset(),
    ) -> Iterator[pa.RecordBatch]:
        """ODBC sources: bulk fetches through arrow-odbc (see sources/odbc.py)."""
        from arrow_odbc import Error as OdbcError

        connection_string = odbc_connection_string(self.engine)
        # MariaDB's driver answers a bulk fetch of a TINYINT(1) as a bit with NULLs (tested):
        # those columns are fetched as the numbers they are, then checked and turned to booleans
        fetched = pa.schema([f.with_type(pa.int8()) if f.name in booleans else f for f in schema])
        try:
            for batch in odbc_batches(
                connection_string,
                statement,
                parameters,
                fetched,
                self.batch_size,
                login_timeout=max(1, math.ceil(self.limits.connect_timeout)),
                query_timeout=None
                if self.limits.statement_timeout is None
                else max(1, math.ceil(self.limits.statement_timeout)),
            ):
                if not booleans:
                    yield batch
                    continue
                arrays = [
                    self._column_array(integer_booleans, column, field, window, booleans)
                    if field.name in booleans
                    else column
                    for column, field in zip(batch.columns, schema, strict=True)
                ]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        except OdbcError as error:
            # the driver's diagnostic follows the first line ("ODBC emitted an error calling ...")
            text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            message = redact_connection_string(text, connection_string)
            refused = not_finite_message(message)
            if refused is not None:
                raise SourceError(f"{self._where(window)}: {refused}.") from None
            raise SourceError(
                f"{self._where(window)}: the source query failed through ODBC: {message}. "
                f"{_timeout_hint(message)}Nothing was written; re-run the partition once the "
                "source is reachable, or set `fast_path: false` on the source to read row by row "
                "through pyodbc."
            ) from None

    def _columnar_reads(
        self,
        table: sa.Table,
        columns: Sequence[sa.Column[Any]],
        expressions: Sequence[sa.ColumnElement[Any]],
        schema: pa.Schema,
        window: PartitionWindow | None,
        unreachable: PartitionRange | None,
    ) -> bool:
        """Whether the table's read takes the columnar path (sources/columnar.py); when not,
        why is logged once."""
        dialect = self.engine.dialect.name
        windowed = (
            window is not None and unreachable is None and self.table.partition_column is not None
        )
        reason = columnar.columnar_reason(
            dialect, self.engine.url, schema, [c.type for c in columns], windowed
        )
        if reason is None and dialect == "sqlite":
            self._sqlite_attachments(window)
        if reason is not None:
            columnar.log_fallback_once(self.source_name, self.table.qualified_name, reason)
            return False
        return True

    def _sqlite_attachments(self, window: PartitionWindow | None) -> None:
        """The files the source's SQLite connections attach, for ADBC's connection."""
        with self._connect(window) as connection:
            self._sqlite_files = columnar.sqlite_attachments(connection.connection.dbapi_connection)

    def _columnar_batches(
        self,
        table: sa.Table,
        expressions: Sequence[sa.ColumnElement[Any]],
        schema: pa.Schema,
        window: PartitionWindow | None,
        unreachable: PartitionRange | None,
        breaker: StallBreaker,
        booleans: frozenset[str],
    ) -> Iterator[pa.RecordBatch]:
        if self.engine.dialect.name == "sqlite":
            self.path = "adbc"
            return self._adbc_batches(table, expressions, schema, window, unreachable)
        self.path = "connectorx"
        assert window is not None  # a MySQL read without a window keeps the row path
        return self._connectorx_batches(table, expressions, schema, window, breaker, booleans)

    def _adbc_batches(
        self,
        table: sa.Table,
        expressions: Sequence[sa.ColumnElement[Any]],
        schema: pa.Schema,
        window: PartitionWindow | None,
        unreachable: PartitionRange | None,
    ) -> Iterator[pa.RecordBatch]:
        """SQLite: the window through ADBC, cast to the row path's values (sources/columnar.py)."""
        selected = columnar.sqlite_select_columns(expressions, schema)
        query = self._query(table, selected, window, unreachable)
        statement, parameters = columnar.sqlite_statement(query, schema, self.engine.dialect)
        builders = [
            columnar.sqlite_builder(
                field, columnar.row_converter(expression.type, self.engine.dialect, field.type)
            )
            for expression, field in zip(expressions, schema, strict=True)
        ]
        path = str(self.engine.url.database)
        self._announce(window, statement, tuple(parameters))
        try:
            for batch in columnar.adbc_batches(
                path, self._sqlite_files, statement, parameters, self.batch_size
            ):
                arrays = [
                    self._column_array(build, column, field, window, frozenset())
                    for column, field, build in zip(batch.columns, schema, builders, strict=True)
                ]
                converted = pa.RecordBatch.from_arrays(arrays, schema=schema)
                for offset in range(0, batch.num_rows, self.batch_size):
                    yield converted.slice(offset, self.batch_size)
        except (UnicodeDecodeError, columnar.NotUtf8Error) as error:
            raise SourceError(
                f"{self._where(window)}: the source holds text that is not valid UTF-8: "
                f"{error}. Nothing was written; repair those rows at the source (or declare "
                "the column as binary), then re-run the partition."
            ) from error
        except (OSError, InterruptedError) as error:
            reason = columnar.named_columns(_first_line(error), schema)
            if "Type mismatch" in reason:
                raise SourceError(
                    f"{self._where(window)}: a value does not fit its column type: {reason} "
                    "(SQLite keeps any value in any column). Nothing was written; check the "
                    "source column's values and declared type."
                ) from error
            raise SourceError(
                f"{self._where(window)}: the source query failed after it started: "
                f"{reason}. Nothing was written; re-run the partition, or set "
                "`fast_path: false` on the source to read row by row."
            ) from error

    def _connectorx_batches(
        self,
        table: sa.Table,
        expressions: Sequence[sa.ColumnElement[Any]],
        schema: pa.Schema,
        window: PartitionWindow,
        breaker: StallBreaker,
        booleans: frozenset[str],
    ) -> Iterator[pa.RecordBatch]:
        """MySQL/MariaDB: the window through ConnectorX in chunks of days (sources/columnar.py)."""
        url_text = columnar.connectorx_url(self.engine.url)
        tag = columnar.new_tag()

        def kill_now() -> None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                columnar.kill_tagged(self.engine, tag)

        def kill() -> None:
            # from the watching (or cancelling) thread, which must not wait for a server that
            # may be the one that stopped answering
            threading.Thread(target=kill_now, name="kill-query", daemon=True).start()

        breaker.on_stall(kill)
        selected = columnar.mysql_select_columns(expressions, schema)
        mariadb = bool(getattr(self.engine.dialect, "is_mariadb", False))

        def boolean(values: pa.Array, field: pa.Field) -> pa.Array:
            return self._column_array(integer_booleans, values, field, window, booleans)

        span = columnar.chunk_span(
            window.end - window.start, self._estimated_rows(table, selected, window)
        )
        position = window.start
        with on_cancel(kill):
            while position < window.end:
                chunk_end = min(window.end, position + span)
                chunk = PartitionWindow(position, chunk_end)
                statement = columnar.mysql_statement(
                    self._query(table, selected, chunk, None),
                    self.engine.dialect,
                    tag,
                    self.limits.statement_timeout,
                    mariadb,
                )
                self._announce(window, statement, {})
                try:
                    result = columnar.connectorx_table(url_text, statement)
                except Exception as error:
                    raise self._connectorx_error(error, window) from None
                except BaseException as error:
                    # a Rust panic (a value the driver cannot convert) is no Exception
                    if not columnar.is_driver_panic(error):
                        raise
                    raise self._connectorx_error(error, window) from None
                converted = columnar.conform_mysql(result, schema, boolean)
                # the driver's own columns (decimals as text) go before the batches do
                del result
                yield from converted.to_batches(max_chunksize=self.batch_size)
                del converted
                position = chunk_end

    def _estimated_rows(
        self, table: sa.Table, selected: Sequence[sa.ColumnElement[Any]], window: PartitionWindow
    ) -> int | None:
        """The server's estimate of the window's rows (`EXPLAIN`: nothing is read); None when
        it gives none."""
        query = self._query(table, selected, window, None)
        statement = str(
            query.compile(dialect=self.engine.dialect, compile_kwargs={"literal_binds": True})
        )
        try:
            with self._connect(window) as connection:
                plan = connection.exec_driver_sql("EXPLAIN " + statement).mappings().all()
        except sa.exc.DBAPIError:
            return None
        estimates = [int(row["rows"]) for row in plan if row.get("rows") is not None]
        return max(estimates) if estimates else None

    def _announce(self, window: PartitionWindow | None, statement: str, parameters: Any) -> None:
        """A statement another driver runs, told to SQLAlchemy's listeners (logging, statement
        counters), as the COPY path tells them."""
        if not self.engine.dispatch.before_cursor_execute:
            return
        with self._connect(window) as connection:
            self.engine.dispatch.before_cursor_execute(
                connection, None, statement, parameters, None, False
            )

    def _connectorx_error(
        self, error: BaseException, window: PartitionWindow | None
    ) -> SourceError:
        """ConnectorX's failure as the row path words it, without the connection's secrets."""
        reason = columnar.redacted(_first_line(error), self.engine.url.password)
        if "0000-00-00" in reason:
            return SourceError(
                f"{self._where(window)}: a value from the source does not fit its column type: "
                f"MySQL's zero date ({reason}). Nothing was written; replace it at the source "
                "(NULL or a real date), or read the table through a view that does."
            )
        refused = not_finite_message(reason)
        if refused is not None:
            return SourceError(f"{self._where(window)}: {refused}.")
        return SourceError(
            f"{self._where(window)}: the source query failed after it started: "
            f"{reason}. {_timeout_hint(reason)}Nothing was written; re-run the partition once the "
            "source is reachable, or set `fast_path: false` on the source to read row by row."
        )

    def _column_array(
        self,
        build: ArrayBuilder,
        values: Sequence[Any],
        field: pa.Field,
        window: PartitionWindow | None,
        booleans: frozenset[str],
    ) -> pa.Array:
        """One column of a batch of rows as Arrow; a value that does not fit names the column."""
        try:
            return build(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError) as error:
            if field.name in booleans:
                raise SourceError(
                    f"{self._where(window)}: column {field.name} is a TINYINT(1), which MySQL "
                    "and MariaDB store for BOOLEAN and which lands as a boolean "
                    f"(`tinyint1_as_bool`), but {error}. Nothing was written. If the column "
                    "holds numbers, set `tinyint1_as_bool: false` on the table (or on the "
                    "source) in the project file to land TINYINT(1) columns as int8; if it is a "
                    "flag, fix the row at the source."
                ) from error
            raise SourceError(
                f"{self._where(window)}: column {field.name}: a value does not fit its column "
                f"type ({field.type}): {error}. Check the source column's declared type."
            ) from error

    def _copy_batches(
        self,
        query: sa.Select[Any],
        schema: pa.Schema,
        window: PartitionWindow | None,
        breaker: StallBreaker,
    ) -> Iterator[pa.RecordBatch]:
        """PostgreSQL: the window through COPY, parsed by Arrow (see sources/postgres.py)."""
        connection = self._connect(window)
        try:
            dbapi_connection: Any = connection.connection.dbapi_connection
            breaker.add_connection(dbapi_connection)
            cursor = dbapi_connection.cursor()
            statement = copy_statement(cursor, query, self.engine.dialect)
            # COPY bypasses SQLAlchemy's execute: tell its listeners (logging, statement counters)
            self.engine.dispatch.before_cursor_execute(
                connection, cursor, statement, {}, None, False
            )
            cursor.close()
            yield from copy_batches(dbapi_connection, statement, schema, self.batch_size)
        except sa.exc.DBAPIError as error:
            connection.invalidate()
            reason = _first_line(error.orig)
            self._raise_refused(reason, window)
            raise SourceError(
                f"{self._where(window)}: the source query failed after it started: "
                f"{reason}. {_timeout_hint(reason)}Nothing was written; re-run the partition "
                "once the source is reachable."
            ) from None
        except self.engine.dialect.loaded_dbapi.Error as error:
            # a COPY that broke off: the connection is in an unknown state, never reused
            connection.invalidate()
            reason = _first_line(error)
            self._raise_refused(reason, window)
            raise SourceError(
                f"{self._where(window)}: the source query failed after it started: "
                f"{reason}. {_timeout_hint(reason)}Nothing was written; re-run the partition "
                "once the source is reachable."
            ) from None
        except (pa.ArrowInvalid, OSError) as error:
            connection.invalidate()
            raise SourceError(
                f"{self._where(window)}: a value from the source does not fit its column type: "
                f"{error}. Check the source column's declared type."
            ) from None
        except GeneratorExit:
            connection.invalidate()
            raise
        finally:
            connection.close()

    def count(self, window: PartitionWindow | None) -> int:
        """Rows of the table in the window (or in all), counted by the database."""

        def counted(breaker: StallBreaker) -> int:
            with self._connect(window) as connection:
                breaker.add_connection(connection.connection.dbapi_connection)
                table = self.reflect(connection, window)
                query = window_query(
                    table,
                    [sa.func.count().label("rows")],
                    self.table.partition_column,
                    window,
                    connection.dialect.name,
                )
                return self._scalar(connection, self._without_deleted(table, query), window)

        return self._watched_count(counted, window)

    def _without_deleted(self, table: sa.Table, query: sa.Select[Any]) -> sa.Select[Any]:
        """A merge table's count leaves out the rows its delete column marks deleted (a
        boolean or an integer flag; other flags are counted)."""
        spec = self.table
        name = spec.delete_column
        if spec.mode != "merge" or spec.deletes == "ignore" or name is None or name not in table.c:
            return query
        column = table.c[name]
        if isinstance(column.type, sa.Boolean):
            return query.where(column.is_not(sa.true()))
        if isinstance(column.type, sa.Integer):
            return query.where(sa.or_(column.is_(None), column == 0))
        return query

    def count_unreachable(self, partitions: PartitionRange) -> int:
        """Rows no partition of the range reaches, counted by the database (one query)."""
        window = partitions.window()

        def counted(breaker: StallBreaker) -> int:
            with self._connect(window) as connection:
                breaker.add_connection(connection.connection.dbapi_connection)
                table = self.reflect(connection, window)
                query = self._query(table, [sa.func.count().label("rows")], window, partitions)
                return self._scalar(connection, query, window)

        return self._watched_count(counted, window)

    def _scalar(
        self, connection: sa.Connection, query: sa.Select[Any], window: PartitionWindow | None
    ) -> int:
        try:
            return int(connection.execute(query).scalar_one())
        except sa.exc.DBAPIError as error:
            reason = _first_line(error.orig)
            # PyMySQL's own read timeout (twice read_stall_timeout) can end a stall first
            stalled = (
                " The source stopped answering: raise `read_stall_timeout` on the source in "
                "the project file if counting is only slow."
                if "timed out" in reason
                else ""
            )
            raise SourceError(
                f"{self._where(window)}: counting rows failed: {reason}. "
                f"{_timeout_hint(reason)}{stalled}".rstrip()
            ) from None

    def _watched_count(
        self, counted: Callable[[StallBreaker], int], window: PartitionWindow | None
    ) -> int:
        """A count query (and its reflection) bounded like a read: no answer within
        `read_stall_timeout` breaks the connection and fails, naming the setting."""
        return watched_call(
            counted, self._answer_seconds(), lambda: self._unanswered("a count query", window)
        )

    def _answer_seconds(self) -> float | None:
        """How long a query outside the streamed read (reflection, a count) may go unanswered:
        the stall timeout, after the connect timeout (which fails on its own first)."""
        stall = self.limits.read_stall_timeout
        return None if stall is None else stall + self.limits.connect_timeout

    def _unanswered(self, what: str, window: PartitionWindow | None) -> SourceError:
        stall, connect = self.limits.read_stall_timeout or 0, self.limits.connect_timeout
        return SourceError(
            f"{self._where(window)}: the source did not answer {what} within {stall + connect:g} "
            f"s (read_stall_timeout {stall:g} s after connect_timeout {connect:g} s); the "
            "connection was closed and nothing was written. If the "
            "source is only slow (counting a table without an index on the partition column), "
            "raise `read_stall_timeout` on the source in the project file; otherwise re-run "
            "the partition once the source answers."
        )

    def changed_days(
        self, change_column: str, since: str | None, zone: str, max_days: int = 100_000
    ) -> tuple[list[datetime.date], str | None]:
        """Days (of the partition column) with rows whose change column is past `since`, and the
        newest change value; one grouped query, bounded."""
        if self.table.partition_column is None:
            return [], None
        with self._connect(None) as connection:
            table = self.reflect(connection)
            for name in (change_column, self.table.partition_column):
                if name not in table.c:
                    raise SourceError(
                        f"{self._where(None)}: column {name} not found for the new-data sensor; "
                        "fix `sensor.change_column` or `partition_column`"
                    )
            change = table.c[change_column]
            newest_query = sa.select(sa.func.max(change))
            if since is not None:
                newest_query = newest_query.where(change > _bound_value(change.type, since))
            try:
                newest = connection.execute(newest_query).scalar()
                if since is None or newest is None:
                    return [], _cursor_text(newest) if since is None else since
                day = _day_expression(
                    table.c[self.table.partition_column], connection.dialect.name, zone
                )
                rows = connection.execute(
                    sa.select(day.label("day"))
                    .where(change > _bound_value(change.type, since))
                    .group_by(day)
                    .order_by(day)
                    .limit(max_days)
                ).all()
            except sa.exc.DBAPIError as error:
                raise SourceError(
                    f"{self._where(None)}: asking for changed days failed: {_first_line(error.orig)}"
                ) from None
        days = [
            row.day
            if isinstance(row.day, datetime.date)
            else datetime.date.fromisoformat(str(row.day)[:10])
            for row in rows
        ]
        return days, _cursor_text(newest)

    def newest_change(self, since: str | None) -> str | None:
        """The highest cursor-column value past `since` (any, when None); None when no row is."""
        name = self.table.cursor_column
        with self._connect(None) as connection:
            table = self.reflect(connection)
            if name is None or name not in table.c:
                raise SourceError(
                    f"{self._where(None)}: cursor column {name} not found; fix `cursor_column`"
                )
            column = table.c[name]
            query = sa.select(sa.func.max(column))
            if since is not None:
                query = query.where(self._changed_since(table, since, connection.dialect.name))
            try:
                newest = connection.execute(query).scalar()
            except sa.exc.DBAPIError as error:
                raise SourceError(
                    f"{self._where(None)}: asking for the newest change failed: "
                    f"{_first_line(error.orig)}"
                ) from None
        text = _cursor_text(newest)
        # `>=` finds the cursor's own row again: only a value past it is a change
        return None if text is None or text == since else text

    def _connect(self, window: PartitionWindow | None) -> sa.Connection:
        try:
            return self.engine.connect()
        except sa.exc.DBAPIError as error:
            raise SourceError(
                f"{self._where(window)}: cannot connect to "
                f"{self.engine.url.render_as_string(hide_password=True)}: "
                f"{_first_line(error.orig)}. Check that the database is up and the "
                "connection settings and credentials in the project file (a server that is "
                f"only slow to answer: raise `connect_timeout`, now "
                f"{self.limits.connect_timeout:g} s)."
            ) from None

    def watched_rows(
        self, query: sa.Select[Any], schema: pa.Schema, booleans: frozenset[str] = frozenset()
    ) -> Iterator[pa.RecordBatch]:
        """`query`'s rows as batches through the row path, under the read stall bound (a query
        a change feed builds itself)."""
        breaker = StallBreaker()
        return watched_batches(
            self._batches(query, schema, None, breaker, booleans),
            self.limits.read_stall_timeout,
            breaker,
            lambda rows: self._stalled(None, rows),
        )

    def _batches(
        self,
        query: sa.Select[Any],
        schema: pa.Schema,
        window: PartitionWindow | None,
        breaker: StallBreaker,
        booleans: frozenset[str] = frozenset(),
    ) -> Iterator[pa.RecordBatch]:
        builders: list[ArrayBuilder] = [array_builder(field.type) for field in schema]
        connection = self._connect(window)
        try:
            breaker.add_connection(connection.connection.dbapi_connection)
            result = connection.execution_options(
                stream_results=True, max_row_buffer=self.batch_size
            ).execute(query)
            for rows in result.partitions(self.batch_size):
                columns = list(zip(*rows, strict=True)) if rows else [()] * len(builders)
                arrays = [
                    self._column_array(build, values, field, window, booleans)
                    for build, values, field in zip(builders, columns, schema, strict=True)
                ]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        except sa.exc.DBAPIError as error:
            reason = _first_line(error.orig)
            if "decode to UTF-8" in reason or "codec can't decode" in reason:
                raise SourceError(
                    f"{self._where(window)}: the source holds text that is not valid UTF-8: "
                    f"{reason}. Nothing was written; repair those rows at the source (or declare "
                    "the column as binary), then re-run the partition."
                ) from None
            self._raise_refused(reason, window)
            raise SourceError(
                f"{self._where(window)}: the source query failed after it started: "
                f"{reason}. {_timeout_hint(reason)}Nothing was written; re-run the partition "
                "once the source is reachable."
            ) from None
        except (OverflowError, ValueError) as error:
            # a driver that cannot turn a value into a Python object (a date past year 9999)
            raise SourceError(
                f"{self._where(window)}: the driver could not read a value: {error}. Nothing was "
                "written; check the source column's values and declared type."
            ) from None
        finally:
            connection.close()


# a sensor's look into a replication slot: at most this many decoded lines per tick
NEWEST_LOGICAL_CHANGES = 100_000


def _as_events(
    batches: pa.RecordBatchReader, lsn: str, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """A whole table's batches as insert events at one LSN."""
    for batch in batches:
        rows = batch.num_rows
        yield pa.RecordBatch.from_arrays(
            [pa.repeat(pa.scalar(lsn), rows), pa.repeat(pa.scalar("insert"), rows), *batch.columns],
            schema=schema,
        )


def _table_feed(dataset: DatasetSpec) -> str | None:
    """The feed of a cdc table read with the table itself (SQL Server CDC and change
    tracking, logical decoding); None otherwise."""
    feed = dataset.cdc if dataset.mode == "cdc" else None
    return feed.feed if feed is not None and feed.reads_the_table else None


def _driver_values(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    """A column whose values SQLAlchemy would alter, selected to come back as the driver gives
    them (the Arrow builders in sources/types.py read those):
    - MySQL's reflected FLOAT/DOUBLE would be Decimals rounded to 10 places (5e-324 read as 0);
    - MySQL's BIT expects bytes, which pyodbc does not give (it gives a bool)."""
    if isinstance(column.type, sa.Float) and column.type.asdecimal:
        return sa.type_coerce(column, sa.Double(asdecimal=False)).label(column.name)
    if isinstance(column.type, mysql.BIT):
        return sa.type_coerce(column, sa.types.NullType()).label(column.name)
    return column


def _cursor_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value.isoformat() if isinstance(value, datetime.date) else str(value)


def _bound_value(column_type: sa.types.TypeEngine[Any], text: str) -> Any:
    """A cursor (ISO text) as a value comparable with the change column."""
    if isinstance(column_type, sa.DateTime):
        return datetime.datetime.fromisoformat(text)
    if isinstance(column_type, sa.Date):
        return datetime.date.fromisoformat(text[:10])
    if isinstance(column_type, sa.Integer):
        return int(text)
    if isinstance(column_type, sa.types._Binary):
        # a rowversion (SQL Server) or another binary counter, kept as hex
        return bytes.fromhex(text)
    if isinstance(column_type, sa.Numeric):
        return decimal.Decimal(text)
    return text


def _day_expression(column: sa.Column[Any], dialect: str, zone: str) -> sa.ColumnElement[Any]:
    """The partition day of a row, computed by the database (days begin in `zone`)."""
    if dialect in ("sqlite", "mysql", "mariadb"):
        # SQLite's CAST(... AS DATE) yields the year alone; date() is the day in both
        return sa.func.date(column)
    if dialect == "postgresql" and getattr(column.type, "timezone", False):
        return sa.cast(sa.func.timezone(zone, column), sa.Date)
    return sa.cast(column, sa.Date)


_SERVER_TIMEOUT = re.compile(
    r"statement timeout|max_statement_time|max_execution_time|query timeout|HYT00", re.IGNORECASE
)


def _timeout_hint(reason: str) -> str:
    """The fix when the server cancelled the query at the source's statement timeout."""
    if not _SERVER_TIMEOUT.search(reason):
        return ""
    return (
        "The server cancelled the query at the source's `statement_timeout`: raise it (or "
        "remove it) on the source in the project file, or split the backfill into smaller "
        "runs (`max_partitions_per_run`). "
    )


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() if error is not None else "unknown error"
    return text.splitlines()[0] if text else type(error).__name__


class SqlSource(Source):
    """A SQL database as a Source: one engine per run (created on first use), one reader per table."""

    def __init__(
        self,
        source_name: str,
        url: sa.URL,
        sqlite_attach: Mapping[str, str] | None = None,
        batch_size: int = 50_000,
        fast_path: bool = True,
        change_column: str | None = None,
        timezone: str = "UTC",
        limits: SessionLimits | None = None,
        start_date: datetime.date | None = None,
        end_date: datetime.date | None = None,
        tinyint1_as_bool: bool = True,
    ) -> None:
        super().__init__(source_name)
        self.tinyint1_as_bool = tinyint1_as_bool
        self.limits = limits or SessionLimits()
        self.start_date = start_date
        self.end_date = end_date
        self.url = url
        self.sqlite_attach = dict(sqlite_attach or {})
        self.batch_size = batch_size
        self.fast_path = fast_path
        self.change_column = change_column
        self.timezone = timezone
        self._engine: sa.Engine | None = None

    @property
    def engine(self) -> sa.Engine:
        """The source's engine, created once."""
        if self._engine is None:
            try:
                self._engine = create_source_engine(self.url, self.sqlite_attach, self.limits)
            except (ImportError, sa.exc.NoSuchModuleError) as error:
                raise DriverNotInstalledError(
                    self.source_name, self.url.drivername, error
                ) from error
        return self._engine

    def reader(self, table: DatasetSpec) -> SqlTableReader:
        """A reader for one of the source's tables."""
        if not isinstance(table, TableSpec):
            raise TypeError(f"a SQL source reads tables, not {type(table).__name__}")
        return SqlTableReader(
            self.engine,
            self.source_name,
            table,
            self.batch_size,
            fast_path=self.fast_path,
            limits=self.limits,
            tinyint1_as_bool=(
                self.tinyint1_as_bool if table.tinyint1_as_bool is None else table.tinyint1_as_bool
            ),
        )

    def read(self, dataset: DatasetSpec, window: PartitionWindow | None) -> SourceStream:
        """The table's window as batches, through COPY, arrow-odbc or rows (`path`)."""
        reader = self.reader(dataset)
        batches = reader.read(window)
        return SourceStream(reader=batches, path=reader.path, source_types=reader.source_types)

    def count(self, dataset: DatasetSpec, window: PartitionWindow | None) -> int:
        """Rows of the table in the window, counted by the database."""
        return self.reader(dataset).count(window)

    def partition_range(self, dataset: DatasetSpec) -> PartitionRange | None:
        """The days the dataset's partitions cover; None for a snapshot table (or no start)."""
        first_day = dataset.start_date or self.start_date
        if dataset.partition_column is None or first_day is None:
            return None
        return PartitionRange(first_day, self.end_date, self.timezone)

    def unreachable_rows(self, dataset: DatasetSpec) -> int | None:
        """Rows no partition reaches (partition column NULL or outside [start, end)); 0 for a
        snapshot table, which reads every row."""
        partitions = self.partition_range(dataset)
        if partitions is None:
            return 0
        return self.reader(dataset).count_unreachable(partitions)

    def read_unreachable(self, dataset: DatasetSpec) -> SourceStream:
        """Exactly the rows `unreachable_rows` counts, as batches (for `<table>_unpartitioned`)."""
        partitions = self.partition_range(dataset)
        reader = self.reader(dataset)
        if partitions is None:
            raise SourceError(
                f"{where(self.source_name, dataset.qualified_name, None)}: the table is a "
                "snapshot (no partition column): every row is read, none is left to quarantine"
            )
        batches = reader.read(None, unreachable=partitions)
        return SourceStream(reader=batches, path=reader.path)

    def read_changes(self, dataset: DatasetSpec, since: str | None) -> SourceStream:
        """The rows whose cursor column is at or past `since` (every row when None); a feed
        read with its table, its events past `since`."""
        feed = _table_feed(dataset)
        if feed == "sqlserver_cdc":
            from ingestion_assets.sources.sqlserver_cdc import read_cdc_changes

            return read_cdc_changes(self, dataset, since)
        if feed == "sqlserver_change_tracking":
            from ingestion_assets.sources.tracking import read_tracked_changes

            return read_tracked_changes(self, dataset, since)
        if feed == "postgres_logical":
            return self._logical_changes(dataset, since)
        reader = self.reader(dataset)
        reader.changes_since = since
        batches = reader.read(None)
        return SourceStream(reader=batches, path=reader.path, source_types=reader.source_types)

    def newest_change(self, dataset: DatasetSpec, since: str | None) -> str | None:
        """The newest cursor value of a merge table (or feed) past `since`; None: no change."""
        feed = _table_feed(dataset)
        if feed == "sqlserver_cdc":
            from ingestion_assets.sources.sqlserver_cdc import newest_cdc_change

            return newest_cdc_change(self, dataset, since)
        if feed == "sqlserver_change_tracking":
            from ingestion_assets.sources.tracking import newest_tracked_change

            return newest_tracked_change(self, dataset, since)
        if feed == "postgres_logical":
            return self._newest_logical_change(dataset, since)
        return self.reader(dataset).newest_change(since)

    def read_keys(self, dataset: DatasetSpec) -> SourceStream:
        """Every row's primary key alone, streamed as the table's reads are (COPY, arrow-odbc,
        ConnectorX or rows)."""
        keys_only = cast(TableSpec, dataset).model_copy(
            update={"columns": tuple(dataset.primary_key)}
        )
        reader = self.reader(keys_only)
        batches = reader.read(None)
        return SourceStream(reader=batches, path=reader.path, source_types=reader.source_types)

    def changes_applied(self, dataset: DatasetSpec, cursor: str) -> None:
        """A replication slot moves past the changes the lake holds now."""
        if _table_feed(dataset) == "postgres_logical":
            with self._logical_connection(dataset) as (connection, slot):
                logical.advance_slot(connection, slot, cursor)

    @contextlib.contextmanager
    def _logical_connection(self, dataset: DatasetSpec) -> Iterator[tuple[sa.Connection, str]]:
        """An AUTOCOMMIT connection to the table's server (a slot is made and moved outside a
        transaction) and the table's slot."""
        table = cast(TableSpec, dataset)
        label = where(self.source_name, table.qualified_name, None)
        dialect = self.engine.dialect.name
        if dialect != "postgresql":
            raise SourceError(
                f"{label}: a postgres_logical feed reads a PostgreSQL server's replication "
                f"slot, and this source is {dialect}; use feed: change_table (a table of events) "
                "or, on SQL Server, sqlserver_cdc or sqlserver_change_tracking"
            )
        assert table.cdc is not None
        slot = table.cdc.slot_name(table.schema_name, table.name)
        with self.engine.connect() as connection:
            try:
                yield connection.execution_options(isolation_level="AUTOCOMMIT"), slot
            except logical.LogicalDecodingError as error:
                raise SourceError(f"{label}: {error}") from None

    def _logical_changes(self, dataset: DatasetSpec, since: str | None) -> SourceStream:
        """The table's events after LSN `since` from its replication slot. The first read
        (`since` None) makes the slot, then reads the table whole as inserts at the slot's
        start: a change made meanwhile is in both, and applied again, later, by its own LSN."""
        table = cast(TableSpec, dataset)
        reader = self.reader(table)
        with self._logical_connection(table) as (connection, slot):
            made = "made" if logical.ensure_slot(connection, slot) else "kept"
            start = connection.execute(
                sa.text(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                    "WHERE slot_name = CAST(:slot AS name)"
                ),
                {"slot": slot},
            ).scalar_one()
            reflected = reader.reflect(connection)
            whole = pa.schema(
                [pa.field(c.name, arrow_type(c.type, "postgresql")) for c in reflected.c]
            )
        wanted = [pa.field(f.name, f.type) for f in reader.arrow_schema(reflected, "postgresql")]
        events = pa.schema(
            [pa.field(logical.LSN, pa.string()), pa.field(logical.OPERATION, pa.string()), *wanted]
        )
        if since is None:
            whole_table = reader.read(None)
            lsn = logical.lsn_text(start)
            return SourceStream(
                reader=pa.RecordBatchReader.from_batches(
                    events, _as_events(whole_table, lsn, events)
                ),
                path=f"{reader.path} (the whole table, at the start of replication slot "
                f"'{slot}', {made} at {start})",
                source_types=reader.source_types,
                position=lsn,
            )
        label = where(self.source_name, table.qualified_name, None)

        def batches() -> Iterator[pa.RecordBatch]:
            with self.engine.connect() as connection:
                try:
                    changes = logical.read_logical_changes(
                        connection,
                        slot,
                        table.schema_name or "public",
                        table.name,
                        whole,
                        since,
                        batch_rows=self.batch_size,
                    )
                    for batch in changes:
                        yield batch.select(events.names)
                except logical.LogicalDecodingError as error:
                    raise SourceError(f"{label}: {error}") from None
                connection.rollback()

        return SourceStream(
            reader=pa.RecordBatchReader.from_batches(events, batches()),
            path=f"replication slot '{slot}'",
            source_types=reader.source_types,
        )

    def _newest_logical_change(self, dataset: DatasetSpec, since: str | None) -> str | None:
        """The LSN of the table's newest event after `since` in the slot's first
        NEWEST_LOGICAL_CHANGES lines (a sensor's tick stays bounded); None: nothing new."""
        if since is None:
            return None
        table = cast(TableSpec, dataset)
        with self._logical_connection(table) as (connection, slot):
            reflected = self.reader(table).reflect(connection)
        whole = pa.schema([pa.field(c.name, arrow_type(c.type, "postgresql")) for c in reflected.c])
        newest: str | None = None
        with self.engine.connect() as connection:
            changes = logical.read_logical_changes(
                connection,
                slot,
                table.schema_name or "public",
                table.name,
                whole,
                since,
                upto_changes=NEWEST_LOGICAL_CHANGES,
            )
            for batch in changes:
                if batch.num_rows:
                    newest = batch.column(logical.LSN)[-1].as_py()
            connection.rollback()
        return newest

    def changed_days(self, dataset: DatasetSpec, since: str | None) -> ChangedDays:
        """Days with rows whose change column (default: the partition column) moved past `since`."""
        column = self.change_column or dataset.partition_column or ""
        days, newest = self.reader(dataset).changed_days(column, since, self.timezone)
        return ChangedDays(days, newest)

    @classmethod
    def declared_columns(cls, dataset: DatasetSpec) -> list[DeclaredColumn]:
        """The listed columns, the key and the partition column; their types are known once a
        run reflects the table."""
        listed = dataset.columns if isinstance(dataset, TableSpec) else None
        named = [*(listed or ()), *dataset.primary_key, *filter(None, [dataset.partition_column])]
        return [
            DeclaredColumn(name, source_type="reflected in each run")
            for name in dict.fromkeys(named)
        ]

    def close(self) -> None:
        """Close the engine's connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def verify(self, dataset: DatasetSpec, window: PartitionWindow | None = None) -> list[Finding]:
        """The table, its schema and every column the project file names (partition, key, change
        and listed columns) looked up in the database, with the closest names when one is not
        there; then the read's own query with `LIMIT 1`. Nothing is counted, no window scanned."""
        if not isinstance(dataset, TableSpec):
            raise TypeError(f"a SQL source reads tables, not {type(dataset).__name__}")
        name = dataset.qualified_name
        try:
            engine = self.engine
        except DriverNotInstalledError as error:
            return [
                Finding(self.source_name, None, error.problem, error.fix, source_key="connection")
            ]
        reader = self.reader(dataset)

        def checked(breaker: StallBreaker) -> list[Finding]:
            try:
                connection = engine.connect()
            except sa.exc.DBAPIError as error:
                return [
                    Finding(
                        self.source_name,
                        None,
                        f"cannot connect to {engine.url.render_as_string(hide_password=True)}: "
                        f"{_first_line(error.orig)}",
                        "check that the database is up, and the connection settings and "
                        "credentials",
                        source_key="connection",
                    )
                ]
            with connection:
                breaker.add_connection(connection.connection.dbapi_connection)
                return _table_findings(connection, reader, self.change_column)

        stall, connect = self.limits.read_stall_timeout, self.limits.connect_timeout
        seconds = None if stall is None else stall + connect
        try:
            return watched_call(checked, seconds, lambda: TimeoutError(seconds))
        except TimeoutError:
            return [
                Finding(
                    self.source_name,
                    None,
                    f"the database did not answer looking up {name} within {seconds:g} s "
                    f"(read_stall_timeout {stall:g} s after connect_timeout {connect:g} s); "
                    "the connection was closed",
                    "check that the database answers; if it is only slow, raise "
                    "`read_stall_timeout`",
                    source_key="read_stall_timeout",
                )
            ]


def _table_findings(
    connection: sa.Connection, reader: SqlTableReader, change_column: str | None
) -> list[Finding]:
    """The declared schema, table and columns looked up in the database (reflection), then the
    read's query of no window with LIMIT 1."""
    spec = reader.table
    name, schema = spec.name, spec.schema_name

    def finding(problem: str, fix: str, key: str | None = None, **extra: Any) -> Finding:
        return Finding(reader.source_name, spec.qualified_name, problem, fix, key, **extra)

    inspector = sa.inspect(connection)
    try:
        if schema is not None:
            schemas = inspector.get_schema_names()
            if schema not in schemas and not inspector.has_table(name, schema=schema):
                return [
                    finding(
                        f"there is no schema '{schema}' at the source",
                        did_you_mean("schema", schema, schemas, "schemas"),
                        "schema",
                    )
                ]
        if not inspector.has_table(name, schema=schema):
            existing = inspector.get_table_names(schema=schema) + inspector.get_view_names(
                schema=schema
            )
            return [
                finding(
                    f"there is no table or view '{name}' in schema '{schema or 'default'}'",
                    did_you_mean(
                        "name", name, existing, f"tables or views in schema '{schema or 'default'}'"
                    ),
                    "name",
                )
            ]
        table = reader.reflect(connection)
    except sa.exc.DBAPIError as error:
        return [
            finding(
                f"reading the table's columns failed: {_first_line(error.orig)}",
                "check `schema`/`name` and the user's rights",
            )
        ]
    columns = [column.name for column in table.c]
    # (column, the key that names it); the change column is a key of the source
    declared = [
        *([(spec.partition_column, "partition_column")] if spec.partition_column else []),
        *[(column, "primary_key") for column in spec.primary_key],
        *[(column, "columns") for column in spec.columns or ()],
        *([(change_column, "sensor.change_column")] if change_column else []),
    ]
    findings = [
        finding(
            f"'{column}' ({key}) is not a column of the table",
            did_you_mean(key, column, columns, "table's columns"),
            **({"source_key": key} if key.startswith("sensor.") else {"key": key}),
        )
        for column, key in dict.fromkeys(declared)
        if column not in table.c
    ]
    partition = spec.partition_column
    if partition and partition in table.c:
        findings += _partition_type_findings(table.c[partition], connection.dialect, finding)
    if any(item.severity == "error" for item in findings):
        return findings
    try:
        selected = reader._selected_columns(table)
        expressions = reader._select_expressions(connection, table, selected)
        connection.execute(reader._query(table, expressions, None, None).limit(1)).first()
    except sa.exc.DBAPIError as error:
        return [
            *findings,
            finding(
                f"reading a row failed: {_first_line(error.orig)}",
                "grant the user SELECT on the table, or fix the column types it cannot read",
            ),
        ]
    except (SourceError, OverflowError, ValueError) as error:
        return [*findings, finding(f"reading a row failed: {error}", "check the column types")]
    shown = f"; partition column {partition}" if partition else "; a snapshot (read whole)"
    return [*findings, finding(f"{len(columns)} columns{shown}", "", severity="note")]


def _partition_type_findings(
    column: sa.Column[Any], dialect: sa.Dialect, finding: Callable[..., Finding]
) -> list[Finding]:
    """A partition column that holds no dates: the windows cannot compare it as one."""
    kind = column.type
    if isinstance(kind, sa.Date | sa.DateTime | sa.types.NullType):
        return []
    try:
        shown = str(kind.compile(dialect=dialect))
    except sa.exc.CompileError:
        shown = type(kind).__name__
    # SQLite compares text dates as text: a window works if the text is written as ISO dates
    text_dates = dialect.name == "sqlite" and isinstance(kind, sa.String)
    return [
        finding(
            f"partition_column '{column.name}' is {shown}, not a date or timestamp",
            "partition by a DATE or TIMESTAMP column (or read a view that casts it), or leave "
            "partition_column out to read the table whole",
            key="partition_column",
            severity="warning" if text_dates else "error",
        )
    ]
