"""Classification heads on frame features, built by name: ``build_head(name, input_dim, num_classes)``.

Every head maps ``x`` (B, T, C) and ``padding_mask`` (B, T) bool (True on padding, or None) to logits
(B, num_classes), and gives a sequence the same logits whether or not it is padded inside a batch.

Heads and their parameter counts at C = 768 with 4 classes (default settings)::

    linear        pool -> Linear(C, K)                                                 3,076
    ffn           BAS simple-FFN: Linear(C, 256) -> ReLU -> Linear(256, 256) -> ReLU
                  on frames, pool -> Linear(256, K)                                  263,684
    cnn           2 ConvNeXt-like blocks, LayerNorm, pool, Linear                  9,464,836
    shiftcnn      cnn + residual shift 1/16 (unidirectional) in the 2nd block      9,464,836
    transformer   2 post-LN layers, 12 heads, relative_key_query positions
                  (table of 2*374-1 distances), no attention output projection    13,093,252
    shiftformer   2 layers of shift (1/4, bidirectional) + MLP C->4C->C + LN       9,451,012
    lstm          BiLSTM (768 per direction), LayerNorm(2H), pool, Linear          9,458,692
    shiftlstm     lstm with an in-place shift 1/4 (unidirectional) on its input    9,458,692
    bas           derived BAS network (serkit.nn.search), "ffn,msa,msa_ffn,msa",
                  model dim 256, 4 heads, FFN 1024                                2,041,092

Shiftformer is 27.8 % smaller than the transformer baseline, as in the ShiftSER paper. The shift adds
no parameters. New heads are added with ``@register_head("name")``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch  # noqa: F401  (used by the doctests)
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .blocks import ConvNeXtBlock1d, ShiftformerLayer, TransformerLayer
from .pooling import build_pooling
from .search import DerivedBlockNetwork
from .shift import TemporalShift

__all__ = [
    "HEADS",
    "register_head",
    "build_head",
    "LinearHead",
    "FFNHead",
    "ConvHead",
    "TransformerHead",
    "ShiftformerHead",
    "LSTMHead",
    "count_parameters",
]

HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str):
    """Decorator registering a head factory ``f(input_dim, num_classes, pooling="mean", **kw)`` by name.

    Example
    -------
    >>> @register_head("doctest_mean_linear")
    ... def _mean_linear(input_dim, num_classes, pooling="mean"):
    ...     return LinearHead(input_dim, num_classes, pooling)
    >>> build_head("doctest_mean_linear", 8, 3)(torch.randn(2, 5, 8)).shape
    torch.Size([2, 3])
    >>> del HEADS["doctest_mean_linear"]
    """

    def decorator(factory):
        if name in HEADS:
            raise ValueError(f"head {name!r} is already registered")
        HEADS[name] = factory
        return factory

    return decorator


def build_head(name: str, input_dim: int, num_classes: int, pooling: str = "mean", **kw) -> nn.Module:
    """Build a registered head; ``kw`` goes to the head (e.g. ``proportion``, ``num_layers``, ``dropout``).

    Parameters
    ----------
    name : str
        One of ``sorted(HEADS)``: linear, ffn, cnn, shiftcnn, transformer, shiftformer, lstm, shiftlstm,
        bas.
    input_dim : int
        Feature dimension C.
    num_classes : int
    pooling : str
        ``"mean"`` or ``"attention"`` (FLEA).

    Returns
    -------
    nn.Module
        ``forward(x: (B, T, C), padding_mask: (B, T) bool | None) -> logits (B, num_classes)``.

    Example
    -------
    >>> head = build_head("shiftcnn", 32, 4)
    >>> head(torch.randn(2, 9, 32), torch.zeros(2, 9, dtype=torch.bool)).shape
    torch.Size([2, 4])
    """
    try:
        factory = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose one of {sorted(HEADS)}") from None
    return factory(input_dim, num_classes, pooling=pooling, **kw)


class LinearHead(nn.Module):
    """Pooling then a linear classifier (the SUPERB-style probe).

    Example
    -------
    >>> LinearHead(8, 3)(torch.randn(2, 5, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, input_dim: int, num_classes: int, pooling: str = "mean", dropout: float = 0.0):
        super().__init__()
        self.pool = build_pooling(pooling, input_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(input_dim, num_classes)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.classifier(self.dropout(self.pool(x, padding_mask)))


class FFNHead(nn.Module):
    """BAS paper's simple-FFN baseline: a 2-layer MLP on every frame, then pooling and a linear classifier.

    Frames go through Linear(C, hidden) -> ReLU -> dropout -> Linear(hidden, hidden) -> ReLU -> dropout
    (hidden = 256 by default), then pooling and Linear(hidden, K).

    Example
    -------
    >>> FFNHead(8, 3, hidden=16)(torch.randn(2, 5, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, input_dim: int, num_classes: int, pooling: str = "mean", hidden: int = 256,
                 dropout: float = 0.0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        )
        self.pool = build_pooling(pooling, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.classifier(self.pool(self.mlp(x), padding_mask))


class ConvHead(nn.Module):
    """ShiftCNN (and its shift-free CNN baseline): ConvNeXt-like 1-D blocks, LayerNorm, pooling, Linear.

    Each block: depthwise conv (k=7) -> LayerNorm -> Linear C->4C -> GELU -> Linear 4C->C, plus the
    identity (see :class:`~serkit.nn.blocks.ConvNeXtBlock1d`). The blocks listed in ``shift_blocks``
    get a temporal shift at ``placement`` (ShiftCNN: the 2nd block, residual, 1/16, unidirectional).

    Parameters
    ----------
    input_dim, num_classes, pooling
    num_blocks : int
    kernel_size : int
    shift_blocks : sequence of int
        0-based indices of the blocks with a shift; empty for the CNN baseline.
    proportion, bidirectional, mask_aware
        As in :class:`~serkit.nn.shift.TemporalShift`.
    placement : {"residual", "inplace"}
    dropout : float

    Example
    -------
    >>> ConvHead(16, 4, shift_blocks=(1,))(torch.randn(2, 9, 16)).shape
    torch.Size([2, 4])
    """

    def __init__(self, input_dim: int, num_classes: int, pooling: str = "mean", num_blocks: int = 2,
                 kernel_size: int = 7, shift_blocks=(), proportion: float = 1 / 16,
                 bidirectional: bool = False, mask_aware: bool = True, placement: str = "residual",
                 dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(
            ConvNeXtBlock1d(
                input_dim, kernel_size,
                shift=TemporalShift(proportion, bidirectional, mask_aware) if i in shift_blocks else None,
                placement=placement, dropout=dropout,
            )
            for i in range(num_blocks)
        )
        self.norm = nn.LayerNorm(input_dim)
        self.pool = build_pooling(pooling, input_dim)
        self.classifier = nn.Linear(input_dim, num_classes)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, padding_mask)
        return self.classifier(self.pool(self.norm(x), padding_mask))


class TransformerHead(nn.Module):
    """ShiftSER's transformer baseline: post-LN layers with relative-position attention, pooling, Linear.

    Parameters
    ----------
    input_dim, num_classes, pooling
    num_layers : int
    num_heads : int, optional
        Default 12 when it divides C, else the largest divisor of C below 12.
    mlp_ratio : int
    max_len : int
        Frames covered by the relative-position table (2 max_len - 1 distances); longer inputs reuse
        the largest distance. 374 = 7.5 s, as in ShiftSER.
    out_proj : bool
        Output projection in attention (absent in the baseline whose size the paper reports).
    dropout : float

    Example
    -------
    >>> TransformerHead(24, 4, max_len=16)(torch.randn(2, 9, 24)).shape
    torch.Size([2, 4])
    """

    def __init__(self, input_dim: int, num_classes: int, pooling: str = "mean", num_layers: int = 2,
                 num_heads: int | None = None, mlp_ratio: int = 4, max_len: int = 374, out_proj: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(input_dim, num_heads, mlp_ratio, max_len, out_proj, dropout)
            for _ in range(num_layers)
        )
        self.pool = build_pooling(pooling, input_dim)
        self.classifier = nn.Linear(input_dim, num_classes)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, padding_mask)
        return self.classifier(self.pool(x, padding_mask))


class ShiftformerHead(nn.Module):
    """Shiftformer: the transformer baseline with the temporal shift as token mixer, then pooling, Linear.

    Layers: ``x = shift(x); x = LN(x + MLP(x))``, MLP C -> 4C -> C, shift 1/4 bidirectional.

    Example
    -------
    >>> ShiftformerHead(16, 4)(torch.randn(2, 9, 16)).shape
    torch.Size([2, 4])
    """

    def __init__(self, input_dim: int, num_classes: int, pooling: str = "mean", num_layers: int = 2,
                 mlp_ratio: int = 4, proportion: float = 1 / 4, bidirectional: bool = True,
                 mask_aware: bool = True, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(
            ShiftformerLayer(input_dim, TemporalShift(proportion, bidirectional, mask_aware),
                             mlp_ratio, dropout)
            for _ in range(num_layers)
        )
        self.pool = build_pooling(pooling, input_dim)
        self.classifier = nn.Linear(input_dim, num_classes)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, padding_mask)
        return self.classifier(self.pool(x, padding_mask))


class LSTMHead(nn.Module):
    """ShiftLSTM (and its shift-free baseline): a 1-layer BiLSTM, LayerNorm, pooling, Linear.

    Padded batches are packed, so padding never enters the recurrence (the padding must be at the
    end of each sequence, as ``lengths_to_padding_mask`` makes it). With ``proportion > 0`` the LSTM's
    input is shifted in place (ShiftLSTM: 1/4, unidirectional).

    Parameters
    ----------
    input_dim, num_classes, pooling
    hidden : int, optional
        Units per direction; default C (768 for base upstreams, as in ShiftSER).
    proportion : float
        Shifted fraction of the input channels; 0 for the plain BiLSTM.
    bidirectional, mask_aware
        Of the shift.
    dropout : float
        Dropout on the LSTM outputs.

    Example
    -------
    >>> head = LSTMHead(8, 4, proportion=1 / 4)
    >>> head(torch.randn(2, 5, 8), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])).shape
    torch.Size([2, 4])
    """

    def __init__(self, input_dim: int, num_classes: int, pooling: str = "mean", hidden: int | None = None,
                 proportion: float = 0.0, bidirectional: bool = False, mask_aware: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        hidden = input_dim if hidden is None else hidden
        self.shift = TemporalShift(proportion, bidirectional, mask_aware) if proportion > 0 else None
        self.lstm = nn.LSTM(input_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(2 * hidden)
        self.pool = build_pooling(pooling, 2 * hidden)
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if self.shift is not None:
            x = self.shift(x, padding_mask)
        if padding_mask is None or not bool(padding_mask.any()):
            out, _ = self.lstm(x)
        else:
            lengths = (~padding_mask).sum(dim=1).clamp_min(1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        out = self.norm(self.dropout(out))
        return self.classifier(self.pool(out, padding_mask))


@register_head("linear")
def _linear(input_dim, num_classes, pooling="mean", **kw):
    return LinearHead(input_dim, num_classes, pooling, **kw)


@register_head("ffn")
def _ffn(input_dim, num_classes, pooling="mean", **kw):
    return FFNHead(input_dim, num_classes, pooling, **kw)


@register_head("cnn")
def _cnn(input_dim, num_classes, pooling="mean", **kw):
    kw.setdefault("shift_blocks", ())
    return ConvHead(input_dim, num_classes, pooling, **kw)


@register_head("shiftcnn")
def _shiftcnn(input_dim, num_classes, pooling="mean", **kw):
    kw.setdefault("shift_blocks", (1,))
    kw.setdefault("proportion", 1 / 16)
    kw.setdefault("bidirectional", False)
    kw.setdefault("placement", "residual")
    return ConvHead(input_dim, num_classes, pooling, **kw)


@register_head("transformer")
def _transformer(input_dim, num_classes, pooling="mean", **kw):
    return TransformerHead(input_dim, num_classes, pooling, **kw)


@register_head("shiftformer")
def _shiftformer(input_dim, num_classes, pooling="mean", **kw):
    return ShiftformerHead(input_dim, num_classes, pooling, **kw)


@register_head("lstm")
def _lstm(input_dim, num_classes, pooling="mean", **kw):
    kw.setdefault("proportion", 0.0)
    return LSTMHead(input_dim, num_classes, pooling, **kw)


@register_head("shiftlstm")
def _shiftlstm(input_dim, num_classes, pooling="mean", **kw):
    kw.setdefault("proportion", 1 / 4)
    kw.setdefault("bidirectional", False)
    return LSTMHead(input_dim, num_classes, pooling, **kw)


@register_head("bas")
def _bas(input_dim, num_classes, pooling="mean", **kw):
    return DerivedBlockNetwork(input_dim, num_classes, pooling=pooling, **kw)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``.

    Example
    -------
    >>> count_parameters(build_head("linear", 768, 4))
    3076
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

