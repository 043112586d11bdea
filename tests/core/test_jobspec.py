"""Tier 1: the job spec and the events, validated at the edge (no processes)."""

from __future__ import annotations

import math

import pytest

from potluck.contracts.errors import ConfigError, DataError, ModelError
from potluck.contracts.events import StepEvent, parse_event
from potluck.contracts.jobspec import JOB_OPTIONS, JobSpec, ReplicaSpec
from potluck.recipes import check_spec


def test_flat_names_and_sections_mean_the_same_job() -> None:
    flat = JobSpec.parse({"model": "simple_cnn", "lr": 0.05, "policy": "equal", "sync": "allreduce"})
    nested = JobSpec.parse({"model": {"name": "simple_cnn"}, "optimizer": {"lr": 0.05},
                            "balancer": {"policy": "equal"}, "sync": {"strategy": "allreduce"}})
    assert flat == nested
    assert flat.optimizer.lr == 0.05 and flat.model.name == "simple_cnn"
    # A section and a flat name of the same section merge.
    both = JobSpec.parse({"policy": "hybrid", "balancer": {"deadband": 0.1}})
    assert (both.balancer.policy, both.balancer.deadband) == ("hybrid", 0.1)


def test_round_trip_through_json() -> None:
    spec = JobSpec.parse({"steps": 7, "emulation": {"sample_s": 1e-3},
                          "balancer": {"profiles": {"0": [0.0, 1e-3]}}})
    assert JobSpec.parse(spec.model_dump()) == spec
    assert JobSpec.model_validate_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"lr": -1}, "optimizer.lr"),
        ({"lr": math.inf}, "optimizer.lr"),
        ({"lr": math.nan}, "optimizer.lr"),
        ({"global_batch": 2**63}, "global_batch"),
        ({"global_batch": 1.5}, "global_batch"),
        ({"seed": -1}, "seed"),
        ({"fault": {"max_replicas": 0}}, "fault.max_replicas"),
        ({"fault": {"step_timeout_s": -3}}, "fault.step_timeout_s"),
        ({"balancer": {"profiles": {"x": [0, 1]}}}, "balancer.profiles"),
        ({"stepz": 5}, "stepz"),
        ({"optimizer": {"lr": 0.1, "nesterov": True}}, "optimizer.nesterov"),
    ],
)
def test_bad_values_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        JobSpec.parse(raw)
    message = str(err.value)
    assert f"'{field}'" in message and "\n" not in message


def test_echoed_values_are_cut_short() -> None:
    with pytest.raises(ConfigError) as err:
        JobSpec.parse({"model": "x" * 10_000})
    assert len(str(err.value)) < 300


def test_unknown_policy_and_names_checked_against_registries() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'fastest'"):
        JobSpec.parse({"policy": "fastest"})
    with pytest.raises(ModelError, match="unknown model 'resnet9000'.*mlp"):
        check_spec(JobSpec.parse({"model": "resnet9000"}))
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        check_spec(JobSpec.parse({"dataset": "imagenet"}))
    with pytest.raises(ConfigError, match="unknown sync strategy 'carrier-pigeon'"):
        check_spec(JobSpec.parse({"sync": "carrier-pigeon"}))


def test_with_options_uses_the_one_option_table() -> None:
    spec = JobSpec().with_options({"lr": 0.3, "rebalance_interval": 2, "steps": None})
    assert (spec.optimizer.lr, spec.balancer.rebalance_interval, spec.steps) == (0.3, 2, None)
    assert {o.name for o in JOB_OPTIONS} >= {"model", "dataset", "lr", "policy", "sync"}
    assert all(o.help for o in JOB_OPTIONS)
    with pytest.raises(ConfigError, match="unknown job option 'warp'"):
        JobSpec().with_options({"warp": 9})


def test_replica_spec_checks_slot_against_the_job() -> None:
    job = JobSpec.parse({"fault": {"max_replicas": 2}})
    with pytest.raises(ConfigError, match="slot must be < fault.max_replicas"):
        ReplicaSpec.parse({"job": job.model_dump(), "slot": 2, "name": "a",
                           "lighthouse": "http://127.0.0.1:1", "run_dir": "/tmp/x"})


def test_events_are_typed_and_versioned() -> None:
    raw = {"v": 1, "t": 1.0, "replica": "a", "slot": 0, "step": 3, "type": "step",
           "committed": True, "participants": 2, "local_batch": 10, "compute_s": 0.1,
           "quorum_s": 0.0, "allreduce_s": 0.01, "commit_s": 0.0, "loss": 1.5}
    event = parse_event(raw)
    assert isinstance(event, StepEvent) and event.loss == 1.5
    for bad, field in (({"loss": "lots"}, "step.loss"), ({"v": 2}, "step.v"),
                       ({"step": 2**40}, "step.step"), ({"compute_s": math.nan}, "step.compute_s")):
        with pytest.raises(ConfigError, match=f"'{field}'"):
            parse_event({**raw, **bad})
    with pytest.raises(ConfigError):
        parse_event({**raw, "type": "gossip"})
