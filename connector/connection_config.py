"""Connection settings as strict pydantic models, one per kind, read into the one :class:`ConnectionConfig`.

A connection configuration is the JSON a platform stores. Its JSON Schema (``schemas/connections/<kind>.json``) stays
the source of truth, because builders render their forms from it, and it is checked first so that every shape problem
is reported at once with its path. The models then take the settings in strict mode (``"8"`` is not a number, nothing
is coerced) and hold, as validators, what a schema cannot express: secrets read from ``{"env": NAME}`` or
``{"file": PATH}``, files relative to the connection file's folder (``base_dir``, passed in the validation context),
a CA file that exists, https (or loopback http when allowed) for every URL a token goes to, the API version at the end
of the URL, and the authority host of a known Dynamics host. ``tests/connector/test_connection_models.py`` keeps each
model's fields, types, required set and secret flags equal to its schema's.

Every problem raises :class:`ConnectionConfigError` naming the field and the fix, never a secret value. The models are
what a configuration *says*; :class:`ConnectionConfig` is what the connector *uses* (every kind's attributes, URLs
normalised, token URL and scopes resolved), so the token providers read one shape whatever the kind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from connector import schemas
from connector.connection_fields import (
    STRICT,
    CertificateIdentity,
    CertificatePool,
    ClientSecretIdentity,
    InputFile,
    LocalPath,
    OptionalSecret,
    Pool,
    SecretSetting,
)
from connector.errors import ConnectionConfigError, InputProblem, preview
from connector.governor import DEFAULT_MAX_PARALLELISM
from connector.inputs import JsonInt
from connector.policy import CHINA_AUTHORITY, PUBLIC_AUTHORITY, US_GOV_AUTHORITY, OperatorPolicy, is_loopback
from connector.secret import Secret

__all__ = [
    "DEFAULT_API_VERSION",
    "KINDS",
    "SECRET_FIELDS",
    "AuthorizationCodeSettings",
    "CertificateSettings",
    "ClientCredentialsSettings",
    "ConnectionConfig",
    "ManagedIdentitySettings",
    "default_authority_host",
    "parse_config",
]

# The name platforms already filter on: these warnings were logged by connector.connection before the split.
log = logging.getLogger("connector.connection")

DEFAULT_API_VERSION = "v9.2"
DEFAULT_TIMEOUT_S = 120.0

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


def default_authority_host(organization_host: str) -> str | None:
    """The identity platform host for a known Dynamics host (``.api.`` form included), or None for an unknown host."""
    host = organization_host.split(":")[0].lower().rstrip(".")
    for suffix, authority in _KNOWN_HOST_SUFFIXES:
        if host.endswith("." + suffix):
            return authority
    return None


# Every setting that names a URL or a host a request goes to. A user name and password in one would be sent as Basic
# credentials (httpx does that for a URL's user info) and echoed by any message that quotes the value.
_URL_FIELDS = ("organization_url", "token_url", "authorize_url", "identity_endpoint", "authority_host")
_USERINFO_FIX = "remove the user name and password from the URL (credentials go in their own settings)"


def _has_userinfo(value: str) -> bool:
    """Whether ``value`` (a URL, or a bare ``host[:port]``) carries ``user[:password]@`` before its host."""
    value = value.strip()
    try:
        parts = urlsplit(value if "://" in value else "//" + value)
    except ValueError:
        return "@" in value.split("/")[0]
    return "@" in parts.netloc


_MAX_URL = 2048  # longer than any real environment or identity URL, far shorter than a hostile megabyte


def _refuse_hostile_urls(data: Mapping[str, Any]) -> None:
    """Refuse a URL setting with user info, or absurdly long, before anything reads it; never echo the value.

    Runs before schema validation, whose messages quote an invalid value: a credential in the user part of a URL that
    failed any other rule would otherwise reach the error text.
    """
    for name in _URL_FIELDS:
        value = data.get(name)
        if isinstance(value, str) and len(value) > _MAX_URL:
            raise ConnectionConfigError(
                f"{name} is {len(value):,} characters long: give the URL itself (at most {_MAX_URL:,})", field=name
            )
        if isinstance(value, str) and _has_userinfo(value):
            raise ConnectionConfigError(f"{name} contains a user name or password: {_USERINFO_FIX}", field=name)


def _check_scheme(url: str, name: str, allow_insecure_loopback: bool) -> tuple[str, str]:
    """``(scheme, netloc)`` of a URL that may receive a token: https, or http on loopback when allowed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise ConnectionConfigError(f"{name} must be an absolute https:// URL", field=name)
    if "@" in parts.netloc:
        raise ConnectionConfigError(f"{name} contains a user name or password: {_USERINFO_FIX}", field=name)
    if scheme == "http":
        if not is_loopback(parts.hostname):
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


