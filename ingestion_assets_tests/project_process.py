"""A separate process that materializes one asset of a project file for a window, as a run
worker would (used to stop a run with SIGTERM, or to fail its write, in the middle).

    python -m ingestion_assets_tests.project_process PROJECT_FILE ASSET FIRST LAST
        [--file-size-limit BYTES] [--source NAME]

ASSET is the table's key name under the source `src` (or --source). --file-size-limit sets RLIMIT_FSIZE: a file
written past it fails with EFBIG, as on a full disk. Exits 0 when the run succeeded, 1 when it
failed; prints `run failed` on stderr once the failure is recorded. SIGUSR1 writes every
thread's stack to stderr (what a test prints when the process outlives its bound)."""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import pathlib
import resource
import signal
import sys

from dagster import AssetKey, DagsterInstance, materialize

from ingestion_assets.definitions import build_definitions
from ingestion_assets.project import parse_project


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("project", type=pathlib.Path)
    parser.add_argument("asset")
    parser.add_argument("first", type=datetime.date.fromisoformat)
    parser.add_argument("last", type=datetime.date.fromisoformat)
    parser.add_argument("--file-size-limit", type=int)
    parser.add_argument("--source", default="src")
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    spec = parse_project(args.project.read_text(encoding="utf-8"), str(args.project))
    defs = build_definitions(spec)
    if args.file_size_limit is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.file_size_limit, args.file_size_limit))
    result = materialize(
        [defs.get_assets_def(AssetKey([args.source, args.asset]))],
        instance=DagsterInstance.ephemeral(),
        resources=defs.resources,
        tags={
            "dagster/asset_partition_range_start": args.first.isoformat(),
            "dagster/asset_partition_range_end": args.last.isoformat(),
        },
        raise_on_error=False,
    )
    if not result.success:
        print("run failed", file=sys.stderr, flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
