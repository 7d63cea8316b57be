"""Paste generated results into README.md between its markers (nothing in those sections is typed).

    python tools/update_readme.py [--demo recipes/IEMOCAP/exp/iemocap_loso5/RESULTS.md]

- ``<!-- DEMO-START -->`` .. ``<!-- DEMO-END -->``: the table `make demo` printed (the recipe's RESULTS.md)
  and its timing, when ``--demo`` is given;
- ``<!-- BENCH-START -->`` .. ``<!-- BENCH-END -->``: ``bench/latest/*.txt`` from ``bench/run_all.sh``.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, help="the demo run's results table (markdown)")
    ap.add_argument("--demo-timing", type=Path, help="the demo's timing summary (text)")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if args.demo:
        body = ["What `make demo` printed last (mini IEMOCAP, 5 folds of `iemocap_loso5`, CPU; the mini "
                "corpus is synthetic and the upstream tiny, so these numbers only show that every stage "
                "runs and learns; chance UA is 25 %):", "", args.demo.read_text(encoding="utf-8").strip()]
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
    readme.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
