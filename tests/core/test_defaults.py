"""Defaults that train something: a job with no length trains a useful model, the documented
examples are long enough to learn, and `potluck train` warns about a job too short to learn."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from potluck.contracts.jobspec import DEFAULT_STEPS, MIN_USEFUL_STEPS, JobSpec
from potluck.trainer.core import planned_steps, train_reference

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_default_job_reaches_a_useful_accuracy() -> None:
    spec = JobSpec.parse({})
    assert planned_steps(spec) == DEFAULT_STEPS >= MIN_USEFUL_STEPS
    tr, _ = train_reference(spec, planned_steps(spec))
    assert tr.recipe.evaluate(tr.model, tr.data, tr.ctx)["test_accuracy"] > 0.9


def test_epochs_count_whole_batches_of_the_data_set() -> None:
    # digits: 1,437 training samples; B=128 -> 11 steps an epoch.
    assert planned_steps(JobSpec.parse({"global_batch": 128, "epochs": 15})) == 165
    assert planned_steps(JobSpec.parse({"global_batch": 512, "epochs": 5})) == 10
    assert planned_steps(JobSpec.parse({"steps": 7, "epochs": 5})) == 7


def test_documented_yaml_examples_are_long_enough_to_learn() -> None:
    found = 0
    for doc in ("jobs.md", "cluster.md"):
        for block in re.findall(r"```yaml\n(.*?)```", (DOCS / doc).read_text(), re.S):
            spec = JobSpec.parse(yaml.safe_load(block))
            assert planned_steps(spec) >= MIN_USEFUL_STEPS, (doc, block)
            found += 1
    assert found >= 2


def test_train_warns_about_a_job_too_short_to_learn(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "potluck", "train", "--steps", "5", "--state-dir",
                          str(tmp_path / "nohost")], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0  # no host here: the warning comes before connecting
    assert "this job trains only 5 step(s)" in out.stderr and "--steps 100" in out.stderr
