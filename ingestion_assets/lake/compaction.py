"""Delta table maintenance: merge each month's small files, vacuum, checkpoint.

Nightly runs add a file per day to their month (and a rerun of a day inside a month adds the
month's other rows as a file of their own), so a month drifts from one file to many. Compaction
merges the files of each month back into files of up to `max_file_bytes`, keeping the layout the
writer makes (see files.py): every file holds one month, with its columns' statistics.
delta-rs's own `optimize.compact()` would bin-pack across months and widen each file's bounds, so
it is used only for tables Hive-partitioned by an earlier version.

Each month is one commit against the version it was planned on, retried on a newer version when
an ingestion run committed first (replace.retry_commit): compaction never changes a row, and
never loses one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.transaction import RemoveAction

from ingestion_assets.lake.files import (
    DEFAULT_MAX_FILE_BYTES,
    ClusteredFileWriter,
    conform,
    month_of,
    table_filesystem,
)
from ingestion_assets.lake.replace import commit, retry_commit
from ingestion_assets.lake.rows import PARTITION_DATE


@dataclass
class MaintenanceReport:
    """What one table's maintenance did, as figures for the UI."""

    files_before: int = 0
    files_after: int = 0
    months_compacted: int = 0
    files_compacted: int = 0
    files_vacuumed: int = 0
    checkpoint_version: int | None = None
    notes: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """Dagster metadata of the report."""
        result: dict[str, Any] = {
            "files_before": self.files_before,
            "files_after": self.files_after,
            "months_compacted": self.months_compacted,
            "files_compacted": self.files_compacted,
            "files_vacuumed": self.files_vacuumed,
        }
        if self.checkpoint_version is not None:
            result["checkpoint_version"] = self.checkpoint_version
        return result


def _month_groups(table: DeltaTable) -> dict[tuple[int, int], list[tuple[str, int]]]:
    """Files (path, bytes) whose rows all fall in one month, by month."""
    actions = pa.table(table.get_add_actions(flatten=True))
    names = actions.column_names
    if f"min.{PARTITION_DATE}" not in names or f"max.{PARTITION_DATE}" not in names:
        return {}
    groups: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
    for path, size, low, high in zip(
        actions.column("path").to_pylist(),
        actions.column("size_bytes").to_pylist(),
        actions.column(f"min.{PARTITION_DATE}").to_pylist(),
        actions.column(f"max.{PARTITION_DATE}").to_pylist(),
        strict=True,
    ):
        if low is not None and high is not None and month_of(low) == month_of(high):
            groups[month_of(low)].append((path, size))
    return groups


def _to_merge(files: list[tuple[str, int]], max_file_bytes: int) -> list[tuple[str, int]] | None:
    """A month's files worth merging: more than one, and more than the merged size needs."""
    small = [item for item in files if item[1] < max_file_bytes]
    total = sum(size for _, size in small)
    if len(small) < 2 or len(small) <= -(-total // max_file_bytes):
        return None
    return small


def _compact_month(
    uri: str,
    storage_options: dict[str, str] | None,
    filesystem: pa_fs.FileSystem,
    month: tuple[int, int],
    max_file_bytes: int,
    log: Callable[[str], None],
) -> int:
    """Merge one month's small files in one commit; the number of files merged (0: none)."""

    def merge(table: DeltaTable) -> int:
        files = _to_merge(_month_groups(table).get(month, []), max_file_bytes)
        if files is None:
            return 0
        schema = pa.schema(table.schema().to_arrow())
        writer = ClusteredFileWriter(filesystem, schema, max_file_bytes=max_file_bytes)
        try:
            for path, _size in files:
                with filesystem.open_input_file(path) as handle:
                    for batch in pq.ParquetFile(handle).iter_batches():
                        writer.write(conform(batch, schema))
            adds = writer.finish()
            for add in adds:
                add.data_change = False
            now = int(time.time() * 1000)
            removes = [
                RemoveAction(path=path, data_change=False, deletion_timestamp=now, size=size)
                for path, size in files
            ]
            commit(table, [*adds, *removes], schema, files=(writer,))
            return len(files)
        except BaseException:
            writer.abort()
            raise

    label = f"{uri}: compacting {month[0]}-{month[1]:02d}"
    return retry_commit(uri, storage_options, merge, label=label, log=log)


def _data_files(filesystem: pa_fs.FileSystem) -> set[str]:
    """Paths of the Parquet files in the table's storage (outside its log)."""
    listing = filesystem.get_file_info(pa_fs.FileSelector("", recursive=True))
    return {
        info.path
        for info in listing
        if info.type == pa_fs.FileType.File
        and info.path.endswith(".parquet")
        and not info.path.startswith("_delta_log")
    }


def maintain_table(
    uri: str,
    storage_options: dict[str, str] | None,
    *,
    compact: bool,
    vacuum_retention_hours: int | None,
    checkpoint: bool,
    max_file_bytes: int | None = None,
    log: Callable[[str], None] = lambda _message: None,
) -> MaintenanceReport:
    """Compact, vacuum and checkpoint one Delta table; what it did."""
    report = MaintenanceReport()
    table = DeltaTable(uri, storage_options=storage_options)
    report.files_before = len(table.file_uris())
    limit = max_file_bytes or DEFAULT_MAX_FILE_BYTES
    if compact:
        if table.metadata().partition_columns:
            metrics = table.optimize.compact(target_size=limit)
            report.files_compacted = int(metrics.get("numFilesRemoved", 0))
            report.notes.append("Hive-partitioned table: compacted by delta-rs per partition")
        else:
            filesystem = table_filesystem(uri, storage_options)
            # a month needing no merge on this version is not looked at again: reloading the
            # table per month cost more than merging when few months had small files
            groups = _month_groups(table)
            for month in sorted(m for m, files in groups.items() if _to_merge(files, limit)):
                merged = _compact_month(uri, storage_options, filesystem, month, limit, log)
                if merged:
                    report.months_compacted += 1
                    report.files_compacted += merged
                    log(f"{uri}: merged {merged} files of {month[0]}-{month[1]:02d}")
    if vacuum_retention_hours is not None:
        table = DeltaTable(uri, storage_options=storage_options)
        filesystem = table_filesystem(uri, storage_options)
        stored = _data_files(filesystem)
        # full: also the files no version refers to (a killed run's), not only replaced ones
        table.vacuum(
            retention_hours=vacuum_retention_hours,
            dry_run=False,
            enforce_retention_duration=False,
            full=True,
        )
        # counted in storage: delta-rs lists a replaced file again on every vacuum
        report.files_vacuumed = len(stored - _data_files(filesystem))
    table = DeltaTable(uri, storage_options=storage_options)
    if checkpoint:
        table.create_checkpoint()
        report.checkpoint_version = table.version()
    report.files_after = len(table.file_uris())
    return report
