"""Attacks never import the victim side or the ground truth: the trust boundary, checked by imports."""

from __future__ import annotations

import ast
from pathlib import Path

import gradleak.attacks

FORBIDDEN = ("gradleak.data", "gradleak.client", "gradleak.scoring", "gradleak.eval")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_attacks_do_not_import_the_batch():
    root = Path(gradleak.attacks.__file__).parent
    files = list(root.rglob("*.py"))
    assert len(files) > 5
    for path in files:
        bad = [m for m in imported_modules(path) if m.startswith(FORBIDDEN)]
        assert not bad, f"{path.relative_to(root)} imports {bad}"
