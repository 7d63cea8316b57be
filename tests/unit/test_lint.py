"""The tree keeps one style: ruff's lint rules and ruff's formatter over every Python file, shellcheck over
every shell script the recipes and tools run (what `make lint` runs), so a change that breaks either
fails `make test`, not only a lint run someone may forget."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON_TREES = ["plugins", "tests", "bench", "tools", "conftest.py", "setup.py"]


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it is in requirements/ (run `make install`)")
    return found


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_lint_is_clean():
    r = run(tool("ruff"), "check", *PYTHON_TREES)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_leaves_every_file_as_it_is():
    r = run(tool("ruff"), "format", "--check", *PYTHON_TREES)
    assert r.returncode == 0, "run `ruff format` on:\n" + r.stdout + r.stderr


def test_shellcheck_is_clean():
    scripts = sorted(
        {
            str(p.relative_to(REPO))
            for pattern in ["local/*.sh", "recipes/*/*.sh", "tools/*.sh", "bench/*.sh", ".ci/run"]
            for p in REPO.glob(pattern)
        }
    )
    r = run(tool("shellcheck"), "-x", *scripts)
    assert r.returncode == 0, r.stdout + r.stderr
