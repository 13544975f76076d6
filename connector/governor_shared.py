"""The shared governor: one throttle budget per (organization, application user) across processes, on Redis.

Why: Dataverse's service protection limits count per application user across every process that signs in as it. With
one in-process :class:`~connector.governor.Governor` per worker, each worker learns of a 429 only when it is refused
itself, so N workers keep N times the requests in flight the server asked for and pile up 429s whose ``Retry-After``
grows (the retry storm of ``peers.md``). The shared governor keeps what the in-process one keeps, in Redis, per
(organization, application user):

* a shared **pause**: after a 429 in any process no request of that user leaves, in any process, before its end;
* a distributed **concurrency limit** at ``min(max_parallelism, x-ms-dop-hint)``: a request holds a lease (a member of
  a sorted set scored by its expiry); a background thread renews the process's leases (heartbeats) so a lease outlives
  a long request, and a worker that dies stops renewing, so its leases expire after ``lease_s`` and free their places;
* **request accounting**: requests let through and 429s seen, per user (:meth:`SharedGovernor.stats`).

Every instant comes from Redis ``TIME`` (the machines' clocks may disagree) and every update is one Lua script, so two
workers never both take the last place. The local limits still apply underneath (the in-process governor's slot is
taken first). The Redis URL is the operator's (``D365_GOVERNOR_URL`` in the runner's environment), never a
connection's: a connection names only whom it signs in as. Needs the extra ``redis``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from connector.clock import Clock
from connector.governor import DEFAULT_MAX_PARALLELISM, Governor
from connector.transport import RetryPolicy

__all__ = ["GOVERNOR_URL_ENV", "SharedGovernor", "governor_for"]

GOVERNOR_URL_ENV = "D365_GOVERNOR_URL"
"""The operator's Redis URL for the shared governor; unset means one in-process governor per connection."""

