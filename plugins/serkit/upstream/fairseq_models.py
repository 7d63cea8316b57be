"""The ``Upstream`` interface and its implementation for fairseq checkpoints (HuBERT, wav2vec 2.0, data2vec).

Layer numbering follows fairseq's ``output_layer``: layer 0 is the transformer's input (the CNN
features after layer norm and projection, before the positional convolution), layer ``l >= 1`` the
output of transformer layer ``l`` (no final encoder layer norm for ``layer_norm_first`` models, like
fairseq's ``extract_features(output_layer=l)``).

Mask invariance: an utterance gives the same features on its valid frames whether it is alone or
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
from pathlib import Path

import torch
import torch.nn.functional as F

from ..utils import SerkitError
from . import FRAME_RATE, SAMPLE_RATE

log = logging.getLogger("serkit.upstream")

#: 60 s at 16 kHz: longer input is processed in chunks (attention memory grows with the square).
DEFAULT_MAX_CHUNK_SECONDS = 60.0


class Upstream(torch.nn.Module):
    """A speech encoder seen as a stack of layers at 50 frames per second.

    Attributes: ``kind`` (hubert|wav2vec2|data2vec|hf|mfcc), ``num_layers`` (transformer layers; valid
    layer indices are 0..num_layers), ``dim`` (channels per layer), ``frame_rate`` (50), ``normalize``
    (waveform layer-normalised per utterance), ``path``, ``receptive_field`` and ``hop`` (samples).
    """

    kind = "?"
    num_layers = 0
    dim = 0
    frame_rate = FRAME_RATE
    normalize = False
    receptive_field = 400
    hop = 320
    path = ""

    def all_layers(self) -> list[int]:
        return list(range(self.num_layers + 1))

    def check_layers(self, layers) -> list[int]:
        if layers is None:
            return self.all_layers()
        if isinstance(layers, int):
            layers = [layers]
        layers = [int(x) for x in layers]
        bad = [x for x in layers if not 0 <= x <= self.num_layers]
        if bad:
            raise SerkitError(
                f"{self.path}: layer(s) {bad} out of range; this {self.kind} model has "
                f"layers 0..{self.num_layers}"
            )
        return layers

    def num_frames(self, num_samples: int) -> int:
        if num_samples < self.receptive_field:
            return 0
        return (num_samples - self.receptive_field) // self.hop + 1

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.where(
            lengths < self.receptive_field,
            torch.zeros_like(lengths),
            torch.div(lengths - self.receptive_field, self.hop, rounding_mode="floor") + 1,
        )

    @staticmethod
    def _lengths(wav: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is None:
            return torch.full((wav.size(0),), wav.size(1), dtype=torch.long, device=wav.device)
        return (~padding_mask).sum(1).long()

    @staticmethod
    def _normalize_wave(wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Layer-norm each utterance over its valid samples (fairseq's ``normalize``); padding stays 0."""
        out = torch.zeros_like(wav)
        for i, n in enumerate(lengths.tolist()):
            out[i, :n] = F.layer_norm(wav[i, :n], (n,))
        return out

    @torch.no_grad()
    def extract(self, wav: torch.Tensor, layers=None, max_chunk_seconds: float | None = None) -> torch.Tensor:
        """Features of ONE utterance ``wav`` (S,) as a tensor (n_layers, T, C), T = ``num_frames(S)``.

        Input longer than ``max_chunk_seconds`` (default 60 s) is cut into chunks aligned with the
        frame hop (each chunk gets the samples its frames need, so the conv output is the same frame
        count); attention then sees one chunk at a time. Memory stays bounded for any length.
        """
        layers = self.check_layers(layers)
        max_chunk = DEFAULT_MAX_CHUNK_SECONDS if max_chunk_seconds is None else max_chunk_seconds
        total = self.num_frames(wav.numel())
        chunk_frames = max(1, int(max_chunk * SAMPLE_RATE) // self.hop)
        if total <= chunk_frames:
            hidden, _ = self.forward(wav.unsqueeze(0), None, layers)
            return torch.stack([h[0] for h in hidden])
        if self.normalize:  # normalise the whole utterance once, as fairseq would, then cut
            wav = F.layer_norm(wav, wav.shape)
        pieces = []
        for f0 in range(0, total, chunk_frames):
            f1 = min(total, f0 + chunk_frames)
            seg = wav[f0 * self.hop : (f1 - 1) * self.hop + self.receptive_field]
            hidden, _ = self.forward(seg.unsqueeze(0), None, layers, _normalized=True)
            pieces.append(torch.stack([h[0] for h in hidden]))
        return torch.cat(pieces, dim=1)


def _conv_geometry(feature_extractor) -> tuple[int, int, bool]:
    """(receptive field, hop, group-norm first layer) of fairseq's ConvFeatureExtractionModel."""
    rf, hop = 1, 1
    convs = [m for m in feature_extractor.modules() if isinstance(m, torch.nn.Conv1d)]
    for conv in convs:
        rf = rf + (conv.kernel_size[0] - 1) * hop
        hop = hop * conv.stride[0]
    group_norm = any(isinstance(m, torch.nn.GroupNorm) for m in feature_extractor.modules())
    return rf, hop, group_norm


class FairseqUpstream(Upstream):
    """HuBERT / wav2vec 2.0 / data2vec audio from fairseq, run layer by layer (see module docstring)."""

    def __init__(self, model, kind: str, normalize: bool, path: str = ""):
        super().__init__()
        self.model = model
        self.kind = kind
        self.normalize = bool(normalize)
        self.path = str(path)
        self.num_layers = len(model.encoder.layers)
        self.dim = model.encoder.embedding_dim
        self.receptive_field, self.hop, self._group_norm = _conv_geometry(model.feature_extractor)
        if self.receptive_field != 400 or self.hop != 320:
            log.warning(
                "%s: conv front end has receptive field %d and hop %d (not 400/320): frames are not at 50 Hz",
                path,
                self.receptive_field,
                self.hop,
            )
        self.frame_rate = SAMPLE_RATE / self.hop
        pos_conv = getattr(model.encoder, "pos_conv", None)
        convs = [] if pos_conv is None else [x for x in pos_conv.modules() if isinstance(x, torch.nn.Conv1d)]
        self._stacked_pos_conv = len(convs) > 1

    def _cnn(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        fe = self.model.feature_extractor
        uneven = bool((lengths != wav.size(1)).any())
        if self._group_norm and uneven:
            t_max = int(self.frame_lengths(torch.tensor([wav.size(1)]))[0])
            out = None
            for i, n in enumerate(lengths.tolist()):
                f = fe(wav[i : i + 1, :n])  # (1, C, T_i)
                if out is None:
                    out = f.new_zeros(wav.size(0), f.size(1), t_max)
                out[i, :, : f.size(2)] = f[0]
            return out
        return fe(wav)

    @torch.no_grad()
    def forward(
        self,
        wav: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        layers=None,
        _normalized: bool = False,
    ):
        """Run the model; return ``([ (B, T, C) per requested layer ], padding_mask (B, T) bool)``.

        ``wav`` (B, S) float at 16 kHz; ``padding_mask`` (B, S) True on padded samples, or None.
        """
        layers = self.check_layers(layers)
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        wav = wav.float()
        lengths = self._lengths(wav, padding_mask)
        if lengths.min() < self.receptive_field:
            raise SerkitError(
                f"{self.path}: input of {int(lengths.min())} samples is shorter than the "
                f"model's receptive field ({self.receptive_field} samples = "
                f"{self.receptive_field / SAMPLE_RATE * 1000:.0f} ms)"
            )
        if self.normalize and not _normalized:
            wav = self._normalize_wave(wav, lengths)
        elif padding_mask is not None:
            wav = wav.masked_fill(padding_mask, 0.0)
        m = self.model
        feats = self._cnn(wav, lengths).transpose(1, 2)  # (B, T, C_cnn)
        feats = m.layer_norm(feats)
        if m.post_extract_proj is not None:
            feats = m.post_extract_proj(feats)
        frame_len = self.frame_lengths(lengths)
        t = feats.size(1)
        frame_mask = torch.arange(t, device=feats.device)[None, :] >= frame_len[:, None]
        hidden = {0: feats.masked_fill(frame_mask[..., None], 0.0)}
        top = max(layers)
        if top > 0:
            for i, x in enumerate(self.encoder_layers(feats, frame_mask, top), start=1):
                hidden[i] = x.masked_fill(frame_mask[..., None], 0.0)
        return [hidden[i] for i in layers], frame_mask

    def encoder_layers(self, feats: torch.Tensor, frame_mask: torch.Tensor, top: int) -> list[torch.Tensor]:
        """Outputs (B, T, C) of transformer layers 1..``top`` for the encoder input ``feats`` (B, T, C).

        A multi-layer positional convolution (data2vec's ``pos_conv_depth > 1``) carries padded frames
        into valid ones between its layers (fairseq zeroes them only before the first); the encoder
        then runs on each utterance's own frames so that padding never changes them.
        """
        enc = self.model.encoder
        frame_len = (~frame_mask).sum(1)
        if self._stacked_pos_conv and bool(frame_mask.any()):
            out = [feats.new_zeros(feats.shape) for _ in range(top)]
            for b, n in enumerate(frame_len.tolist()):
                alone = self.encoder_layers(feats[b : b + 1, :n], frame_mask[b : b + 1, :n], top)
                for i, x in enumerate(alone):
                    out[i][b, :n] = x[0]
            return out
        enc_mask = frame_mask if bool(frame_mask.any()) else None
        _, layer_results = enc.extract_features(feats, padding_mask=enc_mask, tgt_layer=top - 1)
        return [(res[0] if isinstance(res, tuple) else res).transpose(0, 1) for res in layer_results[:top]]


# ---------------------------------------------------------------------------------------------
# loading (the checkpoint formats are read in .checkpoint, the one place that knows them)


def load_fairseq_upstream(path, device: str = "cpu") -> FairseqUpstream:
    """Load a fairseq HuBERT / wav2vec 2.0 / data2vec audio checkpoint, pretrained or CTC-finetuned.

    Any published form (``cfg`` dict or argparse ``args``, nested ``w2v_args``, either weight-norm naming)
    is read by :func:`serkit.upstream.checkpoint.read_checkpoint`. The training data (``task.data``, label
    dir, dictionaries) is not needed.
    """
    path = Path(path)
    try:
        import fairseq  # noqa: F401
    except ImportError as e:
        raise SerkitError(
            f"{path}: loading fairseq checkpoints needs fairseq (pip install "
            "'serkit[fairseq]' or `make install`)"
        ) from e
    from .checkpoint import build_encoder, read_checkpoint, register_models

    register_models()
    ck = read_checkpoint(path)
    model = build_encoder(ck)
    up = FairseqUpstream(model, kind=ck.kind, normalize=ck.normalize, path=str(path))
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
