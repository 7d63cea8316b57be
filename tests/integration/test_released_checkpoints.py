"""Every released checkpoint the READMEs name (and its obvious siblings), in its exact on-disk form.

Each release is imitated by a random-weight, tiny stand-in with the release's structure
(:mod:`serkit.upstream.standins`: ``args`` Namespace or ``cfg`` dict, nested ``w2v_args``, ``task_state``,
label-embedding sizes, the authors' cluster paths, weight-norm names). Each one goes through every path a
user takes: ``load_upstream`` (layers equal to fairseq's own ``extract_features`` on the same weights, and
to fairseq's loader where fairseq can load the file at all), ``serkit dump-features``, the fairseq plugin's
``serkit_ser_model`` (finetuning) and ``serkit_hubert`` ``init_from`` (CPT), and MFSN's greedy CTC
(``--ctc-dict``).

With ``SERKIT_CHECKPOINT_RESULTS=FILE`` the module writes which of those passed per release; the README's
table is rendered from that file (``python tools/update_readme.py --checkpoints FILE``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

from serkit.upstream import load_upstream  # noqa: E402
from serkit.upstream.standins import BUILDERS, LETTERS, make_standin  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402
from tests.fixtures.fairseq_train import CLASSES, make_fold  # noqa: E402

pytestmark = [pytest.mark.fairseq, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[2]
RELEASES = list(BUILDERS)
CTC = [
    "wav2vec_small_960h.pt",
    "wav2vec2_vox_960h_new.pt",
    "hubert_large_ll60k_finetune_ls960.pt",
    "audio_base_ls_960h.pt",
]
PRE_LN = ["wav2vec2_vox_960h_new.pt", "hubert_large_ll60k_finetune_ls960.pt"]
HUBERT = ["hubert_base_ls960.pt", "hubert_large_ll60k.pt", "hubert_large_ll60k_finetune_ls960.pt"]
#: (kind, normalize) of each release (normalize: the task config it was trained with)
EXPECTED = {
    "wav2vec_small.pt": ("wav2vec2", False),
    "wav2vec_small_960h.pt": ("wav2vec2", False),
    "libri960_big.pt": ("wav2vec2", False),
    "wav2vec_vox_new.pt": ("wav2vec2", True),
    "wav2vec2_vox_960h_new.pt": ("wav2vec2", True),
    "hubert_base_ls960.pt": ("hubert", False),
    "hubert_large_ll60k.pt": ("hubert", True),
    "hubert_large_ll60k_finetune_ls960.pt": ("hubert", True),
    "audio_base_ls.pt": ("data2vec", True),
    "audio_base_ls_960h.pt": ("data2vec", True),
}
#: how fairseq 0.12's own load_model_ensemble_and_task fails on a release (absent: it loads it)
FAIRSEQ_FAILS = {
    "wav2vec_small_960h.pt": "Could not override 'model.w2v_args.common.no_progress_bar'",
    "wav2vec2_vox_960h_new.pt": "Could not override 'model.w2v_args.common.no_progress_bar'",
    "hubert_large_ll60k_finetune_ls960.pt": "dict.lyr9.km500.txt",
}
FAIRSEQ_WHY = {
    "wav2vec_small_960h.pt": "nested w2v_args Namespace: hydra-core 1.3 ignores compose(strict=False)",
    "wav2vec2_vox_960h_new.pt": "nested w2v_args Namespace: hydra-core 1.3 ignores compose(strict=False)",
    "hubert_large_ll60k_finetune_ls960.pt": "reads dict.lyr9.km500.txt from the authors' label_dir",
}
#: the README lines that recommend each release (rows that must be green)
RECOMMENDED = {
    "wav2vec_small.pt": "IEMOCAP: ShiftSER finetune and featex (`--upstream`)",
    "hubert_base_ls960.pt": "IEMOCAP: FLEA upstream and CPT start, ShiftSER featex (`--upstream`)",
    "hubert_large_ll60k.pt": "MELD: BAS (`--upstream`)",
    "wav2vec_small_960h.pt": "SAVEE/IEMOCAP: MFSN TEC (`--tec-upstream`, `--ctc-dict`)",
    "audio_base_ls.pt": "SAVEE/IEMOCAP: MFSN SEC (`--sec-upstream`)",
    "wavlm-large/": "MELD/IEMOCAP: BAS (`--upstream DIR`)",
}
COLUMNS = ("dump", "finetune", "cpt", "tec")
RESULTS: dict[str, dict] = {}


def applies(release: str, column: str) -> bool:
    if release.endswith("/"):  # a Hugging Face directory: serkit reads it as frozen features only
        return column == "dump"
    return {"dump": True, "finetune": True, "cpt": release in HUBERT, "tec": release in CTC}[column]


def passed(release: str, column: str) -> None:
    """Record a passed path (call it after the test's last assertion)."""
    RESULTS.setdefault(release, {})[column] = True


@pytest.fixture(scope="module", autouse=True)
def write_results():
    yield
    out = os.environ.get("SERKIT_CHECKPOINT_RESULTS")
    if not out:
        return
    rows = []
    for release in RELEASES + list(HF_DIRS):
        kind = "hf" if release.endswith("/") else EXPECTED[release][0]
        got = dict(RESULTS.get(release, {}))
        got["finetune"] = bool(got.get("finetune_fairseq") and got.get("finetune_sb"))
        cells = {c: ("n/a" if not applies(release, c) else bool(got.get(c))) for c in COLUMNS}
        rows.append(
            {
                "release": release,
                "kind": kind,
                "ctc": release in CTC,
                "format": FORMATS.get(release, ""),
                "fairseq_loads": "n/a" if release.endswith("/") else FAIRSEQ_WHY.get(release, True),
                "recommended": RECOMMENDED.get(release, ""),
                **cells,
            }
        )
    Path(out).write_text(json.dumps({"rows": rows}, indent=1) + "\n")


FORMATS = {
    "wav2vec_small.pt": "args Namespace",
    "wav2vec_small_960h.pt": "args Namespace, nested w2v_args Namespace",
    "libri960_big.pt": "args Namespace",
    "wav2vec_vox_new.pt": "args Namespace, layer-norm CNN, pre-LN",
    "wav2vec2_vox_960h_new.pt": "args Namespace, nested w2v_args Namespace, pre-LN",
    "hubert_base_ls960.pt": "cfg dict, task_state 504 labels",
    "hubert_large_ll60k.pt": "cfg dict, task_state 504 labels, pre-LN",
    "hubert_large_ll60k_finetune_ls960.pt": "cfg dict (hubert_ctc), w2v_args cfg, pre-LN",
    "audio_base_ls.pt": "cfg dict (data2vec_audio, examples/), _ema teacher",
    "audio_base_ls_960h.pt": "cfg dict (wav2vec_ctc around data2vec_audio)",
    "wavlm-large/": "Hugging Face directory (config.json, pytorch_model.bin: weight_g/weight_v)",
}


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    return {r: make_standin(r, root / r.replace(".pt", ""), seed=i) for i, r in enumerate(RELEASES)}


def _reference_layers(s, wav: torch.Tensor, num_layers: int) -> list[torch.Tensor]:
    """fairseq's extract_features of the stand-in's encoder, layer by layer (its own layer numbering)."""
    x = torch.nn.functional.layer_norm(wav, wav.shape[-1:]) if EXPECTED[s.release][1] else wav
    out = []
    with torch.no_grad():
        for layer in range(1, num_layers + 1):
            if s.kind == "hubert":  # output_layer is 1-based
                ref, _ = s.encoder.extract_features(x, padding_mask=None, mask=False, output_layer=layer)
            else:  # wav2vec 2.0 / data2vec: layer is the 0-based index of the transformer layer
                ref = s.encoder.extract_features(x, padding_mask=None, mask=False, layer=layer - 1)["x"]
            out.append(ref)
    return out


# ---------------------------------------------------------------------------------------------
# load_upstream and fairseq's own loader


@pytest.mark.parametrize("release", RELEASES)
def test_load_upstream_layers_equal_fairseqs_extract_features(standins, release):
    s = standins[release]
    up = load_upstream(s.path)
    assert (up.kind, up.normalize, up.num_layers, up.dim) == (*EXPECTED[release], 2, 64)
    torch.manual_seed(0)
    for n in (4000, 12345):
        wav = torch.randn(1, n) * 0.3
        hidden, _ = up(wav, layers=[1, 2])
        for h, ref in zip(hidden, _reference_layers(s, wav, 2)):
            torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("release", RELEASES)
def test_padded_batch_gives_each_utterance_its_own_features(standins, release):
    up = load_upstream(standins[release].path)
    torch.manual_seed(1)
    lens = [9000, 5400]
    wav = torch.randn(2, 9000) * 0.3
    pad = torch.zeros(2, 9000, dtype=torch.bool)
    pad[1, 5400:] = True
    hidden, mask = up(wav, pad, layers=[0, 1, 2])
    for b, n in enumerate(lens):
        alone, _ = up(wav[b : b + 1, :n], layers=[0, 1, 2])
        t = alone[0].shape[1]
        assert int((~mask[b]).sum()) == t
        for h, a in zip(hidden, alone):
            torch.testing.assert_close(h[b, :t], a[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("release", RELEASES)
def test_fairseqs_own_loader_agrees_where_it_loads_the_file(standins, release):
    from fairseq import checkpoint_utils

    from serkit.upstream.checkpoint import register_models, trusted_unpickling

    s = standins[release]
    register_models()
    if release in FAIRSEQ_FAILS:
        with pytest.raises(Exception, match=FAIRSEQ_FAILS[release].replace(".", r"\.")), trusted_unpickling():
            checkpoint_utils.load_model_ensemble_and_task([str(s.path)])
        return
    with trusted_unpickling():
        model = checkpoint_utils.load_model_ensemble_and_task([str(s.path)])[0][0].eval()
    if release in CTC:
        model = model.w2v_encoder.w2v_model
    up = load_upstream(s.path)
    wav = torch.randn(1, 9000)
    hidden, _ = up(wav, layers=[1, 2])
    for h, ref in zip(
        hidden, _reference_layers(Namespace(release=release, kind=s.kind, encoder=model), wav, 2)
    ):
        torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)


def test_the_stand_ins_have_the_releases_structure(standins):
    """The facts the stand-ins must carry, checked on the files themselves."""

    def load(r):
        return torch.load(standins[r].path, map_location="cpu", weights_only=False)

    small = load("wav2vec_small_960h.pt")
    assert sorted(small) == ["args", "extra_state", "last_optimizer_state", "model", "optimizer_history"]
    assert isinstance(small["args"], Namespace) and isinstance(small["args"].w2v_args, Namespace)
    assert small["args"].arch == "wav2vec_ctc" and small["args"].w2v_args.arch == "wav2vec2"
    assert small["args"].w2v_args.latent_temp == "(2,0.5,0.999995)"  # argparse kept tuples as strings
    assert small["model"]["w2v_encoder.proj.weight"].shape[0] == len(LETTERS) + 4 == 32
    assert "w2v_encoder.w2v_model.encoder.pos_conv.0.weight_g" in small["model"]
    assert not any(k.startswith("w2v_encoder.w2v_model.quantizer") for k in small["model"])
    base = load("hubert_base_ls960.pt")
    assert base["args"] is None and isinstance(base["cfg"], dict)
    assert (
        len(base["task_state"]["dictionaries"][0]) == 504
        and base["model"]["label_embs_concat"].shape[0] == 504
    )
    assert base["cfg"]["task"]["labels"] == ["layer6.km500"] and base["cfg"]["task"]["data"].startswith(
        "/checkpoint/"
    )
    large = load("hubert_large_ll60k.pt")
    assert large["cfg"]["task"]["label_dir"].startswith("/checkpoint/wnhsu/")
    ft = load("hubert_large_ll60k_finetune_ls960.pt")
    assert ft["cfg"]["model"]["_name"] == "hubert_ctc" and ft["cfg"]["task"]["fine_tuning"] is True
    assert ft["model"]["w2v_encoder.w2v_model.label_embs_concat"].shape[0] == 504
    assert len(ft["task_state"]["target_dictionary"]) == 32
    d2v = load("audio_base_ls.pt")
    assert (
        d2v["cfg"]["model"]["_name"] == "data2vec_audio"
        and "_ema" in d2v["model"]
        and d2v["task_state"] == {}
    )
    assert load("audio_base_ls_960h.pt")["cfg"]["model"]["w2v_args"]["model"]["_name"] == "data2vec_audio"


def test_nested_namespace_is_converted_without_hydra(standins):
    from serkit.upstream.checkpoint import read_checkpoint

    ck = read_checkpoint(standins["wav2vec2_vox_960h_new.pt"].path)
    assert (
        ck.name == "wav2vec_ctc"
        and ck.model_cfg._name == "wav2vec2"
        and ck.task_cfg._name == "audio_pretraining"
    )
    assert ck.model_cfg.layer_norm_first is True and ck.model_cfg.extractor_mode == "layer_norm"
    assert list(ck.model_cfg.latent_temp) == [2, 0.1, 0.999995]  # "(2,0.1,0.999995)" -> a literal
    assert (
        ck.model_cfg.pos_conv_depth == 1 and ck.model_cfg.layer_type == "transformer"
    )  # not in the 2020 args: the dataclass default
    assert ck.normalize is True and ck.ctc.num_outputs == 32 and ck.ctc.norm_weight is not None


def test_unreadable_configs_name_the_file_and_the_fix(tmp_path, standins):
    state = torch.load(standins["wav2vec_small.pt"].path, weights_only=False)
    state["args"].arch = "wav2vec3"
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(SerkitError, match=r"odd\.pt: checkpoint args name model 'wav2vec3'"):
        load_upstream(tmp_path / "odd.pt")
    state = torch.load(standins["hubert_large_ll60k_finetune_ls960.pt"].path, weights_only=False)
    state["cfg"]["model"]["w2v_args"] = None  # fairseq would read the encoder's config from w2v_path
    torch.save(state, tmp_path / "ctc.pt")
    with pytest.raises(
        SerkitError, match=r"ctc\.pt: 'hubert_ctc' checkpoint without w2v_args.*w2v_path=/checkpoint/"
    ):
        load_upstream(tmp_path / "ctc.pt")


@pytest.mark.parametrize("release", ["wav2vec_small.pt", "hubert_base_ls960.pt"])
def test_parametrized_weight_norm_names_load_the_same(tmp_path, standins, release):
    s = standins[release]
    again = make_standin(
        release, tmp_path, seed=RELEASES.index(release), pos_conv_weight_norm="parametrizations"
    )
    keys = torch.load(again.path, weights_only=False)["model"].keys()
    assert "encoder.pos_conv.0.parametrizations.weight.original0" in keys
    assert "encoder.pos_conv.0.weight_g" not in keys
    wav = torch.randn(1, 8000)
    a, _ = load_upstream(s.path)(wav, layers=[2])
    b, _ = load_upstream(again.path)(wav, layers=[2])
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# serkit dump-features


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    import soundfile as sf

    root = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    lines = []
    for i, n in enumerate((7000, 16000)):
        path = root / f"u{i}.wav"
        sf.write(path, (0.3 * rng.standard_normal(n)).astype("float32"), 16000)
        lines.append(f"u{i} {path}\n")
    (root / "wav.scp").write_text("".join(lines))
    return root


def _dump(ckpt: Path, data: Path, out: Path, layers: str = "all") -> Path:
    from serkit.cli import main

    rc = main(
        [
            "dump-features",
            "--upstream",
            str(ckpt),
            "--data",
            str(data),
            "--out",
            str(out),
            "--layers",
            layers,
            "--dtype",
            "float32",
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def dumps(standins, wavs, tmp_path_factory):
    root = tmp_path_factory.mktemp("dumps")
    out = {}
    for r in RELEASES:
        try:
            out[r] = _dump(standins[r].path, wavs, root / r)
        except Exception:  # noqa: BLE001 - reported by the test of that release
            out[r] = None
    return out


@pytest.mark.parametrize("release", RELEASES)
def test_dump_features_writes_the_upstreams_layers(standins, wavs, dumps, release):
    import soundfile as sf

    from serkit.upstream.features import FeatureReader

    assert dumps[release] is not None, f"serkit dump-features failed on {release}"
    reader = FeatureReader(dumps[release])
    assert reader.layers == [0, 1, 2] and reader.dim == 64
    up = load_upstream(standins[release].path)
    for utt in ("u0", "u1"):
        wav, _ = sf.read(wavs / f"{utt}.wav", dtype="float32")
        ref = up.extract(torch.from_numpy(wav)).numpy()
        np.testing.assert_allclose(reader.load(utt), ref, atol=1e-5, rtol=1e-5)
    passed(release, "dump")


# ---------------------------------------------------------------------------------------------
# the fairseq plugin: serkit_ser_model (finetuning) and serkit_hubert init_from (CPT)


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    return make_fold(tmp_path_factory.mktemp("fold"), n_train=4, n_eval=4)["fold"]


@pytest.mark.parametrize("release", RELEASES)
def test_serkit_ser_model_finetunes_from_the_release(standins, fold, release):
    from omegaconf import OmegaConf

    from serkit.fairseq_ext.ser_model import SerModelConfig
    from serkit.fairseq_ext.ser_task import SerTask, SerTaskConfig
    from serkit.upstream.checkpoint import read_checkpoint

    task = SerTask.setup_task(OmegaConf.structured(SerTaskConfig(data=str(fold))))
    cfg = OmegaConf.structured(SerModelConfig(upstream_path=str(standins[release].path), pooling="mean"))
    cfg._name = "serkit_ser_model"
    model = task.build_model(cfg)
    assert model.normalize == EXPECTED[release][1]
    src = read_checkpoint(standins[release].path).encoder_state
    own = model.upstream.state_dict()
    assert own and all(torch.equal(v, src[k]) for k, v in own.items())
    task.load_dataset("valid")
    ds = task.dataset("valid")
    batch = ds.collater([ds[i] for i in range(3)])
    model.train()
    logits = model(**batch["net_input"])["logits"]
    assert logits.shape == (3, len(CLASSES))
    torch.nn.functional.cross_entropy(logits, batch["target"]).backward()
    top = model.upstream.encoder.layers[-1].fc2.weight.grad
    assert top is not None and top.abs().sum() > 0  # the transformer trains
    passed(release, "finetune_fairseq")


@pytest.mark.parametrize("release", RELEASES)
def test_speechbrain_finetune_lobe_from_the_release(standins, release):
    """`serkit train --setting finetune` (ShiftSER, the heads): the SpeechBrain lobe around load_upstream."""
    from serkit.speechbrain.lobes import FairseqUpstream

    s = standins[release]
    lobe = FairseqUpstream(str(s.path), freeze_cnn=True, layers="all")
    wav = torch.randn(2, 9000) * 0.3
    lengths = torch.tensor([1.0, 0.6])
    lobe.eval()
    with torch.no_grad():
        out, _ = lobe(wav, lengths)
    n = int(round(0.6 * 9000))
    ref, _ = load_upstream(s.path)(wav[1:, :n], layers=[0, 1, 2])
    t = ref[0].shape[1]
    for layer in range(3):
        torch.testing.assert_close(out[1, layer, :t], ref[layer][0], atol=1e-5, rtol=1e-5)
    lobe.train()
    out, _ = lobe(wav, lengths)
    out[:, -1].pow(2).mean().backward()
    top = lobe.model.encoder.layers[-1].fc2.weight.grad
    assert top is not None and top.abs().sum() > 0  # the transformer trains
    assert all(p.grad is None for p in lobe.model.feature_extractor.parameters())  # the CNN does not
    passed(release, "finetune_sb")


def _cpt_model(ck, init_from: str, **overrides):
    """A serkit_hubert with the architecture of ``ck``'s encoder, built as fairseq builds it."""
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    from serkit.fairseq_ext.hubert_cpt import ARCH_FIELDS, SerkitHubertConfig, SerkitHubertModel

    arch = {f: ck.model_cfg[f] for f in ARCH_FIELDS + ("final_dim",) if f in ck.model_cfg}
    cfg = OmegaConf.structured(
        SerkitHubertConfig(
            label_rate=50.0, init_from=init_from, feature_grad_mult=0.0, **{**arch, **overrides}
        )
    )
    d = make_km_dictionary(50)
    task = Namespace(
        cfg=HubertPretrainingConfig(data="unused", labels=["km"], label_rate=50.0, normalize=ck.normalize),
        dictionaries=[d],
    )
    return SerkitHubertModel.build_model(cfg, task), cfg


def make_km_dictionary(n: int):
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(n):
        d.add_symbol(str(i))
    return d


@pytest.mark.parametrize("release", HUBERT)
def test_cpt_init_from_the_release(standins, release):
    import serkit.fairseq_ext  # noqa: F401
    from serkit.upstream.checkpoint import read_checkpoint

    ck = read_checkpoint(standins[release].path)
    model, cfg = _cpt_model(ck, str(standins[release].path))
    assert cfg.init_done is True
    own = model.state_dict()
    for k, v in ck.encoder_state.items():
        if k in own and not k.startswith(("label_embs_concat", "final_proj")):
            assert torch.equal(own[k], v), k
    assert own["label_embs_concat"].shape[0] == 54  # the new 50-label dictionary + 4 specials
    passed(release, "cpt")


def test_cpt_init_from_a_wav2vec2_release_is_refused(standins):
    ck = Namespace(model_cfg={"encoder_layers": 2}, normalize=False)
    with pytest.raises(
        SerkitError, match="a 'wav2vec2' checkpoint; continued pretraining starts from a HuBERT"
    ):
        _cpt_model(
            ck,
            str(standins["wav2vec_small.pt"].path),
            conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] * 2",
            encoder_embed_dim=64,
            encoder_ffn_embed_dim=128,
            encoder_attention_heads=2,
            final_dim=32,
        )


# ---------------------------------------------------------------------------------------------
# MFSN's TEC path: greedy CTC on the dumped last layer


def _fairseq_ctc_logits(s, wav: torch.Tensor) -> torch.Tensor:
    x = torch.nn.functional.layer_norm(wav, wav.shape[-1:]) if EXPECTED[s.release][1] else wav
    with torch.no_grad():
        out = s.model(source=x, padding_mask=None)
        return s.model.get_logits(out) if hasattr(s.model, "get_logits") else out["encoder_out"]


@pytest.mark.parametrize("release", CTC)
def test_greedy_ctc_from_dumped_features_equals_fairseqs_ctc_model(standins, wavs, dumps, release):
    import soundfile as sf

    from serkit.speechbrain.mfsn import ctc_greedy_transcripts
    from serkit.upstream.ctc import GreedyCtc
    from serkit.upstream.features import FeatureReader

    s = standins[release]
    assert dumps[release] is not None
    reader = FeatureReader(dumps[release])
    ctc = GreedyCtc(s.path, s.dict_path)
    texts = ctc_greedy_transcripts(s.path, s.dict_path, reader, 2, ["u0", "u1"])  # MFSN's call
    for utt in ("u0", "u1"):
        wav, _ = sf.read(wavs / f"{utt}.wav", dtype="float32")
        ref = _fairseq_ctc_logits(s, torch.from_numpy(wav)[None])[:, 0]  # (T, V)
        ours = ctc.logits(reader.load(utt, layers=[2])[0])
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
        assert texts[utt] == ctc.decode_ids(ref.argmax(-1).tolist()) and texts[utt]
        if release in PRE_LN:  # the projection reads the encoder's final layer norm, not the bare layer
            bare = torch.from_numpy(reader.load(utt, layers=[2])[0]) @ ctc.proj.weight.T + ctc.proj.bias
            assert not torch.allclose(bare, ref, atol=1e-2)
    with pytest.raises(SerkitError, match=r"reads the last layer \(2\)"):
        ctc_greedy_transcripts(s.path, s.dict_path, reader, 1, ["u0"])
    passed(release, "tec")


def test_greedy_ctc_names_a_pretrained_checkpoint(standins):
    s = standins["wav2vec_small.pt"]
    d = standins["wav2vec_small_960h.pt"].dict_path
    from serkit.upstream.ctc import GreedyCtc

    with pytest.raises(SerkitError, match="no CTC output layer"):
        GreedyCtc(s.path, d)


# ---------------------------------------------------------------------------------------------
# Hugging Face directories

HF_DIRS = {"wavlm-large/": "WavLM"}


def _hf_dir(root: Path, arch: str) -> Path:
    transformers = pytest.importorskip("transformers", reason="the serkit[hf] extra is not installed")
    common = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    if arch == "WavLM":  # microsoft/wavlm-large: layer-norm CNN, conv bias, pre-LN transformer
        cfg = transformers.WavLMConfig(
            **common, feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True
        )
        model = transformers.WavLMModel(cfg)
    elif arch == "Hubert":
        model = transformers.HubertModel(transformers.HubertConfig(**common))
    else:
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**common))
    out = root / arch
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_normalize": True,
                "feature_extractor_type": "Wav2Vec2FeatureExtractor",
                "feature_size": 1,
                "padding_side": "right",
                "padding_value": 0.0,
                "return_attention_mask": True,
                "sampling_rate": 16000,
            }
        )
    )
    return out


