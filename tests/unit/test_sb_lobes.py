"""serkit.speechbrain.lobes: SpeechBrain's (x, relative lengths) convention on top of serkit.nn."""

import pytest
import torch

from serkit.speechbrain.lobes import (
    SERHead,
    SpecAugment,
    WeightedLayerSum,
    padding_mask_to_relative_lengths,
    relative_lengths_to_padding_mask,
    resolve_layers,
)


def test_relative_lengths_round_trip_to_padding_mask():
    mask = relative_lengths_to_padding_mask(torch.tensor([1.0, 0.6, 0.2]), 5)
    assert mask.tolist() == [[False] * 5, [False] * 3 + [True] * 2, [False] + [True] * 4]
    assert torch.allclose(padding_mask_to_relative_lengths(mask), torch.tensor([1.0, 0.6, 0.2]))


@pytest.mark.parametrize("name", ["linear", "ffn", "shiftcnn", "shiftformer", "shiftlstm", "transformer"])
def test_head_gives_the_same_logits_alone_and_padded_in_a_batch(name):
    torch.manual_seed(0)
    kw = {"num_heads": 2} if name == "transformer" else {}
    head = SERHead(name, input_dim=16, num_classes=4, **kw).eval()
    short, long = torch.randn(1, 6, 16), torch.randn(1, 10, 16)
    batch = torch.zeros(2, 10, 16)
    batch[0, :6], batch[1] = short[0], long[0]
    batch[0, 6:] = 100.0  # garbage in the padding must not leak into the valid frames
    with torch.no_grad():
        together = head(batch, torch.tensor([0.6, 1.0]))
        alone = head(short, torch.tensor([1.0]))
    assert torch.allclose(together[0], alone[0], atol=1e-4)
    assert together.shape == (2, 4)


def test_bas_search_head_exposes_architecture_parameters():
    head = SERHead("bas_search", input_dim=8, num_classes=3, num_layers=2, model_dim=8, num_heads=2)
    net = head.head
    assert len(net.arch_parameters()) == 2 and net.probabilities().shape == (2, 3)
    assert head(torch.randn(2, 5, 8), torch.tensor([1.0, 0.4])).shape == (2, 3)


def test_weighted_layer_sum_starts_as_the_mean_of_layers_and_learns():
    lobe = WeightedLayerSum(3)
    x = torch.stack([torch.full((1, 4, 2), float(v)) for v in (1, 2, 6)], dim=1)  # (1, 3, 4, 2)
    assert torch.allclose(lobe(x, torch.ones(1)), torch.full((1, 4, 2), 3.0))
    lobe(x).sum().backward()
    assert lobe.inner.logits.grad is not None and lobe.inner.logits.grad.abs().sum() > 0


def test_specaugment_masks_in_training_only_and_never_touches_padding():
    aug = SpecAugment(time_mask_prob=0.5, time_mask_width=2, channel_mask_prob=0.0)
    x = torch.ones(2, 20, 8)
    lens = torch.tensor([1.0, 0.5])
    assert torch.equal(aug.eval()(x, lens), x)
    y = aug.train()(x, lens)
    assert (y[:, :10] == 0).any()  # something was masked
    assert torch.equal(y[1, 10:], x[1, 10:])  # padding of the short sequence kept as it was
    assert torch.equal(x, torch.ones(2, 20, 8))  # input not modified


def test_resolve_layers():
    assert resolve_layers("all", 2) == [0, 1, 2]
    assert resolve_layers("last", 12) == [12]
    assert resolve_layers([3, "9"], 12) == [3, 9]
