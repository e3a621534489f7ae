"""Parquet data files inside a Delta table, clustered by month, and reading ahead of the writer.

The Delta tables are not Hive-partitioned: a day of a typical operational table is a few hundred
kilobytes, and one folder per day would leave thousands of tiny files after a backfill. Instead
rows carry `_partition_date` as a column and land in files that each hold the days of one month
(rolled at a size limit), with every column's statistics in the add action (stats.py). Replacing
a window removes the files that lie inside it and rewrites the few rows of files that straddle
its edges, all in one commit.

Measured against Hive partitions by month written by delta-rs (bench/layout.py; 2,000,000 rows
over 1,096 days, see bench/README.md): the same 37 files, the backfill in about half the time
and 60% of the memory, the nightly run and DuckDB scans on other columns faster, compaction a
few tens of milliseconds slower, the re-run of a day inside a month about even."""

from __future__ import annotations

import contextlib
import datetime
import pathlib
import queue
import re
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.fs import DeltaStorageHandler
from deltalake.transaction import AddAction

from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets.lake.stats import FileStatistics
from ingestion_assets.sources.cancel import CancelScope

# rows buffered per file before they are written as one Parquet row group
ROW_GROUP_ROWS = 64 * 1024
# rows buffered across all open files: rows of many months interleaved (no ORDER BY at the
# source) make smaller row groups instead of more memory
PENDING_ROWS = 128 * 1024
# a file is closed once it reaches this size, whatever month it holds
DEFAULT_MAX_FILE_BYTES = 128 << 20
# batches read ahead of the writer: the source keeps sending while files are encoded
READ_AHEAD_BATCHES = 4
# how long a reader told to stop (its source cancelled) gets to end: a failed or cancelled
# run's process exits within seconds, whatever the source does
READ_AHEAD_STOP_SECONDS = 5.0


def month_of(day: datetime.date) -> tuple[int, int]:
    """The file bucket a day belongs to."""
    return day.year, day.month


