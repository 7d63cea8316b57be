"""The one forward of fairseq speech encoders (HuBERT, wav2vec 2.0, data2vec): :func:`layer_outputs`.

Every serkit path that runs a fairseq encoder calls :func:`layer_outputs`: feature extraction
(:class:`FairseqEncoderUpstream`, what ``serkit dump-features`` uses), the SpeechBrain finetuning lobe
(``serkit.speechbrain.lobes.FairseqUpstream``) and the fairseq SER model (``serkit_ser_model``). It
takes the fairseq model object and uses only its attributes: fairseq itself is imported by
:mod:`.checkpoint`, which builds the model.

Layer numbering follows fairseq's ``output_layer``: layer 0 is the transformer's input (the CNN
features after layer norm and projection, input dropout and training-time masking, before the
positional convolution), layer ``l >= 1`` the output of transformer layer ``l`` (no final encoder
layer norm for ``layer_norm_first`` models, like fairseq's ``extract_features(output_layer=l)``).

Mask invariance: an utterance gives the same layers on its valid frames whether it is alone or
padded inside a batch. fairseq's own forward does not guarantee that: the "default" extractor mode
(HuBERT-base, wav2vec2-base, the tiny HuBERT) group-normalises the first conv layer over the whole
padded length, and HuBERT maps the sample mask to frames by reshaping. Here the CNN runs on each
utterance's valid samples when the extractor uses group norm (batched otherwise: layer-norm
extractors are per frame) and the frame mask comes from the conv length formula; data2vec's stacked
positional convolution would carry padding into valid frames, so its transformer runs per utterance
when a batch is padded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..utils import SerkitError
from . import SAMPLE_RATE
from .base import Upstream, WaveBatch, frame_lengths, normalize_waves

log = logging.getLogger("serkit.upstream")


def conv_geometry(model: torch.nn.Module) -> tuple[int, int, bool]:
    """(receptive field, hop, group-norm first layer) of a fairseq model's conv feature extractor."""
    rf, hop = 1, 1
    modules = list(model.feature_extractor.modules())
    for conv in (m for m in modules if isinstance(m, torch.nn.Conv1d)):
        rf = rf + (conv.kernel_size[0] - 1) * hop
        hop = hop * conv.stride[0]
    return rf, hop, any(isinstance(m, torch.nn.GroupNorm) for m in modules)


def _stacked_pos_conv(model: torch.nn.Module) -> bool:
    pos_conv = getattr(model.encoder, "pos_conv", None)
    return pos_conv is not None and sum(isinstance(m, torch.nn.Conv1d) for m in pos_conv.modules()) > 1


