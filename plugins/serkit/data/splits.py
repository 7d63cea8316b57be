"""Evaluation protocols: train/valid/test folds of a prepared data directory, with a leakage check.

``serkit split PROTOCOL DATA_DIR --out DIR`` writes ``DIR/fold<k>/`` with, per split, the line-aligned
``<split>.tsv``, ``<split>.emo`` and ``<split>.json`` of :mod:`serkit.data.manifest`, plus
``dict.emo.txt`` (the classes, counts from the training split) and ``fold.json``; ``DIR/split.json``
lists the folds. Utterances are in utterance-id order inside each split. Everything is deterministic
given ``--seed`` (default 0). Protocols:

``iemocap_loso5``  leave one session out, 5 folds (fold k tests Session k).
    ``--valid stratified`` (default): validation = a random ``--valid-fraction`` (10 %) of the four
    training sessions' utterances, stratified by speaker and class; test = the whole held-out session.
    ``--valid speaker``: one speaker of the held-out session is validation and the other is test, so
    the fold count doubles to 10 (fold 2s-1 tests the female speaker of Session s, fold 2s the male;
    the same folds as ``iemocap_loso10``). Report the mean over all 10 folds.
``iemocap_loso10`` leave one speaker out, 10 folds in speaker order (Ses01F, Ses01M, ..., Ses05M):
    test = one speaker, valid = the other speaker of the same session, train = the other 4 sessions.
``meld_official`` the official train/dev/test split (one fold; dev is the validation split). MELD's
    characters appear in every split: this protocol is NOT speaker-independent, and fold.json says so.
``savee_loso4``    leave one speaker out, 4 folds (DC, JE, JK, KL): valid = a stratified
    ``--valid-fraction`` (10 %) of the three training speakers' utterances (by speaker and class).
``ravdess_actors4`` 4 consecutive actors held out per fold (actors 1-4, 5-8, ...: 2 male, 2 female;
    6 folds on the full release, fewer on a subset): valid = a stratified ``--valid-fraction`` (10 %) of
    the other actors' utterances.
``savee_cv10``     SPEAKER-DEPENDENT stratified 10-fold cross-validation (the MFSN paper's protocol):
    every speaker is in train and test; test = one tenth of each class; valid = a stratified 10 % of the
    remaining nine tenths. fold.json records ``"speaker_dependent": true``; never report it as
    speaker-independent.

The leakage check (:func:`check_fold`, also ``serkit check-split DIR``) runs on every fold written:
no utterance in two splits; valid disjoint from test; no speaker in both train and test or valid and
test (except in protocols registered as speaker-dependent); for session protocols the test session
absent from train; the tsv/emo/json files aligned and labels in dict.emo.txt. The rules come from the
protocol registry (fold.json only names the protocol) and speakers and sessions from the data
directory's ``utt2spk``/``utt2session``, so an edited fold.json or json ``spk`` field cannot hide a leak.

``--out`` must be new, empty or serkit's own split output (its ``.serkit-output`` marker, or the
``split.json`` + ``fold*/`` layout of earlier versions), and may hold none of the files the split reads
(the data directory's files and wavs): ``--out DATA_DIR`` is refused, ``DATA_DIR/PROTOCOL`` is fine.

Add a protocol with ``@register_protocol(name, corpus, ...)`` on a function
``(data: DataDir, opts: SplitOptions) -> list[Fold]``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..utils import (
    MARKER,
    SerkitError,
    atomic_dir,
    files_under,
    read_marker,
    register_recogniser,
    write_json,
)
from . import datadir
from .manifest import SPLITS, Utterance, read_classes, read_split, write_dict, write_split

log = logging.getLogger("serkit.data")


@dataclass(frozen=True)
class SplitOptions:
    seed: int = 0
    valid: str = "stratified"  # or "speaker" (iemocap_loso5 only)
    valid_fraction: float = 0.1


@dataclass
class Fold:
    train: list[str]
    valid: list[str]
    test: list[str]
    info: dict = field(default_factory=dict)  # e.g. {"test": "Ses01", "valid": "..."}


#: A protocol: the folds of a data directory under the options.
ProtocolFunction = Callable[[datadir.DataDir, SplitOptions], list[Fold]]


@dataclass(frozen=True)
class Protocol:
    name: str
    corpus: str
    make: ProtocolFunction
    held_out: str | None  # "session", "speaker" or None (what test holds out, if anything)
    speaker_dependent: bool  # speakers are shared between train and test by design
    description: str
    valid_modes: tuple[str, ...] = ("stratified",)


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(
    name: str,
    corpus: str,
    *,
    held_out: str | None,
    speaker_dependent: bool = False,
    description: str = "",
    valid_modes: tuple[str, ...] = ("stratified",),
) -> Callable[[ProtocolFunction], ProtocolFunction]:
    """Register a protocol function under ``name`` (the ``serkit split`` argument)."""

    def deco(fn: ProtocolFunction) -> ProtocolFunction:
        if name in PROTOCOLS:
            raise ValueError(f"protocol {name!r} registered twice")
        PROTOCOLS[name] = Protocol(name, corpus, fn, held_out, speaker_dependent, description, valid_modes)
        return fn

    return deco


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise SerkitError(f"unknown protocol {name!r}; choose one of {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


# ---------------------------------------------------------------------------------------------------
# helpers


def _rng(opts: SplitOptions, *key: object) -> random.Random:
    # str seeds hash with SHA-512: the same on every machine and Python run (unlike hash()).
    return random.Random(":".join(map(str, (opts.seed, *key))))


def stratified_sample(
    utts: list[str], data: datadir.DataDir, fraction: float, rng: random.Random
) -> set[str]:
    """A ``fraction`` of ``utts`` drawn within each (speaker, class) group (at least one utterance)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for u in sorted(utts):
        r = data.records[u]
        groups.setdefault((r.spk, r.emo), []).append(u)
    chosen: set[str] = set()
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        chosen.update(members[: int(round(fraction * len(members)))])
    if not chosen and len(utts) > 1 and fraction > 0:
        chosen.add(rng.choice(sorted(utts)))
    return chosen


