"""MySQL/MariaDB and SQLite fast paths: the window read into Arrow columns by a native driver.

Rows through SQLAlchemy (PyMySQL, sqlite3) build a Python object per value: 85-90k rows/s on the
benchmark's SalesOrderDetail. Measured on 200,000 of those rows (2-core machine): ConnectorX
reads MariaDB into Arrow at ~490k rows/s; for SQLite, the ADBC driver reads ~600k rows/s, and
ConnectorX refuses a column that mixes INTEGER and REAL storage (the demo's decimals do). No ADBC
MySQL driver is on PyPI. So MySQL/MariaDB take ConnectorX (the `mysql` extra: its wheel is
large), SQLite takes `adbc-driver-sqlite` (small; the demo's source). With the casts below, on
2,000,000 rows (bench/, `project-extract-mysql|sqlite` against `driver-mysql|sqlite`): MariaDB
436k rows/s (0.60 of ConnectorX's own 732k), SQLite 525k rows/s (0.65 of ADBC's own 808k).

Neither driver knows the declared types, so both are told nothing and their columns are cast to
the schema built from the declared types (sources/types.py), exactly or not at all:

- MySQL: decimals are selected as text (`CAST(col AS CHAR)`; ConnectorX would give
  decimal(38,10) and panics on a DECIMAL(38,6) of 32 integer digits) and parsed by Arrow to the
  last digit; TINYINT(1) arrives as int8 and is checked to be 0/1 as the row path does. Columns
  whose driver value differs from the row path's (JSON, SET, TIME, YEAR, BIT, types SQLAlchemy
  does not know) keep the table on the row path. ConnectorX's streaming reader holds the GIL
  while it waits for the server (a stalled server would freeze the watchdog), its whole-result
  read releases it: so a window is read whole, or in chunks of whole days of about `CHUNK_ROWS`
  rows each by the server's estimate (`EXPLAIN`, nothing run), which bounds memory. Chunks cost:
  a server that scans the table for a range scans it once per chunk (2,000,000 rows: 4.0 s in
  one query, 5.5 s in two, 14 s in eleven of 200,000), hence few and large. A read without a
  window (a snapshot, the unreachable rows) has nothing to cut it by and keeps the row path.
  ConnectorX binds no parameters: the window's bounds (datetimes the project made) are rendered
  as literals. Each query carries a tag, so a stall or a cancel kills it with `KILL QUERY` from
  another connection; the statement timeout is a `SET STATEMENT max_statement_time` (MariaDB) or
  a `MAX_EXECUTION_TIME` hint (MySQL) of the query itself.
- SQLite stores any value in any column; ADBC infers each column's type from its first batch and
  fails on a later value of another kind (where the row path fails too: text in an INTEGER
  column), or reads it differently. So the select list turns what ADBC would read differently
  into the row path's value in SQLite itself (a BLOB in a text column into its hex digits, a
  boolean into Python's truth of the value), and a sentinel row of the right storage classes
  leads the result so that the inference never sees an all-NULL first batch. REAL decimals are
  rounded as the row path rounds them (`"%.{scale}f"`, half to even on the binary value), in
  Arrow; the few values within a rounding error of a tie, and text timestamps not in SQLite's
  own form, are converted for that batch by the row path's own converters, so the result is the
  row path's to the last digit.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import re
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from ingestion_assets.sources.cancel import on_cancel
from ingestion_assets.sources.types import array_builder

logger = logging.getLogger(__name__)

# rows one MySQL query of a window aims at, by the server's estimate (its result is held whole
# in memory as Arrow: about 125 MB for the benchmark's SalesOrderDetail)
CHUNK_ROWS = 1_000_000
_ONE_DAY = datetime.timedelta(days=1)
_LOGGED: set[tuple[str, str, str]] = set()
_LOGGED_LOCK = threading.Lock()


def log_fallback_once(source: str, table: str, reason: str) -> None:
    """Say once per process why a table reads row by row although a fast path exists."""
    key = (source, table, reason)
    with _LOGGED_LOCK:
        if key in _LOGGED:
            return
        _LOGGED.add(key)
    logger.warning("source '%s', table %s: read row by row: %s", source, table, reason)


# -- which tables -----------------------------------------------------------------------------


def _mysql_column_reason(field: pa.Field, column_type: sa.types.TypeEngine[Any]) -> str | None:
    arrow = field.type
    if isinstance(column_type, sa.JSON | mysql.SET | mysql.BIT | mysql.YEAR | sa.Time):
        return (
            f"column {field.name} ({type(column_type).__name__}) is read as the row path reads it"
        )
    if isinstance(column_type, sa.types.NullType):
        return f"column {field.name} has a type SQLAlchemy does not know"
    if pa.types.is_decimal(arrow):
        return None
    if any(
        test(arrow)
        for test in (
            pa.types.is_integer,
            pa.types.is_floating,
            pa.types.is_string,
            pa.types.is_binary,
            pa.types.is_boolean,
            pa.types.is_date32,
        )
    ):
        return None
    if pa.types.is_timestamp(arrow) and arrow.tz is None:
        return None
    return f"column {field.name} ({arrow}) has no exact columnar reading"


def _sqlite_column_reason(field: pa.Field, column_type: sa.types.TypeEngine[Any]) -> str | None:
    arrow = field.type
    if isinstance(column_type, sa.JSON | sa.Time | sa.Interval | sa.types.NullType):
        return (
            f"column {field.name} ({type(column_type).__name__}) is read as the row path reads it"
        )
    if pa.types.is_decimal(arrow) and arrow.scale > 15:
        return f"column {field.name}: a REAL has no {arrow.scale} decimal places to round to"
    if pa.types.is_string(arrow) and isinstance(column_type, sa.Numeric):
        return f"column {field.name} is a NUMERIC without a scale, printed by the row path"
    if pa.types.is_timestamp(arrow) and (arrow.tz is not None or arrow.unit != "us"):
        return f"column {field.name} ({arrow}) has no exact columnar reading"
    if any(
        test(arrow)
        for test in (
            pa.types.is_integer,
            pa.types.is_float64,
            pa.types.is_decimal,
            pa.types.is_string,
            pa.types.is_binary,
            pa.types.is_boolean,
            pa.types.is_date32,
            pa.types.is_timestamp,
        )
    ):
        return None
    return f"column {field.name} ({arrow}) has no exact columnar reading"


def columnar_reason(
    dialect: str,
    url: sa.URL,
    schema: pa.Schema,
    column_types: Sequence[sa.types.TypeEngine[Any]],
    windowed: bool,
) -> str | None:
    """Why the table cannot take the columnar path (None: it can)."""
    if dialect in ("mysql", "mariadb"):
        if not windowed:
            return "a read without a window has no column to cut into bounded chunks"
        options = sorted(set(url.query) - {"charset"})
        if options:
            # TLS settings among them: never dropped on the way to another driver
            return f"the URL's options ({', '.join(options)}) are not carried over to ConnectorX"
        try:
            import connectorx  # noqa: F401
        except ImportError:
            return "ConnectorX is not installed (the `mysql` extra)"
        check = _mysql_column_reason
    elif dialect == "sqlite":
        if url.database in (None, "", ":memory:") or url.database.startswith("file:"):
            return "an in-memory (or URI) SQLite database is not shared with another driver"
        try:
            import adbc_driver_sqlite  # noqa: F401
        except ImportError:
            return "adbc-driver-sqlite is not installed"
        check = _sqlite_column_reason
    else:
        return f"no columnar driver for {dialect}"
    for field, column_type in zip(schema, column_types, strict=True):
        reason = check(field, column_type)
        if reason is not None:
            return reason
    return None


# -- MySQL / MariaDB through ConnectorX ------------------------------------------------------


def connectorx_url(url: sa.URL) -> str:
    """The `mysql://` URL ConnectorX connects with, from the source's URL (password included)."""
    user = urllib.parse.quote(url.username or "", safe="")
    password = urllib.parse.quote(url.password or "", safe="") if url.password else ""
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = url.host or "localhost"
    port = f":{url.port}" if url.port else ""
    database = urllib.parse.quote(url.database or "", safe="")
    # the driver would otherwise move a connection to 127.0.0.1 onto the server's unix socket,
    # past whatever the URL names (a proxy, a tunnel)
    return f"mysql://{credentials}{host}{port}/{database}?prefer_socket=false"


