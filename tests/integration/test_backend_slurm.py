"""local/backend_slurm.sh against the real Slurm cluster of this machine (CI starts one with
tools/start_slurm.sh): a chain of jobs runs in dependency order, a failed job fails the wait naming
the job, its log and the log's last lines, a job depending on a failed one is cancelled instead of
waiting forever, and the resources of recipes' cmd.sh reach the jobs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.slurm import require_slurm

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _slurm():
    require_slurm()


def backend(script: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    local = REPO / "local"
    prelude = f"set -euo pipefail; . {local / 'stage.sh'}; . {local / 'backend_slurm.sh'}; slurm_poll_s=0.5; "
    return subprocess.run(
        ["bash", "-c", prelude + script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_chain_runs_in_dependency_order_and_logs_each_job(tmp_path):
    # a takes 2 s; b and c, submitted right after, may only start once the job before them succeeded
    logs = tmp_path / "log dir %j"  # a space and a literal % in the path
    r = backend(
        f"""
        a=$(slurm_submit t_chain_a "{logs}/a.log" "" -- bash -c 'sleep 2; echo a >> order')
        b=$(slurm_submit t_chain_b "{logs}/b.log" "$a" -- bash -c 'echo b >> order')
        c=$(slurm_submit t_chain_c "{logs}/c.log" "$a $b" -- bash -c 'echo c >> order; echo c-output-line')
        echo "ids $a $b $c"
        slurm_wait "$a" "$b" "$c"
        """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "order").read_text().split() == ["a", "b", "c"]
    ids = re.search(r"ids (\d+) (\d+) (\d+)", r.stdout).groups()
    for job_id, name in zip(ids, ("a", "b", "c")):
        assert f"Slurm job {job_id} (t_chain_{name}): COMPLETED; log {logs}/{name}.log" in r.stderr
    assert f"submitted t_chain_c as Slurm job {ids[2]} (after {ids[0]}:{ids[1]})" in r.stderr
    assert "c-output-line" in (logs / "c.log").read_text()


def test_failed_job_fails_the_wait_with_its_name_log_and_last_lines(tmp_path):
    r = backend(
        f"""
        ok=$(slurm_submit t_fold1_train "{tmp_path}/ok.log" "" -- bash -c 'echo fine')
        bad=$(slurm_submit t_fold2_train "{tmp_path}/bad.log" "" -- \
              bash -c 'echo first; echo "boom: no such file" >&2; exit 3')
        slurm_wait "$ok" "$bad"
        echo "not reached"
        """,
        tmp_path,
    )
    assert r.returncode != 0
    assert "not reached" not in r.stdout
    err = r.stderr
    assert re.search(r"Slurm job \d+ \(t_fold2_train\): FAILED \(exit code 3:0", err), err
    assert "boom: no such file" in err.split("(t_fold2_train): FAILED")[1]  # the log's tail, shown
    last = err.strip().splitlines()[-1]
    assert "ERROR: Slurm job(s) failed: t_fold2_train" in last and f"log {tmp_path}/bad.log" in last
    assert "t_fold1_train" not in last  # the job that succeeded is not blamed
    assert re.search(r"\(t_fold1_train\): COMPLETED", err)


def test_dependent_of_a_failed_job_is_cancelled_not_waited_for(tmp_path):
    t0 = time.monotonic()
    r = backend(
        f"""
        bad=$(slurm_submit t_dep_stage1 "{tmp_path}/s1.log" "" -- bash -c 'exit 1')
        next=$(slurm_submit t_dep_stage2 "{tmp_path}/s2.log" "$bad" -- bash -c 'touch ran')
        slurm_wait "$bad" "$next"
        """,
        tmp_path,
        timeout=60,
    )
    assert r.returncode != 0
    assert time.monotonic() - t0 < 45
    assert not (tmp_path / "ran").exists()
    assert re.search(r"\(t_dep_stage2\): CANCELLED, a job it depends on failed", r.stderr), r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "failed: t_dep_stage1" in last
    assert "not run, since a job they depend on failed: t_dep_stage2" in last


def test_resources_and_rules_reach_the_job(tmp_path):
    # cmd.sh's settings: every job 1 CPU, a rule gives the matching job 2; slurm_nproc exports the
    # process count that `serkit train` runs itself under torchrun with
    report = 'echo "$SLURM_CPUS_PER_TASK ${SERKIT_NPROC_PER_NODE:-unset}"'
    r = backend(
        f"""
        slurm_cpus=1; slurm_time=0:10:00; slurm_extra="--nice=10"
        slurm_rules=("*_wide_* --cpus-per-task=2")
        one=$(slurm_submit t_res_narrow "{tmp_path}/n.log" "" -- bash -c '{report} > narrow')
        slurm_nproc=2
        two=$(slurm_submit t_res_wide_x "{tmp_path}/w.log" "" -- bash -c '{report} > wide')
        scontrol show job "$two" | grep -o 'TimeLimit=[^ ]*'
        scontrol show job "$two" | grep -o 'Nice=[^ ]*'
        # without slurm_nproc: one process per GPU the job was given (Slurm sets CUDA_VISIBLE_DEVICES)
        unset slurm_nproc
        three=$(CUDA_VISIBLE_DEVICES=0,1 slurm_submit t_res_gpus "{tmp_path}/g.log" "" -- \
                bash -c '{report} > gpus')
        slurm_wait "$one" "$two" "$three"
        """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "narrow").read_text().split() == ["1", "unset"]
    assert (tmp_path / "wide").read_text().split() == ["2", "2"]
    assert (tmp_path / "gpus").read_text().split() == ["1", "2"]
    assert "GPUs: 0,1" in (tmp_path / "g.log").read_text()
    assert "TimeLimit=00:10:00" in r.stdout and "Nice=10" in r.stdout


def test_bad_calls_die_before_submitting(tmp_path):
    r = backend(f'slurm_submit t_x "{tmp_path}/x.log" "local:t_y" -- true', tmp_path)
    assert r.returncode != 0 and "dependency 'local:t_y' is not a Slurm job id" in r.stderr
    r = backend(f'slurm_submit "t x" "{tmp_path}/x.log" "" -- true', tmp_path)
    assert r.returncode != 0 and "a job name of letters, digits and _.+- only" in r.stderr
    r = backend(f'slurm_submit t_x "{tmp_path}/x.log" "" true', tmp_path)
    assert r.returncode != 0 and "expected 'NAME LOG DEPS -- CMD ...'" in r.stderr


FAIRSEQ_WORLD = """
from fairseq.dataclass.configs import DistributedTrainingConfig
from fairseq.distributed.utils import infer_init_method
from omegaconf import OmegaConf
cfg = OmegaConf.structured(DistributedTrainingConfig(distributed_world_size=2, tpu=False))
infer_init_method(cfg)  # what fairseq-hydra-train does first with more than one GPU
print("init", cfg.distributed_init_method)
"""


def test_fairseq_finds_its_distributed_setup_inside_a_job(tmp_path):
    # fairseq reads the job's Slurm variables (one task per job, its GPUs on one node); without
    # SLURM_NTASKS it fails with a TypeError before training
    pytest.importorskip("fairseq")
    (tmp_path / "world.py").write_text(FAIRSEQ_WORLD)
    r = backend(
        f"""
        id=$(slurm_submit t_fairseq_world "{tmp_path}/w.log" "" -- python world.py)
        slurm_wait "$id"
        """,
        tmp_path,
    )
    log = (tmp_path / "w.log").read_text()
    assert r.returncode == 0, log[-3000:]
    assert re.search(r"^init tcp://localhost:\d+$", log, re.M), log[-3000:]


def test_interrupted_wait_cancels_the_jobs_it_waits_for(tmp_path):
    local = REPO / "local"
    script = (
        f"set -euo pipefail; . {local / 'stage.sh'}; . {local / 'backend_slurm.sh'}; slurm_poll_s=0.5; "
        f'id=$(slurm_submit t_interrupted "{tmp_path}/i.log" "" -- sleep 300); echo "$id" > id; '
        'slurm_wait "$id"'
    )
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    log = tmp_path / "i.log"
    while not (log.exists() and "t_interrupted" in log.read_text()):  # the job runs
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.5)
    job_id = (tmp_path / "id").read_text().strip()
    proc.terminate()  # what a Ctrl-C or a killed login session does to the waiting recipe
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"interrupted: cancelling Slurm jobs {job_id}" in err
    for _ in range(60):
        show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        if "JobState=CANCELLED" in show:
            break
        time.sleep(0.5)
    assert "JobState=CANCELLED" in show, show


def test_serkit_train_in_a_two_process_job_runs_ddp_with_the_single_process_batch(sb_tiny, tmp_path):
    # slurm_nproc (a job's GPUs, on a GPU cluster) -> SERKIT_NPROC_PER_NODE -> serkit train under torchrun
    pytest.importorskip("speechbrain")
    from test_sb_ddp import _train_cmd

    setup = sb_tiny
    cmd = _train_cmd(
        [str(Path(sys.executable).parent / "serkit"), "train"],
        setup["fold"],
        setup["feats"],
        tmp_path / "out",
    )
    cmd.remove("-m"), cmd.remove("serkit.speechbrain.train")
    r = backend(
        f"""
        slurm_nproc=2
        id=$(slurm_submit t_ddp_fold1 "{tmp_path}/ddp.log" "" -- {shlex.join(cmd)})
        slurm_wait "$id"
        """,
        tmp_path,
        timeout=600,
    )
    log = (tmp_path / "ddp.log").read_text()
    assert r.returncode == 0, log[-3000:]
    assert "SERKIT_NPROC_PER_NODE=2: " in log and "--nproc_per_node 2 -m serkit.speechbrain.train" in log
    info = json.loads((tmp_path / "out" / "train_info.json").read_text())
    assert (info["world_size"], info["batch_size_per_process"], info["effective_batch_size"]) == (2, 2, 4)
