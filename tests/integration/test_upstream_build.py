"""Building upstreams: a full-size HuBERT base from `serkit make-upstream`, and local/make_tiny_upstream.sh
(tiny HuBERT pretraining) finishing a run that was killed before it recorded its output."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.recipes import run_tiny_upstream

torch = pytest.importorskip("torch")
pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

from serkit.upstream import load_upstream  # noqa: E402


def test_make_upstream_base_cli(tmp_path):
    from serkit.cli import main

    out = tmp_path / "base.pt"
    assert main(["make-upstream", "hubert", "--arch", "base", "--out", str(out)]) == 0
    up = load_upstream(out)
    assert (up.num_layers, up.dim) == (12, 768)
    hidden, _ = up(torch.randn(1, 16000), layers=[12])
    assert hidden[0].shape == (1, 49, 768)
    assert np.isfinite(hidden[0].numpy()).all()


def test_make_tiny_upstream_replaces_its_own_interrupted_iter1(tmp_path):
    out = tmp_path / "out"
    r = run_tiny_upstream(tmp_path, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "iter1" / "checkpoint_last.pt").is_file() and (out / ".done").is_file()
    (out / ".done").unlink()  # killed after pretraining, before mark_done
    r = run_tiny_upstream(tmp_path, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "is not this script's pretraining output" not in r.stderr
    assert (out / ".done").is_file() and (out / "tiny_hubert.pt").is_file()
    assert "num_updates 1" in (out / "iter1.log").read_text()
