"""MFSN: multi-perspective fusion search over textual (TEC) and speech (SEC) emotional content.

MFSN (Interspeech 2024) fuses two self-supervised views of the same audio:

- **TEC**, textual-related emotional content: a layer of an ASR model (a CTC-finetuned wav2vec 2.0).
  It is *detached* before fusion: the ASR view is a fixed knowledge source.
- **SEC**, speech-related emotional content: a continuous model (data2vec audio) read at three levels
  (early, middle and late layers).

A :class:`ChoiceCell` picks one SEC level, a :class:`FusionCell` adjusts TEC with it through a DARTS
mixed operation, and an emotion-analysis module (:class:`serkit.nn.coattention.CoAttentionHead`)
classifies. :class:`MFSN` assembles the three for the paper's ablations.

Two streams
-----------
"Both T' and S_N are subsequently used for emotional analysis" (paper, Sec. 2.3): the emotion module
gets two frame streams, the fusion-adjusted TEC (the Fusion Cell's output) and the SEC proper, the
final layer ``S_N`` (Sec. 2.1; here the last entry of the SEC levels), and the co-attention module
splits its doubled spectrogram/MFCC encodings between them (Sec. 5.1). ``streams="single"`` is
serkit's ablation that gives the head the fusion output alone (SEC then reaches the classifier only
through the Fusion Cell, e.g. only through attention weights when ``attention`` is derived).

Choice Cell
-----------
During the search one SEC level is used per mini-batch. Two ways to pick it (``mode``):

``"uniform"`` (default)
    The level is drawn uniformly at random for each training mini-batch (single-path sampling, as in
    one-shot NAS); nothing is learned. After the search the caller scores every level on the
    validation set with the shared weights and :meth:`ChoiceCell.derive` keeps the best one.
``"learned"``
    One logit per level (an architecture parameter). Each mini-batch draws a hard one-hot Gumbel-softmax
    sample; the straight-through estimator carries a gradient to the logits, so the first-order DARTS
    step moves them. :meth:`ChoiceCell.derive` keeps the argmax.

Outside training, before derivation, the level is the argmax (learned) or the last, i.e. the latest
layer (uniform), unless ``level=`` is given. After :meth:`derive` the level is fixed.

Fusion Cell: the eight operations
---------------------------------
Every operation maps ``a`` (B, T, Da) and ``b`` (B, T, Db), two views of the same frames, to (B, T, D).
In MFSN ``a`` is SEC and ``b`` is TEC. ``P_a``, ``P_b`` are linear maps to D; ``[u; v]`` is
concatenation on channels; ``sigma`` the logistic function. The MFSN text available to us names the
operations but lost their formulas, so each says where its formula comes from.

==================  =====================================================  ===========================
name                formula                                                source
==================  =====================================================  ===========================
``attention``       ``MHA(q = a, k = b, v = b)``: a's frames attend to     paper (name); formula after
                    b's frames (scaled dot-product, H heads, padded keys   BM-NAS ScaledDotAttn,
                    excluded), then an output projection                   multi-head (our reading)
``attention_rev``   ``MHA(q = b, k = a, v = a)``                           paper: reversed arguments
``concat_fc``       ``P_a a + ReLU(LN(W [a; b] + c))``: b adjusts a       paper (name) / BM-NAS
                    through a concat-FC branch added to a's projection     ConcatFC (LayerNorm instead
                    (a is kept on a linear identity path)                  of BatchNorm: per frame, so
                                                                           batch-independent); the
                                                                           residual path: our reading
``concat_fc_rev``   ``P_b b + ReLU(LN(W [b; a] + c))``: a adjusts b        paper: reversed arguments
``ism``             ``P_a a + g * P_b b``, ``g = sigma(W_g [P_a a; P_b b])``  paper (name "information
                    (b supplements a through a gated residual)             supplement"); our reading
``ism_rev``         ``P_b b + g * P_a a``, ``g = sigma(W_g [P_b b; P_a a])``  paper: reversed arguments
``sum``             ``P_a a + P_b b``                                      BM-NAS Sum
``linear_glu``      ``(W_1 [a; b]) * sigma(W_2 [a; b])``                   BM-NAS LinearGLU (a GLU of
                                                                           a linear map of the
                                                                           concatenation)
==================  =====================================================  ===========================

**Reversal.** The paper gives Attention, ConcatFC and ISM a reversed version each, the same operation
with its two arguments swapped (``op_rev(a, b) = op(b, a)``). A swap is a different function only when
the operation treats its arguments differently: the attentions take queries from the first argument
and keys/values from the second, ISM gates the second argument into the first, and ConcatFC keeps the
first argument on a linear path and adds the concat-FC branch to it. (A plain ``FC([a; b])`` would make
``concat_fc_rev`` the same family as ``concat_fc``, the weight columns permuted, and split one candidate's
architecture weight in two.) ``tests/unit/test_mfsn_ops.py`` checks that no candidate can be fitted
to another.

The mixed operation is ``sum_i softmax(alpha)_i op_i(a, b)`` with ``alpha`` one architecture weight
per operation (:meth:`FusionCell.arch_parameters`, kept apart from the operations' weights so that
they get their own optimiser). :meth:`FusionCell.derive` returns the names of the top operations;
``FusionCell(..., ops=names, search=False)`` is the fixed cell for retraining (the mean of the kept
operations, a single operation by default).

Masks: the operations are per frame except the attentions, whose padded keys are excluded; every output
has its padded frames set to zero. A sequence gives the same output padded or not (mask invariance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masking import zero_padded_frames

__all__ = [
    "FUSION_OPS",
    "ChoiceCell",
    "FusionCell",
    "MFSN",
    "MFSN_STREAMS",
    "MFSN_VARIANTS",
    "TextFrames",
    "TextMFSN",
    "arch_spec",
    "build_fusion_op",
    "parse_arch",
]

FUSION_OPS = (
    "attention",
    "attention_rev",
    "concat_fc",
    "concat_fc_rev",
    "ism",
    "ism_rev",
    "sum",
    "linear_glu",
)
MFSN_VARIANTS = ("sec_only", "sec_tec_nosearch", "mfsn")


# --------------------------------------------------------------------------------------------------
# Choice Cell
# --------------------------------------------------------------------------------------------------
class ChoiceCell(nn.Module):
    """Pick one of ``num_levels`` SEC levels per mini-batch during search; a fixed one after :meth:`derive`.

    Parameters
    ----------
    num_levels : int
        Number of SEC levels (3 in MFSN: early, middle, late).
    mode : {"uniform", "learned"}
        ``uniform``: a level drawn uniformly per training mini-batch, no parameters. ``learned``: one
        architecture logit per level, hard Gumbel-softmax sample per mini-batch (straight-through).
    tau : float
        Gumbel-softmax temperature (``learned`` only).

    Shapes
    ------
    levels : (B, L, T, C) tensor, or a sequence of L tensors (B, T, C) -> (B, T, C)

    Example
    -------
    >>> cell = ChoiceCell(3).eval()
    >>> cell(torch.randn(2, 3, 5, 4)).shape
    torch.Size([2, 5, 4])
    >>> cell.derive(scores=[0.2, 0.9, 0.5])
    1
    """

    def __init__(self, num_levels: int, mode: str = "uniform", tau: float = 1.0) -> None:
        super().__init__()
        if mode not in ("uniform", "learned"):
            raise ValueError(f"ChoiceCell mode must be 'uniform' or 'learned', not {mode!r}")
        if num_levels < 1:
            raise ValueError("ChoiceCell needs at least one level")
        self.num_levels = num_levels
        self.mode = mode
        self.tau = tau
        self.alpha = nn.Parameter(torch.zeros(num_levels)) if mode == "learned" else None
        self.fixed_level: int | None = None
        self.last_level: int | None = None  # the level the latest forward used (for logs)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha] if self.alpha is not None and self.fixed_level is None else []

    def probabilities(self) -> Tensor:
        """Selection probabilities of the levels (uniform, or softmax of the learned logits)."""
        if self.alpha is None:
            return torch.full((self.num_levels,), 1.0 / self.num_levels)
        return F.softmax(self.alpha.detach(), dim=0)

    def derive(self, scores: Sequence[float] | None = None) -> int:
        """Fix the level: argmax of ``scores`` (one per level, higher is better) when given, else of the
        learned logits. ``uniform`` mode has nothing learned and needs ``scores``."""
        if scores is not None:
            if len(scores) != self.num_levels:
                raise ValueError(f"derive: {len(scores)} scores for {self.num_levels} levels")
            level = max(range(self.num_levels), key=lambda i: scores[i])
        elif self.alpha is not None:
            level = int(self.alpha.detach().argmax())
        else:
            raise ValueError(
                "ChoiceCell(mode='uniform') learns nothing: derive(scores=...) with one "
                "validation score per level"
            )
        self.fix(level)
        return level

    def fix(self, level: int) -> None:
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level {level} outside [0, {self.num_levels})")
        self.fixed_level = int(level)

    def forward(self, levels: Tensor | Sequence[Tensor], level: int | None = None) -> Tensor:
        n = levels.shape[1] if isinstance(levels, Tensor) else len(levels)
        if n != self.num_levels:
            raise ValueError(f"ChoiceCell got {n} levels, built for {self.num_levels}")
        pick = lambda i: levels[:, i] if isinstance(levels, Tensor) else levels[i]
        if level is None:
            level = self.fixed_level
        if level is not None:
            self.last_level = int(level)
            return pick(level)
        if not self.training:
            level = int(self.alpha.detach().argmax()) if self.alpha is not None else self.num_levels - 1
            self.last_level = level
            return pick(level)
        if self.alpha is None:
            level = int(torch.randint(self.num_levels, ()).item())
            self.last_level = level
            return pick(level)
        # Hard Gumbel-softmax: forward uses exactly one level, backward reaches every logit through
        # the straight-through weight of the chosen one (value 1, gradient of the soft sample).
        weights = F.gumbel_softmax(self.alpha, tau=self.tau, hard=True)
        level = int(weights.detach().argmax())
        self.last_level = level
        return pick(level) * weights[level]


# --------------------------------------------------------------------------------------------------
# The two-input operations
# --------------------------------------------------------------------------------------------------
class _Attention(nn.Module):
    """Cross-attention: queries from the first input, keys and values from the second."""

    def __init__(self, dim_q: int, dim_kv: int, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"fusion dim {dim} is not divisible by {num_heads} heads")
        self.q = nn.Linear(dim_q, dim)
        self.k = nn.Linear(dim_kv, dim)
        self.v = nn.Linear(dim_kv, dim)
        self.out = nn.Linear(dim, dim)
        self.num_heads = num_heads
        self.dropout = dropout

    def forward(self, q_in: Tensor, kv_in: Tensor, padding_mask: Tensor | None) -> Tensor:
        B, T, _ = q_in.shape
        H = self.num_heads
        split = lambda t: t.view(B, t.shape[1], H, -1).transpose(1, 2)  # (B, H, T, d)
        q, k, v = split(self.q(q_in)), split(self.k(kv_in)), split(self.v(kv_in))
        attn_mask = None
        if padding_mask is not None:
            attn_mask = ~padding_mask[:, None, None, :]  # True = may attend
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class _ConcatFC(nn.Module):
    """``P_u u + ReLU(LN(W [u; v] + c))``: ``v`` adjusts ``u`` through a concat-FC branch."""

    def __init__(self, dim_1: int, dim_2: int, dim: int) -> None:
        super().__init__()
        self.pu = nn.Linear(dim_1, dim)
        self.fc = nn.Linear(dim_1 + dim_2, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, u: Tensor, v: Tensor, padding_mask: Tensor | None) -> Tensor:
        return self.pu(u) + F.relu(self.norm(self.fc(torch.cat([u, v], dim=-1))))


class _ISM(nn.Module):
    """Information supplement: ``v`` supplements ``u`` through a gated residual (our reading)."""

    def __init__(self, dim_u: int, dim_v: int, dim: int) -> None:
        super().__init__()
        self.pu = nn.Linear(dim_u, dim)
        self.pv = nn.Linear(dim_v, dim)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, u: Tensor, v: Tensor, padding_mask: Tensor | None) -> Tensor:
        pu, pv = self.pu(u), self.pv(v)
        g = torch.sigmoid(self.gate(torch.cat([pu, pv], dim=-1)))
        return pu + g * pv


class _Sum(nn.Module):
    def __init__(self, dim_u: int, dim_v: int, dim: int) -> None:
        super().__init__()
        self.pu = nn.Linear(dim_u, dim)
        self.pv = nn.Linear(dim_v, dim)

    def forward(self, u: Tensor, v: Tensor, padding_mask: Tensor | None) -> Tensor:
        return self.pu(u) + self.pv(v)


class _LinearGLU(nn.Module):
    def __init__(self, dim_u: int, dim_v: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim_u + dim_v, 2 * dim)

    def forward(self, u: Tensor, v: Tensor, padding_mask: Tensor | None) -> Tensor:
        return F.glu(self.fc(torch.cat([u, v], dim=-1)), dim=-1)


class _Reversed(nn.Module):
    """Calls the wrapped operation with its two inputs swapped."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, a: Tensor, b: Tensor, padding_mask: Tensor | None) -> Tensor:
        return self.op(b, a, padding_mask)


