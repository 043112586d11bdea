"""The job specification: what to train and how, in typed sections, validated once at the edge.

A :class:`JobSpec` is identical on every replica of a job. It crosses every boundary as JSON
(CLI -> coordinator -> agent -> replica process), never pickled, and is validated wherever it
enters: :meth:`JobSpec.parse` raises :class:`~potluck.contracts.errors.ConfigError` naming the
field (``optimizer.lr``) and the bad value. Sections::

    JobSpec
    ├── model       which model and its size (a built-in recipe's model, later a user's job file)
    ├── data        which data set, where its files are, the held-out fraction, text windows
    ├── optimizer   learning rate, momentum
    ├── balancer    allocation policy and its knobs, start-of-job profiles
    ├── sync        how replicas combine their work (a SyncStrategy name)
    ├── fault       fault-tolerance limits: replica slots, step timeout
    ├── emulation   emulated device timing (tests, demo)
    ├── code        the user's job file and its bundle (None: a built-in recipe)
    ├── checkpoint  how often the full training state is saved on the host
    └── global_batch, steps | epochs, seed

Names (model, data set, sync strategy) are checked against the training kernel's registries
by :func:`potluck.recipes.check_spec`, or its torch-free catalog by
:func:`potluck.catalog.check_names` (the host), not here: contracts know no implementations.

Flat option names (``--lr``, a YAML ``lr: 0.1``) map to dotted paths through
:data:`JOB_OPTIONS`, the one definition that ``potluck demo``, ``potluck train`` and YAML
job files share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from potluck.contracts.errors import ConfigError

POLICIES = ("equal", "proportional", "dynamic", "hybrid")
Policy = Literal["equal", "proportional", "dynamic", "hybrid"]

MAX_INT = 2**31 - 1
"""Upper bound for counts (steps, batch): far beyond any job, and safe in SQLite and JSON."""
MAX_SEED = 2**63 - 1


class Section(BaseModel):
    """A strict config section: unknown fields, NaN and infinity are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True,
                              validate_assignment=True)


class ModelSection(Section):
    name: str = Field(default="mlp", min_length=1, max_length=100)
    """Built-in model: ``mlp``, ``simple_cnn``, ``resnet18``, ``resnet50`` (image classifiers),
    ``gpt`` or ``bert`` (language models); ignored when ``code.file`` names a job file."""
    size: str | None = Field(default=None, min_length=1, max_length=100)
    """Size of a language model: ``tiny`` (the default, ~0.2M parameters), ``small`` (~7M), and
    ``124M`` (GPT-2 small, gpt) or ``base`` (BERT-base shape, bert); other models take none."""


class DataSection(Section):
    name: str = Field(default="digits", min_length=1, max_length=100)
    """Built-in data set: ``digits`` (real 8x8 handwritten digits), ``synthetic_image``,
    ``cifar10`` (images, read from ``data.path``), ``chars`` (a character-level text corpus)
    or ``synthetic_text``."""
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Fraction of the data set held out for the test accuracy at the end (cifar10 keeps its
    own test batch)."""
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    """Where the data set's files are, the same path on every node: the directory of the
    CIFAR-10 python batches (cifar10), a UTF-8 text file replacing the shipped corpus (chars),
    an npz replacing the shipped digits (digits)."""
    seq_len: int = Field(default=64, ge=2, le=4096)
    """Tokens a language model sees per sample (text data sets): each sample is a window of
    ``seq_len`` tokens plus the next one as the last target."""


class OptimizerSection(Section):
    lr: float = Field(default=0.1, gt=0, le=1e3)
    """Learning rate of SGD."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """SGD momentum."""
    clip_grad_norm: float | None = Field(default=None, gt=0, le=1e6)
    """Clip the global gradient (after the all-reduce) to this L2 norm; None: no clipping."""


class CodeSection(Section):
    """The user's own training code: a job file (see docs/jobfiles.md)."""

    file: str | None = Field(default=None, min_length=1, max_length=1000)
    """The job file: a path relative to the shipped bundle's root when ``bundle`` is set, else
    a path on this machine (``potluck demo --job``)."""
    bundle: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """sha256 of the job directory's bundle stored on the host (set by ``potluck train``)."""
    requirements: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=100)
    """pip requirements (``name`` or ``name==version`` ...) every node must have before the
    job starts."""


