"""``serkit_ser``: utterance-level emotion classification on a serkit fold, inside ``fairseq-hydra-train``.

Reads a fold written by ``serkit split``: ``<split>.tsv`` (root line, then ``relpath<TAB>num_samples``),
``<split>.<labels>`` (one class name per line, line-aligned) and ``dict.<labels>.txt`` (the classes in
label-index order). The utterance id is the wav file's stem.

Waveforms are passed raw; the model normalises them when its upstream was trained that way, so the
task needs no ``normalize`` switch to keep in step with the upstream.

Per-epoch predictions: with ``task.predictions_dir=DIR`` every validation pass over a subset writes
``DIR/<subset>.epoch<NNN>.tsv`` (header ``utt label pred <class probabilities>``, docs/interfaces.md),
so ``dataset.valid_subset=valid,test`` records valid and test at every epoch for ``serkit score`` to
apply any selection rule afterwards, without keeping a checkpoint per epoch. fairseq still selects
``checkpoint_best.pt`` on the first subset (``valid``). This needs ``distributed_world_size=1``
(a rank sees only its shard); with several GPUs, run ``python -m serkit.fairseq_ext.predict`` on
saved checkpoints instead.
"""

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from fairseq.criterions import FairseqCriterion
from fairseq.data import FairseqDataset, data_utils
from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.configs import CommonConfig
from fairseq.models import BaseFairseqModel
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING, DictConfig, open_dict
from omegaconf.errors import InterpolationResolutionError

from ..utils import SerkitError, atomic_file

log = logging.getLogger("serkit.fairseq_ext")


@dataclass
class SerTaskConfig(FairseqDataclass):
    data: str = field(
        default=MISSING,
        metadata={
            "help": "fold directory written by `serkit split` (<split>.tsv, <split>.emo, dict.emo.txt); "
            "absolute path"
        },
    )
    labels: str = field(
        default="emo",
        metadata={"help": "extension of the label files: <split>.<labels> and dict.<labels>.txt"},
    )
    sample_rate: int = field(default=16000, metadata={"help": "sample rate the wavs must have"})
    max_sample_size: Optional[int] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "randomly crop TRAINING utterances longer than this many samples (bounds memory); "
            "valid and test utterances are never cropped"
        },
    )
    seed: int = field(
        default=II("common.seed"),
        metadata={
            "help": "seed of the training crops (with the epoch and the utterance index), so a resumed run "
            "crops as an uninterrupted one"
        },
    )
    min_sample_size: int = field(
        default=400,
        metadata={
            "help": "utterances shorter than this are an error (400 samples = one frame of the 20 ms conv "
            "front end)"
        },
    )
    predictions_dir: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "if set, write <dir>/<subset>.epoch<NNN>.tsv with per-utterance class probabilities "
            "after each validation pass (see dataset.valid_subset); absolute path"
        },
    )


def read_label_file(path: Path, classes: list[str], expected: int) -> list[int]:
    if not path.is_file():
        raise SerkitError(f"{path}: not found; run `serkit split` to (re)create the fold")
    index = {c: i for i, c in enumerate(classes)}
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            name = line.strip()
            if name not in index:
                raise SerkitError(
                    f"{path}:{lineno}: label {name!r} is not in dict ({', '.join(classes)}); "
                    "re-run `serkit split`, or point task.data at the fold it belongs to"
                )
            out.append(index[name])
    if len(out) != expected:
        raise SerkitError(
            f"{path}: {len(out)} labels for {expected} utterances in the tsv; they must be "
            "line-aligned: re-run `serkit split`"
        )
    return out


