"""The import graph of ``mmit``: no circle, and shared code never imports a family package.

Every ``import`` / ``from ... import`` statement counts, also those inside functions (a lazy import
still ties the modules together), except a module importing one of its own ancestor packages: Python
imports every ancestor package before the module anyway, so that edge adds no dependency (it is how
a package's ``__init__`` finishes registering its members). Families are reached from shared code only through the registry
(``mmit.families.FAMILIES``, loaded by ``importlib``), which is not an import statement.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mmit"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(name: str, modules: Set[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (``a.b.func`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> Dict[str, Set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")
                    up = up[:len(up) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                if t.startswith("mmit"):
                    r = _resolve(t, modules)
                    if r and r != mod and not mod.startswith(r + "."):
                        graph[mod].add(r)
    return graph


def family_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["mmit", "families"] and parts[2] != "base":
        return parts[2]
    return None


def test_shared_code_never_imports_a_family():
    bad = [(m, t) for m, ts in import_graph().items() for t in ts
           if family_of(t) is not None and family_of(m) != family_of(t)]
    assert not bad, f"imports into a family package from outside it: {sorted(bad)}"


def test_no_import_circle():
    graph = import_graph()
    state: Dict[str, int] = {}
    stack: List[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_the_checker_sees_family_imports():
    """Guard: the graph does contain the family-internal imports (so an empty result above means something)."""
    graph = import_graph()
    assert "mmit.families.llava.config" in graph["mmit.families.llava.family"]
    assert "mmit.families" in graph["mmit.config.schema"]
