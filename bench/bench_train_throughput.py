"""Head training throughput: cached features vs running the upstream every step.

Trains the same head (``--head``, default shiftcnn) for a few steps two ways, on random 3 s
"utterances" (the content does not matter for speed):

- ``cached``: features read from a ``serkit dump-features`` directory (kaldiio, float16), weighted layer
  sum, head forward/backward/step (the featex setting of ``serkit train``);
- ``upstream``: the frozen upstream run on the waveforms at every step, then the same head.

for a tiny and a base-sized (HuBERT-base shape, random weights) fairseq HuBERT. Prints a table and
writes JSON (``--out``). Ratios come from one run on one machine; the dump time is reported separately,
since caching pays it once per corpus.

    python bench/bench_train_throughput.py --out bench/results/train_throughput.json [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_data(root: Path, n: int, seconds: float, seed: int = 0):
    import soundfile as sf

    from serkit.data.manifest import Utterance, write_dict, write_split

    rng = np.random.default_rng(seed)
    wav_dir = root / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    utts = []
    for i in range(n):
        path = wav_dir / f"utt{i:04d}.wav"
        x = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        sf.write(str(path), x, 16000, subtype="PCM_16")
        utts.append(Utterance(f"utt{i:04d}", str(path), len(x), "neu" if i % 2 else "ang", "spk"))
    fold = root / "fold"
    for split in ("train", "valid", "test"):
        write_split(fold, split, utts, root=str(wav_dir))
    write_dict(fold, ["ang", "neu"], {"ang": n // 2, "neu": n - n // 2})
    return fold


def bench_one(arch: str, root: Path, fold: Path, args) -> dict:
    import torch

    from serkit.cli import main as serkit
    from serkit.speechbrain.lobes import FairseqUpstream, SERHead, WeightedLayerSum
    from serkit.upstream.features import FeatureReader

    ckpt = root / f"{arch}.pt"
    assert serkit(["make-upstream", "hubert", "--arch", arch, "--out", str(ckpt)]) == 0
    feats = root / f"feats_{arch}"
    t0 = time.perf_counter()
    assert (
        serkit(
            [
                "dump-features",
                "--upstream",
                str(ckpt),
                "--layers",
                "all",
                "--data",
                str(fold),
                "--splits",
                "train",
                "--out",
                str(feats),
                "--device",
                args.device,
                "--no-progress",
            ]
        )
        == 0
    )
    dump_s = time.perf_counter() - t0
    reader = FeatureReader(feats)
    upstream = FairseqUpstream(str(ckpt), freeze=True, layers="all").to(args.device).eval()
    utts = list(reader.keys())
    n_layers, dim = len(reader.layers), reader.dim

    def make_head():
        torch.manual_seed(0)
        layer_sum = WeightedLayerSum(n_layers).to(args.device)
        head = SERHead(args.head, dim, 2).to(args.device).train()
        opt = torch.optim.AdamW([*layer_sum.parameters(), *head.parameters()], lr=1e-4)
        return layer_sum, head, opt

    def step(layer_sum, head, opt, layers, lens, labels):
        logits = head(layer_sum(layers, lens), lens)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def batches():
        for start in range(0, args.steps * args.batch_size, args.batch_size):
            yield [utts[(start + i) % len(utts)] for i in range(args.batch_size)]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    labels = torch.zeros(args.batch_size, dtype=torch.long, device=args.device)
    lens = torch.ones(args.batch_size, device=args.device)
    results = {}
    import soundfile as sf

    wav_paths = {u: str(fold.parent / "wavs" / f"{u}.wav") for u in utts}
    for mode in ("cached", "upstream"):
        layer_sum, head, opt = make_head()
        count, elapsed = 0, 0.0
        for i, batch in enumerate(batches()):
            t = time.perf_counter()
            if mode == "cached":
                layers = torch.from_numpy(np.stack([reader.load(u) for u in batch])).to(args.device)
            else:
                wav = torch.from_numpy(np.stack([sf.read(wav_paths[u], dtype="float32")[0] for u in batch]))
                with torch.no_grad():
                    layers, _ = upstream(wav.to(args.device), lens)
            step(layer_sum, head, opt, layers, lens, labels)
            sync()
            if i >= args.warmup:  # the first steps pay for allocations and kernel selection
                elapsed += time.perf_counter() - t
                count += len(batch)
        results[mode] = count / elapsed
    return {
        "arch": arch,
        "layers": n_layers,
        "dim": dim,
        "cached_utt_per_s": results["cached"],
        "upstream_utt_per_s": results["upstream"],
        "speedup": results["cached"] / results["upstream"],
        "dump_s": dump_s,
        "dump_utt_per_s": len(utts) / dump_s,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="tiny,base", help="upstream sizes to compare (tiny, base)")
    p.add_argument("--head", default="shiftcnn")
    p.add_argument("--utterances", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed steps per mode (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="bench/results/train_throughput.json")
    args = p.parse_args(argv)
    args.steps += args.warmup

    import torch

    from serkit.utils import setup_logging

    setup_logging()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        fold = make_data(root, args.utterances, args.seconds)
        for arch in args.archs.split(","):
            rows.append(bench_one(arch, root, fold, args))
    on_gpu = args.device.startswith("cuda")
    device = torch.cuda.get_device_name(0) if on_gpu else platform.processor() or "cpu"
    print(
        f"\nHead training throughput ({args.head}, batch {args.batch_size}, {args.seconds:g} s utterances, "
        f"{args.device}: {device}, torch threads {torch.get_num_threads()})\n"
    )
    print(
        "| upstream | layers x dim | cached feats (utt/s) | upstream every step (utt/s) | speed-up | "
        "one-off dump (utt/s) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['layers']} x {r['dim']} | {r['cached_utt_per_s']:.1f} | "
            f"{r['upstream_utt_per_s']:.1f} | {r['speedup']:.1f}x | {r['dump_utt_per_s']:.1f} |"
        )
    result = {
        "config": dict(vars(args)),
        "device": device,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_out, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
