"""Per-table EntityMetadata flags (``table_flags.py``): intersect, Advanced Find, customizable and activity flags as
they differ between tables, filterable like any metadata property, and a runtime table's own values kept."""

from __future__ import annotations

import httpx

SELECT = "LogicalName,IsIntersect,IsValidForAdvancedFind,IsCustomizable,CanCreateAttributes,HasActivities,HasNotes"


def _flags(api: httpx.Client, table: str) -> tuple[bool, bool, bool, bool, bool]:
    resp = api.get(f"EntityDefinitions(LogicalName='{table}')?$select={SELECT}")
    assert resp.status_code == 200, resp.text
    e = resp.json()
    return (
        e["IsIntersect"],
        e["IsValidForAdvancedFind"],
        e["IsCustomizable"]["Value"],
        e["CanCreateAttributes"]["Value"],
        e["HasActivities"],
    )


def test_flags_differ_per_table(api: httpx.Client) -> None:
    assert _flags(api, "account") == (False, True, True, True, True)
    assert _flags(api, "listmember") == (True, False, False, False, False)
    assert _flags(api, "sdkmessagefilter") == (False, False, False, False, False)
    assert _flags(api, "sdkmessageprocessingstep") == (False, True, False, False, False)
    assert _flags(api, "systemuser") == (False, True, True, True, False)


def test_the_standard_table_filter_leaves_out_intersect_and_hidden_tables(api: httpx.Client) -> None:
    query = "IsCustomEntity eq false and IsIntersect eq false and IsValidForAdvancedFind eq true"
    names = {
        e["LogicalName"] for e in api.get(f"EntityDefinitions?$select=LogicalName&$filter={query}").json()["value"]
    }
    assert {"account", "contact", "list", "asyncoperation"} <= names
    assert not names & {"listmember", "sdkmessage", "sdkmessagefilter", "serviceendpoint", "plugintype"}
    intersects = api.get("EntityDefinitions?$select=LogicalName&$filter=IsIntersect eq true").json()["value"]
    assert [e["LogicalName"] for e in intersects] == ["listmember"]
