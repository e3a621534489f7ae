"""Layers on Databricks (`layers/databricks.py`): the statements pinned word for word as sqlglot
transpiles the layer's DuckDB SQL, then a join and an aggregate end to end against the local fake
of the workspace whose warehouse is DuckDB: the inputs ingested through the Unity Catalog IO
manager, the layer audited and published on the warehouse, each expectation's action and count
per partition, dropped rows only in the quarantine, a failure that writes nothing."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import pathlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa
import sqlglot
import yaml
from dagster import AssetKey, DagsterInstance, Definitions, ExecuteInProcessResult, materialize
from pytest_httpserver import HTTPServer
from sqlglot import exp

from ingestion_assets.definitions import build_definitions
from ingestion_assets.io_managers.databricks import DatabricksIOManager
from ingestion_assets.layers.databricks import Column, LayerStatements
from ingestion_assets.layers.graph import LayerGraph
from ingestion_assets.project import parse_project
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets_tests.conftest import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SourceDatabase,
    failure_message,
)
from ingestion_assets_tests.test_databricks import databricks_lake, parse
from ingestion_assets_tests.test_databricks_merge import WarehouseWorkspace

pytestmark = pytest.mark.databricks

TOKEN = f"dapi{uuid.uuid4().hex}"
FIRST_DAY = datetime.date(2024, 3, 1)
SECOND_DAY = FIRST_DAY + datetime.timedelta(days=1)
LAYER = AssetKey(["silver", "customer_days"])
TARGET = "silver__customer_days"
QUARANTINE = "silver__customer_days_quarantine"

# DuckDB's dialect: `::` casts and strftime, which Databricks spells differently
LAYER_SQL = """
SELECT o._partition_date, o.CustomerID, c.Name AS Customer, count(*) AS Orders,
       sum(o.Amount)::DECIMAL(18, 2) AS Revenue,
       strftime(min(o.OrderDate), '%H:%M') AS FirstOrderAt
