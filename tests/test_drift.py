"""Drift: known answers on generated fleets, false alarms on stable fleets, exactness of the
vectorised statistics against scipy, input forms and errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

import driftwatch as dw
from driftwatch import features as F
from driftwatch import synth
from driftwatch.drift import (
    DEFAULT_MIN_EFFECT,
    FEATURES,
    auto_reference_length,
    detect_drift,
    drift_from_runs,
)
from driftwatch.errors import InvalidParameterError, SchemaError

START = datetime(2026, 10, 1, tzinfo=UTC)
REF = ("2026-10-01", "2026-10-15")  # two weeks of reference, then weekly windows
FAST = [f for f in FEATURES if f != "run_classifier"]


def tables(ev: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return F.run_features(ev), F.run_action_counts(ev), F.run_bigram_counts(ev)


# --------------------------------------------------------------------------------------------
# fleets


@pytest.fixture(scope="module")
def weak_fleet() -> synth.Fleet:
    """Stable fleet except billing: weak feedback-driven drift from day 24 (mid-window)."""
    sc = synth.Scenario.stable(feedback_drift=(synth.DriftSpec("billing", 24, 0.1),))
    return synth.generate(days=60, runs_per_day=80, seed=21, scenario=sc)


@pytest.fixture(scope="module")
def weak_drift(weak_fleet: synth.Fleet) -> pl.DataFrame:
    return detect_drift(weak_fleet.events, reference=REF)


@pytest.fixture(scope="module")
def demo_fleet() -> synth.Fleet:
    """The demo scenario: planner feedback drift (day 15) and three change-points."""
    return synth.generate(days=42, runs_per_day=80, seed=5)


@pytest.fixture(scope="module")
def demo_tables(demo_fleet: synth.Fleet) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return tables(demo_fleet.events)


@pytest.fixture(scope="module")
def demo_drift(demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    return drift_from_runs(*demo_tables, reference=REF)


def window_of(ts: datetime, origin: datetime, every: timedelta = timedelta(weeks=1)) -> datetime:
    return origin + every * ((ts - origin) // every)


# --------------------------------------------------------------------------------------------
# known answers


def test_contract_columns_and_order(weak_drift: pl.DataFrame) -> None:
    for c in ("series", "window_start", "window_end", "feature", "method", "statistic", "p_value", "drifted",
              "effect_size", "threshold", "explain", "n_ref", "n_cur", "q_value", "agent"):
        assert c in weak_drift.columns
    assert set(weak_drift["feature"]) == set(FEATURES)
    assert weak_drift.schema["window_start"] == pl.Datetime("us", "UTC")
    assert (weak_drift["window_end"] - weak_drift["window_start"]).unique().to_list() == [timedelta(weeks=1)]
    assert weak_drift["window_start"].min() == datetime(2026, 10, 15, tzinfo=UTC)
    assert weak_drift.equals(weak_drift.sort("series", "window_start", maintain_order=True))
    thr = weak_drift.select("feature", "threshold").unique()
    assert dict(thr.iter_rows()) == {f: DEFAULT_MIN_EFFECT[f] for f in FEATURES}
    # drifted <=> significant after BH (per series) and a large enough effect
    expect = (weak_drift["q_value"] <= 0.01) & (weak_drift["effect_size"] >= weak_drift["threshold"])
    assert (weak_drift["drifted"] == expect.fill_null(False)).all()


def test_weak_feedback_drift_flagged_within_two_windows(weak_fleet: synth.Fleet, weak_drift: pl.DataFrame) -> None:
    onset = weak_fleet.truth["drift"]["onset"][0]
    origin = datetime(2026, 10, 15, tzinfo=UTC)
    onset_window = window_of(onset, origin)
    hits = weak_drift.filter(
        pl.col("drifted"),
        pl.col("series") == "agent=billing",
        pl.col("feature").is_in(["action_entropy", "feedback_outcome_gap"]),
    )
    assert hits.height > 0
    first = hits["window_start"].min()
    assert onset_window <= first <= onset_window + timedelta(weeks=1)
    # no drifted row of any kind for billing before the onset window
    early = weak_drift.filter(pl.col("series") == "agent=billing", pl.col("window_start") < onset_window)
    assert not early["drifted"].any()
    # it keeps being flagged afterwards, and the tool mix narrows
    late = weak_drift.filter(pl.col("series") == "agent=billing", pl.col("window_start") >= first + timedelta(weeks=2))
    assert late.filter(pl.col("feature") == "feedback_outcome_gap")["drifted"].all()
    assert late.filter(pl.col("feature") == "action_entropy")["drifted"].any()


def test_stable_agents_have_no_drifted_row(weak_drift: pl.DataFrame) -> None:
    others = weak_drift.filter(pl.col("series") != "agent=billing")
    assert others["series"].n_unique() == 3
    assert others.height > 3 * 6 * 10  # 60 days: 6-7 weekly windows x all features x 3 agents
    assert not others["drifted"].any(), others.filter("drifted").select("series", "feature", "explain")


def test_demo_scenario_localises_changes(demo_fleet: synth.Fleet, demo_drift: pl.DataFrame) -> None:
    d = demo_drift.filter("drifted")
    origin = datetime(2026, 10, 15, tzinfo=UTC)
    cps = {r["agent"]: r for r in demo_fleet.truth["changepoints"].iter_rows(named=True)}
    # billing runs get longer from day 12 (inside the reference: seen from the first window on)
    billing = d.filter(pl.col("series") == "agent=billing", pl.col("feature") == "steps_per_run")
    assert billing["window_start"].min() == origin
    assert billing.height == demo_drift.filter(pl.col("series") == "agent=billing",
                                               pl.col("feature") == "steps_per_run").height
    # support's error rate x4 from day 18: flagged in the window holding that day or the next one
    support = d.filter(pl.col("series") == "agent=support", pl.col("feature") == "error_rate")
    w = window_of(cps["support"]["ts"], origin)
    assert support.height > 0 and w <= support["window_start"].min() <= w + timedelta(weeks=1)
    assert "runs with a failed step" in support["explain"][0]
    # research cost x2 from day 9
    research = d.filter(pl.col("series") == "agent=research", pl.col("feature") == "cost_per_run")
    assert research["window_start"].min() == origin
    # planner: feedback-driven drift from day 15 -> all three indicators by the end
    planner = d.filter(pl.col("series") == "agent=planner")
    assert {"action_entropy", "self_similarity", "feedback_outcome_gap", "tool_mix"} <= set(planner["feature"])
    assert planner.filter(pl.col("feature") == "feedback_outcome_gap")["window_start"].min() == origin
    # support's tool mix and outcome do not move
    assert d.filter(pl.col("series") == "agent=support",
                    pl.col("feature").is_in(["tool_mix", "action_entropy", "feedback_outcome_gap"])).height == 0


def test_classifier_names_the_drifted_features(demo_drift: pl.DataFrame) -> None:
    clf = demo_drift.filter(pl.col("feature") == "run_classifier", pl.col("drifted"))
    assert {"agent=billing", "agent=research", "agent=planner"} <= set(clf["series"])
    research = clf.filter(pl.col("series") == "agent=research")
    assert (research["statistic"] > 0.75).all()
    assert research["explain"].str.contains(r"most different: cost_(per_token|usd)").all()
    billing = clf.filter(pl.col("series") == "agent=billing")
    assert billing["explain"].str.contains(r"n_steps|n_tool|llm_ratio").all()
    stable = demo_drift.filter(pl.col("feature") == "run_classifier", pl.col("series") == "agent=support",
                               pl.col("window_start") < datetime(2026, 10, 15, tzinfo=UTC) + timedelta(days=3))
    assert not stable["drifted"].any()


def test_explain_reads_like_a_sentence(demo_drift: pl.DataFrame) -> None:
    row = demo_drift.filter(pl.col("series") == "agent=planner", pl.col("feature") == "tool_mix",
                            pl.col("drifted")).row(-1, named=True)
    assert row["explain"].startswith("agent=planner: tool mix shifted, ")
    assert "% -> " in row["explain"] and "JS distance" in row["explain"]
    gap = demo_drift.filter(pl.col("series") == "agent=planner", pl.col("feature") == "feedback_outcome_gap").row(
        -1, named=True)
    assert gap["explain"].startswith("agent=planner: feedback holds while outcome falls, feedback 0.")
    assert gap["reference_value"] > gap["current_value"] + 0.2  # outcome fell
    steady = demo_drift.filter(pl.col("series") == "agent=support", pl.col("feature") == "tool_mix").row(
        0, named=True)
    assert steady["explain"].startswith("agent=support: tool mix steady, ")


# --------------------------------------------------------------------------------------------
# stable fleets: false alarms


def lean_fleet(seed: int, *, days: int = 60, runs_per_day: int = 60) -> pl.DataFrame:
    """A stable fleet simulated straight to events (no text columns), fast enough for 100 fleets.

    Nuisances: per-run tool preferences (overdispersion), benign pagination runs,
    weekend volume drop, diurnal traffic, token growth with run length, heavy-tailed latency.
    """
    rng = np.random.default_rng(seed)
    n_agents, n_tools = 4, 6
    base = np.random.default_rng(1234).dirichlet(np.full(n_tools, 2.0), n_agents)
    mean_calls = np.array([4.0, 5.0, 6.0, 8.0])
    day = np.arange(days)
    weekend = ((day + 3) % 7) >= 5  # 2026-10-01 is a Thursday
    per_day = rng.poisson(runs_per_day * np.where(weekend, 0.65, 1.0))
    run_day = np.repeat(day, per_day)
    R = run_day.size
    agent = rng.choice(n_agents, R, p=[0.3, 0.25, 0.25, 0.2])
    start_s = run_day * 86400.0 + np.clip(rng.normal(14 * 3600, 4 * 3600, R), 0, 86399)
    pag = rng.random(R) < 0.08
    k = 1 + rng.poisson(mean_calls[agent] - 1)
    k = np.where(pag, k + rng.integers(3, 8, R), k)
    # per-run tool preferences scattered around the agent's (Dirichlet via normalised gammas)
    g = rng.gamma(20 * base[agent])
    run_p = g / g.sum(1, keepdims=True)
    slot_run = np.repeat(np.arange(R), k)
    offs = np.concatenate([[0], np.cumsum(k)[:-1]])
    slot_j = np.arange(slot_run.size) - np.repeat(offs, k)
    cum = np.cumsum(run_p, axis=1)[slot_run]
    tool = (rng.random(slot_run.size)[:, None] > cum).sum(1).clip(0, n_tools - 1)
    tool = np.where(pag[slot_run] & (slot_j >= 1) & (slot_j < k[slot_run] - 1), n_tools, tool)  # list_items pages
    err = rng.random(slot_run.size) < 0.02
    names = [f"tool_{i}" for i in range(n_tools)] + ["list_items"]
    # steps: llm before every tool call + a final llm step
    n_steps = 2 * k + 1
    step_run = np.repeat(np.arange(R), n_steps)
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
    lat = np.where(is_tool, rng.lognormal(np.log(180), 0.5, step.size), rng.lognormal(np.log(700), 0.35, step.size))
    last = step == n_steps[step_run]
    fb = np.clip(rng.normal(0.7, 0.1, R), 0, 1)
    oc = (rng.random(R) < 0.85).astype(float)
    ts = (START.timestamp() + start_s[step_run]) * 1e6 + np.cumsum(lat) * 1e3 - np.repeat(
        np.cumsum(lat)[soffs] * 1e3, n_steps)
    return pl.DataFrame(
        {
            "_r": step_run,
            "step": step.astype(np.int64),
            "ts": pl.Series(ts.astype(np.int64)).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "_code": code,
            "_agent": agent[step_run],
            "_err": failed,
            "input_tokens": in_tok.astype(np.int64),
            "output_tokens": out_tok.astype(np.int64),
            "cost_usd": in_tok * 1e-6 + out_tok * 4e-6,
            "latency_ms": lat,
            "feedback": np.where(last, fb[step_run], np.nan),
            "outcome": np.where(last, oc[step_run], np.nan),
        }
    ).select(
        pl.format("r{}", "_r").alias("run_id"),
        "step",
        "ts",
        pl.col("_code").replace_strict(list(range(-1, n_tools + 1)), ["llm", *names], return_dtype=pl.String)
        .alias("action"),
        pl.col("_agent").replace_strict(list(range(4)), ["billing", "support", "planner", "research"],
                                        return_dtype=pl.String).alias("agent"),
        pl.when("_err").then(pl.lit("error")).otherwise(pl.lit("ok")).alias("status"),
        "input_tokens", "output_tokens", "cost_usd", "latency_ms",
        pl.col("feedback", "outcome").fill_nan(None),
    )


@pytest.mark.slow
def test_false_alarm_rate_on_100_stable_fleets() -> None:
    """<= 5% of 100 seeded stable fleets (4 agents, 60 days, ~42k events each) have any drifted row,
    and the p-values are calibrated (not merely hidden by the effect-size floor)."""
    alarms = 0
    pvals: list[pl.DataFrame] = []
    for seed in range(100):
        ev = lean_fleet(seed)
        d = drift_from_runs(*tables(ev), reference="14d", include=FAST if seed % 4 else None)
        alarms += int(d["drifted"].any())
        pvals.append(d.select("feature", "p_value"))
    assert alarms <= 5, alarms
    p = pl.concat(pvals).group_by("feature").agg(
        (pl.col("p_value") < 0.05).mean().alias("rate"), (pl.col("p_value") < 0.01).mean().alias("rate01"),
        pl.len())
    assert p.height == len(FEATURES)
    for row in p.iter_rows(named=True):
        assert row["rate"] <= 0.08, row
        assert row["rate01"] <= 0.025, row


# --------------------------------------------------------------------------------------------
# the vectorised statistics agree with scipy


def two_windows(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Hand-built per-run tables: one agent, 300 reference runs, 200 runs in one current window."""
    rng = np.random.default_rng(seed)
    n0, n1 = 300, 200
    ts = [START + timedelta(hours=float(h)) for h in rng.uniform(0, 24 * 7, n0)]
    ts += [START + timedelta(days=7, hours=float(h)) for h in rng.uniform(0, 24 * 7, n1)]
    n = n0 + n1
    steps = np.concatenate([rng.poisson(8, n0), rng.poisson(9, n1)]) + 1
    cost = np.concatenate([rng.lognormal(0, 1, n0), rng.lognormal(0.2, 1, n1)])
    err = np.concatenate([rng.random(n0) < 0.1, rng.random(n1) < 0.2]).astype(np.int64)
    feats = pl.DataFrame(
        {
            "run_id": [f"r{i:04d}" for i in range(n)],
            "agent": ["a"] * n,
            "first_ts": pl.Series(ts).dt.cast_time_unit("us"),
            "n_steps": steps,
            "n_errors": err,
            "cost_usd": cost,
        }
    )
    # one tool call per run (so counts are independent across calls) from two distributions
    p0, p1 = [0.5, 0.3, 0.2], [0.4, 0.3, 0.3]
    tool = np.concatenate([rng.choice(3, n0, p=p0), rng.choice(3, n1, p=p1)])
    acts = pl.DataFrame({"run_id": feats["run_id"], "agent": "a", "action": [f"t{t}" for t in tool], "n": 1})
    return feats, acts, acts.rename({"action": "bigram"})


