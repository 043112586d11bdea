"""The one exception tree of potluck.

Every error potluck raises on purpose derives from :class:`PotluckError`; the CLI catches
only that class, prints its message on one line and exits with ``exit_code``. Third-party
errors are translated once, at the boundary, with ``raise X(...) from exc``. Errors that
cross the HTTP API carry an ``http_status``: the coordinator answers with it and the client
(:mod:`potluck.contracts.client`) turns the status back into the same class.

::

    PotluckError                    exit 1 unless stated                       HTTP
    ├── ConfigError                 bad user input (flags, YAML, speeds, sizes) exit 2   422
    │   ├── DataError               unknown or unreadable data set
    │   ├── ModelError              unknown model or recipe
    │   └── ExperimentDirError      experiments dir not writable
    ├── TrainingError               a replica or a job failed
    │   ├── JobCodeError            the user's job file raised (file:line, exception)    exit 3
    │   ├── ReplicaMismatchError    replicas built different models or data sets          exit 3
    │   └── NoPeerError             a late replica found no peer to heal from             exit 3
    ├── ClusterError                control-plane problems                             500
    │   ├── HostUnreachableError    cannot reach the coordinator
    │   ├── AuthError               missing or wrong token                             401
    │   ├── NotFoundError           no such node, job or doctor round                   404
    │   ├── ConflictError           the request clashes with the cluster's state        409
    │   │   └── VersionMismatchError  node and host run different versions (``diffs``)
    │   ├── ApiResponseError        any other error status from the coordinator (``status``)
    │   ├── PortInUseError          a port we must bind is taken
    │   ├── NetworkConfigError      no usable address / public address refused
    │   └── PreflightError          a job would fail: names the failing pair and the fix
    └── DoctorError                 a check could not run at all

A message says what happened, the likely cause and the fix, in one line.
"""

from __future__ import annotations

from typing import Any


class PotluckError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with; ``http_status`` what the API answers."""

    exit_code: int = 1
    http_status: int = 500

    def payload(self) -> dict[str, Any]:
        """Extra JSON fields the API sends beside ``detail`` (none by default)."""
        return {}


class ConfigError(PotluckError, ValueError):
    """User input is invalid. The message names the field and the bad value."""

    exit_code = 2
    http_status = 422


class DataError(ConfigError):
    """Unknown data set, or its files cannot be read."""


class ModelError(ConfigError):
    """Unknown model or recipe name."""


class ExperimentDirError(ConfigError):
    """The experiments directory cannot be created or written."""


class TrainingError(PotluckError):
    """Training could not go on (all replicas lost, a replica crashed at start, ...)."""


class JobCodeError(TrainingError):
    """The user's job file raised. The message names the file:line and the exception; the
    full traceback is in the replica's log (``potluck logs JOB``). Restarting does not help."""

    exit_code = 3


class ReplicaMismatchError(TrainingError):
    """Replicas built different initial parameters or data sets (unseeded randomness in the
    job's code). Restarting does not help."""

    exit_code = 3


class NoPeerError(TrainingError):
    """A replica behind the job's step found no peer to heal from (the others finished or
    are gone): training the job again alone would give a different model."""

    exit_code = 3


FATAL_EXIT_CODE = 3
"""A replica exiting with this code hit an error a restart cannot fix (see JobCodeError)."""


class ClusterError(PotluckError):
    """A control-plane problem: coordinator, agents, tokens, addresses."""


class HostUnreachableError(ClusterError):
    """The coordinator could not be reached."""


class AuthError(ClusterError):
    """The token is missing or wrong."""

    http_status = 401


class NotFoundError(ClusterError):
    """The node, job or doctor round named in a request does not exist."""

    http_status = 404


class ConflictError(ClusterError):
    """The request clashes with the cluster's state (job already finished, no live node, ...)."""

    http_status = 409


class VersionMismatchError(ConflictError):
    """This node's Python/torch/torchft/potluck differ from the host's.

    ``diffs`` lists ``{"component", "node", "host", "fix"}`` per differing component, for a table.
    """

    def __init__(self, message: str, diffs: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.diffs = list(diffs or [])

    def payload(self) -> dict[str, Any]:
        return {"diffs": self.diffs}


class ApiResponseError(ClusterError):
    """The coordinator answered with an error status that has no class of its own."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class PortInUseError(ClusterError):
    """A port potluck has to bind is already taken."""


class NetworkConfigError(ClusterError):
    """No usable address, or an address that must not be used (public without opt-in)."""


class AddressSyntaxError(NetworkConfigError):
    """An address, host name or port the user typed is malformed: bad input, exit code 2."""

    exit_code = 2
    http_status = 422


class NodeAuthError(AuthError):
    """A call that acts for a node lacks that node's credential (or carries another's)."""


class ForbiddenError(ClusterError):
    """The caller is who it says, but may not do this (e.g. report results of a job it is
    not part of)."""

    http_status = 403


class MissingTokenError(AuthError):
    """No token was given (a missing input, exit code 2; a wrong token stays exit code 1)."""

    exit_code = 2


class StorageError(ClusterError):
    """The host's database cannot be read or written (disk full, I/O error, a corrupt file).
    The API answers 503 with the reason; it clears when the cause is fixed."""

    http_status = 503


class PreflightError(ClusterError):
    """The pre-flight check before a job found a problem that would make the job fail."""


class DoctorError(PotluckError):
    """A diagnostic check could not run at all."""


def error_for_status(status: int, detail: str, payload: dict[str, Any]) -> PotluckError:
    """The exception the client raises for an HTTP error ``status`` (the inverse of ``http_status``)."""
    if status == 401 and "node credential" in detail:
        return NodeAuthError(detail)
    if status == 401:
        return AuthError(detail)
    if status == 403:
        return ForbiddenError(detail)
    if status == 404:
        return NotFoundError(detail)
    if status == 409 and isinstance(payload.get("diffs"), list):
        return VersionMismatchError(detail, payload["diffs"])
    if status == 409:
        return ConflictError(detail)
    if status == 422:
        return ConfigError(detail)
    if status == 503:
        return StorageError(detail)
    return ApiResponseError(status, detail)
