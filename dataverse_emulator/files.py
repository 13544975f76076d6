"""File and image columns: single PATCH upload, chunked upload sessions, download with ranges, delete.

Why separate storage: Dataverse keeps file bytes outside the row (the column holds a file id, the name sits in
``<column>_name``), so bytes live in ``_emulator_files`` and the row only gets the id; a chunked upload is a session
(``Location`` with a ``sessiontoken``) whose chunks are committed only when the last byte arrives (reference 15.9).
Size limits follow the column's ``MaxSizeInKB`` (``0x80044a02`` "Attachment file size is too big.").
"""

from __future__ import annotations

import mimetypes
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from starlette.requests import Request
from starlette.responses import Response

from . import errors
from .model import Attribute, Table
from .storage import q

if TYPE_CHECKING:
    from .context import Ctx
    from .record_writes import RecordApi

CHUNK_SIZE = 4 * 1024 * 1024
RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass
class Session:
    """A chunked upload in progress."""

    table: str
    rid: str
    column: str
    name: str
    size: int | None = None
    parts: dict[int, bytes] = field(default_factory=dict)


def _ensure_table(api: RecordApi) -> None:
    api.store.conn.execute(
        "CREATE TABLE IF NOT EXISTS _emulator_files (fileid TEXT PRIMARY KEY, entity TEXT, recordid TEXT,"
        " attribute TEXT, name TEXT, mimetype TEXT, data BLOB)"
    )


def _sessions(api: RecordApi) -> dict[str, Session]:
    emu = api.emu
    if not hasattr(emu, "upload_sessions"):
        emu.upload_sessions = {}  # type: ignore[attr-defined]
    return emu.upload_sessions  # type: ignore[attr-defined,no-any-return]


def max_bytes(attr: Attribute) -> int:
    """The column's ``MaxSizeInKB`` in bytes (32 MB for files, 10 MB for images by default)."""
    return int(attr.extra.get("MaxSizeInKB", 32768 if attr.type == "File" else 10240)) * 1024


def _too_big() -> errors.DataverseError:
    return errors.DataverseError(400, "0x80044a02", "Attachment file size is too big.")


def _store(api: RecordApi, table: Table, rid: str, attr: Attribute, name: str, mime: str, data: bytes) -> None:
    """Replace the column's file: bytes in ``_emulator_files``, the file id in the row, the name in ``_name``."""
    if len(data) > max_bytes(attr):
        raise _too_big()
    _ensure_table(api)
    conn = api.store.conn
    old = api.store.scalar(f"SELECT {q(attr.name)} FROM {q(table.logical_name)} WHERE {q(table.primary_id)} = ?", [rid])
    if old:
        conn.execute("DELETE FROM _emulator_files WHERE fileid = ?", (old,))
    fid = str(uuid.UUID(int=api.emu.rng.getrandbits(128), version=4))
    conn.execute(
        "INSERT INTO _emulator_files VALUES (?, ?, ?, ?, ?, ?, ?)",
        (fid, table.logical_name, rid, attr.name, name, mime, data),
    )
    changes: dict[str, Any] = {attr.name: fid, "versionnumber": api.store.next_version()}
    if f"{attr.name}_name" in table.attributes:
        changes[f"{attr.name}_name"] = name
    api.store.update(table.logical_name, rid, changes)


def _mime(name: str) -> str:
    """The type Dataverse reports for a file: from its name, since uploads send ``application/octet-stream`` (the
    docs' 4094kb.txt, sent so, downloads with ``mimetype: text/plain``); the mapping itself is a GUESS."""
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def _file_name(request: Request) -> str | None:
    params = dict(parse_qsl(request.scope.get("query_string", b"").decode("latin-1")))
    return request.headers.get("x-ms-file-name") or params.get("x-ms-file-name")


def _check_conditions(request: Request, current: str | None) -> None:
    """``If-None-Match: null`` (only when empty, as the SDK sends) and ``If-Match: *`` (only when present)."""
    if request.headers.get("if-none-match") == "null" and current:
        raise errors.DataverseError(412, "0x80040237", "A file already exists for this column.")
    if request.headers.get("if-match") == "*" and not current:
        pass  # Dataverse overwrites or creates; the SDK sends If-Match: * to mean "overwrite"


