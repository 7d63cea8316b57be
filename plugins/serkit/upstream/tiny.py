"""Randomly initialised fairseq HuBERT checkpoints: a tiny one for CPU demos and tests, a base-sized one
for benchmarks.

The file is what fairseq's trainer writes (``{"cfg": {model, task, ...}, "model": state_dict,
"task_state": {"dictionaries": [...]}, "optimizer_history": [...], ...}``), so it loads with
``fairseq.checkpoint_utils.load_model_ensemble_and_task``, with ``serkit.upstream.load_upstream``, and
as a starting point of ``fairseq-hydra-train`` (``checkpoint.restore_file=... checkpoint.reset_*``).

Loading without the training data: fairseq's ``hubert_pretraining`` task reads ``dict.<label>.txt``
from ``task.label_dir`` (or ``task.data``) lazily, only when nobody has set its dictionaries. The
checkpoint stores them in ``task_state``, which ``load_model_ensemble_and_task`` restores before the
model is built, so no label file is opened. ``task.data`` is stored as a placeholder path; training
runs must override ``task.data``/``task.label_dir``/``task.labels`` with their own.

Tiny configuration (keeps the 320x stride, so 50 frames per second and ``label_rate: 50``):
7 conv layers ``[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2``, 2 transformer layers of 64 dims,
FFN 128, 2 heads, final_dim 32; every other field is fairseq's default (the same config the
fairseq plugin's tiny pretraining yaml uses).
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils import SerkitError, atomic_file, claim_output_file, torch_file_strings

if TYPE_CHECKING:
    from omegaconf import Container

log = logging.getLogger("serkit.upstream")


def encoder_dims(
    conv_feature_layers: str, layers: int, dim: int, ffn: int, heads: int, **more: object
) -> dict:
    """The size fields of a fairseq wav2vec-style model config (conv stack, transformer layers and widths)."""
    return dict(
        conv_feature_layers=conv_feature_layers,
        encoder_layers=layers,
        encoder_embed_dim=dim,
        encoder_ffn_embed_dim=ffn,
        encoder_attention_heads=heads,
        **more,
    )


TINY = encoder_dims("[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", 2, 64, 128, 2, final_dim=32)
#: HuBERT-base (fairseq's hubert_base_librispeech.yaml)
BASE = encoder_dims("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", 12, 768, 3072, 12, final_dim=256)
ARCHS = {"tiny": TINY, "base": BASE}
PLACEHOLDER_DATA = "/OVERRIDE/task.data"


def is_made_upstream(path: Path) -> bool:
    """``path`` is a checkpoint :func:`make_hubert_checkpoint` wrote (not an upstream exported from it)."""
    strings = torch_file_strings(path)
    return "serkit make-upstream" in strings and "serkit_export" not in strings


def make_hubert_checkpoint(
    out: str | os.PathLike,
    arch: str = "tiny",
    seed: int = 0,
    num_labels: int = 50,
    label_rate: int = 50,
    normalize: bool = False,
) -> Path:
    """Write a randomly initialised fairseq HuBERT checkpoint to ``out`` (atomically) and return its path.

    ``num_labels`` sizes the label embeddings (the k-means dictionary, ``dict.km.txt``: labels "0".."K-1").
    """
    if arch not in ARCHS:
        raise SerkitError(f"unknown --arch {arch!r}; choose one of {sorted(ARCHS)}")
    claim_output_file(out, is_made_upstream, "a checkpoint `serkit make-upstream` wrote")
    import torch
    from fairseq.data import Dictionary
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    task_cfg = HubertPretrainingConfig(
        data=PLACEHOLDER_DATA,
        labels=["km"],
        label_rate=float(label_rate),
        sample_rate=16000,
        normalize=normalize,
    )
    model_cfg = HubertConfig(label_rate=float(label_rate), **ARCHS[arch])
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.task = OmegaConf.structured(task_cfg)
    cfg.model = OmegaConf.structured(model_cfg)
    with open_dict(cfg):
        cfg.task._name = "hubert_pretraining"
        cfg.model._name = "hubert"
        cfg.criterion = {
            "_name": "hubert",
            "pred_masked_weight": 1.0,
            "pred_nomask_weight": 0.0,
            "loss_weights": [10.0],
        }
    dictionary = Dictionary()
    for i in range(num_labels):
        dictionary.add_symbol(str(i))
    model = HubertModel(cfg.model, cfg.task, [dictionary])
    state = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "HubertCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 0,
            }
        ],
        "task_state": {"dictionaries": [dictionary]},
        "extra_state": {"metrics": {}, "previous_training_time": 0},
        "last_optimizer_state": None,
        "serkit": {
            "made_by": "serkit make-upstream",
            "arch": arch,
            "seed": seed,
            "num_labels": num_labels,
            "note": "random initialisation, not a trained model",
        },
    }
    out = Path(out)
    with atomic_file(out, "wb") as f:
        torch.save(state, f)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "wrote %s HuBERT checkpoint %s (%.2f M parameters, %d labels, seed %d)",
        arch,
        out,
        n_params / 1e6,
        num_labels,
        seed,
    )
    return out


def open_dict(cfg: Container) -> AbstractContextManager[Container]:
    from omegaconf import open_dict as _open_dict

    return _open_dict(cfg)
