"""One job as a single HTML file (``potluck report JOB``): opens anywhere, offline.

The file holds everything it needs: the dashboard's stylesheet and chart scripts inline, and
the job's :class:`~potluck.contracts.dashboard.JobDetail` as JSON in a
``<script type="application/json">`` element; it loads nothing (its own CSP says so). The
step data behind the charts goes next to it as CSV.
"""

from __future__ import annotations

import html
import json
import time
from importlib import resources

from potluck.contracts.dashboard import JobDetail

SCRIPTS = ("charts.js", "views.js", "report.js")
REPORT_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
"""Inline scripts and styles only (it is one file), and no request to anywhere."""


def _static(name: str) -> str:
    return resources.files("potluck.dashboard").joinpath("static").joinpath(name).read_text()


def report_html(detail: JobDetail, *, csv_name: str | None = None) -> str:
    """The report page of ``detail`` (``csv_name``: the CSV file written next to it)."""
    # `<` escaped (valid JSON) so no text in the data can close the script element.
    data = ('{"job": ' + detail.model_dump_json() + ', "meta": '
            + json.dumps({"generated": time.time(), "csv": csv_name}) + "}").replace("<", "\\u003c")
    scripts = "\n".join(f"<script>\n{_static(name)}\n</script>" for name in SCRIPTS)
    title = html.escape(f"potluck job {detail.id}: {detail.name}")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}">
<title>{title}</title>
<style>
{_static("app.css")}
</style>
</head>
<body>
<header class="top"><div class="brand"><span>potluck</span></div>
<div id="headline" class="headline">{title}</div></header>
<main>
<p id="report-meta" class="muted small"></p>
<section id="report-job"></section>
<h2 class="section-title">Stragglers</h2>
<section id="report-stragglers"></section>
</main>
<script type="application/json" id="potluck-data">{data}</script>
{scripts}
</body>
</html>
"""
