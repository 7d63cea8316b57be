"""The ``Upstream`` interface and its implementation for fairseq checkpoints (HuBERT, wav2vec 2.0, data2vec).

Layer numbering follows fairseq's ``output_layer``: layer 0 is the transformer's input (the CNN
features after layer norm and projection, before the positional convolution), layer ``l >= 1`` the
output of transformer layer ``l`` (no final encoder layer norm for ``layer_norm_first`` models, like
fairseq's ``extract_features(output_layer=l)``).

Mask invariance: an utterance gives the same features on its valid frames whether it is alone or
padded inside a batch. fairseq's own forward does not guarantee that: the "default" extractor mode
(HuBERT-base, wav2vec2-base, the tiny HuBERT) group-normalises the first conv layer over the whole
padded length, and HuBERT maps the sample mask to frames by reshaping. Here the CNN runs on each
utterance's valid samples when the extractor uses group norm (batched otherwise: layer-norm
extractors are per frame) and the frame mask comes from the conv length formula.
"""

from __future__ import annotations

import importlib
import logging
import os
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ..utils import SerkitError
from . import FRAME_RATE, SAMPLE_RATE

log = logging.getLogger("serkit.upstream")

#: fairseq model names (cfg.model._name) -> serkit kind
_KINDS = {
    "hubert": "hubert",
    "wav2vec2": "wav2vec2",
    "wav2vec_ctc": "wav2vec2",
    "data2vec_audio": "data2vec",
}
#: 60 s at 16 kHz: longer input is processed in chunks (attention memory grows with the square).
DEFAULT_MAX_CHUNK_SECONDS = 60.0


