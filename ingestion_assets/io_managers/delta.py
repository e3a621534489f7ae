"""Delta Lake IO manager (delta-rs): one atomic replace of exactly the partitions a run covers."""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq
from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    OutputContext,
    TableColumn,
    TableSchema,
)
from deltalake import CommitProperties, DeltaTable, Schema, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction
from pydantic import Field

from ingestion_assets.errors import (
    IngestionError,
    PrecisionLossError,
    SchemaDriftError,
    WriteConflictError,
)
from ingestion_assets.io_managers.files import (
    DEFAULT_MAX_FILE_BYTES,
    ClusteredFileWriter,
    read_ahead,
    table_filesystem,
)
from ingestion_assets.io_managers.files import (
    PARTITION_DATE as PARTITION_DATE,
)
from ingestion_assets.sources.stream import SourceStream

INGESTED_AT = "_ingested_at"
RUN_ID = "_run_id"
LINEAGE_COLUMNS = (PARTITION_DATE, INGESTED_AT, RUN_ID)

# keys of the definition metadata through which an asset tells the IO manager how to write it
PARTITION_COLUMN_KEY = "ingestion/partition_column"
SCHEMA_POLICY_KEY = "ingestion/schema_policy"
NANOSECONDS_KEY = "ingestion/timestamp_nanoseconds"

PROGRESS_INTERVAL_SECONDS = 10.0
# commits planned again after another run committed first (each waits a little longer)
MAX_COMMIT_ATTEMPTS = 20


@dataclass(frozen=True)
class SchemaDiff:
    """How an incoming schema differs from the Delta table's, column by column."""

    added: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.missing or self.changed)

    def describe(self) -> str:
        """`added X (int), missing Y (string), changed Z: int -> string`."""
        parts = [f"added column {name} ({kind})" for name, kind in self.added.items()]
        parts += [f"missing column {name} ({kind})" for name, kind in self.missing.items()]
        parts += [
            f"column {name} changed type from {old} to {new}"
            for name, (old, new) in self.changed.items()
        ]
        return "; ".join(parts)


def delta_type_names(schema: pa.Schema) -> dict[str, str]:
    """Each column's Delta type name (`long`, `decimal(19,4)`, `timestamp_ntz`, ...)."""
    delta = Schema.from_arrow(schema)
    return {
        item.name: str(item.type.type if hasattr(item.type, "type") else item.type)
        for item in delta.fields
    }


def schema_diff(table_types: Mapping[str, str], incoming_types: Mapping[str, str]) -> SchemaDiff:
    """Compare two {column: Delta type} mappings; lineage columns are the project's own."""
    return SchemaDiff(
        added={k: v for k, v in incoming_types.items() if k not in table_types},
        missing={
            k: v
            for k, v in table_types.items()
            if k not in incoming_types and k not in LINEAGE_COLUMNS
        },
        changed={
            k: (table_types[k], v)
            for k, v in incoming_types.items()
            if k in table_types and table_types[k] != v
        },
    )


def delta_compatible_type(arrow: pa.DataType, nanoseconds: str) -> pa.DataType:
    """The Arrow type a value is written as: Delta has no unsigned ints, no time, microseconds only."""
    if pa.types.is_unsigned_integer(arrow):
        widened = {8: pa.int16(), 16: pa.int32(), 32: pa.int64()}
        return widened.get(arrow.bit_width, pa.decimal128(20, 0))
    if pa.types.is_timestamp(arrow) and arrow.unit == "ns":
        return pa.string() if nanoseconds == "string" else pa.timestamp("us", arrow.tz)
    if pa.types.is_timestamp(arrow) and arrow.unit in ("s", "ms"):
        return pa.timestamp("us", arrow.tz)
    if pa.types.is_time(arrow):
        return pa.string()
    if pa.types.is_decimal(arrow) and arrow.precision > 38:
        return pa.string()
    if pa.types.is_large_string(arrow) or pa.types.is_string_view(arrow):
        return pa.string()
    return arrow


def replace_predicate(first_day: datetime.date, last_day: datetime.date) -> str:
    """The Delta predicate selecting exactly the partitions `first_day..last_day`."""
    if first_day == last_day:
        return f"{PARTITION_DATE} = '{first_day.isoformat()}'"
    return (
        f"{PARTITION_DATE} >= '{first_day.isoformat()}' AND "
        f"{PARTITION_DATE} <= '{last_day.isoformat()}'"
    )


