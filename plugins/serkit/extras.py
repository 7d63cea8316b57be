"""Optional dependencies: which ``serkit[X]`` extra installs a module, and one check that says so.

``pip install serkit`` brings torch and what ``serkit.nn``, data preparation and scoring need. The
rest comes with an extra named for what it enables (setup.py's ``extras_require``):

- ``speechbrain``: ``serkit train``, ``serkit predict``, ``serkit export-upstream``;
- ``fairseq``: fairseq upstreams, ``serkit make-upstream``, the fairseq plugin (Python < 3.12);
- ``faiss`` (or ``faiss-gpu``): ``serkit kmeans`` with the default faiss backend;
- ``hf``: Hugging Face upstream directories;
- ``all``: all of them.
"""

from __future__ import annotations

import importlib.util
import sys

from .utils import SerkitError

#: top-level module -> the extra that installs it
EXTRA_OF = {
    "speechbrain": "speechbrain",
    "hyperpyyaml": "speechbrain",
    "fairseq": "fairseq",
    "hydra": "fairseq",
    "omegaconf": "fairseq",
    "faiss": "faiss",
    "transformers": "hf",
}


class MissingExtra(SerkitError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def install_hint(module: str, extra: str | None = None) -> str:
    extra = extra or EXTRA_OF.get(module.split(".")[0], "all")
    hint = f"install serkit[{extra}]: pip install 'serkit[{extra}]'"
    if extra == "fairseq" and sys.version_info >= (3, 12):
        hint += " on Python 3.10 or 3.11 (fairseq 0.12 does not install on 3.12 and later)"
    elif extra == "faiss":
        hint += " (or serkit[faiss-gpu] on a CUDA machine)"
    return hint


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a broken module spec
        return False


def require(module: str, extra: str | None = None, what: str = "this") -> None:
    """Raise :class:`MissingExtra` (one line, exit status 2 from the CLI) unless ``module`` is importable.

    >>> require("json", "all")
    >>> require("no_such_module_xyz", "speechbrain", "serkit train")
    Traceback (most recent call last):
    ...
    serkit.extras.MissingExtra: serkit train needs no_such_module_xyz, which is not installed; \
install serkit[speechbrain]: pip install 'serkit[speechbrain]'
    """
    if not is_installed(module):
        raise MissingExtra(f"{what} needs {module}, which is not installed; {install_hint(module, extra)}")
