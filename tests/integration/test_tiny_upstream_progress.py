"""local/make_tiny_upstream.sh shows the tiny HuBERT's pretraining as it goes (it used to be minutes
without a line): one stage line per fairseq log_interval and after the validation, also in the
experiment's stage log; fairseq's whole output still in iter1.log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

pytestmark = [pytest.mark.slow, pytest.mark.fairseq]

REPO = Path(__file__).resolve().parents[2]


def test_pretraining_progress_lines(tmp_path):
    run_log = tmp_path / "exp" / "run.log"
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        OMP_NUM_THREADS="1",
        SERKIT_RUN_LOG=str(run_log),
    )
    run_log.parent.mkdir()
    args = ["--workdir", "w", "--out", "w/up", "--updates", "25"]
    r = subprocess.run(
        ["bash", str(REPO / "local" / "make_tiny_upstream.sh"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    progress = re.findall(r"\(make_tiny_upstream\.sh\)   pretraining: (.*)", r.stderr)
    assert len(progress) == 2, r.stderr[-3000:]
    assert re.fullmatch(r"update 25/25, loss [0-9.]+", progress[0])
    assert re.fullmatch(r"validation loss [0-9.]+, masked-frame accuracy [0-9.]+", progress[1])
    assert re.findall(r"pretraining: (.*)", run_log.read_text()) == progress  # the stage log has them too
    assert "num_updates=25" in (tmp_path / "w" / "up" / "iter1.log").read_text()
    assert (tmp_path / "w" / "up" / "tiny_hubert.pt").is_file()
