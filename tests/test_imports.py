"""The package's imports point one way (DESIGN.md): no cycle, not even through an import inside a
function, and no layer imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unflow_zoo"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()


def _target(name: str) -> str | None:
    """The module an imported dotted name lives in (``a.b.c`` may be a name in module ``a.b``)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def _imports(module: str) -> set[str]:
    """Every unflow_zoo module ``module`` imports, at the top or inside a function."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(t for n in names if n.startswith("unflow_zoo") and (t := _target(n)) and t != module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycle() -> list[str] | None:
    """One import cycle, as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return path[path.index(t) :] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_walk_sees_the_package() -> None:
    assert {"unflow_zoo.models.base", "unflow_zoo.pretrained.resolve", "unflow_zoo.core.flow"} <= set(MODULES)
    assert "unflow_zoo.models.registry" in GRAPH["unflow_zoo.pretrained.serialization"]
    assert "unflow_zoo.flows.maf" in GRAPH["unflow_zoo.models.maf"]
    assert "unflow_zoo.flows.validate" in GRAPH["unflow_zoo.flows.maf"]


def test_no_import_cycle() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# layer -> the layers it must never import (DESIGN.md: cli/commands -> studies, pretrained -> models
# -> flows -> transforms, nn -> core; data, metrics and plots never import a family)
FORBIDDEN = {
    "unflow_zoo.core": ("unflow_zoo.transforms", "unflow_zoo.nn", "unflow_zoo.flows", "unflow_zoo.models",
                        "unflow_zoo.data", "unflow_zoo.pretrained", "unflow_zoo.studies", "unflow_zoo.cli",
                        "unflow_zoo.commands"),
    "unflow_zoo.nn": ("unflow_zoo.transforms", "unflow_zoo.flows", "unflow_zoo.models", "unflow_zoo.pretrained",
                      "unflow_zoo.data"),
    "unflow_zoo.transforms": ("unflow_zoo.flows", "unflow_zoo.models", "unflow_zoo.pretrained", "unflow_zoo.data",
                              "unflow_zoo.studies"),
    "unflow_zoo.flows": ("unflow_zoo.models", "unflow_zoo.pretrained", "unflow_zoo.data", "unflow_zoo.studies",
                         "unflow_zoo.cli", "unflow_zoo.commands"),
    "unflow_zoo.models": ("unflow_zoo.pretrained", "unflow_zoo.cli", "unflow_zoo.commands", "unflow_zoo.studies"),
    "unflow_zoo.data": ("unflow_zoo.flows", "unflow_zoo.models", "unflow_zoo.pretrained", "unflow_zoo.studies",
                        "unflow_zoo.cli"),
    "unflow_zoo.metrics": ("unflow_zoo.flows", "unflow_zoo.models"),
    "unflow_zoo.plots": ("unflow_zoo.flows", "unflow_zoo.models"),
}  # fmt: skip


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_one_above_it(layer: str) -> None:
    bad = [
        f"{m} imports {t}"
        for m in GRAPH
        if m == layer or m.startswith(layer + ".")
        for t in GRAPH[m]
        if any(t == f or t.startswith(f + ".") for f in FORBIDDEN[layer])
    ]
    assert not bad, "; ".join(bad)
