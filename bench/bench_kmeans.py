"""Benchmark: serkit's faiss k-means (k-means++ seeding + Lloyd) vs fairseq's sklearn reference settings.

Every method gets the same frames: synthetic, drawn from a Gaussian mixture (``--true-k`` components
with random means and unit-variance noise, standing in for layer features; no corpus is needed).
Rows: serkit's defaults (``serkit kmeans fit``: a random sample of ``--sample`` frames, k-means++ on
20k of them, 20 faiss Lloyd iterations), faiss on every frame, the sklearn reference on the same
sample, and the sklearn reference (fairseq's ``learn_kmeans.py`` settings) on every frame, which the
ratios are relative to. Inertia (sum of squared distances to the nearest centroid) is always computed
on EVERY frame, so a method that fits on a sample pays for it there. Reports wall time (sampling
included), inertia and ratios measured in this run, and which faiss build loaded. Writes
``bench_kmeans.json`` beside this script (or ``--json``).

    python bench/bench_kmeans.py                       # 1M x 768, k = 50
    python bench/bench_kmeans.py --n 100000            # scaled down
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def gaussian_mixture(n: int, dim: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(k, dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        e = min(n, s + step)
        comp = rng.integers(k, size=e - s)
        x[s:e] = means[comp] + rng.standard_normal((e - s, dim), dtype=np.float32)
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="frames")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=50, help="clusters fitted")
    ap.add_argument("--true-k", type=int, default=100, help="mixture components generating the data")
    ap.add_argument("--niter", type=int, default=20, help="faiss Lloyd iterations")
    ap.add_argument("--sample", type=int, default=250_000, help="frames serkit's default fit samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()

    import logging

    logging.getLogger("faiss").setLevel(logging.WARNING)
    from serkit.cluster.kmeans import faiss_build, fit_faiss, fit_sklearn, inertia

    t0 = time.perf_counter()
    x = gaussian_mixture(args.n, args.dim, args.true_k, args.seed)
    t_gen = time.perf_counter() - t0
    build = faiss_build()
    print(
        f"frames: {args.n} x {args.dim} float32 ({x.nbytes / 2**30:.2f} GiB), synthetic Gaussian mixture of "
        f"{args.true_k} components; k = {args.k}; generated in {t_gen:.1f} s"
    )
    print(f"{build}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible")

    rng = np.random.default_rng(args.seed)
    rows = []

    def timed(method: str, fit, sample: bool):
        t0 = time.perf_counter()
        data = x[np.sort(rng.choice(len(x), args.sample, replace=False))] if sample else x
        c, info = fit(data)
        rows.append(
            {
                "method": method,
                "seconds": time.perf_counter() - t0,
                "frames_fitted": len(data),
                "init_seconds": info.get("init_seconds"),
                "inertia": inertia(x, c),
            }
        )
        print(f"  {method}: {rows[-1]['seconds']:.1f} s", flush=True)

    faiss_fit = lambda data: fit_faiss(data, args.k, seed=args.seed, niter=args.niter)  # noqa: E731
    sk_fit = lambda data: fit_sklearn(data, args.k, seed=args.seed)  # noqa: E731
    timed(
        f"faiss, serkit defaults ({args.sample // 1000}k-frame sample, k-means++, {args.niter} iter)",
        faiss_fit,
        sample=True,
    )
    timed(f"faiss on all frames (k-means++, {args.niter} iter)", faiss_fit, sample=False)
    if not args.skip_sklearn:
        timed(f"sklearn reference on the same {args.sample // 1000}k-frame sample", sk_fit, sample=True)
        timed(
            "sklearn MiniBatchKMeans, fairseq learn_kmeans settings (n_init 20), all frames",
            sk_fit,
            sample=False,
        )
    ref = rows[-1]
    print()
    ref_name = "the reference" if len(rows) > 2 else "faiss on all frames"
    print(f"| method | wall s | inertia / frame (all frames) | time ratio vs {ref_name} | inertia ratio |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        r["time_ratio"] = r["seconds"] / ref["seconds"]
        r["inertia_ratio"] = r["inertia"] / ref["inertia"]
        print(
            f"| {r['method']} | {r['seconds']:.1f} | {r['inertia'] / args.n:.2f} | {r['time_ratio']:.3f} "
            f"| {r['inertia_ratio']:.4f} |"
        )
    result = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "true_k": args.true_k,
        "data": "synthetic Gaussian mixture",
        "faiss_build": build,
        "cpus": os.cpu_count(),
        "sample": args.sample,
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {os.path.relpath(args.json, Path(__file__).resolve().parent.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
