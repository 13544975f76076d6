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

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from connector.clock import SystemClock
from connector.errors import InputError, InputProblem, WebhookError, WebhookVerificationError
from connector.policy import is_loopback
from connector.progress import Reporter, Tracker
from connector.webhook_delivery import WebhookConfig, WebhookRequest

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["COUNTS", "EventCallback", "create_asgi_app", "load_trigger_config", "serve", "webhook_tracker"]

log = logging.getLogger("connector.webhooks")  # one logger for the webhook modules: platforms configure it by name

EventCallback = Callable[[dict[str, Any]], None]

COUNTS = (
    "delivered",
    "redeliveries_dropped",
    "refused_verification",
    "refused_payload",
    "refused_size",
    "handler_failed",
)
"""What became of each delivery received: handed on as an event; a redelivery of an event already handed on
(answered 200, dropped); refused for its key or secret (401), its body or method (400, 405, 415, 422, or a trigger
configuration that cannot be used: 500), its size (413); or handed to an ``on_event`` that raised (500, retried)."""


def webhook_tracker(progress: Reporter | None) -> Tracker:
    """The counters of one receiver, every one shown from the start (zero until something happens)."""
    tracker = Tracker("webhook", progress, total=None, clock=SystemClock())
    tracker.set(dict.fromkeys(COUNTS, 0), done=0)
    return tracker


def _refusal(exc: WebhookError) -> str:
    if isinstance(exc, WebhookVerificationError):
        return "refused_verification"
    return "refused_size" if exc.status_code == 413 else "refused_payload"


def create_asgi_app(
    config: Mapping[str, Any],
    on_event: EventCallback,
    *,
    runtime: Any = None,
    trigger_id: str = "webhook",
    path: str = "/",
    progress: Reporter | Tracker | None = None,
) -> Any:
    """An ASGI app that answers Dataverse deliveries on ``path`` and hands each verified, new event to ``on_event``.

    Validation (config and event) goes through the runtime's trigger entry point, so a platform mounting this app
    gets exactly what the hook and the schema promise. Errors answer with their status and a short JSON reason that
    never includes the secret; duplicates answer 200 (so Dataverse stops sending) and emit nothing. ``progress``
    hears the counters after each delivery (a reporter, or a :func:`webhook_tracker` the caller opens and closes).
    """
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from connector.runtime import default_runtime

    rt = runtime or default_runtime()
    tracker = progress if isinstance(progress, Tracker) else webhook_tracker(progress)

    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        hook_request = WebhookRequest.build(request.method, str(request.url), request.headers.items(), body)
        try:
            event = rt.handle_trigger(trigger_id, hook_request, config)
        except WebhookError as exc:
            tracker.advance({_refusal(exc): 1})
            return JSONResponse({"error": exc.kind, "message": exc.message}, status_code=exc.status_code)
        if event is None:
            tracker.advance({"redeliveries_dropped": 1})
            return JSONResponse({"accepted": True, "duplicate": True})
        try:
            on_event(event)
        except Exception:
            # not handed on: forget it, so Dataverse's next attempt is not dropped as a redelivery
            rt.forget_trigger_event(trigger_id, config, event)
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
) -> None:
    """Receive deliveries with uvicorn until interrupted; with a ``connection``, subscribe first and remove on exit.
    ``progress`` hears the counters (:data:`COUNTS`) once listening, after each delivery, and on exit.

    The socket listens before subscribing, so a delivery Dataverse makes while the steps are being registered waits
    in the backlog instead of being refused. ``public_url`` (where Dataverse can reach this receiver) is required
    unless the organization is on loopback (the local emulator), where the local URL is reachable as it is. The
    access log stays off: the WebhookKey travels in the URL's query string.
    """
    import socket

    import uvicorn

    class _StoppingServer(uvicorn.Server):
        """uvicorn re-raises SIGINT/SIGTERM once shut down, which would kill the process before it unsubscribes."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()  # the signal did its job (stop serving); the caller cleans up

    validated = runtime.trigger_config("webhook", config)  # refuse a bad configuration before binding anything
    try:  # an unset variable or unreadable file would otherwise answer every delivery 500
        WebhookConfig.from_mapping(validated)
    except WebhookError as exc:
        raise InputError([InputProblem("$.secret", exc.message.removeprefix("trigger configuration: "))]) from None
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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    shown_host = f"[{host}]" if ":" in host else host
    local_url = f"http://{shown_host}:{sock.getsockname()[1]}{path}"
    on_status({"listening": local_url})
    tracker = webhook_tracker(progress)
    app = create_asgi_app(config, on_event, runtime=runtime, path=path, progress=tracker)
    subscription = None
    try:
        if connection is not None:
            subscription = runtime.subscribe_trigger("webhook", config, connection, public_url or local_url)
            on_status({"subscribed": subscription})
        server = _StoppingServer(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", http="h11"))
        with tracker:
            server.run(sockets=[sock])
    finally:
        sock.close()
        if subscription is not None and connection is not None:
            on_status({"unsubscribed": runtime.unsubscribe_trigger("webhook", subscription, connection)})
