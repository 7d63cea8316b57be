"""Prepare MELD (``MELD.Raw``) as a serkit data directory, extracting 16 kHz mono wavs from the clips.

Reads the three CSVs (``train/train_sent_emo.csv``, ``dev_sent_emo.csv``, ``test_sent_emo.csv``;
also found directly under the root or under ``<split>/``) with the csv module: quoted utterances with
commas and line breaks are fine; a file that is not UTF-8 is read as cp1252 with a warning.
Clips ``dia{D}_utt{U}.mp4`` are looked up in ``train/train_splits/``, ``dev_splits_complete/`` and
``output_repeated_splits_test/`` (test names may carry a ``final_videos_test`` prefix; the plain name
wins when both exist).

Each clip's audio stream 0 is decoded with PyAV, its channels averaged to mono and resampled to
16 kHz, and written once to ``OUT/wavs/<utt>.wav`` (each wav atomically). ``OUT/wavs/sources.json``
records, per wav, the clip it came from (resolved path, size, mtime_ns, SHA-1) and the conversion
settings: a re-run reuses a wav only when all of these still match, so an interrupted extraction
resumes where it stopped while a clip that is now missing, corrupted, replaced or under another
``--root`` is decoded again (or skipped) rather than served from the old audio. Missing, broken (unreadable)
and silent (peak below -80 dBFS) clips are listed in ``OUT/skipped.tsv`` (``utt file reason``) and
counted in the log and prepare.json; they are not in the data directory.

Utterance ids: ``train_dia0_utt0``, ``dev_dia12_utt3``, ``test_dia5_utt1``. Speaker = the Speaker
column with white space replaced by ``_`` (``Mrs. Geller`` -> ``Mrs._Geller``). Session = the
dialogue (``train_dia0``). ``utt2split`` holds the official split. Classes (7, in this order):
neutral, joy, surprise, anger, sadness, disgust, fear.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .. import __version__
from ..utils import SerkitError, claim_output_dir, write_json
from . import datadir

log = logging.getLogger("serkit.data")

CLASSES = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
# split -> (CSV locations, clip-folder locations), relative to the root, first found wins
LAYOUT = {
    "train": (("train/train_sent_emo.csv", "train_sent_emo.csv"), ("train/train_splits", "train_splits")),
    "dev": (("dev_sent_emo.csv", "dev/dev_sent_emo.csv"), ("dev_splits_complete", "dev/dev_splits_complete")),
    "test": (
        ("test_sent_emo.csv", "test/test_sent_emo.csv"),
        ("output_repeated_splits_test", "test/output_repeated_splits_test"),
    ),
}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
EXPECTED = {"train": 9989, "dev": 1109, "test": 2610}
CLIP_RE = re.compile(r"^(final_videos_test_?)?dia(\d+)_utt(\d+)\.mp4$")


def read_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """Rows of a MELD CSV as ``(line number, row)``; UTF-8 first, cp1252 (with a warning) otherwise."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        log.warning("%s: not UTF-8 (byte %d); reading it as cp1252", path, e.start)
        text = raw.decode("cp1252", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [f.strip() for f in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in fields]
    if missing:
        raise SerkitError(
            f"{path}:1: missing column(s) {', '.join(missing)}; the header must contain "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    reader.fieldnames = fields
    physical = text.splitlines()
    rows = []
    start = 2
    for row in reader:
        end = reader.line_num
        _check_row(path, start, end, row, physical, len(fields))
        rows.append((start, row))
        start = end + 1
    return rows


# Every MELD row starts with its "Sr No.": a physical line like this inside a field is a swallowed row.
ROW_START_RE = re.compile(r"^\d+,")


def _check_row(path: Path, start: int, end: int, row: dict, physical: list[str], n_fields: int) -> None:
    """Refuse a row that swallowed the next one(s) (a missing closing quote) or lost its fields."""
    swallowed = [k for k in range(start + 1, end + 1) if ROW_START_RE.match(physical[k - 1])]
    if swallowed:
        k = swallowed[0]
        raise SerkitError(
            f"{path}:{start}: this row runs on to line {end} and swallows {len(swallowed)} "
            f"row(s) (line {k}: {physical[k - 1][:60]!r}); a closing quote is probably missing "
            f"in line {start}: fix the quoting or use the release's CSV"
        )
    if None in row or any(v is None for v in row.values()):
        got = n_fields - sum(v is None for v in row.values()) + len(row.get(None) or [])
        raise SerkitError(
            f"{path}:{start}: {got} fields, the header has {n_fields} (a stray or missing "
            "quote?); fix the row or use the release's CSV"
        )
    text = row.get("Utterance") or ""
    if "\x00" in text or len(text) > 2000:  # far above any line of TV dialogue (our limit)
        raise SerkitError(
            f"{path}:{start}: implausible Utterance field ({len(text)} characters: "
            f"{text[:60]!r}); fix the row or use the release's CSV"
        )


def _first(root: Path, candidates: tuple[str, ...], kind: str, is_dir: bool) -> Path:
    for c in candidates:
        p = root / c
        if p.is_dir() if is_dir else p.is_file():
            return p
    raise SerkitError(
        f"{root}: no {kind} (looked for {', '.join(candidates)}); point --root at MELD.Raw "
        "with the split archives extracted"
    )


def index_clips(folder: Path) -> dict[tuple[int, int], Path]:
    clips: dict[tuple[int, int], Path] = {}
    for p in sorted(folder.iterdir()):
        m = CLIP_RE.match(p.name)
        if not m or not p.is_file():
            continue
        key = (int(m.group(2)), int(m.group(3)))
        if key in clips and m.group(1):  # keep the plain name over the prefixed duplicate
            continue
        clips[key] = p
    return clips


def _extract(job: tuple[str, str | None, str, dict | None]) -> tuple[str, int, str, dict | None]:
    """Decode one clip into ``dst``, or reuse ``dst`` when its record proves it came from this very
    clip; return (utt, samples, reason-if-skipped, record of dst)."""
    from .audio import conversion_record, decode_av, is_silent, reusable, write_wav

    utt, src, dst, record = job
    n = reusable(record, src, dst)
    if n:
        return utt, n, "", record
    if src is None:
        return utt, 0, "missing clip", None
    try:
        x = decode_av(src)
    except Exception as e:  # truncated mp4s raise on open or decode (av.error.InvalidDataError, ...)
        return utt, 0, f"unreadable: {type(e).__name__}: {' '.join(str(e).split())[:200]}", None
    if is_silent(x):
        return utt, 0, "silent" if x.size else "no audio samples", None
    n = write_wav(dst, x)
    return utt, n, "", conversion_record(src, dst, n)


def prepare(root: str | os.PathLike, out: str | os.PathLike, jobs: int = 1) -> Path:
    """Write the MELD data directory ``out`` (wavs in ``out/wavs``) from ``root``; return ``out``."""
    root = Path(root).absolute()
    out = Path(out).absolute()
    if not root.is_dir():
        raise SerkitError(f"{root}: not a directory; pass --root MELD.Raw")
    claim_output_dir(out, datadir.output_kind("meld"), inputs=[root])
    rows = []  # (utt, split, lineno, csv path, row, clip)
    for split, (csvs, folders) in LAYOUT.items():
        path = _first(root, csvs, f"{split} CSV", is_dir=False)
        folder = _first(root, folders, f"{split} clip folder", is_dir=True)
        clips = index_clips(folder)
        seen: dict[str, int] = {}
        for lineno, row in read_csv(path):
            try:
                dia, utt_id = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            except (TypeError, ValueError):
                raise SerkitError(
                    f"{path}:{lineno}: Dialogue_ID/Utterance_ID {row.get('Dialogue_ID')!r}/"
                    f"{row.get('Utterance_ID')!r} are not integers; fix the row"
                ) from None
            emo = (row["Emotion"] or "").strip().lower()
            if emo not in CLASSES:
                raise SerkitError(
                    f"{path}:{lineno}: unknown label {row['Emotion']!r}; MELD labels are "
                    f"{', '.join(CLASSES)}. Fix the row or use the release's CSV"
                )
            spk = "_".join((row["Speaker"] or "").split())
            if not spk:
                raise SerkitError(f"{path}:{lineno}: empty Speaker; fix the row")
            utt = f"{split}_dia{dia}_utt{utt_id}"
            if utt in seen:
                raise SerkitError(
                    f"{path}:{lineno}: duplicate utterance dia{dia}_utt{utt_id} (first at line "
                    f"{seen[utt]}); remove one of the rows"
                )
            seen[utt] = lineno
            rows.append((utt, split, emo, spk, row["Utterance"] or "", clips.get((dia, utt_id))))
        log.info("MELD %s: %d rows in %s, %d clips in %s", split, len(seen), path, len(clips), folder)

    wavdir = datadir.open_wavdir(out, "meld")
    old_records = datadir.load_sources(wavdir)
    jobs_list = [
        (utt, str(clip) if clip else None, str(wavdir / f"{utt}.wav"), old_records.get(utt))
        for utt, _, _, _, _, clip in rows
    ]
    log.info(
        "MELD: extracting %d clips to %s (%d recorded from an earlier run, %d jobs)",
        len(jobs_list),
        wavdir,
        sum(1 for j in jobs_list if j[3]),
        jobs,
    )
    results: dict[str, tuple[int, str]] = {}
    new_records: dict[str, dict] = {}
    reused = 0

    def collect(i: int, utt: str, n: int, reason: str, record: dict | None) -> None:
        nonlocal reused
        results[utt] = (n, reason)
        if record is not None:
            reused += record is old_records.get(utt) or record == old_records.get(utt)
            new_records[utt] = record
        if i % 1000 == 0:
            log.info("MELD: %d/%d clips", i, len(jobs_list))
            if any(old_records.get(u) != r for u, r in new_records.items()):  # resumable
                write_json(wavdir / datadir.SOURCES, {**old_records, **new_records})

    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for i, res in enumerate(pool.map(_extract, jobs_list, chunksize=16), 1):
                collect(i, *res)
    else:
        for i, job in enumerate(jobs_list, 1):
            collect(i, *_extract(job))
    if new_records != old_records:
        write_json(wavdir / datadir.SOURCES, new_records)

    records, skipped = [], []
    skip_counts: Counter = Counter()
    for utt, split, emo, spk, text, clip in rows:
        n, reason = results[utt]
        if reason:
            skipped.append((utt, str(clip) if clip else "-", reason))
            skip_counts[reason.split(":")[0]] += 1
            log.warning("MELD: skipping %s (%s): %s", utt, clip or "no clip", reason)
            continue
        records.append(
            datadir.Record(
                utt=utt,
                wav=str(wavdir / f"{utt}.wav"),
                spk=spk,
                emo=emo,
                emo_raw=emo,
                session=utt.rsplit("_", 1)[0],
                num_samples=n,
                text=text,
                split=split,
            )
        )
    skipped_tsv = "utt\tfile\treason\n" + "".join(f"{u}\t{f}\t{r}\n" for u, f, r in skipped)
    meta = {
        "corpus": "meld",
        "serkit_version": __version__,
        "root": str(root),
        "classes": CLASSES,
        "label_map": {"name": "meld7", "map": {c: c for c in CLASSES}},
        "options": {"jobs": jobs},
        "dropped": {f"skipped clip: {k}": v for k, v in sorted(skip_counts.items())},
        "extraction": {"reused_wavs": reused, "skipped": len(skipped), "skipped_list": "skipped.tsv"},
    }
    datadir.write(
        out, records, meta, keep=("wavs",), extra_files={"skipped.tsv": skipped_tsv}, inputs=(root,)
    )
    meta = datadir.load(out).meta
    datadir.log_summary(meta, meta["dropped"])
    for split, expect in EXPECTED.items():
        n = meta["counts"].get("split", {}).get(split, 0) + sum(
            1 for r in rows if r[1] == split and results[r[0]][1]
        )
        if n != expect:
            log.warning(
                "MELD %s: %d rows; the release has %d: is this a partial or modified copy?", split, n, expect
            )
    log.info("MELD: wrote %s (%d skipped, listed in %s)", out, len(skipped), out / "skipped.tsv")
    return out
