"""EventSink: where a replica's typed events go. Files on disk (format: docs/metrics.md).

The replica loop calls ``sink.emit(event)`` for every step, allocation, membership change and
its final summary; it does not know who listens. :class:`JsonlSink` writes the run folder
that the demo's live view and the agent follow with :class:`JsonlTail`; :class:`ListSink`
keeps events in memory (tests, in-process launchers); :class:`FanOut` sends to several.

``run_dir/replicas/<name>.jsonl``   one event a line: step, allocation, membership, done
``run_dir/allocation.jsonl``        the allocation decision log (written by the lowest member)
``run_dir/logs/rank_<slot>_metrics.json``  the replica's summary at the end
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from potluck.contracts.events import AllocationEvent, DoneEvent, event_json


class EventSink(Protocol):
    def emit(self, event: BaseModel) -> None:
        """Record one event. Must not block training for long."""

    def close(self) -> None:
        """No more events will come."""


class ListSink:
    """Keeps every event in memory, in order."""

    def __init__(self) -> None:
        self.events: list[BaseModel] = []

    def emit(self, event: BaseModel) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass

    def records(self) -> list[dict[str, Any]]:
        return [e.model_dump(exclude_none=True) for e in self.events]


class FanOut:
    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = sinks

    def emit(self, event: BaseModel) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class JsonlSink:
    """Appends events as JSON lines; each line is flushed so a launcher can tail the file live."""

    def __init__(self, run_dir: str | Path, name: str, slot: int) -> None:
        self.run_dir = Path(run_dir)
        self.slot = slot
        (self.run_dir / "replicas").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / "replicas" / f"{name}.jsonl", "a", buffering=1)
        self._lock = threading.Lock()  # the checkpoint writer thread emits too

    def emit(self, event: BaseModel) -> None:
        line = event_json(event)
        with self._lock:
            self._file.write(line + "\n")
        if isinstance(event, AllocationEvent) and event.members and event.slot == min(event.members):
            with open(self.run_dir / "allocation.jsonl", "a") as log:
                log.write(line + "\n")
        if isinstance(event, DoneEvent):
            path = self.run_dir / "logs" / f"rank_{self.slot}_metrics.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(event.model_dump(exclude={"v", "type", "t", "step"}), indent=2))
            os.replace(tmp, path)  # never a half-written summary

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL file (a partial last line is ignored)."""
    tail = JsonlTail([Path(path)])
    return tail.poll()


class JsonlTail:
    """Follows JSONL files, returning only the complete records added since the last poll.

    An unfinished last line waits for the next poll; a line that is not a JSON object is
    skipped and counted in ``skipped``.
    """

    def __init__(self, paths: list[Path]) -> None:
        self._offsets = {Path(p): 0 for p in paths}
        self.skipped = 0

    def poll(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path, offset in self._offsets.items():
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            end = chunk.rfind(b"\n") + 1  # leave a partial last line for the next poll
            for line in chunk[:end].splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    out.append(record)
                elif line.strip():
                    self.skipped += 1
            self._offsets[path] = offset + end
        return out
