"""A replica's torchft Manager answers its peers, not a stranger's ``Kill``.

torchft's ManagerServer serves ``/torchft.ManagerService/Kill`` with no credential, and the
call exits the replica's process. ``trainer.ft.make_manager`` binds the server on loopback
behind a :class:`~potluck.trainer.grpc_guard.GrpcGuard` on the advertised address (same port)
that passes ``Quorum``, ``CheckpointMetadata`` and ``ShouldCommit`` only.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_lighthouse_guard import h2_request
from test_listeners import CHOSEN, listeners, socket_inodes

from potluck.contracts.jobspec import JobSpec
from potluck.launcher import LocalCluster
from potluck.trainer.ft import MANAGER_UPSTREAM, _guarded_manager_port
from potluck.trainer.grpc_guard import MANAGER_PATHS, PEER_MANAGER_PATHS, Refused, check_request

_KILL = b"\x0a\x06stolen"  # KillRequest{msg: "stolen"}
KILL_BODY = b"\0" + len(_KILL).to_bytes(4, "big") + _KILL  # one uncompressed gRPC message

_SERVER = textwrap.dedent("""
    import sys, time
    from datetime import timedelta
    from torchft._torchft import ManagerServer
    from potluck.trainer.ft import lighthouse_port, start_lighthouse
    lighthouse = start_lighthouse("127.0.0.1", 0)
    server = ManagerServer(
        replica_id="victim_0", lighthouse_addr=f"http://127.0.0.1:{lighthouse_port(lighthouse)}",
        hostname=sys.argv[1], bind=sys.argv[2], store_addr="127.0.0.1:1", world_size=1,
        heartbeat_interval=timedelta(seconds=1), connect_timeout=timedelta(seconds=5),
        quorum_retries=0)
    print(server.address(), flush=True)
    time.sleep(120)
""")


def _manager_process(hostname: str, bind: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, hostname, bind],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # the address: the server is listening
    return proc


def _exit_code(proc: subprocess.Popen[str], wait_s: float = 2.0) -> int | None:
    try:
        return proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return None


def _grpc(path: str) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":path", path), ("content-type", "application/grpc")]


def test_peers_may_ask_a_manager_for_checkpoint_metadata_only() -> None:
    kill = "/torchft.ManagerService/Kill"
    check_request(_grpc("/torchft.ManagerService/CheckpointMetadata"), PEER_MANAGER_PATHS)
    for path in ("/torchft.ManagerService/Quorum", "/torchft.ManagerService/ShouldCommit", kill):
        with pytest.raises(Refused):
            check_request(_grpc(path), PEER_MANAGER_PATHS)
    # a group of several processes: its other ranks need Quorum and ShouldCommit too
    check_request(_grpc("/torchft.ManagerService/ShouldCommit"), MANAGER_PATHS)
    with pytest.raises(Refused):
        check_request(_grpc(kill), MANAGER_PATHS)


# -- tier 2: a real ManagerServer in a child process -------------------------------------------


@pytest.mark.parametrize("paths", [PEER_MANAGER_PATHS, MANAGER_PATHS], ids=["peers", "group"])
def test_kill_passes_no_guard_but_does_reach_an_unguarded_manager(paths: frozenset[str]) -> None:
    guard, port = _guarded_manager_port(CHOSEN, paths)
    victim = _manager_process(CHOSEN, f"{MANAGER_UPSTREAM}:{port}")
    try:
        h2_request((CHOSEN, port), "POST", "/torchft.ManagerService/Kill", "application/grpc",
                   KILL_BODY)
        assert _exit_code(victim) is None, "a Kill through the guard ended the Manager's process"
        # The same bytes straight to the server: the attack is real, the guard is what stops it.
        h2_request((MANAGER_UPSTREAM, port), "POST", "/torchft.ManagerService/Kill",
                   "application/grpc", KILL_BODY)
        assert _exit_code(victim, 10) == 1
    finally:
        victim.kill()
        victim.wait()
        guard.close()


# -- tier 3: a training job whose Managers are attacked on the advertised address -------------


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_kill_rpcs_to_every_replica_manager_change_nothing(tmp_path: Path) -> None:
    """Two replicas train while a stranger sends ``Kill`` to each one's Manager port on the
    advertised address: both finish, every step commits, identical parameters."""
    job = JobSpec.parse({"steps": 16, "global_batch": 32, "policy": "equal",
                         "emulation": {"sample_s": 5e-3}})
    attacked: dict[int, int] = {}
    with LocalCluster(job, [1.0, 1.0], tmp_path / "run", host=CHOSEN) as cluster:
        deadline = time.monotonic() + 120
        while len(attacked) < 2 and time.monotonic() < deadline:
            table = listeners()
            for slot, proc in cluster.procs.items():
                if slot in attacked or proc.poll() is not None:
                    continue
                socks = {table[i] for i in socket_inodes(proc.pid) if i in table}
                # The Manager: one port on both the advertised address (the guard) and loopback.
                ports = {p for ip, p in socks if ip == CHOSEN} & \
                        {p for ip, p in socks if ip == MANAGER_UPSTREAM}
                for port in ports:
                    h2_request((CHOSEN, port), "POST", "/torchft.ManagerService/Kill",
                               "application/grpc", KILL_BODY)
                    attacked[slot] = port
            time.sleep(0.2)
        codes = cluster.wait(180)
        records = [cluster.records(s) for s in range(2)]
    assert sorted(attacked) == [0, 1], f"found the Managers of {attacked} only"
    assert codes == {0: 0, 1: 0}, codes
    done = [r[-1] for r in records]
    assert all(d["type"] == "done" for d in done)
    for recs in records:
        assert sorted(r["step"] for r in recs if r["type"] == "step" and r["committed"]) \
            == list(range(job.steps))
    assert len({d["params_sha256"] for d in done}) == 1
