"""Cost profile and load curve on N events, next to a bare Polars scan and a plain pandas version.

Generates (once, cached under ``bench_data/cost_load_<N>/``) a 30-day demo fleet of about
``--events`` events with one injected load knee (:class:`driftwatch.synth.LoadSpec`), then
times, in one process:

* ``bare polars scan``: ``pl.scan_parquet`` of the columns the two functions read
  (``run_id, step, ts, action, agent, args, result, status, tokens, cost_usd,
  latency_ms, outcome``), collected: the floor any implementation pays to see the data;
* ``run_features`` and ``detect_loops + loop_summary``: the per-run stage the two share;
* ``cost_profile_from_runs`` and ``load_curve_from_runs``: the fleet stage;
* ``dw.cost_profile(scan)`` and ``dw.load_curve(scan)``: the public wrappers end to end
  (each scans, builds the per-run tables and detects loops itself);
* ``pandas cost`` / ``pandas load``: a plain pandas implementation of the same outputs
  (``read_parquet``, ``groupby``, a Python loop of bootstrap means; per-bucket groupbys, the
  hinge search and within-day permutations as loops over candidates and permutations), on
  at most ``--pandas-max`` events.

Prints a table of seconds, events/s and the ratio to the bare scan.

Usage::

    python benchmarks/bench_cost_load.py --events 1_000_000      # quick
    python benchmarks/bench_cost_load.py --events 10_000_000
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import driftwatch as dw  # noqa: E402
from driftwatch import synth  # noqa: E402
from driftwatch.costs import cost_profile_from_runs  # noqa: E402
from driftwatch.load import load_curve_from_runs  # noqa: E402

DAYS = 30
SEED = 11
EVENTS_PER_RUN = 13.2  # demo fleet, measured
COLUMNS = [
    "run_id", "step", "ts", "action", "agent", "args", "result", "status",
    "input_tokens", "output_tokens", "cost_usd", "latency_ms", "outcome",
]


def fleet_path(events: int, data: Path) -> Path:
    """Generate the fleet once (day by day, bounded memory) and return its events folder."""
    root = data / f"cost_load_{events}"
    done = root / ".complete"
    if not done.exists():
        runs_per_day = max(50, round(events / (DAYS * EVENTS_PER_RUN)))
        # planner's busiest minutes reach ~1.6e-3 * runs_per_day * 0.31 runs: put the knee below that
        threshold = max(2.0, round(runs_per_day * 1.6e-3 * 0.31 * 0.6))
        scenario = synth.Scenario(load=(synth.LoadSpec("planner", threshold=threshold, slope=0.5),))
        t = time.perf_counter()
        info = synth.write_fleet(root, days=DAYS, runs_per_day=runs_per_day, seed=SEED, scenario=scenario)
        print(f"generated {info['events']:,} events ({info['runs']:,} runs) in {time.perf_counter() - t:.0f}s")
        done.write_text(str(info))
    return root / "events"


def timed(label: str, fn: Callable[[], Any], rows: list[tuple[str, float]]) -> Any:
    gc.collect()
    t = time.perf_counter()
    out = fn()
    rows.append((label, time.perf_counter() - t))
    print(f"  {label:<44} {rows[-1][1]:8.2f} s", flush=True)
    return out


# ------------------------------------------------------------------------------------------
# plain pandas implementation of the same outputs


def pandas_runs(path: Path, limit: int) -> Any:
    import pandas as pd

    df = pl.scan_parquet(path / "**/*.parquet").select(COLUMNS).head(limit).collect().to_pandas()
    df = df.sort_values(["run_id", "step"])
    tool = df["action"] != "llm"
    # previous tool step of the same run (LLM steps skipped): shift the tool rows within runs
    tools = df.loc[tool, ["run_id", "action", "status"]]
    by_run = tools.groupby("run_id", sort=False)
    retry = (tools["action"] == by_run["action"].shift()) & (by_run["status"].shift() == "error")
    df["retry"] = retry.reindex(df.index, fill_value=False).astype(bool)
    df["err"] = df["status"] == "error"
    df["err_cost"] = df["cost_usd"].where(df["err"], 0.0)
    df["retry_cost"] = df["cost_usd"].where(df["retry"], 0.0)
    g = df.groupby("run_id")
    runs = g.agg(
        agent=("agent", "first"),
        first_ts=("ts", "min"),
        last_ts=("ts", "max"),
        n_steps=("step", "size"),
        n_errors=("err", "sum"),
        n_retries=("retry", "sum"),
        cost_usd=("cost_usd", "sum"),
        error_cost_usd=("err_cost", "sum"),
        retry_cost_usd=("retry_cost", "sum"),
        latency_ms=("latency_ms", "sum"),
        outcome=("outcome", "last"),
    )
    runs["n_tool"] = tool.groupby(df["run_id"]).sum()
    return pd.DataFrame(runs).reset_index()


def pandas_cost(runs: Any, volume: float) -> Any:
    import pandas as pd

    rng = np.random.default_rng(0)
    out = []
    for agent, sub in [*runs.groupby("agent"), ("all", runs)]:
        c = sub["cost_usd"]
        total = c.sum()
        boot = [c.sample(len(c), replace=True, random_state=int(rng.integers(1 << 31))).mean() for _ in range(1000)]
        n = volume * len(sub) / len(runs)
        out.append(
            {
                "series": agent,
                "runs": len(sub),
                "p50": c.quantile(0.5),
                "p90": c.quantile(0.9),
                "p99": c.quantile(0.99),
                "max": c.max(),
                "error_share": sub["error_cost_usd"].sum() / total,
                "retry_share": sub["retry_cost_usd"].sum() / total,
                "projected": n * c.mean(),
                "lo": n * np.quantile(boot, 0.025),
                "hi": n * np.quantile(boot, 0.975),
            }
        )
    return pd.DataFrame(out)


def pandas_load(runs: Any, n_perm: int = 99) -> Any:
    import pandas as pd

    rng = np.random.default_rng(0)
    runs = runs.copy()
    runs["bucket"] = runs["first_ts"].dt.floor("1min")
    runs["error_rate"] = runs["n_errors"] / runs["n_steps"]
    out = []
    for agent, sub in [*runs.groupby("agent"), ("all", runs)]:
        b = sub.groupby("bucket").agg(
            started=("run_id", "size"),
            error_rate=("error_rate", "mean"),
            steps_per_run=("n_steps", "mean"),
            cost_per_run=("cost_usd", "mean"),
        )
        b["day"] = b.index.floor("1D")
        for metric in ("error_rate", "steps_per_run", "cost_per_run"):
            y = b[metric] - b.groupby("day")[metric].transform("mean")
            knees = np.unique(np.quantile(b["started"], np.linspace(0.05, 0.95, 40)))

            def best(yy: pd.Series, b: Any = b, knees: np.ndarray = knees) -> tuple[float, float]:
                top = (-1.0, 0.0)
                for k in knees:
                    h = (b["started"] - k).clip(lower=0)
                    h = h - h.groupby(b["day"]).transform("mean")
                    hh = (h * h).sum()
                    if hh > 0:
                        gain = float((h * yy).sum() ** 2 / hh)
                        top = max(top, (gain, float(k)))
                return top

            gain, knee = best(y)
            null = [
                best(y.groupby(b["day"]).transform(lambda s: s.sample(frac=1.0, random_state=int(rng.integers(1 << 31))).values))[0]
                for _ in range(n_perm)
            ]
            out.append({"series": agent, "metric": metric, "knee": knee, "p_value": (1 + sum(g >= gain for g in null)) / (1 + n_perm)})
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--pandas-max", type=int, default=2_000_000, help="largest input given to the pandas baseline")
    ap.add_argument("--data", type=Path, default=ROOT / "bench_data")
    ap.add_argument("--volume", type=float, default=500_000.0, help="runs per day for the projection")
    args = ap.parse_args()

    path = fleet_path(args.events, args.data)
    scan = pl.scan_parquet(path / "**/*.parquet", hive_partitioning=False)
    n_events = scan.select(pl.len()).collect().item()
    print(f"{n_events:,} events, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"polars {pl.__version__}, numpy {np.__version__}")

    # warm-up on a small slice: imports (scipy.stats, ruptures) and first-call allocations
    small = scan.head(20_000).collect()
    dw.cost_profile(small, volume_per_day=1000.0)
    dw.load_curve(small)

    rows: list[tuple[str, float]] = []
    timed("bare polars scan (same columns)", lambda: scan.select(COLUMNS).collect(), rows)
    timed("bare polars scan + group_by(run_id)", lambda: scan.group_by("run_id").agg(
        pl.col("cost_usd").sum(), pl.col("ts").min().alias("t0"), pl.col("ts").max().alias("t1"), pl.len()).collect(), rows)
    feats = timed("run_features", lambda: dw.run_features(scan), rows)
    loops = timed("detect_loops + loop_summary", lambda: dw.loop_summary(dw.detect_loops(scan)), rows)
    cost = timed("cost_profile_from_runs (fleet stage)",
                 lambda: cost_profile_from_runs(feats, loops=loops, volume_per_day=args.volume), rows)
    load = timed("load_curve_from_runs (fleet stage)", lambda: load_curve_from_runs(feats, loops=loops), rows)
    timed("dw.cost_profile(scan)  (end to end)", lambda: dw.cost_profile(scan, volume_per_day=args.volume), rows)
    timed("dw.load_curve(scan)  (end to end)", lambda: dw.load_curve(scan), rows)

    n_pd = min(n_events, args.pandas_max)
    prow: list[tuple[str, float]] = []
    pruns = timed(f"pandas per-run table ({n_pd:,} events)", lambda: pandas_runs(path, n_pd), prow)
    timed("pandas cost profile", lambda: pandas_cost(pruns, args.volume), prow)
    timed("pandas load curve (3 metrics, started, 99 perms)", lambda: pandas_load(pruns), prow)

    scan_s = rows[0][1]
    print("\n| step | events | seconds | events/s | x bare scan |\n|---|---:|---:|---:|---:|")
    for label, sec in rows:
        print(f"| {label} | {n_events:,} | {sec:.2f} | {n_events / sec:,.0f} | {sec / scan_s:.1f} |")
    for label, sec in prow:
        print(f"| {label} | {n_pd:,} | {sec:.2f} | {n_pd / sec:,.0f} | {sec / scan_s * n_events / n_pd:.1f}* |")
    print("\n* pandas ratios are scaled to the same number of events (seconds per event vs the scan).")
    print("\nfleet cost profile (all):")
    print(cost.filter(pl.col("series") == "all").select(
        "runs", "cost_p50", "cost_p99", "p99_over_p50", "loop_share", "projected_daily_usd",
        "projected_daily_lo", "projected_daily_hi", "worst_run_expected_usd", "worst_run_method"))
    print("\nsignificant knees:")
    print(load.filter("significant").select("series", "metric", "load_kind", "knee", "below", "above", "p_value"))


if __name__ == "__main__":
    main()
