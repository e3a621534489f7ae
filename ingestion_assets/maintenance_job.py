"""The table maintenance job: one op per Delta table (compact, vacuum, checkpoint), on a schedule."""

from __future__ import annotations

from typing import Any, cast

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


def maintenance_job(project: ProjectSpec) -> JobDefinition | None:
    """A job with one independent op per Delta table of every source (tables written to
    Databricks are maintained by Unity Catalog, e.g. predictive optimization)."""
    settings = project.lake.maintenance
    ops = [
        _table_op(source_name, dataset.key_name, settings)
        for source_name, spec in project.sources.items()
        if project.io_manager_of(source_name) == "delta"
        for dataset in spec.datasets
    ]
    if not ops:
        return None
    graph = GraphDefinition(
        name=MAINTENANCE_JOB,
        node_defs=ops,
        description="Table maintenance: merge each month's small files, vacuum files no "
        f"version needs for {settings.vacuum_retention_hours} h, checkpoint the log.",
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
        description="Compacts, vacuums and checkpoints every Delta table of the lake.",
    )
