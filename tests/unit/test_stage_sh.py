"""local/stage.sh, the recipes' shared stage helpers, driven from bash: `.done` identities (options and
inputs), the workdir lock, option checks, fold lists read from the split, and values handed to Python
and Hydra without becoming code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "local" / "stage.sh"


def bash(script: str, cwd: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; . {STAGE}; {script}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# A stage: runs "work" unless done, where work appends a line to DIR/ran (so a re-run is counted).
STAGE_FN = (
    "run_stage() { local dir=$1; shift; "
    'is_done "$dir" "$@" || { echo x >> "$dir/ran"; mark_done "$dir"; }; }; '
)


def runs(d: Path) -> int:
    return len((d / "ran").read_text().splitlines())


def test_same_options_and_inputs_skip(tmp_path):
    (tmp_path / "conf.yaml").write_text("lr: 1\n")
    for _ in range(2):
        r = bash(STAGE_FN + "run_stage up 'k=1' conf.yaml; run_stage down 'x=2' up", tmp_path)
        assert r.returncode == 0, r.stderr
    assert runs(tmp_path / "up") == 1 and runs(tmp_path / "down") == 1
    assert r.stderr.count("skip:") == 2


def test_changed_input_content_reruns_the_stage_and_everything_downstream(tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("lr: 1\n")
    chain = STAGE_FN + "run_stage up 'k=1' conf.yaml; run_stage mid 'x=2' up; run_stage down 'y=3' mid/file"
    assert bash(chain, tmp_path).returncode == 0
    conf.write_text("lr: 2\n")  # same options, another input content
    r = bash(chain, tmp_path)
    assert r.returncode == 0, r.stderr
    for d in ("up", "mid", "down"):
        assert runs(tmp_path / d) == 1  # the new output, made once
        assert len(list(tmp_path.glob(f"{d}.prev-*"))) == 1  # the stale one moved aside, not reused
    assert f"inputs changed for up ({conf})" in r.stderr
    assert f"inputs changed for mid ({tmp_path / 'up'})" in r.stderr
    # an input inside a stage's output is identified by that stage's record
    assert f"inputs changed for down ({tmp_path / 'mid' / 'file'})" in r.stderr


def test_rerunning_an_upstream_stage_with_the_same_options_invalidates_downstream(tmp_path):
    chain = STAGE_FN + "run_stage up 'k=1'; run_stage down 'y=3' up"
    assert bash(chain, tmp_path).returncode == 0
    (tmp_path / "up" / ".done").unlink()  # "remove .done to redo": up is remade, so down is stale
    r = bash(chain, tmp_path)
    assert r.returncode == 0, r.stderr
    assert runs(tmp_path / "up") == 2  # resumed in place: same options
    assert runs(tmp_path / "down") == 1 and list(tmp_path.glob("down.prev-*"))


def test_a_foreign_done_file_above_an_input_does_not_hide_its_changes(tmp_path):
    # Kaldi recipes leave empty .done files in their directories; a corpus below one is still hashed
    corpus = tmp_path / "kaldi" / "corpus"
    corpus.mkdir(parents=True)
    (tmp_path / "kaldi" / ".done").write_text("")
    (corpus / "a.txt").write_text("1\n")
    assert bash(STAGE_FN + "run_stage prep 'k=1' kaldi/corpus", tmp_path).returncode == 0
    (corpus / "a.txt").write_text("2\n")
    r = bash(STAGE_FN + "run_stage prep 'k=1' kaldi/corpus", tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"inputs changed for prep ({corpus})" in r.stderr
    assert len(list(tmp_path.glob("prep.prev-*"))) == 1


def test_changed_options_say_so_and_move_the_old_output_aside(tmp_path):
    assert bash(STAGE_FN + "run_stage up 'k=1'", tmp_path).returncode == 0
    r = bash(STAGE_FN + "run_stage up 'k=2'", tmp_path)
    assert "options changed for up (k=1 -> k=2)" in r.stderr
    assert len(list(tmp_path.glob("up.prev-*"))) == 1


def test_a_crashed_stage_resumes_with_the_same_identity_and_is_never_done(tmp_path):
    (tmp_path / "in").write_text("a")
    r = bash("is_done out 'k=1' in || { echo partial > out/part; exit 3; }", tmp_path)
    assert r.returncode == 3
    r = bash("is_done out 'k=1' in && echo SKIPPED; cat out/part", tmp_path)
    assert "SKIPPED" not in r.stdout and r.stdout.strip() == "partial"  # resumed, not moved aside
    (tmp_path / "in").write_text("b")
    r = bash("is_done out 'k=1' in || ls out", tmp_path)
    assert r.stdout.split() == [] and list(tmp_path.glob("out.prev-*"))  # another input: fresh start


def test_record_names_options_inputs_and_when_it_finished(tmp_path):
    (tmp_path / "small.txt").write_text("abc")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "f").write_text("1")
    r = bash("is_done out 'k=1' small.txt dir missing || mark_done out", tmp_path)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "out" / ".done").read_text().splitlines()
    assert lines[0] == "options: k=1"
    assert lines[1] == f"input: {tmp_path / 'small.txt'} md5:900150983cd24fb0"  # md5("abc")
    assert re.fullmatch(rf"input: {re.escape(str(tmp_path / 'dir'))} listing:[0-9a-f]{{16}}", lines[2])
    assert lines[3] == f"input: {tmp_path / 'missing'} missing"
    assert lines[4].startswith("finished: ")


def test_big_files_are_identified_by_size_and_mtime(tmp_path):
    big = tmp_path / "big.pt"
    big.write_bytes(b"0" * 100)
    r = bash("SERKIT_HASH_MAX_BYTES=10; input_identity big.pt", tmp_path)
    assert r.stdout.startswith("size:100,mtime:"), r.stdout


def test_lock_refuses_a_second_run_naming_the_holder(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    holder = subprocess.Popen(
        ["bash", "-c", f". {STAGE}; lock_workdir work; echo locked; sleep 60"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        r = bash("lock_workdir work; echo GOT", tmp_path)
        assert r.returncode != 0 and "GOT" not in r.stdout
        assert time.monotonic() - t0 < 10  # at once, not waiting
        assert f"work is in use by another run (pid {holder.pid} on " in r.stderr, r.stderr
        assert "bash -c" in r.stderr and "sleep" in r.stderr  # the holder's command line
    finally:
        holder.kill()
        holder.wait()
    r = bash("lock_workdir work; echo GOT", tmp_path)  # released when the holder exits
    assert r.returncode == 0 and "GOT" in r.stdout


@pytest.mark.parametrize(
    "call, message",
    [
        ("check_stages abc 5 5", "--stage abc: expected a whole number"),
        ("check_stages -1 5 5", "--stage -1: expected a whole number"),
        ("check_stages 0 x 5", "--stop-stage x: expected a whole number"),
        ("check_stages 7 9 5", "--stage 7: this recipe's stages are 0..5"),
        ("check_stages 3 2 5", "--stage 3 comes after --stop-stage 2: nothing to run"),
        ("check_int --layer 9x", "--layer 9x: expected a whole number"),
        ("check_int --nclusters 1 2", "--nclusters 1: expected a whole number >= 2"),
        ("check_int_list --sec-layers 4,,8", "--sec-layers 4,,8: expected a comma list"),
        ("check_number --finetune-lr 1e-", "--finetune-lr 1e-: expected a number"),
        ("check_choice --valid spk stratified speaker", "--valid spk: choose one of: stratified speaker"),
        (
            "check_choice_list --method flea,nope flea linear",
            "--method nope: unknown (choose from: flea linear)",
        ),
        ("check_folds_spec 0,2", "--folds 0,2: 'all' or a comma list of fold numbers"),
        ("check_device gpu", "--device gpu: choose auto, cpu, cuda or cuda:N"),
    ],
)
def test_option_checks_name_the_option(tmp_path, call, message):
    r = bash(call, tmp_path)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_option_checks_accept_good_values(tmp_path):
    r = bash(
        "check_stages 0 5 5; check_stages 3 3 5; check_int --layer 09; check_number --lr 1e-4; "
        "check_number --lr 0.25; check_int_list --l 0,1,2; check_folds_spec all; check_folds_spec 1,10; "
        "check_device cuda:1; check_choice_list --method flea,linear flea linear; echo OK",
        tmp_path,
    )
    assert r.stdout.strip() == "OK", r.stderr


def test_split_folds_follows_the_folds_the_split_wrote(tmp_path):
    split = tmp_path / "it's a split"
    split.mkdir()
    (split / "split.json").write_text(json.dumps({"folds": [f"fold{k}" for k in range(1, 11)]}))
    r = bash(f'split_folds "{split}" all', tmp_path)
    assert r.stdout.split() == [str(k) for k in range(1, 11)], r.stderr
    r = bash(f'split_folds "{split}" 2,10', tmp_path)
    assert r.stdout.split() == ["2", "10"]
    r = bash(f'split_folds "{split}" 11', tmp_path)
    assert r.returncode == 1 and "no fold 11" in r.stderr


def test_json_value_and_run_json_take_paths_as_arguments(tmp_path):
    evil = tmp_path / "a'+str(__import__('os').system('touch PWNED'))+'"
    evil.mkdir()
    r = bash(
        f'write_run_json "{evil}/run.json" corpus=X "method=it\'s"; json_value "{evil}/run.json" method',
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "it's" and not (tmp_path / "PWNED").exists()
    assert json.loads((evil / "run.json").read_text()) == {"corpus": "X", "method": "it's"}
    assert [p.name for p in evil.iterdir()] == ["run.json"]  # no temporary file left behind


@pytest.mark.parametrize("value", ["/w/wörk (a,b=c) it's/x.pt", "a\\", "a\\'b", 'q"x', " lead", "$HOME/x"])
def test_hydra_value_parses_back_to_the_path(tmp_path, value):
    pytest.importorskip("hydra")
    from hydra.core.override_parser.overrides_parser import OverridesParser

    r = bash(f"hydra_value {shlex_quote(value)}", tmp_path)
    assert r.returncode == 0, r.stderr
    override = OverridesParser.create().parse_overrides([f"task.data={r.stdout.rstrip(chr(10))}"])[0]
    assert override.value() == value


def test_hydra_value_refuses_interpolation_syntax(tmp_path):
    r = bash("hydra_value '/a/${b}'", tmp_path)
    assert r.returncode == 1 and "cannot be passed to fairseq" in r.stderr


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def test_no_python_source_is_built_from_shell_variables():
    """Every `python -c` in the recipes' shell is a fixed string: values travel as arguments."""
    files = [*REPO.glob("local/*.sh"), *REPO.glob("recipes/*/run.sh"), *REPO.glob("recipes/*/local/*.sh")]
    assert len(files) >= 8
    bad = []
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            for m in re.finditer(r"python3?\s+-c\s+", line):
                rest = line[m.end() :]
                end = rest.find("'", 1) if rest.startswith("'") else -1
                after = rest[end + 1 : end + 2] if end > 0 else "?"
                # a double-quoted source, or a single-quoted one that closes to splice something in
                if end < 0 or (after and not after.isspace() and after not in ")|;&"):
                    bad.append(f"{f.relative_to(REPO)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_a_tool_that_replaces_the_output_directory_keeps_the_identity(tmp_path):
    """prepare/split swap their --out for a new directory: the record still names the inputs."""
    (tmp_path / "in").write_text("a")
    script = "is_done out 'k=1' in || { rm -rf out; mkdir out; echo x >> ran; mark_done out; }"
    for _ in range(2):
        r = bash(script, tmp_path)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "ran").read_text() == "x\n" and "skip:" in r.stderr
