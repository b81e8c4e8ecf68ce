"""Loop detection: hand-built cases, known-answer tests on generated fleets, a hypothesis property."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import driftwatch as dw
from driftwatch import synth
from driftwatch._signatures import _affine_params, minhash, near_duplicates, normalize, normalize_expr
from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.features import run_features
from driftwatch.loops import (
    DELEGATION_SCHEMA,
    LOOP_SCHEMA,
    SUMMARY_SCHEMA,
    detect_delegation_cycles,
    detect_loops,
    loop_summary,
    periodic_segments,
)

CONTRACT = ["run_id", "agent", "start_step", "end_step", "period", "repeats", "pattern", "kind",
            "wasted_steps", "wasted_tokens", "wasted_cost_usd"]


def events(*runs: tuple[str, list[tuple]], llm_between: bool = False) -> pl.DataFrame:
    """Events from ``(run_id, [(action, args, result, status), ...])``; tuples may be shorter.

    With ``llm_between`` an LLM step with a growing, never-repeating prompt precedes every tool step.
    """
    rows = []
    for run_id, calls in runs:
        step = 0
        for n, call in enumerate(calls):
            action, args, result, status = (*call, None, None, None)[:4]
            if llm_between:
                step += 1
                rows.append({"run_id": run_id, "step": step, "action": "llm",
                             "args": f"prompt turn {n}: " + "context " * n, "result": f"call {action}",
                             "status": "ok", "input_tokens": 100 * (n + 1), "output_tokens": 10,
                             "cost_usd": 0.01})
            step += 1
            rows.append({"run_id": run_id, "step": step, "action": action, "args": args, "result": result,
                         "status": status or "ok", "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.001})
    return pl.DataFrame(rows, schema={"run_id": pl.String, "step": pl.Int64, "action": pl.String,
                                      "args": pl.String, "result": pl.String, "status": pl.String,
                                      "input_tokens": pl.Int64, "output_tokens": pl.Int64,
                                      "cost_usd": pl.Float64})


def same(action: str, n: int, args: str = "q", result: str = "r") -> list[tuple]:
    return [(action, args, result)] * n


# ---------------------------------------------------------------------------------------------
# hand-built cases
# ---------------------------------------------------------------------------------------------


def test_contract_columns_and_dtypes() -> None:
    out = detect_loops(events(("r1", same("search", 3))))
    assert out.columns[: len(CONTRACT)] == CONTRACT
    assert out.schema == pl.Schema(LOOP_SCHEMA)
    assert set(out["kind"]) <= {"exact", "same_action", "error_retry"}


def test_a_a_a_is_an_exact_loop_of_period_1() -> None:
    out = detect_loops(events(("r1", [("plan", "x", "y"), *same("search", 3), ("answer", "a", "b")])))
    assert out.select("start_step", "end_step", "period", "repeats", "pattern", "kind", "match").to_dicts() == [
        {"start_step": 2, "end_step": 4, "period": 1, "repeats": 3, "pattern": "search", "kind": "exact",
         "match": "identical"}
    ]


def test_a_b_a_b_a_b_has_period_2_not_4_or_6() -> None:
    cyc = [("search", "q", "r1"), ("read", "u", "r2")]
    out = detect_loops(events(("r1", cyc * 4)))
    assert out.height == 1
    row = out.row(0, named=True)
    assert (row["period"], row["repeats"], row["pattern"], row["kind"]) == (2, 4, "search > read", "exact")
    assert (row["start_step"], row["end_step"]) == (1, 8)
    assert row["wasted_steps"] == 6


def test_long_self_loop_collapses_to_one_row_of_minimal_period() -> None:
    out = detect_loops(events(("r1", same("poll", 12))), max_period=8)
    assert out.select("period", "repeats").to_dicts() == [{"period": 1, "repeats": 12}]


def test_llm_steps_between_tool_calls_do_not_hide_the_loop() -> None:
    ev = events(("r1", [("plan", "p", "ok"), *same("search", 4, "weather paris", "no results")]), llm_between=True)
    out = detect_loops(ev)
    assert out.height == 1
    row = out.row(0, named=True)
    # steps: 1 llm, 2 plan, 3 llm, 4 search, 5 llm, 6 search, ... 10 search
    assert (row["start_step"], row["end_step"], row["period"], row["repeats"]) == (3, 10, 1, 4)
    assert row["kind"] == "exact" and row["pattern"] == "search"
    assert row["cycle_steps"] == 2 and row["n_steps"] == 8
    # waste: steps 5..10 (3 LLM + 3 search), LLM prompts of turns 2..4
    assert row["wasted_steps"] == 6
    assert row["wasted_tokens"] == (300 + 10) + (400 + 10) + (500 + 10)
    assert row["wasted_cost_usd"] == pytest.approx(3 * 0.01 + 3 * 0.001)
    assert row["run_steps"] == 10


def test_handoff_ping_pong_is_a_loop_flagged_as_handoff() -> None:
    cyc = [("handoff:billing", '{"task": "t1"}', None), ("handoff:triage", '{"task": "t1"}', None)]
    out = detect_loops(events(("r1", cyc * 3), llm_between=True))
    row = out.row(0, named=True)
    assert row["pattern"] == "handoff:billing > handoff:triage"
    assert row["handoff"] is True and row["kind"] == "exact" and row["repeats"] == 3


def test_two_loops_in_one_run() -> None:
    calls = [*same("search", 4, "q1", "none"), ("plan", "p", "ok"), *[("fetch", "u", "404", "error")] * 3]
    out = detect_loops(events(("r1", calls)))
    assert out.select("start_step", "end_step", "pattern", "kind").to_dicts() == [
        {"start_step": 1, "end_step": 4, "pattern": "search", "kind": "exact"},
        {"start_step": 6, "end_step": 8, "pattern": "fetch", "kind": "error_retry"},
    ]


def test_same_tool_with_new_arguments_then_stuck_gives_two_exact_loops() -> None:
    out = detect_loops(events(("r1", same("search", 3, "q1", "a") + same("search", 3, "q2", "b"))))
    assert out.select("start_step", "end_step", "kind").to_dicts() == [
        {"start_step": 1, "end_step": 3, "kind": "exact"},
        {"start_step": 4, "end_step": 6, "kind": "exact"},
    ]


def test_nested_short_loops_inside_a_longer_cycle_are_one_loop() -> None:
    cyc = [*same("search", 3), ("read", "u", "text")]
    out = detect_loops(events(("r1", cyc * 3)))
    assert out.select("period", "repeats", "pattern").to_dicts() == [
        {"period": 4, "repeats": 3, "pattern": "search > search > search > read"}
    ]


def test_below_min_repeats_is_not_a_loop() -> None:
    ab = [("a", "1", "1"), ("b", "2", "2")]
    assert detect_loops(events(("r1", ab * 2 + [ab[0]]))).height == 0
    assert detect_loops(events(("r1", same("a", 2)))).height == 0
    assert detect_loops(events(("r1", ab * 2)), min_repeats=2).height == 1


def test_runs_do_not_bleed_into_each_other() -> None:
    out = detect_loops(events(("r1", same("search", 2)), ("r2", same("search", 2))))
    assert out.height == 0


def test_pagination_and_polling_are_same_action_not_exact() -> None:
    pages = [("list_items", f'{{"page": {p}, "page_size": 50}}', f'{{"items": ["it{p}a", "it{p}b"], "page": {p}}}')
             for p in range(1, 7)]
    polls = [("get_status", '{"job_id": "job-7f3a9c2b11"}', f'{{"status": "running", "progress": {p}}}')
             for p in (10, 30, 50, 70, 90)] + [("get_status", '{"job_id": "job-7f3a9c2b11"}', '{"status": "done"}')]
    out = detect_loops(events(("pag", pages), ("poll", polls)))
    assert out.select("run_id", "kind", "match").to_dicts() == [
        {"run_id": "pag", "kind": "same_action", "match": "action"},
        {"run_id": "poll", "kind": "same_action", "match": "action"},
    ]
    assert (out["severity"] <= 0.3).all()


def test_stalled_polling_is_a_no_progress_loop() -> None:
    polls = [("get_status", '{"job_id": "j1"}', '{"status": "running", "progress": 40}')] * 4
    assert detect_loops(events(("r", polls)))["kind"].to_list() == ["exact"]


def test_a_poll_that_gets_its_answer_is_same_action() -> None:
    """The same status until the job is done: the request repeated after the loop got a new
    answer, so the loop was waiting, not stuck. A poll still stuck when the run ends, or one
    ended by a failure or by another call, stays exact."""
    running = [("get_job_status", '{"job_id": "j-17"}', '{"status": "running"}')] * 4
    done = ("get_job_status", '{"job_id": "j-17"}', '{"status": "done"}')
    failed = ("get_job_status", '{"job_id": "j-17"}', "rate limited", "error")
    other_job = ("get_job_status", '{"job_id": "j-18"}', '{"status": "done"}')
    cycle = [("check", '{"id": 1}', "pending"), ("sleep", "5", "slept")] * 3
    runs = [
        ("answered", [("submit_job", "{}", '{"job_id": "j-17"}'), *running, done, ("download", "j-17", "csv")]),
        ("answered_llm", running + [done]),
        ("stuck", [("submit_job", "{}", '{"job_id": "j-17"}'), *running]),
        ("ended_by_failure", [*running, failed]),
        ("ended_by_other_call", [*running, ("download", "j-17", "csv")]),
        ("other_request", [*running, other_job]),
        ("period_2_answered", [*cycle, ("check", '{"id": 1}', "ready"), ("fetch", "1", "data")]),
    ]
    out = detect_loops(events(*runs[:1], runs[2], *runs[3:])).sort("run_id")
    llm = detect_loops(events(runs[1], llm_between=True))
    got = {r["run_id"]: (r["kind"], r["match"], r["end_step"]) for r in out.iter_rows(named=True)}
    assert got == {
        "answered": ("same_action", "action", 6),  # the answer is part of the waiting
        "stuck": ("exact", "identical", 5),
        "ended_by_failure": ("exact", "identical", 4),
        "ended_by_other_call": ("exact", "identical", 4),
        "other_request": ("exact", "identical", 4),
        "period_2_answered": ("same_action", "action", 7),
    }
    assert llm.select("kind", "match", "end_step").row(0) == ("same_action", "action", 10)
    assert (out.filter(pl.col("kind") == "same_action")["severity"] <= 0.3).all()


def test_near_duplicates_with_timestamps_ids_and_whitespace_are_exact() -> None:
    calls = [
        ("search",
         f'{{"query": "refund   status",  "request_id": "{rid}", "sent_at": "2026-10-01T07:29:5{k}.{k}93Z"}}',
         f'{{"data": "no refund found", "trace": "{uuid}", "at": "2026-10-01T07:30:0{k}Z"}}')
        for k, (rid, uuid) in enumerate([
            ("acac5affea3c-2020ec28", "123e4567-e89b-12d3-a456-426614174000"),
            ("afee552382ae-28250ec8", "9b2f0c1e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"),
            ("c052c00f5202-5e8facc2", "00000000-1111-2222-3333-444455556666"),
        ])
    ]
    fuzzy = detect_loops(events(("r1", calls)))
    assert fuzzy.select("kind", "match").to_dicts() == [{"kind": "exact", "match": "near_duplicate"}]
    strict = detect_loops(events(("r1", calls)), fuzzy=False)
    assert strict["kind"].to_list() == ["same_action"]


def test_generated_alphanumeric_ids_are_masked() -> None:
    """Base36/base62 request ids (16+ letters and digits) are volatile like hex ids: a retry
    with a fresh id each time is a near-duplicate loop; short codes and long words are content."""
    df = pl.DataFrame({"t": ['{"q": "refund", "request_id": "req_8Kx2PqZ1abCD9mnQ"}', "chatcmpl-8f9d2KQ0zz81MMxa",
                             "x-ab1cd2ef3gh4ij5kl6-y", "sku12345ab", "internationalization2026",
                             "vin 1HGCM82633A004352 ok"]})
    expected = ['{"q": "refund", "request_id": "req_<id>"}', "chatcmpl-<id>", "x-<id>-y", "sku12345ab",
                "internationalization2026", "vin <id> ok"]
    assert df.select(normalize_expr(pl.col("t"))).to_series().to_list() == expected
    assert normalize(df["t"]).to_list() == expected
    rids = ["req_8Kx2PqZ1abCD9mnQ", "req_Zz81MmXa0b2c3D4e", "req_q0W9e8R7t6Y5u4I3"]
    calls = [("create_refund", f'{{"order": "A1", "idempotency_key": "{r}"}}', "error: upstream timeout") for r in rids]
    out = detect_loops(events(("r1", calls)))
    assert out.select("kind", "match").to_dicts() == [{"kind": "exact", "match": "near_duplicate"}]
    assert detect_loops(events(("r1", calls)), fuzzy=False)["kind"].to_list() == ["same_action"]
    # short ids are content: three different orders are three requests
    orders = [("get_order", f'{{"order": "{o}"}}', "not found") for o in ("sku12345ab", "sku12345ac", "sku12345ad")]
    assert detect_loops(events(("r2", orders)))["kind"].to_list() == ["same_action"]


def test_reworded_requests_are_caught_by_minhash_only() -> None:
    args = ["Search the knowledge base for: refund policy for damaged items, region europe",
            "search the knowledge base for refund policy for damaged items (region: europe)",
            "Search knowledge base for: refund policy for damaged items, region Europe."]
    calls = [("search_kb", a, "No article matches the query.") for a in args]
    out = detect_loops(events(("r1", calls)))
    assert out.select("kind", "match").to_dicts() == [{"kind": "exact", "match": "near_duplicate"}]
    # the same words about a different product are a new request
    other = [("search_kb", f"search the knowledge base for: {w} policy", "No article matches the query.")
             for w in ("refund", "shipping", "warranty")]
    assert detect_loops(events(("r2", other)))["kind"].to_list() == ["same_action"]
    # a stricter threshold rejects the rewording
    assert detect_loops(events(("r1", calls)), similarity=1.0)["kind"].to_list() == ["same_action"]


def test_error_retry_with_varying_messages_and_recovered_retry() -> None:
    storm = [("charge_card", '{"amount": 10}', msg, "error")
             for msg in ("TimeoutError", "RateLimitError: retry later", "HTTP 503", "TimeoutError")]
    recovered = [("charge_card", '{"amount": 10}', "TimeoutError", "error")] * 2 + [
        ("charge_card", '{"amount": 10}', "ok", "ok")]
    out = detect_loops(events(("storm", storm), ("recovered", recovered)))
    assert out.select("run_id", "kind", "repeats").to_dicts() == [
        {"run_id": "recovered", "kind": "same_action", "repeats": 3},
        {"run_id": "storm", "kind": "error_retry", "repeats": 4},
    ]
    assert out.filter(pl.col("run_id") == "storm")["error_share"].item() == 1.0


def test_long_retry_storm_counts_every_failure() -> None:
    # more than 255 failed calls: the error count must not wrap around (it was a uint8 sum)
    out = detect_loops(events(("storm", [("charge_card", '{"amount": 10}', "TimeoutError", "error")] * 600)))
    assert out.select("kind", "repeats", "error_share").to_dicts() == [
        {"kind": "error_retry", "repeats": 600, "error_share": 1.0}]


def test_unsorted_and_lazy_input_give_the_same_answer() -> None:
    ev = events(("b", same("x", 3) + same("y", 4, "1", "2")), ("a", [("z", "1", "1"), ("w", "2", "2")] * 3),
                llm_between=True)
    expected = detect_loops(ev)
    shuffled = ev.sample(fraction=1.0, shuffle=True, seed=3)
    assert detect_loops(shuffled).equals(expected)
    assert detect_loops(shuffled.lazy()).equals(expected)
    assert detect_loops(shuffled.lazy(), streaming=True).equals(expected)
    assert expected["run_id"].to_list() == ["a", "b", "b"]
    # grouped except for one run split in two blocks (a run crossing midnight in daily files)
    split = pl.concat([ev.filter(pl.col("run_id") == "b").head(5), ev.filter(pl.col("run_id") == "a"),
                       ev.filter(pl.col("run_id") == "b").slice(5)])
    assert detect_loops(split).equals(expected)


def test_minimal_input_and_missing_optional_columns() -> None:
    ev = pl.DataFrame({"run_id": ["r"] * 4, "step": [4, 3, 2, 1], "action": ["a"] * 4})
    out = detect_loops(ev)
    assert out.select("start_step", "end_step", "kind", "wasted_tokens", "wasted_cost_usd").to_dicts() == [
        {"start_step": 1, "end_step": 4, "kind": "same_action", "wasted_tokens": None, "wasted_cost_usd": None}
    ]  # no arguments recorded: "the same call" cannot be told from paging or polling; no cost: waste unknown
    assert out["agent"].to_list() == ["default"]
    ts_only = pl.DataFrame({"run_id": ["r"] * 3, "action": ["a"] * 3,
                            "ts": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"]})
    assert detect_loops(ts_only)["repeats"].to_list() == [3]


def test_waste_of_runs_without_a_recorded_cost_is_unknown() -> None:
    """Run ``paid`` recorded costs on its LLM steps only: its waste sums them (tool steps add 0);
    run ``free`` recorded none: its waste is null, and its loop is found and rated the same."""
    rows = []
    for run in ("paid", "free"):
        for i in range(12):
            llm = i % 2 == 0
            rows.append((run, i + 1, "llm" if llm else "search", None if llm else "q=1", "none",
                         0.01 if llm and run == "paid" else None, 100 if run == "paid" else None))
    ev = pl.DataFrame(rows, schema=["run_id", "step", "action", "args", "result", "cost_usd", "input_tokens"],
                      orient="row")
    out = detect_loops(ev).sort("run_id")
    free, paid = out.rows(named=True)
    assert (free["kind"], paid["kind"]) == ("exact", "exact") and free["repeats"] == paid["repeats"]
    assert paid["wasted_cost_usd"] == pytest.approx(0.01 * paid["wasted_steps"] / 2)
    assert paid["wasted_tokens"] == 100 * paid["wasted_steps"]  # tokens on every step
    assert free["wasted_cost_usd"] is None and free["wasted_tokens"] is None
    assert free["severity"] == pytest.approx(paid["severity"])  # the steps' share stands in for the cost's
    summary = loop_summary(out).sort("run_id")
    assert summary["wasted_cost_usd"].to_list() == [None, paid["wasted_cost_usd"]]
    assert summary["wasted_tokens"].to_list() == [None, paid["wasted_tokens"]]


def test_unrecorded_arguments_match_nothing() -> None:
    """Null or empty arguments are "not recorded": repeats of such calls stay action-level
    (never escalated on their own), unless they fail; recorded ones on the same rows are exact."""
    acts = ["plan"] + ["list_items"] * 5 + ["final"]
    base = pl.DataFrame({"run_id": "r", "step": range(1, 8), "action": acts})
    for args in (None, ""):
        ev = base.with_columns(args=pl.lit(args, pl.String), result=pl.lit("3 items"))
        for fuzzy in (True, False):
            assert detect_loops(ev, fuzzy=fuzzy).select("kind", "match").rows() == [("same_action", "action")]
    recorded = base.with_columns(args=pl.lit('{"page": 1}'), result=pl.lit("3 items"))
    assert detect_loops(recorded)["kind"].to_list() == ["exact"]
    # a log without args/result columns at all
    assert detect_loops(base)["kind"].to_list() == ["same_action"]
    assert detect_loops(base.lazy())["kind"].to_list() == ["same_action"]
    # failures still say what the loop is
    failing = base.with_columns(status=pl.when(pl.col("action") == "list_items").then(pl.lit("error"))
                                .otherwise(pl.lit("ok")))
    assert detect_loops(failing)["kind"].to_list() == ["error_retry"]
    # half recorded: the recorded stretch is exact where it repeats, the rest action-level
    half = base.with_columns(args=pl.when(pl.col("step") <= 4).then(pl.lit("q")).otherwise(None),
                             result=pl.lit("3 items"))
    out = detect_loops(half, min_repeats=2)
    assert ("exact", 2, 4) in out.select("kind", "start_step", "end_step").rows()


def test_unrecorded_results_match_nothing() -> None:
    """A log without tool results made every poll (same request, new answer) an ``exact``
    loop, and every sampled LLM prompt (one prompt, new replies) too: escalated. Results that
    were not recorded now match nothing, as arguments; failures still say what a loop is."""
    acts = ["plan"] + ["get_job_status"] * 5 + ["final"]
    base = pl.DataFrame({"run_id": "r", "step": range(1, 8), "action": acts, "args": '{"job": "j1"}'})
    for result in (None, ""):
        ev = base.with_columns(result=pl.lit(result, pl.String))
        for fuzzy in (True, False):
            assert detect_loops(ev, fuzzy=fuzzy).select("kind", "match").rows() == [("same_action", "action")]
            assert detect_loops(ev.lazy(), fuzzy=fuzzy)["kind"].to_list() == ["same_action"]
    assert detect_loops(base)["kind"].to_list() == ["same_action"]  # no result column at all
    assert detect_loops(base.with_columns(result=pl.lit("running")))["kind"].to_list() == ["exact"]
    failing = base.with_columns(result=pl.lit(None, pl.String),
                                status=pl.when(pl.col("action") == "get_job_status").then(pl.lit("error")))
    assert detect_loops(failing)["kind"].to_list() == ["error_retry"]
    # LLM: one prompt, replies not recorded: sampling or a stuck retry cannot be told apart
    llm = _calls(["llm"] * 4 + ["search"], ["p"] * 4 + ["q"], [None] * 4 + ["x"])  # type: ignore[list-item]
    assert detect_loops(llm).select("kind", "match").rows() == [("same_action", "prompt")]
    assert detect_loops(llm.lazy())["kind"].to_list() == ["same_action"]


def test_positions_are_content_however_id_like() -> None:
    """Cursor pagination with UUID cursors, OFFSET 12000000 paging and polling with an epoch-ms
    ``since`` were masked into ``exact`` near-duplicate loops and escalated: the value after a
    paging or polling key is content. A request id (no position key) stays masked."""
    import uuid

    ids = [str(uuid.UUID(int=i * 7_919 + 1)) for i in range(20)]
    run = {
        "cursor": [(f'{{"cursor": "{ids[i]}", "limit": 2}}', f'{{"items": ["{ids[i + 10]}"], "next_cursor": "{ids[i + 1]}"}}')
                   for i in range(6)],
        "offset": [(f"SELECT id FROM events OFFSET {12_000_000 + 100 * i} LIMIT 100", "100 rows") for i in range(6)],
        "since": [(f'{{"job": "j1", "since": {1_761_955_200_000 + 5_000 * i}}}', '{"state": "running"}')
                  for i in range(6)],
        "token": [(f'{{"pageToken": "tok{i}a8kx2pqz1abcd9mnq"}}', '{"items": []}') for i in range(6)],
        "stuck": [(f'{{"q": "refund status", "request_id": "{ids[i]}"}}', f'{{"error": "none", "trace": "{ids[i + 1]}"}}')
                  for i in range(6)],
    }
    ev = events(*((name, [("list_things", a, r) for a, r in calls]) for name, calls in run.items()))
    out = detect_loops(ev).select("run_id", "kind", "match").sort("run_id")
    assert out.rows() == [("cursor", "same_action", "action"), ("offset", "same_action", "action"),
                          ("since", "same_action", "action"), ("stuck", "exact", "near_duplicate"),
                          ("token", "same_action", "action")]
    # the same page twice is still the same page, spelled either way
    assert near_duplicates(pl.Series([f'{{"cursor": "{ids[0]}"}}', f'{{"Cursor":"{ids[0].upper()}"}}',
                                      "offset=12000000", "OFFSET 12000000"]),
                           np.array([0, 2]), np.array([1, 3])).tolist() == [True, True]


def test_positions_need_a_key_and_cover_common_paging_apis() -> None:
    """The first version read prose as positions ("try again after <time>", a prompt's "tickets
    since <time>") and missed stuck loops; it knew too few paging keys (search_after,
    $skiptoken, DynamoDB's ExclusiveStartKey), cut a timestamp cursor at its space, and took a
    text's own \\x1f for the start of its positions."""
    stamps = [f"2026-10-01T09:00:0{i}Z" for i in range(6)]
    stuck = events(("after", [("get_report", '{"id": 7}', f"not ready yet, please try again after {t}") for t in stamps]))
    assert detect_loops(stuck).select("kind", "match").rows() == [("exact", "near_duplicate")]
    # a colon after a word and a space is prose too; after punctuation or a line's start, a key
    colon = events(
        ("retry", [("get_report", '{"id": 7}', f"Report not ready. Retry after: {t}") for t in stamps]),
        ("since", [("get_report", '{"id": 7}', f"No new rows since: {t}") for t in stamps]),
        ("yaml", [("get_report", f"id: 7\nafter: {t}", "rows: []") for t in stamps]),
        ("object", [("get_report", f"{{id: 7, after: {t}}}", "rows: []") for t in stamps]),
        ("yaml_list", [("get_report", f"filters:\n  - after: {t}", "next:\n  - after: x") for t in stamps]),
    )
    assert detect_loops(colon).select("run_id", "kind").sort("run_id").rows() == [
        ("object", "same_action"), ("retry", "exact"), ("since", "exact"), ("yaml", "same_action"),
        ("yaml_list", "same_action")]
    prompt = _calls(["llm"] * 6 + ["search"], [f"Summarize the tickets opened since {t}" for t in stamps] + ["q"],
                    ["cannot parse"] * 6 + ["x"])
    assert detect_loops(prompt).select("kind", "repeats").rows() == [("exact", 6)]
    paging = {
        "search_after": [f'{{"query": "x", "search_after": [17640000{i:05d}, "doc#{i}"]}}' for i in range(6)],
        "skiptoken": [f'{{"$skiptoken": "X{i}a8kx2pqz1abcd9mnqr7"}}' for i in range(6)],
        "dynamodb": [f'{{"ExclusiveStartKey": {{"pk": {{"S": "order#7c9e6679-7425-40de-944b-e07fc1f90a{i:02d}"}}}}}}'
                     for i in range(6)],
        "spaced_ts": [f'{{"after": "2026-10-01 10:00:0{i}"}}' for i in range(6)],
        "nextPageToken": [f'{{"nextPageToken": "CiAKGjBp{i}bC1hN2RjY2M4YzAxZjM0NzE2OTdkMmI"}}' for i in range(6)],
        # a command line's --cursor=x and --cursor x, OData's $skip, a query inside one partition
        "flag_eq": [f'{{"cmd": "inv list --cursor=7c9e6679-7425-40de-944b-e07fc1f90a{i:02d}"}}' for i in range(6)],
        "flag_space": [f'{{"cmd": "inv list --cursor 7c9e6679-7425-40de-944b-e07fc1f90a{i:02d}"}}' for i in range(6)],
        "odata": [f'{{"url": "/items?$skip={12_000_000 + 100 * i}&$top=100"}}' for i in range(6)],
        "ddb_query": ['{"ExclusiveStartKey": {"pk": {"S": "CUST#42"}, "sk": {"S": "ORDER#7c9e6679-7425-40de-944b-'
                      f'e07fc1f90a{i:02d}"}}}}}}' for i in range(6)],
    }
    ev = events(*((name, [("list_things", a, '{"items": []}') for a in args]) for name, args in paging.items()))
    out = detect_loops(ev).select("run_id", "kind").sort("run_id")
    assert out["kind"].to_list() == ["same_action"] * len(paging), out
    base = "customer record: name alice smith, city paris, plan gold, notes: prefers email contact, status "
    texts = pl.Series([f"HDR\x1f{base}active", f"HDR\x1f{base}actives"])
    assert near_duplicates(texts, np.array([0]), np.array([1])).tolist() == [True]
    assert normalize(texts).to_list() == texts.to_frame("t").select(normalize_expr(pl.col("t")))["t"].to_list()


def test_handoffs_without_arguments_are_action_level_and_ping_pong_is_named() -> None:
    """OpenTelemetry's agent spans record no arguments: hand-offs read from it cannot tell
    ping-pong from handing several tasks to agents, so their repeats stay ``same_action``
    (``handoff`` set). With arguments, ping-pong between two agents is ``exact`` and its reason
    says "(hand-off ping-pong)" (the note could never appear: it looked for a kind "handoff");
    one agent handed the same task again is an ordinary loop."""
    acts = ["plan"] + ["handoff:research", "handoff:billing"] * 5
    ev = pl.DataFrame({"run_id": "t1", "step": range(1, 12), "action": acts}).with_columns(
        args=pl.lit(None, pl.String), result=pl.lit(None, pl.String))
    assert detect_loops(ev).select("kind", "handoff", "period", "repeats").rows() == [("same_action", True, 2, 5)]
    assert dw.score_runs(ev)["level"].to_list() == ["ok"]
    recorded = ev.with_columns(args=pl.concat_str(pl.lit('{"to": "'), pl.col("action"), pl.lit('"}')))
    out = detect_loops(recorded)
    assert out.select("kind", "handoff", "period", "repeats").rows() == [("exact", True, 2, 5)]
    reasons = dw.score_runs(recorded, loops=out)["reasons"][0].to_list()
    assert reasons[0].startswith("loop: handoff:research > handoff:billing repeated 5x (hand-off ping-pong)"), reasons
    # a hand-off without arguments inside a cycle of recorded calls: a stuck loop all the same
    mixed = pl.DataFrame({"run_id": "m", "step": range(1, 16),
                          "action": ["lookup", "handoff:billing", "refund"] * 5}).with_columns(
        args=pl.when(pl.col("action").str.starts_with("handoff:")).then(None).otherwise(pl.lit('{"order": 42}')),
        result=pl.when(pl.col("action").str.starts_with("handoff:")).then(None).otherwise(pl.lit("done")))
    assert detect_loops(mixed).select("kind", "handoff", "period").rows() == [("exact", False, 3)]
    one = recorded.with_columns(pl.col("action").str.replace("billing", "research"),
                                pl.col("args").str.replace("billing", "research"))
    reasons = dw.score_runs(one)["reasons"][0].to_list()
    assert reasons[0].startswith("loop: handoff:research repeated 10x,") and "ping-pong" not in reasons[0], reasons


def test_empty_and_loop_free_inputs() -> None:
    empty = pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64, "action": pl.String})
    assert detect_loops(empty).schema == pl.Schema(LOOP_SCHEMA)
    assert detect_loops(events(("r", [("a",), ("b",), ("c",)]))).height == 0
    only_llm = events(("r", []))
    assert detect_loops(only_llm).height == 0
    assert loop_summary(detect_loops(empty)).schema == pl.Schema(SUMMARY_SCHEMA)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_period": 0}, "max_period must be an integer in [1, 64], got 0"),
        ({"min_repeats": 1}, "min_repeats must be an integer in [2, 1000], got 1"),
        ({"similarity": 1.5}, "similarity must be a number in (0, 1], got 1.5"),
        ({"error_share": "half"}, "error_share must be a number"),
        ({"fuzzy": "yes"}, "fuzzy must be True or False"),
        ({"max_period": True}, "max_period must be an integer"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InvalidParameterError) as err:
        detect_loops(events(("r", same("a", 3))), **kwargs)
    assert fragment in str(err.value)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(SchemaError, match="missing required column"):
        detect_loops(pl.DataFrame({"run_id": ["r"], "step": [1]}))
    with pytest.raises(InvalidParameterError, match="got list"):
        detect_loops([1, 2, 3])
    import pandas as pd

    with pytest.raises(InvalidParameterError, match=r"got pandas.DataFrame; convert it with polars.from_pandas"):
        detect_loops(pd.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"]}))
    with pytest.raises(SchemaError, match="expected the output of detect_loops"):
        loop_summary(pl.DataFrame({"run_id": ["r"]}))
    with pytest.raises(InvalidParameterError, match="got dict"):
        loop_summary({"run_id": ["r"]})  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="parent_run_id"):
        detect_delegation_cycles(pl.DataFrame({"run_id": ["r"], "agent": ["a"]}))
    with pytest.raises(InvalidParameterError, match="max_period must be an integer in \\[2, 64\\]"):
        detect_delegation_cycles(pl.DataFrame({"run_id": ["r"], "agent": ["a"], "parent_run_id": [None]}),
                                 max_period=1)


