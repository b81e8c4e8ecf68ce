"""The fleet generator: determinism, schema, and that every injection is really in the events."""

from __future__ import annotations

import io
import os
import stat
from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

import driftwatch as dw
from driftwatch import synth
from driftwatch.errors import InvalidParameterError
from driftwatch.schema import CANONICAL_SCHEMA


@pytest.fixture(scope="module")
def fleet() -> synth.Fleet:
    return synth.generate(days=21, runs_per_day=300, seed=3)


def test_schema_and_order(fleet: synth.Fleet) -> None:
    dw.validate_events(fleet.events)
    assert dict(fleet.events.schema) == CANONICAL_SCHEMA
    assert fleet.events.select(pl.struct("run_id", "step").is_unique().all()).item()
    ev = fleet.events
    assert ev.equals(ev.sort("run_id", "step"))
    # steps of a run are 1..n, and time increases with the step
    per_run = ev.group_by("run_id").agg(
        (pl.col("step").max() == pl.len()).alias("dense"), pl.col("ts").is_sorted().alias("ts_sorted")
    )
    assert per_run["dense"].all() and per_run["ts_sorted"].all()


def test_deterministic_and_seeded() -> None:
    a = synth.generate(days=3, runs_per_day=80, seed=11)
    b = synth.generate(days=3, runs_per_day=80, seed=11)
    c = synth.generate(days=3, runs_per_day=80, seed=12)
    assert a.events.equals(b.events)
    assert not a.events.equals(c.events)
    for name in a.truth:
        assert a.truth[name].equals(b.truth[name])


def test_write_fleet_equals_generate(tmp_path) -> None:
    kw = dict(days=4, runs_per_day=60, seed=5)
    fleet = synth.generate(**kw)
    counts = synth.write_fleet(tmp_path / "f", **kw)
    back = pl.read_parquet(tmp_path / "f" / "events" / "**" / "*.parquet", hive_partitioning=False)
    assert counts["events"] == fleet.events.height == back.height
    assert back.sort("run_id", "step").equals(fleet.events)
    truth = synth.read_truth(tmp_path / "f")
    assert truth["loops"].equals(fleet.truth["loops"])
    assert sorted(p.name for p in (tmp_path / "f" / "events").iterdir())[0] == "date=2026-10-01"


def test_llm_prompts_never_repeat(fleet: synth.Fleet) -> None:
    llm = fleet.events.filter(pl.col("action") == "llm")
    assert llm["args"].n_unique() == llm.height


def test_loops_are_in_the_events(fleet: synth.Fleet) -> None:
    ev = fleet.events
    loops = fleet.truth["loops"]
    assert loops.height > 20
    assert set(loops["kind"]) == {"exact", "near_duplicate", "error_retry", "handoff"}
    seg = ev.join(loops, on="run_id").filter(
        pl.col("step").is_between(pl.col("start_step"), pl.col("end_step")) & (pl.col("action") != "llm")
    )
    # every cycle repeats the pattern's actions
    expect = loops.select(
        "run_id", (pl.col("period") * pl.col("repeats")).alias("n_tool_steps")
    )
    got = seg.group_by("run_id").len()
    assert expect.join(got, on="run_id").select((pl.col("n_tool_steps") == pl.col("len")).all()).item()
    exact = seg.filter(pl.col("kind") == "exact")
    # an exact loop: one distinct (action, args, result) per cycle position
    distinct = exact.group_by("run_id").agg(pl.struct("action", "args", "result").n_unique().alias("u"),
                                            pl.col("period").first())
    assert (distinct["u"] == distinct["period"]).all()
    near = seg.filter(pl.col("kind") == "near_duplicate")
    nd = near.group_by("run_id").agg(pl.col("args").n_unique().alias("u"), pl.len().alias("n"))
    assert (nd["u"] == nd["n"]).all()  # never byte-identical
    retry = seg.filter(pl.col("kind") == "error_retry")
    assert (retry["status"] == "error").all()
    hand = seg.filter(pl.col("kind") == "handoff")
    assert hand["action"].str.starts_with("handoff:").all()


def test_benign_repetition_changes_results(fleet: synth.Fleet) -> None:
    ev = fleet.events
    benign = fleet.truth["benign"]
    seg = ev.join(benign, on="run_id").filter(
        pl.col("step").is_between(pl.col("start_step"), pl.col("end_step")) & (pl.col("action") != "llm")
    )
    per = seg.group_by("run_id").agg(pl.col("result").n_unique().alias("u"), pl.len().alias("n"),
                                     pl.col("action").n_unique().alias("a"))
    assert (per["u"] == per["n"]).all() and (per["a"] == 1).all()


