"""One exception tree, split by who must act.

::

    ConnectorError                  root; never raised directly
    ├── ContractError               manifest, schemas and hooks disagree (a bug in this repository or a pack)
    │   └── PluginError             a pack could not be loaded, or overrides a built-in without declaring it
    ├── InputError                  the caller's inputs are wrong; every problem listed with its JSON path
    ├── ConnectionConfigError       the connection settings are wrong or incomplete
    │   ├── NetworkConfigError      the host cannot be resolved or its TLS certificate is not trusted
    │   └── AuthenticationError     the identity platform refused to issue a token
    │       └── DataverseAuthError  Dataverse answered 401 even to a freshly fetched token
    ├── DataverseApiError           Dataverse answered with an error (status, code, request id, Retry-After)
    │   ├── RetriableApiError       throttled or transient: the request was not executed and may be sent again
    │   ├── FatalApiError           the request is wrong for Dataverse: sending it again gives the same answer
    │   │   ├── NotFoundError       the row (or resource) named by id or key does not exist
    │   │   ├── ConcurrencyError    an etag no longer matches the row (412): someone changed it since it was read
    │   │   └── KeyActivationError  an alternate key's index build ended Failed
    │   └── OutcomeUnknownError     a non-idempotent request may or may not have been applied
    └── WebhookError                a webhook delivery could not be accepted
        ├── WebhookVerificationError
        └── WebhookPayloadError

Three more classes stand outside the tree. The protocol helpers raise ``ValueError`` subclasses, as parsers are
expected to: the operations turn them into an :class:`InputError` or a :class:`FatalApiError`, and only a library user
calling ``connector.odata`` or ``connector.multipart`` directly meets them. ``TransientAnswer`` is an internal signal
of the token retry loop and never leaves it (so it is not in ``__all__``)::

    ValueError
    ├── LiteralError                a value cannot be written as an OData literal of its column's type
    └── MultipartError              a ``$batch`` body breaks the multipart framing rules
    Exception
    └── TransientAnswer             a token endpoint's answer the retry policy sends again

Every error carries a user-facing ``message`` that says what to do, and ``to_dict()`` for JSON output. The CLI maps the
branches to exit codes: input 2, connection/auth 3, Dataverse API 4, anything else 1. No error ever carries a secret:
messages are built from field names and server answers, never from configuration values. A message that must show
an input value quotes it through :func:`preview`, which never echoes more than a short prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from connector.transport import Failure

__all__ = [
    "AuthenticationError",
    "ConcurrencyError",
    "ConnectionConfigError",
    "ConnectorError",
    "ContractError",
    "DataverseApiError",
    "DataverseAuthError",
    "FatalApiError",
    "InputError",
    "InputProblem",
    "KeyActivationError",
    "LiteralError",
    "MultipartError",
    "NetworkConfigError",
    "NotFoundError",
    "OutcomeUnknownError",
    "PluginError",
    "RetriableApiError",
    "WebhookError",
    "WebhookPayloadError",
    "WebhookVerificationError",
]


class ConnectorError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1
    kind = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape the CLI prints on stderr and a runtime may store with a failed run."""
        return {"error": self.kind, "type": type(self).__name__, "message": self.message}


class ContractError(ConnectorError):
    """Raised at start-up when the manifest, the schemas and the hook implementations disagree."""

    kind = "contract"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"the connector contract is broken ({len(self.problems)} problem(s)):\n{lines}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "problems": self.problems}


class PluginError(ContractError):
    """Raised when a pack cannot be loaded or overrides a built-in action without declaring it."""


@dataclass(frozen=True)
class InputProblem:
    """One thing wrong with the inputs: where (a JSON path such as ``$.fields.name``) and what is expected."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InputError(ConnectorError):
    """Raised before any write when the inputs fail their schema or the table's metadata; never retried."""

    exit_code = 2
    kind = "input"

    def __init__(self, problems: list[InputProblem] | str, *, action_id: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [InputProblem("$", problems)]
        self.problems = list(problems)
        self.action_id = action_id
        where = f" for {action_id}" if action_id else ""
        if len(self.problems) == 1:
            text = f"invalid input{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            text = f"invalid input{where} ({len(self.problems)} problems):\n{lines}"
        super().__init__(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "problems": [{"path": p.path, "message": p.message} for p in self.problems],
        }


class ConnectionConfigError(ConnectorError):
    """Raised when the connection settings are missing, malformed or point at the wrong place."""

    exit_code = 3
    kind = "connection"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.field:
            out["field"] = self.field
        return out


class AuthenticationError(ConnectionConfigError):
    """Raised when the token endpoint refuses the credentials; ``code`` is the AADSTS code when there is one."""

    kind = "auth"

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status_code = status_code

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "code": self.code, "status_code": self.status_code}