def test_numeric_tests_match_scipy() -> None:
    feats, acts, big = two_windows()
    d = drift_from_runs(feats, acts, big, reference=("2026-10-01", "2026-10-08"), include=["steps_per_run",
                                                                                           "cost_per_run"])
    assert d.height == 2
    ref = feats.filter(pl.col("first_ts") < datetime(2026, 10, 8, tzinfo=UTC))
    cur = feats.filter(pl.col("first_ts") >= datetime(2026, 10, 8, tzinfo=UTC))
    for feature, col in (("steps_per_run", "n_steps"), ("cost_per_run", "cost_usd")):
        row = d.filter(pl.col("feature") == feature).row(0, named=True)
        a, b = ref[col].to_numpy().astype(float), cur[col].to_numpy().astype(float)
        ks = stats.ks_2samp(a, b)  # exact p-value; ours is asymptotic with Stephens' correction
        assert row["statistic"] == pytest.approx(ks.statistic, abs=1e-12)
        assert row["p_value"] == pytest.approx(ks.pvalue, rel=0.15)
        w = stats.wasserstein_distance(a, b) / a.std(ddof=1)
        assert row["effect_size"] == pytest.approx(w, rel=0.03, abs=0.005)
        assert (row["reference_value"], row["current_value"]) == pytest.approx((a.mean(), b.mean()))
        assert (row["n_ref"], row["n_cur"]) == (300, 200)


