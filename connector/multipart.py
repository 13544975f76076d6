"""The ``$batch`` wire format: a strict multipart/mixed encoder and decoder for ``application/http`` parts.

Why our own codec rather than the stdlib ``email`` parser: the parser is the place where a batch answer is mapped
back to the operations that produced it, and that mapping must never guess. Dataverse refuses LF-only bodies
("Stream was not readable", reference 6.1), so the encoder writes CRLF everywhere, and the decoder refuses a bare LF
in any framing line (delimiters, part headers, request and status lines, HTTP headers) instead of silently
accepting what the service itself would reject. Bodies are opaque bytes: a part ends only at CRLF followed by
``--boundary`` and a delimiter ending (``--``, CRLF or padding), so the boundary text inside a JSON body (mid-line)
is content, not a delimiter. The encoder picks boundaries that do not occur in any body.

Layout of a part (reference 6.2): boundary line, part headers, blank line, request (or status) line, HTTP headers,
blank line, body; the CRLF before the next delimiter belongs to the delimiter (RFC 2046).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from connector.errors import MultipartError

__all__ = [
    "BatchOperation",
    "ChangeSet",
    "ChangeSetResponse",
    "OperationResponse",
    "boundary_of",
    "decode_batch",
    "decode_batch_response",
    "encode_batch",
    "encode_batch_response",
]

CRLF = b"\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BOUNDARY_PARAM = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^\s;,]+))', re.IGNORECASE)
_BOUNDARY_OK = re.compile(r"^[0-9A-Za-z'()+_,./:=?-]{1,70}$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_STATUS_LINE = re.compile(r"^HTTP/1\.[01] (\d{3})(?: (.*))?$")
_REQUEST_LINE = re.compile(r"^([A-Z]+) (\S+) HTTP/1\.[01]$")

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class BatchOperation:
    """One request inside a batch; ``url`` is written as given (an absolute path such as ``/api/data/v9.2/x``)."""

    method: str
    url: str
    headers: Headers = ()
    body: bytes = b""
    content_id: str | None = None


@dataclass(frozen=True)
class ChangeSet:
    """Operations that succeed or fail together (a database transaction on the server)."""

    operations: tuple[BatchOperation, ...]


@dataclass(frozen=True)
class OperationResponse:
    """One answer inside a batch response."""

    status: int
    reason: str = ""
    headers: Headers = ()
    body: bytes = b""
    content_id: str | None = None

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)

    def json(self) -> Any:
        """The decoded JSON body, or None when the body is empty or not JSON."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass(frozen=True)
