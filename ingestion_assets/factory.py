"""Turn specs into Dagster assets and jobs: one daily-partitioned asset per source table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    TableColumn,
    TableSchema,
    asset,
)

from ingestion_assets.io_managers.delta import (
    INGESTED_AT,
    NANOSECONDS_KEY,
    PARTITION_COLUMN_KEY,
    PARTITION_DATE,
    RUN_ID,
    SCHEMA_POLICY_KEY,
)
from ingestion_assets.resources import SqlSourceResource
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import SqlSourceSpec, TableSpec

_KINDS = {
    "mssql": "sqlserver",
    "postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "sqlite": "sqlite",
}


def source_resource_key(source_name: str) -> str:
    """The resource key under which a source's connection is bound."""
    return f"{source_name}_source"


def source_kind(spec: SqlSourceSpec) -> str:
    """`sqlserver`, `postgres`, ... from the connection's driver (`sql` when it is a secret)."""
    driver = spec.connection.drivername or spec.connection.url or ""
    return _KINDS.get(driver.split("+")[0].split(":")[0], "sql")


def partitions_definition(
    spec: SqlSourceSpec, table: TableSpec
) -> DailyPartitionsDefinition | None:
    """Daily partitions from the table's start date in the source's zone; None for a snapshot."""
    if table.partition_column is None:
        return None
    return DailyPartitionsDefinition(
        start_date=spec.start_date_of(table).isoformat(),
        end_date=spec.end_date.isoformat() if spec.end_date else None,
        timezone=spec.timezone,
    )


def _definition_column_schema(table: TableSpec) -> TableSchema:
    declared = list(dict.fromkeys([*(table.columns or ()), *table.primary_key]))
    columns = [
        TableColumn(name=name, type="source type", description="declared in the project file")
        for name in declared
    ]
    columns += [
        TableColumn(name=PARTITION_DATE, type="date", description="the row's partition day"),
        TableColumn(name=INGESTED_AT, type="timestamp[us, tz=UTC]", description="write time"),
        TableColumn(name=RUN_ID, type="string", description="the Dagster run that wrote it"),
    ]
    return TableSchema(columns=columns)


def _description(spec: SqlSourceSpec, table: TableSpec, kind: str) -> str:
    base = table.description or f"`{table.qualified_name}` from the {kind} source."
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


def table_asset(source_name: str, spec: SqlSourceSpec, table: TableSpec) -> AssetsDefinition:
    """The asset `[source, table]` that streams one table's days into Delta."""
    resource_key = source_resource_key(source_name)
    partitions_def = partitions_definition(spec, table)
    kind = source_kind(spec)
    backfill_policy = None
    if partitions_def is not None:
        backfill_policy = (
            BackfillPolicy.single_run()
            if spec.max_partitions_per_run is None
            else BackfillPolicy.multi_run(spec.max_partitions_per_run)
        )
    metadata: dict[str, Any] = {
        "source_table": table.qualified_name,
        "dagster/column_schema": _definition_column_schema(table),
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
        kinds={kind, "delta"},
        owners=list(table.owners or spec.owners),
        tags={**spec.tags, **table.tags},
        metadata=metadata,
        pool=source_name,
        required_resource_keys={resource_key},
    )
    def _table(context) -> pa.RecordBatchReader:  # type: ignore[no-untyped-def]
        # unannotated: Dagster checks the annotation at run time and cannot read a postponed one
        context = cast(AssetExecutionContext, context)
        resource: SqlSourceResource = getattr(context.resources, resource_key)
        window = None
        if partitions_def is not None:
            time_window = context.partition_time_window
            first, last = context.partition_key_range.start, context.partition_key_range.end
            window = PartitionWindow(
                start=time_window.start,
                end=time_window.end,
                label=f"partition {first}" if first == last else f"partitions {first}..{last}",
            )
        context.log.info(
            f"reading {table.qualified_name} from source '{source_name}'"
            + (f" for [{window.start.isoformat()}, {window.end.isoformat()})" if window else "")
        )
        return resource.reader(table).read(window)

    return _table


def source_assets(source_name: str, spec: SqlSourceSpec) -> Sequence[AssetsDefinition]:
    """One asset per table of a SQL source."""
    return [table_asset(source_name, spec, table) for table in spec.tables]
