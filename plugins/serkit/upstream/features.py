"""Cached layer features: a resumable, shardable dumper and the reader the heads and k-means use.

Layout of ``OUT`` (docs/interfaces.md):

```
OUT/feats.scp            key -> ark offset, for kaldiio.load_scp (absolute paths), written by the merge
OUT/utt2num_frames       frames per utterance (50 per second)
OUT/meta.json            upstream, kind, layers, dim, dtype, frame_rate, normalize, counts
OUT/dump.json            the options and input list that produced OUT (a resume must match them)
OUT/parts/part-NNNNN.ark one chunk of ``chunk_utterances`` consecutive utterances
OUT/parts/part-NNNNN.scp written after its ark is complete: the progress record of that chunk
```

Each utterance is one matrix of shape (T, n_layers * C), layer-major (columns ``[i*C, (i+1)*C)`` are
``layers[i]``). float32 matrices are Kaldi binary ``FM``; float16 ones are stored with kaldiio's numpy
writer (Kaldi has no half-precision matrix), which ``kaldiio.load_scp`` reads too.

Resuming: a chunk is done when its ``.scp`` exists; a killed run loses at most the chunk it was
writing (temporary files) and a re-run with the same options computes only the missing chunks. The
chunks do not depend on ``--shard/--nshard`` (shards take contiguous ranges of chunks, as fairseq's
scripts take ranges of lines), so any mix of sharded, interrupted and single runs ends with the same
bytes. The merge runs at the end of any run that finds every chunk present; re-running the command
without ``--shard`` (or after the last shard) completes it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, KeysView, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..utils import DiskFull, SerkitError, atomic_file, read_map, write_json
from . import SAMPLE_RATE

if TYPE_CHECKING:
    from .base import Upstream

log = logging.getLogger("serkit.upstream")

DEFAULT_CHUNK_UTTERANCES = 100


@dataclass(frozen=True)
class AudioItem:
    utt: str
    wav: str
    num_samples: int | None = None


class _ProgressBar(Protocol):
    """What the dumper needs of its progress bar: utterances done, and the audio seconds they hold."""

    audio_seconds: float

    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# inputs


def _read_tsv(tsv: Path) -> list[AudioItem]:
    lines = tsv.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise SerkitError(f"{tsv}: empty (the first line must be the root directory)")
    root, items = lines[0].strip(), []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise SerkitError(f"{tsv}:{i}: expected 'relpath<TAB>num_samples'")
        wav = os.path.join(root, parts[0])
        items.append(AudioItem(Path(wav).stem, wav, int(parts[1])))
    return items


def collect_inputs(data: list[str], splits: list[str] | None = None) -> list[AudioItem]:
    """Utterances to dump, in order, without duplicates.

    Each entry of ``data`` is a data directory (``wav.scp``), a fold directory (with ``splits``, default
    every split present), or one split file ``FOLD/<split>.tsv`` (read through
    ``serkit.data.manifest.read_split`` when the fold's json is beside it; otherwise the utterance id
    is the wav file's stem).
    """
    from ..data.manifest import SPLITS, read_split

    out: dict[str, AudioItem] = {}

    def add(items: Iterable[AudioItem], source: Path) -> None:
        for it in items:
            old = out.get(it.utt)
            if old is not None and os.path.normpath(old.wav) != os.path.normpath(it.wav):
                raise SerkitError(
                    f"{source}: utterance {it.utt!r} points to {it.wav}, but an earlier input "
                    f"gave {old.wav}; utterance ids must be unique"
                )
            out.setdefault(it.utt, it)

    for entry in data:
        p = Path(entry)
        if p.is_file() and p.suffix == ".tsv":
            fold, split = p.parent, p.stem
            if (fold / f"{split}.json").is_file() and (fold / f"{split}.emo").is_file():
                add([AudioItem(u.utt, u.wav, u.num_samples) for u in read_split(fold, split)], p)
            else:
                add(_read_tsv(p), p)
        elif p.is_dir() and (p / "wav.scp").is_file():
            wavs = read_map(p / "wav.scp")
            for utt, wav in wavs.items():
                if wav.endswith("|"):
                    raise SerkitError(f"{p / 'wav.scp'}: {utt}: pipes are not supported; give a wav path")
            add([AudioItem(u, w) for u, w in wavs.items()], p / "wav.scp")
        elif p.is_dir():
            names = splits or [s for s in SPLITS if (p / f"{s}.tsv").is_file()]
            if not names:
                raise SerkitError(f"{p}: neither wav.scp (a data directory) nor <split>.tsv files (a fold)")
            for s in names:
                add([AudioItem(u.utt, u.wav, u.num_samples) for u in read_split(p, s)], p / f"{s}.tsv")
        else:
            raise SerkitError(
                f"{p}: not found; --data takes a data directory (wav.scp), a fold directory "
                "or a <split>.tsv file"
            )
    if not out:
        raise SerkitError(f"{', '.join(data)}: no utterances to dump")
    return list(out.values())


def read_wav(path: str) -> np.ndarray:
    import soundfile as sf

    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=False)
    except Exception as e:  # noqa: BLE001 - libsndfile errors
        raise SerkitError(f"{path}: cannot read audio ({e})") from e
    if sr != SAMPLE_RATE:
        raise SerkitError(
            f"{path}: sample rate {sr}, expected {SAMPLE_RATE}; resample the corpus with `serkit prepare`"
        )
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    return wav


def parse_layers(spec: str | int | Iterable[int] | None, upstream: Upstream) -> list[int]:
    if spec in (None, "all"):
        return upstream.all_layers()
    if isinstance(spec, str):
        try:
            spec = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise SerkitError(
                f"--layers {spec!r}: expected 'all', a layer number or a list like 3,6,9"
            ) from None
    return upstream.check_layers(spec)


# ---------------------------------------------------------------------------------------------
# dumping


def _fingerprint(items: list[AudioItem]) -> str:
    h = hashlib.sha1()
    for it in items:
        h.update(f"{it.utt}\t{os.path.abspath(it.wav)}\n".encode())
    return h.hexdigest()


def shard_chunks(num_chunks: int, shard: int, nshard: int) -> range:
    """Contiguous range of chunk indices for one shard (fairseq's ``get_shard_range`` on chunks)."""
    if not 0 <= shard < nshard:
        raise SerkitError(f"--shard {shard} --nshard {nshard}: need 0 <= shard < nshard")
    start = round(num_chunks / nshard * shard)
    end = round(num_chunks / nshard * (shard + 1))
    return range(start, end)


def _write_chunk(
    out: Path,
    c: int,
    items: list[AudioItem],
    upstream: Upstream,
    layers: list[int],
    dtype: type[np.floating],
    device: str,
    max_chunk_seconds: float | None,
    bar: _ProgressBar | None,
) -> int:
    import kaldiio
    import torch

    parts = out / "parts"
    ark = parts / f"part-{c:05d}.ark"
    scp = parts / f"part-{c:05d}.scp"
    tmp = parts / f".part-{c:05d}.ark.tmp-{os.getpid()}"
    lines, frames = [], 0
    try:
        with open(tmp, "wb") as f:
            for it in items:
                wav = read_wav(it.wav)
                if it.num_samples is not None and it.num_samples != len(wav):
                    raise SerkitError(
                        f"{it.wav}: has {len(wav)} samples, the split file says {it.num_samples}; "
                        "re-run `serkit split`"
                    )
                if len(wav) < upstream.receptive_field:
                    raise SerkitError(
                        f"{it.wav}: {len(wav)} samples, shorter than one frame "
                        f"({upstream.receptive_field}); drop it from the data"
                    )
                x = torch.from_numpy(wav).to(device)
                feats = upstream.extract(x, layers, max_chunk_seconds=max_chunk_seconds)  # (L, T, C)
                mat = feats.permute(1, 0, 2).reshape(feats.size(1), -1).cpu().numpy().astype(dtype)
                mat = np.ascontiguousarray(mat)
                key = f"{it.utt} ".encode()
                offset = f.tell() + len(key)
                kaldiio.save_ark(f, {it.utt: mat}, write_function="numpy" if dtype == np.float16 else None)
                lines.append(f"{it.utt} {ark.resolve()}:{offset}\t{mat.shape[0]}")
                frames += mat.shape[0]
                if bar is not None:
                    bar.update(1)
                    bar.audio_seconds += len(wav) / SAMPLE_RATE
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ark)
    except BaseException as e:
        if tmp.exists():
            tmp.unlink()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                f"{ark}: no space left on the device while writing it ({e.strerror}); the chunks already "
                f"finished in {parts} are kept: free some space and run the same command again to resume"
            ) from None
        raise
    with atomic_file(scp, encoding="utf-8") as f:  # the chunk's commit marker
        f.write("".join(line + "\n" for line in lines))
    return frames