def _normalise_version(value: str, name: str) -> str:
    match = _VERSION.match(value.strip())
    if not match:
        raise ConnectionConfigError(f"{name} must look like v9.2", field=name)
    return f"v{match.group(1)}"


def _environment_root(url: str, api_version: str | None, allow_insecure_loopback: bool) -> tuple[str, str]:
    """``(scheme://host[:port], version)``: the URL may end in ``/api/data/vX.Y``, which must agree with api_version."""
    scheme, netloc = _check_scheme(url.strip(), "organization_url", allow_insecure_loopback)
    parts = urlsplit(url.strip())
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
    if api_version is not None and url_version and api_version != url_version:
        raise ConnectionConfigError(
            f"api_version {api_version} disagrees with the version {url_version} at the end of organization_url: "
            "keep one of them",
            field="api_version",
        )
    return f"{scheme}://{netloc}", api_version or url_version or DEFAULT_API_VERSION


# --- field validators of the settings that span no other ----------------------------------------------------------


def _api_version(value: str | None) -> str | None:
    return None if value is None else _normalise_version(value, "api_version")


def _identity_endpoint(value: str | None) -> str | None:
    # plain http is normal here: IMDS (169.254.169.254) and App Service endpoints are local to the host
    if value and urlsplit(value).scheme.lower() not in ("http", "https"):
        raise ConnectionConfigError("identity_endpoint must be an http(s):// URL", field="identity_endpoint")
    if value and _has_userinfo(value):
        raise ConnectionConfigError(
            f"identity_endpoint contains a user name or password: {_USERINFO_FIX}", field="identity_endpoint"
        )
    return value.strip() if value else None


# --- the models: what each kind's configuration says ---------------------------------------------------------------


class _Settings(BaseModel):
    """The settings every kind shares."""

    model_config = STRICT

    kind: str
    organization_url: str
    api_version: Annotated[str | None, AfterValidator(_api_version)] = None
    tenant_id: str | None = None
    ca_file: InputFile = None
    allow_insecure_loopback: bool = False
    max_parallelism: JsonInt = DEFAULT_MAX_PARALLELISM
    timeout_s: float = DEFAULT_TIMEOUT_S

    @abstractmethod
    def to_config(self) -> ConnectionConfig:
        """The normalised configuration the connector uses; raises for the rules that span settings."""

    def _common(self) -> dict[str, Any]:
        organization_url, api_version = _environment_root(
            self.organization_url, self.api_version, self.allow_insecure_loopback
        )
        return {
            "kind": self.kind,
            "organization_url": organization_url,
            "api_version": api_version,
            "tenant_id": self.tenant_id,
            "ca_file": self.ca_file,
            "allow_insecure_loopback": self.allow_insecure_loopback,
            "timeout_s": self.timeout_s,
            "max_parallelism": self.max_parallelism,
        }


