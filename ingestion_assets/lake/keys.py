"""The primary keys of a staged write, checked for uniqueness exactly in bounded memory.

The audit must find a key repeated anywhere in a window (three years of days, millions of rows)
or shared with a row the commit keeps. Keeping every staged key and grouping them at once made
memory grow with the window: for 2,000,000 rows of SalesOrderDetail (a two-column key) Arrow's
allocations peaked at 174 MB in that one aggregation, the run at 568 MB. Here the keys of at most
BUFFER_ROWS rows are held; beyond that they are spilled to local Arrow files, split into
BUCKETS buckets by a hash of the key, so that equal keys always share a bucket; each bucket is
then grouped on its own (and split again by other bits of the hash when it is still too large).
Exactness stays: a bucket groups the true key values, the hash only decides where they go. Rows
with a null key are counted (and sampled) per day as they stream by; duplicates are reported per
day with their copies, as counts and samples: what the audit reports is bounded by days and
samples, not rows.

The hash is columnar (pyarrow.compute, no per-row Python): integers, dates and timestamps by
value, decimals by their text, strings and binary by their length and first and last 8 bytes.
Keys of other types (floats, nested) all go to one bucket: still exact, only not bounded."""

from __future__ import annotations

import datetime
import pathlib
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# rows whose keys are held in memory before they are spilled to bucket files (12 bytes a row for
# a key of two int32 and the day; a bucket's aggregation needs about 80 bytes a row)
BUFFER_ROWS = 256 * 1024
# buckets the keys are split into when spilled; a bucket still above BUFFER_ROWS is split again
# by the next bits of the hash (64 bits give up to SPLIT_LEVELS levels)
BUCKET_BITS = 6
BUCKETS = 1 << BUCKET_BITS
SPLIT_LEVELS = 64 // BUCKET_BITS
# offending keys kept as examples, per day (and for the whole window)
SAMPLE_SIZE = 10

_GOLDEN = pa.scalar(0x9E3779B97F4A7C15, pa.uint64())
_EMPTY_BYTES = pa.scalar(b"\0" * 8, pa.binary())


def _uint64(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.uint64())


def _mix(values: pa.Array) -> pa.Array:
    """A 64-bit finalizer (splitmix64's): every input bit moves every output bit."""
    values = pc.bit_wise_xor(values, pc.shift_right(values, _uint64(30)))
    values = pc.multiply(values, _uint64(0xBF58476D1CE4E5B9))
    values = pc.bit_wise_xor(values, pc.shift_right(values, _uint64(27)))
    values = pc.multiply(values, _uint64(0x94D049BB133111EB))
    return pc.bit_wise_xor(values, pc.shift_right(values, _uint64(31)))


def _eight_bytes(values: pa.Array) -> pa.Array:
    """Binary values of exactly 8 bytes, read as unsigned integers."""
    fixed = values.cast(pa.binary(8))
    return pa.Array.from_buffers(pa.uint64(), len(fixed), [None, fixed.buffers()[1]], fixed.offset)


def _codes(values: pa.Array) -> list[pa.Array] | None:
    """Unsigned integers equal for equal values of a key column; None for a type without one
    consistent with Arrow's grouping (floats: -0.0 and 0.0 group together)."""
    kind = values.type
    if pa.types.is_decimal(kind):
        values, kind = values.cast(pa.string()), pa.string()
    if pa.types.is_fixed_size_binary(kind) or pa.types.is_large_binary(kind):
        values, kind = values.cast(pa.binary()), pa.binary()
    if pa.types.is_large_string(kind) or pa.types.is_string(kind):
        values, kind = values.cast(pa.binary()), pa.binary()
    if pa.types.is_binary(kind):
        first = pc.binary_slice(pc.binary_join_element_wise(values, _EMPTY_BYTES, b""), 0, 8)
        last = pc.binary_slice(pc.binary_join_element_wise(_EMPTY_BYTES, values, b""), -8)
        length = pc.binary_length(values).cast(pa.uint64())
        return [length, _eight_bytes(first), _eight_bytes(last)]
    if pa.types.is_boolean(kind):
        return [values.cast(pa.uint8()).cast(pa.uint64())]
    if pa.types.is_date32(kind):
        values = values.cast(pa.int32())
    elif pa.types.is_date64(kind) or pa.types.is_timestamp(kind) or pa.types.is_duration(kind):
        values = values.cast(pa.int64())
    elif not pa.types.is_integer(values.type):
        return None
    return [values.cast(pa.int64()).cast(pa.uint64(), safe=False)]


