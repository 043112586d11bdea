"""Report model, classification and rendering: pure logic, no processes (tier 1)."""

from __future__ import annotations

import io
import json

from rich.console import Console

from potluck.doctor.network import check_clock, link_from_probe
from potluck.doctor.render import render, to_json
from potluck.doctor.report import Check, Fix, Report, Status
from potluck.net.probe import (
    BandwidthResult,
    ConnectResult,
    LargeMessageResult,
    LatencyResult,
    LinkProbe,
)


def _probe(**kw) -> LinkProbe:
    base = dict(target="10.0.0.2:5000", connect=ConnectResult(ok=True),
                latency=LatencyResult(rtt_ms=[0.2, 0.3, 0.25], clock_offset_s=0.0),
                bandwidth=BandwidthResult(bytes=100_000_000, seconds=0.1),
                messages=LargeMessageResult(passed=[65536, 8388608]))
    base.update(kw)
    return LinkProbe(**base)


def test_exit_code_is_1_only_when_something_failed() -> None:
    report = Report()
    report.add(Check(id="a", node="n", status=Status.OK, summary="fine"))
    report.add(Check(id="b", node="n", status=Status.WARN, summary="meh", fix=Fix(all="x")))
    assert report.exit_code == 0 and report.to_dict()["ok"] is True
    report.add(Check(id="c", node="n", status=Status.FAIL, summary="bad", fix=Fix(all="y")))
    assert report.exit_code == 1
    data = json.loads(to_json(report))
    assert data["counts"] == {"ok": 1, "warn": 1, "fail": 1} and data["exit_code"] == 1
    assert [p.id for p in report.problems()] == ["c", "b"]  # type: ignore[union-attr]


def test_fix_falls_back_to_all() -> None:
    fix = Fix(all="common", windows="win")
    assert fix.per_os() == {"linux": "common", "macos": "common", "windows": "win"}


def test_link_classification() -> None:
    ok = link_from_probe("a", "b", _probe())
    assert ok.status is Status.OK and ok.mbit_s == 8000.0 and ok.rtt_ms == 0.25
    slow = link_from_probe("a", "b", _probe(bandwidth=BandwidthResult(bytes=1_000_000, seconds=1.0)))
    assert slow.status is Status.WARN and "slow link" in slow.summary
    dead = link_from_probe("a", "b", _probe(bandwidth=BandwidthResult(bytes=10_000, seconds=1.0)))
    assert dead.status is Status.FAIL
    far = link_from_probe("a", "b", _probe(latency=LatencyResult(rtt_ms=[120.0], clock_offset_s=0)))
    assert far.status is Status.WARN and "latency" in far.summary
    stall = link_from_probe("a", "b", _probe(messages=LargeMessageResult(
        passed=[], stalled_at=65536, stalled_after=0), bandwidth=None))
    assert stall.status is Status.FAIL and stall.error == "stall"
    for error in ("refused", "timeout", "unreachable", "error"):
        link = link_from_probe("a", "b", LinkProbe(
            target="10.0.0.2:5000", connect=ConnectResult(ok=False, error=error, detail="x")),
            source_address="10.0.0.1")
        assert link.status is Status.FAIL and link.error == error and link.fix is not None
        if error == "unreachable":
            assert "ip route get 10.0.0.2" in link.fix.linux
        else:
            assert "ufw allow from 10.0.0.1" in link.fix.linux
            assert "-RemoteAddress 10.0.0.1" in link.fix.windows


def test_clock_offset_warns_above_one_second() -> None:
    assert check_clock("n", 0.2).status is Status.OK
    behind = check_clock("n", 5.0)
    assert behind.status is Status.WARN and "behind" in behind.summary
    assert "timedatectl" in behind.fix.linux and "w32tm" in behind.fix.windows  # type: ignore[union-attr]


def test_render_groups_by_node_with_symbols_fixes_and_matrix() -> None:
    report = Report()
    report.add(Check(id="versions", node="alpha", status=Status.OK, summary="same"))
    report.add(Check(id="open_files", node="beta", status=Status.WARN, summary="low",
                     fix=Fix(linux="ulimit -n 65536", macos="launchctl", windows="nothing")))
    report.links.append(link_from_probe("alpha", "beta", _probe()))
    report.links.append(link_from_probe("beta", "alpha", LinkProbe(
        target="10.0.0.1:5000", connect=ConnectResult(ok=False, error="timeout"))))
    buf = io.StringIO()
    render(report, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert text.index("alpha") < text.index("✓ versions") < text.index("beta")
    assert "⚠ open_files" in text and "fix (Linux): ulimit -n 65536" in text
    assert "fix (Windows): nothing" in text
    assert "✗ link -> alpha" in text and "✗ timeout" in text  # per node and in the matrix
    assert "problems found: 2 ok, 1 warnings, 1 failed" in text
