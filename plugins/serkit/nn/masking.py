"""Padding-mask helpers shared by the ``serkit.nn`` modules.

Convention everywhere in ``serkit.nn``: ``padding_mask`` is a ``(B, T)`` bool tensor that is True on
padded frames (the fairseq / ``torch.nn.MultiheadAttention`` convention), or None for "no padding".
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "lengths_to_padding_mask",
    "padding_mask_to_lengths",
    "zero_padded_frames",
    "masked_mean",
]


def lengths_to_padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Build a right-padding mask from absolute lengths.

    Parameters
    ----------
    lengths : LongTensor, shape (B,)
        Number of valid frames of each sequence.
    max_len : int, optional
        Number of frames T of the padded batch; defaults to ``lengths.max()``.

    Returns
    -------
    BoolTensor, shape (B, T)
        True on padded frames.

    Example
    -------
    >>> lengths_to_padding_mask(torch.tensor([3, 1]), max_len=4)
    tensor([[False, False, False,  True],
            [False,  True,  True,  True]])
    """
    lengths = torch.as_tensor(lengths)
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    if lengths.numel() and int(lengths.max()) > max_len:
        raise ValueError(f"a length ({int(lengths.max())}) exceeds max_len ({max_len})")
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) >= lengths.unsqueeze(1)


def padding_mask_to_lengths(padding_mask: Tensor) -> Tensor:
    """Count the valid frames of each sequence.

    Parameters
    ----------
    padding_mask : BoolTensor, shape (B, T)
        True on padded frames.

    Returns
    -------
    LongTensor, shape (B,)

    Example
    -------
    >>> padding_mask_to_lengths(torch.tensor([[False, False, True], [False, False, False]]))
    tensor([2, 3])
    """
    return (~padding_mask).sum(dim=1)


def zero_padded_frames(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Return a copy of ``x`` whose padded frames are zero (``x`` itself when there is no mask).

    Used before operations that mix neighbouring frames (convolutions), so that padding never
    leaks into valid frames.

    Parameters
    ----------
    x : Tensor, shape (B, T, C)
    padding_mask : BoolTensor, shape (B, T), or None

    Returns
    -------
    Tensor, shape (B, T, C)

    Example
    -------
    >>> x = torch.ones(1, 3, 2)
    >>> zero_padded_frames(x, torch.tensor([[False, False, True]]))[0, :, 0]
    tensor([1., 1., 0.])
    """
    if padding_mask is None:
        return x
    return x.masked_fill(padding_mask.unsqueeze(-1), 0.0)


def masked_mean(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Average over valid frames.

    Parameters
    ----------
    x : Tensor, shape (B, T, C)
        Padded frames may hold anything, even inf or nan: they never reach the mean.
    padding_mask : BoolTensor, shape (B, T), or None
        True marks a padded frame.

    Returns
    -------
    Tensor, shape (B, C)
        Mean over the valid frames of each sequence (zero for a sequence with no valid frame).

    Example
    -------
    >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_mean(x, torch.tensor([[False, False, True]]))
    tensor([[2.]])
    """
    if padding_mask is None:
        return x.mean(dim=1)
    # Filled, not multiplied by the mask: padded frames may hold anything, even inf or nan.
    total = zero_padded_frames(x, padding_mask).sum(dim=1)
    count = (~padding_mask).sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)
    return total / count
