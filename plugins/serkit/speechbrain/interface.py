"""Inference with a trained fold, in the style of SpeechBrain's pretrained interfaces.

::

    clf = EmotionClassifier.from_hparams(source="exp/shiftcnn/fold1")
    out_prob, score, index, text_lab = clf.classify_file("some.wav")

``source`` is a fold's output folder of ``serkit train``: ``train_info.json`` says how the model was
trained; ``hyperparams.yaml`` rebuilds the head; the checkpoint that was best on validation
(``best_metric``, never test) is loaded from ``save/``. A model trained on cached features runs the
upstream recorded in ``train_info.json`` on the raw audio, on the same layers as the cache; a finetuned
model restores its finetuned upstream from the checkpoint.

It is a SpeechBrain ``Pretrained`` interface; SpeechBrain users load it as they load any custom
interface, after ``write_foreign_files(FOLD)`` put ``inference.yaml`` and ``custom.py`` into the fold::

    from speechbrain.inference.interfaces import foreign_class
    clf = foreign_class(source="exp/shiftcnn/fold1", hparams_file="inference.yaml",
                        pymodule_file="custom.py", classname="EmotionClassifier")

Trust: ``source`` is code. ``hyperparams.yaml`` is HyperPyYAML (``!new:``/``!apply:`` build and call
Python objects) and the fairseq upstream named in ``train_info.json`` is unpickled: load folds from
trusted sources only, as SpeechBrain's own ``from_hparams``. The head and state checkpoints are loaded
with ``weights_only=True`` (:class:`~serkit.speechbrain.checkpoints.Checkpointer`), so a checkpoint
file holding other pickled objects is refused (docs/trust.md).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from speechbrain.inference.interfaces import Pretrained
from torch import Tensor

from ..utils import SerkitError
from .dataio import load_wav

if TYPE_CHECKING:
    from .lobes import SERHead
    from .mfsn import MFSNClassifier

log = logging.getLogger("serkit.speechbrain")


def read_train_info(source: str | os.PathLike) -> dict:
    source = Path(source)
    path = source / "train_info.json"
    if not path.is_file():
        folds = sorted(p.parent.name for p in source.glob("*/train_info.json"))
        if folds:
            raise SerkitError(f"{source}: a run with folds {folds}; pass one fold, e.g. {source / folds[0]}")
        raise SerkitError(f"{path}: not found; --exp must be the --output-folder of `serkit train`")
    return json.loads(path.read_text(encoding="utf-8"))


def load_fold(
    source: str | os.PathLike,
    hparams_file: str = "hyperparams.yaml",
    overrides: dict | None = None,
    checkpoint: str = "best",
    upstream: str | None = None,
) -> dict:
    """Rebuild a trained fold: ``{"modules", "hparams", "classes", "train_info", "checkpoint"}``.

    ``modules`` holds ``layer_sum``, ``head`` and ``upstream`` (the frozen upstream that encodes raw audio
    for a model trained on cached features, or the finetuned one restored from the checkpoint).
    ``upstream`` replaces the upstream path recorded in ``train_info.json`` (a checkpoint that moved).
    """
    from hyperpyyaml import load_hyperpyyaml

    from .checkpoints import Checkpointer

    source = Path(source)
    info = read_train_info(source)
    hp_path = source / hparams_file
    if not hp_path.is_file():
        raise SerkitError(f"{hp_path}: not found; the fold's output folder is incomplete")
    with open(hp_path, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides or {})
    recoverables = dict(hparams["checkpointer"].recoverables)
    recorded = info.get("upstream")
    up_path = upstream or recorded
    if not up_path:
        raise SerkitError(
            f"{source / 'train_info.json'}: no upstream recorded for the cached features; "
            "pass --upstream CKPT (the checkpoint the features were dumped with)"
        )
    if not Path(up_path).exists() and up_path != "mfcc":
        where = "--upstream" if upstream else f"{source / 'train_info.json'} records the upstream"
        raise SerkitError(
            f"{where} {up_path}: not found; pass --upstream PATH to where that checkpoint is now"
        )
    if info.get("setting") == "finetune":
        from .lobes import FairseqUpstream

        up = FairseqUpstream(up_path, freeze=True, layers=info["upstream_layers"])
        recoverables["upstream"] = up
    else:
        from serkit.upstream import load_upstream

        up = load_upstream(up_path, device="cpu")
        if info.get("upstream_normalize") is not None and bool(up.normalize) != bool(
            info["upstream_normalize"]
        ):
            log.warning(
                "%s: normalize=%s differs from the cached features' (%s)",
                up_path,
                up.normalize,
                info["upstream_normalize"],
            )
    checkpointer = Checkpointer(source / "save", recoverables=recoverables)
    best = info.get("best_metric", "ua")
    # "last": the last finished epoch, not an intra-epoch checkpoint of a killed run
    ckpt = (
        checkpointer.find_checkpoint(max_key=f"valid_{best}")
        if checkpoint == "best"
        else checkpointer.find_checkpoint(ckpt_predicate=lambda c: c.meta.get("end-of-epoch", True))
    )
    if ckpt is None:
        raise SerkitError(f"{source / 'save'}: no checkpoint; has training run at least one epoch?")
    checkpointer.load_checkpoint(ckpt)
    log.info(
        "loaded %s (epoch %s, valid %s %.4f)",
        ckpt.path,
        ckpt.meta.get("epoch"),
        best,
        ckpt.meta.get(f"valid_{best}", float("nan")),
    )
    modules = {
        "layer_sum": hparams["modules"]["layer_sum"],
        "head": hparams["modules"]["head"],
        "upstream": up,
    }
    return {
        "modules": modules,
        "hparams": hparams,
        "classes": list(info["classes"]),
        "train_info": info,
        "checkpoint": ckpt,
    }


FOREIGN_YAML = """\
# SpeechBrain's foreign_class loads this serkit fold (docs/speechbrain_reuse.md):
#   foreign_class(source=FOLD, hparams_file="inference.yaml", pymodule_file="custom.py",
#                 classname="EmotionClassifier")
# HyperPyYAML is code: load folds from trusted sources only (docs/trust.md).
fold: {fold}
checkpoint: best    # or last
upstream: null      # a path replaces the upstream recorded in train_info.json
serkit_fold: !apply:serkit.speechbrain.interface.load_fold
    source: !ref <fold>
    checkpoint: !ref <checkpoint>
    upstream: !ref <upstream>
