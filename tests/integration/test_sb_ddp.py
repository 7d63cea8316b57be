"""SpeechBrain DDP: `torchrun --nproc_per_node 2 -m serkit.speechbrain.train` (gloo on CPU) trains an
epoch and writes the same, complete prediction files as a single-process run, with the same batch per
update (each process takes batch_size / 2; with random batching, the same number of updates per
epoch too); `serkit train`
with SERKIT_NPROC_PER_NODE=2 (what a Slurm job with 2 GPUs exports) runs itself under torchrun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from tests.fixtures.sb import head_conf, read_predictions, split_ids  # noqa: E402

pytestmark = pytest.mark.slow


def _train_cmd(launcher, fold, feats, out):
    return [
        *launcher,
        "-m",
        "serkit.speechbrain.train",
        *head_conf("linear"),
        "--fold-dir",
        str(fold),
        "--output-folder",
        str(out),
        "--feats",
        str(feats),
        "--number_of_epochs",
        "1",
        "--batch_size",
        "4",
        "--channel_mask_width",
        "8",
        "--noprogressbar",
    ]


def test_two_process_gloo_run_matches_single_process_prediction_counts(sb_tiny, tmp_path):
    setup = sb_tiny
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    serkit = Path(sys.executable).parent / "serkit"
    runs, logs = {}, {}
    random = ["--batching", "random"]
    for name, launcher, extra_env, extra in (
        ("single", [sys.executable], {}, []),
        ("ddp", [torchrun, "--standalone", "--nproc_per_node", "2"], {}, []),
        ("single_random", [sys.executable], {}, random),
        # `serkit train` in a job that asks for 2 processes relaunches itself under torchrun
        ("serkit_random", [str(serkit), "train"], {"SERKIT_NPROC_PER_NODE": "2"}, random),
    ):
        out = tmp_path / name
        cmd = _train_cmd(launcher, setup["fold"], setup["feats"], out) + extra
        if name.startswith("serkit"):
            cmd.remove("-m"), cmd.remove("serkit.speechbrain.train")
        proc = subprocess.run(cmd, env={**env, **extra_env}, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name], logs[name] = out, proc.stderr
    for name in ("single", "single_random"):
        info = json.loads((runs[name] / "train_info.json").read_text())
        assert info["world_size"] == 1
        assert (info["batch_size_per_process"], info["effective_batch_size"]) == (4, 4)
        assert "batch per update: 4 per process x 1 process x grad_accumulation_factor 1 = 4" in logs[name]
    for name, single in (("ddp", "single"), ("serkit_random", "single_random")):
        info = json.loads((runs[name] / "train_info.json").read_text())
        assert info["world_size"] == 2 and info["epochs_run"] == 1
        # the batch of one update is the single process's: 2 per process x 2 processes
        assert (info["batch_size"], info["batch_size_per_process"], info["effective_batch_size"]) == (4, 2, 4)
        assert "batch per update: 2 per process x 2 processes x grad_accumulation_factor 1 = 4" in logs[name]
        for split in ("valid", "test"):
            ref = read_predictions(runs[single] / "predictions" / f"{split}.epoch001.tsv")
            ddp = read_predictions(runs[name] / "predictions" / f"{split}.epoch001.tsv")
            assert ddp[0] == ref[0]
            assert [r[0] for r in ddp[1]] == [r[0] for r in ref[1]] == split_ids(setup["fold"], split)
        # one set of checkpoints, written once (by rank 0)
        assert len(list((runs[name] / "save").glob("CKPT+*"))) == 1
    # random batches: each process draws half of every update's utterances, so an epoch has as many
    # updates as the single-process one (dynamic batches go whole to one process: bucket leftovers
    # can add one)
    assert _optimizer_steps(runs["serkit_random"]) == _optimizer_steps(runs["single_random"])


def _optimizer_steps(run: Path) -> int:
    (ckpt,) = (run / "save").glob("CKPT+*")
    return yaml.safe_load((ckpt / "brain.ckpt").read_text())["optimizer_step"]
