"""Framework-free torch modules for speech emotion recognition: temporal shift, pooling, heads, BAS, MFSN.

Everything here imports only torch, takes ``x`` (B, T, C) with ``padding_mask`` (B, T) bool (True on
padding) or None, never writes into its inputs, and gives a sequence the same output whether or not it
is padded inside a batch.
"""

from .augment import SpecAugment
from .blocks import (
    ConvNeXtBlock1d,
    FeedForward,
    FFNBlock,
    MSABlock,
    RelativeSelfAttention,
    ShiftformerLayer,
    TransformerBlock,
    TransformerLayer,
)
from .coattention import CoAttentionHead, MeanPoolHead, aggregate_segments, segment_starts
from .heads import HEADS, build_head, count_parameters, register_head
from .masking import lengths_to_padding_mask, masked_mean, padding_mask_to_lengths, zero_padded_frames
from .mfsn import FUSION_OPS, MFSN, MFSN_VARIANTS, ChoiceCell, FusionCell, build_fusion_op
from .pooling import AttentionPooling, MeanPooling, WeightedLayerSum, build_pooling
from .search import BlockSearchSupernet, DerivedBlockNetwork, gumbel_temperature, parse_arch
from .shift import RandomShift, ShiftedBlock, TemporalShift, temporal_shift

__all__ = [
    "FUSION_OPS",
    "MFSN",
    "MFSN_VARIANTS",
    "ChoiceCell",
    "CoAttentionHead",
    "FusionCell",
    "MeanPoolHead",
    "aggregate_segments",
    "build_fusion_op",
    "segment_starts",
    "AttentionPooling",
    "BlockSearchSupernet",
    "ConvNeXtBlock1d",
    "DerivedBlockNetwork",
    "FFNBlock",
    "FeedForward",
    "HEADS",
    "MSABlock",
    "MeanPooling",
    "RandomShift",
    "RelativeSelfAttention",
    "ShiftedBlock",
    "ShiftformerLayer",
    "SpecAugment",
    "TemporalShift",
    "TransformerBlock",
    "TransformerLayer",
    "WeightedLayerSum",
    "build_head",
    "build_pooling",
    "count_parameters",
    "gumbel_temperature",
    "lengths_to_padding_mask",
    "masked_mean",
    "padding_mask_to_lengths",
    "parse_arch",
    "register_head",
    "temporal_shift",
    "zero_padded_frames",
]
