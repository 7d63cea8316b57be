"""fairseq-hydra-train with the recipe's configs and the serkit user dir, on a tiny fold, on CPU.

HuBERT iteration 1 (fairseq's own model), CPT from a tiny HuBERT (serkit_hubert), SER finetuning
(serkit_ser) with per-epoch predictions, then predict.py and serkit.upstream on the checkpoints.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

from tests.fixtures.fairseq_train import (  # noqa: E402
    CLASSES,
    USER_DIR,
    hydra_train,
    make_fold,
    make_tiny_hubert,
    no_unpickling_override,
)

pytestmark = [pytest.mark.slow, pytest.mark.fairseq]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fairseq_train")
    out = make_fold(root)
    out["tiny"] = make_tiny_hubert(root / "tiny_hubert.pt", num_labels=25)
    out["root"] = root
    return out


@pytest.fixture(scope="module")
def cpt(data):
    """CPT of the tiny HuBERT on 50 k-means labels, 5 updates; init_from is a copy removed afterwards."""
    init = data["root"] / "init" / "tiny_hubert.pt"
    init.parent.mkdir()
    shutil.copy(data["tiny"], init)
    out = data["root"] / "cpt"
    log = hydra_train(
        "cpt_hubert_tiny",
        out,
        f"common.user_dir={USER_DIR}",
        f"task.data={data['fold']}",
        f"task.label_dir={data['km']}",
        f"model.init_from={init}",
        "optimization.max_update=5",
        "dataset.validate_interval_updates=5",
        f"common.tensorboard_logdir={out / 'tb'}",
    )
    shutil.rmtree(init.parent)  # the checkpoints must not need it any more
    return {"dir": out, "log": log}


def test_hubert_iteration1_trains_fairseqs_own_model(data):
    out = data["root"] / "iter1"
    log = hydra_train(
        "hubert_tiny_iter1",
        out,
        f"task.data={data['fold']}",
        f"task.label_dir={data['km']}",
        "optimization.max_update=4",
    )
    assert "num_updates 4" in log and "The dataset is empty" not in log
    assert "loaded 12, skipped 0 short and 0 long" in log  # no mini-corpus turn is dropped
    state = torch.load(out / "checkpoint_last.pt", weights_only=False)
    assert state["cfg"]["model"]["_name"] == "hubert" and state["cfg"]["task"]["label_rate"] == 50
    assert state["model"]["label_embs_concat"].shape[0] == 50 + 4


def test_cpt_starts_from_init_from_and_keeps_the_cnn_frozen(data, cpt):
    src = torch.load(data["tiny"], weights_only=False)["model"]
    state = torch.load(cpt["dir"] / "checkpoint_last.pt", weights_only=False)
    model = state["model"]
    assert state["cfg"]["model"]["_name"] == "serkit_hubert"
    assert state["cfg"]["model"]["init_done"] is True  # so it loads without init_from
    assert state["optimizer_history"][-1]["num_updates"] == 5
    assert re.search(r"serkit_hubert: loaded \d+ tensors from .*init/tiny_hubert.pt", cpt["log"])
    # the CNN was loaded and never updated
    cnn = [k for k in src if k.startswith("feature_extractor.")]
    assert cnn and all(torch.equal(model[k], src[k]) for k in cnn)
    # the encoder was loaded, then moved by 5 small Adam steps (a fresh init would be O(0.1) away)
    enc = [k for k in src if k.startswith("encoder.layers.") and k.endswith("weight")]
    drift = max((model[k] - src[k]).abs().max().item() for k in enc)
    assert 0 < drift < 0.01
    # the label set is the run's 50 clusters (+4 specials), not the checkpoint's 25
    assert model["label_embs_concat"].shape == (54, 32) and src["label_embs_concat"].shape == (29, 32)
    # masked-frame loss only; no feature penalty (with the CNN frozen it has no gradient: the configs drop it)
    assert "loss_m_0" in cpt["log"] and "loss_u_0" not in cpt["log"] and "loss_features_pen" not in cpt["log"]


def test_cpt_checkpoint_extracts_features_through_serkit_upstream(cpt):
    from serkit.upstream import load_upstream

    up = load_upstream(cpt["dir"] / "checkpoint_last.pt")
    wav = torch.randn(2, 16000)
    mask = torch.zeros(2, 16000, dtype=torch.bool)
    mask[1, 8000:] = True
    hidden, frame_mask = up(wav, mask, layers=[0, 2])
    assert [h.shape for h in hidden] == [(2, 49, 64)] * 2
    assert frame_mask[1].sum() == 49 - 24


@pytest.fixture(scope="module")
def finetune(data, cpt):
    out = data["root"] / "ser"
    log = hydra_train(
        "ser_finetune",
        out,
        f"common.user_dir={USER_DIR}",
        f"task.data={data['fold']}",
        f"task.predictions_dir={out / 'predictions'}",
        f"model.upstream_path={cpt['dir'] / 'checkpoint_last.pt'}",
        "optimization.max_epoch=2",
        "dataset.batch_size=4",
        "optimization.update_freq=[1]",
        "common.log_format=simple",
        f"common.tensorboard_logdir={out / 'tb'}",
    )
    return {"dir": out, "log": log}


def tensorboard_scalars(logdir: Path) -> dict:
    """``{tag: [(step, value), ...]}`` as TensorBoard's EventAccumulator reads ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def logged_summaries(log: str, subset: str) -> list[dict]:
    """fairseq's end-of-validation lines for ``subset``: ``{"loss": .., "num_updates": .., ...}`` each."""
    rows = []
    for line in log.splitlines():
        if f"valid on '{subset}' subset" in line:
            pairs = re.findall(r"\| (\w+) ([-0-9.e]+)(?= \||$)", line)
            rows.append({k: float(v) for k, v in pairs})
    return rows


