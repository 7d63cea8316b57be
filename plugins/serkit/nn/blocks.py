"""Sequence blocks used by the heads: feed-forward, self-attention with relative positions, post-LN
transformer layer, Shiftformer layer, ConvNeXt-like 1-D block, and the BAS candidate blocks.

All take ``x`` (B, T, C) and ``padding_mask`` (B, T) bool (True on padding) or None, and give each
sequence the same output whether or not it is padded inside a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masking import zero_padded_frames
from .shift import TemporalShift

__all__ = [
    "default_num_heads",
    "FeedForward",
    "RelativeSelfAttention",
    "TransformerLayer",
    "ShiftformerLayer",
    "ConvNeXtBlock1d",
    "MSABlock",
    "FFNBlock",
    "TransformerBlock",
]


def default_num_heads(dim: int, preferred: int = 12) -> int:
    """``preferred`` heads when it divides ``dim``, else the largest divisor of ``dim`` below it.

    Example
    -------
    >>> default_num_heads(768), default_num_heads(1024), default_num_heads(32)
    (12, 8, 8)
    """
    for heads in range(min(preferred, dim), 0, -1):
        if dim % heads == 0:
            return heads
    return 1


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear(C, H) -> GELU -> dropout -> Linear(H, C) -> dropout.

    Example
    -------
    >>> FeedForward(8, 32)(torch.randn(2, 5, 8)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim if out_dim is None else out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with relative position embeddings of BERT's "relative_key_query" kind.

    One table of ``2 * max_len - 1`` distance embeddings (size head_dim) is shared by all heads and
    the scores are ``(q.k + q.R(i-j) + k.R(i-j)) / sqrt(head_dim)``. Distances beyond ``max_len - 1``
    (longer inputs) use the embedding of the largest distance. Padded keys are masked out, so
    padding never reaches a valid frame.

    ShiftSER's baseline projects q, k and v with one Linear(C, 3C) and has no output projection;
    that is the default here (``out_proj=False``) and is what its parameter counts imply.

    Parameters
    ----------
    dim : int
    num_heads : int
    max_len : int
        Number of frames the position table covers (374 = 7.5 s at 50 frames/s in ShiftSER).
    out_proj : bool
        Add a Linear(C, C) after the heads are merged.
    dropout : float
        Dropout on the attention probabilities.

    Example
    -------
    >>> attn = RelativeSelfAttention(16, num_heads=4, max_len=10)
    >>> attn(torch.randn(2, 12, 16), torch.zeros(2, 12, dtype=torch.bool)).shape
    torch.Size([2, 12, 16])
    """

    def __init__(
        self, dim: int, num_heads: int, max_len: int = 374, out_proj: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.max_len = max_len
        self.qkv = nn.Linear(dim, 3 * dim)
        self.distance_embedding = nn.Embedding(2 * max_len - 1, self.head_dim)
        self.out_proj = nn.Linear(dim, dim) if out_proj else None
        self.dropout = nn.Dropout(dropout)

    def _relative_scores(self, q: Tensor, k: Tensor) -> Tensor:
        frames = q.shape[-2]
        reach = min(frames, self.max_len)  # distances -(reach-1) .. reach-1 are distinct
        table = self.distance_embedding.weight[self.max_len - reach : self.max_len + reach - 1]
        pos = torch.arange(frames, device=q.device)
        index = (pos[:, None] - pos[None, :]).clamp(-(reach - 1), reach - 1) + (reach - 1)  # (T, T)
        # q.R(i-j): project queries on every distance, then pick the distance of each (i, j).
        q_dist = torch.matmul(q, table.t().to(q.dtype))  # (B, H, T, 2 reach - 1)
        scores = torch.gather(q_dist, -1, index.expand(*q.shape[:2], frames, frames))
        # k.R(i-j): the same for keys, indexed by (j, i) then transposed to (i, j).
        k_dist = torch.matmul(k, table.t().to(k.dtype))
        k_scores = torch.gather(k_dist, -1, index.t().expand(*k.shape[:2], frames, frames))
        return scores + k_scores.transpose(-1, -2)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        batch, frames, dim = x.shape
        qkv = self.qkv(x).view(batch, frames, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, T, d)
        scores = torch.matmul(q, k.transpose(-1, -2)) + self._relative_scores(q, k)
        scores = scores * self.head_dim**-0.5
        if padding_mask is not None:
            # A finite minimum rather than -inf: an all-padding row stays finite instead of nan.
            scores = scores.masked_fill(padding_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(probs, v).transpose(1, 2).reshape(batch, frames, dim)
        return out if self.out_proj is None else self.out_proj(out)


class TransformerLayer(nn.Module):
    """Post-LN transformer layer with relative-position self-attention (ShiftSER's baseline):
    ``x = LN(x + Attn(x)); x = LN(x + MLP(x))``, MLP C -> mlp_ratio*C -> C.

    Example
    -------
    >>> TransformerLayer(24, num_heads=12, max_len=8)(torch.randn(2, 5, 24)).shape
    torch.Size([2, 5, 24])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        mlp_ratio: int = 4,
        max_len: int = 374,
        out_proj: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_heads = default_num_heads(dim) if num_heads is None else num_heads
        self.attention = RelativeSelfAttention(dim, num_heads, max_len, out_proj, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio * dim, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.dropout(self.attention(x, padding_mask)))
        return self.norm2(x + self.mlp(x))


class ShiftformerLayer(nn.Module):
    """Shiftformer layer: the temporal shift replaces self-attention as token mixer,
    ``x = shift(x); x = LN(x + MLP(x))``, MLP C -> mlp_ratio*C -> C.

    Example
    -------
    >>> layer = ShiftformerLayer(16, TemporalShift(1 / 4, bidirectional=True))
    >>> layer(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, shift: TemporalShift, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.shift = shift
        self.mlp = FeedForward(dim, mlp_ratio * dim, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = self.shift(x, padding_mask)
        return self.norm(x + self.mlp(x))


class ConvNeXtBlock1d(nn.Module):
    """ConvNeXt-like 1-D block: depthwise conv (k=7) -> LayerNorm -> Linear C->4C -> GELU -> Linear 4C->C,
    plus the identity, with an optional temporal shift.

    Padded frames are zeroed before the depthwise convolution, so they never mix into valid frames
    (a frame next to padding sees zeros, as at a sequence end). The pointwise convolutions are
    Linear layers on (B, T, C) (same parameters as kernel-1 Conv1d, no transposes).

    Parameters
    ----------
    dim : int
    kernel_size : int
    expansion : int
        Hidden width of the pointwise part, as a multiple of ``dim``.
    shift : TemporalShift, optional
    placement : {"residual", "inplace"}
        ``"residual"``: ``shift(x) + branch(x)`` (ShiftCNN); ``"inplace"``: ``s + branch(s)``
        with ``s = shift(x)``.
    dropout : float
        Dropout on the branch output.

    Example
    -------
    >>> block = ConvNeXtBlock1d(8, shift=TemporalShift(1 / 4))
    >>> block(torch.randn(2, 6, 8), torch.zeros(2, 6, dtype=torch.bool)).shape
    torch.Size([2, 6, 8])
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        expansion: int = 4,
        shift: TemporalShift | None = None,
        placement: str = "residual",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if placement not in ("residual", "inplace"):
            raise ValueError(f"placement must be 'residual' or 'inplace', got {placement!r}")
        if kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd so that the output stays aligned with the input")
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pointwise1 = nn.Linear(dim, expansion * dim)
        self.pointwise2 = nn.Linear(expansion * dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.shift = shift
        self.placement = placement

    def branch(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """The residual branch alone, (B, T, C) -> (B, T, C)."""
        x = zero_padded_frames(x, padding_mask)
        x = self.depthwise(x.transpose(1, 2)).transpose(1, 2)
        x = self.pointwise2(F.gelu(self.pointwise1(self.norm(x))))
        return self.dropout(x)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if self.shift is None:
            return x + self.branch(x, padding_mask)
        shifted = self.shift(x, padding_mask)
        if self.placement == "residual":
            return shifted + self.branch(x, padding_mask)
        return shifted + self.branch(shifted, padding_mask)


class MSABlock(nn.Module):
    """Multi-head self-attention with residual and post-LayerNorm: ``LN(x + MHA(x))`` (a BAS candidate).

    Uses ``torch.nn.MultiheadAttention`` (with its output projection) and no position embedding:
    upstream SSL features already carry position from the upstream's convolutional position encoding.

    Example
    -------
    >>> MSABlock(16, num_heads=4)(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, num_heads: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        num_heads = default_num_heads(dim, preferred=8) if num_heads is None else num_heads
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        out, _ = self.attention(x, x, x, key_padding_mask=padding_mask, need_weights=False)
        return self.norm(x + self.dropout(out))


class FFNBlock(nn.Module):
    """Position-wise feed-forward with post-LayerNorm, a BAS candidate: ``LN(FFN(x))``, or
    ``LN(x + FFN(x))`` with ``residual=True`` (the FFN half of a transformer layer).

    The BAS paper's FFN candidate is "a FFN without residual connection" (Sec. 2.2, Search Space), hence
    ``residual=False`` by default; :class:`TransformerBlock` keeps the residual, as the paper's Eq. 3.
    The LayerNorm is ours (every serkit candidate is post-LN; the paper names no normalisation).

    Example
    -------
    >>> FFNBlock(16, 64)(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self, dim: int, hidden: int | None = None, dropout: float = 0.0, residual: bool = False
    ) -> None:
        super().__init__()
        self.ffn = FeedForward(dim, 4 * dim if hidden is None else hidden, dropout)
        self.norm = nn.LayerNorm(dim)
        self.residual = bool(residual)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        out = self.ffn(x)
        return self.norm(x + out if self.residual else out)

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class TransformerBlock(nn.Module):
    """MSA block followed by a residual FFN block, the standard post-LN transformer layer (a BAS candidate):
    ``y = LN(x + MSA(x)); LN(y + FFN(y))``, the paper's Eq. 3 with post-LayerNorm.

    Example
    -------
    >>> TransformerBlock(16, 64, num_heads=4)(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self, dim: int, hidden: int | None = None, num_heads: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.msa = MSABlock(dim, num_heads, dropout)
        self.ffn = FFNBlock(dim, hidden, dropout, residual=True)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return self.ffn(self.msa(x, padding_mask), padding_mask)
