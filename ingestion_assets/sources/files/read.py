"""The one entry point: a file's bytes, its name and its format in; Arrow record batches out.

`read_batches(source, file_name, file_format, schema=None, *, batch_rows, rescue, chunk_bytes,
report)` picks the format's reader and conforms what it decodes to the file's columns
(`conform.py`: declared types exact, missing columns null, other columns kept, misfits rescued),
reading the file as it goes:

- `source` is a path, a pyarrow `NativeFile` or a binary file object (read, never closed);
  `file_name` names the file in errors and, with `compression: auto`, tells its compression;
- without `schema`, each file's types are inferred from its first batch;
- with `rescue` (the default) a `_rescued_data` column keeps the text of values that did not fit;
  without it such a value raises `MalformedFileError`;
- `chunk_bytes` is the size of each read from the source (and of CSV and NDJSON blocks);
- `report`, when given, receives the row, rescued-row and ragged-row counts.

It raises `MalformedFileError` as soon as it finds the file unreadable, mid-stream included: a
caller that stages batches must commit only after the iterator is exhausted, and never gets a
short file silently. An empty file yields one empty batch, so its columns are still known."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import pyarrow as pa

from ingestion_assets.sources.files.columnar import read_avro, read_orc, read_parquet
from ingestion_assets.sources.files.conform import Conformer
from ingestion_assets.sources.files.csv import read_delimited
from ingestion_assets.sources.files.excel import read_excel
from ingestion_assets.sources.files.formats import (
    AvroFormat,
    CsvFormat,
    ExcelFormat,
    FileFormat,
    JsonFormat,
    NdjsonFormat,
    OrcFormat,
    ParquetFormat,
    ReadReport,
    TsvFormat,
    XmlFormat,
)
from ingestion_assets.sources.files.json import read_json_array, read_ndjson
from ingestion_assets.sources.files.text import DEFAULT_CHUNK_BYTES, Source
from ingestion_assets.sources.files.xml import read_xml

RawBatch = tuple[pa.Table | pa.RecordBatch, Mapping[str, pa.DataType] | None]


def read_batches(
    source: Source,
    file_name: str,
    file_format: FileFormat,
    schema: pa.Schema | None = None,
    *,
    batch_rows: int = 65_536,
    rescue: bool = True,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    report: ReadReport | None = None,
) -> Iterator[pa.RecordBatch]:
    """One file as record batches of at most `batch_rows` rows: `schema`'s columns, then the file's."""
    if batch_rows < 1 or chunk_bytes < 1:
        raise ValueError(
            f"batch_rows and chunk_bytes must be positive, not {batch_rows}, {chunk_bytes}"
        )
    report = report if report is not None else ReadReport()
    text_formats = (CsvFormat, TsvFormat, XmlFormat)
    conformer = Conformer(
        file_name,
        schema,
        rescue=rescue,
        infer_text=isinstance(file_format, text_formats),
        report=report,
    )
    row_offset = 0
    for raw, hints in _raw_batches(
        source,
        file_name,
        file_format,
        schema,
        batch_rows=batch_rows,
        chunk_bytes=chunk_bytes,
        report=report,
    ):
        batch = conformer.conform(raw, row_offset, hints)
        row_offset += batch.num_rows
        report.rows += batch.num_rows
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)
    if row_offset == 0:
        # An empty file still tells its columns (a header, the declared schema).
        yield pa.RecordBatch.from_pylist([], schema=conformer.output_schema())


def _raw_batches(
    source: Source,
    file_name: str,
    file_format: FileFormat,
    schema: pa.Schema | None,
    *,
    batch_rows: int,
    chunk_bytes: int,
    report: ReadReport,
) -> Iterable[RawBatch]:
    """What the format's reader decodes, with the type hints of formats whose values carry a kind."""
    match file_format:
        case CsvFormat() | TsvFormat():
            return _without_hints(
                read_delimited(
                    source, file_name, file_format, chunk_bytes=chunk_bytes, report=report
                )
            )
        case JsonFormat():
            return read_json_array(
                source, file_name, file_format, batch_rows=batch_rows, chunk_bytes=chunk_bytes
            )
        case NdjsonFormat():
            return read_ndjson(source, file_name, file_format, schema, chunk_bytes=chunk_bytes)
        case ParquetFormat():
            return _without_hints(read_parquet(source, file_name, batch_rows=batch_rows))
        case OrcFormat():
            return _without_hints(read_orc(source, file_name))
        case AvroFormat():
            return _without_hints(read_avro(source, file_name, batch_rows=batch_rows))
        case ExcelFormat():
            return read_excel(source, file_name, file_format, batch_rows=batch_rows)
        case XmlFormat():
            return _without_hints(
                read_xml(
                    source, file_name, file_format, batch_rows=batch_rows, chunk_bytes=chunk_bytes
                )
            )


def _without_hints(batches: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[RawBatch]:
    for batch in batches:
        yield batch, None
