"""Wire formats for the sync: fp32, bf16, and int8 with per-block scales (CPU, gloo).

``fp32`` and ``bf16`` are one SUM all-reduce of the flat buffer (bf16 halves the bytes and
rounds each value to 8 significant bits). ``int8`` quantizes each block of
:data:`BLOCK` values to int8 with its own float32 scale (``absmax / 127``) and all-gathers the
codes and scales (an int8 SUM would overflow): every member dequantizes every member's
contribution and adds them in slot order, so all members hold the same sum. Four times fewer
bytes than fp32 per member, at the price of an all-gather (``N - 1`` contributions arrive at
each member instead of a reduce-scatter's ``(N - 1) / N``).
"""

from __future__ import annotations

import torch
from torch._C._distributed_c10d import AllgatherOptions

BLOCK = 2048
WIRE_BYTES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0 + 4.0 / BLOCK}
"""Bytes per value on the wire (int8 includes its share of the block scales)."""


def encoded_bytes(values: int, wire: str) -> int:
    """Bytes of ``values`` floats as ``wire`` (one member's contribution to a sync): int8
    pads to whole blocks and adds one float32 scale per block."""
    if wire == "int8":
        blocks = -(-values // BLOCK)
        return blocks * (BLOCK + 4)
    return int(values * WIRE_BYTES[wire])


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 codes, float32 scales)`` of a flat float tensor, one scale per block."""
    n = x.numel()
    pad = (-n) % BLOCK
    blocks = torch.nn.functional.pad(x.float(), (0, pad)).view(-1, BLOCK)
    scales = blocks.abs().amax(dim=1).clamp_min(1e-30) / 127.0
    codes = torch.round(blocks / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return codes.view(-1), scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    return (codes.view(-1, BLOCK).float() * scales[:, None]).view(-1)[:n]


def allreduce_sum(manager: object, pg: object, flat: torch.Tensor, wire: str) -> torch.Tensor:
    """The SUM over the group's members of ``flat`` (float32), sent as ``wire``.

    fp32 and bf16 go through torchft's ``manager.allreduce`` (a failure marks the step
    errored, and it is discarded at commit). int8 uses the process group's all-gather; a
    failure is reported to the manager the same way."""
    if wire == "fp32":
        manager.allreduce(flat, reduce_op=torch.distributed.ReduceOp.SUM).wait()  # type: ignore[attr-defined]
        return flat
    if wire == "bf16":
        half = flat.to(torch.bfloat16)
        manager.allreduce(half, reduce_op=torch.distributed.ReduceOp.SUM).wait()  # type: ignore[attr-defined]
        return half.float()
    if wire != "int8":
        raise ValueError(f"unknown wire format {wire!r}")
    codes, scales = quantize(flat)
    try:
        size = pg.size()  # type: ignore[attr-defined]  # raises for a refused quorum (no group)
        out_codes = [[torch.empty_like(codes) for _ in range(size)]]
        out_scales = [[torch.empty_like(scales) for _ in range(size)]]
        opts = AllgatherOptions()
        pg.allgather(out_codes, [codes], opts).wait()  # type: ignore[attr-defined]
        pg.allgather(out_scales, [scales], opts).wait()  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - torchft decides at commit
        manager.report_error(exc)  # type: ignore[attr-defined]
        return flat
    total = torch.zeros_like(flat)
    for c, s in zip(out_codes[0], out_scales[0]):
        total += dequantize(c, s, flat.numel())
    return total
