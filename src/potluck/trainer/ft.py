"""torchft glue: the Lighthouse, a Manager per replica group, and two small adapters.

- :class:`MembershipGloo` is torchft's reconfigurable gloo group that also remembers which
  replica slots the current quorum holds (torchft passes them to ``configure``), in quorum
  order. The allocation is a function of that membership.
- :class:`AdvertisedHTTPTransport` serves recovery checkpoints like torchft's HTTP transport
  but advertises the address we chose, not ``socket.gethostname()``: a hostname that resolves
  to 127.0.0.1 is the classic cause of "connectFullMesh failed" in hand-made clusters.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from torch.distributed import TCPStore


def quiet_rust_logs() -> None:
    """torchft's Rust side logs every quorum at INFO: keep warnings only, unless the user
    set RUST_LOG or asked potluck for INFO/DEBUG. Must run before torchft is imported."""
    if os.environ.get("POTLUCK_LOG_LEVEL", "").upper() not in ("DEBUG", "INFO"):
        os.environ.setdefault("RUST_LOG", "warn")


quiet_rust_logs()

from torchft.checkpointing.http_transport import HTTPTransport  # noqa: E402  (after quiet_rust_logs)
from torchft.coordination import LighthouseServer  # noqa: E402  (after quiet_rust_logs)
from torchft.manager import Manager  # noqa: E402  (after quiet_rust_logs)
from torchft.process_group import ProcessGroupGloo  # noqa: E402  (after quiet_rust_logs)


class MembershipGloo(ProcessGroupGloo):
    """A torchft ProcessGroupGloo that exposes the slots of the current quorum."""

    members: list[int] = []

    def configure(self, store_addr: str, replica_id: str, rank: int, world_size: int,
                  quorum_id: int | None = None, group_rank: int | None = None,
                  group_world_size: int | None = None,
                  global_ranks: list[int] | None = None) -> None:
        # With one process per replica group, torchft's global rank is the trailing number
        # of each replica id, which we set to the slot.
        self.members = list(global_ranks or [])
        super().configure(store_addr, replica_id, rank, world_size, quorum_id, group_rank,
                          group_world_size, global_ranks)


class AdvertisedHTTPTransport(HTTPTransport):
    def __init__(self, advertise_host: str, timeout: timedelta) -> None:
        self._advertise_host = advertise_host
        super().__init__(timeout=timeout, num_chunks=0)

    def address(self) -> str:
        port = self._server.socket.getsockname()[1]
        host = self._advertise_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/checkpoint/"


def replica_id(name: str, slot: int) -> str:
    """A torchft replica id ending in the slot (torchft derives ranks from trailing digits)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f"{safe}_{slot}"


def start_lighthouse(bind_host: str = "0.0.0.0", port: int = 0, *, min_replicas: int = 1,
                     join_timeout_ms: int = 1000, heartbeat_timeout_ms: int = 3000) -> LighthouseServer:
    """Start a torchft Lighthouse in this process. ``.address()`` gives ``http://host:port``."""
    return LighthouseServer(
        bind=f"{bind_host}:{port}" if ":" not in bind_host else f"[{bind_host}]:{port}",
        min_replicas=min_replicas,
        join_timeout_ms=join_timeout_ms,
        heartbeat_timeout_ms=heartbeat_timeout_ms,
    )


def lighthouse_port(server: LighthouseServer) -> int:
    """The port a Lighthouse bound (its ``address()`` names the machine's hostname, not ours)."""
    return int(server.address().rstrip("/").rsplit(":", 1)[1])


def make_manager(*, name: str, slot: int, lighthouse: str, advertise_host: str,
                 timeout_s: float, load_state_dict: Callable[[Any], None],
                 state_dict: Callable[[], Any]) -> tuple[Manager, MembershipGloo, TCPStore]:
    """A torchft Manager for a one-process replica group, quorum computed synchronously.

    Synchronous quorum: the allocation depends on who is in the step, so it must be known
    before the forward pass. A recovering replica heals before computing and takes part in
    the same step.
    """
    timeout = timedelta(seconds=timeout_s)
    store = TCPStore(host_name=advertise_host, port=0, is_master=True, wait_for_workers=False)
    pg = MembershipGloo(timeout=timeout)
    manager = Manager(
        pg=pg,
        load_state_dict=load_state_dict,
        state_dict=state_dict,
        min_replica_size=1,
        use_async_quorum=False,
        timeout=timeout,
        quorum_timeout=timedelta(seconds=max(60.0, 3 * timeout_s)),
        connect_timeout=timedelta(seconds=30),
        rank=0,
        world_size=1,
        store_addr=advertise_host,
        store_port=store.port,
        lighthouse_addr=lighthouse,
        replica_id=replica_id(name, slot),
        hostname=advertise_host,
        port=0,
        checkpoint_transport=AdvertisedHTTPTransport(advertise_host, timeout),
        init_sync=False,  # every replica builds the same weights from the job's seed
        # A quorum request that hits a restarting Lighthouse is retried, not fatal
        # (TORCHFT_QUORUM_RETRIES still overrides).
        quorum_retries=5,
    )
    return manager, pg, store
