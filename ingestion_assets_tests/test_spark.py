"""The Spark transform over ingested Delta tables, and the Databricks Pipes variant's definitions."""

from __future__ import annotations

import datetime
import pathlib
import py_compile
import shutil
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dagster import AssetKey, DagsterInstance, Definitions, materialize
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from ingestion_assets.demo.transforms import daily_sales_job
from ingestion_assets.demo.transforms.daily_sales import (
    DAILY_SALES_ASSET,
    LOCAL_SPARK_CONFIG,
    PYSPARK_RESOURCE_KEY,
    daily_sales_table,
)
from ingestion_assets.demo.transforms.daily_sales_databricks import (
    DATABRICKS_RESOURCE_KEY,
    DatabricksJobSpec,
    daily_sales_databricks_assets,
    databricks_resource,
    submit_task,
)
from ingestion_assets.errors import ConfigError
from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets_tests.conftest import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SOURCE,
    TEST_SCALE,
    IngestProject,
    SourceDatabase,
    build_project,
    table_entry,
)

pytestmark = pytest.mark.spark

FIRST_DAY = TEST_SCALE.start_date + datetime.timedelta(days=2)
LAST_DAY = FIRST_DAY + datetime.timedelta(days=2)
ORDER_TABLES = ["sales_order_header", "sales_order_detail"]
SCRIPT = pathlib.Path(daily_sales_job.__file__)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    """One local Spark session for the module; the resource's getOrCreate reuses it."""
    if shutil.which("java") is None:
        pytest.fail("Spark needs Java: install openjdk-17-jre-headless (make test does)")
    builder: Any = SparkSession.builder
    for key, value in LOCAL_SPARK_CONFIG.items():
        builder = builder.config(key, value)
    session: SparkSession = builder.getOrCreate()
    yield session
    session.stop()


def _partitions_def(project: IngestProject) -> Any:
    return project.asset("sales_order_header").partitions_def


def _materialize_sales(
    project: IngestProject, instance: DagsterInstance, first: datetime.date, last: datetime.date
) -> Any:
    # the transform as the project file wires it (transforms.daily_sales_by_product)
    return materialize(
        [*(project.asset(name) for name in [*ORDER_TABLES, DAILY_SALES_ASSET])],
        selection=[AssetKey([SOURCE, DAILY_SALES_ASSET])],
        instance=instance,
        resources=project.defs.resources,
        tags={RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()},
    )


def _expected(project: IngestProject, first: datetime.date, last: datetime.date) -> pa.Table:
    """The same aggregate computed by pyarrow from the ingested Delta tables."""
    day = pc.field(PARTITION_DATE)
    window = (day >= pa.scalar(first)) & (day <= pa.scalar(last))
    headers = project.delta("sales_order_header").to_pyarrow_dataset().to_table(filter=window)
    details = project.delta("sales_order_detail").to_pyarrow_dataset().to_table(filter=window)
    lines = details.select(["SalesOrderID", "ProductID", "OrderQty", "LineTotal"]).join(
        headers.select(["SalesOrderID", PARTITION_DATE]), "SalesOrderID", join_type="inner"
    )
    grouped = lines.group_by([PARTITION_DATE, "ProductID"]).aggregate(
        [("SalesOrderID", "count_distinct"), ("OrderQty", "sum"), ("LineTotal", "sum")]
    )
    return grouped.rename_columns(
        {
            PARTITION_DATE: "OrderDay",
            "SalesOrderID_count_distinct": "OrderCount",
            "OrderQty_sum": "Quantity",
            "LineTotal_sum": "Revenue",
        }
    ).sort_by([("OrderDay", "ascending"), ("ProductID", "ascending")])


def _landed(project: IngestProject) -> pa.Table:
    table = DeltaTable(project.table_uri(DAILY_SALES_ASSET)).to_pyarrow_table()
    return table.sort_by([("OrderDay", "ascending"), ("ProductID", "ascending")])


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """The aggregate's rows; revenue as text, so that equal means the same digits."""
    columns = [table.column(name).to_pylist() for name in daily_sales_job.OUTPUT_COLUMNS]
    columns[-1] = [str(value) for value in columns[-1]]
    return list(zip(*columns, strict=True))


HEADERS = pa.schema([("SalesOrderID", pa.int32()), (PARTITION_DATE, pa.date32())])
DETAILS = pa.schema(
    [
        ("SalesOrderID", pa.int32()),
        ("ProductID", pa.int32()),
        ("OrderQty", pa.int16()),
        ("LineTotal", pa.decimal128(38, 6)),
    ]
)


def test_the_aggregate_keeps_every_decimal_digit_and_drops_lines_without_a_header(
    spark: SparkSession,
) -> None:
    day = datetime.date(2024, 1, 2)
    headers = pa.table({"SalesOrderID": [1, 2], PARTITION_DATE: [day, day]}, schema=HEADERS)
    details = pa.table(
        {
            "SalesOrderID": [1, 1, 2, 3],
            "ProductID": [7, 7, 7, 7],
            "OrderQty": [32_000, 32_000, 1, 5],
            "LineTotal": [
                Decimal("99999999999999999999999999999.999999"),
                Decimal("0.000001"),
                Decimal("-0.000002"),
                Decimal("1.000000"),
            ],
        },
        schema=DETAILS,
    )

    table = daily_sales_table(spark, headers, details)

    assert _rows(table) == [(day, 7, 2, 64_001, "99999999999999999999999999999.999998")]
    assert table.schema.field("Revenue").type == pa.decimal128(38, 6)


