"""A run's check results, held back by the project's event log storages and written together.

Dagster batches a range run's planned and materialized events (`DAGSTER_EVENT_BATCH_SIZE`) but
hands every check result to the storage on its own, and a range run's step reports thousands in a
burst (a check per day). Written one by one, each is a transaction of its own: in SQLite the
write lock of two files, for which parallel steps wait on each other; in PostgreSQL a commit that
waits for the server's disk and several round trips around it. A storage with this mixin holds a
run's check results back and writes them together, one transaction per database (file):
- before anything else is read or written through the storage, so the process itself always
  reads them;
- within `CHECK_RESULT_HOLD_SECONDS` (0.5 s) of the first, by a timer, so other processes (the
  webserver, the daemon) read them that much later at most;
- at `CHECK_RESULT_BATCH` (500) of them, at `dispose` and at the process's exit.
A process killed within that half-second loses the results it held, as it would lose the ones it
had not reported yet; its run fails either way. A forked child drops what its parent held (the
parent writes those) and makes its own lock (the parent's may have been held by another thread
at the fork).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from collections.abc import Sequence

from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry

# check results held back at most, and for at most this long, then written together in one
# transaction per database (file)
CHECK_RESULT_BATCH = 500
CHECK_RESULT_HOLD_SECONDS = 0.5


def held_back(event: EventLogEntry) -> bool:
    """Whether the event is a run's check result, which the storage may write with the ones
    that follow it (Dagster hands them over one by one, never as a batch)."""
    return bool(
        event.run_id
        and event.dagster_event is not None
        and event.dagster_event.event_type_value == DagsterEventType.ASSET_CHECK_EVALUATION.value
    )


def _write_held(reference: weakref.ref[HeldCheckResults]) -> None:
    storage = reference()
    if storage is not None:
        storage.write_held_check_results()


class HeldCheckResults:
    """An event log storage's held-back check results. The storage calls `start_holding()`
    before anything else, `hold(event)` first in its `store_event` (True: held, nothing more to
    do), `write_held_first()` before each top-level read or write, and
    `write_held_check_results()` in `dispose`; it implements `write_run_events` (a run's events
    in one transaction) and `write_one_event` (one event as `store_event` writes it)."""

    _held: list[EventLogEntry]
    _held_pid: int
    _hold_lock: threading.RLock

    def start_holding(self) -> None:
        """Hold nothing yet; a process that ends without disposing of its storage still
        writes what it holds."""
        self._held, self._held_pid, self._hold_lock = [], os.getpid(), threading.RLock()
        atexit.register(_write_held, weakref.ref(self))

    def write_run_events(self, events: Sequence[EventLogEntry]) -> None:
        """One run's events, in one transaction per database (file)."""
        raise NotImplementedError

    def write_one_event(self, event: EventLogEntry) -> None:
        """One event, as the storage's `store_event` writes an event it does not hold."""
        raise NotImplementedError

    def _lock(self) -> threading.RLock:
        if self._held_pid != os.getpid():
            # a forked child: its parent's results are the parent's to write
            self._held, self._held_pid, self._hold_lock = [], os.getpid(), threading.RLock()
        return self._hold_lock

    def hold(self, event: EventLogEntry) -> bool:
        """Hold the event back if it is a run's check result; whether it was."""
        if not held_back(event):
            return False
        with self._lock():
            if not self._held:
                # the last of a burst is written soon, whatever follows it
                timer = threading.Timer(
                    CHECK_RESULT_HOLD_SECONDS, _write_held, (weakref.ref(self),)
                )
                timer.daemon = True
                timer.start()
            self._held.append(event)
            full = len(self._held) >= CHECK_RESULT_BATCH
        if full:
            self.write_held_check_results()
        return True

    def write_held_first(self) -> None:
        """Before a read or a write: the results held, written (waiting for a write of them
        another thread has begun)."""
        with self._lock():
            if self._held:
                self.write_held_check_results()

    def write_held_check_results(self) -> None:
        """Write the check results held back, one transaction per run and database (each as
        `store_event` would, one by one, if that fails)."""
        with self._lock():
            held, self._held = self._held, []
            by_run: dict[str, list[EventLogEntry]] = {}
            for event in held:
                by_run.setdefault(event.run_id, []).append(event)
            for run_events in by_run.values():
                # as Dagster falls back from a batch that failed
                try:
                    self.write_run_events(run_events)
                except Exception as error:
                    sys.stderr.write(
                        f"Exception while storing {len(run_events)} check results in one "
                        f"transaction: {error}; storing them one by one\n"
                    )
                    for event in run_events:
                        self.write_one_event(event)
