"""The fairseq plugin: registration through one import path, CPT initialisation, SER model/task/criterion."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
fairseq = pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

from serkit.utils import SerkitError  # noqa: E402
from tests.fixtures.fairseq_train import CLASSES, make_fold, make_tiny_hubert  # noqa: E402

pytestmark = [pytest.mark.fairseq, pytest.mark.usefixtures("one_thread")]

REPO = Path(__file__).resolve().parents[2]
USER_DIR = REPO / "plugins" / "serkit_fairseq"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fairseq_plugin")
    out = make_fold(root)
    out["tiny"] = make_tiny_hubert(root / "tiny_hubert.pt")
    return out


def _km_dictionary(n: int):
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(n):
        d.add_symbol(str(i))
    return d


def _cpt_model(init_from: str | None, **overrides):
    """A serkit_hubert built the way fairseq builds it: config merged with its dataclass, then build_model."""
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    import serkit.fairseq_ext  # noqa: F401
    from serkit.fairseq_ext.hubert_cpt import SerkitHubertConfig, SerkitHubertModel
    from serkit.upstream.tiny import TINY

    cfg = OmegaConf.structured(
        SerkitHubertConfig(
            label_rate=50.0, init_from=init_from, feature_grad_mult=0.0, **{**TINY, **overrides}
        )
    )
    task = Namespace(
        cfg=HubertPretrainingConfig(data="unused", labels=["km"], label_rate=50.0),
        dictionaries=[_km_dictionary(50)],
    )
    return SerkitHubertModel.build_model(cfg, task), cfg


# ---------------------------------------------------------------------------------------------
# registration


def test_registered_classes_are_serkits_and_prefixed():
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    import serkit.fairseq_ext as ext

    assert MODEL_REGISTRY["serkit_hubert"] is ext.hubert_cpt.SerkitHubertModel
    assert MODEL_REGISTRY["serkit_ser_model"] is ext.ser_model.SerModel
    assert TASK_REGISTRY["serkit_ser"] is ext.ser_task.SerTask
    assert CRITERION_REGISTRY["serkit_ser_ce"] is ext.ser_criterion.SerCrossEntropy
    registries = {"model": MODEL_REGISTRY, "task": TASK_REGISTRY, "criterion": CRITERION_REGISTRY}
    for kind, registry in registries.items():
        ours = {name for name, cls in registry.items() if cls.__module__.startswith("serkit")}
        assert ours == set(ext.REGISTERED[kind]), kind
        assert all(name.startswith("serkit_") for name in ours)
    assert issubclass(ext.SerkitHubertModel, fairseq.models.hubert.HubertModel)


def test_importing_the_plugin_again_is_harmless():
    from fairseq import utils
    from fairseq.models import MODEL_REGISTRY

    import serkit.fairseq_ext as ext

    before = MODEL_REGISTRY["serkit_hubert"]
    importlib.import_module("serkit_fairseq")
    importlib.import_module("serkit.fairseq_ext")
    for _ in range(2):
        utils.import_user_module(Namespace(user_dir=str(USER_DIR)))
    assert MODEL_REGISTRY["serkit_hubert"] is before is ext.SerkitHubertModel
    assert sys.modules["serkit_fairseq"].__path__ == [str(USER_DIR)]


@pytest.mark.parametrize("before", [None, "0"], ids=["unset", "0"])
def test_importing_the_plugin_leaves_weights_only_loading_on(before, tmp_path):
    """Issue 10: no process-wide TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; fairseq's checkpoints still load with
    weights_only (Dictionary allow-listed), a pickled foreign class still does not."""
    code = f"""
import os, sys, torch
from argparse import Namespace
from fairseq import utils
from fairseq.data.dictionary import Dictionary
utils.import_user_module(Namespace(user_dir={str(USER_DIR)!r}))
import serkit_fairseq, serkit.fairseq_ext
from serkit.fairseq_ext import predict
assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == {before!r}, "import set the variable"
d = Dictionary(); d.add_symbol("x")
torch.save({{"task_state": {{"dictionaries": [d]}}, "args": None}}, {str(tmp_path / "d.pt")!r})
state = torch.load({str(tmp_path / "d.pt")!r})  # as fairseq's load_checkpoint_to_cpu: no weights_only
assert state["task_state"]["dictionaries"][0].symbols == d.symbols
torch.save({{"args": Namespace(a=1)}}, {str(tmp_path / "n.pt")!r})
try:
    torch.load({str(tmp_path / "n.pt")!r})
except Exception as e:
    assert "Weights only load failed" in str(e), e
else:
    raise AssertionError("a pickled Namespace loaded with weights_only")
assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == {before!r}
print("OK")
"""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    if before is not None:
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = before
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_configs_also_work_with_fairseqs_argparse_bridge():
    """fairseq-train (argparse) and old checkpoints turn dataclasses into options: types must be real."""
    import argparse

    from fairseq.dataclass.utils import gen_parser_from_dataclass

    import serkit.fairseq_ext as ext

    for dc in (
        ext.SerTaskConfig,
        ext.SerModelConfig,
        ext.SerkitHubertConfig,
        ext.ser_criterion.SerCrossEntropyConfig,
    ):
        parser = argparse.ArgumentParser()
        gen_parser_from_dataclass(parser, dc())
        required = ["/fold"] if dc is ext.SerTaskConfig else []  # the task's data is positional
        parser.parse_args(required)


def test_user_dir_registers_nothing_itself():
    # fairseq imports a user dir under its folder name and also imports its tasks/ and models/
    # sub-folders: registrations there would run under a second module name.
    source = (USER_DIR / "__init__.py").read_text()
    assert "register_" not in source and "import serkit.fairseq_ext" in source
    assert not (USER_DIR / "tasks").exists() and not (USER_DIR / "models").exists()
    assert sorted(p.name for p in USER_DIR.iterdir() if p.name != "__pycache__") == ["__init__.py"]


# ---------------------------------------------------------------------------------------------
# serkit_hubert: start from a pretrained checkpoint, re-initialise the label-set parts


def test_cpt_init_loads_every_label_independent_weight(data):
    src = torch.load(data["tiny"], weights_only=False)["model"]
    model, cfg = _cpt_model(str(data["tiny"]))
    own = model.state_dict()
    label_dependent = {"label_embs_concat", "final_proj.weight", "final_proj.bias"}
    assert set(own) - set(src) == set()  # same modules
    for key, value in own.items():
        if key in label_dependent:
            continue
        assert torch.equal(value, src[key]), key
    # the new dictionary: 50 k-means labels + fairseq's 4 specials (the checkpoint had 25 + 4)
    assert own["label_embs_concat"].shape == (54, 32) and src["label_embs_concat"].shape == (29, 32)
    assert not torch.equal(own["final_proj.weight"], src["final_proj.weight"])
    assert cfg.init_done is True
    # CNN frozen: not trainable at all
    assert not any(p.requires_grad for p in model.feature_extractor.parameters())
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_cpt_init_can_keep_final_proj(data):
    src = torch.load(data["tiny"], weights_only=False)["model"]
    model, _ = _cpt_model(str(data["tiny"]), reinit_final_proj=False)
    assert torch.equal(model.state_dict()["final_proj.weight"], src["final_proj.weight"])


def test_cpt_init_rejects_a_different_architecture(data):
    with pytest.raises(SerkitError, match=r"encoder_layers=3 \(checkpoint: 2\)"):
        _cpt_model(str(data["tiny"]), encoder_layers=3)
    with pytest.raises(SerkitError, match="no such file"):
        _cpt_model(str(data["tiny"]) + ".missing")


def test_cpt_without_init_from_is_plain_hubert():
    model, cfg = _cpt_model(None)
    assert cfg.init_done is False
    assert model.label_embs_concat.shape == (54, 32)


def test_init_done_reaches_the_run_config(data):
    """fairseq builds from a merged copy of cfg.model; the flag must land in the config it saves."""
    from fairseq.dataclass.utils import merge_with_parent
    from omegaconf import OmegaConf

    from serkit.fairseq_ext.hubert_cpt import SerkitHubertConfig, _mark_init_done

    run = OmegaConf.create({"model": {"_name": "serkit_hubert", "init_from": str(data["tiny"])}})
    OmegaConf.set_struct(run, True)
    merged = merge_with_parent(SerkitHubertConfig(), run.model)
    _mark_init_done(merged)
    assert merged.init_done is True and run.model.init_done is True


# ---------------------------------------------------------------------------------------------
# serkit_ser: task, model, criterion


def _ser_task(fold: Path, **kw):
    from omegaconf import OmegaConf

    from serkit.fairseq_ext.ser_task import SerTask, SerTaskConfig

    cfg = OmegaConf.structured(SerTaskConfig(data=str(fold), **kw))
    return SerTask.setup_task(cfg)


def _ser_model(task, upstream: Path, **kw):
    from omegaconf import OmegaConf

    from serkit.fairseq_ext.ser_model import SerModelConfig

    cfg = OmegaConf.structured(SerModelConfig(upstream_path=str(upstream), **kw))
    cfg._name = "serkit_ser_model"
    return task.build_model(cfg), cfg


def test_task_reads_the_fold_and_batches_with_a_padding_mask(data):
    task = _ser_task(data["fold"])
    assert task.classes == CLASSES
    task.load_dataset("valid")
    ds = task.dataset("valid")
    assert ds.utts == [f"valid{i:02d}_{CLASSES[i % 4]}" for i in range(4)]
    batch = ds.collater([ds[0], ds[1]])
    lengths = [int(ds.sizes[0]), int(ds.sizes[1])]
    assert batch["net_input"]["source"].shape == (2, max(lengths))
    assert (~batch["net_input"]["padding_mask"]).sum(1).tolist() == lengths
    assert batch["target"].tolist() == [0, 1] and batch["subset"] == "valid"


def test_training_crops_come_from_seed_epoch_and_index_not_the_global_generator(data):
    """A resumed run restarts numpy's global generator: crops must not depend on it."""
    from omegaconf import OmegaConf

    task = _ser_task(data["fold"], max_sample_size=8000)
    task.load_dataset("train")
    ds = task.dataset("train")
    long = [i for i in range(len(ds)) if ds.sizes[i] > 8000]
    assert long

    def crops(epoch, global_seed):
        np.random.seed(global_seed)
        ds.set_epoch(epoch)
        return [ds[i]["source"].numpy().tobytes() for i in long]

    assert crops(3, 0) == crops(3, 12345)
    assert crops(3, 0) != crops(4, 0)
    assert all(len(c) == 8000 * 4 for c in crops(2, 0))
    # the seed is task.seed (common.seed in a training run)
    cfg = OmegaConf.merge({"common": {"seed": 7}}, {"task": OmegaConf.structured(task.cfg)})
    seeded = type(task).setup_task(cfg.task)
    seeded.load_dataset("train")
    assert seeded.dataset("train").seed == 7 and ds.seed == 1
    other = seeded.dataset("train")
    other.set_epoch(3)
    assert [other[i]["source"].numpy().tobytes() for i in long] != crops(3, 0)


