"""Stopping a source that is blocked in a read, from the thread that consumes it.

A consumer that stops early (its write failed, the run was cancelled) cannot close a generator
another thread is running, and a thread blocked on a server (a slow COPY, a long query) does not
notice a flag. So the consumer runs the source under a `CancelScope`, the source registers how
to interrupt its blocking call (`on_cancel`: cancel the query, close the pipe), and the consumer
calls `cancel()` when it gives up waiting."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

_current = threading.local()


class CancelScope:
    """The ways to interrupt what one reading thread is blocked in; cancelled at most once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.cancelled = False

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block (in the reading thread) with this scope as the thread's own."""
        previous = getattr(_current, "scope", None)
        _current.scope = self
        try:
            yield
        finally:
            _current.scope = previous

    def cancel(self) -> None:
        """Call every registered callback (from any thread); later registrations run at once."""
        with self._lock:
            self.cancelled = True
            callbacks = list(self._callbacks)
        for callback in callbacks:
            _call_quietly(callback)

    def _add(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if not self.cancelled:
                self._callbacks.append(callback)
                return True
        return False

    def _remove(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


def current_scope() -> CancelScope | None:
    """The scope the current thread reads under (to hand to a thread it reads through)."""
    scope: CancelScope | None = getattr(_current, "scope", None)
    return scope


@contextlib.contextmanager
def on_cancel(callback: Callable[[], None]) -> Iterator[None]:
    """While the block runs, cancelling the current thread's scope calls `callback` (from the
    consumer's thread: it must be safe to call from another thread). No scope: nothing."""
    scope: CancelScope | None = getattr(_current, "scope", None)
    if scope is None:
        yield
        return
    if not scope._add(callback):
        _call_quietly(callback)
    try:
        yield
    finally:
        scope._remove(callback)


def _call_quietly(callback: Callable[[], None]) -> None:
    # a cancel is best effort: the reader's own error (or its end) is what gets reported
    with contextlib.suppress(Exception):
        callback()
