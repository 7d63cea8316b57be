"""Deterministic source-filter synthesis of emotional speech-like utterances for the mini corpora.

The mini corpora (IEMOCAP, MELD, SAVEE layouts) must exercise the whole pipeline on a 2-core CPU,
so the audio must be cheap to make, identical for the same seed, and carry emotion cues whose
direction is known, so that a test can check that a model learned something rather than nothing.

The voice model
---------------
* Source: a Rosenberg glottal-flow pulse per period (its derivative, so radiation is included), driven by
  an F0 contour in semitones (declination, pitch accents on stressed syllables, an emotion-specific
  contour shape, fear's tremor), with per-period jitter and shimmer, creak (alternating periods,
  lowered F0) where the emotion asks for it, and pitch-synchronous aspiration noise (breathiness).
  The open quotient and a one-pole low-pass set the spectral tilt (tense = flat, breathy = steep).
* Filter: each vowel is a cascade of formant resonators (F1..F4, plus F5 at high sample rates), the
  formants scaled by the speaker's vocal-tract factor; nasal/liquid onsets are weak low-formant voicing;
  fricatives and stop bursts are band-passed noise. Segments are filtered separately and overlap-added
  (the filters are linear, so this is exact superposition of the gated sources).
* Timing: syllables at the emotion's tempo times the speaker's rate, stressed syllables longer, short
  pauses between words (longer and more frequent when sad), leading and trailing silence.
* Level: the active-speech RMS is set to -26 dBFS plus the emotion's energy offset; a -62 dBFS noise
  floor keeps silence from being digital zero.

Emotion cues (relative to the same speaker's neutral)
------------------------------------------------------
============ ======= ======== ========= ======= ====== ====== ======= ======= ===== ==========================
emotion      F0 (st) range st tempo s/s energy  OQ     tilt   breath  jitter  creak contour / other
============ ======= ======== ========= ======= ====== ====== ======= ======= ===== ==========================
neutral       0.0     3.0      4.2       0 dB   0.60   0.45   0.05    0.6 %   0     falling declination
anger        +3.0     7.0      5.2      +7 dB   0.40   0.10   0.02    1.0 %   0     strong accents, tense/flat
happy        +4.0     8.0      4.8      +3.5 dB 0.50   0.25   0.04    0.8 %   0     rise-fall, bright (F +4 %)
sad          -2.0     1.5      3.0      -6 dB   0.75   0.70   0.25    0.9 %   0     flat, long pauses, breathy
fear         +5.0     4.0      5.6      +1 dB   0.55   0.40   0.12    3.0 %   0     6 Hz F0 tremor, jittery
disgust      -3.0     3.5      3.2      +1 dB   0.45   0.35   0.06    2.0 %   0.6   creaky/harsh, shimmer 10 %
surprise     +4.0    10.0      4.6      +3 dB   0.55   0.35   0.06    0.8 %   0     large final rise
excited      +5.0     9.0      5.2      +5 dB   0.45   0.20   0.04    0.8 %   0     IEMOCAP exc: aroused happy
frustrated   +1.5     4.0      4.6      +3.5 dB 0.50   0.30   0.05    1.2 %   0.15  IEMOCAP fru
other        +0.5     3.5      4.2      +0.5 dB 0.60   0.45   0.06    0.8 %   0     IEMOCAP oth
============ ======= ======== ========= ======= ====== ====== ======= ======= ===== ==========================

So, in expectation: F0 fear > happy ~ surprise > anger > neutral > sad > disgust; energy anger > happy >
neutral > sad; tempo fear > anger > happy > neutral > disgust > sad; F0 range surprise > happy > anger >
neutral > sad. Each utterance scales its class's deviation from neutral by an intensity drawn from
U(0.35, 1.15) times the speaker's expressiveness, and adds independent noise to every cue (F0 +-1.2 st,
energy +-2.5 dB, tempo +-12 %, range +-25 %), so classes overlap and the task is learnable but not trivial.
Speakers differ in F0 base (male ~115 Hz, female ~210 Hz), vocal-tract length (formant scale), speaking
rate, loudness and voice quality, so a model has to generalise across speakers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import signal

__all__ = [
    "EMOTIONS",
    "Cues",
    "Speaker",
    "make_speaker",
    "synthesize",
    "choose_words",
    "rng_for",
    "to_int16",
    "write_wav",
    "wav_bytes",
]


@dataclasses.dataclass(frozen=True)
class Cues:
    """Acoustic targets of one emotion (see the table in the module docstring)."""

    f0_shift: float  # semitones above the speaker's base F0
    f0_range: float  # semitones of accent excursion
    tempo: float  # syllables per second
    energy: float  # dB relative to neutral
    open_quotient: float  # glottal open phase / period: larger = laxer, breathier
    tilt: float  # one-pole low-pass coefficient on the source: larger = steeper spectral tilt
    breath: float  # aspiration noise relative to the voiced source
    jitter: float  # relative s.d. of period length
    shimmer: float  # relative s.d. of period amplitude
    creak: float = 0.0  # probability that a syllable is creaky
    contour: str = "fall"  # fall | rise_fall | flat | rise_end | tremor
    pause: float = 0.15  # probability of a pause after a word
    formant: float = 1.0  # formant scale (smiling raises formants)


EMOTIONS: dict[str, Cues] = {
    "neutral": Cues(0.0, 3.0, 4.2, 0.0, 0.60, 0.45, 0.05, 0.006, 0.03),
    "anger": Cues(3.0, 7.0, 5.2, 7.0, 0.40, 0.10, 0.02, 0.010, 0.05, pause=0.10),
    "happy": Cues(
        4.0, 8.0, 4.8, 3.5, 0.50, 0.25, 0.04, 0.008, 0.04, contour="rise_fall", pause=0.10, formant=1.04
    ),
    "sad": Cues(
        -2.0, 1.5, 3.0, -6.0, 0.75, 0.70, 0.25, 0.009, 0.04, contour="flat", pause=0.35, formant=0.98
    ),
    "fear": Cues(5.0, 4.0, 5.6, 1.0, 0.55, 0.40, 0.12, 0.030, 0.08, contour="tremor", pause=0.20),
    "disgust": Cues(-3.0, 3.5, 3.2, 1.0, 0.45, 0.35, 0.06, 0.020, 0.10, creak=0.6, pause=0.20),
    "surprise": Cues(4.0, 10.0, 4.6, 3.0, 0.55, 0.35, 0.06, 0.008, 0.04, contour="rise_end", pause=0.10),
    "excited": Cues(
        5.0, 9.0, 5.2, 5.0, 0.45, 0.20, 0.04, 0.008, 0.04, contour="rise_fall", pause=0.10, formant=1.04
    ),
    "frustrated": Cues(1.5, 4.0, 4.6, 3.5, 0.50, 0.30, 0.05, 0.012, 0.05, creak=0.15),
    "other": Cues(0.5, 3.5, 4.2, 0.5, 0.60, 0.45, 0.06, 0.008, 0.04),
    "calm": Cues(-1.0, 2.0, 3.6, -3.0, 0.65, 0.55, 0.10, 0.006, 0.03, pause=0.20),  # RAVDESS's calm
}

_NUMERIC = (
    "f0_shift",
    "f0_range",
    "tempo",
    "energy",
    "open_quotient",
    "tilt",
    "breath",
    "jitter",
    "shimmer",
    "creak",
    "pause",
    "formant",
)


@dataclasses.dataclass(frozen=True)
class Speaker:
    """A synthetic talker: F0 base, vocal-tract scale and habits."""

    name: str
    gender: str  # "F" or "M"
    f0_base: float  # Hz
    formant_scale: float  # 1.0 = adult male vocal tract
    formant_jitter: tuple[float, float, float, float]  # per-formant offsets (relative)
    rate: float  # multiplies the emotion's tempo
    loudness: float  # dB offset
    tilt: float  # added to the emotion's tilt
    breath: float  # multiplies the emotion's breathiness
    expressiveness: float  # scales emotion deviations from neutral


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded by a stable hash of ``key`` (order-independent of what else is built)."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


def make_speaker(name: str, gender: str, seed: int) -> Speaker:
    rng = rng_for("speaker", seed, name)
    if gender == "F":
        f0, scale = 210.0 * np.exp(rng.normal(0, 0.08)), 1.17 * (1 + rng.normal(0, 0.03))
    else:
        f0, scale = 115.0 * np.exp(rng.normal(0, 0.08)), 1.0 * (1 + rng.normal(0, 0.03))
    return Speaker(
        name=name,
        gender=gender,
        f0_base=float(f0),
        formant_scale=float(scale),
        formant_jitter=tuple(float(v) for v in rng.normal(0, 0.04, 4)),
        rate=float(np.exp(rng.normal(0, 0.08))),
        loudness=float(rng.normal(0, 1.5)),
        tilt=float(rng.normal(0, 0.06)),
        breath=float(np.exp(rng.normal(0, 0.3))),
        expressiveness=float(rng.uniform(0.8, 1.2)),
    )


# ----------------------------------------------------------------------------------------------- text
VOCABULARY = (
    "yes no okay well really what where why now here there right sure fine just stop wait "
    "look listen maybe never always please thanks sorry about little money leave coming "
    "tomorrow tonight together believe nothing something everybody happy honey baby "
    "married wedding letter morning telephone minute husband afraid terrible wonderful "
    "understand remember office airport ticket promise forget morning family".split()
)


def syllables(word: str) -> list[tuple[str, str]]:
    """Split ``word`` into (onset class, vowel) pairs by vowel letter groups.

    Onset classes: ``fric``, ``stop``, ``son`` (nasal/liquid/glide) or ``""``. The vowel is one of the
    keys of the formant table. Crude, but it makes the same text give the same segment structure.
    """
    vowels = {"a": "a", "e": "e", "i": "i", "o": "o", "u": "u", "y": "i"}
    fric, stop = set("sfzvhcx"), set("ptkbdgq")
    out: list[tuple[str, str]] = []
    onset = ""
    i = 0
    w = word.lower()
    while i < len(w):
        ch = w[i]
        if ch in vowels:
            j = i
            while j < len(w) and w[j] in vowels:
                j += 1
            group = w[i:j]
            vowel = {
                "ee": "i",
                "oo": "u",
                "ea": "i",
                "ou": "ae",
                "ai": "e",
                "ay": "e",
                "oa": "o",
                "ie": "i",
                "io": "o",
                "er": "er",
            }.get(group[:2], vowels[group[0]])
            out.append((onset, vowel))
            onset, i = "", j
            continue
        if not onset:
            onset = "fric" if ch in fric else "stop" if ch in stop else "son"
        i += 1
    if not out:
        out.append((onset, "er"))
    # A silent final "e" does not make a syllable ("promise", "believe").
    if len(out) > 1 and w.endswith("e") and out[-1][1] == "e" and not w.endswith("ee"):
        out.pop()
    return out


def choose_words(
    n_syllables: int, rng: np.random.Generator, vocabulary: Sequence[str] = VOCABULARY
) -> list[str]:
    """Words from ``vocabulary`` whose syllable count adds up to about ``n_syllables`` (at least one)."""
    words: list[str] = []
    total = 0
    while total < n_syllables or not words:
        word = vocabulary[int(rng.integers(len(vocabulary)))]
        n = len(syllables(word))
        if words and total + n > n_syllables + 1:
            short = [w for w in vocabulary if len(syllables(w)) == 1]
            word, n = short[int(rng.integers(len(short)))], 1
        words.append(word)
        total += n
    return words


# ---------------------------------------------------------------------------------------------- audio
_FORMANTS = {  # adult male F1, F2, F3, F4 (Hz)
    "a": (730, 1090, 2440, 3400),
    "e": (530, 1840, 2480, 3500),
    "i": (270, 2290, 3010, 3700),
    "o": (570, 840, 2410, 3300),
    "u": (300, 870, 2240, 3300),
    "ae": (660, 1720, 2410, 3400),
    "er": (490, 1350, 1690, 3300),
}
_BANDWIDTHS = (80.0, 100.0, 140.0, 200.0, 250.0)


def _resonator_sos(formants: tuple[float, ...], sr: int) -> np.ndarray:
    """Second-order sections of a cascade of unity-DC-gain formant resonators (Klatt style)."""
    sos = []
    for f, bw in zip(formants, _BANDWIDTHS):
        if f >= 0.45 * sr:
            continue
        r = np.exp(-np.pi * bw / sr)
        a1, a2 = -2 * r * np.cos(2 * np.pi * f / sr), r * r
        sos.append([1 + a1 + a2, 0.0, 0.0, 1.0, a1, a2])
    return np.asarray(sos)


@functools.lru_cache(maxsize=256)
def _bandpass(lo: float, hi: float, sr: int) -> np.ndarray:
    hi = min(hi, 0.45 * sr)
    lo = min(lo, 0.6 * hi)
    return signal.butter(2, [lo, hi], btype="bandpass", fs=sr, output="sos")


def _jittered_cues(emotion: str, speaker: Speaker, rng: np.random.Generator) -> dict[str, float]:
    """The class's cues moved towards or past neutral by a random intensity, plus per-cue noise."""
    base, target = EMOTIONS["neutral"], EMOTIONS[emotion]
    k = rng.uniform(0.35, 1.15) * speaker.expressiveness
    c = {n: getattr(base, n) + k * (getattr(target, n) - getattr(base, n)) for n in _NUMERIC}
    c["f0_shift"] += rng.normal(0, 1.2)
    c["energy"] += rng.normal(0, 2.5) + speaker.loudness
    c["tempo"] *= np.exp(rng.normal(0, 0.12)) * speaker.rate
    c["f0_range"] = max(0.5, c["f0_range"] * np.exp(rng.normal(0, 0.25)))
    c["open_quotient"] = float(np.clip(c["open_quotient"] + rng.normal(0, 0.05), 0.3, 0.85))
    c["tilt"] = float(np.clip(c["tilt"] + speaker.tilt + rng.normal(0, 0.08), 0.0, 0.9))
    c["breath"] = max(0.0, c["breath"] * speaker.breath * np.exp(rng.normal(0, 0.3)))
    c["jitter"] = max(0.0, c["jitter"] * np.exp(rng.normal(0, 0.3)))
    c["shimmer"] = max(0.0, c["shimmer"] * np.exp(rng.normal(0, 0.3)))
    return c


