"""The per-request context and the path helpers every handler shares; it imports no handler, so handlers depend on it
and never on the dispatcher."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from .odata import (
    ExpandItem,
)
from .query import fmt_dt
from .records import (
    AnnotationFilter,
)

MAX_URL = 32768
KEY_RESERVED = set("/<>*%&:\\?+")
MAX_PAGE = 5000
API_RE = re.compile(r"^/api/data/(v9\.[012])(/.*)?$")
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
VERSION = "9.2.25093.00155"


def split_path(path: str) -> list[str]:
    """Split an OData resource path on ``/`` outside quotes and parentheses."""
    out: list[str] = []
    cur: list[str] = []
    depth, quoted = 0, False
    for ch in path:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == "/" and depth == 0 and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [s for s in out if s != ""]


def seg_key(seg: str) -> tuple[str, str | None]:
    """``accounts(…)`` -> (``accounts``, ``…``); ``accounts`` -> (``accounts``, None)."""
    i = seg.find("(")
    if i > 0 and seg.endswith(")"):
        return seg[:i], seg[i + 1 : -1]
    return seg, None


def expand_context(items: tuple[ExpandItem, ...]) -> str | None:
    """The ``$expand`` part of ``@odata.context``: ``primarycontactid(fullname)``, nested expands inside."""
    if not items:
        return None
    parts = []
    for it in items:
        inner = [*(it.select or ())]
        nested = expand_context(it.expand)
        if nested:
            inner.append(nested)
        parts.append(f"{it.nav}({','.join(inner)})")
    return ",".join(parts)


def parse_prefer(request: Request) -> dict[str, str]:
    """All ``Prefer`` values, from repeated headers or comma lists (quoted commas respected)."""
    out: dict[str, str] = {}
    for raw in request.headers.getlist("prefer"):
        for part in re.findall(r'(?:[^,"]|"[^"]*")+', raw):
            name, _, value = part.strip().partition("=")
            out[name.strip().lower()] = value.strip()
    return out


class Ctx:
    """Per-request state: API root, caller, effective user, Prefer values."""

    def __init__(self, request: Request, api: str, user: dict[str, Any], caller: dict[str, Any] | None) -> None:
        self.request = request
        self.api = api
        self.user = user  # effective user (impersonated if any)
        self.caller = caller  # real caller when impersonating
        self.prefer = parse_prefer(request)
        self.annotations = AnnotationFilter(self.prefer.get("odata.include-annotations"))
        self.applied: list[str] = []


_LAST_SECOND: list[tuple[int, str]] = [(0, fmt_dt(dt.datetime.fromtimestamp(0, dt.UTC)))]


def fmt_dt_now(clock: Callable[[], float]) -> str:
    """Now on the injected clock, in the canonical storage form (second precision). A bulk message stamps thousands
    of rows within one second: the text of the last second is kept, away from the second's edges where rounding to
    microseconds could carry into the next one."""
    now = clock()
    second = math.floor(now)
    if 0.001 < now - second < 0.999:
        last = _LAST_SECOND[0]
        if last[0] != second:
            last = _LAST_SECOND[0] = (second, fmt_dt(dt.datetime.fromtimestamp(second, dt.UTC)))
        return last[1]
    return fmt_dt(dt.datetime.fromtimestamp(now, dt.UTC))