def read_manifest(path: Path) -> tuple[str, list[str], list[int]]:
    """``(root, relpaths, num_samples)`` of a fairseq audio manifest."""
    if not path.is_file():
        raise SerkitError(f"{path}: not found; run `serkit split` to (re)create the fold")
    with open(path, encoding="utf-8") as f:
        root = f.readline().rstrip("\n")
        rels, sizes = [], []
        for lineno, line in enumerate(f, 2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[1].isdigit():
                raise SerkitError(
                    f"{path}:{lineno}: expected 'relpath<TAB>num_samples', got {line.strip()!r}"
                )
            rels.append(parts[0])
            sizes.append(int(parts[1]))
    if not root:
        raise SerkitError(f"{path}: the first line must be the audio root directory")
    return root, rels, sizes


class SerAudioDataset(FairseqDataset):
    """Waveforms with one class label each; batches carry ``padding_mask`` (True on padded samples)."""

    def __init__(
        self,
        name: str,
        root: str,
        relpaths: list[str],
        sizes: list[int],
        labels: list[int],
        sample_rate: int = 16000,
        max_sample_size: int | None = None,
        shuffle: bool = False,
        seed: int = 1,
    ) -> None:
        super().__init__()
        self.name = name
        self.root = root
        self.relpaths = relpaths
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.labels = labels
        self.sample_rate = sample_rate
        self.max_sample_size = max_sample_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 1
        self.utts = [Path(r).stem for r in relpaths]

    def __len__(self) -> int:
        return len(self.relpaths)

    def _read(self, index: int) -> np.ndarray:
        import soundfile as sf

        path = os.path.join(self.root, self.relpaths[index])
        try:
            wav, sr = sf.read(path, dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001 - soundfile raises several types
            raise SerkitError(
                f"{path}: cannot read ({e}); utterance {self.utts[index]!r} of {self.name}"
            ) from e
        if sr != self.sample_rate:
            raise SerkitError(f"{path}: {sr} Hz, expected {self.sample_rate}; `serkit prepare` writes 16 kHz")
        return wav.mean(axis=1)

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        # A resumed run builds a fresh epoch iterator; building one every epoch makes an uninterrupted run
        # do the same (a reused one did not reproduce the resumed run's epochs, tested). Batches are the
        # same either way: ordered_indices runs under fairseq's fixed seed and sizes never change.
        return False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        wav = torch.from_numpy(self._read(index))
        if self.max_sample_size is not None and wav.numel() > self.max_sample_size:
            # seeded by (seed, epoch, index), not by the global generator: a resumed run, whose global
            # state restarts at the resume, crops each epoch exactly as an uninterrupted one
            with data_utils.numpy_seed(self.seed, self.epoch, index):
                start = np.random.randint(0, wav.numel() - self.max_sample_size + 1)
            wav = wav[start : start + self.max_sample_size]
        return {"id": index, "source": wav, "label": self.labels[index]}

    def collater(self, samples: list[dict]) -> dict:
        samples = [s for s in samples if s["source"] is not None]
        if not samples:
            return {}
        lengths = [s["source"].numel() for s in samples]
        source = samples[0]["source"].new_zeros(len(samples), max(lengths))
        padding_mask = torch.ones(len(samples), max(lengths), dtype=torch.bool)
        for i, (s, n) in enumerate(zip(samples, lengths)):
            source[i, :n] = s["source"]
            padding_mask[i, :n] = False
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "net_input": {"source": source, "padding_mask": padding_mask},
            "target": torch.LongTensor([s["label"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": sum(lengths),
            "subset": self.name,
        }

    def num_tokens(self, index: int) -> int:
        return self.size(index)

    def size(self, index: int) -> int:
        n = int(self.sizes[index])
        return min(n, self.max_sample_size) if self.max_sample_size else n

    def ordered_indices(self) -> np.ndarray:
        # longest first, ties in random order: batches of similar length, shuffled by the iterator
        sizes = np.minimum(self.sizes, self.max_sample_size) if self.max_sample_size else self.sizes
        tie = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        return np.lexsort((tie, sizes))[::-1]


@register_task("serkit_ser", dataclass=SerTaskConfig)
class SerTask(FairseqTask):
    """Emotion classification of whole utterances; the class list travels in the checkpoint."""

    cfg: SerTaskConfig

    def __init__(self, cfg: SerTaskConfig) -> None:
        super().__init__(cfg)
        # a checkpoint's task_state restores the classes it was trained with
        self.state.add_factory("classes", self._read_classes)
        self.epoch = 0
        self._pending: dict[str, dict[int, tuple[int, list[float]]]] = {}
        self._warned_distributed = False

    @classmethod
    def setup_task(cls, cfg: SerTaskConfig, **kwargs) -> "SerTask":  # noqa: UP037
        return cls(cfg)

    def _read_classes(self) -> list[str]:
        path = Path(self.cfg.data) / f"dict.{self.cfg.labels}.txt"
        if not path.is_file():
            raise SerkitError(f"{path}: not found; task.data must be a fold written by `serkit split`")
        classes = [ln.split()[0] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise SerkitError(f"{path}: needs two or more distinct classes, one per line")
        return classes

    @property
    def classes(self) -> list[str]:
        return list(self.state.classes)

    @property
    def num_classes(self) -> int:
        return len(self.state.classes)

    def load_dataset(
        self, split: str, combine: bool = False, task_cfg: FairseqDataclass | None = None, **kwargs
    ) -> None:
        data = Path(self.cfg.data)
        root, rels, sizes = read_manifest(data / f"{split}.tsv")
        labels = read_label_file(data / f"{split}.{self.cfg.labels}", self.classes, len(rels))
        short = [(r, n) for r, n in zip(rels, sizes) if n < self.cfg.min_sample_size]
        if short:
            raise SerkitError(
                f"{data / (split + '.tsv')}: {len(short)} utterance(s) shorter than "
                f"{self.cfg.min_sample_size} samples (first: {short[0][0]}, {short[0][1]}); "
                "drop them from the fold"
            )
        is_train = split.startswith("train")
        self.datasets[split] = SerAudioDataset(
            split,
            root,
            rels,
            sizes,
            labels,
            sample_rate=self.cfg.sample_rate,
            max_sample_size=self.cfg.max_sample_size if is_train else None,
            shuffle=is_train,
            seed=self._seed(),
        )
        counts = np.bincount(labels, minlength=self.num_classes)
        log.info(
            "serkit_ser: %s: %d utterances (%s), %.1f s of audio",
            split,
            len(rels),
            ", ".join(f"{c} {n}" for c, n in zip(self.classes, counts)),
            sum(sizes) / self.cfg.sample_rate,
        )

    def _seed(self) -> int:
        """``task.seed``: ``common.seed`` inside fairseq-hydra-train; fairseq's default (1) for a task
        configured on its own, where ``common`` does not exist."""
        try:
            return int(self.cfg.seed)
        except InterpolationResolutionError:
            return CommonConfig.seed

    def build_model(self, cfg: DictConfig, from_checkpoint: bool = False) -> BaseFairseqModel:
        model = super().build_model(cfg, from_checkpoint)
        # Keep the upstream's config in the run's config, as fairseq's audio tasks do with w2v_args: a
        # checkpoint then rebuilds the upstream without reading upstream_path again.
        upstream_cfg = getattr(model, "upstream_cfg", None)
        if upstream_cfg is not None and cfg.get("upstream_cfg") is None:
            with open_dict(cfg):
                cfg.upstream_cfg = upstream_cfg
        return model

    def max_positions(self) -> int:
        return sys.maxsize

    def begin_epoch(self, epoch: int, model: BaseFairseqModel) -> None:
        self.epoch = epoch

    def begin_valid_epoch(self, epoch: int, model: BaseFairseqModel) -> None:
        self.epoch = epoch
        self._pending.clear()

    def valid_step(
        self, sample: dict, model: BaseFairseqModel, criterion: FairseqCriterion
    ) -> tuple[torch.Tensor, int, dict]:
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        probs = logging_output.pop("_probs", None)
        if self.cfg.predictions_dir and probs is not None and sample.get("subset"):
            self._collect(sample, probs)
        return loss, sample_size, logging_output

    # -- per-epoch predictions -------------------------------------------------------------------
    def _collect(self, sample: dict, probs: torch.Tensor) -> None:
        if (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        ):
            if not self._warned_distributed:
                log.warning(
                    "task.predictions_dir needs distributed_world_size=1; no predictions written "
                    "(run python -m serkit.fairseq_ext.predict on the checkpoints)"
                )
                self._warned_distributed = True
            return
        subset = sample["subset"]
        rows = self._pending.setdefault(subset, {})
        for i, target, p in zip(sample["id"].tolist(), sample["target"].tolist(), probs.tolist()):
            rows[i] = (target, p)
        dataset = self.datasets.get(subset)
        if dataset is not None and len(rows) == len(dataset):
            path = Path(self.cfg.predictions_dir) / f"{subset}.epoch{self.epoch:03d}.tsv"
            write_predictions(
                path,
                dataset.utts,
                [rows[i][0] for i in range(len(dataset))],
                [rows[i][1] for i in range(len(dataset))],
                self.classes,
            )
            log.info("serkit_ser: wrote %s (%d utterances)", path, len(dataset))
            del self._pending[subset]


def write_predictions(
    path: Path, utts: list[str], targets: list[int], probs: list[list[float]], classes: list[str]
) -> None:
    """A predictions TSV (docs/interfaces.md): ``utt label pred <class_1> ... <class_K>``."""
    with atomic_file(path, encoding="utf-8") as f:
        f.write("\t".join(["utt", "label", "pred", *classes]) + "\n")
        for utt, t, p in zip(utts, targets, probs):
            pred = int(np.argmax(p))
            f.write("\t".join([utt, classes[t], classes[pred], *(f"{x:.6f}" for x in p)]) + "\n")
