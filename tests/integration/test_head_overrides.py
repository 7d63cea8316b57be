"""--head-overrides on a real corpus (--root; not the mini branch, which has its own default): each key
goes to the heads whose configs have it. `--channel_mask_width` (SpecAugment, ShiftSER's config only)
reaches shiftcnn and not bas_ffn, whose BAS config has no SpecAugment and used to fail with "no key
channel_mask_width"; a key that none of the chosen heads' configs has fails at once, naming the option.
The corpus is a mini RAVDESS passed with --root, the upstream a random-init tiny HuBERT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.recipes import run_recipe

pytest.importorskip("speechbrain")

pytestmark = [pytest.mark.slow]


def run(*args: str) -> subprocess.CompletedProcess:
    return run_recipe("RAVDESS", *args, RAVDESS="")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_hubert):
    base = tmp_path_factory.mktemp("head_overrides")
    made = subprocess.run(
        [sys.executable, "-m", "serkit", "mini-corpus", "ravdess", "--out", str(base / "db"), "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    args = [
        "--root",
        str(base / "db" / "RAVDESS"),
        "--upstream",
        str(tiny_hubert),
        "--folds",
        "1",
        "--valid-fraction",
        "0.25",
        "--head-epochs",
        "1",
        "--device",
        "cpu",
    ]
    return {"base": base, "args": args}


def _overrides(run_dir: Path) -> str:
    """The overrides a head trained with, as its .done record has them."""
    options = (run_dir / "fold1" / ".done").read_text().splitlines()[0]
    return options.split(" overrides=", 1)[1]


def test_a_specaugment_override_reaches_the_shiftser_head_and_not_bas(corpus):
    work = corpus["base"] / "mixed"
    r = run(
        *corpus["args"],
        "--workdir",
        str(work),
        "--method",
        "shiftcnn,bas_ffn",
        "--head-overrides",
        "--channel_mask_width 5 --batch_size 16",
    )
    assert r.returncode == 0, r.stderr[-6000:]
    exp = work / "exp" / "ravdess_actors4"
    assert _overrides(exp / "shiftcnn_featex") == "--channel_mask_width 5 --batch_size 16"
    assert _overrides(exp / "bas_ffn_featex") == "--batch_size 16"
    assert "channel_mask_width" not in (exp / "bas_ffn_featex" / "fold1" / "log" / "train.log").read_text()


def test_a_key_no_chosen_head_has_fails_at_once_naming_the_option(corpus):
    work = corpus["base"] / "bas_only"
    r = run(
        *corpus["args"],
        "--workdir",
        str(work),
        "--method",
        "bas_ffn",
        "--head-overrides",
        "--channel_mask_width 5",
    )
    assert r.returncode != 0
    assert (
        '--head-overrides "--channel_mask_width 5": --channel_mask_width is a key of none of the configs '
        "it goes to (bas.yaml; runs: bas_ffn)"
    ) in r.stderr
    assert not (work / "data").exists()  # refused before stage 0 wrote anything
