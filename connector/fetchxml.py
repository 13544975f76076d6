"""FetchXML queries over the Web API (reference section 5): checked before sending, paged by cookie, never truncated.

Why each rule:

* **Checked before sending.** The text is parsed with ``defusedxml`` (a DOCTYPE, entity or external reference is
  refused, never expanded: "billion laughs" must not reach our process or the service), then its shape is checked
  (one ``<fetch>`` with one ``<entity name>``, known elements only, integer ``count``/``page``/``top``, no ``top`` with
  paging, aggregates with an alias on every attribute). A mistake costs a 400 from Dataverse otherwise, or worse, a
  silently different query.
* **Paging cookies as documented** (5.2): ``Prefer`` asks for the ``fetchxmlpagingcookie`` and ``morerecords``
  annotations; the cookie's ``pagingcookie`` attribute is URL-decoded twice and set as the ``paging-cookie`` attribute
  of ``<fetch>`` (the XML serializer escapes it), and ``page`` is incremented client-side (the docs' ``pagenumber``
  is not to be trusted). ``morerecords`` without a cookie falls back to simple paging. A cookie identical to the
  previous one would loop forever (``peers.md`` pain point 6), so it is an error, not a silent stop.
* **Constant memory.** :class:`FetchRun` yields rows while holding one page; ``d365 run --jsonl`` streams from it.
* **Long queries.** A GET URL may be 32,768 characters; a longer FetchXML goes as a GET inside ``$batch`` (64 KB).
* **Page tokens** are opaque: host, a hash of the query, the page, its cookie and an offset into the page, so a run
  stopped at ``max_records`` mid-page resumes exactly there, and a token is refused for another query or host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit
from xml.etree.ElementTree import Element, ParseError, tostring

# defusedxml ships no type stubs (types-defusedxml is not in the lock); its calls return ElementTree elements
import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException

from connector.batch import post_batch
from connector.errors import FatalApiError, InputError, InputProblem
from connector.inputs import RunFetchXmlQuery
from connector.multipart import BatchOperation, ChangeSetResponse
from connector.odata import ALL_ANNOTATIONS
from connector.problems import Problems
from connector.progress import CancellationToken, Reporter, Tracker

if TYPE_CHECKING:
    from connector.client import DataverseClient
    from connector.connection import Connection

__all__ = [
    "FetchRun",
    "FetchToken",
    "parse_fetch",
    "run_fetch_xml_query",
    "run_fetch_xml_query_problems",
    "stream_fetch_xml",
]

MAX_URL = 32768
MAX_BATCH_URL = 65536
MAX_PAGE_SIZE = 5000
DEFAULT_PAGE_SIZE = 100
PAGING_ANNOTATIONS = (
    'odata.include-annotations="Microsoft.Dynamics.CRM.fetchxmlpagingcookie,Microsoft.Dynamics.CRM.morerecords"'
)
COOKIE = "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"
MORE = "@Microsoft.Dynamics.CRM.morerecords"

# FetchXML schema elements and where they may appear (Microsoft's fetch.xsd, the parts the Web API accepts)
_CHILDREN: dict[str, frozenset[str]] = {
    "fetch": frozenset({"entity", "order"}),
    "entity": frozenset({"attribute", "all-attributes", "no-attrs", "order", "filter", "link-entity"}),
    "link-entity": frozenset({"attribute", "all-attributes", "no-attrs", "order", "filter", "link-entity"}),
    "filter": frozenset({"condition", "filter", "link-entity"}),
    "condition": frozenset({"value"}),
    "attribute": frozenset(),
    "all-attributes": frozenset(),
    "no-attrs": frozenset(),
    "order": frozenset(),
    "value": frozenset(),
}
_INT_ATTRS = ("count", "page", "top", "aggregatelimit")
_BOOL_VALUES = frozenset({"true", "false", "1", "0"})
_AGGREGATES = frozenset({"count", "countcolumn", "sum", "avg", "min", "max"})


def _problem(path: str, message: str) -> InputError:
    return InputError([InputProblem(path, message)])


def parse_fetch(text: str, path: str = "$.fetch_xml") -> Element:
    """The ``<fetch>`` element of a FetchXML text, parsed without DTDs or entities; problems name ``path``."""
    try:
        root = SafeET.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise _problem(
            path, f"DOCTYPE declarations and entities are not allowed in FetchXML ({type(exc).__name__})"
        ) from None
    except ParseError as exc:
        raise _problem(path, f"not well-formed XML: {exc}") from None
    assert isinstance(root, Element)
    return root


def shape_problems(root: Element, path: str = "$.fetch_xml") -> list[InputProblem]:
    """What makes this tree something other than a FetchXML query the Web API accepts."""
    problems: list[InputProblem] = []

    def add(message: str) -> None:
        problems.append(InputProblem(path, message))

    if root.tag != "fetch":
        add(f"the root element must be <fetch>, not <{root.tag}>")
        return problems
    entities = [c for c in root if c.tag == "entity"]
    if len(entities) != 1:
        add(f"<fetch> must hold exactly one <entity>; found {len(entities)}")
    elif not entities[0].get("name"):
        add("<entity> needs a name attribute (the table's logical name)")
    for el in root.iter():
        allowed = _CHILDREN.get(el.tag)
        if allowed is None:
            add(f"unknown element <{el.tag}>")
            continue
        for child in el:
            if child.tag in _CHILDREN and child.tag not in allowed:
                add(f"<{child.tag}> is not allowed inside <{el.tag}>")
        needed = {"attribute": "name", "link-entity": "name", "condition": "operator"}.get(el.tag)
        if needed and not el.get(needed):
            add(f"<{el.tag}> needs a {needed} attribute")
    for name in _INT_ATTRS:
        value = root.get(name)
        if value is not None and (not value.isdigit() or int(value) < 1):
            add(f"<fetch {name}=...> must be a positive whole number, not {value!r}")
    count = root.get("count")
    if count is not None and count.isdigit() and int(count) > MAX_PAGE_SIZE:
        add(f"<fetch count> is at most {MAX_PAGE_SIZE} rows per page")
    if root.get("top") is not None and (root.get("count") is not None or root.get("page") is not None):
        add("<fetch top> cannot be combined with page or count (Dataverse refuses it); use one or the other")
    for name in ("aggregate", "distinct", "no-lock", "returntotalrecordcount"):
        value = root.get(name)
        if value is not None and value.lower() not in _BOOL_VALUES:
            add(f"<fetch {name}=...> must be true or false, not {value!r}")
    if is_aggregate(root):
        for attr in root.iter("attribute"):
            aggregate = attr.get("aggregate")
            if not attr.get("alias"):
                add(f"in an aggregate query every <attribute> needs an alias ({attr.get('name')!r} has none)")
            if aggregate is None and (attr.get("groupby") or "").lower() != "true":
                add(f"in an aggregate query <attribute name={attr.get('name')!r}> needs aggregate= or groupby='true'")
            if aggregate is not None and aggregate not in _AGGREGATES:
                add(f"unknown aggregate {aggregate!r}; use one of {', '.join(sorted(_AGGREGATES))}")
    return problems


def is_aggregate(root: Element) -> bool:
    return (root.get("aggregate") or "").lower() in ("true", "1")


def entity_name(root: Element) -> str:
    entity = root.find("entity")
    return str(entity.get("name")) if entity is not None else ""


def _query_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:24]


# -- page tokens ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchToken:
    """Where a FetchXML read resumes: the page number, the cookie that reads it (if any), and rows to skip in it."""

    host: str
    query: str
    page: int
    cookie: str | None = None
    offset: int = 0
    page_size: int | None = None  # a page number or cookie means rows of this size: the next call must keep it

    def encode(self) -> str:
        data: dict[str, Any] = {"h": self.host, "k": "fetch", "q": self.query, "p": self.page}
        if self.page_size is not None:
            data["s"] = self.page_size
        if self.cookie is not None:
            data["c"] = self.cookie
        if self.offset:
            data["o"] = self.offset
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, *, host: str, query: str, path: str = "$.page_token") -> FetchToken:
        """Read a token issued for this host and this very query; anything else is an input error."""
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (ValueError, binascii.Error):
            raise _problem(path, "not a page token this connector issued; pass next_page_token unchanged") from None
        if not isinstance(data, dict) or data.get("k") != "fetch" or not isinstance(data.get("h"), str):
            raise _problem(path, "not a FetchXML page token of this connector; pass next_page_token unchanged")
        if data["h"].lower() != host.lower():
            raise _problem(path, f"this token was issued for another environment ({data['h']}), not {host}")
        if data.get("q") != query:
            raise _problem(path, "this token belongs to another FetchXML query; send the same fetch_xml with it")
        page, offset, cookie, size = data.get("p"), data.get("o", 0), data.get("c"), data.get("s")
        if not isinstance(page, int) or page < 1 or not isinstance(offset, int) or offset < 0:
            raise _problem(path, "the token is damaged; pass next_page_token unchanged")
        if size is not None and (not isinstance(size, int) or not 1 <= size <= MAX_PAGE_SIZE):
            raise _problem(path, "the token is damaged; pass next_page_token unchanged")
        if cookie is not None and not isinstance(cookie, str):
            raise _problem(path, "the token is damaged; pass next_page_token unchanged")
        return cls(data["h"], query, page, cookie, offset, size)


# -- validation (phase two) -----------------------------------------------------------------------------------------
def run_fetch_xml_query_problems(inputs: RunFetchXmlQuery, connection: Connection) -> list[InputProblem]:
    """XML, FetchXML shape, the table against metadata, and the page token: all before any data request."""
    p = Problems(connection)
    try:
        root = parse_fetch(inputs.fetch_xml)
    except InputError as exc:
        return list(exc.problems)
    shape = shape_problems(root)
    if shape:
        return list(shape)
    name = entity_name(root)
    meta = p.table(name, "$.fetch_xml")
    if meta is None:
        return p.items
    if inputs.table:
        given = p.table(inputs.table, "$.table")
        if given is not None and given.logical_name != meta.logical_name:
            p.add("$.table", f"the FetchXML reads {meta.logical_name!r}, not {given.logical_name!r}")
    entity = root.find("entity")
    assert entity is not None
    unknown = [a.get("name") for a in entity.findall("attribute") if a.get("name") not in meta.attributes]
    if unknown:
        meta = p.fresh(meta)
    for attr in entity.findall("attribute"):
        if attr.get("name") not in meta.attributes:
            p.add("$.fetch_xml", f"<attribute name={attr.get('name')!r}>: unknown column of table {name!r}")
    if inputs.page and inputs.page_token:
        p.add("$.page", "give page or page_token, not both")
    if (inputs.page or inputs.page_token) and (root.get("top") or is_aggregate(root)):
        p.add("$.page", "a query with top or aggregate is not paged")
    if inputs.page_token:
        try:
            FetchToken.decode(inputs.page_token, host=p.connection.host, query=_query_hash(inputs.fetch_xml))
        except InputError as exc:
            p.items += exc.problems
    return p.items


# -- sending --------------------------------------------------------------------------------------------------------
def _get(
    client: DataverseClient, entity_set: str, fetch_text: str, prefer: list[str], impersonate: str | None
) -> dict[str, Any]:
    """One FetchXML page: a plain GET, or a GET inside ``$batch`` when the URL is longer than Dataverse accepts."""
    relative = f"{entity_set}?fetchXml={quote(fetch_text, safe='')}"
    if len(client.api_url) + 1 + len(relative) <= MAX_URL:
        body = client.get_json(relative, prefer=prefer, impersonate=impersonate)
        return body if isinstance(body, dict) else {}
    api_path = urlsplit(client.api_url).path.rstrip("/")
    url = f"{api_path}/{relative}"
    if len(url) > MAX_BATCH_URL:
        raise InputError(
            [InputProblem("$.fetch_xml", f"the query is too long even inside $batch ({len(url)} > {MAX_BATCH_URL})")]
        )
    headers = (("Prefer", ", ".join(prefer)),) if prefer else ()
    operation = BatchOperation("GET", url, headers)
    answers = post_batch(client, [operation], impersonate=impersonate, what="the $batch FetchXML GET")[1]
    if len(answers) != 1 or isinstance(answers[0], ChangeSetResponse):
        raise FatalApiError("Dataverse answered the $batch FetchXML GET with an unexpected layout", method="POST")
    answer = answers[0]
    decoded = answer.json()
    if answer.status >= 400:
        error = decoded.get("error") if isinstance(decoded, dict) else None
        code = str(error.get("code")) if isinstance(error, dict) and error.get("code") is not None else None
        said = str(error.get("message")) if isinstance(error, dict) else answer.reason
        raise FatalApiError(
            f"Dataverse rejected the FetchXML query (HTTP {answer.status}): {said}"
            + (f" (code {code})" if code else ""),
            status_code=answer.status,
            code=code,
            request_id=answer.header("REQ_ID"),
            method="GET",
        )
    return decoded if isinstance(decoded, dict) else {}


def _inner_cookie(annotation: str) -> str | None:
    """The ``pagingcookie`` attribute of the annotation's ``<cookie>`` element, URL-decoded twice (reference 5.2)."""
    try:
        el = SafeET.fromstring(annotation, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, ParseError) as exc:
        raise FatalApiError(f"Dataverse returned a paging cookie that is not XML ({exc})") from exc
    value = el.get("pagingcookie")
    return unquote(unquote(value)) if value else None