def test_loop_summary_worst_loop_waste_and_severity() -> None:
    calls = [*same("list", 5, "p", "new"), ("plan", "p", "ok"), *same("search", 6, "q", "none")]
    ev = events(("r1", calls), ("r2", [("list", f"page={p}", f"items {p}") for p in range(1, 8)]),
                llm_between=True)
    loops = detect_loops(ev)
    summ = loop_summary(loops)
    assert summ.schema == pl.Schema(SUMMARY_SCHEMA)
    r1 = summ.filter(pl.col("run_id") == "r1").row(0, named=True)
    assert r1["n_loops"] == 2
    assert (r1["worst_kind"], r1["worst_pattern"], r1["worst_repeats"]) == ("exact", "search", 6)
    assert r1["wasted_steps"] == loops.filter(pl.col("run_id") == "r1")["wasted_steps"].sum()
    assert 0.5 <= r1["loop_severity"] <= 1.0
    assert r1["worst_error_share"] == 0.0
    r2 = summ.filter(pl.col("run_id") == "r2").row(0, named=True)
    assert r2["worst_kind"] == "same_action" and 0.0 < r2["loop_severity"] <= 0.3
    # the contract columns alone are enough (severity from kind and repeats)
    again = loop_summary(loops.select(CONTRACT))
    assert again["n_loops"].to_list() == summ["n_loops"].to_list()
    assert again["worst_error_share"].null_count() == again.height
    assert (again["loop_severity"] <= 1.0).all() and (again["loop_severity"] >= 0.0).all()


