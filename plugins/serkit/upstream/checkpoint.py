"""Reading fairseq speech checkpoints in the forms they were published in: the one place that does it.

Every serkit path that opens a fairseq HuBERT / wav2vec 2.0 / data2vec checkpoint goes through
:func:`read_checkpoint` (``load_upstream`` and ``serkit dump-features``, the fairseq plugin's
``serkit_ser_model`` and ``serkit_hubert`` ``init_from``, MFSN's greedy CTC). It handles

- ``cfg`` checkpoints (hydra-era fairseq: HuBERT, data2vec) whose config is a plain dict;
- ``args`` checkpoints (argparse-era fairseq, 2020: every wav2vec 2.0 release) whose config is an
  ``argparse.Namespace``, including the CTC releases whose ``w2v_args`` is itself a Namespace.
  fairseq converts those with ``convert_namespace_to_omegaconf``, which needs Hydra's
  ``compose(strict=False)``; hydra-core 1.3 ignores ``strict`` and fails on the nested Namespace.
  :func:`namespace_to_cfg` converts them from fairseq's own dataclasses instead, without Hydra;
- CTC-finetuned models (``wav2vec_ctc``, ``hubert_ctc``): the inner encoder (``w2v_encoder.w2v_model.``)
  and its config (``w2v_args``) are the upstream; the output projection is kept for greedy CTC;
- weight-norm names of the positional convolution: ``weight_g``/``weight_v`` (``nn.utils.weight_norm``,
  every fairseq release) or ``parametrizations.weight.original0/1`` (``nn.utils.parametrizations``),
  renamed to whatever the installed fairseq builds;
- no training data: label dictionaries come from ``task_state`` or are sized from the weights, so the
  authors' cluster paths in ``task.data`` / ``task.label_dir`` are never opened.

Unpickling runs code from the file: only load checkpoints you trust. serkit unpickles with
``torch.load(weights_only=False)`` itself, so it does not need ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``;
:func:`trusted_unpickling` sets that variable only around code that calls fairseq's own loaders (which
do not pass ``weights_only``) and restores the previous value afterwards.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import enum
import importlib
import logging
import os
import typing
import zipfile
from argparse import Namespace
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils import SerkitError

if TYPE_CHECKING:
    import torch
    from _typeshed import DataclassInstance
    from omegaconf import DictConfig

log = logging.getLogger("serkit.upstream")

WEIGHTS_ONLY_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
#: encoder model name (cfg.model._name) -> serkit kind
KINDS = {"hubert": "hubert", "serkit_hubert": "hubert", "wav2vec2": "wav2vec2", "data2vec_audio": "data2vec"}
#: CTC-finetuned wrappers: the encoder's weights sit under this prefix, the CTC projection under PROJ
CTC_MODELS = ("wav2vec_ctc", "hubert_ctc")
INNER_PREFIX = "w2v_encoder.w2v_model."
PROJ = "w2v_encoder.proj."
#: the two names torch gives a weight-normalised ``weight``: (legacy nn.utils.weight_norm, parametrizations)
WEIGHT_NORM_NAMES = (
    ("weight_g", "parametrizations.weight.original0"),
    ("weight_v", "parametrizations.weight.original1"),
)
#: data2vec audio lives in fairseq's examples package, registered only when imported
DATA2VEC_MODULES = (
    "fairseq.examples.data2vec.models.data2vec_audio",
    "examples.data2vec.models.data2vec_audio",
)


@contextlib.contextmanager
def trusted_unpickling() -> typing.Iterator[None]:
    """Set ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the block only (fairseq's loaders need it on torch
    >= 2.6); the previous value, or its absence, is restored afterwards, also on error."""
    before = os.environ.get(WEIGHTS_ONLY_ENV)
    os.environ[WEIGHTS_ONLY_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(WEIGHTS_ONLY_ENV, None)
        else:
            os.environ[WEIGHTS_ONLY_ENV] = before


def require_fairseq(path: str | os.PathLike) -> None:
    """A clear error naming ``path`` when fairseq, which builds the model, is not installed."""
    try:
        import fairseq  # noqa: F401
    except ImportError as e:
        raise SerkitError(
            f"{path}: loading fairseq checkpoints needs fairseq (pip install "
            "'serkit[fairseq]' or `make install`)"
        ) from e


def register_models() -> None:
    """Register the models a checkpoint may name: serkit's fairseq plugin and data2vec audio."""
    from fairseq.models import MODEL_REGISTRY

    try:
        importlib.import_module("serkit.fairseq_ext")
    except ModuleNotFoundError as e:
        if e.name != "serkit.fairseq_ext":
            raise
    if "data2vec_audio" in MODEL_REGISTRY:
        return
    errors = []
    for name in DATA2VEC_MODULES:
        try:
            importlib.import_module(name)
            return
        except Exception as e:  # noqa: BLE001 - only data2vec checkpoints need it; reported when they do
            errors.append(f"{name}: {type(e).__name__}: {e}")
    log.debug("data2vec audio not importable (%s)", "; ".join(errors))


