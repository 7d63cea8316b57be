"""Scoring: metrics by hand, selection rules on a run with known per-epoch predictions."""

import json

import numpy as np
import pytest

from serkit.metrics import compute_metrics
from serkit.scoring import read_predictions, results_table, score_fold, score_run
from serkit.utils import SerkitError
from tests.fixtures.scoring import CLASSES, write_preds


def test_metrics_by_hand():
    labels = ["ang"] * 4 + ["sad"] * 1
    preds = ["ang", "ang", "ang", "sad", "sad"]
    m = compute_metrics(labels, preds, CLASSES)
    assert m["wa"] == pytest.approx(4 / 5)
    assert m["ua"] == pytest.approx((3 / 4 + 1) / 2)  # absent classes do not count
    assert m["absent_classes"] == ["hap", "neu"]
    assert m["confusion"][0] == [3, 0, 0, 1]
    assert m["n"] == 5


def test_metrics_reject_unknown_label():
    with pytest.raises(ValueError, match="fru"):
        compute_metrics(["ang"], ["fru"], CLASSES)


def make_run(tmp_path, nfolds=2):
    """Epoch 1: good on valid, poor on test; epoch 2: poor on valid, best on test."""
    exp = tmp_path / "exp" / "run"
    y = ["ang", "hap", "neu", "sad"] * 2
    wrong = ["hap", "neu", "sad", "ang"] * 2
    half = y[:4] + wrong[4:]
    for k in range(1, nfolds + 1):
        p = exp / f"fold{k}" / "predictions"
        write_preds(p / "valid.epoch001.tsv", y, y)  # valid UA 1.0
        write_preds(p / "test.epoch001.tsv", y, half)  # test UA 0.5
        write_preds(p / "valid.epoch002.tsv", y, wrong)  # valid UA 0.0
        write_preds(p / "test.epoch002.tsv", y, y)  # test UA 1.0
    (exp / "fold1.prev-20260101-000000" / "predictions").mkdir(parents=True)  # moved-aside output
    (exp / "run.json").write_text(
        json.dumps(
            {"method": "shiftcnn", "selection": "best_test", "protocol": "iemocap_loso5", "upstream": "tiny"}
        )
    )
    return exp


def test_rules_pick_the_right_epoch(tmp_path):
    exp = make_run(tmp_path)
    m = score_fold(exp / "fold1", "valid")
    assert (m["selected_epoch"], m["ua"]) == (1, 0.5)
    m = score_fold(exp / "fold1", "best_test")
    assert (m["selected_epoch"], m["ua"]) == (2, 1.0)
    m = score_fold(exp / "fold1", "valid_test_mean")
    assert (m["selected_epoch"], m["ua"]) == (1, 0.75)
    assert json.loads((exp / "fold1" / "metrics.json").read_text())["selection"] == "valid_test_mean"


def test_score_run_writes_results(tmp_path):
    exp = make_run(tmp_path)
    r = score_run(exp, "paper")  # the method's paper rule, from run.json
    assert r["selection"] == "best_test"
    assert r["folds"] == ["fold1", "fold2"]  # not the moved-aside fold1.prev-*
    assert r["summary"]["ua"] == {"mean": 1.0, "std": 0.0}
    md = (exp / "RESULTS.md").read_text()
    assert "best test epoch" in md and "iemocap_loso5" in md and "git commit" in md
    assert (exp / "confusion.png").stat().st_size > 1000
    assert np.asarray(r["confusion"]).sum() == 16
    table = results_table([exp])
    assert "| shiftcnn |" in table and "paper: best_test" in table


def test_bad_predictions_file(tmp_path):
    p = tmp_path / "fold1" / "predictions" / "test.epoch001.tsv"
    p.parent.mkdir(parents=True)
    p.write_text("utt\tlabel\tpred\tang\nu1\tang\n")
    with pytest.raises(SerkitError, match=r"test.epoch001.tsv:2"):
        read_predictions(p)
    with pytest.raises(SerkitError, match="no fold"):
        score_run(tmp_path / "nothing")
