"""File and image columns: upload and download, streamed, in one request or in chunks, as Microsoft documents them.

Why a module of its own: file bytes never travel with the row (a file column holds only a file id; reference 15.9), so
they have their own protocol. Upload is one ``PATCH {row}/{column}`` with the bytes below the documented 128 MB, or a
chunked session above it (or when asked): a ``PATCH`` with ``x-ms-transfer-mode: chunked`` answers with a ``Location``
holding a session token and the block size Dataverse wants (``x-ms-chunk-size``), then one ``PATCH`` per block with
its ``Content-Range`` (206 until the last, which answers 204). Download is ``GET {row}/{column}/$value`` with a
``Range`` per block; files kept in the database (on-premises, customer-managed keys) refuse ranges with
``0x80090017`` and are then read in one streamed answer.

Memory stays flat whatever the size: a file on disk is read block by block while it is sent (a retry of a block
re-reads it), and a download is written block by block to a temporary file beside the target, moved into place once
complete. Inline base64 (for platforms that pass files in JSON) holds the bytes, so it is capped.

The checks before sending: the column is a file or image column (``FileAttributeMetadata``/``ImageAttributeMetadata``),
the size is within its ``MaxSizeInKB``, the file exists and the download target may be written.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

import httpx

from connector.addressing import address, not_found
from connector.errors import FatalApiError, InputError, InputProblem, NotFoundError
from connector.inputs import DownloadFile, UploadFile
from connector.metadata import TableMetadata
from connector.odata import quote_string
from connector.problems import Problems, check_table, unknown_column
from connector.progress import CancellationToken, Reporter, Tracker

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "INLINE_LIMIT",
    "SINGLE_REQUEST_LIMIT",
    "FileColumn",
    "download_file",
    "download_file_problems",
    "file_column",
    "upload_file",
    "upload_file_problems",
]

#: "If the size of the file is less than 128 MB, you can upload the file in a single request" (file-column-data.md).
SINGLE_REQUEST_LIMIT = 128 * 1024 * 1024
#: The block size Microsoft's samples use, until Dataverse names its own (``x-ms-chunk-size``).
DEFAULT_CHUNK = 4 * 1024 * 1024
#: Inline base64 lives in memory and in a JSON answer: larger files go to disk (``save_to``).
INLINE_LIMIT = 16 * 1024 * 1024
#: "Downloading in multiple chunks is not supported for the files stored in the database."
_NO_CHUNKS = "0x80090017"
_KINDS = {"FileAttributeMetadata": "file", "ImageAttributeMetadata": "image"}


@dataclass(frozen=True)
class FileColumn:
    """A file or image column: which, and the largest file it takes (``MaxSizeInKB`` in bytes; None if unstated)."""

    name: str
    kind: str
    max_bytes: int | None


def file_column(connection: Connection, meta: TableMetadata, column: str) -> FileColumn | None:
    """The column's file metadata read as the docs show (one attribute, its derived type), None when it is neither a
    file nor an image column."""
    path = (
        f"EntityDefinitions(LogicalName={quote_string(meta.logical_name)})"
        f"/Attributes(LogicalName={quote_string(column)})"
    )
    body = connection.client.get_json(path)
    cast = str((body or {}).get("@odata.type", "")).lstrip("#").removeprefix("Microsoft.Dynamics.CRM.")
    kind = _KINDS.get(cast)
    if kind is None:
        return None
    size = body.get("MaxSizeInKB")
    return FileColumn(column, kind, size * 1024 if isinstance(size, int) and not isinstance(size, bool) else None)


def _check_column(p: Problems, meta: TableMetadata, column: str) -> FileColumn | None:
    if column not in meta.attributes:
        meta = p.fresh(meta)
    if column not in meta.attributes:
        p.add("$.column", unknown_column(meta, column))
        return None
    found = file_column(p.connection, meta, column)
    if found is None:
        p.add("$.column", f"{column!r} of {meta.logical_name!r} is not a file or image column: pick one of those")
    return found


def _decoded_size(text: str) -> int | None:
    """The byte length of base64 text, or None when it is not base64 (checked without decoding it whole)."""
    compact = "".join(text.split())
    if len(compact) % 4:
        return None
    try:
        base64.b64decode(compact[-8:] if compact else "", validate=True)
    except binascii.Error:
        return None
    return len(compact) // 4 * 3 - len(compact) + len(compact.rstrip("="))


def _source_size(p: Problems, inputs: UploadFile) -> int | None:
    if inputs.file_path is not None:
        source = Path(inputs.file_path)
        if not source.is_file():
            p.add("$.file_path", f"{inputs.file_path!r} is not a file on this machine: give the path of a file")
            return None
        if not os.access(source, os.R_OK):
            p.add("$.file_path", f"{inputs.file_path!r} cannot be read: check its permissions")
            return None
        return source.stat().st_size
    size = _decoded_size(inputs.content_base64 or "")
    if size is None:
        p.add("$.content_base64", "not base64 text: encode the file's bytes with base64")
    return size


def upload_file_problems(inputs: UploadFile, connection: Connection) -> list[InputProblem]:
    """Phase two of ``upload_file``: a file or image column, a readable file, a size the column takes."""
    p = Problems(connection)
    meta = check_table(p, inputs.table, inputs.key)
    if meta is None:
        return p.items
    column = _check_column(p, meta, inputs.column)
    size = _source_size(p, inputs)
    name = _file_name(inputs)
    if name is not None and (not name or "/" in name or "\\" in name):
        p.add("$.file_name", "give a file name without a directory, such as contract.pdf")
    if column is not None and size is not None and column.max_bytes is not None and size > column.max_bytes:
        p.add(
            "$.file_path" if inputs.file_path is not None else "$.content_base64",
            f"the file has {size:,} bytes and {inputs.column!r} takes at most {column.max_bytes:,} "
            f"(MaxSizeInKB {column.max_bytes // 1024:,}): send a smaller file or raise the column's maximum",
        )
    return p.items


def download_file_problems(inputs: DownloadFile, connection: Connection) -> list[InputProblem]:
    """Phase two of ``download_file``: a file or image column, and a target that may be written."""
    p = Problems(connection)
    meta = check_table(p, inputs.table, inputs.key)
    if meta is None:
        return p.items
    _check_column(p, meta, inputs.column)
    if inputs.save_to is not None:
        target = Path(inputs.save_to)
        if not target.parent.is_dir():
            p.add("$.save_to", f"the folder {str(target.parent)!r} does not exist: create it or pick another path")
        elif target.is_dir():
            p.add("$.save_to", f"{inputs.save_to!r} is a folder: give a file path")
        elif target.exists() and not inputs.overwrite:
            p.add("$.save_to", f"{inputs.save_to!r} exists: set overwrite to replace it, or pick another path")
    return p.items


def _file_name(inputs: UploadFile) -> str | None:
    if inputs.file_name is not None:
        return inputs.file_name
    return Path(inputs.file_path).name if inputs.file_path is not None else None


# -- upload -----------------------------------------------------------------------------------------------------------
class _Source:
    """The bytes to send, from disk or from base64: their size and a fresh reader of any block."""

    def __init__(self, inputs: UploadFile) -> None:
        self.path = Path(inputs.file_path) if inputs.file_path is not None else None
        self.data = b"" if self.path else base64.b64decode("".join((inputs.content_base64 or "").split()))
        self.size = self.path.stat().st_size if self.path else len(self.data)

    def blocks(self, start: int, length: int, block: int = 1024 * 1024) -> Iterator[bytes]:
        """The bytes ``[start, start + length)`` as blocks of at most ``block`` bytes, read as they are sent."""
        if self.path is None:
            yield self.data[start : start + length]
            return
        with self.path.open("rb") as handle:
            handle.seek(start)
            left = length
            while left > 0:
                chunk = handle.read(min(block, left))
                if not chunk:
                    raise InputError([InputProblem("$.file_path", "the file shrank while it was sent: send it again")])
                left -= len(chunk)
                yield chunk


def _header_name(name: str) -> dict[str, str]:
    """``x-ms-file-name`` as a header only when ASCII: the docs say the header cannot carry other names (the query
    parameter does, and the chunked route uses it)."""
    return {"x-ms-file-name": name} if name.isascii() else {}


def upload_file(
    connection: Connection,
    inputs: UploadFile,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> dict[str, Any]:
    """Upload in one streamed request below 128 MB, else (or when ``chunked``, or for a name only the query parameter
    can carry) in the blocks Dataverse asks for; progress counts bytes sent."""
    meta = connection.metadata.table(inputs.table)
    source = _Source(inputs)
    name = _file_name(inputs) or "file"
    # an empty file has no block to send: it always goes in one request
    chunked = source.size > 0 and (inputs.chunked or source.size >= SINGLE_REQUEST_LIMIT or not name.isascii())
    row = address(connection, meta, inputs.id, inputs.key, inputs.impersonate)
    path = f"{row}/{inputs.column}"
    governor = connection.governor
    tracker = Tracker(
        "upload_file", progress, total=source.size, clock=governor.clock, throttle=governor, cancel=cancel
    )
    try:
        with tracker:
            if chunked:
                requests, sent = _upload_chunks(connection, inputs, path, name, source, tracker, cancel)
            else:
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(source.size),
                    **_header_name(name),
                }
                connection.client.request(
                    "PATCH",
                    path,
                    content=lambda: source.blocks(0, source.size),
                    headers=headers,
                    impersonate=inputs.impersonate,
                )
                tracker.advance({"bytes": source.size})
                requests, sent = 1, source.size
    except NotFoundError as exc:
        raise not_found(meta, id=inputs.id, key=inputs.key, cause=exc) from None
    out: dict[str, Any] = {"table": meta.logical_name, "id": _row_id(connection, meta, row, inputs)}
    out |= {"column": inputs.column, "file_name": name, "size": sent, "chunked": chunked, "chunks": requests}
    return out | ({"cancelled": True} if sent < source.size else {})


def _upload_chunks(
    connection: Connection,
    inputs: UploadFile,
    path: str,
    name: str,
    source: _Source,
    tracker: Tracker,
    cancel: CancellationToken | None,
) -> tuple[int, int]:
    """The documented chunked session: open it, then one PATCH per block to its ``Location``; the requests and bytes
    sent (fewer than the file's when cancelled: Dataverse commits a session only with its last block)."""
    client = connection.client
    opened = client.request(
        "PATCH",
        f"{path}?x-ms-file-name={quote(name, safe='')}",
        headers={"x-ms-transfer-mode": "chunked", **_header_name(name)},
        impersonate=inputs.impersonate,
    )
    location = opened.headers.get("Location")
    if not location:
        raise FatalApiError("Dataverse opened a chunked upload without a Location to send the blocks to")
    size = _chunk_size(opened.headers.get("x-ms-chunk-size"))
    sent = requests = 0
    while sent < source.size:
        if cancel is not None and cancel.cancelled:
            break
        length = min(size, source.size - sent)
        last = sent + length - 1
        client.request(
            "PATCH",
            location,
            content=lambda start=sent, length=length: source.blocks(start, length),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {sent}-{last}/{source.size}",
                "Content-Length": str(length),
                **_header_name(name),
            },
            impersonate=inputs.impersonate,
        )
        sent += length
        requests += 1
        tracker.advance({"bytes": length})
    return requests, sent