async def handle(
    api: RecordApi,
    request: Request,
    ctx: Ctx,
    table: Table,
    rid: str,
    row: dict[str, Any],
    attr: Attribute,
    extra: list[str],
) -> Response:
    """``{set}({id})/{column}`` (PATCH upload, DELETE) and ``{set}({id})/{column}/$value`` (GET download)."""
    method = request.method
    params = dict(parse_qsl(request.scope.get("query_string", b"").decode("latin-1")))
    if extra == ["$value"] and method == "GET":
        return _download(api, request, table, rid, row, attr, params.get("size") == "full")
    if extra:
        raise errors.no_resource(str(request.url))
    if method == "DELETE":
        if row.get(attr.name):
            _ensure_table(api)
            api.store.conn.execute("DELETE FROM _emulator_files WHERE fileid = ?", (row[attr.name],))
        changes: dict[str, Any] = {attr.name: None, "versionnumber": api.store.next_version()}
        if f"{attr.name}_name" in table.attributes:
            changes[f"{attr.name}_name"] = None
        api.store.update(table.logical_name, rid, changes)
        return Response(status_code=204, headers={"OData-Version": "4.0"})
    if method == "GET":
        if not row.get(attr.name):
            return Response(status_code=204, headers={"OData-Version": "4.0"})
        return api.json(
            {"@odata.context": f"{ctx.api}/$metadata#{table.entity_set}({rid})/{attr.name}", "value": row[attr.name]}
        )
    if method != "PATCH":
        raise errors.DataverseError(
            405, "0x80060888", f"The requested resource does not support http method '{method}'."
        )
    token = params.get("sessiontoken")
    if token is not None:
        return await _chunk(api, request, token)
    _check_conditions(request, row.get(attr.name))
    name = _file_name(request)
    if request.headers.get("x-ms-transfer-mode", "").lower() == "chunked":
        if not name:
            raise errors.bad_request("The x-ms-file-name header or parameter is required.", "0x80090001")
        token = uuid.uuid4().hex + uuid.uuid4().hex
        _sessions(api)[token] = Session(table.logical_name, rid, attr.name, name)
        location = f"{ctx.api}/{table.entity_set}({rid})/{attr.name}?sessiontoken={quote(token, safe='')}"
        return Response(
            status_code=200,
            headers={
                "OData-Version": "4.0",
                "Location": location,
                "x-ms-chunk-size": str(CHUNK_SIZE),
                "Accept-Ranges": "bytes",
                "Access-Control-Expose-Headers": "x-ms-chunk-size",
            },
        )
    if not name:
        raise errors.bad_request("The x-ms-file-name header is required.", "0x80090001")
    data = await request.body()
    _store(api, table, rid, attr, name, _mime(name), data)
    return Response(status_code=204, headers={"OData-Version": "4.0"})


async def _chunk(api: RecordApi, request: Request, token: str) -> Response:
    """One chunk of a session: 206 until the last byte has arrived, then 204 (the file is committed then)."""
    s = _sessions(api).get(token)
    if s is None:
        raise errors.DataverseError(404, "0x80040217", "The upload session was not found or has expired.")
    m = RANGE_RE.match(request.headers.get("content-range", ""))
    if not m:
        raise errors.bad_request("A Content-Range header 'bytes start-end/total' is required.", "0x80090001")
    start, end, total = (int(g) for g in m.groups())
    data = await request.body()
    if end - start + 1 != len(data) or end >= total or (s.size is not None and s.size != total):
        raise errors.bad_request("The Content-Range header does not match the chunk.", "0x80090001")
    table = api.tables[s.table]
    attr = table.attributes[s.column]
    if total > max_bytes(attr):
        del _sessions(api)[token]
        raise _too_big()
    s.size = total
    s.parts[start] = data
    received = sum(len(p) for p in s.parts.values())
    if received < total:
        return Response(status_code=206, headers={"OData-Version": "4.0"})
    blob = b"".join(s.parts[k] for k in sorted(s.parts))
    del _sessions(api)[token]
    if not api.store.exists(s.table, s.rid):
        raise errors.not_found(s.table, s.rid)
    _store(api, table, s.rid, attr, s.name, _mime(s.name), blob)
    return Response(status_code=204, headers={"OData-Version": "4.0"})


def _download(
    api: RecordApi, request: Request, table: Table, rid: str, row: dict[str, Any], attr: Attribute, full: bool
) -> Response:
    fid = row.get(attr.name)
    if not fid:
        if attr.type == "Image":
            return Response(status_code=204, headers={"OData-Version": "4.0"})
        # single community source: an empty file column answers 404 0x80040217 (reference 15.9)
        raise errors.DataverseError(404, "0x80040217", f"No file attachment found for attribute: {attr.name}.")
    _ensure_table(api)
    conn = api.store.conn
    name, mime, size = conn.execute(
        "SELECT name, mimetype, length(data) FROM _emulator_files WHERE fileid = ?", (fid,)
    ).fetchone()
    headers = {
        "OData-Version": "4.0",
        "x-ms-file-size": str(size),
        "mimetype": mime,
        "Access-Control-Expose-Headers": "x-ms-file-size; x-ms-file-name; mimetype",
    }
    rng = request.headers.get("range")
    if rng:
        m = re.match(r"^bytes=(\d+)-(\d*)$", rng)
        if not m:
            raise errors.bad_request("The Range header is not valid.", "0x80090001")
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
        headers["x-ms-chunk-size"] = str(CHUNK_SIZE)
        headers["Access-Control-Expose-Headers"] = "x-ms-file-size; x-ms-file-name; x-ms-chunk-size; mimetype"
        # only the range is read from the row (substr counts from 1), not the whole file per block
        part = conn.execute(
            "SELECT substr(data, ?, ?) FROM _emulator_files WHERE fileid = ?", (start + 1, max(end - start + 1, 0), fid)
        ).fetchone()[0]
        return _named(Response(part, status_code=206, media_type="application/octet-stream", headers=headers), name)
    data = conn.execute("SELECT data FROM _emulator_files WHERE fileid = ?", (fid,)).fetchone()[0]
    return _named(Response(data, status_code=200, media_type="application/octet-stream", headers=headers), name)


def _named(response: Response, name: str) -> Response:
    """``x-ms-file-name`` as UTF-8 bytes: a name the upload's query parameter carried may be any text, and a header
    holds bytes (how Dataverse encodes a non-ASCII name here is a GUESS; ASCII names are as documented)."""
    response.raw_headers.append((b"x-ms-file-name", name.encode("utf-8")))
    return response
