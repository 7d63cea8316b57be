"""Co-attention emotion analysis over SSL frames, after Zou et al. (ICASSP 2022), and 3-second segmenting.

MFSN's emotion-analysis module follows Zou et al. 2022 ("Speech emotion recognition with co-attention
based multi-level acoustic information"): three views of the same 3-second segment,

- a **spectrogram** branch: a 2-D CNN over the log power spectrogram, pooled to a vector ``s``;
- an **MFCC** branch: a BiLSTM over the MFCCs, pooled to a vector ``m``;
- the **SSL frames** ``x_t`` (in MFSN: the fused SEC/TEC frames),

where ``s`` and ``m`` produce attention weights over the SSL frames (our reading of the co-attention):

    e_t = v . tanh(W_x x_t + W_s s + W_m m),   a = softmax_t(e) over valid frames,   z = sum_t a_t x_t
    logits = W_o [z; s; m] + b_o

**Streams.** MFSN feeds two frame streams (the fusion-adjusted TEC and the final-layer SEC) to this
module: "when dealing with MFSN dual-stream inputs, we double the dimension of the encoding hidden
features for both spectrograms and MFCCs. These features are evenly distributed to each stream for
co-attention calculations" (MFSN paper, Sec. 5.1). With ``K`` streams (``input_dim`` a list of K
channel counts) the spectrogram CNN's last layer has ``K`` times ``cnn_channels[-1]`` channels and the
BiLSTM ``K`` times ``lstm_hidden`` units per direction; ``s`` and ``m`` are cut into K equal parts
(``m``'s parts keep both directions: part k is the k-th slice of the forward AND of the backward
states), part k attends over stream k with its own ``W_x, W_s, W_m, v``, and

    logits = W_o [z_1; ...; z_K; s; m] + b_o.

``K = 1`` is the single-stream module above. (``cnn="alexnet"`` keeps AlexNet's 256 output channels
so that image-pretrained weights still load, and splits them; ours.)

Everything is trained from scratch; the CNN can start from image-pretrained weights
(``cnn="alexnet"`` has the layer layout of the usual AlexNet ``features`` block, so a local AlexNet state
dict loads into it with :meth:`CoAttentionHead.load_pretrained_cnn`; nothing is downloaded).

Spectrogram and MFCCs are computed from the segment's waveform with torchaudio, with the same window
and hop, without centring: a frame exists only where its whole window lies inside the valid samples,
so the right-padding of a short segment never reaches a valid frame. The CNN and the BiLSTM track the
valid length layer by layer; the head gives the same output for a segment padded or not.

Segments: an utterance is cut into 3-second segments, the last one right-aligned to the end of the
utterance (it overlaps the one before); an utterance shorter than 3 s is one segment (padded and
masked in a batch). An utterance's prediction is the mean of its segments' log-probabilities
(:func:`aggregate_segments`). :func:`segment_starts` gives the sample offsets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masking import lengths_to_padding_mask, masked_mean

__all__ = [
    "CoAttentionHead",
    "MeanPoolHead",
    "segment_starts",
    "aggregate_segments",
]


def segment_starts(num_samples: int, segment_samples: int) -> list[int]:
    """Sample offsets of the segments of an utterance: every ``segment_samples``, last one right-aligned.

    Example
    -------
    >>> segment_starts(100, 48)     # 0..47, 48..95, and 52..99 right-aligned
    [0, 48, 52]
    >>> segment_starts(30, 48)      # shorter than a segment: one, padded
    [0]
    >>> segment_starts(96, 48)
    [0, 48]
    """
    if num_samples <= segment_samples:
        return [0]
    n = math.ceil(num_samples / segment_samples)
    return [k * segment_samples for k in range(n - 1)] + [num_samples - segment_samples]


def aggregate_segments(segment_logits: Tensor, utt_index: Tensor, num_utts: int | None = None) -> Tensor:
    """Mean of the segments' log-probabilities per utterance.

    Parameters
    ----------
    segment_logits : Tensor, shape (S, K)
    utt_index : LongTensor, shape (S,)
        The utterance (0..U-1) each segment belongs to.
    num_utts : int, optional

    Returns
    -------
    Tensor, shape (U, K): mean log-probabilities (argmax = the prediction; ``exp`` and renormalise for
    probabilities).

    Example
    -------
    >>> lp = aggregate_segments(torch.zeros(3, 2), torch.tensor([0, 0, 1]))
    >>> lp.shape
    torch.Size([2, 2])
    """
    logp = F.log_softmax(segment_logits.float(), dim=-1)
    if num_utts is None:
        num_utts = int(utt_index.max()) + 1 if utt_index.numel() else 0
    total = torch.zeros(num_utts, logp.shape[1], dtype=logp.dtype, device=logp.device)
    total.index_add_(0, utt_index, logp)
    count = torch.bincount(utt_index, minlength=num_utts).clamp_min(1).to(logp.dtype)
    return total / count[:, None]


class MeanPoolHead(nn.Module):
    """Masked mean over frames (of each stream, concatenated) then a linear layer: a light emotion head
    for quick checks (ignores waveform inputs).

    Example
    -------
    >>> MeanPoolHead(8, 4)(torch.randn(2, 5, 8), None).shape
    torch.Size([2, 4])
    >>> MeanPoolHead([8, 6], 4)((torch.randn(2, 5, 8), torch.randn(2, 5, 6)), None).shape
    torch.Size([2, 4])
    """

    def __init__(self, input_dim: int | Sequence[int], num_classes: int) -> None:
        super().__init__()
        dims = (int(input_dim),) if isinstance(input_dim, int) else tuple(int(d) for d in input_dim)
        self.input_dims, self.num_streams = dims, len(dims)
        self.fc = nn.Linear(sum(dims), num_classes)

    def forward(
        self, x: Tensor | Sequence[Tensor], padding_mask: Tensor | None = None, **unused: Tensor | None
    ) -> Tensor:
        xs = (x,) if isinstance(x, Tensor) else tuple(x)
        if len(xs) != self.num_streams:
            raise ValueError(f"MeanPoolHead built for {self.num_streams} stream(s), got {len(xs)}")
        return self.fc(torch.cat([masked_mean(xi, padding_mask) for xi in xs], dim=-1))


def _alexnet_features() -> nn.Sequential:
    # The layer layout (and so the state-dict keys 0..12) of the common AlexNet `features` block.
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _small_cnn(channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 1
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, c, kernel_size=3, stride=2 if i == 0 else 1, padding=1), nn.ReLU()]
        if i < len(channels) - 1:
            layers.append(nn.MaxPool2d(kernel_size=2))
        c_in = c
    return nn.Sequential(*layers)


def _out_length(lengths: Tensor, module: nn.Module) -> Tensor:
    """Valid output frames (time = last axis) of a conv/pool layer for ``lengths`` valid input frames."""
    pick = lambda v: v[-1] if isinstance(v, (tuple, list)) else v
    k, s, p = pick(module.kernel_size), pick(module.stride), pick(module.padding)
    d = pick(getattr(module, "dilation", 1))
    if getattr(module, "ceil_mode", False):
        raise ValueError("ceil_mode pooling is not supported by the masked CNN")
    return torch.div(lengths + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1


def _masked_cnn(cnn: nn.Sequential, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``cnn`` on (B, C, F, T) with ``lengths`` valid frames, zeroing invalid frames after each layer.

    A zeroed frame is exactly what the layer's own zero padding would read at the end of an unpadded
    input, so valid outputs do not depend on how much padding follows.
    """
    for layer in cnn:
        x = layer(x)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            lengths = _out_length(lengths, layer).clamp_min(1)
            keep = ~lengths_to_padding_mask(lengths.clamp_max(x.shape[-1]), x.shape[-1])
            x = x * keep[:, None, None, :].to(x.dtype)
    return x, lengths.clamp_max(x.shape[-1])


