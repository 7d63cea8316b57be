"""SpeechBrain datasets for one fold: cached features or waveforms, plus the emotion label.

A fold directory (``serkit split``) holds ``<split>.json`` (``{utt: {"wav", "duration", "emo", "spk"}}``)
and ``dict.emo.txt`` (the class list in label-index order). Items:

- ``id``: the utterance id (the json key);
- ``label``: the class index from ``dict.emo.txt`` (a LongTensor of shape (1,), SpeechBrain's habit);
- ``feats``: cached features ``(T, L, C)`` from a ``serkit dump-features`` directory (time first, so
  SpeechBrain's ``PaddedBatch`` pads the time axis and its relative lengths refer to frames);
- ``sig``: the waveform (S,) at 16 kHz.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..data.manifest import read_classes
from ..utils import SerkitError

log = logging.getLogger("serkit.speechbrain")

SAMPLE_RATE = 16000


def load_wav(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, resample: bool = True) -> torch.Tensor:
    """Read an audio file as a mono float32 tensor (S,) at ``sample_rate``.

    Multi-channel audio is averaged to mono. Another sample rate is resampled (with a warning) when
    ``resample`` is True, refused otherwise. A missing, unreadable or empty file raises
    :class:`SerkitError` naming it.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise SerkitError(f"{path}: file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile's messages do not name the file
        raise SerkitError(f"{path}: unreadable audio ({e}); pass a wav/flac/ogg file") from None
    if data.shape[0] == 0:
        raise SerkitError(f"{path}: empty audio (0 samples)")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]))
    if sr != sample_rate:
        if not resample:
            raise SerkitError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz; resample it "
                              f"(`sox {path.name} -r {sample_rate} out.wav`)")
        import torchaudio

        log.warning("%s: sample rate %d Hz, resampling to %d Hz", path, sr, sample_rate)
        wav = torchaudio.functional.resample(wav, sr, sample_rate)
    return wav


def label_encoder(classes: list[str], where: str = ""):
    """A function mapping a class name to its index; unknown names raise SerkitError."""
    index = {c: i for i, c in enumerate(classes)}

    def encode(emo: str) -> int:
        try:
            return index[emo]
        except KeyError:
            raise SerkitError(f"{where}: label {emo!r} is not in dict.emo.txt {classes}; re-run "
                              "`serkit split`") from None

    return encode


CROPS = ("start", "random")


def crop(x: torch.Tensor, max_len: int | None, policy: str = "start", train: bool = True) -> torch.Tensor:
    """The first axis of ``x`` cut to at most ``max_len`` items: the first ``max_len`` (``start``), or a
    window at a random offset (``random``, training only: evaluation keeps the start, so scores repeat).

    Example
    -------
    >>> crop(torch.arange(10), 4, "start").tolist()
    [0, 1, 2, 3]
    """
    if policy not in CROPS:
        raise SerkitError(f"crop: {policy!r}; choose one of {', '.join(CROPS)}")
    if max_len is None or x.shape[0] <= max_len:
        return x
    offset = int(torch.randint(x.shape[0] - max_len + 1, (1,))) if policy == "random" and train else 0
    return x[offset : offset + max_len]


def class_balanced_sampler(dataset, seed: int = 0):
    """A sampler drawing ``len(dataset)`` training items per epoch with replacement, each with weight
    1 / (count of its class): every class is drawn equally often on average (FLEA's official code,
    ``WeightedRandomSampler``). Reproducible from ``seed`` and the epoch (``set_epoch``)."""
    from collections import Counter

    from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler

    with dataset.output_keys_as(["emo"]):
        emos = [item["emo"] for item in dataset]
    counts = Counter(emos)
    weights = [1.0 / counts[e] for e in emos]
    return ReproducibleWeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                             seed=int(seed))


def feature_pipeline(reader, max_duration: float | None = None, crop_policy: str = "start",
                     train: bool = True):
    """A SpeechBrain dynamic item ``id -> feats (T, L, C)`` reading a FeatureReader (cut to
    ``max_duration`` seconds, 50 frames a second, by ``crop_policy``)."""
    import speechbrain as sb

    max_len = None if max_duration is None else int(max_duration * 50)

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("feats")
    def pipeline(utt):
        try:
            feats = reader.load(utt)
        except KeyError:
            raise SerkitError(f"{getattr(reader, 'path', 'features')}: no features for utterance {utt!r}; "
                              "dump features for every split of the fold (`serkit dump-features`)") from None
        feats = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).transpose(0, 1)
        return crop(feats, max_len, crop_policy, train)

    return pipeline


def wav_pipeline(max_duration: float | None = None, crop_policy: str = "start", train: bool = True):
    """A SpeechBrain dynamic item ``wav -> sig (S,)`` (cut to ``max_duration`` seconds by ``crop_policy``)."""
    import speechbrain as sb

    max_len = None if max_duration is None else int(max_duration * SAMPLE_RATE)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def pipeline(wav):
        return crop(load_wav(wav), max_len, crop_policy, train)

    return pipeline


def fold_datasets(fold_dir: str | os.PathLike, reader=None, splits=("train", "valid", "test"),
                  sort_eval: bool = True, max_duration: float | None = None, crop_policy: str = "start"):
    """Build ``{split: DynamicItemDataset}`` for a fold, plus the class list.

    ``reader`` (a ``FeatureReader``) gives cached features (``feats``); without it the datasets give
    waveforms (``sig``). Evaluation splits are sorted by duration (less padding); the order of rows in
    prediction files is restored from ``split_order``. ``max_duration`` (seconds) cuts every item of
    every split (as FLEA's official code truncates its inputs) by ``crop_policy`` (see :func:`crop`).
    """
    if crop_policy not in CROPS:
        raise SerkitError(f"crop: {crop_policy!r}; choose one of {', '.join(CROPS)}")
    import speechbrain as sb

    fold_dir = Path(fold_dir)
    classes = read_classes(fold_dir)
    datasets = {}
    for split in splits:
        path = fold_dir / f"{split}.json"
        if not path.is_file():
            raise SerkitError(f"{path}: not found; run `serkit split` to create the fold")
        ds = sb.dataio.dataset.DynamicItemDataset.from_json(str(path))
        if len(ds) == 0:
            raise SerkitError(f"{path}: no utterances")
        encode = label_encoder(classes, str(path))

        @sb.utils.data_pipeline.takes("emo")
        @sb.utils.data_pipeline.provides("label")
        def label_pipeline(emo, encode=encode):
            return torch.tensor([encode(emo)], dtype=torch.long)

        ds.add_dynamic_item(label_pipeline)
        train = split == "train"
        if reader is not None:
            ds.add_dynamic_item(feature_pipeline(reader, max_duration, crop_policy, train))
            ds.set_output_keys(["id", "label", "feats"])
        else:
            ds.add_dynamic_item(wav_pipeline(max_duration, crop_policy, train))
            ds.set_output_keys(["id", "label", "sig"])
        if split != "train" and sort_eval:
            ds = ds.filtered_sorted(sort_key="duration")
        datasets[split] = ds
    return datasets, classes


def split_order(fold_dir: str | os.PathLike, split: str) -> list[str]:
    """Utterance ids of a split in the fold's order (the order of rows in prediction files)."""
    import json

    path = Path(fold_dir) / f"{split}.json"
    with open(path, encoding="utf-8") as f:
        return list(json.load(f))
