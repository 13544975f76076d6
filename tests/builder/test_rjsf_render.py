"""Every action's bundled input schema, rendered by react-jsonschema-form's schema utilities and ajv8 validator.

Builders render forms from what ``Runtime.bundled_schemas`` serves; this runs the real library (``@rjsf/utils`` and
``@rjsf/validator-ajv8`` under Node, pinned by package-lock.json) over all of them in one process (render.mjs) and
fails on any property it cannot render, any choice it shows untitled, any ``oneOf``/``anyOf`` it cannot resolve for a
manifest example, and any example its validator refuses. ``npm ci`` runs once when node_modules is missing or stale.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from connector.runtime import Runtime

HERE = Path(__file__).resolve().parent
RUNTIME = Runtime(load_entrypoints=False)
ACTION_IDS = sorted(RUNTIME.manifest.actions)


def _installed_matches_lock() -> bool:
    """npm ci writes node_modules/.package-lock.json; the same versions as the committed lock mean nothing to do."""
    hidden = HERE / "node_modules" / ".package-lock.json"
    if not hidden.is_file():
        return False

    def versions(path: Path) -> dict[str, str]:
        packages = json.loads(path.read_text())["packages"]
        return {name: entry.get("version", "") for name, entry in packages.items() if name}

    return versions(hidden) == versions(HERE / "package-lock.json")


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``npm ci`` from the lock file, once for all xdist workers (a file lock), as on a clean clone in CI."""
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "node 20 and npm are needed: the builder render test runs rjsf under Node"
    with (HERE / "node_modules.lock").open("w") as lock:  # git-ignored, next to node_modules
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed_matches_lock():
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, f"npm ci failed in {HERE}:\n{done.stdout}\n{done.stderr}"
    return HERE / "node_modules"


def render(node_modules: Path, actions: list[dict[str, Any]]) -> dict[str, Any]:
    """One Node process over every given action; its JSON report."""
    node = shutil.which("node")
    assert node
    done = subprocess.run(
        [node, str(HERE / "render.mjs")],
        input=json.dumps({"actions": actions}),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=node_modules.parent,
    )
    assert done.returncode == 0, f"render.mjs failed:\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture(scope="session")
def report(node_modules: Path) -> dict[str, Any]:
    served = [
        {"id": a.id, "schema": RUNTIME.bundled_schemas(a.id)["input"], "examples": list(a.examples)}
        for a in RUNTIME.manifest.actions.values()
    ]
    return render(node_modules, served)


def test_every_action_was_rendered_by_the_pinned_rjsf(report: dict[str, Any]) -> None:
    lock = json.loads((HERE / "package-lock.json").read_text())
    assert report["rjsf"] == lock["packages"]["node_modules/@rjsf/utils"]["version"]
    assert sorted(report["actions"]) == ACTION_IDS
    for action_id, rendered in report["actions"].items():
        properties = RUNTIME.bundled_schemas(action_id)["input"].get("properties", {})
        assert rendered["fields"] > len(properties), action_id  # the root and each property, at least once


@pytest.mark.parametrize("action_id", ACTION_IDS)
def test_the_action_form_renders_and_resolves_every_choice(report: dict[str, Any], action_id: str) -> None:
    problems = [f"{action_id} {p['path']}: {p['problem']}" for p in report["actions"][action_id]["problems"]]
    assert problems == [], "rjsf cannot render the served input schema:\n" + "\n".join(problems)


# -- the walk itself: each kind of problem is found, and a schema written for renderers has none ----------------------
def _schema(name: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://d365-connector.dev/schemas/test/{name}.input.json",
        "title": "Render test",
        "type": "object",
        "properties": properties,
        **extra,
    }


