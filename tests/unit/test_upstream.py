"""Upstream loading: tiny HuBERT checkpoints, layer shapes, frame counts, mask invariance, bad files."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
fairseq = pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

from serkit.upstream import load_upstream, num_frames  # noqa: E402
from serkit.upstream.tiny import make_hubert_checkpoint  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_hubert_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=1)


@pytest.fixture(scope="module")
def up(tiny):
    return load_upstream(tiny)


def test_num_frames_formula():
    assert [num_frames(n) for n in (0, 399, 400, 719, 720, 16000, 16080)] == [0, 0, 1, 1, 2, 49, 50]


def test_tiny_checkpoint_loads_in_fairseq_without_data(tiny):
    from fairseq import checkpoint_utils

    from serkit.upstream.checkpoint import trusted_unpickling

    with trusted_unpickling():  # fairseq's own loader unpickles the checkpoint's config
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(tiny)])
    assert type(models[0]).__name__ == "HubertModel"
    assert cfg.task._name == "hubert_pretraining" and cfg.task.label_rate == 50
    assert len(task.dictionaries[0]) == 50 + 4  # labels "0".."49" + fairseq's 4 specials
    assert cfg.model.encoder_layers == 2 and cfg.model.encoder_embed_dim == 64


def test_attributes(up):
    assert (up.kind, up.num_layers, up.dim, up.frame_rate) == ("hubert", 2, 64, 50.0)
    assert (up.receptive_field, up.hop) == (400, 320)


@pytest.mark.parametrize("n", [400, 719, 720, 8000, 16001])
def test_layer_shapes_and_frame_counts(up, n):
    wav = torch.randn(1, n)
    hidden, mask = up(wav, None, layers=None)
    assert len(hidden) == 3
    for h in hidden:
        assert h.shape == (1, num_frames(n), 64)
    assert mask.shape == (1, num_frames(n)) and not mask.any()


def test_layers_match_fairseq_extract_features(tiny, up):
    from fairseq import checkpoint_utils

    model = checkpoint_utils.load_model_ensemble_and_task([str(tiny)])[0][0].eval()
    wav = torch.randn(1, 12345)
    hidden, _ = up(wav, None, layers=[1, 2])
    with torch.no_grad():
        for layer, h in zip([1, 2], hidden):
            ref, _ = model.extract_features(wav, padding_mask=None, mask=False, output_layer=layer)
            torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)


def test_padding_invariance(up):
    """A padded utterance gives the features it gives alone, on its valid frames (group-norm CNN too)."""
    torch.manual_seed(0)
    lens = [16000, 9000, 4321]
    wav = torch.zeros(3, max(lens))
    pad = torch.ones(3, max(lens), dtype=torch.bool)
    for i, n in enumerate(lens):
        wav[i, :n] = torch.randn(n)
        pad[i, :n] = False
    hidden, mask = up(wav, pad)
    for i, n in enumerate(lens):
        alone, _ = up(wav[i : i + 1, :n])
        t = num_frames(n)
        assert (~mask[i]).sum() == t
        for h, a in zip(hidden, alone):
            torch.testing.assert_close(h[i, :t], a[0], atol=1e-5, rtol=1e-4)
            assert h[i, t:].abs().sum() == 0  # padded frames are zeroed


def test_normalize_is_honoured(tmp_path):
    up_n = load_upstream(make_hubert_checkpoint(tmp_path / "n.pt", seed=2, normalize=True))
    up_r = load_upstream(make_hubert_checkpoint(tmp_path / "r.pt", seed=2, normalize=False))
    assert up_n.normalize and not up_r.normalize
    wav = torch.randn(1, 8000) * 3.0 + 0.2
    a, _ = up_n(wav, layers=[2])  # same seed: same weights, only task.normalize differs
    b, _ = up_r(torch.nn.functional.layer_norm(wav, (8000,)), layers=[2])
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-4)
    # normalised over the valid samples only: padding does not change it
    batch = torch.cat([wav, torch.zeros(1, 2000)], dim=1)
    pad = torch.zeros(1, 10000, dtype=torch.bool)
    pad[0, 8000:] = True
    c, mask = up_n(batch, pad, layers=[2])
    torch.testing.assert_close(c[0][0, : a[0].shape[1]], a[0][0], atol=1e-5, rtol=1e-4)


def test_long_input_is_chunked(up):
    wav = torch.randn(16000 * 30 + 123)  # 30 s
    feats = up.extract(wav, layers=[0, 2], max_chunk_seconds=10)
    assert feats.shape == (2, num_frames(wav.numel()), 64)
    whole = up.extract(wav, layers=[0, 2])
    assert whole.shape == feats.shape
    assert torch.isfinite(feats).all()


def test_layer_out_of_range(up):
    with pytest.raises(SerkitError, match="layers 0..2"):
        up(torch.randn(1, 1600), layers=[3])


def test_missing_checkpoint(tmp_path):
    with pytest.raises(SerkitError, match=r"missing\.pt: checkpoint not found"):
        load_upstream(tmp_path / "missing.pt")


def test_truncated_checkpoint(tiny, tmp_path):
    bad = tmp_path / "truncated.pt"
    data = tiny.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SerkitError, match="truncated"):
        load_upstream(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint\n")
    with pytest.raises(SerkitError, match="notes.pt"):
        load_upstream(bad)


def test_translation_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "mt.pt"
    torch.save(
        {
            "cfg": {"model": {"_name": "transformer"}, "task": {"_name": "translation"}},
            "model": {},
            "optimizer_history": [{"criterion_name": "x", "optimizer_name": "y", "lr_scheduler_state": {}}],
        },
        bad,
    )
    with pytest.raises(SerkitError, match=r"mt\.pt: a fairseq 'transformer' checkpoint .*not a speech SSL"):
        load_upstream(bad)


def _tiny_w2v(tmp_path):
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from omegaconf import OmegaConf

    cfg = Wav2Vec2Config(
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
        encoder_layers=2,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=128,
        encoder_attention_heads=2,
        final_dim=32,
        latent_vars=8,
        latent_groups=2,
    )
    model = Wav2Vec2Model(cfg)
    model_cfg = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    model_cfg["_name"] = "wav2vec2"
    task_cfg = {"_name": "audio_pretraining", "data": "/nowhere", "normalize": True, "sample_rate": 16000}
    return model, model_cfg, task_cfg


def test_wav2vec2_pretrained_and_ctc(tmp_path):
    model, model_cfg, task_cfg = _tiny_w2v(tmp_path)
    hist = [{"criterion_name": "x", "optimizer_name": "y", "lr_scheduler_state": {}, "num_updates": 0}]
    pre = tmp_path / "w2v.pt"
    torch.save(
        {
            "cfg": {"model": model_cfg, "task": task_cfg},
            "model": model.state_dict(),
            "optimizer_history": hist,
        },
        pre,
    )
    up = load_upstream(pre)
    assert (up.kind, up.num_layers, up.dim, up.normalize) == ("wav2vec2", 2, 64, True)
    wav = torch.randn(1, 8000)
    h_pre, _ = up(wav, layers=[1, 2])

    # a CTC fine-tuned checkpoint: the inner wav2vec 2.0 model's weights under w2v_encoder.w2v_model.
    sd = {f"w2v_encoder.w2v_model.{k}": v for k, v in model.state_dict().items()}
    sd["w2v_encoder.proj.weight"] = torch.zeros(32, 64)
    sd["w2v_encoder.proj.bias"] = torch.zeros(32)
    ctc_cfg = {
        "model": {
            "_name": "wav2vec_ctc",
            "w2v_path": "/nowhere.pt",
            "w2v_args": {"model": model_cfg, "task": task_cfg},
        },
        "task": {"_name": "audio_finetuning", "data": "/nowhere", "normalize": True, "labels": "ltr"},
    }
    ctc = tmp_path / "ctc.pt"
    torch.save({"cfg": ctc_cfg, "model": sd, "optimizer_history": hist}, ctc)
    up_ctc = load_upstream(ctc)
    assert up_ctc.kind == "wav2vec2" and up_ctc.num_layers == 2
    h_ctc, _ = up_ctc(wav, layers=[1, 2])
    for a, b in zip(h_pre, h_ctc):
        torch.testing.assert_close(a, b)


def test_serkit_model_names_are_hubert_kind(tiny, tmp_path):
    """Checkpoints of serkit_* models (the fairseq plugin's HuBERT subclass) need the plugin imported."""
    state = torch.load(tiny, weights_only=False)
    state["cfg"]["model"]["_name"] = "serkit_unregistered_model"
    p = tmp_path / "serkit.pt"
    torch.save(state, p)
    try:
        import serkit.fairseq_ext  # noqa: F401
    except ImportError:
        pass
    with pytest.raises(SerkitError, match="no model 'serkit_unregistered_model' registered"):
        load_upstream(p)


def test_mfcc_upstream_matches_kaldi_every_second_frame():
    import torchaudio

    up = load_upstream("mfcc")
    for n in (400, 719, 720, 16000, 16321):
        wav = torch.randn(n)
        feats = up.extract(wav)
        assert feats.shape == (1, num_frames(n), 39)
        ref = torchaudio.compliance.kaldi.mfcc(wav[None], sample_frequency=16000, use_energy=False)
        torch.testing.assert_close(feats[0, :, :13], ref[::2])


def test_hf_directory_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SerkitError, match="config.json"):
        load_upstream(tmp_path / "empty")


def test_hf_upstream_tiny_wavlm(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the serkit[hf] extra is not installed")
    cfg = transformers.WavLMConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    transformers.WavLMModel(cfg).save_pretrained(tmp_path / "wavlm")
    up = load_upstream(tmp_path / "wavlm")
    hidden, mask = up(torch.randn(1, 16000))
    assert len(hidden) == 3 and hidden[0].shape == (1, 49, 32)
