"""The runtime server's named connections: secrets write-only, the operator policy applied, the sign-in hosted.

Why a registry of its own rather than ``Runtime.connection``: a served connection has a name the API addresses, is
replaced by ``PUT`` and dropped by ``DELETE``, and records its HTTP exchanges for the playground's summary. Every
posted configuration goes through :func:`connector.connection_config.parse_config` under the server's policy
(``hosted`` by default: a foreign token URL or a local file is refused before any secret is read). What the API
returns of a connection is its name, kind, environment URL and whether it can get a token; never a setting.

Sign-in (``authorization_code``): ``begin`` builds the authorize URL with a random state and a PKCE verifier (kept
here, never sent to the browser but as its S256 challenge); the identity provider redirects to
``/oauth/callback/{name}``, whose ``finish`` matches the state, redeems the code with the verifier (and the client's
secret or certificate, for a confidential client) and hands the refresh token to the token store. Each rotated
refresh token is saved there again. The store is pluggable (:class:`RefreshTokenStore`); the default keeps one
owner-only file per connection (:class:`connector.token_store.TokenStore`) in the operator's folder.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from connector.auth import AuthorizationCodeProvider, LoginRequest
from connector.connection import Connection
from connector.connection_config import parse_config
from connector.errors import AuthenticationError, ConnectionConfigError, InputError, InputProblem
from connector.policy import OperatorPolicy
from connector.token_store import TokenStore

__all__ = [
    "NAME_PATTERN",
    "Connections",
    "Exchanges",
    "FileTokenStores",
    "RefreshTokenStore",
    "Served",
]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_PENDING = 8  # sign-ins started and not yet finished, per connection (several tabs)
_PENDING_S = 600.0  # an authorization code lives 10 minutes; a sign-in older than that cannot finish
_MAX_URL_SHOWN = 300

_exchanges: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("d365_exchanges", default=None)


class RefreshTokenStore(Protocol):
    """Where the server keeps each connection's refresh token (a vault, a database, files)."""

    def load(self, name: str) -> str | None: ...

    def save(self, name: str, refresh_token: str) -> None: ...

    def delete(self, name: str) -> None: ...


