"""The table maintenance job: one op per Delta table (compact, vacuum, checkpoint) and per Iceberg
table (expire snapshots, delete unnamed files), on a schedule."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, cast

from dagster import (
    AssetKey,
    AssetObservation,
    DefaultScheduleStatus,
    GraphDefinition,
    JobDefinition,
    OpDefinition,
    OpExecutionContext,
    ScheduleDefinition,
    op,
)

from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.lake.compaction import maintain_table
from ingestion_assets.specs import MaintenanceSpec, ProjectSpec

if TYPE_CHECKING:  # pyiceberg is imported only by projects that write Iceberg
    from ingestion_assets.io_managers.iceberg import IcebergIOManager

MAINTENANCE_JOB = "maintain_tables"


def _table_op(source_name: str, key_name: str, settings: MaintenanceSpec) -> OpDefinition:
    asset_key = AssetKey([source_name, key_name])

    @op(
        name=f"maintain__{source_name}__{key_name}",
        required_resource_keys={"io_manager"},
        description=f"Compact, vacuum and checkpoint the Delta table of {source_name}/{key_name}.",
        tags={"ingestion/table": f"{source_name}/{key_name}"},
    )
    def _maintain(context) -> None:  # type: ignore[no-untyped-def]
        # Dagster reads the annotation at run time: `context` stays bare
        context = cast(OpExecutionContext, context)
        io_manager = cast(DeltaLakeIOManager, context.resources.io_manager)
        uri = io_manager.table_uri(list(asset_key.path))
        for table_uri in (uri, f"{uri}_rejected"):
            if io_manager.open_uri(table_uri) is None:
                if table_uri == uri:
                    context.log.info(f"{table_uri}: no Delta table yet; nothing to maintain")
                continue
            report = maintain_table(
                table_uri,
                io_manager.storage_options or None,
                compact=settings.compact,
                vacuum_retention_hours=settings.vacuum_retention_hours,
                checkpoint=settings.checkpoint,
                max_file_bytes=io_manager.target_file_size,
                log=context.log.info,
            )
            context.log.info(
                f"{table_uri}: {report.files_before} -> {report.files_after} files "
                f"({report.files_compacted} merged in {report.months_compacted} month(s), "
                f"{report.files_vacuumed} vacuumed)" + "".join(f"; {n}" for n in report.notes)
            )
            if table_uri == uri:
                context.log_event(
                    AssetObservation(
                        asset_key=asset_key,
                        description="table maintenance",
                        metadata=report.metadata(),
                    )
                )

    return _maintain


def _iceberg_table_op(source_name: str, key_name: str, settings: MaintenanceSpec) -> OpDefinition:
    asset_key = AssetKey([source_name, key_name])

    @op(
        name=f"maintain__{source_name}__{key_name}",
        required_resource_keys={"iceberg_io_manager"},
        description=f"Expire old snapshots of the Iceberg table of {source_name}/{key_name} and "
        "delete the files none names.",
        tags={"ingestion/table": f"{source_name}/{key_name}"},
    )
    def _maintain(context) -> None:  # type: ignore[no-untyped-def]
        # Dagster reads the annotation at run time: `context` stays bare
        context = cast(OpExecutionContext, context)
        manager = cast("IcebergIOManager", context.resources.iceberg_io_manager)
        retention = datetime.timedelta(hours=settings.vacuum_retention_hours)
        report = manager.maintain(tuple(asset_key.path), retention)
        if report is None:
            context.log.info(
                f"{manager.identifier(tuple(asset_key.path))}: no Iceberg table yet; nothing to maintain"
            )
            return
        context.log.info(
            f"{report.table}: {report.snapshots_expired} snapshot(s) older than "
            f"{settings.vacuum_retention_hours} h expired ({report.snapshots_kept} kept), "
            f"{report.files_removed} file(s) no snapshot names removed "
            f"({report.bytes_removed:,} bytes; {report.files_kept} kept)"
        )
        context.log_event(
            AssetObservation(
                asset_key=asset_key, description="table maintenance", metadata=report.metadata()
            )
        )

    return _maintain


# the writers whose tables the job maintains, and each one's op (Databricks tables are kept by
# Unity Catalog, e.g. predictive optimization; PostgreSQL tables by the server's autovacuum)
TABLE_OPS = {"delta": _table_op, "iceberg": _iceberg_table_op}


def maintenance_job(project: ProjectSpec) -> JobDefinition | None:
    """A job with one independent op per Delta or Iceberg table of every source."""
    settings = project.lake.maintenance
    ops = [
        TABLE_OPS[writer](source_name, dataset.key_name, settings)
        for source_name, spec in project.sources.items()
        if (writer := project.io_manager_of(source_name)) in TABLE_OPS
        for dataset in spec.datasets
    ]
    if not ops:
        return None
    graph = GraphDefinition(
        name=MAINTENANCE_JOB,
        node_defs=ops,
        description="Table maintenance: on Delta, merge each month's small files, vacuum files "
        f"no version needs for {settings.vacuum_retention_hours} h, checkpoint the log; on "
        f"Iceberg, expire snapshots older than {settings.vacuum_retention_hours} h and delete the "
        "files none names.",
    )
    return graph.to_job()


def maintenance_schedule(project: ProjectSpec, job: Any) -> ScheduleDefinition | None:
    """The maintenance job's schedule (`lake.maintenance.cron`), running by default."""
    settings = project.lake.maintenance
    if not settings.enabled:
        return None
    return ScheduleDefinition(
        name=f"{MAINTENANCE_JOB}_schedule",
        cron_schedule=settings.cron,
        execution_timezone=settings.timezone,
        job=job,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Compacts, vacuums and checkpoints every Delta table of the lake; expires "
        "the snapshots of every Iceberg table and deletes the files none names.",
    )
