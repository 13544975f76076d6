"""Which bulk messages a table supports, asked of Dataverse once per table and connection.

Why a probe rather than a list: which tables take ``CreateMultiple``/``UpdateMultiple`` changes with the
organization's version and its custom tables, and Dataverse says so in ``sdkmessagefilters`` (reference 7.2).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from connector.errors import DataverseApiError
from connector.metadata import TableMetadata
from connector.odata import build_query_string

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["bulk_support", "supports"]

log = logging.getLogger("connector.bulk")
_support_lock = threading.Lock()
_support: weakref.WeakKeyDictionary[Connection, dict[str, frozenset[str]]] = weakref.WeakKeyDictionary()


# -- the probe --------------------------------------------------------------------------------------------------
def bulk_support(connection: Connection, meta: TableMetadata) -> frozenset[str]:
    """The bulk messages the table supports (``CreateMultiple``, ``UpdateMultiple`` and, when both, ``UpsertMultiple``),
    read once per table and connection from ``sdkmessagefilters`` (reference 7.2: UpsertMultiple has no rows)."""
    with _support_lock:
        cached = _support.get(connection, {}).get(meta.logical_name)
    if cached is not None:
        return cached
    filter_ = (
        "(sdkmessageid/name eq 'CreateMultiple' or sdkmessageid/name eq 'UpdateMultiple') and "
        f"primaryobjecttypecode eq '{meta.logical_name}'"
    )
    query = build_query_string(
        {"$select": "sdkmessagefilterid", "$filter": filter_, "$expand": "sdkmessageid($select=name)"}
    )
    body = connection.client.get_json(f"sdkmessagefilters?{query}")
    rows = body.get("value", []) if isinstance(body, dict) else []
    names = {str((row.get("sdkmessageid") or {}).get("name")) for row in rows if isinstance(row, dict)}
    found: set[str] = {n for n in ("CreateMultiple", "UpdateMultiple") if n in names}
    if len(found) == 2:
        found.add("UpsertMultiple")
    result = frozenset(found)
    with _support_lock:
        _support.setdefault(connection, {})[meta.logical_name] = result
    return result


def supports(connection: Connection, meta: TableMetadata, message: str) -> bool:
    """Whether to send ``message``; a probe that cannot be read (retries spent) takes the ``$batch`` route, which
    every table supports, rather than ending the run without a result per record. Not cached: the next run asks."""
    try:
        return message in bulk_support(connection, meta)
    except DataverseApiError as exc:
        log.warning("the bulk-message probe for %s failed (%s); writing through $batch", meta.logical_name, exc)
        return False