def mysql_select_columns(
    expressions: Sequence[sa.ColumnElement[Any]], schema: pa.Schema
) -> list[sa.ColumnElement[Any]]:
    """Decimals as the server prints them (every digit), the rest as they are."""
    return [
        sa.cast(expression, sa.CHAR()).label(field.name)
        if pa.types.is_decimal(field.type)
        else expression
        for expression, field in zip(expressions, schema, strict=True)
    ]


def _unescaped_dialect(dialect: sa.Dialect) -> sa.Dialect:
    """The source's MySQL dialect printing `%` as it is: PyMySQL's format paramstyle doubles it
    (in quoted names too), and ConnectorX sends the text as printed."""
    plain = mysql.pymysql.dialect(paramstyle="named")
    for attribute in ("server_version_info", "is_mariadb", "_backslash_escapes"):
        if hasattr(dialect, attribute):
            setattr(plain, attribute, getattr(dialect, attribute))
    return plain


def mysql_statement(
    query: sa.Select[Any],
    dialect: sa.Dialect,
    tag: str,
    statement_timeout: float | None,
    mariadb: bool,
) -> str:
    """The query with its bounds as literals, tagged, and with the statement timeout in it."""
    text = str(
        query.compile(dialect=_unescaped_dialect(dialect), compile_kwargs={"literal_binds": True})
    )
    if not text.startswith("SELECT "):
        raise ValueError("the window query does not begin with SELECT")
    hint = ""
    if statement_timeout is not None and not mariadb:
        hint = f"/*+ MAX_EXECUTION_TIME({max(1, round(statement_timeout * 1000))}) */ "
    text = f"SELECT {hint}/* {tag} */ {text[len('SELECT ') :]}"
    if statement_timeout is not None and mariadb:
        text = f"SET STATEMENT max_statement_time={statement_timeout:.3f} FOR {text}"
    return text


