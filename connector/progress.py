"""Progress and cancellation of long work: one event shape, one callback, one token.

Why one vocabulary: a 20,000-row ``write_entities`` or a fetch-all query runs for minutes, and three kinds of callers
want to follow it and stop it: the CLI (a Rich bar, JSON lines on stderr, Ctrl-C), a platform (its own progress UI,
its own cancel button or deadline) and a Python programmer. The library therefore takes two optional arguments on
every long operation, ``progress`` (a :class:`Reporter`: any callable taking a :class:`Progress`) and ``cancel`` (a
:class:`CancellationToken`); ``None``, the default, means no reporting and no cancellation, so every existing call is
unchanged.

* **Progress** events are snapshots, not deltas: counts per outcome, rows done of the total (when known), rows/s, ETA
  and the connection's throttle waits. A reporter that drops events (a slow terminal) loses nothing. The reporter is
  called one event at a time (a :class:`Tracker` serializes the calls), from whichever thread made progress: the
  caller's for chunks and pages, a worker's for a throttle wait.
* **Cancellation** is cooperative and never loses a result: a cancelled write stops *starting* work (chunks not yet
  sent are reported ``not_sent``), lets requests in flight finish, and returns its report as usual. ``abort()`` (a
  second Ctrl-C) stops waiting for them too: their rows are reported ``unknown``. A token may carry a deadline on the
  injected clock (a platform's time budget), which cancels like ``cancel()``, and a grace period that bounds the wait
  for requests in flight after a cancel. ``cancel()`` and ``abort()`` only set attributes and wake waiters through
  :class:`queue.SimpleQueue` (whose ``put`` is reentrant), so a signal handler may call them.

How hooks receive them: the action hooks keep their two-argument signature ``(inputs, connection)``, which packs
implement and wrap. :meth:`connector.runtime.Runtime.run_action` (and ``stream_records``) therefore sets a context
variable around the call, read with :func:`current`; a hook passes ``current().progress`` and ``current().cancel`` on
to the library. A context variable rather than a module global, because a platform runs several actions at once in
threads or tasks, each with its own reporter and token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from connector.clock import Clock, SystemClock

log = logging.getLogger("connector.progress")

__all__ = [
    "CancellationToken",
    "Progress",
    "Reporter",
    "RunControl",
    "ThrottleSource",
    "Tracker",
    "current",
    "running",
]


@dataclass(frozen=True)
class Progress:
    """One snapshot of a long operation.

    ``event`` is ``start``, ``advance`` (a chunk or page done), ``throttle`` (the connection was told to wait) or
    ``end``. ``counts`` holds the rows per outcome so far (``created``, ``updated``, ``failed``, ``unknown``,
    ``not_sent`` for writes; ``succeeded``... for a batch; ``pages`` for queries). ``total`` is None when unknown (a
    query without a count). ``throttle_waits`` counts the times the connection was held by a ``Retry-After`` during
    the operation and ``throttled_s`` how long it was held in all.
    """

    operation: str
    event: str
    done: int
    total: int | None
    counts: Mapping[str, int]
    elapsed_s: float
    throttle_waits: int = 0
    throttled_s: float = 0.0
    cancelled: bool = False

    @property
    def rows_per_s(self) -> float | None:
        """Rows that went somewhere per second: rows never sent (``not_sent``) are done but took no time."""
        moved = self.done - self.counts.get("not_sent", 0)
        return moved / self.elapsed_s if self.elapsed_s > 0 and moved > 0 else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None while the rate or the total is unknown."""
        rate = self.rows_per_s
        if rate is None or self.total is None:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def to_dict(self) -> dict[str, Any]:
        """The JSON line ``d365 run --progress=json`` writes (rounded: it is for people and progress bars)."""
        rate, eta = self.rows_per_s, self.eta_s
        return {
            "operation": self.operation,
            "event": self.event,
            "done": self.done,
            "total": self.total,
            "counts": dict(self.counts),
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": None if rate is None else round(rate, 1),
            "eta_s": None if eta is None else round(eta, 1),
            "throttle_waits": self.throttle_waits,
            "throttled_s": round(self.throttled_s, 3),
            "cancelled": self.cancelled,
        }


class Reporter(Protocol):
    """Receives each :class:`Progress` snapshot; must return quickly (it runs on the thread that made progress).
    Any callable taking one positional argument fits, ``list.append`` included."""

    def __call__(self, event: Progress, /) -> None: ...


class ThrottleSource(Protocol):
    """What a :class:`Tracker` listens to for throttle waits (the connection's governor)."""

    def watch_throttle(self, listener: Callable[[float], None]) -> Callable[[], None]: ...


