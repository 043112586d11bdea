"""What a launcher hands a replica process: the job's config and the replica's own settings.

Both are keyword-only dataclasses validated once, here, at the edge: ``validate()`` raises
:class:`~potluck.errors.ConfigError` naming the field and the bad value. They cross a process
boundary as JSON (``ReplicaSpec.to_json`` / ``from_json``), never pickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from potluck.errors import ConfigError

POLICIES = ("equal", "proportional", "dynamic", "hybrid")


@dataclass(kw_only=True)
class JobConfig:
    """Job-wide training settings; identical on every replica."""

    model: str = "mlp"
    """Built-in model name: ``mlp`` or ``simple_cnn``."""
    dataset: str = "digits"
    """Built-in data set: ``digits`` (real 8x8 handwritten digits) or ``synthetic_image``."""
    global_batch: int = 512
    """Samples per optimizer step summed over all replicas (B); independent of the node count."""
    steps: int | None = None
    """Committed steps to train; if None, ``epochs`` decides."""
    epochs: float | None = None
    """Epochs to train when ``steps`` is None (one epoch = floor(train size / B) steps)."""
    seed: int = 0
    """Seeds the model init and every epoch's permutation: the result depends only on it and B."""
    policy: str = "dynamic"
    """Allocation policy: equal, proportional, dynamic or hybrid."""
    rebalance_interval: int = 5
    """Re-solve the allocation every K committed steps (dynamic, hybrid)."""
    deadband: float = 0.02
    """Keep the current allocation unless the predicted step time improves by this fraction."""
    lr: float = 0.1
    """Learning rate of SGD with momentum 0.9."""
    test_fraction: float = 0.2
    """Fraction of the data set held out for the test accuracy at the end."""
    max_replicas: int = 64
    """Upper bound on replica slots (sizes the statistics vector shared every step)."""
    step_timeout_s: float = 20.0
    """torchft collective/commit timeout; a step slower than this is discarded."""
    emulated_sample_s: float = 0.0
    """Per-sample compute time of a speed-1.0 emulated device (0: measure it at start)."""
    emulated_overhead_s: float = 0.0
    """Per-step fixed time of a speed-1.0 emulated device."""
    profiles: dict[str, list[float]] = field(default_factory=dict)
    """Per-slot profile ``{"<slot>": [overhead_s, sample_s]}`` measured at job start
    (proportional and hybrid start from it)."""

    def validate(self) -> JobConfig:
        if self.model not in ("mlp", "simple_cnn"):
            raise ConfigError(f"unknown model {self.model!r}: choose mlp or simple_cnn")
        if self.dataset not in ("digits", "synthetic_image"):
            raise ConfigError(
                f"unknown data set {self.dataset!r}: choose digits or synthetic_image"
            )
        if self.global_batch < 1:
            raise ConfigError(f"global_batch must be >= 1, got {self.global_batch}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.rebalance_interval < 1:
            raise ConfigError(f"rebalance_interval must be >= 1, got {self.rebalance_interval}")
        if not 0 <= self.deadband < 1:
            raise ConfigError(f"deadband must be in [0, 1), got {self.deadband}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        for slot, prof in self.profiles.items():
            if not (str(slot).isdigit() and len(prof) == 2 and prof[0] >= 0 and prof[1] > 0):
                raise ConfigError(f"profiles[{slot!r}] must be [overhead_s >= 0, sample_s > 0], got {prof}")
        if self.emulated_sample_s < 0 or self.emulated_overhead_s < 0:
            raise ConfigError("emulated_sample_s and emulated_overhead_s must be >= 0")
        return self


@dataclass(kw_only=True)
class ReplicaSpec:
    """One replica process: who it is, where the Lighthouse is, where to write metrics."""

    job: JobConfig
    """The job it trains."""
    slot: int
    """Stable replica index in [0, job.max_replicas); unique in the job, kept across restarts."""
    name: str
    """Human name (node name), used in logs and metrics."""
    lighthouse: str
    """torchft Lighthouse address, e.g. ``http://127.0.0.1:29510``."""
    run_dir: str
    """Experiment directory of the run; metrics go to ``run_dir/replicas/<name>.jsonl``."""
    advertise_host: str = "127.0.0.1"
    """Address peers use to reach this replica (torchft manager, store, gloo)."""
    speed: float = 1.0
    """Emulated device speed: 1.0 is the real device, 0.25 behaves 4x slower (padded with sleep)."""
    profile_sample_s: float | None = None
    """Per-sample time from ``potluck profile`` (used by proportional and hybrid)."""
    profile_overhead_s: float | None = None
    """Per-step fixed time from the profile."""
    memory_cap: int | None = None
    """Largest micro-batch this device fits; larger shares use gradient accumulation."""
    record_indices: bool = False
    """Write each step's sample indices into the metrics (for exactly-once checks)."""
    fail_at_step: int | None = None
    """Failure injection: exit the process hard when this step is about to be computed."""
    save_model: str | None = None
    """Write the final model state_dict here (torch.save) when training ends."""
    device: str = "cpu"
    """torch device string: cpu or cuda[:N]."""
    speed_changes: list[list[float]] = field(default_factory=list)
    """Emulated speed changes ``[[step, new_speed], ...]``: a device that slows down mid-run."""
    start_barrier: int = 0
    """Launchers on one machine: wait until this many replicas are ready before step 0."""
    threads: int = 0
    """torch threads for this replica (0: 1 when emulating a speed, else torch's default)."""

    def validate(self) -> ReplicaSpec:
        self.job.validate()
        if not 0 <= self.slot < self.job.max_replicas:
            raise ConfigError(f"slot must be in [0, {self.job.max_replicas}), got {self.slot}")
        if not (self.speed > 0 and math.isfinite(self.speed)):
            raise ConfigError(f"speed must be > 0, got {self.speed}")
        for change in self.speed_changes:
            if len(change) != 2 or change[0] < 0 or not change[1] > 0:
                raise ConfigError(f"speed_changes entries must be [step >= 0, speed > 0], got {change}")
        if self.memory_cap is not None and self.memory_cap < 1:
            raise ConfigError(f"memory_cap must be >= 1, got {self.memory_cap}")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReplicaSpec:
        raw: dict[str, Any] = json.loads(text)
        job = JobConfig(**_known(JobConfig, raw.pop("job")))
        return cls(job=job, **_known(cls, raw)).validate()

    @classmethod
    def load(cls, path: str | Path) -> ReplicaSpec:
        return cls.from_json(Path(path).read_text())


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    return {k: v for k, v in raw.items() if k in names}


__all__ = ["JobConfig", "ReplicaSpec", "POLICIES"]
