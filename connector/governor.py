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
  :class:`~connector.transport.RetryBudget` follows.

The client (:class:`connector.client.DataverseClient`) takes a slot for every send and reports throttling here;
:meth:`Governor.map` runs bulk work at the allowed parallelism. Time and sleeping go through a
:class:`~connector.clock.Clock`, so tests never really wait.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from connector.clock import Clock
from connector.transport import RetryPolicy

__all__ = ["DEFAULT_MAX_PARALLELISM", "Governor", "Outcome"]

log = logging.getLogger("connector.governor")

DEFAULT_MAX_PARALLELISM = 8
"""Requests in flight per connection when the server gives no ``x-ms-dop-hint`` (well under the limit of 52)."""

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """What one item of :meth:`Governor.map` produced: its ``value``, or the ``error`` it raised (never both)."""

    index: int
    value: R | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

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
        self._peak = 0
        self._not_before = float("-inf")
        self._dop_hint: int | None = None
        self._answered = False

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
        return min(self._max, self._dop_hint) if self._dop_hint else self._max

    # -- throttling -----------------------------------------------------------------------------------------------

    def throttle(self, seconds: float, *, reason: str = "429") -> None:
        """Hold every request of this connection for ``seconds`` from now (a later instant is never moved earlier)."""
        until = self._clock.monotonic() + max(0.0, seconds)
        with self._cond:
            if until > self._not_before:
                self._not_before = until
                log.debug("throttled (%s): no request for %.1f s", reason, seconds)

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
    def slot(self) -> Iterator[None]:
        """Hold one of the allowed in-flight places for one send, once the connection is not throttled."""
        while True:
            self.wait_until_clear()
            with self._cond:
                while self._in_flight >= self._limit():
                    self._cond.wait()
                if self._clock.monotonic() < self._not_before:
                    continue  # throttled by another thread while this one waited for a place
                self._in_flight += 1
                self._peak = max(self._peak, self._in_flight)
                break
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    # -- bulk work --------------------------------------------------------------------------------------------------

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[Outcome[R]]:
        """Run ``fn`` on every item at the allowed parallelism; one :class:`Outcome` per item, in the items' order.

        An item's exception is kept in its outcome and never stops the others. The worker threads are bounded by
        ``max_parallelism``; the requests they send are further bounded by the server's hint through :meth:`slot`.
        """
        work = list(items)
        if not work:
            return []
        workers = min(self._max, len(work))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="d365-governor") as pool:
            futures = [pool.submit(fn, item) for item in work]
            outcomes: list[Outcome[R]] = []
            for index, future in enumerate(futures):
                error = future.exception()
                if error is None:
                    outcomes.append(Outcome(index, value=future.result()))
                elif isinstance(error, Exception):
                    outcomes.append(Outcome(index, error=error))
                else:
                    raise error  # KeyboardInterrupt and friends are not an item's failure
        return outcomes