@pytest.mark.parametrize("arch", ["Hubert", "Wav2Vec2"])
def test_hf_directory_loads_and_dumps(tmp_path, wavs, arch):
    import soundfile as sf

    from serkit.upstream.features import FeatureReader

    d = _hf_dir(tmp_path, arch)
    up = load_upstream(d)
    assert (up.kind, up.num_layers, up.dim, up.normalize) == ("hf", 2, 32, True)
    out = _dump(d, wavs, tmp_path / "dump")
    reader = FeatureReader(out)
    wav, _ = sf.read(wavs / "u1.wav", dtype="float32")
    x = torch.nn.functional.layer_norm(torch.from_numpy(wav), (len(wav),))[None]
    with torch.no_grad():
        ref = up.model(x, output_hidden_states=True).hidden_states
    got = reader.load("u1")
    for layer in range(3):
        np.testing.assert_allclose(got[layer], ref[layer][0].numpy(), atol=1e-5, rtol=1e-5)


def test_wavlm_large_directory_as_released_dumps_its_layers(tmp_path, wavs):
    """microsoft/wavlm-large: pytorch_model.bin with weight_g/weight_v; layers equal its source model."""
    pytest.importorskip("transformers", reason="the serkit[hf] extra is not installed")
    import soundfile as sf

    from serkit.upstream.features import FeatureReader
    from serkit.upstream.standins import make_hf_wavlm_large

    s = make_hf_wavlm_large(tmp_path / "wavlm-large")
    assert sorted(p.name for p in s.path.iterdir()) == [
        "config.json",
        "preprocessor_config.json",
        "pytorch_model.bin",
    ]
    assert "encoder.pos_conv_embed.conv.weight_g" in torch.load(s.path / "pytorch_model.bin")
    reader = FeatureReader(_dump(s.path, wavs, tmp_path / "dump"))
    assert reader.layers == [0, 1, 2]
    for utt in ("u0", "u1"):
        wav, _ = sf.read(wavs / f"{utt}.wav", dtype="float32")
        x = torch.nn.functional.layer_norm(torch.from_numpy(wav), (len(wav),))[None]  # do_normalize
        with torch.no_grad():
            ref = s.model(x, output_hidden_states=True).hidden_states
        for layer in range(3):
            np.testing.assert_allclose(reader.load(utt)[layer], ref[layer][0].numpy(), atol=1e-5, rtol=1e-5)
    passed("wavlm-large/", "dump")


