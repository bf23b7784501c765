"""The feed modules import one another in one direction only, type-checking imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import node.feeds

FEEDS = Path(node.feeds.__file__).parent


def feed_imports() -> dict[str, set[str]]:
    graph = {}
    for path in FEEDS.glob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        graph[f"node.feeds.{path.stem}"] = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("node.feeds.")
        }
    return graph


def test_no_feed_module_imports_one_that_imports_it_back():
    graph = feed_imports()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for module in graph.get(start, set()) - seen:
            if module == target or reaches(module, target, seen | {module}):
                return True
        return False

    cycles = sorted(name for name in graph if reaches(name, name, set()))
    assert cycles == []
    assert "node.feeds.hl7header" in graph["node.feeds.errors"]  # errors carry the header
