"""torchft glue: the Lighthouse, a Manager per replica group, and two small adapters.

- ``MembershipGloo`` is torchft's reconfigurable gloo group that also remembers which replica
  slots the current quorum holds (torchft passes them to ``configure``), in quorum order. The
  allocation is a function of that membership.
- ``AdvertisedHTTPTransport`` serves recovery checkpoints like torchft's HTTP transport but
  advertises the address we chose, not ``socket.gethostname()``: a hostname that resolves to
  127.0.0.1 is the classic cause of "connectFullMesh failed" in hand-made clusters. A replica
  with a job secret uses :class:`~potluck.trainer.checkpoint.SecureCheckpointTransport`
  instead (authenticated, no pickle); this one remains for callers without a secret.

Every listener of a replica binds the advertised address, not all interfaces: the Manager's
gRPC server (torchft hard-codes ``[::]``; :func:`_manager_server_bound_to` rewrites it while
the Manager is built), the TCPStore (a socket we bind, handed over as ``master_listen_fd``),
gloo's pairs (a device made for that address) and the checkpoint server. The Manager's server
itself binds loopback, behind a :class:`~potluck.trainer.grpc_guard.GrpcGuard` on the
advertised address that passes every call but ``Kill`` (:func:`_guarded_manager_port`).

torchft is imported on first use, so that an entry point's :func:`potluck.log.setup_logging`
has set the Rust side's log level before the native module loads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.util
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from datetime import timedelta
from pathlib import Path
from typing import Any

from potluck.contracts.addressing import host_port, http_url, url_host


@functools.cache
def _classes() -> tuple[type, type]:
    from torch.distributed import ProcessGroupGloo as BaseGloo
    from torchft.checkpointing.http_transport import HTTPTransport
    from torchft.process_group import ProcessGroupGloo

    class MembershipGloo(ProcessGroupGloo):  # type: ignore[misc,valid-type]
        """A torchft ProcessGroupGloo that exposes the slots of the current quorum, binds
        gloo to ``bind_host`` and, given a ``guard``, refuses quorums holding strangers: a
        member without the job's tag (checked before the group is built) or without a proof
        of the job's secret for this quorum (exchanged on the new group, trainer/trust.py)."""

        members: list[int] = []
        bind_host: str | None = None
        guard: Any = None
        untrusted: Exception | None = None

        def configure(self, store_addr: str, replica_id: str, rank: int, world_size: int,
                      quorum_id: int | None = None, group_rank: int | None = None,
                      group_world_size: int | None = None,
                      global_ranks: list[int] | None = None) -> None:
            if self.guard is not None:
                try:
                    self.guard.check()
                except Exception as exc:
                    self._refuse(exc)
                    raise
                self.untrusted = None
            # torchft's global rank of a replica group is the trailing number of its replica
            # id, which we set to the slot.
            self.members = list(global_ranks or [])
            super().configure(store_addr, replica_id, rank, world_size, quorum_id, group_rank,
                              group_world_size, global_ranks)
            if self.guard is not None and world_size > 1:
                # Before anything else uses the new group: every member proves the secret
                # (two small SUMs; only here, when the quorum changed).
                gws = group_world_size or 1
                try:
                    # this member's torchft global rank: the id's trailing slot, as torchft reads it
                    from potluck.trainer.trust import slot_of

                    slot = slot_of(replica_id)
                    if slot is None:
                        raise ValueError(f"replica id {replica_id!r} ends in no slot")
                    self.guard.prove(self._sum, quorum_id=-1 if quorum_id is None else quorum_id,
                                     store_addr=store_addr, rank=rank,
                                     member=slot * gws + (group_rank or 0),
                                     members=self.members, group_world_size=gws)
                except Exception as exc:
                    self._refuse(exc)
                    raise

        def _refuse(self, exc: Exception) -> None:
            """Refuse this quorum: torchft reports ``exc`` from configure and skips healing;
            errored() keeps every later step of this quorum discarded (configure runs again
            only when the quorum changes), and without a gloo group no collective of this
            quorum reaches anyone (each fails at once and is reported as the step's error)."""
            self.untrusted = exc
            self.abort(errored=False)

        def _sum(self, table: Any) -> None:
            """SUM ``table`` in place over the current group, waiting at most the group's
            timeout (gloo's own timeout bounds it too); raises if it fails."""
            from torch.distributed import AllreduceOptions, ReduceOp

            opts = AllreduceOptions()
            opts.reduceOp = ReduceOp.SUM  # type: ignore[assignment]  # torch's stub: RedOpType
            self.allreduce([table], opts).wait(self._timeout)

        def errored(self) -> Exception | None:
            return self.untrusted or super().errored()

        def set_timeout(self, timeout: timedelta) -> None:
            """The timeout of the next configuration's gloo group and of the current one
            (its pairs' operations from now on)."""
            super().set_timeout(timeout)
            if self._pg is not None:
                self._pg.set_timeout(timeout)

        def _create_pg(self, store: Any, rank: int, world_size: int) -> Any:
            if self.bind_host is None:
                return super()._create_pg(store, rank, world_size)
            # torchft's _create_pg with one change: gloo's device listens on bind_host only
            # (the default device listens on the address of the hostname or interface).
            from torch.distributed import ProcessGroup

            pg = ProcessGroup(store, rank, world_size)
            pg._set_default_backend(ProcessGroup.BackendType.GLOO)
            opts = BaseGloo._Options()  # type: ignore[attr-defined]
            opts._timeout = self._timeout
            opts._devices = [BaseGloo.create_device(hostname=self.bind_host)]
            backend = BaseGloo(store, rank, world_size, opts)
            backend._set_sequence_number_for_group()
            if self._global_ranks:
                backend.options.global_ranks_in_group = self._global_ranks
            if self._group_rank and self._group_world_size:
                name = (f"torchft_quorum_{self._quorum_id}_rank_"
                        f"{self._group_rank % self._group_world_size}")
                backend.options.group_name = name  # type: ignore[assignment]
            import torch

            pg._register_backend(torch.device("cpu"), ProcessGroup.BackendType.GLOO, backend)
            if torch.cuda.is_available():
                pg._register_backend(torch.device("cuda"), ProcessGroup.BackendType.GLOO, backend)
            return pg

    class AdvertisedHTTPTransport(HTTPTransport):  # type: ignore[misc,valid-type]
        def __init__(self, advertise_host: str, timeout: timedelta) -> None:
            self._advertise_host = advertise_host
            super().__init__(timeout=timeout, num_chunks=0)

        def address(self) -> str:
            port = self._server.socket.getsockname()[1]
            return http_url(self._advertise_host, port, "/checkpoint/")

    return MembershipGloo, AdvertisedHTTPTransport


