"""Tier 1: allocation math with no processes, on fake worlds of up to 8 nodes."""

from __future__ import annotations

import itertools
import random

import pytest

from potluck.balancer import Balancer, Speed, micro_batches, predicted_step_time, solve, split_equal


def brute_force_makespan(speeds: dict[int, Speed], B: int) -> float:
    slots = sorted(speeds)
    best = float("inf")
    for cut in itertools.product(range(B + 1), repeat=len(slots) - 1):
        if sum(cut) > B:
            continue
        shares = dict(zip(slots, [*cut, B - sum(cut)]))
        best = min(best, predicted_step_time(shares, speeds))
    return best


def test_equal_split_sums_and_is_even() -> None:
    shares = split_equal([5, 1, 3], 10)
    assert sum(shares.values()) == 10
    assert shares == {1: 4, 3: 3, 5: 3}


@pytest.mark.parametrize("seed", range(20))
def test_solve_is_optimal_on_small_worlds(seed: int) -> None:
    rng = random.Random(seed)
    speeds = {s: Speed(rng.uniform(0, 0.05), rng.uniform(1e-3, 2e-2)) for s in range(3)}
    B = rng.randint(3, 30)
    shares = solve(speeds, B)
    assert sum(shares.values()) == B
    assert all(b >= 0 for b in shares.values())
    assert predicted_step_time(shares, speeds) == pytest.approx(brute_force_makespan(speeds, B))


def test_proportional_to_speed_without_overhead() -> None:
    speeds = {0: Speed(0, 1e-3), 1: Speed(0, 2e-3), 2: Speed(0, 4e-3)}
    assert solve(speeds, 700) == {0: 400, 1: 200, 2: 100}


def test_fixed_overhead_shifts_work_to_cheap_steps() -> None:
    # Same per-sample speed; node 1 pays 50 ms per step extra, so it gets fewer samples.
    speeds = {0: Speed(0.0, 1e-3), 1: Speed(0.05, 1e-3)}
    shares = solve(speeds, 200)
    assert shares == {0: 125, 1: 75}


def test_replica_whose_share_rounds_to_zero_is_excluded() -> None:
    speeds = {0: Speed(0, 1e-4), 1: Speed(0, 1e-4), 2: Speed(0, 1.0)}
    shares = solve(speeds, 64)
    assert shares[2] == 0 and shares[0] + shares[1] == 64


def test_replica_with_huge_overhead_is_excluded() -> None:
    speeds = {0: Speed(0, 1e-3), 1: Speed(10.0, 1e-6)}
    assert solve(speeds, 100) == {0: 100, 1: 0}


def test_solve_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        solve({}, 10)
    with pytest.raises(ValueError):
        solve({0: Speed(0, 0)}, 10)


def test_micro_batches_respect_the_cap() -> None:
    assert micro_batches(10, 4) == [4, 4, 2]
    assert micro_batches(8, 4) == [4, 4]
    assert micro_batches(3, None) == [3]
    assert micro_batches(0, 4) == []


def simulate(balancer: Balancer, true: dict[int, Speed], steps: int, start: int = 0,
             noise: float = 0.02, rng: random.Random | None = None) -> list[dict[int, int]]:
    """Drive a balancer like replicas would: quorum -> allocation -> measure -> observe."""
    rng = rng or random.Random(0)
    history = []
    for step in range(start, start + steps):
        balancer.allocation_for(sorted(true), step)
        history.append(dict(balancer.allocation))
        measured = {s: (b, true[s].time(b) * (1 + rng.uniform(-noise, noise)))
                    for s, b in balancer.allocation.items()}
        balancer.observe(step, measured)
    return history


def test_dynamic_converges_on_a_fake_world_of_8_nodes() -> None:
    rng = random.Random(1)
    true = {s: Speed(rng.uniform(0.0, 0.02), rng.uniform(5e-4, 8e-3)) for s in range(8)}
    bal = Balancer(policy="dynamic", global_batch=1024, rebalance_interval=3, deadband=0.02)
    history = simulate(bal, true, 30, rng=rng)
    optimum = predicted_step_time(solve(true, 1024), true)
    assert history[0] == split_equal(range(8), 1024)  # nothing known at step 0
    final = predicted_step_time(history[-1], true)
    assert final <= 1.05 * optimum
    assert predicted_step_time(history[0], true) > 1.5 * optimum


def test_dynamic_follows_a_slowdown_within_three_intervals() -> None:
    true = {0: Speed(0.0, 1e-3), 1: Speed(0.0, 2e-3), 2: Speed(0.0, 4e-3)}
    K = 5
    bal = Balancer(policy="dynamic", global_batch=512, rebalance_interval=K, deadband=0.05)
    simulate(bal, true, 20)
    slowed = {**true, 0: Speed(0.0, 2e-3)}  # node 0's speed halves
    history = simulate(bal, slowed, 3 * K, start=20)
    optimum = predicted_step_time(solve(slowed, 512), slowed)
    assert predicted_step_time(history[-1], slowed) <= 1.05 * optimum


def test_deadband_prevents_oscillation_under_noise() -> None:
    true = {0: Speed(0.0, 1e-3), 1: Speed(0.0, 1e-3)}
    bal = Balancer(policy="dynamic", global_batch=256, rebalance_interval=2, deadband=0.10)
    simulate(bal, true, 40, noise=0.05)
    # After the first solve, 5% noise never beats a 10% deadband.
    assert bal.rebalances <= 1