def test_categorical_tests_match_scipy() -> None:
    feats, acts, big = two_windows(1)
    d = drift_from_runs(feats, acts, big, reference=("2026-10-01", "2026-10-08"),
                        include=["tool_mix", "error_rate", "action_entropy"])
    is_ref = pl.col("first_ts") < datetime(2026, 10, 8, tzinfo=UTC)
    j = acts.join(feats.select("run_id", is_ref.alias("ref")), on="run_id")
    tab = j.group_by("ref", "action").len().pivot("action", index="ref", values="len").sort("ref", descending=True)
    obs = tab.drop("ref").to_numpy()
    chi2, p, _, _ = stats.chi2_contingency(obs, correction=False)
    row = d.filter(pl.col("feature") == "tool_mix").row(0, named=True)
    # one call per run: no clustering, so the clustered Wald test is close to Pearson's chi-square
    assert row["statistic"] == pytest.approx(chi2, rel=0.1)
    assert row["p_value"] == pytest.approx(p, rel=0.5)
    assert "PSI" in row["explain"]
    pa, pb = obs[0] / obs[0].sum(), obs[1] / obs[1].sum()
    js = jensenshannon(pa, pb, base=2)
    assert js * 0.7 <= row["effect_size"] <= js  # noise-corrected JS distance, below the raw one
    h = d.filter(pl.col("feature") == "action_entropy").row(0, named=True)
    assert h["reference_value"] == pytest.approx(stats.entropy(pa, base=2))
    assert h["current_value"] == pytest.approx(stats.entropy(pb, base=2))
    # error rate: runs with a failed step, plain 2x2 chi-square (no clustering by construction)
    e = d.filter(pl.col("feature") == "error_rate").row(0, named=True)
    fe = feats.with_columns(is_ref.alias("ref"), (pl.col("n_errors") > 0).alias("f"))
    t2 = fe.group_by("ref", "f").len().pivot("f", index="ref", values="len").sort("ref").drop("ref").to_numpy()
    c2, p2, _, _ = stats.chi2_contingency(t2, correction=False)
    assert e["statistic"] == pytest.approx(c2, rel=1e-9)
    assert e["p_value"] == pytest.approx(p2, rel=1e-6)


def test_clustered_steps_are_not_over_counted() -> None:
    """Runs that repeat one tool many times: the naive chi-square explodes, Rao-Scott does not."""
    rng = np.random.default_rng(3)
    n = 400
    ts = [START + timedelta(hours=float(h)) for h in np.sort(rng.uniform(0, 24 * 14, n))]
    feats = pl.DataFrame({"run_id": [f"r{i}" for i in range(n)], "agent": "a",
                          "first_ts": pl.Series(ts).dt.cast_time_unit("us")})
    # same distribution in both weeks, but each run calls its one tool 1-30 times
    tool = rng.choice(3, n)
    acts = pl.DataFrame({"run_id": feats["run_id"], "action": [f"t{t}" for t in tool],
                         "n": rng.integers(1, 31, n)})
    p = []
    for seed in range(20):
        tool = np.random.default_rng(seed).choice(3, n)
        a = acts.with_columns(pl.Series("action", [f"t{t}" for t in tool]))
        d = drift_from_runs(feats, a, None, reference=("2026-10-01", "2026-10-08"), include=["tool_mix"])
        p.append(d["p_value"][0])
    assert np.mean(np.array(p) < 0.05) <= 0.2  # a naive step-level chi-square rejects ~always here


# --------------------------------------------------------------------------------------------
# input forms, per-run stage, determinism


def test_detect_drift_equals_drift_from_runs_and_chunks_concatenate(demo_fleet: synth.Fleet) -> None:
    ev = demo_fleet.events.filter(pl.col("agent").is_in(["planner", "support"]))
    kw = dict(reference=REF, include=FAST)
    whole = detect_drift(ev, **kw)
    # per-run stage on two chunks of whole runs, concatenated
    h = pl.col("run_id").hash(7) % 2 == 0
    parts = [tables(ev.filter(h)), tables(ev.filter(~h))]
    cat = [pl.concat([p[i] for p in parts]) for i in range(3)]
    chunked = drift_from_runs(*cat, **kw)
    assert chunked.equals(whole)
    assert dw.detect_drift is detect_drift


def test_reference_and_current_forms(demo_fleet: synth.Fleet) -> None:
    ev = demo_fleet.events.filter(pl.col("agent") == "planner")
    kw = dict(include=["tool_mix", "steps_per_run", "feedback_outcome_gap"])
    by_range = detect_drift(ev, reference=REF, current=("2026-10-15", "2026-10-29"), **kw)
    assert by_range["window_start"].unique().sort().to_list() == [
        datetime(2026, 10, 15, tzinfo=UTC), datetime(2026, 10, 22, tzinfo=UTC)]
    ref_ev = ev.filter(pl.col("ts") < datetime(2026, 10, 15, tzinfo=UTC))
    cur_ev = ev.filter(pl.col("ts") >= datetime(2026, 10, 15, tzinfo=UTC), pl.col("ts") < datetime(2026, 10, 29,
                                                                                                   tzinfo=UTC))
    runs_in_both = set(ref_ev["run_id"]) & set(cur_ev["run_id"])
    ref_ev = ref_ev.filter(~pl.col("run_id").is_in(list(runs_in_both)))
    cur_ev = cur_ev.filter(~pl.col("run_id").is_in(list(runs_in_both)))
    by_frames = detect_drift(ev, reference=ref_ev, current=cur_ev.lazy(), **kw)
    cols = ["feature", "window_start", "statistic", "p_value", "drifted"]
    a = by_range.select(cols).sort("window_start", "feature")
    b = by_frames.select(cols).sort("window_start", "feature")
    assert a.height == b.height and (a["feature"] == b["feature"]).all()
    assert np.allclose(a["statistic"].to_numpy(), b["statistic"].to_numpy(), rtol=0.05)
    # reference as per-run tables, and as a duration
    by_tables = drift_from_runs(*tables(ev), reference=tables(ref_ev), current=("2026-10-15", "2026-10-29"), **kw)
    assert by_tables.select(cols).sort("window_start", "feature").equals(b)
    by_dur = detect_drift(ev, reference="14d", current=("2026-10-15", "2026-10-29"), **kw)
    assert by_dur.equals(by_range)


def test_auto_reference(demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]) -> None:
    # 42 days of data: a quarter is 10 days (between one and four weekly windows)
    d = drift_from_runs(*demo_tables, reference="auto", include=["tool_mix"])
    assert d["window_start"].min() == datetime(2026, 10, 11, tzinfo=UTC)
    assert auto_reference_length(timedelta(days=3), timedelta(weeks=1)) == timedelta(weeks=1)


def test_fdr_family(demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]) -> None:
    per_series = drift_from_runs(*demo_tables, reference=REF, include=FAST)
    pooled = drift_from_runs(*demo_tables, reference=REF, include=FAST, fdr="all")
    assert per_series["p_value"].equals(pooled["p_value"])
    for _, part in per_series.group_by("series"):
        p = part["p_value"].to_numpy()
        assert np.allclose(part["q_value"].to_numpy(), stats.false_discovery_control(p))
    assert np.allclose(pooled["q_value"].to_numpy(), stats.false_discovery_control(pooled["p_value"].to_numpy()))


def test_by_version_and_all(demo_fleet: synth.Fleet) -> None:
    ev = demo_fleet.events.filter(pl.col("agent") == "billing")
    d = detect_drift(ev, reference=("2026-10-01", "2026-10-10"), by=("agent", "version"), include=["steps_per_run"])
    # billing deploys v2 on day 12: v2 has no reference runs, so only v1 is compared (v2 is named)
    compared = d.filter(pl.col("feature") != "no_reference")
    assert compared["series"].unique().to_list() == ["agent=billing,version=v1"]
    assert d.filter(pl.col("feature") == "no_reference")["series"].unique().to_list() == ["agent=billing,version=v2"]
    assert {"agent", "version"} <= set(d.columns)
    fleet_wide = detect_drift(demo_fleet.events, reference=REF, by=None, include=["tool_mix"])
    assert fleet_wide["series"].unique().to_list() == ["all"]


def test_deterministic(demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], demo_drift: pl.DataFrame) -> None:
    again = drift_from_runs(*demo_tables, reference=REF)
    assert again.equals(demo_drift)
    other = drift_from_runs(*demo_tables, reference=REF, include=["run_classifier"], random_state=1)
    base = demo_drift.filter(pl.col("feature") == "run_classifier")
    assert other.height == base.height
    assert not np.array_equal(other["statistic"].to_numpy(), base["statistic"].to_numpy())


def test_missing_signals_skip_their_features(demo_fleet: synth.Fleet) -> None:
    ev = demo_fleet.events.filter(pl.col("agent") == "support").drop("feedback", "cost_usd", "latency_ms")
    d = detect_drift(ev, reference=REF, include=FAST)
    assert {"feedback_outcome_gap", "cost_per_run", "latency"}.isdisjoint(set(d["feature"]))
    assert {"tool_mix", "steps_per_run", "error_rate"} <= set(d["feature"])
    # no action counts at all: numeric rows only
    f, _, _ = tables(ev)
    only = drift_from_runs(f, reference=REF, include=FAST)
    assert set(only["feature"]) == {"steps_per_run", "tokens_per_run", "error_rate"}


def test_min_effect_and_min_runs(demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]) -> None:
    strict = drift_from_runs(*demo_tables, reference=REF, include=["steps_per_run"],
                             min_effect={"steps_per_run": 5.0})
    assert not strict["drifted"].any() and (strict["threshold"] == 5.0).all()
    with pytest.warns(UserWarning, match="no series had 10000 runs in the reference"):
        few = drift_from_runs(*demo_tables, reference=REF, include=["steps_per_run"], min_runs=10_000)
    assert few.height == 0 and "explain" in few.columns


