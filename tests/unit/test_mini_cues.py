"""The synthetic voices carry emotion cues of the documented direction, learnable across speakers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from serkit.data.mini.synth import EMOTIONS, make_speaker, rng_for, synthesize

SR = 16000
CLASSES = ("neutral", "anger", "happy", "sad", "fear", "disgust", "surprise")
SPEAKERS = (("s1", "F"), ("s2", "M"), ("s3", "F"), ("s4", "M"), ("s5", "F"), ("s6", "M"))
PER_CLASS = 6


def frame_features(x: np.ndarray, sr: int) -> dict:
    """Median log2 F0, F0 s.d. (semitones), active level (dB), syllable rate and a small frame vector."""
    n, hop = int(0.03 * sr), int(0.01 * sr)
    idx = np.arange(n)[None] + hop * np.arange(1 + (len(x) - n) // hop)[:, None]
    fr = x[idx].astype(np.float64)
    energy = 10 * np.log10(np.mean(fr**2, axis=1) + 1e-10)
    active = energy > energy.max() - 25
    zcr = np.mean(np.abs(np.diff(np.sign(fr), axis=1)) > 0, axis=1)
    spec = np.abs(np.fft.rfft(fr * np.hanning(n), axis=1))
    centroid = spec @ np.fft.rfftfreq(n, 1 / sr) / (spec.sum(axis=1) + 1e-10) / 1000
    centred = fr - fr.mean(axis=1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(centred, 2 * n, axis=1)) ** 2, axis=1)[:, :n]
    ac /= ac[:, :1] + 1e-12
    lo, hi = int(sr / 450), int(sr / 60)
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    voiced = active & (ac[np.arange(len(ac)), lag] > 0.5)
    f0 = np.log2(sr / lag[voiced])
    envelope = signal.filtfilt(*signal.butter(2, 8, fs=100), np.maximum(energy, energy.max() - 35))
    peaks, _ = signal.find_peaks(envelope, prominence=3, distance=8)
    span = np.flatnonzero(active)
    a = active
    return {
        "f0": float(np.median(f0)),
        "f0_sd": float(np.std(12 * f0)),
        "level": float(10 * np.log10(np.mean(10 ** (energy[a] / 10)))),  # what the synthesizer sets
        "rate": len(peaks) / ((span[-1] - span[0] + 1) / 100),
        "vector": np.array(
            [
                energy[a].mean(),
                energy[a].std(),
                zcr[a].mean(),
                zcr[a].std(),
                centroid[a].mean(),
                centroid[a].std(),
            ]
        ),
    }


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    rows = []
    for name, gender in SPEAKERS:
        speaker = make_speaker(name, gender, seed=0)
        for emotion in CLASSES:
            for i in range(PER_CLASS):
                rng = rng_for("cue-test", name, emotion, i)
                x, _ = synthesize(emotion, speaker, rng, SR, duration=rng.uniform(1.2, 2.0))
                rows.append({"spk": name, "emo": emotion, **frame_features(x, SR)})
    return rows


def class_means(rows: list[dict], key: str) -> dict[str, float]:
    """Per-class mean of ``key`` after removing each speaker's own mean (gender and habits)."""
    out: dict[str, list[float]] = {}
    for name, _ in SPEAKERS:
        mine = [r for r in rows if r["spk"] == name]
        mu = np.mean([r[key] for r in mine])
        for r in mine:
            out.setdefault(r["emo"], []).append(r[key] - mu)
    return {e: float(np.mean(v)) for e, v in out.items()}


def test_documented_cue_directions(corpus):
    f0 = class_means(corpus, "f0")
    level = class_means(corpus, "level")
    rate = class_means(corpus, "rate")
    spread = class_means(corpus, "f0_sd")
    assert f0["happy"] > f0["neutral"] > f0["sad"]
    assert f0["anger"] > f0["neutral"] and f0["fear"] > f0["neutral"] and f0["disgust"] < f0["neutral"]
    assert level["anger"] > level["happy"] > level["neutral"] > level["sad"]
    assert rate["anger"] > rate["neutral"] > rate["sad"]
    assert rate["fear"] > rate["neutral"] > rate["disgust"]
    assert spread["surprise"] > spread["neutral"] > spread["sad"]
    assert spread["happy"] > spread["neutral"] and spread["anger"] > spread["neutral"]


def test_every_documented_emotion_is_synthesizable():
    speaker = make_speaker("x", "M", 0)
    for emotion in EMOTIONS:
        x, info = synthesize(emotion, speaker, rng_for("all", emotion), 8000, duration=0.6)
        assert x.dtype == np.float32 and len(x) == 4800 and np.abs(x).max() < 1.0
        assert info["text"] and info["syllables"] >= 1
    x, info = synthesize("sad", speaker, rng_for("text"), 16000, words=["wait", "for", "me"], min_dur=0.5)
    assert info["text"] == "wait for me" and len(x) >= 8000


def test_same_key_same_audio_other_key_other_audio():
    speaker = make_speaker("x", "F", 0)
    a, _ = synthesize("anger", speaker, rng_for(1, "u"), SR, duration=1.0)
    b, _ = synthesize("anger", speaker, rng_for(1, "u"), SR, duration=1.0)
    c, _ = synthesize("anger", speaker, rng_for(2, "u"), SR, duration=1.0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("classes", [CLASSES[:4], CLASSES], ids=["4class", "7class"])
def test_linear_model_generalises_to_held_out_speakers(corpus, classes):
    """Learnable across speakers, clearly above chance, but not trivially separable."""
    sklearn = pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    assert sklearn
    rows = [r for r in corpus if r["emo"] in classes]
    held_out = {"s5", "s6"}  # one female, one male speaker never seen in training
    train = [r for r in rows if r["spk"] not in held_out]
    test = [r for r in rows if r["spk"] in held_out]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(np.array([r["vector"] for r in train]), [r["emo"] for r in train])
    predicted = model.predict(np.array([r["vector"] for r in test]))
    accuracy = float(np.mean(predicted == np.array([r["emo"] for r in test])))
    chance = 1 / len(classes)
    assert 2 * chance < accuracy < 0.95, f"held-out-speaker accuracy {accuracy:.2f} (chance {chance:.2f})"
