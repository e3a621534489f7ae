"""The key scan of a merge table (lake/key_scan.py): the source's keys, streamed, against the
table's current keys, in bounded memory, beside the plain way (both key sets in memory, one
Arrow anti-join). Each case runs in its own process, so that its peak RSS is its own. The
source misses 1% of the table's keys. Figures are printed, never asserted.

    python bench/key_scan.py [--keys 1000000 10000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

BATCH = 100_000


def _keys(count: int, skip_every: int | None) -> Iterator[pa.RecordBatch]:
    """Keys 1..count in batches; every `skip_every`-th left out (the source's deletes)."""
    for start in range(1, count + 1, BATCH):
        keys = pa.array(range(start, min(start + BATCH, count + 1)), pa.int64())
        if skip_every:
            keys = keys.filter(pc.not_equal(pc.bit_wise_and(keys, skip_every - 1), 0))
        yield pa.record_batch({"CustomerID": keys})


def _scan(uri: str, count: int, plain: bool) -> dict[str, float]:
    from ingestion_assets.lake.key_scan import gone_keys
    from ingestion_assets.lake.merge import held_keys, key_schema
    from ingestion_assets.modes.merge import MergeRules

    rules = MergeRules(keys=("CustomerID",), sequence=None, deletes="hard")
    table = DeltaTable(uri)
    started = time.monotonic()
    if plain:
        source = pa.Table.from_batches(list(_keys(count, 128)))
        held = pa.concat_tables(list(held_keys(table, rules)))
        gone = held.join(source, ["CustomerID"], join_type="left anti").num_rows
    else:
        gone = gone_keys(
            _keys(count, 128), held_keys(table, rules), ["CustomerID"], key_schema(table, rules)
        ).gone.num_rows
    return {
        "seconds": time.monotonic() - started,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gone": gone,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        uri, count, way = args.child
        print(json.dumps(_scan(uri, int(count), way == "plain")))
        return 0
    print("key scan bench: source misses 1/128 of the table's keys; one process per case")
    for count in args.keys:
        with tempfile.TemporaryDirectory(prefix="bench-key-scan-") as folder:
            uri = f"{folder}/customer"
            schema = pa.schema([pa.field("CustomerID", pa.int64())])
            write_deltalake(uri, pa.RecordBatchReader.from_batches(schema, _keys(count, None)))
            for way in ("bucketed", "plain"):
                output = subprocess.run(
                    [sys.executable, __file__, "--child", uri, str(count), way],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                figures = json.loads(output.strip().splitlines()[-1])
                print(
                    f"  {count:>11,} keys, {way:>8}: {figures['seconds']:6.1f} s, peak RSS "
                    f"{figures['peak_mb']:5.0f} MB, {figures['gone']:,} gone"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