def _chunk_size(header: str | None) -> int:
    try:
        size = int(header or DEFAULT_CHUNK)
    except ValueError:
        return DEFAULT_CHUNK
    return size if size > 0 else DEFAULT_CHUNK


def _row_id(connection: Connection, meta: TableMetadata, row: str, inputs: UploadFile | DownloadFile) -> str:
    if inputs.id is not None:
        return inputs.id
    inner = row[len(meta.entity_set) + 1 : -1]
    if "=" not in inner:
        return inner
    body = connection.client.get_json(row, params={"$select": meta.primary_id}, impersonate=inputs.impersonate)
    return str(body[meta.primary_id])


# -- download ---------------------------------------------------------------------------------------------------------
@dataclass
class _Received:
    name: str | None = None
    mime: str | None = None
    size: int = 0
    requests: int = 0
    cancelled: bool = False


def download_file(
    connection: Connection,
    inputs: DownloadFile,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> dict[str, Any]:
    """Download in ``Range`` blocks (one streamed GET where Dataverse refuses ranges) to ``save_to`` or inline."""
    meta = connection.metadata.table(inputs.table)
    row = address(connection, meta, inputs.id, inputs.key, inputs.impersonate)
    governor = connection.governor
    tracker = Tracker("download_file", progress, total=None, clock=governor.clock, throttle=governor, cancel=cancel)
    target = Path(inputs.save_to) if inputs.save_to else None
    with _sink(target) as (handle, finish):
        try:
            with tracker:
                got = _download(connection, inputs, f"{row}/{inputs.column}/$value", handle, tracker, cancel)
        except NotFoundError as exc:
            raise NotFoundError(
                f"{not_found(meta, id=inputs.id, key=inputs.key)}, or its {inputs.column!r} holds no file "
                f"(Dataverse: {exc})",
                status_code=exc.status_code,
                code=exc.code,
                request_id=exc.request_id,
            ) from None
        inline = None if got.cancelled else finish()  # a cancelled download leaves no file behind
    out: dict[str, Any] = {"table": meta.logical_name, "id": _row_id(connection, meta, row, inputs)}
    out |= {"column": inputs.column, "file_name": got.name, "mime_type": got.mime, "size": got.size}
    out["chunks"] = got.requests
    if got.cancelled:
        out["cancelled"] = True
    elif target is not None:
        out["saved_to"] = str(target)
    else:
        out["content_base64"] = base64.b64encode(inline or b"").decode("ascii")
    return out


def _download(
    connection: Connection,
    inputs: DownloadFile,
    path: str,
    handle: BinaryIO,
    tracker: Tracker,
    cancel: CancellationToken | None,
) -> _Received:
    """One ranged GET per block, each answer streamed to ``handle``; a 200 is the whole file (ranges ignored)."""
    got = _Received()
    params = {"size": "full"} if inputs.full_size else None
    block = DEFAULT_CHUNK
    while True:
        if cancel is not None and cancel.cancelled:
            got.cancelled = True
            return got
        before = got.size
        headers = {"Range": f"bytes={before}-{before + block - 1}"}
        try:
            response = connection.client.request(
                "GET", path, params=params, headers=headers, impersonate=inputs.impersonate, stream=True
            )
        except FatalApiError as exc:
            if (exc.code or "").lower() != _NO_CHUNKS or before:
                raise
            response = connection.client.request(
                "GET", path, params=params, impersonate=inputs.impersonate, stream=True
            )
        if response.status_code == 200 and before:  # ranges honoured so far, then not: start again from byte 0
            got.size = 0
            handle.seek(0)
            handle.truncate()
        _receive(response, handle, got, tracker, inputs)
        if response.status_code != 206:  # 200: the whole file; 204: an empty image column
            return got
        total = _int(response.headers.get("x-ms-file-size"), None)
        received, asked = got.size - before, block
        block = _chunk_size(response.headers.get("x-ms-chunk-size") or str(block))
        if (total is not None and got.size >= total) or (total is None and received < asked):
            return got
        if not received:
            raise FatalApiError(f"Dataverse sent no bytes at offset {got.size:,} of {total:,}")


def _receive(
    response: httpx.Response, handle: BinaryIO, got: _Received, tracker: Tracker, inputs: DownloadFile
) -> None:
    """Stream one answer's body into ``handle`` (1 MB at a time, never held whole), then close it."""
    try:
        got.requests += 1
        if response.status_code == 204:
            return
        _describe(got, response.headers)
        for piece in response.iter_bytes(1024 * 1024):
            _keep(handle, piece, got, tracker, inputs)
    finally:
        response.close()


def _describe(got: _Received, headers: Any) -> None:
    got.name = headers.get("x-ms-file-name", got.name)
    got.mime = headers.get("mimetype", got.mime)


def _keep(handle: BinaryIO, data: bytes, got: _Received, tracker: Tracker, inputs: DownloadFile) -> None:
    got.size += len(data)
    if inputs.save_to is None and got.size > INLINE_LIMIT:
        raise InputError(
            [InputProblem("$.save_to", f"the file is over {INLINE_LIMIT:,} bytes: give save_to to write it to disk")]
        )
    handle.write(data)
    tracker.advance({"bytes": len(data)})


def _int(text: str | None, default: int | None) -> int | None:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


@contextmanager
def _sink(target: Path | None) -> Iterator[tuple[BinaryIO, Callable[[], bytes | None]]]:
    """Where downloaded bytes go: a temporary file beside ``target`` (moved into place by ``finish``, removed if the
    download fails) or memory; ``finish`` returns the bytes kept in memory, None for a file."""
    if target is None:
        memory = io.BytesIO()
        yield memory, memory.getvalue
        return
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    temp = Path(name)
    handle = os.fdopen(fd, "w+b")

    def finish() -> None:
        handle.close()
        os.replace(temp, target)

    try:
        yield handle, finish
    finally:
        handle.close()
        temp.unlink(missing_ok=True)
