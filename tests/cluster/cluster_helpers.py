"""Small helpers shared by the cluster tests (importable from test files, unlike conftest)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BRISK = {"heartbeat_interval_s": 0.5, "housekeeping_interval_s": 0.25}
"""Host timeouts every ``Cluster.start_host`` uses unless told otherwise: agents heartbeat
twice a second and the host looks at its nodes and jobs four times a second, so a job is
picked up and its end is seen sooner (the 6 s node timeout and every other wait stay)."""
QUICK_LOSS = {**BRISK, "node_timeout_s": 3.0}
"""Host timeouts (``Cluster.start_host(timeouts=...)``) for a test that waits for a node to be
marked lost: 3 s of silence instead of 6 (six heartbeats, so a live node on a busy machine is
not taken for lost)."""


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_coordinator(state_dir: Path, token: str, routers: Sequence[Any] = (), *,
                      metrics_token: str | None = None,
                      wrap: Callable[[Any], Any] | None = None) -> Iterator[tuple[str, Any]]:
    """A real coordinator app (SQLite file in ``state_dir``) on a real uvicorn server on
    127.0.0.1 (port chosen by the OS), in a thread. Yields ``(url, store)``. ``wrap`` (an ASGI
    middleware factory) goes around the whole app, e.g. to record what reaches the server."""
    import uvicorn

    from potluck.contracts.versions import local_versions
    from potluck.coordinator.app import create_app
    from potluck.coordinator.service import Coordinator, CoordinatorConfig
    from potluck.coordinator.store import Store

    store = Store(state_dir / "potluck.db")
    coord = Coordinator(store, CoordinatorConfig(state_dir=state_dir, advertise="127.0.0.1", port=0,
                                                 lighthouse_port=1, versions=local_versions()))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(coord, token, metrics_token=metrics_token, routers=routers)
    server = uvicorn.Server(uvicorn.Config(wrap(app) if wrap else app, log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, "uvicorn to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", store
    finally:
        coord.closing = True  # long polls and event streams end now, as when a host stops
        server.should_exit = True
        thread.join(10)
        sock.close()
        store.close()
