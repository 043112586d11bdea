"""torchft glue: the Lighthouse, a Manager per replica group, and two small adapters.

- ``MembershipGloo`` is torchft's reconfigurable gloo group that also remembers which replica
  slots the current quorum holds (torchft passes them to ``configure``), in quorum order. The
  allocation is a function of that membership.
- ``AdvertisedHTTPTransport`` serves recovery checkpoints like torchft's HTTP transport but
  advertises the address we chose, not ``socket.gethostname()``: a hostname that resolves to
  127.0.0.1 is the classic cause of "connectFullMesh failed" in hand-made clusters.

torchft is imported on first use, so that an entry point's :func:`potluck.log.setup_logging`
has set the Rust side's log level before the native module loads.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from potluck.contracts.addressing import host_port, http_url


@functools.cache
def _classes() -> tuple[type, type]:
    from torchft.checkpointing.http_transport import HTTPTransport
    from torchft.process_group import ProcessGroupGloo

    class MembershipGloo(ProcessGroupGloo):  # type: ignore[misc,valid-type]
        """A torchft ProcessGroupGloo that exposes the slots of the current quorum."""

        members: list[int] = []

        def configure(self, store_addr: str, replica_id: str, rank: int, world_size: int,
                      quorum_id: int | None = None, group_rank: int | None = None,
                      group_world_size: int | None = None,
                      global_ranks: list[int] | None = None) -> None:
            # torchft's global rank of a replica group is the trailing number of its replica
            # id, which we set to the slot.
            self.members = list(global_ranks or [])
            super().configure(store_addr, replica_id, rank, world_size, quorum_id, group_rank,
                              group_world_size, global_ranks)

    class AdvertisedHTTPTransport(HTTPTransport):  # type: ignore[misc,valid-type]
        def __init__(self, advertise_host: str, timeout: timedelta) -> None:
            self._advertise_host = advertise_host
            super().__init__(timeout=timeout, num_chunks=0)

        def address(self) -> str:
            port = self._server.socket.getsockname()[1]
            return http_url(self._advertise_host, port, "/checkpoint/")

    return MembershipGloo, AdvertisedHTTPTransport


def replica_id(name: str, slot: int) -> str:
    """A torchft replica id ending in the slot (torchft derives ranks from trailing digits)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f"{safe}_{slot}"


def start_lighthouse(bind_host: str = "0.0.0.0", port: int = 0, *, min_replicas: int = 1,
                     join_timeout_ms: int = 1000, heartbeat_timeout_ms: int = 3000) -> Any:
    """Start a torchft Lighthouse in this process; :func:`lighthouse_port` gives its port."""
    from torchft.coordination import LighthouseServer

    return LighthouseServer(
        bind=host_port(bind_host, port),
        min_replicas=min_replicas,
        join_timeout_ms=join_timeout_ms,
        heartbeat_timeout_ms=heartbeat_timeout_ms,
    )


def lighthouse_port(server: Any) -> int:
    """The port a Lighthouse bound (its ``address()`` names the machine's hostname, not ours)."""
    return int(server.address().rstrip("/").rsplit(":", 1)[1])


def make_manager(*, name: str, slot: int, lighthouse: str, advertise_host: str,
                 timeout_s: float, load_state_dict: Callable[[Any], None],
                 state_dict: Callable[[], Any], group_rank: int = 0,
                 group_world_size: int = 1) -> tuple[Any, Any, Any]:
    """A torchft Manager for this process of replica group ``slot``, quorum computed synchronously.

    Synchronous quorum: the allocation depends on who is in the step, so it must be known
    before the forward pass. A recovering replica heals before computing and takes part in
    the same step. Returns ``(manager, process_group, store)``; with more than one process
    per group, rank 0's store must be reachable at ``advertise_host`` (one group per process
    today: every process is its group's rank 0).
    """
    from torch.distributed import TCPStore
    from torchft.manager import Manager

    membership_gloo, transport = _classes()
    timeout = timedelta(seconds=timeout_s)
    store = TCPStore(host_name=advertise_host, port=0, is_master=group_rank == 0,
                     wait_for_workers=False)
    pg = membership_gloo(timeout=timeout)
    manager = Manager(
        pg=pg,
        load_state_dict=load_state_dict,
        state_dict=state_dict,
        min_replica_size=1,
        use_async_quorum=False,
        timeout=timeout,
        quorum_timeout=timedelta(seconds=max(60.0, 3 * timeout_s)),
        connect_timeout=timedelta(seconds=30),
        rank=group_rank,
        world_size=group_world_size,
        store_addr=advertise_host,
        store_port=store.port,
        lighthouse_addr=lighthouse,
        replica_id=replica_id(name, slot),
        hostname=advertise_host,
        port=0,
        checkpoint_transport=transport(advertise_host, timeout),
        init_sync=False,  # every replica builds the same weights from the job's seed
        # A quorum request that hits a restarting Lighthouse is retried, not fatal
        # (TORCHFT_QUORUM_RETRIES still overrides).
        quorum_retries=5,
    )
    return manager, pg, store
