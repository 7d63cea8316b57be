"""Write per-utterance emotion predictions of a ``serkit_ser_model`` checkpoint for one split of a fold.

    python -m serkit.fairseq_ext.predict --checkpoint OUT/checkpoint_best.pt --fold FOLD --split test \\
        --out OUT/predictions/test.best.tsv

The output is the predictions TSV of docs/interfaces.md (header ``utt label pred <class probabilities>``,
rows in the order of ``FOLD/<split>.tsv``). The upstream is rebuilt from the checkpoint itself (its
``upstream_path`` need not exist any more). The fold must have the classes the model was trained on.

``fairseq-hydra-train`` with ``task.predictions_dir`` already writes these files for every epoch (the
recipe's route); this command is for a given checkpoint, e.g. after multi-GPU training.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils import SerkitError, setup_logging

if TYPE_CHECKING:
    from .ser_model import SerModel
    from .ser_task import SerTask

log = logging.getLogger("serkit.fairseq_ext")


def load_ser_checkpoint(
    checkpoint: str | os.PathLike, fold: str | os.PathLike | None = None, device: str = "cpu"
) -> tuple[SerModel, SerTask]:
    """``(model, task)`` of a ``serkit_ser_model`` checkpoint, in eval mode, reading data from ``fold``."""
    from fairseq import checkpoint_utils

    import serkit.fairseq_ext  # noqa: F401  (registers serkit_* before the checkpoint is unpickled)

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise SerkitError(f"{checkpoint}: checkpoint not found")
    overrides = {"data": str(Path(fold).resolve())} if fold is not None else None
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides=overrides
        )
    except SerkitError:
        raise
    except Exception as e:  # noqa: BLE001 - fairseq raises many kinds on foreign files
        raise SerkitError(
            f"{checkpoint}: cannot load as a fairseq checkpoint ({type(e).__name__}: {e})"
        ) from e
    if cfg.task.get("_name") != "serkit_ser":
        raise SerkitError(
            f"{checkpoint}: a '{cfg.task.get('_name')}' checkpoint; predict needs one trained "
            "with task serkit_ser (ser_finetune.yaml)"
        )
    model = models[0].to(device).eval()
    return model, task


def predict_split(
    model: SerModel,
    task: SerTask,
    split: str,
    out: str | os.PathLike,
    batch_size: int = 8,
    device: str = "cpu",
) -> Path:
    """Run ``model`` on ``split`` of the task's fold and write the predictions TSV to ``out``."""
    import numpy as np
    import torch
    from fairseq import utils as fairseq_utils

    from .ser_task import write_predictions

    fold_classes = task._read_classes()
    if fold_classes != task.classes:
        raise SerkitError(
            f"{task.cfg.data}: classes {fold_classes} differ from the checkpoint's "
            f"{task.classes}; "
            "predict on a fold of the same protocol"
        )
    task.load_dataset(split)
    dataset = task.dataset(split)
    order = np.argsort(dataset.sizes, kind="stable")  # similar lengths together: less padding
    probs: list = [None] * len(dataset)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = dataset.collater([dataset[int(i)] for i in order[start : start + batch_size]])
            batch = fairseq_utils.move_to_cuda(batch) if device.startswith("cuda") else batch
            logits = model(**batch["net_input"])["logits"].float()
            for i, p in zip(batch["id"].tolist(), torch.softmax(logits, -1).cpu().tolist()):
                probs[i] = p
    out = Path(out)
    write_predictions(out, dataset.utts, dataset.labels, probs, task.classes)
    log.info("wrote %s: %d utterances of %s/%s", out, len(dataset), task.cfg.data, split)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serkit.fairseq_ext.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a serkit_ser_model checkpoint (fairseq .pt)")
    parser.add_argument(
        "--fold", required=True, help="fold directory (serkit split) holding <split>.tsv/.emo"
    )
    parser.add_argument("--split", default="test", help="split to predict (default: test)")
    parser.add_argument("--out", required=True, help="predictions TSV to write")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        model, task = load_ser_checkpoint(args.checkpoint, args.fold, args.device)
        predict_split(model, task, args.split, args.out, args.batch_size, args.device)
    except SerkitError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
