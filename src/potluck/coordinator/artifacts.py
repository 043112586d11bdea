"""Files the host keeps for jobs: code bundles, checkpoints and trained models.

::

    STATE_DIR/bundles/<sha256>.tar.gz                      job code, by hash
    STATE_DIR/experiments/job-N/checkpoints/step-00000120.safetensors   the last K checkpoints
    STATE_DIR/experiments/job-N/model.safetensors          the trained model
    STATE_DIR/experiments/job-N/job.json                   the job spec beside it

Every file arrives with the sha256 its sender computed, is checked against it, and is
written atomically (temporary file, fsync, rename): a reader never sees half a file, and a
crash mid-upload leaves the previous checkpoint in place. The host never loads these files
(no unpickling, no torch): it stores and serves bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from potluck.contracts import bundle
from potluck.contracts.errors import ConfigError, NotFoundError, StorageError
from potluck.system import write_atomic

_CHECKPOINT = re.compile(r"^step-(\d{8})\.safetensors$")
MAX_ARTIFACT_BYTES = 16 << 30
"""Largest checkpoint or model the host accepts (16 GiB)."""


def _write(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise StorageError(f"cannot write {path.name} on the host ({exc.strerror or exc}): "
                           "free some disk space there") from exc


def _verified(data: bytes, sha256: str | None) -> str:
    got = hashlib.sha256(data).hexdigest()
    if sha256 is not None and got != sha256.lower():
        raise ConfigError(f"upload damaged: sha256 {got[:12]} does not match the sender's "
                          f"{sha256[:12]}; it is sent again")
    return got


class Artifacts:
    def __init__(self, state_dir: Path) -> None:
        self.bundles = state_dir / "bundles"
        self.experiments = state_dir / "experiments"

    # code bundles --------------------------------------------------------------------------

    def put_bundle(self, data: bytes) -> tuple[str, int]:
        """Store a bundle after checking it; returns ``(sha256, files)``."""
        files = bundle.check(data)
        sha = _verified(data, None)
        path = self.bundles / f"{sha}.tar.gz"
        if not path.exists():
            _write(path, data)
        return sha, len(files)

    def bundle_path(self, sha256: str) -> Path:
        path = self.bundles / f"{sha256}.tar.gz"
        if not re.fullmatch(r"[0-9a-f]{64}", sha256) or not path.is_file():
            raise NotFoundError(f"no code bundle {sha256[:12]} on the host: submit the job "
                                "again with `potluck train JOB_FILE`")
        return path

    def has_bundle(self, sha256: str) -> bool:
        return (self.bundles / f"{sha256}.tar.gz").is_file()

    # checkpoints and models ----------------------------------------------------------------

    def job_dir(self, job_id: int) -> Path:
        return self.experiments / f"job-{job_id}"

    def put_checkpoint(self, job_id: int, step: int, data: bytes, sha256: str, keep: int) -> Path:
        """Store job ``job_id``'s checkpoint after ``step`` steps; keep the newest ``keep``."""
        sha = _verified(data, sha256)
        folder = self.job_dir(job_id) / "checkpoints"
        path = folder / f"step-{step:08d}.safetensors"
        _write(path.with_name(path.name + ".sha256"), sha.encode())
        _write(path, data)
        for old in self.checkpoints(job_id)[:-keep]:
            for suffix in ("", ".sha256"):
                (folder / f"step-{old:08d}.safetensors{suffix}").unlink(missing_ok=True)
        return path

    def checkpoint_sha256(self, path: Path) -> str:
        """The stored checkpoint's sha256 (from its sidecar file; hashed if that is missing)."""
        try:
            return path.with_name(path.name + ".sha256").read_text().strip()
        except OSError:
            return hashlib.sha256(path.read_bytes()).hexdigest()

    def checkpoints(self, job_id: int) -> list[int]:
        """Steps of the stored checkpoints, oldest first."""
        folder = self.job_dir(job_id) / "checkpoints"
        try:
            names = os.listdir(folder)
        except OSError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _CHECKPOINT.match(n)))

    def latest_checkpoint(self, job_id: int) -> tuple[int, Path] | None:
        steps = self.checkpoints(job_id)
        if not steps:
            return None
        return steps[-1], self.job_dir(job_id) / "checkpoints" / f"step-{steps[-1]:08d}.safetensors"

    def put_model(self, job_id: int, data: bytes, sha256: str, spec_json: str) -> Path:
        _verified(data, sha256)
        path = self.job_dir(job_id) / "model.safetensors"
        _write(path, data)
        _write(self.job_dir(job_id) / "job.json", spec_json.encode())
        return path

    def model_path(self, job_id: int) -> Path | None:
        path = self.job_dir(job_id) / "model.safetensors"
        return path if path.is_file() else None

    def copy_checkpoint(self, from_job: int, to_job: int) -> int | None:
        """Seed job ``to_job`` with ``from_job``'s newest checkpoint (``--resume``); returns
        its step (None: there is none)."""
        latest = self.latest_checkpoint(from_job)
        if latest is None:
            return None
        step, path = latest
        data = path.read_bytes()
        self.put_checkpoint(to_job, step, data, hashlib.sha256(data).hexdigest(), keep=1000)
        return step
