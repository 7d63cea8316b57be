"""``serkit predict --exp EXP/<run>/fold<k> FILE_OR_DIR...``: one JSON line per audio file.

Output (stdout): ``{"file": path, "label": class, "probs": {class: p, ...}}``. Folders are searched
recursively for audio files (.wav .flac .ogg; hidden files such as macOS ``._*`` AppleDouble files are
skipped, as ``serkit prepare`` skips them) and classified in batches with a progress bar (stderr).
A file that cannot be classified (missing, unreadable, empty, too short) is reported on stderr with its
name and skipped; the exit status is then 2. Audio at another sample rate is resampled to 16 kHz (with
a warning); multi-channel audio is averaged to mono. Audio that cannot be speech is refused the same
way: NaN or Inf samples, a sample rate outside 1 kHz..384 kHz, more than ``--max-duration`` seconds.
A model trained on cached features encodes the audio with the upstream ``train_info.json`` recorded;
``--upstream CKPT`` points at it where it is now (a missing one is named, with this fix).
Every line printed is strict JSON (no NaN).

Trust: an experiment folder is code. Its ``hyperparams.yaml`` is HyperPyYAML, whose ``!new:`` and
``!apply:`` tags build and call arbitrary Python objects, and the fairseq upstream that
``train_info.json`` names is unpickled. Use experiment folders from trusted sources only. The
checkpoint files serkit writes itself are loaded with ``weights_only=True`` (docs/trust.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils import SerkitError

if TYPE_CHECKING:
    from .interface import EmotionClassifier
    from .mfsn import MFSNClassifier

log = logging.getLogger("serkit.speechbrain")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
DEFAULT_MAX_DURATION = 600.0  # seconds: generous for an utterance, refuses a header that lies

TRUST = (
    "Trust: an exp folder is code. Its hyperparams.yaml is HyperPyYAML (!new: and !apply: build and "
    "call arbitrary Python objects) and the fairseq upstream named in train_info.json is unpickled: "
    "use exp folders from trusted sources only, as for SpeechBrain's from_hparams. serkit's own "
    "checkpoint files are loaded with torch.load(weights_only=True); one that holds other pickled "
    "objects is refused. See docs/trust.md."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--exp",
        required=True,
        help="a fold's output folder of `serkit train` (has train_info.json); it is code: "
        "trusted sources only (see below)",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="audio files and/or folders")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass (folders)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        default="best",
        help="best on validation (default) or the last epoch's",
    )
    p.add_argument(
        "--max-duration",
        type=float,
        default=DEFAULT_MAX_DURATION,
        metavar="SECONDS",
        help="refuse files longer than this (read from the header; default %(default)g s)",
    )
    p.add_argument(
        "--upstream",
        default=None,
        metavar="CKPT",
        help="the upstream checkpoint, where it is now (default: the path train_info.json "
        "recorded at training time)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def expand_inputs(inputs: list[str]) -> list[tuple[Path, bool]]:
    """``[(file, from_folder)]`` in the given order; folders expand to their sorted audio files."""
    out = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            # hidden files (macOS "._*" AppleDouble metadata) are not audio, as `serkit prepare` skips them
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in AUDIO_EXTENSIONS
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise SerkitError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
            out += [(p, True) for p in found]
        else:
            out.append((path, False))  # checked when read, so one bad file does not stop the others
    return out


def predict_files(
    clf: EmotionClassifier | MFSNClassifier,
    files: list[Path],
    batch_size: int = 8,
    progress: bool = True,
    max_duration: float | None = DEFAULT_MAX_DURATION,
) -> Iterator[tuple[Path, dict | None, str | None]]:
    """Yield ``(file, result_or_None, error_or_None)`` in input order; ``result`` is the JSON dict."""
    import torch
    from tqdm import tqdm

    from .dataio import load_wav

    bar = tqdm(total=len(files), disable=not progress or len(files) <= 1, unit="file", file=sys.stderr)
    for start in range(0, len(files), max(1, batch_size)):
        chunk = files[start : start + batch_size]
        wavs, errors = {}, {}
        for f in chunk:
            try:
                wav = load_wav(f, max_duration=max_duration)
                clf._check_length(wav, f)
                wavs[f] = wav
            except SerkitError as e:
                errors[f] = str(e)
        results = {}
        if wavs:
            order = sorted(wavs, key=lambda f: wavs[f].numel(), reverse=True)
            longest = wavs[order[0]].numel()
            batch = torch.zeros(len(order), longest)
            for i, f in enumerate(order):
                batch[i, : wavs[f].numel()] = wavs[f]
            lens = torch.tensor([wavs[f].numel() / longest for f in order])
            probs, _, _, labels = clf.classify_batch(batch, lens)
            for f, p, lab in zip(order, probs.cpu().tolist(), labels):
                if not all(math.isfinite(v) for v in p):
                    errors[f] = (
                        f"{f}: the model gave non-finite probabilities; the checkpoint of "
                        f"{clf.checkpoint.path if clf.checkpoint else 'this exp'} has diverged"
                    )
                    continue
                results[f] = {
                    "file": str(f),
                    "label": lab,
                    "probs": {c: round(float(v), 6) for c, v in zip(clf.classes, p)},
                }
        for f in chunk:
            yield f, results.get(f), errors.get(f)
        bar.update(len(chunk))
    bar.close()


def run(args: argparse.Namespace) -> int:
    import warnings

    from .interface import EmotionClassifier

    for name in ("fairseq", "speechbrain"):  # their INFO chatter would drown the JSON lines
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
    warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated.*")
    if not args.max_duration > 0:  # also refuses NaN
        raise SerkitError(
            f"serkit predict: --max-duration must be a positive number of seconds, got {args.max_duration:g}"
        )
    files = expand_inputs(args.inputs)
    clf = EmotionClassifier.from_hparams(
        args.exp, run_opts={"device": args.device}, checkpoint=args.checkpoint, upstream=args.upstream
    )
    failed = 0
    progress = not args.no_progress and any(from_dir for _, from_dir in files)
    for _, result, error in predict_files(
        clf, [f for f, _ in files], args.batch_size, progress, args.max_duration
    ):
        if error:
            failed += 1
            log.error("%s", error)
            continue
        try:
            print(json.dumps(result, ensure_ascii=False, allow_nan=False), flush=True)
        except BrokenPipeError:  # `serkit predict ... | head`: the reader has what it wanted
            return 0
    if failed:
        log.error("%d of %d file(s) could not be classified (see above)", failed, len(files))
        return 2
    return 0
