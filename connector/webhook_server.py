"""Serving the webhook trigger: an ASGI app for platforms to mount, and ``d365 webhook serve`` around it.

Why apart from :mod:`connector.webhook_delivery`: serving goes through the runtime's trigger entry point (validation,
deduplication), so this module imports :mod:`connector.runtime`, which itself imports the dedupe store; keeping the
server out of the modules the runtime needs keeps the import graph free of cycles.

A receiver runs for days and fails quietly (a wrong key answers 401 to Dataverse, not to the person watching), so it
keeps counters of what it received and reports them through the same progress callback as the long actions
(:class:`connector.progress.Progress`, operation ``webhook``, one snapshot per delivery): ``done`` is the deliveries
received and ``counts`` splits them by :data:`COUNTS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from connector.clock import SystemClock
from connector.errors import (
    ConnectionConfigError,
    InputError,
    InputProblem,
    WebhookError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from connector.policy import OperatorPolicy, is_loopback
from connector.progress import Reporter, Tracker
from connector.webhook_dedupe import dedupe_store_for
from connector.webhook_delivery import WebhookConfig, WebhookRequest, check_before_body, too_large

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "COUNTS",
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "KEEP_ALIVE_S",
    "MAX_HEAD_BYTES",
    "EventCallback",
    "create_asgi_app",
    "load_trigger_config",
    "serve",
    "webhook_tracker",
]

log = logging.getLogger("connector.webhooks")  # one logger for the webhook modules: platforms configure it by name

EventCallback = Callable[[dict[str, Any]], None]

DEFAULT_BODY_TIMEOUT_S = 10.0
"""A delivery is at most a few hundred KB (Dataverse trims above 256 KB): seconds are plenty for a real sender, and a
connection trickling its body is cut instead of held."""
DEFAULT_MAX_CONNECTIONS = 100
"""Open connections and requests before uvicorn answers 503 (Dataverse retries a 503 once)."""
KEEP_ALIVE_S = 5
MAX_HEAD_BYTES = 16 * 1024
"""Request line and headers; a delivery's are well under 2 KB."""

COUNTS = (
    "delivered",
    "redeliveries_dropped",
    "refused_verification",
    "refused_payload",
    "refused_size",
    "handler_failed",
)
"""What became of each delivery received: handed on as an event; a redelivery of an event already handed on
(answered 200, dropped); refused for its key or secret (401), its body or method (400, 405, 408 for a body too slow
to arrive, 415, 422, or a trigger configuration that cannot be used: 500), its size (413); or handed to an
``on_event`` that raised (500, retried)."""


def webhook_tracker(progress: Reporter | None) -> Tracker:
    """The counters of one receiver, every one shown from the start (zero until something happens)."""
    tracker = Tracker("webhook", progress, total=None, clock=SystemClock())
    tracker.set(dict.fromkeys(COUNTS, 0), done=0)
    return tracker


def _refusal(exc: WebhookError) -> str:
    if isinstance(exc, WebhookVerificationError):
        return "refused_verification"
    return "refused_size" if exc.status_code == 413 else "refused_payload"


