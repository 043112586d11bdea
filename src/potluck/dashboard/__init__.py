"""The web dashboard: a live, read-only page served by ``potluck host`` (docs/dashboard.md).

A surface, like the CLI: ``routes.py`` plugs into the host's API through its ``routers``
extension (the coordinator does not import this package); ``snapshot.py`` and
``recorder.py`` turn the coordinator's state into the messages of
:mod:`potluck.contracts.dashboard`; ``report.py`` writes one job as a single HTML file
(``potluck report``); ``static/`` holds the page (HTML, CSS, plain JavaScript drawing inline
SVG charts; nothing is loaded from elsewhere). Not to be confused with ``potluck/dashboards/``,
the Grafana dashboard for ``/metrics``.
"""

