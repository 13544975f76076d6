"""d365-connector: a Microsoft Dynamics 365 / Dataverse connector usable as a plugin runtime or a plain library."""

from connector.connection import Connection
from connector.errors import (
    AuthenticationError,
    ConnectionConfigError,
    ConnectorError,
    ContractError,
    DataverseApiError,
    FatalApiError,
    InputError,
    InputProblem,
    NotFoundError,
    OutcomeUnknownError,
    PluginError,
    RetriableApiError,
    WebhookError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from connector.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Connection",
    "ConnectionConfigError",
    "ConnectorError",
    "ContractError",
    "DataverseApiError",
    "FatalApiError",
    "InputError",
    "InputProblem",
    "NotFoundError",
    "OutcomeUnknownError",
    "PluginError",
    "RetriableApiError",
    "WebhookError",
    "WebhookPayloadError",
    "WebhookVerificationError",
    "__version__",
    "hookimpl",
    "hookspec",
]
