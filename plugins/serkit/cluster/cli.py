"""``serkit kmeans fit`` and ``serkit kmeans apply``.

Both check their arguments before reading anything, refuse an output that is (or lies inside) an
input or that holds files serkit did not write, and hold an exclusive lock on their output for the
whole run: a second run on the same output fails at once naming the first.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

KM_FILES = ("dict.km.txt", "km.json")


def _positive(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r}: expected a whole number") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} {value}: must be at least 1")
        return value

    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kmeans",
        help="k-means pseudo labels: fit on a fold's training frames, apply to splits",
        description="Fit k-means on cached features of a fold's TRAINING split (faiss; GPU "
        "when present) and write HuBERT pseudo-label files (<split>.km, dict.km.txt).",
    )
    ks = p.add_subparsers(dest="kmeans_command", metavar="{fit,apply}")
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])

    f = ks.add_parser("fit", help="fit k-means on a capped random sample of training frames")
    f.add_argument("--feats", required=True, help="directory written by `serkit dump-features`")
    f.add_argument("--fold", required=True, help="fold directory written by `serkit split`")
    f.add_argument(
        "--split",
        default="train",
        help="split(s) to fit on, comma-separated; anything but 'train' needs --transductive",
    )
    f.add_argument("--layer", type=int, default=None, help="layer to cluster (needed if several were dumped)")
    f.add_argument("--n-clusters", type=_positive("--n-clusters"), required=True, help="number of clusters K")
    f.add_argument(
        "--max-frames",
        type=_positive("--max-frames"),
        default=250_000,
        help="cap on the number of frames sampled (uniformly, without replacement); 250k is 5000 per "
        "centroid at K=50, where more frames no longer lower the inertia measurably but cost linear time "
        "(bench/bench_kmeans.py)",
    )
    f.add_argument("--out", required=True, help="model file to write (.npz)")
    f.add_argument(
        "--backend",
        choices=["faiss", "sklearn"],
        default="faiss",
        help="faiss (k-means++ init, Lloyd) or sklearn (fairseq learn_kmeans.py settings)",
    )
    f.add_argument(
        "--transductive",
        action="store_true",
        help="allow held-out (valid/test) audio in the fit; recorded in the model and km.json",
    )
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--niter", type=_positive("--niter"), default=20, help="faiss: Lloyd iterations")
    f.add_argument(
        "--init-sample",
        type=_positive("--init-sample"),
        default=20_000,
        help="faiss: frames the k-means++ seeding runs on (a random subset of the sample)",
    )
    f.set_defaults(func=run_fit)

    a = ks.add_parser(
        "apply", help="write <split>.km, dict.km.txt and km.json for fairseq's hubert_pretraining"
    )
    a.add_argument(
        "--model",
        required=True,
        help="model written by `serkit kmeans fit`, or a published scikit-learn k-means file "
        "(fairseq HuBERT / textless-NLP, e.g. hubert_base_ls960_L9_km500.bin; read without executing it)",
    )
    a.add_argument(
        "--layer",
        type=int,
        default=None,
        help="layer of --feats to label; required with a published k-means file (it does not record one)",
    )
    a.add_argument("--feats", required=True, help="features of every utterance of the splits")
    a.add_argument("--fold", required=True, help="fold directory (its <split>.tsv fix the line order)")
    a.add_argument("--splits", default="train,valid,test", help="comma-separated splits to label")
    a.add_argument("--out", required=True, help="label directory (fairseq's task.label_dir)")
    a.set_defaults(func=run_apply)


def _check_fit_args(args: argparse.Namespace) -> None:
    from ..utils import SerkitError, check_not_input

    k = args.n_clusters
    if args.max_frames < k:
        raise SerkitError(
            f"--max-frames {args.max_frames} is below --n-clusters {k}: k-means needs at least "
            "one frame per cluster; raise --max-frames or lower --n-clusters"
        )
    if args.backend == "faiss" and args.init_sample < k:
        raise SerkitError(
            f"--init-sample {args.init_sample} is below --n-clusters {k}: the k-means++ "
            f"seeding picks its {k} centres among those frames; raise --init-sample to at "
            f"least {k}"
        )
    out = Path(args.out)
    check_not_input(out, [args.feats, args.fold])
    if out.is_dir():
        raise SerkitError(f"--out {out}: is a directory; give the model file to write (e.g. {out}/km.model)")
    if out.exists():
        from .kmeans import load_model

        try:
            load_model(out, external=False)  # a published k-means file is not serkit's to replace
        except SerkitError:
            raise SerkitError(
                f"--out {out}: exists and is not a serkit k-means model; serkit never "
                "overwrites what it did not write. Choose another --out"
            ) from None


def _km_json_of_apply(out: Path) -> bool:
    """Whether ``out`` holds a km.json of ``serkit kmeans apply`` (its label files are serkit's)."""
    try:
        return "fairseq" in json.loads((out / "km.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def _check_apply_out(args: argparse.Namespace, splits: list[str]) -> None:
    """``--out`` may hold anything, but the files apply writes only if serkit wrote them before."""
    from ..utils import SerkitError, check_output_dir, read_marker

    out = Path(args.out)
    written = [f"{s}.km" for s in splits] + list(KM_FILES)
    model = os.path.realpath(args.model)
    for name in written:
        if os.path.realpath(out / name) == model:
            raise SerkitError(
                f"--out {out}: would overwrite the input --model {args.model}; choose another "
                "--out or move the model"
            )
    check_output_dir(
        out,
        "kmeans",
        "k-means labels",
        [args.feats, args.fold],
        written,
        ours=lambda d: read_marker(d) is not None or _km_json_of_apply(d),
        evidence=f"{out / 'km.json'} of `serkit kmeans apply`",
    )


def run_fit(args: argparse.Namespace) -> int:
    from ..utils import output_lock
    from .kmeans import fit

    _check_fit_args(args)
    out = Path(args.out)
    with output_lock(out.parent / f".serkit-lock.{out.name}", f"k-means model {out}"):
        fit(
            args.feats,
            args.fold,
            args.out,
            n_clusters=args.n_clusters,
            splits=args.split.split(","),
            layer=args.layer,
            max_frames=args.max_frames,
            backend=args.backend,
            transductive=args.transductive,
            seed=args.seed,
            niter=args.niter,
            init_sample=args.init_sample,
        )
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from ..utils import SerkitError, locked_output_dir
    from .kmeans import apply

    splits = [s for s in args.splits.split(",") if s]
    if not splits:
        raise SerkitError(f"--splits {args.splits!r}: name at least one split (train,valid,test)")
    _check_apply_out(args, splits)
    out = Path(args.out)
    with locked_output_dir(
        out, "kmeans", f"k-means label directory {out}", recheck=lambda: _check_apply_out(args, splits)
    ):
        apply(args.model, args.feats, args.fold, out, splits=splits, layer=args.layer)
    return 0
