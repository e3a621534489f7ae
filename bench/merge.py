"""Merge tables at scale: the first load of N keys, an incremental merge of 1% changed rows, and a
full read that finds 1% deleted keys (the full-key delete detection), each with its wall time and
the process's peak RSS so far. Figures are printed, never asserted.

    python bench/merge.py [--rows 1000000] [--history]
"""

from __future__ import annotations

import argparse
import datetime
import resource
import shutil
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc

from ingestion_assets.lake.merge import merge_changes
from ingestion_assets.modes.merge import MergeRules

BASE = datetime.datetime(2024, 1, 1)


def _rows(keys: pa.Array, minute: int) -> pa.Table:
    count = len(keys)
    return pa.table(
        {
            "CustomerID": keys,
            "Name": pc.binary_join_element_wise("customer ", pc.cast(keys, pa.string()), ""),
            "Credit": pc.cast(pc.cast(pc.multiply(keys, 3), pa.int32()), pa.decimal128(12, 2)),
            "ModifiedDate": pa.array([BASE + datetime.timedelta(minutes=minute)] * count),
        }
    )


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--history", action="store_true")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="bench-merge-")
    uri = f"{folder}/customer"
    rules = MergeRules(
        keys=("CustomerID",), sequence="ModifiedDate", deletes="hard", history=args.history
    )
    keys = pa.array(range(1, args.rows + 1), pa.int64())
    print(f"merge bench: {args.rows:,} keys, history={args.history}, peak RSS {_peak_mb():.0f} MB")

    def timed(label: str, changes: pa.Table, full_read: bool) -> None:
        started = time.monotonic()
        outcome = merge_changes(
            uri,
            None,
            changes,
            rules,
            full_read=full_read,
            run_id="bench",
            label=label,
            log=lambda _: None,
        )
        elapsed = time.monotonic() - started
        print(
            f"{label:<34} {changes.num_rows:>10,} rows read  {elapsed:7.2f} s  "
            f"{changes.num_rows / elapsed:>10,.0f} rows/s  inserted {outcome.inserted:,} "
            f"updated {outcome.updated:,} deleted {outcome.deleted:,}  peak RSS {_peak_mb():.0f} MB",
            flush=True,
        )

    try:
        timed("first load", _rows(keys, 0), full_read=True)
        changed = keys.filter(pc.equal(pc.bit_wise_and(keys, 127), 0))
        timed("incremental: 1% changed", _rows(changed, 60), full_read=False)
        remainder = pc.bit_wise_and(keys, 127)
        untouched = keys.filter(pc.greater(remainder, 1))
        # the source now: the untouched rows, the changed ones as changed, 1% of keys deleted
        source = pa.concat_tables([_rows(untouched, 0), _rows(changed, 60)])
        timed("full read: 1% deleted at source", source, full_read=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