async def _read_body(receive: Callable[[], Awaitable[Mapping[str, Any]]], config: WebhookConfig) -> bytes:
    """The body, counted as it arrives and cut as soon as it passes ``max_body_bytes`` (a chunked body declares no
    length, and a declared one may lie)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise WebhookPayloadError("the sender disconnected before the body was complete", status_code=400)
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > config.max_body_bytes:
            raise too_large(config)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def create_asgi_app(
    config: Mapping[str, Any],
    on_event: EventCallback,
    *,
    runtime: Any = None,
    trigger_id: str = "webhook",
    path: str = "/",
    progress: Reporter | Tracker | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
    policy: OperatorPolicy | None = None,
) -> Any:
    """An ASGI app that answers Dataverse deliveries on ``path`` and hands each verified, new event to ``on_event``.

    Validation (config and event) goes through the runtime's trigger entry point, so a platform mounting this app
    gets exactly what the hook and the schema promise. Errors answer with their status and a short JSON reason that
    never includes the secret; duplicates answer 200 (so Dataverse stops sending) and emit nothing. ``progress``
    hears the counters after each delivery (a reporter, or a :func:`webhook_tracker` the caller opens and closes).

    Nothing is buffered before the method, the key and the declared length pass; the body is then read within
    ``body_timeout`` seconds and cut at ``max_body_bytes``. A refusal that leaves body unread closes the connection,
    so the server does not go on draining what the sender keeps sending. ``policy`` (default: the environment's,
    preset ``hosted``) rules the configuration's ``dedupe_sqlite_path`` and its ``{"env"}``/``{"file"}`` secret.
    """
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from connector.runtime import default_runtime

    rt = runtime or default_runtime()
    tracker = progress if isinstance(progress, Tracker) else webhook_tracker(progress)
    rules = policy if policy is not None else OperatorPolicy.from_env()

    def refuse(exc: WebhookError, *, close: bool = False) -> JSONResponse:
        tracker.advance({_refusal(exc): 1})
        headers = {"connection": "close"} if close else None
        return JSONResponse({"error": exc.kind, "message": exc.message}, status_code=exc.status_code, headers=headers)

    async def receive(request: Request) -> JSONResponse:
        head = WebhookRequest.build(request.method, str(request.url), request.headers.items(), b"")
        try:
            settings = WebhookConfig.from_mapping(rt.trigger_config(trigger_id, config), policy=rules)
            check_before_body(head, settings)
            body = await asyncio.wait_for(_read_body(request.receive, settings), body_timeout)
        except WebhookError as exc:
            return refuse(exc, close=True)
        except TimeoutError:
            slow = f"the body did not arrive within {body_timeout:g} s; the connection is closed"
            return refuse(WebhookPayloadError(slow, status_code=408), close=True)
        try:
            event = rt.handle_trigger(trigger_id, dataclasses.replace(head, body=body), config, policy=rules)
        except WebhookError as exc:
            return refuse(exc)
        if event is None:
            tracker.advance({"redeliveries_dropped": 1})
            return JSONResponse({"accepted": True, "duplicate": True})
        try:
            on_event(event)
        except Exception:
            # not handed on: forget it, so Dataverse's next attempt is not dropped as a redelivery
            rt.forget_trigger_event(trigger_id, config, event, policy=rules)
            log.exception("webhook event handler failed; answering 500 so the delivery is retried")
            tracker.advance({"handler_failed": 1})
            return JSONResponse({"error": "handler", "message": "the event could not be handed on"}, status_code=500)
        tracker.advance({"delivered": 1})
        return JSONResponse({"accepted": True, "duplicate": False})

    from starlette.applications import Starlette

    return Starlette(routes=[Route(path, receive, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])


def load_trigger_config(path: str | Path) -> dict[str, Any]:
    """Read a trigger configuration file; a ``{"file": ...}`` secret is taken relative to the file's folder."""
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"trigger configuration {str(file)!r} is not a readable JSON file ({type(exc).__name__})"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"trigger configuration {str(file)!r} must hold a JSON object")
    secret = data.get("secret")
    if isinstance(secret, Mapping) and isinstance(secret.get("file"), str) and not Path(secret["file"]).is_absolute():
        data["secret"] = {"file": str(file.resolve().parent / secret["file"])}
    return data


