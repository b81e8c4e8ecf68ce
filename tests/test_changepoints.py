"""Change-points: bucket metrics, fleet-level detection (known answers on generated fleets), within-run CUSUM."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import driftwatch as dw
from driftwatch import synth
from driftwatch.changepoints import (
    CHANGEPOINT_SCHEMA,
    RUN_CHANGEPOINT_SCHEMA,
    auto_penalty,
    bucket_metrics_from_runs,
    changepoints_from_buckets,
    changepoints_from_runs,
    detect_changepoints,
    detect_run_changepoints,
    sparse_penalty,
)
from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.features import run_action_counts, run_features

T0 = datetime(2026, 10, 1, tzinfo=UTC)
MARGIN = 2  # buckets either side of the true change
DAYS = 60
RUNS_PER_DAY = 100  # ~25 runs per agent and day, weekends 35% lower

# Injected changes per fleet seed (the examples: runs 60% longer, error rates
# triple, cost per run jumps). Agents not listed stay stable (weekly swings, loops,
# cost spikes, pagination and polling as nuisances).
CHANGE_FLEETS: dict[int, tuple[synth.ChangeSpec, ...]] = {
    0: (
        synth.ChangeSpec("billing", 20, "steps_per_run", 1.6),
        synth.ChangeSpec("support", 35, "error_rate", 3.0),
        synth.ChangeSpec("research", 12, "cost_per_run", 1.8),
        synth.ChangeSpec("research", 44, "steps_per_run", 1.6),
    ),
    1: (
        synth.ChangeSpec("planner", 16, "error_rate", 3.0),
        synth.ChangeSpec("planner", 40, "cost_per_run", 1.8),
        synth.ChangeSpec("billing", 28, "cost_per_run", 1.8),
    ),
    2: (
        synth.ChangeSpec("support", 9, "steps_per_run", 1.6),
        synth.ChangeSpec("support", 47, "cost_per_run", 1.8),
        synth.ChangeSpec("research", 25, "error_rate", 3.0),
    ),
    3: (
        synth.ChangeSpec("planner", 31, "steps_per_run", 1.6),
        synth.ChangeSpec("billing", 14, "error_rate", 3.0),
        synth.ChangeSpec("billing", 38, "steps_per_run", 1.6),
    ),
}
STABLE_SEEDS = (10, 11, 12)
# the bucket metric(s) in which each injected change must show up
EXPECTED_METRICS = {
    "steps_per_run": {"steps_mean", "steps_p90"},
    "error_rate": {"error_rate", "error_run_rate"},
    "cost_per_run": {"cost_per_run"},
}


def _fleet_tables(seed: int, changes: tuple[synth.ChangeSpec, ...]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    scenario = synth.Scenario(changepoints=changes, feedback_drift=())
    fleet = synth.generate(days=DAYS, runs_per_day=RUNS_PER_DAY, seed=seed, scenario=scenario)
    return run_features(fleet.events), run_action_counts(fleet.events), fleet.truth["changepoints"]


@pytest.fixture(scope="module")
def change_fleets() -> dict[int, tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]]:
    return {seed: _fleet_tables(seed, changes) for seed, changes in CHANGE_FLEETS.items()}


@pytest.fixture(scope="module")
def stable_fleets() -> dict[int, tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]]:
    return {seed: _fleet_tables(seed, ()) for seed in STABLE_SEEDS}


def _match(pred: list[int], truth: list[int]) -> tuple[int, int, int]:
    """Greedy one-to-one matching within MARGIN buckets: (tp, fp, fn)."""
    used: set[int] = set()
    tp = 0
    for t in sorted(truth):
        near = [p for p in pred if abs(p - t) <= MARGIN and p not in used]
        if near:
            used.add(min(near, key=lambda p: abs(p - t)))
            tp += 1
    return tp, len(pred) - len(used), len(truth) - tp


def _f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 1.0  # no prediction, no false alarm
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _breakpoints(cps: pl.DataFrame) -> dict[str, list[int]]:
    top = cps.filter(pl.col("rank") == 1)
    return {s: g["bucket_index"].to_list() for (s,), g in top.group_by("series")}


# --------------------------------------------------------------------------- known answers


def test_known_answer_f1_on_generated_fleets(change_fleets, capsys) -> None:
    totals = {"method": [0, 0, 0], "predict nothing": [0, 0, 0]}
    misses: list[str] = []
    for seed, (feats, counts, truth) in change_fleets.items():
        cps = changepoints_from_runs(feats, counts)
        assert cps.schema == pl.Schema(CHANGEPOINT_SCHEMA)
        pred = _breakpoints(cps)
        for agent in ("planner", "billing", "support", "research"):
            t = truth.filter(pl.col("agent") == agent)["day"].to_list()
            p = pred.get(f"agent={agent}", [])
            for name, guess in (("method", p), ("predict nothing", [])):
                for i, v in enumerate(_match(guess, t)):
                    totals[name][i] += v
            if _match(p, t)[1:] != (0, 0):
                misses.append(f"seed {seed} {agent}: truth {t} predicted {p}")
        # each detected true change names the injected metric among the metrics that moved
        for row in truth.iter_rows(named=True):
            hit = cps.filter(
                (pl.col("series") == f"agent={row['agent']}")
                & ((pl.col("bucket_index") - row["day"]).abs() <= MARGIN)
            )
            if hit.height:
                moved = set(hit["metrics_moved"][0])
                assert moved & EXPECTED_METRICS[row["metric"]], (row, moved)
                metric_rows = hit.filter(pl.col("metric").is_in(list(EXPECTED_METRICS[row["metric"]])))
                # the injected metric moved by more than a quarter; a companion (the 90th percentile of a
                # longer run length, a smooth mid-quantile) may move less, but materially
                assert metric_rows["magnitude"].max() > 0.25, metric_rows
                assert (metric_rows["magnitude"] >= 0.1).all(), metric_rows
    with capsys.disabled():
        print(f"\nchange-points, {len(change_fleets)} fleets x 4 agents x {DAYS} days, margin +-{MARGIN} buckets:")
        for name, (tp, fp, fn) in totals.items():
            p, r, f1 = _f1(tp, fp, fn)
            print(f"  {name:16s} tp={tp:2d} fp={fp:2d} fn={fn:2d} precision={p:.3f} recall={r:.3f} F1={f1:.3f}")
        for m in misses:
            print("  miss:", m)
    assert _f1(*totals["method"])[2] >= 0.9
    assert _f1(*totals["predict nothing"])[2] == 0.0


def test_no_changepoints_on_stable_fleets(stable_fleets) -> None:
    for seed, (feats, counts, _) in stable_fleets.items():
        cps = changepoints_from_runs(feats, counts)  # includes the fleet series "all"
        assert cps.height == 0, (seed, cps.select("series", "metric", "bucket_index", "score"))


def test_weekly_volume_swing_is_not_behaviour(stable_fleets) -> None:
    feats, counts, _ = stable_fleets[STABLE_SEEDS[0]]
    buckets = bucket_metrics_from_runs(feats, counts, include_fleet=False)
    weekend = buckets.filter(pl.col("bucket").dt.weekday() >= 6)["runs"].mean()
    weekday = buckets.filter(pl.col("bucket").dt.weekday() < 6)["runs"].mean()
    assert weekend < 0.8 * weekday  # the nuisance is really there
    # ... and volume is reported but not watched unless asked for; when asked, weekly
    # swings still do not form a regime (the weekly pattern repeats)
    assert changepoints_from_buckets(buckets).height == 0
    assert changepoints_from_buckets(buckets, metrics=["runs"]).height == 0


def test_fleet_series_sees_large_agent_changes(change_fleets) -> None:
    feats, counts, truth = change_fleets[0]
    cps = changepoints_from_runs(feats, counts)
    fleet = cps.filter(pl.col("series") == "all")["bucket_index"].unique().to_list()
    assert any(abs(b - d) <= MARGIN for b in fleet for d in truth["day"].to_list())


def test_detect_changepoints_matches_the_two_stage_path() -> None:
    scenario = synth.Scenario(changepoints=(synth.ChangeSpec("billing", 12, "steps_per_run", 1.7),), feedback_drift=())
    fleet = synth.generate(days=24, runs_per_day=120, seed=5, scenario=scenario)
    ev = fleet.events
    direct = detect_changepoints(ev)
    # per-run tables computed on two chunks of whole runs, concatenated (the audit's stage 1)
    runs = ev["run_id"].unique().sort()
    half = ev.filter(pl.col("run_id").is_in(runs[: runs.len() // 2].implode()))
    rest = ev.filter(~pl.col("run_id").is_in(runs[: runs.len() // 2].implode()))
    feats = pl.concat([run_features(half), run_features(rest)])
    counts = pl.concat([run_action_counts(half), run_action_counts(rest)])
    staged = changepoints_from_runs(feats, counts)
    assert_frame_equal(direct, staged)
    top = direct.filter((pl.col("series") == "agent=billing") & (pl.col("rank") == 1))
    assert top["bucket_index"].to_list() == [12]
    assert dw.detect_changepoints is detect_changepoints
    # deterministic and independent of row order
    assert_frame_equal(detect_changepoints(ev.sample(fraction=1.0, shuffle=True, seed=1)), direct)


# --------------------------------------------------------------------------- bucket metrics


def _runs_table() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "run_id": ["a", "b", "c", "d"],
            "agent": ["bot", "bot", "bot", "other"],
            "version": ["v1", "v1", "v2", "v1"],
            "first_ts": [T0 + timedelta(hours=h) for h in (1, 5, 26, 30)],
            "n_steps": [4, 6, 10, 2],
            "n_errors": [0, 3, 2, 0],
            "n_llm": [2, 3, 5, 1],
            "tokens": [100, 200, 300, 50],
            "cost_usd": [0.1, 0.2, 0.3, 0.05],
            "latency_ms": [1.0, 2.0, 3.0, 4.0],
        }
    )


def test_bucket_metrics_values() -> None:
    counts = pl.DataFrame(
        {
            "run_id": ["a", "a", "b", "b", "c", "d"],
            "agent": ["bot"] * 5 + ["other"],
            "action": ["llm", "search", "search", "write", "write", "read"],
            "n": [2, 2, 1, 2, 5, 1],
        }
    )
    loops = pl.DataFrame({"run_id": ["b", "c"], "loop_severity": [0.9, 0.1]})
    b = bucket_metrics_from_runs(_runs_table(), counts, loops, min_coverage=0.0)
    bot = b.filter(pl.col("series") == "agent=bot")
    assert bot["bucket_index"].to_list() == [0, 1]
    assert bot["runs"].to_list() == [2, 1]
    assert bot["steps_mean"].to_list() == [5.0, 10.0]
    assert bot["error_rate"].to_list() == pytest.approx([3 / 10, 2 / 10])  # errors / steps
    assert bot["error_run_rate"].to_list() == [0.5, 1.0]
    assert bot["loop_rate"].to_list() == [0.5, 0.0]  # only run b reaches severity 0.5
    # a run with several rows loops when any of them does (detect_loops output has a row per loop)
    twice = pl.DataFrame({"run_id": ["c", "zz", "c"], "loop_severity": [0.1, 0.9, 0.7]})
    again = bucket_metrics_from_runs(_runs_table(), counts, twice, min_coverage=0.0)
    assert again.filter(pl.col("series") == "agent=bot")["loop_rate"].to_list() == [0.0, 1.0]
    assert bot["llm_ratio"].to_list() == [0.5, 0.5]
    assert bot["cost_per_run"].to_list() == pytest.approx([0.15, 0.3])
    # tool mix: bot's tools overall are write (7) > search (3); day 0 has search 3, write 2
    assert bot["top1_tool"].to_list() == ["write", "write"]
    assert bot["top1_share"].to_list() == pytest.approx([0.4, 1.0])
    assert bot["top2_share"].to_list() == pytest.approx([0.6, 0.0])
    assert bot["top3_tool"].to_list() == [None, None]
    fleet = b.filter(pl.col("series") == "all")
    assert fleet["runs"].to_list() == [2, 2]
    assert set(b["series"]) == {"agent=bot", "agent=other", "all"}
    by_version = bucket_metrics_from_runs(_runs_table(), by=("agent", "version"), include_fleet=False)
    assert sorted(set(by_version["series"])) == ["agent=bot,version=v1", "agent=bot,version=v2", "agent=other,version=v1"]


def test_partial_edge_buckets_are_flagged_and_skipped() -> None:
    # data from 18:00 on day 0 (a quarter of a day) to 23:00 on day 29
    rng = np.random.default_rng(3)
    days = np.r_[np.zeros(10), np.repeat(np.arange(1, 30), 40)].astype(int)
    hours = np.where(days == 0, rng.uniform(18, 23.9, days.size), rng.uniform(0, 23, days.size))
    steps = rng.poisson(np.where(days < 15, 10, 16))  # runs get 60% longer on day 15
    steps[days == 0] = 30  # the half-empty first day looks wild
    runs = pl.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(days.size)],
            "agent": "bot",
            "first_ts": [T0 + timedelta(days=int(d), hours=float(h)) for d, h in zip(days, hours, strict=True)],
            "n_steps": steps,
            "n_errors": 0,
            "n_llm": steps // 2,
            "tokens": steps * 100,
            "cost_usd": steps * 0.01,
            "latency_ms": steps * 10.0,
        }
    )
    b = bucket_metrics_from_runs(runs, include_fleet=False)
    assert b["partial"].to_list()[0] is True
    assert b["coverage"][0] == pytest.approx(0.25, abs=0.05)
    assert not b["partial"][1:].any()
    cps = changepoints_from_buckets(b)
    assert cps.filter(pl.col("rank") == 1)["bucket_index"].to_list() == [15]
    assert cps["buckets_before"][0] == 14  # the partial first day is not part of the series
    assert cps.filter(pl.col("metric") == "steps_mean")["before"][0] == pytest.approx(10, abs=0.3)


def test_by_any_event_column_is_carried_through() -> None:
    scenario = synth.Scenario(changepoints=(synth.ChangeSpec("support", 10, "error_rate", 4.0),), feedback_drift=())
    ev = synth.generate(days=20, runs_per_day=80, seed=2, scenario=scenario).events
    ev = ev.with_columns(pl.when(pl.col("agent") == "support").then(pl.lit("eu")).otherwise(pl.lit("us")).alias("region"))
    cps = detect_changepoints(ev, by="region", include_fleet=False)
    assert set(cps["series"]) == {"region=eu"}
    (found,) = cps.filter(pl.col("rank") == 1)["bucket_index"].to_list()
    assert abs(found - 10) <= MARGIN
    with pytest.raises(SchemaError, match="region"):
        changepoints_from_runs(run_features(ev), by="region")
    with pytest.raises(SchemaError, match="nope"):
        detect_changepoints(ev, by="nope")
    by_version = detect_changepoints(ev, by="version", include_fleet=False)
    assert set(by_version["series"]) <= {"version=v1", "version=v2"}


# --------------------------------------------------------------------------- detection on hand-built buckets


def _bucket_frame(values: dict[str, np.ndarray], runs: np.ndarray | int = 100, series: str = "agent=a") -> pl.DataFrame:
    n = len(next(iter(values.values())))
    return pl.DataFrame(
        {
            "series": series,
            "bucket": [T0 + timedelta(days=i) for i in range(n)],
            "runs": np.broadcast_to(runs, (n,)).astype(np.int64),
            **values,
        }
    )


def test_single_metric_change_is_located_and_described() -> None:
    rng = np.random.default_rng(4)
    err = np.r_[rng.normal(0.02, 0.002, 40), rng.normal(0.05, 0.002, 30)]
    steps = rng.normal(10, 0.3, 70)
    cps = changepoints_from_buckets(_bucket_frame({"error_rate": err, "steps_mean": steps}))
    assert cps["metric"].to_list() == ["error_rate"]
    row = cps.row(0, named=True)
    assert row["bucket_index"] == 40
    assert row["ts"] == T0 + timedelta(days=40)
    assert row["before"] == pytest.approx(0.02, abs=0.001)
    assert row["after"] == pytest.approx(0.05, abs=0.001)
    assert row["magnitude"] == pytest.approx(1.5, abs=0.1)
    assert row["metrics_moved"] == ["error_rate"]
    assert row["score"] > 10 and row["cp_score"] > 1
    assert (row["buckets_before"], row["buckets_after"]) == (40, 30)


def test_multivariate_change_ranks_metrics() -> None:
    rng = np.random.default_rng(5)
    shift = np.r_[np.zeros(30), np.ones(30)]
    frame = _bucket_frame(
        {
            "steps_mean": rng.normal(10, 0.2, 60) + 6 * shift,  # strongest (30 sd)
            "cost_per_run": rng.normal(1.0, 0.05, 60) + 0.5 * shift,  # 10 sd
            "llm_ratio": rng.normal(0.5, 0.001, 60) + 0.01 * shift,  # 10 sd but only 2% relative
        }
    )
    cps = changepoints_from_buckets(frame)
    assert cps["bucket_index"].unique().to_list() == [30]
    assert cps["metric"].to_list() == ["steps_mean", "cost_per_run"]  # llm_ratio immaterial (< 10%)
    assert cps["rank"].to_list() == [1, 2]
    assert cps["metrics_moved"][0].to_list() == ["steps_mean", "cost_per_run"]
    # materiality off: every metric that moved is listed
    loose = changepoints_from_buckets(frame, min_magnitude=0.0)
    assert set(loose["metric"]) == {"steps_mean", "cost_per_run", "llm_ratio"}


def test_overrides_pen_and_n_bkps() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(10, 0.2, 90) + np.r_[np.zeros(30), 3 * np.ones(30), np.zeros(30)]
    frame = _bucket_frame({"steps_mean": x})
    assert changepoints_from_buckets(frame)["bucket_index"].to_list() == [30, 60]
    assert changepoints_from_buckets(frame, n_bkps=1).height == 1
    assert changepoints_from_buckets(frame, pen=1e9, sparse=False).height == 0
    # a tiny penalty proposes many breakpoints; materiality removes the noise ones
    assert changepoints_from_buckets(frame, pen=1e-3)["bucket_index"].to_list() == [30, 60]


def test_low_volume_buckets_are_down_weighted() -> None:
    # weekday volume 200 runs, weekend 10 runs: weekend means are ~4.5x noisier
    rng = np.random.default_rng(7)
    n = 120
    runs = np.where(np.arange(n) % 7 >= 5, 10, 200)
    x = 10 + rng.normal(0, 3.0, n) / np.sqrt(runs)
    frame = _bucket_frame({"steps_mean": x}, runs=runs)
    assert changepoints_from_buckets(frame).height == 0
    shifted = frame.with_columns(pl.when(pl.int_range(pl.len()) >= 70).then(pl.col("steps_mean") * 1.2).otherwise(pl.col("steps_mean")))
    assert changepoints_from_buckets(shifted)["bucket_index"].to_list() == [70]


def test_penalties_are_calibrated_on_gaussian_noise() -> None:
    rng = np.random.default_rng(8)
    series = [
        _bucket_frame({f"m{j}": rng.normal(0, 1, 120) + 50 for j in range(6)}, series=f"s{i}") for i in range(150)
    ]
    cps = changepoints_from_buckets(pl.concat(series), min_z=0.0, min_magnitude=0.0)
    assert cps["series"].n_unique() <= 3  # <= 2% of stationary series
    assert auto_penalty(10, 365, beta=1.0) == pytest.approx(37.2, abs=0.1)
    assert sparse_penalty(11, 60, beta=1.0) == pytest.approx(18.0, abs=0.1)


def test_empty_and_degenerate_inputs() -> None:
    empty = bucket_metrics_from_runs(_runs_table().clear())
    assert empty.height == 0
    assert changepoints_from_buckets(empty).schema == pl.Schema(CHANGEPOINT_SCHEMA)
    assert changepoints_from_runs(_runs_table()).height == 0  # two buckets: nothing to compare
    constant = _bucket_frame({"steps_mean": np.full(40, 7.0), "error_rate": np.full(40, np.nan)})
    assert changepoints_from_buckets(constant).height == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_size": 1}, "min_size must be an integer >= 2"),
        ({"pen": -1.0}, "pen must be a finite number > 0"),
        ({"n_bkps": 0}, "n_bkps must be an integer >= 1"),
        ({"weight": "runs"}, "weight must be 'volume' or None"),
        ({"metrics": ["steps", "error_rate"]}, r"unknown metric\(s\) \['steps'\]"),
        ({"metrics": []}, "at least one metric"),
        ({"min_z": float("nan")}, "min_z must be a finite number"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs: dict, match: str) -> None:
    frame = _bucket_frame({"steps_mean": np.arange(20.0)})
    with pytest.raises(InvalidParameterError, match=match):
        changepoints_from_buckets(frame, **kwargs)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['n_errors'\]"):
        bucket_metrics_from_runs(_runs_table().drop("n_errors"))
    with pytest.raises(InvalidParameterError, match="Polars duration"):
        bucket_metrics_from_runs(_runs_table(), every="daily")
    with pytest.raises(InvalidParameterError, match="DataFrame or LazyFrame"):
        bucket_metrics_from_runs({"run_id": []})  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="expected bucket_metrics_from_runs"):
        changepoints_from_buckets(pl.DataFrame({"series": ["a"]}))
    ev = pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["llm"]})
    with pytest.raises(SchemaError, match="timestamps"):
        detect_changepoints(ev)


def test_lazy_inputs_and_hourly_buckets() -> None:
    rng = np.random.default_rng(9)
    hours = np.repeat(np.arange(96), 30)
    steps = rng.poisson(np.where(hours < 60, 8, 14))
    runs = pl.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(hours.size)],
            "agent": "bot",
            "first_ts": [T0 + timedelta(hours=int(h), minutes=int(m)) for h, m in zip(hours, rng.integers(0, 60, hours.size), strict=True)],
            "n_steps": steps,
            "n_errors": 0,
            "n_llm": steps // 2,
            "tokens": steps * 100,
            "cost_usd": steps * 0.01,
            "latency_ms": steps * 10.0,
        }
    )
    cps = changepoints_from_runs(runs.lazy(), every="1h", include_fleet=False)
    assert cps.filter(pl.col("rank") == 1)["bucket_index"].to_list() == [60]
    assert cps["ts"][0] == T0 + timedelta(hours=60)


# --------------------------------------------------------------------------- within runs


def _long_runs(n_runs: int, seed: int, *, change: bool, lmin: int = 30, lmax: int = 300) -> tuple[pl.DataFrame, pl.DataFrame]:
    """LLM steps of long runs shaped like synth's: input tokens grow ~380 per turn (the
    context), uniform noise, 0.3% runaway steps (120x tokens); with ``change`` each run's
    input tokens jump by 60% of their level from a random point, latency by 60% too."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lmin, lmax + 1, n_runs)
    run = np.repeat(np.arange(n_runs), lengths)
    turn = np.arange(lengths.sum()) - np.repeat(np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    tok = (700 + 380 * turn + rng.integers(0, 300, turn.size)).astype(float)
    tok = np.where(rng.random(turn.size) < 0.003, tok * 120 + 150_000, tok)
    lat = rng.lognormal(np.log(700.0), 0.35, turn.size)
    cut = (rng.uniform(0.2, 0.8, n_runs) * lengths).astype(int)
    after = change & (turn >= cut[run])
    tok = np.where(after, tok + 0.6 * (700 + 380 * cut[run]), tok)
    lat = np.where(after, lat * 1.6, lat)
    ev = pl.DataFrame(
        {
            "run_id": [f"run{r:05d}" for r in run],
            "step": 2 * turn + 1,
            "action": "llm",
            "agent": "bot",
            "input_tokens": tok.astype(np.int64),
            "output_tokens": rng.integers(40, 260, turn.size),
            "latency_ms": lat,
        }
    )
    truth = pl.DataFrame({"run_id": [f"run{r:05d}" for r in range(n_runs)], "cut": cut, "length": lengths})
    return ev, truth


def test_run_changepoints_find_token_jumps_on_top_of_context_growth(capsys) -> None:
    ev, truth = _long_runs(400, 1, change=True)
    found = detect_run_changepoints(ev).join(truth, on="run_id")
    assert found.schema == pl.Schema({**RUN_CHANGEPOINT_SCHEMA, "cut": pl.Int64, "length": pl.Int64})
    located = (found["position"] - found["cut"]).abs() <= 2
    recall = located.sum() / truth.height
    with capsys.disabled():
        print(f"\nwithin-run tokens: recall within +-2 steps {recall:.3f} on {truth.height} runs; predict nothing 0.000")
    assert recall >= 0.95
    assert found["step"].to_list() == (2 * found["position"] + 1).to_list()
    assert found["magnitude"].median() == pytest.approx(0.6, abs=0.1)
    assert (found["jump"] > 0).all()


def test_run_changepoints_no_false_alarms_on_trend_noise_and_spikes() -> None:
    ev, truth = _long_runs(1500, 2, change=False, lmin=20, lmax=400)
    for metric in ("tokens", "output_tokens", "latency_ms"):
        assert detect_run_changepoints(ev, metric=metric).height <= 3, metric  # <= 0.2% of runs


def test_run_changepoints_latency_on_log_scale() -> None:
    ev, truth = _long_runs(200, 3, change=True, lmin=200, lmax=400)
    found = detect_run_changepoints(ev, metric="latency_ms").join(truth, on="run_id")
    assert found.height >= 190
    assert ((found["position"] - found["cut"]).abs() <= 10).mean() >= 0.95
    assert found["magnitude"].median() == pytest.approx(0.6, abs=0.1)


def test_run_changepoints_cost_does_not_depend_on_its_unit() -> None:
    """Cost per call in dollars (about $0.01) went through log1p, nearly linear there: a +60%
    jump read as +0.5% and was dropped by min_magnitude, while the same costs in cents were
    found. The offset now scales with the run, so dollars, cents and micro-dollars agree."""
    ev, truth = _long_runs(200, 5, change=True, lmin=200, lmax=400)
    dollars = ev.with_columns(cost_usd=pl.col("latency_ms") * 1.5e-5)  # ~$0.01 per call, +60% jump
    found = {}
    for scale in (1.0, 100.0, 1e6):
        out = detect_run_changepoints(dollars.with_columns(pl.col("cost_usd") * scale), metric="cost_usd")
        found[scale] = out.join(truth, on="run_id")
    assert found[1.0].height >= 190
    assert ((found[1.0]["position"] - found[1.0]["cut"]).abs() <= 10).mean() >= 0.95
    assert found[1.0]["magnitude"].median() == pytest.approx(0.6, abs=0.1)
    for scale in (100.0, 1e6):
        assert found[scale]["position"].to_list() == found[1.0]["position"].to_list()
        assert found[scale]["magnitude"].to_numpy() == pytest.approx(found[1.0]["magnitude"].to_numpy(), rel=1e-6)
        assert found[scale]["jump"].to_numpy() == pytest.approx(found[1.0]["jump"].to_numpy() * scale, rel=1e-6)
    quiet, _ = _long_runs(1500, 6, change=False, lmin=20, lmax=400)
    quiet = quiet.with_columns(cost_usd=pl.col("latency_ms") * 1.5e-5)
    assert detect_run_changepoints(quiet, metric="cost_usd").height <= 3  # <= 0.2% of runs


def test_run_changepoints_on_synth_fleet_and_chunks() -> None:
    fleet = synth.generate(days=4, runs_per_day=300, seed=4)  # loops give long runs with growing context
    ev = fleet.events
    found = detect_run_changepoints(ev, min_steps=10)
    long_runs = ev.filter(pl.col("action") == "llm").group_by("run_id").len().filter(pl.col("len") >= 10).height
    assert long_runs > 50
    assert found.height <= 0.01 * long_runs  # nothing injected within runs
    # per-run stage: any split into whole runs gives the same rows
    ids = ev["run_id"].unique().sort()
    parts = [ev.filter(pl.col("run_id").is_in(ids[i::3].implode())) for i in range(3)]
    both = pl.concat([detect_run_changepoints(p, min_steps=10) for p in parts]).sort("run_id")
    assert_frame_equal(both, found)
    assert dw.detect_run_changepoints is detect_run_changepoints


def test_run_changepoints_options() -> None:
    ev, _ = _long_runs(30, 5, change=True, lmin=60, lmax=80)
    assert detect_run_changepoints(ev, min_steps=100).height == 0
    assert detect_run_changepoints(ev, threshold=1e6).height == 0
    assert detect_run_changepoints(ev.lazy()).height == detect_run_changepoints(ev).height
    with pytest.raises(InvalidParameterError, match="metric must be one of"):
        detect_run_changepoints(ev, metric="steps")
    with pytest.raises(InvalidParameterError, match="steps must be"):
        detect_run_changepoints(ev, steps="some")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="min_size"):
        detect_run_changepoints(ev, min_size=0)
    empty = detect_run_changepoints(ev.clear())
    assert empty.height == 0 and empty.schema == pl.Schema(RUN_CHANGEPOINT_SCHEMA)


