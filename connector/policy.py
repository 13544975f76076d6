"""The operator policy: what a connection may point at, decided by whoever runs the connector, not by the connection.

Who writes a connection file is not always who runs the connector: platforms take connection settings from their end
users. A connection that names a token URL, an identity endpoint, a file or an environment variable would otherwise
send the runner's secrets anywhere. The policy is read from the runner's environment (never from the connection) and
comes in two presets: ``local`` (the CLI's default: the person is the operator, files and variables are free) and
``hosted`` (the library's and the runtime's default: files only under listed directories, variables only with listed
prefixes). In both, tokens are asked only of Microsoft's identity hosts, operator-listed hosts, or loopback when the
organization itself is on loopback (the emulator). A sync's state store outside a SQLite file (PostgreSQL, for workers
on several machines) is a place rows and credentials go: in ``hosted`` only databases the operator lists.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from connector.errors import ConnectionConfigError, preview

__all__ = [
    "CHINA_AUTHORITY",
    "IMDS_HOST",
    "MICROSOFT_AUTHORITIES",
    "PUBLIC_AUTHORITY",
    "US_GOV_AUTHORITY",
    "OperatorPolicy",
    "is_loopback",
]

PUBLIC_AUTHORITY = "login.microsoftonline.com"
US_GOV_AUTHORITY = "login.microsoftonline.us"
CHINA_AUTHORITY = "login.chinacloudapi.cn"
# The identity platforms of the public and sovereign clouds: the only hosts a token request goes to unless listed.
MICROSOFT_AUTHORITIES = frozenset({PUBLIC_AUTHORITY, US_GOV_AUTHORITY, CHINA_AUTHORITY})
IMDS_HOST = "169.254.169.254"

Preset = Literal["local", "hosted"]
_FIX = "the operator allows it with the environment variable"


def is_loopback(host: str) -> bool:
    """A loopback host (``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``), where plain http is allowed."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split(value: str | None, sep: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(sep) if part.strip())


