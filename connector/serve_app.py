"""``d365 serve``'s ASGI app: the actions, data sources, jobs, connections and triggers of one runtime over HTTP.

Why an app over the runtime rather than its own checks: validation and dispatch are :class:`connector.runtime.Runtime`'s
(``check_schema`` before the connection is looked up, then ``run_action``), and errors are the CLI's, mapped to
problem details by :mod:`connector.serve_problems`; the server adds only HTTP. Request bodies are read with
:mod:`connector.strict_json` (``NaN``, depth, lone surrogates refused with their place). The synchronous library runs
on worker threads, so one slow action never holds the event loop. The contract is in the README ("Runtime and
playground") and in ``GET /openapi.json`` (:mod:`connector.serve_openapi`).

What lives only in memory, by design: jobs (:mod:`connector.serve_jobs`, cancelled on shutdown), browser sessions,
sign-ins in progress, and the last :data:`MAX_EVENTS` webhook events (``GET /events?after=SEQ``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from connector import strict_json
from connector.cli_progress import INTERRUPTIBLE
from connector.errors import ConnectorError, InputError, InputProblem
from connector.progress import CancellationToken, Reporter
from connector.runtime import Runtime
from connector.serve_auth import ASGIApp, AuthGate, Receive, Scope, Send
from connector.serve_connections import Connections
from connector.serve_jobs import Jobs
from connector.serve_openapi import openapi_document
from connector.serve_problems import problem, problem_of, problem_response

__all__ = ["MAX_BODY_BYTES", "MAX_EVENTS", "PLAYGROUND_DIR", "ServeState", "create_app"]

MAX_BODY_BYTES = 64 * 1024 * 1024
"""A request body beyond this is refused (413): a 5,000-row write is a few MB."""
MAX_EVENTS = 1000
"""Webhook events kept for ``GET /events``, newest last; older ones are dropped."""
PLAYGROUND_DIR = Path(__file__).resolve().parent / "playground"
WEBHOOK_PREFIX = "/triggers/webhook/"
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)


@dataclass
class ServeState:
    """Everything one server holds: the runtime, its connections, jobs, webhook receivers and events."""

    runtime: Runtime
    connections: Connections
    gate: AuthGate
    jobs: Jobs = field(default_factory=Jobs)
    webhooks: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    next_seq: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_event(self, connection: str, trigger: str, event: dict[str, Any]) -> None:
        received = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        with self.lock:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
            self.events.append(
                {"seq": seq, "connection": connection, "trigger": trigger, "received_at": received, "event": event}
            )


async def _body(request: Request) -> Any:
    """The request's JSON body, strictly read; too large is 413, not JSON is 422 naming the place."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge()
        chunks.append(chunk)
    try:
        return strict_json.loads(b"".join(chunks) or b"null")
    except strict_json.StrictJsonError as exc:
        raise InputError([InputProblem(exc.path, f"the request body is not JSON we accept: {exc.reason}")]) from None


class _TooLarge(Exception):
    pass


def _object(body: Any, required: tuple[str, ...]) -> dict[str, Any]:
    """The body as an object with its required members; every missing one named."""
    if not isinstance(body, dict):
        raise InputError([InputProblem("$", "the request body must be a JSON object")])
    missing = [InputProblem(f"${name}", f"{name} is required") for name in required if name not in body]
    if missing:
        raise InputError(missing)
    return body


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise InputError([InputProblem(f"${name}", f"{name} must be a string")])
    return value


