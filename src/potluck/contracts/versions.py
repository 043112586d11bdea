"""Which versions this process runs, and the one rule for whether two machines can train together.

Nothing here imports torch: versions come from package metadata, so reporting is instant even
on a machine where importing torch takes seconds.

Testing hook: ``POTLUCK_FAKE_VERSION_<NAME>`` (NAME one of PYTHON, TORCH, TORCHFT, POTLUCK)
replaces that version in :func:`local_versions`, to test version-mismatch handling.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from importlib import metadata

from potluck.contracts.errors import VersionMismatchError
from potluck.contracts.wire import Versions

VERSION_FIXES = {
    "python": "install Python {want} (e.g. with uv or pyenv) and recreate the virtualenv",
    "torch": 'pip install "torch=={want}"',
    "torchft": 'pip install "torchft=={want}"',
    "potluck": "install potluck {want} from the host's checkout: `git checkout` the host's "
               "commit, then `make install` (or `pip install -e .`)",
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
            fix = VERSION_FIXES[key].format(want=_comparable(key, want))
            diffs.append(VersionDiff(key, want, have, fix))
    return diffs


def mismatch_message(diffs: list[VersionDiff], *, where: str = "this node") -> str:
    """The one-line message for a version mismatch."""
    what = ", ".join(f"{d.component} {d.node} (host has {d.host})" for d in diffs)
    return f"version mismatch: {what}; install the host's versions on {where}"


def require_same_versions(host: Versions, node: Versions, *, where: str = "this node") -> None:
    """Raise :class:`VersionMismatchError` (with the diffs) unless ``node`` matches ``host``."""
    diffs = compare_versions(host, node)
    if diffs:
        raise VersionMismatchError(mismatch_message(diffs, where=where),
                                   [asdict(d) for d in diffs])
