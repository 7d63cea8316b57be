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

Padding: the waveform mask becomes a frame mask by the conv length formula, and the CNN runs on each
utterance's own samples when its first layer normalises over time (group norm), so an utterance gets
the same logits alone or padded inside a batch.

The upstream's config is stored in ``model.upstream_cfg`` when training starts (by the ``serkit_ser``
task), so a saved checkpoint rebuilds the upstream without ``upstream_path``.
"""
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional  # noqa: UP035 - see SerModelConfig

import torch
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.modules import GradMultiply
from omegaconf import OmegaConf

from ..utils import SerkitError
from .masking import compute_mask_indices

log = logging.getLogger("serkit.fairseq_ext")

#: pretraining-only weights that the SER model drops
_PRETRAINING_ONLY = ("label_embs_concat", "final_proj.", "target_glu.", "quantizer.", "project_q.",
                     "project_inp.", "_ema")


@dataclass
class SerModelConfig(FairseqDataclass):
    upstream_path: Optional[str] = field(default=None, metadata={  # noqa: UP045
        "help": "fairseq checkpoint of the upstream (HuBERT, serkit_hubert, wav2vec 2.0, or a CTC "
                "finetuned one); absolute path"})
    upstream_cfg: Any = field(default=None, metadata={
        "help": "the upstream's config, filled in from upstream_path when training starts; a "
                "checkpoint of this model rebuilds its upstream from it; leave unset"})
    head: str = field(default="linear", metadata={
        "help": "serkit head (serkit.nn.build_head): linear, ffn, cnn, shiftcnn, transformer, "
                "shiftformer, lstm, shiftlstm, ..."})
    pooling: str = field(default="attention", metadata={
        "help": "pooling of heads that pool: attention (FLEA) or mean"})
    head_options: Dict[str, Any] = field(default_factory=dict, metadata={  # noqa: UP006
        "help": "extra keyword arguments of the head, e.g. {dropout: 0.1}"})
    layer: int = field(default=-1, metadata={
        "help": "-1: the upstream's output; l >= 1: output of transformer layer l (layers above it "
                "are not run); 0: the CNN features after projection"})
    weighted_layer_sum: bool = field(default=False, metadata={
        "help": "feed the head a learnable softmax-weighted sum of layers 0..N instead of one layer"})
    freeze_upstream: bool = field(default=False, metadata={
        "help": "train only the head (and layer weights): the feature-extraction setting"})
    freeze_finetune_updates: int = field(default=0, metadata={
        "help": "keep the transformer frozen for this many updates (the head trains from the start)"})
    feature_grad_mult: float = field(default=0.0, metadata={
        "help": "gradient scale into the CNN front end; 0 freezes it (FLEA, ShiftSER finetuning)"})
    encoder_layerdrop: float = field(default=0.0, metadata={
        "help": "probability of dropping a transformer layer in training (must be 0 with "
                "weighted_layer_sum)"})
    dropout: Optional[float] = field(default=None, metadata={  # noqa: UP045
        "help": "transformer dropout; unset keeps the upstream's"})
    attention_dropout: Optional[float] = field(default=None, metadata={  # noqa: UP045
        "help": "attention dropout; unset keeps the upstream's"})
    activation_dropout: Optional[float] = field(default=None, metadata={  # noqa: UP045
        "help": "FFN activation dropout; unset keeps the upstream's"})
    mask_prob: float = field(default=0.0, metadata={
        "help": "training-time time masking of the transformer input (the upstream's mask "
                "embedding), as in wav2vec 2.0 finetuning; 0 disables"})
    mask_length: int = field(default=10, metadata={"help": "frames per time mask"})
    mask_channel_prob: float = field(default=0.0, metadata={
        "help": "training-time channel masking of the transformer input; 0 disables"})
    mask_channel_length: int = field(default=64, metadata={"help": "channels per channel mask"})


def read_upstream(path: str) -> tuple[Any, dict]:
    """``(upstream_cfg {model, task}, model_state)`` of a fairseq checkpoint, unwrapping CTC models.

    Every published form is read by :func:`serkit.upstream.checkpoint.read_checkpoint` (``cfg`` dict or
    argparse ``args``, nested ``w2v_args``, either weight-norm naming).
    """
    from serkit.upstream.checkpoint import read_checkpoint

    if not path:
        raise SerkitError("model.upstream_path is not set; pass the absolute path of a fairseq HuBERT or "
                          "wav2vec 2.0 checkpoint")
    if not os.path.isfile(path):
        raise SerkitError(f"model.upstream_path={path}: no such file (give an absolute path: hydra runs in "
                          "its own directory)")
    ck = read_checkpoint(path)
    upstream_cfg = OmegaConf.create({"model": OmegaConf.to_container(ck.model_cfg, resolve=True),
                                     "task": OmegaConf.to_container(ck.task_cfg, resolve=True)})
    if "init_from" in upstream_cfg.model:  # a serkit_hubert CPT model: its weights are all here
        upstream_cfg.model.init_from = None
        upstream_cfg.model.init_done = True
    return upstream_cfg, ck.encoder_state


def build_upstream(upstream_cfg, model_state: dict | None = None, path: str = "") -> BaseFairseqModel:
    """Build the fairseq encoder described by ``upstream_cfg`` (and load ``model_state`` if given)."""
    from serkit.upstream.checkpoint import SpeechCheckpoint, build_encoder, load_encoder_weights

    ck = SpeechCheckpoint(path, upstream_cfg.model.get("_name"), "", upstream_cfg.model, upstream_cfg.task,
                          {})
    model = build_encoder(ck, label_embeddings=False, load=False)
    if hasattr(model, "remove_pretraining_modules"):
        model.remove_pretraining_modules()
    if model_state is not None:
        kept = {k: v for k, v in model_state.items() if not k.startswith(_PRETRAINING_ONLY)}
        load_encoder_weights(model, kept, path)
    return model


def conv_frames(lengths: torch.Tensor, conv_layers: list) -> torch.Tensor:
    """Frames the conv front end ``[(dim, kernel, stride), ...]`` produces for ``lengths`` samples."""
    out = lengths.clone()
    for _, kernel, stride in conv_layers:
        out = torch.div(out - kernel, stride, rounding_mode="floor") + 1
    return out.clamp(min=0)


@register_model("serkit_ser_model", dataclass=SerModelConfig)
class SerModel(BaseFairseqModel):
    """Upstream encoder + serkit head: ``forward(source, padding_mask) -> {"logits", "padding_mask"}``."""

    def __init__(self, cfg: SerModelConfig, upstream: BaseFairseqModel, upstream_cfg, num_classes: int):
        super().__init__()
        from serkit.nn import WeightedLayerSum, build_head

        self.cfg = cfg
        self.upstream = upstream
        self.upstream_cfg = upstream_cfg
        self.normalize = bool(upstream_cfg.task.get("normalize", False))
        self.conv_layers = eval(upstream_cfg.model.conv_feature_layers)  # noqa: S307 - fairseq's format
        self.group_norm_cnn = any(isinstance(m, torch.nn.GroupNorm)
                                  for m in upstream.feature_extractor.modules())
        rf, hop = 1, 1
        for _, kernel, stride in self.conv_layers:
            rf, hop = rf + (kernel - 1) * hop, hop * stride
        self.receptive_field = rf
        encoder = upstream.encoder
        self.num_layers = len(encoder.layers)
        self.dim = encoder.embedding_dim
        if not -1 <= cfg.layer <= self.num_layers:
            raise SerkitError(f"model.layer={cfg.layer}: this upstream has layers 0..{self.num_layers} "
                              "(-1: its output)")
        if cfg.weighted_layer_sum and cfg.encoder_layerdrop > 0:
            raise SerkitError("model.weighted_layer_sum needs model.encoder_layerdrop=0 (a dropped layer "
                              "has no output to weigh)")
        encoder.layerdrop = cfg.encoder_layerdrop
        for name, value in (("dropout", cfg.dropout), ("attention_dropout", cfg.attention_dropout),
                            ("activation_dropout", cfg.activation_dropout)):
            if value is not None:
                self._set_dropout(name, value)
        self.layer_sum = WeightedLayerSum(self.num_layers + 1) if cfg.weighted_layer_sum else None
        self.head = build_head(cfg.head, self.dim, num_classes, pooling=cfg.pooling,
                               **dict(cfg.head_options or {}))
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
    def build_model(cls, cfg: SerModelConfig, task):
        if cfg.upstream_cfg is not None:  # from a checkpoint: the weights come with it
            upstream_cfg = cfg.upstream_cfg
            if not OmegaConf.is_config(upstream_cfg):
                upstream_cfg = OmegaConf.create(upstream_cfg)
            upstream = build_upstream(upstream_cfg, None, cfg.upstream_path or "")
        else:
            upstream_cfg, state = read_upstream(cfg.upstream_path)
            upstream = build_upstream(upstream_cfg, state, cfg.upstream_path)
            log.info("serkit_ser_model: upstream %s (%s, %d layers x %d dims, normalize=%s)",
                     cfg.upstream_path, upstream_cfg.model.get("_name"), len(upstream.encoder.layers),
                     upstream.encoder.embedding_dim,
                     bool(upstream_cfg.task.get("normalize", False)))
        num_classes = getattr(task, "num_classes", None)
        if not num_classes:
            raise SerkitError("serkit_ser_model needs the serkit_ser task (it provides the class list)")
        return cls(cfg, upstream, upstream_cfg, num_classes)

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    # -- forward ---------------------------------------------------------------------------------
    def _features(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """CNN features (B, C, T); per utterance when a group norm would mix in the padding."""
        fe = self.upstream.feature_extractor
        if self.group_norm_cnn and bool((lengths != wav.size(1)).any()):
            frames = conv_frames(lengths, self.conv_layers)
            t_max = int(conv_frames(torch.tensor([wav.size(1)]), self.conv_layers)[0])
            parts = [fe(wav[i: i + 1, : int(n)]) for i, n in enumerate(lengths.tolist())]
            out = parts[0].new_zeros(wav.size(0), parts[0].size(1), t_max)
            for i, (p, f) in enumerate(zip(parts, frames.tolist())):
                out[i, :, :f] = p[0, :, :f]
            return out
        return fe(wav)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,  # noqa: UP045
                **kwargs) -> dict[str, Any]:
        up, cfg = self.upstream, self.cfg
        wav = source  # float32, or half when fairseq runs the model in fp16
        if padding_mask is None or not bool(padding_mask.any()):
            lengths = torch.full((wav.size(0),), wav.size(1), dtype=torch.long, device=wav.device)
        else:
            lengths = (~padding_mask).sum(1)
            wav = wav.masked_fill(padding_mask, 0.0)
        if bool((lengths < self.receptive_field).any()):
            raise SerkitError(f"an input of {int(lengths.min())} samples is shorter than the upstream's "
                              f"receptive field ({self.receptive_field} samples)")
        if self.normalize:  # the upstream was trained on per-utterance standardised waveforms
            wav = torch.stack([F.pad(F.layer_norm(w[:n].float(), (int(n),)), (0, wav.size(1) - int(n)))
                               for w, n in zip(wav, lengths.tolist())]).to(source.dtype)

        tune_upstream = not cfg.freeze_upstream and self.num_updates >= cfg.freeze_finetune_updates
        cnn_grad = tune_upstream and cfg.feature_grad_mult > 0 and self.training
        with contextlib.nullcontext() if cnn_grad else torch.no_grad():
            feats = self._features(wav, lengths)
        if cnn_grad and cfg.feature_grad_mult != 1.0:
            feats = GradMultiply.apply(feats, cfg.feature_grad_mult)

        with contextlib.nullcontext() if tune_upstream else torch.no_grad():
            x = up.layer_norm(feats.transpose(1, 2))
            if up.post_extract_proj is not None:
                x = up.post_extract_proj(x)
            frames = conv_frames(lengths, self.conv_layers)
            frame_mask = torch.arange(x.size(1), device=x.device)[None, :] >= frames[:, None]
            x = up.dropout_input(x) if hasattr(up, "dropout_input") else x
            if self.training:
                x = self._mask(x, frame_mask)
            x = x.masked_fill(frame_mask[..., None], 0.0)
            enc_mask = frame_mask if bool(frame_mask.any()) else None
            top = self._top_layer()
            if self.layer_sum is not None:
                _, results = up.encoder.extract_features(x, padding_mask=enc_mask)
                stack = torch.stack([x] + [r[0].transpose(0, 1) for r in results], dim=1)  # (B, L+1, T, C)
            elif top == 0:
                h = x
            else:
                h, _ = up.encoder.extract_features(x, padding_mask=enc_mask, tgt_layer=top - 1)
                if cfg.layer == -1 and getattr(up.encoder, "layer_norm_first", False):
                    h = up.encoder.layer_norm(h)
        if self.layer_sum is not None:  # its weights train even when the upstream is frozen
            h = self.layer_sum(stack)
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

    def get_logits(self, net_output):
        return net_output["logits"]
