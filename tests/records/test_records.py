"""Unit tests of the record actions over MockTransport: the exact URLs, headers and bodies sent to Dataverse."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import ConcurrencyError, FatalApiError, InputError, NotFoundError
from connector.odata import PageToken, escape_like, format_literal, key_predicate, quote_string
from connector.runtime import Runtime
from tests.conftest import assert_no_secrets

API = "https://contoso.crm.dynamics.com/api/data/v9.2"
A1 = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
A2 = "00000000-0000-0000-0000-0000000000a2"
TEAM = "00000000-0000-0000-0000-00000000007e"


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


def created(request: httpx.Request, status: int = 201, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"@odata.etag": 'W/"7"', "accountid": A1, **extra})


# -- pure OData text -------------------------------------------------------------------------------------------------
def test_literals_keys_and_wildcard_escaping() -> None:
    assert quote_string("O'Brien") == "'O''Brien'"
    assert escape_like("50%_[x]") == "50[%][_][[]x]"
    assert format_literal(5, "Integer") == "5"
    assert format_literal(True, "Boolean") == "true"
    assert format_literal(A1.upper(), "Lookup") == A1
    assert format_literal("2026-01-31", "DateTime") == "2026-01-31"
    with pytest.raises(ValueError):
        format_literal("five", "Integer")
    types = {"name": "String", "n": "Integer", "primarycontactid": "Lookup"}
    assert key_predicate({"name": "O'Brien #1", "n": 2}, types) == "name='O''Brien%20%231',n=2"
    assert key_predicate({"primarycontactid": A1}, types) == f"_primarycontactid_value={A1}"


def test_page_tokens_are_bound_to_the_host() -> None:
    token = PageToken("contoso.crm.dynamics.com", "accounts?$select=name", 100, 3).encode()
    back = PageToken.decode(token, host="contoso.crm.dynamics.com")
    assert (back.path, back.page_size, back.offset, back.entity_set) == ("accounts?$select=name", 100, 3, "accounts")
    with pytest.raises(InputError, match=r"\$\.page_token: this token was issued for another environment"):
        PageToken.decode(token, host="fabrikam.crm.dynamics.com")
    evil = PageToken("contoso.crm.dynamics.com", "https://evil.example.com/steal", 100).encode()
    with pytest.raises(InputError, match="outside this environment"):
        PageToken.decode(evil, host="contoso.crm.dynamics.com")
    with pytest.raises(InputError, match="not a page token"):
        PageToken.decode("bm90IGpzb24", host="contoso.crm.dynamics.com")


# -- get -------------------------------------------------------------------------------------------------------------
def test_get_entity_by_composite_key_selects_lookups_as_values(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.respond = lambda r: httpx.Response(200, json={"@odata.etag": 'W/"7"', "accountid": A1, "name": "O'Brien"})
    out = runtime.run_action(
        "get_entity",
        {
            "table": "accounts",
            "key": {"name": "O'Brien", "address1_postalcode": "98052"},
            "select": ["name", "primarycontactid"],
            "include_annotations": True,
        },
        conn,
    )
    [request] = fake.data
    assert str(request.url) == (
        f"{API}/accounts(name='O''Brien',address1_postalcode='98052')?$select=name,_primarycontactid_value"
    )
    assert request.headers["Prefer"] == 'odata.include-annotations="*"'
    assert out == {
        "table": "account",
        "id": A1,
        "etag": 'W/"7"',
        "record": {"@odata.etag": 'W/"7"', "accountid": A1, "name": "O'Brien"},
    }


def test_get_entity_not_found_names_table_and_key(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.respond = lambda r: httpx.Response(
        404,
        json={
            "error": {
                "code": "0x80060891",
                "message": "A record with the specified key values does not exist in account entity",
            }
        },
    )
    with pytest.raises(NotFoundError, match="table 'account' with key accountnumber='A-9' does not exist") as caught:
        runtime.run_action("get_entity", {"table": "account", "key": {"accountnumber": "A-9"}}, conn)
    assert caught.value.code == "0x80060891"
    assert_no_secrets(caught.value)


# -- create ----------------------------------------------------------------------------------------------------------
def test_create_entity_binds_polymorphic_lookup_by_key_and_maps_labels(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.respond = lambda r: httpx.Response(201, json={"opportunityid": A2, "name": "Deal"})
    out = runtime.run_action(
        "create_entity",
        {
            "table": "opportunity",
            "fields": {
                "name": "Deal",
                "customerid": {"table": "account", "key": {"accountnumber": "A-1"}},
                "opportunityratingcode": "warm",
            },
            "detect_duplicates": True,
        },
        conn,
    )
    [request] = fake.data
    assert (request.method, str(request.url)) == ("POST", f"{API}/opportunities")
    assert body(request) == {
        "name": "Deal",
        "customerid_account@odata.bind": "/accounts(accountnumber='A-1')",
        "opportunityratingcode": 2,
    }
    assert request.headers["Prefer"] == "return=representation"
    assert request.headers["MSCRM.SuppressDuplicateDetection"] == "false"
    assert out == {"table": "opportunity", "id": A2, "record": {"opportunityid": A2, "name": "Deal"}}


def test_create_entity_owner_team_and_client_id_without_representation(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.respond = lambda r: httpx.Response(204, headers={"OData-EntityId": f"{API}/accounts({A1})"})
    out = runtime.run_action(
        "create_entity",
        {
            "table": "account",
            "id": A1,
            "fields": {"name": "T", "ownerid": {"table": "team", "id": TEAM}},
            "return_record": False,
        },
        conn,
    )
    [request] = fake.data
    assert body(request) == {"name": "T", "ownerid@odata.bind": f"/teams({TEAM})", "accountid": A1}
    assert "Prefer" not in request.headers
    assert out == {"table": "account", "id": A1}


def test_metadata_is_cached_per_connection_and_invalidation_reads_strongly(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.respond = created
    for _ in range(2):
        runtime.run_action("create_entity", {"table": "account", "fields": {"name": "x"}}, conn)
    assert len(fake.metadata_reads) == 1
    assert "Consistency" not in fake.metadata_reads[0].headers
    conn.metadata.invalidate("accounts")
    runtime.run_action("create_entity", {"table": "account", "fields": {"name": "x"}}, conn)
    assert len(fake.metadata_reads) == 2
    assert fake.metadata_reads[1].headers["Consistency"] == "Strong"
    runtime.run_action("create_entity", {"table": "account", "fields": {"name": "x"}}, conn)
    assert len(fake.metadata_reads) == 2
    assert len(fake.limit_reads) == 2  # the text columns' MaxLength: once, and again after the invalidation


def test_metadata_cache_expires_after_its_ttl(runtime: Runtime, fake: Any) -> None:
    clock = FakeClock()
    conn = fake.connect(clock)
    fake.respond = created
    runtime.run_action("create_entity", {"table": "account", "fields": {"name": "x"}}, conn)
    clock.advance(3601)
    runtime.run_action("create_entity", {"table": "account", "fields": {"name": "x"}}, conn)
    assert len(fake.metadata_reads) == 2


# -- update ----------------------------------------------------------------------------------------------------------
def test_update_entity_if_match_star_and_clears_lookup(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.respond = lambda r: httpx.Response(204, headers={"OData-EntityId": f"{API}/accounts({A1})"})
    out = runtime.run_action(
        "update_entity", {"table": "account", "id": A1, "fields": {"name": "n", "parentaccountid": None}}, conn
    )
    [request] = fake.data
    assert (request.method, str(request.url)) == ("PATCH", f"{API}/accounts({A1})")
    assert request.headers["If-Match"] == "*"
    assert body(request) == {"name": "n", "parentaccountid@odata.bind": None}
    assert out == {"table": "account", "id": A1}


def test_update_entity_etag_mismatch_is_a_concurrency_error(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.respond = lambda r: httpx.Response(
        412,
        json={
            "error": {
                "code": "0x80060882",
                "message": "The version of the existing record doesn't match the RowVersion property provided.",
            }
        },
    )
    with pytest.raises(ConcurrencyError, match="read it again"):
        runtime.run_action(
            "update_entity", {"table": "account", "id": A1, "fields": {"name": "n"}, "etag": 'W/"5"'}, conn
        )
    assert fake.data[0].headers["If-Match"] == 'W/"5"'


# -- upsert ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "header", "status", "operation"),
    [
        ("upsert", None, 201, "created"),
        ("create_only", "If-None-Match", 201, "created"),
        ("update_only", "If-Match", 200, "updated"),
    ],
)
def test_upsert_entity_by_key_modes(
    runtime: Runtime, fake: Any, conn: Connection, mode: str, header: str | None, status: int, operation: str
) -> None:
    fake.respond = lambda r: created(r, status)
    out = runtime.run_action(
        "upsert_entity",
        {
            "table": "account",
            "key": {"name": "O'Brien", "address1_postalcode": "98052"},
            "fields": {"name": "O'Brien", "numberofemployees": 5, "industrycode": "Accounting"},
            "mode": mode,
        },
        conn,
    )
    [request] = fake.data
    assert str(request.url) == f"{API}/accounts(name='O''Brien',address1_postalcode='98052')?$select=accountid"
    assert body(request) == {"numberofemployees": 5, "industrycode": 1}
    assert request.headers["Prefer"] == "return=representation"
    assert {h for h in ("If-Match", "If-None-Match") if h in request.headers} == ({header} if header else set())
    if header:
        assert request.headers[header] == "*"
    assert out == {"table": "account", "id": A1, "operation": operation}


def test_upsert_entity_unsafe_key_goes_through_filter_then_post_with_client_id(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    answers = iter(
        [
            httpx.Response(200, json={"value": []}),
            httpx.Response(
                412,
                json={"error": {"code": "0x80040237", "message": "A record with matching key values already exists."}},
            ),
            httpx.Response(200, json={"value": [{"accountid": A2}]}),
            httpx.Response(200, json={"accountid": A2}),
        ]
    )
    fake.respond = lambda r: next(answers)
    out = runtime.run_action(
        "upsert_entity", {"table": "account", "key": {"accountnumber": "A/1 & 2"}, "fields": {"name": "n"}}, conn
    )
    lookup, post, lookup2, patch = fake.data
    assert str(lookup.url) == (
        f"{API}/accounts?$select=accountid&$filter=accountnumber%20eq%20'A%2F1%20%26%202'&$top=1"
    )
    assert post.method == "POST" and str(post.url) == f"{API}/accounts?$select=accountid"
    sent = body(post)
    assert sent["name"] == "n" and sent["accountnumber"] == "A/1 & 2" and len(sent["accountid"]) == 36
    assert lookup2.url == lookup.url
    assert (patch.method, str(patch.url), patch.headers["If-Match"]) == (
        "PATCH",
        f"{API}/accounts({A2})?$select=accountid",
        "*",
    )
    assert body(patch) == {"name": "n"}
    assert out == {"table": "account", "id": A2, "operation": "updated"}


# -- delete ----------------------------------------------------------------------------------------------------------
def test_delete_entity_by_key_and_ignore_missing(runtime: Runtime, fake: Any, conn: Connection) -> None:
    out = runtime.run_action("delete_entity", {"table": "account", "id": A1}, conn)
    assert (fake.data[0].method, str(fake.data[0].url)) == ("DELETE", f"{API}/accounts({A1})")
    assert out == {"table": "account", "id": A1, "deleted": True}
    fake.respond = lambda r: httpx.Response(
        404, json={"error": {"code": "0x80040217", "message": "account With Id = x Does Not Exist"}}
    )
    out = runtime.run_action(
        "delete_entity", {"table": "account", "key": {"accountnumber": "A-1"}, "ignore_missing": True}, conn
    )
    assert str(fake.data[1].url) == f"{API}/accounts(accountnumber='A-1')"
    assert out["deleted"] is False


def test_delete_entity_stale_etag_is_a_concurrency_error(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.respond = lambda r: httpx.Response(
        412, json={"error": {"code": "0x80060882", "message": "The version of the existing record doesn't match"}}
    )
    with pytest.raises(ConcurrencyError, match="changed by someone else") as caught:
        runtime.run_action("delete_entity", {"table": "account", "id": A1, "etag": 'W/"7"'}, conn)
    assert caught.value.exit_code == 4
    assert fake.data[0].headers["If-Match"] == 'W/"7"'


# -- query -----------------------------------------------------------------------------------------------------------
def test_query_entities_top_is_sent_without_maxpagesize(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.respond = lambda r: httpx.Response(200, json={"value": [{"accountid": A1}]})
    out = runtime.run_action("query_entities", {"table": "account", "select": ["name"], "top": 3}, conn)
    [request] = fake.data
    assert str(request.url) == f"{API}/accounts?$select=name&$top=3"
    assert "Prefer" not in request.headers
    assert out == {
        "records": [{"accountid": A1}],
        "returned": 1,
        "count": None,
        "next_page_token": None,
        "more_records": False,
    }


def test_query_entities_max_records_is_required_only_when_fetch_all_is_true(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.respond = lambda r: httpx.Response(200, json={"value": []})
    runtime.run_action("query_entities", {"table": "account", "fetch_all": False}, conn)
    with pytest.raises(InputError) as caught:
        runtime.run_action("query_entities", {"table": "account", "fetch_all": True}, conn)
    [problem] = caught.value.problems
    assert problem.message == "required property 'max_records' is missing: 'fetch_all' needs it"
    assert len(fake.data) == 1


def test_query_entities_where_is_typed_quoted_and_escaped(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.respond = lambda r: httpx.Response(200, json={"value": []})
    where = [
        {"column": "name", "operator": "contains", "value": "O'Brien/50%_[x]"},
        {"column": "numberofemployees", "operator": "ge", "value": 10},
        {"column": "industrycode", "operator": "in", "value": ["Accounting", 2]},
        {"column": "primarycontactid", "operator": "not_null"},
    ]
    runtime.run_action(
        "query_entities",
        {
            "table": "account",
            "where": where,
            "filter": "statecode eq 0",
            "order_by": ["name desc"],
            "include_count": True,
        },
        conn,
    )
    [request] = fake.data
    expected_filter = (
        "(statecode eq 0) and contains(name,'O''Brien/50[%][_][[]x]') and numberofemployees ge 10 and "
        "(industrycode eq 1 or industrycode eq 2) and _primarycontactid_value ne null"
    )
    assert request.url.params["$filter"] == expected_filter
    assert request.url.params["$orderby"] == "name desc" and request.url.params["$count"] == "true"
    assert "%2F" in str(request.url) and "%25" in str(request.url) and "%5B" in str(request.url)
    assert request.headers["Prefer"] == (
        'odata.maxpagesize=100, odata.include-annotations="Microsoft.Dynamics.CRM.totalrecordcount,'
        'Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"'
    )


def test_query_entities_fetch_all_follows_next_links_and_resumes_mid_page(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("$skiptoken", "0"))
        rows = [{"accountid": f"{page}-{i}"} for i in range(3)]
        nxt = {"@odata.nextLink": f"{API}/accounts?$select=name&$skiptoken={page + 1}"} if page < 2 else {}
        return httpx.Response(200, json={"value": rows, **nxt})

    fake.respond = respond
    first = runtime.run_action(
        "query_entities",
        {"table": "account", "select": ["name"], "page_size": 3, "fetch_all": True, "max_records": 4},
        conn,
    )
    assert [r["accountid"] for r in first["records"]] == ["0-0", "0-1", "0-2", "1-0"]
    assert first["more_records"] is True
    assert [str(r.url) for r in fake.data] == [
        f"{API}/accounts?$select=name",
        f"{API}/accounts?$select=name&$skiptoken=1",
    ]
    assert all(r.headers["Prefer"] == "odata.maxpagesize=3" for r in fake.data)
    rest = runtime.run_action(
        "query_entities",
        {"table": "account", "page_token": first["next_page_token"], "fetch_all": True, "max_records": 100},
        conn,
    )
    assert [r["accountid"] for r in rest["records"]] == ["1-1", "1-2", "2-0", "2-1", "2-2"]
    assert (rest["more_records"], rest["next_page_token"]) == (False, None)
    assert str(fake.data[2].url) == f"{API}/accounts?$select=name&$skiptoken=1"


def test_query_entities_refuses_a_next_link_to_another_host(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.respond = lambda r: httpx.Response(
        200, json={"value": [{"accountid": A1}], "@odata.nextLink": "https://evil.example.com/api/data/v9.2/accounts"}
    )
    with pytest.raises(FatalApiError, match="outside"):
        runtime.run_action("query_entities", {"table": "account", "fetch_all": True, "max_records": 10}, conn)
    assert len(fake.data) == 1


# -- associate / disassociate ----------------------------------------------------------------------------------------
def test_associate_entities_single_and_collection(runtime: Runtime, fake: Any, conn: Connection) -> None:
    runtime.run_action(
        "associate_entities",
        {"table": "account", "id": A1, "navigation": "parentaccountid", "related": {"table": "account", "id": A2}},
        conn,
    )
    runtime.run_action(
        "associate_entities",
        {
            "table": "account",
            "id": A1,
            "navigation": "contact_customer_accounts",
            "related": {"table": "contact", "id": A2},
        },
        conn,
    )
    put, post = fake.data
    assert (put.method, str(put.url)) == ("PUT", f"{API}/accounts({A1})/parentaccountid/$ref")
    assert body(put) == {"@odata.id": f"{API}/accounts({A2})"}
    assert (post.method, str(post.url)) == ("POST", f"{API}/accounts({A1})/contact_customer_accounts/$ref")
    assert body(post) == {"@odata.id": f"{API}/contacts({A2})"}


def test_disassociate_entities_single_and_collection(runtime: Runtime, fake: Any, conn: Connection) -> None:
    runtime.run_action("disassociate_entities", {"table": "account", "id": A1, "navigation": "parentaccountid"}, conn)
    runtime.run_action(
        "disassociate_entities",
        {
            "table": "account",
            "id": A1,
            "navigation": "contact_customer_accounts",
            "related": {"table": "contact", "id": A2},
        },
        conn,
    )
    assert [(r.method, str(r.url)) for r in fake.data] == [
        ("DELETE", f"{API}/accounts({A1})/parentaccountid/$ref"),
        ("DELETE", f"{API}/accounts({A1})/contact_customer_accounts({A2})/$ref"),
    ]


# -- phase-two validation --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("action", "inputs", "path", "text"),
    [
        ("create_entity", {"table": "account", "fields": {"nmae": "x"}}, "$.fields.nmae", "did you mean name"),
        (
            "create_entity",
            {"table": "account", "fields": {"createdon": "2026-01-01"}},
            "$.fields.createdon",
            "cannot be set",
        ),
        (
            "create_entity",
            {"table": "account", "fields": {"numberofemployees": "many"}},
            "$.fields.numberofemployees",
            "number",
        ),
        (
            "create_entity",
            {"table": "account", "fields": {"industrycode": "Mining"}},
            "$.fields.industrycode",
            "valid labels: Accounting, Agriculture",
        ),
        (
            "create_entity",
            {"table": "opportunity", "fields": {"customerid": {"table": "team", "id": A1}}},
            "$.fields.customerid.table",
            "account or contact",
        ),
        (
            "create_entity",
            {"table": "account", "fields": {"ownerid": {"table": "contact", "id": A1}}},
            "$.fields.ownerid.table",
            "systemuser or team",
        ),
        ("get_entity", {"table": "account", "key": {"name": "x"}}, "$.key", "exactly these columns"),
        (
            "get_entity",
            {"table": "account", "key": {"numberofemployees": 1}},
            "$.key.numberofemployees",
            "not part of any alternate key",
        ),
        (
            "upsert_entity",
            {"table": "account", "key": {"accountnumber": "A"}, "fields": {"accountnumber": "B"}},
            "$.fields.accountnumber",
            "cannot change the key",
        ),
        (
            "query_entities",
            {"table": "account", "where": [{"column": "numberofemployees", "operator": "contains", "value": "1"}]},
            "$.where[0].value",
            "text columns",
        ),
        ("query_entities", {"table": "account", "order_by": ["nam"]}, "$.order_by[0]", "unknown column"),
        (
            "query_entities",
            {"table": "contact", "page_token": PageToken("contoso.crm.dynamics.com", "accounts", 5).encode()},
            "$.page_token",
            "reads 'accounts'",
        ),
        (
            "associate_entities",
            {"table": "account", "id": A1, "navigation": "parentacountid", "related": {"table": "account", "id": A2}},
            "$.navigation",
            "did you mean parentaccountid",
        ),
        (
            "associate_entities",
            {
                "table": "account",
                "id": A1,
                "navigation": "contact_customer_accounts",
                "related": {"table": "account", "id": A2},
            },
            "$.related.table",
            "not 'account'",
        ),
        (
            "disassociate_entities",
            {"table": "account", "id": A1, "navigation": "contact_customer_accounts"},
            "$.related",
            "needs the related row",
        ),
        ("get_entity", {"table": "nosuch", "id": A1}, "$.table", "no table"),
        (
            "update_entity",
            {"table": "account", "id": A1, "fields": {"industrycode": 1.5}},
            "$.fields.industrycode",
            "choice",
        ),
        (
            "delete_entity",
            {"table": "account", "key": {"name": "x", "accountnumber": "y"}},
            "$.key",
            "exactly these columns",
        ),
    ],
)
def test_record_actions_phase_two_problems_name_the_field(
    runtime: Runtime, fake: Any, conn: Connection, action: str, inputs: dict[str, Any], path: str, text: str
) -> None:
    with pytest.raises(InputError) as caught:
        runtime.run_action(action, inputs, conn)
    assert [p.path for p in caught.value.problems] == [path]
    assert text in caught.value.problems[0].message
    assert fake.data == []


def test_create_entity_with_client_id_survives_a_lost_answer(runtime: Runtime, fake: Any, conn: Connection) -> None:
    sends: list[str] = []

    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            sends.append(body(request)["accountid"])
            if len(sends) == 1:
                raise httpx.RemoteProtocolError("server disconnected without sending a response", request=request)
            return httpx.Response(
                412,
                json={"error": {"code": "0x80040237", "message": "A record with matching key values already exists."}},
            )
        return httpx.Response(200, json={"accountid": sends[0], "name": "Lost"})

    fake.respond = respond
    out = runtime.run_action(
        "create_entity",
        {"table": "account", "fields": {"name": "Lost"}, "client_id": True, "return_record": False},
        conn,
    )
    assert len(sends) == 2 and sends[0] == sends[1]
    assert out == {"table": "account", "id": sends[0]}
    assert [r.method for r in fake.data] == ["POST", "POST", "GET"]
    assert str(fake.data[-1].url) == f"{API}/accounts({sends[0]})"


def test_a_key_value_is_written_as_a_literal_once_per_phase(
    runtime: Runtime, fake: Any, conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Phase two checks each key value by writing its literal, and hands the literal on; sending writes it once more
    (the request is built from the inputs, not from phase two), never again on the way (it used to be up to four)."""
    from connector import addressing

    written: list[Any] = []
    original = addressing.format_literal

    def counting(value: Any, typ: str) -> str:
        written.append(value)
        return original(value, typ)

    monkeypatch.setattr(addressing, "format_literal", counting)
    fake.respond = lambda r: httpx.Response(201, json={"accountid": A1})
    runtime.run_action(
        "upsert_entity",
        {
            "table": "account",
            "key": {"accountnumber": "A-1"},
            "fields": {"name": "Contoso", "parentaccountid": {"table": "account", "key": {"accountnumber": "P-9"}}},
        },
        conn,
    )
    [request] = fake.data
    assert "accounts(accountnumber='A-1')" in str(request.url)
    assert body(request)["parentaccountid@odata.bind"] == "/accounts(accountnumber='P-9')"
    assert sorted(written) == ["A-1", "A-1", "P-9", "P-9"]


