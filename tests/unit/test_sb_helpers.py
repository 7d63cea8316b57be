"""Tiny fixtures shared by the serkit.speechbrain tests (no tests here).

A fold of short synthetic "utterances": each class is a tone at its own pitch with a little noise, so a
head on top of a random tiny HuBERT can separate them; a tiny fairseq HuBERT checkpoint
(`serkit make-upstream tiny-hubert`) and its features (`serkit dump-features`), built once per session.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASSES = ["ang", "hap", "neu", "sad"]
PITCH = {"ang": 220.0, "hap": 660.0, "neu": 1500.0, "sad": 3200.0}
SR = 16000
_CACHE: dict = {}


def write_tone(path: Path, pitch: float, seconds: float, rng, sample_rate: int = SR,
               channels: int = 1) -> int:
    import soundfile as sf

    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    x = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.standard_normal(n)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(str(path), x.astype(np.float32), sample_rate, subtype="PCM_16")
    return n


def make_fold(root: Path, per_class=(4, 2, 2), seed: int = 0) -> Path:
    """A fold with train/valid/test = per_class utterances of each class; returns the fold directory."""
    from serkit.data.manifest import Utterance, write_dict, write_split

    rng = np.random.default_rng(seed)
    wav_dir = root / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    fold = root / "fold1"
    fold.mkdir(parents=True, exist_ok=True)
    counts = {c: 0 for c in CLASSES}
    for split, n in zip(("train", "valid", "test"), per_class):
        utts = []
        for c in CLASSES:
            for i in range(n):
                utt = f"{split}_{c}_{i:02d}"
                path = wav_dir / f"{utt}.wav"
                seconds = float(rng.uniform(0.4, 0.9))
                num = write_tone(path, PITCH[c] * float(rng.uniform(0.95, 1.05)), seconds, rng)
                utts.append(Utterance(utt=utt, wav=str(path.resolve()), num_samples=num, emo=c,
                                      spk=f"spk{i % 2}"))
                counts[c] += split == "train"
        rng.shuffle(utts)  # the fold's order is not sorted by class or length
        write_split(fold, split, utts, root=str(wav_dir))
    write_dict(fold, CLASSES, counts)
    (fold / "fold.json").write_text(json.dumps({"protocol": "toy", "fold": 1}), encoding="utf-8")
    return fold


def tiny_setup(tmp_path_factory) -> dict:
    """{"fold", "ckpt", "feats"}: built once per test session."""
    if "setup" not in _CACHE:
        from serkit.cli import main as serkit

        root = tmp_path_factory.mktemp("sb_tiny")
        fold = make_fold(root)
        ckpt = root / "tiny_hubert.pt"
        assert serkit(["make-upstream", "tiny-hubert", "--out", str(ckpt)]) == 0
        feats = root / "feats"
        assert serkit(["dump-features", "--upstream", str(ckpt), "--layers", "all", "--data", str(fold),
                       "--out", str(feats), "--dtype", "float32", "--no-progress"]) == 0
        _CACHE["setup"] = {"root": root, "fold": fold, "ckpt": ckpt, "feats": feats}
    return _CACHE["setup"]


REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "recipes" / "IEMOCAP" / "conf"
#: the configs shared by the corpora (shiftser, bas, bas_search, mfsn, the mfsn_mini overlay)
SHARED_CONF = REPO / "plugins" / "serkit" / "conf"


def head_conf(name: str) -> list[str]:
    """`serkit train` arguments naming the config of ShiftSER's head ``name``."""
    return [str(SHARED_CONF / "shiftser.yaml"), "--method", name]


def read_predictions(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def split_ids(fold: Path, split: str) -> list[str]:
    return list(json.loads((fold / f"{split}.json").read_text(encoding="utf-8")))
