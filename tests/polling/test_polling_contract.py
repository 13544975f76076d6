"""The polling trigger contract: a ``polling`` trigger needs ``poll_<id>`` (not the webhook hooks) and a state schema,
the contract check says which is missing, and the repository check wants a test named after each built-in one."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector import plugins
from connector.contract import check_contract
from connector.hookspecs import make_trigger_specs, trigger_hook_names
from connector.runtime import Runtime


def test_polling_triggers_have_one_poll_hook_and_webhooks_keep_three() -> None:
    assert trigger_hook_names("records_changed", "polling") == ("poll_records_changed",)
    assert trigger_hook_names("webhook") == ("handle_webhook", "subscribe_webhook", "unsubscribe_webhook")
    specs = make_trigger_specs("changes", "polling")
    assert [n for n in vars(specs) if not n.startswith("_")] == ["poll_changes"]


def test_missing_poll_implementation_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = tuple(p for p in plugins.DEFAULT_PLUGINS if p != "triggers.records_changed")
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", kept)
    problems = check_contract(Runtime(load_entrypoints=False, check=False))
    assert "trigger 'records_changed': hook 'poll_records_changed' has no implementation" in problems
    assert not [p for p in problems if "webhook" in p]


def test_polling_trigger_without_state_schema_is_reported() -> None:
    runtime = Runtime(load_entrypoints=False, check=False)
    del runtime.manifest.document["triggers"][1]["state_schema"]
    problems = check_contract(runtime)
    assert any("state_schema" in p and "triggers" in p for p in problems), problems


def test_repository_check_wants_a_test_per_polling_trigger(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_other():\n    pass\n", encoding="utf-8")
    problems = check_contract(Runtime(load_entrypoints=False, check=False), repo_checks=True, repo_root=tmp_path)
    assert "polling trigger 'records_changed' has no test named test_records_changed_*" in problems
