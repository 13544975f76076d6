"""Who may call the runtime server: a bearer token for programs, a session cookie with CSRF protection for browsers.

Why both: a platform calls the API with ``Authorization: Bearer`` (the token from ``D365_SERVE_TOKEN`` or a file), and
a browser cannot be handed a header, so ``POST /login`` trades the token for an HttpOnly, SameSite=Strict session
cookie. A cookie rides along with any request the browser makes, even one another site triggers, so every
cookie-authenticated write must also echo the ``d365_csrf`` cookie in the ``X-CSRF-Token`` header (double submit: a
foreign page can make the browser send the cookie but cannot read it). The CSRF value is also bound to the session on
the server, so a cookie planted by a sibling host does not pass. Sessions live in memory: a restart signs browsers out.
"""

from __future__ import annotations

import hmac
import html
import os
import secrets
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from connector.errors import ConnectionConfigError
from connector.serve_problems import problem, problem_response

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "TOKEN_ENV",
    "AuthGate",
    "read_api_token",
]

TOKEN_ENV = "D365_SERVE_TOKEN"
SESSION_COOKIE = "d365_session"
CSRF_COOKIE = "d365_csrf"
CSRF_HEADER = "x-csrf-token"
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Paths answered without the token: the login itself, the identity provider's redirect, the webhook (Dataverse
#: authenticates with its own key), the static page (it holds no data) and the health probe.
_OPEN_PREFIXES = ("/playground", "/oauth/callback/", "/triggers/webhook/")
_OPEN_PATHS = frozenset({"/", "/login", "/healthz"})
_MIN_TOKEN = 16

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def read_api_token(token_file: str | None, environ: MutableMapping[str, str] | None = None) -> tuple[str, bool]:
    """The API token and whether it was generated: ``--token-file``, else ``D365_SERVE_TOKEN``, else a random one
    (printed once by the caller; it changes on every start)."""
    env = os.environ if environ is None else environ
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConnectionConfigError(
                f"--token-file cannot be read ({exc.strerror or type(exc).__name__}): give a file holding the token",
                field="token_file",
            ) from None
    else:
        token = env.get(TOKEN_ENV, "").strip()
    if not token:
        return secrets.token_urlsafe(32), True
    if len(token) < _MIN_TOKEN:
        where = "--token-file" if token_file else TOKEN_ENV
        raise ConnectionConfigError(
            f"{where} holds a token of {len(token)} characters: use at least {_MIN_TOKEN} random characters "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            field="token",
        )
    return token, False


class AuthGate:
    """The API token, the live browser sessions, and the ASGI middleware that checks every request against them."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._sessions: dict[str, str] = {}  # session id -> its CSRF value
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "AuthGate(token='***')"

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Wrap ``app``: open paths pass, the rest need the bearer token or a session (and CSRF on writes)."""

        async def gate(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or _is_open(scope["path"]):
                await app(scope, receive, send)
                return
            refusal = self.refusal(Request(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            await app(scope, receive, send)

        return gate

    def refusal(self, request: Request) -> Response | None:
        """None when the request may go on; otherwise the 401 or 403 problem to answer."""
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            if hmac.compare_digest(header[7:].strip().encode(), self._token.encode()):
                return None
            return _unauthorized("the bearer token is wrong")
        session = request.cookies.get(SESSION_COOKIE, "")
        with self._lock:
            csrf = self._sessions.get(session) if session else None
        if csrf is None:
            return _unauthorized("no bearer token and no signed-in session")
        if request.method in _WRITES:
            sent = request.headers.get(CSRF_HEADER, "")
            cookie = request.cookies.get(CSRF_COOKIE, "")
            if not (sent and hmac.compare_digest(sent.encode(), cookie.encode())):
                return _forbidden("the X-CSRF-Token header must equal the d365_csrf cookie")
            if not hmac.compare_digest(sent.encode(), csrf.encode()):
                return _forbidden("the CSRF token does not belong to this session: sign in again")
        return None

    # -- the login routes -------------------------------------------------------------------------------------------
    async def login_form(self, request: Request) -> Response:
        return HTMLResponse(_login_page(""), headers=_PAGE_HEADERS)

    async def login(self, request: Request) -> Response:
        """Trade the API token (form field ``token``) for a session cookie and its CSRF cookie; 303 to the page."""
        body = await request.body()
        form = dict(parse_qsl(body[:4096].decode("utf-8", "replace")))
        given = form.get("token", "").strip()
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            return HTMLResponse(_login_page("That token is not this server's."), status_code=401, headers=_PAGE_HEADERS)
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session] = csrf
        response = RedirectResponse("/playground/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", path="/")
        response.set_cookie(CSRF_COOKIE, csrf, httponly=False, samesite="strict", path="/")
        return response

    async def logout(self, request: Request) -> Response:
        with self._lock:
            self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")
        return response


def _is_open(path: str) -> bool:
    return path in _OPEN_PATHS or (path.startswith(_OPEN_PREFIXES) and path != "/oauth/callback/")


def _unauthorized(detail: str) -> Response:
    fix = "send Authorization: Bearer <token>, or sign in at /login"
    body = problem(401, "authentication required", f"{detail}: {fix}")
    return problem_response(body, headers={"WWW-Authenticate": 'Bearer realm="d365"'})


def _forbidden(detail: str) -> Response:
    return problem_response(problem(403, "CSRF check failed", detail, "csrf"))


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _login_page(message: str) -> str:
    note = f'<p role="alert">{html.escape(message)}</p>' if message else ""
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>d365 serve: sign in</title>"
        "<style>body{font:16px system-ui;max-width:28em;margin:4em auto}input{font:inherit;width:100%}</style>"
        f"<h1>d365 serve</h1>{note}<form method=post action=/login>"
        "<label for=token>API token (from D365_SERVE_TOKEN, --token-file, or printed at start)</label>"
        "<input id=token name=token type=password autocomplete=current-password required autofocus>"
        "<p><button type=submit>Sign in</button></p></form></html>"
    )
