"""SpeechBrain adapters: lobes taking ``(x, lengths)``, the ``SERBrain`` trainer, inference.

- :mod:`serkit.speechbrain.lobes`: ``SERHead``, ``WeightedLayerSum``, ``SpecAugment``, ``FairseqUpstream``
  for use in any HyperPyYAML recipe (``head: !new:serkit.speechbrain.lobes.SERHead``);
- :mod:`serkit.speechbrain.brain`: ``SERBrain`` (cached features or finetuning; per-epoch predictions);
- :mod:`serkit.speechbrain.train`: ``serkit train`` / ``python -m serkit.speechbrain.train``;
- :mod:`serkit.speechbrain.interface`: ``EmotionClassifier.from_hparams(source=EXP_DIR)``;
- :mod:`serkit.speechbrain.predict`: ``serkit predict``.

Importing this package is cheap; SpeechBrain is imported by the submodules that need it.
"""
