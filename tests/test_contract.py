"""The contract check: clean for the built-ins, and each kind of drift reported by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector import plugins
from connector.contract import check_contract, contract_problems
from connector.errors import ContractError
from connector.runtime import Runtime
from tests.framework.packs import action_entry, io_schemas, make_pack

IMPL = """
@hookimpl
def {id}(inputs, connection):
    return {{"echo": inputs["word"]}}
"""


def problems_with(*packs: object) -> list[str]:
    runtime = Runtime(load_entrypoints=False, extra_packs=list(packs), check=False)  # type: ignore[arg-type]
    return check_contract(runtime)


def test_builtin_contract_is_clean() -> None:
    assert problems_with() == []


def test_missing_schema_is_reported(tmp_path: Path) -> None:
    schemas = io_schemas("p", "one")
    del schemas["actions/one.output.json"]
    pack = make_pack(
        tmp_path,
        name="p",
        code=IMPL.format(id="one"),
        spec_ids=("one",),
        fragment={"pack": "p", "actions": [action_entry("one")]},
        schemas=schemas,
    )
    assert (
        "action 'one': schema https://d365-connector.dev/schemas/actions/one.output.json is missing"
        in problems_with(pack)
    )


def test_invalid_schema_is_reported(tmp_path: Path) -> None:
    schemas = io_schemas("p", "one")
    schemas["actions/one.output.json"]["type"] = 12
    pack = make_pack(
        tmp_path,
        name="p",
        code=IMPL.format(id="one"),
        spec_ids=("one",),
        fragment={"pack": "p", "actions": [action_entry("one")]},
        schemas=schemas,
    )
    found = [p for p in problems_with(pack) if "invalid JSON Schema" in p]
    assert found and found[0].startswith("schema https://packs.test/p/actions/one.output.json: invalid JSON Schema")


def test_unreadable_schema_file_is_reported(tmp_path: Path) -> None:
    schemas: dict[str, object] = dict(io_schemas("p", "one"))
    schemas["actions/broken.json"] = "{not json"
    pack = make_pack(
        tmp_path,
        name="p",
        code=IMPL.format(id="one"),
        spec_ids=("one",),
        fragment={"pack": "p", "actions": [action_entry("one")]},
        schemas=schemas,
    )
    assert any(p.startswith("pack p: schema actions/broken.json: not readable JSON") for p in problems_with(pack))


def test_extra_hook_without_manifest_entry_is_reported(tmp_path: Path) -> None:
    pack = make_pack(tmp_path, name="p", code=IMPL.format(id="orphan"), spec_ids=("orphan",))
    assert "hook 'orphan' has an action hookspec but no manifest entry" in problems_with(pack)


def test_missing_implementation_is_reported(tmp_path: Path) -> None:
    pack = make_pack(
        tmp_path,
        name="p",
        spec_ids=("one",),
        fragment={"pack": "p", "actions": [action_entry("one")]},
        schemas=io_schemas("p", "one"),
    )
    assert "action 'one' has no implementation" in problems_with(pack)


def test_missing_builtin_implementation_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", ())
    problems = problems_with()
    assert "action 'get_current_user' has no implementation" in problems
    assert "action 'test_connection' has no implementation" in problems


def test_two_implementations_are_reported(tmp_path: Path) -> None:
    first = make_pack(
        tmp_path,
        name="p",
        code=IMPL.format(id="one"),
        spec_ids=("one",),
        fragment={"pack": "p", "actions": [action_entry("one")]},
        schemas=io_schemas("p", "one"),
    )
    second = make_pack(tmp_path, name="q", code=IMPL.format(id="one"))
    assert "action 'one' has 2 implementations (p, q)" in problems_with(first, second)


def test_example_failing_its_schema_is_reported(tmp_path: Path) -> None:
    pack = make_pack(
        tmp_path,
        name="p",
        code=IMPL.format(id="one"),
        spec_ids=("one",),
        fragment={"pack": "p", "actions": [action_entry("one", example={"word": 5})]},
        schemas=io_schemas("p", "one"),
    )
    assert "action 'one' example 0 ('example') fails its schema: $.word: expected string, got integer (Word)" in (
        problems_with(pack)
    )


def test_unknown_hook_implementation_is_reported(tmp_path: Path) -> None:
    pack = make_pack(tmp_path, name="p", code=IMPL.format(id="get_curent_user"))
    assert any(p.startswith("unknown hook implementation:") and "get_curent_user" in p for p in problems_with(pack))


def test_runtime_refuses_to_start_on_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D365_STRICT_PACKS", "1")
    pack = make_pack(tmp_path, name="p", code=IMPL.format(id="orphan2"), spec_ids=("orphan2",))
    with pytest.raises(ContractError) as err:
        Runtime(load_entrypoints=False, extra_packs=[pack])
    assert "hook 'orphan2' has an action hookspec but no manifest entry" in err.value.problems


def test_repo_checks_need_tests_readme_and_runs(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_get_current_user_ok():\n    pass\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        '### get_current_user\n\n```json\n{"impersonate": "nope"}\n```\n', encoding="utf-8"
    )
    runtime = Runtime(load_entrypoints=False)
    ledger = [
        {"action": "get_current_user", "outcome": "ok", "host": "127.0.0.1"},
        {"action": "test_connection", "outcome": "ok", "host": "contoso.crm.dynamics.com"},
    ]
    problems = check_contract(runtime, repo_checks=True, repo_root=tmp_path, ledger=ledger)
    assert "action 'test_connection' has no test named test_test_connection_*" in problems
    assert "action 'test_connection' has no '### test_connection' section in README.md" in problems
    assert any(
        p.startswith("README '### get_current_user' example fails the input schema: $.impersonate") for p in problems
    )
    assert "action 'get_current_user' was never refused with an input error in the suite" in problems
    assert "polling trigger 'records_changed' has no '### records_changed' section in README.md" in problems
    assert (
        "action 'test_connection' never ran successfully through run_action against the emulator in the suite"
    ) in problems
    assert not any(p.startswith("action 'get_current_user' has no test") for p in problems)


def test_clean_check_is_remembered_on_disk_by_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connector import contract_cache

    monkeypatch.setenv("D365_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(contract_cache, "_checked_digests", {})
    monkeypatch.setenv("D365_STRICT_PACKS", "1")
    calls: list[int] = []
    real = contract_problems

    def counting(runtime: Runtime, **kwargs: object) -> dict[str, list[str]]:
        calls.append(1)
        return real(runtime, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("connector.contract.contract_problems", counting)
    first = Runtime(load_entrypoints=False)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"contract-{first.contract_digest()}.ok"]
    monkeypatch.setattr(contract_cache, "_checked_digests", {})  # as a new process would start
    Runtime(load_entrypoints=False)
    assert len(calls) == 1
    pack = make_pack(tmp_path / "pk", name="p", code=IMPL.format(id="orphan3"), spec_ids=("orphan3",))
    with pytest.raises(ContractError):
        Runtime(load_entrypoints=False, extra_packs=[pack])  # another digest: checked again, and refused
    assert len(calls) == 2


def test_validator_of_an_undeclared_action_is_reported(tmp_path: Path) -> None:
    code = """
    @hookimpl
    def validate_nowhere(inputs, connection):
        return []
    """
    pack = make_pack(tmp_path, name="p", code=code)
    assert any(p.startswith("unknown hook implementation:") and "validate_nowhere" in p for p in problems_with(pack))


def test_a_broken_pack_verdict_is_remembered_on_disk_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken pack left installed costs its warning on every start, not a contract check."""
    from connector import contract_cache

    monkeypatch.setenv("D365_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(contract_cache, "_checked_digests", {})
    calls: list[int] = []
    real = contract_problems

    def counting(runtime: Runtime, **kwargs: object) -> dict[str, list[str]]:
        calls.append(1)
        return real(runtime, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("connector.contract.contract_problems", counting)
    pack = make_pack(tmp_path / "pk", name="p", code=IMPL.format(id="orphan4"), spec_ids=("orphan4",))
    first = Runtime(load_entrypoints=False, extra_packs=[pack])
    assert len(calls) == 2  # with the pack, then without it
    monkeypatch.setattr(contract_cache, "_checked_digests", {})  # as a new process would start
    again = Runtime(load_entrypoints=False, extra_packs=[pack])
    assert len(calls) == 2
    expected = {"p": ["hook 'orphan4' has an action hookspec but no manifest entry"]}
    assert again.broken_packs == first.broken_packs == expected
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".ok"]


def _pack_with_input(tmp_path: Path, word: dict[str, object], **top: object) -> object:
    schemas = io_schemas("p", "one")
    schemas["actions/one.input.json"]["properties"]["word"] = word
    schemas["actions/one.input.json"].update(top)
    return make_pack(
        tmp_path,
        name="p",
        code=IMPL.format(id="one"),
        spec_ids=("one",),
        fragment={"pack": "p", "actions": [action_entry("one")]},
        schemas=schemas,
    )


WORD = {"title": "Word", "description": "A word.", "type": "string", "examples": ["hi"]}


@pytest.mark.parametrize(
    ("word", "top", "expected"),
    [
        ({**WORD, "title": ""}, {}, "action 'one' input $.word: has no title"),
        ({k: v for k, v in WORD.items() if k != "description"}, {}, "action 'one' input $.word: has no description"),
        ({k: v for k, v in WORD.items() if k != "examples"}, {}, "action 'one' input $.word: has no examples"),
        ({**WORD, "enum": ["a", "b"]}, {}, "action 'one' input $.word: a bare enum; give each value a title"),
        (
            WORD,
            {"dependentSchemas": {"word": {"required": ["word"]}}},
            "action 'one' input $: dependentSchemas is not rendered by form builders",
        ),
        (
            WORD,
            {"dependentRequired": {"word": ["word"]}},
            "action 'one' input $: dependentRequired is not rendered by form builders",
        ),
    ],
    ids=["title", "description", "examples", "bare-enum", "dependentSchemas", "dependentRequired"],
)
def test_input_schema_a_form_cannot_render_is_reported(
    tmp_path: Path, word: dict[str, object], top: dict[str, object], expected: str
) -> None:
    problems = problems_with(_pack_with_input(tmp_path, word, **top))
    assert any(p.startswith(expected) for p in problems), problems


def test_form_rules_read_through_refs_and_skip_choices_and_booleans() -> None:
    from connector.contract import form_problems

    titled = {"title": "Mode", "description": "How.", "type": "string", "oneOf": [{"const": "a", "title": "A"}]}
    flag = {"title": "Flag", "description": "Whether.", "type": "boolean"}
    nested = {
        "title": "Rows",
        "description": "Rows.",
        "type": "array",
        "examples": [[]],
        "items": {"properties": {"n": flag | {"type": "integer"}}},
    }
    problems = form_problems({"properties": {"mode": titled, "flag": flag, "rows": nested}})
    assert problems == ["$.rows[].n: has no examples"]
    by_ref = {"allOf": [{"title": "T", "description": "D.", "type": "string", "examples": ["x"]}], "minLength": 1}
    assert form_problems({"properties": {"t": by_ref}}) == []


def test_repo_checks_want_a_polling_trigger_readme_example_that_fits_its_config(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "README.md").write_text('### records_changed\n\n```json\n{"columns": ["name"]}\n```\n', "utf-8")
    problems = check_contract(Runtime(load_entrypoints=False), repo_checks=True, repo_root=tmp_path)
    assert any(p.startswith("README '### records_changed' example fails the config schema") for p in problems)
