"""Train a serkit head (or finetune an upstream) on one fold from a HyperPyYAML file.

Usage::

    serkit train HPARAMS --fold-dir FOLD --output-folder EXP/<run>/fold<k> \\
        (--feats FEATS_DIR | --upstream CKPT) [--overlay FILE ...] [--key value ...]
    python -m serkit.speechbrain.train HPARAMS.yaml ...            # the same
    torchrun --nproc_per_node N -m serkit.speechbrain.train ...    # SpeechBrain DDP (gloo on CPU)

Settings:

- ``--feats DIR`` (a ``serkit dump-features`` output): **featex**, the upstream stays frozen; the head
  sees a learnable weighted sum of the cached layers. ``--upstream`` is then optional (the features'
  own upstream, recorded in their ``meta.json``, is what ``serkit predict`` runs on new audio).
- ``--upstream CKPT`` alone: **finetune**, the upstream's transformer is trained with the head, its
  CNN frozen (``upstream_freeze_cnn``); the layers in ``upstream_layers`` feed the head.

``HPARAMS`` is a yaml file or the name of a config shipped with serkit (``serkit config`` lists them):
``serkit train shiftser --method shiftcnn ...`` trains ShiftSER's ShiftCNN, the head's own settings
coming from the head registry. ``--overlay FILE`` (repeatable; a file or a shipped name) is a plain
yaml mapping of overrides applied before the command line's, e.g. ``--overlay mfsn_mini`` for the
CPU-sized MFSN; like ``--key value``, it may only set keys the config has.

``input_dim``, ``num_layers`` and ``num_classes`` are filled in from the features / upstream and the
fold's ``dict.emo.txt``; any other key of the yaml can be overridden with ``--key value``, SpeechBrain
run options too (``--device cuda:0``, ``--precision bf16``, ``--distributed_backend nccl``).

Writes ``<output_folder>/``: ``hyperparams.yaml`` (the resolved config), ``train_info.json``,
``train_log.txt``, ``predictions/{valid,test}.epoch<NNN>.tsv``, ``save/CKPT+*`` (the latest and the
best-on-validation checkpoints); BAS search also ``search_log.jsonl``, ``search_probs.png``, ``arch.txt``.
A killed run started again with the same command resumes where its last checkpoint left off (the
next epoch, or mid-epoch with SpeechBrain's ``--ckpt_interval_steps N`` / ``--ckpt_interval_minutes M``)
and ends bit-identical, on CPU, to a run that was never interrupted (see serkit.speechbrain.brain).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils import SerkitError, setup_logging

if TYPE_CHECKING:
    import torch
    import yaml
    from speechbrain.utils.run_opts import RunOptions

log = logging.getLogger("serkit.speechbrain")

#: Keys ``serkit train`` fills in; a yaml declares them as ``!PLACEHOLDER``.
DERIVED_KEYS = ("output_folder", "num_classes", "input_dim", "num_layers")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serkit train",
        allow_abbrev=False,
        description="Train a SER head on cached features (featex) or finetune an upstream (finetune) on one "
        "fold. Unknown --key value pairs override the yaml (HyperPyYAML) or set SpeechBrain run "
        "options.",
    )
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "hparams",
        help="HyperPyYAML file, or a config shipped with serkit by name (`serkit "
        "config` lists them), e.g. shiftser (with --method shiftcnn)",
    )
    p.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="FILE",
        help="yaml mapping of overrides (a file or a shipped name, e.g. mfsn_mini) applied "
        "before the command line's --key value pairs; repeatable, later ones win",
    )
    p.add_argument(
        "--fold-dir", help="fold directory from `serkit split` (train/valid/test.json, dict.emo.txt)"
    )
    p.add_argument("--output-folder", help="where this fold's run goes, e.g. exp/shiftcnn/fold1")
    p.add_argument("--feats", help="cached features from `serkit dump-features` (featex setting)")
    p.add_argument(
        "--upstream",
        help="fairseq checkpoint: finetuned (finetune setting) unless --feats is "
        "given; default for --feats: the features' own upstream",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write the per-epoch losses and metrics as TensorBoard events to DIR "
        "(SpeechBrain's TensorboardLogger; needs serkit[tensorboard])",
    )


_PLACEHOLDER = object()


def _peek_yaml(path: str, placeholders: bool = False) -> dict:
    """Plain values of a HyperPyYAML file without building anything (tags read as None; with
    ``placeholders``, a ``!PLACEHOLDER`` reads as the marker ``_PLACEHOLDER``)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object | None:
        return _PLACEHOLDER if placeholders and suffix == "PLACEHOLDER" else None

    Loader.add_multi_constructor("!", tagged)
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=Loader) or {}


