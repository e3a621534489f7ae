"""ODBC fast path: bulk fetches through arrow-odbc, straight into Arrow arrays of the declared types.

pyodbc builds a Python object per value; arrow-odbc binds column buffers and lets the driver fill
thousands of rows per call, converting nothing in Python (about 7x pyodbc's rate through psqlODBC in
`bench/`). It is used only where it is exact by construction:

- the columns' Arrow types are given to arrow-odbc (never inferred), and each is one it fetches
  exactly: signed integers and uint8, floats, decimal128, text and binary of a declared length, bool,
  date, and timestamps without a zone at microsecond precision or coarser;
- no unbounded text or binary (`nvarchar(max)`, `text`, ...): a bulk buffer needs a size, and a value
  longer than it would stop the read; such tables keep pyodbc, which reads any length;
- no zone-aware timestamps, times or 100 ns timestamps (SQL Server's `datetimeoffset`, `time(7)`,
  `datetime2(7)`): pyodbc's converters in sources/sql.py keep those exact;
- an ASCII statement: arrow-odbc sends the statement text in the client's narrow encoding.

Text comes back as UTF-16 whatever the client's locale, so non-ASCII values survive in a container
without a UTF-8 locale, and a value that would not fit its buffer is an error, never cut short.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# the transit buffer of one fetch (arrow-odbc fetches the next one concurrently, so twice this)
MAX_BYTES_PER_FETCH = 32 << 20
# a declared length above this is treated like an unbounded one (buffer of rows x this)
MAX_BOUNDED_BYTES = 8000


def _bounded(column_type: sa.types.TypeEngine[Any]) -> bool:
    length = getattr(column_type, "length", None)
    return isinstance(length, int) and 0 < length <= MAX_BOUNDED_BYTES


def _exact(field: pa.Field, column_type: sa.types.TypeEngine[Any]) -> bool:
    arrow = field.type
    if isinstance(column_type, mysql.BIT):
        # MariaDB's driver answers a bulk fetch of BIT as a bit with NULLs (tested)
        return False
    if pa.types.is_string(arrow):
        # a declared length, or a type whose text form is short (uuid, numbers, dates)
        if isinstance(column_type, sa.String | sa.types._Binary):
            return _bounded(column_type)
        return isinstance(column_type, sa.Uuid | sa.Integer)
    if pa.types.is_binary(arrow):
        return _bounded(column_type)
    if pa.types.is_timestamp(arrow):
        return bool(arrow.tz is None and arrow.unit in ("s", "ms", "us"))
    if pa.types.is_integer(arrow):
        return bool(pa.types.is_signed_integer(arrow) or pa.types.is_uint8(arrow))
    return any(
        test(arrow) for test in (pa.types.is_floating, pa.types.is_decimal128, pa.types.is_boolean)
    ) or bool(pa.types.is_date32(arrow))


def odbc_supported(schema: pa.Schema, column_types: Sequence[sa.types.TypeEngine[Any]]) -> bool:
    """Whether every selected column is one arrow-odbc fetches exactly (see the module's notes)."""
    return all(
        _exact(field, column_type) for field, column_type in zip(schema, column_types, strict=True)
    )


def odbc_connection_string(engine: sa.Engine) -> str:
    """The ODBC connection string a pyodbc engine connects with (password included)."""
    arguments, _options = engine.dialect.create_connect_args(engine.url)
    return str(arguments[0])


def _parameter_text(value: Any) -> str | None:
    """A bound value as the text arrow-odbc sends (it binds every parameter as VARCHAR)."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        # ISO 8601 with a T reads the same whatever the server's date format setting; no
        # fraction for whole seconds (SQL Server's datetime refuses text with 4+ digits)
        return value.isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


def odbc_statement(query: sa.Select[Any], dialect: sa.Dialect) -> tuple[str, list[str | None]]:
    """The query as the dialect prints it, with `?` markers and its values as text."""
    compiled = query.compile(dialect=dialect)
    params = compiled.construct_params()
    if compiled.positiontup is None:
        raise ValueError(f"the {dialect.name} dialect does not bind positionally")
    return str(compiled), [_parameter_text(params[name]) for name in compiled.positiontup]


def ascii_statement(statement: str) -> bool:
    """arrow-odbc sends the statement in the client's narrow encoding: ASCII is safe anywhere."""
    return statement.isascii()


def odbc_batches(
    connection_string: str,
    statement: str,
    parameters: list[str | None],
    schema: pa.Schema,
    batch_size: int,
    login_timeout: int | None = None,
    query_timeout: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """Run the statement and yield its rows as batches of exactly `schema` (timeouts in whole
    seconds: the ODBC login timeout and the driver's query timeout, None for the driver's)."""
    # imported here: a project without ODBC sources never loads the driver manager
    from arrow_odbc import TextEncoding, read_arrow_batches_from_odbc

    reader = read_arrow_batches_from_odbc(
        statement,
        connection_string=connection_string,
        batch_size=batch_size,
        parameters=parameters,
        max_bytes_per_batch=MAX_BYTES_PER_FETCH,
        schema=schema,
        payload_text_encoding=TextEncoding.UTF16,
        login_timeout_sec=login_timeout,
        query_timeout_sec=query_timeout,
    )
    for batch in reader:
        # arrow-odbc marks every field nullable; the declared schema carries NOT NULL
        yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)


_SECRET_ATTRIBUTE = re.compile(r"(?i)\b(PWD|Password)=(\{[^}]*\}|[^;]*)")


def redact_connection_string(text: str, connection_string: str) -> str:
    """Text with the connection string's password replaced, wherever a driver echoed it."""
    for match in _SECRET_ATTRIBUTE.finditer(connection_string):
        secret = match.group(2)
        if secret:
            text = text.replace(secret, "***")
            if secret.startswith("{"):
                text = text.replace(secret[1:-1], "***")
    return text
