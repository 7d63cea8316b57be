"""Benchmark: length-bucketed batching (hparams ``batching: dynamic``) vs batches drawn at random.

On IEMOCAP's real utterance durations (``bench/data/iemocap_durations.tsv``, the 5531 utterances of
the 4-class set; sessions 1-4 train, session 5 split into valid and test):

1. padding: the fraction of padded audio in the batches serkit's own loaders form
   (``SERBrain.make_dataloader``, which ``serkit train`` uses for every SpeechBrain trainer: heads on
   cached features, finetuning, BAS search and retraining), for each recipe config's batch size;
2. finetuning: one training epoch of ``flea.yaml`` (the upstream runs and trains every step; inputs
   cropped to its ``max_duration`` of 6 s, as the official FLEA code) on
   ``--utterances`` utterances drawn from the distribution (synthetic wavs of those durations), for a
   tiny and a base-size HuBERT (random weights), ``dynamic`` vs ``random``; runs interleaved and
   repeated, medians reported;
3. head overhead: one training epoch of a head on cached features (``serkit dump-features`` output,
   read through serkit's dataset) divided by the head's own compute on the same batches (forward +
   backward + gradient clipping + step, padded tensors already in memory), run right after it (the
   median of these paired ratios: the machine's load moves slowly, so it hits both runs of a pair
   alike); and the time to form the same batches alone (no compute).

    python bench/bench_batching.py                     # all three (about 20 min on 2 shared cores)
    python bench/bench_batching.py --parts padding     # one part

Writes ``bench_batching.json`` beside this script (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / "bench" / "data" / "iemocap_durations.tsv"
SHARED_CONF = ROOT / "plugins" / "serkit" / "conf"  # the configs the corpora share (shiftser.yaml: --method)
CLASSES = ["ang", "hap", "neu", "sad"]
SR = 16000
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def read_durations() -> list[tuple[str, float]]:
    rows = [
        line.split("\t")
        for line in DURATIONS.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith(("#", "session"))
    ]
    return [(s, float(d)) for s, d in rows]


def loso_fold() -> dict:
    """``{split: {utt: {"duration", "emo"}}}``: sessions 1-4 train, session 5 alternately valid/test."""
    fold = {"train": {}, "valid": {}, "test": {}}
    for i, (session, duration) in enumerate(read_durations()):
        split = "train" if session != "5" else ("valid", "test")[i % 2]
        fold[split][f"utt{i:05d}"] = {"duration": duration, "emo": CLASSES[i % 4]}
    return fold


def padding_of(batches, durations) -> float:
    padded = sum(len(b) * max(durations[u] for u in b) for b in batches)
    return 1.0 - sum(durations[u] for b in batches for u in b) / padded


def make_brain(hparams: dict, modules=None, **kwargs):
    from serkit.speechbrain.brain import SERBrain

    return SERBrain(
        modules=modules or {}, hparams=hparams, run_opts={"device": "cpu", "noprogressbar": True}, **kwargs
    )


def epoch_ids(loader, epoch: int = 1) -> list[list[str]]:
    sampler = getattr(loader, "batch_sampler", None)
    for s in (sampler, getattr(loader, "sampler", None)):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)
    return [list(b.id) for b in loader]


# ------------------------------------------------------------------------------------------------ 1
def bench_padding(result: dict) -> None:
    import speechbrain as sb
    from speechbrain.dataio.dataset import DynamicItemDataset

    from serkit.speechbrain.train import _peek_yaml

    fold = loso_fold()
    durations = {u: d["duration"] for items in fold.values() for u, d in items.items()}
    datasets = {}
    for split, items in fold.items():
        ds = DynamicItemDataset(items, output_keys=["id"])
        datasets[split] = ds if split == "train" else ds.filtered_sorted(sort_key="duration")  # fold_datasets
    groups: dict = {}
    segment_groups: dict = {}  # MFSN: its items are 3-second segments of the utterances
    for conf in [*sorted(SHARED_CONF.glob("*.yaml")), *sorted(ROOT.glob("recipes/*/conf/*.yaml"))]:
        peek = _peek_yaml(conf)
        if "batching" not in peek:
            continue
        key = (int(peek["batch_size"]), peek.get("max_batch_length"), int(peek.get("num_buckets", 40)))
        name = conf.stem if conf.parent == SHARED_CONF else f"{conf.parent.parent.name}/{conf.stem}"
        (segment_groups if "segment_seconds" in peek or conf.stem.startswith("mfsn") else groups).setdefault(
            key, []
        ).append(name)
    print(
        "\n### padding on IEMOCAP's durations (sessions 1-4 train: "
        f"{len(fold['train'])}, session 5 valid/test: {len(fold['valid'])}/{len(fold['test'])}; "
        "goal of `dynamic`: <= 5 %)\n"
    )
    print("| configs | batching | split | batches | mean utterances per batch | padding |")
    print("|---|---|---|---:|---:|---:|")
    result["padding"] = []
    for (batch_size, max_len, buckets), confs in groups.items():
        for batching in ("dynamic", "random"):
            brain = make_brain(
                {"batching": batching, "max_batch_length": max_len, "num_buckets": buckets, "seed": 1986}
            )
            stages = {"train": sb.Stage.TRAIN, "valid": sb.Stage.VALID, "test": sb.Stage.TEST}
            for split, stage in stages.items():
                opts = {"batch_size": batch_size, **({"shuffle": True} if split == "train" else {})}
                batches = epoch_ids(brain.make_dataloader(datasets[split], stage, **opts))
                row = {
                    "configs": confs,
                    "batch_size": batch_size,
                    "batching": batching,
                    "split": split,
                    "batches": len(batches),
                    "mean_batch": len(datasets[split]) / len(batches),
                    "padding": padding_of(batches, durations),
                }
                result["padding"].append(row)
                label = f"{len(confs)} configs, batch_size {batch_size}"
                print(
                    f"| {label} | {batching} | {split} | {row['batches']} | {row['mean_batch']:.1f} "
                    f"| {100 * row['padding']:.1f} % |"
                )
    print("\n(configs: " + ", ".join(c for cs in groups.values() for c in cs) + ")")
    if segment_groups:
        bench_segment_padding(result, fold, segment_groups)


def bench_segment_padding(result: dict, fold: dict, groups: dict) -> None:
    """MFSN's items: the 3-second segments of every utterance (``segment_datasets``), batched by
    ``SERBrain.make_dataloader`` (the training and validation loaders; the search's architecture batches
    follow the training ones' rule)."""
    import speechbrain as sb
    from speechbrain.dataio.dataset import DynamicItemDataset

    from serkit.nn.coattention import segment_starts

    seg = 3 * SR
    datasets, durations = {}, {}
    for split, items in fold.items():
        data = {}
        for u, d in items.items():
            samples = int(round(d["duration"] * SR))
            for k, _ in enumerate(segment_starts(samples, seg)):
                data[f"{u}#{k}"] = {"duration": min(samples, seg) / SR}
        durations.update({k: v["duration"] for k, v in data.items()})
        datasets[split] = DynamicItemDataset(data, output_keys=["id"])
    print(
        "\n### MFSN: padding of its 3-second segments of IEMOCAP's durations (train/valid/test segments: "
        + "/".join(str(len(d)) for d in datasets.values())
        + ")\n"
    )
    print("| configs | batching | split | batches | mean segments per batch | padding |")
    print("|---|---|---|---:|---:|---:|")
    result["padding_mfsn"] = []
    stages = {"train": sb.Stage.TRAIN, "valid": sb.Stage.VALID, "test": sb.Stage.TEST}
    for (batch_size, max_len, buckets), confs in groups.items():
        for batching in ("dynamic", "random"):
            brain = make_brain(
                {"batching": batching, "max_batch_length": max_len, "num_buckets": buckets, "seed": 1986}
            )
            for split, stage in stages.items():
                opts = {"batch_size": batch_size, **({"shuffle": True} if split == "train" else {})}
                batches = epoch_ids(brain.make_dataloader(datasets[split], stage, **opts))
                row = {
                    "configs": confs,
                    "batch_size": batch_size,
                    "batching": batching,
                    "split": split,
                    "batches": len(batches),
                    "mean_batch": len(datasets[split]) / len(batches),
                    "padding": padding_of(batches, durations),
                }
                result["padding_mfsn"].append(row)
                print(
                    f"| {', '.join(confs)} (batch_size {batch_size}) | {batching} | {split} "
                    f"| {row['batches']} | {row['mean_batch']:.1f} | {100 * row['padding']:.1f} % |"
                )


# ------------------------------------------------------------------------------------------------ 2
def write_fold(root: Path, utterances: int, seed: int) -> Path:
    """A fold of ``utterances`` synthetic wavs with durations drawn from IEMOCAP's (valid/test: 4 each)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    durations = np.array([d for _, d in read_durations()])
    fold = root / "fold"
    wavs = root / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    fold.mkdir(parents=True, exist_ok=True)
    (fold / "dict.emo.txt").write_text("".join(f"{c} 1\n" for c in CLASSES), encoding="utf-8")
    sizes = {"train": utterances, "valid": 4, "test": 4}
    k = 0
    for split, n in sizes.items():
        items = {}
        for _ in range(n):
            d = float(rng.choice(durations))
            emo = CLASSES[k % 4]
            t = np.arange(int(d * SR)) / SR
            x = 0.3 * np.sin(2 * np.pi * (200 + 300 * (k % 4)) * t) + 0.02 * rng.standard_normal(t.size)
            path = wavs / f"u{k:05d}.wav"
            sf.write(str(path), x.astype(np.float32), SR, subtype="PCM_16")
            items[f"u{k:05d}"] = {"wav": str(path), "duration": t.size / SR, "emo": emo, "spk": "s1"}
            k += 1
        (fold / f"{split}.json").write_text(json.dumps(items), encoding="utf-8")
    return fold


def load_hparams(conf: Path, out: Path, **overrides):
    from hyperpyyaml import load_hyperpyyaml

    with open(conf, encoding="utf-8") as f:
        return load_hyperpyyaml(f, {"output_folder": str(out), "num_classes": len(CLASSES), **overrides})


def train_epoch(
    conf: Path,
    fold: Path,
    work: Path,
    batching: str,
    batch_size: int,
    ckpt=None,
    reader=None,
    record=None,
    **overrides,
) -> float:
    """Seconds of one training epoch of ``serkit train``'s Brain (no validation, no checkpoints)."""
    import speechbrain as sb

    from serkit.speechbrain.dataio import fold_datasets
    from serkit.speechbrain.lobes import FairseqUpstream

    modules = {}
    if ckpt is not None:
        lobe = FairseqUpstream(str(ckpt), freeze_cnn=True, layers="last")
        dims = {"input_dim": lobe.dim, "num_layers": lobe.num_layers}
        modules["upstream"] = lobe
    else:
        dims = {"input_dim": int(reader.dim), "num_layers": len(reader.layers)}
    hp = load_hparams(
        conf,
        work / f"run-{batching}-{time.monotonic_ns()}",
        batching=batching,
        batch_size=batch_size,
        number_of_epochs=1,
        **dims,
        **overrides,
    )
    modules.update(hp["modules"])
    datasets, _ = fold_datasets(fold, reader, splits=("train",))
    brain = make_brain(hp, modules, opt_class=hp["opt_class"])
    brain.classes = CLASSES
    kwargs = dict(hp["train_dataloader_opts"])
    loader = brain.make_dataloader(datasets["train"], sb.Stage.TRAIN, **kwargs)
    if record is not None:
        record.update(brain=brain, loader=loader, hparams=hp, dataset=datasets["train"])
    t0 = time.perf_counter()
    brain.fit(hp["epoch_counter"], loader, None)
    seconds = time.perf_counter() - t0
    if record is not None:
        record["padding"] = loader_padding(loader, datasets["train"], hp)
    return seconds


def loader_padding(loader, dataset, hparams, epoch: int = 1) -> float:
    """Padding of the batches ``loader`` formed in ``epoch`` (the epoch ``train_epoch`` ran), on the
    durations the model sees (``max_duration`` crops: flea.yaml's 6 s)."""
    from serkit.speechbrain.brain import _durations

    for s in (loader.batch_sampler, getattr(loader.batch_sampler, "sampler", None)):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)
    seconds = _durations(dataset, hparams.get("max_duration"), bool(hparams.get("pad_to_max", False)))
    return padding_of([list(b) for b in loader.batch_sampler], dict(enumerate(seconds.tolist())))


