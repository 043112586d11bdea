"""A job's charts, built incrementally from the step events the host stored.

:class:`JobRecorder` reads the job's new ``step`` rows from the metrics table (a range of row
ids, so each update costs only what arrived since the last one) and folds the committed ones
into time buckets (:class:`TimeBuckets`: at most ``MAX_POINTS``, merged two by two as the job
grows), per-node sample counts and each node's recent split of step time. Records were
validated when they were stored; they are read back as plain JSON here.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from potluck.contracts.dashboard import MAX_POINTS, Series, StepTimes

STRAGGLER_WINDOW = 50
"""Committed steps per node the Stragglers view averages over."""
ROWS_PER_UPDATE = 20_000
"""Rows read per update: a long job's history is read over a few snapshots, not at once."""


class _Mean:
    __slots__ = ("total", "count")

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, value: float | None) -> None:
        if value is not None:
            self.total += value
            self.count += 1

    def merge(self, other: _Mean) -> None:
        self.total += other.total
        self.count += other.count

    def value(self) -> float | None:
        return round(self.total / self.count, 6) if self.count else None


@dataclass
class _Bucket:
    t: _Mean = field(default_factory=_Mean)
    step: int | None = None
    samples_per_s: _Mean = field(default_factory=_Mean)
    loss: _Mean = field(default_factory=_Mean)
    node_rate: dict[str, _Mean] = field(default_factory=dict)
    node_share: dict[str, _Mean] = field(default_factory=dict)

    def merge(self, other: _Bucket) -> None:
        self.t.merge(other.t)
        if other.step is not None:
            self.step = other.step if self.step is None else max(self.step, other.step)
        self.samples_per_s.merge(other.samples_per_s)
        self.loss.merge(other.loss)
        for mine, theirs in ((self.node_rate, other.node_rate), (self.node_share, other.node_share)):
            for name, mean in theirs.items():
                mine.setdefault(name, _Mean()).merge(mean)


@dataclass
class _Columns:
    """The buckets' values, one list entry per bucket (None: no value there)."""

    t: list[float | None] = field(default_factory=list)
    step: list[int | None] = field(default_factory=list)
    samples_per_s: list[float | None] = field(default_factory=list)
    loss: list[float | None] = field(default_factory=list)
    node_rate: dict[str, list[float | None]] = field(default_factory=dict)
    node_share: dict[str, list[float | None]] = field(default_factory=dict)