def test_periodic_segments_kernel() -> None:
    codes = np.array([9, 1, 1, 1, 1, 2, 3, 2, 3, 2, 3, 7, 7, 7])
    group = np.array([0] * 11 + [1] * 3)
    s, e, p = periodic_segments(codes, group, max_period=4, min_repeats=3)
    assert list(zip(s.tolist(), e.tolist(), p.tolist(), strict=True)) == [(1, 4, 1), (5, 10, 2), (11, 13, 1)]


def test_signature_helpers() -> None:
    df = pl.DataFrame({"t": ["  A\tB  2026-10-01 07:29:54Z id=deadbeef42 ", None, "plain", "Two  Spaces",
                             "uuid 123e4567-e89b-12d3-a456-426614174000", "nbsp\u00a0x"]})
    expected = ["a b <ts> id=<id>", "", "plain", "two spaces", "uuid <id>", "nbsp x"]
    assert df.select(normalize_expr(pl.col("t"))).to_series().to_list() == expected
    assert normalize(df["t"]).to_list() == expected  # the guarded Series version agrees
    t = pl.Series(["abc", "abc", "xyz", ""])
    sig = minhash(t, n_hashes=16)
    assert sig.shape == (4, 16) and (sig[0] == sig[1]).all() and not (sig[0] == sig[2]).all()
    ok = near_duplicates(pl.Series(['{"page": 1}', '{"page": 2}', "Hello  World", "hello world"]),
                         np.array([0, 2]), np.array([1, 3]))
    assert ok.tolist() == [False, True]



