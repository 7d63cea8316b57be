"""Recipe shell scripts never remove what serkit did not write, and hand no unchecked option to Hydra:
the template's mini corpus stage (local/ser.sh, here SAVEE's), local/make_tiny_upstream.sh's OUT/iter1,
local/cpt.sh --update-freq."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fixtures.recipes import run_tiny_upstream

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "local" / "stage.sh"


def env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")


def savee_mini_stage() -> str:
    """The lines of the template's stage 0 (local/ser.sh) that (re)build the mini corpus, as written there."""
    text = (REPO / "local" / "ser.sh").read_text()
    stage = r'^ *is_done "\$workdir/db/mini_\$prepare_name" "\$opts" \|\| \{\n.*?\}\n'
    m = re.search(stage, text, re.M | re.S)
    assert m, "local/ser.sh: the mini corpus stage moved; update this test"
    return m.group(0)


def run_savee_mini(cwd: Path) -> subprocess.CompletedProcess:
    setup = 'workdir=$PWD; prepare_name=savee; opts="mini seed=0"; '
    script = f"set -euo pipefail; . {STAGE}; {setup}{savee_mini_stage()}"
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env(), capture_output=True, text=True, timeout=120
    )


def test_savee_mini_stage_keeps_what_it_did_not_write(tmp_path):
    mine = tmp_path / "db" / "mini_savee" / "my_recordings.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me\n")
    r = run_savee_mini(tmp_path)
    assert r.returncode == 0, r.stderr
    assert mine.read_text() == "keep me\n"  # the corpus goes to db/mini_savee/SAVEE beside it
    assert any((tmp_path / "db" / "mini_savee" / "SAVEE").rglob("*.wav"))
    # a SAVEE folder serkit did not write is refused, not replaced
    other = tmp_path / "other"
    theirs = other / "db" / "mini_savee" / "SAVEE" / "notes.txt"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("theirs\n")
    r = run_savee_mini(other)
    assert r.returncode != 0
    assert f"{theirs.parent}: not empty and not serkit's own" in r.stderr
    assert theirs.read_text() == "theirs\n"


def test_savee_mini_stage_rebuilds_its_own_interrupted_corpus(tmp_path):
    r = run_savee_mini(tmp_path)
    assert r.returncode == 0, r.stderr
    mini = tmp_path / "db" / "mini_savee"
    wavs = sorted(p.relative_to(mini) for p in mini.rglob("*.wav"))
    assert wavs and (mini / ".done").is_file()
    (mini / ".done").unlink()  # killed before mark_done: the stage runs again and replaces it
    victim = next(mini.rglob("*.wav"))
    victim.unlink()
    r = run_savee_mini(tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.relative_to(mini) for p in mini.rglob("*.wav")) == wavs and (mini / ".done").is_file()


def test_make_tiny_upstream_refuses_an_iter1_it_did_not_write(tmp_path):
    out = tmp_path / "out"
    (out / "iter1").mkdir(parents=True)
    (out / "iter1" / "notes.txt").write_text("mine\n")
    r = run_tiny_upstream(tmp_path, out)
    assert r.returncode != 0
    assert f"{out}/iter1 exists and is not this script's pretraining output" in r.stderr
    assert (out / "iter1" / "notes.txt").read_text() == "mine\n"
    assert not (tmp_path / "w" / "db").exists()  # refused before any work
    # fairseq's file names alone are not enough: OUT has no record of local/stage.sh
    (out / "iter1" / "notes.txt").unlink()
    (out / "iter1" / "checkpoint_last.pt").write_text("not ours\n")
    r = run_tiny_upstream(tmp_path, out)
    assert r.returncode != 0 and "is not this script's pretraining output" in r.stderr
    assert (out / "iter1" / "checkpoint_last.pt").read_text() == "not ours\n"


def test_cpt_refuses_an_update_freq_that_is_not_a_whole_number(tmp_path):
    labels, fold = tmp_path / "km", tmp_path / "fold"
    labels.mkdir()
    fold.mkdir()
    for f in (
        labels / "train.km",
        labels / "valid.km",
        labels / "dict.km.txt",
        fold / "train.tsv",
        tmp_path / "init.pt",
    ):
        f.write_text("x\n")
    out = tmp_path / "cpt"
    bad = "1],optimization.max_update=[5"
    r = subprocess.run(
        [
            "bash",
            str(REPO / "local" / "cpt.sh"),
            "--yaml",
            str(REPO / "plugins" / "serkit" / "conf" / "fairseq" / "hubert_tiny_iter1.yaml"),
            "--fold",
            str(fold),
            "--labels",
            str(labels),
            "--init",
            str(tmp_path / "init.pt"),
            "--updates",
            "2",
            "--update-freq",
            bad,
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert f"--update-freq {bad}: expected a whole number >= 1" in r.stderr
    assert not out.exists()  # refused before anything was written
