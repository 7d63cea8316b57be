"""A SpeechBrain ``Checkpointer`` whose checkpoints are complete or absent, never half-written.

SpeechBrain writes a checkpoint's ``CKPT.yaml`` first and its parameter files after it, and it decides
what is a checkpoint by the presence of ``CKPT.yaml``. A run killed while saving therefore leaves a
directory that looks like the newest checkpoint and fails to load when the same command is run again;
one killed while deleting an old checkpoint can leave a ``CKPT.yaml`` beside missing parameter files.

Here ``CKPT.yaml`` is written under a temporary name and renamed into place once every parameter file
is on disk (a rename within a directory is atomic), and recovery ignores, then removes, the
directories such kills leave behind, with a warning naming each. A checkpoint that is complete but
cannot be loaded (a truncated or foreign file) raises :class:`~serkit.utils.SerkitError` naming it.

``serkit train`` uses this class whatever the hparams name, so foreign SpeechBrain YAMLs get it too;
the recipes' configs name it (``!new:serkit.speechbrain.checkpoints.Checkpointer``).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from speechbrain.utils import checkpoints as sb_checkpoints
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from ..utils import SerkitError

log = logging.getLogger("serkit.speechbrain")

PENDING = ".CKPT.yaml.pending"


class Checkpointer(sb_checkpoints.Checkpointer):
    """SpeechBrain's checkpointer with atomic saves and recovery that survives a killed run."""

    def _save_checkpoint_metafile(self, fpath, meta_to_include=None, end_of_epoch=True):
        pending = Path(fpath).with_name(PENDING)
        return super()._save_checkpoint_metafile(pending, meta_to_include or {}, end_of_epoch)

    def save_checkpoint(self, meta=None, end_of_epoch=True, name=None, verbosity=logging.INFO):
        ckpt = super().save_checkpoint(meta=meta or {}, end_of_epoch=end_of_epoch, name=name,
                                       verbosity=verbosity)
        if ckpt is not None:  # the main process: every parameter file is written, publish the checkpoint
            os.replace(ckpt.path / PENDING, ckpt.path / sb_checkpoints.METAFNAME)
        ddp_barrier()
        return ckpt

    def _incomplete(self, ckpt_dir: Path) -> str | None:
        """Why ``ckpt_dir`` is not a usable checkpoint, or None when it is one."""
        if not (ckpt_dir / sb_checkpoints.METAFNAME).exists():
            return "killed while saving" if (ckpt_dir / PENDING).exists() else None
        if self.allow_partial_load:
            return None
        missing = [name for name in self.recoverables
                   if not (ckpt_dir / f"{name}{sb_checkpoints.PARAMFILE_EXT}").exists()
                   and not name.startswith("dataloader") and not self.optional_recoverables.get(name)]
        return f"missing {', '.join(missing)}" if missing else None

    def list_checkpoints(self):
        dirs = [d for d in self._list_checkpoint_dirs() if self._incomplete(d) is None]
        return self._construct_checkpoint_objects(dirs)

    def remove_incomplete(self) -> list[Path]:
        """Remove (main process) the checkpoint directories a killed save or delete left; return them."""
        removed = []
        if self.checkpoints_dir.is_dir() and if_main_process():
            for ckpt_dir in sorted(self.checkpoints_dir.glob(f"{sb_checkpoints.CKPT_PREFIX}+*")):
                why = self._incomplete(ckpt_dir) if ckpt_dir.is_dir() else None
                if why:
                    log.warning("%s: incomplete checkpoint (%s); removing it and resuming from the one "
                                "before", ckpt_dir, why)
                    shutil.rmtree(ckpt_dir)
                    removed.append(ckpt_dir)
        ddp_barrier()
        return removed

    def recover_if_possible(self, *args, **kwargs):
        self.remove_incomplete()
        return super().recover_if_possible(*args, **kwargs)

    def load_checkpoint(self, checkpoint):
        try:
            return super().load_checkpoint(checkpoint)
        except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
            raise SerkitError(
                f"{checkpoint.path}: cannot load this checkpoint ({type(e).__name__}: {e}); it is truncated "
                f"or was written by another model. Remove that directory to resume from an earlier "
                f"checkpoint, or train into a fresh --output-folder") from e


def atomic(checkpointer: sb_checkpoints.Checkpointer) -> Checkpointer:
    """``checkpointer`` as a serkit :class:`Checkpointer` (itself when it already is one).

    A plain SpeechBrain checkpointer (a foreign YAML) is rebuilt with the same directory, recoverables,
    hooks and options, so that every run of ``serkit train`` saves atomically and resumes after a kill.
    """
    if isinstance(checkpointer, Checkpointer) or not isinstance(checkpointer, sb_checkpoints.Checkpointer):
        return checkpointer
    upgraded = Checkpointer(checkpointer.checkpoints_dir, allow_partial_load=checkpointer.allow_partial_load)
    for attr in ("recoverables", "optional_recoverables", "custom_load_hooks", "custom_save_hooks"):
        getattr(upgraded, attr).update(getattr(checkpointer, attr, {}))
    return upgraded
