"""`daily_sales_by_product` as a Databricks job run through Dagster Pipes (docs/databricks-pipes.md).

The asset submits `daily_sales_job.py` as a one-off job run; the script reads the ingested Unity
Catalog tables for the run's days with the cluster's Spark, replaces those days of the target table
and reports the materialization back. Building these definitions connects to nothing: the
workspace client is created inside the asset, from `DATABRICKS_HOST` / `DATABRICKS_TOKEN`.
"""

from __future__ import annotations

from typing import Any, cast

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    EnvVar,
    MaterializeResult,
    asset,
)
from dagster_databricks import DatabricksClientResource, PipesDatabricksClient
from databricks.sdk.service import compute, jobs
from pydantic import BaseModel, ConfigDict, Field

from ingestion_assets.demo.transforms.daily_sales import (
    DAILY_SALES_ASSET,
    DETAIL_ASSET,
    HEADER_ASSET,
)
from ingestion_assets.policies import follows_upstream

DATABRICKS_RESOURCE_KEY = "databricks"


class DatabricksJobSpec(BaseModel):
    """Where the job script is, which cluster runs it, and which Unity Catalog tables it uses."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    script_path: str = Field(
        description="The uploaded daily_sales_job.py: `dbfs:/...`, `/Workspace/...` or "
        "`/Volumes/<catalog>/<schema>/<volume>/...`."
    )
    source_tables: str = Field(
        description="`catalog.schema` holding the ingested sales_order_header/detail tables."
    )
    target_table: str = Field(
        description="`catalog.schema.table` the aggregate replaces the run's days of."
    )
    existing_cluster_id: str | None = Field(
        default=None,
        description="Run on this all-purpose cluster; None starts a job cluster (new_cluster).",
    )
    spark_version: str = Field(
        default="15.4.x-scala2.12", description="Databricks runtime of the job cluster."
    )
    node_type_id: str = Field(default="i3.xlarge", description="Job cluster node type.")
    num_workers: int = Field(default=1, ge=0, description="Job cluster workers (0: single node).")
    dagster_pipes_version: str = Field(
        default="dagster-pipes", description="PyPI requirement installed on the cluster."
    )
    timeout_seconds: int = Field(default=3600, gt=0, description="Job run timeout.")


def databricks_resource() -> DatabricksClientResource:
    """The workspace connection, from DATABRICKS_HOST and DATABRICKS_TOKEN at run time."""
    return DatabricksClientResource(
        host=EnvVar("DATABRICKS_HOST"), token=EnvVar("DATABRICKS_TOKEN")
    )


def submit_task(spec: DatabricksJobSpec) -> jobs.SubmitTask:
    """The one-task job run: the script as a spark_python_task on a new or existing cluster."""
    task: dict[str, Any] = {
        "task_key": DAILY_SALES_ASSET,
        "spark_python_task": {"python_file": spec.script_path, "parameters": []},
        "libraries": [{"pypi": {"package": spec.dagster_pipes_version}}],
        "timeout_seconds": spec.timeout_seconds,
    }
    if spec.existing_cluster_id:
        task["existing_cluster_id"] = spec.existing_cluster_id
    else:
        task["new_cluster"] = compute.ClusterSpec(
            spark_version=spec.spark_version,
            node_type_id=spec.node_type_id,
            num_workers=spec.num_workers,
            data_security_mode=compute.DataSecurityMode.SINGLE_USER,
        ).as_dict()
    return jobs.SubmitTask.from_dict(task)


def daily_sales_databricks_assets(
    source_name: str, partitions_def: DailyPartitionsDefinition, spec: DatabricksJobSpec
) -> list[AssetsDefinition]:
    """`[source, daily_sales_by_product]` computed by a Databricks job run (Pipes)."""
    task = submit_task(spec)

    @asset(
        key=AssetKey([source_name, DAILY_SALES_ASSET]),
        deps=[AssetKey([source_name, HEADER_ASSET]), AssetKey([source_name, DETAIL_ASSET])],
        group_name=f"{source_name}_transforms",
        description=(
            f"Per day and ProductID: orders, quantity and revenue of source '{source_name}', "
            f"computed by a Databricks job run into `{spec.target_table}`."
        ),
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        automation_condition=follows_upstream(),
        kinds={"databricks", "spark", "deltalake"},
        metadata={"dagster/table_name": spec.target_table, "script_path": spec.script_path},
        required_resource_keys={DATABRICKS_RESOURCE_KEY},
    )
    def daily_sales_by_product(context) -> MaterializeResult[Any]:  # type: ignore[no-untyped-def]
        # a bare `context`: Dagster reads the annotation at run time, where it does not resolve
        context = cast(AssetExecutionContext, context)
        databricks: DatabricksClientResource = getattr(context.resources, DATABRICKS_RESOURCE_KEY)
        pipes = PipesDatabricksClient(client=databricks.get_client().workspace_client)
        return pipes.run(
            context=context,
            task=task,
            extras={"source_tables": spec.source_tables, "target_table": spec.target_table},
            submit_args={"run_name": f"{source_name}.{DAILY_SALES_ASSET} {context.run_id}"},
        ).get_materialize_result()

    return [daily_sales_by_product]
