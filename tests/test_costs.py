"""Cost profile: quantiles, tails and spend by cause against truth computed from the events,
projection intervals against freshly simulated days, the worst-run estimate, errors."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

import driftwatch as dw
from driftwatch import synth
from driftwatch.costs import COST_COLUMNS, cost_profile_from_runs, expected_max, project_daily_spend
from driftwatch.errors import InvalidParameterError, SchemaError

DAYS = 4
RUNS_PER_DAY = 800


@pytest.fixture(scope="module")
def fleet() -> synth.Fleet:
    # the demo scenario: loops of every kind, cost spikes, retries, outcomes; ~36k events
    return synth.generate(days=DAYS, runs_per_day=RUNS_PER_DAY, seed=0)


@pytest.fixture(scope="module")
def runs(fleet: synth.Fleet) -> pl.DataFrame:
    return dw.run_features(fleet.events)


@pytest.fixture(scope="module")
def truth_loops(fleet: synth.Fleet) -> pl.DataFrame:
    """Wasted cost of each injected loop: every cycle after the first, from the truth table."""
    loops = fleet.truth["loops"].select("run_id", "start_step", "end_step", "period_steps")
    return (
        fleet.events.join(loops, on="run_id")
        .filter(
            (pl.col("step") >= pl.col("start_step") + pl.col("period_steps"))
            & (pl.col("step") <= pl.col("end_step"))
        )
        .group_by("run_id")
        .agg(pl.col("cost_usd").sum().alias("wasted_cost_usd"))
    )


@pytest.fixture(scope="module")
def profile(runs: pl.DataFrame, truth_loops: pl.DataFrame) -> pl.DataFrame:
    return cost_profile_from_runs(
        runs, loops=truth_loops, volume_per_day=RUNS_PER_DAY, policy=dw.Policy(max_cost_usd=0.5)
    )


def _run_truth(events: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Per-series truth computed straight from the events with plain Python over the rows."""
    cost: dict[str, float] = {}
    agent: dict[str, str] = {}
    err: dict[str, float] = {}
    retry: dict[str, float] = {}
    outcome: dict[str, float] = {}
    last_tool: dict[str, tuple[str, bool]] = {}
    for r in events.sort("run_id", "step").iter_rows(named=True):
        rid = r["run_id"]
        c = r["cost_usd"] or 0.0
        cost[rid] = cost.get(rid, 0.0) + c
        agent[rid] = r["agent"]
        if r["status"] == "error":
            err[rid] = err.get(rid, 0.0) + c
        if r["action"] != "llm":
            prev = last_tool.get(rid)
            if prev is not None and prev[0] == r["action"] and prev[1]:
                retry[rid] = retry.get(rid, 0.0) + c
            last_tool[rid] = (r["action"], r["status"] == "error")
        if r["outcome"] is not None:
            outcome[rid] = r["outcome"]
    out: dict[str, dict[str, float]] = {}
    for series in [*sorted(set(agent.values())), "all"]:
        ids = [k for k in cost if series == "all" or agent[k] == series]
        x = np.array([cost[k] for k in ids])
        p50, p90, p99 = np.quantile(x, [0.5, 0.9, 0.99])
        total = float(x.sum())
        with_outcome = [k for k in ids if k in outcome]
        wins = sum(outcome[k] >= 0.5 for k in with_outcome)
        over = [cost[k] for k in ids if cost[k] > 0.5]
        out["all" if series == "all" else f"agent={series}"] = {
            "runs": len(ids),
            "total_cost_usd": total,
            "cost_p50": p50,
            "cost_p90": p90,
            "cost_p99": p99,
            "cost_max": float(x.max()),
            "p99_over_p50": p99 / p50,
            "max_over_p50": float(x.max()) / p50,
            "error_share": sum(err.get(k, 0.0) for k in ids) / total,
            "retry_share": sum(retry.get(k, 0.0) for k in ids) / total,
            "runs_over_ceiling": len(over),
            "over_ceiling_share": sum(over) / total,
            "cost_per_success": sum(cost[k] for k in with_outcome) / wins,
        }
    return out


def test_columns_and_series(profile: pl.DataFrame) -> None:
    assert tuple(profile.columns) == COST_COLUMNS
    assert profile["series"].to_list() == [
        "agent=billing",
        "agent=planner",
        "agent=research",
        "agent=support",
        "all",
    ]


def test_quantiles_tails_and_spend_by_cause_match_truth(fleet: synth.Fleet, profile: pl.DataFrame) -> None:
    truth = _run_truth(fleet.events)
    checked = 0
    for row in profile.iter_rows(named=True):
        t = truth[row["series"]]
        for key, value in t.items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (row["series"], key)
            checked += 1
    assert checked == 5 * 13
    fleet_row = profile.filter(series="all").row(0, named=True)
    # the demo fleet's cost spikes make a heavy tail; failures and retries cost little here
    assert fleet_row["max_over_p50"] > 20
    assert fleet_row["retry_share"] < fleet_row["error_share"] < 0.05


