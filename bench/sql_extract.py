"""Benchmark: SQL extraction (and extraction into Delta) for a full table and for one day.

Builds a PostgreSQL table shaped like Sales.SalesOrderDetail (ROWS rows over DAYS days), then runs
each case in a fresh subprocess so its peak RSS is its own, and prints rows/s and peak MB.
Figures are printed, never asserted: `make bench` or `python bench/sql_extract.py --rows 1000000`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import pyarrow as pa
import sqlalchemy as sa

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def build_source(rows: int, days: int, schema: str) -> None:
    """A SalesOrderDetail-shaped table filled by the server itself (generate_series)."""
    engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        connection.execute(
            sa.text(
                f'CREATE TABLE "{schema}"."SalesOrderDetail" AS SELECT '
                '43659 + i / 4 AS "SalesOrderID", i AS "SalesOrderDetailID", '
                "'4911-403C-' || (i % 97) AS \"CarrierTrackingNumber\", "
                '(1 + i % 7)::smallint AS "OrderQty", 700 + i % 300 AS "ProductID", '
                '1 AS "SpecialOfferID", (i % 5000 + 0.4567)::numeric(19, 4) AS "UnitPrice", '
                '0::numeric(19, 4) AS "UnitPriceDiscount", '
                '((i % 5000 + 0.4567) * (1 + i % 7))::numeric(38, 6) AS "LineTotal", '
                "md5(i::text)::uuid AS rowguid, "
                f"timestamp '2024-01-01' + (i::float8 / {rows} * {days}) * interval '1 day' "
                'AS "ModifiedDate" '
                f"FROM generate_series(0, {rows - 1}) AS i"
            )
        )
        connection.execute(sa.text(f'ANALYZE "{schema}"."SalesOrderDetail"'))
    engine.dispose()


def drop_source(schema: str) -> None:
    """Remove the benchmark's schema."""
    engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def run_case(schema: str, case: str, to_delta: bool, batch_size: int) -> dict[str, float]:
    """One measurement, in this process (called in a subprocess by main)."""
    from deltalake import write_deltalake

    from ingestion_assets.sources.sql import SqlTableReader, create_source_engine
    from ingestion_assets.sources.window import PartitionWindow
    from ingestion_assets.specs import TableSpec

    engine = create_source_engine(sa.make_url(POSTGRES_URL))
    partition_column = "ModifiedDate" if case == "one_day" else None
    table = TableSpec(schema=schema, name="SalesOrderDetail", partition_column=partition_column)
    window = None
    if case == "one_day":
        start = datetime.datetime(2024, 3, 1, tzinfo=datetime.UTC)
        window = PartitionWindow(start, start + datetime.timedelta(days=1), "partition 2024-03-01")
    started = time.perf_counter()
    reader = SqlTableReader(engine, "bench", table, batch_size).read(window)
    rows = 0

    def counting() -> Iterator[pa.RecordBatch]:
        nonlocal rows
        for batch in reader:
            rows += batch.num_rows
            yield batch

    if to_delta:
        with tempfile.TemporaryDirectory() as lake:
            write_deltalake(lake, pa.RecordBatchReader.from_batches(reader.schema, counting()))
    else:
        for _ in counting():
            pass
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine.dispose()
    return {"rows": rows, "seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    """Build the source, run every case in its own process, print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=1096)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--to-delta", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.schema, args.case, args.to_delta, args.batch_size)))
        return

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    print(f"building {args.rows:,} rows over {args.days} days in PostgreSQL ...", flush=True)
    build_source(args.rows, args.days, schema)
    try:
        print(f"{'case':<32}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak MB':>10}")
        for case in ("full_table", "one_day"):
            for to_delta in (False, True):
                command = [
                    sys.executable,
                    __file__,
                    "--case",
                    case,
                    "--schema",
                    schema,
                    "--batch-size",
                    str(args.batch_size),
                ]
                if to_delta:
                    command.append("--to-delta")
                output = subprocess.run(command, check=True, capture_output=True, text=True)
                figures = json.loads(output.stdout.strip().splitlines()[-1])
                label = f"{case} -> {'Delta' if to_delta else 'Arrow'}"
                rate = figures["rows"] / figures["seconds"] if figures["seconds"] else 0
                print(
                    f"{label:<32}{int(figures['rows']):>12,}{figures['seconds']:>10.2f}"
                    f"{rate:>12,.0f}{figures['peak_mb']:>10.0f}",
                    flush=True,
                )
    finally:
        drop_source(schema)


if __name__ == "__main__":
    main()
