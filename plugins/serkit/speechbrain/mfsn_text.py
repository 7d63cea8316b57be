"""MFSN text ablation: TEC from a transcript (the corpus' or the ASR model's greedy CTC output).

    !!! IEMOCAP's scripted dialogues use the same sentences in every session (and SAVEE's sentence
    !!! lists are chosen per emotion and read by every speaker). A text branch can
    !!! recognise a script line seen in training (in another session, spoken by other actors) and
    !!! read its emotion off the words: text leaks content between folds. Numbers from this ablation on
    !!! IEMOCAP are not comparable with audio-only ones; report them with this warning (the trainer
    !!! writes it into train_info.json and the table's note), or restrict IEMOCAP to improvised dialogues.

Usage::

    python -m serkit.speechbrain.mfsn_text recipes/IEMOCAP/conf/mfsn_text.yaml --fold-dir FOLD \\
        --output-folder EXP/mfsn_text/fold1 --sec-feats SEC_FEATS --text data/iemocap/text
    # or the ASR model's own transcript, decoded greedily from its cached last layer:
    python -m serkit.speechbrain.mfsn_text ... --tec-feats TEC_FEATS --ctc-checkpoint wav2vec_small_960h.pt \\
        --ctc-dict dict.ltr.txt

How the text becomes TEC:

1. transcripts: a Kaldi-style ``text`` file (``utt words...``), or greedy CTC decoding: the CTC
   checkpoint's output projection (``w2v_encoder.proj``) applied to the cached TEC layer (the last
   transformer layer, which is what the projection reads in a fine-tuned wav2vec 2.0), argmax per frame,
   repeats merged, blanks (``<s>``, index 0 in fairseq's letter dictionary) dropped, ``|`` -> space;
2. a sentencepiece model (unigram, ``text_vocab_size``) trained on the fold's **training split only**;
3. a small text encoder trained with the model: embedding + BiLSTM over the pieces;
4. frame alignment: each SEC frame (the mean of the SEC levels) attends over the pieces (cross-attention,
   padded pieces masked), giving a frame-rate TEC sequence (B, T, C) that enters the same Choice/Fusion
   Cells as the audio TEC. It is not detached (its encoder is trained here).

Every 3-second segment of an utterance sees the whole utterance's transcript (text has no timing).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..utils import SerkitError, read_map
from . import mfsn as base

log = logging.getLogger("serkit.speechbrain.mfsn")

LEAK_WARNING = ("TEXT LEAK: IEMOCAP's scripted sentences repeat across sessions (SAVEE's sentence lists "
                "are chosen per emotion and shared by its speakers); a text branch can recognise a "
                "sentence seen in training. Not comparable with audio-only results.")
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def read_transcripts(path: str | Path) -> dict[str, str]:
    """``utt words...`` lines (the data directory's ``text``)."""
    return read_map(path)


def ctc_greedy_transcripts(checkpoint: str | Path, dict_path: str | Path, reader, layer: int,
                           utts: list[str]) -> dict[str, str]:
    """Greedy CTC transcripts from a CTC-finetuned model's cached last layer (:mod:`serkit.upstream.ctc`)."""
    from serkit.upstream.ctc import greedy_transcripts

    return greedy_transcripts(checkpoint, dict_path, reader, layer, utts)


def train_sentencepiece(texts: list[str], prefix: Path, vocab_size: int):
    """A unigram sentencepiece model on ``texts`` (the training split's transcripts only)."""
    import sentencepiece as spm

    prefix.parent.mkdir(parents=True, exist_ok=True)
    texts = [t for t in texts if t.strip()] or ["<empty>"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(prefix), vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, hard_vocab_limit=False, pad_id=0, unk_id=1,
        bos_id=-1, eos_id=-1, minloglevel=2)
    return spm.SentencePieceProcessor(model_file=str(prefix) + ".model")


def _text_modules():
    from torch import nn

    from serkit.nn.masking import zero_padded_frames

    class TextFrames(nn.Module):
        """Pieces -> BiLSTM states -> frame-rate TEC by cross-attention from the SEC frames."""

        def __init__(self, vocab_size: int, sec_dim: int, dim: int, num_heads: int):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
            self.lstm = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)
            self.query = nn.Linear(sec_dim, dim)
            self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

        def forward(self, sec, ids, padding_mask, ids_padding_mask):
            lengths = (~ids_padding_mask).sum(1).clamp_min(1)
            packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True,
                                                       enforce_sorted=False)
            states, _ = self.lstm(packed)
            states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=ids.shape[1])
            q = self.query(zero_padded_frames(sec.mean(dim=1), padding_mask))
            y, _ = self.attn(q, states, states, key_padding_mask=ids_padding_mask, need_weights=False)
            return zero_padded_frames(y, padding_mask)

    class TextMFSN(nn.Module):
        """MFSN whose TEC is :class:`TextFrames` (trained, not detached)."""

        def __init__(self, mfsn, text: TextFrames):
            super().__init__()
            self.mfsn, self.text = mfsn, text

        def __getattr__(self, name):  # choice, fusion, num_levels, derive, ...
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.mfsn, name)

        def arch_parameters(self):
            return self.mfsn.arch_parameters()

        def weight_parameters(self):
            arch = {id(p) for p in self.arch_parameters()}
            return [p for p in self.parameters() if id(p) not in arch]

        def forward(self, sec, ids, padding_mask=None, level=None, tec_padding_mask=None, **head_inputs):
            tec = None
            if self.mfsn.variant != "sec_only":
                tec = self.text(sec, ids, padding_mask, tec_padding_mask)
            return self.mfsn(sec, tec, padding_mask, level=level, **head_inputs)

    return TextFrames, TextMFSN


