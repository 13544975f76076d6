"""The standard tables completed from Microsoft's entity reference: originating lead, activities with their
polymorphic regarding lookup and activity parties, currencies, documented display names and money ``_base`` columns."""

from __future__ import annotations

import httpx
import pytest

from .conftest import created_id, error_of
from .test_batch import batch_body, changeset, op, parse, send

API = "/api/data/v9.2"
ANN = {"Prefer": 'odata.include-annotations="*"'}


def _create(api: httpx.Client, entity_set: str, body: dict[str, object]) -> str:
    r = api.post(entity_set, json=body)
    assert r.status_code == 204, r.text
    return created_id(r)


def test_changeset_creates_a_lead_and_an_account_bound_to_it(api: httpx.Client) -> None:
    body = batch_body(
        changeset(
            op("POST", f"{API}/leads", {"lastname": "Lovelace", "subject": "Analytical engines"}, cid="1"),
            op("POST", f"{API}/accounts", {"name": "Engines Ltd", "originatingleadid@odata.bind": "$1"}, cid="2"),
            op("POST", f"{API}/contacts", {"lastname": "Lovelace", "originatingleadid@odata.bind": "$1"}, cid="3"),
        )
    )
    r = send(api, body)
    assert r.status_code == 200, r.text
    parts = parse(r)
    assert [p.status for p in parts] == [204, 204, 204]
    lead_id = parts[0].headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    acc = api.get(
        f"accounts?$filter=_originatingleadid_value eq {lead_id}&$select=name,_originatingleadid_value", headers=ANN
    ).json()["value"]
    assert [a["name"] for a in acc] == ["Engines Ltd"]
    assert acc[0]["_originatingleadid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == (
        "originatingleadid"
    )
    lead = api.get(f"leads({lead_id})?$select=fullname&$expand=account_originating_lead($select=name)").json()
    assert [a["name"] for a in lead["account_originating_lead"]] == ["Engines Ltd"]
    contact = api.get("contacts?$select=lastname&$expand=originatingleadid($select=subject)").json()["value"]
    assert contact[0]["originatingleadid"]["subject"] == "Analytical engines"


