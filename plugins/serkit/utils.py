"""Shared plumbing: user-facing errors, logging, atomic writes, Kaldi-style map files."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

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
    for name in (
        "fairseq",
        "fairseq.tasks",
        "fairseq.models",
        "fairseq.tasks.text_to_speech",
        "torio",
        "torio._extension",
        "torio._extension.utils",
        "torchaudio",
        "matplotlib",
        "numba",
        "h5py",
        "PIL",
        "fsspec",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*torchaudio.*deprecat.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*In 2.9, this function's implementation will be changed.*")


# ---------------------------------------------------------------------------------------------------
# Output ownership: serkit replaces or writes into a directory only when it is provably its own.

#: Marker file in every directory serkit writes as a whole: JSON with the output's ``kind``
#: (``prepare-iemocap``, ``split``, ``mini-corpus-savee``, ``features``, ``kmeans``, ...) and, for
#: directories replaced as a whole, the list of files written, so that a later run can tell serkit's
#: files from anything added since.
MARKER = ".serkit-output"
#: Files the recipes' stage helpers (``local/stage.sh``) keep in a stage's output directory.
STAGE_FILES = (".done", ".options")
LOCK_NAME = ".serkit-lock"
_TMP_RE = re.compile(r"^\..+\.(tmp|old)-[^/]+$")  # leftovers of atomic_file/atomic_dir in a killed run


class DiskFull(SerkitError):
    """No space left while writing an output; what was there before is intact."""


def _real(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(p)))


def _umask() -> int:
    try:  # Linux >= 4.7: read it without changing it (os.umask is process-wide, racy with threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: str | os.PathLike, directory: bool) -> None:
    """mkdtemp/mkstemp create 0700/0600; give the output the mode the user's umask asks for."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _no_space(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def check_not_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "--out") -> None:
    """Refuse an output equal to, inside, or a parent of any input (symlinks resolved).

    Called before anything is written, so a refused command changes nothing.
    """
    o = _real(out)
    for inp in inputs:
        i = _real(inp)
        if o == i:
            rel = "is"
        elif i in o.parents:
            rel = "is inside"
        elif o in i.parents:
            rel = "contains"
        else:
            continue
        shown = f"{inp}" if Path(os.path.abspath(inp)) == i else f"{inp} (= {i})"
        raise SerkitError(
            f"{what} {out} {rel} the input {shown}; writing there could destroy or change "
            f"the input. Nothing was written: choose an {what} outside every input"
        )


def claim_output_file(
    out: str | os.PathLike,
    ours: Callable[[Path], bool],
    kind: str,
    inputs: Iterable[str | os.PathLike] = (),
    what: str = "--out",
) -> None:
    """Check that file ``out`` may be written (or replaced) as serkit's ``kind``; write nothing.

    Allowed: ``out`` absent, or a file ``ours(out)`` recognises as one serkit wrote. Refused, with a
    :class:`SerkitError` naming the file and the fix: ``out`` equal to, inside or holding an input, a
    directory, anything else.
    """
    out = Path(out)
    check_not_input(out, inputs, what)
    if out.is_dir():
        raise SerkitError(f"{what} {out}: is a directory; give the file to write")
    if os.path.lexists(out) and not (out.is_file() and ours(out)):
        raise SerkitError(
            f"{what} {out}: exists and is not {kind}; serkit never overwrites what it "
            f"did not write. Nothing was changed: choose another {what}, or move that file "
            "away yourself"
        )


def torch_file_strings(path: str | os.PathLike) -> set[str]:
    """The string constants in the pickle of a ``torch.save`` (zip) file, read with :mod:`pickletools`:
    nothing in the file is executed. Empty for anything else."""
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
            data = z.read(name) if name else b""
    except (OSError, zipfile.BadZipFile, ValueError):
        return set()
    strings: set[str] = set()
    try:
        for _op, arg, _pos in pickletools.genops(data):
            if isinstance(arg, str):
                strings.add(arg)
    except Exception:  # noqa: BLE001 - a damaged pickle is simply not recognised
        return set()
    return strings


def read_marker(path: str | os.PathLike) -> dict | None:
    """The marker of a directory serkit wrote (``{"kind": ..., ...}``), or None when it has none."""
    m = Path(path) / MARKER
    if not m.is_file():
        return None
    try:
        info = json.loads(m.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"kind": "?"}
    return info if isinstance(info, dict) and isinstance(info.get("kind"), str) else {"kind": "?"}


def write_marker(path: str | os.PathLike, kind: str, files: list[str] | None = None) -> None:
    from . import __version__

    info: dict = {"kind": kind, "serkit_version": __version__}
    if files is not None:
        info["files"] = files
    with atomic_file(Path(path) / MARKER, encoding="utf-8") as f:
        json.dump(info, f, indent=0)
        f.write("\n")


