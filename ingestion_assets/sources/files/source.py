"""The `files` source: a landing zone's files read for a window's days, each row carrying the
file it came from.

A run reads the files of its days (by arrival, the files that arrived on them; by column, every
matching file, keeping the rows of its days) and replaces those days: re-running a day changes
nothing, a changed or a new file of an old day re-lands that day with all of its files, so each
file's rows are in the table once. Each file is decoded whole into a local Arrow spill file
before any of its rows is handed on: a malformed file (truncated, wrong encoding, too many
ragged rows) is set aside with its reason in `<table>_rejected` and never half-loaded, while the
other files of the run land.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ingestion_assets.errors import SourceError, where
from ingestion_assets.lake.ledger import LEDGER_SCHEMA, SOURCE_FILE, ledger_files
from ingestion_assets.lake.rows import PARTITION_DATE, partition_dates
from ingestion_assets.sources.base import ChangedDays, DeclaredColumn, Finding, Source
from ingestion_assets.sources.files.conform import RESCUED_COLUMN
from ingestion_assets.sources.files.formats import MalformedFileError, ReadReport
from ingestion_assets.sources.files.listing import (
    FileEntry,
    LandingZone,
    arrival_day,
    list_files,
    open_zone,
)
from ingestion_assets.sources.files.read import read_batches
from ingestion_assets.sources.files.spec import (
    ARRIVAL_DATE,
    ArrivalPartitioning,
    FileDatasetSpec,
)
from ingestion_assets.sources.rest.records import arrow_field_type
from ingestion_assets.sources.stream import RejectedRecord, SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import DatasetSpec

# a file up to this size is read whole into memory, once, and its SHA-256 kept in the ledger
HASH_LIMIT = 64 * 1024 * 1024


def declared_schema(dataset: FileDatasetSpec) -> pa.Schema | None:
    """The declared columns as an Arrow schema; None when the files' types are inferred."""
    if dataset.columns is None:
        return None
    return pa.schema(
        [pa.field(name, arrow_field_type(kind)) for name, kind in dataset.columns.items()]
    )