def test_task_names_the_line_of_an_unknown_label(data, tmp_path):
    import shutil

    fold = tmp_path / "fold"
    shutil.copytree(data["fold"], fold)
    lines = (fold / "valid.emo").read_text().splitlines()
    lines[2] = "fru"
    (fold / "valid.emo").write_text("\n".join(lines) + "\n")
    with pytest.raises(SerkitError, match=r"valid\.emo:3: label 'fru' is not in dict"):
        _ser_task(fold).load_dataset("valid")


@pytest.mark.parametrize(
    "kw",
    [
        dict(head="linear", pooling="attention"),
        dict(head="linear", pooling="mean", weighted_layer_sum=True),
        dict(head="shiftcnn", layer=1),
    ],
)
def test_ser_model_gives_the_same_logits_padded_or_alone(data, kw):
    task = _ser_task(data["fold"])
    model, cfg = _ser_model(task, data["tiny"], **kw)
    model.eval()
    task.load_dataset("test")
    ds = task.dataset("test")
    batch = ds.collater([ds[i] for i in range(4)])
    logits = model(**batch["net_input"])["logits"]
    assert logits.shape == (4, 4)
    for i in range(4):
        alone = ds.collater([ds[i]])
        torch.testing.assert_close(model(**alone["net_input"])["logits"][0], logits[i], atol=1e-4, rtol=1e-4)
    # the CNN is frozen; the upstream's config travels with the model
    assert not any(p.requires_grad for p in model.upstream.feature_extractor.parameters())
    assert model.upstream_cfg.model._name == "hubert" and cfg.upstream_cfg is not None
    assert model.upstream.final_proj is None  # pretraining modules dropped


