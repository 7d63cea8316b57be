"""MFSN modules: fusion operations, the mixed operation's search step, the Choice Cell, masks, segments."""

from functools import partial

import pytest
import torch

from serkit.nn.coattention import CoAttentionHead, MeanPoolHead, aggregate_segments, segment_starts
from serkit.nn.mfsn import FUSION_OPS, MFSN, ChoiceCell, FusionCell, arch_spec, build_fusion_op, parse_arch


def _pad(x, total):
    """Right-pad (B, T, C) with garbage up to ``total`` frames; garbage must never matter."""
    extra = torch.full((x.shape[0], total - x.shape[1], x.shape[2]), 1e4)
    return torch.cat([x, extra], dim=1)


@pytest.mark.parametrize("name", FUSION_OPS)
def test_fusion_op_shapes_and_both_inputs_get_gradient(name):
    torch.manual_seed(0)
    op = build_fusion_op(name, 6, 4, 8, num_heads=2)
    a = torch.randn(3, 7, 6, requires_grad=True)
    b = torch.randn(3, 7, 4, requires_grad=True)
    y = op(a, b, None)
    assert y.shape == (3, 7, 8)
    (y**2).sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_reversed_attention_attends_the_other_way():
    torch.manual_seed(0)
    op = build_fusion_op("attention_rev", 6, 4, 8, num_heads=2).eval()
    a, b = torch.randn(1, 5, 6), torch.randn(1, 5, 4)
    # q from b, k/v from a: changing one frame of a changes every output frame (keys/values) ...
    a2 = a.clone()
    a2[0, 0] += 1.0
    assert (op(a2, b, None) - op(a, b, None)).abs().amax(dim=-1).min() > 0
    # ... while changing one frame of b changes only that output frame (it is a query).
    b2 = b.clone()
    b2[0, 0] += 1.0
    diff = (op(a, b2, None) - op(a, b, None)).abs().amax(dim=-1)[0]
    assert diff[0] > 0 and torch.all(diff[1:] < 1e-6)


def test_unknown_operation_is_named():
    with pytest.raises(ValueError, match="sum_rev"):
        build_fusion_op("sum_rev", 2, 2, 2)


@pytest.mark.parametrize("name", FUSION_OPS)
def test_fusion_ops_are_mask_invariant(name):
    torch.manual_seed(1)
    cell = FusionCell(6, 4, 8, ops=[name], search=False, num_heads=2).eval()
    a, b = torch.randn(1, 5, 6), torch.randn(1, 5, 4)
    alone = cell(a, b)
    mask = torch.zeros(1, 9, dtype=torch.bool)
    mask[:, 5:] = True
    padded = cell(_pad(a, 9), _pad(b, 9), mask)
    torch.testing.assert_close(padded[:, :5], alone, atol=1e-5, rtol=1e-5)
    assert torch.all(padded[:, 5:] == 0)


def test_mixed_operation_architecture_weights_move_after_a_search_step():
    torch.manual_seed(0)
    cell = FusionCell(6, 4, 8, num_heads=2)
    head = torch.nn.Linear(8, 3)
    arch = cell.arch_parameters()
    assert len(arch) == 1 and arch[0].shape == (8,)
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in cell.weight_parameters())
    before = arch[0].detach().clone()
    opt = torch.optim.SGD(arch, lr=5.0)  # the paper's architecture optimiser
    a, b, y = torch.randn(4, 6, 6), torch.randn(4, 6, 4), torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(head(cell(a, b).mean(1)), y)
    loss.backward()
    opt.step()
    assert not torch.allclose(arch[0].detach(), before)
    assert abs(sum(cell.op_weights().values()) - 1) < 1e-6


def test_derive_and_fixed_cell():
    cell = FusionCell(6, 4, 8, num_heads=2)
    with torch.no_grad():
        cell.alpha.copy_(torch.tensor([0.0, 0, 0, 0, 3.0, 0, 2.0, 0]))
    assert cell.derive() == ["ism"]
    assert cell.derive(top_k=2) == ["ism", "sum"]
    fixed = FusionCell(6, 4, 8, ops=cell.derive(), search=False)
    assert fixed.arch_parameters() == [] and fixed.op_names == ["ism"]
    assert fixed(torch.randn(2, 3, 6), torch.randn(2, 3, 4)).shape == (2, 3, 8)


def test_choice_cell_uniform_samples_every_level_and_fixes_after_derive():
    torch.manual_seed(0)
    cell = ChoiceCell(3).train()
    levels = torch.stack([torch.full((1, 2, 1), float(i)) for i in range(3)], dim=1)  # (1, 3, 2, 1)
    seen = {int(cell(levels)[0, 0, 0]) for _ in range(60)}
    assert seen == {0, 1, 2}
    with pytest.raises(ValueError, match="scores"):
        cell.derive()
    assert cell.derive(scores=[0.1, 0.7, 0.3]) == 1
    assert {int(cell(levels)[0, 0, 0]) for _ in range(20)} == {1}


