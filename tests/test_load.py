"""Load curve: the knee of an injected load-dependent failure, no knee without one, the guard
against time trends, the per-bucket table against brute force, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

import driftwatch as dw
from driftwatch import synth
from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.load import LOAD_COLUMNS, METRICS, load_buckets_from_runs, load_curve_from_runs

AGENTS = {a.name: a for a in synth.default_agents()}
THRESHOLD = 2.0


def _load_fleet(seed: int, **overrides: object) -> synth.Fleet:
    # planner fails more once more than THRESHOLD of its runs start in the same minute; support
    # shares the traffic (diurnal, weekly swings, pagination, polling) without load dependence
    sc = synth.Scenario.stable(
        agents=(AGENTS["planner"], AGENTS["support"]),
        load=(synth.LoadSpec("planner", THRESHOLD, slope=0.5),),
        **overrides,
    )
    return synth.generate(days=2, runs_per_day=2500, seed=seed, scenario=sc)  # ~64k events


@pytest.fixture(scope="module")
def fleet() -> synth.Fleet:
    return _load_fleet(0)


@pytest.fixture(scope="module")
def runs(fleet: synth.Fleet) -> pl.DataFrame:
    return dw.run_features(fleet.events)


@pytest.fixture(scope="module")
def curve(runs: pl.DataFrame) -> pl.DataFrame:
    return load_curve_from_runs(runs)


def test_columns_rows_and_curve(curve: pl.DataFrame) -> None:
    assert tuple(curve.columns) == LOAD_COLUMNS
    # no loop table given: loop_rate is left out
    metrics = [m for m in METRICS if m != "loop_rate"]
    assert curve.height == 3 * len(metrics) * 2
    assert curve.select("series", "metric", "load_kind").rows()[:2] == [
        ("agent=planner", "error_rate", "started"),
        ("agent=planner", "error_rate", "in_flight"),
    ]
    for row in curve.iter_rows(named=True):
        assert len(row["curve_load"]) == len(row["curve_value"]) == len(row["curve_buckets"]) >= 2
        assert sum(row["curve_buckets"]) == row["n_buckets"]
        assert row["curve_load"] == sorted(row["curve_load"])
        assert row["every"] == "1m" and row["control"] == "1d"
        assert (row["knee"] is None) == (not row["significant"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knee_of_error_rate_within_15_percent(seed: int, fleet: synth.Fleet, curve: pl.DataFrame) -> None:
    if seed == 0:
        out, truth = curve, fleet.truth["load"]
    else:
        other = _load_fleet(seed)
        out, truth = load_curve_from_runs(dw.run_features(other.events), metrics=["error_rate"]), other.truth["load"]
    threshold = truth.filter(agent="planner")["threshold"].item()
    row = out.filter(series="agent=planner", metric="error_rate", load_kind="started").row(0, named=True)
    assert row["significant"]
    assert abs(row["knee"] - threshold) <= 0.15 * threshold
    assert row["above"] > 3 * row["below"] and row["ratio"] > 3
    assert row["slope"] > 0
    # the agent without load dependence shows no knee in the same fleet and the same minutes
    assert not out.filter(series="agent=support", metric="error_rate")["significant"].any()
    # the binned curve rises: the busiest load bin fails far more than the quietest
    assert row["curve_value"][-1] > 3 * row["curve_value"][0]


def test_a_significant_answer_takes_every_permutation(curve: pl.DataFrame) -> None:
    """Stopping at the first look whose running p-value is under the level tests at every look
    (6.4% of null series rejected at alpha 0.05): only the answers that cannot be significant
    stop early, so a significant p-value counts all n_boot = 999 permutations."""
    sig = curve.filter("significant")
    assert sig.height
    counts = sig["p_value"] * 1000  # (exceedances + 1) / (999 + 1)
    assert ((counts - counts.round(0)).abs() < 1e-6).all(), counts.to_list()
    # the injected knee: no permutation of 999 beats it (it stopped at 1/200 before)
    assert curve.filter(series="agent=planner", metric="error_rate")["p_value"].to_list() == [0.001, 0.001]


def test_only_load_driven_metrics_have_knees(curve: pl.DataFrame) -> None:
    found = set(curve.filter("significant").select("series", "metric").rows())
    # failures drive retries and the slow failing tool calls drive latency; run length and
    # cost per run do not depend on load in this fleet
    assert ("agent=planner", "error_rate") in found
    assert all(m in {"error_rate", "retry_rate", "latency_p90"} for _, m in found)
    assert not any(s == "agent=support" for s, _ in found)


@pytest.mark.parametrize("seed", [10, 11, 12, 13])
def test_no_knee_without_load_dependence(seed: int) -> None:
    fleet = synth.generate(
        days=2,
        runs_per_day=2500,
        seed=seed,
        scenario=synth.Scenario.stable(agents=(AGENTS["planner"], AGENTS["support"])),
    )
    out = load_curve_from_runs(dw.run_features(fleet.events))
    assert out.height == 30
    assert not out["significant"].any(), out.filter("significant")
    assert out["knee"].is_null().all()
    assert out.filter(metric="error_rate")["p_value"].min() > 0.01


def test_time_trend_is_not_a_load_effect() -> None:
    """Errors quadruple on the day weekday traffic returns: busy days fail more, busy minutes do not."""
    sc = synth.Scenario.stable(
        agents=(AGENTS["planner"], AGENTS["support"]),
        changepoints=(synth.ChangeSpec("planner", 2, "error_rate", 4.0),),
        weekly_swing=0.6,
    )
    fleet = synth.generate(days=4, runs_per_day=1500, seed=0, start="2026-10-03", scenario=sc)  # Sat..Tue
    runs = dw.run_features(fleet.events)
    naive = load_curve_from_runs(runs, metrics=["error_rate"], control=None)
    assert naive.filter(series="agent=planner")["significant"].all()  # what the guard prevents
    guarded = load_curve_from_runs(runs, metrics=["error_rate"])  # within-day comparison (default)
    assert not guarded["significant"].any()
    hourly = load_curve_from_runs(runs, metrics=["error_rate"], control="1h")
    assert not hourly["significant"].any()


def test_saturating_failure_knee() -> None:
    # a steep slope saturates the error probability at 95%: the plateau keeps the knee in place
    sc = synth.Scenario.stable(agents=(AGENTS["planner"],), load=(synth.LoadSpec("planner", 3.0, slope=1.0),))
    fleet = synth.generate(days=1, runs_per_day=3000, seed=4, scenario=sc)
    row = load_curve_from_runs(dw.run_features(fleet.events), by=(), metrics=["error_rate"], load="started").row(
        0, named=True
    )
    assert row["significant"] and abs(row["knee"] - 3.0) <= 0.45


def test_bucket_table_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    n = 300
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    start_s = np.sort(rng.uniform(0, 3 * 3600, n))
    dur_s = rng.exponential(90, n)
    runs = pl.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(n)],
            "agent": rng.choice(["a", "b"], n).tolist(),
            "first_ts": [t0 + timedelta(seconds=float(s)) for s in start_s],
            "last_ts": [t0 + timedelta(seconds=float(s + d)) for s, d in zip(start_s, dur_s, strict=True)],
            "n_steps": rng.integers(1, 20, n),
            "n_tool": rng.integers(0, 5, n),
            "n_errors": rng.integers(0, 3, n),
            "n_retries": rng.integers(0, 2, n),
            "cost_usd": np.where(rng.uniform(size=n) < 0.3, np.nan, rng.uniform(0, 1, n)),  # 30% not recorded
            "latency_ms_p90": rng.uniform(100, 900, n),
        },
        schema_overrides={"first_ts": pl.Datetime("us", "UTC"), "last_ts": pl.Datetime("us", "UTC")},
    ).with_columns(pl.col("cost_usd").fill_nan(None))
    got = load_buckets_from_runs(runs, every="5m")
    recs = runs.to_dicts()
    minute = timedelta(minutes=5)

    def floor(ts: datetime) -> datetime:
        return t0 + minute * ((ts - t0) // minute)

    for row in got.iter_rows(named=True):
        agent = row["series"].removeprefix("agent=")
        mine = [r for r in recs if agent == "all" or r["agent"] == agent]
        started = [r for r in mine if floor(r["first_ts"]) == row["bucket"]]
        in_flight = [r for r in mine if floor(r["first_ts"]) <= row["bucket"] <= floor(r["last_ts"])]
        assert row["started"] == len(started)
        assert row["in_flight"] == len(in_flight)
        assert row["error_rate"] == pytest.approx(np.mean([r["n_errors"] / r["n_steps"] for r in started]))
        costed = [r["cost_usd"] for r in started if r["cost_usd"] is not None]  # the mean of the known costs
        assert row["runs_with_cost"] == len(costed) and row["runs_with_latency"] == len(started)
        assert (row["cost_per_run"] is None) == (not costed)
        if costed:
            assert row["cost_per_run"] == pytest.approx(np.mean(costed))
        with_tools = [r["n_retries"] / r["n_tool"] for r in started if r["n_tool"] > 0]
        assert (row["retry_rate"] is None) == (not with_tools)
        if with_tools:
            assert row["retry_rate"] == pytest.approx(np.mean(with_tools))
    assert got.filter(series="all")["started"].sum() == n
    assert got["loop_rate"].is_null().all()


def test_metrics_nobody_recorded_have_no_rows(runs: pl.DataFrame) -> None:
    """A log without costs or latencies has no cost/latency curve (not a flat curve at 0), and
    the other metrics are unchanged."""
    bare = runs.with_columns(pl.lit(None, pl.Float64).alias("cost_usd"), pl.lit(None, pl.Float64).alias("latency_ms_p90"))
    got, full = load_curve_from_runs(bare), load_curve_from_runs(runs)
    gone = pl.col("metric").is_in(["cost_per_run", "latency_p90"])
    assert full.filter(gone).height == 12 and got.filter(gone).height == 0
    assert got.equals(full.filter(~gone))


def test_loops_give_loop_rate_and_wrapper_matches(runs: pl.DataFrame, fleet: synth.Fleet) -> None:
    loops = pl.DataFrame(
        {
            "run_id": runs["run_id"][:40].to_list() + runs["run_id"][40:80].to_list(),
            "kind": ["exact"] * 40 + ["same_action"] * 40,  # same_action (pagination) is not a loop here
        }
    )
    b = load_buckets_from_runs(runs, loops=loops, by=())
    assert b["loop_rate"].drop_nulls().len() == b.height
    assert (b["loop_rate"] * b["started"]).sum() == pytest.approx(40)
    out = load_curve_from_runs(runs, loops=loops, metrics=["loop_rate", "error_rate"], load="started", by=())
    assert out["metric"].to_list() == ["loop_rate", "error_rate"]
    wrapped = dw.load_curve(fleet.events.lazy(), loops=loops, metrics=["loop_rate", "error_rate"], load="started", by=())
    assert wrapped.equals(out)
    # chunks of whole runs give the same per-run tables, so the same answer
    parts = [dw.run_features(fleet.events.filter(pl.col("run_id").hash(3) % 2 == i)) for i in range(2)]
    chunked = load_curve_from_runs(pl.concat(parts), loops=loops, metrics=["loop_rate", "error_rate"],
                                   load="started", by=())
    assert chunked.equals(out)


def test_deterministic_and_seeded(runs: pl.DataFrame) -> None:
    a = load_curve_from_runs(runs, metrics=["steps_per_run"], random_state=5)
    b = load_curve_from_runs(runs, metrics=["steps_per_run"], random_state=5)
    c = load_curve_from_runs(runs, metrics=["steps_per_run"], random_state=6)
    assert a.equals(b)
    assert a.drop("p_value", "p_adjusted").equals(c.drop("p_value", "p_adjusted"))


def test_too_few_buckets_gives_no_answer() -> None:
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    runs = pl.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "first_ts": [t0, t0 + timedelta(minutes=1), t0 + timedelta(minutes=2)],
            "last_ts": [t0, t0 + timedelta(minutes=1), t0 + timedelta(minutes=2)],
            "n_steps": [3, 3, 3],
        }
    )
    out = load_curve_from_runs(runs, by=(), metrics=["steps_per_run"], load="started")
    assert out.select("knee", "p_value", "significant", "n_buckets").row(0) == (None, None, False, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": "1 minute"}, "every must be a Polars duration string"),
        ({"control": "1m"}, r"every must be at most half of control \(.1m., .*\); got .1m.: use at most 30s"),
        ({"every": "13h"}, r"every must be at most half of control \(.1d., .*\); got .13h.: use at most 12h, a longer"),
        # timestamps are microseconds: a shorter bucket stepped 0 us (in_flight too low)
        ({"every": "1ns", "control": None}, r"every must be at least 1 microsecond \('1us'.*got '1ns'"),
        ({"every": "999ns"}, r"every must be at least 1 microsecond .*got '999ns'"),
        ({"every": "1500ns", "control": None}, r"every must be a whole number of microseconds .*got '1500ns'"),
        ({"every": "1us", "control": "500ns"}, r"control must be at least 1 microsecond .*got '500ns'"),
        ({"metrics": ["errors"]}, "metrics must be among"),
        ({"metrics": ["loop_rate"]}, "metric 'loop_rate' needs the loop table"),
        ({"load": "concurrency"}, "load must be among"),
        ({"n_boot": 10}, "n_boot must be an integer >= 99"),
        # 1/100 can never reach 0.05 / 10 rows: the knee of any series would be lost without a word
        ({"n_boot": 99}, r"n_boot=99 cannot find a knee: .* 0.05 / 10 .* use n_boot >= 199"),
        ({"n_boot": 99, "metrics": ["error_rate"], "load": "started", "alpha": 0.005}, r"0.005 / 1 .* >= 199"),
        ({"alpha": 0.0}, "alpha must be in"),
        ({"min_effect": -1}, "min_effect must be a non-negative number"),
        ({"n_bins": 1}, "n_bins must be an integer >= 2"),
        ({"loops": [1, 2]}, "loops must be a detect_loops"),
    ],
)
def test_bad_options(runs: pl.DataFrame, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        load_curve_from_runs(runs, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("every", "control"), [("1ns", None), ("999ns", "1d"), ("2500ns", None), ("1us", "1ns")])
def test_buckets_under_a_microsecond_are_refused(runs: pl.DataFrame, every: str, control: str | None) -> None:
    """Timestamps are microseconds: a bucket of "1ns" was accepted with a step rounded to 0 us,
    which counted every run as ended in its own last bucket (in_flight too low)."""
    with pytest.raises(InvalidParameterError, match="microsecond"):
        load_buckets_from_runs(runs, every=every, control=control)
    with pytest.raises(InvalidParameterError, match="microsecond"):
        dw.load_curve(pl.DataFrame({"run_id": ["a"], "step": [1], "ts": [datetime(2026, 1, 1, tzinfo=UTC)]}),
                      every=every, control=control)


def test_in_flight_with_microsecond_buckets() -> None:
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    runs = pl.DataFrame({"run_id": ["a", "b"], "first_ts": [t0, t0 + timedelta(seconds=1)],
                         "last_ts": [t0 + timedelta(seconds=2), t0 + timedelta(seconds=1)], "n_steps": [3, 1]})
    for every in ("1s", "1us", "1000ns"):
        b = load_buckets_from_runs(runs, every=every, by=(), control=None)
        assert b.select("started", "in_flight").rows() == [(1, 1), (1, 2)], every


def test_bad_tables(runs: pl.DataFrame) -> None:
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['first_ts'\]"):
        load_curve_from_runs(runs.drop("first_ts"))
    with pytest.raises(SchemaError, match="'last_ts' must be a datetime"):
        load_curve_from_runs(runs.with_columns(pl.col("last_ts").cast(pl.String)))
    with pytest.raises(SchemaError, match="loops: missing column 'run_id'"):
        load_curve_from_runs(runs, loops=pl.DataFrame({"x": [1]}))
    with pytest.raises(dw.DriftwatchError):
        dw.load_curve(pl.DataFrame({"x": [1]}))


# --------------------------------------------------------------------------------------------
# the permutation test's machinery


def test_permutations_are_within_strata_and_reproducible() -> None:
    from driftwatch.load import _PermutationPool

    sizes = [700, 650, 720]
    strata = np.repeat(np.arange(3), sizes)
    bounds = np.r_[0, np.cumsum(sizes)]
    pool = _PermutationPool(strata, (0, 1, 0), 999)
    assert pool.rotations  # about 3e8 rotations: plenty
    bucket = pool.source(np.arange(strata.size))  # chunks index this: which bucket each entry is
    first = bucket[pool.chunk(0)]
    for chunk in (first, bucket[pool.chunk(2)]):
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            block = np.sort(chunk[:, lo:hi], axis=1)
            assert (block == np.arange(lo, hi)).all()  # each row permutes each stratum's buckets
    # a rotation of the cycle: every row moves a stratum's buckets by one shift along the cycle
    cycle_pos = np.argsort(pool.doubled[: sizes[0]])
    moved = (cycle_pos[first[:, : sizes[0]]] - cycle_pos[None, : sizes[0]]) % sizes[0]
    assert (moved == moved[:, :1]).all()
    # chunks depend on the seed and their index only, not on which were drawn before
    again = _PermutationPool(strata, (0, 1, 0), 999)
    assert np.array_equal(again.chunk(2), pool.chunk(2)) and np.array_equal(bucket[again.chunk(0)], first)
    assert not np.array_equal(_PermutationPool(strata, (0, 1, 1), 999).chunk(0), first)
    # too few distinct rotations (one stratum of 500 buckets, 999 permutations): uniform shuffles
    small = _PermutationPool(np.zeros(500, dtype=np.int64), (0, 0, 0), 999)
    assert not small.rotations
    assert (np.sort(small.source(np.arange(500))[small.chunk(0)], axis=1) == np.arange(500)).all()


def _knee_p_values(effect: float, *, shuffle: bool, reps: int) -> np.ndarray:
    """p-values of the knee test on generated buckets (three strata of 600 one-minute buckets)."""
    from driftwatch.load import _knee_test, _Options, _PermutationPool

    opts = _Options.build(every="1m", metrics=["error_rate"], load="started", control="1d", n_bins=10,
                          n_boot=999, alpha=0.05, min_effect=0.2, have_loops=False)
    rng = np.random.default_rng(11)
    strata = np.repeat(np.arange(3), 600)
    out = []
    for r in range(reps):
        load = rng.poisson(3.0 + 2.0 * np.sin(np.linspace(0, 6 * np.pi, strata.size))) + 1.0
        y = 0.1 * strata + rng.standard_normal(strata.size) / np.sqrt(load) + effect * np.maximum(0.0, load - 5.0)
        pool = _PermutationPool(strata, (r,), opts.n_boot, shuffle=shuffle)
        out.append(_knee_test(load, y, load.copy(), strata, opts=opts, pool=pool).p_value)
    return np.array(out)


def test_rotations_test_like_uniform_shuffles() -> None:
    """The rotations keep the test's level and power: same rejection rates as uniform shuffles."""
    reps = 150
    for effect, lo, hi in ((0.0, 0.0, 0.05 + 3 * (0.05 * 0.95 / reps) ** 0.5), (0.025, 0.6, 1.0)):
        rot = _knee_p_values(effect, shuffle=False, reps=reps)
        shuf = _knee_p_values(effect, shuffle=True, reps=reps)
        for p in (rot, shuf):
            assert lo <= np.mean(p <= 0.05) <= hi, (effect, np.mean(p <= 0.05))
        assert abs(np.mean(rot <= 0.05) - np.mean(shuf <= 0.05)) <= 0.08
        assert np.corrcoef(rot, shuf)[0, 1] > 0.9  # the same answers up to Monte Carlo error


