"""The test suite's own rules: every test file holds tests, and no test reaches other files through sys.path
(shared helpers live in tests/fixtures, shared fixtures in tests/conftest.py)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _sources() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(TESTS.rglob("*.py"))}


def test_every_test_file_defines_tests():
    empty = []
    for path, tree in _sources().items():
        if not path.name.startswith("test_"):
            continue
        names = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        if not any(n.startswith(("test_", "Test")) for n in names):
            empty.append(str(path.relative_to(TESTS)))
    assert empty == [], f"test files without tests (helpers go to tests/fixtures): {empty}"


def test_no_test_changes_sys_path():
    offenders = []
    for path, tree in _sources().items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                offenders.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert offenders == [], f"sys.path in tests (import tests.fixtures.<module> instead): {offenders}"
