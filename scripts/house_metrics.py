"""The house's figures (issue 12): lines of edgeformer/, import cycles between its modules
(any import, module level or in a function), function-local imports in perf/, and
private names imported across modules.

    python scripts/house_metrics.py
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "edgeformer"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, here: str, modules: set[str]) -> tuple[set[str], int]:
    """(edgeformer modules `tree` imports, count of private names it imports from others)."""
    targets: set[str] = set()
    private = 0
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeformer"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            private += sum(a.name.startswith("_") and not a.name.startswith("__") and node.module != here
                           for a in node.names)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("edgeformer")]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != here:
                targets.add(name)
    return targets, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p): p for p in files}
    graph: dict[str, set[str]] = defaultdict(set)
    private = local_perf = 0
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        graph[name], n_private = imports(tree, name, set(modules))
        private += n_private
        if name.startswith("edgeformer.perf"):
            local_perf += sum(isinstance(node, (ast.Import, ast.ImportFrom))
                              for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                              for node in ast.walk(fn))
    groups = cycles(graph)
    print(f"lines {sum(len(p.read_text().splitlines()) for p in files)} in {len(files)} files")
    print(f"import cycles: {len(groups)} groups, {sum(map(len, groups))} modules")
    for g in groups:
        print("  " + " <-> ".join(m.removeprefix("edgeformer.") for m in g))
    print(f"function-local imports in perf/: {local_perf}")
    print(f"private names imported across modules: {private}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
