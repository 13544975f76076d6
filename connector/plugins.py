"""Building the plugin manager: built-in actions and triggers are plugins, packs arrive through entry points.

A pack is a module named by an entry point in the ``d365_connector`` group. It may carry:

* ``d365_hookspecs`` (optional): a class of hookspecs; the hooks of the actions in its fragment are generated from the
  effective manifest (:func:`connector.hookspecs.make_action_specs`), so a pack needs it only for triggers
  (:func:`connector.hookspecs.make_trigger_specs`) or to declare an action hook itself;
* ``@hookimpl`` functions (the module itself is registered as the plugin);
* package data next to the module: ``d365_manifest.json`` (a manifest fragment) and a ``schemas/`` folder whose files
  carry their own ``$id``.

Entry points are loaded explicitly (``load_entrypoints``), never guessed from the environment of a test run, and packs
can be disabled by name (parameter or ``D365_CONNECTOR_DISABLED_PLUGINS``, comma-separated), as tox does.

A pack that cannot be imported, whose fragment is not JSON, or whose implementations pluggy refuses is a problem of
that pack alone: the loaders return it by name, next to the packs that did load, and the runtime leaves it out (see
:meth:`connector.runtime.Runtime.check`) unless ``D365_STRICT_PACKS`` asks to fail fast.

Packs are loaded before the plugin manager is built because the action hookspecs come from the effective manifest,
which needs the packs' fragments; pluggy checks each implementation against its spec when it is registered, so every
spec is added before any plugin.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from types import ModuleType
from typing import Any

import pluggy

from connector.errors import PluginError
from connector.hookspecs import PROJECT, RecordsChangedSpecs, RuntimeSpecs, WebhookSpecs, make_action_specs

ENTRYPOINT_GROUP = "d365_connector"
DISABLED_ENV = "D365_CONNECTOR_DISABLED_PLUGINS"
TRACE_ENV = "D365_CONNECTOR_TRACE_PLUGINS"
#: When set to a true value, a broken pack stops the runtime (ContractError) instead of being left out: for CI.
STRICT_ENV = "D365_STRICT_PACKS"
BUILTIN = "builtin"

#: Built-in plugins, by module path; each module holds ``@hookimpl`` functions only.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "triggers.webhook",
    "triggers.records_changed",
    "actions.users",
    "actions.entities",
    "actions.metadata",
    "actions.batch",
    "actions.bulk",
    "actions.sync",
    "actions.fetchxml",
    "actions.raw",
    "actions.files",
    "actions.records_ops",
    "actions.messages",
)


@dataclass(frozen=True)
class Pack:
    """One loaded pack: its plugin module, manifest fragment and schema folder."""

    name: str
    module: ModuleType
    fragment: dict[str, Any] | None = None
    schemas_root: Traversable | None = None
    distribution: str | None = None
    hookspecs: Sequence[type] = field(default_factory=tuple)


def pack_from_module(name: str, module: ModuleType, distribution: str | None = None) -> Pack:
    """Read a pack's fragment and schema folder from the package that holds ``module``."""
    package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
    fragment: dict[str, Any] | None = None
    schemas_root: Traversable | None = None
    if package:
        base = resources.files(package)
        manifest_file = base / "d365_manifest.json"
        if manifest_file.is_file():
            try:
                fragment = json.loads(manifest_file.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise PluginError([f"pack {name}: d365_manifest.json is not valid JSON ({exc})"]) from exc
        if (base / "schemas").is_dir():
            schemas_root = base / "schemas"
    specs = getattr(module, "d365_hookspecs", ())
    if isinstance(specs, type):
        specs = (specs,)
    return Pack(name, module, fragment, schemas_root, distribution, tuple(specs))


def disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLED_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def strict_from_env() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes")


#: Packs that could not be loaded or registered, by name, each with its problems as sentences naming the pack.
BrokenPacks = dict[str, list[str]]


def discover_packs(disabled: Iterable[str] = ()) -> tuple[list[Pack], BrokenPacks]:
    """Import every pack declared in the entry-point group, skipping disabled names; one that fails is returned
    apart, so that it fails alone."""
    blocked = set(disabled)
    packs: list[Pack] = []
    broken: BrokenPacks = {}
    for ep in sorted(metadata.entry_points(group=ENTRYPOINT_GROUP), key=lambda e: e.name):
        if ep.name in blocked:
            continue
        try:
            module = ep.load()
        except Exception as exc:  # any error of a third-party import is that pack's problem, not ours
            broken[ep.name] = [f"pack {ep.name}: cannot be imported from {ep.value!r} ({exc})"]
            continue
        if not isinstance(module, ModuleType):
            broken[ep.name] = [f"pack {ep.name}: entry point {ep.value!r} must name a module"]
            continue
        dist = ep.dist.name if ep.dist is not None else None
        try:
            packs.append(pack_from_module(ep.name, module, dist))
        except PluginError as exc:
            broken[ep.name] = exc.problems
    return packs, broken


def load_packs(
    *, load_entrypoints: bool = True, disabled: Iterable[str] | None = None, extra_packs: Sequence[Pack] = ()
) -> tuple[list[Pack], BrokenPacks]:
    """The packs to load: entry points (when asked) and ``extra_packs``, minus the disabled names; and those that
    could not be loaded."""
    blocked = set(disabled) if disabled is not None else disabled_from_env()
    packs, broken = discover_packs(blocked) if load_entrypoints else ([], {})
    return packs + [p for p in extra_packs if p.name not in blocked], broken


def make_plugin_manager(packs: Sequence[Pack], actions: Mapping[str, str]) -> tuple[pluggy.PluginManager, BrokenPacks]:
    """A fresh plugin manager: every hookspec first (the packs' own, then the generated ones of ``actions``, id to
    description), then the built-ins and the packs as plugins; a pack whose implementations pluggy refuses is left
    unregistered and returned with the reason."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(RuntimeSpecs)
    pm.add_hookspecs(WebhookSpecs)
    pm.add_hookspecs(RecordsChangedSpecs)
    for pack in packs:
        for specs in pack.hookspecs:
            pm.add_hookspecs(specs)
    declared = {name for name, caller in vars(pm.hook).items() if caller.spec is not None}
    pm.add_hookspecs(make_action_specs(actions, declared))
    for path in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(path), name=path)
    refused: BrokenPacks = {}
    for pack in packs:
        try:
            pm.register(pack.module, name=pack.name)
        except pluggy.PluginValidationError as exc:  # pluggy validates every implementation before registering any
            refused[pack.name] = [f"pack {pack.name}: {exc}"]
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(print)
        pm.enable_tracing()
    return pm, refused