@dataclass(frozen=True)
class OperatorPolicy:
    """Where a connection may send tokens and secrets, and which files and variables it may read."""

    preset: Preset = "hosted"
    allowed_authorities: frozenset[str] = frozenset()
    allowed_paths: tuple[Path, ...] = ()
    allowed_env_prefixes: tuple[str, ...] = ()
    allowed_state_urls: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, default: Preset = "hosted", environ: Mapping[str, str] | None = None) -> OperatorPolicy:
        """The policy the operator set: ``D365_POLICY``, ``D365_ALLOWED_AUTHORITIES`` (comma-separated hosts),
        ``D365_ALLOWED_PATHS`` (``:``-separated folders), ``D365_ALLOWED_ENV_PREFIXES`` (comma-separated),
        ``D365_ALLOWED_STATE_URLS`` (comma-separated SQLAlchemy URLs, credentials left out)."""
        env = os.environ if environ is None else environ
        preset = env.get("D365_POLICY", "").strip().lower() or default
        if preset not in ("local", "hosted"):
            raise ConnectionConfigError(f"D365_POLICY is {preview(preset)}: use local or hosted", field=None)
        return cls(
            preset="local" if preset == "local" else "hosted",
            allowed_authorities=frozenset(h.lower() for h in _split(env.get("D365_ALLOWED_AUTHORITIES"), ",")),
            allowed_paths=tuple(Path(p).expanduser().resolve() for p in _split(env.get("D365_ALLOWED_PATHS"), ":")),
            allowed_env_prefixes=_split(env.get("D365_ALLOWED_ENV_PREFIXES"), ","),
            allowed_state_urls=_split(env.get("D365_ALLOWED_STATE_URLS"), ","),
        )

    # -- URLs: checked on the raw settings, before any secret is read ------------------------------------------
    def check_urls(self, data: Mapping[str, Any]) -> None:
        """Refuse a token or identity URL outside the policy; runs before secrets are resolved, so none is read."""
        org_host = urlsplit(str(data.get("organization_url") or "").strip()).hostname or ""
        loopback_org = is_loopback(org_host)
        for name in ("token_url", "authorize_url"):
            value = data.get(name)
            if isinstance(value, str) and value.strip():
                self._check_host(urlsplit(value.strip()).hostname or "", name, loopback_org)
        authority = data.get("authority_host")
        if isinstance(authority, str) and authority.strip():
            self._check_host(urlsplit("//" + authority.strip()).hostname or "", "authority_host", loopback_org)
        endpoint = data.get("identity_endpoint")
        if isinstance(endpoint, str) and endpoint.strip():
            self._check_identity_endpoint(endpoint.strip(), loopback_org)

    def _host_allowed(self, host: str, loopback_org: bool) -> bool:
        host = host.lower().rstrip(".")
        return host in self.allowed_authorities or (loopback_org and is_loopback(host))

    def _check_host(self, host: str, name: str, loopback_org: bool) -> None:
        if host.lower().rstrip(".") in MICROSOFT_AUTHORITIES or self._host_allowed(host, loopback_org):
            return
        raise ConnectionConfigError(
            f"{name} points at {preview(host) if host else 'no host'}, which is not a Microsoft identity host "
            f"({', '.join(sorted(MICROSOFT_AUTHORITIES))}); tokens and secrets go nowhere else unless {_FIX} "
            "D365_ALLOWED_AUTHORITIES=host (loopback is allowed only for a loopback organization_url)",
            field=name,
        )

    def _check_identity_endpoint(self, endpoint: str, loopback_org: bool) -> None:
        host = urlsplit(endpoint).hostname or ""
        platform = os.environ.get("IDENTITY_ENDPOINT", "").strip()
        if host == IMDS_HOST or (platform and endpoint == platform) or self._host_allowed(host, loopback_org):
            return
        raise ConnectionConfigError(
            f"identity_endpoint points at {preview(host) if host else 'no host'}: managed identity asks only IMDS "
            f"({IMDS_HOST}) or the IDENTITY_ENDPOINT the hosting platform sets, unless {_FIX} "
            "D365_ALLOWED_AUTHORITIES=host",
            field="identity_endpoint",
        )

    # -- files and variables: free in local, listed only in hosted ----------------------------------------------
    def check_path(self, path: Path, name: str) -> None:
        """Refuse, in ``hosted``, a file outside the operator's folders, before it is read or written."""
        if self.preset == "local":
            return
        resolved = path.expanduser().resolve()
        if any(resolved.is_relative_to(folder) for folder in self.allowed_paths):
            return
        raise ConnectionConfigError(
            f"{name} names a file outside the folders this hosted connector may use: {_FIX} "
            f"D365_ALLOWED_PATHS=/folder (or D365_POLICY=local where the person running it is the operator)",
            field=name,
        )

    def check_env(self, variable: str, name: str) -> None:
        """Refuse, in ``hosted``, an environment variable without an operator-listed prefix, before it is read."""
        if self.preset == "local" or any(variable.startswith(p) for p in self.allowed_env_prefixes):
            return
        raise ConnectionConfigError(
            f"{name} names an environment variable this hosted connector may not read: {_FIX} "
            "D365_ALLOWED_ENV_PREFIXES=PREFIX_ (or D365_POLICY=local where the person running it is the operator)",
            field=name,
        )

    # -- databases: a state store the operator listed ------------------------------------------------------------
    def allows_state_url(self, url: str) -> bool:
        """Whether ``url`` is a database the operator listed in ``D365_ALLOWED_STATE_URLS``.

        Compared part by part as SQLAlchemy parses it (the parse the driver connects with), never as text, so
        ``postgresql://allowed.host@evil.host/db`` (a user name, then another host), another port, database or query
        (libpq's ``?host=`` would redirect the connection) is refused. A listed entry names the backend, host, port
        (the backend's default when left out), database and query; a driver (``+psycopg``) or user name only when it
        names one. Passwords are not compared: they come from the definition or the operator's libpq environment."""
        target = _database_target(url)
        return target is not None and any(
            _entry_matches(entry, target) for entry in map(_database_target, self.allowed_state_urls) if entry
        )


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}


@dataclass(frozen=True)
class _Target:
    backend: str
    driver: str | None
    host: str | None
    port: int | None
    database: str | None
    username: str | None
    query: tuple[tuple[str, tuple[str, ...]], ...]


def _database_target(url: str) -> _Target | None:
    """What a SQLAlchemy URL connects to, credentials left out; None when it does not parse."""
    from sqlalchemy.engine import make_url  # lazy: SQLAlchemy's import is not free and most policies never need it
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError):
        return None
    backend, _, driver = parsed.drivername.partition("+")
    host = parsed.host.lower().rstrip(".") if parsed.host else None
    query = tuple(sorted((k, v if isinstance(v, tuple) else (v,)) for k, v in parsed.query.items()))
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS.get(backend)
    return _Target(backend, driver or None, host, port, parsed.database, parsed.username, query)


def _entry_matches(entry: _Target, target: _Target) -> bool:
    return (
        entry.backend == target.backend
        and entry.driver in (None, target.driver)
        and entry.username in (None, target.username)
        and (entry.host, entry.port, entry.database, entry.query)
        == (target.host, target.port, target.database, target.query)
    )
