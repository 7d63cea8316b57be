"""What the recipes guarantee beyond their results: no stage reuses work made from other inputs, one
run per workdir at a time, options checked before anything runs, every fold of the split run, and no
path ever executed as code or broken by Hydra's override syntax.

The FLEA chain runs in a workdir named `wörk (a,b=c) it's` on a mini IEMOCAP passed with --root and
a random tiny HuBERT whose path holds a quote, with one-epoch schedules.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.recipes import recipe_env as env
from tests.fixtures.recipes import run_recipe as run

pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")
pytest.importorskip("speechbrain")

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
ODD = "wörk (a,b=c) it's"
FLEA = [
    "--folds",
    "1",
    "--layer",
    "2",
    "--nclusters",
    "4",
    "--teacher-epochs",
    "1",
    "--finetune-epochs",
    "1",
    "--cpt-updates",
    "2",
    "--cpt-config",
    "../../plugins/serkit/conf/fairseq/cpt_hubert_tiny.yaml",
    "--finetune-lr",
    "0.001",
    "--method",
    "flea",
    "--pooling",
    "mean",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_hubert):
    from serkit.data import mini

    base = tmp_path_factory.mktemp("reliability")
    root = mini.build("iemocap", base / "corpus", seed=5, utts_per_class=3, extra_per_speaker=1)
    ckpt = base / "tiny hubert it's.pt"
    shutil.copyfile(tiny_hubert, ckpt)
    return {"base": base, "root": root, "ckpt": ckpt}


@pytest.fixture(scope="module")
def flea(base):
    work = base["base"] / ODD
    args = [
        "--root",
        str(base["root"]),
        "--upstream",
        str(base["ckpt"]),
        "--workdir",
        str(work),
        *FLEA,
        "--stop-stage",
        "4",
    ]
    first = run("IEMOCAP", *args)
    assert first.returncode == 0, first.stderr[-6000:]
    return {"work": work, "exp": work / "exp" / "iemocap_loso5", "args": args, "log": first.stderr}


@pytest.mark.slow
def test_continued_pretraining_runs_in_a_workdir_hydra_would_misparse(flea):
    cpt = flea["exp"] / "cpt" / "fold1"
    assert (cpt / "checkpoint_last.pt").is_file()
    assert "num_updates 2" in (cpt / "train.log").read_text()


@pytest.mark.slow
def test_a_changed_teacher_reruns_every_stage_downstream_of_it(flea):
    exp = flea["exp"]
    before = {d: (exp / d / "fold1" / ".done").read_text() for d in ("teacher", "km", "cpt", "flea_mean")}
    args = list(flea["args"])
    args[args.index("--teacher-epochs") + 1] = "2"
    res = run("IEMOCAP", *args)
    assert res.returncode == 0, res.stderr[-6000:]
    # the teacher
    assert "options changed for" in res.stderr and "epochs=1 lr=0.001 pooling=mean -> " in res.stderr
    for d, upstream in (("km", "teacher/fold1/layer2"), ("cpt", "km/fold1"), ("flea_mean", "cpt/fold1")):
        assert f"inputs changed for {exp / d / 'fold1'} ({exp / upstream})" in res.stderr, res.stderr[-4000:]
        after = (exp / d / "fold1" / ".done").read_text()
        assert after != before[d]
        assert len(list((exp / d).glob("fold1.prev-*"))) >= 1  # the stale output moved aside
    assert "epochs=2" in (exp / "teacher" / "fold1" / ".done").read_text()
    skipped = [line for line in res.stderr.splitlines() if "skip:" in line]
    assert len(skipped) == 2 and all("/data/iemocap" in line for line in skipped)  # prepare and split only

    again = run("IEMOCAP", *args)  # and now everything is current
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("skip:") == 7  # data, split, teacher, layer dump, k-means, CPT, finetune


@pytest.mark.slow
def test_a_second_run_on_the_same_workdir_fails_at_once_naming_the_first(base, tmp_path):
    work = tmp_path / "work"
    # the mini corpus' stage 0 (build, prepare, split) holds the lock for a while
    args = [
        "--upstream",
        str(base["ckpt"]),
        "--workdir",
        str(work),
        "--method",
        "shiftcnn",
        "--stop-stage",
        "0",
        "--device",
        "cpu",
    ]
    first = subprocess.Popen(
        ["bash", str(RECIPES / "IEMOCAP" / "run.sh"), *args],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = work / ".run.lock"
        deadline = time.monotonic() + 60
        while not (lock.is_file() and lock.read_text()) and first.poll() is None:
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        t0 = time.monotonic()
        second = run("IEMOCAP", *args, timeout=60)
        assert time.monotonic() - t0 < 30
        assert second.returncode != 0
        assert f"{work} is in use by another run (pid {first.pid} on " in second.stderr, second.stderr
        assert "--method shiftcnn --stop-stage 0 --device cpu" in second.stderr  # the holder's command
        assert "Stage 0" not in second.stderr
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-4000:]  # the first run was not disturbed
    again = run("IEMOCAP", *args, timeout=300)  # the lock is released with its holder
    assert again.returncode == 0 and again.stderr.count("skip:") == 3, again.stderr[-3000:]


@pytest.mark.slow
def test_valid_speaker_runs_all_ten_folds_the_split_writes(base, tmp_path):
    work = tmp_path / "work"
    res = run(
        "IEMOCAP",
        "--root",
        str(base["root"]),
        "--upstream",
        str(base["ckpt"]),
        "--workdir",
        str(work),
        "--valid",
        "speaker",
        "--method",
        "shiftcnn",
        "--stop-stage",
        "1",
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    splits = work / "data" / "iemocap" / "iemocap_loso5"
    assert sorted(p.name for p in splits.glob("fold*")) == sorted(f"fold{k}" for k in range(1, 11))
    assert f"Folds of {splits} to run: 1 2 3 4 5 6 7 8 9 10\n" in res.stderr
    bad = run(
        "IEMOCAP",
        "--root",
        str(base["root"]),
        "--upstream",
        str(base["ckpt"]),
        "--workdir",
        str(work),
        "--valid",
        "speaker",
        "--method",
        "shiftcnn",
        "--stop-stage",
        "1",
        "--folds",
        "3,11",
        timeout=300,
    )
    assert bad.returncode != 0
    assert f"--folds 3,11: {splits} has folds 1 2 3 4 5 6 7 8 9 10, no fold 11" in bad.stderr


INJECTED = "a'+str(__import__('os').system('touch $PWNED'))+'.pt"


def test_an_upstream_path_is_never_executed_and_a_missing_one_fails_cleanly(tmp_path):
    pwned = tmp_path / "PWNED"
    res = run(
        "IEMOCAP",
        "--upstream",
        str(tmp_path / INJECTED),
        "--workdir",
        str(tmp_path / "w"),
        "--stage",
        "1",
        timeout=120,
        PWNED=str(pwned),
    )
    assert res.returncode != 0 and f"--upstream {tmp_path / INJECTED}: no such file" in res.stderr
    assert "Traceback" not in res.stderr and not pwned.exists()


@pytest.mark.slow
def test_an_upstream_path_holding_quotes_and_code_is_loaded_as_a_path(base, tmp_path):
    pwned = tmp_path / "PWNED"
    ckpt = tmp_path / INJECTED
    shutil.copy(base["ckpt"], ckpt)
    work = tmp_path / "w"
    # the mini corpus' path: the upstream's layers are read before stage 1
    res = run(
        "IEMOCAP",
        "--upstream",
        str(ckpt),
        "--workdir",
        str(work),
        "--method",
        "shiftcnn",
        "--stop-stage",
        "1",
        timeout=900,
        PWNED=str(pwned),
    )
    assert not pwned.exists()
    assert res.returncode == 0, res.stderr[-4000:]
    assert "the tiny HuBERT has 2 layers: clustering layer 2 instead of 9" in res.stderr

    bad = tmp_path / "it's not a checkpoint.pt"
    bad.write_text("hello")
    res = run(
        "IEMOCAP",
        "--upstream",
        str(bad),
        "--workdir",
        str(work),
        "--method",
        "flea",
        "--stage",
        "1",
        timeout=300,
    )
    assert res.returncode != 0
    assert f"--upstream {bad}: not an upstream checkpoint serkit can load" in res.stderr


@pytest.mark.slow
def test_tiny_upstream_pretraining_in_a_workdir_hydra_would_misparse(tmp_path):
    work = tmp_path / ODD
    res = subprocess.run(
        [
            "bash",
            str(REPO / "local" / "make_tiny_upstream.sh"),
            "--workdir",
            str(work),
            "--out",
            str(work / "exp" / "upstream"),
            "--updates",
            "2",
            "--nclusters",
            "4",
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    from serkit.upstream import load_upstream

    assert load_upstream(work / "exp" / "upstream" / "tiny_hubert.pt").num_layers == 2
    assert "num_updates 2" in (work / "exp" / "upstream" / "iter1.log").read_text()


def _no_stage_ran(res: subprocess.CompletedProcess, work: Path) -> None:
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "integer expression expected" not in res.stderr
    assert "Stage 0" not in res.stderr and not (work / "data").exists() and not (work / "db").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stage", "abc"], "--stage abc: expected a whole number"),
        (["--stage", "-1"], "--stage -1: expected a whole number"),
        (["--stage", "6"], "--stage 6: this recipe's stages are 0..5"),
        (["--stage", "4", "--stop-stage", "2"], "--stage 4 comes after --stop-stage 2: nothing to run"),
        (["--method", "flea,flae"], "--method flae: unknown"),
        (["--folds", "one"], "--folds one: 'all' or a comma list"),
        (["--layer", "nine"], "--layer nine: expected a whole number"),
        (["--valid", "speakers"], "--valid speakers: choose one of: stratified speaker"),
        (["--setting", "frozen"], "--setting frozen: choose one of: featex finetune"),
        (["--teacher-epochs", "0"], "--teacher-epochs 0: expected a whole number >= 1"),
        (["--finetune-lr", "fast"], "--finetune-lr fast: expected a number"),
        (["--device", "gpu"], "--device gpu: choose auto, cpu, cuda or cuda:N"),
    ],
)
def test_iemocap_options_are_checked_before_stage_0(tmp_path, args, message):
    res = run("IEMOCAP", "--workdir", str(tmp_path), *args, timeout=120)
    _no_stage_ran(res, tmp_path)
    assert message in res.stderr, res.stderr


@pytest.mark.slow
def test_iemocap_layer_is_checked_against_the_upstream_before_stage_0(base, tmp_path):
    res = run(
        "IEMOCAP",
        "--root",
        str(base["root"]),
        "--upstream",
        str(base["ckpt"]),
        "--workdir",
        str(tmp_path),
        "--layer",
        "7",
        timeout=300,
    )
    _no_stage_ran(res, tmp_path)
    assert f"--layer 7: {base['ckpt'].name} has 2 layers" in res.stderr


def _recipe_copy(tmp_path: Path, name: str) -> Path:
    shutil.copytree(REPO / "local", tmp_path / "local")
    shared = Path("plugins") / "serkit" / "conf"  # the configs the corpora share
    shutil.copytree(REPO / shared, tmp_path / shared, symlinks=True)
    shutil.copytree(
        RECIPES / name,
        tmp_path / "recipes" / name,
        ignore=shutil.ignore_patterns("data", "exp", "dump", "db", ".run.lock"),
    )
    return tmp_path / "recipes" / name


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("MELD", ["--stage", "x"], "--stage x: expected a whole number"),
        ("MELD", ["--stage", "6"], "--stage 6: this recipe's stages are 0..5"),
        ("MELD", ["--layers", "1,,2"], "--layers 1,,2: expected a comma list"),
        ("MELD", ["--head-epochs", "0"], "--head-epochs 0: expected a whole number >= 1"),
        ("SAVEE", ["--stage", "-1"], "--stage -1: expected a whole number"),
        ("SAVEE", ["--folds", "1-3"], "--folds 1-3: 'all' or a comma list"),
        ("SAVEE", ["--valid-fraction", "lots"], "--valid-fraction lots: expected a number"),
    ],
)
def test_meld_and_savee_options_are_checked_before_stage_0(tmp_path, name, args, message):
    recipe = _recipe_copy(tmp_path, name)
    res = subprocess.run(
        ["bash", str(recipe / "run.sh"), *args], env=env(), capture_output=True, text=True, timeout=120
    )
    _no_stage_ran(res, recipe)
    assert message in res.stderr, res.stderr
