"""Running the serkit package's docstring examples (``--doctest-modules``, pyproject.toml's pytest section).

It acts on plugins/serkit only (tests/conftest.py holds the tests' fixtures); it sits at the root, not in
plugins/, so that it is no module of the plugins tree that tests/unit/test_package_layering.py reads.

A module whose import needs an optional dependency that is not installed (the modules of
``serkit.extras.EXTRA_OF``: speechbrain, fairseq, faiss, transformers, ...) cannot run its examples:
it is left out of the collection and named at the end of the run with the extra that installs it.
Every other import error is the collection error of that module, as without this file.
"""

from __future__ import annotations

import importlib
from pathlib import Path

PLUGINS = Path(__file__).resolve().parent / "plugins"
_left_out: list[str] = []


def _module_name(path: Path) -> str | None:
    try:
        rel = path.resolve().relative_to(PLUGINS).with_suffix("")
    except ValueError:
        return None
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts) if parts and parts[0] == "serkit" else None


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path)
    if path.suffix != ".py" or path.name == "__main__.py" or not config.getoption("doctestmodules"):
        return None
    name = _module_name(path)
    if name is None:
        return None
    from serkit.extras import EXTRA_OF

    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        top = (err.name or "").split(".")[0]
        if top in EXTRA_OF:
            _left_out.append(f"{name} (needs {top}: pip install 'serkit[{EXTRA_OF[top]}]')")
            return True
    except Exception:  # collected, so that the doctest collection reports it
        return None
    return None


def pytest_terminal_summary(terminalreporter):
    if _left_out:
        terminalreporter.section("docstring examples not run: optional dependency not installed")
        for line in _left_out:
            terminalreporter.write_line(line)
