"""``GET /metrics`` (Prometheus text format 0.0.4), node telemetry in heartbeats, the Grafana
dashboard: a real coordinator on loopback (port 0), real HTTP clients, a strict parser."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_helpers import serve_coordinator

from potluck.agent import telemetry as agent_telemetry
from potluck.agent.telemetry import TelemetrySampler, parse_smi_gpus, valid
from potluck.cli.monitoring import dashboard_json
from potluck.contracts import wire as s
from potluck.contracts.client import CoordinatorClient
from potluck.contracts.errors import ForbiddenError
from potluck.contracts.events import StepEvent
from potluck.contracts.versions import local_versions
from potluck.coordinator.auth import load_or_create_metrics_token, load_or_create_token
from potluck.coordinator.prometheus import (
    CONTENT_TYPE,
    FAMILIES,
    Family,
    JobView,
    NodeView,
    cluster_families,
    escape_label_value,
    render,
)
from potluck.coordinator.store import Store
from potluck.coordinator.telemetry import Telemetry

TOKEN = "t0ken-for-tests-0123456789abcdef"
SCRAPE = "scrape-token-for-tests-0123456789"
LABELS = {"node", "job_id", "gpu", "state"}
GIB = 2**30

# -- a strict parser of the text format ---------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = LABEL.match(text, pos)
        assert match, f"bad label set at {text[pos:]!r}"
        name, raw = match.groups()
        assert name in LABELS, f"label {name!r} is not one of {sorted(LABELS)}"
        assert name not in labels, f"label {name!r} twice"
        labels[name] = re.sub(r'\\[\\"n]', lambda m: UNESCAPE[m.group()], raw)
        pos = match.end()
        if pos < len(text):
            assert text[pos] == ",", f"expected ',' at {text[pos:]!r}"
            pos += 1
    return labels


def parse_exposition(text: str) -> tuple[Series, dict[str, str]]:
    """Every sample and every family's type; fails on anything the format (or potluck's
    conventions) does not allow."""
    assert text.endswith("\n")
    types_: dict[str, str] = {}
    helps: set[str] = set()
    series: Series = {}
    current = None
    for line in text.splitlines():
        assert line, "empty line"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(NAME, name) and help_text and name not in helps, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name in helps, f"# TYPE before # HELP: {line}"
            assert name not in types_, f"{name} declared twice"
            assert kind in ("counter", "gauge"), line
            assert name.startswith("potluck_"), line
            assert (kind == "counter") == name.endswith("_total"), f"counter naming: {line}"
            types_[name] = kind
            current = name
        else:
            assert not line.startswith("#"), f"stray comment {line!r}"
            match = SAMPLE.match(line)
            assert match, f"bad sample line {line!r}"
            name, labels, value = match.groups()
            assert name == current, f"{name} is not the declared family here ({current})"
            number = float(value)
            assert not math.isnan(number), line
            key = (name, frozenset(parse_labels(labels or "").items()))
            assert key not in series, f"duplicate series {line}"
            series[key] = number
    assert helps == set(types_)
    return series, types_


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


# -- a coordinator with nodes that report telemetry ---------------------------------------------

GPU = s.GpuTelemetry(index=0, utilization_percent=45.0, memory_used_bytes=3 * GIB,
                     memory_total_bytes=8 * GIB, temperature_c=61.0, power_w=140.5)
BUSY = s.NodeTelemetry(cpu_percent=37.5, memory_used_bytes=5 * GIB, memory_total_bytes=16 * GIB,
                       gpus=[GPU, s.GpuTelemetry(index=1, utilization_percent=None, power_w=None,
                                                 memory_used_bytes=GIB, memory_total_bytes=8 * GIB,
                                                 temperature_c=40.0)])
CPU_ONLY = s.NodeTelemetry(cpu_percent=None, memory_used_bytes=GIB, memory_total_bytes=2 * GIB)


def register(url: str, name: str) -> tuple[CoordinatorClient, s.RegisterResponse]:
    client = CoordinatorClient(url, TOKEN)
    reg = client.register(s.RegisterRequest(
        name=name, node_key=f"{name}-key-0123456789abcdef", address="127.0.0.3",
        hardware=s.Hardware(cpu_cores=2, memory_mb=1024), versions=local_versions()))
    return client, reg


@pytest.fixture
def api(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with serve_coordinator(tmp_path, TOKEN, metrics_token=SCRAPE) as (url, store):
        nodes = {name: register(url, name) for name in ("a", "b")}
        for (client, reg), telemetry in zip(nodes.values(), (BUSY, CPU_ONLY)):
            client.heartbeat(reg.node_id, s.HeartbeatRequest(telemetry=telemetry))
        yield {"url": url, "store": store, "nodes": nodes}
        for client, _ in nodes.values():
            client.close()


def scrape(url: str, token: str | None = SCRAPE) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{url}/metrics", headers=headers, follow_redirects=False, trust_env=False)


def test_metrics_answer_200_in_the_text_format_with_either_token(api: dict[str, Any]) -> None:
    for token in (SCRAPE, TOKEN):
        resp = scrape(api["url"], token)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == CONTENT_TYPE
    series, types_ = parse_exposition(resp.text)
    assert set(types_) == set(FAMILIES)  # every family declared, even one without samples
    assert value(series, "potluck_nodes", state="alive") == 2
    assert value(series, "potluck_nodes", state="lost") == 0
    assert value(series, "potluck_node_up", node="a") == 1
    assert 0 <= value(series, "potluck_node_heartbeat_age_seconds", node="b") < 30
    assert value(series, "potluck_node_cpu_utilization_ratio", node="a") == 0.375
    assert value(series, "potluck_node_memory_used_bytes", node="a") == 5 * GIB
    assert value(series, "potluck_node_memory_total_bytes", node="b") == 2 * GIB
    gpu0 = {"node": "a", "gpu": "0"}
    assert value(series, "potluck_gpu_utilization_ratio", **gpu0) == 0.45
    assert value(series, "potluck_gpu_memory_used_bytes", **gpu0) == 3 * GIB
    assert value(series, "potluck_gpu_temperature_celsius", **gpu0) == 61.0
    assert value(series, "potluck_gpu_power_watts", **gpu0) == 140.5
    # Unknown is left out, never NaN: b's CPU, GPU 1's utilisation and power.
    assert value(series, "potluck_node_cpu_utilization_ratio", node="b") is None
    assert value(series, "potluck_gpu_utilization_ratio", node="a", gpu="1") is None
    assert value(series, "potluck_gpu_power_watts", node="a", gpu="1") is None
    assert value(series, "potluck_gpu_temperature_celsius", node="a", gpu="1") == 40.0
    promtool = shutil.which("promtool")
    if promtool:  # not installed here; the parser above is the check then
        out = subprocess.run([promtool, "check", "metrics"], input=resp.text, text=True,
                             capture_output=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr


def test_the_node_listing_carries_the_latest_telemetry(api: dict[str, Any]) -> None:
    listed = {n.name: n for n in CoordinatorClient(api["url"], TOKEN).nodes()}
    assert listed["a"].telemetry == BUSY and listed["b"].telemetry == CPU_ONLY
    client, reg = api["nodes"]["b"]
    client.heartbeat(reg.node_id, s.HeartbeatRequest())  # an agent that did not sample: kept
    assert {n.name: n for n in client.nodes()}["b"].telemetry == CPU_ONLY


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-wrong-token"},
                                     {"Authorization": f"Basic {SCRAPE}"}])
def test_metrics_without_a_right_token_get_401(api: dict[str, Any], headers: dict[str, str]) -> None:
    resp = httpx.get(f"{api['url']}/metrics", headers=headers, follow_redirects=False)
    assert resp.status_code == 401
    assert "metrics-token" in resp.json()["detail"] and SCRAPE not in resp.text


def test_the_metrics_token_reads_metrics_only(api: dict[str, Any]) -> None:
    scraper = CoordinatorClient(api["url"], SCRAPE)
    with pytest.raises(ForbiddenError, match="can only read /metrics"):
        scraper.nodes()
    client, reg = api["nodes"]["a"]
    scraper.node_credential = client.node_credential  # even with a node's credential
    with pytest.raises(ForbiddenError):
        scraper.leave(reg.node_id)
    with pytest.raises(ForbiddenError):
        scraper.submit({"steps": 5})
    resp = httpx.post(f"{api['url']}/api/v1/nodes", headers={"Authorization": f"Bearer {SCRAPE}"},
                      json={"name": "intruder"})
    assert resp.status_code == 403
    assert {r["name"] for r in api["store"].nodes()} == {"a", "b"}
    assert api["store"].jobs() == [] and api["store"].node(reg.node_id)["state"] == "alive"


def test_job_and_share_metrics_follow_committed_steps(api: dict[str, Any]) -> None:
    (a, reg_a), (b, reg_b) = api["nodes"]["a"], api["nodes"]["b"]
    job = a.submit({"steps": 50})
    for client, reg in ((a, reg_a), (b, reg_b)):
        assert client.heartbeat(reg.node_id, s.HeartbeatRequest()).assignment.job_id == job.id
    series, _ = parse_exposition(scrape(api["url"]).text)
    assert value(series, "potluck_job_committed_steps_total", job_id=str(job.id)) == 0
    assert value(series, "potluck_job_step", job_id=str(job.id)) is None  # nothing committed
    assert value(series, "potluck_job_loss", job_id=str(job.id)) is None

    def steps(reg: s.RegisterResponse, batch: int) -> list[StepEvent]:
        return [StepEvent(t=1.0 + i, replica=reg.name, slot=reg.slot, step=i, committed=True,
                          participants=2, local_batch=batch, compute_s=0.1, quorum_s=0.001,
                          allreduce_s=0.01, commit_s=0.001, loss=2.0 / (i + 1),
                          allocation={str(reg_a.slot): 48, str(reg_b.slot): 16},
                          samples_per_s=640.0) for i in range(4)]

    a.metrics(reg_a.node_id, job.id, steps(reg_a, 48))
    b.metrics(reg_b.node_id, job.id, steps(reg_b, 16))
    series, _ = parse_exposition(scrape(api["url"]).text)
    j = str(job.id)
    assert value(series, "potluck_job_step", job_id=j) == 3
    assert value(series, "potluck_job_committed_steps_total", job_id=j) == 4
    assert value(series, "potluck_job_loss", job_id=j) == 0.5
    assert value(series, "potluck_job_samples_per_second", job_id=j) == 640.0
    assert value(series, "potluck_node_share_ratio", node="a", job_id=j) == 0.75
    assert value(series, "potluck_node_samples_per_second", node="a", job_id=j) == 480.0
    assert value(series, "potluck_node_samples_per_second", node="b", job_id=j) == 160.0
    assert value(series, "potluck_node_samples_total", node="a", job_id=j) == 4 * 48
    assert value(series, "potluck_node_samples_total", node="b", job_id=j) == 4 * 16
    assert value(series, "potluck_node_compute_samples_per_second", node="a") == pytest.approx(480.0)
    # A node that left: down, and its last readings are not shown as if current.
    b.leave(reg_b.node_id)
    series, _ = parse_exposition(scrape(api["url"]).text)
    assert value(series, "potluck_node_up", node="b") == 0
    assert value(series, "potluck_nodes", state="left") == 1
    assert value(series, "potluck_node_memory_used_bytes", node="b") is None


# -- the exposition from plain data -------------------------------------------------------------

def test_label_values_are_escaped_and_read_back() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    odd = 'we\\ird "name"\nline'
    text = render(cluster_families(
        [NodeView(name=odd, state="alive", heartbeat_age_s=1.5, resources=CPU_ONLY)],
        [JobView(job_id=7, progress=s.JobProgress(step=3, participants=1, shares={odd: 1.0},
                                                  samples_per_s=10.0), node_samples={odd: 12})]))
    series, _ = parse_exposition(text)
    assert value(series, "potluck_node_up", node=odd) == 1
    assert value(series, "potluck_node_samples_total", node=odd, job_id="7") == 12
    assert value(series, "potluck_node_samples_per_second", node=odd, job_id="7") == 10.0


def test_unknown_and_non_finite_values_are_left_out() -> None:
    family = Family("potluck_job_loss")
    for v in (None, math.nan, math.inf):
        family.add('job_id="1"', v)
    family.add('job_id="2"', 0.25)
    assert family.lines == ['potluck_job_loss{job_id="2"} 0.25\n']
    assert render([family]).startswith("# HELP potluck_job_loss ")


def test_committed_steps_count_steps_trained_again_after_a_restart(tmp_path: Path) -> None:
    telemetry = Telemetry(Store(tmp_path / "potluck.db"), tmp_path / "experiments")

    def step(i: int) -> StepEvent:
        return StepEvent(t=float(i), replica="a", slot=0, step=i, committed=True, participants=1,
                         local_batch=8, compute_s=0.01, quorum_s=0.0, allreduce_s=0.0,
                         commit_s=0.0, loss=1.0, samples_per_s=100.0)

    node = {"id": 1, "name": "a"}
    seen = []
    for batch in ([step(i) for i in range(10)], [step(i) for i in range(3)]):  # 10, then a restart
        telemetry.ingest(node, 1, batch)
        text = render(cluster_families([], [JobView(job_id=1, progress=telemetry.progress[1])]))
        seen.append(value(parse_exposition(text)[0], "potluck_job_committed_steps_total", job_id="1"))
    assert seen == [10, 13]  # a counter never goes back
    assert telemetry.node_samples[1][1] == 13 * 8


def test_metrics_token_file_is_private_random_and_kept(tmp_path: Path) -> None:
    first = load_or_create_metrics_token(tmp_path)
    assert (tmp_path / "metrics-token").stat().st_mode & 0o777 == 0o600
    assert len(first) >= 32 and first != load_or_create_token(tmp_path, None)
    assert load_or_create_metrics_token(tmp_path) == first


# -- the agent's sampler ------------------------------------------------------------------------

def test_smi_lines_parse_with_units_and_n_a() -> None:
    text = ("0, 45, 1024, 8192, 61, 75.32\n"
            "1, [N/A], 512, 8192, 40, [Not Supported]\n"
            "2, 150, 1, 2, 3, 4\n"  # a nonsense utilisation costs that field only
            "Failed to initialize NVML: Driver/library version mismatch\n"
            "\n")
    gpus = parse_smi_gpus(text)
    assert gpus[0] == s.GpuTelemetry(index=0, utilization_percent=45.0, memory_used_bytes=GIB,
                                     memory_total_bytes=8 * GIB, temperature_c=61.0, power_w=75.32)
    assert (gpus[1].utilization_percent, gpus[1].power_w, gpus[1].memory_used_bytes) == (None, None, 512 * 2**20)
    assert (gpus[2].utilization_percent, gpus[2].power_w) == (None, 4.0)
    assert len(gpus) == 3
    odd = {"cpu_percent": 250.0, "memory_used_bytes": -1, "memory_total_bytes": 8, "gpus": gpus}
    assert valid(s.NodeTelemetry, odd) == s.NodeTelemetry(memory_total_bytes=8, gpus=gpus)


def fake_smi(directory: Path, script: str) -> None:
    path = directory / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.fixture
def no_gpu_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No pynvml (import fails) and a PATH holding only ``tmp_path/bin``."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_without_pynvml_nor_nvidia_smi_there_are_no_gpus_and_no_error(no_gpu_tools: Path) -> None:
    sampler = TelemetrySampler()
    assert sampler.gpu_source == "none"
    sample = sampler.sample()
    assert sample.gpus == []
    assert sample.memory_total_bytes and sample.memory_used_bytes is not None
    sampler.close()


def test_without_psutil_cpu_is_none_and_memory_comes_from_proc(no_gpu_tools: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)
    sample = TelemetrySampler().sample()
    assert sample.cpu_percent is None
    if Path("/proc/meminfo").exists():
        assert sample.memory_total_bytes and sample.memory_used_bytes is not None


def test_nvidia_smi_is_the_fallback_and_its_failures_are_no_gpus(no_gpu_tools: Path) -> None:
    fake_smi(no_gpu_tools, 'echo "0, 45, 1024, 8192, 61, 75.32"')
    sampler = TelemetrySampler()
    assert sampler.gpu_source == "nvidia-smi"
    assert sampler.sample().gpus == parse_smi_gpus("0, 45, 1024, 8192, 61, 75.32")
    fake_smi(no_gpu_tools, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    broken = TelemetrySampler()
    assert broken.sample().gpus == []


def test_nvml_is_preferred_and_a_failing_query_is_none(no_gpu_tools: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(no_gpu_tools, "exit 1")

    class NVMLError(Exception):
        pass

    def no_power(handle: int) -> float:
        raise NVMLError("Not Supported")

    nvml = types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=80, memory=10),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=GIB, total=4 * GIB, free=3 * GIB),
        nvmlDeviceGetTemperature=lambda h, sensor: 70, nvmlDeviceGetPowerUsage=no_power)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = TelemetrySampler()
    assert sampler.gpu_source == "nvml"
    assert sampler.sample().gpus == [s.GpuTelemetry(index=0, utilization_percent=80.0, memory_used_bytes=GIB,
                                                    memory_total_bytes=4 * GIB, temperature_c=70.0)]

    def no_driver() -> None:
        raise NVMLError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=no_driver))
    fallback = TelemetrySampler()
    assert fallback.gpu_source == "nvidia-smi" and fallback.sample().gpus == []
    assert agent_telemetry.SMI_TIMEOUT_S < 6.0  # under the host's default node timeout


# -- the Grafana dashboard ----------------------------------------------------------------------

def test_the_grafana_dashboard_uses_a_datasource_variable_and_only_exported_metrics() -> None:
    dash = json.loads(dashboard_json())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    used = set()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"potluck_[a-z_]+", target["expr"]))
    assert used <= set(FAMILIES), used - set(FAMILIES)
    titles = " ".join(p["title"].lower() for p in panels)
    for needed in ("cluster samples/s", "per node", "share", "loss", "gpu utilisation",
                   "gpu memory", "gpu temperature", "gpu power", "cpu", "memory", "heartbeat age"):
        assert needed in titles, needed
