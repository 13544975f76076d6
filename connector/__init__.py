"""d365-connector: a Microsoft Dynamics 365 / Dataverse connector usable as a plugin runtime or a plain library."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connector.errors import (
    AuthenticationError,
    ConcurrencyError,
    ConnectionConfigError,
    ConnectorError,
    ContractError,
    DataverseApiError,
    DataverseAuthError,
    FatalApiError,
    InputError,
    InputProblem,
    KeyActivationError,
    LiteralError,
    MultipartError,
    NetworkConfigError,
    NotFoundError,
    OutcomeUnknownError,
    PluginError,
    RetriableApiError,
    WebhookError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from connector.version import __version__

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.governor import Governor, Outcome
    from connector.hookspecs import hookimpl, hookspec
    from connector.ids import new_id
    from connector.transport import RetryPolicy

# Imported on first use: ``d365 --help`` and a library user who only needs the errors do not pay for httpx,
# jsonschema, pydantic and pluggy (issue 17's start-up figures, ``benchmarks/startup.py``).
_LAZY = {
    "Connection": "connector.connection",
    "Governor": "connector.governor",
    "Outcome": "connector.governor",
    "hookimpl": "connector.hookspecs",
    "hookspec": "connector.hookspecs",
    "new_id": "connector.ids",
    "RetryPolicy": "connector.transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'connector' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AuthenticationError",
    "ConcurrencyError",
    "Connection",
    "ConnectionConfigError",
    "ConnectorError",
    "ContractError",
    "DataverseApiError",
    "DataverseAuthError",
    "FatalApiError",
    "Governor",
    "InputError",
    "InputProblem",
    "KeyActivationError",
    "LiteralError",
    "MultipartError",
    "NetworkConfigError",
    "NotFoundError",
    "Outcome",
    "OutcomeUnknownError",
    "PluginError",
    "RetriableApiError",
    "RetryPolicy",
    "WebhookError",
    "WebhookPayloadError",
    "WebhookVerificationError",
    "__version__",
    "hookimpl",
    "hookspec",
    "new_id",
]
