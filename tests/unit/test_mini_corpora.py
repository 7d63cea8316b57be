"""Mini corpora: exact on-disk layouts, file formats, quirks, ground truth and determinism."""

from __future__ import annotations

import csv
import json
import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from serkit.data.mini import build
from serkit.utils import SerkitError

SMALL_IEMOCAP = dict(sessions=2, utts_per_class=2, extra_per_speaker=3, min_dur=0.6, max_dur=1.0)
SMALL_MELD = dict(n_train=14, n_dev=8, n_test=10, min_dur=0.5, max_dur=0.8)
SMALL_SAVEE = dict(per_class=1, neutral=2, speakers=2, min_dur=0.5, max_dur=0.8)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def wav_info(path: Path) -> tuple[int, int, int, int]:
    with wave.open(str(path)) as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()


# ------------------------------------------------------------------------------------------- IEMOCAP
@pytest.fixture(scope="module")
def iemocap(tmp_path_factory) -> Path:
    return build("iemocap", tmp_path_factory.mktemp("iemocap"), seed=3, **SMALL_IEMOCAP)


EVAL_TURN = re.compile(
    r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(Ses0\d[FM]_\w+_[FM]\d{3})\t(\w{3})\t"
    r"\[(\d\.\d{4}), (\d\.\d{4}), (\d\.\d{4})\]$"
)

EVAL_LINE = re.compile(r"^(C-[EFM]\d:\t(\w+; ?)+\t\(.*\)|A-[EFM]\d:\tval \d; act \d; dom  \d;\t\(\))$")


