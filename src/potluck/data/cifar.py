"""CIFAR-10 from the standard "python version" batch files, read without trusting them.

The files (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) are Python pickles: each a dict
``{b"data": uint8 array (10000, 3072), b"labels": [int], b"batch_label": bytes,
b"filenames": [bytes]}``. Loading a pickle with :mod:`pickle` runs whatever callables the file
names, so a tampered download could run code. :class:`_BatchUnpickler` resolves no name except
three numpy constructors, each replaced by a checked stand-in:

* ``numpy.core.multiarray._reconstruct`` (``numpy._core`` in files written by numpy 2): makes an
  *empty* array of a plain numeric dtype; the file's bytes are then copied in by
  ``ndarray.__setstate__``, which numpy bounds-checks against the shape and dtype.
* ``numpy.ndarray``: the class ``_reconstruct`` is told to build, and nothing else (it
  resolves to a token, so a file cannot call the array constructor on a buffer of its own).
* ``numpy.dtype``: only bool, integer and float dtypes (no object dtype, so no Python objects
  can hide in an array's bytes).

Every other global (``os.system``, ``builtins.eval``, ``_codecs.encode`` ...) is refused, so the
worst a hostile file can do is fail to load. The result is checked field by field as well.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from potluck.catalog import CIFAR_NOT_SHIPPED, CIFAR_WHERE
from potluck.contracts.errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
IMAGE_BYTES = 3 * 32 * 32


_NDARRAY = object()
"""What ``numpy.ndarray`` resolves to: a token ``_reconstruct`` accepts, not callable itself."""


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed")
    del shape  # always (0,): ``__setstate__`` sets the real shape, with the bytes to fill it
    return np.ndarray((0,), dtype=_dtype(dtype))


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if isinstance(spec, bytes):  # Python 2 pickles hand over byte strings
        spec = spec.decode("ascii")
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"unexpected dtype {spec!r}")
    dtype = np.dtype(spec)
    if dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"dtype {dtype} is not a plain number type")
    return dtype


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch; any global but the three numpy constructors is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


@dataclass(frozen=True)
class Images:
    images: np.ndarray
    """uint8 (N, 3, 32, 32)."""
    labels: np.ndarray
    """int64 (N,), in 0..9."""


def read_batch(path: Path) -> Images:
    """One batch file, checked: raises DataError if it is not a CIFAR-10 python batch."""
    try:
        with open(path, "rb") as f:
            raw = _BatchUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path} ({exc}): {CIFAR_WHERE}") from exc
    except Exception as exc:  # any malformed pickle: UnpicklingError, EOFError, ValueError...
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: "
                        f"{exc}): {CIFAR_WHERE}") from exc
    data = raw.get(b"data") if isinstance(raw, dict) else None
    labels = raw.get(b"labels") if isinstance(raw, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == IMAGE_BYTES and isinstance(labels, list)
            and len(labels) == data.shape[0]
            and all(isinstance(v, int) and 0 <= v < 10 for v in labels)):
        raise DataError(f"{path} is not a CIFAR-10 python batch (expected b'data' uint8 "
                        f"N x {IMAGE_BYTES} and N b'labels' in 0..9): {CIFAR_WHERE}")
    return Images(images=data.reshape(-1, 3, 32, 32), labels=np.asarray(labels, dtype=np.int64))


def load_cifar10(path: str | Path | None) -> tuple[Images, Images]:
    """The training batches (concatenated) and the test batch from directory ``path``.

    Raises DataError, in one line saying where to get the data, when ``path`` is None or a
    file is missing.
    """
    if path is None:
        raise DataError(CIFAR_NOT_SHIPPED)
    root = Path(path).expanduser()
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (root / name).is_file()]
    if missing:
        raise DataError(f"no CIFAR-10 batches in {root} (missing {', '.join(missing)}): {CIFAR_WHERE}")
    train = [read_batch(root / name) for name in TRAIN_FILES]
    test = read_batch(root / TEST_FILE)
    return (Images(np.concatenate([b.images for b in train]),
                  np.concatenate([b.labels for b in train])), test)
