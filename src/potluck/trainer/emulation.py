"""Emulated device speed: make this process behave like a device ``1/speed`` times slower.

Real compute still happens; the replica then sleeps until ``(overhead_s + sample_s * b) /
speed`` seconds have passed since the step's compute began. ``sample_s``/``overhead_s`` come
from a calibration done once by the launcher (one torch thread, no contention), not from the
contended measurement inside a busy replica, so the speeds a test asks for are the speeds it
gets even when several replicas share two cores. If the real compute overruns the target the
replica is simply slower than asked; ``overruns`` counts that so it can be reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


class Emulator:
    def __init__(self, speed: float, sample_s: float, overhead_s: float = 0.0) -> None:
        self.speed = speed
        self.sample_s = sample_s
        self.overhead_s = overhead_s
        self.overruns = 0

    @property
    def active(self) -> bool:
        return self.sample_s > 0 or self.overhead_s > 0

    def target_s(self, samples: int) -> float:
        return (self.overhead_s + self.sample_s * samples) / self.speed if samples > 0 else 0.0

    def pad(self, samples: int, started: float) -> None:
        """Sleep until the emulated compute time for ``samples`` has passed since ``started``."""
        if not self.active:
            return
        remaining = self.target_s(samples) - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        elif samples > 0:
            self.overruns += 1


def measure_step_s(step: Callable[[int], object], samples: int, repeats: int = 5) -> float:
    """Median seconds of ``step(samples)`` (one forward+backward; one warm-up run first)."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        step(samples)
        if i:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def calibrate(step: Callable[[int], object], batch: int) -> tuple[float, float]:
    """Real ``(sample_s, overhead_s)`` of this machine for ``step(n)`` (forward+backward of
    ``n`` samples, with the recipe's own loss), fitted on two batch sizes with one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        small = max(1, batch // 4)
        t_small = measure_step_s(step, small)
        t_big = measure_step_s(step, batch)
    finally:
        torch.set_num_threads(threads)
    sample_s = max((t_big - t_small) / max(batch - small, 1), 1e-7)
    overhead_s = max(t_small - sample_s * small, 0.0)
    return sample_s, overhead_s
