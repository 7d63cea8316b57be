"""``serkit train --tensorboard DIR``: SpeechBrain's TensorboardLogger beside the file logger, read back with
TensorBoard's own EventAccumulator (tags, the epoch as the step, the values of train_log.txt)."""

import re
import sys

import pytest

pytest.importorskip("speechbrain")
pytest.importorskip("fairseq")

from serkit.utils import SerkitError  # noqa: E402
from tests.fixtures.sb import head_conf  # noqa: E402

pytestmark = pytest.mark.slow

FAST = ["--batch_size", "8", "--noprogressbar", "--warmup_epochs", "0", "--channel_mask_width", "8"]
VALID_TAGS = {"loss/valid", "ua/valid", "wa/valid", "weighted_f1/valid"}
TEST_TAGS = {"ua/test", "wa/test", "weighted_f1/test"}


def train(setup, out, *extra):
    from serkit.speechbrain.train import main

    return main(
        [
            *head_conf("linear"),
            "--fold-dir",
            str(setup["fold"]),
            "--output-folder",
            str(out),
            "--feats",
            str(setup["feats"]),
            *FAST,
            *extra,
        ]
    )


def scalars(logdir) -> dict:
    """``{tag: [(step, value), ...]}`` as TensorBoard reads the event files of ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def logged(out) -> dict:
    """``{epoch: {"loss/train": ..., "ua/valid": ...}}`` from the file logger (train_log.txt)."""
    rows = {}
    for line in (out / "train_log.txt").read_text(encoding="utf-8").splitlines():
        epoch = int(re.search(r"epoch: (\d+)", line).group(1))
        rows[epoch] = {
            f"{k}/{split}": float(v) for split, k, v in re.findall(r"(train|valid) (\w+): ([0-9.e+-]+)", line)
        }
    return rows


def test_tensorboard_events_hold_every_epoch_of_the_file_log_and_continue_after_a_resume(tmp_path, sb_tiny):
    setup = sb_tiny
    out, tb = tmp_path / "exp" / "linear", tmp_path / "tb"
    assert train(setup, out, "--number_of_epochs", "2", "--tensorboard", str(tb)) == 0
    first = scalars(tb)
    assert {"epoch", "lr", "loss/train"} | VALID_TAGS | TEST_TAGS <= set(first)
    for tag in ("epoch", "lr", "loss/train", *VALID_TAGS, *TEST_TAGS):
        assert [step for step, _ in first[tag]] == [1, 2], tag
    assert [v for _, v in first["epoch"]] == [1.0, 2.0]
    file_log = logged(out)
    for epoch in (1, 2):
        for tag, value in file_log[epoch].items():  # the file logger prints 3 significant digits
            assert first[tag][epoch - 1][1] == pytest.approx(value, rel=5e-3), (tag, epoch)

    # the same command with one epoch more resumes after epoch 2: its events are step 3, not step 1 again
    assert train(setup, out, "--number_of_epochs", "3", "--tensorboard", str(tb)) == 0
    after = scalars(tb)
    for tag in ("epoch", "loss/train", *VALID_TAGS):
        assert [step for step, _ in after[tag]] == [1, 2, 3], tag
    assert after["ua/valid"][2][1] == pytest.approx(logged(out)[3]["ua/valid"], rel=5e-3)


def test_without_tensorboard_installed_the_option_names_the_extra_before_writing(tmp_path, monkeypatch):
    from serkit.speechbrain.train import main

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what `import tensorboard` sees when missing
    out = tmp_path / "out"
    with pytest.raises(SerkitError, match=r"pip install 'serkit\[tensorboard\]'"):
        main(
            [
                *head_conf("linear"),
                "--fold-dir",
                str(tmp_path),
                "--output-folder",
                str(out),
                "--feats",
                str(tmp_path),
                "--tensorboard",
                str(tmp_path / "tb"),
            ]
        )
    assert not out.exists() and not (tmp_path / "tb").exists()
