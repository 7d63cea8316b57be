"""MFCC "upstream": the features of HuBERT's first pseudo-label iteration, at 50 frames per second.

Kaldi-compatible MFCC (``torchaudio.compliance.kaldi.mfcc``: 25 ms window, 10 ms shift, 13 cepstra,
``use_energy=False``) plus deltas and delta-deltas = 39 dims at 100 Hz, as fairseq's
``examples/hubert/simple_kmeans/dump_mfcc_feature.py`` computes them. serkit then keeps every second
frame, so labels are at 50 Hz and ``label_rate: 50`` holds in every HuBERT iteration (fairseq's
iteration 1 instead uses 100 Hz labels with ``label_rate: 100``). With Kaldi's ``snip_edges`` the
100 Hz count is ``m = floor((n - 400) / 160) + 1`` and keeping frames 0, 2, 4, ... gives
``ceil(m / 2) = floor((n - 400) / 320) + 1``: exactly the frame count of HuBERT's conv stack.
Frame ``t`` at 50 Hz is then centred on the same 25 ms window as MFCC frame ``2t``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from . import SAMPLE_RATE
from .base import Upstream, WaveBatch


class MfccUpstream(Upstream):
    """MFCC as an upstream with one layer (0) of 39 dims.

    ``forward(wav (B, S), padding_mask (B, S) | None, layers=[0])`` -> ``([ (B, T, 39) ], mask (B, T))``.
    """

    kind = "mfcc"
    num_layers = 0
    dim = 39
    normalize = False

    def __init__(self) -> None:
        super().__init__()
        self.path = "mfcc"

    def _one(self, wav: torch.Tensor) -> torch.Tensor:
        import torchaudio

        mfcc = torchaudio.compliance.kaldi.mfcc(
            waveform=wav.unsqueeze(0), sample_frequency=SAMPLE_RATE, use_energy=False
        )  # (T100, 13)
        mfcc = mfcc.transpose(0, 1)  # (13, T100)
        delta = torchaudio.functional.compute_deltas(mfcc)
        ddelta = torchaudio.functional.compute_deltas(delta)
        feats = torch.cat([mfcc, delta, ddelta], dim=0).transpose(0, 1).contiguous()  # (T100, 39)
        return feats[::2]

    def compute_layers(self, batch: WaveBatch, layers: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        wav, lengths = batch.wav, batch.lengths
        frame_len = self.frame_lengths(lengths)
        t_max = int(frame_len.max())
        out = wav.new_zeros(wav.size(0), t_max, self.dim)
        for i, n in enumerate(lengths.tolist()):
            f = self._one(wav[i, :n].float())
            out[i, : f.size(0)] = f
        mask = torch.arange(t_max, device=wav.device)[None, :] >= frame_len[:, None]
        return [out for _ in layers], mask

    @torch.no_grad()
    def extract(
        self,
        wav: torch.Tensor,
        layers: int | Iterable[int] | None = None,
        max_chunk_seconds: float | None = None,
    ) -> torch.Tensor:
        self.check_layers(layers)
        return self._one(wav.float()).unsqueeze(0)
