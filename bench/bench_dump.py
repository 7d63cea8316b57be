"""Benchmark: feature-dumping throughput, real-time factor and peak memory of ``serkit dump-features``.

1. Throughput: the tiny HuBERT and a randomly initialised HuBERT-base (both from ``serkit
   make-upstream``) dump all their layers (float16) for synthetic utterances; utterances per second and
   real-time factor (wall time / audio duration; below 1 is faster than real time).
2. Overhead: ``dump_features`` (what ``serkit dump-features`` runs) writing the last layer vs a bare loop
   of fairseq's ``model.extract_features`` over the same audio and model (no batching, no writing),
   interleaved and repeated (``--overhead-repeats``); the ratio of the medians (1.0 = no overhead).
3. Memory: peak resident memory (ru_maxrss) of a dumping process for corpora of increasing size. The
   utterances are generated on the fly (2-10 s of noisy tones each, never stored as wav files), through
   the real dumper (ark parts, progress records, merge), so memory reflects what ``dump-features`` keeps.
   Each size runs in its own process. If peak memory does not grow from the small to the large corpus,
   it does not depend on corpus size.

    python bench/bench_dump.py                           # 1 h vs 7 h (IEMOCAP-sized) with the tiny model
    python bench/bench_dump.py --hours 0.25 1.75         # scaled down (same 1:7 ratio)

Writes ``bench_dump.json`` beside this script (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 16000
# torch threads; on a shared 2-core machine 1 thread was 20x faster than 2 (oversubscription)
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def synthetic_items(hours: float, seed: int = 0):
    """AudioItems for ``hours`` of audio; paths are 'synth:<seed>:<n>' (generated when read)."""
    from serkit.upstream.features import AudioItem

    rng = np.random.default_rng(seed)
    items, total, i = [], 0, 0
    while total < hours * 3600 * SR:
        n = int(rng.uniform(2.0, 10.0) * SR)
        items.append(AudioItem(f"utt{i:06d}", f"synth:{i}:{n}", n))
        total += n
        i += 1
    return items, total / SR


def synth_read(path: str) -> np.ndarray:
    _, i, n = path.split(":")
    rng = np.random.default_rng(int(i))
    t = np.arange(int(n), dtype=np.float32) / SR
    f0 = rng.uniform(100, 300)
    return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(int(n))).astype(np.float32)


def dump(ckpt: str, items, out: str, layers="all"):
    import torch

    from serkit.upstream import features, load_upstream

    torch.set_num_threads(THREADS)
    features.read_wav = synth_read  # stream generated audio through the real dumper
    up = load_upstream(ckpt)
    t0 = time.perf_counter()
    res = features.dump_features(up, items, out, layers=layers, dtype="float16", progress=False)
    return time.perf_counter() - t0, res


def bare_loop(ckpt: str, items) -> float:
    """Seconds of fairseq's own ``extract_features`` (last layer) over ``items``, read as ``dump`` reads."""
    import torch

    from serkit.upstream import load_upstream

    torch.set_num_threads(THREADS)
    model = load_upstream(ckpt).model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for it in items:
            wav = torch.from_numpy(synth_read(it.wav))[None]
            x, _ = model.extract_features(source=wav, padding_mask=None, mask=False)
            x.numpy()
    return time.perf_counter() - t0


def overhead(ckpts: dict, minutes: dict, repeats: int, work: str) -> list[dict]:
    import statistics

    from serkit.upstream import load_upstream

    print("\n`dump_features` (last layer) / a bare loop of fairseq's `extract_features` (goal: <= 1.05)")
    print(
        "\n| upstream | utterances | audio s | repeats | bare extract_features s (median) "
        "| dump_features s (median) | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name, ckpt in ckpts.items():
        items, audio = synthetic_items(minutes[name] / 60, seed=3)
        last = load_upstream(str(ckpt)).num_layers
        times = {"bare": [], "serkit": []}
        for r in range(repeats):
            for kind in ("bare", "serkit") if r % 2 == 0 else ("serkit", "bare"):
                if kind == "bare":
                    times["bare"].append(bare_loop(str(ckpt), items))
                else:
                    wall, _ = dump(str(ckpt), items, str(Path(work) / f"over-{name}-{r}"), layers=[last])
                    times["serkit"].append(wall)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "upstream": name,
            "utterances": len(items),
            "audio_s": audio,
            "times": times,
            "ratio": med["serkit"] / med["bare"],
        }
        rows.append(row)
        print(
            f"| {name} HuBERT (random) | {len(items)} | {audio:.0f} | {repeats} | {med['bare']:.2f} "
            f"| {med['serkit']:.2f} | **{row['ratio']:.3f}** |"
        )
    return rows