# ---------------------------------------------------------------------------------------------
# argparse Namespace -> config dict, from fairseq's dataclasses (no Hydra)


def _field_type(f: dataclasses.Field) -> object:
    t = f.type
    if typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t = args[0] if len(args) == 1 else t
    return t


def _plain(value: object) -> object:
    """Dataclass defaults as config values: enums by value, tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _default(f: dataclasses.Field) -> object:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        value = f.default
    else:
        return "???"
    if dataclasses.is_dataclass(value):
        return None
    return _plain(value)


def _coerce(value: object, f: dataclasses.Field) -> object:
    """An argparse value as the dataclass field's type (argparse stored tuples/lists as strings)."""
    if isinstance(value, Namespace):
        return namespace_to_cfg(value)
    t = _field_type(f)
    is_enum = isinstance(t, type) and issubclass(t, enum.Enum)
    if (
        isinstance(value, str)
        and t is not str
        and not is_enum
        and t is not Any
        and not value.startswith("${")
    ):
        try:
            value = ast.literal_eval(value)  # a literal only: nothing from the file is executed
        except (ValueError, SyntaxError):
            pass
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, tuple):
        value = list(value)
    if t in (int, float, bool) and value is not None and not isinstance(value, (list, dict)):
        with contextlib.suppress(TypeError, ValueError):
            value = t(value)
    return value


def _fill(dc_cls: type[DataclassInstance], ns: Namespace, name: str | None = None) -> dict:
    out: dict[str, object] = {} if name is None else {"_name": name}
    for f in dataclasses.fields(dc_cls):
        if f.name.startswith("_"):
            continue
        out[f.name] = _coerce(getattr(ns, f.name), f) if hasattr(ns, f.name) else _default(f)
    return out


def namespace_to_cfg(ns: Namespace) -> dict:
    """A fairseq argparse ``Namespace`` (old checkpoints' ``args``) as a resolved config dict.

    Each section is filled from the fairseq dataclass that describes it (``FairseqConfig``'s sections,
    the task's and the model's registered dataclasses): a field takes the Namespace's value when it has
    one, the dataclass default otherwise; strings that stood for tuples/lists become literals. A nested
    Namespace (``w2v_args`` of the CTC releases) is converted the same way. No Hydra is involved.
    """
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_DATACLASS_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY
    from omegaconf import OmegaConf

    ns = Namespace(**vars(ns))
    # renames fairseq's checkpoint upgrader applies to argparse configs of speech models
    if getattr(ns, "task", None) == "speech_pretraining":
        ns.task = "audio_pretraining"
    if isinstance(getattr(ns, "data", None), list) and ns.data:
        ns.data = ns.data[0]
    cfg: dict[str, Any] = {}
    for f in dataclasses.fields(FairseqConfig):  # common, dataset, optimization, ...: default a dataclass
        section = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(section):
            cfg[f.name] = _fill(section if isinstance(section, type) else type(section), ns)
    task = getattr(ns, "task", None)
    if task not in TASK_DATACLASS_REGISTRY:
        raise SerkitError(f"checkpoint args name task {task!r}, which this fairseq does not know")
    cfg["task"] = _fill(TASK_DATACLASS_REGISTRY[task], ns, task)
    arch = getattr(ns, "arch", None)
    model_name = ARCH_MODEL_NAME_REGISTRY.get(arch, arch)
    if model_name not in MODEL_DATACLASS_REGISTRY:
        raise SerkitError(f"checkpoint args name model {arch!r}, which this fairseq does not know")
    cfg["model"] = _fill(MODEL_DATACLASS_REGISTRY[model_name], ns, model_name)
    cfg["criterion"] = {"_name": getattr(ns, "criterion", None)}
    try:
        return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)
    except Exception as e:  # noqa: BLE001 - an interpolation the dataclasses do not resolve
        raise SerkitError(f"cannot convert the checkpoint's argparse config ({type(e).__name__}: {e})") from e


