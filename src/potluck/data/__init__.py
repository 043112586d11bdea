"""Built-in data sets. Nothing is downloaded: ``digits`` ships inside the package."""

from potluck.data.datasets import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "load_dataset"]
