"""The column schema the UI shows: each column's source name, source type and role, before the
first run (from the spec) and after each run (from the source's reflected types)."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import sqlalchemy as sa
from dagster import (
    AssetKey,
    DagsterInstance,
    TableColumn,
    TableColumnConstraints,
    TableConstraints,
    TableSchema,
)
from pytest_httpserver import HTTPServer

from ingestion_assets_tests.conftest import (
    SOURCE,
    TEST_SCALE,
    IngestProject,
    SourceDatabase,
    build_project,
    table_entry,
)
from ingestion_assets_tests.test_rest_source import orders, orders_stream, rest_project

DAY = TEST_SCALE.start_date + datetime.timedelta(days=3)
LINEAGE = TableColumnConstraints(nullable=False, other=["lineage"])
INGESTED_AT = TableColumn(
    name="_ingested_at",
    type="timestamp[us, tz=UTC]",
    description="Lineage: when the run wrote the row (UTC), the same for every row of the run.",
    constraints=LINEAGE,
)
RUN_ID = TableColumn(
    name="_run_id",
    type="string",
    description="Lineage: the id of the Dagster run that wrote the row (the UI's Runs page "
    "finds it).",
    constraints=LINEAGE,
)


def partition_date(description: str) -> TableColumn:
    """`_partition_date` as the definition shows it."""
    return TableColumn(
        name="_partition_date", type="date", description=description, constraints=LINEAGE
    )


def definition_schema(project: IngestProject, name: str) -> TableSchema:
    """The `dagster/column_schema` of `[src, name]`'s definition."""
    key = AssetKey([SOURCE, name])
    schema = project.asset(name).specs_by_key[key].metadata["dagster/column_schema"]
    assert isinstance(schema, TableSchema)
    return schema


