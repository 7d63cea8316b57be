"""``serkit kmeans fit`` and ``serkit kmeans apply``."""

from __future__ import annotations

import argparse


def register(sub) -> None:
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
    f.add_argument("--n-clusters", type=int, required=True, help="number of clusters K")
    f.add_argument(
        "--max-frames",
        type=int,
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
    f.add_argument("--niter", type=int, default=20, help="faiss: Lloyd iterations")
    f.add_argument(
        "--init-sample",
        type=int,
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


def run_fit(args: argparse.Namespace) -> int:
    from .kmeans import fit

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
    from .kmeans import apply

    apply(args.model, args.feats, args.fold, args.out, splits=args.splits.split(","), layer=args.layer)
    return 0
