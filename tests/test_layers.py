"""The package's shape: subpackages in layers that import only downwards, and no import cycle."""

from __future__ import annotations

import pytest

from tests.conftest import PACKAGE, foldwise_imports, module_file

# Lowest first: a subpackage may import itself and those before it, never one after it.
LAYERS = ["core", "data", "reporting", "training", "inference", "live"]


def modules() -> list[str]:
    """Every module of the package but its top ``__init__``, as ``data.prepare``."""
    names = [".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in sorted(PACKAGE.rglob("*.py"))]
    return [n.removesuffix(".__init__") for n in names if n != "__init__"]


def graph() -> dict[str, set[str]]:
    return {name: foldwise_imports(module_file(name)) - {name} for name in modules()}


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports from a subpackage to one above it in LAYERS (or to one LAYERS does not know);
    ``__main__`` (``python -m foldwise``) is an entry point, like stages/: it may import any of them."""
    rank = {**{layer: i for i, layer in enumerate(LAYERS)}, "__main__": len(LAYERS)}
    return [f"{a} -> {b}" for a, targets in sorted(edges.items()) for b in sorted(targets)
            if rank.get(b.split(".")[0], len(LAYERS)) > rank.get(a.split(".")[0], -1)]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_package_top_level_is_its_init_main_and_one_subpackage_per_layer():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert entries == sorted(["__init__.py", "__main__.py", *LAYERS]), entries
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)


def test_imports_between_subpackages_only_point_down():
    assert upward(graph()) == []


def test_no_module_imports_itself_through_others():
    assert find_cycle(graph()) is None


def test_the_checks_catch_what_they_guard_against():
    """The checkers on made-up graphs: a cycle inside one subpackage, and an upward import."""
    edges = {"data.a": {"data.b"}, "data.b": {"core.c", "data.a"}, "core.c": set()}
    assert find_cycle(edges) == ["data.a", "data.b", "data.a"]
    assert upward({"core.params": {"data.readers"}, "data.readers": {"core.params"}}) == ["core.params -> data.readers"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", [n for n in LAYERS])
def test_each_subpackage_docstring_maps_its_modules(name):
    """The subpackage's ``__init__`` is its map: it names every module in it, and holds no code."""
    import ast

    init = PACKAGE / name / "__init__.py"
    tree = ast.parse(init.read_text())
    doc = ast.get_docstring(tree) or ""
    assert len(tree.body) == 1, f"{init}: only a docstring"
    missing = [p.stem for p in (PACKAGE / name).glob("*.py") if p.stem != "__init__" and f"``{p.stem}``" not in doc]
    assert missing == [], f"{init} does not map {missing}"