class CheckpointSection(Section):
    """Periodic checkpoints of the full training state, kept on the host."""

    every_s: float = Field(default=600.0, gt=0, le=86400 * 7)
    """Write a checkpoint when this many seconds passed since the last one."""
    every_steps: int | None = Field(default=None, ge=1, le=MAX_INT)
    """Also write one every this many committed steps (None: by time only)."""
    keep: int = Field(default=3, ge=1, le=1000)
    """How many checkpoints the host keeps per job (the newest)."""


class BalancerSection(Section):
    policy: Policy = "dynamic"
    """Allocation policy: equal, proportional, dynamic or hybrid."""
    rebalance_interval: int = Field(default=5, ge=1, le=MAX_INT)
    """Re-solve the allocation every K committed steps (dynamic, hybrid)."""
    deadband: float = Field(default=0.02, ge=0, lt=1)
    """Keep the current allocation unless the predicted step time improves by this fraction."""
    profiles: dict[str, tuple[float, float]] = Field(default_factory=dict, max_length=4096)
    """Per-slot profile ``{"<slot>": [overhead_s, sample_s]}`` measured at job start
    (proportional and hybrid start from it)."""

    @field_validator("profiles")
    @classmethod
    def _slots_and_times(cls, profiles: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for slot, (overhead, sample) in profiles.items():
            if not (slot.isdigit() and overhead >= 0 and sample > 0):
                raise ValueError(f"entry {short(slot)} must be a slot number mapped to "
                                 "[overhead_s >= 0, sample_s > 0]")
        return profiles


class SyncSection(Section):
    """How replicas combine their work (docs/sync.md)."""

    strategy: str = Field(default="allreduce", min_length=1, max_length=100)
    """``allreduce`` (exact weighted gradients every step), ``allreduce-bf16`` (the same in
    bf16, approximate), ``diloco`` (local inner phases, approximate) or ``auto`` (chosen from
    the measured link at job start, again when the members change)."""
    wire: Literal["fp32", "bf16", "int8"] = "fp32"
    """diloco: the pseudo-gradients' wire format (int8: per-block scaled)."""
    phase_s: float = Field(default=30.0, gt=0, le=3600)
    """diloco: seconds of local training per inner phase (auto chooses it)."""
    inner_batch: int | None = Field(default=None, ge=1, le=MAX_INT)
    """diloco: samples per inner step on each replica (None: global_batch / replicas)."""
    outer_lr: float = Field(default=0.7, gt=0, le=100)
    """diloco: the outer optimizer's learning rate (SGD with Nesterov momentum)."""
    outer_momentum: float = Field(default=0.9, ge=0, lt=1)
    """diloco: the outer optimizer's momentum."""
    exact: bool = False
    """Forbid approximate modes: ``auto`` may only choose ``allreduce``."""
    target_compute_fraction: float = Field(default=0.85, gt=0, lt=1)
    """auto: choose the first mode predicted to compute at least this fraction of the time."""

    @model_validator(mode="after")
    def _exact_means_exact(self) -> SyncSection:
        if self.exact and self.strategy in ("allreduce-bf16", "diloco"):
            raise ValueError(f"sync.exact forbids the approximate strategy {self.strategy!r}: "
                             "use allreduce or auto")
        return self


class FaultSection(Section):
    max_replicas: int = Field(default=64, ge=1, le=4096)
    """Upper bound on replica slots (sizes the statistics vector shared every step)."""
    step_timeout_s: float = Field(default=20.0, gt=0, le=86400)
    """torchft collective/commit timeout, at least; the sync plan raises it above a long
    predicted sync (docs/sync.md). A step slower than it is discarded."""


class EmulationSection(Section):
    sample_s: float = Field(default=0.0, ge=0, le=3600)
    """Per-sample compute time of a speed-1.0 emulated device (0: measure it at start)."""
    overhead_s: float = Field(default=0.0, ge=0, le=3600)
    """Per-step fixed time of a speed-1.0 emulated device."""


class JobSpec(Section):
    """Job-wide training settings; identical on every replica."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    balancer: BalancerSection = Field(default_factory=BalancerSection)
    sync: SyncSection = Field(default_factory=SyncSection)
    fault: FaultSection = Field(default_factory=FaultSection)
    emulation: EmulationSection = Field(default_factory=EmulationSection)
    code: CodeSection = Field(default_factory=CodeSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    global_batch: int = Field(default=512, ge=1, le=MAX_INT)
    """Samples per optimizer step summed over all replicas (B); independent of the node count."""
    steps: int | None = Field(default=None, ge=1, le=MAX_INT)
    """Committed steps to train; if None, ``epochs`` decides (neither: 100 steps)."""
    epochs: float | None = Field(default=None, gt=0, le=1e6)
    """Epochs to train when ``steps`` is None (one epoch = floor(train size / B) steps)."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seeds the model init and every epoch's permutation: the result depends only on it and B."""

    @property
    def counts_epochs(self) -> bool:
        """The step count depends on the data set's size (``epochs`` given, ``steps`` not)."""
        return self.steps is None and self.epochs is not None

    def total_steps(self, steps_per_epoch: int) -> int:
        """Committed steps this job trains, given ``floor(train size / B)``."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return max(1, int(round(self.epochs * steps_per_epoch)))
        return DEFAULT_STEPS

    @model_validator(mode="before")
    @classmethod
    def _accept_flat_names(cls, raw: Any) -> Any:
        # ``{"model": "mlp", "lr": 0.1}`` is ``{"model": {"name": "mlp"}, "optimizer": {"lr": 0.1}}``
        return _nest(raw) if isinstance(raw, dict) else raw

    @classmethod
    def parse(cls, raw: Any) -> JobSpec:
        """A validated spec from untrusted data: nested sections and/or flat option names.

        Raises ConfigError naming the first bad field and its (truncated) value.
        """
        if isinstance(raw, JobSpec):
            return raw
        if not isinstance(raw, dict):
            raise ConfigError(f"a job spec must be a mapping of fields, got {type(raw).__name__}")
        return _validated(cls, raw)

    def with_options(self, flat: dict[str, Any]) -> JobSpec:
        """A validated copy with flat options (``{"lr": 0.01}``) applied; None values are ignored."""
        return self.updated({_option_path(k): v for k, v in flat.items() if v is not None})

    def updated(self, values: dict[str, Any]) -> JobSpec:
        """A validated copy with dotted paths set: ``{"balancer.policy": "equal"}``."""
        raw = self.model_dump()
        for path, value in values.items():
            _set_path(raw, path, value)
        return _validated(JobSpec, raw)

    def to_json(self) -> str:
        return self.model_dump_json()


@dataclass(frozen=True)
class JobOption:
    """One flat job option: the flag ``--name-with-dashes`` and YAML key ``name`` -> ``path``."""

    name: str
    path: str
    type: type
    help: str


def _field_doc(path: str) -> tuple[type, str]:
    model: type[BaseModel] = JobSpec
    parts = path.split(".")
    for part in parts[:-1]:
        annotation = model.model_fields[part].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation
    info = model.model_fields[parts[-1]]
    kind: type = {"int": int, "float": float, "bool": bool}.get(
        getattr(info.annotation, "__name__", ""), str)
    if info.annotation in (int | None,):
        kind = int
    elif info.annotation in (float | None,):
        kind = float
    return kind, " ".join((info.description or "").replace("``", "").split())


_FLAT = {
    "model": "model.name",
    "model_size": "model.size",
    "dataset": "data.name",
    "data_path": "data.path",
    "seq_len": "data.seq_len",
    "global_batch": "global_batch",
    "steps": "steps",
    "epochs": "epochs",
    "seed": "seed",
    "policy": "balancer.policy",
    "rebalance_interval": "balancer.rebalance_interval",
    "deadband": "balancer.deadband",
    "lr": "optimizer.lr",
    "sync": "sync.strategy",
    "wire": "sync.wire",
    "phase_s": "sync.phase_s",
    "exact": "sync.exact",
    "clip_grad_norm": "optimizer.clip_grad_norm",
    "momentum": "optimizer.momentum",
    "checkpoint_every_s": "checkpoint.every_s",
    "checkpoint_every_steps": "checkpoint.every_steps",
    "requirements": "code.requirements",
}

_FILE_ONLY = ("requirements",)
"""Flat names that job files and YAML take but the command line does not (lists)."""

JOB_OPTIONS: tuple[JobOption, ...] = tuple(
    JobOption(name, path, *_field_doc(path)) for name, path in _FLAT.items()
    if name not in _FILE_ONLY
)
"""The job options every command takes as flags and YAML files take as flat keys."""


def _option_path(name: str) -> str:
    key = name.replace("-", "_")
    if key in _FLAT:
        return _FLAT[key]
    raise ConfigError(f"unknown job option {name!r}: use one of {', '.join(sorted(_FLAT))}")


def _set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    *sections, leaf = path.split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"job field {section!r} must be a mapping, got {short(node)}")
    node[leaf] = value


def _nest(raw: dict[str, Any]) -> dict[str, Any]:
    """Nested sections stay; flat option names become their dotted path."""
    out: dict[str, Any] = {}
    sections = {n for n, f in JobSpec.model_fields.items()
                if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    for key, value in raw.items():
        key = str(key).replace("-", "_")
        if key in sections and isinstance(value, dict):
            target = out.setdefault(key, {})
            target.update(value)
        elif key in _FLAT:
            _set_path(out, _FLAT[key], value)
        else:
            out[key] = value  # pydantic names it if it is unknown
    return out


def merge_fields(*layers: dict[str, Any]) -> dict[str, Any]:
    """Job fields from several sources (a job file's defaults, YAML, ...), later ones winning
    field by field; flat option names and nested sections mix freely."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in _nest(layer).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value cut to ``limit`` characters: error messages never echo megabytes."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validated(cls: type[JobSpec], raw: dict[str, Any]) -> JobSpec:
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "job field")) from None


