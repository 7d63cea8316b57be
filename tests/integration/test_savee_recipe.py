"""The SAVEE recipe end to end on the mini corpus: 1 fold per protocol, every ablation, 1-2 epochs.

Runs recipes/SAVEE/run.sh as a user would (a copy of the recipe directory, so the repository's own
recipes/SAVEE/{data,exp,dump,db} are untouched) and checks the ablation table and the metrics.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ABLATIONS = ("sec_only", "sec_tec_nosearch", "mfsn")
PROTOCOLS = ("savee_loso4", "savee_cv10")
# What the mini corpus gives with the options below (the recipe is deterministic on CPU): fold 1's
# selected epoch and test UA, WA, macro F1, weighted F1, to the 4 decimals of a run.
EXPECTED = {
    ("savee_loso4", "sec_only"): (1, 0.2321, 0.3125, 0.1251, 0.1795),
    ("savee_loso4", "sec_tec_nosearch"): (1, 0.1964, 0.2188, 0.1323, 0.1599),
    ("savee_loso4", "mfsn"): (1, 0.1964, 0.2188, 0.0944, 0.1295),
    ("savee_cv10", "sec_only"): (1, 0.1429, 0.2308, 0.0612, 0.0989),
    ("savee_cv10", "sec_tec_nosearch"): (2, 0.2381, 0.3077, 0.2063, 0.2564),
    ("savee_cv10", "mfsn"): (2, 0.2143, 0.2308, 0.1310, 0.1410),
}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A copy of recipes/SAVEE at the same depth below a repository root (run.sh uses ../../local and
    the shared configs, ../../plugins/serkit/conf)."""
    root = tmp_path_factory.mktemp("savee_recipe")
    shutil.copytree(REPO / "local", root / "local")
    shutil.copytree(REPO / "plugins" / "serkit" / "conf", root / "plugins" / "serkit" / "conf", symlinks=True)
    # local/make_tiny_upstream.sh pretrains the tiny HuBERT with the IEMOCAP recipe's fairseq config
    shutil.copytree(REPO / "recipes" / "IEMOCAP" / "conf", root / "recipes" / "IEMOCAP" / "conf")
    shutil.copytree(
        REPO / "recipes" / "SAVEE",
        root / "recipes" / "SAVEE",
        ignore=shutil.ignore_patterns("data", "exp", "dump", "db"),
    )
    return root / "recipes" / "SAVEE"


