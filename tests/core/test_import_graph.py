"""The pack's import graph has no cycle (a cycle only works while every import stays function-local or lucky).

Static: every module's ``import`` statements, function-local ones included, read with `ast`; an import of
``a.b.c`` also imports the packages ``a`` and ``a.b`` above it (unless the importer already lives inside them).
No ComfyUI needed; `tests/host/test_loaders.py` imports every module inside a real ComfyUI.
"""

from __future__ import annotations

import ast
import os

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("nodes", "moga_core")


def pack_modules(root: str = PACK_ROOT, packages=PACKAGES) -> dict[str, str]:
    """{dotted module name: file path} of every module of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for folder, _dirs, files in os.walk(os.path.join(root, package)):
            rel = os.path.relpath(folder, root).replace(os.sep, ".")
            for name in files:
                if name.endswith(".py"):
                    dotted = rel if name == "__init__.py" else f"{rel}.{name[:-3]}"
                    modules[dotted] = os.path.join(folder, name)
    return modules


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """{module: the pack modules it imports}, top-level or function-local, relative or absolute."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        package = name if is_package else name.rpartition(".")[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                targets.add(base_name)
                targets.update(f"{base_name}.{alias.name}" for alias in node.names)  # `from . import wiring`
        edges = set()
        own = set(_ancestors(name)) | ({name} if is_package else set())
        for target in targets:
            # the pack is imported as a package of its own inside ComfyUI: `..moga_core` from nodes/ is moga_core
            for candidate in [target, *_ancestors(target)]:
                if candidate in modules and candidate not in own and candidate != name:
                    edges.add(candidate)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_pack_has_no_import_cycle():
    modules = pack_modules()
    assert "nodes.patcher" in modules and "nodes.adapters.hunyuan" in modules and "moga_core.attention" in modules
    graph = import_graph(modules)
    assert "nodes.wiring" in graph["nodes.patcher"]  # the graph sees the pack's own imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_check_finds_a_function_local_cycle(tmp_path):
    """The cycle the pack once had: adapters/__init__ -> adapters/hunyuan -> shot_attention -> adapters."""
    pkg = tmp_path / "nodes"
    (pkg / "adapters").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "adapters" / "__init__.py").write_text("from .hunyuan import HunyuanVideoAdapter\n")
    (pkg / "adapters" / "hunyuan.py").write_text("def refine():\n    from ..shot_attention import plan_of\n")
    (pkg / "shot_attention.py").write_text("from .adapters import adapter_for_module\n")
    graph = import_graph(pack_modules(str(tmp_path), ("nodes",)))
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"nodes.adapters", "nodes.adapters.hunyuan", "nodes.shot_attention"}
