"""FLEA (teacher, k-means, continued pretraining, finetune with both poolings) end to end on the mini
SAVEE, the smallest mini corpus: every corpus runs every method of the template, FLEA included, from
the configs the corpora share (plugins/serkit/conf/flea.yaml and fairseq/). One fold of savee_loso4,
a random-init tiny HuBERT as --upstream (pretraining the tiny HuBERT is covered by the IEMOCAP recipe)
and schedules of a few epochs and updates; the run is deterministic on CPU, so the scores are pinned."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.recipes import run_recipe

pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")
pytest.importorskip("speechbrain")

pytestmark = [pytest.mark.slow, pytest.mark.fairseq]

SHORT = [
    "--protocol",
    "savee_loso4",
    "--folds",
    "1",
    "--method",
    "flea",
    "--layer",
    "2",
    "--nclusters",
    "8",
    "--teacher-epochs",
    "2",
    "--finetune-epochs",
    "2",
    "--cpt-updates",
    "4",
    "--device",
    "cpu",
]
#: test UA (selection: valid) of this deterministic CPU run, per run; 7 classes, 32 test clips
EXPECTED_UA = {"teacher": 0.25, "flea_attention": 0.05357142857142857, "flea_mean": 0.25}
#: the runs' rows of exp/savee_loso4/RESULTS.md: method, then UA / WA / WF1 in percent
EXPECTED_ROWS = {
    "teacher (HuBERT finetuned, mean pooling)": ["25.00", "21.88", "11.56"],
    "FLEA (attention pooling)": ["5.36", "6.25", "4.65"],
    "FLEA (mean pooling)": ["25.00", "21.88", "11.56"],
}


@pytest.fixture(scope="module")
def done(tmp_path_factory, tiny_hubert):
    work = tmp_path_factory.mktemp("savee_flea") / "work"
    r = run_recipe("SAVEE", "--upstream", str(tiny_hubert), "--workdir", str(work), *SHORT, timeout=1500)
    assert r.returncode == 0, r.stderr[-6000:]
    return {"work": work, "exp": work / "exp" / "savee_loso4", "out": r}


def test_every_flea_stage_ran_from_the_shared_configs(done):
    exp = done["exp"]
    assert (exp / "teacher" / "fold1" / "upstream.pt").is_file()
    fold = done["work"] / "data" / "savee" / "savee_loso4" / "fold1"
    for split in ("train", "valid", "test"):
        n = len((fold / f"{split}.tsv").read_text().splitlines()) - 1
        assert len((exp / "km" / "fold1" / f"{split}.km").read_text().splitlines()) == n
    assert (exp / "cpt" / "fold1" / "checkpoint_last.pt").is_file()
    shared = "../../plugins/serkit/conf/"
    assert f"4 updates of update_freq 1 ({shared}fairseq/cpt_hubert_tiny.yaml)" in done["out"].stderr
    for name in ("teacher", "flea_attention", "flea_mean"):
        assert json.loads((exp / name / "run.json").read_text())["config"] == shared + "flea.yaml"


def test_the_scores_are_the_deterministic_runs(done):
    for name, ua in EXPECTED_UA.items():
        m = json.loads((done["exp"] / name / "fold1" / "metrics.json").read_text())
        assert m["selection"] == "valid" and m["test"]["n"] == 32
        assert m["ua"] == pytest.approx(ua, abs=1e-12), name


def test_the_table_has_one_row_per_flea_run(done):
    rows = {}
    for line in (done["exp"] / "RESULTS.md").read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[-3:]
    assert rows == EXPECTED_ROWS
