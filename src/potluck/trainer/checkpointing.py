"""Periodic checkpoints of the full training state, written in the background.

One replica (the lowest slot of the step's quorum) writes them, into the replica's
``checkpoint_dir``; the agent sends each new file to the host (``potluck pull`` and
``--resume`` read them there). Taking a snapshot copies the state's tensors to CPU memory
while training waits (a memory copy); serialising and writing happen on a thread, so the
next step starts at once. At most one write is in flight: a snapshot due while the previous
one is still being written waits for it (back-pressure, never an unbounded queue).

Files: ``step-00000120.safetensors`` (see :mod:`potluck.trainer.state`) and, at the end,
``model.safetensors``. Each finished write is announced with a
:class:`~potluck.contracts.events.CheckpointEvent` carrying the file's sha256.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from potluck.contracts.events import CheckpointEvent
from potluck.contracts.jobspec import CheckpointSection
from potluck.log import get_logger
from potluck.system import write_atomic
from potluck.trainer.state import model_bytes, state_bytes

log = get_logger("trainer.checkpointing")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.safetensors"


def snapshot(value: Any) -> Any:
    """A copy of a state structure whose tensors are CPU clones (the live state may change
    as soon as this returns)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snapshot(v) for v in value]
    if isinstance(value, tuple):
        return tuple(snapshot(v) for v in value)
    return value


class Checkpointer:
    """Decides when a checkpoint is due and writes it without holding up training."""

    def __init__(self, folder: str | Path, policy: CheckpointSection,
                 emit: Callable[[BaseModel], None], ident: Callable[[], dict[str, Any]]) -> None:
        self.folder = Path(folder)
        self.policy = policy
        self._emit = emit
        self._ident = ident
        self._last_t = time.monotonic()
        self._last_step = -1
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.snapshot_s = 0.0
        """Seconds training waited for snapshots so far (the stall a checkpoint costs)."""
        self.written: list[int] = []

    def due(self, step: int) -> bool:
        """Is a checkpoint due after ``step`` committed steps?"""
        if step <= self._last_step:
            return False
        every = self.policy.every_steps
        return (every is not None and step % every == 0) or \
            time.monotonic() - self._last_t >= self.policy.every_s

    def save(self, step: int, state: dict[str, Any], *, final: bool = False) -> None:
        """Snapshot ``state`` now and write it as the checkpoint after ``step`` steps (in the
        background; ``final``: wait for it, and mark it as the job's last)."""
        t0 = time.perf_counter()
        self.join()
        copy = snapshot(state)
        self.snapshot_s += time.perf_counter() - t0
        self._last_t, self._last_step = time.monotonic(), step
        self._thread = threading.Thread(target=self._write, args=(step, copy, final),
                                        name="potluck-checkpoint", daemon=True)
        self._thread.start()
        if final:
            self.join()

    def save_model(self, state_dict: dict[str, torch.Tensor], **metadata: str) -> Path:
        self.join()
        return write_atomic(self.folder / "model.safetensors", model_bytes(state_dict, **metadata))

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(self, step: int, state: dict[str, Any], final: bool) -> None:
        name = checkpoint_name(step)
        try:
            data = state_bytes(state, step=step, copy=False)
            write_atomic(self.folder / name, data)
        except Exception as exc:  # a full disk must not stop training: report and go on
            self.error = f"checkpoint at step {step} not written: {exc}"
            log.error("%s", self.error)
            return
        self.written.append(step)  # the agent deletes older files once the host has a newer one
        self._emit(CheckpointEvent(**{**self._ident(), "step": step}, file=name,
                                   sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                                   final=final))
        log.info("checkpoint after step %d written (%.1f MB)", step, len(data) / 1e6)
