"""``run_fetch_xml_query`` against a scripted Dataverse: checks before sending, cookie paging as documented, tokens."""

from __future__ import annotations

import json
from typing import Any
from xml.etree.ElementTree import fromstring

import httpx
import pytest

from connector.connection import Connection
from connector.errors import FatalApiError, InputError
from connector.multipart import BatchOperation, OperationResponse, decode_batch, encode_batch_response
from connector.runtime import Runtime
from tests.records.conftest import FakeDataverse

FETCH = (
    "<fetch><entity name='contact'><attribute name='fullname'/><attribute name='lastname'/>"
    "<order attribute='fullname'/></entity></fetch>"
)
# use-fetchxml-web-api.md / page-results.md (reference 5.2): the annotation of a page-1 answer, verbatim
DOC_COOKIE = (
    '<cookie pagenumber="2" pagingcookie="%253ccookie%2520page%253d%25221%2522%253e%253cfullname%2520last%253d%2522'
    "Susanna%2520Stubberod%2520%2528sample%2529%2522%2520first%253d%2522Yvonne%2520McKay%2520%2528sample%2529%2522%2520"
    "%252f%253e%253ccontactid%2520last%253d%2522%257b70BF4D48-34CB-ED11-B596-0022481D68CD%257d%2522%2520first%253d%2522"
    '%257b49B0BE2E-D01C-ED11-B83E-000D3A572421%257d%2522%2520%252f%253e%253c%252fcookie%253e" istracking="False" />'
)
DOC_INNER = (
    '<cookie page="1"><fullname last="Susanna Stubberod (sample)" first="Yvonne McKay (sample)" />'
    '<contactid last="{70BF4D48-34CB-ED11-B596-0022481D68CD}" first="{49B0BE2E-D01C-ED11-B83E-000D3A572421}" />'
    "</cookie>"
)


def sent_fetch(request: httpx.Request) -> Any:
    """The <fetch> element a GET carried."""
    return fromstring(request.url.params["fetchXml"])


def pages(*bodies: dict[str, Any]) -> Any:
    queue = list(bodies)

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=queue.pop(0))

    return respond


def rows(*names: str) -> list[dict[str, str]]:
    return [{"fullname": n} for n in names]