def serve(
    runtime: Any,
    config: Mapping[str, Any],
    *,
    connection: Connection | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    path: str = "/",
    public_url: str | None = None,
    on_event: EventCallback,
    on_status: Callable[[dict[str, Any]], None],
    progress: Reporter | None = None,
    policy: OperatorPolicy | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Receive deliveries with uvicorn until interrupted; with a ``connection``, subscribe first and remove on exit.
    ``progress`` hears the counters (:data:`COUNTS`) once listening, after each delivery, and on exit.

    The socket listens before subscribing, so a delivery Dataverse makes while the steps are being registered waits
    in the backlog instead of being refused. ``public_url`` (where Dataverse can reach this receiver) is required
    unless the organization is on loopback (the local emulator), where the local URL is reachable as it is. The
    access log stays off: the WebhookKey travels in the URL's query string.

    Exhaustion limits: a request's head, then its body, must each arrive within ``body_timeout`` seconds; beyond
    ``max_connections`` open connections and requests, uvicorn answers 503 (which Dataverse retries); an idle
    keep-alive connection is closed after :data:`KEEP_ALIVE_S` seconds; request heads are limited to
    :data:`MAX_HEAD_BYTES`.
    """
    import socket

    policy = policy if policy is not None else OperatorPolicy.from_env()
    _check_before_listening(runtime, config, connection, public_url, policy)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    shown_host = f"[{host}]" if ":" in host else host
    local_url = f"http://{shown_host}:{sock.getsockname()[1]}{path}"
    on_status({"listening": local_url})
    tracker = webhook_tracker(progress)
    app = create_asgi_app(
        config, on_event, runtime=runtime, path=path, progress=tracker, body_timeout=body_timeout, policy=policy
    )
    subscription = None
    try:
        if connection is not None:
            subscription = runtime.subscribe_trigger("webhook", config, connection, public_url or local_url)
            on_status({"subscribed": subscription})
        server = _uvicorn_server(app, body_timeout, max_connections)
        with tracker:
            server.run(sockets=[sock])
    finally:
        sock.close()
        if subscription is not None and connection is not None:
            on_status({"unsubscribed": runtime.unsubscribe_trigger("webhook", subscription, connection)})


def _check_before_listening(
    runtime: Any,
    config: Mapping[str, Any],
    connection: Connection | None,
    public_url: str | None,
    policy: OperatorPolicy,
) -> None:
    """Refuse a configuration that cannot serve before anything is bound: found at the first delivery, it would
    answer every delivery 500."""
    validated = runtime.trigger_config("webhook", config)
    try:  # an unset variable, an unreadable file or a source the policy forbids
        WebhookConfig.from_mapping(validated, policy=policy)
    except WebhookError as exc:
        raise InputError([InputProblem("$.secret", exc.message.removeprefix("trigger configuration: "))]) from None
    _open_dedupe_file(validated.get("dedupe_sqlite_path"), policy)
    if (
        connection is not None
        and public_url is None
        and not is_loopback(urlsplit(connection.organization_url).hostname or "")
    ):
        raise WebhookError(
            "--public-url is required with --subscribe: Dataverse must reach this receiver at a public HTTPS URL "
            "(a tunnel or reverse proxy in front of it)"
        )
    if config.get("authentication") == "none":
        log.warning("webhook receiver without authentication: anyone who knows the URL can post events")


def _uvicorn_server(app: Any, body_timeout: float, max_connections: int) -> Any:
    import uvicorn

    class _StoppingServer(uvicorn.Server):
        """uvicorn re-raises SIGINT/SIGTERM once shut down, which would kill the process before it unsubscribes."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()  # the signal did its job (stop serving); the caller cleans up

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http=_protocol_with_head_deadline(body_timeout),
        limit_concurrency=max_connections,
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    return _StoppingServer(config)


def _protocol_with_head_deadline(seconds: float) -> type[Any]:
    """uvicorn's h11 protocol, closing a connection whose next request head has not arrived within ``seconds`` of
    opening or of the last answer: uvicorn itself waits for a head for ever, so a few hundred connections that
    never finish their headers would hold every slot of ``limit_concurrency`` (new deliveries: 503)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_deadline()

        def _arm_head_deadline(self) -> None:
            self.loop.call_later(seconds, self._head_late, self.cycle)

        def _head_late(self, cycle: Any) -> None:
            if self.cycle is cycle and not self.transport.is_closing():  # no new request since the timer was set
                self.transport.close()

    return HeadDeadline


def _open_dedupe_file(path: str | None, policy: OperatorPolicy | None) -> None:
    """Refuse, before listening, a deduplication file the policy forbids or SQLite cannot open: found only at the
    first delivery, it would answer every delivery 500."""
    if not path:
        return
    try:
        dedupe_store_for(None, path, policy).close()
    except ConnectionConfigError as exc:
        raise InputError([InputProblem("$.dedupe_sqlite_path", exc.message)]) from None
    except sqlite3.Error as exc:
        problem = f"{path!r} cannot be opened as a SQLite file ({exc}): check that its folder exists and is writable"
        raise InputError([InputProblem("$.dedupe_sqlite_path", problem)]) from None