def test_loop_share_matches_truth(fleet: synth.Fleet, profile: pl.DataFrame, truth_loops: pl.DataFrame) -> None:
    agent_of = dict(fleet.truth["runs"].select("run_id", "agent").iter_rows())
    totals = fleet.events.group_by("agent").agg(pl.col("cost_usd").sum())
    for a, total in totals.iter_rows():
        wasted = sum(w for rid, w in truth_loops.iter_rows() if agent_of[rid] == a)
        row = profile.filter(series=f"agent={a}").row(0, named=True)
        assert row["loop_cost_usd"] == pytest.approx(wasted, rel=1e-9)
        assert row["loop_share"] == pytest.approx(wasted / total, rel=1e-9)
    assert 0.05 < profile.filter(series="all")["loop_share"].item() < 0.6


def test_detected_loops_agree_with_truth(fleet: synth.Fleet, profile: pl.DataFrame) -> None:
    # the wrapper detects loops itself: its loop share lands near the injected waste
    detected = dw.cost_profile(fleet.events, volume_per_day=RUNS_PER_DAY)
    got = detected.filter(series="all")["loop_share"].item()
    want = profile.filter(series="all")["loop_share"].item()
    assert got == pytest.approx(want, rel=0.25)


def test_wrapper_equals_fleet_stage(fleet: synth.Fleet, runs: pl.DataFrame, truth_loops: pl.DataFrame) -> None:
    a = dw.cost_profile(fleet.events.lazy(), loops=truth_loops, volume_per_day=2000, policy=0.5)
    b = cost_profile_from_runs(runs, loops=truth_loops, volume_per_day=2000, policy=0.5)
    assert a.equals(b)
    # per-run tables of chunks of whole runs concatenate to the same answer
    chunks = [
        dw.run_features(fleet.events.filter(pl.col("run_id").hash(7) % 3 == i)) for i in range(3)
    ]
    c = cost_profile_from_runs(pl.concat(chunks), loops=truth_loops, volume_per_day=2000, policy=0.5)
    assert c.drop("projected_daily_lo", "projected_daily_hi").equals(
        b.drop("projected_daily_lo", "projected_daily_hi")
    )


def test_projection_interval_covers_fresh_days(runs: pl.DataFrame) -> None:
    """A fresh simulated day (same scenario, new seed) costs what the interval says, at its volume."""
    covered = []
    widths = []
    daily_max = []
    volumes = []
    for seed in (101, 102, 103):
        fresh = dw.run_features(synth.generate(days=DAYS, runs_per_day=RUNS_PER_DAY, seed=seed).events)
        per_day = fresh.group_by(pl.col("first_ts").dt.date()).agg(
            pl.len().alias("n"), pl.col("cost_usd").sum().alias("spend"), pl.col("cost_usd").max().alias("worst")
        )
        for n, spend, worst in per_day.select("n", "spend", "worst").iter_rows():
            row = cost_profile_from_runs(runs, by=(), volume_per_day={"all": n}).row(0, named=True)
            covered.append(row["projected_daily_lo"] <= spend <= row["projected_daily_hi"])
            widths.append((row["projected_daily_hi"] - row["projected_daily_lo"]) / row["projected_daily_usd"])
            daily_max.append(worst)
            volumes.append(n)
    assert len(covered) == 3 * DAYS
    assert sum(covered) >= len(covered) - 1  # a 95% interval; at most one miss in twelve days
    assert max(widths) < 0.6  # and not uselessly wide
    # the expected worst run of a day at that volume vs the worst run of each fresh day
    row = cost_profile_from_runs(runs, by=(), volume_per_day={"all": float(np.mean(volumes))}).row(0, named=True)
    assert row["worst_run_method"] == "empirical"
    assert row["worst_run_expected_usd"] == pytest.approx(float(np.mean(daily_max)), rel=0.25)


@pytest.mark.parametrize(("costs", "volume"), [([0.01] * 30 + [5.0] * 2, 10), ([0, 0, 0, 10], 1), ([1, 2, 3, 4], 1),
                                              ([0.01] * 30 + [5.0] * 2, 3_000_000)])
def test_projection_interval_stays_within_what_n_runs_can_cost(costs: list[float], volume: float) -> None:
    """A rare series at a small volume got a negative lower bound ($-3.02 for ten runs that
    cost at least $0.01 each): the mean's and the day's uncertainty were added as if normal.
    Small cases are now simulated together, and no interval leaves N * [min, max]."""
    from driftwatch.costs import project_daily_spend

    x = np.asarray(costs, dtype=float)
    point, lo, hi = project_daily_spend(x, volume)
    assert volume * x.min() <= lo <= hi <= volume * x.max()
    assert lo <= point * (1 + 1e-12) and point <= hi * (1 + 1e-12)
    if volume == 1:  # one run costs one of the observed costs: the central 95% of them
        assert (lo, hi) == (x.min(), x.max())


