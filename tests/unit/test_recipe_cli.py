"""`serkit recipe`: what the recipe template computes in Python (run.json, labels, folds, batches)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serkit.recipe_cli import check_labels, fold_numbers, km_label, write_run_json
from serkit.utils import SerkitError


def serkit(*args):
    return subprocess.run(
        [sys.executable, "-m", "serkit", "recipe", *args], capture_output=True, text=True, timeout=120
    )


def test_run_json_is_written_whole_and_values_keep_their_equals_signs(tmp_path):
    out = tmp_path / "run" / "run.json"
    r = serkit("run-json", str(out), "method=FLEA (mean pooling)", "upstream=a=b, k=16", "corpus=IEMOCAP")
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == {
        "method": "FLEA (mean pooling)",
        "upstream": "a=b, k=16",
        "corpus": "IEMOCAP",
    }
    assert out.read_text().startswith('{\n  "method"')  # indent 2, as the recipes always wrote it
    assert [p.name for p in out.parent.iterdir()] == ["run.json"]  # no temporary left behind
    with pytest.raises(SerkitError, match="not KEY=VALUE"):
        write_run_json(out, ["novalue"])
    assert json.loads(out.read_text())["corpus"] == "IEMOCAP"  # the earlier file is intact


def test_km_label_is_the_mean_over_folds_of_each_fitted_split():
    metas = [
        {
            "fit_splits": ["train", "valid", "test"],
            "fit_frames_per_split": {"train": 100, "valid": 10, "test": 20},
        },
        {
            "fit_splits": ["train", "valid", "test"],
            "fit_frames_per_split": {"train": 101, "valid": 11, "test": 21},
        },
    ]
    assert km_label(True, metas) == (
        "k-means transductive, fitted on train+valid+test frames (per fold: train 100, valid 10, test 20)"
    )
    assert km_label(False, []) == "k-means fitted on train frames"


def test_check_labels_names_the_file_and_both_counts(tmp_path):
    fold, labels = tmp_path / "fold2", tmp_path / "km"
    fold.mkdir(), labels.mkdir()
    for split, n in (("train", 3), ("valid", 2)):
        (fold / f"{split}.tsv").write_text("/root\n" + "".join(f"u{i}.wav\t10\n" for i in range(n)))
        (labels / f"{split}.km").write_text("1 2\n" * n)
    check_labels(labels, fold)
    (labels / "valid.km").write_text("1 2\n")
    with pytest.raises(
        SerkitError,
        match=r"valid.km has 1 lines, .*valid.tsv 2 utterances; labels must be "
        r"row-aligned with fold 2's manifests",
    ):
        check_labels(labels, fold)
    (labels / "train.km").unlink()
    with pytest.raises(SerkitError, match="train.km missing"):
        check_labels(labels, fold, "--tapt-labels")


def test_fold_numbers_follow_the_split_and_refuse_a_fold_it_lacks(tmp_path):
    (tmp_path / "split.json").write_text(json.dumps({"folds": ["fold10", "fold2", "fold1"]}))
    assert fold_numbers(tmp_path, "all") == [1, 2, 10]
    assert fold_numbers(tmp_path, "10,1") == [10, 1]
    with pytest.raises(SerkitError, match="has folds 1 2 10, no fold 3"):
        fold_numbers(tmp_path, "3")
    r = serkit("folds", str(tmp_path / "nowhere"), "all")
    assert r.returncode == 2 and "split.json: missing (run stage 0" in r.stderr


def test_check_labels_from_the_command_line_names_the_option_the_labels_came_from(tmp_path):
    fold, labels = tmp_path / "fold1", tmp_path / "km"
    fold.mkdir(), labels.mkdir()
    (fold / "train.tsv").write_text("/root\na.wav\t10\n")
    r = serkit("check-labels", "--labels", str(labels), "--fold", str(fold), "--option=--tapt-labels")
    assert r.returncode == 2 and f"--tapt-labels: {labels}/train.km missing" in r.stderr, r.stderr
