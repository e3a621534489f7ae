"""What every IO manager shares with the assets it writes: definition-metadata keys, the window
a context covers, and the metadata a materialization reports."""

from __future__ import annotations

import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
from dagster import InputContext, OutputContext, TableColumn, TableSchema

from ingestion_assets.lake.rows import WritePlan
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow

# keys of the definition metadata through which an asset tells the IO manager how to write it
PARTITION_COLUMN_KEY = "ingestion/partition_column"
SCHEMA_POLICY_KEY = "ingestion/schema_policy"
NANOSECONDS_KEY = "ingestion/timestamp_nanoseconds"


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


def metadata_text(value: Any) -> str | None:
    """A definition-metadata value as text (None when absent or empty)."""
    if value is None:
        return None
    return str(getattr(value, "value", value)) or None
