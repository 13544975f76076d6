"""The issue's browser steps, each in its own signed-in page, each step's screenshot kept (see conftest)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from dataverse_emulator import dispatch
from tests.playground.conftest import WEBHOOK_KEY, Playground

PAYLOADS = Path(__file__).resolve().parents[1] / "webhooks" / "payloads"
ROWS = 5000


def run(api: httpx.Client, action: str, inputs: dict[str, Any]) -> Any:
    answer = api.post(f"/actions/{action}", json={"connection": "emu", "inputs": inputs})
    assert answer.status_code == 200, answer.text
    return answer.json()["output"]


def pick(page: Any, element_id: str, label: str | list[str]) -> None:
    """A data-source dropdown is a text input until its source answers: wait for the select, then choose."""
    page.wait_for_selector(f"select#{element_id}")
    page.select_option(f"select#{element_id}", label=label)


def output(playground: Playground) -> Any:
    playground.page.wait_for_selector("#result pre.output")
    return json.loads(playground.page.inner_text("#result pre.output"))


def test_connect_signs_in_through_the_hosted_flow(playground: Playground, api: httpx.Client) -> None:
    page = playground.page
    user = page.locator("li[data-connection=user]")
    playground.shot("before-connect")
    user.locator("button.connect").click()  # to the emulator's authorize endpoint, back to /oauth/callback/user
    page.wait_for_url("**/playground/?connected=user")
    user.locator(".badge.ok").wait_for()
    assert {c["name"]: c["connected"] for c in api.get("/connections").json()["connections"]}["user"] is True
    user.locator("input[type=radio]").check()
    playground.choose("get_current_user")
    page.click("#action button.run")
    me = output(playground)
    assert me["user_id"]
    playground.shot("signed-in-user")


def test_create_an_account_through_the_form(playground: Playground, api: httpx.Client) -> None:
    page = playground.page
    playground.choose("create_entity")
    pick(page, "inputs_table", label="Account (account)")
    page.fill("#inputs_fields_name", "Contoso from the playground")  # the fields schema of account, swapped in
    page.fill("#inputs_fields_accountnumber", "PG-1")
    playground.shot("create-account-form")
    page.click("#action button.run")
    created = output(playground)
    assert created["table"] == "account"
    assert page.locator("table.exchange tbody tr").count() >= 1
    rows = run(api, "query_entities", {"table": "account", "where": [
        {"column": "accountnumber", "operator": "eq", "value": "PG-1"}]})["records"]  # fmt: skip
    assert [(r["accountid"], r["name"]) for r in rows] == [(created["id"], "Contoso from the playground")]
    page.click("button.copy-cli")
    command = page.inner_text("pre.copied")
    assert "d365 run create_entity --connection emu.json --input -" in command
    assert '"accountnumber":"PG-1"' in command
    playground.shot("create-account-done")


def test_upsert_a_contact_by_alternate_key_with_a_record_picker(playground: Playground, api: httpx.Client) -> None:
    run(api, "create_alternate_key", {"table": "contact", "schema_name": "new_email", "columns": ["emailaddress1"],
                                      "wait_until_active": True})  # fmt: skip
    fabrikam = run(api, "create_entity", {"table": "account", "fields": {"name": "Fabrikam Picked"}})["id"]
    page = playground.page
    playground.choose("upsert_entity")
    pick(page, "inputs_table", label="Contact (contact)")
    page.fill("#inputs_key_emailaddress1", "ada@example.com")
    page.fill("#inputs_fields_lastname", "Lovelace")
    pick(page, "inputs_fields_parentcustomerid_table", label="account")
    page.fill(".linked-records input.record-search", "Fabrikam")  # asks the records source again, by name
    page.wait_for_selector(".linked-records[data-state=ready] select#inputs_fields_parentcustomerid_id")
    pick(page, "inputs_fields_parentcustomerid_id", label="Fabrikam Picked")
    page.check("#inputs_return_record")
    pick(page, "inputs_select", label=["Last Name (lastname)", "Email (emailaddress1)"])
    playground.shot("upsert-contact-form")
    page.click("#action button.run")
    written = output(playground)
    assert written["record"]["lastname"] == "Lovelace"
    contact = run(api, "get_entity", {"table": "contact", "key": {"emailaddress1": "ada@example.com"},
                                      "select": ["lastname", "parentcustomerid"]})  # fmt: skip
    assert contact["record"]["_parentcustomerid_value"] == fabrikam
    playground.shot("upsert-contact-done")


def test_the_record_picker_pages_through_more_than_one_page(playground: Playground, api: httpx.Client) -> None:
    names = [f"Paged {i:02d}" for i in range(55)]
    written = run(api, "write_entities", {"table": "account", "mode": "create",
                                          "records": [{"fields": {"name": n}} for n in names]})  # fmt: skip
    assert written["summary"]["created"] == 55
    page = playground.page
    playground.choose("upsert_entity")
    pick(page, "inputs_table", label="Contact (contact)")
    pick(page, "inputs_fields_parentcustomerid_table", label="account")
    page.fill(".linked-records input.record-search", "Paged")
    select = ".linked-records[data-state=ready] select#inputs_fields_parentcustomerid_id"
    page.wait_for_selector(select)
    first = page.locator(f"{select} option").all_inner_texts()
    assert [o for o in first if o.startswith("Paged")] == names[:50]  # one page of 50, by primary name
    page.click(".linked-records button.page-next")
    page.wait_for_selector(".linked-records .page-number:has-text('Page 2')")
    page.wait_for_selector(select)
    page.wait_for_function("() => document.querySelectorAll('#inputs_fields_parentcustomerid_id option').length < 50")
    assert [o for o in page.locator(f"{select} option").all_inner_texts() if o.startswith("Paged")] == names[50:]
    assert page.locator(".linked-records button.page-next").is_disabled()
    pick(page, "inputs_fields_parentcustomerid_id", label="Paged 54")
    playground.shot("record-picker-page-2")
    page.click(".linked-records button.page-previous")
    page.wait_for_selector(".linked-records .page-number:has-text('Page 1')")


def test_a_validation_error_shows_next_to_its_field(playground: Playground) -> None:
    page = playground.page
    playground.choose("create_entity")
    pick(page, "inputs_table", label="Account (account)")
    page.fill("#inputs_fields_name", "x" * 200)  # account.name holds at most 160 characters
    page.click("#action button.run")
    error = page.locator("#inputs_fields_name").locator("xpath=ancestor::div[contains(@class,'form-group')][1]")
    error.locator(".error-detail").wait_for()
    assert "at most 160 characters" in error.inner_text()
    playground.shot("validation-error")


def test_a_fetchxml_query_runs(playground: Playground, api: httpx.Client) -> None:
    run(api, "create_entity", {"table": "account", "fields": {"name": "Fetched Ltd", "accountnumber": "FX-1"}})
    page = playground.page
    playground.choose("run_fetch_xml_query")
    page.fill(
        "#inputs_fetch_xml",
        "<fetch><entity name='account'><attribute name='name'/>"
        "<filter><condition attribute='accountnumber' operator='eq' value='FX-1'/></filter></entity></fetch>",
    )
    playground.shot("fetchxml-form")
    page.click("#action button.run")
    job = page.locator("#jobs li.job").first
    job.locator(".status-succeeded").wait_for()
    job.locator("button", has_text="Show result").click()
    assert [r["name"] for r in output(playground)["records"]] == ["Fetched Ltd"]
    playground.shot("fetchxml-result")


def test_a_5000_row_job_shows_its_progress(
    playground: Playground, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the emulator (in this process) answers the first bulk chunk and holds the others until the page has shown some
    # progress, so the page's poll sees a value between 0 and 5,000 however fast the emulator writes
    release = threading.Event()
    answered = 0
    bound_action = dispatch.bound_action

    async def held(*args: Any) -> Any:
        nonlocal answered
        if answered:
            await asyncio.get_running_loop().run_in_executor(None, release.wait)
        answered += 1
        return await bound_action(*args)

    monkeypatch.setattr(dispatch, "bound_action", held)
    try:
        _run_the_5000_row_job(playground, release)
    finally:
        release.set()
    assert answered > 1  # more than one bulk chunk, all but the first held


def _run_the_5000_row_job(playground: Playground, release: threading.Event) -> None:
    page = playground.page
    playground.choose("write_entities")
    records = [{"fields": {"name": f"Bulk {n}"}} for n in range(ROWS)]
    page.click("details.json-inputs summary")
    page.fill("details.json-inputs textarea", json.dumps({"table": "account", "mode": "create", "records": records}))
    # every value the progress bar shows is recorded by the page itself, so no poll of ours can miss one
    page.evaluate("""() => { window.seen = []; new MutationObserver(() => {
        for (const bar of document.querySelectorAll('#jobs [role=progressbar]'))
            window.seen.push(Number(bar.getAttribute('aria-valuenow')));
    }).observe(document.getElementById('jobs'), {subtree: true, attributes: true, childList: true}); }""")
    page.click("button.run-json")
    job = page.locator("#jobs li.job").first
    page.wait_for_function("() => window.seen.some(v => v > 0 && v < 5000)", timeout=120_000)
    playground.shot("job-running")
    release.set()
    job.locator(".status-succeeded").wait_for(timeout=180_000)
    seen = page.evaluate("window.seen")
    assert seen == sorted(seen) and seen[-1] == ROWS and len(set(seen)) > 2, seen
    assert job.locator(".progress-text").inner_text().startswith(f"{ROWS} / {ROWS}")
    playground.shot("job-done")
    job.locator("button", has_text="Show result").click()
    assert output(playground)["summary"]["created"] == ROWS


def test_a_webhook_event_appears(playground: Playground, serve: str) -> None:
    page = playground.page
    body = (PAYLOADS / "create-contact.json").read_bytes()
    context = json.loads(body)
    headers = {"content-type": "application/json", "x-ms-dynamics-entity-name": context["PrimaryEntityName"],
               "x-ms-dynamics-request-name": context["MessageName"]}  # fmt: skip
    delivered = httpx.post(f"{serve}/triggers/webhook/emu?code={WEBHOOK_KEY}", content=body, headers=headers)
    assert delivered.status_code < 300, delivered.text
    event = page.locator("#events li.event").first
    event.wait_for()
    assert "emu" in event.inner_text() and context["PrimaryEntityId"] in event.inner_text()
    playground.shot("webhook-event")
