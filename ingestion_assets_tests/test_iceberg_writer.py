"""The Iceberg IO manager behind the writer contract: exact types, one snapshot per window,
aborts and failed streams leave the previous snapshot, schema evolve and freeze."""

from __future__ import annotations

import datetime
import decimal
import random
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.transforms import MonthTransform

from ingestion_assets.errors import IngestionError
from ingestion_assets.io_managers.contract import WriteRequest
from ingestion_assets.io_managers.iceberg import IcebergIOManager
from ingestion_assets.lake.rows import PARTITION_DATE
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets_tests.conftest import POSTGRES_URL, require_service
from ingestion_assets_tests.iceberg_rest import REST_TOKEN, RestCatalogServer, rest_server

ZONE = ZoneInfo("UTC")
__all__ = ["rest_server"]  # the fixture, used by name


class _Log:
    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        pass


def _window(first: str, days: int = 1) -> PartitionWindow:
    start = datetime.datetime.fromisoformat(first).replace(tzinfo=ZONE)
    return PartitionWindow(start, start + datetime.timedelta(days=days))


def _request(window: PartitionWindow, policy: str = "evolve") -> WriteRequest:
    return WriteRequest(
        asset_path=("shop", "orders"),
        window=window,
        run_id="run-1",
        partition_column="created_at",
        log=_Log(),
        schema_policy=policy,
    )


def _rows(day: str, count: int, start: int = 0, **extra: Any) -> pa.Table:
    base = datetime.datetime.fromisoformat(day)
    columns: dict[str, Any] = {
        "id": pa.array(range(start, start + count), pa.int64()),
        "amount": pa.array(
            [decimal.Decimal(f"{i}12345678901234.1234") for i in range(count)],
            pa.decimal128(19, 4),
        ),
        "created_at": pa.array(
            [base.replace(tzinfo=ZONE) + datetime.timedelta(minutes=i) for i in range(count)],
            pa.timestamp("us", "UTC"),
        ),
        "local_at": pa.array(
            [base + datetime.timedelta(seconds=i, microseconds=7) for i in range(count)],
            pa.timestamp("us"),
        ),
        "note": pa.array([None if i % 2 else f"n{i}" for i in range(count)], pa.string()),
    }
    columns.update(extra)
    return pa.table(columns)


@pytest.fixture
def sqlite_manager(tmp_path: Any) -> IcebergIOManager:
    return IcebergIOManager(
        catalog_uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse"
    )


@pytest.fixture
def rest_manager(rest_server: RestCatalogServer, tmp_path: Any) -> IcebergIOManager:
    return IcebergIOManager(
        catalog_uri=rest_server.uri, warehouse=f"file://{tmp_path}/warehouse", token=REST_TOKEN
    )


@pytest.fixture
def postgres_manager(tmp_path: Any) -> Iterator[IcebergIOManager]:
    """A manager whose catalog is a new database on the local PostgreSQL (dropped after)."""
    admin = require_service(POSTGRES_URL, "PostgreSQL")
    name = f"iceberg_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield IcebergIOManager(
            catalog_uri=sa.make_url(POSTGRES_URL).set(database=name).render_as_string(),
            warehouse=f"file://{tmp_path}/warehouse",
        )
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _write(
    manager: IcebergIOManager, window: PartitionWindow, data: Any, policy: str = "evolve"
) -> dict[str, Any]:
    staged = manager.stage(_request(window, policy), data)
    return staged.commit()


def _snapshots(manager: IcebergIOManager) -> list[int]:
    table = manager.open_table(("shop", "orders"))
    assert table is not None
    return [snapshot.snapshot_id for snapshot in table.snapshots()]


@pytest.mark.parametrize("catalog", ["sqlite", "postgres", "rest"])
def test_rows_round_trip_exactly_and_a_second_reader_sees_them(
    catalog: str, request: pytest.FixtureRequest
) -> None:
    manager: IcebergIOManager = request.getfixturevalue(f"{catalog}_manager")
    written = _rows("2024-03-01", 5)
    metadata = _write(manager, _window("2024-03-01"), written)
    assert metadata["rows_written"] == 5
    assert metadata["iceberg_added_records"] == 5
    assert metadata["dagster/table_name"] == "ingest.shop__orders"
    read = manager.committed_rows(
        ("shop", "orders"),
        _window("2024-03-01"),
        ["id", "amount", "created_at", "local_at", "note"],
    )
    assert read is not None
    read = read.sort_by("id")
    for name in written.column_names:
        assert read.column(name).to_pylist() == written.column(name).to_pylist(), name
    assert read.schema.field("amount").type == pa.decimal128(19, 4)
    assert read.schema.field("created_at").type == pa.timestamp("us", "UTC")
    assert read.schema.field("local_at").type == pa.timestamp("us")
    assert read.column("amount")[0].as_py() == decimal.Decimal("012345678901234.1234")
    assert read.column(PARTITION_DATE).to_pylist() == [datetime.date(2024, 3, 1)] * 5
    # a second reader: a fresh catalog over the same snapshot
    fresh = IcebergIOManager(
        catalog_uri=manager.catalog_uri, warehouse=manager.warehouse, token=manager.token
    )
    table = fresh.open_table(("shop", "orders"))
    assert table is not None
    again = table.scan().to_arrow().sort_by("id")
    assert again.select(written.column_names).to_pylist() == written.to_pylist()


