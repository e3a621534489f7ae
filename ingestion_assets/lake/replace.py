"""Swapping a window's rows in one commit, and the one way commits are retried.

A commit is made against the table version its change was planned on, never rebased: if another
writer committed first, `retry_commit` plans the change again on the new version. Concurrent runs
of one window thus leave exactly one copy, runs of different windows all land, and compaction
never loses a row an ingestion run committed meanwhile."""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, NoReturn, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

from ingestion_assets.errors import IngestionError, SchemaDriftError, WriteConflictError
from ingestion_assets.lake.files import (
    DEFAULT_MAX_FILE_BYTES,
    ClusteredFileWriter,
    conform,
    delta_dataset,
    read_ahead,
    table_filesystem,
)
from ingestion_assets.lake.rows import PARTITION_DATE, WritePlan, delta_type_names, schema_diff

# commits planned again after another writer committed first (each waits a little longer)
MAX_COMMIT_ATTEMPTS = 20

SchemaMode = Literal["merge"] | None
Committed = TypeVar("Committed")


def open_table(uri: str, storage_options: dict[str, str] | None) -> DeltaTable | None:
    """The Delta table at `uri` at its latest version, None before its first write."""
    try:
        return DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        return None


def retry_commit(
    uri: str,
    storage_options: dict[str, str] | None,
    attempt: Callable[[DeltaTable], Committed],
    *,
    label: str,
    log: Callable[[str], None],
    table: DeltaTable | None = None,
) -> Committed:
    """`attempt(table)` plans a change on one version and commits it unrebased (`commit`); when
    another writer committed first it runs again on the newer version, after a growing pause.

    The first attempt uses `table` when given. `attempt` cleans up what it wrote before it lets
    the conflict through; after MAX_COMMIT_ATTEMPTS the last CommitFailedError is raised."""
    for number in range(1, MAX_COMMIT_ATTEMPTS + 1):
        current = table if number == 1 and table is not None else None
        if current is None:
            current = DeltaTable(uri, storage_options=storage_options)
        try:
            return attempt(current)
        except CommitFailedError:
            if number == MAX_COMMIT_ATTEMPTS:
                raise
            log(
                f"{label}: another run committed to the table first; planning again on its "
                f"version (attempt {number + 1} of {MAX_COMMIT_ATTEMPTS})"
            )
            time.sleep(random.uniform(0.05, 0.25) * number)
    raise AssertionError("unreachable")  # pragma: no cover


def commit(
    table: DeltaTable,
    actions: list[AddAction | RemoveAction],
    schema: pa.Schema,
    files: Iterable[ClusteredFileWriter] = (),
) -> None:
    """Commit add and remove actions on exactly the version `table` is at (no rebase); the
    writers of the added `files` learn that it landed, so that no later abort deletes them.

    A stop request (SIGTERM, SIGINT) arriving meanwhile waits until both are done: the run then
    stops either before the commit (nothing written) or after it (every file kept)."""
    with held_interrupts():
        table.create_write_transaction(
            actions,
            mode="append",
            schema=schema,
            commit_properties=CommitProperties(max_commit_retries=0),
        )
        for writer in files:
            writer.committed()