def build_fusion_op(
    name: str, dim_a: int, dim_b: int, dim: int, num_heads: int = 4, dropout: float = 0.0
) -> nn.Module:
    """Build one fusion operation ``op(a, b, padding_mask) -> (B, T, dim)`` by its name in :data:`FUSION_OPS`.

    Example
    -------
    >>> op = build_fusion_op("ism", 6, 4, 8)
    >>> op(torch.randn(2, 3, 6), torch.randn(2, 3, 4), None).shape
    torch.Size([2, 3, 8])
    """
    reverse = name.endswith("_rev")
    base = name[: -len("_rev")] if reverse else name
    # Reversed operations are built on (b, a) so that their first argument is b.
    d1, d2 = (dim_b, dim_a) if reverse else (dim_a, dim_b)
    if base == "attention":
        op = _Attention(d1, d2, dim, num_heads, dropout)
    elif base == "concat_fc":
        op = _ConcatFC(d1, d2, dim)
    elif base == "ism":
        op = _ISM(d1, d2, dim)
    elif base == "sum" and not reverse:
        op = _Sum(d1, d2, dim)
    elif base == "linear_glu" and not reverse:
        op = _LinearGLU(d1, d2, dim)
    else:
        raise ValueError(f"unknown fusion operation {name!r}; choose from {', '.join(FUSION_OPS)}")
    return _Reversed(op) if reverse else op


