"""The ``serkit`` command: one entry point whose sub-commands live beside the code they run.

Each module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)``, adding its sub-commands
with ``parser.set_defaults(func=callable(args) -> int | None)``. Registration must stay cheap (no
torch, fairseq or SpeechBrain import at module level) so that ``serkit --help`` answers at once.

A command whose optional dependency is missing stops with one line naming the ``serkit[X]`` extra
that installs it (exit status 2): :func:`needed_modules` says what each command needs, checked
before the command's code runs, and a ``ModuleNotFoundError`` of a module an extra installs is
reported the same way.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .extras import EXTRA_OF, MissingExtra, install_hint, require
from .utils import SerkitError, setup_logging

COMMAND_MODULES = (
    "serkit.data.cli",  # prepare, split, check-split, mini-corpus
    "serkit.upstream.cli",  # make-upstream, dump-features
    "serkit.cluster.cli",  # kmeans fit|apply
    "serkit.scoring",  # score, results
    "serkit.speechbrain.cli",  # train, predict
    "serkit.recipe_cli",  # recipe run-json|km-label|cpt-batch|... (the recipe template's helpers)
)

_SPEECHBRAIN = [("speechbrain", "speechbrain"), ("hyperpyyaml", "speechbrain")]


def needed_modules(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(module, extra) pairs the parsed command needs beyond serkit's own requirements."""
    command = args.command
    if command in ("train", "predict", "export-upstream"):
        return _SPEECHBRAIN
    if command == "make-upstream":
        return [("fairseq", "fairseq")]
    if command == "dump-features":
        upstream = str(getattr(args, "upstream", "") or "")
        if upstream == "mfcc":
            return []
        return [("transformers", "hf")] if os.path.isdir(upstream) else [("fairseq", "fairseq")]
    if command == "kmeans" and getattr(args, "kmeans_command", None) == "fit":
        return [("faiss", "faiss")] if getattr(args, "backend", "faiss") == "faiss" else []
    return []


def _describe(parser: argparse.ArgumentParser) -> None:
    """A sub-command's ``--help`` opens with its one-line help when it was given no description."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None and helps.get(name):
                    sub.description = helps[name][0].upper() + helps[name][1:] + "."
                _describe(sub)


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
    register(sub)
    _describe(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    what = "serkit " + " ".join(filter(None, (args.command, getattr(args, "kmeans_command", None))))
    try:
        for module, extra in needed_modules(args):
            require(module, extra, what)
        rc = args.func(args)
    except SerkitError as e:
        logging.getLogger("serkit").error("%s", e)
        return 2
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRA_OF:
            raise
        error = MissingExtra(f"{what} needs {top}, which is not installed; {install_hint(top)}")
        logging.getLogger("serkit").error("%s", error)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `serkit list | head`: the reader left; Python's own exit would flush again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(rc or 0)


# ---------------------------------------------------------------------------------------------------
# Commands about serkit itself: its shipped configs, the fairseq user dir, what is registered.


def run_config(args: argparse.Namespace) -> int:
    from .resources import all_configs, find_config
    from .utils import atomic_file

    if not args.name:
        for key, path in all_configs().items():
            print(f"{key}\t{path}")
        return 0
    path = find_config(args.name)
    text = path.read_text(encoding="utf-8")
    if not args.out:
        print(text, end="")
        return 0
    if os.path.lexists(args.out):  # never replaces a file serkit did not write
        raise SerkitError(f"{args.out}: exists; choose another --out, or move it away first")
    with atomic_file(args.out, encoding="utf-8") as f:
        f.write(text)
    print(os.path.abspath(args.out))
    return 0


def run_config_dir(args: argparse.Namespace) -> int:
    from .resources import config_dir

    print(config_dir(args.kind))
    return 0


def run_user_dir(args: argparse.Namespace) -> int:
    from .resources import user_dir

    print(user_dir())
    return 0


def fairseq_components() -> dict[str, list[str]]:
    """{kind: sorted serkit_* names} registered with fairseq by importing serkit.fairseq_ext."""
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    import serkit.fairseq_ext  # noqa: F401  (registers)

    return {
        kind: sorted(n for n in registry if n.startswith("serkit_"))
        for kind, registry in (
            ("task", TASK_REGISTRY),
            ("model", MODEL_REGISTRY),
            ("criterion", CRITERION_REGISTRY),
        )
    }


def run_list(args: argparse.Namespace) -> int:
    from .data.splits import PROTOCOLS
    from .extras import is_installed
    from .nn import HEADS
    from .nn.pooling import POOLINGS

    print("heads (SERHead name: in a SpeechBrain config, serkit.nn.build_head):")
    for name in sorted(HEADS):
        print(f"  {name}")
    print("poolings (pooling: in a config):")
    for name in sorted(POOLINGS):
        print(f"  {name}")
    print("protocols (serkit split):")
    for name in sorted(PROTOCOLS):
        print(f"  {name}\t{PROTOCOLS[name].description}".rstrip())
    print("fairseq components (common.user_dir=$(serkit user-dir)):")
    if not is_installed("fairseq"):
        print(f"  (fairseq is not installed; {install_hint('fairseq')})")
        return 0
    for kind, names in fairseq_components().items():
        for name in names:
            print(f"  {kind} {name}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print a config shipped with serkit, or copy it with --out",
        description="Print a config installed with serkit: one the corpora share (NAME, "
        "e.g. shiftser, bas, flea, mfsn, the mfsn_mini overlay), a recipe's own (NAME or "
        "RECIPE/NAME) or fairseq's (fairseq/NAME); without NAME, list them all with their "
        "installed paths. `serkit train NAME` takes the same names.",
    )
    p.add_argument(
        "name", nargs="?", help="config name, e.g. shiftser, flea, fairseq/ser_finetune, IEMOCAP/mfsn_text"
    )
    p.add_argument("--out", help="write the config to this new file instead of printing it")
    p.set_defaults(func=run_config)

    p = sub.add_parser(
        "config-dir",
        help="print the installed directory of a set of configs",
        description="Print the absolute directory for fairseq-hydra-train --config-dir "
        "(fairseq) or of a recipe's configs (IEMOCAP, MELD, SAVEE).",
    )
    p.add_argument("kind", help="fairseq, or a recipe name")
    p.set_defaults(func=run_config_dir)

    p = sub.add_parser(
        "user-dir",
        help="print the path for fairseq's common.user_dir",
        description="Print the absolute path of serkit's fairseq plugin, for "
        "common.user_dir=$(serkit user-dir) or --user-dir.",
    )
    p.set_defaults(func=run_user_dir)

    p = sub.add_parser(
        "list",
        help="list registered heads, poolings, protocols and fairseq components",
        description="List every registered head, pooling, split protocol and serkit_* "
        "fairseq task, model and criterion.",
    )
    p.set_defaults(func=run_list)


if __name__ == "__main__":
    sys.exit(main())
