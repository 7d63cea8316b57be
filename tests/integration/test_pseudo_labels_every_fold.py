"""Pseudo labels made by serkit train fairseq's own HuBERT pretraining on every fold of the mini corpus.

The path a real user takes, at toy size: mini IEMOCAP -> prepare -> iemocap_loso5 folds -> MFCC
features dumped once -> per fold, k-means fitted on that fold's training split only and applied to
train/valid -> `fairseq-hydra-train` with fairseq's `hubert_pretraining` task and `hubert` model
(no serkit code inside the trainer) for a few updates on the fold's tsv and .km files.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")
pytest.importorskip("faiss")

from tests.fixtures.fairseq_train import hydra_train  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.fairseq]


def serkit(*args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "serkit", *args], capture_output=True, text=True)
    assert res.returncode == 0, f"serkit {' '.join(args)}\n{res.stdout[-3000:]}{res.stderr[-3000:]}"


def test_hubert_pretraining_trains_on_every_fold(tmp_path):
    from serkit.data import mini
    from serkit.data.manifest import read_split

    root = mini.build("iemocap", tmp_path / "db", seed=11, utts_per_class=3, extra_per_speaker=1)
    data, folds = tmp_path / "data", tmp_path / "data" / "iemocap_loso5"
    serkit("prepare", "iemocap", "--root", str(root), "--out", str(data))
    serkit("split", "iemocap_loso5", str(data), "--out", str(folds))
    serkit(
        "dump-features",
        "--upstream",
        "mfcc",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "mfcc"),
        "--no-progress",
    )
    fold_dirs = sorted(folds.glob("fold*"))
    assert len(fold_dirs) == 5
    for fold in fold_dirs:
        labels = tmp_path / "km" / fold.name
        serkit(
            "kmeans",
            "fit",
            "--feats",
            str(tmp_path / "mfcc"),
            "--fold",
            str(fold),
            "--split",
            "train",
            "--n-clusters",
            "8",
            "--out",
            str(labels / "km.model"),
        )
        serkit(
            "kmeans",
            "apply",
            "--model",
            str(labels / "km.model"),
            "--feats",
            str(tmp_path / "mfcc"),
            "--fold",
            str(fold),
            "--splits",
            "train,valid",
            "--out",
            str(labels),
        )
        meta = json.loads((labels / "km.json").read_text())
        assert meta["transductive"] is False and meta["fit"]["splits"] == ["train"]
        test_speakers = {u.spk for u in read_split(fold, "test")}
        assert not test_speakers & {u.spk for u in read_split(fold, "train")}
        log = hydra_train(
            "hubert_tiny_iter1",
            tmp_path / "hubert" / fold.name,
            f"task.data={fold}",
            f"task.label_dir={labels}",
            "optimization.max_update=3",
            "dataset.validate_interval_updates=3",
            "checkpoint.save_interval_updates=3",
        )
        assert "num_updates 3" in log, log[-2000:]
        assert (tmp_path / "hubert" / fold.name / "checkpoint_last.pt").is_file()
