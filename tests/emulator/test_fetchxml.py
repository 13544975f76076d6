"""FetchXML over the Web API and $apply: filters, links, order, paging cookies, aggregates and their limits."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote, unquote

import httpx
import pytest

from dataverse_emulator.testing import EmulatorHandle

from .conftest import error_of

PAGING = {
    "Prefer": 'odata.include-annotations="Microsoft.Dynamics.CRM.fetchxmlpagingcookie,'
    'Microsoft.Dynamics.CRM.morerecords"'
}


def fetch(api: httpx.Client, xml: str, entity_set: str = "accounts", **headers: str) -> httpx.Response:
    return api.get(f"{entity_set}?fetchXml={quote(xml, safe='')}", headers=headers)


def names(r: httpx.Response, key: str = "name") -> list[str]:
    assert r.status_code == 200, r.text
    return [v[key] for v in r.json()["value"]]


@pytest.fixture
def sample(emulator: EmulatorHandle) -> list[str]:
    contacts = emulator.admin.seed(
        "contact", [{"firstname": "Ann", "lastname": "Lee"}, {"firstname": "Bob", "lastname": "Ray"}]
    )
    return emulator.admin.seed(
        "account",
        [
            {
                "name": "Contoso",
                "revenue": 100.0,
                "numberofemployees": 5,
                "industrycode": 1,
                "primarycontactid": contacts[0],
            },
            {"name": "contoso ltd", "revenue": 200.0, "numberofemployees": 50, "industrycode": 1},
            {
                "name": "Fabrikam",
                "revenue": 300.0,
                "numberofemployees": 500,
                "industrycode": 3,
                "primarycontactid": contacts[1],
            },
            {"name": "Litware", "numberofemployees": 1},
        ],
    )


def test_attributes_filter_order_and_nulls_omitted(api: httpx.Client, sample: list[str]) -> None:
    xml = """<fetch><entity name='account'><attribute name='name'/><attribute name='revenue'/>
      <filter type='or'><condition attribute='name' operator='like' value='contoso%'/>
        <filter><condition attribute='revenue' operator='null'/></filter></filter>
      <order attribute='name' descending='true'/></entity></fetch>"""
    r = fetch(api, xml)
    assert names(r) == ["Litware", "contoso ltd", "Contoso"]
    rows = r.json()["value"]
    assert "revenue" not in rows[0]  # null columns are omitted
    assert set(rows[1]) == {"@odata.etag", "name", "revenue", "accountid"}
    assert r.json()["@odata.context"].endswith("$metadata#accounts(name,revenue,accountid)")


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("<condition attribute='numberofemployees' operator='gt' value='5'/>", ["Fabrikam", "contoso ltd"]),
        ("<condition attribute='numberofemployees' operator='le' value='5'/>", ["Contoso", "Litware"]),
        ("<condition attribute='name' operator='ne' value='contoso'/>", ["Fabrikam", "Litware", "contoso ltd"]),
        ("<condition attribute='name' operator='begins-with' value='fab'/>", ["Fabrikam"]),
        ("<condition attribute='name' operator='ends-with' value='LTD'/>", ["contoso ltd"]),
        ("<condition attribute='name' operator='not-like' value='%o%'/>", ["Fabrikam", "Litware"]),
        (
            "<condition attribute='industrycode' operator='in'><value>1</value><value>3</value></condition>",
            ["Contoso", "Fabrikam", "contoso ltd"],
        ),
        ("<condition attribute='industrycode' operator='not-in'><value>1</value></condition>", ["Fabrikam"]),
        ("<condition attribute='revenue' operator='not-null'/>", ["Contoso", "Fabrikam", "contoso ltd"]),
        (
            "<condition attribute='numberofemployees' operator='between'><value>2</value><value>50</value></condition>",
            ["Contoso", "contoso ltd"],
        ),
        ("<condition attribute='createdon' operator='today'/>", ["Contoso", "Fabrikam", "Litware", "contoso ltd"]),
        (
            "<condition attribute='createdon' operator='last-x-days' value='3'/>",
            ["Contoso", "Fabrikam", "Litware", "contoso ltd"],
        ),
        ("<condition attribute='createdon' operator='olderthan-x-days' value='3'/>", []),
        ("<condition attribute='ownerid' operator='eq-userid'/>", []),
    ],
)
def test_condition_operators(api: httpx.Client, sample: list[str], condition: str, expected: list[str]) -> None:
    xml = f"<fetch><entity name='account'><attribute name='name'/><filter>{condition}</filter></entity></fetch>"
    assert sorted(names(fetch(api, xml))) == expected


def test_link_entities_inner_outer_alias_and_annotations(api: httpx.Client, sample: list[str]) -> None:
    inner = """<fetch><entity name='account'><attribute name='name'/><attribute name='primarycontactid'/>
      <order attribute='name'/>
      <link-entity name='contact' from='contactid' to='primarycontactid' alias='pc'>
        <attribute name='fullname'/><filter><condition attribute='firstname' operator='eq' value='bob'/></filter>
      </link-entity></entity></fetch>"""
    r = fetch(api, inner, Prefer='odata.include-annotations="*"')
    rows = r.json()["value"]
    assert [(x["name"], x["pc.fullname"]) for x in rows] == [("Fabrikam", "Bob Ray")]
    assert rows[0]["_primarycontactid_value@OData.Community.Display.V1.FormattedValue"] == "Bob Ray"
    assert rows[0]["_primarycontactid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    outer = """<fetch><entity name='account'><attribute name='name'/><order attribute='name'/>
      <link-entity name='contact' from='contactid' to='primarycontactid' link-type='outer'>
        <attribute name='firstname'/></link-entity>
      <filter><condition attribute='numberofemployees' operator='ge' value='5'/></filter></entity></fetch>"""
    rows = fetch(api, outer).json()["value"]
    assert [(x["name"], x.get("contact1.firstname")) for x in rows] == [
        ("Contoso", "Ann"),
        ("contoso ltd", None),
        ("Fabrikam", "Bob"),
    ]
    by_link_filter = """<fetch><entity name='account'><attribute name='name'/>
      <link-entity name='contact' from='contactid' to='primarycontactid' link-type='outer' alias='c'/>
      <filter><condition entityname='c' attribute='lastname' operator='eq' value='Lee'/></filter></entity></fetch>"""
    assert names(fetch(api, by_link_filter)) == ["Contoso"]
    exists = """<fetch><entity name='account'><attribute name='name'/>
      <link-entity name='contact' from='contactid' to='primarycontactid' link-type='not any'/></entity></fetch>"""
    assert sorted(names(fetch(api, exists))) == ["Litware", "contoso ltd"]


def _next_fetch(xml: str, annotation: str) -> str:
    """What Microsoft's SDK (and the docs' algorithm) does with the cookie annotation."""
    el = ET.fromstring(annotation)
    cookie = unquote(unquote(el.get("pagingcookie", "")))
    fetch_el = ET.fromstring(xml)
    fetch_el.set("paging-cookie", cookie)
    fetch_el.set("page", el.get("pagenumber", ""))
    return ET.tostring(fetch_el, encoding="unicode")


def test_paging_cookie_annotations_and_encoding(api: httpx.Client, emulator: EmulatorHandle) -> None:
    emulator.admin.seed("account", [{"name": f"P{i:02d}"} for i in range(7)])
    xml = "<fetch count='3'><entity name='account'><attribute name='name'/><order attribute='name'/></entity></fetch>"
    no_pref = fetch(api, xml).json()
    assert set(no_pref) == {"@odata.context", "value"}  # annotations only when asked
    seen: list[str] = []
    pages = 0
    while True:
        body = fetch(api, xml, **PAGING).json()
        pages += 1
        seen += [v["name"] for v in body["value"]]
        if "@Microsoft.Dynamics.CRM.morerecords" not in body:
            assert "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie" not in body  # last page: both absent
            break
        assert body["@Microsoft.Dynamics.CRM.morerecords"] is True
        annotation = body["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"]
        if pages == 1:
            assert annotation.startswith(
                '<cookie pagenumber="2" pagingcookie="%253ccookie%2520page%253d%25221%2522%253e'
            )
            assert annotation.endswith('" istracking="False" />')
            inner = unquote(unquote(ET.fromstring(annotation).get("pagingcookie", "")))
            assert inner.startswith('<cookie page="1"><name last="P02" first="P00" /><accountid last="{')
        xml = _next_fetch(xml, annotation)
    assert pages == 3
    assert seen == [f"P{i:02d}" for i in range(7)]


def test_cookie_paging_without_order_uses_primary_key(api: httpx.Client, emulator: EmulatorHandle) -> None:
    ids = emulator.admin.seed("account", [{"name": f"K{i}"} for i in range(5)])
    xml = "<fetch count='2'><entity name='account'><attribute name='accountid'/></entity></fetch>"
    seen: list[str] = []
    for _ in range(5):
        body = fetch(api, xml, **PAGING).json()
        seen += [v["accountid"] for v in body["value"]]
        if not body.get("@Microsoft.Dynamics.CRM.morerecords"):
            break
        xml = _next_fetch(xml, body["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"])
    assert seen == sorted(ids)


def test_simple_paging_limit_top_and_total(api: httpx.Client, sample: list[str]) -> None:
    r = fetch(api, "<fetch count='5000' page='11'><entity name='account'/></fetch>")
    assert error_of(r) == (400, "0x8004430A", "A paging cookie is required when retrieving a high page number.")
    ok = fetch(api, "<fetch count='5000' page='10'><entity name='account'/></fetch>")
    assert ok.status_code == 200 and ok.json()["value"] == []
    top = fetch(
        api, "<fetch top='2'><entity name='account'><attribute name='name'/><order attribute='name'/></entity></fetch>"
    )
    assert names(top) == ["Contoso", "contoso ltd"]
    both = fetch(api, "<fetch top='2' count='2'><entity name='account'/></fetch>")
    assert both.status_code == 400
    total = fetch(
        api,
        "<fetch count='1' returntotalrecordcount='true'>"
        "<entity name='account'><attribute name='name'/></entity></fetch>",
        Prefer='odata.include-annotations="*"',
    ).json()
    assert total["@Microsoft.Dynamics.CRM.totalrecordcount"] == 4
    assert total["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is False


def test_aggregates_and_groupby(api: httpx.Client, sample: list[str]) -> None:
    xml = """<fetch aggregate='true'><entity name='account'>
      <attribute name='industrycode' alias='ind' groupby='true'/>
      <attribute name='accountid' alias='n' aggregate='count'/>
      <attribute name='revenue' alias='total' aggregate='sum'/>
      <attribute name='numberofemployees' alias='most' aggregate='max'/>
      <order alias='ind'/></entity></fetch>"""
    rows = fetch(api, xml, Prefer='odata.include-annotations="OData.Community.Display.V1.FormattedValue"').json()[
        "value"
    ]
    plain = [{k: v for k, v in r.items() if "@" not in k} for r in rows]
    assert plain == [
        {"n": 1, "most": 1},
        {"ind": 1, "n": 2, "total": 300.0, "most": 50},
        {"ind": 3, "n": 1, "total": 300.0, "most": 500},
    ]
    assert rows[1]["ind@OData.Community.Display.V1.FormattedValue"] == "Accounting"
    assert rows[1]["total@OData.Community.Display.V1.FormattedValue"] == "$300.00"
    avg = fetch(
        api,
        "<fetch aggregate='true'><entity name='account'><attribute name='revenue' alias='a' aggregate='avg'/>"
        "<attribute name='industrycode' alias='d' aggregate='countcolumn' distinct='true'/></entity></fetch>",
    ).json()["value"]
    assert avg == [{"a": 200.0, "d": 2}]
    year = fetch(
        api,
        "<fetch aggregate='true'><entity name='account'><attribute name='createdon' alias='y' groupby='true' "
        "dategrouping='year'/><attribute name='accountid' alias='c' aggregate='count'/></entity></fetch>",
    ).json()["value"]
    assert len(year) == 1 and year[0]["c"] == 4 and year[0]["y"] >= 2024


def test_aggregate_limit(api: httpx.Client, sample: list[str]) -> None:
    r = fetch(
        api,
        "<fetch aggregate='true' aggregatelimit='3'><entity name='account'>"
        "<attribute name='accountid' alias='c' aggregate='count'/></entity></fetch>",
    )
    assert error_of(r) == (400, "0x8004E023", "The maximum record limit is exceeded. Reduce the number of records.")


def test_refusals(api: httpx.Client, sample: list[str]) -> None:
    unknown = fetch(api, "<fetch><entity name='account'><attribute name='nope'/></entity></fetch>")
    assert error_of(unknown) == (
        400,
        "0x80041103",
        "'Account' entity doesn't contain attribute with Name = 'nope' and NameMapping = 'Logical'.",
    )
    wrong_set = fetch(api, "<fetch><entity name='contact'/></fetch>")
    assert error_of(wrong_set)[0] == 400
    entity_bomb = (
        '<?xml version="1.0"?><!DOCTYPE f [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        "<fetch><entity name='account'><filter><condition attribute='name' operator='eq' value='&b;'/>"
        "</filter></entity></fetch>"
    )
    assert error_of(fetch(api, entity_bomb))[:2] == (400, "0x80040203")
    assert error_of(fetch(api, "<fetch><entity name='account'>"))[:2] == (400, "0x80040203")


def test_apply_groupby_and_aggregate(api: httpx.Client, sample: list[str]) -> None:
    def apply(expr: str) -> list[dict[str, object]]:
        r = api.get(f"accounts?$apply={quote(expr)}")
        assert r.status_code == 200, r.text
        return list(r.json()["value"])

    assert apply("groupby((industrycode),aggregate($count as count))") == [
        {"industrycode": None, "count": 1},
        {"industrycode": 1, "count": 2},
        {"industrycode": 3, "count": 1},
    ]
    assert apply("aggregate(revenue with sum as total,revenue with average as avg,revenue with max as hi)") == [
        {"total": 600.0, "avg": 200.0, "hi": 600.0 / 2}
    ]
    assert apply("filter(numberofemployees gt 4)/aggregate(industrycode with countdistinct as kinds)") == [{"kinds": 2}]
    assert apply("groupby((primarycontactid/fullname))") == [
        {"contact_fullname": None},
        {"contact_fullname": "Ann Lee"},
        {"contact_fullname": "Bob Ray"},
    ]
    r = api.get(f"accounts?$apply={quote('groupby((createdon))')}")
    assert error_of(r)[0] == 400
