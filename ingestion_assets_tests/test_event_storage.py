"""The project's event log storages (SQLite, PostgreSQL): the same records as Dagster's, written in
fewer transactions, readable by Dagster's own classes, and watched live while connections stay
open."""

import logging
import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
import yaml
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    BackfillPolicy,
    DagsterInstance,
    DailyPartitionsDefinition,
    MaterializeResult,
    Output,
    materialize,
    multi_asset,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationPlanned,
)
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.base import EventLogRecord
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetEventTagsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SqliteEventLogStorage as DagsterSqliteEventLogStorage,
)
from dagster._serdes import deserialize_value

from ingestion_assets.checks import materialization_targets
from ingestion_assets.event_storage import held
from ingestion_assets.event_storage import postgres as postgres_storage
from ingestion_assets.event_storage import sqlite as event_storage
from ingestion_assets.event_storage.postgres import PostgresEventLogStorage
from ingestion_assets.event_storage.sqlite import SqliteEventLogStorage
from ingestion_assets_tests.conftest import POSTGRES_URL, require_service

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
PARTITIONS = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-03-01")
KEY = AssetKey(["shop", "orders"])
CHECKS = ("rows_match", "key_unique")
DAYS = 20
RANGE_TAGS = {
    "dagster/asset_partition_range_start": "2024-01-01",
    "dagster/asset_partition_range_end": "2024-01-20",
}


def _orders_asset() -> Any:
    """A day-partitioned asset whose run over a range records one check result per check and
    day, as the project's ingestion assets do."""

    @multi_asset(
        specs=[AssetSpec(KEY)],
        check_specs=[AssetCheckSpec(name, asset=KEY, partitions_def=PARTITIONS) for name in CHECKS],
        partitions_def=PARTITIONS,
        backfill_policy=BackfillPolicy.single_run(),
        name="orders",
    )
    def orders(context: AssetExecutionContext) -> Iterator[Any]:
        for key in context.partition_keys:
            context.add_asset_metadata({"rows": int(key[-2:])}, partition_key=key)
        yield MaterializeResult(asset_key=KEY, metadata={"table": "shop.orders"})
        # each day's result names the materialization it judged, as the project's checks do
        targets = materialization_targets(
            context.instance, KEY, context.partition_keys, context.run_id
        )
        assert len(targets) == DAYS + 1
        for name in CHECKS:
            check_key = AssetCheckKey(KEY, name)
            # as the project's assets do: the check's (empty) output, then a result per day
            yield Output(None, context.assets_def.get_output_name_for_asset_check_key(check_key))
            for key in context.partition_keys:
                yield AssetCheckEvaluation(
                    asset_key=KEY,
                    check_name=name,
                    passed=not (name == "key_unique" and key.endswith("07")),
                    partition=key,
                    target_materialization_data=targets[key],
                )

    return orders


def _home(tmp_path: pathlib.Path, name: str, storage: str) -> pathlib.Path:
    """A DAGSTER_HOME whose event log is Dagster's or the project's, in SQLite files or in a new
    database of the local PostgreSQL (`_postgres_databases` drops it)."""
    home = tmp_path / name
    home.mkdir()
    settings: dict[str, Any] = {"telemetry": {"enabled": False}}
    if storage == "sqlite-project":
        settings["event_log_storage"] = {
            "module": "ingestion_assets.event_storage.sqlite",
            "class": "SqliteEventLogStorage",
            "config": {"base_dir": str(home / "events")},
        }
    elif storage.startswith("postgres"):
        database = _postgres_database(name)
        url = sa.make_url(POSTGRES_URL)
        config = {
            "postgres_db": {
                "hostname": url.host or "127.0.0.1",
                "port": url.port or 5432,
                "username": url.username or "postgres",
                "password": "",
                "db_name": database,
                "scheme": "postgresql+psycopg2",
            }
        }
        settings["run_storage"] = {
            "module": "dagster_postgres.run_storage",
            "class": "PostgresRunStorage",
            "config": config,
        }
        settings["schedule_storage"] = {
            "module": "dagster_postgres.schedule_storage",
            "class": "PostgresScheduleStorage",
            "config": config,
        }
        settings["event_log_storage"] = (
            {
                "module": "ingestion_assets.event_storage.postgres",
                "class": "PostgresEventLogStorage",
                "config": config,
            }
            if storage == "postgres-project"
            else {
                "module": "dagster_postgres.event_log",
                "class": "PostgresEventLogStorage",
                "config": config,
            }
        )
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    return home


