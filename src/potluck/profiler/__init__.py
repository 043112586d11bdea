"""``potluck profile``: how fast this machine's devices train a model, and how much fits."""

from potluck.profiler.profile import (
    BatchTiming,
    DeviceProfile,
    parse_batch_sizes,
    profile_device,
    profile_devices,
)

__all__ = [
    "BatchTiming",
    "DeviceProfile",
    "parse_batch_sizes",
    "profile_device",
    "profile_devices",
]
