"""The Kaldi-style data directory that ``serkit prepare`` writes and everything downstream reads.

Files (one ``utt value`` line per utterance, sorted by utterance id, all covering the same set)::

    wav.scp            utt -> absolute path of a 16 kHz mono wav (no pipes)
    utt2spk            utt -> speaker
    utt2emo            utt -> class used for training (one of prepare.json's "classes")
    utt2emo_raw        utt -> the corpus' own label
    utt2session        utt -> session (IEMOCAP ``Ses01``; the speaker for SAVEE; the dialogue for MELD)
    utt2dur            utt -> duration in seconds
    utt2num_samples    utt -> number of samples at 16 kHz (exact; what fairseq's tsv needs)
    utt2split          utt -> train|dev|test (only where the corpus has an official split: MELD)
    text               utt -> transcription (only where the corpus has one)
    spk2utt            speaker -> its utterances (sorted)
    prepare.json       corpus, classes, label map, counts per class/session/speaker, what was dropped

:func:`write` writes a directory atomically and validates it before it replaces an earlier one;
:func:`load` reads and validates one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..utils import (
    MARKER,
    SerkitError,
    atomic_dir,
    files_under,
    read_map,
    read_marker,
    register_recogniser,
    unknown_entries,
    write_json,
    write_map,
    write_marker,
)

log = logging.getLogger("serkit.data")

FORMAT_VERSION = 1
SAMPLE_RATE = 16000
REQUIRED = ("wav.scp", "utt2spk", "utt2emo", "utt2emo_raw", "utt2session", "utt2dur", "utt2num_samples")
OPTIONAL = ("utt2split", "text")
SPLIT_NAMES = ("train", "dev", "test")
DATA_FILES = REQUIRED + OPTIONAL + ("spk2utt", "prepare.json", "skipped.tsv")
CORPORA = ("iemocap", "meld", "savee", "ravdess")
#: Names of the wavs that ``prepare`` converts into ``OUT/wavs`` (corpora shipped in another format).
WAV_NAMES = {
    "meld": re.compile(r"^(train|dev|test)_dia\d+_utt\d+\.wav$"),
    "savee": re.compile(r"^(DC|JE|JK|KL)_(a|d|f|h|n|sa|su)\d\d\.wav$"),
    "ravdess": re.compile(r"^03-01-0[1-8]-0[12]-0[12]-0[12]-\d\d\.wav$"),
}
#: Per-clip record of where each converted wav came from (see :mod:`serkit.data.audio`).
SOURCES = "sources.json"


def output_kind(corpus: str) -> str:
    """The marker kind of a data directory of ``corpus`` (``prepare-iemocap``, ...)."""
    return f"prepare-{corpus}"


def wavs_kind(corpus: str) -> str:
    """The marker kind of the ``OUT/wavs`` folder that ``prepare`` fills with converted audio."""
    return f"wavs-{corpus}"


def load_sources(wavdir: Path) -> dict:
    """The per-wav source records of a converted-wav folder (empty when absent or unreadable)."""
    try:
        records = json.loads((wavdir / SOURCES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def open_wavdir(out: Path, corpus: str) -> Path:
    """``out/wavs``, created with serkit's marker when new."""
    wavdir = out / "wavs"
    wavdir.mkdir(parents=True, exist_ok=True)
    if read_marker(wavdir) is None:
        write_marker(wavdir, wavs_kind(corpus))
    return wavdir


def _recognise_wavs(path: Path, corpus: str, prefix: str = "wavs/", trusted: bool = False) -> list[str]:
    """Unknown files of a converted-wav folder: anything but its marker, records and wavs by name.

    Its marker says serkit made the folder; ``trusted`` (a data directory written before markers
    existed) accepts an unmarked one.
    """
    marker = read_marker(path)
    mine = marker["kind"] == wavs_kind(corpus) if marker is not None else trusted
    if not mine or corpus not in WAV_NAMES:
        return files_under(path, prefix)
    ok = WAV_NAMES[corpus]
    return [
        f"{prefix}{n}"
        for n in files_under(path, "")
        if not (n in (MARKER, SOURCES) or ("/" not in n and ok.match(n)))
    ]


