"""fairseq ``--user-dir`` for serkit: ``common.user_dir=<absolute path to>/plugins/serkit_fairseq``.

A shim only. fairseq imports a user dir under its folder name, so nothing is registered here: every
``serkit_*`` task, model and criterion lives in :mod:`serkit.fairseq_ext`, which Python imports once
whatever the order (this shim, ``import serkit.fairseq_ext``, or ``serkit.upstream.load_upstream``).

The path must be absolute: ``fairseq-hydra-train`` changes into ``hydra.run.dir`` before it imports
the user dir, so a relative path would be looked up from there.
"""

import serkit.fairseq_ext  # noqa: F401  (registers the serkit_* components)
