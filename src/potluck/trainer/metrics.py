"""Metrics files of a run (format documented in docs/metrics.md).

``run_dir/replicas/<name>.jsonl``   one JSON object a line: step, allocation and done records
``run_dir/allocation.jsonl``        the allocation decision log (written by the lowest slot)
``run_dir/logs/rank_<slot>_metrics.json``  a per-replica summary at the end
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Appends JSON lines; each line is flushed so a launcher can tail the file live."""

    def __init__(self, run_dir: str | Path, name: str, slot: int) -> None:
        self.run_dir = Path(run_dir)
        self.name = name
        self.slot = slot
        (self.run_dir / "replicas").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / "replicas" / f"{name}.jsonl", "a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        record = {"t": round(time.time(), 4), "replica": self.name, "slot": self.slot, **record}
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def decision(self, record: dict[str, Any]) -> None:
        self.write({"type": "allocation", **record})
        with open(self.run_dir / "allocation.jsonl", "a") as log:
            log.write(json.dumps({"t": round(time.time(), 4), **record}) + "\n")

    def summary(self, summary: dict[str, Any]) -> None:
        path = self.run_dir / "logs" / f"rank_{self.slot}_metrics.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)  # never a half-written summary

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL file (a partial last line is ignored)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


class MetricsTail:
    """Follows several JSONL files, returning only records added since the last poll."""

    def __init__(self, paths: list[Path]) -> None:
        self._offsets = {Path(p): 0 for p in paths}

    def poll(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path, offset in self._offsets.items():
            try:
                with open(path) as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            end = chunk.rfind("\n") + 1  # leave a partial last line for the next poll
            for line in chunk[:end].splitlines():
                out.append(json.loads(line))
            self._offsets[path] = offset + len(chunk[:end].encode())
        return out