def _recogniser(corpus: str) -> Callable[[Path], list[str]]:
    def recognise(path: Path) -> list[str]:
        """Unknown files of a data directory: serkit's data files count as known only with a marker or,
        for directories written before markers existed, a prepare.json naming this corpus."""
        from . import splits  # noqa: F401  (registers the recogniser of nested split outputs)

        own = read_marker(path) is not None
        if not own and (path / "prepare.json").is_file():
            try:
                meta = json.loads((path / "prepare.json").read_text(encoding="utf-8"))
                own = meta.get("corpus") == corpus and "serkit_version" in meta
            except (ValueError, UnicodeDecodeError):
                own = False
        unknown = []
        for entry in sorted(path.iterdir()):
            name = entry.name
            if entry.is_dir() and not entry.is_symlink():
                if name == "wavs":
                    unknown += _recognise_wavs(entry, corpus, trusted=own)
                elif (
                    (m := read_marker(entry)) is not None
                    and m["kind"] == "split"
                    or (own and (entry / "split.json").is_file())
                ):
                    # folds split from this directory: stale once it is replaced, serkit's own
                    unknown += [f"{name}/{r}" for r in unknown_entries(entry, "split")]
                else:
                    unknown += files_under(entry, f"{name}/")
            elif not (own and name in DATA_FILES) and name != MARKER:
                unknown.append(name)
        return unknown

    return recognise


for _c in CORPORA:
    register_recogniser(output_kind(_c), _recogniser(_c))
    register_recogniser(wavs_kind(_c), lambda p, c=_c: _recognise_wavs(p, c, prefix=""))


@dataclass(frozen=True)
class Record:
    """One utterance of a data directory."""

    utt: str
    wav: str
    spk: str
    emo: str
    emo_raw: str
    session: str
    num_samples: int
    text: str | None = None
    split: str | None = None

    @property
    def duration(self) -> float:
        return self.num_samples / SAMPLE_RATE


@dataclass
class DataDir:
    path: Path
    meta: dict
    records: dict[str, Record]  # sorted by utterance id

    @property
    def corpus(self) -> str:
        return self.meta["corpus"]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def count_by(records: Iterable[Record], key: str) -> dict[str, int]:
    return dict(sorted(Counter(getattr(r, key) for r in records).items()))


def _check_utt_id(utt: str, where: str) -> None:
    if not utt or any(c.isspace() for c in utt):
        raise SerkitError(f"{where}: utterance id {utt!r} is empty or contains white space")