def test_weekly_swing_and_diurnal(fleet: synth.Fleet) -> None:
    runs = fleet.truth["runs"].with_columns(pl.col("first_ts").dt.weekday().alias("wd"),
                                            pl.col("first_ts").dt.hour().alias("h"))
    per_day = runs.group_by(pl.col("first_ts").dt.date(), "wd").len()
    weekend = per_day.filter(pl.col("wd") >= 6)["len"].mean()
    weekday = per_day.filter(pl.col("wd") < 6)["len"].mean()
    assert weekend < 0.8 * weekday
    by_hour = runs.group_by("h").len()
    assert by_hour.filter(pl.col("h") == 14)["len"].item() > 3 * by_hour.filter(pl.col("h") == 2)["len"].item()


def test_changepoints_shift_the_metric() -> None:
    sc = synth.Scenario.stable(changepoints=(synth.ChangeSpec("billing", 10, "steps_per_run", 1.8),
                                             synth.ChangeSpec("support", 10, "error_rate", 5.0)))
    f = synth.generate(days=20, runs_per_day=400, seed=1, scenario=sc)
    rf = dw.run_features(f.events).with_columns((pl.col("first_ts").dt.day() > 10).alias("after"))
    m = rf.group_by("agent", "after").agg(pl.col("n_steps").mean(), pl.col("n_errors").sum() / pl.col("n_tool").sum())
    def val(agent: str, after: bool, col: str) -> float:
        return m.filter((pl.col("agent") == agent) & (pl.col("after") == after))[col].item()
    assert val("billing", True, "n_steps") / val("billing", False, "n_steps") > 1.5
    assert val("support", True, "n_errors") / val("support", False, "n_errors") > 3
    assert 0.9 < val("planner", True, "n_steps") / val("planner", False, "n_steps") < 1.1
    assert f.truth["changepoints"].height == 2
    assert set(f.events.filter(pl.col("agent") == "billing")["version"]) == {"v1", "v2"}


def test_feedback_drift_narrows_tool_choice() -> None:
    sc = synth.Scenario.stable(feedback_drift=(synth.DriftSpec("planner", 10, 0.3),))
    f = synth.generate(days=24, runs_per_day=300, seed=2, scenario=sc)
    tools = f.events.filter((pl.col("agent") == "planner") & (pl.col("action") != "llm"))
    ent = (
        tools.group_by(pl.col("ts").dt.date().alias("d"), "action").len()
        .with_columns((pl.col("len") / pl.col("len").sum().over("d")).alias("p"))
        .group_by("d").agg((-(pl.col("p") * pl.col("p").log())).sum().alias("H")).sort("d")
    )
    assert ent["H"][-3:].mean() < ent["H"][:8].mean() - 0.3
    outc = f.events.filter((pl.col("agent") == "planner") & pl.col("outcome").is_not_null())
    early = outc.filter(pl.col("ts").dt.day() <= 10)
    late = outc.filter(pl.col("ts").dt.day() >= 20)
    assert late["outcome"].mean() < early["outcome"].mean() - 0.2
    assert late["feedback"].mean() > early["feedback"].mean() + 0.05


def test_load_dependent_errors() -> None:
    sc = synth.Scenario.stable(load=(synth.LoadSpec("support", threshold=8, every="1m", slope=0.6),))
    f = synth.generate(days=1, runs_per_day=40_000, seed=4, scenario=sc)
    rf = dw.run_features(f.events).filter(pl.col("agent") == "support")
    rf = rf.with_columns(pl.col("first_ts").dt.truncate("1m").alias("b"))
    rf = rf.with_columns(pl.len().over("b").alias("load"))
    low = rf.filter(pl.col("load") <= 5)
    high = rf.filter(pl.col("load") >= 12)
    assert low.height > 100 and high.height > 100
    assert high["n_errors"].sum() / high["n_tool"].sum() > 3 * low["n_errors"].sum() / low["n_tool"].sum()
    assert f.truth["load"]["threshold"].to_list() == [8.0]


def test_truth_runs_flags(fleet: synth.Fleet) -> None:
    runs = fleet.truth["runs"]
    assert runs["run_id"].is_unique().all()
    assert set(runs["run_id"]) == set(fleet.events["run_id"].unique())
    inj = runs.explode("injected")["injected"].drop_nulls()
    for flag in ("loop:exact", "loop:error_retry", "unapproved_destructive", "cost_spike", "low_confidence"):
        assert (inj == flag).sum() > 0, flag
    # unapproved destructive calls really lack approval
    unap = runs.filter(pl.col("injected").list.contains("unapproved_destructive"))["run_id"]
    calls = fleet.events.filter(pl.col("run_id").is_in(unap.implode()) & pl.col("action").str.starts_with("delete_"))
    assert calls.height >= unap.len()
    unapproved = calls.group_by("run_id").agg((pl.col("approved") != True).fill_null(True).any().alias("u"))  # noqa: E712
    assert unapproved["u"].all() and unapproved.height == unap.len()
    clean = runs.filter(pl.col("injected").list.len() == 0)
    assert not clean["needs_human"].any()
    spikes = runs.filter(pl.col("injected").list.contains("cost_spike"))["run_id"]
    rf = dw.run_features(fleet.events)
    spike_cost = rf.filter(pl.col("run_id").is_in(spikes.implode()))["cost_usd"]
    assert spike_cost.min() > 5 * np.median(rf["cost_usd"].to_numpy())


