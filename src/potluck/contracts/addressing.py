"""Addresses in URLs and ``host:port`` strings: the one place that brackets IPv6. Pure."""

from __future__ import annotations


def url_host(address: str) -> str:
    """``address`` ready to put in a URL or before ``:port`` (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def host_port(address: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets: ``[fd00::1]:7077``."""
    return f"{url_host(address)}:{port}"


def http_url(address: str, port: int, path: str = "") -> str:
    """``http://host:port/path`` with an IPv6 host in brackets."""
    return f"http://{host_port(address, port)}{path}"
