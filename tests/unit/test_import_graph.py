"""The pack's import graph has no cycle, counting the imports made inside functions too (a lazy
import that closes a cycle still ties two modules into one), but not those for type checkers."""
from __future__ import annotations

import ast
from pathlib import Path

PACK = Path(__file__).resolve().parents[2]
PACKAGES = ("tpu_runtime", "tpu_nodes")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACK).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The pack modules ``module`` imports (``from . import x`` counts as importing ``x``)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] in PACKAGES:
                for alias in node.names:
                    child = f"{target}.{alias.name}"
                    found.add(child if child in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for package in PACKAGES for path in (PACK / package).rglob("*.py")}
    known = set(files)
    return {name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
            for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as a path (first module repeated at the end), or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_pack_has_no_import_cycle():
    graph = import_graph()
    assert "tpu_runtime.runtime" in graph and graph["tpu_runtime.runtime"], "the graph was read"
    assert find_cycle(graph) == []


def test_the_checker_finds_a_lazy_cycle_and_ignores_type_checking_imports():
    source_a = "def f():\n    from . import b\n"
    source_b = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\nfrom .c import x\n"
    known = {"tpu_runtime.a", "tpu_runtime.b", "tpu_runtime.c"}
    graph = {"tpu_runtime.a": _imports(ast.parse(source_a), "tpu_runtime.a", False, known),
             "tpu_runtime.b": _imports(ast.parse(source_b), "tpu_runtime.b", False, known),
             "tpu_runtime.c": _imports(ast.parse("from . import a\n"), "tpu_runtime.c", False, known)}
    assert graph["tpu_runtime.b"] == {"tpu_runtime.c"}
    assert find_cycle(graph) == ["tpu_runtime.a", "tpu_runtime.b", "tpu_runtime.c", "tpu_runtime.a"]