def new_tag() -> str:
    """A mark that finds the read's query in the server's process list."""
    return f"ingest-read-{uuid.uuid4().hex}"


def kill_tagged(engine: sa.Engine, tag: str) -> None:
    """Kill the server's queries that carry `tag` (from any thread)."""
    with engine.connect() as connection:
        ids = connection.execute(
            sa.text(
                "SELECT ID FROM information_schema.PROCESSLIST "
                "WHERE INFO LIKE :pattern AND ID <> CONNECTION_ID()"
            ),
            {"pattern": f"%{tag}%"},
        ).scalars()
        for process_id in list(ids):
            connection.execute(sa.text(f"KILL QUERY {int(process_id)}"))


def chunk_span(window_span: datetime.timedelta, estimated_rows: int | None) -> datetime.timedelta:
    """The span of whole days each query of a window covers: about `CHUNK_ROWS` rows by the
    server's estimate (the whole window when it has no more, or no estimate)."""
    if not estimated_rows or estimated_rows <= CHUNK_ROWS:
        return window_span
    chunks = math.ceil(estimated_rows / CHUNK_ROWS)
    days = math.ceil(window_span / _ONE_DAY / chunks)
    return min(window_span, _ONE_DAY * max(1, days))


def connectorx_table(url_text: str, statement: str) -> pa.Table:
    """One statement read whole by ConnectorX (which releases the GIL while it reads)."""
    import connectorx

    table: pa.Table = connectorx.read_sql(url_text, statement, return_type="arrow")
    return table


