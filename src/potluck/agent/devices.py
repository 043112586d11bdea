"""Several devices on one machine, and one agent per state directory.

A machine with several GPUs contributes all of them as **one replica per device**: each device
registers as its own node (``box-cuda0``, ``box-cuda1``, each with its own node key, slot and
share of every batch) and runs its own replica group. Why not one multi-rank replica group per
machine: the devices of one machine are often different (an RTX 3070 beside a GTX 1660), and a
torchft replica group splits its share evenly across its ranks, so the slow device would set
the pace of the fast one. One replica per device lets the balancer give each its measured
share, and a failing device (out of memory, a driver reset) drops out alone while the other
keeps training. The cost is that two devices of one machine exchange gradients through gloo on
the machine's own address instead of NCCL's peer-to-peer path; next to the links between
machines that potluck is built for, that hop is not the bottleneck.

One state directory holds one agent: :class:`StateDirLock` (an ``flock`` on
``STATE_DIR/agent.lock``) refuses a second agent on it with one line, instead of letting two
agents share the node key and start two replicas in the same slot.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from potluck.contracts.errors import ConfigError, ConflictError

CPU_ALIASES = ("cpu",)


def visible_gpu_count(detected: int, env: dict[str, str] | None = None) -> int:
    """GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` narrows what ``nvidia-smi`` lists. Pure."""
    visible = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return detected
    return min(detected, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))


def parse_devices(text: str, gpu_count: int) -> list[str]:
    """The devices to train on, one replica each, from ``--device``. Pure.

    ``auto``: every visible GPU (``cuda:0`` ... ``cuda:N-1``), else ``cpu``. A comma-separated
    list names them (``cuda:0,cuda:1``); ``cpu`` may repeat (several emulated devices on one
    machine, for tests and the demo). Raises ConfigError naming the bad part.
    """
    text = text.strip()
    if text == "auto":
        return [f"cuda:{i}" for i in range(gpu_count)] or ["cpu"]
    devices = [part.strip() for part in text.split(",")]
    for dev in devices:
        index = dev.removeprefix("cuda:")
        if dev not in ("cpu", "cuda") and not (dev.startswith("cuda:") and index.isdigit()):
            raise ConfigError(
                f"--device {text!r}: {dev!r} is not a device; use auto, cpu, cuda, cuda:N, or a "
                "comma-separated list such as cuda:0,cuda:1"
            )
    gpus = [d for d in devices if d != "cpu"]
    if len(set(gpus)) != len(gpus) or ("cuda" in gpus and len(gpus) > 1):
        raise ConfigError(f"--device {text!r} names a GPU twice: list each GPU once (cuda:0,cuda:1)")
    return devices


def parse_speeds(text: str, count: int) -> list[float]:
    """``--emulate-speed``: one factor for every device, or one per device. Raises ConfigError."""
    parts = [p.strip() for p in text.split(",")]
    try:
        speeds = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"--emulate-speed {text!r} is not a number (or a comma-separated list of numbers)"
        ) from None
    if len(speeds) == 1:
        return speeds * count
    if len(speeds) != count:
        raise ConfigError(
            f"--emulate-speed lists {len(speeds)} factors for {count} devices: give one, or one per device"
        )
    return speeds


def device_nodes(name: str, devices: list[str]) -> list[str]:
    """Node names: the machine's name for one device, ``NAME-cuda0``, ``NAME-cpu1`` ... for several. Pure."""
    if len(devices) == 1:
        return [name]
    seen: dict[str, int] = {}
    names = []
    for dev in devices:
        kind = "cpu" if dev == "cpu" else "cuda"
        index = seen.get(kind, 0) if dev in ("cpu", "cuda") else int(dev.split(":")[1])
        seen[kind] = index + 1
        names.append(f"{name}-{kind}{index}")
    return names


def device_state_dir(state_dir: Path, devices: list[str], index: int) -> Path:
    """One device keeps today's layout; several get ``STATE_DIR/device-N`` (own node key, runs)."""
    return state_dir if len(devices) == 1 else state_dir / f"device-{index}"


class StateDirLock:
    """An exclusive lock on an agent's state directory, held while the agent runs."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "agent.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> StateDirLock:
        """Raises ConflictError (one line, with the fix) if another agent holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            fh.close()
            raise ConflictError(
                f"another potluck agent (pid {pid}) is running on {self.path.parent}: stop it, or "
                "give this one its own --state-dir (one agent per machine uses every GPU: --device auto)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None


def run_all(runs: list[Callable[[], None]]) -> None:
    """Run each agent's loop in its own thread and wait for all of them."""
    if len(runs) == 1:
        runs[0]()
        return
    threads = [threading.Thread(target=run, name=f"agent-{i}") for i, run in enumerate(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)  # a timeout keeps the main thread responsive to signals
