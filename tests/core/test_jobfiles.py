"""Job files: the user's own model, data and loss, trained exactly like one big machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from potluck.contracts.errors import ConfigError, JobCodeError, ReplicaMismatchError, TrainingError
from potluck.contracts.jobspec import JobSpec
from potluck.launcher.threads import ThreadCluster
from potluck.recipes.jobfile import job_defaults, load_job_module
from potluck.trainer.core import build_training, train_reference

JOBS = Path(__file__).parent.parent / "jobs"


def job_spec(name: str, **extra: object) -> JobSpec:
    path = JOBS / name
    return JobSpec.parse({**job_defaults(path), "code": {"file": str(path)}, **extra})


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float) -> bool:
    """Every tensor within ``rtol`` of the other, relative to its largest entry."""
    return all(float((a[k] - b[k]).abs().max()) <= rtol * float(b[k].abs().max()) for k in a)


def test_job_file_defaults_and_required_functions(tmp_path: Path) -> None:
    spec = job_spec("chargpt.py")
    assert (spec.global_batch, spec.steps, spec.optimizer.clip_grad_norm) == (24, 6, 1.0)
    bad = tmp_path / "nomodel.py"
    bad.write_text("def dataset(ctx):\n    return []\n")
    with pytest.raises(ConfigError, match="does not define model, loss"):
        load_job_module(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_job_module(tmp_path / "missing.py")


def test_char_gpt_on_three_speeds_equals_one_process(tmp_path: Path) -> None:
    """Speeds 1, 0.5, 0.25 (uneven shares, AdamW, a scheduler, global clipping): the same
    parameters as one process on the same global batches."""
    spec = job_spec("chargpt.py", policy="proportional",
                    balancer={"profiles": {"0": [0.0, 1e-3], "1": [0.0, 2e-3], "2": [0.0, 4e-3]}})
    with ThreadCluster(spec, [1.0, 0.5, 0.25], tmp_path) as cluster:
        results = cluster.wait()
        shares = {r["slot"]: r["allocation"] for r in results.values()}
        distributed = cluster.replicas[0].tr.model.state_dict()
        lr = cluster.replicas[0].tr.optimizer.param_groups[0]["lr"]
    assert len({r["params_sha256"] for r in results.values()}) == 1
    assert sorted(shares[0].values()) == [3, 7, 14]  # 24 split 4:2:1, rounded
    reference, _ = train_reference(spec, spec.steps)
    assert close(distributed, reference.model.state_dict(), rtol=1e-5)
    assert lr == pytest.approx(0.05 * 0.5 ** 3)  # StepLR stepped once per committed step
    # and the comparison can fail: one step fewer is a different model
    fewer, _ = train_reference(spec, spec.steps - 1)
    assert not close(distributed, fewer.model.state_dict(), rtol=1e-5)


@pytest.mark.parametrize("mean_loss", [False, True])
def test_token_loss_with_padding_is_exact_and_a_mean_loss_is_not(tmp_path: Path, mean_loss: bool) -> None:
    module = load_job_module(JOBS / "padded.py")
    module.MEAN_LOSS = mean_loss
    try:
        spec = job_spec("padded.py", policy="proportional",
                        balancer={"profiles": {"0": [0.0, 1e-3], "1": [0.0, 3e-3]}})
        with ThreadCluster(spec, [1.0, 1.0], tmp_path) as cluster:
            results = cluster.wait()
            distributed = cluster.replicas[0].tr.model.state_dict()
        reference, _ = train_reference(spec, spec.steps)
    finally:
        module.MEAN_LOSS = False
    assert len({r["params_sha256"] for r in results.values()}) == 1
    assert close(distributed, reference.model.state_dict(), rtol=1e-5) is (not mean_loss)


def test_job_file_errors_name_file_and_line(tmp_path: Path) -> None:
    job = tmp_path / "broken.py"
    job.write_text("import torch\n\ndef model(ctx):\n    return torch.nn.Linear(2, 2)\n\n"
                   "def dataset(ctx):\n    return [(torch.zeros(2), 0)] * 8\n\n"
                   "def loss(model, batch, ctx):\n    raise ValueError('shapes do not match')\n")
    spec = JobSpec.parse({"code": {"file": str(job)}, "global_batch": 4, "steps": 1})
    tr = build_training(spec)
    with pytest.raises(JobCodeError) as info:
        tr.recipe.loss(tr.model, tr.batch(torch.arange(4).numpy()), tr.ctx)
    assert str(info.value) == "broken.py:10 in loss: ValueError: shapes do not match"
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def model(ctx:\n")
    with pytest.raises(JobCodeError, match=r"syntax.py:1 .*SyntaxError"):
        load_job_module(syntax)


def test_unseeded_model_is_caught_before_the_first_step(tmp_path: Path) -> None:
    job = tmp_path / "unseeded.py"
    job.write_text(
        "import os, torch\n\n"
        "def model(ctx):\n"
        "    torch.manual_seed(int.from_bytes(os.urandom(4), 'little'))  # the bug\n"
        "    return torch.nn.Linear(2, 2)\n\n"
        "def dataset(ctx):\n    return [(torch.ones(2) * i, i % 2) for i in range(16)]\n\n"
        "def loss(model, batch, ctx):\n"
        "    x, y = batch\n"
        "    return torch.nn.functional.cross_entropy(model(x), y)\n")
    spec = JobSpec.parse({"code": {"file": str(job)}, "global_batch": 8, "steps": 2,
                          "policy": "equal"})
    with ThreadCluster(spec, [1.0, 1.0], tmp_path) as cluster:
        with pytest.raises(TrainingError):
            cluster.wait()
        errors = [r for r in cluster.results.values() if isinstance(r, BaseException)]
    assert len(errors) == 2 and all(isinstance(e, ReplicaMismatchError) for e in errors)
    assert "different initial parameters (slot 0 vs slot 1)" in str(errors[0])
    assert "deterministic function of ctx.seed" in str(errors[0])


def test_batchnorm_is_pointed_out(tmp_path: Path) -> None:
    job = tmp_path / "bn.py"
    job.write_text(
        "import torch\n\n"
        "def model(ctx):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))\n\n"
        "def dataset(ctx):\n    return [(torch.ones(2) * i, i % 2) for i in range(16)]\n\n"
        "def loss(model, batch, ctx):\n"
        "    x, y = batch\n"
        "    return torch.nn.functional.cross_entropy(model(x), y)\n")
    spec = JobSpec.parse({"code": {"file": str(job)}, "global_batch": 8, "steps": 1})
    with ThreadCluster(spec, [1.0], tmp_path) as cluster:
        cluster.wait()
        notices = [e for e in cluster.events(0) if e["type"] == "notice"]
    assert len(notices) == 1 and "BatchNorm1d" in notices[0]["message"]
    assert "GroupNorm or LayerNorm" in notices[0]["message"]


def test_a_job_file_whose_loss_is_a_token_loss_can_be_profiled() -> None:
    """The profiler back-propagates a TokenLoss as training does (its summed terms)."""
    from potluck.profiler import profile_device

    prof = profile_device(model="mlp", dataset="digits", device="cpu", batch_sizes=[2, 8],
                          repeats=1, job=job_spec("padded.py"))
    assert prof.sample_s > 0 and [t.batch for t in prof.timings] == [2, 8]
