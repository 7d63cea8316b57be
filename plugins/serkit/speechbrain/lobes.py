"""SpeechBrain lobes: serkit's modules behind SpeechBrain's ``(x, lengths)`` calling convention.

SpeechBrain passes a padded batch with *relative* lengths (``lengths[b]`` in (0, 1], the fraction of
the padded time axis that is real); ``serkit.nn`` takes a boolean ``padding_mask`` (True on padding).
Each lobe converts, so a recipe can write ``head: !new:serkit.speechbrain.lobes.SERHead`` and call
``head(feats, lens)`` as it would any SpeechBrain lobe.

Example
-------
>>> import torch
>>> head = SERHead("linear", input_dim=8, num_classes=4)
>>> x, lens = torch.randn(2, 10, 8), torch.tensor([1.0, 0.5])
>>> head(x, lens).shape
torch.Size([2, 4])

In another SpeechBrain recipe, ``output`` gives the shapes its lobes give: ``"log_probs"`` (B, 1, K) for a
``classifier`` slot (what ``sb.nnet.losses.nll_loss`` and ``classification_error`` expect), ``"embedding"``
(B, 1, D) for an ``embedding_model`` slot (docs/speechbrain_reuse.md):

>>> SERHead("linear", input_dim=8, num_classes=4, output="log_probs")(x, lens).shape
torch.Size([2, 1, 4])
>>> SERHead("ffn", input_dim=8, num_classes=4, output="embedding", hidden=6)(x, lens).shape
torch.Size([2, 1, 6])
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NoReturn

import torch
from torch import Tensor, nn

log = logging.getLogger("serkit.speechbrain")

__all__ = [
    "relative_lengths_to_padding_mask",
    "padding_mask_to_relative_lengths",
    "SERHead",
    "WeightedLayerSum",
    "SpecAugment",
    "FairseqUpstream",
]


def relative_lengths_to_padding_mask(lengths: Tensor | None, max_len: int) -> Tensor | None:
    """SpeechBrain relative lengths (B,) -> padding mask (B, T) bool, True on padded frames.

    Absolute lengths are ``round(lengths * max_len)`` (SpeechBrain's own rounding), at least one frame.

    Example
    -------
    >>> relative_lengths_to_padding_mask(torch.tensor([1.0, 0.5]), 4)
    tensor([[False, False, False, False],
            [False, False,  True,  True]])
    """
    if lengths is None:
        return None
    from speechbrain.dataio.dataio import length_to_mask

    absolute = torch.round(lengths.float() * max_len).long().clamp(1, max_len)
    return ~length_to_mask(absolute, max_len, dtype=torch.bool)


def padding_mask_to_relative_lengths(padding_mask: Tensor) -> Tensor:
    """Padding mask (B, T) -> SpeechBrain relative lengths (B,).

    Example
    -------
    >>> padding_mask_to_relative_lengths(torch.tensor([[False, False], [False, True]]))
    tensor([1.0000, 0.5000])
    """
    max_len = max(1, padding_mask.size(1))
    return (~padding_mask).sum(dim=1).float() / max_len


class SERHead(nn.Module):
    """An utterance classifier from ``serkit.nn.build_head`` taking ``(x, lengths)``.

    Parameters
    ----------
    name : str
        A head registered in ``serkit.nn`` (``linear``, ``ffn``, ``cnn``, ``shiftcnn``, ``transformer``,
        ``shiftformer``, ``lstm``, ``shiftlstm``, ``bas_search``, ``bas``, ...).
    input_dim, num_classes : int
    pooling : str
        ``"mean"`` or ``"attention"`` (FLEA).
    output : str
        ``"logits"`` (default; serkit's own recipes): (B, K). ``"log_probs"``: log-softmax (B, 1, K), a
        SpeechBrain classifier lobe (``sb.nnet.losses.nll_loss``, ``classification_error``).
        ``"embedding"``: the pooled utterance vector that feeds the head's final linear layer, (B, 1, D),
        for an ``embedding_model`` slot.
    **kwargs
        Passed to the head (e.g. ``arch`` for ``bas``, ``num_layers`` for ``bas_search``); a ``None`` is
        left out, so the head takes its registered default (one yaml serves every head of a family).

    Shapes
    ------
    x : (B, T, C), or (B, C) for one vector per utterance; lengths : (B,) relative, or None;
    output : see ``output``.
    """

    OUTPUTS = ("logits", "log_probs", "embedding")

    def __init__(
        self,
        name: str,
        input_dim: int,
        num_classes: int,
        pooling: str = "mean",
        output: str = "logits",
        **kwargs,
    ) -> None:
        super().__init__()
        from serkit.nn import HEADS, BlockSearchSupernet, build_head

        if output not in self.OUTPUTS:
            raise ValueError(f"SERHead output={output!r}: choose one of {', '.join(self.OUTPUTS)}")
        self.name = name
        self.output = output
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if name == "bas_search" and name not in HEADS:  # the supernet is built directly, not registered
            self.head = BlockSearchSupernet(int(input_dim), int(num_classes), pooling=pooling, **kwargs)
        else:
            self.head = build_head(name, int(input_dim), int(num_classes), pooling=pooling, **kwargs)
        final = getattr(self.head, "classifier", None)
        if output == "embedding" and not isinstance(final, nn.Linear):
            raise ValueError(
                f"SERHead {name!r}: no final linear `classifier` layer to take the embedding "
                "from; use output='logits' or 'log_probs'"
            )

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if x.dim() == 2:  # one vector per utterance (e.g. another lobe's embedding squeezed): one frame
            x = x.unsqueeze(1)
        mask = relative_lengths_to_padding_mask(lengths, x.size(1))
        if self.output == "embedding":
            return self.embed(x, mask).unsqueeze(1)
        logits = self.head(x, mask)
        if self.output == "log_probs":
            return torch.log_softmax(logits, dim=-1).unsqueeze(1)
        return logits

    def embed(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """The input of the head's final linear layer, (B, D): the head runs up to it."""
        captured = []

        def grab(module: nn.Module, args: tuple[Tensor, ...]) -> NoReturn:
            captured.append(args[0])
            raise _Embedded

        handle = self.head.classifier.register_forward_pre_hook(grab)
        try:
            self.head(x, padding_mask)
        except _Embedded:
            pass
        finally:
            handle.remove()
        return captured[0]


class _Embedded(Exception):
    """Stops a head at its final linear layer once its input (the embedding) is taken."""


class WeightedLayerSum(nn.Module):
    """Learnable softmax-weighted sum over stacked upstream layers (SUPERB's feature-extraction setting).

    Shapes
    ------
    x : (B, L, T, C); lengths : (B,) relative, unused (the sum is per frame); output : (B, T, C).

    Example
    -------
    >>> WeightedLayerSum(3)(torch.ones(2, 3, 5, 4)).shape
    torch.Size([2, 5, 4])
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        from serkit.nn import WeightedLayerSum as _WeightedLayerSum

        self.num_layers = int(num_layers)
        self.inner = _WeightedLayerSum(self.num_layers)

    def layer_weights(self) -> Tensor:
        return torch.softmax(self.inner.logits.detach(), dim=0)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.inner(x)


class SpecAugment(nn.Module):
    """``serkit.nn.SpecAugment`` (time and channel masks on features, training only) with ``(x, lengths)``.

    Keyword arguments are those of ``serkit.nn.SpecAugment``; defaults are ShiftSER's.

    Shapes
    ------
    x : (B, T, C); lengths : (B,) relative, or None; output : (B, T, C).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__()
        from serkit.nn import SpecAugment as _SpecAugment

        self.inner = _SpecAugment(**kwargs)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if not self.training:
            return x
        return self.inner.train()(x, relative_lengths_to_padding_mask(lengths, x.size(1)))


def resolve_layers(spec: str | int | Iterable[int] | None, num_layers: int) -> list[int]:
    """``"all"`` | ``"last"`` | int | list of ints -> layer indices (0 = CNN projection, L = last block).

    Example
    -------
    >>> resolve_layers("all", 2), resolve_layers("last", 12), resolve_layers("3,4", 12)
    ([0, 1, 2], [12], [3, 4])
    """
    if spec is None or spec == "all":
        return list(range(num_layers + 1))
    if spec == "last":
        return [num_layers]
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, str):
        return [int(s) for s in spec.split(",") if s.strip()]
    return [int(s) for s in spec]


class FairseqUpstream(nn.Module):
    """A fairseq SSL upstream (HuBERT, wav2vec 2.0, data2vec) to finetune: CNN frozen, transformer trained.

    Loaded through ``serkit.upstream.load_upstream`` (a local checkpoint path; nothing is downloaded) and
    run by :func:`serkit.upstream.fairseq_models.layer_outputs`, the forward that feature extraction and
    the fairseq SER model use too (per-utterance CNN where the extractor group-normalises, so padding
    never changes an utterance's features), with gradients through the parts that are trained.

    Parameters
    ----------
    path : str
        fairseq checkpoint.
    freeze_cnn : bool
        Keep the convolutional feature extractor fixed (the finetuning setting of ShiftSER and FLEA).
    freeze : bool
        Keep everything fixed (a frozen upstream computed on the fly, e.g. for benchmarks).
    layers : "all" | "last" | int | list of int
        Which layers to return, stacked.
    mask_time_prob, mask_time_length : float, int
        Time masking inside the upstream while training (FLEA's official code: 0.08 and 10 frames, the
        Hugging Face HuBERT's ``mask_time_prob``/``mask_time_length``): spans of the CNN features (after
        the projection, before the transformer, where HuBERT masks in pretraining) replaced with the
        model's learned mask embedding, about ``mask_time_prob * T / mask_time_length`` spans per
        utterance, at least 2, inside its valid frames. 0 turns it off.
    output_dropout : float
        Dropout on the returned layers in training (FLEA's official code: 0.1 on the last layer,
        before pooling).

    Shapes
    ------
    wav : (B, S) at 16 kHz; lengths : (B,) relative; output : ((B, L, T, C), frame lengths (B,) relative).
    """

    def __init__(
        self,
        path: str,
        freeze_cnn: bool = True,
        freeze: bool = False,
        layers: str | int | Iterable[int] = "last",
        mask_time_prob: float = 0.0,
        mask_time_length: int = 10,
        output_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.mask_time_prob, self.mask_time_length = float(mask_time_prob), int(mask_time_length)
        self.output_dropout = nn.Dropout(float(output_dropout))
        from serkit.upstream import load_upstream

        self.path = str(path)
        self.upstream = load_upstream(self.path, device="cpu")
        self.model = getattr(self.upstream, "model", None)
        if self.model is None or not hasattr(self.model, "feature_extractor"):
            raise TypeError(
                f"{path}: FairseqUpstream finetunes fairseq HuBERT/wav2vec 2.0/data2vec models; "
                f"got a {getattr(self.upstream, 'kind', '?')} upstream"
            )
        self.layers = resolve_layers(layers, self.upstream.num_layers)
        self.upstream.check_layers(self.layers)
        self.num_layers = len(self.layers)
        self.dim = self.upstream.dim
        self.freeze = bool(freeze)
        self.freeze_cnn = bool(freeze_cnn) or self.freeze
        for p in self.model.feature_extractor.parameters():
            p.requires_grad_(not self.freeze_cnn)
        if self.freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
        encoder = self.model.encoder
        if getattr(encoder, "layerdrop", 0.0) > 0:  # dropped layers would shift the layer numbering
            log.info("%s: encoder layerdrop %.2f disabled for finetuning", path, encoder.layerdrop)
            encoder.layerdrop = 0.0
        # Parts of fairseq's pretraining model that SER never uses (masked-prediction heads):
        # leaving them trainable would make DDP wait for gradients that never come.
        unused = [
            "final_proj",
            "label_embs_concat",
            "project_q",
            "quantizer",
            "target_glu",
            "final_proj_list",
        ]
        if self.mask_time_prob <= 0 or self.freeze:
            unused.append("mask_emb")  # trained, as the rest of the transformer, only when masking uses it
        elif not isinstance(getattr(self.model, "mask_emb", None), nn.Parameter):
            raise TypeError(
                f"{path}: mask_time_prob needs a model with a mask embedding (HuBERT, wav2vec 2.0)"
            )
        for name in unused:
            obj = getattr(self.model, name, None)
            if isinstance(obj, nn.Module):
                for p in obj.parameters():
                    p.requires_grad_(False)
            elif isinstance(obj, nn.Parameter):
                obj.requires_grad_(False)

    def train(self, mode: bool = True) -> FairseqUpstream:
        super().train(mode)
        if self.freeze_cnn:  # frozen parts stay deterministic (no dropout) while the rest trains
            self.model.feature_extractor.eval()
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        from serkit.upstream.fairseq_models import layer_outputs

        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        wav = wav.float()
        n = wav.size(1)
        if lengths is None:
            sample_lengths = torch.full((wav.size(0),), n, dtype=torch.long, device=wav.device)
        else:
            sample_lengths = torch.round(lengths.float() * n).long().clamp(1, n)
        masking = self.training and self.mask_time_prob > 0 and not self.freeze
        hidden, frame_mask = layer_outputs(
            self.model,
            wav,
            sample_lengths,
            self.layers,
            normalize=self.upstream.normalize,
            train_cnn=not self.freeze_cnn,
            train=not self.freeze,
            mask=self._mask_time if masking else None,
            path=self.path,
        )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            out = self.output_dropout(torch.stack(hidden, dim=1))  # (B, L, T, C)
            out = out.masked_fill(frame_mask[:, None, :, None], 0.0)
        return out, padding_mask_to_relative_lengths(frame_mask)

    def _mask_time(self, x: Tensor, frame_mask: Tensor) -> Tensor:
        """Spans of the transformer input replaced with the model's mask embedding (``mask_time_prob``)."""
        from serkit.nn.augment import _span_mask

        frame_len = (~frame_mask).sum(1)
        spans = _span_mask(frame_len, x.size(1), self.mask_time_prob, self.mask_time_length, 2, None)
        return torch.where(spans[:, :, None], self.model.mask_emb.to(x.dtype), x)
