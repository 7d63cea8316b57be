"""MFSN through ``serkit train``: 3-second segment datasets, :class:`MFSNBrain` and inference.

MFSN (:mod:`serkit.nn.mfsn`) trains like every other serkit head, with ``serkit train`` and
:class:`~serkit.speechbrain.brain.SERBrain` (resume, LR schedule, train log, predictions, checkpoints);
its yaml names this module's pieces::

    brain_class: !name:serkit.speechbrain.mfsn.MFSNBrain
    fold_datasets: !name:serkit.speechbrain.mfsn.segment_datasets   # + its options
    classifier: !name:serkit.speechbrain.mfsn.load_classifier       # serkit predict / EmotionClassifier

The search and the retraining are two calls, as BAS's (``recipes/SAVEE/run.sh``)::

    # 1. search (arch: null): first-order DARTS, then derive -> <search>/arch.txt ("<sec_level>:<op>")
    serkit train mfsn --fold-dir FOLD --output-folder EXP/mfsn_search/fold1 \\
        --feats SEC_FEATS --tec_feats TEC_FEATS
    # 2. retrain the derived cell from scratch
    serkit train mfsn --fold-dir FOLD --output-folder EXP/mfsn/fold1 \\
        --feats SEC_FEATS --tec_feats TEC_FEATS --arch "$(cat EXP/mfsn_search/fold1/arch.txt)"
    # the paper's ablations (one call each)
    serkit train mfsn ... --ablation sec_only      # or sec_tec_nosearch

``--feats`` is the SEC dump (data2vec in the paper), ``tec_feats`` the TEC dump (a CTC-finetuned
wav2vec 2.0); they may be one directory. ``sec_layers`` are the early/middle/late SEC levels (the last
one is the SEC stream), ``tec_layer`` the TEC layer (``last``: the largest stored).

**Segments.** Every dataset item is a 3-second segment of an utterance (MFSN Sec. 5.1, after
Zou et al.): its SEC levels and TEC frames, and its waveform for the spectrogram and MFCC branches.
Validation and test rows are utterances: an utterance's probabilities are the softmax of the mean of
its segments' log-probabilities, written to ``predictions/{valid,test}.epoch<NNN>.tsv`` as for any head.

**Batching** (``batching``, as every SERBrain trainer's): each segment carries its ``duration`` (3 s, or
the utterance's length when it is shorter), so ``dynamic`` puts segments of similar duration together
(SpeechBrain's ``DynamicBatchSampler``; evaluation batches in ascending duration) and ``random`` draws
batches of ``batch_size`` at random. The paper states no batching (Sec. 5.1 gives the 3-second segments
only). The search's architecture batches follow the same rule. On IEMOCAP's durations random batches of
segments pad 5.6 %, dynamic ones 1.2 % (``bench/bench_batching.py``): most segments are 3 s long.

**Search** (the model has architecture weights): for every training mini-batch, first one architecture
step on a mini-batch of the ``arch_data`` split (``valid``, DARTS' held-out data, or ``train``) updates
only the architecture weights (``arch_opt_class``: SGD lr 5 as in the paper), then SERBrain's weight
step on the training mini-batch updates only the weights (first-order DARTS). The architecture
batches are drawn in an order fixed by ``seed`` and the epoch, so a resumed epoch sees the same ones.
Each epoch appends the operation weights, level probabilities and validation UA to
``search_log.jsonl``. At the end the Fusion Cell keeps its ``derive_top_k`` strongest operations and
the Choice Cell the level with the best validation UA (``uniform``) or its argmax (``learned``):
``arch.json`` and ``arch.txt``.

**Text ablation** (serkit's, not the paper's): ``text`` (a ``utt words...`` file) or ``ctc_checkpoint``
+ ``ctc_dict`` (greedy CTC transcripts of the cached TEC layer) make TEC a transcript, tokenised by a
sentencepiece model trained on the fold's training transcripts only (``text_sp.model``), encoded by
:class:`serkit.nn.mfsn.TextMFSN`. See :data:`LEAK_WARNING`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import if_main_process

from ..utils import SerkitError, atomic_file, read_map, write_json
from .brain import SERBrain, read_search_log
from .lobes import relative_lengths_to_padding_mask

if TYPE_CHECKING:
    from sentencepiece import SentencePieceProcessor
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.dataio.dataset import DynamicItemDataset
    from speechbrain.utils.checkpoints import Checkpointer
    from speechbrain.utils.run_opts import RunOptions
    from torch.utils.data import DataLoader, Dataset

    from ..nn.mfsn import MFSN, TextMFSN
    from ..upstream.base import Upstream
    from ..upstream.features import FeatureReader
    from .lobes import FairseqUpstream

    PathLike = str | os.PathLike
    Prediction = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]

log = logging.getLogger("serkit.speechbrain")

LEAK_WARNING = (
    "TEXT LEAK: IEMOCAP's scripted sentences repeat across sessions (SAVEE's sentence lists "
    "are chosen per emotion and shared by its speakers); a text branch can recognise a "
    "sentence seen in training. Not comparable with audio-only results."
)


# --------------------------------------------------------------------------------------------------
# yaml helpers
# --------------------------------------------------------------------------------------------------
def feature_dim(feats: PathLike | None, upstream: PathLike | None = None) -> int:
    """Channels of a ``serkit dump-features`` directory, else of the ``upstream`` checkpoint (the
    waveform path), else 1 (``sec_only`` has no TEC)."""
    if not feats:
        if upstream:
            from serkit.upstream import load_upstream

            return int(load_upstream(str(upstream), device="cpu").dim)
        return 1
    meta = Path(feats) / "meta.json"
    if not meta.is_file():
        raise SerkitError(f"{meta}: not found; tec_feats must be a `serkit dump-features` output")
    return int(json.loads(meta.read_text(encoding="utf-8"))["dim"])


def phase_epochs(ablation: str, arch: str | None, search_epochs: int, train_epochs: int) -> int:
    """Epochs of this call: ``search_epochs`` for the MFSN search (``arch`` null), else ``train_epochs``."""
    return int(search_epochs) if ablation == "mfsn" and not arch else int(train_epochs)


# --------------------------------------------------------------------------------------------------
# transcripts (text ablation)
# --------------------------------------------------------------------------------------------------
def ctc_greedy_transcripts(
    checkpoint: PathLike, dict_path: PathLike, reader: FeatureReader, layer: int, utts: list[str]
) -> dict[str, str]:
    """Greedy CTC transcripts from a CTC-finetuned model's cached last layer (:mod:`serkit.upstream.ctc`)."""
    from serkit.upstream.ctc import greedy_transcripts

    return greedy_transcripts(checkpoint, dict_path, reader, layer, utts)


