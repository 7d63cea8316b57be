"""Two tiny-HuBERT pretrainings with the same seed end with the same weights.

The fairseq command of ``local/make_tiny_upstream.sh`` (the MELD/IEMOCAP/SAVEE mini recipes' stage 1)
run twice for a few updates on a tiny fold: before serkit seeded HuBERT's masks (fairseq 0.12 draws
them from unseeded generators), every tensor of the two checkpoints differed, and so did every feature
dumped from them and every result downstream.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

from tests.fixtures.fairseq_train import (  # noqa: E402
    REPO,
    hydra_train,
    make_fold,  # noqa: E402
)

pytestmark = [pytest.mark.slow, pytest.mark.fairseq]

SCRIPT = REPO / "local" / "make_tiny_upstream.sh"


def script_overrides() -> list[str]:
    """The reproducibility overrides make_tiny_upstream.sh passes to fairseq-hydra-train."""
    import importlib.util

    text = SCRIPT.read_text(encoding="utf-8")
    assert "user_dir=$(serkit_user_dir)" in text and 'common.user_dir="$(hydra_value "$user_dir")"' in text, (
        f"{SCRIPT}: fairseq-hydra-train runs without serkit's user dir (unseeded masks)"
    )
    assert "dataset.data_buffer_size=0" in text, f"{SCRIPT}: fairseq's prefetch thread is back"
    user_dir = Path(importlib.util.find_spec("serkit_fairseq").origin).parent  # what serkit_user_dir prints
    return [f"common.user_dir={user_dir}", "dataset.data_buffer_size=0"]


def test_tiny_hubert_pretraining_is_reproducible(tmp_path: Path):
    data = make_fold(tmp_path, n_clusters=25)
    states = []
    for run in ("a", "b"):
        out = tmp_path / run
        hydra_train(
            "hubert_tiny_iter1",
            out,
            *script_overrides(),
            f"task.data={data['fold']}",
            f"task.label_dir={data['km']}",
            "optimization.max_update=6",
            "dataset.validate_interval_updates=3",
        )
        states.append(torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"])
    a, b = states
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)}/{len(a)} tensors differ between two runs, e.g. {differ[:3]}"
