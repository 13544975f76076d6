"""Connection settings, their validation, and the live :class:`Connection` an action runs against.

A connection configuration is the JSON a platform stores (schema ``schemas/connections/<kind>.json``). It is checked in
two steps: the JSON Schema (every problem at once, with its path), then the rules a schema cannot express (URL scheme
and loopback, the API version in the URL, secrets read from the environment or a file, a CA file that exists). Every
problem raises :class:`ConnectionConfigError` naming the field and the fix, never a secret value.

The :class:`Connection` owns one token provider and one :class:`DataverseClient`; the runtime keeps one per
configuration (see :attr:`Connection.fingerprint`) so the token, the throttle governor and the metadata cache
are shared by every action run.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from connector import schemas
from connector.clock import Clock, SystemClock
from connector.errors import ConnectionConfigError

if TYPE_CHECKING:
    from connector.auth import OnToken, TokenProvider
    from connector.client import DataverseClient
    from connector.governor import Governor
    from connector.metadata import MetadataCache
    from connector.transport import RetryPolicy

__all__ = [
    "DEFAULT_API_VERSION",
    "KINDS",
    "Connection",
    "ConnectionConfig",
    "Secret",
    "default_authority_host",
    "parse_config",
]

log = logging.getLogger("connector.connection")

DEFAULT_API_VERSION = "v9.2"
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_PARALLELISM = 8  # connector.governor.DEFAULT_MAX_PARALLELISM; the governor is imported lazily
PUBLIC_AUTHORITY = "login.microsoftonline.com"
US_GOV_AUTHORITY = "login.microsoftonline.us"
CHINA_AUTHORITY = "login.chinacloudapi.cn"

# Host suffixes of Dynamics 365 / Dataverse environments and the identity platform each cloud uses. The commercial
# regions crm..crm22 (including GCC, crm9) use the public authority; GCC High and DoD use the US government one;
# China (21Vianet) its own. The legacy German cloud was closed in 2021 and its tenants moved to the public cloud.
_KNOWN_HOST_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("crm.dynamics.com", PUBLIC_AUTHORITY),
    *((f"crm{n}.dynamics.com", PUBLIC_AUTHORITY) for n in range(2, 23)),
    ("crm.microsoftdynamics.de", PUBLIC_AUTHORITY),
    ("crm.microsoftdynamics.us", US_GOV_AUTHORITY),
    ("crm.appsplatform.us", US_GOV_AUTHORITY),
    ("crm.dynamics.cn", CHINA_AUTHORITY),
)

_API_SUFFIX = re.compile(r"^/api/data/(v?\d+\.\d+)$")
_VERSION = re.compile(r"^v?(\d+\.\d+)$")

# Fields whose value may be given inline, as {"env": NAME} or as {"file": PATH}, one per kind that has a secret;
# resolution and masking are the same for all.
SECRET_FIELDS = ("client_secret", "refresh_token", "private_key_password", "identity_header")


class Secret:
    """A secret that never shows itself in ``repr``, ``str``, logs or tracebacks; :meth:`reveal` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; only for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", hashlib.sha256(self._value.encode()).hexdigest()))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self  # immutable; copying must not go through pickling, which is refused below

    def __reduce__(self) -> Any:
        # Pickling would write the secret into a file or a queue in clear; refuse instead of leaking silently.
        raise TypeError("Secret values cannot be pickled")