class CancellationToken:
    """Asks long work to stop: ``cancel()`` stops new work, ``abort()`` also stops waiting for work in flight.

    ``deadline_s`` (seconds from now on ``clock``) cancels by itself when it passes, checked whenever work is about to
    start. ``grace_s`` bounds how long a cancelled run waits for requests in flight before it gives up on them as if
    aborted (None: wait for them, bounded only by the connection's timeout and retry caps). ``confirm_s`` bounds the
    read a write makes when its grace period ended, to learn which of their rows landed (real seconds: it waits on a
    thread; an abort skips the read, or ends it at once).
    """

    def __init__(
        self,
        *,
        deadline_s: float | None = None,
        grace_s: float | None = None,
        confirm_s: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._deadline = None if deadline_s is None else self._clock.monotonic() + deadline_s
        self.grace_s = grace_s
        self.confirm_s = confirm_s
        self._reason: str | None = None
        self._cancelled_at: float | None = None
        self._aborted = False
        self._listeners: list[Callable[[], None]] = []

    @property
    def clock(self) -> Clock:
        return self._clock

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop starting work; safe to call from a signal handler and more than once (the first reason stays)."""
        if self._reason is None:
            self._reason = reason
            self._cancelled_at = self._clock.monotonic()
        self._wake()

    def abort(self, reason: str = "aborted") -> None:
        """Stop waiting for work in flight too (its rows are reported unknown); implies :meth:`cancel`."""
        self.cancel(reason)
        self._aborted = True
        self._wake()

    @property
    def cancelled(self) -> bool:
        if self._reason is None and self._deadline is not None and self._clock.monotonic() >= self._deadline:
            self.cancel("deadline")
        return self._reason is not None

    @property
    def aborted(self) -> bool:
        return self._aborted

    @property
    def reason(self) -> str | None:
        return self._reason if self.cancelled else None

    def grace_left(self) -> float | None:
        """Seconds a cancelled run may still wait for work in flight; None when unbounded or not cancelled."""
        if self._cancelled_at is None or self.grace_s is None:
            return None
        return max(0.0, self._cancelled_at + self.grace_s - self._clock.monotonic())

    @property
    def listening(self) -> bool:
        """Whether some wait would wake at once on :meth:`abort` (a signal handler decides whether to raise)."""
        return bool(self._listeners)

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (which must be signal-safe, such as ``SimpleQueue.put``) on every cancel and abort;
        returns the function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _wake(self) -> None:
        for listener in tuple(self._listeners):
            listener()


class Tracker:
    """The counts of one long operation, sent to a reporter as snapshots; a no-op without a reporter.

    Thread-safe: workers and the caller may report; the reporter is called under a lock, one event at a time. Used as
    a context manager it listens to the connection's throttle waits for the operation's duration. A reporter that
    raises is logged and dropped: the operation goes on and returns its results.
    """

    def __init__(
        self,
        operation: str,
        reporter: Reporter | None,
        *,
        total: int | None,
        clock: Clock,
        throttle: ThrottleSource | None = None,
        cancel: CancellationToken | None = None,
    ) -> None:
        self.operation = operation
        self.total = total
        self.counts: dict[str, int] = {}
        self.done = 0
        self._reporter = reporter
        self._clock = clock
        self._started = clock.monotonic()
        self._throttle = throttle
        self._cancel = cancel
        self._waits = 0
        self._waited = 0.0
        self._lock = threading.Lock()
        self._unwatch: Callable[[], None] | None = None

    def __enter__(self) -> Tracker:
        if self._reporter is not None and self._throttle is not None:
            self._unwatch = self._throttle.watch_throttle(self._on_throttle)
        self._emit("start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._unwatch is not None:
            self._unwatch()
        self._emit("end")

    def advance(self, outcomes: Mapping[str, int], *, done: int | None = None) -> None:
        """Add ``outcomes`` (rows per outcome) to the counts; ``done`` grows by their sum unless given."""
        if self._reporter is None:
            return
        with self._lock:
            for name, n in outcomes.items():
                self.counts[name] = self.counts.get(name, 0) + n
            self.done = done if done is not None else self.done + sum(outcomes.values())
        self._emit("advance")

    def set(self, counts: Mapping[str, int], *, done: int) -> None:
        """Replace the counts (an operation that knows its totals only at the end, such as a batch)."""
        with self._lock:
            self.counts = dict(counts)
            self.done = done

    def _on_throttle(self, seconds: float) -> None:
        with self._lock:
            self._waits += 1
            self._waited += seconds
        self._emit("throttle")

    def _emit(self, event: str) -> None:
        if self._reporter is None:
            return
        with self._lock:
            snapshot = Progress(
                operation=self.operation,
                event=event,
                done=self.done,
                total=self.total,
                counts=dict(self.counts),
                elapsed_s=self._clock.monotonic() - self._started,
                throttle_waits=self._waits,
                throttled_s=self._waited,
                cancelled=self._cancel is not None and self._cancel.cancelled,
            )
            try:
                self._reporter(snapshot)
            except Exception:  # a broken progress display must not cost a write its results
                log.exception("the progress reporter of %s failed; no more progress is reported", self.operation)
                self._reporter = None


@dataclass(frozen=True)
class RunControl:
    """The progress reporter and cancellation token of the action run in progress (both None outside a run)."""

    progress: Reporter | None = None
    cancel: CancellationToken | None = None


_NONE = RunControl()
_current: ContextVar[RunControl | None] = ContextVar("d365_run_control", default=None)


def current() -> RunControl:
    """The reporter and token :meth:`Runtime.run_action` was given, for a hook to pass on to the library."""
    return _current.get() or _NONE


@contextmanager
def running(progress: Reporter | None = None, cancel: CancellationToken | None = None) -> Iterator[RunControl]:
    """Make ``progress`` and ``cancel`` what :func:`current` returns inside the block (the runtime wraps each run)."""
    control = RunControl(progress, cancel)
    token = _current.set(control)
    try:
        yield control
    finally:
        _current.reset(token)
