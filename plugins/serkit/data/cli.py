"""Sub-commands ``prepare``, ``split``, ``check-split`` and ``mini-corpus``.

Only argparse is imported at module level; the work modules are imported when a command runs.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from ..utils import SerkitError

CORPORA = ("iemocap", "meld", "savee", "ravdess")
# Kept in sync with serkit.data.splits.PROTOCOLS by a unit test (importing it here would be cheap too,
# but the list doubles as the --help text).
PROTOCOLS = (
    "iemocap_loso5",
    "iemocap_loso10",
    "meld_official",
    "savee_loso4",
    "savee_cv10",
    "ravdess_actors4",
)


def _sessions(text: str) -> list[int]:
    try:
        out = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sessions {text!r}: expected numbers like 1,2,3") from None
    if not out or any(s < 1 for s in out):
        raise argparse.ArgumentTypeError(f"--sessions {text!r}: expected numbers like 1,2,3")
    return out


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def run_prepare(args: argparse.Namespace) -> int:
    if args.corpus == "iemocap":
        from .prepare_iemocap import prepare

        prepare(
            args.root,
            args.out,
            label_map=args.label_map,
            sessions=args.sessions,
            allow_missing_wav=args.allow_missing_wav,
            allow_truncated=args.allow_truncated,
        )
    elif args.corpus == "meld":
        if args.allow_truncated:
            raise SerkitError(
                "--allow-truncated is for IEMOCAP and SAVEE wavs; MELD lists broken clips in "
                "OUT/skipped.tsv without it"
            )
        from .prepare_meld import prepare

        prepare(args.root, args.out, jobs=args.jobs)
    elif args.corpus == "savee":
        from .prepare_savee import prepare

        prepare(args.root, args.out, allow_truncated=args.allow_truncated)
    elif args.corpus == "ravdess":
        from .prepare_ravdess import prepare

        prepare(args.root, args.out, allow_truncated=args.allow_truncated)
    else:  # argparse's choices catch this first; kept for callers of run_prepare
        raise SerkitError(f"unknown corpus {args.corpus!r}; choose one of {', '.join(CORPORA)}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from .splits import make_splits

    out = args.out or Path(args.data_dir) / args.protocol
    make_splits(
        args.protocol,
        args.data_dir,
        out,
        seed=args.seed,
        valid=args.valid,
        valid_fraction=args.valid_fraction,
    )
    return 0


def run_check_split(args: argparse.Namespace) -> int:
    from .splits import check_split

    check_split(args.dir, data_dir=args.data_dir)
    return 0


def run_mini_corpus(args: argparse.Namespace) -> int:
    try:
        mini = importlib.import_module("serkit.data.mini")
    except ModuleNotFoundError as e:
        if e.name not in ("serkit.data.mini",):
            raise
        raise SerkitError("serkit.data.mini is not installed in this checkout; update serkit") from None
    root = mini.build(args.corpus, Path(args.out), seed=args.seed)
    print(root)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="write the data directory of a corpus (wav.scp, utt2emo, ...)",
        description="Write a validated Kaldi-style data directory (wav.scp, utt2spk, spk2utt, utt2emo, "
        "utt2emo_raw, utt2session, utt2dur, utt2num_samples, text, prepare.json) for a corpus. "
        "The output replaces --out atomically; a failed run leaves an earlier one intact. "
        "--out must be new, empty or serkit's own data directory of this corpus, and outside "
        "--root: anything else is refused before anything is written.",
    )
    p.add_argument("corpus", choices=CORPORA)
    p.add_argument(
        "--root",
        required=True,
        help="corpus release folder (IEMOCAP_full_release, MELD.Raw, SAVEE folder holding AudioData)",
    )
    p.add_argument("--out", required=True, help="data directory to write (e.g. data/iemocap)")
    g = p.add_argument_group("IEMOCAP")
    g.add_argument(
        "--label-map",
        default="iemocap4",
        choices=("iemocap4", "iemocap4_fru", "iemocap6"),
        help="iemocap4 (default): neu/hap(+exc)/ang/sad; iemocap4_fru: + fru; "
        "iemocap6: neu/hap/exc/ang/sad/fru",
    )
    g.add_argument(
        "--sessions",
        type=_sessions,
        default=None,
        help="comma-separated session numbers to use (default: all five, required present)",
    )
    g.add_argument(
        "--allow-missing-wav",
        action="store_true",
        help="drop (and count) labelled utterances whose wav is missing instead of failing",
    )
    g.add_argument(
        "--allow-truncated",
        action="store_true",
        help="(IEMOCAP, SAVEE, RAVDESS) drop wavs shorter than their header promises, listing "
        "them in the log and prepare.json, instead of failing",
    )
    g = p.add_argument_group("MELD")
    g.add_argument("--jobs", type=_positive, default=1, help="parallel clip decoders (default 1)")
    p.set_defaults(func=run_prepare)

    p = sub.add_parser(
        "split",
        help="write the train/valid/test folds of a protocol",
        description="Write DIR/fold<k>/{train,valid,test}.{tsv,emo,json}, dict.emo.txt and fold.json for a "
        "protocol, after a leakage check. Protocols: iemocap_loso5 (test = one session; valid = "
        "stratified 10% of the training sessions, or with --valid speaker one speaker of the "
        "held-out session with the other as test: 10 folds, the same as iemocap_loso10); "
        "iemocap_loso10 (test = one speaker, valid = the other speaker of that session); "
        "meld_official (official train/dev/test; speakers shared); savee_loso4 (test = one "
        "speaker, valid = stratified 10% of the other three); savee_cv10 (SPEAKER-DEPENDENT "
        "stratified 10-fold cross-validation as in the MFSN paper); ravdess_actors4 (test = "
        "4 consecutive actors, 2 male and 2 female: 6 folds on the full release; valid = "
        "stratified 10% of the other actors).",
    )
    p.add_argument("protocol", choices=PROTOCOLS)
    p.add_argument("data_dir", help="data directory written by `serkit prepare`")
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: DATA_DIR/PROTOCOL); must be new, "
        "empty or serkit's own split output, and hold no input",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random validation and cv10 draws (default 0)"
    )
    p.add_argument(
        "--valid",
        default="stratified",
        choices=("stratified", "speaker"),
        help="validation set: stratified sample of training utterances, or (iemocap_loso5) "
        "the other speaker of the held-out session (default stratified)",
    )
    p.add_argument(
        "--valid-fraction", type=float, default=0.1, help="size of a stratified validation set (default 0.1)"
    )
    p.set_defaults(func=run_split)

    p = sub.add_parser(
        "check-split",
        help="check folds for speaker/session/utterance leakage and alignment",
        description="Exit non-zero naming every problem: utterance in two splits, speaker in "
        "train and test (unless the protocol is speaker-dependent by design), "
        "test session in train, misaligned tsv/emo/json, unknown labels. The "
        "protocol's rules come from serkit's protocol registry and speakers and "
        "sessions from the data directory (utt2spk, utt2session), not from the "
        "fold's own json files.",
    )
    p.add_argument("dir", help="a protocol folder (holding fold1/ ...) or one fold folder")
    p.add_argument(
        "--data-dir",
        default=None,
        help="data directory the folds were split from (default: the one fold.json names)",
    )
    p.set_defaults(func=run_check_split)

    p = sub.add_parser(
        "mini-corpus",
        help="build a small synthetic corpus in a release's layout",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("corpus", choices=CORPORA)
    p.add_argument("--out", required=True, help="folder to build the corpus in")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_mini_corpus)
