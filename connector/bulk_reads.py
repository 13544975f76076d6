"""The bulk writer's reads (pre-reads, confirmations): ``In`` filters packed into URLs, and the reads one step needs
sent together as one ``$batch``.

Why a ``$batch``: a chunk of 1,000 rows by id needs two ``In`` reads (1,000 GUIDs do not fit one URL), and a chunk
that pre-reads a waiting chunk's rows along (:class:`connector.bulk_run.ReadAhead`) needs two or more. Sent one after
the other, each read holds one of the request places ``x-ms-dop-hint`` allows while the writes wait, and each is a
round trip. One ``$batch`` is one request against the service protection limits and one round trip, and costs the
server what the reads cost alone (reference 6.5); inside it a GET URL may be 64 KB (reference 1.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from connector.api_errors import error_from_response
from connector.batch import post_batch
from connector.errors import FatalApiError
from connector.multipart import BatchOperation, OperationResponse
from connector.paging import iter_pages

if TYPE_CHECKING:
    from connector.client import DataverseClient

__all__ = ["MAX_READ_VALUES", "READ_CHARS", "READ_VALUES", "read_parts", "read_rows"]

READ_VALUES = 250
"""Key pairs per ``or`` read of a composite key (half of it: 125 clauses keep the URL well inside the limit)."""
READ_CHARS = 24_000
"""URL-encoded values per ``In`` read (about 530 GUIDs, up to 1,000 short keys): 24,000 leaves 8,000 of the 32 KB URL
limit (reference 1.2) for the address, ``$select`` and the filter's own text."""
MAX_READ_VALUES = 1000
"""Values per ``In`` read: SQL Server takes at most 2,100 parameters a statement, and Dataverse adds its own."""
PAGE_SIZE = 5000


def read_parts(literals: Sequence[str]) -> list[list[str]]:
    """Literals grouped into reads of at most :data:`READ_CHARS` URL-encoded characters and
    :data:`MAX_READ_VALUES` values (one value alone may exceed it: the URL limit still holds it)."""
    parts: list[list[str]] = []
    size = READ_CHARS
    for literal in literals:
        length = len(quote(literal, safe="")) + 3  # and the encoded comma
        if size + length > READ_CHARS or len(parts[-1]) >= MAX_READ_VALUES:
            parts.append([])
            size = 0
        parts[-1].append(literal)
        size += length
    return parts


def read_rows(client: DataverseClient, urls: Sequence[str], impersonate: str | None) -> list[list[dict[str, Any]]]:
    """The rows of each read (a URL relative to the API root, following its next links): one GET when there is one,
    else one ``$batch`` of them all. A read that fails raises as the GET alone would have."""
    if len(urls) == 1:
        return [_pages(client, urls[0], impersonate)]
    api_path = urlsplit(client.api_url).path.rstrip("/")
    prefer = (("Prefer", f"odata.maxpagesize={PAGE_SIZE}"),)
    operations = [BatchOperation("GET", f"{api_path}/{url}", prefer) for url in urls]
    # reads only: sent again after a lost answer changes nothing
    answers = post_batch(client, operations, impersonate=impersonate, idempotent=True, what="the $batch of reads")[1]
    if len(answers) != len(urls):
        raise FatalApiError(f"Dataverse answered {len(answers)} of the $batch's {len(urls)} reads")
    out = []
    for url, answer in zip(urls, answers, strict=True):
        if not isinstance(answer, OperationResponse) or answer.status >= 400:
            raise _failed(client, url, answer)
        body = answer.json()
        rows = _values(body)
        link = body.get("@odata.nextLink") if isinstance(body, dict) else None
        out.append(rows + (_pages(client, link, impersonate) if link else []))
    return out


def _pages(client: DataverseClient, url: str, impersonate: str | None) -> list[dict[str, Any]]:
    pages = iter_pages(client, url, page_size=PAGE_SIZE, impersonate=impersonate)
    return [r for page in pages for r in page.records if isinstance(r, dict)]


def _values(body: Any) -> list[dict[str, Any]]:
    return [r for r in body.get("value", []) if isinstance(r, dict)] if isinstance(body, dict) else []


def _failed(client: DataverseClient, url: str, answer: Any) -> Exception:
    """The error a read inside the batch met, typed as the same GET's would be."""
    if not isinstance(answer, OperationResponse):
        return FatalApiError("Dataverse answered a read of the $batch with a change set")
    request = httpx.Request("GET", f"{client.api_url}/{url}")
    response = httpx.Response(answer.status, headers=list(answer.headers), content=answer.body, request=request)
    return error_from_response(response, method="GET")
