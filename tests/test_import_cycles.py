"""The package has no import cycle (module-level or inside functions) beyond those listed."""

from __future__ import annotations

import ast
from pathlib import Path

import mergezoo

# Cycles that other work in flight removes (issue 12: the method layer's registry <-> methods
# and kernels <-> kernel_code). Empty this list as
# each goes; the test fails on any cycle not listed, and on a listed one that is gone.
KNOWN = [
    {"mergezoo.merge.kernel_code", "mergezoo.merge.kernels"},
    {"mergezoo.merge.registry", "mergezoo.merge.methods", "mergezoo.merge.global_trim",
     *(f"mergezoo.merge.methods.{m}" for m in (
         "average", "breadcrumbs", "consensus", "dare", "della", "model_stock", "slerp",
         "task_arithmetic", "ties"))},
]


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the mergezoo modules it imports}; `from pkg import sub` counts as pkg.sub."""
    files = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in files.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.split(".")[0] == "mergezoo":
                subs = [f"{node.module}.{a.name}" for a in node.names
                        if f"{node.module}.{a.name}" in files]
                deps.update(subs)
                if len(subs) < len(node.names):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "mergezoo")
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(comp)
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on:
                low[v] = min(low[v], index[child])
    return found


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [{"a", "b", "c"}]


def test_no_import_cycle_beyond_the_known_ones():
    found = cycles(import_graph(Path(mergezoo.__file__).parent))
    assert sorted(map(sorted, found)) == sorted(map(sorted, KNOWN))
    assert not any({"mergezoo.merge.lora", "mergezoo.merge.sources"} <= c for c in found)
