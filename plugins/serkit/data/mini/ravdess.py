"""A mini RAVDESS: ``Actor_XX/03-01-EE-II-SS-RR-AA.wav`` at 48 kHz, the speech release's layout.

Actors ``1..actors`` (odd male, even female, as in the release), every one of the 8 emotions (calm is
synthesised as a slower, softer neutral), normal intensity and, except for neutral, strong intensity
when ``intensities=2``; ``statements`` of the two sentences and ``repetitions`` takes. The release has
24 actors x 60 files (2 statements x 2 repetitions x (1 + 7 x 2 intensities)); the default here is 8
actors x 32 files (normal intensity only). ``MANIFEST.json`` (in ``out/RAVDESS``) holds the ground
truth; ids are the file stems.
A song file and a video-only file per first actor are written too, as stray files a prepare must skip.
"""

from __future__ import annotations

from pathlib import Path

from serkit.data.mini.layout import kind
from serkit.data.prepare_ravdess import CODE_TO_CLASS
from serkit.utils import atomic_dir, write_json

from .synth import choose_words, make_speaker, rng_for, synthesize, write_wav

SR = 48000
CODES = CODE_TO_CLASS  # the release's emotion codes
VOICE = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}


def build(
    out: Path,
    seed: int = 0,
    actors: int = 8,
    intensities: int = 1,
    statements: int = 2,
    repetitions: int = 2,
    min_dur: float = 1.0,
    max_dur: float = 2.0,
) -> Path:
    """Write the mini RAVDESS under ``out/RAVDESS`` (it holds ``Actor_XX/``) and return ``out/RAVDESS``."""
    if not 1 <= actors <= 24:
        raise ValueError(f"actors must be within 1..24, got {actors}")
    for name, v in (("intensities", intensities), ("statements", statements), ("repetitions", repetitions)):
        if v not in (1, 2):
            raise ValueError(f"{name} must be 1 or 2, got {v}")
    root = Path(out) / "RAVDESS"
    manifest: dict = {
        "corpus": "ravdess",
        "seed": seed,
        "sample_rate": SR,
        "options": {
            "actors": actors,
            "intensities": intensities,
            "statements": statements,
            "repetitions": repetitions,
            "min_dur": min_dur,
            "max_dur": max_dur,
        },
        "classes": CODES,
        "utterances": {},
    }
    sentences = {
        s: choose_words(
            round(rng_for("ravdess-text", seed, s).uniform(min_dur, max_dur) * 3.6),
            rng_for("ravdess-text", seed, s),
        )
        for s in range(1, statements + 1)
    }
    with atomic_dir(root, kind("ravdess")) as tmp:
        for a in range(1, actors + 1):
            speaker = make_speaker(f"ravdess-{a}", "M" if a % 2 else "F", seed)
            for code in CODES:
                for intensity in range(1, (1 if code == "01" else intensities) + 1):
                    for s in range(1, statements + 1):
                        for r in range(1, repetitions + 1):
                            stem = f"03-01-{code}-{intensity:02d}-{s:02d}-{r:02d}-{a:02d}"
                            rng = rng_for("ravdess-utt", seed, stem)
                            x, info = synthesize(
                                VOICE[code],
                                speaker,
                                rng,
                                SR,
                                words=sentences[s],
                                min_dur=min_dur,
                                max_dur=max_dur,
                            )
                            rel = f"Actor_{a:02d}/{stem}.wav"
                            write_wav(tmp / rel, x, SR)
                            manifest["utterances"][stem] = {
                                "speaker": f"Actor_{a:02d}",
                                "code": code,
                                "emotion": CODES[code],
                                "wav": rel,
                                "num_samples": len(x),
                                "text": info["text"],
                            }
            if a == 1:  # files of the other releases that share the folders' names
                for stray in (f"03-02-03-01-01-01-{a:02d}.wav", f"02-01-03-01-01-01-{a:02d}.wav"):
                    write_wav(tmp / f"Actor_{a:02d}" / stray, x, SR)
        write_json(tmp / "MANIFEST.json", manifest)
    return root
