"""The job options every command shares, generated from the one table in the job spec.

``@job_options`` adds one ``--flag`` per :data:`~potluck.contracts.jobspec.JOB_OPTIONS` entry
to a Typer command and hands the command the values given as ``job_flags`` (a dict of flat
option names; a flag not given is None). ``potluck demo`` and ``potluck train`` use it, so
they take the same options with the same help, and a new job knob is added in one place.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import typer

from potluck.contracts.jobspec import JOB_OPTIONS, JobSpec

_DEFAULTS = JobSpec().model_dump()


def _default(path: str) -> Any:
    node: Any = _DEFAULTS
    for part in path.split("."):
        node = node[part]
    return node


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def job_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: ``func(..., job_flags: dict)`` becomes a command with every job option."""
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name != "job_flags"]
    annotations = {k: v for k, v in func.__annotations__.items() if k != "job_flags"}
    for opt in JOB_OPTIONS:
        default = _default(opt.path)
        shown = "none" if default is None else default
        help_text = f"{opt.help} [job field {opt.path}; default: {shown}]"
        params.append(inspect.Parameter(
            opt.name, inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, flag(opt.name), help=help_text, show_default=False),
            annotation=opt.type | None,
        ))
        annotations[opt.name] = opt.type | None

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        job_flags = {opt.name: kwargs.pop(opt.name, None) for opt in JOB_OPTIONS}
        return func(job_flags=job_flags, **kwargs)

    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    return command
