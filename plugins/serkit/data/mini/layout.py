"""Marker kinds of the mini corpora and the recognition of roots built before markers existed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from serkit.utils import files_under, register_recogniser

#: Top-level entries of each mini root (what ``build`` writes besides MANIFEST.json).
TOP_LEVEL = {
    "iemocap": {"Session1", "Session2", "Session3", "Session4", "Session5"},
    "meld": {
        "train",
        "dev_sent_emo.csv",
        "test_sent_emo.csv",
        "dev_splits_complete",
        "output_repeated_splits_test",
    },
    "savee": {"AudioData"},
    "ravdess": {f"Actor_{a:02d}" for a in range(1, 25)},
}


def kind(corpus: str) -> str:
    return f"mini-corpus-{corpus}"


def _recogniser(corpus: str) -> Callable[[Path], list[str]]:
    def recognise(root: Path) -> list[str]:
        """Unknown files of a mini root without a marker: everything unless MANIFEST.json is a mini
        manifest of this corpus, then everything outside the corpus' own top-level entries."""
        try:
            manifest = json.loads((root / "MANIFEST.json").read_text(encoding="utf-8"))
            ours = manifest.get("corpus") == corpus and "seed" in manifest and "utterances" in manifest
        except (OSError, ValueError, AttributeError):
            ours = False
        return [
            r
            for r in files_under(root)
            if not (ours and (r == "MANIFEST.json" or r.split("/", 1)[0] in TOP_LEVEL[corpus]))
        ]

    return recognise


for _c in TOP_LEVEL:
    register_recogniser(kind(_c), _recogniser(_c))