def test_llm_failures_fail_every_model_call_but_the_answer() -> None:
    """Runs with failing model calls: every LLM step but the last fails; the rest of the fleet is
    the fleet without them (the failures are drawn from a stream of their own)."""
    base = synth.generate(days=2, runs_per_day=120, seed=8, scenario=synth.Scenario.stable())
    f = synth.generate(days=2, runs_per_day=120, seed=8, scenario=synth.Scenario.stable(llm_failure_rate=0.1))
    hit = f.truth["runs"].filter(pl.col("injected").list.contains("llm_failures"))
    assert hit.height > 5 and hit["needs_human"].all()
    llm = f.events.filter(pl.col("run_id").is_in(hit["run_id"].implode()) & (pl.col("action") == "llm"))
    per_run = llm.sort("step").group_by("run_id").agg(pl.col("status"), pl.col("error_type").last())
    for status in per_run["status"].to_list():
        assert len(status) >= 6 and status[:-1] == ["error"] * (len(status) - 1) and status[-1] == "ok"
    assert per_run["error_type"].is_null().all()  # the final answer did not fail
    changed = ["status", "error_type", "result"]
    assert base.events.drop(changed).equals(f.events.drop(changed))
    others = ~pl.col("run_id").is_in(hit["run_id"].implode())
    assert base.events.filter(others).equals(f.events.filter(others))
    assert base.truth["runs"].drop("injected", "needs_human").equals(f.truth["runs"].drop("injected", "needs_human"))


def test_llm_retries_and_sampling_repeat_one_prompt() -> None:
    """Runs that send one prompt several times in a row: retries (the same unusable reply, or a
    failure, every time but the last) are loops in the truth, sampling is benign; steps stay
    contiguous and in time order, and the rest of the fleet is the fleet without them."""
    base = synth.generate(days=3, runs_per_day=150, seed=4)
    sc = synth.Scenario(llm_retry_rate=0.05, llm_sampling_rate=0.05)
    f = synth.generate(days=3, runs_per_day=150, seed=4, scenario=sc)
    loops = f.truth["loops"].filter(pl.col("pattern") == "llm")
    sampling = f.truth["benign"].filter(pl.col("kind") == "llm_sampling")
    assert set(loops["kind"]) == {"llm_exact", "llm_error_retry"} and sampling.height > 5
    assert (loops["end_step"] - loops["start_step"] + 1 == loops["repeats"]).all()
    assert loops["repeats"].min() >= 3 and loops["repeats"].max() <= 9
    labels = f.truth["runs"].explode("injected").filter(pl.col("injected").str.contains("llm_"))
    assert labels.filter(pl.col("injected").str.starts_with("loop:"))["needs_human"].all()
    assert not labels.filter(pl.col("injected") == "llm_sampling")["needs_human"].any()

    ev = f.events.sort("run_id", "step")
    for row in [*loops.iter_rows(named=True), *sampling.iter_rows(named=True)]:
        run = ev.filter(pl.col("run_id") == row["run_id"])
        last = row["end_step"] + (row["kind"] != "llm_sampling")  # and the original call after the retries
        calls = run.filter(pl.col("step").is_between(row["start_step"], last))
        assert (calls["action"] == "llm").all() and calls["args"].n_unique() == 1  # one prompt, in a row
        head = calls.head(calls.height - 1)  # the last call is the original one, and goes on
        if row["kind"] == "llm_exact":
            assert head["result"].n_unique() == 1 and (head["status"] == "ok").all()
        elif row["kind"] == "llm_error_retry":
            assert (head["status"] == "error").all() and calls["status"][-1] == "ok"
        else:
            assert calls["result"].n_unique() == calls.height
        assert calls["result"][-1].startswith("call ")
    steps = ev.group_by("run_id").agg(
        (pl.col("step").diff().drop_nulls() == 1).all().alias("contiguous"),
        (pl.col("ts").diff().drop_nulls() >= pl.duration(microseconds=0)).all().alias("in_time"),
    )
    assert steps["contiguous"].all() and steps["in_time"].all()
    touched = pl.concat([loops["run_id"], sampling["run_id"]]).implode()
    assert ev.filter(~pl.col("run_id").is_in(touched)).equals(
        base.events.sort("run_id", "step").filter(~pl.col("run_id").is_in(touched))
    )
    # the copies: every retry, and every sampled answer but the original one
    added = loops["repeats"].sum() + (sampling["end_step"] - sampling["start_step"]).sum()
    assert f.events.height == base.events.height + added


