"""Print the package-level import graph of dicom_backup_dagster; exit 1 on a layering problem.

A "package" is the first name under dicom_backup_dagster (``dicom``, ``mosaiq``, ``config`` for
config.py, ...). Problems:
- a cycle between packages (two packages that import each other, directly or through others);
- dagster imported by a pure layer (dicom/, mosaiq/, backup/, notify/, rtrecord/).

Every module counts, ``__main__.py`` programs too, and every import, also one inside a function or
under ``if TYPE_CHECKING``.

Usage: python scripts/import_graph.py [path/to/dicom_backup_dagster]
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT_PACKAGE = "dicom_backup_dagster"
PURE = ("dicom", "mosaiq", "backup", "notify", "rtrecord")
Edge = tuple[str, str]


def _module_name(path: Path, root: Path) -> tuple[str, ...]:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(tree: ast.AST, module: tuple[str, ...], is_package: bool) -> list[tuple[str, int]]:
    """Absolute dotted names imported by one module, with their line numbers."""
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_package else module[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ((node.module,) if node.module else ()))
            else:
                prefix = node.module or ""
            # `from pkg import sub` may name a submodule: record pkg.sub, which maps to the same package.
            out.extend((f"{prefix}.{alias.name}", node.lineno) for alias in node.names)
    return out


def _package(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] != ROOT_PACKAGE or len(parts) < 2:
        return None
    return parts[1]


def scan(root: Path) -> tuple[dict[Edge, list[str]], list[str]]:
    """(package edge -> 'file:line' where it is imported, dagster imports found in pure layers)."""
    edges: dict[Edge, list[str]] = defaultdict(list)
    dagster_uses: list[str] = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        own = module[1] if len(module) > 1 else "(root)"
        where = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for dotted, line in _imports(tree, module, path.name == "__init__.py"):
            top = dotted.split(".")[0]
            if own in PURE and (top == "dagster" or top.startswith("dagster_")):
                dagster_uses.append(f"{where}:{line} imports {dotted}")
            target = _package(dotted)
            if target is not None and target != own and own != "(root)":
                spots = edges[(own, target)]
                if f"{where}:{line}" not in spots:
                    spots.append(f"{where}:{line}")
    return edges, dagster_uses


def cycles(edges: dict[Edge, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / ROOT_PACKAGE
    edges, dagster_uses = scan(root)
    targets: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        targets[a].add(b)
    print(f"package imports in {ROOT_PACKAGE}:")
    width = max((len(p) for p in targets), default=0)
    for package in sorted(targets):
        print(f"  {package:<{width}} -> {', '.join(sorted(targets[package]))}")
    problems = 0
    for component in cycles(edges):
        problems += 1
        print(f"CYCLE between {', '.join(component)}:")
        for (a, b), where in sorted(edges.items()):
            if a in component and b in component:
                print(f"  {a} -> {b}: {', '.join(where[:3])}{' ...' if len(where) > 3 else ''}")
    for use in dagster_uses:
        problems += 1
        print(f"DAGSTER in a pure layer ({', '.join(PURE)}): {use}")
    print("OK: no cycle, no dagster in the pure layers" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