modules: {{}}       # filled from serkit_fold
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer    # nothing to fetch: loaded above
"""

FOREIGN_PY = '''"""The class SpeechBrain's foreign_class loads this serkit fold with (see inference.yaml)."""
from serkit.speechbrain.interface import EmotionClassifier  # noqa: F401
'''


def write_foreign_files(source: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``inference.yaml`` and ``custom.py`` into fold ``source`` so SpeechBrain's ``foreign_class``
    loads it; existing files of those names are left alone (SerkitError) unless serkit wrote them."""
    from ..utils import atomic_file

    source = Path(source).resolve()
    read_train_info(source)
    out = []
    for name, text in (
        ("inference.yaml", FOREIGN_YAML.format(fold=json.dumps(str(source)))),
        ("custom.py", FOREIGN_PY),
    ):
        path = source / name
        if path.exists() and "serkit" not in path.read_text(encoding="utf-8", errors="replace"):
            raise SerkitError(f"{path}: exists and was not written by serkit; move it aside")
        with atomic_file(path, encoding="utf-8") as f:
            f.write(text)
        out.append(path)
    return out[0], out[1]


class EmotionClassifier(Pretrained):
    """Classify utterances with a trained serkit fold (see the module docstring): a SpeechBrain
    ``Pretrained`` interface (``.mods``, ``.hparams``, ``encode_batch``, ``classify_batch``,
    ``classify_file``).

    ``.mods``: ``layer_sum``, ``head`` and ``upstream``. Attributes: ``classes`` (label order), ``info``
    (train_info.json), ``checkpoint`` (the one loaded), ``device``.
    """

    MODULES_NEEDED = ["layer_sum", "head", "upstream"]

    def __init__(
        self,
        modules: dict[str, torch.nn.Module] | None = None,
        hparams: dict | None = None,
        run_opts: dict | None = None,
        freeze_params: bool = True,
    ) -> None:
        hparams = dict(hparams or {})
        if "serkit_fold" in hparams:  # built by SpeechBrain's foreign_class from inference.yaml
            fold = hparams.pop("serkit_fold")
            modules = fold["modules"]
            hparams = {
                **fold["hparams"],
                **hparams,
                "classes": fold["classes"],
                "train_info": fold["train_info"],
                "serkit_checkpoint": fold["checkpoint"],
            }
        super().__init__(modules=modules, hparams=hparams, run_opts=run_opts, freeze_params=freeze_params)
        self.classes = list(hparams["classes"])
        self.info = hparams["train_info"]
        self.checkpoint = hparams.get("serkit_checkpoint")
        self.layers = list(self.info.get("upstream_layers") or [])
        self.finetuned = self.info.get("setting") == "finetune"
        self.eval()

    @property
    def layer_sum(self) -> torch.nn.Module:
        return self.mods.layer_sum

    @property
    def head(self) -> torch.nn.Module:
        return self.mods.head

    @property
    def upstream(self) -> torch.nn.Module | None:
        """The frozen upstream that encodes raw audio (a model trained on cached features), else None."""
        return None if self.finetuned else self.mods.upstream

    @property
    def finetuned_upstream(self) -> torch.nn.Module | None:
        """The finetuned upstream lobe restored from the checkpoint, else None."""
        return self.mods.upstream if self.finetuned else None

    @classmethod
    def from_hparams(
        cls,
        source: str | os.PathLike,
        hparams_file: str = "hyperparams.yaml",
        overrides: dict | None = None,
        savedir: str | os.PathLike | None = None,
        run_opts: dict | None = None,
        checkpoint: str = "best",
        upstream: str | None = None,
        **kwargs,
    ) -> EmotionClassifier | MFSNClassifier:
        """Load a trained fold (a local folder: nothing is fetched, so ``savedir`` is unused).

        ``hparams_file`` and ``overrides`` as in SpeechBrain (the fold's ``hyperparams.yaml``);
        ``run_opts={"device": "cuda:0"}`` (default ``cpu``); ``checkpoint="best"`` (on validation) or
        ``"last"``; ``upstream`` replaces the upstream path recorded in ``train_info.json``.
        """
        del savedir
        from .train import _peek_yaml

        hp_path = Path(source) / hparams_file
        if hp_path.is_file() and "classifier" in _peek_yaml(str(hp_path)):
            # a method with its own inference (MFSN: two upstreams, 3-second segments)
            from hyperpyyaml import load_hyperpyyaml

            with open(hp_path, encoding="utf-8") as f:
                hp = load_hyperpyyaml(f, overrides or {})
            device = (run_opts or {}).get("device") or "cpu"
            return hp["classifier"](source, hp, read_train_info(source), device=device, checkpoint=checkpoint)
        fold = load_fold(
            source, hparams_file=hparams_file, overrides=overrides, checkpoint=checkpoint, upstream=upstream
        )
        run_opts = dict(run_opts or {})
        run_opts.setdefault("device", "cpu")
        return cls(run_opts=run_opts, hparams={"serkit_fold": fold}, **kwargs)

    def _encode(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        from .lobes import padding_mask_to_relative_lengths, relative_lengths_to_padding_mask

        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        wavs = wavs.to(self.device).float()
        if wav_lens is None:
            wav_lens = torch.ones(wavs.size(0), device=self.device)
        wav_lens = wav_lens.to(self.device)
        if self.finetuned:
            layers, lens = self.mods.upstream(wavs, wav_lens)
        else:
            mask = relative_lengths_to_padding_mask(wav_lens, wavs.size(1))
            hidden, frame_mask = self.mods.upstream(wavs, mask, layers=self.layers)
            layers = torch.stack(hidden, dim=1)
            lens = padding_mask_to_relative_lengths(frame_mask)
        return self.mods.layer_sum(layers, lens), lens

    @torch.no_grad()
    def encode_batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Utterance embeddings (B, 1, D): the vector the head's final layer classifies, like SpeechBrain's
        ``EncoderClassifier.encode_batch``."""
        from .lobes import relative_lengths_to_padding_mask

        x, lens = self._encode(wavs, wav_lens)
        return self._head_lobe().embed(x, relative_lengths_to_padding_mask(lens, x.size(1))).unsqueeze(1)

    def _head_lobe(self) -> SERHead:
        from .lobes import SERHead

        head = self.mods.head
        if not isinstance(head, SERHead) or not isinstance(
            getattr(head.head, "classifier", None), torch.nn.Linear
        ):
            raise SerkitError(f"{type(head).__name__}: no final linear layer to take an embedding from")
        return head

    @torch.no_grad()
    def classify_batch(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        """Classify a padded batch of 16 kHz waveforms (B, S) with relative lengths ``wav_lens`` (B,).

        Returns ``(out_prob (B, K), score (B,), index (B,), text_lab [str])`` like SpeechBrain's
        ``EncoderClassifier.classify_batch``.
        """
        x, lens = self._encode(wavs, wav_lens)
        logits = self.mods.head(x, lens)
        out_prob = torch.softmax(logits.float(), dim=-1)
        score, index = out_prob.max(dim=-1)
        return out_prob, score, index, [self.classes[i] for i in index.tolist()]

    def classify_file(
        self, path: str | os.PathLike, max_duration: float | None = 600.0
    ) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        """Classify one audio file (resampled to 16 kHz and averaged to mono if needed).

        Refused (SerkitError naming the file): NaN/Inf samples, a sample rate outside 1..384 kHz, more
        than ``max_duration`` seconds (None: no limit).
        """
        wav = load_wav(path, max_duration=max_duration)
        self._check_length(wav, path)
        return self.classify_batch(wav.unsqueeze(0), torch.ones(1))

    def _check_length(self, wav: torch.Tensor, path: str | os.PathLike) -> None:
        module = self.finetuned_upstream.upstream if self.finetuned else self.mods.upstream
        need = int(getattr(module, "receptive_field", 400))
        if wav.numel() < need:
            raise SerkitError(
                f"{path}: {wav.numel()} samples ({wav.numel() / 16:.1f} ms) is shorter than "
                f"the upstream's receptive field ({need} samples); nothing to classify"
            )

    def forward(
        self, wavs: Tensor, wav_lens: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        return self.classify_batch(wavs, wav_lens)
