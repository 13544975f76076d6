"""Identity pools: one connection signing in as several application users, each with its own throttle budget.

Why: Dataverse's service protection limits hold per application user (requests, execution time and concurrency per
user, per web server), so a load spread over N users has N budgets, and a 429 tells only the user it names to wait.
A pool keeps one :class:`Identity` per user, each with its own token provider and its own governor (in-process, or
shared on Redis per (organization, application user): :func:`connector.governor_shared.governor_for`).

:class:`PoolGovernor` is the connection's governor: each send takes a place from an identity that is not paused and
has a free place (the least loaded, round robin among ties), and a 429 pauses that identity only; when every identity
is paused the send waits for the earliest to clear (with the shared governor, a pause another process set in Redis
is learnt by the first send of this process that meets it, and the next sends go to the other users). Its parallelism
is the sum of the identities', so the bulk writers (:meth:`~connector.governor.Governor.stream`) keep every identity
busy. :class:`PoolTokens` is the connection's token provider: the token of the identity the calling thread's send was
placed on.

The two agree through the sending thread, with no change to the client: the client takes a slot, reads the token,
reads the answer's headers and reports a throttle on one thread, between that slot and its next one, and the pool
remembers per thread the identity of its last slot. A resend after a 429 takes a new slot, so it may leave through
another identity: the same organization and the same request, so row semantics are unchanged. Anything answered
"as the caller" (WhoAmI, ``get_current_user``, owner defaults of created rows) answers for whichever identity served
that request.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from connector.clock import Clock
from connector.governor import Governor
from connector.governor_shared import SharedGovernor
from connector.transport import RetryPolicy

if TYPE_CHECKING:
    from connector.auth.base import TokenProvider
    from connector.secret import Secret

__all__ = ["Identity", "PoolGovernor", "PoolTokens"]


def _clear_at(governor: Governor) -> float:
    """When an identity's governor lets a send leave: after its own pause, and for a shared governor also after the
    pause of another process that one of this process's sends met in Redis."""
    return governor.paused_until if isinstance(governor, SharedGovernor) else governor.not_before


@dataclass(frozen=True)
class Identity:
    """One application user of a pool: whom it signs in as, its tokens and its own governor."""

    client_id: str
    tokens: TokenProvider
    governor: Governor


class PoolGovernor(Governor):
    """The governor of a pooled connection: spreads sends over its identities' governors (see the module)."""

    def __init__(self, identities: Sequence[Identity], *, clock: Clock, policy: RetryPolicy | None = None) -> None:
        if len(identities) < 2:
            raise ValueError("a pool has at least two identities")
        super().__init__(
            clock=clock, max_parallelism=sum(i.governor.max_parallelism for i in identities), policy=policy
        )
        self._members = tuple(identities)
        self._busy = [0] * len(identities)  # this pool's sends in flight, per identity
        self._next = 0  # where the round robin among equally loaded identities starts
        self._local = threading.local()
        self._counts = [0] * len(identities)  # sends placed, per identity
        for identity in identities:
            identity.governor.watch_throttle(self._relay)

    @property
    def identities(self) -> tuple[Identity, ...]:
        return self._members

    @property
    def sends(self) -> dict[str, int]:
        """Sends placed on each identity (by client id), for tests and benchmarks."""
        with self._cond:
            return {m.client_id: n for m, n in zip(self._members, self._counts, strict=True)}

    def current(self) -> Identity:
        """The identity of the calling thread's last slot (the first identity before any)."""
        identity: Identity = getattr(self._local, "identity", self._members[0])
        return identity

    @property
    def not_before(self) -> float:
        """The instant the first identity clears (a request can leave through it)."""
        return min(_clear_at(m.governor) for m in self._members)

    @property
    def dop_hint(self) -> int | None:
        """The hints of the identities that have one, added up (each user has its own)."""
        hints = [m.governor.dop_hint for m in self._members if m.governor.dop_hint]
        return sum(hints) if hints else None

    def _limit(self) -> int:
        limit = sum(m.governor.limit for m in self._members)
        return min(limit, *self._caps) if self._caps else limit

    def wait_until_clear(self) -> float:
        """Sleep until some identity is not paused; return how long this thread waited."""
        waited = 0.0
        while (remaining := self.not_before - self._clock.monotonic()) > 0:
            self._clock.sleep(remaining)
            waited += remaining
        return waited

    def throttle(self, seconds: float, *, reason: str = "429") -> None:
        """Pause the identity whose answer said so (the calling thread's last), not the others."""
        self.current().governor.throttle(seconds, reason=reason)

    def observe(self, headers: Mapping[str, str]) -> None:
        """The answer's ``x-ms-dop-hint`` is its identity's: that user's limit may have grown."""
        self.current().governor.observe(headers)
        with self._cond:
            self._cond.notify_all()

    def _relay(self, added: float) -> None:
        """An identity was paused longer: the connection's progress listeners hear of it."""
        with self._cond:
            listeners = tuple(self._throttle_listeners)
        for listener in listeners:
            listener(added)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """A place on one identity, chosen by :meth:`_choose`, then that identity's own slot."""
        index = self._choose()
        identity = self._members[index]
        try:
            with identity.governor.slot():
                self._local.identity = identity
                yield
        finally:
            with self._cond:
                self._busy[index] -= 1
                self._in_flight -= 1
                self._cond.notify_all()

    def _choose(self) -> int:
        """The index of an identity not paused with a free place, the least busy (round robin among ties); waits for
        a place to free, or sleeps until the earliest pause ends when every identity is paused."""
        count = len(self._members)
        while True:
            with self._cond:
                now = self._clock.monotonic()
                clear = [i for i, m in enumerate(self._members) if _clear_at(m.governor) <= now]
                free = [i for i in clear if self._busy[i] < self._members[i].governor.limit]
                if free and self._in_flight < self._limit():
                    index = min(free, key=lambda i: (self._busy[i], (i - self._next) % count))
                    self._next = (index + 1) % count
                    self._busy[index] += 1
                    self._counts[index] += 1
                    self._in_flight += 1
                    self._peak = max(self._peak, self._in_flight)
                    return index
                if clear:
                    self._cond.wait()  # every clear identity is full: a send ends and frees a place
                    continue
                wait = self.not_before - now
            self._clock.sleep(wait)

    def close(self) -> None:
        for identity in self._members:
            identity.governor.close()


class PoolTokens:
    """The token provider of a pooled connection: the token of the identity the calling thread's send is placed on."""

    def __init__(self, pool: PoolGovernor) -> None:
        self._pool = pool

    def token(self) -> str:
        return self._pool.current().tokens.token()

    def force_refresh(self, rejected: str | Secret | None = None) -> str:
        return self._pool.current().tokens.force_refresh(rejected)

    def close(self) -> None:
        for identity in self._pool.identities:
            identity.tokens.close()