def test_loop_rate_change_from_detect_loops_output() -> None:
    # loop storms start on day 15 in every agent: two fleets back to back, run ids kept apart
    calm = synth.generate(days=15, runs_per_day=150, seed=21, scenario=synth.Scenario.stable(loop_rate=0.01))
    stormy = synth.generate(
        days=15, runs_per_day=150, seed=22, start="2026-10-16", scenario=synth.Scenario.stable(loop_rate=0.2)
    )
    ev = pl.concat([calm.events, stormy.events.with_columns(pl.concat_str(pl.lit("b"), pl.col("run_id")).alias("run_id"))])
    loops = dw.detect_loops(ev)
    cps = detect_changepoints(ev, loops=loops)
    for agent in ("planner", "billing", "support", "research"):
        rows = cps.filter(pl.col("series") == f"agent={agent}")
        assert rows["bucket_index"].unique().to_list() == [15], agent
        assert "loop_rate" in rows["metrics_moved"][0], agent
    loop_row = cps.filter((pl.col("series") == "all") & (pl.col("metric") == "loop_rate")).row(0, named=True)
    assert loop_row["before"] == pytest.approx(0.01, abs=0.006) and loop_row["after"] == pytest.approx(0.2, abs=0.04)
    # a loop_summary table works the same, and without loops there is no loop_rate by default
    assert_frame_equal(detect_changepoints(ev, loops=dw.loop_summary(loops)), cps)
    assert "loop_rate" not in detect_changepoints(ev)["metric"].to_list()
    # named without loops, the loops are found (it returned no rows, silently)
    named = detect_changepoints(ev, metrics=["loop_rate"])
    assert_frame_equal(named, detect_changepoints(ev, metrics=["loop_rate"], loops=loops))
    assert named.filter(pl.col("series") == "all")["bucket_index"].to_list() == [15]


