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
  (``read_parquet``, ``groupby``, Python loops of bootstrap resamples as cost_profile draws
  them; per-bucket groupbys, the hinge search and within-day permutations as loops over
  candidates and permutations), on at most ``--pandas-max`` events.

Prints a table of seconds, events/s and the ratio to the bare scan, then checks the pandas
outputs against driftwatch's on the same events and prints the verdicts: the cost profile's run
counts, cost quantiles (p50, p90, p99, max), error and retry shares and projected daily spend
exactly (floats to a relative 1e-9), the interval ends of the projection within 15% of the
interval's width (bootstrap noise: they are simulated with other random draws); the per-bucket
load data (runs started, mean error rate, steps and cost per run per 1-minute bucket and series)
against ``load_buckets_from_runs`` exactly. The knee search of the pandas version is simpler
(no plateau, no refinement, fixed 99 permutations, no Bonferroni): its knees and p-values are
printed beside ``load_curve``'s, not checked.

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
from driftwatch.load import load_buckets_from_runs, load_curve_from_runs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checks import compare_tables  # noqa: E402

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


def pandas_cost(runs: Any, volume: float, n_boot: int = 1000, interval: float = 0.95) -> Any:
    """Per agent and for the fleet: run counts, cost quantiles (linear), cost shares of failed steps
    and retries, the projected daily spend at ``volume`` runs a day (split by the series' share of the
    runs) and its interval, simulated as cost_profile does: a double bootstrap when the resamples fit
    its budget of 2e7 draws, else bootstrap means of the run costs plus the day's own randomness
    (resampled sums of N runs, or their normal limit), clipped to N x [min, max]."""
    import pandas as pd

    budget = 20_000_000
    rng = np.random.default_rng(0)
    out = []
    for agent, sub in [*runs.groupby("agent"), ("all", runs)]:
        c = sub["cost_usd"].dropna()
        total = c.sum()
        n, big_n = len(c), volume * len(sub) / len(runs)
        n_int = max(1, round(big_n))

        def draw(k: int, x: pd.Series = c) -> pd.Series:
            return x.sample(k, replace=True, random_state=int(rng.integers(1 << 31)))

        if (n + n_int) * n_boot <= budget:  # each replicate: a resample of the runs, then a day drawn from it
            day = np.array([draw(n_int, draw(n)).sum() for _ in range(n_boot)]) * (big_n / n_int)
        else:
            if n * n_boot <= budget:
                means = np.array([draw(n).mean() for _ in range(n_boot)])
            else:
                means = c.mean() + c.std() / np.sqrt(n) * rng.standard_normal(n_boot)
            if n_int * n_boot <= budget:
                noise = np.array([draw(n_int).sum() for _ in range(n_boot)]) - n_int * c.mean()
            else:
                noise = c.std() * np.sqrt(big_n) * rng.standard_normal(n_boot)
            day = big_n * means + noise
        lo, hi = np.clip(np.quantile(day, [(1 - interval) / 2, (1 + interval) / 2]), big_n * c.min(), big_n * c.max())
        out.append(
            {
                "series": agent if agent == "all" else f"agent={agent}",
                "runs": len(sub),
                "p50": c.quantile(0.5),
                "p90": c.quantile(0.9),
                "p99": c.quantile(0.99),
                "max": c.max(),
                "error_share": sub["error_cost_usd"].sum() / total,
                "retry_share": sub["retry_cost_usd"].sum() / total,
                "projected": big_n * c.mean(),
                "lo": lo,
                "hi": hi,
            }
        )
    return pd.DataFrame(out)


#: pandas_cost column -> cost_profile column, compared exactly (floats to a relative 1e-9: sums in
#: another order)
COST_EXACT = {"runs": "runs", "p50": "cost_p50", "p90": "cost_p90", "p99": "cost_p99", "max": "cost_max",
              "error_share": "error_share", "retry_share": "retry_share", "projected": "projected_daily_usd"}
#: the interval ends: bootstrap noise, compared to within this share of driftwatch's interval width
#: (the 2.5% quantile of 1000 replicates moves by about 2% of the width from seed to seed)
INTERVAL_TOL = 0.15


