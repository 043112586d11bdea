"""Who computes how much of each global batch.

``policy``: pure allocation math (water-filling with fixed overhead, integer shares, caps).
``estimator``: per-replica speed fits from measured step times.
``balancer``: the replicated state machine every replica runs identically.
"""

from potluck.balancer.balancer import Balancer, Decision
from potluck.balancer.estimator import SpeedEstimator
from potluck.balancer.policy import Speed, micro_batches, predicted_step_time, solve, split_equal

__all__ = [
    "Balancer",
    "Decision",
    "Speed",
    "SpeedEstimator",
    "micro_batches",
    "predicted_step_time",
    "solve",
    "split_equal",
]
