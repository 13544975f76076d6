"""Packs: new action, declared override, undeclared override refused by name, wrappers, disabling, entry points."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from connector.errors import ContractError, InputError
from connector.runtime import Runtime
from tests.framework.packs import action_entry, io_schemas, make_pack

ECHO_IMPL = """
@hookimpl
def echo_word(inputs, connection):
    return {"echo": inputs["word"]}
"""


def echo_pack(tmp_path: Path, name: str = "echo") -> Any:
    return make_pack(
        tmp_path,
        name=name,
        code=ECHO_IMPL,
        spec_ids=("echo_word",),
        fragment={"pack": name, "actions": [action_entry("echo_word")]},
        schemas=io_schemas(name, "echo_word"),
    )


def test_pack_adds_an_action_with_its_schemas(tmp_path: Path) -> None:
    runtime = Runtime(load_entrypoints=False, extra_packs=[echo_pack(tmp_path)])
    assert runtime.provider_of("echo_word") == "echo"
    assert runtime.run_action("echo_word", {"word": "hi"}, connection=None) == {"echo": "hi"}  # type: ignore[arg-type]
    with pytest.raises(InputError) as err:
        runtime.run_action("echo_word", {"word": "far too long a word", "x": 1}, connection=None)  # type: ignore[arg-type]
    paths = sorted(p.path for p in err.value.problems)
    assert paths == ["$", "$.word"]


def test_declared_override_replaces_the_builtin(tmp_path: Path) -> None:
    code = """
    @hookimpl
    def test_connection(inputs, connection):
        return {"ok": True, "checks": [], "diagnosis": None, "fix": None}
    """
    entry = {**action_entry("test_connection"), "input_schema": "actions/test_connection.input.json"}
    schemas = io_schemas("ovr", "test_connection")
    schemas["actions/test_connection.input.json"] = {
        **schemas["actions/test_connection.input.json"],
        "required": [],
    }
    schemas["actions/test_connection.output.json"]["required"] = ["ok"]
    entry["examples"] = [{"title": "empty", "input": {}}]
    pack = make_pack(
        tmp_path,
        name="ovr",
        code=code,
        fragment={"pack": "ovr", "overrides": ["test_connection"], "actions": [entry]},
        schemas=schemas,
    )
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    assert runtime.provider_of("test_connection") == "ovr"
    result = runtime.run_action("test_connection", {}, connection=None)  # type: ignore[arg-type]
    assert result == {"ok": True, "checks": [], "diagnosis": None, "fix": None}


def test_undeclared_override_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D365_STRICT_PACKS", "1")
    code = """
    @hookimpl
    def get_current_user(inputs, connection):
        return {"user_id": "hijacked"}
    """
    pack = make_pack(tmp_path, name="sneaky", code=code, fragment={"pack": "sneaky", "actions": []})
    with pytest.raises(ContractError) as err:
        Runtime(load_entrypoints=False, extra_packs=[pack])
    assert any("pack sneaky implements built-in action 'get_current_user'" in p for p in err.value.problems)


def test_wrapper_sees_every_action_call(tmp_path: Path) -> None:
    code = """
    seen = []

    @hookimpl(wrapper=True)
    def execute_action(action_id, inputs, connection):
        seen.append(action_id)
        result = yield
        return {**result, "wrapped": True}
    """
    spy = make_pack(tmp_path, name="spy", code=code)
    runtime = Runtime(load_entrypoints=False, extra_packs=[echo_pack(tmp_path), spy])
    assert runtime.run_action("echo_word", {"word": "a"}, None) == {"echo": "a", "wrapped": True}  # type: ignore[arg-type]
    runtime.run_action("echo_word", {"word": "b"}, None)  # type: ignore[arg-type]
    assert spy.module.seen == ["echo_word", "echo_word"]


def test_pack_can_be_disabled_by_name(tmp_path: Path) -> None:
    runtime = Runtime(load_entrypoints=False, extra_packs=[echo_pack(tmp_path)], disabled=["echo"])
    assert runtime.manifest.action("echo_word") is None


def test_entry_point_packs_are_discovered_and_blockable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = echo_pack(tmp_path, name="epack")
    dist = tmp_path / "site" / "d365_epack-1.0.dist-info"  # apart from the packages, which stay on sys.path
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: d365-epack\nVersion: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(f"""
        [d365_connector]
        epack = {pack.module.__name__}
        """),
        encoding="utf-8",
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    runtime = Runtime(load_entrypoints=True, disabled=[])
    assert runtime.provider_of("echo_word") == "epack"
    assert [p.distribution for p in runtime.packs] == ["d365-epack"]
    monkeypatch.setenv("D365_CONNECTOR_DISABLED_PLUGINS", "other, epack")
    assert Runtime(load_entrypoints=True).manifest.action("echo_word") is None


def test_pack_action_hookspecs_are_generated_from_its_fragment(tmp_path: Path) -> None:
    pack = make_pack(
        tmp_path,
        name="gen",
        code=ECHO_IMPL,
        fragment={"pack": "gen", "actions": [action_entry("echo_word")]},
        schemas=io_schemas("gen", "echo_word"),
    )
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    assert runtime.run_action("echo_word", {"word": "hi"}, connection=None) == {"echo": "hi"}  # type: ignore[arg-type]
    spec = runtime.pm.hook.echo_word.spec
    assert (spec.argnames, spec.opts["firstresult"]) == (("inputs", "connection", "context"), True)
    assert spec.function.__doc__ == "Test action echo_word."


def test_builtin_action_hookspecs_carry_the_manifest_description() -> None:
    runtime = Runtime(load_entrypoints=False)
    for info in runtime.manifest.actions.values():
        assert getattr(runtime.pm.hook, info.id).spec.function.__doc__ == info.description
        assert getattr(runtime.pm.hook, f"validate_{info.id}").spec.argnames == ("inputs", "connection")


def test_phase_two_is_dispatched_to_the_action_validator_and_wrappers_see_it(tmp_path: Path) -> None:
    code = ECHO_IMPL + textwrap.dedent("""
        from connector.errors import InputProblem

        seen = []

        @hookimpl
        def validate_echo_word(inputs, connection):
            return [InputProblem("$.word", "not that word")] if inputs["word"] == "bad" else []

        @hookimpl(wrapper=True)
        def validate_inputs(action_id, inputs, connection):
            seen.append(action_id)
            return (yield)
    """)
    pack = make_pack(
        tmp_path,
        name="val",
        code=code,
        fragment={"pack": "val", "actions": [action_entry("echo_word")]},
        schemas=io_schemas("val", "echo_word"),
    )
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    assert runtime.run_action("echo_word", {"word": "good"}, None) == {"echo": "good"}  # type: ignore[arg-type]
    with pytest.raises(InputError) as err:
        runtime.run_action("echo_word", {"word": "bad"}, None)  # type: ignore[arg-type]
    assert [(p.path, p.message) for p in err.value.problems] == [("$.word", "not that word")]
    assert runtime.check_inputs("echo_word", {"word": "ok"}, None) == {"word": "ok"}  # type: ignore[arg-type]
    assert pack.module.seen == ["echo_word", "echo_word", "echo_word"]


def test_builtin_validator_is_left_out_for_a_declared_override(tmp_path: Path) -> None:
    code = """
    @hookimpl
    def get_entity(inputs, connection):
        return {"echo": inputs["word"]}
    """
    entry = {**action_entry("get_entity")}
    pack = make_pack(
        tmp_path,
        name="ovr2",
        code=code,
        fragment={"pack": "ovr2", "overrides": ["get_entity"], "actions": [entry]},
        schemas=io_schemas("ovr2", "get_entity"),
    )
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    # the built-in validator would read inputs["table"] and metadata through the (missing) connection
    assert runtime.run_action("get_entity", {"word": "hi"}, connection=None) == {"echo": "hi"}  # type: ignore[arg-type]


def test_every_builtin_validated_action_has_exactly_one_validator() -> None:
    runtime = Runtime(load_entrypoints=False)
    validated = {
        name.removeprefix("validate_")
        for name, caller in vars(runtime.pm.hook).items()
        if name.startswith("validate_") and name != "validate_inputs" and caller.get_hookimpls()
    }
    # the schema says all there is to say about these: no metadata to check them against
    unchecked = {"get_current_user", "test_connection", "list_entities"}
    assert validated == set(runtime.manifest.actions) - unchecked
    for action_id in validated:
        assert len(getattr(runtime.pm.hook, f"validate_{action_id}").get_hookimpls()) == 1


def test_a_pack_validator_adds_problems_but_cannot_silence_the_builtin_checks(tmp_path: Path) -> None:
    code = """
    from connector.errors import InputProblem

    @hookimpl
    def validate_raw_request(inputs, connection):
        return [InputProblem("$.method", "this platform allows GET only")] if inputs["method"] != "GET" else []
    """
    pack = make_pack(tmp_path, name="strict", code=code)
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    connection = types.SimpleNamespace(api_url="https://contoso.crm.dynamics.com/api/data/v9.2")
    with pytest.raises(InputError) as err:  # the built-in check still refuses a path leaving the Web API root
        runtime.check_inputs("raw_request", {"path": "https://elsewhere.example/x"}, connection)  # type: ignore[arg-type]
    assert [p.path for p in err.value.problems] == ["$.path"]
    with pytest.raises(InputError) as err:  # both checks report, in registration order
        runtime.check_inputs(
            "raw_request",
            {"path": "https://elsewhere.example/x", "method": "POST", "data": {}},
            connection,  # type: ignore[arg-type]
        )
    assert sorted(p.path for p in err.value.problems) == ["$.method", "$.path"]


def test_jsonl_of_an_overridden_query_action_is_refused_before_any_request(tmp_path: Path) -> None:
    code = """
    @hookimpl
    def query_entities(inputs, connection):
        return {"echo": inputs["word"]}
    """
    pack = make_pack(
        tmp_path,
        name="ovq",
        code=code,
        fragment={"pack": "ovq", "overrides": ["query_entities"], "actions": [action_entry("query_entities")]},
        schemas=io_schemas("ovq", "query_entities"),
    )
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    with pytest.raises(InputError, match="provided by ovq, which does not stream records; run it without --jsonl"):
        runtime.stream_records("query_entities", {"word": "hi"}, connection=None)  # type: ignore[arg-type]
    assert runtime.run_action("query_entities", {"word": "hi"}, None) == {"echo": "hi"}  # type: ignore[arg-type]
