"""The ledger of the files a table's rows came from, kept beside it as `<table>_files`: one row per
file and day (path, size, modification time, the SHA-256 of its bytes where cheap, rows, every
day the file's rows fall on, the run, and whether it was ingested, rejected or has gone from the
landing zone), its days replaced by each run like the table's.

What a run of some days compares with it: the files of those days the ledger holds and the
landing zone no longer does. Their rows stay in the table (the run copies them over from the
committed table) unless the dataset says `deleted_files: remove`; either way the run reports
them.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from ingestion_assets.lake.files import delta_dataset
from ingestion_assets.lake.replace import SchemaMode, open_table, replace_with_writer
from ingestion_assets.lake.rows import INGESTED_AT, PARTITION_DATE, RUN_ID

LEDGER_SUFFIX = "_files"
# the column of a table's rows that names their file
SOURCE_FILE = "_source_file"
LEDGER_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("modified", pa.timestamp("us", "UTC")),
        # hex SHA-256 of the file's bytes (null for files too large to hash cheaply)
        pa.field("sha256", pa.string()),
        pa.field("rows", pa.int64()),
        # every day the file's rows fall on, not only this row's: a run of other days knows
        # without reading it whether the unchanged file has rows for them
        pa.field("file_days", pa.list_(pa.date32())),
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
        pa.field(PARTITION_DATE, pa.date32()),
    ]
)


def ledger_uri(table_uri: str) -> str:
    """Where a table's ledger is."""
    return f"{table_uri}{LEDGER_SUFFIX}"


def _days(first: datetime.date, last: datetime.date) -> pc.Expression:
    day = pc.field(PARTITION_DATE)
    return (day >= pa.scalar(first, pa.date32())) & (day <= pa.scalar(last, pa.date32()))


def ledger_files(
    table_uri: str,
    storage_options: dict[str, str] | None,
    days: tuple[datetime.date, datetime.date] | None,
) -> pa.Table:
    """The ledger's rows of `days` (every row when None) that were ingested or kept."""
    ledger = open_table(ledger_uri(table_uri), storage_options)
    if ledger is None:
        return LEDGER_SCHEMA.empty_table()
    rows = delta_dataset(ledger).to_table(filter=_days(*days) if days is not None else None)
    landed = pc.is_in(rows.column("status"), pa.array(["ingested", "gone, rows kept"]))
    rows = rows.filter(landed)
    # a ledger written before a column was added has it as nulls
    for field in LEDGER_SCHEMA:
        if field.name not in rows.column_names:
            rows = rows.append_column(field, pa.nulls(rows.num_rows, field.type))
    return rows


def gone_files(previous: pa.Table, read: set[str]) -> pa.Table:
    """The ledger rows whose file the landing zone no longer has (a run read every file of
    its days that is there)."""
    if previous.num_rows == 0:
        return previous
    missing = pc.invert(pc.is_in(previous.column("path"), pa.array(sorted(read), pa.string())))
    return previous.filter(missing)


def kept_rows(
    table: DeltaTable,
    days: tuple[datetime.date, datetime.date] | None,
    paths: list[str],
    schema: pa.Schema,
) -> Iterator[pa.RecordBatch]:
    """The committed rows of the gone files (in the stream's columns), copied into the run's
    replace so that they stay."""
    if not paths:
        return
    where = pc.is_in(pc.field(SOURCE_FILE), pa.array(paths, pa.string()))
    if days is not None:
        where = where & _days(*days)
    present = set(pa.schema(table.schema().to_arrow()).names)
    for batch in delta_dataset(table).to_batches(filter=where):
        arrays = [
            batch.column(field.name).cast(field.type)
            if field.name in present
            else pa.nulls(batch.num_rows, field.type)
            for field in schema
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def write_ledger(
    table_uri: str,
    storage_options: dict[str, str] | None,
    entries: pa.Table,
    predicate: str | None,
    run_id: str,
    ingested_at: datetime.datetime,
) -> None:
    """Replace the run's days of the ledger with `entries` (LEDGER_SCHEMA), stamped with the
    run."""
    uri = ledger_uri(table_uri)
    rows = entries.cast(LEDGER_SCHEMA)
    rows = rows.append_column(
        INGESTED_AT, pa.repeat(pa.scalar(ingested_at, pa.timestamp("us", "UTC")), rows.num_rows)
    ).append_column(RUN_ID, pa.repeat(pa.scalar(run_id, pa.string()), rows.num_rows))
    existing = open_table(uri, storage_options)
    # a ledger of an earlier layout gains the new columns
    schema_mode: SchemaMode = (
        "merge"
        if existing is not None
        and not set(rows.column_names) <= set(pa.schema(existing.schema().to_arrow()).names)
        else None
    )
    replace_with_writer(uri, storage_options, rows, existing, predicate, schema_mode)