class _AppSettings(_Settings):
    """The settings of kinds that ask Microsoft Entra ID (or ``token_url``) for a token as an app registration."""

    client_id: str
    authority_host: str | None = None
    token_url: str | None = None
    scopes: list[str] | None = None

    # Scopes when none are given; {org} stands for the environment URL.
    DEFAULT_SCOPES: ClassVar[tuple[str, ...]] = ("{org}/.default",)

    def _common(self) -> dict[str, Any]:
        common = super()._common()
        organization_url: str = common["organization_url"]
        authority_host = self.authority_host
        if self.token_url:
            _check_scheme(self.token_url, "token_url", self.allow_insecure_loopback)
            token_url = self.token_url.strip()
        else:
            if not self.tenant_id:
                raise ConnectionConfigError(
                    "tenant_id is required (the Directory (tenant) ID of the app registration) unless token_url "
                    "is given",
                    field="tenant_id",
                )
            if not authority_host:
                authority_host = _authority_for(urlsplit(organization_url).netloc)
            token_url = f"https://{authority_host.lower()}/{self.tenant_id}/oauth2/v2.0/token"
        scopes = tuple(s.replace("{org}", organization_url) for s in self.scopes or self.DEFAULT_SCOPES)
        return {
            **common,
            "client_id": self.client_id,
            "authority_host": authority_host,
            "token_url": token_url,
            "scopes": scopes,
        }


def _authority_for(netloc: str) -> str:
    """The known cloud's authority, else the public one with a warning: an unknown host is never refused."""
    authority = default_authority_host(netloc)
    if authority is None:
        authority = PUBLIC_AUTHORITY
        log.warning(
            "organization_url host %s is not a known Dynamics 365 host; using the authority %s "
            "(set authority_host if the environment is in a sovereign cloud)",
            netloc,
            authority,
        )
    return authority


def _pooled(
    config: ConnectionConfig, identities: Sequence[ClientSecretIdentity | CertificateIdentity]
) -> ConnectionConfig:
    """``config`` with one configuration per additional identity (its own sign-in, everything else shared); an
    application user named twice is refused, since the pool's point is one budget per user."""
    seen = {config.client_id.lower()}
    for index, identity in enumerate(identities):
        if identity.client_id.lower() in seen:
            raise ConnectionConfigError(
                f"additional_identities[{index}].client_id repeats an application user of this connection: each "
                "identity must be a different app registration (one service protection budget each)",
                field="additional_identities",
            )
        seen.add(identity.client_id.lower())
    pool = tuple(config.model_copy(update=identity.settings()) for identity in identities)
    return config.model_copy(update={"additional_identities": pool}) if pool else config


class ClientCredentialsSettings(_AppSettings):
    """An app registration with a client secret (``schemas/connections/client_credentials.json``)."""

    kind: Literal["client_credentials"]
    client_secret: SecretSetting
    additional_identities: Pool = None

    def to_config(self) -> ConnectionConfig:
        config = ConnectionConfig(**self._common(), client_secret=self.client_secret)
        return _pooled(config, self.additional_identities or [])


class CertificateSettings(_AppSettings):
    """An app registration with a certificate, as a PEM pair or a PFX (``schemas/connections/certificate.json``)."""

    kind: Literal["certificate"]
    certificate_file: InputFile = None
    private_key_file: InputFile = None
    pfx_file: InputFile = None
    private_key_password: OptionalSecret = None
    additional_identities: CertificatePool = None

    def to_config(self) -> ConnectionConfig:
        config = ConnectionConfig(
            **self._common(),
            certificate_file=self.certificate_file,
            private_key_file=self.private_key_file,
            pfx_file=self.pfx_file,
            private_key_password=self.private_key_password,
        )
        return _pooled(config, self.additional_identities or [])


