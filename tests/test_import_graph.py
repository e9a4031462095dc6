"""The code's shape, checked from the source (AST, every import including function-level ones):

* no import cycle between modules of ``ranker/``, ``api/`` and ``pipelines/``;
* no two-way tie between packages of ``ranker/`` (if ``ranker.a`` imports ``ranker.b``, ``ranker.b``
  imports nothing of ``ranker.a``), and the layering of ARCHITECTURE.md: ``api`` never imports
  ``pipelines``, ``ranker`` neither ``api`` nor ``pipelines``, ``ranker.serving`` never
  ``ranker.training``;
* Feast's private API (and redis-py's ``Connection._sock``) is reached only through
  ``ranker/features/feast_compat.py`` (tests/test_feast_compat.py pins it).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ranker", "api", "pipelines")
COMPAT = "ranker/features/feast_compat.py"
# Feast names that are internals even without a leading underscore (wire details of the online layout).
FEAST_INTERNALS = {
    "compute_versioned_name",
    "compute_table_id",
    "serialize_entity_key",
    "serialize_entity_key_prefix",
    "repo_operations",
}
PRIVATE_ATTRIBUTES = {
    "_sock",
    "_get_provider",
    "_get_db_path",
    "_mmh3",
    "_versioned_fv_name",
    "_convert_arrow_to_proto",
    "_get_repo_contents",
    "_redis_key",
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, known: dict) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (a package's ``__init__`` when
    the name imported from it is not a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a module in a package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def _package(module: str) -> str:
    """``ranker.x`` for a module of ranker's sub-package x (or top-level module), else the top package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "ranker" and len(parts) > 1 else parts[0]


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    assert "ranker.serving.resp" in graph["ranker.serving.redis_reader"]  # imported inside __init__
    assert "ranker.features.feast_compat" in graph["ranker.features.store"]  # imported inside apply()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (move the shared piece down into a module both import): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_two_way_package_ties_and_layers_hold():
    graph = _graph()
    ties: dict[tuple[str, str], list[str]] = {}
    for module, targets in graph.items():
        for target in targets:
            a, b = _package(module), _package(target)
            if a != b:
                ties.setdefault((a, b), []).append(f"{module} -> {target}")
    two_way = sorted(f"{a} <-> {b}: {ties[(a, b)][0]}; {ties[(b, a)][0]}" for a, b in ties if (b, a) in ties and a < b)
    assert not two_way, "two-way package ties: " + " | ".join(two_way)
    forbidden = [
        edge
        for (a, b), edges in ties.items()
        for edge in edges
        if (a == "api" and b == "pipelines")
        or (a.split(".")[0] == "ranker" and b in ("api", "pipelines"))
        or (a == "ranker.serving" and b == "ranker.training")
    ]
    assert not forbidden, (
        "imports against the layering (pipelines > api > ranker; serving below training): "
        + "; ".join(sorted(forbidden))
    )


def _private_feast_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "feast":
            parts = (node.module or "").split(".")
            for alias in node.names:
                if (
                    alias.name.startswith("_")
                    or alias.name in FEAST_INTERNALS
                    or any(p.startswith("_") or p in FEAST_INTERNALS for p in parts)
                ):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "feast" and any(p.startswith("_") or p in FEAST_INTERNALS for p in parts):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            out.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    return out


def test_only_feast_compat_touches_feasts_private_api():
    folders = (*PACKAGES, "benchmarks", "infra", "tests")
    scanned = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
    allowed = {ROOT / COMPAT, ROOT / "tests" / "test_feast_compat.py", Path(__file__).resolve()}
    uses = [use for path in scanned if path not in allowed for use in _private_feast_uses(path)]
    assert not uses, (
        f"Feast internals outside {COMPAT} (add a wrapper there, pinned in "
        "tests/test_feast_compat.py): " + "; ".join(uses)
    )
    assert _private_feast_uses(ROOT / COMPAT), "the scan finds the wrapped names in feast_compat itself"