def test_an_empty_window_gives_an_empty_table_with_the_columns(spark: SparkSession) -> None:
    table = daily_sales_table(spark, HEADERS.empty_table(), DETAILS.empty_table())

    assert table.num_rows == 0
    assert table.column_names == list(daily_sales_job.OUTPUT_COLUMNS)


def test_daily_sales_matches_pyarrow_exactly(
    spark: SparkSession,
    sqlite_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
) -> None:
    sqlite_database.load_demo()
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [
            table_entry(sqlite_database, "Sales.SalesOrderHeader"),
            table_entry(sqlite_database, "Sales.SalesOrderDetail"),
        ],
        project_options={"transforms": {"daily_sales_by_product": {"source": SOURCE}}},
    )
    assert PYSPARK_RESOURCE_KEY in project.defs.resources
    project.materialize(
        ORDER_TABLES, instance, partition_range=(FIRST_DAY.isoformat(), LAST_DAY.isoformat())
    )

    result = _materialize_sales(project, instance, FIRST_DAY, LAST_DAY)

    assert result.success
    landed = _landed(project)
    expected = _expected(project, FIRST_DAY, LAST_DAY)
    assert landed.num_rows == expected.num_rows > 0
    assert _rows(landed) == _rows(expected)
    assert landed.schema.field("Revenue").type == pa.decimal128(38, 6)
    assert landed.column(PARTITION_DATE).to_pylist() == landed.column("OrderDay").to_pylist()
    assert {day.isoformat() for day in landed.column("OrderDay").to_pylist()} == {
        (FIRST_DAY + datetime.timedelta(days=offset)).isoformat() for offset in range(3)
    }
    materialized = {
        event.materialization.partition
        for event in result.get_asset_materialization_events()
        if event.materialization.asset_key == AssetKey([SOURCE, DAILY_SALES_ASSET])
    }
    assert materialized == {
        (FIRST_DAY + datetime.timedelta(days=offset)).isoformat() for offset in range(3)
    }

    # re-running one day replaces exactly that day
    rerun = _materialize_sales(project, instance, LAST_DAY, LAST_DAY)
    assert rerun.success
    assert _rows(_landed(project)) == _rows(expected)


def _job_spec(**extra: Any) -> DatabricksJobSpec:
    return DatabricksJobSpec(
        script_path="/Volumes/main/ingest/scripts/daily_sales_job.py",
        source_tables="main.adventureworks",
        target_table="main.analytics.daily_sales_by_product",
        **extra,
    )


def test_pipes_definitions_build_without_a_workspace(
    monkeypatch: pytest.MonkeyPatch, sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    monkeypatch.delenv("DATABRICKS_HOST", raising=False)
    monkeypatch.delenv("DATABRICKS_TOKEN", raising=False)
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [
            table_entry(sqlite_database, "Sales.SalesOrderHeader"),
            table_entry(sqlite_database, "Sales.SalesOrderDetail"),
        ],
    )
    assets = daily_sales_databricks_assets(SOURCE, _partitions_def(project), _job_spec())
    defs = Definitions.merge(
        project.defs,
        Definitions(assets=assets, resources={DATABRICKS_RESOURCE_KEY: databricks_resource()}),
    )

    Definitions.validate_loadable(defs)

    asset = defs.get_assets_def(AssetKey([SOURCE, DAILY_SALES_ASSET]))
    assert DATABRICKS_RESOURCE_KEY in asset.required_resource_keys
    assert PYSPARK_RESOURCE_KEY not in asset.required_resource_keys
    assert set(asset.asset_deps[AssetKey([SOURCE, DAILY_SALES_ASSET])]) == {
        AssetKey([SOURCE, name]) for name in ORDER_TABLES
    }


def test_submit_task_runs_the_script_on_a_new_or_existing_cluster() -> None:
    new_cluster = submit_task(_job_spec()).as_dict()
    existing = submit_task(_job_spec(existing_cluster_id="0101-abc")).as_dict()

    assert new_cluster["spark_python_task"]["python_file"].endswith("daily_sales_job.py")
    assert new_cluster["new_cluster"]["num_workers"] == 1
    assert "existing_cluster_id" not in new_cluster
    assert existing["existing_cluster_id"] == "0101-abc"
    assert "new_cluster" not in existing
    assert {"pypi": {"package": "dagster-pipes"}} in existing["libraries"]


def test_job_script_compiles_and_imports_without_running(tmp_path: pathlib.Path) -> None:
    py_compile.compile(str(SCRIPT), cfile=str(tmp_path / "job.pyc"), doraise=True)

    assert callable(daily_sales_job.main)
    assert daily_sales_job.OUTPUT_COLUMNS[0] == daily_sales_job.ORDER_DAY


def test_the_transform_must_read_a_source_with_both_order_tables(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    for transform, reason in [
        ({"source": "shop"}, "reads source 'shop', which does not exist; sources: src"),
        ({"source": SOURCE}, "lacks sales_order_detail"),
    ]:
        with pytest.raises(ConfigError, match=reason):
            build_project(
                sqlite_database,
                tmp_path / "lake",
                [table_entry(sqlite_database, "Sales.SalesOrderHeader")],
                project_options={"transforms": {"daily_sales_by_product": transform}},
            )
