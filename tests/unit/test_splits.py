"""serkit split / check-split: fold contents per protocol, leakage check, alignment, determinism."""

from __future__ import annotations

import json
from collections import Counter

import pytest

import serkit.cli
from serkit.data import cli as data_cli
from serkit.data import datadir
from serkit.data.manifest import SPLITS, read_classes, read_split, write_split
from serkit.data.splits import PROTOCOLS, check_fold, check_split, make_splits
from serkit.utils import SerkitError
from tests.fixtures.corpora import make_iemocap, make_meld, make_savee


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    from serkit.data.prepare_iemocap import prepare

    base = tmp_path_factory.mktemp("iemocap")
    return prepare(make_iemocap(base), base / "data")


@pytest.fixture(scope="module")
def savee(tmp_path_factory):
    from serkit.data.prepare_savee import prepare

    base = tmp_path_factory.mktemp("savee")
    return prepare(make_savee(base, per_code=3), base / "data")


@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    from serkit.data.prepare_meld import prepare

    base = tmp_path_factory.mktemp("meld")
    return prepare(make_meld(base), base / "data")


def load_fold(fold):
    return {s: read_split(fold, s) for s in SPLITS}, json.loads((fold / "fold.json").read_text())


def test_cli_protocol_list_matches_registry():
    assert sorted(data_cli.PROTOCOLS) == sorted(PROTOCOLS)


def test_iemocap_loso5(iemocap, tmp_path):
    data = datadir.load(iemocap)
    folds = make_splits("iemocap_loso5", iemocap, tmp_path / "s")
    assert [f.name for f in folds] == [f"fold{k}" for k in range(1, 6)]
    for k, fold in enumerate(folds, 1):
        splits, info = load_fold(fold)
        session = f"Ses0{k}"
        test = [u.utt for u in splits["test"]]
        assert test == sorted(u for u, r in data.records.items() if r.session == session)
        assert info["test"] == session and info["sessions"]["test"] == [session]
        assert session not in info["sessions"]["train"] + info["sessions"]["valid"]
        train, valid = [u.utt for u in splits["train"]], [u.utt for u in splits["valid"]]
        assert train == sorted(train) and valid
        assert sorted(train + valid + test) == sorted(data.records)
        assert not ({u.spk for u in splits["train"]} & {u.spk for u in splits["test"]})
        # each split's labels and speakers are the data directory's
        for s in SPLITS:
            for u in splits[s]:
                r = data.records[u.utt]
                assert (u.emo, u.spk, u.wav, u.num_samples) == (r.emo, r.spk, r.wav, r.num_samples)
        assert read_classes(fold) == ["neu", "hap", "ang", "sad"]
        assert info["counts"]["test"] == dict(
            Counter(r.emo for r in (data.records[u] for u in test)),
            **{c: 0 for c in ["neu", "hap", "ang", "sad"] if c not in {data.records[u].emo for u in test}},
        )
        assert check_fold(fold) == []


def test_iemocap_loso10_and_loso5_speaker_valid(iemocap, tmp_path):
    folds10 = make_splits("iemocap_loso10", iemocap, tmp_path / "l10")
    folds5s = make_splits("iemocap_loso5", iemocap, tmp_path / "l5s", valid="speaker")
    assert len(folds10) == len(folds5s) == 10
    expected = [(f"Ses0{s}{g}", f"Ses0{s}{'M' if g == 'F' else 'F'}") for s in range(1, 6) for g in "FM"]
    for (test_spk, valid_spk), f10, f5 in zip(expected, folds10, folds5s):
        for fold in (f10, f5):
            splits, info = load_fold(fold)
            assert {u.spk for u in splits["test"]} == {test_spk}
            assert {u.spk for u in splits["valid"]} == {valid_spk}
            assert test_spk[:5] not in {u.spk[:5] for u in splits["train"]}
        assert (f10 / "test.tsv").read_text() == (f5 / "test.tsv").read_text()
    assert json.loads((folds5s[0] / "fold.json").read_text())["valid_mode"] == "speaker"


def test_splits_are_deterministic_and_seeded(savee, tmp_path):
    a = make_splits("savee_cv10", savee, tmp_path / "a", seed=3)
    b = make_splits("savee_cv10", savee, tmp_path / "b", seed=3)
    c = make_splits("savee_cv10", savee, tmp_path / "c", seed=4)
    for fa, fb in zip(a, b):
        for name in ("train.tsv", "valid.emo", "test.json", "dict.emo.txt", "fold.json"):
            assert (fa / name).read_bytes() == (fb / name).read_bytes()
    assert [(f / "test.tsv").read_text() for f in a] != [(f / "test.tsv").read_text() for f in c]


def test_savee_cv10_is_stratified_and_labelled_speaker_dependent(savee, tmp_path):
    data = datadir.load(savee)
    folds = make_splits("savee_cv10", savee, tmp_path / "cv")
    assert len(folds) == 10
    seen = Counter()
    per_class = {c: [] for c in data.classes}
    for fold in folds:
        splits, info = load_fold(fold)
        assert info["speaker_dependent"] is True
        seen.update(u.utt for u in splits["test"])
        counts = Counter(u.emo for u in splits["test"])
        for c in data.classes:
            per_class[c].append(counts[c])
    assert seen == Counter(list(data.records))  # every utterance tested exactly once
    for c, n in per_class.items():
        assert max(n) - min(n) <= 1, c
    assert json.loads((tmp_path / "cv" / "split.json").read_text())["speaker_dependent"] is True


