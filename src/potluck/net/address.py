"""Which address a machine should use to talk to the cluster, and what kind of address it is.

Small functions, pure where possible, so ``potluck doctor`` can reuse them:

- :func:`classify` says whether an address is loopback, private LAN, VPN, link-local or public.
- :func:`parse_ip_addr` turns ``ip -o addr`` output into :class:`Interface` records;
  :func:`list_interfaces` runs it (falling back to ``socket``/``fcntl`` without iproute2).
- :func:`route_source` asks the kernel which local address it would use to reach a host (a UDP
  ``connect()``: a route lookup, no packet is sent).
- :func:`interface_for` maps an address to the interface carrying it.
- :func:`choose_advertise` is the host's choice: ``--advertise`` if given, else a VPN address,
  else the primary private LAN address; public addresses only with ``allow_public``.
- :func:`agent_address` is a joining node's choice: the source address of the route to the host.

All errors are :class:`~potluck.contracts.errors.NetworkConfigError` with a what/why/fix message.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass

from potluck.contracts.errors import AddressSyntaxError, NetworkConfigError

VPN_NETWORKS = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd7a:115c:a1e0::/48"))
"""Tailscale's CGNAT range (and its IPv6 ULA prefix): addresses here are treated as VPN."""

VPN_INTERFACE_PATTERN = re.compile(r"^(tailscale\d*|zt\w*|wg\w*|utun\d*|tun\d*)$")
"""Interface names of Tailscale, ZeroTier, WireGuard and generic tunnels."""

PRIVATE_NETWORKS = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("fc00::/7"),
)
"""RFC 1918 and IPv6 unique-local ranges: a home or office LAN."""

PUBLIC_REFUSAL = (
    "gloo and torchft traffic is neither encrypted nor authenticated, so anyone who can reach "
    "it can join or disrupt training"
)


class AddressKind(str, enum.Enum):
    """What an address is, from the point of view of exposing the cluster's data plane."""

    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    PRIVATE = "private"
    VPN = "vpn"
    PUBLIC = "public"


@dataclass(frozen=True, kw_only=True)
class Interface:
    """One address on one network interface."""

    name: str
    """Interface name, e.g. ``eth0``, ``tailscale0``, ``lo``."""
    address: str
    """The address, without prefix length."""
    prefixlen: int
    """Network prefix length (``24`` for a /24)."""

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(f"{self.address}/{self.prefixlen}", strict=False)

    @property
    def kind(self) -> AddressKind:
        return classify(self.address, self.name)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError as exc:
        raise AddressSyntaxError(
            f"{address!r} is not an IP address: pass a numeric IPv4/IPv6 address such as 192.168.1.20"
        ) from exc


def classify(address: str, interface: str | None = None) -> AddressKind:
    """Classify ``address`` (optionally knowing the interface it sits on). Pure.

    VPN wins over private: a WireGuard interface with a 10.x address is a VPN address.
    Raises NetworkConfigError if ``address`` is not an IP address.
    """
    ip = _ip(address)
    if ip.is_loopback:
        return AddressKind.LOOPBACK
    if ip.is_link_local:
        return AddressKind.LINK_LOCAL
    if any(ip in net for net in VPN_NETWORKS if net.version == ip.version):
        return AddressKind.VPN
    if interface and VPN_INTERFACE_PATTERN.match(interface):
        return AddressKind.VPN
    if any(ip in net for net in PRIVATE_NETWORKS if net.version == ip.version):
        return AddressKind.PRIVATE
    return AddressKind.PUBLIC


_IP_ADDR_LINE = re.compile(r"^\d+:\s+(?P<name>[^\s:@]+)(?:@\S+)?\s+inet6?\s+(?P<cidr>\S+)")


def parse_ip_addr(text: str) -> list[Interface]:
    """Parse the output of ``ip -o addr`` (one address per line). Pure; skips lines it cannot read."""
    result: list[Interface] = []
    for line in text.splitlines():
        match = _IP_ADDR_LINE.match(line.strip())
        if not match:
            continue
        address, _, prefix = match["cidr"].partition("/")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            continue
        default_prefix = 32 if ":" not in address else 128
        result.append(
            Interface(name=match["name"], address=address, prefixlen=int(prefix or default_prefix))
        )
    return result


def list_interfaces() -> list[Interface]:
    """Addresses of this machine (this network namespace), in kernel order.

    Uses ``ip -o addr``; without iproute2 falls back to IPv4 addresses read with ioctl.
    """
    ip_cmd = shutil.which("ip")
    if ip_cmd:
        try:
            out = subprocess.run(
                [ip_cmd, "-o", "addr", "show"], capture_output=True, text=True, timeout=5, check=True
            ).stdout
            return parse_ip_addr(out)
        except (OSError, subprocess.SubprocessError):
            pass
    return _interfaces_via_ioctl()


