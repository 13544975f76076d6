"""The per-table EntityMetadata flags that differ between tables in a real organization: ``IsIntersect``,
``IsValidForAdvancedFind``, ``IsCustomizable``, ``CanCreateAttributes``, ``IsActivity``, ``IsActivityParty``,
``HasActivities`` and ``HasNotes``.

Why a table of its own: clients decide from these flags which tables to offer (a table picker leaves out intersect
and non-searchable tables, a schema tool refuses to add columns where ``CanCreateAttributes`` is false), so constant
values made every system table look like a customizable business table. What each flag means is documented
(webapi/reference/entitymetadata.md, e.g. "IsIntersect: Whether the entity is an intersection table for two other
entities"); which tables carry which value is not listed there, and the values below are a GUESS at what an
organization's ``EntityDefinitions`` answers: listmember is the intersect table of the marketing-list relationships,
activityparty the activity party table, the plug-in registration and system job tables are not customizable and,
except the processing steps and system jobs, not offered by Advanced Find. Tables created at runtime take their
values from their ``CreateEntity`` body (``Table.extra``), which the caller applies after these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Table

#: The business tables with activities and notes.
WITH_ACTIVITIES = frozenset({"account", "contact", "lead", "opportunity", "incident", "list"})
ACTIVITIES = frozenset({"task", "phonecall", "email", "appointment", "letter", "fax"})
#: Tables no client may customize (no new columns either).
NOT_CUSTOMIZABLE = frozenset(
    {
        "listmember",
        "activityparty",
        "plugintype",
        "sdkmessage",
        "sdkmessagefilter",
        "serviceendpoint",
        "sdkmessageprocessingstep",
        "sdkmessageprocessingstepimage",
        "asyncoperation",
    }
)
#: Tables Advanced Find does not offer.
NOT_IN_ADVANCED_FIND = frozenset(
    {
        "listmember",
        "activityparty",
        "plugintype",
        "sdkmessage",
        "sdkmessagefilter",
        "serviceendpoint",
        "sdkmessageprocessingstepimage",
    }
)
INTERSECTS = frozenset({"listmember"})


def _managed(value: bool, name: str, can_change: bool = False) -> dict[str, Any]:
    return {"Value": value, "CanBeChanged": can_change, "ManagedPropertyLogicalName": name}


def flags(t: Table) -> dict[str, Any]:
    """The flags of one table (``Table.extra`` is applied after these by the caller)."""
    name = t.logical_name
    customizable = name not in NOT_CUSTOMIZABLE
    return {
        "IsIntersect": name in INTERSECTS,
        "IsValidForAdvancedFind": name not in NOT_IN_ADVANCED_FIND,
        "IsCustomizable": _managed(customizable, "iscustomizable"),
        "CanCreateAttributes": _managed(customizable, "cancreateattributes"),
        "IsActivity": name in ACTIVITIES,
        "IsActivityParty": name == "activityparty",
        "HasActivities": name in WITH_ACTIVITIES,
        "HasNotes": name in WITH_ACTIVITIES or name in ACTIVITIES,
    }
