"""The CLI's flag set is frozen (torchtitan's habit): a new knob goes into the JobSpec.

If this test fails because you added or removed a flag, ask whether the knob belongs in the
job spec (docs/jobs.md) instead; if it really is a command's own flag, update EXPECTED.
"""

from __future__ import annotations

import typer

from potluck.cli.main import app
from potluck.contracts.jobspec import JOB_OPTIONS

JOB = ["--checkpoint-every-s", "--checkpoint-every-steps", "--clip-grad-norm", "--data-path",
       "--dataset", "--deadband", "--epochs", "--exact", "--global-batch", "--lr", "--model",
       "--model-size", "--momentum", "--phase-s", "--policy", "--rebalance-interval", "--seed",
       "--seq-len", "--steps", "--sync", "--wire"]
CLUSTER = ["--host", "--json", "--state-dir", "--token"]

EXPECTED: dict[str, list[str]] = {
    "cancel": sorted(CLUSTER + ["JOB_ID"]),
    "demo": sorted(JOB + ["--compare", "--emulated-sample-ms", "--experiments-dir", "--job", "--json",
                          "--name", "--nodes", "--save-model", "--speeds"]),
    "doctor": ["--advertise", "--cluster", "--experiments-dir", "--json", "--name", "--state-dir",
               "--token", "HOST"],
    "dashboard": ["--state-dir"],
    "forget": sorted(CLUSTER + ["--away", "NAMES"]),
    "grafana-dashboard": ["PATH"],
    "host": ["--advertise", "--allow-public", "--emulate-speed", "--json", "--lighthouse-port",
             "--name", "--no-local-agent", "--port", "--show-ports", "--state-dir", "--token"],
    "jobs": CLUSTER,
    "join": ["--advertise", "--allow-public", "--builtin-only", "--device", "--emulate-speed",
             "--name", "--state-dir", "--threads", "--token", "--token-file", "--yes", "-y",
             "HOST_ADDR"],
    "logs": ["--follow", "--host", "--json", "--state-dir", "--token", "-f", "JOB_ID"],
    "profile": ["--batch-sizes", "--dataset", "--device", "--json", "--memory-budget-mb", "--model"],
    "pull": sorted(CLUSTER + ["--checkpoint", "--force", "JOB_ID", "PATH"]),
    "report": sorted(["--host", "--state-dir", "--token", "JOB_ID", "PATH"]),
    "status": CLUSTER,
    "train": sorted(JOB + CLUSTER + ["--config", "--detach", "--name", "--resume", "JOB_FILE"]),
}


def flags() -> dict[str, list[str]]:
    root = typer.main.get_command(app)
    out = {}
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        opts = sorted(o for p in command.params for o in p.opts if o.startswith("-"))
        args = sorted(p.name.upper() for p in command.params
                      if not any(o.startswith("-") for o in p.opts))
        out[name] = opts + args
    return out


def test_the_flag_set_is_frozen() -> None:
    assert flags() == EXPECTED


def test_demo_and_train_take_every_job_option() -> None:
    every = {"--" + o.name.replace("_", "-") for o in JOB_OPTIONS}
    assert every == set(JOB)
    got = flags()
    assert every <= set(got["demo"]) and every <= set(got["train"])
