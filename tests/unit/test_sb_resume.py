"""A training killed (SIGKILL) after some epochs resumes, with the same command, at the next epoch."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from test_sb_helpers import CONF, read_predictions, split_ids, tiny_setup  # noqa: E402

pytestmark = pytest.mark.slow


def _checkpointed_epochs(out):
    """Epochs whose end-of-epoch checkpoint is complete (serkit's Checkpointer writes CKPT.yaml last)."""
    epochs = []
    for meta in (out / "save").glob("CKPT+*/CKPT.yaml"):
        found = re.search(r"^epoch: (\d+)", meta.read_text(), re.M)
        if found:
            epochs.append(int(found.group(1)))
    return epochs


def test_resumed_run_with_dynamic_batches_ends_as_an_uninterrupted_one(tmp_path_factory, tmp_path):
    """linear.yaml batches by length (``batching: dynamic``): a resumed run forms the batches the
    uninterrupted one formed, so with no other randomness (SpecAugment off) every epoch's predictions
    are byte-identical."""
    setup = tiny_setup(tmp_path_factory)

    def cmd(out, epochs):
        return [sys.executable, "-m", "serkit.speechbrain.train", str(CONF / "linear.yaml"), "--fold-dir",
                str(setup["fold"]), "--output-folder", str(out), "--feats", str(setup["feats"]),
                "--batch_size", "4", "--time_mask_prob", "0", "--channel_mask_prob", "0", "--noprogressbar",
                "--number_of_epochs", str(epochs)]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    whole = subprocess.run(cmd(tmp_path / "whole", 4), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    info = (tmp_path / "whole" / "train_info.json").read_text()
    assert '"batching": "dynamic"' in info
    first = subprocess.run(cmd(tmp_path / "resumed", 2), env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    rest = subprocess.run(cmd(tmp_path / "resumed", 4), env=env, capture_output=True, text=True, timeout=300)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "Going into epoch 3" in rest.stderr + rest.stdout
    assert "Going into epoch 1\n" not in rest.stderr + rest.stdout
    names = sorted(p.name for p in (tmp_path / "whole" / "predictions").glob("*.tsv"))
    assert len(names) == 8
    for name in names:
        assert (tmp_path / "resumed" / "predictions" / name).read_bytes() == \
            (tmp_path / "whole" / "predictions" / name).read_bytes(), name


def test_killed_training_resumes_at_the_next_epoch(tmp_path_factory, tmp_path):
    setup = tiny_setup(tmp_path_factory)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "serkit.speechbrain.train", str(CONF / "linear.yaml"), "--fold-dir",
           str(setup["fold"]), "--output-folder", str(out), "--feats", str(setup["feats"]),
           "--batch_size", "4", "--channel_mask_width", "8", "--noprogressbar"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([*cmd, "--number_of_epochs", "200"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and max(_checkpointed_epochs(out), default=0) < 2:
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = max(_checkpointed_epochs(out), default=0)
    assert done >= 2
    old = {p.name: p.stat().st_mtime_ns for p in (out / "predictions").glob("*.epoch*.tsv")}

    # the same command (a shorter limit so the test ends) picks up where the checkpoint left off
    rerun = subprocess.run([*cmd, "--number_of_epochs", str(done + 1)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Going into epoch {done + 1}" in rerun.stderr + rerun.stdout
    for epoch in range(1, done + 1):
        assert f"Going into epoch {epoch}\n" not in rerun.stderr + rerun.stdout
        name = f"test.epoch{epoch:03d}.tsv"
        assert (out / "predictions" / name).stat().st_mtime_ns == old[name]  # finished epochs not redone
    _, rows = read_predictions(out / "predictions" / f"test.epoch{done + 1:03d}.tsv")
    assert [r[0] for r in rows] == split_ids(setup["fold"], "test")
    logged = [int(e) for e in re.findall(r"^epoch: (\d+)", (out / "train_log.txt").read_text(), re.M)]
    assert logged[-1] == done + 1 and logged.count(done + 1) == 1