def conform_mysql(
    table: pa.Table,
    schema: pa.Schema,
    convert_boolean: Callable[[pa.Array, pa.Field], pa.Array],
) -> pa.Table:
    """ConnectorX's columns cast exactly to the declared schema (decimals parsed from text),
    chunk by chunk: no column is copied whole."""
    columns = []
    for name, field in zip(table.column_names, schema, strict=True):
        column = table.column(name)
        if column.type == field.type:
            columns.append(column)
        elif pa.types.is_boolean(field.type) and pa.types.is_integer(column.type):
            columns.append(
                pa.chunked_array(
                    [convert_boolean(chunk, field) for chunk in column.chunks], pa.bool_()
                )
            )
        elif pa.types.is_null(column.type):
            columns.append(pa.nulls(len(column), field.type))
        else:
            columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


_SECRET_IN_URL = re.compile(r"mysql://[^\s'\"]*")


def redacted(text: str, password: str | None) -> str:
    """A driver's message without the password, nor a URL that could carry it."""
    if password:
        text = text.replace(password, "***").replace(urllib.parse.quote(password, safe=""), "***")
    return _SECRET_IN_URL.sub("mysql://***", text)


def is_driver_panic(error: BaseException) -> bool:
    """A Rust panic (pyo3's PanicException) raised through Python."""
    return type(error).__name__ == "PanicException"


# -- SQLite through ADBC ---------------------------------------------------------------------

# the storage classes that the fast path reads as the row path does, per Arrow type
_SENTINEL_COLUMN = "_ingest_sentinel"


def sqlite_classes(arrow: pa.DataType) -> tuple[str, ...]:
    """The SQLite storage classes (besides NULL) a column of this Arrow type may hold here."""
    if pa.types.is_float64(arrow) or pa.types.is_decimal(arrow):
        return ("real", "integer")
    if pa.types.is_integer(arrow) or pa.types.is_boolean(arrow):
        return ("integer",)
    if pa.types.is_binary(arrow):
        return ("blob",)
    return ("text",)


def _constant(text: str) -> sa.ColumnElement[Any]:
    """A string constant written into the statement (the text is this module's, never data's):
    the statement keeps the window's bounds as its only parameters."""
    return sa.literal_column("'" + text.replace("'", "''") + "'")


def sqlite_select_columns(
    expressions: Sequence[sa.ColumnElement[Any]], schema: pa.Schema
) -> list[sa.ColumnElement[Any]]:
    """The select list for ADBC: values of a storage class that ADBC would read differently
    from the row path turned, in SQLite, into what the row path makes of them. A BLOB in a text
    column is its hex digits (ADBC would decode the bytes as text); a boolean is Python's
    truth of the value (ADBC would fail on text or REAL in an INTEGER column)."""
    selected: list[sa.ColumnElement[Any]] = []
    for expression, field in zip(expressions, schema, strict=True):
        kind = sa.func.typeof(expression)
        if pa.types.is_string(field.type):
            value: sa.ColumnElement[Any] = sa.case(
                (kind == _constant("blob"), sa.func.lower(sa.func.hex(expression))),
                else_=expression,
            )
        elif pa.types.is_boolean(field.type):
            value = sa.case(
                (sa.or_(kind == _constant("integer"), kind == _constant("null")), expression),
                (kind == _constant("real"), expression != sa.literal_column("0.0")),
                (kind == _constant("text"), expression != _constant("")),
                else_=sa.func.length(expression) > sa.literal_column("0"),
            )
        else:
            selected.append(expression)
            continue
        selected.append(value.label(field.name))
    return selected


def _sentinel_value(arrow: pa.DataType) -> sa.ColumnElement[Any]:
    classes = sqlite_classes(arrow)
    if classes[0] == "real":
        return sa.literal_column("0.0")
    if classes[0] == "integer":
        return sa.literal_column("0")
    if classes[0] == "blob":
        return sa.literal_column("x''")
    return sa.literal_column("''")


