"""Change-points: fleet-stage detection, bucket aggregation and within-run CUSUM, against baselines.

Three parts, each printed as a table:

1. **Detection** on ``--series`` x ``--buckets`` daily bucket series (default 1,000 x 365), built
   directly with numpy: volume with weekly swings, metric noise that shrinks with volume
   (t-distributed, heavy tails), a change in one to three metrics in every third series.
   Times ``changepoints_from_buckets`` (the default method: vectorised preparation of all
   series, ruptures ``KernelCPD`` per series, per-metric scan, materiality test), against
   ruptures ``Pelt(model="l2")`` and ``Binseg(model="l2")`` run on the *same* prepared
   (standardised, whitened) series with the same penalty and minimum segment length; the
   baselines get the preparation for free, and run on ``--baseline-series`` series (the total
   is extrapolated, marked ``*``). Also reports F1 within +-2 buckets against the injected
   truth, and the "predict nothing" baseline.
2. **Bucket aggregation** (``bucket_metrics_from_runs``) on a per-run Parquet table of
   ``--runs`` runs, against a bare Polars scan of the same columns and a plain pandas
   implementation (``read_parquet`` + ``groupby``) of the same metrics (the same caps of
   runaway runs, the mid-quantile p90 of steps; no coverage flags, bucket index or tool mix),
   whose buckets are then checked against driftwatch's (the same (series, bucket) rows; runs,
   steps mean and p90, error rate, error-run rate, tokens and cost per run, p90 latency and
   LLM share to a relative 1e-9), with the verdict printed.
3. **Within-run CUSUM** (``detect_run_changepoints``) on ``--events`` LLM steps of long runs,
   against a bare Polars scan of the columns and a plain pandas/numpy loop over runs (the
   same statistic, one run at a time), and ruptures ``Binseg`` called once per run (on at
   most ``--pandas-max`` events / ``--ruptures-runs`` runs).

Timings are medians of ``--repeat`` warm runs, wall clock and this process's CPU time.

Usage::

    python benchmarks/bench_changepoints.py --series 100 --runs 200_000 --events 200_000   # quick
    python benchmarks/bench_changepoints.py                                              # full
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftwatch import changepoints as cp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checks import compare_tables  # noqa: E402

T0 = datetime(2025, 1, 1, tzinfo=UTC)
METRICS = {  # name: (level, per-run sd)
    "steps_mean": (10.0, 5.0),
    "steps_p90": (18.0, 8.0),
    "error_rate": (0.01, 0.05),
    "error_run_rate": (0.1, 0.3),
    "tokens_per_run": (15000.0, 8000.0),
    "cost_per_run": (0.05, 0.03),
    "latency_p90": (9000.0, 6000.0),
    "llm_ratio": (0.55, 0.03),
    "top1_share": (0.3, 0.3),
    "top2_share": (0.2, 0.25),
    "top3_share": (0.15, 0.2),
}


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Median wall and CPU seconds of ``repeat`` warm runs (after one untimed warm-up)."""
    out = fn()
    walls, cpus = [], []
    for _ in range(repeat):
        gc.collect()
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def table(title: str, unit: str, rows: list[tuple[str, float, float, float, str]], ref: str) -> None:
    base = next(r[1] for r in rows if r[0] == ref)
    print(f"\n{title}")
    print(f"| method | wall s | CPU s | {unit}/s | x {ref} | note |")
    print("|---|---:|---:|---:|---:|---|")
    for name, wall, cpu, n, note in rows:
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {n / wall:,.0f} | {wall / base:.2f} | {note} |")


# --------------------------------------------------------------------------- 1. detection


def bucket_table(n_series: int, n_buckets: int, seed: int) -> tuple[pl.DataFrame, dict[str, list[int]]]:
    rng = np.random.default_rng(seed)
    volume = rng.uniform(30, 400, (n_series, 1))
    weekly = np.where(np.arange(n_buckets) % 7 >= 5, 0.65, 1.0)
    runs = np.maximum(rng.poisson(volume * weekly, (n_series, n_buckets)), 1)
    cols = {}
    for name, (level, sd) in METRICS.items():
        noise = rng.standard_t(5, (n_series, n_buckets)) / math.sqrt(5 / 3)
        cols[name] = level + noise * sd / np.sqrt(runs)
    truth: dict[str, list[int]] = {}
    names = list(METRICS)
    for s in range(0, n_series, 3):
        day = int(rng.integers(20, n_buckets - 20))
        for name in rng.choice(names, size=int(rng.integers(1, 4)), replace=False):
            cols[name][s, day:] *= 1.5
        truth[f"s{s:05d}"] = [day]
    frame = pl.DataFrame(
        {
            "series": np.repeat([f"s{i:05d}" for i in range(n_series)], n_buckets),
            "bucket": pl.datetime_range(T0, T0 + timedelta(days=n_buckets - 1), "1d", eager=True, time_zone="UTC")
            .to_list()
            * n_series,
            "bucket_index": np.tile(np.arange(n_buckets), n_series),
            "runs": runs.ravel(),
            **{k: v.ravel() for k, v in cols.items()},
            "top1_tool": "search",
            "top2_tool": "read",
            "top3_tool": "write",
        }
    )
    return frame, truth


