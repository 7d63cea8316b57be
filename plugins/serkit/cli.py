"""The ``serkit`` command: one entry point whose sub-commands live beside the code they run.

Each module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)``, adding its sub-commands
with ``parser.set_defaults(func=callable(args) -> int | None)``. Registration must stay cheap (no
torch, fairseq or SpeechBrain import at module level) so that ``serkit --help`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .utils import SerkitError, setup_logging

COMMAND_MODULES = (
    "serkit.data.cli",         # prepare, split, check-split, mini-corpus
    "serkit.upstream.cli",     # make-upstream, dump-features
    "serkit.cluster.cli",      # kmeans fit|apply
    "serkit.scoring",          # score, results
    "serkit.speechbrain.cli",  # train, predict
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serkit",
        description="Speech emotion recognition on self-supervised speech models (fairseq + SpeechBrain).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists but something it needs is missing
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except SerkitError as e:
        logging.getLogger("serkit").error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
