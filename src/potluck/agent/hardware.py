"""What this machine has: GPUs, CPU cores, RAM (versions: ``potluck.contracts.versions``).

Nothing here imports torch: GPUs come from ``nvidia-smi``, so reporting is instant even on a
machine where importing torch takes seconds.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

from potluck.contracts.wire import Gpu, Hardware
from potluck.system import total_memory_bytes


def _memory_mb() -> int:
    return total_memory_bytes() // 2**20


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``. Pure."""
    gpus = []
    for line in text.strip().splitlines():
        name, _, mem = line.rpartition(",")
        if name and mem.strip().isdigit():
            gpus.append(Gpu(name=name.strip(), memory_mb=int(mem.strip())))
    return gpus


def detect_gpus() -> list[Gpu]:
    """CUDA GPUs as ``nvidia-smi`` sees them (empty without a driver)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else []


def describe_os() -> str | None:
    """``Linux 6.1.0 x86_64``, ``macOS 14.2 arm64``, ``Windows 10 AMD64`` (None if unknown)."""
    system, release, machine = platform.system(), platform.release(), platform.machine()
    if system == "Darwin":
        system, release = "macOS", platform.mac_ver()[0] or release
    elif system == "Linux":
        release = release.split("-", 1)[0]  # 6.1.0-18-amd64: the distribution's suffix is noise
    text = " ".join(part for part in (system, release, machine) if part)
    return text[:100] or None


def detect_hardware() -> Hardware:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return Hardware(cpu_cores=max(1, cores), memory_mb=_memory_mb(), gpus=detect_gpus(),
                    os=describe_os())
