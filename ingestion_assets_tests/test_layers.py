"""Silver and gold layers end to end: SQLite tables ingested into Delta, then SQL layers over them
run by DuckDB. Each expectation action on rows with known violations (counts per partition,
dropped rows only in the quarantine, a failure that commits nothing), a gold aggregate equal to
pyarrow's over 60 days, one day re-run alone, one day's files read, column lineage, and the
mistakes the project file reports while it loads."""

from __future__ import annotations

import datetime
import decimal
import pathlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    evaluate_automation_conditions,
    materialize,
)
from deltalake import DeltaTable

from ingestion_assets.definitions import build_definitions
from ingestion_assets.errors import ConfigError
from ingestion_assets.layers.expectations import FAILED_EXPECTATIONS
from ingestion_assets.project import parse_project
from ingestion_assets.specs import ProjectSpec
from ingestion_assets_tests.conftest import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SourceDatabase,
    failure_message,
)

FIRST_DAY = datetime.date(2024, 3, 1)
DAYS = 60
LAST_DAY = FIRST_DAY + datetime.timedelta(days=DAYS - 1)
CUSTOMERS = 5

SILVER_SQL = """
SELECT o._partition_date, o.OrderID, l.LineID, o.CustomerID, c.CustomerID AS KnownCustomer,
       o.TerritoryID, o.OrderDate, o.ShipDate, l.ProductID, l.Qty, l.Price, l.Total
FROM orders AS o
JOIN lines AS l ON l.OrderID = o.OrderID
LEFT JOIN customers AS c ON c.CustomerID = o.CustomerID
"""
GOLD_SQL = """
SELECT _partition_date, coalesce(TerritoryID, 0) AS TerritoryID,
       count(DISTINCT OrderID) AS OrderCount, sum(Total) AS Revenue
FROM silver GROUP BY ALL
"""
EXPECTATIONS = [
    {"name": "non_negative", "sql": "Qty >= 0 AND Price >= 0", "on_violation": "drop"},
    {"name": "shipped_after_ordered", "sql": "OrderDate <= ShipDate", "on_violation": "warn"},
    {"name": "known_customer", "sql": "KnownCustomer IS NOT NULL", "on_violation": "fail"},
]
SILVER = AssetKey(["silver", "orders"])
GOLD = AssetKey(["gold", "revenue"])


def _day(index: int) -> datetime.date:
    return FIRST_DAY + datetime.timedelta(days=index)


