"""Several devices on one machine: one replica per device, and one agent per state directory.

The devices are emulated (``--device cpu,cpu`` with one speed factor each): the code path is
the one a two-GPU machine takes with ``--device auto``.
"""

from __future__ import annotations

import json
import time

import pytest
from cluster_helpers import wait_until

from conftest import Cluster
from potluck.agent.devices import (
    device_nodes,
    device_state_dir,
    parse_devices,
    parse_speeds,
    visible_gpu_count,
)
from potluck.contracts.errors import ConfigError


def test_auto_takes_every_visible_gpu_else_the_cpu() -> None:
    assert parse_devices("auto", 2) == ["cuda:0", "cuda:1"]
    assert parse_devices("auto", 0) == ["cpu"]
    assert parse_devices("cuda:1, cuda:0", 0) == ["cuda:1", "cuda:0"]
    assert parse_devices("cpu,cpu", 0) == ["cpu", "cpu"]
    assert visible_gpu_count(4, {"CUDA_VISIBLE_DEVICES": "2,3"}) == 2
    assert visible_gpu_count(4, {"CUDA_VISIBLE_DEVICES": "-1"}) == 0
    assert visible_gpu_count(2, {}) == 2


@pytest.mark.parametrize(("text", "match"), [
    ("gpu0", "'gpu0' is not a device"),
    ("cuda:0,cuda:0", "names a GPU twice"),
    ("cuda,cuda:1", "names a GPU twice"),
    ("cuda:x", "is not a device"),
])
def test_bad_device_lists_are_refused_with_the_fix(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_devices(text, 2)


def test_speeds_one_for_all_or_one_per_device() -> None:
    assert parse_speeds("0.5", 3) == [0.5, 0.5, 0.5]
    assert parse_speeds("1,0.25", 2) == [1.0, 0.25]
    with pytest.raises(ConfigError, match="lists 3 factors for 2 devices"):
        parse_speeds("1,1,1", 2)
    with pytest.raises(ConfigError, match="is not a number"):
        parse_speeds("fast", 1)


def test_node_names_and_state_dirs_per_device(tmp_path) -> None:
    assert device_nodes("box", ["cuda"]) == ["box"]
    assert device_nodes("box", ["cuda:0", "cuda:1"]) == ["box-cuda0", "box-cuda1"]
    assert device_nodes("box", ["cpu", "cpu"]) == ["box-cpu0", "box-cpu1"]
    assert device_state_dir(tmp_path, ["cpu"], 0) == tmp_path
    assert device_state_dir(tmp_path, ["cpu", "cpu"], 1) == tmp_path / "device-1"


def test_a_second_agent_on_the_same_state_dir_is_refused(cluster: Cluster) -> None:
    host = cluster.start_host("127.0.0.2")
    first = cluster.start_agent(host, "one", "127.0.0.3")
    wait_until(lambda: "one" in cluster.nodes(), 60, "the first agent to join")
    # Same --state-dir (agent-one), as two `potluck join` runs with the default dir would share.
    out = cluster.run("join", "--yes", host["url"].removeprefix("http://"), "--name", "two",
                      "--state-dir", str(cluster.tmp / "agent-one"), "--advertise", "127.0.0.3",
                      POTLUCK_TOKEN=host["token"])
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "another potluck agent (pid " in lines[0] and "--state-dir" in lines[0]
    assert str(first.popen.pid) in lines[0]
    time.sleep(1.5)  # a wrongly registered second node would show by now
    assert list(cluster.nodes()) == ["one"] and first.alive()


def test_two_devices_on_one_machine_each_train_a_replica(cluster: Cluster) -> None:
    host = cluster.start_host("127.0.0.2")
    cluster.start_agent(host, "box", "127.0.0.3", 1.0, "--device", "cpu,cpu", "--emulate-speed", "1,0.5",
                        "--threads", "1")
    wait_until(lambda: len(cluster.nodes()) == 2, 60, "both devices to register")
    nodes = cluster.nodes()
    assert sorted(nodes) == ["box-cpu0", "box-cpu1"]
    assert nodes["box-cpu0"]["slot"] != nodes["box-cpu1"]["slot"]
    assert {n["address"] for n in nodes.values()} == {"127.0.0.3"}
    keys = {(cluster.tmp / "agent-box" / f"device-{i}" / "node_key").read_text() for i in (0, 1)}
    assert len(keys) == 2

    yaml = cluster.tmp / "job.yaml"
    yaml.write_text("emulation: {sample_s: 0.0004}\nfault: {step_timeout_s: 8}\nrebalance_interval: 5\n")
    out = cluster.cli("train", "--model", "mlp", "--dataset", "digits", "--global-batch", "128",
                      "--steps", "30", "--config", str(yaml), "--json", timeout=180)
    assert out.returncode == 0, out.stderr + out.stdout
    summary = json.loads(out.stdout)
    assert summary["state"] == "succeeded" and summary["nodes"] == ["box-cpu0", "box-cpu1"]
    job_dir = cluster.host_dir / "experiments" / f"job-{summary['job_id']}" / "replicas"
    done = [json.loads(line) for name in ("box-cpu0", "box-cpu1")
            for line in (job_dir / f"{name}.jsonl").read_text().splitlines() if '"done"' in line]
    assert len(done) == 2 and len({d["params_sha256"] for d in done}) == 1
    # The balancer saw two devices of different speed on one machine.
    shares = next(j for j in cluster.json("jobs") if j["id"] == summary["job_id"])["progress"]["shares"]
    assert shares["box-cpu0"] > shares["box-cpu1"]
