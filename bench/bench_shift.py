"""Benchmark the temporal shift: its cost against a plain copy (the floor) and against the official
zero-fill-and-slice approach, and what the shift adds to ShiftCNN's forward time.

Not a test: prints a table and writes ``bench_shift.json`` next to this file (or ``--out``). All ratios
come from one run on one device. Usage::

    python bench/bench_shift.py [--device cpu|cuda] [--batch 32 --frames 374 --dim 768] [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from serkit.nn import TemporalShift, build_head, lengths_to_padding_mask  # noqa: E402


def official_style_shift(x: torch.Tensor, fold: int) -> torch.Tensor:
    """The official code's approach, written from its description: allocate zeros, assign slices."""
    out = torch.zeros_like(x)
    out[:, 1:, :fold] = x[:, :-1, :fold]
    out[:, :, fold:] = x[:, :, fold:]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_interleaved(cases: dict, reps: int, device: torch.device, warmup: int = 2) -> dict:
    """Median wall time in ms of each case; the cases take turns, so that load from other processes
    on a shared machine falls on all of them alike and the ratios stay meaningful."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_shift_op(args, device):
    shape = (args.batch, args.frames, args.dim)
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    # A realistic batch: lengths spread between half and full length.
    lengths = torch.linspace(args.frames // 2, args.frames, args.batch).long().to(device)
    mask = lengths_to_padding_mask(lengths, args.frames)
    shift = TemporalShift(proportion=1 / 16)
    fold = shift.fold(args.dim)

    def floor():  # one copy forward and one copy backward: the least any shift can cost
        torch.empty_like(x).copy_(x.detach())
        torch.empty_like(grad).copy_(grad)

    def fwd_bwd(op):
        def run():
            x.grad = None
            op().backward(grad)

        return run

    rows = {
        "copy (floor: fwd copy + bwd copy)": floor,
        "TemporalShift, no mask": fwd_bwd(lambda: shift(x)),
        "TemporalShift, mask-aware with mask": fwd_bwd(lambda: shift(x, mask)),
        "official zero-fill + slice assignment": fwd_bwd(lambda: official_style_shift(x, fold)),
    }
    results = timed_interleaved(rows, args.reps, device)
    base = results["copy (floor: fwd copy + bwd copy)"]
    return [{"case": name, "ms": ms, "ratio_to_copy": ms / base} for name, ms in results.items()]


def bench_cnn(args, device):
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.frames, args.dim, device=device)
    lengths = torch.linspace(args.frames // 2, args.frames, args.batch).long().to(device)
    mask = lengths_to_padding_mask(lengths, args.frames)
    cnn = build_head("cnn", args.dim, 4).to(device).eval()
    shiftcnn = build_head("shiftcnn", args.dim, 4).to(device).eval()
    shiftcnn.load_state_dict(cnn.state_dict())  # same weights: only the shift differs
    shift = shiftcnn.blocks[1].shift
    with torch.no_grad():
        med = timed_interleaved(
            {
                "cnn": lambda: cnn(x, mask),
                "shiftcnn": lambda: shiftcnn(x, mask),
                "shift alone": lambda: shift(x, mask),
            },
            args.cnn_reps,
            device,
            warmup=1,
        )
    return [
        {"case": "CNN forward", "ms": med["cnn"], "ratio_to_cnn": 1.0},
        {"case": "ShiftCNN forward", "ms": med["shiftcnn"], "ratio_to_cnn": med["shiftcnn"] / med["cnn"]},
        {
            "case": "its shift alone",
            "ms": med["shift alone"],
            "ratio_to_cnn": med["shift alone"] / med["cnn"],
        },
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=374, help="7.5 s at 50 frames/s, as in ShiftSER")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--reps", type=int, default=20, help="repetitions of the shift timings")
    parser.add_argument(
        "--cnn-reps",
        type=int,
        default=11,
        help="repetitions of the CNN timings (5 left the median 20 %% off on a 2-core CPU)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    shift_rows = bench_shift_op(args, device)
    cnn_rows = bench_cnn(args, device)

    shape = f"({args.batch}, {args.frames}, {args.dim})"
    print(
        f"device {device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}, x {shape} float32\n"
    )
    print("TemporalShift forward+backward, proportion 1/16")
    print(f"| {'case':<40} | {'ms':>8} | {'x copy':>7} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 9}|")
    for row in shift_rows:
        print(f"| {row['case']:<40} | {row['ms']:8.2f} | {row['ratio_to_copy']:7.2f} |")
    print("\nShiftCNN vs CNN forward (eval, same weights, padded batch)")
    print(f"| {'case':<40} | {'ms':>8} | {'x CNN':>7} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 9}|")
    for row in cnn_rows:
        print(f"| {row['case']:<40} | {row['ms']:8.2f} | {row['ratio_to_cnn']:7.3f} |")

    report = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": [args.batch, args.frames, args.dim],
        "shift_fwd_bwd": shift_rows,
        "cnn_forward": cnn_rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