def test_llm_repeat_options_are_checked() -> None:
    for bad in (synth.Scenario(llm_retry_rate=1.5), synth.Scenario(llm_sampling_rate=-0.1),
                synth.Scenario(llm_retry_rate=0.6, llm_sampling_rate=0.6),
                synth.Scenario(llm_retry_rate=0.1, llm_retry_kinds={"exact": 1.0, "loop": 1.0})):
        with pytest.raises(InvalidParameterError, match="llm_"):
            synth.generate(days=1, runs_per_day=10, scenario=bad)


def test_stable_injects_nothing() -> None:
    f = synth.generate(days=3, runs_per_day=100, seed=0, scenario=synth.Scenario.stable())
    inj = set(f.truth["runs"].explode("injected")["injected"].drop_nulls())
    assert inj <= {"pagination", "polling"}
    assert f.truth["loops"].is_empty() and f.truth["changepoints"].is_empty()


def test_bad_parameters() -> None:
    with pytest.raises(InvalidParameterError, match="days"):
        synth.generate(days=0)
    with pytest.raises(InvalidParameterError, match="nobody"):
        synth.generate(days=2, scenario=synth.Scenario.stable(changepoints=(synth.ChangeSpec("nobody", 1, "error_rate", 2),)))


def test_a_fleet_replaces_an_earlier_fleet_and_refuses_other_folders(tmp_path) -> None:
    """Generating 2 days into a folder that held a 4-day fleet used to leave days 3-4 beside the
    new truth tables: a mixed fleet whose truth is wrong."""
    from driftwatch.errors import InvalidParameterError

    root = tmp_path / "fleet"
    synth.write_fleet(root, days=4, runs_per_day=5, seed=1)
    synth.write_fleet(root, days=2, runs_per_day=5, seed=2)
    assert sorted(p.name for p in (root / "events").iterdir()) == ["date=2026-10-01", "date=2026-10-02"]
    synth.generate(days=1, runs_per_day=5, seed=3).write(root)
    assert sorted(p.name for p in (root / "events").iterdir()) == ["date=2026-10-01"]
    (root / "notes.txt").write_text("mine")
    with pytest.raises(InvalidParameterError, match=r"not a fleet written by driftwatch \(notes.txt\)"):
        synth.write_fleet(root, days=1, runs_per_day=5)
    assert (root / "notes.txt").read_text() == "mine" and (root / "events").is_dir()
    with pytest.raises(InvalidParameterError, match="is not a folder"):
        synth.write_fleet(root / "notes.txt", days=1, runs_per_day=5)
    # a user's own events/ and truth/ (production logs, reviewers' labels) look like a fleet:
    # they were deleted; without the fleet's marker they are refused
    mine = tmp_path / "mine"
    (mine / "events" / "date=2025-01-01").mkdir(parents=True)
    (mine / "truth").mkdir()
    (mine / "events" / "date=2025-01-01" / "part-0.parquet").write_bytes(b"production")
    (mine / "truth" / "labels_from_reviewers.csv").write_text("run_id,needed_human\n")
    with pytest.raises(InvalidParameterError, match=r"not a fleet written by driftwatch \(events, truth\)"):
        synth.write_fleet(mine, days=1, runs_per_day=5)
    with pytest.raises(InvalidParameterError, match="not a fleet written by driftwatch"):
        synth.clear(mine)
    assert (mine / "events" / "date=2025-01-01" / "part-0.parquet").read_bytes() == b"production"
    assert (mine / "truth" / "labels_from_reviewers.csv").is_file()
    synth.clear(root)  # a fleet's own folder
    assert list(root.iterdir()) == [root / "notes.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_honour_the_umask(tmp_path, umask: int) -> None:
    """Every Parquet file of a fleet gets mode 0o666 less the umask, as any new file: they were
    0o600 (tempfile.mkstemp's), readable by their owner only."""
    old = os.umask(umask)
    try:
        synth.write_fleet(tmp_path / "f", days=1, runs_per_day=5)
        synth.generate(days=1, runs_per_day=5).write(tmp_path / "g")
    finally:
        os.umask(old)
    files = sorted((tmp_path / "f").rglob("*.parquet")) + sorted((tmp_path / "g").rglob("*.parquet"))
    assert len(files) > 4
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o666 & ~umask)}
    assert not [p for p in tmp_path.rglob(".tmp-*")]  # no temporary file left behind


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seed": -1}, r"seed \(--seed\) must be an integer in \[0, 2\*\*32\)"),
    ({"scenario": synth.Scenario(weekly_swing=1.5)}, r"weekly_swing must be in \[0, 1\)"),
    ({"scenario": synth.Scenario(loop_kinds={})}, "loop_kinds must weigh some of"),
    ({"scenario": synth.Scenario(loop_kinds={"bogus": 1.0})}, "loop_kinds must weigh some of"),
    ({"scenario": synth.Scenario(loop_rate=1.5)}, r"loop_rate must be a fraction of runs in \[0, 1\]"),
    ({"scenario": synth.Scenario(changepoints=(synth.ChangeSpec("billing", 3, "bogus", 2.0),))},  # type: ignore[arg-type]
     "ChangeSpec.metric must be"),
    ({"scenario": synth.Scenario(changepoints=(synth.ChangeSpec("billing", 3, "cost_per_run", -1.0),))},
     "ChangeSpec.factor must be a positive number"),
    ({"start": "1969-12-31"}, "must be in 1970 or later"),
])
def test_bad_parameters_are_refused_by_name(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    """They raised numpy's ValueError, or wrote a fleet with NaN truth, negative costs or
    timestamps every reader rejects."""
    from driftwatch.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=message):
        synth.generate(days=2, runs_per_day=5, **kwargs)


