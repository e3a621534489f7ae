"""What both of the project's event log storages write Dagster's rows with: prebuilt
statements, executed with each row's values (Dagster builds a new statement for every event, with
the values in it), and a check result written with its event serialized once (Dagster serializes
it twice). The rows are Dagster's. The Dagster code mirrored is fingerprinted by a hash of its
source: on a Dagster whose code differs, its own methods are used."""

from __future__ import annotations

import datetime
import hashlib
import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._serdes import serialize_value

# an event's row, its values given at execution (Dagster builds `insert().values(**row)` each time)
INSERT_EVENT = SqlEventLogStorageTable.insert()
# events' rows in one statement, their ids back in the order of the rows
INSERT_EVENTS_RETURNING_IDS = INSERT_EVENT.returning(
    SqlEventLogStorageTable.c.id, sort_by_parameter_order=True
)
_CHECKS = AssetCheckExecutionsTable.c
_CHECK_RESULT: dict[str, Any] = {
    "execution_status": sa.bindparam("v_status"),
    "evaluation_event": sa.bindparam("v_event"),
    "evaluation_event_timestamp": sa.bindparam("v_timestamp"),
    "evaluation_event_storage_id": sa.bindparam("v_event_id"),
    "materialization_event_storage_id": sa.bindparam("v_materialization_id"),
    "partition": sa.bindparam("v_partition"),
}
_PLANNED_ROW = (
    _CHECKS.asset_key == sa.bindparam("w_asset_key"),
    _CHECKS.check_name == sa.bindparam("w_check_name"),
    _CHECKS.run_id == sa.bindparam("w_run_id"),
)
# a check result completes the row its planned event made: one statement for a partition, one
# for none (`partition IS NULL`), as Dagster's update
UPDATE_CHECK = (
    AssetCheckExecutionsTable.update()
    .where(*_PLANNED_ROW, _CHECKS.partition == sa.bindparam("w_partition"))
    .values(**_CHECK_RESULT)
)
UPDATE_CHECK_NO_PARTITION = (
    AssetCheckExecutionsTable.update()
    .where(*_PLANNED_ROW, _CHECKS.partition.is_(None))
    .values(**_CHECK_RESULT)
)
INSERT_CHECK = AssetCheckExecutionsTable.insert()


def sets_same_asset_row(event: EventLogEntry, following: EventLogEntry | None) -> bool:
    """Whether `following` overwrites all that `event` writes to the asset's row in `asset_keys`:
    an event of the same type for the same asset (Dagster sets the same columns from each, the
    last materialization among them, the run, the timestamp). A backfill's batch of 1,595
    materializations then updates the row once, not 1,595 times with an event serialized each
    time; the row ends as Dagster's would, and nothing reads it inside the batch's transaction."""
    if following is None or event.dagster_event is None or following.dagster_event is None:
        return False
    return bool(
        event.dagster_event.asset_key is not None
        and event.dagster_event.asset_key == following.dagster_event.asset_key
        and event.dagster_event.event_type_value == following.dagster_event.event_type_value
    )


def write_index_rows(
    storage: Any,
    connection: sa.Connection,
    events: Sequence[EventLogEntry],
    rows: Sequence[dict[str, Any]],
    ids: Sequence[int],
    keyed_assets_only: bool = False,
) -> None:
    """What a batch of events writes in the index besides their event rows (inserted, with
    these `ids`), in their order, as Dagster's `store_event` writes it for each: an asset
    event's tags and the asset's row (once for a run of events that set the same row,
    `sets_same_asset_row`; with `keyed_assets_only`, as dagster-postgres, only for an event
    that names its asset), a check event's row with the event's serialized form."""
    memo = storage._serialized_events()
    following = [*events[1:], None]
    for event, row, event_id, after in zip(events, rows, ids, following, strict=True):
        event_type = event.dagster_event_type if event.is_dagster_event else None
        keyed = event.dagster_event is not None and bool(event.dagster_event.asset_key)
        if event_type in ASSET_EVENTS and (keyed or not keyed_assets_only):
            storage._store_asset_event_tags(connection, [event], [event_id])
            if not sets_same_asset_row(event, after):
                storage._store_asset_event(connection, event, event_id)
        if event_type in ASSET_CHECK_EVENTS:
            memo.last = (event, row["event"])
            storage.store_asset_check_event(event, event_id)


def fingerprint(method: Callable[..., Any]) -> str | None:
    """The first 16 hex digits of the sha256 of the method's source (None without a source)."""
    try:
        return hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


def mirrors(expected: Mapping[str, str], methods: Mapping[str, Callable[..., Any]]) -> bool:
    """Whether each of this Dagster's methods is the code that was mirrored."""
    return all(fingerprint(method) == expected[name] for name, method in methods.items())


CHECK_WRITES_MIRROR_DAGSTER = mirrors(
    {
        "SqlEventLogStorage._update_asset_check_evaluation": "961fd6041447b07a",
        "SqlEventLogStorage._store_asset_check_evaluation_planned": "bbecef7ab5ce9d01",
    },
    {
        "SqlEventLogStorage._update_asset_check_evaluation": (
            SqlEventLogStorage._update_asset_check_evaluation
        ),
        "SqlEventLogStorage._store_asset_check_evaluation_planned": (
            SqlEventLogStorage._store_asset_check_evaluation_planned
        ),
    },
)