def test_hf_directory_with_missing_weights_is_refused(tmp_path):
    pytest.importorskip("transformers", reason="the serkit[hf] extra is not installed")
    from serkit.upstream.standins import make_hf_wavlm_large

    s = make_hf_wavlm_large(tmp_path / "wavlm-large")
    weights = torch.load(s.path / "pytorch_model.bin")
    del weights["encoder.pos_conv_embed.conv.weight_v"]
    torch.save(weights, s.path / "pytorch_model.bin")
    with pytest.raises(SerkitError, match=r"lack 1 tensor\(s\).*pos_conv_embed"):
        load_upstream(s.path)


# ---------------------------------------------------------------------------------------------
# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD stays where it is needed


def test_readme_table_is_rendered_from_the_committed_results():
    import importlib.util

    spec = importlib.util.spec_from_file_location("update_readme", REPO / "tools" / "update_readme.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    results = json.loads((REPO / "docs" / "released_checkpoints.json").read_text())
    table, bad = tool.checkpoint_table(results)
    assert bad == []  # every row a README recommends is green
    readme = (REPO / "README.md").read_text()
    assert f"<!-- CHECKPOINTS-START -->\n{table}\n<!-- CHECKPOINTS-END -->" in readme
    assert [r["release"] for r in results["rows"]] == RELEASES + list(HF_DIRS)
    assert {r["release"] for r in results["rows"] if r["recommended"]} == set(RECOMMENDED)


def test_trusted_unpickling_restores_the_previous_value(monkeypatch):
    from serkit.upstream.checkpoint import WEIGHTS_ONLY_ENV, trusted_unpickling

    monkeypatch.delenv(WEIGHTS_ONLY_ENV, raising=False)
    with trusted_unpickling():
        assert os.environ[WEIGHTS_ONLY_ENV] == "1"
    assert WEIGHTS_ONLY_ENV not in os.environ
    monkeypatch.setenv(WEIGHTS_ONLY_ENV, "0")
    with pytest.raises(RuntimeError), trusted_unpickling():
        raise RuntimeError("boom")
    assert os.environ[WEIGHTS_ONLY_ENV] == "0"


@pytest.mark.slow
def test_loading_leaves_the_process_environment_alone(standins, fold):
    """A fresh interpreter (nothing imported yet): load_upstream, serkit_ser_model, CPT init keep the env."""
    code = f"""
import os, sys
from argparse import Namespace
assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
from serkit.upstream import load_upstream
up = load_upstream({str(standins["hubert_base_ls960.pt"].path)!r})
up = load_upstream({str(standins["wav2vec_small_960h.pt"].path)!r})
assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ, "load_upstream"
from serkit.fairseq_ext.ser_model import read_upstream
read_upstream({str(standins["audio_base_ls.pt"].path)!r})
assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ, "read_upstream"
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "0"
load_upstream({str(standins["hubert_large_ll60k.pt"].path)!r})
assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "0"
print("OK")
"""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