_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
_holding = threading.local()


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Defer SIGINT and SIGTERM until the block ends, then deliver them to the handlers that
    were in place (Dagster's raise its interrupt). Re-entrant; only the main thread receives
    signals, so elsewhere the block simply runs."""
    if threading.current_thread() is not threading.main_thread() or getattr(
        _holding, "active", False
    ):
        yield
        return
    received: list[int] = []
    # a handler not installed from Python (None) cannot be put back: such a signal is not held
    previous = {
        number: handler
        for number in _INTERRUPTS
        if (handler := signal.getsignal(number)) is not None
    }
    for held in previous:
        signal.signal(held, lambda number, _frame: received.append(number))
    _holding.active = True
    try:
        yield
    finally:
        _holding.active = False
        for held, handler in previous.items():
            signal.signal(held, handler)
        for number in dict.fromkeys(received):
            signal.raise_signal(number)


def fit_schema(
    existing: DeltaTable | None, target: pa.Schema, policy: str, where: str, uri: str
) -> tuple[pa.Schema, SchemaMode]:
    """The schema to write with and whether it changes the table's (`merge`), under the table's
    schema policy (`evolve`, `freeze`); a changed type always fails, naming the column."""
    if existing is None:
        return target, None
    table_schema = pa.schema(existing.schema().to_arrow())
    table_types = delta_type_names(table_schema)
    diff = schema_diff(table_types, delta_type_names(target))
    if diff.changed or (diff and policy == "freeze"):
        if any({old, new} == {"byte", "boolean"} for old, new in diff.changed.values()):
            fix = (
                "A MySQL/MariaDB TINYINT(1) column (what BOOLEAN is stored as) lands as boolean "
                "while the source's `tinyint1_as_bool` is on (the default) and as byte (int8) "
                "when it is off: set `tinyint1_as_bool` on the table (or its source) to what the "
                "table was written with (`false` for byte), or write to a new table (asset_name)."
            )
        elif diff.changed:
            fix = "Change the column back at the source, or write to a new table (asset_name)."
        elif diff.added:
            fix = (
                "The table's schema_policy is `freeze`: set it to `evolve` to accept added "
                "columns, or change the source back."
            )
        else:
            fix = (
                "The table's schema_policy is `freeze`: set it to `evolve` to keep the column "
                "(new rows get nulls in it), or change the source back."
            )
        raise SchemaDriftError(
            f"{where}: the source schema no longer matches the Delta table at {uri}: "
            f"{diff.describe()}. {fix}"
        )
    # keep the table's column order; missing columns are written as nulls
    fitted = pa.schema(
        [
            table_schema.field(name) if name in table_types else target.field(name)
            for name in [*table_schema.names, *diff.added]
        ]
    )
    return fitted, "merge" if diff.added else None


def write_partitions(
    uri: str,
    storage_options: dict[str, str] | None,
    existing: DeltaTable | None,
    reader: Iterable[pa.RecordBatch],
    plan: WritePlan,
    schema_mode: SchemaMode,
    target_file_size: int | None,
    log: Callable[[str], None],
) -> list[tuple[str, int]]:
    """Replace the plan's window (every row for a snapshot) with the reader's rows in one commit;
    the (path, bytes) of the files written. A failure leaves the table as it was."""
    staged = stage_partitions(
        uri, storage_options, existing, reader, plan, schema_mode, target_file_size, log
    )
    return staged.commit()


def stage_partitions(
    uri: str,
    storage_options: dict[str, str] | None,
    existing: DeltaTable | None,
    reader: Iterable[pa.RecordBatch],
    plan: WritePlan,
    schema_mode: SchemaMode,
    target_file_size: int | None,
    log: Callable[[str], None],
) -> StagedReplace:
    """Write the reader's rows where no table version refers to them yet, for an audit to judge
    before `commit()` makes them the plan's window (or `abort()` removes them)."""
    batches = plan.stream(read_ahead(reader), log)
    legacy = existing is not None and bool(existing.metadata().partition_columns)
    staged = StagedReplace(uri, storage_options, existing, plan, schema_mode, target_file_size, log)
    try:
        if schema_mode is None and not legacy:
            staged.write_files(batches)
        else:
            # a schema change commits new metadata too, and a table written Hive-partitioned
            # by an earlier version keeps its layout: delta-rs's writer does both, but it
            # commits as it writes, so the rows wait in a local Arrow file for the audit
            staged.write_spill(batches)
        return staged
    except BaseException as error:
        staged.abort()
        _raise_write_error(plan, uri, error)
    finally:
        # a write that failed stops the reader thread now, not when the generator is collected
        batches.close()


class StagedReplace:
    """A window's new rows, written but not committed: what an audit reads, then one commit."""

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, str] | None,
        existing: DeltaTable | None,
        plan: WritePlan,
        schema_mode: SchemaMode,
        target_file_size: int | None,
        log: Callable[[str], None],
    ) -> None:
        self.uri, self.storage_options, self.existing = uri, storage_options, existing
        self.plan, self.schema_mode, self.log = plan, schema_mode, log
        self.max_file_bytes = target_file_size or DEFAULT_MAX_FILE_BYTES
        self.target_file_size = target_file_size
        self._files: ClusteredFileWriter | None = None
        self._adds: list[AddAction] | None = None
        self._spill: pathlib.Path | None = None

    def write_files(self, batches: Iterator[pa.RecordBatch]) -> None:
        """Stream the batches into data files clustered by month, inside the table's folder."""
        filesystem = table_filesystem(self.uri, self.storage_options)
        self._files = ClusteredFileWriter(
            filesystem, self.plan.target, max_file_bytes=self.max_file_bytes
        )
        for batch in batches:
            self._files.write(batch)
        self._adds = self._files.finish()

    def write_spill(self, batches: Iterator[pa.RecordBatch]) -> None:
        """Stream the batches into a local Arrow IPC file, for delta-rs's writer to commit."""
        handle, name = tempfile.mkstemp(prefix="ingestion-staged-", suffix=".arrow")
        os.close(handle)
        self._spill = pathlib.Path(name)
        with pa.OSFile(name, "wb") as sink, pa.ipc.new_file(sink, self.plan.target) as writer:
            for batch in batches:
                writer.write_batch(batch)

    def kept_rows(self, columns: list[str], among: pa.Array | None = None) -> pa.Table:
        """`columns` of the rows the commit keeps: the table's rows outside the window (none for
        a snapshot, whose every row is replaced), as of the version the write was planned on.
        With `among`, only rows whose first column holds one of its values (read with that
        filter pushed down, so a large table's other keys never reach memory). A column the
        table does not have yet comes back as nulls."""
        schema = pa.schema([self.plan.target.field(name) for name in columns])
        if self.existing is None or self.plan.window is None:
            return schema.empty_table()
        present = set(pa.schema(self.existing.schema().to_arrow()).names)
        if among is not None and columns[0] not in present:
            return schema.empty_table()
        day = pc.field(PARTITION_DATE)
        first, last = pa.scalar(self.plan.first_day), pa.scalar(self.plan.last_day)
        outside = (day < first) | (day > last)
        if among is not None:
            outside = outside & pc.field(columns[0]).isin(among)
        rows = delta_dataset(self.existing).to_table(
            columns=[name for name in columns if name in present], filter=outside
        )
        return conform(rows, schema)

    def commit(self) -> list[tuple[str, int]]:
        """Make the staged rows the window's, in one commit (planned again when another run
        committed first); the (path, bytes) of the files written. Failing, nothing changes."""
        try:
            if self._adds is not None:
                return self._commit_files(self._adds)
            return self._commit_spill()
        except BaseException as error:
            self.abort()
            _raise_write_error(self.plan, self.uri, error)
        finally:
            self._remove_spill()

    def abort(self) -> None:
        """Remove the staged files (best effort: a vacuum removes any leftover)."""
        if self._files is not None:
            self._files.abort()
        self._remove_spill()

    def _remove_spill(self) -> None:
        if self._spill is not None:
            self._spill.unlink(missing_ok=True)
            self._spill = None

    def _commit_spill(self) -> list[tuple[str, int]]:
        assert self._spill is not None
        assert self.existing is not None
        files_before = {path for path, _ in _data_files(self.existing)}
        with pa.memory_map(str(self._spill)) as source:
            stream = pa.ipc.open_file(source)
            batches = (stream.get_batch(index) for index in range(stream.num_record_batches))
            replace_with_writer(
                self.uri,
                self.storage_options,
                pa.RecordBatchReader.from_batches(self.plan.target, batches),
                self.existing,
                self.plan.predicate,
                self.schema_mode,
                self.target_file_size,
            )
        after = DeltaTable(self.uri, storage_options=self.storage_options)
        return [(path, size) for path, size in _data_files(after) if path not in files_before]

    def _commit_files(self, adds: list[AddAction]) -> list[tuple[str, int]]:
        plan, uri, options = self.plan, self.uri, self.storage_options
        filesystem = table_filesystem(uri, options)

        def swap(table: DeltaTable) -> list[tuple[str, int]]:
            # rows of files straddling the window's edges go to files of their own, so a
            # retry can drop them and plan again without touching this run's data
            kept = ClusteredFileWriter(filesystem, plan.target, max_file_bytes=self.max_file_bytes)
            try:
                removes = _replace_window(table, filesystem, kept, plan.target, plan.days)
                written = [*adds, *kept.finish()]
                _check_columns(table, plan)
                staged_files = [kept] if self._files is None else [self._files, kept]
                commit(table, [*written, *removes], plan.target, files=staged_files)
                return [(action.path, action.size) for action in written]
            except BaseException:
                kept.abort()
                raise

        # created once the data files are written: a failed first run leaves no table; a run
        # that created it at the same moment is as good
        table = self.existing or create_table(uri, plan.target, options)
        label = f"{plan.table_label} {plan.partition_label}"
        try:
            return retry_commit(uri, options, swap, label=label, log=self.log, table=table)
        except CommitFailedError:
            raise _conflict_error(plan, MAX_COMMIT_ATTEMPTS) from None


