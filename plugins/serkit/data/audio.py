"""Audio input for corpus preparation: checking, reading, converting and decoding to 16 kHz mono wav.

Every wav that serkit hands to a trainer is 16 kHz, mono, 16-bit PCM. Corpora that ship something
else (SAVEE at 44.1 kHz, MELD as 48 kHz multi-channel AAC in mp4) are converted once by ``prepare``;
IEMOCAP's wavs are used in place after :func:`check_wav`.

PyAV is imported inside the functions that need it; torch is not used here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from ..utils import SerkitError, atomic_file

SAMPLE_RATE = 16000
#: Peak amplitude (full scale = 1.0) below which a clip counts as silent: about -80 dBFS, below the
#: quantisation noise of 16-bit audio with dither, so only digital silence is caught.
SILENCE_PEAK = 1e-4


def check_wav(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> int:
    """Check that ``path`` is a readable, non-empty, mono wav at ``sample_rate``; return its sample count.

    Raises :class:`SerkitError` naming the file, what is wrong and what to do.
    """
    path = Path(path)
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile's errors carry no file name
        raise SerkitError(f"{path}: unreadable audio ({e}); replace it with a good copy from the corpus "
                          "release") from None
    if info.frames <= 0:
        raise SerkitError(f"{path}: empty audio (0 samples); replace it with a good copy from the "
                          "corpus release")
    if info.channels != 1:
        raise SerkitError(f"{path}: {info.channels} channels, expected mono; convert it with "
                          f"`sox {path.name} -c 1 out.wav` or use a clean copy of the corpus")
    if info.samplerate != sample_rate:
        raise SerkitError(f"{path}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz; "
                          f"resample it (`sox {path.name} -r {sample_rate} out.wav`) or use a clean copy")
    return int(info.frames)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read any soundfile-readable file as float32 of shape (samples, channels) and its sample rate."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise SerkitError(f"{path}: unreadable audio ({e}); replace it with a good copy") from None
    return data, int(sr)


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of (samples, channels) audio; 1-D input is returned as is."""
    return data if data.ndim == 1 else data.mean(axis=1, dtype=np.float32)


def _import_av():
    try:
        import av
    except ModuleNotFoundError:
        raise SerkitError("PyAV is needed to resample and decode audio: `pip install av` "
                          "(its wheel bundles FFmpeg)") from None
    return av


def resample(x: np.ndarray, orig_sr: int, new_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a 1-D float signal with FFmpeg's band-limited resampler (through PyAV).

    PyAV rather than torchaudio: MELD needs it anyway, it keeps torch out of data preparation (fast
    start, safe to fork for ``--jobs``), and one resampler for every corpus keeps the wavs consistent.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if orig_sr == new_sr or x.size == 0:
        return x
    av = _import_av()
    frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
    frame.sample_rate = orig_sr
    resampler = av.AudioResampler(format="flt", layout="mono", rate=new_sr)
    out = [f.to_ndarray()[0] for f in resampler.resample(frame)]
    out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)


def write_wav(path: str | os.PathLike, x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> int:
    """Write a 1-D float signal as 16-bit PCM wav, atomically (a killed run leaves no partial file)."""
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    with atomic_file(path, "wb") as f:
        sf.write(f, x, sample_rate, format="WAV", subtype="PCM_16")
    return int(x.shape[0])


def convert_wav(src: str | os.PathLike, dst: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> int:
    """Read ``src``, average to mono, resample to ``sample_rate`` and write ``dst``; return samples."""
    data, sr = read_audio(src)
    if data.shape[0] == 0:
        raise SerkitError(f"{src}: empty audio (0 samples); replace it with a good copy")
    return write_wav(dst, resample(to_mono(data), sr, sample_rate), sample_rate)


def decode_av(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode audio stream 0 of a media file (mp4/AAC, ...) with PyAV into 1-D float32 mono.

    Channels are averaged (not FFmpeg's surround downmix matrix), then resampled to ``sample_rate``
    with :func:`resample`. Raises ``ValueError`` for a file without audio and whatever PyAV raises
    for a broken one: callers decide whether that is fatal.
    """
    av = _import_av()
    chunks = []
    rate = None
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            arr = frame.to_ndarray()
            channels = len(frame.layout.channels)
            if not frame.format.is_planar:  # packed: (1, samples * channels), interleaved
                arr = arr.reshape(-1, channels).T
            if np.issubdtype(arr.dtype, np.integer):
                arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
            chunks.append(arr.astype(np.float32, copy=False).mean(axis=0))
            rate = frame.sample_rate
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return resample(np.concatenate(chunks), rate, sample_rate)


def is_silent(x: np.ndarray, peak: float = SILENCE_PEAK) -> bool:
    return x.size == 0 or float(np.max(np.abs(x))) < peak
