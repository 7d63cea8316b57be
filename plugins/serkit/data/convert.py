"""Converting a release's wavs once into ``OUT/wavs`` (16 kHz mono), for the corpora whose audio is not
16 kHz already (SAVEE, RAVDESS): truncated sources checked first, a wav reused only while its source
record (:mod:`serkit.data.audio`) still matches, the records saved as the conversion goes (resumable)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..utils import SerkitError, claim_output_dir, write_json
from . import datadir

log = logging.getLogger("serkit.data")


def convert_sources(
    sources: dict[str, Path], out: Path, corpus: str, allow_truncated: bool = False
) -> tuple[dict[str, tuple[Path, int]], list[str], int]:
    """Convert ``sources`` (utterance id -> source wav) into ``out/wavs/<utt>.wav``.

    Returns ``({utt: (wav, num_samples)}, truncated sources dropped, wavs reused)``. A truncated source
    is an error unless ``allow_truncated`` (then it is dropped and listed); an empty one always is.
    """
    from .audio import TruncatedWav, check_complete, conversion_record, convert_wav, reusable

    name = corpus.upper()
    sources = dict(sources)
    truncated = []
    for utt, src in sorted(sources.items()):
        try:
            check_complete(src)
        except TruncatedWav as e:
            if not allow_truncated:
                raise
            log.warning("%s: dropping %s (--allow-truncated): %s", name, utt, e)
            truncated.append(str(src))
            del sources[utt]
    wavdir = datadir.open_wavdir(out, corpus)
    old_records = datadir.load_sources(wavdir)
    new_records: dict[str, dict] = {}
    converted: dict[str, tuple[Path, int]] = {}
    reused = 0
    for utt, src in sorted(sources.items()):
        dst = wavdir / f"{utt}.wav"
        n = reusable(old_records.get(utt), src, dst)
        if n:
            reused += 1
            new_records[utt] = old_records[utt]
        else:
            n = convert_wav(src, dst)
            if n == 0:
                raise SerkitError(f"{src}: empty audio; replace it with a good copy")
            new_records[utt] = conversion_record(src, dst, n)
            if len(new_records) % 50 == 0:  # resumable
                write_json(wavdir / datadir.SOURCES, {**old_records, **new_records})
        converted[utt] = (dst, n)
    # Wavs of utterances no longer in the corpus keep no record: never reused, overwritten if they return.
    if new_records != old_records:
        write_json(wavdir / datadir.SOURCES, new_records)
    return converted, truncated, reused


def convert_release(
    root: str | os.PathLike,
    out: str | os.PathLike,
    corpus: str,
    find_wavs: Callable[[Path], dict[str, Path]],
    root_hint: str,
    layout_hint: str,
    allow_truncated: bool = False,
) -> tuple[Path, Path, dict[str, tuple[Path, int]], list[str], int]:
    """Claim ``out`` for ``corpus``, find the release's wavs under ``root`` and convert them.

    ``root_hint`` says what ``--root`` should point at, ``layout_hint`` which file names were expected.
    Returns ``(root, out, converted, truncated, reused)`` as :func:`convert_sources`, paths absolute.
    """
    root, out = Path(root).absolute(), Path(out).absolute()
    if not root.is_dir():
        raise SerkitError(f"{root}: not a directory; pass --root pointing at {root_hint}")
    claim_output_dir(out, datadir.output_kind(corpus), inputs=[root])
    sources = find_wavs(root)
    if not sources:
        raise SerkitError(f"{root}: no {corpus.upper()} wavs found (expected {layout_hint}); check --root")
    return (root, out, *convert_sources(sources, out, corpus, allow_truncated))
