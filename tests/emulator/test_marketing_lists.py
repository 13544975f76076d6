"""Marketing-list messages: AddMemberList, RemoveMemberList (bound to a list) and AddListMembersList (unbound)."""

from __future__ import annotations

import uuid

import httpx

from .conftest import created_id, error_of

NS = "Microsoft.Dynamics.CRM."


def _create(api: httpx.Client, entity_set: str, body: dict[str, object]) -> str:
    r = api.post(entity_set, json=body)
    assert r.status_code == 204, r.text
    return created_id(r)


def _members(api: httpx.Client, list_id: str) -> list[str]:
    rows = api.get(f"listmembers?$filter=_listid_value eq {list_id}&$select=_entityid_value").json()["value"]
    return sorted(r["_entityid_value"] for r in rows)


def _count(api: httpx.Client, list_id: str) -> int:
    return int(api.get(f"lists({list_id})?$select=membercount").json()["membercount"])


def test_add_member_list_returns_the_list_member_and_ignores_duplicates(api: httpx.Client) -> None:
    lst = _create(api, "lists", {"listname": "Contacts", "createdfromcode": 2})
    con = _create(api, "contacts", {"lastname": "Member"})
    r = api.post(f"lists({lst})/{NS}AddMemberList", json={"EntityId": con})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["@odata.context"].endswith(f"$metadata#{NS}AddMemberListResponse")
    member_row = api.get(
        f"listmembers({body['Id']})?$select=_entityid_value,entitytype",
        headers={"Prefer": 'odata.include-annotations="*"'},
    ).json()
    assert member_row["_entityid_value"] == con and member_row["entitytype"] == "contact"
    assert member_row["_entityid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    again = api.post(f"lists({lst})/{NS}AddMemberList", json={"EntityId": con})
    assert again.status_code == 200 and again.json()["Id"] == body["Id"]  # one row per member
    assert _members(api, lst) == [con]
    assert _count(api, lst) == 1


def test_add_member_list_refuses_a_member_of_another_type(api: httpx.Client) -> None:
    lst = _create(api, "lists", {"listname": "Accounts", "createdfromcode": 1})
    con = _create(api, "contacts", {"lastname": "Not an account"})
    r = api.post(f"lists({lst})/{NS}AddMemberList", json={"EntityId": con})
    assert error_of(r) == (404, "0x80040217", f"account With Id = {con} Does Not Exist")
    assert _members(api, lst) == []


def test_add_list_members_list_adds_many_skips_existing_and_checks_types(api: httpx.Client) -> None:
    lst = _create(api, "lists", {"listname": "Leads", "createdfromcode": 4})
    leads = [_create(api, "leads", {"lastname": f"L{i}"}) for i in range(3)]

    def members(*ids: str) -> list[dict[str, str]]:
        return [{"@odata.type": f"{NS}lead", "leadid": i} for i in ids]

    list_ref = {"@odata.type": f"{NS}list", "listid": lst}
    r = api.post("AddListMembersList", json={"List": list_ref, "Members": members(leads[0], leads[1])})
    assert r.status_code == 204, r.text
    r = api.post("AddListMembersList", json={"List": list_ref, "Members": members(leads[1], leads[2])})
    assert r.status_code == 204, r.text
    assert _members(api, lst) == sorted(leads)
    assert _count(api, lst) == 3
    acc = _create(api, "accounts", {"name": "Wrong type"})
    r = api.post(
        "AddListMembersList", json={"List": list_ref, "Members": [{"@odata.type": f"{NS}account", "accountid": acc}]}
    )
    status, code, message = error_of(r)
    assert (status, code) == (400, "0x80040203") and "lead" in message
    missing = str(uuid.uuid4())
    r = api.post("AddListMembersList", json={"List": list_ref, "Members": members(missing)})
    assert error_of(r) == (404, "0x80040217", f"lead With Id = {missing} Does Not Exist")
    assert _count(api, lst) == 3  # a refused call changes nothing


def test_remove_member_list(api: httpx.Client) -> None:
    lst = _create(api, "lists", {"listname": "Contacts", "createdfromcode": 2})
    a, b = (_create(api, "contacts", {"lastname": n}) for n in ("A", "B"))
    for c in (a, b):
        assert api.post(f"lists({lst})/{NS}AddMemberList", json={"EntityId": c}).status_code == 200
    r = api.post(f"lists({lst})/{NS}RemoveMemberList", json={"EntityId": a})
    assert r.status_code == 204, r.text
    assert _members(api, lst) == [b]
    assert _count(api, lst) == 1
    assert api.post(f"lists({lst})/{NS}RemoveMemberList", json={"EntityId": a}).status_code == 204  # no-op


def test_dynamic_lists_and_bad_parameters_are_refused(api: httpx.Client) -> None:
    dyn = _create(api, "lists", {"listname": "Dynamic", "createdfromcode": 2, "type": True})
    con = _create(api, "contacts", {"lastname": "Dyn"})
    status, code, _ = error_of(api.post(f"lists({dyn})/{NS}AddMemberList", json={"EntityId": con}))
    assert (status, code) == (400, "0x80040203")
    static = _create(api, "lists", {"listname": "Static", "createdfromcode": 2})
    status, _, message = error_of(api.post(f"lists({static})/{NS}AddMemberList", json={"EntityId": "nope"}))
    assert status == 400 and "EntityId" in message
    missing = str(uuid.uuid4())
    r = api.post(f"lists({missing})/{NS}AddMemberList", json={"EntityId": con})
    assert error_of(r) == (404, "0x80040217", f"list With Id = {missing} Does Not Exist")
    # the messages are bound to list only
    acc = _create(api, "accounts", {"name": "Not a list"})
    assert api.post(f"accounts({acc})/{NS}AddMemberList", json={"EntityId": con}).status_code == 404