def _by(data: datadir.DataDir, attr: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for u, r in data.records.items():
        out.setdefault(getattr(r, attr), []).append(u)
    return dict(sorted(out.items()))


def _hold_out(
    data: datadir.DataDir, test: list[str], pool: list[str], opts: SplitOptions, key: str, info: dict
) -> Fold:
    valid = stratified_sample(pool, data, opts.valid_fraction, _rng(opts, key))
    info = {
        **info,
        "valid": f"stratified {opts.valid_fraction:.0%} of the training utterances (by speaker and class)",
    }
    return Fold(train=sorted(set(pool) - valid), valid=sorted(valid), test=sorted(test), info=info)


def _speaker_pairs(data: datadir.DataDir) -> list[Fold]:
    by_session = _by(data, "session")
    by_spk = _by(data, "spk")
    folds = []
    for session, utts in by_session.items():
        spks = sorted({data.records[u].spk for u in utts})
        if len(spks) != 2:
            raise SerkitError(
                f"{data.path}: session {session} has speakers {spks}; speaker-held-out IEMOCAP "
                "folds need exactly two per session (re-run `serkit prepare`)"
            )
        pool = [u for u, r in data.records.items() if r.session != session]
        for test_spk in spks:
            valid_spk = spks[1 - spks.index(test_spk)]
            folds.append(
                Fold(
                    train=sorted(pool),
                    valid=sorted(by_spk[valid_spk]),
                    test=sorted(by_spk[test_spk]),
                    info={"test": test_spk, "valid": f"speaker {valid_spk} (same session)"},
                )
            )
    return folds


# ---------------------------------------------------------------------------------------------------
# protocols


@register_protocol(
    "iemocap_loso5",
    "iemocap",
    held_out="session",
    valid_modes=("stratified", "speaker"),
    description="leave one session out (5 folds; 10 with --valid speaker)",
)
def iemocap_loso5(data: datadir.DataDir, opts: SplitOptions) -> list[Fold]:
    if opts.valid == "speaker":
        return _speaker_pairs(data)
    folds = []
    for session, test in _by(data, "session").items():
        pool = [u for u, r in data.records.items() if r.session != session]
        folds.append(_hold_out(data, test, pool, opts, session, {"test": session}))
    return folds


@register_protocol(
    "iemocap_loso10",
    "iemocap",
    held_out="session",
    description="leave one speaker out (10 folds), valid = the other speaker of the session",
)
def iemocap_loso10(data: datadir.DataDir, opts: SplitOptions) -> list[Fold]:
    return _speaker_pairs(data)


@register_protocol(
    "meld_official",
    "meld",
    held_out=None,
    speaker_dependent=True,
    description="official train/dev/test split (one fold; speakers shared across splits)",
)
def meld_official(data: datadir.DataDir, opts: SplitOptions) -> list[Fold]:
    by_split = _by(data, "split")
    if None in by_split or not {"train", "dev", "test"} <= set(by_split):
        raise SerkitError(
            f"{data.path}: utt2split missing or incomplete "
            f"(have {sorted(map(str, by_split))}); "
            "re-run `serkit prepare meld`"
        )
    return [
        Fold(
            train=by_split["train"],
            valid=by_split["dev"],
            test=by_split["test"],
            info={"test": "official test", "valid": "official dev"},
        )
    ]


@register_protocol(
    "savee_loso4",
    "savee",
    held_out="speaker",
    description="leave one speaker out (4 folds), stratified 10% validation",
)
def savee_loso4(data: datadir.DataDir, opts: SplitOptions) -> list[Fold]:
    folds = []
    for spk, test in _by(data, "spk").items():
        pool = [u for u, r in data.records.items() if r.spk != spk]
        folds.append(_hold_out(data, test, pool, opts, spk, {"test": spk}))
    return folds


@register_protocol(
    "ravdess_actors4",
    "ravdess",
    held_out="speaker",
    description="4 consecutive actors held out per fold (2 male, 2 female; 6 folds on the "
    "full release), stratified 10% validation",
)
def ravdess_actors4(data: datadir.DataDir, opts: SplitOptions) -> list[Fold]:
    groups: dict[int, list[str]] = {}
    for u, r in data.records.items():  # speakers are Actor_01 .. Actor_24
        groups.setdefault((int(r.spk.rsplit("_", 1)[-1]) - 1) // 4, []).append(u)
    folds = []
    for g, test in sorted(groups.items()):
        pool = [u for u, r in data.records.items() if u not in set(test)]
        folds.append(
            _hold_out(data, test, pool, opts, f"actors{g}", {"test": f"actors {4 * g + 1}-{4 * g + 4}"})
        )
    return folds


@register_protocol(
    "savee_cv10",
    "savee",
    held_out=None,
    speaker_dependent=True,
    description="SPEAKER-DEPENDENT stratified 10-fold cross-validation (MFSN paper)",
)
def savee_cv10(data: datadir.DataDir, opts: SplitOptions, k: int = 10) -> list[Fold]:
    assign: dict[str, int] = {}
    offset = 0
    rng = _rng(opts, "cv10")
    for utts in _by(data, "emo").values():
        members = sorted(utts)
        rng.shuffle(members)
        for i, u in enumerate(members):
            assign[u] = (offset + i) % k
        offset = (offset + len(members)) % k  # keeps fold sizes within one of each other
    folds = []
    for f in range(k):
        test = [u for u, a in assign.items() if a == f]
        pool = [u for u, a in assign.items() if a != f]
        folds.append(_hold_out(data, test, pool, opts, f"cv10-{f}", {"test": f"part {f + 1} of {k}"}))
    return folds


# ---------------------------------------------------------------------------------------------------
# writing and checking


def _utterances(data: datadir.DataDir, utts: list[str]) -> list[Utterance]:
    return [
        Utterance(
            utt=u,
            wav=data.records[u].wav,
            num_samples=data.records[u].num_samples,
            emo=data.records[u].emo,
            spk=data.records[u].spk,
        )
        for u in utts
    ]


FOLD_FILES = {f"{s}.{ext}" for s in SPLITS for ext in ("tsv", "emo", "json")} | {"dict.emo.txt", "fold.json"}


def _recognise_split(path: Path) -> list[str]:
    """Unknown files of a split output: everything but split.json and fold<k>/ files, which count as
    serkit's only with a marker or (outputs of earlier versions) a split.json naming a protocol."""
    own = read_marker(path) is not None
    if not own:
        try:
            own = "protocol" in json.loads((path / "split.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            own = False
    unknown = []
    for r in files_under(path):
        parts = r.split("/")
        known = own and (
            r in ("split.json", MARKER)
            or (
                len(parts) == 2
                and parts[0].startswith("fold")
                and parts[0][4:].isdigit()
                and parts[1] in FOLD_FILES
            )
        )
        if not known:
            unknown.append(r)
    return unknown


register_recogniser("split", _recognise_split)


def _check_sizes(protocol: str, data: datadir.DataDir, folds: list[Fold]) -> None:
    """A fold with an empty split means the data cannot support the protocol: say so plainly."""
    for k, fold in enumerate(folds, 1):
        empty = [s for s in SPLITS if not getattr(fold, s)]
        if empty:
            spk = sorted({r.spk for r in data.records.values()})
            sess = sorted({r.session for r in data.records.values()})
            raise SerkitError(
                f"{protocol} fold {k} (test {fold.info.get('test')}): the {' and '.join(empty)} split(s) "
                f"would be empty: {data.path} holds {len(data.records)} utterances of {len(spk)} speaker(s) "
                f"({', '.join(spk[:10])}) in {len(sess)} session(s); this protocol needs more speakers or "
                "sessions than that. Prepare more of the corpus, or choose another protocol"
            )
    if not folds:
        raise SerkitError(f"{protocol}: no folds for {data.path} (no utterances?); re-run `serkit prepare`")


def make_splits(
    protocol: str,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    seed: int = 0,
    valid: str = "stratified",
    valid_fraction: float = 0.1,
) -> list[Path]:
    """Write the folds of ``protocol`` for the data directory ``data_dir`` under ``out``; return them.

    The whole ``out`` is replaced atomically, after every fold passed :func:`check_fold`.
    """
    proto = get_protocol(protocol)
    if valid not in proto.valid_modes:
        raise SerkitError(
            f"--valid {valid} is not available for {protocol} (choose {', '.join(proto.valid_modes)})"
        )
    if not 0 < valid_fraction < 1:
        raise SerkitError(f"--valid-fraction {valid_fraction} must be between 0 and 1")
    data = datadir.load(data_dir)
    if data.corpus != proto.corpus:
        raise SerkitError(
            f"{data.path}: a {data.corpus} data directory; {protocol} is for {proto.corpus} "
            f"(protocols for {data.corpus}: "
            f"{', '.join(n for n, p in PROTOCOLS.items() if p.corpus == data.corpus)})"
        )
    opts = SplitOptions(seed=seed, valid=valid, valid_fraction=valid_fraction)
    folds = proto.make(data, opts)
    _check_sizes(protocol, data, folds)
    root = os.path.commonpath([os.path.dirname(r.wav) for r in data.records.values()])
    out = Path(out).absolute()
    classes = data.classes
    paths = []
    inputs = [data.path / n for n in datadir.DATA_FILES if (data.path / n).is_file()]
    inputs += [r.wav for r in data.records.values()]
    with atomic_dir(out, "split", inputs=inputs) as tmp:
        for k, fold in enumerate(folds, 1):
            fdir = tmp / f"fold{k}"
            fdir.mkdir()
            members = {"train": fold.train, "valid": fold.valid, "test": fold.test}
            for split, utts in members.items():
                write_split(fdir, split, _utterances(data, utts), root)
            write_dict(fdir, classes, Counter(data.records[u].emo for u in fold.train))
            info = {
                "protocol": protocol,
                "fold": k,
                "num_folds": len(folds),
                "seed": seed,
                "corpus": data.corpus,
                "data_dir": str(data.path.absolute()),
                "held_out": proto.held_out,
                "speaker_dependent": proto.speaker_dependent,
                "valid_mode": valid,
                "valid_fraction": valid_fraction if valid == "stratified" else None,
                **fold.info,
                "classes": classes,
                "speakers": {s: sorted({data.records[u].spk for u in us}) for s, us in members.items()},
                "sessions": {s: sorted({data.records[u].session for u in us}) for s, us in members.items()},
                "num_utts": {s: len(us) for s, us in members.items()},
                "counts": {
                    s: {c: sum(1 for u in us if data.records[u].emo == c) for c in classes}
                    for s, us in members.items()
                },
            }
            write_json(fdir / "fold.json", info)
            problems = [p.replace(str(tmp), str(out)) for p in check_fold(fdir, data)]
            if problems:
                raise SerkitError(
                    f"{protocol} fold {k} (to be written to {out / fdir.name}) fails the "
                    "leakage check:\n  " + "\n  ".join(problems)
                )
            paths.append(out / f"fold{k}")
            log.info(
                "%s fold%d: test %s, train/valid/test %d/%d/%d utterances",
                protocol,
                k,
                fold.info.get("test"),
                len(fold.train),
                len(fold.valid),
                len(fold.test),
            )
        write_json(
            tmp / "split.json",
            {
                "protocol": protocol,
                "description": proto.description,
                "folds": [p.name for p in paths],
                "seed": seed,
                "valid_mode": valid,
                "data_dir": str(data.path.absolute()),
                "speaker_dependent": proto.speaker_dependent,
            },
        )
    log.info("%s: wrote %d folds to %s", protocol, len(paths), out)
    return paths


def _load_data_for(fold_dir: Path, info: dict, cache: dict | None) -> tuple[datadir.DataDir | None, str]:
    dd = info.get("data_dir")
    if not dd or not (Path(dd) / "prepare.json").is_file():
        return None, (
            f"{fold_dir}/fold.json: its data directory {dd!r} is not there; speakers and "
            "sessions are checked against the data directory's utt2spk and utt2session: restore "
            "it or pass --data-dir"
        )
    key = os.path.realpath(dd)
    if cache is not None and key in cache:
        return cache[key], ""
    try:
        data = datadir.load(dd)
    except SerkitError as e:
        return None, f"{fold_dir}: cannot load its data directory for the speaker check: {e}"
    if cache is not None:
        cache[key] = data
    return data, ""


def check_fold(
    fold_dir: str | os.PathLike, data: datadir.DataDir | None = None, _cache: dict | None = None
) -> list[str]:
    """Return the leakage and consistency problems of one fold directory (empty list: clean).

    The rules (speakers held out or shared, session held out) come from the protocol registry, looked
    up by fold.json's ``protocol``; speakers and sessions come from ``data`` (the data directory,
    loaded from fold.json's ``data_dir`` when not given), never from the fold's own files.
    """
    fold_dir = Path(fold_dir)
    fj = fold_dir / "fold.json"
    if not fj.is_file():
        return [f"{fj}: not found (not a fold directory written by `serkit split`)"]
    info = json.loads(fj.read_text(encoding="utf-8"))
    proto = PROTOCOLS.get(info.get("protocol"))
    if proto is None:
        return [
            f"{fj}: protocol {info.get('protocol')!r} is not one of serkit's "
            f"({', '.join(sorted(PROTOCOLS))}); re-run `serkit split`"
        ]
    problems: list[str] = []
    splits: dict[str, list[Utterance]] = {}
    for s in SPLITS:
        try:
            splits[s] = read_split(fold_dir, s)
        except SerkitError as e:
            problems.append(str(e))
    if problems:
        return problems
    try:
        classes = set(read_classes(fold_dir))
    except SerkitError as e:
        return [str(e)]
    for s, us in splits.items():
        if not us:
            problems.append(f"{fold_dir}/{s}.tsv: no utterances")
        bad = sorted({u.emo for u in us} - classes)
        if bad:
            problems.append(f"{fold_dir}/{s}.emo: labels {bad} not in dict.emo.txt")
        if info.get("num_utts", {}).get(s, len(us)) != len(us):
            problems.append(
                f"{fold_dir}/fold.json: says {info['num_utts'][s]} {s} utterances, files hold {len(us)}"
            )
    where: dict[str, str] = {}
    for s, us in splits.items():
        for u in us:
            if u.utt in where:
                problems.append(f"{fold_dir}: utterance {u.utt} is in both {where[u.utt]} and {s}")
            where[u.utt] = s
    if bool(info.get("speaker_dependent")) != proto.speaker_dependent:
        problems.append(
            f"{fj}: says speaker_dependent={info.get('speaker_dependent')}, but {proto.name} "
            f"is {'speaker-dependent' if proto.speaker_dependent else 'speaker-independent'}; "
            "re-run `serkit split`"
        )
    if data is None:
        data, why = _load_data_for(fold_dir, info, _cache)
        if data is None:
            return problems + [why]
    if data.corpus != proto.corpus:
        problems.append(
            f"{fold_dir}: {proto.name} is for {proto.corpus}, its data directory {data.path} "
            f"holds {data.corpus}"
        )
    unknown = sorted(u.utt for us in splits.values() for u in us if u.utt not in data.records)
    if unknown:
        problems.append(
            f"{fold_dir}: {len(unknown)} utterance(s) not in the data directory {data.path} "
            f"(e.g. {unknown[:3]}); re-run `serkit split`"
        )
    for s, us in splits.items():
        wrong = [u for u in us if u.utt in data.records and u.spk != data.records[u.utt].spk]
        if wrong:
            problems.append(
                f"{fold_dir}/{s}.json: speaker of {wrong[0].utt} is {wrong[0].spk!r}, utt2spk of "
                f"{data.path} says {data.records[wrong[0].utt].spk!r} ({len(wrong)} such); "
                "re-run `serkit split`"
            )
    spk = {s: {data.records[u.utt].spk for u in us if u.utt in data.records} for s, us in splits.items()}
    for s in SPLITS:
        if sorted(spk[s]) != info.get("speakers", {}).get(s, sorted(spk[s])):
            problems.append(f"{fold_dir}/fold.json: speakers of {s} disagree with {data.path}/utt2spk")
    if not proto.speaker_dependent:
        for other in ("train", "valid"):
            both = sorted(spk[other] & spk["test"])
            if both:
                problems.append(
                    f"{fold_dir}: speaker(s) {both[:5]} in both {other} and test; "
                    f"{proto.name} must hold speakers out"
                )
    if proto.held_out == "session":
        sess = {
            s: {data.records[u.utt].session for u in us if u.utt in data.records} for s, us in splits.items()
        }
        both = sorted(sess["train"] & sess["test"])
        if both:
            problems.append(f"{fold_dir}: test session(s) {both} also in train")
    return problems


def check_split(path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Check every fold under ``path`` (a protocol directory or one fold); raise on any problem.

    ``data_dir`` overrides the data directory that fold.json names (for a moved one).
    """
    path = Path(path)
    data = datadir.load(data_dir) if data_dir is not None else None
    if (path / "fold.json").is_file():
        folds = [path]
    else:
        folds = sorted((p for p in path.glob("fold*") if p.is_dir()), key=lambda p: (len(p.name), p.name))
    if not folds:
        raise SerkitError(f"{path}: no fold directories (fold1/ ...); run `serkit split` first")
    problems = []
    cache: dict = {}
    for f in folds:
        problems += check_fold(f, data, _cache=cache)
    if problems:
        raise SerkitError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    for f in folds:
        info = json.loads((f / "fold.json").read_text(encoding="utf-8"))
        tag = " (speaker-dependent by design)" if PROTOCOLS[info["protocol"]].speaker_dependent else ""
        log.info(
            "%s: %s fold %s clean%s: train/valid/test %s",
            f,
            info.get("protocol"),
            info.get("fold"),
            tag,
            "/".join(str(info.get("num_utts", {}).get(s, "?")) for s in SPLITS),
        )
    return folds