def files_under(root: str | os.PathLike, prefix: str = "") -> list[str]:
    """Every file below ``root`` as ``prefix`` + its relative path, in :func:`os.walk` order (links to
    directories are listed by neither name nor content)."""
    out = []
    for dirpath, _, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out += [f"{prefix}{n}" if rel == "." else f"{prefix}{rel}/{n}" for n in names]
    return out


def _listing(root: Path) -> list[str]:
    """Every file (and symlink) under ``root`` as a sorted relative path, the marker excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            r = name if rel == "." else f"{rel}/{name}"
            if r != MARKER:
                out.append(r)
    return sorted(out)


def _ignorable(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name in STAGE_FILES or name.startswith(LOCK_NAME) or bool(_TMP_RE.match(name))


#: kind -> function(directory) -> relative paths it does not recognise as that kind's files. Used for
#: directories written by serkit versions before the marker existed, and for the files a command may
#: add to its own output between runs (``wavs/`` of an interrupted MELD extraction). Registered by the
#: modules that write each kind (``serkit.data.datadir``, ``serkit.data.splits``, ...).
RECOGNISERS: dict[str, Callable[[Path], list[str]]] = {}


def register_recogniser(kind: str, fn: Callable[[Path], list[str]]) -> None:
    RECOGNISERS[kind] = fn


def unknown_entries(path: str | os.PathLike, kind: str) -> list[str]:
    """Files under ``path`` that serkit did not write as a ``kind`` output (empty: safe to replace)."""
    path = Path(path)
    marker = read_marker(path)
    recognise = RECOGNISERS.get(kind)
    if marker is not None and marker["kind"] != kind:
        return [f"{MARKER} (serkit's {marker['kind']} output, not {kind})"]
    listed = set(marker.get("files", [])) if marker else set()
    unknown = [r for r in _listing(path) if r not in listed and not _ignorable(r)]
    if unknown and recognise is not None:
        extra = set(recognise(path))
        unknown = [r for r in unknown if r in extra]
    return unknown


def claim_output_dir(
    out: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = (), what: str = "--out"
) -> None:
    """Check that ``out`` may be written (or replaced) as serkit's ``kind`` output; write nothing.

    Allowed: ``out`` absent, empty, or holding only what serkit wrote as a ``kind`` output (its
    marker's file list, or what the kind's recogniser accepts). Refused, with a :class:`SerkitError`
    naming the directory and the fix: ``out`` equal to, inside, or a parent of an input; anything else.
    """
    out = Path(out)
    check_not_input(out, inputs, what)
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise SerkitError(
            f"{out}: exists and is not a directory; serkit replaces only its own output "
            f"directories. Choose another {what}"
        )
    unknown = unknown_entries(out, kind)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise SerkitError(
            f"{out}: not empty and not serkit's own {kind} output (it holds {shown}); serkit never "
            f"replaces what it did not write. Nothing was changed: choose a new or empty {what}, or "
            "move those files away yourself"
        )
    if read_marker(out) is None and any(not _ignorable(r) for r in _listing(out)):
        log.info(
            "%s: recognised as an earlier serkit %s output (written before output markers existed)", out, kind
        )


@contextlib.contextmanager
def atomic_dir(
    final: str | os.PathLike,
    kind: str = "output",
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = True,
    what: str = "--out",
) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``final`` only if the block succeeds.

    ``final`` must be absent, empty, or serkit's own ``kind`` output (:func:`claim_output_dir`, checked
    before anything is written and again just before the swap); ``inputs`` may not be ``final``, inside
    it, or hold it. The new directory gets a :data:`MARKER` listing its files. A failed or killed run
    leaves ``final`` as it was (an earlier complete output stays intact).
    """
    final = Path(final).absolute()
    inputs = list(inputs)
    claim_output_dir(final, kind, inputs, what)
    if final.exists() and not overwrite:
        raise SerkitError(f"{final} exists; remove it or choose another {what}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _honour_umask(tmp, directory=True)
        yield tmp
        write_marker(tmp, kind, _listing(tmp))
        claim_output_dir(final, kind, inputs, what)  # nothing appeared in the meantime
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, DiskFull):  # name the output, not the temporary directory just removed
            raise DiskFull(str(e).replace(str(tmp), str(final))) from None
        if _no_space(e):
            raise DiskFull(
                f"{final}: no space left on the device while writing it ({e.strerror}); the "
                "partial output was removed and nothing already written was changed. Free some "
                "space and re-run"
            ) from None
        raise
    if os.path.lexists(final):
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        if old.is_symlink():  # the link goes, never what it points to
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w", **kw) -> Iterator[IO]:
    """Open a temporary sibling of ``final`` for writing; rename it over ``final`` on success.

    The file gets the mode the umask asks for. A full disk raises :class:`SerkitError` naming
    ``final``; ``final`` is then as it was before.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    try:
        _honour_umask(tmp, directory=False)
        with open(tmp, mode, **kw) as f:
            yield f
        os.replace(tmp, final)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _no_space(e):
            raise DiskFull(
                f"{final}: no space left on the device while writing it ({e.strerror}); "
                f"the partial file was removed and nothing already written was changed "
                f"(an earlier {final.name}, if any, is intact). Free some space and "
                "re-run"
            ) from None
        raise


# ---------------------------------------------------------------------------------------------------
# Exclusive locks: one writer per output


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (no holder recorded)"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}: {info.get('command')}"


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, what: str, shared: bool = False) -> Iterator[Path]:
    """Hold an flock(2) on the file ``path`` for the block; fail at once if another process holds it.

    ``what`` names the output in the message. An exclusive holder records its pid, host, command line
    and start time in the file, which the refused process prints. ``shared=True`` takes a shared lock
    (several shared holders may coexist; an exclusive one excludes them all). The lock is released by
    the kernel when the process dies, so a killed run never leaves a stale lock; the file stays.
    """
    import fcntl
    import socket
    import sys
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SerkitError(
                f"{what} is in use by {_holder_text(path)} (lock {path}); wait for it to "
                "finish or stop it, then re-run"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        }
        # Exclusive holders record themselves; shared ones clear any record left by a killed holder.
        os.ftruncate(fd, 0)
        if not shared:
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield path
        finally:
            if not shared:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------------------------------
# Output directories that commands add files to (features, pseudo labels), rather than replace


def check_output_dir(
    out: str | os.PathLike,
    kind: str,
    noun: str,
    inputs: Iterable[str | os.PathLike],
    files: Iterable[str],
    ours: Callable[[Path], bool],
    evidence: str,
    what: str = "--out",
) -> None:
    """Check that directory ``out`` may receive serkit's ``kind`` files ``files`` (names inside
    ``out``) beside whatever else it holds; write nothing.

    Refused, with a :class:`SerkitError` naming ``out`` and the fix: ``out`` equal to, inside or holding
    an input; not a directory; serkit's output of another kind (``noun`` names this kind in the
    message); one of ``files`` present while ``ours(out)`` does not vouch for it (``evidence`` names
    what would, e.g. "dump.json of `serkit dump-features`").
    """
    out = Path(out)
    check_not_input(out, inputs, what)
    if out.exists() and not out.is_dir():
        raise SerkitError(f"{what} {out}: exists and is not a directory; choose another {what}")
    marker = read_marker(out)
    if marker is not None and marker["kind"] != kind:
        raise SerkitError(
            f"{what} {out}: holds serkit's {marker['kind']} output, not {noun}; choose another {what}"
        )
    present = [n for n in files if (out / n).exists()]
    if present and not ours(out):
        raise SerkitError(
            f"{what} {out}: holds {', '.join(present)} that serkit did not write (no "
            f"{evidence}); serkit never overwrites what it did not write. Choose another "
            f"{what} or move those files away"
        )


@contextlib.contextmanager
def locked_output_dir(
    out: str | os.PathLike,
    kind: str,
    what: str,
    shard: tuple[int, int] | None = None,
    recheck: Callable[[], None] | None = None,
) -> Iterator[Path]:
    """Hold the lock of output directory ``out`` for the block, and mark it as serkit's ``kind`` output.

    Without ``shard`` the lock on ``out/.serkit-lock`` is exclusive. Shard K of N (``shard=(K, N)``)
    holds a shared lock on it and an exclusive one on ``out/.serkit-lock.shard-K-of-N``, so shards run
    side by side while a second run of the same work fails at once, naming the first (``what`` names
    the output in that message). ``recheck`` runs once the locks are held, before the marker is written:
    the checks of :func:`check_output_dir` again, on the directory as it is now.
    """
    out = Path(out)
    with contextlib.ExitStack() as stack:
        if shard is None:
            stack.enter_context(output_lock(out / LOCK_NAME, what))
        else:
            k, n = shard
            stack.enter_context(output_lock(out / LOCK_NAME, what, shared=True))
            stack.enter_context(
                output_lock(out / f"{LOCK_NAME}.shard-{k}-of-{n}", f"shard {k} of {n} of {what}")
            )
        if recheck is not None:
            recheck()
        if read_marker(out) is None:
            write_marker(out, kind)
        yield out


def write_json(path: str | os.PathLike, obj: object, indent: int = 2) -> None:
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
