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

Parameter files are loaded with ``torch.load(..., weights_only=True)`` (tensors and plain containers
only), whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says: a checkpoint that needs unpickling arbitrary
objects is refused with a :class:`~serkit.utils.SerkitError` instead of being executed. Everything
serkit saves in a checkpoint loads that way. (The hparams file beside the checkpoints is still code:
see docs/trust.md.)

:class:`RandomState` is the recoverable that makes a resumed run continue the random streams of the
run it resumes (``SERBrain`` adds it as ``rng``).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from speechbrain.utils import checkpoints as sb_checkpoints
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from ..utils import SerkitError

log = logging.getLogger("serkit.speechbrain")

PENDING = ".CKPT.yaml.pending"


def weights_only_recovery(
    obj: torch.nn.Module
    | torch.optim.Optimizer
    | torch.optim.lr_scheduler.LRScheduler
    | torch.optim.lr_scheduler.ReduceLROnPlateau
    | torch.amp.GradScaler,
    path: str | os.PathLike,
    end_of_epoch: bool,
) -> None:
    """SpeechBrain's ``torch_recovery`` with ``weights_only=True`` (no arbitrary unpickling)."""
    del end_of_epoch
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = sb_checkpoints.hook_on_loading_state_dict_checkpoint(state)
    try:
        obj.load_state_dict(state, strict=True)
    except TypeError:  # optimisers and schedulers take no `strict`
        obj.load_state_dict(state)


