"""Audio input for corpus preparation: checking, reading, converting and decoding to 16 kHz mono wav.

Every wav that serkit hands to a trainer is 16 kHz, mono, 16-bit PCM. Corpora that ship something
else (SAVEE at 44.1 kHz, MELD as 48 kHz multi-channel AAC in mp4) are converted once by ``prepare``;
IEMOCAP's wavs are used in place after :func:`check_wav`.

PyAV is imported inside the functions that need it; torch is not used here.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from types import ModuleType

import numpy as np
import soundfile as sf

from ..utils import SerkitError, atomic_file

SAMPLE_RATE = 16000
#: Peak amplitude (full scale = 1.0) below which a clip counts as silent: about -80 dBFS, below the
#: quantisation noise of 16-bit audio with dither, so only digital silence is caught.
SILENCE_PEAK = 1e-4


class TruncatedWav(SerkitError):
    """A wav whose header promises more audio than the file holds (a copy cut short)."""


def wav_shortfall(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(bytes the data chunk header declares, bytes present)`` when a RIFF/WAVE file is cut short.

    libsndfile silently reads what is there, so a truncated copy would pass as a shorter utterance.
    Returns None for complete files, non-RIFF files (left to libsndfile) and streaming headers that
    declare no size (0 or 0xFFFFFFFF).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while True:
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                return None  # no data chunk: libsndfile reports that
            cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                present = size - pos - 8
                if n in (0, 0xFFFFFFFF) or n <= present:
                    return None
                return n, present
            pos += 8 + n + (n & 1)


def check_wav(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> int:
    """Check that ``path`` is a readable, complete, non-empty, mono wav at ``sample_rate``; return its
    sample count.

    Raises :class:`SerkitError` naming the file, what is wrong and what to do (:class:`TruncatedWav`
    for a file shorter than its header says).
    """
    path = Path(path)
    check_complete(path)
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile's errors carry no file name
        raise SerkitError(
            f"{path}: unreadable audio ({e}); replace it with a good copy from the corpus release"
        ) from None
    if info.frames <= 0:
        raise SerkitError(
            f"{path}: empty audio (0 samples); replace it with a good copy from the corpus release"
        )
    if info.channels != 1:
        raise SerkitError(
            f"{path}: {info.channels} channels, expected mono; convert it with "
            f"`sox {path.name} -c 1 out.wav` or use a clean copy of the corpus"
        )
    if info.samplerate != sample_rate:
        raise SerkitError(
            f"{path}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz; "
            f"resample it (`sox {path.name} -r {sample_rate} out.wav`) or use a clean copy"
        )
    return int(info.frames)


def check_complete(path: str | os.PathLike) -> None:
    """Raise :class:`TruncatedWav` naming ``path`` when its header promises more audio than it holds."""
    try:
        short = wav_shortfall(path)
    except OSError as e:
        raise SerkitError(
            f"{path}: unreadable ({e.strerror}); replace it with a good copy from the corpus release"
        ) from None
    if short is not None:
        declared, present = short
        raise TruncatedWav(
            f"{path}: truncated: its header declares {declared} bytes of audio, the file "
            f"holds {present} ({100 * present // declared}%); replace it with a complete "
            "copy from the corpus release, or pass --allow-truncated to drop such files"
        )


def file_sha1(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_record(src: str | os.PathLike) -> dict:
    """Identity of a source clip: resolved path, size, mtime_ns and SHA-1 of its bytes."""
    src = os.path.realpath(src)
    st = os.stat(src)
    return {"path": src, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha1": file_sha1(src)}


#: How ``prepare`` turns a source clip into a wav; part of each clip's record, so a change of any of
#: these converts again.
CONVERSION = {
    "sample_rate": SAMPLE_RATE,
    "channels": "mean",
    "resampler": "ffmpeg swr (PyAV)",
    "format": "wav PCM_16",
    "converter_version": 1,
}


def reusable(record: dict | None, src: str | os.PathLike | None, dst: str | os.PathLike) -> int:
    """Sample count of ``dst`` when it provably came from ``src`` with today's :data:`CONVERSION`; else 0.

    ``record`` is what :func:`conversion_record` stored when ``dst`` was written. The source must be the
    same file (resolved path, size, mtime_ns; SHA-1 only re-read when those match) and ``dst`` unchanged
    since (size, mtime_ns) and a good wav.
    """
    if not record or src is None or not os.path.isfile(src) or not os.path.isfile(dst):
        return 0
    try:
        st = os.stat(src)
        out = os.stat(dst)
        old = record["source"]
        if (old["path"], old["size"], old["mtime_ns"]) != (os.path.realpath(src), st.st_size, st.st_mtime_ns):
            return 0
        if record["conversion"] != CONVERSION or (record["wav"]["size"], record["wav"]["mtime_ns"]) != (
            out.st_size,
            out.st_mtime_ns,
        ):
            return 0
        if file_sha1(src) != old["sha1"]:
            return 0
        n = check_wav(dst)
    except (OSError, KeyError, TypeError, SerkitError):
        return 0
    return n if n == record["wav"].get("num_samples") else 0


def conversion_record(src: str | os.PathLike, dst: str | os.PathLike, num_samples: int) -> dict:
    out = os.stat(dst)
    return {
        "source": source_record(src),
        "conversion": CONVERSION,
        "wav": {"size": out.st_size, "mtime_ns": out.st_mtime_ns, "num_samples": num_samples},
    }


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


def _import_av() -> ModuleType:
    try:
        import av
    except ModuleNotFoundError:
        raise SerkitError(
            "PyAV is needed to resample and decode audio: `pip install av` (its wheel bundles FFmpeg)"
        ) from None
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
    """Read ``src`` (refused if truncated), average to mono, resample to ``sample_rate`` and write
    ``dst``; return samples."""
    check_complete(src)
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