_BY_ID = {"title": "By id", "required": ["id"]}
_BY_KEY = {"title": "By alternate key", "required": ["key"]}
_ID = {"title": "Row id", "type": "string", "format": "uuid"}
_KEY = {"title": "Key", "type": "object", "additionalProperties": {"title": "Value", "type": "string"}}
_CANARIES = [
    {
        "id": "fine",
        "schema": _schema(
            "fine",
            {
                "id": _ID,
                "key": _KEY,
                "mode": {"title": "Mode", "oneOf": [{"const": "a", "title": "A"}, {"const": "b", "title": "B"}]},
                "fields": {"title": "Fields", "type": "object", "additionalProperties": {"type": ["string", "null"]}},
                "tags": {"title": "Tags", "type": "array", "items": {"title": "Tag", "type": "string"}},
                "table": {"title": "Table", "type": "string", "x-d365-options": {"source": "tables", "params": {}}},
            },
            oneOf=[_BY_ID, _BY_KEY],
        ),
        "examples": [
            {"title": "by id", "input": {"id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b", "mode": "b"}},
            {"title": "by key", "input": {"key": {"k": "v"}, "tags": ["x"], "table": "account"}},
        ],
    },
    {
        "id": "broken",
        "schema": _schema(
            "broken",
            {
                "id": _ID,
                "key": _KEY,
                "value": {"title": "Value"},
                "mode": {"title": "Mode", "enum": ["a", "b"]},
                "fields": {"title": "Fields", "type": "object"},
                "where": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                "fetch_all": {"title": "All", "type": "boolean"},
                "page": {"title": "Page", "type": "integer"},
            },
            oneOf=[_BY_ID, _BY_KEY],
            dependentSchemas={"key": {"not": {"required": ["id"]}}},
            dependentRequired={"fetch_all": ["page"]},
        ),
        "examples": [
            {"title": "both", "input": {"id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b", "key": {"k": "v"}}},
            {"title": "all", "input": {"id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b", "fetch_all": True}},
        ],
    },
]


@pytest.fixture(scope="module")
def canaries(node_modules: Path) -> dict[str, Any]:
    return render(node_modules, _CANARIES)["actions"]  # type: ignore[no-any-return]


def test_a_schema_written_for_renderers_has_no_problems(canaries: dict[str, Any]) -> None:
    """Titled choices, titled id-or-key branches, typed additional properties; our x-d365-options annotation is
    ignored by ajv (rjsf's validator runs it with strict: false)."""
    assert canaries["fine"]["problems"] == []
    assert canaries["fine"]["choices"] >= 4  # mode and the id-or-key oneOf, for the empty form and each example


def test_each_kind_of_problem_is_reported_with_its_path(canaries: dict[str, Any]) -> None:
    found = {(p["path"], p["problem"]) for p in canaries["broken"]["problems"]}
    expected = {
        ("$", "dependentSchemas (on key) is not applied by rjsf: the form cannot show this rule"),
        ("$", "dependentRequired (on fetch_all) is not applied by rjsf: the form cannot show this rule"),
        ("$.value", 'no type: rjsf renders "Unsupported field schema"'),
        ("$.mode", 'choices shown as raw values, no title: "a", "b"'),
        ("$.fields", "object with no properties and no additionalProperties schema: rjsf shows an empty group"),
        ("$.where[] (anyOf)", "branches without a title, shown as Option 1, Option 2"),
    }
    assert expected <= found, sorted(found - expected)
    rest = sorted(found - expected)
    # Both id and key match both branches of the oneOf, which ajv refuses; and ajv applies draft 2020-12's
    # dependentSchemas and dependentRequired, which a draft-07 validator would ignore.
    both = '{"id":"5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b","key":{"k":"v"}}'
    assert rest == [
        (
            '$ (example "all")',
            "validator-ajv8 refuses it: page must have property page when property fetch_all is present",
        ),
        ('$ (example "both")', "validator-ajv8 refuses it: . must NOT be valid"),
        ('$ (example "both")', "validator-ajv8 refuses it: . must match exactly one schema in oneOf"),
        ("$ (oneOf)", f"the value {both} matches branches 0, 1: oneOf needs one"),
    ]
