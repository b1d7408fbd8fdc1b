"""The package's shape: imports run one way between floors, no import loops, short files and functions.

Floors, bottom up (README, "Layout"): refine -> core -> data -> heads -> benchmarks, finetune -> commands (CLI).
Every import of a project module, at any depth of a file (lazy imports included), must go to the same or a lower
floor, and the file-level import graph must have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> installed package name (setup.cfg package_dir)
SOURCES = {"localize": "localize", "heads": "localize.heads", "refine": "localize.refine",
           "finetune": "localize.finetune", "benchmarks": "localize.benchmarks"}  # fmt: skip
NOT_INSTALLED = ("localize.benchmarks.shapes_tiny",)  # the embedded model's build and research scripts
FLOORS = [  # (floor, module prefixes); the longest matching prefix decides
    (0, ("localize.refine",)),
    (1, ("localize",)),
    (2, ("localize.data",)),
    (3, ("localize.heads",)),
    (4, ("localize.benchmarks", "localize.finetune")),
    (5, ("localize.commands", "localize.cli", "localize.__main__")),
]
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            if not name.startswith(NOT_INSTALLED):
                found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports (the deepest known module each import names)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in names:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
                break
    return targets


def _floor(module: str) -> int:
    best = max((p for _, ps in FLOORS for p in ps if module == p or module.startswith(p + ".")), key=len)
    return next(f for f, ps in FLOORS if best in ps)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_no_import_runs_up_a_floor(graph):
    back = [f"{a} (floor {_floor(a)}) -> {b} (floor {_floor(b)})" for a, bs in graph.items() for b in bs
            if _floor(b) > _floor(a)]  # fmt: skip
    sideways = [f"{a} -> {b}" for a, bs in graph.items() for b in bs
                if _floor(a) == _floor(b) == 4 and a.split(".")[1] != b.split(".")[1]]  # fmt: skip
    assert not back + sideways


def test_no_import_loop(graph):
    """Tarjan's strongly connected components: any with more than one module is a loop (a package's
    ``__init__`` counts as a module: a child importing its own package closes a loop)."""
    edges = graph
    index, low, stack, on, loops, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not loops


def test_files_and_functions_are_short():
    long_files, long_functions = [], []
    for folder in SOURCES:  # the installed packages and the not-installed scripts under benchmarks/
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            if len(text.splitlines()) > MAX_FILE_LINES:
                long_files.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())}")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {length}")
    assert not long_files and not long_functions, long_files + long_functions


def test_the_wheel_installs_only_localize():
    """setup.cfg lists only ``localize`` packages, maps every source folder under it and leaves shapes_tiny out."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    packages = config["options"]["packages"].split()
    mapping = dict(line.split(" = ") for line in config["options"]["package_dir"].strip().splitlines())
    assert packages and all(p == "localize" or p.startswith("localize.") for p in packages)
    assert {v: k for k, v in mapping.items()} == SOURCES
    inits = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert inits <= set(packages) and not any(p.startswith(NOT_INSTALLED) for p in packages), inits - set(packages)