@pytest.mark.parametrize("catalog", ["sqlite", "rest"])
def test_rematerializing_a_day_replaces_exactly_that_day_in_one_catalog_commit(
    catalog: str, request: pytest.FixtureRequest
) -> None:
    manager: IcebergIOManager = request.getfixturevalue(f"{catalog}_manager")
    _write(
        manager,
        _window("2024-03-01", 3),
        pa.concat_tables(
            [_rows("2024-03-01", 3), _rows("2024-03-02", 4, 10), _rows("2024-03-03", 5, 20)]
        ),
    )
    # the 3-day window: one append snapshot
    assert len(_snapshots(manager)) == 1
    before = _snapshots(manager)
    table = manager.open_table(("shop", "orders"))
    assert table is not None
    commits = len(table.metadata.metadata_log)
    metadata = _write(manager, _window("2024-03-02"), _rows("2024-03-02", 2, 100))
    after = _snapshots(manager)
    new = [s for s in after if s not in before]
    # one overwrite snapshot: the day's file out, the new one in
    assert len(new) == 1
    assert metadata["iceberg_snapshot_id"] == new[0]
    assert metadata["iceberg_operation"] == "overwrite"
    assert metadata["iceberg_deleted_records"] == 4
    assert metadata["iceberg_added_records"] == 2
    table = manager.open_table(("shop", "orders"))
    assert table is not None
    assert len(table.metadata.metadata_log) == commits + 1
    rows = manager.committed_rows(("shop", "orders"), None, ["id"])
    assert rows is not None
    assert sorted(rows.column("id").to_pylist()) == [0, 1, 2, 20, 21, 22, 23, 24, 100, 101]


def _data_files(manager: IcebergIOManager) -> set[str]:
    table = manager.open_table(("shop", "orders"))
    assert table is not None
    return {task.file.file_path for task in table.scan().plan_files()}


def _stored_files(tmp_path: Any) -> set[str]:
    return {f"file://{path}" for path in (tmp_path / "warehouse").rglob("*.parquet")}


def test_under_month_partitioning_a_day_is_replaced_and_the_months_other_days_kept(
    tmp_path: Any,
) -> None:
    manager = IcebergIOManager(
        catalog_uri=f"sqlite:///{tmp_path}/catalog.db",
        warehouse=f"file://{tmp_path}/warehouse",
        partition_by="month",
        rows_per_file=3,
    )
    days = [_rows("2024-03-01", 3), _rows("2024-03-02", 4, 10), _rows("2024-03-03", 5, 20)]
    _write(manager, _window("2024-03-01", 3), pa.concat_tables(days))
    # a chunk goes out once 3 rows are held: the batches of 3, 4 and 5 rows are 3 files of March
    assert len(_data_files(manager)) == 3
    before = _snapshots(manager)
    metadata = _write(manager, _window("2024-03-02"), _rows("2024-03-02", 2, 100))
    assert len(_snapshots(manager)) == len(before) + 1
    assert metadata["dagster/row_count"] == 10
    rows = manager.committed_rows(("shop", "orders"), None, ["id"])
    assert rows is not None
    assert sorted(rows.column("id").to_pylist()) == [0, 1, 2, 20, 21, 22, 23, 24, 100, 101]
    table = manager.open_table(("shop", "orders"))
    assert table is not None
    assert [f.transform for f in table.spec().fields] == [MonthTransform()]


def test_kept_rows_are_the_tables_rows_outside_the_window_and_an_abort_deletes_its_files(
    tmp_path: Any, sqlite_manager: IcebergIOManager
) -> None:
    _write(
        sqlite_manager,
        _window("2024-03-01", 2),
        pa.concat_tables([_rows("2024-03-01", 3), _rows("2024-03-02", 4, 10)]),
    )
    committed = _data_files(sqlite_manager)
    staged = sqlite_manager.stage(_request(_window("2024-03-02")), _rows("2024-03-02", 2, 1))
    kept = staged.kept_rows(["id", "note"])
    assert sorted(kept.column("id").to_pylist()) == [0, 1, 2]
    assert kept.schema.names == ["id", "note"]
    among = staged.kept_rows(["id"], pa.array([1, 2, 11], pa.int64()))
    assert sorted(among.column("id").to_pylist()) == [1, 2]
    # staged, not committed: the files exist and no snapshot names them
    assert _stored_files(tmp_path) - committed
    staged.abort()
    assert _stored_files(tmp_path) == committed
    assert _data_files(sqlite_manager) == committed


