"""Errors of the runtime server as RFC 9457 problem details: the CLI's error tree, mapped to HTTP statuses.

Why one mapping next to the CLI's exit codes rather than per endpoint: a platform branches on the status the way a
script branches on the exit code, so the same error gets the same answer whichever door it came through. Input
problems keep their JSON paths, turned into JSON Pointers into the request body (``$.fields.name`` of an action's
inputs becomes ``/inputs/fields/name``). Messages are the errors' own, which never carry a secret.

=========================  =====  ====================================================================
error                      status why
=========================  =====  ====================================================================
InputError                 422    the inputs are wrong; ``errors`` lists each problem with its pointer
ConnectionConfigError      422    a posted connection is wrong or refused by the operator policy
AuthenticationError        502    the identity platform refused (``auth_code``); 409 not signed in yet,
                                  400 a sign-in answer matching no sign-in started (``StateMismatch``)
DataverseApiError          502    Dataverse answered with an error (``dataverse_code``, ``status_code``)
WebhookError               its own status (401, 413, ...)
ContractError, anything    500    our bug
=========================  =====  ====================================================================
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import JSONResponse

from connector.errors import (
    AuthenticationError,
    ConnectionConfigError,
    ConnectorError,
    DataverseApiError,
    InputError,
    WebhookError,
)

__all__ = ["PROBLEM_TYPE", "pointer", "problem", "problem_of", "problem_response"]

PROBLEM_TYPE = "application/problem+json"
_BASE = "https://d365-connector.dev/problems/"
#: Sign-in failures that are the caller's to fix, not the identity platform's refusals (502).
_AUTH_STATUS = {"LoginRequired": 409, "StateMismatch": 400}
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def pointer(path: str, root: str) -> str:
    """A problem's JSON path (``$.records[3].name``) as a JSON Pointer under ``root`` (``/inputs/records/3/name``).

    Paths that name something other than the body's inputs (``$action``, ``$data_source``) point at the root's
    sibling of that name.
    """
    if path.startswith("$") and len(path) > 1 and path[1] not in ".[":
        return "/" + path[1:]
    steps = [m.group(1) if m.group(1) is not None else m.group(2) for m in _STEP.finditer(path[1:])]
    return root + "".join("/" + s.replace("~", "~0").replace("/", "~1") for s in steps)


def problem(status: int, title: str, detail: str, kind: str = "about:blank", **extra: Any) -> dict[str, Any]:
    """One problem document; ``kind`` names the problem type under the project's problem namespace."""
    type_uri = kind if kind == "about:blank" else _BASE + kind
    return {"type": type_uri, "title": title, "status": status, "detail": detail, **extra}


def problem_of(exc: BaseException, root: str = "/inputs") -> dict[str, Any]:
    """The problem for an error raised while serving a request; ``root`` is where the inputs sit in the body."""
    if isinstance(exc, InputError):
        errors = [{"path": pointer(p.path, root), "message": p.message} for p in exc.problems]
        return problem(422, "invalid input", exc.message, "input", errors=errors)
    if isinstance(exc, AuthenticationError):
        status = _AUTH_STATUS.get(exc.code or "", 502)
        return problem(status, "sign-in refused", exc.message, "auth", auth_code=exc.code)
    if isinstance(exc, ConnectionConfigError):
        errors = [{"path": "/" + exc.field, "message": exc.message}] if exc.field else []
        return problem(422, "invalid connection", exc.message, "connection", errors=errors)
    if isinstance(exc, DataverseApiError):
        return problem(
            502,
            "Dataverse refused the request",
            exc.message,
            "dataverse",
            dataverse_code=exc.code,
            dataverse_status=exc.status_code,
            request_id=exc.request_id,
            retriable=exc.retriable,
            retry_after=exc.retry_after,
        )
    if isinstance(exc, WebhookError):
        return problem(exc.status_code, "webhook refused", exc.message, "webhook")
    if isinstance(exc, ConnectorError):
        return problem(500, "connector error", exc.message, exc.kind)
    return problem(500, "internal error", f"the server failed ({type(exc).__name__}); see its log", "internal")


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=int(body["status"]), media_type=PROBLEM_TYPE, headers=headers)
