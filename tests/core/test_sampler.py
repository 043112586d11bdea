"""Tier 1: the data-assignment invariant, whatever the allocations and members do."""

from __future__ import annotations

import random

import numpy as np
import pytest

from potluck.balancer import split_equal
from potluck.contracts.errors import ConfigError
from potluck.trainer.sampler import epoch_permutation, slice_for, step_indices, steps_per_epoch


def test_permutation_is_seeded_and_differs_per_epoch() -> None:
    a = epoch_permutation(3, 0, 100)
    assert np.array_equal(a, epoch_permutation(3, 0, 100))
    assert not np.array_equal(a, epoch_permutation(3, 1, 100))
    assert sorted(a.tolist()) == list(range(100))


def test_slices_tile_the_global_batch_in_slot_order() -> None:
    alloc = {7: 3, 2: 5, 4: 0}
    assert slice_for(2, alloc) == (0, 5)
    assert slice_for(4, alloc) == (5, 5)
    assert slice_for(7, alloc) == (5, 8)
    assert slice_for(9, alloc) == (8, 8)


@pytest.mark.parametrize("seed", range(5))
def test_random_allocations_consume_the_permutation_exactly_once(seed: int) -> None:
    rng = random.Random(seed)
    n, B = 97, 10
    spe = steps_per_epoch(n, B)
    seen: list[int] = []
    for step in range(3 * spe):
        members = sorted(rng.sample(range(8), rng.randint(1, 5)))
        cuts = sorted(rng.randint(0, B) for _ in members[:-1])
        shares = [b - a for a, b in zip([0, *cuts], [*cuts, B])]
        alloc = dict(zip(members, shares))
        batch = [i for slot in members for i in step_indices(
            step=step, seed=seed, train_size=n, global_batch=B, allocation=alloc, slot=slot).tolist()]
        assert len(batch) == B
        seen.extend(batch)
    for epoch in range(3):
        chunk = seen[epoch * spe * B:(epoch + 1) * spe * B]
        assert chunk == epoch_permutation(seed, epoch, n)[: spe * B].tolist()


def test_global_batch_larger_than_data_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="larger than the training set"):
        steps_per_epoch(10, 11)
    assert steps_per_epoch(10, 3) == 3
    assert split_equal([0], 5) == {0: 5}
