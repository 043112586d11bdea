"""The user's own training code: a job file of plain functions, run as a :class:`Recipe`.

A job file is a Python module. potluck owns the training loop (which samples each replica
computes, weighting, the sync, redoing failed steps); the module says what to train::

    def model(ctx): ...                 # -> nn.Module, built on CPU from ctx.seed
    def dataset(ctx): ...               # -> map-style data set (len + indexing)
    def loss(model, batch, ctx): ...    # -> scalar mean over the batch, or TokenLoss(sum, count)

and optionally ``eval_dataset(ctx)``, ``collate(samples)``, ``optimizer(params, ctx)``,
``scheduler(optimizer, ctx)`` (stepped once per committed step), ``evaluate(model, ctx)``
(-> dict of numbers), ``state()`` / ``load_state(state)`` (extra state that heals with the
model) and a ``POTLUCK = {...}`` dict of job defaults that flags and YAML override.

Anything the module raises becomes one :class:`~potluck.contracts.errors.JobCodeError` line
naming the job file's ``file:line`` and the exception; the full traceback goes to the log.
Guide: docs/jobfiles.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset, default_collate

from potluck.catalog import check_job_file
from potluck.contracts.errors import ConfigError, JobCodeError
from potluck.contracts.jobspec import JobSpec
from potluck.log import get_logger
from potluck.recipes.base import Batch, Recipe, RecipeContext, TrainData

log = get_logger("recipes.jobfile")

REQUIRED = ("model", "dataset", "loss")
OPTIONAL = ("eval_dataset", "collate", "optimizer", "scheduler", "evaluate", "state",
            "load_state")
_modules: dict[Path, ModuleType] = {}


def describe_exception(exc: BaseException, root: Path, what: str) -> str:
    """``job.py:12 in loss: ValueError: bad shape`` for the deepest frame inside ``root``
    (the user's code), else the deepest frame. Pure."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        frames.append(traceback.FrameSummary(exc.filename, exc.lineno or 0, "<module>"))
    mine = [f for f in frames if _inside(f.filename, root)] or frames
    where = ""
    if mine:
        f = mine[-1]
        name = Path(f.filename)
        shown = name.relative_to(root) if _inside(f.filename, root) else name.name
        where = f"{shown}:{f.lineno} in {f.name}: "
    text = " ".join(str(exc).split())[:300]
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"{where}{message}" if where else f"{message} (in {what})"


def _inside(filename: str, root: Path) -> bool:
    try:
        Path(filename).resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def load_job_module(path: str | Path) -> ModuleType:
    """Import the job file at ``path`` once per process (its folder is importable, so helper
    modules beside it work). Raises ConfigError if it is missing, JobCodeError if it raises."""
    path = Path(path).expanduser().resolve()
    if path in _modules:
        return _modules[path]
    if not path.is_file():
        raise ConfigError(f"job file {path} not found: pass the path of a .py file that "
                          "defines model(ctx), dataset(ctx) and loss(model, batch, ctx)")
    if path.suffix != ".py":
        raise ConfigError(f"job file {path} must be a Python file ending in .py")
    name = "potluck_job_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        log.error("job file %s raised on import:\n%s", path, traceback.format_exc())
        raise JobCodeError(describe_exception(exc, path.parent, "the job file")) from exc
    missing = [f for f in REQUIRED if not callable(getattr(module, f, None))]
    if missing:
        raise ConfigError(f"job file {path.name} does not define {', '.join(missing)}: a job "
                          "file needs model(ctx), dataset(ctx) and loss(model, batch, ctx)")
    _modules[path] = module
    return module


def job_defaults(path: str | Path) -> dict[str, Any]:
    """The job file's ``POTLUCK`` dict (job defaults; empty if it has none)."""
    module = load_job_module(path)
    defaults = getattr(module, "POTLUCK", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"POTLUCK in {Path(path).name} must be a dict of job fields, e.g. "
                          "POTLUCK = {'global_batch': 64, 'steps': 200}")
    return dict(defaults)


DATA_THREADS = 4
"""Threads fetching one batch's samples (``__getitem__`` that reads or decodes files releases
the GIL); the replica's prefetcher runs ``take`` for the next step while this one computes."""


class MapData:
    """A map-style data set seen through ``take(indices)``: fetch each sample, collate."""

    def __init__(self, dataset: Any, collate: Callable[[list[Any]], Any] | None,
                 guard: Callable[..., Any]) -> None:
        self.dataset = dataset
        self.collate = collate or default_collate
        self._guard = guard
        self._pool: ThreadPoolExecutor | None = None

    def _samples(self, idx: list[int]) -> list[Any]:
        if len(idx) < 2 * DATA_THREADS:
            return [self.dataset[i] for i in idx]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(DATA_THREADS, thread_name_prefix="potluck-sample")
        return list(self._pool.map(self.dataset.__getitem__, idx,
                                   chunksize=max(1, len(idx) // (4 * DATA_THREADS))))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]

    def take(self, indices: torch.Tensor | Sequence[int]) -> Any:
        """The batch at ``indices``. Fast paths, one indexing operation per tensor: a
        ``TensorDataset`` (with the default collate), or a data set with its own
        ``take(indices)``; otherwise one ``__getitem__`` per sample, then ``collate``."""
        ds = self.dataset
        if hasattr(ds, "take"):
            return self._guard("dataset.take", lambda: ds.take(torch.as_tensor(indices)))
        if isinstance(ds, TensorDataset) and self.collate is default_collate:
            index = torch.as_tensor(indices)
            return tuple(tensor[index] for tensor in ds.tensors)
        idx = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        return self._guard("dataset[i] / collate", lambda: self.collate(self._samples(idx)))


class JobFileRecipe(Recipe):
    """A :class:`Recipe` whose parts are the job file's functions."""

    name = "jobfile"

    def __init__(self, spec: JobSpec, code_root: str | Path | None = None) -> None:
        super().__init__(spec)
        self.code_root = Path(code_root) if code_root is not None else None
        self._module: ModuleType | None = None
        self._data: TrainData | None = None

    @property
    def path(self) -> Path:
        """The job file on this machine (in the unpacked bundle when the job ships one)."""
        file = self.spec.code.file
        assert file is not None
        if self.spec.code.bundle is None:
            return Path(file).expanduser().resolve()
        if self.code_root is None:
            raise ConfigError("this job's code is a shipped bundle: the replica needs its "
                              "unpacked folder (code_dir)")
        path = (self.code_root / file).resolve()
        if not _inside(str(path), self.code_root):
            raise ConfigError(f"code.file {file!r} points outside the job's bundle")
        return path

    @property
    def module(self) -> ModuleType:
        if self._module is None:
            self._module = load_job_module(self.path)
        return self._module

    def has(self, name: str) -> bool:
        return callable(getattr(self.module, name, None))

    def call(self, name: str, *args: Any) -> Any:
        """The job file's ``name(*args)``; its exceptions become one JobCodeError line."""
        return self.guard(name, lambda: getattr(self.module, name)(*args))

    def guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except JobCodeError:
            raise
        except Exception as exc:
            log.error("the job file raised in %s:\n%s", what, traceback.format_exc())
            raise JobCodeError(describe_exception(exc, self.path.parent, what)) from exc

    def check(self) -> None:
        """Cheap: the host only has the bundle, so a shipped job is checked by the agents."""
        check_job_file(self.spec)

    def model(self, ctx: RecipeContext) -> nn.Module:
        torch.manual_seed(ctx.seed)
        built = self.call("model", ctx)
        if not isinstance(built, nn.Module):
            raise JobCodeError(f"{self.path.name}: model(ctx) must return a torch.nn.Module, "
                               f"got {type(built).__name__}")
        return built

    def data(self, ctx: RecipeContext) -> TrainData:
        if self._data is None:
            collate = getattr(self.module, "collate", None)
            train = self.call("dataset", ctx)
            test = self.call("eval_dataset", ctx) if self.has("eval_dataset") else None
            for what, ds in (("dataset", train), ("eval_dataset", test)):
                if ds is not None and not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
                    raise JobCodeError(f"{self.path.name}: {what}(ctx) must return a map-style "
                                       f"data set (len() and [i]), got {type(ds).__name__}")
            self._data = TrainData(train=MapData(train, collate, self.guard),
                                   test=MapData(test, collate, self.guard) if test is not None else None)
        return self._data

    def loss(self, model: nn.Module, batch: Batch, ctx: RecipeContext) -> Any:
        return self.call("loss", model, batch, ctx)

    def optimizer(self, params: Iterable[nn.Parameter], ctx: RecipeContext) -> torch.optim.Optimizer:
        if self.has("optimizer"):
            return self.call("optimizer", params, ctx)
        return super().optimizer(params, ctx)

    def scheduler(self, optimizer: torch.optim.Optimizer, ctx: RecipeContext) -> Any:
        return self.call("scheduler", optimizer, ctx) if self.has("scheduler") else None

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TrainData, ctx: RecipeContext) -> dict[str, float]:
        if not self.has("evaluate"):
            return {}
        was_training = model.training
        model.eval()
        try:
            scores = self.call("evaluate", model, ctx)
        finally:
            model.train(was_training)
        if not isinstance(scores, dict):
            raise JobCodeError(f"{self.path.name}: evaluate(model, ctx) must return a dict of "
                               f"numbers, got {type(scores).__name__}")
        return {str(k): float(v) for k, v in scores.items()}

    def extra_state(self) -> Any:
        return self.call("state") if self.has("state") else None

    def load_extra_state(self, state: Any) -> None:
        if self.has("load_state") and state is not None:
            self.call("load_state", state)
