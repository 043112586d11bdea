"""Network checks: this node's data-plane address, its hostname, its clock, and links to peers.

Address choice and classification come from :mod:`potluck.net.address` (the same code the
agent uses to pick what it advertises), so the doctor explains exactly the choice potluck
makes. Link results from :mod:`potluck.net.probe` are turned into findings here.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

from potluck.contracts.errors import NetworkConfigError
from potluck.doctor.report import Check, Fix, Link, Status, this_os
from potluck.net import address as addr
from potluck.net.probe import LinkProbe

CLOCK_WARN_S = 1.0
"""Clock offset above which metrics and logs from different nodes stop lining up."""
SLOW_LINK_MBIT = 100.0
"""Below this a data-parallel step is dominated by the gradient all-reduce."""
DEAD_LINK_MBIT = 1.0
HIGH_RTT_MS = 50.0

HOSTS_FILES = {
    "linux": Path("/etc/hosts"),
    "macos": Path("/etc/hosts"),
    "windows": Path(r"C:\Windows\System32\drivers\etc\hosts"),
}

VPN_DOWN_FIX = Fix(
    linux="sudo tailscale up (or start your VPN: wg-quick up wg0, zerotier-cli join ...); "
    "`tailscale status` must list this machine",
    macos="open the Tailscale app and click Connect (or `tailscale up`)",
    windows="click the Tailscale icon in the tray and Connect (or `tailscale up` in PowerShell)",
)


def check_address(
    node: str,
    *,
    host: str | None = None,
    advertise: str | None = None,
    interfaces: list[addr.Interface] | None = None,
) -> Check:
    """The data-plane address this node would use, its interface, why, and its kind.

    With ``host``: the source address of the route to the host (as ``potluck join`` picks it).
    Without: the address ``potluck host`` would advertise.
    """
    ifaces = addr.list_interfaces() if interfaces is None else interfaces
    if host:
        try:
            addr.resolve(host)
        except NetworkConfigError as exc:
            return Check(
                id="address",
                node=node,
                status=Status.FAIL,
                summary=str(exc),
                fix=Fix(all="pass the host's numeric address as printed by `potluck host` "
                        "(e.g. 100.64.1.2:7077), or fix DNS for that name"),
            )
    try:
        if host:
            choice = addr.agent_address(host, ifaces, override=advertise, allow_public=True)
        else:
            choice = addr.choose_advertise(
                ifaces,
                override=advertise,
                allow_public=True,
                default_interface=addr.default_route_interface(),
            )
    except NetworkConfigError as exc:
        vpn_host = host is not None and addr.is_vpn_address(host)
        return Check(
            id="address",
            node=node,
            status=Status.FAIL,
            summary=(f"the host {host} is a VPN address but " if vpn_host else "") + str(exc),
            fix=VPN_DOWN_FIX
            if vpn_host
            else Fix(
                linux="connect this machine to the host's LAN or VPN; `ip route get <host>` "
                "must show a route",
                macos="connect this machine to the host's LAN or VPN; `route get <host>` must "
                "show a route",
                windows="connect this machine to the host's LAN or VPN; `Find-NetRoute "
                "-RemoteIPAddress <host>` must show a route",
            ),
        )
    data = {
        "address": choice.address,
        "interface": choice.interface,
        "kind": choice.kind.value,
        "reason": choice.reason,
    }
    where = f"{choice.address} on {choice.interface or '?'} ({choice.kind.value}; {choice.reason})"

    def found(status: Status, summary: str, fix: Fix | None = None) -> Check:
        return Check(id="address", node=node, status=status, summary=summary, fix=fix, data=data)

    if choice.kind is addr.AddressKind.LOOPBACK and host and not _is_loopback(host):
        return found(
            Status.FAIL,
            f"data plane would use loopback {where}: other machines cannot reach it",
            Fix(all="join with the host's LAN or VPN address, not a name that resolves to this machine"),
        )
    if host and addr.is_vpn_address(host) and choice.kind is not addr.AddressKind.VPN:
        return found(
            Status.FAIL,
            f"the host {host} is a VPN address but this node would use {where}: is the VPN "
            "connected here?",
            VPN_DOWN_FIX,
        )
    if choice.kind is addr.AddressKind.PUBLIC:
        return found(
            Status.WARN,
            f"data plane uses public address {where}: {addr.PUBLIC_REFUSAL}",
            Fix(all="put all machines on a VPN (e.g. Tailscale: `tailscale up`) and join with the "
                "host's VPN address (100.x.y.z)"),
        )
    if choice.kind is addr.AddressKind.LINK_LOCAL:
        return found(
            Status.WARN,
            f"data plane uses link-local {where}: no DHCP lease, works only on one cable segment",
            Fix(all="connect to a network that hands out addresses (DHCP) or to a VPN"),
        )
    problem = _unbindable(choice.address)
    if problem:
        return found(
            Status.FAIL,
            f"cannot listen on {choice.address}: {problem}",
            Fix(all="pass --advertise with an address this machine has (see `ip addr` / "
                "`ifconfig` / `ipconfig`)"),
        )
    return found(Status.OK, f"data plane: {where}")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(addr.resolve(host)).is_loopback
    except (NetworkConfigError, ValueError):
        return False


def _unbindable(address: str) -> str | None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def hosts_lines(path: Path, hostname: str) -> list[tuple[int, str]]:
    """(line number, line) of ``path`` that map ``hostname`` (or its short name). Pure-ish."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    names = {hostname.lower(), hostname.split(".")[0].lower()}
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and names & {f.lower() for f in fields[1:]}:
            hits.append((number, line.strip()))
    return hits


