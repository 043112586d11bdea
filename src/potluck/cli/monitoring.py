"""Watching a cluster: ``potluck dashboard`` (the web dashboard's sign-in link), ``potluck
report`` (one job as a single HTML file) and ``potluck grafana-dashboard`` (the Grafana
dashboard for the host's ``/metrics``)."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import typer

from potluck.contracts.errors import ConfigError, HostUnreachableError

DASHBOARD = "dashboards/grafana.json"
"""The dashboard inside the package (docs/metrics.md, "Prometheus and Grafana")."""


def dashboard_json() -> str:
    return resources.files("potluck").joinpath(DASHBOARD).read_text()


def grafana_dashboard(
    path: Path | None = typer.Argument(None, help="Write the dashboard here (default: print it)."),
) -> None:
    """Print (or write to PATH) the Grafana dashboard for the host's Prometheus metrics."""
    text = dashboard_json()
    if path is None:
        sys.stdout.write(text)
        return
    try:
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror}): give a path in a directory "
                          "you can write") from exc
    print(f"wrote {path}: import it in Grafana (Dashboards > New > Import) and pick your "
          "Prometheus data source", file=sys.stderr)


def dashboard(
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_STATE_DIR",
                                          help="The host's state directory (default: ~/.local/share/potluck/host)."),
) -> None:
    """Print the web dashboard's sign-in link of the host running on this machine.

    The link holds the cluster token after `#`, which a browser never sends to a server: the
    page trades it for a read-only session cookie. Share it only with people who may use the
    cluster."""
    from potluck.cli.cluster import _host_state_dir, dashboard_link
    from potluck.coordinator.host import read_host_file

    sd = _host_state_dir(state_dir)
    info = read_host_file(sd)
    token_file = sd / "token"
    if info is None or not token_file.exists():
        raise HostUnreachableError(f"no running `potluck host` found in {sd}: start one (it prints the "
                                   "link), or pass --state-dir with the host's state directory")
    print(dashboard_link(str(info["url"]), token_file.read_text().strip()))
    if sys.stdout.isatty():
        print("(the link holds the cluster token: share it only with the cluster's members)",
              file=sys.stderr)


def report(
    job_id: int = typer.Argument(..., help="The job (`potluck jobs` lists them)."),
    path: Path | None = typer.Argument(None, help="HTML file to write (default: potluck-job-JOB.html)."),
    host: str | None = typer.Option(None, "--host", envvar="POTLUCK_HOST", help="Coordinator URL or HOST[:PORT] (default: the host running in --state-dir)."),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help="Join token printed by `potluck host` (prefer the POTLUCK_TOKEN variable: flags show up in `ps`)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_STATE_DIR", help="The host's state directory (default: ~/.local/share/potluck/host)."),
) -> None:
    """Write one job as a single HTML file (charts and data inline, opens offline) and its
    step data as CSV next to it."""
    from potluck.cli.cluster import _connect
    from potluck.dashboard.report import report_html

    html_path = path or Path(f"potluck-job-{job_id}.html")
    csv_path = html_path.with_name(html_path.stem + "-steps.csv")
    with _connect(host, token, state_dir) as client:
        detail = client.dashboard_job(job_id)
        steps = client.steps_csv(job_id)
    try:
        csv_path.write_text(steps)
        html_path.write_text(report_html(detail, csv_name=csv_path.name))
    except OSError as exc:
        raise ConfigError(f"cannot write {html_path} ({exc.strerror}): give a path in a directory "
                          "you can write") from exc
    print(f"wrote {html_path} and {csv_path}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add ``dashboard``, ``report`` and ``grafana-dashboard`` to the ``potluck`` CLI."""
    app.command("dashboard")(dashboard)
    app.command("report")(report)
    app.command("grafana-dashboard")(grafana_dashboard)
