"""Temporal shift: which channels move where, zeros, padding behaviour, placements, gradients."""

import pytest
import torch
from torch import nn

from serkit.nn import RandomShift, ShiftedBlock, TemporalShift, lengths_to_padding_mask


def ramp(batch=1, frames=5, channels=8):
    """x[b, t, c] = 1000 b + 100 (t + 1) + c: every value names its frame and channel (none is zero)."""
    b = torch.arange(batch).view(-1, 1, 1) * 1000.0
    t = (torch.arange(frames).view(1, -1, 1) + 1) * 100.0
    c = torch.arange(channels).view(1, 1, -1).float()
    return (b + t + c).clone()


def official_shift(x, fold, bidirectional):
    """ShiftSER's zero-fill-and-slice shift over the whole (padded) tensor, written from its description."""
    out = torch.zeros_like(x)
    if bidirectional:
        out[:, 1:, :fold] = x[:, :-1, :fold]
        out[:, :-1, fold : 2 * fold] = x[:, 1:, fold : 2 * fold]
        out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    else:
        out[:, 1:, :fold] = x[:, :-1, :fold]
        out[:, :, fold:] = x[:, :, fold:]
    return out


def test_unidirectional_moves_first_channels_from_past():
    x = ramp(frames=4, channels=8)
    y = TemporalShift(proportion=1 / 4)(x)  # fold = 2
    # channels 0-1: frame t holds frame t-1's values; frame 0 is vacated -> zero
    assert torch.equal(y[0, 0, :2], torch.zeros(2))
    assert torch.equal(y[0, 1:, :2], x[0, :-1, :2])
    # the other channels are untouched
    assert torch.equal(y[0, :, 2:], x[0, :, 2:])


def test_bidirectional_moves_next_channels_from_future():
    x = ramp(frames=4, channels=8)
    y = TemporalShift(proportion=1 / 4, bidirectional=True)(x)
    assert torch.equal(y[0, 1:, :2], x[0, :-1, :2])
    assert torch.equal(y[0, 0, :2], torch.zeros(2))
    assert torch.equal(y[0, :-1, 2:4], x[0, 1:, 2:4])  # future into present
    assert torch.equal(y[0, -1, 2:4], torch.zeros(2))  # last frame vacated
    assert torch.equal(y[0, :, 4:], x[0, :, 4:])
    # exact hand-computed values for frame 1
    assert y[0, 1].tolist() == [100, 101, 302, 303, 204, 205, 206, 207]


def test_fold_is_int_of_channels_times_proportion():
    shift = TemporalShift(proportion=1 / 16)
    assert shift.fold(768) == 48
    assert shift.fold(20) == 1
    x = ramp(frames=3, channels=20)
    y = shift(x)
    assert torch.equal(y[0, 1:, :1], x[0, :-1, :1]) and torch.equal(y[0, :, 1:], x[0, :, 1:])


def test_matches_official_without_padding():
    x = torch.randn(3, 9, 16)
    for bidirectional in (False, True):
        ours = TemporalShift(1 / 4, bidirectional)(x)
        assert torch.equal(ours, official_shift(x, 4, bidirectional))


def test_mask_aware_stops_values_at_padding_boundaries():
    # sequence 0 has 3 valid frames out of 5; padded frames hold large values that must not leak
    x = ramp(batch=2, frames=5, channels=8)
    mask = lengths_to_padding_mask(torch.tensor([3, 5]), 5)
    y = TemporalShift(1 / 4, bidirectional=True, mask_aware=True)(x, mask)
    # the last valid frame (t=2) behaves like a sequence end: nothing comes from padded frame 3
    assert torch.equal(y[0, 2, 2:4], torch.zeros(2))
    # the first padded frame does not receive frame 2's values, and padded outputs are zero
    assert torch.equal(y[0, 3:], torch.zeros(2, 8))
    # valid frames are what the unpadded sequence alone gives
    alone = TemporalShift(1 / 4, bidirectional=True)(x[:1, :3])
    assert torch.equal(y[0, :3], alone[0])
    # the full-length sequence is unaffected by the mask
    assert torch.equal(y[1], TemporalShift(1 / 4, bidirectional=True)(x[1:])[0])


