"""Service protection model: Dataverse's three 429 limits, per application user, on the emulator's injected clock.

Why a middleware that reads the bearer token's claims without verifying them: the limits are kept per user (reference
section 8.1) and must be decided before any handler runs, while the signature check stays where it is (an invalid
token still gets its 401 from the handler, with the rate-limit headers added like on every other response). A
``$batch`` or bulk request counts as one request; its handler reports how many records it touched
(:func:`count_records`) and the request costs what :class:`~.execution.Costs` says for its kind (reference 6.5, 7.3,
15.6): deterministic, so the execution-time limit is reached at the same request every run.

With the model on, a request also *takes* its execution time: its answer leaves no earlier than its cost divided by
``time_scale`` after it was admitted (the records of one request one after another, separate requests side by side up
to the concurrency limit), so one giant request is as slow as Dataverse would make it, and a bulk request whose
records would outlast the 2-minute timeout fails before it writes anything. The wait is real only on the real clock;
with an injected clock it is recorded in ``Throttle.held`` instead, so tests stay sleep-free. ``time_scale`` divides
the window, every ``Retry-After`` and the wait; the execution budget and the costs are durations of the same scale,
so scaling them would cancel out and they are left as configured.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import DataverseError, error_response
from .execution import MAX_MESSAGE_BYTES, Costs, request_kind

CONCURRENCY_RETRY_AFTER_S = 1.0
#: the SQL timeout bulk-operations.md lists for a bulk request too large ("CRM ErrorCode: -2147204783")
TIMEOUT_CODE = "0x80044151"
TIMEOUT_MESSAGE = "Sql error: SQL timeout expired. CRM ErrorCode: -2147204783 Sql ErrorCode: -2146232060 Sql Number: -2"
#: troubleshoot-plug-in.md: -2147220970
MESSAGE_SIZE_CODE = "0x80040216"


class Clock:
    """The injected clock plus an offset that ``POST /_emulator/clock`` advances, so tests of waits never sleep."""

    def __init__(self, base: Callable[[], float] | None = None) -> None:
        self.base = base or time.time
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base() + self.offset

    def advance(self, seconds: float) -> float:
        """Move emulated time forward (never back: windows and token expiries assume a monotonic clock)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds
        return self()


@dataclass(frozen=True)
class Limits:
    """One set of limits: the sliding window, requests and execution seconds within it, concurrent requests."""

    window_s: float
    max_requests: int
    max_exec_s: float
    max_concurrency: int


#: ``dataverse`` = the documented defaults (api-limits.md); ``strict`` = small numbers a 2-core test can reach (2 s of
#: execution: about 1,400 bulk records or 280 single requests at the calibrated costs).
PRESETS: dict[str, Limits] = {
    "dataverse": Limits(300, 6000, 1200, 52),
    "strict": Limits(10, 200, 2, 8),
}


def limits_for(
    mode: str,
    window_s: float | None = None,
    max_requests: int | None = None,
    max_exec_s: float | None = None,
    max_concurrency: int | None = None,
) -> Limits:
    """The preset for ``mode`` (``off`` reports the Dataverse numbers in headers but never refuses), overridden."""
    if mode not in ("off", *PRESETS):
        raise ValueError(f"throttle mode must be off, dataverse or strict, not {mode!r}")
    base = PRESETS["strict" if mode == "strict" else "dataverse"]
    return Limits(
        window_s if window_s is not None else base.window_s,
        max_requests if max_requests is not None else base.max_requests,
        max_exec_s if max_exec_s is not None else base.max_exec_s,
        max_concurrency if max_concurrency is not None else base.max_concurrency,
    )


def requests_exceeded(limits: Limits) -> tuple[str, str]:
    return (
        "0x80072322",
        f"Number of requests exceeded the limit of {limits.max_requests} over time window of "
        f"{_num(limits.window_s)} seconds.",
    )


def exec_exceeded(limits: Limits) -> tuple[str, str]:
    # the double space before "milliseconds" is in the documented message
    return (
        "0x80072321",
        f"Combined execution time of incoming requests exceeded limit of {round(limits.max_exec_s * 1000):,}  "
        f"milliseconds over time window of {_num(limits.window_s)} seconds. Decrease number of concurrent requests "
        "or reduce the duration of requests and try again later.",
    )


