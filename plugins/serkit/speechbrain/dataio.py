"""SpeechBrain datasets for one fold: cached features or waveforms, plus the emotion label.

A fold directory (``serkit split``) holds ``<split>.json`` (``{utt: {"wav", "duration", "emo", "spk"}}``)
and ``dict.emo.txt`` (the class list in label-index order). Items:

- ``id``: the utterance id (the json key);
- ``label``: the class index from ``dict.emo.txt`` (a LongTensor of shape (1,), SpeechBrain's habit);
- ``feats``: cached features ``(T, L, C)`` from a ``serkit dump-features`` directory (time first, so
  SpeechBrain's ``PaddedBatch`` pads the time axis and its relative lengths refer to frames);
- ``sig``: the waveform (S,) at 16 kHz.

``max_duration`` (seconds) limits what a model sees of each utterance, on either input: longer
utterances are cropped to ``max_duration`` (``crop="start"``: the first seconds, in every split;
``crop="random"``: a random window in training, the first seconds in evaluation); with ``pad_to_max``
shorter ones are zero-padded to it, so that every item has the same length and the padding counts as
signal (no padding mask: the official ShiftSER code's 7.5 s clips). Cached features are cut in frames
(7.5 s = 374 frames of a 20 ms upstream), from features computed on the whole utterance.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.manifest import read_classes
from ..utils import SerkitError

if TYPE_CHECKING:
    from speechbrain.dataio.dataset import DynamicItemDataset
    from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler

    from ..upstream.features import FeatureReader

    Transform = Callable[[torch.Tensor], torch.Tensor]

log = logging.getLogger("serkit.speechbrain")

SAMPLE_RATE = 16000
#: Sample rates outside this range are refused (a header declaring 1 Hz would resample 8 KB into 1 GB).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000


def load_wav(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    resample: bool = True,
    max_duration: float | None = None,
) -> torch.Tensor:
    """Read an audio file as a mono float32 tensor (S,) at ``sample_rate``.

    Multi-channel audio is averaged to mono. Another sample rate is resampled (with a warning) when
    ``resample`` is True, refused otherwise. A missing, unreadable or empty file, a sample rate outside
    ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``, a duration above ``max_duration`` seconds (both read from the
    header, before the samples) and NaN or Inf samples raise :class:`SerkitError` naming the file.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise SerkitError(f"{path}: file not found")
    try:
        info = sf.info(str(path))
        if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
            raise SerkitError(
                f"{path}: sample rate {info.samplerate} Hz is outside {MIN_SAMPLE_RATE}.."
                f"{MAX_SAMPLE_RATE} Hz; the header is wrong or this is not speech audio"
            )
        seconds = info.frames / info.samplerate
        if max_duration is not None and seconds > max_duration:
            raise SerkitError(
                f"{path}: {seconds:.1f} s of audio is longer than --max-duration "
                f"{max_duration:g} s; cut it into utterances, or raise --max-duration"
            )
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except SerkitError:
        raise
    except Exception as e:  # libsndfile's messages do not name the file
        raise SerkitError(f"{path}: unreadable audio ({e}); pass a wav/flac/ogg file") from None
    if data.shape[0] == 0:
        raise SerkitError(f"{path}: empty audio (0 samples)")
    finite = np.isfinite(data).all(axis=1)
    if not finite.all():
        raise SerkitError(
            f"{path}: non-finite samples (NaN or Inf) at {int((~finite).sum())} time step(s), "
            f"the first at {int(np.argmin(finite)) / sr:.3f} s; the file is corrupt"
        )
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]))
    if sr != sample_rate:
        if not resample:
            raise SerkitError(
                f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz; resample it "
                f"(`sox {path.name} -r {sample_rate} out.wav`)"
            )
        from serkit.data.audio import resample  # the resampler `serkit prepare` converts corpora with

        log.warning("%s: sample rate %d Hz, resampling to %d Hz", path, sr, sample_rate)
        wav = torch.from_numpy(resample(wav.numpy(), sr, sample_rate))
    return wav


def label_encoder(classes: list[str], where: str = "") -> Callable[[str], int]:
    """A function mapping a class name to its index; unknown names raise SerkitError."""
    index = {c: i for i, c in enumerate(classes)}

    def encode(emo: str) -> int:
        try:
            return index[emo]
        except KeyError:
            raise SerkitError(
                f"{where}: label {emo!r} is not in dict.emo.txt {classes}; re-run `serkit split`"
            ) from None

    return encode


CROPS = ("start", "random")


def crop_to(x: torch.Tensor, max_len: int, crop: str = "start", pad: bool = False) -> torch.Tensor:
    """Cut ``x`` to at most ``max_len`` items along its first axis (zero-pad it to ``max_len`` with ``pad``).

    ``crop="start"`` keeps the first ``max_len``; ``"random"`` a window drawn with torch's global generator.

    Example
    -------
    >>> crop_to(torch.arange(5), 3), crop_to(torch.arange(2), 3, pad=True)
    (tensor([0, 1, 2]), tensor([0, 1, 0]))
    """
    n = x.shape[0]
    if n > max_len:
        start = 0 if crop == "start" else int(torch.randint(0, n - max_len + 1, ()))
        x = x[start : start + max_len]
    elif pad and n < max_len:
        x = torch.cat([x, x.new_zeros((max_len - n, *x.shape[1:]))], dim=0)
    return x