def partition_dates(values: pa.Array, zone: str) -> pa.Array:
    """Each row's partition day from its partition-column value, in the partitions' zone."""
    if pa.types.is_date(values.type):
        return values.cast(pa.date32())
    if pa.types.is_timestamp(values.type):
        if values.type.tz is not None:
            values = pc.local_timestamp(values.cast(pa.timestamp(values.type.unit, zone)))
        return values.cast(pa.date32())
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return pc.strptime(pc.utf8_slice_codeunits(values, 0, 10), "%Y-%m-%d", "s").cast(
            pa.date32()
        )
    raise IngestionError(
        f"the partition column has type {values.type}; it must be a date, a timestamp or "
        "ISO 8601 text. Fix `partition_column` in the project file."
    )


@dataclass
class WritePlan:
    """Everything that decides how the incoming batches become Delta rows."""

    table_label: str
    partition_label: str
    target: pa.Schema
    partition_column: str | None
    zone: str
    first_day: datetime.date
    last_day: datetime.date
    ingested_at: datetime.datetime
    run_id: str
    nanoseconds: str
    rows: int = 0
    rows_by_day: dict[datetime.date, int] = field(default_factory=dict)
    source_error: BaseException | None = None

    def convert(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Cast to the Delta-compatible schema and add the lineage columns."""
        arrays = []
        for target_field in self.target:
            name = target_field.name
            if name == PARTITION_DATE:
                arrays.append(self._partition_dates(batch))
            elif name == INGESTED_AT:
                arrays.append(_repeat(self.ingested_at, target_field.type, batch.num_rows))
            elif name == RUN_ID:
                arrays.append(_repeat(self.run_id, target_field.type, batch.num_rows))
            elif name in batch.schema.names:
                arrays.append(self._cast(batch.column(name), target_field))
            else:
                arrays.append(pa.nulls(batch.num_rows, target_field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.target)

    def _cast(self, values: pa.Array, target_field: pa.Field) -> pa.Array:
        if values.type == target_field.type:
            return values
        if pa.types.is_timestamp(values.type) and values.type.unit == "ns":
            if self.nanoseconds == "string":
                return pc.strftime(values, "%Y-%m-%dT%H:%M:%S")
            if self.nanoseconds == "error":
                try:
                    return values.cast(target_field.type, safe=True)
                except pa.ArrowInvalid:
                    raise PrecisionLossError(
                        f"{self.table_label}, {self.partition_label}: column "
                        f"{target_field.name} has values with 100 ns digits, which Delta "
                        "(microseconds) cannot hold. Set `timestamp_nanoseconds: string` on the "
                        "table to keep them as text, or `truncate` to drop them."
                    ) from None
            return values.cast(target_field.type, safe=False)
        return values.cast(target_field.type, safe=True)

    def _partition_dates(self, batch: pa.RecordBatch) -> pa.Array:
        if self.partition_column is None:
            return _repeat(self.first_day, pa.date32(), batch.num_rows)
        days = partition_dates(batch.column(self.partition_column), self.zone)
        if batch.num_rows and days.null_count:
            raise IngestionError(
                f"{self.table_label}, {self.partition_label}: {days.null_count} row(s) have no "
                f"{self.partition_column}; a partitioned table needs it on every row."
            )
        if batch.num_rows:
            bounds = pc.min_max(days)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if low < self.first_day or high > self.last_day:
                raise IngestionError(
                    f"{self.table_label}, {self.partition_label}: rows for {low}..{high} fall "
                    f"outside the partition ({self.first_day}..{self.last_day}); the source "
                    "returned rows it should have filtered out."
                )
            counts = pc.value_counts(days)
            for day, count in zip(
                counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
            ):
                self.rows_by_day[day] = self.rows_by_day.get(day, 0) + count
        return days

    def stream(
        self, reader: Iterable[pa.RecordBatch], log: Callable[[str], None]
    ) -> Generator[pa.RecordBatch]:
        """Convert batches, count rows, log progress; remember a source error for the caller."""
        started = last_report = time.monotonic()
        try:
            for batch in reader:
                self.rows += batch.num_rows
                yield self.convert(batch)
                now = time.monotonic()
                if now - last_report >= PROGRESS_INTERVAL_SECONDS:
                    last_report = now
                    elapsed = now - started
                    log(
                        f"{self.table_label} {self.partition_label}: {self.rows:,} rows in "
                        f"{elapsed:.0f} s ({self.rows / elapsed:,.0f} rows/s)"
                    )
        except BaseException as error:
            # delta-rs only sees an opaque stream failure: keep the real error to re-raise
            self.source_error = error
            raise


@dataclass(frozen=True)
class OutputWindow:
    """The days an output covers (today for a snapshot) and how messages name them."""

    first_day: datetime.date
    last_day: datetime.date
    zone: str
    partition_label: str
    windowed: bool

    @property
    def predicate(self) -> str | None:
        """The replace predicate of a partitioned output; None for a full snapshot."""
        return replace_predicate(self.first_day, self.last_day) if self.windowed else None


def output_window(context: OutputContext) -> OutputWindow:
    """The partition window (one day or a backfill's range) an asset's output replaces."""
    if not context.has_asset_partitions:
        today = datetime.datetime.now(datetime.UTC).date()
        return OutputWindow(today, today, "UTC", "full snapshot", windowed=False)
    window = context.asset_partitions_time_window
    zone = getattr(context.asset_partitions_def, "timezone", None) or "UTC"
    first_day = window.start.date()
    last_day = (window.end - datetime.timedelta(microseconds=1)).date()
    label = (
        f"partition {first_day}" if first_day == last_day else f"partitions {first_day}..{last_day}"
    )
    return OutputWindow(first_day, last_day, zone, label, windowed=True)


def output_reader(obj: Any) -> tuple[pa.RecordBatchReader, SourceStream | None]:
    """The batches an asset returned, and its SourceStream when it returned one."""
    if isinstance(obj, SourceStream):
        return obj.reader, obj
    if isinstance(obj, pa.RecordBatchReader):
        return obj, None
    return pa.table(obj).to_reader(), None


def lake_schema(schema: pa.Schema, nanoseconds: str) -> pa.Schema:
    """The schema rows are written with: Delta-compatible types, then the lineage columns."""
    return pa.schema(
        [
            pa.field(f.name, delta_compatible_type(f.type, nanoseconds), nullable=True)
            for f in schema
            if f.name not in LINEAGE_COLUMNS
        ]
        + [
            pa.field(PARTITION_DATE, pa.date32()),
            pa.field(INGESTED_AT, pa.timestamp("us", "UTC")),
            pa.field(RUN_ID, pa.string()),
        ]
    )


def row_count_metadata(context: OutputContext, plan: WritePlan) -> dict[str, Any]:
    """`dagster/row_count` for one partition; for a backfill's range, each partition's own count
    (added to its materialization) and the run's total as `rows_in_run`."""
    if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
        for key in context.asset_partition_keys:
            day = datetime.date.fromisoformat(key[:10])
            context.step_context.add_asset_metadata(
                {"dagster/row_count": plan.rows_by_day.get(day, 0)}, partition_key=key
            )
        return {"rows_in_run": plan.rows}
    return {"dagster/row_count": plan.rows}


class DeltaLakeIOManager(ConfigurableIOManager):
    """Writes each asset to a Delta table `<root>/<source>/<table>`; replaces partitions atomically."""

    root_uri: str = Field(
        description="Folder or object-store URI (s3://, az://, gs://) holding one Delta table "
        "per asset, at <root>/<asset key path>."
    )
    # repr=False: once a run resolved the ${VAR}s, the values are credentials
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="delta-rs storage options (credentials, endpoint); take secrets from EnvVar.",
    )
    target_file_size: int | None = Field(
        default=None,
        description="Target Parquet file size in bytes for written files; delta-rs default.",
    )

    def table_uri(self, asset_path: list[str]) -> str:
        """Where an asset's Delta table lives."""
        return "/".join([self.root_uri.rstrip("/"), *asset_path])

    def open_table(self, asset_path: list[str]) -> DeltaTable | None:
        """An asset's Delta table at its latest version, or None before its first write."""
        return self._open(self.table_uri(asset_path))

    def open_uri(self, uri: str) -> DeltaTable | None:
        """The Delta table at `uri` (in this lake's storage), None if there is none yet."""
        return self._open(uri)

    def _open(self, uri: str) -> DeltaTable | None:
        try:
            return DeltaTable(uri, storage_options=self.storage_options or None)
        except TableNotFoundError:
            return None

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        """Write the asset's batches: replace its partitions (or the whole snapshot) in one commit."""
        if obj is None:
            return
        reader, source_stream = output_reader(obj)
        metadata = context.definition_metadata or {}
        asset_path = list(context.asset_key.path)
        uri = self.table_uri(asset_path)
        table_label = f"table {'.'.join(asset_path)}"
        partition_column = metadata_text(metadata.get(PARTITION_COLUMN_KEY))
        policy = metadata_text(metadata.get(SCHEMA_POLICY_KEY)) or "evolve"
        nanoseconds = metadata_text(metadata.get(NANOSECONDS_KEY)) or "error"
        window = output_window(context)
        first_day, last_day, zone = window.first_day, window.last_day, window.zone
        partition_label, predicate = window.partition_label, window.predicate
        target = lake_schema(reader.schema, nanoseconds)
        existing = self._open(uri)
        schema_mode: Literal["merge"] | None = None
        if existing is not None:
            table_types = delta_type_names(pa.schema(existing.schema().to_arrow()))
            diff = schema_diff(table_types, delta_type_names(target))
            if diff.changed or (diff and policy == "freeze"):
                fix = (
                    "Change the column back at the source, or write to a new table (asset_name)."
                    if diff.changed
                    else "The table's schema_policy is `freeze`: set it to `evolve` to accept "
                    "added columns, or change the source back."
                )
                raise SchemaDriftError(
                    f"{table_label} ({partition_label}): the source schema no longer matches the "
                    f"Delta table at {uri}: {diff.describe()}. {fix}"
                )
            if diff.added:
                schema_mode = "merge"
            # keep the table's column order; missing columns are written as nulls
            table_schema = pa.schema(existing.schema().to_arrow())
            target = pa.schema(
                [
                    table_schema.field(name) if name in table_types else target.field(name)
                    for name in [*table_schema.names, *diff.added]
                ]
            )

        plan = WritePlan(
            table_label=table_label,
            partition_label=partition_label,
            target=target,
            partition_column=partition_column,
            zone=zone,
            first_day=first_day,
            last_day=last_day,
            ingested_at=datetime.datetime.now(datetime.UTC),
            run_id=context.run_id,
            nanoseconds=nanoseconds,
        )
        started = time.monotonic()
        batches = plan.stream(read_ahead(reader), context.log.info)
        legacy = existing is not None and bool(existing.metadata().partition_columns)
        try:
            if schema_mode is None and not legacy:
                written = self._replace_with_files(
                    uri, existing, batches, plan, predicate is not None, context.log.info
                )
            else:
                # a schema change commits new metadata too, and a table written Hive-partitioned
                # by an earlier version keeps its layout: delta-rs's writer does both
                assert existing is not None  # only set against an existing table
                files_before = {path for path, _ in _add_actions(existing)}
                stream = pa.RecordBatchReader.from_batches(target, batches)
                self._replace(uri, stream, existing, predicate, schema_mode)
                after = DeltaTable(uri, storage_options=self.storage_options or None)
                written = [(p, size) for p, size in _add_actions(after) if p not in files_before]
        except Exception as error:
            if plan.source_error is not None:
                raise plan.source_error from None
            if isinstance(error, IngestionError):
                raise
            raise IngestionError(
                f"{table_label} ({partition_label}): writing the Delta table at {uri} failed: "
                f"{error}. The table is unchanged at its previous version; re-run the partition."
            ) from error
        finally:
            # a write that failed stops the reader thread now, not when the generator is collected
            batches.close()
        elapsed = time.monotonic() - started

        table = DeltaTable(uri, storage_options=self.storage_options or None)
        run_rows = row_count_metadata(context, plan)
        context.add_output_metadata(
            {
                **run_rows,
                "dagster/column_schema": column_schema(pa.schema(table.schema().to_arrow())),
                "dagster/table_name": ".".join(asset_path),
                "dagster/uri": MetadataValue.path(uri),
                "partitions": f"{first_day}..{last_day}" if predicate else "full snapshot",
                "delta_version": table.version(),
                "files_written": len(written),
                "bytes_written": sum(size for _, size in written),
                "seconds": round(elapsed, 3),
                "rows_per_second": round(plan.rows / elapsed) if elapsed > 0 else 0,
            }
        )
        context.log.info(
            f"{table_label} {partition_label}: wrote {plan.rows:,} rows as Delta version "
            f"{table.version()} in {elapsed:.2f} s"
        )
        if source_stream is not None:
            source_metadata = source_stream.metadata()
            if source_stream.quarantine:
                source_metadata.update(
                    self._write_rejected(uri, source_stream, plan, predicate, context)
                )
            context.add_output_metadata(source_metadata)

    def _replace_with_files(
        self,
        uri: str,
        existing: DeltaTable | None,
        batches: Iterator[pa.RecordBatch],
        plan: WritePlan,
        windowed: bool,
        log: Callable[[str], None],
    ) -> list[tuple[str, int]]:
        """Stream the batches into files clustered by day, then swap exactly the window's rows
        in one commit; the (path, bytes) of the files written.

        The commit is made against the table version the swap was planned on, never rebased:
        if another run committed first, the swap is planned again on the new version (its
        files for this window removed in turn) and retried, so concurrent runs of one window
        leave exactly one copy and runs of different windows all land."""
        options = self.storage_options or None
        filesystem = table_filesystem(uri, options)
        max_file_bytes = self.target_file_size or DEFAULT_MAX_FILE_BYTES
        files = ClusteredFileWriter(filesystem, plan.target, max_file_bytes=max_file_bytes)
        window = (plan.first_day, plan.last_day) if windowed else None
        written: list[AddAction] = []
        try:
            for batch in batches:
                files.write(batch)
            adds = files.finish()
            for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
                if existing is None:
                    # created once the data files are written: a failed first run leaves no
                    # table; a run that created it at the same moment is as good
                    existing = _create_table(uri, plan.target, options)
                # rows of files straddling the window's edges go to files of their own, so a
                # retry can drop them and plan again without touching this run's data
                kept = ClusteredFileWriter(filesystem, plan.target, max_file_bytes=max_file_bytes)
                try:
                    removes = _replace_window(existing, filesystem, kept, plan.target, window)
                    written = [*adds, *kept.finish()]
                    _check_schema(existing, plan)
                    existing.create_write_transaction(
                        [*written, *removes],
                        mode="append",
                        schema=plan.target,
                        commit_properties=CommitProperties(max_commit_retries=0),
                    )
                    return [(action.path, action.size) for action in written]
                except CommitFailedError:
                    kept.abort()
                    if attempt == MAX_COMMIT_ATTEMPTS:
                        raise _conflict_error(plan, attempt) from None
                    log(
                        f"{plan.table_label} {plan.partition_label}: another run committed to "
                        f"the table first; planning the swap again on its version (attempt "
                        f"{attempt + 1} of {MAX_COMMIT_ATTEMPTS})"
                    )
                    time.sleep(random.uniform(0.05, 0.25) * attempt)
                    existing = DeltaTable(uri, storage_options=options)
                except BaseException:
                    kept.abort()
                    raise
        except BaseException:
            files.abort()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _replace(
        self,
        uri: str,
        data: pa.RecordBatchReader | pa.Table,
        existing: DeltaTable | None,
        predicate: str | None,
        schema_mode: Literal["merge"] | None = None,
    ) -> None:
        """delta-rs's own writer, for schema changes, tables of an earlier layout and the small
        rejected-records tables."""
        options: dict[str, Any] = {
            "partition_by": (existing.metadata().partition_columns or None) if existing else None,
            "schema_mode": schema_mode,
            "storage_options": self.storage_options or None,
            "target_file_size": self.target_file_size,
        }
        if existing is None:
            write_deltalake(uri, data, mode="append", **options)
        else:
            # replaceWhere: exactly these days are swapped in one commit
            write_deltalake(uri, data, mode="overwrite", predicate=predicate, **options)

    def _write_rejected(
        self,
        uri: str,
        source_stream: SourceStream,
        plan: WritePlan,
        predicate: str | None,
        context: OutputContext,
    ) -> dict[str, Any]:
        """Replace the window's rows of `<table>_rejected` with this run's rejected records."""
        rejected = source_stream.rejected_table()
        rejected_uri = f"{uri}_rejected"
        existing = self._open(rejected_uri)
        if rejected.num_rows == 0 and existing is None:
            return {"rejected_table": "none (no record rejected)"}
        days = pc.fill_null(rejected.column("day"), pa.scalar(plan.first_day, pa.date32()))
        table = rejected.drop_columns(["day"]).append_column(PARTITION_DATE, days)
        table = table.append_column(
            INGESTED_AT, _repeat(plan.ingested_at, pa.timestamp("us", "UTC"), table.num_rows)
        ).append_column(RUN_ID, _repeat(plan.run_id, pa.string(), table.num_rows))
        self._replace(rejected_uri, table, existing, predicate)
        if rejected.num_rows:
            context.log.warning(
                f"{plan.table_label} {plan.partition_label}: {rejected.num_rows} record(s) did "
                f"not fit the schema and were kept in {rejected_uri}"
            )
        return {"rejected_table": MetadataValue.path(rejected_uri)}

    def load_input(self, context: InputContext) -> pa.Table:
        """The upstream table as Arrow, limited to the partitions this run asks for."""
        asset_path = list(context.asset_key.path)
        uri = self.table_uri(asset_path)
        table = self._open(uri)
        if table is None:
            raise IngestionError(
                f"table {'.'.join(asset_path)}: no Delta table at {uri}; materialize the "
                "upstream asset first."
            )
        if context.has_asset_partitions:
            window = context.asset_partitions_time_window
            first_day = window.start.date()
            last_day = (window.end - datetime.timedelta(microseconds=1)).date()
            day = pc.field(PARTITION_DATE)
            return table.to_pyarrow_dataset().to_table(
                filter=(day >= pa.scalar(first_day)) & (day <= pa.scalar(last_day))
            )
        return table.to_pyarrow_table()


def _replace_window(
    table: DeltaTable,
    filesystem: pa_fs.FileSystem,
    files: ClusteredFileWriter,
    schema: pa.Schema,
    window: tuple[datetime.date, datetime.date] | None,
) -> list[RemoveAction]:
    """Remove actions for the table's rows in `window` (every row when None).

    A file wholly inside the window is removed; a file that straddles its edges (or has no
    statistics) is read, and its rows outside the window are written again through `files`."""
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
                with filesystem.open_input_file(path) as handle:
                    rows = pq.read_table(handle)
                day = pc.field(PARTITION_DATE)
                outside = rows.filter((day < pa.scalar(first)) | (day > pa.scalar(last)))
                if outside.num_rows:
                    files.write(outside.select(schema.names).cast(schema))
        removes.append(RemoveAction(path=path, data_change=True, deletion_timestamp=now, size=size))
    return removes


def _create_table(uri: str, schema: pa.Schema, options: dict[str, str] | None) -> DeltaTable:
    """A new table, or the one a concurrent run created a moment earlier."""
    try:
        return DeltaTable.create(uri, schema, mode="ignore", storage_options=options)
    except (CommitFailedError, DeltaError):
        # both runs saw no table and raced for version 0; the other one won
        return DeltaTable(uri, storage_options=options)


def _check_schema(table: DeltaTable, plan: WritePlan) -> None:
    """The table (possibly changed by another run since planning) still has the plan's columns."""
    if pa.schema(table.schema().to_arrow()).names != plan.target.names:
        raise WriteConflictError(
            f"{plan.table_label} {plan.partition_label}: another run changed the table's columns "
            "while this one was writing; nothing was written. Re-run the partition."
        )


def _conflict_error(plan: WritePlan, attempts: int) -> WriteConflictError:
    return WriteConflictError(
        f"{plan.table_label} {plan.partition_label}: other runs kept committing to the table "
        f"while this one tried to ({attempts} attempts); nothing was written. Re-run the "
        "partition when fewer runs write the table at once."
    )


def _add_actions(table: DeltaTable) -> list[tuple[str, int]]:
    """(path, size in bytes) of every file in the table's current version."""
    actions = pa.table(table.get_add_actions(flatten=True))
    return list(
        zip(
            actions.column("path").to_pylist(),
            actions.column("size_bytes").to_pylist(),
            strict=True,
        )
    )


def column_schema(schema: pa.Schema) -> TableSchema:
    """Arrow schema -> the `dagster/column_schema` the UI shows."""
    return TableSchema(columns=[TableColumn(name=f.name, type=str(f.type)) for f in schema])


def _repeat(value: Any, kind: pa.DataType, count: int) -> pa.Array:
    """`count` copies of one value, built by Arrow (no Python list per batch)."""
    return pa.repeat(pa.scalar(value, kind), count)


def metadata_text(value: Any) -> str | None:
    """A definition-metadata value as text (None when absent or empty)."""
    if value is None:
        return None
    return str(getattr(value, "value", value)) or None
