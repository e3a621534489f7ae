"""Self-describing files: Parquet, ORC and Avro, each typed by its own schema.

- Parquet: `pyarrow.parquet.ParquetFile.iter_batches`, one row group's pages at a time.
- ORC: `pyarrow.orc.ORCFile.read_stripe`, one stripe at a time (ORC writers default to 64 MB).

pyarrow reports a damaged Parquet or ORC file as `ArrowInvalid` or as an `OSError` without an
errno; those are `MalformedFileError`s, while an `OSError` of the operating system (with an errno)
is left as it is, to be retried.
- Avro: `fastavro` (Cython; the reader the Avro ecosystem in Python uses), records decoded block by
  block and gathered `batch_rows` at a time into Arrow columns typed from the writer schema:
  `decimal` logical types exact (`decimal128(p, s)`, `decimal256` beyond 38 digits), `timestamp-*`
  with their unit in UTC, `local-timestamp-*` without zone, `date`, `time-*`, `uuid` as string;
  records are structs, arrays lists, maps maps; a union of several non-null types is JSON text.
  pyarrow has no Avro reader; the Avro project's own `avro` package is pure Python and slower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO, Any, cast

import fastavro
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq

from ingestion_assets.sources.files.conform import python_text
from ingestion_assets.sources.files.formats import MalformedFileError
from ingestion_assets.sources.files.text import Source, opened, seekable

Convert = Callable[[Any], Any] | None


def read_parquet(source: Source, file_name: str, *, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The file's rows, `batch_rows` at a time, as the file types them."""
    with seekable(source) as file:
        try:
            parquet = pq.ParquetFile(file)
            yield from parquet.iter_batches(batch_size=batch_rows, use_threads=False)
        except (pa.ArrowInvalid, OSError) as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise
            raise MalformedFileError(
                file_name, f"not a readable Parquet file ({error})", "send a complete Parquet file"
            ) from error


def read_orc(source: Source, file_name: str) -> Iterator[pa.RecordBatch]:
    """The file's rows, stripe by stripe, as the file types them."""
    with seekable(source) as file:
        try:
            orc_file = orc.ORCFile(file)
            for stripe in range(orc_file.nstripes):
                yield orc_file.read_stripe(stripe)
        except (pa.ArrowInvalid, OSError) as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise
            raise MalformedFileError(
                file_name, f"not a readable ORC file ({error})", "send a complete ORC file"
            ) from error


def read_avro(source: Source, file_name: str, *, batch_rows: int) -> Iterator[pa.Table]:
    """The file's records, `batch_rows` at a time, as Arrow columns typed by the writer schema."""
    with opened(source) as file:
        try:
            reader = fastavro.reader(cast(IO[bytes], file))
            schema = reader.writer_schema
            if not isinstance(schema, dict) or schema.get("type") != "record":
                raise MalformedFileError(
                    file_name,
                    f"the Avro schema is a {schema!r}, not a record",
                    "send Avro files whose schema is a record (one column per field)",
                )
            named: dict[str, tuple[pa.DataType, Convert]] = {}
            fields = [
                (field["name"], *_arrow_type(field["type"], named)) for field in schema["fields"]
            ]
            records: list[dict[str, Any]] = []
            for record in reader:
                records.append(record)  # type: ignore[arg-type]
                if len(records) == batch_rows:
                    yield _avro_table(records, fields)
                    records = []
        except (ValueError, EOFError, fastavro.read.SchemaResolutionError) as error:
            if isinstance(error, MalformedFileError):
                raise
            raise MalformedFileError(
                file_name, f"not a readable Avro file ({error})", "send a complete Avro file"
            ) from error
        if records:
            yield _avro_table(records, fields)


def _avro_table(
    records: list[dict[str, Any]], fields: list[tuple[str, pa.DataType, Convert]]
) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    for name, data_type, convert in fields:
        values = [record.get(name) for record in records]
        if convert is not None:
            values = [None if value is None else convert(value) for value in values]
        columns[name] = pa.array(values, data_type)
    return pa.table(columns)


_PRIMITIVES = {
    "null": pa.null(),
    "boolean": pa.bool_(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "bytes": pa.binary(),
    "string": pa.string(),
}
_LOGICAL = {
    "date": pa.date32(),
    "time-millis": pa.time32("ms"),
    "time-micros": pa.time64("us"),
    "timestamp-millis": pa.timestamp("ms", tz="UTC"),
    "timestamp-micros": pa.timestamp("us", tz="UTC"),
    "timestamp-nanos": pa.timestamp("ns", tz="UTC"),
    "local-timestamp-millis": pa.timestamp("ms"),
    "local-timestamp-micros": pa.timestamp("us"),
    "local-timestamp-nanos": pa.timestamp("ns"),
}


def _arrow_type(
    schema: Any, named: dict[str, tuple[pa.DataType, Convert]]
) -> tuple[pa.DataType, Convert]:
    """The Arrow type of an Avro schema, and the conversion its decoded values need, if any."""
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema], None
        return named[schema]
    if isinstance(schema, list):
        branches = [branch for branch in schema if branch != "null"]
        if len(branches) == 1:
            return _arrow_type(branches[0], named)
        return pa.string(), python_text
    data_type, convert = _complex_type(schema, named)
    if schema.get("type") in ("record", "enum", "fixed") and "name" in schema:
        named[schema["name"]] = (data_type, convert)
        if "namespace" in schema:
            named[f"{schema['namespace']}.{schema['name']}"] = (data_type, convert)
    return data_type, convert


def _complex_type(
    schema: dict[str, Any], named: dict[str, tuple[pa.DataType, Convert]]
) -> tuple[pa.DataType, Convert]:
    logical = schema.get("logicalType")
    kind = schema["type"]
    if logical == "decimal":
        precision, scale = int(schema["precision"]), int(schema.get("scale", 0))
        if precision <= 38:
            return pa.decimal128(precision, scale), None
        return pa.decimal256(precision, scale), None
    if logical == "uuid":
        return pa.string(), str
    if logical in _LOGICAL:
        return _LOGICAL[logical], None
    if kind == "record":
        children = [
            (field["name"], *_arrow_type(field["type"], named)) for field in schema["fields"]
        ]
        return (
            pa.struct([(name, child) for name, child, _ in children]),
            _record_converter(children),
        )
    if kind == "enum":
        return pa.string(), None
    if kind == "fixed":
        return pa.binary(int(schema["size"])), None
    if kind == "array":
        items, convert = _arrow_type(schema["items"], named)
        return pa.list_(items), _each(convert)
    if kind == "map":
        values, convert = _arrow_type(schema["values"], named)
        return pa.map_(pa.string(), values), _each_value(convert)
    return _arrow_type(kind, named)


def _record_converter(children: list[tuple[str, pa.DataType, Convert]]) -> Convert:
    converting = [(name, convert) for name, _, convert in children if convert is not None]
    if not converting:
        return None

    def convert(record: dict[str, Any]) -> dict[str, Any]:
        out = dict(record)
        for name, child in converting:
            if out.get(name) is not None:
                out[name] = child(out[name])
        return out

    return convert


def _each(convert: Convert) -> Convert:
    if convert is None:
        return None
    return lambda values: [None if value is None else convert(value) for value in values]


def _each_value(convert: Convert) -> Convert:
    if convert is None:
        return None
    return lambda values: {
        key: None if value is None else convert(value) for key, value in values.items()
    }
