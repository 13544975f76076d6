"""Polling for row changes (the ``records_changed`` trigger): change tracking where the table has it, a watermark
where it does not.

Why the state is the whole contract: :func:`poll` is a pure step ``(config, state) -> (events, new_state)``; a consumer
that stores ``new_state`` after handling ``events`` never sees a change twice and never misses one, and one that
crashes before storing it sees the same batch again (at-least-once), each event carrying a stable ``key`` to drop
repeats with. The first poll (no state) reports nothing and returns the starting point, as Power Automate's trigger
starts from "now".

Change tracking (``Prefer: odata.track-changes``; the state is the delta link): Dataverse returns new and changed
rows as entities and deletions as ``$deletedEntity`` entries (documented; their order is not, so none is assumed).
Created is told from updated by ``createdon`` against the time in the previous delta token (``<version>!<time>``,
the documented shape; a token of another shape falls back to the time the previous poll ran); a row created in the
token's own second is remembered in the state, so its next change is an update. A token Dataverse
refuses as too old (older than ``organization.expirechangetrackingindays``) makes the poll start again from a fresh
token and report one ``resync`` event: changes in the gap are unknown, the consumer re-reads what it needs.

Watermark (tables without change tracking, or with ``filter``, which change tracking refuses): rows with
``modifiedon`` at or after the last seen ``modifiedon`` minus an overlap window, ordered by ``modifiedon`` then id;
the ``(id, versionnumber)`` pairs inside the window are kept in the state so the overlap is not reported twice, and
rows committed late (two rows modified in the same second, one read before the other was written) are still found.
Deletes are found only with ``track_deletes``: every poll reads all ids (one paged read of the id column) and compares
them with the id set kept in the state, whose size grows with the table; with ``filter`` a row leaving the filtered
set is reported as deleted.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from connector.errors import DataverseApiError, FatalApiError, InputError, InputProblem
from connector.paging import iter_pages

if TYPE_CHECKING:
    from connector.connection import Connection

CHANGES = ("created", "updated", "deleted")
#: The fault a too-old delta token gets (GUESS: the SDK's ExpiredVersionStamp; tolerated by its wording too).
EXPIRED_CODE = "0x80044352"
_TOKEN_TIME = re.compile(r"\$deltatoken=\d+(?:!|%21)([^&]+)")
_ETAG = re.compile(r'W/"(\d+)"')


@dataclass(frozen=True)
class PollConfig:
    """A validated ``records_changed`` configuration."""

    table: str
    columns: tuple[str, ...]
    changes: frozenset[str]
    filter: str | None
    mode: str
    track_deletes: bool
    overlap_seconds: int

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> PollConfig:
        """The schema has checked types; here the combinations the schema cannot express."""
        mode = str(config.get("mode", "auto"))
        if mode == "change_tracking" and config.get("filter"):
            problem = InputProblem("$.filter", "change tracking refuses $filter: remove filter or use mode watermark")
            raise InputError([problem], action_id="records_changed")
        return cls(
            table=str(config["table"]),
            columns=tuple(config.get("columns") or ()),
            changes=frozenset(config.get("changes") or CHANGES),
            filter=config.get("filter") or None,
            mode=mode,
            track_deletes=bool(config.get("track_deletes", False)),
            overlap_seconds=int(config.get("overlap_seconds", 30)),
        )


def poll(
    config: PollConfig, state: Mapping[str, Any] | None, connection: Connection
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One poll: the changes since ``state`` (none on the first poll) and the state to store after handling them."""
    stored = (state or {}).get("mode")
    if stored and config.mode not in ("auto", stored):
        message = f"the state was made in {stored} mode, the configuration asks for {config.mode}: drop the state"
        raise InputError([InputProblem("$state.mode", message)], action_id="records_changed")
    meta = connection.metadata.table(config.table, path="$.table")
    mode = stored or _mode(config, connection, meta.logical_name)
    polled_at = _iso(connection.clock.time())
    if mode == "change_tracking":
        events, new_state = _tracked(config, state or {}, connection, meta.entity_set, meta.primary_id)
    else:
        events, new_state = _watermarked(config, state or {}, connection, meta.entity_set, meta.primary_id)
    new_state["polled_at"] = polled_at
    return [e | {"table": meta.logical_name} for e in events if e["change"] in config.changes | {"resync"}], new_state