def test_ser_model_rebuilds_from_its_config_without_the_upstream_file(data, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    upstream = tmp_path / "up.pt"
    shutil.copy(data["tiny"], upstream)
    task = _ser_task(data["fold"])
    model, cfg = _ser_model(task, upstream)
    upstream.unlink()
    again = task.build_model(OmegaConf.create(OmegaConf.to_container(cfg)))  # as a checkpoint's cfg
    again.load_state_dict(model.state_dict())
    x = torch.randn(1, 16000)
    model.eval(), again.eval()
    torch.testing.assert_close(model(x)["logits"], again(x)["logits"])


def test_criterion_ua_wa_are_computed_over_the_whole_set():
    from fairseq.logging import metrics

    from serkit.fairseq_ext.ser_criterion import SerCrossEntropy

    # batch 1: 3 of class 0, all right; batch 2: 1 of class 0 wrong, 1 of class 1 right.
    logs = [
        {"loss": 1.0, "sample_size": 3, "_correct_0": 3, "_total_0": 3, "_correct_1": 0, "_total_1": 0},
        {"loss": 2.0, "sample_size": 2, "_correct_0": 0, "_total_0": 1, "_correct_1": 1, "_total_1": 1},
    ]
    with metrics.aggregate(new_root=True) as agg:
        for log in logs:  # fairseq's validation reduces batch by batch into one aggregator
            SerCrossEntropy.reduce_metrics([log])
        values = agg.get_smoothed_values()
    # whole set: class 0 recall 3/4, class 1 recall 1/1 -> UA 87.5; WA 4/5 = 80
    assert values["ua"] == pytest.approx(87.5) and values["wa"] == pytest.approx(80.0)
    assert values["loss"] == pytest.approx(3.0 / 5 / math.log(2), abs=1e-3)
    assert not any(k.startswith("_") for k in values)  # the counts stay out of the log


def test_criterion_counts_and_probabilities(data):
    from serkit.fairseq_ext.ser_criterion import SerCrossEntropy

    task = _ser_task(data["fold"])
    model, _ = _ser_model(task, data["tiny"])
    task.load_dataset("valid")
    ds = task.dataset("valid")
    sample = ds.collater([ds[i] for i in range(4)])
    crit = SerCrossEntropy(task)
    model.eval()
    loss, n, log = crit(model, sample)
    assert n == 4 and sum(log[f"_total_{k}"] for k in range(4)) == 4
    assert log["_probs"].shape == (4, 4) and torch.allclose(log["_probs"].sum(1), torch.ones(4))
    model.train()
    assert "_probs" not in crit(model, sample)[2]


def test_task_writes_a_prediction_file_once_a_subset_is_complete(data, tmp_path):
    from serkit.fairseq_ext.ser_criterion import SerCrossEntropy

    task = _ser_task(data["fold"], predictions_dir=str(tmp_path / "pred"))
    model, _ = _ser_model(task, data["tiny"])
    crit = SerCrossEntropy(task)
    task.load_dataset("test")
    ds = task.dataset("test")
    task.begin_valid_epoch(3, model)
    task.valid_step(ds.collater([ds[2], ds[0]]), model, crit)
    assert not (tmp_path / "pred").exists()
    _, _, log = task.valid_step(ds.collater([ds[1], ds[3]]), model, crit)
    assert "_probs" not in log
    rows = (tmp_path / "pred" / "test.epoch003.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["utt", "label", "pred", *CLASSES]
    assert [r.split("\t")[0] for r in rows[1:]] == ds.utts  # tsv order
    assert [r.split("\t")[1] for r in rows[1:]] == (data["fold"] / "test.emo").read_text().split()
    for r in rows[1:]:
        probs = [float(x) for x in r.split("\t")[3:]]
        assert abs(sum(probs) - 1) < 1e-4 and r.split("\t")[2] == CLASSES[int(np.argmax(probs))]


def _tiny_wav2vec2_checkpoint(path: Path) -> Path:
    """A wav2vec 2.0 in the large model's style: pre-LN transformer, layer-norm CNN, normalised input."""
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
    from omegaconf import OmegaConf

    from serkit.upstream.tiny import TINY

    cfg = Wav2Vec2Config(
        **TINY,
        extractor_mode="layer_norm",
        layer_norm_first=True,
        conv_bias=True,
        latent_vars=8,
        latent_groups=2,
    )
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg)
    model_cfg = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True) | {"_name": "wav2vec2"}
    torch.save(
        {
            "cfg": {
                "model": model_cfg,
                "task": {
                    "_name": "audio_pretraining",
                    "data": "/nowhere",
                    "normalize": True,
                    "sample_rate": 16000,
                },
            },
            "model": model.state_dict(),
            "args": None,
            "extra_state": {},
            "optimizer_history": [
                {"criterion_name": "x", "optimizer_name": "y", "lr_scheduler_state": {}, "num_updates": 0}
            ],
        },
        path,
    )
    return path


def test_ser_model_on_a_wav2vec2_upstream(data, tmp_path):
    ckpt = _tiny_wav2vec2_checkpoint(tmp_path / "w2v.pt")
    src = torch.load(ckpt, weights_only=False)["model"]
    task = _ser_task(data["fold"])
    model, _ = _ser_model(task, ckpt, pooling="mean")
    assert model.normalize and model.upstream_cfg.model._name == "wav2vec2"
    own = model.upstream.state_dict()
    assert own and all(torch.equal(v, src[k]) for k, v in own.items())
    assert not any(k.startswith(("quantizer.", "project_q.")) for k in own)
    model.eval()
    task.load_dataset("valid")
    ds = task.dataset("valid")
    batch = ds.collater([ds[i] for i in range(3)])
    logits = model(**batch["net_input"])["logits"]
    for i in range(3):
        alone = model(**ds.collater([ds[i]])["net_input"])["logits"][0]
        torch.testing.assert_close(alone, logits[i], atol=1e-4, rtol=1e-4)
    # normalised input: the waveform's scale does not matter
    x = torch.randn(1, 12000)
    torch.testing.assert_close(model(x)["logits"], model(3 * x)["logits"], atol=1e-4, rtol=1e-4)
