"""Checks about this machine alone: software versions, GPU, open-files limit, free disk.

Each ``check_*`` function returns one :class:`~potluck.doctor.report.Check` and never raises
for what it finds (a problem is a WARN or FAIL with its fix). Network checks of this machine
(address, hostname, clock) are in :mod:`potluck.doctor.network`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from potluck.agent.hardware import detect_gpus
from potluck.contracts.versions import local_versions
from potluck.doctor.report import Check, Fix, Status

MIN_OPEN_FILES = 65536
"""Below this soft limit gloo and the data loaders hit "Too many open files" on big clusters."""
WARN_FREE_GIB = 5.0
FAIL_FREE_GIB = 0.5


def check_versions(node: str) -> Check:
    """Report this node's Python/torch/torchft/potluck (compared with the host elsewhere)."""
    versions = local_versions()
    missing = [k for k, v in versions.model_dump().items() if v == "not installed"]
    text = ", ".join(f"{k} {v}" for k, v in versions.model_dump().items())
    if missing:
        return Check(
            id="versions",
            node=node,
            status=Status.FAIL,
            summary=f"{', '.join(missing)} not installed in this environment ({text})",
            fix=Fix(all='pip install "torch==2.13.*" "torchft==0.2.0" in the environment that runs potluck'),
            data=versions.model_dump(),
        )
    return Check(id="versions", node=node, status=Status.OK, summary=text, data=versions.model_dump())


_CUDA_WHEEL_FIX = Fix(
    linux='install a CUDA build of torch: pip install "torch==2.13.*" --index-url '
    "https://download.pytorch.org/whl/cu126 (pick the cuXXX that `nvidia-smi` allows)",
    windows='install a CUDA build of torch: pip install "torch==2.13.*" --index-url '
    "https://download.pytorch.org/whl/cu126 (pick the cuXXX that `nvidia-smi` allows)",
    macos="macOS has no CUDA; potluck trains on the CPU of this machine",
)


def check_cuda(node: str) -> Check:
    """CUDA visible and working (a tiny kernel on every visible GPU), or CPU-only.

    CPU-only is OK unless ``nvidia-smi`` lists GPUs that torch cannot use (WARN).
    """
    import torch

    if torch.cuda.is_available():
        names = []
        try:
            for index in range(torch.cuda.device_count()):
                device = torch.device("cuda", index)
                a = torch.arange(1024, dtype=torch.float32, device=device)
                total = float((a * 2).sum().item())
                if total != 2 * 1023 * 1024 / 2:
                    raise RuntimeError(f"wrong result {total} from a test kernel on {device}")
                names.append(torch.cuda.get_device_name(index))
        except Exception as exc:  # any CUDA error is the finding, not a crash
            return Check(
                id="cuda",
                node=node,
                status=Status.FAIL,
                summary=f"torch sees a GPU but a test kernel failed: {str(exc).splitlines()[0]}",
                fix=Fix(
                    linux="check the driver with `nvidia-smi`; if its CUDA version is older than "
                    f"torch's (CUDA {torch.version.cuda}), update the driver or install a torch "
                    "build for an older CUDA; a GPU in a bad state needs a reboot",
                    windows="check the driver with `nvidia-smi` in PowerShell; update it from "
                    "nvidia.com, or install a torch build for the driver's CUDA",
                    macos="macOS has no CUDA; unset any CUDA settings",
                ),
                data={"torch_cuda": torch.version.cuda},
            )
        return Check(
            id="cuda",
            node=node,
            status=Status.OK,
            summary=f"{len(names)} GPU(s) ran a test kernel: {', '.join(names)} (CUDA {torch.version.cuda})",
            data={"gpus": names, "torch_cuda": torch.version.cuda},
        )
    gpus = detect_gpus()
    if gpus:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        if hidden is not None and hidden.strip() in ("", "-1"):
            why = f"CUDA_VISIBLE_DEVICES={hidden!r} hides them"
            fix = Fix(
                linux="unset CUDA_VISIBLE_DEVICES (or set it to the GPUs to use, e.g. 0)",
                macos="unset CUDA_VISIBLE_DEVICES",
                windows="Remove-Item Env:CUDA_VISIBLE_DEVICES (or set it to e.g. 0)",
            )
        elif torch.version.cuda is None:
            why = f"this torch build ({torch.__version__}) is CPU-only"
            fix = _CUDA_WHEEL_FIX
        else:
            why = "the driver does not work with this torch build"
            fix = Fix(
                all=f"update the NVIDIA driver to one that supports CUDA {torch.version.cuda} "
                "(`nvidia-smi` shows the highest CUDA it supports), then reboot"
            )
        listed = ", ".join(g.name for g in gpus)
        return Check(
            id="cuda",
            node=node,
            status=Status.WARN,
            summary=f"nvidia-smi lists {listed} but torch cannot use it: {why}; this node trains on CPU",
            fix=fix,
            data={"gpus": [g.name for g in gpus], "torch_cuda": torch.version.cuda},
        )
    return Check(
        id="cuda",
        node=node,
        status=Status.OK,
        summary=f"CPU-only: no GPU found; this node trains on its {os.cpu_count()} CPU cores",
        data={"gpus": [], "torch_cuda": torch.version.cuda},
    )


