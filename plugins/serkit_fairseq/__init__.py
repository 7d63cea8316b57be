"""fairseq ``--user-dir`` for serkit: ``common.user_dir=<absolute path to>/plugins/serkit_fairseq``.

A shim only. fairseq imports a user dir under its folder name, so nothing is registered here: every
``serkit_*`` task, model and criterion lives in :mod:`serkit.fairseq_ext`, which Python imports once
whatever the order (this shim, ``import serkit.fairseq_ext``, or ``serkit.upstream.load_upstream``).

The path must be absolute: ``fairseq-hydra-train`` changes into ``hydra.run.dir`` before it imports
the user dir, so a relative path would be looked up from there.
"""
import os

# torch >= 2.6 unpickles only tensors by default; fairseq checkpoints pickle configs and dictionaries.
# Only load checkpoints you trust.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import serkit.fairseq_ext  # noqa: E402,F401  (registers the serkit_* components)
