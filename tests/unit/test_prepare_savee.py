"""serkit prepare savee: the three layouts, 44.1 -> 16 kHz conversion, duplicates and bad wavs."""

from __future__ import annotations

import shutil

import pytest
import soundfile as sf

from serkit.data import datadir
from serkit.data.prepare_savee import prepare
from serkit.utils import SerkitError
from tests.fixtures.corpora import make_savee, savee_expected


@pytest.mark.parametrize("layout", ["nested", "double", "flat"])
def test_layouts_give_the_same_utterances(tmp_path, layout):
    root = make_savee(tmp_path, layout=layout, per_code=1)
    d = datadir.load(prepare(root, tmp_path / "d"))
    expected = savee_expected(per_code=1)
    assert {u: r.emo for u, r in d.records.items()} == expected
    r = d.records["JE_sa01"]
    assert (r.spk, r.session, r.emo_raw, r.emo) == ("JE", "JE", "sa", "sadness")
    assert d.meta["counts"]["speaker"] == {"DC": 8, "JE": 8, "JK": 8, "KL": 8}
    assert d.meta["counts"]["class"]["neutral"] == 8 and d.meta["counts"]["class"]["anger"] == 4
    # converted once to 16 kHz mono (JE's first takes are stereo in the fixture), same duration
    info = sf.info(r.wav)
    assert (info.samplerate, info.channels) == (16000, 1)
    assert r.wav == str(tmp_path / "d" / "wavs" / "JE_sa01.wav")
    assert abs(r.num_samples - round(0.11 * 16000)) <= 2


def test_rerun_reuses_wavs(tmp_path):
    root = make_savee(tmp_path, per_code=1)
    out = prepare(root, tmp_path / "d")
    inodes = {p.name: p.stat().st_ino for p in (out / "wavs").iterdir()}
    prepare(root, out)
    assert {p.name: p.stat().st_ino for p in (out / "wavs").iterdir()} == inodes
    assert datadir.load(out).meta["extraction"]["reused_wavs"] == 32


def test_two_copies_are_an_error(tmp_path):
    root = make_savee(tmp_path, per_code=1)
    shutil.copy(root / "AudioData" / "DC" / "a01.wav", root / "DC_a01.wav")
    with pytest.raises(SerkitError, match="duplicate utterance id DC_a01"):
        prepare(root, tmp_path / "d")


def test_corrupt_wav_names_file_and_keeps_previous_output(tmp_path):
    root = make_savee(tmp_path, per_code=1)
    out = prepare(root, tmp_path / "d")
    before = (out / "wav.scp").read_text()
    shutil.rmtree(out / "wavs")  # force conversion again
    (out / "wavs").mkdir()
    bad = root / "AudioData" / "KL" / "su01.wav"
    bad.write_bytes(b"not a wav at all")
    with pytest.raises(SerkitError, match=rf"{bad}: unreadable audio"):
        prepare(root, out)
    assert (out / "wav.scp").read_text() == before


def test_no_wavs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SerkitError, match="no SAVEE wavs found"):
        prepare(tmp_path / "empty", tmp_path / "d")
