"""Peer: a Dagster asset that reads a table with `pandas.read_sql` and returns it to
dagster-deltalake's `DeltaLakePyarrowIOManager`, materialized once for the whole table.

Runs in its own virtualenv (bench/.venv-dagster-deltalake); prints one JSON line with the rows
landed, the seconds of the run and the bytes written."""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from dagster import DagsterInstance, asset, materialize
from dagster_deltalake import DeltaLakePyarrowIOManager, LocalConfig
from landed import delta_landed


def main() -> None:
    """Materialize one PostgreSQL table into a Delta table under --out and report it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="SQLAlchemy URL of the source")
    parser.add_argument("--schema", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    query = f'SELECT * FROM "{args.schema}"."{args.table}"'

    @asset(name="sales_order_detail", key_prefix=["bench"])
    def sales_order_detail() -> pa.Table:
        engine = sa.create_engine(args.url)
        try:
            with engine.connect() as connection:
                frame = pd.read_sql(sa.text(query), connection)
        finally:
            engine.dispose()
        return pa.Table.from_pandas(frame, preserve_index=False)

    io_manager = DeltaLakePyarrowIOManager(
        root_uri=str(args.out / "lake"), storage_options=LocalConfig(), schema="bench"
    )
    instance = DagsterInstance.ephemeral(settings={"telemetry": {"enabled": False}})
    started = time.perf_counter()
    result = materialize(
        [sales_order_detail], instance=instance, resources={"io_manager": io_manager}
    )
    seconds = time.perf_counter() - started
    instance.dispose()
    if not result.success:
        raise SystemExit("the dagster-deltalake run failed")
    rows, written = delta_landed(args.out / "lake")
    print(json.dumps({"rows": rows, "seconds": seconds, "bytes_written": written}))


if __name__ == "__main__":
    main()
