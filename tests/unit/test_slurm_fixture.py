"""tests/fixtures/slurm.py: the Slurm tests skip, with the reason, where no cluster answers, and fail
under CI (CI=true), where they must run."""

from __future__ import annotations

import pytest

from tests.fixtures.slurm import require_slurm, slurm_problem


def test_no_cluster_skips_with_the_reason_and_fails_under_ci(monkeypatch, tmp_path):
    # a client configuration whose controller does not answer: what a machine without a cluster sees
    conf = "ClusterName=none\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n"
    (tmp_path / "slurm.conf").write_text(conf)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert slurm_problem().startswith("no slurmctld answers (scontrol ping: ")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Slurm cluster here: .*tools/start_slurm.sh"):
        require_slurm()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the Slurm tests must run"):
        require_slurm()


def test_without_the_clients_the_reason_names_the_missing_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    assert slurm_problem() == "'sbatch' is not installed"