def test_one_series_is_not_repeated_as_the_fleet() -> None:
    """A fleet of one agent reported every change-point twice: once for the agent and once for
    ``all``, the same runs."""
    runs = run_features(synth.generate(days=6, runs_per_day=40, seed=2).events)
    one = runs.filter(pl.col("agent") == runs["agent"].min())
    assert bucket_metrics_from_runs(one, min_coverage=0.0)["series"].unique().to_list() == [
        f"agent={runs['agent'].min()}"]
    both = bucket_metrics_from_runs(runs, min_coverage=0.0)["series"].unique().sort().to_list()
    assert "all" in both and len(both) == runs["agent"].n_unique() + 1
    assert bucket_metrics_from_runs(one, by=(), min_coverage=0.0)["series"].unique().to_list() == ["all"]


def test_weekly_buckets_of_stable_fleets_have_few_false_alarms() -> None:
    """The per-run variance comes from the spread of bucket means: with weekly buckets (3-6 per
    segment) its ratio to the shift is a t with few degrees of freedom, and was read as a
    normal z (6 of 120 stable series had a change-point at every="1w", 0 at "1d"). Now the
    t's tail probability is what min_z tests: the README's at most 1% per series."""
    flagged = series = 0
    for seed in range(40, 56):
        ev = synth.generate(days=60, runs_per_day=100, seed=seed, scenario=synth.Scenario.stable()).events
        cps = detect_changepoints(ev, every="1w")
        flagged += cps.filter(pl.col("series") != "all")["series"].n_unique()
        series += 4
    assert flagged <= 1, f"{flagged} of {series} stable series"


