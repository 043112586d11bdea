"""Failure injection by step, for tests (torchft's ``EventInjector`` habit).

``Faults().fail_at(slot, step)`` makes replica ``slot`` raise :class:`InjectedFailure` when it
is about to compute ``step`` (once). The replica loop calls :meth:`Faults.check` every step;
an in-process launcher catches the exception as the replica's death and may start a new
replica in the slot, which heals from a peer. (Real processes use ``TestHooks.fail_at_step``,
which exits the process instead.)
"""

from __future__ import annotations

import threading


class InjectedFailure(Exception):
    """A failure a test asked for."""


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at: set[tuple[int, int]] = set()
        self.fired: list[tuple[int, int]] = []

    def fail_at(self, slot: int, step: int) -> Faults:
        with self._lock:
            self._at.add((slot, step))
        return self

    def check(self, slot: int, step: int) -> None:
        with self._lock:
            if (slot, step) not in self._at:
                return
            self._at.discard((slot, step))
            self.fired.append((slot, step))
        raise InjectedFailure(f"injected failure of slot {slot} at step {step}")