def child(args) -> int:
    items, audio = synthetic_items(args.child_hours, seed=1)
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        wall, res = dump(args.ckpt, items, d, layers=args.child_layers)
        size = sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(
        json.dumps(
            {
                "hours": args.child_hours,
                "utterances": len(items),
                "audio_s": audio,
                "wall_s": wall,
                "peak_rss_mib": rss,
                "output_mib": size / 2**20,
                "merged": res["merged"],
            }
        )
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--hours", type=float, nargs="+", default=[1.0, 7.0], help="corpus sizes for the memory check"
    )
    ap.add_argument(
        "--throughput-minutes",
        type=float,
        nargs=2,
        default=[10.0, 2.0],
        metavar=("TINY", "BASE"),
        help="minutes of audio for the tiny and base throughput runs",
    )
    ap.add_argument(
        "--overhead-repeats", type=int, default=3, help="interleaved repeats of the overhead pairs"
    )
    ap.add_argument("--memory-layers", default="all", help="layers dumped in the memory runs")
    ap.add_argument("--tmp", default=None, help="scratch directory (default: system temp)")
    ap.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    ap.add_argument("--child-hours", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-layers", default="all", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_hours is not None:
        return child(args)

    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    from serkit.upstream.tiny import make_hubert_checkpoint

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch "
        f"{torch.__version__}, {THREADS} torch thread(s) (BENCH_THREADS), CPU only"
    )
    result = {"cpus": os.cpu_count(), "throughput": [], "memory": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as work:
        ckpts = {
            "tiny": make_hubert_checkpoint(Path(work) / "tiny.pt", arch="tiny"),
            "base": make_hubert_checkpoint(Path(work) / "base.pt", arch="base"),
        }
        print("\n| upstream | layers | utterances | audio s | wall s | utt/s | real-time factor |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for (name, ckpt), minutes in zip(ckpts.items(), args.throughput_minutes):
            items, audio = synthetic_items(minutes / 60, seed=2)
            wall, _ = dump(str(ckpt), items, str(Path(work) / f"feats-{name}"))
            row = {
                "upstream": name,
                "layers": "all",
                "utterances": len(items),
                "audio_s": audio,
                "wall_s": wall,
                "utt_per_s": len(items) / wall,
                "rtf": wall / audio,
            }
            result["throughput"].append(row)
            print(
                f"| {name} HuBERT (random) | all | {len(items)} | {audio:.0f} | {wall:.1f} "
                f"| {row['utt_per_s']:.2f} "
                f"| {row['rtf']:.4f} |"
            )

        if args.overhead_repeats > 0:
            result["overhead"] = overhead(
                ckpts, dict(zip(ckpts, args.throughput_minutes)), args.overhead_repeats, work
            )

        print("\n| corpus hours | utterances | wall s | peak RSS MiB | output MiB |")
        print("|---:|---:|---:|---:|---:|")
        for h in args.hours:
            cmd = [
                sys.executable,
                __file__,
                "--child-hours",
                str(h),
                "--child-layers",
                args.memory_layers,
                "--ckpt",
                str(ckpts["tiny"]),
            ] + (["--tmp", args.tmp] if args.tmp else [])
            out = (
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            row = json.loads(out)
            result["memory"].append(row)
            print(
                f"| {h:g} | {row['utterances']} | {row['wall_s']:.1f} | {row['peak_rss_mib']:.0f} "
                f"| {row['output_mib']:.0f} |"
            )
    mem = result["memory"]
    if len(mem) > 1:
        growth = mem[-1]["peak_rss_mib"] / mem[0]["peak_rss_mib"]
        result["rss_growth"] = growth
        print(
            f"\npeak RSS ratio {mem[-1]['hours']:g} h / {mem[0]['hours']:g} h = {growth:.3f} "
            f"(corpus ratio {mem[-1]['hours'] / mem[0]['hours']:.1f})"
        )
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
