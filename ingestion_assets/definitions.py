"""Build the Dagster Definitions from the project file: assets, checks, jobs, automation, resources."""

from __future__ import annotations

import importlib
import pathlib
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from dagster import (
    AssetChecksDefinition,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    BetaWarning,
    DagsterInvalidDefinitionError,
    Definitions,
    PreviewWarning,
    ScheduleDefinition,
    SensorDefinition,
    define_asset_job,
    definitions,
)

from ingestion_assets.automation import (
    automation_condition_sensor,
    failure_sensor,
    source_automation,
)
from ingestion_assets.demo.autostart import ensure_demo_api
from ingestion_assets.errors import ConfigError
from ingestion_assets.executor import ingestion_executor
from ingestion_assets.factory import (
    partitions_definition,
    source_assets,
    source_checks,
    source_resource,
    source_resource_key,
)
from ingestion_assets.io_managers.contract import IO_MANAGER_KEYS
from ingestion_assets.io_managers.databricks import DatabricksIOManager
from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.maintenance_job import maintenance_job, maintenance_schedule
from ingestion_assets.preflight import check_sources_job
from ingestion_assets.project import (
    DEMO_PROJECT_FILE,
    config_value,
    load_project,
    project_file_path,
)
from ingestion_assets.specs import DatabricksSpec, DatasetSpec, ProjectSpec, SourceSpecBase

# extension modules: a `transforms.<name>` entry of the project file -> the function
# (project, the entry's settings) -> Definitions that builds it
TRANSFORMS = {
    "daily_sales_by_product": "ingestion_assets.demo.transforms.extension:daily_sales_by_product",
}


def ingest_job_name(source_name: str) -> str:
    """The job that materializes every table of a source."""
    return f"ingest_{source_name}"


def source_job_selections(source_name: str, spec: SourceSpecBase) -> dict[str, list[AssetKey]]:
    """A job per source (one per distinct partitioning when the tables' start dates differ):
    its name and its assets."""
    by_partitioning: dict[str, list[str]] = defaultdict(list)
    snapshots: list[str] = []
    for table in spec.datasets:
        partitions_def = partitions_definition(spec, table)
        if partitions_def is None:
            snapshots.append(table.key_name)
        else:
            by_partitioning[partitions_def.start.strftime("%Y%m%d")].append(table.key_name)
    groups = list(by_partitioning.items()) or [("", [])]
    jobs = {}
    for index, (start, names) in enumerate(groups):
        # snapshot tables refresh with the first job, so a daily run keeps them current too
        members = names + (snapshots if index == 0 else [])
        name = ingest_job_name(source_name) + (f"_from_{start}" if len(groups) > 1 else "")
        jobs[name] = [AssetKey([source_name, member]) for member in members]
    return jobs


def databricks_io_manager(settings: DatabricksSpec) -> DatabricksIOManager:
    """The Unity Catalog IO manager; `${VAR}`s become EnvVars, read when a run starts."""
    return DatabricksIOManager(
        host=config_value(settings.host),
        token=config_value(settings.token),
        warehouse_id=config_value(settings.warehouse_id),
        catalog=settings.catalog,
        schema_name=settings.schema_name,
        volume=settings.volume,
        rows_per_file=settings.rows_per_file,
        poll_interval_seconds=settings.poll_interval_seconds,
    )


def writer_io_manager(project: ProjectSpec, writer: str) -> object:
    """The IO manager of a writer other than the default Delta one (ProjectSpec has checked
    that its settings are there); `${VAR}`s become EnvVars, read when a run starts."""
    lake = project.lake
    if writer == "databricks":
        assert lake.databricks is not None
        return databricks_io_manager(lake.databricks)
    if writer == "iceberg":
        from ingestion_assets.io_managers.iceberg import IcebergIOManager

        assert lake.iceberg is not None
        return IcebergIOManager(
            catalog_uri=config_value(lake.iceberg.catalog_uri),
            warehouse=config_value(lake.iceberg.warehouse),
            token=None if lake.iceberg.token is None else config_value(lake.iceberg.token),
            storage_options={
                key: config_value(value) for key, value in lake.storage_options.items()
            },
            namespace=lake.iceberg.namespace,
            partition_by=lake.iceberg.partition_by,
            rows_per_file=lake.iceberg.rows_per_file,
        )
    if writer == "postgres":
        from ingestion_assets.io_managers.postgres import PostgresIOManager

        assert lake.postgres is not None
        return PostgresIOManager(
            url=config_value(lake.postgres.url), db_schema=lake.postgres.schema_name
        )
    raise ValueError(f"unknown writer {writer}")


