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


def garble_pages(path: Path, column: str) -> None:
    """Garble the pages of ``column`` in the first row group of the Parquet file ``path``, its
    footer intact, as a bad disk leaves a file."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    start, size = chunk.data_page_offset, chunk.total_compressed_size
    raw = bytearray(path.read_bytes())
    for i in range(start + 20, start + size - 10):
        raw[i] = (raw[i] * 7 + 13) % 256
    path.write_bytes(bytes(raw))


@pytest.fixture
def damaged_args_log(tmp_path: Path) -> Path:
    """A log whose ``args`` pages are damaged: the checking pass of ``read_logs`` (which does
    not decode ``args``) passes, reading the events for the audit fails."""
    import polars as pl

    n = 20_000
    path = tmp_path / "damaged" / "bad.parquet"
    path.parent.mkdir()
    pl.DataFrame({"run_id": [f"r{i // 10:05d}" for i in range(n)], "step": [i % 10 + 1 for i in range(n)],
                  "action": ["search"] * n, "args": [f"query {i} with some text" for i in range(n)]}
                 ).write_parquet(path, compression="zstd")
    garble_pages(path, "args")
    return path
