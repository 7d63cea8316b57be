"""The ShiftSER config (shiftser.yaml, one for the eight heads: --method HEAD): every ablation is one
top-level key (so `--head-overrides "--key value"` reaches it), a mis-spelled key or an option of another
head fails, each head is built with the registry's defaults, and the optimisers and schedules are the
paper's / official code's."""

import functools

import pytest
import torch
import yaml

pytest.importorskip("speechbrain")

from tests.fixtures.sb import SHARED_CONF, head_conf  # noqa: E402

HEADS = ["linear", "ffn", "cnn", "shiftcnn", "transformer", "shiftformer", "lstm", "shiftlstm"]
C = 24


def build(name, *args, tmp_path):
    """Load shiftser.yaml --method <name> as `serkit train` does: SpeechBrain's command-line parsing, then
    HyperPyYAML."""
    import speechbrain as sb
    from hyperpyyaml import load_hyperpyyaml

    path = SHARED_CONF / "shiftser.yaml"
    _, _, overrides = sb.parse_arguments([str(path), "--method", name, *args])
    overrides = yaml.safe_load(overrides) if overrides else {}
    overrides.update(output_folder=str(tmp_path / "out"), num_classes=4, input_dim=C, num_layers=3)
    with open(path, encoding="utf-8") as f:
        return load_hyperpyyaml(f, overrides)


def head(hp):
    return hp["head"].head


# (yaml, override, what it must change in the built modules)
OPTIONS = [
    ("shiftcnn", ["--shift_proportion", "0.25"], lambda hp: head(hp).blocks[1].shift.proportion == 0.25),
    ("shiftcnn", ["--shift_bidirectional", "True"], lambda hp: head(hp).blocks[1].shift.bidirectional),
    ("shiftcnn", ["--shift_placement", "inplace"], lambda hp: head(hp).blocks[1].placement == "inplace"),
    ("shiftcnn", ["--kernel_size", "3"], lambda hp: head(hp).blocks[0].depthwise.kernel_size == (3,)),
    ("cnn", ["--kernel_size", "11"], lambda hp: head(hp).blocks[1].depthwise.kernel_size == (11,)),
    ("shiftcnn", ["--mask_aware", "False"], lambda hp: not head(hp).blocks[1].shift.mask_aware),
    (
        "shiftcnn",
        ["--shift_augment_p", "0.5"],
        lambda hp: (
            type(head(hp).blocks[1].shift).__name__ == "RandomShift" and head(hp).blocks[1].shift.p == 0.5
        ),
    ),
    ("transformer", ["--positions", "absolute"], lambda hp: head(hp).position_embeddings is not None),
    (
        "transformer",
        ["--token_mixer", "pooling"],
        lambda hp: type(head(hp).layers[0].attention).__name__ == "PoolingMixer",
    ),
    (
        "transformer",
        ["--shift_placement", "residual"],
        lambda hp: all(
            getattr(layer, "placement", None) == "residual" and layer.shift.proportion == 0.25
            for layer in head(hp).layers
        ),
    ),
    (
        "transformer",
        ["--shift_placement", "inplace", "--shift_augment_p", "0.5"],
        lambda hp: type(getattr(head(hp).layers[0], "shift", None)).__name__ == "RandomShift",
    ),
    ("shiftformer", ["--shift_proportion", "0.125"], lambda hp: head(hp).layers[0].shift.proportion == 0.125),
    (
        "shiftformer",
        ["--shift_bidirectional", "False"],
        lambda hp: not head(hp).layers[1].shift.bidirectional,
    ),
    ("shiftlstm", ["--shift_proportion", "0.5"], lambda hp: head(hp).shift.proportion == 0.5),
    ("shiftlstm", ["--shift_placement", "residual"], lambda hp: head(hp).shortcut is not None),
    ("shiftlstm", ["--shift_augment_p", "1.0"], lambda hp: type(head(hp).shift).__name__ == "RandomShift"),
    ("lstm", ["--pooling", "attention"], lambda hp: type(head(hp).pool).__name__ == "AttentionPooling"),
    ("linear", ["--time_mask_fill", "zero"], lambda hp: hp["augment"].inner.masked_embed is None),
    ("ffn", ["--warmup_start_lr", "0.001"], lambda hp: hp["lr_schedule"](0.0) == 0.001),
]


@pytest.mark.parametrize("name,args,check", OPTIONS, ids=[f"{n}{''.join(a[::2])}" for n, a, _ in OPTIONS])
def test_each_option_changes_the_built_module(name, args, check, tmp_path):
    assert not check(build(name, tmp_path=tmp_path)), "the default already has the option's effect"
    assert check(build(name, *args, tmp_path=tmp_path))


