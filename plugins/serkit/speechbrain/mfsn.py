"""Train MFSN (search, derive, retrain) or one of its ablations on one fold, from cached features.

Usage::

    python -m serkit.speechbrain.mfsn recipes/SAVEE/conf/mfsn.yaml --fold-dir FOLD \\
        --output-folder EXP/<run>/fold<k> --tec-feats TEC_DIR --sec-feats SEC_DIR \\
        [--ablation sec_only|sec_tec_nosearch|mfsn] [--key value ...]

``TEC_DIR`` and ``SEC_DIR`` are ``serkit dump-features`` outputs (a CTC-finetuned wav2vec 2.0 and a
data2vec audio model in the paper; they may be the same directory). ``tec_layer`` picks the TEC layer
(``last`` = the largest stored), ``sec_layers`` the early/middle/late SEC levels. Any key of the yaml can
be overridden with ``--key value`` (the value is read as YAML: ``--sec_layers [3,6,9]``).

Ablations (the paper's table):

``sec_only``
    SEC alone: a learned softmax-weighted sum of the SEC levels, projected, then the emotion head.
``sec_tec_nosearch``
    The same SEC mix fused with the detached TEC by a fixed ``concat_fc`` operation.
``mfsn``
    **Search**: ``search_epochs`` epochs of first-order DARTS. For every training mini-batch, first one
    architecture step on a mini-batch of the ``arch_data`` split (``valid``, as DARTS' held-out data;
    or ``train`` to keep the validation split for model selection only) updates only the architecture
    weights (SGD, ``arch_lr`` = 5 as in the paper, momentum ``arch_momentum``), then one weight step
    on the training mini-batch (AdamW) updates only the weights. The Choice Cell draws one SEC level
    per mini-batch. **Derive**: the Fusion Cell keeps its ``derive_top_k`` strongest operations; the
    Choice Cell keeps the level with the best validation UA (``uniform`` mode) or its argmax
    (``learned``). **Retrain**: a fresh model with the derived, fixed cell for ``number_of_epochs``.

Every (re)training epoch scores the valid and test splits: an utterance's prediction is the mean of its
3-second segments' log-probabilities. Writes ``<output_folder>/``: ``predictions/{valid,test}.epoch<NNN>.tsv``
(the retraining epochs; ``serkit score`` selects among them), ``train_info.json``, ``train_log.txt``,
``hyperparams.yaml`` (the resolved config), and for ``mfsn`` ``arch.txt`` (the derived cell),
``arch.json`` and ``search/log.jsonl`` (operation weights and validation UA per search epoch).
A run that finished with the same config is not repeated; a killed one, started again with the same
config, resumes after its last finished search or retraining epoch (``resume.pt``, see :class:`Resume`)
and ends exactly as an uninterrupted run would.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils import SerkitError, atomic_file, setup_logging, write_json

log = logging.getLogger("serkit.speechbrain.mfsn")

ABLATIONS = ("sec_only", "sec_tec_nosearch", "mfsn")
#: Keys given on the command line with their own flags; the yaml declares them as ``!PLACEHOLDER``.
PATH_KEYS = ("fold_dir", "output_folder", "tec_feats", "sec_feats")


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serkit.speechbrain.mfsn", allow_abbrev=False,
        description="MFSN search/derive/retrain (or an ablation) on one fold from cached TEC/SEC features. "
                    "Unknown --key value pairs override keys of the yaml.")
    p.add_argument("hparams", help="HyperPyYAML file, e.g. recipes/SAVEE/conf/mfsn.yaml")
    p.add_argument("--fold-dir", help="fold directory from `serkit split`")
    p.add_argument("--output-folder", help="where this fold's run goes, e.g. exp/mfsn/fold1")
    p.add_argument("--tec-feats", help="`serkit dump-features` output of the ASR (CTC) model")
    p.add_argument("--sec-feats", help="`serkit dump-features` output of the continuous (data2vec) model")
    p.add_argument("--ablation", choices=ABLATIONS, help="override the yaml's `ablation`")
    p.add_argument("--device", help="cpu or cuda[:N] (overrides the yaml)")
    return p


def _yaml_value(raw):
    """A command-line value read as YAML (``[3,6,9]``, ``5``, ``null``); non-strings pass through."""
    import yaml

    return yaml.safe_load(raw) if isinstance(raw, str) else raw


def _parse_overrides(rest: list[str]) -> dict:
    out, i = {}, 0
    while i < len(rest):
        key = rest[i]
        if not key.startswith("--") or "=" in key or i + 1 >= len(rest):
            raise SerkitError(f"override {key!r}: write `--key value` (keys of the yaml)")
        out[key[2:].replace("-", "_")] = rest[i + 1]
        i += 2
    return out


def load_hparams(path: str, overrides: dict) -> dict:
    """Read the yaml with HyperPyYAML (``!PLACEHOLDER``, ``!ref``) after applying ``overrides``."""
    from hyperpyyaml import load_hyperpyyaml

    path = Path(path)
    if not path.is_file():
        raise SerkitError(f"{path}: hparams file not found")
    text = path.read_text(encoding="utf-8")
    import yaml

    defaults = yaml.safe_load(text.replace("!PLACEHOLDER", "null")) or {}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise SerkitError(f"{path}: no key(s) {', '.join(unknown)} to override; known keys: "
                          f"{', '.join(sorted(defaults))}")
    # Text keys keep the text as given (a label such as "a: b" must not become a mapping).
    overrides = {k: (raw if isinstance(raw, str) and (k in PATH_KEYS or isinstance(defaults[k], str)) else
                     _yaml_value(raw)) for k, raw in overrides.items()}
    try:
        return dict(load_hyperpyyaml(text, overrides=overrides))
    except ValueError as e:  # an unfilled !PLACEHOLDER
        raise SerkitError(f"{path}: {e}; give it on the command line (--fold-dir, --output-folder, "
                          "--tec-feats, --sec-feats or --key value)") from None


# --------------------------------------------------------------------------------------------------
# data: cached TEC/SEC frames + waveform, cut into 3-second segments
# --------------------------------------------------------------------------------------------------
@dataclass
class Segment:
    utt_index: int
    start: int      # first sample
    frame0: int     # first SSL frame


class FoldData:
    """One split's utterances with their TEC/SEC frames and waveform, and their 3-second segments."""

    def __init__(self, utts, classes, tec_reader, sec_reader, tec_layer, sec_layers, hp, cache=True):
        self.utts = utts
        self.labels = [classes.index(u.emo) for u in utts]
        self.tec_reader, self.sec_reader = tec_reader, sec_reader
        self.tec_layer, self.sec_layers = tec_layer, sec_layers
        self.sample_rate = int(hp["sample_rate"])
        self.seg_samples = int(round(hp["segment_seconds"] * self.sample_rate))
        self.frame_rate = float(sec_reader.frame_rate)
        self.seg_frames = int(round(hp["segment_seconds"] * self.frame_rate))
        self.use_tec = tec_reader is not None
        self._cache: dict[int, tuple] = {} if cache else None
        from serkit.nn.coattention import segment_starts

        self.segments: list[Segment] = []
        for i, u in enumerate(utts):
            for s in segment_starts(u.num_samples, self.seg_samples):
                self.segments.append(Segment(i, s, int(round(s * self.frame_rate / self.sample_rate))))

    def item(self, i: int):
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        import soundfile as sf
        import torch

        u = self.utts[i]
        for reader in (self.sec_reader, self.tec_reader):
            if reader is not None and u.utt not in reader:
                raise SerkitError(f"{reader.path}: no features for utterance {u.utt!r} of {u.wav}; "
                                  "dump features for every split of the fold")
        sec = self.sec_reader.load(u.utt, layers=self.sec_layers)  # (L, T, C)
        tec = self.tec_reader.load(u.utt, layers=[self.tec_layer])[0] if self.use_tec else None
        T = sec.shape[1] if tec is None else min(sec.shape[1], tec.shape[0])
        if tec is not None and abs(sec.shape[1] - tec.shape[0]) > 2:
            raise SerkitError(f"{u.utt}: TEC has {tec.shape[0]} frames, SEC {sec.shape[1]}; both must come "
                              "from 50 Hz upstreams run on the same audio")
        wav, sr = sf.read(u.wav, dtype="float32", always_2d=True)
        if sr != self.sample_rate:
            raise SerkitError(f"{u.wav}: {sr} Hz, expected {self.sample_rate} Hz (run `serkit prepare`)")
        out = (torch.from_numpy(np.ascontiguousarray(sec[:, :T])).half(),
               None if tec is None else torch.from_numpy(np.ascontiguousarray(tec[:T])).half(),
               torch.from_numpy(np.ascontiguousarray(wav.mean(axis=1))))
        if self._cache is not None:
            self._cache[i] = out
        return out

    def collate(self, seg_ids: list[int]):
        """A batch of segments: sec (B, L, T, C), tec (B, T, C) or None, padding_mask, wav, lengths."""
        import torch

        secs, tecs, wavs = [], [], []
        for j in seg_ids:
            seg = self.segments[j]
            sec, tec, wav = self.item(seg.utt_index)
            f0 = min(seg.frame0, max(0, sec.shape[1] - 1))
            f1 = min(sec.shape[1], f0 + self.seg_frames)
            secs.append(sec[:, f0:f1])
            tecs.append(None if tec is None else tec[f0:f1])
            wavs.append(wav[seg.start:seg.start + self.seg_samples])
        B, T = len(seg_ids), max(s.shape[1] for s in secs)
        L, C = secs[0].shape[0], secs[0].shape[2]
        sec_b = torch.zeros(B, L, T, C)
        mask = torch.ones(B, T, dtype=torch.bool)
        tec_b = None if tecs[0] is None else torch.zeros(B, T, tecs[0].shape[1])
        wav_len = torch.tensor([w.shape[0] for w in wavs])
        wav_b = torch.zeros(B, int(wav_len.max()))
        for b, (s, t, w) in enumerate(zip(secs, tecs, wavs)):
            sec_b[b, :, : s.shape[1]] = s.float()
            mask[b, : s.shape[1]] = False
            if tec_b is not None:
                tec_b[b, : t.shape[0]] = t.float()
            wav_b[b, : w.shape[0]] = w
        labels = torch.tensor([self.labels[self.segments[j].utt_index] for j in seg_ids])
        utt_index = torch.tensor([self.segments[j].utt_index for j in seg_ids])
        return {"sec": sec_b, "tec": tec_b, "padding_mask": mask, "wav": wav_b, "wav_lengths": wav_len,
                "labels": labels, "utt_index": utt_index}

    def batches(self, batch_size: int, shuffle: bool, rng: random.Random | None = None):
        order = list(range(len(self.segments)))
        if shuffle:
            rng.shuffle(order)
        for k in range(0, len(order), batch_size):
            yield self.collate(order[k:k + batch_size])


