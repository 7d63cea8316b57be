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

The ShiftSER paper's ablations are options of these heads: the shift's ``proportion`` (Fig. 4(b)),
``placement`` residual or in-place (Fig. 2, Fig. 4), ConvHead's ``kernel_size`` (Fig. 4(a)),
TransformerHead's ``positions`` (RPE -> APE), ``token_mixer`` (MHSA -> pooling) and ``shift_placement``
(Table 3), and ``shift_augment_p`` > 0, which turns every shift of a head into a training-only random
augmentation (Table 1's "+Augment" rows: at evaluation the head is its shift-free baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch  # noqa: F401  (used by the doctests)
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .blocks import ConvNeXtBlock1d, RelativeSelfAttention, ShiftformerLayer, TransformerLayer
from .masking import zero_padded_frames
from .pooling import build_pooling
from .search import DerivedBlockNetwork
from .shift import RandomShift, TemporalShift

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
    "PoolingMixer",
    "make_shift",
    "count_parameters",
]

HeadFactory = Callable[..., nn.Module]
HEADS: dict[str, HeadFactory] = {}


def register_head(name: str) -> Callable[[HeadFactory], HeadFactory]:
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

    def decorator(factory: HeadFactory) -> HeadFactory:
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


def make_shift(
    proportion: float, bidirectional: bool, mask_aware: bool = True, augment_p: float = 0.0
) -> nn.Module:
    """The shift module of a head: a :class:`TemporalShift`, or with ``augment_p`` > 0 a
    :class:`RandomShift` (applied to a training batch with probability ``augment_p``, never in eval).

    Example
    -------
    >>> type(make_shift(1 / 4, False)).__name__, type(make_shift(1 / 4, False, augment_p=0.5)).__name__
    ('TemporalShift', 'RandomShift')
    """
    if augment_p < 0 or augment_p > 1:
        raise ValueError(f"shift_augment_p must be in [0, 1], got {augment_p}")
    if augment_p > 0:
        return RandomShift(augment_p, proportion, bidirectional, mask_aware)
    return TemporalShift(proportion, bidirectional, mask_aware)


