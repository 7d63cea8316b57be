"""Write the upstream of a finetuned fold back as a fairseq checkpoint.

FLEA's teacher is an upstream finetuned for SER; its layer L is then dumped and clustered. The
finetuned weights live in the fold's SpeechBrain checkpoint; ``export_upstream`` puts them into a copy
of the original fairseq checkpoint (same ``cfg``, training state dropped), so every tool that takes a
fairseq upstream (``serkit dump-features``, ``load_upstream``, ``fairseq-hydra-train``'s
``model.init_from``) takes the teacher too.

    serkit export-upstream --exp exp/teacher/fold1 --out exp/teacher/fold1/upstream.pt
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..utils import SerkitError, atomic_file, check_not_input, claim_output_file, torch_file_strings

log = logging.getLogger("serkit.speechbrain")


def is_export(path: Path) -> bool:
    """``path`` is a checkpoint ``export_upstream`` wrote (its ``extra_state.serkit_export``)."""
    return "serkit_export" in torch_file_strings(path)


def export_upstream(exp: str | Path, out: str | Path, checkpoint: str = "best") -> Path:
    """Save the finetuned upstream of fold ``exp`` as a fairseq checkpoint at ``out``."""
    import torch

    from serkit.upstream.checkpoint import load_state

    from .interface import EmotionClassifier, read_train_info

    info = read_train_info(exp)
    if info.get("setting") != "finetune":
        raise SerkitError(
            f"{Path(exp) / 'train_info.json'}: setting is {info.get('setting')!r}; only a "
            "finetuned upstream can be exported (train with --upstream, without --feats)"
        )
    upstream = info.get("upstream")
    if upstream and os.path.realpath(out) == os.path.realpath(upstream):
        raise SerkitError(
            f"--out {out}: is the upstream the fold was trained from ({upstream}); exporting "
            "there would replace it. Nothing was written: choose another --out"
        )
    claim_output_file(out, is_export, "an upstream `serkit export-upstream` wrote")
    clf = EmotionClassifier.from_hparams(source=exp, checkpoint=checkpoint)
    check_not_input(out, [clf.checkpoint.path, Path(exp) / "train_info.json", Path(exp) / "hyperparams.yaml"])
    state = load_state(info["upstream"])
    tuned = clf.finetuned_upstream.model.state_dict()
    missing = sorted(set(state["model"]) - set(tuned))
    if missing:
        raise SerkitError(
            f"{info['upstream']}: the finetuned model lacks {missing[:3]}...; was the fold "
            "trained from this checkpoint?"
        )
    state["model"] = {k: v.detach().cpu().clone() for k, v in tuned.items() if k in state["model"]}
    state["last_optimizer_state"] = None
    epoch = clf.checkpoint.meta.get("epoch")
    state["extra_state"] = {
        "serkit_export": {
            "from": str(Path(exp).resolve()),
            "checkpoint": str(clf.checkpoint.path),
            "epoch": epoch,
        }
    }
    with atomic_file(out, "wb") as f:
        torch.save(state, f)
    log.info("exported the finetuned upstream of %s (epoch %s) -> %s", exp, epoch, out)
    return Path(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp", required=True, help="a finetuned fold's output folder (serkit train --upstream)")
    p.add_argument("--out", required=True, help="fairseq checkpoint to write (.pt)")
    p.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default="best",
        help="the validation-best checkpoint (default) or the last one",
    )


def run(args: argparse.Namespace) -> int:
    export_upstream(args.exp, args.out, args.checkpoint)
    return 0