class CheckResultWrites:
    """Mixed in before a Dagster `SqlEventLogStorage` class: a check result completes its planned
    row by a prebuilt statement, with the event's serialized form from its event log row."""

    def has_table(self, table_name: str) -> bool:
        """Whether the index database has the table; a table once there stays. Dagster asks at
        every check event (`supports_asset_checks`), a look into the database's catalog each
        time (in PostgreSQL 16% of storing a check result, profiled)."""
        found: set[str] = self.__dict__.setdefault("_found_tables", set())
        if table_name in found:
            return True
        if self._table_in_database(table_name):
            found.add(table_name)
            return True
        return False

    def _table_in_database(self, table_name: str) -> bool:
        return bool(super().has_table(table_name))  # type: ignore[misc]

    def _serialized_events(self) -> threading.local:
        """The last event this thread serialized for a row, with its serialized form."""
        memo: threading.local = self.__dict__.setdefault("_serialized", threading.local())
        return memo

    def _event_to_row(self, event: EventLogEntry) -> dict[str, Any]:
        row: dict[str, Any] = super()._event_to_row(event)  # type: ignore[misc]
        self._serialized_events().last = (event, row["event"])
        return row

    def _serialized_form(self, event: EventLogEntry) -> str:
        """The event's serialized form: the one its event log row was written with, when this
        thread just wrote that row."""
        memo = getattr(self._serialized_events(), "last", None)
        return memo[1] if memo is not None and memo[0] is event else serialize_value(event)

    def _store_asset_check_evaluation_planned(
        self, event: EventLogEntry, event_id: int | None
    ) -> None:
        """Dagster's: a planned check makes a row per partition of its run. Dagster builds one
        multi-row insert with the event serialized again for every row, compiled anew each time
        (a range run of 1,595 days and 12 checks: 19,140 rows before the run starts, 75% of
        planning it); here the rows are one `executemany` of a prebuilt insert, the event
        serialized once."""
        planned: Any = event.get_dagster_event().event_specific_data
        partition_keys = (
            planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        )
        if not CHECK_WRITES_MIRROR_DAGSTER or not partition_keys:
            super()._store_asset_check_evaluation_planned(event, event_id)  # type: ignore[misc]
            return
        storage: Any = self  # a SqlEventLogStorage, which this is mixed into
        shared = {
            "asset_key": planned.asset_key.to_string(),
            "check_name": planned.check_name,
            "run_id": event.run_id,
            "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
            "evaluation_event": self._serialized_form(event),
            "evaluation_event_timestamp": storage._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
        }
        with storage.index_connection() as conn:
            conn.execute(INSERT_CHECK, [{**shared, "partition": key} for key in partition_keys])

    def _update_asset_check_evaluation(self, event: EventLogEntry, event_id: int | None) -> None:
        """Dagster's: the check result completes its planned row (or is inserted when there is
        none), by prebuilt statements and with the event serialized once."""
        if not CHECK_WRITES_MIRROR_DAGSTER:
            super()._update_asset_check_evaluation(event, event_id)  # type: ignore[misc]
            return
        evaluation: Any = event.get_dagster_event().event_specific_data
        serialized = self._serialized_form(event)
        status = (
            AssetCheckExecutionRecordStatus.SUCCEEDED.value
            if evaluation.passed
            else AssetCheckExecutionRecordStatus.FAILED.value
        )
        target = evaluation.target_materialization_data
        result = {
            "v_status": status,
            "v_event": serialized,
            "v_event_id": event_id,
            "v_materialization_id": target.storage_id if target else None,
            "v_partition": evaluation.partition,
        }
        where = {
            "w_asset_key": evaluation.asset_key.to_string(),
            "w_check_name": evaluation.check_name,
            "w_run_id": event.run_id,
        }
        storage: Any = self  # a SqlEventLogStorage, which this is mixed into
        with storage.index_connection() as conn:
            if evaluation.partition is None:
                statement = UPDATE_CHECK_NO_PARTITION
            else:
                statement = UPDATE_CHECK
                where["w_partition"] = evaluation.partition
            rows_updated = conn.execute(
                statement,
                {**where, **result, "v_timestamp": storage._event_insert_timestamp(event)},
            ).rowcount
            # no planned row (a step launcher's external instance): Dagster inserts one
            if rows_updated == 0:
                rows_updated = conn.execute(
                    INSERT_CHECK,
                    {
                        "asset_key": where["w_asset_key"],
                        "check_name": evaluation.check_name,
                        "run_id": event.run_id,
                        "execution_status": status,
                        "evaluation_event": serialized,
                        "evaluation_event_timestamp": datetime.datetime.fromtimestamp(
                            event.timestamp, datetime.UTC
                        ).replace(tzinfo=None),
                        "evaluation_event_storage_id": event_id,
                        "materialization_event_storage_id": result["v_materialization_id"],
                        "partition": evaluation.partition,
                    },
                ).rowcount
        if rows_updated > 1:
            raise DagsterInvariantViolationError(
                f"Updated {rows_updated} rows for asset check evaluation "
                f"{evaluation.asset_check_key} as a result of duplicate AssetCheckPlanned events."
            )
