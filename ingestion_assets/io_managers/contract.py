"""What every IO manager shares with the assets it writes: the writer interface (stage, audit,
commit), definition-metadata keys, the window a context covers, and the metadata a
materialization reports."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import pyarrow as pa
from dagster import (
    InputContext,
    OutputContext,
    TableColumn,
    TableColumnConstraints,
    TableConstraints,
    TableSchema,
)

from ingestion_assets.lake.replace import held_interrupts
from ingestion_assets.lake.rows import INGESTED_AT, LINEAGE_COLUMNS, PARTITION_DATE, WritePlan
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import DatasetSpec

# the resource key of the Unity Catalog IO manager (the merge asset asks which writer it has)
DATABRICKS_IO_MANAGER_KEY = "databricks_io_manager"
# each writer's resource key, and the storage kind its assets show (Dagster draws its icon)
IO_MANAGER_KEYS = {
    "delta": "io_manager",
    "databricks": DATABRICKS_IO_MANAGER_KEY,
    "iceberg": "iceberg_io_manager",
    "postgres": "postgres_io_manager",
}
STORAGE_KINDS = {
    "io_manager": "deltalake",
    DATABRICKS_IO_MANAGER_KEY: "databricks",
    "iceberg_io_manager": "iceberg",
    "postgres_io_manager": "postgres",
}

# keys of the definition metadata through which an asset tells the IO manager how to write it
PARTITION_COLUMN_KEY = "ingestion/partition_column"
SCHEMA_POLICY_KEY = "ingestion/schema_policy"
NANOSECONDS_KEY = "ingestion/timestamp_nanoseconds"
PARTITION_ROW_COUNT = "dagster/partition_row_count"
COLUMN_SCHEMA = "dagster/column_schema"


class RunLog(Protocol):
    """Where a write reports progress: `context.log` in a run."""

    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


@dataclass(frozen=True)
class WriteRequest:
    """What an asset asks a writer to stage: its table, the window it replaces (None: the whole
    table), and how source rows become the table's rows."""

    asset_path: tuple[str, ...]
    window: PartitionWindow | None
    run_id: str
    partition_column: str | None
    log: RunLog
    schema_policy: str = "evolve"
    nanoseconds: str = "error"
    key_columns: tuple[str, ...] = ()

    def plan(self, target: pa.Schema, table_label: str | None = None) -> WritePlan:
        """How the rows of `target`'s schema become this table's rows (stamped now)."""
        return WritePlan(
            table_label=table_label or f"table {'.'.join(self.asset_path)}",
            window=self.window,
            target=target,
            partition_column=self.partition_column,
            ingested_at=datetime.datetime.now(datetime.UTC),
            run_id=self.run_id,
            nanoseconds=self.nanoseconds,
            key_columns=self.key_columns,
        )


class StagedWrite(Protocol):
    """Rows written where no reader sees them yet: the audit reads them (`plan` counts rows per
    day and keeps the key columns), then `commit()` publishes them in one step or `abort()`
    removes them, leaving the table at its previous version."""

    plan: WritePlan
    table_name: str
    # the incoming rows' schema, and the table's before the commit (None: no table yet)
    incoming_schema: pa.Schema
    table_schema: pa.Schema | None

    def kept_rows(self, columns: list[str], among: pa.Array | None = None) -> pa.Table | None:
        """`columns` of the rows the commit keeps outside the window (with `among`: only those
        whose first column holds one of its values); None if unknown here."""
        ...

    def commit(self) -> dict[str, Any]:
        """Publish the staged rows; the materialization's metadata."""
        ...

    def abort(self) -> None:
        """Remove the staged rows."""
        ...


class TableWriter(Protocol):
    """An IO manager that ingestion assets write through (stage, audit, commit) and that checks
    read the committed table from."""

    def stage(self, request: WriteRequest, data: Any) -> StagedWrite:
        """Write `data` (a SourceStream, RecordBatchReader or Arrow table) without publishing."""
        ...

    def committed_rows(
        self, asset_path: tuple[str, ...], window: PartitionWindow | None, columns: list[str]
    ) -> pa.Table | None:
        """`columns` and `_partition_date` of the table's rows in `window`; None before the
        table's first write."""
        ...

    def committed_schema(self, asset_path: tuple[str, ...]) -> pa.Schema | None:
        """The table's schema; None before its first write."""
        ...


def context_window(context: OutputContext | InputContext) -> PartitionWindow | None:
    """The partitions (one day or a backfill's range) an output replaces or an input reads;
    None for an unpartitioned asset."""
    if not context.has_asset_partitions:
        return None
    window = context.asset_partitions_time_window
    zone = ZoneInfo(getattr(context.asset_partitions_def, "timezone", None) or "UTC")
    return PartitionWindow(window.start.astimezone(zone), window.end.astimezone(zone))


def output_reader(obj: Any) -> tuple[pa.RecordBatchReader, SourceStream | None]:
    """The batches an asset returned, and its SourceStream when it returned one."""
    if isinstance(obj, SourceStream):
        return obj.reader, obj
    if isinstance(obj, pa.RecordBatchReader):
        return obj, None
    return pa.table(obj).to_reader(), None