def check_hostname(
    node: str,
    *,
    data_plane: str | None = None,
    hosts_file: Path | None = None,
    pinned_interface: str | None = None,
) -> Check:
    """Does this machine's hostname resolve to a loopback address?

    Gloo binds to whatever the hostname resolves to unless GLOO_SOCKET_IFNAME is set; a
    loopback answer makes peers dial 127.x and fail with "Gloo connectFullMesh failed".
    potluck's agent sets GLOO_SOCKET_IFNAME to the data-plane interface for its replicas
    (``pinned_interface``), so then potluck jobs work and the finding is a WARN (other tools
    such as torchrun or Ray on this machine still break). FAIL when the data plane is a real
    network address and no interface can be pinned; WARN when this node only has loopback.
    """
    hostname = socket.gethostname()
    hosts = hosts_file or HOSTS_FILES[this_os()]
    resolved: str | None
    error: OSError | None
    try:
        resolved, error = socket.gethostbyname(hostname), None
    except OSError as exc:
        resolved, error = None, exc
    data: dict[str, Any] = {"hostname": hostname, "resolves_to": resolved}
    ifname = os.environ.get("GLOO_SOCKET_IFNAME")
    if ifname:
        return Check(
            id="hostname",
            node=node,
            status=Status.OK,
            summary=f"GLOO_SOCKET_IFNAME={ifname} pins gloo to an interface (hostname {hostname} "
            f"resolves to {resolved})",
            data=data,
        )
    if resolved is not None and not ipaddress.ip_address(resolved).is_loopback:
        return Check(
            id="hostname",
            node=node,
            status=Status.OK,
            summary=f"hostname {hostname} resolves to {resolved}",
            data=data,
        )
    lines = hosts_lines(hosts, hostname)
    culprit = "; ".join(f"{hosts}:{n}: `{text}`" for n, text in lines)
    data["hosts_lines"] = [n for n, _ in lines]
    multi = data_plane is not None and not ipaddress.ip_address(data_plane).is_loopback
    what = (
        f"hostname {hostname} resolves to {resolved}"
        if resolved
        else f"hostname {hostname} does not resolve ({error})"
    )
    target = data_plane if multi else "<this machine's LAN or VPN address>"
    line = f" line {lines[0][0]}" if lines else ""
    iface = pinned_interface or (_interface_of(data_plane) if multi and data_plane else None)
    iface = iface or "<interface>"

    def edit(system: str, editor: str) -> str:
        path = hosts if hosts_file else HOSTS_FILES[system]
        return f"edit {path}{line} ({editor}) to map {hostname} to {target}"

    pinned = multi and bool(pinned_interface)
    consequence = (
        f"potluck pins its replicas to {pinned_interface} (GLOO_SOCKET_IFNAME), but torchrun, "
        'Ray or plain gloo here would advertise loopback and fail with "Gloo connectFullMesh '
        'failed"'
        if pinned
        else 'gloo would advertise loopback and peers fail with "Gloo connectFullMesh failed"'
    )
    return Check(
        id="hostname",
        node=node,
        status=Status.FAIL if multi and not pinned else Status.WARN,
        summary=f"{what}" + (f" ({culprit})" if culprit else "") + f": {consequence}",
        fix=Fix(
            linux=f"{edit('linux', 'sudo nano')}, or export GLOO_SOCKET_IFNAME={iface}",
            macos=f"{edit('macos', 'sudo nano')}, or export GLOO_SOCKET_IFNAME={iface}",
            windows=f"{edit('windows', 'Notepad as Administrator')}, or "
            f'$env:GLOO_SOCKET_IFNAME="{iface}"',
        ),
        data=data,
    )