def compare_cost(dw_cost: pl.DataFrame, pd_cost: Any) -> tuple[bool, list[str]]:
    d = {r["series"]: r for r in dw_cost.iter_rows(named=True)}
    notes = []
    for r in pd_cost.to_dict("records"):
        row = d.get(r["series"])
        if row is None:
            notes.append(f"{r['series']}: not in cost_profile")
            continue
        for pc, dc in COST_EXACT.items():
            if not np.isclose(r[pc], row[dc], rtol=1e-9, atol=1e-12):
                notes.append(f"{r['series']} {dc}: {row[dc]!r} vs pandas {r[pc]!r}")
        width = row["projected_daily_hi"] - row["projected_daily_lo"]
        for pc, dc in (("lo", "projected_daily_lo"), ("hi", "projected_daily_hi")):
            if abs(r[pc] - row[dc]) > INTERVAL_TOL * width:
                notes.append(f"{r['series']} {dc}: {row[dc]:.2f} vs pandas {r[pc]:.2f} (width {width:.2f})")
    if len(d) != len(pd_cost):
        notes.append(f"series: cost_profile {sorted(d)} vs pandas {sorted(pd_cost['series'])}")
    return not notes, notes


def pandas_buckets(runs: Any) -> Any:
    """Per agent (and the fleet) and 1-minute bucket of run starts: runs started and the mean error rate,
    steps and cost of those runs (load_curve's per-bucket data, as load_buckets_from_runs gives it)."""
    import pandas as pd

    runs = runs.copy()
    runs["bucket"] = runs["first_ts"].dt.floor("1min")
    runs["error_rate"] = runs["n_errors"] / runs["n_steps"]
    parts = []
    for agent, sub in [*runs.groupby("agent"), ("all", runs)]:
        b = sub.groupby("bucket").agg(
            started=("run_id", "size"),
            error_rate=("error_rate", "mean"),
            steps_per_run=("n_steps", "mean"),
            cost_per_run=("cost_usd", "mean"),
        )
        b["series"] = agent if agent == "all" else f"agent={agent}"
        parts.append(b.reset_index())
    return pd.concat(parts, ignore_index=True)


def compare_buckets(dw_buckets: pl.DataFrame, pd_buckets: Any) -> tuple[bool, str]:
    cols = ["started", "error_rate", "steps_per_run", "cost_per_run"]
    b = pl.from_pandas(pd_buckets[["series", "bucket", *cols]]).with_columns(
        pl.col("bucket").dt.cast_time_unit("us"), pl.col("started").cast(pl.Int64))
    return compare_tables(dw_buckets, b, keys=("series", "bucket"), columns=cols, count="started")


def pandas_load(runs: Any, n_perm: int = 99) -> Any:
    import pandas as pd

    rng = np.random.default_rng(0)
    out = []
    for series, b in pandas_buckets(runs).groupby("series", sort=False):
        b = b.set_index("bucket")
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
            out.append({"series": series, "metric": metric, "knee": knee, "p_value": (1 + sum(g >= gain for g in null)) / (1 + n_perm)})
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
    pcost = timed("pandas cost profile", lambda: pandas_cost(pruns, args.volume), prow)
    pload = timed("pandas load curve (3 metrics, started, 99 perms)", lambda: pandas_load(pruns), prow)
    # the pandas outputs checked against driftwatch's on the same events (the first n_pd of the scan)
    sub_feats = feats if n_pd == n_events else dw.run_features(scan.head(n_pd))
    cost_ok, cost_notes = compare_cost(cost_profile_from_runs(sub_feats, volume_per_day=args.volume), pcost)
    buckets_ok, buckets_note = compare_buckets(load_buckets_from_runs(sub_feats), pandas_buckets(pruns))
    sub_load = load if n_pd == n_events else load_curve_from_runs(sub_feats, loops=None)

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

    print(f"\npandas cost profile vs cost_profile_from_runs on the same {n_pd:,} events (runs, p50/p90/p99/max, "
          f"error and retry shares, projection exactly; interval ends within {INTERVAL_TOL:.0%} of the interval "
          f"width): {'agree' if cost_ok else 'DISAGREE'}")
    for note in cost_notes:
        print(f"  {note}")
    print(f"pandas per-bucket load data vs load_buckets_from_runs (started, mean error rate, steps and cost per "
          f"run per 1-minute bucket, exactly): {'agree' if buckets_ok else 'DISAGREE'} ({buckets_note})")
    # the knee itself: the pandas hinge search is simpler (no plateau, no refinement, 99 uniform within-day
    # permutations, no Bonferroni), so its knees and p-values are shown beside driftwatch's, not checked
    side = sub_load.filter(pl.col("load_kind") == "started", pl.col("metric").is_in(["error_rate", "steps_per_run",
                                                                                    "cost_per_run"]))
    side = side.select("series", "metric", "candidate_knee", "p_value", "significant").join(
        pl.from_pandas(pload).rename({"knee": "pandas_knee", "p_value": "pandas_p"}), on=["series", "metric"],
        how="left")
    print("knees (started load; not checked, the pandas search is a simpler method):")
    print(side.filter(pl.col("significant") | (pl.col("pandas_p") <= 0.05)))


if __name__ == "__main__":
    main()
