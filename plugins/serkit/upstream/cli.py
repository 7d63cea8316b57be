"""``serkit make-upstream`` and ``serkit dump-features``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .features import AudioItem

log = logging.getLogger("serkit.upstream")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-upstream",
        help="write a random-weight fairseq HuBERT checkpoint (tiny: demos/tests, base: benchmarks)",
        description="Write a fairseq HuBERT checkpoint with random weights. 'tiny-hubert' is the CPU demo "
        "model (2 layers x 64 dims, 20 ms frames); --arch base gives a HuBERT-base-sized model.",
    )
    p.add_argument("name", choices=["tiny-hubert", "hubert"], help="model family (both write HuBERT)")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.add_argument(
        "--arch",
        choices=["tiny", "base"],
        default=None,
        help="size (default: tiny for tiny-hubert, base for hubert)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the initialisation")
    p.add_argument(
        "--num-labels",
        type=int,
        default=50,
        help="size of the pseudo-label dictionary the prediction head is built for",
    )
    p.add_argument(
        "--normalize",
        action="store_true",
        help="record task.normalize=true (waveforms layer-normalised per utterance)",
    )
    p.set_defaults(func=run_make_upstream)

    d = sub.add_parser(
        "dump-features",
        help="cache layer features of an upstream (or MFCC) as kaldiio ark/scp, resumable and shardable",
        description="Dump features for every utterance of the inputs into OUT/feats.scp (+ ark files), "
        "one (T, n_layers*C) matrix per utterance at 50 frames/s. Re-running the same command resumes; "
        "--shard/--nshard split the work; the run that finds every chunk present merges.",
    )
    d.add_argument(
        "--upstream", required=True, help="fairseq checkpoint (.pt), Hugging Face model directory, or 'mfcc'"
    )
    d.add_argument("--layers", default="all", help="'all', one layer (9) or a list (3,6,9); 0 = CNN output")
    d.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="data directory (wav.scp), fold directory, or FOLD/<split>.tsv (several allowed)",
    )
    d.add_argument(
        "--splits", default=None, help="with a fold directory: comma-separated splits (default all)"
    )
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    d.add_argument("--shard", type=int, default=0, help="this job's shard index (0-based)")
    d.add_argument("--nshard", type=int, default=1, help="number of shards")
    d.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    d.add_argument(
        "--max-chunk-seconds",
        type=float,
        default=None,
        help="utterances longer than this are encoded in chunks (default 60 s)",
    )
    d.add_argument(
        "--chunk-utterances",
        type=int,
        default=100,
        help="utterances per ark part (the unit of resuming and sharding)",
    )
    d.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is fastest on a machine shared by other jobs)",
    )
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=run_dump_features)


def run_make_upstream(args: argparse.Namespace) -> int:
    from .tiny import make_hubert_checkpoint

    arch = args.arch or ("tiny" if args.name == "tiny-hubert" else "base")
    make_hubert_checkpoint(
        args.out, arch=arch, seed=args.seed, num_labels=args.num_labels, normalize=args.normalize
    )
    return 0


def run_dump_features(args: argparse.Namespace) -> int:
    from ..utils import SerkitError
    from . import load_upstream
    from .features import collect_inputs, dump_features

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SerkitError("--device cuda: no CUDA device is visible; use --device cpu")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    splits = args.splits.split(",") if args.splits else None
    items = collect_inputs(args.data, splits)
    log.info("read %d utterances from %s", len(items), " ".join(args.data))
    with features_output(args, items):
        upstream = load_upstream(args.upstream, device=args.device)
        res = dump_features(
            upstream,
            items,
            args.out,
            layers=args.layers,
            dtype=args.dtype,
            shard=args.shard,
            nshard=args.nshard,
            device=args.device,
            max_chunk_seconds=args.max_chunk_seconds,
            chunk_utterances=args.chunk_utterances,
            progress=not args.no_progress,
        )
    if res["audio_s"]:
        log.info(
            "dumped %d utterances (%.1f s of audio) in %.1f s: %.1f utt/s, real-time factor %.4f",
            res["utterances"],
            res["audio_s"],
            res["wall_s"],
            res["utterances"] / max(res["wall_s"], 1e-9),
            res["wall_s"] / res["audio_s"],
        )
    return 0


FEATURE_FILES = ("dump.json", "meta.json", "feats.scp", "utt2num_frames", "parts")


@contextlib.contextmanager
def features_output(args: argparse.Namespace, items: list[AudioItem]) -> Iterator[None]:
    """Check ``--out`` of dump-features and lock it for the block.

    Refused: ``--out`` equal to, inside or holding an input (data paths, wavs, upstream checkpoint),
    serkit's output of another kind, or feature files that no ``dump.json`` of serkit's vouches for.
    Unsharded runs hold an exclusive lock on ``OUT/.serkit-lock``; shard K of N holds a shared lock on it
    and an exclusive one on ``OUT/.serkit-lock.shard-K-of-N``, so shards run side by side while a second
    run of the same work fails at once, naming the first.
    """
    from ..utils import check_output_dir, locked_output_dir

    inputs = list(args.data) + [it.wav for it in items]
    if args.upstream != "mfcc" and os.path.exists(args.upstream):
        inputs.append(args.upstream)
    check_output_dir(
        args.out,
        "features",
        "features",
        inputs,
        FEATURE_FILES,
        ours=lambda out: (out / "dump.json").is_file(),
        evidence="dump.json of `serkit dump-features`",
    )
    shard = None if args.nshard == 1 else (args.shard, args.nshard)
    with locked_output_dir(args.out, "features", f"feature directory {Path(args.out)}", shard):
        yield