def _as_config(value: Namespace | dict | DictConfig) -> DictConfig:
    from omegaconf import OmegaConf

    if isinstance(value, Namespace):
        value = namespace_to_cfg(value)
    if OmegaConf.is_config(value):
        return value
    return OmegaConf.create(value, flags={"allow_objects": True})


# ---------------------------------------------------------------------------------------------
# reading


def load_state(path: str | os.PathLike) -> dict:
    """``torch.load`` a fairseq checkpoint file (unpickling: trusted files only) with clear errors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SerkitError(
            f"{path}: checkpoint not found; pass the local path of a fairseq HuBERT, "
            "wav2vec 2.0 or data2vec checkpoint (or make one with `serkit make-upstream`)"
        )
    try:
        with open(path, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise SerkitError(
            f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {first}); the "
            "file may be truncated or not a checkpoint: download or copy it again"
        ) from e
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise SerkitError(
            f"{path}: cannot be unpickled ({type(e).__name__}: {e}); the file may be "
            "truncated, or need a plugin that is not installed"
        ) from e
    if not isinstance(state, dict) or "model" not in state:
        raise SerkitError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    return state


def checkpoint_cfg(state: dict, path: str | os.PathLike) -> DictConfig:
    """The checkpoint's config as an OmegaConf config (``cfg``, or ``args`` converted)."""
    try:
        if state.get("cfg") is not None:
            cfg = _as_config(state["cfg"])
        elif state.get("args") is not None:
            cfg = _as_config(namespace_to_cfg(state["args"]))
        else:
            raise SerkitError(
                f"{path}: fairseq checkpoint without 'cfg' or 'args'; cannot tell which model it is"
            )
    except SerkitError as e:
        if str(path) in str(e):
            raise
        raise SerkitError(f"{path}: {e}") from e
    if cfg.get("model") is None or cfg.get("task") is None:
        raise SerkitError(f"{path}: the checkpoint's config has no model or task section")
    return cfg