def write_output(writer: TableWriter, context: OutputContext, obj: Any) -> None:
    """`handle_output` of every writer, for assets that return Arrow data (no audit): stage and
    commit at once, reporting the commit's metadata and each partition's rows. A stop request
    waits until the commit and its metadata are done."""
    if obj is None:
        return
    metadata = context.definition_metadata or {}
    request = WriteRequest(
        asset_path=tuple(context.asset_key.path),
        window=context_window(context),
        run_id=context.run_id,
        partition_column=metadata_text(metadata.get(PARTITION_COLUMN_KEY)),
        log=context.log,
        schema_policy=metadata_text(metadata.get(SCHEMA_POLICY_KEY)) or "evolve",
        nanoseconds=metadata_text(metadata.get(NANOSECONDS_KEY)) or "error",
    )
    staged = writer.stage(request, obj)
    with held_interrupts():
        context.add_output_metadata(staged.commit())
        add_partition_row_counts(context, staged.plan)


def partition_row_counts(
    partition_keys: list[str], rows_by_day: Mapping[datetime.date, int]
) -> dict[str, int]:
    """Each partition key's rows (`dagster/partition_row_count` of its materialization)."""
    return {
        key: rows_by_day.get(datetime.date.fromisoformat(key[:10]), 0) for key in partition_keys
    }


def add_partition_row_counts(context: OutputContext, plan: WritePlan) -> None:
    """Put each partition's row count on its own materialization."""
    if context.has_asset_partitions:
        counts = partition_row_counts(list(context.asset_partition_keys), plan.rows_by_day)
        for key, rows in counts.items():
            context.step_context.add_asset_metadata({PARTITION_ROW_COUNT: rows}, partition_key=key)


def partitions_text(plan: WritePlan) -> str:
    """The `partitions` metadata of a write: `first..last`, or `full snapshot`."""
    return f"{plan.first_day}..{plan.last_day}" if plan.window else "full snapshot"


def write_timing_metadata(plan: WritePlan, elapsed: float) -> dict[str, Any]:
    """What every writer reports of a write's span: its partitions, seconds and rows per second."""
    return {
        "partitions": partitions_text(plan),
        "seconds": round(elapsed, 3),
        "rows_per_second": round(plan.rows / elapsed) if elapsed > 0 else 0,
    }


def column_schema(schema: pa.Schema) -> TableSchema:
    """Arrow schema -> the `dagster/column_schema` the UI shows."""
    return TableSchema(columns=[TableColumn(name=f.name, type=str(f.type)) for f in schema])


def _lineage_description(name: str, dataset: DatasetSpec, timezone: str) -> str:
    if name == PARTITION_DATE:
        if dataset.partition_column is None:
            return (
                "Lineage: the day (UTC) of the run that wrote the snapshot; every run replaces "
                "the whole table."
            )
        return (
            f"Lineage: the row's partition day, the day of `{dataset.partition_column}` in "
            f"{timezone}; a run replaces exactly its days."
        )
    if name == INGESTED_AT:
        return "Lineage: when the run wrote the row (UTC), the same for every row of the run."
    return "Lineage: the id of the Dagster run that wrote the row (the UI's Runs page finds it)."


def _key_position(name: str, primary_key: Sequence[str]) -> str:
    if len(primary_key) == 1:
        return "primary key"
    return f"primary key ({primary_key.index(name) + 1} of {len(primary_key)})"


def described_column(
    name: str,
    column_type: str,
    dataset: DatasetSpec,
    timezone: str,
    source_type: str | None = None,
) -> TableColumn:
    """One column of an ingested table as the UI shows it: for a source column its name as the
    source spells it, its type there and its role (primary key, partition column), constraints
    for a key; for a lineage column, what it holds."""
    if name in LINEAGE_COLUMNS:
        return TableColumn(
            name=name,
            type=column_type,
            description=_lineage_description(name, dataset, timezone),
            constraints=TableColumnConstraints(nullable=False, other=["lineage"]),
        )
    parts = [
        f"Source column `{name}` of {dataset.origin}"
        + (f"; source type {source_type}." if source_type else ".")
    ]
    other: list[str] = []
    nullable, unique = True, False
    if name in dataset.primary_key:
        position = _key_position(name, dataset.primary_key)
        parts.append(f"{position[0].upper()}{position[1:]}.")
        other.append(position)
        nullable, unique = False, len(dataset.primary_key) == 1
    if name == dataset.partition_column:
        parts.append(f"Partition column: its day in {timezone} is the row's `{PARTITION_DATE}`.")
        other.append("partition column")
    return TableColumn(
        name=name,
        type=column_type,
        description=" ".join(parts),
        constraints=TableColumnConstraints(nullable=nullable, unique=unique, other=other),
    )


def described_column_schema(
    columns: Sequence[tuple[str, str]],
    dataset: DatasetSpec,
    timezone: str,
    source_types: Mapping[str, str],
) -> TableSchema:
    """The `dagster/column_schema` of an ingested table: its (name, type) columns described
    (see `described_column`), the primary key named as a table constraint."""
    key = dataset.primary_key
    return TableSchema(
        columns=[
            described_column(name, column_type, dataset, timezone, source_types.get(name))
            for name, column_type in columns
        ],
        constraints=TableConstraints(other=[f"primary key ({', '.join(key)})"]) if key else None,
    )


def metadata_text(value: Any) -> str | None:
    """A definition-metadata value as text (None when absent or empty)."""
    if value is None:
        return None
    return str(getattr(value, "value", value)) or None
