"""Pooling, weighted layer sum, SpecAugment and mask helpers."""

import pytest
import torch

from serkit.nn import (
    AttentionPooling,
    MeanPooling,
    SpecAugment,
    WeightedLayerSum,
    build_pooling,
    lengths_to_padding_mask,
    masked_mean,
)


def test_lengths_to_padding_mask():
    mask = lengths_to_padding_mask(torch.tensor([2, 4, 0]))
    assert mask.dtype == torch.bool and mask.shape == (3, 4)
    assert mask.tolist() == [[False, False, True, True], [False] * 4, [True] * 4]
    assert lengths_to_padding_mask(torch.tensor([1]), max_len=3).tolist() == [[False, True, True]]
    with pytest.raises(ValueError):
        lengths_to_padding_mask(torch.tensor([5]), max_len=3)


def test_mean_pooling_ignores_padding_even_if_it_is_inf():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [float("inf"), float("nan")]]])
    mask = torch.tensor([[False, False, True]])
    assert torch.equal(MeanPooling()(x, mask), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(masked_mean(x[:, :2], None), torch.tensor([[2.0, 3.0]]))


def test_attention_pooling_is_flea_formula():
    torch.manual_seed(0)
    pool = AttentionPooling(6)
    torch.nn.init.normal_(pool.score.weight)
    x = torch.randn(2, 5, 6)
    mask = lengths_to_padding_mask(torch.tensor([5, 3]), 5)
    z = pool(x, mask)
    w = pool.score.weight[0]
    for b, length in enumerate([5, 3]):
        a = torch.softmax(torch.tanh(x[b, :length] @ w), dim=0)
        assert torch.allclose(z[b], (a[:, None] * x[b, :length]).sum(0), atol=1e-6)
    weights = pool.weights(x, mask)
    assert torch.equal(weights[1, 3:], torch.zeros(2))
    assert torch.allclose(weights.sum(1), torch.ones(2))


def test_attention_pooling_all_padded_row_is_finite():
    pool = AttentionPooling(3)
    out = pool(torch.randn(2, 4, 3), lengths_to_padding_mask(torch.tensor([4, 0]), 4))
    assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros(3))


def test_build_pooling():
    assert isinstance(build_pooling("mean", 4), MeanPooling)
    assert isinstance(build_pooling("attention", 4), AttentionPooling)
    with pytest.raises(ValueError, match="unknown pooling"):
        build_pooling("max", 4)


def test_weighted_layer_sum_is_softmax_weighted():
    layer_sum = WeightedLayerSum(3)
    with torch.no_grad():
        layer_sum.logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    x = torch.randn(2, 3, 4, 5)
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    expected = sum(w[i] * x[:, i] for i in range(3))
    assert torch.allclose(layer_sum(x), expected, atol=1e-6)
    assert torch.allclose(layer_sum.layer_weights().sum(), torch.tensor(1.0))
    out = layer_sum(x)
    out.sum().backward()
    assert layer_sum.logits.grad is not None
    with pytest.raises(ValueError):
        layer_sum(torch.randn(2, 4, 4, 5))


def test_spec_augment_masks_valid_frames_only_and_never_in_place():
    torch.manual_seed(0)
    aug = SpecAugment().train()
    lengths = torch.tensor([374, 200, 40, 5])
    mask = lengths_to_padding_mask(lengths, 374)
    x = torch.randn(4, 374, 768) + 10.0  # no natural zeros
    x0 = x.clone()
    y = aug(x, mask)
    assert torch.equal(x, x0)
    assert torch.equal(y[mask], x[mask])  # padding untouched
    zeroed = y == 0
    assert zeroed.any()
    # time masks: whole frames zeroed, only valid ones, about p = 0.08 of them (at least 2 spans)
    frame_zero = zeroed.all(dim=2)
    assert not (frame_zero & mask).any()
    long_fraction = frame_zero[0].float().mean()
    assert 0.02 < long_fraction < 0.2
    assert frame_zero[3].sum() == 5  # a 5-frame sequence: spans are clipped to it
    # channel masks: whole channels zeroed over every valid frame, spans of 64
    channel_zero = zeroed[0].all(dim=0)
    assert channel_zero.sum() >= 64


def test_spec_augment_eval_and_disabled_are_identity():
    x = torch.randn(2, 30, 16)
    assert SpecAugment().eval()(x) is x
    off = SpecAugment(time_mask_prob=0, channel_mask_prob=0).train()
    assert off(x) is x


def test_spec_augment_masks_are_random_per_call():
    aug = SpecAugment(channel_mask_prob=0.0).train()
    x = torch.randn(1, 100, 8) + 5.0
    outs = {tuple((aug(x) == 0).all(dim=2)[0].nonzero().flatten().tolist()) for _ in range(5)}
    assert len(outs) > 1


def test_specaugment_refuses_a_channel_mask_that_blanks_every_channel():
    import pytest
    import torch

    from serkit.nn import SpecAugment

    aug = SpecAugment(channel_mask_width=64).train()
    with pytest.raises(ValueError, match="covers all 64 channels"):
        aug(torch.randn(2, 30, 64))
    assert aug(torch.randn(2, 30, 768)).shape == (2, 30, 768)