def concurrency_exceeded(limits: Limits) -> tuple[str, str]:
    return "0x80072326", f"Number of concurrent requests exceeded the limit of {limits.max_concurrency}."


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class _Bucket:
    """One user's sliding window: (time, execution seconds) per admitted request, and the requests in flight."""

    __slots__ = ("entries", "exec_total", "in_flight", "refused", "retry_s", "retry_until")

    def __init__(self) -> None:
        self.entries: deque[list[float]] = deque()
        self.exec_total = 0.0
        self.in_flight = 0
        self.refused: tuple[str, str] | None = None  # the last request or execution-time refusal
        self.retry_s = 0  # the last Retry-After given, and when it runs out
        self.retry_until = 0.0


def extended_retry_after(b: _Bucket, now: float, wait: float, window: float) -> int:
    """The Retry-After of a request or execution-time refusal: the wait until the window frees, doubled when the
    client came back before the previous Retry-After ran out, never longer than the window.

    Documented: "If a client application continues to send demanding requests after it receives initial 429
    responses, the Retry-After interval will be extended" (service-protection-retry-operations.md, dynamics365
    fin-ops docs; reference 8.2). By how much is not: doubling per early retry, capped at the window, is a GUESS."""
    retry = max(1, math.ceil(wait))
    if now < b.retry_until:
        retry = max(retry, 2 * b.retry_s)
    retry = min(retry, max(1, math.ceil(window)))
    b.retry_s, b.retry_until = retry, now + retry
    return retry


