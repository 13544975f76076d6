"""The runtime server's API against the emulator: actions run with the CLI's validation and error mapping."""

from __future__ import annotations

import httpx

from tests.serve.conftest import BEARER, run


def test_actions_are_listed_with_bundled_schemas(client: httpx.Client) -> None:
    answer = client.get("/actions", headers=BEARER)
    assert answer.status_code == 200
    actions = {a["id"]: a for a in answer.json()["actions"]}
    assert "write_entities" in actions and actions["write_entities"]["long_running"] is True
    assert actions["create_entity"]["long_running"] is False
    assert "$ref" not in str(actions["write_entities"]["input_schema"])  # bundled: a form renderer has no registry
    one = client.get("/actions/create_entity", headers=BEARER).json()
    assert one["input_schema"] == actions["create_entity"]["input_schema"]
    assert client.get("/actions/nope", headers=BEARER).status_code == 404


def test_an_action_runs_and_reports_its_exchange(client: httpx.Client) -> None:
    answer = run(client, "create_entity", {"table": "account", "fields": {"name": "Contoso"}})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["output"]["id"]
    methods = [(e["method"], e["status"]) for e in body["exchange"]]
    assert ("POST", 204) in methods or ("POST", 201) in methods
    assert all(set(e) == {"method", "url", "status", "elapsed_ms"} for e in body["exchange"])


def test_input_errors_are_problems_with_pointers_into_the_body(client: httpx.Client) -> None:
    answer = run(client, "create_entity", {"table": "account", "fields": {"name": "x"}, "extra": 1})
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == 422 and problem["type"].endswith("/input")
    assert [e["path"] for e in problem["errors"]] == ["/inputs"]
    assert "unexpected property 'extra'" in problem["errors"][0]["message"]
    unknown_column = run(client, "create_entity", {"table": "account", "fields": {"nosuchcolumn": "x"}})
    assert unknown_column.status_code == 422
    assert [e["path"] for e in unknown_column.json()["errors"]] == ["/inputs/fields/nosuchcolumn"]


def test_an_unknown_connection_is_an_input_error_naming_the_field(client: httpx.Client) -> None:
    answer = run(client, "get_current_user", {}, connection="nope")
    assert answer.status_code == 422
    assert [e["path"] for e in answer.json()["errors"]] == ["/connection"]


def test_a_dataverse_error_is_a_502_problem_with_its_code(client: httpx.Client) -> None:
    missing = "00000000-0000-0000-0000-000000000001"
    answer = run(client, "get_entity", {"table": "account", "id": missing})
    assert answer.status_code == 502, answer.text
    assert answer.json()["dataverse_code"] == "0x80040217"


def test_bad_json_is_refused_with_its_place(client: httpx.Client) -> None:
    answer = client.post(
        "/actions/create_entity", content=b'{"connection": "emu", "inputs": {"x": NaN}}', headers=BEARER
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["path"].startswith("/inputs")


def test_data_sources_answer_items(client: httpx.Client) -> None:
    listed = client.get("/data-sources", headers=BEARER).json()["data_sources"]
    assert {"tables", "columns"} <= {d["id"] for d in listed}
    tables = client.post("/data-sources/tables", json={"connection": "emu", "params": {}}, headers=BEARER)
    assert tables.status_code == 200, tables.text
    assert any(item["value"] == "account" for item in tables.json()["items"])
    bad = client.post("/data-sources/columns", json={"connection": "emu", "params": {"nope": 1}}, headers=BEARER)
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"].startswith("/params")


def test_triggers_and_openapi_are_served(client: httpx.Client) -> None:
    triggers = client.get("/triggers", headers=BEARER).json()["triggers"]
    assert {t["id"] for t in triggers} >= {"webhook"}
    document = client.get("/openapi.json", headers=BEARER).json()
    assert document["openapi"] == "3.1.0"
    assert "/actions/write_entities" in document["paths"]
    body = document["paths"]["/actions/create_entity"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["inputs"]["required"] == ["table", "fields"]


def test_unknown_routes_and_methods_answer_problems(client: httpx.Client) -> None:
    missing = client.get("/no/such/route", headers=BEARER)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    wrong = client.patch("/actions", headers=BEARER)
    assert wrong.status_code == 405 and wrong.json()["status"] == 405


def test_a_bulk_write_lists_the_chunks_its_workers_sent(client: httpx.Client) -> None:
    records = [{"fields": {"name": f"Row {n}"}} for n in range(30)]
    answer = run(client, "write_entities", {"table": "account", "mode": "create", "records": records, "chunk_size": 10})
    assert answer.status_code == 200, answer.text
    chunks = [e for e in answer.json()["exchange"] if e["url"].endswith("CreateMultiple")]
    assert [e["status"] for e in chunks] == [200, 200, 200]
