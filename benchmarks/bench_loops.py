"""Benchmark loop detection: driftwatch vs a pandas per-run Python scan vs a bare Polars scan.

Generates (once, cached under ``--data-dir``, default ``bench_data/``) a fleet with ``driftwatch.synth.write_fleet``:
by default 10M events in about 100k runs (agents make ~50 tool calls per run, an LLM step
before each), then times in one process:

* ``detect_loops`` exact (``fuzzy=False``) and fuzzy (default), on the events in memory and
  on a lazy Parquet scan (which includes reading the files);
* the first implementation a data team would write: pandas ``groupby("run_id")`` with a
  Python scan per run for periods 1..8 (exact signatures, no fuzzy matching), timed on a
  subsample of whole runs and extrapolated linearly to the full size (it is linear in runs);
* the floor: a bare Polars scan + ``group_by("run_id")`` of the same columns, from Parquet
  and in memory.

It prints a table with events/s and ratios (and the CPU seconds of the timed runs, all threads:
steadier than wall time on a shared machine), and (``--memory``) the peak RSS of
``detect_loops`` (exact and fuzzy) on the lazy scan, each measured in a fresh subprocess.

Usage::

    python benchmarks/bench_loops.py                      # 10M events / ~100k runs
    python benchmarks/bench_loops.py --events 1000000     # quick run
    python benchmarks/bench_loops.py --events 10000000 --memory
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftwatch import synth  # noqa: E402
from driftwatch.loops import detect_loops  # noqa: E402

COLUMNS = ["run_id", "step", "action", "args", "result", "status", "input_tokens", "output_tokens", "cost_usd",
           "agent"]
RUNS_PER_DAY = 4000


def make_data(n_events: int, *, tool_calls: float, seed: int, data_dir: Path) -> Path:
    """Write (once) a fleet of about ``n_events`` events and return its events directory.

    Fleets of a week or more: ``RUNS_PER_DAY`` runs per weekday over as many days as it takes.
    Smaller ones (under about 2.2M events at 50 tool calls): fewer days, and fewer runs per day
    so that the fleet still holds about ``n_events`` events (a one-day fleet is a weekday).
    """
    base = synth.Scenario()
    agents = tuple(dataclasses.replace(a, mean_tool_calls=tool_calls) for a in base.agents)
    scenario = dataclasses.replace(base, agents=agents)
    # measured over weeks: ~1.94 events per mean tool call per run, ~89% of RUNS_PER_DAY on average (weekends)
    days = max(1, round(n_events / (1.94 * tool_calls * 0.89 * RUNS_PER_DAY)))
    runs_per_day = RUNS_PER_DAY
    if days < 7:
        # measured on single days: ~1.79 events per mean tool call per run, runs_per_day runs on a weekday and
        # (1 - weekly_swing) of that on a weekend day
        start = date(2026, 10, 1)  # write_fleet's default start (a Thursday)
        weekdays = sum(1.0 - scenario.weekly_swing if (start + timedelta(days=d)).weekday() >= 5 else 1.0
                       for d in range(days))
        runs_per_day = max(1, round(n_events / (1.79 * tool_calls * weekdays)))
    root = data_dir / f"loops_{n_events}_{tool_calls:g}_{seed}"
    done = root / "counts.json"
    if not done.exists():
        t = time.perf_counter()
        counts = synth.write_fleet(root, days=days, runs_per_day=runs_per_day, seed=seed, scenario=scenario)
        done.write_text(json.dumps(counts))
        print(f"generated {counts} in {time.perf_counter() - t:.1f}s -> {root}", file=sys.stderr)
    return root / "events"


CPU: dict[float, float] = {}  # best wall time -> CPU seconds of that run (all threads)


def peak_rss_mb() -> float:
    """Peak resident memory of this process. Linux's ``ru_maxrss`` carries over the parent's
    peak into a child it spawns (``execve`` keeps the old high-water mark), so the child of
    ``--memory`` reads its own ``VmHWM`` instead."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall = time.perf_counter() - t
        if wall < best:
            best = wall
            CPU[best] = time.process_time() - c
    return best, out