class Throttle:
    """Admission and accounting; one per emulator."""

    def __init__(
        self,
        mode: str,
        limits: Limits,
        clock: Callable[[], float],
        time_scale: float,
        dop_hint: int,
        costs: Costs | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.mode = mode
        self.limits = limits
        self.clock = clock
        self.time_scale = time_scale
        self.dop_hint = dop_hint
        self.costs = costs or Costs()
        self.max_message_bytes = MAX_MESSAGE_BYTES
        self.buckets: dict[str, _Bucket] = {}
        # the injected clock of a test: the execution wait is recorded (wall-clock seconds), never slept
        self.real_time = getattr(clock, "base", None) is time.time
        self.held: deque[float] = deque(maxlen=100_000)

    @property
    def window(self) -> float:
        """The window in emulated-clock seconds (the configured window divided by the time scale)."""
        return self.limits.window_s / self.time_scale

    def _prune(self, b: _Bucket, now: float) -> None:
        edge = now - self.window
        while b.entries and b.entries[0][0] <= edge:
            b.exec_total -= b.entries.popleft()[1]
        if not b.entries:
            b.exec_total = 0.0

    def admit(self, user: str) -> tuple[DataverseError | None, list[float] | None]:
        """Refuse with a 429 (and Retry-After) or count the request; returns the window entry to charge later."""
        now = self.clock()
        b = self.buckets.setdefault(user, _Bucket())
        self._prune(b, now)
        lim = self.limits
        if self.mode != "off":
            refusal: tuple[str, str] | None = None
            wait = 0.0
            if b.in_flight >= lim.max_concurrency:
                refusal, wait = concurrency_exceeded(lim), CONCURRENCY_RETRY_AFTER_S / self.time_scale
            elif len(b.entries) >= lim.max_requests:
                refusal = requests_exceeded(lim)
                # the oldest requests must leave the window until one slot is free
                wait = b.entries[len(b.entries) - lim.max_requests][0] + self.window - now
            elif b.exec_total >= lim.max_exec_s:
                refusal = exec_exceeded(lim)
                total = b.exec_total
                for t, cost in b.entries:
                    total -= cost
                    if total < lim.max_exec_s:
                        wait = t + self.window - now
                        break
            elif now < b.retry_until and b.refused is not None:  # an extended Retry-After has not run out yet
                refusal = b.refused
            if refusal is not None and b.in_flight < lim.max_concurrency:  # concurrency refusals are never extended
                b.refused = refusal
                wait = extended_retry_after(b, now, wait, self.window)
            if refusal is not None:
                retry = max(1, math.ceil(wait))
                return DataverseError(429, refusal[0], refusal[1], {"Retry-After": str(retry)}), None
        # one operation is charged at once, the rest of the request's cost when it finishes (its records are known)
        first = self.costs.operation_s
        entry = [now, first]
        b.entries.append(entry)
        b.exec_total += first
        b.in_flight += 1
        return None, entry

    def finish(self, user: str, entry: list[float], cost_s: float) -> None:
        """Charge the rest of the request's execution time and leave the concurrency count."""
        b = self.buckets.get(user)
        if b is None:  # the windows were reset while this request ran
            return
        b.in_flight -= 1
        extra = cost_s - entry[1]
        if extra > 0 and b.entries and entry[0] > self.clock() - self.window:
            entry[1] += extra
            b.exec_total += extra

    async def hold(self, cost_s: float, elapsed_s: float) -> None:
        """Keep the answer until the request has taken its execution time (``cost_s`` / ``time_scale`` wall-clock
        seconds, of which ``elapsed_s`` have passed): slept on the real clock, recorded on an injected one."""
        if self.mode == "off":
            return
        seconds = cost_s / self.time_scale
        self.held.append(seconds)
        if self.real_time and seconds > elapsed_s:
            await asyncio.sleep(seconds - elapsed_s)

    def reset(self) -> None:
        """Forget every window (admin reset): requests in flight are no longer counted either."""
        self.buckets.clear()

    def headers(self, user: str | None) -> list[tuple[bytes, bytes]]:
        """``x-ms-dop-hint`` and the two ``x-ms-ratelimit-*`` debugging headers (reference 8.3)."""
        lim = self.limits
        if user is not None and user in self.buckets:
            b = self.buckets[user]
            self._prune(b, self.clock())
            burst = max(0, lim.max_requests - len(b.entries))
            remaining = max(0.0, lim.max_exec_s - b.exec_total)
        else:
            burst, remaining = lim.max_requests, lim.max_exec_s
        return [
            (b"x-ms-dop-hint", str(self.dop_hint).encode()),
            (b"x-ms-ratelimit-burst-remaining-xrm-requests", str(burst).encode()),
            (b"x-ms-ratelimit-time-remaining-xrm-requests", f"{remaining:,.2f}".encode()),
        ]


def count_records(request: Request, records: int) -> None:
    """Called by the ``$batch`` and bulk handlers before they write: the request's record count for its execution time,
    and the 2-minute timeout refused up front (nothing written), since the model knows the request would outlast it."""
    state = request.scope.setdefault("state", {})
    state["dv_records"] = records
    th: Throttle | None = state.get("dv_throttle")
    if th is None or th.mode == "off":
        return
    if th.costs.of(state.get("dv_kind", "single"), records) > th.costs.timeout_s:
        state["dv_exec_s"] = th.costs.timeout_s
        raise DataverseError(500, TIMEOUT_CODE, TIMEOUT_MESSAGE)


def message_too_large(th: Throttle, scope: Scope) -> DataverseError | None:
    """The 116.85 MB limit, which applies only when a plug-in (here: a registered step) could receive the request and
    the caller did not ask to bypass custom plug-in execution (troubleshoot-plug-in.md, bulk-operations.md)."""
    if th.mode == "off":
        return None
    size = 0
    bypass = False
    for k, v in scope.get("headers", []):
        name = k.lower()
        if name == b"content-length" and v.isdigit():
            size = int(v)
        elif name == b"mscrm.bypasscustompluginexecution" and v.strip().lower() == b"true":
            bypass = True
    if size <= th.max_message_bytes or bypass or not _steps_registered(scope):
        return None
    return DataverseError(
        500,
        MESSAGE_SIZE_CODE,
        f"Message size exceeded when sending context to Sandbox. Message size: {size / 1024 / 1024:.2f} Mb",
    )


def _steps_registered(scope: Scope) -> bool:
    app = scope.get("app")
    emu = getattr(getattr(app, "state", None), "emulator", None)
    if emu is None:
        return False
    return bool(emu.store.query("SELECT 1 FROM sdkmessageprocessingstep LIMIT 1", []))


def token_user(scope: Scope) -> str | None:
    """The application (``appid``) or person (``oid``) a bearer token names, read without verification: only the
    bucket is chosen here, the handler still verifies the token."""
    for k, v in scope.get("headers", []):
        if k.lower() == b"authorization":
            value = v.decode("latin-1")
            if not value.lower().startswith("bearer "):
                return None
            parts = value[7:].strip().split(".")
            if len(parts) != 3:
                return None
            try:
                payload = parts[1] + "=" * (-len(parts[1]) % 4)
                claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload))
            except ValueError:
                return None
            ident = claims.get("appid") or claims.get("oid")
            return str(ident) if ident else None
    return None


