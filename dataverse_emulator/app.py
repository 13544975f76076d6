"""App assembly: the emulator state, the Web API, identity and admin routes, and the middleware stack (request log,
latency, URL length, throttling, faults)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import persisted, sampledata
from .admin import Admin, bootstrap
from .context import MAX_URL
from .dispatch import WebApi
from .emulator import Emulator
from .execution import BULK_RECORD_RATIO, Costs
from .faults import EmulatorApp, FaultMiddleware, FaultPlan
from .identity import IdentityEndpoints
from .throttle import Throttle, ThrottleMiddleware, limits_for

log = logging.getLogger("dataverse_emulator")

# =====================================================================================================================
# Middleware: request log, latency, URL length


class Observe:
    """Pure ASGI middleware: request log with in-flight counts, injected latency, the 32 KB URL limit."""

    def __init__(self, app: ASGIApp, emu: Emulator) -> None:
        self.app = app
        self.emu = emu

    def ended(self, entry: dict[str, Any]) -> None:
        """The answer's end is when its last body byte went to the server, not when the handler returned (work an
        app does after answering is not the client's wait)."""
        entry["end"] = self.emu.clock()
        entry["wall_end"] = time.time()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        emu = self.emu
        raw_path = scope.get("raw_path") or scope["path"].encode()
        qs = scope.get("query_string", b"")
        url_len = len(raw_path) + (len(qs) + 1 if qs else 0)
        path = scope["path"]
        is_admin = path.startswith("/_emulator/")
        entry: dict[str, Any] = {}
        if not is_admin:
            emu.in_flight += 1
            headers = {}
            for k, v in scope["headers"]:
                name = k.decode("latin-1").lower()
                headers[name] = "<redacted>" if name in ("authorization", "x-identity-header") else v.decode("latin-1")
            entry = {
                "method": scope["method"],
                "path": path,
                "query": qs.decode("latin-1"),
                "headers": headers,
                "start": emu.clock(),
                "wall_start": time.time(),
                "in_flight_at_start": emu.in_flight,
                "status": None,
                "error_code": None,
                "retry_after": None,
                "request_id": None,
                "user": None,
            }
            scope.setdefault("state", {})["log_entry"] = entry

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and entry:
                entry["status"] = message["status"]
                for k, v in message.get("headers", []):
                    if k.lower() == b"retry-after":
                        entry["retry_after"] = v.decode()
                    elif k.lower() == b"x-ms-service-request-id":
                        entry["request_id"] = v.decode()
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body") and entry:
                self.ended(entry)  # the last byte is handed to the server: what the client waited for ends here

        try:
            if emu.latency_ms and not is_admin and not path.startswith("/api/data"):  # Web API: ThrottleMiddleware
                await asyncio.sleep(emu.latency_ms / 1000)
            if url_len > MAX_URL and not is_admin:
                resp = JSONResponse(
                    {
                        "error": {
                            "code": "",
                            "message": "The length of the URL for this request exceeds the configured "
                            "maxUrlLength value.",
                        }
                    },
                    status_code=414,
                )
                await resp(scope, receive, send_wrapper)
                return
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # the client closed the connection before its request was read: nobody to answer, not an error
            log.info("client disconnected: %s %s", scope["method"], path)
            if entry:
                entry["client_disconnected"] = True
        finally:
            if entry:
                emu.in_flight -= 1
                if "end" not in entry:  # no complete answer was sent (the client went away)
                    self.ended(entry)
                entry["in_flight_at_end"] = emu.in_flight
                emu.log.append(entry)


def create_app(
    *,
    seed: int | None = None,
    db_path: str | None = None,
    key_activation_s: float = 2.0,
    latency_ms: int = 0,
    token_lifetime_s: int = 3600,
    admin: bool = False,
    clock: Callable[[], float] | None = None,
    throttle: str = "off",
    window_s: float | None = None,
    max_requests: int | None = None,
    max_exec_s: float | None = None,
    max_concurrency: int | None = None,
    dop_hint: int = 4,
    time_scale: float = 1.0,
    fault_rate: float = 0.0,
    bulk_record_cost_ratio: float = BULK_RECORD_RATIO,
    sample_data: bool = False,
) -> Starlette:
    """Build the emulator app. The organization URL is whatever scheme and Host the client used."""
    emu = Emulator(
        seed=seed,
        db_path=db_path,
        key_activation_s=key_activation_s / time_scale,
        latency_ms=latency_ms,
        token_lifetime_s=token_lifetime_s,
        admin=admin,
        clock=clock,
    )
    persisted.load_persisted(emu)  # custom tables and columns of a --db file
    bootstrap(emu)
    if sample_data:
        emu.sample_data, emu.sample_seed = True, seed
        sampledata.load(emu, seed)
    api = WebApi(emu)
    idp = IdentityEndpoints(emu.identity, emu.ensure_user)
    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    routes = [
        Route("/api/data/{path:path}", api.handle, methods=methods),
        Route("/api/data", api.handle, methods=methods),
        Route("/{tenant}/oauth2/v2.0/token", idp.token, methods=["POST"]),
        Route("/{tenant}/oauth2/v2.0/authorize", idp.authorize, methods=["GET"]),
        Route("/metadata/identity/oauth2/token", idp.imds, methods=["GET"]),
        Route("/msi/token", idp.app_service, methods=["GET"]),
    ]
    if admin:
        adm = Admin(emu, api)
        routes += [
            Route("/_emulator/seed", adm.seed, methods=["POST"]),
            Route("/_emulator/requests", adm.requests, methods=["GET"]),
            Route("/_emulator/requests", adm.clear_log, methods=["DELETE"]),
            Route("/_emulator/reset", adm.reset, methods=["POST"]),
            Route("/_emulator/metadata/seed", adm.seed_metadata, methods=["POST"]),
            Route("/_emulator/clock", adm.clock, methods=["GET", "POST"]),
            Route("/_emulator/apps", adm.add_app, methods=["POST"]),
        ]
        routes += emu.webhooks.admin_routes()
    app = EmulatorApp(routes=routes)
    app.state.emulator = emu
    emu.throttle = Throttle(
        throttle,
        limits_for(throttle, window_s, max_requests, max_exec_s, max_concurrency),
        emu.clock,
        time_scale,
        dop_hint,
        Costs(bulk_record_ratio=bulk_record_cost_ratio),
    )
    app.add_middleware(ThrottleMiddleware, throttle=emu.throttle, latency_s=latency_ms / 1000)
    if fault_rate:
        app.add_middleware(FaultMiddleware, plan=FaultPlan(fault_rate, seed), time_scale=time_scale)
    app.add_middleware(Observe, emu=emu)
    return app
