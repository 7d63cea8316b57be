"""Shared plumbing: user-facing errors, logging, atomic writes, Kaldi-style map files."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger("serkit")


class SerkitError(Exception):
    """A problem with the user's input: printed without a traceback, exit status 2.

    The message names the file (and line or utterance) and says what to do.
    """


def setup_logging(verbose: bool = False) -> None:
    """Configure serkit's logger and quiet the chatter of the libraries under it."""
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("serkit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # torchaudio 2.8's FFmpeg probe (torio) logs tracebacks at DEBUG; fairseq and speechbrain are chatty.
    for name in ("fairseq", "fairseq.tasks", "fairseq.models", "fairseq.tasks.text_to_speech", "torio",
                 "torio._extension", "torio._extension.utils", "torchaudio", "matplotlib", "numba", "h5py",
                 "PIL", "fsspec"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*torchaudio.*deprecat.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*In 2.9, this function's implementation will be changed.*")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``final`` only if the block succeeds.

    A failed or killed run leaves ``final`` as it was (an earlier complete output stays intact).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SerkitError(f"{final} exists; remove it or choose another --out")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w", **kw) -> Iterator:
    """Open a temporary sibling of ``final`` for writing; rename it over ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kw) as f:
            yield f
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    with atomic_file(path, encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def read_map(path: str | os.PathLike) -> dict[str, str]:
    """Read a Kaldi-style ``key value...`` file into an ordered dict (value = rest of the line)."""
    path = Path(path)
    if not path.is_file():
        raise SerkitError(f"{path}: file not found")
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            if key in out:
                raise SerkitError(f"{path}:{lineno}: duplicate key {key!r}")
            out[key] = value.strip()
    return out


def write_map(path: str | os.PathLike, items: Iterable[tuple[str, object]]) -> None:
    """Write ``key value`` lines atomically."""
    with atomic_file(path, encoding="utf-8") as f:
        for key, value in items:
            f.write(f"{key} {value}\n")
