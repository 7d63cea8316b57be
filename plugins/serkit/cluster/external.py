"""Read the centroids of the k-means models published with fairseq's HuBERT and textless-NLP examples.

Those models (``hubert_base_ls960_L9_km500.bin``, textless-NLP's ``km.bin``) are scikit-learn
``MiniBatchKMeans`` objects written with ``joblib.dump`` (fairseq's
``examples/hubert/simple_kmeans/learn_kmeans.py``). Loading them with ``joblib.load`` or ``pickle.load``
would run whatever the file names: a pickle is a program. :func:`read_sklearn_kmeans` instead runs the
pickle stream through an unpickler that resolves only the few names such a file needs, each to an
inert stand-in or a numpy constructor that only builds arrays:

- the estimator class (``sklearn.cluster._kmeans.MiniBatchKMeans`` or ``KMeans``; the pre-0.22 module
  ``sklearn.cluster.k_means_``) -> a stand-in that records its attribute dict; no scikit-learn code runs;
- numpy's array and scalar reconstruction (``numpy[._]core.multiarray._reconstruct``, ``scalar``,
  ``numpy.ndarray``, ``numpy.dtype``), for files written with ``pickle.dump``, and protocol 2's bytes
  literals (``_codecs.encode(text, "latin1")``, accepted for exactly those arguments);
- joblib's ``NumpyArrayWrapper`` (``joblib.numpy_pickle`` or the old ``sklearn.externals.joblib``), whose
  array bytes follow it in the file: read as raw numbers of the recorded dtype, never unpickled.

Any other name (``os.system``, ``builtins.eval``, ...) is refused before anything is called, with a
message naming the file and the global. Only ``cluster_centers_`` is read from the result.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np

from ..utils import SerkitError

try:  # numpy >= 2 (files written by numpy 1.x name numpy.core, which maps to the same functions)
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray

_ESTIMATOR_MODULES = ("sklearn.cluster._kmeans", "sklearn.cluster.k_means_", "sklearn.cluster")
_ESTIMATOR_NAMES = ("MiniBatchKMeans", "KMeans")
_WRAPPER_MODULES = ("joblib.numpy_pickle", "sklearn.externals.joblib.numpy_pickle")
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


class _Estimator:
    """Stand-in for the pickled estimator: keeps the attribute dict, runs no scikit-learn code."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.__dict__["_serkit_args"] = args

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"estimator state is a {type(state).__name__}, not a dict")
        self.__dict__.update(state)


class _ArrayWrapper:
    """Stand-in for joblib's NumpyArrayWrapper: its state says how to read the array bytes after it."""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("NumpyArrayWrapper state is not a dict")
        self.__dict__.update(state)

    def read(self, f: BinaryIO) -> np.ndarray:
        state = self.__dict__
        dtype, shape, order = state.get("dtype"), state.get("shape"), state.get("order")
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise pickle.UnpicklingError(f"array of dtype {dtype!r}: only plain numeric arrays are read")
        if self.__dict__.get("subclass", np.ndarray) is not np.ndarray:
            raise pickle.UnpicklingError("array subclass other than numpy.ndarray")
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise pickle.UnpicklingError(f"array shape {shape!r}")
        if self.__dict__.get("numpy_array_alignment_bytes") is not None:  # joblib >= 1.2: padding
            pad = f.read(1)
            if len(pad) != 1:
                raise pickle.UnpicklingError("truncated file (array padding)")
            f.read(pad[0])
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise pickle.UnpicklingError(f"truncated file: {len(data)} of {nbytes} array bytes")
        arr = np.frombuffer(data, dtype=dtype, count=count).copy()
        return arr.reshape(shape[::-1]).T if order == "F" else arr.reshape(shape)


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode(str, "latin1")``, the only call protocol-2 pickles make of it (bytes literals)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD can be extended
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f: BinaryIO) -> None:
        super().__init__(f)
        self._file = f

    def find_class(self, module: str, name: str) -> Callable[..., object]:
        if module in _ESTIMATOR_MODULES and name in _ESTIMATOR_NAMES:
            return _Estimator
        if module in _WRAPPER_MODULES and name == "NumpyArrayWrapper":
            return _ArrayWrapper
        if module in _NUMPY_MODULES and name in ("_reconstruct", "scalar"):
            return getattr(_multiarray, name)
        if module == "_codecs" and name == "encode":  # protocol 2's spelling of a bytes literal
            return _latin1_bytes
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")

    def _build(self) -> None:
        pickle._Unpickler.load_build(self)
        top = self.stack[-1]
        if isinstance(top, _ArrayWrapper):  # joblib: the array's raw bytes follow in the stream
            self.stack[-1] = top.read(self._file)

    dispatch[pickle.BUILD[0]] = _build

    def persistent_load(self, pid: object) -> NoReturn:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def read_sklearn_kmeans(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """``cluster_centers_`` (K, D) float32 of a joblib/pickle MiniBatchKMeans file, and a description."""
    path = Path(path)
    raw = path.read_bytes()
    if (
        raw[:2] in (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")
        or raw[:3] == b"BZh"
        or raw[:2] == b"\x1f\x8b"
        or raw[:6] == b"\xfd7zXZ\x00"
    ):
        raise SerkitError(
            f"{path}: a compressed joblib file; serkit reads uncompressed ones only "
            "(fairseq's learn_kmeans.py writes them uncompressed)"
        )
    if not raw[:1] == b"\x80":
        raise SerkitError(f"{path}: neither a serkit k-means model (.npz) nor a pickled k-means model")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as e:
        raise SerkitError(
            f"{path}: refused: {e}. serkit reads k-means files that hold a scikit-learn "
            "MiniBatchKMeans/KMeans and numpy arrays only (fairseq's learn_kmeans.py output); a pickle "
            "naming anything else could run code and is not loaded"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise SerkitError(f"{path}: not a readable k-means pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, _Estimator):
        raise SerkitError(f"{path}: holds a {type(obj).__name__}, not a scikit-learn k-means model")
    centers = obj.__dict__.get("cluster_centers_")
    if not isinstance(centers, np.ndarray) or centers.ndim != 2 or centers.dtype.kind != "f":
        raise SerkitError(f"{path}: the k-means model has no fitted cluster_centers_ (a 2-D float array)")
    info = {
        "source": "sklearn k-means pickle (fairseq/textless-NLP learn_kmeans.py)",
        "file_sha1": hashlib.sha1(raw).hexdigest(),
        "sklearn_version": obj.__dict__.get("_sklearn_version"),
        "n_clusters": int(centers.shape[0]),
        "dim": int(centers.shape[1]),
    }
    return np.ascontiguousarray(centers, dtype=np.float32), info