# --------------------------------------------------------------------------------------------------
# Fusion Cell
# --------------------------------------------------------------------------------------------------
class FusionCell(nn.Module):
    """DARTS mixed operation fusing two frame sequences of the same length.

    Parameters
    ----------
    dim_a, dim_b : int
        Channels of the two inputs (SEC and TEC in MFSN).
    dim : int
        Output channels.
    ops : sequence of str
        Candidate operations (names in :data:`FUSION_OPS`; all eight by default).
    search : bool
        True: softmax-weighted sum with one architecture weight per operation. False: a fixed cell,
        the mean of ``ops`` (give the derived names), without architecture weights.
    num_heads, dropout : attention operations' heads and attention dropout.

    Shapes
    ------
    a : (B, T, dim_a), b : (B, T, dim_b), padding_mask : (B, T) bool, True on padding -> (B, T, dim)

    Example
    -------
    >>> cell = FusionCell(6, 4, 8)
    >>> y = cell(torch.randn(2, 5, 6), torch.randn(2, 5, 4))
    >>> y.shape, len(cell.arch_parameters())
    (torch.Size([2, 5, 8]), 1)
    >>> fixed = FusionCell(6, 4, 8, ops=cell.derive(), search=False)
    >>> fixed.arch_parameters()
    []
    """

    def __init__(
        self,
        dim_a: int,
        dim_b: int,
        dim: int,
        ops: Sequence[str] = FUSION_OPS,
        search: bool = True,
        num_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        ops = list(ops)
        if not ops:
            raise ValueError("FusionCell needs at least one operation")
        if len(set(ops)) != len(ops):
            raise ValueError(f"FusionCell: duplicate operations in {ops}")
        self.op_names = ops
        self.dim = dim
        self.ops = nn.ModuleList(build_fusion_op(n, dim_a, dim_b, dim, num_heads, dropout) for n in ops)
        self.search = search and len(ops) > 1
        # DARTS initialises the architecture weights near zero (1e-3 * randn).
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(ops))) if self.search else None

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha] if self.alpha is not None else []

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.ops.parameters()]

    def op_weights(self) -> dict[str, float]:
        """The current softmax weight of each operation (uniform for a fixed cell)."""
        if self.alpha is None:
            w = torch.full((len(self.op_names),), 1.0 / len(self.op_names))
        else:
            w = F.softmax(self.alpha.detach(), dim=0)
        return {n: float(x) for n, x in zip(self.op_names, w)}

    def derive(self, top_k: int = 1) -> list[str]:
        """Names of the ``top_k`` operations with the largest architecture weights, best first."""
        w = self.op_weights()
        return sorted(w, key=w.get, reverse=True)[:top_k]

    def forward(self, a: Tensor, b: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        if a.shape[:2] != b.shape[:2]:
            raise ValueError(
                f"FusionCell inputs must share (B, T): got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        # Padded frames may hold anything: zero them so that per-frame operations cannot produce
        # inf/nan there (an attention would mask them anyway).
        a, b = zero_padded_frames(a, padding_mask), zero_padded_frames(b, padding_mask)
        if self.alpha is None:
            y = sum(op(a, b, padding_mask) for op in self.ops) / len(self.ops)
        else:
            w = F.softmax(self.alpha, dim=0)
            y = sum(w[i] * op(a, b, padding_mask) for i, op in enumerate(self.ops))
        return zero_padded_frames(y, padding_mask)


# --------------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------------
MFSN_STREAMS = ("dual", "single")


def parse_arch(spec: str | dict) -> dict:
    """A derived architecture from its one-line form ``"<sec_level>:<op>[,<op>...]"`` (``arch.txt``).

    Example
    -------
    >>> parse_arch("2:ism_rev")
    {'sec_level': 2, 'fusion_ops': ['ism_rev']}
    >>> arch_spec(parse_arch("0:sum,attention"))
    '0:sum,attention'
    """
    if isinstance(spec, dict):
        return {"sec_level": int(spec["sec_level"]), "fusion_ops": list(spec["fusion_ops"])}
    level, sep, ops = str(spec).strip().partition(":")
    names = [o.strip() for o in ops.split(",") if o.strip()]
    if not sep or not level.strip().isdigit() or not names or any(n not in FUSION_OPS for n in names):
        raise ValueError(
            f"architecture {spec!r}: write <sec_level>:<op>[,<op>...], e.g. '2:ism' "
            f"(operations: {', '.join(FUSION_OPS)})"
        )
    return {"sec_level": int(level), "fusion_ops": names}


def arch_spec(arch: dict) -> str:
    """The one-line form of a derived architecture (see :func:`parse_arch`)."""
    return f"{int(arch['sec_level'])}:{','.join(arch['fusion_ops'])}"


class MFSN(nn.Module):
    """Choice Cell + Fusion Cell + an emotion-analysis head, for the paper's ablations.

    Parameters
    ----------
    sec_dim, tec_dim : int
        Channels of the SEC levels and of TEC.
    num_levels : int
        Number of SEC levels; the last one is the SEC stream (the final layer, ``S_N``).
    head : nn.Module or callable
        Emotion analysis, ``head(streams, padding_mask, **head_inputs) -> logits`` with ``streams`` a
        tuple of (B, T, C_k) tensors. A callable (e.g. HyperPyYAML's ``!name:`` of
        :class:`~serkit.nn.coattention.CoAttentionHead` with its options) is called with
        ``input_dim=`` :attr:`stream_dims` to build it.
    variant : {"sec_only", "sec_tec_nosearch", "mfsn"}
        The paper's Table 5 rows. ``sec_only``: the SEC stream alone. ``sec_tec_nosearch``: SEC and the
        detached TEC, "incorporating TEC without adjustment" (Sec. 5.4): the two streams, TEC as it is.
        ``mfsn``: Choice Cell + searched Fusion Cell adjust TEC; build with ``arch=`` to retrain a
        derived cell.
    streams : {"dual", "single"}
        ``dual`` (the paper): the TEC stream (adjusted by the Fusion Cell for ``mfsn``) and the SEC
        stream. ``single`` (serkit's ablation): one stream, the Fusion Cell's output (for
        ``sec_tec_nosearch`` a fixed ``concat_fc`` of the SEC stream and TEC). ``sec_only`` has one.
    dim : int
        Channels of the Fusion Cell's output.
    ops : candidate fusion operations (``mfsn``).
    choice_mode : ChoiceCell mode (``mfsn``).
    arch : dict or str, optional
        A derived architecture (``{"sec_level", "fusion_ops"}`` or ``"2:ism"``, see
        :func:`parse_arch`): builds the fixed cell.
    detach_tec : bool
        True (MFSN, Sec. 2.2): no gradient reaches TEC. False only when TEC comes from a module trained
        with the model (the text ablation's :class:`TextFrames`).

    Shapes
    ------
    sec : (B, L, T, sec_dim); tec : (B, T, tec_dim) or None for ``sec_only``;
    padding_mask : (B, T) bool -> logits (B, K)

    Example
    -------
    >>> from functools import partial
    >>> from serkit.nn.coattention import MeanPoolHead
    >>> m = MFSN(8, 6, 3, partial(MeanPoolHead, num_classes=4), dim=16)
    >>> m.stream_dims
    (16, 8)
    >>> m(torch.randn(2, 3, 5, 8), torch.randn(2, 5, 6)).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        sec_dim: int,
        tec_dim: int,
        num_levels: int,
        head: nn.Module | Callable[..., nn.Module],
        variant: str = "mfsn",
        dim: int = 256,
        ops: Sequence[str] = FUSION_OPS,
        choice_mode: str = "uniform",
        num_heads: int = 4,
        dropout: float = 0.1,
        arch: dict | str | None = None,
        detach_tec: bool = True,
        streams: str = "dual",
    ) -> None:
        super().__init__()
        if variant not in MFSN_VARIANTS:
            raise ValueError(f"unknown MFSN variant {variant!r}; choose from {', '.join(MFSN_VARIANTS)}")
        if streams not in MFSN_STREAMS:
            raise ValueError(f"MFSN streams {streams!r}: choose dual or single")
        self.variant, self.streams, self.detach_tec = variant, streams, detach_tec
        self.num_levels = int(num_levels)
        self.dropout = nn.Dropout(dropout)
        self.choice = None
        self.fusion = None
        sec_dim, tec_dim, dim = int(sec_dim), int(tec_dim), int(dim)
        self.sec_dim, self.tec_dim = sec_dim, tec_dim
        if variant == "mfsn":
            self.choice = ChoiceCell(self.num_levels, mode=choice_mode)
            search = arch is None
            if arch is not None:
                arch = parse_arch(arch)
                self.choice.fix(arch["sec_level"])
                ops = arch["fusion_ops"]
            self.fusion = FusionCell(sec_dim, tec_dim, dim, ops=ops, search=search, num_heads=int(num_heads))
            self.stream_dims = (dim, sec_dim) if streams == "dual" else (dim,)
        elif variant == "sec_tec_nosearch":
            if streams == "single":
                self.fusion = FusionCell(sec_dim, tec_dim, dim, ops=["concat_fc"], search=False)
                self.stream_dims = (dim,)
            else:
                self.stream_dims = (tec_dim, sec_dim)
        else:
            self.stream_dims = (sec_dim,)
        self.head = head if isinstance(head, nn.Module) else head(input_dim=list(self.stream_dims))

    # -- parameter groups ---------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        if self.variant != "mfsn":
            return []
        return self.choice.arch_parameters() + self.fusion.arch_parameters()

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def derive(self, level_scores: Sequence[float] | None = None, top_k: int = 1) -> dict:
        """The derived architecture ``{"sec_level", "fusion_ops", "op_weights", "level_probs"}``."""
        if self.variant != "mfsn":
            raise ValueError(f"variant {self.variant!r} has nothing to derive")
        weights = self.fusion.op_weights()
        probs = [float(p) for p in self.choice.probabilities()]
        level = self.choice.fixed_level
        if level is None:
            level = self.choice.derive(level_scores)
        return {
            "sec_level": level,
            "fusion_ops": self.fusion.derive(top_k),
            "op_weights": weights,
            "level_probs": probs,
            "level_scores": list(level_scores) if level_scores else None,
        }

    # -- forward --------------------------------------------------------------------------------------
    def fuse(
        self, sec: Tensor, tec: Tensor | None, padding_mask: Tensor | None = None, level: int | None = None
    ) -> tuple[Tensor, ...]:
        """The streams given to the head: a tuple of (B, T, C_k), channels :attr:`stream_dims`."""
        if sec.dim() != 4 or sec.shape[1] != self.num_levels:
            raise ValueError(f"sec must be (B, {self.num_levels}, T, C), got {tuple(sec.shape)}")
        sec_stream = zero_padded_frames(self.dropout(sec[:, -1]), padding_mask)
        if self.variant == "sec_only":
            return (sec_stream,)
        if tec is None:
            raise ValueError(f"variant {self.variant!r} needs TEC features")
        # TEC is a fixed knowledge source: no gradient flows back into it (or its producer).
        if self.detach_tec:
            tec = tec.detach()
        tec = self.dropout(tec)
        if self.fusion is None:  # sec_tec_nosearch, two streams: TEC without adjustment
            return zero_padded_frames(tec, padding_mask), sec_stream
        s = self.choice(sec, level=level) if self.choice is not None else sec[:, -1]
        adjusted = self.fusion(self.dropout(s), tec, padding_mask)
        return (adjusted, sec_stream) if self.streams == "dual" else (adjusted,)

    def forward(
        self,
        sec: Tensor,
        tec: Tensor | None = None,
        padding_mask: Tensor | None = None,
        level: int | None = None,
        **head_inputs: Tensor | None,
    ) -> Tensor:
        return self.head(self.fuse(sec, tec, padding_mask, level=level), padding_mask, **head_inputs)


# --------------------------------------------------------------------------------------------------
# Text ablation (serkit's, not the paper's): TEC from a transcript
# --------------------------------------------------------------------------------------------------
class TextFrames(nn.Module):
    """Transcript pieces -> BiLSTM states -> frame-rate TEC by cross-attention from the SEC frames.

    Each SEC frame (the mean of the SEC levels) attends over the pieces (padded pieces masked), giving a
    (B, T, dim) sequence that enters the Choice/Fusion Cells in place of the ASR model's frames.

    Example
    -------
    >>> tf = TextFrames(20, 8, 16, num_heads=2)
    >>> ids = torch.tensor([[3, 4, 5], [6, 7, 0]])
    >>> tf(torch.randn(2, 3, 5, 8), ids, None, ids == 0).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, vocab_size: int, sec_dim: int, dim: int, num_heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(int(vocab_size), int(dim), padding_idx=0)
        self.lstm = nn.LSTM(int(dim), int(dim) // 2, batch_first=True, bidirectional=True)
        self.query = nn.Linear(int(sec_dim), int(dim))
        self.attn = nn.MultiheadAttention(int(dim), int(num_heads), batch_first=True)

    def forward(
        self, sec: Tensor, ids: Tensor, padding_mask: Tensor | None, ids_padding_mask: Tensor
    ) -> Tensor:
        lengths = (~ids_padding_mask).sum(1).clamp_min(1)
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(ids), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        states, _ = self.lstm(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=ids.shape[1])
        q = self.query(zero_padded_frames(sec.mean(dim=1), padding_mask))
        y, _ = self.attn(q, states, states, key_padding_mask=ids_padding_mask, need_weights=False)
        return zero_padded_frames(y, padding_mask)


class TextMFSN(nn.Module):
    """:class:`MFSN` whose TEC is :class:`TextFrames` over transcript pieces (trained, not detached).

    ``tec`` in :meth:`forward` is the (B, N) piece ids (0 = padding); the MFSN must be built with
    ``tec_dim`` = the text width and ``detach_tec=False``.
    """

    def __init__(self, mfsn: MFSN, vocab_size: int, num_heads: int) -> None:
        super().__init__()
        if mfsn.detach_tec:
            raise ValueError("TextMFSN trains its text encoder: build the MFSN with detach_tec=False")
        self.mfsn = mfsn
        self.text = TextFrames(vocab_size, mfsn.sec_dim, mfsn.tec_dim, num_heads)

    def __getattr__(self, name: str) -> Any:  # variant, choice, fusion, num_levels, derive, stream_dims, ...
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.mfsn, name)

    def arch_parameters(self) -> list[nn.Parameter]:
        return self.mfsn.arch_parameters()

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(
        self,
        sec: Tensor,
        tec: Tensor | None = None,
        padding_mask: Tensor | None = None,
        level: int | None = None,
        tec_padding_mask: Tensor | None = None,
        **head_inputs: Tensor | None,
    ) -> Tensor:
        frames = None
        if self.mfsn.variant != "sec_only":
            ids_mask = tec == 0 if tec_padding_mask is None else tec_padding_mask
            frames = self.text(sec, tec, padding_mask, ids_mask)
        return self.mfsn(sec, frames, padding_mask, level=level, **head_inputs)