def test_empty_current_gives_empty_frame(demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]) -> None:
    with pytest.warns(UserWarning, match="no run of the data starts in current"):
        d = drift_from_runs(*demo_tables, reference=REF, current=("2027-01-01", "2027-02-01"))
    assert d.height == 0
    assert d.columns[:2] == ["series", "agent"] and d.schema["drifted"] == pl.Boolean


@pytest.mark.parametrize(
    ("kw", "err", "match"),
    [
        (dict(reference=("2030-01-01", "2030-02-01")), InvalidParameterError, "reference holds no runs"),
        (dict(reference=("2026-10-15", "2026-10-01")), InvalidParameterError, "start < end"),
        (dict(reference=("yesterday", "2026-10-01")), InvalidParameterError, "ISO-8601"),
        (dict(reference=42), InvalidParameterError, "reference must be"),
        (dict(reference=REF, current=7), InvalidParameterError, "current must be"),
        (dict(reference=REF, include=["tool_mixx"]), InvalidParameterError, "unknown feature"),
        (dict(reference=REF, min_effect={"nope": 1.0}), InvalidParameterError, "unknown feature"),
        (dict(reference=REF, min_effect=0.2), InvalidParameterError, "mapping"),
        (dict(reference=REF, every="weekly"), InvalidParameterError, "duration"),
        (dict(reference=REF, alpha=1.5), InvalidParameterError, r"alpha must be a number in \(0, 1\)"),
        (dict(reference=REF, min_runs=1), InvalidParameterError, "min_runs"),
        (dict(reference=REF, fdr="fleet"), InvalidParameterError, "fdr must be"),
        (dict(reference=REF, by="team"), SchemaError, "by column 'team'"),
    ],
)
def test_errors(demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], kw: dict, err: type,
                match: str) -> None:
    with pytest.raises(err, match=match):
        drift_from_runs(*demo_tables, **kw)


def test_schema_errors() -> None:
    with pytest.raises(SchemaError, match="first_ts"):
        drift_from_runs(pl.DataFrame({"run_id": ["a"]}), reference=REF)
    with pytest.raises(SchemaError, match="missing required column"):
        detect_drift(pl.DataFrame({"x": [1]}), reference=REF)
    with pytest.raises(InvalidParameterError, match="DataFrame or LazyFrame"):
        drift_from_runs([1, 2], reference=REF)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# classifier test on a sample of large cells (classifier_max_runs)


def big_runs(n_per_week: int = 2500, seed: int = 0) -> pl.DataFrame:
    """Per-run features of two agents over four weeks; agent a's cost per run x1.6 from the third week."""
    rng = np.random.default_rng(seed)
    n = 2 * 4 * n_per_week
    agent = np.repeat(np.array(["a", "b"]), n // 2)
    offset_us = (rng.random(n) * timedelta(weeks=4).total_seconds() * 1e6).astype(np.int64)
    steps = rng.poisson(8, n) + 1
    tokens = (steps * rng.gamma(5.0, 100.0, n)).astype(np.int64)
    cost = tokens * 2e-6 * rng.lognormal(0.0, 0.2, n)
    cost[(agent == "a") & (offset_us >= timedelta(weeks=2).total_seconds() * 1e6)] *= 1.6
    return pl.DataFrame(
        {"run_id": [f"r{i:06d}" for i in range(n)], "agent": agent, "n_steps": steps, "tokens": tokens,
         "cost_usd": cost}
    ).with_columns(first_ts=pl.lit(START) + pl.duration(microseconds=pl.Series(offset_us)))


BIG_REF = ("2026-10-01", "2026-10-08")


def test_classifier_samples_large_cells_and_still_detects() -> None:
    runs = big_runs()
    kw = dict(reference=BIG_REF, include=["run_classifier"])
    sampled = drift_from_runs(runs, classifier_max_runs=500, **kw)
    full = drift_from_runs(runs, classifier_max_runs=None, **kw)
    assert sampled.height == full.height == 6  # 2 agents x 3 windows
    assert (sampled["n_ref"] == 500).all() and (sampled["n_cur"] == 500).all()
    assert (full["n_cur"] > 2000).all()
    assert sampled["explain"].str.contains(r"on a sample of 500 of \d+ reference and 500 of \d+ current runs").all()
    assert not full["explain"].str.contains("sample").any()

    def hits(d: pl.DataFrame) -> set[tuple[str, datetime]]:
        return set(d.filter("drifted").select("series", "window_start").iter_rows())

    third = datetime(2026, 10, 15, tzinfo=UTC)
    assert hits(sampled) == hits(full) == {("agent=a", third), ("agent=a", third + timedelta(weeks=1))}
    # the sample's AUC is within a few standard errors (~0.02 with 500 runs a side) of the full one
    assert np.abs(sampled["statistic"].to_numpy() - full["statistic"].to_numpy()).max() < 0.08
    assert sampled.filter("drifted")["explain"].str.contains("most different: cost_").all()


def test_classifier_sample_is_seeded() -> None:
    runs = big_runs(n_per_week=1000)
    kw = dict(reference=BIG_REF, include=["run_classifier"], classifier_max_runs=300)
    a = drift_from_runs(runs, **kw)
    assert a.equals(drift_from_runs(runs, **kw))
    assert a.equals(drift_from_runs(runs.sample(fraction=1.0, shuffle=True, seed=3), **kw))  # input order
    b = drift_from_runs(runs, random_state=1, **kw)
    assert b.height == a.height
    assert not np.array_equal(a["statistic"].to_numpy(), b["statistic"].to_numpy())


def test_classifier_sample_changes_nothing_below_the_cap(
    demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], demo_drift: pl.DataFrame
) -> None:
    # the demo's cells hold at most ~300 runs: any cap above that scores every run, as the default does
    for cap in (None, 400):
        assert drift_from_runs(*demo_tables, reference=REF, classifier_max_runs=cap).equals(demo_drift)
    clf = demo_drift.filter(pl.col("feature") == "run_classifier")
    assert not clf["explain"].str.contains("sample").any()


@pytest.mark.parametrize("cap", [99, 0, 1.5, True, "5000"])
def test_classifier_max_runs_is_validated(
    demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], cap: object
) -> None:
    with pytest.raises(InvalidParameterError, match="classifier_max_runs"):
        drift_from_runs(*demo_tables, reference=REF, classifier_max_runs=cap)  # type: ignore[arg-type]


def test_row_order_of_the_run_tables_does_not_matter(
    demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], demo_drift: pl.DataFrame
) -> None:
    shuffled = [t.sample(fraction=1.0, shuffle=True, seed=i) for i, t in enumerate(demo_tables)]
    assert drift_from_runs(*shuffled, reference=REF).equals(demo_drift)
    # count tables holding runs the features do not (and missing some)
    f, a, b = demo_tables
    extra = b.head(50).with_columns(pl.concat_str(pl.lit("x-"), "run_id").alias("run_id"))
    d = drift_from_runs(f, a, pl.concat([b.filter(pl.col("run_id") != f["run_id"][0]), extra]), reference=REF,
                        include=["action_bigrams"])
    assert d.equals(drift_from_runs(f, a, b.filter(pl.col("run_id") != f["run_id"][0]), reference=REF,
                                    include=["action_bigrams"]))


def test_categorical_count_tables_as_the_audit_holds_them(
    demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], demo_drift: pl.DataFrame
) -> None:
    f, a, b = demo_tables

    def compact(t: pl.DataFrame, col: str) -> pl.DataFrame:
        return t.select("run_id", pl.col(col).cast(pl.Categorical), pl.col("n").cast(pl.UInt32))

    assert drift_from_runs(f, compact(a, "action"), compact(b, "bigram"), reference=REF).equals(demo_drift)
    enum = pl.Enum(sorted(set(a["action"])))
    a_enum = a.with_columns(pl.col("action").cast(enum))
    assert drift_from_runs(f, a_enum, b, reference=REF).equals(demo_drift)


