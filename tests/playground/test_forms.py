"""Every action's form renders from its bundled schema, with nothing rjsf marks as unsupported."""

from __future__ import annotations

from typing import Any

from tests.playground.conftest import UNSUPPORTED, Playground


def test_every_action_form_renders(playground: Playground, api: Any) -> None:
    actions = [a["id"] for a in api.get("/actions").json()["actions"]]
    assert len(actions) >= 20
    page = playground.page
    for action_id in actions:
        playground.choose(action_id)
        page.wait_for_selector("#action form")
        assert page.locator(UNSUPPORTED).count() == 0, f"{action_id}: rjsf shows an unsupported field"
        assert page.locator("#action button.run").count() == 1
    playground.choose("create_entity")
    playground.shot("create-entity-form")