def _sentencepiece(train: dict[str, str], prefix: Path, vocab_size: int) -> SentencePieceProcessor:
    """A unigram sentencepiece model on the training split's transcripts ``{utt: text}`` only, reused when
    the same transcripts trained it before (a resumed run); they are kept in ``transcripts.train.txt``."""
    import sentencepiece as spm

    prefix.parent.mkdir(parents=True, exist_ok=True)
    texts = list(train.values())
    corpus = "".join(f"{utt} {text}\n" for utt, text in train.items())
    stamp = prefix.parent / "transcripts.train.txt"
    model = Path(str(prefix) + ".model")
    if not (model.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == corpus):
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([t for t in texts if t.strip()] or ["<empty>"]),
            model_prefix=str(prefix),
            vocab_size=int(vocab_size),
            model_type="unigram",
            character_coverage=1.0,
            hard_vocab_limit=False,
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            minloglevel=2,
        )
        with atomic_file(stamp, encoding="utf-8") as f:
            f.write(corpus)
    return spm.SentencePieceProcessor(model_file=str(model))


# --------------------------------------------------------------------------------------------------
# datasets: 3-second segments with their SEC/TEC frames and waveform
# --------------------------------------------------------------------------------------------------
def resolve_layer_list(lobe: FairseqUpstream, specs: Iterable[int | str | None]) -> list[int]:
    """Layer numbers of a FairseqUpstream lobe for ``specs`` (ints or ``last``), each checked."""
    out = []
    for spec in specs:
        layer = lobe.upstream.num_layers if spec in (None, "last") else int(spec)
        if layer not in lobe.layers:
            raise SerkitError(
                f"{lobe.path}: layer {layer} not available (layers {lobe.layers}); give upstream_layers: all"
            )
        out.append(layer)
    return out


def _resolve_layer(reader: FeatureReader, spec: int | str | None, what: str) -> int:
    if spec in (None, "last"):
        return max(reader.layers)
    layer = int(spec)
    if layer not in reader.layers:
        raise SerkitError(
            f"{reader.path}: {what} layer {layer} not stored (stored: {reader.layers}); "
            "dump it with `serkit dump-features --layers ...` or change the option"
        )
    return layer