def test_cost_logging_that_starts_midway_is_no_change_point() -> None:
    """Runs without a recorded cost or token count are unknown, not 0 and not capped: a fleet
    that starts logging costs on day 10 has no cost or token change-point (a probe found every
    unknown cost read as the 5x-median cap, and a false 'before \\$0.20' change)."""
    import random
    from datetime import UTC, datetime, timedelta

    rng = random.Random(1)
    rows = []
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    for day in range(20):
        for r in range(10):
            start = t0 + timedelta(days=day, hours=r)
            for s in range(1, 5):
                rows.append({"run_id": f"d{day:02d}-r{r}", "step": s, "ts": start + timedelta(seconds=s),
                             "agent": "a", "action": "llm" if s % 2 else "search",
                             "cost_usd": None if day < 10 else rng.uniform(0.005, 0.015),
                             "input_tokens": None if day < 10 else rng.randint(100, 200)})
    ev = pl.DataFrame(rows, infer_schema_length=None)
    assert dw.detect_changepoints(ev, by=("agent",), every="1d").height == 0
    buckets = bucket_metrics_from_runs(dw.run_features(ev), by=("agent",), every="1d")
    early = buckets.filter(pl.col("bucket") < datetime(2026, 10, 11, tzinfo=UTC))
    late = buckets.filter(pl.col("bucket") >= datetime(2026, 10, 11, tzinfo=UTC))
    assert early.height == 10 and early["cost_per_run"].is_null().all() and early["tokens_per_run"].is_null().all()
    assert late["cost_per_run"].is_not_null().all() and late["cost_per_run"].max() < 0.07


