"""SpecAugment on upstream features: random time and channel masks, in training only."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SpecAugment"]


def _span_mask(
    lengths: Tensor, size: int, prob: float, width: int, min_masks: int, generator: torch.Generator | None
) -> Tensor:
    """Random spans of ``width`` inside the first ``lengths[b]`` positions of each row.

    The number of spans of row b is ``prob * lengths[b] / width`` rounded at random (so the expected
    masked fraction is about ``prob`` before overlaps), at least ``min_masks``; spans never reach
    past ``lengths[b]``. Returns a (B, size) bool mask.
    """
    batch = lengths.shape[0]
    device = lengths.device
    lengths_f = lengths.to(torch.float32)
    uniform = torch.rand(batch, generator=generator).to(device)
    counts = torch.floor(prob * lengths_f / width + uniform).long().clamp_min(min_masks)
    counts = torch.where(lengths > 0, counts, torch.zeros_like(counts))
    max_count = int(counts.max()) if batch else 0
    if max_count == 0:
        return torch.zeros(batch, size, dtype=torch.bool, device=device)
    span = torch.minimum(lengths, torch.full_like(lengths, width))  # short rows: narrower spans
    room = (lengths - span + 1).to(torch.float32)  # number of possible start positions
    starts = (torch.rand(batch, max_count, generator=generator).to(device) * room[:, None]).long()
    used = torch.arange(max_count, device=device)[None, :] < counts[:, None]
    pos = torch.arange(size, device=device)[None, None, :]
    inside = (pos >= starts[:, :, None]) & (pos < (starts + span[:, None])[:, :, None])
    return (inside & used[:, :, None]).any(dim=1)


class SpecAugment(nn.Module):
    """SpecAugment on (B, T, C) features: time masks and channel masks, applied in training only.

    Time masks cover spans of ``time_mask_width`` frames chosen among the valid frames of each
    sequence (about ``time_mask_prob * T_valid / time_mask_width`` spans, at least ``min_time_masks``);
    channel masks cover spans of ``channel_mask_width`` channels over all frames (at least
    ``min_channel_masks``). Defaults are ShiftSER's (time p 0.08 x 15 frames, channel p 0.05 x 64).

    Channel-masked values are replaced with zero. Time-masked frames are replaced with zero
    (``time_mask_fill="zero"``: parameter-free, nothing in a checkpoint) or, as in the official
    ShiftSER code (``time_mask_fill="learned"``, which needs ``dim``), with a learned vector of C values
    (initialised uniform in [0, 1), trained through the masked frames); channel masks are applied
    after it, so a masked channel stays zero in a masked frame too. Padded frames are never touched,
    the input is never modified, and eval mode returns the input unchanged.

    Parameters
    ----------
    time_mask_prob, time_mask_width, channel_mask_prob, channel_mask_width : float, int, float, int
    min_time_masks, min_channel_masks : int
        Lower bounds on the number of spans (2 and 1, as in ShiftSER's use of wav2vec2's masking).
    time_mask_fill : {"zero", "learned"}
    dim : int, optional
        Number of channels C; required for ``time_mask_fill="learned"``.

    Shapes
    ------
    x : (B, T, C); padding_mask : (B, T) bool, True on padding, or None; output : (B, T, C).

    Example
    -------
    >>> aug = SpecAugment(time_mask_prob=0.5, time_mask_width=2)
    >>> x = torch.ones(2, 10, 128)
    >>> y = aug.train()(x, torch.zeros(2, 10, dtype=torch.bool))
    >>> bool((y == 0).any()), bool((x == 1).all())
    (True, True)
    >>> torch.equal(aug.eval()(x), x)
    True
    >>> learned = SpecAugment(time_mask_prob=0.5, time_mask_width=2, channel_mask_prob=0.0,
    ...                       time_mask_fill="learned", dim=128)
    >>> y = learned.train()(x)
    >>> torch.equal(y[y[:, :, 0] != 1], learned.masked_embed.expand(int((y[:, :, 0] != 1).sum()), -1))
    True
    """

    def __init__(
        self,
        time_mask_prob: float = 0.08,
        time_mask_width: int = 15,
        channel_mask_prob: float = 0.05,
        channel_mask_width: int = 64,
        min_time_masks: int = 2,
        min_channel_masks: int = 1,
        time_mask_fill: str = "zero",
        dim: int | None = None,
    ) -> None:
        super().__init__()
        if time_mask_fill not in ("zero", "learned"):
            raise ValueError(f"time_mask_fill must be 'zero' or 'learned', got {time_mask_fill!r}")
        if time_mask_fill == "learned" and (dim is None or int(dim) < 1):
            raise ValueError("time_mask_fill='learned' needs dim (the number of feature channels)")
        self.time_mask_fill = time_mask_fill
        # The official code's masked_spec_embed: uniform [0, 1) initialisation.
        self.masked_embed = nn.Parameter(torch.rand(int(dim))) if time_mask_fill == "learned" else None
        self.time_mask_prob = float(time_mask_prob)
        self.time_mask_width = int(time_mask_width)
        self.channel_mask_prob = float(channel_mask_prob)
        self.channel_mask_width = int(channel_mask_width)
        self.min_time_masks = int(min_time_masks)
        self.min_channel_masks = int(min_channel_masks)

    def masks(
        self, x: Tensor, padding_mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw the masks: time (B, T) and channel (B, C), True where the value is replaced."""
        batch, frames, channels = x.shape
        device = x.device
        if padding_mask is None:
            lengths = torch.full((batch,), frames, dtype=torch.long, device=device)
        else:
            lengths = (~padding_mask).sum(dim=1)
        time = torch.zeros(batch, frames, dtype=torch.bool, device=device)
        if self.time_mask_prob > 0:
            time = _span_mask(
                lengths, frames, self.time_mask_prob, self.time_mask_width, self.min_time_masks, generator
            )
            if padding_mask is not None:
                time = time & ~padding_mask  # holes inside the mask: keep padding untouched
        channel = torch.zeros(batch, channels, dtype=torch.bool, device=device)
        if self.channel_mask_prob > 0:
            if self.channel_mask_width * max(self.min_channel_masks, 1) >= channels:
                # every training batch would be blanked: a model trained like that learns nothing
                raise ValueError(
                    f"SpecAugment: channel_mask_width {self.channel_mask_width} x "
                    f"{max(self.min_channel_masks, 1)} span(s) covers all {channels} channels; use a width "
                    f"well below the feature dimension (ShiftSER: 64 of 768)"
                )
            all_channels = torch.full((batch,), channels, dtype=torch.long, device=device)
            channel = _span_mask(
                all_channels,
                channels,
                self.channel_mask_prob,
                self.channel_mask_width,
                self.min_channel_masks,
                generator,
            )
        return time, channel

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if not self.training or (self.time_mask_prob <= 0 and self.channel_mask_prob <= 0):
            return x
        time, channel = self.masks(x, padding_mask)
        if self.masked_embed is not None:
            if self.masked_embed.shape[0] != x.shape[-1]:
                raise ValueError(
                    f"SpecAugment: learned time-mask vector has {self.masked_embed.shape[0]} "
                    f"channels, features have {x.shape[-1]}"
                )
            x = torch.where(time[:, :, None], self.masked_embed.to(x.dtype), x)
            replace = channel[:, None, :].expand(-1, x.shape[1], -1)
        else:
            replace = time[:, :, None] | channel[:, None, :]
        if padding_mask is not None:
            replace = replace & ~padding_mask[:, :, None]
        return x.masked_fill(replace, 0.0)

    def extra_repr(self) -> str:
        return (
            f"time_mask_prob={self.time_mask_prob:g}, time_mask_width={self.time_mask_width}, "
            f"channel_mask_prob={self.channel_mask_prob:g}, "
            f"channel_mask_width={self.channel_mask_width}, time_mask_fill={self.time_mask_fill!r}"
        )
