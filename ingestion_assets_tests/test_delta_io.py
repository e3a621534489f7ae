"""The Delta IO manager: backfills as one commit, schema policies, type fidelity, loading inputs."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from dagster import (
    AssetIn,
    DagsterInstance,
    DailyPartitionsDefinition,
    asset,
    materialize,
)
from deltalake import DeltaTable

from ingestion_assets.io_managers.delta import DeltaLakeIOManager
from ingestion_assets.lake.rows import LINEAGE_COLUMNS, PARTITION_DATE, replace_predicate
from ingestion_assets_tests.conftest import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SourceDatabase,
    build_project,
    failure_message,
    table_entry,
)

DAYS = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-03-01")


@pytest.fixture
def select_counter() -> Iterator[list[str]]:
    """Every SELECT (or COPY of a SELECT) any SQLAlchemy engine sends while the test runs."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "COPY")):
            statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    yield statements
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def _content(table: pa.Table) -> list[dict[str, Any]]:
    rows = table.drop_columns(["_ingested_at", "_run_id"]).to_pylist()
    return sorted(rows, key=lambda row: (row["SalesOrderID"], row.get("SalesOrderDetailID", 0)))


@pytest.mark.slow
def test_a_sixty_day_backfill_is_one_run_one_query_one_commit_and_equals_single_days(
    postgres_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    select_counter: list[str],
) -> None:
    postgres_database.load_demo()
    tables = [table_entry(postgres_database, "Sales.SalesOrderDetail")]
    backfill = build_project(postgres_database, tmp_path / "backfill", tables)
    singles = build_project(postgres_database, tmp_path / "singles", tables)

    result = backfill.materialize(
        ["sales_order_detail"], instance, partition_range=("2024-01-01", "2024-02-29")
    )
    assert result.success
    runs = instance.get_runs()
    assert len(runs) == 1
    data_queries = [s for s in select_counter if '"SalesOrderDetail"' in s and "FROM" in s]
    data_queries = [s for s in data_queries if "information_schema" not in s.lower()]
    counts = [s for s in data_queries if "count(" in s.lower()]
    # one read; one count that the audit reconciles all sixty days with, and one of the rows
    # no partition reaches
    assert len(counts) == 2, counts
    assert len([s for s in counts if "IS NULL" in s]) == 1, counts
    assert len(data_queries) == 3, data_queries
    history = backfill.delta("sales_order_detail").history()
    data_commits = [entry for entry in history if entry["operation"] != "CREATE TABLE"]
    assert len(data_commits) == 1
    partitions = {
        m.partition for m in result.asset_materializations_for_node("src__sales_order_detail")
    }
    assert len(partitions) == 60

    for day in DAYS.get_partition_keys():
        singles.materialize(["sales_order_detail"], instance, partition=day)
    backfilled = backfill.delta("sales_order_detail").to_pyarrow_table()
    single_days = singles.delta("sales_order_detail").to_pyarrow_table()
    assert backfilled.num_rows > 0
    assert _content(backfilled) == _content(single_days)
    single_commits = singles.delta("sales_order_detail").history()
    assert len([e for e in single_commits if e["operation"] != "CREATE TABLE"]) == 60


def _add_column(database: SourceDatabase, column_sql: str) -> None:
    engine = database.engine()
    preparer = engine.dialect.identifier_preparer
    table = (
        f"{preparer.quote_schema(database.schema('Sales'))}.{preparer.quote('SalesOrderHeader')}"
    )
    with engine.begin() as connection:
        connection.execute(sa.text(f"ALTER TABLE {table} ADD {column_sql}"))
    engine.dispose()


