"""Logging for the library: everything goes to the ``potluck`` logger.

The library never configures the root logger. ``setup_logging`` is called by entry points
(the CLI, a replica process) only; its level comes from ``POTLUCK_LOG_LEVEL`` (default
WARNING). ``IdentityAdapter`` prefixes every line with who is speaking, for example
``[node-a/replica 2 step 140]``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

LOGGER_NAME = "potluck"


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def setup_logging(stream: Any = None) -> None:
    """Attach one stderr handler to the ``potluck`` logger (idempotent). Entry points only."""
    logger = logging.getLogger(LOGGER_NAME)
    level = os.environ.get("POTLUCK_LOG_LEVEL", "WARNING").upper()
    logger.setLevel(getattr(logging, level, logging.WARNING))
    if not any(getattr(h, "_potluck", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler._potluck = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    quiet_rust_logs()


def quiet_rust_logs() -> None:
    """torchft's Rust side logs every quorum at INFO: keep warnings only, unless the user set
    RUST_LOG or asked potluck for INFO/DEBUG. Takes effect before torchft is first imported."""
    if os.environ.get("POTLUCK_LOG_LEVEL", "").upper() not in ("DEBUG", "INFO"):
        os.environ.setdefault("RUST_LOG", "warn")


class IdentityAdapter(logging.LoggerAdapter):
    """Prefixes each message with an identity computed at log time (it may change: the step)."""

    def __init__(self, logger: logging.Logger, identity: Callable[[], str]) -> None:
        super().__init__(logger, {})
        self._identity = identity

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self._identity()}] {msg}", kwargs