def test_choice_cell_learned_logits_get_gradient():
    torch.manual_seed(0)
    cell = ChoiceCell(3, mode="learned").train()
    levels = torch.randn(2, 3, 4, 5)
    cell(levels).sum().backward()
    assert cell.alpha.grad is not None and cell.alpha.grad.abs().sum() > 0
    with torch.no_grad():
        cell.alpha -= cell.alpha.grad  # one SGD step: the most negative gradient, the largest logit
    assert int(cell.alpha.grad.argmin()) == 0
    level = cell.derive()
    assert cell.arch_parameters() == [] and level == 0


@pytest.mark.parametrize("streams", ["dual", "single"])
@pytest.mark.parametrize("variant", ["sec_only", "sec_tec_nosearch", "mfsn"])
def test_mfsn_variants_mask_invariance_and_tec_is_detached(variant, streams):
    torch.manual_seed(0)
    head = partial(MeanPoolHead, num_classes=3)
    model = MFSN(6, 4, 3, head, variant=variant, dim=8, num_heads=2, streams=streams).eval()
    sec = torch.randn(1, 3, 5, 6, requires_grad=True)
    tec = torch.randn(1, 5, 4, requires_grad=True)
    logits = model(sec, tec)
    assert logits.shape == (1, 3)
    logits.sum().backward()
    assert sec.grad.abs().sum() > 0
    assert tec.grad is None  # TEC is a fixed knowledge source
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[:, 5:] = True
    sec_p = torch.cat([sec.detach(), torch.full((1, 3, 3, 6), 1e4)], dim=2)
    padded = model(sec_p, _pad(tec.detach(), 8), mask)
    torch.testing.assert_close(padded, logits.detach(), atol=1e-5, rtol=1e-5)
    if variant == "mfsn":
        assert len(model.arch_parameters()) == 1  # uniform Choice Cell + Fusion Cell weights
        arch = model.derive(level_scores=[0.0, 1.0, 0.5])
        assert arch["sec_level"] == 1 and arch["fusion_ops"][0] in FUSION_OPS
        fixed = MFSN(6, 4, 3, head, dim=8, num_heads=2, arch=arch, streams=streams)
        assert fixed.arch_parameters() == [] and fixed.choice.fixed_level == 1
    else:
        assert model.arch_parameters() == []


@pytest.mark.parametrize("variant", ["mfsn", "sec_tec_nosearch"])
def test_dual_stream_gives_the_head_the_final_sec_layer_and_the_tec_stream(variant):
    """Paper Sec. 2.3/5.1: the adjusted TEC and the final-layer SEC both reach the emotion module."""
    torch.manual_seed(0)
    head = partial(MeanPoolHead, num_classes=3)
    arch = "0:attention" if variant == "mfsn" else None  # Choice Cell fixed on the EARLY level
    dual = MFSN(6, 4, 3, head, variant=variant, dim=8, num_heads=2, arch=arch).eval()
    single = MFSN(6, 4, 3, head, variant=variant, dim=8, num_heads=2, arch=arch, streams="single").eval()
    assert dual.stream_dims == ((8, 6) if variant == "mfsn" else (4, 6)) and single.stream_dims == (8,)
    assert dual.head.fc.in_features == sum(dual.stream_dims)
    sec, tec = torch.randn(2, 3, 5, 6), torch.randn(2, 5, 4)
    streams = dual.fuse(sec, tec)
    torch.testing.assert_close(streams[1], sec[:, -1])  # the SEC stream: the final layer as it is
    if variant == "sec_tec_nosearch":
        torch.testing.assert_close(streams[0], tec)  # TEC without adjustment (paper Sec. 5.4)
    if variant == "mfsn":  # early level chosen: the final SEC layer reaches the classifier only in dual
        for model, reaches in ((dual, True), (single, False)):
            s = sec.clone().requires_grad_(True)
            model(s, tec).sum().backward()
            assert bool(s.grad[:, -1].abs().sum() > 0) == reaches