DEFAULT_LEASE_S = 10.0
"""How long a dead worker's places stay taken: long enough that a stalled heartbeat does not drop a live lease."""

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: leases, pause, stats, limit. ARGV: lease id, limit (0: this process has no answer yet, use the one the others
# stored, else 1), lease ms. Returns {1, 0} (taken), {0, ms} (paused ms more) or {0, -1} (every place taken).
_ACQUIRE = (
    _NOW
    + """
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return {0, pause - now} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[2])
if limit > 0 then redis.call('SET', KEYS[4], limit, 'PX', 3600000)
else limit = tonumber(redis.call('GET', KEYS[4]) or '1') end
if redis.call('ZCARD', KEYS[1]) >= limit then return {0, -1} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[3], 'requests', 1)
return {1, 0}
"""
)

# KEYS: leases. ARGV: lease ms, then the lease ids to renew (only those still there: XX).
_RENEW = (
    _NOW
    + """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return #ARGV - 1
"""
)

# KEYS: pause, stats. ARGV: pause ms. Returns the ms the pause grew by (a later end is never moved earlier).
_PAUSE = (
    _NOW
    + """
redis.call('HINCRBY', KEYS[2], 'throttled', 1)
local pause = tonumber(redis.call('GET', KEYS[1]) or '0')
local untl = now + tonumber(ARGV[1])
if untl <= pause then return 0 end
redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[1]) + 1000)
return untl - math.max(now, pause)
"""
)

# KEYS: leases. Returns the leases not yet expired.
_LIVE = _NOW + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')\n"


def scope_of(organization_url: str, user: str) -> str:
    """The Redis key scope of one (organization, application user): a digest, so no identifier is spelled out in
    Redis and no value can break the key's shape."""
    return hashlib.sha256(f"{organization_url.lower()}|{user.lower()}".encode()).hexdigest()[:24]


class SharedGovernor(Governor):
    """A :class:`Governor` whose pause, concurrency limit and accounting are shared on Redis by every process using
    the same (organization, application user)."""

    def __init__(
        self,
        *,
        redis_url: str,
        scope: str,
        clock: Clock,
        max_parallelism: int = DEFAULT_MAX_PARALLELISM,
        policy: RetryPolicy | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        poll_s: float = 0.02,
    ) -> None:
        try:
            import redis
        except ImportError:
            raise RuntimeError(
                f"{GOVERNOR_URL_ENV} is set but the redis package is missing: pip install 'd365-connector[redis]'"
            ) from None
        super().__init__(clock=clock, max_parallelism=max_parallelism, policy=policy)
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self._redis: Any = redis.Redis.from_url(redis_url)
        prefix = f"d365:governor:{{{scope}}}"  # one hash tag: a Redis Cluster keeps the three keys on one node
        self._keys = (f"{prefix}:leases", f"{prefix}:pause", f"{prefix}:stats", f"{prefix}:limit")
        self._lease_ms = max(1, int(lease_s * 1000))
        self._poll_s = poll_s
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._pause = self._redis.register_script(_PAUSE)
        self._live = self._redis.register_script(_LIVE)
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self._heart: threading.Thread | None = None
        self._shared_until = float("-inf")

    @property
    def lease_s(self) -> float:
        return self._lease_ms / 1000

    @property
    def paused_until(self) -> float:
        """When this user's pause ends as this process last learnt it, on its monotonic clock: its own 429s, and the
        pause of another process that a send of this one met in Redis (an identity pool then steers its next sends
        to its other users instead of queueing them behind this one)."""
        with self._cond:
            return max(self._not_before, self._shared_until)

    def throttle(self, seconds: float, *, reason: str = "429") -> None:
        """Pause this process (as the in-process governor does) and every other process of the same user."""
        super().throttle(seconds, reason=reason)
        self._pause(keys=self._keys[1:3], args=[max(0, int(seconds * 1000))])

    @contextmanager
    def slot(self) -> Iterator[None]:
        """A local place, then a shared lease (waiting out the shared pause and for a free place)."""
        with super().slot():
            lease = self._take()
            try:
                yield
            finally:
                with self._held_lock:
                    self._held.discard(lease)
                self._redis.zrem(self._keys[0], lease)

    def _take(self) -> str:
        lease = uuid.uuid4().hex
        while True:
            taken, wait_ms = self._acquire(keys=self._keys, args=[lease, self._shared_limit(), self._lease_ms])
            if int(taken):
                with self._held_lock:
                    self._held.add(lease)
                self._start_heartbeat()
                return lease
            wait = int(wait_ms)
            if wait > 0:
                with self._cond:
                    self._shared_until = max(self._shared_until, self._clock.monotonic() + wait / 1000)
            self._clock.sleep(wait / 1000 if wait > 0 else self._poll_s)

    def _shared_limit(self) -> int:
        """The server's limit for this user (``min(max_parallelism, x-ms-dop-hint)``), or 0 before this process has
        an answer: it then follows the limit the others learnt rather than blocking on one place while they hold
        theirs. A run's own cap (:meth:`capped`) is this process's business, kept by the local slot."""
        with self._cond:
            if not self._answered:
                return 0
            return min(self._max, self._dop_hint) if self._dop_hint else self._max

    def _start_heartbeat(self) -> None:
        with self._held_lock:
            if self._heart is not None:
                return
            self._heart = threading.Thread(target=self._beat, name="d365-governor-heartbeat", daemon=True)
        self._heart.start()

    def _beat(self) -> None:
        """Renew the leases held, three times per lease period, until :meth:`close` (on real time: Redis expires
        on real time)."""
        while not self._stop.wait(self._lease_ms / 3000):
            with self._held_lock:
                held = list(self._held)
            if held:
                self._renew(keys=self._keys[:1], args=[self._lease_ms, *held])

    def stats(self) -> dict[str, int]:
        """Requests let through and 429s reported, by every process of this user, and the leases live now (an expired
        lease is dropped only when a place is next asked for, so it is not counted)."""
        raw = self._redis.hgetall(self._keys[2])
        counts = {k.decode(): int(v) for k, v in raw.items()}
        return {
            "requests": counts.get("requests", 0),
            "throttled": counts.get("throttled", 0),
            "leases": int(self._live(keys=self._keys[:1])),
        }

    def close(self) -> None:
        """Stop the heartbeats and let go of the connection to Redis (leases still held expire)."""
        self._stop.set()
        self._redis.close()


def governor_for(
    *,
    organization_url: str,
    user: str,
    clock: Clock,
    max_parallelism: int,
    policy: RetryPolicy | None,
    environ: dict[str, str] | None = None,
) -> Governor:
    """The governor of one connection: shared on Redis when the operator set ``D365_GOVERNOR_URL`` (and optionally
    ``D365_GOVERNOR_LEASE_S``), else in-process."""
    env = os.environ if environ is None else environ
    url = env.get(GOVERNOR_URL_ENV, "").strip()
    if not url:
        return Governor(clock=clock, max_parallelism=max_parallelism, policy=policy)
    lease = env.get("D365_GOVERNOR_LEASE_S", "").strip()
    try:
        lease_s = float(lease) if lease else DEFAULT_LEASE_S
    except ValueError:
        raise ValueError(f"D365_GOVERNOR_LEASE_S must be a number of seconds such as 10, not {lease!r}") from None
    return SharedGovernor(
        redis_url=url,
        scope=scope_of(organization_url, user),
        clock=clock,
        max_parallelism=max_parallelism,
        policy=policy,
        lease_s=lease_s,
    )
