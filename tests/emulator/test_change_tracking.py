"""Change tracking (``changetracking.py``): ``Prefer: odata.track-changes`` answers with a delta link, following it
returns changed rows then ``$deletedEntity`` entries, untracked tables and too-old tokens are refused, and
``ChangeTrackingEnabled`` is set through a table definition PUT and cannot be turned off."""

from __future__ import annotations

from urllib.parse import unquote

import httpx

from dataverse_emulator.changetracking import EXPIRY_KEY
from dataverse_emulator.testing import EmulatorHandle

from .conftest import FakeClock, error_of, fetch_token

TRACK = {"Prefer": "odata.track-changes"}


def _create(api: httpx.Client, name: str) -> str:
    r = api.post("accounts", json={"name": name})
    assert r.status_code == 204, r.text
    return r.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def _follow(api: httpx.Client, link: str) -> dict[str, object]:
    r = api.get(link)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_initial_read_then_delta_reports_changes_then_deletes(api: httpx.Client) -> None:
    kept, changed, gone = _create(api, "kept"), _create(api, "changed"), _create(api, "gone")
    first = api.get("accounts?$select=name", headers=TRACK)
    assert first.status_code == 200, first.text
    assert first.headers["Preference-Applied"] == "odata.track-changes"
    body = first.json()
    assert {e["accountid"] for e in body["value"]} == {kept, changed, gone}
    link = body["@odata.deltaLink"]
    assert "$select=name" in link and "$deltatoken=" in link
    token = unquote(link.split("$deltatoken=")[1])
    assert token.split("!")[0].isdigit() and len(token.split("!")[1]) == len("08/22/2017 08:10:44")

    assert api.patch(f"accounts({changed})", json={"name": "changed 2"}).status_code == 204
    assert api.delete(f"accounts({gone})").status_code == 204
    added = _create(api, "added")
    delta = _follow(api, link)
    assert str(delta["@odata.context"]).endswith("#accounts(name)/$delta")
    values = delta["value"]
    assert isinstance(values, list)
    assert [v.get("accountid") for v in values[:2]] == [changed, added]
    assert values[0]["name"] == "changed 2"
    assert values[2] == {
        "@odata.context": f"{api.base_url}$metadata#accounts/$deletedEntity",
        "id": gone,
        "reason": "deleted",
    }
    assert len(values) == 3
    again = _follow(api, str(delta["@odata.deltaLink"]))
    assert again["value"] == []


def test_query_options_refused_with_tracking(api: httpx.Client) -> None:
    for option in ("$filter=name eq 'x'", "$orderby=name", "$top=1", "$expand=primarycontactid"):
        r = api.get(f"accounts?{option}", headers=TRACK)
        status, _, message = error_of(r)
        name = option.split("=")[0]
        assert (
            status == 400
            and message == f'The "{name}" query parameter isn\'t supported when Change Tracking is enabled.'
        )


def test_table_without_change_tracking_refuses(api: httpx.Client) -> None:
    status, _, message = error_of(api.get("tasks", headers=TRACK))
    assert status == 400 and "Change tracking is not enabled" in message and "'task'" in message
    flag = api.get("EntityDefinitions(LogicalName='task')?$select=ChangeTrackingEnabled").json()
    assert flag["ChangeTrackingEnabled"] is False


def test_enable_through_metadata_put_and_never_disable(api: httpx.Client) -> None:
    tracked = api.get("EntityDefinitions?$select=LogicalName&$filter=ChangeTrackingEnabled eq true").json()["value"]
    assert {"account", "contact"} <= {e["LogicalName"] for e in tracked}
    r = api.put("EntityDefinitions(LogicalName='phonecall')", json={"ChangeTrackingEnabled": True})
    assert r.status_code == 204, r.text
    assert api.get("phonecalls", headers=TRACK).status_code == 200
    flag = api.get("EntityDefinitions(LogicalName='phonecall')?$select=ChangeTrackingEnabled").json()
    assert flag["ChangeTrackingEnabled"] is True
    status, _, message = error_of(
        api.put("EntityDefinitions(LogicalName='phonecall')", json={"ChangeTrackingEnabled": False})
    )
    assert status == 400 and "cannot be disabled" in message


def test_token_older_than_retention_is_refused(api: httpx.Client, emulator: EmulatorHandle, clock: FakeClock) -> None:
    link = api.get("contacts", headers=TRACK).json()["@odata.deltaLink"]
    clock.advance(6 * 86400)
    api.headers["Authorization"] = f"Bearer {fetch_token(emulator)}"  # the access token expired meanwhile
    assert api.get(link).status_code == 200  # within the default 7 days
    clock.advance(2 * 86400)
    api.headers["Authorization"] = f"Bearer {fetch_token(emulator)}"
    status, code, message = error_of(api.get(link))
    assert (status, code) == (400, "0x80044352") and "full sync" in message
    store = emulator.emulator.store
    store.meta_set(EXPIRY_KEY, "30")
    try:
        assert api.get(link).status_code == 200  # the retention is the organization's setting
    finally:
        store.meta_set(EXPIRY_KEY, "7")
    status, _, _ = error_of(api.get(link.replace("%21", "x")))
    assert status == 400