def write(
    out: str | os.PathLike,
    records: list[Record],
    meta: dict,
    keep: tuple[str, ...] = (),
    extra_files: dict[str, str] | None = None,
    inputs: tuple = (),
) -> Path:
    """Write a data directory at ``out`` atomically and return its path.

    ``meta`` must hold at least ``corpus`` and ``classes``; counts and the format version are added.
    ``keep`` names sub-directories of an existing ``out`` (e.g. extracted ``wavs``) that are moved
    into the new directory instead of being discarded; wav paths in ``records`` must already point
    at ``out/<sub-directory>/...``. ``extra_files`` maps file names to text written alongside.
    Validation runs before the new directory replaces the old one, so a failure leaves ``out`` as it was.
    ``out`` must be new, empty or serkit's own data directory of this corpus, and not be equal to,
    inside or a parent of any of ``inputs`` (:func:`serkit.utils.atomic_dir`).
    """
    out = Path(out).absolute()
    seen: dict[str, Record] = {}
    for r in records:
        _check_utt_id(r.utt, f"{meta.get('corpus', '?')} utterance")
        if r.utt in seen:
            raise SerkitError(
                f"duplicate utterance id {r.utt!r}: {seen[r.utt].wav} and {r.wav}; "
                "keep one copy of the corpus under --root"
            )
        seen[r.utt] = r
    recs = [seen[u] for u in sorted(seen)]
    if not recs:
        raise SerkitError(f"{out}: no utterances left to write; check --root and the options")
    meta = dict(meta)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta["num_utts"] = len(recs)
    meta["hours"] = round(sum(r.duration for r in recs) / 3600, 3)
    counts = {
        "class": count_by(recs, "emo"),
        "raw_label": count_by(recs, "emo_raw"),
        "session": count_by(recs, "session"),
        "speaker": count_by(recs, "spk"),
    }
    if any(r.split for r in recs):
        counts["split"] = count_by(recs, "split")
        counts["split_class"] = {
            s: count_by([r for r in recs if r.split == s], "emo")
            for s in SPLIT_NAMES
            if any(r.split == s for r in recs)
        }
    meta["counts"] = counts

    with atomic_dir(out, output_kind(meta["corpus"]), inputs=inputs) as tmp:
        write_map(tmp / "wav.scp", ((r.utt, r.wav) for r in recs))
        write_map(tmp / "utt2spk", ((r.utt, r.spk) for r in recs))
        write_map(tmp / "utt2emo", ((r.utt, r.emo) for r in recs))
        write_map(tmp / "utt2emo_raw", ((r.utt, r.emo_raw) for r in recs))
        write_map(tmp / "utt2session", ((r.utt, r.session) for r in recs))
        write_map(tmp / "utt2dur", ((r.utt, f"{r.duration:.4f}") for r in recs))
        write_map(tmp / "utt2num_samples", ((r.utt, r.num_samples) for r in recs))
        if any(r.split for r in recs):
            write_map(tmp / "utt2split", ((r.utt, r.split or "") for r in recs))
        if any(r.text is not None for r in recs):
            write_map(tmp / "text", ((r.utt, " ".join((r.text or "").split())) for r in recs))
        spk2utt: dict[str, list[str]] = {}
        for r in recs:
            spk2utt.setdefault(r.spk, []).append(r.utt)
        write_map(tmp / "spk2utt", ((s, " ".join(us)) for s, us in sorted(spk2utt.items())))
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(content, encoding="utf-8")
        write_json(tmp / "prepare.json", meta)
        validate(tmp)
        # Last step inside the block: move kept sub-directories (wavs extracted earlier) across.
        for sub in keep:
            if (out / sub).is_dir():
                shutil.move(str(out / sub), str(tmp / sub))
    return out