def test_category_counts_in_steps_and_sparse_match_a_dense_build(
    demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], demo_drift: pl.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Count sums in steps, sparse per-run counts and the clustered covariance filled in per series a few
    rows at a time give exactly what one dense runs x categories matrix gives; numeric tests run per batch
    of series with the same results."""
    from driftwatch import drift as D

    f, a, b = demo_tables
    opts = D._Options.make(by=("agent",), every="1w", alpha=0.01, fdr="series", min_effect=None, min_runs=20,
                           include=None, max_categories=30, classifier_max_train=10_000,
                           classifier_max_runs=5_000, random_state=0)
    data, _ = D._assemble(D._check_tables((f, a, b), "features"), REF, None, opts)
    default = {kind: D._category_block(data, kind, opts) for kind in ("actions", "bigrams")}
    monkeypatch.setattr(D, "_COUNT_STEP", 997)
    monkeypatch.setattr(D, "_COV_STEP", 61)
    monkeypatch.setattr(D, "_MERGE_STEP", 50)
    monkeypatch.setattr(D, "_SHIFT_STEP", 333)
    data, _ = D._assemble(D._check_tables((f, a, b), "features"), REF, None, opts)  # (a block reads its counts once)
    for kind, cat in default.items():
        small = D._category_block(data, kind, opts)
        assert cat is not None and small is not None
        for x, y in ((cat.S1, small.S1), (cat.m, small.m), (cat.unit_cov, small.unit_cov)):
            assert np.array_equal(x, y)
        # the dense computation: group and row sums of the matrix, residuals of all of a series' runs at once
        C = small.C.toarray().astype(float)
        assert np.array_equal(D._gsum(C, data.gid, data.groups), small.S1)
        assert np.array_equal(C.sum(1), small.m)
        with np.errstate(invalid="ignore", divide="ignore"):
            pg = np.nan_to_num(small.S1 / small.N[:, None])
        R = D._gsum((small.m > 0).astype(float), data.gid, data.groups)
        w = np.sqrt(np.where(R > 1, R / np.maximum(R - 1.0, 1.0), 1.0))
        NS = small.N.reshape(data.n_series, data.n_slots).sum(1)
        bounds = np.searchsorted(data.s, np.arange(data.n_series + 1))
        for s in range(data.n_series):
            lo, hi = bounds[s], bounds[s + 1]
            g = data.gid[lo:hi]
            e = pg[g]
            e *= small.m[lo:hi, None]
            np.subtract(C[lo:hi], e, out=e)
            e *= w[g][:, None]
            assert np.array_equal(e.T @ e / NS[s], small.unit_cov[s])
    # and the numeric tests, one series at a time
    monkeypatch.setattr(D, "_NUMERIC_BATCH", 100)
    assert drift_from_runs(*demo_tables, reference=REF).equals(demo_drift)


def test_run_ids_matched_in_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sorted run ids are matched by merging in steps; repeated ids leave it to a join (None)."""
    from driftwatch import drift as D

    monkeypatch.setattr(D, "_MERGE_STEP", 3)
    a = pl.Series([f"r{i:02d}" for i in (1, 2, 4, 5, 7, 8, 9, 12)])
    b = pl.Series([f"r{i:02d}" for i in (0, 2, 3, 4, 8, 9, 10, 12, 13)])
    pairs = D._merge_sorted_ids(a, b)
    assert pairs is not None
    assert pairs[0].tolist() == [1, 2, 5, 6, 7] and pairs[1].tolist() == [1, 3, 4, 5, 7]
    assert D._merge_sorted_ids(pl.Series(["r02", "r02", "r04"]), b) is None
    assert D._merge_sorted_ids(a, pl.Series(["r01", "r01"])) is None
    monkeypatch.setattr(D, "_SHIFT_STEP", 2)
    rid = pl.concat([pl.Series(["a", "a", "b"]), pl.Series(["b", None, None, "c"])], rechunk=False)
    assert D._run_starts(rid).tolist() == [True, False, True, False, True, False, True]


@pytest.mark.parametrize("absent", [["latency_ms"], ["input_tokens", "output_tokens"], ["confidence"]])
def test_absent_optional_columns_leak_no_warning(absent: list[str]) -> None:
    """An absent optional column is all NaN among the classifier's inputs; np.nanstd warned
    "Degrees of freedom <= 0" on it (an error under -W error, and from dw.audit too)."""
    import warnings

    ev = synth.generate(days=14, runs_per_day=40, seed=3).events.drop(absent)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = dw.detect_drift(ev, reference="7d")
        assert rows.height > 0
        assert dw.audit(ev).runs.height == ev["run_id"].n_unique()


def test_cost_logging_that_starts_is_no_drift() -> None:
    """A fleet that starts logging costs (and tokens) midway behaves the same throughout: the
    run classifier must not tell the windows apart by what was logged (a probe found AUC 1.0)."""
    import random

    rng = random.Random(0)
    rows = []
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    for day in range(21):
        for r in range(30):
            start = t0 + timedelta(days=day, minutes=40 * r)
            for s in range(1, rng.randint(3, 8) + 1):
                llm = s % 2 == 1
                rows.append({"run_id": f"d{day:02d}-r{r}", "step": s, "ts": start + timedelta(seconds=s), "agent": "a",
                             "action": "llm" if llm else rng.choice(["search", "read"]),
                             "input_tokens": (rng.randint(100, 900) if llm else None) if day >= 10 else None,
                             "cost_usd": (rng.uniform(0.001, 0.01) if llm else None) if day >= 14 else None})
    ev = pl.DataFrame(rows, infer_schema_length=None)
    d = dw.detect_drift(ev, reference=("2026-10-01", "2026-10-08"), every="7d")
    clf = d.filter(pl.col("feature") == "run_classifier")
    assert clf.height == 2 and not clf["drifted"].any() and (clf["effect_size"] < 0.2).all()
    assert not d["drifted"].any()
    # logging that starts in the last of six windows (pooled over the windows, the share of runs
    # with a cost moved by only 1/6)
    late = ev.filter(pl.col("ts") < datetime(2026, 10, 15, tzinfo=UTC)).with_columns(pl.lit(None, pl.Float64).alias("cost_usd"))
    weeks = [late.with_columns(pl.col("ts") + timedelta(days=7 * k), (pl.col("run_id") + f"-w{k}").alias("run_id"))
             for k in range(3)]
    last = ev.filter(pl.col("ts") >= datetime(2026, 10, 15, tzinfo=UTC)).with_columns(
        pl.col("ts") + timedelta(days=28), (pl.col("run_id") + "-last").alias("run_id"))
    long = pl.concat([*weeks, last.select(late.columns)])
    d = dw.detect_drift(long, reference=("2026-10-01", "2026-10-08"), every="7d")
    clf = d.filter(pl.col("feature") == "run_classifier")
    assert clf.height >= 4 and not clf["drifted"].any() and (clf["effect_size"] < 0.2).all()


def _tool_timed_log(*, llm_per_tool_late: int, jitter: int) -> pl.DataFrame:
    """21 days of 30 runs: three tool calls, each after one LLM call (``llm_per_tool_late`` from
    day 14 on); only the tool calls record a latency, 100 ms plus up to ``jitter``."""
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    rows = []
    for day in range(21):
        for r in range(30):
            start, step = t0 + timedelta(days=day, minutes=30 * r), 0
            for k in range(3):
                for _ in range(1 if day < 14 else llm_per_tool_late):
                    step += 1
                    rows.append((f"d{day:02d}r{r:02d}", step, start + timedelta(seconds=step), "llm", None))
                step += 1
                rows.append((f"d{day:02d}r{r:02d}", step, start + timedelta(seconds=step), f"tool{(r + k) % 3}",
                             100.0 + (r % jitter)))
    return pl.DataFrame(rows, schema={"run_id": pl.String, "step": pl.Int64, "ts": pl.Datetime("us", "UTC"),
                                      "action": pl.String, "latency_ms": pl.Float64}, orient="row")


def test_step_latency_is_per_step_that_recorded_one() -> None:
    """Only tool steps log a latency (100 ms each); from day 14 the agent makes two LLM calls per
    tool call instead of one. Averaged over every step, the latency 'changed' from 50 to 33 ms
    (KS 1.0); per step that recorded it, it held at 100 ms."""
    ev = _tool_timed_log(llm_per_tool_late=2, jitter=5)
    d = dw.detect_drift(ev, reference="14d", include=["latency", "run_classifier"])
    lat = d.filter(pl.col("feature") == "latency")
    assert lat.height and not lat["drifted"].any(), lat.select("explain").rows()
    assert "102 ms -> 102 ms per step" in lat["explain"][0]
    # a per-run table stored before n_latency existed: latency per step, as before
    old = dw.drift_from_runs(dw.run_features(ev).drop("n_latency"), reference="14d", include=["latency"])
    assert old.filter(pl.col("feature") == "latency")["drifted"].all()
    assert "51.0 ms -> 34.0 ms per step" in old.filter(pl.col("feature") == "latency")["explain"][0]