def _failing(table: pa.Table) -> Iterator[pa.RecordBatch]:
    yield from table.to_batches(max_chunksize=2)[:1]
    raise RuntimeError("source died")


def test_a_stream_failing_midway_or_an_abort_leaves_the_previous_snapshot(
    sqlite_manager: IcebergIOManager,
) -> None:
    _write(sqlite_manager, _window("2024-03-01"), _rows("2024-03-01", 3))
    before = _snapshots(sqlite_manager)
    rows = _rows("2024-03-01", 6, 50)
    reader = pa.RecordBatchReader.from_batches(rows.schema, _failing(rows))
    with pytest.raises(RuntimeError, match="source died"):
        sqlite_manager.stage(_request(_window("2024-03-01")), reader)
    staged = sqlite_manager.stage(_request(_window("2024-03-01")), _rows("2024-03-01", 4, 70))
    staged.abort()
    assert _snapshots(sqlite_manager) == before
    kept = sqlite_manager.committed_rows(("shop", "orders"), _window("2024-03-01"), ["id"])
    assert kept is not None
    assert sorted(kept.column("id").to_pylist()) == [0, 1, 2]


def test_evolve_adds_a_column_and_freeze_refuses_naming_the_table(
    sqlite_manager: IcebergIOManager,
) -> None:
    _write(sqlite_manager, _window("2024-03-01"), _rows("2024-03-01", 2))
    wider = _rows("2024-03-02", 2, 10, channel=pa.array(["web", "shop"]))
    with pytest.raises(
        IngestionError, match=r"ingest\.shop__orders.*channel.*schema_policy: evolve"
    ):
        sqlite_manager.stage(_request(_window("2024-03-02"), "freeze"), wider)
    _write(sqlite_manager, _window("2024-03-02"), wider)
    schema = sqlite_manager.committed_schema(("shop", "orders"))
    assert schema is not None
    assert "channel" in schema.names
    rows = sqlite_manager.committed_rows(("shop", "orders"), None, ["id", "channel"])
    assert rows is not None
    assert sorted(
        zip(rows.column("id").to_pylist(), rows.column("channel").to_pylist(), strict=True),
        key=lambda r: r[0],
    ) == [(0, None), (1, None), (10, "web"), (11, "shop")]