class TextTEC(base.AudioTEC):
    """TEC from transcripts: plugs into :func:`serkit.speechbrain.mfsn.run`."""

    def __init__(self, text_path: str | None, ctc_checkpoint: str | None, ctc_dict: str | None):
        if bool(text_path) == bool(ctc_checkpoint):
            raise SerkitError("give either --text FILE (transcripts) or --ctc-checkpoint with --ctc-dict "
                              "(greedy ASR transcripts), not both / neither")
        if ctc_checkpoint and not ctc_dict:
            raise SerkitError("--ctc-checkpoint needs --ctc-dict (the dict.ltr.txt it was trained with)")
        self.text_path, self.ctc_checkpoint, self.ctc_dict = text_path, ctc_checkpoint, ctc_dict

    def setup(self, hp: dict, train_utts, out: Path) -> None:
        self.hp = hp
        self.transcripts: dict[str, str] = {}
        if self.text_path:
            self.transcripts = read_transcripts(self.text_path)
            self.kind = f"transcript {Path(self.text_path)}"
        self.sp = None
        self.train_utts = train_utts
        self.out = out

    def _ensure_transcripts(self, utts) -> None:
        missing = [u.utt for u in utts if u.utt not in self.transcripts]
        if not missing:
            return
        if self.text_path:
            raise SerkitError(f"{self.text_path}: no transcript for {len(missing)} utterance(s), e.g. "
                              f"{missing[:3]}; the text ablation needs one per utterance")
        from serkit.upstream.features import FeatureReader

        reader = FeatureReader(self.hp["tec_feats"])
        layer = base._resolve_layer(reader, self.hp["tec_layer"], "TEC")
        self.transcripts.update(
            ctc_greedy_transcripts(self.ctc_checkpoint, self.ctc_dict, reader, layer, missing))
        self.kind = f"greedy CTC of {Path(self.ctc_checkpoint).name} (layer {layer})"

    def fold_data(self, utts, classes, sec_reader, sec_layers, hp):
        self._ensure_transcripts(utts)
        if self.sp is None:  # the first call is the training split: the tokenizer sees only it
            self._ensure_transcripts(self.train_utts)
            self.sp = train_sentencepiece([self.transcripts[u.utt] for u in self.train_utts],
                                          self.out / "text_sp", int(hp["text_vocab_size"]))
            with open(self.out / "transcripts.train.txt", "w", encoding="utf-8") as f:
                f.writelines(f"{u.utt} {self.transcripts[u.utt]}\n" for u in self.train_utts)
        ids = {u.utt: (self.sp.encode(self.transcripts[u.utt]) or [1]) for u in utts}
        return _TextFoldData(ids, utts, classes, None, sec_reader, None, sec_layers, hp,
                             cache=bool(hp["cache_in_memory"]))

    def build_model(self, hp: dict, sec_dim: int, num_classes: int, arch: dict | None = None):
        TextFrames, TextMFSN = _text_modules()
        dim = int(hp["text_dim"])
        mfsn = base.build_model(hp, sec_dim, dim, num_classes, arch=arch)
        mfsn.detach_tec = False
        return TextMFSN(mfsn, TextFrames(self.sp.get_piece_size(), sec_dim, dim, int(hp["num_heads"])))

    def describe(self, hp: dict):
        if hp["ablation"] == "sec_only":
            return None, ""
        return ({"text": self.kind, "tokenizer": f"sentencepiece unigram {self.sp.get_piece_size()} "
                 "pieces, training split only", "detached": False, "warning": LEAK_WARNING},
                f" + TEC text ({self.kind})")


class _TextFoldData(base.FoldData):
    def __init__(self, ids: dict[str, list[int]], *args, **kw):
        super().__init__(*args, **kw)
        self.ids = ids

    def collate(self, seg_ids):
        import torch

        batch = super().collate(seg_ids)
        seqs = [self.ids[self.utts[self.segments[j].utt_index].utt] for j in seg_ids]
        L = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
        batch["tec"] = ids
        batch["tec_padding_mask"] = ids == 0
        return batch


def main(argv: list[str] | None = None) -> int:
    from ..utils import setup_logging

    parser = base.build_parser()
    parser.prog = "python -m serkit.speechbrain.mfsn_text"
    parser.add_argument("--text", help="transcripts, `utt words...` per line (e.g. data/iemocap/text)")
    parser.add_argument("--ctc-checkpoint",
                        help="CTC-finetuned wav2vec 2.0: decode its cached TEC layer greedily")
    parser.add_argument("--ctc-dict", help="the letter dictionary (dict.ltr.txt) of --ctc-checkpoint")
    args, rest = parser.parse_known_args(argv)
    setup_logging()
    try:
        hp = base.hparams_from_args(args, rest)
        log.warning("%s", LEAK_WARNING)
        tec = TextTEC(args.text, args.ctc_checkpoint, args.ctc_dict)
        hp["note"] = (hp["note"] + " " if hp["note"] else "") + LEAK_WARNING
        base.run(hp, args.hparams, tec=tec)
    except SerkitError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
