"""Temporal shift (ShiftSER): move a fraction of the channels one frame along time, at no parameter cost.

``TemporalShift`` is the operator, ``ShiftedBlock`` places it around a block (in-place or residual),
``RandomShift`` applies it as a training-only augmentation.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

__all__ = ["TemporalShift", "ShiftedBlock", "RandomShift", "temporal_shift"]


def _shift_into(
    out: Tensor,
    src: Tensor,
    fold: int,
    bidirectional: bool,
    adjoint: bool,
    pair: Tensor | None,
    valid: Tensor | None,
) -> Tensor:
    """Write the shift of ``src`` (or its adjoint) into the preallocated ``out``; no other allocation.

    ``pair[b, t]`` (shape (B, T-1, 1)) is 1 when frames t and t+1 are both valid: a value only moves
    between two valid neighbours. ``valid`` (B, T, 1) zeroes padded frames in the unshifted channels.
    Forward moves channels [0, fold) from t-1 to t and [fold, 2 fold) from t+1 to t; the adjoint
    (used for the gradient) moves them the opposite way with the same weights.
    """
    t = src.shape[1]
    groups = [(0, fold, not adjoint)]  # (first channel, end channel, moves forward in time)
    if bidirectional:
        groups.append((fold, 2 * fold, adjoint))
    rest = 2 * fold if bidirectional else fold
    for lo, hi, forward_in_time in groups:
        if hi <= lo:
            continue
        if t < 2:
            out[:, :, lo:hi] = 0
            continue
        if forward_in_time:  # out[t] = src[t-1]
            dst_sl, src_sl, empty = out[:, 1:, lo:hi], src[:, :-1, lo:hi], out[:, :1, lo:hi]
        else:  # out[t] = src[t+1]
            dst_sl, src_sl, empty = out[:, :-1, lo:hi], src[:, 1:, lo:hi], out[:, -1:, lo:hi]
        if pair is None:
            dst_sl.copy_(src_sl)
        else:
            torch.mul(src_sl, pair, out=dst_sl)
        empty.zero_()
    if rest < src.shape[2]:
        if valid is None:
            out[:, :, rest:] = src[:, :, rest:]
        else:
            torch.mul(src[:, :, rest:], valid, out=out[:, :, rest:])
    return out


class _ShiftFunction(torch.autograd.Function):
    """Shift as one autograd node: the gradient is the adjoint shift, again one allocation."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        fold: int,
        bidirectional: bool,
        adjoint: bool,
        pair: Tensor | None,
        valid: Tensor | None,
    ) -> Tensor:
        ctx.fold, ctx.bidirectional, ctx.adjoint = fold, bidirectional, adjoint
        ctx.pair, ctx.valid = pair, valid  # constants (masks), not saved for their own gradient
        return _shift_into(torch.empty_like(x), x, fold, bidirectional, adjoint, pair, valid)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        # Built from the function itself so that double backward also works.
        grad_x = _ShiftFunction.apply(grad, ctx.fold, ctx.bidirectional, not ctx.adjoint, ctx.pair, ctx.valid)
        return grad_x, None, None, None, None, None


def temporal_shift(
    x: Tensor, fold: int, bidirectional: bool = False, padding_mask: Tensor | None = None
) -> Tensor:
    """Shift ``fold`` channels one frame forward in time (and, if bidirectional, the next ``fold`` back).

    Functional form of :class:`TemporalShift`; with ``padding_mask`` the shift is mask aware.

    Parameters
    ----------
    x : Tensor, shape (B, T, C)
    fold : int
        Number of channels shifted per direction.
    bidirectional : bool
    padding_mask : BoolTensor, shape (B, T), or None

    Returns
    -------
    Tensor, shape (B, T, C)
        A new tensor; ``x`` is not modified.

    Example
    -------
    >>> temporal_shift(torch.arange(3.0).view(1, 3, 1), fold=1)[0, :, 0]
    tensor([0., 0., 1.])
    """
    if x.dim() != 3:
        raise ValueError(f"expected x of shape (B, T, C), got {tuple(x.shape)}")
    channels = x.shape[-1]
    if fold < 0 or (2 if bidirectional else 1) * fold > channels:
        raise ValueError(f"cannot shift {fold} channels per direction out of {channels}")
    pair = valid = None
    if padding_mask is not None:
        keep = (~padding_mask).to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        pair = keep[:, 1:] * keep[:, :-1]
        valid = keep
    return _ShiftFunction.apply(x, fold, bidirectional, False, pair, valid)


