"""Peer: dlt's `rest_api` source (offset paginator, basic auth) into a filesystem Delta table.

Runs in its own virtualenv (bench/.venv-dlt); the API password comes on standard input. Prints
one JSON line with the records landed, the seconds of the load and the bytes written."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

# no telemetry: every request this benchmark makes stays on 127.0.0.1
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"

import dlt
from dlt.sources.rest_api import rest_api_source
from landed import delta_landed


def main() -> None:
    """Load one stream of the demo API into a Delta table under --out and report it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="base URL of the API")
    parser.add_argument("--username", required=True)
    parser.add_argument("--path", required=True, help="the stream's endpoint path")
    parser.add_argument("--page-size", type=int, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    password = sys.stdin.readline().strip()

    started = time.perf_counter()
    source = rest_api_source(
        {
            "client": {
                "base_url": args.url,
                "auth": {"type": "http_basic", "username": args.username, "password": password},
                "paginator": {
                    "type": "offset",
                    "limit": args.page_size,
                    "offset_param": "offset",
                    "limit_param": "limit",
                    "total_path": "total",
                },
            },
            "resources": [
                {
                    "name": "sales_order_detail",
                    "endpoint": {"path": args.path.lstrip("/"), "data_selector": "data"},
                }
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_rest",
        destination=dlt.destinations.filesystem(bucket_url=(args.out / "lake").as_uri()),
        dataset_name="bench",
        pipelines_dir=str(args.out / "pipelines"),
    )
    pipeline.run(source, table_format="delta")
    seconds = time.perf_counter() - started

    rows, written = delta_landed(args.out / "lake")
    print(json.dumps({"rows": rows, "seconds": seconds, "bytes_written": written}))


if __name__ == "__main__":
    main()