def test_buckets_without_a_value_weigh_nothing_in_the_materiality_test() -> None:
    """A metric recorded from day 10 on had its first value copied over days 0-9 and counted as
    ten buckets of observations (runs_before 660 where 60 runs had a cost): the flat copy made
    ordinary noise a change-point. Filled gaps now weigh nothing; before/after are the means of
    the buckets that have a value."""
    rng = np.random.default_rng(9)
    runs = rng.integers(50, 70, 30)
    false_alarms = 0
    for seed in range(12):
        r = np.random.default_rng(seed)
        cost = np.r_[np.full(10, np.nan), r.normal(0.062, 0.004, 20)]
        b = _bucket_frame({"cost_per_run": cost}, runs=runs).with_columns(pl.col("cost_per_run").fill_nan(None))
        false_alarms += changepoints_from_buckets(b).height
    assert false_alarms == 0
    # a real change after logging starts is still found, its before from the logged buckets only
    cost = np.r_[np.full(10, np.nan), rng.normal(0.06, 0.003, 10), rng.normal(0.12, 0.006, 10)]
    b = _bucket_frame({"cost_per_run": cost}, runs=runs).with_columns(pl.col("cost_per_run").fill_nan(None))
    row = changepoints_from_buckets(b).row(0, named=True)
    assert row["bucket_index"] == 20 and row["before"] == pytest.approx(0.06, abs=0.003)
    assert row["buckets_before"] == 20  # the segment, gaps included (its runs are the bucket volumes)


