"""The settings a connection file and each of its pooled identities share: secrets, local files, strictness.

Split from :mod:`connector.connection_config` so an identity of a pool (``additional_identities``) is checked by the
very validators the connection's own ``client_secret`` or certificate is: ``{"env"}`` and ``{"file"}`` secrets under
the operator policy, files relative to the connection file's folder and refused when missing, nothing coerced.

An identity of a pool is one more app registration of the same tenant, added to the environment as its own
application user: only who signs in changes (client id and secret, or certificate); the environment, token URL,
scopes and limits are the connection's. :mod:`connector.identity_pool` spreads the requests over them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)

from connector.errors import ConnectionConfigError
from connector.policy import OperatorPolicy
from connector.secret import Secret, resolve_secret

__all__ = [
    "MAX_IDENTITIES",
    "STRICT",
    "CertificateIdentity",
    "CertificatePool",
    "ClientSecretIdentity",
    "InputFile",
    "LocalPath",
    "OptionalSecret",
    "Pool",
    "SecretSetting",
]

# Strict: nothing is coerced. Built on first use, not at import: every `d365` command imports this module, few read a
# connection.
STRICT = ConfigDict(strict=True, frozen=True, extra="forbid", defer_build=True)

MAX_IDENTITIES = 16
"""Application users in one pool, the connection's own included (the schemas' ``maxItems`` is one less)."""

_FILE_HINTS = {"ca_file": ": give the path of a PEM bundle of certificate authorities"}


def _base_dir(info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    return None if base is None else Path(base)


def _policy(info: ValidationInfo) -> OperatorPolicy:
    policy = (info.context or {}).get("policy")
    return policy if isinstance(policy, OperatorPolicy) else OperatorPolicy.from_env()


def _local_path(value: Any, info: ValidationInfo) -> Any:
    """A path setting, relative to the connection file's folder (the one the platform or ``from_file`` passes)."""
    if not isinstance(value, str):
        return value  # the strict Path check reports the type
    path = Path(value).expanduser()
    base_dir = _base_dir(info)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    _policy(info).check_path(path, str(info.field_name))
    return path


def _input_file(value: Any, info: ValidationInfo) -> Any:
    """A file the connector reads: refused now when missing, rather than at the first token request."""
    path = _local_path(value, info)
    if isinstance(path, Path) and not path.is_file():
        name = str(info.field_name)
        raise ConnectionConfigError(
            f"{name} {path} does not exist{_FILE_HINTS.get(name, '')} "
            "(relative paths start at the connection file's folder)",
            field=name,
        )
    return path


def _secret(value: Any, info: ValidationInfo) -> Any:
    """Check an ``{"env"}`` or ``{"file"}`` reference against the operator policy before reading it."""
    name, base_dir = str(info.field_name), _base_dir(info)
    if isinstance(value, Mapping) and isinstance(value.get("env"), str):
        _policy(info).check_env(value["env"], name)
    if isinstance(value, Mapping) and isinstance(value.get("file"), str):
        path = Path(value["file"]).expanduser()
        _policy(info).check_path(path if path.is_absolute() or base_dir is None else base_dir / path, name)
    return None if value is None else resolve_secret(value, name, base_dir)


# What a secret setting accepts, in JSON Schema terms: the value, or an {"env"} / {"file"} object.
_SECRET_JSON = WithJsonSchema({"type": ["string", "object"], "writeOnly": True})
SecretSetting = Annotated[Secret, BeforeValidator(_secret), _SECRET_JSON]
OptionalSecret = Annotated[Secret | None, BeforeValidator(_secret), _SECRET_JSON]
InputFile = Annotated[Path | None, BeforeValidator(_input_file)]
LocalPath = Annotated[Path | None, BeforeValidator(_local_path)]


class ClientSecretIdentity(BaseModel):
    """One more application user of a ``client_credentials`` pool: its app registration's id and secret."""

    model_config = STRICT

    client_id: str
    client_secret: SecretSetting

    def settings(self) -> dict[str, Any]:
        """What this identity changes in the connection's normalised configuration."""
        return {"client_id": self.client_id, "client_secret": self.client_secret}


class CertificateIdentity(BaseModel):
    """One more application user of a ``certificate`` pool: its app registration's id and certificate."""

    model_config = STRICT

    client_id: str
    certificate_file: InputFile = None
    private_key_file: InputFile = None
    pfx_file: InputFile = None
    private_key_password: OptionalSecret = None

    def settings(self) -> dict[str, Any]:
        """What this identity changes in the connection's normalised configuration."""
        return {
            "client_id": self.client_id,
            "certificate_file": self.certificate_file,
            "private_key_file": self.private_key_file,
            "pfx_file": self.pfx_file,
            "private_key_password": self.private_key_password,
        }


def _each_identity(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate the pool; a problem a validator raises (a secret's variable refused by the operator policy, a missing
    certificate file) names only ``client_secret`` or ``pfx_file``, so it is told again with the identity's index."""
    try:
        return handler(value)
    except ConnectionConfigError as exc:
        for index, item in enumerate(value):
            try:
                handler([item])
            except ConnectionConfigError as one:
                raise ConnectionConfigError(
                    f"additional_identities[{index}].{one.message}", field="additional_identities"
                ) from None
            except ValidationError:
                continue
        raise exc from None


_POOL = (Field(default=None, max_length=MAX_IDENTITIES - 1), WrapValidator(_each_identity))
Pool = Annotated[list[ClientSecretIdentity] | None, *_POOL]
"""The ``additional_identities`` of a ``client_credentials`` connection."""
CertificatePool = Annotated[list[CertificateIdentity] | None, *_POOL]
"""The ``additional_identities`` of a ``certificate`` connection."""
