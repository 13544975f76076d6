"""Querying a table page by page in constant memory, with opaque page tokens.

:class:`QueryRun` is the one code path behind the ``query_entities`` action, the ``d365 run --jsonl`` stream and the
library: iterating it yields records one at a time while only the current page is held, following
``@odata.nextLink`` verbatim with the same ``Prefer: odata.maxpagesize``. It never stops silently: when it stops at
``max_records`` (or after one page) it says whether more rows remain and gives a token that resumes exactly there,
even in the middle of a page. ``top`` is sent as ``$top`` without ``odata.maxpagesize``, because Dataverse ignores
``$top`` when both are sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from connector.addressing import expand_param
from connector.errors import FatalApiError, InputError, InputProblem, LiteralError
from connector.inputs import QueryEntities
from connector.metadata import TableMetadata
from connector.odata import ALL_ANNOTATIONS, PageToken, build_query_string, filter_column, where_problems_and_filter
from connector.problems import Problems, check_returned, check_table, check_url
from connector.progress import CancellationToken, Reporter, Tracker

if TYPE_CHECKING:
    from connector.client import DataverseClient
    from connector.connection import Connection

__all__ = ["Page", "QueryRun", "iter_pages", "query_entities", "query_entities_problems", "stream_entities"]

COUNT_ANNOTATIONS = (
    'odata.include-annotations="Microsoft.Dynamics.CRM.totalrecordcount,'
    'Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"'
)


@dataclass(frozen=True)
class Page:
    """One page of rows, the URL that returned it (relative to the API root) and the next page's, if any."""

    path: str
    records: list[dict[str, Any]]
    next_path: str | None
    body: Mapping[str, Any]


def _relative(client: DataverseClient, link: str) -> str:
    """A nextLink relative to the API root; a link that leaves it is an error, never followed."""
    root = client.api_url + "/"
    if not link.startswith(root):
        raise FatalApiError(f"Dataverse returned a next-page link outside {client.api_url}; it was not followed")
    return link[len(root) :]


def iter_pages(
    client: DataverseClient,
    path: str,
    *,
    page_size: int | None,
    annotations: str | None = None,
    impersonate: str | None = None,
) -> Iterator[Page]:
    """Every page from ``path`` on, one request per page, following ``@odata.nextLink`` as sent."""
    prefer = [f"odata.maxpagesize={page_size}"] if page_size else []
    if annotations:
        prefer.append(annotations)
    current: str | None = path
    while current is not None:
        body = client.get_json(current, prefer=prefer, impersonate=impersonate) or {}
        link = body.get("@odata.nextLink")
        next_path = _relative(client, str(link)) if link else None
        if next_path == current:
            raise FatalApiError(f"Dataverse returned the same page link twice for {path.split('?')[0]}; stopped")
        records = body.get("value") or []
        yield Page(current, records, next_path, {k: v for k, v in body.items() if k != "value"})
        current = next_path


