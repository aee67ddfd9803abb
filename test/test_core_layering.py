"""The core's layering, read from the source (AST, nothing imported): visloc_core imports nothing
from visloc_ros (ROS commands and benchmarks reach the CLI through entry points, see
visloc_core/plugins.py), and the imports inside visloc_core form no cycle (deferred ones included).

References: the import statements themselves; each check is also run on a small tree written here
that breaks the rule, so a checker that finds nothing cannot pass."""

from __future__ import annotations

import ast
import re
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "visloc_core"
# A string that IS a module path into visloc_ros (e.g. "visloc_ros.bench_node" handed to importlib);
# prose that mentions visloc_ros (docstrings, comments, error messages) is fine.
_ROS_MODULE_STRING = re.compile(r"visloc_ros(\.\w+)*(:\w+)?")


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (a package folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) of every import in a file, at module level or inside a function;
    ``from pkg import name`` also counts as pkg.name when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    nodes = list(ast.walk(tree))
    out = []
    for n in nodes:
        if isinstance(n, ast.Import):
            out += [(a.name, n.lineno) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            target = _resolve(module, is_package, n)
            out.append((target, n.lineno))
            out += [(f"{target}.{a.name}", n.lineno) for a in n.names if f"{target}.{a.name}" in known]
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body:
            first = n.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def ros_references(root: Path) -> list[str]:
    """'file:line what' for every import of visloc_ros (at any depth, module level or inside a
    function) and every string constant that is a visloc_ros module path."""
    found = []
    modules = _modules(root)
    for module, path in modules.items():
        rel = path.relative_to(root.parent)
        for target, line in _imports(module, path, set(modules)):
            if target == "visloc_ros" or target.startswith("visloc_ros."):
                found.append(f"{rel}:{line} imports {target}")
        tree = ast.parse(path.read_text(), str(path))
        skip = _docstrings(tree)
        for n in ast.walk(tree):
            is_text = isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
            if is_text and _ROS_MODULE_STRING.fullmatch(n.value.strip()):
                found.append(f"{rel}:{n.lineno} names the module {n.value.strip()!r}")
    return found


def import_cycles(root: Path) -> list[list[str]]:
    """Cycles of the import graph inside the package at ``root``, one per strongly connected
    component of more than one module. Deferred imports (inside a function) count too: a circle
    closed by a function-level import is still two modules that each need the other."""
    modules = _modules(root)
    graph = {
        m: sorted({t for t, _ in _imports(m, p, set(modules)) if t in modules and t != m}) for m, p in modules.items()
    }
    # Tarjan's strongly connected components (iterative)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            if i < len(graph[v]):
                work.append((v, i + 1))
                w = graph[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return cycles


def test_core_imports_nothing_from_visloc_ros() -> None:
    found = ros_references(CORE)
    assert not found, "visloc_core must not import visloc_ros (register through entry points):\n" + "\n".join(found)


def test_core_has_no_import_cycles() -> None:
    cycles = import_cycles(CORE)
    assert not cycles, "import cycles in visloc_core:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


def test_the_checks_find_what_they_look_for(tmp_path) -> None:
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": '"""Mentions visloc_ros.replay in prose: fine."""\n',
            "pkg/a.py": "from .b import thing\n",
            "pkg/b.py": "thing = 1\n\n\ndef g():\n    from . import a\n",  # a <-> b, closed in a function
            "pkg/c.py": "def f():\n    from .a import thing\n    import visloc_ros.replay\n",  # deferred imports
            "pkg/d.py": 'import pkg.c\nNAME = "visloc_ros.bench_node"\n# visloc_ros.x in a comment\n',
            "pkg/sub/__init__.py": "from ..d import NAME\n",
            "pkg/sub/e.py": "from .. import sub\nfrom visloc_ros.msg import X\n",
        },
    )
    assert import_cycles(pkg) == [["pkg.a", "pkg.b"]]
    found = ros_references(pkg)
    assert [f.split(" ", 1)[0] for f in found] == ["pkg/c.py:3", "pkg/d.py:2", "pkg/sub/e.py:2"], found
    assert "visloc_ros.msg" in found[2]
