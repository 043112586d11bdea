"""``potluck grafana-dashboard``: the Grafana dashboard for the host's ``/metrics``."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import typer

from potluck.contracts.errors import ConfigError

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


def register(app: typer.Typer) -> None:
    """Add ``grafana-dashboard`` to the ``potluck`` CLI."""
    app.command("grafana-dashboard")(grafana_dashboard)