_bind_lock = threading.Lock()


@contextlib.contextmanager
def _manager_server_bound_to(host: str) -> Iterator[None]:
    """While the Manager is built, its ManagerServer binds ``host`` instead of ``[::]``.

    torchft's Manager takes no bind address (it passes ``[::]:<port>``); ManagerServer does.
    Swapping the name torchft's module looks up is the least intrusive way to pass one; the
    lock keeps two Managers built at once in one process from racing on it.
    """
    import torchft.manager as tm

    original = tm.ManagerServer

    def bound(**kwargs: Any) -> Any:
        port = int(str(kwargs["bind"]).rsplit(":", 1)[1])
        return original(**{**kwargs, "bind": host_port(host, port)})

    with _bind_lock:
        tm.ManagerServer = bound
        try:
            yield
        finally:
            tm.ManagerServer = original


MANAGER_UPSTREAM = "127.0.0.1"
"""Where a guarded Manager's gRPC server listens (IPv4 loopback: always there on Linux,
whatever family the advertised address has; the guard connects to it)."""


def _guarded_manager_port(advertise_host: str, paths: frozenset[str]) -> tuple[Any, int]:
    """A guard on a free port of ``advertise_host`` whose port is also free on loopback.

    torchft's Manager advertises ``http://<hostname>:<the port its server bound>``, so the
    guard (what peers reach) and the server (on loopback) must share the port number. The
    guard holds its socket; the loopback port is only checked, so another process could take
    it before the Manager binds it (the Manager then fails to start, like any bind failure).
    """
    from potluck.trainer.grpc_guard import GrpcGuard

    for _ in range(20):
        guard = GrpcGuard(listen=(advertise_host, 0), upstream=(MANAGER_UPSTREAM, 0), paths=paths)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((MANAGER_UPSTREAM, guard.port))
        except OSError:
            guard.close()
            continue
        return guard, guard.port
    raise OSError(f"no port free on both {advertise_host} and {MANAGER_UPSTREAM} for the "
                  "replica's Manager (20 tries)")


