"""`serkit score` on a fairseq output directory, one-fold wording, the confusion plot, --help texts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serkit.cli import build_parser, main
from serkit.scoring import COLOURBAR_LABEL, confusion_display, results_table
from tests.fixtures.scoring import write_preds

Y = ["ang", "hap", "neu", "sad"] * 2
WRONG = ["hap", "neu", "sad", "ang"] * 2


def make_fairseq_out(tmp_path):
    """What ser_finetune.yaml writes with task.predictions_dir=OUT/predictions: no fold*/ directories."""
    out = tmp_path / "ser"
    p = out / "predictions"
    write_preds(p / "valid.epoch001.tsv", Y, Y)  # valid UA 1.0
    write_preds(p / "test.epoch001.tsv", Y, Y[:4] + WRONG[4:])  # test UA 0.5
    write_preds(p / "valid.epoch002.tsv", Y, WRONG)  # valid UA 0.0
    write_preds(p / "test.epoch002.tsv", Y, Y)  # test UA 1.0
    (out / "checkpoint_best.pt").write_bytes(b"")
    return out


def test_score_accepts_a_fairseq_output_directory_as_one_fold(tmp_path, capsys):
    out = make_fairseq_out(tmp_path)
    assert main(["score", str(out)]) == 0
    captured = capsys.readouterr()
    md, log = captured.out, captured.err
    r = json.loads((out / "results.json").read_text())
    assert r["folds"] == ["ser"]
    assert r["per_fold"]["ser"]["selected_epoch"] == 1 and r["summary"]["ua"] == {"mean": 0.5, "std": 0.0}
    assert json.loads((out / "metrics.json").read_text())["selected_epoch"] == 1
    assert (out / "confusion.png").stat().st_size > 1000
    assert "- Folds: 1 (one fold: no spread over folds)" in md
    assert "| ser | 1 | 50.00 | 50.00 |" in md
    assert "±" not in md.split("| fold |")[1]  # no "± 0.00" for a single fold
    assert "Confusion matrix (test, one fold; rows = reference" in md
    assert "UA 50.00 on one fold (selection: valid)" in log
    assert "over 1 folds" not in log
    table = results_table([out])
    assert "| valid | 1 | 50.00 | 50.00 |" in table


def test_score_still_refuses_a_directory_without_predictions(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["score", str(tmp_path / "empty")]) == 2
    assert "no fold*/ directories and no predictions/" in capsys.readouterr().err


def test_several_folds_keep_mean_and_std(tmp_path, capsys):
    exp = tmp_path / "exp"
    for k, test_preds in ((1, Y), (2, Y[:4] + WRONG[4:])):
        write_preds(exp / f"fold{k}" / "predictions" / "valid.epoch001.tsv", Y, Y)
        write_preds(exp / f"fold{k}" / "predictions" / "test.epoch001.tsv", Y, test_preds)
    assert main(["score", str(exp)]) == 0
    md = capsys.readouterr().out
    assert "| **mean ± std** | | 75.00 ± 35.36 |" in md
    assert "- Folds: 2; mean ± sample std over folds" in md
    assert "Confusion matrix (test, summed over 2 folds;" in md


def test_confusion_plot_cells_colourbar_and_title():
    import matplotlib.pyplot as plt

    cm = np.array([[2, 1], [0, 3]])
    disp = confusion_display(cm, ["ang", "sad"], "t")
    try:
        assert [t.get_text() for t in disp.text_.ravel()] == ["2\n67%", "1\n33%", "0\n0%", "3\n100%"]
        np.testing.assert_allclose(disp.confusion_matrix, [[2 / 3, 1 / 3], [0, 1]])
        assert disp.im_.colorbar.ax.get_ylabel() == COLOURBAR_LABEL
        assert disp.ax_.get_xlabel() == "predicted" and disp.ax_.get_ylabel() == "reference"
    finally:
        plt.close(disp.figure_)


def test_confusion_title_explains_the_selection_rule(tmp_path):
    from serkit.scoring import confusion_title

    assert confusion_title("shiftcnn", 5, "valid") == (
        "shiftcnn: test set, summed over 5 folds\n"
        "epoch per fold chosen by the selection rule 'valid': "
        "validation (best valid epoch, test scored once)"
    )
    assert confusion_title("flea", 1, "best_test").startswith("flea: test set, one fold\n")


def _subparser(parser, *names):
    for name in names:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize(
    "names, start",
    [
        (("mini-corpus",), "Build a small synthetic corpus"),
        (("results",), "Print one markdown table"),
        (("kmeans", "fit"), "Fit k-means on a capped random sample"),
        (("kmeans", "apply"), "Write <split>.km, dict.km.txt"),
    ],
)
def test_every_subcommand_help_has_a_description(names, start):
    sub = _subparser(build_parser(), *names)
    assert sub.description and sub.description.startswith(start), sub.description
    assert start in sub.format_help()


def test_score_help_is_plain_text_not_rst():
    text = _subparser(build_parser(), "score").format_help()
    assert "``" not in text and ".. " not in text
    assert "  best_test        paper: best test epoch (selects on the test set)" in text
    assert "scored as one fold" in text.replace("\n", " ")