def key_hashes(rows: pa.Table, key: Sequence[str]) -> pa.Array | None:
    """A 64-bit hash of each row's (non-null) key; None when a key column has no hash here."""
    hashed: pa.Array | None = None
    for name in key:
        codes = _codes(rows.column(name).combine_chunks())
        if codes is None:
            return None
        for code in codes:
            hashed = (
                _mix(code) if hashed is None else _mix(pc.add(pc.multiply(hashed, _GOLDEN), code))
            )
    return hashed


def hash_buckets(rows: pa.Table, key: Sequence[str], level: int) -> Iterator[tuple[int, pa.Table]]:
    """`rows` split by BUCKET_BITS bits of their keys' hash (the level-th group of bits), as
    (bucket, rows) for every non-empty bucket; everything in bucket 0 without a hash."""
    hashed = key_hashes(rows, key)
    if hashed is None or rows.num_rows == 0:
        if rows.num_rows:
            yield 0, rows
        return
    shift = 64 - BUCKET_BITS * (level + 1)
    bucket = pc.bit_wise_and(pc.shift_right(hashed, _uint64(shift)), _uint64(BUCKETS - 1))
    order = pc.sort_indices(bucket)
    ordered = rows.take(order)
    counts = pc.value_counts(bucket)
    start = 0
    for value, count in sorted(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    ):
        yield value, ordered.slice(start, count)
        start += count


@dataclass
class DayKeys:
    """What one day (or the whole window, day None) shows of its keys: how many keys repeat
    and how many rows have a null key, with a few examples of each."""

    duplicate_keys: int = 0
    null_keys: int = 0
    duplicate_sample: list[dict[str, Any]] = field(default_factory=list)
    null_sample: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class KeyFindings:
    """The offending keys of a judged set of rows, by day; `total` holds the whole set's
    (distinct duplicated keys, counted once even across days, and those only among kept rows)."""

    key: tuple[str, ...]
    by_day: dict[datetime.date, DayKeys] = field(default_factory=dict)
    total: DayKeys = field(default_factory=DayKeys)

    def day(self, day: datetime.date) -> DayKeys:
        """The findings of one day (none: a clean day)."""
        return self.by_day.get(day) or DayKeys()

    def of_day(self, day: datetime.date) -> DayKeys:
        """The findings of one day, to add to."""
        return self.by_day.setdefault(day, DayKeys())


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


def _runs_by_day(rows: pa.Table, column: str) -> Iterator[tuple[datetime.date, pa.Table]]:
    """`rows` grouped by their day `column`, in day order, as (day, rows of that day)."""
    ordered = rows.take(pc.sort_indices(rows, [(column, "ascending")]))
    counts = pc.value_counts(ordered.column(column))
    start = 0
    for day, count in sorted(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    ):
        yield day, ordered.slice(start, count)
        start += count


