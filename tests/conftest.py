"""Fixtures shared by tests/unit and tests/integration.

Helpers that are not fixtures (builders of tiny corpora, folds and checkpoints) live in tests/fixtures/,
which pytest does not collect; import them as ``tests.fixtures.<module>``.
"""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_hubert(tmp_path_factory) -> Path:
    """A randomly initialised tiny fairseq HuBERT (`serkit make-upstream tiny-hubert`, seed 0).

    Shared by the whole session: tests read it (as an upstream, a CPT start) and never change it.
    """
    from serkit.cli import main as serkit

    ckpt = tmp_path_factory.mktemp("tiny_hubert") / "hubert_tiny.pt"
    assert serkit(["make-upstream", "tiny-hubert", "--out", str(ckpt)]) == 0
    return ckpt


@pytest.fixture(scope="session")
def sb_tiny(tmp_path_factory, tiny_hubert) -> dict:
    """{"root", "fold", "ckpt", "feats"}: a toy fold, the tiny HuBERT and its features (tests.fixtures.sb).

    Built once per session and shared: tests read it and write only below root/exp/<their own name>.
    """
    from tests.fixtures.sb import build_tiny_setup

    return build_tiny_setup(tmp_path_factory.mktemp("sb_tiny"), tiny_hubert)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread avoids oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
