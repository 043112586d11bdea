"""Built-in data sets. Nothing is downloaded: ``digits`` and the ``chars`` corpus ship inside
the package, the synthetic sets are generated from the seed, and ``cifar10`` is read from the
user's own copy (``data.path``)."""

from potluck.catalog import DATASETS, GENERATED, IMAGE_DATASETS, TEXT_DATASETS
from potluck.data.datasets import Dataset, load_dataset
from potluck.data.text import TextDataset, load_text

__all__ = ["DATASETS", "GENERATED", "IMAGE_DATASETS", "TEXT_DATASETS", "Dataset", "TextDataset",
           "load_dataset", "load_text"]