def test_savee_loso4(savee, tmp_path):
    folds = make_splits("savee_loso4", savee, tmp_path / "l4", valid_fraction=0.2)
    for spk, fold in zip(("DC", "JE", "JK", "KL"), folds):
        splits, info = load_fold(fold)
        assert {u.spk for u in splits["test"]} == {spk} and len(splits["test"]) == 24
        assert spk not in {u.spk for u in splits["train"] + splits["valid"]}
        # stratified: every training speaker and class is represented in valid
        assert {u.spk for u in splits["valid"]} == {"DC", "JE", "JK", "KL"} - {spk}
        assert {u.emo for u in splits["valid"]} == set(datadir.load(savee).classes)
        assert info["speaker_dependent"] is False


def test_meld_official(meld, tmp_path):
    (fold,) = make_splits("meld_official", meld, tmp_path / "m")
    splits, info = load_fold(fold)
    assert [u.utt for u in splits["train"]] == ["train_dia0_utt0", "train_dia0_utt1", "train_dia1_utt0"]
    assert [u.utt for u in splits["valid"]] == ["dev_dia0_utt0"]
    assert [u.utt for u in splits["test"]] == ["test_dia0_utt0"]
    assert info["speaker_dependent"] is True


def test_tsv_emo_json_alignment(iemocap, tmp_path):
    (fold,) = make_splits("iemocap_loso5", iemocap, tmp_path / "s")[:1]
    tsv = (fold / "test.tsv").read_text().splitlines()
    emo = (fold / "test.emo").read_text().splitlines()
    js = json.loads((fold / "test.json").read_text())
    assert len(tsv) - 1 == len(emo) == len(js)
    for row, label, (utt, m) in zip(tsv[1:], emo, js.items()):
        rel, n = row.split("\t")
        assert rel.endswith(f"/{utt}.wav") and m["emo"] == label
        assert abs(m["duration"] - int(n) / 16000) < 1e-4


def test_check_split_catches_leakage(iemocap, tmp_path, monkeypatch):
    folds = make_splits("iemocap_loso5", iemocap, tmp_path / "s")
    check_split(tmp_path / "s")
    fold = folds[0]
    splits, _ = load_fold(fold)
    write_split(fold, "train", splits["train"] + splits["test"][:1], root=str(iemocap.parent))
    problems = check_fold(fold)
    leaked = splits["test"][0]
    assert any(f"utterance {leaked.utt} is in both train and test" in p for p in problems)
    assert any(f"speaker(s) ['{leaked.spk}'] in both train and test" in p for p in problems)
    assert any("test session(s) ['Ses01'] also in train" in p for p in problems)
    with pytest.raises(SerkitError, match="problem"):
        check_split(tmp_path / "s")
    monkeypatch.setattr(serkit.cli, "COMMAND_MODULES", ("serkit.data.cli",))
    assert serkit.cli.main(["check-split", str(tmp_path / "s")]) == 2
    assert serkit.cli.main(["check-split", str(folds[1])]) == 0


def test_check_split_catches_misaligned_files(iemocap, tmp_path):
    (fold,) = make_splits("iemocap_loso5", iemocap, tmp_path / "s")[:1]
    emo = fold / "train.emo"
    emo.write_text("\n".join(emo.read_text().splitlines()[1:]) + "\n")
    assert any("must be line-aligned" in p for p in check_fold(fold))
    with pytest.raises(SerkitError, match="line-aligned"):
        check_split(fold)


def test_failed_split_keeps_previous_output(iemocap, tmp_path, monkeypatch):
    make_splits("iemocap_loso5", iemocap, tmp_path / "s")
    before = (tmp_path / "s" / "fold1" / "train.tsv").read_bytes()
    import serkit.data.splits as splits_mod

    monkeypatch.setattr(splits_mod, "check_fold", lambda *a: ["leak!"])
    with pytest.raises(SerkitError, match="leakage check"):
        make_splits("iemocap_loso5", iemocap, tmp_path / "s", seed=9)
    assert (tmp_path / "s" / "fold1" / "train.tsv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_bad_protocol_or_corpus(iemocap, savee, tmp_path, monkeypatch):
    with pytest.raises(SerkitError, match="unknown protocol 'iemocap_random'.*iemocap_loso5"):
        make_splits("iemocap_random", iemocap, tmp_path / "x")
    with pytest.raises(SerkitError, match="a savee data directory; iemocap_loso5 is for iemocap"):
        make_splits("iemocap_loso5", savee, tmp_path / "x")
    with pytest.raises(SerkitError, match="--valid speaker is not available for savee_loso4"):
        make_splits("savee_loso4", savee, tmp_path / "x", valid="speaker")
    with pytest.raises(SerkitError, match="prepare.json: not found"):
        make_splits("savee_loso4", tmp_path, tmp_path / "x")
    monkeypatch.setattr(serkit.cli, "COMMAND_MODULES", ("serkit.data.cli",))
    with pytest.raises(SystemExit) as e:
        serkit.cli.main(["split", "nope", str(iemocap)])
    assert e.value.code == 2
    assert serkit.cli.main(["split", "savee_loso4", str(iemocap), "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
