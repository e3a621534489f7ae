"""The keys a table holds that its source no longer does, found in bounded memory.

An incremental merge reads only the rows changed since its cursor, so it never sees a row
deleted at the source. A key scan reads the source's keys alone and compares them with the
table's current keys. Holding both sets at once costs memory in proportion to the table (two
int64 keys sets of 50,000,000 rows: 800 MB, before the join's hash table); here each side is
spilled as it streams by into BUCKETS local Arrow files by a hash of the key (`lake/keys.py`,
equal keys share a bucket whatever side they come from), and each bucket is then compared on
its own: what is held at once is one bucket of each side (1/BUCKETS of the keys) and a buffer
of BUFFER_ROWS rows. Measured in bench/key_scan.py: 30,000,000 int64 keys in 328 MB peak RSS
(both sets in memory and one join: 2.4 GB).
Exact: a bucket compares the true key values, the hash only decides where they go. Keys of a
type without a columnar hash (floats, nested) all go to one bucket: still exact, not bounded.
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from ingestion_assets.lake.keys import BUCKETS, BUFFER_ROWS, hash_buckets


@dataclass
class _Side:
    """One side's keys, buffered, then spilled by bucket to Arrow IPC files."""

    folder: pathlib.Path
    name: str
    schema: pa.Schema
    keys: list[str]
    rows: int = 0
    _buffer: list[pa.Table] = field(default_factory=list)
    _buffered: int = 0
    _writers: dict[int, pa.ipc.RecordBatchFileWriter] = field(default_factory=dict)

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = pa.table(batch) if isinstance(batch, pa.RecordBatch) else batch
        table = table.select(self.keys).cast(self.schema)
        self.rows += table.num_rows
        self._buffer.append(table)
        self._buffered += table.num_rows
        if self._buffered >= BUFFER_ROWS:
            self._spill()

    def _spill(self) -> None:
        if not self._buffered:
            return
        rows = pa.concat_tables(self._buffer).combine_chunks()
        self._buffer, self._buffered = [], 0
        for bucket, part in hash_buckets(rows, self.keys, level=0):
            writer = self._writers.get(bucket)
            if writer is None:
                path = self.folder / f"{self.name}-{bucket}.arrow"
                writer = self._writers[bucket] = pa.ipc.new_file(str(path), self.schema)
            writer.write_table(part)

    def close(self) -> None:
        self._spill()
        for writer in self._writers.values():
            writer.close()

    def bucket(self, number: int) -> pa.Table:
        if number not in self._writers:
            return self.schema.empty_table()
        with pa.OSFile(str(self.folder / f"{self.name}-{number}.arrow")) as source:
            return pa.ipc.open_file(source).read_all()


@dataclass(frozen=True)
class KeyScan:
    """What a scan compared and found."""

    gone: pa.Table
    source_keys: int
    table_keys: int


def gone_keys(
    source: Iterable[pa.RecordBatch | pa.Table],
    held: Iterable[pa.RecordBatch | pa.Table],
    keys: list[str],
    schema: pa.Schema,
    progress: Callable[[str, int], None] | None = None,
) -> KeyScan:
    """The keys of `held` (the table's current keys) that `source` does not hold, both streamed
    as batches with the key columns (cast to `schema`, the table's key types, so that equal
    keys hash alike); `progress(side, rows)` after each batch."""
    with tempfile.TemporaryDirectory(prefix="ingestion-key-scan-") as folder:
        sides = {
            name: _Side(pathlib.Path(folder), name, schema, keys) for name in ("source", "table")
        }
        for name, batches in (("source", source), ("table", held)):
            side = sides[name]
            for batch in batches:
                side.add(batch)
                if progress is not None:
                    progress(name, side.rows)
            side.close()
        gone = [
            sides["table"]
            .bucket(number)
            .join(sides["source"].bucket(number), keys, join_type="left anti", use_threads=False)
            for number in range(BUCKETS)
        ]
        found = pa.concat_tables(gone).combine_chunks() if gone else schema.empty_table()
        return KeyScan(found, sides["source"].rows, sides["table"].rows)
