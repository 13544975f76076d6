"""The emulator must not import the connector: a protocol misunderstanding must not hide in shared code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dataverse_emulator"
FORBIDDEN = ("connector", "actions", "triggers")


def test_emulator_imports_nothing_from_the_connector() -> None:
    offenders = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, "no emulator sources found"
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