def _mode(config: PollConfig, connection: Connection, logical_name: str) -> str:
    if config.mode != "auto":
        return config.mode
    if config.filter:
        return "watermark"
    path = f"EntityDefinitions(LogicalName='{logical_name}')?$select=ChangeTrackingEnabled"
    body = connection.client.get_json(path) or {}
    return "change_tracking" if body.get("ChangeTrackingEnabled") is True else "watermark"


# -- change tracking ------------------------------------------------------------------------------------------------


def _select(config: PollConfig, primary_id: str, *extra: str) -> str:
    if not config.columns:
        return ""
    return ",".join(dict.fromkeys((*config.columns, primary_id, *extra)))


def _tracked(
    config: PollConfig, state: Mapping[str, Any], connection: Connection, entity_set: str, primary_id: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    link = state.get("delta_link")
    if not link:
        return [], _tracking_start(config, connection, entity_set, primary_id)
    try:
        entries, next_link = _read_delta(connection, str(link))
    except DataverseApiError as exc:
        if exc.code != EXPIRED_CODE and not (exc.status_code == 400 and "expired" in str(exc).lower()):
            raise  # the expiry error is a GUESS: its code, or a 400 that says "expired", is taken as one
        fresh = _tracking_start(config, connection, entity_set, primary_id)
        event = {"key": f"resync:{fresh['delta_link']}", "change": "resync", "id": None, "version": None}
        return [
            event | {"reason": "the stored delta token expired; changes since the previous poll are unknown"}
        ], fresh
    since = _token_time(str(link)) or state.get("polled_at")
    recent = set(state.get("created_at_token") or ())
    events = [_tracked_event(entry, primary_id, since, recent) for entry in entries]
    # rows created in the same second as the new token: a later change of theirs is an update, not a creation
    until = _token_time(next_link)
    tied = [
        e["id"]
        for e in events
        if e["change"] == "created" and until and _later_or_same(e["row"].get("createdon"), until)
    ]
    return events, {"mode": "change_tracking", "delta_link": next_link} | ({"created_at_token": tied} if tied else {})


def _tracking_start(config: PollConfig, connection: Connection, entity_set: str, primary_id: str) -> dict[str, Any]:
    select = _select(config, primary_id, "createdon")
    path = entity_set + (f"?$select={select}" if select else "")
    body = connection.client.get_json(path, prefer=["odata.track-changes"]) or {}
    while body.get("@odata.nextLink") and not body.get("@odata.deltaLink"):
        body = connection.client.get_json(_relative(connection, str(body["@odata.nextLink"]))) or {}
    link = body.get("@odata.deltaLink")
    if not link:
        raise FatalApiError("Dataverse answered a change tracking read without @odata.deltaLink")
    return {"mode": "change_tracking", "delta_link": _relative(connection, str(link))}


def _read_delta(connection: Connection, link: str) -> tuple[list[dict[str, Any]], str]:
    """Every entry of a delta read, following next links, and the delta link to store."""
    entries: list[dict[str, Any]] = []
    current: str | None = link
    while current is not None:
        body = connection.client.get_json(current) or {}
        entries += body.get("value") or []
        if body.get("@odata.deltaLink"):
            return entries, _relative(connection, str(body["@odata.deltaLink"]))
        nxt = body.get("@odata.nextLink")
        current = _relative(connection, str(nxt)) if nxt else None
    raise FatalApiError("Dataverse answered a delta read without @odata.deltaLink")


def _tracked_event(entry: Mapping[str, Any], primary_id: str, since: str | None, recent: set[str]) -> dict[str, Any]:
    if str(entry.get("@odata.context", "")).endswith("$deletedEntity") or entry.get("reason") == "deleted":
        rid = str(entry.get("id"))
        return {"key": f"{rid}:deleted", "change": "deleted", "id": rid, "version": None}
    rid = str(entry.get(primary_id))
    match = _ETAG.match(str(entry.get("@odata.etag", "")))
    version = match.group(1) if match else None
    created = bool(since and _later_or_same(entry.get("createdon"), since)) and rid not in recent
    row = {k: v for k, v in entry.items() if not k.startswith("@")}
    change = "created" if created else "updated"
    return {"key": f"{rid}:{version}", "change": change, "id": rid, "version": version, "row": row}


def _token_time(link: str) -> str | None:
    """The time part of a documented-shape delta token, as ISO 8601 UTC; None for another shape."""
    m = _TOKEN_TIME.search(link)
    if not m:
        return None
    try:
        parsed = dt.datetime.strptime(unquote(m.group(1)), "%m/%d/%Y %H:%M:%S").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- watermark ------------------------------------------------------------------------------------------------------


def _watermarked(
    config: PollConfig, state: Mapping[str, Any], connection: Connection, entity_set: str, primary_id: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    first = "since" not in state
    since = _newest_modifiedon(config, connection, entity_set) if first else state.get("since")
    seen: dict[str, str] = dict(state.get("seen") or {})
    rows = _rows_since(config, connection, entity_set, primary_id, _minus(since, config.overlap_seconds))
    known = set(state["ids"]) if state.get("ids") is not None else None
    events: list[dict[str, Any]] = []
    for row in rows:
        rid, version = str(row[primary_id]), str(row.get("versionnumber"))
        if first or seen.get(rid) == version:
            continue
        if known is not None:
            created = rid not in known
        else:  # not reported before and created inside the window; an empty table had no watermark: all rows are new
            window = str(_minus(since, config.overlap_seconds))
            created = since is None or (rid not in seen and _later_or_same(row.get("createdon"), window))
        body = {k: v for k, v in row.items() if not k.startswith("@")}
        change = "created" if created else "updated"
        events.append({"key": f"{rid}:{version}", "change": change, "id": rid, "version": version, "row": body})
    newest = max((str(r["modifiedon"]) for r in rows if r.get("modifiedon")), default=since)
    floor = _minus(newest, config.overlap_seconds)
    seen = {
        str(r[primary_id]): str(r.get("versionnumber")) for r in rows if floor and str(r.get("modifiedon")) >= floor
    }
    new_state: dict[str, Any] = {"mode": "watermark", "since": newest, "seen": seen}
    if config.track_deletes:
        ids = _all_ids(config, connection, entity_set, primary_id)
        gone = sorted(known - ids) if known is not None and not first else []
        events += [{"key": f"{rid}:deleted", "change": "deleted", "id": rid, "version": None} for rid in gone]
        new_state["ids"] = sorted(ids)
    return events, new_state


def _newest_modifiedon(config: PollConfig, connection: Connection, entity_set: str) -> str | None:
    """The starting watermark: the newest ``modifiedon`` (one row read), None for an empty table."""
    path = f"{entity_set}?$select=modifiedon&$orderby=modifiedon desc&$top=1"
    if config.filter:
        path += "&$filter=" + quote(config.filter, safe="'(),: ")
    body = connection.client.get_json(path.replace(" ", "%20")) or {}
    values = body.get("value") or []
    return str(values[0]["modifiedon"]) if values and values[0].get("modifiedon") else None


def _rows_since(
    config: PollConfig, connection: Connection, entity_set: str, primary_id: str, floor: str | None
) -> list[dict[str, Any]]:
    conditions = [f"modifiedon ge {floor}"] if floor else []
    if config.filter:
        conditions.append(f"({config.filter})")
    select = _select(config, primary_id, "createdon", "modifiedon", "versionnumber")
    parts = [f"$select={select}"] if select else []
    if conditions:
        parts.append("$filter=" + quote(" and ".join(conditions), safe="'(),: "))
    parts.append(f"$orderby=modifiedon asc,{primary_id} asc")
    path = f"{entity_set}?{'&'.join(parts)}".replace(" ", "%20")
    return [row for page in iter_pages(connection.client, path, page_size=None) for row in page.records]


def _all_ids(config: PollConfig, connection: Connection, entity_set: str, primary_id: str) -> set[str]:
    path = f"{entity_set}?$select={primary_id}"
    if config.filter:
        path += "&$filter=" + quote(config.filter, safe="'(),: ").replace(" ", "%20")
    return {str(r[primary_id]) for page in iter_pages(connection.client, path, page_size=None) for r in page.records}


# -- helpers --------------------------------------------------------------------------------------------------------


def _relative(connection: Connection, link: str) -> str:
    root = connection.client.api_url + "/"
    if link.startswith(root):
        return link[len(root) :]
    if link.startswith("http"):
        raise FatalApiError(f"Dataverse returned a delta link outside {connection.client.api_url}; not followed")
    return link


def _parse(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _iso(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _minus(value: str | None, seconds: int) -> str | None:
    parsed = _parse(value)
    return _iso(parsed.timestamp() - seconds) if parsed else None


def _later_or_same(value: Any, reference: str) -> bool:
    left, right = _parse(value), _parse(reference)
    return bool(left and right and left >= right)