class QueryRun:
    """One query's rows as an iterator; after iteration ``next_page_token``, ``more_records`` and counts are set.

    ``progress`` hears each page (records returned so far; the total when the query counts); once ``cancel`` is
    cancelled no further page is read, and the run stops as at ``max_records``: ``more_records`` with a token that
    resumes at the next page.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        start: PageToken,
        limit: int | None,
        impersonate: str | None = None,
        progress: Reporter | None = None,
        cancel: CancellationToken | None = None,
    ) -> None:
        self._connection = connection
        self._start = start
        self._limit = limit
        self._impersonate = impersonate
        self._progress = progress
        self._cancel = cancel
        self.next_page_token: str | None = None
        self.more_records = False
        self.count: int | None = None
        self.count_limit_exceeded: bool | None = None
        self.returned = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        governor = self._connection.governor
        tracker = Tracker(
            "query_entities", self._progress, total=None, clock=governor.clock, throttle=governor, cancel=self._cancel
        )
        with tracker:
            yield from self._pages(tracker)

    def _pages(self, tracker: Tracker) -> Iterator[dict[str, Any]]:
        start = self._start
        client = self._connection.client
        skip = start.offset
        first = True
        pages = iter_pages(
            client, start.path, page_size=start.page_size, annotations=start.annotations, impersonate=self._impersonate
        )
        reading = start.path
        while True:
            try:
                page = next(pages)
            except StopIteration:
                return
            except KeyboardInterrupt:  # a second Ctrl-C mid-request: keep what was read, resume at the page lost
                if self._cancel is None or not self._cancel.aborted:
                    raise
                self._stop(PageToken(start.host, reading, start.page_size, skip, start.annotations))
                return
            if first:
                self._read_count(page.body)
                tracker.total = _total(self.count, self._limit)
                first = False
            records = page.records[skip:] if skip else page.records
            for i, record in enumerate(records):
                if self._limit is not None and self.returned >= self._limit:
                    self._stop(PageToken(start.host, page.path, start.page_size, skip + i, start.annotations))
                    return
                self.returned += 1
                yield record
            tracker.advance({"pages": 1}, done=self.returned)
            skip = 0
            if page.next_path is None:
                return
            reading = page.next_path
            stop = self._limit is not None and self.returned >= self._limit
            if stop or (self._cancel is not None and self._cancel.cancelled):
                self._stop(PageToken(start.host, page.next_path, start.page_size, 0, start.annotations))
                return

    def _stop(self, token: PageToken) -> None:
        self.more_records = True
        self.next_page_token = token.encode()

    def _read_count(self, body: Mapping[str, Any]) -> None:
        if "@odata.count" in body:
            self.count = int(body["@odata.count"])
        exceeded = body.get("@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded")
        if exceeded is not None:
            self.count_limit_exceeded = bool(exceeded)


def _total(count: int | None, limit: int | None) -> int | None:
    """Rows the run will return, when the query counted them (capped at the run's limit); else unknown."""
    if count is None:
        return None
    return min(count, limit) if limit is not None else count


def plan(connection: Connection, inputs: QueryEntities) -> tuple[PageToken, int | None]:
    """Where the query starts (a fresh query or a page token) and how many rows to return at most."""
    meta = connection.metadata.table(inputs.table)
    limit: int | None
    if inputs.top:
        limit = None
    elif inputs.fetch_all:
        limit = inputs.max_records
    else:
        limit = inputs.page_size
    if inputs.page_token:
        token = PageToken.decode(inputs.page_token, host=connection.host)
        if token.entity_set != meta.entity_set:
            raise InputError(
                [InputProblem("$.page_token", f"this token reads {token.entity_set!r}, not {meta.entity_set!r}")]
            )
        return token, limit
    params: dict[str, str] = {}
    types = meta.types
    if inputs.select:
        params["$select"] = ",".join(filter_column(c, types[c]) for c in inputs.select)
    filters = []
    if inputs.filter:
        filters.append(f"({inputs.filter})" if inputs.where else inputs.filter)
    if inputs.where:
        built, problems = _where(connection, meta, inputs.where)
        if problems:
            raise InputError(problems)
        if built:
            filters.append(built)
    if filters:
        params["$filter"] = " and ".join(filters)
    if inputs.order_by:
        params["$orderby"] = ",".join(_order(c, types) for c in inputs.order_by)
    if inputs.expand:
        params["$expand"] = expand_param(meta, inputs.expand, connection)
    if inputs.top:
        params["$top"] = str(inputs.top)
    if inputs.include_count:
        params["$count"] = "true"
    query = build_query_string(params)
    path = f"{meta.entity_set}?{query}" if query else meta.entity_set
    if inputs.include_annotations:
        annotations: str | None = ALL_ANNOTATIONS
    elif inputs.include_count:
        annotations = COUNT_ANNOTATIONS
    else:
        annotations = None
    page_size = None if inputs.top else inputs.page_size
    return PageToken(connection.host, path, page_size, 0, annotations), limit


def _order(item: str, types: Mapping[str, str]) -> str:
    column, _, direction = item.partition(" ")
    name = filter_column(column, types.get(column, ""))
    return f"{name} {direction}" if direction else name


def _where(
    connection: Connection, meta: TableMetadata, where: Any, path: str = "$.where"
) -> tuple[str | None, list[InputProblem]]:
    def choice(column: str, label: str) -> int:
        try:
            return connection.metadata.choice_value(meta.logical_name, column, label)
        except ValueError as exc:
            raise LiteralError(str(exc)) from None

    return where_problems_and_filter(where, meta.types, choice, table=meta.logical_name, path=path)


def query_entities_problems(inputs: QueryEntities, connection: Connection) -> list[InputProblem]:
    """Phase two of ``query_entities``: columns to return, where and order_by, expansions, the page token's host and
    table; metadata reads only."""
    p = Problems(connection)
    meta = check_table(p, inputs.table)
    if meta is None:
        return p.items
    meta = check_returned(p, meta, inputs.select, inputs.expand)
    columns = [str(c.get("column")) for c in inputs.where or []]
    columns += [c.partition(" ")[0] for c in inputs.order_by or []]
    if any(c not in meta.attributes for c in columns):
        meta = p.fresh(meta)
    flt = inputs.filter or ""
    if inputs.where:
        built, problems = _where(connection, meta, inputs.where)
        p.items += problems
        flt += built or ""
    if flt:
        fix = "use fewer or shorter values (or several queries)"
        check_url(
            p, meta, len(quote(flt, safe="")), "$.where" if inputs.where else "$.filter", "the $filter makes a URL", fix
        )
    for i, item in enumerate(inputs.order_by or []):
        column = item.partition(" ")[0]
        if column not in meta.attributes:
            p.add(f"$.order_by[{i}]", f"unknown column {column!r} of table {meta.logical_name!r}")
    if inputs.page_token:
        try:
            token = PageToken.decode(inputs.page_token, host=connection.host)
        except InputError as exc:
            p.items += exc.problems
        else:
            if token.entity_set != meta.entity_set:
                p.add("$.page_token", f"this token reads {token.entity_set!r}, not {meta.entity_set!r}")
    return p.items


def stream_entities(
    connection: Connection,
    inputs: QueryEntities,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> QueryRun:
    """A :class:`QueryRun` for ``query_entities`` inputs: iterate it to stream the rows (``d365 run --jsonl``)."""
    start, limit = plan(connection, inputs)
    return QueryRun(
        connection, start=start, limit=limit, impersonate=inputs.impersonate, progress=progress, cancel=cancel
    )


def query_entities(
    connection: Connection,
    inputs: QueryEntities,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> dict[str, Any]:
    """The ``query_entities`` output: the rows (at most one page, or up to ``max_records`` with ``fetch_all``); a
    cancelled fetch-all returns the rows read so far with the token that continues."""
    run = stream_entities(connection, inputs, progress=progress, cancel=cancel)
    records = list(run)
    out: dict[str, Any] = {
        "records": records,
        "returned": len(records),
        "count": run.count,
        "next_page_token": run.next_page_token,
        "more_records": run.more_records,
    }
    if inputs.include_count:
        out["count_limit_exceeded"] = bool(run.count_limit_exceeded)
    return out