def sqlite_statement(
    query: sa.Select[Any], schema: pa.Schema, dialect: sa.Dialect
) -> tuple[str, list[Any]]:
    """`SELECT <a row of each column's class> UNION ALL <the query>` with a marker column, as
    ADBC's statement text and its positional values."""
    marked = query.add_columns(sa.literal_column("0").label(_SENTINEL_COLUMN))
    sentinel = sa.select(
        *[_sentinel_value(field.type).label(field.name) for field in schema],
        sa.literal_column("1").label(_SENTINEL_COLUMN),
    )
    compiled = sa.union_all(sentinel, marked).compile(dialect=dialect)
    params = compiled.construct_params()
    if compiled.positiontup is None:
        raise ValueError("the sqlite dialect does not bind positionally")
    return str(compiled), [params[name] for name in compiled.positiontup]


_COLUMN_INDEX = re.compile(r"in column (\d+)")


def named_columns(text: str, schema: pa.Schema) -> str:
    """ADBC's message with the column's name for its index ("Type mismatch in column 3")."""
    match = _COLUMN_INDEX.search(text)
    if match is None or int(match.group(1)) >= len(schema):
        return text
    return text.replace(match.group(0), f"in column {schema.field(int(match.group(1))).name}")


def sqlite_attachments(dbapi_connection: Any) -> dict[str, str]:
    """The attached databases of a sqlite3 connection, name -> file (main and temp left out)."""
    rows = dbapi_connection.execute("PRAGMA database_list").fetchall()
    return {str(row[1]): str(row[2]) for row in rows if row[1] not in ("main", "temp") and row[2]}


def adbc_batches(
    path: str,
    attachments: dict[str, str],
    statement: str,
    parameters: list[Any],
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """The statement's batches from ADBC, the sentinel row dropped, marker column removed."""
    import adbc_driver_sqlite.dbapi as adbc_sqlite

    connection = adbc_sqlite.connect(path)
    cancelled = threading.Event()
    try:
        cursor = connection.cursor()
        # wait for a writer's lock as sqlite3 does (5 s) rather than fail at once
        cursor.execute("PRAGMA busy_timeout = 5000")
        cursor.fetchall()
        for schema_name, file in attachments.items():
            cursor.execute('ATTACH DATABASE ? AS "' + schema_name.replace('"', '""') + '"', (file,))

        def cancel() -> None:
            cancelled.set()
            with contextlib.suppress(Exception):
                cursor.adbc_cancel()

        # ADBC's default of 1,024 rows a batch costs more per batch than the rows do
        cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
        with on_cancel(cancel):
            cursor.execute(statement, parameters or None)
            reader = cursor.fetch_record_batch()
            for batch in reader:
                if cancelled.is_set():
                    raise InterruptedError("the read was cancelled")
                marker = batch.column(batch.num_columns - 1)
                kept = batch.drop_columns([_SENTINEL_COLUMN])
                if pc.any(pc.not_equal(marker, 0)).as_py():
                    kept = kept.filter(pc.equal(marker, 0))
                if kept.num_rows:
                    yield kept
        cursor.close()
    finally:
        connection.close()


_SQLITE_DATETIME = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{6})?$"
_SQLITE_DATE = r"^\d{4}-\d{2}-\d{2}$"
_EXACT_LIMIT = float(2**52)


def _rounded_decimal(values: pa.Array, arrow: pa.DataType) -> pa.Array | None:
    """REAL values rounded to the decimal's scale as `"%.{scale}f"` rounds them (half to even
    on the exact binary value); None when a value is within a rounding error of a tie, too
    large to decide, or not finite (the caller then takes the row path's conversion)."""
    doubles = values.cast(pa.float64())
    scaled = pc.multiply(doubles, 10.0**arrow.scale)
    rounded = pc.round(scaled, ndigits=0, round_mode="half_to_even")
    distance = pc.abs(pc.subtract(pc.abs(pc.subtract(scaled, rounded)), 0.5))
    # the product's own rounding error is at most |scaled| * 2^-53: decided when the tie is
    # farther away than twice that, and every integer below 2^52 is exact in a double
    margin = pc.multiply(pc.abs(scaled), 2.0**-51)
    undecided = pc.or_(
        pc.less_equal(distance, margin),
        pc.or_(pc.greater_equal(pc.abs(scaled), _EXACT_LIMIT), pc.invert(pc.is_finite(scaled))),
    )
    if pc.any(undecided).as_py():
        return None
    units = rounded.cast(pa.int64())
    wide = pa.decimal128(38, 0) if arrow.bit_width == 128 else pa.decimal256(76, 0)
    unscaled = units.cast(wide)
    scaled_type = (
        pa.decimal128(38, arrow.scale) if arrow.bit_width == 128 else pa.decimal256(76, arrow.scale)
    )
    try:
        return unscaled.view(scaled_type).cast(arrow)
    except pa.ArrowInvalid:
        # more digits than the column holds: the row path's conversion says so
        return None