@dataclass
class CtcProjection:
    """The output layer of a CTC-finetuned encoder: logits = proj(final_norm(last layer))."""

    weight: torch.Tensor
    bias: torch.Tensor
    norm_weight: torch.Tensor | None = None  # the encoder's final layer norm, applied by pre-LN models
    norm_bias: torch.Tensor | None = None
    blank_weight: float = 0.0
    blank_mode: str = "add"

    @property
    def num_outputs(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class SpeechCheckpoint:
    """A fairseq speech checkpoint, read once: what every serkit consumer needs from it."""

    path: str
    name: str  # cfg.model._name of the file (wav2vec_ctc for a CTC release)
    kind: str  # hubert | wav2vec2 | data2vec
    model_cfg: DictConfig  # the encoder's model config (the inner one for CTC releases)
    task_cfg: DictConfig  # the encoder's task config; normalize is the file's own task.normalize
    encoder_state: dict
    task_state: dict | None = None  # the encoder task's state (label dictionaries), when stored
    ctc: CtcProjection | None = None
    cfg: DictConfig | None = None
    top_keys: list[str] = field(default_factory=list)

    @property
    def normalize(self) -> bool:
        return bool(self.task_cfg.get("normalize", False))

    @property
    def num_layers(self) -> int:
        return int(self.model_cfg.get("encoder_layers"))


def read_checkpoint(path: str | os.PathLike, state: dict | None = None) -> SpeechCheckpoint:
    """Read a HuBERT / wav2vec 2.0 / data2vec checkpoint (pretrained or CTC-finetuned, any published form)."""
    from omegaconf import open_dict

    path = Path(path)
    if state is None:
        state = load_state(path)
    cfg = checkpoint_cfg(state, path)
    name = cfg.model.get("_name")
    weights = state["model"]
    ctc = None
    task_state = state.get("task_state")
    if name in CTC_MODELS:
        inner = cfg.model.get("w2v_args")
        if inner is None:
            raise SerkitError(
                f"{path}: '{name}' checkpoint without w2v_args (its encoder's config); fairseq would read "
                f"it from w2v_path={cfg.model.get('w2v_path')}: pass that pretrained checkpoint instead"
            )
        inner = _as_config(inner)
        model_cfg, task_cfg = inner.model, inner.task
        with open_dict(task_cfg):  # the finetuned model reads input scaled as its own task says
            task_cfg.normalize = bool(cfg.task.get("normalize", task_cfg.get("normalize", False)))
        encoder_state = {k[len(INNER_PREFIX) :]: v for k, v in weights.items() if k.startswith(INNER_PREFIX)}
        if f"{PROJ}weight" in weights:
            pre_ln = bool(model_cfg.get("layer_norm_first", False))
            ctc = CtcProjection(
                weights[f"{PROJ}weight"],
                weights[f"{PROJ}bias"],
                encoder_state.get("encoder.layer_norm.weight") if pre_ln else None,
                encoder_state.get("encoder.layer_norm.bias") if pre_ln else None,
                float(cfg.model.get("blank_weight", 0.0) or 0.0),
                str(cfg.model.get("blank_mode", "add")),
            )
        task_state = None  # the file's task state is the finetuning task's (letters), not the encoder's
    else:
        model_cfg, task_cfg = cfg.model, cfg.task
        encoder_state = dict(weights)
    enc_name = model_cfg.get("_name")
    kind = KINDS.get(enc_name)
    if kind is None and enc_name and str(enc_name).startswith("serkit_"):
        kind = "hubert"  # serkit's continued-pretraining model is a HuBERT subclass
    if kind is None:
        raise SerkitError(
            f"{path}: a fairseq '{name}' checkpoint (task '{cfg.task.get('_name')}'), not "
            "a speech SSL model; pass a HuBERT, wav2vec 2.0 or data2vec audio checkpoint"
        )
    if not encoder_state:
        raise SerkitError(f"{path}: '{name}' checkpoint without encoder weights ({INNER_PREFIX}...)")
    return SpeechCheckpoint(
        str(path), name, kind, model_cfg, task_cfg, encoder_state, task_state, ctc, cfg, sorted(state)
    )


def rename_weight_norm(weights: dict, model_keys: Iterable[str]) -> dict:
    """Rename weight-norm entries to the naming of ``model_keys`` (legacy weight_g/v or parametrizations)."""
    model_keys = set(model_keys)
    out = {}
    for k, v in weights.items():
        if k not in model_keys:
            for legacy, param in WEIGHT_NORM_NAMES:
                for a, b in ((legacy, param), (param, legacy)):
                    if k.endswith("." + a) and k[: -len(a)] + b in model_keys:
                        k = k[: -len(a)] + b
        out[k] = v
    return out


def _dictionary(size: int) -> object:  # a fairseq Dictionary (fairseq is not imported here)
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(str(i))
    return d


def build_encoder(ck: SpeechCheckpoint, label_embeddings: bool = True, load: bool = True) -> torch.nn.Module:
    """The fairseq encoder model of ``ck`` (HubertModel, Wav2Vec2Model, Data2VecAudioModel), weights loaded.

    No data is read: a HuBERT's label dictionaries come from the checkpoint's ``task_state`` or are sized
    from ``label_embs_concat``; ``label_embeddings=False`` builds it without them (fine-tuning use).
    """
    from fairseq import tasks

    register_models()
    task_cfg = ck.task_cfg.copy()
    try:
        task = tasks.setup_task(task_cfg, from_checkpoint=True)
    except Exception as e:  # noqa: BLE001
        raise SerkitError(
            f"{ck.path}: fairseq cannot set up its task '{task_cfg.get('_name')}' ({type(e).__name__}: {e})"
        ) from e
    if task_cfg.get("_name") == "hubert_pretraining":
        key = "target_dictionary" if task_cfg.get("fine_tuning") else "dictionaries"
        if not label_embeddings or "label_embs_concat" not in ck.encoder_state:
            dicts = None if key == "target_dictionary" else [None]
        elif ck.task_state and ck.task_state.get(key) is not None:
            dicts = ck.task_state[key]
        else:
            dicts = [_dictionary(ck.encoder_state["label_embs_concat"].size(0))]
        task.state.merge_state_dict({key: dicts})
    name = ck.model_cfg.get("_name")
    try:
        model = task.build_model(ck.model_cfg, from_checkpoint=True)
    except KeyError as e:
        hint = (
            " (data2vec audio is in fairseq's examples package: is it importable?)"
            if name == "data2vec_audio"
            else "; if it is a serkit_* model, serkit.fairseq_ext must be importable"
        )
        raise SerkitError(f"{ck.path}: fairseq has no model '{name}' registered{hint}") from e
    for attr in ("feature_extractor", "encoder", "layer_norm"):
        if not hasattr(model, attr):
            raise SerkitError(f"{ck.path}: model '{name}' has no {attr}; not a wav2vec-style encoder")
    if load:
        load_encoder_weights(model, ck.encoder_state, ck.path)
    return model


#: weights only the pretraining objective uses; an encoder may lack them, or have them re-initialised
PRETRAINING_ONLY = (
    "label_embs_concat",
    "final_proj.",
    "target_glu.",
    "quantizer.",
    "project_q.",
    "project_inp.",
    "_ema",
)


def load_encoder_weights(model: torch.nn.Module, weights: dict, path: str = "") -> None:
    """Load ``weights`` into ``model``; every encoder weight must be there, pretraining heads may not."""
    own = model.state_dict()
    weights = rename_weight_norm(weights, own)
    kept = {k: v for k, v in weights.items() if k in own}
    shape = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in kept.items() if v.shape != own[k].shape
    ]
    if shape:
        raise SerkitError(
            f"{path}: weights do not fit the model its config describes ({'; '.join(shape[:3])})"
        )
    missing = [k for k in own if k not in kept and not k.startswith(PRETRAINING_ONLY)]
    if missing:
        raise SerkitError(
            f"{path}: checkpoint lacks weights the encoder needs ({', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}); is it complete?"
        )
    model.load_state_dict(kept, strict=False)
    ignored = sorted(set(weights) - set(kept))
    if ignored:
        log.debug("%s: ignored %d checkpoint entries (%s ...)", path, len(ignored), ignored[:3])


