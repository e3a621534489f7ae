"""Turn specs into Dagster assets and jobs: one daily-partitioned asset per source table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from dagster import (
    AssetChecksDefinition,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    TableColumn,
    TableSchema,
    asset,
)

from ingestion_assets.checks import dataset_checks
from ingestion_assets.io_managers.contract import (
    NANOSECONDS_KEY,
    PARTITION_COLUMN_KEY,
    SCHEMA_POLICY_KEY,
)
from ingestion_assets.lake.rows import INGESTED_AT, PARTITION_DATE, RUN_ID
from ingestion_assets.resources import SourceResource
from ingestion_assets.sources.base import source_kind
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import DatasetSpec, SourceSpecBase


def source_resource_key(source_name: str) -> str:
    """The resource key under which a source's connection is bound."""
    return f"{source_name}_source"


def source_resource_class(spec: SourceSpecBase) -> type[SourceResource]:
    """The Dagster resource class of a spec's kind (from the registry of source kinds)."""
    resource_class = source_kind(spec.type).resource_class()
    if not (isinstance(resource_class, type) and issubclass(resource_class, SourceResource)):
        raise TypeError(f"source kind '{spec.type}': {resource_class!r} is no SourceResource")
    return resource_class


def source_resource(source_name: str, spec: SourceSpecBase) -> SourceResource:
    """The resource that holds a source's settings (secrets as EnvVars) and opens it in a run."""
    return source_resource_class(spec).from_spec(source_name, spec)


def partitions_definition(
    spec: SourceSpecBase, table: DatasetSpec
) -> DailyPartitionsDefinition | None:
    """Daily partitions from the table's start date in the source's zone; None for a snapshot."""
    if table.partition_column is None:
        return None
    return DailyPartitionsDefinition(
        start_date=spec.start_date_of(table).isoformat(),
        end_date=spec.end_date.isoformat() if spec.end_date else None,
        timezone=spec.timezone,
        # today is a partition too, so that rows arriving today can be ingested (and re-ingested)
        end_offset=0 if spec.end_date else 1,
    )


def _definition_column_schema(spec: SourceSpecBase, dataset: DatasetSpec) -> TableSchema:
    declared = source_resource_class(spec).source_class.declared_columns(dataset)
    columns = [
        TableColumn(name=column.name, type=column.type, description=column.description)
        for column in declared
    ]
    columns += [
        TableColumn(name=PARTITION_DATE, type="date", description="the row's partition day"),
        TableColumn(name=INGESTED_AT, type="timestamp[us, tz=UTC]", description="write time"),
        TableColumn(name=RUN_ID, type="string", description="the Dagster run that wrote it"),
    ]
    return TableSchema(columns=columns)


def _description(spec: SourceSpecBase, table: DatasetSpec, kind: str) -> str:
    base = table.description or f"{table.origin} from the {kind} source."
    if table.partition_column is None:
        return (
            f"{base}\n\nUnpartitioned snapshot: there is no partition column, so every run "
            "reads the whole table and replaces the Delta table."
        )
    return (
        f"{base}\n\nPartitioned by day on `{table.partition_column}` (days begin in "
        f"{spec.timezone}); a run replaces exactly its days in the Delta table. "
        f"Primary key: {', '.join(table.primary_key) or 'not declared'}."
    )


def dataset_asset(
    source_name: str,
    spec: SourceSpecBase,
    table: DatasetSpec,
    io_manager_key: str = "io_manager",
) -> AssetsDefinition:
    """The asset `[source, table]` that streams one table's (or stream's) days into Delta
    (delta-rs, or Unity Catalog when `io_manager_key` is the Databricks IO manager's)."""
    resource_key = source_resource_key(source_name)
    partitions_def = partitions_definition(spec, table)
    kind = spec.asset_kind
    backfill_policy = None
    if partitions_def is not None:
        backfill_policy = (
            BackfillPolicy.single_run()
            if spec.max_partitions_per_run is None
            else BackfillPolicy.multi_run(spec.max_partitions_per_run)
        )
    metadata: dict[str, Any] = {
        "source_table": table.qualified_name,
        "dagster/column_schema": _definition_column_schema(spec, table),
        PARTITION_COLUMN_KEY: table.partition_column or "",
        SCHEMA_POLICY_KEY: table.schema_policy,
        NANOSECONDS_KEY: table.timestamp_nanoseconds,
    }
    if table.primary_key:
        metadata["primary_key"] = ", ".join(table.primary_key)

    @asset(
        key=AssetKey([source_name, table.key_name]),
        group_name=source_name,
        description=_description(spec, table, kind),
        partitions_def=partitions_def,
        backfill_policy=backfill_policy,
        kinds={kind, "delta", *(["databricks"] if io_manager_key != "io_manager" else [])},
        owners=list(table.owners or spec.owners),
        tags={**spec.tags, **table.tags},
        metadata=metadata,
        pool=source_name,
        required_resource_keys={resource_key},
        io_manager_key=io_manager_key,
    )
    def _table(context) -> Any:  # type: ignore[no-untyped-def]
        # Dagster reads these annotations at run time: `context` stays bare, the output is an
        # Arrow RecordBatchReader or a SourceStream (batches plus what the source learned)
        context = cast(AssetExecutionContext, context)
        window = None
        if partitions_def is not None:
            time_window = context.partition_time_window
            window = PartitionWindow(time_window.start, time_window.end)
        context.log.info(
            f"reading {table.qualified_name} from source '{source_name}'"
            + (f" for [{window.start.isoformat()}, {window.end.isoformat()})" if window else "")
        )
        source: SourceResource = getattr(context.resources, resource_key)
        stream = source.read(table, window)
        context.log.info(f"fetching {table.qualified_name} through {stream.path}")
        return stream

    return _table


def source_assets(
    source_name: str, spec: SourceSpecBase, io_manager_key: str = "io_manager"
) -> Sequence[AssetsDefinition]:
    """One asset per table or stream of a source, written by the IO manager `io_manager_key`."""
    return [dataset_asset(source_name, spec, dataset, io_manager_key) for dataset in spec.datasets]


def source_checks(source_name: str, spec: SourceSpecBase) -> Sequence[AssetChecksDefinition]:
    """The data-quality checks of every table or stream of a source."""
    checks = []
    for dataset in spec.datasets:
        definition = dataset_checks(
            AssetKey([source_name, dataset.key_name]),
            dataset,
            partitions_definition(spec, dataset),
            source_resource_key(source_name),
        )
        if definition is not None:
            checks.append(definition)
    return checks