def _run(recipe_dir, *args, timeout=1500):
    env = dict(os.environ, SAVEE="")
    venv_bin = REPO / ".venv" / "bin"
    if venv_bin.is_dir():
        env["PATH"] = f"{venv_bin}:{env['PATH']}"
    env["PYTHONPATH"] = str(REPO / "plugins") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        ["bash", str(recipe_dir / "run.sh"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_savee_recipe_mini_end_to_end(recipe):
    # the mini default: the shared mfsn.yaml with the mfsn_mini overlay; --protocol both runs each in turn
    short = ("--folds", "1", "--search-epochs", "1", "--mfsn-epochs", "2", "--device", "cpu")
    r = _run(recipe, *short)
    assert r.returncode == 0, r.stderr[-4000:]
    exps = {p: recipe / "exp" / p for p in PROTOCOLS}
    for exp in exps.values():
        # the final path is absolute; the stage lines are in the experiment's run.log too
        line = f"All runs of {exp.resolve()}: {exp.resolve()}/RESULTS.md"
        assert line in r.stderr and line in (exp / "run.log").read_text()
    # the tiny HuBERT is built once, by the first protocol's stage 0 (its progress in that run.log)
    first_log = (exps["savee_loso4"] / "run.log").read_text()
    assert "(make_tiny_upstream.sh)   pretraining: update 300/300, loss" in first_log

    for p, exp in exps.items():
        table = (exp / "RESULTS.md").read_text()
        assert "NOT wav2vec 2.0/data2vec" in table  # the mini sources are labelled for what they are
        rows = [line for line in table.splitlines() if line.startswith("| MFSN")]
        assert len(rows) == len(ABLATIONS)
        for a in ABLATIONS:
            # the method column names the ablation, the setting column the batching that trained it
            row = f"| MFSN ({a}) | featex (dynamic batches) | {p} |"
            assert any(line.startswith(row) for line in rows), (a, p, table)
            line = next(line for line in rows if line.startswith(row))
            _, ua, wa, _, wf1 = EXPECTED[p, a]
            # one fold: no ± (serkit score); UA, WA, WF1 in percent
            assert re.findall(r"\| (\d+\.\d+)(?: ± \d+\.\d+)? ", line + " ") == [
                f"{100 * ua:.2f}",
                f"{100 * wa:.2f}",
                f"{100 * wf1:.2f}",
            ], line

    for p, exp in exps.items():
        for a in ABLATIONS:
            fold = exp / f"mfsn_{a}" / "fold1"
            m = json.loads((fold / "metrics.json").read_text())
            assert m["selection"] == "valid"
            got = (m["selected_epoch"], *(round(m[k], 4) for k in ("ua", "wa", "macro_f1", "weighted_f1")))
            assert got == EXPECTED[p, a], (p, a)
            assert len(m["test"]["classes"]) == 7
            n_test = len(json.loads((recipe / "data" / "savee" / p / "fold1" / "test.json").read_text()))
            assert sum(map(sum, m["test"]["confusion"])) == n_test
            assert sorted(x.name for x in (fold / "predictions").iterdir()) == [
                "test.epoch001.tsv",
                "test.epoch002.tsv",
                "valid.epoch001.tsv",
                "valid.epoch002.tsv",
            ]
        arch = (exp / "mfsn_mfsn_search" / "fold1" / "arch.txt").read_text()  # the search call's
        assert re.fullmatch(r"[0-2]:\w+\n", arch)
        info = json.loads((exp / "mfsn_mfsn" / "fold1" / "train_info.json").read_text())
        assert info["arch"] == arch.strip()

    # Same options again: every stage is skipped, nothing is retrained.
    loso4 = exps["savee_loso4"]
    stamp = (loso4 / "mfsn_mfsn" / "fold1" / "predictions" / "test.epoch002.tsv").stat().st_mtime_ns
    again = _run(recipe, *short, "--stop-stage", "4")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "skip:" in again.stderr
    assert (loso4 / "mfsn_mfsn" / "fold1" / "predictions" / "test.epoch002.tsv").stat().st_mtime_ns == stamp

    # Re-made features make every run trained on them stale (one run re-trained, to keep it short).
    feats = next((recipe / "dump").glob("*/all_layers"))
    (feats / ".done").unlink()
    redo = _run(
        recipe,
        *short,
        "--protocol",
        "savee_loso4",
        "--mfsn-ablation",
        "sec_only",
        "--stage",
        "4",
        "--stop-stage",
        "4",
    )
    assert redo.returncode == 0, redo.stderr[-4000:]
    run = (loso4 / "mfsn_sec_only").resolve()
    # (the features are both sources' here: one tiny HuBERT for TEC and SEC)
    assert f"inputs changed for {run}/fold1 ({feats.resolve()}," in redo.stderr, redo.stderr[-4000:]
    assert list(run.glob("fold1.prev-*"))
    assert (run / "fold1" / "predictions" / "test.epoch002.tsv").is_file()


def test_savee_recipe_help_and_bad_options(recipe):
    r = _run(recipe, "--help")
    assert r.returncode == 0
    for opt in (
        "--stage",
        "--stop-stage",
        "--root",
        "--protocol",
        "--folds",
        "--valid-fraction",
        "--tec-upstream",
        "--sec-upstream",
        "--tec-layer",
        "--sec-layers",
        "--mfsn-ablation",
        "--config",
        "--search-epochs",
        "--mfsn-epochs",
        "--batch-size",
        "--device",
        "--tag",
        "--backend",
    ):
        assert opt in r.stdout, opt
    bad = _run(recipe, "--mfsn-ablation", "sec_only,oops")
    assert bad.returncode != 0 and "oops" in bad.stderr
    bad = _run(recipe, "--root", "/nonexistent/SAVEE", "--stop-stage", "0")
    assert bad.returncode != 0 and "no such directory" in bad.stderr