def f1(pred: dict[str, list[int]], truth: dict[str, list[int]], series: list[str]) -> float:
    tp = fp = fn = 0
    for s in series:
        p, t = pred.get(s, []), truth.get(s, [])
        hit = sum(any(abs(q - d) <= 2 for q in p) for d in t)
        tp, fn, fp = tp + hit, fn + len(t) - hit, fp + max(0, len(p) - hit)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def prepared_series(frame: pl.DataFrame, opts: cp._Options) -> list[tuple[str, np.ndarray, float]]:
    """The standardised, whitened series and penalty the default method searches (for the baselines)."""
    b = frame.sort("series", "bucket")
    names = list(METRICS)
    x = np.column_stack([b[c].to_numpy() for c in names])
    rel = b.select(pl.col("runs") / pl.col("runs").median().over("series"))["runs"].to_numpy()
    series = b["series"]
    starts = np.flatnonzero(series.ne(series.shift(1)).fill_null(True).to_numpy())
    stk = cp._stack(x, b["runs"].cast(pl.Float64).to_numpy(), rel, starts, opts)
    out = []
    for k, a in enumerate(starts):
        e = int(stk.ends[k])
        z, _, dim = cp._whiten(stk.u[a:e][:, stk.usable[k]])
        out.append((series[int(a)], z, cp.auto_penalty(dim, e - int(a), beta=opts.beta)))
    return out


def part_detection(args: argparse.Namespace) -> None:
    import ruptures as rpt

    frame, truth = bucket_table(args.series, args.buckets, args.seed)
    all_series = sorted(frame["series"].unique())
    print(f"\n1. detection: {args.series:,} series x {args.buckets} daily buckets, {len(METRICS)} metrics, "
          f"changes injected in {len(truth):,} series")
    wall, cpu, found = timed(lambda: cp.changepoints_from_buckets(frame), args.repeat)
    top = found.filter(pl.col("rank") == 1)
    pred = {s: g["bucket_index"].to_list() for (s,), g in top.group_by("series")}
    rows = [("driftwatch default (KernelCPD + scan)", wall, cpu, wall / args.series, f1(pred, truth, all_series))]

    opts = cp._Options(pen=None, n_bkps=None, beta=cp.PENALTY_BETA, min_size=3, min_z=cp.MIN_Z,
                       min_magnitude=cp.MIN_MAGNITUDE, weight=True, sparse=True)
    prep = prepared_series(frame, opts)
    sample = prep[: args.baseline_series]
    sample_names = [s for s, _, _ in sample]

    def run(make: Callable[[], Any], items: list[tuple[str, np.ndarray, float]]) -> dict[str, list[int]]:
        return {s: [int(v) for v in make().fit(z).predict(pen=pen)[:-1]] for s, z, pen in items}

    baselines = {
        "ruptures KernelCPD(linear), bare search": lambda: rpt.KernelCPD(kernel="linear", min_size=3),
        "ruptures Pelt(model='l2')": lambda: rpt.Pelt(model="l2", min_size=3),
        "ruptures Binseg(model='l2')": lambda: rpt.Binseg(model="l2", min_size=3),
    }
    for name, make in baselines.items():
        items = prep if name.startswith("ruptures KernelCPD") else sample
        w, c, p = timed(lambda make=make, items=items: run(make, items), 1 if len(items) > 200 else args.repeat)
        per = w / len(items)
        note = "" if len(items) == args.series else "*"
        rows.append((name + note, per * args.series, c / len(items) * args.series, per,
                     f1(p, truth, [s for s, _, _ in items])))
    rows.append(("predict nothing", 0.0, 0.0, 0.0, f1({}, truth, all_series)))
    print("| method | total wall s | total CPU s | ms / series | F1 (+-2) |")
    print("|---|---:|---:|---:|---:|")
    for name, w, c, per, score in rows:
        print(f"| {name} | {w:.2f} | {c:.2f} | {per * 1e3:.2f} | {score:.3f} |")
    print(f"(* timed on {len(sample_names)} series, total extrapolated to {args.series:,}; baselines search the "
          "prepared series the default method builds, with its penalty, and get that preparation for free; "
          "their F1 has no materiality test)")