def test_a_fetch_all_aborted_mid_request_keeps_the_rows_read_and_resumes_at_the_lost_page(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    """A second Ctrl-C lands while page 2 is in flight (the signal handler raises KeyboardInterrupt there): the rows
    of page 1 are returned with a token that reads page 2 again, instead of everything being lost."""
    from connector.progress import CancellationToken

    token = CancellationToken()

    def respond(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("$skiptoken", "0"))
        if page == 1:
            token.abort("SIGINT")  # what the second signal does, before its handler raises
            raise KeyboardInterrupt
        rows = [{"accountid": f"{page}-{i}"} for i in range(3)]
        return httpx.Response(200, json={"value": rows, "@odata.nextLink": f"{API}/accounts?$skiptoken={page + 1}"})

    fake.respond = respond
    inputs = {"table": "account", "page_size": 3, "fetch_all": True, "max_records": 100}
    out = runtime.run_action("query_entities", inputs, conn, cancel=token)
    assert [r["accountid"] for r in out["records"]] == ["0-0", "0-1", "0-2"]
    assert out["more_records"] is True
    fake.respond = lambda r: httpx.Response(200, json={"value": [{"accountid": "1-0"}]})
    rest = runtime.run_action("query_entities", {**inputs, "page_token": out["next_page_token"]}, conn)
    assert [r["accountid"] for r in rest["records"]] == ["1-0"]
    assert str(fake.data[-1].url) == f"{API}/accounts?$skiptoken=1"
    fake.respond = respond
    with pytest.raises(KeyboardInterrupt):  # without an aborted token a KeyboardInterrupt is not ours to swallow
        runtime.run_action("query_entities", inputs, conn)
