"""What an agent does before it runs a job's code: fetch and unpack the bundle, check the
job's requirements, fetch the checkpoint to resume from, and send checkpoints back.

Bundles are cached by hash in ``STATE_DIR/bundles/<sha256>/`` (fetched once per job version,
checked against the hash, unpacked whole or not at all). A requirement this machine lacks is
one line naming the package and the command that installs it; the job does not start.
"""

from __future__ import annotations

import importlib.metadata
import queue
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from potluck.contracts import bundle
from potluck.contracts.client import CoordinatorClient
from potluck.contracts.errors import ClusterError, ConfigError
from potluck.log import get_logger

log = get_logger("agent.jobcode")

UPLOAD_TRIES = 4


def requirement_problems(requirements: list[str]) -> list[str]:
    """One line per requirement this Python lacks or has in a version the job cannot use."""
    problems = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            problems.append(f"requirement {text!r} is not a valid pip requirement")
            continue
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"missing package {req.name} (needs {text}): run "
                            f"`{shlex.quote(sys.executable)} -m pip install {shlex.quote(text)}`")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"package {req.name} {have} does not satisfy {text}: run "
                            f"`{shlex.quote(sys.executable)} -m pip install {shlex.quote(text)}`")
    return problems


def fetch_bundle(client: CoordinatorClient, sha256: str, cache: Path) -> Path:
    """The unpacked folder of bundle ``sha256`` (fetched from the host if not cached)."""
    dest = cache / sha256
    if dest.is_dir():
        return dest
    data = client.bundle(sha256)
    bundle.unpack(data, dest, sha256)
    log.info("fetched code bundle %s (%d bytes)", sha256[:12], len(data))
    return dest


@dataclass(frozen=True)
class Upload:
    job_id: int
    kind: str  # "checkpoint" or "model"
    path: Path
    step: int = 0


class Uploader:
    """Sends checkpoint and model files to the host on a thread (heartbeats never wait)."""

    def __init__(self, client: CoordinatorClient, node_id: int) -> None:
        self.client = client
        self.node_id = node_id
        self._queue: queue.Queue[Upload | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="potluck-upload", daemon=True)
        self._thread.start()

    def add(self, upload: Upload) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(upload)

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._pending == 0

    def close(self, timeout_s: float = 60.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._send(item)
            finally:
                with self._lock:
                    self._pending -= 1

    def _send(self, item: Upload) -> None:
        for attempt in range(UPLOAD_TRIES):
            try:
                data = item.path.read_bytes()
            except OSError:  # replaced by a newer checkpoint meanwhile: that one follows
                log.info("skipping %s (gone)", item.path.name)
                return
            try:
                if item.kind == "model":
                    self.client.put_model(self.node_id, item.job_id, data)
                else:
                    self.client.put_checkpoint(self.node_id, item.job_id, item.step, data)
                log.info("sent %s of job %d to the host (%.1f MB)", item.path.name, item.job_id,
                         len(data) / 1e6)
                if item.kind == "checkpoint":  # the host has it: older local ones can go
                    for old in item.path.parent.glob("step-*.safetensors"):
                        if old.name < item.path.name:
                            old.unlink(missing_ok=True)
                return
            except (ClusterError, ConfigError) as exc:
                log.warning("sending %s failed (try %d of %d): %s", item.path.name, attempt + 1,
                            UPLOAD_TRIES, exc)
                time.sleep(2.0 ** attempt)
