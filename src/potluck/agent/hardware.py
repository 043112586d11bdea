"""What this machine has (GPUs, CPU cores, RAM) and runs (Python, torch, torchft, potluck).

Nothing here imports torch: versions come from package metadata and GPUs from ``nvidia-smi``,
so reporting is instant even on a machine where importing torch takes seconds.

Testing hook: ``POTLUCK_FAKE_VERSION_<NAME>`` (NAME one of PYTHON, TORCH, TORCHFT, POTLUCK)
replaces that version in :func:`local_versions`, to test version-mismatch handling.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

from potluck.coordinator.schemas import Gpu, Hardware, Versions
from potluck.system import total_memory_bytes

VERSION_FIXES = {
    "python": "install Python {want} (e.g. with uv or pyenv) and recreate the virtualenv",
    "torch": 'pip install "torch=={want}"',
    "torchft": 'pip install "torchft=={want}"',
    "potluck": 'pip install "potluck=={want}" (or check out the same git commit)',
}


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def local_versions() -> Versions:
    """Versions of this process's Python and packages (fakeable, see module docstring)."""
    from potluck import __version__

    found = {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "torch": _package_version("torch"),
        "torchft": _package_version("torchft"),
        "potluck": __version__,
    }
    for key in found:
        fake = os.environ.get(f"POTLUCK_FAKE_VERSION_{key.upper()}")
        if fake:
            found[key] = fake
    return Versions(**found)


def _comparable(key: str, version: str) -> str:
    # CPU and CUDA builds of the same torch interoperate: ignore the local part (+cpu, +cu121).
    return version.split("+", 1)[0] if key == "torch" else version


@dataclass(frozen=True)
class VersionDiff:
    """One component whose version differs between this node and the host."""

    component: str
    host: str
    node: str
    fix: str


def compare_versions(host: Versions, node: Versions) -> list[VersionDiff]:
    """Components whose versions differ (empty list: compatible). Pure."""
    diffs = []
    for key, want in host.model_dump().items():
        have = getattr(node, key)
        if _comparable(key, want) != _comparable(key, have):
            diffs.append(VersionDiff(key, want, have, VERSION_FIXES[key].format(want=want)))
    return diffs


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


def detect_hardware() -> Hardware:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return Hardware(cpu_cores=max(1, cores), memory_mb=_memory_mb(), gpus=detect_gpus())