class AuthorizationCodeSettings(_AppSettings):
    """A user's sign-in with PKCE and rotating refresh tokens (``schemas/connections/authorization_code.json``)."""

    kind: Literal["authorization_code"]
    authorize_url: str | None = None
    redirect_port: JsonInt = 0
    token_store: LocalPath = None
    refresh_token: OptionalSecret = None
    # a confidential client (a platform's hosted sign-in) proves itself with a secret or a certificate
    client_secret: OptionalSecret = None
    certificate_file: InputFile = None
    private_key_file: InputFile = None
    pfx_file: InputFile = None
    private_key_password: OptionalSecret = None

    DEFAULT_SCOPES = ("{org}/user_impersonation", "offline_access")  # offline_access: a refresh token comes back

    def to_config(self) -> ConnectionConfig:
        common = self._common()
        token_url: str = common["token_url"]
        if self.authorize_url:
            _check_scheme(self.authorize_url, "authorize_url", self.allow_insecure_loopback)
            authorize_url = self.authorize_url.strip()
        elif token_url.endswith("/token"):
            authorize_url = token_url[: -len("/token")] + "/authorize"
        else:
            raise ConnectionConfigError(
                "authorize_url is required when token_url does not end in /token", field="authorize_url"
            )
        return ConnectionConfig(
            **common,
            authorize_url=authorize_url,
            redirect_port=self.redirect_port,
            token_store=self.token_store,
            refresh_token=self.refresh_token,
            client_secret=self.client_secret,
            certificate_file=self.certificate_file,
            private_key_file=self.private_key_file,
            pfx_file=self.pfx_file,
            private_key_password=self.private_key_password,
        )


class ManagedIdentitySettings(_Settings):
    """The Azure host's own identity, with no secret or token URL (``schemas/connections/managed_identity.json``)."""

    kind: Literal["managed_identity"]
    client_id: str | None = None
    managed_identity_client_id: str | None = None
    identity_endpoint: Annotated[str | None, AfterValidator(_identity_endpoint)] = None
    identity_style: Literal["imds", "app_service"] | None = None
    identity_header: OptionalSecret = None

    def to_config(self) -> ConnectionConfig:
        common = self._common()
        return ConnectionConfig(
            **common,
            client_id=self.client_id or "",
            token_url="",  # the host's identity endpoint issues the token; no tenant or token URL is involved
            scopes=(f"{common['organization_url']}/.default",),
            managed_identity_client_id=self.managed_identity_client_id or self.client_id,
            identity_endpoint=self.identity_endpoint,
            identity_style=self.identity_style,
            identity_header=self.identity_header,
        )


KINDS: dict[str, type[_Settings]] = {
    "client_credentials": ClientCredentialsSettings,
    "certificate": CertificateSettings,
    "authorization_code": AuthorizationCodeSettings,
    "managed_identity": ManagedIdentitySettings,
}
"""The connection kinds and the model of each; ``schemas/connections/<kind>.json`` describes the same settings."""

# --- the normalised configuration the connector uses ---------------------------------------------------------------