def _destructive_or_missing_tool_runs(f: synth.Fleet) -> pl.DataFrame:
    """Truth rows of the runs given an unapproved destructive call or a missing tool."""
    injected = pl.col("injected").list
    return f.truth["runs"].filter(injected.contains("unapproved_destructive") | injected.contains("unknown_tool"))


def test_injected_calls_never_replace_a_loops_call() -> None:
    """An unapproved destructive call replaces a run's last tool call and a missing tool its
    first: in a looping run with no call after (before) the loop, the truth table described a
    loop one call longer than the events held (a probe's seed 1, run r0002-000060)."""
    sc = synth.Scenario(loop_rate=0.4, unapproved_rate=0.3, unknown_tool_rate=0.3)
    for seed in (1, 2):
        f = synth.generate(days=2, runs_per_day=200, seed=seed, scenario=sc)
        loops = f.truth["loops"]
        flagged = _destructive_or_missing_tool_runs(f)
        assert loops.join(flagged, on="run_id").height > 20  # the case is exercised
        calls = f.events.filter(pl.col("action") != "llm").join(loops, on="run_id").filter(
            pl.col("step").is_between(pl.col("start_step"), pl.col("end_step")))
        # every call inside a loop's extent is one of its pattern's actions
        inside = calls.with_columns(pl.col("pattern").str.split(" > ").list.contains(pl.col("action")).alias("ok"))
        assert inside["ok"].all(), inside.filter(~pl.col("ok")).select("run_id", "step", "action", "pattern").head()


def test_strong_or_long_feedback_drift_keeps_valid_probabilities() -> None:
    """Habit reinforcement p ** (1 + strength * days) underflowed to 0 / 0 after a few thousand
    days (generate --days 3000) or a strong drift: 'Probabilities contain NaN'."""
    sc = synth.Scenario.stable(feedback_drift=(synth.DriftSpec("planner", 0, 400.0),))
    f = synth.generate(days=3, runs_per_day=40, seed=1, scenario=sc)
    tools = f.events.filter((pl.col("agent") == "planner") & (pl.col("action") != "llm") & (pl.col("ts").dt.day() >= 2))
    assert tools["action"].n_unique() <= 2  # (the favourite, and rare destructive calls)