class _GradScale(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward (fairseq's ``feature_grad_mult``)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.new(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def _cnn(
    model: torch.nn.Module, wav: torch.Tensor, lengths: torch.Tensor, group_norm: bool, rf: int, hop: int
) -> torch.Tensor:
    """CNN features (B, C, T); per utterance when a group norm would mix in the padding."""
    fe = model.feature_extractor
    if not group_norm or not bool((lengths != wav.size(1)).any()):
        return fe(wav)
    t_max = int(frame_lengths(torch.tensor([wav.size(1)]), rf, hop)[0])
    out = None
    for i, n in enumerate(lengths.tolist()):
        f = fe(wav[i : i + 1, :n])  # (1, C, T_i)
        if out is None:
            out = f.new_zeros(wav.size(0), f.size(1), t_max)
        out[i, :, : f.size(2)] = f[0]
    return out


def _encoder_layers(
    model: torch.nn.Module, feats: torch.Tensor, frame_mask: torch.Tensor, top: int, stacked: bool
) -> list[torch.Tensor | None]:
    """Outputs (B, T, C) of transformer layers 1..``top`` for the encoder input ``feats`` (B, T, C).

    With encoder layerdrop in training only the top layer is defined (dropped layers have no output):
    the list then holds None below it. A multi-layer positional convolution (data2vec's
    ``pos_conv_depth > 1``) carries padded frames into valid ones between its layers (fairseq zeroes
    them only before the first): the encoder then runs on each utterance's own frames.
    """
    if stacked and bool(frame_mask.any()):
        out = [feats.new_zeros(feats.shape) for _ in range(top)]
        for b, n in enumerate((~frame_mask).sum(1).tolist()):
            alone = _encoder_layers(model, feats[b : b + 1, :n], frame_mask[b : b + 1, :n], top, False)
            for i, x in enumerate(alone):
                if x is None:
                    out[i] = None
                elif out[i] is not None:
                    out[i][b, :n] = x[0]
        return out
    enc_mask = frame_mask if bool(frame_mask.any()) else None
    x, results = model.encoder.extract_features(feats, padding_mask=enc_mask, tgt_layer=top - 1)
    if len(results) < top:  # layers dropped (layerdrop): the top one is the last that ran
        return [None] * (top - 1) + [x]
    return [r[0].transpose(0, 1) for r in results[: top - 1]] + [x]


def layer_outputs(
    model: torch.nn.Module,
    wav: torch.Tensor,
    lengths: torch.Tensor,
    layers: list[int],
    *,
    normalize: bool,
    train_cnn: bool = False,
    train: bool = False,
    feature_grad_mult: float = 1.0,
    mask: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    path: str = "",
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Layers ``layers`` of the fairseq encoder ``model`` for a padded batch, and their frame padding mask.

    Parameters
    ----------
    model
        A fairseq HuBERT / wav2vec 2.0 / data2vec audio model (``feature_extractor``, ``layer_norm``,
        ``post_extract_proj``, ``encoder``), as :func:`serkit.upstream.checkpoint.build_encoder` builds it.
    wav : (B, S) at 16 kHz (float32, or half when the caller runs in half precision)
    lengths : (B,) valid samples of each utterance; samples past them are padding.
    layers : layer numbers (0..L, see the module docstring), returned in this order.
    normalize : layer-norm each utterance's waveform over its valid samples (the upstream's
        ``task.normalize``); padding is set to 0 either way.
    train_cnn, train : compute gradients through the CNN front end / the rest of the encoder (when
        gradients are enabled at all); the parts not trained run without building a graph.
    feature_grad_mult : gradient scale into the CNN (fairseq's ``feature_grad_mult``), when trained.
    mask : ``mask(x (B, T, C), frame_mask (B, T)) -> x``: training-time masking of the transformer input.
    path : named in errors.

    Returns
    -------
    ``([ (B, T, C) per requested layer ], frame_mask (B, T) bool, True on padding)``; padded frames are 0.
    """
    rf, hop, group_norm = conv_geometry(model)
    if bool((lengths < rf).any()):
        raise SerkitError(
            f"{path + ': ' if path else ''}an input of {int(lengths.min())} samples is shorter than the "
            f"upstream's receptive field ({rf} samples = {rf / SAMPLE_RATE * 1000:.0f} ms)"
        )
    if normalize:
        wav = normalize_waves(wav, lengths)
    elif bool((lengths != wav.size(1)).any()):
        padding = torch.arange(wav.size(1), device=wav.device)[None, :] >= lengths[:, None]
        wav = wav.masked_fill(padding, 0.0)
    grad = torch.is_grad_enabled()
    with torch.set_grad_enabled(grad and train_cnn):
        feats = _cnn(model, wav, lengths, group_norm, rf, hop)
    if grad and train_cnn and feature_grad_mult != 1.0:
        feats = _GradScale.apply(feats, feature_grad_mult)
    with torch.set_grad_enabled(grad and train):
        x = model.layer_norm(feats.transpose(1, 2))
        if model.post_extract_proj is not None:
            x = model.post_extract_proj(x)
        if getattr(model, "dropout_input", None) is not None:
            x = model.dropout_input(x)
        frame_len = frame_lengths(lengths, rf, hop)
        frame_mask = torch.arange(x.size(1), device=x.device)[None, :] >= frame_len[:, None]
        if mask is not None:
            x = mask(x, frame_mask)
        x = x.masked_fill(frame_mask[..., None], 0.0)
        hidden = {0: x}
        top = max(layers)
        if top > 0:
            stacked = _stacked_pos_conv(model)
            for i, h in enumerate(_encoder_layers(model, x, frame_mask, top, stacked), start=1):
                if h is not None:
                    hidden[i] = h.masked_fill(frame_mask[..., None], 0.0)
        missing = [i for i in layers if i not in hidden]
        if missing:
            raise SerkitError(
                f"{path + ': ' if path else ''}layer(s) {missing} were dropped by the encoder's layerdrop; "
                "only the top layer is defined with layerdrop > 0"
            )
        return [hidden[i] for i in layers], frame_mask


class FairseqEncoderUpstream(Upstream):
    """HuBERT / wav2vec 2.0 / data2vec audio from fairseq as an :class:`Upstream` (feature extraction)."""

    def __init__(self, model: torch.nn.Module, kind: str, normalize: bool, path: str = "") -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.normalize = bool(normalize)
        self.path = str(path)
        self.num_layers = len(model.encoder.layers)
        self.dim = model.encoder.embedding_dim
        self.receptive_field, self.hop, _ = conv_geometry(model)
        if self.receptive_field != 400 or self.hop != 320:
            log.warning(
                "%s: conv front end has receptive field %d and hop %d (not 400/320): frames are not at 50 Hz",
                path,
                self.receptive_field,
                self.hop,
            )
        self.frame_rate = SAMPLE_RATE / self.hop

    def compute_layers(self, batch: WaveBatch, layers: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        return layer_outputs(
            self.model, batch.wav.float(), batch.lengths, layers, normalize=batch.normalize, path=self.path
        )


def load_fairseq_upstream(path: str | os.PathLike, device: str = "cpu") -> FairseqEncoderUpstream:
    """Load a fairseq HuBERT / wav2vec 2.0 / data2vec audio checkpoint, pretrained or CTC-finetuned.

    Any published form (``cfg`` dict or argparse ``args``, nested ``w2v_args``, either weight-norm naming)
    is read by :func:`serkit.upstream.checkpoint.read_checkpoint`. The training data (``task.data``, label
    dir, dictionaries) is not needed.
    """
    from .checkpoint import load_encoder

    ck, model = load_encoder(Path(path))
    up = FairseqEncoderUpstream(model, kind=ck.kind, normalize=ck.normalize, path=str(path))
    log.info(
        "loaded %s upstream %s (%s): %d layers x %d dims, normalize=%s",
        ck.kind,
        path,
        ck.name,
        up.num_layers,
        up.dim,
        ck.normalize,
    )
    return up.to(device).eval()


__all__ = ["FairseqEncoderUpstream", "conv_geometry", "layer_outputs", "load_fairseq_upstream"]