_DATABASES: list[str] = []


def _postgres_database(name: str) -> str:
    database = f"ia_events_{name}_{uuid.uuid4().hex[:8]}"
    admin = require_service(POSTGRES_URL, "PostgreSQL")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
    finally:
        admin.dispose()
    _DATABASES.append(database)
    return database


@pytest.fixture
def _postgres_databases() -> Iterator[None]:
    """Drops the databases `_home` made."""
    yield
    admin = require_service(POSTGRES_URL, "PostgreSQL")
    try:
        with admin.connect() as connection:
            while _DATABASES:
                database = _DATABASES.pop()
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _records(instance: DagsterInstance, run_id: str) -> dict[str, Any]:
    """What the UI reads back of a run: its event types, the materialized days, and each check's
    status per day."""
    checks = {}
    for name in CHECKS:
        history = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(KEY, name), limit=1000
        )
        checks[name] = sorted((record.partition, record.status.value) for record in history)
    events = [record.dagster_event.event_type_value for record in instance.all_logs(run_id)]
    # the check rows as stored: which events they point at, and what each result says
    table = AssetCheckExecutionsTable.c
    storage: Any = instance.event_log_storage
    with storage.index_connection() as connection:
        stored = connection.execute(
            sa.select(
                table.check_name,
                table.partition,
                table.execution_status,
                table.evaluation_event_storage_id,
                table.materialization_event_storage_id,
                table.evaluation_event,
            )
        ).all()
    check_rows = []
    for name, partition, status, event_id, materialization_id, serialized in stored:
        evaluation = deserialize_value(serialized, EventLogEntry).get_dagster_event()
        data = evaluation.event_specific_data
        check_rows.append(
            (name, partition, status, event_id, materialization_id, data.passed, data.partition)
        )
    # the asset's row as stored: its last materialization (the last of the batch) and run
    keys = AssetKeyTable.c
    with storage.index_connection() as connection:
        last, last_run_id, last_timestamp = connection.execute(
            sa.select(
                keys.last_materialization, keys.last_run_id, keys.last_materialization_timestamp
            ).where(keys.asset_key == KEY.to_string())
        ).one()
    last_record = deserialize_value(last, EventLogRecord)
    # the asset events' tags as stored (their data versions, which Dagster derives from the
    # run), with the ids of their events
    tag = AssetEventTagsTable.c
    with storage.index_connection() as connection:
        tags = sorted(
            (
                row.id,
                row.event_id,
                row.asset_key,
                row.key,
                row.key == "dagster/data_version" or row.value,
            )
            for row in connection.execute(
                sa.select(tag.id, tag.event_id, tag.asset_key, tag.key, tag.value)
            ).all()
        )
    return {
        "tags": tags,
        "asset_row": (
            last_record.storage_id,
            last_record.event_log_entry.get_dagster_event().partition,
            last_record.event_log_entry.run_id == run_id,
            last_run_id == run_id,
            last_timestamp is not None,
        ),
        "check_rows": sorted(check_rows, key=repr),
        "event_types": sorted(event for event in events if event is not None),
        "materialized": sorted(instance.get_materialized_partitions(KEY)),
        "checks": checks,
        "metadata": sorted(
            (
                record.asset_materialization.partition,
                record.asset_materialization.metadata["rows"].value,
            )
            for record in instance.fetch_materializations(KEY, limit=1000).records
            if record.asset_materialization is not None
        ),
    }


