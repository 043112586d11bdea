"""Checkpoint files (safetensors, no pickle) and code bundles (deterministic, safe to unpack)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from potluck.contracts.bundle import check, pack, unpack
from potluck.contracts.errors import ConfigError
from potluck.trainer.checkpointing import Checkpointer, snapshot
from potluck.trainer.state import model_bytes, read_model, read_state, state_bytes


def training_state() -> dict:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(5, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optim": opt.state_dict(), "step_times": [0.5, None],
            "balancer": {"allocation": {3: 10, 7: 20}, "pair": (1, "a")}}


def test_a_checkpoint_round_trips_every_kind_of_value() -> None:
    state = training_state()
    data = state_bytes(state, step=42)
    back, step = read_state(data)
    assert step == 42
    assert back["balancer"] == {"allocation": {3: 10, 7: 20}, "pair": (1, "a")}  # int keys, tuples
    assert back["step_times"] == [0.5, None]
    assert back["optim"]["param_groups"] == state["optim"]["param_groups"]
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v)
    for i, s in state["optim"]["state"].items():
        assert torch.equal(back["optim"]["state"][i]["exp_avg"], s["exp_avg"])
    assert b"pickle" not in data and b"\x80\x04" not in data[:64]  # no pickle protocol header


def test_model_files_and_bad_files() -> None:
    weights = {"w": torch.arange(6.0).view(2, 3), "tied": torch.ones(2)}
    weights["tied_too"] = weights["tied"]  # shared storage is written as two entries
    back = read_model(model_bytes(weights))
    assert set(back) == {"w", "tied", "tied_too"} and torch.equal(back["w"], weights["w"])
    with pytest.raises(ConfigError, match="a model file cannot be resumed from"):
        read_state(model_bytes(weights))
    with pytest.raises(ConfigError, match="not a safetensors file"):
        read_state(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ConfigError, match="not plain data"):
        state_bytes({"f": object()}, step=1)


def test_checkpointer_snapshots_then_writes_in_the_background(tmp_path: Path) -> None:
    from potluck.contracts.jobspec import CheckpointSection

    events = []
    ck = Checkpointer(tmp_path, CheckpointSection(every_steps=2, every_s=86400), events.append,
                      lambda: {"t": 1.0, "replica": "a", "slot": 0, "step": 0})
    live = {"w": torch.zeros(3)}
    assert not ck.due(1) and ck.due(2)
    ck.save(2, live)
    live["w"] += 1  # training goes on at once: the checkpoint keeps the snapshot
    ck.join()
    state, step = read_state((tmp_path / "step-00000002.safetensors").read_bytes())
    assert step == 2 and torch.equal(state["w"], torch.zeros(3))
    for s in (4, 6):
        ck.save(s, live)
    ck.join()
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000002.safetensors", "step-00000004.safetensors", "step-00000006.safetensors"]
    assert [e.step for e in events] == [2, 4, 6] and all(len(e.sha256) == 64 for e in events)
    assert snapshot({"a": (torch.ones(1),)})["a"][0] is not live["w"]


def test_bundles_are_deterministic_skip_ignored_files_and_unpack_safely(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "pkg").mkdir(parents=True)
    (job / "train.py").write_text("print('hi')\n")
    (job / "pkg" / "util.py").write_text("X = 1\n")
    (job / "data.bin").write_bytes(b"\0" * 100)
    (job / "__pycache__").mkdir()
    (job / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (job / "runs").mkdir()
    (job / "runs" / "big.log").write_text("log")
    (job / ".gitignore").write_text("# comment\nruns/\n*.bin\n")
    first = pack(job)
    assert [n for n, _ in first.files] == [".gitignore", "pkg/util.py", "train.py"]
    (job / "train.py").touch()  # a new mtime changes nothing
    assert pack(job).sha256 == first.sha256
    out = unpack(first.data, tmp_path / "cache" / first.sha256, first.sha256)
    assert (out / "pkg" / "util.py").read_text() == "X = 1\n"
    with pytest.raises(ConfigError, match="hash mismatch"):
        unpack(first.data, tmp_path / "other", "0" * 64)

    for name, kind in (("../evil.py", tarfile.REGTYPE), ("/etc/evil", tarfile.REGTYPE),
                       ("link", tarfile.SYMTYPE)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b""))
        with pytest.raises(ConfigError, match="not a plain relative file"):
            check(buf.getvalue())
    with pytest.raises(ConfigError, match="not a potluck bundle"):
        check(b"not a tarball")
