"""Marker kinds of the mini corpora and the recognition of roots built before markers existed."""
from __future__ import annotations

import json
import os
from pathlib import Path

from serkit.utils import register_recogniser

#: Top-level entries of each mini root (what ``build`` writes besides MANIFEST.json).
TOP_LEVEL = {
    "iemocap": {"Session1", "Session2", "Session3", "Session4", "Session5"},
    "meld": {"train", "dev_sent_emo.csv", "test_sent_emo.csv", "dev_splits_complete",
             "output_repeated_splits_test"},
    "savee": {"AudioData"},
    "ravdess": {f"Actor_{a:02d}" for a in range(1, 25)},
}


def kind(corpus: str) -> str:
    return f"mini-corpus-{corpus}"


def _recogniser(corpus: str):
    def recognise(root: Path) -> list[str]:
        """Unknown files of a mini root without a marker: everything unless MANIFEST.json is a mini
        manifest of this corpus, then everything outside the corpus' own top-level entries."""
        try:
            manifest = json.loads((root / "MANIFEST.json").read_text(encoding="utf-8"))
            ours = manifest.get("corpus") == corpus and "seed" in manifest and "utterances" in manifest
        except (OSError, ValueError, AttributeError):
            ours = False
        unknown = []
        for dirpath, _, names in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for n in names:
                r = n if rel == "." else f"{rel}/{n}"
                top = r.split("/", 1)[0]
                if not (ours and (r == "MANIFEST.json" or top in TOP_LEVEL[corpus])):
                    unknown.append(r)
        return unknown
    return recognise


for _c in TOP_LEVEL:
    register_recogniser(kind(_c), _recogniser(_c))
