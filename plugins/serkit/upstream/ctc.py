"""Greedy CTC transcripts from a CTC-finetuned checkpoint's cached last layer (MFSN's ASR text).

fairseq's CTC models (``wav2vec_ctc``, ``hubert_ctc``) compute ``logits = proj(encoder output)``; the
encoder output is the last transformer layer, followed by the encoder's final layer norm in pre-LN
(``layer_norm_first``, the Large models) encoders. ``serkit dump-features`` stores layer ``L`` without
that norm (as fairseq's ``extract_features(output_layer=L)``), so the norm is applied here.
Decoding: argmax per frame, repeats merged, blanks (``<s>``, index 0) and the other specials dropped,
``|`` -> space, lower case.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..utils import SerkitError
from .checkpoint import read_checkpoint

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .features import FeatureReader

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


class GreedyCtc:
    """``GreedyCtc(checkpoint, dict_path)``: logits and transcripts from cached features of the last layer."""

    def __init__(self, checkpoint: str | Path, dict_path: str | Path) -> None:
        checkpoint, dict_path = Path(checkpoint), Path(dict_path)
        for p in (checkpoint, dict_path):
            if not p.is_file():
                raise SerkitError(
                    f"{p}: not found (the CTC checkpoint and its letter dictionary dict.ltr.txt)"
                )
        ck = read_checkpoint(checkpoint)
        if ck.ctc is None:
            raise SerkitError(
                f"{checkpoint}: a '{ck.name}' checkpoint with no CTC output layer (w2v_encoder.proj); "
                "pass a CTC-finetuned wav2vec 2.0 / HuBERT / data2vec checkpoint"
            )
        self.path, self.proj, self.layer = checkpoint, ck.ctc, ck.num_layers
        self.symbols = list(FAIRSEQ_SPECIALS) + [
            line.split()[0] for line in dict_path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
        if len(self.symbols) != self.proj.num_outputs:
            raise SerkitError(
                f"{dict_path}: {len(self.symbols)} symbols with fairseq's 4 specials, the checkpoint's "
                f"projection has {self.proj.num_outputs} outputs; use the dictionary it was trained with"
            )

    def check_layer(self, layer: int) -> None:
        if layer != self.layer:
            raise SerkitError(
                f"{self.path}: its CTC projection reads the last layer ({self.layer}); the cached "
                f"features are layer {layer}: dump layer {self.layer} (e.g. --tec-layer {self.layer})"
            )

    def logits(self, feats: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(T, V) CTC logits from (T, C) features of the last layer (a tensor or an array)."""
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(feats).float()
        p = self.proj
        if p.norm_weight is not None:
            x = F.layer_norm(x, (x.shape[-1],), p.norm_weight.float(), p.norm_bias.float(), eps=1e-5)
        out = x @ p.weight.float().T + p.bias.float()
        if p.blank_weight:
            if p.blank_mode == "set":
                out[..., 0] = p.blank_weight
            else:
                out[..., 0] += p.blank_weight
        return out

    def decode_ids(self, ids: list[int]) -> str:
        n = len(FAIRSEQ_SPECIALS)
        pieces = [self.symbols[i] for k, i in enumerate(ids) if (k == 0 or i != ids[k - 1]) and i >= n]
        return " ".join("".join(pieces).replace("|", " ").split()).lower()

    def transcribe(self, feats: torch.Tensor | np.ndarray) -> str:
        return self.decode_ids(self.logits(feats).argmax(-1).tolist())


def greedy_transcripts(
    checkpoint: str | Path, dict_path: str | Path, reader: FeatureReader, layer: int, utts: list[str]
) -> dict[str, str]:
    """``{utt: transcript}`` from a ``FeatureReader`` holding the CTC model's last layer."""
    ctc = GreedyCtc(checkpoint, dict_path)
    ctc.check_layer(layer)
    return {utt: ctc.transcribe(reader.load(utt, layers=[layer])[0]) for utt in utts}


__all__ = ["FAIRSEQ_SPECIALS", "GreedyCtc", "greedy_transcripts"]
