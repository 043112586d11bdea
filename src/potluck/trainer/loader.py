"""Fetch the next step's samples while this step computes.

A replica knows its next share before the next quorum in the common case: the same
allocation, the next step's positions of the permutation. :class:`Prefetcher` fetches that
batch on worker threads (a data set's ``__getitem__`` that reads files or decodes releases
the GIL), so the replica loop finds it ready. When the guess was wrong (the allocation or
the membership changed, a step was discarded), the batch is fetched on demand and the guess
is dropped: prefetching never changes which samples a step computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np


class Prefetcher:
    """``get(key, indices)`` returns the batch; ``schedule(key, indices)`` starts the next."""

    def __init__(self, fetch: Callable[[np.ndarray], Any], workers: int = 1) -> None:
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="potluck-data")
        self._next: tuple[Hashable, np.ndarray, Future[Any]] | None = None
        self.wait_s = 0.0
        """Seconds the caller waited for data in the last :meth:`get`."""
        self.hits = self.misses = 0

    def get(self, key: Hashable, indices: np.ndarray) -> Any:
        t0 = time.perf_counter()
        pending, self._next = self._next, None
        if pending is not None and pending[0] == key and np.array_equal(pending[1], indices):
            batch = pending[2].result()
            self.hits += 1
        else:
            if pending is not None:
                pending[2].cancel()
            batch = self._fetch(indices)
            self.misses += 1
        self.wait_s = time.perf_counter() - t0
        return batch

    def schedule(self, key: Hashable, indices: np.ndarray) -> None:
        if self._next is not None:
            self._next[2].cancel()
        self._next = (key, indices, self._pool.submit(self._fetch, indices))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
