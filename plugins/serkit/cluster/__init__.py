"""k-means on cached features (faiss GPU when present, CPU otherwise) and HuBERT pseudo-label files.

See ``serkit.cluster.kmeans``: ``fit`` (training split only unless transductive) and ``apply``
(``<split>.km`` + ``dict.km.txt`` for fairseq's ``hubert_pretraining`` task).
"""
