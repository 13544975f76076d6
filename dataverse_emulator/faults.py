"""Fault injection: reproducible 503s (with and without Retry-After), 502s, dropped connections, and writes that
commit before the connection drops.

Why a seeded generator drawn a fixed number of times per request: the same seed and the same sequence of Web API
requests must give the same faults, whatever the faults were, so a client's retry test can be replayed exactly.
Only Web API paths (``/api/data/``) are faulted: token and admin endpoints stay reliable so a test can always reach
the API and read the log. Dropping a connection needs the server's transport, which ASGI does not expose; uvicorn's
``send`` is a bound method of its per-request cycle, which holds it (``EmulatorApp`` keeps that ``send`` in the scope).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KINDS = ("503_retry_after", "503", "502", "drop", "commit_then_drop")
RETRY_AFTER_S = 2.0
RAW_SEND = "dv.raw_send"


class EmulatorApp(Starlette):
    """Starlette, keeping the server's own ``send`` in the scope so a fault can close the transport."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


class FaultPlan:
    """The seeded fault sequence: one ``(roll, kind)`` draw per Web API request, in arrival order."""

    def __init__(self, rate: float, seed: int | None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fault rate must be between 0 and 1")
        self.rate = rate
        self.rng = random.Random(f"faults-{seed}")

    def next(self) -> str | None:
        """The fault for the next request, or None (both numbers are always drawn, so the sequence is stable)."""
        roll, pick = self.rng.random(), self.rng.randrange(len(KINDS))
        return KINDS[pick] if roll < self.rate else None


async def drop_connection(scope: Scope) -> None:
    """Close the client's connection without an answer (abort: no FIN handshake, no bytes)."""
    raw = scope.get(RAW_SEND)
    cycle = getattr(raw, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:  # not served by uvicorn (an in-process transport): nothing to close
        raise ConnectionAbortedError("emulated dropped connection")
    transport.abort()
    cycle.disconnected = True  # uvicorn then sends no 500 for "returned without starting response"
    await asyncio.sleep(0)


class FaultMiddleware:
    """Injects the planned fault for each Web API request and records it in the request log (``fault``)."""

    def __init__(self, app: ASGIApp, plan: FaultPlan, time_scale: float = 1.0) -> None:
        self.app = app
        self.plan = plan
        self.retry_after = max(1, math.ceil(RETRY_AFTER_S / time_scale))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/data"):
            await self.app(scope, receive, send)
            return
        kind = self.plan.next()
        if kind is None:
            await self.app(scope, receive, send)
            return
        entry: dict[str, Any] | None = scope.setdefault("state", {}).get("log_entry")
        if entry is not None:
            entry["fault"] = kind
        if kind == "drop":
            await drop_connection(scope)
            return
        if kind == "commit_then_drop":

            async def swallow(message: Message) -> None:
                if message["type"] == "http.response.start" and entry is not None:
                    entry["unsent_status"] = message["status"]

            await self.app(scope, receive, swallow)
            await drop_connection(scope)
            return
        status = 502 if kind == "502" else 503
        message = "Bad Gateway" if status == 502 else "The service is temporarily unavailable. Try again later."
        body = json.dumps({"error": {"code": "", "message": message}}).encode()
        headers = [(b"content-type", b"application/json; odata.metadata=minimal"), (b"odata-version", b"4.0")]
        if kind == "503_retry_after":
            headers.append((b"retry-after", str(self.retry_after).encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
