"""Paste generated results into README.md between its markers (nothing in those sections is typed).

    python tools/update_readme.py [--demo recipes/IEMOCAP/exp/iemocap_loso5/RESULTS.md]

- ``<!-- DEMO-START -->`` .. ``<!-- DEMO-END -->``: the table `make demo` printed (the recipe's RESULTS.md)
  and its timing, when ``--demo`` is given;
- ``<!-- BENCH-START -->`` .. ``<!-- BENCH-END -->``: ``bench/latest/*.txt`` from ``bench/run_all.sh``;
- ``<!-- CHECKPOINTS-START -->`` .. ``<!-- CHECKPOINTS-END -->``: the released-checkpoint table, from the
  results ``tests/integration/test_released_checkpoints.py`` writes, when ``--checkpoints`` is given::

      SERKIT_CHECKPOINT_RESULTS=$PWD/docs/released_checkpoints.json \
          .venv/bin/python -m pytest tests/integration/test_released_checkpoints.py
      .venv/bin/python tools/update_readme.py --checkpoints docs/released_checkpoints.json

  It exits non-zero when a row that a README recommends is not green.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def replace_section(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}-START -->", f"<!-- {name}-END -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {start} ... {end} section")
    return pattern.sub(lambda _: f"{start}\n{body.rstrip()}\n{end}", text)


KIND_NAMES = {
    "hubert": "HuBERT",
    "wav2vec2": "wav2vec 2.0",
    "data2vec": "data2vec audio",
    "hf": "Hugging Face dir",
}
COLUMN_NAMES = (("dump", "dump-features"), ("finetune", "finetune"), ("cpt", "CPT"), ("tec", "TEC"))


def _cell(value) -> str:
    return "n/a" if value == "n/a" else ("yes" if value is True else "**FAILS**")


def checkpoint_table(results: dict) -> tuple[str, list[str]]:
    """The README table from the test results; and the recommended rows that are not green."""
    lines = [
        "What each released checkpoint goes through, as tested on a random-weight stand-in with the "
        "release's exact on-disk structure (`serkit.upstream.standins`; "
        "`tests/integration/test_released_checkpoints.py` writes these results). *dump-features*: "
        "`serkit dump-features` / `load_upstream`, layers equal to fairseq's own `extract_features`; "
        "*finetune*: the fairseq plugin's `serkit_ser_model` (`model.upstream_path`) and SpeechBrain's "
        "finetuning lobe (`serkit train --setting finetune`); *CPT*: "
        "`serkit_hubert` `model.init_from` (stage 3; a slow test also runs two updates from a full-size "
        "`hubert_base_ls960.pt` stand-in); *TEC*: MFSN's greedy CTC on the dumped last layer "
        "(`--ctc-dict`), equal to fairseq's CTC model. *fairseq loads it*: whether fairseq's own "
        "`load_model_ensemble_and_task` does, in this environment (fairseq-fixed 0.12.3.1, "
        "hydra-core 1.3.2).",
        "",
        "| checkpoint | kind | stored as | "
        + " | ".join(n for _, n in COLUMN_NAMES)
        + " | fairseq loads it | recommended by |",
        "|---" * (len(COLUMN_NAMES) + 5) + "|",
    ]
    bad = []
    for row in results["rows"]:
        kind = KIND_NAMES.get(row["kind"], row["kind"]) + (" CTC" if row.get("ctc") else "")
        cells = [_cell(row[c]) for c, _ in COLUMN_NAMES]
        loads = row["fairseq_loads"]
        fairseq = "yes" if loads is True else ("n/a" if loads == "n/a" else f"no: {loads}")
        lines.append(
            f"| `{row['release']}` | {kind} | {row['format']} | "
            + " | ".join(cells)
            + f" | {fairseq} | {row['recommended'] or '-'} |"
        )
        if row["recommended"] and any(row[c] is not True and row[c] != "n/a" for c, _ in COLUMN_NAMES):
            bad.append(row["release"])
    return "\n".join(lines), bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, help="the demo run's results table (markdown)")
    ap.add_argument("--demo-timing", type=Path, help="the demo's timing summary (text)")
    ap.add_argument(
        "--checkpoints", type=Path, help="results of tests/integration/test_released_checkpoints.py (json)"
    )
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if args.demo:
        body = [
            "What `make demo` printed last (mini IEMOCAP, 5 folds of `iemocap_loso5`, CPU; the mini "
            "corpus is synthetic and the upstream tiny, so these numbers only show that every stage "
            "runs and learns; chance UA is 25 %):",
            "",
            args.demo.read_text(encoding="utf-8").strip(),
        ]
        if args.demo_timing:
            body += ["", "```", args.demo_timing.read_text(encoding="utf-8").strip(), "```"]
        text = replace_section(text, "DEMO", "\n".join(body))
    outputs = sorted((ROOT / "bench" / "latest").glob("*.txt"))
    if outputs:
        blocks = []
        for p in outputs:
            output = p.read_text(encoding="utf-8").strip()
            blocks += [f"**{p.stem}** (`bench/latest/{p.name}`)", "", "```", output, "```", ""]
        text = replace_section(text, "BENCH", "\n".join(blocks))
    bad = []
    if args.checkpoints:
        import json

        table, bad = checkpoint_table(json.loads(args.checkpoints.read_text(encoding="utf-8")))
        text = replace_section(text, "CHECKPOINTS", table)
    readme.write_text(text, encoding="utf-8")
    if bad:
        raise SystemExit(f"recommended checkpoints that do not pass every path: {', '.join(bad)}")


if __name__ == "__main__":
    main()
