"""The fix printed for a version mismatch is a command that works."""

from __future__ import annotations

from potluck.contracts.versions import compare_versions
from potluck.contracts.wire import Versions

HOST = Versions(python="3.11", torch="2.13.0+cpu", torchft="0.2.0", potluck="0.1.0")


def test_fixes_name_installable_versions() -> None:
    node = Versions(python="3.11", torch="2.12.1+cu121", torchft="0.1.1", potluck="0.0.9")
    fixes = {d.component: d.fix for d in compare_versions(HOST, node)}
    # No local version part: `pip install "torch==2.13.0+cpu"` does not resolve from PyPI.
    assert fixes["torch"] == 'pip install "torch==2.13.0"'
    assert fixes["torchft"] == 'pip install "torchft==0.2.0"'
    # potluck is not on PyPI: the fix is the host's checkout, not `pip install potluck==`.
    assert "pip install \"potluck" not in fixes["potluck"] and "make install" in fixes["potluck"]
