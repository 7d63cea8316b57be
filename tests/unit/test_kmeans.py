"""k-means pseudo labels: train-only fitting, leakage refusals, .km files fairseq's HubertDataset accepts."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
faiss = pytest.importorskip("faiss")
sf = pytest.importorskip("soundfile")

from serkit.cluster import kmeans as km  # noqa: E402
from serkit.data.manifest import Utterance, read_split, write_split  # noqa: E402
from serkit.upstream import load_upstream  # noqa: E402
from serkit.upstream.features import FeatureReader, collect_inputs, dump_features  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402

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


def _speaker_dependent_fold(setup, path: Path, protocol: str, test: list) -> Path:
    """A fold of ``protocol`` (fold.json as `serkit split` writes it) whose test shares spk0 with train."""
    by = setup["by"]
    write_split(path, "train", by["spk0"][:2] + by["spk1"], setup["wav_root"])
    write_split(path, "test", test, setup["wav_root"])
    (path / "fold.json").write_text(json.dumps({"protocol": protocol, "fold": 1}))
    return path


def test_a_speaker_dependent_protocol_shares_speakers_but_not_utterances(setup, tmp_path):
    """MELD's official split and SAVEE's 10-fold CV share speakers between train and test by design:
    k-means on their training split is no leak (FLEA on those corpora); a shared utterance still is,
    and a speaker-independent protocol still refuses shared speakers."""
    by = setup["by"]
    fold = _speaker_dependent_fold(setup, tmp_path / "meld", "meld_official", by["spk0"][2:] + by["spk3"])
    meta = km.fit(setup["feats"], fold, tmp_path / "m.npz", n_clusters=2, max_frames=50)
    assert meta["speakers"] == ["spk0", "spk1"] and meta["sees_test_audio"] is False
    info = km.apply(tmp_path / "m.npz", setup["feats"], fold, tmp_path / "labels", splits=("train", "test"))
    assert info["transductive"] is False
    leaky = _speaker_dependent_fold(setup, tmp_path / "leaky", "meld_official", by["spk0"][1:] + by["spk3"])
    with pytest.raises(SerkitError, match=r"shares 1 utterance\(s\) \['spk0_u1'\]"):
        km.fit(setup["feats"], leaky, tmp_path / "l.npz", n_clusters=2)
    loso = _speaker_dependent_fold(setup, tmp_path / "loso", "iemocap_loso5", by["spk0"][2:] + by["spk3"])
    with pytest.raises(SerkitError, match=r"speaker\(s\) \['spk0'\]"):
        km.fit(setup["feats"], loso, tmp_path / "s.npz", n_clusters=2)


def test_apply_on_a_speaker_dependent_fold_needs_a_model_of_its_training_split(setup, tmp_path):
    """Speakers cannot tell a model fitted on another fold's training split (which may hold this fold's
    test utterances) on a speaker-dependent protocol: the fitted utterances must be this fold's."""
    by = setup["by"]
    fold = _speaker_dependent_fold(setup, tmp_path / "cv1", "savee_cv10", by["spk0"][2:])
    other = tmp_path / "cv2"
    write_split(other, "train", by["spk0"][1:] + by["spk1"], setup["wav_root"])
    write_split(other, "test", by["spk0"][:1], setup["wav_root"])
    (other / "fold.json").write_text(json.dumps({"protocol": "savee_cv10", "fold": 2}))
    km.fit(setup["feats"], other, tmp_path / "o.npz", n_clusters=2, max_frames=50)
    with pytest.raises(SerkitError, match="not on this fold's training split"):
        km.apply(tmp_path / "o.npz", setup["feats"], fold, tmp_path / "labels", splits=("train", "test"))
    assert not (tmp_path / "labels").exists()


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


def _frames(reader, utts):
    return sum(reader.num_frames(u.utt) for u in utts)


def _spy_loads(monkeypatch):
    loaded = []
    real = FeatureReader.load

    def spy(self, utt, layers=None):
        loaded.append(utt)
        return real(self, utt, layers)

    monkeypatch.setattr(FeatureReader, "load", spy)
    return loaded


def test_fit_counts_the_frames_of_each_split_it_sees(setup, tmp_path, monkeypatch):
    """Train-only: only training frames are read and counted; transductive: every split's frames are."""
    reader = FeatureReader(setup["feats"])
    by = setup["by"]
    train, valid, test = by["spk0"] + by["spk1"], by["spk2"], by["spk3"]
    loaded = _spy_loads(monkeypatch)
    meta = km.fit(setup["feats"], setup["fold"], tmp_path / "train.npz", n_clusters=3, max_frames=10**6)
    assert set(loaded) == {u.utt for u in train}
    assert meta["frames_per_split"] == {"train": _frames(reader, train)}
    assert meta["num_frames"] == _frames(reader, train)

    loaded.clear()
    meta = km.fit(
        setup["feats"],
        setup["fold"],
        tmp_path / "all.npz",
        n_clusters=3,
        max_frames=10**6,
        splits=["train", "valid", "test"],
        transductive=True,
    )
    assert set(loaded) == {u.utt for u in train + valid + test}  # held-out audio read on purpose
    want = {"train": _frames(reader, train), "valid": _frames(reader, valid), "test": _frames(reader, test)}
    assert meta["frames_per_split"] == want and meta["available_frames_per_split"] == want
    assert meta["num_frames"] == sum(want.values()) and meta["sees_test_audio"] is True
    info = km.apply(tmp_path / "all.npz", setup["feats"], setup["fold"], tmp_path / "labels")
    saved = json.loads((tmp_path / "labels" / "km.json").read_text())
    assert saved["fit_splits"] == ["train", "valid", "test"] and saved["fit_frames_per_split"] == want
    assert info["fit_frames_per_split"]["test"] == _frames(reader, test) > 0

    # capped: the sample is spread over the splits and still counted per split
    meta = km.fit(
        setup["feats"],
        setup["fold"],
        tmp_path / "cap.npz",
        n_clusters=3,
        max_frames=60,
        splits=["train", "valid", "test"],
        transductive=True,
    )
    assert sum(meta["frames_per_split"].values()) == 60 and meta["frames_per_split"]["test"] > 0