def test_proportional_uses_profiles_and_never_changes() -> None:
    profiles = {0: Speed(0, 1e-3), 1: Speed(0, 3e-3)}
    bal = Balancer(policy="proportional", global_batch=400, profiles=profiles, rebalance_interval=1)
    decision = bal.allocation_for([0, 1], 0)
    assert decision is not None and decision.allocation == {0: 300, 1: 100}
    simulate(bal, {0: Speed(0, 3e-3), 1: Speed(0, 1e-3)}, 10)  # reality disagrees: ignored
    assert bal.allocation == {0: 300, 1: 100}


def test_hybrid_starts_from_profile_then_refines() -> None:
    profiles = {0: Speed(0, 1e-3), 1: Speed(0, 1e-3)}
    bal = Balancer(policy="hybrid", global_batch=300, profiles=profiles, rebalance_interval=2)
    history = simulate(bal, {0: Speed(0, 1e-3), 1: Speed(0, 2e-3)}, 12)
    assert history[0] == {0: 150, 1: 150}
    assert history[-1] == {0: 200, 1: 100}


def test_membership_change_resolves_at_once_and_logs_reason() -> None:
    bal = Balancer(policy="dynamic", global_batch=300, rebalance_interval=100)
    simulate(bal, {0: Speed(0, 1e-3), 1: Speed(0, 2e-3)}, 3)
    decision = bal.allocation_for([0], 3)
    assert decision is not None and decision.allocation == {0: 300}
    assert "members changed" in decision.reason
    decision = bal.allocation_for([0, 1, 2], 4)  # slot 2 unknown: assumed typical
    assert decision is not None and sum(decision.allocation.values()) == 300
    assert set(decision.allocation) == {0, 1, 2}


def test_equal_policy_is_plain_ddp() -> None:
    bal = Balancer(policy="equal", global_batch=10)
    history = simulate(bal, {0: Speed(0, 1e-3), 1: Speed(0, 9e-3), 2: Speed(0, 1e-3)}, 10)
    assert all(h == {0: 4, 1: 3, 2: 3} for h in history)


def test_state_dict_round_trip_keeps_replicas_in_lockstep() -> None:
    true = {0: Speed(0.01, 1e-3), 1: Speed(0.0, 2e-3), 2: Speed(0.02, 3e-3)}
    a = Balancer(policy="dynamic", global_batch=512, rebalance_interval=2)
    simulate(a, true, 7)
    b = Balancer(policy="dynamic", global_batch=512, rebalance_interval=2)
    b.load_state_dict(a.state_dict())
    ha = simulate(a, true, 9, start=7, rng=random.Random(5))
    hb = simulate(b, true, 9, start=7, rng=random.Random(5))
    assert ha == hb


def test_proportional_without_launcher_profiles_uses_the_replicas_own() -> None:
    """In a cluster the replicas profile themselves; profiles arrive with step 0's stats."""
    bal = Balancer(policy="proportional", global_batch=300, rebalance_interval=50)
    first = bal.allocation_for([0, 1], 0)
    assert first is not None and first.allocation == {0: 150, 1: 150}
    change = bal.observe(0, {0: (150, 0.15), 1: (150, 0.30)},
                         profiles={0: Speed(0, 1e-3), 1: Speed(0, 2e-3)})
    assert change is not None and change.step == 1 and change.allocation == {0: 200, 1: 100}
    assert "profiles received" in change.reason
    assert bal.observe(1, {0: (200, 0.2), 1: (100, 0.2)}, profiles={0: Speed(0, 1e-3)}) is None


def test_noisy_identical_machines_do_not_make_the_balancer_flap() -> None:
    """Three identical replicas with 20% timing jitter: the deadband alone rebalanced about
    about every other interval; the noise-aware threshold at most half as often."""

    def rebalances(plain: bool) -> tuple[int, dict[int, int]]:
        rng = random.Random(3)
        bal = Balancer(policy="dynamic", global_batch=512, rebalance_interval=5, deadband=0.05)
        if plain:
            bal.threshold = lambda members: bal.deadband
        bal.allocation_for([0, 1, 2], 0)
        for step in range(200):
            bal.observe(step, {s: (b, (0.004 + 1e-4 * b) * rng.lognormvariate(0, 0.2))
                               for s, b in bal.allocation.items()})
        return bal.rebalances, bal.allocation

    flapping, _ = rebalances(plain=True)
    calm, allocation = rebalances(plain=False)
    assert flapping >= 20 and calm <= 15 and 2 * calm <= flapping
    assert min(allocation.values()) >= 0.7 * 512 / 3  # nobody starved (the report ended 481/31/0)


def test_a_real_speed_difference_still_moves_the_split_under_noise() -> None:
    rng = random.Random(5)
    bal = Balancer(policy="dynamic", global_batch=512, rebalance_interval=5, deadband=0.05)
    bal.allocation_for([0, 1], 0)
    for step in range(60):
        bal.observe(step, {s: (b, (0.004 + 1e-4 * b / (1.0 if s == 0 else 0.4)) * rng.lognormvariate(0, 0.2))
                           for s, b in bal.allocation.items()})
    assert bal.allocation[0] > 1.8 * bal.allocation[1]
