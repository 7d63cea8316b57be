"""What a recipe shows and keeps of its run: the stage lines also in the experiment's run.log (those
logged before the experiment directory was known included, and those of the scripts it runs),
`--help` naming the corpus db.sh points to, the final paths absolute."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "local" / "stage.sh"
LINE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \((?:run\.sh|bash)\) "


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("IEMOCAP", "MELD", "SAVEE", "SERKIT_RUN_LOG")}
    return dict(e, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1", **extra)


def test_log_to_keeps_earlier_lines_and_those_of_child_scripts(tmp_path):
    script = (
        f'set -euo pipefail; . {STAGE}; log early one; log "early two"; log_to exp/t/run.log; '
        f'log later; bash -c ". {STAGE}; log from a child"; die "it broke"'
    )
    r = subprocess.run(
        ["bash", "-c", script, "run.sh", "--opt", "a b"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    text = (tmp_path / "exp" / "t" / "run.log").read_text()
    lines = text.splitlines()
    head = rf"==== .*, pid \d+ in {tmp_path}: bash -c .* run\.sh --opt a\\ b "
    assert re.fullmatch(head, lines[0]), lines[0]
    messages = [re.sub(LINE, "", ln) for ln in lines[1:]]
    assert messages == [
        "early one",
        "early two",
        f"stage log: {tmp_path}/exp/t/run.log",
        "later",
        "from a child",
        "ERROR: it broke",
    ]
    assert all(re.match(LINE, ln) for ln in lines[1:]), lines
    # the console shows the same lines, each once
    assert [re.sub(LINE, "", ln) for ln in r.stderr.splitlines()] == messages
    # a second run appends
    subprocess.run(["bash", "-c", script, "run.sh"], cwd=tmp_path, env=env(), capture_output=True, timeout=60)
    assert (tmp_path / "exp" / "t" / "run.log").read_text().startswith(text) and (
        tmp_path / "exp" / "t" / "run.log"
    ).read_text().count("====") == 2


def test_help_shows_the_corpus_db_sh_points_to():
    for corpus in ("IEMOCAP", "MELD", "SAVEE"):
        run = REPO / "recipes" / corpus / "run.sh"
        shown = subprocess.run(
            ["bash", str(run), "--help"],
            env=env(**{corpus: "/data/my corpus"}),
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert "[db.sh: /data/my corpus" in shown, corpus
        unset = subprocess.run(
            ["bash", str(run), "--help"], env=env(), capture_output=True, text=True, timeout=60
        ).stdout
        assert "[db.sh: none" in unset and "${" not in unset, corpus
        assert "--options-file FILE" in unset


def test_iemocap_recipe_keeps_its_stage_log_in_the_experiment(tmp_path):
    work = tmp_path / "work"
    args = ["--workdir", str(work), "--stage", "5", "--method", "linear", "--device", "cpu"]
    r = subprocess.run(
        ["bash", str(REPO / "recipes" / "IEMOCAP" / "run.sh"), *args],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1  # no tiny HuBERT yet: stage 0 has not run
    log = work / "exp" / "iemocap_loso5" / "run.log"
    text = log.read_text()
    assert "No corpus given (db.sh IEMOCAP / --root): running on the mini corpus" in text  # logged before
    assert f"stage log: {log}" in text
    assert f"ERROR: no upstream checkpoint at '{work}/exp/upstream/tiny_hubert.pt'" in text  # a die() too
    assert text.splitlines()[0].endswith(f"--workdir {work} --stage 5 --method linear --device cpu ")


def test_an_unwritable_stage_log_never_stops_the_run(tmp_path):
    script = f"set -euo pipefail; . {STAGE}; log_to exp/run.log; rm -r exp; log still here; echo done"
    r = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout == "done\n", r.stderr
    assert r.stderr.splitlines()[-1].endswith(") still here")