def test_injected_calls_never_replace_a_page_or_poll() -> None:
    """An unapproved destructive call replaces a run's last tool call and a missing tool its
    first: in a paginating or polling run with no call after (before) the segment, the benign
    truth described pages or polls the events lacked (the last poll, "done", never happened;
    a probe's seed 0, run r0000-000041)."""
    sc = synth.Scenario(loop_rate=0.0, pagination_rate=0.45, polling_rate=0.45, unapproved_rate=0.3,
                        unknown_tool_rate=0.3)
    for seed in (1, 2):
        f = synth.generate(days=2, runs_per_day=200, seed=seed, scenario=sc)
        benign = f.truth["benign"]
        flagged = _destructive_or_missing_tool_runs(f)
        assert benign.join(flagged, on="run_id").height > 50  # the case is exercised
        calls = f.events.filter(pl.col("action") != "llm").join(benign, on="run_id", suffix="_t").filter(
            pl.col("step").is_between(pl.col("start_step"), pl.col("end_step")))
        # every step of a segment is there and calls the stated action
        per = calls.group_by("run_id").agg(pl.len().alias("n"), (pl.col("action") == pl.col("action_t")).all().alias("ok"),
                                           pl.col("start_step").first(), pl.col("end_step").first(),
                                           pl.col("result").sort_by("step").last(), pl.col("kind").first())
        assert per.height == benign.height
        assert (per["ok"] & (per["n"] == (per["end_step"] - per["start_step"] + 1) // 2)).all()
        assert per.filter(pl.col("kind") == "polling")["result"].str.contains('"done"').all()  # the job finished
        assert (per["end_step"] - per["start_step"] + 1 >= 6).all()  # 3 pages or polls at least
        # and the injected calls are still there: the first call fails, the last deletes
        unk = f.truth["runs"].filter(pl.col("injected").list.contains("unknown_tool"))["run_id"]
        first = f.events.filter(pl.col("run_id").is_in(unk.implode()) & (pl.col("step") == 2))
        assert (first["action"] == "lookup_order_history").all() and first.height == unk.len()


def test_the_only_low_confidence_steps_are_the_injected_ones() -> None:
    """Background confidence was Beta(9, 2), unbounded: about 1 LLM step in 7,000 fell below the
    default policy's 0.30, so Scenario.stable() ("nothing to find") put runs at review and the
    demo fleet held low-confidence runs its truth did not record."""
    for scenario in (synth.Scenario.stable(), synth.Scenario(low_confidence_rate=0.01)):
        f = synth.generate(days=4, runs_per_day=2500, seed=2, scenario=scenario)
        low = f.truth["runs"].filter(pl.col("injected").list.contains("low_confidence"))["run_id"]
        conf = f.events.filter(pl.col("confidence").is_not_null()).group_by("run_id").agg(
            pl.col("confidence").min(), pl.len().alias("n"))
        assert conf["n"].sum() > 50_000
        injected = conf.filter(pl.col("run_id").is_in(low.implode()))
        assert injected.height == low.len() and (injected["confidence"] < 0.3).all()
        assert conf.filter(~pl.col("run_id").is_in(low.implode()))["confidence"].min() >= 0.35
        breaches = dw.check_policy(f.events, dw.Policy()).filter(pl.col("rule") == "low_confidence")
        assert set(breaches["run_id"]) == set(low)


def test_llm_repeats_with_over_a_million_runs_in_a_day() -> None:
    """Run ids are zero-padded to 6 digits: with more than 999,999 runs in a day they do not sort
    as the run numbers do ("r0000-1000000" < "r0000-999999"), and the LLM retry / sampling copies
    went to the wrong runs: duplicate steps, step gaps and a truth that disagreed with the events."""
    n = 1_000_060
    plain = np.zeros(n, dtype=bool)
    plain[n - 120:] = True  # runs 999,940 .. 1,000,059: both sides of the 7th digit
    k = np.ones(n, dtype=np.int64)
    mine = np.arange(n - 120, n)
    rid = pl.select(pl.format("r0000-{}", pl.lit(pl.Series(mine)).cast(pl.String).str.zfill(6))).to_series()
    ev = pl.DataFrame({"run_id": rid.gather(np.repeat(np.arange(mine.size), 3)), "step": np.tile([1, 2, 3], mine.size)})
    ev = ev.with_columns(
        (pl.lit(datetime(2026, 10, 1, tzinfo=UTC)) + pl.duration(seconds=pl.col("step"))).alias("ts"),
        pl.when(pl.col("step") == 2).then(pl.lit("search")).otherwise(pl.lit("llm")).alias("action"),
        pl.lit("a").alias("agent"), pl.format("prompt {} {}", pl.col("run_id"), pl.col("step")).alias("args"),
        pl.lit("call search").alias("result"), pl.lit("ok").alias("status"), pl.lit(500.0).alias("latency_ms"),
        pl.lit(0.01).alias("cost_usd"), pl.lit(10).alias("output_tokens"),
    )
    ev = ev.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in CANONICAL_SCHEMA.items() if c not in ev.columns])
    ev = ev.select(list(CANONICAL_SCHEMA)).cast(CANONICAL_SCHEMA)  # type: ignore[arg-type]
    sc = synth.Scenario(llm_retry_rate=0.5, llm_sampling_rate=0.5)
    out, rep = synth._repeat_llm_calls(ev, np.random.default_rng([0, 0, 2]), 0, plain, k, sc)
    truth = pl.concat([rep.loops.select("run_id", (pl.col("repeats") + 3).alias("expect")),
                       rep.benign.select("run_id", (pl.col("end_step") - pl.col("start_step") + 3).alias("expect"))])
    assert truth.height == 120 and truth["run_id"].str.len_chars().n_unique() == 2
    per = out.group_by("run_id").agg(pl.len().alias("n"), pl.col("step").n_unique().alias("u"),
                                     pl.col("step").max().alias("mx")).join(truth, on="run_id")
    assert per.height == 120
    bad = per.filter((pl.col("n") != pl.col("expect")) | (pl.col("u") != pl.col("n")) | (pl.col("mx") != pl.col("n")))
    assert bad.is_empty(), bad