def test_series_without_reference_runs_are_reported_not_dropped() -> None:
    """by=("agent", "version"): a version deployed after the reference, or an agent that first
    appears then, had no row at all: the deploy vanished from the result. Each such series now
    has a no_reference row per window (not compared: drifted false, no statistic)."""
    ev = synth.generate(days=28, runs_per_day=80, seed=4, scenario=synth.Scenario.stable()).events
    late = pl.col("ts") >= datetime(2026, 10, 15, tzinfo=UTC)
    ev = ev.with_columns(
        pl.when(late & (pl.col("agent") == "billing")).then(pl.lit("v2")).otherwise(pl.lit("v1")).alias("version"),
        pl.when(late & (pl.col("agent") == "support")).then(pl.lit("triage")).otherwise(pl.col("agent")).alias("agent"),
    )
    d = dw.detect_drift(ev, reference="14d", by=("agent", "version"), include=["tokens_per_run"])
    new = d.filter(pl.col("feature") == "no_reference")
    assert sorted(set(new["series"])) == ["agent=billing,version=v2", "agent=triage,version=v1"]
    assert (~new["drifted"]).all() and new["p_value"].is_null().all() and (new["n_ref"] == 0).all()
    assert new.filter(pl.col("series") == "agent=billing,version=v2")["n_cur"].sum() == ev.filter(
        late & (pl.col("agent") == "billing")).select(pl.col("run_id").n_unique()).item()
    assert "no reference runs" in new["explain"][0]
    tested = d.filter(pl.col("feature") != "no_reference")
    assert set(tested["series"]) == {"agent=planner,version=v1", "agent=research,version=v1"}
    # a fleet where no series has reference runs in the windows: only these rows
    only = dw.detect_drift(ev.filter(pl.col("agent") == "triage"), reference=ev.filter(pl.col("agent") == "planner"),
                           by="agent", include=["tokens_per_run"])
    assert only["feature"].unique().to_list() == ["no_reference"]


def test_current_range_overlapping_the_reference_is_refused_and_windows_end_with_it() -> None:
    ev = synth.generate(days=28, runs_per_day=60, seed=5, scenario=synth.Scenario.stable()).events
    ref = ("2026-10-01", "2026-10-15")
    with pytest.raises(InvalidParameterError, match="overlaps the reference"):
        detect_drift(ev, reference=ref, current=("2026-10-10", "2026-10-22"), include=["tokens_per_run"])
    d = detect_drift(ev, reference=ref, current=("2026-10-15", "2026-10-27"), include=["tokens_per_run"])
    assert d["window_end"].max() == datetime(2026, 10, 27, tzinfo=UTC)  # not 10-29, past the range
    assert d["window_start"].max() == datetime(2026, 10, 22, tzinfo=UTC)
    # numpy integers are integers
    again = detect_drift(ev, reference=ref, current=("2026-10-15", "2026-10-27"), include=["tokens_per_run"],
                         min_runs=np.int64(20))
    assert again.equals(d)


def test_latency_history_without_step_counts_is_read_alike() -> None:
    """After an upgrade the incremental history's runs lack n_latency: dividing them by every
    step and tonight's by the timed steps made every agent's latency 'drift' 120 -> 230 ms."""
    ev = _tool_timed_log(llm_per_tool_late=1, jitter=7)
    feats = dw.run_features(ev)
    stored = feats.with_columns(pl.when(pl.col("first_ts") < datetime(2026, 1, 19, tzinfo=UTC))
                                .then(None).otherwise(pl.col("n_latency")).alias("n_latency"))
    for tables in (feats, stored):
        d = dw.drift_from_runs(tables, reference="14d", include=["latency", "run_classifier"])
        assert not d["drifted"].any(), d.select("feature", "explain").rows()


def _cohort(seed: int, prefix: str, scenario: synth.Scenario, days: int = 21) -> pl.DataFrame:
    """A fleet over 2026-10-01 .. + days, its run ids prefixed (two cohorts' runs are distinct runs)."""
    ev = synth.generate(days=days, runs_per_day=60, seed=seed, scenario=scenario).events
    return ev.with_columns(
        (prefix + pl.col("run_id")).alias("run_id"),
        pl.when(pl.col("parent_run_id").is_not_null()).then(prefix + pl.col("parent_run_id")).alias("parent_run_id"),
    )


def test_reference_logs_of_the_same_period_compare_every_run_they_do_not_hold() -> None:
    """Reference logs were taken as a period: the current runs were cut at the reference logs'
    last timestamp, so a baseline cohort beside a canary over the same days tested nothing (0 rows,
    silently), and one late step in otherwise earlier reference logs dropped most current runs.
    The current runs are now the runs the reference does not hold (by run_id), windows from UTC
    midnight of the first of them."""
    base = _cohort(31, "b-", synth.Scenario.stable())
    canary = _cohort(32, "c-", synth.Scenario.stable(changepoints=(synth.ChangeSpec("support", 0, "error_rate", 4.0),)))
    kw = dict(include=["error_rate", "tokens_per_run"])
    d = detect_drift(canary, reference=base, **kw)
    assert d.height > 0 and d["window_start"].min() == START  # midnight of the first canary run's day
    assert (d["window_start"].dt.time() == datetime.min.time()).all()
    runs = canary.group_by("agent").agg(pl.col("run_id").n_unique().alias("n")).sort("agent")
    n_cur = d.filter(pl.col("feature") == "error_rate").group_by("agent").agg(pl.col("n_cur").sum().alias("n"))
    assert n_cur.sort("agent").equals(runs)  # every canary run in a window (21 days: 3 full weeks)
    hit = d.filter("drifted")
    assert set(zip(hit["agent"], hit["feature"], strict=True)) == {("support", "error_rate")}
    assert hit.height == 3
    # per-run tables alike; and data that also holds the reference logs compares the same runs
    assert drift_from_runs(*tables(canary), reference=tables(base), **kw).equals(d)
    shuffled = [t.sample(fraction=1.0, shuffle=True, seed=0) for t in tables(pl.concat([base, canary]))]
    assert drift_from_runs(*shuffled, reference=tables(base), **kw).equals(d)  # (run ids matched unsorted)
    assert detect_drift(pl.concat([base, canary]), reference=base, **kw).equals(d)
    # reference logs of an earlier month, one run resumed with a step on 2026-10-18: no current run is lost
    sept = _cohort(21, "s-", synth.Scenario.stable(), days=14).with_columns(
        pl.col("ts").dt.offset_by("-30d"))
    last = sept.filter(pl.col("run_id") == sept["run_id"][0]).sort("step").tail(1)
    late = last.with_columns(pl.col("step") + 1, pl.lit(datetime(2026, 10, 18, 12, tzinfo=UTC)).alias("ts"))
    clean = detect_drift(canary, reference=sept, **kw)
    assert clean["n_cur"].sum() == d["n_cur"].sum() and clean["window_start"].min() == START
    cells = ["series", "window_start", "window_end", "feature", "n_cur"]
    assert detect_drift(canary, reference=pl.concat([sept, late]), **kw).select(cells).equals(clean.select(cells))


def test_nothing_left_to_compare_says_why() -> None:
    """The same logs given as the reference and as the data tested nothing without a word; an
    empty current frame raised TypeError (cannot unpack None)."""
    import warnings

    ev = _cohort(7, "x-", synth.Scenario.stable(), days=14)
    kw = dict(include=["tokens_per_run"])
    with pytest.warns(UserWarning, match=r"every run of the data \(\d[\d,]*\) is also in the reference"):
        assert detect_drift(ev, reference=ev, **kw).height == 0
    with pytest.warns(UserWarning, match="current holds no runs"):
        d = detect_drift(ev, reference=("2026-10-01", "2026-10-08"), current=ev.head(0), **kw)
    assert d.height == 0 and d.columns[:2] == ["series", "agent"]
    with pytest.warns(UserWarning, match="no run of the data starts at or after the reference's end"):
        assert drift_from_runs(*tables(ev), reference=("2026-10-01", "2026-11-01"), **kw).height == 0
    with pytest.warns(UserWarning, match=r"no run of the data starts in current .* outside the reference"):
        assert detect_drift(ev, reference=ev, current=("2026-10-02", "2026-10-09"), **kw).height == 0
    # collected instead of warned (the audit's notes, the CLI's message); none when runs are compared
    from driftwatch.drift import _collecting_notes

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _collecting_notes() as why:
            assert detect_drift(ev, reference=ev, **kw).height == 0
        assert len(why) == 1 and "is also in the reference" in why[0]
        with _collecting_notes() as why:
            assert detect_drift(ev, reference="7d", **kw).height > 0
        assert why == []


@pytest.mark.parametrize("value", [-1.0, -1e-9, float("nan"), float("inf"), -np.inf, np.float32(-0.5), True])
def test_min_effect_must_be_a_finite_non_negative_number(
    demo_tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], value: object
) -> None:
    """min_effect={"tool_mix": -1.0} was accepted and turned the minimum-effect floor off."""
    with pytest.raises(InvalidParameterError, match=r"min_effect\['tool_mix'\] must be a finite number >= 0.*got"):
        drift_from_runs(*demo_tables, reference=REF, include=["tool_mix"], min_effect={"tool_mix": value})
    with pytest.raises(InvalidParameterError, match=r"min_effect\['latency'\]"):
        detect_drift(pl.DataFrame({"run_id": ["a"], "ts": [START], "step": [0], "agent": ["x"], "action": ["y"]}),
                     reference="1d", min_effect={"latency": value})
    zero = drift_from_runs(*demo_tables, reference=REF, include=["tool_mix"], min_effect={"tool_mix": 0})
    assert (zero["threshold"] == 0.0).all()