def test_volume_split_by_share_and_mapping(runs: pl.DataFrame) -> None:
    prof = cost_profile_from_runs(runs, volume_per_day=10_000)
    agents = prof.filter(pl.col("series") != "all")
    assert agents["volume_per_day"].sum() == pytest.approx(10_000)
    assert agents["projected_daily_usd"].sum() == pytest.approx(prof.filter(series="all")["projected_daily_usd"].item())
    with pytest.raises(InvalidParameterError, match="gives series 'agent=billing' twice"):
        cost_profile_from_runs(runs, volume_per_day={"agent=billing": 5000, "billing": 50})
    assert cost_profile_from_runs(runs, volume_per_day={"agent=billing": 5000, "billing": 5000}).height
    mapped = cost_profile_from_runs(runs, volume_per_day={"agent=billing": 5000})
    assert mapped.filter(series="agent=billing")["volume_per_day"].item() == 5000
    assert mapped.filter(series="all")["projected_daily_usd"].is_null().all()
    observed = cost_profile_from_runs(runs)  # None: the observed runs per day
    fleet = observed.filter(series="all").row(0, named=True)
    assert fleet["volume_per_day"] == pytest.approx(runs.height / fleet["observed_days"])
    assert fleet["observed_days"] == pytest.approx(DAYS, rel=0.01)


def _day_runs(starts: list[datetime], cost: float = 1.0, agent: str = "a") -> pl.DataFrame:
    return pl.DataFrame({"run_id": [f"{agent}{i}" for i in range(len(starts))], "agent": agent,
                         "cost_usd": cost, "first_ts": starts},
                        schema_overrides={"first_ts": pl.Datetime("us", "UTC")})


def test_observed_volume_does_not_depend_on_where_midnight_falls() -> None:
    from driftwatch.costs import observed_days

    noon = datetime(2026, 1, 5, 12, tzinfo=UTC)
    hourly = [noon + timedelta(hours=h) for h in range(24)]  # Monday noon to Tuesday 11:00: two dates
    midnight = [t - timedelta(hours=12) for t in hourly]  # the same log on one date
    for starts in (hourly, midnight):
        row = cost_profile_from_runs(_day_runs(starts), by=()).row(0, named=True)
        assert row["observed_days"] == pytest.approx(1.0)
        assert row["runs_per_day"] == pytest.approx(24.0)
        assert row["projected_daily_usd"] == pytest.approx(24.0)
    assert cost_profile_from_runs(_day_runs(hourly), by=())["days"].item() == 2  # dates touched, as documented
    # three hours of runs, one a minute: the rate of that window, not "180 runs on one date a day"
    window = [noon + timedelta(minutes=m) for m in range(180)]
    assert observed_days(pl.Series(window)) == pytest.approx(3 / 24)
    assert cost_profile_from_runs(_day_runs(window), by=())["runs_per_day"].item() == pytest.approx(1440)
    # a week the log misses counts one day, not seven; one instant counts one day; none is unknown
    gap = [noon + timedelta(hours=h) for h in range(24)] + [noon + timedelta(days=8, hours=h) for h in range(24)]
    assert observed_days(pl.Series(gap)) == pytest.approx((23 + 24 + 23) / 24 * 48 / 47)
    assert observed_days(pl.Series([noon, noon])) is None and observed_days(pl.Series([noon])) is None
    one_instant = cost_profile_from_runs(_day_runs([noon] * 5), by=()).row(0, named=True)
    assert one_instant["runs_per_day"] is None and one_instant["projected_daily_usd"] is None
    assert observed_days(pl.Series([], dtype=pl.Datetime("us", "UTC"))) is None


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/Los_Angeles", None])
def test_days_are_utc_dates_whatever_the_tables_time_zone(zone: str | None) -> None:
    """``days`` counts UTC dates, as load_buckets_from_runs buckets them: 14:00 and 16:00 UTC
    are one date, not Monday 23:00 and Tuesday 01:00 in Tokyo (two)."""
    starts = _day_runs([datetime(2026, 1, 5, 14, tzinfo=UTC), datetime(2026, 1, 5, 16, tzinfo=UTC)])
    ts = pl.col("first_ts")
    runs = starts.with_columns(ts.dt.convert_time_zone(zone) if zone else ts.dt.replace_time_zone(None))
    row = cost_profile_from_runs(runs, by=()).row(0, named=True)
    assert (row["days"], row["observed_days"]) == (1, pytest.approx(2 / 24 * 2)), zone