@pytest.mark.parametrize("activity", ["tasks", "phonecalls", "emails"])
def test_activity_regarding_is_polymorphic_with_documented_navigation_names(api: httpx.Client, activity: str) -> None:
    table = activity[:-1]
    acc = _create(api, "accounts", {"name": "Regarding Co"})
    con = _create(api, "contacts", {"lastname": "Regarding"})
    on_acc = _create(
        api,
        activity,
        {"subject": "about the account", f"regardingobjectid_account_{table}@odata.bind": f"/accounts({acc})"},
    )
    _create(
        api,
        activity,
        {"subject": "about the contact", f"regardingobjectid_contact_{table}@odata.bind": f"contacts({con})"},
    )
    row = api.get(f"{activity}({on_acc})", headers=ANN).json()
    assert row["activityid"] == on_acc
    assert row["activitytypecode"] == table
    assert row["_regardingobjectid_value"] == acc
    assert row["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"
    assert row["_regardingobjectid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == (
        f"regardingobjectid_account_{table}"
    )
    assert row["_regardingobjectid_value@OData.Community.Display.V1.FormattedValue"] == "Regarding Co"
    found = api.get(f"{activity}?$filter=_regardingobjectid_value eq {con}&$select=subject").json()["value"]
    assert [f["subject"] for f in found] == ["about the contact"]
    coll = {"tasks": "Tasks", "phonecalls": "Phonecalls", "emails": "Emails"}[activity]
    expanded = api.get(f"accounts({acc})?$select=name&$expand=Account_{coll}($select=subject)").json()
    assert [t["subject"] for t in expanded[f"Account_{coll}"]] == ["about the account"]
    single = api.get(f"{activity}({on_acc})?$select=subject&$expand=regardingobjectid_account_{table}($select=name)")
    assert single.json()[f"regardingobjectid_account_{table}"]["name"] == "Regarding Co"
    # the account-typed navigation property refuses a contact
    r = api.post(activity, json={"subject": "x", f"regardingobjectid_account_{table}@odata.bind": f"/contacts({con})"})
    assert error_of(r)[0] == 400


def test_email_with_activity_parties_deep_insert(api: httpx.Client) -> None:
    con = _create(api, "contacts", {"lastname": "Recipient", "emailaddress1": "r@example.com"})
    me = api.get("WhoAmI").json()["UserId"]
    email = _create(
        api,
        "emails",
        {
            "subject": "Hello",
            "email_activity_parties": [
                {"partyid_systemuser@odata.bind": f"/systemusers({me})", "participationtypemask": 1},
                {"partyid_contact@odata.bind": f"/contacts({con})", "participationtypemask": 2},
            ],
        },
    )
    got = api.get(
        f"emails({email})?$select=subject&$expand=email_activity_parties($select=participationtypemask,_partyid_value)"
    ).json()
    parties = sorted((p["participationtypemask"], p["_partyid_value"]) for p in got["email_activity_parties"])
    assert parties == [(1, me), (2, con)]
    back = api.get(f"activityparties?$filter=_partyid_value eq {con}&$expand=activityid_email($select=subject)")
    assert [p["activityid_email"]["subject"] for p in back.json()["value"]] == ["Hello"]
    con_parties = api.get(f"contacts({con})?$select=lastname&$expand=contact_activity_parties").json()
    assert len(con_parties["contact_activity_parties"]) == 1


def test_task_status_defaults_follow_the_documented_default_status(api: httpx.Client) -> None:
    tid = _create(api, "tasks", {"subject": "status"})
    assert api.get(f"tasks({tid})?$select=statecode,statuscode").json()["statuscode"] == 2  # Not Started
    assert api.patch(f"tasks({tid})", json={"statecode": 1}).status_code == 204
    assert api.get(f"tasks({tid})?$select=statuscode").json()["statuscode"] == 5  # Completed
    eid = _create(api, "emails", {"subject": "status"})
    assert api.get(f"emails({eid})?$select=statuscode").json()["statuscode"] == 1  # Draft


def test_transaction_currency_and_money_base_columns(api: httpx.Client) -> None:
    cur = _create(
        api,
        "transactioncurrencies",
        {
            "currencyname": "Euro",
            "isocurrencycode": "EUR",
            "currencysymbol": "€",
            "exchangerate": 0.5,
            "currencyprecision": 2,
        },
    )
    acc = _create(
        api,
        "accounts",
        {"name": "Money", "revenue": 1000, "transactioncurrencyid@odata.bind": f"/transactioncurrencies({cur})"},
    )
    row = api.get(f"accounts({acc})?$select=revenue,revenue_base,exchangerate,_transactioncurrencyid_value").json()
    # the currency's rate is copied; _base is the value in the base currency (value / rate)
    assert (row["revenue"], row["exchangerate"], row["revenue_base"]) == (1000, 0.5, 2000)
    assert row["_transactioncurrencyid_value"] == cur
    plain = _create(api, "accounts", {"name": "Dollars", "creditlimit": 70})
    base = api.get("transactioncurrencies?$filter=isocurrencycode eq 'USD'&$select=exchangerate").json()["value"]
    assert [b["exchangerate"] for b in base] == [1]  # every organization has its base currency
    got = api.get(f"accounts({plain})?$select=creditlimit_base,exchangerate,_transactioncurrencyid_value").json()
    assert got["_transactioncurrencyid_value"] == base[0]["transactioncurrencyid"]
    assert (got["exchangerate"], got["creditlimit_base"]) == (1, 70)
    none = _create(api, "accounts", {"name": "No money"})
    assert (
        api.get(f"accounts({none})?$select=_transactioncurrencyid_value").json()["_transactioncurrencyid_value"] is None
    )
    cur_row = api.get(f"transactioncurrencies({cur})?$expand=TransactionCurrency_Account($select=name)").json()
    assert [a["name"] for a in cur_row["TransactionCurrency_Account"]] == ["Money"]
    r = api.patch(f"accounts({acc})", json={"revenue_base": 5})  # read-only: ignored as Dataverse does
    assert r.status_code == 204
    assert api.get(f"accounts({acc})?$select=revenue_base").json()["revenue_base"] == 2000
    assert api.patch(f"accounts({acc})", json={"revenue": 3000}).status_code == 204
    assert api.get(f"accounts({acc})?$select=revenue_base").json()["revenue_base"] == 6000


def test_display_names_and_types_follow_the_entity_reference(api: httpx.Client) -> None:
    def attr(table: str, column: str) -> dict[str, object]:
        r = api.get(f"EntityDefinitions(LogicalName='{table}')/Attributes(LogicalName='{column}')")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def shown(a: dict[str, object]) -> object:
        return a["DisplayName"]["UserLocalizedLabel"]["Label"]  # type: ignore[index]

    assert shown(attr("account", "accountcategorycode")) == "Category"
    assert shown(attr("account", "customertypecode")) == "Relationship Type"
    assert shown(attr("contact", "numberofchildren")) == "No. of Children"
    assert shown(attr("list", "createdfromcode")) == "Marketing List Member Type"
    assert shown(attr("task", "regardingobjectid")) == "Regarding"
    assert shown(attr("serviceendpoint", "url")) == "Url Address"
    assert shown(attr("sdkmessageprocessingstep", "supporteddeployment")) == "Deployment"
    base = attr("account", "revenue_base")
    assert base["AttributeType"] == "Money" and base["@odata.type"] == "#Microsoft.Dynamics.CRM.MoneyAttributeMetadata"
    assert base["AttributeOf"] == "revenue" and base["IsBaseCurrency"] is True
    assert shown(base) == "Annual Revenue (Base)"
    assert base["IsValidForCreate"] is False and base["IsValidForUpdate"] is False
    task = api.get("EntityDefinitions(LogicalName='task')").json()
    assert (task["PrimaryIdAttribute"], task["PrimaryNameAttribute"], task["IsActivity"]) == (
        "activityid",
        "subject",
        True,
    )
    assert api.get("EntityDefinitions(LogicalName='activityparty')").json()["IsActivityParty"] is True
    rels = api.get("EntityDefinitions(LogicalName='task')/ManyToOneRelationships").json()["value"]
    by_name = {r["SchemaName"]: r for r in rels}
    assert by_name["Account_Tasks"]["ReferencingEntityNavigationPropertyName"] == "regardingobjectid_account_task"
    assert by_name["Account_Tasks"]["ReferencedEntityNavigationPropertyName"] == "Account_Tasks"
    assert by_name["lk_task_createdby"]["ReferencedEntity"] == "systemuser"