def test_coattention_doubles_and_splits_the_spectrogram_and_mfcc_encodings_per_stream():
    """Paper Sec. 5.1: hidden sizes doubled for two streams, evenly distributed to each stream."""
    one = CoAttentionHead(8, 4, cnn_channels=(4, 8), lstm_hidden=8, attn_dim=8)
    two = CoAttentionHead([8, 6], 4, cnn_channels=(4, 8), lstm_hidden=8, attn_dim=8)
    assert (one.cnn_dim, one.lstm.hidden_size) == (8, 8) and (two.cnn_dim, two.lstm.hidden_size) == (16, 16)
    assert two.classifier.in_features == 8 + 6 + 16 + 32
    s = torch.arange(16.0)[None]
    m = torch.arange(32.0)[None]  # [forward 0..15 ; backward 16..31]
    (s1, m1), (s2, m2) = two.stream_parts(s, m)
    assert s1.tolist() == [list(range(8))] and s2.tolist() == [list(range(8, 16))]
    # each stream gets its slice of BOTH directions of the BiLSTM
    assert m1.tolist() == [list(range(8)) + list(range(16, 24))]
    assert m2.tolist() == [list(range(8, 16)) + list(range(24, 32))]
    wav, lengths = torch.randn(2, 16000), torch.tensor([16000, 9000])
    x1, x2 = torch.randn(2, 50, 8), torch.randn(2, 50, 6)
    assert two((x1, x2), None, wav=wav, wav_lengths=lengths).shape == (2, 4)
    with pytest.raises(ValueError, match="2 stream"):
        two(x1, None, wav=wav, wav_lengths=lengths)


def test_architecture_spec_round_trips_and_bad_ones_are_named():
    assert parse_arch("2:ism_rev,sum") == {"sec_level": 2, "fusion_ops": ["ism_rev", "sum"]}
    assert arch_spec(parse_arch(" 1:concat_fc_rev\n")) == "1:concat_fc_rev"
    for bad in ("ism", "x:ism", "1:", "1:sum_rev"):
        with pytest.raises(ValueError, match="sec_level"):
            parse_arch(bad)


def test_segment_starts_cover_the_utterance_with_right_aligned_last():
    S = 48000
    for n in (1000, 48000, 48001, 100000, 144000):
        starts = segment_starts(n, S)
        covered = torch.zeros(n, dtype=torch.bool)
        for s in starts:
            covered[s : s + S] = True
        assert covered.all()
        assert starts[-1] == max(0, n - S)
        assert all(b - a == S for a, b in zip(starts, starts[1:-1]))


def test_aggregate_segments_is_mean_log_probability():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    lp = aggregate_segments(logits, torch.tensor([0, 0, 1]))
    ref = torch.log_softmax(logits, -1)
    torch.testing.assert_close(lp[0], ref[:2].mean(0))
    torch.testing.assert_close(lp[1], ref[2])


def _small_head(**kw):
    return CoAttentionHead(8, 4, cnn_channels=(4, 8), lstm_hidden=8, attn_dim=8, **kw).eval()


def test_short_clip_segment_reproduces_the_whole_utterance_prediction():
    """A clip shorter than 3 s is one segment, padded in its batch: same prediction as the clip alone."""
    torch.manual_seed(0)
    head = _small_head()
    sr, seg = 16000, 48000
    n = 20000  # 1.25 s
    frames = 62
    x, wav = torch.randn(1, frames, 8), torch.randn(1, n)
    whole = torch.log_softmax(head(x, None, wav=wav, wav_lengths=torch.tensor([n])), -1)
    assert segment_starts(n, seg) == [0]
    # The segment sits in a batch with a full 3-second segment of another utterance.
    other_x, other_wav = torch.randn(1, 150, 8), torch.randn(1, seg)
    seg_x = torch.cat([_pad(x, 150), other_x])
    seg_wav = torch.cat([torch.cat([wav, torch.randn(1, seg - n)], 1), other_wav])
    mask = torch.zeros(2, 150, dtype=torch.bool)
    mask[0, frames:] = True
    seg_logits = head(seg_x, mask, wav=seg_wav, wav_lengths=torch.tensor([n, seg]))
    utt = aggregate_segments(seg_logits, torch.tensor([0, 1]))
    torch.testing.assert_close(utt[0], whole[0], atol=1e-5, rtol=1e-5)
    assert sr * 3 == seg


def test_alexnet_cnn_is_mask_invariant_and_loads_a_state_dict(tmp_path):
    torch.manual_seed(0)
    head = _small_head(cnn="alexnet")
    n = 30000
    x, wav = torch.randn(1, 93, 8), torch.randn(1, n)
    alone = head(x, None, wav=wav, wav_lengths=torch.tensor([n]))
    mask = torch.zeros(1, 150, dtype=torch.bool)
    mask[:, 93:] = True
    padded = head(
        _pad(x, 150), mask, wav=torch.cat([wav, torch.randn(1, 18000)], 1), wav_lengths=torch.tensor([n])
    )
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    # An image classifier's state dict ("features.*" + "classifier.*") loads; a wrong shape is named.
    state = {f"features.{k}": torch.randn_like(v) for k, v in head.cnn.state_dict().items()}
    state["classifier.1.weight"] = torch.randn(3, 3)
    torch.save(state, tmp_path / "alexnet.pt")
    head.load_pretrained_cnn(str(tmp_path / "alexnet.pt"))
    torch.testing.assert_close(head.cnn[0].weight, state["features.0.weight"])
    state["features.3.weight"] = torch.randn(1, 1, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt.*3\.weight"):
        head.load_pretrained_cnn(str(tmp_path / "bad.pt"))
