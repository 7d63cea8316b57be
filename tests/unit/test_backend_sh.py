"""local/backend.sh: the one call the recipe template runs its jobs through (local backend here; the
slurm backend is local/backend_slurm.sh's), and the workdir lock a job of the holder shares."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "local"


def bash(script: str, cwd: Path, local: Path = LOCAL, **extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra)
    env.pop("SERKIT_LOCK_TOKEN", None)
    env.update(extra)
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; . {local}/stage.sh; . {local}/backend.sh; {script}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_local_job_runs_now_with_its_output_on_the_console_and_in_its_log(tmp_path):
    r = bash(
        'id=$(backend_submit step1 logs/step1.log "" -- bash -c "echo out; echo err >&2; touch ran"); '
        'echo "id=$id"; [ -f ran ]; backend_wait "$id"; echo after',
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    # the job's stdout reaches the console, not the id the caller captures
    assert r.stdout.splitlines() == ["out", "id=local:step1", "after"]
    assert r.stderr.splitlines() == ["err"]
    assert sorted((tmp_path / "logs" / "step1.log").read_text().splitlines()) == ["err", "out"]


def test_local_job_that_fails_stops_the_recipe_naming_the_job_its_log_and_its_end(tmp_path):
    r = bash(
        'id=$(backend_submit teacher_fold3 logs/t.log "local:data" -- '
        'bash -c "for i in \\$(seq 1 30); do echo line\\$i; done; exit 3"); echo "not reached"',
        tmp_path,
    )
    assert r.returncode != 0
    assert "not reached" not in r.stdout
    assert (
        f"job teacher_fold3 failed (exit 3), log {tmp_path}/logs/t.log" in r.stderr
        or "job teacher_fold3 failed (exit 3), log logs/t.log" in r.stderr
    )
    tail = r.stderr.split("last 20 lines:")[1]
    assert "line11\n" in tail and "line30\n" in tail and "line10\n" not in tail


def test_submit_without_the_separator_is_refused(tmp_path):
    r = bash('backend_submit x x.log "" echo hi', tmp_path)
    assert r.returncode != 0 and "expected 'NAME LOG DEPS -- CMD ...'" in r.stderr


def test_slurm_backend_needs_its_file_and_then_gets_every_call(tmp_path):
    r = bash(f"backend=slurm; backend_init {tmp_path}", tmp_path)
    assert r.returncode != 0 and "--backend slurm needs local/backend_slurm.sh" in r.stderr
    # local/backend_slurm.sh is another file's business: here one that records what it is given
    (tmp_path / "backend_slurm.sh").write_text(
        'slurm_submit() { printf "%s|" "$@" >> calls; echo >> calls; echo 42; }\n'
        'slurm_wait() { echo "wait $*" >> calls; }\n'
    )
    r = bash(
        f'backend=slurm; backend_init {tmp_path}; id=$(backend_submit n l.log "1 2" -- echo "a b"); '
        'backend_wait "$id" 7',
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "calls").read_text().splitlines() == ["n|l.log|1 2|--|echo|a b|", "wait 42 7"]


def test_a_job_of_the_lock_holder_shares_the_workdir_lock_and_no_one_else_does(tmp_path):
    # the holder locks, then starts a job (which inherits SERKIT_LOCK_TOKEN) and another run (without it)
    script = (
        f"lock_workdir work; "
        f'backend_submit job j.log "" -- bash -c ". {LOCAL}/stage.sh; lock_workdir work; echo job-locked"; '
        f'env -u SERKIT_LOCK_TOKEN bash -c ". {LOCAL}/stage.sh; lock_workdir work" || echo other-refused'
    )
    r = bash(script, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "job-locked" in r.stdout and "other-refused" in r.stdout
    assert "is in use by another run (pid " in r.stderr
    assert "token" not in r.stderr  # the holder's description, not its token
