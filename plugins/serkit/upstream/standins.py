"""Random-weight stand-ins for the released fairseq speech checkpoints, in each release's on-disk form.

Each builder writes a file with the structure of one published checkpoint (top-level keys, ``args``
Namespace or ``cfg`` dict, nested ``w2v_args``, ``task_state`` dictionaries or their absence, label
embedding sizes, the authors' cluster paths in ``task.data``/``label_dir``, weight-norm key names of the
positional convolution) and returns a :class:`StandIn` holding the fairseq model it was saved from, so
tests can compare serkit against fairseq's own ``extract_features`` on the same weights.

Dimensions are tiny by default (``size="tiny"``: 7 convs of 32 channels with the 320x stride, 2
transformer layers of 64 dims); ``size="release"`` gives the release's own dimensions (``"base"`` or
``"large"`` forces one).

Where the structure comes from:

- model/task fields: fairseq's dataclasses (``Wav2Vec2Config``, ``HubertConfig``, ``Data2VecAudioConfig``,
  ``Wav2Vec2CtcConfig``, ``HubertCtcConfig``, ``AudioPretrainingConfig``, ``HubertPretrainingConfig``)
  with the values of the published configs: torchaudio's test assets
  (``test/torchaudio_unittest/assets/wav2vec2/fairseq/*.json``, generated from the real files) for
  wav2vec 2.0 and HuBERT, fairseq's ``examples/data2vec/config/audio/pretraining/base_librispeech.yaml``
  for data2vec;
- ``args`` Namespace vs ``cfg`` dict: releases before fairseq's Hydra move (all wav2vec 2.0 files, 2020)
  store argparse ``args`` with no ``cfg`` and no ``task_state``; the CTC ones nest the pretraining
  ``args`` as ``w2v_args`` (what fairseq 0.10's ``Wav2VecEncoder`` stored); HuBERT (2021) and data2vec
  (2022) store ``cfg`` as a plain dict (fairseq's trainer saves ``OmegaConf.to_container(cfg)``);
- ``task_state``: what fairseq's trainer saves (``task.state_dict()``): HuBERT pretraining ``{"dictionaries":
  [504-entry Dictionary]}`` (500 k-means labels + 4 specials; torchaudio's ``num_classes: [504]``); a
  fine-tuning task holds ``target_dictionary`` (the 28 letters of ``dict.ltr.txt`` + 4 specials = 32
  CTC outputs); ``audio_pretraining`` has no state (``{}``);
- weights: the state_dict of the fairseq model the config describes, as the trainer saved it: data2vec
  with its EMA teacher (``_ema``), CTC models after ``remove_pretraining_modules`` (a HuBERT CTC keeps its
  ``label_embs_concat``, which that method does not remove), the positional convolution under
  ``weight_g``/``weight_v`` (``nn.utils.weight_norm``, which every fairseq release used);
  ``pos_conv_weight_norm="parametrizations"`` writes the names torch's newer weight norm gives them.
"""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .tiny import encoder_dims

if TYPE_CHECKING:
    import torch
    from _typeshed import DataclassInstance
    from omegaconf import DictConfig

#: the letters of fairseq's dict.ltr.txt (LibriSpeech CTC fine-tuning), in its order
LETTERS = [
    "|",
    "E",
    "T",
    "A",
    "O",
    "N",
    "I",
    "H",
    "S",
    "R",
    "D",
    "L",
    "U",
    "M",
    "W",
    "C",
    "F",
    "G",
    "Y",
    "P",
    "B",
    "V",
    "K",
    "'",
    "X",
    "J",
    "Q",
    "Z",
]
CONV_BASE = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"
SIZES = {
    "tiny": encoder_dims("[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] * 2", 2, 64, 128, 2),
    "base": encoder_dims(CONV_BASE, 12, 768, 3072, 12),
    "large": encoder_dims(CONV_BASE, 24, 1024, 4096, 16),
}
#: the authors' cluster paths as the published configs show them (torchaudio's JSONs keep save_dir and
#: HuBERT-Large's label_dir; the data paths are of the same kind: absolute, and absent here)
W2V_SAVE_DIR = "/checkpoint/abaevski/asr/speechbert_raw_250k_q5/best_ld_400k"
W2V_DATA = "/checkpoint/abaevski/data/speech/libri/960h/wav2vec/raw"
HUBERT_DATA = "/checkpoint/wnhsu/data/librispeech/960h/iter/250K_50hz_km100_mp0_65_v2"
HUBERT_LABEL_DIR = "/checkpoint/wnhsu/experiments/hubert/kmeans_20210121/km_dataset_librivox.model_iter_2.all"
D2V_DATA = "/private/home/abaevski/data/librispeech/full"


