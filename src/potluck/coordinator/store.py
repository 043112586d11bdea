"""The coordinator's state in one SQLite file: nodes, jobs, replicas, events and metrics.

One connection, guarded by a lock (the API and the housekeeping task share it); WAL mode so a
reader (``potluck status`` reading the file) never blocks the writer. Values that are
structured (hardware, versions, job config) are stored as JSON text, never pickled.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    node_key TEXT NOT NULL,
    slot INTEGER NOT NULL UNIQUE,
    address TEXT NOT NULL,
    interface TEXT,
    hardware TEXT NOT NULL,
    versions TEXT NOT NULL,
    speed REAL NOT NULL,
    measured_sps REAL,
    state TEXT NOT NULL,
    last_heartbeat REAL NOT NULL,
    joined_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    message TEXT,
    progress TEXT NOT NULL DEFAULT '{}',
    summary TEXT
);
CREATE TABLE IF NOT EXISTS replicas (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    node_id INTEGER NOT NULL REFERENCES nodes(id),
    slot INTEGER NOT NULL,
    state TEXT NOT NULL,
    step INTEGER,
    exit_code INTEGER,
    message TEXT,
    done TEXT,
    ready INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, node_id)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    job_id INTEGER,
    node_id INTEGER,
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    step INTEGER,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_job ON metrics(job_id, type, step);
CREATE TABLE IF NOT EXISTS links (
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    rtt_ms REAL,
    mbit_s REAL,
    largest_message INTEGER,
    error TEXT,
    summary TEXT NOT NULL,
    measured_at REAL NOT NULL,
    PRIMARY KEY (source, target)
);
"""


class Store:
    """Typed access to the SQLite file. Methods are short transactions; thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; rolled back if the body raises (nothing half-written)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # nodes ---------------------------------------------------------------------------------

    def nodes(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM nodes ORDER BY id")

    def node(self, node_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM nodes WHERE id = ?", (node_id,))
        return rows[0] if rows else None

    def add_event(
        self,
        conn: sqlite3.Connection,
        kind: str,
        message: str,
        *,
        job_id: int | None = None,
        node_id: int | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO events (job_id, node_id, t, kind, message) VALUES (?, ?, ?, ?, ?)",
            (job_id, node_id, time.time(), kind, message),
        )

    # jobs ----------------------------------------------------------------------------------

    def job(self, job_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def jobs(self, limit: int = 100) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))

    def replicas(self, job_id: int) -> list[sqlite3.Row]:
        return self.query(
            "SELECT replicas.*, nodes.name AS node FROM replicas JOIN nodes ON nodes.id = node_id "
            "WHERE job_id = ? ORDER BY replicas.slot",
            (job_id,),
        )

    def events(self, job_id: int | None, after: int = 0) -> list[sqlite3.Row]:
        where = "events.job_id = ?" if job_id is not None else "1 = 1 OR ? IS NULL"
        return self.query(
            "SELECT events.*, nodes.name AS node FROM events LEFT JOIN nodes ON nodes.id = node_id "
            f"WHERE ({where}) AND events.id > ? ORDER BY events.id",
            (job_id, after),
        )

    # doctor link facts ---------------------------------------------------------------------

    def upsert_link(self, link: dict[str, Any], measured_at: float) -> None:
        """Store the latest measurement of one direction (a bandwidth the probe did not
        measure keeps the previous value)."""
        with self.tx() as conn:
            conn.execute(
                "INSERT INTO links (source, target, status, rtt_ms, mbit_s, largest_message, "
                "error, summary, measured_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (source, target) DO UPDATE SET status=excluded.status, "
                "rtt_ms=excluded.rtt_ms, mbit_s=COALESCE(excluded.mbit_s, links.mbit_s), "
                "largest_message=excluded.largest_message, error=excluded.error, "
                "summary=excluded.summary, measured_at=excluded.measured_at",
                (link["source"], link["target"], link["status"], link["rtt_ms"], link["mbit_s"],
                 link["largest_message"], link["error"], link["summary"], measured_at),
            )

    def links(self) -> list[dict[str, Any]]:
        """Every stored direction, ordered by source and target."""
        return [dict(r) for r in self.query("SELECT * FROM links ORDER BY source, target")]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def loads(text: str | None) -> Any:
    return json.loads(text) if text else None