def _interfaces_via_ioctl() -> list[Interface]:
    import fcntl
    import struct

    result = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            packed = struct.pack("256s", name.encode()[:15])
            try:
                addr = fcntl.ioctl(sock.fileno(), 0x8915, packed)  # SIOCGIFADDR
                mask = fcntl.ioctl(sock.fileno(), 0x891B, packed)  # SIOCGIFNETMASK
            except OSError:
                continue
            address = socket.inet_ntoa(addr[20:24])
            prefix = bin(int.from_bytes(mask[20:24], "big")).count("1")
            result.append(Interface(name=name, address=address, prefixlen=prefix))
    return result


def resolve(host: str) -> str:
    """Resolve a host name to one IP address (IPv4 preferred). Raises NetworkConfigError."""
    try:
        return str(_ip(host))
    except NetworkConfigError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NetworkConfigError(
            f"cannot resolve host name {host!r} ({exc.strerror}): check the spelling, or use the "
            "address printed by `potluck host`"
        ) from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


def route_source(host: str, port: int = 9) -> str:
    """The local address the kernel would use as source to reach ``host``.

    A UDP ``connect()`` only looks up the route; no packet leaves the machine. Raises
    NetworkConfigError if there is no route (unplugged cable, VPN down).
    """
    target = resolve(host)
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((target, port))
        except OSError as exc:
            raise NetworkConfigError(
                f"no network route to {host} ({exc.strerror}): is this machine on the same LAN or "
                "VPN as the host? (`ip route get` shows the route)"
            ) from exc
        return str(sock.getsockname()[0])


def interface_for(address: str, interfaces: list[Interface] | None = None) -> str | None:
    """Name of the interface that carries ``address`` (exact match first, then same network).

    Loopback addresses map to the loopback interface even when only 127.0.0.1/8 is configured.
    Returns None if no interface carries it.
    """
    ip = _ip(address)
    interfaces = list_interfaces() if interfaces is None else interfaces
    for iface in interfaces:
        if _ip(iface.address) == ip:
            return iface.name
    if ip.is_loopback:
        for iface in interfaces:
            if iface.address.startswith("127.") and ip.version == 4:
                return iface.name
            if iface.address == "::1" and ip.version == 6:
                return iface.name
    return None


def is_local(address: str, interfaces: list[Interface]) -> bool:
    """Whether ``address`` belongs to this machine (is on one of ``interfaces``). Pure."""
    ip = _ip(address)
    if ip.is_loopback:
        return True
    return any(_ip(iface.address) == ip for iface in interfaces)


