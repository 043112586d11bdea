"""Foreign text (job and node names, gloo errors, IPv6 addresses) is printed as text, never
parsed as Rich markup: ``[/oops]`` must not crash a command or vanish from the output."""

from __future__ import annotations

import io

from rich.console import Console

from potluck.cli import cluster_view as view
from potluck.cli.main import error_line
from potluck.contracts import wire as s
from potluck.contracts.jobspec import JobSpec


def render(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(renderable)
    return out.getvalue()


def test_job_names_and_messages_with_brackets_print_verbatim(capsys) -> None:  # type: ignore[no-untyped-def]
    job = s.JobInfo(id=1, name="[/oops]", state="running", config=JobSpec(), created_at=0.0,
                    started_at=None, finished_at=None,
                    progress=s.JobProgress(shares={"[bold]x": 1.0}), replicas=[],
                    summary=None, message=None)
    assert "[/oops]" in render(view.jobs_table([job]))
    assert "[bold]x" in view_text(view.progress_text(job))
    error_line("gloo: [/tmp/pair.cc:553] Connection closed by peer [fd77::4]:29929")
    err = capsys.readouterr().err
    assert "[/tmp/pair.cc:553]" in err and "[fd77::4]:29929" in err


def view_text(markup: str) -> str:
    from rich.text import Text

    return Text.from_markup(markup).plain