def synthesize(
    emotion: str,
    speaker: Speaker,
    rng: np.random.Generator,
    sr: int = 16000,
    duration: float | None = None,
    words: list[str] | None = None,
    min_dur: float = 0.5,
    max_dur: float = 30.0,
) -> tuple[np.ndarray, dict]:
    """Synthesize one utterance.

    Parameters
    ----------
    emotion : a key of ``EMOTIONS``.
    speaker : the talker.
    rng : the utterance's generator (use ``rng_for(...)`` so the result depends only on its key).
    sr : sample rate in Hz.
    duration : target length in seconds; the words are chosen to fit it. Ignored if ``words`` is given.
    words : a fixed text (scripted sentences); the length then follows the tempo, clamped to
        [min_dur, max_dur].

    Returns
    -------
    (float32 waveform in [-1, 1], info) where info holds ``text``, ``syllables``, ``duration`` and the
    drawn cue values.

    Examples
    --------
    >>> spk = make_speaker("A", "F", 0)
    >>> x, info = synthesize("anger", spk, rng_for(0, "x"), sr=16000, duration=1.2)
    >>> x.shape, x.dtype
    ((19200,), dtype('float32'))
    """
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; known: {sorted(EMOTIONS)}")
    cues = _jittered_cues(emotion, speaker, rng)
    fixed_text = words is not None
    lead, trail = rng.uniform(0.06, 0.18), rng.uniform(0.08, 0.2)
    pause_len = 0.18 if emotion == "sad" else 0.12
    if words is None:
        if duration is None:
            raise ValueError("give a duration or words")
        speech = max(0.2, duration - lead - trail) * (1 - cues["pause"] * 0.25)
        words = choose_words(max(1, round(speech * cues["tempo"])), rng)

    # --- timeline: (kind, start, end, payload) with times in seconds before rescaling
    segs: list[list] = []
    t = lead
    syl_index = 0
    accents: list[tuple[float, float]] = []  # (time, semitone offset in units of range)
    energies: list[float] = []
    creaky: list[bool] = []
    for wi, word in enumerate(words):
        for si, (onset, vowel) in enumerate(syllables(word)):
            stressed = si == 0
            syl = (1.25 if stressed else 0.85) / cues["tempo"] * rng.uniform(0.8, 1.2)
            if onset == "fric":
                d = min(0.4 * syl, rng.uniform(0.05, 0.09))
            elif onset == "stop":
                d = min(0.35 * syl, rng.uniform(0.04, 0.07))
            elif onset == "son":
                d = min(0.3 * syl, rng.uniform(0.03, 0.06))
            else:
                d = 0.0
            if d:
                segs.append([onset, t, t + d, syl_index])
            segs.append(["vowel", t + d, t + syl, (vowel, syl_index)])
            accented = stressed and rng.random() < 0.7
            accents.append(
                (t + d + 0.5 * (syl - d), rng.uniform(0.5, 1.0) if accented else rng.uniform(-0.3, 0.2))
            )
            energies.append((1.0 if stressed else 0.7) * rng.uniform(0.85, 1.15))
            creaky.append(bool(rng.random() < cues["creak"]))
            syl_index += 1
            t += syl
        if wi < len(words) - 1 and rng.random() < cues["pause"]:
            t += pause_len * rng.uniform(0.6, 1.6)
    total = t + trail
    if duration is not None and not fixed_text:
        scale = duration / total
    else:
        scale = float(np.clip(total, min_dur, max_dur)) / total
    for s in segs:
        s[1] *= scale
        s[2] *= scale
    accents = [(a * scale, v) for a, v in accents]
    total *= scale
    n = max(1, int(round(total * sr)))
    tt = np.arange(n) / sr

    # --- F0 contour (semitones re the speaker's base)
    R = cues["f0_range"]
    contour = EMOTIONS[emotion].contour
    at = np.array([a for a, _ in accents])
    av = np.array([v for _, v in accents]) * R
    if contour == "flat":
        av *= 0.4
    if contour == "rise_fall":
        av += R * 0.3 * np.sin(np.pi * np.clip(at / total, 0, 1))
    if contour == "rise_end":
        last = at / total > 0.65
        av[last] += R * np.linspace(0.4, 1.2, max(1, int(last.sum())))[: int(last.sum())]
    st = cues["f0_shift"] + np.interp(tt, at, av) + R * 0.35 * (0.5 - tt / total)
    if contour == "tremor":
        st += 0.6 * np.sin(2 * np.pi * rng.uniform(5.5, 7.0) * tt + rng.uniform(0, 6.28))
    # Smooth jumps between control points (~15 Hz), zero-phase.
    b, a = signal.butter(1, 15.0, fs=sr)
    st = signal.filtfilt(b, a, st)
    f0 = speaker.f0_base * 2.0 ** (st / 12.0)

    # creak mask: per creaky syllable, smooth
    creak = np.zeros(n)
    for s in segs:
        if s[0] == "vowel" and creaky[s[3][1]]:
            creak[int(s[1] * sr) : int(s[2] * sr)] = 1.0
    if creak.any():
        creak = signal.filtfilt(b, a, creak)
    f0 = f0 * (1 - 0.35 * creak)

    # --- glottal source with jitter, shimmer, creak alternation
    phase = np.cumsum(f0 / sr)
    k = phase.astype(np.int64)
    nper = int(k[-1]) + 2
    jit = rng.normal(0, cues["jitter"], nper)
    alt = np.where(np.arange(nper) % 2 == 0, 1.0, -1.0)
    f0j = f0 * (1 + jit[k] + 0.18 * creak * alt[k])
    phase = np.cumsum(f0j / sr)
    k = phase.astype(np.int64)
    frac = phase - k
    shim = 1 + rng.normal(0, cues["shimmer"], int(k[-1]) + 2)
    amp = shim[k] * (1 - 0.45 * creak * (k % 2))
    oq = cues["open_quotient"]
    tp, tn = 0.6 * oq, 0.4 * oq
    flow = np.where(
        frac < tp,
        0.5 * (1 - np.cos(np.pi * frac / tp)),
        np.where(frac < tp + tn, np.cos(0.5 * np.pi * np.clip(frac - tp, 0, None) / tn), 0.0),
    )
    src = np.diff(flow, prepend=flow[0]) * (sr / f0j) * amp  # d(flow)/d(phase): level independent of F0
    src = signal.lfilter([1 - cues["tilt"]], [1, -cues["tilt"]], src)
    noise = rng.standard_normal(n)
    asp = signal.sosfilt(_bandpass(1500.0, 7000.0, sr), noise) * (0.4 + 0.6 * (frac < oq))
    src = src / (np.sqrt(np.mean(src**2)) + 1e-9) + cues["breath"] * 2.5 * asp

    # --- segments through the vocal tract
    out = np.zeros(n + int(0.05 * sr))
    ramp = max(2, int(0.012 * sr))
    fs = speaker.formant_scale * cues["formant"]
    arousal = 1 + 0.015 * (cues["energy"] - speaker.loudness)  # F1 rises with vocal effort
    for kind, t0, t1, payload in segs:
        i0, i1 = int(t0 * sr), min(n, int(t1 * sr))
        if i1 - i0 < 4:
            continue
        gate = np.ones(i1 - i0)
        r = min(ramp, (i1 - i0) // 2)
        gate[:r] = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
        gate[-r:] = gate[:r][::-1]
        tail = int(0.03 * sr)
        if kind == "vowel":
            vowel, si = payload
            fm = np.array(_FORMANTS[vowel], dtype=float) * fs * (1 + np.array(speaker.formant_jitter))
            fm[0] *= arousal
            fm = tuple(fm) + ((4500 * fs,) if sr > 20000 else ())
            seg = src[i0:i1] * gate * energies[si]
            y = signal.sosfilt(_resonator_sos(fm, sr), np.concatenate([seg, np.zeros(tail)]))
            out[i0 : i1 + tail] += y
        elif kind == "son":
            fm = (280 * fs, 1300 * fs, 2500 * fs, 3400 * fs)
            seg = src[i0:i1] * gate * 0.35
            y = signal.sosfilt(_resonator_sos(fm, sr), np.concatenate([seg, np.zeros(tail)]))
            out[i0 : i1 + tail] += y
        elif kind == "fric":
            lo, hi = (3500.0, 7500.0) if rng.random() < 0.6 else (1800.0, 6000.0)
            seg = noise[i0:i1] * gate * 0.25
            out[i0:i1] += signal.sosfilt(_bandpass(lo * fs, hi * fs, sr), seg)
        else:  # stop: closure silence, then a short burst
            b0 = i1 - min(i1 - i0, int(0.018 * sr))
            burst = noise[b0:i1] * np.hanning(i1 - b0) * 0.5
            cf = rng.choice([1200.0, 2000.0, 4000.0]) * fs
            out[b0:i1] += signal.sosfilt(_bandpass(0.6 * cf, 1.8 * cf, sr), burst)
    out = out[:n]

    # --- level: active-speech RMS, then a faint noise floor
    frame = max(1, int(0.02 * sr))
    m = n // frame * frame
    fr = out[:m].reshape(-1, frame)
    rms = np.sqrt(np.mean(fr**2, axis=1))
    active = fr[rms > 0.1 * rms.max()] if m else out[None]
    level = np.sqrt(np.mean(active**2)) + 1e-12
    target = 10 ** ((-26.0 + cues["energy"]) / 20)
    out = out * (target / level)
    out += rng.normal(0, 10 ** (-62 / 20), n)
    peak = np.max(np.abs(out))
    if peak > 0.9:  # a gentle limiter, as a real recording chain would have, never hard clipping
        out = np.tanh(out / 0.9) * 0.9
    info = {
        "text": " ".join(words),
        "syllables": syl_index,
        "duration": n / sr,
        **{name: round(float(v), 4) for name, v in cues.items() if name in _NUMERIC},
    }
    return out.astype(np.float32), info


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")


def wav_bytes(x: np.ndarray, sr: int) -> bytes:
    """16-bit PCM WAV bytes of a float waveform (mono (n,) or (n, channels)); no timestamps, so stable."""
    pcm = to_int16(x)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1 if pcm.ndim == 1 else pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def write_wav(path: Path, x: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(x, sr))
