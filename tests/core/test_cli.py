"""The demo and profile commands as a user runs them: real processes, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def potluck(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "potluck", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speeds", "1,0"], "every speed must be > 0"),
        (["--speeds", "1,-0.5"], "every speed must be > 0"),
        (["--speeds", ""], "--speeds is empty"),
        (["--speeds", "1,fast"], "not a comma list of numbers"),
        (["--nodes", "2", "--speeds", "1,1,1"], "give one speed per node"),
        (["--nodes", "4", "--global-batch", "3"], "smaller than the node count"),
        (["--model", "resnet9000"], "unknown model"),
        (["--dataset", "imagenet"], "unknown data set"),
        (["--policy", "fastest"], "unknown policy"),
        (["--global-batch", "5000"], "larger than the training set"),
        (["--experiments-dir", "blocker/sub"], "cannot write the experiments dir"),
        (["--steps", "abc"], "Invalid value for '--steps'"),
    ],
)
def test_demo_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In-process through the CLI's entry point (the same code path as the command)."""
    from potluck.cli.main import main

    (tmp_path / "blocker").write_text("a file where a folder is expected")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["demo", *args])
    out = capsys.readouterr()
    assert exited.value.code == 2, out.err
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.err
    assert message in lines[0]
    assert out.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_bad_input_as_a_real_process(tmp_path: Path) -> None:
    result = potluck("demo", "--lr", "inf", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: job field 'optimizer.lr': Input should be a finite number, got inf"]


def test_demo_json_compare_and_save_model(tmp_path: Path) -> None:
    result = potluck("demo", "--steps", "6", "--global-batch", "128", "--compare", "--json",
                     "--emulated-sample-ms", "1", "--save-model", "m.pt", "--name", "t", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout holds exactly one JSON object
    for key in ("policy", "nodes", "speeds", "steps", "global_batch", "samples_per_s",
                "ideal_samples_per_s", "efficiency", "final_loss", "test_accuracy",
                "allocation", "rebalances"):
        assert key in summary
    assert summary["policy"] == "dynamic" and summary["nodes"] == 3 and summary["steps"] == 6
    assert summary["speeds"] == [1.0, 0.5, 0.25]
    assert sum(summary["allocation"].values()) == 128
    assert summary["allocation"]["0"] > summary["allocation"]["2"]  # the fast node does more
    assert summary["baseline"]["policy"] == "equal"
    # Same seed and batches: same result whatever the split (to float tolerance).
    assert summary["final_loss"] == pytest.approx(summary["baseline"]["final_loss"], rel=1e-4)
    assert summary["efficiency"] == pytest.approx(summary["samples_per_s"] / summary["ideal_samples_per_s"], rel=1e-3)
    state = torch.load(tmp_path / "m.pt")
    assert any(k.endswith("weight") for k in state)
    run = tmp_path / "experiments" / "t"
    assert (run / "allocation.jsonl").exists()
    for slot in range(3):
        assert json.loads((run / "logs" / f"rank_{slot}_metrics.json").read_text())["slot"] == slot
        first = json.loads((run / "replicas" / f"node{slot}.jsonl").read_text().splitlines()[0])
        assert first["type"] in ("membership", "allocation", "step")


def test_profile_json(tmp_path: Path) -> None:
    result = potluck("profile", "--json", "--batch-sizes", "8,32", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (cpu,) = json.loads(result.stdout)
    assert cpu["device"] == "cpu" and [t["batch"] for t in cpu["timings"]] == [8, 32]
    assert cpu["sample_s"] > 0 and cpu["max_batch"] > 32
    assert all(t["forward_s"] > 0 and t["backward_s"] > 0 for t in cpu["timings"])


def test_profile_bad_input(tmp_path: Path) -> None:
    result = potluck("profile", "--batch-sizes", "8", cwd=tmp_path)
    assert result.returncode == 2 and "at least two sizes" in result.stderr
    result = potluck("profile", "--model", "nope", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 2 and "unknown model" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes(range(256)) * 4, "is not a text (YAML) file"),
        (b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
         b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
         "unknown job field"),
    ],
)
def test_train_config_that_is_not_a_job_is_one_short_line(
    tmp_path: Path, content: bytes, message: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """A binary file or a YAML alias bomb: one line naming the problem, before any host is asked."""
    from potluck.cli.main import main

    config = tmp_path / "job.yaml"
    config.write_bytes(content)
    with pytest.raises(SystemExit) as exited:
        main(["train", "--config", str(config), "--host", "http://127.0.0.1:9", "--token", "x"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and len(lines[0]) < 300, err


def test_host_refuses_bad_timeouts_before_writing_its_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "host-state"
    result = subprocess.run(
        [sys.executable, "-m", "potluck", "host", "--state-dir", str(state), "--advertise",
         "127.0.0.9", "--port", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "POTLUCK_HOST_TIMEOUTS": "node_timeout_s=-1"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: POTLUCK_HOST_TIMEOUTS: node_timeout_s must be a positive number of "
                     "seconds, got -1.0"], result.stderr
    assert not state.exists()  # no token written for a host that never started
