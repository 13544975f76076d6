"""The shape of dataverse_emulator/, read from the source with ``ast``.

Why: handlers (``$batch``, bulk, FetchXML, metadata, files, aggregates) are given the request context and the record
API, and the dispatcher routes to them; if a handler imported the dispatcher back, one change would mean reading
both. So the arrows point one way: no import cycle, lazy imports included (an import inside a function hides a cycle,
it does not remove it); no module below the dispatcher names it even for type checking; no module over 800 lines.
Imports under ``if TYPE_CHECKING:`` never run and are left out of the cycle check only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dataverse_emulator"
MODULES = {path.stem: path for path in sorted(PACKAGE.glob("*.py"))}
#: The app assembly: the only modules that may import the dispatcher.
ASSEMBLY = {"dispatch", "admin", "app", "cli", "testing", "__init__", "__main__"}
MAX_LINES = 800


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _targets(node: ast.ImportFrom) -> list[str]:
    """Sibling modules named by a relative import (``from . import a`` or ``from .a import x``)."""
    if node.level != 1:
        return []
    if node.module:
        return [node.module.split(".")[0]]
    return [alias.name for alias in node.names]


def _edges(tree: ast.AST, runtime_only: bool) -> set[str]:
    found: set[str] = set()

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if runtime_only and _is_type_checking(child):
                for other in child.orelse:  # type: ignore[attr-defined]
                    walk(ast.Module(body=[other], type_ignores=[]))
                continue
            if isinstance(child, ast.ImportFrom):
                found.update(t for t in _targets(child) if t in MODULES)
            walk(child)

    walk(tree)
    return found


TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}
RUNTIME = {name: _edges(tree, runtime_only=True) - {name} for name, tree in TREES.items()}


def _cycle_from(start: str) -> list[str] | None:
    """A path start -> ... -> start through runtime imports, or None (depth-first)."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for target in RUNTIME[node]:
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_the_walk_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .dispatch import WebApi\n"
        "def f():\n    from .context import Ctx\n    from . import errors\n"
    )
    assert _edges(tree, runtime_only=True) == {"context", "errors"}
    assert _edges(tree, runtime_only=False) == {"context", "errors", "dispatch"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_cycle(module: str) -> None:
    assert _cycle_from(module) is None


@pytest.mark.parametrize("module", sorted(set(MODULES) - ASSEMBLY))
def test_handlers_never_import_the_dispatcher_or_the_app(module: str) -> None:
    upward = _edges(TREES[module], runtime_only=False) & {"dispatch", "admin", "app"}
    assert upward == set(), f"{module} imports {sorted(upward)}: depend on context / record_writes instead"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module}.py has {lines} lines; split it"