FROM orders AS o LEFT JOIN customers AS c ON c.CustomerID = o.CustomerID
GROUP BY ALL
"""
EXPECTATIONS = [
    {"name": "positive_revenue", "sql": "Revenue > 0", "on_violation": "drop"},
    {"name": "known_customer", "sql": "Customer IS NOT NULL", "on_violation": "fail"},
    {"name": "morning_start", "sql": "FirstOrderAt < '12:00'", "on_violation": "warn"},
]
LAYER_SPEC: dict[str, Any] = {
    "key": "silver/customer_days",
    "inputs": {"orders": "src/orders", "customers": "src/customers"},
    "sql": LAYER_SQL,
    "primary_key": ["_partition_date", "CustomerID"],
    "expect": EXPECTATIONS,
}


def _project_text(database: SourceDatabase | None, layers: list[dict[str, Any]]) -> str:
    schema = database.schema("Sales") if database else "Sales"
    source = {
        "type": "sql",
        "connection": database.connection_spec() if database else {"url": "sqlite://"},
        "start_date": FIRST_DAY.isoformat(),
        "end_date": (FIRST_DAY + datetime.timedelta(days=10)).isoformat(),
        "tables": [
            {
                "schema": schema,
                "name": "Orders",
                "partition_column": "ModifiedDate",
                "primary_key": ["OrderID"],
            },
            {"schema": schema, "name": "Customers", "primary_key": ["CustomerID"]},
        ],
    }
    return yaml.safe_dump(
        {
            "lake": {"root": "/nonexistent", **databricks_lake()},
            "sources": {"src": source},
            "layers": layers,
        }
    )


ENVIRONMENT = {
    "DATABRICKS_HOST": "https://adb-1.azuredatabricks.net",
    "DATABRICKS_TOKEN": TOKEN,
    "DATABRICKS_WAREHOUSE_ID": "wh-123",
}
MANAGER = DatabricksIOManager(
    host=ENVIRONMENT["DATABRICKS_HOST"],
    token=TOKEN,
    warehouse_id="wh-123",
    catalog="main",
    schema_name="ingest",
    volume="landing",
)


def _statements(layer: dict[str, Any], window: PartitionWindow | None) -> LayerStatements:
    spec = parse_project(_project_text(None, [layer]), "layers.yaml", ENVIRONMENT)
    return LayerStatements(
        LayerGraph(spec).layer(layer["key"]),
        window,
        MANAGER.full_table_name,
        "1f6c-77",
        datetime.date(2024, 3, 9),
        "layer under test",
    )


def test_the_statements_are_the_layers_sql_transpiled_over_the_days_of_its_inputs() -> None:
    """A join and an aggregate in DuckDB's dialect (`::`, strftime, epoch_ms, GROUP BY ALL),
    one expectation of each action: every statement, word for word, reads as Databricks SQL."""
    layer = {
        **LAYER_SPEC,
        "sql": LAYER_SQL.replace(
            "AS FirstOrderAt", "AS FirstOrderAt, epoch_ms(max(o.StampMs)) AS LastStamp"
        ),
    }
    window = PartitionWindow.of_days(FIRST_DAY, SECOND_DAY)
    statements = _statements(layer, window)
    staging = "`main`.`ingest`.`silver__customer_days__staging_1f6c77`"
    orders = (
        "`__input_orders` AS (SELECT * FROM `main`.`ingest`.`src__orders` WHERE "
        "`_partition_date` BETWEEN CAST('2024-03-01' AS DATE) AND CAST('2024-03-02' AS DATE))"
    )
    failed = (
        "CASE WHEN NOT (`__held_0` AND `__held_1` AND `__held_2`) THEN FILTER(ARRAY("
        "CASE WHEN NOT `__held_0` THEN 'positive_revenue' END, "
        "CASE WHEN NOT `__held_1` THEN 'known_customer' END, "
        "CASE WHEN NOT `__held_2` THEN 'morning_start' END), `name` -> NOT `name` IS NULL) END "
        "AS `__failed`"
    )
    held = (
        "COALESCE((`Revenue` > 0), TRUE) AS `__held_0`, "
        "COALESCE((NOT `Customer` IS NULL), TRUE) AS `__held_1`, "
        "COALESCE((`FirstOrderAt` < '12:00'), TRUE) AS `__held_2`"
    )
    layer_select = (
        "SELECT `o`.`_partition_date`, `o`.`CustomerID`, `c`.`Name` AS `Customer`, "
        "COUNT(*) AS `Orders`, CAST(SUM(`o`.`Amount`) AS DECIMAL(18, 2)) AS `Revenue`, "
        "DATE_FORMAT(MIN(`o`.`OrderDate`), 'HH:mm') AS `FirstOrderAt`, "
        "TIMESTAMP_MILLIS(MAX(`o`.`StampMs`)) AS `LastStamp` "
        "FROM `__input_orders` AS `o` LEFT JOIN `main`.`ingest`.`src__customers` AS `c` "
        "ON `c`.`CustomerID` = `o`.`CustomerID` GROUP BY ALL"
    )
    assert statements.stage() == (
        f"CREATE OR REPLACE TABLE {staging} AS WITH {orders} SELECT *, {failed} FROM "
        f"(SELECT *, {held} FROM ({layer_select}) AS `__layer`) AS `__judged`"
    )

    columns = [
        Column("_partition_date", "DATE"),
        Column("CustomerID", "BIGINT"),
        Column("Revenue", "DECIMAL(18,2)"),
    ]
    day = statements.day([*columns, Column("__held_0", "BOOLEAN")])
    assert day == "`_partition_date`"
    published = columns[1:]
    assert statements.audit(day) == (
        "SELECT `__day`, count(*) AS `__rows`, count_if(NOT `__held_0`) AS `__violations_0`, "
        "count_if(NOT `__held_1`) AS `__violations_1`, count_if(NOT `__held_2`) AS "
        "`__violations_2`, count_if(NOT (`__held_0`)) AS `__dropped` FROM (SELECT "
        f"`_partition_date` AS `__day`, * FROM {staging}) AS `__s` GROUP BY `__day` "
        "ORDER BY `__day`"
    )
    lineage = (
        "`_partition_date` AS `_partition_date`, current_timestamp() AS `_ingested_at`, "
        "'1f6c-77' AS `_run_id`"
    )
    days = "`_partition_date` >= DATE'2024-03-01' AND `_partition_date` <= DATE'2024-03-02'"
    assert statements.replace(published, day) == (
        f"INSERT INTO `main`.`ingest`.`silver__customer_days` REPLACE WHERE {days} "
        f"SELECT `CustomerID`, `Revenue`, {lineage} FROM {staging} WHERE `__held_0`"
    )
    assert statements.replace(published, day, quarantine=True) == (
        f"INSERT INTO `main`.`ingest`.`silver__customer_days_quarantine` REPLACE WHERE {days} "
        "SELECT `CustomerID`, `Revenue`, `__failed` AS `_failed_expectations`, "
        f"{lineage} FROM {staging} WHERE NOT (`__held_0`)"
    )
    assert statements.create(published, day) == (
        "CREATE TABLE IF NOT EXISTS `main`.`ingest`.`silver__customer_days` USING DELTA AS "
        f"SELECT `CustomerID`, `Revenue`, {lineage} FROM {staging} WHERE FALSE"
    )
    everything = [
        statements.stage(),
        statements.describe(),
        statements.audit(day),
        statements.keys(day),
        statements.key_sample(day),
        statements.create(published, day, quarantine=True),
        statements.replace(published, day, quarantine=True),
        statements.create(published, day),
        statements.replace(published, day),
        statements.drop_staging(),
    ]
    kinds = [type(parse(statement)).__name__ for statement in everything]
    assert kinds == [
        "Create",
        "Select",
        "Select",
        "Select",
        "Select",
        "Create",
        "Insert",
        "Create",
        "Insert",
        "Drop",
    ]


def test_an_unpartitioned_layer_overwrites_and_a_timestamp_day_is_taken_in_the_zone() -> None:
    unpartitioned = _statements(
        {**LAYER_SPEC, "partitioning": "unpartitioned", "expect": [], "primary_key": []}, None
    )
    day = unpartitioned.day([])
    assert day == "DATE'2024-03-09'"
    assert unpartitioned.replace([Column("Orders", "BIGINT")], day) == (
        "INSERT OVERWRITE `main`.`ingest`.`silver__customer_days` SELECT `Orders`, "
        "DATE'2024-03-09' AS `_partition_date`, current_timestamp() AS `_ingested_at`, "
        "'1f6c-77' AS `_run_id` FROM `main`.`ingest`.`silver__customer_days__staging_1f6c77`"
    )
    # every input read whole: no CTE
    assert "WITH" not in unpartitioned.stage()
    zoned = PartitionWindow.of_days(FIRST_DAY, FIRST_DAY, "America/New_York")
    ordered_at = LAYER_SQL.replace("o.CustomerID,", "o.OrderDate AS OrderedAt, o.CustomerID,")
    daily = _statements({**LAYER_SPEC, "sql": ordered_at, "partition_column": "OrderedAt"}, zoned)
    assert daily.day([Column("OrderedAt", "TIMESTAMP")]) == (
        "to_date(from_utc_timestamp(`OrderedAt`, 'America/New_York'))"
    )
    assert daily.day([Column("OrderedAt", "TIMESTAMP_NTZ")]) == "to_date(`OrderedAt`)"
    assert daily.day([Column("OrderedAt", "STRING")]) == "to_date(substr(`OrderedAt`, 1, 10))"
    with pytest.raises(Exception, match=r"partition column OrderedAt has type BIGINT"):
        daily.day([Column("OrderedAt", "BIGINT")])
    with pytest.raises(Exception, match=r"has no column OrderedAt \(it has Orders\)"):
        daily.day([Column("Orders", "BIGINT"), Column("__held_0", "BOOLEAN")])


@dataclass
class LayerWarehouse(WarehouseWorkspace):
    """The DuckDB warehouse, also answering `INSERT ... REPLACE WHERE` and `INSERT OVERWRITE`
    (a delete, then the insert, in one transaction) and typing each result's columns as
    Databricks does."""

    def duckdb_sql(self, tree: exp.Expression) -> str:
        if isinstance(tree, exp.Insert) and (tree.args.get("where") or tree.args.get("overwrite")):
            where = tree.args.get("where")
            delete = exp.Delete(
                this=tree.this.copy(), where=exp.Where(this=where.copy()) if where else None
            )
            insert = exp.Insert(this=tree.this.copy(), expression=tree.expression.copy())
            return f"BEGIN; {super().duckdb_sql(delete)}; {super().duckdb_sql(insert)}; COMMIT"
        return super().duckdb_sql(tree)

    def run(self, statement_id: str) -> None:
        super().run(statement_id)
        entry = self.statements[statement_id]
        if entry["status"]["state"] == "FAILED":
            # a replace that failed half way leaves the table as it was
            with contextlib.suppress(duckdb.TransactionException):
                self.database.execute("ROLLBACK")
        if "manifest" not in entry:
            return
        described = self.database.execute(
            f"DESCRIBE {self.duckdb_sql(parse(entry['statement']))}"
        ).fetchall()
        for column, (_, kind, *_rest) in zip(
            entry["manifest"]["schema"]["columns"], described, strict=True
        ):
            column["type_text"] = exp.DataType.build(kind, dialect="duckdb").sql("databricks")

    def rows(self, table: str, columns: str) -> list[tuple[Any, ...]]:
        return self.database.execute(f'SELECT {columns} FROM "{table}" ORDER BY ALL').fetchall()

    def tables(self) -> set[str]:
        return {name for (name,) in self.database.execute("SHOW TABLES").fetchall()}


@pytest.fixture
def warehouse(
    httpserver: HTTPServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LayerWarehouse]:
    fake = LayerWarehouse(root=tmp_path / "volume")
    httpserver.expect_request(re.compile(".*")).respond_with_handler(fake.handle)
    monkeypatch.setenv("DATABRICKS_HOST", httpserver.url_for("/").rstrip("/"))
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("DATABRICKS_WAREHOUSE_ID", "wh-123")
    yield fake
    fake.database.close()


def _order(key: int, day: datetime.date, customer: int, amount: str, at: str) -> dict[str, Any]:
    moment = datetime.datetime.combine(day, datetime.time.fromisoformat(at))
    return {
        "OrderID": key,
        "ModifiedDate": moment,
        "CustomerID": customer,
        "Amount": decimal.Decimal(amount),
        "OrderDate": moment,
    }


ORDERS = [
    # first day: customer 2 a refund only (negative revenue: dropped), customer 3 after noon
    _order(1, FIRST_DAY, 1, "10.50", "08:00"),
    _order(2, FIRST_DAY, 1, "5.25", "09:30"),
    _order(3, FIRST_DAY, 2, "-3.00", "10:00"),
    _order(4, FIRST_DAY, 3, "7.00", "13:15"),
    # second day: customer 3 nothing earned and after noon (dropped, and warned)
    _order(5, SECOND_DAY, 2, "20.00", "07:45"),
    _order(6, SECOND_DAY, 3, "0.00", "14:00"),
    _order(7, SECOND_DAY, 1, "1.00", "11:00"),
]


class Project:
    """The orders and customers in SQLite, ingested to the fake Unity Catalog, and the layer."""

    def __init__(self, database: SourceDatabase, layer: dict[str, Any] = LAYER_SPEC) -> None:
        self.database = database
        metadata = sa.MetaData()
        schema = database.schema("Sales")
        self.orders = sa.Table(
            "Orders",
            metadata,
            sa.Column("OrderID", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("ModifiedDate", sa.DateTime),
            sa.Column("CustomerID", sa.Integer),
            sa.Column("Amount", sa.Numeric(10, 2)),
            sa.Column("OrderDate", sa.DateTime),
            schema=schema,
        )
        customers = sa.Table(
            "Customers",
            metadata,
            sa.Column("CustomerID", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("Name", sa.String(40)),
            schema=schema,
        )
        engine = database.engine()
        with engine.begin() as connection:
            metadata.create_all(connection)
            connection.execute(self.orders.insert(), ORDERS)
            connection.execute(
                customers.insert(),
                [
                    {"CustomerID": key, "Name": name}
                    for key, name in ((1, "Ann"), (2, "Bo"), (3, "Cy"))
                ],
            )
        engine.dispose()
        spec = parse_project(_project_text(database, [layer]), "layers.yaml")
        self.defs: Definitions = build_definitions(spec)

    def materialize(
        self,
        instance: DagsterInstance,
        key: AssetKey,
        day: datetime.date | None = None,
        last: datetime.date | None = None,
        raise_on_error: bool = True,
    ) -> ExecuteInProcessResult:
        tags = (
            {RANGE_START_TAG: day.isoformat(), RANGE_END_TAG: last.isoformat()}
            if day and last
            else None
        )
        return materialize(
            [self.defs.get_assets_def(key)],
            instance=instance,
            resources=self.defs.resources,
            partition_key=day.isoformat() if day and not last else None,
            tags=tags,
            raise_on_error=raise_on_error,
        )

    def ingest(self, instance: DagsterInstance, first: datetime.date, last: datetime.date) -> None:
        self.materialize(instance, AssetKey(["src", "orders"]), first, last)
        self.materialize(instance, AssetKey(["src", "customers"]))

    def change_order(self, key: int, **values: Any) -> None:
        engine = self.database.engine()
        with engine.begin() as connection:
            connection.execute(
                self.orders.update().where(self.orders.c.OrderID == key).values(**values)
            )
        engine.dispose()


@pytest.fixture
def project(sqlite_database: SourceDatabase, warehouse: LayerWarehouse) -> Project:
    return Project(sqlite_database)


def _evaluations(result: ExecuteInProcessResult) -> dict[tuple[str, str], Any]:
    return {
        (evaluation.check_name, str(evaluation.partition)): evaluation
        for evaluation in result.get_asset_check_evaluations()
    }


LAYER_COLUMNS = "_partition_date, CustomerID, Customer, Orders, Revenue, FirstOrderAt"
FIRST_DAY_ROWS = [
    (FIRST_DAY, 1, "Ann", 2, decimal.Decimal("15.75"), "08:00"),
    (FIRST_DAY, 3, "Cy", 1, decimal.Decimal("7.00"), "13:15"),
]
SECOND_DAY_ROWS = [
    (SECOND_DAY, 1, "Ann", 1, decimal.Decimal("1.00"), "11:00"),
    (SECOND_DAY, 2, "Bo", 1, decimal.Decimal("20.00"), "07:45"),
]


def test_a_layer_runs_on_the_warehouse_each_action_counted_per_day_drops_only_in_quarantine(
    project: Project, warehouse: LayerWarehouse, instance: DagsterInstance
) -> None:
    project.ingest(instance, FIRST_DAY, SECOND_DAY)
    first = project.materialize(instance, LAYER, FIRST_DAY)
    assert warehouse.rows(TARGET, LAYER_COLUMNS) == FIRST_DAY_ROWS
    assert warehouse.rows(QUARANTINE, f"{LAYER_COLUMNS}, _failed_expectations, _run_id") == [
        (
            FIRST_DAY,
            2,
            "Bo",
            1,
            decimal.Decimal("-3.00"),
            "10:00",
            ["positive_revenue"],
            first.run_id,
        )
    ]
    assert not any("__staging_" in table for table in warehouse.tables())

    # both days in one run: the first replaced by the same rows, the second added
    both = project.materialize(instance, LAYER, FIRST_DAY, SECOND_DAY)
    assert warehouse.rows(TARGET, LAYER_COLUMNS) == FIRST_DAY_ROWS + SECOND_DAY_ROWS
    assert set(warehouse.rows(TARGET, "_run_id")) == {(both.run_id,)}
    assert warehouse.rows(QUARANTINE, "_partition_date, CustomerID, _failed_expectations") == [
        (FIRST_DAY, 2, ["positive_revenue"]),
        (SECOND_DAY, 3, ["positive_revenue", "morning_start"]),
    ]
    evaluations = _evaluations(both)
    expected = {
        "positive_revenue": {FIRST_DAY: 1, SECOND_DAY: 1},
        "known_customer": {FIRST_DAY: 0, SECOND_DAY: 0},
        "morning_start": {FIRST_DAY: 1, SECOND_DAY: 1},
    }
    for name, by_day in expected.items():
        for day, violations in by_day.items():
            evaluation = evaluations[name, day.isoformat()]
            assert evaluation.metadata["violations"].value == violations, (name, day)
            assert evaluation.metadata["rows"].value == 3
            assert evaluation.passed == (violations == 0)
    for day in (FIRST_DAY, SECOND_DAY):
        key_check = evaluations["primary_key", day.isoformat()]
        assert key_check.passed
        assert key_check.metadata["duplicate_keys"].value == 0
    assert len(evaluations) == 8

    materializations = both.asset_materializations_for_node("silver__customer_days")
    assert sorted(str(m.partition) for m in materializations) == [
        FIRST_DAY.isoformat(),
        SECOND_DAY.isoformat(),
    ]
    metadata = materializations[0].metadata
    assert metadata["dagster/table_name"].value == f"main.ingest.{TARGET}"
    assert metadata["rows_written"].value == 4
    assert metadata["rows_quarantined"].value == 2
    assert metadata["quarantine_table"].value == f"main.ingest.{QUARANTINE}"
    assert metadata["expectations"].value == {
        "positive_revenue": {"violations": 2, "on_violation": "drop"},
        "known_customer": {"violations": 0, "on_violation": "fail"},
        "morning_start": {"violations": 2, "on_violation": "warn"},
    }
    row_counts = {
        str(m.partition): m.metadata["dagster/partition_row_count"].value for m in materializations
    }
    assert row_counts == {FIRST_DAY.isoformat(): 2, SECOND_DAY.isoformat(): 2}
    statements = str(metadata["statements"].value)
    assert "REPLACE WHERE `_partition_date` >= DATE'2024-03-01' AND " in statements
    assert "DATE_FORMAT(MIN(`o`.`OrderDate`), 'HH:mm')" in statements
    assert warehouse.files == {}


def test_a_fail_expectation_on_the_warehouse_writes_nothing_and_records_its_count(
    project: Project, warehouse: LayerWarehouse, instance: DagsterInstance
) -> None:
    project.ingest(instance, FIRST_DAY, SECOND_DAY)
    project.materialize(instance, LAYER, FIRST_DAY, SECOND_DAY)
    target, quarantine = warehouse.rows(TARGET, "*"), warehouse.rows(QUARANTINE, "*")
    project.change_order(7, CustomerID=99)
    project.materialize(instance, AssetKey(["src", "orders"]), SECOND_DAY)
    failed = project.materialize(instance, LAYER, SECOND_DAY, raise_on_error=False)
    assert not failed.success
    message = failure_message(failed)
    assert "layer silver/customer_days, partition 2024-03-02: nothing was committed" in message
    assert "known_customer" in message
    evaluation = _evaluations(failed)["known_customer", SECOND_DAY.isoformat()]
    assert not evaluation.passed
    assert evaluation.metadata["violations"].value == 1
    assert evaluation.metadata["rows"].value == 3
    assert warehouse.rows(TARGET, "*") == target
    assert warehouse.rows(QUARANTINE, "*") == quarantine
    assert not any("__staging_" in table for table in warehouse.tables())
    assert not any(
        sql.startswith("INSERT INTO `main`.`ingest`.`silver__customer_days")
        for sql in warehouse.sql()[-4:]
    )


def test_a_duplicate_key_fails_the_primary_key_check_with_a_sample(
    project: Project, warehouse: LayerWarehouse, instance: DagsterInstance
) -> None:
    """The customers' table holding one key under two names: the join gives customer 1's
    orders two groups on the day, one key twice."""
    project.ingest(instance, FIRST_DAY, SECOND_DAY)
    warehouse.database.execute(
        "INSERT INTO src__customers SELECT * REPLACE ('Ann B' AS Name) FROM src__customers "
        "WHERE CustomerID = 1"
    )
    result = project.materialize(instance, LAYER, FIRST_DAY, raise_on_error=False)
    assert not result.success
    check = _evaluations(result)["primary_key", FIRST_DAY.isoformat()]
    assert not check.passed
    assert check.metadata["duplicate_keys"].value == 1
    assert check.metadata["null_keys"].value == 0
    assert check.metadata["duplicate_sample"].value == [
        {"_partition_date": FIRST_DAY.isoformat(), "CustomerID": "1", "copies": 2}
    ]
    assert "primary_key failed on 1 partition(s)" in failure_message(result)
    assert TARGET not in warehouse.tables()


def test_a_warehouse_error_names_the_layer_the_days_the_statement_and_the_fix(
    project: Project, warehouse: LayerWarehouse, instance: DagsterInstance
) -> None:
    project.ingest(instance, FIRST_DAY, SECOND_DAY)
    warehouse.failing = (
        "INSERT INTO `main`.`ingest`.`silver__customer_days` REPLACE",
        "[DELTA_REPLACE_WHERE_MISMATCH] boom",
    )
    result = project.materialize(instance, LAYER, FIRST_DAY, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert (
        "layer silver/customer_days, partition 2024-03-01: replacing the layer's rows failed: "
        "table `main`.`ingest`.`silver__customer_days` (partition 2024-03-01): SQL warehouse "
        "wh-123 reported statement"
    ) in message
    assert "[DELTA_REPLACE_WHERE_MISMATCH] boom" in message
    assert "rows are written by position" in message
    assert TOKEN not in message
    assert warehouse.rows(TARGET, "*") == []
    assert not any("__staging_" in table for table in warehouse.tables())
    # a statement that parses: the layer's SQL reads as Databricks SQL
    assert isinstance(sqlglot.parse_one(warehouse.sql()[-1], read="databricks"), exp.Drop)


def test_sql_the_warehouse_cannot_run_fails_the_run_with_the_fix_and_no_staging_left(
    sqlite_database: SourceDatabase, warehouse: LayerWarehouse, instance: DagsterInstance
) -> None:
    """The inputs' columns are not declared in the project file: a misspelt one passes the
    load and the warehouse refuses the statement."""
    project = Project(
        sqlite_database, {**LAYER_SPEC, "sql": LAYER_SQL.replace("o.Amount", "o.Amuont")}
    )
    project.ingest(instance, FIRST_DAY, SECOND_DAY)
    result = project.materialize(instance, LAYER, FIRST_DAY, raise_on_error=False)
    message = failure_message(result)
    assert (
        "layer silver/customer_days, partition 2024-03-01: running the layer's SQL into the "
        "staging table failed: table `main`.`ingest`.`silver__customer_days__staging_"
    ) in message
    assert "Amuont" in message
    assert "Fix the layer's SQL in the project file" in message
    assert "materialize its inputs (customers (src/customers), orders (src/orders))" in message
    assert [sql.split(" ")[0] for sql in warehouse.sql()[-2:]] == ["CREATE", "DROP"]
    assert {"src__orders", "src__customers"} == warehouse.tables()
