"""The throttle governor: one per connection, shared by every thread that sends requests through it.

Why one shared object rather than a retry loop per call: Dataverse's service protection limits count per user and
per web server, so when one request is told ``429 Retry-After: 7`` every other request on the same connection would
be refused too, and each refusal makes Retry-After grow. Clients that let each thread wait on its own produce retry
storms (``peers.md`` pain points 1 and 2). The governor therefore keeps:

* a shared **not-before instant** on the injected clock: after a 429 (or a 503 with ``Retry-After``) no request on
  the connection leaves before it, whichever thread was refused;
* a **parallelism limit**: at most ``min(max_parallelism, x-ms-dop-hint)`` requests in flight. The hint is read from
  every response; until the first response arrives only one request is sent, so a bulk run starts by asking the
  server rather than by opening ``max_parallelism`` connections at once (Microsoft: "let the server tell you");
* the connection's :class:`~connector.transport.RetryPolicy` (caps and backoff), which every request's
  :class:`~connector.transport.RetryBudget` follows;
* **one place beside the limit** (:meth:`Governor.beside`) for a bulk upsert's reads ahead: a read of the chunks
  waiting for a place while the writes hold every place the hint allows. A read costs one operation of execution time,
  so it cannot carry a run past the execution-time limit the writes already meet; it honours ``Retry-After`` like any
  send, and a run's own cap (:meth:`Governor.capped`) leaves no room beside it. The shared governor
  (:mod:`connector.governor_shared`) and an identity pool (:mod:`connector.identity_pool`) have no place beside:
  there such a read waits for an ordinary place, as every read did before.

The client (:class:`connector.client.DataverseClient`) takes a slot for every send and reports throttling here;
:meth:`Governor.map` runs bulk work at the allowed parallelism. Time and sleeping go through a
:class:`~connector.clock.Clock`, so tests never really wait.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from connector.clock import Clock
from connector.transport import RetryPolicy

if TYPE_CHECKING:
    from connector.progress import CancellationToken

__all__ = ["DEFAULT_MAX_PARALLELISM", "Governor", "Outcome"]

log = logging.getLogger("connector.governor")

DEFAULT_MAX_PARALLELISM = 8
"""Requests in flight per connection when the server gives no ``x-ms-dop-hint`` (well under the limit of 52)."""

T = TypeVar("T")
R = TypeVar("R")

_BESIDE: ContextVar[bool] = ContextVar("d365_governor_beside", default=False)


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """What one item of :meth:`Governor.map` produced: its ``value``, or the ``error`` it raised (never both).

    Only a cancelled map has items that did not finish: ``started`` False for an item never begun, ``finished`` False
    for one still running when the map stopped waiting (aborted, or its grace period over).
    """

    index: int
    value: R | None = None
    error: Exception | None = None
    started: bool = True
    finished: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None and self.finished

    def result(self) -> R:
        """The value, or raise the item's error."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # R may itself admit None


