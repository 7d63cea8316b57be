"""`serkit score` and `serkit results`: from per-epoch predictions to metrics, tables and plots.

Trainers write, for every epoch, ``fold<k>/predictions/{valid,test}.epoch<NNN>.tsv``
(docs/interfaces.md). Scoring applies a *selection rule* afterwards, so every rule is computed
from the same run and the rule travels with every number:

``valid`` (default)
    The epoch with the best validation headline metric (earliest on ties); test is scored once, at
    that epoch. This is the only rule that gives an unbiased test estimate.
``best_test``
    The ShiftSER papers' rule: the epoch with the best *test* UA. WA, F1 come from that same epoch
    (the official code took the maxima of UA and WA separately, which is more optimistic still).
    Labelled "paper (best test epoch)" in every table: it selects on the test set.
``valid_test_mean``
    The FLEA paper's rule: at the best-validation epoch, report (valid + test) / 2 for each metric.

``fold<k>/metrics.json`` holds the chosen epoch, the rule and all metrics (test, and valid at the
same epoch); ``RESULTS.md``, ``results.json`` and ``confusion.png`` summarise the folds
(mean and sample std) with the protocol, upstream, config, git commit and package versions.

A fairseq output directory (``fairseq-hydra-train ... task.predictions_dir=OUT/predictions``, so
``OUT/predictions/`` and no ``fold*/``) is scored as one fold.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .metrics import compute_metrics
from .utils import SerkitError, atomic_file, claim_output_file, write_json

if TYPE_CHECKING:
    import argparse

    from sklearn.metrics import ConfusionMatrixDisplay

log = logging.getLogger("serkit.score")

RULES = {
    "valid": "validation (best valid epoch, test scored once)",
    "best_test": "paper: best test epoch (selects on the test set)",
    "valid_test_mean": "paper: (valid + test) / 2 at the best valid epoch",
}
METRIC_NAMES = {"ua": "UA", "wa": "WA", "macro_f1": "macro-F1", "weighted_f1": "WF1"}
HEADLINE_KEYS = {"ua": "ua", "wa": "wa", "wf1": "weighted_f1", "f1": "macro_f1"}
_PRED_RE = re.compile(r"^(valid|test)(?:\.epoch(\d+))?\.tsv$")


@dataclass
class Predictions:
    utts: list[str]
    labels: list[str]
    preds: list[str]
    probs: np.ndarray  # (N, K)
    classes: list[str]


def read_predictions(path: str | Path) -> Predictions:
    """Read one predictions TSV (header ``utt label pred <class_1> ... <class_K>``)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or rows[0][:3] != ["utt", "label", "pred"] or len(rows[0]) < 4:
        raise SerkitError(f"{path}: not a predictions file (header must be 'utt label pred <classes...>')")
    classes = rows[0][3:]
    body = rows[1:]
    if not body:
        raise SerkitError(f"{path}: no predictions")
    for i, r in enumerate(body, 2):
        if len(r) != len(rows[0]):
            raise SerkitError(f"{path}:{i}: {len(r)} columns, expected {len(rows[0])}")
    return Predictions(
        utts=[r[0] for r in body],
        labels=[r[1] for r in body],
        preds=[r[2] for r in body],
        probs=np.array([[float(x) for x in r[3:]] for r in body]),
        classes=classes,
    )


def _epochs(fold_dir: Path) -> dict[str, dict[int, Path]]:
    """{split: {epoch: path}}; a file without an epoch number counts as epoch 0."""
    found: dict[str, dict[int, Path]] = {"valid": {}, "test": {}}
    pred_dir = fold_dir / "predictions"
    if not pred_dir.is_dir():
        raise SerkitError(f"{pred_dir}: no predictions; did training for this fold finish?")
    for p in pred_dir.iterdir():
        m = _PRED_RE.match(p.name)
        if m:
            found[m.group(1)][int(m.group(2) or 0)] = p
    if not found["test"]:
        raise SerkitError(f"{pred_dir}: no test predictions (test.epoch<NNN>.tsv)")
    return found