def test_changepoint_truth_is_the_expected_value_of_the_events() -> None:
    """The factor multiplies the mean number of tool calls k (1 + Poisson(k - 1)), not the
    2k + 1 steps: with factor 3 the truth said 9 -> 27 steps where the events had 9 -> 25. An
    error rate multiplied past 1 is 1, and a second change of the same metric starts from the
    first one's after."""
    sc = synth.Scenario.stable(pagination_rate=0.0, polling_rate=0.0, delegation_rate=0.0, changepoints=(
        synth.ChangeSpec("billing", 3, "steps_per_run", 3.0), synth.ChangeSpec("billing", 6, "steps_per_run", 0.05),
        synth.ChangeSpec("support", 4, "error_rate", 60.0)))
    f = synth.generate(days=9, runs_per_day=1200, seed=3, scenario=sc)
    truth = f.truth["changepoints"].sort("agent", "day")
    assert truth.select("before", "after").rows() == [
        (pytest.approx(9.0), pytest.approx(25.0)), (pytest.approx(25.0), pytest.approx(3.2)),
        (pytest.approx(0.02), pytest.approx(1.0))]
    runs = f.events.group_by("run_id").agg(
        pl.col("agent").first(), pl.col("ts").min().dt.day().alias("day"), pl.len().alias("steps"),
        (pl.col("status") == "error").filter(pl.col("action") != "llm").mean().alias("err"))
    day0 = f.events["ts"].min().day
    for row in truth.iter_rows(named=True):
        col = "steps" if row["metric"] == "steps_per_run" else "err"
        mine = runs.filter(pl.col("agent") == row["agent"])
        same = truth.filter((pl.col("agent") == row["agent"]) & (pl.col("metric") == row["metric"]))
        days = [0, *same["day"], 99]
        i = days.index(row["day"])  # the days of this agent's changes: before is since the previous one
        before = mine.filter(pl.col("day").is_between(day0 + days[i - 1], day0 + row["day"] - 1))[col].mean()
        after = mine.filter(pl.col("day").is_between(day0 + row["day"], day0 + days[i + 1] - 1))[col].mean()
        if col == "steps":
            assert before == pytest.approx(row["before"], rel=0.04) and after == pytest.approx(row["after"], rel=0.04)
        else:
            assert before == pytest.approx(row["before"], abs=0.006) and after == row["after"]


