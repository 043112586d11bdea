"""What the built-in plug-ins accept, as plain data, and the name check of a job against it.

The built-in models with the data sets and sizes each takes, the built-in data sets and the
built-in sync strategies. Torch-free, so that ``potluck host`` checks a submitted job without
importing torch (about 1 CPU-second and 200 MB of memory per host process). The kernel's
registries (``recipes/``, ``trainer/sync.py``), which build these things, must agree with it:
``tests/core/test_catalog.py`` checks that they do, so a new built-in gets a line here too.
A job file's recipe (``code.file``) is the user's code, checked where it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from potluck.contracts.errors import ConfigError, DataError, ModelError
from potluck.contracts.jobspec import JobSpec

IMAGE_DATASETS = ("digits", "synthetic_image", "cifar10")
TEXT_DATASETS = ("chars", "synthetic_text")
DATASETS = IMAGE_DATASETS + TEXT_DATASETS
"""Every built-in data set name."""
GENERATED = ("synthetic_image", "synthetic_text")
"""Data sets made from the seed, which read no files (``data.path`` makes no sense for them)."""
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_WHERE = f"download {CIFAR10_URL}, unpack and pass --data-path DIR (DIR holds data_batch_1 .. 5)"
"""Where a user gets CIFAR-10 (potluck ships no copy and downloads nothing)."""
CIFAR_NOT_SHIPPED = f"cifar10 is not shipped with potluck: {CIFAR_WHERE}"
"""The line for a cifar10 job without ``data.path``."""


@dataclass(frozen=True)
class ModelNeeds:
    """What a built-in model trains on."""

    takes: str
    """``images`` or ``text``."""
    sizes: tuple[str, ...] = ()
    """Its ``model.size`` names (none: it has no sizes)."""

    @property
    def datasets(self) -> tuple[str, ...]:
        return IMAGE_DATASETS if self.takes == "images" else TEXT_DATASETS


TRANSFORMER_SIZES = ("tiny", "small")
MODELS: dict[str, ModelNeeds] = {
    "mlp": ModelNeeds("images"),
    "simple_cnn": ModelNeeds("images"),
    "resnet18": ModelNeeds("images"),
    "resnet50": ModelNeeds("images"),
    "gpt": ModelNeeds("text", (*TRANSFORMER_SIZES, "124M")),
    "bert": ModelNeeds("text", (*TRANSFORMER_SIZES, "base")),
}
SYNC_STRATEGIES = ("allreduce", "allreduce-bf16", "diloco")
AUTO = "auto"
"""Not a strategy: the replica chooses one from the measured link (trainer/plan.py)."""


def check_model(spec: JobSpec) -> None:
    """Raise one line if ``spec`` names a model that is not built in, a data set it cannot
    train on, a size it does not have, or ``data.path`` for a generated data set."""
    model, data = spec.model.name, spec.data.name
    if model not in MODELS:
        raise ModelError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    needs = MODELS[model]
    datasets = needs.datasets
    choose = " or ".join([", ".join(datasets[:-1]), datasets[-1]] if len(datasets) > 1 else datasets)
    if data not in DATASETS:
        raise DataError(f"unknown data set {data!r}: model {model!r} takes {choose}")
    if data not in datasets:
        raise DataError(f"model {model!r} trains on {needs.takes}: choose data set {choose}, "
                        f"not {data!r}")
    if spec.data.path is not None and data in GENERATED:
        raise DataError(f"data set {data!r} is generated from the seed and reads no files: "
                        "drop data.path")
    if data == "cifar10" and spec.data.path is None:
        raise DataError(CIFAR_NOT_SHIPPED)
    size = spec.model.size
    if size is not None and size not in needs.sizes:
        if not needs.sizes:
            raise ModelError(f"model {model!r} has no sizes: drop model.size {size!r} "
                             "(sizes are for gpt and bert)")
        raise ModelError(f"unknown size {size!r} for model {model!r}: choose one of "
                         f"{', '.join(needs.sizes)}")


def check_job_file(spec: JobSpec) -> None:
    """A job file named by path must exist here; a shipped bundle is checked by the agents
    (the host has only the archive)."""
    file = spec.code.file
    if file is not None and spec.code.bundle is None:
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"job file {path} not found")


def check_sync(spec: JobSpec) -> None:
    name = spec.sync.strategy
    if name != AUTO and name not in SYNC_STRATEGIES:
        raise ConfigError(f"unknown sync strategy {name!r}: choose one of "
                          f"{', '.join(SYNC_STRATEGIES)}")


def check_names(spec: JobSpec) -> JobSpec:
    """Check the names in ``spec`` against the built-ins (the host's check on submission)."""
    if spec.code.file is not None:
        check_job_file(spec)
    else:
        check_model(spec)
    check_sync(spec)
    return spec


__all__ = ["AUTO", "CIFAR10_URL", "CIFAR_NOT_SHIPPED", "CIFAR_WHERE", "DATASETS", "GENERATED", "IMAGE_DATASETS", "MODELS",
           "ModelNeeds", "SYNC_STRATEGIES", "TEXT_DATASETS", "check_job_file", "check_model",
           "check_names", "check_sync"]