@dataclass
class StandIn:
    """A stand-in file and what it stands for."""

    release: str  # the published file name it imitates
    path: Path
    kind: str  # hubert | wav2vec2 | data2vec
    ctc: bool
    model: torch.nn.Module | None = None  # the model whose weights were saved (Wav2VecCtc/HubertCtc if CTC)
    encoder: torch.nn.Module | None = None  # its encoder (the inner model of a CTC file)
    dict_path: Path | None = None  # dict.ltr.txt of a CTC file
    info: dict = field(default_factory=dict)


def _seed_noise(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (layer norms and biases included), so a mis-loaded tensor shows."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _root_cfg(
    task_dc: DataclassInstance,
    model_dc: DataclassInstance,
    task_name: str,
    model_name: str,
    **sections: dict[str, object],
) -> DictConfig:
    """A full fairseq run config (what the trainer saves) with this task and model, via the dataclasses."""
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.structured(FairseqConfig)
    cfg.task = OmegaConf.structured(task_dc)
    cfg.model = OmegaConf.structured(model_dc)
    with open_dict(cfg):
        cfg.task._name = task_name
        cfg.model._name = model_name
        for name, values in sections.items():
            for k, v in values.items():
                cfg[name][k] = v
    return cfg


def _save(state: dict, out: Path) -> Path:
    import torch

    from ..utils import atomic_file

    with atomic_file(out, "wb") as f:
        torch.save(state, f)
    return out


def _history(criterion: str, optimizer: str, num_updates: int) -> list:
    return [
        {
            "criterion_name": criterion,
            "optimizer_name": optimizer,
            "lr_scheduler_state": {"best": None},
            "num_updates": num_updates,
        }
    ]


def _hydra_state(cfg: DictConfig, weights: dict, criterion: str, num_updates: int, task_state: dict) -> dict:
    """A Hydra-era checkpoint as fairseq's trainer saves it: ``cfg`` a plain dict, no ``args``."""
    from omegaconf import OmegaConf

    return {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": weights,
        "criterion": None,
        "optimizer_history": _history(criterion, "FairseqAdam", num_updates),
        "task_state": task_state,
        "extra_state": {"metrics": {}, "previous_training_time": 0},
        "last_optimizer_state": None,
    }