def test_feedback_holding_at_one_value_while_outcome_falls_is_flagged(
    demo_fleet: synth.Fleet, weak_fleet: synth.Fleet
) -> None:
    """A proxy feedback that holds at one value (every rating 1.0) while the outcome collapses
    gave no feedback_outcome_gap row at all: a feedback without spread could not be standardised,
    so the series was dropped. Only what has spread is standardised now."""
    kw = dict(reference=REF, include=["feedback_outcome_gap"])
    for value in (1.0, 0.7):  # (0.7: sums of squares of a constant leave round-off, not spread)
        const = pl.when(pl.col("feedback").is_not_null()).then(value).alias("feedback")
        d = detect_drift(demo_fleet.events.with_columns(const), **kw)
        planner = d.filter(pl.col("series") == "agent=planner")
        assert planner.height == 4 and planner["drifted"].all(), planner.select("explain").rows()
        assert f"feedback {value:.2f} -> {value:.2f}" in planner["explain"][0]
        assert "feedback holds while outcome falls" in planner["explain"][0]
        assert not d.filter(pl.col("series") != "agent=planner")["drifted"].any()
        assert d["series"].n_unique() == 4  # every series tested
        # a stable fleet (but for billing's drift from day 24): no other series drifts, billing only after its onset
        w = detect_drift(weak_fleet.events.with_columns(const), **kw)
        hit = w.filter("drifted")
        assert set(hit["series"]) == {"agent=billing"} and hit["window_start"].min() >= datetime(2026, 10, 22,
                                                                                                  tzinfo=UTC)
    # feedback and outcome both constant: nothing moved, nothing tested
    both = demo_fleet.events.with_columns(
        pl.when(pl.col("feedback").is_not_null()).then(1.0).alias("feedback"),
        pl.when(pl.col("outcome").is_not_null()).then(0.3).alias("outcome"),
    )
    assert detect_drift(both, **kw).height == 0


def test_reference_and_current_frames_that_share_runs_compare_each_run_once() -> None:
    """Reference and current frames that share runs put those runs in both samples, silently (the
    same frame as both compared the data with itself). A current frame's runs that are reference
    runs (by run_id) are now left out, for a frame or a range reference, as for a current range."""
    import warnings

    ev = synth.generate(days=21, runs_per_day=60, seed=5, scenario=synth.Scenario.stable()).events
    first = ev.group_by("run_id").agg(pl.col("ts").min().alias("f"), pl.col("agent").first())

    def between(lo: str, hi: str) -> pl.DataFrame:
        t = pl.col("f").dt.date()
        return first.filter(t >= date.fromisoformat(lo), t < date.fromisoformat(hi))

    ref_runs, cur_runs = between("2026-10-01", "2026-10-12"), between("2026-10-08", "2026-10-22")
    ref = ev.filter(pl.col("run_id").is_in(ref_runs["run_id"].implode()))
    cur = ev.filter(pl.col("run_id").is_in(cur_runs["run_id"].implode()))
    own = cur_runs.filter(~pl.col("run_id").is_in(ref_runs["run_id"].implode()))  # from 10-12 on
    assert 0 < own.height < cur_runs.height
    want = own.group_by("agent").len("n").sort("agent")
    kw = dict(include=["error_rate"], min_runs=2)

    def n_cur(d: pl.DataFrame) -> pl.DataFrame:
        return d.group_by("agent").agg(pl.col("n_cur").sum().alias("n")).sort("agent").cast({"n": pl.UInt32})

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (runs are left: no warning)
        frames = detect_drift(ev, reference=ref, current=cur, **kw)
        ranged = detect_drift(ev, reference=("2026-10-01", "2026-10-12"), current=cur, **kw)
        tabled = drift_from_runs(*tables(ev), reference=tables(ref), current=tables(cur), **kw)
    for d in (frames, ranged, tabled):
        assert n_cur(d).equals(want)
        assert d["window_start"].min() == datetime(2026, 10, 12, tzinfo=UTC)  # midnight of the first own run
    assert ranged.equals(frames) and tabled.equals(frames)
    # a current range with the reference frame compares the same runs
    by_range = detect_drift(ev, reference=ref, current=("2026-10-12", "2026-10-22"), **kw)
    assert n_cur(by_range).equals(want)
    # the same frame as both: nothing to compare, and why
    with pytest.warns(UserWarning, match=r"every run of current \(1,\d\d\d\) is also in the reference"):
        assert detect_drift(ev, reference=ev, current=ev, **kw).height == 0
    with pytest.warns(UserWarning, match=r"every run of current \(\d+\) is also in the reference"):
        assert detect_drift(ev, reference=("2026-10-01", "2026-10-22"), current=ref, **kw).height == 0


def test_series_with_a_single_category_are_not_tested() -> None:
    """With short windows every bigram of a series can be too rare for a cell of its own: all pooled
    into "(other)", the test compared 100% with 100% and reported it "steady" with p = 1, 70 of 92
    rows diluting the correction of the others."""
    sc = synth.Scenario.stable(changepoints=(synth.ChangeSpec("support", 10, "error_rate", 4.0),))
    ev = synth.generate(days=21, runs_per_day=80, seed=5, scenario=sc).events
    d = detect_drift(ev, reference="7d", every="12h", min_runs=5, include=["action_bigrams", "tool_mix"])
    big = d.filter(pl.col("feature") == "action_bigrams")
    assert big.height > 0
    assert not d["explain"].str.contains(r"\(other\)'? 100\.0% -> 100\.0%").any()
    # an agent that only ever calls one tool: no tool_mix row (nor any categorical row)
    one = ev.filter(pl.col("agent") == "billing").with_columns(
        pl.when(pl.col("action") != "llm").then(pl.lit("lookup")).otherwise(pl.col("action")).alias("action"))
    solo = detect_drift(one, reference="7d", include=["tool_mix", "action_bigrams", "action_entropy", "steps_per_run"])
    assert set(solo["feature"]) == {"steps_per_run"}


def test_by_column_missing_from_the_reference_and_empty_reference_are_named() -> None:
    """A by column missing from the reference frame only was blamed on "events"; an empty
    reference frame read "reference holds no runs (range None .. None)"."""
    ev = synth.generate(days=14, runs_per_day=30, seed=2, scenario=synth.Scenario.stable()).events
    ev = ev.with_columns(pl.lit("acme").alias("tenant"))
    late = pl.col("ts") >= datetime(2026, 10, 8, tzinfo=UTC)
    ref, cur = ev.filter(~late).drop("tenant"), ev.filter(late)
    with pytest.raises(SchemaError, match=r"^reference: by column\(s\) \['tenant'\] not in the reference events"):
        detect_drift(cur, reference=ref, by="tenant")
    with pytest.raises(SchemaError, match=r"^current: by column\(s\) \['tenant'\] not in the current events"):
        detect_drift(cur, reference=("2026-10-01", "2026-10-08"), current=ref, by="tenant")
    with pytest.raises(SchemaError, match=r"^reference: by column\(s\) \['tenant'\]"):
        drift_from_runs(F.run_features(cur, by="tenant"), reference=ref, by="tenant")
    for empty in (ev.head(0), ev.head(0).lazy()):
        with pytest.raises(InvalidParameterError, match=r"^reference holds no runs: the reference frame is empty$"):
            detect_drift(ev, reference=empty)
    with pytest.raises(InvalidParameterError, match="the reference frame is empty"):
        drift_from_runs(*tables(ev), reference=tables(ev.head(0)))
    # a per-run feature is not a label: refused as by (it was grouped by step count)
    with pytest.raises(InvalidParameterError, match="cannot group by 'n_tool': it is a per-run feature"):
        detect_drift(cur, reference=ref, by="n_tool", include=["tokens_per_run"], min_runs=2)
    # nor can a list of tags name a series (a raw Polars cast error before)
    tagged = ev.with_columns(pl.concat_list(pl.lit("a"), pl.lit("b")).alias("tags"))
    with pytest.raises(InvalidParameterError, match="'tags' holds List"):
        detect_drift(tagged, reference=("2026-10-01", "2026-10-08"), by="tags")


def test_nothing_tested_is_said_and_include_must_name_a_feature() -> None:
    """Windows too short for min_runs runs, or include=[], returned an empty frame without a word."""
    import warnings

    from driftwatch.drift import _collecting_notes

    ev = synth.generate(days=10, runs_per_day=40, seed=5, scenario=synth.Scenario.stable()).events
    for inc in ([], ()):
        with pytest.raises(InvalidParameterError, match="include must name at least one feature"):
            detect_drift(ev, reference="3d", include=inc)
        with pytest.raises(InvalidParameterError, match="include must name at least one feature"):
            drift_from_runs(*tables(ev), reference="3d", include=inc)
    kw = dict(reference="3d", every="1h", include=["tokens_per_run"])
    with pytest.warns(UserWarning, match=r"no series had 20 runs in the reference and 20 in a window \(windows are 1h"
                                         r" long; min_runs=20\): a series holds at most \d+ reference runs and \d+ "
                                         r"runs in a window"):
        assert detect_drift(ev, **kw).height == 0
    # collected, not warned, inside the CLI's and the audit's block (said once, by them)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _collecting_notes() as why:
            assert drift_from_runs(*tables(ev), **kw).height == 0
        assert len(why) == 1 and why[0].startswith("no series had 20 runs in the reference")
        with _collecting_notes() as why:
            assert detect_drift(ev, reference="3d", every="3d", include=["tokens_per_run"]).height > 0
        assert why == []


