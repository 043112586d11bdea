"""Built-in data sets. Nothing is downloaded: ``digits`` and the ``chars`` corpus ship inside
the package, the synthetic sets are generated from the seed, and ``cifar10`` is read from the
user's own copy (``data.path``)."""

from potluck.data.datasets import IMAGE_DATASETS, Dataset, load_dataset
from potluck.data.text import TEXT_DATASETS, TextDataset, load_text

DATASETS = IMAGE_DATASETS + TEXT_DATASETS
"""Every built-in data set name."""

GENERATED = ("synthetic_image", "synthetic_text")
"""Data sets made from the seed, which read no files (``data.path`` makes no sense for them)."""

__all__ = ["DATASETS", "GENERATED", "IMAGE_DATASETS", "TEXT_DATASETS", "Dataset", "TextDataset",
           "load_dataset", "load_text"]