def _raise_write_error(plan: WritePlan, uri: str, error: BaseException) -> NoReturn:
    """Raise what a failed write reports: the source's own error when the source failed, the
    project's errors as they are, anything else as one naming the table, which is unchanged."""
    if plan.source_error is not None:
        raise plan.source_error from None
    if isinstance(error, IngestionError) or not isinstance(error, Exception):
        raise error
    raise IngestionError(
        f"{plan.table_label} ({plan.partition_label}): writing the Delta table at {uri} "
        f"failed: {error}. The table is unchanged at its previous version; re-run the "
        "partition."
    ) from error


def replace_with_writer(
    uri: str,
    storage_options: dict[str, str] | None,
    data: pa.RecordBatchReader | pa.Table,
    existing: DeltaTable | None,
    predicate: str | None,
    schema_mode: SchemaMode = None,
    target_file_size: int | None = None,
) -> None:
    """delta-rs's own writer, for schema changes, tables of an earlier layout and the small
    rejected-records tables."""
    options: dict[str, Any] = {
        "partition_by": (existing.metadata().partition_columns or None) if existing else None,
        "schema_mode": schema_mode,
        "storage_options": storage_options,
        "target_file_size": target_file_size,
    }
    if existing is None:
        write_deltalake(uri, data, mode="append", **options)
    else:
        # replaceWhere: exactly these days are swapped in one commit
        write_deltalake(uri, data, mode="overwrite", predicate=predicate, **options)


