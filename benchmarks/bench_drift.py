"""Drift benchmark: ``drift_from_runs`` vs the same tests as a per-(agent, window) scipy loop on the same run tables.

Simulates a fleet straight to events (``--runs`` runs of ``--agents`` agents over 4 reference
weeks plus ``--weeks`` weekly windows; a few agents drift: two by feedback-driven habit
reinforcement, one in cost, one in run length), computes the per-run tables with
:mod:`driftwatch.features` and writes everything under ``<--data-dir>/drift_<runs>_<agents>_<weeks>/`` (default ``bench_data/``)
(cached). Then times, median of ``--repeat`` runs each, on the same per-run tables:

* ``bare polars scan``: read the three per-run Parquet tables and sum their columns per
  (agent, week): the floor for anything that touches the same data;
* ``driftwatch, univariate + feedback``: :func:`driftwatch.drift.drift_from_runs` with every
  feature except ``run_classifier``;
* ``driftwatch, all features``: the same plus the classifier two-sample test;
* ``scipy loop``: the same univariate and feedback tests written the plain way: for every agent
  and window (the same pairs driftwatch tests: both sides with at least ``min_runs=20`` runs)
  filter the pandas run tables, then per feature ``scipy.stats.ks_2samp`` (the KS statistic) with
  Stephens' asymptotic p-value (``kstwobign``) and the Wasserstein-1 distance on a 256-point
  quantile grid (numeric); per agent the run x category counts (``pivot_table``, rare categories
  pooled into "(other)" as driftwatch pools them), their clustered covariance and, per pair, the
  Wald chi-square test (``numpy.linalg.eigh``, ``chi2.sf``) with the noise-corrected
  ``jensenshannon`` distance (tool mix, bigrams), the bias-corrected entropy z test
  (``stats.entropy``, ``norm``) and the split-reference persistence test (self-similarity);
  ``chi2_contingency`` + Cohen's h (error rate); ``ttest_ind`` (Welch, one-sided) on the
  standardised feedback-outcome gap; Benjamini-Hochberg per agent at the end
  (``false_discovery_control``);
* ``detect_drift from events``: the end-to-end call on the events (per-run stage included).

The script then checks that the scipy loop agrees with ``drift_from_runs`` (univariate +
feedback): the same (agent, window, feature) rows, the same statistics, p-values, q-values and
effect sizes (to a relative 1e-6; p- and q-values below 1e-12 on both sides count as equal) and
the same drifted set, and prints the verdict. The table gives each row's ratio to the loop and to
the bare scan.

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
from driftwatch.drift import DEFAULT_MIN_EFFECT, FEATURES, drift_from_runs  # noqa: E402

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


UNIVARIATE = [f for f in FEATURES if f != "run_classifier"]


def _js_corrected(pa: np.ndarray, pb: np.ndarray, noise: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) of two share vectors, less its expected value under no change
    (``sum_k Var(pa_k - pb_k) / (8 m_k)``, in bits; ``noise`` holds the variances)."""
    if not (np.isfinite(pa).all() and np.isfinite(pb).all()):
        return float("nan")  # a side without any count (0 / 0 shares), as in driftwatch
    js = float(jensenshannon(pa, pb, base=2))
    m = 0.5 * (pa + pb)
    live = m > 0
    bias = float((noise[live] / (8 * m[live])).sum() / np.log(2.0))
    return float(np.sqrt(np.clip(js**2 - bias, 0.0, 1.0)))


def _wald(cov: np.ndarray, pa: np.ndarray, na: float, pb: np.ndarray, nb: float) -> tuple[float, float, float]:
    """Wald chi-square test of equal shares with a clustered covariance per unit count; (statistic,
    p-value, corrected JS distance)."""
    c = 1 / na + 1 / nb
    lam, u = np.linalg.eigh(cov)
    keep = lam > max(lam.max(), 0) * 1e-9 + 1e-300
    proj = (np.nan_to_num(pa - pb) @ u)[keep]
    stat = float((proj**2 / lam[keep]).sum() / c)
    p = float(stats.chi2.sf(stat, keep.sum())) if keep.any() else 1.0
    return stat, p, _js_corrected(pa, pb, np.diag(cov) * c)