def _merge(out: Path, num_chunks: int, meta: dict) -> bool:
    parts = out / "parts"
    scps = [parts / f"part-{c:05d}.scp" for c in range(num_chunks)]
    if not all(p.is_file() for p in scps):
        return False
    entries, n_frames = [], {}
    for p in scps:
        for line in p.read_text(encoding="utf-8").splitlines():
            entry, _, t = line.partition("\t")
            entries.append(entry)
            n_frames[entry.split(" ", 1)[0]] = int(t)
    with atomic_file(out / "utt2num_frames", encoding="utf-8") as f:
        f.write("".join(f"{u} {t}\n" for u, t in n_frames.items()))
    meta = dict(meta, num_utterances=len(entries), num_frames=sum(n_frames.values()))
    write_json(out / "meta.json", meta)
    with atomic_file(out / "feats.scp", encoding="utf-8") as f:  # last: its presence means complete
        f.write("".join(e + "\n" for e in entries))
    log.info(
        "merged %d chunks: %s (%d utterances, %d frames)",
        num_chunks,
        out / "feats.scp",
        len(entries),
        meta["num_frames"],
    )
    return True


def dump_features(
    upstream: Upstream,
    items: list[AudioItem],
    out: str | os.PathLike,
    layers: str | int | Iterable[int] | None = None,
    dtype: str = "float16",
    shard: int = 0,
    nshard: int = 1,
    device: str = "cpu",
    max_chunk_seconds: float | None = None,
    chunk_utterances: int = DEFAULT_CHUNK_UTTERANCES,
    progress: bool = True,
) -> dict:
    """Dump ``layers`` of ``upstream`` for ``items`` into ``out`` (resumable; see module docstring).

    Returns a summary dict (utterances and audio seconds done in this call, wall time, merged or not).
    """
    if dtype not in ("float16", "float32"):
        raise SerkitError(f"--dtype {dtype!r}: choose float16 or float32")
    np_dtype = np.float16 if dtype == "float16" else np.float32
    layers = parse_layers(layers, upstream)
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    num_chunks = -(-len(items) // chunk_utterances)
    options = {
        "upstream": str(upstream.path),
        "kind": upstream.kind,
        "layers": layers,
        "dtype": dtype,
        "chunk_utterances": chunk_utterances,
        "max_chunk_seconds": max_chunk_seconds,
        "num_utterances": len(items),
        "inputs_sha1": _fingerprint(items),
    }
    if upstream.path not in ("", "mfcc") and os.path.exists(upstream.path):
        options["upstream_bytes"] = os.path.getsize(upstream.path)
    done_file = out / "dump.json"
    if done_file.is_file():
        old = json.loads(done_file.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(options) if old.get(k) != options.get(k))
        if diff:
            raise SerkitError(
                f"{out}: holds a dump made with other options ({', '.join(diff)} differ); remove "
                "it or choose another --out"
            )
    else:
        write_json(done_file, options)
    meta = {
        "upstream": str(upstream.path),
        "kind": upstream.kind,
        "layers": layers,
        "dim": upstream.dim,
        "dtype": dtype,
        "frame_rate": upstream.frame_rate,
        "normalize": upstream.normalize,
    }
    mine = shard_chunks(num_chunks, shard, nshard)
    todo = [c for c in mine if not (out / "parts" / f"part-{c:05d}.scp").is_file()]
    n_todo = sum(len(items[c * chunk_utterances : (c + 1) * chunk_utterances]) for c in todo)
    log.info(
        "dump-features: %d utterances in %d chunks -> %s; shard %d/%d owns chunks %d..%d, %d to do "
        "(%d utterances), layers %s, %s",
        len(items),
        num_chunks,
        out,
        shard,
        nshard,
        mine.start,
        mine.stop - 1,
        len(todo),
        n_todo,
        layers,
        dtype,
    )
    for stale in (out / "parts").glob(".part-*.ark.tmp-*"):  # left by a killed run of this shard
        c = int(stale.name[6:11])
        if c in mine and not stale.name.endswith(f"-{os.getpid()}"):
            stale.unlink(missing_ok=True)
    bar = _progress_bar(n_todo) if progress else None
    t0 = time.perf_counter()
    frames = 0
    try:
        for c in todo:
            chunk = items[c * chunk_utterances : (c + 1) * chunk_utterances]
            frames += _write_chunk(out, c, chunk, upstream, layers, np_dtype, device, max_chunk_seconds, bar)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    audio = bar.audio_seconds if bar is not None else None
    merged = _merge(out, num_chunks, meta)
    if not merged:
        missing = sum(not (out / "parts" / f"part-{c:05d}.scp").is_file() for c in range(num_chunks))
        log.info(
            "%d of %d chunks still missing (other shards); the last run to finish merges", missing, num_chunks
        )
    return {"utterances": n_todo, "frames": frames, "wall_s": wall, "audio_s": audio, "merged": merged}


def _progress_bar(total: int) -> _ProgressBar:
    from tqdm import tqdm

    class _Bar(tqdm):
        audio_seconds = 0.0

        def update(self, n: int = 1) -> None:
            super().update(n)
            el = self.format_dict.get("elapsed") or 0.0
            if el > 0 and self.audio_seconds:
                self.set_postfix_str(f"RTF {el / self.audio_seconds:.3f}", refresh=False)

    return _Bar(total=total, unit="utt", desc="dump-features", dynamic_ncols=True, mininterval=1.0)


# ---------------------------------------------------------------------------------------------
# reading


class FeatureReader:
    """Read a directory written by ``serkit dump-features``.

    ``.layers`` (the layer numbers stored), ``.dim`` (C), ``.keys()``, ``utt in reader``, ``len(reader)``,
    ``.num_frames(utt)``, ``.load(utt, layers=None) -> np.float32 array (n_layers, T, C)``.
    ``layers`` selects among the stored layer numbers (default: all stored).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        scp, meta = self.path / "feats.scp", self.path / "meta.json"
        if not scp.is_file() or not meta.is_file():
            hint = (
                " (dump incomplete: re-run the same dump-features command to finish it)"
                if (self.path / "dump.json").is_file()
                else ""
            )
            raise SerkitError(f"{self.path}: no feats.scp/meta.json{hint}; run `serkit dump-features`")
        self.meta = json.loads(meta.read_text(encoding="utf-8"))
        self.layers: list[int] = list(self.meta["layers"])
        self.dim: int = int(self.meta["dim"])
        self.frame_rate = self.meta.get("frame_rate", 50)
        self._scp: dict[str, tuple[str, int]] = {}
        for line in scp.read_text(encoding="utf-8").splitlines():
            utt, _, loc = line.partition(" ")
            ark, _, off = loc.rpartition(":")
            self._scp[utt] = (ark, int(off))
        self._frames: dict[str, int] | None = None
        self._relocated: dict[str, str] = {}

    def keys(self) -> KeysView[str]:
        return self._scp.keys()

    def __contains__(self, utt: object) -> bool:
        return utt in self._scp

    def __len__(self) -> int:
        return len(self._scp)

    def num_frames(self, utt: str) -> int:
        if self._frames is None:
            self._frames = {k: int(v) for k, v in read_map(self.path / "utt2num_frames").items()}
        return self._frames[utt]

    def _ark(self, ark: str) -> str:
        if ark not in self._relocated:
            here = ark if os.path.exists(ark) else str(self.path / "parts" / Path(ark).name)
            self._relocated[ark] = here  # the directory may have been moved since it was written
        return self._relocated[ark]

    def load(self, utt: str, layers: int | Sequence[int] | None = None) -> np.ndarray:
        import kaldiio

        if utt not in self._scp:
            raise SerkitError(f"{self.path / 'feats.scp'}: no utterance {utt!r}; dump features for this data")
        ark, off = self._scp[utt]
        mat = np.asarray(kaldiio.load_mat(f"{self._ark(ark)}:{off}"))
        feats = mat.reshape(mat.shape[0], len(self.layers), self.dim).transpose(1, 0, 2)
        if layers is not None:
            if isinstance(layers, int):
                layers = [layers]
            missing = [x for x in layers if x not in self.layers]
            if missing:
                raise SerkitError(f"{self.path}: layer(s) {missing} were not dumped (stored: {self.layers})")
            feats = feats[[self.layers.index(x) for x in layers]]
        return feats.astype(np.float32)
