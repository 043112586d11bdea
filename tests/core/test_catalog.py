"""The torch-free catalog of built-ins (what the host checks a job against) agrees with the
kernel's registries (what the replicas build), and the host's check needs no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from potluck import catalog
from potluck.contracts.errors import ConfigError
from potluck.contracts.jobspec import JobSpec
from potluck.recipes import check_spec, registered_recipes
from potluck.recipes.base import RECIPES
from potluck.recipes.builtin import Classifier
from potluck.recipes.language import LanguageModel
from potluck.trainer.sync import AUTO, sync_strategies


def test_the_catalog_names_what_the_registries_build() -> None:
    assert tuple(catalog.MODELS) == registered_recipes()
    for name, needs in catalog.MODELS.items():
        cls = RECIPES.get(name)
        if needs.takes == "images":
            assert issubclass(cls, Classifier) and needs.sizes == (), name
        else:
            assert issubclass(cls, LanguageModel) and needs.takes == "text", name
            assert needs.sizes == tuple(cls.sizes), name
    assert (*catalog.SYNC_STRATEGIES, catalog.AUTO) == sync_strategies()
    assert catalog.AUTO == AUTO


@pytest.mark.parametrize("fields", [
    {"model": "resnet9000"},
    {"model": "gpt", "dataset": "digits"},
    {"model": "mlp", "dataset": "imagenet"},
    {"model": "mlp", "model_size": "tiny"},
    {"model": "bert", "dataset": "chars", "model_size": "124M"},
    {"dataset": "synthetic_image", "data_path": "/tmp"},
    {"dataset": "cifar10"},
    {"sync": "gossip"},
    {"job_file": "/nonexistent/job.py"},
])
def test_the_host_and_the_kernel_refuse_a_bad_name_with_the_same_line(fields: dict) -> None:
    spec = JobSpec.parse(_layer(fields))
    with pytest.raises(ConfigError) as host:
        catalog.check_names(spec)
    with pytest.raises(ConfigError) as kernel:
        check_spec(spec)
    assert type(host.value) is type(kernel.value) and str(host.value) == str(kernel.value)
    assert "\n" not in str(host.value)


def test_a_good_job_passes_both() -> None:
    for fields in ({}, {"model": "gpt", "dataset": "chars", "model_size": "small"},
                   {"model": "resnet18", "sync": "auto"}, {"sync": "diloco"}):
        spec = JobSpec.parse(_layer(fields))
        assert catalog.check_names(spec) is spec
        assert check_spec(spec) is spec


def test_the_host_checks_jobs_and_runs_its_lighthouse_without_torch() -> None:
    code = """
import sys
from potluck.coordinator.jobs import job_spec_from
from potluck.coordinator.lighthouse import Lighthouse, LighthouseSettings
from potluck.contracts.errors import ModelError
import potluck.coordinator.host, potluck.coordinator.app
lighthouse = Lighthouse("127.0.0.1", 0, LighthouseSettings())
assert lighthouse.port > 0
job_spec_from({"model": {"name": "gpt"}, "data": {"name": "chars"}})
try:
    job_spec_from({"model": {"name": "resnet9000"}})
except ModelError as exc:
    print(exc)
lighthouse.shutdown()
print(sorted(m for m in ("torch", "torchft") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-2].startswith("unknown model 'resnet9000'")
    assert out.stdout.splitlines()[-1] == "[]"


def _layer(fields: dict) -> dict:
    """Flag-like names to the job spec's sections."""
    spec: dict = {}
    where = {"model": ("model", "name"), "model_size": ("model", "size"),
             "dataset": ("data", "name"), "data_path": ("data", "path"),
             "sync": ("sync", "strategy"), "job_file": ("code", "file")}
    for key, value in fields.items():
        section, field = where[key]
        spec.setdefault(section, {})[field] = value
    return spec
