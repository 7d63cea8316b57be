"""Reproducible time and channel masks for fairseq's HuBERT / wav2vec 2.0 models.

fairseq 0.12's ``fairseq.data.data_utils.compute_mask_indices`` draws each utterance's mask from
``np.random.default_rng(seed_i)``, and ``seed_i`` is ``None`` unless the caller passes ``seed``,
``epoch`` and ``indices``. ``HubertModel.apply_mask`` and ``Wav2Vec2Model.apply_mask`` pass none of
them, so every mask comes from fresh OS entropy: ``common.seed`` does not fix them, and two
pretraining runs with the same data, config and seed train on different masks and end with different
weights (the tiny HuBERT of ``local/make_tiny_upstream.sh`` differed in every tensor).

:func:`compute_mask_indices` keeps fairseq's algorithm and takes the missing seed from torch's CPU
generator (one draw per call), which fairseq's trainer re-seeds with ``common.seed + num_updates``
before every update: the masks become a function of the seed and the update, the same after a resume.
numpy's global generator is no use here: fairseq's data prefetch thread (``dataset.data_buffer_size``)
draws from it too, in an order that depends on thread timing (HubertDataset's random crops).
Calls that pass ``seed``, ``epoch`` and ``indices`` are unchanged.

:func:`install` points the models' module-level ``compute_mask_indices`` at it; importing
:mod:`serkit.fairseq_ext` (or the ``plugins/serkit_fairseq`` user dir) installs it, so that every
``fairseq-hydra-train`` run with serkit's user dir masks reproducibly.
"""

from __future__ import annotations

import numpy as np
import torch
from fairseq.data import data_utils

#: fairseq's own function (before any patching)
_fairseq_compute_mask_indices = getattr(
    data_utils.compute_mask_indices, "__wrapped__", data_utils.compute_mask_indices
)

#: modules whose models call ``compute_mask_indices`` by its module-level name
PATCHED_MODULES = ("fairseq.models.hubert.hubert", "fairseq.models.wav2vec.wav2vec2")


def compute_mask_indices(
    shape: tuple[int, int],
    padding_mask: torch.Tensor | None,
    mask_prob: float,
    mask_length: int,
    *args,
    seed: int | None = None,
    epoch: int | None = None,
    indices: np.ndarray | torch.Tensor | None = None,
    **kwargs,
) -> np.ndarray:
    """fairseq's ``compute_mask_indices``; without ``seed``, seeded from torch's CPU generator.

    Each utterance ``i`` of the batch gets fairseq's own per-utterance generator, seeded by
    ``hash((seed, 0, i))`` where ``seed`` is one draw of ``torch.randint`` on the CPU (seeded by
    ``torch.manual_seed``, which fairseq calls before every update), so a run repeats its masks exactly.
    """
    if seed is None or epoch is None or indices is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), device="cpu").item())
        epoch = 0
        indices = np.arange(shape[0])
    return _fairseq_compute_mask_indices(
        shape, padding_mask, mask_prob, mask_length, *args, seed=seed, epoch=epoch, indices=indices, **kwargs
    )


compute_mask_indices.__wrapped__ = _fairseq_compute_mask_indices


def install() -> None:
    """Make fairseq's HuBERT and wav2vec 2.0 models mask with :func:`compute_mask_indices` (idempotent)."""
    import importlib

    for name in PATCHED_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "compute_mask_indices", None) is not None:
            module.compute_mask_indices = compute_mask_indices
