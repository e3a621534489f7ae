"""`daily_sales_by_product`: a Spark transform downstream of the ingested sales order tables.

The Delta IO manager hands the asset its inputs as Arrow tables limited to the run's days; the
asset turns them into Spark DataFrames (Arrow, no pandas), aggregates with
`aggregate_daily_sales`, and returns Arrow, which the IO manager writes back by day.
"""

from __future__ import annotations

import time
from typing import Any, cast

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    TableColumn,
    TableSchema,
    asset,
)
from dagster_pyspark import PySparkResource

from ingestion_assets.demo.transforms.daily_sales_job import ORDER_DAY, aggregate_daily_sales
from ingestion_assets.io_managers.contract import PARTITION_COLUMN_KEY, SCHEMA_POLICY_KEY
from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets.policies import follows_upstream

DAILY_SALES_ASSET = "daily_sales_by_product"
PYSPARK_RESOURCE_KEY = "pyspark"
HEADER_ASSET = "sales_order_header"
DETAIL_ASSET = "sales_order_detail"

# a small local session: 2 cores, 2 shuffle partitions (the default 200 is for clusters), no UI
LOCAL_SPARK_CONFIG: dict[str, Any] = {
    "spark.master": "local[2]",
    "spark.app.name": "ingestion_assets",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.memory": "1g",
}

_COLUMNS = TableSchema(
    columns=[
        TableColumn(name=ORDER_DAY, type="date", description="the orders' partition day"),
        TableColumn(name="ProductID", type="int32"),
        TableColumn(name="OrderCount", type="int64", description="distinct SalesOrderID"),
        TableColumn(name="Quantity", type="int64", description="sum of OrderQty"),
        TableColumn(name="Revenue", type="decimal", description="sum of LineTotal, exact"),
    ]
)


def local_spark_resource(**overrides: Any) -> PySparkResource:
    """A `PySparkResource` for a local 2-core session (`LOCAL_SPARK_CONFIG` plus overrides)."""
    return PySparkResource(spark_config={**LOCAL_SPARK_CONFIG, **overrides})


def daily_sales_table(spark: Any, headers: pa.Table, details: pa.Table) -> pa.Table:
    """The aggregate of one window's ingested header and detail rows, Arrow in and Arrow out."""
    header_frame = spark.createDataFrame(headers.select(["SalesOrderID", PARTITION_DATE]))
    detail_frame = spark.createDataFrame(
        details.select(["SalesOrderID", "ProductID", "OrderQty", "LineTotal"])
    )
    result = aggregate_daily_sales(header_frame, detail_frame).orderBy(ORDER_DAY, "ProductID")
    table: pa.Table = result.toArrow()
    return table


def daily_sales_assets(
    source_name: str, partitions_def: DailyPartitionsDefinition
) -> list[AssetsDefinition]:
    """`[source, daily_sales_by_product]` over `[source, sales_order_header|detail]`, by day."""

    @asset(
        key=AssetKey([source_name, DAILY_SALES_ASSET]),
        ins={
            "headers": AssetIn(key=AssetKey([source_name, HEADER_ASSET])),
            "details": AssetIn(key=AssetKey([source_name, DETAIL_ASSET])),
        },
        group_name=f"{source_name}_transforms",
        description=(
            f"Per day and ProductID: orders (distinct SalesOrderID), quantity (sum OrderQty) and "
            f"revenue (sum LineTotal, exact decimal) of source '{source_name}', computed with "
            "Spark. A run replaces exactly its days."
        ),
        partitions_def=partitions_def,
        backfill_policy=BackfillPolicy.single_run(),
        # a day is recomputed once its ingested orders change (the automation sensor runs it)
        automation_condition=follows_upstream(),
        kinds={"spark", "deltalake"},
        required_resource_keys={PYSPARK_RESOURCE_KEY},
        metadata={
            "dagster/column_schema": _COLUMNS,
            # the IO manager derives each row's `_partition_date` from this column
            PARTITION_COLUMN_KEY: ORDER_DAY,
            SCHEMA_POLICY_KEY: "freeze",
        },
    )
    def daily_sales_by_product(context, headers, details) -> Any:  # type: ignore[no-untyped-def]
        # Dagster reads these annotations at run time, where the postponed ones do not resolve:
        # the parameters stay bare and are typed here
        context = cast(AssetExecutionContext, context)
        headers, details = cast(pa.Table, headers), cast(pa.Table, details)
        pyspark: PySparkResource = getattr(context.resources, PYSPARK_RESOURCE_KEY)
        started = time.monotonic()
        context.log.info(
            f"aggregating {details.num_rows:,} order lines of {headers.num_rows:,} orders "
            f"({context.partition_key_range.start}..{context.partition_key_range.end}) with Spark"
        )
        table = daily_sales_table(pyspark.spark_session, headers, details)
        context.log.info(
            f"{table.num_rows:,} day and product rows in {time.monotonic() - started:.2f} s"
        )
        return table

    return [daily_sales_by_product]