def _resolve_layer(reader, spec, what: str) -> int:
    if spec in (None, "last"):
        return max(reader.layers)
    layer = int(spec)
    if layer not in reader.layers:
        raise SerkitError(f"{reader.path}: {what} layer {layer} not stored (stored: {reader.layers}); "
                          "dump it with `serkit dump-features --layers ...` or change the option")
    return layer


# --------------------------------------------------------------------------------------------------
# model, steps and evaluation
# --------------------------------------------------------------------------------------------------
def build_model(hp: dict, sec_dim: int, tec_dim: int, num_classes: int, arch: dict | None = None):
    from serkit.nn.coattention import CoAttentionHead, MeanPoolHead
    from serkit.nn.mfsn import MFSN

    dim = int(hp["fusion_dim"])
    if hp["emotion_head"] == "coattention":
        head = CoAttentionHead(
            dim, num_classes, sample_rate=int(hp["sample_rate"]), n_fft=int(hp["n_fft"]),
            hop_length=int(hp["hop_length"]), n_mfcc=int(hp["n_mfcc"]), n_mels=int(hp["n_mels"]),
            cnn=hp["cnn"], cnn_channels=tuple(hp["cnn_channels"]), pretrained_cnn=hp["pretrained_cnn"],
            lstm_hidden=int(hp["lstm_hidden"]), attn_dim=int(hp["attn_dim"]),
            dropout=float(hp["head_dropout"]))
    elif hp["emotion_head"] == "meanpool":
        head = MeanPoolHead(dim, num_classes)
    else:
        raise SerkitError(f"emotion_head {hp['emotion_head']!r}: choose coattention or meanpool")
    return MFSN(sec_dim, tec_dim, len(hp["sec_layers"]), head, variant=hp["ablation"], dim=dim,
                ops=list(hp["fusion_ops"]), choice_mode=hp["choice_mode"], num_heads=int(hp["num_heads"]),
                dropout=float(hp["dropout"]), arch=arch)


