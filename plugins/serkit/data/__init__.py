"""Corpus preparation (``serkit prepare``), split protocols (``serkit split``) and fold manifests.

- :mod:`serkit.data.datadir`: the Kaldi-style data directory (write, validate, load).
- :mod:`serkit.data.prepare_iemocap`, :mod:`~serkit.data.prepare_meld`, :mod:`~serkit.data.prepare_savee`.
- :mod:`serkit.data.splits`: the protocol registry and the leakage check.
- :mod:`serkit.data.manifest`: the per-fold tsv/emo/json files trainers read.
- :mod:`serkit.data.audio`: wav checks, conversion and clip decoding.

Nothing heavy is imported here, so that ``serkit --help`` stays fast.
"""