def test_run_fetch_xml_query_fetch_all_injects_the_documented_cookie(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    more = {"@Microsoft.Dynamics.CRM.morerecords": True}
    fake.respond = pages(
        {"value": rows("a", "b"), "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie": DOC_COOKIE, **more},
        {
            "value": rows("c", "d"),
            "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie": DOC_COOKIE.replace("253d%25221", "253d%25222"),
            **more,
        },
        {"value": rows("e")},
    )
    out = runtime.run_action(
        "run_fetch_xml_query", {"fetch_xml": FETCH, "fetch_all": True, "max_records": 10, "page_size": 2}, conn
    )
    assert [r["fullname"] for r in out["records"]] == ["a", "b", "c", "d", "e"]
    assert (out["more_records"], out["next_page_token"], out["page"]) == (False, None, 3)
    first, second, third = fake.data
    assert all(r.url.path == "/api/data/v9.2/contacts" for r in fake.data)
    assert first.headers["Prefer"] == (
        'odata.include-annotations="Microsoft.Dynamics.CRM.fetchxmlpagingcookie,Microsoft.Dynamics.CRM.morerecords"'
    )
    f1, f2, f3 = (sent_fetch(r) for r in (first, second, third))
    assert (f1.get("page"), f1.get("count"), f1.get("paging-cookie")) == ("1", "2", None)
    assert (f2.get("page"), f2.get("paging-cookie")) == ("2", DOC_INNER)  # decoded twice, then XML-escaped on the wire
    assert 'paging-cookie="&lt;cookie page=&quot;1&quot;&gt;' in second.url.params["fetchXml"]
    assert f3.get("page") == "3" and f3.get("paging-cookie") == DOC_INNER.replace('page="1"', 'page="2"')


def test_run_fetch_xml_query_cookie_that_does_not_advance_is_an_error(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    same = {"@Microsoft.Dynamics.CRM.fetchxmlpagingcookie": DOC_COOKIE, "@Microsoft.Dynamics.CRM.morerecords": True}
    fake.respond = pages({"value": rows("a"), **same}, {"value": rows("b"), **same}, {"value": rows("c"), **same})
    with pytest.raises(FatalApiError, match="same paging cookie"):
        runtime.run_action("run_fetch_xml_query", {"fetch_xml": FETCH, "fetch_all": True, "max_records": 50}, conn)
    assert len(fake.data) == 2


def test_run_fetch_xml_query_one_page_then_the_token_resumes_mid_page(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    cookie = {"@Microsoft.Dynamics.CRM.fetchxmlpagingcookie": DOC_COOKIE, "@Microsoft.Dynamics.CRM.morerecords": True}
    fake.respond = pages({"value": rows("a", "b", "c"), **cookie})
    first = runtime.run_action(
        "run_fetch_xml_query", {"fetch_xml": FETCH, "fetch_all": True, "max_records": 2, "page_size": 3}, conn
    )
    assert [r["fullname"] for r in first["records"]] == ["a", "b"] and first["more_records"] is True
    fake.respond = pages({"value": rows("a", "b", "c"), **cookie}, {"value": rows("d")})
    rest = runtime.run_action(
        "run_fetch_xml_query",
        {
            "fetch_xml": FETCH,
            "page_token": first["next_page_token"],
            "fetch_all": True,
            "max_records": 9,
            "page_size": 3,
        },
        conn,
    )
    assert [r["fullname"] for r in rest["records"]] == ["c", "d"]
    assert sent_fetch(fake.data[1]).get("page") == "1" and sent_fetch(fake.data[2]).get("paging-cookie") == DOC_INNER
    with pytest.raises(InputError, match="another FetchXML query"):
        runtime.run_action(
            "run_fetch_xml_query",
            {"fetch_xml": FETCH.replace("lastname", "fullname"), "page_token": first["next_page_token"]},
            conn,
        )


def test_run_fetch_xml_query_annotations_impersonation_and_aggregate(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    fake.respond = pages({"value": [{"n": 3}], "@Microsoft.Dynamics.CRM.morerecords": False})
    aggregate = (
        "<fetch aggregate='true'><entity name='contact'>"
        "<attribute name='contactid' alias='n' aggregate='count'/></entity></fetch>"
    )
    user = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
    out = runtime.run_action(
        "run_fetch_xml_query", {"fetch_xml": aggregate, "include_annotations": True, "impersonate": user}, conn
    )
    assert out["records"] == [{"n": 3}]
    (request,) = fake.data
    assert request.headers["Prefer"] == 'odata.include-annotations="*"'
    assert request.headers["CallerObjectId"] == user
    sent = sent_fetch(request)
    assert sent.get("page") is None and sent.get("count") is None  # aggregates are not paged


def test_run_fetch_xml_query_longer_than_the_url_limit_goes_inside_batch(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/data/v9.2/$batch"
        body = json.dumps({"value": rows("x")}).encode()
        content_type, content = encode_batch_response([OperationResponse(200, "OK", (), body)])
        return httpx.Response(200, content=content, headers={"Content-Type": content_type})

    fake.respond = respond
    names = "".join(f"<condition attribute='fullname' operator='eq' value='{'n' * 40}{i}'/>" for i in range(300))
    long = (
        f"<fetch><entity name='contact'><attribute name='fullname'/><filter type='or'>{names}</filter></entity></fetch>"
    )
    out = runtime.run_action("run_fetch_xml_query", {"fetch_xml": long}, conn)
    assert out["records"] == rows("x")
    (request,) = fake.data
    (inner,) = decode_batch(request.headers["Content-Type"], request.content)
    assert isinstance(inner, BatchOperation) and inner.method == "GET"
    assert inner.url.startswith("/api/data/v9.2/contacts?fetchXml=%3Cfetch") and 32768 < len(inner.url) < 65536
    assert (
        "Prefer",
        'odata.include-annotations="Microsoft.Dynamics.CRM.fetchxmlpagingcookie,Microsoft.Dynamics.CRM.morerecords"',
    ) in inner.headers


@pytest.mark.parametrize(
    ("fetch_xml", "expected"),
    [
        pytest.param("<fetch><entity name='contact'>", "not well-formed XML", id="malformed"),
        pytest.param(
            '<!DOCTYPE fetch [<!ENTITY x "boom">]><fetch><entity name="contact"><attribute name="fullname"/>'
            "</entity></fetch>",
            "DOCTYPE declarations and entities are not allowed",
            id="doctype-entity",
        ),
        pytest.param("<query><entity name='contact'/></query>", "the root element must be <fetch>", id="root"),
        pytest.param("<fetch><entity/></fetch>", "<entity> needs a name attribute", id="no-name"),
        pytest.param("<fetch top='5' count='2'><entity name='contact'/></fetch>", "cannot be combined", id="top+count"),
        pytest.param(
            "<fetch count='x'><entity name='contact'/></fetch>", "must be a positive whole number", id="count"
        ),
        pytest.param(
            "<fetch><entity name='contact'><script/></entity></fetch>", "unknown element <script>", id="element"
        ),
        pytest.param(
            "<fetch aggregate='true'><entity name='contact'><attribute name='fullname'/></entity></fetch>",
            "needs an alias",
            id="aggregate-alias",
        ),
        pytest.param("<fetch><entity name='nosuch'/></fetch>", "nosuch", id="unknown-table"),
        pytest.param(
            "<fetch><entity name='contact'><attribute name='fulname'/></entity></fetch>", "unknown column", id="column"
        ),
    ],
)
def test_run_fetch_xml_query_refuses_bad_fetch_before_any_request(
    fake: FakeDataverse, conn: Connection, runtime: Runtime, fetch_xml: str, expected: str
) -> None:
    with pytest.raises(InputError, match=expected) as info:
        runtime.run_action("run_fetch_xml_query", {"fetch_xml": fetch_xml}, conn)
    assert info.value.exit_code == 2
    assert fake.data == []


def test_run_fetch_xml_query_page_number_uses_simple_paging(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    fake.respond = pages({"value": rows("k", "l"), "@Microsoft.Dynamics.CRM.morerecords": True})
    out = runtime.run_action("run_fetch_xml_query", {"fetch_xml": FETCH, "page": 4, "page_size": 2}, conn)
    sent = sent_fetch(fake.data[0])
    assert (sent.get("page"), sent.get("count"), sent.get("paging-cookie")) == ("4", "2", None)
    assert out["page"] == 4 and out["more_records"] is True  # no cookie came back: the token reads page 5 simply
    fake.respond = pages({"value": rows("m")})
    runtime.run_action("run_fetch_xml_query", {"fetch_xml": FETCH, "page_token": out["next_page_token"]}, conn)
    assert (sent_fetch(fake.data[1]).get("page"), sent_fetch(fake.data[1]).get("count")) == ("5", "2")