def listening_socket(host: str) -> socket.socket:
    """A TCP socket listening on ``host`` at a free port (for TCPStore's ``master_listen_fd``)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), 0, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.bind(addr)
    sock.listen(128)
    return sock


def replica_id(name: str, slot: int) -> str:
    """A torchft replica id ending in the slot (torchft derives ranks from trailing digits)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f"{safe}_{slot}"


JOIN_TIMEOUT_S = 2.0
"""The host's Lighthouse forms a quorum that lacks a live (heartbeating) replica this long
after its earliest waiting request (the in-process and local launchers' Lighthouses: 1 s).
:func:`start_quorum` keeps a waiting request younger than either (below)."""
REFRESH_S = 0.5
"""A waiting quorum request is sent again this often (under every join timeout we use)."""
LINGER_S = JOIN_TIMEOUT_S + 1.0
"""... once it has waited this long: longer than the Lighthouse waits for a missing member,
so a group short of a dead or stuck member still forms its quorum after the join timeout."""


def start_lighthouse(bind_host: str = "0.0.0.0", port: int = 0, *, min_replicas: int = 1,
                     join_timeout_ms: int = 1000, heartbeat_timeout_ms: int = 3000) -> Any:
    """Start a torchft Lighthouse in this process; :func:`lighthouse_port` gives its port.
    Imports neither torch nor torchft's Python package (:func:`native`)."""
    return native().LighthouseServer(
        bind=host_port(bind_host, port),
        min_replicas=min_replicas,
        join_timeout_ms=join_timeout_ms,
        heartbeat_timeout_ms=heartbeat_timeout_ms,
    )


