"""Build the Dagster Definitions from the project file: assets, checks, jobs, automation, resources."""

from __future__ import annotations

from collections import defaultdict

from dagster import (
    AssetChecksDefinition,
    AssetsDefinition,
    AssetSelection,
    Definitions,
    JobDefinition,
    ScheduleDefinition,
    SensorDefinition,
    define_asset_job,
    definitions,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from ingestion_assets.automation import failure_sensor, source_automation
from ingestion_assets.errors import ConfigError
from ingestion_assets.factory import (
    partitions_definition,
    source_assets,
    source_checks,
    source_resource_key,
)
from ingestion_assets.io_managers.databricks import DatabricksIOManager
from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.maintenance_job import maintenance_job, maintenance_schedule
from ingestion_assets.project import config_value, load_project
from ingestion_assets.resources import RestSourceResource, SqlSourceResource
from ingestion_assets.specs import (
    DailySalesSpec,
    DatabricksSpec,
    ProjectSpec,
    RestSourceSpec,
    SqlSourceSpec,
)

DATABRICKS_IO_MANAGER_KEY = "databricks_io_manager"


def ingest_job_name(source_name: str) -> str:
    """The job that materializes every table of a source."""
    return f"ingest_{source_name}"


def source_jobs(
    source_name: str, spec: SqlSourceSpec | RestSourceSpec
) -> list[UnresolvedAssetJobDefinition]:
    """A job per source (one per distinct partitioning when the tables' start dates differ)."""
    by_partitioning: dict[str, list[str]] = defaultdict(list)
    snapshots: list[str] = []
    for table in spec.datasets:
        partitions_def = partitions_definition(spec, table)
        if partitions_def is None:
            snapshots.append(table.key_name)
        else:
            by_partitioning[partitions_def.start.strftime("%Y%m%d")].append(table.key_name)
    groups = list(by_partitioning.items()) or [("", [])]
    jobs = []
    for index, (start, names) in enumerate(groups):
        # snapshot tables refresh with the first job, so a daily run keeps them current too
        members = names + (snapshots if index == 0 else [])
        name = ingest_job_name(source_name) + (f"_from_{start}" if len(groups) > 1 else "")
        jobs.append(
            define_asset_job(
                name,
                selection=AssetSelection.assets(*[[source_name, member] for member in members]),
                description=f"Ingest every table or stream of source '{source_name}' into Delta.",
            )
        )
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


def _daily_sales(
    project: ProjectSpec, settings: DailySalesSpec
) -> tuple[list[AssetsDefinition], object]:
    """The Spark transform's assets and its PySpark resource (imported only when configured)."""
    try:
        from ingestion_assets.transforms.daily_sales import (
            daily_sales_assets,
            local_spark_resource,
        )
    except ImportError as error:
        raise ConfigError(
            f"transforms.daily_sales_by_product needs PySpark ({error.name} is missing): install "
            "the project with its `databricks` extra"
        ) from None
    spec = project.sources[settings.source]
    header = next(t for t in spec.datasets if t.key_name == "sales_order_header")
    partitions_def = partitions_definition(spec, header)
    assert partitions_def is not None  # the order tables are partitioned
    return daily_sales_assets(settings.source, partitions_def), local_spark_resource(
        **settings.spark_config
    )


def build_definitions(project: ProjectSpec) -> Definitions:
    """Everything Dagster needs, from validated specs; connects to nothing."""
    resources: dict[str, object] = {
        "io_manager": DeltaLakeIOManager(
            root_uri=project.lake.root,
            storage_options={
                key: config_value(value) for key, value in project.lake.storage_options.items()
            },
        )
    }
    assets: list[AssetsDefinition] = []
    jobs: list[UnresolvedAssetJobDefinition | JobDefinition] = []
    checks: list[AssetChecksDefinition] = []
    schedules: list[ScheduleDefinition] = []
    sensors: list[SensorDefinition] = [failure_sensor()]
    for source_name, spec in project.sources.items():
        resources[source_resource_key(source_name)] = (
            RestSourceResource.from_spec(source_name, spec)
            if isinstance(spec, RestSourceSpec)
            else SqlSourceResource.from_spec(source_name, spec)
        )
        if project.io_manager_of(source_name) == "databricks":
            assert project.lake.databricks is not None  # ProjectSpec validates it
            resources[DATABRICKS_IO_MANAGER_KEY] = databricks_io_manager(project.lake.databricks)
            assets.extend(source_assets(source_name, spec, DATABRICKS_IO_MANAGER_KEY))
        else:
            assets.extend(source_assets(source_name, spec))
            # the checks read the delta-rs table; Unity Catalog tables are checked in Databricks
            checks.extend(source_checks(source_name, spec))
        source_job_defs = source_jobs(source_name, spec)
        jobs.extend(source_job_defs)
        source_schedules, source_sensors = source_automation(source_name, spec, source_job_defs)
        schedules.extend(source_schedules)
        sensors.extend(source_sensors)
    daily_sales = project.transforms.daily_sales_by_product
    if daily_sales is not None:
        transform_assets, resources["pyspark"] = _daily_sales(project, daily_sales)
        assets.extend(transform_assets)
    maintenance = maintenance_job(project)
    schedule = None
    if maintenance is not None:
        jobs.append(maintenance)
        schedule = maintenance_schedule(project, maintenance)
    if schedule is not None:
        schedules.append(schedule)
    return Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=resources,
    )


@definitions
def defs() -> Definitions:
    """The project's definitions, built from INGEST_PROJECT_FILE (the demo file by default)."""
    return build_definitions(load_project())
