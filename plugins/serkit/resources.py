"""Files installed with serkit: the configs and the fairseq ``--user-dir``.

Configs used by several corpora (``shiftser``, ``bas``, ``bas_search``, ``flea``, ``mfsn`` and the
``mfsn_mini`` overlay) are the files in ``plugins/serkit/conf/`` itself, fairseq's (FLEA's continued
pretraining, the tiny HuBERT, the fairseq finetune) those in ``plugins/serkit/conf/fairseq/``. A
recipe's own configs stay in ``recipes/<RECIPE>/conf``: in a checkout, ``plugins/serkit/conf/<RECIPE>``
are symbolic links to them, and a wheel holds copies made when it is built, so there is one set of
files to edit. A config is
addressed as ``NAME`` (a shared one, or one only one recipe has, e.g. ``mfsn_text``), else as
``RECIPE/NAME``; fairseq's as ``fairseq/NAME``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .utils import SerkitError

CONF_DIR = Path(__file__).resolve().parent / "conf"


def all_configs() -> dict[str, Path]:
    """{``NAME`` (shared), ``fairseq/NAME`` or ``RECIPE/NAME``: path} for every shipped config."""
    if not CONF_DIR.is_dir():
        raise SerkitError(f"{CONF_DIR}: no configs installed with serkit; reinstall serkit")
    out = {path.stem: path for path in sorted(CONF_DIR.glob("*.yaml"))}
    for recipe in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        for path in sorted(recipe.rglob("*.yaml")):
            out[path.relative_to(CONF_DIR).with_suffix("").as_posix()] = CONF_DIR / path.relative_to(CONF_DIR)
    return out


def find_config(name: str) -> Path:
    """The config called ``name`` (``shiftser``, ``flea``, ``fairseq/ser_finetune``, ``IEMOCAP/mfsn_text``,
    ``x.yaml``); a shared config's name is its own, before any recipe's file of that name."""
    key = name[:-5] if name.endswith(".yaml") else name
    configs = all_configs()
    if key in configs:
        return configs[key]
    matches = sorted(k for k in configs if k == key or k.endswith("/" + key))
    if len(matches) == 1:
        return configs[matches[0]]
    if matches:
        raise SerkitError(f"config {name!r} is in several recipes: {', '.join(matches)}; name one of them")
    raise SerkitError(f"no config {name!r}; `serkit config` lists them")


def config_dir(kind: str) -> Path:
    """The directory to pass as ``--config-dir``: ``fairseq``, or a recipe's name for its configs."""
    path = CONF_DIR / kind
    if not path.is_dir():
        choices = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
        raise SerkitError(f"no config directory {kind!r}; choose from {', '.join(choices)}")
    return path


def user_dir() -> Path:
    """The absolute path for fairseq's ``common.user_dir`` (the ``serkit_fairseq`` shim), not imported."""
    spec = importlib.util.find_spec("serkit_fairseq")
    if spec is None or not spec.submodule_search_locations:
        raise SerkitError("serkit_fairseq is not installed with this serkit; reinstall serkit")
    return Path(next(iter(spec.submodule_search_locations))).resolve()