def test_expire_snapshots_keeps_the_current_one(sqlite_manager: IcebergIOManager) -> None:
    _write(sqlite_manager, _window("2024-03-01"), _rows("2024-03-01", 2))
    _write(sqlite_manager, _window("2024-03-01"), _rows("2024-03-01", 3))
    expired = sqlite_manager.expire_snapshots(
        ("shop", "orders"), datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    )
    assert expired >= 1
    assert len(_snapshots(sqlite_manager)) == 1
    rows = sqlite_manager.committed_rows(("shop", "orders"), None, ["id"])
    assert rows is not None
    assert rows.num_rows == 3


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_a_run_that_loses_the_race_to_create_the_namespace_opens_the_catalog_again(
    catalog: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # two runs on a new catalog both find the namespace missing and both insert it: the loser's
    # insert breaks the catalog's unique key. Here the first check answers "missing" once while
    # the namespace is there, so the insert fails as the loser's does
    manager: IcebergIOManager = request.getfixturevalue(f"{catalog}_manager")
    manager.catalog()
    checks: list[bool] = []
    answer = SqlCatalog.namespace_exists

    def lost_race(self: SqlCatalog, namespace: Any) -> bool:
        checks.append(answer(self, namespace))
        return len(checks) > 1 and checks[-1]

    monkeypatch.setattr(SqlCatalog, "namespace_exists", lost_race)
    _write(manager, _window("2024-03-01"), _rows("2024-03-01", 2))
    assert checks[:2] == [True, True]
    rows = manager.committed_rows(("shop", "orders"), None, ["id"])
    assert rows is not None
    assert rows.num_rows == 2


@pytest.mark.parametrize(("partition_by", "files"), [("day", 40), ("month", 2)])
def test_rows_in_any_order_land_as_one_file_per_partition_holding_only_its_rows(
    tmp_path: Any, partition_by: str, files: int
) -> None:
    manager = IcebergIOManager(
        catalog_uri=f"sqlite:///{tmp_path}/catalog.db",
        warehouse=f"file://{tmp_path}/warehouse",
        partition_by=partition_by,
    )
    first = datetime.date(2024, 3, 1)
    rows = pa.concat_tables(
        [_rows((first + datetime.timedelta(days=d)).isoformat(), 3, 10 * d) for d in range(40)]
    )
    order = random.Random(7).sample(range(rows.num_rows), rows.num_rows)
    metadata = _write(manager, _window(first.isoformat(), 40), rows.take(pa.array(order)))
    assert metadata["data_files_written"] == files
    table = manager.open_table(("shop", "orders"))
    assert table is not None
    tasks = list(table.scan().plan_files())
    assert len(tasks) == files
    epoch = datetime.date(1970, 1, 1)
    for task in tasks:
        days = set(pq.read_table(task.file.file_path.removeprefix("file://"))[PARTITION_DATE])
        (value,) = task.file.partition
        if partition_by == "day":
            assert [(day.as_py() - epoch).days for day in days] == [value]
        else:
            months = {(day.as_py().year - 1970) * 12 + day.as_py().month - 1 for day in days}
            assert months == {value}
    landed = manager.committed_rows(("shop", "orders"), None, ["id", "amount"])
    assert landed is not None
    landed = landed.sort_by("id")
    assert landed.select(["id", "amount"]).equals(rows.select(["id", "amount"]).sort_by("id"))
    assert landed[PARTITION_DATE].to_pylist() == [
        first + datetime.timedelta(days=row_id // 10) for row_id in landed["id"].to_pylist()
    ]


@pytest.mark.parametrize("catalog", ["sqlite", "rest"])
def test_a_commit_planned_on_an_old_snapshot_is_planned_again_and_keeps_the_other_runs_rows(
    catalog: str, request: pytest.FixtureRequest
) -> None:
    manager: IcebergIOManager = request.getfixturevalue(f"{catalog}_manager")
    _write(
        manager,
        _window("2024-03-01", 2),
        pa.concat_tables([_rows("2024-03-01", 2), _rows("2024-03-02", 2, 10)]),
    )
    # three runs staged on the same snapshot: two of the first day, one of the second
    first_a = manager.stage(_request(_window("2024-03-01")), _rows("2024-03-01", 3, 100))
    first_b = manager.stage(_request(_window("2024-03-01")), _rows("2024-03-01", 4, 200))
    second = manager.stage(_request(_window("2024-03-02")), _rows("2024-03-02", 1, 300))
    for staged in (first_a, second, first_b):  # each later commit finds a newer snapshot
        staged.commit()
    rows = manager.committed_rows(("shop", "orders"), None, ["id"])
    assert rows is not None
    by_day: dict[str, list[int]] = {}
    for row in rows.to_pylist():
        by_day.setdefault(row[PARTITION_DATE].isoformat(), []).append(row["id"])
    # the first day holds the last run's rows alone; the second day's run was kept
    assert {day: sorted(ids) for day, ids in by_day.items()} == {
        "2024-03-01": [200, 201, 202, 203],
        "2024-03-02": [300],
    }
    assert len(_snapshots(manager)) == 4


def test_the_rest_catalog_gets_the_token_and_a_wrong_one_fails_naming_the_catalog(
    rest_server: RestCatalogServer, rest_manager: IcebergIOManager, tmp_path: Any
) -> None:
    _write(rest_manager, _window("2024-03-01"), _rows("2024-03-01", 2))
    assert set(rest_server.authorizations) == {f"Bearer {REST_TOKEN}"}
    # the protocol's own endpoints: a staged create and its commit, then loads and commits
    assert ("POST", "/v1/namespaces/ingest/tables") in rest_server.requests
    assert ("POST", "/v1/namespaces/ingest/tables/shop__orders") in rest_server.requests
    wrong = IcebergIOManager(
        catalog_uri=rest_server.uri,
        warehouse=f"file://{tmp_path}/warehouse",
        token="not-the-token-77",
    )
    with pytest.raises(IngestionError) as raised:
        wrong.open_table(("shop", "orders"))
    message = str(raised.value)
    assert message.startswith(f"Iceberg REST catalog {rest_server.uri}: cannot open it")
    assert "lake.iceberg.token" in message
    assert "not-the-token-77" not in message
    assert "not-the-token-77" not in repr(wrong)


def test_an_unreachable_rest_catalog_fails_naming_it_without_its_credentials(
    tmp_path: Any,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manager = IcebergIOManager(
        catalog_uri=f"http://writer:s3cr3t-pw@127.0.0.1:{port}",
        warehouse=f"file://{tmp_path}/warehouse",
        token="tok-9a8b7c",
    )
    with pytest.raises(IngestionError) as raised:
        manager.open_table(("shop", "orders"))
    message = str(raised.value)
    assert message.startswith(f"Iceberg REST catalog http://127.0.0.1:{port}: cannot open it")
    assert "s3cr3t-pw" not in message
    assert "tok-9a8b7c" not in message