def resolve_config(name: str, what: str = "hparams file") -> str:
    """The path of ``name``: an existing file, else a config shipped with serkit by name (``shiftser``,
    ``mfsn_mini``, ``flea``; see serkit.resources)."""
    if Path(name).is_file():
        return name
    from ..resources import find_config

    try:
        return str(find_config(name))
    except SerkitError as e:
        raise SerkitError(f"{name}: no such {what}, nor a config shipped with serkit ({e})") from None


def _read_overlay(path: str) -> dict:
    """An overlay: a plain yaml mapping of overrides (no tags: nothing in it is built or run)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise SerkitError(
            f"{path}: not a plain yaml overlay ({str(e).splitlines()[0]}); an overlay holds "
            "`key: value` lines only"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SerkitError(
            f"{path}: an overlay is a mapping of `key: value` overrides, not {type(data).__name__}"
        )
    return data


def _parse(argv: list[str]) -> tuple[argparse.Namespace, RunOptions, dict]:
    import speechbrain as sb
    import yaml

    args, rest = build_parser().parse_known_args(argv)
    for opt in ("fold_dir", "output_folder"):
        if not getattr(args, opt):
            raise SerkitError(f"serkit train: --{opt.replace('_', '-')} is required")
    if not args.feats and not args.upstream:
        raise SerkitError(
            "serkit train: give --feats DIR (train on cached features) or --upstream CKPT "
            "(finetune the upstream)"
        )
    args.hparams = resolve_config(args.hparams)
    args.overlay = [resolve_config(o, "overlay file") for o in args.overlay]
    if args.tensorboard:  # before anything is written
        from .brain import require_tensorboard

        require_tensorboard()
    _, run_opts, overrides = sb.parse_arguments([args.hparams, *rest])
    overrides = yaml.safe_load(overrides) if overrides else {}
    known = _peek_yaml(args.hparams)
    layered = {}
    for overlay in args.overlay:
        values = _read_overlay(overlay)
        unknown = [k for k in values if k not in known]
        if unknown:
            raise SerkitError(
                f"{overlay}: no key {unknown} in {args.hparams} to override; an overlay may "
                "only set the config's keys"
            )
        layered.update(values)
    overrides = {**layered, **(overrides or {})}
    bad = [k for k in DERIVED_KEYS if k in overrides]
    if bad:
        raise SerkitError(
            f"serkit train: {bad} are set from --fold-dir/--output-folder/--feats/--upstream; "
            "do not override them"
        )
    unknown = [k for k in overrides if k not in known]
    if unknown:  # before anything is written: a mis-spelled option must not silently do nothing
        raise SerkitError(f"{args.hparams}: no key {unknown} to override; its keys are {sorted(known)}")
    missing = [
        k
        for k, v in _peek_yaml(args.hparams, placeholders=True).items()
        if v is _PLACEHOLDER and k not in DERIVED_KEYS and k not in overrides
    ]
    if missing:
        raise SerkitError(
            f"{args.hparams}: give {', '.join('--' + k for k in missing)} (the config leaves "
            f"{'it' if len(missing) == 1 else 'them'} to the command line)"
        )
    return args, run_opts, overrides


FINETUNE_OPTIMIZERS = ("paper", "featex")


def _select_optimizer(hparams: dict, setting: str, where: str) -> Callable[..., torch.optim.Optimizer]:
    """The optimiser class for this run; in the finetune setting ``finetune_optimizer: paper`` takes
    ``finetune_opt_class`` and ``finetune_lr_schedule`` (replacing ``lr_schedule``), ``featex`` the
    feature-extraction ones (``opt_class``, ``lr_schedule``) for the upstream and the head alike."""
    choice = str(hparams.get("finetune_optimizer", "featex"))
    if choice not in FINETUNE_OPTIMIZERS:
        raise SerkitError(f"{where}: finetune_optimizer {choice!r} is not one of {list(FINETUNE_OPTIMIZERS)}")
    if setting != "finetune" or choice == "featex":
        return hparams["opt_class"]
    missing = [k for k in ("finetune_opt_class", "finetune_lr_schedule") if k not in hparams]
    if missing:
        raise SerkitError(f"{where}: finetune_optimizer: paper needs {missing} in the yaml")
    hparams["lr_schedule"] = hparams["finetune_lr_schedule"]
    return hparams["finetune_opt_class"]


def _featex_layers(spec: str | int | Iterable[int] | None, layers: list[int], where: str) -> list[int] | None:
    """Positions in the cached layers (``layers``, upstream layer numbers) that ``featex_layers`` keeps:
    ``all`` (None: every layer, summed with learned weights), ``last``, a layer number or a list of them."""
    if spec is None or spec == "all":
        return None
    if spec == "last":
        return [len(layers) - 1]
    if isinstance(spec, int):
        wanted = [spec]
    elif isinstance(spec, str):
        wanted = [int(s) for s in spec.strip("[]").split(",") if s.strip()]
    else:
        wanted = [int(s) for s in spec]
    missing = [w for w in wanted if w not in layers]
    if missing or not wanted:
        raise SerkitError(
            f"featex_layers {spec!r}: layers {missing or spec} are not among the cached layers "
            f"{layers} of {where}"
        )
    return [layers.index(w) for w in wanted]


def prepare_run_opts(run_opts: RunOptions) -> RunOptions:
    """Pick gloo for DDP and the CPU as device when there is no GPU (SpeechBrain defaults to NCCL)."""
    import dataclasses

    import torch

    changes = {}
    if not torch.cuda.is_available():
        if "distributed_backend" not in run_opts.overridden_args:
            changes["distributed_backend"] = "gloo"
        if "device" not in run_opts.overridden_args:
            changes["device"] = "cpu"
    if not changes:
        return run_opts
    overridden = set(run_opts.overridden_args) | set(changes)
    return dataclasses.replace(run_opts, **changes, overridden_args=overridden)


def main(argv: list[str] | None = None) -> int:
    import speechbrain as sb
    from hyperpyyaml import load_hyperpyyaml

    from ..data.manifest import read_classes
    from .brain import SERBrain
    from .checkpoints import atomic
    from .dataio import fold_datasets, split_order
    from .lobes import FairseqUpstream

    args, run_opts, overrides = _parse(sys.argv[1:] if argv is None else argv)
    run_opts = prepare_run_opts(run_opts)
    sb.utils.distributed.ddp_init_group(run_opts)

    fold_dir = Path(args.fold_dir).resolve()
    output_folder = Path(args.output_folder).resolve()
    classes = read_classes(fold_dir)
    peek = {**_peek_yaml(args.hparams), **overrides}
    if peek.get("method") == "bas" and "arch" in peek and not peek["arch"]:
        raise SerkitError(
            f"{args.hparams}: --method bas retrains a searched architecture: give --arch "
            "(the bas_search run's arch.txt, e.g. --arch ffn,msa,msa_ffn,msa)"
        )
    import torch.distributed as dist

    from ..distributed import per_process_batch

    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if "batch_size" not in peek:
        raise SerkitError(f"{args.hparams}: no batch_size key (dataloaders: batch_size: !ref <batch_size>)")
    batch_size = per_process = int(peek["batch_size"])
    if world_size > 1:  # each process takes its share, so one update sees the single-process batch
        overrides["batch_size"] = per_process = per_process_batch(batch_size, world_size, str(args.hparams))
        if peek.get("max_batch_length") is not None:
            overrides["max_batch_length"] = float(peek["max_batch_length"]) / world_size

    upstream_lobe = None
    reader = None
    feature_layers = None
    if args.feats:
        from serkit.upstream.features import FeatureReader

        setting = "featex"
        reader = FeatureReader(args.feats)
        input_dim, num_layers = int(reader.dim), len(reader.layers)
        meta = dict(getattr(reader, "meta", {}) or {})
        upstream_path = args.upstream or meta.get("upstream")
        feature_layers = _featex_layers(peek.get("featex_layers", "all"), list(reader.layers), args.feats)
        upstream_layers = list(reader.layers)
        if feature_layers is not None:
            upstream_layers = [reader.layers[i] for i in feature_layers]
        num_layers = len(upstream_layers)
        normalize = meta.get("normalize")
    else:
        setting = "finetune"
        upstream_lobe = FairseqUpstream(
            args.upstream,
            freeze_cnn=bool(peek.get("upstream_freeze_cnn", True)),
            freeze=bool(peek.get("upstream_freeze", False)),
            layers=peek.get("upstream_layers", "last"),
            mask_time_prob=float(peek.get("upstream_mask_time_prob", 0.0)),
            mask_time_length=int(peek.get("upstream_mask_time_length", 10)),
            output_dropout=float(peek.get("upstream_output_dropout", 0.0)),
        )
        input_dim, num_layers = upstream_lobe.dim, upstream_lobe.num_layers
        upstream_path, upstream_layers = args.upstream, upstream_lobe.layers
        normalize = upstream_lobe.upstream.normalize
    if upstream_path and str(upstream_path) != "mfcc":
        upstream_path = str(Path(upstream_path).resolve())

    overrides.update(
        output_folder=str(output_folder),
        num_classes=len(classes),
        input_dim=int(input_dim),
        num_layers=int(num_layers),
    )
    created = not output_folder.exists()
    sb.create_experiment_directory(
        experiment_directory=str(output_folder), hyperparams_to_save=args.hparams, overrides=overrides
    )
    with open(args.hparams, encoding="utf-8") as f:
        try:
            hparams = load_hyperpyyaml(f, overrides)
        except TypeError as e:  # a head option set for a head without it (one yaml serves a family)
            if "unexpected keyword argument" not in str(e):
                raise
            if created:  # made by this call a moment ago, holding only the config it copied: leave no trace
                shutil.rmtree(output_folder)
            raise SerkitError(
                f"{args.hparams}: {e.args[-1]}: that option is not one of this head's "
                "(--method); leave it null"
            ) from None

    crop_opts = {
        "max_duration": hparams.get("max_duration"),
        "crop": hparams.get("crop", "start"),
        "pad_to_max": bool(hparams.get("pad_to_max", False)),
    }
    # A method with its own items (MFSN: 3-second segments of two feature dumps) names its builder.
    builder = hparams.get("fold_datasets")
    try:
        if builder is not None:
            datasets, classes = builder(fold_dir, reader)
        else:
            datasets, classes = fold_datasets(fold_dir, reader, feature_layers=feature_layers, **crop_opts)
    except SerkitError as e:
        raise SerkitError(f"{args.hparams}: {e}") from None
    modules = dict(hparams["modules"])
    opt_class = _select_optimizer(hparams, setting, args.hparams)
    checkpointer = atomic(hparams["checkpointer"])
    if upstream_lobe is not None:
        modules["upstream"] = upstream_lobe
        checkpointer.add_recoverable("upstream", upstream_lobe)

    info = {
        "method": hparams.get("method"),
        "setting": setting,
        "hparams": str(Path(args.hparams).resolve()),
        "overlays": [str(Path(o).resolve()) for o in args.overlay],
        "hparams_resolved": str(output_folder / "hyperparams.yaml"),
        "fold_dir": str(fold_dir),
        "upstream": upstream_path,
        "upstream_layers": [int(x) for x in upstream_layers],
        "upstream_normalize": normalize,
        "upstream_freeze_cnn": bool(peek.get("upstream_freeze_cnn", True)) if setting == "finetune" else None,
        "feats": str(Path(args.feats).resolve()) if args.feats else None,
        "classes": classes,
        "epochs": int(hparams["number_of_epochs"]),
        "epochs_run": 0,
        "seed": hparams.get("seed"),
        "batching": str(hparams.get("batching", "random")),
        "selection": hparams.get("selection", "valid"),
        "best_metric": hparams.get("best_metric", "ua"),
        "world_size": world_size,
        "batch_size": batch_size,
        "batch_size_per_process": per_process,
        "finetune_optimizer": hparams.get("finetune_optimizer", "featex") if setting == "finetune" else None,
        **crop_opts,
    }
    previous = output_folder / "train_info.json"
    if previous.is_file():  # resuming: keep the count of epochs already run
        import json

        info["epochs_run"] = json.loads(previous.read_text(encoding="utf-8")).get("epochs_run", 0)

    brain_class = hparams.get("brain_class", SERBrain)  # a SERBrain subclass (MFSN's)
    brain = brain_class(
        modules=modules, opt_class=opt_class, hparams=hparams, run_opts=run_opts, checkpointer=checkpointer
    )
    brain.classes = classes
    brain.orders = {split: split_order(fold_dir, split) for split in ("valid", "test")}
    brain.test_set = datasets["test"]
    brain.train_info = info
    info["effective_batch_size"] = per_process * world_size * int(brain.grad_accumulation_factor)
    log.info(
        "batch per update: %d per process x %d process%s x grad_accumulation_factor %d = %d",
        per_process,
        world_size,
        "es" if world_size > 1 else "",
        brain.grad_accumulation_factor,
        info["effective_batch_size"],
    )
    if args.tensorboard:
        from .brain import tensorboard_logger

        brain.tensorboard = tensorboard_logger(Path(args.tensorboard).resolve())
        info["tensorboard"] = str(Path(args.tensorboard).resolve())
    log.info(
        "%s: %s setting, %d classes, %d/%d/%d train/valid/test utterances, input %d x %d layers -> %s",
        info["method"],
        setting,
        len(classes),
        len(datasets["train"]),
        len(datasets["valid"]),
        len(datasets["test"]),
        input_dim,
        num_layers,
        output_folder,
    )
    train_loader_kwargs = dict(hparams["train_dataloader_opts"])
    if hparams.get("class_balanced_sampler"):
        from .dataio import class_balanced_sampler

        train_loader_kwargs.pop("shuffle", None)
        train_loader_kwargs["sampler"] = brain.train_sampler = class_balanced_sampler(
            datasets["train"], seed=int(hparams.get("seed") or 0)
        )
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=train_loader_kwargs,
        valid_loader_kwargs=dict(hparams["valid_dataloader_opts"]),
    )
    if sb.utils.distributed.if_main_process():
        from ..utils import write_json

        info["epochs_run"] = int(hparams["epoch_counter"].current)
        write_json(output_folder / "train_info.json", info)
        log.info("done: %d epochs; predictions in %s", info["epochs_run"], output_folder / "predictions")
    return 0


def run(args: argparse.Namespace) -> int:
    """``serkit train`` (see serkit.speechbrain.cli)."""
    argv = [args.hparams]
    for opt in ("fold_dir", "output_folder", "feats", "upstream", "tensorboard"):
        if getattr(args, opt, None):
            argv += [f"--{opt.replace('_', '-')}", getattr(args, opt)]
    for overlay in getattr(args, "overlay", None) or []:
        argv += ["--overlay", overlay]
    argv += list(args.overrides)
    from ..distributed import NPROC_ENV, torchrun_command

    relaunch = torchrun_command("serkit.speechbrain.train", argv)
    if relaunch is not None:  # a job with several GPUs (local/backend_slurm.sh): SpeechBrain DDP
        log.info("%s=%s: %s", NPROC_ENV, os.environ[NPROC_ENV], " ".join(relaunch))
        sys.stdout.flush(), sys.stderr.flush()
        os.execv(relaunch[0], relaunch)
    return main(argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    setup_logging()
    try:
        sys.exit(main())
    except SerkitError as e:
        log.error("%s", e)
        sys.exit(2)
