"""serkit prepare meld: CSV quirks, clip decoding, skipped clips, resumable extraction."""

from __future__ import annotations

import logging

import pytest
import soundfile as sf

from serkit.data import audio, datadir
from serkit.data.prepare_meld import prepare
from serkit.utils import SerkitError, read_map
from tests.fixtures.corpora import make_meld, meld_expected


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_meld(tmp_path_factory.mktemp("meld"))


@pytest.fixture(scope="module")
def prepared(release, tmp_path_factory):
    return prepare(release, tmp_path_factory.mktemp("out") / "meld")


def test_utterances_labels_speakers_splits(prepared):
    d = datadir.load(prepared)
    expected = meld_expected()
    assert list(d.records) == sorted(expected)
    for utt, (emo, spk, split) in expected.items():
        r = d.records[utt]
        assert (r.emo, r.spk, r.split) == (emo, spk, split)
        assert r.wav == str(prepared / "wavs" / f"{utt}.wav")
    assert d.records["train_dia1_utt0"].spk == "Mrs._Geller"  # white space in speakers is replaced
    assert d.records["train_dia1_utt0"].emo == "anger"  # 'Anger' in the CSV
    assert d.records["train_dia0_utt0"].session == "train_dia0"
    # quoted utterance with commas, quotes and a line break; non-ASCII from UTF-8 and cp1252 files
    assert d.records["train_dia0_utt1"].text == 'You said "fine", right? Then go.'
    assert d.records["train_dia0_utt0"].text == "Oh my God, he\u2019s lost it. He\u2019s totally lost it."
    assert d.records["dev_dia0_utt0"].text == "Caf\u00e9 \u2019s closed"
    # its clip carries the final_videos_test prefix
    assert d.records["test_dia0_utt0"].wav.endswith("/test_dia0_utt0.wav")
    assert d.classes == ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
    assert read_map(prepared / "utt2split")["dev_dia0_utt0"] == "dev"


def test_wavs_are_16k_mono_with_the_clip_length(prepared):
    for utt in meld_expected():
        info = sf.info(prepared / "wavs" / f"{utt}.wav")
        assert (info.samplerate, info.channels) == (16000, 1)
        # clips are 0.25-0.35 s at 48 kHz; AAC adds up to ~2 frames of priming/padding
        assert 0.25 <= info.duration <= 0.45, (utt, info.duration)


def test_skipped_clips_are_listed_and_counted(prepared):
    rows = [line.split("\t") for line in (prepared / "skipped.tsv").read_text().splitlines()]
    assert rows[0] == ["utt", "file", "reason"]
    reasons = {r[0]: r[2] for r in rows[1:]}
    assert reasons["dev_dia0_utt1"] == "silent"
    assert reasons["test_dia1_utt0"].startswith("unreadable:")
    assert reasons["test_dia2_utt0"] == "missing clip"
    assert len(reasons) == 3
    meta = datadir.load(prepared).meta
    assert meta["dropped"] == {
        "skipped clip: missing clip": 1,
        "skipped clip: silent": 1,
        "skipped clip: unreadable": 1,
    }
    assert meta["counts"]["split"] == {"dev": 1, "test": 1, "train": 3}


def test_rerun_reuses_extracted_wavs(release, prepared, tmp_path, monkeypatch):
    out = tmp_path / "meld"
    prepare(release, out)
    wavs = {p.name: p.stat().st_ino for p in (out / "wavs").iterdir()}
    (out / "wavs" / "train_dia0_utt1.wav").unlink()  # as if the first run stopped before this one
    decoded = []
    real = audio.decode_av
    monkeypatch.setattr(audio, "decode_av", lambda p, *a: decoded.append(p) or real(p, *a))
    prepare(release, out)
    decoded_names = sorted(p.rsplit("/", 1)[1] for p in decoded)
    # only the deleted wav and the clips that never gave one (silent, broken) are decoded again
    assert decoded_names == ["dia0_utt1.mp4", "dia0_utt1.mp4", "dia1_utt0.mp4"]
    after = {p.name: p.stat().st_ino for p in (out / "wavs").iterdir()}
    assert {k: v for k, v in after.items() if k != "train_dia0_utt1.wav" and k.endswith(".wav")} == {
        k: v for k, v in wavs.items() if k != "train_dia0_utt1.wav" and k.endswith(".wav")
    }
    assert datadir.load(out).meta["extraction"]["reused_wavs"] == 4


def test_parallel_decoding_gives_the_same_directory(release, prepared, tmp_path):
    out = prepare(release, tmp_path / "meld", jobs=2)
    for name in ("utt2emo", "utt2spk", "utt2num_samples", "utt2split", "text", "skipped.tsv"):
        assert (out / name).read_text().replace(str(out), "") == (prepared / name).read_text().replace(
            str(prepared), ""
        ), name


def test_cp1252_csv_warns(release, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="serkit"):
        prepare(release, tmp_path / "m")
    assert "dev_sent_emo.csv: not UTF-8" in caplog.text and "cp1252" in caplog.text


def test_unknown_emotion_names_csv_line_and_keeps_output(release, tmp_path):
    out = prepare(release, tmp_path / "m")
    before = (out / "utt2emo").read_text()
    csv_path = release / "test_sent_emo.csv"
    text = csv_path.read_text(encoding="utf-8")
    try:
        csv_path.write_text(text.replace(",disgust,", ",grossed out,"), encoding="utf-8")
        with pytest.raises(SerkitError, match=rf"{csv_path}:3: unknown label 'grossed out'"):
            prepare(release, out)
    finally:
        csv_path.write_text(text, encoding="utf-8")
    assert (out / "utt2emo").read_text() == before


def test_missing_csv(tmp_path):
    root = make_meld(tmp_path)
    (root / "dev_sent_emo.csv").unlink()
    with pytest.raises(SerkitError, match="no dev CSV"):
        prepare(root, tmp_path / "m")


def test_duplicate_row(tmp_path):
    root = make_meld(tmp_path)
    p = root / "train" / "train_sent_emo.csv"
    lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
    p.write_text("".join(lines + [lines[-1]]), encoding="utf-8")
    with pytest.raises(SerkitError, match=r"train_sent_emo.csv:\d+: duplicate utterance dia1_utt0"):
        prepare(root, tmp_path / "m")
