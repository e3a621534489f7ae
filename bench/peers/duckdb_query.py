"""One DuckDB query on a Delta table, timed: through the delta extension (`delta_scan`, loaded by
path from the `duckdb-extension-delta` package, nothing downloaded) or through the table's
current files (`read_parquet`). Reads a JSON request on stdin, prints one JSON line."""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import time

import duckdb
import duckdb_extension_delta


def main() -> None:
    """Run the request's query `runs` times; the median seconds and the first row's count."""
    request = json.loads(sys.stdin.read())
    connection = duckdb.connect()
    if request["reader"] == "delta_scan":
        package = pathlib.Path(duckdb_extension_delta.__file__).parent
        extension = next(package.rglob("*.duckdb_extension"))
        connection.execute(f"LOAD '{extension}'")
        source = f"delta_scan('{request['table']}')"
    else:
        source = "read_parquet([" + ", ".join(f"'{path}'" for path in request["files"]) + "])"
    sql = request["sql"].replace("{t}", source)
    seconds, rows = [], 0
    for _ in range(request["runs"]):
        started = time.perf_counter()
        rows = connection.execute(sql).fetchall()[0][0]
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"seconds": statistics.median(seconds), "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
