"""Networking helpers shared by the host, the agents and ``potluck doctor``."""
