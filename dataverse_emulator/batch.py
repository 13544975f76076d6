"""``POST {api}/$batch``: multipart/mixed parsing, change sets, ``Content-ID`` references and response framing.

Why every operation is replayed through ``WebApi.handle`` with a synthetic ASGI scope: an inner request must be
answered exactly as the same request sent alone (same auth principal from the outer ``Authorization``, impersonation
headers honoured, same errors). The outer ``$batch`` request already runs in one SQLite transaction; each change set
and each stand-alone write runs inside a SAVEPOINT, so a failure rolls back exactly that change set (reference 6.1)
or that one operation, and everything that succeeded is committed with the batch.

Framing (reference 6.2 - 6.4): CRLF lines; response boundaries ``batchresponse_<guid>`` / ``changesetresponse_<guid>``;
stop at the first failure (outer status = the failing status, parts up to and including it) unless
``Prefer: odata.continue-on-error`` (outer 200, every operation answered, later change sets still run: GUESS, the
docs disagree). A failed change set answers with one part, the failing request's, carrying its ``Content-ID``.

LF-only bodies (reference 6.1, SupportArticles web-api-client-errors.md): refused with 400 ``0x80048d19`` "Stream was
not readable", except with Microsoft's workaround of extra line endings at the end: an LF-only body with at least one
extra line ending after its closing delimiter's own is accepted (GUESS at how many the service needs; dataverse-api
1.4.3, a published client, ends its LF-only batches with exactly that, ``--batch_x--\n\n``).
"""

from __future__ import annotations

import asyncio
import http
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from . import errors
from .errors import DataverseError, error_response
from .throttle import count_records

if TYPE_CHECKING:
    from .context import Ctx
    from .record_writes import RecordApi

MAX_OPERATIONS = 1000
MAX_INNER_URL = 65536
BOUNDARY_RE = re.compile(r'boundary\s*=\s*"?([^";,\s]+)"?', re.IGNORECASE)
REF_RE = re.compile(r"^\$([A-Za-z0-9_.-]+)(.*)$", re.DOTALL)
#: inner request headers passed through from the outer request unless the part sets its own
INHERITED = ("authorization", "host", "callerobjectid", "mscrmcallerid", "user-agent")
#: response headers copied into a part (the others belong to the outer HTTP exchange)
PART_HEADERS = ("content-type", "odata-version", "location", "odata-entityid", "etag", "preference-applied")


@dataclass
class Operation:
    """One ``application/http`` part: request line, headers and body; ``content_id`` inside change sets."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    content_id: str | None = None


@dataclass
class ChangeSet:
    """A nested ``multipart/mixed`` part: operations applied atomically."""

    operations: list[Operation] = field(default_factory=list)


def batch_error(message: str, code: str = "0x80048d19") -> DataverseError:
    """A refusal of the whole batch (plain JSON, not multipart)."""
    return DataverseError(400, code, message)


def _stream_not_readable() -> DataverseError:
    return errors.payload_error("", "System.ArgumentException: Stream was not readable.")


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a multipart/mixed content type."""
    if "multipart/mixed" not in content_type.lower():
        return None
    m = BOUNDARY_RE.search(content_type)
    return m.group(1) if m else None


def split_lines(body: bytes, boundary: str) -> list[str]:
    """The body's lines: CRLF as documented; LF-only only with the documented workaround (see module docstring)."""
    text = body.decode("utf-8")
    if "\r\n" in text:
        return text.split("\r\n")
    closing = f"--{boundary}--"
    tail = text.rsplit(closing, 1)
    if len(tail) != 2 or tail[1].count("\n") < 2:  # the delimiter's own line ending plus one extra
        raise _stream_not_readable()
    return text.split("\n")