class ConnectionConfig(BaseModel):
    """A validated, normalised connection configuration; secrets are :class:`Secret` and print as ``Secret('***')``.

    ``organization_url`` is ``scheme://host[:port]`` with no path; ``token_url`` is always resolved (from
    ``tenant_id`` and ``authority_host`` when not given); ``scopes`` has ``{org}`` replaced.
    """

    model_config = STRICT

    kind: str
    organization_url: str
    api_version: str
    client_id: str
    token_url: str
    scopes: tuple[str, ...]
    tenant_id: str | None = None
    authority_host: str | None = None
    client_secret: Secret | None = Field(default=None, repr=False)
    ca_file: Path | None = None
    allow_insecure_loopback: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    # certificate
    certificate_file: Path | None = None
    private_key_file: Path | None = None
    pfx_file: Path | None = None
    private_key_password: Secret | None = Field(default=None, repr=False)
    # authorization_code
    authorize_url: str | None = None
    redirect_port: int = 0
    token_store: Path | None = None
    refresh_token: Secret | None = Field(default=None, repr=False)
    # managed_identity
    managed_identity_client_id: str | None = None
    identity_endpoint: str | None = None
    identity_style: str | None = None
    identity_header: Secret | None = Field(default=None, repr=False)
    # client_credentials and certificate: one configuration per more application user, sign-in settings their own
    additional_identities: tuple[ConnectionConfig, ...] = Field(default=(), repr=False)

    def identities(self) -> tuple[ConnectionConfig, ...]:
        """One configuration per application user of the connection, its own first: more than one is a pool."""
        return (self, *self.additional_identities)

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
        data: dict[str, Any] = {name: getattr(self, name) for name in type(self).model_fields}
        data["ca_file"] = str(self.ca_file) if self.ca_file else None
        data["scopes"] = list(self.scopes)
        for name in SECRET_FIELDS:
            value = getattr(self, name, None)
            data[name] = value.reveal() if isinstance(value, Secret) else None
        data["additional_identities"] = [identity.fingerprint() for identity in self.additional_identities]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(b"d365-connector/connection/v1\0" + text.encode()).hexdigest()


# --- the one entry point -------------------------------------------------------------------------------------------


def _to_config(settings: _Settings) -> ConnectionConfig:
    return settings.to_config()


# The discriminated union validates into the normalised configuration: the rules that span settings (URL schemes and
# loopback, the version in the URL, the token and authorize URLs, the default authority) run as its after-validator,
# once every single setting has passed its own.
_CONFIG: TypeAdapter[Any] = TypeAdapter(  # validates settings, returns a ConnectionConfig
    Annotated[
        ClientCredentialsSettings | CertificateSettings | AuthorizationCodeSettings | ManagedIdentitySettings,
        Field(discriminator="kind"),
        AfterValidator(_to_config),
    ],
    config=ConfigDict(defer_build=True),
)


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path | None = None, policy: OperatorPolicy | None = None
) -> ConnectionConfig:
    """Validate and normalise a connection configuration; raise :class:`ConnectionConfigError` naming the field.

    ``policy`` is the operator's (default: :meth:`OperatorPolicy.from_env`, preset ``hosted``); its URL rules run
    before any ``{"env"}``/``{"file"}`` secret is read, so a refused connection reads none.
    """
    if not isinstance(data, Mapping):
        raise ConnectionConfigError("the connection settings must be a JSON object", field=None)
    kind = data.get("kind")
    if kind not in KINDS:
        got = f"{preview(kind)} is not a known kind" if isinstance(kind, str) else "kind is missing"
        raise ConnectionConfigError(f"kind: {got}; use one of: {', '.join(sorted(KINDS))}", field="kind")
    _refuse_hostile_urls(data)
    problems = schemas.validate(dict(data), f"connections/{kind}.json")
    if not problems:
        policy = policy if policy is not None else OperatorPolicy.from_env()
        policy.check_urls(data)
        try:
            context = {"base_dir": base_dir, "policy": policy}
            config: ConnectionConfig = _CONFIG.validate_python(dict(data), context=context)
            return config
        except ValidationError as exc:
            problems = [_problem(error) for error in exc.errors(include_input=False, include_url=False)]
    raise _problems_error(problems)


def _problem(error: ErrorDetails) -> InputProblem:
    """A pydantic error as a schema problem (the model's loc starts with the kind); the input is never included."""
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"][1:])
    return InputProblem(path, str(error["msg"]))


def _problems_error(problems: list[InputProblem]) -> ConnectionConfigError:
    first = problems[0]
    field_name = first.path.removeprefix("$.").split(".")[0].split("[")[0] if first.path != "$" else None
    if len(problems) == 1:
        text = f"invalid connection settings: {first}"
    else:
        lines = "\n".join(f"  - {p}" for p in problems)
        text = f"invalid connection settings ({len(problems)} problems):\n{lines}"
    return ConnectionConfigError(text, field=field_name)
