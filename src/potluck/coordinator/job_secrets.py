"""Per-job secrets: what lets a job's replicas recognise each other (docs/security.md).

The coordinator keeps one random key (``state_dir/job-key``, 0600, made once like the join
token) and derives each job's secret from it and the job's id and submission time, so the
secret exists from submission on, survives a coordinator restart and needs no database
column. It leaves the host only inside a node's authenticated heartbeat answer (the
``Assignment``), never in the JobSpec that ``potluck jobs`` shows.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from potluck.coordinator.auth import write_private

KEY_FILE = "job-key"


def load_or_create_job_key(state_dir: Path) -> bytes:
    """The coordinator's job key: the stored one, else a new one (stored 0600)."""
    path = state_dir / KEY_FILE
    if path.exists():
        text = path.read_text().strip()
        if len(text) >= 64:
            return bytes.fromhex(text)
    key = secrets.token_bytes(32)
    write_private(path, key.hex() + "\n")
    return key


def job_secret(key: bytes, job_id: int, created_at: float) -> str:
    """The secret of job ``job_id`` (64 hex characters)."""
    message = f"potluck-job|{job_id}|{created_at!r}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()
