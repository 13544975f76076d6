"""Change tracking over the Web API: ``Prefer: odata.track-changes``, ``@odata.deltaLink`` and ``$deletedEntity``.

Source: use-change-tracking-synchronize-data-external-systems.md (design notes section 15.4). The delta token has the
documented shape ``<version>!<MM/dd/yyyy HH:mm:ss>``: the organization's row version counter when the token was issued
and the time, so a delta read is "rows whose ``versionnumber`` is above the token's, then the rows deleted since"
(new and updated rows first, deletions last, as the RetrieveEntityChanges constraints say). Deletions are kept by the
store (``_emulator_deleted``, one row per delete with the version it took) for every table, as Dataverse keeps its
change tracking tombstones; they are read only for tables with ``ChangeTrackingEnabled``.

GUESSES (the docs are silent): the error for ``odata.track-changes`` on a table without change tracking, the error
and status for a token older than ``organization.expirechangetrackingindays`` (documented default 7 days; the SDK
names the failure ``ExpiredVersionStamp``), that more than 5,000 changes are not paged here, and which standard tables
have change tracking on in a new organization (:data:`TRACKED_BY_DEFAULT`).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from starlette.responses import Response

from . import errors
from .storage import q

if TYPE_CHECKING:
    from starlette.requests import Request

    from .context import Ctx
    from .model import Table
    from .record_reads import RecordReads
    from .storage import Store

#: GUESS: the business tables a fresh organization tracks (Dataverse search and Synapse Link need it on these).
TRACKED_BY_DEFAULT = frozenset({"account", "contact"})
#: organization.expirechangetrackingindays, documented default (2026 text).
DEFAULT_EXPIRY_DAYS = 7
EXPIRY_KEY = "expirechangetrackingindays"
TOMBSTONES = "_emulator_deleted"  # written by Store.delete
_TOKEN = re.compile(r"^(\d+)!(\d\d/\d\d/\d{4} \d\d:\d\d:\d\d)$")
_REFUSED_WITH_TRACKING = ("$filter", "$orderby", "$expand", "$top")


def enabled(t: Table) -> bool:
    """Whether the table tracks changes (a metadata PUT sets ``ChangeTrackingEnabled`` in ``Table.extra``)."""
    return bool(t.extra.get("ChangeTrackingEnabled", t.logical_name in TRACKED_BY_DEFAULT))


def set_enabled(t: Table, value: Any) -> None:
    """Apply ``ChangeTrackingEnabled`` from a table definition update; once on it stays on (documented)."""
    if not isinstance(value, bool):
        raise errors.bad_request("ChangeTrackingEnabled must be a boolean.")
    if enabled(t) and not value:
        # The docs: "After you enable change tracking for a table, you can't disable it." The error text is a GUESS.
        raise errors.bad_request(f"Change tracking cannot be disabled for the entity '{t.logical_name}'.", "0x80044196")
    t.extra["ChangeTrackingEnabled"] = value


def expiry_days(store: Store) -> int:
    """The organization's change tracking retention in days (tests set it with ``Store.meta_set(EXPIRY_KEY, ...)``)."""
    raw = store.meta_get(EXPIRY_KEY)
    return int(raw) if raw else DEFAULT_EXPIRY_DAYS


def wanted(ctx: Ctx, opts: dict[str, str]) -> bool:
    """A collection GET is a change tracking read when it asks for tracking or follows a delta link."""
    return "odata.track-changes" in ctx.prefer or "$deltatoken" in opts


def _token(store: Store, now: float) -> str:
    version = int(store.meta_get("version") or 999)
    return f"{version}!{dt.datetime.fromtimestamp(now, dt.UTC).strftime('%m/%d/%Y %H:%M:%S')}"


def _read_token(raw: str, store: Store, now: float) -> int:
    m = _TOKEN.match(raw)
    if not m:
        raise errors.bad_request("The $deltatoken value is not valid.")  # GUESS: wording
    issued = dt.datetime.strptime(m.group(2), "%m/%d/%Y %H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
    if now - issued > expiry_days(store) * 86400:
        # GUESS: status, code and text (the SDK's ExpiredVersionStamp fault, as its message reads).
        raise errors.bad_request(
            "Version stamp associated with the client has expired. Please perform a full sync.", "0x80044352"
        )
    return int(m.group(1))


def respond(api: RecordReads, request: Request, ctx: Ctx, table: Table, opts: dict[str, str]) -> Response:
    """The initial change tracking read (every row, a delta link) or a delta read (changes since the token)."""
    if not enabled(table):
        # GUESS: the docs do not give the error for a table without change tracking.
        raise errors.bad_request(f"Change tracking is not enabled for the entity '{table.logical_name}'.", "0x80044195")
    for name in _REFUSED_WITH_TRACKING:
        if name in opts:
            raise errors.bad_request(f'The "{name}" query parameter isn\'t supported when Change Tracking is enabled.')
    store, now = api.store, api.emu.clock()
    select = api.check_select(table, [s for s in opts["$select"].split(",") if s] if "$select" in opts else None)
    since = _read_token(opts["$deltatoken"], store, now) if "$deltatoken" in opts else None
    with store.lock:
        new_token = _token(store, now)
        where, params = ("", []) if since is None else (" WHERE versionnumber > ?", [since])
        rows = store.query(f"SELECT * FROM {q(table.logical_name)}{where} ORDER BY versionnumber", params)
        gone = [] if since is None else _deleted_since(store, table.logical_name, since)
    context = api.context_url(ctx, table, select, False, None)
    values: list[dict[str, Any]] = [api.entity(ctx, table, r, select) for r in rows]
    deleted_context = f"{ctx.api}/$metadata#{table.entity_set}/$deletedEntity"
    values += [{"@odata.context": deleted_context, "id": rid, "reason": "deleted"} for rid in gone]
    body = {
        "@odata.context": context + ("/$delta" if since is not None else ""),
        "@odata.deltaLink": _delta_link(request, ctx, new_token),
        "value": values,
    }
    if since is None:
        ctx.applied.append("odata.track-changes")
    return api.json(body)


def _deleted_since(store: Store, table: str, since: int) -> list[str]:
    """Ids deleted after the token, oldest delete first; a row deleted, recreated and deleted again counts once."""
    rows = store.query(
        f"SELECT id, MAX(version) AS v FROM {TOMBSTONES} WHERE tbl = ? AND version > ? GROUP BY id ORDER BY v",
        [table, since],
    )
    return [r["id"] for r in rows if not store.exists(table, r["id"])]


def _delta_link(request: Request, ctx: Ctx, token: str) -> str:
    raw = request.scope.get("query_string", b"").decode("latin-1")
    keep = [(k, v) for k, v in parse_qsl(raw, keep_blank_values=True) if k != "$deltatoken"]
    parts = [f"{quote(k, safe='$@')}={quote(v, safe=',()=/:@$')}" for k, v in keep]
    parts.append("$deltatoken=" + quote(token, safe=""))
    path = request.scope.get("raw_path", b"").decode("latin-1")
    org = ctx.api.split("/api/data/")[0]
    return f"{org}{path}?{'&'.join(parts)}"


__all__ = ["enabled", "respond", "set_enabled", "wanted"]
