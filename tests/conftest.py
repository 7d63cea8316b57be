"""Fixtures shared by tests/unit and tests/integration.

Helpers that are not fixtures (builders of tiny corpora, folds and checkpoints) live in tests/fixtures/,
which pytest does not collect; import them as ``tests.fixtures.<module>``.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sb_tiny(tmp_path_factory) -> dict:
    """{"root", "fold", "ckpt", "feats"}: a toy fold, a tiny HuBERT and its features (tests.fixtures.sb).

    Built once per session and shared: tests read it and write only below root/exp/<their own name>.
    """
    from tests.fixtures.sb import build_tiny_setup

    return build_tiny_setup(tmp_path_factory.mktemp("sb_tiny"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread avoids oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
