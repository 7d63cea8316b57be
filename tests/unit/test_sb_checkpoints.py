"""serkit's Checkpointer: a checkpoint is complete or absent, whatever moment a run is killed at."""

import pytest

pytest.importorskip("speechbrain")

import torch  # noqa: E402
from speechbrain.utils import checkpoints as sb_checkpoints  # noqa: E402
from speechbrain.utils.epoch_loop import EpochCounter  # noqa: E402

from serkit.speechbrain.brain import forget_logged_epochs  # noqa: E402
from serkit.speechbrain.checkpoints import PENDING, Checkpointer, atomic  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402


def _checkpointer(save_dir, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    counter = EpochCounter(10)
    return Checkpointer(save_dir, recoverables={"model": model, "counter": counter}), model, counter


def _save(ckp, counter, epoch):
    counter.current = epoch
    ckp.save_and_keep_only(meta={"epoch": epoch}, num_to_keep=2)
    return ckp.find_checkpoint()  # the newest


def test_the_metafile_appears_only_after_every_parameter_file(tmp_path, monkeypatch):
    ckp, _, counter = _checkpointer(tmp_path)
    seen = []
    original = sb_checkpoints.DEFAULT_SAVE_HOOKS[torch.nn.Module]

    def watching_save(obj, path):  # what a kill at this moment would leave behind
        seen.append(sorted(p.name for p in path.parent.iterdir()))
        return original(obj, path)

    monkeypatch.setitem(sb_checkpoints.DEFAULT_SAVE_HOOKS, torch.nn.Module, watching_save)
    ckpt = _save(ckp, counter, 1)
    assert seen and all(sb_checkpoints.METAFNAME not in names and PENDING in names for names in seen)
    assert sorted(p.name for p in ckpt.path.iterdir()) == ["CKPT.yaml", "counter.ckpt", "model.ckpt"]


def test_a_save_killed_midway_is_ignored_then_removed_on_recovery(tmp_path):
    ckp, model, counter = _checkpointer(tmp_path)
    good = _save(ckp, counter, 1)
    weights = model.weight.detach().clone()
    # what a kill during the next save leaves: the pending metafile and part of the parameter files
    killed = tmp_path / "CKPT+killed-save"
    killed.mkdir()
    (killed / PENDING).write_text("end-of-epoch: true\nepoch: 2\n")
    (killed / "model.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert [c.path for c in ckp.list_checkpoints()] == [good.path]

    fresh, fresh_model, fresh_counter = _checkpointer(tmp_path, seed=1)
    assert fresh.recover_if_possible().path == good.path
    assert not killed.exists()
    assert fresh_counter.current == 1 and torch.equal(fresh_model.weight, weights)


def test_a_delete_killed_midway_leaves_no_loadable_looking_checkpoint(tmp_path):
    ckp, _, counter = _checkpointer(tmp_path)
    old = _save(ckp, counter, 1)
    new = _save(ckp, counter, 2)
    (old.path / "model.ckpt").unlink()  # rmtree killed after one file
    assert [c.path for c in ckp.list_checkpoints()] == [new.path]
    fresh, _, fresh_counter = _checkpointer(tmp_path, seed=1)
    assert fresh.recover_if_possible().path == new.path and fresh_counter.current == 2
    assert not old.path.exists()


def test_a_truncated_parameter_file_names_the_checkpoint_and_the_fix(tmp_path):
    ckp, _, counter = _checkpointer(tmp_path)
    ckpt = _save(ckp, counter, 1)
    data = (ckpt.path / "model.ckpt").read_bytes()
    (ckpt.path / "model.ckpt").write_bytes(data[: len(data) // 2])
    fresh, _, _ = _checkpointer(tmp_path, seed=1)
    with pytest.raises(SerkitError, match=r"CKPT\+.*cannot load.*Remove that directory"):
        fresh.recover_if_possible()
    assert ckpt.path.exists()  # nothing deleted: the user decides


def test_a_plain_speechbrain_checkpointer_is_upgraded_with_its_recoverables(tmp_path):
    model = torch.nn.Linear(3, 2)
    plain = sb_checkpoints.Checkpointer(tmp_path, recoverables={"model": model})
    plain.add_recoverable("scaler", torch.nn.Linear(1, 1), optional_load=True)
    upgraded = atomic(plain)
    assert type(upgraded) is Checkpointer and upgraded.checkpoints_dir == plain.checkpoints_dir
    assert upgraded.recoverables == plain.recoverables
    assert upgraded.optional_recoverables == {"scaler": True}
    assert atomic(upgraded) is upgraded


def test_a_redone_epoch_replaces_its_train_log_line(tmp_path):
    log = tmp_path / "train_log.txt"
    log.write_text(
        "epoch: 1, lr: 1.00e-03 - valid ua: 0.4\n"
        "epoch: 2, lr: 1.00e-03 - valid ua: 0.5\n"
        "epoch: 3, lr: 1.00e-03 - valid ua: 0.6\n"
    )
    forget_logged_epochs(log, 3)
    assert log.read_text().splitlines() == [
        "epoch: 1, lr: 1.00e-03 - valid ua: 0.4",
        "epoch: 2, lr: 1.00e-03 - valid ua: 0.5",
    ]
    forget_logged_epochs(tmp_path / "absent.txt", 1)  # a fresh run has no log yet
