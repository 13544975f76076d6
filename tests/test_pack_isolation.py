"""Packs fail alone: a pack that breaks the contract is left out whole and named; built-ins and healthy packs work.

Also: ``D365_STRICT_PACKS=1`` fails fast, a broken built-in contract still stops the runtime, ``d365 manifest validate``
lists the packs left out, and categories and trigger types are open to packs while built-ins keep the known ones.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector import cli, plugins
from connector.contract import check_contract
from connector.errors import ContractError, PluginError
from connector.runtime import Runtime
from tests.conftest import ROOT
from tests.framework.packs import action_entry, add_entry_point, io_schemas, make_pack

ECHO_IMPL = """
@hookimpl
def echo_word(inputs, connection):
    return {"echo": inputs["word"]}
"""
BUILTIN_ACTIONS = frozenset(Runtime(load_entrypoints=False).manifest.actions)


def echo_pack(root: Path, name: str = "healthy") -> Any:
    return make_pack(
        root,
        name=name,
        code=ECHO_IMPL,
        fragment={"pack": name, "actions": [action_entry("echo_word")]},
        schemas=io_schemas(name, "echo_word"),
    )


def broken_pack(root: Path, kind: str) -> Any:
    """A pack named ``broken`` with one action, ``shout``, broken in the way ``kind`` says."""
    entry = action_entry("shout")
    schemas = io_schemas("broken", "shout")
    code = textwrap.dedent("""
        @hookimpl
        def shout(inputs, connection):
            return {"echo": inputs["word"].upper()}
    """)
    if kind == "fragment":
        entry["category"] = "Not A Category!"
    elif kind == "schema":
        schemas["actions/shout.output.json"]["type"] = 12
    elif kind == "signature":
        code = code.replace("(inputs, connection)", "(inputs, connection, tenant)")
    elif kind == "unknown_hook":
        code += "\n@hookimpl\ndef get_curent_user(inputs, connection):\n    return {}\n"
    elif kind == "undeclared_override":
        code += "\n@hookimpl\ndef get_current_user(inputs, connection):\n    return {'user_id': 'hijacked'}\n"
    elif kind == "example":
        entry["examples"] = [{"title": "bad", "input": {"word": 5}}]
    return make_pack(root, name="broken", code=code, fragment={"pack": "broken", "actions": [entry]}, schemas=schemas)


EXPECTED = {
    "fragment": "pack broken: manifest fragment $.actions[0].category",
    "schema": "schema https://packs.test/broken/actions/shout.output.json: invalid JSON Schema",
    "signature": "pack broken: Plugin 'broken' for hook 'shout'",
    "unknown_hook": "unknown hook implementation: 'get_curent_user' in plugin broken",
    "undeclared_override": "pack broken implements built-in action 'get_current_user' without declaring it",
    "example": "action 'shout' example 0 ('bad') fails its schema: $.word",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_a_broken_pack_is_left_out_named_and_the_others_keep_working(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="connector.runtime"):
        runtime = Runtime(load_entrypoints=False, extra_packs=[broken_pack(tmp_path, kind), echo_pack(tmp_path)])
    assert list(runtime.broken_packs) == ["broken"]
    assert any(p.startswith(EXPECTED[kind]) for p in runtime.broken_packs["broken"]), runtime.broken_packs
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("pack broken is left out")
    assert all(f"  - {p}" in warning for p in runtime.broken_packs["broken"])
    # left out whole: no action, schema, hookspec or implementation of it remains
    assert [p.name for p in runtime.packs] == ["healthy"]
    assert set(runtime.manifest.actions) == BUILTIN_ACTIONS | {"echo_word"}
    assert not hasattr(runtime.pm.hook, "shout")
    assert runtime.pm.get_plugin("broken") is None
    assert not [sid for sid in runtime.store.ids() if "packs.test/broken" in sid]
    for action_id in BUILTIN_ACTIONS:
        impls = getattr(runtime.pm.hook, action_id).get_hookimpls()
        assert [i.plugin_name.split(".")[0] for i in impls] == ["actions"], action_id
    assert runtime.run_action("echo_word", {"word": "hi"}, connection=None) == {"echo": "hi"}  # type: ignore[arg-type]
    assert check_contract(runtime) == []


def test_strict_packs_fail_fast_naming_the_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D365_STRICT_PACKS", "1")
    with pytest.raises(ContractError) as err:
        Runtime(load_entrypoints=False, extra_packs=[broken_pack(tmp_path, "fragment"), echo_pack(tmp_path)])
    assert any(p.startswith(EXPECTED["fragment"]) for p in err.value.problems)
    assert "the connector contract is broken" in err.value.message


def test_a_broken_builtin_contract_stops_the_runtime_whatever_the_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", ())
    with pytest.raises(ContractError) as err:
        Runtime(load_entrypoints=False)
    assert "action 'get_current_user' has no implementation" in err.value.problems


def test_a_pack_leaning_on_a_broken_one_is_left_out_next(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``leaner`` validates ``shout`` of the broken pack: once that pack is out, the validator has no spec."""
    leaner = make_pack(
        tmp_path,
        name="leaner",
        code="""
        @hookimpl
        def validate_shout(inputs, connection):
            return []
        """,
    )
    runtime = Runtime(load_entrypoints=False, extra_packs=[broken_pack(tmp_path, "example"), leaner])
    assert list(runtime.broken_packs) == ["broken", "leaner"]
    assert runtime.broken_packs["leaner"] == ["unknown hook implementation: 'validate_shout' in plugin leaner"]
    assert set(runtime.manifest.actions) == BUILTIN_ACTIONS