def score_fold(fold_dir: str | Path, rule: str = "valid", headline: str = "ua") -> dict:
    """Apply ``rule`` to one fold's predictions; write and return ``metrics.json``."""
    if rule not in RULES:
        raise SerkitError(f"unknown selection rule {rule!r}; choose from {', '.join(RULES)}")
    key = HEADLINE_KEYS.get(headline)
    if key is None:
        raise SerkitError(f"unknown headline metric {headline!r}; choose from {', '.join(HEADLINE_KEYS)}")
    fold_dir = Path(fold_dir)
    files = _epochs(fold_dir)
    cache: dict[Path, dict] = {}

    def metrics(path: Path) -> dict:
        if path not in cache:
            p = read_predictions(path)
            cache[path] = compute_metrics(p.labels, p.preds, p.classes)
        return cache[path]

    epochs = sorted(files["test"])
    if rule in ("valid", "valid_test_mean"):
        usable = [e for e in epochs if e in files["valid"]]
        if not usable:
            raise SerkitError(f"{fold_dir}/predictions: rule {rule!r} needs valid.epoch<NNN>.tsv files")
        curve = {e: metrics(files["valid"][e])[key] for e in usable}
    else:
        curve = {e: metrics(files["test"][e])["ua"] for e in epochs}
    best = max(curve, key=lambda e: (curve[e], -e))  # earliest epoch among equals
    test = metrics(files["test"][best])
    valid = metrics(files["valid"][best]) if best in files["valid"] else None
    if rule == "valid_test_mean":
        reported = {k: (valid[k] + test[k]) / 2 for k in METRIC_NAMES}
    else:
        reported = {k: test[k] for k in METRIC_NAMES}
    out = {
        "fold": fold_dir.name,
        "selection": rule,
        "selection_rule": RULES[rule],
        "selected_epoch": best,
        "epochs_seen": len(epochs),
        "headline": headline,
        **reported,
        "test": test,
        "valid": valid,
        "selection_curve": {str(e): v for e, v in sorted(curve.items())},
    }
    write_json(fold_dir / "metrics.json", out)
    return out


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in (
        "serkit",
        "torch",
        "torchaudio",
        "fairseq-fixed",
        "speechbrain",
        "faiss-cpu",
        "faiss-gpu",
        "numpy",
        "scikit-learn",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


#: what the confusion plot's colour measures
COLOURBAR_LABEL = "fraction of the reference class (row-normalised recall)"


def confusion_display(cm: np.ndarray, classes: list[str], title: str) -> ConfusionMatrixDisplay:
    """scikit-learn's ConfusionMatrixDisplay of the row-normalised matrix, each cell "count\npercent"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.asarray(cm, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    size = 1.0 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.6, size + 0.4))
    disp = ConfusionMatrixDisplay(norm, display_labels=classes).plot(
        ax=ax, cmap="Blues", xticks_rotation=45, im_kw={"vmin": 0, "vmax": 1}, text_kw={"fontsize": 7}
    )
    for (i, j), text in np.ndenumerate(disp.text_):
        text.set_text(f"{int(cm[i, j])}\n{norm[i, j]:.0%}")
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title, fontsize=8)
    disp.im_.colorbar.set_label(COLOURBAR_LABEL, fontsize=7)
    fig.tight_layout()
    return disp


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    disp = confusion_display(cm, classes, title)
    with atomic_file(path, "wb") as f:
        disp.figure_.savefig(f, format="png", dpi=110)
    plt.close(disp.figure_)


def folds_phrase(n: int) -> str:
    return "one fold" if n == 1 else f"summed over {n} folds"


def _run_info(exp: Path) -> dict:
    for p in [exp / "run.json", *sorted(exp.glob("fold*/train_info.json"))]:
        if p.is_file():
            return json.loads(p.read_text(encoding="utf-8"))
    return {}


def score_run(exp: str | Path, rule: str | None = None, headline: str | None = None) -> dict:
    """Score every ``fold*/`` of a run; write RESULTS.md, results.json and confusion.png."""
    exp = Path(exp)
    # fold<k> only: a recipe moves superseded output aside as fold<k>.prev-<time>
    folds = sorted(
        (p for p in exp.glob("fold*") if p.is_dir() and re.fullmatch(r"fold\d+", p.name)),
        key=lambda p: int(p.name[4:]),
    )
    if not folds and (exp / "predictions").is_dir():
        folds = [exp]  # a fairseq output directory (task.predictions_dir=OUT/predictions): one fold
    if not folds:
        raise SerkitError(
            f"{exp}: no fold*/ directories and no predictions/; is this an experiment "
            "directory (serkit train) or a fairseq output directory (task.predictions_dir)?"
        )
    info = _run_info(exp)
    rule = rule or "valid"
    if rule == "paper":
        rule = info.get("selection", "valid")
    headline = headline or info.get("headline", "ua")
    batching = sorted(
        {
            json.loads(p.read_text(encoding="utf-8")).get("batching") or "random"
            for f in folds
            for p in [f / "train_info.json"]
            if p.is_file()
        }
    )
    per_fold = [score_fold(f, rule, headline) for f in folds]
    classes = per_fold[0]["test"]["classes"]
    cm = np.sum([np.asarray(m["test"]["confusion"]) for m in per_fold], axis=0)
    summary = {k: dict(zip(("mean", "std"), _mean_std([m[k] for m in per_fold]))) for k in METRIC_NAMES}
    result = {
        "run": exp.name,
        "method": info.get("method", exp.name),
        "setting": info.get("setting"),
        "batching": ", ".join(batching) or None,
        "corpus": info.get("corpus"),
        "protocol": info.get("protocol"),
        "upstream": info.get("upstream"),
        "config": info.get("config") or info.get("hparams"),
        "note": info.get("note"),
        "selection": rule,
        "selection_rule": RULES[rule],
        "headline": headline,
        "folds": [m["fold"] for m in per_fold],
        "per_fold": {m["fold"]: {k: m[k] for k in (*METRIC_NAMES, "selected_epoch")} for m in per_fold},
        "summary": summary,
        "confusion": cm.tolist(),
        "classes": classes,
        "git_commit": _git_commit(),
        "versions": package_versions(),
        "scored_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    write_json(exp / "results.json", result)
    plot_confusion(cm, classes, exp / "confusion.png", confusion_title(result["method"], len(folds), rule))
    with atomic_file(exp / "RESULTS.md", encoding="utf-8") as f:
        f.write(render_results_md(result))
    log.info(
        "%s: %s %s (selection: %s) -> %s",
        exp.name,
        METRIC_NAMES[HEADLINE_KEYS[headline]],
        _pct(summary[HEADLINE_KEYS[headline]], len(folds))
        + (" on one fold" if len(folds) == 1 else f" over {len(folds)} folds"),
        rule,
        exp / "RESULTS.md",
    )
    return result


def confusion_title(method: str, n_folds: int, rule: str) -> str:
    return (
        f"{method}: test set, {folds_phrase(n_folds)}\n"
        f"epoch per fold chosen by the selection rule {rule!r}: {RULES[rule]}"
    )


def _pct(mean_std: dict, n_folds: int = 2) -> str:
    """``mean ± std`` in %; one fold has no spread, so its number stands alone."""
    if n_folds == 1:
        return f"{100 * mean_std['mean']:.2f}"
    return f"{100 * mean_std['mean']:.2f} ± {100 * mean_std['std']:.2f}"


def render_results_md(r: dict) -> str:
    lines = [f"# {r['method']} ({r['run']})", ""]
    for label, key in (
        ("Corpus", "corpus"),
        ("Protocol", "protocol"),
        ("Setting", "setting"),
        ("Batching", "batching"),
        ("Upstream", "upstream"),
        ("Config", "config"),
        ("Note", "note"),
    ):
        if r.get(key):
            lines.append(f"- {label}: {r[key]}")
    lines += [
        f"- Selection rule: `{r['selection']}`: {r['selection_rule']}",
        f"- Headline metric: {r['headline'].upper()}; metrics in % on the test split"
        + (" ((valid + test) / 2)" if r["selection"] == "valid_test_mean" else ""),
        (
            f"- Folds: {len(r['folds'])}; mean ± sample std over folds"
            if len(r["folds"]) > 1
            else "- Folds: 1 (one fold: no spread over folds)"
        ),
        f"- git commit: {r['git_commit']}; scored {r['scored_at']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "",
        "| fold | epoch | UA | WA | macro-F1 | WF1 |",
        "|---|---|---|---|---|---|",
    ]
    for fold, m in r["per_fold"].items():
        lines.append(
            f"| {fold} | {m['selected_epoch']} | {100 * m['ua']:.2f} | {100 * m['wa']:.2f} | "
            f"{100 * m['macro_f1']:.2f} | {100 * m['weighted_f1']:.2f} |"
        )
    s, n = r["summary"], len(r["folds"])
    if n > 1:
        lines.append(
            f"| **mean ± std** | | {_pct(s['ua'])} | {_pct(s['wa'])} | {_pct(s['macro_f1'])} | "
            f"{_pct(s['weighted_f1'])} |"
        )
    lines += [
        "",
        f"Confusion matrix (test, {folds_phrase(n)}; rows = reference, colour = "
        f"{COLOURBAR_LABEL}): ![confusion](confusion.png)",
        "",
    ]
    return "\n".join(lines)


RESULTS_HEADER = "| method | setting | protocol | upstream | selection | folds | UA | WA | WF1 |"


def is_results_table(path: Path) -> bool:
    """``path`` is a table ``serkit results --out`` wrote (its first line is the table's header)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n") == RESULTS_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def results_table(exps: list[str | Path], rule: str | None = None) -> str:
    """One markdown table over several scored runs (scores any run not scored yet)."""
    rows = [RESULTS_HEADER, "|---|---|---|---|---|---|---|---|---|"]
    for exp in exps:
        exp = Path(exp)
        res_path = exp / "results.json"
        r = (
            json.loads(res_path.read_text(encoding="utf-8"))
            if res_path.is_file() and rule is None
            else score_run(exp, rule)
        )
        s, n = r["summary"], len(r["folds"])
        sel = "valid" if r["selection"] == "valid" else f"paper: {r['selection']}"
        batching = r.get("batching") and f"({r['batching']} batches)"
        setting = " ".join(filter(None, [r.get("setting"), batching]))
        rows.append(
            f"| {r['method']} | {setting} | {r.get('protocol') or ''} | "
            f"{r.get('upstream') or ''} | {sel} | {n} | "
            f"{_pct(s['ua'], n)} | {_pct(s['wa'], n)} | {_pct(s['weighted_f1'], n)} |"
        )
    return "\n".join(rows) + "\n"


def register(sub: argparse._SubParsersAction) -> None:
    import argparse
    import textwrap

    rules = "\n".join(f"  {name:<16} {text}" for name, text in RULES.items())
    p = sub.add_parser(
        "score",
        help="score a run: metrics.json per fold, RESULTS.md, confusion.png",
        description=textwrap.fill(
            "Score a run from its per-epoch predictions (fold<k>/predictions/{valid,test}.epoch<NNN>.tsv): "
            "pick each fold's epoch with a selection rule, write fold<k>/metrics.json, then "
            "RESULTS.md, results.json and confusion.png (mean and sample std over folds). A fairseq output "
            "directory (OUT/predictions/, no fold*/) is scored as one fold.",
            80,
        ),
        epilog=f"selection rules:\n{rules}\n  {'paper':<16} the rule recorded in the run's run.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "exp",
        help="experiment run directory holding fold*/predictions/, or a fairseq "
        "output directory holding predictions/",
    )
    p.add_argument(
        "--selection",
        default="valid",
        choices=[*RULES, "paper"],
        help="epoch selection rule; 'paper' = the rule recorded in run.json for this method",
    )
    p.add_argument(
        "--headline",
        default=None,
        choices=list(HEADLINE_KEYS),
        help="metric the valid rule selects on (default: run.json's, else ua)",
    )
    p.set_defaults(func=lambda a: print(render_results_md(score_run(a.exp, a.selection, a.headline))))

    p = sub.add_parser(
        "results",
        help="one markdown table over several scored runs",
        description="Print one markdown table (method, setting, protocol, upstream, "
        "selection rule, folds, UA/WA/WF1 mean ± std) over several runs, scoring any run "
        "not scored yet.",
    )
    p.add_argument("exps", nargs="+", help="experiment run directories")
    p.add_argument(
        "--selection",
        default=None,
        choices=[*RULES, "paper"],
        help="re-score with this rule (default: use each run's results.json)",
    )
    p.add_argument("--out", help="also write the table to this file")

    def run(a: argparse.Namespace) -> None:
        if a.out:  # before scoring, so a refused --out changes nothing
            claim_output_file(a.out, is_results_table, "a table `serkit results` wrote")
        table = results_table(a.exps, a.selection)
        print(table, end="")
        if a.out:
            with atomic_file(a.out, encoding="utf-8") as f:
                f.write(table)

    p.set_defaults(func=run)
