"""A mini SAVEE: ``AudioData/{DC,JE,JK,KL}/{a,d,f,h,n,sa,su}NN.wav`` at 44.1 kHz, four male speakers.

``layout`` reproduces the shapes real copies come in, under ``out/SAVEE``:

* ``nested`` (the release): ``AudioData/DC/a01.wav``
* ``double`` (an archive unpacked into a folder of the same name): ``AudioData/AudioData/DC/a01.wav``
* ``flat``: ``AudioData/DC_a01.wav``

The real corpus has 15 utterances per emotion and 30 neutral per speaker; the default here is
``per_class=4`` and ``neutral=8``. Every speaker reads the same sentence list, as in the real corpus.
``MANIFEST.json`` (in ``out/SAVEE``) holds the ground truth; ids are ``<speaker>_<file stem>``.
"""

from __future__ import annotations

from pathlib import Path

from serkit.data.mini.layout import kind
from serkit.utils import atomic_dir, write_json

from .synth import choose_words, make_speaker, rng_for, synthesize, write_wav

SR = 44100
SPEAKERS = ("DC", "JE", "JK", "KL")
CODES = {
    "a": "anger",
    "d": "disgust",
    "f": "fear",
    "h": "happiness",
    "n": "neutral",
    "sa": "sadness",
    "su": "surprise",
}
VOICE = {
    "a": "anger",
    "d": "disgust",
    "f": "fear",
    "h": "happy",
    "n": "neutral",
    "sa": "sad",
    "su": "surprise",
}
LAYOUTS = ("nested", "double", "flat")


def build(
    out: Path,
    seed: int = 0,
    per_class: int = 4,
    neutral: int = 8,
    speakers: int | tuple = 4,
    layout: str = "nested",
    min_dur: float = 1.0,
    max_dur: float = 2.5,
) -> Path:
    """Write the mini SAVEE under ``out/SAVEE`` (it holds ``AudioData/``) and return ``out/SAVEE``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    names = SPEAKERS[:speakers] if isinstance(speakers, int) else tuple(speakers)
    if not names or not set(names) <= set(SPEAKERS):
        raise ValueError(f"speakers must be a count 1..4 or names from {SPEAKERS}, got {speakers!r}")
    if not 1 <= per_class <= 99 or not 1 <= neutral <= 99:
        raise ValueError("per_class and neutral must be within 1..99 (two-digit file numbers)")
    root = Path(out) / "SAVEE"
    manifest: dict = {
        "corpus": "savee",
        "seed": seed,
        "sample_rate": SR,
        "options": {
            "per_class": per_class,
            "neutral": neutral,
            "speakers": list(names),
            "layout": layout,
            "min_dur": min_dur,
            "max_dur": max_dur,
        },
        "classes": CODES,
        "utterances": {},
    }
    sentences = {}
    for code in CODES:
        rng = rng_for("savee-text", seed, code)
        for i in range(1, (neutral if code == "n" else per_class) + 1):
            sentences[code, i] = choose_words(round(rng.uniform(min_dur, max_dur) * 3.6), rng)
    with atomic_dir(root, kind("savee")) as tmp:
        for spk in names:
            speaker = make_speaker(f"savee-{spk}", "M", seed)
            for code in CODES:
                for i in range(1, (neutral if code == "n" else per_class) + 1):
                    stem = f"{code}{i:02d}"
                    rng = rng_for("savee-utt", seed, spk, stem, min_dur, max_dur)
                    x, info = synthesize(
                        VOICE[code],
                        speaker,
                        rng,
                        SR,
                        words=sentences[code, i],
                        min_dur=min_dur,
                        max_dur=max_dur,
                    )
                    rel = {
                        "nested": f"AudioData/{spk}/{stem}.wav",
                        "double": f"AudioData/AudioData/{spk}/{stem}.wav",
                        "flat": f"AudioData/{spk}_{stem}.wav",
                    }[layout]
                    write_wav(tmp / rel, x, SR)
                    manifest["utterances"][f"{spk}_{stem}"] = {
                        "speaker": spk,
                        "code": code,
                        "emotion": CODES[code],
                        "wav": rel,
                        "num_samples": len(x),
                        "text": info["text"],
                    }
        write_json(tmp / "MANIFEST.json", manifest)
    return root
