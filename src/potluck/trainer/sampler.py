"""Which sample indices each replica computes at each step.

The invariant: committed step ``s`` consumes positions ``[p*B, (p+1)*B)`` of epoch ``e``'s
seeded permutation, where ``e, p = divmod(s, steps_per_epoch)``, split among the step's
participants in ascending slot order by the step's allocation. A discarded step is redone
with the same positions (the step counter only moves on commit), so over committed steps no
sample is skipped or repeated, whoever takes part.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from potluck.contracts.errors import ConfigError


def steps_per_epoch(train_size: int, global_batch: int) -> int:
    """Full global batches per epoch (the last partial batch is dropped)."""
    if global_batch > train_size:
        raise ConfigError(
            f"global batch {global_batch} is larger than the training set ({train_size} samples): "
            f"use --global-batch <= {train_size}"
        )
    return train_size // global_batch


@lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, train_size: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the training set (same on every machine)."""
    perm = np.random.default_rng([seed, epoch]).permutation(train_size)
    perm.setflags(write=False)
    return perm


def slice_for(slot: int, allocation: Mapping[int, int]) -> tuple[int, int]:
    """``[lo, hi)`` offsets of ``slot``'s share inside the global batch."""
    lo = 0
    for member in sorted(allocation):
        if member == slot:
            return lo, lo + allocation[member]
        lo += allocation[member]
    return lo, lo  # not a member: an empty share


def step_indices(
    *, step: int, seed: int, train_size: int, global_batch: int,
    allocation: Mapping[int, int], slot: int,
) -> np.ndarray:
    """Training-set indices ``slot`` computes at global step ``step``."""
    spe = steps_per_epoch(train_size, global_batch)
    epoch, position = divmod(step, spe)
    lo, hi = slice_for(slot, allocation)
    start = position * global_batch
    return epoch_permutation(seed, epoch, train_size)[start + lo : start + hi].copy()
