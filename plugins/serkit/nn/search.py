"""Block architecture search (BAS): a Gumbel-softmax supernet over {MSA+FFN, MSA, FFN} per layer, and
the network derived from it.

The supernet relaxes each layer's choice FBNet-style: in training, ``m = softmax((theta + g) / tau)``
with Gumbel noise ``g`` drawn once per forward pass, and the layer outputs ``sum_i m_i f_i(x)``. Each
candidate has its own weights. In eval mode the noise is left out (``m = softmax(theta / tau)``), so
evaluation is deterministic and mask invariant. Layers are stacked with no skip connection between
them. ``derive()`` takes the argmax of each layer's logits.

Candidates (Sec. 2.2 of the paper): ``msa_ffn`` the transformer block ``y = LN(x + MSA(x));
LN(y + FFN(y))``, ``msa`` ``LN(x + MSA(x))``, ``ffn`` "a FFN without residual connection"
``LN(FFN(x))`` (``ffn_residual=True`` gives serkit's earlier ``LN(x + FFN(x))``). The LayerNorms are ours.

Dimensions (our choice; the paper gives none beyond the upstream's): features of dimension C are
projected by a learned stem Linear(C, D) with ``model_dim`` D = 256 (no projection when D = C),
candidates work at D (MSA: ``torch.nn.MultiheadAttention`` with 4 heads; FFN: D -> 4D -> D, GELU), then
mean pooling and Linear(D, K). For the paper's Large upstreams C = 1024.

Training (``serkit.speechbrain.brain.SERBrain``): weights and logits are updated together, one loss,
one backward, one step of each optimiser per training batch (the paper: "the network parameters and
the sampling parameters are trained together", Fig. 2; "trains the stochastic super net using SGD to
optimize the architecture distribution", Sec. 2.2). The temperature schedule ``gumbel_temperature`` is
FBNet's (the paper refers to FBNet for the details and gives none).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import FFNBlock, MSABlock, TransformerBlock
from .pooling import build_pooling

__all__ = [
    "BLOCK_CHOICES",
    "BlockSearchSupernet",
    "DerivedBlockNetwork",
    "gumbel_temperature",
    "make_arch_optimizer",
    "parse_arch",
]


def _make_msa_ffn(dim: int, hidden: int, heads: int, dropout: float, ffn_residual: bool = False) -> nn.Module:
    return TransformerBlock(dim, hidden, heads, dropout)


def _make_msa(dim: int, hidden: int, heads: int, dropout: float, ffn_residual: bool = False) -> nn.Module:
    return MSABlock(dim, heads, dropout)


def _make_ffn(dim: int, hidden: int, heads: int, dropout: float, ffn_residual: bool = False) -> nn.Module:
    return FFNBlock(dim, hidden, dropout, residual=ffn_residual)


#: Candidate blocks by name: each maker takes (dim, ffn hidden, heads, dropout, ffn_residual); only the
#: ``ffn`` candidate reads ``ffn_residual`` (the transformer block's FFN always has its residual).
BLOCK_CHOICES = {"msa_ffn": _make_msa_ffn, "msa": _make_msa, "ffn": _make_ffn}


def gumbel_temperature(epoch: int, initial: float = 5.0, decay: float = 0.956, minimum: float = 0.0) -> float:
    """Temperature for ``epoch`` (0-based) under FBNet's schedule: ``initial * decay ** epoch``.

    The defaults are FBNet's (5.0, annealed by exp(-0.045) ~ 0.956 per epoch); the BAS paper names no
    temperature.

    Call ``supernet.set_temperature(gumbel_temperature(epoch))`` at the start of each epoch. With the
    defaults the temperature goes from 5.0 to about 0.06 after 100 epochs.

    Example
    -------
    >>> gumbel_temperature(0), round(gumbel_temperature(10), 3)
    (5.0, 3.188)
    """
    return max(minimum, initial * decay**epoch)


def make_arch_optimizer(
    params: Iterable[nn.Parameter],
    name: str = "sgd",
    lr: float = 0.005,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The optimiser of the architecture logits, chosen by name (``arch_opt_class`` in the yamls).

    ``"sgd"``: SGD, what the paper uses for the architecture distribution (Sec. 2.2), with the lr it
    gives for the super net's parameters (0.005, Sec. 3.3) and our momentum (the weights'). ``"adam"``:
    FBNet's choice (Adam lr 0.01, weight decay 5e-4); Adam has no ``momentum`` setting, so it must be 0.

    Example
    -------
    >>> theta = [torch.nn.Parameter(torch.zeros(3))]
    >>> type(make_arch_optimizer(theta)).__name__
    'SGD'
    >>> make_arch_optimizer(theta, "adam", lr=0.01, momentum=0.0).defaults["lr"]
    0.01
    """
    name = str(name).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        if momentum:
            raise ValueError(f"arch optimiser adam has no momentum (got {momentum}); set arch_momentum to 0")
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown arch optimiser {name!r}; choose sgd (the paper) or adam (FBNet)")