def describe_validation_error(exc: ValidationError, what: str) -> str:
    """One line naming the first bad field, what is wrong, and the value (truncated)."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return f"unknown {what} {loc!r}: check the spelling (see docs/jobs.md)"
    if err.get("type") == "literal_error":
        expected = (err.get("ctx") or {}).get("expected", "")
        return (f"unknown {loc.rsplit('.', 1)[-1]} {short(err.get('input'))} ({what} {loc!r}): "
                f"choose {expected}")
    extra = "" if err.get("type") == "missing" else f", got {short(err.get('input'))}"
    return f"{what} {loc!r}: {msg}{extra}"


# The replica process --------------------------------------------------------------------------


class TestHooks(Section):
    """Failure injection and extra recording for tests and benchmarks; empty in production."""

    __test__ = False  # not a pytest class

    record_indices: bool = False
    """Write each step's sample indices into the step events (for exactly-once checks)."""
    fail_at_step: int | None = Field(default=None, ge=0)
    """Exit the process hard when this step is about to be computed."""
    speed_changes: list[tuple[int, float]] = Field(default_factory=list, max_length=1000)
    """Emulated speed changes ``[[step, new_speed], ...]``: a device that slows down mid-run."""


DEFAULT_STEPS = 100
"""Steps of a job that names neither ``steps`` nor ``epochs``. Measured on the default job
(mlp on digits, B=512, lr 0.1; one process): test accuracy 0.15 after 2 steps (the old default
of one epoch), 0.51 after 10, 0.95 after 50, 0.96 after 100."""

