"""What a Dataverse error answer says, as a typed error: status, Dataverse code, message, request id, Retry-After.

Kept apart from the client's sending loop because it is pure: an answer in, an error out, whoever sent the request
(the sync client today, an async twin later). The failure classes are :func:`connector.transport.classify_status`'s,
so the message a user reads agrees with the retry decision that was taken.
"""

from __future__ import annotations

from typing import Any

import httpx

from connector.errors import (
    AuthenticationError,
    DataverseApiError,
    DataverseAuthError,
    FatalApiError,
    NotFoundError,
    OutcomeUnknownError,
    RetriableApiError,
)
from connector.transport import Failure, classify_status, parse_retry_after

__all__ = ["error_from_response", "has_error_code", "request_id"]


def request_id(response: httpx.Response) -> str | None:
    """The request id Dataverse gives every answer, to quote to Microsoft support."""
    value = response.headers.get("REQ_ID") or response.headers.get("x-ms-service-request-id")
    return str(value) if value else None


def _error_body(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        body = response.json()
    except ValueError:
        return None, None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    code = error.get("code")
    message = error.get("message")
    return (str(code) if code is not None else None), (str(message) if message is not None else None)


def _has_code(code: str | None) -> bool:
    return bool(code) and code not in ("0x0", "0")


def has_error_code(response: httpx.Response) -> bool:
    """Whether the answer names a Dataverse error: a 5xx that does will fail the same way again."""
    return _has_code(_error_body(response)[0])


def error_from_response(
    response: httpx.Response, *, method: str, idempotent: bool = True, retry_after: float | None = None
) -> DataverseApiError | AuthenticationError:
    """The typed error for a Dataverse error answer: status, Dataverse code, message, request id and Retry-After."""
    status = response.status_code
    code, server_message = _error_body(response)
    req_id = request_id(response)
    path = response.request.url.path if response.request else ""
    said = server_message or response.reason_phrase or "no message"
    where = f"{method} {path}"
    suffix = "".join([f" (code {code})" if code else "", f" [request id {req_id}]" if req_id else ""])
    if retry_after is None:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    common: dict[str, Any] = {
        "status_code": status,
        "code": code,
        "request_id": req_id,
        "retry_after": retry_after,
        "method": method,
        "url": str(response.request.url.copy_with(query=None)) if response.request else None,
    }
    if status == 401:
        return DataverseAuthError(
            f"Dataverse refused the access token for {where}: {said}{suffix}. Check that the secret is current, that "
            "tenant_id is the environment's tenant, and that the token is for organization_url",
            code=code,
            request_id=req_id,
            www_authenticate=response.headers.get("WWW-Authenticate"),
        )
    if status == 403:
        return FatalApiError(
            f"Dataverse denied {where}: {said}{suffix}. The application user lacks a privilege; if every request is "
            "denied, add the app as an application user of this environment in the Power Platform admin center and "
            "give it a security role",
            **common,
        )
    if status == 404:
        return NotFoundError(f"not found: {where}: {said}{suffix}", **common)
    failure = classify_status(status, retry_after=retry_after, has_error_code=_has_code(code))
    if failure is Failure.THROTTLED:
        return RetriableApiError(
            f"Dataverse is throttling requests ({status}) and the retry budget is spent: {said}{suffix}. Try again "
            "after Retry-After seconds, or lower the request rate",
            **common,
        )
    if failure is Failure.TRANSIENT:
        text = f"Dataverse failed with HTTP {status} on {where}: {said}{suffix}"
        if not idempotent:
            return OutcomeUnknownError(f"{text}; the request may or may not have been applied", **common)
        return RetriableApiError(f"{text}; try again later", **common)
    return FatalApiError(f"Dataverse rejected {where} (HTTP {status}): {said}{suffix}", **common)