class KeyLedger:
    """The key columns and day of every row staged (and of the rows the commit keeps), judged
    for null and repeated keys exactly, holding at most BUFFER_ROWS rows of keys in memory."""

    def __init__(
        self, key_fields: Sequence[pa.Field], day: str, buffer_rows: int | None = None
    ) -> None:
        """`key_fields`: the key columns' fields; `day`: the column of each row's day;
        `buffer_rows`: rows of keys held in memory (BUFFER_ROWS)."""
        self.key = tuple(item.name for item in key_fields)
        self.day = day
        # the rows the commit keeps have no day in the window: they carry a null one (a key
        # that holds the day, a layer's `(_partition_date, ...)`, carries it as it is)
        day_field = [] if day in self.key else [pa.field(day, pa.date32())]
        self.schema = pa.schema([*key_fields, *day_field])
        self.buffer_rows = buffer_rows or BUFFER_ROWS
        self.findings = KeyFindings(self.key)
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._directory: pathlib.Path | None = None
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._generation = 0
        self._cleanup: Callable[[], object] | None = None

    @property
    def spilled(self) -> bool:
        """Whether keys went to bucket files (more rows than BUFFER_ROWS)."""
        return self._directory is not None

    def add(self, rows: pa.RecordBatch | pa.Table) -> None:
        """Take in staged rows (key columns and the day); null keys are judged now."""
        table = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
        table = table.select(list(self.schema.names)).cast(self.schema)
        mask = self._null_mask(table)
        if mask is not None:
            self._count_nulls(table.filter(mask))
            table = table.filter(pc.invert(mask))
        self._hold(table)

    def add_kept(self, rows: pa.Table) -> None:
        """Take in the key columns of rows the commit keeps (outside the window); a kept row
        with a null key is the table's, not this run's: it is left out."""
        if rows.num_rows == 0 or self.day in self.key:
            # a key that holds the day never meets a row of another day
            return
        keys = rows.select(list(self.key)).cast(self.schema.remove(len(self.key)))
        keys = keys.drop_null()
        keys = keys.append_column(self.schema.field(self.day), pa.nulls(keys.num_rows, pa.date32()))
        self._hold(keys)

    def first_values(self) -> pa.Array:
        """The distinct values of the key's first column among the rows taken in so far."""
        name = self.key[0]
        parts = [pc.unique(table.column(name)) for table in self._buffer]
        if self.spilled:
            self._close_writers()
            for paths in self._bucket_files().values():
                parts.extend(pc.unique(_read(path).column(name)) for path in paths)
        kind = self.schema.field(name).type
        values = pc.unique(pa.chunked_array(parts, kind)) if parts else pa.array([], kind)
        return values.drop_null()

    def judge(self) -> KeyFindings:
        """Group the keys (bucket by bucket once spilled) and record every repeated key on the
        days of its staged rows; the spilled files are removed."""
        try:
            if not self.spilled:
                rows = pa.concat_tables(self._buffer) if self._buffer else self.schema.empty_table()
                self._buffer, self._buffered = [], 0
                self._judge_rows(rows)
            else:
                self._spill()
                self._close_writers()
                for paths in self._bucket_files().values():
                    self._judge_files(paths, level=1)
            return self.findings
        finally:
            self.close()

    def close(self) -> None:
        """Remove the spilled files (also done when the ledger is collected)."""
        self._close_writers()
        self._buffer, self._buffered = [], 0
        if self._cleanup is not None:
            self._cleanup()

    def _null_mask(self, table: pa.Table) -> pa.ChunkedArray | None:
        """Which rows have a null in a key column; None when none has."""
        mask = pc.is_null(table.column(self.key[0]))
        for name in self.key[1:]:
            mask = pc.or_(mask, pc.is_null(table.column(name)))
        return mask if pc.any(mask).as_py() else None

    def _count_nulls(self, nulls: pa.Table) -> None:
        total = self.findings.total
        total.null_keys += nulls.num_rows
        for day, rows in _runs_by_day(nulls, self.day):
            found = self.findings.of_day(day)
            found.null_keys += rows.num_rows
            for sample in (found.null_sample, total.null_sample):
                if len(sample) < SAMPLE_SIZE:
                    sample.extend(
                        {name: _plain(value) for name, value in row.items()}
                        for row in rows.slice(0, SAMPLE_SIZE - len(sample)).to_pylist()
                    )

    def _hold(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered += table.num_rows
        if self._buffered > self.buffer_rows:
            self._spill()

    def _spill(self) -> None:
        """Append the buffered keys to their buckets' files."""
        if not self._buffer:
            return
        if self._directory is None:
            self._directory = pathlib.Path(tempfile.mkdtemp(prefix="ingestion-keys-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._directory), True)
        rows = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        for bucket, part in hash_buckets(rows, self.key, level=0):
            writer = self._writers.get(bucket)
            if writer is None:
                # a file per bucket and generation: closed files are never reopened
                path = self._directory / f"{bucket:02d}-{self._generation}.arrow"
                writer = self._writers[bucket] = pa.ipc.new_stream(str(path), self.schema)
            writer.write_table(part)

    def _close_writers(self) -> None:
        if self._writers:
            self._generation += 1
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _bucket_files(self) -> dict[str, list[pathlib.Path]]:
        """The closed spill files, by bucket."""
        files: dict[str, list[pathlib.Path]] = {}
        if self._directory is not None:
            for path in sorted(self._directory.glob("*.arrow")):
                files.setdefault(path.stem.rsplit("-", 1)[0], []).append(path)
        return files

    def _judge_files(self, paths: list[pathlib.Path], level: int) -> None:
        """Judge one bucket's files: at once when they fit, else split by the next bits."""
        rows = pa.concat_tables([_read(path) for path in paths])
        for path in paths:
            path.unlink()
        parts = (
            dict(hash_buckets(rows, self.key, level))
            if rows.num_rows > self.buffer_rows and level < SPLIT_LEVELS
            else {}
        )
        if len(parts) < 2:
            # small enough, or every key hashes alike (a type without a hash): exact in memory
            self._judge_rows(rows)
            return
        del rows
        stem = paths[0].stem.rsplit("-", 1)[0]
        splits = []
        for bucket, part in parts.items():
            split = paths[0].with_name(f"{stem}.{bucket:02d}-0.arrow")
            with pa.ipc.new_stream(str(split), self.schema) as writer:
                writer.write_table(part)
            splits.append(split)
        parts.clear()
        for split in splits:
            self._judge_files([split], level + 1)

    def _judge_rows(self, rows: pa.Table) -> None:
        """Record the repeated keys of one bucket (every copy of a key is in it)."""
        key = list(self.key)
        if rows.num_rows < 2:
            return
        counted = rows.select(key).group_by(key, use_threads=False).aggregate([([], "count_all")])
        duplicated = counted.filter(pc.greater(counted.column("count_all"), 1))
        del counted
        if duplicated.num_rows == 0:
            return
        total = self.findings.total
        total.duplicate_keys += duplicated.num_rows
        if len(total.duplicate_sample) < SAMPLE_SIZE:
            total.duplicate_sample.extend(
                {name: _plain(row[name]) for name in key} | {"copies": row["count_all"]}
                for row in duplicated.slice(
                    0, SAMPLE_SIZE - len(total.duplicate_sample)
                ).to_pylist()
            )
        staged = rows.filter(pc.is_valid(rows.column(self.day)))
        offending = staged.join(duplicated, keys=key, join_type="inner")
        if offending.num_rows == 0:
            return
        # a key once per day it occurs on, with its copies in the whole set
        distinct = offending.group_by([self.day, *key], use_threads=False).aggregate(
            [("count_all", "max")]
        )
        for day, on_day in _runs_by_day(distinct, self.day):
            found = self.findings.of_day(day)
            found.duplicate_keys += on_day.num_rows
            if len(found.duplicate_sample) < SAMPLE_SIZE:
                found.duplicate_sample.extend(
                    {name: _plain(row[name]) for name in key} | {"copies": row["count_all_max"]}
                    for row in on_day.slice(
                        0, SAMPLE_SIZE - len(found.duplicate_sample)
                    ).to_pylist()
                )


def _read(path: pathlib.Path) -> pa.Table:
    """A bucket file read into memory (not mapped: mapped pages would count as the process's)."""
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()
