"""Split manifests: the files one fold hands to fairseq (tsv + emo) and SpeechBrain (json).

A fold directory holds, per split (``train``, ``valid``, ``test``), three line-aligned files in one
order:

- ``<split>.tsv``: first line the root directory, then ``relpath<TAB>num_samples`` (fairseq's
  ``FileAudioDataset`` and ``hubert_pretraining`` read this);
- ``<split>.emo``: one class name per line;
- ``<split>.json``: ``{utt: {"wav", "duration", "emo", "spk"}}`` (SpeechBrain's
  ``DynamicItemDataset.from_json``); keys in the same order as the tsv lines.

plus ``dict.emo.txt`` (``class count`` per line, fairseq Dictionary style) and ``fold.json``.
Utterance ids are the json keys; ``read_split`` checks that the three files agree.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..utils import SerkitError, atomic_file, write_json

SPLITS = ("train", "valid", "test")
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utterance:
    utt: str
    wav: str  # absolute path to a 16 kHz mono wav
    num_samples: int
    emo: str
    spk: str

    @property
    def duration(self) -> float:
        return self.num_samples / SAMPLE_RATE


def write_split(fold_dir: str | os.PathLike, split: str, utts: list[Utterance], root: str) -> None:
    """Write ``<split>.tsv``, ``<split>.emo`` and ``<split>.json`` for ``utts`` (in that order)."""
    fold_dir = Path(fold_dir)
    root = str(Path(root).resolve())
    with atomic_file(fold_dir / f"{split}.tsv", encoding="utf-8") as f:
        f.write(root + "\n")
        for u in utts:
            f.write(f"{os.path.relpath(u.wav, root)}\t{u.num_samples}\n")
    with atomic_file(fold_dir / f"{split}.emo", encoding="utf-8") as f:
        for u in utts:
            f.write(u.emo + "\n")
    write_json(
        fold_dir / f"{split}.json",
        {u.utt: {"wav": u.wav, "duration": round(u.duration, 4), "emo": u.emo, "spk": u.spk} for u in utts},
    )


def write_dict(fold_dir: str | os.PathLike, classes: list[str], counts: dict[str, int]) -> None:
    """``dict.emo.txt``: the class list in label-index order, fairseq Dictionary format."""
    with atomic_file(Path(fold_dir) / "dict.emo.txt", encoding="utf-8") as f:
        for c in classes:
            f.write(f"{c} {counts.get(c, 0)}\n")


def read_classes(fold_dir: str | os.PathLike) -> list[str]:
    """The class list of a fold, in label-index order."""
    path = Path(fold_dir) / "dict.emo.txt"
    if not path.is_file():
        raise SerkitError(f"{path}: not found; run `serkit split` to create the fold")
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_split(fold_dir: str | os.PathLike, split: str) -> list[Utterance]:
    """Read one split of a fold and check that its tsv, emo and json files agree line by line."""
    fold_dir = Path(fold_dir)
    tsv, emo, js = (fold_dir / f"{split}.{ext}" for ext in ("tsv", "emo", "json"))
    for p in (tsv, emo, js):
        if not p.is_file():
            raise SerkitError(f"{p}: not found; run `serkit split` to (re)create {fold_dir}")
    lines = tsv.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise SerkitError(f"{tsv}: empty (the first line must be the root directory)")
    root, rows = lines[0], lines[1:]
    labels = emo.read_text(encoding="utf-8").splitlines()
    meta = json.loads(js.read_text(encoding="utf-8"))
    if not (len(rows) == len(labels) == len(meta)):
        raise SerkitError(
            f"{fold_dir}: {split}.tsv has {len(rows)} utterances, {split}.emo {len(labels)}, "
            f"{split}.json {len(meta)}; they must be line-aligned: re-run `serkit split`"
        )
    out = []
    for i, (row, label, (utt, m)) in enumerate(zip(rows, labels, meta.items()), start=2):
        rel, _, n = row.partition("\t")
        wav = os.path.join(root, rel)
        if os.path.normpath(wav) != os.path.normpath(m["wav"]) or label != m["emo"]:
            raise SerkitError(
                f"{tsv}:{i}: {rel!r}/{label!r} disagrees with {js.name} entry {utt!r}; re-run `serkit split`"
            )
        out.append(Utterance(utt=utt, wav=m["wav"], num_samples=int(n), emo=label, spk=m["spk"]))
    return out
