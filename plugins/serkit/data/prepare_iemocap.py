"""Prepare IEMOCAP (``IEMOCAP_full_release``) as a serkit data directory.

Reads, per session ``Session{N}``:

- ``dialog/EmoEvaluation/<dialog>.txt`` (top-level files only; the ``Categorical/``,
  ``Self-evaluation/`` and ``Attribute/`` sub-folders, macOS ``._*`` files, ``.pk`` files and editor
  backups are ignored). Only turn lines ``[start - end]<TAB>utt<TAB>emo<TAB>[v, a, d]`` count; the
  evaluator lines between turns (``C-E1:``, ``A-E1:``, ...) and the ``%`` header are skipped.
- ``sentences/wav/<dialog>/<utt>.wav`` (16 kHz mono, checked).
- ``dialog/transcriptions/<dialog>.txt`` (``<utt> [start-end]: words``) -> ``text``.

Speaker = session + the gender letter after the LAST underscore of the utterance id
(``Ses01F_impro01_M012`` -> ``Ses01M``): the letter in the dialog prefix names the dialog's
marker-wearer, not the speaker of the turn. Session = ``Ses01`` ... ``Ses05``.

Label maps (``--label-map``; the raw label is always kept in ``utt2emo_raw``):

- ``iemocap4`` (default, the benchmark; 5531 utterances): neu, hap (hap + exc), ang, sad.
- ``iemocap4_fru`` (7380): neu, hap (hap + exc), ang, sad, fru.
- ``iemocap6`` (7380): neu, hap, exc, ang, sad, fru (hap and exc kept apart).

Utterances whose raw label is outside the map are dropped and counted per label. A wav without an
evaluation line is dropped and counted, with a WARNING per EmoEvaluation file naming how many of its
dialog's wavs it does not label (a file cut short loses its last turns that way). An EmoEvaluation
file that ends mid-turn (a turn line without any categorical ``C-`` evaluation after it, or a last
evaluation line cut short) is an error naming the file. An evaluation line whose wav is missing is an
error naming the file and line, because a partial copy of the corpus silently changes every reported
number; ``--allow-missing-wav`` drops such utterances instead (counted in the log and prepare.json).
A wav shorter than its header promises (a truncated copy) is an error naming it;
``--allow-truncated`` drops such utterances instead and lists them in the log and prepare.json.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

from .. import __version__
from ..utils import SerkitError, claim_output_dir
from . import datadir
from .audio import TruncatedWav, check_wav

log = logging.getLogger("serkit.data")

RAW_LABELS = ("neu", "hap", "sad", "ang", "sur", "fea", "dis", "fru", "exc", "oth", "xxx")
LABEL_MAPS: dict[str, dict[str, str]] = {
    "iemocap4": {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"},
    "iemocap4_fru": {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad", "fru": "fru"},
    "iemocap6": {"neu": "neu", "hap": "hap", "exc": "exc", "ang": "ang", "sad": "sad", "fru": "fru"},
}
# Class order = label index order in dict.emo.txt.
CLASSES = {
    "iemocap4": ["neu", "hap", "ang", "sad"],
    "iemocap4_fru": ["neu", "hap", "ang", "sad", "fru"],
    "iemocap6": ["neu", "hap", "exc", "ang", "sad", "fru"],
}
ALL_SESSIONS = (1, 2, 3, 4, 5)
# Counts of the full release with the iemocap4 map (FACTS: per session and in all).
EXPECTED_IEMOCAP4 = {"Ses01": 1085, "Ses02": 1023, "Ses03": 1151, "Ses04": 1031, "Ses05": 1241}
EXPECTED_TOTAL = {"iemocap4": 5531, "iemocap4_fru": 7380, "iemocap6": 7380}

TURN_RE = re.compile(r"^\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)\t\[([^\]]*)\]\s*$")
UTT_RE = re.compile(r"^Ses(\d\d)[FM]_.+_([FM])\d+$")
# A turn line that lost its leading time stamp still names an utterance after a tab.
TURN_LIKE_RE = re.compile(r"^[^:]*\tSes\d\d[FM]_\S+_[FM]\d+\t")
EVALUATOR_RE = re.compile(r"^[CA]-[A-Z]+\d*:")
TRANS_RE = re.compile(r"^(\S+) \[[^\]]*\]:\s?(.*)$")


def speaker_of(utt: str) -> str:
    """``Ses01F_impro01_M012`` -> ``Ses01M`` (gender letter after the last underscore)."""
    m = UTT_RE.match(utt)
    if not m:
        raise ValueError(f"not an IEMOCAP utterance id: {utt!r}")
    return f"Ses{m.group(1)}{m.group(2)}"


def _is_stray(p: Path) -> bool:
    name = p.name
    return name.startswith(".") or name.endswith("~") or name.startswith("#")


def parse_emo_evaluation(path: Path) -> list[tuple[int, str, str]]:
    """Return ``(line number, utterance id, raw label)`` for each turn line of one EmoEvaluation file."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    turns = []
    last_turn, evaluated = 0, True  # line of the latest turn; whether a C- line followed it (every turn
    # of the release carries its evaluators' categorical lines, so a last turn without one was cut off)
    lines = text.splitlines()
    for lineno, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("%"):
            continue
        if s.startswith("C-"):
            evaluated = True
        if not line.startswith("["):
            if TURN_LIKE_RE.search(line):
                raise SerkitError(
                    f"{path}:{lineno}: malformed turn line {s!r}; expected "
                    "'[start - end]<TAB>utterance<TAB>label<TAB>[v, a, d]'"
                )
            continue  # evaluator lines (C-E1:, A-E1:, C-F1: ...) between turns
        m = TURN_RE.match(line.rstrip("\r\n"))
        if not m:
            raise SerkitError(
                f"{path}:{lineno}: malformed turn line {line.strip()!r}; expected "
                "'[start - end]<TAB>utterance<TAB>label<TAB>[v, a, d]'. Fix the line or "
                "replace the file with the release's copy"
            )
        start, end, utt, emo = float(m.group(1)), float(m.group(2)), m.group(3), m.group(4)
        if not UTT_RE.match(utt):
            raise SerkitError(
                f"{path}:{lineno}: {utt!r} is not an IEMOCAP utterance id (e.g. Ses01F_impro01_F000)"
            )
        if emo not in RAW_LABELS:
            raise SerkitError(
                f"{path}:{lineno}: unknown label {emo!r} for {utt}; IEMOCAP labels are "
                f"{', '.join(RAW_LABELS)}. Fix the line or replace the file"
            )
        if end < start:
            raise SerkitError(f"{path}:{lineno}: end time {end} before start time {start}")
        last_turn, evaluated = lineno, False
        turns.append((lineno, utt, emo))
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    cut_line = EVALUATOR_RE.match(last) and not last.endswith(")") and not text.endswith("\n")
    if turns and (not evaluated or cut_line):
        raise SerkitError(
            f"{path}: ends mid-turn (the turn at line {last_turn} "
            f"{'has no categorical evaluation' if not evaluated else 'is cut short'}); the "
            "file is truncated: replace it with the release's copy"
        )
    if not turns:
        raise SerkitError(
            f"{path}: no turn lines ('[start - end]<TAB>utterance<TAB>label<TAB>[v, a, d]'); "
            "the file is empty or malformed: replace it with the release's copy"
        )
    return turns