MIN_USEFUL_STEPS = 50
"""``potluck train`` warns below this many steps: the built-in models need about 50 to learn
digits (mlp: 0.68 at 10 steps and 0.91 at 50 with B=128; simple_cnn: 0.07 at 25, 0.73 at 50)."""


class ReplicaSpec(Section):
    """What a launcher hands one replica process: the job plus this replica's own settings."""

    job: JobSpec
    """The job it trains."""
    slot: int = Field(ge=0)
    """Stable replica index in [0, job.fault.max_replicas); unique in the job, kept across restarts."""
    name: str = Field(min_length=1, max_length=100)
    """Human name (node name), used in logs and metrics."""
    lighthouse: str = Field(min_length=1, max_length=300)
    """torchft Lighthouse address, e.g. ``http://127.0.0.1:29510``."""
    run_dir: str
    """Experiment directory of the run; events go to ``run_dir/replicas/<name>.jsonl``."""
    advertise_host: str = "127.0.0.1"
    """Address peers use to reach this replica (torchft manager, store, gloo)."""
    speed: float = Field(default=1.0, gt=0, le=1000)
    """Emulated device speed: 1.0 is the real device, 0.25 behaves 4x slower (padded with sleep)."""
    profile_sample_s: float | None = Field(default=None, gt=0)
    """Per-sample time from ``potluck profile`` (used by proportional and hybrid)."""
    profile_overhead_s: float | None = Field(default=None, ge=0)
    """Per-step fixed time from the profile."""
    memory_cap: int | None = Field(default=None, ge=1)
    """Largest micro-batch this device fits; larger shares use gradient accumulation."""
    save_model: str | None = None
    """Write the final model state_dict here when training ends (safetensors when the name
    ends in ``.safetensors``, else torch.save)."""
    code_dir: str | None = None
    """Where the job's bundle is unpacked on this machine (``job.code.file`` is relative to it)."""
    resume_from: str | None = None
    """A checkpoint file (see ``trainer/state.py``) to start from instead of step 0."""
    min_step: int = Field(default=0, ge=0)
    """The job's step when this replica was assigned (see Assignment.min_step)."""
    checkpoint_dir: str | None = None
    """Write checkpoints and the final model here (the agent sends them to the host);
    None: no checkpoints."""
    device: str = "cpu"
    """torch device string: cpu or cuda[:N]."""
    start_barrier: int = Field(default=0, ge=0)
    """Launchers on one machine: wait until this many replicas are ready before step 0."""
    threads: int = Field(default=0, ge=0)
    """torch threads for this replica (0: 1 when emulating a speed, else torch's default)."""
    group_rank: int = Field(default=0, ge=0)
    """Rank of this process inside its replica group (one process per group today)."""
    group_world_size: int = Field(default=1, ge=1)
    """Processes in this replica group."""
    hooks: TestHooks = Field(default_factory=TestHooks)
    """Tests only: failure injection and extra recording."""
    secret: str | None = Field(default=None, min_length=32, max_length=256, repr=False)
    """The job's secret (from the coordinator's Assignment, or made by LocalCluster): tags this
    replica's torchft id and authenticates recovery checkpoints. Never part of the JobSpec;
    None disables both (tests of one process only). See docs/security.md."""

    def model_post_init(self, _: Any) -> None:
        if self.slot >= self.job.fault.max_replicas:
            raise ValueError(f"slot must be < fault.max_replicas ({self.job.fault.max_replicas}), "
                             f"got {self.slot}")
        if self.group_rank >= self.group_world_size:
            raise ValueError(f"group_rank {self.group_rank} must be < group_world_size "
                             f"{self.group_world_size}")

    @classmethod
    def parse(cls, raw: Any) -> ReplicaSpec:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, "replica spec field")) from None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def load(cls, path: str | Path) -> ReplicaSpec:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read replica spec {path}: {exc}") from exc
        return cls.parse(raw)


__all__ = ["JobSpec", "ReplicaSpec", "TestHooks", "JOB_OPTIONS", "JobOption", "POLICIES",
           "describe_validation_error", "short"]
