"""The effective manifest: the built-in ``manifest.json`` plus the fragments of loaded packs.

This is what the CLI, builders and the contract check see. A pack may replace a built-in action only by naming it in
its fragment's ``overrides``; anything else that collides is reported by name. Every problem is kept with its owner
(``builtin`` or the pack's name) so that the runtime can leave out the pack at fault and keep the others. Entries a
pack adds (actions, triggers, data sources) carry ``provider``: their schema paths are relative to that pack's folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connector.plugins import BUILTIN, Pack
from connector.schemas import SCHEMA_BASE, SchemaStore, load_json


@dataclass(frozen=True)
class ActionInfo:
    """One action of the effective manifest, with its schemas resolved to ``$id``s."""

    id: str
    label: str
    description: str
    category: str
    input_schema: str
    output_schema: str
    examples: tuple[Mapping[str, Any], ...]
    provider: str
    entry: Mapping[str, Any]


@dataclass
class EffectiveManifest:
    """Built-in manifest merged with pack fragments; ``problems`` lists what could not be merged, as (owner, sentence)
    pairs."""

    document: dict[str, Any]
    actions: dict[str, ActionInfo]
    overrides: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    schema_ids: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """A hash of the effective manifest, used to run the contract check once per distinct manifest."""
        return hashlib.sha256(json.dumps(self.document, sort_keys=True).encode()).hexdigest()

    def action(self, action_id: str) -> ActionInfo | None:
        return self.actions.get(action_id)

    def schema_id(self, provider: str, relpath: str) -> str:
        """The ``$id`` of a schema path as written in the manifest entry of ``provider``."""
        return self.schema_ids.get((provider, relpath), SCHEMA_BASE + relpath)


def build_manifest(packs: Sequence[Pack], store: SchemaStore) -> EffectiveManifest:
    """Merge the built-in manifest with the packs' fragments and register the packs' schemas in ``store``."""
    document = copy.deepcopy(load_json("manifest.json"))
    problems: list[tuple[str, str]] = []
    schema_ids: dict[tuple[str, str], str] = {}
    for entry in document.get("actions", []):
        entry["provider"] = BUILTIN
    builtin_ids = {a["id"] for a in document.get("actions", []) if isinstance(a, dict) and "id" in a}
    overrides: dict[str, str] = {}

    for pack in packs:
        if pack.fragment is None:
            continue
        fragment_problems = store.validate(pack.fragment, "manifest.schema.json#/$defs/fragment")
        if fragment_problems:
            problems += [(pack.name, f"pack {pack.name}: manifest fragment {p}") for p in fragment_problems]
            continue
        if pack.schemas_root is not None:
            folder_problems, added = store.add_folder(pack.schemas_root, base="")
            problems += [(pack.name, f"pack {pack.name}: {p}") for p in folder_problems]
            schema_ids.update({(pack.name, rel): sid for rel, sid in added.items()})
        declared = set(pack.fragment.get("overrides", []))
        for entry in pack.fragment.get("actions", []):
            entry = {**entry, "provider": pack.name}
            action_id = entry["id"]
            existing = [i for i, a in enumerate(document["actions"]) if a.get("id") == action_id]
            if existing:
                if action_id in builtin_ids and action_id in declared and action_id not in overrides:
                    document["actions"][existing[0]] = entry
                    overrides[action_id] = pack.name
                else:
                    owner = document["actions"][existing[0]].get("provider")
                    problems.append(
                        (
                            pack.name,
                            f"pack {pack.name}: action {action_id!r} is already provided by {owner}; "
                            "a pack may replace a built-in action only by listing it in its fragment's overrides",
                        )
                    )
                continue
            document["actions"].append(entry)
        for undeclared in sorted(declared - {e["id"] for e in pack.fragment.get("actions", [])}):
            problems.append((pack.name, f"pack {pack.name}: overrides {undeclared!r} but gives no action entry for it"))
        for key in ("triggers", "data_sources"):
            document.setdefault(key, []).extend({**e, "provider": pack.name} for e in pack.fragment.get(key, []))

    manifest = EffectiveManifest(document, {}, overrides, problems, schema_ids)
    for entry in document.get("actions", []):
        if not isinstance(entry, dict) or not {"id", "input_schema", "output_schema"} <= entry.keys():
            continue
        provider = entry.get("provider", BUILTIN)
        manifest.actions[entry["id"]] = ActionInfo(
            id=entry["id"],
            label=str(entry.get("label") or entry["id"]),
            description=entry.get("description", ""),
            category=entry.get("category", ""),
            input_schema=manifest.schema_id(provider, entry["input_schema"]),
            output_schema=manifest.schema_id(provider, entry["output_schema"]),
            examples=tuple(entry.get("examples", [])),
            provider=provider,
            entry=entry,
        )
    return manifest