def test_finetune_writes_tensorboard_events_of_each_validation(finetune):
    for subset in ("valid", "test"):
        logged = logged_summaries(finetune["log"], subset)
        events = tensorboard_scalars(finetune["dir"] / "tb" / subset)
        assert len(logged) == 2, subset  # one validation per epoch
        for metric in ("loss", "ua", "wa"):
            assert [step for step, _ in events[metric]] == [int(r["num_updates"]) for r in logged], metric
            assert [v for _, v in events[metric]] == pytest.approx([r[metric] for r in logged], abs=0.006)
    assert "loss" in tensorboard_scalars(finetune["dir"] / "tb" / "train")


def test_cpt_writes_tensorboard_events(cpt):
    (logged,) = logged_summaries(cpt["log"], "valid")
    events = tensorboard_scalars(cpt["dir"] / "tb" / "valid")
    assert events["loss"] == [(5, pytest.approx(logged["loss"], abs=0.0006))]
    assert events["loss_m_0"][0][0] == 5


def _read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_finetune_logs_whole_set_ua_wa_and_writes_predictions_each_epoch(data, finetune):
    log = finetune["log"]
    for subset in ("valid", "test"):
        lines = [ln for ln in log.splitlines() if f"valid on '{subset}' subset" in ln]
        assert len(lines) == 2, subset  # one validation per epoch
        assert all(re.search(r"\| ua [\d.]+ \| wa [\d.]+", ln) for ln in lines), lines
    assert "best_ua" in log  # checkpoint_best is chosen on valid UA
    utts = [Path(r[0]).stem for r in _read_tsv(data["fold"] / "test.tsv")[1:]]
    labels = (data["fold"] / "test.emo").read_text().split()
    for epoch in (1, 2):
        for split in ("valid", "test"):
            rows = _read_tsv(finetune["dir"] / "predictions" / f"{split}.epoch{epoch:03d}.tsv")
            assert rows[0] == ["utt", "label", "pred", *CLASSES]
            if split == "test":
                assert [r[0] for r in rows[1:]] == utts and [r[1] for r in rows[1:]] == labels
    state = torch.load(finetune["dir"] / "checkpoint_last.pt", weights_only=False)
    assert state["cfg"]["model"]["upstream_cfg"]["model"]["_name"] == "serkit_hubert"
    assert state["task_state"]["classes"] == CLASSES


def test_predict_matches_the_last_epochs_predictions(data, finetune, tmp_path):
    out = tmp_path / "test.tsv"
    # the upstream file is not needed: the checkpoint carries the upstream
    moved = finetune["dir"].parent / "cpt_moved"
    (finetune["dir"].parent / "cpt").rename(moved)
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "serkit.fairseq_ext.predict",
                "--checkpoint",
                str(finetune["dir"] / "checkpoint_last.pt"),
                "--fold",
                str(data["fold"]),
                "--split",
                "test",
                "--out",
                str(out),
                "--batch-size",
                "3",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=no_unpickling_override() | {"OMP_NUM_THREADS": "1"},
        )
    finally:
        moved.rename(finetune["dir"].parent / "cpt")
    assert res.returncode == 0, res.stderr[-3000:]
    ours = _read_tsv(out)
    in_training = _read_tsv(finetune["dir"] / "predictions" / "test.epoch002.tsv")
    assert [r[:3] for r in ours] == [r[:3] for r in in_training]
    for a, b in zip(ours[1:], in_training[1:]):
        assert all(abs(float(x) - float(y)) < 1e-4 for x, y in zip(a[3:], b[3:]))


def test_predict_rejects_a_fold_with_other_classes(data, finetune, tmp_path, capsys):
    from serkit.fairseq_ext.predict import main

    fold = tmp_path / "fold"
    shutil.copytree(data["fold"], fold)
    (fold / "dict.emo.txt").write_text("".join(f"{c} 1\n" for c in ["ang", "hap", "neu", "fru"]))
    rc = main(
        [
            "--checkpoint",
            str(finetune["dir"] / "checkpoint_last.pt"),
            "--fold",
            str(fold),
            "--out",
            str(tmp_path / "x.tsv"),
        ]
    )
    assert rc == 2 and "differ from the checkpoint's" in capsys.readouterr().err
    assert not (tmp_path / "x.tsv").exists()


