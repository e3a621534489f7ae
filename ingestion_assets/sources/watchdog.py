"""A read that stops making progress fails within a bound, whichever driver is stuck.

A server (or a proxy, or a half-dead network path) can stop sending mid-result while keeping the
connection open: TCP keepalives are answered by whatever holds the connection, and a
statement timeout runs on the server, so neither notices. The batches of a read are therefore
fetched in a thread of their own and handed over through a small queue; when no batch arrives
within the stall timeout, the consumer breaks the connection's socket (so that the stuck driver
call returns and releases its connection) and fails the read with a message that names the
setting. A driver whose socket cannot be reached (arrow-odbc's native reader) is left to finish
in its daemon thread; the read has failed all the same.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pyarrow as pa

from ingestion_assets.sources.cancel import current_scope

T = TypeVar("T")

# batches fetched ahead of the consumer: the fetch overlaps the write, memory stays bounded
READ_AHEAD_BATCHES = 2
# how often a producer blocked on a full queue looks whether the consumer went away
_HANDOVER_SECONDS = 0.5


class StallBreaker:
    """How to break a read's connection once it stalls: actions the read registers when it has
    its connection (closing a socket), run once, from the watching thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: list[Callable[[], None]] = []
        self._fired = False

    def on_stall(self, action: Callable[[], None]) -> None:
        """Run `action` when the read stalls (at once, if it already did)."""
        with self._lock:
            if not self._fired:
                self._actions.append(action)
                return
        _quietly(action)

    def add_connection(self, dbapi_connection: Any) -> None:
        """Break this DBAPI connection's socket on a stall, where the driver exposes it."""
        action = socket_breaker(dbapi_connection)
        if action is not None:
            self.on_stall(action)

    @property
    def fired(self) -> bool:
        """Whether the read was declared stalled."""
        return self._fired

    def fire(self) -> None:
        """Declare the read stalled and run the registered actions."""
        with self._lock:
            self._fired = True
            actions, self._actions = self._actions, []
        for action in actions:
            _quietly(action)


def _quietly(action: Callable[[], None]) -> None:
    # a socket the driver already closed cannot be shut down again: nothing left to break
    with contextlib.suppress(OSError):
        action()


def socket_breaker(dbapi_connection: Any) -> Callable[[], None] | None:
    """A function that shuts down the connection's TCP socket, making a blocked read in any
    thread return; None when the driver does not expose its socket (pyodbc, SQLite)."""
    sock = getattr(dbapi_connection, "_sock", None)  # PyMySQL
    if isinstance(sock, socket.socket):
        return lambda: sock.shutdown(socket.SHUT_RDWR)
    fileno = getattr(dbapi_connection, "fileno", None)  # psycopg2 (libpq's socket)
    if type(dbapi_connection).__module__.startswith("psycopg2") and callable(fileno):
        descriptor = int(fileno())

        def shut_down() -> None:
            # shutdown acts on the socket itself, so a duplicate descriptor breaks libpq's too
            with socket.socket(fileno=os.dup(descriptor)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)

        return shut_down
    return None


def watched_batches(
    batches: Iterator[pa.RecordBatch],
    stall_seconds: float | None,
    breaker: StallBreaker,
    stalled: Callable[[int], BaseException],
) -> Iterator[pa.RecordBatch]:
    """`batches`, fetched in a thread; `stalled(rows so far)` is raised when no batch arrives
    within `stall_seconds` (after the breaker broke the connection). None: not watched."""
    if stall_seconds is None:
        yield from batches
        return
    handover: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=READ_AHEAD_BATCHES)
    consumer_gone = threading.Event()
    # the reading thread's cancel scope reaches the source through this thread too
    scope = current_scope()

    def hand_over(item: tuple[str, Any]) -> bool:
        while not consumer_gone.is_set():
            try:
                handover.put(item, timeout=_HANDOVER_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with scope.entered() if scope is not None else contextlib.nullcontext():
                for batch in batches:
                    if not hand_over(("batch", batch)):
                        return
                hand_over(("end", None))
        except BaseException as error:  # re-raised by the consumer below
            hand_over(("error", error))
        finally:
            # in this thread: a generator cannot be closed from another while it runs
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="source-read", daemon=True)
    producer.start()
    rows = 0
    try:
        while True:
            try:
                kind, value = handover.get(timeout=stall_seconds)
            except queue.Empty:
                breaker.fire()
                raise stalled(rows) from None
            if kind == "end":
                return
            if kind == "error":
                raise value
            rows += value.num_rows
            yield value
    finally:
        consumer_gone.set()


def watched_call(
    call: Callable[[StallBreaker], T],
    stall_seconds: float | None,
    stalled: Callable[[], BaseException],
) -> T:
    """`call(breaker)` (a count, a reflection) in a thread; when it has not returned within
    `stall_seconds`, its connection is broken through the breaker it registered with, and
    `stalled()` is raised. None: not watched."""
    breaker = StallBreaker()
    if stall_seconds is None:
        return call(breaker)
    outcome: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            outcome.put((True, call(breaker)))
        except BaseException as error:  # re-raised by the caller below
            outcome.put((False, error))

    scope = current_scope()

    def run_in_scope() -> None:
        with scope.entered() if scope is not None else contextlib.nullcontext():
            run()

    threading.Thread(target=run_in_scope, name="source-call", daemon=True).start()
    try:
        succeeded, value = outcome.get(timeout=stall_seconds)
    except queue.Empty:
        breaker.fire()
        raise stalled() from None
    if not succeeded:
        raise value
    result: T = value
    return result