def pandas_scan(df: pd.DataFrame, *, max_period: int = 8, min_repeats: int = 3) -> list[tuple]:
    """The naive implementation: group by run, then a Python scan per run and period.

    Exact signatures only: a tool step matches the one ``p`` earlier when action, args and
    result are equal (a failed call's result counts as "failed"). Returns (run_id, start, end) in tool-call positions, one per extent,
    without the loops nested inside longer ones; then the repeated LLM calls: (run_id, "llm",
    start, end) in step positions for every stretch of at least ``min_repeats`` LLM steps in a
    row with one (recorded) prompt.
    """
    found: list[tuple] = []
    df = df.sort_values(["run_id", "step"])
    for run_id, g in df.groupby("run_id", sort=False):
        acts, prompts = g["action"].tolist(), g["args"].tolist()
        i = 0
        while i < len(acts):
            j = i + 1
            if acts[i] == "llm" and prompts[i]:
                while j < len(acts) and acts[j] == "llm" and prompts[j] == prompts[i]:
                    j += 1
                if j - i >= min_repeats:
                    found.append((run_id, "llm", i, j - 1))
            i = j
    tools = df[df["action"] != "llm"]
    for run_id, g in tools.groupby("run_id", sort=False):
        # a failed call's result is "failed", whatever the message (as in detect_loops)
        result = g["result"].where(g["status"] != "error", "<error>")
        sig = list(zip(g["action"], g["args"], result, strict=True))
        n = len(sig)
        seen: set[tuple[int, int]] = set()
        for p in range(1, max_period + 1):
            i = p
            while i < n:
                if sig[i] != sig[i - p]:
                    i += 1
                    continue
                j = i
                while j < n and sig[j] == sig[j - p]:
                    j += 1
                if j - i >= p * (min_repeats - 1) and (i - p, j - 1) not in seen:
                    seen.add((i - p, j - 1))
                i = j
        # a loop strictly inside another one is part of it
        for s, e in seen:
            if not any(s2 <= s and e <= e2 and (s2, e2) != (s, e) for s2, e2 in seen):
                found.append((run_id, s, e))
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000, help="fleet size in events (default 10M)")
    ap.add_argument("--tool-calls", type=float, default=50.0,
                    help="mean tool calls per run (default 50: ~100 events per run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pandas-events", type=int, default=200_000,
                    help="events in the whole-run subsample timed for the pandas baseline")
    ap.add_argument("--repeat", type=int, default=3, help="best of N timings (default 3)")
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS in a subprocess")
    ap.add_argument("--data-dir", default=str(ROOT / "bench_data"),
                    help="where the generated fleet is cached (default: bench_data/ in the repository)")
    ap.add_argument("--_rss", help=argparse.SUPPRESS)
    ap.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-streaming", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._rss:  # child process of --memory
        lf = pl.scan_parquet(Path(args._rss) / "**" / "*.parquet", hive_partitioning=True).select(COLUMNS)
        out = detect_loops(lf, streaming=not args.no_streaming, fuzzy=not args.exact)
        print(json.dumps({"loops": out.height, "max_rss_mb": peak_rss_mb()}))
        return 0

    events_dir = make_data(args.events, tool_calls=args.tool_calls, seed=args.seed, data_dir=Path(args.data_dir))
    glob = str(events_dir / "**" / "*.parquet")

    def scan() -> pl.LazyFrame:
        return pl.scan_parquet(glob, hive_partitioning=True).select(COLUMNS)

    t_read, df = best_of(lambda: scan().collect(), 1)
    n = df.height
    n_runs = df["run_id"].n_unique()
    print(f"fleet: {n:,} events, {n_runs:,} runs ({n / n_runs:.0f} events/run); read in {t_read:.2f}s",
          file=sys.stderr)

    rows: list[tuple[str, float, str]] = []
    r = args.repeat

    # floor: bare Polars scan + group_by of the same columns
    def floor(lf: pl.LazyFrame) -> pl.DataFrame:
        return lf.group_by("run_id").agg(
            pl.len(), pl.col("step").max(), pl.col("action").n_unique(), pl.col("args").first(),
            pl.col("result").last(), (pl.col("status") == "error").sum(), pl.col("input_tokens").sum(),
            pl.col("output_tokens").sum(), pl.col("cost_usd").sum(), pl.col("agent").first(),
        ).collect()

    t_floor_scan, _ = best_of(lambda: floor(scan()), r)
    t_floor_mem, _ = best_of(lambda: floor(df.lazy()), r)

    t_exact, loops_exact = best_of(lambda: detect_loops(df, fuzzy=False), r)
    t_fuzzy, loops_fuzzy = best_of(lambda: detect_loops(df), r)
    t_exact_scan, _ = best_of(lambda: detect_loops(scan(), fuzzy=False), r)
    t_fuzzy_scan, _ = best_of(lambda: detect_loops(scan()), r)

    # pandas baseline on a subsample of whole runs, extrapolated linearly
    runs = df.select("run_id").unique(maintain_order=True)["run_id"]
    k = max(1, int(len(runs) * min(1.0, args.pandas_events / n)))
    sub = df.filter(pl.col("run_id").is_in(runs.head(k).implode()))
    pdf = sub.to_pandas()
    t_pd_sub, pd_found = best_of(lambda: pandas_scan(pdf), 1)
    t_pd = t_pd_sub * n / sub.height
    # sanity check: the same exact loops on the subsample (kind exact/error_retry matched on
    # signatures, and repeated LLM calls)
    ours = detect_loops(sub, fuzzy=False)
    n_ours = ours.filter(pl.col("match") != "action").height

    rows += [
        ("detect_loops exact, in memory", t_exact, ""),
        ("detect_loops fuzzy (default), in memory", t_fuzzy, ""),
        ("detect_loops exact, Parquet scan", t_exact_scan, "includes reading the files"),
        ("detect_loops fuzzy, Parquet scan", t_fuzzy_scan, "includes reading the files"),
        ("pandas groupby + Python scan per run", t_pd,
         f"timed on {sub.height:,} events ({k:,} runs): {t_pd_sub:.2f}s, extrapolated"),
        ("bare Polars scan + group_by (floor)", t_floor_scan, "same columns, from Parquet"),
        ("bare Polars group_by, in memory", t_floor_mem, "same columns"),
    ]
    print()
    print(f"{n:,} events, {n_runs:,} runs; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {os.getloadavg()[0]:.1f}; polars {pl.__version__}, numpy {np.__version__}, "
          f"pandas {pd.__version__}; best of {r}")
    print()
    print("| method | seconds | CPU seconds | M events/s | vs pandas | vs floor (same input) | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, t, note in rows:
        floor_t = t_floor_scan if "Parquet" in name or "scan +" in name else t_floor_mem
        vs_floor = f"{t / floor_t:.1f}x" if "pandas" not in name else ""
        cpu = f"{CPU[t]:.2f}" if t in CPU else ""
        print(f"| {name} | {t:.2f} | {cpu} | {n / t / 1e6:.1f} | {t_pd / t:,.0f}x | {vs_floor} | {note} |")
    print()
    print(f"fuzzy / exact cost: {t_fuzzy / t_exact:.2f}x in memory ({CPU[t_fuzzy] / CPU[t_exact]:.2f}x in CPU time), "
          f"{t_fuzzy_scan / t_exact_scan:.2f}x from Parquet")
    print(f"loops found: exact mode {loops_exact.height:,}, fuzzy mode {loops_fuzzy.height:,} "
          f"({loops_fuzzy.filter(pl.col('kind') != 'same_action').height:,} exact/error_retry)")
    print(f"pandas check on the subsample: {len(pd_found):,} signature loops and repeated LLM calls vs "
          f"detect_loops {n_ours:,}")

    if args.memory:
        for mode in ("exact", "fuzzy"):
            cmd = [sys.executable, __file__, "--_rss", str(events_dir)] + (["--exact"] if mode == "exact" else [])
            child = subprocess.run(cmd, capture_output=True, text=True, check=True)
            info = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"peak RSS of detect_loops {mode} on the lazy scan (streaming, fresh process): "
                  f"{info['max_rss_mb']:,.0f} MB for {n:,} events ({info['loops']:,} loops)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
