"""A job's code bundle: its folder as a deterministic ``tar.gz``, named by its sha256.

``potluck train job.py`` packs the job file's folder (:func:`pack`), the host stores it by
hash, and each agent fetches it once, checks the hash and unpacks it (:func:`unpack`) into a
cache folder named by that hash. The same folder always gives the same bytes (sorted names,
no timestamps, owners or modes beyond "executable or not"), so an unchanged job is never
shipped twice.

What is left out: ``.git``, ``__pycache__``, virtual environments, ``*.pyc``, and whatever
``.gitignore`` or ``.potluckignore`` in the folder name (the usual pattern lines: ``name``,
``*.ext``, ``dir/``, ``/anchored``, ``a/b``; ``!`` negation is not supported). Unpacking
refuses anything but regular files and folders inside the destination (no links, no
``..``, no absolute names), so a bundle cannot write outside its cache folder.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from potluck.contracts.errors import ConfigError

MAX_BUNDLE_BYTES = 200 << 20
"""Largest bundle (compressed); larger job folders get an error naming their largest files."""
MAX_FILES = 10_000
ALWAYS_SKIPPED = (".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache",
                  ".ruff_cache", "*.pyc", ".DS_Store")
IGNORE_FILES = (".gitignore", ".potluckignore")


@dataclass(frozen=True)
class Bundle:
    data: bytes
    sha256: str
    files: list[tuple[str, int]]
    """``(relative name, bytes)`` of every shipped file, sorted: the manifest."""

    @property
    def raw_bytes(self) -> int:
        return sum(size for _, size in self.files)


def _patterns(root: Path) -> list[str]:
    out = list(ALWAYS_SKIPPED)
    for name in IGNORE_FILES:
        try:
            lines = (root / name).read_text(errors="replace").splitlines()
        except OSError:
            continue
        out += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith(("#", "!"))]
    return out


def ignored(rel: PurePosixPath, is_dir: bool, patterns: list[str]) -> bool:
    """Whether ``rel`` (relative to the bundle root) matches one of the ignore ``patterns``."""
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        pat = pattern.rstrip("/")
        if dir_only and not is_dir:
            continue
        if "/" in pat:  # anchored to the root
            if fnmatch.fnmatchcase(str(rel), pat.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(rel.name, pat):
            return True
    return False


def _walk(root: Path) -> list[tuple[str, Path]]:
    patterns = _patterns(root)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = PurePosixPath(here.relative_to(root).as_posix())
        dirnames[:] = sorted(d for d in dirnames
                             if not ignored(rel_dir / d, True, patterns)
                             and not (here / d).is_symlink())
        for name in sorted(filenames):
            path = here / name
            rel = rel_dir / name
            if ignored(rel, False, patterns) or path.is_symlink() or not path.is_file():
                continue
            found.append((str(rel).removeprefix("./"), path))
            if len(found) > MAX_FILES:
                raise ConfigError(f"the job folder {root} holds more than {MAX_FILES} files: "
                                  "list what the job does not need in a .potluckignore file")
    return sorted(found)


def pack(root: str | Path) -> Bundle:
    """The bundle of folder ``root``. Raises ConfigError if it is too large (naming the
    largest files and the ``.potluckignore`` fix)."""
    root = Path(root).resolve()
    files = _walk(root)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in files:
            info = tarfile.TarInfo(rel)
            info.size = path.stat().st_size
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.mtime = 0
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    data = buf.getvalue()
    manifest = [(rel, path.stat().st_size) for rel, path in files]
    if len(data) > MAX_BUNDLE_BYTES:
        biggest = ", ".join(f"{rel} ({size / 1e6:.0f} MB)"
                            for rel, size in sorted(manifest, key=lambda f: -f[1])[:3])
        raise ConfigError(f"the job folder {root} is {len(data) / 1e6:.0f} MB packed, over the "
                          f"{MAX_BUNDLE_BYTES / 1e6:.0f} MB limit (largest: {biggest}): list "
                          "big files the job does not need in .potluckignore")
    return Bundle(data, hashlib.sha256(data).hexdigest(), manifest)


def check(data: bytes) -> list[tuple[str, int]]:
    """The manifest of a bundle from the network; raises ConfigError if it is not a safe
    bundle (size, format, a link, an absolute name or ``..``)."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise ConfigError(f"bundle is {len(data)} bytes, over the {MAX_BUNDLE_BYTES} byte limit")
    out: list[tuple[str, int]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts or not member.isfile():
                    raise ConfigError(f"bundle member {member.name!r} is not a plain relative "
                                      "file: refused")
                out.append((member.name, member.size))
                if len(out) > MAX_FILES:
                    raise ConfigError(f"bundle holds more than {MAX_FILES} files")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"not a potluck bundle (a tar.gz): {exc}") from exc
    return out


def unpack(data: bytes, dest: str | Path, sha256: str) -> Path:
    """Unpack a bundle into ``dest`` (created whole, through a temporary folder and a rename)
    after checking its hash and members. Returns ``dest``. Raises ConfigError."""
    dest = Path(dest)
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ConfigError(f"bundle hash mismatch: expected {sha256[:12]}, got {got[:12]} "
                          "(corrupted in transit?)")
    check(data)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                target = tmp / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, target.open("wb") as out:
                    shutil.copyfileobj(src, out)
                target.chmod(0o755 if member.mode & 0o111 else 0o644)
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():  # another process may have won the race
            raise
    return dest
