"""Multi-process training inside one job: the launcher and the batch of one update.

A Slurm job of the recipe template that holds more than one GPU exports ``SERKIT_NPROC_PER_NODE``
(local/backend_slurm.sh); ``serkit train`` then runs itself under
``torchrun --standalone --nproc_per_node N`` (:func:`torchrun_command`), and each process takes
``batch_size / N`` utterances (:func:`per_process_batch`), so one update sees the batch of the
single-process run: ``batch_size`` x ``grad_accumulation_factor``. fairseq trainers need no launcher:
fairseq spawns one process per GPU it sees (``distributed_training.distributed_world_size``, by default
the GPU count), and its batch of one update is ``max_tokens`` per GPU x GPUs x
``optimization.update_freq``, which the recipe sets (IEMOCAP's ``--cpt-update-freq auto``).

>>> per_process_batch(32, 4)
8
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from .utils import SerkitError

NPROC_ENV = "SERKIT_NPROC_PER_NODE"


def requested_nproc(environ: Mapping[str, str] | None = None) -> int:
    """The training processes asked for by ``SERKIT_NPROC_PER_NODE`` (1 when unset)."""
    environ = os.environ if environ is None else environ
    value = environ.get(NPROC_ENV, "").strip()
    if not value:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise SerkitError(f"{NPROC_ENV}={value!r}: expected a whole number of processes >= 1")
    return int(value)


def torchrun_command(
    module: str, argv: list[str], environ: Mapping[str, str] | None = None
) -> list[str] | None:
    """The command that runs ``python -m module argv`` as ``SERKIT_NPROC_PER_NODE`` processes, or None
    when one process was asked for or this process is already one of torchrun's (``LOCAL_RANK``)."""
    environ = os.environ if environ is None else environ
    nproc = requested_nproc(environ)
    if nproc == 1 or "LOCAL_RANK" in environ:
        return None
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        raise SerkitError(
            f"{NPROC_ENV}={nproc} asks for {nproc} training processes, but torchrun is not "
            f"installed next to {sys.executable}; install torch there or unset {NPROC_ENV}"
        )
    return [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", module, *argv]


def per_process_batch(batch_size: int, world_size: int, where: str = "batch_size") -> int:
    """Each of ``world_size`` processes' share of ``batch_size`` utterances, so that one update sees
    ``batch_size`` as a single process does."""
    if batch_size % world_size:
        raise SerkitError(
            f"{where}: batch_size {batch_size} cannot be split evenly over {world_size} "
            f"processes; pass --batch_size with a multiple of {world_size}, or run a number of "
            f"processes ({NPROC_ENV}, cmd.sh's slurm_nproc) that divides {batch_size}"
        )
    return batch_size // world_size
