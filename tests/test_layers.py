"""The house's layering, read from the source: no import cycle anywhere in mergezoo, merge/
never imports eval/, zoo/ imports none of the other parts, and method definitions import no
accelerator code.

Every `mergezoo` import of every module is an edge (those inside functions too: a deferred
import is still a dependency), built with `ast` without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mergezoo

ROOT = Path(mergezoo.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _target(name: str) -> str | None:
    """The module an import of `name` loads last (a module, else its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports pkg.mod when it is a module, else pkg
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            target = _target(name) if name.startswith("mergezoo") else None
            if target and target != module:
                found.add(target)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles(nodes: set[str], graph: dict[str, set[str]] = GRAPH) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), among `nodes`."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v] & nodes:
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
                out.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_imports():
    """A check that the checker reads imports at all (else every test below passes)."""
    assert "mergezoo.merge.accel.kernels" in GRAPH["mergezoo.merge.engine"]
    assert "mergezoo.merge.spec" in GRAPH["mergezoo.merge.methods.task_vectors"]
    assert "mergezoo.merge.methods" in GRAPH["mergezoo.merge.registry"]


def test_the_cycle_finder_finds_cycles():
    fake = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(set(fake), fake) == [["a", "b", "c"]]


def test_no_import_cycle_anywhere_in_the_package():
    # Package __init__ modules included: they import their modules lazily or not at all.
    assert _cycles(set(MODULES)) == []


def test_merge_never_imports_eval_and_zoo_imports_no_other_part():
    for module, targets in GRAPH.items():
        if module.startswith("mergezoo.merge"):
            assert not [t for t in targets if t.startswith("mergezoo.eval")], module
        if module.startswith("mergezoo.zoo"):
            others = [t for t in targets if not t.startswith("mergezoo.zoo")
                      and t not in ("mergezoo", "mergezoo.errors")]
            assert others == [], module


def test_method_definitions_import_no_accelerator_code():
    for module, targets in GRAPH.items():
        if module.startswith("mergezoo.merge.methods"):
            assert not [t for t in targets if t.startswith("mergezoo.merge.accel")], module