def _parts(lines: list[str], boundary: str) -> list[list[str]]:
    """Lines of each part between ``--boundary`` delimiters (the preamble and epilogue are ignored)."""
    delim, close = f"--{boundary}", f"--{boundary}--"
    parts: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        stripped = line.rstrip()
        if stripped == close:
            if current is not None:
                parts.append(current)
            return parts
        if stripped == delim:
            if current is not None:
                parts.append(current)
            current = []
        elif current is not None:
            current.append(line)
    raise batch_error(f"The batch is missing its closing delimiter '--{boundary}--'.")


def _headers(lines: list[str]) -> tuple[list[tuple[str, str]], int]:
    """Header lines up to the first blank line; returns them and the index after the blank line."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines) and lines[i].strip() != "":
        name, sep, value = lines[i].partition(":")
        if not sep:
            raise batch_error(f"Invalid header line in a batch part: '{lines[i]}'.")
        out.append((name.strip().lower(), value.strip()))
        i += 1
    return out, i + 1


def _operation(lines: list[str], in_changeset: bool) -> Operation:
    part_headers, i = _headers(lines)
    hdr = dict(part_headers)
    if "application/http" not in hdr.get("content-type", "application/http").lower():
        raise batch_error("A batch part must have Content-Type application/http.")
    while i < len(lines) and lines[i].strip() == "":
        i += 1
    if i >= len(lines):
        raise batch_error("A batch part has no request line.")
    # METHOD URL HTTP/1.1; the URL is everything in between (tolerates unencoded spaces in a query)
    method, _, rest = lines[i].strip().partition(" ")
    url, _, version = rest.rpartition(" ")
    if not version.upper().startswith("HTTP/"):
        url = rest
    method, url = method.upper(), url.strip()
    if not url:
        raise batch_error(f"Invalid request line in a batch part: '{lines[i].strip()}'.")
    inner_headers, j = _headers(lines[i + 1 :])
    body_lines = lines[i + 1 + j :]
    while body_lines and body_lines[-1].strip() == "":
        body_lines.pop()
    body = "\r\n".join(body_lines).encode()
    cid = hdr.get("content-id")
    if in_changeset and cid is None:
        raise batch_error("Content-ID header not present for a request in a change set.", "0x80060888")
    return Operation(method, url, inner_headers, body, cid)


def parse(body: bytes, content_type: str) -> list[Operation | ChangeSet]:
    """The batch's items in order: stand-alone operations and change sets."""
    boundary = boundary_of(content_type)
    if boundary is None:
        raise batch_error("The content type of a $batch request must be multipart/mixed with a boundary.")
    lines = split_lines(body, boundary)
    items: list[Operation | ChangeSet] = []
    for part in _parts(lines, boundary):
        hdrs, i = _headers(part)
        cs_boundary = boundary_of(dict(hdrs).get("content-type", ""))
        if cs_boundary is None:
            items.append(_operation(part, in_changeset=False))
            continue
        cs = ChangeSet()
        for inner in _parts(part[i:], cs_boundary):
            inner_ct = dict(_headers(inner)[0]).get("content-type", "")
            if boundary_of(inner_ct) is not None:
                raise batch_error("Change sets cannot be nested.")
            op = _operation(inner, in_changeset=True)
            if op.method == "GET":
                raise batch_error("GET requests are not allowed inside a change set.", "0x80060888")
            cs.operations.append(op)
        items.append(cs)
    count = sum(len(it.operations) if isinstance(it, ChangeSet) else 1 for it in items)
    if count > MAX_OPERATIONS:
        # the [COMMUNITY] wording of reference 6.1
        raise batch_error(
            "The current change set contains too many operations. A maximum number of '1000' operations are allowed "
            "in a change set",
            "0x80060888",
        )
    return items


