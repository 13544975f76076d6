"""d365-connector: a Microsoft Dynamics 365 / Dataverse connector usable as a plugin runtime or a plain library."""

from connector.connection import Connection
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
from connector.governor import Governor, Outcome
from connector.hookspecs import hookimpl, hookspec
from connector.ids import new_id
from connector.transport import RetryPolicy
from connector.version import __version__

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
