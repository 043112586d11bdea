"""The host's database under faults: a damaged file at start, a full disk while running.

Disk full is real: the host's state dir is a small tmpfs (we are root in tests; the test is
skipped with the reason where mounting is not allowed), filled with a file, then freed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import wait_until
from test_cli_errors import one_error_line

from conftest import Cluster
from potluck.contracts.client import CoordinatorClient
from potluck.contracts.errors import StorageError
from potluck.coordinator.store import Store

HOST = ("host", "--advertise", "127.0.0.2", "--port", "0", "--lighthouse-port", "0", "--no-local-agent")


@pytest.mark.parametrize("damage", ["garbage", "zeroed page", "cut short"])
def test_a_damaged_database_stops_the_host_with_one_line_and_is_left_alone(cluster: Cluster, damage: str) -> None:
    state = cluster.tmp / "host-state"
    state.mkdir()
    db = state / "potluck.db"
    if damage == "garbage":
        db.write_bytes(os.urandom(64 * 1024))
    else:
        store = Store(db)
        for i in range(300):
            store.event("test", "x" * 200 + str(i))
        store.close()
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = db.read_bytes()
        if damage == "cut short":  # a copy or a write that stopped part way
            db.write_bytes(data[: len(data) // 2])
        else:
            db.write_bytes(data[: len(data) // 2] + b"\0" * 4096 + data[len(data) // 2 + 4096:])
    before = db.read_bytes()
    out = cluster.run(*HOST, "--state-dir", str(state), timeout=60)
    assert out.returncode == 1, out.stderr
    line = one_error_line(out)
    assert f"{db} is damaged" in line and "mv " in line and "--state-dir" in line
    assert db.read_bytes() == before  # nothing overwritten: the user can still rescue it
    assert not (state / "host.json").exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); run the tests as root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_answers_503_with_the_reason_and_the_host_recovers(cluster: Cluster, small_disk: Path) -> None:
    host = cluster.start_host("127.0.0.2", state_dir=small_disk / "host")
    agent = cluster.start_agent(host, "b", "127.0.0.3")
    wait_until(lambda: "b" in cluster.nodes(), 60, "b to join")

    filler = fill(small_disk)
    out = cluster.cli("train", "--steps", "100", "--detach", "--json")
    assert out.returncode == 1
    line = one_error_line(out)
    assert "is full" in line and "free space there" in line
    with CoordinatorClient(host["url"], host["token"]) as client, pytest.raises(StorageError, match="is full"):
        for _ in range(3):
            client.submit({"steps": 100}, "while full")
    cluster.stop(agent, signal.SIGKILL)  # a node dies while the disk is full
    assert host["proc"].alive()

    filler.unlink()
    wait_until(lambda: cluster.nodes()["b"]["state"] == "lost", 30, "housekeeping to mark b lost")
    assert "the database can be written again" in host["proc"].log.read_text()
    assert host["proc"].log.read_text().count("is full") <= 3  # once per outage, not every second
    assert "Internal Server Error" not in agent.log.read_text()
    assert agent.log.read_text().count("host error") <= 1  # heartbeats need no write: quiet
    jobs = json.loads(cluster.cli("jobs", "--json").stdout)
    assert jobs == []  # nothing half-written by the refused submissions


def test_a_host_started_on_a_full_disk_says_so_in_one_line_and_leaves_nothing(cluster: Cluster, small_disk: Path) -> None:
    filler = fill(small_disk)
    state = small_disk / "host"
    out = cluster.run(*HOST, "--state-dir", str(state), timeout=60)
    assert out.returncode == 1, out.stderr
    line = one_error_line(out)
    assert f"the disk holding {state} is full" in line and "--state-dir" in line
    assert sorted(p.name for p in state.iterdir()) == []  # no stray token or probe file
    filler.unlink()
