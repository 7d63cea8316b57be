"""A training killed (SIGKILL) resumes, with the same command, where its last checkpoint left off, and ends
bit-identical to a run that was never killed (head training, BAS search, finetuning; at an epoch boundary
or mid-epoch from an intra-epoch checkpoint)."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from tests.fixtures.sb import SHARED_CONF, head_conf, read_predictions, split_ids  # noqa: E402

pytestmark = pytest.mark.slow


def _checkpointed_epochs(out):
    """Epochs whose end-of-epoch checkpoint is complete (serkit's Checkpointer writes CKPT.yaml last)."""
    epochs = []
    for meta in (out / "save").glob("CKPT+*/CKPT.yaml"):
        found = re.search(r"^epoch: (\d+)", meta.read_text(), re.M)
        if found:
            epochs.append(int(found.group(1)))
    return epochs


def test_resumed_run_with_dynamic_batches_ends_as_an_uninterrupted_one(sb_tiny, tmp_path):
    """linear.yaml batches by length (``batching: dynamic``): a resumed run forms the batches the
    uninterrupted one formed, so with no other randomness (SpecAugment off) every epoch's predictions
    are byte-identical."""
    setup = sb_tiny

    def cmd(out, epochs):
        return [
            sys.executable,
            "-m",
            "serkit.speechbrain.train",
            *head_conf("linear"),
            "--fold-dir",
            str(setup["fold"]),
            "--output-folder",
            str(out),
            "--feats",
            str(setup["feats"]),
            "--batch_size",
            "4",
            "--time_mask_prob",
            "0",
            "--channel_mask_prob",
            "0",
            "--noprogressbar",
            "--number_of_epochs",
            str(epochs),
        ]

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
        assert (tmp_path / "resumed" / "predictions" / name).read_bytes() == (
            tmp_path / "whole" / "predictions" / name
        ).read_bytes(), name


def test_killed_training_resumes_at_the_next_epoch(sb_tiny, tmp_path):
    setup = sb_tiny
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "serkit.speechbrain.train",
        *head_conf("linear"),
        "--fold-dir",
        str(setup["fold"]),
        "--output-folder",
        str(out),
        "--feats",
        str(setup["feats"]),
        "--batch_size",
        "4",
        "--channel_mask_width",
        "8",
        "--noprogressbar",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [*cmd, "--number_of_epochs", "200"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
    rerun = subprocess.run(
        [*cmd, "--number_of_epochs", str(done + 1)], env=env, capture_output=True, text=True, timeout=300
    )
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


# ---------------------------------------------------------------------------------------------------
# A killed run, resumed with the same command, ends bit-identical to a run that was never interrupted:
# the same predictions at every epoch, the same log, the same final weights and optimiser state.

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _train_cmd(conf, setup, out, *extra):
    source = ["--feats", str(setup["feats"])] if conf != "flea.yaml" else ["--upstream", str(setup["ckpt"])]
    hparams = {"linear.yaml": head_conf("linear")}.get(conf, [str(SHARED_CONF / conf)])
    return [
        sys.executable,
        "-m",
        "serkit.speechbrain.train",
        *hparams,
        "--fold-dir",
        str(setup["fold"]),
        "--output-folder",
        str(out),
        *source,
        "--noprogressbar",
        *extra,
    ]


def _run(cmd):
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _checkpoints(out):
    """``[(meta, brain_step, epoch_counter)]`` of the complete checkpoints (CKPT.yaml is written last)."""
    found = []
    for meta in (out / "save").glob("CKPT+*/CKPT.yaml"):
        try:
            text = meta.read_text()
            counter = int((meta.parent / "counter.ckpt").read_text())
            step = re.search(r"^step: (\d+)", (meta.parent / "brain.ckpt").read_text(), re.M)
        except (OSError, ValueError):
            continue  # removed or being removed right now
        found.append((text, int(step.group(1)) if step else 0, counter))
    return found


def _epochs_done(out):
    return max((c for text, _, c in _checkpoints(out) if "brain_intra_epoch_ckpt" not in text), default=0)


def _kill_when(cmd, ready, delay=0.0):
    """Start ``cmd``, SIGKILL it ``delay`` seconds after ``ready()`` first holds (polled every 10 ms)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not ready():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the kill point was never reached"
            time.sleep(0.01)
        time.sleep(delay)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _final_state(out):
    """The tensors of the newest end-of-epoch checkpoint, by file."""
    import torch

    newest = max(
        (
            p.parent
            for p in (out / "save").glob("CKPT+*/CKPT.yaml")
            if "brain_intra_epoch_ckpt" not in p.read_text()
        ),
        key=lambda d: re.search(r"^unixtime: (\S+)", (d / "CKPT.yaml").read_text(), re.M).group(1),
    )
    state = {}
    for f in sorted(newest.glob("*.ckpt")):
        if f.name in ("counter.ckpt", "brain.ckpt") or f.name.startswith("dataloader"):
            state[f.name] = f.read_text()
        else:
            state[f.name] = torch.load(f, map_location="cpu", weights_only=True)
    return state


def _assert_identical(a, b, path="state"):
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert sorted(a, key=str) == sorted(b, key=str), f"{path}: keys differ"
        for k in a:
            _assert_identical(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _assert_same_run(uninterrupted, resumed, files=()):
    preds = sorted(p.name for p in (uninterrupted / "predictions").glob("*.tsv"))
    assert preds == sorted(p.name for p in (resumed / "predictions").glob("*.tsv"))
    for name in preds:  # byte for byte, every epoch
        assert (resumed / "predictions" / name).read_bytes() == (
            uninterrupted / "predictions" / name
        ).read_bytes(), f"predictions/{name} differs"
    for name in ("train_log.txt", *files):
        assert (resumed / name).read_bytes() == (uninterrupted / name).read_bytes(), f"{name} differs"
    _assert_identical(_final_state(uninterrupted), _final_state(resumed))


def _killed_and_resumed(cmd, out, epochs, rng, intra_epoch):
    """Kill ``cmd`` at a point drawn from ``rng``, then re-run it to the end; return the re-run's log."""
    after = rng.randint(1, max(1, epochs // 3))
    if intra_epoch:  # just after an intra-epoch checkpoint `step` steps into epoch `after + 1`
        step = rng.randint(1, 3)
        _kill_when(
            cmd,
            lambda: any(
                "brain_intra_epoch_ckpt" in text and counter == after + 1 and s >= step
                for text, s, counter in _checkpoints(out)
            ),
        )
        newest = max(_checkpoints(out), key=lambda c: re.search(r"^unixtime: (\S+)", c[0], re.M).group(1))
        assert "brain_intra_epoch_ckpt" in newest[0] and newest[1] >= step  # the resume is mid-epoch
    else:  # a random moment after epoch `after` was checkpointed
        _kill_when(cmd, lambda: _epochs_done(out) >= after, delay=rng.uniform(0.0, 0.3))
    done = _epochs_done(out)
    assert done < epochs, "the killed run had finished"
    log = _run(cmd)
    assert f"Going into epoch {done + 1}" in log and "Going into epoch 1\n" not in log
    return log


_UNINTERRUPTED: dict = {}


def _uninterrupted(tmp_path_factory, setup, conf, extra):
    """The run never killed, once per session (intra-epoch checkpoints off: saving one changes nothing)."""
    key = (conf, *extra)
    if key not in _UNINTERRUPTED:
        out = tmp_path_factory.mktemp("uninterrupted") / conf
        _run(_train_cmd(conf, setup, out, *extra))
        _UNINTERRUPTED[key] = out
    return _UNINTERRUPTED[key]


def _check_resume(tmp_path_factory, setup, tmp_path, conf, epochs, extra, intra_epoch, files=()):
    extra = ["--number_of_epochs", str(epochs), *extra]
    reference = _uninterrupted(tmp_path_factory, setup, conf, extra)
    intra = ["--ckpt_interval_steps", "1"] if intra_epoch else []
    cmd = _train_cmd(conf, setup, tmp_path / "run", *extra, *intra)
    _killed_and_resumed(cmd, tmp_path / "run", epochs, random.Random(f"{conf} {intra_epoch}"), intra_epoch)
    _assert_same_run(reference, tmp_path / "run", files)


@pytest.mark.parametrize(
    "intra_epoch,crop",
    [(False, []), (True, []), (True, ["--max_duration", "0.5", "--crop", "random"])],
    ids=["epoch-boundary", "mid-epoch", "mid-epoch-random-crops"],
)
def test_killed_head_training_ends_as_an_uninterrupted_run(
    tmp_path_factory, sb_tiny, tmp_path, intra_epoch, crop
):
    # linear.yaml: SpecAugment masks and a warm-up/cosine schedule over steps; random crops are drawn
    # in the data pipeline
    _check_resume(
        tmp_path_factory,
        sb_tiny,
        tmp_path,
        "linear.yaml",
        12,
        ["--channel_mask_width", "8", "--batch_size", "2", *crop],
        intra_epoch,
    )


@pytest.mark.parametrize("intra_epoch", [False, True], ids=["epoch-boundary", "mid-epoch"])
def test_killed_bas_search_ends_as_an_uninterrupted_run(tmp_path_factory, sb_tiny, tmp_path, intra_epoch):
    # Gumbel noise, the architecture optimiser and the temperature schedule
    _check_resume(
        tmp_path_factory,
        sb_tiny,
        tmp_path,
        "bas_search.yaml",
        12,
        ["--batch_size", "2", "--search_layers", "2"],
        intra_epoch,
        files=("search_log.jsonl", "arch.txt"),
    )


@pytest.mark.parametrize("intra_epoch", [False, True], ids=["epoch-boundary", "mid-epoch"])
def test_killed_finetuning_ends_as_an_uninterrupted_run(tmp_path_factory, sb_tiny, tmp_path, intra_epoch):
    # the tiny upstream's dropout; flea.yaml accumulates gradients over 2 batches, which a mid-epoch
    # checkpoint must not split
    _check_resume(tmp_path_factory, sb_tiny, tmp_path, "flea.yaml", 4, ["--batch_size", "2"], intra_epoch)
