"""FLEA's official-code training details in serkit: each one acts (dropout before pooling, time masking
inside HuBERT, the class-balanced sampler, truncation, weight decay), and the shared flea.yaml turns them
on."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from tests.fixtures.sb import SHARED_CONF  # noqa: E402


def _peek(path):
    from serkit.speechbrain.train import _peek_yaml

    return _peek_yaml(str(path))


def test_flea_yaml_turns_the_official_code_details_on():
    cfg = _peek(SHARED_CONF / "flea.yaml")
    assert cfg["upstream_output_dropout"] == 0.1 and cfg["upstream_mask_time_prob"] == 0.08
    assert cfg["upstream_mask_time_length"] == 10 and cfg["class_balanced_sampler"] is True
    assert cfg["max_duration"] == 6.0 and cfg["crop"] == "start" and cfg["weight_decay"] == 1e-5


def test_output_dropout_drops_frames_of_the_returned_layers_in_training_only(sb_tiny):
    from serkit.speechbrain.lobes import FairseqUpstream

    ckpt = str(sb_tiny["ckpt"])
    wav, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.7])
    plain, dropped = FairseqUpstream(ckpt).train(), FairseqUpstream(ckpt, output_dropout=0.5).train()
    torch.manual_seed(3)
    a, _ = plain(wav, lens)
    torch.manual_seed(3)  # the same draws inside the model; the output dropout draws last
    b, _ = dropped(wav, lens)
    kept = b != 0
    assert 0.4 < (~kept[a != 0]).float().mean() < 0.6
    torch.testing.assert_close(b[kept], 2.0 * a[kept])  # survivors scaled by 1 / (1 - p)
    plain.eval(), dropped.eval()
    torch.testing.assert_close(plain(wav, lens)[0], dropped(wav, lens)[0])


def test_time_masking_inside_hubert_replaces_spans_with_the_mask_embedding(sb_tiny):
    from serkit.speechbrain.lobes import FairseqUpstream

    ckpt = str(sb_tiny["ckpt"])
    lobe = FairseqUpstream(ckpt, mask_time_prob=0.5, mask_time_length=4)
    model = lobe.model
    assert model.mask_emb.requires_grad  # trained with the transformer when masking uses it
    assert not FairseqUpstream(ckpt).model.mask_emb.requires_grad
    with torch.no_grad():
        model.mask_emb.fill_(123.0)
    seen = []
    real = model.encoder.extract_features

    def spy(x, padding_mask=None, tgt_layer=None):
        seen.append(x.detach().clone())
        return real(x, padding_mask=padding_mask, tgt_layer=tgt_layer)

    model.encoder.extract_features = spy
    wav, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.5])
    lobe.train()(wav, lens)
    masked = (seen[-1] == 123.0).all(dim=-1)  # (B, T): frames that are the mask embedding
    frames = lobe.upstream.frame_lengths(torch.tensor([16000, 8000])).tolist()
    for b, n in enumerate(frames):
        assert masked[b, :n].sum() >= 4  # at least one span of 4 valid frames
        assert not masked[b, n:].any()  # never in padding
        assert masked[b, :n].float().mean() < 0.9
    lobe.eval()(wav, lens)
    assert not (seen[-1] == 123.0).all(dim=-1).any()  # evaluation: no masking
    FairseqUpstream(ckpt).train()
    off = FairseqUpstream(ckpt, mask_time_prob=0.0)
    with torch.no_grad():
        off.model.mask_emb.fill_(123.0)
    off.model.encoder.extract_features = spy
    off.train()(wav, lens)
    assert not (seen[-1] == 123.0).all(dim=-1).any()


def test_class_balanced_sampler_weights_each_class_equally():
    from speechbrain.dataio.dataset import DynamicItemDataset

    from serkit.speechbrain.dataio import class_balanced_sampler

    data = {f"u{i}": {"emo": "neu" if i < 9 else "sad"} for i in range(12)}  # 9 neu, 3 sad
    sampler = class_balanced_sampler(DynamicItemDataset(data), seed=5)
    assert sampler.weights.tolist() == pytest.approx([1 / 9] * 9 + [1 / 3] * 3)
    assert sampler.num_samples == 12 and sampler.replacement
    draws = []
    for epoch in range(200):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    sad = sum(i >= 9 for i in draws) / len(draws)
    assert abs(sad - 0.5) < 0.03  # 25 % of the items, half of the draws
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first  # reproducible per epoch


def test_flea_training_uses_sampler_truncation_and_weight_decay(sb_tiny, tmp_path, monkeypatch):
    """A one-epoch run of flea.yaml: every training signal is cut to max_duration from the start,
    the training loader draws through the class-balanced sampler, AdamW has weight decay 1e-5."""
    import speechbrain as sb

    from serkit.speechbrain import dataio
    from serkit.speechbrain.brain import SERBrain
    from serkit.speechbrain.train import main

    setup = sb_tiny
    made, loaders, sigs, decay = [], [], [], []
    real_sampler, real_make, real_fwd = (
        dataio.class_balanced_sampler,
        SERBrain.make_dataloader,
        SERBrain.compute_forward,
    )
    real_start = SERBrain.on_fit_start

    def start_spy(self):
        real_start(self)
        decay.extend(g["weight_decay"] for g in self.optimizer.param_groups)

    def sampler_spy(dataset, seed=0):
        made.append(real_sampler(dataset, seed))
        return made[-1]

    def make_spy(self, dataset, stage, **kw):
        loader = real_make(self, dataset, stage, **kw)
        if stage == sb.Stage.TRAIN:
            loaders.append(loader)
        return loader

    def fwd_spy(self, batch, stage):
        if stage == sb.Stage.TRAIN:
            wavs, lens = batch.sig
            sigs.append(wavs.shape[1])
        return real_fwd(self, batch, stage)

    monkeypatch.setattr(dataio, "class_balanced_sampler", sampler_spy)
    monkeypatch.setattr(SERBrain, "make_dataloader", make_spy)
    monkeypatch.setattr(SERBrain, "compute_forward", fwd_spy)
    monkeypatch.setattr(SERBrain, "on_fit_start", start_spy)
    out = tmp_path / "flea"
    assert (
        main(
            [
                str(SHARED_CONF / "flea.yaml"),
                "--fold-dir",
                str(setup["fold"]),
                "--output-folder",
                str(out),
                "--upstream",
                str(setup["ckpt"]),
                "--number_of_epochs",
                "1",
                "--batch_size",
                "4",
                "--max_duration",
                "0.25",
                "--noprogressbar",
            ]
        )
        == 0
    )
    assert len(made) == 1 and loaders[0].sampler is made[0]
    assert sigs and max(sigs) == 4000  # 0.25 s at 16 kHz; the utterances are 0.4-0.9 s
    assert decay and set(decay) == {1e-5}
    ds = dataio.fold_datasets(setup["fold"], max_duration=0.25, crop="start")[0]["train"]
    item = ds[0]
    full = dataio.load_wav(json.loads((setup["fold"] / "train.json").read_text())[item["id"]]["wav"])
    torch.testing.assert_close(item["sig"], full[:4000])


def test_feature_penalty_cannot_change_weights_with_the_cnn_frozen(tmp_path):
    """Why the CPT configs leave out HuBERT's feature penalty: with feature_grad_mult 0 (the CNN
    frozen, as FLEA's official code) the penalty is computed on features that carry no gradient."""
    import yaml

    from serkit.upstream import load_upstream
    from serkit.upstream.tiny import make_hubert_checkpoint

    for name in ("cpt_hubert_base.yaml", "cpt_hubert_tiny.yaml"):
        cfg = yaml.safe_load((SHARED_CONF / "fairseq" / name).read_text())
        assert cfg["model"]["feature_grad_mult"] == 0.0 and "loss_weights" not in cfg["criterion"]
    model = load_upstream(make_hubert_checkpoint(tmp_path / "tiny.pt", num_labels=5)).model.train()
    model.feature_grad_mult = 0.0
    src = torch.randn(2, 8000)
    target = torch.randint(0, 5, (2, (8000 - 400) // 320 + 1))
    pad = torch.zeros(2, 8000, dtype=torch.bool)
    for p in model.parameters():
        p.requires_grad_(True)
    out = model(src, target_list=[target], padding_mask=pad)
    assert not out["features_pen"].requires_grad  # so coef * features_pen adds no gradient
    model.feature_grad_mult = 0.1  # HuBERT from scratch: the penalty does act
    assert model(src, target_list=[target], padding_mask=pad)["features_pen"].requires_grad