def test_step_knee_is_the_lowest_of_equally_good_knees() -> None:
    """A step between two observed loads: every knee between them fits alike; the lowest is reported."""
    rng = np.random.default_rng(5)
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    n = 6000
    start_s = np.sort(rng.uniform(0, 2 * 86400, n))
    runs = pl.DataFrame(
        {
            "run_id": [f"r{i:05d}" for i in range(n)],
            "first_ts": [t0 + timedelta(seconds=float(s)) for s in start_s],
            "n_steps": np.full(n, 10),
        },
        schema_overrides={"first_ts": pl.Datetime("us", "UTC")},
    ).with_columns(pl.col("first_ts").alias("last_ts"))
    minute = runs["first_ts"].dt.truncate("1m")
    per_minute = minute.value_counts().rename({"count": "_c"})
    busy = runs.select(minute.alias("m")).join(per_minute.rename({"first_ts": "m"}), on="m", how="left")["_c"]
    # errors jump from 10% to 60% of steps once 4 or more runs start in the same minute
    runs = runs.with_columns(n_errors=pl.Series(np.where(busy.to_numpy() >= 4, 6, 1)))
    row = load_curve_from_runs(runs, by=(), metrics=["error_rate"], load="started").row(0, named=True)
    assert row["significant"]
    assert row["candidate_knee"] == row["knee"] == 3.0  # the last load below the step
    assert row["below"] == pytest.approx(0.1) and row["above"] == pytest.approx(0.6)


