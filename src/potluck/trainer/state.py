"""Training state and trained models as safetensors files: no pickle anywhere.

Two kinds of file, both plain `safetensors <https://github.com/huggingface/safetensors>`_:

- **A model** (``model.safetensors``): the ``state_dict`` under its own names, loadable by
  anything that reads safetensors (``safetensors.torch.load_file``). Tied weights are stored
  once per name.
- **A checkpoint** (``step-00000120.safetensors``): the whole training state (model,
  optimizer, scheduler, balancer, step, ...), a nested structure of dicts, lists, numbers and
  tensors. Tensors are stored as ``t0``, ``t1``, ...; the structure around them is JSON in the
  file's metadata (key ``potluck.state``), with dict keys typed so the optimizer's integer
  keys come back as integers. ``potluck.step`` and ``potluck.format`` are metadata too.

Writing is atomic: a temporary file in the same folder, fsync, rename. Reading validates the
format and raises :class:`~potluck.contracts.errors.ConfigError` naming what is wrong.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from potluck.contracts.errors import ConfigError

FORMAT = "potluck-state/1"


def _plain(t: torch.Tensor) -> torch.Tensor:
    # safetensors refuses shared or strided storage: one contiguous CPU copy per entry
    return t.detach().to("cpu").contiguous().clone()


def _flatten(value: Any, tensors: dict[str, torch.Tensor], copy: bool = True) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = _plain(value) if copy else value.contiguous()
        return {"T": name}
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise ConfigError(f"cannot save state: dict key {k!r} is not a str or int")
            items.append(["i" if isinstance(k, int) else "s", k, _flatten(v, tensors, copy)])
        return {"D": items}
    if isinstance(value, (list, tuple)):
        return {"L" if isinstance(value, list) else "U": [_flatten(v, tensors, copy) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"V": value}
    raise ConfigError(f"cannot save state: a value of type {type(value).__name__} is not "
                      "plain data (use tensors, numbers, strings, lists and dicts)")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise ConfigError("not a potluck checkpoint: malformed state structure")
    (kind, body), = node.items()
    if kind == "T":
        return tensors[body]
    if kind == "D":
        return {(int(k) if t == "i" else str(k)): _unflatten(v, tensors) for t, k, v in body}
    if kind == "L":
        return [_unflatten(v, tensors) for v in body]
    if kind == "U":
        return tuple(_unflatten(v, tensors) for v in body)
    if kind == "V":
        return body
    raise ConfigError(f"not a potluck checkpoint: unknown node {kind!r}")


def state_bytes(state: dict[str, Any], *, step: int, copy: bool = True) -> bytes:
    """A checkpoint file's bytes for ``state`` after ``step`` committed steps. ``copy=False``
    when every tensor is already a private CPU copy (a snapshot)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, copy)
    meta = {"potluck.format": FORMAT, "potluck.step": str(step),
            "potluck.state": json.dumps(skeleton, separators=(",", ":"))}
    return st_save(tensors, metadata=meta)


def read_state(data: bytes) -> tuple[dict[str, Any], int]:
    """``(state, step)`` from a checkpoint file's bytes. Raises ConfigError."""
    meta = read_metadata(data)
    if meta.get("potluck.format") != FORMAT:
        raise ConfigError("not a potluck checkpoint (no potluck.format metadata): a model "
                          "file cannot be resumed from")
    try:
        tensors = st_load(data)
        state = _unflatten(json.loads(meta["potluck.state"]), tensors)
        return state, int(meta["potluck.step"])
    except (SafetensorError, KeyError, ValueError) as exc:
        raise ConfigError(f"not a potluck checkpoint: {exc}") from exc


def read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (empty if none). Raises ConfigError."""
    if len(data) < 8:
        raise ConfigError("not a safetensors file: shorter than its header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8 or size > 100 << 20:
        raise ConfigError("not a safetensors file: header length out of range")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as exc:
        raise ConfigError("not a safetensors file: header is not JSON") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def model_bytes(state_dict: dict[str, torch.Tensor], **metadata: str) -> bytes:
    """A model file's bytes: the ``state_dict`` under its own names."""
    return st_save({k: _plain(v) for k, v in state_dict.items()},
                   metadata={"format": "pt", **metadata})


def read_model(data: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except SafetensorError as exc:
        raise ConfigError(f"not a safetensors model file: {exc}") from exc
