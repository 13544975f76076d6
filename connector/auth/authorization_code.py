"""Delegated access as a signed-in user: authorization code with PKCE, rotating refresh tokens, the login redirect.

The sign-in runs once (``d365 connection login``): a browser is sent to the authorize URL and redirected back to a
one-shot server on 127.0.0.1; afterwards only refresh tokens are used, and each answer rotates them.
"""

from __future__ import annotations

import hmac
import http.server
import logging
import secrets
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from joserfc.jwk import RSAKey

from connector.auth.certificate import ASSERTION_TYPE, ClientCertificate, sign_client_assertion
from connector.auth.oauth import AuthlibProvider
from connector.clock import Clock
from connector.errors import AuthenticationError, ConnectionConfigError, preview
from connector.secret import Secret
from connector.token_store import TokenStore
from connector.transport import RetryPolicy

__all__ = ["AuthorizationCodeProvider", "LoginRequest", "OnToken", "run_login"]

log = logging.getLogger("connector.auth")


OnToken = Callable[[str], None]
"""Called with each new refresh token (they rotate on every use); the platform stores it where it keeps secrets."""


@dataclass(frozen=True)
class LoginRequest:
    """One sign-in attempt: the URL to open, and the ``state`` and PKCE verifier that the answer must match."""

    url: str
    redirect_uri: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)


class AuthorizationCodeProvider(AuthlibProvider):
    """Delegated access as a signed-in user: authorization code with PKCE (S256), then rotating refresh tokens.

    The first refresh token comes from :meth:`begin_login` / :meth:`finish_login` (``d365 connection login``, or a
    platform's hosted sign-in such as ``d365 serve``), from the ``refresh_token`` field, or from the ``token_store``
    file. A public client relies on PKCE alone; a confidential client (``client_secret`` or ``certificate``) also
    authenticates every token call, with PKCE kept as Microsoft recommends. Every refresh returns a new refresh
    token, which is saved to the token store and passed to ``on_token``: the identity platform may stop accepting
    older ones.
    """

    def __init__(
        self,
        *,
        token_url: str,
        authorize_url: str,
        client_id: str,
        scopes: tuple[str, ...],
        organization_url: str,
        clock: Clock,
        refresh_token: str | None = None,
        token_store: TokenStore | None = None,
        on_token: OnToken | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        client_secret: str | None = None,
        certificate: ClientCertificate | None = None,
    ) -> None:
        if client_secret is not None and certificate is not None:
            raise ConnectionConfigError("give client_secret or a certificate, not both", field="client_secret")
        # a public client: PKCE alone protects the code; a confidential one also proves itself on every token call
        client_auth: dict[str, Any] = (
            {"token_endpoint_auth_method": "client_secret_post", "client_secret": client_secret}
            if client_secret is not None
            else {"token_endpoint_auth_method": "none"}
        )
        super().__init__(
            token_url=token_url,
            client_id=client_id,
            scopes=scopes,
            organization_url=organization_url,
            clock=clock,
            transport=transport,
            verify=verify,
            timeout_s=timeout_s,
            retry=retry,
            code_challenge_method="S256",  # without it authlib silently skips PKCE (kept for confidential clients too)
            **client_auth,
        )
        self._certificate = certificate
        self._key = RSAKey.import_key(certificate.private_key) if certificate is not None else None
        self._authorize_url = authorize_url
        self._store = token_store
        self._on_token = on_token
        # a Secret from here on: this provider sits in the frames of every request that refreshes its token
        self._refresh_token = Secret(refresh_token) if refresh_token else None
        self._loaded = refresh_token is not None

    @property
    def token_store(self) -> TokenStore | None:
        return self._store

    def _current_refresh_token(self) -> Secret:
        if not self._loaded:
            self._loaded = True
            if self._store is not None:
                self._refresh_token = Secret(self._store.load() or "") or None  # an empty Secret is falsy
        if not self._refresh_token:
            where = f"token_store {preview(str(self._store.path), 120)}" if self._store is not None else "refresh_token"
            raise AuthenticationError(
                f"no refresh token yet ({where} is empty): run `d365 connection login --connection FILE` to sign in, "
                "or set refresh_token",
                code="LoginRequired",
            )
        return self._refresh_token

    def _assertion(self) -> dict[str, str]:
        """The signed client assertion a certificate-authenticated confidential client adds to each token call."""
        if self._certificate is None or self._key is None:
            return {}
        signed = sign_client_assertion(self._certificate, self._key, self._client_id, self._token_url, self._clock)
        return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": signed}

    def _request_token(self) -> dict[str, Any]:
        raw = self._call(
            self._oauth.refresh_token, self._token_url, refresh_token=self._current_refresh_token(), **self._assertion()
        )
        self._rotate(raw)
        return raw

    def _rotate(self, raw: dict[str, Any]) -> None:
        """Keep and persist the refresh token of a token answer (a new one every time)."""
        if not isinstance(raw.get("refresh_token"), str) or not raw["refresh_token"]:
            return
        new = Secret(raw["refresh_token"])
        if new == self._refresh_token:
            return
        self._refresh_token = new
        self._loaded = True
        if self._store is not None:
            self._store.save(new.reveal(), client_id=self._client_id, organization_url=self._organization_url)
        if self._on_token is not None:
            self._on_token(new.reveal())
        log.debug("the refresh token rotated and was persisted")

    def begin_login(self, redirect_uri: str) -> LoginRequest:
        """The authorization URL (with ``code_challenge`` S256 and a random ``state``) for a browser to open."""
        verifier = secrets.token_urlsafe(64)
        state = secrets.token_urlsafe(24)
        url, _ = self._oauth.create_authorization_url(
            self._authorize_url,
            state=state,
            code_verifier=verifier,
            redirect_uri=redirect_uri,
            prompt="select_account",
        )
        return LoginRequest(url=str(url), redirect_uri=redirect_uri, state=state, code_verifier=verifier)

    def finish_login(self, request: LoginRequest, callback_url: str) -> None:
        """Redeem the code the redirect brought back; refuse a wrong ``state`` or an error answer."""
        params = dict(parse_qsl(urlsplit(callback_url).query))
        if "error" in params:
            description = params.get("error_description", "").splitlines()[0:1]
            said = f": {preview(description[0], 300)}" if description else ""
            raise AuthenticationError(
                f"sign-in failed ({preview(params['error'])}){said}",
                code=params["error"],
            )
        if not hmac.compare_digest(params.get("state", ""), request.state):
            raise AuthenticationError(
                "the sign-in answer's state does not match the request (a stale or forged redirect): sign in again",
                code="StateMismatch",
            )
        if not params.get("code"):
            raise AuthenticationError("the sign-in answer carries no authorization code: sign in again")
        with self._lock:
            start = self._clock.monotonic()
            raw = self._call(
                self._oauth.fetch_token,
                self._token_url,
                grant_type="authorization_code",
                code=params["code"],
                redirect_uri=request.redirect_uri,
                code_verifier=request.code_verifier,
                **self._assertion(),
            )
            if not raw.get("refresh_token"):
                raise AuthenticationError(
                    "the sign-in returned no refresh token: include offline_access in scopes", code="NoRefreshToken"
                )
            self._accept(raw, start)
            self._rotate(raw)


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    """Answers the browser's redirect to 127.0.0.1 once, handing the full callback URL to the waiting login."""

    server: _RedirectServer

    def do_GET(self) -> None:
        query = dict(parse_qsl(urlsplit(self.path).query))
        if not ({"code", "error", "state"} & set(query)):
            self.send_error(404)
            return
        ok = "code" in query and "error" not in query
        body = (
            b"<!doctype html><title>d365</title><p>Signed in. You can close this window and return to the terminal."
            if ok
            else b"<!doctype html><title>d365</title><p>Sign-in failed. See the terminal for details."
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.callback(f"http://127.0.0.1:{self.server.server_port}{self.path}")

    def log_message(self, format: str, *args: Any) -> None:  # the query holds the authorization code: never log it
        pass


class _RedirectServer(http.server.HTTPServer):
    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _RedirectHandler)
        self.received: str | None = None
        self.done = threading.Event()

    def callback(self, url: str) -> None:
        if self.received is None:
            self.received = url
        self.done.set()


