"""A separate process that materializes a window of the test table `t/events` (used to race
writers against each other and to kill one in the middle of a write).

    python -m ingestion_assets_tests.writer_process LAKE FIRST LAST TAG [--ready F --go F]
        [--rows-per-day N] [--delay-per-day S] [--writer delta|iceberg|postgres]

Each day gets ids 0..N-1 with `value` = TAG, one batch per day. With --ready/--go the process
imports everything, creates the ready file, and starts only once the go file exists. LAKE may be
an s3:// URI, with the delta-rs storage options as JSON in INGEST_TEST_STORAGE_OPTIONS. With
--writer iceberg, LAKE is a folder holding the SQLite catalog and the warehouse (data files of
--rows-per-file rows); with --writer postgres, LAKE is a libpq URL and --db-schema the schema."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator

import pyarrow as pa
from dagster import (
    ConfigurableIOManager,
    DagsterInstance,
    DailyPartitionsDefinition,
    asset,
    materialize,
)

from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.io_managers.iceberg import IcebergIOManager
from ingestion_assets.io_managers.postgres import PostgresIOManager

FIRST_DAY = datetime.date(2024, 1, 1)
DAYS = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-05-01")
SCHEMA = pa.schema([("day", pa.date32()), ("id", pa.int64()), ("value", pa.string())])
BARRIER_SECONDS = 60.0
STORAGE_OPTIONS_VARIABLE = "INGEST_TEST_STORAGE_OPTIONS"


def rows_of(day: datetime.date, tag: str, rows_per_day: int) -> pa.RecordBatch:
    """The rows a writer with `tag` lands for `day`."""
    return pa.RecordBatch.from_pydict(
        {
            "day": [day] * rows_per_day,
            "id": list(range(rows_per_day)),
            "value": [tag] * rows_per_day,
        },
        schema=SCHEMA,
    )


def _writer(args: argparse.Namespace) -> ConfigurableIOManager:
    if args.writer == "iceberg":
        return IcebergIOManager(
            catalog_uri=f"sqlite:///{args.lake}/catalog.db",
            warehouse=f"file://{args.lake}/warehouse",
            rows_per_file=args.rows_per_file,
        )
    if args.writer == "postgres":
        return PostgresIOManager(url=args.lake, db_schema=args.db_schema)
    return DeltaLakeIOManager(
        root_uri=args.lake,
        storage_options=json.loads(os.environ.get(STORAGE_OPTIONS_VARIABLE, "{}")),
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("lake")
    parser.add_argument("first", type=datetime.date.fromisoformat)
    parser.add_argument("last", type=datetime.date.fromisoformat)
    parser.add_argument("tag")
    parser.add_argument("--ready", type=pathlib.Path)
    parser.add_argument("--go", type=pathlib.Path)
    parser.add_argument("--rows-per-day", type=int, default=500)
    parser.add_argument("--delay-per-day", type=float, default=0.0)
    parser.add_argument("--writer", choices=["delta", "iceberg", "postgres"], default="delta")
    parser.add_argument("--rows-per-file", type=int, default=1_000_000)
    parser.add_argument("--db-schema", default="ingest")
    args = parser.parse_args(argv)
    days = [
        args.first + datetime.timedelta(days=offset)
        for offset in range((args.last - args.first).days + 1)
    ]

    def batches() -> Iterator[pa.RecordBatch]:
        for day in days:
            yield rows_of(day, args.tag, args.rows_per_day)
            time.sleep(args.delay_per_day)

    @asset(key=["t", "events"], partitions_def=DAYS, metadata={"ingestion/partition_column": "day"})
    def events() -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(SCHEMA, batches())

    if args.ready is not None and args.go is not None:
        args.ready.touch()
        deadline = time.monotonic() + BARRIER_SECONDS
        while not args.go.exists():
            if time.monotonic() > deadline:
                print("no go signal", file=sys.stderr)
                return 3
            time.sleep(0.005)
    result = materialize(
        [events],
        instance=DagsterInstance.ephemeral(),
        resources={"io_manager": _writer(args)},
        tags={
            "dagster/asset_partition_range_start": args.first.isoformat(),
            "dagster/asset_partition_range_end": args.last.isoformat(),
        },
        raise_on_error=False,
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
