"""Mini corpora: deterministic synthetic emotional speech in each corpus' exact on-disk layout.

``build(corpus, out, seed=0, **options) -> root`` writes one corpus under ``out`` and returns the
directory a user would pass as ``serkit prepare <corpus> --root``:

============ ================================ ===================================================
corpus       root                             options (defaults)
============ ================================ ===================================================
``iemocap``  ``out/IEMOCAP_full_release``     sessions=(1..5) or n, utts_per_class=6,
                                              extra_per_speaker=4, min_dur=1.0, max_dur=2.5, quirks
``meld``     ``out/MELD.Raw``                 n_train=70, n_dev=12, n_test=20, min_dur=1.0,
                                              max_dur=2.5, channels=6, video=True, quirks
``savee``    ``out/SAVEE`` (holds AudioData/) per_class=4, neutral=8, speakers=4,
                                              layout="nested"|"double"|"flat", min_dur, max_dur
``ravdess``  ``out/RAVDESS`` (holds Actor_XX/)  actors=8, intensities=1, statements=2, repetitions=2
============ ================================ ===================================================

Every root holds ``MANIFEST.json``: the ground truth that was generated (per utterance: speaker, raw
label, the class used for training, relative path, and for MELD which clips are broken, silent or
missing). The same seed gives byte-identical files; emotion cues are documented in
:mod:`serkit.data.mini.synth`. Each build is atomic: a crash leaves no half-written root.
"""

from __future__ import annotations

from pathlib import Path

CORPORA = ("iemocap", "meld", "savee", "ravdess")


def build(corpus: str, out: Path, seed: int = 0, **options) -> Path:
    """Write the mini ``corpus`` under ``out`` and return its root directory."""
    name = corpus.lower()
    if name == "iemocap":
        from .iemocap import build as _build
    elif name == "meld":
        from .meld import build as _build
    elif name == "savee":
        from .savee import build as _build
    elif name == "ravdess":
        from .ravdess import build as _build
    else:
        from serkit.utils import SerkitError

        raise SerkitError(f"unknown corpus {corpus!r}; choose one of {', '.join(CORPORA)}")
    try:
        return _build(Path(out), seed=seed, **options)
    except TypeError as e:  # an unknown option name: say which ones exist
        import inspect

        from serkit.utils import SerkitError

        known = [p for p in inspect.signature(_build).parameters if p not in ("out", "seed")]
        bad = sorted(set(options) - set(known))
        if bad:
            raise SerkitError(f"mini {name}: unknown option(s) {bad}; known: {known}") from e
        raise