class FileTokenStores:
    """One owner-only token file per connection in ``folder`` (the default store)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __repr__(self) -> str:
        return f"FileTokenStores({str(self.folder)!r})"

    def _store(self, name: str) -> TokenStore:
        return TokenStore(self.folder / f"{name}.token.json")

    def load(self, name: str) -> str | None:
        return self._store(name).load()

    def save(self, name: str, refresh_token: str) -> None:
        self._store(name).save(refresh_token, connection=name)

    def delete(self, name: str) -> None:
        self._store(name).path.unlink(missing_ok=True)


class Exchanges(httpx.BaseTransport):
    """A transport that notes each request's method, URL, status and time for the run that made it.

    The run's list is a context variable of the thread that runs it. Requests the connection sends from its worker
    threads (the parallel chunks of a bulk write) carry no context: they are noted for the run only while it is the
    connection's one run in progress, and left out rather than misattributed when several overlap.
    """

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner
        self._runs: list[list[dict[str, Any]]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        response = self._inner.handle_request(request)
        found = _exchanges.get()
        if found is None:
            with self._lock:
                found = self._runs[0] if len(self._runs) == 1 else None
        if found is not None:
            url = str(request.url.copy_with(query=None))
            found.append(
                {
                    "method": request.method,
                    "url": url[:_MAX_URL_SHOWN],
                    "status": response.status_code,
                    "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
                }
            )
        return response

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[dict[str, Any]]]:
        """``with transport.recording() as exchanges:`` collects the summary of the requests made inside."""
        found: list[dict[str, Any]] = []
        reset = _exchanges.set(found)
        with self._lock:
            self._runs.append(found)
        try:
            yield found
        finally:
            _exchanges.reset(reset)
            with self._lock:
                self._runs.remove(found)

    def close(self) -> None:
        self._inner.close()


@dataclass
class Served:
    """One named connection as the server holds it."""

    name: str
    connection: Connection
    connected: bool
    exchanges: Exchanges

    def to_dict(self) -> dict[str, Any]:
        config = self.connection.config
        return {
            "name": self.name,
            "type": config.kind,
            "environment_url": config.organization_url,
            "connected": self.connected,
        }


class Connections:
    """Named connections, their sign-ins in progress, and the token store."""

    def __init__(
        self,
        policy: OperatorPolicy,
        token_store: RefreshTokenStore,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self.token_store = token_store
        self._transport = transport  # tests: replaces the network below the exchange recorder
        self._served: dict[str, Served] = {}
        self._pending: dict[str, list[tuple[float, LoginRequest]]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[Served]:
        with self._lock:
            return [self._served[n] for n in sorted(self._served)]

    def get(self, name: str, path: str = "/connection") -> Served:
        """The named connection, or the input error naming the known ones."""
        with self._lock:
            served = self._served.get(name)
            known = ", ".join(sorted(self._served)) or "none yet: PUT /connections/{name}"
        if served is None:
            problem = InputProblem("$" + path.lstrip("/"), f"no connection named {name!r}; known: {known}")
            raise InputError([problem])
        return served

    def put(self, name: str, data: Any, base_dir: Path | None = None) -> Served:
        """Add or replace a connection from its configuration, under the server's policy; secrets are kept inside
        the connection only."""
        check_name(name)
        if not isinstance(data, Mapping):
            raise ConnectionConfigError("the connection settings must be a JSON object", field=None)
        settings = dict(data)
        stored = None
        if settings.get("kind") == "authorization_code" and not settings.get("refresh_token"):
            stored = self.token_store.load(name)
            if stored and not settings.get("token_store"):
                settings["refresh_token"] = stored
        config = parse_config(settings, base_dir=base_dir, policy=self.policy)
        transport = Exchanges(self._transport or httpx.HTTPTransport(verify=_verify(config.ca_file)))
        connection = Connection(config, transport=transport, on_token=lambda token: self._rotated(name, token))
        connected = config.kind != "authorization_code" or bool(stored or config.refresh_token or config.token_store)
        served = Served(name, connection, connected, transport)
        with self._lock:
            old = self._served.pop(name, None)
            self._served[name] = served
            self._pending.pop(name, None)
        if old is not None:
            old.connection.close()
        return served

    def delete(self, name: str) -> bool:
        with self._lock:
            served = self._served.pop(name, None)
            self._pending.pop(name, None)
        if served is None:
            return False
        served.connection.close()
        self.token_store.delete(name)
        return True

    def close(self) -> None:
        with self._lock:
            served, self._served = list(self._served.values()), {}
        for s in served:
            s.connection.close()

    def _rotated(self, name: str, refresh_token: str) -> None:
        self.token_store.save(name, refresh_token)
        with self._lock:
            served = self._served.get(name)
            if served is not None:
                served.connected = True

    # -- the hosted sign-in -------------------------------------------------------------------------------------
    def begin(self, name: str, redirect_uri: str) -> str:
        """The authorize URL a browser opens to sign this connection in; the state and verifier stay here."""
        provider = self._provider(name)
        request = provider.begin_login(redirect_uri)
        now = time.monotonic()
        with self._lock:
            pending = [(t, r) for t, r in self._pending.get(name, []) if now - t < _PENDING_S]
            self._pending[name] = [*pending, (now, request)][-_MAX_PENDING:]
        return request.url

    def finish(self, name: str, callback_url: str, state: str) -> None:
        """Redeem the code the identity provider's redirect brought, for the sign-in whose state it carries."""
        provider = self._provider(name)
        now = time.monotonic()
        with self._lock:
            pending = self._pending.get(name, [])
            match = next((r for t, r in pending if r.state == state and now - t < _PENDING_S), None)
            self._pending[name] = [(t, r) for t, r in pending if r is not match]
        if match is None:
            raise AuthenticationError(
                "this sign-in answer matches no sign-in started here (stale, used twice or forged): press Connect "
                "again",
                code="StateMismatch",
            )
        provider.finish_login(match, callback_url)  # checks state again, sends the PKCE verifier
        with self._lock:
            served = self._served.get(name)
            if served is not None:
                served.connected = True

    def _provider(self, name: str) -> AuthorizationCodeProvider:
        provider = self.get(name).connection.token_provider
        if not isinstance(provider, AuthorizationCodeProvider):
            problem = InputProblem("$connection", f"connection {name!r} is not an authorization_code connection")
            raise InputError([problem])
        return provider


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise InputError(
            [InputProblem("$name", "a connection name is 1 to 64 letters, digits, '_', '.' or '-', starting with a "
                          "letter or digit")]
        )  # fmt: skip


def _verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    """The trust the connection itself would use (the system store plus ``ca_file``), for the recording transport."""
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionConfigError(
            f"ca_file {ca_file} is not a PEM bundle of certificates ({type(exc).__name__})", field="ca_file"
        ) from None
