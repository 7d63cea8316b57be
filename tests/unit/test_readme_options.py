"""Every recipe option a recipe README tells users to pass exists in that recipe's `run.sh --help`.

Checked: the `how to switch` column of each `### Fidelity:` table (backticked spans, except those that
call another tool, e.g. `serkit train ... --lr 0.001`) and every `bash [recipes/<C>/]run.sh ...` command
line, in code blocks or inline. Quoted strings are values (`--head-overrides "--crop random"`: its
`--crop` is a yaml key, checked by test_config_consistency.py), so they are left out.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.parent for p in REPO.glob("recipes/*/run.sh"))
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
RUN_SH = re.compile(r"bash\s+(?:recipes/(?P<recipe>\w+)/)?run\.sh(?P<args>[^`#\n]*)")


@cache
def help_options(recipe: str) -> frozenset[str]:
    proc = subprocess.run(
        ["bash", str(REPO / "recipes" / recipe / "run.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return frozenset(OPTION.findall(proc.stdout)) | {"--help"}


def _options(text: str) -> list[str]:
    return OPTION.findall(QUOTED.sub("", text))


def readme_options(readme: Path) -> list[tuple[int, str, str]]:
    """(line number, recipe whose run.sh takes it, option) for every recipe option ``readme`` names."""
    own = readme.parent.name
    lines = readme.read_text(encoding="utf-8").splitlines()
    found = []
    in_fidelity = False
    # a command continued with a trailing backslash is one command
    joined, start = [], None
    for i, line in enumerate(lines, 1):
        if line.startswith("#"):
            in_fidelity = line.startswith("### Fidelity:")
        if in_fidelity and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[-1] != "how to switch":
                for span in re.findall(r"`([^`]*)`", cells[-1]):
                    if not span.startswith("serkit"):
                        found += [(i, own, o) for o in _options(span)]
        if start is None:
            start = i
        joined.append(line.rstrip("\\"))
        if line.endswith("\\"):
            continue
        for m in RUN_SH.finditer(" ".join(joined)):
            found += [(start, m.group("recipe") or own, o) for o in _options(m.group("args"))]
        joined, start = [], None
    return found


@pytest.mark.parametrize("recipe", [p.name for p in RECIPES])
def test_every_option_a_readme_names_is_in_run_sh_help(recipe):
    readme = REPO / "recipes" / recipe / "README.md"
    missing = [
        f"{readme.relative_to(REPO)}:{i}: {o} is not an option of recipes/{r}/run.sh (--help)"
        for i, r, o in readme_options(readme)
        if o not in help_options(r)
    ]
    assert missing == []


def test_the_scan_finds_switches_and_commands(tmp_path):
    readme = tmp_path / "IEMOCAP" / "README.md"
    readme.parent.mkdir()
    readme.write_text(
        "### Fidelity: X\n\n"
        "| setting | paper | official code | serkit default | how to switch |\n"
        "|---|---|---|---|---|\n"
        "| a | b | `--ndiv 4` | `1` (`run.sh --layer`) | "
        '`--epochs N`, `--head-overrides "--crop x"` |\n'
        "| c | d | e | f | `serkit train ... --lr 0.1` |\n\n## Run\n"
        "```\nbash run.sh --upstream U \\\n  --ablations mfsn   # --not-this\n"
        "bash recipes/MELD/run.sh --nj 4\n```\n",
        encoding="utf-8",
    )
    assert readme_options(readme) == [
        (5, "IEMOCAP", "--epochs"),
        (5, "IEMOCAP", "--head-overrides"),
        (10, "IEMOCAP", "--upstream"),
        (10, "IEMOCAP", "--ablations"),
        (12, "MELD", "--nj"),
    ]
    assert "--epochs" not in help_options("IEMOCAP") and "--head-epochs" in help_options("IEMOCAP")