class _Frames:
    """Per-utterance SEC levels, TEC frames and waveform, cut to a common length (cached on request)."""

    def __init__(
        self,
        sec_reader: FeatureReader,
        sec_layers: list[int],
        tec_reader: FeatureReader | None,
        tec_layer: int | None,
        sample_rate: int,
        cache: bool,
    ) -> None:
        self.sec_reader, self.sec_layers = sec_reader, sec_layers
        self.tec_reader, self.tec_layer = tec_reader, tec_layer
        self.sample_rate = sample_rate
        self.cache: dict | None = {} if cache else None

    def __call__(self, utt: str, wav_path: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if self.cache is not None and utt in self.cache:
            return self.cache[utt]
        import soundfile as sf

        for reader in (self.sec_reader, self.tec_reader):
            if reader is not None and utt not in reader:
                raise SerkitError(
                    f"{reader.path}: no features for utterance {utt!r} of {wav_path}; "
                    "dump features for every split of the fold"
                )
        sec = self.sec_reader.load(utt, layers=self.sec_layers)  # (L, T, C)
        tec = self.tec_reader.load(utt, layers=[self.tec_layer])[0] if self.tec_reader is not None else None
        T = sec.shape[1] if tec is None else min(sec.shape[1], tec.shape[0])
        if tec is not None and abs(sec.shape[1] - tec.shape[0]) > 2:
            raise SerkitError(
                f"{utt}: TEC has {tec.shape[0]} frames, SEC {sec.shape[1]}; both must come "
                "from 50 Hz upstreams run on the same audio"
            )
        wav, sr = sf.read(wav_path, dtype="float32", always_2d=True)
        if sr != self.sample_rate:
            raise SerkitError(f"{wav_path}: {sr} Hz, expected {self.sample_rate} Hz (run `serkit prepare`)")
        out = (
            torch.from_numpy(np.ascontiguousarray(sec[:, :T])).half(),
            None if tec is None else torch.from_numpy(np.ascontiguousarray(tec[:T])).half(),
            torch.from_numpy(np.ascontiguousarray(wav.mean(axis=1))),
        )
        if self.cache is not None:
            self.cache[utt] = out
        return out


def segment_datasets(
    fold_dir: PathLike,
    reader: FeatureReader | None,
    *,
    sec_layers: Sequence[int | str],
    tec_feats: PathLike | None = None,
    tec_layer: int | str = "last",
    ablation: str = "mfsn",
    segment_seconds: float = 3.0,
    sample_rate: int = 16000,
    cache_in_memory: bool = True,
    text: PathLike | None = None,
    ctc_checkpoint: PathLike | None = None,
    ctc_dict: PathLike | None = None,
    text_vocab_size: int = 500,
    output_folder: PathLike | None = None,
) -> tuple[dict[str, DynamicItemDataset], list[str]]:
    """``({split: DynamicItemDataset of 3-second segments}, classes)`` for MFSN (see the module docstring).

    ``reader`` is the SEC ``FeatureReader`` (``serkit train --feats``). Items: ``id`` (``utt#k``),
    ``utt``, ``label``, ``sec`` (T, L, C), ``tec`` (T, C) or transcript piece ids (N,), ``sig`` (S,).
    """
    from serkit.data.manifest import read_classes, read_split
    from serkit.nn.coattention import segment_starts
    from serkit.upstream.features import FeatureReader

    from .dataio import label_encoder

    fold_dir = Path(fold_dir)
    classes = read_classes(fold_dir)
    if reader is None:  # `serkit train --upstream SEC_CKPT`: the encoders run on the segments' waveforms
        return _waveform_segments(
            fold_dir, classes, ablation, float(segment_seconds), int(sample_rate), text or ctc_checkpoint
        ), classes
    sec_levels = [_resolve_layer(reader, x, "SEC") for x in sec_layers]
    text_mode = bool(text) or bool(ctc_checkpoint)
    if text and ctc_checkpoint:
        raise SerkitError(
            "give either text (transcripts) or ctc_checkpoint with ctc_dict (greedy ASR "
            "transcripts), not both"
        )
    if ctc_checkpoint and not ctc_dict:
        raise SerkitError("ctc_checkpoint needs ctc_dict (the dict.ltr.txt it was trained with)")
    tec_reader = tec_level = None
    if ablation != "sec_only" and (not text_mode or ctc_checkpoint):
        if not tec_feats:
            raise SerkitError(
                f"ablation {ablation} needs TEC features: give --tec_feats (a dump of the "
                "CTC-finetuned wav2vec 2.0), or use --ablation sec_only"
            )
        tec_reader = FeatureReader(tec_feats)
        tec_level = _resolve_layer(tec_reader, tec_layer, "TEC")
    splits = {s: read_split(fold_dir, s) for s in ("train", "valid", "test")}

    pieces = None
    if text_mode and ablation != "sec_only":
        if text:
            transcripts = read_map(text)
            missing = [u.utt for us in splits.values() for u in us if u.utt not in transcripts]
            if missing:
                raise SerkitError(
                    f"{text}: no transcript for {len(missing)} utterance(s), e.g. "
                    f"{missing[:3]}; the text ablation needs one per utterance"
                )
        else:
            transcripts = ctc_greedy_transcripts(
                ctc_checkpoint, ctc_dict, tec_reader, tec_level, [u.utt for us in splits.values() for u in us]
            )
        if output_folder is None:
            raise SerkitError("the text ablation needs output_folder (where the tokenizer is written)")
        # The tokenizer sees the training split only.
        sp = _sentencepiece(
            {u.utt: transcripts[u.utt] for u in splits["train"]},
            Path(output_folder) / "text_sp",
            int(text_vocab_size),
        )
        if sp.get_piece_size() > int(text_vocab_size):
            raise SerkitError(
                f"sentencepiece made {sp.get_piece_size()} pieces > text_vocab_size "
                f"{text_vocab_size}; raise text_vocab_size"
            )
        pieces = {u.utt: (sp.encode(transcripts[u.utt]) or [1]) for us in splits.values() for u in us}
        tec_reader = None  # the text replaces the frames

    frames = _Frames(reader, sec_levels, tec_reader, tec_level, int(sample_rate), bool(cache_in_memory))
    seg_samples = int(round(float(segment_seconds) * int(sample_rate)))
    frame_rate = float(reader.frame_rate)
    seg_frames = int(round(float(segment_seconds) * frame_rate))

    @sb.utils.data_pipeline.takes("utt", "wav", "start", "frame0")
    @sb.utils.data_pipeline.provides("sec", "tec", "sig")
    def segment(utt: str, wav: str, start: int, frame0: int) -> Iterator[torch.Tensor | None]:
        sec, tec, sig = frames(utt, wav)
        f0 = min(frame0, max(0, sec.shape[1] - 1))
        f1 = min(sec.shape[1], f0 + seg_frames)
        yield sec[:, f0:f1].transpose(0, 1).float()  # (T, L, C): PaddedBatch pads time
        if pieces is not None:
            yield torch.tensor(pieces[utt], dtype=torch.long)
        else:
            yield None if tec is None else tec[f0:f1].float()
        yield sig[start : start + seg_samples]

    datasets = {}
    for split, utts in splits.items():
        encode = label_encoder(classes, str(fold_dir / f"{split}.tsv"))
        data = {}
        for u in utts:
            for k, s in enumerate(segment_starts(u.num_samples, seg_samples)):
                data[f"{u.utt}#{k}"] = {
                    "utt": u.utt,
                    "wav": u.wav,
                    "start": s,
                    "label_index": encode(u.emo),
                    "frame0": int(round(s * frame_rate / int(sample_rate))),
                    "duration": min(u.num_samples, seg_samples) / int(sample_rate),
                }

        @sb.utils.data_pipeline.takes("label_index")
        @sb.utils.data_pipeline.provides("label")
        def label(index: int) -> torch.Tensor:
            return torch.tensor([index], dtype=torch.long)

        ds = sb.dataio.dataset.DynamicItemDataset(data, dynamic_items=[segment, label])
        keys = ["id", "utt", "label", "sec", "sig"]
        if ablation != "sec_only":
            keys.append("tec")
        ds.set_output_keys(keys)
        datasets[split] = ds
        log.info("%s: %d utterances, %d segments of %.1f s", split, len(utts), len(data), segment_seconds)
    return datasets, classes


def _waveform_segments(
    fold_dir: Path,
    classes: list[str],
    ablation: str,
    segment_seconds: float,
    sample_rate: int,
    text_mode: PathLike | None,
) -> dict[str, DynamicItemDataset]:
    """Segments as waveforms only (the finetuning path): items ``id``, ``utt``, ``label``, ``sig``."""
    from serkit.data.manifest import read_split
    from serkit.nn.coattention import segment_starts

    from .dataio import label_encoder, load_wav

    if text_mode:
        raise SerkitError(
            "the text ablation trains on cached features (--feats); the waveform path "
            "(--upstream) takes the ASR model's frames as TEC"
        )
    seg_samples = int(round(segment_seconds * sample_rate))

    @sb.utils.data_pipeline.takes("wav", "start")
    @sb.utils.data_pipeline.provides("sig")
    def segment(wav: str, start: int) -> torch.Tensor:
        return load_wav(wav, sample_rate, resample=False)[start : start + seg_samples]

    @sb.utils.data_pipeline.takes("label_index")
    @sb.utils.data_pipeline.provides("label")
    def label(index: int) -> torch.Tensor:
        return torch.tensor([index], dtype=torch.long)

    datasets = {}
    for split in ("train", "valid", "test"):
        encode = label_encoder(classes, str(fold_dir / f"{split}.tsv"))
        data = {
            f"{u.utt}#{k}": {
                "utt": u.utt,
                "wav": u.wav,
                "start": s,
                "label_index": encode(u.emo),
                "duration": min(u.num_samples, seg_samples) / sample_rate,
            }
            for u in read_split(fold_dir, split)
            for k, s in enumerate(segment_starts(u.num_samples, seg_samples))
        }
        ds = sb.dataio.dataset.DynamicItemDataset(data, dynamic_items=[segment, label])
        ds.set_output_keys(["id", "utt", "label", "sig"])
        datasets[split] = ds
        log.info(
            "%s: %d segments of %.1f s (waveforms: the encoders run in training)",
            split,
            len(data),
            segment_seconds,
        )
    return datasets


def train_top_layers(lobe: FairseqUpstream, n: int) -> None:
    """Freeze every parameter of a :class:`~serkit.speechbrain.lobes.FairseqUpstream` except its top
    ``n`` transformer layers (``n = 0``: all frozen)."""
    layers = lobe.model.encoder.layers
    if not 0 <= n <= len(layers):
        raise SerkitError(f"{lobe.path}: cannot train the top {n} of {len(layers)} transformer layers")
    for p in lobe.model.parameters():
        p.requires_grad_(False)
    for layer in layers[len(layers) - n :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    lobe.freeze = n == 0


# --------------------------------------------------------------------------------------------------
# the Brain
# --------------------------------------------------------------------------------------------------
class _UtteranceRow(tuple):
    """``(label, probs)`` of an utterance from the segments seen so far (probs: softmax of the mean of
    their log-probabilities), with the running sum to add the next segment to."""

    def __new__(cls, label: int, logp_sum: torch.Tensor, count: int) -> _UtteranceRow:
        row = super().__new__(cls, (label, torch.softmax(logp_sum / count, dim=-1).tolist()))
        row.logp_sum, row.count = logp_sum, count
        return row


class MFSNBrain(SERBrain):
    """SERBrain for :class:`serkit.nn.mfsn.MFSN` (module ``model``) on 3-second segments, with the
    first-order DARTS architecture step of the search (see the module docstring)."""

    arch_optimizer = None
    _level: int | None = None  # a fixed SEC level for every forward (scoring the levels after the search)

    def __init__(
        self,
        modules: dict[str, torch.nn.Module] | None = None,
        opt_class: Callable[..., torch.optim.Optimizer] | None = None,
        hparams: dict | None = None,
        run_opts: RunOptions | dict | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        modules = dict(modules or {})
        if "upstream" in modules:  # `serkit train --upstream SEC_CKPT`: SEC (and TEC) run on the waveforms
            from .lobes import FairseqUpstream

            sec = modules["upstream"]
            train_top_layers(sec, int(hparams.get("sec_finetune_layers", 0)))
            self._sec_index = [
                sec.layers.index(layer) for layer in (resolve_layer_list(sec, hparams["sec_layers"]))
            ]
            tec_path = hparams.get("tec_upstream")
            if hparams.get("ablation") != "sec_only":
                if not tec_path:
                    raise SerkitError(
                        "the waveform path needs tec_upstream (the CTC-finetuned wav2vec 2.0 "
                        "checkpoint) except for sec_only"
                    )
                tec = FairseqUpstream(tec_path, freeze=True, layers="all")
                train_top_layers(tec, 0)  # TEC is detached before fusion (paper Sec. 2.2): never trained
                (tec_layer,) = resolve_layer_list(tec, [hparams.get("tec_layer", "last")])
                self._tec_index = tec.layers.index(tec_layer)
                modules["tec_upstream"] = tec
        super().__init__(
            modules=modules,
            opt_class=opt_class,
            hparams=hparams,
            run_opts=run_opts,
            checkpointer=checkpointer,
        )

    @property
    def _model(self) -> MFSN | TextMFSN:
        return self.raw_modules["model"] if hasattr(self, "raw_modules") else self.modules["model"]

    # ---------------------------------------------------------------- forward and loss
    def compute_forward(self, batch: PaddedBatch, stage: sb.Stage) -> torch.Tensor:
        batch = batch.to(self.device)
        wav, wav_lens = batch.sig
        tec, extra = None, {}
        if "upstream" in self.modules:  # the waveform path
            layers, lens = self.modules.upstream(wav, wav_lens)  # (B, L, T, C)
            sec = layers[:, self._sec_index]
            if "tec_upstream" in self.modules:
                tec_layers, _ = self.modules.tec_upstream(wav, wav_lens)
                tec = tec_layers[:, self._tec_index]
                T = min(sec.shape[2], tec.shape[1])
                sec, tec = sec[:, :, :T], tec[:, :T]
            mask = relative_lengths_to_padding_mask(lens, layers.shape[2])[:, : sec.shape[2]]
        else:
            sec, sec_lens = batch.sec  # (B, T, L, C)
            sec = sec.transpose(1, 2)
            mask = relative_lengths_to_padding_mask(sec_lens, sec.shape[2])
            if hasattr(batch, "tec"):
                tec, tec_lens = batch.tec
                if tec.dtype == torch.long:  # transcript pieces
                    extra["tec_padding_mask"] = relative_lengths_to_padding_mask(tec_lens, tec.shape[1])
        wav_lengths = torch.round(wav_lens * wav.shape[1]).long().clamp_min(1)
        return self.modules.model(
            sec, tec, mask, level=self._level, wav=wav, wav_lengths=wav_lengths, **extra
        )

    def compute_objectives(
        self, predictions: torch.Tensor, batch: PaddedBatch, stage: sb.Stage
    ) -> torch.Tensor:
        labels, _ = batch.label
        labels = labels.to(self.device).view(-1)
        loss = F.cross_entropy(
            predictions.float(), labels, label_smoothing=float(getattr(self.hparams, "label_smoothing", 0.0))
        )
        if stage != sb.Stage.TRAIN:
            logp = F.log_softmax(predictions.detach().float(), dim=-1).cpu()
            for utt, label, lp in zip(batch.utt, labels.cpu().tolist(), logp):
                old = self._rows.get(utt)
                self._rows[utt] = _UtteranceRow(
                    label, lp if old is None else old.logp_sum + lp, 1 if old is None else old.count + 1
                )
        return loss

    # ---------------------------------------------------------------- search
    @property
    def searching(self) -> bool:
        return bool(self._model.arch_parameters())

    def init_optimizers(self) -> None:
        arch = list(self._model.arch_parameters())
        if not arch or self.opt_class is None:
            return super().init_optimizers()
        arch_opt_class = getattr(self.hparams, "arch_opt_class", None)
        if arch_opt_class is None:
            raise SerkitError(
                "the MFSN search (arch: null) needs `arch_opt_class` in the hparams; to "
                'retrain a derived cell give --arch "$(cat <search>/arch.txt)"'
            )
        arch_ids = {id(p) for p in arch}
        self.optimizer = self.opt_class([p for p in self.modules.parameters() if id(p) not in arch_ids])
        self.arch_optimizer = arch_opt_class(arch)
        # Only the weights are stepped by SERBrain's step (and clipped); the architecture has its own step.
        self.optimizers_dict = {"weights": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
            self.checkpointer.add_recoverable("arch_optimizer", self.arch_optimizer)

    def _arch_batches(self, epoch: int) -> Iterator[PaddedBatch]:
        """Endless architecture mini-batches of ``arch_data``, in an order fixed by seed and epoch, formed
        as the training batches are (``batching``): by duration (dynamic) or drawn at random."""
        dataset = self._sets[str(getattr(self.hparams, "arch_data", "valid"))]
        seed = int(getattr(self.hparams, "seed", 0) or 0) * 1009 + epoch  # not the training batches' order
        batch_size = int(self.hparams.train_dataloader_opts["batch_size"])
        kwargs = self.batching_kwargs(dataset, sb.Stage.TRAIN, {"batch_size": batch_size, "shuffle": True})
        if "batch_sampler" not in kwargs:  # random
            generator = torch.Generator().manual_seed(seed)
            while True:
                yield from torch.utils.data.DataLoader(
                    dataset,
                    batch_size=batch_size,
                    shuffle=True,
                    generator=generator,
                    collate_fn=sb.dataio.batch.PaddedBatch,
                )
        from .brain import duration_batch_sampler

        sampler = duration_batch_sampler(
            dataset,
            batch_size,
            getattr(self.hparams, "max_batch_length", None),
            int(getattr(self.hparams, "num_buckets", 40)),
            shuffle=True,
            seed=seed,
        )
        passes = 0
        while True:  # each pass over arch_data reshuffles its buckets (seed + pass)
            sampler.set_epoch(passes)
            yield from torch.utils.data.DataLoader(
                dataset, batch_sampler=sampler, collate_fn=sb.dataio.batch.PaddedBatch
            )
            passes += 1

    def fit_batch(self, batch: PaddedBatch) -> torch.Tensor:
        if self.arch_optimizer is not None:
            abatch = next(self._arch_iter)
            self.arch_optimizer.zero_grad(set_to_none=True)
            with self.training_ctx:
                aloss = self.compute_objectives(
                    self.compute_forward(abatch, sb.Stage.TRAIN), abatch, sb.Stage.TRAIN
                )
            aloss.backward()
            self.arch_optimizer.step()
            # The architecture step's weight gradients must not reach the weight step.
            self.optimizer.zero_grad(set_to_none=True)
        return super().fit_batch(batch)

    def fit(
        self,
        epoch_counter: Iterable[int],
        train_set: Dataset | DataLoader,
        valid_set: Dataset | DataLoader | None = None,
        **kwargs,
    ) -> None:
        arch_data = str(getattr(self.hparams, "arch_data", "valid"))
        if arch_data not in ("valid", "train"):
            raise SerkitError(f"arch_data {arch_data!r}: choose valid or train")
        self._sets = {"train": train_set, "valid": valid_set}
        super().fit(epoch_counter, train_set, valid_set, **kwargs)
        if self.searching and if_main_process():
            self._derive(valid_set)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.train_info is not None:
            self.train_info.update(self._describe())

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        super().on_stage_start(stage, epoch)
        if stage == sb.Stage.TRAIN and self.arch_optimizer is not None:
            self._arch_iter = self._arch_batches(int(epoch or 1))

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        entry = None
        if stage == sb.Stage.VALID and self.searching:
            model = self._model
            entry = {
                "epoch": epoch,
                "valid_ua": self._metrics(self._rows)["ua"],
                "op_weights": model.fusion.op_weights(),
                "level_probs": [float(p) for p in model.choice.probabilities()],
            }
        super().on_stage_end(stage, stage_loss, epoch)
        if entry is not None and if_main_process():
            path = Path(self.hparams.output_folder) / "search_log.jsonl"
            # a redone epoch replaces its line
            entries = [e for e in read_search_log(path) if e["epoch"] < epoch] + [entry]
            with atomic_file(path, encoding="utf-8") as f:
                f.writelines(json.dumps(e) + "\n" for e in entries)
            best = max(entry["op_weights"], key=entry["op_weights"].get)
            log.info(
                "search epoch %d: valid UA %.4f, top operation %s (%.3f)",
                epoch,
                entry["valid_ua"],
                best,
                entry["op_weights"][best],
            )

    def _derive(self, valid_set: Dataset) -> dict:
        from serkit.nn.mfsn import arch_spec

        model = self._model
        level_scores = None
        if model.choice.mode == "uniform" and model.choice.fixed_level is None:
            # Nothing learned about the levels: score each with the shared weights on validation.
            opts = self.batching_kwargs(valid_set, sb.Stage.VALID, dict(self.hparams.valid_dataloader_opts))
            loader = sb.dataio.dataloader.make_dataloader(valid_set, **opts)
            level_scores = []
            for level in range(model.num_levels):
                self._level = level
                try:
                    level_scores.append(self._metrics(self._predict(loader))["ua"])
                finally:
                    self._level = None
        arch = model.derive(level_scores=level_scores, top_k=int(getattr(self.hparams, "derive_top_k", 1)))
        sec_layers = list(self.hparams.sec_layers)
        arch["sec_layer"] = sec_layers[arch["sec_level"]]
        out = Path(self.hparams.output_folder)
        write_json(out / "arch.json", arch)
        with atomic_file(out / "arch.txt", encoding="utf-8") as f:
            f.write(arch_spec(arch) + "\n")
        ranked = sorted(arch["op_weights"].items(), key=lambda kv: -kv[1])
        weights = ", ".join(f"{k}={v:.3f}" for k, v in ranked)
        log.info(
            "derived %s: SEC level %d (layer %s of %s), fusion %s; operation weights %s%s",
            arch_spec(arch),
            arch["sec_level"],
            arch["sec_layer"],
            sec_layers,
            ",".join(arch["fusion_ops"]),
            weights,
            f"; level valid UA {level_scores}" if level_scores else "",
        )
        if self.train_info is not None:
            self.train_info["arch"] = arch_spec(arch)
        return arch

    def _describe(self) -> dict:
        """MFSN's entries of train_info.json: ablation, streams, sources, the fold's protocol."""
        hp = self.hparams
        model = self._model
        fold = Path(self.train_info.get("fold_dir") or ".") / "fold.json"
        fold_info = json.loads(fold.read_text(encoding="utf-8")) if fold.is_file() else {}
        ablation, streams = model.variant, model.streams
        sec = self.train_info.get("sources", {}).get("sec", {})  # on a rerun, info["upstream"] is the label
        sources = {
            "sec": {
                "feats": self.train_info.get("feats"),
                "layers": list(hp.sec_layers),
                "upstream": sec.get("upstream", self.train_info.get("upstream")),
                "stream": f"layer {list(hp.sec_layers)[-1]}",
            }
        }
        note = getattr(hp, "note", "") or ""
        text_mode = bool(getattr(hp, "text", None) or getattr(hp, "ctc_checkpoint", None))
        if ablation != "sec_only":
            if text_mode:
                if getattr(hp, "text", None):
                    what = f"transcript {hp.text}"
                else:
                    from serkit.upstream.features import FeatureReader

                    layer = _resolve_layer(FeatureReader(hp.tec_feats), hp.tec_layer, "TEC")
                    what = f"greedy CTC of {Path(hp.ctc_checkpoint).name} (layer {layer})"
                sources["tec"] = {
                    "text": str(what),
                    "detached": False,
                    "warning": LEAK_WARNING,
                    "tokenizer": "sentencepiece unigram, training split only",
                }
                note = (note + " " if note else "") + LEAK_WARNING
            else:
                sources["tec"] = {"feats": str(hp.tec_feats), "layer": hp.tec_layer, "detached": True}
        setting = ablation if streams == "dual" or ablation == "sec_only" else f"{ablation}_single_stream"
        info = {
            "setting": setting,
            "ablation": ablation,
            "streams": streams,
            "sources": sources,
            "headline": getattr(hp, "headline", "ua"),
            "note": note or None,
            "corpus": fold_info.get("corpus"),
            "protocol": fold_info.get("protocol"),
            "fold": fold_info.get("fold"),
            "sec_layers": list(hp.sec_layers),
        }
        label = getattr(hp, "sources_label", "") or ""
        if label:  # the tables' upstream column; the SEC checkpoint is sources.sec.upstream
            info["upstream"] = label
        if getattr(hp, "arch", None):
            info["arch"] = str(hp.arch)
        return info


# --------------------------------------------------------------------------------------------------
# inference: serkit predict / EmotionClassifier on a finished fold
# --------------------------------------------------------------------------------------------------
class MFSNClassifier(torch.nn.Module):
    """Classify waveforms with a trained MFSN fold: both upstreams on the audio, 3-second segments, the
    model, the mean of the segments' log-probabilities. The interface of
    :class:`~serkit.speechbrain.interface.EmotionClassifier` (``classify_batch``, ``classify_file``).
    """

    def __init__(
        self,
        model: MFSN,
        classes: Iterable[str],
        info: dict,
        hparams: dict,
        sec_upstream: Upstream,
        tec_upstream: Upstream | None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.model, self.classes, self.info = model, list(classes), info
        self.sec_upstream, self.tec_upstream = sec_upstream, tec_upstream
        self.sec_layers = [int(x) for x in info["sec_layers_resolved"]]
        self.tec_layer = info.get("tec_layer_resolved")
        self.sample_rate = int(hparams["sample_rate"])
        self.seg_samples = int(round(float(hparams["segment_seconds"]) * self.sample_rate))
        self.device = device
        self.checkpoint = None
        self.to(device).eval()

    @torch.no_grad()
    def classify_batch(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> Prediction:
        """Classify a padded batch of 16 kHz waveforms (B, S), relative lengths ``wav_lens`` (B,).

        Returns ``(out_prob (B, K), score (B,), index (B,), text_lab [str])``.
        """
        from serkit.nn.coattention import aggregate_segments, segment_starts

        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        wavs = wavs.float().cpu()
        if wav_lens is None:
            wav_lens = torch.ones(wavs.size(0))
        lengths = torch.round(wav_lens.float().cpu() * wavs.size(1)).long().clamp(1, wavs.size(1))
        logps = []
        for wav, n in zip(wavs, lengths.tolist()):
            wav = wav[:n]
            sec = self._layers(self.sec_upstream, wav, self.sec_layers)  # (L, T, C)
            tec = self._layers(self.tec_upstream, wav, [self.tec_layer])[0] if self.tec_upstream else None
            T = sec.shape[1] if tec is None else min(sec.shape[1], tec.shape[0])
            frame_rate = float(self.sec_upstream.frame_rate)
            seg_frames = int(round(self.seg_samples / self.sample_rate * frame_rate))
            logits = []
            for start in segment_starts(n, self.seg_samples):
                f0 = min(int(round(start * frame_rate / self.sample_rate)), max(0, T - 1))
                f1 = min(T, f0 + seg_frames)
                seg = wav[start : start + self.seg_samples]
                x_tec = None if tec is None else tec[None, f0:f1].to(self.device)
                y = self.model(
                    sec[None, :, f0:f1].to(self.device),
                    x_tec,
                    None,
                    wav=seg[None].to(self.device),
                    wav_lengths=torch.tensor([seg.numel()], device=self.device),
                )
                logits.append(y.float().cpu())
            logits = torch.cat(logits)
            logps.append(aggregate_segments(logits, torch.zeros(len(logits), dtype=torch.long), 1)[0])
        out_prob = torch.softmax(torch.stack(logps), dim=-1)
        score, index = out_prob.max(dim=-1)
        return out_prob, score, index, [self.classes[i] for i in index.tolist()]

    def _layers(self, upstream: Upstream, wav: torch.Tensor, layers: list[int]) -> torch.Tensor:
        hidden, _ = upstream(wav[None], None, layers=layers)
        return torch.stack([h[0].float() for h in hidden])

    def classify_file(self, path: PathLike) -> Prediction:
        from .dataio import load_wav

        wav = load_wav(path, sample_rate=self.sample_rate)
        self._check_length(wav, path)
        return self.classify_batch(wav.unsqueeze(0), torch.ones(1))

    def _check_length(self, wav: torch.Tensor, path: PathLike) -> None:
        ups = [u for u in (self.sec_upstream, self.tec_upstream) if u is not None]
        need = max(int(getattr(u, "receptive_field", 400)) for u in ups)
        if wav.numel() < need:
            raise SerkitError(
                f"{path}: {wav.numel()} samples ({wav.numel() / 16:.1f} ms) is shorter than "
                f"the upstreams' receptive field ({need} samples); nothing to classify"
            )

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> Prediction:
        return self.classify_batch(wavs, wav_lens)


def load_classifier(
    source: PathLike, hparams: dict, info: dict, device: str = "cpu", checkpoint: str = "best"
) -> MFSNClassifier:
    """:class:`MFSNClassifier` for a finished fold (``EmotionClassifier.from_hparams`` calls this when the
    fold's yaml names it as ``classifier``)."""
    from serkit.upstream import load_upstream
    from serkit.upstream.features import FeatureReader

    from .checkpoints import Checkpointer

    source = Path(source)
    if info.get("ablation") is None:
        raise SerkitError(
            f"{source / 'train_info.json'}: no MFSN entries; was this fold trained with MFSNBrain?"
        )
    if not info.get("feats"):
        raise SerkitError(
            f"{source}: an MFSN fold trained on waveforms (--upstream, SEC layers finetuned); "
            "serkit predict supports MFSN folds trained on cached features (--feats) only"
        )
    if info["sources"].get("tec", {}).get("detached") is False:
        raise SerkitError(
            f"{source}: a text-ablation fold (TEC from transcripts) cannot classify new audio; "
            "only audio-TEC MFSN folds can"
        )
    sec_reader = FeatureReader(info["feats"])
    info = dict(info)
    info["sec_layers_resolved"] = [_resolve_layer(sec_reader, x, "SEC") for x in hparams["sec_layers"]]
    tec_upstream = None
    if info["ablation"] != "sec_only":
        tec_reader = FeatureReader(hparams["tec_feats"])
        info["tec_layer_resolved"] = _resolve_layer(tec_reader, hparams["tec_layer"], "TEC")
        tec_path = tec_reader.meta.get("upstream")
        if not tec_path or not Path(tec_path).is_file():
            raise SerkitError(
                f"{tec_reader.path}/meta.json: TEC upstream {tec_path!r} not found; it encodes new audio"
            )
        tec_upstream = load_upstream(tec_path, device="cpu")
    sec_path = info["sources"]["sec"].get("upstream")
    if not sec_path or not Path(sec_path).is_file():
        raise SerkitError(
            f"{source / 'train_info.json'}: SEC upstream {sec_path!r} not found; it encodes new audio"
        )
    sec_upstream = load_upstream(sec_path, device="cpu")
    model = hparams["modules"]["model"]
    ckpts = Checkpointer(source / "save", recoverables={"model": model})
    best = info.get("best_metric", "ua")
    ckpt = ckpts.find_checkpoint(max_key=f"valid_{best}") if checkpoint == "best" else ckpts.find_checkpoint()
    if ckpt is None:
        raise SerkitError(f"{source / 'save'}: no checkpoint; has training run at least one epoch?")
    ckpts.load_checkpoint(ckpt)
    if model.arch_parameters():
        raise SerkitError(
            f"{source}: an MFSN search fold (the supernet); classify with the retrained fold "
            '(serkit train ... --arch "$(cat arch.txt)")'
        )
    clf = MFSNClassifier(model, info["classes"], info, hparams, sec_upstream, tec_upstream, device=device)
    clf.checkpoint = ckpt
    return clf


if __name__ == "__main__":  # the old trainer's entry point is gone: say where it went
    raise SystemExit(
        f"{os.path.basename(__file__)}: MFSN trains with `serkit train` (see the module "
        "docstring of serkit.speechbrain.mfsn and recipes/SAVEE/run.sh)"
    )
