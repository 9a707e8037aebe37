"""The package's layers: the library (core, methods, attacks) never imports the stages or the command line,
methods and attacks never import each other, and no module imports itself back through a circle."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cdc"
# Layer -> the layers it may import (its own included). Core is every module outside the four subpackages.
ALLOWED = {
    "core": {"core"},
    "methods": {"core", "methods"},
    "attacks": {"core", "attacks"},
    "stages": {"core", "methods", "attacks", "stages"},
    "cli": {"core", "methods", "attacks", "stages", "cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    part = module.split(".")[1] if "." in module else ""
    return part if part in ALLOWED else "core"


def import_graph() -> dict[str, set[str]]:
    """Module -> the cdc modules it imports anywhere in its body (function-level imports included)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cdc":
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "cdc"]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(a, b) for a, targets in graph.items() for b in targets]


def test_no_import_circle():
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as err:
        pytest.fail("import circle: " + " -> ".join(err.args[1]))


def test_a_circle_is_found():
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"a"}}).prepare()


@pytest.mark.parametrize("source_layer", sorted(ALLOWED))
def test_imports_go_down(source_layer):
    graph = import_graph()
    bad = [f"{a} -> {b}" for a, b in edges(graph)
           if layer(a) == source_layer and layer(b) not in ALLOWED[source_layer]]
    assert not bad, f"{source_layer} imports outside {sorted(ALLOWED[source_layer])}: " + ", ".join(sorted(bad))


def test_graph_sees_the_layers():
    """The checks above look at real edges: the stages import methods, the CLI imports stages."""
    layers = {(layer(a), layer(b)) for a, b in edges(import_graph())}
    assert {("stages", "methods"), ("cli", "stages"), ("methods", "core"), ("attacks", "core")} <= layers
