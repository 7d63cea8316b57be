"""Prepare SAVEE (Surrey Audio-Visual Expressed Emotion) as a serkit data directory.

Finds the wavs under ``--root`` in any of the layouts copies come in:

- nested: ``AudioData/{DC,JE,JK,KL}/{a,d,f,h,n,sa,su}NN.wav``
- doubly nested: ``AudioData/AudioData/DC/a01.wav``
- flat: ``DC_a01.wav`` (in any folder)

Two files that map to the same utterance (e.g. both a nested and a flat copy under the root) are an
error: point ``--root`` at one copy. Other files (``Info.txt``, ``._*`` macOS files) are ignored.

The 44.1 kHz originals are averaged to mono and resampled to 16 kHz once, into
``OUT/wavs/<utt>.wav``. ``OUT/wavs/sources.json`` records, per wav, the source file it came from
(resolved path, size, mtime_ns, SHA-1) and the conversion settings; a re-run reuses a wav only when all
of these still match, so a replaced, corrupted, moved or missing source (or another ``--root``) is
converted again or reported. A source wav shorter than its header promises is an error naming it
(``--allow-truncated`` drops such files and lists them in the log and prepare.json). Utterance ids
are ``DC_a01``; speaker = ``DC``; session = the speaker (SAVEE has one recording session per
speaker). The 4 speakers are male.

Emotion codes -> class names (in this class order): a anger, d disgust, f fear, h happiness,
n neutral, sa sadness, su surprise. The full corpus has 480 utterances: 120 per speaker, 15 per
emotion except neutral (30).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

from .. import __version__
from ..utils import SerkitError
from . import datadir
from .convert import convert_release

log = logging.getLogger("serkit.data")

CODE_TO_CLASS = {
    "a": "anger",
    "d": "disgust",
    "f": "fear",
    "h": "happiness",
    "n": "neutral",
    "sa": "sadness",
    "su": "surprise",
}
CLASSES = list(CODE_TO_CLASS.values())
SPEAKERS = ("DC", "JE", "JK", "KL")
NESTED_RE = re.compile(r"^(a|d|f|h|n|sa|su)(\d\d)\.wav$")
FLAT_RE = re.compile(r"^(DC|JE|JK|KL)_(a|d|f|h|n|sa|su)(\d\d)\.wav$")
EXPECTED_PER_SPEAKER = 120


def find_wavs(root: Path) -> dict[str, Path]:
    """Map utterance id (``DC_a01``) -> source wav for every SAVEE wav under ``root``."""
    found: dict[str, Path] = {}
    ignored = 0
    for p in sorted(root.rglob("*")):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() != ".wav":
            continue
        m = NESTED_RE.match(p.name)
        if m and p.parent.name in SPEAKERS:
            utt = f"{p.parent.name}_{m.group(1)}{m.group(2)}"
        elif m := FLAT_RE.match(p.name):
            utt = p.stem
        else:
            ignored += 1
            continue
        if utt in found:
            raise SerkitError(
                f"duplicate utterance id {utt}: {found[utt]} and {p}; point --root at one copy of SAVEE"
            )
        found[utt] = p
    if ignored:
        log.info("SAVEE: ignored %d wav files that do not match the SAVEE names", ignored)
    return found


def prepare(root: str | os.PathLike, out: str | os.PathLike, allow_truncated: bool = False) -> Path:
    """Write the SAVEE data directory ``out`` (16 kHz wavs in ``out/wavs``); return ``out``."""
    root, out, converted, truncated, reused = convert_release(
        root,
        out,
        "savee",
        find_wavs,
        "the SAVEE copy (AudioData)",
        "AudioData/DC/a01.wav or DC_a01.wav",
        allow_truncated,
    )
    wavdir = out / "wavs"
    records = []
    for utt, (dst, n) in converted.items():
        spk, code = utt.split("_")
        emo_code = code.rstrip("0123456789")
        records.append(
            datadir.Record(
                utt=utt,
                wav=str(dst),
                spk=spk,
                emo=CODE_TO_CLASS[emo_code],
                emo_raw=emo_code,
                session=spk,
                num_samples=n,
            )
        )
    log.info(
        "SAVEE: %d wavs from %s (%d converted, %d reused from %s)",
        len(records),
        root,
        len(records) - reused,
        reused,
        wavdir,
    )
    dropped = {"truncated source wav (--allow-truncated)": len(truncated)} if truncated else {}
    meta = {
        "corpus": "savee",
        "serkit_version": __version__,
        "root": str(root),
        "classes": CLASSES,
        "label_map": {"name": "savee7", "map": CODE_TO_CLASS},
        "options": {"allow_truncated": allow_truncated},
        "dropped": dropped,
        "extraction": {"reused_wavs": reused},
    }
    if truncated:
        meta["truncated"] = truncated
    datadir.write(out, records, meta, keep=("wavs",), inputs=(root,))
    meta = datadir.load(out).meta
    datadir.log_summary(meta, dropped)
    per_spk = Counter(r.spk for r in records)
    for spk in SPEAKERS:
        if per_spk.get(spk, 0) != EXPECTED_PER_SPEAKER:
            log.warning(
                "SAVEE: speaker %s has %d utterances; the full corpus has %d",
                spk,
                per_spk.get(spk, 0),
                EXPECTED_PER_SPEAKER,
            )
    log.info("SAVEE: wrote %s", out)
    return out