@sb_checkpoints.register_checkpoint_hooks
class RandomState:
    """The process's random generators as a checkpoint recoverable.

    Saves and restores torch's CPU generator, the generator of every visible CUDA device, numpy's
    global generator and Python's ``random``: whatever dropout, SpecAugment masks, Gumbel noise or a
    data pipeline drew before the checkpoint, a resumed run draws what the uninterrupted run drew next.
    (The training sampler needs nothing here: SpeechBrain's ``ReproducibleRandomSampler`` reseeds its
    own generator with ``seed + epoch`` every epoch and a mid-epoch resume fast-forwards it.)

    The file holds tensors, ints and lists only, so it loads with ``weights_only=True``. In DDP the main
    process's state is saved and every process restores it. ``end_of_epoch`` is what the last
    restored checkpoint was (None: nothing restored), for the trainer to know a mid-epoch resume.

    Example
    -------
    >>> import tempfile, torch
    >>> rng = RandomState()
    >>> path = Path(tempfile.mkdtemp()) / "rng.ckpt"
    >>> rng._save(path)
    >>> first = torch.rand(3)
    >>> rng._recover(path, end_of_epoch=True)
    >>> torch.equal(torch.rand(3), first)
    True
    """

    def __init__(self) -> None:
        self.end_of_epoch: bool | None = None

    @sb_checkpoints.mark_as_saver
    def _save(self, path: str | os.PathLike) -> None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        }
        torch.save(state, path)

    @sb_checkpoints.mark_as_loader
    def _recover(self, path: str | os.PathLike, end_of_epoch: bool) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda") or []
        if torch.cuda.is_available() and cuda:
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            else:
                log.warning(
                    "%s: saved with %d CUDA device(s), %d visible now; the CUDA generators start "
                    "afresh, so this run will not repeat the interrupted one exactly",
                    path,
                    len(cuda),
                    torch.cuda.device_count(),
                )
        npy = state["numpy"]
        np.random.set_state(
            (
                npy["kind"],
                npy["keys"].numpy().astype(np.uint32),
                npy["pos"],
                npy["has_gauss"],
                npy["cached_gaussian"],
            )
        )
        py = state["python"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
        self.end_of_epoch = bool(end_of_epoch)


class Checkpointer(sb_checkpoints.Checkpointer):
    """SpeechBrain's checkpointer with atomic saves and recovery that survives a killed run."""

    def _save_checkpoint_metafile(
        self, fpath: str | os.PathLike, meta_to_include: dict | None = None, end_of_epoch: bool = True
    ) -> dict:
        pending = Path(fpath).with_name(PENDING)
        return super()._save_checkpoint_metafile(pending, meta_to_include or {}, end_of_epoch)

    def save_checkpoint(
        self,
        meta: dict | None = None,
        end_of_epoch: bool = True,
        name: str | None = None,
        verbosity: int = logging.INFO,
    ) -> sb_checkpoints.Checkpoint | None:
        ckpt = super().save_checkpoint(
            meta=meta or {}, end_of_epoch=end_of_epoch, name=name, verbosity=verbosity
        )
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
        missing = [
            name
            for name in self.recoverables
            if not (ckpt_dir / f"{name}{sb_checkpoints.PARAMFILE_EXT}").exists()
            and not name.startswith("dataloader")
            and not self.optional_recoverables.get(name)
        ]
        return f"missing {', '.join(missing)}" if missing else None

    def list_checkpoints(self) -> list[sb_checkpoints.Checkpoint]:
        dirs = [d for d in self._list_checkpoint_dirs() if self._incomplete(d) is None]
        return self._construct_checkpoint_objects(dirs)

    def remove_incomplete(self) -> list[Path]:
        """Remove (main process) the checkpoint directories a killed save or delete left; return them."""
        removed = []
        if self.checkpoints_dir.is_dir() and if_main_process():
            for ckpt_dir in sorted(self.checkpoints_dir.glob(f"{sb_checkpoints.CKPT_PREFIX}+*")):
                why = self._incomplete(ckpt_dir) if ckpt_dir.is_dir() else None
                if why:
                    log.warning(
                        "%s: incomplete checkpoint (%s); removing it and resuming from the one before",
                        ckpt_dir,
                        why,
                    )
                    shutil.rmtree(ckpt_dir)
                    removed.append(ckpt_dir)
        ddp_barrier()
        return removed

    def recover_if_possible(self, *args, **kwargs) -> sb_checkpoints.Checkpoint | None:
        self.remove_incomplete()
        return super().recover_if_possible(*args, **kwargs)

    def _weights_only_hooks(self) -> dict:
        """Load hooks for the recoverables SpeechBrain would load with a plain ``torch.load``."""
        return {
            name: weights_only_recovery
            for name, obj in self.recoverables.items()
            if name not in self.custom_load_hooks
            and sb_checkpoints.get_default_hook(obj, sb_checkpoints.DEFAULT_LOAD_HOOKS)
            is sb_checkpoints.torch_recovery
        }

    def load_checkpoint(self, checkpoint: sb_checkpoints.Checkpoint) -> None:
        missing = [
            name
            for name, optional in self.optional_recoverables.items()
            if optional and name not in checkpoint.paramfiles
        ]
        if "rng" in missing:
            log.warning(
                "%s: no random-generator state (saved by an older serkit); training continues, but "
                "not exactly as the interrupted run would have",
                checkpoint.path,
            )
        custom = self.custom_load_hooks
        self.custom_load_hooks = {**self._weights_only_hooks(), **custom}
        try:
            return super().load_checkpoint(checkpoint)
        except pickle.UnpicklingError as e:
            detail = [
                line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line
            ] or ["not loadable with weights_only=True"]
            raise SerkitError(
                f"{checkpoint.path}: refusing to load this checkpoint: a parameter file holds pickled "
                f"objects beyond tensors ({detail[0]}). serkit writes tensors only, so this file was not "
                "written by serkit. Use experiment folders from trusted sources only (docs/trust.md)"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
            raise SerkitError(
                f"{checkpoint.path}: cannot load this checkpoint ({type(e).__name__}: {e}); it is truncated "
                f"or was written by another model. Remove that directory to resume from an earlier "
                f"checkpoint, or train into a fresh --output-folder"
            ) from e
        finally:
            self.custom_load_hooks = custom


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