def _interface_of(address: str) -> str | None:
    try:
        return addr.interface_for(address)
    except NetworkConfigError:
        return None


def check_clock(node: str, offset_s: float, *, against: str = "the host") -> Check:
    """Clock offset to ``against`` (its clock minus ours); WARN above CLOCK_WARN_S."""
    data = {"offset_s": round(offset_s, 4)}
    if abs(offset_s) <= CLOCK_WARN_S:
        return Check(
            id="clock",
            node=node,
            status=Status.OK,
            summary=f"clock within {abs(offset_s) * 1000:.0f} ms of {against}",
            data=data,
        )
    direction = "behind" if offset_s > 0 else "ahead of"
    return Check(
        id="clock",
        node=node,
        status=Status.WARN,
        summary=f"clock is {abs(offset_s):.1f} s {direction} {against}: metrics and logs of "
        "different nodes will not line up",
        fix=Fix(
            linux="sudo timedatectl set-ntp true (then `timedatectl` shows 'System clock "
            "synchronized: yes')",
            macos="sudo sntp -sS time.apple.com, and enable System Settings > General > Date & "
            "Time > Set time automatically",
            windows="w32tm /resync (as Administrator), and enable Settings > Time & language > "
            "Set time automatically",
        ),
        data=data,
    )


FIREWALL_FIX = Fix(
    linux="on {target} allow inbound TCP from {peer}: sudo ufw allow from {peer} (or: sudo "
    "iptables -I INPUT -s {peer} -j ACCEPT; firewalld: sudo firewall-cmd --zone=trusted "
    "--add-source={peer})",
    macos="on {target}: System Settings > Network > Firewall > Options: allow incoming "
    "connections for python (or turn the firewall off for the VPN/LAN)",
    windows="on {target}: New-NetFirewallRule -DisplayName potluck -Direction Inbound "
    "-RemoteAddress {peer} -Action Allow -Profile Private,Domain",
)

NO_ROUTE_FIX = Fix(
    linux="{source} has no route to {address}: put both machines on one LAN or VPN; "
    "`ip route get {ip}` on {source} shows where packets go",
    macos="{source} has no route to {address}: put both machines on one LAN or VPN; "
    "`route get {ip}` on {source} shows where packets go",
    windows="{source} has no route to {address}: put both machines on one LAN or VPN; "
    "`Find-NetRoute -RemoteIPAddress {ip}` on {source} shows where packets go",
)

MTU_FIX = Fix(
    linux="lower the MTU of the VPN interface on both machines: sudo ip link set dev "
    "<tailscale0|wg0> mtu 1280",
    macos="lower the MTU of the VPN interface on both machines: sudo ifconfig <utunN> mtu 1280",
    windows='lower the MTU of the VPN interface on both machines: netsh interface ipv4 set '
    'subinterface "Tailscale" mtu=1280 store=persistent',
)

