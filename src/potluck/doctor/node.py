"""Run every check about this machine and collect them in a report."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from potluck.doctor import local, network
from potluck.doctor.report import Check, Report


def default_state_dir() -> Path:
    from potluck.coordinator.host import default_data_dir

    return default_data_dir()


@dataclass(kw_only=True)
class NodeOptions:
    """What to check on this machine."""

    name: str = field(default_factory=socket.gethostname)
    """Node name shown in the report."""
    host: str | None = None
    """Host address (without port): the data-plane address is the route toward it."""
    advertise: str | None = None
    """Address given with ``--advertise``, if any."""
    state_dir: Path = field(default_factory=default_state_dir)
    """potluck's state dir (database, token, host experiments)."""
    experiments_dir: Path = Path("experiments")
    """Where local runs (``potluck train`` without a host, ``potluck demo``) write."""
    min_open_files: int = local.MIN_OPEN_FILES
    """Soft open-files limit below which ``open_files`` warns."""
    hosts_file: Path | None = None
    """Hosts file to point at in the ``hostname`` fix (default: the OS's)."""


def check_node(options: NodeOptions, *, cuda: bool = True) -> Report:
    """All node-local checks (no network traffic). Never raises for a finding.

    ``cuda=False`` skips the GPU kernel (importing torch takes seconds; the agent's quick
    rounds leave it out).
    """
    name = options.name
    report = Report()
    report.add(local.check_versions(name))
    if cuda:
        report.add(local.check_cuda(name))
    address = report.add(
        network.check_address(name, host=options.host, advertise=options.advertise)
    )
    report.add(
        network.check_hostname(
            name,
            data_plane=_data_plane(address),
            hosts_file=options.hosts_file,
            pinned_interface=address.data.get("interface"),
        )
    )
    report.add(local.check_open_files(name, options.min_open_files))
    report.add(local.check_disk(name, "state", options.state_dir))
    report.add(local.check_disk(name, "experiments", options.experiments_dir))
    return report


def _data_plane(address_check: Check) -> str | None:
    value = address_check.data.get("address")
    return str(value) if value else None


def node_checks_for_agent(
    name: str, host: str, address: str, state_dir: Path, *, cuda: bool
) -> list[Check]:
    """The checks an agent reports in a doctor round (its runs go under ``state_dir``).

    ``address`` is what the agent registered; it is checked as an ``--advertise`` when it
    is not simply the route's source address.
    """
    from potluck.contracts.errors import NetworkConfigError
    from potluck.net.address import route_source

    try:
        routed = route_source(host)
    except NetworkConfigError:
        routed = None
    options = NodeOptions(
        name=name,
        host=host,
        advertise=None if routed == address else address,
        state_dir=state_dir,
        experiments_dir=state_dir / "runs",
    )
    return check_node(options, cuda=cuda).checks