# --- the k-means models published with fairseq's HuBERT / textless-NLP examples -----------------------


def _sklearn_model(setup, k=4):
    """A MiniBatchKMeans fitted as fairseq's learn_kmeans.py does, on the fold's training frames."""
    from sklearn.cluster import MiniBatchKMeans

    reader = FeatureReader(setup["feats"])
    x = np.concatenate([reader.load(u.utt)[0] for u in setup["by"]["spk0"] + setup["by"]["spk1"]])
    return MiniBatchKMeans(
        n_clusters=k,
        init="k-means++",
        max_iter=100,
        batch_size=10000,
        compute_labels=False,
        tol=0.0,
        max_no_improvement=100,
        init_size=None,
        n_init=3,
        reassignment_ratio=0.0,
        random_state=0,
    ).fit(x), reader


class _Unseekable(io.RawIOBase):
    """A write-only stream: joblib then writes arrays without alignment padding, as joblib < 1.2 did."""

    def __init__(self, path):
        self.f = open(path, "wb")

    def writable(self):
        return True

    def write(self, b):
        return self.f.write(b)

    def close(self):
        self.f.close()
        super().close()


@pytest.mark.parametrize("writer", ["joblib", "joblib-unaligned", "pickle", "pickle-sklearn<0.22"])
def test_apply_reads_a_published_sklearn_kmeans_model(setup, tmp_path, writer):
    import pickle

    joblib = pytest.importorskip("joblib")
    model, reader = _sklearn_model(setup)
    path = tmp_path / "km.bin"
    if writer == "joblib":
        joblib.dump(model, path)  # what fairseq's learn_kmeans.py does
    elif writer == "joblib-unaligned":
        with _Unseekable(path) as f:
            joblib.dump(model, f)
    elif writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump(model, f)
    else:  # protocol 2 names globals as text: rename the module to scikit-learn < 0.22's
        raw = pickle.dumps(model, protocol=2)
        assert b"sklearn.cluster._kmeans\n" in raw
        path.write_bytes(raw.replace(b"sklearn.cluster._kmeans\n", b"sklearn.cluster.k_means_\n"))
    centroids, meta = km.load_model(path)
    np.testing.assert_array_equal(centroids, model.cluster_centers_.astype(np.float32))
    assert meta["layer"] is None and meta["n_clusters"] == 4 and meta["dim"] == 39
    with pytest.raises(SerkitError, match="--layer"):
        km.apply(path, setup["feats"], setup["fold"], tmp_path / "nolayer")
    info = km.apply(path, setup["feats"], setup["fold"], tmp_path / "labels", layer=0)
    assert info["layer"] == 0 and info["fit_splits"] == [] and info["transductive"] is False
    for split in ("train", "valid", "test"):
        lines = (tmp_path / "labels" / f"{split}.km").read_text().splitlines()
        for line, u in zip(lines, read_split(setup["fold"], split), strict=True):
            want = model.predict(reader.load(u.utt)[0].astype(np.float32))
            assert [int(t) for t in line.split()] == want.tolist()


def test_a_pickle_naming_anything_else_is_refused_and_not_run(setup, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(Evil(), protocol=4))
    with pytest.raises(SerkitError, match=r"refused: global '(posix|os)\.system' is not allowed"):
        km.load_model(path)
    with pytest.raises(SerkitError, match="refused"):
        km.apply(path, setup["feats"], setup["fold"], tmp_path / "labels", layer=0)
    assert not marker.exists() and not (tmp_path / "labels").exists()

    # the same payload hidden inside an otherwise valid k-means model's state
    joblib = pytest.importorskip("joblib")
    model, _ = _sklearn_model(setup, k=2)
    model.payload = Evil()
    joblib.dump(model, tmp_path / "evil_km.bin")
    with pytest.raises(SerkitError, match="is not allowed"):
        km.load_model(tmp_path / "evil_km.bin")
    assert not marker.exists()
    # a bare numpy array is not a k-means model
    path.write_bytes(pickle.dumps(np.zeros((2, 3))))
    with pytest.raises(SerkitError, match="not a scikit-learn k-means model"):
        km.load_model(path)


def test_fit_never_overwrites_a_published_kmeans_file(setup, tmp_path):
    joblib = pytest.importorskip("joblib")
    from serkit.cli import main

    model, _ = _sklearn_model(setup, k=2)
    path = tmp_path / "km500.bin"
    joblib.dump(model, path)
    before = path.read_bytes()
    rc = main(
        [
            "kmeans",
            "fit",
            "--feats",
            str(setup["feats"]),
            "--fold",
            str(setup["fold"]),
            "--n-clusters",
            "2",
            "--max-frames",
            "50",
            "--out",
            str(path),
        ]
    )
    assert rc == 2 and path.read_bytes() == before  # read as k-means for apply, never replaced by fit
