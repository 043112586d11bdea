"""The layers of docs/architecture.md, enforced: no module imports a layer above its own.

Every ``import potluck.x`` / ``from potluck.x import`` anywhere in a module (inside functions
too) is mapped to a layer; an import of a higher layer fails the test with file:line. The
training kernel and the contracts must also stay free of UI and web-server libraries.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "potluck"

LAYERS: dict[str, int] = {
    "potluck": 0, "potluck.log": 0, "potluck.system": 0, "potluck.registry": 0,
    "potluck.contracts": 1,
    "potluck.trainer": 2, "potluck.balancer": 2, "potluck.recipes": 2, "potluck.data": 2,
    "potluck.profiler": 2, "potluck.catalog": 2,
    "potluck.coordinator": 3, "potluck.agent": 3, "potluck.launcher": 3,
    "potluck.net": 4, "potluck.doctor": 4,
    "potluck.cli": 5, "potluck.demo": 5, "potluck.dashboard": 5, "potluck.__main__": 5,
}
FACADE = {"potluck": {"potluck.recipes.base"}}
"""Lazy public names of the package for job files (``potluck.TokenLoss``): imported on first
use only, so ``import potluck`` stays light."""
FORBIDDEN = {1: {"rich", "typer", "fastapi", "uvicorn"},
             2: {"rich", "typer", "fastapi", "uvicorn", "httpx"}}


def layer_of(module: str) -> int:
    """The layer of a dotted module name: its longest prefix in LAYERS."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return LAYERS[name]
    raise KeyError(f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py")


def imports(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``source`` (relative ones resolved)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: -node.level]
                base = ".".join(pkg + ([base] if base else []))
            out.append((node.lineno, base))
    return out


def violations(source: str, module: str, path: str) -> list[str]:
    mine = layer_of(module)
    found = []
    for line, name in imports(source, module):
        top = name.split(".")[0]
        if top == "potluck" and layer_of(name) > mine and name not in FACADE.get(module, ()):
            found.append(f"{path}:{line}: {module} (layer {mine}) imports {name} "
                         f"(layer {layer_of(name)})")
        if top in FORBIDDEN.get(mine, set()):
            found.append(f"{path}:{line}: {module} (layer {mine}) imports {name}")
    return found


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def test_no_module_imports_a_higher_layer() -> None:
    problems = []
    for module, path in modules():
        problems += violations(path.read_text(), module, str(path.relative_to(SRC.parents[1])))
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_every_module_has_a_layer() -> None:
    for module, _ in modules():
        layer_of(module)


@pytest.mark.parametrize(
    ("module", "source", "caught"),
    [
        ("potluck.trainer.x", "def f():\n    from potluck.coordinator import store\n", True),
        ("potluck.contracts.x", "import potluck.cli.main\n", True),
        ("potluck.balancer.x", "import rich.console\n", True),
        ("potluck.trainer.sub.x", "from ...cli import main\n", True),
        ("potluck.cli.x", "from potluck.trainer import replica\n", False),
        ("potluck.agent.x", "from potluck.launcher import process\n", False),
    ],
)
def test_the_checker_catches_violations(module: str, source: str, caught: bool) -> None:
    assert bool(violations(source, module, "fake.py")) is caught


def test_the_cli_and_the_agent_start_without_importing_torch() -> None:
    """torch takes seconds to import: commands that do not train must not pay for it."""
    import subprocess
    import sys

    code = ("import sys, potluck.cli.main, potluck.agent.node, potluck.coordinator.host; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
