"""serkit prepare ravdess on the mini RAVDESS (the speech release's Actor_XX/MM-VV-EE-II-SS-RR-AA.wav
layout) and the ravdess_actors4 protocol: what is kept, what is refused, and which actors each fold tests."""

from __future__ import annotations

import json
import shutil

import pytest

from serkit.data import datadir, mini
from serkit.data.prepare_ravdess import prepare
from serkit.data.splits import make_splits
from serkit.utils import SerkitError


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return mini.build(
        "ravdess", tmp_path_factory.mktemp("ravdess") / "db", seed=0, actors=8, statements=1, repetitions=1
    )


def test_speech_wavs_are_kept_with_their_actor_emotion_and_gender(release, tmp_path):
    out = prepare(release, tmp_path / "data")
    data = datadir.load(out)
    manifest = json.loads((release / "MANIFEST.json").read_text())
    assert sorted(data.records) == sorted(manifest["utterances"])  # the song and video-only files are not
    r = data.records["03-01-05-01-01-01-07"]
    assert (r.spk, r.session, r.emo, r.emo_raw) == ("Actor_07", "Actor_07", "angry", "05")
    assert data.meta["classes"] == [
        "neutral",
        "calm",
        "happy",
        "sad",
        "angry",
        "fearful",
        "disgust",
        "surprised",
    ]
    assert data.meta["genders"]["Actor_07"] == "M" and data.meta["genders"]["Actor_08"] == "F"


def test_a_file_in_another_actors_folder_is_refused_naming_it(release, tmp_path):
    root = tmp_path / "RAVDESS"
    shutil.copytree(release, root)
    moved = root / "Actor_02" / "03-01-03-01-01-01-01.wav"
    (root / "Actor_01" / moved.name).rename(moved)
    with pytest.raises(SerkitError, match=rf"{moved}: actor 01 in the name, Actor_02 as the folder"):
        prepare(root, tmp_path / "data")
    assert not (tmp_path / "data").exists()  # refused before anything was written


def test_folds_hold_out_four_consecutive_actors(release, tmp_path):
    out = prepare(release, tmp_path / "data")
    make_splits("ravdess_actors4", out, tmp_path / "split", valid_fraction=0.25)
    assert json.loads((tmp_path / "split" / "split.json").read_text())["folds"] == ["fold1", "fold2"]
    test = {v["spk"] for v in json.loads((tmp_path / "split" / "fold2" / "test.json").read_text()).values()}
    assert test == {"Actor_05", "Actor_06", "Actor_07", "Actor_08"}
    train = {v["spk"] for v in json.loads((tmp_path / "split" / "fold2" / "train.json").read_text()).values()}
    assert train == {"Actor_01", "Actor_02", "Actor_03", "Actor_04"}