def test_all_row_follows_the_mix_of_series_volumes() -> None:
    """Volumes given series by series: the fleet's day is their mix, not the observed one."""
    noon = datetime(2026, 1, 5, 12, tzinfo=UTC)
    rng = np.random.default_rng(0)
    cheap, dear = rng.lognormal(-4, 0.5, 400), rng.lognormal(-1, 1.0, 300)
    runs = pl.concat([
        _day_runs([noon] * 400, agent="a").with_columns(pl.Series("cost_usd", cheap)),
        _day_runs([noon] * 300, agent="b").with_columns(pl.Series("cost_usd", dear)),
    ])
    prof = cost_profile_from_runs(runs, volume_per_day={"a": 150, "b": 40})
    series, fleet = prof.filter(pl.col("series") != "all"), prof.filter(series="all").row(0, named=True)
    assert fleet["volume_per_day"] == 190
    assert fleet["projected_daily_usd"] == pytest.approx(series["projected_daily_usd"].sum())
    assert fleet["projected_daily_usd"] == pytest.approx(150 * cheap.mean() + 40 * dear.mean())
    # the day's spend and its worst run, by simulation of 150 + 40 runs drawn from each series
    sim = np.random.default_rng(1)
    a, b = cheap[sim.integers(0, 400, (100_000, 150))], dear[sim.integers(0, 300, (100_000, 40))]
    worst = np.maximum(a.max(1), b.max(1))
    assert fleet["worst_run_expected_usd"] == pytest.approx(worst.mean(), rel=0.01)
    assert fleet["worst_run_method"] == "empirical"
    day_lo, day_hi = np.quantile(a.sum(1) + b.sum(1), [0.025, 0.975])
    # (the interval adds the uncertainty of each series' mean: a little wider than the day's own)
    assert fleet["projected_daily_lo"] < day_lo < day_hi < fleet["projected_daily_hi"]
    assert fleet["projected_daily_hi"] - fleet["projected_daily_lo"] < 1.5 * (day_hi - day_lo)
    # one series named in the mix: "all" is that series' own projection, figure for figure
    one = cost_profile_from_runs(runs.filter(agent="a"), volume_per_day={"a": 150})
    cols = ["projected_daily_usd", "projected_daily_lo", "projected_daily_hi", "worst_run_expected_usd",
            "worst_run_1_in_n_usd", "worst_run_method"]
    assert one.filter(series="all").select(cols).row(0) == one.filter(series="agent=a").select(cols).row(0)
    # "all" given too: the fleet's observed costs at that volume, as before
    given = cost_profile_from_runs(runs, volume_per_day={"a": 150, "b": 40, "all": 190}).filter(series="all")
    assert given["projected_daily_usd"].item() == pytest.approx(190 * np.concatenate([cheap, dear]).mean())
    # a named series without a recorded cost: the mix's spend is unknown
    unknown = runs.with_columns(pl.when(pl.col("agent") == "b").then(None).otherwise("cost_usd").alias("cost_usd"))
    out = cost_profile_from_runs(unknown, volume_per_day={"a": 150, "b": 40}).filter(series="all")
    assert out["projected_daily_usd"].is_null().all() and out["worst_run_method"].is_null().all()


def test_bootstrap_and_normal_paths_agree() -> None:
    rng = np.random.default_rng(5)
    costs = rng.lognormal(np.log(0.05), 0.8, 4000)
    exact = project_daily_spend(costs, 3000, n_boot=1000, rng=1)  # 4000 x 1000 draws: resampled
    clt = project_daily_spend(np.tile(costs, 6), 3000 * 6, n_boot=1000, rng=1)  # too many: normal limits
    assert exact[0] == pytest.approx(3000 * costs.mean())
    width_exact = (exact[2] - exact[1]) / exact[0]
    width_clt = (clt[2] - clt[1]) / clt[0]
    # six times the runs and six times the volume: the relative width shrinks by about sqrt(6)
    assert width_clt == pytest.approx(width_exact / math.sqrt(6), rel=0.2)
    assert project_daily_spend(costs, 3000, rng=1) == project_daily_spend(costs, 3000, rng=1)


def test_expected_max_exact_and_pareto_tail() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert expected_max(x, 2)[0] == pytest.approx(50 / 16)
    # beyond the data: exponential costs, whose expected maximum of N is known (harmonic number)
    rng = np.random.default_rng(1)
    costs = 0.1 + rng.exponential(0.05, 3000)
    for n in (30_000, 1_000_000):
        e_max, one_in_n, method, shape = expected_max(costs, n)
        truth = 0.1 + 0.05 * float(np.sum(1.0 / np.arange(1, n + 1)))
        assert method == "pareto_tail"
        assert abs(shape) < 0.15
        assert e_max == pytest.approx(truth, rel=0.12)
        assert one_in_n == pytest.approx(0.1 + 0.05 * math.log(n), rel=0.12)
        assert e_max > costs.max()  # extrapolated beyond the largest observed run
    # a tail made of a separate cluster of huge runs does not fit: capped at the data, said so
    spiky = np.r_[0.05 + rng.exponential(0.01, 2990), rng.uniform(5.0, 6.0, 10)]
    e_max, _, method, _ = expected_max(spiky, 100_000)
    assert method == "empirical_capped"
    assert e_max <= spiky.max()


