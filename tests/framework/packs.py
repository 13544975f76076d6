"""Build real pack packages on disk (module, manifest fragment, schemas) for the plugin and contract tests."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

from connector.plugins import Pack, pack_from_module

SPEC_TEMPLATE = """
from connector.hookspecs import hookspec


class Specs:
{methods}
"""


def action_entry(
    action_id: str, *, example: dict[str, Any] | None = None, schema_dir: str = "actions"
) -> dict[str, Any]:
    """A manifest action entry whose schemas live in the pack's own schema folder."""
    return {
        "id": action_id,
        "label": action_id.replace("_", " ").capitalize(),
        "description": f"Test action {action_id}.",
        "category": "records",
        "input_schema": f"{schema_dir}/{action_id}.input.json",
        "output_schema": f"{schema_dir}/{action_id}.output.json",
        "examples": [{"title": "example", "input": example if example is not None else {"word": "hi"}}],
    }


def io_schemas(pack: str, action_id: str) -> dict[str, dict[str, Any]]:
    """Input ``{"word": string}`` and output ``{"echo": string}`` schemas for a test action."""
    base = f"https://packs.test/{pack}/actions/{action_id}"
    return {
        f"actions/{action_id}.input.json": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{base}.input.json",
            "title": "in",
            "description": "in",
            "type": "object",
            "required": ["word"],
            "properties": {
                "word": {
                    "title": "Word",
                    "description": "A word.",
                    "type": "string",
                    "maxLength": 10,
                    "examples": ["hi"],
                }
            },
            "additionalProperties": False,
        },
        f"actions/{action_id}.output.json": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{base}.output.json",
            "title": "out",
            "description": "out",
            "type": "object",
            "required": ["echo"],
            "properties": {"echo": {"title": "Echo", "description": "The word.", "type": "string"}},
        },
    }


def make_pack(
    root: Path,
    *,
    name: str,
    code: str = "",
    spec_ids: tuple[str, ...] = (),
    fragment: dict[str, Any] | None = None,
    schemas: dict[str, Any] | None = None,
) -> Pack:
    """Write a package ``<name>_<random>`` under ``root`` and import it as a pack."""
    package = f"{name}_{uuid.uuid4().hex[:8]}"
    pkg_dir = root / package
    pkg_dir.mkdir(parents=True)
    source = "from connector.hookspecs import hookimpl\n" + textwrap.dedent(code)
    if spec_ids:
        methods = "\n".join(
            f"    @hookspec(firstresult=True)\n    def {sid}(self, inputs, connection):\n        '''Test spec.'''\n"
            for sid in spec_ids
        )
        source += SPEC_TEMPLATE.format(methods=methods) + "\nd365_hookspecs = Specs\n"
    (pkg_dir / "__init__.py").write_text(source, encoding="utf-8")
    if fragment is not None:
        (pkg_dir / "d365_manifest.json").write_text(json.dumps(fragment), encoding="utf-8")
    for rel, schema in (schemas or {}).items():
        target = pkg_dir / "schemas" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(schema if isinstance(schema, str) else json.dumps(schema), encoding="utf-8")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    module = importlib.import_module(package)
    return pack_from_module(name, module)


def add_entry_point(root: Path, *, name: str, target: str, distribution: str = "d365-testpack") -> None:
    """Make ``root`` (once on ``sys.path``) hold an installed distribution whose ``d365_connector`` entry point
    ``name`` names ``target``: what ``pip install`` leaves in site-packages, without the install."""
    dist = root / f"{distribution.replace('-', '_')}-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(f"[d365_connector]\n{name} = {target}\n", encoding="utf-8")