class ClusteredFileWriter:
    """Writes batches as Parquet files inside the table, one month of days per file.

    Input in day order (as windowed queries return it) keeps one file open at a time, so memory
    stays flat whatever the number of days; out-of-order input keeps at most `max_open` files
    open, closing the least recently used. Nothing is visible until the add actions are
    committed."""

    def __init__(
        self,
        filesystem: pa_fs.FileSystem,
        schema: pa.Schema,
        max_open: int = 16,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        self.filesystem = filesystem
        self.schema = schema
        self.max_open, self.max_file_bytes = max_open, max_file_bytes
        self.open: OrderedDict[tuple[int, int], _OpenFile] = OrderedDict()
        self.actions: list[AddAction] = []
        self.written: list[str] = []
        self.pending_rows = 0
        self.landed = False

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Append rows (with `_partition_date`, in the table's schema) to their months' files."""
        if batch.num_rows == 0:
            return
        days = batch.column(PARTITION_DATE)
        bounds = pc.min_max(days)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if month_of(low) == month_of(high):
            self._append(month_of(low), batch)
            return
        months = pc.add(pc.multiply(pc.year(days), 100), pc.month(days))
        for value in pc.unique(months).to_pylist():
            self._append(divmod(value, 100), batch.filter(pc.equal(months, value)))

    def _append(self, month: tuple[int, int], rows: pa.RecordBatch | pa.Table) -> None:
        current = self.open.get(month)
        if current is None:
            current = self._start(month)
        self.open.move_to_end(month)
        current.add(rows)
        self.pending_rows += rows.num_rows
        if current.pending_rows >= ROW_GROUP_ROWS:
            self._flush(current)
            if current.stream.tell() >= self.max_file_bytes:
                self._close(month)
        while self.pending_rows > PENDING_ROWS:
            self._flush(max(self.open.values(), key=lambda item: item.pending_rows))

    def _flush(self, current: _OpenFile) -> None:
        self.pending_rows -= current.pending_rows
        current.flush()

    def _start(self, month: tuple[int, int]) -> _OpenFile:
        while len(self.open) >= self.max_open:
            self._close(next(iter(self.open)))
        path = f"part-{uuid.uuid4()}-c000.zstd.parquet"
        stream = self.filesystem.open_output_stream(path)
        self.written.append(path)
        writer = pq.ParquetWriter(stream, self.schema, compression="zstd")
        opened = _OpenFile(path, stream, writer, FileStatistics(self.schema))
        self.open[month] = opened
        return opened

    def _close(self, month: tuple[int, int]) -> None:
        current = self.open.pop(month)
        self._flush(current)
        current.writer.close()
        current.stream.close()
        size = self.filesystem.get_file_info(current.path).size
        self.actions.append(
            AddAction(
                path=current.path,
                size=int(size or 0),
                partition_values={},
                modification_time=int(time.time() * 1000),
                data_change=True,
                stats=current.statistics.json(),
            )
        )

    def finish(self) -> list[AddAction]:
        """Close every file; the add actions to commit."""
        while self.open:
            self._close(next(iter(self.open)))
        return self.actions

    def committed(self) -> None:
        """The add actions are in a table version now: `abort` must leave the files alone."""
        self.landed = True

    def abort(self) -> None:
        """Remove what was written (best effort: a vacuum removes any leftover), unless it was
        committed (an interrupt that arrives once the commit landed must not delete its files)."""
        for current in list(self.open.values()):
            # a full disk fails the footer's write too: the stream is closed all the same
            with contextlib.suppress(Exception):
                current.writer.close()
            with contextlib.suppress(Exception):
                current.stream.close()
        self.open.clear()
        if self.landed:
            return
        for path in self.written:
            with contextlib.suppress(Exception):
                self.filesystem.delete_file(path)


@dataclass
class _OpenFile:
    path: str
    stream: Any
    writer: pq.ParquetWriter
    statistics: FileStatistics
    pending: list[pa.RecordBatch] = field(default_factory=list)
    pending_rows: int = 0

    def add(self, rows: pa.RecordBatch | pa.Table) -> None:
        self.pending.extend(rows.to_batches() if isinstance(rows, pa.Table) else [rows])
        self.pending_rows += rows.num_rows

    def flush(self) -> None:
        """Write what is buffered as one row group (small batches would make many)."""
        if self.pending:
            rows = pa.Table.from_batches(self.pending)
            self.statistics.add(rows)
            self.writer.write_table(rows, row_group_size=None)
            self.pending, self.pending_rows = [], 0


def conform(rows: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows read back from a data file, in the table's current schema: columns added to the table
    after the file was written come back as nulls."""
    table = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def local_root(uri: str) -> pathlib.Path | None:
    """The folder of a local table (a path, or a `file://` URL, whose escapes are decoded as
    delta-rs decodes them); None for an object store."""
    parts = urllib.parse.urlparse(uri)
    if parts.scheme == "file":
        return pathlib.Path(urllib.request.url2pathname(parts.path)).resolve()
    if "://" in uri:
        return None
    return pathlib.Path(uri).resolve()


def _native_filesystem(root: pathlib.Path) -> pa_fs.FileSystem:
    return pa_fs.SubTreeFileSystem(str(root), pa_fs.LocalFileSystem())


def table_filesystem(uri: str, storage_options: dict[str, str] | None) -> pa_fs.FileSystem:
    """A filesystem rooted at the table: Arrow's native one for a local folder (fast), delta-rs's
    object-store handler (same credentials as the table) for s3://, az://, gs://."""
    root = local_root(uri)
    if root is None:
        return pa_fs.PyFileSystem(DeltaStorageHandler(uri, storage_options))
    root.mkdir(parents=True, exist_ok=True)
    return _native_filesystem(root)


# a data file path Arrow's local filesystem opens as it stands (delta-rs writes a partition
# value's escapes into the folder name as they are in the log; other writers may not)
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._=/-]+")


def delta_dataset(table: DeltaTable) -> ds.Dataset:
    """`table.to_pyarrow_dataset()`, its files read through Arrow's own filesystem when the
    table is a local folder whose file paths are plain. delta-rs's default reads each file
    through a Python file object (its storage handler): every read then takes the GIL, and a
    scan still in flight when the interpreter exits aborts the process (the file object's
    destructor waits for the GIL on an Arrow I/O thread; seen at the end of `make demo` on a
    loaded machine). Object stores keep delta-rs's handler (the table's credentials)."""
    dataset = table.to_pyarrow_dataset()
    root = local_root(table.table_uri)
    if root is None:
        return dataset
    fragments = list(dataset.get_fragments())
    if not all(_PLAIN_PATH.fullmatch(fragment.path) for fragment in fragments):
        return dataset
    native = _native_filesystem(root)
    return ds.FileSystemDataset(
        [
            dataset.format.make_fragment(
                fragment.path, filesystem=native, partition_expression=fragment.partition_expression
            )
            for fragment in fragments
        ],
        dataset.schema,
        dataset.format,
        native,
    )


_END = object()


def read_ahead(
    batches: Iterable[pa.RecordBatch], depth: int = READ_AHEAD_BATCHES
) -> Iterator[pa.RecordBatch]:
    """Yield `batches`, read by a background thread at most `depth` batches ahead.

    The source (a database cursor, HTTP pages) keeps producing while the caller encodes and
    writes files, so reading and writing overlap on two cores; the bounded queue keeps memory
    flat. The source is opened, read and closed only in the background thread. An error there
    is re-raised here as it was. Stopping early (an error while writing, a cancelled run) stops
    the thread within READ_AHEAD_STOP_SECONDS: a source between batches sees the stop at once,
    one blocked on its server is cancelled (sources.cancel), and the thread is joined."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    scope = CancelScope()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        with scope.entered():
            iterator = iter(batches)
            try:
                for batch in iterator:
                    if not put(batch):
                        return
                put(_END)
            except BaseException as error:  # handed to the consumer, which re-raises it
                put(_Failure(error))
            finally:
                # the iterator, and the reader it came from: a RecordBatchReader over a
                # generator finalizes that generator (its connection, its threads) on close
                for closeable in (iterator, batches):
                    close = getattr(closeable, "close", None)
                    if close is not None:
                        with contextlib.suppress(Exception):
                            close()

    thread = threading.Thread(target=produce, name="ingestion-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        stop_thread(thread, scope.cancel)


def stop_thread(thread: threading.Thread, cancel: Callable[[], None]) -> None:
    """Join a reading thread told to stop, once `cancel` interrupted what it may be blocked in
    (the source's query: a consumer that stops early gives the rest up); a thread still stuck
    after READ_AHEAD_STOP_SECONDS is left (a daemon) rather than keep the process alive."""
    if thread.is_alive():
        cancel()
        thread.join(timeout=READ_AHEAD_STOP_SECONDS)


@dataclass(frozen=True)
class _Failure:
    error: BaseException
