"""PostgreSQL fast path: `COPY (SELECT ...) TO STDOUT` as CSV, parsed into Arrow by Arrow's CSV reader.

The database writes text in a thread, through a pipe, while Arrow's multi-threaded C++ parser turns it
into record batches of the exact declared types (decimals to the last digit, timestamps, text): no
Python object per value, and reading overlaps with whatever consumes the batches.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import select
import threading
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa

from ingestion_assets.sources.cancel import on_cancel
from ingestion_assets.sources.types import NOT_A_NUMBER_FIX

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
# how long a COPY thread gets to end once its query is cancelled and its pipe closed
COPY_STOP_SECONDS = 5.0


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


# a value no Arrow type of the column holds is refused by the server, the same way for every path
_NOT_FINITE_MARK = "ingest: not finite: column "
_NOT_FINITE = re.compile(r'ingest: not finite: column "(?P<column>.*)" holds (?P<value>[^"]*)"')


def finite_guard(column: sa.ColumnElement[Any], field: pa.Field) -> sa.ColumnElement[Any]:
    """PostgreSQL's `infinity`/`-infinity` dates and timestamps and a constrained numeric's NaN
    hold no Arrow value: COPY's text fails to parse, psycopg2 turns infinity into
    9999-12-31 23:59:59.999999 (a real value to every reader), psqlODBC into odd dates. So the
    select list refuses them in the server, naming the column, whatever path then reads it."""
    if pa.types.is_timestamp(field.type) or pa.types.is_date(field.type):
        not_finite: sa.ColumnElement[bool] = sa.func.isfinite(column) == sa.false()
    elif pa.types.is_decimal(field.type):
        not_finite = column == sa.cast(sa.literal("NaN", sa.Text), column.type)
    else:
        return column
    quoted = field.name.replace('"', '""')
    refusal = sa.cast(
        sa.literal(f'{_NOT_FINITE_MARK}"{quoted}" holds ', sa.Text) + sa.cast(column, sa.Text),
        column.type,
    )
    return sa.case((not_finite, refusal), else_=column).label(field.name)


def not_finite_message(reason: str) -> str | None:
    """The message for a value `finite_guard` refused (None when `reason` is another error)."""
    match = _NOT_FINITE.search(reason)
    if match is None:
        return None
    column, value = match.group("column").replace('""', '"'), match.group("value")
    if value.lower() == "nan":
        return (
            f"column {column} holds NaN, which no decimal holds. Nothing was written. "
            f"{NOT_A_NUMBER_FIX}"
        )
    return (
        f"column {column} holds {value}, which no date or timestamp in the lake holds (read "
        "as 9999-12-31 it would pass for a real value). Nothing was written. Replace it at "
        "the source: read the table through a view that casts it, e.g. CASE WHEN "
        f"isfinite({column}) THEN {column} END (NULL), or a date of your choosing"
    )


def copy_statement(dbapi_cursor: Any, query: sa.Select[Any], dialect: sa.Dialect) -> str:
    """`COPY (<query>) TO STDOUT` with the query's values bound by the driver's own quoting."""
    compiled = query.compile(dialect=dialect)
    params: Mapping[str, Any] = compiled.params
    return copy_statement_of(dbapi_cursor.mogrify(str(compiled), params).decode())


def copy_statement_of(select: str) -> str:
    """`COPY (<select>) TO STDOUT` as CSV, the text `copy_batches` parses."""
    return f"COPY ({select}) TO STDOUT WITH (FORMAT csv, ENCODING 'UTF8')"


def _parse_types(schema: pa.Schema) -> dict[str, pa.DataType]:
    # zone-aware columns arrive as UTC wall time: parse naive, then mark as UTC
    return {
        field.name: pa.timestamp(field.type.unit)
        if pa.types.is_timestamp(field.type) and field.type.tz is not None
        else field.type
        for field in schema
    }


class _PipeWriter:
    """The write end of the pipe COPY writes into, for psycopg2's `copy_expert`.

    Non-blocking underneath: a write waiting for a consumer that stopped reading gives up as
    soon as `stop()` is called, where a plain pipe would block the COPY thread for good."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd
        self._stopped = threading.Event()

    def write(self, data: bytes) -> int:
        """Write all of `data`, waiting for room in the pipe unless stopped."""
        view = memoryview(data)
        while view:
            if self._stopped.is_set() or self._fd is None:
                raise BrokenPipeError("the reader of the COPY output stopped")
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                select.select([], [self._fd], [], 0.1)
        return len(data)

    def stop(self) -> None:
        """Make the pending and every later write fail (from any thread)."""
        self._stopped.set()

    def close(self) -> None:
        """Close the write end: the reader sees the end of the text."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def send_cancel(dbapi_connection: Any) -> None:
    """Ask the server to cancel the connection's query, without waiting for its answer.

    PQcancel opens a connection of its own and waits until the server closes it, with no time
    limit: a server (or a network path) that stopped answering, the very case a stall timeout
    is for, would hold the caller there for good. The request goes out from a daemon thread,
    and whoever stops the read goes on (the COPY thread is then joined with its own bound)."""

    def cancel() -> None:
        with contextlib.suppress(Exception):
            dbapi_connection.cancel()

    threading.Thread(target=cancel, name="postgres-cancel", daemon=True).start()


def copy_batches(
    dbapi_connection: Any, statement: str, schema: pa.Schema, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Run COPY in a thread into a pipe and yield Arrow batches of `schema` as the text arrives.

    A failure on either side (the connection dropped, a value that does not parse) raises here,
    never a silently shortened stream. A consumer that stops early, or cancels the reading
    thread's scope (sources.cancel) while it waits, cancels the COPY on the server and stops
    the pipe: the COPY thread ends within moments and the text ends for the parser."""
    read_fd, write_fd = os.pipe()
    # each end is closed by its own side: the writer when COPY ends, the reader when done
    reader_file = io.BufferedReader(io.FileIO(read_fd, "rb"), 1 << 16)
    writer_file = _PipeWriter(write_fd)
    failure: list[BaseException] = []

    def produce() -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.copy_expert(statement, writer_file, size=1 << 20)
        except BaseException as error:  # re-raised by the consumer below
            failure.append(error)
        finally:
            cursor.close()
            writer_file.close()

    def stop() -> None:
        # both are safe from any thread: PQcancel ends a COPY waiting on the server, the
        # stopped pipe a COPY waiting for room in it
        writer_file.stop()
        send_cancel(dbapi_connection)

    producer = threading.Thread(target=produce, name="postgres-copy", daemon=True)
    producer.start()
    block_bytes = min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, batch_rows * BYTES_PER_ROW_GUESS))
    blocks = csv_blocks(reader_file, schema, block_bytes)
    finished = False
    try:
        with on_cancel(stop):
            for batch in blocks:
                if failure:
                    break
                # blocks are sized in bytes; batches keep the configured row bound
                for offset in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(offset, batch_rows)
        finished = True
    except pa.ArrowInvalid as error:
        producer.join(timeout=COPY_STOP_SECONDS)
        if failure:
            raise failure[0] from None
        raise _with_column_names(error, schema) from None
    except OSError:
        producer.join(timeout=COPY_STOP_SECONDS)
        if failure:
            raise failure[0] from None
        raise
    finally:
        if not finished:
            stop()
        # the COPY thread ends first, so the parser's reads see the end of the text, not a
        # closed file
        producer.join(timeout=COPY_STOP_SECONDS)
        blocks.close()
        reader_file.close()
    if failure:
        raise failure[0]


