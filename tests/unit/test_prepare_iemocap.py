"""serkit prepare iemocap: utterances, labels, speakers and errors on a quirky fixture release."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import soundfile as sf

import serkit.cli
from serkit.cli import main
from serkit.data import datadir
from serkit.data.prepare_iemocap import prepare, speaker_of
from serkit.utils import SerkitError, read_map
from tests.fixtures.corpora import IEMOCAP_TURNS, iemocap_num_samples, iemocap_utts, make_iemocap


@pytest.fixture
def release(tmp_path):
    return make_iemocap(tmp_path)


def snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_speaker_is_the_letter_after_the_last_underscore():
    assert speaker_of("Ses01F_impro01_M012") == "Ses01M"
    assert speaker_of("Ses03M_script02_2_F041") == "Ses03F"


def test_prepare_exact_utterances_labels_speakers(release, tmp_path):
    out = prepare(release, tmp_path / "data")
    d = datadir.load(out)
    expected = iemocap_utts()
    assert list(d.records) == sorted(expected)
    for utt, (emo, raw, spk) in expected.items():
        r = d.records[utt]
        assert (r.emo, r.emo_raw, r.spk, r.session) == (emo, raw, spk, utt[:5])
        assert r.wav.endswith(f"/{utt}.wav") and r.wav.startswith(str(release))
        assert r.text == f"words of {utt}, with a comma."
    # exc merged into hap, raw label kept; the M turn of an F-prefixed dialog belongs to Ses01M
    assert d.records["Ses01F_impro01_F001"].emo == "hap"
    assert d.records["Ses01F_impro01_F001"].emo_raw == "exc"
    assert d.records["Ses01F_impro01_M000"].spk == "Ses01M"
    i = next(i for i, t in enumerate(IEMOCAP_TURNS) if t[1] == "F000" and t[0] == "F_impro01")
    assert d.records["Ses02F_impro01_F000"].num_samples == iemocap_num_samples(2, i)
    assert read_map(out / "utt2dur")["Ses02F_impro01_F000"] == f"{iemocap_num_samples(2, i) / 16000:.4f}"
    meta = d.meta
    assert meta["classes"] == ["neu", "hap", "ang", "sad"]
    assert meta["counts"]["class"] == {"ang": 5, "hap": 10, "neu": 10, "sad": 10}
    assert meta["counts"]["speaker"]["Ses01F"] == 4 and meta["counts"]["speaker"]["Ses01M"] == 3
    assert meta["dropped"] == {
        "label fru not in iemocap4": 5,
        "label xxx not in iemocap4": 5,
        "wav without an EmoEvaluation line": 5,
    }
    spk2utt = read_map(out / "spk2utt")
    assert spk2utt["Ses01M"].split() == sorted(u for u, v in expected.items() if v[2] == "Ses01M")
    for name in ("wav.scp", "utt2spk", "utt2emo", "utt2emo_raw", "utt2session", "utt2dur", "text"):
        assert list(read_map(out / name)) == sorted(expected), name


@pytest.mark.parametrize(
    "label_map,classes,n",
    [
        ("iemocap4_fru", ["neu", "hap", "ang", "sad", "fru"], 40),
        ("iemocap6", ["neu", "hap", "exc", "ang", "sad", "fru"], 40),
    ],
)
def test_label_maps(release, tmp_path, label_map, classes, n):
    d = datadir.load(prepare(release, tmp_path / "d", label_map=label_map))
    assert d.classes == classes and len(d.records) == n
    assert d.records["Ses01M_script01_1_F000"].emo == "fru"
    assert d.records["Ses01F_impro01_F001"].emo == ("exc" if label_map == "iemocap6" else "hap")


def test_unknown_label_map(release, tmp_path):
    with pytest.raises(SerkitError, match="iemocap4_fru"):
        prepare(release, tmp_path / "d", label_map="iemocap9")


def test_warns_when_counts_differ_from_the_release(release, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="serkit"):
        prepare(release, tmp_path / "d")
    assert "the full release has 5531" in caplog.text
    assert "Ses03 has 7 utterances with iemocap4; the full release has 1151" in caplog.text


def test_missing_session_lists_found_sessions(tmp_path):
    root = make_iemocap(tmp_path, sessions=(1, 2))
    with pytest.raises(
        SerkitError,
        match=r"missing Session3, Session4, Session5 \(found Session1, Session2\)"
        r".*--sessions 1,2",
    ):
        prepare(root, tmp_path / "d")
    d = datadir.load(prepare(root, tmp_path / "d", sessions=[1, 2]))
    assert sorted(d.meta["counts"]["session"]) == ["Ses01", "Ses02"]


def _evaluation(root, s=1, dialog="F_impro01"):
    return root / f"Session{s}" / "dialog" / "EmoEvaluation" / f"Ses0{s}{dialog}.txt"


def test_failed_rerun_keeps_previous_output(release, tmp_path):
    out = prepare(release, tmp_path / "d")
    before = snapshot(out)
    ev = _evaluation(release, 3)
    lines = ev.read_text().splitlines()
    lines[2] = lines[2].replace(" - ", " ~ ")
    ev.write_text("\n".join(lines) + "\n")
    with pytest.raises(SerkitError, match=rf"{ev}:3: malformed turn line"):
        prepare(release, out)
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["IEMOCAP_full_release", "d"]  # no temp dir left


def test_turn_line_without_time_stamp_is_malformed(release, tmp_path):
    ev = _evaluation(release, 2)
    lines = ev.read_text().splitlines()
    lines[2] = lines[2].split("]", 1)[1]
    ev.write_text("\n".join(lines) + "\n")
    with pytest.raises(SerkitError, match=rf"{ev}:3: malformed"):
        prepare(release, tmp_path / "d")


def test_empty_evaluation_file(release, tmp_path):
    ev = _evaluation(release, 4)
    ev.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n")
    with pytest.raises(SerkitError, match=rf"{ev}: no turn lines"):
        prepare(release, tmp_path / "d")


def test_unknown_label_names_file_and_line(release, tmp_path):
    ev = _evaluation(release, 1)
    ev.write_text(ev.read_text().replace("\tang\t", "\tangry\t"))
    lineno = next(i for i, line in enumerate(ev.read_text().splitlines(), 1) if "\tangry\t" in line)
    with pytest.raises(SerkitError, match=rf"{ev}:{lineno}: unknown label 'angry'"):
        prepare(release, tmp_path / "d")


def test_duplicate_utterance_id(release, tmp_path):
    ev = _evaluation(release, 1)
    text = ev.read_text()
    ev.write_text(text + "\n".join(text.splitlines()[2:6]) + "\n")  # the first turn block again
    with pytest.raises(SerkitError, match="duplicate utterance id Ses01F_impro01_F000"):
        prepare(release, tmp_path / "d")


def test_label_for_missing_wav(release, tmp_path):
    wav = release / "Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_M000.wav"
    wav.unlink()
    with pytest.raises(
        SerkitError, match=r"Ses02F_impro01\.txt:\d+: Ses02F_impro01_M000 is labelled but .* missing"
    ):
        prepare(release, tmp_path / "d")
    d = datadir.load(prepare(release, tmp_path / "d", allow_missing_wav=True))
    assert "Ses02F_impro01_M000" not in d.records and len(d.records) == 34
    assert d.meta["dropped"]["labelled but wav missing (--allow-missing-wav)"] == 1


@pytest.mark.parametrize(
    "kind,message",
    [
        ("stereo", "2 channels, expected mono"),
        ("rate", "sample rate 8000 Hz, expected 16000 Hz"),
        ("empty", "empty audio"),
        ("corrupt", "unreadable audio"),
    ],
)
def test_bad_wav_names_file_and_keeps_previous_output(release, tmp_path, kind, message):
    out = prepare(release, tmp_path / "d")
    before = snapshot(out)
    wav = release / "Session5/sentences/wav/Ses05M_script01_1/Ses05M_script01_1_M001.wav"
    if kind == "stereo":
        sf.write(wav, np.zeros((1600, 2), np.float32), 16000)
    elif kind == "rate":
        sf.write(wav, np.zeros(1600, np.float32), 8000)
    elif kind == "empty":
        sf.write(wav, np.zeros(0, np.float32), 16000)
    else:
        wav.write_bytes(b"RIFF\x00\x00garbage" * 3)
    with pytest.raises(SerkitError, match=rf"{wav}: {message}"):
        prepare(release, out)
    assert snapshot(out) == before


def test_cli_exit_codes(release, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(serkit.cli, "COMMAND_MODULES", ("serkit.data.cli",))  # only this package's commands
    assert main(["prepare", "iemocap", "--root", str(release), "--out", str(tmp_path / "d")]) == 0
    shutil.rmtree(release / "Session5")
    assert main(["prepare", "iemocap", "--root", str(release), "--out", str(tmp_path / "d")]) == 2
    assert (
        main(
            [
                "prepare",
                "iemocap",
                "--root",
                str(release),
                "--out",
                str(tmp_path / "d"),
                "--sessions",
                "1,2,3,4",
            ]
        )
        == 0
    )
    with pytest.raises(SystemExit) as e:
        main(["prepare", "timit", "--root", str(release), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "invalid choice: 'timit'" in capsys.readouterr().err
