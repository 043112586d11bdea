"""Draw a :class:`~potluck.doctor.report.Report` for people (Rich) or machines (JSON)."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from potluck.doctor.report import Check, Fix, Link, Report, Status

SYMBOL = {Status.OK: "[green]✓[/]", Status.WARN: "[yellow]⚠[/]", Status.FAIL: "[bold red]✗[/]"}
OS_NAMES = {"linux": "Linux", "macos": "macOS", "windows": "Windows"}


def fix_lines(fix: Fix) -> list[str]:
    """``fix: ...`` once when all systems share it, else one line per system."""
    per_os = fix.per_os()
    if len(set(per_os.values())) == 1:
        return [f"fix: {per_os['linux']}"]
    return [f"fix ({OS_NAMES[name]}): {text}" for name, text in per_os.items()]


def _print_item(console: Console, status: Status, label: str, summary: str, fix: Fix | None) -> None:
    console.print(f"  {SYMBOL[status]} [bold]{escape(label)}[/]  {escape(summary)}")
    if fix is not None and status is not Status.OK:
        for line in fix_lines(fix):
            console.print(f"      [dim]{escape(line)}[/]")


def _matrix(report: Report) -> Table:
    names = [n for n in report.nodes if any(lk.source == n or lk.target == n for lk in report.links)]
    table = Table(title="links (row connects to column)", show_lines=True)
    table.add_column("from \\ to")
    for name in names:
        table.add_column(escape(name))
    for source in names:
        cells = []
        for target in names:
            link = report.link(source, target)
            cells.append("—" if link is None else _cell(link))
        table.add_row(escape(source), *cells)
    return table


def _cell(link: Link) -> str:
    if link.error:
        return f"{SYMBOL[link.status]} {escape(link.error)}"
    parts = [SYMBOL[link.status]]
    if link.rtt_ms is not None:
        parts.append(f"{link.rtt_ms:.2f} ms")
    if link.mbit_s is not None:
        parts.append(f"\n{link.mbit_s:,.0f} Mbit/s")
    return " ".join(parts)


def render(report: Report, console: Console) -> None:
    """Print the report: checks grouped by node, then the link matrix, then the totals."""
    by_node: dict[str, list[Check]] = {}
    for check in report.checks:
        by_node.setdefault(check.node, []).append(check)
    for node in report.nodes:
        checks = by_node.get(node, [])
        links = [lk for lk in report.links if lk.source == node and lk.status is not Status.OK]
        if not checks and not links:
            continue
        console.print(f"[bold]{escape(node)}[/]")
        for check in checks:
            _print_item(console, check.status, check.id, check.summary, check.fix)
        for link in links:
            _print_item(console, link.status, f"link -> {link.target}", link.summary, link.fix)
        console.print()
    if report.links:
        console.print(_matrix(report))
    statuses = report.statuses()
    counts = ", ".join(
        f"{statuses.count(s)} {word}"
        for s, word in ((Status.OK, "ok"), (Status.WARN, "warnings"), (Status.FAIL, "failed"))
    )
    verdict = "[bold red]problems found[/]" if report.failed else "[green]ready[/]"
    console.print(f"{verdict}: {counts}")


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)
