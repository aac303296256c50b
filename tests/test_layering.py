"""The package's imports form no circle and point only downward: every ``import`` / ``from ... import`` of a
``longctx_plugins`` module (at module level or inside a function) points at a module on the same floor or a lower one
(:data:`FLOORS`, the drawing in docs/design.md) that does not, directly or through others, import it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "longctx_plugins"
# Arrows kept only for deprecated names, each imported on access of the old name (module ``__getattr__``) and
# warning when it is: (from, to).
DEPRECATED_ALIASES = {("longctx_plugins.embedder", "longctx_plugins.shared")}
# The floors, lowest first; a module is on the floor of its longest listed prefix. docs/design.md draws the same.
FLOORS = [
    ("ops", "_checks", "_warn", "_compat", "_moved", "texts"),  # pure torch math; checks, warnings, versions, prose
    ("positions.catalog", "positions.rope_methods"),  # the method and model tables (no torch import)
    ("positions",),  # thin transformers adapters: RoPE types, RoPE config reading, APE tables
    ("attention",),  # the attentions on one plan per forward, one module per kernel backend
    ("registry",),  # register() / unregister()
    (
        "extension",
        "embedding",
        "embedder",
        "shared",
        "frameworks",
        "training",
        "diagnostics",
        "bundled",
        "distributed",
    ),  # what users call
    ("longembed",),  # the evaluator and its command
    ("",),  # the package itself: register on import, lazy public names
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + ".") and (name, t) not in DEPRECATED_ALIASES:
                    graph[name].add(t)  # (a package's own __init__ is not an arrow)
    return graph


def _cycle(graph):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_circle():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_shared_embedders_moved_with_a_deprecation_alias():
    import longctx_plugins.embedder as embedder_module
    from longctx_plugins import shared

    with pytest.warns(DeprecationWarning, match="moved to longctx_plugins.shared.get_embedder"):
        assert embedder_module.get_embedder is shared.get_embedder


def _floor(module: str) -> int:
    name = module.removeprefix("longctx_plugins").removeprefix(".")
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + ".") or (prefix == "" and name == ""):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    assert best is not None, f"{module} is on no floor: add it to FLOORS and to docs/design.md"
    return best[0]


def test_imports_point_down():
    graph = _graph()
    up = [
        f"{a} (floor {_floor(a)}) -> {b} (floor {_floor(b)})"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if _floor(b) > _floor(a)
    ]
    assert not up, "imports pointing up: " + "; ".join(up)


def test_the_floor_check_can_fail():
    assert (
        _floor("longctx_plugins.ops.passes")
        < _floor("longctx_plugins.positions.rope")
        < _floor("longctx_plugins.attention.positional")
        < _floor("longctx_plugins.longembed.cli")
    )
    assert _floor("longctx_plugins.positions.catalog") < _floor("longctx_plugins.positions.rope_config")