def _constant_runs(
    windows: list[dict[str, Any]], n: int = 40
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Hand-built per-run tables of one agent: ``n`` runs a week, every run of week ``i`` alike
    (``windows[i]``: its tools ``{"a": 3}``, and optionally ``cost_usd``, ``feedback``, ``outcome``)."""
    ids = [f"r{w}_{i:03d}" for w in range(len(windows)) for i in range(n)]
    ts = [START + timedelta(days=7 * w, hours=4 * i) for w in range(len(windows)) for i in range(n)]
    cols = {c: np.repeat([float(w[c]) for w in windows], n) for c in ("cost_usd", "feedback", "outcome")
            if c in windows[0]}
    calls = [sum(w["tools"].values()) for w in windows]
    feats = pl.DataFrame({"run_id": ids, "agent": "x", "first_ts": pl.Series(ts).dt.cast_time_unit("us"),
                          "n_steps": np.repeat(calls, n) * 2 + 1, **cols})
    acts = pl.DataFrame(
        [(f"r{w}_{i:03d}", "x", tool, k) for w, win in enumerate(windows) for i in range(n)
         for tool, k in win["tools"].items()],
        schema=["run_id", "agent", "action", "n"], orient="row")
    big = acts.with_columns(pl.format("{} > {}", "action", "action").alias("bigram")).drop("action")
    return feats, acts, big.with_columns(pl.col("n") - 1).filter(pl.col("n") > 0)


def test_a_total_shift_of_the_tool_mix_is_drifted() -> None:
    """Every reference run calls only a, every run of a window only b: the covariance clustered by run
    is zero (no run differs from its window), the Wald test had no degree of freedom, and the row read
    "tool mix steady, a 100.0% -> 0.0% (JS distance 1.0)" with p = 1. Where the clustered covariance has
    no variance, that of runs each making one choice (the pooled shares, a run as the unit) stands in."""
    kw = dict(reference=("2026-10-01", "2026-10-08"), every="7d")
    a, b = {"tools": {"a": 3}}, {"tools": {"b": 3}}
    d = drift_from_runs(*_constant_runs([a, b]), include=["tool_mix", "action_bigrams", "action_entropy"], **kw)
    for feature in ("tool_mix", "action_bigrams"):
        row = d.filter(pl.col("feature") == feature).row(0, named=True)
        assert row["drifted"], row["explain"]
        # the run-level chi-square of 40 vs 40 runs, each all a or all b
        assert row["statistic"] == pytest.approx(80.0) and row["p_value"] < 1e-15
        assert row["effect_size"] > 0.99
    assert "tool mix shifted, a 100.0% -> 0.0%" in d.filter(pl.col("feature") == "tool_mix")["explain"][0]
    assert d.filter(pl.col("feature") == "action_entropy").row(0, named=True)["explain"].endswith(
        "tool choice not narrowing, entropy 0.0 -> 0.0 bits (0.0%)")
    # the same mix on both sides stays steady: a series of a alone is not tested; beside a later shift to b,
    # the window of a alone is steady (p = 1) and only the shift is drifted
    assert not drift_from_runs(*_constant_runs([a, a]), **kw)["drifted"].any()
    d = drift_from_runs(*_constant_runs([a, a, b]), include=["tool_mix"], **kw)
    assert d["drifted"].to_list() == [False, True]
    assert (d["statistic"][0], d["p_value"][0]) == (0.0, 1.0)
    # narrowing from a constant a/b mix to a alone: tool_mix and action_entropy (was dropped: z infinite)
    d = drift_from_runs(*_constant_runs([{"tools": {"a": 2, "b": 2}}, {"tools": {"a": 4}}]),
                        include=["tool_mix", "action_entropy"], **kw)
    assert d["feature"].to_list() == ["tool_mix", "action_entropy"] and d["drifted"].all()
    assert d["statistic"].is_finite().all()


def test_outcome_falling_from_one_constant_to_another_is_drifted() -> None:
    """Outcome 1 in every reference run and 0 in every run of a window (feedback constant): both samples
    without spread, Welch's t was infinite and the row was dropped. The standard error of exchangeable
    runs stands in: t = sqrt(n_ref + n_cur - 1)."""
    kw = dict(reference=("2026-10-01", "2026-10-08"), every="7d", include=["feedback_outcome_gap"])
    runs = _constant_runs([{"tools": {"a": 1}, "feedback": 0.8, "outcome": o} for o in (1.0, 1.0, 0.0)])
    d = drift_from_runs(*runs, **kw)
    assert d.height == 2 and d["drifted"].to_list() == [False, True], d["explain"].to_list()
    same, fell = d.rows(named=True)
    assert (same["statistic"], same["p_value"]) == (0.0, 1.0)  # the same outcome: nothing moved
    assert fell["statistic"] == pytest.approx(np.sqrt(79)) and fell["p_value"] < 1e-10
    assert fell["effect_size"] >= DEFAULT_MIN_EFFECT["feedback_outcome_gap"]
    assert "feedback holds while outcome falls, feedback 0.80 -> 0.80, outcome 1.0 -> 0.0" in fell["explain"]
    # outcome rising from one constant to another is no gap
    up = _constant_runs([{"tools": {"a": 1}, "feedback": 0.8, "outcome": o} for o in (0.0, 1.0)])
    row = drift_from_runs(*up, **kw).row(0, named=True)
    assert not row["drifted"] and row["p_value"] > 0.99


def test_a_constant_reference_is_scaled_by_its_mean_not_by_round_off() -> None:
    """A reference whose every run costs $0.70 has no standard deviation, but its sums of squares leave
    ~1e-8 of round-off: a constant 0.70 -> 0.75 read as an effect of 2 million (and 7.0 -> 7.5 as 0.07).
    A reference without spread is scaled by its mean, exactly."""
    kw = dict(reference=("2026-10-01", "2026-10-08"), every="7d", include=["cost_per_run"])
    for c1, effect, drifted in ((0.75, 0.05 / 0.7, False), (1.4, 1.0, True), (0.7, 0.0, False)):
        d = drift_from_runs(*_constant_runs([{"tools": {"a": 1}, "cost_usd": c} for c in (0.7, c1)]), **kw)
        row = d.row(0, named=True)
        assert row["effect_size"] == pytest.approx(effect, abs=1e-12) and row["drifted"] is drifted, row


def test_degenerate_shifts_in_one_agent_flag_it_and_change_nothing_else() -> None:
    """A synth stable fleet, but billing's runs call only one tool (lookup in the reference and the
    first window, settle after) and its outcome holds at 1 until it drops to 0: billing is flagged there,
    and every other row is what the unchanged fleet gives."""
    ev = synth.generate(days=28, runs_per_day=40, seed=7, scenario=synth.Scenario.stable()).events
    first = pl.col("ts").min().over("run_id")
    late = first >= datetime(2026, 10, 22, tzinfo=UTC)
    billing = pl.col("agent") == "billing"
    odd = ev.with_columns(
        pl.when(billing & (pl.col("action") != "llm")).then(pl.when(late).then(pl.lit("settle"))
                                                            .otherwise(pl.lit("lookup")))
        .otherwise(pl.col("action")).alias("action"),
        pl.when(billing & pl.col("feedback").is_not_null()).then(0.8).otherwise(pl.col("feedback")).alias("feedback"),
        pl.when(billing & pl.col("outcome").is_not_null()).then(pl.when(late).then(0.0).otherwise(1.0))
        .otherwise(pl.col("outcome")).alias("outcome"),
    )
    kw = dict(reference=REF, include=["tool_mix", "action_bigrams", "action_entropy", "feedback_outcome_gap",
                                      "steps_per_run", "error_rate", "self_similarity"])
    d, base = detect_drift(odd, **kw), detect_drift(ev, **kw)
    hit = d.filter("drifted")
    assert set(hit["series"]) == {"agent=billing"}
    assert set(hit["feature"]) == {"tool_mix", "action_bigrams", "feedback_outcome_gap"}
    assert (hit["window_start"] == datetime(2026, 10, 22, tzinfo=UTC)).all()
    assert not d.filter(pl.col("series") == "agent=billing", pl.col("window_start") < datetime(
        2026, 10, 22, tzinfo=UTC))["drifted"].any()
    others, was = (x.filter(pl.col("series") != "agent=billing") for x in (d, base))
    assert others.drop("q_value").equals(was.drop("q_value"))
    assert not base["drifted"].any()
