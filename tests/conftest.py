"""Shared fixtures: small generated fleets on disk, and a CLI runner. Keep this file small."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 14-day demo fleet (~7k events, every kind of finding injected) written as hive Parquet.

    Returns the fleet root: events under ``events/date=YYYY-MM-DD/``, truth under ``truth/``.
    """
    from driftwatch import synth

    root = tmp_path_factory.mktemp("small_fleet")
    synth.write_fleet(root, days=14, runs_per_day=40, seed=11)
    return root


@pytest.fixture
def run_cli() -> Callable[..., tuple[int, str, str]]:
    """Run ``driftwatch`` in-process: ``code, stdout, stderr = run_cli("audit", ...)``."""
    from driftwatch.cli import main

    def run(*argv: str | Path) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main([str(a) for a in argv], stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    return run
