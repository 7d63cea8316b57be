"""SpecAugment on features: zero fill (parameter-free) and the official ShiftSER code's learned time-mask
vector."""

import pytest
import torch

from serkit.nn import SpecAugment


def masks_and_output(aug, x, mask, seed=0):
    torch.manual_seed(seed)
    time, channel = aug.masks(x, mask)
    torch.manual_seed(seed)
    return time, channel, aug.train()(x, mask)


def test_learned_fill_puts_the_vector_in_masked_frames_and_zero_in_masked_channels():
    torch.manual_seed(0)
    aug = SpecAugment(
        time_mask_prob=0.3,
        time_mask_width=2,
        channel_mask_prob=0.2,
        channel_mask_width=3,
        time_mask_fill="learned",
        dim=16,
    )
    x = torch.randn(3, 12, 16)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[1, 8:] = True
    mask[2, 5:] = True
    x = x.masked_fill(mask[:, :, None], 7.0)
    time, channel, y = masks_and_output(aug, x, mask)
    assert time.any() and channel.any()
    embed = aug.masked_embed.detach()
    for b in range(3):
        for t in range(12):
            for c in range(16):
                if mask[b, t]:
                    expected = x[b, t, c]  # padding untouched
                elif channel[b, c]:
                    expected = torch.tensor(0.0)  # channel masks after the time fill, as the official code
                elif time[b, t]:
                    expected = embed[c]
                else:
                    expected = x[b, t, c]
                assert y[b, t, c] == expected, (b, t, c)


def test_learned_vector_is_a_parameter_trained_through_masked_frames_only():
    aug = SpecAugment(
        time_mask_prob=0.5, time_mask_width=2, channel_mask_prob=0.0, time_mask_fill="learned", dim=8
    )
    assert [n for n, _ in aug.named_parameters()] == ["masked_embed"]
    assert ((aug.masked_embed >= 0) & (aug.masked_embed < 1)).all()  # the official uniform [0, 1) init
    x = torch.randn(2, 10, 8, requires_grad=True)
    x0 = x.detach().clone()
    time, _, y = masks_and_output(aug, x, None, seed=3)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    assert torch.equal(x.detach(), x0)  # input not modified
    assert torch.allclose(aug.masked_embed.grad, weights[time].sum(dim=0))
    assert torch.equal(x.grad[time], torch.zeros_like(x.grad[time]))
    assert torch.equal(x.grad[~time], weights[~time])
    assert torch.equal(aug.eval()(x), x)


def test_zero_fill_is_parameter_free_and_unchanged():
    aug = SpecAugment(time_mask_prob=0.3, time_mask_width=2, channel_mask_prob=0.2, channel_mask_width=3)
    assert aug.time_mask_fill == "zero" and not list(aug.parameters())
    x = torch.randn(2, 12, 16)
    time, channel, y = masks_and_output(aug, x, None)
    replace = time[:, :, None] | channel[:, None, :]
    assert torch.equal(y, x.masked_fill(replace, 0.0))


def test_bad_fill_options():
    with pytest.raises(ValueError, match="needs dim"):
        SpecAugment(time_mask_fill="learned")
    with pytest.raises(ValueError, match="time_mask_fill"):
        SpecAugment(time_mask_fill="mean")
    aug = SpecAugment(time_mask_fill="learned", dim=8, channel_mask_prob=0.0).train()
    with pytest.raises(ValueError, match="8 channels, features have 16"):
        aug(torch.randn(1, 40, 16))