class Runner:
    """Executes parsed items against the Web API handlers and frames the multipart response."""

    def __init__(self, api: RecordApi, outer: Request, ctx: Ctx) -> None:
        self.api = api
        self.outer = outer
        self.ctx = ctx
        self.refs: dict[str, str] = {}
        self.savepoints = 0
        self.marks: dict[str, int] = {}  # savepoint -> where its pending webhook deliveries start

    # -- one operation ------------------------------------------------------------------------------------------

    def _resolve_refs(self, op: Operation) -> tuple[str, bytes]:
        url = op.url
        m = REF_RE.match(url)
        if m:
            ref = f"${m.group(1)}"
            if ref not in self.refs:
                raise DataverseError(400, "0x0", f"Content-ID Reference: '{ref}' does not exist in the batch context.")
            url = self.refs[ref] + m.group(2)
        body = op.body
        if body and self.refs and b'"$' in body:
            try:
                data = json.loads(body)
            except ValueError:
                return url, body
            body = json.dumps(self._replace_refs(data)).encode()
        return url, body

    def _replace_refs(self, value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if isinstance(v, str) and (k.endswith("@odata.bind") or k == "@odata.id"):
                    m = REF_RE.match(v)
                    if m:
                        ref = f"${m.group(1)}"
                        if ref not in self.refs:
                            raise DataverseError(
                                400, "0x0", f"Content-ID Reference: '{ref}' does not exist in the batch context."
                            )
                        v = self.refs[ref] + m.group(2)
                out[k] = self._replace_refs(v)
            return out
        if isinstance(value, list):
            return [self._replace_refs(v) for v in value]
        return value

    def _scope(self, op: Operation, url: str, body: bytes) -> dict[str, Any]:
        outer = self.outer.scope
        if "://" in url:
            parts = urlsplit(url)
            path, query = parts.path, parts.query
        else:
            path, _, query = url.partition("?")
            if not path.startswith("/"):
                path = urlsplit(self.ctx.api).path + "/" + path
        from urllib.parse import unquote

        headers: dict[str, str] = {}
        for k, v in outer["headers"]:
            name = k.decode("latin-1").lower()
            if name in INHERITED:
                headers[name] = v.decode("latin-1")
        for name, value in op.headers:
            headers[name] = value
        headers["content-length"] = str(len(body))
        return {
            "type": "http",
            "asgi": outer.get("asgi", {"version": "3.0"}),
            "http_version": "1.1",
            "method": op.method,
            "scheme": outer.get("scheme", "http"),
            "server": outer.get("server"),
            "client": outer.get("client"),
            "root_path": "",
            "path": unquote(path),
            "raw_path": path.encode("latin-1", "replace"),
            "query_string": query.encode("latin-1", "replace"),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            "state": {},
            "app": outer.get("app"),
        }

    async def run(self, op: Operation) -> Response:
        """One operation through ``WebApi.handle``; refusals before dispatch become error parts."""
        # let the event loop run between operations (this request keeps the store: Emulator.store_turn), so a batch of
        # 1,000 does not hold other requests' admission, or an answer due to leave, for its whole run
        await asyncio.sleep(0)
        try:
            url, body = self._resolve_refs(op)
            if urlsplit(url).path.rstrip("/").endswith("$batch"):
                raise batch_error("A batch cannot contain another batch.", "0x80060888")
            if len(url) > MAX_INNER_URL:
                raise DataverseError(
                    414, "", "The length of the URL for this request exceeds the configured maxUrlLength value."
                )
            scope = self._scope(op, url, body)
        except DataverseError as e:
            return error_response(e)
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        resp = await self.api.handle(Request(scope, receive))
        if op.method == "POST" and resp.status_code == 204 and "odata-entityid" in resp.headers:
            resp.headers.setdefault("Location", resp.headers["odata-entityid"])
        if op.content_id is not None and resp.status_code < 400:
            target = resp.headers.get("odata-entityid") or resp.headers.get("location")
            if target:
                self.refs[f"${op.content_id}"] = target
        return resp

    def _savepoint(self) -> str:
        self.savepoints += 1
        name = f"dv_batch_{self.savepoints}"
        self.api.store.savepoint(name)
        self.marks[name] = self.api.emu.webhooks.mark()
        return name

    def _release(self, name: str, rollback: bool) -> None:
        """End a savepoint; a rolled-back one also drops the asynchronous webhook deliveries it queued."""
        self.api.store.release(name, rollback)
        if rollback:
            self.api.emu.webhooks.discard_since(self.marks[name])

    # -- framing --------------------------------------------------------------------------------------------------

    @staticmethod
    def frame(resp: Response, content_id: str | None) -> str:
        """One ``application/http`` response part (CRLF lines)."""
        lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        if content_id is not None:
            lines.append(f"Content-ID: {content_id}")
        lines.append("")
        lines.append(f"HTTP/1.1 {resp.status_code} {http.HTTPStatus(resp.status_code).phrase}")
        if resp.status_code >= 400 and "req_id" in resp.headers:
            lines.append(f"REQ_ID: {resp.headers['req_id']}")
        for name in PART_HEADERS:
            if name in resp.headers:
                display = {"odata-version": "OData-Version", "odata-entityid": "OData-EntityId", "etag": "ETag"}.get(
                    name, "-".join(p.capitalize() for p in name.split("-"))
                )
                lines.append(f"{display}: {resp.headers[name]}")
        lines.append("")
        body = bytes(resp.body).decode("utf-8") if resp.body else ""
        return "\r\n".join(lines) + "\r\n" + body

    async def execute(self, items: list[Operation | ChangeSet], continue_on_error: bool) -> tuple[int, str, str]:
        """Run every item; returns the outer status, the response boundary and the multipart body."""
        boundary = f"batchresponse_{uuid.uuid4()}"
        chunks: list[str] = []
        status = 200
        for item in items:
            if isinstance(item, Operation):
                sp = self._savepoint() if item.method != "GET" else None
                resp = await self.run(item)
                failed = resp.status_code >= 400
                if sp:
                    self._release(sp, rollback=failed)
                chunks.append(f"--{boundary}\r\n" + self.frame(resp, item.content_id))
                if failed and not continue_on_error:
                    status = resp.status_code
                    break
                continue
            cs_boundary = f"changesetresponse_{uuid.uuid4()}"
            sp = self._savepoint()
            parts: list[str] = []
            failure: tuple[Response, Operation] | None = None
            for op in item.operations:
                resp = await self.run(op)
                if resp.status_code >= 400:
                    failure = (resp, op)
                    break
                parts.append(self.frame(resp, op.content_id))
            self._release(sp, rollback=failure is not None)
            if failure is not None:
                parts = [self.frame(failure[0], failure[1].content_id)]
            body = "".join(f"--{cs_boundary}\r\n{p}\r\n" for p in parts) + f"--{cs_boundary}--"
            chunks.append(f"--{boundary}\r\nContent-Type: multipart/mixed; boundary={cs_boundary}\r\n\r\n{body}")
            if failure is not None and not continue_on_error:
                status = failure[0].status_code
                break
        text = "".join(c + "\r\n" for c in chunks) + f"--{boundary}--\r\n"
        return status, boundary, text


async def handle(api: RecordApi, request: Request, ctx: Ctx) -> Response:
    """``POST $batch``: parse, run, frame (a malformed batch is refused as a whole with a JSON error)."""
    if request.method != "POST":
        raise errors.DataverseError(
            405, "0x80060888", f"The requested resource does not support http method '{request.method}'."
        )
    items = parse(await request.body(), request.headers.get("content-type", ""))
    count_records(request, sum(len(it.operations) if isinstance(it, ChangeSet) else 1 for it in items))
    continue_on_error = "odata.continue-on-error" in ctx.prefer
    if continue_on_error:
        ctx.applied.append("odata.continue-on-error")
    status, boundary, text = await Runner(api, request, ctx).execute(items, continue_on_error)
    return Response(
        text.encode(),
        status_code=status,
        headers={"OData-Version": "4.0", "Content-Type": f"multipart/mixed; boundary={boundary}"},
    )
