"""The other writers on the same contract: SQL tables landed as Apache Iceberg tables (a SQL
catalog on SQLite) and as PostgreSQL tables (the local server), read back through the writer and
compared with the source column by column, and what the project file refuses on them."""

from __future__ import annotations

import datetime
import os
import pathlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from dagster import (
    AssetIn,
    AssetKey,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    asset,
    build_sensor_context,
    materialize,
    mem_io_manager,
)

from ingestion_assets.definitions import build_definitions
from ingestion_assets.demo.generate import DemoScale, demo_rows
from ingestion_assets.demo.schema import ORDER_TABLES
from ingestion_assets.errors import ConfigError
from ingestion_assets.io_managers.iceberg import IcebergIOManager
from ingestion_assets.lake.rows import LINEAGE_COLUMNS, PARTITION_DATE
from ingestion_assets.project import parse_project
from ingestion_assets_tests.conftest import (
    ORDER_TABLE_KEYS,
    POSTGRES_URL,
    RANGE_END_TAG,
    RANGE_START_TAG,
    SOURCE,
    TEST_SCALE,
    IngestProject,
    SourceDatabase,
    build_project,
    failure_message,
    require_service,
    table_entry,
)
from ingestion_assets_tests.iceberg_rest import REST_TOKEN, RestCatalogServer, rest_server
from ingestion_assets_tests.memory_source import (
    FIRST_DAY,
    LOST,
    ROWS,
    memory_kind,
    memory_project,
)
from ingestion_assets_tests.memory_source import KEY as MEMORY_KEY
from ingestion_assets_tests.test_sql_source import assert_same_rows, expected_rows

DAY = TEST_SCALE.start_date + datetime.timedelta(days=3)
WRITERS = ("iceberg", "postgres")
__all__ = ["memory_kind", "rest_server"]  # the fixtures, used by name
RESOURCE_KEYS = {"iceberg": "iceberg_io_manager", "postgres": "postgres_io_manager"}


@pytest.fixture
def warehouse_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for the postgres writer's tables; its URL."""
    admin = require_service(POSTGRES_URL, "PostgreSQL")
    name = f"ia_dest_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_URL)
    try:
        yield f"postgresql://{url.username}@{url.host}:{url.port}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=WRITERS)