class TimeBuckets:
    """Committed-step records in buckets of ``width_s`` seconds from the first one; when a
    record would need bucket ``max_points``, neighbours merge and the width doubles.

    :meth:`series` keeps its columns between calls and recomputes only the buckets that
    changed since (a running job touches the newest one or two): a snapshot of 200 nodes does
    not redo 240 x 200 means every second."""

    def __init__(self, max_points: int = MAX_POINTS, width_s: float = 1.0) -> None:
        self.max_points = max_points
        self.width_s = width_s
        self.t0: float | None = None
        self.buckets: list[_Bucket] = []
        self._columns: _Columns | None = None
        self._changed: set[int] = set()

    def _index(self, t: float) -> int:
        assert self.t0 is not None
        return max(0, int((t - self.t0) // self.width_s))

    def bucket(self, t: float) -> _Bucket:
        """The bucket for time ``t`` (the caller adds to it)."""
        if self.t0 is None:
            self.t0 = t
        index = self._index(t)
        while index >= self.max_points:
            merged = []
            for i in range(0, len(self.buckets), 2):
                pair = self.buckets[i]
                if i + 1 < len(self.buckets):
                    pair.merge(self.buckets[i + 1])
                merged.append(pair)
            self.buckets = merged
            self.width_s *= 2
            self._columns = None  # every bucket changed
            index = self._index(t)
        while len(self.buckets) <= index:
            self.buckets.append(_Bucket())
        self._changed.add(index)
        return self.buckets[index]

    def _refresh(self) -> _Columns:
        if self._columns is None:
            self._columns = _Columns()
            self._changed = set(range(len(self.buckets)))
        cols = self._columns
        n = len(self.buckets)
        if len(cols.t) < n:
            grow = [None] * (n - len(cols.t))
            every: list[list[Any]] = [cols.t, cols.step, cols.samples_per_s, cols.loss,
                                      *cols.node_rate.values(), *cols.node_share.values()]
            for column in every:
                column.extend(grow)
        for i in self._changed:
            b = self.buckets[i]
            t = b.t.value()
            cols.t[i] = round(t, 3) if t is not None else None
            cols.step[i] = b.step
            cols.samples_per_s[i] = b.samples_per_s.value()
            cols.loss[i] = b.loss.value()
            for means, out in ((b.node_rate, cols.node_rate), (b.node_share, cols.node_share)):
                for name, mean in means.items():
                    col = out.get(name)
                    if col is None:
                        col = out[name] = [None] * n
                    col[i] = mean.value()
        self._changed.clear()
        return cols

    def series(self, names: Iterable[str]) -> Series:
        """The buckets that hold a committed step, as columns (a chart draws a long pause
        between two of them as a gap)."""
        cols = self._refresh()
        keep = [i for i, (t, step) in enumerate(zip(cols.t, cols.step)) if t is not None and step is not None]
        every = len(keep) == len(cols.t)
        getter = itemgetter(*keep) if len(keep) > 1 else None  # picks in C: 400 columns a snapshot

        def pick(col: list[Any] | None) -> list[Any]:
            if col is None:
                return [None] * len(keep)
            if every:
                return list(col)
            return list(getter(col)) if getter is not None else [col[i] for i in keep]

        out = Series()
        out.t, out.step = pick(cols.t), pick(cols.step)
        out.samples_per_s, out.loss = pick(cols.samples_per_s), pick(cols.loss)
        names = sorted(set(names) | set(cols.node_rate))
        out.node_samples_per_s = {n: pick(cols.node_rate.get(n)) for n in names}
        out.node_share = {n: pick(cols.node_share.get(n)) for n in names}
        return out


class JobRecorder:
    """One job's series, node sample counts, step-time split and compute fraction."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.last_row = 0
        self.buckets = TimeBuckets()
        self.node_samples: dict[str, int] = {}
        self.recent: dict[str, deque[tuple[float, float, float, float]]] = {}
        """Node name -> (compute, comm, wait, other) seconds of its latest committed steps."""
        self._fraction = _Mean()

    def update(self, store: Any, names: Mapping[int, str]) -> None:
        """Fold in the rows stored since the last update (at most ``ROWS_PER_UPDATE``)."""
        rows = store.metrics_after(self.job_id, self.last_row, ("step",), ROWS_PER_UPDATE)
        for row in rows:
            self.last_row = row["id"]
            record = json.loads(row["record"])
            if record.get("committed"):
                self.add(names.get(row["node_id"]) or str(record.get("replica")), record)

    def add(self, node: str, e: Mapping[str, Any]) -> None:
        """One committed step event (the JSON fields of ``StepEvent``) of ``node``."""
        batch = int(e.get("local_batch") or 0)
        self.node_samples[node] = self.node_samples.get(node, 0) + batch
        bucket = self.buckets.bucket(float(e["t"]))
        bucket.t.add(float(e["t"]))
        bucket.step = max(bucket.step if bucket.step is not None else -1, int(e["step"]))
        rate = e.get("samples_per_s")
        bucket.samples_per_s.add(rate)
        bucket.loss.add(e.get("loss"))
        total = sum((e.get("allocation") or {}).values())
        if total > 0:
            bucket.node_share.setdefault(node, _Mean()).add(batch / total)
            if rate is not None:
                bucket.node_rate.setdefault(node, _Mean()).add(rate * batch / total)
        comm, wait = e.get("comm_s"), e.get("wait_s")
        if comm is not None and wait is not None:
            compute = float(e.get("compute_s") or 0.0)
            other = float(e.get("quorum_s") or 0) + float(e.get("commit_s") or 0) + float(e.get("data_s") or 0)
            self.recent.setdefault(node, deque(maxlen=STRAGGLER_WINDOW)).append(
                (compute, float(comm), float(wait), other))
            if compute + comm + wait > 0:
                self._fraction.add(compute / (compute + comm + wait))

    @property
    def compute_fraction(self) -> float | None:
        return self._fraction.value()

    def series(self, names: Iterable[str] = ()) -> Series:
        return self.buckets.series(names)

    def stragglers(self, order: Iterable[str]) -> list[StepTimes]:
        """Each node's mean split of step time, in ``order`` (nodes not in it last)."""
        ranked = list(dict.fromkeys([*order, *sorted(self.recent)]))
        out = []
        for name in ranked:
            steps = self.recent.get(name)
            if not steps:
                continue
            n = len(steps)
            sums = [sum(column) for column in zip(*steps)]
            out.append(StepTimes(node=name, steps=n, compute_s=round(sums[0] / n, 6),
                                 comm_s=round(sums[1] / n, 6), wait_s=round(sums[2] / n, 6),
                                 other_s=round(sums[3] / n, 6)))
        return out
