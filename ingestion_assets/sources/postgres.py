"""PostgreSQL fast path: `COPY (SELECT ...) TO STDOUT` as CSV, parsed into Arrow by Arrow's CSV reader.

The database writes text in a thread, through a pipe, while Arrow's multi-threaded C++ parser turns it
into record batches of the exact declared types (decimals to the last digit, timestamps, text): no
Python object per value, and reading overlaps with whatever consumes the batches.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa

# Arrow types the CSV reader parses exactly from PostgreSQL's text output
_PARSEABLE = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_decimal,
    pa.types.is_string,
    pa.types.is_boolean,
    pa.types.is_date32,
    pa.types.is_timestamp,
)
# bytes of CSV text per parsed block: bounds memory while keeping the parser busy
MIN_BLOCK_BYTES = 1 << 20
MAX_BLOCK_BYTES = 4 << 20
BYTES_PER_ROW_GUESS = 160


def copy_supported(schema: pa.Schema) -> bool:
    """Whether every column's type comes out of PostgreSQL's CSV text exactly."""
    return all(any(test(field.type) for test in _PARSEABLE) for field in schema)


def copy_columns(
    columns: list[sa.ColumnElement[Any]], schema: pa.Schema
) -> list[sa.ColumnElement[Any]]:
    """Select-list expressions for COPY: zone-aware timestamps as UTC wall time (parsed as UTC)."""
    expressions: list[sa.ColumnElement[Any]] = []
    for column, field in zip(columns, schema, strict=True):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            expressions.append(sa.func.timezone("UTC", column).label(field.name))
        else:
            expressions.append(column)
    return expressions


def copy_statement(dbapi_cursor: Any, query: sa.Select[Any], dialect: sa.Dialect) -> str:
    """`COPY (<query>) TO STDOUT` with the query's values bound by the driver's own quoting."""
    compiled = query.compile(dialect=dialect)
    params: Mapping[str, Any] = compiled.params
    select = dbapi_cursor.mogrify(str(compiled), params).decode()
    return f"COPY ({select}) TO STDOUT WITH (FORMAT csv, ENCODING 'UTF8')"


def _parse_types(schema: pa.Schema) -> dict[str, pa.DataType]:
    # zone-aware columns arrive as UTC wall time: parse naive, then mark as UTC
    return {
        field.name: pa.timestamp(field.type.unit)
        if pa.types.is_timestamp(field.type) and field.type.tz is not None
        else field.type
        for field in schema
    }


def copy_batches(
    dbapi_connection: Any, statement: str, schema: pa.Schema, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Run COPY in a thread into a pipe and yield Arrow batches of `schema` as the text arrives.

    A failure on either side (the connection dropped, a value that does not parse) raises here,
    never a silently shortened stream."""
    read_fd, write_fd = os.pipe()
    # each end is closed by its own side: the writer when COPY ends, the reader when done
    reader_file = io.BufferedReader(io.FileIO(read_fd, "rb"), 1 << 16)
    writer_file = open(write_fd, "wb")  # noqa: SIM115
    failure: list[BaseException] = []

    def produce() -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.copy_expert(statement, writer_file, size=1 << 20)
        except BaseException as error:  # re-raised by the consumer below
            failure.append(error)
        finally:
            cursor.close()
            # the consumer may have hung up first: its own error is the one to report
            with contextlib.suppress(OSError):
                writer_file.close()

    producer = threading.Thread(target=produce, name="postgres-copy", daemon=True)
    producer.start()
    block_bytes = min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, batch_rows * BYTES_PER_ROW_GUESS))
    try:
        if not reader_file.peek(1):
            # no rows in the window (an empty day): Arrow refuses an empty CSV, so stop here
            producer.join(timeout=30)
            if failure:
                raise failure[0]
            return
        csv_reader = pa_csv.open_csv(
            reader_file,
            read_options=pa_csv.ReadOptions(
                column_names=schema.names, block_size=block_bytes, use_threads=True
            ),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=_parse_types(schema),
                null_values=[""],
                strings_can_be_null=True,
                # COPY writes NULL as an empty field and an empty string as ""
                quoted_strings_can_be_null=False,
                true_values=["t"],
                false_values=["f"],
            ),
        )
        for block in csv_reader:
            if failure:
                break
            batch = _conform(block, schema)
            # blocks are sized in bytes; batches keep the configured row bound
            for offset in range(0, batch.num_rows, batch_rows):
                yield batch.slice(offset, batch_rows)
    except (pa.ArrowInvalid, OSError):
        producer.join(timeout=30)
        if failure:
            raise failure[0] from None
        raise
    finally:
        reader_file.close()
        producer.join(timeout=30)
    if failure:
        raise failure[0]


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    arrays = [
        column.cast(field.type) if column.type != field.type else column
        for column, field in zip(batch.columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
