"""Who is in the cluster: registration, leaving, heartbeats, and marking silent nodes lost.

Heartbeats touch memory only (``last_seen``, and ``resources``: the CPU, RAM and GPU figures
the agent sent, never stored); :meth:`Membership.flush` writes the times once a second, and
:meth:`Membership.mark_lost` turns a node silent for ``node_timeout_s`` lost and ends its
active replicas.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Collection
from typing import Any

from potluck.contracts import wire as s
from potluck.contracts.errors import ConflictError, NodeAuthError, NotFoundError
from potluck.contracts.versions import require_same_versions
from potluck.coordinator.config import CoordinatorConfig
from potluck.coordinator.store import Store, dumps, loads
from potluck.log import get_logger

log = get_logger("coordinator.membership")

MAX_NODES = 4096
"""Slots ever handed out by one coordinator; a job uses the nodes with slot < max_replicas."""


def _hash(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


class Membership:
    def __init__(self, store: Store, config: CoordinatorConfig) -> None:
        self.store = store
        self.config = config
        now = time.time()
        # A restarted coordinator gives every known node a full timeout to reconnect.
        self.last_seen: dict[int, float] = {row["id"]: now for row in store.nodes()}
        self._dirty: set[int] = set(self.last_seen)
        self._credentials: dict[int, str] = {}
        """Node id -> hash of its current credential (cache of the nodes table)."""
        self._silent_but_training: set[int] = set()
        self.resources: dict[int, s.NodeTelemetry] = {}
        """Node id -> the resources its latest heartbeat reported (memory only)."""

    def register(self, req: s.RegisterRequest) -> s.RegisterResponse:
        """Add (or take back) a node. Raises VersionMismatchError, ConflictError when full."""
        require_same_versions(self.config.versions, req.versions)
        now = time.time()
        credential = secrets.token_urlsafe(24)
        node_id, name, slot = self.store.register_node(
            name=req.name, node_key=req.node_key, address=req.address, interface=req.interface,
            hardware=dumps(req.hardware.model_dump()), versions=dumps(req.versions.model_dump()),
            speed=req.speed, now=now, max_nodes=MAX_NODES, credential=_hash(credential),
        )
        self.last_seen[node_id] = now
        log.info("node %s registered (id %s, slot %s)", name, node_id, slot)
        self._credentials[node_id] = _hash(credential)
        return s.RegisterResponse(node_id=node_id, name=name, slot=slot,
                                  heartbeat_interval_s=self.config.timeouts.heartbeat_interval_s,
                                  lighthouse=self.config.lighthouse, credential=credential)

    def authenticate(self, node_id: int, credential: str | None) -> None:
        """Only the agent that registered ``node_id`` may act for it. Raises NotFoundError for
        an unknown node, NodeAuthError (401) for a missing or wrong credential."""
        expected = self._credentials.get(node_id)
        if expected is None:
            row = self.node(node_id)
            expected = self._credentials[node_id] = row["credential"] or ""
        if not credential or not expected or not hmac.compare_digest(_hash(credential), expected):
            raise NodeAuthError(
                f"node {node_id}: missing or wrong node credential: only the agent that registered "
                "this node may act for it (an agent that gets this registers again)"
            )

    def node(self, node_id: int) -> Any:
        node = self.store.node(node_id)
        if node is None:
            raise NotFoundError(f"unknown node {node_id}: register again")
        return node

    def leave(self, node_id: int) -> None:
        node = self.node(node_id)
        self.store.set_node_state(node_id, "left", f"{node['name']} left the cluster",
                                  end_replicas=("stopped", "node left the cluster"))
        self.resources.pop(node_id, None)

    def forget(self, name: str) -> Any:
        """Forget the node called ``name`` (see Store.forget_node); returns its row as it was.
        Raises NotFoundError for no such node, ConflictError for one that is alive."""
        row = next((r for r in self.store.nodes() if r["name"] == name), None)
        if row is None:
            raise NotFoundError(f"no node named {name!r}: `potluck status` lists the nodes")
        if row["state"] == "alive":
            raise ConflictError(f"node {name} is alive: stop its agent first (Ctrl-C on that "
                                "machine), then forget it")
        self.store.forget_node(row["id"])
        for cache in (self.last_seen, self._credentials, self.resources):
            cache.pop(row["id"], None)
        self._dirty.discard(row["id"])
        self._silent_but_training.discard(row["id"])
        log.info("node %s forgotten", name)
        return row

    def touch(self, node_id: int, resources: s.NodeTelemetry | None = None) -> Any:
        """A heartbeat arrived (with the node's ``resources``, if it sampled them). Returns the
        node's row when it was not alive (or unknown here), else None; raises NotFoundError
        for a node the store does not know."""
        if node_id not in self.last_seen:
            self.node(node_id)
        self.last_seen[node_id] = time.time()
        if resources is not None:
            self.resources[node_id] = resources
        self._dirty.add(node_id)
        if self.store.node_state(node_id) != "alive":
            node = self.node(node_id)
            self.store.set_node_state(node_id, "alive", f"{node['name']} is back")
            return node
        return None

    def info(self, row: Any, measured: float | None) -> s.NodeInfo:
        node_id = row["id"]
        return s.NodeInfo(
            id=node_id, name=row["name"], slot=row["slot"], address=row["address"],
            interface=row["interface"], hardware=s.Hardware(**loads(row["hardware"])),
            versions=s.Versions(**loads(row["versions"])), speed=row["speed"],
            measured_samples_per_s=measured if measured is not None else row["measured_sps"],
            state=row["state"], last_heartbeat=self.last_seen.get(node_id, row["last_heartbeat"]),
            joined_at=row["joined_at"], telemetry=self.resources.get(node_id),
        )

    def flush(self, measured: dict[int, float]) -> None:
        self.store.save_node_liveness(
            {i: self.last_seen[i] for i in self._dirty if i in self.last_seen}, measured)
        self._dirty.clear()

    def mark_lost(self, now: float, training: Collection[int] = ()) -> None:
        """Mark nodes silent for ``node_timeout_s`` lost, unless their slot is in ``training``
        (slots other replicas reported in committed steps within the timeout): a frozen or
        cut-off agent whose replica still trains is not lost, the replica is the truth."""
        timeout = self.config.timeouts.node_timeout_s
        for row in self.store.nodes():
            silent = row["state"] == "alive" and now - self.last_seen.get(row["id"], 0) > timeout
            if silent and row["slot"] in training:
                if row["id"] not in self._silent_but_training:
                    self._silent_but_training.add(row["id"])
                    self.store.event("node", f"{row['name']}'s agent is silent, but its replica still "
                                     "commits steps: kept alive", node_id=row["id"])
                continue
            self._silent_but_training.discard(row["id"])
            if silent:
                self.store.set_node_state(
                    row["id"], "lost", f"{row['name']} lost (no heartbeat for {timeout:.0f} s)",
                    end_replicas=("lost", "node stopped heartbeating"))
