"""The demo's `transforms.daily_sales_by_product` key: its settings, validated, and its assets.

The core project file knows transforms only as named extension entries (definitions.py); this
module gives the example Spark transform its schema and wiring, so the core schema names no
AdventureWorks table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Definitions
from pydantic import Field, ValidationError

from ingestion_assets.errors import ConfigError
from ingestion_assets.factory import partitions_definition
from ingestion_assets.specs import ProjectSpec, Spec

KEY = "transforms.daily_sales_by_product"
INPUT_TABLES = ("sales_order_header", "sales_order_detail")


class DailySalesSpec(Spec):
    """The example Spark transform: daily sales by product from a source's order tables."""

    source: str = Field(
        description="The SQL source whose sales_order_header and sales_order_detail it reads."
    )
    spark_config: dict[str, str] = Field(
        default_factory=dict,
        description="Spark settings over the local defaults (local[2], 2 shuffle partitions); "
        "Databricks Connect settings run it on a cluster.",
    )


def daily_sales_settings(project: ProjectSpec, raw: Mapping[str, Any]) -> DailySalesSpec:
    """The settings, checked against the project's sources; errors name the key path."""
    try:
        settings = DailySalesSpec.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{KEY}.{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        raise ConfigError(f"invalid project file: {problems}") from None
    source = project.sources.get(settings.source)
    tables = {dataset.key_name for dataset in source.datasets} if source else set()
    missing = sorted(set(INPUT_TABLES) - tables)
    if source is None or missing:
        raise ConfigError(
            f"invalid project file: {KEY} reads source '{settings.source}', which "
            f"{'does not exist' if source is None else 'lacks ' + ', '.join(missing)}"
            f"; sources: {', '.join(project.sources)}"
        )
    return settings


def daily_sales_by_product(project: ProjectSpec, raw: Mapping[str, Any]) -> Definitions:
    """The transform's asset over the source's order tables, by the header table's days, and its
    PySpark resource; PySpark is imported only when the transform is configured."""
    settings = daily_sales_settings(project, raw)
    source = project.sources[settings.source]
    header = next(table for table in source.datasets if table.key_name == INPUT_TABLES[0])
    partitions = partitions_definition(source, header)
    try:
        from ingestion_assets.demo.transforms.daily_sales import (
            PYSPARK_RESOURCE_KEY,
            daily_sales_assets,
            local_spark_resource,
        )
    except ImportError as error:
        raise ConfigError(
            f"{KEY} needs PySpark ({error.name} is missing): install the project with its "
            "`databricks` extra"
        ) from None
    if partitions is None:
        raise ConfigError(
            f"invalid project file: {KEY} reads the days of {settings.source}'s "
            f"{INPUT_TABLES[0]}, which is a snapshot: give it a partition_column"
        )
    return Definitions(
        assets=daily_sales_assets(settings.source, partitions),
        resources={PYSPARK_RESOURCE_KEY: local_spark_resource(**settings.spark_config)},
    )
