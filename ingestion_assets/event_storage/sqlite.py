"""The SQLite event log storage the project's instances use: Dagster's own, minus its per-event cost.

Dagster's `SqliteEventLogStorage` (what `dagster dev` and the CLI get by default) makes a new
SQLAlchemy engine, opens a connection, commits with a full fsync and closes it for every statement
of every event, and it has no batched write: `DAGSTER_EVENT_BATCH_SIZE` falls back to one event
at a time. A backfill of 1,096 days records about 5,500 events (planned, materialized, a check
result per check and day), each touching two or three SQLite files; profiled on 2 cores that was
28 ms an event, 152 of a 160 s run: commits 42 s, closes (each a WAL checkpoint) 35 s, SQL
compiled again for every new engine 24 s.

This subclass changes how it connects, never what it writes:
- one engine and one open connection per database file, kept (SQLAlchemy's compiled-statement
  cache survives, and closing no longer checkpoints the write-ahead log into the database file
  after every event);
- the UI's live run log, which waits for the run's database file to change, also wakes when its
  write-ahead log (`<run>.db-wal`) changes: with the connection kept, that is where writes land;
- each event's writes to the index database are one transaction (Dagster commits a check result
  there twice);
- `PRAGMA synchronous=NORMAL`, SQLite's recommended setting in WAL mode (which Dagster already
  uses): a commit no longer waits for the disk; a crash of the process loses nothing, a power
  loss can lose the last commits, never the database;
- `store_event_batch` writes a batch of events with Dagster's own per-event logic inside one
  transaction per database, and the storage turns Dagster's batching on
  (`DAGSTER_EVENT_BATCH_SIZE`, unless the environment sets it), so the planned and materialized
  events of a range are a few transactions instead of thousands;
- an event's row is inserted by one prebuilt statement executed with the row's values, and a
  check result completes its planned row with the event serialized once (`rows.py`, shared with
  the PostgreSQL storage). Dagster builds a new statement for every event, with the values in
  it, and serializes a check result twice: that building was half the cost of recording a check
  result, and check results are most of a backfill's events (19,140 of about 32,000 in a
  four-table, 1,595-day backfill); a batch's rows (of a range's planned events, of its
  materializations, of the held check results) are one `executemany` per file, the index's
  returning their ids in order (200,000 rows over 1,096 days: 4.84 -> 4.47 s);
- a planned check's rows, one per partition of the run, are one `executemany` of a prebuilt
  insert with the event serialized once (`rows.py`). Dagster compiles a new insert of all of them
  for each check, serializing the event again for every row: 75% of making a range run, before
  it starts;
- in a batch, a run of events of one type for one asset updates the asset's `asset_keys` row
  once, with the last of them (`sets_same_asset_row`): Dagster upserted it for every event;
- a run's check results, which Dagster hands over one at a time (it batches only planned and
  materialized events), are held back and written together, one transaction per database file
  (`held.py`: before anything else is read or written through this storage, within 0.5 s, at
  500 of them, at `dispose` and at exit). Written one by one, each took the write lock of two
  files, and parallel steps waited on each other's locks (a four-table, 1,595-day backfill:
  57.7-64.0 s, then 39.5-42.5 s).
The rows are Dagster's. The Dagster methods mirrored (this storage's `store_event`,
`_store_asset_event`, `_get_asset_entry_values`, and `rows.py`'s) are fingerprinted: on a Dagster
whose code differs from the one mirrored, the storage uses Dagster's methods as they are.

Configured in an instance's `dagster.yaml` (`deploy/dagster.yaml`, the demo's):

    event_log_storage:
      module: ingestion_assets.event_storage.sqlite
      class: SqliteEventLogStorage
      config:
        base_dir: <folder>     # optional: $DAGSTER_HOME/history/runs, Dagster's own place
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from dagster import Field, StringSource
from dagster._config.config_schema import UserConfigSchema
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.event_api import EventHandlerFn
from dagster._core.events import (
    ASSET_CHECK_EVENTS,
    ASSET_EVENTS,
    EVENT_TYPE_TO_PIPELINE_RUN_STATUS,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SqliteEventLogStorage as DagsterSqliteEventLogStorage,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool
from watchdog.events import FileSystemEvent
from watchdog.observers import Observer

from ingestion_assets.event_storage.held import HeldCheckResults
from ingestion_assets.event_storage.rows import (
    CHECK_WRITES_MIRROR_DAGSTER,
    INSERT_EVENT,
    INSERT_EVENTS_RETURNING_IDS,
    CheckResultWrites,
    mirrors,
    write_index_rows,
)

INDEX_SHARD = "index"
# the events Dagster's `store_event` copies into the index database
_INDEXED_TYPES = frozenset(
    ASSET_EVENTS | ASSET_CHECK_EVENTS | set(EVENT_TYPE_TO_PIPELINE_RUN_STATUS)
)
EVENT_BATCH_SIZE_VARIABLE = "DAGSTER_EVENT_BATCH_SIZE"
# Dagster flushes a batch at this size or at its end; a range's events come in one batch each
DEFAULT_EVENT_BATCH_SIZE = "1000"
# a webserver reads many runs' databases: engines of the least recently used ones are let go
KEPT_RUN_ENGINES = 8
# the Dagster code this storage's own writes mirror, by the sha256 of its source (16 digits)
MIRRORED = {
    "SqliteEventLogStorage.store_event": "f89aed40602438b9",
    "SqlEventLogStorage._store_asset_event": "fdb9340b9eef1c9b",
    "SqlEventLogStorage._get_asset_entry_values": "bb3b9df2c6c371fe",
}
MIRRORS_DAGSTER = CHECK_WRITES_MIRROR_DAGSTER and mirrors(
    MIRRORED,
    {
        "SqliteEventLogStorage.store_event": DagsterSqliteEventLogStorage.store_event,
        "SqlEventLogStorage._store_asset_event": SqlEventLogStorage._store_asset_event,
        "SqlEventLogStorage._get_asset_entry_values": SqlEventLogStorage._get_asset_entry_values,
    },
)


def _inserted_id(result: Any) -> Any:
    """The id SQLite gave the row just inserted."""
    return result.inserted_primary_key[0]


class SqliteEventLogStorage(HeldCheckResults, CheckResultWrites, DagsterSqliteEventLogStorage):
    """Dagster's SQLite event log storage with kept engines, a kept index connection, WAL commits
    without a disk wait and batched writes in one transaction per database file."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        self._open = threading.local()
        self._asset_key_columns: set[str] = set()
        self.start_holding()
        super().__init__(base_dir, inst_data)
        # nested writes of one batch reenter from the same thread
        self._db_lock = threading.RLock()  # type: ignore[assignment]
        os.environ.setdefault(EVENT_BATCH_SIZE_VARIABLE, DEFAULT_EVENT_BATCH_SIZE)

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        """`base_dir`: the folder of the SQLite files, `$DAGSTER_HOME/history/runs` by default
        (where Dagster's own storage keeps them, so an instance's history carries over)."""
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, Any]
    ) -> SqliteEventLogStorage:
        """The storage from `dagster.yaml`'s `config`."""
        base_dir = config_value.get("base_dir")
        if base_dir is None:
            home = os.environ.get("DAGSTER_HOME")
            if not home:
                raise DagsterInvariantViolationError(
                    "ingestion_assets.event_storage.sqlite.SqliteEventLogStorage: set `base_dir` in the "
                    "instance's dagster.yaml, or DAGSTER_HOME, the folder of that dagster.yaml"
                )
            base_dir = os.path.join(home, "history", "runs")
        return cls(base_dir=base_dir, inst_data=inst_data)

    def _engine(self, shard: str) -> Engine:
        if self._engines_pid != os.getpid():
            # a forked child must not use its parent's connections
            for inherited in self._engines.values():
                inherited.dispose(close=False)
            self._engines.clear()
            self._engines_pid = os.getpid()
        kept = self._engines.get(shard)
        if kept is not None:
            self._engines.move_to_end(shard)
            return kept
        engine = create_engine(
            self.conn_string_for_shard(shard),
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=2,
        )
        sa.event.listen(engine, "connect", _wal_commits_without_disk_wait)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        run_engines = [key for key in self._engines if key != INDEX_SHARD]
        for key in run_engines[: max(0, len(run_engines) - KEPT_RUN_ENGINES)]:
            self._engines.pop(key).dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        opened: dict[str, Connection] = self._open.__dict__.setdefault("connections", {})
        current = opened.get(shard)
        if current is not None:
            # inside this thread's transaction on the same file (a batch): join it
            yield current
            return
        if not opened:
            # whatever reads or writes next sees the check results received before it
            self.write_held_first()
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as connection, connection.begin():
                opened[shard] = connection
                try:
                    yield connection
                finally:
                    del opened[shard]

    def _table_in_database(self, table_name: str) -> bool:
        """Whether the index database has the table, asked on the kept connection."""
        with self.index_connection() as connection:
            return bool(sa.inspect(connection).has_table(table_name))

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        """Whether asset_keys has the column, asked of the database until it is there: Dagster
        reflects the table for every asset event (1.4% of a four-table backfill's CPU,
        profiled). A migration adds columns, never removes them."""
        if column_name in self._asset_key_columns:
            return True
        found = super()._has_asset_key_col_on_connection(conn, column_name)
        if found:
            self._asset_key_columns.add(column_name)
        return found

    def store_event(self, event: EventLogEntry) -> None:
        """Store the event as Dagster does, its index writes in one transaction. A run's check
        result is held back and written with the ones that follow it (`held.py`)."""
        if MIRRORS_DAGSTER and self.hold(event):
            return
        self.write_one_event(event)

    def write_one_event(self, event: EventLogEntry) -> None:
        """The event's writes, the index committing after the run's file (as in Dagster's
        `store_event`)."""
        with self.index_connection(), self.run_connection(event.run_id):
            if MIRRORS_DAGSTER:
                self._store_event_rows(event)
            else:
                super().store_event(event)

    def _store_event_rows(self, event: EventLogEntry) -> None:
        """Dagster's SQLite `store_event` (the run's file, and the index for asset, check and run
        status events), each insert the prebuilt statement with the event's row."""
        row = self._event_to_row(event)
        with self.run_connection(event.run_id) as conn:
            conn.execute(INSERT_EVENT, row)
        event_type = event.dagster_event_type if event.is_dagster_event else None
        if event_type in ASSET_EVENTS:
            with self.index_transaction() as conn:
                event_id = _inserted_id(conn.execute(INSERT_EVENT, row))
                if event_id is None:
                    raise DagsterInvariantViolationError(
                        "Cannot store asset event tags for null event id."
                    )
                self._store_asset_event_tags(conn, [event], [event_id])
                self._store_asset_event(conn, event, event_id)
        if event_type in ASSET_CHECK_EVENTS:
            with self.index_connection() as conn:
                event_id = _inserted_id(conn.execute(INSERT_EVENT, row))
            self.store_asset_check_event(event, event_id)
        if event_type in EVENT_TYPE_TO_PIPELINE_RUN_STATUS:
            with self.index_connection() as conn:
                conn.execute(INSERT_EVENT, row)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store the events as `store_event` would, in one transaction per database file."""
        self.write_run_events(events)

    def write_run_events(self, events: Sequence[EventLogEntry]) -> None:
        """The events' rows, in one transaction per database file."""
        by_run: dict[str, list[EventLogEntry]] = {}
        for event in events:
            by_run.setdefault(event.run_id, []).append(event)
        for run_id, run_events in by_run.items():
            with self.index_connection(), self.run_connection(run_id):
                if not MIRRORS_DAGSTER:
                    for event in run_events:
                        self.write_one_event(event)
                    continue
                self._store_batch_rows(run_id, run_events)

    def _store_batch_rows(self, run_id: str, events: Sequence[EventLogEntry]) -> None:
        """One run's events as `_store_event_rows` writes each, but with their rows inserted by
        one statement per file (in the index, those of asset, check and run status events,
        their ids returned in order), then the index's other rows (`write_index_rows`)."""
        rows = [self._event_to_row(event) for event in events]
        with self.run_connection(run_id) as conn:
            conn.execute(INSERT_EVENT, rows)
        indexed = [
            (event, row)
            for event, row in zip(events, rows, strict=True)
            if event.is_dagster_event and event.dagster_event_type in _INDEXED_TYPES
        ]
        if not indexed:
            return
        with self.index_transaction() as conn:
            ids = [
                int(found[0])
                for found in conn.execute(INSERT_EVENTS_RETURNING_IDS, [row for _, row in indexed])
            ]
            write_index_rows(
                self, conn, [event for event, _ in indexed], [row for _, row in indexed], ids
            )

    def watch(self, run_id: str, cursor: str | None, callback: EventHandlerFn) -> None:
        """Call back with the run's new events as they are written (the live run log)."""
        observer: Any = self._obs
        if not observer:
            observer = self._obs = Observer()  # type: ignore[assignment]
            observer.start()
        watchdog = _RunLogWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (
            watchdog,
            observer.schedule(watchdog, self._base_dir, recursive=True),
        )

    def dispose(self) -> None:
        """Write the check results held back, then close the kept connections."""
        self.write_held_check_results()
        super().dispose()
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()


class _RunLogWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's watcher of a run's database file, also woken by its write-ahead log."""

    @property
    def patterns(self) -> list[str]:
        """The run's database file and its write-ahead log."""
        return [self._log_path, f"{self._log_path}-wal"]

    def on_modified(self, event: FileSystemEvent) -> None:
        """Read the run's events written since the last call."""
        self._process_log()


def _wal_commits_without_disk_wait(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
