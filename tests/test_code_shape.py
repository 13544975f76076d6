"""The shape of connector/, actions/ and triggers/, read from the source with ``ast``.

The rules a reader relies on to change one module without reading the others: imports point down the layers drawn
in the README (plugins -> runtime -> operations -> kernel -> transport -> base); no module imports another module's
``_private`` name (shared code is public, with a name that says what it holds); there is no import cycle, eager or
lazy (an import inside a function counts: it hides the cycle, it does not remove it); no module is over 600 lines and
no function over 80, so each part can be read whole. Imports under
``if TYPE_CHECKING:`` never run and are left out. A package's ``__init__`` counts as a module of its own when a name
is imported from the package itself (``from connector import __version__``); the implicit import of a parent package
that Python performs for every submodule is not an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("connector", "actions", "triggers")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth, skipping ``if TYPE_CHECKING:`` bodies."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(child) if not isinstance(child, ast.Import | ast.ImportFrom) else [child]
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        else:
            yield from _imports(node)


def _resolve(module: str, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".")
    package = base if MODULES[module].name == "__init__.py" else base[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, node.module] if node.module else package)


def _edges(module: str) -> Iterator[tuple[str, str | None]]:
    """(imported project module, private name imported from it or None) for each import in ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, None
            continue
        source = _resolve(module, node)
        if source is None or source.split(".")[0] not in PACKAGES:
            continue
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in MODULES:
                yield submodule, alias.name if alias.name.startswith("_") else None
            elif source in MODULES:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                yield source, alias.name if private else None


GRAPH = {module: sorted({target for target, _ in _edges(module) if target != module}) for module in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted, for a readable failure."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return found


def test_the_walk_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    """The rules are only as good as the walk: a function-level import is an edge, a TYPE_CHECKING one is not."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from connector.connection import Connection\n"
        "def f():\n    from connector.paging import query\n"
    )
    names = [node.module for node in _imports(tree) if isinstance(node, ast.ImportFrom)]
    assert names == ["typing", "connector.paging"]


def test_no_import_cycle_inside_the_project() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_private_name_of_another(module: str) -> None:
    private = sorted({f"{target}.{name}" for target, name in _edges(module) if name and target != module})
    assert private == [], f"{module} imports private names of other modules: {private}"


#: The layers, lowest first; a module may import its own layer and those below. A new module must be placed here.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "errors",
            "version",
            "clock",
            "ids",
            "secret",
            "policy",
            "strict_json",
            "csdl",
            "inputs",
            "odata",
            "multipart",
            "schemas",
            "progress",
        ),
    ),
    (
        "transport",
        ("transport", "api_errors", "governor", "governor_shared", "client", "token_store", "auth", "auth.*"),
    ),
    ("sign-in", ("connection_fields", "identity_pool")),  # under the kernel: what a connection signs in as
    ("kernel", ("metadata", "connection_config", "connection", "problems", "addressing", "body", "written")),
    (
        "operations",
        (
            "records",
            "associations",
            "files",
            "record_ops",
            "paging",
            "batch",
            "bulk",
            "bulk_chunks",
            "bulk_reads",
            "bulk_plan",
            "bulk_run",
            "bulk_remove",
            "bulk_support",
            "fetchxml",
            "raw",
            "polling",
            "metadata_reads",
            "metadata_writes",
            "metadata_checks",
            "builder_sources",
            "messages",
            "message_schema",
            "webhook_delivery",
            "webhook_dedupe",
            "webhook_registration",
            "diagnostics",
        ),
    ),
    ("sync", ("sync", "sync.*")),
    (
        "runtime",
        (
            "hookspecs",
            "plugins",
            "manifest",
            "schema_links",
            "contract",
            "contract_cache",
            "context",
            "runtime",
            "runtime_triggers",
            "runtime_async",
        ),
    ),
    (
        "front doors",
        (
            "",
            "cli",
            "cli_help",
            "cli_progress",
            "cli_inputs",
            "cli_sync",
            "cli_sync_more",
            "cli_trigger",
            "cli_webhook",
            "cli_serve",
            "serve_app",
            "serve_auth",
            "serve_connections",
            "serve_jobs",
            "serve_openapi",
            "serve_problems",
            "demo",
            "webhook_server",
        ),
    ),
)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _layer(module: str) -> int:
    if module.startswith(("actions", "triggers")):
        return len(LAYERS)
    name = module.removeprefix("connector").removeprefix(".")
    for index, (_, members) in enumerate(LAYERS):
        if name in members or any(m.endswith(".*") and name.startswith(m[:-1]) for m in members):
            return index
    raise AssertionError(f"{module} has no layer: place it in LAYERS (tests/test_code_shape.py) and the README")


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0] if _layer(module) < len(LAYERS) else 'plugins'}) imports {target} "
        f"({LAYERS[_layer(target)][0]})"
        for module, targets in sorted(GRAPH.items())
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_module_over_600_lines_and_no_function_over_80() -> None:
    too_long = []
    for module, path in sorted(MODULES.items()):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{module}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert too_long == []
