"""Benchmark: a ~200-page REST stream from the demo API with latency added per page.

Serves the demo database's SalesOrderDetail through the bundled demo API (50 ms added to every
response), reads every page with 1 and with 4 parallel requests, each case in a fresh subprocess so
peak RSS is its own, and prints records/s and peak MB. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import resource
import secrets
import subprocess
import sys
import tempfile
import time

from ingestion_assets.demo.api import DemoApi
from ingestion_assets.demo.generate import DEFAULT_SCALE, create_demo_sqlite
from ingestion_assets.sources.rest import BasicAuthenticator, RestClient, RestStreamReader
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import OffsetPagination, StreamSpec

FIELDS = {
    "SalesOrderID": "int32",
    "SalesOrderDetailID": "int32",
    "CarrierTrackingNumber": "string",
    "OrderQty": "int16",
    "ProductID": "int32",
    "SpecialOfferID": "int32",
    "UnitPrice": "decimal(19,4)",
    "UnitPriceDiscount": "decimal(19,4)",
    "LineTotal": "decimal(38,6)",
    "rowguid": "string",
    "ModifiedDate": "timestamp",
}


def run_case(url: str, password: str, parallel: int, page_size: int) -> dict[str, float]:
    """Read the whole stream once; called in a subprocess by main."""
    stream = StreamSpec(
        name="SalesOrderDetail",
        path="/api/SalesOrderDetail",
        records_path="data",
        params={"ModifiedDate_gte": "{start}", "ModifiedDate_lt": "{end}"},
        partition_field="ModifiedDate",
        fields=FIELDS,
    )
    pagination = OffsetPagination(limit=page_size, total_header="X-Total-Count")
    client = RestClient("bench", url, BasicAuthenticator("demo", password))
    reader = RestStreamReader(client, stream, pagination, parallel_requests=parallel)
    start = datetime.datetime.combine(DEFAULT_SCALE.start_date, datetime.time(), datetime.UTC)
    window = PartitionWindow(
        start, start + datetime.timedelta(days=DEFAULT_SCALE.days), "all demo days"
    )
    started = time.perf_counter()
    rows = sum(batch.num_rows for batch in reader.read(window).reader)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": rows, "pages": reader.pages, "seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    """Start the demo API with latency, run each case in its own process, print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--page-size", type=int, default=80)
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        password = sys.stdin.readline().strip()
        print(json.dumps(run_case(args.url, password, args.case, args.page_size)))
        return

    with tempfile.TemporaryDirectory() as directory:
        create_demo_sqlite(pathlib.Path(directory), DEFAULT_SCALE)
        password = secrets.token_urlsafe(12)
        latency = args.latency_ms / 1000
        with DemoApi(pathlib.Path(directory), "demo", password, latency_seconds=latency) as api:
            print(f"demo API at {api.url}, {args.latency_ms:.0f} ms added per page", flush=True)
            print(
                f"{'parallel requests':<20}{'pages':>8}{'records':>10}{'seconds':>10}"
                f"{'records/s':>12}{'peak MB':>10}"
            )
            for parallel in (1, 4):
                output = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--case",
                        str(parallel),
                        "--url",
                        api.url,
                        "--page-size",
                        str(args.page_size),
                    ],
                    input=password + "\n",
                    check=True,
                    capture_output=True,
                    text=True,
                )
                figures = json.loads(output.stdout.strip().splitlines()[-1])
                rate = figures["rows"] / figures["seconds"]
                print(
                    f"{parallel:<20}{int(figures['pages']):>8}{int(figures['rows']):>10,}"
                    f"{figures['seconds']:>10.2f}{rate:>12,.0f}{figures['peak_mb']:>10.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
