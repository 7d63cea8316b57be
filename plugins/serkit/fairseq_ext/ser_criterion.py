"""``serkit_ser_ce``: cross entropy for utterance-level emotion classes, logging UA and WA.

UA (unweighted accuracy: the mean of per-class recalls, "macro recall") and WA (weighted accuracy:
plain accuracy) are computed from per-class correct/total counts summed over every batch of a pass,
so a validation value is the value of the whole subset, not a mean of per-batch values. Classes absent
from a subset do not enter its UA. Both are logged in percent; ``loss`` is the mean cross entropy per
utterance in bits (fairseq's convention).
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from fairseq.logging.meters import MetersDict
from fairseq.models import BaseFairseqModel
from fairseq.tasks import FairseqTask


@dataclass
class SerCrossEntropyConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the cross entropy"})


def _ua(meters: MetersDict) -> float:
    recalls = []
    k = 0
    while f"_total_{k}" in meters:
        total = meters[f"_total_{k}"].sum
        if total > 0:
            recalls.append(meters[f"_correct_{k}"].sum / total)
        k += 1
    return round(100.0 * sum(recalls) / len(recalls), 2) if recalls else float("nan")


def _wa(meters: MetersDict) -> float:
    correct = total = 0
    k = 0
    while f"_total_{k}" in meters:
        correct += meters[f"_correct_{k}"].sum
        total += meters[f"_total_{k}"].sum
        k += 1
    return round(100.0 * correct / total, 2) if total else float("nan")


@register_criterion("serkit_ser_ce", dataclass=SerCrossEntropyConfig)
class SerCrossEntropy(FairseqCriterion):
    def __init__(self, task: FairseqTask, label_smoothing: float = 0.0) -> None:
        super().__init__(task)
        self.label_smoothing = label_smoothing

    def forward(
        self, model: BaseFairseqModel, sample: dict, reduce: bool = True
    ) -> tuple[torch.Tensor, int, dict]:
        net_output = model(**sample["net_input"])
        logits = net_output["logits"].float()
        target = sample["target"]
        loss = F.cross_entropy(
            logits, target, reduction="sum" if reduce else "none", label_smoothing=self.label_smoothing
        )
        batch = target.numel()
        logging_output = {
            "loss": loss.item() if reduce else loss.detach(),
            "ntokens": batch,
            "nsentences": batch,
            "sample_size": batch,
        }
        with torch.no_grad():
            pred = logits.argmax(-1)
            for k in range(logits.size(-1)):
                is_k = target == k
                logging_output[f"_correct_{k}"] = int((is_k & (pred == k)).sum())
                logging_output[f"_total_{k}"] = int(is_k.sum())
            if not model.training:  # per-utterance probabilities for the task's prediction files
                logging_output["_probs"] = torch.softmax(logits, dim=-1).cpu()
        return loss, batch, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: list[dict]) -> None:
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        if sample_size:
            metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        keys = sorted({k for log in logging_outputs for k in log if k.startswith(("_correct_", "_total_"))})
        for key in keys:
            metrics.log_scalar_sum(key, sum(log.get(key, 0) for log in logging_outputs))
        if keys:
            metrics.log_derived("ua", _ua)
            metrics.log_derived("wa", _wa)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return False  # validation outputs carry a probability tensor until the task takes it