def test_defaults_are_the_papers_heads(tmp_path):
    cnn = head(build("shiftcnn", tmp_path=tmp_path))
    assert cnn.blocks[0].shift is None and cnn.blocks[1].placement == "residual"
    assert (cnn.blocks[1].shift.proportion, cnn.blocks[1].shift.bidirectional) == (1 / 16, False)
    former = head(build("shiftformer", tmp_path=tmp_path))
    assert (former.layers[0].shift.proportion, former.layers[0].shift.bidirectional) == (0.25, True)
    lstm = head(build("shiftlstm", tmp_path=tmp_path))
    assert (lstm.shift.proportion, lstm.shift.bidirectional, lstm.shortcut) == (0.25, False, None)
    tr = head(build("transformer", tmp_path=tmp_path))
    assert type(tr.layers[0]).__name__ == "TransformerLayer" and tr.position_embeddings is None


@pytest.mark.parametrize("name", ["shiftcnn", "transformer", "shiftlstm"])
def test_a_misspelled_override_fails(name, tmp_path):
    with pytest.raises(KeyError, match="shift_proporton"):
        build(name, "--shift_proporton", "0.25", tmp_path=tmp_path)


def test_a_misspelled_override_fails_serkit_train_before_writing_anything(tmp_path):
    from serkit.speechbrain.train import main
    from serkit.utils import SerkitError

    out = tmp_path / "out"
    with pytest.raises(SerkitError, match=r"shiftser.yaml: no key \['shift_proporton'\]"):
        main(
            [
                *head_conf("shiftcnn"),
                "--fold-dir",
                str(tmp_path),
                "--output-folder",
                str(out),
                "--feats",
                str(tmp_path / "feats"),
                "--shift_proporton",
                "0.25",
            ]
        )
    assert not out.exists()


def raw():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((SHARED_CONF / "shiftser.yaml").read_text(encoding="utf-8"), Loader=Loader)


HEAD_OPTIONS = [
    "kernel_size",
    "shift_proportion",
    "shift_bidirectional",
    "shift_placement",
    "mask_aware",
    "shift_augment_p",
    "positions",
    "token_mixer",
]


@pytest.mark.parametrize("name", HEADS)
def test_each_head_is_built_with_the_registry_defaults(name, tmp_path):
    """The yaml repeats no head default: its head options are null, and the built head is the one
    build_head(name) makes, weight for weight under the same seed."""
    from serkit.nn import build_head

    assert {k: raw()[k] for k in HEAD_OPTIONS} == dict.fromkeys(HEAD_OPTIONS)
    built = head(build(name, tmp_path=tmp_path))
    torch.manual_seed(1986)
    reference = build_head(name, C, 4)
    assert repr(built) == repr(reference)
    assert [(k, v.shape) for k, v in built.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]


def test_an_option_of_another_head_or_no_head_fails_serkit_train(tmp_path):
    from serkit.speechbrain.train import main
    from serkit.utils import SerkitError

    setup = ["--fold-dir", str(tmp_path), "--output-folder", str(tmp_path / "out"), "--feats", str(tmp_path)]
    with pytest.raises(SerkitError, match=r"shiftser.yaml: give --method"):
        main([str(SHARED_CONF / "shiftser.yaml"), *setup])
    assert not (tmp_path / "out").exists()
    with pytest.raises(TypeError, match="unexpected keyword argument 'kernel_size'"):
        build("linear", "--kernel_size", "3", tmp_path=tmp_path)
    with pytest.raises(TypeError, match="unexpected keyword argument 'positions'"):
        build("shiftformer", "--positions", "absolute", tmp_path=tmp_path)


def test_finetune_optimizer_paper_is_adam_and_featex_is_ours(tmp_path):
    from serkit.speechbrain.brain import WarmupCosine, WarmupHoldLinear
    from serkit.speechbrain.train import _select_optimizer
    from serkit.utils import SerkitError

    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    hp = build("shiftcnn", tmp_path=tmp_path)
    opt = _select_optimizer(hp, "finetune", "conf")(params)
    assert type(opt) is torch.optim.Adam and opt.defaults["lr"] == 5e-4 and opt.defaults["weight_decay"] == 0
    assert isinstance(hp["lr_schedule"], WarmupHoldLinear)
    hp = build("shiftcnn", tmp_path=tmp_path)
    opt = _select_optimizer(hp, "featex", "conf")(params)  # feature extraction always takes opt_class
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 0.05
    assert isinstance(hp["lr_schedule"], WarmupCosine)
    hp = build("shiftcnn", "--finetune_optimizer", "featex", tmp_path=tmp_path)
    assert type(_select_optimizer(hp, "finetune", "conf")(params)) is torch.optim.AdamW
    assert isinstance(hp["lr_schedule"], WarmupCosine)
    hp = build("shiftcnn", "--finetune_optimizer", "sgd", tmp_path=tmp_path)
    with pytest.raises(SerkitError, match="finetune_optimizer 'sgd'"):
        _select_optimizer(hp, "featex", "conf")