class NotUtf8Error(Exception):
    """A SQLite TEXT value that is not valid UTF-8 (the message names the column, as sqlite3's
    does on the row path)."""

    def __init__(self, column: str) -> None:
        super().__init__(f"Could not decode to UTF-8 column '{column}'")


def sqlite_array(
    values: pa.Array, field: pa.Field, row_path: Callable[[list[Any]], pa.Array]
) -> pa.Array:
    """One ADBC column as the declared type, exactly as the row path makes it; what cannot be
    decided in Arrow goes through `row_path` (the row path's converters) for this batch."""
    arrow = field.type
    if values.null_count == len(values):
        return pa.nulls(len(values), arrow)
    if pa.types.is_string(values.type):
        # SQLite hands over a TEXT value's bytes as they are stored, valid UTF-8 or not
        try:
            values.validate(full=True)
        except pa.ArrowInvalid:
            raise NotUtf8Error(field.name) from None
    if values.type == arrow:
        return values
    converted: pa.Array | None = None
    if pa.types.is_decimal(arrow) and (
        pa.types.is_floating(values.type) or pa.types.is_integer(values.type)
    ):
        converted = _rounded_decimal(values, arrow)
    elif pa.types.is_boolean(arrow) and pa.types.is_integer(values.type):
        converted = pc.not_equal(values, 0)
    elif pa.types.is_float64(arrow) and pa.types.is_integer(values.type):
        converted = values.cast(pa.float64())
    elif pa.types.is_integer(arrow) and pa.types.is_integer(values.type):
        with contextlib.suppress(pa.ArrowInvalid):
            converted = values.cast(arrow)
    elif pa.types.is_timestamp(arrow) and pa.types.is_string(values.type):
        if pc.all(pc.match_substring_regex(values, _SQLITE_DATETIME)).as_py():
            converted = values.cast(arrow)
    elif pa.types.is_date32(arrow) and pa.types.is_string(values.type):
        if pc.all(pc.match_substring_regex(values, _SQLITE_DATE)).as_py():
            converted = values.cast(arrow)
    elif pa.types.is_binary(arrow) and pa.types.is_binary(values.type):
        converted = values.cast(arrow)
    if converted is not None:
        return converted
    return row_path(values.to_pylist())


def sqlite_builder(
    field: pa.Field, row_path: Callable[[list[Any]], pa.Array]
) -> Callable[[Sequence[Any]], pa.Array]:
    """`sqlite_array` for one column, as the reader's array builders are called."""
    return lambda values: sqlite_array(values, field, row_path)


def row_converter(
    column_type: sa.types.TypeEngine[Any], dialect: sa.Dialect, arrow: pa.DataType
) -> Callable[[list[Any]], pa.Array]:
    """The row path's conversion of one column's driver values: SQLAlchemy's result processor,
    then the Arrow builder (sources/types.py)."""
    # the dialect's own type: a reflected generic DATETIME parses SQLite's text only there
    processor = column_type.dialect_impl(dialect).result_processor(dialect, None)
    build = array_builder(arrow)

    def convert(values: list[Any]) -> pa.Array:
        if processor is not None:
            values = [processor(value) for value in values]
        return build(values)

    return convert
