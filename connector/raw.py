"""``raw_request``: any Web API call the other actions do not cover, without ever sending the token elsewhere.

Why the path rules are strict: the request carries the connection's bearer token, so a path that leaves the
organization's Web API root would hand that token to whoever a crafted input names. A path is therefore relative to
the Web API root; it is percent-decoded repeatedly (so ``%2e%2e``, ``%252e%252e`` and ``..%2f`` are seen for what they
are) and refused when any decoding holds a ``..`` segment, a backslash, an empty segment (``//``), a scheme
(``https:``, ``javascript:``), a fragment or a control character. An absolute URL is accepted only when it lies under
the connection's own Web API root (it is made relative first). ``Authorization`` cannot be set: the connection owns it.

The request goes through :meth:`connector.client.DataverseClient.request`, so the governor, throttling waits and the
error mapping are those of every other action. ``max_retries`` adds retries on top, after the client's own retries
gave up: by default only for errors that are retriable (throttling budget spent, timeouts, 5xx without a Dataverse
code), with ``retry_on_all_errors`` for any Dataverse error too (a non-idempotent request is then the user's call).
The waits go through the connection's clock.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx

from connector.errors import DataverseApiError, FatalApiError, InputError, InputProblem, RetriableApiError
from connector.inputs import RawRequest

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["raw_request", "raw_request_problems", "relative_path"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Hop-by-hop headers (RFC 9110 7.6.1) describe one connection, not the request: set by hand they let a request leave
#: with both ``Transfer-Encoding`` and ``Content-Length``, which proxies may read as two requests (smuggling).
HOP_BY_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
FORBIDDEN_HEADERS = frozenset({"authorization", "proxy-authorization", "host", "content-length"}) | HOP_BY_HOP_HEADERS


def _decodings(text: str) -> list[str]:
    """The text and each further percent-decoding of it, until decoding changes nothing (at most 6 rounds)."""
    out = [text]
    for _ in range(6):
        nxt = unquote(out[-1])
        if nxt == out[-1]:
            break
        out.append(nxt)
    return out


def relative_path(path: str, api_url: str, where: str = "$.path") -> str:
    """The path relative to the Web API root, or an input error saying why it could leave that root."""

    def refuse(why: str) -> InputError:
        return InputError([InputProblem(where, why)])

    root = api_url.rstrip("/") + "/"
    if path.lower().startswith(("http://", "https://")):
        if not path.lower().startswith(root.lower()):
            raise refuse(
                f"absolute URLs are allowed only under this connection's Web API root {root}; give a path relative "
                "to it (such as accounts?$top=1)"
            )
        path = path[len(root) :]
    if path.startswith("/") and not path.startswith("//"):
        path = path[1:]
    target, sep, query = path.partition("?")
    if not target:
        raise refuse("give a path relative to the Web API root, such as accounts or WhoAmI")
    for form in _decodings(target):
        if _CONTROL.search(form):
            raise refuse("the path holds a control character")
        if "\\" in form:
            raise refuse("the path holds a backslash")
        if "#" in form:
            raise refuse("the path holds a fragment (#)")
        if _SCHEME.match(form) or form.startswith("//"):
            raise refuse("the path must be relative to the Web API root: no scheme, host or leading //")
        segments = form.split("/")
        if any(s in ("..", ".") for s in segments):
            raise refuse("the path may not hold . or .. segments (also when percent-encoded)")
        if "" in segments[:-1] or (segments[-1] == "" and len(segments) > 1):
            raise refuse("the path may not hold empty segments (//)")
    if _CONTROL.search(query) or "#" in query:
        raise refuse("the query string holds a control character or a fragment")
    return target + sep + query


def raw_request_problems(inputs: RawRequest, connection: Connection) -> list[InputProblem]:
    """Everything about a raw request that can be refused without sending it."""
    problems: list[InputProblem] = []
    try:
        relative_path(inputs.path, connection.api_url)
    except InputError as exc:
        problems += exc.problems
    for name in inputs.headers or {}:
        if name.lower() in FORBIDDEN_HEADERS:
            if "authorization" in name.lower():
                why = "the connection sends its own credentials"
            elif name.lower() in HOP_BY_HOP_HEADERS:
                why = "it describes the connection, which the HTTP client manages, not the request"
            else:
                why = "the HTTP client sets it from the URL and the body"
            problems.append(InputProblem(f"$.headers.{name}", f"{name} cannot be set: {why}"))
    if inputs.data is not None and (inputs.form_data or inputs.file_data):
        problems.append(InputProblem("$.data", "give data (a JSON body) or form_data/file_data, not both"))
    files = inputs.file_data or []
    for i, item in enumerate(files):
        try:
            base64.b64decode(item["content_base64"], validate=True)
        except (binascii.Error, ValueError):
            problems.append(InputProblem(f"$.file_data[{i}].content_base64", "not valid base64"))
        if len(files) > 1 and not item.get("field"):
            problems.append(InputProblem(f"$.file_data[{i}].field", "with several files each needs its form field"))
    if files and len(files) == 1 and not files[0].get("field") and inputs.form_data:
        problems.append(InputProblem("$.file_data[0].field", "a file sent with form_data needs its form field"))
    if inputs.method == "GET" and (inputs.data is not None or files or inputs.form_data):
        problems.append(InputProblem("$.method", "a GET sends no body; use POST, PATCH or PUT"))
    return problems


def _send_kwargs(inputs: RawRequest) -> dict[str, Any]:
    """The body: JSON ``data``; one field-less file as the raw body (file columns); else a form, multipart if files."""
    files = inputs.file_data or []
    headers = {str(k): str(v) for k, v in (inputs.headers or {}).items()}
    kwargs: dict[str, Any] = {"headers": headers}
    if inputs.data is not None:
        kwargs["json"] = inputs.data
    elif len(files) == 1 and not files[0].get("field"):
        only = files[0]
        kwargs["content"] = base64.b64decode(only["content_base64"])
        names = {k.lower() for k in headers}
        if "content-type" not in names:
            headers["Content-Type"] = only.get("content_type") or "application/octet-stream"
        if "x-ms-file-name" not in names:
            headers["x-ms-file-name"] = only["file_name"]  # Dataverse's file column upload names the file here
    elif files:
        kwargs["files"] = [
            (
                str(f["field"]),
                (
                    str(f["file_name"]),
                    base64.b64decode(f["content_base64"]),
                    f.get("content_type") or "application/octet-stream",
                ),
            )
            for f in files
        ]
        kwargs["data"] = {str(k): str(v) for k, v in (inputs.form_data or {}).items()}
    elif inputs.form_data:  # httpx encodes a form without files as application/x-www-form-urlencoded
        kwargs["data"] = {str(k): str(v) for k, v in inputs.form_data.items()}
    return kwargs


def _query(inputs: RawRequest) -> dict[str, str] | None:
    query = inputs.query
    if not query:
        return None
    return {str(k): ("true" if v is True else "false" if v is False else str(v)) for k, v in query.items()}


def _body(response: httpx.Response, response_type: str) -> Any:
    if response_type == "binary":
        return base64.b64encode(response.content).decode("ascii")
    if response_type == "text":
        return response.text
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise FatalApiError(
            f"Dataverse answered {response.request.method} {response.request.url.path} with a body that is not JSON "
            f"({response.headers.get('Content-Type', 'no content type')}); ask for response_type text or binary",
            status_code=response.status_code,
        ) from exc


def raw_request(connection: Connection, inputs: RawRequest) -> dict[str, Any]:
    """Send the request (with the extra retries asked for) and return status, headers and the decoded body.

    The checks run again here (no I/O, microseconds) because this is where the token is attached: a library caller who
    skipped the runtime must not be able to send it off the Web API root either.
    """
    problems = raw_request_problems(inputs, connection)
    if problems:
        raise InputError(problems)
    path = relative_path(inputs.path, connection.api_url)
    method = inputs.method
    max_retries = inputs.max_retries
    delay_s = inputs.retry_delay_ms / 1000
    retries = 0
    while True:
        try:
            response = connection.client.request(
                method,
                path,
                params=_query(inputs),
                impersonate=inputs.impersonate,
                timeout_s=inputs.timeout,
                **_send_kwargs(inputs),
            )
            break
        except DataverseApiError as exc:
            retriable = isinstance(exc, RetriableApiError) or inputs.retry_on_all_errors
            if not retriable or retries >= max_retries:
                raise
            wait = delay_s * (2**retries if inputs.exponential_backoff else 1)
            connection.clock.sleep(wait)
            retries += 1
    return {
        "status": response.status_code,
        "headers": {k: v for k, v in response.headers.items()},
        "body": _body(response, inputs.response_type),
        "response_type": inputs.response_type,
        "retries": retries,
    }
