"""Launchers: start replica processes. ``LocalCluster`` runs a whole cluster on one machine."""

from potluck.launcher.local import LocalCluster
from potluck.launcher.process import spawn_replica

__all__ = ["LocalCluster", "spawn_replica"]