class TemporalShift(nn.Module):
    """Temporal shift along time by one frame on a proportion of the channels (ShiftSER).

    The first ``int(C * proportion)`` channels take the previous frame's values (past into present);
    when ``bidirectional`` the next ``int(C * proportion)`` channels take the next frame's values.
    Frames vacated at the sequence ends become zero. No parameters.

    With ``mask_aware=True`` (default) and a padding mask, padded frames neither give nor receive
    values: a frame next to padding behaves like a sequence end, and padded output frames are zero, so
    a sequence's output does not depend on how much it is padded. ``mask_aware=False`` ignores the
    mask and shifts over the padded tensor, as the official ShiftSER code does (it pads every clip to
    7.5 s and has no mask).

    Parameters
    ----------
    proportion : float
        Fraction of channels shifted per direction (1/16 in ShiftCNN, 1/4 in ShiftLSTM/Shiftformer).
    bidirectional : bool
        Also shift the next block of channels from the future into the present.
    mask_aware : bool
        Respect ``padding_mask`` (see above).

    Shapes
    ------
    x : (B, T, C); padding_mask : (B, T) bool, True on padding, or None; output : (B, T, C).

    Example
    -------
    >>> shift = TemporalShift(proportion=0.5)
    >>> x = torch.tensor([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]])
    >>> shift(x)
    tensor([[[ 0., 10.],
             [ 1., 20.],
             [ 2., 30.]]])
    >>> shift(x, torch.tensor([[False, False, True]]))
    tensor([[[ 0., 10.],
             [ 1., 20.],
             [ 0.,  0.]]])
    """

    def __init__(
        self, proportion: float = 1 / 16, bidirectional: bool = False, mask_aware: bool = True
    ) -> None:
        super().__init__()
        limit = 0.5 if bidirectional else 1.0
        if not 0.0 <= proportion <= limit:
            raise ValueError(f"proportion must be in [0, {limit}], got {proportion}")
        self.proportion = float(proportion)
        self.bidirectional = bool(bidirectional)
        self.mask_aware = bool(mask_aware)

    def fold(self, channels: int) -> int:
        """Number of channels shifted per direction for ``channels`` input channels."""
        # The small epsilon keeps int(768 * (1/3)) style products from losing a channel to rounding.
        return int(math.floor(channels * self.proportion + 1e-9))

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        mask = padding_mask if self.mask_aware else None
        return temporal_shift(x, self.fold(x.shape[-1]), self.bidirectional, mask)

    def extra_repr(self) -> str:
        return (
            f"proportion={self.proportion:g}, bidirectional={self.bidirectional}, "
            f"mask_aware={self.mask_aware}"
        )


def _accepts_padding_mask(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return "padding_mask" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class ShiftedBlock(nn.Module):
    """Place a temporal shift around a block: in-place (``block(shift(x))``) or residual
    (``block(x) + shift(x)``).

    For the residual placement ``block`` is the residual branch alone (its identity path is the
    shifted input); for the in-place placement it is the whole block. ``block`` is called with
    ``padding_mask`` when its ``forward`` accepts that argument.

    Parameters
    ----------
    block : nn.Module
        Maps (B, T, C) to (B, T, C) (to any (B, T, C') for the in-place placement).
    shift : TemporalShift
    placement : {"inplace", "residual"}

    Example
    -------
    >>> block = ShiftedBlock(nn.Linear(4, 4), TemporalShift(1 / 4), placement="residual")
    >>> block(torch.randn(2, 5, 4)).shape
    torch.Size([2, 5, 4])
    """

    def __init__(self, block: nn.Module, shift: TemporalShift, placement: str = "inplace") -> None:
        super().__init__()
        if placement not in ("inplace", "residual"):
            raise ValueError(f"placement must be 'inplace' or 'residual', got {placement!r}")
        self.block = block
        self.shift = shift
        self.placement = placement
        self._block_takes_mask = _accepts_padding_mask(block)

    def _run_block(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        if self._block_takes_mask:
            return self.block(x, padding_mask=padding_mask)
        return self.block(x)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        shifted = self.shift(x, padding_mask)
        if self.placement == "inplace":
            return self._run_block(shifted, padding_mask)
        return self._run_block(x, padding_mask) + shifted

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}"


class RandomShift(nn.Module):
    """Temporal shift as a training-only random augmentation: applied to a whole batch with probability
    ``p`` in training mode, identity in eval mode.

    Parameters
    ----------
    p : float
        Probability of shifting a training batch.
    proportion, bidirectional, mask_aware
        As in :class:`TemporalShift`.

    Example
    -------
    >>> aug = RandomShift(p=1.0, proportion=0.5).eval()
    >>> x = torch.randn(1, 3, 2)
    >>> torch.equal(aug(x), x)
    True
    """

    def __init__(
        self, p: float = 0.5, proportion: float = 1 / 16, bidirectional: bool = False, mask_aware: bool = True
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)
        self.shift = TemporalShift(proportion, bidirectional, mask_aware)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p < 1.0 and float(torch.rand(())) >= self.p:
            return x
        return self.shift(x, padding_mask)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