def test_steps_p90_is_a_mid_quantile_without_false_flickers() -> None:
    """The 90th percentile of whole step counts sat on 9 for days and on 10 for three buckets by
    chance; no spread inside the segments made the flicker a shift of 8 standard errors (a probe's
    stable fleet at every="2d"). It is now the mid-quantile, continuous in the distribution."""
    runs = pl.DataFrame({"run_id": list("abcdefghij"), "agent": "a", "first_ts": T0, "n_steps": [5] * 8 + [9, 10],
                         "n_errors": 0, "n_llm": 1, "tokens": 1, "cost_usd": 0.1, "latency_ms": 1.0})
    assert bucket_metrics_from_runs(runs)["steps_p90"].to_list() == [9.5]  # mid-ranks 0.4, 0.85, 0.95
    one_value = runs.with_columns(pl.lit(7).alias("n_steps"))
    assert bucket_metrics_from_runs(one_value)["steps_p90"].to_list() == [7.0]
    flagged = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        n = 30 * 3 * 60
        feats = pl.DataFrame({
            "run_id": [f"r{i}" for i in range(n)],
            "agent": np.tile(np.repeat(["a", "b", "c"], 60), 30),
            "first_ts": [T0 + timedelta(days=int(d), seconds=int(s))
                         for d, s in zip(np.repeat(np.arange(30), 180), rng.integers(0, 86_000, n), strict=True)],
            "n_steps": np.maximum(2, rng.poisson(6, n)),
            "n_errors": 0, "n_llm": 1, "tokens": 100, "cost_usd": 0.01, "latency_ms": 10.0,
        })
        cps = changepoints_from_buckets(bucket_metrics_from_runs(feats, every="2d"), metrics=["steps_mean", "steps_p90"])
        flagged += cps["series"].to_list()
    assert flagged == []


def test_the_volume_metric_is_a_mean_per_bucket() -> None:
    """metrics=["runs"] weighted each bucket by its own volume: a doubling from 31 to 63 runs a
    day (weekends quieter) read 37 -> 75."""
    week = np.array([40, 40, 40, 40, 40, 10, 10])
    runs = np.r_[np.tile(week, 3), np.tile(2 * week, 3)] + np.random.default_rng(3).integers(-4, 5, 42)
    b = _bucket_frame({"runs_copy": runs.astype(float)}, runs=runs).drop("runs_copy")
    row = changepoints_from_buckets(b, metrics=["runs"]).row(0, named=True)
    assert row["bucket_index"] == 21
    assert row["before"] == pytest.approx(runs[:21].mean()) and row["after"] == pytest.approx(runs[21:].mean())


@pytest.mark.parametrize("every", ["1d ", " 1d", "1d\n"])
def test_durations_with_spaces_are_refused_clearly(every: str) -> None:
    ev = synth.generate(days=3, runs_per_day=20, seed=1).events
    with pytest.raises(InvalidParameterError, match="duration string"):
        detect_changepoints(ev, every=every)
    with pytest.raises(InvalidParameterError, match="duration string"):
        dw.load_curve(ev, every=every)