@functools.cache
def native() -> Any:
    """torchft's native module (``torchft._torchft``: the Lighthouse, the Manager's server
    and clients), loaded without running ``torchft/__init__``, which imports torch: about
    1.2 CPU-seconds that a host, which needs only the Lighthouse, would pay at every start.
    If torchft is already imported, its own module."""
    name = "torchft._torchft"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("torchft")  # finds the package without running it
    folder = Path(package.origin).parent if package and package.origin else None
    paths = sorted(folder.glob("_torchft*.so")) if folder else []
    if not paths:
        from torchft import _torchft  # an unusual install: the ordinary way

        return _torchft
    loader = importlib.machinery.ExtensionFileLoader(name, str(paths[0]))
    spec = importlib.util.spec_from_file_location(name, paths[0], loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    # torchft's own import later finds this one (a native module initialises once per process)
    sys.modules[name] = module
    return module


def lighthouse_port(server: Any) -> int:
    """The port a Lighthouse bound (its ``address()`` names the machine's hostname, not ours)."""
    return int(server.address().rstrip("/").rsplit(":", 1)[1])


QUORUM_MARGIN = 1.5
"""The one rule for torchft's timeouts: a quorum request waits 1.5x the job's step timeout.
A peer that left mid-step can hold the survivors inside a collective for up to one step
timeout before they ask for the next quorum; a quorum timeout shorter than that (the agent
used to force 15 s against a 20 s step timeout) made a survivor give up on a quorum its
peers were about to join, and crash. Longer than needed stalls a host restart: a request to
the old Lighthouse hangs this long before it is retried on the new one."""


def quorum_timeout_s(step_timeout_s: float) -> float:
    """Seconds a quorum request may take for a job whose step timeout is ``step_timeout_s``."""
    return QUORUM_MARGIN * step_timeout_s


def start_quorum(manager: Any, *, newcomer: bool = False, patience_s: float = 0.0) -> None:
    """``manager.start_quorum()``, with the request sent again while it waits.

    torchft's Lighthouse counts its join timeout from the *earliest* waiting request. A
    replica that waits long (a newcomer while the group computes a diloco phase, or a member
    that missed a quorum) therefore made the Lighthouse form the next quorum the moment the
    first of the group arrived, without the others (who arrive milliseconds later): one of
    them then waited through the next phase in turn, and the group alternated. A request
    sent again every :data:`REFRESH_S` stays "just joined", so the Lighthouse waits for every
    live member as usual. A ``newcomer`` (joining a running job) refreshes from the start;
    any other request only after :data:`LINGER_S`, so that a dead, stuck or stranger process
    that heartbeats but never asks is still left out after the join timeout.

    Each refresh ends the Manager's wait for the previous request (the request itself goes on
    waiting a little longer: :class:`QuorumClient`): torchft's Manager then has changed
    nothing (the quorum call failed before any state), and its failed future is dropped here. Raises TimeoutError after the Manager's quorum timeout plus
    ``patience_s`` (a newcomer may wait for a whole phase of the others), as
    ``start_quorum`` does after its timeout."""
    deadline = time.monotonic() + manager._quorum_timeout.total_seconds() + patience_s
    wait = REFRESH_S if newcomer else LINGER_S
    while True:
        left = deadline - time.monotonic()
        try:
            manager.start_quorum(timeout=timedelta(seconds=max(0.05, min(wait, left))))
            return
        except TimeoutError:
            if wait >= left:
                raise
            manager._quorum_future = None  # failed before any state changed; ask again
            wait = REFRESH_S


def quorum_id(manager: Any) -> int:
    """The Lighthouse's id of the last quorum this Manager received (-1: none yet). The
    Lighthouse numbers quorums in order and gives a new number whenever the members change,
    so a replica whose id jumps by more than one missed a quorum of the others."""
    return int(manager._client.raw_id)


def set_timeouts(manager: Any, pg: Any, *, collective_s: float, quorum_s: float) -> None:
    """Change a running Manager's timeouts (a sync plan's, trainer/plan.py): every collective
    and the commit vote wait up to ``collective_s``, a quorum request ``quorum_s``.

    torchft takes them only in the Manager's constructor; it reads ``_timeout`` and
    ``_quorum_timeout`` at each use, and the process group's timeout applies to the gloo group
    in use now and to the next one ``configure`` builds. Call between steps, on every member
    alike (a member with a shorter timeout would give up on a sync its peers still run)."""
    collective = timedelta(seconds=collective_s)
    manager._timeout = collective
    manager._quorum_timeout = timedelta(seconds=quorum_s)
    pg.set_timeout(collective)


def make_manager(*, name: str, slot: int, lighthouse: str, advertise_host: str,
                 timeout_s: float, load_state_dict: Callable[[Any], None],
                 state_dict: Callable[[], Any], group_rank: int = 0,
                 group_world_size: int = 1, secret: str | None = None,
                 on_alert: Callable[[str], None] | None = None) -> tuple[Any, Any, Any]:
    """A torchft Manager for this process of replica group ``slot``, quorum computed synchronously.

    Synchronous quorum: the allocation depends on who is in the step, so it must be known
    before the forward pass. A recovering replica heals before computing and takes part in
    the same step. Returns ``(manager, process_group, store)``; with more than one process
    per group, rank 0's store must be reachable at ``advertise_host`` (one group per process
    today: every process is its group's rank 0).

    With ``secret`` (the job's, from the coordinator) the replica id carries the job's tag,
    every quorum's members are checked (their tags, then a proof of the secret exchanged on
    each new gloo group; a stranger makes the quorum's steps discard and calls
    ``on_alert``), and recovery goes through the authenticated, pickle-free
    :class:`~potluck.trainer.checkpoint.SecureCheckpointTransport`.
    """
    from torch.distributed import TCPStore
    from torchft.manager import Manager

    from potluck.trainer.trust import QuorumGuard, tagged_replica_id

    membership_gloo, advertised_transport = _classes()
    timeout = timedelta(seconds=timeout_s)
    alert = on_alert or (lambda message: None)
    if group_rank == 0:
        listener = listening_socket(advertise_host)
        port = listener.getsockname()[1]
        # detach(): the store owns the descriptor from now on (Python must not close it).
        store = TCPStore(host_name=advertise_host, port=port, is_master=True,
                         wait_for_workers=False, master_listen_fd=listener.detach())
    else:
        store = TCPStore(host_name=advertise_host, port=0, is_master=False, wait_for_workers=False)
    pg = membership_gloo(timeout=timeout)
    pg.bind_host = advertise_host
    transport: Any
    guard = None
    if secret:
        from potluck.trainer.checkpoint import SecureCheckpointTransport

        guard = QuorumGuard(secret=secret, on_alert=alert)
        pg.guard = guard
        transport = SecureCheckpointTransport(bind_host=advertise_host, advertise_host=advertise_host,
                                              secret=secret.encode(), timeout=timeout, on_alert=alert)
        rid = tagged_replica_id(name, slot, secret)
    else:
        transport = advertised_transport(advertise_host, timeout)
        rid = replica_id(name, slot)
    # The Manager's Kill RPC must not be on the network: guard it, except where the advertised
    # address is loopback itself (only this machine reaches it, and both could not share it).
    # A one-process group calls its own server on loopback: peers need only CheckpointMetadata.
    from potluck.trainer.grpc_guard import MANAGER_PATHS, PEER_MANAGER_PATHS

    manager_guard, manager_port, server_host = None, 0, advertise_host
    if group_rank == 0 and advertise_host.strip("[]") not in (MANAGER_UPSTREAM, "::1", "localhost"):
        manager_guard, manager_port = _guarded_manager_port(
            advertise_host, PEER_MANAGER_PATHS if group_world_size == 1 else MANAGER_PATHS)
        server_host = MANAGER_UPSTREAM
    with contextlib.ExitStack() as unwind:
        if manager_guard is not None:
            unwind.callback(manager_guard.close)  # only if the Manager fails to start
        with _manager_server_bound_to(server_host):
            manager = Manager(
                pg=pg,
                load_state_dict=load_state_dict,
                state_dict=state_dict,
                min_replica_size=1,
                use_async_quorum=False,
                timeout=timeout,
                quorum_timeout=timedelta(seconds=quorum_timeout_s(timeout_s)),
                connect_timeout=timedelta(seconds=30),
                rank=group_rank,
                world_size=group_world_size,
                store_addr=advertise_host,
                store_port=store.port,
                lighthouse_addr=lighthouse,
                replica_id=rid,
                # torchft writes http://{hostname}:{port}: an IPv6 address needs its brackets.
                hostname=url_host(advertise_host),
                port=manager_port,
                checkpoint_transport=transport,
                init_sync=False,  # every replica builds the same weights from the job's seed
                # No retries inside torchft's server: start_quorum() above retries every
                # failed request itself (a restarting Lighthouse included; the heartbeat loop
                # reconnects). A server-side retry outlives the request it serves and, sent
                # after its quorum formed, would enter this replica in the next quorum while
                # it computes (TORCHFT_QUORUM_RETRIES still overrides).
                quorum_retries=0,
            )
        unwind.pop_all()
    if manager_guard is not None and group_world_size == 1:
        from torchft.manager import ManagerClient

        manager._client = ManagerClient(http_url(MANAGER_UPSTREAM, manager_port),
                                        connect_timeout=timedelta(seconds=30))
    manager._client = QuorumClient(manager._client)
    if guard is not None:
        guard.wrap(manager)
    if manager_guard is not None:
        _close_with(manager, manager_guard)
    return manager, pg, store


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


class _QuorumView:
    """A torchft QuorumResult as the Manager should see it: its id also names the member
    processes, and its rendezvous keys live in a namespace of its own (see
    :class:`QuorumClient`)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        ids = sorted(inner.replica_ids)
        self.quorum_id = inner.quorum_id * ID_SPAN + _digest(*ids) % ID_SPAN
        space = _digest(inner.max_step, *ids)
        self.store_address = f"{inner.store_address}/potluck/{space:016x}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


ID_SPAN = 1_000_000
"""A Lighthouse quorum id ``q`` reaches torchft's Manager as ``q * ID_SPAN`` plus a number
from the member processes."""


class QuorumClient:
    """torchft's ManagerClient as a replica uses it: quorum requests that overlap, and a fresh
    rendezvous for every quorum.

    **Overlapping requests.** :func:`start_quorum` sends a waiting request again every
    :data:`REFRESH_S`. torchft's Manager server forwards each request to the Lighthouse and
    drops that call when the request times out, but the Lighthouse keeps the replica's entry.
    A quorum that formed between one request's end and the next one's arrival held this
    replica without answering it: the peers built a group with it and waited in it until
    their timeouts, while this replica waited for the next quorum (seen on a loaded 2-core
    machine: a survivor missed the quorum with a restarted peer and gave up after its quorum
    timeout, and the job lost its progress). Here every request runs in a thread of its own
    and lives :data:`OVERLAP_S` longer than the caller waits, so a Lighthouse call of this
    replica is waiting whenever the Lighthouse holds its entry, and whichever call gets the
    quorum answers (the Manager server hands a quorum to every request it holds).

    **Fresh rendezvous.** A restarted host's new Lighthouse numbers quorums from 1 again, and
    torchft trusts the number: it keeps its gloo group while the id is unchanged, and names a
    new group's rendezvous keys after it (``torchft/<id>/...`` in a member's store). So a
    member could keep a two-member group for a quorum that holds it alone (its collectives
    time out), or the same members could read an old group's stale addresses
    (``connectFullMesh`` times out; a replica restart). Every member of one quorum sees the
    same member processes (replica ids end in a uuid per process) and step: the id the
    Manager sees also names the members, and the keys live under a namespace of members and
    step. ``raw_id`` is the Lighthouse's own number."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.raw_id = -1
        self._calls: list[Future[Any]] = []

    def _quorum(self, *, timeout: timedelta, **kwargs: Any) -> Any:
        fresh: Future[Any] = Future()
        longer = timeout + timedelta(seconds=OVERLAP_S)
        threading.Thread(target=_settle, args=(fresh, self._inner._quorum, longer, kwargs),
                         name="quorum-request", daemon=True).start()
        # keep the earlier requests that still wait, or got a quorum since the caller gave up
        self._calls = [*(c for c in self._calls if not c.done() or c.exception() is None), fresh]
        deadline = time.monotonic() + timeout.total_seconds()
        while True:
            answered = next((c for c in self._calls if c.done() and c.exception() is None), None)
            if answered is not None:
                self._calls = []  # the others get the same quorum, or end by their timeout
                result = answered.result()
                self.raw_id = int(result.quorum_id)
                return _QuorumView(result)
            if fresh.done():  # this request failed (the older ones only time out after it)
                raise fresh.exception()  # type: ignore[misc]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"quorum request timed out after {timeout.total_seconds():.1f} s")
            wait([c for c in self._calls if not c.done()], timeout=left, return_when=FIRST_COMPLETED)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


OVERLAP_S = 1.0
"""A quorum request's Lighthouse call outlives the caller's wait by this much (more than the
caller takes to send the next one, even on a loaded machine)."""


def _settle(future: Future[Any], call: Callable[..., Any], timeout: timedelta,
            kwargs: dict[str, Any]) -> None:
    try:
        future.set_result(call(timeout=timeout, **kwargs))
    except BaseException as exc:  # handed to the waiting caller
        future.set_exception(exc)


def _close_with(manager: Any, guard: Any) -> None:
    """Make ``manager.shutdown`` close ``guard`` after the Manager's own server."""
    shutdown = manager.shutdown

    def shutdown_and_close(*args: Any, **kwargs: Any) -> Any:
        try:
            return shutdown(*args, **kwargs)
        finally:
            guard.close()

    manager.shutdown = shutdown_and_close
