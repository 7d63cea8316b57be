"""local/parse_options.sh, the recipes' option parser, driven from bash: `--options-file` reads
name=value lines without running them, refuses anything else naming the file and line, and `--config`
is a recipe's own option (SAVEE's trainer YAML) instead of a file sourced as bash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARSE = REPO / "local" / "parse_options.sh"

# a recipe's head: defaults, then the parser; prints the values it ended with
RECIPE = (
    'set -euo pipefail; stage=0; tag=""; nclusters=50; {extra}help_message="usage"; . {parse}; '
    'printf "stage=%s\\ntag=%s\\nnclusters=%s\\n" "$stage" "$tag" "$nclusters"'
)


def recipe(args: list[str], cwd: Path, extra: str = "") -> subprocess.CompletedProcess:
    script = RECIPE.format(extra=extra, parse=PARSE)
    return subprocess.run(
        ["bash", "-c", script, "run.sh", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def values(r: subprocess.CompletedProcess) -> dict[str, str]:
    assert r.returncode == 0, r.stderr
    return dict(line.split("=", 1) for line in r.stdout.splitlines())


def test_options_file_sets_existing_variables_and_later_options_override(tmp_path):
    (tmp_path / "opts").write_text("# my run\n\nstage=2\n  tag=big run\nnclusters=100\n")
    assert values(recipe(["--options-file", "opts", "--nclusters", "7"], tmp_path)) == {
        "stage": "2",
        "tag": "big run",
        "nclusters": "7",
    }
    # an option given before the file is overridden by it, as it stands in order
    assert values(recipe(["--stage", "1", "--options-file", "opts"], tmp_path))["stage"] == "2"


def test_options_file_values_are_taken_literally_never_run(tmp_path):
    (tmp_path / "opts").write_text('tag=$(touch pwned)`touch pwned2`;touch pwned3\nstage="3"\n')
    out = values(recipe(["--options-file", "opts"], tmp_path))
    assert out == {"tag": "$(touch pwned)`touch pwned2`;touch pwned3", "stage": '"3"', "nclusters": "50"}
    assert not list(tmp_path.glob("pwned*"))


def test_a_yaml_options_file_is_refused_naming_the_file_and_line(tmp_path):
    (tmp_path / "conf.yaml").write_text("# trainer\nmethod: mfsn\nlr: 0.001\n")
    r = recipe(["--options-file", "conf.yaml"], tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert "--options-file conf.yaml, line 2: 'method: mfsn' is not a name=value line" in r.stderr
    assert "command not found" not in r.stderr


def test_an_unknown_name_in_an_options_file_is_refused(tmp_path):
    (tmp_path / "opts").write_text("stage=1\nnclustres=3\n")
    r = recipe(["--options-file", "opts"], tmp_path)
    assert r.returncode == 1
    assert "--options-file opts, line 2: unknown option 'nclustres'" in r.stderr
    # nor can a file reach the parser's own variables
    (tmp_path / "opts").write_text("_po_n=3\n")
    assert "unknown option '_po_n'" in recipe(["--options-file", "opts"], tmp_path).stderr


def test_missing_options_file(tmp_path):
    r = recipe(["--options-file", "nope"], tmp_path)
    assert r.returncode == 1 and "--options-file nope: no such file" in r.stderr


def test_config_without_a_config_option_points_to_options_file(tmp_path):
    (tmp_path / "opts").write_text("stage=2\n")
    r = recipe(["--config", "opts"], tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert "--config: no such option; options from a file are given with --options-file FILE" in r.stderr


def test_config_is_the_recipes_own_option_where_it_declares_one(tmp_path):
    (tmp_path / "t.yaml").write_text("method: mfsn\n$(touch pwned)\n")
    r = recipe(["--config", "t.yaml", "--stage", "1"], tmp_path, extra='config=""; ')
    assert values(r)["stage"] == "1"
    script = f'config=""; help_message=u; . {PARSE}; echo "config=$config"'
    r = subprocess.run(
        ["bash", "-c", script, "run.sh", "--config", "t.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout == "config=t.yaml\n", r.stderr
    assert not (tmp_path / "pwned").exists()


def test_savee_recipe_takes_its_trainer_yaml_with_config(tmp_path):
    """The reported bug: `run.sh --config conf/mfsn_mini.yaml` ran the YAML as bash (rc 127)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    run = REPO / "recipes" / "SAVEE" / "run.sh"
    r = subprocess.run(
        ["bash", str(run), "--config", "conf/mfsn_mini.yaml", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "--config FILE         trainer HyperPyYAML" in r.stdout
    # the value reaches the recipe: a missing YAML is named by the recipe's own check
    r = subprocess.run(
        ["bash", str(run), "--config", "conf/missing.yaml", "--device", "cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert "(run.sh) ERROR: --config conf/missing.yaml: no such file" in r.stderr