def _rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Three orders a day of two lines each; some ship before they are ordered (every 5th day's
    first order), some lines have a negative quantity (every 6th day's second order, line 2)."""
    orders, lines = [], []
    for index in range(DAYS):
        day = _day(index)
        for k in range(3):
            ordered = datetime.datetime.combine(day, datetime.time(8, k))
            shipped = (
                ordered - datetime.timedelta(days=1)
                if index % 5 == 0 and k == 0
                else (ordered + datetime.timedelta(days=2))
            )
            order_id = index * 10 + k
            orders.append(
                {
                    "OrderID": order_id,
                    "ModifiedDate": ordered,
                    "CustomerID": 1 + (index + k) % CUSTOMERS,
                    "TerritoryID": None if (k == 2 and index % 7 == 0) else k + 1,
                    "OrderDate": ordered,
                    "ShipDate": shipped,
                }
            )
            for line in (1, 2):
                quantity = (
                    -1 if (index % 6 == 0 and k == 1 and line == 2) else (index + k + line) % 4 + 1
                )
                price = decimal.Decimal(f"{10 + k}.{index:02d}25")
                lines.append(
                    {
                        "OrderID": order_id,
                        "LineID": line,
                        "ModifiedDate": ordered,
                        "ProductID": 700 + (index + line) % 9,
                        "Qty": quantity,
                        "Price": price,
                        "Total": (quantity * price).quantize(decimal.Decimal("0.000001")),
                    }
                )
    return orders, lines


def _tables(database: SourceDatabase) -> dict[str, sa.Table]:
    metadata = sa.MetaData()
    schema = database.schema("Sales")
    return {
        "Orders": sa.Table(
            "Orders",
            metadata,
            sa.Column("OrderID", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("ModifiedDate", sa.DateTime),
            sa.Column("CustomerID", sa.Integer),
            sa.Column("TerritoryID", sa.Integer),
            sa.Column("OrderDate", sa.DateTime),
            sa.Column("ShipDate", sa.DateTime),
            schema=schema,
        ),
        "Lines": sa.Table(
            "Lines",
            metadata,
            sa.Column("OrderID", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("LineID", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("ModifiedDate", sa.DateTime),
            sa.Column("ProductID", sa.Integer),
            sa.Column("Qty", sa.Integer),
            sa.Column("Price", sa.Numeric(19, 4)),
            sa.Column("Total", sa.Numeric(38, 6)),
            schema=schema,
        ),
        "Customers": sa.Table(
            "Customers",
            metadata,
            sa.Column("CustomerID", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("Name", sa.String(40)),
            schema=schema,
        ),
    }


def _execute(database: SourceDatabase, *statements: Any) -> None:
    engine = database.engine()
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(statement)
    engine.dispose()


@pytest.fixture
def orders_database(sqlite_database: SourceDatabase) -> SourceDatabase:
    """The orders, lines and customers of `_rows()` in SQLite."""
    tables = _tables(sqlite_database)
    engine = sqlite_database.engine()
    with engine.begin() as connection:
        for table in tables.values():
            table.create(connection)
        orders, lines = _rows()
        connection.execute(tables["Orders"].insert(), orders)
        connection.execute(tables["Lines"].insert(), lines)
        connection.execute(
            tables["Customers"].insert(),
            [{"CustomerID": key, "Name": f"customer {key}"} for key in range(1, CUSTOMERS + 1)],
        )
    engine.dispose()
    return sqlite_database


def _project_text(
    database: SourceDatabase,
    lake: pathlib.Path,
    layers: list[dict[str, Any]],
    declared_columns: bool = False,
) -> str:
    schema = database.schema("Sales")
    orders: dict[str, Any] = {
        "schema": schema,
        "name": "Orders",
        "partition_column": "ModifiedDate",
        "primary_key": ["OrderID"],
    }
    if declared_columns:
        orders["columns"] = ["OrderID", "ModifiedDate", "CustomerID", "TerritoryID"]
    source = {
        "type": "sql",
        "connection": database.connection_spec(),
        "start_date": FIRST_DAY.isoformat(),
        "end_date": (LAST_DAY + datetime.timedelta(days=1)).isoformat(),
        "tables": [
            orders,
            {
                "schema": schema,
                "name": "Lines",
                "partition_column": "ModifiedDate",
                "primary_key": ["OrderID", "LineID"],
            },
            {"schema": schema, "name": "Customers", "primary_key": ["CustomerID"]},
        ],
    }
    return yaml.safe_dump(
        {"lake": {"root": str(lake)}, "sources": {"src": source}, "layers": layers}
    )


def _layers(expect: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "key": "silver/orders",
            "inputs": {"orders": "src/orders", "lines": "src/lines", "customers": "src/customers"},
            "sql": SILVER_SQL,
            "primary_key": ["OrderID", "LineID"],
            "expect": EXPECTATIONS if expect is None else expect,
        },
        {
            "key": "gold/revenue",
            "inputs": {"silver": "silver/orders"},
            "sql": GOLD_SQL,
            "primary_key": ["_partition_date", "TerritoryID"],
        },
    ]


class Layered:
    """A project of the three tables and the layers, and helpers to run and read it."""

    def __init__(self, spec: ProjectSpec, lake: pathlib.Path) -> None:
        self.spec, self.lake = spec, lake
        self.defs: Definitions = build_definitions(spec)

    def assets(self, *keys: AssetKey) -> list[Any]:
        return [self.defs.get_assets_def(key) for key in keys]

    def run(
        self,
        instance: DagsterInstance,
        keys: list[AssetKey],
        first: datetime.date,
        last: datetime.date | None = None,
        raise_on_error: bool = True,
    ) -> ExecuteInProcessResult:
        last = last or first
        return materialize(
            self.assets(*keys),
            instance=instance,
            resources=self.defs.resources,
            tags={RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()},
            raise_on_error=raise_on_error,
        )

    def ingest(self, instance: DagsterInstance, first: datetime.date, last: datetime.date) -> None:
        self.run(instance, [AssetKey(["src", "orders"]), AssetKey(["src", "lines"])], first, last)
        materialize(
            self.assets(AssetKey(["src", "customers"])),
            instance=instance,
            resources=self.defs.resources,
        )

    def table(self, *path: str) -> DeltaTable:
        return DeltaTable(str(self.lake.joinpath(*path)))


def _layered(database: SourceDatabase, lake: pathlib.Path, **options: Any) -> Layered:
    text = _project_text(database, lake, _layers(**options))
    return Layered(parse_project(text, "layers.yaml"), lake)


@pytest.fixture
def layered(orders_database: SourceDatabase, tmp_path: pathlib.Path) -> Layered:
    return _layered(orders_database, tmp_path / "lake")


def _by_day(table: pa.Table) -> dict[datetime.date, int]:
    counts = pc.value_counts(table.column("_partition_date"))
    return dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )


def _expected_violations() -> dict[str, dict[datetime.date, int]]:
    orders, lines = _rows()
    ordered = {order["OrderID"]: order for order in orders}
    found: dict[str, dict[datetime.date, int]] = {"non_negative": {}, "shipped_after_ordered": {}}
    for line in lines:
        order = ordered[line["OrderID"]]
        day = order["ModifiedDate"].date()
        if line["Qty"] < 0 or line["Price"] < 0:
            found["non_negative"][day] = found["non_negative"].get(day, 0) + 1
        if order["ShipDate"] is not None and order["OrderDate"] > order["ShipDate"]:
            found["shipped_after_ordered"][day] = found["shipped_after_ordered"].get(day, 0) + 1
    return found


def _evaluations(result: ExecuteInProcessResult, check: str) -> dict[datetime.date, Any]:
    return {
        datetime.date.fromisoformat(str(e.partition)): e
        for e in result.get_asset_check_evaluations()
        if e.check_name == check
    }


def test_each_action_counts_its_violations_per_day_and_dropped_rows_are_only_in_quarantine(
    layered: Layered, instance: DagsterInstance
) -> None:
    layered.ingest(instance, FIRST_DAY, LAST_DAY)
    result = layered.run(instance, [SILVER], FIRST_DAY, LAST_DAY)
    expected = _expected_violations()
    # the violations are where the data puts them, and nowhere else
    assert sum(expected["non_negative"].values()) == 10
    assert sum(expected["shipped_after_ordered"].values()) == 24
    for name in ("non_negative", "shipped_after_ordered", "known_customer"):
        evaluations = _evaluations(result, name)
        assert sorted(evaluations) == [_day(index) for index in range(DAYS)]
        for day, evaluation in evaluations.items():
            violations = expected.get(name, {}).get(day, 0)
            assert evaluation.metadata["violations"].value == violations, (name, day)
            assert evaluation.metadata["rows"].value == 6
            assert evaluation.passed == (violations == 0)
    silver = layered.table("silver", "orders").to_pyarrow_table()
    quarantine = layered.table("silver", "orders_quarantine").to_pyarrow_table()
    # drop: out of the table, into the quarantine with its failed expectations, run and day
    assert silver.num_rows == DAYS * 6 - 10
    assert pc.min(silver.column("Qty")).as_py() >= 0
    assert quarantine.num_rows == 10
    assert set(quarantine.column("Qty").to_pylist()) == {-1}
    kept_keys = set(
        zip(silver.column("OrderID").to_pylist(), silver.column("LineID").to_pylist(), strict=True)
    )
    dropped = set(
        zip(
            quarantine.column("OrderID").to_pylist(),
            quarantine.column("LineID").to_pylist(),
            strict=True,
        )
    )
    assert not kept_keys & dropped
    assert quarantine.column(FAILED_EXPECTATIONS).to_pylist()[0] == ["non_negative"]
    assert set(quarantine.column("_run_id").to_pylist()) == {result.run_id}
    assert _by_day(quarantine) == expected["non_negative"]
    # warn: the rows stay
    early = pc.less(silver.column("ShipDate"), silver.column("OrderDate"))
    assert pc.sum(early).as_py() == 24
    materialization = result.asset_materializations_for_node("silver__orders")[0]
    assert materialization.metadata["rows_quarantined"].value == 10


def test_a_fail_expectation_commits_nothing_and_records_its_count(
    layered: Layered, orders_database: SourceDatabase, instance: DagsterInstance
) -> None:
    layered.ingest(instance, FIRST_DAY, LAST_DAY)
    layered.run(instance, [SILVER], FIRST_DAY, LAST_DAY)
    version = layered.table("silver", "orders").version()
    before = layered.table("silver", "orders").to_pyarrow_table().sort_by("OrderID")
    day = _day(12)
    tables = _tables(orders_database)
    _execute(
        orders_database,
        tables["Orders"].update().where(tables["Orders"].c.OrderID == 121).values(CustomerID=99),
    )
    layered.run(instance, [AssetKey(["src", "orders"])], day)
    result = layered.run(instance, [SILVER], day, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "layer silver/orders, partition 2024-03-13: nothing was committed" in message
    assert "known_customer" in message
    evaluation = _evaluations(result, "known_customer")[day]
    assert not evaluation.passed
    assert evaluation.metadata["violations"].value == 2
    assert layered.table("silver", "orders").version() == version
    assert layered.table("silver", "orders").to_pyarrow_table().sort_by("OrderID").equals(before)


def _pyarrow_gold(layered: Layered) -> dict[tuple[datetime.date, int], tuple[int, decimal.Decimal]]:
    """The gold aggregate from the bronze tables, computed with pyarrow alone."""
    orders = layered.table("src", "orders").to_pyarrow_table(
        columns=["OrderID", "TerritoryID", "_partition_date"]
    )
    lines = layered.table("src", "lines").to_pyarrow_table(
        columns=["OrderID", "Qty", "Price", "Total"]
    )
    kept = lines.filter(
        pc.and_(pc.greater_equal(lines["Qty"], 0), pc.greater_equal(lines["Price"], 0))
    )
    joined = kept.join(orders, "OrderID", join_type="inner")
    joined = joined.set_column(
        joined.schema.get_field_index("TerritoryID"),
        "TerritoryID",
        pc.fill_null(joined["TerritoryID"], 0),
    )
    grouped = joined.group_by(["_partition_date", "TerritoryID"]).aggregate(
        [("OrderID", "count_distinct"), ("Total", "sum")]
    )
    return {
        (row["_partition_date"], row["TerritoryID"]): (
            row["OrderID_count_distinct"],
            row["Total_sum"],
        )
        for row in grouped.to_pylist()
    }


def _gold_rows(layered: Layered) -> dict[tuple[datetime.date, int], tuple[int, decimal.Decimal]]:
    table = layered.table("gold", "revenue").to_pyarrow_table()
    return {
        (row["_partition_date"], row["TerritoryID"]): (row["OrderCount"], row["Revenue"])
        for row in table.to_pylist()
    }


def test_a_gold_aggregate_over_60_days_equals_pyarrows_and_one_day_rerun_changes_only_it(
    layered: Layered, orders_database: SourceDatabase, instance: DagsterInstance
) -> None:
    layered.ingest(instance, FIRST_DAY, LAST_DAY)
    layered.run(instance, [SILVER, GOLD], FIRST_DAY, LAST_DAY)
    gold = _gold_rows(layered)
    assert gold == _pyarrow_gold(layered)
    assert len({day for day, _ in gold}) == DAYS
    # decimals exact to the last digit
    assert all(isinstance(revenue, decimal.Decimal) for _, revenue in gold.values())
    before = layered.table("gold", "revenue").to_pyarrow_table()
    day = _day(20)
    tables = _tables(orders_database)
    _execute(
        orders_database,
        tables["Lines"]
        .update()
        .where(sa.and_(tables["Lines"].c.OrderID == 200, tables["Lines"].c.LineID == 1))
        .values(Qty=40, Total=decimal.Decimal("400.000001")),
    )
    layered.run(instance, [AssetKey(["src", "lines"])], day)
    result = layered.run(instance, [SILVER, GOLD], day)
    after = layered.table("gold", "revenue").to_pyarrow_table()
    other_days = pc.field("_partition_date") != pa.scalar(day)
    assert (
        after.filter(other_days)
        .sort_by([("_partition_date", "ascending"), ("TerritoryID", "ascending")])
        .equals(
            before.filter(other_days).sort_by(
                [("_partition_date", "ascending"), ("TerritoryID", "ascending")]
            )
        )
    )
    changed = _gold_rows(layered)
    assert changed == _pyarrow_gold(layered)
    assert changed[(day, 1)][1] == gold[(day, 1)][1] + decimal.Decimal("400.000001") - next(
        line["Total"] for line in _rows()[1] if line["OrderID"] == 200 and line["LineID"] == 1
    )
    assert set(
        after.filter(pc.field("_partition_date") == pa.scalar(day))["_run_id"].to_pylist()
    ) == {result.run_id}


def _files_with_day(table: DeltaTable, day: datetime.date) -> set[str]:
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    return {
        action["path"]
        for action in actions
        if action["min._partition_date"] <= day <= action["max._partition_date"]
    }


def test_a_one_day_run_reads_only_the_files_that_hold_that_day(
    layered: Layered, instance: DagsterInstance
) -> None:
    # two runs: March and April each in files of their own
    layered.ingest(instance, FIRST_DAY, datetime.date(2024, 3, 31))
    layered.ingest(instance, datetime.date(2024, 4, 1), LAST_DAY)
    day = datetime.date(2024, 4, 10)
    result = layered.run(instance, [SILVER], day)
    materialization = result.asset_materializations_for_node("silver__orders")[0]
    read = materialization.metadata["input_files_read"].value
    assert isinstance(read, dict)
    for name, table in (("orders", "orders"), ("lines", "lines")):
        delta = layered.table("src", table)
        every = {
            str(action["path"])
            for action in pa.table(delta.get_add_actions(flatten=True)).to_pylist()
        }
        holding = _files_with_day(delta, day)
        assert len(every) >= 2
        assert 0 < len(holding) < len(every)
        assert {path.rsplit("/", 1)[-1] for path in read[name]} == {
            path.rsplit("/", 1)[-1] for path in holding
        }
    # an unpartitioned input is read whole
    customers = layered.table("src", "customers")
    assert len(read["customers"]) == len(customers.file_uris())
    silver = layered.table("silver", "orders").to_pyarrow_table()
    assert set(silver.column("_partition_date").to_pylist()) == {day}


def test_column_lineage_follows_a_join_and_an_aggregate_column_by_column(
    layered: Layered,
) -> None:
    def lineage(key: AssetKey) -> dict[str, set[tuple[str, str]]]:
        spec = next(iter(layered.defs.get_assets_def(key).specs))
        deps = spec.metadata["dagster/column_lineage"].deps_by_column
        return {
            column: {(dep.asset_key.to_user_string(), dep.column_name) for dep in found}
            for column, found in deps.items()
        }

    assert lineage(SILVER) == {
        "_partition_date": {("src/orders", "_partition_date")},
        "OrderID": {("src/orders", "OrderID")},
        "LineID": {("src/lines", "LineID")},
        "CustomerID": {("src/orders", "CustomerID")},
        "KnownCustomer": {("src/customers", "CustomerID")},
        "TerritoryID": {("src/orders", "TerritoryID")},
        "OrderDate": {("src/orders", "OrderDate")},
        "ShipDate": {("src/orders", "ShipDate")},
        "ProductID": {("src/lines", "ProductID")},
        "Qty": {("src/lines", "Qty")},
        "Price": {("src/lines", "Price")},
        "Total": {("src/lines", "Total")},
    }
    assert lineage(GOLD) == {
        "_partition_date": {("silver/orders", "_partition_date")},
        "TerritoryID": {("silver/orders", "TerritoryID")},
        "OrderCount": {("silver/orders", "OrderID")},
        "Revenue": {("silver/orders", "Total")},
    }
    # the graph: bronze -> silver -> gold, by day
    gold = layered.defs.get_assets_def(GOLD)
    assert set(gold.asset_deps[GOLD]) == {SILVER}
    assert set(layered.defs.get_assets_def(SILVER).asset_deps[SILVER]) == {
        AssetKey(["src", "orders"]),
        AssetKey(["src", "lines"]),
        AssetKey(["src", "customers"]),
    }


def _load_error(
    database: SourceDatabase, lake: pathlib.Path, layers: list[dict[str, Any]], **options: Any
) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_project(_project_text(database, lake, layers, **options), "layers.yaml")
    return str(raised.value)


def test_mistakes_in_layers_are_load_time_errors_naming_the_layer(
    orders_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    lake = tmp_path / "lake"
    silver = _layers()[0]
    message = _load_error(orders_database, lake, [{**silver, "inputs": {"orders": "src/nowhere"}}])
    assert (
        "layers[0] (silver/orders): input orders is src/nowhere, which is no asset of the project"
        in message
    )
    message = _load_error(
        orders_database, lake, [{**silver, "sql": "SELECT o.OrderID FROM orders o WHERE"}]
    )
    assert "layers[0] (silver/orders): the SQL does not parse" in message
    message = _load_error(orders_database, lake, [{**silver, "sql": "DELETE FROM orders"}])
    assert "must be exactly one SELECT" in message
    message = _load_error(
        orders_database,
        lake,
        [{**silver, "sql": "SELECT o._partition_date FROM orders o JOIN refunds r ON true"}],
    )
    assert "the SQL reads refunds, which is not an input" in message
    # a column the input lacks, where the project file names the input's columns
    message = _load_error(
        orders_database,
        lake,
        [
            {
                **silver,
                "sql": "SELECT o._partition_date, o.OrderID, o.Discount FROM orders AS o",
                "expect": [],
                "primary_key": [],
            }
        ],
        declared_columns=True,
    )
    assert (
        "layers[0] (silver/orders): column Discount is not a column of input orders (src/orders); "
        "its columns: OrderID, ModifiedDate, CustomerID, TerritoryID, _partition_date" in message
    )
    cycle = [
        {
            "key": "silver/a",
            "inputs": {"b": "silver/b"},
            "sql": "SELECT * FROM b",
            "partitioning": "unpartitioned",
        },
        {
            "key": "silver/b",
            "inputs": {"a": "silver/a"},
            "sql": "SELECT * FROM a",
            "partitioning": "unpartitioned",
        },
    ]
    message = _load_error(orders_database, lake, cycle)
    assert "silver/a -> silver/b -> silver/a is a cycle" in message
    # an expectation over a column the layer does not produce, or that does not parse
    gold = _layers()[1]
    message = _load_error(
        orders_database,
        lake,
        [silver, {**gold, "expect": [{"name": "big", "sql": "Revenu > 10"}]}],
    )
    assert (
        "layers[1] (gold/revenue): expectation big: column Revenu is not an output column"
        in message
    )
    message = _load_error(
        orders_database, lake, [silver, {**gold, "expect": [{"name": "big", "sql": "Revenue >"}]}]
    )
    assert "expectation big: `Revenue >` does not parse" in message
    message = _load_error(
        orders_database,
        lake,
        [{**silver, "sql": "SELECT o.OrderID FROM orders o"}],
        declared_columns=True,
    )
    assert "the SQL does not select _partition_date" in message


def test_layers_are_refused_on_writers_without_delta_tables_naming_the_fix(
    orders_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    text = yaml.safe_load(_project_text(orders_database, tmp_path / "lake", _layers()))
    iceberg = {"catalog_uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": str(tmp_path)}
    text["lake"].update(io_manager="iceberg", iceberg=iceberg)
    with pytest.raises(ConfigError) as raised:
        parse_project(yaml.safe_dump(text), "layers.yaml")
    assert (
        "layers[0] (silver/orders): layers run over Delta tables (delta-rs or Unity Catalog), "
        "not iceberg; set the layer's `io_manager: delta`" in str(raised.value)
    )
    # the layer on delta, its inputs still on iceberg: the input is named
    for layer in text["layers"]:
        layer["io_manager"] = "delta"
    with pytest.raises(ConfigError) as raised:
        parse_project(yaml.safe_dump(text), "layers.yaml")
    message = str(raised.value)
    assert "layers[0] (silver/orders): input " in message
    assert (
        "is written by iceberg, the layer by delta; a layer reads inputs of its own writer. "
        "Write the input's source with `io_manager: delta`." in message
    )
    # with the source on delta too, the same project loads
    text["sources"]["src"]["io_manager"] = "delta"
    del text["lake"]["io_manager"]
    assert parse_project(yaml.safe_dump(text), "layers.yaml").layers


def test_a_column_missing_from_an_undeclared_input_fails_the_run_before_reading(
    orders_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    text = _project_text(
        orders_database,
        tmp_path / "lake",
        [{**_layers()[0], "sql": SILVER_SQL.replace("l.Total", "l.Totall"), "expect": []}],
    )
    layered = Layered(parse_project(text, "layers.yaml"), tmp_path / "lake")
    layered.ingest(instance, FIRST_DAY, _day(1))
    result = layered.run(instance, [SILVER], FIRST_DAY, raise_on_error=False)
    assert "column Totall is not a column of input lines (src/lines)" in failure_message(result)
    assert not (tmp_path / "lake" / "silver" / "orders").exists()


def test_an_unpartitioned_layer_with_a_key_is_merged_changing_only_what_changed(
    orders_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    dimension = {
        "key": "silver/customers",
        "inputs": ["src/customers"],
        "sql": "SELECT CustomerID, upper(Name) AS Name FROM customers",
        "partitioning": "unpartitioned",
        "primary_key": ["CustomerID"],
    }
    text = _project_text(orders_database, tmp_path / "lake", [dimension])
    layered = Layered(parse_project(text, "layers.yaml"), tmp_path / "lake")
    key = AssetKey(["silver", "customers"])
    materialize(
        layered.assets(AssetKey(["src", "customers"]), key),
        instance=instance,
        resources=layered.defs.resources,
    )
    first = layered.table("silver", "customers").to_pyarrow_table().sort_by("CustomerID")
    assert first.column("Name").to_pylist() == [f"CUSTOMER {n}" for n in range(1, CUSTOMERS + 1)]
    customers = _tables(orders_database)["Customers"]
    _execute(
        orders_database,
        customers.update().where(customers.c.CustomerID == 2).values(Name="renamed"),
        customers.delete().where(customers.c.CustomerID == 5),
    )
    result = materialize(
        layered.assets(AssetKey(["src", "customers"]), key),
        instance=instance,
        resources=layered.defs.resources,
    )
    metadata = result.asset_materializations_for_node("silver__customers")[0].metadata
    assert (
        metadata["rows_updated"].value,
        metadata["rows_deleted"].value,
        metadata["rows_inserted"].value,
    ) == (1, 1, 0)
    second = layered.table("silver", "customers").to_pyarrow_table().sort_by("CustomerID")
    assert second.column("Name").to_pylist() == [
        "CUSTOMER 1",
        "RENAMED",
        "CUSTOMER 3",
        "CUSTOMER 4",
    ]
    # unchanged rows keep the run that wrote them
    assert second.column("_run_id")[0] == first.column("_run_id")[0]


def test_a_layer_day_follows_its_inputs_day_once_both_landed(
    layered: Layered, instance: DagsterInstance
) -> None:
    result = evaluate_automation_conditions(defs=layered.defs, instance=instance)
    assert not result.get_requested_partitions(SILVER)
    layered.ingest(instance, _day(3), _day(3))
    result = evaluate_automation_conditions(
        defs=layered.defs, instance=instance, cursor=result.cursor
    )
    assert result.get_requested_partitions(SILVER) == {_day(3).isoformat()}
    # gold's day with it: Dagster launches both in one run, silver first
    assert result.get_requested_partitions(GOLD) == {_day(3).isoformat()}
    # a refresh of the unpartitioned customers alone re-runs no day
    result = evaluate_automation_conditions(
        defs=layered.defs, instance=instance, cursor=result.cursor
    )
    materialize(
        layered.assets(AssetKey(["src", "customers"])),
        instance=instance,
        resources=layered.defs.resources,
    )
    result = evaluate_automation_conditions(
        defs=layered.defs, instance=instance, cursor=result.cursor
    )
    assert not result.get_requested_partitions(SILVER)


def test_a_layer_whose_sql_moves_rows_to_another_day_fails_naming_the_days(
    orders_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    shifted = {
        "key": "silver/shifted",
        "inputs": ["src/orders"],
        "sql": "SELECT _partition_date + 1 AS _partition_date, OrderID FROM orders",
    }
    text = _project_text(orders_database, tmp_path / "lake", [shifted])
    layered = Layered(parse_project(text, "layers.yaml"), tmp_path / "lake")
    layered.ingest(instance, FIRST_DAY, FIRST_DAY)
    result = layered.run(
        instance, [AssetKey(["silver", "shifted"])], FIRST_DAY, raise_on_error=False
    )
    assert (
        "layer silver/shifted, partition 2024-03-01: the SQL's result has rows for "
        "2024-03-02..2024-03-02, outside the run's days (2024-03-01..2024-03-01)"
    ) in failure_message(result)
    # no table: the staged files were removed before any commit
    assert not (tmp_path / "lake" / "silver" / "shifted" / "_delta_log").exists()
    assert not list((tmp_path / "lake" / "silver").rglob("*.parquet"))
