"""SpeechBrain DDP: `torchrun --nproc_per_node 2 -m serkit.speechbrain.train` (gloo on CPU) trains an
epoch and writes the same, complete prediction files as a single-process run."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from tests.fixtures.sb import head_conf, read_predictions, split_ids  # noqa: E402

pytestmark = pytest.mark.slow


def _train_cmd(launcher, fold, feats, out):
    return [*launcher, "-m", "serkit.speechbrain.train", *head_conf("linear"), "--fold-dir", str(fold),
            "--output-folder", str(out), "--feats", str(feats), "--number_of_epochs", "1",
            "--batch_size", "4",
            "--channel_mask_width", "8", "--noprogressbar"]


def test_two_process_gloo_run_matches_single_process_prediction_counts(sb_tiny, tmp_path):
    setup = sb_tiny
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    runs = {}
    for name, launcher in (("single", [sys.executable]),
                           ("ddp", [torchrun, "--standalone", "--nproc_per_node", "2"])):
        out = tmp_path / name
        proc = subprocess.run(_train_cmd(launcher, setup["fold"], setup["feats"], out), env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = out
    info = json.loads((runs["ddp"] / "train_info.json").read_text())
    assert info["world_size"] == 2 and info["epochs_run"] == 1
    for split in ("valid", "test"):
        single = read_predictions(runs["single"] / "predictions" / f"{split}.epoch001.tsv")
        ddp = read_predictions(runs["ddp"] / "predictions" / f"{split}.epoch001.tsv")
        assert ddp[0] == single[0]
        assert [r[0] for r in ddp[1]] == [r[0] for r in single[1]] == split_ids(setup["fold"], split)
    # one set of checkpoints, written once (by rank 0)
    assert len(list((runs["ddp"] / "save").glob("CKPT+*"))) == 1