class LinearHead(nn.Module):
    """Pooling then a linear classifier (the SUPERB-style probe).

    Example
    -------
    >>> LinearHead(8, 3)(torch.randn(2, 5, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, input_dim: int, num_classes: int, pooling: str = "mean", dropout: float = 0.0) -> None:
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

    def __init__(
        self, input_dim: int, num_classes: int, pooling: str = "mean", hidden: int = 256, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
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
    shift_augment_p : float
        > 0: the shifts are a training-only augmentation applied with this probability (see
        :func:`make_shift`; ShiftSER's "CNN+Augment").
    dropout : float

    Example
    -------
    >>> ConvHead(16, 4, shift_blocks=(1,))(torch.randn(2, 9, 16)).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        pooling: str = "mean",
        num_blocks: int = 2,
        kernel_size: int = 7,
        shift_blocks: Sequence[int] = (),
        proportion: float = 1 / 16,
        bidirectional: bool = False,
        mask_aware: bool = True,
        placement: str = "residual",
        shift_augment_p: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        shift_blocks = tuple(int(i) for i in shift_blocks)
        bad = [i for i in shift_blocks if not 0 <= i < num_blocks]
        if bad:
            raise ValueError(f"shift_blocks {bad} out of range for {num_blocks} blocks")
        self.blocks = nn.ModuleList(
            ConvNeXtBlock1d(
                input_dim,
                kernel_size,
                shift=make_shift(proportion, bidirectional, mask_aware, shift_augment_p)
                if i in shift_blocks
                else None,
                placement=placement,
                dropout=dropout,
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


class PoolingMixer(nn.Module):
    """Average pooling as token mixer (Table 3's "MHSA -> pooling"): ``mean(x[t-k//2 .. t+k//2]) - x[t]``.

    ShiftSER does not describe this variant beyond its reference to MetaFormer; the form is
    PoolFormer's (pool size 3, stride 1, the input subtracted, only valid frames averaged), so inside
    the post-LN layer ``LN(x + mixer(x))`` becomes ``LN(pool(x))``. No parameters.

    Example
    -------
    >>> PoolingMixer(3)(torch.tensor([[[0.0], [3.0], [6.0]]]))[0, :, 0]
    tensor([ 1.5000,  0.0000, -1.5000])
    """

    def __init__(self, pool_size: int = 3) -> None:
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool_size must be odd and positive, got {pool_size}")
        self.pool_size = int(pool_size)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        k = self.pool_size
        if padding_mask is None:
            valid = x.new_ones(x.shape[0], x.shape[1], 1)
        else:
            valid = (~padding_mask).to(x.dtype).unsqueeze(-1)
        sums = F.avg_pool1d((x * valid).transpose(1, 2), k, 1, k // 2, count_include_pad=True) * k
        counts = F.avg_pool1d(valid.transpose(1, 2), k, 1, k // 2, count_include_pad=True) * k
        pooled = (sums / counts.clamp_min(1.0)).transpose(1, 2)
        return zero_padded_frames(pooled - x, padding_mask)

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}"


class _SelfAttention(RelativeSelfAttention):
    """Self-attention without relative positions (the absolute-position variant adds them to the input)."""

    def __init__(self, dim: int, num_heads: int, out_proj: bool = False, dropout: float = 0.0) -> None:
        super().__init__(dim, num_heads, max_len=1, out_proj=out_proj, dropout=dropout)
        self.distance_embedding = None

    def _relative_scores(self, q: Tensor, k: Tensor) -> Tensor:
        return q.new_zeros(())


class _AblationTransformerLayer(TransformerLayer):
    """:class:`TransformerLayer` with ShiftSER's Table 3 variants: a token mixer other than relative-position
    attention and a temporal shift on the attention's residual path (residual) or on the layer input
    (in-place), as in the official code's commented-out alternatives.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int | None,
        mlp_ratio: int,
        max_len: int,
        out_proj: bool,
        dropout: float,
        positions: str,
        token_mixer: str,
        shift: nn.Module | None,
        placement: str,
    ) -> None:
        super().__init__(dim, num_heads, mlp_ratio, max_len, out_proj, dropout)
        if token_mixer == "pooling":
            self.attention = PoolingMixer(3)
        elif positions == "absolute":
            self.attention = _SelfAttention(dim, self.attention.num_heads, out_proj, dropout)
        self.shift = shift
        self.placement = placement

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if self.shift is not None and self.placement == "inplace":
            x = self.shift(x, padding_mask)
            shortcut = x
        elif self.shift is not None:
            shortcut = self.shift(x, padding_mask)
        else:
            shortcut = x
        x = self.norm1(shortcut + self.dropout(self.attention(x, padding_mask)))
        return self.norm2(x + self.mlp(x))


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
        Frames covered by the relative-position table (2 max_len - 1 distances) or the absolute one;
        longer inputs reuse the largest distance (the last position). 374 = 7.5 s, as in ShiftSER.
    out_proj : bool
        Output projection in attention (absent in the baseline whose size the paper reports).
    positions : {"relative", "absolute"}
        ``"absolute"``: a learned embedding per frame added to the input and attention without the
        relative table (Table 3's RPE -> APE; the official code's ``absolute`` type).
    token_mixer : {"attention", "pooling"}
        ``"pooling"``: :class:`PoolingMixer` instead of self-attention (Table 3's MHSA -> pooling).
    shift_placement : {"none", "residual", "inplace"}
        A temporal shift in every layer: on the attention's residual path (Table 3's residual -> shift)
        or on the layer input.
    proportion, bidirectional, mask_aware, shift_augment_p
        Of that shift (see :func:`make_shift`); ``shift_augment_p`` > 0 is "Transformer+Augment".
    dropout : float

    Example
    -------
    >>> TransformerHead(24, 4, max_len=16)(torch.randn(2, 9, 24)).shape
    torch.Size([2, 4])
    >>> TransformerHead(24, 4, max_len=16, positions="absolute")(torch.randn(2, 20, 24)).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        pooling: str = "mean",
        num_layers: int = 2,
        num_heads: int | None = None,
        mlp_ratio: int = 4,
        max_len: int = 374,
        out_proj: bool = False,
        positions: str = "relative",
        token_mixer: str = "attention",
        shift_placement: str = "none",
        proportion: float = 1 / 4,
        bidirectional: bool = False,
        mask_aware: bool = True,
        shift_augment_p: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if positions not in ("relative", "absolute"):
            raise ValueError(f"positions must be 'relative' or 'absolute', got {positions!r}")
        if token_mixer not in ("attention", "pooling"):
            raise ValueError(f"token_mixer must be 'attention' or 'pooling', got {token_mixer!r}")
        if shift_placement not in ("none", "residual", "inplace"):
            raise ValueError(
                f"shift_placement must be 'none', 'residual' or 'inplace', got {shift_placement!r}"
            )
        plain = positions == "relative" and token_mixer == "attention" and shift_placement == "none"
        self.layers = nn.ModuleList(
            TransformerLayer(input_dim, num_heads, mlp_ratio, max_len, out_proj, dropout)
            if plain
            else _AblationTransformerLayer(
                input_dim,
                num_heads,
                mlp_ratio,
                max_len,
                out_proj,
                dropout,
                positions,
                token_mixer,
                None
                if shift_placement == "none"
                else make_shift(proportion, bidirectional, mask_aware, shift_augment_p),
                shift_placement,
            )
            for _ in range(num_layers)
        )
        self.position_embeddings = nn.Embedding(max_len, input_dim) if positions == "absolute" else None
        self.pool = build_pooling(pooling, input_dim)
        self.classifier = nn.Linear(input_dim, num_classes)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if self.position_embeddings is not None:
            table = self.position_embeddings.weight
            pos = torch.arange(x.shape[1], device=x.device).clamp_max(table.shape[0] - 1)
            x = x + table[pos].to(x.dtype)
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

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        pooling: str = "mean",
        num_layers: int = 2,
        mlp_ratio: int = 4,
        proportion: float = 1 / 4,
        bidirectional: bool = True,
        mask_aware: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ShiftformerLayer(
                input_dim, TemporalShift(proportion, bidirectional, mask_aware), mlp_ratio, dropout
            )
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
    placement : {"inplace", "residual"}
        ``"residual"``: the LSTM sees the unshifted input and the shifted input joins its output
        through a projection shortcut Linear(C, 2 hidden) (the variant of the paper's Fig. 4(b), with
        extra parameters).
    shift_augment_p : float
        > 0: the shift is a training-only augmentation with this probability ("LSTM+Augment").
    dropout : float
        Dropout on the LSTM outputs.

    Example
    -------
    >>> head = LSTMHead(8, 4, proportion=1 / 4)
    >>> head(torch.randn(2, 5, 8), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        pooling: str = "mean",
        hidden: int | None = None,
        proportion: float = 0.0,
        bidirectional: bool = False,
        mask_aware: bool = True,
        placement: str = "inplace",
        shift_augment_p: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if placement not in ("inplace", "residual"):
            raise ValueError(f"placement must be 'inplace' or 'residual', got {placement!r}")
        hidden = input_dim if hidden is None else hidden
        self.shift = None
        if proportion > 0:
            self.shift = make_shift(proportion, bidirectional, mask_aware, shift_augment_p)
        self.placement = placement
        residual = self.shift is not None and placement == "residual"
        self.shortcut = nn.Linear(input_dim, 2 * hidden) if residual else None
        self.lstm = nn.LSTM(input_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(2 * hidden)
        self.pool = build_pooling(pooling, 2 * hidden)
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        shortcut = None
        if self.shift is not None:
            shifted = self.shift(x, padding_mask)
            if self.shortcut is None:
                x = shifted
            else:
                shortcut = self.shortcut(shifted)
        if padding_mask is None or not bool(padding_mask.any()):
            out, _ = self.lstm(x)
        else:
            lengths = (~padding_mask).sum(dim=1).clamp_min(1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        out = self.dropout(out)
        if shortcut is not None:
            out = out + shortcut
        out = self.norm(out)
        return self.classifier(self.pool(out, padding_mask))


def _register_class(
    name: str, cls: Callable[..., nn.Module], aliases: dict[str, str] | None = None, **defaults: object
) -> None:
    """Register ``cls(input_dim, num_classes, pooling=..., **kw)`` as head ``name``; ``defaults`` fill in
    the keywords the caller does not give (what makes ``shiftcnn`` a ``ConvHead`` with a shift);
    ``aliases`` maps a keyword the other heads use to this class's own name for it."""

    def factory(input_dim: int, num_classes: int, pooling: str = "mean", **kw) -> nn.Module:
        for alias, own in (aliases or {}).items():
            if alias in kw:
                if own in kw:
                    raise ValueError(f"head {name!r}: give {own!r} or {alias!r}, not both")
                kw[own] = kw.pop(alias)
        return cls(input_dim, num_classes, pooling=pooling, **{**defaults, **kw})

    factory.__name__ = factory.__qualname__ = f"build_{name}_head"
    register_head(name)(factory)


_register_class("linear", LinearHead)
_register_class("ffn", FFNHead)
_register_class("cnn", ConvHead, shift_blocks=())
_register_class(
    "shiftcnn", ConvHead, shift_blocks=(1,), proportion=1 / 16, bidirectional=False, placement="residual"
)
# placement: where the shift goes, as the other shifted heads name it (one config serves them all)
_register_class("transformer", TransformerHead, aliases={"placement": "shift_placement"})
_register_class("shiftformer", ShiftformerHead)
_register_class("lstm", LSTMHead, proportion=0.0)
_register_class("shiftlstm", LSTMHead, proportion=1 / 4, bidirectional=False)
_register_class("bas", DerivedBlockNetwork)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``.

    Example
    -------
    >>> count_parameters(build_head("linear", 768, 4))
    3076
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
