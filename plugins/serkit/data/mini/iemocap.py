"""A mini IEMOCAP_full_release: the real layout, file formats and quirks, synthetic audio.

Layout written under ``out/IEMOCAP_full_release``::

    Session{n}/sentences/wav/<dialog>/<utt>.wav          16 kHz mono 16-bit PCM
    Session{n}/sentences/wav/<dialog>/._<utt>.wav        macOS AppleDouble junk (not audio)
    Session{n}/sentences/wav/<dialog>/<dialog>.pk        a pickle, as in some real copies
    Session{n}/dialog/EmoEvaluation/<dialog>.txt         the labels, in the release's exact format
    Session{n}/dialog/EmoEvaluation/{Categorical,Attribute,Self-evaluation}/...   per-evaluator files
                                                         that look like evaluation files (must be ignored)
    Session{n}/dialog/EmoEvaluation/._<dialog>.txt, <dialog>.txt~ (session 1)
    Session{n}/dialog/transcriptions/<dialog>.txt        ``<utt> [start-end]: words``
    MANIFEST.json                                        the ground truth (not part of the real corpus)

Each session has two speakers (``Ses0nF``, ``Ses0nM``) who both talk in all four dialogs
(``Ses0nF_impro01``, ``Ses0nM_impro02``, ``Ses0nF_script01_1``, ``Ses0nM_script02_2``); the speaker of an
utterance is the letter after its LAST underscore. Scripted dialogs use the same sentences in every
session, as in the real corpus. Per speaker: ``utts_per_class`` utterances of each 4-class emotion
(happy split between ``exc`` and ``hap``), plus ``extra_per_speaker`` utterances labelled outside the
4-class set (fru, sur, xxx, oth, fea, dis in turn). Session 1's female speaker has one extra wav (and
transcript line) with no evaluation line.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from serkit.data.mini.layout import kind
from serkit.utils import atomic_dir, write_json

from .synth import VOCABULARY, choose_words, make_speaker, rng_for, synthesize, write_wav

SR = 16000
FOUR_CLASS = {"neu": "neu", "hap": "hap", "exc": "hap", "sad": "sad", "ang": "ang"}
EXTRA_LABELS = ("fru", "sur", "xxx", "oth", "fea", "dis")
# raw code -> synthesizer emotion
VOICE = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "excited",
    "sad": "sad",
    "ang": "anger",
    "fru": "frustrated",
    "sur": "surprise",
    "oth": "other",
    "fea": "fear",
    "dis": "disgust",
}
# raw code -> evaluator vocabulary
NAMES = {
    "neu": "Neutral",
    "hap": "Happiness",
    "exc": "Excited",
    "sad": "Sadness",
    "ang": "Anger",
    "fru": "Frustration",
    "sur": "Surprise",
    "oth": "Other",
    "fea": "Fear",
    "dis": "Disgust",
}
# raw code -> typical (valence, activation, dominance) on the 1..5 scale
VAD = {
    "neu": (2.5, 2.5, 2.5),
    "hap": (4.0, 3.0, 3.0),
    "exc": (4.0, 3.5, 3.0),
    "sad": (2.0, 2.0, 2.0),
    "ang": (1.5, 4.0, 4.0),
    "fru": (2.0, 3.5, 3.5),
    "sur": (3.5, 3.5, 3.0),
    "oth": (3.0, 3.0, 3.0),
    "fea": (2.0, 3.5, 2.0),
    "dis": (1.5, 3.0, 3.5),
    "xxx": (2.5, 3.0, 3.0),
}
DIALOGS = ("{s}F_impro01", "{s}M_impro02", "{s}F_script01_1", "{s}M_script02_2")
APPLEDOUBLE = (
    bytes.fromhex("00051607")
    + bytes.fromhex("00020000")
    + b"Mac OS X        "
    + bytes.fromhex("0002")
    + b"\0" * 58
    + b"ATTR"
    + b"\0" * 4002
)


def _script(name: str, seed: int, n_lines: int, min_dur: float, max_dur: float) -> list[list[str]]:
    """The sentences of a script: the same for every session (the real corpus' scripted dialogs)."""
    rng = rng_for("iemocap-script", seed, name)
    lines = []
    for _ in range(n_lines):
        dur = rng.uniform(min_dur, max_dur)
        lines.append(choose_words(max(1, round((dur - 0.3) * 4.0)), rng, VOCABULARY))
    return lines


def _evaluation(code: str, rng: np.random.Generator) -> tuple[list[str], tuple[float, float, float]]:
    """Evaluator lines (C-* categorical, A-* attribute) and the averaged [V, A, D] for one turn."""
    lines = []
    evaluators = ["E1", "E2", "E3", "E4", "E5", "E6"]
    chosen = sorted(rng.choice(evaluators, size=3, replace=False).tolist())
    others = [c for c in NAMES if c not in (code, "oth")]
    for i, ev in enumerate(chosen):
        if code == "xxx":  # no majority: every evaluator says something different
            names = [NAMES[others[(i * 3 + int(rng.integers(3))) % len(others)]]]
        elif i == 2 and rng.random() < 0.4:  # a dissenting evaluator, sometimes with two labels
            names = [NAMES[others[int(rng.integers(len(others)))]]]
            if rng.random() < 0.5:
                names.append(NAMES[code])
        else:
            names = [NAMES[code]]
        note = "" if rng.random() < 0.7 else rng.choice(["curious", "mildly annoyed", "tired", "amused"])
        lines.append(f"C-{ev}:\t" + " ".join(f"{n};" for n in names) + f"\t({note})")
    vad = np.zeros(3)
    base = np.array(VAD[code])
    attr = ["E1", "E2", "F1"] if rng.random() < 0.5 else ["E3", "E4", "M1"]
    for ev in attr:
        v, a, d = np.clip(np.round(base + rng.normal(0, 0.6, 3)), 1, 5).astype(int)
        vad += (v, a, d)
        lines.append(f"A-{ev}:\tval {v}; act {a}; dom  {d};\t()")
    return lines, tuple(float(x) for x in vad / len(attr))


def build(
    out: Path,
    seed: int = 0,
    sessions: int | Iterable[int] = (1, 2, 3, 4, 5),
    utts_per_class: int = 6,
    extra_per_speaker: int = 4,
    min_dur: float = 1.0,
    max_dur: float = 2.5,
    quirks: bool = True,
) -> Path:
    """Write the mini IEMOCAP under ``out/IEMOCAP_full_release`` and return that directory.

    ``sessions``: an int n (sessions 1..n) or an iterable of session numbers (1..5).
    ``quirks``: write the stray files of real copies (AppleDouble, .pk, evaluator sub-folders, backups,
    the unlabelled wav). Audio of an utterance depends only on (seed, utterance id, its label, options),
    not on which other sessions are built.
    """
    if isinstance(sessions, int):
        sessions = tuple(range(1, sessions + 1))
    sessions = tuple(sorted(set(int(s) for s in sessions)))
    if not sessions or not set(sessions) <= {1, 2, 3, 4, 5}:
        raise ValueError(f"sessions must be within 1..5, got {sessions}")
    if not 0 < min_dur <= max_dur:
        raise ValueError(f"need 0 < min_dur <= max_dur, got {min_dur}, {max_dur}")
    root = Path(out) / "IEMOCAP_full_release"
    scripts = {
        name: _script(name, seed, 4 * utts_per_class + extra_per_speaker + 2, min_dur, max_dur)
        for name in ("script01_1", "script02_2")
    }
    manifest: dict = {
        "corpus": "iemocap",
        "seed": seed,
        "sample_rate": SR,
        "options": {
            "sessions": list(sessions),
            "utts_per_class": utts_per_class,
            "extra_per_speaker": extra_per_speaker,
            "min_dur": min_dur,
            "max_dur": max_dur,
            "quirks": quirks,
        },
        "four_class": FOUR_CLASS,
        "utterances": {},
        "unlabelled": [],
    }
    with atomic_dir(root, kind("iemocap")) as tmp:
        for n in sessions:
            sess = f"Ses0{n}"
            sdir = tmp / f"Session{n}"
            speakers = {g: make_speaker(f"{sess}{g}", g, seed) for g in "FM"}
            dialogs = [d.format(s=sess) for d in DIALOGS]
            turns: dict[str, list[tuple[str, str | None]]] = {d: [] for d in dialogs}
            for g in "FM":
                labels = (
                    ["neu", "sad", "ang"] * utts_per_class
                    + [("exc", "hap")[i % 2] for i in range(utts_per_class)]
                    + [EXTRA_LABELS[(i + (g == "M")) % len(EXTRA_LABELS)] for i in range(extra_per_speaker)]
                )
                order = rng_for("iemocap-order", seed, sess, g).permutation(len(labels))
                for j, i in enumerate(order):
                    turns[dialogs[j % len(dialogs)]].append((g, labels[i]))
            if quirks and n == sessions[0]:
                turns[dialogs[0]].append(("F", None))  # a wav nobody evaluated
            for dialog in dialogs:
                drng = rng_for("iemocap-dialog", seed, dialog)
                items = [turns[dialog][i] for i in drng.permutation(len(turns[dialog]))]
                if items and items[-1][1] is None:  # keep the unlabelled turn off the end
                    items.insert(0, items.pop())
                counters = {"F": 0, "M": 0}
                script = scripts.get(dialog.split("_", 1)[1])
                t = drng.uniform(2.0, 8.0)
                eval_blocks, trans_lines, self_blocks, cat_lines, atr_lines = [], [], [], [], []
                for line_no, (g, code) in enumerate(items):
                    utt = f"{dialog}_{g}{counters[g]:03d}"
                    counters[g] += 1
                    urng = rng_for("iemocap-utt", seed, utt, code, min_dur, max_dur)
                    emotion = VOICE.get(code) if code != "xxx" else None
                    if emotion is None:  # xxx or unlabelled: a blend nobody agrees on
                        emotion = ["neutral", "frustrated", "anger", "happy", "sad"][int(urng.integers(5))]
                    if script is not None:
                        words = script[line_no % len(script)]
                        x, info = synthesize(
                            emotion, speakers[g], urng, SR, words=words, min_dur=min_dur, max_dur=max_dur
                        )
                    else:
                        x, info = synthesize(
                            emotion, speakers[g], urng, SR, duration=urng.uniform(min_dur, max_dur)
                        )
                    rel = Path(f"Session{n}/sentences/wav/{dialog}/{utt}.wav")
                    write_wav(tmp / rel, x, SR)
                    start, end = t, t + len(x) / SR
                    t = end + drng.uniform(0.3, 2.0)
                    trans_lines.append(f"{utt} [{start:08.4f}-{end:08.4f}]: {info['text'].capitalize()}.")
                    entry = {
                        "speaker": f"{sess}{g}",
                        "session": n,
                        "dialog": dialog,
                        "gender": g,
                        "raw": code,
                        "emo4": FOUR_CLASS.get(code) if code else None,
                        "text": info["text"].capitalize() + ".",
                        "start": round(start, 4),
                        "end": round(end, 4),
                        "num_samples": len(x),
                        "wav": rel.as_posix(),
                        "voice": emotion,
                    }
                    if code is None:
                        manifest["unlabelled"].append(utt)
                        entry.pop("emo4")
                        manifest["utterances"][utt] = entry
                        continue
                    manifest["utterances"][utt] = entry
                    lines, vad = _evaluation(code, drng)
                    span = f"[{start:.4f} - {end:.4f}]"
                    head = f"{span}\t{utt}\t{code}\t[{vad[0]:.4f}, {vad[1]:.4f}, {vad[2]:.4f}]"
                    eval_blocks.append("\n".join([head, *lines]))
                    self_code = list(VAD)[int(drng.integers(len(VAD)))]
                    self_blocks.append(f"{span}\t{utt}\t{self_code}\t[3.0000, 3.0000, 3.0000]")
                    cat_lines.append(f"{utt} :{NAMES.get(self_code, 'Other')}; ()")
                    act, val, dom = (int(v) for v in drng.integers(1, 6, size=3))
                    atr_lines.append(f"{utt} :act {act}; val {val}; dom  {dom};  ()")
                ddir = sdir / "dialog"
                header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
                # The release orders turns by start time and puts a blank line before each turn.
                text = header + "\n\n".join(eval_blocks) + "\n"
                (ddir / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
                (ddir / "EmoEvaluation" / f"{dialog}.txt").write_text(text, encoding="utf-8")
                (ddir / "transcriptions").mkdir(parents=True, exist_ok=True)
                (ddir / "transcriptions" / f"{dialog}.txt").write_text(
                    "\n".join(trans_lines) + "\n", encoding="utf-8"
                )
                if quirks:
                    ev = ddir / "EmoEvaluation"
                    for sub, name, body in (
                        ("Categorical", f"{dialog}_e2_cat.txt", "\n".join(cat_lines)),
                        ("Attribute", f"{dialog}_e3_atr.txt", "\n".join(atr_lines)),
                        ("Self-evaluation", f"{dialog}.txt", header + "\n\n".join(self_blocks)),
                    ):
                        (ev / sub).mkdir(exist_ok=True)
                        (ev / sub / name).write_text(body + "\n", encoding="utf-8")
                    (ev / f"._{dialog}.txt").write_bytes(APPLEDOUBLE)
                    (ddir / "transcriptions" / f"._{dialog}.txt").write_bytes(APPLEDOUBLE)
                    wdir = sdir / "sentences" / "wav" / dialog
                    first = min(p.name for p in wdir.glob("*.wav"))
                    (wdir / f"._{first}").write_bytes(APPLEDOUBLE)
                    if dialog.endswith("impro01"):
                        (wdir / f"{dialog}.pk").write_bytes(
                            pickle.dumps({"dialog": dialog, "turns": len(items)}, protocol=2)
                        )
                        if n == sessions[0]:
                            (ev / f"{dialog}.txt~").write_text(text, encoding="utf-8")
        utts = manifest["utterances"]
        counts: dict = {"raw": {}, "emo4": {}, "speaker_emo4": {}}
        for u in utts.values():
            if u["raw"] is None:
                continue
            counts["raw"][u["raw"]] = counts["raw"].get(u["raw"], 0) + 1
            if u["emo4"]:
                counts["emo4"][u["emo4"]] = counts["emo4"].get(u["emo4"], 0) + 1
                key = f"{u['speaker']}"
                counts["speaker_emo4"].setdefault(key, {})
                counts["speaker_emo4"][key][u["emo4"]] = counts["speaker_emo4"][key].get(u["emo4"], 0) + 1
        counts["four_class_total"] = sum(counts["emo4"].values())
        counts["wavs"] = len(utts)
        manifest["counts"] = counts
        write_json(tmp / "MANIFEST.json", manifest)
    return root
