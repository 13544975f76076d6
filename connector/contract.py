"""Manifest, schemas, hooks and tests as one contract: every drift between them is reported by name.

The runtime calls :func:`check_contract` at start-up (once per distinct effective manifest) and refuses to start on
any problem. The test suite calls it with ``repo_checks=True``, which also needs the checkout: every action has a test
named after it and a README entry whose JSON example validates, and (given the run ledger) every action ran
successfully through ``run_action`` and was refused once with an input error during the suite.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from connector.hookspecs import ACTION_ARGNAMES, validator_hook
from connector.plugins import BUILTIN

if TYPE_CHECKING:
    from pluggy import HookCaller

    from connector.runtime import Runtime

_RUNTIME_PLUGINS = {"connector.runtime.dispatch"}
#: The emulator serves on loopback; a run recorded against one of these hosts ran against it over a real socket.
_EMULATOR_HOSTS = {"127.0.0.1", "localhost", "::1"}


def check_contract(
    runtime: Runtime,
    *,
    repo_checks: bool = False,
    repo_root: Path | None = None,
    ledger: Iterable[dict[str, object]] | None = None,
) -> list[str]:
    """Every problem found, as sentences that name the action, schema or hook concerned."""
    problems: list[str] = list(runtime.manifest.problems)
    problems += _manifest_problems(runtime)
    problems += _schema_problems(runtime)
    problems += _action_hook_problems(runtime)
    problems += _trigger_hook_problems(runtime)
    problems += _unknown_hook_problems(runtime)
    problems += _example_problems(runtime)
    problems += _duplicate_problems(runtime)
    if repo_checks:
        problems += _repo_checks(runtime, repo_root or Path(__file__).resolve().parents[1], ledger)
    return problems


def _manifest_problems(runtime: Runtime) -> list[str]:
    """The effective manifest against its schema (provider keys are ours, added while merging)."""
    plain = json.loads(json.dumps(runtime.manifest.document))
    for entry in plain.get("actions", []):
        if isinstance(entry, dict):
            entry.pop("provider", None)
    return [f"manifest.json {p}" for p in runtime.store.validate(plain, "manifest.schema.json")]


def _schema_problems(runtime: Runtime) -> list[str]:
    """Every schema registered is a valid 2020-12 schema whose $refs resolve; every referenced schema exists."""
    store, manifest = runtime.store, runtime.manifest
    document = manifest.document
    problems: list[str] = []
    for sid in store.ids():
        problems += store.check(sid)
    referenced: list[tuple[str, str]] = []
    for kind in document.get("connections", []):
        referenced.append((f"connection {kind.get('kind')!r}", manifest.schema_id(BUILTIN, kind.get("schema", ""))))
    for info in manifest.actions.values():
        referenced += [(f"action {info.id!r}", info.input_schema), (f"action {info.id!r}", info.output_schema)]
    for trig in document.get("triggers", []):
        for key in ("config_schema", "payload_schema"):
            referenced.append((f"trigger {trig.get('id')!r}", manifest.schema_id(BUILTIN, trig.get(key, ""))))
    for source in document.get("data_sources", []):
        referenced.append((f"data source {source.get('name')!r}", manifest.schema_id(BUILTIN, source["params_schema"])))
    missing = {(who, sid) for who, sid in referenced if not store.has(sid)}
    return problems + [f"{who}: schema {sid} is missing" for who, sid in sorted(missing)]


def _action_hook_problems(runtime: Runtime) -> list[str]:
    """Hookspecs and implementations match the manifest: one spec and one implementation per action, no orphan."""
    manifest, pm = runtime.manifest, runtime.pm
    problems: list[str] = []
    action_ids = set(manifest.actions)
    spec_names = {
        name
        for name, caller in vars(pm.hook).items()
        if not name.startswith("_") and caller.spec is not None and caller.spec.argnames == ACTION_ARGNAMES
    }
    for orphan in sorted(spec_names - action_ids - {validator_hook(a) for a in action_ids}):
        problems.append(f"hook {orphan!r} has an action hookspec but no manifest entry")
    for action_id in sorted(action_ids):
        caller = getattr(pm.hook, action_id, None)
        if caller is None or caller.spec is None:
            problems.append(f"action {action_id!r} is in the manifest but has no hookspec")
            continue
        if caller.spec.argnames != ACTION_ARGNAMES:
            problems.append(
                f"action {action_id!r}: hookspec arguments are {caller.spec.argnames}, expected (inputs, connection)"
            )
        problems += _implementation_problems(runtime, action_id, caller)
    return problems


def _implementation_problems(runtime: Runtime, action_id: str, caller: HookCaller) -> list[str]:
    """Exactly one implementation runs the action; a pack implements a built-in only by declaring the override."""
    problems: list[str] = []
    builtin_plugins = _builtin_plugin_names()
    impls = [i for i in caller.get_hookimpls() if not (i.hookwrapper or i.wrapper)]
    providers = [i.plugin_name for i in impls]
    override = runtime.manifest.overrides.get(action_id)
    if override:
        providers = [p for p in providers if p == override or p not in builtin_plugins]
    if not providers:
        problems.append(f"action {action_id!r} has no implementation")
    elif len(providers) > 1:
        problems.append(f"action {action_id!r} has {len(providers)} implementations ({', '.join(providers)})")
    undeclared = [i.plugin_name for i in impls if i.plugin_name not in builtin_plugins]
    if runtime.manifest.actions[action_id].provider == BUILTIN and undeclared:
        problems.append(
            f"pack {undeclared[0]} implements built-in action {action_id!r} without declaring it in its "
            "fragment's overrides"
        )
    return problems


def _trigger_hook_problems(runtime: Runtime) -> list[str]:
    """Each trigger of the manifest has its three hooks, each with a spec and an implementation."""
    problems: list[str] = []
    for trig in runtime.manifest.document.get("triggers", []):
        for prefix in ("handle", "subscribe", "unsubscribe"):
            name = f"{prefix}_{trig.get('id')}"
            caller = getattr(runtime.pm.hook, name, None)
            if caller is None or caller.spec is None:
                problems.append(f"trigger {trig.get('id')!r}: hook {name!r} has no hookspec")
            elif not [i for i in caller.get_hookimpls() if not (i.hookwrapper or i.wrapper)]:
                problems.append(f"trigger {trig.get('id')!r}: hook {name!r} has no implementation")
    return problems


def _unknown_hook_problems(runtime: Runtime) -> list[str]:
    """An implementation whose hook has no spec: a typo, or an action or validator no manifest declares."""
    try:
        runtime.pm.check_pending()
    except Exception as exc:  # PluginValidationError names the plugin and the unknown hook
        return [f"unknown hook implementation: {exc}"]
    return []


def _example_problems(runtime: Runtime) -> list[str]:
    """Examples are what builders show: each must validate against its action's input schema."""
    store = runtime.store
    problems: list[str] = []
    for info in runtime.manifest.actions.values():
        if not store.has(info.input_schema):
            continue
        for n, example in enumerate(info.examples):
            for p in store.validate(example.get("input"), info.input_schema):
                problems.append(f"action {info.id!r} example {n} ({example.get('title')!r}) fails its schema: {p}")
    return problems