def parse_arch(
    arch: str | list[str] | tuple[str, ...], choices: Sequence[str] = tuple(BLOCK_CHOICES)
) -> list[str]:
    """Split ``"ffn,msa,msa_ffn"`` into block names and check them.

    Example
    -------
    >>> parse_arch("ffn, msa,msa_ffn")
    ['ffn', 'msa', 'msa_ffn']
    """
    names = [n.strip() for n in arch.split(",")] if isinstance(arch, str) else list(arch)
    if not names or any(not n for n in names):
        raise ValueError(f"empty block name in arch {arch!r}")
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown} in arch {arch!r}; choose from {list(choices)}")
    return names


class _Stem(nn.Module):
    """Input projection (or identity), shared by the supernet and the derived network."""

    def __init__(self, input_dim: int, model_dim: int) -> None:
        super().__init__()
        self.proj = nn.Identity() if model_dim == input_dim else nn.Linear(input_dim, model_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class BlockSearchSupernet(nn.Module):
    """BAS supernet: ``num_layers`` searchable layers, each a Gumbel-softmax mixture of candidate blocks.

    Parameters
    ----------
    input_dim : int
        Feature dimension C.
    num_classes : int
    num_layers : int
        Searchable layers (3 or 4 in the paper).
    choices : sequence of str
        Candidate names from ``BLOCK_CHOICES``.
    pooling : str
        ``"mean"`` or ``"attention"``.
    model_dim : int
        Width D of the searched layers (see the module docstring).
    num_heads : int
    ffn_dim : int, optional
        Hidden width of FFN candidates (default 4 D).
    dropout : float
    ffn_residual : bool
        Give the ``ffn`` candidate a residual, ``LN(x + FFN(x))``; the paper's has none (default).
    tau : float
        Initial Gumbel-softmax temperature (change it with ``set_temperature``).

    Shapes
    ------
    x : (B, T, C); padding_mask : (B, T) bool, True on padding, or None; output : (B, num_classes).

    Example
    -------
    >>> net = BlockSearchSupernet(32, 4, num_layers=2, model_dim=16, num_heads=2)
    >>> net(torch.randn(3, 7, 32)).shape
    torch.Size([3, 4])
    >>> net.probabilities().shape, net.derive()
    (torch.Size([2, 3]), 'msa_ffn,msa_ffn')
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        num_layers: int = 4,
        choices: Sequence[str] = ("msa_ffn", "msa", "ffn"),
        pooling: str = "mean",
        model_dim: int = 256,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        ffn_residual: bool = False,
        tau: float = 5.0,
    ) -> None:
        super().__init__()
        self.choices = tuple(parse_arch(list(choices)))
        ffn_dim = 4 * model_dim if ffn_dim is None else ffn_dim
        self.stem = _Stem(input_dim, model_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                BLOCK_CHOICES[n](model_dim, ffn_dim, num_heads, dropout, ffn_residual) for n in self.choices
            )
            for _ in range(num_layers)
        )
        # One logit vector per layer; zeros = uniform over candidates at the start.
        self.arch_logits = nn.ParameterList(
            nn.Parameter(torch.zeros(len(self.choices))) for _ in range(num_layers)
        )
        self.pool = build_pooling(pooling, model_dim)
        self.classifier = nn.Linear(model_dim, num_classes)
        self.tau = float(tau)

    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture logits theta, one (num_choices,) parameter per layer."""
        return list(self.arch_logits)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the architecture logits (for the weights' optimiser)."""
        arch = {id(p) for p in self.arch_logits}
        return [p for p in self.parameters() if id(p) not in arch]

    def set_temperature(self, tau: float) -> None:
        """Set the Gumbel-softmax temperature (see ``gumbel_temperature`` for the schedule)."""
        if tau <= 0:
            raise ValueError(f"temperature must be positive, got {tau}")
        self.tau = float(tau)

    def probabilities(self) -> Tensor:
        """Architecture distribution ``softmax(theta)`` per layer, shape (num_layers, num_choices)."""
        return torch.stack([torch.softmax(t.detach(), dim=0) for t in self.arch_logits])

    def derive(self) -> str:
        """The argmax block of each layer as ``"ffn,msa,msa_ffn,msa"`` (ties go to the earlier choice)."""
        names = []
        for logits in self.arch_logits:
            values = logits.detach().tolist()
            names.append(self.choices[values.index(max(values))])
        return ",".join(names)

    def mixture_weights(self, layer: int) -> Tensor:
        """Relaxed one-hot weights of ``layer``: Gumbel noise in training, none in eval."""
        logits = self.arch_logits[layer]
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=0)
        return torch.softmax(logits / self.tau, dim=0)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = self.stem(x)
        for index, candidates in enumerate(self.layers):
            weights = self.mixture_weights(index).to(x.dtype)
            x = sum(w * block(x, padding_mask) for w, block in zip(weights, candidates))
        return self.classifier(self.pool(x, padding_mask))

    def extra_repr(self) -> str:
        return f"choices={self.choices}, tau={self.tau:g}"


class DerivedBlockNetwork(nn.Module):
    """The network BAS derives: the chosen block per layer, built and trained from scratch.

    Same stem, candidate blocks (``ffn_residual`` as there), pooling and classifier as
    :class:`BlockSearchSupernet`; built by
    ``build_head("bas", input_dim, num_classes, arch="ffn,msa,msa_ffn,msa")``.
    ``arch="msa_ffn,msa_ffn,msa_ffn,msa_ffn"`` is the like-for-like transformer baseline.

    Example
    -------
    >>> net = DerivedBlockNetwork(32, 4, arch="ffn,msa", model_dim=16, num_heads=2)
    >>> net(torch.randn(3, 7, 32)).shape, net.arch
    (torch.Size([3, 4]), 'ffn,msa')
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        arch: str = "ffn,msa,msa_ffn,msa",
        pooling: str = "mean",
        model_dim: int = 256,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        ffn_residual: bool = False,
    ) -> None:
        super().__init__()
        names = parse_arch(arch)
        self.arch = ",".join(names)
        ffn_dim = 4 * model_dim if ffn_dim is None else ffn_dim
        self.stem = _Stem(input_dim, model_dim)
        self.layers = nn.ModuleList(
            BLOCK_CHOICES[n](model_dim, ffn_dim, num_heads, dropout, ffn_residual) for n in names
        )
        self.pool = build_pooling(pooling, model_dim)
        self.classifier = nn.Linear(model_dim, num_classes)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = self.stem(x)
        for block in self.layers:
            x = block(x, padding_mask)
        return self.classifier(self.pool(x, padding_mask))

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}"