class FilesSource(Source):
    """A landing zone (a folder or a bucket), read file by file."""

    def __init__(
        self,
        source_name: str,
        root: str,
        storage_options: dict[str, str],
        timezone: str = "UTC",
        batch_rows: int = 65_536,
        max_files_per_run: int | None = None,
        lake_root: str | None = None,
        lake_storage_options: dict[str, str] | None = None,
    ) -> None:
        super().__init__(source_name)
        self.root, self.storage_options = root, storage_options
        self.timezone, self.batch_rows = timezone, batch_rows
        self.max_files_per_run = max_files_per_run
        # where the tables' ledgers are: files unchanged since they were ingested are not read
        self.lake_root, self.lake_storage_options = lake_root, lake_storage_options or {}
        self._zone: LandingZone | None = None

    @property
    def zone(self) -> LandingZone:
        """The root's filesystem, opened on first use."""
        if self._zone is None:
            self._zone = open_zone(self.root, self.storage_options)
        return self._zone

    @staticmethod
    def _dataset(dataset: DatasetSpec) -> FileDatasetSpec:
        if not isinstance(dataset, FileDatasetSpec):
            raise TypeError(f"a files source reads file datasets, not {type(dataset).__name__}")
        return dataset

    def _label(self, dataset: FileDatasetSpec, window: PartitionWindow | None) -> str:
        return where(self.source_name, dataset.name, window.label if window else None)

    def files_of(self, dataset: FileDatasetSpec, window: PartitionWindow | None) -> list[FileEntry]:
        """The files a run of `window` reads: those that arrived on its days (every matching
        file when partitioned by a column, or without a window)."""
        label = self._label(dataset, window)
        entries = list_files(self.zone, dataset.glob, label)
        partitioning = dataset.partitioning
        if window is not None and isinstance(partitioning, ArrivalPartitioning):
            days = set(window.days())
            entries = [e for e in entries if arrival_day(e, partitioning, self.timezone) in days]
        return entries

    def _unchanged(
        self, dataset: FileDatasetSpec, window: PartitionWindow | None, entries: list[FileEntry]
    ) -> tuple[pa.Table, set[str]]:
        """Of `entries`, the files as they were when ingested (same size and modification time,
        or same size and SHA-256): the ledger's rows of those with rows on the window's days,
        carried over rather than read again, and the paths of those without any (skipped).

        A file is read again when the ledger does not know all of its days in the window: a
        window wider than the runs that read it, or a ledger without the files' days."""
        if self.lake_root is None or not entries:
            return LEDGER_SCHEMA.empty_table(), set()
        uri = "/".join([self.lake_root.rstrip("/"), self.source_name, dataset.key_name])
        by_column = not isinstance(dataset.partitioning, ArrivalPartitioning)
        # by arrival a file's rows are all on its arrival day, in the window's ledger rows; by
        # column an unchanged file's rows of other days tell which days it has
        days = None if by_column or window is None else (window.first_day, window.last_day)
        previous = ledger_files(uri, self.lake_storage_options or None, days)
        previous = previous.filter(pc.equal(previous.column("status"), "ingested"))
        wanted = set(window.days()) if window is not None else None
        rows_of: dict[str, list[dict[str, Any]]] = {}
        for row in previous.select(LEDGER_SCHEMA.names).to_pylist():
            rows_of.setdefault(row["path"], []).append(row)
        carried: list[dict[str, Any]] = []
        skipped: set[str] = set()
        for entry in entries:
            rows = rows_of.get(entry.path)
            if not rows or not self._same_file(entry, rows):
                continue
            inside = [row for row in rows if wanted is None or row[PARTITION_DATE] in wanted]
            file_days = rows[0]["file_days"]
            if file_days is None:
                # a ledger of an earlier layout: only by arrival are the window's rows all
                if by_column or not inside:
                    continue
            else:
                needed = set(file_days) if wanted is None else set(file_days) & wanted
                if needed - {row[PARTITION_DATE] for row in inside}:
                    continue
                if not inside:
                    skipped.add(entry.path)
                    continue
            # a file touched but not changed: the ledger takes its new time
            modified = entry.modified.astimezone(datetime.UTC)
            carried += [{**row, "modified": modified} for row in inside]
        return pa.Table.from_pylist(carried, schema=LEDGER_SCHEMA), skipped

    def _same_file(self, entry: FileEntry, rows: list[dict[str, Any]]) -> bool:
        """Whether a listed file is the one the ledger's rows describe: same size and
        modification time, or (touched or copied again) same size and bytes."""
        if {row["size"] for row in rows} != {entry.size}:
            return False
        if {row["modified"] for row in rows} == {entry.modified.astimezone(datetime.UTC)}:
            return True
        hashes = {row["sha256"] for row in rows}
        if len(hashes) != 1 or None in hashes or entry.size > HASH_LIMIT:
            return False
        with self.zone.filesystem.open_input_file(self.zone.full_path(entry)) as source:
            return hashlib.sha256(source.read()).hexdigest() in hashes

    def read(self, dataset: DatasetSpec, window: PartitionWindow | None) -> SourceStream:
        """The rows of the window's files, each with `_source_file` (and `_arrival_date`)."""
        spec = self._dataset(dataset)
        entries = self.files_of(spec, window)
        carried, skipped = self._unchanged(spec, window, entries)
        carried_paths = set(carried.column("path").to_pylist())
        entries = [
            entry
            for entry in entries
            if entry.path not in carried_paths and entry.path not in skipped
        ]
        if self.max_files_per_run is not None and len(entries) > self.max_files_per_run:
            raise SourceError(
                f"{self._label(spec, window)}: {len(entries):,} files to read, more than "
                f"max_files_per_run ({self.max_files_per_run:,}); run fewer days at a time (a "
                "backfill in smaller ranges), or raise max_files_per_run"
            )
        schema = declared_schema(spec)
        rejected: list[RejectedRecord] = []
        read_files: list[dict[str, Any]] = []
        # every file decoded (to local spill files) before the first row is handed on
        decoded = [
            self._decode(spec, entry, schema, window, rejected, read_files) for entry in entries
        ]
        spills = [spill for spill in decoded if spill is not None]
        if spills:
            try:
                output = pa.unify_schemas(
                    [spill_schema for _, spill_schema in spills], promote_options="permissive"
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
                for path, _ in spills:
                    os.remove(path)
                raise SourceError(
                    f"{self._label(spec, window)}: the files' columns do not agree ({error}); "
                    "declare the dataset's `columns` so that every file is read with one schema"
                ) from None
        else:
            # no file read: the columns every file of the dataset would give
            declared = schema or pa.schema([])
            if spec.rescue:
                declared = declared.append(pa.field(RESCUED_COLUMN, pa.string()))
            output = self._with_lineage(declared, spec)
        batches = self._replay(spills, output)

        def files() -> pa.Table:
            entries = [
                {
                    "path": item["path"],
                    "size": item["size"],
                    "modified": item["modified_at"],
                    "sha256": item["sha256"],
                    "rows": rows,
                    "file_days": item["file_days"],
                    "status": "ingested",
                    "reason": None,
                    "_partition_date": day,
                }
                for item in read_files
                for day, rows in item["days"].items()
            ]
            entries += [
                {
                    "path": record.record,
                    "size": None,
                    "modified": None,
                    "rows": 0,
                    "status": "rejected",
                    "reason": record.reason,
                    "_partition_date": record.day or (window.first_day if window else None),
                }
                for record in rejected
            ]
            read = pa.Table.from_pylist(entries, schema=LEDGER_SCHEMA)
            return pa.concat_tables([read, carried])

        def metadata() -> dict[str, Any]:
            return {
                "files_read": len(read_files),
                "files_unchanged": len(carried_paths),
                "files_without_rows_of_these_days": len(skipped),
                "files_rejected": len(rejected),
                "files": json.dumps(
                    [
                        {
                            k: v
                            for k, v in item.items()
                            if k not in ("days", "modified_at", "file_days")
                        }
                        for item in read_files[:100]
                    ]
                ),
            }

        return SourceStream(
            pa.RecordBatchReader.from_batches(output, batches),
            path=f"files ({spec.format.type})",
            metadata=metadata,
            rejected=rejected,
            quarantine=True,
            files=files,
            keeps_gone_files=spec.deleted_files == "keep",
            carried_files=_rows_per_file(carried),
        )

    def _with_lineage(self, schema: pa.Schema, dataset: FileDatasetSpec) -> pa.Schema:
        fields = [f for f in schema if f.name not in (SOURCE_FILE, ARRIVAL_DATE)]
        fields.append(pa.field(SOURCE_FILE, pa.string()))
        if isinstance(dataset.partitioning, ArrivalPartitioning):
            fields.append(pa.field(ARRIVAL_DATE, pa.date32()))
        return pa.schema(fields)

    def _decode(
        self,
        dataset: FileDatasetSpec,
        entry: FileEntry,
        schema: pa.Schema | None,
        window: PartitionWindow | None,
        rejected: list[RejectedRecord],
        read_files: list[dict[str, Any]],
    ) -> tuple[str, pa.Schema] | None:
        """One file decoded whole into a spill file (its rows of the window, with lineage), or
        set aside with the reason; (spill path, its schema) or None."""
        partitioning = dataset.partitioning
        day = (
            arrival_day(entry, partitioning, self.timezone)
            if isinstance(partitioning, ArrivalPartitioning)
            else None
        )
        handle, path = tempfile.mkstemp(prefix="landing-", suffix=".arrow")
        os.close(handle)
        report = ReadReport()
        rows = 0
        by_day: dict[datetime.date, int] = {}
        # every day of the file's rows, those outside the window too
        file_days: set[datetime.date] = {day} if day is not None else set()
        digest: str | None = None
        writer: ipc.RecordBatchFileWriter | None = None
        try:
            with self.zone.filesystem.open_input_file(self.zone.full_path(entry)) as opened:
                source: pa.NativeFile = opened
                if entry.size <= HASH_LIMIT:
                    # a small file is read once, whole: decoded from memory and hashed
                    data = opened.read()
                    digest = hashlib.sha256(data).hexdigest()
                    source = pa.BufferReader(data)
                for batch in read_batches(
                    source,
                    entry.path,
                    dataset.format,
                    schema,
                    batch_rows=self.batch_rows,
                    rescue=dataset.rescue,
                    report=report,
                ):
                    batch = self._stamped(batch, dataset, entry, day, window, file_days)
                    if writer is None:
                        spilled_schema = batch.schema
                        writer = ipc.new_file(path, spilled_schema)
                    writer.write_batch(batch)
                    rows += batch.num_rows
                    self._count_days(batch, dataset, day, by_day)
        except MalformedFileError as error:
            if writer is not None:
                writer.close()
            os.remove(path)
            rejected.append(RejectedRecord(entry.path, "", str(error), day))
            return None
        except OSError as error:
            if writer is not None:
                writer.close()
            os.remove(path)
            raise SourceError(
                f"{self._label(dataset, window)}: cannot read {entry.path}: {error}. Check the "
                "file's permissions and the storage credentials, then re-run."
            ) from error
        except BaseException:
            if writer is not None:
                writer.close()
            os.remove(path)
            raise
        read_files.append(
            {
                "path": entry.path,
                "size": entry.size,
                "modified": entry.stamp,
                "modified_at": entry.modified,
                "sha256": digest,
                "file_days": sorted(file_days),
                "rows": rows,
                # an empty file is in the ledger too, on its arrival day (or the window's first)
                "days": by_day or {day or (window.first_day if window else None): 0},
            }
        )
        if writer is None:
            os.remove(path)
            return None
        writer.close()
        return path, spilled_schema

    def _stamped(
        self,
        batch: pa.RecordBatch,
        dataset: FileDatasetSpec,
        entry: FileEntry,
        day: datetime.date | None,
        window: PartitionWindow | None,
        file_days: set[datetime.date],
    ) -> pa.RecordBatch:
        """A file's batch with `_source_file` (and `_arrival_date`), cut to the window's days
        when the rows' own column partitions them (the days of all its rows added to
        `file_days`)."""
        columns = [c for c in batch.schema.names if c not in (SOURCE_FILE, ARRIVAL_DATE)]
        batch = batch.select(columns)
        batch = batch.append_column(SOURCE_FILE, pa.repeat(pa.scalar(entry.path), batch.num_rows))
        if isinstance(dataset.partitioning, ArrivalPartitioning):
            return batch.append_column(
                ARRIVAL_DATE, pa.repeat(pa.scalar(day, pa.date32()), batch.num_rows)
            )
        column = dataset.partitioning.column
        if column not in batch.schema.names:
            if window is None:
                return batch
            raise MalformedFileError(
                entry.path,
                f"no column {column}, the dataset's partition column",
                "declare the column the files carry as `partitioning.column`",
            )
        days = partition_dates(batch.column(column), self.timezone)
        file_days.update(value for value in pc.unique(days).to_pylist() if value is not None)
        if window is None:
            return batch
        inside = pc.and_(
            pc.greater_equal(days, pa.scalar(window.first_day, pa.date32())),
            pc.less_equal(days, pa.scalar(window.last_day, pa.date32())),
        )
        return batch.filter(pc.fill_null(inside, False))

    def _count_days(
        self,
        batch: pa.RecordBatch,
        dataset: FileDatasetSpec,
        day: datetime.date | None,
        by_day: dict[datetime.date, int],
    ) -> None:
        """Add a batch's rows to its file's rows per day."""
        if not batch.num_rows:
            return
        if day is not None:
            by_day[day] = by_day.get(day, 0) + batch.num_rows
            return
        column = dataset.partition_column
        if column is None or column not in batch.schema.names:
            return
        counts = pc.value_counts(partition_dates(batch.column(column), self.timezone))
        for value, count in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        ):
            if value is not None:
                by_day[value] = by_day.get(value, 0) + count

    def _replay(
        self, spills: list[tuple[str, pa.Schema]], output: pa.Schema
    ) -> Iterator[pa.RecordBatch]:
        """The spilled files' batches in the run's schema (the files' unified: each column cast
        to it, a column a file lacks null); each spill file removed once read."""
        try:
            for path, _ in spills:
                with pa.memory_map(path) as source:
                    reader = ipc.open_file(source)
                    for index in range(reader.num_record_batches):
                        yield _conformed(reader.get_batch(index), output)
                os.remove(path)
        finally:
            for path, _ in spills:
                if os.path.exists(path):
                    os.remove(path)

    def count(self, dataset: DatasetSpec, window: PartitionWindow | None) -> int | None:
        """Files hold no count of their own."""
        return None

    def changed_days(self, dataset: DatasetSpec, since: str | None) -> ChangedDays:
        """The days of the files modified (or added) since the cursor; a first call marks the
        newest file and requests nothing (the backlog is a backfill's)."""
        spec = self._dataset(dataset)
        entries = list_files(self.zone, spec.glob, self._label(spec, None))
        newest = _cursor(entries)
        if since is None:
            return ChangedDays([], newest)
        seen_stamp, seen_paths = _parse_cursor(since)
        changed = [
            entry
            for entry in entries
            if entry.stamp > seen_stamp
            or (entry.stamp == seen_stamp and entry.path not in seen_paths)
        ]
        days: set[datetime.date] = set()
        partitioning = spec.partitioning
        for entry in changed:
            if isinstance(partitioning, ArrivalPartitioning):
                day = arrival_day(entry, partitioning, self.timezone)
                if day is not None:
                    days.add(day)
            else:
                days |= self._column_days(spec, entry)
        return ChangedDays(sorted(days), newest if entries else since)

    def _column_days(self, dataset: FileDatasetSpec, entry: FileEntry) -> set[datetime.date]:
        """The days a file's rows fall on (its partition column read)."""
        column = dataset.partitioning.column  # type: ignore[union-attr]
        days: set[datetime.date] = set()
        with self.zone.filesystem.open_input_file(self.zone.full_path(entry)) as source:
            try:
                for batch in read_batches(
                    source, entry.path, dataset.format, declared_schema(dataset), rescue=True
                ):
                    if column in batch.schema.names:
                        values = partition_dates(batch.column(column), self.timezone)
                        days |= {day for day in pc.unique(values).to_pylist() if day is not None}
            except MalformedFileError:
                # its run sets it aside with the reason; the sensor only needs the days it can tell
                return days
        return days

    @classmethod
    def declared_columns(cls, dataset: DatasetSpec) -> list[DeclaredColumn]:
        """The declared columns with their types, then the file and arrival columns."""
        spec = cls._dataset(dataset)
        columns = [
            DeclaredColumn(
                name, str(arrow_field_type(kind)), f"{kind} (declared in the project file)"
            )
            for name, kind in (spec.columns or {}).items()
        ]
        if spec.columns is None:
            columns = [DeclaredColumn(name) for name in dict.fromkeys(spec.primary_key)]
        columns.append(DeclaredColumn(SOURCE_FILE, "string", "the file's path below the root"))
        if isinstance(spec.partitioning, ArrivalPartitioning):
            columns.append(DeclaredColumn(ARRIVAL_DATE, "date32[day]", "the day the file arrived"))
        return columns

    def verify(self, dataset: DatasetSpec, window: PartitionWindow | None = None) -> list[Finding]:
        """The root listed and the glob matched, without reading a file."""
        spec = self._dataset(dataset)
        try:
            entries = list_files(self.zone, spec.glob, self._label(spec, None))
        except SourceError as error:
            return [
                Finding(
                    self.source_name,
                    spec.qualified_name,
                    str(error),
                    "fix the root or its credentials",
                )
            ]
        if not entries:
            return [
                Finding(
                    self.source_name,
                    spec.qualified_name,
                    f"no file below {self.root} matches {spec.glob}",
                    "check the glob (paths are relative to the root; `**/` crosses folders)",
                    severity="warning",
                )
            ]
        return [
            Finding(
                self.source_name,
                spec.qualified_name,
                f"{len(entries):,} file(s) match {spec.glob}",
                "",
                severity="note",
            )
        ]


def _rows_per_file(entries: pa.Table) -> dict[str, int]:
    """The rows of each file over the ledger entries' days (a file by column has several)."""
    rows: dict[str, int] = {}
    for row in entries.select(["path", "rows"]).to_pylist():
        rows[row["path"]] = rows.get(row["path"], 0) + (row["rows"] or 0)
    return rows


def _conformed(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch in the stream's schema: its columns cast, missing ones null."""
    arrays = [
        batch.column(field.name).cast(field.type)
        if field.name in batch.schema.names
        else pa.nulls(batch.num_rows, field.type)
        for field in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _cursor(entries: list[FileEntry]) -> str | None:
    """The sensor's cursor: the newest modification time and the files that have it."""
    if not entries:
        return None
    newest = max(entry.stamp for entry in entries)
    return json.dumps(
        {"modified": newest, "paths": sorted(e.path for e in entries if e.stamp == newest)}
    )


def _parse_cursor(cursor: str) -> tuple[str, set[str]]:
    try:
        parsed = json.loads(cursor)
        return str(parsed["modified"]), set(parsed.get("paths", []))
    except (ValueError, KeyError, TypeError):
        return cursor, set()