def default_route_interface() -> str | None:
    """Interface of the IPv4 default route (``ip route show default``), or None."""
    ip_cmd = shutil.which("ip")
    if not ip_cmd:
        return None
    try:
        out = subprocess.run(
            [ip_cmd, "route", "show", "default"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bdev\s+(\S+)", out)
    return match[1] if match else None


@dataclass(frozen=True, kw_only=True)
class AddressChoice:
    """An address to advertise, the interface it is on, and why it was chosen."""

    address: str
    interface: str | None
    kind: AddressKind
    reason: str


def check_allowed(address: str, kind: AddressKind, *, allow_public: bool, flag: str) -> None:
    """Refuse a public address unless ``allow_public``. Raises NetworkConfigError."""
    if kind is AddressKind.PUBLIC and not allow_public:
        raise NetworkConfigError(
            f"refusing to use public address {address}: {PUBLIC_REFUSAL}; use a VPN such as "
            f"Tailscale, pass {flag} with a private address, or --allow-public if you accept the risk"
        )


def choose_advertise(
    interfaces: list[Interface],
    *,
    override: str | None = None,
    allow_public: bool = False,
    default_interface: str | None = None,
) -> AddressChoice:
    """The host's address to advertise. Pure given its inputs.

    Order: ``override`` (must be on this machine) > VPN > private LAN (the default route's
    interface first) > public (only with ``allow_public``). Raises NetworkConfigError.
    """
    if override:
        address = str(_ip(override))
        if not is_local(address, interfaces):
            raise NetworkConfigError(
                f"--advertise {override}: no interface of this machine has that address; pick one "
                "from `ip addr` (or your VPN's address)"
            )
        kind = classify(address, interface_for(address, interfaces))
        check_allowed(address, kind, allow_public=allow_public, flag="--advertise")
        return AddressChoice(
            address=address,
            interface=interface_for(address, interfaces),
            kind=kind,
            reason="given with --advertise",
        )
    by_kind: dict[AddressKind, list[Interface]] = {}
    for iface in interfaces:
        by_kind.setdefault(iface.kind, []).append(iface)
    for kind in (AddressKind.VPN, AddressKind.PRIVATE):
        candidates = sorted(
            by_kind.get(kind, []),
            key=lambda i: (i.name != default_interface, ":" in i.address),
        )
        if candidates:
            best = candidates[0]
            reason = "VPN address" if kind is AddressKind.VPN else "private LAN address"
            if kind is AddressKind.PRIVATE and ":" in best.address:
                reason = "private IPv6 (unique-local) address"
            reason += f" on {best.name}"
            skipped = [i for i in by_kind.get(AddressKind.PUBLIC, []) if i.address != best.address]
            if skipped:
                names = ", ".join(f"{i.address} ({i.name})" for i in skipped)
                reason += (f"; not the public {names}: pass --allow-public --advertise ADDRESS "
                           "to use a public address")
            return AddressChoice(address=best.address, interface=best.name, kind=kind, reason=reason)
    public = by_kind.get(AddressKind.PUBLIC, [])
    if public and allow_public:
        best = sorted(public, key=lambda i: (i.name != default_interface, ":" in i.address))[0]
        return AddressChoice(
            address=best.address,
            interface=best.name,
            kind=AddressKind.PUBLIC,
            reason=f"public address on {best.name} (--allow-public)",
        )
    if public:
        names = ", ".join(f"{i.address} ({i.name})" for i in public)
        raise NetworkConfigError(
            f"this machine has only public addresses ({names}) and {PUBLIC_REFUSAL}; join a VPN "
            "such as Tailscale, or pass --allow-public if you accept the risk"
        )
    raise NetworkConfigError(
        "no VPN or LAN address found on this machine: connect to a network, or pass "
        "--advertise 127.0.0.1 to run a single-machine cluster"
    )


def is_vpn_address(host: str) -> bool:
    """``host`` (a name or an address) is in a VPN range such as Tailscale's 100.64.0.0/10."""
    try:
        ip = ipaddress.ip_address(resolve(host))
    except (NetworkConfigError, ValueError):
        return False
    return any(ip in net for net in VPN_NETWORKS if net.version == ip.version)


def vpn_down_hint(host: str, choice: AddressChoice | None) -> str | None:
    """What to say when ``host`` cannot be reached and it is a VPN address that this machine
    would not reach over a VPN (``choice`` is the address it would use, None: no route at all):
    the VPN is down here, whatever a firewall does. None when that is not the case."""
    if not is_vpn_address(host) or (choice is not None and choice.kind is AddressKind.VPN):
        return None
    route = ("this machine has no route to it" if choice is None else
             f"the route to it from here goes via {choice.interface or '?'} ({choice.address}), "
             "not a VPN")
    return (f"{host} is a VPN address but {route}: is the VPN up on this machine? "
            "(`sudo tailscale up`, `wg-quick up wg0`; `potluck doctor --host HOST` checks it)")


def agent_address(
    host: str,
    interfaces: list[Interface],
    *,
    override: str | None = None,
    allow_public: bool = False,
    source: str | None = None,
) -> AddressChoice:
    """A joining node's address: the source of the route to ``host`` (or ``override``).

    ``source`` is the result of :func:`route_source` (passed in so this stays pure).
    Raises NetworkConfigError for a public address without ``allow_public``.
    """
    if override:
        return choose_advertise(interfaces, override=override, allow_public=allow_public)
    if source is None:
        source = route_source(host)
    iface = interface_for(source, interfaces)
    kind = classify(source, iface)
    check_allowed(source, kind, allow_public=allow_public, flag="--advertise")
    return AddressChoice(
        address=source, interface=iface, kind=kind, reason=f"route to {host} goes via {iface or '?'}"
    )


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Split ``HOST[:PORT]`` (``[v6]:port`` for IPv6; a scheme prefix is ignored). Pure.

    Raises NetworkConfigError for a bad port.
    """
    text = re.sub(r"^[a-z]+://", "", text.strip()).rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise AddressSyntaxError(f"{text!r} has no host: use HOST[:PORT], e.g. 100.64.1.2:7077")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AddressSyntaxError(
            f"bad port {port_text!r} in {text!r}: use HOST[:PORT] with a port in 1-65535"
        )
    return host, int(port_text)


__all__ = [
    "AddressChoice",
    "AddressKind",
    "Interface",
    "agent_address",
    "check_allowed",
    "choose_advertise",
    "classify",
    "default_route_interface",
    "interface_for",
    "is_local",
    "list_interfaces",
    "parse_ip_addr",
    "resolve",
    "route_source",
    "split_host_port",
]
