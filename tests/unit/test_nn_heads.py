"""Heads built by name: shapes, mask invariance, no input mutation, gradients, parameter counts."""

import pytest
import torch

from serkit.nn import HEADS, build_head, count_parameters, lengths_to_padding_mask

C, K = 24, 4  # small width keeps the suite fast; 24 is divisible by 12 heads
LENGTHS = [9, 5, 2]
ALL_HEADS = ["linear", "ffn", "cnn", "shiftcnn", "transformer", "shiftformer", "lstm", "shiftlstm", "bas"]
SMALL_KW = {
    "transformer": {"max_len": 16},
    "bas": {"arch": "ffn,msa,msa_ffn,msa", "model_dim": 16, "num_heads": 2},
    "ffn": {"hidden": 16},
}


def make(name, pooling="mean", **kw):
    torch.manual_seed(0)
    return build_head(name, C, K, pooling=pooling, **{**SMALL_KW.get(name, {}), **kw})


def padded_batch(seed=0):
    torch.manual_seed(seed)
    frames = max(LENGTHS)
    x = torch.randn(len(LENGTHS), frames, C)
    mask = lengths_to_padding_mask(torch.tensor(LENGTHS), frames)
    # Garbage in the padding: a leak would change valid outputs.
    x = x.masked_fill(mask.unsqueeze(-1), 1e3)
    return x, mask


def test_registry_has_every_head():
    assert set(ALL_HEADS) <= set(HEADS)
    with pytest.raises(ValueError, match="unknown head"):
        build_head("nope", C, K)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("name", ALL_HEADS)
def test_shape_and_mask_invariance_eval(name, pooling):
    head = make(name, pooling).eval()
    if pooling == "attention":  # non-zero scoring vector so the attention weights are not uniform
        torch.nn.init.normal_(head.pool.score.weight)
    x, mask = padded_batch()
    with torch.no_grad():
        batched = head(x, mask)
        assert batched.shape == (len(LENGTHS), K)
        assert torch.isfinite(batched).all()
        for i, length in enumerate(LENGTHS):
            alone = head(x[i : i + 1, :length])  # unpadded, no mask
            assert torch.allclose(batched[i], alone[0], atol=1e-4, rtol=1e-4), (name, i)
            # padded with an explicit all-valid mask gives the same too
            alone_masked = head(x[i : i + 1, :length], torch.zeros(1, length, dtype=torch.bool))
            assert torch.allclose(alone_masked, alone, atol=1e-5)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_mask_invariance_train_mode_without_dropout(name):
    head = make(name, dropout=0.0).train()
    x, mask = padded_batch(1)
    batched = head(x, mask)
    for i, length in enumerate(LENGTHS):
        alone = head(x[i : i + 1, :length])
        assert torch.allclose(batched[i], alone[0], atol=1e-4, rtol=1e-4), (name, i)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_no_input_mutation_and_gradients_flow(name):
    head = make(name).train()
    x, mask = padded_batch(2)
    x.requires_grad_(True)
    x0, m0 = x.detach().clone(), mask.clone()
    logits = head(x, mask)
    assert torch.equal(x.detach(), x0) and torch.equal(mask, m0)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    assert torch.equal(x.detach(), x0)
    # every parameter gets a gradient, and it is finite
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    assert any(p.grad.abs().sum() > 0 for p in head.parameters())
    # the gradient reaches valid input frames only
    assert x.grad[mask].abs().sum() == 0
    assert x.grad[~mask].abs().sum() > 0


def test_kwargs_pass_through():
    head = build_head("shiftcnn", C, K, proportion=1 / 4, bidirectional=True)
    shift = head.blocks[1].shift
    assert shift.proportion == 0.25 and shift.bidirectional
    assert head.blocks[0].shift is None
    assert len(build_head("transformer", C, K, num_layers=3, max_len=8).layers) == 3
    assert build_head("lstm", C, K, hidden=10).lstm.hidden_size == 10
    assert build_head("shiftformer", C, K).layers[0].shift.bidirectional
    assert build_head("shiftlstm", C, K).shift.proportion == 0.25
    assert build_head("lstm", C, K).shift is None
    assert build_head("cnn", C, K).blocks[1].shift is None


