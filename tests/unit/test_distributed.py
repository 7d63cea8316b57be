"""serkit.distributed: when `serkit train` relaunches itself under torchrun, and each process's share
of the batch."""

from __future__ import annotations

import pytest

from serkit.distributed import per_process_batch, requested_nproc, torchrun_command
from serkit.utils import SerkitError


def test_torchrun_command_only_when_several_processes_are_asked_for_outside_torchrun():
    argv = ["conf.yaml", "--fold-dir", "f"]
    assert torchrun_command("serkit.speechbrain.train", argv, {}) is None
    assert torchrun_command("serkit.speechbrain.train", argv, {"SERKIT_NPROC_PER_NODE": "1"}) is None
    cmd = torchrun_command("serkit.speechbrain.train", argv, {"SERKIT_NPROC_PER_NODE": "4"})
    assert cmd[0].endswith("torchrun")
    assert cmd[1:] == ["--standalone", "--nproc_per_node", "4", "-m", "serkit.speechbrain.train", *argv]
    # inside torchrun's processes: no second relaunch
    assert torchrun_command("m", argv, {"SERKIT_NPROC_PER_NODE": "4", "LOCAL_RANK": "0"}) is None


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_process_count_is_refused(value):
    with pytest.raises(SerkitError, match=f"SERKIT_NPROC_PER_NODE='{value}'"):
        requested_nproc({"SERKIT_NPROC_PER_NODE": value})


def test_per_process_batch_keeps_the_batch_of_one_update():
    assert per_process_batch(32, 4) == 8
    assert per_process_batch(4, 1) == 4
    with pytest.raises(SerkitError, match="batch_size 6 cannot be split evenly over 4 processes"):
        per_process_batch(6, 4)