class _AgentCounts:
    """One agent's per-run category counts (runs x categories, rare ones pooled into "(other)" as
    driftwatch pools them), its per-window sums and its clustered covariance of the shares."""

    def __init__(self, runs: pd.DataFrame, counts: pd.DataFrame, col: str, max_categories: int) -> None:
        tot = counts.groupby(col)["n"].sum()
        cur = counts[counts["slot"] >= 1]
        per_window = cur.groupby("slot")["n"].sum()  # windows with a count row
        med = float(per_window.median()) if len(per_window) else np.inf
        allc = tot.sum()
        order = sorted(tot.index, key=lambda k: (-tot[k], k))  # most frequent first, ties by name
        own = [k for r, k in enumerate(order, 1)
               if r < max_categories and tot[k] >= 10 and tot[k] >= 0.005 * allc and tot[k] / allc * med >= 5]
        cat = counts[col].where(counts[col].isin(own), "(other)")
        wide = counts.assign(cat=cat).pivot_table(index="run_id", columns="cat", values="n", aggfunc="sum",
                                                  fill_value=0)
        wide = wide.reindex(index=runs["run_id"], fill_value=0)  # runs without a count: zeros
        self.C = wide.to_numpy(float)
        self.slot = runs["slot"].to_numpy()
        self.m = self.C.sum(1)
        n_slots = int(self.slot.max()) + 1
        self.S1 = np.zeros((n_slots, self.C.shape[1]))
        np.add.at(self.S1, self.slot, self.C)
        self.N = self.S1.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.P = self.S1 / self.N[:, None]
        r = np.bincount(self.slot, weights=(self.m > 0).astype(float), minlength=n_slots)
        w = np.sqrt(np.where(r > 1, r / np.maximum(r - 1.0, 1.0), 1.0))
        E = (self.C - np.nan_to_num(self.P)[self.slot] * self.m[:, None]) * w[self.slot][:, None]
        self.cov = E.T @ E / self.N.sum() if self.N.sum() > 0 else np.zeros((self.C.shape[1],) * 2)

    def test(self, a: int, b: int) -> tuple[float, float, float]:
        return _wald(self.cov, self.P[a], self.N[a], self.P[b], self.N[b])


def scipy_loop(d: Path, min_runs: int = 20, max_categories: int = 30, alpha: float = 0.01,
               random_state: int = 0) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on near-constant samples
        with np.errstate(invalid="ignore", divide="ignore"):
            return _scipy_loop(d, min_runs, max_categories, alpha, random_state)


