"""What this node's resources are doing now (CPU, RAM, NVIDIA GPUs), sent with each heartbeat.

CPU and RAM come from psutil (RAM from ``/proc/meminfo`` where psutil is missing). GPUs come
from NVML through nvidia-ml-py (``import pynvml``); where NVML cannot be loaded (the package
or the driver's library is missing, or it fails to initialise), from parsing
``nvidia-smi --query-gpu=...``. Sampling never raises: whatever cannot be measured is None,
and a machine without NVIDIA GPUs reports no GPUs.

Cost per sample: psutil and NVML answer in well under a millisecond a GPU. ``nvidia-smi``
starts a process (tens of milliseconds), so its answer is reused for ``SMI_EVERY_S``, and
one that fails or hangs is left alone for ``SMI_BACKOFF_S``: the heartbeat must never wait
on a wedged driver long enough for the host to think the node is lost.
"""

from __future__ import annotations

import importlib
import math
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from potluck.contracts.wire import GpuTelemetry, NodeTelemetry
from potluck.log import get_logger
from potluck.system import meminfo_bytes

log = get_logger("agent.telemetry")

SMI_QUERY = "index,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"
"""The ``nvidia-smi --query-gpu`` fields :func:`parse_smi_gpus` reads, in this order."""
SMI_EVERY_S = 5.0
"""How long one ``nvidia-smi`` answer is reused."""
SMI_TIMEOUT_S = 2.0
"""Longest wait for ``nvidia-smi`` (the heartbeat waits on it)."""
SMI_BACKOFF_S = 60.0
"""After ``nvidia-smi`` failed or timed out, how long before it is tried again."""
MAX_GPUS = 64
MIB = 2**20

M = TypeVar("M", bound=BaseModel)


def _optional_module(name: str) -> Any | None:
    """``import name``, or None when it is not installed (or its install is broken)."""
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a broken package raising anything while importing
        return None


def _query(read: Callable[..., Any], *args: Any) -> Any | None:
    """``read(*args)``, one driver query; None when it fails. NVML raises a different
    NVMLError subclass per cause (not supported on this GPU, GPU lost, no permission): every
    one means "n/a"."""
    try:
        return read(*args)
    except Exception:
        return None


def _float(value: Any) -> float | None:
    """A finite float from what a library returned (a number, None, an ``nvidia-smi`` field
    such as ``61`` or ``[N/A]``), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def _mib_to_bytes(mib: float | None) -> int | None:
    return None if mib is None else int(mib * MIB)


def valid(model: type[M], values: dict[str, Any]) -> M:
    """``model(**values)``, with every field the schema refuses left at its default (None, or
    no GPUs): one odd reading (a driver saying 101 % or -300 C) costs that field, not the
    whole heartbeat. Only a bad required field (a GPU's index, always checked before) raises."""
    try:
        return model(**values)
    except ValidationError as exc:
        bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
        return model(**{k: v for k, v in values.items() if k not in bad})


def parse_smi_gpus(text: str) -> list[GpuTelemetry]:
    """GPUs from ``nvidia-smi --query-gpu=SMI_QUERY --format=csv,noheader,nounits``. Pure.

    Memory is in MiB there (converted to bytes), power in W, temperature in C. A field that is
    not a number is None; a line without six fields and a numeric index is skipped."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 6 or not fields[0].isdigit() or int(fields[0]) >= MAX_GPUS:
            continue
        util, used, total, temp, power = (_float(f) for f in fields[1:])
        gpus.append(valid(GpuTelemetry, {
            "index": int(fields[0]), "utilization_percent": util,
            "memory_used_bytes": _mib_to_bytes(used), "memory_total_bytes": _mib_to_bytes(total),
            "temperature_c": temp, "power_w": power,
        }))
    return gpus[:MAX_GPUS]


class _Nvml:
    """NVML, initialised once. Raises (from the constructor only) when it cannot start."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self.count = min(int(nvml.nvmlDeviceGetCount()), MAX_GPUS)

    def gpus(self) -> list[GpuTelemetry]:
        nvml = self.nvml
        out = []
        for index in range(self.count):
            handle = _query(nvml.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                continue
            rates = _query(nvml.nvmlDeviceGetUtilizationRates, handle)
            memory = _query(nvml.nvmlDeviceGetMemoryInfo, handle)
            sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
            milliwatts = _float(_query(nvml.nvmlDeviceGetPowerUsage, handle))
            out.append(valid(GpuTelemetry, {
                "index": index,
                "utilization_percent": _float(getattr(rates, "gpu", None)),
                "memory_used_bytes": _int(getattr(memory, "used", None)),
                "memory_total_bytes": _int(getattr(memory, "total", None)),
                "temperature_c": _float(_query(nvml.nvmlDeviceGetTemperature, handle, sensor)),
                "power_w": milliwatts / 1000 if milliwatts is not None else None,
            }))
        return out

    def close(self) -> None:
        _query(self.nvml.nvmlShutdown)


class TelemetrySampler:
    """Samples this node's resources: call :meth:`sample` at each heartbeat, :meth:`close`
    when done. Never raises. Not thread-safe (the agent's heartbeat loop owns it)."""

    def __init__(self) -> None:
        self._psutil = _optional_module("psutil")
        if self._psutil is not None:
            # The first cpu_percent() call only starts the measurement (it returns 0.0).
            _query(self._psutil.cpu_percent, None)
        self._nvml: _Nvml | None = None
        pynvml = _optional_module("pynvml")
        if pynvml is not None:
            try:
                self._nvml = _Nvml(pynvml)
            except Exception as exc:  # no driver library, driver too old, no permission
                log.debug("NVML unavailable (%s): trying nvidia-smi", exc)
        self._smi = None if self._nvml is not None else shutil.which("nvidia-smi")
        self._smi_gpus: list[GpuTelemetry] = []
        self._smi_next = 0.0
        """Monotonic time of the next nvidia-smi run (its answer is reused until then)."""

    @property
    def gpu_source(self) -> str:
        """Where GPU figures come from: ``nvml``, ``nvidia-smi`` or ``none``."""
        return "nvml" if self._nvml is not None else "nvidia-smi" if self._smi else "none"

    def sample(self) -> NodeTelemetry:
        cpu, used, total = self._host()
        return valid(NodeTelemetry, {"cpu_percent": cpu, "memory_used_bytes": used,
                                     "memory_total_bytes": total, "gpus": self._gpus()})

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None

    def _host(self) -> tuple[float | None, int | None, int | None]:
        ps = self._psutil
        if ps is not None:
            cpu = _float(_query(ps.cpu_percent, None))  # since the previous call
            memory = _query(ps.virtual_memory)
            total = _int(getattr(memory, "total", None))
            available = _int(getattr(memory, "available", None))
        else:
            cpu, total, available = None, meminfo_bytes("MemTotal"), meminfo_bytes("MemAvailable")
        used = total - available if total is not None and available is not None else None
        return cpu, used, total

    def _gpus(self) -> list[GpuTelemetry]:
        if self._nvml is not None:
            return self._nvml.gpus()
        if self._smi is None or time.monotonic() < self._smi_next:
            return self._smi_gpus
        try:
            out = subprocess.run(
                [self._smi, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=SMI_TIMEOUT_S,
            )
            ok = out.returncode == 0
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("nvidia-smi failed (%s): no GPU figures for %.0f s", exc, SMI_BACKOFF_S)
            ok = False
        self._smi_gpus = parse_smi_gpus(out.stdout) if ok else []
        self._smi_next = time.monotonic() + (SMI_EVERY_S if ok else SMI_BACKOFF_S)
        return self._smi_gpus