def _minhash_reference(text: str | None, n_hashes: int, first: int = 0, words_only: bool = True) -> list[int]:
    """MinHash as documented, one text at a time in plain Python (the reference for the
    vectorised kernel)."""
    data = (text or "").encode()
    if words_only:
        data = bytes(32 if (33 <= c < 127 and not chr(c).isalnum()) or c in (9, 10, 11, 12, 13) else c
                     for c in data)
        while b"  " in data:
            data = data.replace(b"  ", b" ")
    data = b"\x02" * 3 + data + b"\x02" * 3

    def fmix(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & 0xFFFFFFFF
        return x ^ (x >> 16)

    shingles = {fmix(int.from_bytes(data[i : i + 4], "little")) for i in range(len(data) - 3)}
    a, b = _affine_params(0)
    return [min((x * int(a[j]) + int(b[j])) & 0xFFFFFFFF for x in shingles) for j in range(first, first + n_hashes)]


@pytest.mark.parametrize("threads", [1, 2])
def test_minhash_matches_a_plain_python_reference(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import driftwatch._signatures as sig

    monkeypatch.setattr(sig, "_THREADS", threads)
    monkeypatch.setattr(sig, "_MIN_HALF", 5)  # the two-thread split even for a few texts
    rng = np.random.default_rng(3)
    alphabet = list("ab xyz{}:,.-_\t\n\"0123456789") + ["\u00e9", "\u4e2d"]
    texts = [None, "", "a", "abc", '{"q":  "x"}', "  --  ", *("".join(rng.choice(alphabet, int(rng.integers(0, 80))))
                                                            for _ in range(40))]
    series = pl.Series(texts, dtype=pl.String)
    for kw in ({"n_hashes": 16}, {"n_hashes": 7, "first": 9}, {"n_hashes": 5, "words_only": False}):
        want = [_minhash_reference(t, kw["n_hashes"], kw.get("first", 0), kw.get("words_only", True)) for t in texts]
        for max_bytes in (1 << 19, 64):  # one block, many blocks
            assert minhash(series, max_bytes=max_bytes, **kw).tolist() == want

# ---------------------------------------------------------------------------------------------
# hypothesis: prefix + pattern * k + suffix
# ---------------------------------------------------------------------------------------------


def _minimal_period(seq: list[str]) -> int:
    n = len(seq)
    return next(p for p in range(1, n + 1) if n % p == 0 and seq == seq[:p] * (n // p))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=6),
    k=st.integers(3, 6),
    prefix=st.lists(st.sampled_from(["x", "y"]), max_size=5),
    suffix=st.lists(st.sampled_from(["x", "y"]), max_size=5),
    llm=st.booleans(),
)
def test_property_prefix_pattern_k_suffix(pattern: list[str], k: int, prefix: list[str], suffix: list[str],
                                          llm: bool) -> None:
    calls = [(a, f"{a}-args", f"{a}-res") for a in prefix + pattern * k + suffix]
    out = detect_loops(events(("r", calls), llm_between=llm))
    p0 = _minimal_period(pattern)
    step_of = (lambda i: 2 * i + 2) if llm else (lambda i: i + 1)  # step of the i-th tool call (0-based)
    first = step_of(len(prefix)) - (1 if llm else 0)
    last = step_of(len(prefix) + len(pattern) * k - 1)
    hit = out.filter((pl.col("start_step") <= first) & (pl.col("end_step") >= last))
    assert hit.height == 1, out
    row = hit.row(0, named=True)
    # prefix and suffix use other actions, so the extent is exactly the repeated block
    assert (row["start_step"], row["end_step"]) == (first, last)
    assert row["period"] == p0
    assert row["repeats"] == k * len(pattern) // p0 >= k
    assert row["kind"] == "exact"
    # the tool calls of the loop repeat its pattern
    assert row["pattern"].split(" > ") == (pattern * k)[:p0]


# ---------------------------------------------------------------------------------------------
# known answers on a generated fleet
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> synth.Fleet:
    scenario = synth.Scenario(loop_rate=0.08, delegation_chains_per_day=1.0)
    return synth.generate(days=10, runs_per_day=300, seed=21, scenario=scenario)


@pytest.fixture(scope="module")
def loops(fleet: synth.Fleet) -> pl.DataFrame:
    return detect_loops(fleet.events)


def _truth_loops(fleet: synth.Fleet) -> pl.DataFrame:
    return fleet.truth["loops"].with_columns(
        pl.when(pl.col("kind") == "error_retry").then(pl.lit("error_retry")).otherwise(pl.lit("exact")).alias("want")
    )


@pytest.mark.parametrize("kind", ["exact", "error_retry"])
def test_fleet_run_level_precision_and_recall(fleet: synth.Fleet, loops: pl.DataFrame, kind: str) -> None:
    truth = set(_truth_loops(fleet).filter(pl.col("want") == kind)["run_id"])
    pred = set(loops.filter(pl.col("kind") == kind)["run_id"])
    assert len(truth) >= 30, "the fleet should hold enough injected loops to measure"
    tp = len(truth & pred)
    assert tp / len(pred) >= 0.95
    assert tp / len(truth) >= 0.95


def test_fleet_localisation_period_and_repeats(fleet: synth.Fleet, loops: pl.DataFrame) -> None:
    truth = _truth_loops(fleet)
    pairs = truth.join(
        loops.select("run_id", pl.col("start_step").alias("s"), pl.col("end_step").alias("e"),
                     pl.col("period").alias("p"), pl.col("repeats").alias("k")),
        on="run_id", how="left",
    ).with_columns(
        ((pl.min_horizontal("end_step", "e") - pl.max_horizontal("start_step", "s") + 1).clip(0)
         / (pl.max_horizontal("end_step", "e") - pl.min_horizontal("start_step", "s") + 1))
        .fill_null(0.0).alias("iou")
    )
    best = pairs.sort("iou", descending=True).unique(["run_id", "start_step"], keep="first")
    assert best.height == truth.height
    assert (best["iou"] >= 0.8).mean() >= 0.95
    assert best["iou"].mean() >= 0.9
    assert (best["p"] == best["period"]).mean() >= 0.95
    assert (best["k"] >= best["repeats"]).mean() >= 0.95


def test_fleet_near_duplicates_need_fuzzy_matching(fleet: synth.Fleet, loops: pl.DataFrame) -> None:
    near = set(fleet.truth["loops"].filter(pl.col("kind") == "near_duplicate")["run_id"])
    assert near
    found = loops.filter(pl.col("run_id").is_in(list(near)) & (pl.col("kind") == "exact"))
    assert found["run_id"].n_unique() / len(near) >= 0.95
    assert (found["match"] == "near_duplicate").all()
    strict = detect_loops(fleet.events.filter(pl.col("run_id").is_in(list(near))), fuzzy=False)
    assert strict.filter(pl.col("kind") == "exact").height == 0


def test_fleet_handoff_loops_are_flagged(fleet: synth.Fleet, loops: pl.DataFrame) -> None:
    hand = set(fleet.truth["loops"].filter(pl.col("kind") == "handoff")["run_id"])
    assert hand
    got = loops.filter(pl.col("handoff") & pl.col("run_id").is_in(list(hand)))
    assert got["run_id"].n_unique() / len(hand) >= 0.95
    assert got["pattern"].str.contains("handoff:").all()


def test_fleet_benign_repetition_is_never_exact_or_error_retry(fleet: synth.Fleet, loops: pl.DataFrame) -> None:
    benign = fleet.truth["benign"]
    flagged = loops.join(benign.select("run_id"), on="run_id")
    assert flagged.filter(pl.col("kind").is_in(["exact", "error_retry"])).height == 0
    # ... but most of it is reported as same_action (runs of >= 3 calls)
    assert flagged["run_id"].n_unique() / benign.height >= 0.6
    summ = loop_summary(flagged)
    assert (summ["loop_severity"] <= 0.3).all()


def test_stable_fleet_has_no_severe_loops() -> None:
    calm = synth.generate(days=5, runs_per_day=300, seed=5, scenario=synth.Scenario.stable())
    loops = detect_loops(calm.events)
    assert loops.height > 0  # pagination, polling and ordinary repeats are still reported ...
    assert set(loops["kind"]) == {"same_action"}  # ... but nothing to escalate
    assert (loop_summary(loops)["loop_severity"] <= 0.3).all()


def test_fleet_summary_one_row_per_looping_run(fleet: synth.Fleet, loops: pl.DataFrame) -> None:
    summ = loop_summary(loops)
    assert summ["run_id"].to_list() == sorted(set(loops["run_id"]))
    severe = set(loops.filter(pl.col("kind").is_in(["exact", "error_retry"]))["run_id"])
    high = set(summ.filter(pl.col("loop_severity") >= 0.5)["run_id"])
    assert high == severe


def test_fleet_chunks_of_whole_runs_concatenate(fleet: synth.Fleet, loops: pl.DataFrame) -> None:
    ev = fleet.events.with_columns((pl.col("run_id").hash(1) % 3).alias("_chunk"))
    parts = [detect_loops(ev.filter(pl.col("_chunk") == c).drop("_chunk")) for c in range(3)]
    assert pl.concat(parts).sort("run_id", "start_step", "period").equals(loops)
    assert pl.concat([loop_summary(p) for p in parts]).sort("run_id").equals(loop_summary(loops))


def test_fleet_parquet_scan_with_streaming(fleet: synth.Fleet, loops: pl.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    fleet.events.sample(fraction=1.0, shuffle=True, seed=1).write_parquet(path, row_group_size=5000)
    assert detect_loops(pl.scan_parquet(path), streaming=True).equals(loops)


def _messy(events: pl.DataFrame) -> pl.DataFrame:
    """The events as a day-partitioned log reads them: the second half of every 5th run at the end
    (runs crossing midnight), one run out of step order, rows without a run, many small chunks."""
    ev = events.with_row_index("_i").with_columns(pl.col("step").rank("ordinal").over("run_id").alias("_k"),
                                                   pl.len().over("run_id").alias("_n"))
    late = (pl.col("run_id").hash(5) % 5 == 0) & (pl.col("_k") > pl.col("_n") // 2)
    swapped = ev.filter(pl.col("run_id") == ev["run_id"][0]).reverse()
    rest = ev.filter(pl.col("run_id") != ev["run_id"][0])
    messy = pl.concat([swapped, rest.filter(~late), rest.filter(late)]).drop("_i", "_k", "_n")
    orphans = messy.head(50).with_columns(pl.lit(None, pl.String).alias("run_id"))
    messy = pl.concat([messy.head(1000), orphans, messy.slice(1000)])
    return pl.concat([messy.slice(i, 257) for i in range(0, messy.height, 257)], rechunk=False)


@pytest.mark.parametrize("min_repeats", [2, 3, 5])
def test_fleet_fuzzy_pairs_judged_from_anchors_as_if_all_were(fleet: synth.Fleet, min_repeats: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Near-duplicates are judged at anchor positions first and then only near matching
    anchors: the loops are those found by judging every pair."""
    import driftwatch.loops as loops_mod

    got = detect_loops(fleet.events, min_repeats=min_repeats)
    monkeypatch.setattr(loops_mod, "_near_anchor", lambda pk, *args: np.ones(pk.size, dtype=bool))
    want = detect_loops(fleet.events, min_repeats=min_repeats)
    assert got.equals(want)
    assert (got["match"] == "near_duplicate").sum() > 5


def test_near_anchor_window() -> None:
    from driftwatch.loops import _near_anchor

    # period 1 (span 2) at positions 0..9 with a live anchor at 4; period 2 (span 4) with one at 8
    pk = np.array([*range(10), *range(12)])
    pp = np.array([1] * 10 + [2] * 12)
    live = ((pp == 1) & (pk == 4)) | ((pp == 2) & (pk == 8))
    near = _near_anchor(pk, pp, pp * 2, live, 12)
    assert pk[near & (pp == 1)].tolist() == [3, 4, 5]
    assert pk[near & (pp == 2)].tolist() == [5, 6, 7, 8, 9, 10, 11]
    assert not _near_anchor(pk, pp, pp * 2, np.zeros(pk.size, bool), 12).any()


@pytest.mark.parametrize("fuzzy", [True, False])
def test_fleet_messy_input_eager_lazy_and_threads_agree(fleet: synth.Fleet, fuzzy: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Split runs are read apart and merged back, many chunks are gathered from by mask,
    eager input hashes the texts of candidate steps only and lazy input every step: same
    answer, and the same as on the sorted log (floats to rounding: ``severity`` is computed on
    the whole output and Polars may round its last bit differently by row position)."""
    import driftwatch._signatures as sig
    import driftwatch.loops as loops_mod

    messy = _messy(fleet.events)
    assert messy.n_chunks() > 100
    monkeypatch.setattr(sig, "_MIN_HALF", 100)  # texts and MinHash in two halves on two threads
    got = detect_loops(messy, fuzzy=fuzzy)
    assert detect_loops(messy.lazy(), fuzzy=fuzzy).equals(got)
    assert detect_loops(messy.lazy(), fuzzy=fuzzy, streaming=True).equals(got)
    monkeypatch.setattr(loops_mod, "_THREADS", 1)
    monkeypatch.setattr(loops_mod, "_DIRECT_GATHER", 10**9)
    monkeypatch.setattr(sig, "_THREADS", 1)
    assert detect_loops(messy.rechunk(), fuzzy=fuzzy).equals(got)
    want = detect_loops(fleet.events.sort("run_id", "step"), fuzzy=fuzzy)
    assert got.height > 100 and (got["kind"] != "same_action").sum() > 30
    assert_frame_equal(got, want, check_exact=False, rel_tol=1e-12)
    assert got.drop("severity").equals(want.drop("severity"))


def test_fleet_delegation_cycles(fleet: synth.Fleet) -> None:
    truth = fleet.truth["delegation"]
    assert truth.height >= 12
    cycles = detect_delegation_cycles(run_features(fleet.events))
    assert cycles.schema == pl.Schema(DELEGATION_SCHEMA)
    pred = set(cycles.explode("run_ids")["run_ids"])
    tp = len(pred & set(truth["run_id"]))
    assert tp / len(pred) >= 0.95 and tp / truth.height >= 0.95
    # every injected chain is one cycle, its runs root first
    chains = truth.sort("depth").group_by("chain_id", maintain_order=True).agg(pl.col("run_id"))
    assert sorted(chains["run_id"].to_list()) == sorted(cycles["run_ids"].to_list())
    assert (cycles["period"] == 2).all() and (cycles["kind"] == "delegation").all()
    assert detect_delegation_cycles(fleet.events).equals(cycles)


def test_delegation_hand_built() -> None:
    runs = pl.DataFrame({
        "run_id": ["a", "b", "c", "d", "e", "f", "s1", "s2", "s3", "s4", "o"],
        "agent": ["x", "y", "x", "y", "x", "z", "p", "p", "p", "p", "q"],
        "parent_run_id": [None, "a", "b", "c", "d", "e", None, "s1", "s2", "s3", "missing"],
        "tokens": [10] * 11,
        "cost_usd": [1.0] * 11,
    })
    out = detect_delegation_cycles(runs)
    assert out.select("chain_id", "run_ids", "agents", "repeats", "start_depth", "end_depth",
                      "wasted_runs", "wasted_cost_usd").to_dicts() == [
        {"chain_id": "a", "run_ids": ["a", "b", "c", "d", "e"], "agents": "x > y", "repeats": 2,
         "start_depth": 0, "end_depth": 4, "wasted_runs": 3, "wasted_cost_usd": 3.0}
    ]
    # a parent_run_id cycle in corrupt data is ignored, not an endless walk
    corrupt = pl.DataFrame({"run_id": ["u", "v"], "agent": ["x", "y"], "parent_run_id": ["v", "u"]})
    assert detect_delegation_cycles(corrupt).height == 0


# ---------------------------------------------------------------------------------------------
# repeated LLM calls (the same prompt, one LLM step after another)
# ---------------------------------------------------------------------------------------------

_LLM_COLS = ["start_step", "end_step", "period", "repeats", "pattern", "kind", "match", "wasted_steps",
             "wasted_tokens"]


def _calls(actions: list[str], args: list[str | None], results: list[str], status: list[str] | None = None,
           run: str = "r") -> pl.DataFrame:
    n = len(actions)
    return pl.DataFrame({"run_id": [run] * n, "step": list(range(1, n + 1)), "action": actions, "args": args,
                         "result": results, "status": status or ["ok"] * n, "cost_usd": [0.01] * n,
                         "input_tokens": [100] * n, "output_tokens": [10] * n})


def test_llm_retries_with_the_same_reply_are_an_exact_loop() -> None:
    ev = _calls(["llm", "search", "llm", "llm", "llm", "llm", "search", "llm"],
                ["p0", "q", "p1", "p1", "p1", "p1", "q2", "p2"],
                ["call search", "r", "bad", "bad", "bad", "call search", "r2", "final"])
    assert detect_loops(ev).select(_LLM_COLS).to_dicts() == [
        {"start_step": 3, "end_step": 5, "period": 1, "repeats": 3, "pattern": "llm", "kind": "exact",
         "match": "identical", "wasted_steps": 2, "wasted_tokens": 220}
    ]


def test_failing_llm_calls_with_one_prompt_are_an_error_retry() -> None:
    ev = _calls(["llm"] * 6 + ["search"], ["p"] * 6 + ["q"], ["rate limit", "timeout", "rate limit", "503",
                                                               "timeout", "call search", "x"],
                ["error"] * 5 + ["ok", "ok"])
    out = detect_loops(ev)
    assert out.select(_LLM_COLS + ["error_share"]).to_dicts() == [
        {"start_step": 1, "end_step": 5, "period": 1, "repeats": 5, "pattern": "llm", "kind": "error_retry",
         "match": "identical", "wasted_steps": 4, "wasted_tokens": 440, "error_share": 1.0}
    ]
    assert loop_summary(out)["loop_severity"][0] >= 0.5


def test_sampling_one_prompt_is_only_same_action() -> None:
    ev = _calls(["llm"] * 4 + ["search"], ["p"] * 4 + ["q"], ["alpha one", "beta two", "gamma three", "delta", "x"])
    out = detect_loops(ev)
    assert out.select("kind", "match", "repeats").to_dicts() == [{"kind": "same_action", "match": "prompt", "repeats": 4}]
    assert loop_summary(out)["loop_severity"][0] <= 0.3


def test_change_says_what_changed_between_the_repeats_of_a_same_action_loop() -> None:
    """The run's reason reads it: "(same tools, changing arguments)" was said of polls and of
    calls whose arguments were never logged."""
    pages = [("list", f"page={p}", f"items {p}") for p in range(4)]
    polls = [("status", "job=1", f"progress {p}") for p in (10, 40, 70, 90)]
    blind = [("status", None, "x")] * 4
    no_reply = [("status", "job=1", None)] * 4
    handoffs = [("handoff:b", None, None), ("handoff:c", None, None)] * 5  # (OpenTelemetry's agent spans)
    ev = events(("pages", pages), ("polls", polls), ("blind", blind), ("no_reply", no_reply),
                ("stuck", same("search", 4)), ("failing", [("api", "q", "boom", "error")] * 4),
                ("handoffs", handoffs))
    llm = pl.concat([_calls(["llm"] * 4, ["p"] * 4, ["a", "b", "c", "d"], run="sampled"),
                     _calls(["llm"] * 4, ["p"] * 4, [None] * 4, run="unlogged")], how="vertical_relaxed")
    got = {r["run_id"]: (r["kind"], r["change"])
           for r in pl.concat([detect_loops(ev), detect_loops(llm)]).iter_rows(named=True)}
    assert got == {
        "pages": ("same_action", "arguments"), "polls": ("same_action", "results"),
        "blind": ("same_action", "unrecorded"), "no_reply": ("same_action", "unrecorded"),
        "stuck": ("exact", None), "failing": ("error_retry", None), "handoffs": ("same_action", "unrecorded"),
        "sampled": ("same_action", "results"), "unlogged": ("same_action", "unrecorded"),
    }
    summ = loop_summary(detect_loops(ev))
    assert dict(summ.select("run_id", "worst_change").rows())["polls"] == "results"
    from driftwatch.scoring import score_runs_from_runs

    runs = score_runs_from_runs(dw.run_features(ev), loops=summ, policy=dw.Policy(review=0.01))
    reasons = {r: next(x for x in rs if x.startswith("loop:")) for r, rs in runs.select("run_id", "reasons").rows()}
    assert "(hand-off ping-pong; arguments not recorded)" in reasons["handoffs"]
    assert "(same tools, changing results)" in reasons["polls"]
    assert "(same tools, changing arguments)" in reasons["pages"]
    assert "(same tools; arguments or results not recorded)" in reasons["blind"]


@pytest.mark.parametrize(
    "args",
    [
        [f"system prompt. {'turn ' * i}" for i in range(6)],  # the conversation grows
        [None] * 6,  # prompts not recorded
        [""] * 6,
    ],
)
def test_llm_steps_in_a_row_without_one_prompt_are_no_loop(args: list[str | None]) -> None:
    assert detect_loops(_calls(["llm"] * 6, args, ["same"] * 6)).is_empty()


def test_llm_prompts_are_compared_after_normalisation_when_fuzzy() -> None:
    ev = _calls(["llm"] * 4, [f"now 2026-10-01T10:00:0{i}Z, do  it" for i in range(4)], ["same"] * 4)
    assert detect_loops(ev).select("kind", "match", "repeats").to_dicts() == [
        {"kind": "exact", "match": "near_duplicate", "repeats": 4}
    ]
    assert detect_loops(ev, fuzzy=False).is_empty()
    # only prompts of one length are compared (a retry re-renders its template)
    ragged = _calls(["llm"] * 4, [f"now 2026-10-01T10:00:0{i}{'.5' * (i % 2)}Z" for i in range(4)], ["same"] * 4)
    assert detect_loops(ragged).is_empty()


def test_a_chat_log_reads_no_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLM steps only, the conversation growing every turn (a chat bot's log): no loop, and no
    prompt is hashed or normalised (their lengths differ), eager or lazy."""
    import driftwatch.loops as loops_mod

    turns = [f"system: be brief.{' user: more' * i}" for i in range(40)]
    ev = pl.concat([_calls(["llm"] * 40, turns, [f"reply {i}" for i in range(40)], run=f"c{r}") for r in range(50)])
    read: list[int] = []
    real = loops_mod._TextSource.args
    monkeypatch.setattr(loops_mod._TextSource, "args", lambda self, f, pos: read.append(pos.size) or real(self, f, pos))
    monkeypatch.setattr(loops_mod, "normalize", lambda t: pytest.fail("normalised a prompt"))
    assert detect_loops(ev).is_empty() and detect_loops(ev.lazy()).is_empty()
    assert read == []


def test_llm_repeats_need_min_repeats_calls_in_a_row() -> None:
    two = _calls(["llm", "llm", "search", "llm", "llm"], ["p", "p", "q", "p", "p"], ["a", "a", "r", "a", "a"])
    assert detect_loops(two).is_empty()
    assert detect_loops(two, min_repeats=2).height == 2


def test_llm_loop_inside_a_tool_loop() -> None:
    # inside the waste of an exact tool loop: part of it
    seq = ["llm", "search", "llm", "search", "llm", "llm", "llm", "search", "llm", "search"]
    args = ["a", "q", "b", "q", "c", "c", "c", "q", "d", "q"]
    res = ["s", "r", "s", "r", "x", "x", "x", "r", "s", "r"]
    out = detect_loops(_calls(seq, args, res))
    assert out.select("pattern", "kind").to_dicts() == [{"pattern": "search", "kind": "exact"}]
    # inside an action-level loop (the arguments change): both are reported
    args2 = ["a", "q1", "b", "q2", "c", "c", "c", "q3", "d", "q4"]
    out = detect_loops(_calls(seq, args2, res))
    assert out.select("pattern", "kind").to_dicts() == [
        {"pattern": "search", "kind": "same_action"}, {"pattern": "llm", "kind": "exact"}
    ]


def test_llm_loops_do_not_depend_on_input_order_or_laziness() -> None:
    ev = pl.concat([
        _calls(["llm"] * 4, [f"now 2026-10-01T10:00:0{i}Z do it" for i in range(4)], ["same"] * 4, run="a"),
        _calls(["llm", "search", "llm", "llm", "llm", "llm", "search", "llm"],
               ["p0", "q", "p1", "p1", "p1", "p1", "q2", "p2"],
               ["call search", "r", "bad", "bad", "bad", "call search", "r2", "final"], run="b"),
        _calls(["llm"] * 5 + ["x"], ["p"] * 5 + ["y"], ["e"] * 5 + ["z"], ["error"] * 5 + ["ok"], run="c"),
    ])
    want = detect_loops(ev)
    assert want.height == 3
    assert detect_loops(ev.lazy()).equals(want)
    assert detect_loops(ev.sample(fraction=1.0, shuffle=True, seed=3)).equals(want)
    # a run split in two blocks (read apart, as a run crossing midnight)
    split = pl.concat([ev.filter(pl.col("step") > 2), ev.filter(pl.col("step") <= 2)])
    assert detect_loops(split).equals(want)


@pytest.fixture(scope="module")
def llm_fleet() -> synth.Fleet:
    scenario = synth.Scenario(llm_retry_rate=0.04, llm_sampling_rate=0.04)
    return synth.generate(days=6, runs_per_day=300, seed=17, scenario=scenario)


def test_fleet_llm_retries_precision_recall_and_localisation(llm_fleet: synth.Fleet) -> None:
    truth = llm_fleet.truth["loops"].filter(pl.col("pattern") == "llm").with_columns(
        pl.col("kind").str.strip_prefix("llm_").alias("want")
    )
    assert truth.height >= 40 and set(truth["want"]) == {"exact", "error_retry"}
    found = detect_loops(llm_fleet.events).filter((pl.col("pattern") == "llm") & (pl.col("kind") != "same_action"))
    got = truth.join(found, on="run_id", how="full", suffix="_d")
    tp = got.filter(pl.col("want") == pl.col("kind_d"))
    assert tp.height / found.height >= 0.95  # precision
    assert tp.height / truth.height >= 0.95  # recall
    exact = tp.filter((pl.col("start_step") == pl.col("start_step_d")) & (pl.col("end_step") == pl.col("end_step_d"))
                      & (pl.col("repeats") == pl.col("repeats_d")))
    assert exact.height / tp.height >= 0.95


def test_fleet_llm_sampling_is_never_severe(llm_fleet: synth.Fleet) -> None:
    benign = llm_fleet.truth["benign"].filter(pl.col("kind") == "llm_sampling")
    assert benign.height >= 40
    llm = detect_loops(llm_fleet.events).filter(pl.col("pattern") == "llm")
    loops = llm.join(benign.select("run_id", "start_step", "end_step"), on=["run_id", "start_step", "end_step"])
    assert set(loops["kind"]) == {"same_action"} and set(loops["match"]) == {"prompt"}
    assert set(llm.filter(pl.col("kind") == "same_action")["run_id"]) <= set(benign["run_id"])
    assert loops.height / benign.height >= 0.95  # reported, with their extent


def test_a_run_with_tool_and_llm_loops_beside_a_run_out_of_order() -> None:
    """The part of the frame read in place returned a frame (tool and LLM loops both) where the
    concatenation with the re-sorted part expected columns: ColumnNotFoundError "r1" not found,
    in detect_loops, `driftwatch loops` and the audit alike (a run crossing midnight suffices)."""
    r1 = pl.DataFrame({"run_id": ["r1"] * 6, "step": [1, 2, 3, 4, 5, 6],
                       "action": ["search"] * 3 + ["llm"] * 3, "args": ["q"] * 3 + ["p"] * 3,
                       "result": ["x"] * 3 + ["y"] * 3})
    r2 = pl.DataFrame({"run_id": ["r2"] * 3, "step": [3, 1, 2], "action": ["get"] * 3, "args": ["a"] * 3,
                       "result": ["z"] * 3})
    for ev in (pl.concat([r1, r2]), pl.concat([r1, r2]).lazy()):
        got = dw.detect_loops(ev).select("run_id", "pattern", "kind", "start_step", "end_step").rows()
        assert got == [("r1", "search", "exact", 1, 3), ("r1", "llm", "exact", 4, 6), ("r2", "get", "exact", 1, 3)]


def test_loop_summary_counts_each_wasted_step_once() -> None:
    """An exact loop inside the action-level loop around it: summed, a run of 11 steps, 1,100
    tokens and $0.11 'wasted' 12 steps, 1,200 tokens and $0.12, and its reason said so."""
    ev = pl.DataFrame({"run_id": ["r"] * 11, "step": list(range(1, 12)), "action": ["search"] * 11,
                       "args": ["q"] * 3 + [f"q {i}" for i in range(1, 9)],
                       "result": ["same"] * 3 + [f"res {i}" for i in range(1, 9)],
                       "input_tokens": [100] * 11, "output_tokens": [0] * 11, "cost_usd": [0.01] * 11})
    loops = dw.detect_loops(ev)
    assert loops.select("kind", "start_step", "end_step", "wasted_steps").rows() == [
        ("exact", 1, 3, 2), ("same_action", 1, 11, 10)]
    s = dw.loop_summary(loops).row(0, named=True)
    assert (s["n_loops"], s["wasted_steps"], s["wasted_tokens"]) == (2, 10, 1000)
    assert s["wasted_cost_usd"] == pytest.approx(0.10)
    assert "10 wasted steps, $0.10" in dw.score_runs(ev, loops=loops)["reasons"][0][0]
    # loops that overlap in part: the later one keeps its steps past the earlier one's end
    part = pl.DataFrame({"run_id": ["r", "r"], "agent": "a", "kind": "exact", "pattern": ["x", "y"], "repeats": 3,
                         "start_step": [1, 5], "end_step": [9, 14], "wasted_steps": [6, 6],
                         "wasted_tokens": [60, 60], "wasted_cost_usd": [0.6, 0.6]})
    s = dw.loop_summary(part).row(0, named=True)  # waste 4..9 and 9..14: 9 is counted once
    assert (s["wasted_steps"], s["wasted_tokens"]) == (11, 110) and s["wasted_cost_usd"] == pytest.approx(1.1)
    # without end_step (a hand-made table) the waste is summed as given
    assert dw.loop_summary(part.drop("end_step"))["wasted_steps"].item() == 12
    # steps numbered in tens, or with a gap (a rejected step): the waste starts where the loop says
    for steps in ([10 * i for i in range(1, 12)], [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12]):
        numbered = ev.with_columns(pl.Series("step", steps))
        loops = dw.detect_loops(numbered)
        assert loops["waste_start_step"].to_list() == [steps[1], steps[1]]
        s = dw.loop_summary(loops).row(0, named=True)
        assert (s["wasted_steps"], s["wasted_tokens"]) == (10, 1000), steps


def test_a_user_column_named_like_an_internal_one_is_not_ours() -> None:
    ev = pl.DataFrame({"run_id": ["r"] * 6, "step": [1, 2, 3, 4, 5, 6], "action": ["a", "b"] * 3,
                       "args": ["x"] * 6, "result": ["y"] * 6}).with_row_index("_row")
    assert dw.detect_loops(ev.lazy()).select("pattern", "kind").rows() == [("a > b", "exact")]