@pytest.mark.parametrize("policy", ["evolve", "freeze"])
def test_a_column_added_at_the_source_evolves_or_fails_by_policy(
    source_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    policy: str,
) -> None:
    source_database.load_demo()
    project = build_project(
        source_database,
        tmp_path / "lake",
        [table_entry(source_database, "Sales.SalesOrderHeader", schema_policy=policy)],
    )
    project.materialize(["sales_order_header"], instance, partition="2024-01-02")
    quote = source_database.engine().dialect.identifier_preparer.quote
    _add_column(source_database, f"{quote('Priority')} INTEGER DEFAULT 3")

    result = project.materialize(
        ["sales_order_header"], instance, partition="2024-01-03", raise_on_error=False
    )
    table = project.delta("sales_order_header").to_pyarrow_table()
    if policy == "evolve":
        assert result.success
        # SQLite's INTEGER is 64-bit whatever it is called
        expected = pa.int64() if source_database.dialect == "sqlite" else pa.int32()
        assert table.schema.field("Priority").type == expected
        day = pc.field(PARTITION_DATE)
        old = table.filter(day == datetime.date(2024, 1, 2)).column("Priority")
        new = table.filter(day == datetime.date(2024, 1, 3)).column("Priority")
        assert old.null_count == len(old) > 0
        assert set(new.to_pylist()) == {3}
    else:
        assert not result.success
        message = failure_message(result)
        assert "src.sales_order_header" in message
        assert "added column Priority (" in message
        assert "freeze" in message
        assert "Priority" not in table.schema.names
        assert set(table.column(PARTITION_DATE).to_pylist()) == {datetime.date(2024, 1, 2)}


def test_a_changed_column_type_fails_clearly_under_evolve(
    postgres_database: SourceDatabase, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    postgres_database.load_demo()
    project = build_project(
        postgres_database,
        tmp_path / "lake",
        [table_entry(postgres_database, "Sales.SalesOrderHeader")],
    )
    project.materialize(["sales_order_header"], instance, partition="2024-01-02")
    version = project.delta("sales_order_header").version()
    engine = postgres_database.engine()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                'ALTER TABLE "Sales"."SalesOrderHeader" ALTER COLUMN "Freight" TYPE numeric(20, 6)'
            )
        )
    engine.dispose()
    result = project.materialize(
        ["sales_order_header"], instance, partition="2024-01-02", raise_on_error=False
    )
    assert not result.success
    message = failure_message(result)
    assert "column Freight changed type from decimal(19,4) to decimal(20,6)" in message
    assert "partition 2024-01-02" in message
    assert project.delta("sales_order_header").version() == version


def _io_manager(tmp_path: pathlib.Path) -> DeltaLakeIOManager:
    return DeltaLakeIOManager(root_uri=str(tmp_path / "lake"))


def _run_arrow_asset(
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    table: pa.Table,
    metadata: dict[str, str] | None = None,
    partition: str = "2024-01-05",
) -> Any:
    @asset(
        key=["t", "values"],
        partitions_def=DAYS,
        metadata={"ingestion/partition_column": "day", **(metadata or {})},
    )
    def values() -> pa.Table:
        return table

    return materialize(
        [values],
        instance=instance,
        resources={"io_manager": _io_manager(tmp_path)},
        partition_key=partition,
        raise_on_error=False,
    )


