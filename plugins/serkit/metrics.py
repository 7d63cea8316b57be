"""Utterance-level SER metrics, named the way this field reports them.

- UA (unweighted accuracy) = macro-averaged recall (balanced accuracy); the IEMOCAP headline.
- WA (weighted accuracy) = plain accuracy over utterances.
- macro-F1, weighted F1 (WF1, MELD's headline), the confusion matrix (rows = reference, columns =
  prediction, in class-list order) and per-class recall.

Classes absent from the references do not count towards UA (recall is undefined for them); the
list of classes that were absent is reported so a reader can tell.

>>> m = compute_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
>>> round(m["ua"], 3), round(m["wa"], 3)
(0.75, 0.75)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def compute_metrics(labels: Sequence[str], preds: Sequence[str], classes: Sequence[str]) -> dict:
    """Metrics for one set of predictions; all rates are fractions in [0, 1]."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    if not labels:
        raise ValueError("no utterances to score")
    unknown = sorted(set(labels) - set(classes)) + sorted(set(preds) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the class list {list(classes)}")
    present = [c for c in classes if c in set(labels)]
    cm = confusion_matrix(labels, preds, labels=list(classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = cm.diagonal() / cm.sum(axis=1)
    return {
        "ua": float(balanced_accuracy_score(labels, preds))
        if len(present) > 1
        else float(np.nanmean(recall)),
        "wa": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(labels, preds, labels=present, average="weighted", zero_division=0)),
        "recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(classes, recall)},
        "confusion": cm.tolist(),
        "classes": list(classes),
        "absent_classes": [c for c in classes if c not in present],
        "n": len(labels),
    }
