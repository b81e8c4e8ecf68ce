"""Policy check + escalation scoring benchmark.

Times, on one in-memory event table (the Parquet read is reported but not counted):

* ``bare Polars scan``: one ``group_by("run_id")`` over the same columns (counts, sums,
  min/max): the floor any per-run audit pays;
* ``check_policy``: every rule, including the delegation check;
* ``run_features``: the per-run table the fleet stage starts from;
* ``score_runs_from_runs``: the fleet stage (robust z-scores, IsolationForest, reasons);
* ``check + score``: the three above, i.e. ``dw.check_policy`` + ``dw.score_runs`` without
  loop detection (``--loops`` adds ``detect_loops`` + ``loop_summary`` as its own row);
* ``pandas / Python per run``: the same checks and score written the usual way (pandas
  ``groupby`` + a Python function per run), on the first ``--pandas-max`` events only,
  reported as events/s.

Data: a fleet of about ``--events`` events from :func:`driftwatch.synth.write_fleet`
under ``bench_data/scoring_<N>/`` (generated once, then reused), or ``--data DIR`` for
any folder of canonical Parquet files.

Usage::

    python benchmarks/bench_scoring.py --events 1_000_000       # quick
    python benchmarks/bench_scoring.py --events 10_000_000 --loops
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import driftwatch as dw  # noqa: E402
from driftwatch.features import run_features  # noqa: E402
from driftwatch.policy import UNKNOWN_TOOL_PATTERN, Policy, check_policy  # noqa: E402
from driftwatch.scoring import score_runs_from_runs  # noqa: E402

EVENTS_PER_RUN = 13.4  # the demo scenario's average
DAYS = 30
SEED = 7
COLUMNS = ["run_id", "step", "ts", "action", "agent", "result", "status", "error_type", "input_tokens",
           "output_tokens", "cost_usd", "latency_ms", "parent_run_id", "approved", "confidence", "version",
           "feedback", "outcome"]


def fleet_dir(n_events: int, data: str | None) -> Path:
    if data:
        return Path(data)
    path = ROOT / "bench_data" / f"scoring_{n_events}"
    meta = path / "meta.json"
    if meta.exists():
        return path
    from driftwatch import synth

    rpd = max(1, round(n_events / DAYS / EVENTS_PER_RUN))
    t = time.perf_counter()
    counts = synth.write_fleet(path, days=DAYS, runs_per_day=rpd, seed=SEED)
    counts["generate_s"] = round(time.perf_counter() - t, 1)
    meta.write_text(json.dumps(counts, indent=1))
    print(f"generated {counts['events']:,} events in {counts['generate_s']} s -> {path}", flush=True)
    return path


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bare_scan(ev: pl.DataFrame) -> pl.DataFrame:
    s = pl.col
    return ev.group_by("run_id").agg(
        pl.len().alias("n"),
        s("ts").min().alias("t0"),
        s("ts").max().alias("t1"),
        s("agent").first(),
        s("action").max(),
        s("status").max(),
        s("error_type").max(),
        s("result").max(),
        s("input_tokens").sum(),
        s("output_tokens").sum(),
        s("cost_usd").sum(),
        s("latency_ms").max(),
        s("approved").sum(),
        s("confidence").min(),
        s("parent_run_id").max(),
    )


# --------------------------------------------------------------------------- pandas / Python baseline


def pandas_check_and_score(pdf: Any, policy: Policy) -> tuple[Any, Any]:
    """The same rules and score, written as pandas groupby + one Python function per run."""
    import pandas as pd
    from sklearn.ensemble import IsolationForest

    unknown_re = re.compile(UNKNOWN_TOOL_PATTERN[4:], re.IGNORECASE)  # drop the inline (?i)
    delete_words = ("delete", "drop", "remove", "purge", "truncate", "destroy", "erase", "wipe")

    def tier(action: str) -> str | None:
        if action == "llm" or action.startswith("handoff:"):
            return None
        words = re.split(r"[^A-Za-z]+|(?<=[a-z])(?=[A-Z])", action)
        return "delete" if any(w.lower() in delete_words for w in words if w) else None

    rows: list[dict] = []
    feats: list[dict] = []
    for run_id, g in pdf.sort_values(["run_id", "step"]).groupby("run_id", sort=True):
        actions = g["action"].tolist()
        steps = g["step"].tolist()
        agent = g["agent"].iloc[0]
        n = len(g)
        tokens = (g["input_tokens"].fillna(0) + g["output_tokens"].fillna(0)).cumsum().tolist()
        cost = g["cost_usd"].fillna(0.0).cumsum().tolist()
        ts = g["ts"].tolist()
        runtime = (max(ts) - min(ts)).total_seconds()
        if policy.max_steps is not None and n > policy.max_steps:
            rows.append({"run_id": run_id, "step": steps[policy.max_steps], "rule": "max_steps"})
        if policy.max_tokens is not None and tokens[-1] > policy.max_tokens:
            i = next(i for i, v in enumerate(tokens) if v > policy.max_tokens)
            rows.append({"run_id": run_id, "step": steps[i], "rule": "max_tokens"})
        if policy.max_cost_usd is not None and cost[-1] > policy.max_cost_usd:
            i = next(i for i, v in enumerate(cost) if v > policy.max_cost_usd)
            rows.append({"run_id": run_id, "step": steps[i], "rule": "max_cost"})
        streak, prev_action, prev_err, n_err, n_tool, n_retry = 0, None, False, 0, 0, 0
        flagged_retry = False
        for a, st, status, et, res, ap, conf in zip(actions, steps, g["status"], g["error_type"], g["result"],
                                                    g["approved"], g["confidence"], strict=True):
            if conf is not None and not pd.isna(conf) and conf < policy.min_confidence:
                rows.append({"run_id": run_id, "step": st, "rule": "low_confidence"})
            if a == "llm":
                continue
            n_tool += 1
            err = status == "error"
            n_err += err
            retry = a == prev_action and prev_err
            n_retry += retry
            streak = streak + 1 if retry else 0
            if (policy.max_consecutive_retries is not None and streak == policy.max_consecutive_retries + 1
                    and not flagged_retry):
                rows.append({"run_id": run_id, "step": st, "rule": "max_consecutive_retries"})
                flagged_retry = True
            prev_action, prev_err = a, err
            if tier(a) == "delete" and ap is not True:
                rows.append({"run_id": run_id, "step": st, "rule": "unapproved_action"})
            text = f"{et or ''} | {res or ''}"
            if err and unknown_re.search(text):
                rows.append({"run_id": run_id, "step": st, "rule": "unknown_tool"})
            if policy.allowed and not any(fnmatchcase(a, p) for p in policy.allowed):
                rows.append({"run_id": run_id, "step": st, "rule": "unknown_tool"})
        feats.append({"run_id": run_id, "agent": agent, "n_steps": n, "cost_usd": cost[-1], "tokens": tokens[-1],
                      "runtime_s": runtime, "n_errors": n_err, "n_tool": n_tool, "n_retries": n_retry,
                      "min_confidence": g["confidence"].min()})
    viol = pd.DataFrame(rows, columns=["run_id", "step", "rule"])
    runs = pd.DataFrame(feats)
    # robust z-scores per agent, anomaly forest, noisy-OR of components
    for col, src in (("cost_z", np.log(runs["cost_usd"] + 1e-3)), ("steps_z", np.log(runs["n_steps"]))):
        med = src.groupby(runs["agent"]).transform("median")
        mad = (src - med).abs().groupby(runs["agent"]).transform("median") * 1.4826
        runs[col] = (src - med) / np.maximum(mad, 0.1)
    X = runs[["cost_z", "steps_z"]].to_numpy()
    runs["anomaly"] = -IsolationForest(n_estimators=100, max_samples=min(256, len(runs)), random_state=0).fit(
        X).score_samples(X)
    per_run = viol.groupby("run_id")["rule"].apply(set).to_dict()
    scores, levels = [], []
    for r in runs.itertuples():
        comps = []
        rules = per_run.get(r.run_id, set())
        if "unapproved_action" in rules:
            comps.append(1.0)
        for v, lim in ((r.n_steps, policy.max_steps), (r.cost_usd, policy.max_cost_usd),
                       (r.tokens, policy.max_tokens)):
            if lim is not None and v > lim:
                comps.append(min(max(0.45 + 0.25 * (v / lim - 1), 0.45), 0.9))
        if "unknown_tool" in rules:
            comps.append(0.5)
        if r.min_confidence == r.min_confidence and r.min_confidence < policy.min_confidence:
            comps.append(0.45 + 0.5 * (1 - r.min_confidence / policy.min_confidence))
        comps.append(0.75 * min(max((r.cost_z - 4) / 8, 0), 1))
        comps.append(0.75 * min(max((r.steps_z - 4) / 8, 0), 1))
        comps.append(0.5 * min(max((r.anomaly - 0.62) / 0.18, 0), 1))
        s = 1 - float(np.prod([1 - c for c in comps]))
        scores.append(s)
        levels.append("escalate" if s >= policy.escalate or 1.0 in comps else "review" if s >= policy.review else "ok")
    runs["score"] = scores
    runs["level"] = levels
    return viol, runs


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=lambda s: int(s.replace("_", "")), default=10_000_000)
    ap.add_argument("--data", help="folder of canonical Parquet files (default: generated fleet)")
    ap.add_argument("--pandas-max", type=lambda s: int(s.replace("_", "")), default=300_000,
                    help="events given to the pandas/Python baseline (it is slow)")
    ap.add_argument("--repeat", type=int, default=1, help="median of this many runs per row")
    ap.add_argument("--loops", action="store_true", help="also time detect_loops + loop_summary")
    args = ap.parse_args()

    path = fleet_dir(args.events, args.data)
    t = time.perf_counter()
    ev = pl.read_parquet(path / "events" if (path / "events").exists() else path, hive_partitioning=False,
                         columns=COLUMNS)
    read_s = time.perf_counter() - t
    n = ev.height
    print(f"{n:,} events, {ev['run_id'].n_unique():,} runs read in {read_s:.1f} s (not counted); "
          f"{os.cpu_count()} cores, {platform.python_version()}, polars {pl.__version__}", flush=True)

    policy = Policy()
    # warm-up: imports (scikit-learn alone takes seconds to import) and first-call costs
    warm = ev.head(20_000)
    score_runs_from_runs(run_features(warm), policy=policy, violations=check_policy(warm, policy))
    results: list[tuple[str, int, float]] = []
    bare_s, _ = timed(lambda: bare_scan(ev), args.repeat)
    results.append(("bare Polars scan (group_by run_id)", n, bare_s))
    check_s, viol = timed(lambda: check_policy(ev, policy), args.repeat)
    results.append(("check_policy", n, check_s))
    feat_s, feats = timed(lambda: run_features(ev), args.repeat)
    results.append(("run_features", n, feat_s))
    summary = None
    if args.loops:
        loops_s, summary = timed(lambda: dw.loop_summary(dw.detect_loops(ev)), args.repeat)
    score_s, scored = timed(
        lambda: score_runs_from_runs(feats, policy=policy, violations=viol, loops=summary), args.repeat
    )
    results.append(("score_runs_from_runs (fleet stage)", n, score_s))
    results.append(("check + score", n, check_s + feat_s + score_s))
    if args.loops:
        results.append(("detect_loops + loop_summary", n, loops_s))
        results.append(("check + loops + score", n, check_s + feat_s + score_s + loops_s))

    # pandas / Python per run, on a prefix of whole runs
    import pandas as pd  # noqa: F401

    runs_sorted = ev["run_id"].unique().sort()
    ev_sorted = ev.sort("run_id", "step")
    k = int(np.searchsorted(ev_sorted["run_id"].to_numpy(), runs_sorted[min(len(runs_sorted) - 1, max(1, int(
        len(runs_sorted) * args.pandas_max / n)))], side="left"))
    sub = ev_sorted.head(max(k, 1))
    pdf = sub.to_pandas()
    pd_s, (pviol, pruns) = timed(lambda: pandas_check_and_score(pdf, policy), 1)
    results.append(("pandas / Python per run", sub.height, pd_s))
    # the baseline must agree with driftwatch on the same runs
    dwv = check_policy(sub, policy, delegation=False)
    dw_counts = dict(dwv.filter(pl.col("rule") != "max_runtime").group_by("rule").len().iter_rows())
    pd_counts = pviol["rule"].value_counts().to_dict()
    agree = dw_counts == pd_counts

    print()
    print("| stage | events | seconds | events/s | x bare scan |")
    print("|---|---:|---:|---:|---:|")
    for name, ne, s in results:
        per_ev = s / ne
        ratio = per_ev / (bare_s / n)
        rate = ne / s
        rate_s = f"{rate / 1e6:.2f} M" if rate >= 1e6 else f"{rate / 1e3:.0f} k"
        print(f"| {name} | {ne:,} | {s:.2f} | {rate_s} | {ratio:.1f} |")
    print()
    lv = scored["level"].value_counts().sort("level")
    print("levels:", dict(lv.iter_rows()), f"violations: {viol.height:,}")
    print(f"pandas baseline agrees with check_policy on {sub.height:,} events (rule counts): {agree}")
    if not agree:
        print("  driftwatch:", dw_counts, "\n  pandas:    ", pd_counts)
    print(f"speed-up of check + score over pandas/Python per run: "
          f"{(pd_s / sub.height) / ((check_s + feat_s + score_s) / n):.0f}x")


if __name__ == "__main__":
    main()
