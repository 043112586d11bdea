"""The coordinator's state in one SQLite file: nodes, jobs, replicas, events and metrics.

One connection, guarded by a lock (the API and the housekeeping task share it); WAL mode so a
reader (``potluck status`` reading the file) never blocks the writer. Values that are
structured (hardware, versions, job config) are stored as JSON text, never pickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from potluck.contracts.errors import ConflictError, StorageError

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
    joined_at REAL NOT NULL,
    credential TEXT
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
    """Typed access to the SQLite file: every SQL statement of the coordinator (and of the
    doctor's rounds) is here. Methods are short transactions; thread-safe."""

    def __init__(self, path: str | Path) -> None:
        """Open (or create) the database and check it. Raises StorageError, one line with the
        fix, for a file that is not a sound SQLite database; such a file is left untouched."""
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from None
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)  # it holds node keys and credential hashes
        self._conn.row_factory = sqlite3.Row
        try:
            # Before anything writes: a damaged file must stay as it is for the user to rescue.
            verdict = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                first = str(verdict).strip().splitlines()[-1][:120]
                raise sqlite3.DatabaseError(f"database disk image is malformed: {first}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(SCHEMA)
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(nodes)")}
            if "credential" not in columns:  # a database from before node credentials
                self._conn.execute("ALTER TABLE nodes ADD COLUMN credential TEXT")
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._storage_error(exc) from None

    def _storage_error(self, exc: sqlite3.Error) -> StorageError:
        """What went wrong with the database, and the fix, in one line."""
        text = str(exc)
        where = self.path.parent
        if "full" in text:
            return StorageError(f"the disk holding {where} is full ({text}): free space there; "
                                "the host goes on by itself once writes succeed")
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return StorageError(f"{self.path} is damaged ({text}): move it aside (e.g. `mv "
                                f"{self.path} {self.path}.broken`) and start `potluck host` again "
                                "(it starts with no nodes or jobs), or pass another --state-dir")
        return StorageError(f"cannot use the host's database {self.path} ({text}): check the disk "
                            f"and the permissions of {where}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; rolled back if the body raises (nothing half-written). A database
        error becomes StorageError (the API answers 503 with its reason)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise self._storage_error(exc) from None

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._storage_error(exc) from None

    def event(self, kind: str, message: str, *, job_id: int | None = None,
              node_id: int | None = None) -> None:
        """Append one line to the cluster's event log, in its own transaction."""
        with self.tx() as conn:
            self.add_event(conn, kind, message, job_id=job_id, node_id=node_id)

    def add_event(self, conn: sqlite3.Connection, kind: str, message: str, *,
                  job_id: int | None = None, node_id: int | None = None) -> None:
        """Append one line to the event log inside the caller's transaction."""
        conn.execute(
            "INSERT INTO events (job_id, node_id, t, kind, message) VALUES (?, ?, ?, ?, ?)",
            (job_id, node_id, time.time(), kind, message),
        )

    def events(self, job_id: int | None, after: int = 0) -> list[sqlite3.Row]:
        where = "events.job_id = ?" if job_id is not None else "1 = 1 OR ? IS NULL"
        return self.query(
            "SELECT events.*, nodes.name AS node FROM events LEFT JOIN nodes ON nodes.id = node_id "
            f"WHERE ({where}) AND events.id > ? ORDER BY events.id",
            (job_id, after),
        )

    def log_after(self, after: int, limit: int) -> list[sqlite3.Row]:
        """At most ``limit`` log lines with an id above ``after``, oldest first (the
        dashboard's stream pages through these)."""
        return self.query(
            "SELECT events.*, nodes.name AS node FROM events LEFT JOIN nodes ON nodes.id = node_id "
            "WHERE events.id > ? ORDER BY events.id LIMIT ?", (after, limit))

    def log_tail(self, job_id: int | None, limit: int) -> list[sqlite3.Row]:
        """The newest ``limit`` log lines (of one job, or of all), oldest first."""
        where = "events.job_id = ?" if job_id is not None else "? IS NULL"
        rows = self.query(
            "SELECT events.*, nodes.name AS node FROM events LEFT JOIN nodes ON nodes.id = node_id "
            f"WHERE {where} ORDER BY events.id DESC LIMIT ?", (job_id, limit))
        return rows[::-1]

    def last_event_id(self) -> int:
        return int(self.query("SELECT COALESCE(MAX(id), 0) AS id FROM events")[0]["id"])

    def job_markers(self, job_id: int, since: float, until: float) -> list[sqlite3.Row]:
        """The log lines drawn on a job's charts: its own job and allocation lines, and node
        lines (joined, left, lost, back) between ``since`` and ``until``."""
        return self.query(
            "SELECT events.*, nodes.name AS node FROM events LEFT JOIN nodes ON nodes.id = node_id "
            "WHERE (events.job_id = ? AND kind IN ('job', 'allocation')) "
            "OR (events.job_id IS NULL AND kind = 'node' AND t BETWEEN ? AND ?) ORDER BY events.id",
            (job_id, since, until))

    # nodes ---------------------------------------------------------------------------------

    def nodes(self) -> list[sqlite3.Row]:
        """The cluster's nodes (not those forgotten: their rows stay for the jobs' history)."""
        return self.query("SELECT * FROM nodes WHERE state != 'forgotten' ORDER BY id")

    def node(self, node_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM nodes WHERE id = ?", (node_id,))
        return rows[0] if rows else None

    def node_state(self, node_id: int) -> str:
        rows = self.query("SELECT state FROM nodes WHERE id=?", (node_id,))
        return rows[0]["state"] if rows else "unknown"

    def register_node(self, *, name: str, node_key: str, address: str, interface: str | None,
                      hardware: str, versions: str, speed: float, now: float,
                      max_nodes: int, credential: str) -> tuple[int, str, int]:
        """Add a node, or take back the row of the same machine (same node key: only the
        machine holding the key gets its name and slot back, never a newcomer using the name
        of a node that is away). ``credential`` is the hash of the node's new credential.
        Returns ``(node_id, name, slot)``; a new node whose name is taken gets a ``-2``
        suffix. Raises ConflictError when full."""
        with self.tx() as conn:
            rows = conn.execute("SELECT * FROM nodes").fetchall()
            mine = next((r for r in rows if r["node_key"] == node_key), None)
            if mine is not None:
                conn.execute(
                    "UPDATE nodes SET address=?, interface=?, hardware=?, versions=?, "
                    "speed=?, state='alive', last_heartbeat=?, credential=? WHERE id=?",
                    (address, interface, hardware, versions, speed, now, credential, mine["id"]),
                )
                self.add_event(conn, "node", f"{mine['name']} rejoined from {address}",
                               node_id=mine["id"])
                return mine["id"], mine["name"], mine["slot"]
            taken = {r["name"] for r in rows}
            unique, n = name, 2
            while unique in taken:
                unique, n = f"{name}-{n}", n + 1
            used = {r["slot"] for r in rows}
            slot = next(i for i in range(len(used) + 1) if i not in used)
            if slot >= max_nodes:
                raise ConflictError(f"cluster is full ({slot} nodes): start a new state dir")
            node_id = conn.execute(
                "INSERT INTO nodes (name, node_key, slot, address, interface, hardware, versions,"
                " speed, state, last_heartbeat, joined_at, credential)"
                " VALUES (?,?,?,?,?,?,?,?,'alive',?,?,?)",
                (unique, node_key, slot, address, interface, hardware, versions, speed, now, now,
                 credential),
            ).lastrowid
            assert node_id is not None
            self.add_event(conn, "node", f"{unique} joined from {address} (slot {slot})",
                           node_id=node_id)
            return node_id, unique, slot

    def set_node_state(self, node_id: int, state: str, message: str, *,
                       end_replicas: tuple[str, str] | None = None) -> None:
        """Set a node's state with an event; ``end_replicas=(state, why)`` also ends its
        active replicas, in the same transaction."""
        with self.tx() as conn:
            conn.execute("UPDATE nodes SET state=? WHERE id=?", (state, node_id))
            self.add_event(conn, "node", message, node_id=node_id)
            if end_replicas is not None:
                self._end_active_replicas(conn, node_id, *end_replicas)

    def forget_node(self, node_id: int) -> None:
        """Forget a node that is away: its replicas of unfinished jobs stop, its name and slot
        are free for others, its credential and key no longer work (the machine joins again
        as a new node). The row stays, renamed, so finished jobs still show who trained."""
        with self.tx() as conn:
            row = conn.execute("SELECT name FROM nodes WHERE id=?", (node_id,)).fetchone()
            why = f"{row['name']} was forgotten"
            rows = conn.execute(
                "SELECT job_id FROM replicas WHERE node_id=? AND state NOT IN "
                "('done','failed','stopped')", (node_id,)).fetchall()
            for r in rows:
                conn.execute("UPDATE replicas SET state='stopped', message=?, updated_at=? "
                             "WHERE job_id=? AND node_id=?", (why, time.time(), r["job_id"], node_id))
                self.add_event(conn, "replica", f"replica stopped: {why}", job_id=r["job_id"],
                               node_id=node_id)
            conn.execute(
                "UPDATE nodes SET state='forgotten', slot=?, name=?, node_key=?, credential=NULL "
                "WHERE id=?", (-node_id, f"{row['name'][:40]}.forgotten-{node_id}",
                               f"forgotten-{node_id}", node_id))
            self.add_event(conn, "node", why, node_id=node_id)

    def save_node_liveness(self, heartbeats: dict[int, float], measured: dict[int, float]) -> None:
        """Flush heartbeat times and measured samples/s kept in memory by the coordinator."""
        with self.tx() as conn:
            conn.executemany("UPDATE nodes SET last_heartbeat=? WHERE id=?",
                             [(t, i) for i, t in heartbeats.items()])
            conn.executemany("UPDATE nodes SET measured_sps=? WHERE id=?",
                             [(r, i) for i, r in measured.items()])

    # jobs ----------------------------------------------------------------------------------

    def job(self, job_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def jobs(self, limit: int = 100) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))

    def jobs_in(self, *states: str) -> list[sqlite3.Row]:
        """Jobs in any of ``states``, oldest first."""
        marks = ",".join("?" * len(states))
        return self.query(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states)

    def add_job(self, name: str, config: str, now: float) -> int:
        with self.tx() as conn:
            job_id = conn.execute(
                "INSERT INTO jobs (name, state, config, created_at) VALUES (?, 'queued', ?, ?)",
                (name, config, now),
            ).lastrowid
            assert job_id is not None
            self.add_event(conn, "job", "submitted", job_id=job_id)
            return job_id

    def start_job(self, job_id: int, now: float, max_slot: int) -> list[sqlite3.Row]:
        """Mark the job running and give every live node with ``slot < max_slot`` a replica
        (so the start barrier knows whom to wait for). Returns those nodes."""
        with self.tx() as conn:
            conn.execute("UPDATE jobs SET state='running', started_at=? WHERE id=?", (now, job_id))
            alive = conn.execute(
                "SELECT id, name, slot FROM nodes WHERE state='alive' AND slot < ?", (max_slot,)
            ).fetchall()
            conn.executemany(
                "INSERT INTO replicas (job_id, node_id, slot, state, updated_at) "
                "VALUES (?, ?, ?, 'assigned', ?)",
                [(job_id, n["id"], n["slot"], now) for n in alive],
            )
            names = ", ".join(n["name"] for n in alive)
            self.add_event(conn, "job", f"started on {len(alive)} node(s): {names}", job_id=job_id)
            return alive

    def finish_job(self, job_id: int, state: str, message: str, summary: str, progress: str) -> None:
        """Final state, summary and progress of a job; its unfinished replicas are stopped."""
        now = time.time()
        with self.tx() as conn:
            conn.execute(
                "UPDATE jobs SET state=?, finished_at=?, message=?, summary=?, progress=? WHERE id=?",
                (state, now, message, summary, progress, job_id),
            )
            conn.execute(
                "UPDATE replicas SET state='stopped', updated_at=? WHERE job_id=? "
                "AND state IN ('assigned','starting','running','lost')",
                (now, job_id),
            )
            self.add_event(conn, "job", f"{state}: {message}", job_id=job_id)

    def save_progress(self, progress: dict[int, str]) -> None:
        with self.tx() as conn:
            conn.executemany("UPDATE jobs SET progress=? WHERE id=?",
                             [(p, i) for i, p in progress.items()])

    # replicas ------------------------------------------------------------------------------

    def replicas(self, job_id: int) -> list[sqlite3.Row]:
        return self.query(
            "SELECT replicas.*, nodes.name AS node FROM replicas JOIN nodes ON nodes.id = node_id "
            "WHERE job_id = ? ORDER BY replicas.slot",
            (job_id,),
        )

    def replica(self, job_id: int, node_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM replicas WHERE job_id=? AND node_id=?", (job_id, node_id))
        return rows[0] if rows else None

    def assign_replica(self, job_id: int, node_id: int, slot: int, message: str) -> None:
        with self.tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO replicas (job_id, node_id, slot, state, updated_at) "
                "VALUES (?, ?, ?, 'assigned', ?)",
                (job_id, node_id, slot, time.time()),
            )
            self.add_event(conn, "replica", message, job_id=job_id, node_id=node_id)

    def update_replica(self, job_id: int, node_id: int, *, state: str, step: int | None,
                       exit_code: int | None, message: str | None, ready: bool,
                       event: str | None) -> None:
        """What an agent reported of its replica (and an event when its state changed)."""
        with self.tx() as conn:
            conn.execute(
                "UPDATE replicas SET state=?, step=?, exit_code=?, message=?, ready=?, "
                "updated_at=? WHERE job_id=? AND node_id=?",
                (state, step, exit_code, message, int(ready), time.time(), job_id, node_id),
            )
            if event:
                self.add_event(conn, "replica", event, job_id=job_id, node_id=node_id)

    def _end_active_replicas(self, conn: sqlite3.Connection, node_id: int, state: str,
                             why: str) -> None:
        rows = conn.execute(
            "SELECT job_id FROM replicas WHERE node_id=? AND state IN "
            "('assigned','starting','running')", (node_id,),
        ).fetchall()
        for r in rows:
            conn.execute(
                "UPDATE replicas SET state=?, message=?, updated_at=? WHERE job_id=? AND node_id=?",
                (state, why, time.time(), r["job_id"], node_id),
            )
            self.add_event(conn, "replica", f"replica {state}: {why}", job_id=r["job_id"],
                           node_id=node_id)

    # metrics -------------------------------------------------------------------------------

    def add_metrics(self, job_id: int, node_id: int, rows: list[tuple[str, int | None, str]],
                    done: str | None) -> None:
        """Store ``(type, step, event JSON)`` rows; ``done`` is the replica's final event."""
        with self.tx() as conn:
            conn.executemany(
                "INSERT INTO metrics (job_id, node_id, type, step, record) VALUES (?,?,?,?,?)",
                [(job_id, node_id, kind, step, record) for kind, step, record in rows],
            )
            if done is not None:
                conn.execute("UPDATE replicas SET done=? WHERE job_id=? AND node_id=?",
                             (done, job_id, node_id))

    def metric_records(self, job_id: int, kind: str) -> list[str]:
        """The JSON of every stored event of ``kind`` for a job, in arrival order."""
        rows = self.query("SELECT record FROM metrics WHERE job_id=? AND type=? ORDER BY id",
                          (job_id, kind))
        return [r["record"] for r in rows]

    def metrics_after(self, job_id: int, after: int, kinds: tuple[str, ...],
                      limit: int) -> list[sqlite3.Row]:
        """At most ``limit`` stored events of ``kinds`` for a job with a row id above
        ``after``, in arrival order (``id``, ``node_id``, ``type``, ``record``)."""
        marks = ",".join("?" * len(kinds))
        # `+` keeps the (job_id, type) index out: a range of row ids reads only new rows.
        return self.query(
            f"SELECT id, node_id, type, record FROM metrics WHERE id > ? AND +job_id = ? "
            f"AND +type IN ({marks}) ORDER BY id LIMIT ?", (after, job_id, *kinds, limit))

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