def bench_finetune(result: dict, args) -> None:
    from serkit.upstream.tiny import make_hubert_checkpoint

    print(
        "\n### finetuning epoch (flea.yaml, upstream trained every step), dynamic vs random batches "
        "(goal: >= 2.5x)\n"
    )
    print(
        "| upstream | utterances | audio s | batch_size | buckets | padding random / dynamic | repeats "
        "| random s (median) | dynamic s (median) | speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    result["finetune"] = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as work:
        work = Path(work)
        for arch, n, bs, repeats in (
            ("tiny", args.utterances[0], 32, args.repeats[0]),
            ("base", args.utterances[1], args.base_batch_size, args.repeats[1]),
        ):
            if n <= 0 or repeats <= 0:
                continue
            ckpt = make_hubert_checkpoint(work / f"{arch}.pt", arch=arch)
            fold = write_fold(work / f"data-{arch}", n, seed=0)
            audio = sum(v["duration"] for v in json.loads((fold / "train.json").read_text()).values())
            times, padding = {"random": [], "dynamic": []}, {"random": [], "dynamic": []}
            buckets = None
            for r in range(repeats):  # interleaved: the machine's load hits both alike
                for batching in ("random", "dynamic") if r % 2 == 0 else ("dynamic", "random"):
                    record = {}
                    seconds = train_epoch(
                        SHARED_CONF / "flea.yaml", fold, work, batching, bs, ckpt=ckpt, record=record
                    )
                    times[batching].append(seconds)
                    padding[batching].append(record["padding"])
                    if batching == "dynamic":
                        buckets = len(record["loader"].batch_sampler._bucket_boundaries)
                    print(
                        f"  {arch} {batching}: {seconds:.1f} s, padding {100 * record['padding']:.1f} %",
                        flush=True,
                    )
            med = {k: statistics.median(v) for k, v in times.items()}
            pad = {k: statistics.median(v) for k, v in padding.items()}
            row = {
                "upstream": arch,
                "utterances": n,
                "audio_s": audio,
                "batch_size": bs,
                "buckets": buckets,
                "times": times,
                "padding": padding,
                "speedup": med["random"] / med["dynamic"],
            }
            result["finetune"].append(row)
            print(
                f"| {arch} HuBERT (random init{', fairseq HubertConfig' if arch == 'base' else ''}) | {n} "
                f"| {audio:.0f} | {bs} | {buckets} "
                f"| {100 * pad['random']:.1f} % / {100 * pad['dynamic']:.1f} % | {repeats} "
                f"| {med['random']:.1f} | {med['dynamic']:.1f} | **{row['speedup']:.2f}x** |"
            )


# ------------------------------------------------------------------------------------------------ 3
def reference_epoch(record: dict, epoch: int = 1) -> float:
    """The head's own compute on the batches serkit formed: padded tensors in memory, then forward +
    backward + clipping + step per batch."""
    import torch
    import torch.nn.functional as F
    from speechbrain.dataio.batch import PaddedBatch

    brain, loader, hp, ds = record["brain"], record["loader"], record["hparams"], record["dataset"]
    sampler = loader.batch_sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    batches = [PaddedBatch([ds[i] for i in idx]) for idx in sampler]
    tensors = [(b.feats.data, b.feats.lengths, b.label.data.view(-1)) for b in batches]
    modules = brain.modules
    params = [p for p in modules.parameters() if p.requires_grad]
    opt = hp["opt_class"](params)
    clip = float(hp.get("max_grad_norm", 0) or 0)
    modules.train()
    t0 = time.perf_counter()
    for feats, lens, labels in tensors:
        x = modules.layer_sum(feats.transpose(1, 2), lens)
        if "augment" in modules:
            x = modules.augment(x, lens)
        loss = F.cross_entropy(modules.head(x, lens).float(), labels)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - t0


def loading_epoch(record: dict, epoch: int = 1) -> float:
    """Seconds to form the epoch's batches alone (read the cached features, pad, collate): no compute."""
    loader = record["loader"]
    for s in (loader.batch_sampler, getattr(loader.batch_sampler, "sampler", None)):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def bench_heads(result: dict, args) -> None:
    from serkit.upstream import features, load_upstream, tiny
    from serkit.upstream.features import AudioItem, FeatureReader

    print(
        "\n### head epoch from cached features (768 channels x 3 layers, float16) / the head's own compute "
        "on the same batches (goal: <= 1.1)\n"
    )
    print(
        "| head (config) | utterances | batching | repeats | serkit epoch s (median) | head compute s "
        "(median) | loading alone s (median) | ratio (median of the paired runs) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    result["heads"] = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as work:
        work = Path(work)
        # features as wide as HuBERT-base's (768 channels; 2 cheap transformer layers to dump them)
        tiny.ARCHS["wide"] = {**tiny.TINY, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 768}
        ckpt = tiny.make_hubert_checkpoint(work / "wide.pt", arch="wide")
        fold = write_fold(work / "data", args.head_utterances, seed=1)
        items = [
            AudioItem(u, v["wav"], int(round(v["duration"] * SR)))
            for split in ("train", "valid", "test")
            for u, v in json.loads((fold / f"{split}.json").read_text()).items()
        ]
        features.dump_features(
            load_upstream(str(ckpt)),
            items,
            str(work / "feats"),
            layers="all",
            dtype="float16",
            progress=False,
        )
        reader = FeatureReader(str(work / "feats"))

        for conf in args.heads:
            shiftser = SHARED_CONF / "shiftser.yaml"
            record = {}
            train_epoch(shiftser, fold, work, "dynamic", 32, reader=reader, record=record, method=conf)
            reference_epoch(record)  # warm-ups of both, not timed
            for batching in args.head_batching:
                serkit, own, loading = [], [], []
                for _ in range(args.repeats[0]):  # paired: each serkit epoch with its reference right after
                    record = {}
                    serkit.append(
                        train_epoch(
                            shiftser, fold, work, batching, 32, reader=reader, record=record, method=conf
                        )
                    )
                    own.append(reference_epoch(record))
                    loading.append(loading_epoch(record))
                    print(
                        f"  {Path(conf).stem} {batching}: serkit {serkit[-1]:.2f} s, head compute "
                        f"{own[-1]:.2f} s, loading alone {loading[-1]:.2f} s",
                        flush=True,
                    )
                ratio = statistics.median(a / b for a, b in zip(serkit, own))
                row = {
                    "config": conf,
                    "batching": batching,
                    "serkit_s": serkit,
                    "head_s": own,
                    "loading_s": loading,
                    "ratio": ratio,
                }
                result["heads"].append(row)
                print(
                    f"| {Path(conf).stem} | {args.head_utterances} | {batching} | {len(serkit)} "
                    f"| {statistics.median(serkit):.2f} | {statistics.median(own):.2f} "
                    f"| {statistics.median(loading):.2f} | **{ratio:.3f}** |"
                )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["padding", "finetune", "heads"],
        choices=["padding", "finetune", "heads"],
    )
    ap.add_argument(
        "--utterances",
        type=int,
        nargs=2,
        default=[200, 48],
        metavar=("TINY", "BASE"),
        help="training utterances of the finetuning epochs, drawn from IEMOCAP's durations "
        "(base: 48 at batch size 4 form 12 buckets)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        nargs=2,
        default=[2, 1],
        metavar=("TINY", "BASE"),
        help="interleaved repeats (tiny runs and head runs; base runs)",
    )
    ap.add_argument(
        "--base-batch-size",
        type=int,
        default=4,
        help="batch size of the base-size finetuning (memory: at 8 a random batch took 19 GB "
        "and was killed on a 23 GB machine)",
    )
    ap.add_argument("--head-utterances", type=int, default=200)
    ap.add_argument(
        "--heads", nargs="+", default=["shiftcnn"], help="ShiftSER heads (shiftser.yaml --method)"
    )
    ap.add_argument("--head-batching", nargs="+", default=["dynamic"], choices=["dynamic", "random"])
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    import speechbrain  # noqa: F401  (configures its loggers on import; quiet them after)
    import torch

    for name in ("speechbrain", "serkit", "fairseq"):
        logging.getLogger(name).setLevel(logging.ERROR)

    torch.set_num_threads(THREADS)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch "
        f"{torch.__version__}, {THREADS} torch thread(s) (BENCH_THREADS), CPU only"
    )
    result = {"cpus": os.cpu_count(), "threads": THREADS}
    if "padding" in args.parts:
        bench_padding(result)
    if "heads" in args.parts:
        bench_heads(result, args)
    if "finetune" in args.parts:  # last: the base-size run is the one that may run out of memory
        bench_finetune(result, args)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {os.path.relpath(args.json, ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