class ThrottleMiddleware:
    """Applies :class:`Throttle` to Web API requests and adds its headers to every Web API response."""

    def __init__(self, app: ASGIApp, throttle: Throttle, latency_s: float = 0.0) -> None:
        self.app = app
        self.throttle = throttle
        # the emulated latency is spent while the request is admitted, so concurrent requests really overlap
        self.latency_s = latency_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/data"):
            await self.app(scope, receive, send)
            return
        th = self.throttle
        user = token_user(scope)
        state = scope.setdefault("state", {})
        entry_log = state.get("log_entry")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"x-ms-dop-hint")]
                message = {**message, "headers": headers + th.headers(user)}
            await send(message)

        if user is None:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            await self.app(scope, receive, send_with_headers)
            return
        refusal, entry = th.admit(user)
        if refusal is not None:
            if entry_log is not None:
                entry_log["error_code"] = refusal.code
                entry_log["throttled"] = refusal.code
            await error_response(refusal)(scope, receive, send_with_headers)
            return
        assert entry is not None
        kind = request_kind(scope["path"])
        state["dv_throttle"], state["dv_kind"] = th, kind
        started = time.perf_counter()

        def cost() -> float:
            return float(state.get("dv_exec_s") or th.costs.of(kind, int(state.get("dv_records", 1))))

        async def send_when_executed(message: Message) -> None:
            if message["type"] == "http.response.start":  # the answer leaves once the request has taken its time
                await th.hold(cost(), time.perf_counter() - started)
            await send_with_headers(message)

        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
                started += self.latency_s
            too_large = message_too_large(th, scope)
            if too_large is not None:
                await error_response(too_large)(scope, receive, send_when_executed)
                return
            if kind == "bulk" and th.mode != "off" and th.real_time:
                receive = await _midway(th, receive, started)
            await self.app(scope, receive, send_when_executed)
        finally:
            th.finish(user, entry, cost())


async def _midway(th: Throttle, receive: Receive, started: float) -> Receive:
    """Wait, before a bulk message runs, until half of its modelled execution time has passed; returns what replays
    its body (read here to count its targets).

    Why: the emulator writes a request's rows at once, holding its one store, where Dataverse runs them one after
    another over the request's whole duration, side by side with other requests. Done on arrival, that SQLite work
    (about 80 ms for 1,000 rows) met the reads clients send as their previous requests end, which then waited for it;
    in the middle of a request that takes seconds it meets almost nothing, and it is over long before the answer is
    due. A body that cannot be read as targets runs at once (its handler answers the error)."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: the handler meets it as it would have
            return _replay(None, message)
        body += message.get("body", b"")
        more = bool(message.get("more_body"))
    try:
        targets = json.loads(body).get("Targets")
    except (ValueError, AttributeError):
        targets = None
    if isinstance(targets, list):
        half = th.costs.of("bulk", len(targets)) / th.time_scale / 2
        wait = half - (time.perf_counter() - started)
        if wait > 0:
            await asyncio.sleep(wait)
    return _replay(body, {"type": "http.disconnect"})


def _replay(body: bytes | None, then: Message) -> Receive:
    """A ``receive`` that hands the body already read over once (if any), then ``then``."""
    sent = body is None

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return then
        sent = True
        return {"type": "http.request", "body": body or b"", "more_body": False}

    return receive
