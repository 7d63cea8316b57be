"""BAS supernet: Gumbel-softmax mixture, arch/weight split, derivation, and the derived network."""

import pytest
import torch

from serkit.nn import BlockSearchSupernet, build_head, gumbel_temperature, lengths_to_padding_mask

C, K = 20, 4


def supernet(**kw):
    torch.manual_seed(0)
    defaults = {"num_layers": 3, "model_dim": 16, "num_heads": 2}
    return BlockSearchSupernet(C, K, **{**defaults, **kw})


def batch():
    torch.manual_seed(1)
    x = torch.randn(3, 7, C)
    mask = lengths_to_padding_mask(torch.tensor([7, 4, 2]), 7)
    return x, mask


def test_arch_and_weight_parameters_are_disjoint_and_complete():
    net = supernet()
    arch = net.arch_parameters()
    weights = net.weight_parameters()
    assert len(arch) == 3 and all(p.shape == (3,) for p in arch)
    arch_ids, weight_ids = {id(p) for p in arch}, {id(p) for p in weights}
    assert not arch_ids & weight_ids
    assert arch_ids | weight_ids == {id(p) for p in net.parameters()}


def test_gradient_reaches_arch_parameters_only_through_the_mixture():
    net = supernet().train()
    x, mask = batch()
    loss = torch.nn.functional.cross_entropy(net(x, mask), torch.tensor([0, 1, 2]))
    loss.backward()
    for p in net.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.weight_parameters())


def test_two_optimisers_update_their_own_parameters():
    net = supernet().train()
    x, mask = batch()
    arch_opt = torch.optim.Adam(net.arch_parameters(), lr=0.1)
    theta0 = [p.detach().clone() for p in net.arch_parameters()]
    w0 = net.classifier.weight.detach().clone()
    arch_opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x, mask), torch.tensor([0, 1, 2])).backward()
    arch_opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(theta0, net.arch_parameters()))
    assert torch.equal(w0, net.classifier.weight)  # the weights' optimiser has not stepped


def test_probabilities_sum_to_one_and_follow_the_logits():
    net = supernet()
    probs = net.probabilities()
    assert probs.shape == (3, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))
    assert torch.allclose(probs, torch.full((3, 3), 1 / 3))
    with torch.no_grad():
        net.arch_logits[1][2] = 4.0
    assert net.probabilities()[1].argmax() == 2


def test_derive_is_deterministic_argmax():
    net = supernet(num_layers=4)
    with torch.no_grad():
        for layer, best in enumerate([2, 1, 0, 1]):  # choices: msa_ffn, msa, ffn
            net.arch_logits[layer][best] = 1.0
    assert net.derive() == "ffn,msa,msa_ffn,msa"
    assert net.derive() == net.derive()
    assert supernet().derive() == "msa_ffn,msa_ffn,msa_ffn"  # ties go to the first choice


def test_eval_mixture_is_noise_free_and_mask_invariant():
    net = supernet().eval()
    x, mask = batch()
    with torch.no_grad():
        first, second = net(x, mask), net(x, mask)
        assert torch.equal(first, second)
        for i, length in enumerate([7, 4, 2]):
            assert torch.allclose(first[i], net(x[i : i + 1, :length])[0], atol=1e-5)


def test_training_mixture_is_gumbel_and_temperature_sharpens_it():
    net = supernet().train()
    torch.manual_seed(0)
    draws = torch.stack([net.mixture_weights(0) for _ in range(50)])
    assert torch.allclose(draws.sum(dim=1), torch.ones(50))
    assert draws.std(dim=0).min() > 0  # noise changes the weights between passes
    net.set_temperature(0.05)
    sharp = torch.stack([net.mixture_weights(0) for _ in range(50)])
    assert sharp.max(dim=1).values.mean() > 0.95  # nearly one-hot at low temperature
    with pytest.raises(ValueError):
        net.set_temperature(0.0)


def test_training_mixture_is_torchs_gumbel_softmax_with_the_supernets_temperature():
    net = supernet().train()
    net.set_temperature(0.7)
    logits = net.arch_logits[1].detach()
    torch.manual_seed(3)
    ours = net.mixture_weights(1)
    torch.manual_seed(3)
    gumbel = -torch.empty_like(logits).exponential_().log()  # torch's draw: Gumbel(0, 1) noise
    assert torch.allclose(ours, torch.softmax((logits + gumbel) / 0.7, dim=0), atol=1e-6)
    torch.manual_seed(3)
    assert torch.equal(ours, torch.nn.functional.gumbel_softmax(logits, tau=0.7, dim=0))


def test_temperature_schedule():
    assert gumbel_temperature(0) == 5.0
    assert gumbel_temperature(2) == pytest.approx(5.0 * 0.956**2)
    assert gumbel_temperature(1000, minimum=0.1) == 0.1
    values = [gumbel_temperature(e) for e in range(100)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_derived_arch_builds_and_trains_a_step():
    net = supernet(num_layers=4)
    with torch.no_grad():
        for layer, best in enumerate([2, 1, 0, 1]):
            net.arch_logits[layer][best] = 1.0
    derived = build_head("bas", C, K, arch=net.derive(), model_dim=16, num_heads=2)
    assert derived.arch == "ffn,msa,msa_ffn,msa"
    kinds = [type(layer).__name__ for layer in derived.layers]
    assert kinds == ["FFNBlock", "MSABlock", "TransformerBlock", "MSABlock"]
    assert not hasattr(derived, "arch_logits")
    x, mask = batch()
    target = torch.tensor([0, 1, 2])
    opt = torch.optim.SGD(derived.parameters(), lr=0.005, momentum=0.9)
    before = torch.nn.functional.cross_entropy(derived(x, mask), target)
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(derived(x, mask), target)
        loss.backward()
        opt.step()
    after = torch.nn.functional.cross_entropy(derived(x, mask), target)
    assert after < before


def test_bad_arch_names_are_rejected():
    with pytest.raises(ValueError, match="unknown block"):
        build_head("bas", C, K, arch="ffn,conv")
    with pytest.raises(ValueError):
        BlockSearchSupernet(C, K, choices=("msa", "skip"))
