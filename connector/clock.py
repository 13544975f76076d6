"""Time as a dependency, so retries, token expiry and Retry-After waits can be tested without really sleeping.

Everything in ``connector/`` that waits or compares times takes a :class:`Clock`; production code gets
:class:`SystemClock`, tests get :class:`FakeClock`, whose ``sleep`` advances the clock and records the wait.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time for durations and deadlines, wall time for token ``exp`` claims, and a way to wait."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences are meaningful."""

    def time(self) -> float:
        """Seconds since the Unix epoch, to compare with JWT ``exp`` and ``iat`` claims."""

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock for tests: ``sleep`` returns at once after moving time forward and recording how long it was asked.

    Wall time and monotonic time move together, starting at ``start`` (a plausible epoch, so JWT ``exp`` claims built
    from ``time()`` look real). Thread-safe, so concurrent callers may share one.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def time(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward without recording a sleep (time that passed while the code under test did nothing)."""
        with self._lock:
            self._now += seconds
