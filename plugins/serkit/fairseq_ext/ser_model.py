"""``serkit_ser_model``: a fairseq speech upstream with a serkit head, finetuned for emotion recognition.

The upstream is a fairseq checkpoint (``model.upstream_path``): HuBERT, a ``serkit_hubert`` CPT model,
wav2vec 2.0, data2vec audio, or a CTC-finetuned HuBERT / wav2vec 2.0 / data2vec (its inner encoder), in
any published form (read by :mod:`serkit.upstream.checkpoint`). Its pretraining-only parts
(label embeddings, projections, quantiser) are dropped. The head is any :func:`serkit.nn.build_head`
name (``linear`` with ``pooling: attention`` is FLEA's; ``shiftcnn``, ``transformer``, ...), fed the
last layer, one chosen layer, or a learnable weighted sum of all layers.

What is trained: the transformer and the head; the CNN front end stays frozen with
``feature_grad_mult: 0`` (FLEA, ShiftSER's finetuning setting); ``freeze_upstream: true`` trains the
head (and layer weights) only. ``freeze_finetune_updates`` keeps the transformer frozen at first.

The upstream runs through :func:`serkit.upstream.fairseq_models.layer_outputs`, the one forward of
fairseq encoders that feature extraction and the SpeechBrain lobe use too: the waveform mask becomes a
frame mask by the conv length formula, and the CNN runs on each utterance's own samples when its first
layer normalises over time (group norm), so an utterance gets the same logits alone or padded inside a
batch.

The upstream's config is stored in ``model.upstream_cfg`` when training starts (by the ``serkit_ser``
task), so a saved checkpoint rebuilds the upstream without ``upstream_path``.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Optional  # noqa: UP035 - see SerModelConfig

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from omegaconf import DictConfig, OmegaConf

from ..upstream.checkpoint import build_finetuning_encoder, encoder_config
from ..upstream.fairseq_models import layer_outputs
from ..utils import SerkitError
from .masking import compute_mask_indices

if TYPE_CHECKING:
    from fairseq.tasks import FairseqTask

log = logging.getLogger("serkit.fairseq_ext")


@dataclass
class SerModelConfig(FairseqDataclass):
    upstream_path: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "fairseq checkpoint of the upstream (HuBERT, serkit_hubert, wav2vec 2.0, or a CTC "
            "finetuned one); absolute path"
        },
    )
    upstream_cfg: Any = field(
        default=None,
        metadata={
            "help": "the upstream's config, filled in from upstream_path when training starts; a "
            "checkpoint of this model rebuilds its upstream from it; leave unset"
        },
    )
    head: str = field(
        default="linear",
        metadata={
            "help": "serkit head (serkit.nn.build_head): linear, ffn, cnn, shiftcnn, transformer, "
            "shiftformer, lstm, shiftlstm, ..."
        },
    )
    pooling: str = field(
        default="attention", metadata={"help": "pooling of heads that pool: attention (FLEA) or mean"}
    )
    head_options: Dict[str, Any] = field(  # noqa: UP006
        default_factory=dict,
        metadata={"help": "extra keyword arguments of the head, e.g. {dropout: 0.1}"},
    )
    layer: int = field(
        default=-1,
        metadata={
            "help": "-1: the upstream's output; l >= 1: output of transformer layer l (layers above it "
            "are not run); 0: the CNN features after projection"
        },
    )
    weighted_layer_sum: bool = field(
        default=False,
        metadata={
            "help": "feed the head a learnable softmax-weighted sum of layers 0..N instead of one layer"
        },
    )
    freeze_upstream: bool = field(
        default=False,
        metadata={"help": "train only the head (and layer weights): the feature-extraction setting"},
    )
    freeze_finetune_updates: int = field(
        default=0,
        metadata={
            "help": "keep the transformer frozen for this many updates (the head trains from the start)"
        },
    )
    feature_grad_mult: float = field(
        default=0.0,
        metadata={"help": "gradient scale into the CNN front end; 0 freezes it (FLEA, ShiftSER finetuning)"},
    )
    encoder_layerdrop: float = field(
        default=0.0,
        metadata={
            "help": "probability of dropping a transformer layer in training (must be 0 with "
            "weighted_layer_sum)"
        },
    )
    dropout: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata={"help": "transformer dropout; unset keeps the upstream's"},
    )
    attention_dropout: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata={"help": "attention dropout; unset keeps the upstream's"},
    )
    activation_dropout: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata={"help": "FFN activation dropout; unset keeps the upstream's"},
    )
    mask_prob: float = field(
        default=0.0,
        metadata={
            "help": "training-time time masking of the transformer input (the upstream's mask "
            "embedding), as in wav2vec 2.0 finetuning; 0 disables"
        },
    )
    mask_length: int = field(default=10, metadata={"help": "frames per time mask"})
    mask_channel_prob: float = field(
        default=0.0, metadata={"help": "training-time channel masking of the transformer input; 0 disables"}
    )
    mask_channel_length: int = field(default=64, metadata={"help": "channels per channel mask"})


def read_upstream(path: str) -> tuple[DictConfig, dict]:
    """``(upstream_cfg {model, task}, model_state)`` of ``model.upstream_path``, unwrapping CTC models.

    Read by :func:`serkit.upstream.checkpoint.encoder_config`, the one checkpoint reader (every
    published form: ``cfg`` dict or argparse ``args``, nested ``w2v_args``, either weight-norm naming).
    """
    if not path:
        raise SerkitError(
            "model.upstream_path is not set; pass the absolute path of a fairseq HuBERT or "
            "wav2vec 2.0 checkpoint"
        )
    if not os.path.isfile(path):
        raise SerkitError(
            f"model.upstream_path={path}: no such file (give an absolute path: hydra runs in "
            "its own directory)"
        )
    return encoder_config(path)


@register_model("serkit_ser_model", dataclass=SerModelConfig)
class SerModel(BaseFairseqModel):
    """Upstream encoder + serkit head: ``forward(source, padding_mask) -> {"logits", "padding_mask"}``."""

    def __init__(
        self, cfg: SerModelConfig, upstream: BaseFairseqModel, upstream_cfg: DictConfig, num_classes: int
    ) -> None:
        super().__init__()
        from serkit.nn import WeightedLayerSum, build_head

        self.cfg = cfg
        self.upstream = upstream
        self.upstream_cfg = upstream_cfg
        self.normalize = bool(upstream_cfg.task.get("normalize", False))
        encoder = upstream.encoder
        self.num_layers = len(encoder.layers)
        self.dim = encoder.embedding_dim
        if not -1 <= cfg.layer <= self.num_layers:
            raise SerkitError(
                f"model.layer={cfg.layer}: this upstream has layers 0..{self.num_layers} (-1: its output)"
            )
        if cfg.weighted_layer_sum and cfg.encoder_layerdrop > 0:
            raise SerkitError(
                "model.weighted_layer_sum needs model.encoder_layerdrop=0 (a dropped layer "
                "has no output to weigh)"
            )
        encoder.layerdrop = cfg.encoder_layerdrop
        for name, value in (
            ("dropout", cfg.dropout),
            ("attention_dropout", cfg.attention_dropout),
            ("activation_dropout", cfg.activation_dropout),
        ):
            if value is not None:
                self._set_dropout(name, value)
        self.layer_sum = WeightedLayerSum(self.num_layers + 1) if cfg.weighted_layer_sum else None
        self.head = build_head(
            cfg.head, self.dim, num_classes, pooling=cfg.pooling, **dict(cfg.head_options or {})
        )
        self.num_updates = 0
        self._freeze()

    def _set_dropout(self, name: str, value: float) -> None:
        # fairseq's TransformerSentenceEncoderLayer: dropout1 after attention, dropout2 after the FFN
        # activation, dropout3 after the FFN; the attention weights' dropout is in self_attn
        enc = self.upstream.encoder
        if name == "dropout":
            enc.dropout = value
        for layer in enc.layers:
            if name == "dropout":
                for attr in ("dropout1", "dropout3"):
                    if hasattr(layer, attr):
                        getattr(layer, attr).p = value
            elif name == "attention_dropout" and hasattr(getattr(layer, "self_attn", None), "dropout_module"):
                layer.self_attn.dropout_module.p = value
            elif name == "activation_dropout" and hasattr(layer, "dropout2"):
                layer.dropout2.p = value

    def _freeze(self) -> None:
        """Keep what is frozen or never run out of the optimiser (and DDP's unused-parameter search)."""
        up, cfg = self.upstream, self.cfg
        if cfg.freeze_upstream:
            up.requires_grad_(False)
            return
        if cfg.feature_grad_mult == 0:
            up.feature_extractor.requires_grad_(False)
        if cfg.mask_prob <= 0 and getattr(up, "mask_emb", None) is not None:
            up.mask_emb.requires_grad_(False)
        top = self._top_layer()
        for i, layer in enumerate(up.encoder.layers):
            if i >= top:
                layer.requires_grad_(False)
        if top == 0:
            up.encoder.requires_grad_(False)
        if getattr(up.encoder, "layer_norm_first", False) and (cfg.layer != -1 or cfg.weighted_layer_sum):
            up.encoder.layer_norm.requires_grad_(False)  # pre-LN models apply it only at the very output

    def _top_layer(self) -> int:
        """How many transformer layers run."""
        if self.cfg.layer == -1 or self.cfg.weighted_layer_sum:
            return self.num_layers
        return self.cfg.layer

    @classmethod
    def build_model(cls, cfg: SerModelConfig, task: "FairseqTask") -> "SerModel":
        if cfg.upstream_cfg is not None:  # from a checkpoint: the weights come with it
            upstream_cfg = cfg.upstream_cfg
            if not OmegaConf.is_config(upstream_cfg):
                upstream_cfg = OmegaConf.create(upstream_cfg)
            upstream = build_finetuning_encoder(upstream_cfg, None, cfg.upstream_path or "")
        else:
            upstream_cfg, state = read_upstream(cfg.upstream_path)
            upstream = build_finetuning_encoder(upstream_cfg, state, cfg.upstream_path)
            log.info(
                "serkit_ser_model: upstream %s (%s, %d layers x %d dims, normalize=%s)",
                cfg.upstream_path,
                upstream_cfg.model.get("_name"),
                len(upstream.encoder.layers),
                upstream.encoder.embedding_dim,
                bool(upstream_cfg.task.get("normalize", False)),
            )
        num_classes = getattr(task, "num_classes", None)
        if not num_classes:
            raise SerkitError("serkit_ser_model needs the serkit_ser task (it provides the class list)")
        return cls(cfg, upstream, upstream_cfg, num_classes)

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,  # noqa: UP045
        **kwargs,
    ) -> dict[str, Any]:
        """``source`` (B, S) float32, or half when fairseq runs the model in fp16; padding at the end."""
        up, cfg = self.upstream, self.cfg
        if padding_mask is None or not bool(padding_mask.any()):
            lengths = torch.full((source.size(0),), source.size(1), dtype=torch.long, device=source.device)
        else:
            lengths = (~padding_mask).sum(1)
        tune_upstream = not cfg.freeze_upstream and self.num_updates >= cfg.freeze_finetune_updates
        top = self._top_layer()
        hidden, frame_mask = layer_outputs(
            up,
            source,
            lengths,
            list(range(top + 1)) if self.layer_sum is not None else [top],
            normalize=self.normalize,
            train_cnn=tune_upstream and cfg.feature_grad_mult > 0 and self.training,
            train=tune_upstream,
            feature_grad_mult=cfg.feature_grad_mult,
            mask=self._mask if self.training else None,
            path=cfg.upstream_path or "",
        )
        if self.layer_sum is not None:  # its weights train even when the upstream is frozen
            h = self.layer_sum(torch.stack(hidden, dim=1))  # (B, L+1, T, C) -> (B, T, C)
        else:
            h = hidden[0]
            if cfg.layer == -1 and top > 0 and getattr(up.encoder, "layer_norm_first", False):
                with torch.set_grad_enabled(torch.is_grad_enabled() and tune_upstream):
                    h = up.encoder.layer_norm(h)  # the encoder's output: pre-LN models norm it at the end
        h = h.masked_fill(frame_mask[..., None], 0.0)
        logits = self.head(h, frame_mask)
        return {"logits": logits, "padding_mask": frame_mask}

    def _mask(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        cfg, up = self.cfg, self.upstream
        b, t, c = x.shape
        if cfg.mask_prob > 0:
            idx = compute_mask_indices((b, t), frame_mask, cfg.mask_prob, cfg.mask_length, min_masks=2)
            idx = torch.from_numpy(idx).to(x.device)
            x = x.clone()
            x[idx] = up.mask_emb.to(x.dtype)
        if cfg.mask_channel_prob > 0:
            idx = compute_mask_indices((b, c), None, cfg.mask_channel_prob, cfg.mask_channel_length)
            idx = torch.from_numpy(idx).to(x.device).unsqueeze(1).expand(-1, t, -1)
            x = x.masked_fill(idx, 0.0)
        return x

    def get_logits(self, net_output: dict[str, torch.Tensor]) -> torch.Tensor:
        return net_output["logits"]
