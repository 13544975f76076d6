"""Every action's form renders from its bundled schema, with nothing rjsf marks as unsupported: as first shown, and
again once a table is picked (the fields, key and column inputs then take the schemas the data sources give)."""

from __future__ import annotations

from typing import Any

from tests.playground.conftest import UNSUPPORTED, Playground

# every data source the form asked for has answered, and no top-level input that needs only the table still waits
# (a message's parameters wait for its name too)
SETTLED = """() => !document.querySelector('.linked[data-state=loading]')
    && ![...document.querySelectorAll('.linked[data-state=waiting]')]
        .some(e => !e.dataset.path.includes('/') && e.dataset.params === 'table')"""


def test_every_action_form_renders(playground: Playground, api: Any) -> None:
    actions = [a["id"] for a in api.get("/actions").json()["actions"]]
    assert len(actions) >= 20
    page = playground.page
    linked = 0
    for action_id in actions:
        playground.choose(action_id)
        page.wait_for_selector("#action form")
        assert page.locator(UNSUPPORTED).count() == 0, f"{action_id}: rjsf shows an unsupported field"
        assert page.locator("#action button.run").count() == 1
        if page.locator("select#inputs_table").count():
            page.wait_for_selector("select#inputs_table")  # a text input until the tables source answers
            page.select_option("select#inputs_table", label="Contact (contact)")
            page.wait_for_function(SETTLED)
            assert page.locator(UNSUPPORTED).count() == 0, f"{action_id}: rjsf shows an unsupported field for contact"
            linked += 1
    assert linked >= 10  # the actions with a table input were seen with their table's schemas too
    playground.choose("create_entity")
    playground.shot("create-entity-form")


def test_a_message_form_takes_its_parameters_from_metadata(playground: Playground) -> None:
    """invoke_action with a bound message chosen: its parameters become a form from the message_schema source."""
    page = playground.page
    playground.choose("invoke_action")
    page.wait_for_selector("select#inputs_table")
    page.select_option("select#inputs_table", label="Lead (lead)")
    page.wait_for_selector("select#inputs_name")
    page.select_option("select#inputs_name", label="QualifyLead (action, bound to a lead row)")
    page.wait_for_selector(".linked-message_schema[data-state=ready]")
    page.wait_for_function(SETTLED)
    assert page.locator(UNSUPPORTED).count() == 0
    assert page.locator("#inputs_parameters_CreateAccount").count() == 1
    playground.shot("invoke-action-qualifylead")


def test_an_unbound_message_form_needs_no_table(playground: Playground) -> None:
    """invoke_action with no table: the message list offers unbound messages and, once one is picked, its parameters
    form appears (the table is an optional parameter of the messages and message_schema sources)."""
    page = playground.page
    playground.choose("invoke_action")
    page.wait_for_selector("select#inputs_name")
    label = page.locator("select#inputs_name option", has_text="WinOpportunity").first.inner_text()
    page.select_option("select#inputs_name", label=label)
    page.wait_for_selector(".linked-message_schema[data-state=ready]")
    page.wait_for_function("() => !document.querySelector('.linked[data-state=loading]')")  # the table stays empty
    assert page.locator(UNSUPPORTED).count() == 0
    assert page.locator("#inputs_parameters_Status").count() == 1
    assert page.locator("[id^=inputs_parameters_OpportunityClose]").count() >= 1
    playground.shot("invoke-action-unbound")
