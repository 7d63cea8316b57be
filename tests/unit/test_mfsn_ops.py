"""The eight fusion candidates are eight different functions: no two are the same up to a permutation
of their parameters.

A permutation of op j's parameters can reproduce op i only if (1) both have the same number of scalar
parameters and (2) op j, with parameters no larger in magnitude than op i's (a permutation keeps the
values), fits op i's outputs exactly. (1) rules out every pair but the three reversal pairs; for those,
op j is fitted to a random instance of op i by full-batch Adam (fixed seeds, two restarts, parameters
clamped to op i's largest magnitude) and must stay far from it, while the same fit recovers op i from
a fresh instance of op i's own kind (the control that shows the optimiser finds an exact match when one
exists). Inputs have equal widths (dim_a = dim_b), so that a reversal changes no parameter shape.
"""

import itertools

import pytest
import torch

from serkit.nn.mfsn import FUSION_OPS, build_fusion_op

DIM = 4
STEPS = 300


def _instance(name, seed):
    torch.manual_seed(seed)
    op = build_fusion_op(name, DIM, DIM, DIM, num_heads=2)
    with torch.no_grad():  # generic values (LayerNorm starts at gamma = 1, beta = 0)
        for p in op.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return op


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 6, DIM, generator=g), torch.randn(16, 6, DIM, generator=g)


def _num_scalars(op):
    return sum(p.numel() for p in op.parameters())


def _relative_residual(target_name, fitted_name):
    """min over restarts of MSE(op_j, op_i) / Var(op_i) after fitting op_j to op_i's outputs."""
    a, b = _inputs()
    target = _instance(target_name, 1)
    with torch.no_grad():
        y = target(a, b, None)
        bound = max(float(p.abs().max()) for p in target.parameters())
    best = float("inf")
    for restart in range(2):
        op = _instance(fitted_name, 100 + restart)
        opt = torch.optim.Adam(op.parameters(), lr=0.03)
        for _ in range(STEPS):
            opt.zero_grad()
            ((op(a, b, None) - y) ** 2).mean().backward()
            opt.step()
            with torch.no_grad():
                for p in op.parameters():
                    p.clamp_(-bound, bound)
        with torch.no_grad():
            best = min(best, float(((op(a, b, None) - y) ** 2).mean() / y.var()))
    return best


def test_only_the_reversal_pairs_have_equally_many_parameters():
    counts = {n: _num_scalars(_instance(n, 0)) for n in FUSION_OPS}
    same = {tuple(sorted(p)) for p in itertools.combinations(FUSION_OPS, 2) if counts[p[0]] == counts[p[1]]}
    assert same == {("attention", "attention_rev"), ("concat_fc", "concat_fc_rev"), ("ism", "ism_rev")}


@pytest.mark.parametrize("base", ["attention", "concat_fc", "ism"])
def test_a_reversed_operation_cannot_be_fitted_to_its_forward_operation(base):
    for target, fitted in ((base, f"{base}_rev"), (f"{base}_rev", base)):
        control = _relative_residual(target, target)
        cross = _relative_residual(target, fitted)
        assert control < 0.02, f"the fit does not recover {target} from its own kind ({control:.2e})"
        assert cross > 10 * control and cross > 5e-3, (
            f"{fitted} fits {target} (residual {cross:.2e}, own kind {control:.2e}): the same function family"
        )