def test_policy_sources_and_no_ceiling(runs: pl.DataFrame) -> None:
    want = int((runs["cost_usd"] > 1.0).sum())
    for policy in (
        dw.Policy(max_cost_usd=1.0),
        1.0,
        {"max_cost_usd": 1.0},
        SimpleNamespace(limits=SimpleNamespace(max_cost_usd=1.0)),
    ):
        prof = cost_profile_from_runs(runs, by=(), policy=policy)
        assert prof["runs_over_ceiling"].item() == want
        assert prof["cost_ceiling_usd"].item() == 1.0
    none = cost_profile_from_runs(runs, by=())
    assert none.select("cost_ceiling_usd", "runs_over_ceiling", "over_ceiling_share").row(0) == (None, None, None)
    assert cost_profile_from_runs(runs, by=(), policy=dw.Policy(max_cost_usd=None))["runs_over_ceiling"].item() is None


def test_missing_optional_columns() -> None:
    ev = pl.DataFrame({"run_id": ["a", "a", "b"], "step": [1, 2, 1], "action": ["llm", "x", "llm"]})
    prof = dw.cost_profile(ev, by=(), loops=pl.DataFrame({"run_id": [], "wasted_cost_usd": []}))
    row = prof.row(0, named=True)
    # no cost column: every cost figure is unknown (null), not $0
    assert row["runs"] == 2 and row["runs_with_cost"] == 0 and row["total_cost_usd"] is None
    assert row["cost_p50"] is None and row["cost_max"] is None and row["error_cost_usd"] is None
    assert row["p99_over_p50"] is None and row["loop_share"] is None and row["cost_per_success"] is None
    assert row["runs_with_outcome"] == 0 and row["volume_per_day"] is None  # no timestamps: no daily volume
    no_loops = cost_profile_from_runs(dw.run_features(ev), by=())
    assert no_loops["loop_cost_usd"].item() is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interval": 1.5}, "interval must be a coverage in"),
        ({"n_boot": 10}, "n_boot must be an integer >= 50"),
        ({"volume_per_day": -5}, "volume_per_day must be a positive finite number of runs per day .* got -5$"),
        ({"volume_per_day": math.inf}, "volume_per_day must be a positive finite number .* got inf$"),
        ({"volume_per_day": math.nan}, "volume_per_day must be a positive finite number .* got nan$"),
        ({"volume_per_day": "1000"}, r"volume_per_day must be a positive finite number .* got '1000' \(a str\)$"),
        ({"volume_per_day": True}, r"got True \(a bool\)$"),
        ({"volume_per_day": {"all": 0}}, "volume_per_day must be a positive finite number"),
        ({"policy": object()}, "policy must be a driftwatch.Policy, a policy file path"),
        ({"policy": -1.0}, "max_cost_usd must be a non-negative number"),
        ({"loops": "loops.parquet"}, "loops must be a detect_loops"),
    ],
)
def test_bad_options(runs: pl.DataFrame, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        cost_profile_from_runs(runs, **kwargs)  # type: ignore[arg-type]


def test_bad_tables(runs: pl.DataFrame) -> None:
    with pytest.raises(SchemaError, match=r"features: missing column\(s\) \['cost_usd'\]"):
        cost_profile_from_runs(runs.drop("cost_usd"))
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['version'\]"):
        cost_profile_from_runs(runs.drop("version"), by=("version",))
    with pytest.raises(SchemaError, match="loops: missing column"):
        cost_profile_from_runs(runs, loops=pl.DataFrame({"run_id": ["a"]}))
    with pytest.raises(InvalidParameterError, match="features must be a polars DataFrame"):
        cost_profile_from_runs({"run_id": []})  # type: ignore[arg-type]
    with pytest.raises(dw.DriftwatchError):
        dw.cost_profile(pl.DataFrame({"x": [1]}))


def test_volumes_by_series_take_agent_names_and_refuse_unknown_ones(runs: pl.DataFrame) -> None:
    """{"billing": 1000} used to project nothing, without a word; so did a typo."""
    from driftwatch.errors import InvalidParameterError

    def projected(volume: dict[str, float]) -> dict[str, float | None]:
        prof = cost_profile_from_runs(runs, volume_per_day=volume)
        return dict(prof.select("series", "volume_per_day").iter_rows())

    by_label = projected({"agent=billing": 1000})
    assert projected({"billing": 1000}) == by_label
    assert by_label["agent=billing"] == 1000 and by_label["agent=planner"] is None and by_label["all"] is None
    every = {a.split("=", 1)[1]: 100.0 * (i + 1) for i, a in enumerate(sorted(k for k in by_label if k != "all"))}
    got = projected(every)
    assert got["all"] == sum(every.values())  # "all" is the sum when every series has a volume
    assert projected({**every, "all": 5.0})["all"] == 5.0
    with pytest.raises(InvalidParameterError, match=r"volume_per_day names no series \['bilingg'\]"):
        projected({"bilingg": 1000})


def test_policy_may_be_a_file_path(runs: pl.DataFrame, tmp_path) -> None:  # noqa: ANN001
    """check_policy, score_runs and audit take a policy file path; cost_profile refused it
    with "a str without a max_cost_usd setting"."""
    dw.Policy(max_cost_usd=0.2).to_toml(tmp_path / "p.toml")
    by_path = cost_profile_from_runs(runs, policy=str(tmp_path / "p.toml"))
    assert by_path.equals(cost_profile_from_runs(runs, policy=dw.Policy(max_cost_usd=0.2)))
    assert by_path.equals(cost_profile_from_runs(runs, policy=tmp_path / "p.toml"))
    assert by_path["cost_ceiling_usd"].unique().to_list() == [0.2]
    with pytest.raises(dw.PolicyError, match="cannot be read"):
        cost_profile_from_runs(runs, policy=str(tmp_path / "missing.toml"))


def test_runs_without_a_recorded_cost_are_unknown_not_free() -> None:
    """A series none of whose runs recorded a cost has null figures; in a series where some
    did, the figures are over those runs only (a run with no cost is not a $0 run)."""
    ev = dw.synth.generate(days=4, runs_per_day=40, seed=3).events
    no_cost = pl.col("agent") == "billing"
    partial = no_cost | ((pl.col("agent") == "planner") & pl.col("run_id").str.ends_with("1"))
    masked = ev.with_columns(pl.when(partial).then(None).otherwise(pl.col("cost_usd")).alias("cost_usd"))
    prof = dw.cost_profile(masked, volume_per_day=1000).sort("series")
    billing = prof.filter(pl.col("series") == "agent=billing").row(0, named=True)
    assert billing["runs"] > 0 and billing["runs_with_cost"] == 0
    for col in ("total_cost_usd", "cost_mean", "cost_p50", "cost_max", "loop_cost_usd", "error_cost_usd",
                "projected_daily_usd", "worst_run_expected_usd", "cost_per_success"):
        assert billing[col] is None, col
    # planner: the figures equal those of the runs with a cost alone
    planner = prof.filter(pl.col("series") == "agent=planner").row(0, named=True)
    costed = masked.filter(pl.col("agent") == "planner", ~partial)
    alone = dw.cost_profile(costed, by=(), volume_per_day=1000, loops=dw.detect_loops(costed)).row(0, named=True)
    assert planner["runs_with_cost"] == alone["runs"] < planner["runs"]
    for col in ("total_cost_usd", "cost_p50", "cost_p99", "cost_max", "loop_cost_usd", "error_cost_usd"):
        assert planner[col] == pytest.approx(alone[col], rel=1e-12), col
    # the fleet row: the spend of the costed runs, and the other agents as before
    full = dw.cost_profile(ev, volume_per_day=1000).sort("series")
    fleet = prof.filter(pl.col("series") == "all").row(0, named=True)
    assert fleet["runs_with_cost"] == dw.run_features(masked)["cost_usd"].is_not_null().sum() < fleet["runs"]
    assert fleet["total_cost_usd"] == pytest.approx(masked["cost_usd"].sum(), rel=1e-9)
    for agent in ("agent=research", "agent=support"):
        assert prof.filter(pl.col("series") == agent).equals(full.filter(pl.col("series") == agent))


def test_no_worst_run_of_a_day_under_one_run_a_day() -> None:
    ev = synth.generate(days=3, runs_per_day=40, seed=2).events
    p = dw.cost_profile(ev, volume_per_day=0.9)  # (split over four agents: 0.2 runs a day each)
    agents = p.filter(pl.col("series") != "all")
    assert agents["worst_run_expected_usd"].is_null().all() and agents["worst_run_method"].is_null().all()
    assert agents["projected_daily_usd"].is_not_null().all()


def test_loop_spend_leaves_out_progress_and_counts_each_step_once() -> None:
    """A run with a paging loop (same_action: progress) and a retry loop: the loop spend is the
    retry loop's waste, from the loop table, from its summary and in the audit's costs table
    alike; loops that overlap count each wasted step once."""
    def run(rid: str, actions: list[tuple[str, str, str, str]]) -> pl.DataFrame:
        return pl.DataFrame({"run_id": rid, "step": range(1, len(actions) + 1), "action": [a[0] for a in actions],
                             "args": [a[1] for a in actions], "result": [a[2] for a in actions],
                             "status": [a[3] for a in actions], "cost_usd": 0.01}).with_columns(
            pl.col("step").cast(pl.Int64))
    pages = [("list", f"page={i}", f"items {i}", "ok") for i in range(6)]
    retry = [("pay", "id=1", "timeout", "error")] * 5
    ev = run("mixed", [*pages, *retry])
    loops = dw.detect_loops(ev)
    assert sorted(loops["kind"]) == ["error_retry", "same_action"]
    want = loops.filter(kind="error_retry")["wasted_cost_usd"].item()
    summary = dw.loop_summary(loops)
    assert summary.select("no_progress_loops", "no_progress_cost_usd").row(0) == (1, pytest.approx(want))
    assert summary["wasted_cost_usd"].item() > want  # (all of the run's loops)
    assert dw.cost_profile(ev, by=(), loops=loops)["loop_cost_usd"].item() == pytest.approx(want)
    assert dw.cost_profile(ev, by=(), loops=summary)["loop_cost_usd"].item() == pytest.approx(want)
    assert dw.cost_profile(ev, by=())["loop_cost_usd"].item() == pytest.approx(want)
    assert dw.audit(ev).costs.filter(series="all")["loop_cost_usd"].item() == pytest.approx(want)
    # history stored before the summary had the columns: the run's worst loop decides, as it did
    old = summary.drop("no_progress_loops", "no_progress_cost_usd")
    assert dw.cost_profile(ev, by=(), loops=old)["loop_cost_usd"].item() == pytest.approx(
        summary["wasted_cost_usd"].item())
    # an exact loop (waste: steps 4-9) inside an error_retry loop (waste: steps 3-12) around it, and
    # a paging loop over steps 8-15: the no-progress waste is steps 3-12, $0.10, counted once
    table = pl.DataFrame({
        "run_id": "r", "agent": "a", "kind": ["error_retry", "exact", "same_action"],
        "pattern": ["pay > llm", "pay", "list"], "repeats": [5, 4, 4], "start_step": [1, 3, 6],
        "waste_start_step": [3, 4, 8], "end_step": [12, 9, 15], "wasted_steps": [10, 6, 8],
        "wasted_tokens": [100, 60, 80], "wasted_cost_usd": [0.10, 0.06, 0.08],
    })
    assert dw.loop_summary(table).select("no_progress_loops", "no_progress_cost_usd").row(0) == (
        2, pytest.approx(0.10))
    runs = pl.DataFrame({"run_id": ["r"], "cost_usd": [1.0]})
    for loop_table in (table, dw.loop_summary(table)):
        assert cost_profile_from_runs(runs, by=(), loops=loop_table)["loop_cost_usd"].item() == pytest.approx(0.10)


def _tail_and_cluster_runs() -> tuple[pl.DataFrame, float, float]:
    """A fleet whose truth is known: 1000 runs of ``tail`` with a generalised-Pareto tail (shape 0.3,
    scale 0.1, from 0.01), and 3000 of ``cluster``, cheap but for a cluster of runs at exactly $5
    (3%), which no Pareto fit of the pooled tail passes. Returns the runs, the tail's shape and scale."""
    from scipy import stats

    rng = np.random.default_rng(7)
    xi, sigma = 0.3, 0.1
    tail = 0.01 + stats.genpareto(xi, scale=sigma).rvs(1000, random_state=rng)
    cluster = np.where(rng.random(3000) < 0.03, 5.0, rng.lognormal(-3, 0.3, 3000))
    runs = pl.DataFrame({"run_id": [f"r{i:05d}" for i in range(4000)], "agent": ["tail"] * 1000 + ["cluster"] * 3000,
                         "cost_usd": np.concatenate([tail, cluster])})
    return runs, xi, sigma


def test_fleet_worst_run_is_never_below_a_series() -> None:
    """A day of the fleet holds each series' runs, so its worst run costs at least theirs. The
    "all" row gave $5.00 (its pooled tail passes no fit: the figure stays at the largest observed
    run) while its series "tail" gave $11.7 by extrapolation; the true expected maximum of the tail
    series' 250,000 runs a day alone is $17.7."""
    runs, xi, sigma = _tail_and_cluster_runs()
    n_tail = 250_000  # its share of 1,000,000 runs a day
    truth = 0.01 + sigma / xi * (math.exp(math.lgamma(n_tail + 1) + math.lgamma(1 - xi)
                                          - math.lgamma(n_tail + 1 - xi)) - 1)
    cols = ["worst_run_expected_usd", "worst_run_1_in_n_usd"]
    for volume in (1_000_000, {"tail": 250_000, "cluster": 750_000}, {"all": 1_000_000, "tail": 250_000}):
        prof = cost_profile_from_runs(runs, volume_per_day=volume, n_boot=50)
        tail, fleet = prof.filter(series="agent=tail").row(0, named=True), prof.filter(series="all").row(0, named=True)
        assert tail["worst_run_method"] == "pareto_tail"
        for c in cols:
            assert fleet[c] >= prof.filter(pl.col("series") != "all")[c].drop_nulls().max(), (volume, c)
        assert fleet["worst_run_expected_usd"] >= 0.5 * truth  # (the pooled $5.0 was far below)
        assert fleet["worst_run_method"] == "series_max" and fleet["tail_shape"] is None
        assert fleet["worst_run_expected_usd"] == tail["worst_run_expected_usd"]
    # "all" given its own volume: a series whose volume is more than its share of it is no part of
    # that day (500,000 tail runs in a fleet day of 1,000,000 whose tail share is 250,000)
    prof = cost_profile_from_runs(runs, volume_per_day={"all": 1_000_000, "tail": 500_000}, n_boot=50)
    fleet = prof.filter(series="all").row(0, named=True)
    assert fleet["worst_run_method"] == "empirical_capped" and fleet["worst_run_expected_usd"] == pytest.approx(5.0)


def test_empty_volume_mapping_is_refused() -> None:
    """volume_per_day={} named no series and left every projection null without a word."""
    runs = pl.DataFrame({"run_id": ["a", "b"], "agent": ["x", "y"], "cost_usd": [0.1, 0.2]})
    with pytest.raises(InvalidParameterError, match="volume_per_day is an empty mapping: it names no series"):
        cost_profile_from_runs(runs, volume_per_day={})
    with pytest.raises(InvalidParameterError, match="volume_per_day is an empty mapping"):
        dw.cost_profile(pl.DataFrame({"run_id": ["a"], "step": [1], "action": ["llm"], "cost_usd": [0.1]}),
                        volume_per_day={})



def test_an_absurd_volume_is_refused_before_it_overflows() -> None:
    """volume_per_day=1e308 overflowed (OverflowError: cannot convert float infinity to integer)."""
    runs = pl.DataFrame({"run_id": [f"r{i}" for i in range(50)], "agent": ["x"] * 50,
                         "cost_usd": [0.01 * (i + 1) for i in range(50)]})
    for volume in (1e308, {"agent=x": 1e19}):
        with pytest.raises(InvalidParameterError, match="at most 1e"):
            cost_profile_from_runs(runs, volume_per_day=volume, n_boot=50)
    assert cost_profile_from_runs(runs, volume_per_day=1e18, n_boot=50).height == 2


_THREADS_SCRIPT = """
import sys
import numpy as np, polars as pl
from driftwatch.costs import cost_profile_from_runs
rng = np.random.default_rng(0)
n = 2000
runs = pl.DataFrame({"run_id": [f"r{i:05d}" for i in range(n)], "agent": rng.choice(["a", "b"], n),
                     "cost_usd": rng.lognormal(-3, 1, n), "error_cost_usd": rng.lognormal(-6, 1, n),
                     "retry_cost_usd": rng.lognormal(-6, 1, n), "outcome": rng.random(n)})
loops = pl.DataFrame({"run_id": runs["run_id"][::3], "wasted_cost_usd": rng.lognormal(-5, 1, len(range(0, n, 3)))})
for by in ((), ("agent",)):
    out = cost_profile_from_runs(runs, by=by, loops=loops, policy=0.1, n_boot=50)
    print([[float(x).hex() if isinstance(x, float) else x for x in row] for row in out.rows()])
"""


def test_fleet_sums_do_not_depend_on_the_number_of_threads() -> None:
    """The "all" row's float sums (loop, error, retry and over-ceiling spend, the total, the mean,
    the cost per success) changed in the last bits with POLARS_MAX_THREADS: Polars splits a sum
    over a whole column between its threads. Polars' thread pool is fixed when it is imported, so
    each count runs in a fresh process."""
    import os
    import subprocess
    import sys

    def run(threads: int) -> str:
        env = {**os.environ, "POLARS_MAX_THREADS": str(threads)}
        return subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=120, check=True).stdout

    one = run(1)
    assert one.count("\n") == 2 and run(8) == one and run(3) == one


def test_series_by_a_run_feature_or_a_list_is_refused() -> None:
    """cost_profile(by="n_steps") grouped the runs by their step count without a word (a per-run
    feature, not a label), and a List[str] column died with Polars' InvalidOperationError."""
    ev = pl.DataFrame({"run_id": ["a", "a", "b"], "step": [1, 2, 1], "action": ["llm", "search", "llm"],
                       "cost_usd": [0.1, 0.2, 0.3], "tags": [["x"], ["x"], ["y"]]})
    with pytest.raises(InvalidParameterError, match="cannot group by 'n_steps': it is a per-run feature the audit"):
        dw.cost_profile(ev, by="n_steps")
    runs = dw.run_features(ev).with_columns(pl.Series("tags", [["x"], ["y"]]))
    with pytest.raises(InvalidParameterError, match="cannot group by 'n_steps': it is a per-run feature"):
        cost_profile_from_runs(runs, by=("n_steps",))
    nested = r"cannot group by 'tags': column 'tags' holds List\(String\) values, and a nested type cannot name"
    for call in (lambda: dw.cost_profile(ev, by="tags"), lambda: cost_profile_from_runs(runs, by="tags")):
        with pytest.raises(InvalidParameterError, match=nested):
            call()
