"""A mini MELD.Raw: the real CSVs and clip folders, mp4 clips with 48 kHz multi-channel AAC audio.

Layout written under ``out/MELD.Raw``::

    train/train_sent_emo.csv            (the train CSV sits inside train/, as in the release)
    train/train_splits/dia{D}_utt{U}.mp4
    dev_sent_emo.csv
    dev_splits_complete/dia{D}_utt{U}.mp4
    test_sent_emo.csv
    output_repeated_splits_test/dia{D}_utt{U}.mp4   (some named final_videos_testdia{D}_utt{U}.mp4)
    MANIFEST.json                       the ground truth (not part of the real corpus)

CSV columns: ``Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,
StartTime,EndTime``; utterances carry commas, double quotes and non-ASCII punctuation (’ …).
Clips are real mp4 files written with PyAV: AAC audio at 48 kHz in 5.1 (``channels=6``; the voice is
mostly in the centre channel, with room noise in the others) and, with ``video=True``, a tiny 32x48
MPEG-4 video stream at 2 frames/s (it costs about as little as the audio, so prepare meets clips with
a video stream first, like the real ones). Quirks (``quirks=True``): one train clip is truncated
(unreadable), one dev clip is digitally silent, one test row has no clip, and three test clips carry the
``final_videos_test`` prefix. Seven emotions with MELD's imbalance (neutral the majority).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
from scipy import signal

from serkit.data.mini.layout import kind
from serkit.utils import atomic_dir, write_json

from .synth import make_speaker, rng_for, synthesize

SR = 48000
COLUMNS = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]
EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
# train-set class frequencies of the real corpus (FACTS.md): 4710 1743 1205 1109 683 271 268
PROPORTIONS = np.array([4710, 1743, 1205, 1109, 683, 271, 268], dtype=float)
VOICE = {
    "neutral": "neutral",
    "joy": "happy",
    "surprise": "surprise",
    "anger": "anger",
    "sadness": "sad",
    "disgust": "disgust",
    "fear": "fear",
}
SPEAKERS = {"Chandler": "M", "Joey": "M", "Ross": "M", "Monica": "F", "Phoebe": "F", "Rachel": "F"}
LINES = (
    "Oh, my God!",
    "I’m not gonna do that, okay?",
    "Wait… what?",
    'He said, "Never again," and left.',
    "Okay, okay, okay…",
    "You’re kidding, right?",
    "Hey, how’re you doin’?",
    "No, no, no… that’s not what I meant.",
    'So I said "fine" and walked out.',
    "Café at five, don’t be late.",
    "Well, that’s just great.",
    "Are you serious?!",
)
SPLITS = {  # split -> (CSV path, clip folder)
    "train": ("train/train_sent_emo.csv", "train/train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}


def allocate(n: int, proportions: np.ndarray, minimum: int = 1) -> list[int]:
    """Split ``n`` items over classes by largest remainder, each class getting at least ``minimum``."""
    k = len(proportions)
    if n < k * minimum:
        raise ValueError(f"need at least {k * minimum} items for {k} classes, got {n}")
    share = proportions / proportions.sum() * (n - k * minimum)
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: n - k * minimum - counts.sum()]:
        counts[i] += 1
    return [int(c) + minimum for c in counts]


def _timestamp(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _to_51(voice: np.ndarray, rng: np.random.Generator, channels: int) -> np.ndarray:
    """Place a mono voice in a multi-channel mix: centre-heavy, with room noise everywhere."""
    n = len(voice)
    room = signal.lfilter([1.0], [1.0, -0.95], rng.standard_normal((channels, n)), axis=1) * 10 ** (-52 / 20)
    if channels == 6:  # FL FR FC LFE BL BR
        gains = np.array([0.35, 0.35, 0.8, 0.05, 0.1, 0.1])
    else:
        gains = np.full(channels, 0.7)
    return (gains[:, None] * voice[None, :] + room).astype(np.float32)


def write_mp4(path: Path | io.BytesIO, audio: np.ndarray, channels: int, video: bool) -> None:
    """Write (channels, samples) float audio as AAC in an mp4; single-threaded so bytes are stable."""
    import av

    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    container = av.open(path, "w", format="mp4")
    try:
        astream = container.add_stream("aac", rate=SR, layout=layout)
        astream.bit_rate = 64000  # higher rates cost encoder time (3x at 192k) and buy nothing here
        astream.codec_context.thread_count = 1
        # The "fast" coder is ~5x quicker than the default two-loop search; quality does not matter here.
        astream.codec_context.options = {"aac_coder": "fast", "aac_pns": "0", "aac_tns": "0"}
        vstream = None
        if video:
            vstream = container.add_stream("mpeg4", rate=2)
            vstream.width, vstream.height, vstream.pix_fmt = 32, 48, "yuv420p"
            vstream.codec_context.thread_count = 1
        n = audio.shape[1]
        for i in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio[:, i : i + 1024]), format="fltp", layout=layout
            )
            frame.sample_rate, frame.pts = SR, i
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
        if vstream is not None:
            for k in range(int(n / SR * 2) + 1):
                frame = av.VideoFrame.from_ndarray(
                    np.full((72, 32), 16 + 30 * (k % 7), np.uint8), format="yuv420p"
                )
                frame.pts = k
                for packet in vstream.encode(frame):
                    container.mux(packet)
            for packet in vstream.encode():
                container.mux(packet)
    finally:
        container.close()


def build(
    out: Path,
    seed: int = 0,
    n_train: int = 70,
    n_dev: int = 12,
    n_test: int = 20,
    min_dur: float = 1.0,
    max_dur: float = 2.5,
    channels: int = 6,
    video: bool = True,
    quirks: bool = True,
) -> Path:
    """Write the mini MELD under ``out/MELD.Raw`` and return that directory."""
    if channels not in (1, 2, 6):
        raise ValueError(f"channels must be 1, 2 or 6, got {channels}")
    root = Path(out) / "MELD.Raw"
    manifest: dict = {
        "corpus": "meld",
        "seed": seed,
        "sample_rate": SR,
        "channels": channels,
        "options": {
            "n_train": n_train,
            "n_dev": n_dev,
            "n_test": n_test,
            "min_dur": min_dur,
            "max_dur": max_dur,
            "channels": channels,
            "video": video,
            "quirks": quirks,
        },
        "classes": list(EMOTIONS),
        "utterances": {},
        "broken": [],
        "silent": [],
        "missing": [],
        "prefixed": [],
    }
    speakers = {name: make_speaker(name, g, seed) for name, g in SPEAKERS.items()}
    with atomic_dir(root, kind("meld")) as tmp:
        for split, n_split in (("train", n_train), ("dev", n_dev), ("test", n_test)):
            csv_rel, clip_rel = SPLITS[split]
            (tmp / clip_rel).mkdir(parents=True, exist_ok=True)
            rng = rng_for("meld-split", seed, split)
            labels = [e for e, c in zip(EMOTIONS, allocate(n_split, PROPORTIONS)) for _ in range(c)]
            labels = [labels[i] for i in rng.permutation(len(labels))]
            rows = []
            dia, utt_id, season, episode, t = 0, 0, 1, 1, 0.0
            dia_len = int(rng.integers(3, 8))
            for i, emotion in enumerate(labels):
                if utt_id == dia_len:
                    dia, utt_id, dia_len = dia + 1, 0, int(rng.integers(3, 8))
                if utt_id == 0:
                    season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
                    t = rng.uniform(30, 1300)
                    cast = list(rng.choice(list(SPEAKERS), size=3, replace=False))
                name = f"dia{dia}_utt{utt_id}"
                key = f"{split}_{name}"
                urng = rng_for("meld-utt", seed, key, emotion, min_dur, max_dur)
                speaker = cast[int(urng.integers(len(cast)))]
                # The train CSV opens with every awkward line (commas, quotes, ’, …); later rows and the
                # other splits draw them now and then.
                if split == "train" and i < len(LINES):
                    text = LINES[i]
                elif urng.random() < 0.15:
                    text = LINES[int(urng.integers(len(LINES)))]
                else:
                    text = None
                x, info = synthesize(
                    VOICE[emotion],
                    speakers[speaker],
                    urng,
                    SR,
                    words=re.findall(r"[A-Za-z]+", text) if text else None,
                    duration=None if text else urng.uniform(min_dur, max_dur),
                    min_dur=min_dur,
                    max_dur=max_dur,
                )
                if text is None:
                    words = info["text"]
                    text = words[0].upper() + words[1:] + str(urng.choice([".", "!", "?", "…"]))
                if emotion == "surprise":
                    sentiment = "positive" if urng.random() < 0.5 else "negative"
                else:
                    sentiment = {"neutral": "neutral", "joy": "positive"}.get(emotion, "negative")
                start, end = t, t + len(x) / SR
                t = end + urng.uniform(0.2, 1.5)
                rows.append(
                    [
                        i + 1,
                        text,
                        speaker,
                        emotion,
                        sentiment,
                        dia,
                        utt_id,
                        season,
                        episode,
                        _timestamp(start),
                        _timestamp(end),
                    ]
                )
                status, clip = "ok", f"{clip_rel}/{name}.mp4"
                audio = _to_51(x, urng, channels)
                if quirks and split == "test" and i in (1, 4, 9):
                    clip = f"{clip_rel}/final_videos_test{name}.mp4"
                    manifest["prefixed"].append(key)
                if quirks and split == "dev" and i == 2:
                    status, audio = "silent", np.zeros_like(audio)
                if quirks and split == "test" and i == 6:
                    status, clip = "missing", None
                if quirks and split == "train" and i == 3:
                    status = "broken"
                if clip is not None:
                    buf = io.BytesIO()
                    write_mp4(buf, audio, channels, video)
                    data = buf.getvalue()
                    if status == "broken":  # cut mid-stream: the moov atom at the end is lost
                        data = data[: len(data) // 3]
                    (tmp / clip).write_bytes(data)
                if status != "ok":
                    manifest[status].append(key)
                manifest["utterances"][key] = {
                    "split": split,
                    "dialogue": dia,
                    "utterance": utt_id,
                    "speaker": speaker,
                    "emotion": emotion,
                    "sentiment": sentiment,
                    "text": text,
                    "clip": clip,
                    "status": status,
                    "num_samples": len(x),
                    "duration": round(len(x) / SR, 4),
                }
                utt_id += 1
            with open(tmp / csv_rel, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(COLUMNS)
                writer.writerows(rows)
        counts: dict = {}
        for u in manifest["utterances"].values():
            counts.setdefault(u["split"], {}).setdefault(u["emotion"], 0)
            counts[u["split"]][u["emotion"]] += 1
        manifest["counts"] = counts
        write_json(tmp / "MANIFEST.json", manifest)
    return root