def _handled(root: str = "/inputs") -> Callable[[Callable[..., Any]], Callable[[Request], Any]]:
    """Turn an endpoint's errors into problem responses (``root``: where inputs sit in the body)."""

    def wrap(endpoint: Callable[..., Any]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            try:
                result: Response = await endpoint(request)
            except _TooLarge:
                return problem_response(problem(413, "body too large", f"at most {MAX_BODY_BYTES:,} bytes"))
            except Exception as exc:  # every failure answers a problem; 500 only for our bugs
                if not isinstance(exc, ConnectorError):
                    _log_bug(exc)
                return problem_response(problem_of(exc, root))
            return result

        return handler

    return wrap


def _log_bug(exc: BaseException) -> None:
    import logging

    logging.getLogger("connector.serve").error("request failed", exc_info=exc)


def _not_found(detail: str) -> Response:
    return problem_response(problem(404, "not found", detail))


def _action_entry(runtime: Runtime, action_id: str) -> dict[str, Any]:
    info = runtime.manifest.actions[action_id]
    bundled = runtime.bundled_schemas(action_id)
    entry: dict[str, Any] = {
        "id": action_id,
        "title": info.label,
        "description": info.description,
        "input_schema": bundled["input"],
        "output_schema": bundled["output"],
        "long_running": action_id in INTERRUPTIBLE,
    }
    if info.category:
        entry["category"] = info.category
    return entry


def _routes(state: ServeState) -> list[Route | Mount]:
    runtime, connections = state.runtime, state.connections

    async def actions(request: Request) -> Response:
        listed = await asyncio.to_thread(lambda: [_action_entry(runtime, a) for a in sorted(runtime.manifest.actions)])
        return JSONResponse({"actions": listed})

    async def action(request: Request) -> Response:
        action_id = request.path_params["id"]
        if action_id not in runtime.manifest.actions:
            return _not_found(f"no action {action_id!r}: GET /actions lists them")
        return JSONResponse(_action_entry(runtime, action_id))

    @_handled()
    async def run(request: Request) -> Response:
        action_id = request.path_params["id"]
        if action_id not in runtime.manifest.actions:
            return _not_found(f"no action {action_id!r}: GET /actions lists them")
        body = _object(await _body(request), ("connection", "inputs"))
        inputs = runtime.check_schema(action_id, body["inputs"])  # refused before the connection is looked up
        served = connections.get(_text(body, "connection"))

        def call() -> dict[str, Any]:
            with served.exchanges.recording() as exchange:
                output = runtime.run_action(action_id, inputs, served.connection)
            return {"output": output, "exchange": exchange}

        return JSONResponse(await asyncio.to_thread(call))

    return [
        Route("/actions", actions),
        Route("/actions/{id}", action, methods=["GET"]),
        Route("/actions/{id}", run, methods=["POST"]),
        *_job_routes(state),
        *_connection_routes(state),
        *_trigger_routes(state),
    ]


def _job_routes(state: ServeState) -> list[Route]:
    runtime, connections, jobs = state.runtime, state.connections, state.jobs

    @_handled()
    async def start_job(request: Request) -> Response:
        body = _object(await _body(request), ("action", "connection", "inputs"))
        action_id = _text(body, "action")
        if action_id not in runtime.manifest.actions:
            raise InputError([InputProblem("$action", f"no action {action_id!r}: GET /actions lists them")])
        inputs = runtime.check_schema(action_id, body["inputs"])
        served = connections.get(_text(body, "connection"))

        def work(job: Any, report: Reporter, cancel: CancellationToken) -> Any:
            return runtime.run_action(action_id, inputs, served.connection, progress=report, cancel=cancel)

        job = jobs.start(action_id, served.name, work)
        return JSONResponse(job.to_dict(), status_code=202)

    async def list_jobs(request: Request) -> Response:
        return JSONResponse({"jobs": [j.to_dict() for j in jobs.all()]})

    async def get_job(request: Request) -> Response:
        job = jobs.get(request.path_params["id"])
        return JSONResponse(job.to_dict()) if job else _not_found("no such job (jobs are kept in memory only)")

    async def cancel_job(request: Request) -> Response:
        job = jobs.cancel(request.path_params["id"])
        if job is None:
            return _not_found("no such job (jobs are kept in memory only)")
        return JSONResponse(job.to_dict(), status_code=202)

    async def data_sources(request: Request) -> Response:
        listed = [
            {"id": d["name"], "title": d.get("label", d["name"]), "description": d.get("description", ""),
             "params_schema": runtime.store.bundled(runtime.manifest.schema_id(d.get("provider", "builtin"),
                                                                               d["params_schema"]))}
            for d in runtime.manifest.document.get("data_sources", [])
        ]  # fmt: skip
        return JSONResponse({"data_sources": listed})

    @_handled(root="/params")
    async def data_source(request: Request) -> Response:
        name = request.path_params["id"]
        known = {d.get("name") for d in runtime.manifest.document.get("data_sources", [])}
        if name not in known:
            return _not_found(f"no data source {name!r}: GET /data-sources lists them")
        body = _object(await _body(request), ("connection",))
        served = connections.get(_text(body, "connection"))
        items = await asyncio.to_thread(runtime.data_source, name, body.get("params", {}), served.connection)
        return JSONResponse({"items": items})

    return [
        Route("/jobs", list_jobs, methods=["GET"]),
        Route("/jobs", start_job, methods=["POST"]),
        Route("/jobs/{id}", get_job, methods=["GET"]),
        Route("/jobs/{id}", cancel_job, methods=["DELETE"]),
        Route("/data-sources", data_sources),
        Route("/data-sources/{id}", data_source, methods=["POST"]),
    ]


def _connection_routes(state: ServeState) -> list[Route]:
    connections = state.connections

    async def list_connections(request: Request) -> Response:
        return JSONResponse({"connections": [s.to_dict() for s in connections.names()]})

    @_handled(root="")
    async def put_connection(request: Request) -> Response:
        body = await _body(request)
        served = await asyncio.to_thread(connections.put, request.path_params["name"], body)
        return JSONResponse(served.to_dict())

    @_handled(root="")
    async def delete_connection(request: Request) -> Response:
        if not await asyncio.to_thread(connections.delete, request.path_params["name"]):
            return _not_found(f"no connection named {request.path_params['name']!r}")
        return Response(status_code=204)

    @_handled(root="")
    async def connect(request: Request) -> Response:
        name = request.path_params["name"]
        redirect = str(request.url_for("oauth_callback", name=name))
        return JSONResponse({"authorize_url": connections.begin(name, redirect)})

    async def callback(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            state_value = request.query_params.get("state", "")
            await asyncio.to_thread(connections.finish, name, str(request.url), state_value)
        except ConnectorError as exc:
            return problem_response(problem_of(exc, ""))
        return RedirectResponse(f"/playground/?connected={name}", status_code=303)

    return [
        Route("/connections", list_connections),
        Route("/connections/{name}", put_connection, methods=["PUT"]),
        Route("/connections/{name}", delete_connection, methods=["DELETE"]),
        Route("/connections/{name}/connect", connect, methods=["POST"]),
        Route("/oauth/callback/{name}", callback, name="oauth_callback"),
    ]


def _trigger_routes(state: ServeState) -> list[Route]:
    runtime = state.runtime

    async def triggers(request: Request) -> Response:
        listed = []
        for entry in runtime.manifest.document.get("triggers", []):
            schema_id = runtime.manifest.schema_id(entry.get("provider", "builtin"), entry["config_schema"])
            listed.append({**entry, "config_schema": runtime.store.bundled(schema_id)})
        return JSONResponse({"triggers": listed})

    @_handled(root="")
    async def events(request: Request) -> Response:
        after_text = request.query_params.get("after", "0")
        if not after_text.isdigit():
            raise InputError([InputProblem("$after", "after is a sequence number (0 or more)")])
        after = int(after_text)
        with state.lock:
            found = [e for e in state.events if e["seq"] > after]
        return JSONResponse({"events": found, "next": found[-1]["seq"] if found else after})

    return [Route("/triggers", triggers), Route("/events", events)]


def _webhooks(state: ServeState, app: ASGIApp) -> ASGIApp:
    """Send ``/triggers/webhook/{connection}`` to that connection's receiver (:mod:`connector.webhook_server`)."""
    from connector.webhook_server import create_asgi_app

    def receiver(name: str, config: Mapping[str, Any]) -> ASGIApp:
        def on_event(event: dict[str, Any]) -> None:
            state.add_event(name, "webhook", event)

        app: ASGIApp = create_asgi_app(
            config, on_event, runtime=state.runtime, path=WEBHOOK_PREFIX + name, policy=state.connections.policy
        )
        return app

    receivers = {name: receiver(name, config) for name, config in state.webhooks.items()}

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(WEBHOOK_PREFIX):
            receiver = receivers.get(path[len(WEBHOOK_PREFIX) :])
            if receiver is None:
                body = problem(404, "not found", "no webhook receiver for this connection (d365 serve --webhook)")
                await problem_response(body)(scope, receive, send)
                return
            await receiver(scope, receive, send)
            return
        await app(scope, receive, send)

    return route


def _page_headers(app: ASGIApp) -> ASGIApp:
    """The playground's pages get a strict CSP (no inline script) and no framing."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/playground"):
            await app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", PAGE_CSP.encode()), (b"x-frame-options", b"DENY"),
                         (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]  # fmt: skip
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped


async def _http_problem(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method) as problem details, like every other error."""
    from starlette.exceptions import HTTPException

    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "the server failed; see its log"
    return problem_response(problem(status, "not found" if status == 404 else "refused", str(detail)))


_EXCEPTION_HANDLERS: dict[Any, Any] = {404: _http_problem, 405: _http_problem, Exception: _http_problem}


def _playground(folder: Path) -> Route | Mount:
    """The built page, or a 404 that says how to build it (h20b's ``make assets``) when the folder is missing."""
    if folder.is_dir():
        return Mount("/playground", StaticFiles(directory=folder, html=True))

    async def missing(request: Request) -> Response:
        return _not_found("the playground is not built into this installation (make assets)")

    return Route("/playground/{path:path}", missing)


def create_app(state: ServeState, *, playground_dir: Path = PLAYGROUND_DIR) -> ASGIApp:
    """The whole server as one ASGI app: auth gate, webhook receivers, page headers, then the routes."""
    document = openapi_document(state.runtime)

    async def root(request: Request) -> Response:
        return RedirectResponse("/playground/", status_code=307)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(state.jobs.shutdown)
            state.connections.close()

    routes: list[Route | Mount] = [
        Route("/", root),
        Route("/healthz", healthz),
        Route("/login", state.gate.login_form, methods=["GET"]),
        Route("/login", state.gate.login, methods=["POST"]),
        Route("/logout", state.gate.logout, methods=["POST"]),
        Route("/openapi.json", openapi),
        *_routes(state),
        _playground(playground_dir),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_EXCEPTION_HANDLERS)
    return state.gate.middleware(_webhooks(state, _page_headers(app)))