def _argparse_state(args: Namespace, weights: dict, criterion: str, num_updates: int) -> dict:
    """An argparse-era checkpoint (2020): ``args`` Namespace, no ``cfg``, no ``task_state``."""
    return {
        "args": args,
        "model": weights,
        "optimizer_history": _history(criterion, "FairseqAdam", num_updates),
        "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }


def _ctc_fields(
    mask_prob: float, mask_channel_prob: float, freeze_finetune_updates: int, **more: float
) -> dict:
    """Fields the published CTC finetuning configs share (layerdrop 0.1, frozen CNN, 64-channel masks)."""
    return {
        "apply_mask": True,
        "mask_prob": mask_prob,
        "mask_channel_prob": mask_channel_prob,
        "mask_channel_length": 64,
        "layerdrop": 0.1,
        "activation_dropout": 0.1,
        "feature_grad_mult": 0.0,
        "freeze_finetune_updates": freeze_finetune_updates,
        **more,
    }


def _standin(
    release: str, out: str | os.PathLike, state: dict, kind: str, model: torch.nn.Module, info: dict
) -> StandIn:
    """Save ``state`` to ``out``; a CTC model (``w2v_encoder``) gets its letter dictionary beside it."""
    path = _save(state, Path(out))
    inner = getattr(model, "w2v_encoder", None)
    if inner is None:
        return StandIn(release, path, kind, False, model.eval(), model.eval(), info=info)
    dict_path = write_letter_dict(Path(out).parent / "dict.ltr.txt")
    return StandIn(release, path, kind, True, model.eval(), inner.w2v_model.eval(), dict_path, info=info)


def _dictionary(symbols: Iterable[str]) -> object:  # a fairseq Dictionary (not imported here)
    from fairseq.data import Dictionary

    d = Dictionary()
    for s in symbols:
        d.add_symbol(s)
    return d


def write_letter_dict(path: Path) -> Path:
    path.write_text("".join(f"{c} {100000 - 100 * i}\n" for i, c in enumerate(LETTERS)))
    return path


def _noisy_weights(model: torch.nn.Module, seed: int, pos_conv_weight_norm: str) -> dict:
    """``model``'s weights after :func:`_seed_noise`, the positional convolution's under the given naming."""
    _seed_noise(model, seed)
    weights = model.state_dict()
    return _parametrized_names(weights) if pos_conv_weight_norm == "parametrizations" else weights


def _parametrized_names(weights: dict) -> dict:
    names = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
    out = {}
    for k, v in weights.items():
        for old, new in names.items():
            if k.endswith("pos_conv.0." + old):
                k = k[: -len(old)] + new
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# wav2vec 2.0 (argparse era: args Namespace, no cfg, no task_state)

#: Wav2Vec2Config values of the published configs (torchaudio's wav2vec_small.json, libri960_big.json,
#: wav2vec_vox_new.json); dimensions come from SIZES
W2V_FIELDS = (
    "size normalize extractor_mode layer_norm_first conv_bias dropout encoder_layerdrop feature_grad_mult "
    "final_dim latent_temp"
).split()
_W2V_PRETRAINED_ROWS = {
    "wav2vec_small.pt": ("base", False, "default", False, False, 0.1, 0.05, 0.1, 256, (2, 0.5, 0.999995)),
    "libri960_big.pt": ("large", False, "default", False, False, 0.0, 0.2, 0.1, 768, (2, 0.5, 0.999995)),
    "wav2vec_vox_new.pt": ("large", True, "layer_norm", True, True, 0.0, 0.0, 1.0, 768, (2, 0.1, 0.999995)),
}
W2V_PRETRAINED = {release: dict(zip(W2V_FIELDS, row)) for release, row in _W2V_PRETRAINED_ROWS.items()}
#: CTC releases -> the pretrained model they were finetuned from (torchaudio's wav2vec_small_960h.json,
#: wav2vec_large_lv60k_960h.json: the outer model's fields)
W2V_CTC = {
    "wav2vec_small_960h.pt": dict(
        pretrained="wav2vec_small.pt", mask_prob=0.5, mask_channel_prob=0.1, freeze_finetune_updates=0
    ),
    "wav2vec2_vox_960h_new.pt": dict(
        pretrained="wav2vec_vox_new.pt", mask_prob=0.5, mask_channel_prob=0.25, freeze_finetune_updates=10000
    ),
}


def _w2v_model_config(release: str, size: str) -> DataclassInstance:  # a Wav2Vec2Config
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config

    spec = dict(W2V_PRETRAINED[release])
    spec.pop("normalize")
    release_size = spec.pop("size")
    dims = SIZES[release_size if size == "release" else size]
    if size == "tiny":
        spec["final_dim"] = 32
    return Wav2Vec2Config(
        **dims,
        **spec,
        attention_dropout=0.1,
        activation_dropout=0.0,
        dropout_input=0.1,
        dropout_features=0.1,
        mask_prob=0.65,
        latent_vars=8 if size == "tiny" else 320,
    )


#: the Wav2Vec2Config fields the published configs list (torchaudio's wav2vec_small.json); fields fairseq
#: added later are absent from the 2020 Namespace
W2V_ARG_FIELDS = (
    "activation_dropout activation_fn attention_dropout codebook_negatives conv_bias "
    "conv_feature_layers conv_pos conv_pos_groups cross_sample_negatives dropout dropout_features "
    "dropout_input encoder_attention_heads encoder_embed_dim encoder_ffn_embed_dim encoder_layerdrop "
    "encoder_layers extractor_mode feature_grad_mult final_dim latent_dim latent_groups latent_temp "
    "latent_vars layer_norm_first logit_temp mask_channel_before mask_channel_length "
    "mask_channel_min_space mask_channel_other mask_channel_prob mask_channel_selection mask_length "
    "mask_min_space mask_other mask_prob mask_selection negatives_from_everywhere "
    "no_mask_channel_overlap no_mask_overlap num_negatives quantize_input quantize_targets "
    "quantizer_depth quantizer_factor same_quantizer target_glu"
).split()


def _argparse_values(dc_obj: DataclassInstance) -> dict:
    """A dataclass's values as argparse stored them in 2020: tuples as strings, enums as names."""
    import enum

    out = {}
    for k, v in asdict(dc_obj).items():
        if k not in W2V_ARG_FIELDS:
            continue
        if isinstance(v, enum.Enum):
            v = v.value
        if isinstance(v, tuple):
            v = "(" + ",".join(str(x) for x in v) + ")"  # e.g. --latent-temp '(2,0.5,0.999995)'
        out[k] = v
    return out


#: argparse-era options of the trainer and the wav2vec 2.0 recipe, as in the published w2v_args
_W2V_TRAIN_ARGS = {
    "no_progress_bar": False,
    "log_interval": 200,
    "log_format": "json",
    "seed": 5,
    "fp16": True,
    "distributed_world_size": 64,
    "distributed_init_method": "tcp://learnfair2106:55498",
    "save_dir": W2V_SAVE_DIR,
    "save_interval_updates": 25000,
    "keep_interval_updates": 1,
    "no_epoch_checkpoints": True,
    "max_tokens": 1400000,
    "max_update": 400000,
    "lr": [0.0005],
    "optimizer": "adam",
    "adam_betas": "(0.9,0.98)",
    "adam_eps": 1e-06,
    "weight_decay": 0.01,
    "lr_scheduler": "polynomial_decay",
    "warmup_updates": 32000,
    "total_num_update": 400000,
    "num_workers": 6,
    "skip_invalid_size_inputs_valid_test": True,
    "user_dir": None,
    "criterion": "wav2vec",
    "infonce": True,
    "log_keys": '["prob_perplexity","code_perplexity","temp"]',
    "loss_weights": "[0.1, 10]",
}


def _w2v_pretrain_args(release: str, model_cfg: DataclassInstance) -> Namespace:
    normalize = W2V_PRETRAINED[release]["normalize"]
    return Namespace(
        **_W2V_TRAIN_ARGS,
        **_argparse_values(model_cfg),
        arch="wav2vec2",
        task="audio_pretraining",
        data=W2V_DATA,
        sample_rate=16000,
        normalize=normalize,
        max_sample_size=250000,
        min_sample_size=32000,
        enable_padding=False,
        labels=None,
    )


def make_wav2vec2_pretrained(
    out: str | os.PathLike,
    release: str = "wav2vec_small.pt",
    size: str = "tiny",
    seed: int = 0,
    pos_conv_weight_norm: str = "legacy",
) -> StandIn:
    import torch
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model

    torch.manual_seed(seed)
    model_cfg = _w2v_model_config(release, size)
    model = Wav2Vec2Model(model_cfg)
    weights = _noisy_weights(model, seed, pos_conv_weight_norm)
    state = _argparse_state(_w2v_pretrain_args(release, model_cfg), weights, "Wav2vecCriterion", 400000)
    info = {"format": "args Namespace", "normalize": W2V_PRETRAINED[release]["normalize"]}
    return _standin(release, out, state, "wav2vec2", model, info)


def make_wav2vec2_ctc(
    out: str | os.PathLike, release: str = "wav2vec_small_960h.pt", size: str = "tiny", seed: int = 0
) -> StandIn:
    """A CTC release: args Namespace, w2v_args the pretraining Namespace, weights under w2v_encoder."""
    import torch
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
    from fairseq.tasks.audio_pretraining import AudioPretrainingConfig
    from omegaconf import OmegaConf

    spec = dict(W2V_CTC[release])
    pretrained = spec.pop("pretrained")
    normalize = W2V_PRETRAINED[pretrained]["normalize"]
    torch.manual_seed(seed)
    inner_model_cfg = _w2v_model_config(pretrained, size)
    inner = _root_cfg(
        AudioPretrainingConfig(data=W2V_DATA, normalize=normalize),
        inner_model_cfg,
        "audio_pretraining",
        "wav2vec2",
    )
    ctc_fields = _ctc_fields(
        **spec, mask_length=10, dropout=0.0, attention_dropout=0.0, dropout_input=0.0, final_dropout=0.0
    )
    root = _root_cfg(
        AudioPretrainingConfig(data=W2V_DATA, normalize=normalize, labels="ltr"),
        Wav2Vec2CtcConfig(w2v_path="", **ctc_fields),
        "audio_pretraining",
        "wav2vec_ctc",
    )
    root.model.w2v_args = inner
    task = Namespace(target_dictionary=_dictionary(LETTERS))
    model = Wav2VecCtc.build_model(root.model, task)
    _seed_noise(model, seed)
    ctc_args = {k: v for k, v in ctc_fields.items()}
    args = Namespace(
        **_W2V_TRAIN_ARGS
        | dict(
            criterion="ctc",
            max_update=320000,
            lr=[0.00003],
            lr_scheduler="tri_stage",
            save_dir=W2V_SAVE_DIR + "/ft_960h",
        ),
        **ctc_args,
        arch="wav2vec_ctc",
        task="audio_pretraining",
        data=W2V_DATA,
        labels="ltr",
        normalize=normalize,
        sample_rate=16000,
        max_sample_size=None,
        min_sample_size=None,
        no_pretrained_weights=False,
        zero_infinity=True,
        post_process="letter",
        w2v_args=_w2v_pretrain_args(pretrained, inner_model_cfg),
    )
    assert OmegaConf.is_config(model.w2v_encoder.w2v_model.cfg)
    state = _argparse_state(args, model.state_dict(), "CtcCriterion", 320000)
    info = {"format": "args Namespace, nested w2v_args Namespace", "normalize": normalize}
    return _standin(release, out, state, "wav2vec2", model, info)


# ---------------------------------------------------------------------------------------------
# HuBERT (Hydra era: cfg dict, task_state)

#: HubertConfig values of torchaudio's hubert_base_ls960.json / hubert_large_ll60k.json
HUBERT_FIELDS = (
    "size final_dim extractor_mode layer_norm_first untie_final_proj dropout attention_dropout dropout_input "
    "dropout_features encoder_layerdrop feature_grad_mult skip_nomask"
).split()
_HUBERT_ROWS = {
    "hubert_base_ls960.pt": ("base", 256, "default", False, False, 0.1, 0.1, 0.1, 0.1, 0.05, 0.1, False),
    "hubert_large_ll60k.pt": ("large", 768, "layer_norm", True, True, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, True),
}
HUBERT = {release: dict(zip(HUBERT_FIELDS, row)) for release, row in _HUBERT_ROWS.items()}
#: HubertPretrainingConfig values (labels, label_dir, normalize) of the same JSONs
HUBERT_TASK = {
    "hubert_base_ls960.pt": dict(labels=["layer6.km500"], label_dir=None, normalize=False),
    "hubert_large_ll60k.pt": dict(labels=["lyr9.km500"], label_dir=HUBERT_LABEL_DIR, normalize=True),
}
KM_LABELS = 500  # 500 k-means units: a 504-entry dictionary with fairseq's 4 specials


def _hubert_cfgs(release: str, size: str) -> tuple[DataclassInstance, DataclassInstance]:
    from fairseq.models.hubert.hubert import HubertConfig
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    spec = dict(HUBERT[release])
    release_size = spec.pop("size")
    dims = SIZES[release_size if size == "release" else size]
    if size == "tiny":
        spec["final_dim"] = 32
    task_dc = HubertPretrainingConfig(
        data=HUBERT_DATA,
        label_rate=50.0,
        sample_rate=16000,
        max_sample_size=250000,
        min_sample_size=32000,
        **HUBERT_TASK[release],
    )
    model_dc = HubertConfig(label_rate=50.0, mask_prob=0.8, **dims, **spec)
    return task_dc, model_dc


def make_hubert_pretrained(
    out: str | os.PathLike,
    release: str = "hubert_base_ls960.pt",
    size: str = "tiny",
    seed: int = 0,
    pos_conv_weight_norm: str = "legacy",
) -> StandIn:
    import torch
    from fairseq.models.hubert.hubert import HubertModel

    torch.manual_seed(seed)
    task_dc, model_dc = _hubert_cfgs(release, size)
    cfg = _root_cfg(
        task_dc,
        model_dc,
        "hubert_pretraining",
        "hubert",
        common={"seed": 1337, "fp16": True, "log_format": "json"},
        optimization={"max_update": 400000, "lr": [0.0005]},
        checkpoint={"save_dir": HUBERT_DATA.replace("/data/", "/experiments/")},
    )
    dictionary = _dictionary(str(i) for i in range(KM_LABELS))
    model = HubertModel(cfg.model, cfg.task, [dictionary])
    weights = _noisy_weights(model, seed, pos_conv_weight_norm)
    state = _hydra_state(cfg, weights, "HubertCriterion", 400000, {"dictionaries": [dictionary]})
    info = {"format": "cfg dict, task_state dictionaries [504]", "normalize": task_dc.normalize}
    return _standin(release, out, state, "hubert", model, info)


def make_hubert_ctc(
    out: str | os.PathLike,
    release: str = "hubert_large_ll60k_finetune_ls960.pt",
    size: str = "tiny",
    seed: int = 0,
) -> StandIn:
    """hubert_ctc: cfg dict, w2v_args = the pretraining run's full cfg (labels on the authors' cluster)."""
    import torch
    from fairseq.models.hubert.hubert_asr import HubertCtc, HubertCtcConfig
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask
    from omegaconf import open_dict

    torch.manual_seed(seed)
    pre = "hubert_large_ll60k.pt"
    task_dc, model_dc = _hubert_cfgs(pre, size)
    inner = _root_cfg(task_dc, model_dc, "hubert_pretraining", "hubert")
    ft_task = HubertPretrainingConfig(
        data=HUBERT_DATA.replace("iter", "ft"),
        fine_tuning=True,
        labels=["ltr"],
        label_dir=HUBERT_DATA.replace("iter", "ft"),
        normalize=True,
        single_target=True,
        label_rate=-1.0,
    )
    ctc_fields = _ctc_fields(mask_prob=0.5, mask_channel_prob=0.25, freeze_finetune_updates=10000)
    root = _root_cfg(
        ft_task,
        HubertCtcConfig(w2v_path="/checkpoint/wnhsu/hubert/hubert_large_ll60k.pt", **ctc_fields),
        "hubert_pretraining",
        "hubert_ctc",
    )
    root.model.w2v_args = inner
    letters = _dictionary(LETTERS)
    task = HubertPretrainingTask(root.task)
    # fine-tuning started from the pretrained file: its pretraining dictionaries reached the encoder
    task.state.merge_state_dict(
        {"target_dictionary": letters, "dictionaries": [_dictionary(str(i) for i in range(KM_LABELS))]}
    )
    build = root.copy()
    with open_dict(build.model):  # fairseq 0.12's HubertEncoder reads a field only its seq2seq config has
        build.model.autoregressive = False
    model = HubertCtc.build_model(build.model, task)
    _seed_noise(model, seed)
    state = _hydra_state(root, model.state_dict(), "CtcCriterion", 320000, {"target_dictionary": letters})
    info = {"format": "cfg dict, w2v_args cfg, task_state target_dictionary", "normalize": True}
    return _standin(release, out, state, "hubert", model, info)


# ---------------------------------------------------------------------------------------------
# data2vec audio (cfg dict; the pretrained file carries its EMA teacher)

#: Data2VecAudioConfig values of fairseq's examples/data2vec/config/audio/pretraining/base_librispeech.yaml
D2V = dict(
    extractor_mode="layer_norm",
    encoder_layerdrop=0.05,
    dropout_input=0.0,
    dropout_features=0.0,
    feature_grad_mult=1.0,
    mask_prob=0.65,
    mask_length=10,
    loss_beta=0,
    loss_scale=None,
    instance_norm_target_layer=True,
    average_top_k_layers=8,
    pos_conv_depth=5,
    conv_pos=95,
    ema_decay=0.999,
    ema_end_decay=0.9999,
    ema_anneal_end_step=30000,
    ema_transformer_only=True,
    ema_layers_only=True,
    require_same_masks=True,
    mask_dropout=0.0,
)


def _d2v_cfgs(size: str) -> tuple[DataclassInstance, DataclassInstance]:
    from fairseq.tasks.audio_pretraining import AudioPretrainingConfig

    from .checkpoint import register_models

    register_models()
    from fairseq.models import MODEL_DATACLASS_REGISTRY

    dc = MODEL_DATACLASS_REGISTRY["data2vec_audio"]
    dims = dict(SIZES["base" if size == "release" else size])
    if size == "tiny":
        dims["average_top_k_layers"] = 2
    spec = {**D2V, **dims}
    task_dc = AudioPretrainingConfig(
        data=D2V_DATA, max_sample_size=320000, min_sample_size=32000, normalize=True
    )
    return task_dc, dc(**spec)


def make_data2vec_pretrained(
    out: str | os.PathLike, release: str = "audio_base_ls.pt", size: str = "tiny", seed: int = 0
) -> StandIn:
    import torch

    from .checkpoint import register_models

    register_models()
    from fairseq.models import MODEL_REGISTRY

    torch.manual_seed(seed)
    task_dc, model_dc = _d2v_cfgs(size)
    cfg = _root_cfg(
        task_dc,
        model_dc,
        "audio_pretraining",
        "data2vec_audio",
        optimization={"max_update": 400000, "lr": [0.0005]},
        common={"fp16": True},
    )
    model = MODEL_REGISTRY["data2vec_audio"](cfg.model)
    _seed_noise(model, seed)
    model.set_num_updates(400000)  # builds the EMA teacher, saved as "_ema" (as the trainer's checkpoints)
    state = _hydra_state(cfg, model.state_dict(), "ModelCriterion", 400000, {})
    info = {"format": "cfg dict, _ema teacher", "normalize": True}
    return _standin(release, out, state, "data2vec", model, info)


def make_data2vec_ctc(
    out: str | os.PathLike, release: str = "audio_base_ls_960h.pt", size: str = "tiny", seed: int = 0
) -> StandIn:
    import torch
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
    from fairseq.tasks.audio_finetuning import AudioFinetuningConfig

    torch.manual_seed(seed)
    task_dc, model_dc = _d2v_cfgs(size)
    inner = _root_cfg(
        task_dc,
        model_dc,
        "audio_pretraining",
        "data2vec_audio",
        optimization={"max_update": 400000, "lr": [0.0005]},
    )
    ctc_fields = _ctc_fields(mask_prob=0.65, mask_channel_prob=0.25, freeze_finetune_updates=0)
    root = _root_cfg(
        AudioFinetuningConfig(data=D2V_DATA, normalize=True, labels="ltr"),
        Wav2Vec2CtcConfig(w2v_path="/private/home/abaevski/models/data2vec/audio_base_ls.pt", **ctc_fields),
        "audio_finetuning",
        "wav2vec_ctc",
    )
    root.model.w2v_args = inner
    letters = _dictionary(LETTERS)
    model = Wav2VecCtc.build_model(root.model, Namespace(target_dictionary=letters))
    _seed_noise(model, seed)
    state = _hydra_state(root, model.state_dict(), "CtcCriterion", 320000, {"target_dictionary": letters})
    info = {
        "format": "cfg dict, w2v_args cfg (data2vec_audio), task_state target_dictionary",
        "normalize": True,
    }
    return _standin(release, out, state, "data2vec", model, info)


#: every release serkit's READMEs name (or a sibling of one): file -> builder
BUILDERS = {
    "wav2vec_small.pt": lambda out, **kw: make_wav2vec2_pretrained(out, "wav2vec_small.pt", **kw),
    "wav2vec_small_960h.pt": lambda out, **kw: make_wav2vec2_ctc(out, "wav2vec_small_960h.pt", **kw),
    "libri960_big.pt": lambda out, **kw: make_wav2vec2_pretrained(out, "libri960_big.pt", **kw),
    "wav2vec_vox_new.pt": lambda out, **kw: make_wav2vec2_pretrained(out, "wav2vec_vox_new.pt", **kw),
    "wav2vec2_vox_960h_new.pt": lambda out, **kw: make_wav2vec2_ctc(out, "wav2vec2_vox_960h_new.pt", **kw),
    "hubert_base_ls960.pt": lambda out, **kw: make_hubert_pretrained(out, "hubert_base_ls960.pt", **kw),
    "hubert_large_ll60k.pt": lambda out, **kw: make_hubert_pretrained(out, "hubert_large_ll60k.pt", **kw),
    "hubert_large_ll60k_finetune_ls960.pt": lambda out, **kw: make_hubert_ctc(out, **kw),
    "audio_base_ls.pt": lambda out, **kw: make_data2vec_pretrained(out, **kw),
    "audio_base_ls_960h.pt": lambda out, **kw: make_data2vec_ctc(out, **kw),
}


def make_standin(release: str, out_dir: str | os.PathLike, **kw: str | int) -> StandIn:
    """Write the stand-in of ``release`` (a key of :data:`BUILDERS`) into ``out_dir``."""
    if release not in BUILDERS:
        raise KeyError(f"no stand-in for {release}; known: {sorted(BUILDERS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return BUILDERS[release](out_dir / release, **kw)


__all__ = ["BUILDERS", "LETTERS", "StandIn", "make_standin", "write_letter_dict"]


# ---------------------------------------------------------------------------------------------
# Hugging Face directories (WavLM-Large as the MELD README offers it)


def make_hf_wavlm_large(out: str | os.PathLike, size: str = "tiny", seed: int = 0) -> StandIn:
    """A ``microsoft/wavlm-large``-style directory: config.json, preprocessor_config.json, pytorch_model.bin.

    The Hub release predates safetensors and torch's parametrized weight norm: its weights are a
    ``pytorch_model.bin`` whose positional convolution is stored as ``weight_g``/``weight_v``; the model
    is WavLM with a layer-norm CNN with conv bias and a pre-LN transformer (``feat_extract_norm: layer``,
    ``conv_bias: true``, ``do_stable_layer_norm: true``), 1024 dims and 24 layers at ``size="release"``.
    """
    import json

    import torch
    import transformers

    torch.manual_seed(seed)
    dims = (
        dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        if size == "release"
        else dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(16,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
        )
    )
    cfg = transformers.WavLMConfig(
        **dims, feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True
    )
    model = transformers.WavLMModel(cfg)
    _seed_noise(model, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    legacy = {}
    for k, v in model.state_dict().items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        )
        legacy[k] = v.clone()
    torch.save(legacy, out / "pytorch_model.bin")
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
    return StandIn("wavlm-large/", out, "hf", False, model.eval(), model.eval(), info={"format": "HF dir"})