def validate(path: str | os.PathLike, check_paths: bool = True) -> DataDir:
    """Check a data directory and return it loaded; raise :class:`SerkitError` naming the problem.

    Checks: every per-utterance file covers the same utterance set, sorted; wav paths are absolute
    and exist; labels are in prepare.json's classes; durations and sample counts are positive;
    spk2utt agrees with utt2spk; utt2split values are train/dev/test.
    """
    path = Path(path)
    meta_path = path / "prepare.json"
    if not meta_path.is_file():
        raise SerkitError(f"{meta_path}: not found; (re)run `serkit prepare` to create {path}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    maps = {}
    for name in REQUIRED + OPTIONAL:
        if name in OPTIONAL and not (path / name).is_file():
            continue
        m = read_map(path / name)  # raises for a missing file or a duplicate key
        keys = list(m)
        if keys != sorted(keys):
            bad = next(i for i in range(1, len(keys)) if keys[i] < keys[i - 1])
            raise SerkitError(
                f"{path / name}:{bad + 1}: not sorted by utterance id ({keys[bad]!r} after "
                f"{keys[bad - 1]!r}); re-run `serkit prepare`"
            )
        maps[name] = m
    ref = maps["wav.scp"]
    for name, m in maps.items():
        if m.keys() != ref.keys():
            only = sorted(set(m) ^ set(ref))[:3]
            raise SerkitError(
                f"{path / name}: covers {len(m)} utterances, wav.scp {len(ref)} "
                f"(e.g. {only} differ); re-run `serkit prepare`"
            )
    classes = set(meta.get("classes", []))
    for lineno, wav in enumerate(ref.values(), 1):
        if not os.path.isabs(wav) or "|" in wav:
            raise SerkitError(f"{path / 'wav.scp'}:{lineno}: {wav!r} is not an absolute path")
        if check_paths and not os.path.isfile(wav):
            raise SerkitError(
                f"{path / 'wav.scp'}:{lineno}: {wav} does not exist; was the corpus moved? "
                "re-run `serkit prepare`"
            )
    for lineno, (utt, emo) in enumerate(maps["utt2emo"].items(), 1):
        if emo not in classes:
            raise SerkitError(
                f"{path / 'utt2emo'}:{lineno}: label {emo!r} of {utt} is not one of "
                f"{sorted(classes)} (prepare.json)"
            )
    for name, cast in (("utt2dur", float), ("utt2num_samples", int)):
        for lineno, (utt, v) in enumerate(maps[name].items(), 1):
            try:
                ok = cast(v) > 0
            except ValueError:
                ok = False
            if not ok:
                raise SerkitError(f"{path / name}:{lineno}: {utt} has {v!r}; must be a positive number")
    if "utt2split" in maps:
        for lineno, (utt, s) in enumerate(maps["utt2split"].items(), 1):
            if s not in SPLIT_NAMES:
                raise SerkitError(
                    f"{path / 'utt2split'}:{lineno}: {utt} has split {s!r}, expected one of {SPLIT_NAMES}"
                )
    spk2utt = read_map(path / "spk2utt")
    expect: dict[str, list[str]] = {}
    for utt, spk in maps["utt2spk"].items():
        expect.setdefault(spk, []).append(utt)
    if {s: v.split() for s, v in spk2utt.items()} != expect:
        raise SerkitError(f"{path / 'spk2utt'}: disagrees with utt2spk; re-run `serkit prepare`")
    records = {
        utt: Record(
            utt=utt,
            wav=wav,
            spk=maps["utt2spk"][utt],
            emo=maps["utt2emo"][utt],
            emo_raw=maps["utt2emo_raw"][utt],
            session=maps["utt2session"][utt],
            num_samples=int(maps["utt2num_samples"][utt]),
            text=maps["text"][utt] if "text" in maps else None,
            split=maps["utt2split"][utt] if "utt2split" in maps else None,
        )
        for utt, wav in ref.items()
    }
    return DataDir(path=path, meta=meta, records=records)


def load(path: str | os.PathLike) -> DataDir:
    """Read and validate a data directory written by ``serkit prepare``."""
    path = Path(path)
    if not path.is_dir():
        raise SerkitError(f"{path}: not a directory; run `serkit prepare CORPUS --root ... --out {path}`")
    return validate(path)


def log_summary(meta: dict, dropped: dict[str, int] | None = None) -> None:
    """Log counts per class, session and speaker, and what was dropped and why."""
    c = meta["counts"]
    log.info(
        "%s: %d utterances (%.2f h) in %d sessions, %d speakers",
        meta["corpus"],
        meta["num_utts"],
        meta["hours"],
        len(c["session"]),
        len(c["speaker"]),
    )
    log.info("per class: %s", ", ".join(f"{k} {v}" for k, v in c["class"].items()))
    if len(c["session"]) <= 20:
        log.info("per session: %s", ", ".join(f"{k} {v}" for k, v in c["session"].items()))
    if len(c["speaker"]) <= 20:
        log.info("per speaker: %s", ", ".join(f"{k} {v}" for k, v in c["speaker"].items()))
    if "split" in c:
        log.info("per split: %s", ", ".join(f"{k} {v}" for k, v in c["split"].items()))
    for reason, n in (dropped or {}).items():
        if n:
            log.info("dropped %d: %s", n, reason)
