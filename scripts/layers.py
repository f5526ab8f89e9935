"""The layer check (issue 12): prints the size of each layer of edgeformer/ and its largest
files, then fails on any import that runs upward against the layer order.

The order is the block at the top of docs/ARCHITECTURE.md: its unindented lines name the
layers from top to bottom (`cli/`, `api.py`, ...), one per line; a module may import
only from its own layer and the layers under it. Every import counts, at module level,
inside a function or under `if TYPE_CHECKING:`: a type-only import still ties a lower
layer to a higher one (the lower layer can name a Protocol instead).

    python scripts/layers.py [ROOT]       # ROOT: the repository (default: this one)
"""
from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

LARGEST = 10                # how many of the largest files to list


def layer_order(doc: Path) -> list[str]:
    """Layer names, top first, from the first fenced block of ARCHITECTURE.md."""
    block = doc.read_text().split("```")[1]
    return [line.split()[0].removesuffix("/").removesuffix(".py") for line in block.splitlines()[1:]
            if line.strip() and not line[0].isspace()]


def layer_of(module: str) -> str:
    """'edgeformer.perf.roofline' -> 'perf'; the package itself -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_of(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, here: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, module) of every edgeformer import in `tree`, at any depth; for `from
    edgeformer import x` the module is `edgeformer.x`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "edgeformer")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                       # relative: resolve against this module's package
                pkg = here.split(".")[:len(here.split(".")) + is_package - node.level]
                base = ".".join(pkg + ([base] if base else []))
            if base == "edgeformer":
                yield from ((node.lineno, f"edgeformer.{a.name}") for a in node.names)
            elif base.split(".")[0] == "edgeformer":
                yield node.lineno, base


def check(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(violations as 'file:line: message', lines of each file by layer)."""
    package = root / "edgeformer"
    order = layer_order(root / "docs" / "ARCHITECTURE.md")
    rank = {name: i for i, name in enumerate(order)}
    bad: list[str] = []
    sizes: dict[str, list[tuple[Path, int]]] = {name: [] for name in order}
    for path in sorted(package.rglob("*.py")):
        here = module_of(path, package)
        text = path.read_text()
        src = layer_of(here)
        where = path.relative_to(root)
        if src not in rank:
            bad.append(f"{where}:1: layer {src!r} is not in the layer order of docs/ARCHITECTURE.md")
            continue
        sizes[src].append((where, len(text.splitlines())))
        for line, module in imported(ast.parse(text), here, path.name == "__init__.py"):
            dst = layer_of(module)
            if dst not in rank:
                bad.append(f"{where}:{line}: imports {module}, whose layer {dst!r} is not in the layer order")
            elif rank[dst] < rank[src]:
                bad.append(f"{where}:{line}: {src} imports {module}, from {dst}, a layer above it")
    return bad, sizes


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    bad, sizes = check(root)
    w = max(map(len, sizes)) + 2
    print(f"{'layer':<{w}}{'files':>6}{'lines':>8}")
    for name, files in sizes.items():
        print(f"{name:<{w}}{len(files):>6}{sum(n for _, n in files):>8}")
    files = sorted((f for fs in sizes.values() for f in fs), key=lambda f: -f[1])
    print(f"{'total':<{w}}{len(files):>6}{sum(n for _, n in files):>8}\n\nlargest files:")
    for path, n in files[:LARGEST]:
        print(f"{n:>6}  {path}")
    if bad:
        print(f"\n{len(bad)} imports against the layer order (docs/ARCHITECTURE.md):", file=sys.stderr)
        print("\n".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