class FetchRun:
    """A FetchXML query's rows as an iterator; afterwards ``more_records``, ``next_page_token`` and ``page`` are set.

    ``progress`` hears each page; once ``cancel`` is cancelled no further page is read and the run stops with a token
    that resumes at the next page, as at ``max_records``.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        fetch_text: str,
        page_size: int | None,
        start: FetchToken,
        limit: int | None,
        annotations: bool = False,
        impersonate: str | None = None,
        progress: Reporter | None = None,
        cancel: CancellationToken | None = None,
    ) -> None:
        self._connection = connection
        self._progress = progress
        self._cancel = cancel
        self._root = parse_fetch(fetch_text)
        self._page_size = page_size
        self._start = start
        self._limit = limit
        self._prefer = [ALL_ANNOTATIONS if annotations else PAGING_ANNOTATIONS]
        self._impersonate = impersonate
        self.more_records = False
        self.next_page_token: str | None = None
        self.page = start.page
        self.returned = 0

    def _text(self, page: int, cookie: str | None) -> str:
        root = self._root
        paged = root.get("top") is None and not is_aggregate(root)
        if paged:
            if self._page_size is not None:
                root.set("count", str(self._page_size))
            root.set("page", str(page))
            if cookie is not None:
                root.set("paging-cookie", cookie)
            elif "paging-cookie" in root.attrib:
                del root.attrib["paging-cookie"]
        return tostring(root, encoding="unicode")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        governor = self._connection.governor
        tracker = Tracker(
            "run_fetch_xml_query", self._progress, total=None, clock=governor.clock, throttle=governor,
            cancel=self._cancel,
        )  # fmt: skip
        with tracker:
            yield from self._pages(tracker)

    def _pages(self, tracker: Tracker) -> Iterator[dict[str, Any]]:
        meta = self._connection.metadata.table(entity_name(self._root))
        client = self._connection.client
        page, cookie, skip = self._start.page, self._start.cookie, self._start.offset
        paged = self._root.get("top") is None and not is_aggregate(self._root)
        while True:
            self.page = page
            try:
                body = _get(client, meta.entity_set, self._text(page, cookie), self._prefer, self._impersonate)
            except KeyboardInterrupt:  # a second Ctrl-C mid-request: keep what was read, resume at the page lost
                if self._cancel is None or not self._cancel.aborted:
                    raise
                self._stop(FetchToken(self._start.host, self._start.query, page, cookie, skip, self._page_size))
                return
            records = body.get("value") or []
            more = bool(body.get(MORE)) and paged
            annotation = body.get(COOKIE)
            next_cookie = _inner_cookie(str(annotation)) if more and annotation else None
            if more and next_cookie is not None and next_cookie == cookie:
                raise FatalApiError(
                    f"Dataverse returned the same paging cookie for page {page + 1} as for page {page} of "
                    f"{meta.entity_set}; stopped rather than read the same rows forever. Order by a unique column"
                )
            for i, record in enumerate(records[skip:] if skip else records):
                if self._limit is not None and self.returned >= self._limit:
                    self._stop(FetchToken(self._start.host, self._start.query, page, cookie, skip + i, self._page_size))
                    return
                self.returned += 1
                yield record
            tracker.advance({"pages": 1}, done=self.returned)
            skip = 0
            if not more:
                return
            stop = self._limit is not None and self.returned >= self._limit
            if stop or (self._cancel is not None and self._cancel.cancelled):
                self._stop(FetchToken(self._start.host, self._start.query, page + 1, next_cookie, 0, self._page_size))
                return
            page, cookie = page + 1, next_cookie

    def _stop(self, token: FetchToken) -> None:
        self.more_records = True
        self.next_page_token = token.encode()


def stream_fetch_xml(
    connection: Connection,
    inputs: RunFetchXmlQuery,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> FetchRun:
    """A :class:`FetchRun` for ``run_fetch_xml_query`` inputs: iterate it to stream the rows (``d365 run --jsonl``)."""
    text = inputs.fetch_xml
    root = parse_fetch(text)
    query = _query_hash(text)
    host = connection.host
    if inputs.page_token:
        start = FetchToken.decode(inputs.page_token, host=host, query=query)
    else:
        start = FetchToken(host, query, inputs.page or int(root.get("page") or 1))
    page_size: int | None = start.page_size or inputs.page_size
    if page_size is None and root.get("count") is None:
        page_size = MAX_PAGE_SIZE if inputs.fetch_all else DEFAULT_PAGE_SIZE
    limit = inputs.max_records if inputs.fetch_all else int(page_size or root.get("count") or DEFAULT_PAGE_SIZE)
    return FetchRun(
        connection,
        fetch_text=text,
        page_size=page_size,
        start=start,
        limit=None if (root.get("top") or is_aggregate(root)) else limit,
        annotations=inputs.include_annotations,
        impersonate=inputs.impersonate,
        progress=progress,
        cancel=cancel,
    )


def run_fetch_xml_query(
    connection: Connection,
    inputs: RunFetchXmlQuery,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> dict[str, Any]:
    """The ``run_fetch_xml_query`` output: one page, or every page up to ``max_records`` with ``fetch_all``; a
    cancelled fetch-all returns the rows read so far with the token that continues."""
    run = stream_fetch_xml(connection, inputs, progress=progress, cancel=cancel)
    records = list(run)
    meta = connection.metadata.table(entity_name(parse_fetch(inputs.fetch_xml)))
    return {
        "table": meta.logical_name,
        "records": records,
        "returned": len(records),
        "page": run.page,
        "more_records": run.more_records,
        "next_page_token": run.next_page_token,
    }
