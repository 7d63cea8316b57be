"""BAS search training as the paper describes it, through the recipes' (shared) yaml and SERBrain:
weights and architecture logits trained together (Fig. 2, Sec. 2.3) with SGD (Sec. 2.2) at lr 0.005
(Sec. 3.3): one training batch gives one loss, one backward and one step of both optimisers."""

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("speechbrain")

ROOT = Path(__file__).resolve().parents[2]
SEARCH_YAMLS = [ROOT / "plugins" / "serkit" / "conf" / "bas_search.yaml"]  # shared by MELD and IEMOCAP
C, K = 8, 3


def load(path, tmp_path, **overrides):
    from hyperpyyaml import load_hyperpyyaml

    base = {
        "output_folder": str(tmp_path),
        "num_classes": K,
        "input_dim": C,
        "num_layers": 2,
        "search_layers": 2,
        "model_dim": 8,
    }
    with open(path, encoding="utf-8") as f:
        return load_hyperpyyaml(f, {**base, **overrides})


def brain_of(hparams):
    from serkit.speechbrain.brain import SERBrain

    brain = SERBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": "cpu"},
        checkpointer=None,
    )
    brain.init_optimizers()
    return brain


def batch():
    from speechbrain.dataio.batch import PaddedBatch

    gen = torch.Generator().manual_seed(3)
    return PaddedBatch(
        [
            {"id": f"u{i}", "feats": torch.randn(frames, 2, C, generator=gen), "label": torch.tensor([i % K])}
            for i, frames in enumerate((6, 4, 5, 3))
        ]
    )


@pytest.mark.parametrize("yaml_path", SEARCH_YAMLS, ids=lambda p: p.parent.parent.name)
def test_search_yaml_optimises_the_architecture_with_sgd_at_the_papers_lr(yaml_path, tmp_path):
    hparams = load(yaml_path, tmp_path)
    brain = brain_of(hparams)
    assert type(brain.arch_optimizer) is torch.optim.SGD
    assert brain.arch_optimizer.defaults["lr"] == 0.005 and brain.optimizer.defaults["lr"] == 0.005
    assert hparams["head"].head.layers[0][hparams["head"].head.choices.index("ffn")].residual is False


@pytest.mark.parametrize("yaml_path", SEARCH_YAMLS, ids=lambda p: p.parent.parent.name)
def test_one_batch_is_one_joint_sgd_step_of_weights_and_architecture_logits(yaml_path, tmp_path):
    import torch.nn.functional as F

    hparams = load(yaml_path, tmp_path)
    brain = brain_of(hparams)
    reference = copy.deepcopy(brain.modules)
    net = hparams["head"].head
    arch_ids = {id(p) for p in net.arch_parameters()}

    b = batch()
    torch.manual_seed(7)  # the Gumbel noise of the step
    brain.fit_batch(b)

    # The same step by hand: the loss of this batch, its gradient for every parameter, each optimiser's
    # parameters clipped to norm 5 (max_grad_norm) and moved by SGD's first step, p - 0.005 * grad.
    torch.manual_seed(7)
    feats, lens = b.feats
    logits = reference["head"](reference["layer_sum"](feats.transpose(1, 2), lens), lens)
    F.cross_entropy(logits, b.label.data.view(-1)).backward()
    ref_net = reference["head"].head
    ref_arch = list(ref_net.arch_parameters())
    ref_weights = [p for p in reference.parameters() if all(p is not a for a in ref_arch)]
    for group in (ref_weights, ref_arch):
        torch.nn.utils.clip_grad_norm_(group, 5.0)
    expected = [(p - 0.005 * p.grad).detach() for p in reference.parameters()]

    moved = {"arch": False, "weights": False}
    for (name, p), before, after in zip(brain.modules.named_parameters(), reference.parameters(), expected):
        assert torch.allclose(p.detach(), after, atol=1e-7), name
        kind = "arch" if id(p) in arch_ids else "weights"
        moved[kind] |= not torch.equal(p.detach(), before.detach())
    assert moved == {"arch": True, "weights": True}


def test_fbnet_arch_optimiser_is_one_override_set_away(tmp_path):
    hparams = load(
        SEARCH_YAMLS[0],
        tmp_path,
        arch_optimizer="adam",
        arch_lr=0.01,
        arch_momentum=0,
        arch_weight_decay=0.0005,
    )
    opt = brain_of(hparams).arch_optimizer
    assert type(opt) is torch.optim.Adam
    assert (opt.defaults["lr"], opt.defaults["weight_decay"]) == (0.01, 0.0005)
