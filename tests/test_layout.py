"""The package's layout: no import cycles, and every import goes down the layers (a module never imports a
layer above its own; within one layer, packages do not import each other)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "robnets"

# Lower layers first. Attacks know only the model; the fast path knows the model, not the attacks.
LAYERS = [
    {"errors", "version"},
    {"io", "runtime", "distributed"},
    {"data"},
    {"models"},
    {"attacks", "acceleration"},
    {"config"},
    {"evaluation"},
    {"training"},
    {"search"},
    {"cli", "__main__", ""},  # "" is the package's __init__
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["robnets", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _import_graph() -> dict[str, set[str]]:
    """Module -> the robnets modules it imports (at any depth of its code, lazily imported ones included)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent) + ("." + base if base else "")
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles():
    graph = _import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, cycles


def test_imports_go_down_the_layers():
    graph = _import_graph()
    unknown = sorted({_package(m) for m in graph} - set(LAYER_OF))
    assert not unknown, f"packages missing from LAYERS: {unknown}"
    upward = []
    for module, deps in graph.items():
        here = _package(module)
        for dep in deps:
            there = _package(dep)
            top = LAYER_OF[here] == len(LAYERS) - 1  # the entry points may use each other
            if here != there and (LAYER_OF[there] > LAYER_OF[here] or
                                  (LAYER_OF[there] == LAYER_OF[here] and not top)):
                upward.append(f"{module} -> {dep}")
    assert not upward, upward


def test_measuring_tools_are_outside_the_installed_package():
    names = {path.stem for path in PACKAGE.rglob("*.py")}
    assert not names & {"benchmark", "traffic", "numerics", "sepconv_bench", "triton_static", "tuning"}
