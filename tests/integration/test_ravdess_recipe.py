"""recipes/RAVDESS/run.sh end to end on the mini RAVDESS: the fourth corpus, added as docs/new_corpus.md
says (a run.sh of corpus defaults over local/ser.sh, `serkit prepare ravdess`, the ravdess_actors4
protocol), run as a user would (outputs in --workdir), with a random-init tiny HuBERT as --upstream
(pretraining the tiny HuBERT is covered by the IEMOCAP recipe) and a few epochs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")
pytest.importorskip("speechbrain")

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "recipes" / "RAVDESS" / "run.sh"
EPOCHS = 6
EXPECTED_UA = [22 / 128, 17 / 128]  # per fold, test UA of this deterministic CPU run (chance: 1/8)


def run(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAVDESS="", OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.pop("SERKIT_LOCK_TOKEN", None)
    return subprocess.run(["bash", str(RUN), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    base = tmp_path_factory.mktemp("ravdess_recipe")
    ckpt = base / "tiny_hubert_random.pt"
    made = subprocess.run(
        [sys.executable, "-m", "serkit", "make-upstream", "tiny-hubert", "--out", str(ckpt), "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    work = base / "work"
    args = ["--upstream", str(ckpt), "--workdir", str(work), "--head-epochs", str(EPOCHS), "--device", "cpu"]
    r = run(*args)
    assert r.returncode == 0, r.stderr[-6000:]
    return {"work": work, "args": args, "out": r}


def test_folds_hold_out_four_actors_two_of_each_gender(done):
    split = done["work"] / "data" / "ravdess" / "ravdess_actors4"
    assert json.loads((split / "split.json").read_text())["folds"] == ["fold1", "fold2"]
    for k, actors in ((1, (1, 2, 3, 4)), (2, (5, 6, 7, 8))):
        fold = split / f"fold{k}"
        spk = {
            s: {v["spk"] for v in json.loads((fold / f"{s}.json").read_text()).values()}
            for s in ("train", "valid", "test")
        }
        assert spk["test"] == {f"Actor_{a:02d}" for a in actors}
        others = {f"Actor_{a:02d}" for a in range(1, 9)} - spk["test"]
        assert spk["train"] == others and spk["valid"] == others
        n = {s: len(json.loads((fold / f"{s}.json").read_text())) for s in ("train", "valid", "test")}
        # 4 actors x 8 emotions x 2 statements x 2 takes; a quarter of each (actor, emotion) validates
        assert n == {"train": 96, "valid": 32, "test": 128}
    # the song and video-only files beside the speech wavs are not utterances
    utts = [
        line.split()[0] for line in (done["work"] / "data" / "ravdess" / "wav.scp").read_text().splitlines()
    ]
    assert len(utts) == 256 and all(u.startswith("03-01-") for u in utts)


def test_each_fold_ran_as_a_job_and_the_table_has_the_result(done):
    exp = done["work"] / "exp" / "ravdess_actors4"
    jobs = sorted(p.name for p in (exp / "log" / "jobs").iterdir())
    assert jobs == [
        "data.log",
        "describe_shiftcnn.log",
        "dump_feats_upstream.log",
        "head_shiftcnn_fold1.log",
        "head_shiftcnn_fold2.log",
        "score.log",
    ]
    run = exp / "shiftcnn_featex"
    assert json.loads((run / "run.json").read_text())["corpus"] == "RAVDESS"
    results = json.loads((run / "results.json").read_text())
    assert len(results["folds"]) == 2
    table = (exp / "RESULTS.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| shiftcnn |"))
    assert "| ravdess_actors4 |" in row
    assert row in done["out"].stdout
    ua = [json.loads((run / f"fold{k}" / "metrics.json").read_text())["ua"] for k in (1, 2)]
    assert ua == pytest.approx(EXPECTED_UA, abs=1e-9), ua


def test_a_rerun_skips_every_job(done):
    again = run(*done["args"], "--stop-stage", "4")
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("skip:") == 6  # mini corpus, data, split, features, two folds