class Governor:
    """Shared throttling state of one connection: not-before instant, parallelism limit, retry policy.

    Thread-safe. ``max_parallelism`` is the configured ceiling (connection field ``max_parallelism``); the effective
    limit is lowered by the server's ``x-ms-dop-hint``.
    """

    def __init__(
        self, *, clock: Clock, max_parallelism: int = DEFAULT_MAX_PARALLELISM, policy: RetryPolicy | None = None
    ) -> None:
        if max_parallelism < 1:
            raise ValueError("max_parallelism must be at least 1")
        self._clock = clock
        self._max = max_parallelism
        self._policy = policy or RetryPolicy()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._beside = 0  # of which in the place beside the limit (:meth:`beside`)
        self._peak = 0
        self._not_before = float("-inf")
        self._dop_hint: int | None = None
        self._answered = False
        self._caps: list[int] = []  # the runs' own caps (:meth:`capped`), the lowest applies
        self._throttle_listeners: list[Callable[[float], None]] = []

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    @property
    def max_parallelism(self) -> int:
        return self._max

    @property
    def dop_hint(self) -> int | None:
        """The last ``x-ms-dop-hint`` Dataverse sent, or None before any."""
        return self._dop_hint

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        with self._cond:
            return self._limit()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def peak(self) -> int:
        """The most requests that were ever in flight at once (for tests and benchmarks)."""
        return self._peak

    @property
    def not_before(self) -> float:
        """No request leaves before this instant on the clock's monotonic time (minus infinity when not throttled)."""
        return self._not_before

    def _limit(self) -> int:
        if not self._answered:
            return 1
        limit = min(self._max, self._dop_hint) if self._dop_hint else self._max
        return min(limit, *self._caps) if self._caps else limit

    @contextmanager
    def capped(self, requests: int) -> Iterator[None]:
        """At most ``requests`` in flight on this connection while the block runs (a run's own request cap, e.g. a
        sync's ``parallelism``); never raises the limit above ``max_parallelism`` or the server's hint."""
        if requests < 1:
            raise ValueError("a cap must be at least 1 request")
        with self._cond:
            self._caps.append(requests)
        try:
            yield
        finally:
            with self._cond:
                self._caps.remove(requests)
                self._cond.notify_all()

    def close(self) -> None:
        """Let go of what the governor holds outside the process (nothing here; see the shared governor)."""

    # -- throttling -----------------------------------------------------------------------------------------------

    def throttle(self, seconds: float, *, reason: str = "429") -> None:
        """Hold every request of this connection for ``seconds`` from now (a later instant is never moved earlier)."""
        now = self._clock.monotonic()
        until = now + max(0.0, seconds)
        with self._cond:
            added = until - max(now, self._not_before)
            if until > self._not_before:
                self._not_before = until
                log.debug("throttled (%s): no request for %.1f s", reason, seconds)
            listeners = tuple(self._throttle_listeners) if added > 0 else ()
        for listener in listeners:
            listener(added)

    def watch_throttle(self, listener: Callable[[float], None]) -> Callable[[], None]:
        """Call ``listener(seconds)`` whenever a throttle holds the connection longer (``seconds``: the hold added),
        for progress reports; returns the function that stops it. Every run on the connection waits, so each counts."""
        with self._cond:
            self._throttle_listeners.append(listener)

        def unwatch() -> None:
            with self._cond:
                if listener in self._throttle_listeners:
                    self._throttle_listeners.remove(listener)

        return unwatch

    def wait_until_clear(self) -> float:
        """Sleep until the not-before instant has passed; return how long this thread waited."""
        waited = 0.0
        while True:
            remaining = self._not_before - self._clock.monotonic()
            if remaining <= 0:
                return waited
            self._clock.sleep(remaining)
            waited += remaining

    def observe(self, headers: Mapping[str, str]) -> None:
        """Read ``x-ms-dop-hint`` from a response; any answer ends the one-at-a-time start."""
        raw = headers.get("x-ms-dop-hint")
        hint: int | None = None
        if raw is not None:
            try:
                hint = int(str(raw).strip())
            except ValueError:
                hint = None
        with self._cond:
            changed = not self._answered or (hint is not None and hint >= 1 and hint != self._dop_hint)
            self._answered = True
            if hint is not None and hint >= 1:
                if hint != self._dop_hint:
                    log.debug("x-ms-dop-hint %d: at most %d requests in flight", hint, min(self._max, hint))
                self._dop_hint = hint
            if changed:
                self._cond.notify_all()

    @contextmanager
    def beside(self) -> Iterator[None]:
        """The sends of this block (on this thread) take the one place beside the limit, once the server has answered
        and while no run caps the connection (else an ordinary place): see the module's docstring."""
        token = _BESIDE.set(True)
        try:
            yield
        finally:
            _BESIDE.reset(token)

    def _beside_place(self) -> bool:
        return _BESIDE.get() and self._answered and not self._caps

    def _full(self, beside: bool) -> bool:
        """No place of the kind asked for is free. Under a run's cap every request counts, a read beside that began
        before the cap included: a cap is never exceeded."""
        if beside:
            return self._beside >= 1
        if self._caps and self._in_flight >= min(self._caps):
            return True
        return self._in_flight - self._beside >= self._limit()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the allowed in-flight places for one send, once the connection is not throttled."""
        while True:
            self.wait_until_clear()
            with self._cond:
                beside = self._beside_place()
                while self._full(beside):
                    self._cond.wait()
                    beside = self._beside_place()
                if self._clock.monotonic() < self._not_before:
                    continue  # throttled by another thread while this one waited for a place
                self._in_flight += 1
                self._beside += beside
                self._peak = max(self._peak, self._in_flight)
                break
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._beside -= beside
                self._cond.notify_all()

    # -- bulk work --------------------------------------------------------------------------------------------------

    def map(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        cancel: CancellationToken | None = None,
        on_outcome: Callable[[Outcome[R]], None] | None = None,
    ) -> list[Outcome[R]]:
        """Run ``fn`` on every item at the allowed parallelism; one :class:`Outcome` per item, in the items' order.

        An item's exception is kept in its outcome and never stops the others. The worker threads are bounded by
        ``max_parallelism``, and an item starts only while fewer items than the allowed requests in flight run (the
        server's hint), so no item waits for a request slot with its work begun; its requests take :meth:`slot`s.
        ``on_outcome`` is called on the calling thread for each item that finished, as it finishes (progress). Once
        ``cancel`` is cancelled no item starts; the items running are waited for, unless it is aborted or its grace
        period ends, in which case the map returns at once and those items are left to finish unobserved.
        """
        work = list(items)
        outcomes: dict[int, Outcome[R]] = {}

        def finished(_: T, outcome: Outcome[R]) -> None:
            outcomes[outcome.index] = outcome
            if on_outcome is not None:
                on_outcome(outcome)

        for _, outcome in self.stream(fn, work, cancel=cancel, on_outcome=finished, window=len(work)):
            outcomes[outcome.index] = outcome
        return [outcomes.get(i) or Outcome(i, started=False, finished=False) for i in range(len(work))]

    def stream(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        on_outcome: Callable[[T, Outcome[R]], None],
        cancel: CancellationToken | None = None,
        window: int | None = None,
    ) -> list[tuple[T, Outcome[R]]]:
        """:meth:`map` over an iterator, holding at most ``window`` items (default: twice ``max_parallelism``) taken
        from it and not yet finished, so a stream of any length runs in bounded memory.

        ``on_outcome(item, outcome)`` is called on the calling thread for each item that finished, as it finishes, and
        the items are then let go. Returns the items that did not finish (a cancelled or aborted stream): those never
        begun and those still running when it stopped waiting. Once ``cancel`` is cancelled no more items are taken
        from ``items``; the caller accounts for what is left in it.
        """
        window = max(1, window or 2 * self._max)
        running = [0]
        started: dict[int, bool] = {}

        def run(index: int, item: T) -> R:
            with self._cond:  # an item starts when the connection allows one more in flight: a cancel stops the rest
                while running[0] >= self._limit() and not (cancel is not None and cancel.cancelled):
                    self._cond.wait()
                started[index] = True  # before the check: a map that stops waiting now counts it as possibly sent
                if cancel is not None and cancel.cancelled:
                    started[index] = False
                    raise _NotStarted
                running[0] += 1
            try:
                return fn(item)
            finally:
                with self._cond:
                    running[0] -= 1
                    self._cond.notify_all()

        pool = ThreadPoolExecutor(max_workers=min(self._max, window), thread_name_prefix="d365-governor")
        events: queue.SimpleQueue[tuple[int, Future[R]] | None] = queue.SimpleQueue()
        unsubscribe = cancel.subscribe(lambda: events.put(None)) if cancel is not None else None
        pending: dict[int, tuple[T, Future[R]]] = {}
        try:
            _pump(iter(items), pool, run, pending, events, cancel, on_outcome, window)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            if unsubscribe is not None:
                unsubscribe()
        left: list[tuple[T, Outcome[R]]] = []
        for index, (item, future) in sorted(pending.items()):
            outcome = _outcome(index, future) if future.done() else None
            outcome = outcome or Outcome(index, started=started.get(index, False), finished=False)
            if outcome.finished:
                on_outcome(item, outcome)
            else:
                left.append((item, outcome))
        pool.shutdown(wait=not any(o.started for _, o in left), cancel_futures=True)
        return left


class _NotStarted(Exception):
    """Raised in a worker for an item that was not begun because the map was cancelled."""


def _outcome(index: int, future: Future[R]) -> Outcome[R]:
    error = future.exception()
    if error is None:
        return Outcome(index, value=future.result())
    if isinstance(error, _NotStarted):
        return Outcome(index, started=False, finished=False)
    if isinstance(error, Exception):
        return Outcome(index, error=error)
    raise error  # KeyboardInterrupt and friends are not an item's failure


def _pump(
    items: Iterator[T],
    pool: ThreadPoolExecutor,
    run: Callable[[int, T], R],
    pending: dict[int, tuple[T, Future[R]]],
    events: queue.SimpleQueue[tuple[int, Future[R]] | None],
    cancel: CancellationToken | None,
    on_outcome: Callable[[T, Outcome[R]], None],
    window: int,
) -> None:
    """Keep up to ``window`` items submitted, take the next as one finishes (woken by each one done and by the
    token), and stop waiting on abort or when the grace period ends; ``pending`` keeps what did not finish."""
    index, exhausted = 0, False
    while True:
        while not exhausted and len(pending) < window and not (cancel is not None and cancel.cancelled):
            item = next(items, _END)
            if item is _END:
                exhausted = True
                break
            future = pool.submit(run, index, item)  # type: ignore[arg-type]  # _END was ruled out just above
            pending[index] = (item, future)  # type: ignore[assignment]
            future.add_done_callback(lambda f, i=index: events.put((i, f)))  # type: ignore[misc]
            index += 1
        stopped = exhausted or (cancel is not None and cancel.cancelled)
        if stopped and all(f.done() for _, f in pending.values()):
            return  # the finished ones not yet reported are reported with what is left
        grace = cancel.grace_left() if cancel is not None else None
        try:
            event = events.get(timeout=grace)
        except queue.Empty:
            event = None
        if event is not None and event[0] in pending:
            outcome = _outcome(event[0], event[1])
            item, _ = pending.pop(event[0])
            if outcome.finished:
                on_outcome(item, outcome)
            else:
                pending[event[0]] = (item, event[1])  # not begun: reported with what is left
        if cancel is not None and (cancel.aborted or cancel.grace_left() == 0.0):
            return


_END = object()
