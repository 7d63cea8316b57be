"""Sub-command ``serkit recipe``: the small computations the recipe template (local/ser.sh) needs.

They live here rather than in bash heredocs so that they are tested Python, take paths as arguments
(never inside source text) and write their files atomically:

- ``run-json FILE KEY=VALUE...``: a run's description for ``serkit score``, written atomically.
- ``km-label --transductive B KM_JSON...``: which splits' frames the folds' k-means saw, and how many.
- ``cpt-batch --config YAML --update-freq auto|N``: the continued-pretraining batch of one update.
- ``check-labels --labels DIR --fold DIR``: k-means labels row-aligned with a fold's manifests.
- ``folds SPLIT_DIR SPEC``: the fold numbers of a split (``all`` or a comma list, checked).
- ``route-overrides --option OPT --overrides S NAME=CONF[,CONF]...``: each ``--key value`` of S to the
  runs whose configs have the key.
- ``json-value FILE KEY``, ``num-layers CKPT``, ``hydra-value VALUE``, ``channel-mask-width FEATS``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from .utils import SerkitError, atomic_file


def write_run_json(path: str | Path, items: list[str]) -> dict[str, str]:
    """Write ``{key: value}`` from ``key=value`` items to ``path`` atomically; return it.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> write_run_json(os.path.join(d, "r", "run.json"), ["method=FLEA (mean)", "k=a=b"])
    {'method': 'FLEA (mean)', 'k': 'a=b'}
    """
    out: dict[str, str] = {}
    for kv in items:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise SerkitError(f"run-json: {kv!r} is not KEY=VALUE")
        out[key] = value
    with atomic_file(path) as f:
        json.dump(out, f, indent=2)
    return out


def km_label(transductive: bool, metas: list[dict]) -> str:
    """The k-means part of FLEA's upstream label: the splits fitted on, mean frames per fold.

    >>> km_label(False, [{"fit_splits": ["train"], "fit_frames_per_split": {"train": 10}},
    ...                  {"fit_splits": ["train"], "fit_frames_per_split": {"train": 13}}])
    'k-means fitted on train frames (per fold: train 12)'
    >>> km_label(True, [])
    'k-means transductive, fitted on train+valid+test frames'
    """
    if metas:
        splits = metas[0].get("fit_splits", metas[0].get("fit", {}).get("splits"))
    else:
        splits = ["train", "valid", "test"] if transductive else ["train"]
    counts = (
        ", ".join(
            f"{s} {sum(m.get('fit_frames_per_split', {}).get(s, 0) for m in metas) / len(metas):.0f}"
            for s in splits
        )
        if metas
        else ""
    )
    what = "transductive, " if transductive else ""
    return f"k-means {what}fitted on {'+'.join(splits)} frames" + (f" (per fold: {counts})" if metas else "")


def cpt_batch(max_tokens: int, gpus: int, update_freq: int) -> str:
    """What one continued-pretraining update holds (fairseq's max_tokens is per GPU, 16 kHz audio).

    >>> cpt_batch(1400000, 4, 1)
    '350 s of audio per update = 87.5 s x 4 GPU(s) x update_freq 1'
    """
    return (
        f"{max_tokens * gpus * update_freq / 16000:g} s of audio per update = {max_tokens / 16000:g} s x "
        f"{gpus} GPU(s) x update_freq {update_freq}"
    )


def check_labels(labels: Path, fold: Path, option: str = "--tapt-labels") -> None:
    """Each of ``labels/{train,valid}.km`` has one line per utterance of ``fold/<split>.tsv``."""
    for split in ("train", "valid"):
        km, tsv = labels / f"{split}.km", fold / f"{split}.tsv"
        if not km.is_file():
            raise SerkitError(
                f"{option}: {km} missing (expected DIR/{fold.name}/{split}.km, as stage 2 writes)"
            )
        n_km = _lines(km)
        n_utt = _lines(tsv) - 1  # the tsv's first line is the audio root
        if n_km != n_utt:
            raise SerkitError(
                f"{option}: {km} has {n_km} lines, {tsv} {n_utt} utterances; labels must be "
                f"row-aligned with {fold.name.replace('fold', 'fold ')}'s manifests"
            )


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def fold_numbers(split_dir: Path, spec: str) -> list[int]:
    """The folds to run: every fold ``serkit split`` wrote for ``all``, else the listed ones (checked)."""
    meta = split_dir / "split.json"
    if not meta.is_file():
        raise SerkitError(f"{meta}: missing (run stage 0 to write the folds)")
    try:
        names = json.loads(meta.read_text())["folds"]
        written = sorted(int(re.fullmatch(r"fold(\d+)", f).group(1)) for f in names)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SerkitError(f"{meta}: unreadable (re-run stage 0)") from None
    if spec == "all":
        return written
    wanted = [int(k) for k in spec.split(",")]
    for k in wanted:
        if k not in written:
            raise SerkitError(
                f"--folds {spec}: {split_dir} has folds {' '.join(map(str, written))}, no fold {k}"
            )
    return wanted


def hydra_value(value: str) -> str:
    """VALUE as a Hydra override value that parses back to exactly VALUE (quoted, quotes escaped).

    >>> print(hydra_value("/a b/it's"))
    '/a b/it\\'s'
    """
    if "${" in value:
        raise SerkitError(
            f"'{value}': a path holding '${{' cannot be passed to fairseq (Hydra/OmegaConf read "
            "it as an interpolation); rename it"
        )
    value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
    return "'" + value.replace("'", "\\'") + "'"


def channel_mask_width(dim: int, of: int = 768, width: int = 64) -> int:
    """ShiftSER's SpecAugment channel mask (64 of 768 channels) scaled to ``dim`` channels, at least 1.

    >>> channel_mask_width(64), channel_mask_width(1024), channel_mask_width(8)
    (5, 85, 1)
    """
    return max(1, dim * width // of)


def _run(args: argparse.Namespace) -> int:
    what = args.recipe_command
    if what == "run-json":
        write_run_json(args.file, args.items)
    elif what == "km-label":
        metas = [json.loads(Path(p).read_text()) for p in args.km_json if Path(p).is_file()]
        print(km_label(args.transductive == "true", metas))
    elif what == "cpt-batch":
        import yaml

        tokens = yaml.safe_load(Path(args.config).read_text())["dataset"]["max_tokens"]
        import torch

        gpus = max(1, torch.cuda.device_count())
        freq = math.ceil(4 / gpus) if args.update_freq == "auto" else int(args.update_freq)
        print(f"{freq}\t{cpt_batch(tokens, gpus, freq)}")
    elif what == "check-labels":
        check_labels(Path(args.labels), Path(args.fold), args.option)
    elif what == "folds":
        print(" ".join(map(str, fold_numbers(Path(args.split_dir), args.spec))))
    elif what == "json-value":
        try:
            print(json.loads(Path(args.file).read_text())[args.key])
        except (OSError, ValueError, KeyError) as e:
            raise SerkitError(f"{args.file}: cannot read key {args.key!r} ({e})") from None
    elif what == "num-layers":
        import contextlib

        from .upstream import load_upstream

        try:
            with contextlib.redirect_stdout(sys.stderr):  # a loader's chatter must not read as the answer
                n = load_upstream(args.checkpoint).num_layers
            print(n)
        except Exception as e:  # the loader's own message, one line
            raise SerkitError(
                f"--upstream {args.checkpoint}: not an upstream checkpoint serkit can load: "
                f"{str(e).splitlines()[-1] if str(e) else type(e).__name__}"
            ) from None
    elif what == "route-overrides":
        runs = {}
        for item in args.runs:
            run, sep, confs = item.partition("=")
            if not sep or not run:
                raise SerkitError(f"route-overrides: {item!r} is not RUN=CONF[,CONF]")
            runs[run] = [c for c in confs.split(",") if c]
        for run, text in route_overrides(args.option, args.overrides, runs, args.default).items():
            print(f"{run}\t{text}")
    elif what == "hydra-value":
        print(hydra_value(args.value))
    elif what == "channel-mask-width":
        dim = json.loads((Path(args.feats) / "meta.json").read_text())["dim"]
        print(channel_mask_width(int(dim)))
    return 0


def split_overrides(text: str) -> list[tuple[str, list[str]]]:
    """``--key value ...`` (split on whitespace, as the scripts pass it on) as [(key, [values])].

    >>> split_overrides("--batch_size 16 --arch msa_ffn,msa_ffn --flag --lr -1e-3")
    [('batch_size', ['16']), ('arch', ['msa_ffn,msa_ffn']), ('flag', []), ('lr', ['-1e-3'])]
    """
    out: list[tuple[str, list[str]]] = []
    for token in text.split():
        if re.match(r"--[A-Za-z]", token):
            out.append((token[2:], []))
        elif out:
            out[-1][1].append(token)
        else:
            raise SerkitError(f"{token!r} is not a --key: overrides are '--key value ...'")
    return out


def _train_and_run_options() -> set[str]:
    """Options every `serkit train` takes whatever its config: its own and SpeechBrain's run options."""
    import dataclasses

    from speechbrain.core import RunOptions

    from .speechbrain.train import build_parser

    own = {a.dest for a in build_parser()._actions}
    return own | {f.name for f in dataclasses.fields(RunOptions)}


def route_overrides(
    option: str, overrides: str, runs: dict[str, list[str]], default: bool = False
) -> dict[str, str]:
    """{run: the part of ``overrides`` that run's configs take}: a ``--key`` goes to each run whose
    every config has the key (a run trained by two configs, BAS's search and retrain, gets it only
    if both have it), or to every run if it is a `serkit train` or SpeechBrain run option.

    A key that goes to no run is a user's mistake (it would do nothing, or fail one run after
    others finished): SerkitError naming ``option``; with ``default`` (the recipe's own default, not
    the user's) it is dropped instead.
    """
    from .speechbrain.train import _peek_yaml

    keys = {path: set(_peek_yaml(path)) for paths in runs.values() for path in paths}
    routed: dict[str, list[str]] = {run: [] for run in runs}
    everywhere = None
    for key, values in split_overrides(overrides):
        to = [run for run, paths in runs.items() if paths and all(key in keys[p] for p in paths)]
        if not to:
            everywhere = _train_and_run_options() if everywhere is None else everywhere
            if key in everywhere:
                to = list(runs)
        if not to and not default:
            have = ", ".join(sorted({Path(p).name for paths in runs.values() for p in paths})) or "none"
            raise SerkitError(
                f'{option} "{overrides}": --{key} is a key of none of the configs it goes to ({have}; '
                f"runs: {', '.join(runs) or 'none'}); check the spelling, or pass it with the "
                "option of the run whose config has it (e.g. --search-overrides, --mfsn-overrides)"
            )
        for run in to:
            routed[run] += [f"--{key}", *values]
    return {run: " ".join(tokens) for run, tokens in routed.items()}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipe", help="helpers of the recipe template (run.json, labels, folds, batches)")
    rs = p.add_subparsers(dest="recipe_command", metavar="WHAT", required=True)
    q = rs.add_parser("run-json", help="write a run's run.json (KEY=VALUE items) atomically")
    q.add_argument("file")
    q.add_argument("items", nargs="*")
    q = rs.add_parser("km-label", help="the k-means part of FLEA's upstream label, from the folds' km.json")
    q.add_argument("--transductive", choices=("true", "false"), required=True)
    q.add_argument("km_json", nargs="*")
    q = rs.add_parser("cpt-batch", help="print 'UPDATE_FREQ<TAB>what one CPT update holds'")
    q.add_argument("--config", required=True, help="fairseq CPT yaml (dataset.max_tokens)")
    q.add_argument("--update-freq", default="auto", help="auto (ceil(4 / GPUs)) or N")
    q = rs.add_parser("check-labels", help="k-means labels row-aligned with a fold's train/valid manifests")
    q.add_argument("--labels", required=True)
    q.add_argument("--fold", required=True)
    q.add_argument("--option", default="--tapt-labels", help="the option the labels came from (for messages)")
    q = rs.add_parser("folds", help="the fold numbers to run: SPEC is all or a comma list")
    q.add_argument("split_dir")
    q.add_argument("spec")
    q = rs.add_parser("json-value", help="print a top-level key of a JSON file")
    q.add_argument("file")
    q.add_argument("key")
    q = rs.add_parser("num-layers", help="the transformer layers of an upstream checkpoint")
    q.add_argument("checkpoint")
    q = rs.add_parser("hydra-value", help="a value quoted as a Hydra override")
    q.add_argument("value")
    q = rs.add_parser(
        "route-overrides",
        help="print 'RUN<TAB>overrides' for each RUN=CONF[,CONF]: the "
        "--key value pairs of --overrides its configs take",
    )
    q.add_argument("--option", required=True, help="the recipe option the overrides came from (messages)")
    q.add_argument("--overrides", required=True)
    q.add_argument(
        "--default",
        action="store_true",
        help="the recipe's default, not the user's: drop a key no config has instead of failing",
    )
    q.add_argument("runs", nargs="*", metavar="RUN=CONF[,CONF]")
    q = rs.add_parser("channel-mask-width", help="ShiftSER's 64-of-768 channel mask scaled to FEATS's width")
    q.add_argument("feats", help="a dump-features directory (meta.json)")
    p.set_defaults(func=_run)
