"""The layers: ``textenv`` never imports ``agents`` or ``benchmarks`` (not even inside a function), and the
module-level imports of ``textenv`` and ``agents`` form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("textenv", "agents")


def module_files(package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of ``package``."""
    out = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = {name: f for pkg in PACKAGES for name, f in module_files(pkg).items()}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported(module: str, tree: ast.AST, top_level_only: bool) -> list[tuple[str, int]]:
    """``(imported module, line)`` of ``tree``: every import, or only those that run at import time
    (module level, outside functions and ``if TYPE_CHECKING:``)."""
    package = module if MODULES.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if top_level_only and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_textenv_never_imports_agents_or_benchmarks():
    offenders = []
    for name, f in module_files("textenv").items():
        for target, line in imported(name, ast.parse(f.read_text()), top_level_only=False):
            if target.split(".")[0] in ("agents", "benchmarks"):
                offenders.append(f"{f.relative_to(ROOT)}:{line} imports {target}")
    assert not offenders, "textenv must not depend on the layers above it:\n" + "\n".join(offenders)


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, f in MODULES.items():
        targets = {t for t, _ in imported(name, ast.parse(f.read_text()), top_level_only=True)}
        graph[name] = {t for t in targets if t in MODULES and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert {"textenv.env", "agents.base", "agents.cli"} <= set(graph)
    assert "agents.contract" in graph["agents.base"]  # the graph sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_checks_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("import os\ndef f():\n    from agents import run\nif TYPE_CHECKING:\n    import agents.base\n")
    assert [t for t, _ in imported("textenv.x", tree, top_level_only=False)] == ["os", "agents.run", "agents.base"]
    assert [t for t, _ in imported("textenv.x", tree, top_level_only=True)] == ["os"]


def test_agents_use_the_vector_envs_public_api():
    """``agents`` and the learning benchmark read no ``.setup`` internals of the envs (see
    TextGenVectorEnv.max_new_tokens, vocab_size, pad_id, reward_model, sample_prompt)."""
    files = [*module_files("agents").values(), ROOT / "benchmarks" / "learning.py"]
    offenders = [f"{f.relative_to(ROOT)}:{node.lineno}" for f in files for node in ast.walk(ast.parse(f.read_text()))
                 if isinstance(node, ast.Attribute) and node.attr == "setup"]
    assert not offenders, offenders
