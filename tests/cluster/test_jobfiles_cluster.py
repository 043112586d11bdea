"""Job files on a real cluster (host and agents as separate processes, as a user runs them):
the job's folder is shipped and trains, the model comes back with `potluck pull`, `--resume`
continues a finished job, and a job that cannot run stops before it starts, saying why."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from cluster_helpers import wait_until
from safetensors.torch import load_file
from test_cluster import job
from test_faults import done_records, two_agents

from conftest import Cluster
from potluck.recipes.jobfile import load_job_module
from potluck.trainer.core import params_digest

JOBS = Path(__file__).parent.parent / "jobs"


def job_folder(cluster: Cluster, name: str = "myjob") -> Path:
    """A user's job folder: the job file, a helper module, a data file (and noise to skip)."""
    folder = cluster.tmp / name
    folder.mkdir()
    for f in ("chargpt.py", "helpers.py", "corpus.txt"):
        shutil.copy(JOBS / f, folder / f)
    (folder / "notes.tmp").write_text("not shipped")
    (folder / ".potluckignore").write_text("*.tmp\n")
    return folder


def train(cluster: Cluster, *args: str) -> dict:
    out = cluster.cli("train", *args, "--json", timeout=240)
    assert out.returncode == 0, out.stderr + cluster.logs()
    return json.loads(out.stdout)


def test_job_folders_on_a_cluster(cluster: Cluster) -> None:
    """One cluster (a host and two agents) for both stories: starting it costs more than
    either. The working job first: the bundle check counts the agents' unpacked bundles."""
    two_agents(cluster)
    a_job_folder_is_shipped_trains_and_the_model_comes_back(cluster)
    a_job_that_cannot_run_stops_before_it_starts(cluster)


def a_job_folder_is_shipped_trains_and_the_model_comes_back(cluster: Cluster) -> None:
    folder = job_folder(cluster)
    cfg = cluster.tmp / "fast.yaml"
    cfg.write_text("fault: {step_timeout_s: 8}\ncheckpoint: {every_steps: 3}\n")
    summary = train(cluster, str(folder / "chargpt.py"), "--config", str(cfg), "--steps", "7")
    job_id = summary["job_id"]
    assert summary["state"] == "succeeded" and summary["steps"] == 7
    assert summary["model"] is True and summary["checkpoint_step"] == 7
    # each agent unpacked the same bundle, without the ignored file
    bundles = [p for p in (cluster.tmp / "agent-b" / "bundles").iterdir() if not p.name.startswith(".")]
    assert len(bundles) == 1
    assert sorted(p.name for p in bundles[0].iterdir()) == [".potluckignore", "chargpt.py", "corpus.txt", "helpers.py"]
    host_ckpts = sorted(p.name for p in (cluster.host_dir / "experiments" / f"job-{job_id}" / "checkpoints").glob("*.safetensors"))
    assert host_ckpts == ["step-00000003.safetensors", "step-00000006.safetensors", "step-00000007.safetensors"]

    # the trained model, from "another machine" (token and host given explicitly)
    out = cluster.run("pull", str(job_id), str(cluster.tmp / "model.safetensors"), "--json",
                      "--host", _host(cluster),
                      POTLUCK_TOKEN=(cluster.host_dir / "token").read_text().strip())
    assert out.returncode == 0, out.stderr
    weights = load_file(cluster.tmp / "model.safetensors")
    module = load_job_module(folder / "chargpt.py")
    model = module.TinyGPT(len(module.dataset(None).vocab))
    model.load_state_dict(weights)
    assert params_digest(model) == done_records(cluster, job_id)[0]["params_sha256"]
    again = cluster.run("pull", str(job_id), str(cluster.tmp / "model.safetensors"))
    assert again.returncode == 2 and "--force" in again.stderr  # never overwrites silently

    # --resume continues the finished job from its last checkpoint, in the same data order
    resumed = train(cluster, "--resume", str(job_id), "--steps", "9")
    assert resumed["state"] == "succeeded" and resumed["steps"] == 9
    steps = [r for r in _events(cluster, resumed["job_id"]) if r["type"] == "step" and r["committed"]]
    assert min(r["step"] for r in steps) == 7  # nothing before the checkpoint is trained again
    log = cluster.cli("logs", str(resumed["job_id"])).stdout
    assert f"resumes job {job_id} from its checkpoint after step 7" in log, log


def a_job_that_cannot_run_stops_before_it_starts(cluster: Cluster) -> None:
    folder = job_folder(cluster, "broken")
    need = cluster.tmp / "need.yaml"
    need.write_text("requirements: ['no-such-package-potluck>=1.0']\nfault: {step_timeout_s: 8}\n")
    out = cluster.cli("train", str(folder / "chargpt.py"), "--config", str(need), "--json", timeout=120)
    assert out.returncode == 1
    final = job(cluster, json.loads(out.stdout)["job_id"])
    assert final["state"] == "failed" and final["started_at"] is not None
    assert "job stopped before it could train" in final["message"]
    # the first node to report it is named (either: both lack the package)
    assert re.search(r"\b[bc]: missing package no-such-package-potluck", final["message"]), final["message"]
    assert "pip install 'no-such-package-potluck>=1.0'" in final["message"]
    assert not any(r["type"] == "step" for r in _events(cluster, final["id"]))

    (folder / "chargpt.py").write_text((folder / "chargpt.py").read_text().replace(
        "    x, y = batch\n", "    x, y = batch\n    raise ValueError('my bug')\n", 1))
    out = cluster.cli("train", str(folder / "chargpt.py"), "--steps", "3", "--json", timeout=120)
    assert out.returncode == 1
    final = job(cluster, json.loads(out.stdout)["job_id"])
    assert final["state"] == "failed"
    assert "chargpt.py:43 in loss: ValueError: my bug" in final["message"], final["message"]
    log = cluster.cli("logs", str(final["id"])).stdout
    assert "Traceback" in log and "raise ValueError('my bug')" in log, log
    assert "restarting in" not in log  # a bug in the job's code is not retried
    wait_until(lambda: all(n["state"] == "alive" for n in cluster.nodes().values()), 10, "nodes alive")


def _host(cluster: Cluster) -> str:
    return json.loads((cluster.host_dir / "host.json").read_text())["url"].removeprefix("http://")


def _events(cluster: Cluster, job_id: int) -> list[dict]:
    folder = cluster.host_dir / "experiments" / f"job-{job_id}" / "replicas"
    return [r for p in folder.glob("*.jsonl") for r in map(json.loads, p.read_text().splitlines())]