def test_before_any_run_the_spec_s_columns_are_described_with_the_key_and_partition_marked(
    sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    listed = ["OrderQty", "SalesOrderID", "SalesOrderDetailID", "ModifiedDate"]
    project = build_project(
        sqlite_database,
        tmp_path / "lake",
        [
            table_entry(sqlite_database, "Sales.SalesOrderDetail", columns=listed),
            table_entry(
                sqlite_database,
                "Production.Product",
                partition_column=None,
                primary_key=["ProductID"],
            ),
        ],
        timezone="Europe/Berlin",
    )
    origin = "`Sales.SalesOrderDetail`"
    reflected = "source type reflected in each run"
    assert definition_schema(project, "sales_order_detail") == TableSchema(
        columns=[
            TableColumn(
                name="OrderQty",
                type="",
                description=f"Source column `OrderQty` of {origin}; {reflected}.",
            ),
            TableColumn(
                name="SalesOrderID",
                type="",
                description=f"Source column `SalesOrderID` of {origin}; {reflected}. "
                "Primary key (1 of 2).",
                # unique only together with the other key column
                constraints=TableColumnConstraints(nullable=False, other=["primary key (1 of 2)"]),
            ),
            TableColumn(
                name="SalesOrderDetailID",
                type="",
                description=f"Source column `SalesOrderDetailID` of {origin}; {reflected}. "
                "Primary key (2 of 2).",
                constraints=TableColumnConstraints(nullable=False, other=["primary key (2 of 2)"]),
            ),
            TableColumn(
                name="ModifiedDate",
                type="",
                description=f"Source column `ModifiedDate` of {origin}; {reflected}. Partition "
                "column: its day in Europe/Berlin is the row's `_partition_date`.",
                constraints=TableColumnConstraints(other=["partition column"]),
            ),
            partition_date(
                "Lineage: the row's partition day, the day of `ModifiedDate` in Europe/Berlin; a "
                "run replaces exactly its days."
            ),
            INGESTED_AT,
            RUN_ID,
        ],
        constraints=TableConstraints(other=["primary key (SalesOrderID, SalesOrderDetailID)"]),
    )
    product = definition_schema(project, "product")
    assert product.columns[0] == TableColumn(
        name="ProductID",
        type="",
        description=f"Source column `ProductID` of `Production.Product`; {reflected}. Primary key.",
        constraints=TableColumnConstraints(nullable=False, unique=True, other=["primary key"]),
    )
    assert product.columns[1] == partition_date(
        "Lineage: the day (UTC) of the run that wrote the snapshot; every run replaces the whole "
        "table."
    )


def test_a_stream_s_declared_fields_are_described_with_their_declared_types(
    tmp_path: pathlib.Path,
) -> None:
    project = rest_project(tmp_path / "lake", "http://127.0.0.1:9", [orders_stream()])
    columns = {column.name: column for column in definition_schema(project, "orders").columns}
    origin = "stream `orders` (GET /orders)"
    assert columns["id"] == TableColumn(
        name="id",
        type="int64",
        description=f"Source column `id` of {origin}; source type int64 (declared in the "
        "project file). Primary key.",
        constraints=TableColumnConstraints(nullable=False, unique=True, other=["primary key"]),
    )
    assert columns["amount"].type == "decimal128(19, 4)"
    assert columns["amount"].description == (
        f"Source column `amount` of {origin}; source type decimal(19,4) (declared in the "
        "project file)."
    )
    assert columns["modified"].constraints.other == ["partition column"]


def materialized_schema(result: Any, name: str) -> TableSchema:
    """The `dagster/column_schema` of the run's materialization of `[src, name]`."""
    materialization = result.asset_materializations_for_node(f"{SOURCE}__{name}")[0]
    schema = materialization.metadata["dagster/column_schema"].value
    assert isinstance(schema, TableSchema)
    return schema


# the key's type as each dialect reflects it, and its Arrow type (SQLite's INTEGER is 64 bits)
KEY_TYPE = {"postgresql": "INTEGER", "mysql": "INTEGER(11)", "sqlite": "INTEGER"}
KEY_ARROW_TYPE = {"postgresql": "int32", "mysql": "int32", "sqlite": "int64"}
FLAG_TYPE = {
    "postgresql": "BOOLEAN NOT NULL",
    "mysql": "TINYINT(1) NOT NULL (MySQL's BOOLEAN, read as boolean)",
    "sqlite": "BOOLEAN NOT NULL",
}


def test_a_materialization_describes_every_column_with_its_reflected_source_type(
    source_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    source_database.load_demo()
    logicals = ["Sales.SalesOrderHeader", "Sales.SalesOrderDetail"]
    project = build_project(
        source_database, tmp_path / "lake", [table_entry(source_database, x) for x in logicals]
    )
    names = ["sales_order_header", "sales_order_detail"]

    result = project.materialize(names, instance, partition=DAY.isoformat())

    assert result.success
    engine = source_database.engine()
    try:
        inspector = sa.inspect(engine)
        spelled = {
            name: [
                column["name"]
                for column in inspector.get_columns(
                    logical.split(".")[1], schema=source_database.schema("Sales")
                )
            ]
            for name, logical in zip(names, logicals, strict=True)
        }
    finally:
        engine.dispose()
    for name, logical in zip(names, logicals, strict=True):
        schema = materialized_schema(result, name)
        qualified = f"{source_database.schema('Sales')}.{logical.split('.')[1]}"
        # the names as the source spells them (never snake_cased), as in the Delta table
        columns = [column.name for column in schema.columns]
        assert columns == project.delta(name).schema().to_arrow().names
        assert columns == [*spelled[name], "_partition_date", "_ingested_at", "_run_id"]
        for column in schema.columns[:-3]:
            assert (column.description or "").startswith(
                f"Source column `{column.name}` of `{qualified}`; source type "
            ), column
        by_name = {column.name: column for column in schema.columns}
        assert by_name["_ingested_at"] == INGESTED_AT
        assert by_name["ModifiedDate"].constraints.other == ["partition column"]
    header = {column.name: column for column in materialized_schema(result, names[0]).columns}
    assert header["SalesOrderID"] == TableColumn(
        name="SalesOrderID",
        type=KEY_ARROW_TYPE[source_database.dialect],
        description=f"Source column `SalesOrderID` of `{source_database.schema('Sales')}."
        f"SalesOrderHeader`; source type {KEY_TYPE[source_database.dialect]} NOT NULL. "
        "Primary key.",
        constraints=TableColumnConstraints(nullable=False, unique=True, other=["primary key"]),
    )
    # a flag is a boolean from every source, and says what the source declared
    assert header["OnlineOrderFlag"].type == "bool"
    assert (header["OnlineOrderFlag"].description or "").endswith(
        f"; source type {FLAG_TYPE[source_database.dialect]}."
    )
    detail = materialized_schema(result, names[1])
    assert detail.constraints == TableConstraints(
        other=["primary key (SalesOrderID, SalesOrderDetailID)"]
    )
    # the definition keeps what the spec alone knows
    assert definition_schema(project, names[0]).columns[0].type == ""


def test_a_stream_s_materialization_describes_inferred_fields_as_inferred(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    day = "2024-01-03"
    httpserver.expect_request("/orders").respond_with_json({"data": orders(day, [1, 2])})
    stream = orders_stream()
    stream.pop("fields")
    project = rest_project(tmp_path / "lake", httpserver.url_for("/"), [stream])

    result = project.materialize(["orders"], instance, partition=day)

    assert result.success
    columns = {column.name: column for column in materialized_schema(result, "orders").columns}
    assert columns["amount"].description == (
        "Source column `amount` of stream `orders` (GET /orders); source type inferred from the "
        "records."
    )
    assert columns["id"].constraints.other == ["primary key"]