def _forward(model, batch, device, level=None):
    t = lambda x: None if x is None else x.to(device)
    extra = {"tec_padding_mask": t(batch["tec_padding_mask"])} if "tec_padding_mask" in batch else {}
    return model(t(batch["sec"]), t(batch["tec"]), t(batch["padding_mask"]), level=level,
                 wav=t(batch["wav"]), wav_lengths=t(batch["wav_lengths"]), **extra)


def evaluate(model, data: FoldData, batch_size: int, device, level=None):
    """Per-utterance probabilities (U, K): softmax of the mean of the segments' log-probabilities."""
    import torch

    from serkit.nn.coattention import aggregate_segments

    model.eval()
    logits, index = [], []
    with torch.no_grad():
        for batch in data.batches(batch_size, shuffle=False):
            logits.append(_forward(model, batch, device, level=level).float().cpu())
            index.append(batch["utt_index"])
    logp = aggregate_segments(torch.cat(logits), torch.cat(index), len(data.utts))
    return torch.softmax(logp, dim=-1).numpy()


def _ua(data: FoldData, probs, classes) -> float:
    from serkit.metrics import compute_metrics

    labels = [classes[i] for i in data.labels]
    preds = [classes[i] for i in probs.argmax(1)]
    return float(compute_metrics(labels, preds, classes)["ua"])