def parse_transcriptions(path: Path) -> dict[str, str]:
    out = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    for line in text.splitlines():
        m = TRANS_RE.match(line.strip())
        if m and UTT_RE.match(m.group(1)):
            out[m.group(1)] = m.group(2).strip()
    return out


def find_sessions(root: Path, sessions: list[int] | None) -> list[int]:
    found = sorted(
        int(p.name[len("Session") :])
        for p in root.glob("Session*")
        if p.is_dir() and p.name[len("Session") :].isdigit()
    )
    wanted = list(sessions) if sessions else list(ALL_SESSIONS)
    missing = [s for s in wanted if s not in found]
    if missing:
        hint = f"found {', '.join(f'Session{s}' for s in found)}" if found else "found no Session folder"
        raise SerkitError(
            f"{root}: missing {', '.join(f'Session{s}' for s in missing)} ({hint}); point --root at "
            "IEMOCAP_full_release, or restrict with --sessions "
            f"{','.join(map(str, found)) or '1,2,...'} (numbers then differ from the benchmark)"
        )
    return wanted


def prepare(
    root: str | os.PathLike,
    out: str | os.PathLike,
    label_map: str = "iemocap4",
    sessions: list[int] | None = None,
    allow_missing_wav: bool = False,
    allow_truncated: bool = False,
) -> Path:
    """Write the IEMOCAP data directory ``out`` from the release at ``root``; return ``out``."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise SerkitError(f"{root}: not a directory; pass --root IEMOCAP_full_release")
    claim_output_dir(out, datadir.output_kind("iemocap"), inputs=[root])
    if label_map not in LABEL_MAPS:
        raise SerkitError(f"unknown --label-map {label_map!r}; choose one of {', '.join(LABEL_MAPS)}")
    mapping = LABEL_MAPS[label_map]
    wanted = find_sessions(root, sessions)
    log.info("IEMOCAP: reading %s (sessions %s, label map %s) -> %s", root, wanted, label_map, out)

    records: list[datadir.Record] = []
    dropped: Counter = Counter()
    truncated: list[str] = []
    for s in wanted:
        sdir = root / f"Session{s}"
        session = f"Ses{s:02d}"
        evdir = sdir / "dialog" / "EmoEvaluation"
        evfiles = (
            sorted(p for p in evdir.glob("*.txt") if p.is_file() and not _is_stray(p))
            if evdir.is_dir()
            else []
        )
        if not evfiles:
            raise SerkitError(f"{evdir}: no EmoEvaluation/<dialog>.txt files; is Session{s} complete?")
        wavs: dict[str, Path] = {}
        for p in sorted((sdir / "sentences" / "wav").rglob("*.wav")):
            if _is_stray(p) or not p.is_file():
                continue
            if p.stem in wavs:
                raise SerkitError(
                    f"duplicate utterance id {p.stem!r}: {wavs[p.stem]} and {p}; remove the extra copy"
                )
            wavs[p.stem] = p
        labels: dict[str, tuple[str, Path, int]] = {}
        for ev in evfiles:
            for lineno, utt, emo in parse_emo_evaluation(ev):
                if utt in labels:
                    _, p0, l0 = labels[utt]
                    raise SerkitError(
                        f"{ev}:{lineno}: duplicate utterance id {utt} (first at {p0}:{l0}); "
                        "remove one of the lines"
                    )
                if not utt.startswith(session):
                    raise SerkitError(f"{ev}:{lineno}: {utt} does not belong to Session{s}")
                labels[utt] = (emo, ev, lineno)
        texts: dict[str, str] = {}
        trdir = sdir / "dialog" / "transcriptions"
        for tr in sorted(trdir.glob("*.txt")) if trdir.is_dir() else []:
            if not _is_stray(tr):
                texts.update(parse_transcriptions(tr))
        unlabelled = [u for u in wavs if u not in labels]
        dropped["wav without an EmoEvaluation line"] += len(unlabelled)
        by_dialog: dict[str, list[str]] = {}
        for u in sorted(unlabelled):
            by_dialog.setdefault(wavs[u].parent.name, []).append(u)
        for dialog, utts in by_dialog.items():
            log.warning(
                "IEMOCAP: %s has no line for %d wav(s) of %s (%s); dropped. Is the file cut "
                "short? Compare it with the release's copy",
                evdir / f"{dialog}.txt",
                len(utts),
                wavs[utts[0]].parent,
                ", ".join(utts[:5]) + (" ..." if len(utts) > 5 else ""),
            )
        for utt, (emo, ev, lineno) in labels.items():
            wav = wavs.get(utt)
            if wav is None:
                if not allow_missing_wav:
                    raise SerkitError(
                        f"{ev}:{lineno}: {utt} is labelled but {sdir}/sentences/wav/{utt.rsplit('_', 1)[0]}/"
                        f"{utt}.wav is missing; restore it from the release, or pass --allow-missing-wav "
                        "to drop such utterances (numbers then differ from the benchmark)"
                    )
                dropped["labelled but wav missing (--allow-missing-wav)"] += 1
                continue
            if emo not in mapping:
                dropped[f"label {emo} not in {label_map}"] += 1
                continue
            try:
                n = check_wav(wav)
            except TruncatedWav as e:
                if not allow_truncated:
                    raise
                log.warning("IEMOCAP: dropping %s (--allow-truncated): %s", utt, e)
                dropped["truncated wav (--allow-truncated)"] += 1
                truncated.append(str(wav))
                continue
            records.append(
                datadir.Record(
                    utt=utt,
                    wav=str(wav),
                    spk=speaker_of(utt),
                    emo=mapping[emo],
                    emo_raw=emo,
                    session=session,
                    num_samples=n,
                    text=texts.get(utt, ""),
                )
            )
    missing_text = sum(1 for r in records if not r.text)
    if missing_text:
        log.warning("IEMOCAP: %d utterances have no transcription line (empty in `text`)", missing_text)
    meta = {
        "corpus": "iemocap",
        "serkit_version": __version__,
        "root": str(root),
        "classes": CLASSES[label_map],
        "label_map": {"name": label_map, "map": mapping},
        "options": {
            "sessions": wanted,
            "allow_missing_wav": allow_missing_wav,
            "allow_truncated": allow_truncated,
        },
        "dropped": dict(sorted(dropped.items())),
    }
    if truncated:
        meta["truncated"] = truncated
    out = datadir.write(out, records, meta, inputs=(root,))
    meta = datadir.load(out).meta
    datadir.log_summary(meta, dropped)
    _warn_unexpected_counts(meta, label_map, wanted)
    log.info("IEMOCAP: wrote %s", out)
    return out


def _warn_unexpected_counts(meta: dict, label_map: str, sessions: list[int]) -> None:
    total = meta["num_utts"]
    if sorted(sessions) == list(ALL_SESSIONS) and total != EXPECTED_TOTAL[label_map]:
        log.warning(
            "IEMOCAP: %d utterances with %s; the full release has %d: is this a partial or modified copy?",
            total,
            label_map,
            EXPECTED_TOTAL[label_map],
        )
    if label_map == "iemocap4":
        for session, n in meta["counts"]["session"].items():
            expect = EXPECTED_IEMOCAP4.get(session)
            if expect is not None and n != expect:
                log.warning(
                    "IEMOCAP: %s has %d utterances with iemocap4; the full release has %d", session, n, expect
                )
