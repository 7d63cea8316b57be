"""`serkit train` refusals that need a fold and its features: a config of a method family asked for
something the chosen method cannot do fails with a SerkitError and leaves no output folder behind."""

import pytest

pytest.importorskip("speechbrain")

from serkit.speechbrain.train import main  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402
from tests.fixtures.sb import SHARED_CONF  # noqa: E402


def train(setup, config, out, *args):
    return main(
        [
            str(SHARED_CONF / config),
            *args,
            "--fold-dir",
            str(setup["fold"]),
            "--output-folder",
            str(out),
            "--feats",
            str(setup["feats"]),
        ]
    )


def test_bas_retrain_without_arch_is_refused(sb_tiny, tmp_path):
    """bas.yaml serves the retrain and the baselines, so its arch is null: a retrain needs the search's."""
    out = tmp_path / "bas"
    with pytest.raises(SerkitError, match="bas.yaml: --method bas retrains a searched architecture"):
        train(sb_tiny, "bas.yaml", out, "--method", "bas")
    assert not out.exists()


def test_an_option_the_head_lacks_leaves_no_output_folder(sb_tiny, tmp_path):
    out = tmp_path / "linear"
    with pytest.raises(SerkitError, match=r"kernel_size.*not one of this head's"):
        train(sb_tiny, "shiftser.yaml", out, "--method", "linear", "--kernel_size", "3")
    assert not out.exists()


def test_an_existing_output_folder_is_kept_when_the_head_option_is_refused(sb_tiny, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("kept", encoding="utf-8")
    with pytest.raises(SerkitError, match="not one of this head's"):
        train(sb_tiny, "shiftser.yaml", out, "--method", "linear", "--kernel_size", "3")
    assert (out / "notes.txt").read_text(encoding="utf-8") == "kept"
