"""k-means pseudo labels: train-only fitting, leakage refusals, .km files fairseq's HubertDataset accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
faiss = pytest.importorskip("faiss")
sf = pytest.importorskip("soundfile")

from serkit.cluster import kmeans as km  # noqa: E402
from serkit.data.manifest import Utterance, write_split  # noqa: E402
from serkit.upstream import load_upstream  # noqa: E402
from serkit.upstream.features import FeatureReader, collect_inputs, dump_features  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402

os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
# 4 speakers, 3 utterances each; lengths hit frame-boundary cases (400 -> 1 frame, 719, 720, ...)
LENGTHS = [8000, 6400, 12345, 4000, 9999, 7200, 5000, 400, 719, 720, 16001, 3333]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("km")
    rng = np.random.default_rng(0)
    (root / "wav").mkdir()
    utts = []
    for i, n in enumerate(LENGTHS):
        spk = f"spk{i // 3}"
        wav = root / "wav" / f"{spk}_u{i}.wav"
        sf.write(wav, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000, subtype="FLOAT")
        utts.append(Utterance(f"{spk}_u{i}", str(wav), n, "neu", spk))
    fold = root / "fold1"
    wav_root = str(root / "wav")
    by = {s: [u for u in utts if u.spk == s] for s in ("spk0", "spk1", "spk2", "spk3")}
    write_split(fold, "train", by["spk0"] + by["spk1"], wav_root)
    write_split(fold, "valid", by["spk2"], wav_root)
    write_split(fold, "test", by["spk3"], wav_root)
    feats = root / "feats"
    dump_features(load_upstream("mfcc"), collect_inputs([str(fold)]), feats, dtype="float32", progress=False)
    return {"root": root, "fold": fold, "feats": feats, "utts": utts, "by": by, "wav_root": wav_root}


def test_kmeans_pp_seeds_one_centre_per_blob():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8)) * 50
    x = np.concatenate([c + rng.normal(size=(200, 8)) for c in centres]).astype(np.float32)
    init = km.kmeans_pp_init(x, 5, np.random.default_rng(1))
    assert all((x == c).all(1).any() for c in init)  # centres are data points
    owner = km.assign(init, centres.astype(np.float32))
    assert sorted(owner.tolist()) == [0, 1, 2, 3, 4]


def test_fit_sees_only_training_frames(setup, tmp_path, monkeypatch):
    loaded = []
    real = FeatureReader.load

    def spy(self, utt, layers=None):
        loaded.append(utt)
        return real(self, utt, layers)

    monkeypatch.setattr(FeatureReader, "load", spy)
    train = {u.utt for u in setup["by"]["spk0"] + setup["by"]["spk1"]}
    reader = FeatureReader(setup["feats"])
    x, keys = km.sample_frames(reader, sorted(train), 0, max_frames=50, seed=0)
    assert len(x) == 50 and {u for u, _ in keys} <= train
    loaded.clear()
    meta = km.fit(setup["feats"], setup["fold"], tmp_path / "m.npz", n_clusters=4, max_frames=100)
    assert set(loaded) <= train and loaded  # no valid/test utterance was even read
    assert meta["splits"] == ["train"] and meta["transductive"] is False and not meta["sees_test_audio"]
    assert meta["speakers"] == ["spk0", "spk1"] and meta["num_frames"] == 100


def test_fit_refuses_heldout_splits_without_transductive(setup, tmp_path):
    for splits in (["valid"], ["test"], ["train", "test"]):
        with pytest.raises(SerkitError, match="--transductive"):
            km.fit(setup["feats"], setup["fold"], tmp_path / "m.npz", n_clusters=3, splits=splits)
    assert not (tmp_path / "m.npz").exists()
    meta = km.fit(
        setup["feats"],
        setup["fold"],
        tmp_path / "t.npz",
        n_clusters=3,
        max_frames=80,
        splits=["train", "valid", "test"],
        transductive=True,
    )
    assert meta["transductive"] and meta["sees_test_audio"]
    info = km.apply(tmp_path / "t.npz", setup["feats"], setup["fold"], tmp_path / "labels")
    assert json.loads((tmp_path / "labels" / "km.json").read_text())["transductive"] is True
    assert info["transductive"] is True


def test_fit_refuses_a_fold_whose_train_shares_test_speakers(setup, tmp_path):
    fold = tmp_path / "leaky"
    by = setup["by"]
    write_split(fold, "train", by["spk0"] + by["spk3"][:1], setup["wav_root"])
    write_split(fold, "test", by["spk3"][1:], setup["wav_root"])
    with pytest.raises(SerkitError, match=r"speaker\(s\) \['spk3'\]"):
        km.fit(setup["feats"], fold, tmp_path / "m.npz", n_clusters=2)


def test_apply_refuses_model_fitted_on_this_folds_test_speakers(setup, tmp_path):
    other = tmp_path / "other"  # a fold where spk3 is training data
    by = setup["by"]
    write_split(other, "train", by["spk3"] + by["spk2"], setup["wav_root"])
    write_split(other, "test", by["spk0"], setup["wav_root"])
    km.fit(setup["feats"], other, tmp_path / "o.npz", n_clusters=2, max_frames=50)
    with pytest.raises(SerkitError, match="test split"):
        km.apply(tmp_path / "o.npz", setup["feats"], setup["fold"], tmp_path / "labels")


def _hubert_dataset(fold: Path, labels: Path, split: str):
    from fairseq.data import Dictionary
    from fairseq.data.audio.hubert_dataset import HubertDataset
    from fairseq.tasks.hubert_pretraining import LabelEncoder

    d = Dictionary.load(str(labels / "dict.km.txt"))
    return HubertDataset(
        str(fold / f"{split}.tsv"),
        sample_rate=16000,
        label_paths=[str(labels / f"{split}.km")],
        label_rates=50.0,
        pad_list=[d.pad()],
        eos_list=[d.eos()],
        label_processors=[LabelEncoder(d)],
        pad_audio=True,
        store_labels=False,
        shuffle=False,
    ), d


def test_km_files_are_what_fairseq_hubert_dataset_expects(setup, tmp_path, caplog):
    pytest.importorskip("fairseq")
    model = tmp_path / "m.npz"
    km.fit(setup["feats"], setup["fold"], model, n_clusters=5, max_frames=200)
    out = tmp_path / "labels"
    km.apply(model, setup["feats"], setup["fold"], out)
    dict_lines = (out / "dict.km.txt").read_text().splitlines()
    assert [line.split()[0] for line in dict_lines] == [str(i) for i in range(5)]
    for split in ("train", "valid", "test"):
        tsv = (setup["fold"] / f"{split}.tsv").read_text().splitlines()[1:]
        lines = (out / f"{split}.km").read_text().splitlines()
        assert len(lines) == len(tsv)
        for row, line in zip(tsv, lines):
            n = int(row.split("\t")[1])
            labels = line.split()
            assert len(labels) == (n - 400) // 320 + 1
            assert all(0 <= int(x) < 5 for x in labels)
        with caplog.at_level("WARNING"):
            ds, d = _hubert_dataset(setup["fold"], out, split)
        assert "differ too much" not in caplog.text  # fairseq's verify_label_lengths is satisfied
        for i in range(len(ds)):
            item = ds[i]
            assert len(item["label_list"][0]) == (len(item["source"]) - 400) // 320 + 1
        batch = ds.collater([ds[i] for i in range(len(ds))])
        assert batch["target_lengths_list"][0].tolist() == [
            (len(ds[i]["source"]) - 400) // 320 + 1 for i in range(len(ds))
        ]


def test_labels_feed_the_tiny_hubert_forward(setup, tmp_path):
    """The pseudo labels line up with the tiny HuBERT's frames in fairseq's own forward (no trimming)."""
    from serkit.upstream.tiny import make_hubert_checkpoint

    up = load_upstream(make_hubert_checkpoint(tmp_path / "tiny.pt", num_labels=5))
    model = up.model
    km.fit(setup["feats"], setup["fold"], tmp_path / "m.npz", n_clusters=5, max_frames=200)
    km.apply(tmp_path / "m.npz", setup["feats"], setup["fold"], tmp_path / "labels", splits=["train"])
    ds, _ = _hubert_dataset(setup["fold"], tmp_path / "labels", "train")
    batch = ds.collater([ds[i] for i in range(len(ds))])
    src = batch["net_input"]["source"]
    feats = model.forward_features(src)
    assert feats.size(2) == batch["target_list"][0].size(1)  # frames == labels for the longest
    model.train()
    out = model(src, target_list=batch["target_list"], padding_mask=batch["net_input"]["padding_mask"])
    assert torch.isfinite(out["features_pen"])


def test_sklearn_backend_and_cli(setup, tmp_path):
    from serkit.cli import main

    model = tmp_path / "sk.npz"
    assert (
        main(
            [
                "kmeans",
                "fit",
                "--feats",
                str(setup["feats"]),
                "--fold",
                str(setup["fold"]),
                "--n-clusters",
                "3",
                "--max-frames",
                "100",
                "--backend",
                "sklearn",
                "--out",
                str(model),
            ]
        )
        == 0
    )
    centroids, meta = km.load_model(model)
    assert centroids.shape == (3, 39) and meta["backend"] == "sklearn"
    assert (
        main(
            [
                "kmeans",
                "apply",
                "--model",
                str(model),
                "--feats",
                str(setup["feats"]),
                "--fold",
                str(setup["fold"]),
                "--splits",
                "train",
                "--out",
                str(tmp_path / "lab"),
            ]
        )
        == 0
    )
    assert (tmp_path / "lab" / "train.km").is_file()
    assert (
        main(
            [
                "kmeans",
                "fit",
                "--feats",
                str(setup["feats"]),
                "--fold",
                str(setup["fold"]),
                "--n-clusters",
                "3",
                "--split",
                "test",
                "--out",
                str(model),
            ]
        )
        == 2
    )  # refused: SerkitError -> exit 2
