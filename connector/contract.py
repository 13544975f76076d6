"""Manifest, schemas, hooks and tests as one contract: every drift between them is reported by name.

The runtime calls :func:`contract_problems` at start-up (once per distinct effective manifest). Every problem has an
owner: ``builtin`` (our bug: the runtime refuses to start) or the pack at fault, which the runtime leaves out so that
it fails alone. A pack can break the contract only through what it adds, so its problems are found where it added
something: the schemas it registered, the entries of its fragment (``provider``), the hookspecs it declared, the
implementations it registered. The test suite calls :func:`check_contract` with ``repo_checks=True``, which also needs
the checkout: every action has a test named after it and a README entry whose JSON example validates, and (given the
run ledger) every action ran successfully through ``run_action`` and was refused once with an input error.

Categories and trigger types are open to packs (``manifest.schema.json`` accepts any snake_case word), while built-in
entries must use the known values the schema lists, so builders can rely on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.errors import ContractError
from connector.hookspecs import ACTION_ARGNAMES, VALIDATOR_ARGNAMES, trigger_hook_names, validator_hook
from connector.plugins import BUILTIN
from connector.schema_links import link_problems

if TYPE_CHECKING:
    from pluggy import HookCaller

    from connector.runtime import Runtime

_RUNTIME_PLUGINS = {"connector.runtime.dispatch"}
#: The emulator serves on loopback; a run recorded against one of these hosts ran against it over a real socket.
_EMULATOR_HOSTS = {"127.0.0.1", "localhost", "::1"}
#: Hookspec shapes of an action: the generated one, and ``(inputs, connection)`` a pack may still declare itself.
_ACTION_SHAPES = (ACTION_ARGNAMES, VALIDATOR_ARGNAMES)
#: One problem and who must fix it: ``builtin`` or a pack's name.
Owned = tuple[str, str]


def check_contract(
    runtime: Runtime,
    *,
    repo_checks: bool = False,
    repo_root: Path | None = None,
    ledger: Iterable[dict[str, object]] | None = None,
) -> list[str]:
    """Every problem found, as sentences that name the action, schema or hook concerned."""
    found = contract_problems(runtime, repo_checks=repo_checks, repo_root=repo_root, ledger=ledger)
    return [problem for problems in found.values() for problem in problems]


def contract_problems(
    runtime: Runtime,
    *,
    repo_checks: bool = False,
    repo_root: Path | None = None,
    ledger: Iterable[dict[str, object]] | None = None,
) -> dict[str, list[str]]:
    """Every problem found, by owner (``builtin`` or a pack's name); empty when the contract holds."""
    found: list[Owned] = list(runtime.manifest.problems)
    found += _manifest_problems(runtime)
    found += _vocabulary_problems(runtime)
    found += _schema_problems(runtime)
    found += _action_hook_problems(runtime)
    found += _trigger_hook_problems(runtime)
    found += _unknown_hook_problems(runtime)
    found += _example_problems(runtime)
    found += _form_problems(runtime)
    found += _options_link_problems(runtime)
    found += _duplicate_problems(runtime)
    if repo_checks:
        root = repo_root or Path(__file__).resolve().parents[1]
        found += [(BUILTIN, p) for p in _repo_checks(runtime, root, ledger)]
    by_owner: dict[str, list[str]] = {}
    for owner, problem in found:
        by_owner.setdefault(owner, []).append(problem)
    return by_owner


def _provider(entry: Any) -> str:
    return str(entry.get("provider", BUILTIN)) if isinstance(entry, dict) else BUILTIN


def _manifest_problems(runtime: Runtime) -> list[Owned]:
    """The effective manifest against its schema (provider keys are ours, added while merging)."""
    document = runtime.manifest.document
    plain = json.loads(json.dumps(document))
    for kind in ("actions", "triggers", "data_sources"):
        for entry in plain.get(kind, []):
            if isinstance(entry, dict):
                entry.pop("provider", None)
    found: list[Owned] = []
    for problem in runtime.store.validate(plain, "manifest.schema.json"):
        match = re.match(r"\$\.(actions|triggers|data_sources)\[(\d+)\]", problem.path)
        owner = _provider(document[match[1]][int(match[2])]) if match else BUILTIN
        found.append((owner, f"manifest.json {problem}"))
    return found


def _vocabulary_problems(runtime: Runtime) -> list[Owned]:
    """Built-in entries use the categories and trigger types the manifest schema lists as known; packs may add."""
    defs = runtime.store.get("manifest.schema.json")["$defs"]
    found: list[Owned] = []
    for kind, key, vocabulary in (("actions", "category", "category"), ("triggers", "type", "trigger_type")):
        known = next(option["enum"] for option in defs[vocabulary]["anyOf"] if "enum" in option)
        for entry in runtime.manifest.document.get(kind, []):
            if _provider(entry) == BUILTIN and entry.get(key) not in known:
                problem = f"built-in {kind[:-1]} {entry.get('id')!r}: {key} {entry.get(key)!r} is not one of {known}"
                found.append((BUILTIN, problem))
    return found


def _schema_problems(runtime: Runtime) -> list[Owned]:
    """Every schema registered is a valid 2020-12 schema whose $refs resolve; every referenced schema exists."""
    store, manifest = runtime.store, runtime.manifest
    document = manifest.document
    registered_by = {sid: provider for (provider, _), sid in manifest.schema_ids.items()}
    found: list[Owned] = []
    for sid in store.ids():
        found += [(registered_by.get(sid, BUILTIN), p) for p in store.check(sid)]
    referenced: list[tuple[str, str, str]] = []
    for kind in document.get("connections", []):
        sid = manifest.schema_id(BUILTIN, kind.get("schema", ""))
        referenced.append((BUILTIN, f"connection {kind.get('kind')!r}", sid))
    for info in manifest.actions.values():
        for sid in (info.input_schema, info.output_schema):
            referenced.append((info.provider, f"action {info.id!r}", sid))
    for trig in document.get("triggers", []):
        for key in ("config_schema", "payload_schema", "state_schema"):
            if key == "state_schema" and key not in trig:
                continue
            sid = manifest.schema_id(_provider(trig), trig.get(key, ""))
            referenced.append((_provider(trig), f"trigger {trig.get('id')!r}", sid))
    for source in document.get("data_sources", []):
        sid = manifest.schema_id(_provider(source), source.get("params_schema", ""))
        referenced.append((_provider(source), f"data source {source.get('name')!r}", sid))
    missing = {(owner, who, sid) for owner, who, sid in referenced if not store.has(sid)}
    return found + [(owner, f"{who}: schema {sid} is missing") for owner, who, sid in sorted(missing)]


def _action_hook_problems(runtime: Runtime) -> list[Owned]:
    """Hookspecs and implementations match the manifest: one spec and one implementation per action, no orphan."""
    manifest, pm = runtime.manifest, runtime.pm
    found: list[Owned] = []
    action_ids = set(manifest.actions)
    spec_callers = {
        name: caller
        for name, caller in vars(pm.hook).items()
        if not name.startswith("_") and caller.spec is not None and caller.spec.argnames in _ACTION_SHAPES
    }
    for orphan in sorted(set(spec_callers) - action_ids - {validator_hook(a) for a in action_ids}):
        spec = spec_callers[orphan].spec
        owner = _spec_owner(runtime, spec.namespace if spec is not None else None)
        found.append((owner, f"hook {orphan!r} has an action hookspec but no manifest entry"))
    for action_id in sorted(action_ids):
        provider = manifest.actions[action_id].provider
        caller = getattr(pm.hook, action_id, None)
        if caller is None or caller.spec is None:
            found.append((provider, f"action {action_id!r} is in the manifest but has no hookspec"))
            continue
        if caller.spec.argnames not in _ACTION_SHAPES:
            problem = (
                f"action {action_id!r}: hookspec arguments are {caller.spec.argnames}, expected "
                "(inputs, connection, context) or (inputs, connection)"
            )
            found.append((provider, problem))
        found += _implementation_problems(runtime, action_id, caller)
    return found


def _spec_owner(runtime: Runtime, namespace: object) -> str:
    """The pack whose ``d365_hookspecs`` declared a spec; generated and runtime specs are built-in."""
    return next((p.name for p in runtime.packs if namespace in p.hookspecs), BUILTIN)


def _implementation_problems(runtime: Runtime, action_id: str, caller: HookCaller) -> list[Owned]:
    """Exactly one implementation runs the action; a pack implements a built-in only by declaring the override.

    When several implement it, those other than the action's provider are at fault."""
    found: list[Owned] = []
    builtin_plugins = _builtin_plugin_names()
    provider = runtime.manifest.actions[action_id].provider
    impls = [i for i in caller.get_hookimpls() if not (i.hookwrapper or i.wrapper)]
    providers = [i.plugin_name for i in impls]
    override = runtime.manifest.overrides.get(action_id)
    if override:
        providers = [p for p in providers if p == override or p not in builtin_plugins]
    if not providers:
        found.append((provider, f"action {action_id!r} has no implementation"))
    elif len(providers) > 1:
        problem = f"action {action_id!r} has {len(providers)} implementations ({', '.join(providers)})"
        culprits = [p for p in providers if p != provider and p not in builtin_plugins] or [provider]
        found += [(culprit, problem) for culprit in culprits]
    if provider == BUILTIN:
        for pack in dict.fromkeys(i.plugin_name for i in impls if i.plugin_name not in builtin_plugins):
            problem = (
                f"pack {pack} implements built-in action {action_id!r} without declaring it in its fragment's overrides"
            )
            found.append((pack, problem))
    return found


def _trigger_hook_problems(runtime: Runtime) -> list[Owned]:
    """Each trigger of the manifest has the hooks of its type (three for a webhook, ``poll_<id>`` for polling), each
    with a spec and an implementation."""
    found: list[Owned] = []
    for trig in runtime.manifest.document.get("triggers", []):
        for name in trigger_hook_names(str(trig.get("id")), str(trig.get("type"))):
            caller = getattr(runtime.pm.hook, name, None)
            if caller is None or caller.spec is None:
                found.append((_provider(trig), f"trigger {trig.get('id')!r}: hook {name!r} has no hookspec"))
            elif not [i for i in caller.get_hookimpls() if not (i.hookwrapper or i.wrapper)]:
                found.append((_provider(trig), f"trigger {trig.get('id')!r}: hook {name!r} has no implementation"))
    return found


def _unknown_hook_problems(runtime: Runtime) -> list[Owned]:
    """An implementation whose hook has no spec: a typo, or an action or validator no manifest declares.

    Every one is reported with its plugin (pluggy's ``check_pending`` stops at the first)."""
    packs = {p.name for p in runtime.packs}
    found: list[Owned] = []
    for name, caller in sorted(vars(runtime.pm.hook).items()):
        if name.startswith("_") or caller.spec is not None:
            continue
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                owner = impl.plugin_name if impl.plugin_name in packs else BUILTIN
                found.append((owner, f"unknown hook implementation: {name!r} in plugin {impl.plugin_name}"))
    return found


def _example_problems(runtime: Runtime) -> list[Owned]:
    """Examples are what builders show: each must validate against its action's input schema."""
    store = runtime.store
    found: list[Owned] = []
    for info in runtime.manifest.actions.values():
        if not store.has(info.input_schema):
            continue
        for n, example in enumerate(info.examples):
            for p in store.validate(example.get("input"), info.input_schema):
                problem = f"action {info.id!r} example {n} ({example.get('title')!r}) fails its schema: {p}"
                found.append((info.provider, problem))
    return found


#: What a form renderer cannot draw: it reads neither (a choice between inputs is a titled ``oneOf`` instead).
_UNRENDERED = ("dependentSchemas", "dependentRequired")
#: JSON types a person types a value of, so the form shows an example of one; booleans and titled choices need none.
_TYPED = frozenset({"string", "number", "integer", "object", "array"})
#: Keywords whose value is data: an ``enum`` or ``properties`` key inside them is not a schema's.
_DATA = frozenset({"const", "default", "enum", "examples"})


def _form_problems(runtime: Runtime) -> list[Owned]:
    """Each action's input schema, as served (bundled), renders as a form a builder can fill without guessing.

    Every input property has a title and a description, every typed one examples; every choice of values has a
    title per value; no keyword a form renderer ignores decides what is valid.
    """
    found: list[Owned] = []
    for info in runtime.manifest.actions.values():
        if not runtime.store.has(info.input_schema):
            continue
        try:
            bundle = runtime.store.bundled(info.input_schema)
        except ContractError:
            continue  # an unresolvable $ref is already reported with the schema's own problems
        for problem in form_problems(bundle):
            found.append((info.provider, f"action {info.id!r} input {problem}"))
    return found


def form_problems(schema: Mapping[str, Any]) -> list[str]:
    """What keeps one self-contained input schema from rendering as a form, each at the place to fix."""
    found: list[str] = []
    for path, node in _subschemas(schema, "$"):
        if "enum" in node:
            found.append(f"{path}: a bare enum; give each value a title (oneOf of const + title)")
        found += [
            f"{path}: {key} is not rendered by form builders; use titled oneOf branches"
            for key in _UNRENDERED
            if key in node
        ]
        properties = node.get("properties")
        for name, prop in properties.items() if isinstance(properties, Mapping) else ():
            here, merged = f"{path}.{name}", _merged(prop)
            for key in ("title", "description"):
                if not merged.get(key):
                    found.append(f"{here}: has no {key}")
            if _typed(merged) and not merged.get("examples"):
                found.append(f"{here}: has no examples")
    return found


def _subschemas(node: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema object inside ``node`` with a readable path: ``.name`` for a property, ``[]`` for items."""
    if not isinstance(node, Mapping):
        return
    yield path, node
    for key, value in node.items():
        if key in _DATA:
            continue
        if key == "properties" and isinstance(value, Mapping):
            for name, sub in value.items():
                yield from _subschemas(sub, f"{path}.{name}")
        elif key == "items":
            yield from _subschemas(value, f"{path}[]")
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                yield from _subschemas(sub, f"{path}/{key}[{i}]")
        elif isinstance(value, Mapping):
            yield from _subschemas(value, f"{path}/{key}")


def _merged(node: Any) -> dict[str, Any]:
    """A property with its ``allOf`` parts (what a bundled ``$ref`` with constraints beside it becomes) read as one."""
    if not isinstance(node, Mapping):
        return {}
    out: dict[str, Any] = {}
    for part in node.get("allOf", []):
        out.update(_merged(part))
    out.update({k: v for k, v in node.items() if k != "allOf"})
    return out


def _typed(node: Mapping[str, Any]) -> bool:
    """A value a person types: a typed one that is not a titled choice of constants."""
    branches = node.get("oneOf")
    if "const" in node or (
        isinstance(branches, list) and all(isinstance(b, Mapping) and "const" in b for b in branches)
    ):
        return False
    declared = node.get("type")
    kinds = {declared} if isinstance(declared, str) else set(declared) if isinstance(declared, list) else set()
    return bool(kinds & _TYPED) or (not kinds and isinstance(branches, list))


def _options_link_problems(runtime: Runtime) -> list[Owned]:
    """Every ``x-d365-options`` link of an input or data source parameters schema resolves (see
    :mod:`connector.schema_links`); the entry whose schema holds a broken link is at fault."""
    manifest, store = runtime.manifest, runtime.store
    declared = manifest.document.get("data_sources", [])
    sources = {str(s.get("name")): manifest.schema_id(_provider(s), s.get("params_schema", "")) for s in declared}
    owned = [(info.provider, f"action {info.id!r}", info.input_schema) for info in manifest.actions.values()]
    owned += [(_provider(s), f"data source {s.get('name')!r}", sources[str(s.get("name"))]) for s in declared]
    found: list[Owned] = []
    for owner, who, sid in owned:
        if store.has(sid):
            found += [(owner, f"{who} input {problem}") for problem in link_problems(store, sid, sources)]
    return found


def _duplicate_problems(runtime: Runtime) -> list[Owned]:
    """No two actions share an id or a label, no two triggers an id, no two data sources a name. A pack clashing with
    a built-in is at fault; two packs clashing are both at fault (which one was installed first says nothing about
    which one is right), and each message names the other."""
    document = runtime.manifest.document
    found: list[Owned] = []
    for kind, key in (("actions", "id"), ("actions", "label"), ("triggers", "id"), ("data_sources", "name")):
        first: dict[str, str] = {}
        for entry in document.get(kind, []):
            value, owner = entry.get(key), _provider(entry)
            if value not in first:
                first[value] = owner
                continue
            other = first[value]
            found.append((owner, f"{kind}: duplicate {key} {value!r} (also declared by {other})"))
            if other != BUILTIN and other != owner:
                found.append((other, f"{kind}: duplicate {key} {value!r} (also declared by {owner})"))
    return found


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
        schema = runtime.manifest.actions[action_id].input_schema
        problems += _readme_example(runtime, sections, f"action {action_id!r}", action_id, schema, "input schema")
    for trig in runtime.manifest.document.get("triggers", []):
        tid = trig.get("id")
        polling_builtin = trig.get("type") == "polling" and _provider(trig) == BUILTIN
        if polling_builtin and not re.search(rf"def test_{tid}(_\w+)?\(", test_sources):
            problems.append(f"polling trigger {tid!r} has no test named test_{tid}_*")
        if polling_builtin:
            schema = str(trig.get("config_schema"))
            problems += _readme_example(
                runtime, sections, f"polling trigger {tid!r}", str(tid), schema, "config schema"
            )
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


def _readme_example(
    runtime: Runtime, sections: dict[str, str], what: str, title: str, schema: str, kind: str
) -> list[str]:
    """A ``### <title>`` README section whose first JSON example validates against ``schema``: people read the README
    before the form, so its example must be one the runtime accepts."""
    body = sections.get(title)
    if body is None:
        return [f"{what} has no '### {title}' section in README.md"]
    blocks = re.findall(r"```json\n(.*?)```", body, flags=re.S)
    if not blocks:
        return [f"README '### {title}' has no ```json example"]
    try:
        example = json.loads(blocks[0])
    except ValueError as exc:
        return [f"README '### {title}' example is not JSON: {exc}"]
    return [f"README '### {title}' example fails the {kind}: {p}" for p in runtime.store.validate(example, schema)]