def test_mask_aware_false_reproduces_official_leak():
    # With the official behaviour a sequence's logits depend on its padding; with ours they do not.
    x, mask = padded_batch(3)
    official = make("shiftformer", mask_aware=False).eval()
    with torch.no_grad():
        batched = official(x, mask)
        alone = official(x[1:2, : LENGTHS[1]])
    assert not torch.allclose(batched[1], alone[0], atol=1e-3)


# Parameter counts at C = 768, 4 classes: build only (no forward), documented in serkit.nn.heads.
EXPECTED_768 = {
    "cnn": 9_464_836,
    "shiftcnn": 9_464_836,
    "shiftformer": 9_451_012,
    "lstm": 9_458_692,
    "shiftlstm": 9_458_692,
    "transformer": 13_093_252,
}


@pytest.fixture(scope="module")
def counts_768():
    return {name: count_parameters(build_head(name, 768, 4)) for name in EXPECTED_768}


def test_parameter_counts_at_768(counts_768):
    assert counts_768 == EXPECTED_768
    for name in ("shiftcnn", "shiftformer", "shiftlstm"):
        assert abs(counts_768[name] - 9.5e6) / 9.5e6 < 0.01, name  # "about 9.5 M" in ShiftSER


def test_shiftformer_is_27_percent_smaller_than_transformer(counts_768):
    reduction = 1 - counts_768["shiftformer"] / counts_768["transformer"]
    assert 0.27 <= reduction < 0.28


def test_shift_adds_no_parameters(counts_768):
    assert counts_768["shiftcnn"] == counts_768["cnn"]
    assert counts_768["shiftlstm"] == counts_768["lstm"]


def test_transformer_uses_12_heads_and_shared_relative_table():
    head = build_head("transformer", 768, 4)
    attention = head.layers[0].attention
    assert attention.num_heads == 12
    assert attention.distance_embedding.weight.shape == (2 * 374 - 1, 64)


def test_transformer_relative_positions_matter_and_extend_past_max_len():
    head = make("transformer", max_len=4).eval()
    x = torch.randn(1, 10, C)  # longer than the table: distances are clamped
    with torch.no_grad():
        out = head(x)
        # the head is order-sensitive (relative positions), unlike a bag of frames
        flipped = head(x.flip(1))
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, flipped, atol=1e-5)