def transform_definitions(project: ProjectSpec, name: str, settings: Any) -> Definitions:
    """The definitions of one `transforms.<name>` entry, from its extension module."""
    target = TRANSFORMS.get(name)
    if target is None:
        raise ConfigError(
            f"invalid project file: transforms.{name}: unknown transform; known: "
            f"{', '.join(sorted(TRANSFORMS)) or 'none'}"
        )
    module, _, function = target.partition(":")
    build = getattr(importlib.import_module(module), function)
    result: Definitions = build(project, settings)
    return result


def build_definitions(project: ProjectSpec) -> Definitions:
    """Everything Dagster needs, from validated specs; connects to nothing.

    Dagster's notices that an API the project chose (partitioned asset checks, code references)
    is still beta or preview are not repeated on every code load: they say nothing a user of
    the project can act on."""
    with warnings.catch_warnings():
        for category in (BetaWarning, PreviewWarning):
            warnings.filterwarnings("ignore", category=category)
        return _build_definitions(project)


def _build_definitions(project: ProjectSpec) -> Definitions:
    resources: dict[str, object] = {
        "io_manager": DeltaLakeIOManager(
            root_uri=project.lake.root,
            storage_options={
                key: config_value(value) for key, value in project.lake.storage_options.items()
            },
        )
    }
    assets: list[AssetsDefinition] = []
    jobs: list[Any] = []

    def locate(source_name: str) -> Callable[[DatasetSpec], tuple[str, int] | None]:
        return lambda dataset: project.entry_location(source_name, dataset)

    checks: list[AssetChecksDefinition] = []
    schedules: list[ScheduleDefinition] = []
    sensors: list[SensorDefinition] = [failure_sensor()]
    for source_name, spec in project.sources.items():
        resource = source_resource(source_name, spec)
        if project.io_manager_of(source_name) == "delta":
            # a kind that consults the tables' own records (a files source's ledger) reads them
            resource = resource.with_lake(
                project.lake.root,
                {key: config_value(value) for key, value in project.lake.storage_options.items()},
            )
        resources[source_resource_key(source_name)] = resource
        writer = project.io_manager_of(source_name)
        key = IO_MANAGER_KEYS[writer]
        if key not in resources:
            resources[key] = writer_io_manager(project, writer)
        assets.extend(source_assets(source_name, spec, key, locate(source_name)))
        checks.extend(source_checks(source_name, spec, key))
        selections = source_job_selections(source_name, spec)
        jobs.extend(
            define_asset_job(
                name,
                selection=AssetSelection.assets(*keys),
                description=f"Ingest every table or stream of source '{source_name}' into Delta.",
            )
            for name, keys in selections.items()
        )
        source_schedules, source_sensors = source_automation(source_name, spec, selections)
        schedules.extend(source_schedules)
        sensors.extend(source_sensors)
    if project.layers:
        # the layers parse SQL (sqlglot) and run DuckDB: imported only by projects that have them,
        # which keeps a run worker's start shorter for the others
        from ingestion_assets.layers.asset import layer_assets, layer_jobs

        layers = layer_assets(project)
        assets.extend(layers)
        jobs.extend(layer_jobs(layers))
    jobs.append(check_sources_job(project))
    maintenance = maintenance_job(project)
    if maintenance is not None:
        jobs.append(maintenance)
        schedule = maintenance_schedule(project, maintenance)
        if schedule is not None:
            schedules.append(schedule)
    core = Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=resources,
        executor=ingestion_executor,
    )
    extensions = [
        transform_definitions(project, name, settings)
        for name, settings in project.transforms.items()
    ]
    merged = Definitions.merge(core, *extensions) if extensions else core
    # after the merge: the extensions' downstream assets have conditions too
    automation = automation_condition_sensor(merged.assets or [])
    return Definitions.merge(merged, Definitions(sensors=[automation])) if automation else merged


class ProjectFileError(ConfigError, DagsterInvalidDefinitionError):
    """A ConfigError as Dagster reports it while loading a code location: Dagster passes its own
    errors through as they are, where it would wrap any other one in a DagsterUserCodeLoadError
    that the UI shows first (the project's message only below, as its cause)."""


def project_definitions(
    path: pathlib.Path, error_class: type[ProjectFileError] = ProjectFileError
) -> Definitions:
    """The Definitions of a project file, for Dagster to load: its ConfigErrors are raised as
    `error_class`, which Dagster shows as they are; the demo project starts the demo API when
    none is named."""
    try:
        if path.resolve() == DEMO_PROJECT_FILE.resolve():
            ensure_demo_api(path)
        return build_definitions(load_project(path))
    except ConfigError as error:
        # the original frames stay: the traceback still points at the key check that failed
        raise error_class(str(error)).with_traceback(error.__traceback__) from error.__cause__


@definitions
def defs() -> Definitions:
    """The project's definitions, built from INGEST_PROJECT_FILE (the demo file by default)."""
    return project_definitions(project_file_path())
