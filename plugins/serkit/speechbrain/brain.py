"""``SERBrain``: one SpeechBrain Brain for every serkit head, on cached features or on waveforms.

Inputs (chosen by what the modules dict holds):

- cached features (``feats``, (B, T, L, C) from ``serkit dump-features``) -> ``layer_sum`` -> ``head``;
- waveforms (``sig``) -> ``upstream`` (a :class:`~serkit.speechbrain.lobes.FairseqUpstream`,
  finetuned with its CNN frozen) -> ``layer_sum`` -> ``head``.

An ``augment`` module (SpecAugment), when present, is applied to the summed features in training.

Every epoch the Brain predicts the validation AND the test split and writes
``<output_folder>/predictions/{valid,test}.epoch<NNN>.tsv`` (``utt label pred <class probs>``, rows in
the fold's order), so that ``serkit score`` can apply any selection rule afterwards. Inside training
only the validation split selects anything: the checkpoint kept as "best" is the best on validation
(``best_metric``); test results are written, never read back.

BAS search (a head with ``arch_parameters()``): the architecture logits get their own optimiser
(``arch_opt_class``) and are updated jointly with the weights on the same training batches (as the
paper: one loop, not DARTS' alternating validation steps); the Gumbel-softmax temperature follows
``gumbel_temperature(epoch)``; after every epoch the per-layer block probabilities are appended to
``search_log.jsonl``, drawn in ``search_probs.png``, and the derived architecture is written to
``arch.txt`` (what ``bas.yaml`` reads as ``--arch "$(cat arch.txt)"``).

Batching (hparams ``batching``): ``dynamic`` (serkit's recipes) batches utterances of similar duration
with SpeechBrain's ``DynamicBatchSampler``: a budget of ``max_batch_length`` seconds of padded audio per
batch (default: ``batch_size`` times the mean padded duration, so a batch holds ``batch_size``
utterances on average), ``num_buckets`` buckets of equal total duration (at most one per
``batch_size`` utterances; a bucket's few leftover utterances join its full batches), utterances
shuffled into their buckets and batches in random order every epoch (``seed`` + epoch: a resumed run
draws the same batches). Validation and test batches take consecutive utterances in ascending
duration under the same budget, each at most 5 % padding.
``random`` (the default of a yaml without the key) keeps SpeechBrain's batches of ``batch_size`` drawn
at random.

TensorBoard (``serkit train --tensorboard DIR``): SpeechBrain's ``TensorboardLogger`` writes, beside the
file logger, the same per-epoch values (``epoch``, ``lr``, ``loss/train``, ``loss/valid``,
``ua/valid``, ``wa/valid``, ``weighted_f1/valid``, ``tau`` in a search) with the epoch as the step, and the
test split's ``ua/test``, ``wa/test``, ``weighted_f1/test`` (written, never read back).

Resuming: a run killed at any moment and started again with the same command ends bit-identical (on
CPU) to a run that was never interrupted. Checkpoints hold the random generators
(:class:`~serkit.speechbrain.checkpoints.RandomState`, recoverable ``rng``) besides the weights,
optimisers, epoch counter and SpeechBrain's step counters; the learning-rate and temperature schedules
are functions of the epoch and step. Intra-epoch checkpoints (SpeechBrain's ``--ckpt_interval_steps`` /
``--ckpt_interval_minutes``) are taken only between optimiser steps, never inside a gradient
accumulation, and a mid-epoch resume fast-forwards the sampler without drawing from the global
generators.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import if_main_process

from ..metrics import compute_metrics
from ..utils import SerkitError, atomic_file, write_json

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.dataio.dataset import DynamicItemDataset
    from speechbrain.dataio.sampler import DynamicBatchSampler
    from speechbrain.utils.train_logger import TensorboardLogger
    from torch.utils.data import DataLoader, Dataset

    from ..nn.search import BlockSearchSupernet

log = logging.getLogger("serkit.speechbrain")


# By hand: torch's LinearLR+CosineAnnealingLR cannot warm up from 0 nor run timm's warmup_prefix=False
# cosine (official code); SpeechBrain has no warm-up cosine with a start lr and a floor.
class WarmupCosine:
    """Learning rate: linear warm-up from ``warmup_start_lr`` over ``warmup_epochs``, then cosine decay to
    ``final_lr`` at ``epochs``; a function of the fractional epoch, evaluated every iteration.

    ``cosine_after_warmup=True`` (default) starts the cosine at the end of the warm-up. ``False`` is
    timm's ``CosineLRScheduler`` as the official ShiftSER code uses it (``warmup_prefix=False``): the
    cosine runs over the whole schedule and the warm-up overrides its first epochs, so the rate after
    the warm-up starts just below ``lr``. Stateless, so a resumed run continues the schedule exactly.

    Example
    -------
    >>> s = WarmupCosine(lr=1.0, warmup_epochs=5, epochs=100)
    >>> s(0.0), s(2.5), s(5.0), round(s(52.5), 3), s(100.0)
    (0.0, 0.5, 1.0, 0.5, 0.0)
    >>> official = WarmupCosine(lr=5e-4, warmup_epochs=5, epochs=100, final_lr=5e-6, warmup_start_lr=5e-7,
    ...                         cosine_after_warmup=False)
    >>> official(0.0), round(official(50.0), 8), official(100.0)
    (5e-07, 0.0002525, 5e-06)
    """

    def __init__(
        self,
        lr: float,
        warmup_epochs: float,
        epochs: float,
        final_lr: float = 0.0,
        warmup_start_lr: float = 0.0,
        cosine_after_warmup: bool = True,
    ) -> None:
        self.lr, self.warmup, self.epochs, self.final_lr = (
            float(lr),
            float(warmup_epochs),
            float(epochs),
            float(final_lr),
        )
        self.warmup_start_lr = float(warmup_start_lr)
        self.cosine_after_warmup = bool(cosine_after_warmup)

    def __call__(self, progress: float) -> float:
        if self.warmup > 0 and progress < self.warmup:
            return self.warmup_start_lr + (self.lr - self.warmup_start_lr) * progress / self.warmup
        start = self.warmup if self.cosine_after_warmup else 0.0
        span = max(1e-9, self.epochs - start)
        frac = min(1.0, max(0.0, (progress - start) / span))
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1.0 + math.cos(math.pi * frac))


# By hand: SpeechBrain's LinearWarmupScheduler has no hold, its TriStageLRSchedule decays exponentially,
# and torch's LinearLR cannot warm up from 0.
class WarmupHoldLinear:
    """Learning rate: linear warm-up from 0 over ``warmup_epochs``, constant for ``hold_epochs``, then linear
    decay to 0 at ``epochs`` (the lambda schedule of ShiftSER's official finetuning code, taken from
    FT-w2v2-ser, whose hold equals the warm-up); a function of the fractional epoch, evaluated every
    iteration.

    Example
    -------
    >>> s = WarmupHoldLinear(lr=1.0, warmup_epochs=5, hold_epochs=5, epochs=100)
    >>> s(0.0), s(2.5), s(5.0), s(10.0), s(55.0), s(100.0)
    (0.0, 0.5, 1.0, 1.0, 0.5, 0.0)
    """

    def __init__(self, lr: float, warmup_epochs: float, hold_epochs: float, epochs: float) -> None:
        self.lr, self.warmup, self.hold, self.epochs = (
            float(lr),
            float(warmup_epochs),
            float(hold_epochs),
            float(epochs),
        )

    def __call__(self, progress: float) -> float:
        if self.warmup > 0 and progress < self.warmup:
            return self.lr * progress / self.warmup
        decay_start = self.warmup + self.hold
        if progress < decay_start:
            return self.lr
        return self.lr * max(0.0, (self.epochs - progress) / max(1e-9, self.epochs - decay_start))


def parameter_groups(
    modules: torch.nn.Module, vector_weight_decay: bool = True
) -> list[torch.nn.Parameter] | list[dict]:
    """Trainable parameters of ``modules`` for an optimiser; with ``vector_weight_decay=False`` two groups,
    the 1-D parameters (biases, norms, the learned mask vector, layer-sum logits) with weight decay 0
    (the official ShiftSER code's ``set_weight_decay``) and the rest with the optimiser's weight decay.

    Example
    -------
    >>> groups = parameter_groups(torch.nn.Linear(3, 2), vector_weight_decay=False)
    >>> [tuple(p.shape) for p in groups[0]["params"]], groups[1]["weight_decay"]
    ([(2, 3)], 0.0)
    """
    params = [(n, p) for n, p in modules.named_parameters() if p.requires_grad]
    if vector_weight_decay:
        return [p for _, p in params]
    decay = [p for n, p in params if p.dim() > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in params if not (p.dim() > 1 and not n.endswith(".bias"))]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def write_predictions(path: str | os.PathLike, rows: dict, order: list[str], classes: list[str]) -> None:
    """Write one predictions file (docs/interfaces.md): ``utt label pred <probs...>`` in ``order``."""
    missing = [u for u in order if u not in rows]
    if missing:
        raise RuntimeError(f"{path}: no prediction for {len(missing)} utterance(s), e.g. {missing[:3]}")
    with atomic_file(path, encoding="utf-8") as f:
        f.write("\t".join(["utt", "label", "pred", *classes]) + "\n")
        for utt in order:
            label, probs = rows[utt]
            pred = classes[max(range(len(probs)), key=probs.__getitem__)]
            f.write("\t".join([utt, classes[label], pred, *(f"{p:.6f}" for p in probs)]) + "\n")


def read_search_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_search(entries: list[dict], path: Path) -> Figure | None:
    """Per-layer block probabilities over epochs (one panel per layer), the candidates named once in a
    figure legend below the panels, which holds for every panel (each candidate has the same colour in
    all). Returns the (closed) figure, or None without entries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not entries:
        return None
    choices = entries[-1]["choices"]
    layers = len(entries[-1]["probabilities"])
    epochs = [e["epoch"] for e in entries]
    fig, axes = plt.subplots(1, layers, figsize=(3.2 * layers, 3.2), sharey=True, squeeze=False)
    colours = [f"C{c % 10}" for c in range(len(choices))]
    for layer in range(layers):
        ax = axes[0][layer]
        for c, name in enumerate(choices):
            ax.plot(
                epochs,
                [e["probabilities"][layer][c] for e in entries],
                label=name,
                marker=".",
                color=colours[c],
            )
        ax.set_title(f"layer {layer + 1}")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("softmax(theta)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(len(choices), 6),
        fontsize="small",
        title="candidate block (every panel)",
        title_fontsize="small",
    )
    fig.suptitle(f"BAS search: derived {entries[-1]['derived']}", fontsize="medium")
    rows = -(-len(choices) // 6)
    fig.tight_layout(rect=(0, min(0.1 + 0.07 * rows, 0.5), 1, 1))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return fig


def forget_logged_epochs(path: str | os.PathLike | None, epoch: int) -> None:
    """Drop the lines of epochs >= ``epoch`` from a ``FileTrainLogger`` file (``epoch: N, ...``).

    A run killed after logging an epoch but before its checkpoint was complete redoes that epoch when
    resumed: ``SERBrain.on_fit_start`` drops the lines after the recovered epoch once, so the redone
    epoch's new line replaces the old one instead of following it.
    """
    if not path or not Path(path).is_file():
        return
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    found = [re.match(r"epoch: (\d+)\b", line) for line in lines]
    kept = [line for line, m in zip(lines, found) if m is None or int(m.group(1)) < epoch]
    if len(kept) != len(lines):
        with atomic_file(path, encoding="utf-8") as f:
            f.writelines(kept)


def require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise SerkitError(
            "--tensorboard needs the tensorboard package: pip install 'serkit[tensorboard]' "
            "(or leave --tensorboard out)"
        ) from None


def tensorboard_logger(save_dir: str | os.PathLike) -> TensorboardLogger:
    """SpeechBrain's ``TensorboardLogger`` writing to ``save_dir``, stepped by epoch.

    SpeechBrain counts its calls as the step; here the step is the logged ``epoch``, so that a resumed run
    continues the curves where the killed one stopped instead of starting them again at step 1.
    """
    require_tensorboard()
    from speechbrain.utils.train_logger import TensorboardLogger

    class EpochTensorboardLogger(TensorboardLogger):
        def log_stats(
            self,
            stats_meta: dict,
            train_stats: dict | None = None,
            valid_stats: dict | None = None,
            test_stats: dict | None = None,
            verbose: bool = False,
        ) -> None:
            if self.writer is None:  # not the main process
                return

            def known(stats: dict | None) -> dict | None:
                # a value not measured (None) is left out, not written as a scalar
                kept = {k: v for k, v in (stats or {}).items() if v is not None}
                return kept or None

            step = int(stats_meta["epoch"]) - 1
            self.global_step["meta"] = step
            splits = {"train": known(train_stats), "valid": known(valid_stats), "test": known(test_stats)}
            for split, stats in splits.items():
                for name in stats or {}:
                    self.global_step[split][name] = step
            super().log_stats(known(stats_meta), splits["train"], splits["valid"], splits["test"])
            self.writer.flush()

    return EpochTensorboardLogger(str(save_dir))


BATCHING = ("dynamic", "random")
#: An evaluation batch is closed before it would exceed this fraction of padding (ours).
EVAL_MAX_PADDING = 0.05


def _durations(
    dataset: DynamicItemDataset, max_duration: float | None = None, pad_to_max: bool = False
) -> np.ndarray:
    """Seconds of each item as the model sees it (``max_duration`` crops; ``pad_to_max`` pads to it)."""
    import numpy as np

    lengths = np.array([float(dataset.data[i]["duration"]) for i in dataset.data_ids])
    if max_duration is not None:
        lengths = (
            np.full_like(lengths, float(max_duration))
            if pad_to_max
            else np.minimum(lengths, float(max_duration))
        )
    return lengths


def _duration_sampler_class() -> type[DynamicBatchSampler]:
    import numpy as np
    from speechbrain.dataio.sampler import DynamicBatchSampler

    class DurationBatchSampler(DynamicBatchSampler):
        """SpeechBrain's ``DynamicBatchSampler`` whose buckets do not end in a batch of a few utterances:
        a bucket's last, partial batch is spread over the bucket's full batches (one utterance more
        each) when it has no more utterances than there are full batches (ours: a batch of one or two
        utterances would weigh as much as a full one in the gradient steps)."""

        def _generate_batches(self) -> None:
            super()._generate_batches()
            groups: dict[int, list] = {}
            for batch in self._batches:
                bucket = int(np.searchsorted(self._bucket_boundaries, self._ex_lengths[str(batch[0])]))
                groups.setdefault(bucket, []).append(batch)
            batches = []
            for bucket, group in sorted(groups.items()):
                full = [b for b in group if len(b) >= self._bucket_lens[bucket]]
                rest = [i for b in group if len(b) < self._bucket_lens[bucket] for i in b]
                if rest and len(rest) <= len(full):
                    for k, i in enumerate(rest):
                        full[k].append(i)
                    rest = []
                batches += full + ([rest] if rest else [])
            self._batches = batches
            self._permute_batches()

    return DurationBatchSampler


def duration_batch_sampler(
    dataset: DynamicItemDataset,
    batch_size: int,
    max_batch_length: float | None = None,
    num_buckets: int = 40,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    max_duration: float | None = None,
    pad_to_max: bool = False,
) -> DynamicBatchSampler:
    """SpeechBrain's ``DynamicBatchSampler`` over the ``duration`` (seconds) of a ``DynamicItemDataset``.

    Bucket boundaries split the sorted durations into ``num_buckets`` parts of equal total duration (so
    each bucket fills about as many batches; the longest boundary is the longest utterance, so none falls
    into SpeechBrain's overflow bucket of batch size 1); ``num_buckets`` is capped at
    ``len(dataset) // batch_size``. A bucket's batches hold ``int(max_batch_length / boundary)``
    utterances; ``max_batch_length=None`` takes ``batch_size`` times the mean boundary of the
    utterances, so that batches hold ``batch_size`` utterances on average.
    """
    import numpy as np

    lengths = _durations(dataset, max_duration, pad_to_max)
    ordered = np.sort(lengths)
    buckets = max(1, min(int(num_buckets), len(lengths) // max(1, int(batch_size))))
    cumulative = np.cumsum(ordered) / ordered.sum()
    ends = np.minimum(np.searchsorted(cumulative, np.arange(1, buckets + 1) / buckets), len(ordered) - 1)
    boundaries = np.unique(np.append(ordered[ends], ordered[-1]))
    if max_batch_length is None:
        max_batch_length = int(batch_size) * float(boundaries[np.searchsorted(boundaries, lengths)].mean())
    return _duration_sampler_class()(
        dataset,
        max_batch_length=float(max_batch_length),
        bucket_boundaries=boundaries.tolist(),
        lengths_list=lengths.tolist(),
        shuffle=shuffle,
        batch_ordering="random",
        seed=int(seed),
        drop_last=drop_last,
    )


def sorted_batches(
    dataset: DynamicItemDataset,
    batch_size: int,
    max_batch_length: float | None = None,
    max_duration: float | None = None,
    pad_to_max: bool = False,
) -> list[list[int]]:
    """Evaluation batches: consecutive utterances in ascending duration, a batch closed before it would
    exceed ``max_batch_length`` seconds of padded audio (None: ``batch_size`` times the mean duration)
    or ``EVAL_MAX_PADDING`` of padding."""
    import numpy as np

    lengths = _durations(dataset, max_duration, pad_to_max)
    budget = float(max_batch_length) if max_batch_length is not None else int(batch_size) * lengths.mean()
    batches, current, total = [], [], 0.0
    for i in np.argsort(lengths, kind="stable").tolist():
        n, longest = len(current) + 1, lengths[i]
        if current and (n * longest > budget or total + longest < (1 - EVAL_MAX_PADDING) * n * longest):
            batches.append(current)
            current, total = [], 0.0
        current.append(i)
        total += longest
    return batches + [current] if current else batches


class SERBrain(sb.Brain):
    """Trains a serkit head (see the module docstring). Extra attributes set by ``serkit.speechbrain.train``:

    ``classes`` (label order), ``orders`` (``{split: [utt, ...]}``, the fold's row order), ``test_set``
    (a DataLoader or Dataset predicted after each validation), ``train_info`` (the dict written to
    ``train_info.json``; ``epochs_run`` is updated every epoch).
    """

    classes: list[str] = []
    orders: dict = {}
    test_set = None
    train_info: dict | None = None
    tensorboard = None  # tensorboard_logger(DIR), set by ``serkit train --tensorboard DIR``

    def on_fit_start(self) -> None:
        if self.checkpointer is not None and "rng" not in self.checkpointer.recoverables:
            from .checkpoints import RandomState

            # optional: checkpoints of an older serkit resume too (with a warning)
            self.checkpointer.add_recoverable("rng", RandomState(), optional_load=True)
        # Import what the epoch loop imports lazily before the generators are restored: a module that
        # draws from a global generator when first imported (rich, under sklearn, draws from `random`)
        # would otherwise draw after the restore in a resumed run, before it in an uninterrupted one.
        import sklearn.metrics  # noqa: F401  (serkit.metrics)

        if self._search_net() is not None:  # plot_search
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
        super().on_fit_start()  # recovers the latest checkpoint, if any
        logger = getattr(self.hparams, "train_logger", None)
        counter = getattr(self.hparams, "epoch_counter", None)
        if logger is not None and counter is not None and if_main_process():
            forget_logged_epochs(getattr(logger, "save_file", None), counter.current + 1)

    # ---------------------------------------------------------------- forward and loss
    def compute_forward(self, batch: PaddedBatch, stage: sb.Stage) -> torch.Tensor:
        batch = batch.to(self.device)
        if "upstream" in self.modules:
            wavs, wav_lens = batch.sig
            layers, lens = self.modules.upstream(wavs, wav_lens)
        else:
            feats, lens = batch.feats  # (B, T, L, C)
            layers = feats.transpose(1, 2)
        x = self.modules.layer_sum(layers, lens)
        if stage == sb.Stage.TRAIN and "augment" in self.modules:
            x = self.modules.augment(x, lens)
        return self.modules.head(x, lens)

    def compute_objectives(
        self, predictions: torch.Tensor, batch: PaddedBatch, stage: sb.Stage
    ) -> torch.Tensor:
        labels, _ = batch.label
        labels = labels.to(self.device).view(-1)
        loss = F.cross_entropy(
            predictions.float(), labels, label_smoothing=float(getattr(self.hparams, "label_smoothing", 0.0))
        )
        if stage != sb.Stage.TRAIN:
            probs = torch.softmax(predictions.float(), dim=-1).cpu().tolist()
            for utt, label, p in zip(batch.id, labels.cpu().tolist(), probs):
                self._rows[utt] = (label, p)
        return loss

    # ---------------------------------------------------------------- optimisers and schedules
    def _search_net(self) -> BlockSearchSupernet | None:
        for module in self.raw_modules.values():
            for sub in module.modules():
                if hasattr(sub, "arch_parameters") and hasattr(sub, "set_temperature"):
                    return sub
        return None

    def init_optimizers(self) -> None:
        net = self._search_net()
        if net is None and self.opt_class is not None:
            groups = parameter_groups(self.modules, bool(getattr(self.hparams, "vector_weight_decay", True)))
            self.optimizer = self.opt_class(groups)
            self.optimizers_dict = {"opt_class": self.optimizer}
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable("optimizer", self.optimizer)
            return
        if net is None or self.opt_class is None:
            return super().init_optimizers()
        arch_opt_class = getattr(self.hparams, "arch_opt_class", None)
        if arch_opt_class is None:
            raise ValueError(
                "a BAS search head needs `arch_opt_class` in the hparams (the optimiser of the "
                "architecture logits)"
            )
        arch = list(net.arch_parameters())
        arch_ids = {id(p) for p in arch}
        weights = [p for p in self.modules.parameters() if id(p) not in arch_ids]
        self.optimizer = self.opt_class(weights)
        self.arch_optimizer = arch_opt_class(arch)
        self.optimizers_dict = {"weights": self.optimizer, "arch": self.arch_optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
            self.checkpointer.add_recoverable("arch_optimizer", self.arch_optimizer)

    def batching_kwargs(self, dataset: Dataset, stage: sb.Stage, loader_kwargs: dict) -> dict:
        """The DataLoader arguments for ``dataset`` under the hparams' ``batching`` (module docstring)."""
        batching = str(getattr(self.hparams, "batching", "random"))
        if batching not in BATCHING:
            raise SerkitError(
                f"batching: {batching!r} is not one of {', '.join(BATCHING)}; set it in the "
                "hparams yaml or with --batching"
            )
        if batching == "random" or not isinstance(dataset, sb.dataio.dataset.DynamicItemDataset):
            return loader_kwargs
        if stage == sb.Stage.TRAIN and loader_kwargs.get("sampler") is not None:
            raise SerkitError(
                "batching: dynamic cannot be combined with a sampler that draws the training "
                "utterances itself (class_balanced_sampler: True); set batching: random, or "
                "class_balanced_sampler: False"
            )
        kwargs = dict(loader_kwargs)
        batch_size = int(kwargs.pop("batch_size", 1))
        max_length = getattr(self.hparams, "max_batch_length", None)
        shuffle, drop_last = bool(kwargs.pop("shuffle", False)), bool(kwargs.pop("drop_last", False))
        seen = {
            "max_duration": getattr(self.hparams, "max_duration", None),  # what the model sees
            "pad_to_max": bool(getattr(self.hparams, "pad_to_max", False)),
        }
        if stage == sb.Stage.TRAIN:
            kwargs["batch_sampler"] = duration_batch_sampler(
                dataset,
                batch_size,
                max_length,
                int(getattr(self.hparams, "num_buckets", 40)),
                shuffle=shuffle,
                seed=int(getattr(self.hparams, "seed", 0) or 0),
                drop_last=drop_last,
                **seen,
            )
        else:
            kwargs["batch_sampler"] = sorted_batches(dataset, batch_size, max_length, **seen)
        return kwargs

    def optimizers_step(self) -> None:
        # SpeechBrain clips only param_groups[0] of each optimiser, which with a no-decay group would leave
        # the other group unclipped. Here one global norm over every group (as the official ShiftSER
        # code clips); otherwise SpeechBrain's own steps, in its order.
        valid = self.freeze_optimizers(self.optimizers_dict) if self.optimizers_dict is not None else {}
        if all(len(opt.param_groups) == 1 for opt in valid.values()):
            return super().optimizers_step()
        for opt in valid.values():
            self.scaler.unscale_(opt)
        for opt in valid.values():
            torch.nn.utils.clip_grad_norm_(
                [p for g in opt.param_groups for p in g["params"]], self.max_grad_norm
            )
        if not self.scaler.is_enabled() and self.skip_nonfinite_grads:
            self.check_gradients()
        for opt in valid.values():
            self.scaler.step(opt)
        self.scaler.update()
        for opt in valid.values():
            opt.zero_grad(set_to_none=True)
        self.optimizer_step += 1

    def make_dataloader(
        self,
        dataset: Dataset | DataLoader,
        stage: sb.Stage,
        ckpt_prefix: str | None = "dataloader-",
        **loader_kwargs,
    ) -> DataLoader:
        loader_kwargs = self.batching_kwargs(dataset, stage, loader_kwargs)
        loader = super().make_dataloader(dataset, stage, ckpt_prefix=ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            if "batch_sampler" in loader_kwargs and not self.distributed_launch:
                self.train_sampler = loader_kwargs["batch_sampler"]  # Brain.fit calls its set_epoch
            self._steps_per_epoch = max(1, len(loader))
            self._train_loader = loader
        return loader

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time: float, steps_since_ckpt: int) -> bool:
        # a checkpoint inside a gradient accumulation would lose the gradients accumulated so far
        due = super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt)
        return due and self.step % self.grad_accumulation_factor == 0

    def _resume_mid_epoch(self) -> None:
        """Before the train iterator of a mid-epoch resume is created: keep the global generators as saved.

        Creating a DataLoader iterator draws its workers' base seed from the loader's ``generator``,
        the global torch generator when it has none. The uninterrupted run drew it at the start of the
        epoch, before the restored state was saved, so the resumed iterator draws it from a generator
        of its own (put back at the end of the epoch).
        """
        rng = self.checkpointer.recoverables.get("rng") if self.checkpointer is not None else None
        loader = getattr(self, "_train_loader", None)
        if rng is None or rng.end_of_epoch is not False or loader is None:
            return
        rng.end_of_epoch = None
        self._loader_generator = loader.generator
        loader.generator = torch.Generator()

    def on_fit_batch_start(self, batch: PaddedBatch, should_step: bool) -> None:
        schedule = getattr(self.hparams, "lr_schedule", None)
        if schedule is None or not should_step:
            return
        steps = getattr(self, "_steps_per_epoch", 1)
        progress = (self._epoch - 1) + (self.step - 1) / steps
        lr = schedule(progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def current_lr(self) -> float:
        opt = getattr(self, "optimizer", None)
        return float(opt.param_groups[0]["lr"]) if opt is not None else float("nan")

    # ---------------------------------------------------------------- stages
    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        self._rows = {}
        if stage == sb.Stage.TRAIN:
            self._epoch = int(epoch or 1)
            self._resume_mid_epoch()
            net = self._search_net()
            if net is not None:
                from serkit.nn.search import gumbel_temperature

                tau = gumbel_temperature(
                    self._epoch - 1,
                    float(getattr(self.hparams, "temperature_start", 5.0)),
                    float(getattr(self.hparams, "temperature_decay", 0.956)),
                )
                net.set_temperature(tau)

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            if hasattr(self, "_loader_generator"):
                self._train_loader.generator = self._loader_generator
                del self._loader_generator
            return
        if stage == sb.Stage.TEST:  # Brain.evaluate(): score whatever split it was given
            self.test_stats = self._metrics(self._rows)
            self.test_stats["loss"] = stage_loss
            return
        valid_rows, self._rows = self._rows, {}
        valid_stats = self._metrics(valid_rows)
        valid_stats["loss"] = stage_loss
        test_rows = self._predict(self.test_set) if self.test_set is not None else None
        out = Path(self.hparams.output_folder)
        if if_main_process():
            pred_dir = out / "predictions"
            write_predictions(
                pred_dir / f"valid.epoch{epoch:03d}.tsv",
                valid_rows,
                self.orders.get("valid", sorted(valid_rows)),
                self.classes,
            )
            if test_rows is not None:
                write_predictions(
                    pred_dir / f"test.epoch{epoch:03d}.tsv",
                    test_rows,
                    self.orders.get("test", sorted(test_rows)),
                    self.classes,
                )
        stats_meta = {"epoch": epoch, "lr": self.current_lr()}
        net = self._search_net()
        if net is not None:
            stats_meta["tau"] = net.tau
            self._log_search(net, epoch)
        train_stats = {"loss": getattr(self, "train_loss", None)}
        logged = {k: valid_stats[k] for k in ("loss", "ua", "wa", "weighted_f1")}
        logger = getattr(self.hparams, "train_logger", None)
        if logger is not None:
            logger.log_stats(stats_meta=stats_meta, train_stats=train_stats, valid_stats=logged)
        if self.tensorboard is not None:
            test_stats = None
            if test_rows:
                metrics = self._metrics(test_rows)
                test_stats = {k: metrics[k] for k in ("ua", "wa", "weighted_f1")}
            self.tensorboard.log_stats(stats_meta, train_stats, logged, test_stats)
        best = str(getattr(self.hparams, "best_metric", "ua"))
        if self.checkpointer is not None:
            meta = {f"valid_{k}": valid_stats[k] for k in ("ua", "wa", "weighted_f1")}
            meta["epoch"] = epoch
            self.checkpointer.save_and_keep_only(meta=meta, max_keys=[f"valid_{best}"], num_to_keep=1)
        if self.train_info is not None and if_main_process():
            self.train_info["epochs_run"] = epoch
            write_json(out / "train_info.json", self.train_info)

    def _metrics(self, rows: dict) -> dict:
        labels = [self.classes[label] for label, _ in rows.values()]
        preds = [self.classes[max(range(len(p)), key=p.__getitem__)] for _, p in rows.values()]
        return compute_metrics(labels, preds, self.classes)

    def _predict(self, dataset: Dataset | DataLoader) -> dict:
        """Predict a whole split (no gradients, eval mode); return ``{utt: (label, probs)}``."""
        if not isinstance(dataset, torch.utils.data.DataLoader):
            opts = dict(getattr(self.hparams, "test_dataloader_opts", {"batch_size": 1}))
            dataset = sb.dataio.dataloader.make_dataloader(
                dataset, **self.batching_kwargs(dataset, sb.Stage.TEST, opts)
            )
            self.test_set = dataset
        self._rows = {}
        self.modules.eval()
        with torch.no_grad():
            for batch in dataset:
                with self.evaluation_ctx:
                    out = self.compute_forward(batch, sb.Stage.TEST)
                    self.compute_objectives(out, batch, sb.Stage.TEST)
        rows, self._rows = self._rows, {}
        return rows

    def _log_search(self, net: BlockSearchSupernet, epoch: int) -> None:
        if not if_main_process():
            return
        out = Path(self.hparams.output_folder)
        path = out / "search_log.jsonl"
        # a resumed epoch replaces its line
        entries = [e for e in read_search_log(path) if e["epoch"] < epoch]
        derived = net.derive()
        entries.append(
            {
                "epoch": epoch,
                "temperature": net.tau,
                "choices": list(net.choices),
                "probabilities": [[round(float(p), 6) for p in row] for row in net.probabilities()],
                "derived": derived,
            }
        )
        with atomic_file(path, encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps(e) + "\n")
        with atomic_file(out / "arch.txt", encoding="utf-8") as f:
            f.write(derived + "\n")
        plot_search(entries, out / "search_probs.png")
