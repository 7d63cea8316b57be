"""The MELD recipe (BAS) end to end on the mini corpus, in a reduced setting (a few epochs).

Runs recipes/MELD/run.sh as a user would, in a copy of the recipe directory so that the repository's
own recipes/MELD/{data,exp,dump,db} are untouched, and checks what a user relies on: the prepared
data and what was skipped, the official split, the search log and the architecture the retrain used,
the per-run metrics and the final table. The upstream is a random-init tiny HuBERT passed with
--upstream: pretraining the tiny HuBERT (the recipe's default on the mini corpus) takes minutes and
is covered by the IEMOCAP recipe's run.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SEARCH_EPOCHS = 3
EPOCHS = 2
RUNS = ("bas", "ffn", "msa_ffn", "transformer")  # MELD's names of the template's bas, bas_ffn, ...
# What the mini corpus gives with these options (deterministic on CPU): every run selects epoch 1 and
# predicts the majority class of the 19 test clips (7 of them): UA 1/7, WA 7/19, WF1 98/494.
EXPECTED = {run: (1, 0.1429, 0.3684, 0.1984) for run in RUNS}


def _env():
    env = dict(os.environ, MELD="", OMP_NUM_THREADS="1")
    venv_bin = REPO / ".venv" / "bin"
    if venv_bin.is_dir():
        env["PATH"] = f"{venv_bin}:{env['PATH']}"
    env["PYTHONPATH"] = str(REPO / "plugins") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(recipe_dir, *args, timeout=900):
    return subprocess.run(
        ["bash", str(recipe_dir / "run.sh"), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """A copy of recipes/MELD at the same depth below a repository root (run.sh uses ../../local and
    the shared configs, ../../plugins/serkit/conf; the tiny HuBERT the IEMOCAP recipe's fairseq config)."""
    root = tmp_path_factory.mktemp("meld_recipe")
    shutil.copytree(REPO / "local", root / "local")
    shutil.copytree(REPO / "plugins" / "serkit" / "conf", root / "plugins" / "serkit" / "conf", symlinks=True)
    shutil.copytree(
        REPO / "recipes" / "MELD",
        root / "recipes" / "MELD",
        ignore=shutil.ignore_patterns("data", "exp", "dump", "db"),
    )
    shutil.copytree(REPO / "recipes" / "IEMOCAP" / "conf", root / "recipes" / "IEMOCAP" / "conf")
    return root / "recipes" / "MELD"


# What a run.sh sets about its corpus for the template (docs/new_corpus.md), not options of a run.
CORPUS_SETTINGS = {
    "corpus",
    "prepare_name",
    "mini_release",
    "corpus_protocols",
    "default_method",
    "mini_method",
    "method_aliases",
    "corpus_help",
}


def test_help_documents_every_option(recipe):
    r = _run(recipe, "--help", timeout=60)
    assert r.returncode == 0, r.stderr
    template = (recipe.parents[1] / "local" / "ser.sh").read_text()
    declared = set(re.findall(r'^: "\$\{([a-z_]+)=', template, flags=re.M))
    declared |= set(re.findall(r"^([a-z_]+)=", (recipe / "run.sh").read_text(), flags=re.M))
    assert {"stage", "stop_stage", "root", "upstream", "bas_layers", "nj", "layers", "backend"} <= declared
    for name in sorted(declared - CORPUS_SETTINGS):
        assert f"--{name.replace('_', '-')}" in r.stdout, f"--{name} is not in --help"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--no-such-option", "1"), "unknown option --no-such-option"),
        (("--bas-layers", "5"), "--bas-layers 5"),
        (("--ffn-residual", "yes"), "--ffn-residual yes: choose one of: true false"),
        (("--method", "bas,nope"), "--method nope: unknown"),
        (("--root", "/no/such/MELD.Raw"), "--root /no/such/MELD.Raw: no such directory"),
    ],
)
def test_bad_option_fails_with_a_message(recipe, args, message):
    r = _run(recipe, *args, timeout=60)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


