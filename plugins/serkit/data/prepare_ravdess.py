"""Prepare RAVDESS (the Ryerson Audio-Visual Database of Emotional Speech and Song) as a data directory.

The audio-only speech release (``Audio_Speech_Actors_01-24.zip``) unpacks to ``Actor_01/`` ..
``Actor_24/``, each holding ``MM-VV-EE-II-SS-RR-AA.wav``: modality (``03`` audio-only), vocal channel
(``01`` speech, ``02`` song), emotion, intensity (``01`` normal, ``02`` strong; neutral has normal
only), statement (``01`` "Kids are talking by the door", ``02`` "Dogs are sitting by the door"),
repetition (``01``, ``02``) and actor (``01``-``24``: odd male, even female). ``--root`` is the folder
holding the ``Actor_XX`` folders; wavs of other modalities or of song, and other files, are ignored
(counted in the log). A file's actor field must match its folder.

The 48 kHz originals are averaged to mono and resampled to 16 kHz once, into ``OUT/wavs/<utt>.wav``
(``OUT/wavs/sources.json`` records where each came from, so a re-run converts only what changed).
Utterance ids are the file stems; speaker = session = ``Actor_XX``.

Emotion codes -> class names (in this class order): 01 neutral, 02 calm, 03 happy, 04 sad, 05 angry,
06 fearful, 07 disgust, 08 surprised. The full speech release has 1440 wavs: 60 per actor.
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
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
CLASSES = list(CODE_TO_CLASS.values())
NAME_RE = re.compile(r"^(\d\d)-(\d\d)-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)\.wav$")
ACTOR_RE = re.compile(r"^Actor_(\d\d)$")
EXPECTED_PER_ACTOR = 60


def gender(actor: int) -> str:
    """RAVDESS's actors: odd numbers are male, even female.

    >>> gender(1), gender(24)
    ('M', 'F')
    """
    return "M" if actor % 2 else "F"


def find_wavs(root: Path) -> dict[str, Path]:
    """Map utterance id (the file stem) -> source wav for every audio-only speech wav under ``root``."""
    found: dict[str, Path] = {}
    ignored = Counter()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and ACTOR_RE.match(p.name)):
        actor = ACTOR_RE.match(folder.name).group(1)
        for p in sorted(folder.iterdir()):
            m = NAME_RE.match(p.name)
            if p.name.startswith(".") or not p.is_file() or not m:
                ignored["not a RAVDESS wav name"] += 1
                continue
            if (m.group(1), m.group(2)) != ("03", "01"):
                ignored["not audio-only speech (modality 03, vocal channel 01)"] += 1
                continue
            if m.group(7) != actor:
                raise SerkitError(
                    f"{p}: actor {m.group(7)} in the name, {folder.name} as the folder; "
                    "move it to its actor's folder or remove it"
                )
            if m.group(3) == "01" and m.group(4) == "02":
                raise SerkitError(
                    f"{p}: neutral (01) with strong intensity (02), which RAVDESS does not "
                    "record; the file is misnamed"
                )
            found[p.stem] = p
    for why, n in sorted(ignored.items()):
        log.info("RAVDESS: ignored %d files (%s)", n, why)
    return found


def prepare(root: str | os.PathLike, out: str | os.PathLike, allow_truncated: bool = False) -> Path:
    """Write the RAVDESS data directory ``out`` (16 kHz wavs in ``out/wavs``); return ``out``."""
    root, out, converted, truncated, reused = convert_release(
        root,
        out,
        "ravdess",
        find_wavs,
        "the folder holding Actor_01 .. Actor_24",
        "Actor_01/03-01-01-01-01-01-01.wav",
        allow_truncated,
    )
    wavdir = out / "wavs"
    records = []
    for utt, (dst, n) in converted.items():
        code, actor = utt.split("-")[2], utt.split("-")[6]
        spk = f"Actor_{actor}"
        records.append(
            datadir.Record(
                utt=utt,
                wav=str(dst),
                spk=spk,
                emo=CODE_TO_CLASS[code],
                emo_raw=code,
                session=spk,
                num_samples=n,
            )
        )
    log.info(
        "RAVDESS: %d wavs from %s (%d converted, %d reused from %s)",
        len(records),
        root,
        len(records) - reused,
        reused,
        wavdir,
    )
    dropped = {"truncated source wav (--allow-truncated)": len(truncated)} if truncated else {}
    meta = {
        "corpus": "ravdess",
        "serkit_version": __version__,
        "root": str(root),
        "classes": CLASSES,
        "label_map": {"name": "ravdess8", "map": CODE_TO_CLASS},
        "options": {"allow_truncated": allow_truncated},
        "dropped": dropped,
        "extraction": {"reused_wavs": reused},
        "genders": {f"Actor_{a:02d}": gender(a) for a in sorted({int(r.spk[-2:]) for r in records})},
        **({"truncated": truncated} if truncated else {}),
    }
    per_spk = Counter(r.spk for r in records)
    datadir.write(out, records, meta, keep=("wavs",), inputs=(root,))
    datadir.log_summary(datadir.load(out).meta, dropped)
    for spk, n in sorted(per_spk.items()):
        if n != EXPECTED_PER_ACTOR:
            log.warning(
                "RAVDESS: %s has %d utterances; the speech release has %d", spk, n, EXPECTED_PER_ACTOR
            )
    log.info("RAVDESS: wrote %s", out)
    return out