class CoAttentionHead(nn.Module):
    """Co-attention emotion head: spectrogram CNN and MFCC BiLSTM attend over the SSL frames.

    Parameters
    ----------
    input_dim : int or list of int
        Channels of the SSL frames; a list gives one entry per stream (MFSN: ``[fused TEC, SEC]``).
    num_classes : int
    sample_rate : int
    n_fft, hop_length : int
        Window and hop (samples) of the spectrogram and the MFCCs (25 ms/10 ms at 16 kHz: 400/160).
    n_mfcc, n_mels : int
        MFCC coefficients and the mel bands under them.
    cnn : {"small", "alexnet"}
        ``small``: a 3-block CNN for CPU runs; ``alexnet``: AlexNet's feature layout (3-channel input:
        the spectrogram is repeated), loadable from image-pretrained weights.
    cnn_channels : channels of the ``small`` CNN (its last layer gets ``K`` times the last entry).
    pretrained_cnn : str, optional
        Local state dict for the CNN (see :meth:`load_pretrained_cnn`).
    lstm_hidden : int
        BiLSTM hidden size per direction and stream (the LSTM has ``K * lstm_hidden`` per direction).
    attn_dim : int
        Size of the co-attention scoring space.
    dropout : float

    Shapes
    ------
    x : (B, T, input_dim), or a tuple of K streams (B, T, input_dim[k]); padding_mask : (B, T) bool;
    wav : (B, N); wav_lengths : (B,) samples
    -> logits (B, num_classes)

    Example
    -------
    >>> head = CoAttentionHead(8, 4, cnn_channels=(4, 8), lstm_hidden=8, attn_dim=8)
    >>> wav, wav_lengths = torch.randn(2, 16000), torch.tensor([16000, 9000])
    >>> head(torch.randn(2, 50, 8), None, wav=wav, wav_lengths=wav_lengths).shape
    torch.Size([2, 4])
    >>> dual = CoAttentionHead([8, 6], 4, cnn_channels=(4, 8), lstm_hidden=8, attn_dim=8)
    >>> dual((torch.randn(2, 50, 8), torch.randn(2, 50, 6)), None, wav=wav, wav_lengths=wav_lengths).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        input_dim: int | Sequence[int],
        num_classes: int,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mfcc: int = 40,
        n_mels: int = 64,
        cnn: str = "small",
        cnn_channels: tuple[int, ...] = (16, 32, 64),
        pretrained_cnn: str | None = None,
        lstm_hidden: int = 128,
        attn_dim: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        import torchaudio  # torch's own audio package; imported here to keep `import serkit.nn` light

        dims = (int(input_dim),) if isinstance(input_dim, int) else tuple(int(d) for d in input_dim)
        if not dims:
            raise ValueError("CoAttentionHead needs at least one input stream")
        self.input_dims = dims
        k = self.num_streams = len(dims)
        self.n_fft, self.hop_length = n_fft, hop_length
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, hop_length=hop_length, center=False, power=2.0
        )
        # log_mels: a plain log; the dB variant clips at top_db relative to the batch maximum, which
        # would make one utterance's features depend on the others in its batch.
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=sample_rate,
            n_mfcc=n_mfcc,
            log_mels=True,
            melkwargs={"n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels, "center": False},
        )
        if cnn == "small":
            channels = tuple(int(c) for c in cnn_channels)
            self.cnn = _small_cnn(channels[:-1] + (channels[-1] * k,))
            cnn_dim, self.cnn_in = channels[-1] * k, 1
        elif cnn == "alexnet":
            self.cnn = _alexnet_features()
            cnn_dim, self.cnn_in = 256, 3
            if cnn_dim % k:
                raise ValueError(f"alexnet's {cnn_dim} channels cannot be split into {k} streams")
        else:
            raise ValueError(f"unknown cnn {cnn!r}; choose 'small' or 'alexnet'")
        self.lstm_hidden = int(lstm_hidden)
        self.lstm = nn.LSTM(n_mfcc, self.lstm_hidden * k, batch_first=True, bidirectional=True)
        self.cnn_dim, self.mfcc_dim = cnn_dim, 2 * self.lstm_hidden * k
        self.att_x = nn.ModuleList(nn.Linear(d, attn_dim) for d in dims)
        self.att_s = nn.ModuleList(nn.Linear(cnn_dim // k, attn_dim, bias=False) for _ in dims)
        self.att_m = nn.ModuleList(nn.Linear(2 * self.lstm_hidden, attn_dim, bias=False) for _ in dims)
        self.att_v = nn.ModuleList(nn.Linear(attn_dim, 1, bias=False) for _ in dims)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(sum(dims) + cnn_dim + self.mfcc_dim, num_classes)
        if pretrained_cnn:
            self.load_pretrained_cnn(pretrained_cnn)

    def load_pretrained_cnn(self, path: str) -> None:
        """Load image-pretrained CNN weights from a local state dict.

        Accepts the CNN's own keys (``0.weight``) or a whole classifier's (``features.0.weight``;
        other keys, e.g. ``classifier.*``, are ignored). Raises ValueError naming the file and every
        missing or mismatched tensor.
        """
        path = str(path)
        if not Path(path).is_file():
            raise ValueError(f"{path}: pretrained CNN weights not found; give a local state-dict file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if any(k.startswith("features.") for k in state):
            state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        own = self.cnn.state_dict()
        problems = [f"{k}: missing" for k in own if k not in state]
        problems += [
            f"{k}: shape {tuple(state[k].shape)} in file, {tuple(v.shape)} in the model"
            for k, v in own.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ]
        if problems:
            raise ValueError(
                f"{path}: does not fit the {type(self.cnn).__name__} CNN of this head "
                f"({'; '.join(problems[:6])}{' ...' if len(problems) > 6 else ''}); use "
                "cnn='alexnet' with AlexNet weights, or train from scratch"
            )
        self.cnn.load_state_dict({k: state[k] for k in own})

    def stft_frames(self, wav_lengths: Tensor) -> Tensor:
        """Spectrogram/MFCC frames whose window lies inside the valid samples (at least 1)."""
        return (torch.div(wav_lengths - self.n_fft, self.hop_length, rounding_mode="floor") + 1).clamp_min(1)

    def _spectrogram_branch(self, wav: Tensor, frames: Tensor) -> Tensor:
        spec = torch.log(self.spectrogram(wav) + 1e-6)  # (B, F, Ts)
        mask = lengths_to_padding_mask(frames.clamp_max(spec.shape[-1]), spec.shape[-1])
        # Per-segment standardisation over valid frames (a scalar mean and std per segment).
        keep = (~mask)[:, None, :].to(spec.dtype)
        n = keep.sum(dim=(1, 2)).clamp_min(1) * spec.shape[1]
        mean = (spec * keep).sum(dim=(1, 2)) / n
        var = (((spec - mean[:, None, None]) * keep) ** 2).sum(dim=(1, 2)) / n
        spec = (spec - mean[:, None, None]) / (var[:, None, None].sqrt() + 1e-5) * keep
        img = spec.unsqueeze(1).expand(-1, self.cnn_in, -1, -1)
        y, lengths = _masked_cnn(self.cnn, img, frames)
        y = y.sum(dim=-1) / lengths[:, None, None].to(y.dtype)  # mean over valid time, (B, C, F')
        return y.mean(dim=-1)

    def _mfcc_branch(self, wav: Tensor, frames: Tensor) -> Tensor:
        m = self.mfcc(wav).transpose(1, 2)  # (B, Tm, n_mfcc)
        frames = frames.clamp_max(m.shape[1])
        mask = lengths_to_padding_mask(frames, m.shape[1])
        # Cepstral mean and variance normalisation over the valid frames.
        mean = masked_mean(m, mask)
        std = masked_mean((m - mean[:, None]) ** 2, mask).sqrt() + 1e-5
        m = (m - mean[:, None]) / std[:, None]
        packed = nn.utils.rnn.pack_padded_sequence(m, frames.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=m.shape[1])
        return masked_mean(out, mask)

    def stream_parts(self, s: Tensor, m: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(s_k, m_k)`` for each stream: equal slices of the spectrogram vector and of each direction
        of the pooled BiLSTM states."""
        k, h = self.num_streams, self.lstm_hidden
        cs = self.cnn_dim // k
        fwd, bwd = m[:, : h * k], m[:, h * k :]
        return [
            (
                s[:, i * cs : (i + 1) * cs],
                torch.cat([fwd[:, i * h : (i + 1) * h], bwd[:, i * h : (i + 1) * h]], -1),
            )
            for i in range(k)
        ]

    def forward(
        self,
        x: Tensor | Sequence[Tensor],
        padding_mask: Tensor | None = None,
        *,
        wav: Tensor,
        wav_lengths: Tensor | None = None,
    ) -> Tensor:
        xs = (x,) if isinstance(x, Tensor) else tuple(x)
        if len(xs) != self.num_streams:
            raise ValueError(f"CoAttentionHead built for {self.num_streams} stream(s), got {len(xs)}")
        if wav_lengths is None:
            wav_lengths = torch.full((wav.shape[0],), wav.shape[1], device=wav.device, dtype=torch.long)
        if int(wav.shape[1]) < self.n_fft:
            wav = F.pad(wav, (0, self.n_fft - wav.shape[1]))
        frames = self.stft_frames(wav_lengths.to(wav.device).long())
        s = self._spectrogram_branch(wav, frames)
        m = self._mfcc_branch(wav, frames)
        zs = []
        for i, (xi, (si, mi)) in enumerate(zip(xs, self.stream_parts(s, m))):
            query = (self.att_s[i](si) + self.att_m[i](mi))[:, None, :]
            e = self.att_v[i](torch.tanh(self.att_x[i](xi) + query)).squeeze(-1)
            if padding_mask is not None:
                e = e.masked_fill(padding_mask, float("-inf"))
            a = torch.softmax(e, dim=1)
            xz = xi if padding_mask is None else xi.masked_fill(padding_mask.unsqueeze(-1), 0.0)
            zs.append(torch.bmm(a.unsqueeze(1), xz).squeeze(1))
        return self.classifier(self.dropout(torch.cat([*zs, s, m], dim=-1)))
