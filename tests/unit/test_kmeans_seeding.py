"""k-means++ seeding is scikit-learn's ``kmeans_plusplus`` (no hand-written copy to keep right), seeded
reproducibly from serkit's generator, including data whose points coincide."""

from __future__ import annotations

import numpy as np
import pytest

sklearn_cluster = pytest.importorskip("sklearn.cluster")

from serkit.cluster import kmeans as km  # noqa: E402
from serkit.utils import SerkitError  # noqa: E402


def blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 6)) * 30
    return np.concatenate([c + rng.normal(size=(100, 6)) for c in centres]).astype(np.float32)


def test_seeding_is_sklearns_kmeans_plusplus_with_a_seed_from_the_generator():
    x = blobs()
    ours = km.kmeans_pp_init(x, 8, np.random.default_rng(3))
    seed = int(np.random.default_rng(3).integers(2**31 - 1))
    theirs, _ = sklearn_cluster.kmeans_plusplus(x.astype(np.float64), 8, random_state=seed)
    assert ours.dtype == np.float32 and np.array_equal(ours, theirs.astype(np.float32))
    assert np.array_equal(ours, km.kmeans_pp_init(x, 8, np.random.default_rng(3)))  # reproducible


def test_coinciding_points_give_k_centres():
    x = np.ones((50, 4), dtype=np.float32)
    init = km.kmeans_pp_init(x, 5, np.random.default_rng(0))
    assert init.shape == (5, 4) and (init == 1).all()


def test_fewer_points_than_clusters_is_a_serkit_error():
    with pytest.raises(SerkitError, match="3 frames for 5 clusters"):
        km.kmeans_pp_init(np.zeros((3, 2), dtype=np.float32), 5, np.random.default_rng(0))