def writer_settings(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> tuple[str, dict[str, Any]]:
    """(writer, the `lake:` options that select it)."""
    writer = str(request.param)
    if writer == "iceberg":
        warehouse = tmp_path / "iceberg"
        warehouse.mkdir()
        settings: dict[str, Any] = {
            "catalog_uri": f"sqlite:///{warehouse / 'catalog.db'}",
            "warehouse": str(warehouse),
        }
    else:
        settings = {"url": request.getfixturevalue("warehouse_database"), "schema": "ingest"}
    return writer, {"io_manager": writer, writer: settings}


def snapshot_files(project: IngestProject, name: str) -> list[str]:
    """The data files the current snapshot of the Iceberg table `[src, name]` names."""
    table = project.defs.resources["iceberg_io_manager"].open_table((SOURCE, name))
    return [task.file.file_path for task in table.scan().plan_files()]


def read_back(project: IngestProject, writer: str, name: str, columns: list[str]) -> Any:
    """The committed rows of `[src, name]` as the writer reads them (every day)."""
    manager = project.defs.resources[RESOURCE_KEYS[writer]]
    table = manager.committed_rows((SOURCE, name), None, columns)
    assert table is not None, f"{writer}: no table {name}"
    return table


def test_one_day_of_each_order_table_equals_the_source(
    source_database: SourceDatabase,
    writer_settings: tuple[str, dict[str, Any]],
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
) -> None:
    writer, lake_options = writer_settings
    source_database.load_demo()
    project = build_project(
        source_database,
        tmp_path / "lake",
        [table_entry(source_database, logical) for logical in ORDER_TABLES],
        lake_options=lake_options,
    )
    names = [ORDER_TABLE_KEYS[logical][0] for logical in ORDER_TABLES]
    result = project.materialize(names, instance, partition=DAY.isoformat())
    assert result.success, failure_message(result)
    # the checks judged the staged rows on this writer as on Delta
    evaluations = result.get_asset_check_evaluations()
    assert evaluations
    assert all(evaluation.passed for evaluation in evaluations), evaluations
    for logical in ORDER_TABLES:
        name, key = ORDER_TABLE_KEYS[logical]
        expected = expected_rows(logical, DAY)
        table = read_back(project, writer, name, [*expected[0], *LINEAGE_COLUMNS])
        assert set(table.column(PARTITION_DATE).to_pylist()) == {DAY}
        assert_same_rows(
            table,
            expected,
            key,
            f"{writer} from {source_database.dialect}: {logical}",
        )
        if writer == "iceberg":
            # a second reader: pyarrow over the current snapshot's data files, no pyiceberg scan
            files = snapshot_files(project, name)
            assert files
            direct = pa.concat_tables(
                [pq.read_table(path.removeprefix("file://")) for path in files]
            )
            assert_same_rows(direct, expected, key, f"pyarrow over {writer}'s files: {logical}")
        materialization = result.asset_materializations_for_node(f"src__{name}")[0]
        assert materialization.metadata["dagster/row_count"].value == table.num_rows


def test_a_backfill_is_one_run_equal_to_its_single_days_and_a_changed_day_is_replaced(
    writer_settings: tuple[str, dict[str, Any]],
    sqlite_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
) -> None:
    writer, lake_options = writer_settings
    scale = DemoScale(days=60, orders_per_day=2)
    sqlite_database.load_demo(scale)
    entry = table_entry(sqlite_database, "Sales.SalesOrderHeader")
    project = build_project(sqlite_database, tmp_path / "lake", [entry], lake_options=lake_options)
    first = scale.start_date
    last = first + datetime.timedelta(days=scale.days - 1)
    columns = ["SalesOrderID", "TotalDue", "ModifiedDate"]

    def landed() -> list[tuple[Any, ...]]:
        table = read_back(project, writer, "sales_order_header", columns)
        return sorted(tuple(row.values()) for row in table.to_pylist())

    backfill = project.materialize(
        ["sales_order_header"], instance, partition_range=(first.isoformat(), last.isoformat())
    )
    assert backfill.success, failure_message(backfill)
    assert len(backfill.asset_materializations_for_node("src__sales_order_header")) == scale.days
    once = landed()
    assert len(once) == sum(1 for row in demo_rows(scale)["Sales.SalesOrderHeader"])
    # the 60 days were published at once: one snapshot, or rows of one transaction
    assert commits(project, writer, "sales_order_header") == 1
    # the same days one by one: the same rows
    for offset in range(0, scale.days, 7):
        day = (first + datetime.timedelta(days=offset)).isoformat()
        assert project.materialize(["sales_order_header"], instance, partition=day).success
    assert landed() == once

    # the source changes one day: re-materializing it replaces exactly that day
    changed_day = first + datetime.timedelta(days=10)
    sales = pathlib.Path(sqlite_database.sqlite_attach["Sales"])
    with sqlite3.connect(sales) as connection:
        connection.execute(
            'UPDATE "SalesOrderHeader" SET "TotalDue" = "TotalDue" + 1 '
            'WHERE substr("ModifiedDate", 1, 10) = ?',
            (changed_day.isoformat(),),
        )
    assert project.materialize(
        ["sales_order_header"], instance, partition=changed_day.isoformat()
    ).success
    after = landed()
    assert len(after) == len(once)
    differ = {old[-1] for old, new in zip(once, after, strict=True) if old != new}
    # each row ends with its _partition_date
    assert differ == {changed_day}


def commits(project: IngestProject, writer: str, name: str) -> int:
    """How many commits the rows of `[src, name]` come from: the Iceberg table's snapshots, or
    the distinct transactions (xmin) that wrote the PostgreSQL table's rows."""
    manager = project.defs.resources[RESOURCE_KEYS[writer]]
    if writer == "iceberg":
        return len(manager.open_table((SOURCE, name)).snapshots())
    engine = sa.create_engine(sa.make_url(manager.url).set(drivername="postgresql+psycopg2"))
    try:
        with engine.connect() as connection:
            table = f'"{manager.db_schema}"."{SOURCE}__{name}"'
            return int(
                connection.execute(
                    sa.text(f"SELECT count(DISTINCT xmin::text) FROM {table}")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _project_text(**lake: Any) -> dict[str, Any]:
    return {
        "lake": {"root": ".data/lake", **lake},
        "sources": {
            "erp": {
                "type": "sql",
                "connection": {"url": "sqlite:///erp.db"},
                "start_date": "2024-01-01",
                "tables": [
                    {"schema": "main", "name": "orders", "partition_column": "ModifiedDate"}
                ],
            }
        },
    }


ICEBERG = {"catalog_uri": "sqlite:///catalog.db", "warehouse": ".data/iceberg"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda text: text["lake"].update(io_manager="postgres"),
            "source(s) erp write to postgres but lake.postgres is not set",
        ),
        (
            lambda text: text["lake"].update(
                io_manager="postgres", postgres={"url": "postgresql://u:secret@host/db"}
            ),
            "the url holds a password: put the whole URL in an environment variable",
        ),
        (
            lambda text: (
                text["lake"].update(io_manager="iceberg", iceberg=ICEBERG),
                text["sources"]["erp"]["tables"][0].pop("partition_column"),
                text["sources"]["erp"]["tables"][0].update(mode="merge", primary_key=["id"]),
            ),
            "table main.orders: mode merge is kept by the Delta writers only",
        ),
        (
            lambda text: (
                text["lake"].update(io_manager="iceberg", iceberg=ICEBERG),
                text["sources"].update(
                    landing={
                        "type": "files",
                        "root": "landing",
                        "start_date": "2024-01-01",
                        "files": [
                            {
                                "name": "rates",
                                "glob": "*.csv",
                                "format": {"type": "csv"},
                                "partitioning": {"by": "arrival"},
                            }
                        ],
                    }
                ),
            ),
            "source landing: a files source keeps its ledger of files beside Delta tables",
        ),
    ],
    ids=["no-settings", "literal-password", "merge-mode", "files-source"],
)
def test_what_only_delta_keeps_is_refused_on_the_other_writers(change: Any, message: str) -> None:
    text = _project_text()
    change(text)
    with pytest.raises(ConfigError) as raised:
        parse_project(yaml.safe_dump(text), "project.yaml")
    assert message in str(raised.value)
    assert "secret" not in str(raised.value)


def test_the_assets_show_their_writer_and_use_its_resource(tmp_path: pathlib.Path) -> None:
    text = _project_text(io_manager="iceberg", iceberg=ICEBERG)
    text["sources"]["erp"]["io_manager"] = "iceberg"
    defs = build_definitions(parse_project(yaml.safe_dump(text), "project.yaml"))
    asset = defs.get_assets_def(AssetKey(["erp", "orders"]))
    spec = next(iter(asset.specs))
    assert "iceberg" in spec.kinds
    assert "deltalake" not in spec.kinds
    assert spec.metadata["dagster/storage_kind"] == "iceberg"
    assert asset.get_io_manager_key_for_asset_key(spec.key) == "iceberg_io_manager"
    assert type(defs.resources["iceberg_io_manager"]).__name__ == "IcebergIOManager"


def _memory_defs(lake: pathlib.Path, lake_options: dict[str, Any]) -> Definitions:
    """The in-memory source's `orders` (key `id`, days from FIRST_DAY) on the given writer."""
    return build_definitions(parse_project(memory_project(lake, lake_options), "memory.yaml"))


def _landed_ids(defs: Definitions, writer: str, manager: Any = None) -> dict[str, list[int]]:
    """The committed ids of mem.orders by day, as the writer (or `manager`) reads them."""
    manager = manager or defs.resources[RESOURCE_KEYS[writer]]
    table = manager.committed_rows(("mem", "orders"), None, ["id"])
    days: dict[str, list[int]] = {}
    for row in [] if table is None else table.to_pylist():
        days.setdefault(row[PARTITION_DATE].isoformat(), []).append(row["id"])
    return {day: sorted(ids) for day, ids in sorted(days.items())}


def _materialize(
    defs: Definitions, instance: DagsterInstance, *assets: Any, **options: Any
) -> ExecuteInProcessResult:
    return materialize(
        [defs.get_assets_def(MEMORY_KEY), *assets],
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
        **options,
    )


def test_rows_a_blocking_check_rejects_are_never_published_on_either_writer(
    memory_kind: None,
    writer_settings: tuple[str, dict[str, Any]],
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
) -> None:
    writer, lake_options = writer_settings
    defs = _memory_defs(tmp_path / "lake", lake_options)
    day, next_day = FIRST_DAY.isoformat(), (FIRST_DAY + datetime.timedelta(days=1)).isoformat()
    assert _materialize(defs, instance, partition_key=day).success
    before = _landed_ids(defs, writer)
    assert before == {day: [0, 1, 2, 3]}

    # the read loses a row the source still counts: row_count rejects the day
    ROWS[2]["changed"] = 2
    LOST["Orders"] = {2}
    short = _materialize(defs, instance, partition_key=day)
    assert not short.success
    assert "nothing was committed, the table is unchanged" in failure_message(short)
    assert "row_count failed on 1 partition(s): 2024-03-01: 3 rows, the source has 4" in (
        failure_message(short)
    )
    assert _landed_ids(defs, writer) == before
    LOST.clear()

    # a row of the next day carries the key of a row the table keeps on the first day: the key
    # audit sees the kept rows through the writer and rejects the day
    ROWS[100] = {"id": 1, "day": FIRST_DAY + datetime.timedelta(days=1), "changed": 1}
    colliding = _materialize(defs, instance, partition_key=next_day)
    assert not colliding.success
    evaluation = next(
        e for e in colliding.get_asset_check_evaluations() if e.check_name == "primary_key"
    )
    assert (evaluation.passed, evaluation.partition) == (False, next_day)
    assert evaluation.metadata["duplicate_keys"].value == 1
    assert _landed_ids(defs, writer) == before
    del ROWS[100]
    assert _materialize(defs, instance, partition_key=next_day).success
    assert _landed_ids(defs, writer) == {day: [0, 1, 2, 3], next_day: [4, 5, 6, 7]}


def test_a_downstream_asset_loads_the_days_it_runs_for_from_either_writer(
    memory_kind: None,
    writer_settings: tuple[str, dict[str, Any]],
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
) -> None:
    writer, lake_options = writer_settings
    defs = _memory_defs(tmp_path / "lake", lake_options)
    orders = defs.get_assets_def(MEMORY_KEY)
    first, last = FIRST_DAY.isoformat(), (FIRST_DAY + datetime.timedelta(days=2)).isoformat()
    assert _materialize(defs, instance, tags={RANGE_START_TAG: first, RANGE_END_TAG: last}).success
    seen: dict[str, list[tuple[int, datetime.date]]] = {}

    @asset(
        key=["report", "orders_seen"],
        partitions_def=orders.partitions_def,
        ins={"orders": AssetIn(key=MEMORY_KEY)},
        io_manager_key="mem_io_manager",
    )
    def orders_seen(context, orders: pa.Table) -> None:  # type: ignore[no-untyped-def]
        seen[context.partition_key] = sorted(
            zip(
                orders.column("id").to_pylist(),
                orders.column(PARTITION_DATE).to_pylist(),
                strict=True,
            )
        )

    middle = (FIRST_DAY + datetime.timedelta(days=1)).isoformat()
    result = materialize(
        [orders.to_source_asset(), orders_seen],
        resources={**defs.resources, "mem_io_manager": mem_io_manager},
        instance=instance,
        partition_key=middle,
    )
    assert result.success
    day = FIRST_DAY + datetime.timedelta(days=1)
    assert seen == {middle: [(4, day), (5, day), (6, day), (7, day)]}, writer


def test_the_new_data_sensors_runs_replace_the_changed_days_on_either_writer(
    memory_kind: None,
    writer_settings: tuple[str, dict[str, Any]],
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
) -> None:
    writer, lake_options = writer_settings
    defs = _memory_defs(tmp_path / "lake", lake_options)
    first, last = FIRST_DAY.isoformat(), (FIRST_DAY + datetime.timedelta(days=2)).isoformat()
    assert _materialize(defs, instance, tags={RANGE_START_TAG: first, RANGE_END_TAG: last}).success
    sensor = defs.get_sensor_def("mem_new_data")

    def tick(cursor: str | None) -> Any:
        with build_sensor_context(
            instance=instance, cursor=cursor, resources=defs.resources, definitions=defs
        ) as context:
            return sensor.evaluate_tick(context)

    marked = tick(None)
    assert not marked.run_requests
    # a row of the third day moves to the second; another arrives on the third
    moved = FIRST_DAY + datetime.timedelta(days=1)
    ROWS[9].update(day=moved, changed=2)
    ROWS[50] = {"id": 50, "day": FIRST_DAY + datetime.timedelta(days=2), "changed": 2}
    result = tick(marked.cursor)
    # the two adjacent days are asked for as one range run
    (request,) = result.run_requests
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == (moved.isoformat(), last)
    run = _materialize(defs, instance, tags=request.tags)
    assert run.success, failure_message(run)
    assert _landed_ids(defs, writer) == {
        first: [0, 1, 2, 3],
        moved.isoformat(): [4, 5, 6, 7, 9],
        last: [8, 10, 11, 50],
    }
    assert not tick(result.cursor).run_requests


def test_iceberg_maintenance_expires_old_snapshots_and_deletes_only_old_unnamed_files(
    memory_kind: None, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    warehouse = tmp_path / "iceberg"
    warehouse.mkdir()
    lake_options = {
        "io_manager": "iceberg",
        "iceberg": {"catalog_uri": f"sqlite:///{warehouse / 'c.db'}", "warehouse": str(warehouse)},
        "maintenance": {"vacuum_retention_hours": 0},
    }
    defs = _memory_defs(tmp_path / "lake", lake_options)
    day = FIRST_DAY.isoformat()
    for changed in (1, 2, 3):  # three snapshots, each replacing the day's file
        ROWS[0]["changed"] = changed
        assert _materialize(defs, instance, partition_key=day).success
    manager = defs.resources["iceberg_io_manager"]
    table = manager.open_table(("mem", "orders"))
    assert len(table.snapshots()) == 3
    (current,) = [task.file.file_path for task in table.scan().plan_files()]
    data = pathlib.Path(current.removeprefix("file://")).parent
    # a killed run's file two hours old, and one a run is writing now
    stale, running = data / "00000-0-killed.parquet", data / "00000-0-running.parquet"
    for orphan in (stale, running):
        orphan.write_bytes(pathlib.Path(current.removeprefix("file://")).read_bytes())
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    # an hour of retention: the young snapshots and the running write's file stay
    report = manager.maintain(("mem", "orders"), datetime.timedelta(hours=1))
    assert (report.snapshots_expired, report.files_removed) == (0, 1)
    assert not stale.exists()
    assert running.exists()

    # no retention, as the job is configured: the replaced snapshots go, and their files
    running.unlink()
    files_before = {path for path in warehouse.rglob("*") if path.is_file()}
    result = defs.resolve_job_def("maintain_tables").execute_in_process(
        instance=instance, resources=defs.resources
    )
    assert result.success
    (observation,) = [
        event.event_specific_data.asset_observation
        for event in result.all_events
        if event.event_type_value == "ASSET_OBSERVATION"
    ]
    metadata = {name: value.value for name, value in observation.metadata.items()}
    assert (metadata["snapshots_expired"], metadata["snapshots_kept"]) == (2, 1)
    files_after = {path for path in warehouse.rglob("*") if path.is_file()}
    assert metadata["files_removed"] == len(files_before - files_after) > 2
    assert pathlib.Path(current.removeprefix("file://")).exists()
    # the table reads as before, in a catalog opened anew
    assert _landed_ids(_memory_defs(tmp_path / "lake", lake_options), "iceberg") == {
        day: [0, 1, 2, 3]
    }


def test_a_project_on_a_rest_catalog_lands_its_days_with_the_token_from_the_environment(
    memory_kind: None,
    rest_server: RestCatalogServer,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ICEBERG_TOKEN", REST_TOKEN)
    lake_options = {
        "io_manager": "iceberg",
        "iceberg": {
            "catalog_uri": rest_server.uri,
            "warehouse": f"file://{tmp_path}/warehouse",
            "token": "${ICEBERG_TOKEN}",
        },
    }
    defs = _memory_defs(tmp_path / "lake", lake_options)
    first, last = FIRST_DAY.isoformat(), (FIRST_DAY + datetime.timedelta(days=1)).isoformat()
    result = _materialize(defs, instance, tags={RANGE_START_TAG: first, RANGE_END_TAG: last})
    assert result.success, failure_message(result)
    reader = IcebergIOManager(
        catalog_uri=rest_server.uri, warehouse=f"file://{tmp_path}/warehouse", token=REST_TOKEN
    )
    assert _landed_ids(defs, "iceberg", reader) == {first: [0, 1, 2, 3], last: [4, 5, 6, 7]}
    assert set(rest_server.authorizations) == {f"Bearer {REST_TOKEN}"}
    # the token is in no event of the run
    logged = [str(event) for event in instance.all_logs(result.run_id)]
    assert logged
    assert not [line for line in logged if REST_TOKEN in line]
    with pytest.raises(ConfigError, match="token must come from the environment"):
        _memory_defs(
            tmp_path / "lake",
            {**lake_options, "iceberg": {**lake_options["iceberg"], "token": REST_TOKEN}},
        )
