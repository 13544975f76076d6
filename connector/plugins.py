"""Building the plugin manager: built-in actions and triggers are plugins, packs arrive through entry points.

A pack is a module named by an entry point in the ``d365_connector`` group. It may carry:

* ``d365_hookspecs``: a class of hookspecs for the actions it adds (use :func:`connector.hookspecs.make_trigger_specs`
  for triggers);
* ``@hookimpl`` functions (the module itself is registered as the plugin);
* package data next to the module: ``d365_manifest.json`` (a manifest fragment) and a ``schemas/`` folder whose files
  carry their own ``$id``.

Entry points are loaded explicitly (``load_entrypoints``), never guessed from the environment of a test run, and packs
can be disabled by name (parameter or ``D365_CONNECTOR_DISABLED_PLUGINS``, comma-separated), as tox does.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from types import ModuleType
from typing import Any

import pluggy

from connector.errors import PluginError
from connector.hookspecs import PROJECT, ActionSpecs, RuntimeSpecs, WebhookSpecs

ENTRYPOINT_GROUP = "d365_connector"
DISABLED_ENV = "D365_CONNECTOR_DISABLED_PLUGINS"
TRACE_ENV = "D365_CONNECTOR_TRACE_PLUGINS"
BUILTIN = "builtin"

#: Built-in plugins, by module path; each module holds ``@hookimpl`` functions only.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "triggers.webhook",
    "actions.users",
    "actions.entities",
    "actions.metadata",
    "actions.batch",
    "actions.bulk",
    "actions.fetchxml",
    "actions.raw",
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


def discover_packs(disabled: Iterable[str] = ()) -> list[Pack]:
    """Import every pack declared in the entry-point group, skipping disabled names."""
    blocked = set(disabled)
    packs: list[Pack] = []
    for ep in sorted(metadata.entry_points(group=ENTRYPOINT_GROUP), key=lambda e: e.name):
        if ep.name in blocked:
            continue
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError([f"pack {ep.name}: cannot be imported from {ep.value!r} ({exc})"]) from exc
        if not isinstance(module, ModuleType):
            raise PluginError([f"pack {ep.name}: entry point {ep.value!r} must name a module"])
        dist = ep.dist.name if ep.dist is not None else None
        packs.append(pack_from_module(ep.name, module, dist))
    return packs


def make_plugin_manager(
    *,
    load_entrypoints: bool = True,
    disabled: Iterable[str] | None = None,
    extra_packs: Sequence[Pack] = (),
) -> tuple[pluggy.PluginManager, list[Pack]]:
    """A fresh plugin manager with the built-ins and the packs registered (specs before implementations)."""
    blocked = set(disabled) if disabled is not None else disabled_from_env()
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(ActionSpecs)
    pm.add_hookspecs(RuntimeSpecs)
    pm.add_hookspecs(WebhookSpecs)
    for path in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(path), name=path)
    packs = discover_packs(blocked) if load_entrypoints else []
    packs += [p for p in extra_packs if p.name not in blocked]
    for pack in packs:
        for specs in pack.hookspecs:
            pm.add_hookspecs(specs)
        try:
            pm.register(pack.module, name=pack.name)
        except pluggy.PluginValidationError as exc:
            raise PluginError([f"pack {pack.name}: {exc}"]) from exc
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(print)
        pm.enable_tracing()
    return pm, packs
