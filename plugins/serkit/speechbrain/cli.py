"""``serkit train`` and ``serkit predict`` (registered by serkit.cli; nothing heavy is imported here)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from .predict import add_arguments as add_predict_arguments
    from .train import add_arguments as add_train_arguments

    p = subparsers.add_parser(
        "train",
        allow_abbrev=False,
        help="train a head on cached features or finetune an upstream (SpeechBrain, HyperPyYAML)",
        description="Train one fold. featex: --feats DIR (frozen upstream, weighted layer sum); finetune: "
        "--upstream CKPT alone. Further --key value pairs override the yaml or set SpeechBrain "
        "run options. Multi-GPU/CPU: torchrun --nproc_per_node N -m serkit.speechbrain.train ... "
        "A killed run started again with the same command resumes from its last checkpoint and "
        "ends as the uninterrupted run would have (on CPU, bit for bit).",
    )
    add_train_arguments(p)
    p.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="--key value pairs: yaml overrides (--number_of_epochs 5) and SpeechBrain run "
        "options (--device cuda:0)",
    )
    p.set_defaults(func=_run_train)

    from .predict import TRUST

    q = subparsers.add_parser(
        "predict",
        help="classify audio files with a trained fold (one JSON line per file)",
        description="Load a trained fold (hparams, best-on-validation checkpoint, upstream) and print "
        '{"file", "label", "probs"} per audio file; folders are searched for audio files.',
        epilog=TRUST,
    )
    add_predict_arguments(q)
    q.set_defaults(func=_run_predict)

    from .export import add_arguments as add_export_arguments

    e = subparsers.add_parser(
        "export-upstream",
        help="write a finetuned fold's upstream as a fairseq checkpoint",
        description="Put the finetuned upstream weights of a fold (serkit train --upstream) into a copy "
        "of its original fairseq checkpoint, for dump-features, load_upstream or init_from.",
    )
    add_export_arguments(e)
    e.set_defaults(func=_run_export)


def _run_train(args: argparse.Namespace) -> int:
    from .train import run

    return run(args)


def _run_predict(args: argparse.Namespace) -> int:
    from .predict import run

    return run(args)


def _run_export(args: argparse.Namespace) -> int:
    from .export import run

    return run(args)