OPEN_FILES_FIX = Fix(
    linux="ulimit -n 65536 in the shell that starts potluck; to keep it, add `* soft nofile "
    "65536` and `* hard nofile 65536` to /etc/security/limits.conf (or LimitNOFILE=65536 in "
    "the systemd unit) and log in again",
    macos="ulimit -n 65536 in the shell that starts potluck; to keep it: sudo launchctl limit "
    "maxfiles 65536 200000",
    windows="nothing to do: Windows has no per-process open-files limit of this kind",
)


def check_open_files(node: str, minimum: int = MIN_OPEN_FILES) -> Check:
    """Soft RLIMIT_NOFILE; WARN below ``minimum`` ("Too many open files" on bigger clusters)."""
    try:
        import resource
    except ImportError:  # Windows
        return Check(id="open_files", node=node, status=Status.OK, summary="no open-files limit on Windows")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    data = {"soft": soft, "hard": hard, "minimum": minimum}
    if soft == resource.RLIM_INFINITY or soft >= minimum:
        return Check(
            id="open_files", node=node, status=Status.OK, summary=f"open-files limit {soft}", data=data
        )
    hard_note = (
        f" (the hard limit {hard} is lower too: raising it needs root)"
        if hard != resource.RLIM_INFINITY and hard < minimum
        else ""
    )
    return Check(
        id="open_files",
        node=node,
        status=Status.WARN,
        summary=f"open-files limit is {soft}, below {minimum}: bigger clusters fail with "
        f'"Too many open files"{hard_note}',
        fix=OPEN_FILES_FIX,
        data=data,
    )


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(
    node: str,
    name: str,
    path: Path,
    *,
    warn_gib: float = WARN_FREE_GIB,
    fail_gib: float = FAIL_FREE_GIB,
) -> Check:
    """Free space and write permission where ``path`` is (or would be created)."""
    check_id = f"disk.{name}"
    where = _existing_ancestor(path)
    path = path.expanduser().absolute()
    data: dict[str, object] = {"path": str(path)}
    if not os.access(where, os.W_OK):
        return Check(
            id=check_id,
            node=node,
            status=Status.FAIL,
            summary=f"{name} dir {path} is not writable ({where} belongs to someone else)",
            fix=Fix(
                linux=f"sudo chown -R $USER {where}, or point potluck at a directory you own",
                macos=f"sudo chown -R $USER {where}, or point potluck at a directory you own",
                windows=f"give your user write access to {where} (Properties > Security), or "
                "point potluck at a folder you own",
            ),
            data=data,
        )
    free_gib = shutil.disk_usage(where).free / 2**30
    data["free_gib"] = round(free_gib, 2)
    status = Status.FAIL if free_gib < fail_gib else Status.WARN if free_gib < warn_gib else Status.OK
    summary = f"{free_gib:.1f} GiB free for the {name} dir {path}"
    if status is Status.OK:
        return Check(id=check_id, node=node, status=status, summary=summary, data=data)
    return Check(
        id=check_id,
        node=node,
        status=status,
        summary=f"only {summary}: checkpoints and metrics need at least {warn_gib:g} GiB",
        fix=Fix(
            linux=f"free space on that disk (`du -sh {where}/*` shows what is big), or move the "
            "dir to a bigger disk",
            macos=f"free space on that disk (`du -sh {where}/*` shows what is big), or move the "
            "dir to a bigger disk",
            windows="free space on that drive (Settings > System > Storage), or move the folder "
            "to a bigger drive",
        ),
        data=data,
    )