@pytest.mark.usefixtures("_postgres_databases")
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_range_run_records_exactly_what_dagsters_own_storage_records(
    database: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(event_storage.EVENT_BATCH_SIZE_VARIABLE, raising=False)
    seen = {}
    for name in ("dagster", "project"):
        storage = database if name == "dagster" else f"{database}-project"
        instance = DagsterInstance.from_config(str(_home(tmp_path, name, storage)))
        try:
            result = materialize([_orders_asset()], instance=instance, tags=RANGE_TAGS)
            assert result.success
            seen[name] = _records(instance, result.run_id)
        finally:
            instance.dispose()
        # Dagster's storage turns no batching on; the project's does, for its process
        monkeypatch.delenv(event_storage.EVENT_BATCH_SIZE_VARIABLE, raising=False)
    assert seen["project"] == seen["dagster"]
    # on this Dagster the project's storage writes through its prebuilt statements, not Dagster's
    assert event_storage.MIRRORS_DAGSTER
    # and the PostgreSQL storage writes a run's held check results as one insert
    assert postgres_storage.MIRRORS_DAGSTER
    assert type(instance.event_log_storage).__module__.startswith("ingestion_assets.")
    assert len(seen["project"]["materialized"]) == DAYS
    # the data version tag of each day's materialization, pointing at the same event rows
    assert len(seen["project"]["tags"]) == DAYS
    statuses = dict(seen["project"]["checks"]["key_unique"])
    assert statuses["2024-01-07"] == AssetCheckExecutionRecordStatus.FAILED.value
    assert sum(s == AssetCheckExecutionRecordStatus.SUCCEEDED.value for s in statuses.values()) == (
        DAYS - 1
    )


def _check_event(
    run_id: str, event_type: DagsterEventType, message: str, data: Any
) -> EventLogEntry:
    """An event of the orders asset's step, as Dagster stores it."""
    return EventLogEntry(
        error_info=None,
        level=logging.DEBUG,
        user_message="",
        run_id=run_id,
        timestamp=time.time(),
        step_key="orders",
        job_name="orders_job",
        dagster_event=DagsterEvent(
            event_type_value=event_type.value,
            job_name="orders_job",
            message=message,
            event_specific_data=data,
            step_key="orders",
        ),
    )


def _planned_check(run_id: str, partitions: list[str] | None) -> EventLogEntry:
    """A check's planned event, as Dagster writes it when a run is made: one for the run's days
    (None: an unpartitioned check)."""
    subset = (
        None
        if partitions is None
        else PARTITIONS.subset_with_partition_keys(partitions).to_serializable_subset()
    )
    return _check_event(
        run_id,
        DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
        "orders_job intends to execute asset check rows_match on asset shop/orders",
        AssetCheckEvaluationPlanned(
            asset_key=KEY, check_name="rows_match", partitions_subset=subset
        ),
    )


@pytest.mark.usefixtures("_postgres_databases")
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_planned_checks_rows_are_dagsters_rows(database: str, tmp_path: pathlib.Path) -> None:
    days = PARTITIONS.get_partition_keys()[:DAYS]
    events = [_planned_check("run-a", days), _planned_check("run-b", None)]
    table = AssetCheckExecutionsTable
    stored = {}
    for name in ("dagster", "project"):
        storage = database if name == "dagster" else f"{database}-project"
        instance = DagsterInstance.from_config(str(_home(tmp_path, name, storage)))
        try:
            for event in events:
                instance.event_log_storage.store_event(event)
            event_storage_: Any = instance.event_log_storage
            with event_storage_.index_connection() as connection:
                rows = connection.execute(
                    sa.select(*(c for c in table.c if c.name != "create_timestamp")).order_by(
                        table.c.id
                    )
                ).all()
            stored[name] = [tuple(row) for row in rows]
        finally:
            instance.dispose()
    assert stored["project"] == stored["dagster"]
    assert len(stored["project"]) == DAYS + 1
    partitions = [row[table.c.keys().index("partition")] for row in stored["project"]]
    assert partitions == [*days, None]


class _CountingStorage(SqliteEventLogStorage):
    """The project's storage, counting the batches Dagster hands it."""

    batches: ClassVar[list[int]] = []

    def store_event_batch(self, events: Any) -> None:
        type(self).batches.append(len(events))
        super().store_event_batch(events)


def test_the_planned_and_materialized_events_of_a_range_arrive_as_batches(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(event_storage.EVENT_BATCH_SIZE_VARIABLE, raising=False)
    _CountingStorage.batches = []
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nevent_log_storage:\n"
        f"  module: {__name__}\n  class: _CountingStorage\n"
        f"  config:\n    base_dir: {tmp_path / 'events'}\n",
        encoding="utf-8",
    )
    instance = DagsterInstance.from_config(str(home))
    # the storage turns Dagster's batching on unless the environment already says otherwise
    assert os.environ[event_storage.EVENT_BATCH_SIZE_VARIABLE] == "1000"
    try:
        result = materialize([_orders_asset()], instance=instance, tags=RANGE_TAGS)
    finally:
        instance.dispose()
    assert result.success
    # one batch of planned events (a day each, and the two checks' ranges), one of materializations
    assert _CountingStorage.batches == [DAYS + len(CHECKS), DAYS]
    # what a batch wrote is there for Dagster's own class, event by event
    reread = DagsterSqliteEventLogStorage(str(tmp_path / "events"))
    try:
        types = Counter(
            entry.dagster_event.event_type_value
            for entry in reread.get_logs_for_run(result.run_id)
            if entry.dagster_event is not None
        )
    finally:
        reread.dispose()
    assert types["ASSET_MATERIALIZATION_PLANNED"] == DAYS
    assert types["ASSET_MATERIALIZATION"] == DAYS
    assert types["ASSET_CHECK_EVALUATION"] == DAYS * len(CHECKS)


def _entry(run_id: str, message: str) -> EventLogEntry:
    return EventLogEntry(
        error_info=None,
        level=logging.INFO,
        user_message=message,
        run_id=run_id,
        timestamp=time.time(),
        step_key=None,
        job_name="orders_job",
        dagster_event=None,
    )


def test_a_live_watcher_sees_events_a_storage_with_open_connections_wrote(
    tmp_path: pathlib.Path,
) -> None:
    base = str(tmp_path / "events")
    writer = SqliteEventLogStorage(base)
    watcher = SqliteEventLogStorage(base)
    run_id = "3f6b1d2e-0000-4000-8000-000000000001"
    received: list[str] = []

    def callback(entry: EventLogEntry, _cursor: str) -> None:
        received.append(entry.user_message)

    try:
        writer.store_event(_entry(run_id, "first"))
        watcher.watch(run_id, None, callback)
        for index in range(3):
            writer.store_event(_entry(run_id, f"line {index}"))
        deadline = time.monotonic() + 20
        while len(received) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the writer's connection is still open: the run's file itself has not changed
        assert received == ["first", "line 0", "line 1", "line 2"]
        # and Dagster's own class reads the same run from the write-ahead log
        dagster_reader = DagsterSqliteEventLogStorage(base)
        try:
            messages = [entry.user_message for entry in dagster_reader.get_logs_for_run(run_id)]
        finally:
            dagster_reader.dispose()
        assert messages == ["first", "line 0", "line 1", "line 2"]
    finally:
        watcher.end_watch(run_id, callback)
        watcher.dispose()
        writer.dispose()


def test_without_base_dir_it_keeps_dagsters_place_under_dagster_home(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(
        REPOSITORY / "ingestion_assets" / "demo" / "dagster.yaml", home / "dagster.yaml"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = DagsterInstance.get()
    try:
        storage = instance.event_log_storage
        assert isinstance(storage, SqliteEventLogStorage)
        run_id = "3f6b1d2e-0000-4000-8000-000000000002"
        storage.store_event(_entry(run_id, "kept"))
        assert (home / "history" / "runs" / f"{run_id}.db").exists()
    finally:
        instance.dispose()
    monkeypatch.delenv("DAGSTER_HOME")
    with pytest.raises(Exception, match=r"set `base_dir`.*DAGSTER_HOME"):
        SqliteEventLogStorage.from_config_value(None, {})


def test_two_storages_writing_one_run_keep_every_event_in_order(tmp_path: pathlib.Path) -> None:
    """A kept connection sees what another process's storage committed in between."""
    storage = SqliteEventLogStorage(str(tmp_path / "events"))
    run_id = "3f6b1d2e-0000-4000-8000-000000000003"
    try:
        storage.store_event(_entry(run_id, "before"))
        other = SqliteEventLogStorage(str(tmp_path / "events"))
        other.store_event(_entry(run_id, "from another writer"))
        other.dispose()
        storage.store_event(_entry(run_id, "after"))
        messages = [entry.user_message for entry in storage.get_logs_for_run(run_id)]
    finally:
        storage.dispose()
    assert messages == ["before", "from another writer", "after"]


def test_the_asset_keys_table_is_reflected_once_not_per_event(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster's SQLite storage asks the database for the asset_keys table's columns at every
    asset event; the project's asks until the column is there, then remembers it (dagster-postgres
    does not ask)."""
    monkeypatch.delenv(event_storage.EVENT_BATCH_SIZE_VARIABLE, raising=False)
    asked: list[str] = []
    dagsters = SqlEventLogStorage._has_asset_key_col_on_connection

    def counted(self: Any, conn: Any, column_name: str) -> bool:
        asked.append(column_name)
        return dagsters(self, conn, column_name)

    monkeypatch.setattr(SqlEventLogStorage, "_has_asset_key_col_on_connection", counted)
    instance = DagsterInstance.from_config(str(_home(tmp_path, "once", "sqlite-project")))
    try:
        result = materialize([_orders_asset()], instance=instance, tags=RANGE_TAGS)
        assert result.success
        records = _records(instance, result.run_id)
    finally:
        instance.dispose()
    assert len(records["materialized"]) == DAYS
    # each column asked about once (the reads ask about others than the writes)
    assert Counter(asked)["last_materialization_timestamp"] == 1, Counter(asked)
    assert set(Counter(asked).values()) == {1}, Counter(asked)


def _check_result(run_id: str, day: str, passed: bool = True) -> EventLogEntry:
    """A check's result on one day, as the asset's step reports it."""
    return _check_event(
        run_id,
        DagsterEventType.ASSET_CHECK_EVALUATION,
        f"rows_match on {day}",
        AssetCheckEvaluation(asset_key=KEY, check_name="rows_match", passed=passed, partition=day),
    )


def _statuses(storage: Any) -> dict[str, str]:
    """Each day's status of the check, as the UI reads it."""
    history = storage.get_asset_check_execution_history(AssetCheckKey(KEY, "rows_match"), limit=100)
    return {record.partition: record.status.value for record in history}


def _storages(database: str, tmp_path: pathlib.Path) -> Callable[[], Any]:
    """Makes a new storage of the project's on one place: SQLite files, or a new database of
    the local PostgreSQL (`_postgres_databases` drops it)."""
    if database == "sqlite":
        base_dir = str(tmp_path / "events")
        return lambda: SqliteEventLogStorage(base_dir)
    url = sa.make_url(POSTGRES_URL).set(database=_postgres_database("held"))
    return lambda: PostgresEventLogStorage(url.render_as_string(hide_password=False))


def _stored_results(new_storage: Callable[[], Any]) -> int:
    """The check results in the index's event log, counted by a storage of its own."""
    reader = new_storage()
    try:
        with reader.index_connection() as connection:
            table = SqlEventLogStorageTable.c
            return int(
                connection.execute(
                    sa.select(sa.func.count()).where(
                        table.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION.value
                    )
                ).scalar_one()
            )
    finally:
        reader.dispose()


def _results_of_run(new_storage: Callable[[], Any], run_id: str) -> int:
    """The check results among the run's events (in SQLite, its own database file), counted by
    a storage of its own."""
    reader = new_storage()
    try:
        return sum(
            entry.dagster_event is not None
            and entry.dagster_event.event_type_value
            == DagsterEventType.ASSET_CHECK_EVALUATION.value
            for entry in reader.get_logs_for_run(run_id)
        )
    finally:
        reader.dispose()


SUCCEEDED = AssetCheckExecutionRecordStatus.SUCCEEDED.value


@pytest.mark.usefixtures("_postgres_databases")
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_held_back_check_results_are_read_by_their_own_storage_and_written_soon(
    database: str, tmp_path: pathlib.Path
) -> None:
    """A check result is written with the ones that follow it, yet its own storage reads it at
    once, and another process's storage sees it within the hold, with nothing else written."""
    new_storage = _storages(database, tmp_path)
    run_id = "3f6b1d2e-0000-4000-8000-000000000004"
    days = PARTITIONS.get_partition_keys()[:3]
    storage, other = new_storage(), new_storage()
    try:
        storage.store_event(_planned_check(run_id, days))
        for day in days:
            storage.store_event(_check_result(run_id, day, passed=day != days[1]))
        # the writer's next read writes what it holds first
        assert _statuses(storage) == {
            days[0]: SUCCEEDED,
            days[1]: AssetCheckExecutionRecordStatus.FAILED.value,
            days[2]: SUCCEEDED,
        }
        storage.store_event(_check_result(run_id, days[2]))
        deadline = time.monotonic() + 30
        while _stored_results(new_storage) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        # another reader: the latest result of each day, written by the hold's timer alone
        assert _stored_results(new_storage) == 4
        assert _statuses(other)[days[2]] == SUCCEEDED
    finally:
        other.dispose()
        storage.dispose()
    assert _results_of_run(new_storage, run_id) == 4


@pytest.mark.usefixtures("_postgres_databases")
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_held_back_check_results_are_written_at_the_batch_size_at_dispose_and_once_after_a_fork(
    database: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(held, "CHECK_RESULT_HOLD_SECONDS", 600.0)
    monkeypatch.setattr(held, "CHECK_RESULT_BATCH", 3)
    new_storage = _storages(database, tmp_path)
    run_id = "3f6b1d2e-0000-4000-8000-000000000005"
    days = PARTITIONS.get_partition_keys()[:5]
    storage = new_storage()
    try:
        storage.store_event(_planned_check(run_id, days[:4]))
        for day in days[:4]:
            storage.store_event(_check_result(run_id, day))
        # three made a batch, written; the fourth is held (the timer would take ten minutes)
        assert _stored_results(new_storage) == 3
        child = os.fork()
        if child == 0:  # pragma: no cover - the child ends here
            # a forked child holds its parent's list: it writes its own result, not the parent's
            code = 0
            try:
                storage.store_event(_check_result(run_id, days[4]))
                storage.write_held_check_results()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _stored_results(new_storage) == 4
    finally:
        storage.dispose()
    assert _stored_results(new_storage) == 5
    reader = new_storage()
    try:
        assert set(_statuses(reader)) == set(days)
    finally:
        reader.dispose()
    assert _results_of_run(new_storage, run_id) == 5


@pytest.mark.usefixtures("_postgres_databases")
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_process_that_ends_without_disposing_still_writes_its_check_results(
    database: str, tmp_path: pathlib.Path
) -> None:
    new_storage = _storages(database, tmp_path)
    # the storage made in the child process: the same place as `new_storage`'s
    place = new_storage()
    try:
        made = (
            f"SqliteEventLogStorage({place._base_dir!r})"
            if database == "sqlite"
            else f"PostgresEventLogStorage({place.postgres_url!r})"
        )
    finally:
        place.dispose()
    script = f"""
import sys
sys.path.insert(0, {str(REPOSITORY)!r})
from ingestion_assets.event_storage import held
from ingestion_assets.event_storage.postgres import PostgresEventLogStorage
from ingestion_assets.event_storage.sqlite import SqliteEventLogStorage
from ingestion_assets_tests.test_event_storage import _check_result, _planned_check
held.CHECK_RESULT_HOLD_SECONDS = 600.0
storage = {made}
storage.store_event(_planned_check("run-c", ["2024-01-01"]))
storage.store_event(_check_result("run-c", "2024-01-01"))
"""
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert finished.returncode == 0, finished.stderr
    assert _stored_results(new_storage) == 1
