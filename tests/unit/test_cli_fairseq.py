"""fairseq as its users work: the configs' documented commands from any directory, `serkit list`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serkit.cli import main
from serkit.resources import config_dir, user_dir

REPO = Path(__file__).resolve().parents[2]
FAIRSEQ_CONF = REPO / "plugins" / "serkit" / "conf" / "fairseq"


def documented_command(config: Path) -> str:
    """The fairseq-hydra-train command in a config's header, continuation lines joined."""
    header = config.read_text(encoding="utf-8").split("\n\n", 1)[0].splitlines()
    start = next(i for i, line in enumerate(header) if line.startswith("#   fairseq-hydra-train"))
    parts = []
    for line in header[start:]:
        text = line[1:].strip()
        parts.append(text.rstrip("\\").strip())
        if not text.endswith("\\"):
            break
    return " ".join(parts)


def cpu_overrides(config: Path) -> str:
    header = config.read_text(encoding="utf-8").split("\n\n", 1)[0]
    m = re.search(r"one, add: (common\.fp16=false common\.cpu=true)", header)
    assert m, f"{config.name}: the header gives no CPU overrides"
    return m.group(1)


@pytest.mark.parametrize("config", sorted(FAIRSEQ_CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_documented_commands_use_installed_paths(config):
    cmd = documented_command(config)
    assert cmd.startswith(
        f'fairseq-hydra-train --config-dir "$(serkit config-dir fairseq)" --config-name {config.stem} '
    )
    assert "recipes/" not in cmd and "plugins/" not in cmd
    if "common.user_dir" in cmd or "user_dir:" in config.read_text(encoding="utf-8"):
        assert 'common.user_dir="$(serkit user-dir)"' in cmd


@pytest.mark.parametrize("name", ["ser_finetune", "cpt_hubert_base"])
def test_fp16_configs_say_so_and_give_cpu_overrides(name):
    config = FAIRSEQ_CONF / f"{name}.yaml"
    assert "\n  fp16: true" in config.read_text(encoding="utf-8")
    assert 'fairseq stops with "Found no NVIDIA driver"' in config.read_text(encoding="utf-8")
    assert cpu_overrides(config) == "common.fp16=false common.cpu=true"


def test_config_dir_and_user_dir_print_installed_paths(capsys):
    assert main(["config-dir", "fairseq"]) == 0
    assert main(["user-dir"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(config_dir("fairseq")), str(user_dir())]
    assert sorted(p.name for p in Path(printed[0]).glob("*.yaml")) == sorted(
        p.name for p in FAIRSEQ_CONF.glob("*.yaml")
    )
    assert (Path(printed[1]) / "__init__.py").read_text() == (
        REPO / "plugins" / "serkit_fairseq" / "__init__.py"
    ).read_text()


def test_ser_finetune_documented_command_runs_outside_the_repo(tmp_path):
    """Composition, the user dir's import and the serkit_ser task's setup, from a directory outside the
    repo; it stops building serkit_ser_model, whose upstream (CPT/checkpoint_last.pt) is not there."""
    pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")
    config = FAIRSEQ_CONF / "ser_finetune.yaml"
    cmd = f"{documented_command(config)} {cpu_overrides(config)}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    proc = subprocess.run(
        ["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert (
        f"model.upstream_path={tmp_path}/CPT/checkpoint_last.pt: no such file (give an absolute path: "
        "hydra runs in its own directory)"
    ) in log, log[-3000:]
    assert "Found no NVIDIA driver" not in log and "not found" not in log.replace("no such file", "")
    assert (tmp_path / "OUT" / "hydra_train.log").is_file()


def test_list_prints_every_registered_component(capsys):
    pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")
    from serkit.data.splits import PROTOCOLS
    from serkit.nn import HEADS
    from serkit.nn.pooling import POOLINGS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*HEADS, *POOLINGS, *PROTOCOLS]:
        assert re.search(rf"^  {re.escape(name)}(\t|$)", out, re.M), name
    for line in (
        "  task serkit_ser",
        "  model serkit_hubert",
        "  model serkit_ser_model",
        "  criterion serkit_ser_ce",
    ):
        assert line + "\n" in out
