"""What an agent checks before it runs a job's code: requirements, --builtin-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from potluck.agent.jobcode import requirement_problems
from potluck.agent.node import Agent, AgentConfig
from potluck.agent.runner import NodeSettings
from potluck.contracts import wire as s
from potluck.contracts.errors import ConfigError
from potluck.contracts.jobspec import JobSpec


def test_requirements_name_the_package_and_the_fix() -> None:
    assert requirement_problems(["numpy>=1.0", "torch"]) == []
    too_old, missing, bad = requirement_problems(
        ["numpy>=999", "no-such-package-potluck==1.2", "not a requirement!"])
    assert too_old.startswith("package numpy ") and "does not satisfy numpy>=999" in too_old
    assert "-m pip install 'numpy>=999'" in too_old
    assert missing.startswith("missing package no-such-package-potluck (needs no-such-package-potluck==1.2)")
    assert bad == "requirement 'not a requirement!' is not a valid pip requirement"


def test_a_builtin_only_node_refuses_shipped_code(tmp_path: Path) -> None:
    agent = Agent(AgentConfig(url="http://127.0.0.1:9", token="t" * 32, name="n", state_dir=tmp_path,
                              node=NodeSettings(advertise="127.0.0.1", interface=None),
                              builtin_only=True))
    code = JobSpec.parse({"code": {"file": "job.py", "bundle": "a" * 64}})
    assignment = s.Assignment(job_id=1, slot=0, name="n", lighthouse="http://127.0.0.1:1", job=code)
    with pytest.raises(ConfigError, match="runs built-in recipes only"):
        agent._prepare(assignment)
    builtin = assignment.model_copy(update={"job": JobSpec()})
    assert agent._prepare(builtin) == (None, None)  # built-in jobs run as before
    agent.client.close()
