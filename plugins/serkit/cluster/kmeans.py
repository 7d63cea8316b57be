"""k-means pseudo labels for HuBERT pretraining, fitted on the training split of a fold (or, on
purpose, on all of its splits: ``transductive``).

``fit``: draw a capped uniform random sample of frames from the TRAINING utterances of a fold
(``serkit.data.manifest.read_split``), seed k-means++ on (a subsample of) it, and run Lloyd iterations
with faiss (GPU when ``faiss.get_num_gpus() > 0``, CPU otherwise). Fitting on valid/test utterances,
or on any utterance or speaker of the fold's test split, is refused unless ``transductive=True``
(recorded in the model and in every label directory made from it). A fold of a protocol that shares
speakers between train and test by design (fold.json's protocol, e.g. ``meld_official``,
``savee_cv10``) may share speakers, never utterances. ``backend="sklearn"`` runs fairseq's
``learn_kmeans.py`` settings (MiniBatchKMeans) for comparison.

``apply``: label every frame of the requested splits and write, line-aligned with ``<split>.tsv``,
``<split>.km`` (space-separated cluster ids), plus ``dict.km.txt`` (``id count``) and ``km.json``: the
files fairseq's ``hubert_pretraining`` task reads with ``task.labels=[km]``, ``task.label_dir=LABEL_DIR``,
``task.data=FOLD_DIR``, ``task.label_rate=50``. Each line has exactly ``floor((n - 400) / 320) + 1``
labels for an utterance of ``n`` samples (``num_samples`` in the tsv): the frame count of HuBERT's conv
stack, so fairseq's ``verify_label_lengths`` passes and ``HubertModel.forward_targets`` needs no
trimming.

The model file (``--out MODEL``) is a numpy ``.npz`` with ``centroids`` (K, C) float32 and ``meta``
(a JSON string; ``frames_per_split`` counts the sampled frames of each split the fit saw). ``apply``
also takes the scikit-learn k-means pickles published with fairseq's HuBERT and textless-NLP examples
(``serkit.cluster.external``: read without executing anything from the file), with ``layer`` given.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..utils import SerkitError, atomic_file, write_json

if TYPE_CHECKING:
    from ..data.manifest import Utterance
    from ..upstream.features import FeatureReader

log = logging.getLogger("serkit.cluster")

LABEL_RATE = 50


def expected_frames(num_samples: int) -> int:
    """Labels fairseq's HubertDataset expects for ``num_samples`` at label_rate 50 (HuBERT conv stack)."""
    return 0 if num_samples < 400 else (num_samples - 400) // 320 + 1


# ---------------------------------------------------------------------------------------------
# k-means++ seeding and the two backends


def kmeans_pp_init(
    x: np.ndarray, k: int, rng: np.random.Generator, n_local_trials: int | None = None
) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) by scikit-learn's ``kmeans_plusplus``:
    each new centre is the best of ``2 + log(k)`` candidates drawn with probability proportional to the
    squared distance to the nearest chosen centre; its random state is drawn from ``rng``. Returns (k, d)
    float32 centres, all rows of ``x``."""
    from sklearn.cluster import kmeans_plusplus

    n = x.shape[0]
    if n < k:
        raise SerkitError(f"k-means: {n} frames for {k} clusters; use fewer clusters or more data")
    # float64: scikit-learn upcasts float32 distances chunk by chunk, which is slower than one copy
    seed = int(rng.integers(2**31 - 1))
    centres, _ = kmeans_plusplus(
        np.asarray(x, dtype=np.float64), k, random_state=seed, n_local_trials=n_local_trials
    )
    return centres.astype(np.float32)


def faiss_build() -> str:
    """Which faiss library loaded and the instruction set it runs with, plus the GPU count.

    faiss-cpu wheels ship per-ISA libraries (``swigfaiss_avx2``, ...) or, from 1.12 on, one library
    with dynamic dispatch (``DD`` in the compile options) whose SIMD level is chosen at run time.
    """
    import sys

    import faiss

    lib = "generic"
    for name in ("swigfaiss_avx512_spr", "swigfaiss_avx512", "swigfaiss_avx2", "swigfaiss_sve"):
        if f"faiss.{name}" in sys.modules:
            lib = name.split("swigfaiss_", 1)[1].upper()
            break
    opts = faiss.get_compile_options().split() if hasattr(faiss, "get_compile_options") else []
    level = ""
    simd = getattr(faiss, "SIMDConfig", None)
    if simd is not None and "DD" in opts:
        try:
            level = f", dynamic dispatch at {simd.get_level_name()}"
        except Exception:  # noqa: BLE001 - older builds lack it
            level = ", dynamic dispatch"
    compiled, gpus = " ".join(opts), faiss.get_num_gpus()
    return f"faiss {faiss.__version__} {lib} library{level} (compiled: {compiled}), gpus={gpus}"


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances of the rows of x to their nearest centroid (float64 sum)."""
    return float(assign(x, centroids, return_dist=True)[1].astype(np.float64).sum())