class ChangeSetResponse:
    """The answers of one change set: one per operation, or only the failing one after a rollback."""

    responses: tuple[OperationResponse, ...] = field(default_factory=tuple)


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a ``multipart/mixed`` content type (quoted or not), or None."""
    if not content_type.lower().lstrip().startswith("multipart/mixed"):
        return None
    match = _BOUNDARY_PARAM.search(content_type)
    if not match:
        return None
    return match.group(1) or match.group(2)


def _new_boundary(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4()}"


# -- encoding -------------------------------------------------------------------------------------------------------
def _check_header(name: str, value: str) -> None:
    if not _TOKEN.match(name):
        raise MultipartError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value:
        raise MultipartError(f"header {name!r} holds a line break")


def _header_bytes(headers: Sequence[tuple[str, str]]) -> bytes:
    out = b""
    for name, value in headers:
        _check_header(name, value)
        out += f"{name}: {value}".encode("latin-1") + CRLF
    return out


def _pick_boundary(prefix: str, bodies: Sequence[bytes], given: str | None, new_boundary: Callable[[str], str]) -> str:
    """A boundary that no body contains: the given one (or an error), else fresh ones until one fits."""

    def fits(candidate: str) -> bool:
        marker = b"--" + candidate.encode("ascii")
        return not any(marker in body for body in bodies)

    if given is not None:
        if not _BOUNDARY_OK.match(given):
            raise MultipartError(f"invalid boundary {given!r}")
        if not fits(given):
            raise MultipartError(f"the boundary {given!r} occurs inside a body; choose another")
        return given
    for _ in range(100):
        candidate = new_boundary(prefix)
        if _BOUNDARY_OK.match(candidate) and fits(candidate):
            return candidate
    raise MultipartError("could not find a boundary that no body contains")


def _multipart(parts: Sequence[bytes], boundary: str) -> bytes:
    delim = b"--" + boundary.encode("ascii")
    return b"".join(delim + CRLF + part + CRLF for part in parts) + delim + b"--"


def _operation_part(op: BatchOperation) -> bytes:
    if not _TOKEN.match(op.method) or not op.method.isupper():
        raise MultipartError(f"invalid method {op.method!r}")
    if not op.url or any(c.isspace() for c in op.url):
        raise MultipartError(f"invalid request URL {op.url!r}")
    head: list[tuple[str, str]] = [("Content-Type", "application/http"), ("Content-Transfer-Encoding", "binary")]
    if op.content_id is not None:
        if not _CONTENT_ID.match(op.content_id):
            raise MultipartError(f"invalid Content-ID {op.content_id!r}")
        head.append(("Content-ID", op.content_id))
    request_line = f"{op.method} {op.url} HTTP/1.1".encode("latin-1")
    return _header_bytes(head) + CRLF + request_line + CRLF + _header_bytes(op.headers) + CRLF + op.body


def _all_bodies(items: Sequence[BatchOperation | ChangeSet]) -> list[bytes]:
    bodies: list[bytes] = []
    for item in items:
        bodies += [o.body for o in item.operations] if isinstance(item, ChangeSet) else [item.body]
    return bodies


def encode_batch(
    items: Sequence[BatchOperation | ChangeSet],
    *,
    boundary: str | None = None,
    new_boundary: Callable[[str], str] = _new_boundary,
) -> tuple[str, bytes]:
    """The ``Content-Type`` and body of a ``$batch`` request: CRLF framing, a change set per :class:`ChangeSet`."""
    bodies = _all_bodies(items)
    outer = _pick_boundary("batch", bodies, boundary, new_boundary)
    parts: list[bytes] = []
    for item in items:
        if isinstance(item, ChangeSet):
            inner = _pick_boundary("changeset", [*bodies, outer.encode()], None, new_boundary)
            head = _header_bytes([("Content-Type", f'multipart/mixed; boundary="{inner}"')])
            parts.append(head + CRLF + _multipart([_operation_part(o) for o in item.operations], inner))
        else:
            parts.append(_operation_part(item))
    return f'multipart/mixed; boundary="{outer}"', _multipart(parts, outer) + CRLF


def _response_part(resp: OperationResponse) -> bytes:
    head: list[tuple[str, str]] = [("Content-Type", "application/http"), ("Content-Transfer-Encoding", "binary")]
    if resp.content_id is not None:
        head.append(("Content-ID", resp.content_id))
    status_line = f"HTTP/1.1 {resp.status} {resp.reason}".rstrip().encode("latin-1")
    return _header_bytes(head) + CRLF + status_line + CRLF + _header_bytes(resp.headers) + CRLF + resp.body


def encode_batch_response(
    items: Sequence[OperationResponse | ChangeSetResponse],
    *,
    new_boundary: Callable[[str], str] = _new_boundary,
) -> tuple[str, bytes]:
    """A batch response as Dataverse frames it (``batchresponse_``/``changesetresponse_`` boundaries)."""
    bodies = [r.body for item in items for r in (item.responses if isinstance(item, ChangeSetResponse) else [item])]
    outer = _pick_boundary("batchresponse", bodies, None, new_boundary)
    parts: list[bytes] = []
    for item in items:
        if isinstance(item, ChangeSetResponse):
            inner = _pick_boundary("changesetresponse", bodies, None, new_boundary)
            head = _header_bytes([("Content-Type", f"multipart/mixed; boundary={inner}")])
            parts.append(head + CRLF + _multipart([_response_part(r) for r in item.responses], inner))
        else:
            parts.append(_response_part(item))
    return f"multipart/mixed; boundary={outer}", _multipart(parts, outer) + CRLF


# -- decoding -------------------------------------------------------------------------------------------------------
def _no_bare_lf(block: bytes, what: str) -> None:
    if _BARE_LF.search(block):
        raise MultipartError(f"{what} has a line ending without CR (bare LF); every framing line must end in CRLF")


def split_parts(body: bytes, boundary: str) -> list[bytes]:
    """The parts of a multipart body between ``--boundary`` delimiters; preamble and epilogue are dropped."""
    delim = b"--" + boundary.encode("latin-1")
    endings = (b"-", b" ", b"\t", b"\r", b"\n")

    def find(start: int) -> int:
        """Index of the next delimiter line (the position of ``--``), or -1."""
        while True:
            i = body.find(CRLF + delim, start)
            if i < 0:
                return -1
            after = i + 2 + len(delim)
            if after >= len(body) or body[after : after + 1] in endings:
                return i + 2
            start = i + 1

    pos = 0 if body.startswith(delim) and body[len(delim) : len(delim) + 1] in endings else find(0)
    if pos < 0:
        if (b"\n" + delim) in body or body.startswith(delim):
            raise MultipartError("the multipart body uses bare LF line endings; CRLF is required")
        raise MultipartError(f"no delimiter --{boundary} in the multipart body")
    parts: list[bytes] = []
    while True:
        j = pos + len(delim)
        if body[j : j + 2] == b"--":
            return parts
        while body[j : j + 1] in (b" ", b"\t"):
            j += 1
        if body[j : j + 2] != CRLF:
            if body[j : j + 1] == b"\n":
                raise MultipartError(f"the delimiter --{boundary} ends in a bare LF; CRLF is required")
            raise MultipartError(f"the delimiter --{boundary} is not followed by CRLF")
        start = j + 2
        nxt = find(start - 2)
        if nxt < 0:
            raise MultipartError(f"the multipart body is missing its closing delimiter --{boundary}--")
        parts.append(body[start : nxt - 2])
        pos = nxt


def _parse_headers(lines: list[bytes], what: str) -> Headers:
    out: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and out:
            name, value = out[-1]
            out[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise MultipartError(f"{what}: malformed header line {line!r}")
        out.append((name, value.strip()))
    return tuple(out)


def _head_and_body(part: bytes, what: str) -> tuple[list[bytes], bytes]:
    """Split at the first empty line: the header lines (checked for bare LF) and the opaque rest."""
    if part.startswith(CRLF):
        return [], part[2:]
    end = part.find(CRLF + CRLF)
    head = part if end < 0 else part[:end]
    _no_bare_lf(head, what)
    if end < 0:  # headers only (a GET written without the empty line before its delimiter)
        return (head[:-2] if head.endswith(CRLF) else head).split(CRLF), b""
    return head.split(CRLF), part[end + 4 :]


def _header(headers: Headers, name: str) -> str | None:
    lower = name.lower()
    return next((v for k, v in headers if k.lower() == lower), None)


def _http_part(part: bytes, what: str) -> tuple[str, Headers, bytes, str | None]:
    """``(start line, headers, body, Content-ID)`` of an ``application/http`` part."""
    head_lines, message = _head_and_body(part, f"{what} headers")
    part_headers = _parse_headers(head_lines, f"{what} headers")
    ctype = (_header(part_headers, "Content-Type") or "").split(";")[0].strip().lower()
    if ctype != "application/http":
        raise MultipartError(f"{what}: expected Content-Type application/http, got {ctype or 'none'!r}")
    lines, body = _head_and_body(message, f"{what} message")
    if not lines or not lines[0]:
        raise MultipartError(f"{what}: missing request or status line")
    return lines[0].decode("latin-1"), _parse_headers(lines[1:], what), body, _header(part_headers, "Content-ID")


def _changeset_boundary(part: bytes, what: str) -> tuple[str | None, bytes]:
    head_lines, rest = _head_and_body(part, f"{what} headers")
    headers = _parse_headers(head_lines, f"{what} headers")
    return boundary_of(_header(headers, "Content-Type") or ""), rest


def _outer_boundary(content_type: str) -> str:
    boundary = boundary_of(content_type)
    if boundary is None:
        raise MultipartError(f"not a multipart/mixed content type with a boundary: {content_type!r}")
    return boundary


def _request(part: bytes, what: str) -> BatchOperation:
    start, headers, body, cid = _http_part(part, what)
    match = _REQUEST_LINE.match(start)
    if not match:
        raise MultipartError(f"{what}: malformed request line {start!r}")
    return BatchOperation(match.group(1), match.group(2), headers, body, cid)


def decode_batch(content_type: str, body: bytes) -> list[BatchOperation | ChangeSet]:
    """Read a ``$batch`` request body back into operations and change sets (the inverse of :func:`encode_batch`)."""
    items: list[BatchOperation | ChangeSet] = []
    for n, part in enumerate(split_parts(body, _outer_boundary(content_type))):
        inner, rest = _changeset_boundary(part, f"part {n + 1}")
        if inner is None:
            items.append(_request(part, f"part {n + 1}"))
            continue
        ops = tuple(_request(p, f"part {n + 1}.{m + 1}") for m, p in enumerate(split_parts(rest, inner)))
        items.append(ChangeSet(ops))
    return items


def _response(part: bytes, what: str) -> OperationResponse:
    start, headers, body, cid = _http_part(part, what)
    match = _STATUS_LINE.match(start)
    if not match:
        raise MultipartError(f"{what}: malformed status line {start!r}")
    return OperationResponse(int(match.group(1)), match.group(2) or "", headers, body, cid)


def decode_batch_response(content_type: str, body: bytes) -> list[OperationResponse | ChangeSetResponse]:
    """Read a ``$batch`` response: one item per top-level part, change set answers grouped."""
    items: list[OperationResponse | ChangeSetResponse] = []
    for n, part in enumerate(split_parts(body, _outer_boundary(content_type))):
        inner, rest = _changeset_boundary(part, f"response part {n + 1}")
        if inner is None:
            items.append(_response(part, f"response part {n + 1}"))
            continue
        answers = tuple(_response(p, f"response part {n + 1}.{m + 1}") for m, p in enumerate(split_parts(rest, inner)))
        items.append(ChangeSetResponse(answers))
    return items
