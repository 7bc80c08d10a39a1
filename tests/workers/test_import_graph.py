"""No import cycles among the modules of ``workers``, lazy (function-level) imports included.

import-linter's ``acyclic_siblings`` contract (pyproject.toml) compares siblings; this test also
sees a module that imports its own package back (``from workers import cli`` in
``workers/cli/fleet.py``, the cycle this layout removed), because it walks the module graph itself.
"""

from __future__ import annotations

import grimp
import pytest


def import_cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)
    among ``package``'s modules: each is a set of modules that import each other in a ring.

    Tarjan's algorithm (Tarjan, "Depth-first search and linear graph algorithms", 1972), iterative.
    """
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    inside = set(modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & inside) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in modules:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if child < len(edges[node]):
                work.append((node, child + 1))
                target = edges[node][child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    cycles.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return cycles


def describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """The imports that tie a cycle's modules together, with their lines."""
    members = set(cycle)
    lines = []
    for importer in cycle:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                lines.append(f"  {importer}:{detail['line_number']} {detail['line_contents']}")
    return "\n".join(lines)


def test_workers_has_no_import_cycle() -> None:
    graph = grimp.build_graph("workers", cache_dir=None)
    assert "workers.cli.fleet" in graph.modules  # the graph is the package's, not an empty one
    cycles = import_cycles(graph, "workers")
    assert cycles == [], "import cycles in workers:\n" + "\n\n".join(describe(graph, c) for c in cycles)


@pytest.mark.parametrize(
    ("imports", "expected"),
    [
        ({}, []),
        ({"p.a": {"p.b"}, "p.b": {"p.c"}}, []),
        ({"p.a": {"p.b"}, "p.b": {"p.a"}}, [["p.a", "p.b"]]),
        ({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}, [["p.a", "p.b", "p.c"]]),
        ({"p.x": {"p"}, "p": {"p.x"}}, [["p", "p.x"]]),  # a module importing its own package back
        ({"p.a": {"q.b"}, "q.b": {"p.a"}}, []),  # a ring through another package is not p's
    ],
)
def test_import_cycles_finds_rings(imports: dict[str, set[str]], expected: list[list[str]]) -> None:
    graph = grimp.ImportGraph()
    graph.add_module("p")
    for importer, imported_modules in imports.items():
        for imported in imported_modules:
            graph.add_import(importer=importer, imported=imported, line_number=1, line_contents="import")
    assert import_cycles(graph, "p") == expected
