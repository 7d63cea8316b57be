"""Fixtures shared by tests/unit and tests/integration, and the rule that the folder is the speed.

Helpers that are not fixtures (builders of tiny corpora, folds and checkpoints, the recipe runner) live
in tests/fixtures/, which pytest does not collect; import them as ``tests.fixtures.<module>``.

tests/unit is the edit-test loop (seconds each, about a minute in all); what trains, runs a recipe or
starts other interpreters for seconds to minutes goes to tests/integration. Every test there is marked
``slow`` here, and a test in tests/unit marked ``slow`` stops the collection, so ``pytest tests/unit``
and ``pytest -m "not slow"`` select the same tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
INTEGRATION = TESTS / "integration"
UNIT = TESTS / "unit"


def pytest_collection_modifyitems(config, items):
    misplaced = []
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.slow)
        elif path.is_relative_to(UNIT) and item.get_closest_marker("slow") is not None:
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            "tests/unit is for fast tests; these are marked slow, move them to "
            "tests/integration: " + ", ".join(misplaced)
        )


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
