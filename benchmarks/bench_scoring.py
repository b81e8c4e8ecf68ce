"""Policy check + escalation scoring benchmark.

Times, on one in-memory event table (the Parquet read is reported but not counted):

* ``bare Polars scan``: one ``group_by("run_id")`` over the same columns (counts, sums,
  min/max): the floor any per-run audit pays;
* ``check_policy``: every rule, including the delegation check;
* ``run_features``: the per-run table the fleet stage starts from;
* ``score_runs_from_runs``: the fleet stage (robust z-scores, IsolationForest, reasons);
* ``check + score``: the three above, i.e. ``dw.check_policy`` + ``dw.score_runs`` without
  loop detection (``--loops`` adds ``detect_loops`` + ``loop_summary`` as its own row);
* ``pandas / Python per run``: the same checks and the same rule score written the usual
  way (pandas ``groupby`` + a Python function per run; see :func:`pandas_check_and_score`),
  on the runs of the first ``--pandas-max`` events only (at most 50,000 runs), reported as
  events/s.

The baseline is checked against driftwatch on the same events: ``check_policy`` (every rule,
the delegation check included) must give the same violations (run, rule and step of each),
and ``score_runs_from_runs`` (no loops, no drift, no model) the same level for every run and
the same score within 1e-6. Both verdicts are printed. Everything in the rule score is
reimplemented, the isolation-forest anomaly component included (scikit-learn's
``IsolationForest`` fitted on the same standardised features with the same seed); the
``--loops`` row is timed but not part of the comparison.

Data: a fleet of about ``--events`` events from :func:`driftwatch.synth.write_fleet`
under ``<--data-dir>/scoring_<N>/`` (default ``bench_data/``; generated once, then reused),
or ``--data DIR`` for any folder of canonical Parquet files.

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
from driftwatch.policy import DEFAULT_TIER_WORDS, UNKNOWN_TOOL_PATTERN, Policy, check_policy  # noqa: E402
from driftwatch.scoring import _ANOMALY_FEATURES, MIN_AGENT_RUNS, SCREEN_MIN_RUNS, score_runs_from_runs  # noqa: E402

EVENTS_PER_RUN = 13.4  # the demo scenario's average
DAYS = 30
SEED = 7
COLUMNS = ["run_id", "step", "ts", "action", "agent", "result", "status", "error_type", "input_tokens",
           "output_tokens", "cost_usd", "latency_ms", "parent_run_id", "approved", "confidence", "version",
           "feedback", "outcome"]


def fleet_dir(n_events: int, data: str | None, data_dir: Path) -> Path:
    if data:
        return Path(data)
    path = data_dir / f"scoring_{n_events}"
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


def _sig(x: float, digits: int) -> float:
    """``x`` at ``digits`` significant digits (driftwatch compares costs and limits at 7, and stores
    per-run cost sums at 12)."""
    return float(f"{x:.{digits}g}") if x == x else x


def _limit_s(ratio: float) -> float:
    return min(max(0.45 + 0.25 * (ratio - 1.0), 0.45), 0.9)


def _delegation_depths(runs: Any) -> dict[str, float | None]:
    """Depth of every run with a parent whose chain is deeper than nothing: the number of
    ``parent_run_id`` links above it (a parent outside the table counts as one level); ``None``
    for a run whose chain never reaches a root (a cycle)."""
    parent = {r: p for r, p in zip(runs["run_id"], runs["parent_run_id"], strict=True) if isinstance(p, str)}
    out: dict[str, float | None] = {}
    for run_id, p in parent.items():
        depth, seen = 0, {run_id}
        while p is not None:
            depth += 1
            if p in seen:
                depth = None
                break
            seen.add(p)
            p = parent.get(p)
        out[run_id] = None if depth is None else float(depth)
    return out


def pandas_check_and_score(pdf: Any, policy: Policy, random_state: int = 0) -> tuple[Any, Any]:
    """The same rules and the same rule score, written as pandas groupby + one Python function per run.

    Per run, in a Python loop over its steps: the per-run features the score reads (steps, tool and
    LLM calls and their failures, retries, distinct tools, tokens, cost, runtime, p90 step latency,
    lowest confidence) and the step rules of ``check_policy`` (max_steps, max_runtime, max_tokens,
    max_cost at 7 significant digits, max_consecutive_retries, unapproved delete-tier calls, unknown
    tools, low_confidence); then the delegation depth by walking each run's parent links. Then the
    components of the rule score as driftwatch.scoring defines them (limits, retries, unknown tool,
    low confidence, delegation, error storm, robust z-scores of log cost and log steps per agent,
    the isolation-forest anomaly over the ten per-agent robust z-scores: scikit-learn's
    ``IsolationForest`` of 100 trees fitted on all runs, as driftwatch does for fleets of up to
    50,000 runs), their noisy-OR and the level. No loops, drift, rejected steps or learned model
    (the benchmark passes none to driftwatch either).
    """
    import pandas as pd
    from sklearn.ensemble import IsolationForest

    unknown_re = re.compile(UNKNOWN_TOOL_PATTERN[4:], re.IGNORECASE)  # drop the inline (?i)
    delete_words = DEFAULT_TIER_WORDS["delete"]

    def tier(action: str) -> str | None:
        if action == "llm" or action.startswith("handoff:"):
            return None
        words = re.split(r"[^A-Za-z]+|(?<=[a-z])(?=[A-Z])", action.strip())
        return "delete" if any(w.lower() in delete_words for w in words if w) else None

    rows: list[dict] = []
    feats: list[dict] = []
    for run_id, g in pdf.sort_values(["run_id", "step"]).groupby("run_id", sort=True):
        actions = g["action"].tolist()
        steps = g["step"].tolist()
        n = len(g)
        tok = g["input_tokens"].fillna(0) + g["output_tokens"].fillna(0)
        tokens = tok.cumsum().tolist()
        known_tokens = g["input_tokens"].notna().any() or g["output_tokens"].notna().any()
        cost = g["cost_usd"].fillna(0.0).cumsum().tolist()
        known_cost = g["cost_usd"].notna().any()
        ts = g["ts"]
        elapsed = ((ts - ts.min()) // pd.Timedelta(microseconds=1) / 1e6).tolist()
        lat = np.sort(g["latency_ms"].dropna().to_numpy())
        if policy.max_steps is not None and n > policy.max_steps:
            rows.append({"run_id": run_id, "step": steps[policy.max_steps], "rule": "max_steps"})
        if policy.max_runtime_s is not None and elapsed[-1] > policy.max_runtime_s:
            i = next(i for i, v in enumerate(elapsed) if v > policy.max_runtime_s)
            rows.append({"run_id": run_id, "step": steps[i], "rule": "max_runtime"})
        if policy.max_tokens is not None and tokens[-1] > policy.max_tokens:
            i = next(i for i, v in enumerate(tokens) if v > policy.max_tokens)
            rows.append({"run_id": run_id, "step": steps[i], "rule": "max_tokens"})
        lim = policy.max_cost_usd
        if lim is not None and _sig(_sig(cost[-1], 12), 7) > _sig(lim, 7):
            i = next(i for i, v in enumerate(cost) if _sig(_sig(v, 12), 7) > _sig(lim, 7))
            rows.append({"run_id": run_id, "step": steps[i], "rule": "max_cost"})
        streak, max_streak, prev_action, prev_err = 0, 0, None, False
        n_err = n_tool_err = n_tool = n_retry = 0
        tools: set[str] = set()
        flagged_retry = False
        for a, st, status, et, res, ap, conf in zip(actions, steps, g["status"], g["error_type"], g["result"],
                                                    g["approved"], g["confidence"], strict=True):
            err = status == "error"
            n_err += err
            if conf is not None and not pd.isna(conf) and _sig(conf, 7) < _sig(policy.min_confidence, 7):
                rows.append({"run_id": run_id, "step": st, "rule": "low_confidence"})
            if a == "llm":
                continue
            n_tool += 1
            n_tool_err += err
            tools.add(a)
            retry = a == prev_action and prev_err
            n_retry += retry
            streak = streak + 1 if retry else 0
            max_streak = max(max_streak, streak)
            if (policy.max_consecutive_retries is not None and streak == policy.max_consecutive_retries + 1
                    and not flagged_retry):
                rows.append({"run_id": run_id, "step": st, "rule": "max_consecutive_retries"})
                flagged_retry = True
            prev_action, prev_err = a, err
            if tier(a) == "delete" and not (isinstance(ap, bool | np.bool_) and bool(ap)):
                rows.append({"run_id": run_id, "step": st, "rule": "unapproved_action"})
            text = f"{et or ''} | {res or ''}"
            if err and unknown_re.search(text):
                rows.append({"run_id": run_id, "step": st, "rule": "unknown_tool"})
            if policy.allowed and not any(fnmatchcase(a, p) for p in policy.allowed):
                rows.append({"run_id": run_id, "step": st, "rule": "unknown_tool"})
        parents = g["parent_run_id"].dropna()
        feats.append({
            "run_id": run_id, "agent": g["agent"].iloc[0], "n_steps": n, "n_llm": n - n_tool, "n_tool": n_tool,
            "n_errors": n_err, "n_tool_errors": n_tool_err, "n_retries": n_retry, "max_streak": max_streak,
            "n_distinct_actions": len(tools),
            "cost_usd": _sig(cost[-1], 12) if known_cost else np.nan,
            "tokens": tokens[-1] if known_tokens else np.nan,
            "runtime_s": elapsed[-1],
            "latency_ms_p90": lat[int(np.floor((len(lat) - 1) * 0.9 + 0.5))] if len(lat) else np.nan,
            "min_confidence": g["confidence"].min(),
            "parent_run_id": parents.iloc[0] if len(parents) else None,
        })
    runs = pd.DataFrame(feats)
    depths = _delegation_depths(runs)
    limit = policy.max_delegation_depth
    for run_id, depth in depths.items():
        if limit is not None and (depth is None or depth > limit):
            rows.append({"run_id": run_id, "step": None, "rule": "delegation_depth"})
    viol = pd.DataFrame(rows, columns=["run_id", "step", "rule"])

    # robust z-scores per agent (agents with under 20 runs pooled as the fleet), then the anomaly forest
    runs["error_rate_tool"] = runs["n_tool_errors"] / runs["n_tool"].clip(lower=1)
    runs["llm_ratio"] = runs["n_llm"] / runs["n_steps"]
    x = pd.DataFrame({
        "log_steps": np.log(runs["n_steps"].astype(float)),
        "log_cost": np.log(runs["cost_usd"].clip(lower=0.0) + 1e-3),
        "log_tokens": np.log(runs["tokens"] + 1.0),
        "log_runtime": np.log(runs["runtime_s"].fillna(0.0) + 1.0),
        "log_latency_p90": np.log(runs["latency_ms_p90"] + 1.0),
        "error_rate_tool": runs["error_rate_tool"],
        "llm_ratio": runs["llm_ratio"],
        "n_distinct_actions": runs["n_distinct_actions"].astype(float),
        "n_retries": runs["n_retries"].astype(float),
        "min_confidence_filled": runs["min_confidence"].fillna(1.0),
    })
    size = runs.groupby("agent")["run_id"].transform("size")
    group = runs["agent"].where((size >= MIN_AGENT_RUNS) & runs["agent"].notna(), "\x00fleet")
    z = pd.DataFrame(index=runs.index)
    for name, floor, _ in _ANOMALY_FEATURES:
        med = x[name].groupby(group).transform("median")
        mad = (x[name] - med).abs().groupby(group).transform("median") * 1.4826
        z[name] = ((x[name] - med) / np.maximum(mad, floor)).clip(-50.0, 50.0).fillna(0.0)
    runs["cost_z"], runs["steps_z"] = z["log_cost"], z["log_steps"]
    X = np.column_stack([
        (z[name].clip(-10.0, 10.0) if o == 0 else (z[name] * o).clip(-3.0, 10.0)).to_numpy(np.float32)
        for name, _, o in _ANOMALY_FEATURES
    ])
    if len(runs) >= MIN_AGENT_RUNS:
        forest = IsolationForest(n_estimators=100, max_samples=min(256, len(runs)), random_state=random_state)
        runs["anomaly"] = -forest.fit(X).score_samples(X)
    else:
        runs["anomaly"] = 0.0
    per_run = viol.groupby("run_id")["rule"].apply(list).to_dict()

    def storm(failed: float, calls: float) -> float:
        rate = failed / max(calls, 1)
        return 0.6 * min(rate / 0.6, 1.0) * min((failed - 1) / 5.0, 1.0) if failed >= 3 else 0.0

    scores, levels = [], []
    for r in runs.itertuples():
        rules = per_run.get(r.run_id, [])
        comps = [1.0 if "unapproved_action" in rules else 0.0, 0.0]  # unapproved, unapproved_write
        for v, lim, rounded in ((r.n_steps, policy.max_steps, False), (r.runtime_s, policy.max_runtime_s, False),
                                (r.tokens, policy.max_tokens, False), (r.cost_usd, policy.max_cost_usd, True)):
            over = lim is not None and v == v and (_sig(v, 7) > _sig(lim, 7) if rounded else v > lim)
            comps.append(_limit_s(v / lim) if over else 0.0)
        ret = "max_consecutive_retries" in rules and policy.max_consecutive_retries
        comps.append(_limit_s(r.max_streak / policy.max_consecutive_retries) if ret else 0.0)
        n_unknown = rules.count("unknown_tool")
        comps.append(min(max(0.5 + 0.1 * (n_unknown - 1), 0.5), 0.7) if n_unknown else 0.0)
        comps.append(0.0)  # rejected_steps: none
        thr, mc = policy.min_confidence, r.min_confidence
        comps.append(0.45 + 0.5 * (1 - mc / thr) if thr > 0 and mc == mc and _sig(mc, 7) < _sig(thr, 7) else 0.0)
        if r.run_id in depths and limit is not None and (depths[r.run_id] is None or depths[r.run_id] > limit):
            d = depths[r.run_id]
            comps.append(0.8 if d is None else min(max(0.5 + 0.1 * (d - limit - 1), 0.5), 0.8))
        else:
            comps.append(0.0)
        comps.append(0.0)  # loop: no loop table
        llm_err = max(r.n_errors - r.n_tool_errors, 0)
        comps.append(max(storm(r.n_tool_errors, r.n_tool), storm(llm_err, r.n_llm)))
        comps.append(0.75 * min(max((r.cost_z - 4.0) / 8.0, 0.0), 1.0))
        comps.append(0.75 * min(max((r.steps_z - 4.0) / 8.0, 0.0), 1.0))
        comps.append(0.5 * min(max((r.anomaly - 0.62) / 0.18, 0.0), 1.0))
        comps.append(0.0)  # drift: no drift table
        prod = 1.0
        for c in comps:
            prod *= 1.0 - min(max(c, 0.0), 1.0)
        sc = min(max(1.0 - prod, 0.0), 1.0)
        scores.append(sc)
        levels.append("escalate" if comps[0] >= 1.0 or sc >= policy.escalate else "review" if sc >= policy.review
                      else "ok")
    runs["score"] = scores
    runs["level"] = levels
    return viol, runs


def compare_scores(scored: pl.DataFrame, pruns: Any, tol: float = 1e-6) -> tuple[bool, str]:
    """Whether the pandas runs get driftwatch's level (all of them) and score (within ``tol``)."""
    j = scored.select("run_id", "level", "score").join(
        pl.from_pandas(pruns[["run_id", "level", "score"]]), on="run_id", how="full", suffix="_pd", coalesce=True)
    missing = j.filter(pl.col("level").is_null() | pl.col("level_pd").is_null()).height
    bad_level = j.filter(pl.col("level") != pl.col("level_pd")).height
    diff = (j["score"] - j["score_pd"]).abs().max() if j.height else 0.0
    ok = missing == 0 and bad_level == 0 and diff is not None and diff <= tol
    return ok, (f"{j.height:,} runs, {missing} in one table only, {bad_level} with another level, "
                f"largest score difference {diff:.2g} (tolerance {tol:g})")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=lambda s: int(s.replace("_", "")), default=10_000_000)
    ap.add_argument("--data", help="folder of canonical Parquet files (default: generated fleet)")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "bench_data",
                    help="where the generated fleet is cached (default: bench_data/ in the repository)")
    ap.add_argument("--pandas-max", type=lambda s: int(s.replace("_", "")), default=300_000,
                    help="events given to the pandas/Python baseline (it is slow)")
    ap.add_argument("--repeat", type=int, default=1, help="median of this many runs per row")
    ap.add_argument("--loops", action="store_true", help="also time detect_loops + loop_summary")
    args = ap.parse_args()

    path = fleet_dir(args.events, args.data, args.data_dir)
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

    # pandas / Python per run, on a prefix of whole runs (at most SCREEN_MIN_RUNS runs: the anomaly forest is
    # then fitted on every run, as the baseline does)
    import pandas as pd  # noqa: F401

    runs_sorted = ev["run_id"].unique().sort()
    k_runs = min(len(runs_sorted) - 1, max(1, int(len(runs_sorted) * args.pandas_max / n)), SCREEN_MIN_RUNS)
    ev_sorted = ev.sort("run_id", "step")
    k = int(np.searchsorted(ev_sorted["run_id"].to_numpy(), runs_sorted[k_runs], side="left"))
    sub = ev_sorted.head(max(k, 1))
    pdf = sub.to_pandas()
    pd_s, (pviol, pruns) = timed(lambda: pandas_check_and_score(pdf, policy), 1)
    results.append(("pandas / Python per run", sub.height, pd_s))
    # the baseline must agree with driftwatch on the same runs: the same violations (run, rule, step)
    # and the same score and level per run
    dwv = check_policy(sub, policy)
    dw_rows = sorted(dwv.select("run_id", "rule", pl.col("step").cast(pl.Int64)).iter_rows(), key=str)
    pd_rows = sorted(((r, u, None if st is None or st != st else int(st)) for r, u, st in
                      pviol[["run_id", "rule", "step"]].itertuples(index=False)), key=str)
    agree = dw_rows == pd_rows
    dw_counts = dict(dwv.group_by("rule").len().sort("rule").iter_rows())
    pd_counts = dict(sorted(pviol["rule"].value_counts().to_dict().items()))
    sub_scored = score_runs_from_runs(run_features(sub), policy=policy, violations=dwv)
    score_ok, score_note = compare_scores(sub_scored, pruns)

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
    print(f"pandas baseline agrees with check_policy on {sub.height:,} events (every violation's run, rule and "
          f"step): {agree}")
    if not agree:
        print("  driftwatch:", dw_counts, "\n  pandas:    ", pd_counts)
    print(f"pandas baseline agrees with score_runs_from_runs on the same runs (level exactly, score): {score_ok} "
          f"({score_note})")
    print(f"speed-up of check + score over pandas/Python per run: "
          f"{(pd_s / sub.height) / ((check_s + feat_s + score_s) / n):.0f}x")


if __name__ == "__main__":
    main()