def class_balanced_sampler(dataset: DynamicItemDataset, seed: int = 0) -> ReproducibleWeightedRandomSampler:
    """A sampler drawing ``len(dataset)`` training items per epoch with replacement, each with weight
    1 / (count of its class): every class is drawn equally often on average (FLEA's official code,
    ``WeightedRandomSampler``). Reproducible from ``seed`` and the epoch (``set_epoch``)."""
    from collections import Counter

    from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler

    with dataset.output_keys_as(["emo"]):
        emos = [item["emo"] for item in dataset]
    counts = Counter(emos)
    weights = [1.0 / counts[e] for e in emos]
    return ReproducibleWeightedRandomSampler(
        weights, num_samples=len(weights), replacement=True, seed=int(seed)
    )


def _select_layers(feats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return feats.index_select(1, index)


def _chain(x: torch.Tensor, steps: Iterable[Transform]) -> torch.Tensor:
    for step in steps:
        x = step(x)
    return x


def duration_limit(
    max_duration: float | str | None,
    crop: str = "start",
    pad_to_max: bool = False,
    reader: FeatureReader | None = None,
    where: str = "hparams",
) -> int | None:
    """Check the crop options and return ``max_duration`` in items of the input (frames of ``reader``'s
    features, else samples at 16 kHz); None when ``max_duration`` is None (no limit).

    Example
    -------
    >>> duration_limit(7.5), duration_limit(None)
    (120000, None)
    """
    if crop not in CROPS:
        raise SerkitError(f"{where}: crop {crop!r} is not one of {list(CROPS)}")
    if max_duration is None:
        if pad_to_max:
            raise SerkitError(f"{where}: pad_to_max needs max_duration (seconds)")
        return None
    try:
        seconds = float(max_duration)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise SerkitError(
            f"{where}: max_duration must be a positive number of seconds or null, got {max_duration!r}"
        )
    samples = int(round(seconds * SAMPLE_RATE))
    if reader is None:
        return samples
    from ..upstream import FRAME_RATE, num_frames

    rate = float(getattr(reader, "frame_rate", FRAME_RATE) or FRAME_RATE)
    frames = num_frames(samples) if rate == FRAME_RATE else int(seconds * rate)
    return max(1, frames)


def feature_pipeline(reader: FeatureReader, transform: Transform | None = None) -> Callable:
    """A SpeechBrain dynamic item ``id -> feats (T, L, C)`` reading a FeatureReader (then ``transform``)."""
    import speechbrain as sb

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("feats")
    def pipeline(utt: str) -> torch.Tensor:
        try:
            feats = reader.load(utt)
        except KeyError:
            raise SerkitError(
                f"{getattr(reader, 'path', 'features')}: no features for utterance {utt!r}; "
                "dump features for every split of the fold (`serkit dump-features`)"
            ) from None
        feats = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).transpose(0, 1)
        return feats if transform is None else transform(feats)

    return pipeline


def wav_pipeline(transform: Transform | None = None) -> Callable:
    """A SpeechBrain dynamic item ``wav -> sig (S,)`` (then ``transform``)."""
    import speechbrain as sb

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def pipeline(wav: str) -> torch.Tensor:
        sig = load_wav(wav)
        return sig if transform is None else transform(sig)

    return pipeline


def fold_datasets(
    fold_dir: str | os.PathLike,
    reader: FeatureReader | None = None,
    splits: Sequence[str] = ("train", "valid", "test"),
    sort_eval: bool = True,
    max_duration: float | str | None = None,
    crop: str = "start",
    pad_to_max: bool = False,
    feature_layers: list[int] | None = None,
) -> tuple[dict[str, DynamicItemDataset], list[str]]:
    """Build ``{split: DynamicItemDataset}`` for a fold, plus the class list.

    ``reader`` (a ``FeatureReader``) gives cached features (``feats``); without it the datasets give
    waveforms (``sig``). Evaluation splits are sorted by duration (less padding); the order of rows in
    prediction files is restored from ``split_order``. ``max_duration``, ``crop`` and ``pad_to_max``:
    see the module docstring. ``feature_layers``: positions along the cached features' layer axis to
    keep (default all).
    """
    import functools

    import speechbrain as sb

    fold_dir = Path(fold_dir)
    classes = read_classes(fold_dir)
    max_len = duration_limit(max_duration, crop, pad_to_max, reader, where=str(fold_dir))
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
        def label_pipeline(emo: str, encode: Callable[[str], int] = encode) -> torch.Tensor:
            return torch.tensor([encode(emo)], dtype=torch.long)

        ds.add_dynamic_item(label_pipeline)
        steps = []
        if reader is not None and feature_layers is not None:
            steps.append(functools.partial(_select_layers, index=torch.tensor(list(feature_layers))))
        if max_len is not None:
            split_crop = crop if split == "train" else "start"  # evaluation: always the first seconds
            steps.append(functools.partial(crop_to, max_len=max_len, crop=split_crop, pad=bool(pad_to_max)))
        transform = functools.partial(_chain, steps=steps) if steps else None
        if reader is not None:
            ds.add_dynamic_item(feature_pipeline(reader, transform))
            ds.set_output_keys(["id", "label", "feats"])
        else:
            ds.add_dynamic_item(wav_pipeline(transform))
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
