"""Checks that talk to the host: reach it, authenticate, compare versions, run a probe round.

- :func:`check_host`: coordinator TCP port, token, versions, Lighthouse TCP port, clock.
- :func:`cluster_round`: ask the coordinator for a doctor round (every alive agent opens a
  probe listener, then each probes the others) and turn the answer into a report.
- :func:`preflight`: the fast round ``potluck train`` runs before submitting; raises
  :class:`PreflightError` naming the failing pair and the fix.
- :func:`attach_links`: the stored link facts, merged into ``potluck status --json``.

All HTTP goes through :class:`~potluck.contracts.client.CoordinatorClient`, whose error
translation (unreachable / wrong token / version mismatch) is reused as is.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from potluck.contracts import wire as d
from potluck.contracts.addressing import http_url
from potluck.contracts.client import CoordinatorClient
from potluck.contracts.errors import (
    AuthError,
    ClusterError,
    HostUnreachableError,
    NotFoundError,
    PreflightError,
)
from potluck.contracts.versions import compare_versions, local_versions
from potluck.doctor.network import check_clock
from potluck.doctor.report import Check, Fix, Link, Report, Status, this_os
from potluck.net.probe import check_connect

HOST_DOWN_FIX = Fix(
    all="start it on the host machine with `potluck host` (it prints the address and token to "
    "use), and check that HOST:PORT is the address it printed",
)
HOST_FIREWALL_FIX = Fix(
    linux="on the host: sudo ufw allow {port}/tcp (firewalld: sudo firewall-cmd --add-port={port}/tcp)",
    macos="on the host: System Settings > Network > Firewall > Options: allow incoming "
    "connections for python",
    windows="on the host: New-NetFirewallRule -DisplayName potluck -Direction Inbound "
    "-Protocol TCP -LocalPort {port} -Action Allow -Profile Private,Domain",
)
TOKEN_FIX = Fix(
    linux="use the token `potluck host` printed (on the host: cat ~/.local/share/potluck/host/token) "
    "with --token or POTLUCK_TOKEN",
    macos="use the token `potluck host` printed (on the host: cat ~/.local/share/potluck/host/token) "
    "with --token or POTLUCK_TOKEN",
    windows="use the token `potluck host` printed (on the host: Get-Content "
    "$env:USERPROFILE\\.local\\share\\potluck\\host\\token) with --token or $env:POTLUCK_TOKEN",
)



def _fmt(fix: Fix, **values: object) -> Fix:
    return Fix(**{k: getattr(fix, k).format(**values) for k in ("all", "linux", "macos", "windows")})


def check_host(node: str, host: str, port: int, token: str | None) -> tuple[Report, CoordinatorClient | None]:
    """Checks against the host; the client is returned when the token works (else None)."""
    report = Report()

    def add(check_id: str, status: Status, summary: str, fix: Fix | None = None, **data: Any) -> None:
        report.add(Check(id=check_id, node=node, status=status, summary=summary, fix=fix, data=data))

    where = f"{host}:{port}"
    conn = check_connect(host, port, timeout=3.0)
    if not conn.ok:
        if conn.error == "refused":
            add("host.coordinator", Status.FAIL,
                f"nothing listens on {where} (connection refused): the host is stopped or this is "
                "the wrong address/port", HOST_DOWN_FIX)
        elif conn.error == "timeout":
            add("host.coordinator", Status.FAIL,
                f"{where} does not answer (timeout): a firewall drops the packets, or the host "
                "machine is off", _fmt(HOST_FIREWALL_FIX, port=port))
        else:
            add("host.coordinator", Status.FAIL, f"cannot reach {where}: {conn.detail}",
                Fix(all="put this machine on the host's LAN or VPN (for Tailscale: `tailscale up`)"))
        return report, None
    add("host.coordinator", Status.OK, f"coordinator reachable at {where}")
    if not token:
        add("host.token", Status.FAIL, "no token given: the host refuses every request without it",
            TOKEN_FIX)
        return report, None
    client = CoordinatorClient(http_url(host, port), token)
    try:
        t0 = time.time()
        info = client.info()
    except AuthError:
        client.close()
        add("host.token", Status.FAIL, f"the host at {where} refused the token (wrong or from "
            "another cluster)", TOKEN_FIX)
        return report, None
    except (HostUnreachableError, ClusterError) as exc:
        client.close()
        add("host.token", Status.FAIL, f"{where} accepts connections but is not a working "
            f"potluck host: {exc}", HOST_DOWN_FIX)
        return report, None
    add("host.token", Status.OK, "token accepted")
    _check_versions(add, info.versions)
    _check_lighthouse(add, info.lighthouse, info.lighthouse_port)
    _check_clock(report, node, client, t0)
    return report, client


def _check_versions(add: Any, host_versions: Any) -> None:
    diffs = compare_versions(host_versions, local_versions())
    if not diffs:
        add("host.versions", Status.OK, "same Python/torch/torchft/potluck as the host")
        return
    what = "; ".join(f"{x.component} {x.node} here, {x.host} on the host" for x in diffs)
    add("host.versions", Status.FAIL, f"version mismatch: {what}",
        Fix(all="; ".join(x.fix for x in diffs)),
        diffs=[x.__dict__ for x in diffs])


def _check_lighthouse(add: Any, url: str, port: int) -> None:
    parts = urlsplit(url)
    host, lh_port = parts.hostname or "", parts.port or port
    conn = check_connect(host, lh_port, timeout=3.0)
    if conn.ok:
        add("host.lighthouse", Status.OK, f"torchft Lighthouse reachable at {host}:{lh_port}")
        return
    fix = _fmt(HOST_FIREWALL_FIX, port=lh_port)
    add("host.lighthouse", Status.FAIL, f"torchft Lighthouse at {host}:{lh_port} not reachable "
        f"({conn.error}): replicas cannot form a quorum", fix)


def _check_clock(report: Report, node: str, client: CoordinatorClient, t0: float) -> None:
    try:
        start = time.time()
        remote = client.doctor_time()
        end = time.time()
    except NotFoundError:
        return  # a host without doctor routes: nothing to compare with
    report.add(check_clock(node, remote - (start + end) / 2))


def cluster_round(client: CoordinatorClient, mode: d.Mode = "full", timeout_s: float = 120.0) -> Report:
    """Run one doctor round on the host and wait for it. Raises ClusterError on API failures."""
    run = client.doctor_start(mode)
    deadline = time.monotonic() + timeout_s
    while run.state != "done" and time.monotonic() < deadline:
        time.sleep(0.2)
        run = client.doctor_run(run.id)
    report = Report()
    for node in run.nodes:
        for raw in node.checks:
            report.add(_check_from(raw.model_dump()))
        if node.error:
            report.add(Check(id="probe_listener", node=node.name, status=Status.FAIL,
                             summary=node.error, fix=Fix(all="pass `potluck join --advertise` with "
                                                         "an address this machine has")))
    for name in run.missing:
        report.add(Check(id="agent", node=name, status=Status.FAIL,
                         summary="the agent did not answer the doctor round in time (busy, "
                         "disconnected, or an older potluck)",
                         fix=Fix(all="check the `potluck join` terminal on that machine; restart it")))
    if run.state != "done":
        report.add(Check(id="round", node="host", status=Status.FAIL,
                         summary=f"the doctor round did not finish in {timeout_s:.0f} s",
                         fix=Fix(all="run `potluck doctor --cluster` again; check `potluck status`")))
    report.links.extend(_link_from(raw.model_dump()) for raw in run.links)
    return report


def _check_from(raw: dict[str, Any]) -> Check:
    fix = Fix(**raw["fix"]) if raw.get("fix") else None
    return Check(id=raw["id"], node=raw["node"], status=Status(raw["status"]),
                 summary=raw["summary"], fix=fix, data=raw.get("data") or {})


def _link_from(raw: dict[str, Any]) -> Link:
    fix = Fix(**raw["fix"]) if raw.get("fix") else None
    return Link(source=raw["source"], target=raw["target"], address=raw["address"],
                status=Status(raw["status"]), summary=raw["summary"], fix=fix,
                rtt_ms=raw.get("rtt_ms"), mbit_s=raw.get("mbit_s"),
                largest_message=raw.get("largest_message"), error=raw.get("error"))


def preflight(client: CoordinatorClient, timeout_s: float = 60.0) -> Report:
    """The fast subset before ``potluck train``: every pair connects and passes 1 MiB messages.

    Returns the report when nothing failed; raises PreflightError naming the first failing
    pair (or node) and its fix for this OS. A host without doctor routes is not checked.
    """
    try:
        report = cluster_round(client, "preflight", timeout_s)
    except NotFoundError:
        return Report()
    failed_links = [lk for lk in report.links if lk.status is Status.FAIL]
    failed_checks = [c for c in report.checks if c.status is Status.FAIL]
    if not failed_links and not failed_checks:
        return report
    first: Link | Check = failed_links[0] if failed_links else failed_checks[0]
    where = first.summary if isinstance(first, Link) else f"{first.node}: {first.summary}"
    more = len(failed_links) + len(failed_checks) - 1
    fix = first.fix.for_os(this_os()) if first.fix else ""
    raise PreflightError(
        f"pre-flight check failed, job not submitted: {where}; fix: {fix}"
        + (f" ({more} more problem(s))" if more > 0 else "")
        + "; `potluck doctor --cluster` shows the full report"
    )


def attach_links(client: CoordinatorClient, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``links`` (target name -> latest measured facts) to each node of ``status --json``."""
    try:
        facts = client.doctor_links()
    except NotFoundError:
        facts = []
    for node in nodes:
        node["links"] = {
            f.target: f.model_dump(exclude={"source", "target"}) for f in facts if f.source == node["name"]
        }
    return nodes