# ShiftSER's ablations (Table 1 "+Augment", Table 3, Fig. 4) as head options.
VARIANTS = {
    "shiftcnn_inplace_k3": ("shiftcnn", {"placement": "inplace", "kernel_size": 3}),
    "shiftcnn_half_bidir": ("shiftcnn", {"proportion": 0.5, "bidirectional": True}),
    "transformer_ape": ("transformer", {"positions": "absolute"}),
    "transformer_pooling": ("transformer", {"token_mixer": "pooling"}),
    "transformer_residual_shift": ("transformer", {"shift_placement": "residual"}),
    "transformer_inplace_shift": ("transformer", {"shift_placement": "inplace", "bidirectional": True}),
    "shiftlstm_residual": ("shiftlstm", {"placement": "residual"}),
    "shiftformer_eighth": ("shiftformer", {"proportion": 1 / 8}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ablation_variants_keep_mask_invariance(variant):
    name, kw = VARIANTS[variant]
    head = make(name, **kw)
    x, mask = padded_batch(4)
    for mode in ("eval", "train"):
        getattr(head, mode)()
        with torch.no_grad():
            batched = head(x, mask)
            for i, length in enumerate(LENGTHS):
                alone = head(x[i : i + 1, :length])[0]
                assert torch.allclose(batched[i], alone, atol=1e-4, rtol=1e-4), (mode, i)


def test_augment_shift_is_the_shift_in_training_and_the_baseline_in_eval():
    x, mask = padded_batch(5)
    pairs = [
        ("shiftcnn", "cnn", {}),
        ("shiftlstm", "lstm", {}),
        ("transformer", "transformer", {"shift_placement": "inplace"}),
    ]
    for shifted_name, base_name, kw in pairs:
        augmented = make(shifted_name, shift_augment_p=1.0, **kw)
        shifted = make(shifted_name, **kw)
        baseline = make(base_name)
        shifted.load_state_dict(augmented.state_dict())
        baseline.load_state_dict(augmented.state_dict())
        with torch.no_grad():
            assert torch.allclose(augmented.train()(x, mask), shifted.train()(x, mask))
            assert torch.allclose(augmented.eval()(x, mask), baseline.eval()(x, mask))
            assert not torch.allclose(shifted.eval()(x, mask), baseline.eval()(x, mask), atol=1e-4)
    never = make("shiftcnn", shift_augment_p=1e-9).train()
    assert type(never.blocks[1].shift).__name__ == "RandomShift"
    with pytest.raises(ValueError, match="shift_augment_p"):
        make("shiftcnn", shift_augment_p=1.5)


def test_transformer_shift_placements_follow_the_official_alternatives():
    # residual: LN(shift(x) + Attn(x)); in-place: s = shift(x), LN(s + Attn(s)); MLP part unchanged.
    x = torch.randn(2, 7, C)
    plain = make("transformer").eval()
    from serkit.nn import TemporalShift

    shift = TemporalShift(1 / 4)
    for placement in ("residual", "inplace"):
        head = make("transformer", shift_placement=placement).eval()
        head.load_state_dict(plain.state_dict())
        with torch.no_grad():
            h = x
            for layer in plain.layers:
                src = shift(h) if placement == "inplace" else h
                short = shift(h)
                h = layer.norm1(short + layer.attention(src))
                h = layer.norm2(h + layer.mlp(h))
            expected = plain.classifier(h.mean(dim=1))
            assert torch.allclose(head(x), expected, atol=1e-5), placement


def test_absolute_positions_replace_the_relative_table():
    ape = make("transformer", positions="absolute", max_len=16)
    rpe = make("transformer")
    names = {n for n, _ in ape.named_parameters()}
    assert "position_embeddings.weight" in names and not any("distance_embedding" in n for n in names)
    head_dim = C // 12
    assert count_parameters(ape) == count_parameters(rpe) - 2 * (2 * 16 - 1) * head_dim + 16 * C
    # a frame's output depends on where it is: the same frames later in the sequence give other logits
    x = torch.randn(1, 6, C)
    with torch.no_grad():
        ape.eval()
        moved = torch.cat([torch.zeros(1, 3, C), x], dim=1)
        first = ape.layers[0](x + ape.position_embeddings.weight[:6])
        assert not torch.allclose(first, ape.layers[0](moved + ape.position_embeddings.weight[:9])[:, 3:])
        assert ape(torch.randn(2, 40, C)).shape == (2, K)  # longer than the table: the last position reused


def test_pooling_token_mixer_values_by_hand():
    from serkit.nn.heads import PoolingMixer

    x = torch.tensor([[[1.0], [2.0], [4.0], [8.0], [100.0]]])
    mask = torch.tensor([[False, False, False, False, True]])
    out = PoolingMixer(3)(x, mask)[0, :, 0]
    # padding neither counted nor kept
    expected = torch.tensor([1.5 - 1, 7 / 3 - 2, 14 / 3 - 4, 6.0 - 8, 0.0])
    assert torch.allclose(out, expected)
    head = make("transformer", token_mixer="pooling")
    assert not any("attention.qkv" in n or "distance" in n for n, _ in head.named_parameters())


def test_lstm_residual_shift_adds_a_projection_shortcut():
    inplace, residual = make("shiftlstm"), make("shiftlstm", placement="residual")
    assert count_parameters(residual) - count_parameters(inplace) == C * 2 * C + 2 * C
    assert make("lstm", placement="residual").shortcut is None  # no shift, no shortcut
    residual.load_state_dict(inplace.state_dict(), strict=False)
    x = torch.randn(2, 6, C)
    with torch.no_grad():
        assert not torch.allclose(residual.eval()(x), inplace.eval()(x))


def test_shiftcnn_kernel_and_bad_options():
    assert make("shiftcnn", kernel_size=3).blocks[0].depthwise.kernel_size == (3,)
    with pytest.raises(ValueError, match="positions"):
        make("transformer", positions="rotary")
    with pytest.raises(ValueError, match="token_mixer"):
        make("transformer", token_mixer="conv")
    with pytest.raises(ValueError, match="shift_placement"):
        make("transformer", shift_placement="both")
    with pytest.raises(ValueError, match="placement"):
        make("shiftlstm", placement="both")
    with pytest.raises(ValueError, match="shift_blocks"):
        make("shiftcnn", shift_blocks=(2,))
