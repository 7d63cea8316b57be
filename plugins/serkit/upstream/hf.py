"""Upstreams in Hugging Face format (a local directory: WavLM, HuBERT, wav2vec 2.0, data2vec audio).

Needs the optional ``transformers`` package (``pip install 'serkit[hf]'``). Nothing is downloaded:
the directory must hold ``config.json`` and the weights (``local_files_only``).

Layers: ``hidden_states[l]`` of the transformers model with ``output_hidden_states=True``. Layer 0 is
the transformer input after the positional convolution (and, for post-LN models, the encoder layer
norm): transformers does not expose the bare projection that fairseq's layer 0 is, so layer 0 of an
HF upstream is close to, not the same as, layer 0 of the fairseq checkpoint it was converted from.
The waveform is normalised when ``preprocessor_config.json`` says ``do_normalize``.
"""

from __future__ import annotations

import json
import logging
import os
import types
from pathlib import Path

import torch

from ..utils import SerkitError
from .base import Upstream, WaveBatch, normalize_waves

log = logging.getLogger("serkit.upstream")


def _transformers() -> types.ModuleType:
    try:
        import transformers
    except ImportError as e:
        raise SerkitError(
            "Hugging Face upstreams need `transformers`: pip install 'serkit[hf]' "
            "(or pass a fairseq checkpoint instead)"
        ) from e
    return transformers


class HFUpstream(Upstream):
    kind = "hf"

    def __init__(self, model: torch.nn.Module, normalize: bool, path: str) -> None:
        super().__init__()
        self.model = model
        self.normalize = bool(normalize)
        self.path = path
        cfg = model.config
        self.num_layers = int(cfg.num_hidden_layers)
        self.dim = int(cfg.hidden_size)
        rf, hop = 1, 1
        for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
            rf += (k - 1) * hop
            hop *= s
        self.receptive_field, self.hop = rf, hop
        self.frame_rate = 16000 / hop

    def compute_layers(self, batch: WaveBatch, layers: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        wav, lengths = batch.wav.float(), batch.lengths
        if batch.normalize:
            wav = normalize_waves(wav, lengths)
        attention = None if batch.padding_mask is None else (~batch.padding_mask).long()
        out = self.model(wav, attention_mask=attention, output_hidden_states=True)
        hs = out.hidden_states
        frame_len = self.frame_lengths(lengths)
        t = hs[0].size(1)
        mask = torch.arange(t, device=wav.device)[None, :] >= frame_len[:, None]
        return [hs[i].masked_fill(mask[..., None], 0.0) for i in layers], mask


def load_hf_upstream(path: str | os.PathLike, device: str = "cpu") -> HFUpstream:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise SerkitError(
            f"{path}: a directory without config.json; pass a fairseq checkpoint file or a "
            "Hugging Face model directory"
        )
    tf = _transformers()
    try:
        model, info = tf.AutoModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise SerkitError(f"{path}: transformers could not load this model ({type(e).__name__}: {e})") from e
    # transformers initialises absent weights at random with a warning: an encoder needs all of its own
    missing = sorted(info.get("missing_keys") or []) + sorted(
        str(k) for k in info.get("mismatched_keys") or []
    )
    if missing:
        raise SerkitError(
            f"{path}: the weights lack {len(missing)} tensor(s) of the model config.json describes "
            f"({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}); is the directory complete?"
        )
    if not hasattr(model.config, "conv_stride"):
        raise SerkitError(f"{path}: '{model.config.model_type}' is not a wav2vec-style speech model")
    normalize = False
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        normalize = bool(json.loads(pre.read_text()).get("do_normalize", False))
    up = HFUpstream(model.eval(), normalize=normalize, path=str(path))
    log.info(
        "loaded HF %s upstream %s: %d layers x %d dims", model.config.model_type, path, up.num_layers, up.dim
    )
    return up.to(device).eval()


__all__ = ["HFUpstream", "load_hf_upstream"]