# --------------------------------------------------------------------------- 2. bucket aggregation


def runs_parquet(n_runs: int, seed: int, data: Path) -> Path:
    path = data / f"changepoint_runs_{n_runs}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    n_agents = 1000
    steps = rng.poisson(10, n_runs) + 1
    frame = pl.DataFrame(
        {
            "run_id": [f"r{i:09d}" for i in range(n_runs)],
            "agent": pl.Series(rng.integers(0, n_agents, n_runs)).cast(pl.String).str.pad_start(4, "0"),
            "first_ts": pl.Series(T0.timestamp() * 1e6 + rng.uniform(0, 365 * 86400e6, n_runs))
            .cast(pl.Int64)
            .cast(pl.Datetime("us", "UTC")),
            "n_steps": steps,
            "n_errors": rng.binomial(steps, 0.02),
            "n_llm": (steps + 1) // 2,
            "tokens": steps * rng.integers(800, 2000, n_runs),
            "cost_usd": steps * rng.uniform(0.001, 0.01, n_runs),
            "latency_ms": steps * rng.lognormal(6.5, 0.4, n_runs),
        }
    )
    tmp = path.with_suffix(".tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)
    return path


def pandas_buckets(path: Path) -> Any:
    """The same aggregation in plain pandas: per agent (and for the fleet) and day, the runs, mean
    and p90 (mid-quantile) steps, error rate (each run's errors capped at its series' 99th percentile,
    at least 1), share of runs with an error, tokens and cost per run (each run capped at 5 times its
    series' median), p90 latency and LLM share of steps. No coverage flags, bucket index or tool mix."""
    import pandas as pd

    df = pd.read_parquet(path, columns=[c for c in cp._RUN_COLUMNS if c != "run_id"] + ["agent"])
    df["bucket"] = df["first_ts"].dt.floor("1D")
    df["series"] = "agent=" + df["agent"]
    df["errored"] = df["n_errors"] > 0
    out = []
    for keys in (["series", "bucket"], ["bucket"]):
        per_series = df.groupby(keys[:-1]) if len(keys) > 1 else None
        d = df.copy()
        for c in ("tokens", "cost_usd"):  # runaway runs capped at 5x the series' median
            med = per_series[c].transform("median") if per_series is not None else d[c].median()
            d[c] = np.minimum(d[c], cp._CAP_MEDIANS * med).where(d[c].notna())
        q99 = (per_series["n_errors"].transform(lambda x: x.quantile(0.99, interpolation="higher"))
               if per_series is not None else d["n_errors"].quantile(0.99, interpolation="higher"))
        d["errors_capped"] = np.minimum(d["n_errors"], np.maximum(q99, 1.0))
        g = d.groupby(keys, sort=True)
        agg = g.agg(
            runs=("n_steps", "size"),
            steps_mean=("n_steps", "mean"),
            steps=("n_steps", "sum"),
            errors=("errors_capped", "sum"),
            llm=("n_llm", "sum"),
            error_run_rate=("errored", "mean"),
            tokens_per_run=("tokens", "mean"),
            cost_per_run=("cost_usd", "mean"),
        )
        agg["latency_p90"] = g["latency_ms"].quantile(0.9)  # cythonised, unlike agg(lambda)
        agg["error_rate"] = agg["errors"] / agg["steps"]
        agg["llm_ratio"] = agg["llm"] / agg["steps"]
        # p90 of steps as a mid-quantile: the value where F(k-) + P(k) / 2 reaches 0.9, interpolated
        cnt = d.groupby([*keys, "n_steps"]).size().rename("c").reset_index()
        cnt["mid"] = (cnt.groupby(keys)["c"].cumsum() - cnt["c"] / 2) / cnt.groupby(keys)["c"].transform("sum")
        below = cnt["mid"] <= 0.9
        lo = cnt[below].groupby(keys)[["n_steps", "mid"]].last()
        hi = cnt[~below].groupby(keys)[["n_steps", "mid"]].first()
        q = lo.add_suffix("_lo").join(hi.add_suffix("_hi"), how="outer")
        interp = q["n_steps_lo"] + (0.9 - q["mid_lo"]) / (q["mid_hi"] - q["mid_lo"]) * (q["n_steps_hi"] - q["n_steps_lo"])
        agg["steps_p90"] = interp.where(q["n_steps_lo"].notna() & q["n_steps_hi"].notna(),
                                        q["n_steps_lo"].fillna(q["n_steps_hi"]))
        if len(keys) == 1:
            agg = agg.assign(series="all").set_index("series", append=True).swaplevel()
        out.append(agg)
    return out


#: bucket_metrics_from_runs columns the pandas version computes (compared to a relative 1e-9)
BUCKET_COMPARED = ("runs", "steps_mean", "steps_p90", "error_rate", "error_run_rate", "tokens_per_run",
                   "cost_per_run", "latency_p90", "llm_ratio")


def compare_buckets(dw_out: pl.DataFrame, pd_out: Any) -> tuple[bool, str]:
    import pandas as pd

    b = pl.from_pandas(pd.concat(pd_out).reset_index()[["series", "bucket", *BUCKET_COMPARED]]).with_columns(
        pl.col("bucket").dt.cast_time_unit("us").dt.convert_time_zone("UTC"), pl.col("runs").cast(pl.Int64))
    return compare_tables(dw_out, b, keys=("series", "bucket"), columns=BUCKET_COMPARED, count="runs")


def part_buckets(args: argparse.Namespace, data: Path) -> None:
    path = runs_parquet(args.runs, args.seed, data)
    cols = list(cp._RUN_COLUMNS) + ["agent"]
    print(f"\n2. bucket aggregation: {args.runs:,} runs of 1,000 agents over 365 days ({path.name})")
    rows = []
    w, c, _ = timed(lambda: pl.scan_parquet(path).select(cols).collect(), args.repeat)
    rows.append(("bare polars scan (same columns)", w, c, args.runs, ""))
    w, c, out = timed(lambda: cp.bucket_metrics_from_runs(pl.scan_parquet(path)), args.repeat)
    rows.append(("bucket_metrics_from_runs (scan)", w, c, args.runs, f"{out.height:,} buckets"))
    w, c, pd_out = timed(lambda: pandas_buckets(path), max(1, args.repeat // 2))
    rows.append(("pandas read_parquet + groupby", w, c, args.runs, "no coverage, index or tool mix"))
    table("bucket aggregation", "runs", rows, "bare polars scan (same columns)")
    ok, note = compare_buckets(out, pd_out)
    print(f"pandas vs bucket_metrics_from_runs ({', '.join(BUCKET_COMPARED)}; floats to a relative 1e-9): "
          f"{'agree' if ok else 'DISAGREE'} ({note})")


# --------------------------------------------------------------------------- 3. within runs


def events_parquet(n_events: int, seed: int, data: Path) -> tuple[Path, int]:
    path = data / f"changepoint_run_events_{n_events}.parquet"
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 400, n_events // 100 + 10)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n_events)) + 1]
    if path.exists():
        return path, len(lengths)
    run = np.repeat(np.arange(lengths.size), lengths)
    turn = np.arange(lengths.sum()) - np.repeat(np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    tok = 700 + 380 * turn + rng.integers(0, 300, turn.size)
    cut = (rng.uniform(0.2, 0.8, lengths.size) * lengths).astype(int)
    tok = np.where((run % 2 == 0) & (turn >= cut[run]), tok + 0.6 * (700 + 380 * cut[run]), tok)
    frame = pl.DataFrame(
        {
            "run_id": pl.Series(run).cast(pl.String).str.pad_start(8, "0"),
            "step": 2 * turn + 1,
            "action": "llm",
            "agent": "bot",
            "input_tokens": tok.astype(np.int64),
            "output_tokens": rng.integers(40, 260, turn.size),
        }
    )
    tmp = path.with_suffix(".tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)
    return path, len(lengths)


def numpy_run_cusum(y: np.ndarray, min_size: int = 5) -> tuple[int, float]:
    """The within-run statistic for one run, numpy: OLS detrend, trend-aware CUSUM, argmax."""
    n = y.size
    p = np.arange(n, dtype=float)
    sig = np.median(np.abs(np.diff(y) - np.median(np.diff(y)))) * 1.4826 / math.sqrt(2)
    b, a = np.polyfit(p, y, 1)
    c = np.cumsum(y - a - b * p)
    k = np.arange(1, n + 1, dtype=float)
    m = n - k
    sp, spp = p.sum(), (p * p).sum()
    pk = sp - np.cumsum(p)
    v = m - (spp * m * m - 2 * sp * m * pk + n * pk * pk) / (n * spp - sp * sp)
    ok = (k >= min_size) & (k <= n - min_size) & (v > 1e-9)
    stat = np.where(ok, np.abs(c) / (max(sig, 1e-9) * np.sqrt(np.where(ok, v, 1.0))), 0.0)
    i = int(np.argmax(stat))
    return i + 1, float(stat[i])


def pandas_runs(path: Path, max_events: int) -> int:
    import pandas as pd

    df = pd.read_parquet(path).head(max_events).sort_values(["run_id", "step"])
    df["tokens"] = df["input_tokens"] + df["output_tokens"]
    hits = 0
    for _, g in df.groupby("run_id", sort=False):
        if len(g) >= 20:
            hits += numpy_run_cusum(g["tokens"].to_numpy(float))[1] >= cp.RUN_THRESHOLD
    return hits


def ruptures_runs(path: Path, n_runs: int) -> int:
    import ruptures as rpt

    df = pl.read_parquet(path).with_columns((pl.col("input_tokens") + pl.col("output_tokens")).alias("t"))
    groups = df.partition_by("run_id", maintain_order=True)[:n_runs]
    found = 0
    for g in groups:
        y = g["t"].to_numpy().astype(float)
        y = y - np.polyval(np.polyfit(np.arange(y.size), y, 1), np.arange(y.size))
        found += len(rpt.Binseg(model="l2", min_size=5).fit(y).predict(n_bkps=1)) > 1
    return found


def part_runs(args: argparse.Namespace, data: Path) -> None:
    path, n_runs = events_parquet(args.events, args.seed, data)
    n_events = pl.scan_parquet(path).select(pl.len()).collect().item()
    print(f"\n3. within-run CUSUM: {n_events:,} LLM steps in {n_runs:,} runs of 20-400 steps "
          f"(a token jump in every other run, on top of context growth)")
    rows = []
    cols = ["run_id", "step", "action", "agent", "input_tokens", "output_tokens"]
    w, c, _ = timed(lambda: pl.scan_parquet(path).select(cols).collect(), args.repeat)
    rows.append(("bare polars scan (same columns)", w, c, n_events, ""))
    w, c, out = timed(lambda: cp.detect_run_changepoints(pl.scan_parquet(path)), args.repeat)
    rows.append(("detect_run_changepoints (scan)", w, c, n_events, f"{out.height:,} runs flagged"))
    sub = min(args.pandas_max, n_events)
    w, c, hits = timed(lambda: pandas_runs(path, sub), 1)
    scale = n_events / sub
    rows.append(("pandas groupby + numpy per run" + ("*" if scale > 1 else ""), w * scale, c * scale, n_events,
                 f"{hits:,} flagged in {sub:,} events"))
    per_run = n_events / n_runs
    k = min(args.ruptures_runs, n_runs)
    w, c, _ = timed(lambda: ruptures_runs(path, k), 1)
    rows.append(("ruptures Binseg per run*", w * n_runs / k, c * n_runs / k, n_events,
                 f"timed on {k:,} runs (~{k * per_run:,.0f} events)"))
    table("within-run change-points", "events", rows, "bare polars scan (same columns)")
    print("(* timed on a subset, extrapolated linearly)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--buckets", type=int, default=365)
    ap.add_argument("--baseline-series", type=int, default=100, help="series the ruptures Pelt/Binseg baselines run on")
    ap.add_argument("--runs", type=int, default=2_000_000, help="per-run table size for the bucket aggregation")
    ap.add_argument("--events", type=int, default=2_000_000, help="LLM steps for the within-run part")
    ap.add_argument("--pandas-max", type=int, default=300_000)
    ap.add_argument("--ruptures-runs", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 1 or 1,3")
    ap.add_argument("--data", type=Path, default=ROOT / "bench_data")
    args = ap.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    import ruptures

    print(f"python {platform.python_version()}, polars {pl.__version__}, numpy {np.__version__}, "
          f"ruptures {ruptures.__version__}, {os.cpu_count()} CPUs, {platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    parts = {p.strip() for p in args.parts.split(",")}
    if "1" in parts:
        part_detection(args)
    if "2" in parts:
        part_buckets(args, args.data)
    if "3" in parts:
        part_runs(args, args.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