def test_official_behaviour_lets_values_cross_padding():
    x = ramp(batch=1, frames=5, channels=8)
    mask = lengths_to_padding_mask(torch.tensor([3]), 5)
    y = TemporalShift(1 / 4, bidirectional=True, mask_aware=False)(x, mask)
    assert torch.equal(y, official_shift(x, 2, True))
    assert torch.equal(y[0, 2, 2:4], x[0, 3, 2:4])  # padding flows into the last valid frame
    assert torch.equal(y[0, 3, :2], x[0, 2, :2])  # and valid values flow into padding


def test_mask_with_holes_and_left_padding():
    x = ramp(batch=1, frames=5, channels=4)
    mask = torch.tensor([[True, False, False, True, False]])
    y = TemporalShift(1 / 4, bidirectional=True)(x, mask)
    assert torch.equal(y[0, 1, 0], torch.tensor(0.0))  # frame 0 is padding: frame 1 gets nothing from it
    assert torch.equal(y[0, 2, 0], x[0, 1, 0])
    assert torch.equal(y[0, 2, 1], torch.tensor(0.0))  # frame 3 is padding
    assert torch.equal(y[0, 4, 0], torch.tensor(0.0))
    assert torch.equal(y[0, 0], torch.zeros(4)) and torch.equal(y[0, 3], torch.zeros(4))


def test_no_parameters_no_mutation_and_new_tensor():
    shift = TemporalShift(1 / 4, bidirectional=True)
    assert sum(p.numel() for p in shift.parameters()) == 0
    assert len(list(shift.buffers())) == 0
    x = torch.randn(2, 6, 8)
    mask = lengths_to_padding_mask(torch.tensor([4, 6]), 6)
    x0, m0 = x.clone(), mask.clone()
    y = shift(x, mask)
    assert torch.equal(x, x0) and torch.equal(mask, m0)
    assert y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_gradient_is_the_adjoint_shift(bidirectional, masked):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8, dtype=torch.double, requires_grad=True)
    mask = lengths_to_padding_mask(torch.tensor([4, 6]), 6) if masked else None
    shift = TemporalShift(1 / 4, bidirectional)
    assert torch.autograd.gradcheck(lambda t: shift(t, mask), (x,))
    assert torch.autograd.gradgradcheck(lambda t: shift(t, mask), (x,))


def test_short_sequences_and_zero_fold():
    x = torch.randn(2, 1, 8)
    y = TemporalShift(1 / 4, bidirectional=True)(x)
    assert torch.equal(y[:, :, :4], torch.zeros(2, 1, 4)) and torch.equal(y[:, :, 4:], x[:, :, 4:])
    x = torch.randn(2, 3, 8)
    assert torch.equal(TemporalShift(1 / 16)(x), x)  # int(8 / 16) = 0 channels move
    with pytest.raises(ValueError):
        TemporalShift(0.6, bidirectional=True)


def test_placements():
    torch.manual_seed(0)
    linear = nn.Linear(8, 8)
    shift = TemporalShift(1 / 4)
    x = torch.randn(2, 5, 8)
    inplace = ShiftedBlock(linear, shift, "inplace")
    residual = ShiftedBlock(linear, shift, "residual")
    assert torch.allclose(inplace(x), linear(shift(x)))
    assert torch.allclose(residual(x), linear(x) + shift(x))
    with pytest.raises(ValueError):
        ShiftedBlock(linear, shift, "sideways")


def test_shifted_block_passes_the_mask_to_blocks_that_take_it():
    seen = {}

    class Probe(nn.Module):
        def forward(self, x, padding_mask=None):
            seen["mask"] = padding_mask
            return x

    mask = lengths_to_padding_mask(torch.tensor([2, 3]), 3)
    ShiftedBlock(Probe(), TemporalShift(1 / 4))(torch.randn(2, 3, 4), mask)
    assert seen["mask"] is mask


def test_random_shift_is_training_only():
    x = torch.randn(2, 5, 8)
    aug = RandomShift(p=1.0, proportion=1 / 4)
    assert torch.equal(aug.train()(x), TemporalShift(1 / 4)(x))
    assert torch.equal(aug.eval()(x), x)
    never = RandomShift(p=0.0, proportion=1 / 4).train()
    assert torch.equal(never(x), x)
    torch.manual_seed(0)
    half = RandomShift(p=0.5, proportion=1 / 4).train()
    shifted = sum(not torch.equal(half(x), x) for _ in range(200))
    assert 60 < shifted < 140