def write_predictions(path: Path, data: FoldData, probs, classes) -> None:
    """``utt label pred <class probabilities>`` rows in the split's order (docs/interfaces.md)."""
    with atomic_file(path, encoding="utf-8") as f:
        f.write("\t".join(["utt", "label", "pred", *classes]) + "\n")
        for u, y, p in zip(data.utts, data.labels, probs):
            f.write("\t".join([u.utt, classes[y], classes[int(p.argmax())], *(f"{x:.6f}" for x in p)]) + "\n")


def train_epoch(model, data: FoldData, hp: dict, device, opt_w, rng, opt_a=None, arch_data=None) -> dict:
    """One epoch; with ``opt_a``, a first-order DARTS architecture step before each weight step."""
    import torch
    import torch.nn.functional as F

    model.train()
    arch_iter = None
    total, n, arch_total = 0.0, 0, 0.0
    w_params = model.weight_parameters()
    for batch in data.batches(int(hp["batch_size"]), shuffle=True, rng=rng):
        if opt_a is not None:
            if arch_iter is None:
                arch_iter = arch_data.batches(int(hp["batch_size"]), shuffle=True, rng=rng)
            abatch = next(arch_iter, None)
            if abatch is None:
                arch_iter = arch_data.batches(int(hp["batch_size"]), shuffle=True, rng=rng)
                abatch = next(arch_iter)
            opt_a.zero_grad(set_to_none=True)
            aloss = F.cross_entropy(_forward(model, abatch, device), abatch["labels"].to(device))
            aloss.backward()
            opt_a.step()
            arch_total += aloss.item()
        opt_w.zero_grad(set_to_none=True)
        loss = F.cross_entropy(_forward(model, batch, device), batch["labels"].to(device))
        loss.backward()
        # The architecture step's gradients must not leak into the weight step (and vice versa).
        for p in model.arch_parameters():
            p.grad = None
        if hp["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(w_params, float(hp["max_grad_norm"]))
        opt_w.step()
        total += loss.item() * batch["labels"].shape[0]
        n += batch["labels"].shape[0]
    return {"train_loss": total / max(1, n), **({"arch_loss": arch_total} if opt_a is not None else {})}


def _optimizers(model, hp):
    import torch

    opt_w = torch.optim.AdamW(model.weight_parameters(), lr=float(hp["lr"]),
                              weight_decay=float(hp["weight_decay"]))
    arch = model.arch_parameters()
    opt_a = torch.optim.SGD(arch, lr=float(hp["arch_lr"]), momentum=float(hp["arch_momentum"]),
                            weight_decay=float(hp["arch_weight_decay"])) if arch else None
    return opt_w, opt_a


def _seed(seed: int) -> random.Random:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return random.Random(seed)


def _feature_label(reader, layers) -> str:
    name = Path(str(reader.meta.get("upstream", "?"))).name
    return f"{reader.meta.get('kind', '?')} {name} L{','.join(str(x) for x in layers)}"


class AudioTEC:
    """TEC from cached features of the ASR model (the paper's setting); detached before fusion.

    The text ablation (:mod:`serkit.speechbrain.mfsn_text`) plugs another TEC source into :func:`run`
    with the same four methods.
    """

    def setup(self, hp: dict, train_utts, out: Path) -> None:
        from serkit.upstream.features import FeatureReader

        if hp["ablation"] != "sec_only" and not hp["tec_feats"]:
            raise SerkitError(f"ablation {hp['ablation']} needs TEC features: give --tec-feats (a dump of "
                              "the CTC-finetuned wav2vec 2.0), or use --ablation sec_only")
        self.reader = FeatureReader(hp["tec_feats"]) if hp["ablation"] != "sec_only" else None
        self.layer = _resolve_layer(self.reader, hp["tec_layer"], "TEC") if self.reader else None

    def fold_data(self, utts, classes, sec_reader, sec_layers, hp) -> FoldData:
        return FoldData(utts, classes, self.reader, sec_reader, self.layer, sec_layers, hp,
                        cache=bool(hp["cache_in_memory"]))

    def build_model(self, hp: dict, sec_dim: int, num_classes: int, arch: dict | None = None):
        return build_model(hp, sec_dim, self.reader.dim if self.reader else 1, num_classes, arch=arch)

    def describe(self, hp: dict) -> tuple[dict | None, str]:
        """(the ``sources["tec"]`` entry of train_info.json, the table label), or (None, "") without TEC."""
        if self.reader is None:
            return None, ""
        return ({"feats": str(hp["tec_feats"]), "upstream": self.reader.meta.get("upstream"),
                 "kind": self.reader.meta.get("kind"), "layer": self.layer, "detached": True},
                f" + TEC {_feature_label(self.reader, [self.layer])}")


def _inputs_fingerprint(hp: dict) -> str:
    """md5 of the fold's split files and the feature indexes: a re-split or re-dump is a new run."""
    import hashlib

    md5 = hashlib.md5()
    fold = Path(hp["fold_dir"])
    files = [fold / f"{s}.{e}" for s in ("train", "valid", "test") for e in ("tsv", "emo")]
    files += [Path(d) / "feats.scp" for d in {hp["sec_feats"], hp["tec_feats"]} if d]
    for f in files:
        md5.update(f.read_bytes() if f.is_file() else b"-")
    return md5.hexdigest()


class Resume:
    """A fold's per-epoch resume state, ``<output_folder>/resume.pt``, written atomically after every
    search and retraining epoch: weights, optimisers, scheduler, every random generator, the search log
    so far and (in retraining) the derived architecture. A killed run started again with the same
    config continues after the last finished epoch and ends exactly as an uninterrupted run would;
    another config starts over. Removed when the fold finishes.
    """

    def __init__(self, out: Path, config_key: dict):
        import hashlib

        self.path = out / "resume.pt"
        self.key = hashlib.md5(json.dumps(config_key, sort_keys=True).encode()).hexdigest()

    def load(self) -> dict | None:
        import torch

        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise SerkitError(f"{self.path}: unreadable resume state ({type(e).__name__}: {e}); remove it to "
                              "restart this fold from scratch") from e
        if state.get("key") != self.key:
            log.info("%s: written with another config; starting over", self.path)
            return None
        log.info("%s: resuming after %s epoch %d", self.path, state["phase"], state["epoch"])
        return state

    def save(self, phase: str, epoch: int, model, optimizers: dict, rng: random.Random, **extra) -> None:
        import torch

        state = {"key": self.key, "phase": phase, "epoch": epoch, "model": model.state_dict(),
                 "optimizers": {k: o.state_dict() for k, o in optimizers.items() if o is not None},
                 "rng": {"local": rng.getstate(), "python": random.getstate(), "numpy": np.random.get_state(),
                         "torch": torch.get_rng_state()}, **extra}
        with atomic_file(self.path, "wb") as f:
            torch.save(state, f)

    @staticmethod
    def restore(state: dict, model, optimizers: dict, rng: random.Random) -> None:
        import torch

        model.load_state_dict(state["model"])
        for k, o in optimizers.items():
            if o is not None:
                o.load_state_dict(state["optimizers"][k])
        rng.setstate(state["rng"]["local"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def run(hp: dict, hparams_path: str, tec: AudioTEC | None = None) -> dict:
    import torch

    from serkit.data.manifest import read_classes, read_split
    from serkit.upstream.features import FeatureReader

    ablation = hp["ablation"]
    if ablation not in ABLATIONS:
        raise SerkitError(f"ablation {ablation!r}: choose from {', '.join(ABLATIONS)}")
    out = Path(hp["output_folder"])
    fold_dir = Path(hp["fold_dir"])
    config_key = json.loads(json.dumps({k: v for k, v in hp.items() if not k.startswith("__")}, default=str))
    config_key["inputs_md5"] = _inputs_fingerprint(hp)
    info_path = out / "train_info.json"
    if info_path.is_file():
        old = json.loads(info_path.read_text(encoding="utf-8"))
        if old.get("finished") and old.get("hparams_resolved") == config_key:
            log.info("%s: finished earlier with the same config; nothing to do", out)
            return old
    out.mkdir(parents=True, exist_ok=True)
    resume = Resume(out, config_key)
    state = resume.load()
    done = state["epoch"] if state and state["phase"] == "retrain" else 0
    for old_pred in (out / "predictions").glob("*.tsv") if (out / "predictions").is_dir() else []:
        # a differently-configured run must not mix epochs; a resumed one keeps its finished epochs
        if int(old_pred.stem.rsplit("epoch", 1)[1]) > done:
            old_pred.unlink()
    with atomic_file(out / "hyperparams.yaml", encoding="utf-8") as f:
        import yaml

        yaml.safe_dump(config_key, f, sort_keys=False)

    device = torch.device(hp["device"])
    if int(hp["num_threads"]) > 0:
        # On a shared CPU, torch's default (one thread per core) can be 20x slower than one thread.
        torch.set_num_threads(int(hp["num_threads"]))
    rng = _seed(int(hp["seed"]))
    classes = read_classes(fold_dir)
    sec_reader = FeatureReader(hp["sec_feats"])
    sec_layers = [_resolve_layer(sec_reader, x, "SEC") for x in hp["sec_layers"]]
    tec = tec or AudioTEC()
    splits = {s: read_split(fold_dir, s) for s in ("train", "valid", "test")}
    tec.setup(hp, splits["train"], out)
    fold_info = json.loads((fold_dir / "fold.json").read_text(encoding="utf-8")) \
        if (fold_dir / "fold.json").is_file() else {}

    data = {s: tec.fold_data(utts, classes, sec_reader, sec_layers, hp) for s, utts in splits.items()}
    for s, d in data.items():
        log.info("%s: %d utterances, %d segments of %.1f s", s, len(d.utts), len(d.segments),
                 hp["segment_seconds"])
    sources = {"sec": {"feats": str(hp["sec_feats"]), "upstream": sec_reader.meta.get("upstream"),
                       "kind": sec_reader.meta.get("kind"), "layers": sec_layers}}
    tec_entry, tec_label = tec.describe(hp)
    if tec_entry:
        sources["tec"] = tec_entry
    label = hp["sources_label"] or ("SEC " + _feature_label(sec_reader, sec_layers) + tec_label)
    info = {
        "method": hp["method"], "setting": ablation, "ablation": ablation,
        "corpus": fold_info.get("corpus"), "protocol": fold_info.get("protocol"),
        "fold": fold_info.get("fold"), "upstream": label, "sources": sources, "classes": classes,
        "selection": hp["selection"], "headline": hp["headline"], "config": str(hparams_path),
        "note": hp["note"] or None, "finished": False,
    }
    write_json(info_path, info)
    train_log = open(out / "train_log.txt", "a", encoding="utf-8")

    def log_line(msg: str) -> None:
        log.info("%s", msg)
        train_log.write(msg + "\n")
        train_log.flush()

    t_start = time.time()
    arch = state.get("arch") if state else None
    if ablation == "mfsn":
        if arch is None:  # not resuming into retraining
            def make_model(a=None):
                return tec.build_model(hp, sec_reader.dim, len(classes), a)

            arch = search(hp, data, classes, make_model, device, rng, out, log_line, resume, state)
            state = None
        info["arch"] = arch
        # Retraining starts from a fresh initialisation with the derived, fixed cell.
        if state is None:
            rng = _seed(int(hp["seed"]) + 1)

    model = tec.build_model(hp, sec_reader.dim, len(classes), arch=arch).to(device)
    opt_w, _ = _optimizers(model, hp)
    epochs = int(hp["number_of_epochs"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_w, T_max=max(1, epochs))
    if state is not None and state["phase"] == "retrain":
        Resume.restore(state, model, {"weights": opt_w, "sched": sched}, rng)
    for epoch in range(done + 1, epochs + 1):
        t0 = time.time()
        stats = train_epoch(model, data["train"], hp, device, opt_w, rng)
        sched.step()
        uas = {}
        for split in ("valid", "test"):
            probs = evaluate(model, data[split], int(hp["batch_size"]), device)
            pred_path = out / "predictions" / f"{split}.epoch{epoch:03d}.tsv"
            write_predictions(pred_path, data[split], probs, classes)
            uas[split] = _ua(data[split], probs, classes)
        log_line(f"epoch {epoch:03d} train_loss {stats['train_loss']:.4f} valid_UA {100 * uas['valid']:.2f} "
                 f"({time.time() - t0:.1f} s)")
        resume.save("retrain", epoch, model, {"weights": opt_w, "sched": sched}, rng, arch=arch)
    info.update(finished=True, seconds=round(time.time() - t_start, 1),
                num_parameters=sum(p.numel() for p in model.parameters()),
                hparams_resolved=config_key)
    write_json(info_path, info)
    resume.clear()
    train_log.close()
    return info


def search(hp, data, classes, make_model, device, rng, out: Path, log_line, resume: Resume | None = None,
           state: dict | None = None) -> dict:
    """First-order DARTS over the Choice and Fusion Cells; returns the derived architecture.

    With ``resume``, the state is saved after every epoch; a ``state`` of the search phase continues it.
    """
    model = make_model().to(device)
    opt_w, opt_a = _optimizers(model, hp)
    optimizers = {"weights": opt_w, "arch": opt_a}
    arch_split = hp["arch_data"]
    if arch_split not in ("valid", "train"):
        raise SerkitError(f"arch_data {arch_split!r}: choose valid or train")
    search_dir = out / "search"
    search_dir.mkdir(parents=True, exist_ok=True)
    entries, first = [], 1
    if state is not None and state["phase"] == "search":
        Resume.restore(state, model, optimizers, rng)
        entries, first = list(state["entries"]), state["epoch"] + 1
    for epoch in range(first, int(hp["search_epochs"]) + 1):
        t0 = time.time()
        stats = train_epoch(model, data["train"], hp, device, opt_w, rng, opt_a=opt_a,
                            arch_data=data[arch_split])
        probs = evaluate(model, data["valid"], int(hp["batch_size"]), device)
        entry = {"epoch": epoch, **stats, "valid_ua": _ua(data["valid"], probs, classes),
                 "op_weights": model.fusion.op_weights(),
                 "level_probs": [float(p) for p in model.choice.probabilities()]}
        entries.append(entry)
        best = max(entry["op_weights"], key=entry["op_weights"].get)
        log_line(f"search {epoch:03d} train_loss {stats['train_loss']:.4f} "
                 f"valid_UA {100 * entry['valid_ua']:.2f} "
                 f"top op {best} ({entry['op_weights'][best]:.3f}) ({time.time() - t0:.1f} s)")
        if resume is not None:
            resume.save("search", epoch, model, optimizers, rng, entries=entries)
    with atomic_file(search_dir / "log.jsonl", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e) + "\n")
    level_scores = None
    if model.choice.mode == "uniform":
        # Nothing learned about the levels: score each with the shared weights on validation.
        bs = int(hp["batch_size"])
        level_scores = [_ua(data["valid"], evaluate(model, data["valid"], bs, device, level=lv), classes)
                        for lv in range(model.num_levels)]
    arch = model.derive(level_scores=level_scores, top_k=int(hp["derive_top_k"]))
    arch["sec_layer"] = hp["sec_layers"][arch["sec_level"]]
    write_json(out / "arch.json", arch)
    lines = [f"sec_level: {arch['sec_level']} (layer {arch['sec_layer']} of {list(hp['sec_layers'])}; "
             f"choice mode {hp['choice_mode']})",
             f"fusion_ops: {', '.join(arch['fusion_ops'])}",
             "op_weights: " + ", ".join(f"{k}={v:.3f}" for k, v in
                                        sorted(arch["op_weights"].items(), key=lambda kv: -kv[1]))]
    if level_scores:
        lines.append("level_valid_ua: " + ", ".join(f"{s:.4f}" for s in level_scores))
    with atomic_file(out / "arch.txt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    log_line("derived: " + " | ".join(lines))
    return {"sec_level": arch["sec_level"], "fusion_ops": arch["fusion_ops"], "sec_layer": arch["sec_layer"]}


def hparams_from_args(args: argparse.Namespace, rest: list[str]) -> dict:
    """The resolved config of a :func:`build_parser` command line (``rest``: the ``--key value`` pairs)."""
    overrides = _parse_overrides(rest)
    for key in PATH_KEYS:
        value = getattr(args, key)
        if value is not None:
            overrides[key] = str(Path(value).absolute())
    if args.ablation:
        overrides["ablation"] = args.ablation
    if args.device:
        overrides["device"] = args.device
    return load_hparams(args.hparams, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    setup_logging()
    try:
        run(hparams_from_args(args, rest), args.hparams)
    except SerkitError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
