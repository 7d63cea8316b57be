"""BAS candidate blocks as the paper defines them: the FFN candidate has no residual connection (Sec. 2.2),
the MSA+FFN candidate keeps both (Eq. 3); the architecture optimiser is the paper's SGD (Sec. 2.2, 3.3).

Expected values are worked out by hand from the formulas, with set weights:
fc1 = I, fc2 = -I, zero biases, LayerNorm weight 1 / bias 0, so FFN(x) = -GELU(x) and
GELU(1, 2, 4) = (0.841345, 1.954500, 3.999873).
"""

import pytest
import torch

from serkit.nn.blocks import FFNBlock, TransformerBlock
from serkit.nn.search import BlockSearchSupernet, DerivedBlockNetwork, make_arch_optimizer

X = torch.tensor([[[1.0, 2.0, 4.0]]])  # (B=1, T=1, C=3)
# LN(-GELU(x)): no identity path
WITHOUT_RESIDUAL = [1.08856, 0.23756, -1.32612]
# LN(x - GELU(x)) = LN(0.158655, 0.045500, 0.000127): the identity path dominates
WITH_RESIDUAL = [1.35699, -0.33855, -1.01844]


def set_weights(block: FFNBlock) -> FFNBlock:
    with torch.no_grad():
        block.ffn.fc1.weight.copy_(torch.eye(3))
        block.ffn.fc2.weight.copy_(-torch.eye(3))
        block.ffn.fc1.bias.zero_()
        block.ffn.fc2.bias.zero_()
    return block.eval()


def test_ffn_candidate_is_a_ffn_without_residual_connection():
    out = set_weights(FFNBlock(3, 3))(X)
    assert out.flatten().tolist() == pytest.approx(WITHOUT_RESIDUAL, abs=1e-5)


def test_ffn_candidate_output_does_not_depend_on_the_input_once_its_output_layer_is_constant():
    # No identity path: with fc2's weight zeroed the block is LN(fc2.bias) for every input.
    block = FFNBlock(3, 3)
    with torch.no_grad():
        block.ffn.fc2.weight.zero_()
        block.ffn.fc2.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    out = block.eval()(torch.randn(2, 4, 3) * 10)
    assert torch.allclose(out, torch.tensor([-1.22474, 0.0, 1.22474]).expand(2, 4, 3), atol=1e-5)


def test_residual_ffn_stays_available_as_an_option():
    out = set_weights(FFNBlock(3, 3, residual=True))(X)
    assert out.flatten().tolist() == pytest.approx(WITH_RESIDUAL, abs=1e-5)


def test_transformer_block_keeps_the_residual_around_its_ffn():
    # Eq. 3: layer = FFN(MSA(X) + X) + MSA(X) + X. With the attention's output projection zeroed,
    # MSA(X) = 0, so the block is LN(y + FFN(y)) with y = LN(x).
    block = TransformerBlock(3, 3, num_heads=1).eval()
    with torch.no_grad():
        block.msa.attention.out_proj.weight.zero_()
        block.msa.attention.out_proj.bias.zero_()
    set_weights(block.ffn)
    y = torch.nn.functional.layer_norm(X, (3,))
    expected = torch.nn.functional.layer_norm(y - torch.nn.functional.gelu(y), (3,))
    assert block.ffn.residual is True
    assert torch.allclose(block(X), expected, atol=1e-6)


@pytest.mark.parametrize("residual", [False, True])
def test_supernet_and_derived_network_build_the_ffn_candidate_as_asked(residual):
    kw = {"model_dim": 8, "num_heads": 2}
    supernet = BlockSearchSupernet(8, 3, num_layers=2, ffn_residual=residual, **kw)
    derived = DerivedBlockNetwork(8, 3, arch="ffn,msa_ffn", ffn_residual=residual, **kw)
    ffn_index = supernet.choices.index("ffn")
    assert [layer[ffn_index].residual for layer in supernet.layers] == [residual, residual]
    assert derived.layers[0].residual is residual
    # the transformer candidate's FFN keeps its residual either way
    assert derived.layers[1].ffn.residual is True
    assert supernet.layers[0][supernet.choices.index("msa_ffn")].ffn.residual is True


def test_paper_ffn_candidate_is_the_default():
    assert BlockSearchSupernet(8, 3, num_layers=1, model_dim=8, num_heads=2).layers[0][2].residual is False
    assert DerivedBlockNetwork(8, 3, arch="ffn", model_dim=8, num_heads=2).layers[0].residual is False


def test_arch_optimiser_is_sgd_by_default_and_adam_on_request():
    theta = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_arch_optimizer(theta)
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.005, 0.9, 0.0)
    adam = make_arch_optimizer(theta, "adam", lr=0.01, momentum=0.0, weight_decay=5e-4)
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 5e-4
    with pytest.raises(ValueError, match="momentum"):
        make_arch_optimizer(theta, "adam", lr=0.01, momentum=0.9)
    with pytest.raises(ValueError, match="unknown arch optimiser"):
        make_arch_optimizer(theta, "rmsprop")