def parse_evaluation(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
    labels = {}
    for i, line in enumerate(lines):
        if line.startswith("["):
            m = EVAL_TURN.match(line)
            assert m, f"{path}:{i + 1}: {line!r}"
            assert lines[i - 1] == "", "the release puts a blank line before every turn"
            assert float(m.group(1)) < float(m.group(2))
            labels[m.group(3)] = m.group(4)
        elif line.startswith(("C-", "A-")):
            assert EVAL_LINE.match(line), f"{path}:{i + 1}: {line!r}"
    return labels


def test_iemocap_layout_and_formats(iemocap):
    assert iemocap.name == "IEMOCAP_full_release"
    manifest = json.loads((iemocap / "MANIFEST.json").read_text())
    utts = manifest["utterances"]
    assert sorted(p.name for p in iemocap.iterdir()) == [
        ".serkit-output",
        "MANIFEST.json",
        "Session1",
        "Session2",
    ]
    wavs = sorted(p for p in iemocap.glob("Session*/sentences/wav/*/*.wav") if not p.name.startswith("._"))
    assert {p.stem for p in wavs} == set(utts)
    for p in wavs[:20]:
        sr, ch, width, n = wav_info(p)
        assert (sr, ch, width) == (16000, 1, 2)
        assert 0.6 * 16000 <= n <= 1.0 * 16000 + 1
        assert n == utts[p.stem]["num_samples"]
        assert p.parent.name == utts[p.stem]["dialog"] and p.stem.startswith(p.parent.name + "_")

    evaluated: dict[str, str] = {}
    for sess in (1, 2):
        ddir = iemocap / f"Session{sess}" / "dialog"
        dialogs = sorted(p.stem for p in (ddir / "EmoEvaluation").glob("Ses*.txt"))
        assert dialogs == sorted(
            [
                f"Ses0{sess}F_impro01",
                f"Ses0{sess}M_impro02",
                f"Ses0{sess}F_script01_1",
                f"Ses0{sess}M_script02_2",
            ]
        )
        for dialog in dialogs:
            labels = parse_evaluation(ddir / "EmoEvaluation" / f"{dialog}.txt")
            # Both speakers talk in every dialog: the dialog prefix letter is not the speaker.
            assert {u[-4] for u in labels} == {"F", "M"}
            evaluated.update(labels)
            for line in (ddir / "transcriptions" / f"{dialog}.txt").read_text(encoding="utf-8").splitlines():
                assert re.match(r"^Ses0\d[FM]_\w+_[FM]\d{3} \[\d{3}\.\d{4}-\d{3}\.\d{4}\]: \S.*$", line), line
    labelled = {u: d["raw"] for u, d in utts.items() if u not in manifest["unlabelled"]}
    assert evaluated == labelled
    for utt, d in utts.items():
        assert d["speaker"] == utt[:5] + utt.rsplit("_", 1)[1][0], "speaker = session + LAST gender letter"


def test_iemocap_labels_and_quirks(iemocap):
    manifest = json.loads((iemocap / "MANIFEST.json").read_text())
    utts = manifest["utterances"]
    raws = {d["raw"] for d in utts.values()}
    assert {"neu", "hap", "exc", "sad", "ang"} <= raws and raws - {"neu", "hap", "exc", "sad", "ang", None}
    for d in utts.values():
        assert d.get("emo4") == {"exc": "hap"}.get(
            d["raw"], d["raw"] if d["raw"] in ("neu", "hap", "sad", "ang") else None
        )
    # Per speaker: utts_per_class of each 4-class emotion.
    for spk, counts in manifest["counts"]["speaker_emo4"].items():
        assert counts == {"neu": 2, "hap": 2, "sad": 2, "ang": 2}, spk
    assert len(manifest["unlabelled"]) == 1
    unl = manifest["unlabelled"][0]
    assert (iemocap / utts[unl]["wav"]).is_file()
    s1 = iemocap / "Session1"
    ev = s1 / "dialog" / "EmoEvaluation"
    assert all(unl not in p.read_text(encoding="utf-8") for p in ev.glob("Ses*.txt"))
    for sub in ("Categorical", "Attribute", "Self-evaluation"):
        assert any((ev / sub).iterdir())
    # Self-evaluation files look exactly like evaluation files (and disagree with them).
    assert parse_evaluation(next((ev / "Self-evaluation").glob("*.txt")))
    assert list(ev.glob("._*.txt")) and list(ev.glob("*.txt~"))
    apple = list(s1.glob("sentences/wav/*/._*.wav"))
    assert apple and not apple[0].read_bytes().startswith(b"RIFF")
    assert list(s1.glob("sentences/wav/*/*.pk"))
    # Scripted dialogs repeat their sentences across sessions (a text branch can leak content).
    texts = {
        s: [
            d["text"]
            for u, d in sorted(utts.items(), key=lambda kv: kv[1]["start"])
            if d["dialog"] == f"Ses0{s}F_script01_1"
        ]
        for s in (1, 2)
    }
    assert texts[1][:3] == texts[2][:3]


def test_iemocap_determinism(iemocap, tmp_path):
    again = build("iemocap", tmp_path / "a", seed=3, **SMALL_IEMOCAP)
    assert tree(again) == tree(iemocap)
    other = tree(build("iemocap", tmp_path / "b", seed=4, **SMALL_IEMOCAP))
    first = tree(iemocap)
    wav = "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    assert wav in other and other[wav] != first[wav]


def test_iemocap_default_size_and_build_time(tmp_path):
    start = time.process_time()
    root = build("iemocap", tmp_path)
    cpu = time.process_time() - start
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert manifest["counts"]["emo4"] == {"neu": 60, "hap": 60, "sad": 60, "ang": 60}
    assert manifest["counts"]["wavs"] == 5 * 2 * (24 + 4) + 1
    assert all(1.0 <= d["num_samples"] / 16000 <= 2.5 + 1e-3 for d in manifest["utterances"].values())
    assert cpu < 12, f"default mini IEMOCAP took {cpu:.1f} s of CPU; it must stay a few seconds"


def test_unknown_corpus_and_option(tmp_path):
    with pytest.raises(SerkitError, match="unknown corpus"):
        build("voxceleb", tmp_path)
    with pytest.raises(SerkitError, match="utts_per_klass"):
        build("iemocap", tmp_path, utts_per_klass=2)


# ---------------------------------------------------------------------------------------------- MELD
@pytest.fixture(scope="module")
def meld(tmp_path_factory) -> Path:
    pytest.importorskip("av")
    return build("meld", tmp_path_factory.mktemp("meld"), seed=1, **SMALL_MELD)


def decode(path: Path) -> tuple[int, int, np.ndarray, list[str]]:
    import av

    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        kinds = [s.type for s in c.streams]
        chunks = [f.to_ndarray() for f in c.decode(stream)]
        return stream.rate, stream.channels, np.concatenate(chunks, axis=1), kinds


def test_meld_csvs(meld):
    manifest = json.loads((meld / "MANIFEST.json").read_text())
    header = (
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
    )
    texts = []
    for split, rel, n in (
        ("train", "train/train_sent_emo.csv", 14),
        ("dev", "dev_sent_emo.csv", 8),
        ("test", "test_sent_emo.csv", 10),
    ):
        raw = (meld / rel).read_text(encoding="utf-8")
        assert raw.split("\n", 1)[0] == header
        rows = list(csv.DictReader(raw.splitlines()))
        assert len(rows) == n and [int(r["Sr No."]) for r in rows] == list(range(1, n + 1))
        for r in rows:
            key = f"{split}_dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}"
            truth = manifest["utterances"][key]
            assert (r["Emotion"], r["Speaker"], r["Utterance"]) == (
                truth["emotion"],
                truth["speaker"],
                truth["text"],
            )
            assert re.match(r"^\d\d:\d\d:\d\d,\d{3}$", r["StartTime"]) and r["StartTime"] < r["EndTime"]
            texts.append(r["Utterance"])
        assert set(r["Emotion"] for r in rows) == {
            "neutral",
            "joy",
            "surprise",
            "anger",
            "sadness",
            "disgust",
            "fear",
        }
        counts = manifest["counts"][split]
        assert counts["neutral"] == max(counts.values())
    joined = "".join(texts)
    assert "," in joined and '"' in joined and "’" in joined and "…" in joined
    speakers = {
        split: {d["speaker"] for d in manifest["utterances"].values() if d["split"] == split}
        for split in ("train", "dev", "test")
    }
    assert speakers["train"] & speakers["dev"] & speakers["test"]


def test_meld_clips(meld):
    manifest = json.loads((meld / "MANIFEST.json").read_text())
    utts = manifest["utterances"]
    assert len(manifest["broken"]) == len(manifest["silent"]) == len(manifest["missing"]) == 1
    assert manifest["prefixed"]
    folders = {
        "train": "train/train_splits",
        "dev": "dev_splits_complete",
        "test": "output_repeated_splits_test",
    }
    for key, d in utts.items():
        name = key.split("_", 1)[1] + ".mp4"
        if d["status"] == "missing":
            assert d["clip"] is None
            assert not list((meld / folders[d["split"]]).glob(f"*{name}"))
            continue
        expected = ("final_videos_test" if key in manifest["prefixed"] else "") + name
        assert d["clip"] == f"{folders[d['split']]}/{expected}"
        assert (meld / d["clip"]).is_file()
    ok = next(d for d in utts.values() if d["status"] == "ok")
    sr, channels, audio, kinds = decode(meld / ok["clip"])
    assert (sr, channels) == (48000, 6) and kinds == ["audio", "video"]
    assert abs(audio.shape[1] - ok["num_samples"]) < 4096  # AAC priming/padding only
    assert np.abs(audio).max() > 0.01
    sr, _, silent, _ = decode(meld / utts[manifest["silent"][0]]["clip"])
    assert np.abs(silent).max() < 1e-3
    import av

    with pytest.raises(av.error.FFmpegError):
        decode(meld / utts[manifest["broken"][0]]["clip"])


def test_meld_determinism(meld, tmp_path):
    assert tree(build("meld", tmp_path / "a", seed=1, **SMALL_MELD)) == tree(meld)


# --------------------------------------------------------------------------------------------- SAVEE
@pytest.mark.parametrize(
    "layout,pattern",
    [
        ("nested", "AudioData/{s}/{c}.wav"),
        ("double", "AudioData/AudioData/{s}/{c}.wav"),
        ("flat", "AudioData/{s}_{c}.wav"),
    ],
)
def test_savee_layouts(tmp_path, layout, pattern):
    root = build("savee", tmp_path, seed=0, layout=layout, **SMALL_SAVEE)
    manifest = json.loads((root / "MANIFEST.json").read_text())
    expected = {
        pattern.format(s=s, c=c)
        for s in ("DC", "JE")
        for c in ("a01", "d01", "f01", "h01", "n01", "n02", "sa01", "su01")
    }
    assert {p.relative_to(root).as_posix() for p in root.rglob("*.wav")} == expected
    assert {d["wav"] for d in manifest["utterances"].values()} == expected
    for rel in expected:
        assert wav_info(root / rel)[:3] == (44100, 1, 2)


def test_savee_default_counts_and_determinism(tmp_path):
    a = build("savee", tmp_path / "a", seed=0, speakers=1)
    manifest = json.loads((a / "MANIFEST.json").read_text())
    codes = [d["code"] for d in manifest["utterances"].values()]
    expected = {"a": 4, "d": 4, "f": 4, "h": 4, "n": 8, "sa": 4, "su": 4}
    assert {c: codes.count(c) for c in set(codes)} == expected
    assert tree(build("savee", tmp_path / "b", seed=0, speakers=1)) == tree(a)
    assert tree(build("savee", tmp_path / "c", seed=1, speakers=1)) != tree(a)