@dataclass(frozen=True)
class ConnectionConfig:
    """A validated, normalised connection configuration; secrets are :class:`Secret` and print as ``Secret('***')``.

    ``organization_url`` is ``scheme://host[:port]`` with no path; ``token_url`` is always resolved (from
    ``tenant_id`` and ``authority_host`` when not given); ``scopes`` has ``{org}`` replaced.
    """

    kind: str
    organization_url: str
    api_version: str
    client_id: str
    token_url: str
    scopes: tuple[str, ...]
    tenant_id: str | None = None
    authority_host: str | None = None
    client_secret: Secret | None = field(default=None, repr=False)
    ca_file: Path | None = None
    allow_insecure_loopback: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    # certificate
    certificate_file: Path | None = None
    private_key_file: Path | None = None
    pfx_file: Path | None = None
    private_key_password: Secret | None = field(default=None, repr=False)
    # authorization_code
    authorize_url: str | None = None
    redirect_port: int = 0
    token_store: Path | None = None
    refresh_token: Secret | None = field(default=None, repr=False)
    # managed_identity
    managed_identity_client_id: str | None = None
    identity_endpoint: str | None = None
    identity_style: str | None = None
    identity_header: Secret | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        """The Web API root, such as ``https://contoso.crm.dynamics.com/api/data/v9.2``."""
        return f"{self.organization_url}/api/data/{self.api_version}"

    @property
    def host(self) -> str:
        """``host[:port]`` of the environment."""
        return urlsplit(self.organization_url).netloc

    def fingerprint(self) -> str:
        """A stable sha256 over every setting, secrets included, so a changed secret means a new connection."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SECRET_FIELDS}
        data["ca_file"] = str(self.ca_file) if self.ca_file else None
        data["scopes"] = list(self.scopes)
        for name in SECRET_FIELDS:
            value = getattr(self, name, None)
            data[name] = value.reveal() if isinstance(value, Secret) else None
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(b"d365-connector/connection/v1\0" + text.encode()).hexdigest()


KINDS: dict[str, Callable[[Mapping[str, Any], dict[str, Any], Path | None], None]] = {}
"""Connection kinds: each entry adds its kind-specific fields (secrets resolved) to the common ones."""


def _client_credentials_fields(data: Mapping[str, Any], out: dict[str, Any], base_dir: Path | None) -> None:
    out["client_secret"] = resolve_secret(data.get("client_secret"), "client_secret", base_dir)


KINDS["client_credentials"] = _client_credentials_fields


def _local_path(data: Mapping[str, Any], name: str, base_dir: Path | None, *, must_exist: bool = True) -> Path | None:
    """A path field, relative to the connection file's folder; an input file that does not exist is refused."""
    if not data.get(name):
        return None
    path = Path(str(data[name])).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if must_exist and not path.is_file():
        raise ConnectionConfigError(
            f"{name} {path} does not exist (relative paths start at the connection file's folder)", field=name
        )
    return path


def _certificate_fields(data: Mapping[str, Any], out: dict[str, Any], base_dir: Path | None) -> None:
    out["certificate_file"] = _local_path(data, "certificate_file", base_dir)
    out["private_key_file"] = _local_path(data, "private_key_file", base_dir)
    out["pfx_file"] = _local_path(data, "pfx_file", base_dir)
    if data.get("private_key_password") is not None:
        out["private_key_password"] = resolve_secret(data["private_key_password"], "private_key_password", base_dir)


def _authorization_code_fields(data: Mapping[str, Any], out: dict[str, Any], base_dir: Path | None) -> None:
    out["redirect_port"] = int(data.get("redirect_port", 0))
    out["token_store"] = _local_path(data, "token_store", base_dir, must_exist=False)
    if data.get("refresh_token") is not None:
        out["refresh_token"] = resolve_secret(data["refresh_token"], "refresh_token", base_dir)
    if data.get("authorize_url"):
        _check_scheme(str(data["authorize_url"]), "authorize_url", bool(data.get("allow_insecure_loopback")))
        out["authorize_url"] = str(data["authorize_url"]).strip()


def _managed_identity_fields(data: Mapping[str, Any], out: dict[str, Any], base_dir: Path | None) -> None:
    out["managed_identity_client_id"] = data.get("managed_identity_client_id") or data.get("client_id")
    style = data.get("identity_style")
    endpoint = data.get("identity_endpoint")
    if endpoint:
        # plain http is normal here: IMDS (169.254.169.254) and App Service endpoints are local to the host
        if urlsplit(str(endpoint)).scheme.lower() not in ("http", "https"):
            raise ConnectionConfigError("identity_endpoint must be an http(s):// URL", field="identity_endpoint")
        out["identity_endpoint"] = str(endpoint).strip()
    out["identity_style"] = style
    if data.get("identity_header") is not None:
        out["identity_header"] = resolve_secret(data["identity_header"], "identity_header", base_dir)


KINDS["certificate"] = _certificate_fields
KINDS["authorization_code"] = _authorization_code_fields
KINDS["managed_identity"] = _managed_identity_fields

_DEFAULT_SCOPES = {"authorization_code": ("{org}/user_impersonation", "offline_access")}
"""Scopes when none are given; every other kind asks for ``{org}/.default`` (managed identity: the resource)."""


