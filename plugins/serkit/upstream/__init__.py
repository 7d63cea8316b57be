"""Self-supervised speech upstreams: load local checkpoints, run them layer by layer, cache features.

``load_upstream(path)`` accepts

- a fairseq checkpoint (``.pt``) of HuBERT, wav2vec 2.0 or data2vec audio, pretrained or CTC-finetuned
  (the inner encoder is used), in any form fairseq published them (``cfg`` dict or argparse ``args``,
  nested ``w2v_args``; see :mod:`serkit.upstream.checkpoint`);
- a local directory in Hugging Face format (WavLM, HuBERT, wav2vec 2.0; needs ``serkit[hf]``);
- the word ``mfcc``: Kaldi-compatible MFCC + deltas + delta-deltas (39 dims) at 50 frames per second,
  the features of HuBERT's first pseudo-label iteration.

Every upstream returns 50 frames per second: for a waveform of ``n`` samples at 16 kHz,
``num_frames(n) = floor((n - 400) / 320) + 1`` (0 when ``n < 400``), the length of HuBERT's and
wav2vec 2.0's convolutional front end, and what ``serkit kmeans apply`` writes per utterance.

Loading a fairseq checkpoint unpickles it (``torch.load(weights_only=False)``; the process environment
is left as it was): only load checkpoints you trust.

The package imports nothing heavy: torch and fairseq are imported when a model is loaded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Upstream

SAMPLE_RATE = 16000
FRAME_RATE = 50
#: HuBERT / wav2vec 2.0 conv stack: receptive field and hop, in samples.
RECEPTIVE_FIELD = 400
HOP = 320


def num_frames(num_samples: int, receptive_field: int = RECEPTIVE_FIELD, hop: int = HOP) -> int:
    """Frames the 20 ms conv front end produces for ``num_samples`` samples (fairseq's formula)."""
    if num_samples < receptive_field:
        return 0
    return (num_samples - receptive_field) // hop + 1


def load_upstream(path: str | os.PathLike, device: str = "cpu") -> Upstream:
    """Load an upstream from a local path (or ``"mfcc"``) and return an :class:`Upstream` in eval mode.

    Raises ``SerkitError`` naming the file and what to do when it is missing, truncated, or not a
    speech SSL checkpoint.
    """
    if str(path) == "mfcc":
        from .mfcc import MfccUpstream

        return MfccUpstream().to(device).eval()
    if os.path.isdir(path):
        from .hf import load_hf_upstream

        return load_hf_upstream(path, device=device)
    from .fairseq_models import load_fairseq_upstream

    return load_fairseq_upstream(path, device=device)


def __getattr__(name: str) -> object:  # lazy: keeps `import serkit.upstream` free of torch
    if name == "Upstream":
        from .base import Upstream

        return Upstream
    if name in ("FairseqEncoderUpstream", "layer_outputs"):
        from . import fairseq_models

        return getattr(fairseq_models, name)
    if name == "FeatureReader":
        from .features import FeatureReader

        return FeatureReader
    raise AttributeError(name)


__all__ = [
    "load_upstream",
    "layer_outputs",
    "num_frames",
    "SAMPLE_RATE",
    "FRAME_RATE",
    "Upstream",
    "FairseqEncoderUpstream",
    "FeatureReader",
]