def run_login(
    provider: AuthorizationCodeProvider,
    *,
    port: int = 0,
    show_url: Callable[[str], None],
    timeout_s: float = 300.0,
) -> None:
    """Sign a user in: listen on 127.0.0.1:``port`` (0 = a free port), show the URL, redeem the code it brings back.

    ``show_url`` opens a browser or prints the URL. The redirect URI is ``http://127.0.0.1:<port>/`` (Entra accepts
    any port for a loopback redirect URI registered as ``http://localhost`` or ``http://127.0.0.1``). The refresh
    token goes to the provider's token store and ``on_token`` callback.
    """
    try:
        server = _RedirectServer(port)
    except OSError as exc:
        raise ConnectionConfigError(
            f"cannot listen for the sign-in redirect on 127.0.0.1:{port} ({exc.strerror or type(exc).__name__}): "
            "set redirect_port to a free port, or 0",
            field="redirect_port",
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="d365-login-redirect", daemon=True)
    thread.start()
    try:
        request = provider.begin_login(f"http://127.0.0.1:{server.server_port}/")
        show_url(request.url)
        if not server.done.wait(timeout_s) or server.received is None:
            raise AuthenticationError(
                f"no sign-in arrived within {timeout_s:.0f} s: open the URL in a browser on this machine and sign in",
                code="LoginTimeout",
            )
        provider.finish_login(request, server.received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