def resolve_secret(value: Any, name: str, base_dir: Path | None) -> Secret:
    """Turn an inline value, ``{"env": NAME}`` or ``{"file": PATH}`` into a :class:`Secret`; errors never echo it."""
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        if not value:
            raise ConnectionConfigError(
                f"{name} is empty: give the value, {{'env': NAME}} or {{'file': PATH}}", field=name
            )
        return Secret(value)
    if isinstance(value, Mapping) and set(value) == {"env"} and isinstance(value["env"], str):
        var = value["env"]
        env_value = os.environ.get(var)
        if not env_value:
            raise ConnectionConfigError(
                f"{name} is read from the environment variable {var}, which is not set or empty: set {var} "
                f"in the environment the connector runs in, or give {name} another way",
                field=name,
            )
        return Secret(env_value)
    if isinstance(value, Mapping) and set(value) == {"file"} and isinstance(value["file"], str):
        path = Path(value["file"]).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConnectionConfigError(
                f"{name} is read from the file {path}, which cannot be read ({exc.strerror or type(exc).__name__}): "
                f"check the path (relative paths start at the connection file's folder) and its permissions",
                field=name,
            ) from None
        # Editors and `echo` add a final newline that is never part of the secret.
        text = text.rstrip("\r\n")
        if not text:
            raise ConnectionConfigError(f"{name} is read from the file {path}, which is empty", field=name)
        return Secret(text)
    raise ConnectionConfigError(f"{name} must be the value, {{'env': NAME}} or {{'file': PATH}}", field=name)


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_scheme(url: str, name: str, allow_insecure_loopback: bool) -> tuple[str, str]:
    """``(scheme, netloc)`` of a URL that may receive a token: https, or http on loopback when allowed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise ConnectionConfigError(f"{name} must be an absolute https:// URL", field=name)
    if parts.username or parts.password:
        raise ConnectionConfigError(f"{name} must not contain a user name or password", field=name)
    if scheme == "http":
        if not _is_loopback(parts.hostname):
            raise ConnectionConfigError(
                f"{name} must use https://; plain http is allowed only for a loopback host "
                "(127.0.0.1, ::1, localhost) with allow_insecure_loopback: true",
                field=name,
            )
        if not allow_insecure_loopback:
            raise ConnectionConfigError(
                f"{name} uses plain http on a loopback host: set allow_insecure_loopback: true to allow it "
                "(only for a local emulator), or use https://",
                field=name,
            )
    netloc = parts.hostname.lower()
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None and parts.port != (443 if scheme == "https" else 80):
        netloc = f"{netloc}:{parts.port}"
    return scheme, netloc


def default_authority_host(organization_host: str) -> str | None:
    """The identity platform host for a known Dynamics host (``.api.`` form included), or None for an unknown host."""
    host = organization_host.split(":")[0].lower().rstrip(".")
    for suffix, authority in _KNOWN_HOST_SUFFIXES:
        if host.endswith("." + suffix):
            return authority
    return None


def _normalise_version(value: str, name: str) -> str:
    match = _VERSION.match(value.strip())
    if not match:
        raise ConnectionConfigError(f"{name} must look like v9.2", field=name)
    return f"v{match.group(1)}"


def _problems_error(problems: list[Any]) -> ConnectionConfigError:
    first = problems[0]
    field_name = first.path.removeprefix("$.").split(".")[0].split("[")[0] if first.path != "$" else None
    if len(problems) == 1:
        text = f"invalid connection settings: {first}"
    else:
        lines = "\n".join(f"  - {p}" for p in problems)
        text = f"invalid connection settings ({len(problems)} problems):\n{lines}"
    return ConnectionConfigError(text, field=field_name)


def parse_config(data: Mapping[str, Any], *, base_dir: Path | None = None) -> ConnectionConfig:
    """Validate and normalise a connection configuration; raise :class:`ConnectionConfigError` naming the field."""
    if not isinstance(data, Mapping):
        raise ConnectionConfigError("the connection settings must be a JSON object", field=None)
    kind = data.get("kind")
    if kind not in KINDS:
        known = ", ".join(sorted(KINDS))
        got = f"{kind!r} is not a known kind" if isinstance(kind, str) else "kind is missing"
        raise ConnectionConfigError(f"kind: {got}; use one of: {known}", field="kind")
    problems = schemas.validate(dict(data), f"connections/{kind}.json")
    if problems:
        raise _problems_error(problems)

    allow_loopback = bool(data.get("allow_insecure_loopback", False))
    raw_url = str(data["organization_url"]).strip()
    scheme, netloc = _check_scheme(raw_url, "organization_url", allow_loopback)
    parts = urlsplit(raw_url)
    if parts.query or parts.fragment:
        raise ConnectionConfigError("organization_url must not have a query or fragment", field="organization_url")
    path = parts.path.rstrip("/")
    url_version: str | None = None
    if path:
        match = _API_SUFFIX.match(path)
        if not match:
            raise ConnectionConfigError(
                "organization_url must be the environment root such as https://contoso.crm.dynamics.com, "
                "optionally ending in /api/data/v9.2",
                field="organization_url",
            )
        url_version = _normalise_version(match.group(1), "organization_url")
    version = url_version or DEFAULT_API_VERSION
    if data.get("api_version") is not None:
        given = _normalise_version(str(data["api_version"]), "api_version")
        if url_version and given != url_version:
            raise ConnectionConfigError(
                f"api_version {given} disagrees with the version {url_version} at the end of organization_url: "
                "keep one of them",
                field="api_version",
            )
        version = given
    organization_url = f"{scheme}://{netloc}"

    tenant_id = data.get("tenant_id")
    authority_host: str | None = data.get("authority_host")
    token_url = data.get("token_url")
    if kind == "managed_identity":
        token_url = ""  # the host's identity endpoint issues the token; no tenant or token URL is involved
    elif token_url:
        _check_scheme(str(token_url), "token_url", allow_loopback)
        token_url = str(token_url).strip()
    else:
        if not tenant_id:
            raise ConnectionConfigError(
                "tenant_id is required (the Directory (tenant) ID of the app registration) unless token_url is given",
                field="tenant_id",
            )
        if not authority_host:
            authority_host = default_authority_host(netloc)
            if authority_host is None:
                authority_host = PUBLIC_AUTHORITY
                log.warning(
                    "organization_url host %s is not a known Dynamics 365 host; using the authority %s "
                    "(set authority_host if the environment is in a sovereign cloud)",
                    netloc,
                    authority_host,
                )
        token_url = f"https://{authority_host.lower()}/{tenant_id}/oauth2/v2.0/token"

    default_scopes = _DEFAULT_SCOPES.get(kind, ("{org}/.default",))
    scopes = tuple(s.replace("{org}", organization_url) for s in data.get("scopes") or default_scopes)

    ca_file: Path | None = None
    if data.get("ca_file"):
        ca_file = Path(str(data["ca_file"])).expanduser()
        if not ca_file.is_absolute() and base_dir is not None:
            ca_file = base_dir / ca_file
        if not ca_file.is_file():
            raise ConnectionConfigError(
                f"ca_file {ca_file} does not exist: give the path of a PEM bundle of certificate authorities "
                "(relative paths start at the connection file's folder)",
                field="ca_file",
            )

    extra: dict[str, Any] = {}
    KINDS[kind](data, extra, base_dir)
    if kind == "authorization_code" and not extra.get("authorize_url"):
        if not token_url.endswith("/token"):
            raise ConnectionConfigError(
                "authorize_url is required when token_url does not end in /token", field="authorize_url"
            )
        extra["authorize_url"] = token_url[: -len("/token")] + "/authorize"
    return ConnectionConfig(
        kind=kind,
        organization_url=organization_url,
        api_version=version,
        client_id=str(data.get("client_id") or ""),
        token_url=token_url,
        scopes=scopes,
        tenant_id=tenant_id,
        authority_host=authority_host,
        ca_file=ca_file,
        allow_insecure_loopback=allow_loopback,
        timeout_s=float(data.get("timeout_s", DEFAULT_TIMEOUT_S)),
        max_parallelism=int(data.get("max_parallelism", DEFAULT_MAX_PARALLELISM)),
        **extra,
    )


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext | bool:
    """Trust the system store plus ``ca_file``: the same context serves both Dataverse and the token endpoint."""
    if ca_file is None:
        return True
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionConfigError(
            f"ca_file {ca_file} is not a PEM bundle of certificates ({type(exc).__name__})", field="ca_file"
        ) from None
    return ctx


class Connection:
    """A configured, authenticated link to one Dataverse environment; thread-safe, reuse it for every action.

    Build it with :meth:`from_config` or :meth:`from_file`. ``transport`` replaces the network (tests pass an
    ``httpx.MockTransport``) for both the token endpoint and Dataverse; ``clock`` replaces time.
    """

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        on_token: OnToken | None = None,
    ) -> None:
        from connector.auth import make_token_provider

        self._config = config
        self._clock: Clock = clock or SystemClock()
        self._transport = transport
        self._verify = _ssl_context(config.ca_file)
        self._provider: TokenProvider = make_token_provider(
            config, transport=transport, clock=self._clock, verify=self._verify, on_token=on_token, retry=retry
        )
        from connector.governor import Governor

        self._governor = Governor(clock=self._clock, max_parallelism=config.max_parallelism, policy=retry)
        self._client: DataverseClient | None = None
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_config(
        cls,
        data: Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        on_token: OnToken | None = None,
    ) -> Connection:
        """Validate ``data`` (relative ``{"file"}`` secrets and ``ca_file`` start at ``base_dir``); connect lazily.

        ``on_token`` is called with every new refresh token of an ``authorization_code`` connection (they rotate on
        each use), for platforms that keep tokens themselves; store it as a secret.
        """
        return cls(
            parse_config(data, base_dir=base_dir), transport=transport, clock=clock, retry=retry, on_token=on_token
        )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        base_dir: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        on_token: OnToken | None = None,
    ) -> Connection:
        """Read a JSON connection file; relative paths inside it start at the file's folder."""
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConnectionConfigError(
                f"cannot read the connection file {file} ({exc.strerror or type(exc).__name__})"
            ) from None
        except json.JSONDecodeError as exc:
            raise ConnectionConfigError(
                f"the connection file {file} is not valid JSON (line {exc.lineno}, column {exc.colno})"
            ) from None
        return cls.from_config(
            data,
            base_dir=base_dir if base_dir is not None else file.resolve().parent,
            transport=transport,
            clock=clock,
            retry=retry,
            on_token=on_token,
        )

    @property
    def config(self) -> ConnectionConfig:
        return self._config

    @property
    def organization_url(self) -> str:
        """``https://host`` of the environment, without a path."""
        return self._config.organization_url

    @property
    def api_url(self) -> str:
        """The Web API root, such as ``https://contoso.crm.dynamics.com/api/data/v9.2``."""
        return self._config.api_url

    @property
    def host(self) -> str:
        """The environment's host (and port), lower-cased: what a page token must name to be followed here."""
        return urlsplit(self._config.api_url).netloc.lower()

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def governor(self) -> Governor:
        """The throttle governor every request of this connection goes through (see :mod:`connector.governor`)."""
        return self._governor

    @property
    def token_provider(self) -> TokenProvider:
        return self._provider

    @property
    def fingerprint(self) -> str:
        """Identifies the configuration (secrets included) so a runtime can reuse one Connection per configuration."""
        return self._config.fingerprint()

    @property
    def metadata(self) -> MetadataCache:
        """The table metadata cache every action on this connection shares (created on first use)."""
        cache: MetadataCache | None = self.__dict__.get("_metadata")
        if cache is None:
            with self._lock:
                cache = self.__dict__.get("_metadata")
                if cache is None:
                    from connector.metadata import MetadataCache

                    cache = MetadataCache(lambda: self.client, clock=self._clock)
                    self.__dict__["_metadata"] = cache
        return cache

    @property
    def client(self) -> DataverseClient:
        """The one :class:`DataverseClient` of this connection, created on first use."""
        if self._closed:
            raise ConnectionConfigError("this connection is closed; create a new one")
        if self._client is None:
            with self._lock:
                if self._closed:
                    raise ConnectionConfigError("this connection is closed; create a new one")
                if self._client is None:
                    from connector.client import DataverseClient

                    self._client = DataverseClient(
                        self._config.api_url,
                        self._provider,
                        transport=self._transport,
                        clock=self._clock,
                        verify=self._verify,
                        timeout_s=self._config.timeout_s,
                        governor=self._governor,
                    )
        return self._client

    def token(self) -> str:
        """The current access token, fetched or refreshed as needed; never log it."""
        return self._provider.token()

    def close(self) -> None:
        """Close the HTTP connections; the Connection cannot be used afterwards."""
        with self._lock:
            self._closed = True
            if self._client is not None:
                self._client.close()
            self._provider.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connection(kind={self._config.kind!r}, organization_url={self._config.organization_url!r})"