def csv_blocks(
    text: io.BufferedIOBase, schema: pa.Schema, block_bytes: int
) -> Generator[pa.RecordBatch]:
    """COPY's CSV text as record batches of `schema`, parsed a block of text at a time; a record
    longer than a block is parsed on its own (see WholeRecords). No batch for no text."""
    for section, section_block_bytes in WholeRecords(text, block_bytes).sections():
        for block in _parse_csv(section, schema, section_block_bytes):
            yield _conform(block, schema)


def _parse_csv(text: io.IOBase, schema: pa.Schema, block_bytes: int) -> pa_csv.CSVStreamingReader:
    return pa_csv.open_csv(
        text,
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


def records_end(text: bytes, in_quotes: bool = False) -> int:
    """Offset just past the last newline of `text` that ends a CSV record, 0 if none does.

    A newline ends a record when an even number of quotes precede it since the record began:
    COPY quotes every value holding a quote, a comma or a newline, and doubles inner quotes.
    `in_quotes`: `text` begins inside a quoted value."""
    quotes = text.count(b'"') + in_quotes
    position = len(text)
    while (newline := text.rfind(b"\n", 0, position)) >= 0:
        quotes -= text.count(b'"', newline, position)
        if quotes % 2 == 0:
            return newline + 1
        position = newline
    return 0


class WholeRecords(io.RawIOBase):
    """COPY's CSV text for Arrow's reader, in reads of whole records.

    Arrow's streaming reader fails on a record longer than its block ("straddling object
    straddles two block boundaries"), and its block size is fixed when it opens. So the text is
    cut into sections: runs of records read with the normal block size, and each record longer
    than a block on its own, read in one block of its size. Memory stays bounded by the block
    size, or by the longest record when that is longer."""

    def __init__(self, raw: io.BufferedIOBase, block_bytes: int) -> None:
        super().__init__()
        self._raw = raw
        self._block_bytes = block_bytes
        # the beginning of a record whose end has not been read yet
        self._rest = b""
        # whole records read ahead, to hand out next
        self._ahead = b""
        self._oversized: bytes | None = None

    def sections(self) -> Iterator[tuple[io.IOBase, int]]:
        """The text as inputs for Arrow's reader, each with the block size it needs."""
        while True:
            if self._oversized is None and not self._ahead:
                self._ahead = self._take()
            if self._oversized is not None:
                oversized, self._oversized = self._oversized, None
                yield io.BytesIO(oversized), len(oversized) + 1
            elif self._ahead:
                yield self, self._block_bytes
            else:
                return

    def readable(self) -> bool:
        """A stream to read from (Arrow asks)."""
        return True

    def read(self, size: int = -1) -> bytes:
        """A block of whole records (Arrow reads its block size); empty when the section ends."""
        if self._oversized is not None:
            return b""
        text, self._ahead = self._ahead or self._take(), b""
        return text

    def _take(self) -> bytes:
        """At most a block of whole records; empty at the end of the text, or when the next
        record is longer than a block (then kept in `_oversized`)."""
        chunk = self._raw.read(max(1, self._block_bytes - len(self._rest)))
        text, self._rest = self._rest + chunk, b""
        if len(text) < self._block_bytes:
            # the end of COPY's output: what is left are whole records
            return text
        end = records_end(text)
        if end == 0:
            self._oversized = self._read_to_record_end(text)
            return b""
        self._rest = text[end:]
        return text[:end]

    def _read_to_record_end(self, start: bytes) -> bytes:
        parts = [start]
        in_quotes = start.count(b'"') % 2 == 1
        while chunk := self._raw.read(self._block_bytes):
            end = records_end(chunk, in_quotes)
            if end:
                parts.append(chunk[:end])
                self._rest = chunk[end:]
                break
            parts.append(chunk)
            in_quotes ^= chunk.count(b'"') % 2 == 1
        return b"".join(parts)


_CSV_COLUMN = re.compile(r"CSV column #(\d+)")
_NOT_A_NUMBER = re.compile(r"'NaN' is not a valid decimal")


def _with_column_names(error: pa.ArrowInvalid, schema: pa.Schema) -> pa.ArrowInvalid:
    """Arrow's parse error with the column's name instead of its index, and the fix for
    PostgreSQL's numeric NaN, which no decimal holds."""
    text = str(error)
    match = _CSV_COLUMN.search(text)
    if match and int(match.group(1)) < len(schema):
        field = schema.field(int(match.group(1)))
        text = text.replace(match.group(0), f"column {field.name} ({field.type})")
    if _NOT_A_NUMBER.search(text):
        text += f". {NOT_A_NUMBER_FIX}"
    return pa.ArrowInvalid(text)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    arrays = [
        column.cast(field.type) if column.type != field.type else column
        for column, field in zip(batch.columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
