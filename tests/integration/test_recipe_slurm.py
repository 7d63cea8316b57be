"""A mini recipe with `--backend slurm` on this machine's Slurm cluster (CI starts one with
tools/start_slurm.sh; without one the test is skipped, under CI it fails): every step is a Slurm job,
each feature-dump shard too, both folds train as parallel jobs after the feature dump they depend on,
and the results are the local backend's, to the last digit of every prediction. A re-run resumes only
what did not finish."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.fixtures.slurm import require_slurm

pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")
pytest.importorskip("speechbrain")

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "recipes" / "RAVDESS" / "run.sh"
EPOCHS = 2
# --nshard 2: the feature dump is two shard jobs and a job that joins them
JOBS = [
    "data",
    "dump_feats_upstream_0",
    "dump_feats_upstream_1",
    "dump_feats_upstream",
    "head_shiftcnn_fold1",
    "head_shiftcnn_fold2",
    "describe_shiftcnn",
    "score",
]


def run(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    # cmd.sh's resources, for a one-node CPU cluster: no GPU, one CPU per job, the node's memory
    env = dict(
        os.environ,
        RAVDESS="",
        OMP_NUM_THREADS="1",
        slurm_gpus="0",
        slurm_cpus="1",
        slurm_mem="",
        slurm_time="",
        slurm_partition="",
        slurm_extra="",
        slurm_poll_s="1",
    )
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.pop("SERKIT_LOCK_TOKEN", None)
    return subprocess.run(["bash", str(RUN), *args], env=env, capture_output=True, text=True, timeout=timeout)


def job_ids(stderr: str) -> dict[str, str]:
    return dict((name, i) for name, i in re.findall(r"submitted (\S+) as Slurm job (\d+)", stderr))


def job_times(job_id: str) -> tuple[datetime, datetime]:
    show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    start, end = (re.search(rf"{k}=(\S+)", show).group(1) for k in ("StartTime", "EndTime"))
    return datetime.fromisoformat(start), datetime.fromisoformat(end)


def last_section(log: Path) -> str:
    """The output of the job's last run (a re-run appends to the same log)."""
    return log.read_text().rsplit("==== ", 1)[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    require_slurm()
    base = tmp_path_factory.mktemp("recipe_slurm")
    ckpt = base / "tiny_hubert_random.pt"
    made = subprocess.run(
        [sys.executable, "-m", "serkit", "make-upstream", "tiny-hubert", "--out", str(ckpt), "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    out = {}
    for backend in ("local", "slurm"):
        args = [
            "--upstream",
            str(ckpt),
            "--workdir",
            str(base / backend),
            "--head-epochs",
            str(EPOCHS),
            "--nshard",
            "2",
            "--backend",
            backend,
        ]
        r = run(*args)
        assert r.returncode == 0, r.stderr[-6000:]
        out[backend] = {"work": base / backend, "args": args, "run": r}
    return out


def test_every_step_is_a_slurm_job_and_completes(runs):
    r = runs["slurm"]["run"]
    jobs = runs["slurm"]["work"] / "exp" / "ravdess_actors4" / "log" / "jobs"
    ids = job_ids(r.stderr)
    assert sorted(ids) == sorted(JOBS)
    for name, job_id in ids.items():
        assert f"Slurm job {job_id} ({name}): COMPLETED; log {jobs / name}.log" in r.stderr
        assert f"Slurm job {job_id} ({name}) on " in (jobs / f"{name}.log").read_text()
    # each fold waits for the data and the features, the summary for both folds
    dump, f1, f2 = ids["dump_feats_upstream"], ids["head_shiftcnn_fold1"], ids["head_shiftcnn_fold2"]
    s0, s1 = ids["dump_feats_upstream_0"], ids["dump_feats_upstream_1"]
    assert f"submitted dump_feats_upstream as Slurm job {dump} (after {ids['data']}:{s0}:{s1})" in r.stderr
    assert f"submitted head_shiftcnn_fold1 as Slurm job {f1} (after {ids['data']}:{dump})" in r.stderr
    describe = ids["describe_shiftcnn"]
    assert f"submitted describe_shiftcnn as Slurm job {describe} (after {f1}:{f2})" in r.stderr


def test_a_job_resolves_the_device_on_its_own_node(runs):
    # the submitting host's GPUs say nothing about the nodes': --device auto travels to the job
    ids = job_ids(runs["slurm"]["run"].stderr)
    script = subprocess.run(
        ["scontrol", "write", "batch_script", ids["head_shiftcnn_fold1"], "-"], capture_output=True, text=True
    ).stdout
    assert re.search(r"--device auto --layer \S+ --nclusters \d+ --cpt-update-freq 1 ", script), script


def test_the_folds_run_in_parallel(runs):
    ids = job_ids(runs["slurm"]["run"].stderr)
    (s1, e1), (s2, e2) = job_times(ids["head_shiftcnn_fold1"]), job_times(ids["head_shiftcnn_fold2"])
    assert s1 < e2 and s2 < e1  # the two training jobs overlap in time
    assert max(s1, s2) >= job_times(ids["dump_feats_upstream"])[1]  # after the features they read


def test_results_equal_the_local_backend(runs):
    rel = Path("exp") / "ravdess_actors4"
    local, slurm = (runs[b]["work"] / rel for b in ("local", "slurm"))
    assert (slurm / "RESULTS.md").read_text() == (local / "RESULTS.md").read_text()
    preds = sorted(p.relative_to(local) for p in local.glob("shiftcnn_featex/fold*/predictions/*.tsv"))
    assert len(preds) == 2 * 2 * EPOCHS  # folds x (valid, test) x epochs
    for p in preds:
        assert (slurm / p).read_text() == (local / p).read_text(), p


def test_a_rerun_resumes_only_what_did_not_finish(runs):
    work = runs["slurm"]["work"]
    exp = work / "exp" / "ravdess_actors4"
    fold2 = exp / "shiftcnn_featex" / "fold2"
    (fold2 / ".done").unlink()  # as if fold 2's job had been killed before it finished
    before = (exp / "RESULTS.md").read_text()
    r = run(*runs["slurm"]["args"])
    assert r.returncode == 0, r.stderr[-6000:]
    jobs = exp / "log" / "jobs"
    assert "skip:" in last_section(jobs / "dump_feats_upstream.log")
    assert "skip:" in last_section(jobs / "head_shiftcnn_fold1.log")
    assert "skip:" not in last_section(jobs / "head_shiftcnn_fold2.log")  # trained (resumed) again
    assert (fold2 / ".done").is_file()
    assert (exp / "RESULTS.md").read_text() == before