def load_encoder(path: str | os.PathLike) -> tuple[SpeechCheckpoint, torch.nn.Module]:
    """``(checkpoint, encoder model with its weights)`` of a fairseq speech checkpoint, for extraction."""
    require_fairseq(path)
    register_models()
    ck = read_checkpoint(path)
    return ck, build_encoder(ck)


def encoder_config(path: str | os.PathLike) -> tuple[DictConfig, dict]:
    """``(upstream_cfg {model, task}, encoder weights)`` of a checkpoint file, for finetuning.

    ``upstream_cfg`` is what a finetuned model stores to rebuild its encoder without the file
    (:func:`build_finetuning_encoder`); a ``serkit_hubert`` CPT model is marked initialised, its weights
    being all in the file.
    """
    from omegaconf import OmegaConf

    ck = read_checkpoint(path)
    upstream_cfg = OmegaConf.create(
        {
            "model": OmegaConf.to_container(ck.model_cfg, resolve=True),
            "task": OmegaConf.to_container(ck.task_cfg, resolve=True),
        }
    )
    if "init_from" in upstream_cfg.model:
        upstream_cfg.model.init_from = None
        upstream_cfg.model.init_done = True
    return upstream_cfg, ck.encoder_state


def build_finetuning_encoder(
    upstream_cfg: DictConfig, weights: dict | None = None, path: str = ""
) -> torch.nn.Module:
    """The encoder ``upstream_cfg`` describes, pretraining-only parts removed; ``weights`` loaded if given."""
    name = upstream_cfg.model.get("_name")
    ck = SpeechCheckpoint(path, name, "", upstream_cfg.model, upstream_cfg.task, {})
    model = build_encoder(ck, label_embeddings=False, load=False)
    if hasattr(model, "remove_pretraining_modules"):
        model.remove_pretraining_modules()
    if weights is not None:
        kept = {k: v for k, v in weights.items() if not k.startswith(PRETRAINING_ONLY)}
        load_encoder_weights(model, kept, path)
    return model


__all__ = [
    "CtcProjection",
    "SpeechCheckpoint",
    "build_encoder",
    "build_finetuning_encoder",
    "checkpoint_cfg",
    "encoder_config",
    "load_encoder",
    "load_encoder_weights",
    "load_state",
    "namespace_to_cfg",
    "read_checkpoint",
    "register_models",
    "rename_weight_norm",
    "require_fairseq",
    "trusted_unpickling",
]
