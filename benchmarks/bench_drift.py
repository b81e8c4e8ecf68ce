"""Drift benchmark: ``drift_from_runs`` vs an equivalent per-column scipy loop on the same run tables.

Simulates a fleet straight to events (``--runs`` runs of ``--agents`` agents over 4 reference
weeks plus ``--weeks`` weekly windows; a few agents drift: two by feedback-driven habit
reinforcement, one in cost, one in run length), computes the per-run tables with
:mod:`driftwatch.features` and writes everything under ``bench_data/drift_<runs>_<agents>_<weeks>/``
(cached). Then times, median of ``--repeat`` runs each, on the same per-run tables:

* ``bare polars scan``: read the three per-run Parquet tables and sum their columns per
  (agent, week): the floor for anything that touches the same data;
* ``driftwatch, univariate + feedback``: :func:`driftwatch.drift.drift_from_runs` with every
  feature except ``run_classifier``;
* ``driftwatch, all features``: the same plus the classifier two-sample test;
* ``scipy loop``: the same univariate and feedback tests written the plain way: for every
  (agent, window) filter the pandas run tables, then per feature ``scipy.stats.ks_2samp`` +
  ``wasserstein_distance`` (numeric; asymptotic KS p-values, as driftwatch uses), ``chi2_contingency`` + ``jensenshannon`` + PSI (tool mix,
  bigrams, error rate), ``entropy`` and ``ttest_ind`` (feedback indicators), and
  Benjamini-Hochberg at the end (``false_discovery_control``);
* ``detect_drift from events``: the end-to-end call on the events (per-run stage included).

Usage::

    python benchmarks/bench_drift.py                       # 100k runs, 20 agents, 52 weekly windows
    python benchmarks/bench_drift.py --runs 20000 --repeat 1   # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from scipy import stats
from scipy.spatial.distance import jensenshannon

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftwatch import features as F  # noqa: E402
from driftwatch.drift import FEATURES, drift_from_runs  # noqa: E402

REF_WEEKS = 4
START = np.datetime64("2026-01-05T00:00:00", "us")  # a Monday


def simulate(runs: int, agents: int, weeks: int, seed: int) -> pl.DataFrame:
    """Canonical events (no text columns) of a fleet with a few drifting agents."""
    rng = np.random.default_rng(seed)
    total_weeks = REF_WEEKS + weeks
    n_tools = 8
    base = rng.dirichlet(np.full(n_tools, 2.0), agents)
    mean_calls = rng.uniform(3, 8, agents)
    t = np.sort(rng.uniform(0, total_weeks * 7 * 86400.0, runs))
    week = (t // (7 * 86400)).astype(np.int64)
    agent = rng.choice(agents, runs, p=np.full(agents, 1 / agents))
    # drift: agents 0 and 1 reinforce their habits from week REF_WEEKS + weeks // 2; agent 2 costs 1.5x
    # from REF_WEEKS + weeks // 3; agent 3 runs 1.5x longer from REF_WEEKS + 2 * weeks // 3
    onset = REF_WEEKS + weeks // 2
    since = np.where((agent <= 1) & (week >= onset), week - onset + 1, 0)
    p = base[agent] ** (1 + 0.15 * since[:, None])
    g = rng.gamma(20 * p / p.sum(1, keepdims=True))
    run_p = g / g.sum(1, keepdims=True)
    longer = (agent == 3) & (week >= REF_WEEKS + 2 * weeks // 3)
    k = 1 + rng.poisson(np.where(longer, 1.5, 1.0) * mean_calls[agent] - 1)
    pag = rng.random(runs) < 0.08
    k = np.where(pag, k + rng.integers(3, 8, runs), k)
    slot_run = np.repeat(np.arange(runs), k)
    offs = np.concatenate([[0], np.cumsum(k)[:-1]])
    slot_j = np.arange(slot_run.size) - np.repeat(offs, k)
    cum = np.cumsum(run_p, axis=1)[slot_run]
    tool = (rng.random(slot_run.size)[:, None] > cum).sum(1).clip(0, n_tools - 1)
    tool = np.where(pag[slot_run] & (slot_j >= 1) & (slot_j < k[slot_run] - 1), n_tools, tool)
    err = rng.random(slot_run.size) < 0.02
    n_steps = 2 * k + 1
    step_run = np.repeat(np.arange(runs), n_steps)
    soffs = np.concatenate([[0], np.cumsum(n_steps)[:-1]])
    step = np.arange(step_run.size) - np.repeat(soffs, n_steps) + 1
    is_tool = step % 2 == 0
    code = np.full(step_run.size, -1)
    code[is_tool] = tool
    failed = np.zeros(step_run.size, dtype=bool)
    failed[np.flatnonzero(is_tool)[err]] = True
    turn = (step - 1) // 2
    in_tok = np.where(is_tool, 0, 700 + 380 * turn + rng.integers(0, 300, step.size))
    out_tok = np.where(is_tool, 0, rng.integers(40, 260, step.size))
    price = np.where((agent == 2) & (week >= REF_WEEKS + weeks // 3), 1.5, 1.0)[step_run]
    lat = np.where(is_tool, rng.lognormal(np.log(180), 0.5, step.size), rng.lognormal(np.log(700), 0.35, step.size))
    last = step == n_steps[step_run]
    fb = np.clip(rng.normal(0.7, 0.1, runs) + 0.02 * since, 0, 1)
    oc = (rng.random(runs) < np.maximum(0.2, 0.85 - 0.04 * since)).astype(float)
    ts = START.astype(np.int64) + (t[step_run] * 1e6).astype(np.int64) + (np.cumsum(lat) * 1e3).astype(np.int64)
    ts = ts - np.repeat((np.cumsum(lat)[soffs] * 1e3).astype(np.int64), n_steps)
    tool_names = [f"tool_{i}" for i in range(n_tools)] + ["list_items"]
    return pl.DataFrame(
        {
            "_r": step_run,
            "step": step.astype(np.int64),
            "ts": pl.Series(ts).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "_code": code,
            "_agent": agent[step_run],
            "_err": failed,
            "input_tokens": in_tok.astype(np.int64),
            "output_tokens": out_tok.astype(np.int64),
            "cost_usd": (in_tok * 1e-6 + out_tok * 4e-6) * price,
            "latency_ms": lat,
            "feedback": np.where(last, fb[step_run], np.nan),
            "outcome": np.where(last, oc[step_run], np.nan),
        }
    ).select(
        pl.format("r{}", "_r").alias("run_id"),
        "step",
        "ts",
        pl.col("_code").replace_strict(list(range(-1, n_tools + 1)), ["llm", *tool_names], return_dtype=pl.String)
        .alias("action"),
        pl.format("agent{}", pl.col("_agent").cast(pl.String).str.zfill(2)).alias("agent"),
        pl.when("_err").then(pl.lit("error")).otherwise(pl.lit("ok")).alias("status"),
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "latency_ms",
        pl.col("feedback", "outcome").fill_nan(None),
    )


def prepare(args: argparse.Namespace) -> Path:
    d = Path(args.data_dir) / f"drift_{args.runs}_{args.agents}_{args.weeks}"
    if (d / "bigrams.parquet").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    ev = simulate(args.runs, args.agents, args.weeks, args.seed)
    ev.write_parquet(d / "events.parquet")
    F.run_features(ev).write_parquet(d / "features.parquet")
    F.run_action_counts(ev).write_parquet(d / "actions.parquet")
    F.run_bigram_counts(ev).write_parquet(d / "bigrams.parquet")
    return d


def reference_range() -> tuple[str, str]:
    end = START + np.timedelta64(REF_WEEKS * 7, "D")
    return str(START.astype("datetime64[D]")), str(end.astype("datetime64[D]"))


# --------------------------------------------------------------------------------------------
# comparators


def bare_scan(d: Path) -> int:
    f = pl.scan_parquet(d / "features.parquet")
    wk = pl.col("first_ts").dt.truncate("1w")
    a = f.group_by("agent", wk).agg(pl.col("n_steps", "tokens", "cost_usd", "latency_ms", "n_errors", "feedback",
                                           "outcome").sum()).collect()
    b = pl.scan_parquet(d / "actions.parquet").group_by("agent", "action").agg(pl.col("n").sum()).collect()
    c = pl.scan_parquet(d / "bigrams.parquet").group_by("agent", "bigram").agg(pl.col("n").sum()).collect()
    return a.height + b.height + c.height


def driftwatch_run(d: Path, include: list[str] | None) -> pl.DataFrame:
    tabs = [pl.read_parquet(d / f"{n}.parquet") for n in ("features", "actions", "bigrams")]
    return drift_from_runs(*tabs, reference=reference_range(), include=include)


def detect_from_events(d: Path) -> pl.DataFrame:
    import driftwatch as dw

    return dw.detect_drift(pl.read_parquet(d / "events.parquet"), reference=reference_range(),
                           include=[f for f in FEATURES if f != "run_classifier"])


def _cat_tests(ref: pd.Series, cur: pd.Series) -> tuple[float, float, float, float]:
    """chi-square p, JS distance, PSI and entropies of two count vectors indexed by category."""
    idx = ref.index.union(cur.index)
    a = ref.reindex(idx, fill_value=0).to_numpy(float)
    b = cur.reindex(idx, fill_value=0).to_numpy(float)
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    if len(a) < 2:
        return 1.0, 0.0, 0.0, 0.0
    _, p, _, _ = stats.chi2_contingency(np.vstack([a, b]), correction=False)
    pa, pb = a / a.sum(), b / b.sum()
    js = float(jensenshannon(pa, pb, base=2))
    psi = float(((pb - pa + 0) * np.log((pb + 1e-4) / (pa + 1e-4))).sum())
    return float(p), js, psi, float(stats.entropy(pb, base=2) - stats.entropy(pa, base=2))


def scipy_loop(d: Path) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on near-constant samples
        return _scipy_loop(d)


def _scipy_loop(d: Path) -> pd.DataFrame:
    f = pd.read_parquet(d / "features.parquet")
    acts = pd.read_parquet(d / "actions.parquet")
    acts = acts[acts["action"] != "llm"]
    bigr = pd.read_parquet(d / "bigrams.parquet")
    lo, hi = (pd.Timestamp(x, tz="UTC") for x in reference_range())
    f["window"] = ((f["first_ts"] - hi) // pd.Timedelta(weeks=1)).where(f["first_ts"] >= hi, -1)
    f.loc[f["first_ts"] < lo, "window"] = -2
    f["latency"] = f["latency_ms"] / f["n_steps"]
    f["failed"] = (f["n_errors"] > 0).astype(int)
    acts = acts.merge(f[["run_id", "window"]], on="run_id")
    bigr = bigr.merge(f[["run_id", "window"]], on="run_id")
    numeric = {"steps_per_run": "n_steps", "tokens_per_run": "tokens", "cost_per_run": "cost_usd",
               "latency": "latency"}
    rows = []
    for agent in sorted(f["agent"].unique()):  # the plain way: one (agent, window) at a time
        fa, aa, ba = f[f["agent"] == agent], acts[acts["agent"] == agent], bigr[bigr["agent"] == agent]
        ref = fa[fa["window"] == -1]
        ref_tools = aa[aa["window"] == -1].groupby("action")["n"].sum()
        ref_bi = ba[ba["window"] == -1].groupby("bigram")["n"].sum()
        prev_tools = None
        for w in sorted(fa.loc[fa["window"] >= 0, "window"].unique()):
            cur = fa[fa["window"] == w]
            for name, col in numeric.items():
                x, y = ref[col].dropna().to_numpy(), cur[col].dropna().to_numpy()
                ks = stats.ks_2samp(x, y, method="asymp")  # asymptotic, like driftwatch
                wd = stats.wasserstein_distance(x, y) / max(x.std(), 1e-12)
                rows.append((agent, w, name, ks.pvalue, wd))
            cur_tools = aa[aa["window"] == w].groupby("action")["n"].sum()
            p, js, _, dh = _cat_tests(ref_tools, cur_tools)
            rows.append((agent, w, "tool_mix", p, js))
            rows.append((agent, w, "action_entropy", p, -dh))
            if prev_tools is not None:
                p2, js2, _, _ = _cat_tests(prev_tools, cur_tools)
                rows.append((agent, w, "self_similarity", p2, js - js2))
            prev_tools = cur_tools
            p, js, _, _ = _cat_tests(ref_bi, ba[ba["window"] == w].groupby("bigram")["n"].sum())
            rows.append((agent, w, "action_bigrams", p, js))
            e = pd.Series([ref["failed"].sum(), len(ref) - ref["failed"].sum()])
            c = pd.Series([cur["failed"].sum(), len(cur) - cur["failed"].sum()])
            p, js, _, _ = _cat_tests(e, c)
            rows.append((agent, w, "error_rate", p, js))
            r2, c2 = ref.dropna(subset=["feedback", "outcome"]), cur.dropna(subset=["feedback", "outcome"])
            gr = r2["feedback"] / r2["feedback"].std() - r2["outcome"] / r2["outcome"].std()
            gc = c2["feedback"] / r2["feedback"].std() - c2["outcome"] / r2["outcome"].std()
            t = stats.ttest_ind(gc, gr, equal_var=False, alternative="greater")
            rows.append((agent, w, "feedback_outcome_gap", t.pvalue, float(gc.mean() - gr.mean())))
    out = pd.DataFrame(rows, columns=["agent", "window", "feature", "p_value", "effect"])
    out["q_value"] = stats.false_discovery_control(out["p_value"].fillna(1.0).to_numpy())
    return out


# --------------------------------------------------------------------------------------------


def timeit(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--weeks", type=int, default=52)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-loop", action="store_true", help="skip the (slow) scipy loop")
    ap.add_argument("--data-dir", default=str(ROOT / "bench_data"))
    args = ap.parse_args()

    t = time.perf_counter()
    d = prepare(args)
    prep = time.perf_counter() - t
    n_runs = pl.scan_parquet(d / "features.parquet").select(pl.len()).collect().item()
    n_events = pl.scan_parquet(d / "events.parquet").select(pl.len()).collect().item()
    univariate = [f for f in FEATURES if f != "run_classifier"]

    # warm-up: imports and first-touch costs stay out of the medians
    driftwatch_run(d, ["tool_mix", "run_classifier"])

    results: list[tuple[str, float]] = []
    tb, _ = timeit(lambda: bare_scan(d), args.repeat)
    results.append(("bare polars scan of the run tables", tb))
    tu, out_u = timeit(lambda: driftwatch_run(d, univariate), args.repeat)
    results.append(("driftwatch, univariate + feedback", tu))
    ta, out_a = timeit(lambda: driftwatch_run(d, None), args.repeat)
    results.append(("driftwatch, all features (+ classifier)", ta))
    tl = None
    if not args.skip_loop:
        tl, loop_out = timeit(lambda: scipy_loop(d), max(1, min(args.repeat, 2)))
        results.append(("scipy/pandas per-column loop (univariate + feedback)", tl))
    te, _ = timeit(lambda: detect_from_events(d), 1)
    results.append(("detect_drift from events (univariate + feedback)", te))

    assert isinstance(out_a, pl.DataFrame) and isinstance(out_u, pl.DataFrame)
    n_windows = out_u["window_start"].n_unique()
    print(f"# drift benchmark: {n_runs:,} runs ({n_events:,} events), {args.agents} agents, "
          f"{REF_WEEKS} reference weeks + {n_windows} weekly windows; data prepared in {prep:.1f}s")
    print(f"# {platform.python_version()}, polars {pl.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} cpus, median of {args.repeat}")
    print(f"# rows: {out_a.height:,} ({out_a['drifted'].sum()} drifted); loop rows: "
          f"{0 if tl is None else len(loop_out)}")  # type: ignore[arg-type]
    print()
    print(f"| {'what':56s} | {'time (s)':>9s} | {'runs/s':>12s} | {'events/s':>13s} | {'vs loop':>8s} |")
    print(f"|{'-' * 58}|{'-' * 11}|{'-' * 14}|{'-' * 15}|{'-' * 10}|")
    for name, sec in results:
        ratio = f"{tl / sec:7.1f}x" if tl else "    n/a"
        print(f"| {name:56s} | {sec:9.3f} | {n_runs / sec:12,.0f} | {n_events / sec:13,.0f} | {ratio:>8s} |")
    drifted = out_a.filter("drifted").group_by("series").agg(pl.col("feature").unique().sort()).sort("series")
    print()
    for row in drifted.iter_rows():
        print(f"# {row[0]}: {', '.join(row[1])}")


if __name__ == "__main__":
    main()