class NetworkConfigError(ConnectionConfigError):
    """Raised when the host cannot be resolved or its TLS certificate is not trusted: a setting to check, not a blip.

    ``reason`` is ``"dns"`` or ``"tls"``.
    """

    def __init__(self, message: str, *, reason: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "reason": self.reason}


class DataverseAuthError(AuthenticationError):
    """Raised when Dataverse answers 401 even to a freshly fetched token; carries its ``WWW-Authenticate`` challenge."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        request_id: str | None = None,
        www_authenticate: str | None = None,
    ) -> None:
        super().__init__(message, code=code, status_code=401)
        self.request_id = request_id
        self.www_authenticate = www_authenticate

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "request_id": self.request_id}


class DataverseApiError(ConnectorError):
    """Raised when Dataverse answers with an error; carries what support needs to find the request."""

    exit_code = 4
    kind = "dataverse"
    retriable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.method = method
        self.url = url

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "status_code": self.status_code,
            "code": self.code,
            "request_id": self.request_id,
            "retry_after": self.retry_after,
            "retriable": self.retriable,
        }


class RetriableApiError(DataverseApiError):
    """Raised when a throttled or transient failure outlived the retry budget; the request was not executed."""

    retriable = True


class FatalApiError(DataverseApiError):
    """Raised for a 4xx, or a 5xx carrying a Dataverse error code: sending it again would fail the same way."""


class NotFoundError(FatalApiError):
    """Raised when the row or resource named by an id or an alternate key does not exist."""


class ConcurrencyError(FatalApiError):
    """Raised when ``etag`` no longer matches the row (HTTP 412): someone changed it since it was read."""


class KeyActivationError(FatalApiError):
    """Raised when an alternate key's index build ended ``Failed`` (duplicate values in its columns)."""


class OutcomeUnknownError(DataverseApiError):
    """Raised when a non-idempotent request failed in transit: it may or may not have been applied."""


class WebhookError(ConnectorError):
    """Raised when a webhook delivery cannot be accepted, or a subscription cannot be made.

    ``status_code`` is what the receiver answers Dataverse with: only 2xx counts as delivered, and for a synchronous
    step any other status fails the user's operation, so each refusal carries the status that names its reason.
    """

    kind = "webhook"

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "status_code": self.status_code}


class WebhookVerificationError(WebhookError):
    """Raised when a delivery's shared key, header or query-string secret is missing or does not match (401)."""

    def __init__(self, message: str, *, status_code: int = 401) -> None:
        super().__init__(message, status_code=status_code)


class WebhookPayloadError(WebhookError):
    """Raised when a delivery's body is not a RemoteExecutionContext we can normalise."""


# -- internal signals -------------------------------------------------------------------------------------------------
class LiteralError(ValueError):
    """A value that cannot be written as a literal of its column's type; the message says what is expected."""


class MultipartError(ValueError):
    """Raised when a batch body breaks the framing rules (bare LF, missing delimiter, malformed part)."""


class TransientAnswer(Exception):
    """A token endpoint's answer that the retry policy sends again, raised from inside a send to abandon it."""

    def __init__(self, response: httpx.Response, failure: Failure, retry_after: float | None) -> None:
        super().__init__(response.status_code)
        self.response = response
        self.failure = failure
        self.retry_after = retry_after


def preview(value: object, limit: int = 40) -> str:
    """Quote a caller's value in a message without echoing it whole.

    A refusal that repeated a 10 MB value put 20 MB on stderr and in every log that records the error; only a prefix
    is needed to recognise the value, and the length says why it was refused. Strings render with ``repr`` so control
    characters and lone surrogates print as escapes (a log line never breaks on them), e.g.
    ``'abc'… (10,000,000 characters)``. Other values render with ``repr`` cut the same way; an integer too long for
    ``repr`` is described by its digit count.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    if isinstance(value, (bytes, bytearray)):
        if len(value) <= limit:
            return repr(bytes(value))
        return f"{bytes(value[:limit])!r}… ({len(value):,} bytes)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"an integer of about {digits:,} digits"
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        return f"a {type(value).__name__} too large to show"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"