def test_a_second_implementation_of_a_pack_action_is_the_later_pack_fault(tmp_path: Path) -> None:
    intruder = make_pack(tmp_path, name="intruder", code=ECHO_IMPL)
    runtime = Runtime(load_entrypoints=False, extra_packs=[echo_pack(tmp_path), intruder])
    assert runtime.broken_packs == {"intruder": ["action 'echo_word' has 2 implementations (healthy, intruder)"]}
    assert runtime.run_action("echo_word", {"word": "hi"}, connection=None) == {"echo": "hi"}  # type: ignore[arg-type]


def test_a_pack_that_cannot_be_imported_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    healthy = echo_pack(tmp_path / "src")
    add_entry_point(tmp_path / "site", name="missing", target="no_such_module_here", distribution="d365-missing")
    add_entry_point(tmp_path / "site", name="healthy", target=healthy.module.__name__)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    runtime = Runtime(load_entrypoints=True, disabled=[])
    assert list(runtime.broken_packs) == ["missing"]
    assert runtime.broken_packs["missing"][0].startswith(
        "pack missing: cannot be imported from 'no_such_module_here' (No module named 'no_such_module_here')"
    )
    assert runtime.provider_of("echo_word") == "healthy"
    monkeypatch.setenv("D365_STRICT_PACKS", "1")
    with pytest.raises(PluginError, match="pack missing: cannot be imported"):
        Runtime(load_entrypoints=True, disabled=[])


def _broken_entry_point(tmp_path: Path) -> Path:
    """A site folder holding an installed pack ``broken`` (fragment refused) and its distribution."""
    pack = broken_pack(tmp_path / "src", "fragment")
    site = tmp_path / "site"
    add_entry_point(site, name="broken", target=pack.module.__name__, distribution="d365-broken")
    return site


def test_manifest_validate_lists_the_pack_left_out_and_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = _broken_entry_point(tmp_path)
    monkeypatch.setattr(sys, "path", [str(site), str(tmp_path / "src"), *sys.path])
    monkeypatch.delenv("D365_CONNECTOR_DISABLED_PLUGINS", raising=False)
    result = CliRunner().invoke(cli.main, ["manifest", "validate"])
    assert result.exit_code == 1, result.output
    assert "pack broken is left out:\n- pack broken: manifest fragment $.actions[0].category" in result.stderr
    builtin = len(json.loads((ROOT / "manifest.json").read_text(encoding="utf-8"))["actions"])
    assert f"built-ins and healthy packs ok: {builtin} actions; left out: broken" in result.stderr
    assert result.stderr.count("manifest fragment $.actions[0].category") == 1  # listed once, not warned twice
    monkeypatch.setenv("D365_STRICT_PACKS", "1")
    result = CliRunner().invoke(cli.main, ["manifest", "validate"])
    assert result.exit_code == 1
    assert result.stderr.startswith("- pack broken: manifest fragment $.actions[0].category")


