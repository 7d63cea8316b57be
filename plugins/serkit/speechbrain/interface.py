"""Inference with a trained fold, in the style of SpeechBrain's pretrained interfaces.

>>> clf = EmotionClassifier.from_hparams(source="exp/shiftcnn/fold1")    # doctest: +SKIP
>>> out_prob, score, index, text_lab = clf.classify_file("some.wav")     # doctest: +SKIP

``source`` is a fold's output folder of ``serkit train``: ``train_info.json`` says how the model was
trained; ``hyperparams.yaml`` rebuilds the head; the checkpoint that was best on validation
(``best_metric``, never test) is loaded from ``save/``. A model trained on cached features runs the
upstream recorded in ``train_info.json`` on the raw audio, on the same layers as the cache; a finetuned
model restores its finetuned upstream from the checkpoint.

Trust: ``source`` is code. ``hyperparams.yaml`` is HyperPyYAML (``!new:``/``!apply:`` build and call
Python objects) and the fairseq upstream named in ``train_info.json`` is unpickled: load folds from
trusted sources only, as SpeechBrain's own ``from_hparams``. The head and state checkpoints are loaded
with ``weights_only=True`` (:class:`~serkit.speechbrain.checkpoints.Checkpointer`), so a checkpoint
file holding other pickled objects is refused (docs/trust.md).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..utils import SerkitError
from .dataio import load_wav

log = logging.getLogger("serkit.speechbrain")


def read_train_info(source: str | Path) -> dict:
    source = Path(source)
    path = source / "train_info.json"
    if not path.is_file():
        folds = sorted(p.parent.name for p in source.glob("*/train_info.json"))
        if folds:
            raise SerkitError(f"{source}: a run with folds {folds}; pass one fold, e.g. {source / folds[0]}")
        raise SerkitError(f"{path}: not found; --exp must be the --output-folder of `serkit train`")
    return json.loads(path.read_text(encoding="utf-8"))


class EmotionClassifier(torch.nn.Module):
    """Classify utterances with a trained serkit fold (see the module docstring).

    Attributes: ``classes`` (label order), ``info`` (train_info.json), ``checkpoint`` (the one loaded),
    ``device``.
    """

    def __init__(self, layer_sum, head, classes, info: dict, upstream=None, finetuned_upstream=None,
                 device: str = "cpu"):
        super().__init__()
        self.layer_sum, self.head = layer_sum, head
        self.upstream = upstream  # featex: a frozen serkit.upstream.Upstream
        self.finetuned_upstream = finetuned_upstream  # finetune: the lobe restored from the checkpoint
        self.classes = list(classes)
        self.info = info
        self.layers = list(info.get("upstream_layers") or [])
        self.device = device
        self.checkpoint = None
        self.to(device).eval()

    @classmethod
    def from_hparams(cls, source, run_opts: dict | None = None, savedir=None, checkpoint: str = "best"):
        """Load a trained fold. ``run_opts={"device": "cuda:0"}``; ``checkpoint="best"`` (on validation)
        or ``"last"``; ``savedir`` is accepted for SpeechBrain compatibility and unused (nothing is fetched).
        """
        from hyperpyyaml import load_hyperpyyaml

        from .checkpoints import Checkpointer

        del savedir
        source = Path(source)
        info = read_train_info(source)
        device = (run_opts or {}).get("device") or "cpu"
        hp_path = source / "hyperparams.yaml"
        if not hp_path.is_file():
            raise SerkitError(f"{hp_path}: not found; the fold's output folder is incomplete")
        with open(hp_path, encoding="utf-8") as f:
            hparams = load_hyperpyyaml(f)
        if "classifier" in hparams:  # a method with its own inference (MFSN: two upstreams, segments)
            return hparams["classifier"](source, hparams, info, device=device, checkpoint=checkpoint)
        recoverables = dict(hparams["checkpointer"].recoverables)
        upstream = finetuned = None
        if info.get("setting") == "finetune":
            from .lobes import FairseqUpstream

            finetuned = FairseqUpstream(info["upstream"], freeze=True, layers=info["upstream_layers"])
            recoverables["upstream"] = finetuned
        else:
            if not info.get("upstream"):
                raise SerkitError(f"{source / 'train_info.json'}: no upstream recorded for the cached "
                                  "features; retrain with --upstream CKPT so new audio can be encoded")
            from serkit.upstream import load_upstream

            upstream = load_upstream(info["upstream"], device="cpu")
            if info.get("upstream_normalize") is not None and bool(upstream.normalize) != bool(
                    info["upstream_normalize"]):
                log.warning("%s: normalize=%s differs from the cached features' (%s)", info["upstream"],
                            upstream.normalize, info["upstream_normalize"])
        checkpointer = Checkpointer(source / "save", recoverables=recoverables)
        best = info.get("best_metric", "ua")
        # "last": the last finished epoch, not an intra-epoch checkpoint of a killed run
        ckpt = checkpointer.find_checkpoint(max_key=f"valid_{best}") if checkpoint == "best" \
            else checkpointer.find_checkpoint(ckpt_predicate=lambda c: c.meta.get("end-of-epoch", True))
        if ckpt is None:
            raise SerkitError(f"{source / 'save'}: no checkpoint; has training run at least one epoch?")
        checkpointer.load_checkpoint(ckpt)
        clf = cls(hparams["modules"]["layer_sum"], hparams["modules"]["head"], info["classes"], info,
                  upstream=upstream, finetuned_upstream=finetuned, device=device)
        clf.checkpoint = ckpt
        log.info("loaded %s (epoch %s, valid %s %.4f)", ckpt.path, ckpt.meta.get("epoch"), best,
                 ckpt.meta.get(f"valid_{best}", float("nan")))
        return clf

    @torch.no_grad()
    def classify_batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None):
        """Classify a padded batch of 16 kHz waveforms (B, S) with relative lengths ``wav_lens`` (B,).

        Returns ``(out_prob (B, K), score (B,), index (B,), text_lab [str])`` like SpeechBrain's
        ``EncoderClassifier.classify_batch``.
        """
        from .lobes import padding_mask_to_relative_lengths, relative_lengths_to_padding_mask

        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        wavs = wavs.to(self.device).float()
        if wav_lens is None:
            wav_lens = torch.ones(wavs.size(0), device=self.device)
        wav_lens = wav_lens.to(self.device)
        if self.finetuned_upstream is not None:
            layers, lens = self.finetuned_upstream(wavs, wav_lens)
        else:
            mask = relative_lengths_to_padding_mask(wav_lens, wavs.size(1))
            hidden, frame_mask = self.upstream(wavs, mask, layers=self.layers)
            layers = torch.stack(hidden, dim=1)
            lens = padding_mask_to_relative_lengths(frame_mask)
        x = self.layer_sum(layers, lens)
        logits = self.head(x, lens)
        out_prob = torch.softmax(logits.float(), dim=-1)
        score, index = out_prob.max(dim=-1)
        return out_prob, score, index, [self.classes[i] for i in index.tolist()]

    def classify_file(self, path, max_duration: float | None = 600.0):
        """Classify one audio file (resampled to 16 kHz and averaged to mono if needed).

        Refused (SerkitError naming the file): NaN/Inf samples, a sample rate outside 1..384 kHz, more
        than ``max_duration`` seconds (None: no limit).
        """
        wav = load_wav(path, max_duration=max_duration)
        self._check_length(wav, path)
        return self.classify_batch(wav.unsqueeze(0), torch.ones(1))

    def _check_length(self, wav: torch.Tensor, path) -> None:
        module = self.upstream if self.upstream is not None else self.finetuned_upstream.upstream
        need = int(getattr(module, "receptive_field", 400))
        if wav.numel() < need:
            raise SerkitError(f"{path}: {wav.numel()} samples ({wav.numel() / 16:.1f} ms) is shorter than "
                              f"the upstream's receptive field ({need} samples); nothing to classify")

    def forward(self, wavs, wav_lens=None):
        return self.classify_batch(wavs, wav_lens)
