"""The one exception tree of potluck.

Every error potluck raises on purpose derives from :class:`PotluckError`; the CLI catches
only that class, prints its message on one line and exits with ``exit_code``. Third-party
errors are translated once, at the boundary, with ``raise X(...) from exc``.

::

    PotluckError                    exit 1 unless stated
    ├── ConfigError                 bad user input (flags, YAML, speeds, sizes)   exit 2
    ├── DataError                   unknown or unreadable data set                exit 2
    ├── ModelError                  unknown model                                 exit 2
    ├── ExperimentDirError          experiments dir not writable                  exit 2
    ├── TrainingError               a replica or a job failed
    ├── ClusterError                control-plane problems
    │   ├── HostUnreachableError    cannot reach the coordinator
    │   ├── AuthError               missing or wrong token
    │   ├── VersionMismatchError    node and host run different versions
    │   ├── PortInUseError          a port we must bind is taken
    │   ├── NetworkConfigError      no usable address / public address refused
    │   └── PreflightError          (doctor/remote.py) a job would fail: names the pair + fix
    └── DoctorError                 a check could not run at all

A message says what happened, the likely cause and the fix, in one line.
"""

from __future__ import annotations


class PotluckError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class ConfigError(PotluckError, ValueError):
    """User input is invalid. The message names the field and the bad value."""

    exit_code = 2


class DataError(ConfigError):
    """Unknown data set, or its files cannot be read."""


class ModelError(ConfigError):
    """Unknown model name."""


class ExperimentDirError(ConfigError):
    """The experiments directory cannot be created or written."""


class TrainingError(PotluckError):
    """Training could not go on (all replicas lost, a replica crashed at start, ...)."""


class ClusterError(PotluckError):
    """A control-plane problem: coordinator, agents, tokens, addresses."""


class HostUnreachableError(ClusterError):
    """The coordinator could not be reached."""


class AuthError(ClusterError):
    """The token is missing or wrong."""


class VersionMismatchError(ClusterError):
    """This node's Python/torch/torchft/potluck differ from the host's."""


class PortInUseError(ClusterError):
    """A port potluck has to bind is already taken."""


class NetworkConfigError(ClusterError):
    """No usable address, or an address that must not be used (public without opt-in)."""


class DoctorError(PotluckError):
    """A diagnostic check could not run at all."""
