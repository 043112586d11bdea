"""Built-in image data sets, loaded as in-memory tensors with a seeded train/test split.

``digits``: 1,797 real 8x8 handwritten digits shipped in ``data/files/digits.npz``.
``synthetic_image``: 3x16x16 images whose class is a seeded pattern plus noise; deterministic
for a seed, any size.
``cifar10``: 60,000 3x32x32 colour images in 10 classes, read from the user's copy of the
CIFAR-10 python batches (:mod:`potluck.data.cifar`); kept as uint8 (180 MB instead of 720 MB
as float32), and the recipes' models take uint8 input.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from potluck.catalog import IMAGE_DATASETS
from potluck.contracts.errors import DataError
from potluck.data.cifar import load_cifar10


@dataclass(frozen=True)
class Dataset:
    """A split data set; ``train_x[i]`` is sample ``i`` of every epoch's permutation space."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def load_digits_arrays(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``images`` (N, 8, 8) uint8 and ``labels`` (N,) from the shipped npz (or ``path``)."""
    try:
        if path is None:
            ref = resources.files("potluck.data").joinpath("files/digits.npz")
            with resources.as_file(ref) as real:
                arrays = np.load(real)
                images, labels = arrays["images"], arrays["labels"]
        else:
            arrays = np.load(path)
            images, labels = arrays["images"], arrays["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"cannot read the digits data set from {path or 'the potluck package'} ({exc}): "
            "reinstall potluck (`make install`)"
        ) from exc
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DataError(f"digits file has unexpected shapes {images.shape} / {labels.shape}")
    return images, labels


def _synthetic_image(seed: int, n: int = 2400, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 7919)
    patterns = rng.normal(0.0, 1.0, size=(classes, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, classes, size=n)
    noise = rng.normal(0.0, 1.5, size=(n, 3, 16, 16)).astype(np.float32)
    return patterns[labels] + noise, labels


def load_dataset(name: str, *, seed: int = 0, test_fraction: float = 0.2,
                 path: str | Path | None = None) -> Dataset:
    """Load ``name`` and split it with ``seed`` (cifar10: its own test batch).

    ``path`` replaces the shipped digits file, and is where the CIFAR-10 batches are.
    Raises :class:`DataError` for unknown names and unreadable files.
    """
    if name == "cifar10":
        train_set, test_set = load_cifar10(path)
        return Dataset(name=name, train_x=torch.from_numpy(train_set.images),
                       train_y=torch.from_numpy(train_set.labels),
                       test_x=torch.from_numpy(test_set.images),
                       test_y=torch.from_numpy(test_set.labels), num_classes=10)
    if name == "digits":
        images, labels = load_digits_arrays(path)
        x = images.astype(np.float32)[:, None, :, :] / 16.0
        y = labels.astype(np.int64)
        classes = 10
    elif name == "synthetic_image":
        x, y = _synthetic_image(seed)
        classes = 10
    else:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(IMAGE_DATASETS)}")
    # The split is seeded independently of the training permutation.
    order = np.random.default_rng(seed + 104729).permutation(len(y))
    n_test = max(1, int(round(len(y) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(x[train])),
        train_y=torch.from_numpy(np.ascontiguousarray(y[train])),
        test_x=torch.from_numpy(np.ascontiguousarray(x[test])),
        test_y=torch.from_numpy(np.ascontiguousarray(y[test])),
        num_classes=classes,
    )
