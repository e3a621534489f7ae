"""The PostgreSQL event log storage of `deploy/dagster.yaml`: dagster-postgres's, one connection and
one transaction per event instead of a new connection per statement.

dagster-postgres opens a new connection (a TCP handshake and authentication) for every statement
it runs and commits each on its own (`NullPool`, autocommit): a check result is three connections
and three commits, a materialization two. A 1,096-day backfill of one table records about 5,500
events; on 2 cores against the local server that run took 356 s, against 24 s with an in-memory
instance.

This subclass keeps one connection per process (a pool of one, recycled hourly and checked
before use) and writes each event, or each batch Dagster hands it (`DAGSTER_EVENT_BATCH_SIZE`,
which it turns on unless the environment sets it), in one transaction with Dagster's own
statements, but for a check's rows: a planned check's rows (one per partition of the run) are
one `executemany` of a prebuilt insert, and a check result completes its planned row by a prebuilt
statement, each with the event serialized once (`rows.py`, as the SQLite storage does); a run's check
results, which Dagster hands over one by one, are held back and written together in one
transaction (`held.py`: before anything else is read or written through this storage, within
0.5 s, at 500 of them, at `dispose` and at exit). A batch dagster-postgres stores event by
event (a range's planned events, the held check results) has its event log rows inserted by one
statement without a `NOTIFY` each, as dagster-postgres writes a batch of materializations (its
comment: LISTEN/NOTIFY is no longer used to watch events, kept for older readers), and a run of
events of one type for one asset updates the asset's row once, with the last of them. What it
writes is unchanged:
Dagster's webserver, daemon and `dagster-postgres` read it as before.

    event_log_storage:
      module: ingestion_assets.event_storage.postgres
      class: PostgresEventLogStorage
      config:
        postgres_db: {...}    # as under `storage: postgres:`
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log.event_log import (
    PostgresEventLogStorage as DagsterPostgresEventLogStorage,
)
from dagster_postgres.utils import (
    create_pg_connection,
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)
from sqlalchemy.engine import Connection
from sqlalchemy.pool import QueuePool

from ingestion_assets.event_storage.held import HeldCheckResults
from ingestion_assets.event_storage.rows import (
    CHECK_WRITES_MIRROR_DAGSTER,
    INSERT_EVENTS_RETURNING_IDS,
    CheckResultWrites,
    mirrors,
    write_index_rows,
)
from ingestion_assets.event_storage.sqlite import (
    DEFAULT_EVENT_BATCH_SIZE,
    EVENT_BATCH_SIZE_VARIABLE,
)

# a connection kept longer than this is replaced (servers and proxies drop idle ones)
RECYCLE_SECONDS = 3600
# the dagster-postgres code `write_run_events` mirrors, by the sha256 of its source (16
# digits): on a dagster-postgres whose code differs, each event is stored as it stores it
MIRRORS_DAGSTER = CHECK_WRITES_MIRROR_DAGSTER and mirrors(
    {
        "PostgresEventLogStorage.store_event": "4a2e37e5871bf2c8",
        "PostgresEventLogStorage.store_event_batch": "ff147ed514ba9786",
    },
    {
        "PostgresEventLogStorage.store_event": DagsterPostgresEventLogStorage.store_event,
        "PostgresEventLogStorage.store_event_batch": (
            DagsterPostgresEventLogStorage.store_event_batch
        ),
    },
)
# the batches dagster-postgres writes as batches; it stores any other event by event
_BATCHED_TYPES = (
    {DagsterEventType.ASSET_MATERIALIZATION},
    {DagsterEventType.ASSET_OBSERVATION},
)


class PostgresEventLogStorage(HeldCheckResults, CheckResultWrites, DagsterPostgresEventLogStorage):
    """dagster-postgres's event log storage with a kept connection, a transaction per event or
    batch, and a run's check results held back and written together."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        self._open = threading.local()
        self.start_holding()
        self._engine_pid = os.getpid()
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        self._engine = create_pg_engine(
            self.postgres_url,
            self._token_provider,
            isolation_level="AUTOCOMMIT",
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=4,
            pool_recycle=RECYCLE_SECONDS,
            pool_pre_ping=True,
        )
        os.environ.setdefault(EVENT_BATCH_SIZE_VARIABLE, DEFAULT_EVENT_BATCH_SIZE)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PostgresEventLogStorage:
        """The storage from `dagster.yaml`'s `config` (dagster-postgres's settings)."""
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        current: Connection | None = getattr(self._open, "connection", None)
        if current is not None:
            # inside this thread's transaction (an event's other statements): join it
            yield current
            return
        if self._engine_pid != os.getpid():
            # a forked child must not use its parent's connections (SQLAlchemy's way for a fork)
            self._engine.dispose(close=False)
            self._engine_pid = os.getpid()
        # whatever reads or writes next sees the check results received before it
        self.write_held_first()
        with create_pg_connection(self._engine) as connection:
            self._open.connection = connection
            try:
                yield connection
            finally:
                self._open.connection = None

    def _connect(self) -> Any:
        return self._connection()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._connection() as connection:
            if connection.in_transaction():
                yield
                return
            connection.execution_options(isolation_level="READ COMMITTED")
            with connection.begin():
                yield

    def store_event(self, event: EventLogEntry) -> None:
        """Store the event as dagster-postgres does, in one transaction; a run's check result
        is held back and written with the ones that follow it (`held.py`)."""
        if CHECK_WRITES_MIRROR_DAGSTER and self.hold(event):
            return
        self.write_one_event(event)

    def write_one_event(self, event: EventLogEntry) -> None:
        """The event, as dagster-postgres stores it, in one transaction."""
        with self._transaction():
            super().store_event(event)

    def write_run_events(self, events: Sequence[EventLogEntry]) -> None:
        """Events in one transaction, as dagster-postgres's `store_event` writes each, but their
        event log rows are one insert without a `NOTIFY` each, and a run of events of one type
        for one asset updates the asset's row once (see the module's docstring)."""
        with self._transaction():
            if not MIRRORS_DAGSTER:
                for event in events:
                    self.write_one_event(event)
                return
            rows = [self._event_to_row(event) for event in events]
            with self._connection() as connection:
                ids = [int(row[0]) for row in connection.execute(INSERT_EVENTS_RETURNING_IDS, rows)]
            with self.index_transaction() as connection:
                write_index_rows(self, connection, events, rows, ids, keyed_assets_only=True)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store the batch as dagster-postgres does, in one transaction; one it would store
        event by event (a range's planned events) by `write_run_events`."""
        types = {event.get_dagster_event().event_type for event in events}
        if MIRRORS_DAGSTER and events and types not in _BATCHED_TYPES:
            self.write_run_events(events)
            return
        with self._transaction():
            super().store_event_batch(events)

    def dispose(self) -> None:
        """Write the check results held back, then close the kept connection."""
        self.write_held_check_results()
        super().dispose()
        self._engine.dispose()