@pytest.mark.slow
def test_meld_recipe_mini_end_to_end(recipe, tmp_path):
    upstream = tmp_path / "tiny_hubert_random.pt"
    made = subprocess.run(
        ["serkit", "make-upstream", "tiny-hubert", "--out", str(upstream), "--seed", "0"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    args = (
        "--upstream",
        str(upstream),
        "--search-epochs",
        str(SEARCH_EPOCHS),
        "--head-epochs",
        str(EPOCHS),
        "--tag",
        "test",
        "--device",
        "cpu",
    )
    r = _run(recipe, *args)
    assert r.returncode == 0, r.stderr[-4000:]

    # Stage 0: every clip but the broken, silent and missing ones, listed with their reason.
    manifest = json.loads((recipe / "db" / "mini_meld" / "MELD.Raw" / "MANIFEST.json").read_text())
    bad = {u: kind for kind in ("broken", "silent", "missing") for u in manifest[kind]}
    assert len(bad) == 3
    data = recipe / "data" / "meld"
    utts = [line.split()[0] for line in (data / "wav.scp").read_text().splitlines()]
    assert sorted(utts) == sorted(set(manifest["utterances"]) - set(bad))
    skipped = [line.split("\t") for line in (data / "skipped.tsv").read_text().splitlines()[1:]]
    assert {row[0] for row in skipped} == set(bad)
    reasons = {row[0]: row[2] for row in skipped}
    assert reasons[manifest["missing"][0]] == "missing clip" and reasons[manifest["silent"][0]] == "silent"

    # The official split: train / dev -> valid / test, every kept utterance once.
    fold = data / "meld_official" / "fold1"
    official = {"train": "train", "valid": "dev", "test": "test"}
    seen = []
    for split, source in official.items():
        keys = list(json.loads((fold / f"{split}.json").read_text()))
        expected = [u for u in utts if manifest["utterances"][u]["split"] == source]
        assert sorted(keys) == sorted(expected), split
        seen += keys
    assert sorted(seen) == sorted(utts)
    classes = [line.split()[0] for line in (fold / "dict.emo.txt").read_text().splitlines()]
    assert classes == manifest["classes"]

    # Stage 4: one search-log line per epoch; the retrain used the derived architecture.
    exp = recipe / "exp" / "test"
    search = exp / "bas_featex" / "fold1" / "search"
    log = [json.loads(line) for line in (search / "search_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, SEARCH_EPOCHS + 1))
    assert all(len(e["probabilities"]) == 4 for e in log)
    arch = (search / "arch.txt").read_text().strip()
    assert re.fullmatch(r"(msa_ffn|msa|ffn)(,(msa_ffn|msa|ffn)){3}", arch)
    assert arch == log[-1]["derived"]
    assert (search / "search_probs.png").stat().st_size > 0
    assert f"arch: {arch}" in (exp / "bas_featex" / "fold1" / "hyperparams.yaml").read_text()
    # The two transformer baselines, as deep as the search: BAS's own blocks and serkit's head.
    msa_ffn_hparams = (exp / "msa_ffn_featex" / "fold1" / "hyperparams.yaml").read_text()
    assert "arch: msa_ffn,msa_ffn,msa_ffn,msa_ffn\n" in msa_ffn_hparams
    transformer_hparams = (exp / "transformer_featex" / "fold1" / "hyperparams.yaml").read_text()
    assert re.search(r"^transformer_layers: 4\b", transformer_hparams, flags=re.M)

    # Stage 4-5: metrics per run, selected on validation weighted F1.
    n_test = len(json.loads((fold / "test.json").read_text()))
    for run in RUNS:
        m = json.loads((exp / f"{run}_featex" / "fold1" / "metrics.json").read_text())
        assert m["selection"] == "valid" and m["headline"] == "wf1"
        got = (m["selected_epoch"], *(round(m[k], 4) for k in ("ua", "wa", "weighted_f1")))
        assert got == EXPECTED[run], run
        assert len(m["test"]["classes"]) == 7
        assert sum(map(sum, m["test"]["confusion"])) == n_test

    # One table, WF1 (and UA, WA) for the searched architecture and the baselines, each labelled.
    table = (exp / "RESULTS.md").read_text()
    assert "| UA | WA | WF1 |" in table
    for name in ("bas", "ffn (bas_ffn)", "msa_ffn (bas_msa_ffn)", "transformer (bas_transformer)"):
        row = next((line for line in table.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None, (name, table)
        assert row.endswith("| 14.29 | 36.84 | 19.84 |"), row  # UA, WA, WF1 as above, in percent
    assert table in r.stdout
    # The final paths are absolute; the stage lines are kept in the experiment too.
    assert f"All runs of {exp.resolve()}: {exp.resolve()}/RESULTS.md" in r.stderr
    run_log = (exp / "run.log").read_text()
    assert "Stage 5: scoring" in run_log
    assert f"All runs of {exp.resolve()}: {exp.resolve()}/RESULTS.md" in run_log
    # each step ran as a job of the local backend, with its own log
    jobs = sorted(p.name for p in (exp / "log" / "jobs").iterdir())
    assert jobs == [
        "data.log",
        "describe_bas.log",
        "describe_ffn.log",
        "describe_msa_ffn.log",
        "describe_transformer.log",
        "dump_feats_upstream.log",
        "head_bas_fold1.log",
        "head_ffn_fold1.log",
        "head_msa_ffn_fold1.log",
        "head_transformer_fold1.log",
        "score.log",
    ]

    # Same options again: nothing is redone.
    stamp = (exp / "bas_featex" / "fold1" / "metrics.json").stat().st_mtime_ns
    again = _run(recipe, *args, "--stop-stage", "4")
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("skip:") >= 5
    assert (exp / "bas_featex" / "fold1" / "metrics.json").stat().st_mtime_ns == stamp

    # Re-made features make every run trained on them stale.
    feats = next((recipe / "dump").glob("*/all_layers"))
    (feats / ".done").unlink()
    redo = _run(recipe, *args, "--method", "ffn", "--stage", "4", "--stop-stage", "4")
    assert redo.returncode == 0, redo.stderr[-4000:]
    ffn = (exp / "ffn_featex").resolve()
    assert f"inputs changed for {ffn}/fold1 ({feats.resolve()})" in redo.stderr, redo.stderr[-4000:]
    assert list(ffn.glob("fold1.prev-*"))
    assert (ffn / "fold1" / "predictions" / f"test.epoch{EPOCHS:03d}.tsv").is_file()
