"""``potluck demo`` and ``potluck profile``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from potluck.cli.options import job_options
from potluck.contracts.jobspec import JobSpec

DEMO_STEPS = 60
"""What the demo trains when neither --steps nor --epochs is given."""


def _job_from_flags(job_flags: dict[str, Any], job_file: Path | None = None) -> JobSpec:
    if job_file is not None:
        from potluck.cli.cluster import job_config

        if not job_file.is_file():
            from potluck.contracts.errors import ConfigError

            raise ConfigError(f"--job {job_file} not found: pass the path of your .py job file")
        spec = job_config(None, job_flags, job_file)
        if spec.steps is None and spec.epochs is None:
            spec = spec.updated({"steps": DEMO_STEPS})
        return spec
    if job_flags.get("steps") is None and job_flags.get("epochs") is None:
        job_flags = {**job_flags, "steps": DEMO_STEPS}
    return JobSpec().with_options(job_flags)


def _summary_table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="potluck demo summary")
    table.add_column("")
    for r in results:
        table.add_column(r["policy"], justify="right")
    rows = [
        ("samples/s", lambda r: f"{r['samples_per_s']:.0f}"),
        ("ideal samples/s (measured)", lambda r: f"{r['ideal_samples_per_s']:.0f}"),
        ("efficiency", lambda r: f"{r['efficiency']:.1%}"),
        ("steps x global batch", lambda r: f"{r['steps']} x {r['global_batch']}"),
        ("final loss", lambda r: f"{r['final_loss']:.4f}" if r["final_loss"] is not None else "-"),
        ("test accuracy", lambda r: f"{r['test_accuracy']:.1%}" if r["test_accuracy"] is not None else "-"),
        ("final allocation", lambda r: " / ".join(str(v) for _, v in sorted(r["allocation"].items(), key=lambda kv: int(kv[0])))),
        ("rebalances", lambda r: str(r["rebalances"])),
        ("wall time", lambda r: f"{r['wall_s']:.1f} s"),
    ]
    for label, fmt in rows:
        table.add_row(label, *[fmt(r) for r in results])
    return table


def render_profiles(profiles: list[Any]) -> Table:
    table = Table(title="potluck profile")
    for col in ("device", "batch", "samples/s", "forward ms", "backward ms", "optimizer ms"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for p in profiles:
        for i, t in enumerate(p.timings):
            table.add_row(f"{p.device} ({p.device_name})" if i == 0 else "", str(t.batch),
                          f"{t.samples_per_s:,.0f}", f"{t.forward_s * 1e3:.2f}",
                          f"{t.backward_s * 1e3:.2f}", f"{t.optimizer_s * 1e3:.2f}")
        table.add_row("", "fit", f"{1 / p.sample_s:,.0f} max", f"overhead {p.overhead_s * 1e3:.2f} ms",
                      f"largest batch {p.max_batch:,}", f"budget {p.memory_budget_mb:,.0f} MiB",
                      end_section=True)
    return table


@job_options
def demo(
    job_flags: dict[str, Any],
    job_file: Path = typer.Option(None, "--job", help="Train your own job file (a .py defining model, dataset and loss; see docs/jobfiles.md) instead of a built-in model."),
    nodes: int = typer.Option(None, "--nodes", help="Number of emulated nodes (default 3, or the length of --speeds)."),
    speeds: str = typer.Option(None, "--speeds", help="Comma list, one emulated speed per node (1.0 = full speed), e.g. 1,0.5,0.25."),
    compare: bool = typer.Option(False, "--compare", help="Also run the equal policy (plain DDP) and show both."),
    save_model: str = typer.Option(None, "--save-model", help="Write the final model here (safetensors if the name ends in .safetensors, else torch.save)."),
    experiments_dir: Path = typer.Option(Path("experiments"), "--experiments-dir", help="Where run folders are written."),
    name: str = typer.Option(None, "--name", help="Run name (default demo-<policy>-<time>)."),
    emulated_sample_ms: float = typer.Option(None, "--emulated-sample-ms", help="Per-sample time of the speed-1.0 emulated device (default: measured, >= 1 ms)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else."),
) -> None:
    """Run a whole cluster on this machine: a Lighthouse and one replica per emulated node
    (60 steps unless --steps or --epochs)."""
    from potluck.demo.runner import DemoConfig, parse_speeds, run_demo

    cfg = DemoConfig(
        job=_job_from_flags(job_flags, job_file),
        speeds=parse_speeds(speeds, nodes), compare=compare, experiments_dir=experiments_dir,
        name=name, save_model=save_model, emulated_sample_ms=emulated_sample_ms,
    )
    console = None if as_json else Console(stderr=False)
    result = run_demo(cfg, console)
    if as_json:
        print(json.dumps(result))
        return
    assert console is not None
    results = [result] + ([result["baseline"]] if "baseline" in result else [])
    console.print(_summary_table(results))
    if "baseline" in result:
        gain = result["samples_per_s"] / max(result["baseline"]["samples_per_s"], 1e-9)
        console.print(f"[bold green]{result['policy']}[/] is {gain:.2f}x the throughput of equal shares (plain DDP).")
    console.print(f"metrics: {result['run_dir']}")


def profile(
    model: str = typer.Option("mlp", "--model", help="Model: mlp or simple_cnn."),
    dataset: str = typer.Option("digits", "--dataset", help="Data set whose sample shape to use."),
    batch_sizes: str = typer.Option("16,64,256", "--batch-sizes", help="Comma list of batch sizes to time."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (every device found)."),
    memory_budget_mb: float = typer.Option(None, "--memory-budget-mb", help="CPU RAM budget for the largest batch (default: half the free RAM)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout and nothing else."),
) -> None:
    """Measure this machine's devices for a model: samples/s, forward/backward split, largest batch."""
    from potluck.profiler import parse_batch_sizes, profile_devices

    sizes = parse_batch_sizes(batch_sizes)
    console = None if as_json else Console()

    def announce(dev: str) -> None:
        if console is not None:
            console.print(f"profiling {model} on {dev} at batch sizes {sizes}...", markup=False)

    results = profile_devices(model=model, dataset=dataset, batch_sizes=sizes, device=device,
                              memory_budget_mb=memory_budget_mb, on_device=announce)
    if as_json:
        print(json.dumps([r.to_dict() for r in results]))
    else:
        assert console is not None
        console.print(render_profiles(results))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("profile")(profile)