def _duplicate_problems(runtime: Runtime) -> list[str]:
    """No two actions share an id or a label, no two triggers an id, no two data sources a name."""
    document = runtime.manifest.document
    problems: list[str] = []
    for kind, key in (("actions", "id"), ("actions", "label"), ("triggers", "id"), ("data_sources", "name")):
        seen: set[str] = set()
        for entry in document.get(kind, []):
            value = entry.get(key)
            if value in seen:
                problems.append(f"{kind}: duplicate {key} {value!r}")
            seen.add(value)
    return problems


def _builtin_plugin_names() -> set[str]:
    from connector.plugins import DEFAULT_PLUGINS

    return set(DEFAULT_PLUGINS) | _RUNTIME_PLUGINS


def _repo_checks(runtime: Runtime, root: Path, ledger: Iterable[dict[str, object]] | None) -> list[str]:
    """Checks that need the checkout: a test per action, a README entry per action, and (given a ledger) runs."""
    problems: list[str] = []
    builtin_actions = sorted(a.id for a in runtime.manifest.actions.values() if a.provider == BUILTIN)
    test_sources = "\n".join(p.read_text(encoding="utf-8") for p in sorted((root / "tests").rglob("test_*.py")))
    readme = (root / "README.md").read_text(encoding="utf-8") if (root / "README.md").is_file() else ""
    sections = _readme_sections(readme)
    for action_id in builtin_actions:
        if not re.search(rf"def test_{action_id}(_\w+)?\(", test_sources):
            problems.append(f"action {action_id!r} has no test named test_{action_id}_*")
        body = sections.get(action_id)
        if body is None:
            problems.append(f"action {action_id!r} has no '### {action_id}' section in README.md")
            continue
        blocks = re.findall(r"```json\n(.*?)```", body, flags=re.S)
        if not blocks:
            problems.append(f"README '### {action_id}' has no ```json example")
        for block in blocks[:1]:
            try:
                example = json.loads(block)
            except ValueError as exc:
                problems.append(f"README '### {action_id}' example is not JSON: {exc}")
                continue
            info = runtime.manifest.actions[action_id]
            for p in runtime.store.validate(example, info.input_schema):
                problems.append(f"README '### {action_id}' example fails the input schema: {p}")
    if ledger is not None:
        runs = list(ledger)
        for action_id in builtin_actions:
            mine = [r for r in runs if r.get("action") == action_id]
            outcomes = {r.get("outcome") for r in mine}
            if not any(r.get("outcome") == "ok" and r.get("host") in _EMULATOR_HOSTS for r in mine):
                problems.append(
                    f"action {action_id!r} never ran successfully through run_action against the emulator in the suite"
                )
            if "input_error" not in outcomes:
                problems.append(f"action {action_id!r} was never refused with an input error in the suite")
    return problems


def _readme_sections(text: str) -> dict[str, str]:
    """``### <id>`` sections of the README, each up to the next heading of level 3 or higher."""
    out: dict[str, str] = {}
    parts = re.split(r"^(#{1,3}) (.+)$", text, flags=re.M)
    for i in range(1, len(parts) - 2, 3):
        level, title, body = parts[i], parts[i + 1].strip(), parts[i + 2]
        if level == "###":
            out[title.strip("`")] = body
    return out