def _scipy_loop(d: Path, min_runs: int, max_categories: int, alpha: float, random_state: int) -> pd.DataFrame:
    """The univariate and feedback tests of drift_from_runs, written the plain way: pandas filters and
    group-bys, one (agent, window) pair at a time, scipy for the tests. Tests the same pairs (both
    sides with at least ``min_runs`` runs) with the same methods (see drift_from_runs' docs)."""
    f = pd.read_parquet(d / "features.parquet")
    lo, hi = (pd.Timestamp(x, tz="UTC") for x in reference_range())
    f = f[f["first_ts"].notna() & (f["first_ts"] >= lo)].copy()
    f["slot"] = np.where(f["first_ts"] < hi, 0, (f["first_ts"] - hi) // pd.Timedelta(weeks=1) + 1)
    f = f.sort_values(["agent", "slot", "run_id"]).reset_index(drop=True)  # driftwatch's row order
    n_slots = int(f["slot"].max()) + 1
    counted = "n_latency" in f.columns and not (f["latency_ms"].notna() & f["n_latency"].isna()).any()
    f["latency"] = f["latency_ms"] / (f["n_latency"] if counted else f["n_steps"])
    numeric = {"steps_per_run": "n_steps", "tokens_per_run": "tokens", "cost_per_run": "cost_usd",
               "latency": "latency"}
    f["failed"] = (f["n_errors"].fillna(0) > 0).astype(float)
    has_errors = f["n_errors"].fillna(0).sum() > 0
    acts = pd.read_parquet(d / "actions.parquet", columns=["run_id", "action", "n"])
    acts = acts[acts["action"] != "llm"].merge(f[["run_id", "agent", "slot"]], on="run_id")
    bigr = pd.read_parquet(d / "bigrams.parquet", columns=["run_id", "bigram", "n"])
    bigr = bigr.merge(f[["run_id", "agent", "slot"]], on="run_id")
    fb = f.dropna(subset=["feedback", "outcome"])
    gap_ok = len(fb) >= 2 * min_runs
    # self_similarity splits each agent's reference runs into halves A / B at random, in row order
    ref_rows = f.index[f["slot"] == 0]
    half = pd.Series(np.random.default_rng(random_state).integers(0, 2, len(ref_rows)), index=ref_rows)
    rows = []
    for agent, fa in f.groupby("agent", sort=True):
        n_runs = np.bincount(fa["slot"], minlength=n_slots)
        ref = fa[fa["slot"] == 0]
        tools = _AgentCounts(fa, acts[acts["agent"] == agent], "action", max_categories)
        bigrams = _AgentCounts(fa, bigr[bigr["agent"] == agent], "bigram", max_categories)
        # reference halves for self_similarity
        h = half[ref.index].to_numpy()
        ref_c = tools.C[: len(ref)]
        pa_h, pb_h = (ref_c[h == k].sum(0) / ref_c[h == k].sum() for k in (0, 1))
        nb_h = ref_c[h == 1].sum()
        nh_min = min((h == 0).sum(), (h == 1).sum())
        # entropy: plug-in per window, corrected by the clustered Miller-Madow term
        pbar = tools.S1.sum(0) / tools.S1.sum()
        live = pbar > 0
        H = np.array([stats.entropy(p) if np.isfinite(p).all() else 0.0 for p in tools.P])
        Hc = H + (np.diag(tools.cov)[live] / (2 * pbar[live])).sum() / tools.N
        g = np.where(live, -np.log(np.where(live, pbar, 1.0)), 0.0)
        v1 = g @ tools.cov @ g
        A = np.where(live, 1 / np.where(live, pbar, 1.0), 0.0)[:, None] * tools.cov
        v2 = 0.5 * np.einsum("kl,lk->", A, A)
        # feedback gap: standardised by the reference (the agent's whole spread if the reference is constant)
        fba = fb[fb["agent"] == agent]
        fref = fba[fba["slot"] == 0]
        sdf = fref["feedback"].std() if fref["feedback"].std() > 0 else fba["feedback"].std()
        sdo = fref["outcome"].std() if fref["outcome"].std() > 0 else fba["outcome"].std()
        for w in range(1, n_slots):
            if n_runs[0] < min_runs or n_runs[w] < min_runs:
                continue  # as driftwatch: windows (and references) under min_runs runs are not tested
            cur = fa[fa["slot"] == w]
            for name, col in numeric.items():
                x, y = ref[col].dropna().to_numpy(float), cur[col].dropna().to_numpy(float)
                x, y = x[np.isfinite(x)], y[np.isfinite(y)]
                if len(x) < min_runs or len(y) < min_runs:
                    continue
                ks = stats.ks_2samp(x, y, method="asymp").statistic  # (D; its p-value below)
                en = np.sqrt(len(x) * len(y) / (len(x) + len(y)))
                p = stats.kstwobign.sf((en + 0.12 + 0.11 / en) * ks)  # Stephens' correction, as driftwatch
                u = (np.arange(256) + 0.5) / 256  # Wasserstein-1 on a 256-point quantile grid
                qx = np.sort(x)[np.minimum((u * len(x)).astype(int), len(x) - 1)]
                qy = np.sort(y)[np.minimum((u * len(y)).astype(int), len(y) - 1)]
                sd = x.std(ddof=1)
                scale = sd if sd > 0 else abs(x.mean()) if x.mean() != 0 else 1.0
                rows.append((agent, w, name, ks, p, np.abs(qy - qx).mean() / scale))
            if tools.N[0] > 0 and tools.N[w] > 0:
                stat, p_mix, js_c = tools.test(0, w)
                rows.append((agent, w, "tool_mix", stat, p_mix, js_c))
                z = (Hc[w] - Hc[0]) / np.sqrt(v1 * (1 / tools.N[0] + 1 / tools.N[w])
                                              + v2 * (1 / tools.N[0] + 1 / tools.N[w]) ** 2)
                if np.isfinite(z):
                    effect = (Hc[0] - Hc[w]) / Hc[0] if Hc[0] > 0 else 0.0
                    rows.append((agent, w, "action_entropy", z, max(stats.norm.cdf(z), p_mix), effect))
            if w >= 2 and n_runs[w - 1] >= min_runs and nh_min >= max(2, min_runs // 2):
                pref = np.nan_to_num(tools.P[0])
                b = np.nan_to_num((tools.P[w - 1] - pa_h) / (pref + 1e-3))
                z = (b * np.nan_to_num(tools.P[w] - pb_h)).sum() / np.sqrt(
                    (b @ tools.cov @ b) * (1 / tools.N[w] + 1 / nb_h))
                if np.isfinite(z):
                    d_ref, d_prev = tools.test(0, w)[2], tools.test(w - 1, w)[2]
                    rows.append((agent, w, "self_similarity", z, stats.norm.sf(z), d_ref - d_prev))
            if bigrams.C.shape[1] and bigrams.N[0] > 0 and bigrams.N[w] > 0:
                stat, p, js_c = bigrams.test(0, w)
                rows.append((agent, w, "action_bigrams", stat, p, js_c))
            if has_errors:
                table = np.array([[ref["failed"].sum(), len(ref) - ref["failed"].sum()],
                                  [cur["failed"].sum(), len(cur) - cur["failed"].sum()]])
                table = table[:, table.sum(0) > 0]
                stat, p = (stats.chi2_contingency(table, correction=False)[:2] if table.shape[1] == 2
                           else (0.0, 1.0))
                r0, r1 = ref["failed"].mean(), cur["failed"].mean()
                rows.append((agent, w, "error_rate", stat, p,
                             abs(2 * np.arcsin(np.sqrt(r1)) - 2 * np.arcsin(np.sqrt(r0)))))
            if gap_ok and sdf > 0 and sdo > 0:
                fcur = fba[fba["slot"] == w]
                if len(fref) >= min_runs and len(fcur) >= min_runs:
                    gr = fref["feedback"] / sdf - fref["outcome"] / sdo
                    gc = fcur["feedback"] / sdf - fcur["outcome"] / sdo
                    t = stats.ttest_ind(gc, gr, equal_var=False, alternative="greater")
                    drop = (fcur["outcome"].mean() - fref["outcome"].mean()) / sdo
                    if np.isfinite(t.statistic):
                        rows.append((agent, w, "feedback_outcome_gap", t.statistic, t.pvalue,
                                     min(gc.mean() - gr.mean(), -drop)))
    out = pd.DataFrame(rows, columns=["agent", "window", "feature", "statistic", "p_value", "effect_size"])
    # Benjamini-Hochberg within each agent (driftwatch's default fdr="series")
    out["q_value"] = out.groupby("agent")["p_value"].transform(
        lambda p: pd.Series(stats.false_discovery_control(p.to_numpy()), index=p.index))
    thr = out["feature"].map(DEFAULT_MIN_EFFECT)
    out["drifted"] = (out["q_value"] <= alpha) & (out["effect_size"].fillna(-np.inf) >= thr)
    return out


def compare(dw_out: pl.DataFrame, loop: pd.DataFrame, rtol: float = 1e-6) -> list[str]:
    """How the scipy loop's rows differ from driftwatch's: the same (agent, window, feature) rows, the same
    statistics, p-values, q-values and effect sizes (to a relative ``rtol``; a p-value also agrees below
    1e-12 on both sides) and the same drifted set. An empty list: they agree."""
    hi = pd.Timestamp(reference_range()[1], tz="UTC")
    a = dw_out.filter(pl.col("feature") != "run_classifier").to_pandas()
    a["window"] = (a["window_start"] - hi) // pd.Timedelta(weeks=1) + 1
    key = ["agent", "window", "feature"]
    j = a.merge(loop, on=key, how="outer", suffixes=("", "_loop"), indicator=True)
    problems = []
    only = j["_merge"].value_counts()
    if only.get("left_only", 0) or only.get("right_only", 0):
        problems.append(f"rows only in driftwatch: {only.get('left_only', 0)}, only in the loop: "
                        f"{only.get('right_only', 0)}")
    both = j[j["_merge"] == "both"]
    for col in ("statistic", "p_value", "q_value", "effect_size"):
        x, y = both[col].to_numpy(float), both[col + "_loop"].to_numpy(float)
        ok = np.isclose(x, y, rtol=rtol, atol=0) | (np.isnan(x) & np.isnan(y))
        if col in ("p_value", "q_value"):
            ok |= (x < 1e-12) & (y < 1e-12)
        if not ok.all():
            worst = both.loc[~ok, key].head(3).to_dict("records")
            problems.append(f"{col} differs on {int((~ok).sum())} rows (e.g. {worst})")
    diff = both[both["drifted"] != both["drifted_loop"]]
    if len(diff):
        problems.append(f"drifted differs on {len(diff)} rows (e.g. {diff[key].head(3).to_dict('records')})")
    return problems


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

    # warm-up: imports and first-touch costs stay out of the medians
    driftwatch_run(d, ["tool_mix", "run_classifier"])

    results: list[tuple[str, float]] = []
    tb, _ = timeit(lambda: bare_scan(d), args.repeat)
    results.append(("bare polars scan of the run tables", tb))
    tu, out_u = timeit(lambda: driftwatch_run(d, UNIVARIATE), args.repeat)
    results.append(("driftwatch, univariate + feedback", tu))
    ta, out_a = timeit(lambda: driftwatch_run(d, None), args.repeat)
    results.append(("driftwatch, all features (+ classifier)", ta))
    tl, loop_out = None, None
    if not args.skip_loop:
        tl, loop_out = timeit(lambda: scipy_loop(d), max(1, min(args.repeat, 2)))
        results.append(("scipy/pandas per-pair loop (univariate + feedback)", tl))
    te, _ = timeit(lambda: detect_from_events(d), 1)
    results.append(("detect_drift from events (univariate + feedback)", te))

    assert isinstance(out_a, pl.DataFrame) and isinstance(out_u, pl.DataFrame)
    n_windows = out_u["window_start"].n_unique()
    print(f"# drift benchmark: {n_runs:,} runs ({n_events:,} events), {args.agents} agents, "
          f"{REF_WEEKS} reference weeks + {n_windows} weekly windows; data prepared in {prep:.1f}s")
    print(f"# {platform.python_version()}, polars {pl.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} cpus, median of {args.repeat}")
    pairs = out_u.filter(pl.col("feature") == "tool_mix").height
    print(f"# rows: {out_a.height:,} ({out_a['drifted'].sum()} drifted); univariate + feedback rows: {out_u.height:,} "
          f"({pairs:,} tested (agent, window) pairs); loop rows: {0 if loop_out is None else len(loop_out):,}")
    print()
    print(f"| {'what':56s} | {'time (s)':>9s} | {'runs/s':>12s} | {'events/s':>13s} | {'vs loop':>8s} "
          f"| {'x bare scan':>11s} |")
    print(f"|{'-' * 58}|{'-' * 11}|{'-' * 14}|{'-' * 15}|{'-' * 10}|{'-' * 13}|")
    for name, sec in results:
        ratio = f"{tl / sec:7.1f}x" if tl else "    n/a"
        print(f"| {name:56s} | {sec:9.3f} | {n_runs / sec:12,.0f} | {n_events / sec:13,.0f} | {ratio:>8s} "
              f"| {sec / tb:10.1f}x |")
    if loop_out is not None:
        problems = compare(out_u, loop_out)
        print()
        if problems:
            print("# scipy loop vs driftwatch: DISAGREE")
            for p in problems:
                print(f"#   {p}")
        else:
            n_drifted = int(loop_out["drifted"].sum())
            print(f"# scipy loop vs driftwatch: agree on the {len(loop_out):,} rows tested (same agent/window/feature "
                  f"rows; statistic, p, q and effect within 1e-6 relative; the same {n_drifted} drifted)")
    drifted = out_a.filter("drifted").group_by("series").agg(pl.col("feature").unique().sort()).sort("series")
    print()
    for row in drifted.iter_rows():
        print(f"# {row[0]}: {', '.join(row[1])}")


if __name__ == "__main__":
    main()
