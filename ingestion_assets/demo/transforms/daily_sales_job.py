"""The daily sales aggregate, and the Databricks job script that runs it through Dagster Pipes.

Self-contained on purpose: Databricks runs this file as a `spark_python_task` with only
`pyspark` (the cluster's) and `dagster-pipes` installed, and the in-process Dagster asset
(`daily_sales.py`) imports `aggregate_daily_sales` from here, so both compute the same thing.
"""

from __future__ import annotations

import sys
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

PARTITION_DATE = "_partition_date"
ORDER_DAY = "OrderDay"
# the aggregate's columns, in order
OUTPUT_COLUMNS = (ORDER_DAY, "ProductID", "OrderCount", "Quantity", "Revenue")


def aggregate_daily_sales(headers: DataFrame, details: DataFrame) -> DataFrame:
    """Per order day and product: distinct orders, units (sum OrderQty), revenue (sum LineTotal).

    The day is the header's partition day; a detail line counts only when its order header
    landed (inner join). Revenue stays an exact decimal: Spark sums decimal(p, s) as
    decimal(min(38, p + 10), s), and ANSI mode (Spark 4's default) fails on overflow."""
    orders = headers.select("SalesOrderID", F.col(PARTITION_DATE).alias(ORDER_DAY))
    lines = details.select("SalesOrderID", "ProductID", "OrderQty", "LineTotal").join(
        orders, on="SalesOrderID", how="inner"
    )
    return (
        lines.groupBy(ORDER_DAY, "ProductID")
        .agg(
            F.countDistinct("SalesOrderID").alias("OrderCount"),
            F.sum(F.col("OrderQty").cast("long")).alias("Quantity"),
            F.sum("LineTotal").alias("Revenue"),
        )
        .select(*OUTPUT_COLUMNS)
    )


def _window_filter(first_day: str, last_day: str) -> str:
    return f"{PARTITION_DATE} BETWEEN DATE'{first_day}' AND DATE'{last_day}'"


def main() -> None:
    """Read the window's rows from Unity Catalog, aggregate, replace the target's days."""
    from dagster_pipes import (
        PipesCliArgsParamsLoader,
        PipesDbfsContextLoader,
        PipesDbfsMessageWriter,
        PipesEnvVarParamsLoader,
        open_dagster_pipes,
    )

    # an existing cluster gets the Pipes bootstrap as CLI arguments, a new cluster as env vars
    # (dagster-pipes leaves these two constructors unannotated)
    params_loader = (
        PipesCliArgsParamsLoader()  # type: ignore[no-untyped-call]
        if "--dagster-pipes-context" in sys.argv
        else PipesEnvVarParamsLoader()  # type: ignore[no-untyped-call]
    )
    with open_dagster_pipes(
        context_loader=PipesDbfsContextLoader(),
        message_writer=PipesDbfsMessageWriter(),
        params_loader=params_loader,
    ) as context:
        source_tables = str(context.get_extra("source_tables"))  # catalog.schema
        target_table = str(context.get_extra("target_table"))  # catalog.schema.table
        # raises when the run has no partition: the asset is daily-partitioned
        key_range = context.partition_key_range
        first_day, last_day = key_range["start"][:10], key_range["end"][:10]
        window = _window_filter(first_day, last_day)
        started = time.monotonic()
        spark = SparkSession.builder.getOrCreate()
        headers = spark.table(f"{source_tables}.sales_order_header").where(window)
        details = spark.table(f"{source_tables}.sales_order_detail").where(window)
        result = (
            aggregate_daily_sales(headers, details)
            .withColumn(PARTITION_DATE, F.col(ORDER_DAY))
            .withColumn("_ingested_at", F.current_timestamp())
            .withColumn("_run_id", F.lit(context.run_id))
        )
        # replaceWhere swaps exactly the run's days in one Delta commit, like the IO manager
        (
            result.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", window)
            .saveAsTable(target_table)
        )
        written = spark.table(target_table).where(window)
        rows = written.count()
        context.log.info(f"{target_table} {first_day}..{last_day}: wrote {rows:,} rows")
        context.report_asset_materialization(
            metadata={
                "dagster/row_count": rows,
                "dagster/table_name": target_table,
                "partitions": f"{first_day}..{last_day}",
                "seconds": round(time.monotonic() - started, 3),
            }
        )


if __name__ == "__main__":
    main()