def test_every_command_warns_about_a_broken_pack_and_still_runs(tmp_path: Path) -> None:
    """In a real process: the warning reaches stderr, and the 25 built-in actions are listed and described."""
    site = _broken_entry_point(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(tmp_path / "src"), str(ROOT)])}
    env.pop("D365_CONNECTOR_DISABLED_PLUGINS", None)
    done = subprocess.run(
        [sys.executable, "-m", "connector.cli", "manifest", "show"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "pack broken is left out (set D365_STRICT_PACKS=1 to stop instead):" in done.stderr
    assert "  - pack broken: manifest fragment $.actions[0].category" in done.stderr
    shown = json.loads(done.stdout)
    assert {a["id"] for a in shown["actions"]} == BUILTIN_ACTIONS


def test_packs_may_add_categories_and_trigger_types(tmp_path: Path) -> None:
    """A ``sync`` category and a ``streaming`` trigger type, with the trigger's schemas in the pack's own folder
    (``polling`` is a known type since the ``records_changed`` trigger, with a contract of its own)."""
    entry = {**action_entry("echo_word"), "category": "sync"}
    schemas: dict[str, Any] = io_schemas("opener", "echo_word")
    for rel in ("triggers/changes.config.json", "triggers/changes.payload.json"):
        schemas[rel] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://packs.test/opener/{rel}",
            "title": rel,
            "description": rel,
            "type": "object",
            "properties": {"every_s": {"title": "Every", "description": "Seconds.", "type": "integer", "default": 60}},
        }
    trigger = {
        "id": "changes",
        "label": "Changes",
        "description": "Streams changed rows.",
        "type": "streaming",
        "config_schema": "triggers/changes.config.json",
        "payload_schema": "triggers/changes.payload.json",
    }
    code = ECHO_IMPL + textwrap.dedent("""
        from connector.hookspecs import make_trigger_specs

        d365_hookspecs = make_trigger_specs("changes")

        @hookimpl
        def handle_changes(request, config):
            return {"seen": True}

        @hookimpl
        def subscribe_changes(config, connection, target_url):
            return {}

        @hookimpl
        def unsubscribe_changes(subscription, connection):
            return None
    """)
    fragment = {"pack": "opener", "actions": [entry], "triggers": [trigger]}
    pack = make_pack(tmp_path, name="opener", code=code, fragment=fragment, schemas=schemas)
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    assert runtime.broken_packs == {}
    assert runtime.manifest.action("echo_word").category == "sync"  # type: ignore[union-attr]
    assert runtime.trigger_config("changes", {}) == {"every_s": 60}
    assert runtime.handle_trigger("changes", None, {}) == {"seen": True}


def test_builtin_entries_keep_the_known_categories_and_trigger_types() -> None:
    runtime = Runtime(load_entrypoints=False, check=False)
    document = runtime.manifest.document
    document["actions"][0]["category"] = "sync"
    document["triggers"][0]["type"] = "streaming"
    problems = check_contract(runtime)
    first = document["actions"][0]["id"]
    assert any(p.startswith(f"built-in action {first!r}: category 'sync' is not one of ['records'") for p in problems)
    expected = "built-in trigger 'webhook': type 'streaming' is not one of ['webhook', 'polling']"
    assert any(p.startswith(expected) for p in problems)


def test_the_manifest_schema_still_lists_the_known_values_for_builders() -> None:
    defs = Runtime(load_entrypoints=False).store.get("manifest.schema.json")["$defs"]
    assert defs["category"]["anyOf"][0]["enum"] == [
        "records",
        "metadata",
        "batch",
        "query",
        "raw",
        "users",
        "webhooks",
    ]
    assert defs["trigger_type"]["anyOf"][0]["enum"] == ["webhook", "polling"]


def test_problems_blamed_on_no_loaded_pack_stop_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaving out nothing cannot help: the loop stops rather than check the same runtime forever."""
    from connector import contract_cache

    monkeypatch.setenv("D365_CACHE_DIR", "")
    monkeypatch.setattr(contract_cache, "_checked_digests", {})
    monkeypatch.setattr("connector.contract.contract_problems", lambda runtime: {"ghost": ["pack ghost: haunted"]})
    with pytest.raises(ContractError) as err:
        Runtime(load_entrypoints=False)
    assert err.value.problems == ["pack ghost: haunted"]


def test_two_packs_claiming_one_label_are_both_left_out_each_naming_the_other(tmp_path: Path) -> None:
    """Which pack was installed first says nothing about which is right: both are named, neither is trusted."""

    def pack(name: str, action_id: str) -> Any:
        entry = {**action_entry(action_id), "label": "Shared label"}
        code = f"""
        @hookimpl
        def {action_id}(inputs, connection):
            return {{"echo": inputs["word"]}}
        """
        return make_pack(tmp_path, name=name, code=code, fragment={"pack": name, "actions": [entry]},
                         schemas=io_schemas(name, action_id))  # fmt: skip

    first, second, healthy = pack("first", "one_word"), pack("second", "two_word"), echo_pack(tmp_path)
    runtime = Runtime(load_entrypoints=False, extra_packs=[first, second, healthy])
    assert set(runtime.broken_packs) == {"first", "second"}
    assert any("also declared by second" in p for p in runtime.broken_packs["first"])
    assert any("also declared by first" in p for p in runtime.broken_packs["second"])
    assert runtime.run_action("echo_word", {"word": "hi"}, connection=None) == {"echo": "hi"}  # type: ignore[arg-type]
    assert set(runtime.manifest.actions) == BUILTIN_ACTIONS | {"echo_word"}
