"""Peer: dlt's `sql_database` source (pyarrow backend) into a filesystem Delta table.

Runs in its own virtualenv (bench/.venv-dlt); prints one JSON line with the rows landed, the
seconds of the load and the bytes written."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

# no telemetry: every request this benchmark makes stays on 127.0.0.1
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"

import dlt
from dlt.sources.sql_database import sql_table
from landed import delta_landed


def main() -> None:
    """Load one PostgreSQL table into a Delta table under --out and report it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="SQLAlchemy URL of the source")
    parser.add_argument("--schema", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--chunk-size", type=int, default=50_000)
    args = parser.parse_args()

    started = time.perf_counter()
    resource = sql_table(
        credentials=args.url,
        schema=args.schema,
        table=args.table,
        backend="pyarrow",
        chunk_size=args.chunk_size,
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_sql",
        destination=dlt.destinations.filesystem(bucket_url=(args.out / "lake").as_uri()),
        dataset_name="bench",
        pipelines_dir=str(args.out / "pipelines"),
    )
    pipeline.run(resource, table_format="delta")
    seconds = time.perf_counter() - started

    rows, written = delta_landed(args.out / "lake")
    print(json.dumps({"rows": rows, "seconds": seconds, "bytes_written": written}))


if __name__ == "__main__":
    main()