class Upstream(torch.nn.Module):
    """A speech encoder seen as a stack of layers at 50 frames per second.

    Attributes: ``kind`` (hubert|wav2vec2|data2vec|hf|mfcc), ``num_layers`` (transformer layers; valid
    layer indices are 0..num_layers), ``dim`` (channels per layer), ``frame_rate`` (50), ``normalize``
    (waveform layer-normalised per utterance), ``path``, ``receptive_field`` and ``hop`` (samples).
    """

    kind = "?"
    num_layers = 0
    dim = 0
    frame_rate = FRAME_RATE
    normalize = False
    receptive_field = 400
    hop = 320
    path = ""

    def all_layers(self) -> list[int]:
        return list(range(self.num_layers + 1))

    def check_layers(self, layers) -> list[int]:
        if layers is None:
            return self.all_layers()
        if isinstance(layers, int):
            layers = [layers]
        layers = [int(x) for x in layers]
        bad = [x for x in layers if not 0 <= x <= self.num_layers]
        if bad:
            raise SerkitError(
                f"{self.path}: layer(s) {bad} out of range; this {self.kind} model has "
                f"layers 0..{self.num_layers}"
            )
        return layers

    def num_frames(self, num_samples: int) -> int:
        if num_samples < self.receptive_field:
            return 0
        return (num_samples - self.receptive_field) // self.hop + 1

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.where(
            lengths < self.receptive_field,
            torch.zeros_like(lengths),
            torch.div(lengths - self.receptive_field, self.hop, rounding_mode="floor") + 1,
        )

    @staticmethod
    def _lengths(wav: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is None:
            return torch.full((wav.size(0),), wav.size(1), dtype=torch.long, device=wav.device)
        return (~padding_mask).sum(1).long()

    @staticmethod
    def _normalize_wave(wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Layer-norm each utterance over its valid samples (fairseq's ``normalize``); padding stays 0."""
        out = torch.zeros_like(wav)
        for i, n in enumerate(lengths.tolist()):
            out[i, :n] = F.layer_norm(wav[i, :n], (n,))
        return out

    @torch.no_grad()
    def extract(self, wav: torch.Tensor, layers=None, max_chunk_seconds: float | None = None) -> torch.Tensor:
        """Features of ONE utterance ``wav`` (S,) as a tensor (n_layers, T, C), T = ``num_frames(S)``.

        Input longer than ``max_chunk_seconds`` (default 60 s) is cut into chunks aligned with the
        frame hop (each chunk gets the samples its frames need, so the conv output is the same frame
        count); attention then sees one chunk at a time. Memory stays bounded for any length.
        """
        layers = self.check_layers(layers)
        max_chunk = DEFAULT_MAX_CHUNK_SECONDS if max_chunk_seconds is None else max_chunk_seconds
        total = self.num_frames(wav.numel())
        chunk_frames = max(1, int(max_chunk * SAMPLE_RATE) // self.hop)
        if total <= chunk_frames:
            hidden, _ = self.forward(wav.unsqueeze(0), None, layers)
            return torch.stack([h[0] for h in hidden])
        if self.normalize:  # normalise the whole utterance once, as fairseq would, then cut
            wav = F.layer_norm(wav, wav.shape)
        pieces = []
        for f0 in range(0, total, chunk_frames):
            f1 = min(total, f0 + chunk_frames)
            seg = wav[f0 * self.hop : (f1 - 1) * self.hop + self.receptive_field]
            hidden, _ = self.forward(seg.unsqueeze(0), None, layers, _normalized=True)
            pieces.append(torch.stack([h[0] for h in hidden]))
        return torch.cat(pieces, dim=1)


def _conv_geometry(feature_extractor) -> tuple[int, int, bool]:
    """(receptive field, hop, group-norm first layer) of fairseq's ConvFeatureExtractionModel."""
    rf, hop = 1, 1
    convs = [m for m in feature_extractor.modules() if isinstance(m, torch.nn.Conv1d)]
    for conv in convs:
        rf = rf + (conv.kernel_size[0] - 1) * hop
        hop = hop * conv.stride[0]
    group_norm = any(isinstance(m, torch.nn.GroupNorm) for m in feature_extractor.modules())
    return rf, hop, group_norm


class FairseqUpstream(Upstream):
    """HuBERT / wav2vec 2.0 / data2vec audio from fairseq, run layer by layer (see module docstring)."""

    def __init__(self, model, kind: str, normalize: bool, path: str = ""):
        super().__init__()
        self.model = model
        self.kind = kind
        self.normalize = bool(normalize)
        self.path = str(path)
        self.num_layers = len(model.encoder.layers)
        self.dim = model.encoder.embedding_dim
        self.receptive_field, self.hop, self._group_norm = _conv_geometry(model.feature_extractor)
        if self.receptive_field != 400 or self.hop != 320:
            log.warning(
                "%s: conv front end has receptive field %d and hop %d (not 400/320): frames are not at 50 Hz",
                path,
                self.receptive_field,
                self.hop,
            )
        self.frame_rate = SAMPLE_RATE / self.hop

    def _cnn(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        fe = self.model.feature_extractor
        uneven = bool((lengths != wav.size(1)).any())
        if self._group_norm and uneven:
            t_max = int(self.frame_lengths(torch.tensor([wav.size(1)]))[0])
            out = None
            for i, n in enumerate(lengths.tolist()):
                f = fe(wav[i : i + 1, :n])  # (1, C, T_i)
                if out is None:
                    out = f.new_zeros(wav.size(0), f.size(1), t_max)
                out[i, :, : f.size(2)] = f[0]
            return out
        return fe(wav)

    @torch.no_grad()
    def forward(
        self,
        wav: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        layers=None,
        _normalized: bool = False,
    ):
        """Run the model; return ``([ (B, T, C) per requested layer ], padding_mask (B, T) bool)``.

        ``wav`` (B, S) float at 16 kHz; ``padding_mask`` (B, S) True on padded samples, or None.
        """
        layers = self.check_layers(layers)
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        wav = wav.float()
        lengths = self._lengths(wav, padding_mask)
        if lengths.min() < self.receptive_field:
            raise SerkitError(
                f"{self.path}: input of {int(lengths.min())} samples is shorter than the "
                f"model's receptive field ({self.receptive_field} samples = "
                f"{self.receptive_field / SAMPLE_RATE * 1000:.0f} ms)"
            )
        if self.normalize and not _normalized:
            wav = self._normalize_wave(wav, lengths)
        elif padding_mask is not None:
            wav = wav.masked_fill(padding_mask, 0.0)
        m = self.model
        feats = self._cnn(wav, lengths).transpose(1, 2)  # (B, T, C_cnn)
        feats = m.layer_norm(feats)
        if m.post_extract_proj is not None:
            feats = m.post_extract_proj(feats)
        frame_len = self.frame_lengths(lengths)
        t = feats.size(1)
        frame_mask = torch.arange(t, device=feats.device)[None, :] >= frame_len[:, None]
        hidden = {0: feats.masked_fill(frame_mask[..., None], 0.0)}
        top = max(layers)
        if top > 0:
            enc_mask = frame_mask if bool(frame_mask.any()) else None
            _, layer_results = m.encoder.extract_features(feats, padding_mask=enc_mask, tgt_layer=top - 1)
            for i, res in enumerate(layer_results[:top], start=1):
                x = res[0] if isinstance(res, tuple) else res
                hidden[i] = x.transpose(0, 1).masked_fill(frame_mask[..., None], 0.0)
        return [hidden[i] for i in layers], frame_mask


# ---------------------------------------------------------------------------------------------
# loading


def _import_plugins() -> None:
    """Register serkit_* models (if the fairseq plugin exists) and data2vec audio before unpickling."""
    try:
        importlib.import_module("serkit.fairseq_ext")
    except ModuleNotFoundError as e:
        if e.name not in ("serkit.fairseq_ext",):
            raise
    for name in (
        "fairseq.examples.data2vec.models.data2vec_audio",
        "examples.data2vec.models.data2vec_audio",
    ):
        try:
            importlib.import_module(name)
            break
        except Exception:  # noqa: BLE001 - data2vec is optional; only its checkpoints need it
            continue


def _read_checkpoint(path: Path) -> dict:
    """torch.load the file (unpickling: trusted files only) and turn its cfg into an OmegaConf config."""
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # fairseq checkpoints pickle configs/dicts
    from omegaconf import OmegaConf

    if not path.is_file():
        raise SerkitError(
            f"{path}: checkpoint not found; pass the local path of a fairseq HuBERT, "
            "wav2vec 2.0 or data2vec checkpoint (or make one with `serkit make-upstream`)"
        )
    try:
        with open(path, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise SerkitError(
            f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {first}); the "
            "file may be truncated or not a checkpoint: download or copy it again"
        ) from e
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise SerkitError(
            f"{path}: cannot be unpickled ({type(e).__name__}: {e}); the file may be "
            "truncated, or need a plugin that is not installed"
        ) from e
    if not isinstance(state, dict) or "model" not in state:
        raise SerkitError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    if state.get("cfg") is not None and not OmegaConf.is_config(state["cfg"]):
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
    return state


def _upgrade(state: dict, path: Path) -> dict:
    from fairseq import checkpoint_utils

    # training bookkeeping the upgrader insists on; exported/converted checkpoints often lack it
    if not state.get("optimizer_history"):
        state["optimizer_history"] = [
            {"criterion_name": None, "optimizer_name": None, "lr_scheduler_state": {}, "num_updates": 0}
        ]
    if state.get("extra_state") is None:
        state["extra_state"] = {}
    try:
        return checkpoint_utils._upgrade_state_dict(state)  # what load_checkpoint_to_cpu applies
    except Exception as e:  # noqa: BLE001
        raise SerkitError(
            f"{path}: fairseq cannot upgrade this checkpoint ({type(e).__name__}: {e}); is it "
            "a complete fairseq checkpoint?"
        ) from e


def _cfg_of(state: dict, path: Path):
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    if state.get("args") is not None:
        return convert_namespace_to_omegaconf(state["args"])
    if state.get("cfg") is not None:
        return state["cfg"]
    raise SerkitError(f"{path}: fairseq checkpoint without 'cfg' or 'args'; cannot tell which model it is")


def _dummy_dictionary(size: int):
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(str(i))
    return d


def _build(model_cfg, task_cfg, model_state: dict, task_state: dict | None, path: Path):
    """Build a fairseq model without the training data: dictionaries come from the checkpoint."""
    from fairseq import tasks

    task_cfg = task_cfg.copy() if hasattr(task_cfg, "copy") else task_cfg
    task = tasks.setup_task(task_cfg, from_checkpoint=True)
    if task_state:
        task.load_state_dict(task_state)
    name = model_cfg.get("_name")
    if name == "hubert" and not (task_state and "dictionaries" in task_state):
        # label files are not needed to extract features: size the label embeddings from the weights
        n = model_state.get("label_embs_concat")
        sizes = [n.size(0)] if n is not None else []
        task.state.merge_state_dict({"dictionaries": [_dummy_dictionary(s) for s in sizes] or [None]})
    try:
        model = task.build_model(model_cfg, from_checkpoint=True)
    except KeyError as e:
        raise SerkitError(
            f"{path}: fairseq has no model '{name}' registered; if it is a serkit_* model, the "
            "serkit fairseq plugin (serkit.fairseq_ext) must be importable"
        ) from e
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    # keys that only matter for training (EMA teacher, pretraining heads) may be absent or extra
    important = [
        k
        for k in missing
        if k.startswith(("feature_extractor", "encoder", "post_extract_proj", "layer_norm"))
    ]
    if important:
        raise SerkitError(
            f"{path}: checkpoint lacks weights the encoder needs ({important[:3]}...); is it complete?"
        )
    if unexpected:
        log.debug("%s: ignored %d checkpoint entries (%s ...)", path, len(unexpected), unexpected[:3])
    return model


def load_fairseq_upstream(path, device: str = "cpu") -> FairseqUpstream:
    """Load a fairseq HuBERT / wav2vec 2.0 (pretrained or CTC-finetuned) / data2vec audio checkpoint.

    The training data (``task.data``, label dir, dictionaries) is not needed: dictionaries come from
    the checkpoint's ``task_state`` or are sized from its weights.
    """
    path = Path(path)
    try:
        import fairseq  # noqa: F401
    except ImportError as e:
        raise SerkitError(
            f"{path}: loading fairseq checkpoints needs fairseq (pip install "
            "'serkit[fairseq]' or `make install`)"
        ) from e
    _import_plugins()
    state = _read_checkpoint(path)
    cfg = _cfg_of(state, path)
    name = cfg.model.get("_name") if cfg.get("model") is not None else None
    base = name.split("serkit_", 1)[-1] if name else None
    kind = _KINDS.get(name) or _KINDS.get(base or "")
    if name and name.startswith("serkit_") and kind is None:
        kind = "hubert"  # serkit's continued-pretraining model is a HuBERT subclass
    if kind is None:
        raise SerkitError(
            f"{path}: a fairseq '{name}' checkpoint (task '{cfg.task.get('_name')}'), not "
            "a speech SSL model; pass a HuBERT, wav2vec 2.0 or data2vec audio checkpoint"
        )
    state = _upgrade(state, path)
    if name == "wav2vec_ctc":
        # fine-tuned for ASR: keep the inner wav2vec 2.0 model (no target dictionary needed)
        w2v_args = cfg.model.w2v_args
        if w2v_args is None:
            raise SerkitError(f"{path}: CTC checkpoint without w2v_args; cannot rebuild its encoder")
        prefix = "w2v_encoder.w2v_model."
        inner = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
        inner_model_cfg = w2v_args.model
        model = _build(inner_model_cfg, w2v_args.task, inner, None, path)
        normalize = bool(cfg.task.get("normalize", False))
        inner_kind = _KINDS.get(inner_model_cfg.get("_name"), "wav2vec2")
        kind = inner_kind
    else:
        model = _build(cfg.model, cfg.task, state["model"], state.get("task_state"), path)
        normalize = bool(cfg.task.get("normalize", False))
    for attr in ("feature_extractor", "encoder", "layer_norm"):
        if not hasattr(model, attr):
            raise SerkitError(f"{path}: model '{name}' has no {attr}; not a wav2vec-style encoder")
    up = FairseqUpstream(model, kind=kind, normalize=normalize, path=str(path))
    log.info(
        "loaded %s upstream %s: %d layers x %d dims, normalize=%s",
        kind,
        path,
        up.num_layers,
        up.dim,
        normalize,
    )
    return up.to(device).eval()
