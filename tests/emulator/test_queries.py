"""Collection queries: $select/$filter/$orderby/$top/$count/$expand, paging with nextLink, annotations, limits."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataverse_emulator.testing import EmulatorHandle

from .conftest import created_id, error_of


def names(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [v["name"] for v in r.json()["value"]]


@pytest.fixture
def sample(emulator: EmulatorHandle) -> list[str]:
    return emulator.admin.seed(
        "account",
        [
            {"name": "Contoso", "revenue": 100.0, "numberofemployees": 5, "industrycode": 1, "accountnumber": "A1"},
            {"name": "contoso ltd", "revenue": 200.0, "numberofemployees": 50, "industrycode": 2},
            {"name": "Fabrikam", "revenue": 300.0, "numberofemployees": 500, "industrycode": 3},
            {"name": "50% off", "revenue": None, "numberofemployees": 1},
            {"name": "f_s [x]", "numberofemployees": 2},
        ],
    )


def test_filters(api: httpx.Client, sample: list[str]) -> None:
    def q(flt: str) -> list[str]:
        return sorted(names(api.get(f"accounts?$select=name&$filter={quote(flt)}")))

    assert q("name eq 'CONTOSO'") == ["Contoso"]
    assert q("contains(name,'contoso')") == ["Contoso", "contoso ltd"]
    assert q("startswith(name,'50[%]')") == ["50% off"]
    assert q("contains(name,'f[_]s')") == ["f_s [x]"]
    assert q("startswith(name,'f_s')") == ["f_s [x]"]
    assert q("endswith(name,'ltd')") == ["contoso ltd"]
    assert q("revenue gt 150 and revenue le 300") == ["Fabrikam", "contoso ltd"]
    assert q("revenue eq null") == ["50% off", "f_s [x]"]
    assert q("not contains(name,'o')") == ["Fabrikam", "f_s [x]"]
    assert q('Microsoft.Dynamics.CRM.In(PropertyName=\'industrycode\',PropertyValues=["1","3"])') == [
        "Contoso",
        "Fabrikam",
    ]
    assert q('Microsoft.Dynamics.CRM.Between(PropertyName=\'numberofemployees\',PropertyValues=["2","50"])') == [
        "Contoso",
        "contoso ltd",
        "f_s [x]",
    ]
    assert q("Microsoft.Dynamics.CRM.Today(PropertyName='createdon')") == sorted(
        ["Contoso", "contoso ltd", "Fabrikam", "50% off", "f_s [x]"]
    )
    assert q(f"accountid eq {sample[2]}") == ["Fabrikam"]
    assert sorted(names(api.get("accounts?$select=name&$filter=name eq @p1&@p1='fabrikam'"))) == ["Fabrikam"]
    assert error_of(api.get("accounts?$filter=Name eq 'x'"))[:2] == (400, "0x0")


def test_lookup_paths_and_lambdas(api: httpx.Client) -> None:
    aid = created_id(api.post("accounts", json={"name": "Parent"}))
    created_id(api.post("accounts", json={"name": "Lonely"}))
    created_id(
        api.post(
            "contacts",
            json={"firstname": "Kid", "lastname": "One", "parentcustomerid_account@odata.bind": f"/accounts({aid})"},
        )
    )
    assert names(api.get("accounts?$select=name&$filter=contact_customer_accounts/any(c:c/firstname eq 'kid')")) == [
        "Parent"
    ]
    assert names(api.get("accounts?$select=name&$filter=contact_customer_accounts/any()")) == ["Parent"]
    assert sorted(
        names(api.get("accounts?$select=name&$filter=contact_customer_accounts/all(c:c/firstname eq 'x')"))
    ) == ["Lonely"]
    r = api.get("contacts?$select=fullname&$filter=parentcustomerid_account/name eq 'Parent'")
    assert [v["fullname"] for v in r.json()["value"]] == ["Kid One"]
    r = api.get(f"contacts?$select=fullname&$filter=_parentcustomerid_value eq {aid}")
    assert len(r.json()["value"]) == 1
    r = api.get("accounts?$select=name&$filter=name eq 'Parent'&$expand=contact_customer_accounts($select=fullname)")
    assert r.json()["value"][0]["contact_customer_accounts"][0]["fullname"] == "Kid One"
    assert error_of(api.get("accounts?$expand=contact_customer_accounts/$ref")) == (
        400,
        "0x80060888",
        "Expand with $ref is only supported on lookup type navigation property.",
    )


def test_orderby_top_and_count(api: httpx.Client, sample: list[str], emulator: EmulatorHandle) -> None:
    r = api.get("accounts?$select=name&$orderby=numberofemployees desc&$top=2&$count=true")
    assert names(r) == ["Fabrikam", "contoso ltd"]
    assert r.json()["@odata.count"] == 5
    assert r.json()["@odata.context"] == f"{emulator.api_url}/$metadata#accounts(name)"
    # $top is ignored when odata.maxpagesize is sent (page-results.md)
    r = api.get("accounts?$select=name&$top=1", headers={"Prefer": "odata.maxpagesize=3"})
    assert len(r.json()["value"]) == 3 and "@odata.nextLink" in r.json()
    assert r.headers["Preference-Applied"] == "odata.maxpagesize=3"
    assert api.get("accounts/$count").text == "5"


def test_paging_follows_absolute_next_links(api: httpx.Client, emulator: EmulatorHandle) -> None:
    emulator.admin.seed("contact", [{"lastname": f"c{i:03d}"} for i in range(23)])
    for query in ("contacts?$select=lastname", "contacts?$select=lastname&$orderby=lastname desc"):
        seen: list[str] = []
        url: str | None = query
        pages = 0
        while url:
            r = api.get(url, headers={"Prefer": "odata.maxpagesize=10"})
            body = r.json()
            seen += [v["lastname"] for v in body["value"]]
            url = body.get("@odata.nextLink")
            if url:
                assert url.startswith(emulator.api_url + "/contacts?") and "$skiptoken=" in url
            pages += 1
        assert pages == 3
        assert sorted(seen) == [f"c{i:03d}" for i in range(23)]


def test_count_is_capped_at_5000(api: httpx.Client, emulator: EmulatorHandle) -> None:
    emulator.admin.seed("lead", [{"lastname": str(i)} for i in range(5001)])
    r = api.get(
        "leads?$select=lastname&$count=true",
        headers={
            "Prefer": 'odata.maxpagesize=1,odata.include-annotations="Microsoft.Dynamics.CRM.totalrecordcount,'
            'Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"'
        },
    )
    body = r.json()
    assert body["@odata.count"] == 5000
    assert body["@Microsoft.Dynamics.CRM.totalrecordcount"] == 5000
    assert body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is True


def test_formatted_values(api: httpx.Client, sample: list[str]) -> None:
    r = api.get(
        f"accounts({sample[0]})?$select=industrycode,revenue",
        headers={"Prefer": 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'},
    )
    body = r.json()
    assert body["industrycode@OData.Community.Display.V1.FormattedValue"] == "Accounting"
    assert body["revenue@OData.Community.Display.V1.FormattedValue"] == "$100.00"
    assert r.headers["Preference-Applied"] == 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'
    assert (
        "industrycode@OData.Community.Display.V1.FormattedValue"
        not in api.get(f"accounts({sample[0]})?$select=industrycode").json()
    )


def test_rejected_options_and_url_length(api: httpx.Client) -> None:
    assert error_of(api.get("accounts?$skip=1"))[0] == 400
    assert error_of(api.get("accounts?$search=x"))[0] == 400
    long_ok = "accounts?$select=name&$filter=" + quote(" or ".join(["name eq 'x'"] * 1100))
    assert len(api.base_url.raw_path) + len(long_ok) <= 32768
    assert api.get(long_ok).status_code == 200
    too_long = "accounts?$select=name&$filter=" + quote(" or ".join(["name eq 'x'"] * 1300))
    assert api.get(too_long).status_code == 414


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="ab%_'", min_size=0, max_size=6))
def test_eq_round_trips_any_string(api: httpx.Client, value: str) -> None:
    """Whatever the value (quotes, wildcards), an eq filter with doubled quotes finds exactly that row."""
    created_id(api.post("accounts", json={"name": "zz" + value}))
    literal = ("zz" + value).replace("'", "''")
    found = names(api.get("accounts?$select=name&$filter=" + quote(f"name eq '{literal}'")))
    assert found and all(n.lower() == ("zz" + value).lower() for n in found)


# -- property test: $filter results equal a three-valued-logic oracle over the same rows ------------------------------

ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["Alpha", "beta", "Gamma", "delta", "ALPHA"]),
            "numberofemployees": st.one_of(st.none(), st.integers(0, 9)),
            "creditonhold": st.one_of(st.none(), st.booleans()),
        }
    ),
    min_size=1,
    max_size=8,
)


@st.composite
def conditions(draw: st.DrawFn, depth: int = 0) -> tuple[str, object]:
    kind = draw(st.sampled_from(["cmp", "str", "null", "bool"] + (["and", "or", "not"] if depth < 2 else [])))
    if kind == "cmp":
        op = draw(st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le"]))
        n = draw(st.integers(0, 9))
        return f"numberofemployees {op} {n}", ("cmp", op, n)
    if kind == "str":
        fn = draw(st.sampled_from(["eq", "contains", "startswith", "endswith"]))
        v = draw(st.sampled_from(["alpha", "a", "ta", "Gam", "x"]))
        text = f"name eq '{v}'" if fn == "eq" else f"{fn}(name,'{v}')"
        return text, ("str", fn, v)
    if kind == "null":
        op = draw(st.sampled_from(["eq", "ne"]))
        return f"numberofemployees {op} null", ("null", op)
    if kind == "bool":
        b = draw(st.booleans())
        return f"creditonhold eq {str(b).lower()}", ("bool", b)
    if kind == "not":
        text, tree = draw(conditions(depth + 1))
        return f"not ({text})", ("not", tree)
    (lt, ltree), (rt, rtree) = draw(conditions(depth + 1)), draw(conditions(depth + 1))
    return f"({lt}) {kind} ({rt})", (kind, ltree, rtree)


def oracle(tree: object, row: dict[str, object]) -> bool | None:
    """SQL three-valued logic, case-insensitive strings: what Dataverse's SQL would answer."""
    t = tree  # type: ignore[assignment]
    kind = t[0]  # type: ignore[index]
    if kind == "cmp":
        _, op, n = t  # type: ignore[misc]
        v = row["numberofemployees"]
        if v is None:
            return None
        return {"eq": v == n, "ne": v != n, "gt": v > n, "ge": v >= n, "lt": v < n, "le": v <= n}[op]  # type: ignore[operator]
    if kind == "str":
        _, fn, s = t  # type: ignore[misc]
        name = str(row["name"]).lower()
        s = s.lower()
        return {"eq": name == s, "contains": s in name, "startswith": name.startswith(s), "endswith": name.endswith(s)}[
            fn
        ]
    if kind == "null":
        return (row["numberofemployees"] is None) == (t[1] == "eq")  # type: ignore[index]
    if kind == "bool":
        v = row["creditonhold"]
        return None if v is None else v == t[1]  # type: ignore[index]
    if kind == "not":
        inner = oracle(t[1], row)  # type: ignore[index]
        return None if inner is None else not inner
    a, b = oracle(t[1], row), oracle(t[2], row)  # type: ignore[index]
    if kind == "and":
        if a is False or b is False:
            return False
        return None if a is None or b is None else True
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ROWS, conditions())
def test_filter_matches_three_valued_oracle(
    api: httpx.Client, emulator: EmulatorHandle, rows: list[dict[str, object]], cond: tuple[str, object]
) -> None:
    emulator.admin.reset()
    ids = emulator.admin.seed("account", rows)
    text, tree = cond
    r = api.get("accounts?$select=accountid&$filter=" + quote(text))
    assert r.status_code == 200, (text, r.text)
    got = {v["accountid"] for v in r.json()["value"]}
    expected = {i for i, row in zip(ids, rows, strict=True) if oracle(tree, row) is True}
    assert got == expected, text