def test_series_by_an_event_column_that_is_not_a_feature() -> None:
    ev = synth.generate(days=4, runs_per_day=80, seed=3).events
    ev = ev.with_columns(pl.when(pl.col("agent") == "billing").then(pl.lit("t1")).otherwise(pl.lit("t2")).alias("tenant"))
    curve = dw.load_curve(ev, by="tenant", n_boot=99, metrics=["error_rate"])
    assert set(curve["series"]) == {"tenant=t1", "tenant=t2", "all"}
    costs = dw.cost_profile(ev, by="tenant")
    assert costs.sort("series")["series"].to_list() == ["all", "tenant=t1", "tenant=t2"]
    assert costs.filter(pl.col("series") == "tenant=t1")["runs"].item() == ev.filter(
        pl.col("agent") == "billing")["run_id"].n_unique()
    drift = dw.detect_drift(ev, reference="2d", by="tenant", every="1d", min_runs=5)
    assert set(drift["series"]) == {"tenant=t1", "tenant=t2"}
    with pytest.raises(SchemaError, match="nope"):
        dw.load_curve(ev, by="nope")


def test_series_by_a_run_feature_or_a_list_is_refused() -> None:
    """load_curve(by="n_steps") (or first_ts, latency_ms_p90, tokens) died with Polars' DuplicateError
    (the by column clashed with the run column of that name), and by a List[str] column with
    Polars' InvalidOperationError: both are an InvalidParameterError naming the column and why."""
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    ev = pl.DataFrame({"run_id": ["a", "a", "b"], "step": [1, 2, 1],
                       "ts": [t0, t0 + timedelta(seconds=5), t0 + timedelta(minutes=1)],
                       "action": ["llm", "search", "llm"], "cost_usd": [0.1, 0.2, 0.3], "tags": [["x"], ["x"], ["y"]]})
    for by in ("n_steps", "first_ts", "latency_ms_p90", "tokens"):
        with pytest.raises(InvalidParameterError, match=f"cannot group by '{by}': it is a per-run feature"):
            dw.load_curve(ev, by=by)
    nested = r"cannot group by 'tags': column 'tags' holds List\(String\) values, and a nested type cannot name"
    with pytest.raises(InvalidParameterError, match=nested):
        dw.load_curve(ev, by="tags")
    # the fleet stage on a run table that carries the list (a per-run stage of its own)
    runs = dw.run_features(ev).with_columns(pl.Series("tags", [["x"], ["y"]]))
    with pytest.raises(InvalidParameterError, match=nested):
        load_buckets_from_runs(runs, by="tags")
    with pytest.raises(InvalidParameterError, match=nested):
        load_curve_from_runs(runs, by="tags")