SLOW_FIX = Fix(
    all="use a wired connection or a faster network between {source} and {target}; on a slow "
    "link leave that node out, or expect steps to wait on the gradient exchange",
)


def _format(fix: Fix, **values: str) -> Fix:
    return Fix(**{k: getattr(fix, k).format(**values) for k in ("all", "linux", "macos", "windows")})


def link_from_probe(
    source: str, target: str, probe: LinkProbe, source_address: str | None = None
) -> Link:
    """Classify one direction of one link from what :func:`probe_link` measured. Pure.

    ``source_address`` (the source node's data-plane address) goes into the firewall fix.
    """
    address = probe.target
    ip = address.rsplit(":", 1)[0].strip("[]")
    link = Link(source=source, target=target, address=address, status=Status.OK, summary="")
    peer = source_address or f"<{source}'s address>"
    values = {"source": source, "target": target, "address": address, "ip": ip, "peer": peer}
    c = probe.connect
    if not c.ok:
        link.status, link.error = Status.FAIL, c.error
        if c.error == "refused":
            link.summary = f"{source} -> {target} ({address}): connection refused; a firewall REJECT rule, or the probe listener is gone"
            link.fix = _format(FIREWALL_FIX, **values)
        elif c.error == "timeout":
            link.summary = f"{source} -> {target} ({address}): no answer within the timeout; packets are dropped (a firewall), or {target} is off the network"
            link.fix = _format(FIREWALL_FIX, **values)
        elif c.error == "unreachable":
            link.summary = f"{source} -> {target} ({address}): no route ({c.detail})"
            link.fix = _format(NO_ROUTE_FIX, **values)
        else:
            link.summary = f"{source} -> {target} ({address}): cannot connect ({c.detail})"
            link.fix = _format(FIREWALL_FIX, **values)
        return link
    if probe.latency is not None:
        link.rtt_ms = round(probe.latency.median_ms, 3)
    if probe.bandwidth is not None:
        link.mbit_s = round(probe.bandwidth.mbit_s, 1)
    messages = probe.messages
    if messages is not None and messages.passed:
        link.largest_message = messages.passed[-1]
    if messages is not None and messages.stalled_at is not None:
        link.status, link.error = Status.FAIL, "stall"
        link.summary = (
            f"{source} -> {target}: TCP connects and small messages pass, but a "
            f"{_size(messages.stalled_at)} message stalled after {_size(messages.stalled_after)}: "
            "full-size packets are dropped on the way (an MTU black hole, typical of VPN links)"
        )
        link.fix = MTU_FIX
        return link
    if probe.error:
        link.status, link.error = Status.FAIL, "error"
        link.summary = f"{source} -> {target}: connection broke during the probe ({probe.error})"
        link.fix = _format(FIREWALL_FIX, **values)
        return link
    facts = []
    if link.rtt_ms is not None:
        facts.append(f"{link.rtt_ms:.2f} ms")
    if link.mbit_s is not None:
        facts.append(f"{link.mbit_s:,.0f} Mbit/s")
    if link.largest_message:
        facts.append(f"{_size(link.largest_message)} messages pass")
    measured = ", ".join(facts)
    if link.mbit_s is not None and link.mbit_s < SLOW_LINK_MBIT:
        link.status = Status.FAIL if link.mbit_s < DEAD_LINK_MBIT else Status.WARN
        link.summary = (
            f"{source} -> {target}: slow link ({measured}), below {SLOW_LINK_MBIT:.0f} Mbit/s: "
            "steps will wait on the gradient exchange"
        )
        link.fix = _format(SLOW_FIX, source=source, target=target)
        return link
    if link.rtt_ms is not None and link.rtt_ms > HIGH_RTT_MS:
        link.status = Status.WARN
        link.summary = f"{source} -> {target}: high latency ({measured}): every step pays it several times"
        link.fix = _format(SLOW_FIX, source=source, target=target)
        return link
    link.summary = f"{source} -> {target}: {measured}"
    return link


def _size(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:g} MiB"
    if n >= 2**10:
        return f"{n / 2**10:g} KiB"
    return f"{n} B"