def test_cpt_resumes_from_its_checkpoint_with_weights_only_loading(data, cpt, tmp_path):
    """A stopped CPT continues from checkpoint_last.pt (fairseq's restore_file, which unpickles the
    hubert_pretraining Dictionary) without TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD."""
    out = tmp_path / "cpt"
    shutil.copytree(cpt["dir"], out)
    init = tmp_path / "tiny_hubert.pt"
    shutil.copy(data["tiny"], init)
    log = hydra_train(
        "cpt_hubert_tiny",
        out,
        f"common.user_dir={USER_DIR}",
        f"task.data={data['fold']}",
        f"task.label_dir={data['km']}",
        f"model.init_from={init}",
        "optimization.max_update=7",
        "dataset.validate_interval_updates=5",
    )
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 5 updates\)", log), log[-3000:]
    state = torch.load(out / "checkpoint_last.pt", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 7


def _ser_run(data, cpt, out: Path, max_epoch: int) -> str:
    return hydra_train(
        "ser_finetune",
        out,
        f"common.user_dir={USER_DIR}",
        f"task.data={data['fold']}",
        f"task.predictions_dir={out / 'predictions'}",
        f"model.upstream_path={cpt['dir'] / 'checkpoint_last.pt'}",
        f"optimization.max_epoch={max_epoch}",
        "dataset.batch_size=4",
        "optimization.update_freq=[1]",
        "common.log_format=simple",
        "task.max_sample_size=16000",
    )


def test_a_stopped_and_resumed_finetune_matches_an_uninterrupted_one(data, cpt, tmp_path):
    """Training crops (task.max_sample_size) are drawn from (seed, epoch, index): a finetune stopped
    after epoch 2 and continued to 4 writes the same bytes as one run of 4 epochs; the resume reads its
    checkpoint with weights_only loading."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _ser_run(data, cpt, whole, 4)
    _ser_run(data, cpt, resumed, 2)
    log = _ser_run(data, cpt, resumed, 4)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 3 @ \d+ updates\)", log), log[-3000:]
    for epoch in (3, 4):
        for split in ("valid", "test"):
            name = f"{split}.epoch{epoch:03d}.tsv"
            ours, uninterrupted = (resumed / "predictions" / name), (whole / "predictions" / name)
            assert ours.read_bytes() == uninterrupted.read_bytes(), name
    a = torch.load(whole / "checkpoint_last.pt", weights_only=False)["model"]
    b = torch.load(resumed / "checkpoint_last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


RECIPE_CPT = """set -euo pipefail
cd {recipe}
. ./path.sh
. ../../local/stage.sh
echo "unpickling override: ${{TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD-unset}}" >&2
opts="updates=4 config=cpt_hubert_tiny"
is_done {out} "$opts" {init} {labels} || {{
  bash ../../local/cpt.sh --yaml ../../plugins/serkit/conf/fairseq/cpt_hubert_tiny.yaml \\
    --fold {fold} --labels {labels} --init {init} --updates 4 --out {out}
  mark_done {out} "$opts"; }}
"""


def test_recipe_cpt_retries_a_failed_attempt_and_prints_the_validation_summary(data, tmp_path):
    """Stage 3 as run.sh runs it (path.sh, is_done, local/cpt.sh, mark_done): the recipe's environment has
    no TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; an attempt killed mid-run is retried in place (its output is not
    moved aside as if its options had changed); cpt.sh ends with fairseq's last validation summary."""
    from shlex import quote

    init = tmp_path / "tiny_hubert.pt"
    shutil.copy(data["tiny"], init)
    out = tmp_path / "exp" / "cpt" / "fold1"
    script = RECIPE_CPT.format(
        recipe=quote(str(REPO / "recipes" / "IEMOCAP")),
        out=quote(str(out)),
        init=quote(str(init)),
        labels=quote(str(data["km"])),
        fold=quote(str(data["fold"])),
    )
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    env = no_unpickling_override() | {"OMP_NUM_THREADS": "1", "PATH": path}
    # first attempt: killed once fairseq is training
    first = subprocess.Popen(
        ["bash", "-c", script],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        log = out / "train.log"
        if log.is_file() and "Start iterating over samples" in log.read_text(errors="replace"):
            os.killpg(first.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, first.stdout.read().decode()[-3000:]
    assert not (out / ".done").exists() and (out / ".options").is_file()
    # the retry: same options, same directory
    res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-5000:]
    assert "unpickling override: unset" in res.stderr
    assert "moving the old output" not in res.stderr
    assert [p.name for p in out.parent.iterdir()] == ["fold1"]
    assert (out / ".done").is_file()
    state = torch.load(out / "checkpoint_last.pt", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 4
    log = (out / "train.log").read_text()
    assert log.count("begin dry-run validation") == 2 and log.count("done training") == 1  # both attempts
    summary = [ln for ln in res.stderr.splitlines() if "valid on 'valid' subset" in ln]
    assert len(summary) == 1, res.stderr[-3000:]
    assert re.search(r"epoch 002 \| valid on 'valid' subset \| loss [\d.]+ .*\| num_updates 4$", summary[0])
