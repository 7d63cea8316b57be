"""``serkit_hubert``: HuBERT continued pretraining (CPT) from a pretrained checkpoint on new pseudo labels.

FLEA's CPT-HuBERT step: start from the original HuBERT and continue masked prediction on frame-level
pseudo-emotion labels (k-means on a finetuned model's layer, e.g. 50 clusters). It runs with fairseq's
own ``hubert_pretraining`` task and ``hubert`` criterion; this model only adds the start:

- ``model.init_from=PATH`` loads the feature extractor, the transformer encoder and everything else
  that does not depend on the label set from a fairseq HuBERT checkpoint (``hubert``, an earlier
  ``serkit_hubert``, or the HuBERT inside a ``hubert_ctc``; any published form, read by
  :mod:`serkit.upstream.checkpoint`);
- the label embeddings (``label_embs_concat``, one row per pseudo label of the new ``dict.<label>.txt``)
  and the projection into their space (``final_proj``) start afresh: the old ones describe another
  label set.

The architecture fields of the config must match the checkpoint (they are checked and the mismatches
named); ``task.normalize`` must match the checkpoint's too.

``feature_grad_mult: 0`` freezes the CNN (as FLEA does): its parameters are then excluded from the
optimiser instead of merely receiving no gradient.

Once the initial weights are in, the model sets ``init_done: true`` in the run's config, so that the
checkpoints it saves load (``checkpoint_utils``, ``serkit.upstream.load_upstream``) without
``init_from`` being read, or even present, again. A resumed run reads ``init_from`` once more and then
the checkpoint's weights replace it.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.data import Dictionary
from fairseq.models import register_model
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask
from omegaconf import DictConfig, open_dict

from ..utils import SerkitError

log = logging.getLogger("serkit.fairseq_ext")

#: config fields that shape the weights loaded from ``init_from`` (label-set-dependent ones excluded)
ARCH_FIELDS = (
    "extractor_mode",
    "conv_feature_layers",
    "conv_bias",
    "encoder_layers",
    "encoder_embed_dim",
    "encoder_ffn_embed_dim",
    "encoder_attention_heads",
    "activation_fn",
    "layer_type",
    "layer_norm_first",
    "conv_pos",
    "conv_pos_groups",
    "conv_pos_batch_norm",
    "target_glu",
)
#: ... and those that also shape ``final_proj`` (checked only when it is loaded, not re-initialised)
PROJ_FIELDS = ("final_dim", "untie_final_proj")
#: model entries that belong to the label set
LABEL_KEYS = ("label_embs_concat",)
PROJ_PREFIX = "final_proj."
#: entries of a checkpoint that are not weights of a HuBERT model (a data2vec-style EMA teacher)
FOREIGN = ("_ema",)


@dataclass
class SerkitHubertConfig(HubertConfig):
    init_from: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "fairseq HuBERT checkpoint (hubert or serkit_hubert) to start from: its "
            "feature extractor and encoder are loaded, the label embeddings and "
            "final_proj are re-initialised for this run's dictionary; absolute path"
        },
    )
    init_done: bool = field(
        default=False,
        metadata={
            "help": "set by the model once init_from's weights are in, so that a saved "
            "checkpoint loads without reading init_from; leave it false"
        },
    )
    reinit_final_proj: bool = field(
        default=True,
        metadata={
            "help": "re-initialise final_proj with the label embeddings (it maps into the old "
            "labels' embedding space); false keeps the checkpoint's"
        },
    )


def _same(field_name: str, ours: object, theirs: object) -> bool:
    if field_name == "conv_feature_layers":
        return eval(str(ours)) == eval(str(theirs))  # noqa: S307 - fairseq's own format
    return str(ours) == str(theirs)


def _mark_init_done(cfg: SerkitHubertConfig | DictConfig) -> None:
    """Set ``init_done`` on this model config and on the run's config it was merged from.

    fairseq builds the model from a merged copy of ``cfg.model`` whose parent is the run's config (the
    one the trainer saves); writing there is how the flag reaches the checkpoints.
    """
    with open_dict(cfg):
        cfg.init_done = True
    parent = cfg._get_parent() if hasattr(cfg, "_get_parent") else None
    try:
        run_model_cfg = parent.get("model") if parent is not None else None
    except Exception:  # noqa: BLE001 - a parent without a model node: nothing to update
        run_model_cfg = None
    if run_model_cfg is not None and run_model_cfg is not cfg and hasattr(run_model_cfg, "keys"):
        with open_dict(run_model_cfg):
            run_model_cfg.init_done = True


@register_model("serkit_hubert", dataclass=SerkitHubertConfig)
class SerkitHubertModel(HubertModel):
    """fairseq's HubertModel that can start from a pretrained HuBERT with a new label set."""

    def __init__(
        self, cfg: SerkitHubertConfig, task_cfg: HubertPretrainingConfig, dictionaries: list[Dictionary]
    ) -> None:
        super().__init__(cfg, task_cfg, dictionaries)
        self.cfg = cfg
        if cfg.feature_grad_mult == 0:
            # frozen CNN: keep it out of the optimiser (and out of DDP's unused-parameter search)
            self.feature_extractor.requires_grad_(False)

    @classmethod
    def build_model(cls, cfg: SerkitHubertConfig, task: HubertPretrainingTask) -> "SerkitHubertModel":
        model = cls(cfg, task.cfg, task.dictionaries)
        if cfg.init_from and not cfg.init_done:
            model.load_initial_weights(cfg.init_from, task_normalize=getattr(task.cfg, "normalize", None))
            _mark_init_done(cfg)
        return model

    def load_initial_weights(self, path: str, task_normalize: bool | None = None) -> dict:
        """Copy every label-independent weight of the HuBERT checkpoint ``path`` into this model.

        Returns a summary ``{"loaded": [...], "reinitialised": [...]}``. Raises ``SerkitError`` naming
        the mismatching config fields or weights when the checkpoint does not fit this architecture.
        """
        if not os.path.isfile(path):
            raise SerkitError(
                f"model.init_from={path}: no such file; pass the absolute path of a fairseq "
                "HuBERT checkpoint (relative paths are read from hydra's run dir)"
            )
        from serkit.upstream.checkpoint import read_checkpoint, rename_weight_norm

        ck = read_checkpoint(path)  # any published form; a hubert_ctc's inner HuBERT
        src_model_cfg = ck.model_cfg
        src_name = src_model_cfg.get("_name")
        if src_name not in ("hubert", "serkit_hubert"):
            raise SerkitError(
                f"model.init_from={path}: a '{ck.name}' checkpoint; continued pretraining "
                "starts from a HuBERT (model 'hubert', 'serkit_hubert' or a 'hubert_ctc' "
                "encoder)"
            )

        fields = ARCH_FIELDS + (() if self.cfg.reinit_final_proj else PROJ_FIELDS)
        bad = [
            f"model.{f}={getattr(self.cfg, f)!s} (checkpoint: {src_model_cfg[f]!s})"
            for f in fields
            if f in src_model_cfg
            and hasattr(self.cfg, f)
            and not _same(f, getattr(self.cfg, f), src_model_cfg[f])
        ]
        if bad:
            raise SerkitError(
                f"model.init_from={path}: the config's architecture differs from the "
                f"checkpoint's: {'; '.join(bad)}; set these fields as the checkpoint has them"
            )
        src_norm = ck.task_cfg.get("normalize")
        if task_normalize is not None and src_norm is not None and bool(task_normalize) != bool(src_norm):
            raise SerkitError(
                f"model.init_from={path}: the checkpoint was trained with task.normalize="
                f"{bool(src_norm)}, this run has task.normalize={bool(task_normalize)}; "
                "they must agree (the encoder expects that input scaling)"
            )

        def label_dependent(key: str) -> bool:
            return key in LABEL_KEYS or (self.cfg.reinit_final_proj and key.startswith(PROJ_PREFIX))

        own = self.state_dict()
        weights = rename_weight_norm(ck.encoder_state, own)
        src = {k: v for k, v in weights.items() if not label_dependent(k) and not k.startswith(FOREIGN)}
        unexpected = sorted(k for k in src if k not in own)
        wrong_shape = sorted(
            f"{k} {tuple(src[k].shape)} vs {tuple(own[k].shape)}"
            for k in src
            if k in own and src[k].shape != own[k].shape
        )
        missing = sorted(k for k in own if k not in src and not label_dependent(k))
        if unexpected or wrong_shape or missing:
            parts = [
                f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                for name, keys in (
                    ("not in this model", unexpected),
                    ("shape differs", wrong_shape),
                    ("missing from the checkpoint", missing),
                )
                if keys
            ]
            raise SerkitError(
                f"model.init_from={path}: weights do not fit this model ({'; '.join(parts)}); "
                "check the architecture fields of the config"
            )
        merged = dict(own)
        merged.update(src)
        self.load_state_dict(merged, strict=True)
        reinit = [k for k in own if label_dependent(k)]
        n_labels = sum(getattr(self, "num_classes", []) or [])
        log.info(
            "serkit_hubert: loaded %d tensors from %s; re-initialised %s for this run's dictionary "
            "(%d entries: its labels + fairseq's 4 special symbols)",
            len(src),
            path,
            ", ".join(reinit),
            n_labels,
        )
        return {"loaded": sorted(src), "reinitialised": reinit}