_A = synth.AgentSpec


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"start": None}, r"start \(--start\) must be a date: an ISO-8601 string .* got None"),
    ({"start": 5}, r"start \(--start\) must be a date: .* got 5"),
    ({"start": datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=5)))}, r"start \(--start\) must be a day from 1970"),
    ({"days": True}, r"days must be a positive integer, got True"),
    ({"days": 2.0}, r"days must be a positive integer, got 2.0"),
    ({"runs_per_day": np.bool_(True)}, r"runs_per_day must be a positive integer"),
    ({"scenario": synth.Scenario.stable(agents=(_A("a", {"t": 1}), _A("b", {"t": 1}, weight=-1)))},
     r"AgentSpec 'b': weight \(a share of the traffic\) must be a number >= 0, got -1"),
    ({"scenario": synth.Scenario.stable(agents=(_A("a", {"t": 1}, weight=0),))}, "some agent must have a positive weight"),
    ({"scenario": synth.Scenario.stable(agents=(_A("a", {}),))}, r"AgentSpec 'a': tools must give a positive weight"),
    ({"scenario": synth.Scenario.stable(agents=(_A("a", {"t": 0}),))}, r"AgentSpec 'a': tools must give a positive weight"),
    ({"scenario": synth.Scenario.stable(agents=(_A("a", {"rm": 1}, destructive=("rm",)),))},
     "at least one tool that is not destructive"),
    ({"scenario": synth.Scenario.stable(agents=(_A("a", {"t": -1.0, "u": 2}),))}, r"the weight of tool 't' must be a number >= 0"),
    ({"scenario": synth.Scenario.stable(agents=(_A("a", {"t": 1}, mean_tool_calls=float("nan")),))},
     r"AgentSpec 'a': mean_tool_calls must be a number in \(0, 10000\], got nan"),
    ({"scenario": synth.Scenario.stable(agents=(_A("a", {"t": 1}, error_rate=2.0),))}, r"error_rate must be a number in \[0, 1\]"),
    ({"scenario": synth.Scenario.stable(agents=(_A("a", {"t": 1}, price_in=float("inf")),))}, "price_in"),
    ({"scenario": synth.Scenario.stable(agents=("planner",))}, r"scenario.agents\[0\] must be an AgentSpec"),  # type: ignore[arg-type]
    ({"scenario": synth.Scenario(delegation_chains_per_day=5, delegation_chain_depth=-1)},
     r"delegation_chain_depth \(runs per chain\) must be a positive integer, got -1"),
    ({"scenario": synth.Scenario(delegation_chains_per_day=float("inf"))},
     r"delegation_chains_per_day must be a number in \[0, 10000\]"),
    # (a day's chains are built in memory: 1e9 chains a day ended in a MemoryError)
    ({"scenario": synth.Scenario(delegation_chains_per_day=1e9)}, r"delegation_chains_per_day must be a number in"),
    ({"scenario": synth.Scenario(delegation_chains_per_day=1, delegation_chain_depth=10**7)},
     r"delegation_chain_depth \(runs per chain\) must be at most 1,000, got 10000000"),
    ({"scenario": synth.Scenario(changepoints=(synth.ChangeSpec("billing", 1.5, "error_rate", 2.0),))},  # type: ignore[arg-type]
     r"ChangeSpec.day \(days after start\) must be an integer >= 0, got 1.5"),
    ({"scenario": synth.Scenario(changepoints=(synth.ChangeSpec("billing", 1, "error_rate", float("inf")),))},
     "ChangeSpec.factor must be a positive number, got inf"),
    ({"scenario": synth.Scenario(changepoints=(synth.ChangeSpec("billing", 1, "steps_per_run", 1e30),))},
     "steps_per_run changes of 'billing' make its mean_tool_calls"),
    ({"scenario": synth.Scenario(feedback_drift=(synth.DriftSpec("planner", -2),))}, "DriftSpec.onset_day"),
    ({"scenario": synth.Scenario(load=(synth.LoadSpec("billing", 0),))}, r"LoadSpec.threshold .* must be a positive number"),
    ({"scenario": synth.Scenario(load=(synth.LoadSpec("billing", 3, every="soon"),))}, "LoadSpec.every"),
    ({"scenario": synth.Scenario(diurnal="no")}, "scenario.diurnal must be True or False"),  # type: ignore[arg-type]
])
def test_bad_values_are_refused_by_name_up_front(tmp_path, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    """They raised AttributeError ('NoneType' object has no attribute 'year'), numpy's
    ValueError ('Probabilities contain NaN', 'lam value too large', 'negative dimensions are not
    allowed') or OverflowError, or were taken (days=True as 1 day, a change-point on day 1.5);
    a bad LoadSpec.every was found only when its first day was written."""
    with pytest.raises(InvalidParameterError, match=message):
        synth.generate(**{"days": 2, "runs_per_day": 5, **kwargs})
    with pytest.raises(InvalidParameterError, match=message):
        synth.write_fleet(tmp_path / "f", **{"days": 2, "runs_per_day": 5, **kwargs})
    assert not (tmp_path / "f").exists()


def test_numpy_integers_are_integers() -> None:
    """days=np.int64(2) was refused as not an integer while seed=np.int64(...) was taken."""
    f = synth.generate(days=np.int64(2), runs_per_day=np.int32(20), seed=np.int64(1), start=date(2026, 10, 1))
    assert f.events.equals(synth.generate(days=2, runs_per_day=20, seed=1).events)
    sc = synth.Scenario(changepoints=(synth.ChangeSpec("billing", np.int64(1), "steps_per_run", np.float32(2.0)),))
    assert synth.generate(days=2, runs_per_day=20, seed=1, scenario=sc).truth["changepoints"]["day"].to_list() == [1]


def test_a_fleet_must_end_before_year_10000(tmp_path) -> None:
    """generate --start 9999-12-28 --days 10 failed with 'unexpected error: OverflowError' after
    writing some days, leaving a fleet without truth tables."""
    from driftwatch.cli import main

    for start, days in (("9999-12-28", 10), ("9999-12-30", 3), ("9999-12-31", 1), ("2026-10-01", 10**12)):
        with pytest.raises(InvalidParameterError, match=r"start \(--start\) .* and days \(--days\) .*: the last day"):
            synth.generate(days=days, runs_per_day=5, start=start)
        with pytest.raises(InvalidParameterError, match="the last day must be 9999-12-30 or earlier"):
            synth.write_fleet(tmp_path / "f", days=days, runs_per_day=5, start=start)
        assert not (tmp_path / "f").exists()
    out, err = io.StringIO(), io.StringIO()
    code = main(["generate", str(tmp_path / "late"), "--start", "9999-12-28", "--days", "10", "--runs-per-day", "5"],
                stdout=out, stderr=err)
    assert code == 2 and "at most 3 day(s) from that start" in err.getvalue() and "OverflowError" not in err.getvalue()
    assert not (tmp_path / "late").exists()
    # the last day that fits: its runs end on 9999-12-31 at the latest
    f = synth.generate(days=3, runs_per_day=40, start="9999-12-28", seed=1)
    assert f.events["ts"].max().year == 9999 and f.truth["runs"].height > 60


def test_delegation_chains_take_their_agents_version() -> None:
    """Delegation-chain runs kept version v1 after their agent's change-point moved it to v2."""
    sc = synth.Scenario.stable(delegation_chains_per_day=4.0, changepoints=(
        synth.ChangeSpec("billing", 2, "error_rate", 2.0), synth.ChangeSpec("support", 2, "steps_per_run", 1.2)))
    f = synth.generate(days=4, runs_per_day=40, seed=5, scenario=sc)
    runs = f.events.group_by("run_id").agg(pl.col("agent").first(), pl.col("ts").min(), pl.col("version").unique())
    runs = runs.with_columns(
        pl.when(pl.col("agent").is_in(["billing", "support"]) & (pl.col("ts") >= datetime(2026, 10, 3, tzinfo=UTC)))
        .then(pl.lit("v2")).otherwise(pl.lit("v1")).alias("expect"))
    chains = runs.filter(pl.col("run_id").is_in(f.truth["delegation"]["run_id"].implode()))
    assert chains.height > 20 and set(chains["expect"]) == {"v1", "v2"}
    assert (runs["version"].list.len() == 1).all()
    assert (runs["version"].list.first() == runs["expect"]).all()
