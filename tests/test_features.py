"""Per-run features (driftwatch/features.py): known answers, order invariance, the shared-sort path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import driftwatch as dw
from driftwatch import features as F

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _events() -> pl.DataFrame:
    rows = [
        # run a: llm, search(error), search(retry, ok), llm, read
        ("a", 1, "llm", "ok", 10, 5, 0.01),
        ("a", 2, "search", "error", 0, 0, 0.002),
        ("a", 3, "search", "ok", 0, 0, 0.002),
        ("a", 4, "llm", "ok", 20, 5, 0.02),
        ("a", 5, "read", "ok", 0, 0, 0.001),
        # run b: read, read, llm
        ("b", 1, "read", "ok", 0, 0, 0.001),
        ("b", 2, "read", "ok", 0, 0, 0.001),
        ("b", 3, "llm", "ok", 7, 3, 0.005),
    ]
    return pl.DataFrame(
        rows,
        schema=["run_id", "step", "action", "status", "input_tokens", "output_tokens", "cost_usd"],
        orient="row",
    ).with_columns(
        pl.lit("agent-x").alias("agent"),
        (pl.lit(T0) + pl.duration(seconds=pl.col("step"))).alias("ts"),
    )


def test_features_known_answers() -> None:
    f = dw.run_features(_events())
    a, b = f.row(0, named=True), f.row(1, named=True)
    assert (a["run_id"], b["run_id"]) == ("a", "b")
    assert (a["n_steps"], a["n_llm"], a["n_tool"], a["n_errors"]) == (5, 2, 3, 1)
    assert a["n_tool_errors"] == 1 and b["n_tool_errors"] == 0
    assert a["n_distinct_actions"] == 2 and b["n_distinct_actions"] == 1
    assert a["n_retries"] == 1 and a["retry_cost_usd"] == pytest.approx(0.002)
    assert b["n_retries"] == 0
    assert a["tokens"] == 40 and a["cost_usd"] == pytest.approx(0.035)
    assert a["error_rate"] == pytest.approx(0.2) and b["llm_ratio"] == pytest.approx(1 / 3)
    assert a["runtime_s"] == pytest.approx(4.0)


def test_sums_nobody_recorded_are_null_not_zero() -> None:
    """A run none of whose steps recorded a cost (tokens, latency) has an unknown cost, not $0;
    one recorded value makes it known (the other steps add nothing)."""
    ev = _events().with_columns(
        pl.when(pl.col("run_id") == "b").then(None).otherwise(pl.col("cost_usd")).alias("cost_usd"),
        pl.when(pl.col("run_id") == "b").then(None).otherwise(pl.col("input_tokens")).alias("input_tokens"),
        pl.when((pl.col("run_id") == "a") & (pl.col("step") != 4)).then(None).otherwise(pl.col("output_tokens"))
        .alias("output_tokens"),
    )
    a, b = dw.run_features(ev).rows(named=True)
    assert a["cost_usd"] == pytest.approx(0.035) and a["error_cost_usd"] == pytest.approx(0.002)
    assert a["retry_cost_usd"] == pytest.approx(0.002)
    assert (a["input_tokens"], a["output_tokens"], a["tokens"]) == (30, 5, 35)
    assert b["cost_usd"] is None and b["error_cost_usd"] is None and b["retry_cost_usd"] is None
    assert (b["input_tokens"], b["output_tokens"], b["tokens"]) == (None, 3, 3)  # one count known: tokens known
    bare = dw.run_features(pl.DataFrame({"run_id": ["r", "r"], "step": [1, 2], "action": ["llm", "x"]}))
    assert bare.select("cost_usd", "tokens", "latency_ms", "error_cost_usd", "retry_cost_usd").row(0) == (None,) * 5
    assert bare["n_retries"].item() == 0  # counts are never unknown


def test_failed_llm_calls_are_not_tool_errors() -> None:
    ev = _events().with_columns(
        pl.when(pl.col("action") == "llm").then(pl.lit("error")).otherwise(pl.col("status")).alias("status")
    )
    f = dw.run_features(ev)
    assert f.select("n_errors", "n_tool_errors").rows() == [(3, 1), (1, 0)]


def test_action_and_bigram_counts_known_answers() -> None:
    ev = _events()
    ac = dw.run_action_counts(ev)
    assert ac.select("run_id", "action", "n").rows() == [
        ("a", "llm", 2), ("a", "read", 1), ("a", "search", 2), ("b", "llm", 1), ("b", "read", 2),
    ]
    bg = dw.run_bigram_counts(ev)  # LLM steps skipped: a = search, search, read; b = read, read
    assert bg.select("run_id", "bigram", "n").rows() == [
        ("a", "search > read", 1), ("a", "search > search", 1), ("b", "read > read", 1),
    ]


@pytest.fixture(scope="module")
def fleet_events() -> pl.DataFrame:
    return dw.synth.generate(days=3, runs_per_day=60, seed=4).events


def test_run_tables_equals_the_three_functions(fleet_events: pl.DataFrame) -> None:
    feats, actions, bigrams = F.run_tables(fleet_events)
    assert feats.equals(dw.run_features(fleet_events))
    assert actions.equals(dw.run_action_counts(fleet_events))
    assert bigrams.equals(dw.run_bigram_counts(fleet_events))
    assert feats.height == fleet_events["run_id"].n_unique()
    assert actions["n"].sum() == fleet_events.height


@pytest.mark.parametrize("order", ["shuffled", "reversed", "split_runs"])
def test_tables_do_not_depend_on_row_order(fleet_events: pl.DataFrame, order: str) -> None:
    if order == "shuffled":
        ev = fleet_events.sample(fraction=1.0, shuffle=True, seed=3)
    elif order == "reversed":
        ev = fleet_events.reverse()
    else:  # every run split in two blocks far apart (a run crossing two day files)
        half = pl.col("step") <= pl.col("step").max().over("run_id") // 2
        ev = pl.concat([fleet_events.filter(half), fleet_events.filter(~half)])
    for got, want in zip(F.run_tables(ev), F.run_tables(fleet_events), strict=True):
        assert got.equals(want)


def test_lazy_input_and_chunks_agree(fleet_events: pl.DataFrame) -> None:
    whole = dw.run_features(fleet_events.lazy())
    odd = pl.col("run_id").hash(seed=1) % 2 == 1
    parts = pl.concat([dw.run_features(fleet_events.filter(odd)), dw.run_features(fleet_events.filter(~odd))])
    assert parts.sort("run_id").equals(whole)


def test_sorted_steps_moves_only_misplaced_runs() -> None:
    ev = _events()
    # run b's last step logged first: b is moved to the end, sorted by step; a stays in place
    swapped = pl.concat([ev.filter((pl.col("run_id") == "b") & (pl.col("step") == 3)), ev.filter(
        ~((pl.col("run_id") == "b") & (pl.col("step") == 3)))])
    st = F.sorted_steps(swapped)
    assert st.select("run_id", "step").rows() == [("a", i) for i in range(1, 6)] + [("b", i) for i in range(1, 4)]
    assert st["_run"].to_list() == [1] * 5 + [2] * 3
    assert (st["ts"].diff().drop_nulls() > timedelta(0)).sum() >= 6


def test_counts_keep_null_actions_per_run() -> None:
    """A null action (possible in frames not read by read_logs) is its own category in each run."""
    ev = pl.DataFrame({"run_id": ["a", "a", "a", "b", "b"], "step": [1, 2, 3, 1, 2],
                       "action": [None, "x", None, None, "x"], "agent": ["g"] * 5})
    ac = dw.run_action_counts(ev)
    assert ac.select("run_id", "action", "n").sort("run_id", "action", nulls_last=True).rows() == [
        ("a", "x", 1), ("a", None, 2), ("b", "x", 1), ("b", None, 1),
    ]
    # a null action is not a tool call: the tool sequences are "x" and "x", without pairs
    assert dw.run_bigram_counts(ev).height == 0


@pytest.mark.parametrize("shuffle", [False, True])
def test_compact_count_tables_equal_the_audits_form(fleet_events: pl.DataFrame, shuffle: bool) -> None:
    """``run_tables(compact=True)`` builds the count tables straight in the audit's compact form
    (Categorical labels, UInt32 counts, no agent, canonical order): the same as converting
    the documented tables, also when runs are out of order and actions are missing."""
    from driftwatch.audit import canonical_order, compact_counts

    ev = fleet_events.with_columns(
        pl.when(pl.int_range(pl.len()) % 97 == 5).then(None).otherwise(pl.col("action")).alias("action")
    )
    if shuffle:
        ev = ev.sample(fraction=1.0, seed=4)
    feats, actions, bigrams = F.run_tables(ev, compact=True)
    want = F.run_tables(ev)
    assert feats.equals(want[0])
    assert actions["action"].null_count() > 0
    assert_frame_equal(actions, canonical_order("action_counts", compact_counts(want[1], "action")))
    assert_frame_equal(bigrams, canonical_order("bigram_counts", compact_counts(want[2], "bigram")))


def test_run_features_carry_series_columns_that_are_not_features() -> None:
    """by= columns of the events (a tenant) come with the run: its first non-null value in step
    order. dw.load_curve / dw.cost_profile / dw.detect_drift(by="tenant") refused such a column
    (only detect_changepoints carried it)."""
    ev = pl.DataFrame({"run_id": ["a", "a", "a", "b"], "step": [3, 1, 2, 1], "action": ["x", "y", "z", "x"],
                       "tenant": ["late", None, "early", None], "region": ["eu", "eu", "eu", "us"]})
    got = dw.run_features(ev, by=("agent", "tenant", "region"))
    assert got.select("run_id", "tenant", "region").rows() == [("a", "early", "eu"), ("b", None, "us")]
    assert dw.run_features(ev, by="agent").columns == dw.run_features(ev).columns
    with pytest.raises(dw.SchemaError, match=r"by: column\(s\) \['nope'\] not in events"):
        dw.run_features(ev.lazy(), by="nope")


def test_runtime_does_not_depend_on_row_order() -> None:
    """The runtime's division by 1e6 gave 12.737602 or 12.737601999999999 for the same run, as
    Polars split the column: per-run floats are rounded to 12 significant digits."""
    starts = [T0 + timedelta(seconds=i, microseconds=83_466) for i in range(5_000)]
    ev = pl.DataFrame({
        "run_id": [f"r{i:05d}" for i in range(5_000)] * 2,
        "step": [1] * 5_000 + [2] * 5_000,
        "ts": starts + [s + timedelta(microseconds=12_737_602 + 17 * i) for i, s in enumerate(starts)],
        "action": ["llm"] * 10_000,
    })
    want = F.run_features(ev)
    assert want.filter(pl.col("run_id") == "r00000")["runtime_s"].item() == 12.737602
    for seed in range(3):
        assert_frame_equal(F.run_features(ev.sample(fraction=1.0, shuffle=True, seed=seed)), want)