def test_schedules_match_the_official_code():
    from serkit.speechbrain.brain import WarmupCosine, WarmupHoldLinear

    steps, epochs, warmup = 10, 100, 5
    cosine = WarmupCosine(
        5e-4, warmup, epochs, final_lr=5e-6, warmup_start_lr=5e-7, cosine_after_warmup=False
    )
    # timm CosineLRScheduler(t_initial=1000, lr_min=5e-6, warmup_lr_init=5e-7, warmup_t=50), per iteration
    import math

    for t in (0, 1, 25, 49, 50, 51, 500, 999, 1000):
        if t < warmup * steps:
            timm = 5e-7 + t * (5e-4 - 5e-7) / (warmup * steps)
        else:
            timm = 5e-6 + 0.5 * (5e-4 - 5e-6) * (1 + math.cos(math.pi * t / (epochs * steps)))
        assert cosine(t / steps) == pytest.approx(timm, rel=1e-12, abs=1e-15), t
    # FT-w2v2-ser's lambda (the official finetuning schedule as written): warm-up, hold as long, linear to 0
    lam = WarmupHoldLinear(5e-4, warmup, warmup, epochs)
    for t in (0, 20, 50, 70, 100, 101, 550, 1000):
        w = warmup * steps
        total = epochs * steps
        factor = t / w if t < w else 1.0 if t < 2 * w else max(0.0, (total - t) / (total - 2 * w))
        assert lam(t / steps) == pytest.approx(5e-4 * factor, rel=1e-12, abs=1e-15), t


def test_parameter_groups_exclude_biases_and_vectors_from_weight_decay(tmp_path):
    from serkit.speechbrain.brain import parameter_groups

    hp = build("shiftcnn", tmp_path=tmp_path)
    modules = torch.nn.ModuleDict(hp["modules"])
    decay, no_decay = parameter_groups(modules, vector_weight_decay=False)
    names = {id(p): n for n, p in modules.named_parameters()}
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    vectors = {n for n, p in modules.named_parameters() if p.dim() == 1}
    assert {names[id(p)] for p in no_decay["params"]} == vectors
    assert "augment.inner.masked_embed" in {names[id(p)] for p in no_decay["params"]}
    assert "layer_sum.inner.logits" in {names[id(p)] for p in no_decay["params"]}
    assert all(p.dim() > 1 for p in decay["params"])
    assert len(parameter_groups(modules)) == len(list(modules.parameters()))  # True: one plain list


def test_gradient_clipping_covers_every_parameter_group():
    # SpeechBrain clips param_groups[0] only; with the no-decay group first or second, the other group
    # would escape the clip. SERBrain clips the global norm over both (the official code's clip_grad_norm_).
    from serkit.speechbrain.brain import SERBrain

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    before = [p.detach().clone() for p in net.parameters()]
    brain = SERBrain(
        modules={"head": net},
        opt_class=functools.partial(torch.optim.SGD, lr=1.0),
        hparams={"vector_weight_decay": False},
        run_opts={"device": "cpu", "max_grad_norm": 1.0},
    )
    brain.init_optimizers()
    assert len(brain.optimizer.param_groups) == 2
    for p in net.parameters():
        p.grad = torch.full_like(p, 10.0)
    brain.optimizers_step()
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, net.parameters())])
    assert step.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert (step > 0).all()  # every parameter moved, by the same clipped amount


def test_featex_layers_picks_cached_layers():
    from serkit.speechbrain.train import _featex_layers
    from serkit.utils import SerkitError

    cached = [0, 4, 8, 12]
    assert _featex_layers("all", cached, "feats") is None
    assert _featex_layers("last", cached, "feats") == [3]  # the official code's input: the last layer
    assert _featex_layers(8, cached, "feats") == [2]
    assert _featex_layers("4,12", cached, "feats") == [1, 3] == _featex_layers([4, 12], cached, "feats")
    with pytest.raises(SerkitError, match=r"layers \[5\] are not among the cached layers"):
        _featex_layers("5", cached, "feats")