def assign(
    x: np.ndarray, centroids: np.ndarray, return_dist: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Nearest-centroid ids (and squared distances) with faiss' exact L2 search; scikit-learn's when
    faiss is not installed, so that ``--backend sklearn`` and ``apply`` need no serkit[faiss]."""
    from ..extras import is_installed

    if not is_installed("faiss"):
        from sklearn.metrics import pairwise_distances_argmin_min

        i, d = pairwise_distances_argmin_min(
            np.asarray(x, dtype=np.float32), np.asarray(centroids, dtype=np.float32)
        )
        return (i, np.square(d, dtype=np.float32)) if return_dist else i
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    d, i = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return (i[:, 0], d[:, 0]) if return_dist else i[:, 0]


def fit_faiss(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    niter: int = 20,
    init_sample: int = 20_000,
    use_gpu: bool | None = None,
) -> tuple[np.ndarray, dict]:
    """Lloyd iterations on all of ``x`` with faiss, starting from k-means++ centres of a subsample."""
    import faiss

    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    sub = x if len(x) <= init_sample else x[np.sort(rng.choice(len(x), init_sample, replace=False))]
    t0 = time.perf_counter()
    init = kmeans_pp_init(sub, k, rng)
    t_init = time.perf_counter() - t0
    ngpu = faiss.get_num_gpus()
    gpu = ngpu > 0 if use_gpu is None else use_gpu
    log.info(
        "k-means: faiss on %s (%s), %d x %d frames, k=%d, %d iterations, k-means++ init on %d frames",
        "GPU" if gpu else "CPU",
        faiss_build(),
        len(x),
        x.shape[1],
        k,
        niter,
        len(sub),
    )
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        verbose=False,
        gpu=gpu,
        max_points_per_centroid=len(x) // k + 1,  # use every sampled frame, no subsampling
        min_points_per_centroid=1,
    )
    km.train(x, init_centroids=init)
    info = {
        "backend": "faiss",
        "device": "gpu" if gpu else "cpu",
        "niter": niter,
        "init": "k-means++",
        "init_sample": len(sub),
        "init_seconds": round(t_init, 3),
        "faiss": faiss_build(),
    }
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, -1), info


def fit_sklearn(x: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """fairseq's ``examples/hubert/simple_kmeans/learn_kmeans.py`` settings (MiniBatchKMeans)."""
    from sklearn.cluster import MiniBatchKMeans

    log.info(
        "k-means: sklearn MiniBatchKMeans (fairseq learn_kmeans settings), %d x %d frames, k=%d",
        len(x),
        x.shape[1],
        k,
    )
    km = MiniBatchKMeans(
        n_clusters=k,
        init="k-means++",
        max_iter=100,
        batch_size=10000,
        verbose=0,
        compute_labels=False,
        tol=0.0,
        max_no_improvement=100,
        init_size=None,
        n_init=20,
        reassignment_ratio=0.0,
        random_state=seed,
    )
    km.fit(x)
    info = {
        "backend": "sklearn",
        "device": "cpu",
        "max_iter": 100,
        "batch_size": 10000,
        "n_init": 20,
        "init": "k-means++",
    }
    return km.cluster_centers_.astype(np.float32), info


# ---------------------------------------------------------------------------------------------
# which frames a fit may see


def speaker_dependent(fold_dir: Path) -> bool:
    """Whether ``fold_dir`` (its fold.json's protocol, as the registry knows it) shares speakers between
    train and test by design; a fold without a known protocol is taken as speaker-independent."""
    from ..data.splits import PROTOCOLS

    info = fold_dir / "fold.json"
    if not info.is_file():
        return False
    try:
        protocol = json.loads(info.read_text(encoding="utf-8")).get("protocol")
    except (ValueError, AttributeError) as e:
        raise SerkitError(
            f"{info}: not the fold.json `serkit split` writes ({e}); re-run `serkit split`"
        ) from e
    return protocol in PROTOCOLS and PROTOCOLS[protocol].speaker_dependent


def _fold_guard(
    fold_dir: Path, splits: Sequence[str], transductive: bool
) -> tuple[list[Utterance], set[str], set[str]]:
    """Utterances to fit on, after the leakage checks; returns (utterances, test utts, test speakers)."""
    from ..data.manifest import read_split

    bad = [s for s in splits if s != "train"]
    if bad and not transductive:
        raise SerkitError(
            f"{fold_dir}: refusing to fit k-means on split(s) {bad}: pseudo labels must come "
            "from the training split only. Pass --transductive to fit on held-out audio "
            "on purpose (FLEA's official setting); it is recorded in the model and km.json"
        )
    test = read_split(fold_dir, "test") if (fold_dir / "test.tsv").is_file() else []
    test_utts, test_spks = {u.utt for u in test}, {u.spk for u in test}
    utts, seen = [], set()
    for s in splits:
        for u in read_split(fold_dir, s):
            if u.utt not in seen:
                seen.add(u.utt)
                utts.append(u)
    if not transductive and "test" not in splits:
        leak_u = [u.utt for u in utts if u.utt in test_utts]
        leak_s = [] if speaker_dependent(fold_dir) else sorted({u.spk for u in utts if u.spk in test_spks})
        if leak_u or leak_s:
            raise SerkitError(
                f"{fold_dir}: the training split shares {len(leak_u)} utterance(s) "
                f"{leak_u[:3]} and speaker(s) {leak_s[:5]} with the test split; the fold leaks: "
                "re-run `serkit split` (or pass --transductive deliberately)"
            )
    return utts, test_utts, test_spks


def sample_frames(
    reader: FeatureReader, utts: list[str], layer: int, max_frames: int, seed: int = 0
) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """A uniform random sample (without replacement) of at most ``max_frames`` frames of ``utts``.

    Returns ``(x (N, C) float32, keys)`` where ``keys[i] = (utt, frame index)`` of row i. Only the
    utterances in ``utts`` are read.
    """
    counts = np.array([reader.num_frames(u) for u in utts], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise SerkitError(f"{reader.path}: the fitting utterances have no frames")
    rng = np.random.default_rng(seed)
    if max_frames >= total:
        picks = np.arange(total)
    else:
        picks = np.sort(rng.choice(total, size=max_frames, replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    owner = np.searchsorted(starts, picks, side="right") - 1
    x = None
    keys: list[tuple[str, int]] = []
    row = 0
    for i in np.unique(owner):
        frames = picks[owner == i] - starts[i]
        feats = reader.load(utts[i], layers=[layer])[0]
        if x is None:
            x = np.empty((len(picks), feats.shape[1]), dtype=np.float32)
        x[row : row + len(frames)] = feats[frames]
        row += len(frames)
        keys.extend((utts[i], int(t)) for t in frames)
    return x, keys


def _digest(items: Iterable[str]) -> str:
    return hashlib.sha1("\n".join(sorted(items)).encode()).hexdigest()


def fit(
    feats: str | os.PathLike,
    fold: str | os.PathLike,
    out: str | os.PathLike,
    n_clusters: int,
    splits: Sequence[str] = ("train",),
    layer: int | None = None,
    max_frames: int = 250_000,
    backend: str = "faiss",
    transductive: bool = False,
    seed: int = 0,
    niter: int = 20,
    init_sample: int = 20_000,
) -> dict:
    """Fit k-means on frames of ``splits`` of ``fold`` (train only unless transductive); write ``out``."""
    from ..data.manifest import read_split
    from ..upstream.features import FeatureReader

    fold = Path(fold)
    reader = FeatureReader(feats)
    if layer is None:
        if len(reader.layers) != 1:
            raise SerkitError(f"{feats}: holds layers {reader.layers}; choose one with --layer")
        layer = reader.layers[0]
    if layer not in reader.layers:
        raise SerkitError(f"{feats}: layer {layer} was not dumped (stored: {reader.layers})")
    splits = list(splits)
    utts, test_utts, test_spks = _fold_guard(fold, splits, transductive)
    missing = [u.utt for u in utts if u.utt not in reader]
    if missing:
        raise SerkitError(
            f"{feats}: no features for {len(missing)} utterance(s) of {fold} {splits} "
            f"({missing[:3]}...); dump features for this data first"
        )
    x, keys = sample_frames(reader, [u.utt for u in utts], layer, max_frames, seed)
    # Which split each fitted frame came from (a transductive fit must show its held-out frames)
    split_of = {}
    for s in splits:
        for u in read_split(fold, s):
            split_of.setdefault(u.utt, s)
    sampled = {s: 0 for s in splits}
    for utt, _ in keys:
        sampled[split_of[utt]] += 1
    available = {s: 0 for s in splits}
    for u in utts:
        available[split_of[u.utt]] += reader.num_frames(u.utt)
    log.info(
        "k-means fit: %d frames sampled from %d utterances of %s (%s; layer %d, cap %d)",
        len(x),
        len({k for k, _ in keys}),
        fold,
        ", ".join(f"{s}: {sampled[s]} of {available[s]} frames" for s in splits),
        layer,
        max_frames,
    )
    t0 = time.perf_counter()
    if backend == "faiss":
        centroids, info = fit_faiss(x, n_clusters, seed=seed, niter=niter, init_sample=init_sample)
    elif backend == "sklearn":
        centroids, info = fit_sklearn(x, n_clusters, seed=seed)
    else:
        raise SerkitError(f"--backend {backend!r}: choose faiss or sklearn")
    seconds = time.perf_counter() - t0
    fit_inertia = inertia(x, centroids)
    fit_spks = sorted({u.spk for u in utts})
    meta = {
        "n_clusters": n_clusters,
        "dim": int(x.shape[1]),
        "layer": layer,
        "feats": str(Path(feats).resolve()),
        "upstream": reader.meta.get("upstream"),
        "fold": str(fold.resolve()),
        "splits": splits,
        "transductive": bool(transductive),
        "seed": seed,
        "max_frames": max_frames,
        "num_frames": len(x),
        "frames_per_split": sampled,
        "available_frames_per_split": available,
        "num_utterances": len(utts),
        "utterances_sha1": _digest(u.utt for u in utts),
        "speakers": fit_spks,
        "sees_test_audio": bool(
            transductive and ({u.utt for u in utts} & test_utts or set(fit_spks) & test_spks)
        ),
        "inertia": fit_inertia,
        "mean_sq_dist": fit_inertia / len(x),
        "fit_seconds": round(seconds, 3),
        **info,
    }
    buf = io.BytesIO()
    np.savez(buf, centroids=centroids, meta=np.array(json.dumps(meta)))
    with atomic_file(out, "wb") as f:
        f.write(buf.getvalue())
    log.info(
        "k-means fit: %s in %.1f s, mean squared distance %.4g -> %s",
        backend,
        seconds,
        meta["mean_sq_dist"],
        out,
    )
    return meta


def load_model(path: str | os.PathLike, external: bool = True) -> tuple[np.ndarray, dict]:
    """Centroids (K, D) float32 and the fit's description, from a serkit model (``.npz``) or a
    scikit-learn k-means pickle as published with fairseq's HuBERT / textless-NLP examples (read by
    :func:`serkit.cluster.external.read_sklearn_kmeans`, which executes nothing from the file; its
    ``meta`` has ``layer: None``, since the file does not say which layer it was fitted on).
    ``external=False`` accepts serkit's own models only."""
    path = Path(path)
    if not path.is_file():
        raise SerkitError(f"{path}: k-means model not found; run `serkit kmeans fit`")
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and external:  # not a zip (npz): the published sklearn models
        from .external import read_sklearn_kmeans

        centroids, info = read_sklearn_kmeans(path)
        return centroids, {**info, "layer": None, "transductive": False, "speakers": [], "splits": []}
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["centroids"].astype(np.float32), json.loads(str(z["meta"]))
    except (ValueError, KeyError, OSError) as e:
        raise SerkitError(f"{path}: not a serkit k-means model ({e})") from e


def apply(
    model: str | os.PathLike,
    feats: str | os.PathLike,
    fold: str | os.PathLike,
    out: str | os.PathLike,
    splits: Sequence[str] = ("train", "valid", "test"),
    layer: int | None = None,
) -> dict:
    """Write ``<split>.km``, ``dict.km.txt`` and ``km.json`` to ``out`` (see module docstring).

    ``layer``: the features' layer to label; required for a published sklearn model (the file does not
    record it), and must match a serkit model's own layer.
    """
    from ..data.manifest import read_split
    from ..upstream.features import FeatureReader

    centroids, meta = load_model(model)
    reader = FeatureReader(feats)
    fold, out = Path(fold), Path(out)
    if meta["layer"] is None:
        if layer is None:
            raise SerkitError(
                f"{model}: a published k-means model does not record its layer; pass --layer "
                "(fairseq's HuBERT-base km500 models: 9 for the second iteration, 6 for the first)"
            )
        meta = {**meta, "layer": int(layer)}
    elif layer is not None and int(layer) != meta["layer"]:
        raise SerkitError(f"{model}: fitted on layer {meta['layer']}, not --layer {layer}")
    layer = meta["layer"]
    if reader.dim != meta["dim"] or layer not in reader.layers:
        raise SerkitError(
            f"{feats}: features (layers {reader.layers}, dim {reader.dim}) do not match the "
            f"model {model} (layer {layer}, dim {meta['dim']})"
        )
    if not meta.get("transductive") and (fold / "test.tsv").is_file() and speaker_dependent(fold):
        # speakers are shared by design: the fitted utterances must be this fold's training split
        train = _digest(u.utt for u in read_split(fold, "train"))
        if meta.get("utterances_sha1") not in (None, train):
            raise SerkitError(
                f"{model}: fitted on utterances not on this fold's training split ({fold} shares speakers "
                "between train and test, so only its own training split is known to hold no test "
                "utterance); fit a model on this fold's training split"
            )
    elif not meta.get("transductive") and (fold / "test.tsv").is_file():
        test_spks = {u.spk for u in read_split(fold, "test")}
        shared = sorted(test_spks & set(meta.get("speakers", [])))
        if shared:
            raise SerkitError(
                f"{model}: fitted on speaker(s) {shared[:5]} of {fold}'s test split; fit a model "
                "on this fold's training split"
            )
    counts = np.zeros(len(centroids), dtype=np.int64)
    per_split = {}
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        utts = read_split(fold, split)
        with atomic_file(out / f"{split}.km", encoding="utf-8") as f:
            for u in utts:
                if u.utt not in reader:
                    raise SerkitError(
                        f"{feats}: no features for {u.utt} ({fold / (split + '.tsv')}); dump "
                        "features for every utterance of the fold"
                    )
                x = reader.load(u.utt, layers=[layer])[0]
                want = expected_frames(u.num_samples)
                if x.shape[0] != want:
                    raise SerkitError(
                        f"{feats}: {u.utt} has {x.shape[0]} frames, but {u.num_samples} samples "
                        f"make {want} at 50 Hz (fairseq's HubertDataset expects that many); "
                        "were the features dumped from other audio?"
                    )
                labels = assign(x, centroids) if len(x) else np.zeros(0, dtype=np.int64)
                counts += np.bincount(labels, minlength=len(centroids))
                f.write(" ".join(map(str, labels.tolist())) + "\n")
        per_split[split] = len(utts)
        log.info("k-means apply: %s.km: %d utterances -> %s", split, len(utts), out / f"{split}.km")
    with atomic_file(out / "dict.km.txt", encoding="utf-8") as f:
        f.write("".join(f"{i} {int(c)}\n" for i, c in enumerate(counts)))
    info = {
        "model": str(Path(model).resolve()),
        "feats": str(Path(feats).resolve()),
        "fold": str(fold.resolve()),
        "splits": per_split,
        "label_rate": LABEL_RATE,
        "n_clusters": len(centroids),
        "layer": layer,
        "transductive": bool(meta.get("transductive")),
        # the frames the k-means fit saw, per split of THIS fold (empty for a published model)
        "fit_splits": list(meta.get("splits", [])),
        "fit_frames_per_split": dict(meta.get("frames_per_split", {})),
        "fit": meta,
        "fairseq": {
            "task.data": str(fold.resolve()),
            "task.label_dir": str(out.resolve()),
            "task.labels": ["km"],
            "task.label_rate": LABEL_RATE,
        },
    }
    write_json(out / "km.json", info)
    return info
