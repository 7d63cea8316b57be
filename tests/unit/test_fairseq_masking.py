"""HuBERT's masks repeat under the same seed once serkit's fairseq plugin is imported.

fairseq 0.12's ``compute_mask_indices`` seeds each utterance's generator with ``None`` unless the
caller passes a seed, and ``HubertModel.apply_mask`` never does: two tiny-HuBERT pretraining runs with
the same ``common.seed`` differed in every weight. :mod:`serkit.fairseq_ext.masking` seeds them from
torch's generator (re-seeded by fairseq's trainer before every update).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

pytestmark = pytest.mark.fairseq


@pytest.fixture(scope="module")
def model():
    from fairseq.data import Dictionary
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    import serkit.fairseq_ext  # noqa: F401  (installs the seeded masks, as the user dir does)
    from serkit.upstream.tiny import TINY

    d = Dictionary()
    for i in range(25):
        d.add_symbol(str(i))
    task_cfg = HubertPretrainingConfig(data="/unused", labels=["km"], label_rate=50.0)
    cfg = HubertConfig(label_rate=50.0, mask_prob=0.8, mask_channel_prob=0.2, mask_channel_length=8, **TINY)
    torch.manual_seed(0)
    return HubertModel(cfg, task_cfg, [d]).train()


def _masks(model, seed: int):
    x = torch.ones(3, 120, 64)  # the tiny HuBERT's width
    padding = torch.zeros(3, 120, dtype=torch.bool)
    padding[1, 90:] = True  # one shorter utterance, as in a real batch
    torch.manual_seed(seed)
    x, mask = model.apply_mask(x, padding, None)
    return mask, x == 0  # time mask, and the channel mask (the zeros)


def test_hubert_masks_repeat_under_the_same_torch_seed(model):
    mask_a, chan_a = _masks(model, 1337)
    mask_b, chan_b = _masks(model, 1337)
    assert mask_a.any() and not mask_a.all()
    assert torch.equal(mask_a, mask_b)  # fairseq alone: fresh OS entropy on every call
    assert torch.equal(chan_a, chan_b)
    mask_c, _ = _masks(model, 1338)
    assert not torch.equal(mask_a, mask_c)  # still random, only reproducible


def test_masks_leave_numpys_global_generator_alone(model):
    # fairseq's prefetch thread draws its random crops from it: a draw here would race with those
    np.random.seed(3)
    before = np.random.get_state()[1].copy()
    _masks(model, 0)
    assert np.array_equal(np.random.get_state()[1], before)


def test_installed_in_fairseqs_models_and_explicit_seeds_unchanged():
    import fairseq.models.hubert.hubert as hubert
    import fairseq.models.wav2vec.wav2vec2 as wav2vec2
    from fairseq.data import data_utils

    from serkit.fairseq_ext import masking, ser_model

    for module in (hubert, wav2vec2, ser_model):
        assert module.compute_mask_indices is masking.compute_mask_indices, module.__name__
    masking.install()  # idempotent
    assert masking.compute_mask_indices.__wrapped__ is data_utils.compute_mask_indices
    kw = dict(seed=7, epoch=2, indices=np.arange(4))
    ours = masking.compute_mask_indices((4, 80), None, 0.65, 10, min_masks=2, **kw)
    theirs = data_utils.compute_mask_indices((4, 80), None, 0.65, 10, min_masks=2, **kw)
    assert np.array_equal(ours, theirs)
