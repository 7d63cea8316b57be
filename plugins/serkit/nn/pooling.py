"""Utterance-level pooling over frames (mean, FLEA attention) and the learnable sum of upstream layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .masking import masked_mean

__all__ = ["MeanPooling", "AttentionPooling", "WeightedLayerSum", "build_pooling", "POOLINGS"]


class MeanPooling(nn.Module):
    """Average of the valid frames of each sequence.

    Shapes
    ------
    x : (B, T, C); padding_mask : (B, T) bool, True on padding, or None; output : (B, C).

    Example
    -------
    >>> pool = MeanPooling()
    >>> x = torch.tensor([[[1.0], [3.0], [7.0]]])
    >>> pool(x, torch.tensor([[False, False, True]]))
    tensor([[2.]])
    """

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim  # accepted for a uniform build_pooling(name, dim) signature; unused

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        return masked_mean(x, padding_mask)


class AttentionPooling(nn.Module):
    """Soft attention pooling of FLEA: ``a_i = softmax_i(tanh(w . x_i))``, ``z = sum_i a_i x_i``.

    The softmax runs over the valid frames only, so padded frames get zero weight. ``w`` is a vector
    (no bias), initialised to zero: training starts from plain mean pooling.

    Parameters
    ----------
    dim : int
        Number of channels C.

    Shapes
    ------
    x : (B, T, C); padding_mask : (B, T) bool, True on padding, or None; output : (B, C).

    Example
    -------
    >>> pool = AttentionPooling(4)
    >>> x = torch.randn(2, 6, 4)
    >>> torch.allclose(pool(x), x.mean(dim=1), atol=1e-6)  # zero-initialised: uniform weights
    True
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(self.score.weight)

    def weights(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Attention weights over frames, shape (B, T); zero on padded frames, rows sum to 1."""
        scores = torch.tanh(self.score(x).squeeze(-1))
        if padding_mask is not None:
            scores = scores.masked_fill(padding_mask, float("-inf"))
            # A sequence with no valid frame would give nan; give it zero weights instead.
            empty = padding_mask.all(dim=1, keepdim=True)
            scores = scores.masked_fill(empty, 0.0)
            return torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)
        return torch.softmax(scores, dim=-1)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        weights = self.weights(x, padding_mask)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)  # 0 * inf in padding would be nan
        return torch.bmm(weights.unsqueeze(1), x).squeeze(1)


POOLINGS = {"mean": MeanPooling, "attention": AttentionPooling}


def build_pooling(name: str, dim: int) -> nn.Module:
    """Build a pooling layer by name: ``"mean"`` or ``"attention"`` (FLEA).

    Example
    -------
    >>> build_pooling("attention", 8)
    AttentionPooling(
      (score): Linear(in_features=8, out_features=1, bias=False)
    )
    """
    try:
        cls = POOLINGS[name]
    except KeyError:
        raise ValueError(f"unknown pooling {name!r}; choose one of {sorted(POOLINGS)}") from None
    return cls(dim)


class WeightedLayerSum(nn.Module):
    """Learnable weighted sum of an upstream's layers (the SUPERB feature-extraction setting).

    The weights are a softmax over ``num_layers`` learnable logits, initialised equal.

    Parameters
    ----------
    num_layers : int
        Number of stacked layers L.

    Shapes
    ------
    x : (B, L, T, C); output : (B, T, C). ``padding_mask`` is accepted and unused (the sum is per frame).

    Example
    -------
    >>> layer_sum = WeightedLayerSum(3)
    >>> x = torch.randn(2, 3, 5, 4)
    >>> torch.allclose(layer_sum(x), x.mean(dim=1), atol=1e-6)
    True
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def layer_weights(self) -> Tensor:
        """The normalised weights, shape (L,), summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_layers:
            raise ValueError(f"expected (B, {self.num_layers}, T, C), got {tuple(x.shape)}")
        weights = self.layer_weights().to(x.dtype)
        return torch.einsum("l,bltc->btc", weights, x)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}"
