"""The ``Upstream`` interface: a speech encoder seen as a stack of layers at 50 frames per second.

Subclasses (fairseq models in :mod:`.fairseq_models`, Hugging Face models in :mod:`.hf`, MFCC in
:mod:`.mfcc`) implement :meth:`Upstream.compute_layers`; the shared parts (layer checks, frame counts, the
per-utterance waveform normalisation, chunked extraction of long input) are here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..utils import SerkitError
from . import FRAME_RATE, SAMPLE_RATE

#: 60 s at 16 kHz: longer input is processed in chunks (attention memory grows with the square).
DEFAULT_MAX_CHUNK_SECONDS = 60.0


def frame_lengths(lengths: torch.Tensor, receptive_field: int, hop: int) -> torch.Tensor:
    """Frames a conv front end of ``receptive_field`` and ``hop`` samples gives for ``lengths`` samples.

    Example
    -------
    >>> frame_lengths(torch.tensor([399, 400, 720, 16000]), 400, 320).tolist()
    [0, 1, 2, 49]
    """
    return torch.where(
        lengths < receptive_field,
        torch.zeros_like(lengths),
        torch.div(lengths - receptive_field, hop, rounding_mode="floor") + 1,
    )


def normalize_waves(wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Layer-norm each utterance over its valid samples (fairseq's ``task.normalize``); padding is 0.

    Computed in float32 and returned in ``wav``'s dtype (a half-precision batch stays half).

    Example
    -------
    >>> out = normalize_waves(torch.tensor([[1.0, 3.0, 7.0], [2.0, 4.0, 0.0]]), torch.tensor([3, 2]))
    >>> [round(v, 4) for v in out[1].tolist()], round(float(out[0].mean()), 4)
    ([-1.0, 1.0, 0.0], 0.0)
    """
    out = torch.zeros_like(wav)
    for i, n in enumerate(lengths.tolist()):
        out[i, :n] = F.layer_norm(wav[i, :n].float(), (n,)).to(wav.dtype)
    return out


@dataclass
class WaveBatch:
    """A padded batch of waveforms as :meth:`Upstream.compute_layers` receives it."""

    wav: torch.Tensor  # (B, S) at 16 kHz, padding at the end
    lengths: torch.Tensor  # (B,) valid samples
    padding_mask: torch.Tensor | None  # (B, S) True on padding, or None when nothing is padded
    normalize: bool  # layer-normalise each waveform (the upstream's normalize, unless already done)


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

    def check_layers(self, layers: int | Iterable[int] | None) -> list[int]:
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
        return frame_lengths(lengths, self.receptive_field, self.hop)

    @torch.no_grad()
    def forward(
        self,
        wav: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        layers: int | Iterable[int] | None = None,
        _normalized: bool = False,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run the model; return ``([ (B, T, C) per requested layer ], padding_mask (B, T) bool)``.

        ``wav`` (B, S) float at 16 kHz; ``padding_mask`` (B, S) True on padded samples, or None.
        ``_normalized``: the waveform is already normalised (a chunk of :meth:`extract`).
        """
        layers = self.check_layers(layers)
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if padding_mask is None:
            lengths = torch.full((wav.size(0),), wav.size(1), dtype=torch.long, device=wav.device)
        else:
            lengths = (~padding_mask).sum(1).long()
        batch = WaveBatch(wav, lengths, padding_mask, self.normalize and not _normalized)
        return self.compute_layers(batch, layers)

    def compute_layers(self, batch: WaveBatch, layers: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """:meth:`forward` after its checks, on a batch with its lengths; ``layers`` checked."""
        raise NotImplementedError

    @torch.no_grad()
    def extract(
        self,
        wav: torch.Tensor,
        layers: int | Iterable[int] | None = None,
        max_chunk_seconds: float | None = None,
    ) -> torch.Tensor:
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


__all__ = ["DEFAULT_MAX_CHUNK_SECONDS", "Upstream", "WaveBatch", "frame_lengths", "normalize_waves"]
