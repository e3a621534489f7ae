"""Drivers: one SQL query read into Arrow by an Arrow-native driver, counted and dropped.

Runs in its own virtualenv (bench/.venv-drivers); `python drivers_sql.py CASE --query ...` prints
one JSON line with the rows read, the seconds of the read alone (connect, query, every batch),
`bytes_written` 0 and a `note` naming the Arrow types the driver produced for the columns whose
type a driver may change (numerics, uuid, timestamp)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable

import pyarrow as pa

# the columns whose Arrow type tells whether a driver keeps the source's types exact
# (this project: decimal128(19, 4), decimal128(38, 6), string, timestamp[us])
TYPED_COLUMNS = ("UnitPrice", "LineTotal", "rowguid", "ModifiedDate")


def _count(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> tuple[int, pa.Schema]:
    """Rows of every batch (each dropped once counted), and the schema they came with."""
    return sum(batch.num_rows for batch in batches), schema


def read_adbc(args: argparse.Namespace) -> tuple[int, pa.Schema]:
    """ADBC's PostgreSQL driver (libpq, COPY in binary), streamed by `fetch_record_batch()`."""
    import adbc_driver_postgresql.dbapi

    with (
        adbc_driver_postgresql.dbapi.connect(args.uri) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(args.query)
        reader = cursor.fetch_record_batch()
        return _count(reader.schema, reader)


def read_connectorx(args: argparse.Namespace) -> tuple[int, pa.Schema]:
    """ConnectorX (Rust, binary protocol, one partition), as an Arrow record-batch stream."""
    import connectorx

    reader = connectorx.read_sql(
        args.uri, args.query, return_type="arrow_stream", batch_size=args.batch_size
    )
    assert isinstance(reader, pa.RecordBatchReader)
    return _count(reader.schema, reader)


def read_arrow_odbc(args: argparse.Namespace) -> tuple[int, pa.Schema]:
    """arrow-odbc: bulk fetches through an ODBC driver into Arrow batches."""
    from arrow_odbc import read_arrow_batches_from_odbc

    reader = read_arrow_batches_from_odbc(
        args.query, connection_string=args.odbc, batch_size=args.batch_size
    )
    return _count(reader.schema, reader)


CASES: dict[str, Callable[[argparse.Namespace], tuple[int, pa.Schema]]] = {
    "driver-adbc": read_adbc,
    "driver-connectorx": read_connectorx,
    "driver-arrow-odbc": read_arrow_odbc,
}


def type_note(schema: pa.Schema) -> str:
    """`UnitPrice decimal128(19, 4), ...` for the columns of TYPED_COLUMNS the schema has."""
    return "Arrow types: " + ", ".join(
        f"{name} {schema.field(name).type}" for name in TYPED_COLUMNS if name in schema.names
    )


def main() -> None:
    """Read the query with the driver named on the command line and report it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--query", required=True, help="the SQL query to read")
    parser.add_argument("--uri", default="", help="postgresql:// URI (ADBC, ConnectorX)")
    parser.add_argument("--odbc", default="", help="ODBC connection string (arrow-odbc)")
    parser.add_argument("--batch-size", type=int, default=50_000)
    args = parser.parse_args()

    started = time.perf_counter()
    rows, schema = CASES[args.case](args)
    seconds = time.perf_counter() - started
    result = {"rows": rows, "seconds": seconds, "bytes_written": 0, "note": type_note(schema)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