def _replace_window(
    table: DeltaTable,
    filesystem: pa_fs.FileSystem,
    files: ClusteredFileWriter,
    schema: pa.Schema,
    window: tuple[datetime.date, datetime.date] | None,
) -> list[RemoveAction]:
    """Remove actions for the table's rows in `window` (every row when None).

    A file wholly inside the window is removed; of a file that straddles its edges (or has no
    statistics), the rows outside the window are written again through `files`."""
    actions = pa.table(table.get_add_actions(flatten=True))
    names = actions.column_names
    count = actions.num_rows
    lows = (
        actions.column(f"min.{PARTITION_DATE}").to_pylist()
        if f"min.{PARTITION_DATE}" in names
        else [None] * count
    )
    highs = (
        actions.column(f"max.{PARTITION_DATE}").to_pylist()
        if f"max.{PARTITION_DATE}" in names
        else [None] * count
    )
    now = int(time.time() * 1000)
    removes = []
    for path, size, low, high in zip(
        actions.column("path").to_pylist(),
        actions.column("size_bytes").to_pylist(),
        lows,
        highs,
        strict=True,
    ):
        if window is not None:
            first, last = window
            if low is not None and high is not None and (high < first or low > last):
                continue  # another part of the table: untouched
            if low is None or high is None or low < first or high > last:
                _keep_outside(filesystem, path, files, schema, first, last)
        removes.append(RemoveAction(path=path, data_change=True, deletion_timestamp=now, size=size))
    return removes


def _keep_outside(
    filesystem: pa_fs.FileSystem,
    path: str,
    files: ClusteredFileWriter,
    schema: pa.Schema,
    first: datetime.date,
    last: datetime.date,
) -> None:
    """Write the rows of data file `path` outside `first..last` through `files`, reading it one
    row group at a time (a month's file never sits in memory whole) and skipping the row groups
    its statistics put wholly inside the window."""
    low, high = pa.scalar(first, pa.date32()), pa.scalar(last, pa.date32())
    with filesystem.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        groups = [
            index
            for index in range(parquet.num_row_groups)
            if not _inside(parquet.metadata.row_group(index), first, last)
        ]
        if not groups:
            return
        for batch in parquet.iter_batches(row_groups=groups):
            days = batch.column(PARTITION_DATE)
            outside = batch.filter(pc.or_(pc.less(days, low), pc.greater(days, high)))
            if outside.num_rows:
                files.write(conform(outside, schema))


def _inside(group: pq.RowGroupMetaData, first: datetime.date, last: datetime.date) -> bool:
    """Whether a row group's `_partition_date` statistics put all its rows in `first..last`."""
    for index in range(group.num_columns):
        column = group.column(index)
        if column.path_in_schema == PARTITION_DATE:
            stats = column.statistics
            if stats is None or not stats.has_min_max:
                return False
            low, high = stats.min, stats.max
            return bool(first <= low and high <= last)
    return False


def create_table(uri: str, schema: pa.Schema, options: dict[str, str] | None) -> DeltaTable:
    """A new table, or the one a concurrent run created a moment earlier."""
    try:
        return DeltaTable.create(uri, schema, mode="ignore", storage_options=options)
    except (CommitFailedError, DeltaError):
        # both runs saw no table and raced for version 0; the other one won
        return DeltaTable(uri, storage_options=options)


def _check_columns(table: DeltaTable, plan: WritePlan) -> None:
    """The table (possibly changed by another run since planning) still has the plan's columns."""
    if pa.schema(table.schema().to_arrow()).names != plan.target.names:
        raise WriteConflictError(
            f"{plan.table_label} {plan.partition_label}: another run changed the table's columns "
            "while this one was writing; nothing was written. Re-run the partition."
        )


def _conflict_error(plan: WritePlan, attempts: int) -> WriteConflictError:
    """The error of a write that other runs kept beating to the commit."""
    return WriteConflictError(
        f"{plan.table_label} {plan.partition_label}: other runs kept committing to the table "
        f"while this one tried to ({attempts} attempts); nothing was written. Re-run the "
        "partition when fewer runs write the table at once."
    )


def _data_files(table: DeltaTable) -> list[tuple[str, int]]:
    """(path, size in bytes) of every file in the table's current version."""
    actions = pa.table(table.get_add_actions(flatten=True))
    return list(
        zip(
            actions.column("path").to_pylist(),
            actions.column("size_bytes").to_pylist(),
            strict=True,
        )
    )
