"""Stage 3 (continued pretraining) from a FULL-SIZE stand-in of hubert_base_ls960.pt, two updates on CPU.

The stand-in has HuBERT-base's real dimensions (7 convs of 512 channels, 12 layers of 768 dims, 504
labels) and the release's structure (cfg dict, task_state, the authors' task.data), so the recipe's
``plugins/serkit/conf/fairseq/cpt_hubert_base.yaml`` runs against it exactly as ``local/cpt.sh`` runs it (same
overrides), plus the CPU settings of the other fairseq integration tests and a small batch.
"""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fairseq", reason="fairseq not installed (pip install 'serkit[fairseq]')")

from tests.fixtures.fairseq_train import (  # noqa: E402
    USER_DIR,
    hydra_train,
    make_fold,  # noqa: E402
)

pytestmark = [pytest.mark.slow, pytest.mark.fairseq]


def test_cpt_hubert_base_from_a_full_size_release_stand_in(tmp_path):
    from serkit.upstream import load_upstream
    from serkit.upstream.standins import make_standin

    data = make_fold(tmp_path, n_train=4, n_eval=2)
    init = make_standin("hubert_base_ls960.pt", tmp_path / "models", size="release")
    src = torch.load(init.path, weights_only=False)
    assert src["model"]["encoder.layers.11.fc1.weight"].shape == (3072, 768)
    assert src["model"]["label_embs_concat"].shape == (504, 256)
    out = tmp_path / "cpt"
    log = hydra_train(
        "cpt_hubert_base",
        out,
        f"common.user_dir={USER_DIR}",
        f"task.data={data['fold']}",
        f"task.label_dir={data['km']}",
        f"model.init_from={init.path}",
        "optimization.max_update=2",
        "dataset.max_tokens=48000",
        "lr_scheduler.warmup_updates=1",
        timeout=1500,
    )
    assert re.search(r"serkit_hubert: loaded \d+ tensors from .*hubert_base_ls960\.pt", log)
    state = torch.load(out / "checkpoint_last.pt", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 2 and state["cfg"]["model"]["init_done"] is True
    model = state["model"]
    cnn = [k for k in src["model"] if k.startswith("feature_extractor.")]
    assert cnn and all(torch.equal(model[k], src["model"][k]) for k in cnn)  # loaded, frozen
    moved = [
        k
        for k in src["model"]
        if k.startswith("encoder.layers.") and not torch.equal(model[k], src["model"][k])
    ]
    assert moved  # the transformer trained from the release's weights
    assert model["label_embs_concat"].shape == (54, 256)  # the run's 50 clusters + 4 specials
    up = load_upstream(out / "checkpoint_last.pt")
    assert (up.kind, up.num_layers, up.dim) == ("hubert", 12, 768)