def test_unsigned_and_nanosecond_values_land_exactly_or_fail_loudly(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    day = datetime.date(2024, 1, 5)
    base_ns = 1_704_412_800_000_000_000  # 2024-01-05T00:00:00
    table = pa.table(
        {
            "day": pa.array([day, day], pa.date32()),
            "tiny": pa.array([200, 255], pa.uint8()),
            "big": pa.array([2**64 - 1, 0], pa.uint64()),
            "exact": pa.array([base_ns + 1_234_567_800, base_ns + 100], pa.timestamp("ns")),
        }
    )
    failed = _run_arrow_asset(tmp_path, instance, table)
    assert not failed.success
    message = failure_message(failed)
    assert "column exact has values with 100 ns digits" in message
    assert "timestamp_nanoseconds" in message
    assert not DeltaTable.is_deltatable(str(tmp_path / "lake" / "t" / "values"))

    as_text = _run_arrow_asset(
        tmp_path, instance, table, {"ingestion/timestamp_nanoseconds": "string"}
    )
    assert as_text.success
    written = DeltaTable(str(tmp_path / "lake" / "t" / "values")).to_pyarrow_table()
    assert written.column("tiny").to_pylist() == [200, 255]
    assert written.schema.field("tiny").type == pa.int16()
    assert written.column("big").to_pylist()[0] == 2**64 - 1
    assert written.column("exact").to_pylist() == [
        "2024-01-05T00:00:01.234567800",
        "2024-01-05T00:00:00.000000100",
    ]


def test_rows_outside_the_partition_are_refused(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    table = pa.table({"day": pa.array([datetime.date(2024, 1, 5), datetime.date(2024, 1, 9)])})
    result = _run_arrow_asset(tmp_path, instance, table)
    assert not result.success
    assert "outside the partition" in failure_message(result)


def test_materialization_metadata_and_downstream_loading(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    days = [datetime.date(2024, 1, 5), datetime.date(2024, 1, 6)]

    @asset(key=["t", "orders"], partitions_def=DAYS, metadata={"ingestion/partition_column": "day"})
    def orders(context) -> pa.Table:
        day = datetime.date.fromisoformat(context.partition_key)
        amounts = [1, 2, 3] if day == days[0] else [10, 20, 30]
        return pa.table({"day": [day] * 3, "amount": pa.array(amounts, pa.int64())})

    @asset(
        key=["t", "daily_total"], partitions_def=DAYS, ins={"orders": AssetIn(key=["t", "orders"])}
    )
    def daily_total(orders: pa.Table) -> pa.Table:
        return pa.table(
            {
                "day": orders.column(PARTITION_DATE).unique(),
                "total": pa.array([pc.sum(orders.column("amount")).as_py()]),
            }
        )

    resources = {"io_manager": _io_manager(tmp_path)}
    for day in days:
        materialize([orders], instance=instance, resources=resources, partition_key=day.isoformat())
    result = materialize(
        [orders, daily_total],
        instance=instance,
        resources=resources,
        partition_key=days[1].isoformat(),
        selection=[daily_total],
    )
    assert result.success
    total_table = DeltaTable(str(tmp_path / "lake" / "t" / "daily_total"))
    total = total_table.to_pyarrow_table()
    assert total.column("total").to_pylist() == [60]  # only day 2's rows were loaded
    metadata = result.asset_materializations_for_node("t__daily_total")[0].metadata
    assert metadata["dagster/row_count"].value == 1
    assert metadata["delta_version"].value == total_table.version()
    assert metadata["files_written"].value == 1
    assert metadata["bytes_written"].value > 0
    assert str(metadata["dagster/uri"].value).endswith("t/daily_total")
    columns = [column.name for column in metadata["dagster/column_schema"].value.columns]
    assert columns == ["day", "total", *LINEAGE_COLUMNS]


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        ("2024-01-05", "2024-01-05", "_partition_date = '2024-01-05'"),
        (
            "2024-01-05",
            "2024-03-04",
            "_partition_date >= '2024-01-05' AND _partition_date <= '2024-03-04'",
        ),
    ],
)
def test_replace_predicate_names_exactly_the_window(first: str, last: str, expected: str) -> None:
    assert (
        replace_predicate(datetime.date.fromisoformat(first), datetime.date.fromisoformat(last))
        == expected
    )


def test_backfill_tags_drive_a_single_run(
    tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    @asset(key=["t", "ranged"], partitions_def=DAYS, metadata={"ingestion/partition_column": "day"})
    def ranged(context) -> pa.Table:
        window = context.partition_time_window
        day_count = (window.end - window.start).days
        return pa.table(
            {"day": [window.start.date() + datetime.timedelta(days=i) for i in range(day_count)]}
        )

    result = materialize(
        [ranged],
        instance=instance,
        resources={"io_manager": _io_manager(tmp_path)},
        tags={RANGE_START_TAG: "2024-01-01", RANGE_END_TAG: "2024-01-31"},
    )
    assert result.success
    materializations = result.asset_materializations_for_node("t__ranged")
    counts = {
        m.partition: m.metadata["dagster/partition_row_count"].value for m in materializations
    }
    assert len(counts) == 31
    assert set(counts.values()) == {1}
    # the table's total, on every partition's materialization
    assert {m.metadata["dagster/row_count"].value for m in materializations} == {31}


def test_a_relative_lake_root_is_reported_as_an_absolute_uri(
    tmp_path: pathlib.Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    @asset(key=["t", "plain"])
    def plain() -> pa.Table:
        return pa.table({"n": [1, 2]})

    result = materialize(
        [plain], instance=instance, resources={"io_manager": DeltaLakeIOManager(root_uri="lake")}
    )

    uri = str(result.asset_materializations_for_node("t__plain")[0].metadata["dagster/uri"].value)
    assert uri == str((tmp_path / "lake" / "t" / "plain").resolve())
