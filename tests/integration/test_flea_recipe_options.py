"""recipes/IEMOCAP/run.sh's FLEA options act: --transductive fits k-means on every split's frames,
--cpt-update-freq reaches fairseq and the log states the CPT batch, --tapt-km labels each fold with a
published (joblib) k-means model and continues pretraining on them before the teacher,
--teacher-pooling picks the teacher's pooling.

A mini IEMOCAP of its own (seed 7) passed with --root, so the recipe takes the real-data path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.recipes import run_recipe

pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")
pytest.importorskip("speechbrain")

pytestmark = [pytest.mark.slow, pytest.mark.fairseq]

SHORT = [
    "--folds",
    "1",
    "--layer",
    "2",
    "--nclusters",
    "4",
    "--teacher-epochs",
    "1",
    "--finetune-lr",
    "0.001",
    "--cpt-updates",
    "2",
    "--cpt-config",
    "../../plugins/serkit/conf/fairseq/cpt_hubert_tiny.yaml",
    "--device",
    "cpu",
    "--method",
    "flea",
    "--valid",
    "speaker",
]


def run(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return run_recipe("IEMOCAP", *args, timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_hubert):
    from serkit.data import mini

    base = tmp_path_factory.mktemp("flea_recipe")
    root = mini.build("iemocap", base / "corpus", seed=7, utts_per_class=2, extra_per_speaker=1)
    ckpt = tiny_hubert
    work = base / "work"
    args = ["--root", str(root), "--upstream", str(ckpt), "--workdir", str(work), *SHORT]
    return {
        "base": base,
        "work": work,
        "ckpt": ckpt,
        "args": args,
        "fold": work / "data" / "iemocap" / "iemocap_loso5" / "fold1",
    }


def _frames(fold: Path, split: str) -> int:
    from serkit.cluster.kmeans import expected_frames
    from serkit.data.manifest import read_split

    return sum(expected_frames(u.num_samples) for u in read_split(fold, split))


@pytest.fixture(scope="module")
def transductive(setup):
    """Stages 0-2 with --transductive true under --tag trans: the labels the CPT test continues from."""
    return run(*setup["args"], "--tag", "trans", "--transductive", "true", "--stop-stage", "2")


def test_transductive_kmeans_fits_on_every_split_and_says_so(setup, transductive):
    res = transductive
    assert res.returncode == 0, res.stderr[-4000:]
    fold, km = setup["fold"], setup["work"] / "exp" / "trans" / "km" / "fold1"
    meta = json.loads((km / "km.json").read_text())
    want = {s: _frames(fold, s) for s in ("train", "valid", "test")}  # all frames: under the sampling cap
    assert meta["fit_splits"] == ["train", "valid", "test"] and meta["fit_frames_per_split"] == want
    assert meta["transductive"] is True and meta["fit"]["sees_test_audio"] is True
    assert f"k-means frames per split: {want}" in res.stderr
    # the default fits on the training split's frames alone
    res = run(*setup["args"], "--tag", "inductive", "--stop-stage", "2")
    assert res.returncode == 0, res.stderr[-4000:]
    meta = json.loads((setup["work"] / "exp" / "inductive" / "km" / "fold1" / "km.json").read_text())
    assert meta["fit_splits"] == ["train"] and meta["fit_frames_per_split"] == {"train": want["train"]}
    teacher = setup["work"] / "exp" / "inductive" / "teacher" / "fold1"
    assert "pooling: mean" in (teacher / "hyperparams.yaml").read_text()  # --teacher-pooling's default
    assert json.loads((teacher / "train_info.json").read_text())["upstream"] == str(setup["ckpt"].resolve())


def test_cpt_update_freq_reaches_fairseq_and_the_batch_is_logged(setup, transductive):
    import torch

    assert transductive.returncode == 0, transductive.stderr[-4000:]  # stage 3 continues from its labels
    res = run(
        *setup["args"],
        "--tag",
        "trans",
        "--transductive",
        "true",
        "--stage",
        "3",
        "--stop-stage",
        "3",
        "--cpt-update-freq",
        "2",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "batch: 20 s of audio per update = 10 s x 1 GPU(s) x update_freq 2" in res.stderr
    ckpt = torch.load(
        setup["work"] / "exp" / "trans" / "cpt" / "fold1" / "checkpoint_last.pt",
        map_location="cpu",
        weights_only=False,
    )
    assert list(ckpt["cfg"]["optimization"]["update_freq"]) == [2]
    res = run(*setup["args"], "--cpt-update-freq", "0", "--stop-stage", "0")
    assert res.returncode != 0 and "--cpt-update-freq 0" in res.stderr


def test_tapt_km_labels_each_fold_with_a_published_model_before_the_teacher(setup):
    joblib = pytest.importorskip("joblib")
    from sklearn.cluster import MiniBatchKMeans

    from serkit.data.manifest import read_split
    from serkit.upstream.features import FeatureReader

    # a "published" model: sklearn MiniBatchKMeans on the upstream's layer 2, written with joblib.dump
    feats = setup["base"] / "tapt_feats"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "serkit",
            "dump-features",
            "--upstream",
            str(setup["ckpt"]),
            "--layers",
            "2",
            "--data",
            str(setup["fold"] / "train.tsv"),
            "--out",
            str(feats),
            "--dtype",
            "float32",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    reader = FeatureReader(feats)
    x = np.concatenate([reader.load(u)[0] for u in reader.keys()]).astype(np.float32)
    model = MiniBatchKMeans(n_clusters=6, n_init=3, batch_size=10000, random_state=0).fit(x)
    km_file = setup["base"] / "km6.bin"
    joblib.dump(model, km_file)

    res = run(
        *setup["args"],
        "--tag",
        "tapt",
        "--tapt-km",
        str(km_file),
        "--tapt-layer",
        "2",
        "--teacher-pooling",
        "attention",
        "--stop-stage",
        "1",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    exp = setup["work"] / "exp" / "tapt"
    labels = exp / "tapt_km" / "fold1"
    (dump,) = (setup["work"] / "dump").glob("hubert_tiny-*/layer2")  # the recipe's own dump of layer 2
    recipe_feats = FeatureReader(dump)
    lines = (labels / "train.km").read_text().splitlines()
    utts = read_split(setup["fold"], "train")
    assert len(lines) == len(utts)
    for line, u in zip(lines, utts):
        want = model.predict(recipe_feats.load(u.utt)[0].astype(np.float32)).tolist()
        assert [int(t) for t in line.split()] == want
    assert json.loads((labels / "km.json").read_text())["fit"]["sklearn_version"]
    ckpt = exp / "tapt" / "fold1" / "checkpoint_last.pt"
    assert ckpt.is_file()
    info = json.loads((exp / "teacher" / "fold1" / "train_info.json").read_text())
    assert info["upstream"] == str(ckpt.resolve())  # the teacher starts from the TAPT model
    assert "pooling: attention" in (exp / "teacher" / "fold1" / "hyperparams.yaml").read_text()
    method = json.loads((exp / "teacher" / "run.json").read_text())["method"]
    assert "TAPT on km6.bin labels of layer 2" in method and "attention pooling" in method

    res = run(
        *setup["args"],
        "--tag",
        "tapt2",
        "--tapt-km",
        str(km_file),
        "--tapt-labels",
        str(labels),
        "--stop-stage",
        "1",
    )
    assert res.returncode != 0 and "pass one" in res.stderr
