"""Escalation scores: known answers on generated fleets, hand-built cases per component, the model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sklearn.metrics import roc_auc_score

import driftwatch as dw
from driftwatch.errors import InputError, InvalidParameterError
from driftwatch.policy import Policy, check_delegation, check_policy
from driftwatch.scoring import COMPONENTS, EscalationModel, fit_escalation, score_runs, score_runs_from_runs

T0 = datetime(2026, 10, 1, tzinfo=UTC)
NO_LOOPS = pl.DataFrame()


def loops_from_truth(truth: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """A loop summary in the interface's shape, built from the generator's truth tables.

    Severity follows the loop detector's documented rule: ``0.5 + 0.5 * intensity`` for
    exact / error_retry loops, ``0.3 * intensity`` for same_action (paging, polling).
    """
    intensity = 1.0 - 2.0 ** (-(pl.col("worst_repeats").cast(pl.Float64) - 1.0) / 3.0)
    lt = truth["loops"].select(
        "run_id",
        "agent",
        pl.lit(1, dtype=pl.Int64).alias("n_loops"),
        pl.when(pl.col("kind") == "error_retry").then(pl.lit("error_retry")).otherwise(pl.lit("exact"))
        .alias("worst_kind"),
        pl.col("pattern").alias("worst_pattern"),
        pl.col("repeats").alias("worst_repeats"),
        (pl.col("period_steps") * (pl.col("repeats") - 1)).alias("wasted_steps"),
        pl.lit(0, dtype=pl.Int64).alias("wasted_tokens"),
        pl.lit(0.0).alias("wasted_cost_usd"),
    )
    bn = truth["benign"].select(
        "run_id",
        "agent",
        pl.lit(1, dtype=pl.Int64).alias("n_loops"),
        pl.lit("same_action").alias("worst_kind"),
        pl.col("action").alias("worst_pattern"),
        ((pl.col("end_step") - pl.col("start_step") + 1) // 2).alias("worst_repeats"),
        pl.lit(0, dtype=pl.Int64).alias("wasted_steps"),
        pl.lit(0, dtype=pl.Int64).alias("wasted_tokens"),
        pl.lit(0.0).alias("wasted_cost_usd"),
    )
    both = pl.concat([lt, bn], how="vertical_relaxed").unique("run_id", keep="first")
    return both.with_columns(
        pl.when(pl.col("worst_kind") == "same_action")
        .then(0.3 * intensity)
        .otherwise(0.5 + 0.5 * intensity)
        .alias("loop_severity")
    )


@pytest.fixture(scope="module")
def fleet():
    from driftwatch import synth

    # the demo scenario, with more delegation chains than its 0.1 a day
    return synth.generate(days=10, runs_per_day=300, seed=7, scenario=synth.Scenario(delegation_chains_per_day=0.5))


@pytest.fixture(scope="module")
def scored(fleet) -> pl.DataFrame:
    out = score_runs(fleet.events, loops=loops_from_truth(fleet.truth))
    return out.join(fleet.truth["runs"].select("run_id", "needs_human", "injected"), on="run_id", how="left")


# --------------------------------------------------------------------------- generated fleets


def test_every_run_scored_once_with_contract_columns(fleet, scored: pl.DataFrame) -> None:
    assert scored["run_id"].n_unique() == scored.height == fleet.events["run_id"].n_unique()
    assert scored["needs_human"].null_count() == 0
    for c in ("run_id", "agent", "n_steps", "cost_usd", "score", "level", "reasons", "first_ts", "last_ts"):
        assert c in scored.columns
    assert scored.schema["reasons"] == pl.List(pl.String)
    assert scored["score"].is_between(0.0, 1.0).all()
    assert set(scored["level"]) <= {"ok", "review", "escalate"}


def test_auroc_against_needs_human(scored: pl.DataFrame) -> None:
    auc = roc_auc_score(scored["needs_human"].to_numpy(), scored["score"].to_numpy())
    assert auc >= 0.97, auc


def test_every_unapproved_destructive_run_escalated(scored: pl.DataFrame) -> None:
    unap = scored.filter(pl.col("injected").list.contains("unapproved_destructive"))
    assert unap.height >= 5
    assert (unap["level"] == "escalate").all()
    # "delete_ticket without approval", "... (approval refused)" when a person said no
    assert unap["reasons"].list.first().str.contains(r"^delete_\w+ without approval( \(approval refused\))?$").all()


def test_few_clean_runs_above_ok(scored: pl.DataFrame) -> None:
    clean = scored.filter(~pl.col("needs_human"))
    share = (clean["level"] != "ok").mean()
    assert share < 0.03, share
    # benign repetition (paging, polling) alone stays ok
    benign = clean.filter(pl.col("injected").list.set_intersection(["pagination", "polling"]).list.len() > 0)
    assert benign.height > 100
    assert (benign["level"] == "ok").mean() > 0.97


def test_reasons_exactly_for_runs_above_ok(scored: pl.DataFrame) -> None:
    above = scored.filter(pl.col("level") != "ok")
    assert (above["reasons"].list.len() >= 1).all()
    assert (scored.filter(pl.col("level") == "ok")["reasons"].list.len() == 0).all()


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        ("loop:exact", "loop: "),
        ("loop:error_retry", "loop: "),
        ("cost_spike", "tokens "),
        ("low_confidence", "lowest confidence"),
        ("unknown_tool", "tool cannot run: lookup_order_history"),
        ("delegation_chain", "delegation depth"),
    ],
)
def test_each_injected_problem_is_explained(scored: pl.DataFrame, flag: str, needle: str) -> None:
    runs = scored.filter(pl.col("injected").list.contains(flag) & pl.col("needs_human"))
    assert runs.height > 0
    assert (runs["level"] != "ok").all()
    assert runs["reasons"].list.eval(pl.element().str.contains(needle, literal=True).any()).list.first().all()


def test_deterministic_with_a_seed(fleet) -> None:
    loops = loops_from_truth(fleet.truth)
    a = score_runs(fleet.events, loops=loops, random_state=3)
    b = score_runs(fleet.events.sample(fraction=1.0, shuffle=True, seed=2).lazy(), loops=loops, random_state=3)
    assert a.equals(b)


def test_fleet_stage_from_chunked_tables_matches_events(fleet) -> None:
    ev = fleet.events
    loops = loops_from_truth(fleet.truth)
    key = pl.col("run_id").hash(seed=1) % 4
    chunks = [ev.filter(key == k) for k in range(4)]
    feats = pl.concat([dw.run_features(c) for c in chunks])
    viol = pl.concat([check_policy(c, delegation=False) for c in chunks])
    viol = pl.concat([viol, check_delegation(feats)])
    fleet_stage = score_runs_from_runs(feats, loops=loops, violations=viol)
    # float sums may differ in the last bits between chunkings
    assert_frame_equal(fleet_stage, score_runs(ev, loops=loops))
    # delegation is derived from the run table when the violations have none
    no_deleg = score_runs_from_runs(feats, loops=loops, violations=viol.filter(pl.col("rule") != "delegation_depth"))
    assert_frame_equal(no_deleg, fleet_stage)


def test_end_to_end_with_the_loop_detector(fleet) -> None:
    pytest.importorskip("driftwatch.loops")
    out = score_runs(fleet.events)  # loops=None: detect_loops + loop_summary
    j = out.join(fleet.truth["runs"].select("run_id", "needs_human"), on="run_id")
    auc = roc_auc_score(j["needs_human"].to_numpy(), j["score"].to_numpy())
    assert auc >= 0.97, auc
    clean = j.filter(~pl.col("needs_human"))
    assert (clean["level"] != "ok").mean() < 0.03


def test_stable_fleet_is_almost_all_ok() -> None:
    """Nothing injected (paging, polling, weekly swings, diurnal traffic only): next to nothing to review."""
    from driftwatch import synth

    calm = synth.generate(days=6, runs_per_day=300, seed=4, scenario=synth.Scenario.stable())
    out = score_runs(calm.events, loops=loops_from_truth(calm.truth))
    assert (out["level"] != "ok").mean() < 0.01
    # the only escalations a calm fleet can have are its rare natural low-confidence steps
    esc = out.filter(pl.col("level") == "escalate")
    assert esc["reasons"].list.first().str.starts_with("lowest confidence").all()


# --------------------------------------------------------------------------- hand-built


def run(run_id: str, actions: list[str], *, agent: str = "billing", start: int = 0, **cols: list) -> pl.DataFrame:
    n = len(actions)
    data: dict = {
        "run_id": [run_id] * n,
        "step": list(range(1, n + 1)),
        "ts": [T0 + timedelta(minutes=start, seconds=i) for i in range(n)],
        "action": actions,
        "agent": [agent] * n,
    }
    data.update(cols)
    return pl.DataFrame(data)


def baseline(agent: str, n_runs: int, steps: int, *, cost: float = 0.01, seed: int = 0) -> pl.DataFrame:
    """``n_runs`` ordinary runs of an agent with a little variation in length and cost."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_runs):
        k = int(steps + rng.integers(-2, 3))
        acts = ["llm", "get_x"] * (k // 2) + ["llm"]
        c = cost * float(rng.uniform(0.8, 1.25)) / len(acts)
        frames.append(
            run(f"{agent}-{i:03d}", acts, agent=agent, start=i, cost_usd=[c] * len(acts),
                input_tokens=[500] * len(acts), status=["ok"] * len(acts), confidence=[0.9] * len(acts))
        )
    return pl.concat(frames, how="vertical_relaxed")


def score(ev: pl.DataFrame, **kw) -> pl.DataFrame:
    kw.setdefault("loops", NO_LOOPS)
    return score_runs(ev, **kw)


def summary_row(run_id: str, kind: str, pattern: str, repeats: int, wasted: int, cost: float, sev: float):
    return pl.DataFrame({
        "run_id": [run_id], "agent": ["billing"], "n_loops": [1], "worst_kind": [kind], "worst_pattern": [pattern],
        "worst_repeats": [repeats], "wasted_steps": [wasted], "wasted_tokens": [0], "wasted_cost_usd": [cost],
        "loop_severity": [sev],
    })


def test_loop_reason_format() -> None:
    ev = baseline("billing", 30, 10)
    loops = summary_row("billing-004", "exact", "search > read", 9, 14, 0.21, 0.9)
    out = score(ev, loops=loops).filter(pl.col("run_id") == "billing-004")
    assert out["reasons"][0].to_list()[0] == "loop: search > read repeated 9x, 14 wasted steps, $0.21"
    assert out["level"][0] == "escalate"


@pytest.mark.parametrize(("share", "note"), [(None, " (failing each time)"), (1.0, " (failing each time)"),
                                             (0.5, " (50% of the calls failing)"),
                                             (0.999, " (99% of the calls failing)")])
def test_retry_reason_says_how_many_calls_failed(share: float | None, note: str) -> None:
    """An error_retry loop needs only error_share of its calls to fail: its reason does not say
    "each time" when some succeeded."""
    ev = baseline("billing", 30, 10)
    loops = summary_row("billing-004", "error_retry", "api", 6, 5, 0.05, 0.9).with_columns(
        pl.lit(share, pl.Float64).alias("worst_error_share"))
    out = score(ev, loops=loops).filter(pl.col("run_id") == "billing-004")
    assert out["reasons"][0][0] == f"loop: api repeated 6x{note}, 5 wasted steps, $0.05"


def test_retry_reason_from_detect_loops() -> None:
    calls = [("api", f"a{i}", "boom" if s == "error" else "ok", s)
             for i, s in enumerate(["error", "error", "ok", "error", "ok", "ok"])]
    rows = [{"run_id": "r", "step": i + 1, "action": a, "args": x, "result": r, "status": s, "cost_usd": 0.01}
            for i, (a, x, r, s) in enumerate(calls)]
    ev = pl.concat([baseline("billing", 30, 10), pl.DataFrame(rows)], how="diagonal_relaxed")
    loops = dw.detect_loops(ev)
    assert loops.filter(pl.col("run_id") == "r")["kind"].to_list() == ["error_retry"]
    reasons = score(ev, loops=loops).filter(pl.col("run_id") == "r")["reasons"][0].to_list()
    assert any("(50% of the calls failing)" in r for r in reasons), reasons


def test_same_action_loop_alone_never_escalates() -> None:
    ev = baseline("billing", 30, 10)
    loops = summary_row("billing-004", "same_action", "list_invoices", 30, 40, 0.5, 1.0)
    out = score(ev, loops=loops).filter(pl.col("run_id") == "billing-004")
    assert out["level"][0] == "review"
    assert out["score"][0] < Policy().escalate
    # (a summary that does not say what changed between the repeats: neutral wording)
    assert out["reasons"][0][0] == "loop: list_invoices repeated 30x (same tools only), 40 wasted steps, $0.50"


@pytest.mark.parametrize(("change", "note"), [
    ("arguments", " (same tools, changing arguments)"),
    ("results", " (same tools, changing results)"),
    ("unrecorded", " (same tools; arguments or results not recorded)"),
    (None, " (same tools only)"),
])
def test_same_action_reason_says_what_changed(change: str | None, note: str) -> None:
    """A same_action loop's reason said "(same tools, changing arguments)" whatever the calls
    recorded, arguments never logged included; it says what the summary's ``worst_change`` says
    changed between the repeats, and makes no claim without it."""
    ev = baseline("billing", 30, 10)
    loops = summary_row("billing-004", "same_action", "get_status", 5, 4, 0.0, 0.5).with_columns(
        pl.lit(change, pl.String).alias("worst_change"))
    out = score(ev, loops=loops).filter(pl.col("run_id") == "billing-004")
    assert out["reasons"][0][0] == f"loop: get_status repeated 5x{note}, 4 wasted steps"
    assert "worst_change" not in out.columns  # (read for the reason only)


def test_loop_reason_claims_no_arguments_that_were_not_recorded() -> None:
    """Events without an ``args`` column: the repeated status checks are a same_action loop, and
    its reason said "(same tools, changing arguments)" though no argument was ever recorded."""
    ev = pl.DataFrame({"run_id": ["r"] * 4, "step": [1, 2, 3, 4],
                       "action": ["get_status", "get_status", "get_status", "delete_job"]})
    reasons = dw.score_runs(ev)["reasons"][0].to_list()
    loop = [r for r in reasons if r.startswith("loop: ")]
    assert loop and "changing arguments" not in loop[0], reasons
    assert loop[0].startswith("loop: get_status repeated 3x (same tools"), reasons


def test_loops_accept_detect_loops_output() -> None:
    pytest.importorskip("driftwatch.loops")
    ev = baseline("billing", 30, 10)
    raw = pl.DataFrame({
        "run_id": ["billing-001"], "agent": ["billing"], "start_step": [1], "end_step": [18], "period": [2],
        "repeats": [9], "pattern": ["search > read"], "kind": ["exact"], "wasted_steps": [14],
        "wasted_tokens": [100], "wasted_cost_usd": [0.21],
    })
    out = score(ev, loops=raw).filter(pl.col("run_id") == "billing-001")
    assert out["reasons"][0][0].startswith("loop: search > read repeated 9x")


def test_unapproved_destructive_escalates_even_with_lenient_thresholds() -> None:
    ev = pl.concat([baseline("billing", 30, 10),
                    run("bad", ["llm", "delete_invoice", "llm"], approved=[None, False, None])],
                   how="diagonal_relaxed")
    out = score(ev, policy=Policy(review=0.98, escalate=0.99)).filter(pl.col("run_id") == "bad")
    assert out["level"][0] == "escalate" and out["score"][0] == 1.0
    assert out["reasons"][0][0] == "delete_invoice without approval (approval refused)"


def flat_runs(n_steps: int = 3, n_runs: int = 40, **odd: list) -> pl.DataFrame:
    """``n_runs`` identical runs of one agent (``get_x`` x ``n_steps``, $0.01 and confidence 0.6 a
    step) and run ``odd`` like them but for the columns (or, with ``steps``, the length) given."""
    steps = odd.pop("steps", n_steps)
    frames = [run(f"r{i:02d}", ["get_x"] * n_steps, agent="a", start=i, cost_usd=[0.01] * n_steps,
                  status=["ok"] * n_steps, confidence=[0.6] * n_steps) for i in range(n_runs)]
    cols = {"cost_usd": [0.01] * steps, "status": ["ok"] * steps, "confidence": [0.6] * steps, **odd}
    frames.append(run("odd", ["get_x"] * steps, agent="a", start=n_runs, **cols))
    return pl.concat(frames, how="vertical_relaxed")


@pytest.mark.parametrize("odd", [{"steps": 2}, {"cost_usd": [0.001] * 3}, {"confidence": [0.99] * 3},
                                 {"steps": 1, "cost_usd": [0.0001]}])
def test_a_run_only_shorter_or_cheaper_is_not_unusual(odd: dict) -> None:
    """The one-sided anomaly features (steps, cost, ..., lowest confidence) were floored at z = -3,
    still far from a pack of identical runs: a run that was merely shorter, cheaper or more
    confident than its agent's others was isolated at once and put at review ("unusual run ...
    most unusual: steps z -4.1"). A deviation in the harmless direction now counts as none."""
    out = score(flat_runs(**odd))
    assert (out["level"] == "ok").all(), out.filter(pl.col("level") != "ok").select("run_id", "reasons").rows()
    assert out["score_anomaly"].max() == 0.0 and out["anomaly"].max() < 0.62


def test_unusual_run_reason_quotes_the_z_the_forest_saw() -> None:
    """The anomaly reason quoted the raw robust z-score ("cost z -20.5", "tool error rate z 20.0")
    where the forest saw a clipped one: it quotes what the forest saw, "≥ 10" at the clip, with
    the feature's own sign."""
    for odd in ({"status": ["error"] * 3}, {"steps": 2, "status": ["error"] * 2}):  # (short too: still unusual)
        failing = score(flat_runs(**odd)).filter(pl.col("run_id") == "odd")
        assert failing["score_anomaly"][0] > 0
        assert any(r.endswith("most unusual: tool error rate z ≥ 10)") for r in failing["reasons"][0]), odd
    unsure = score(flat_runs(confidence=[0.35] * 3)).filter(pl.col("run_id") == "odd")  # (0.35 - 0.6) / 0.05
    assert any(r.endswith("most unusual: confidence z -5.0)") for r in unsure["reasons"][0]), unsure["reasons"][0]


def test_cost_ceiling_reason_and_order() -> None:
    ev = pl.concat([baseline("billing", 30, 10),
                    run("pricey", ["llm", "get_x", "llm"], cost_usd=[0.6, 0.0, 0.7], confidence=[0.2, None, 0.9])],
                   how="diagonal_relaxed")
    out = score(ev).filter(pl.col("run_id") == "pricey")
    reasons = out["reasons"][0].to_list()
    assert reasons[0] == "cost $1.30 > ceiling $0.50"  # 2.6x the ceiling outweighs confidence 0.20
    assert "lowest confidence 0.20 < 0.30" in reasons
    assert any(r.startswith("cost $1.30 vs billing median") for r in reasons)


def test_robust_z_is_per_agent() -> None:
    # research runs are always long, billing runs short: neither is flagged for its own length
    ev = pl.concat([baseline("billing", 40, 8, seed=1), baseline("research", 40, 40, cost=0.05, seed=2)])
    out = score(ev)
    assert (out["level"] == "ok").all()
    assert out["steps_z"].abs().max() < 3
    # a billing run as long as a research run is flagged, with the agent's median in the reason
    long = run("long", ["llm", "get_x"] * 20 + ["llm"], agent="billing", start=999,
               cost_usd=[0.01 / 41] * 41, status=["ok"] * 41, confidence=[0.9] * 41, input_tokens=[500] * 41)
    out = score(pl.concat([ev, long], how="diagonal_relaxed")).filter(pl.col("run_id") == "long")
    assert out["level"][0] != "ok"
    assert any(r.startswith("41 steps vs billing median") for r in out["reasons"][0])


def test_error_storm() -> None:
    acts = ["llm", "get_a", "llm", "get_b", "llm", "get_c", "llm", "get_d", "llm", "get_e", "llm"]
    status = ["ok", "error"] * 5 + ["ok"]
    ev = pl.concat([baseline("billing", 30, 10), run("storm", acts, status=status)], how="diagonal_relaxed")
    out = score(ev).filter(pl.col("run_id") == "storm")
    assert out["score_errors"][0] == pytest.approx(0.48)
    assert "error storm: 5 of 5 tool calls failed" in out["reasons"][0].to_list()


def test_llm_error_storm_is_told_apart_from_tool_errors() -> None:
    """Failed LLM calls (rate limits, unparseable output, retried) are an error storm of their
    own: counted against the LLM calls, not against the run's (here: zero) tool calls."""
    acts = ["llm"] * 12
    status = ["error"] * 11 + ["ok"]
    base = baseline("billing", 30, 10)
    ev = pl.concat([base, run("llm-storm", acts, status=status)], how="diagonal_relaxed")
    out = score(ev).filter(pl.col("run_id") == "llm-storm")
    assert out["n_tool_errors"][0] == 0 and out["n_errors"][0] == 11
    assert out["error_rate_tool"][0] == 0.0  # no tool call failed (it read 11 / 1 before)
    assert out["score_errors"][0] == pytest.approx(0.6)
    assert "error storm: 11 of 12 LLM calls failed" in out["reasons"][0].to_list()
    # mixed: the worse of the two is told; tool failures alone score as before
    mixed = ["llm", "get_a", "llm", "get_b", "llm", "get_c", "llm", "get_d"]
    ev = pl.concat([base, run("mixed", mixed, status=["error", "error", "ok", "error", "ok", "error", "ok", "ok"])],
                   how="diagonal_relaxed")
    out = score(ev).filter(pl.col("run_id") == "mixed")
    assert (out["n_tool_errors"][0], out["n_errors"][0]) == (3, 4)
    assert out["score_errors"][0] == pytest.approx(0.6 * 0.4)  # 3 of 4 tool calls: rate 0.75, (3 - 1) / 5
    assert "error storm: 3 of 4 tool calls failed" in out["reasons"][0].to_list()


@pytest.mark.parametrize("seed", [3, 4])
def test_llm_failure_storms_on_a_generated_fleet(seed: int) -> None:
    """Known answers: runs whose model calls keep failing are flagged with the LLM error storm
    (recall 1), and no other run is told its LLM calls failed (precision 1)."""
    fleet = dw.synth.generate(days=4, runs_per_day=150, seed=seed,
                              scenario=dw.synth.Scenario.stable(llm_failure_rate=0.05))
    storm = fleet.truth["runs"].filter(pl.col("injected").list.contains("llm_failures"))["run_id"]
    assert storm.len() >= 8
    runs = dw.audit(fleet.events).runs.with_columns(
        pl.col("reasons").list.eval(pl.element().str.contains("LLM calls failed")).list.any().alias("_told")
    )
    hit = pl.col("run_id").is_in(storm.implode())
    assert runs.filter(hit)["_told"].all() and (runs.filter(hit)["level"] != "ok").all()
    assert not runs.filter(~hit)["_told"].any()


@pytest.mark.parametrize("seed", [5, 6])
def test_llm_retries_on_a_generated_fleet(seed: int) -> None:
    """Known answers: runs that send one prompt to the model again and again are flagged with
    the loop reason (recall 1); runs that sample answers to one prompt are not told so."""
    sc = dw.synth.Scenario.stable(llm_retry_rate=0.05, llm_sampling_rate=0.05)
    fleet = dw.synth.generate(days=4, runs_per_day=150, seed=seed, scenario=sc)
    injected = fleet.truth["runs"].explode("injected")
    retries = injected.filter(pl.col("injected").str.starts_with("loop:llm_"))["run_id"]
    sampling = injected.filter(pl.col("injected") == "llm_sampling")["run_id"]
    assert retries.len() >= 8 and sampling.len() >= 8
    runs = dw.audit(fleet.events).runs.with_columns(
        pl.col("reasons").list.eval(pl.element().str.starts_with("loop: the same prompt sent to the LLM"))
        .list.any().alias("_told")
    )
    hit = runs.filter(pl.col("run_id").is_in(retries.implode()))
    assert hit.height == retries.len() and hit["_told"].all() and (hit["level"] != "ok").all()
    benign = runs.filter(pl.col("run_id").is_in(sampling.implode()))
    assert not benign["_told"].any() and (benign["level"] == "ok").all()


def test_features_without_tool_error_counts_score_as_before() -> None:
    """Per-run features from before ``n_tool_errors`` (e.g. an audit history) count every failure
    as a tool call's, as then."""
    acts = ["llm", "get_a", "llm", "get_b", "llm", "get_c", "llm", "get_d", "llm", "get_e", "llm"]
    ev = pl.concat([baseline("billing", 30, 10), run("storm", acts, status=["ok", "error"] * 5 + ["ok"])],
                   how="diagonal_relaxed")
    feats = dw.run_features(ev)
    new = score_runs_from_runs(feats, loops=dw.detect_loops(ev), violations=dw.check_policy(ev))
    old = score_runs_from_runs(feats.drop("n_tool_errors"), loops=dw.detect_loops(ev), violations=dw.check_policy(ev))
    assert_frame_equal(new.drop("n_tool_errors"), old)


def test_retries_breach_and_unknown_tool() -> None:
    acts = ["llm", "search_kb", "llm", "search_kb", "llm", "search_kb", "llm", "search_kb", "llm", "search_kb"]
    status = ["ok", "error"] * 5
    ev = pl.concat([
        baseline("billing", 30, 10),
        run("retry", acts, status=status),
        run("unk", ["llm", "lookup", "llm"], status=["ok", "error", "ok"],
            result=["x", "Error: unknown tool 'lookup'", "y"]),
    ], how="diagonal_relaxed")
    out = score(ev, policy=Policy(max_consecutive_retries=2))
    r = out.filter(pl.col("run_id") == "retry")
    assert "search_kb retried 4x in a row after errors > limit 2" in r["reasons"][0].to_list()
    u = out.filter(pl.col("run_id") == "unk")
    assert u["level"][0] != "ok"
    assert u["score_unknown_tool"][0] == 0.5
    assert u["reasons"][0][0] == "tool cannot run: lookup failed: Error: unknown tool 'lookup'"


def test_drift_context_adds_a_reason_only_to_flagged_runs() -> None:
    ev = pl.concat([baseline("billing", 30, 10),
                    run("pricey", ["llm", "llm"], start=5, cost_usd=[0.35, 0.35])], how="diagonal_relaxed")
    drift = pl.DataFrame({
        "series": ["agent=billing"], "window_start": [T0], "window_end": [T0 + timedelta(days=1)],
        "feature": ["action_mix"], "method": ["js"], "statistic": [0.3], "p_value": [0.001], "drifted": [True],
    })
    base = score(ev)
    out = score(ev, drift=drift)
    p = out.filter(pl.col("run_id") == "pricey")
    assert p["score"][0] > base.filter(pl.col("run_id") == "pricey")["score"][0]
    assert p["reasons"][0][-1] == "context: billing drifting in action_mix (js) since 2026-10-01"
    assert (out.filter(pl.col("run_id") != "pricey")["level"] == "ok").all()
    assert (out["score_drift"] == 0.1).all()
    # the reason names the series that drifted, not the run's agent (drift by version, or of the fleet)
    for series, said in (("version=v1", "version=v1"), ("all", "the fleet")):
        other = score(ev.with_columns(pl.lit("v1").alias("version")),
                      drift=drift.with_columns(pl.lit(series).alias("series")))
        why = other.filter(pl.col("run_id") == "pricey")["reasons"][0][-1]
        assert why == f"context: {said} drifting in action_mix (js) since 2026-10-01", why


def test_drift_context_reads_series_whose_values_hold_commas() -> None:
    """The series ``agent="billing,eu"`` was read as the columns ``agent`` and ``eu"``: no run
    matched it and the drift context was silently dropped."""
    ev = pl.concat([baseline("billing", 30, 10),
                    run("pricey", ["llm", "llm"], start=5, cost_usd=[0.35, 0.35])], how="diagonal_relaxed")
    ev = ev.with_columns(pl.lit("billing,eu").alias("agent"))
    drift = pl.DataFrame({
        "series": ['agent="billing,eu"'], "window_start": [T0], "window_end": [T0 + timedelta(days=1)],
        "feature": ["action_mix"], "method": ["js"], "statistic": [0.3], "p_value": [0.001], "drifted": [True],
    })
    why = score(ev, drift=drift).filter(pl.col("run_id") == "pricey")["reasons"][0][-1]
    assert why == 'context: agent="billing,eu" drifting in action_mix (js) since 2026-10-01', why
    # an agent named "all" is that agent, not the fleet
    named_all = score(ev.with_columns(pl.lit("all").alias("agent")), drift=drift.with_columns(series=pl.lit("agent=all")))
    why = named_all.filter(pl.col("run_id") == "pricey")["reasons"][0][-1]
    assert why == "context: all drifting in action_mix (js) since 2026-10-01", why


def test_small_fleets_skip_the_anomaly_model() -> None:
    out = score(run("r", ["llm", "get_x", "llm"]))
    assert out["anomaly"][0] == 0.0 and out["level"][0] == "ok"


def test_input_errors() -> None:
    with pytest.raises(InvalidParameterError, match="run_features output"):
        score_runs_from_runs(pl.DataFrame({"run_id": ["a"]}))
    with pytest.raises(InvalidParameterError, match="loops must be"):
        score(run("r", ["llm"]), loops=pl.DataFrame({"run_id": ["r"], "x": [1]}))
    with pytest.raises(InvalidParameterError, match="drift must be"):
        score(run("r", ["llm"]), drift=pl.DataFrame({"series": ["x"], "drifted": [True]}))
    with pytest.raises(InvalidParameterError, match="model must be"):
        score(run("r", ["llm"]), model=42)


@pytest.mark.parametrize("name", ["violations", "drift"])
@pytest.mark.parametrize("value", ["x", [], "pandas"])
def test_tables_that_are_not_polars_frames_are_refused(name: str, value: object) -> None:
    """A path, a list or a pandas frame for violations= / drift= is refused naming the
    parameter (it failed with AttributeError: 'str' object has no attribute 'height')."""
    ev = run("r", ["llm", "get_x", "llm"])
    if value == "pandas":
        pytest.importorskip("pandas")
        value = ev.to_pandas()
    with pytest.raises(InvalidParameterError, match=rf"^{name} must be a polars DataFrame .*, got "):
        score_runs(ev, loops=pl.DataFrame(), **{name: value})
    with pytest.raises(InvalidParameterError, match=rf"^{name} must be a polars DataFrame"):
        score_runs_from_runs(dw.run_features(ev), **{name: value})


def test_lazy_violations_and_drift_are_accepted() -> None:
    ev = run("r", ["llm", "get_x", "llm"])
    want = score_runs(ev, loops=pl.DataFrame())
    viol = check_policy(ev, Policy())
    got = score_runs(ev, loops=pl.DataFrame(), violations=viol.lazy(), drift=pl.DataFrame().lazy())
    assert_frame_equal(got, want)


def test_components_are_all_reported(scored: pl.DataFrame) -> None:
    for c in COMPONENTS:
        assert scored[f"score_{c}"].is_between(0.0, 1.0).all()
    # the rule score is the noisy-OR of the components
    prod = np.prod([1 - scored[f"score_{c}"].to_numpy() for c in COMPONENTS], axis=0)
    np.testing.assert_allclose(scored["score_rules"].to_numpy(), 1 - prod)


# --------------------------------------------------------------------------- supervised model


@pytest.fixture(scope="module")
def model(scored: pl.DataFrame) -> EscalationModel:
    return fit_escalation(scored, scored.select("run_id", "needs_human"), cv=3)


def test_fit_reports_cross_validated_auroc(model: EscalationModel, capsys) -> None:
    assert 0.95 <= model.cv_auroc_ <= 1.0
    assert len(model.meta["fold_auroc"]) == 3
    assert "cv_auroc=" in repr(model)
    w = model.weights()
    assert set(w) == set(model.feature_names)


def test_fit_verbose_prints_auroc(scored: pl.DataFrame, capsys) -> None:
    fit_escalation(scored, scored["needs_human"], cv=2, verbose=True)
    assert "cross-validated AUROC" in capsys.readouterr().out


def test_model_scores_and_keeps_the_hard_rule(fleet, scored: pl.DataFrame, model: EscalationModel) -> None:
    out = score_runs(fleet.events, loops=loops_from_truth(fleet.truth), model=model)
    j = out.join(scored.select("run_id", "needs_human", "injected"), on="run_id")
    assert roc_auc_score(j["needs_human"].to_numpy(), j["score"].to_numpy()) >= 0.97
    unap = j.filter(pl.col("injected").list.contains("unapproved_destructive"))
    assert (unap["level"] == "escalate").all()
    assert (j.filter(pl.col("level") != "ok")["reasons"].list.len() >= 1).all()
    assert not j["score"].equals(j["score_rules"])


def test_model_save_load_and_policy_reference(tmp_path: Path, fleet, model: EscalationModel) -> None:
    path = model.save(tmp_path / "escalation.pkl")
    back = EscalationModel.load(path)
    sc = score_runs(fleet.events.head(2000), loops=NO_LOOPS, model=model)
    np.testing.assert_allclose(back.predict_proba(sc), model.predict_proba(sc))
    (tmp_path / "policy.toml").write_text('[escalation]\nmodel = "escalation.pkl"\n')
    pol = Policy.from_toml(tmp_path / "policy.toml")
    via_policy = score_runs(fleet.events.head(2000), loops=NO_LOOPS, policy=pol)
    assert via_policy.equals(sc)
    assert score_runs(fleet.events.head(2000), loops=NO_LOOPS, model=str(path)).equals(sc)


def test_model_load_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        EscalationModel.load(tmp_path / "missing.pkl")
    for junk in (b"not a pickle", b"garbage\n", b"\x80\x05K", b"(lp0\nI1\naI2\na."[:-2]):
        (tmp_path / "junk.pkl").write_bytes(junk)  # pickle raises all sorts of errors on these
        with pytest.raises(InputError, match="not a readable driftwatch model"):
            EscalationModel.load(tmp_path / "junk.pkl")
    import pickle

    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(InputError, match="not a driftwatch escalation model"):
        EscalationModel.load(tmp_path / "other.pkl")


def test_fit_from_run_features_and_label_errors(fleet, scored: pl.DataFrame) -> None:
    feats = dw.run_features(fleet.events)
    labels = fleet.truth["runs"].select("run_id", "needs_human")
    m = fit_escalation(feats, labels, cv=2)
    assert 0.5 < m.cv_auroc_ <= 1.0
    with pytest.raises(InvalidParameterError, match="one label per run"):
        fit_escalation(scored, [True, False])
    with pytest.raises(InvalidParameterError, match="have no label"):
        fit_escalation(scored, labels.head(10))
    with pytest.raises(InvalidParameterError, match="at least 7 runs of each class"):
        fit_escalation(scored, pl.Series([False] * (scored.height - 2) + [True, True]))
    with pytest.raises(InvalidParameterError, match="booleans or 0/1"):
        fit_escalation(scored, pl.Series([3] * scored.height))
    with pytest.raises(InvalidParameterError, match="cv must be"):
        fit_escalation(scored, labels, cv=1)


def test_minimal_violation_frames_still_explain_every_flagged_run() -> None:
    ev = pl.concat([
        run("a", ["llm", "delete_x"]),
        run("u", ["llm", "lookup"], status=["ok", "error"], result=[None, "no such tool 'lookup'"]),
    ], how="diagonal_relaxed")
    v = check_policy(ev).select("run_id", "rule", "severity").with_columns(detail=pl.lit(None, dtype=pl.String))
    out = score_runs_from_runs(dw.run_features(ev), violations=v)
    assert out["reasons"].to_list() == [["a destructive action without approval"],
                                        ["unknown tool (component score 0.50)"]]


# --------------------------------------------------------------------------- large-fleet paths


def _z_frame(n: int, seed: int) -> pl.DataFrame:
    """Robust z-scores as _anomaly_scores reads them, with a few unusual runs."""
    from driftwatch.scoring import _ANOMALY_FEATURES

    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(_ANOMALY_FEATURES)))
    z[: n // 50] *= 6.0
    return pl.DataFrame({f"_z_{name}": z[:, j] for j, (name, _, _) in enumerate(_ANOMALY_FEATURES)})


def test_isolation_path_lengths_match_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.ensemble import IsolationForest

    from driftwatch import scoring

    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 10)).astype(np.float32)
    X[:30] *= 6
    forest = IsolationForest(n_estimators=20, max_samples=256, random_state=0).fit(X)
    norm = float(scoring._average_path_length(np.array([forest.max_samples_]))[0])
    sums = scoring._path_length_sums(forest.estimators_, X)
    assert np.array_equal(2.0 ** (-sums / (20 * norm)), -forest.score_samples(X))  # bit for bit
    monkeypatch.setattr(scoring, "_WALK_BLOCK", 500)  # blocks of rows on threads: the same sums
    monkeypatch.setattr(scoring, "_WALK_THREADS", 3)
    assert np.array_equal(scoring._path_length_sums(forest.estimators_, X), sums)


def test_large_fleet_anomaly_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fleets above SCREEN_MIN_RUNS (shrunk here): the re-scored runs are exactly those the screen
    puts at SCREEN_AT or above, they get the full forest's score, the others keep the screen's; the
    seeded fit sample makes the scores reproducible."""
    from driftwatch import scoring

    monkeypatch.setattr(scoring, "SCREEN_MIN_RUNS", 2000)
    monkeypatch.setattr(scoring, "ANOMALY_FIT_RUNS", 3000)
    frame = _z_frame(8000, 1)
    # the second opinion on runs below the median of a one-sided feature only lowers scores at
    # or above ANOMALY_AT, of such runs only
    seconded = scoring._anomaly_scores(frame, 0)
    monkeypatch.setattr(scoring, "ANOMALY_AT", 1.01)  # (the screen's mechanics without it)
    default = scoring._anomaly_scores(frame, 0)
    harmless = frame.select(pl.any_horizontal(pl.col(f"_z_{n}") * o < 0 for n, _, o in scoring._ANOMALY_FEATURES if o))
    asked = harmless.to_series().to_numpy() & (default >= 0.62)
    assert asked.sum() > 0 and (seconded[asked] < default[asked]).any()
    assert (seconded[asked] <= default[asked]).all() and np.array_equal(seconded[~asked], default[~asked])
    monkeypatch.setattr(scoring, "SCREEN_AT", 0.0)
    full = scoring._anomaly_scores(frame, 0)  # every run re-scored
    monkeypatch.setattr(scoring, "SCREEN_AT", 1.01)
    screen = scoring._anomaly_scores(frame, 0)  # none re-scored
    rescored = screen >= 0.5
    assert 0 < rescored.sum() < frame.height
    assert np.array_equal(default[rescored], full[rescored])
    assert np.array_equal(default[~rescored], screen[~rescored])
    assert (full[: 8000 // 50] > np.median(full)).mean() > 0.9  # the unusual runs stand out
    monkeypatch.setattr(scoring, "SCREEN_AT", 0.5)
    assert np.array_equal(scoring._anomaly_scores(frame, 0), default)
    assert not np.array_equal(scoring._anomaly_scores(frame, 1), default)
    monkeypatch.setattr(scoring, "ANOMALY_AT", 0.62)
    assert np.array_equal(scoring._anomaly_scores(frame, 0), seconded)


def test_drift_context_against_a_join_of_every_run() -> None:
    """The segment matching gives what joining every run with every drifted window gives:
    overlapping windows, several features, the fleet series, runs without an agent, windows of
    other series and undrifted rows."""
    from driftwatch.scoring import _drift_context

    rng = np.random.default_rng(4)
    n = 3000
    runs = pl.DataFrame({
        "run_id": [f"r{i:04d}" for i in range(n)],
        "agent": rng.choice(["a", "b", "c", None], n).tolist(),
        "first_ts": [T0 + timedelta(hours=float(h)) for h in rng.uniform(-24, 24 * 9, n)],
    }).with_columns(pl.col("first_ts").cast(pl.Datetime("us", "UTC")))
    day = timedelta(days=1)
    rows = [
        ("agent=a", 0, 3, "error_rate", "chi2", True), ("agent=a", 1, 5, "latency", None, True),
        ("agent=b", 2, 4, "cost", "ks", True), ("agent=b", 0, 8, "cost", "ks", False),
        ("all", 2, 4, "action_mix", "js", True), ("all", 6.2, 6.4, "cost", "ks", True),
        ("agent=null", 0, 9, "steps", "ks", True), ("agent=zzz", 0, 9, "steps", "ks", True),
    ]
    drift = pl.DataFrame(
        [{"series": s, "window_start": T0 + a * day, "window_end": T0 + b * day, "feature": f, "method": m,
          "drifted": d} for s, a, b, f, m, d in rows],
        schema_overrides={"window_start": pl.Datetime("us", "UTC"), "window_end": pl.Datetime("us", "UTC")},
    )
    got = _drift_context(runs, drift)
    assert got is not None and got["run_id"].equals(runs["run_id"])  # aligned with the runs
    d = drift.filter("drifted").with_columns(
        pl.concat_str("feature", pl.lit(" ("), pl.col("method").fill_null("test"), pl.lit(")")).alias("_what"))
    series = [pl.lit("all"), pl.concat_str(pl.lit("agent="), pl.col("agent").fill_null("null"))]
    brute = (
        pl.concat([runs.with_columns(s.alias("series")).join(d, on="series") for s in series])
        .filter((pl.col("first_ts") >= pl.col("window_start")) & (pl.col("first_ts") < pl.col("window_end")))
        .group_by("run_id")
        .agg(pl.col("_what").unique().sort().str.join(", ").alias("_drift_what"),
             pl.col("window_start").min().alias("_drift_since"),
             pl.col("series").unique().sort().str.join(", ").alias("_drift_series"))
    )
    want = runs.select("run_id").join(brute, on="run_id", how="left", maintain_order="left")
    assert got["_drift_what"].dtype == pl.Categorical  # a handful of texts: 4 bytes a run
    assert_frame_equal(got.with_columns(pl.col("_drift_what", "_drift_series").cast(pl.String)), want)
    assert want["_drift_what"].null_count() < n  # some runs match, some do not
    assert want["_drift_what"].null_count() > 0


def test_lookups_by_binary_search_match_joins() -> None:
    from driftwatch.scoring import _with_lookup

    rows = pl.DataFrame({"run_id": [f"r{i:03d}" for i in range(200)], "x": range(200)})
    table = pl.DataFrame({"run_id": ["r150", "r007", "zzz", "r000", "r199"], "v": [1.5, None, 9.0, 0.5, 2.0],
                          "t": ["a", "b", "c", None, "e"], "x": [0, 0, 0, 0, 0]})
    joined = rows.join(table.drop("x"), on="run_id", how="left", maintain_order="left")
    fast = _with_lookup(rows.with_columns(pl.col("run_id").set_sorted()), table, "run_id")
    slow = _with_lookup(rows.sample(fraction=1.0, shuffle=True, seed=1), table, "run_id").sort("run_id")
    assert_frame_equal(fast, joined)  # the existing x keeps its values
    assert_frame_equal(slow, joined)


def test_first_row_per_run_of_a_loop_summary() -> None:
    """One row per run, sorted (as the audit makes it): kept as is; otherwise the first row of each run."""
    from driftwatch.scoring import _first_per_run

    ok = pl.DataFrame({"run_id": ["a", "b", "d"], "loop_severity": [0.1, 0.9, 0.5]})
    assert _first_per_run(ok) is not ok and _first_per_run(ok).equals(ok)
    assert _first_per_run(ok)["run_id"].flags["SORTED_ASC"]
    for messy in (
        pl.DataFrame({"run_id": ["a", "b", "b", "d"], "loop_severity": [0.1, 0.9, 0.2, 0.5]}),  # a run twice
        pl.DataFrame({"run_id": ["b", "a", "d", "b"], "loop_severity": [0.9, 0.1, 0.5, 0.2]}),  # unsorted
        pl.DataFrame({"run_id": ["a", None, "b"], "loop_severity": [0.1, 0.3, 0.9]}),  # a null run id
    ):
        expected = messy.unique("run_id", keep="first", maintain_order=True)
        assert_frame_equal(_first_per_run(messy), expected)


def test_no_events_score_no_runs(fleet) -> None:
    """An empty frame (a filter that kept nothing) gives an empty table of the usual columns,
    as the detectors do, not a Polars error from inside the z-scores."""
    out = dw.score_runs(fleet.events.head(0))
    assert out.height == 0
    assert out.schema == dw.score_runs(fleet.events.head(200)).schema


def test_a_refund_row_scores_as_no_cost(fleet) -> None:
    """score_runs on a frame with one negative cost (a refund or credit line) crashed on the
    log of a negative number (the reader rejects such rows; the detector API takes frames as
    they are)."""
    ev = fleet.events.head(3000)
    first = ev["run_id"][0]
    refund = ev.with_columns(pl.when((pl.col("run_id") == first) & (pl.col("step") == 1)).then(-0.01)
                             .otherwise(pl.col("cost_usd")).alias("cost_usd"))
    out = dw.score_runs(refund)
    assert out.height == dw.score_runs(ev).height and out["score"].is_finite().all()


def test_fit_escalation_needs_enough_of_each_class_and_one_label_per_run() -> None:
    """With exactly cv positives the fit failed inside scikit-learn (pages of tracebacks) or gave
    a NaN AUROC; contradictory labels for one run were resolved at random (the model depended on
    the labels' row order); integer run ids in the labels were a raw Polars join error."""
    import math

    fleet = dw.synth.generate(days=3, runs_per_day=150, seed=7)
    runs = dw.score_runs(fleet.events)
    lab = fleet.truth["runs"].select("run_id", "needs_human")
    pos = lab.filter(pl.col("needs_human"))["run_id"].sort().to_list()

    def keep(k: int) -> pl.DataFrame:
        return lab.with_columns((pl.col("needs_human") & pl.col("run_id").is_in(pos[:k])).alias("needs_human"))

    for k, cv in ((5, 5), (6, 5), (2, 2), (4, 2)):
        with pytest.raises(InvalidParameterError, match=f"need at least {cv * cv // (cv - 1) + 1} runs of each class"):
            dw.fit_escalation(runs, keep(k), cv=cv)
    for k, cv in ((7, 5), (5, 2)):
        assert math.isfinite(dw.fit_escalation(runs, keep(k), cv=cv).cv_auroc_)
    twice = pl.concat([lab, lab.head(3).with_columns(~pl.col("needs_human"))])
    with pytest.raises(InvalidParameterError, match="contradictory labels"):
        dw.fit_escalation(runs, twice)
    assert dw.fit_escalation(runs, pl.concat([lab, lab.head(3)])).n_train_ == runs.height  # a repeated label is fine
    numeric = pl.DataFrame({"run_id": [1, 2], "label": [True, False]})
    with pytest.raises(InvalidParameterError, match="have no label"):
        dw.fit_escalation(runs, numeric)


def test_reasons_never_read_as_the_limit_they_exceed() -> None:
    """Just over a limit, the reason shows enough decimals (as check_policy does): never
    'lowest confidence 0.30 < 0.30', 'runtime 300s > limit 300s' or 'cost $0.50 > ceiling $0.50'."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    ev = pl.DataFrame({
        "run_id": ["conf", "conf", "rt", "rt", "cost", "cost"], "step": [1, 2, 1, 2, 1, 2],
        "ts": [t0, t0 + timedelta(seconds=1), t0, t0 + timedelta(seconds=300.4), t0, t0 + timedelta(seconds=1)],
        "action": ["llm"] * 6, "confidence": [0.299, 0.9, None, None, None, None],
        "cost_usd": [None, None, None, None, 0.25, 0.25004],
    })
    reasons = dict(score_runs(ev).select("run_id", pl.col("reasons").list.first()).rows())
    assert reasons == {
        "conf": "lowest confidence 0.299 < 0.30",
        "rt": "runtime 300.4s > limit 300s",
        "cost": "cost $0.50004 > ceiling $0.50",
    }
    details = dict(check_policy(ev).select("run_id", "detail").rows())
    assert details["cost"] == reasons["cost"] and details["rt"] == reasons["rt"]
    # a limit with more decimals than usual is shown with them, and so is the value; a value
    # that still reads as the limit is shown exactly
    two = pl.DataFrame({"run_id": ["c", "c", "m", "m", "e", "e"], "step": [1, 2] * 3, "action": ["llm"] * 6,
                        "confidence": [0.9, 0.302, None, None, 0.9, 0.2999999],
                        "cost_usd": [None, None, 0.3, 0.208, None, None]})
    got = dict(score_runs(two, policy=Policy(min_confidence=0.305, max_cost_usd=0.505))
               .select("run_id", pl.col("reasons").list.first()).rows())
    assert got["c"] == "lowest confidence 0.302 < 0.305" and got["m"] == "cost $0.508 > ceiling $0.505"
    assert got["e"] == "lowest confidence 0.300 < 0.305"
    assert dict(score_runs(two).select("run_id", pl.col("reasons").list.first()).rows())["e"] == (
        "lowest confidence 0.2999999 < 0.30"
    )


def test_float32_costs_at_the_ceiling_are_no_breach(tmp_path: Path) -> None:
    """Four Float32 costs that make $0.50 on paper sum to 0.50000000745 once widened: not over
    a $0.50 ceiling (totals are compared at 7 significant digits)."""
    ev = pl.DataFrame({"run_id": ["r"] * 4, "step": [1, 2, 3, 4], "action": ["llm"] * 4,
                       "cost_usd": pl.Series([0.10, 0.20, 0.15, 0.05], dtype=pl.Float32)})
    ev.write_parquet(tmp_path / "f32.parquet")
    res = dw.audit(tmp_path / "f32.parquet", policy=Policy(max_cost_usd=0.5))
    assert res.runs["cost_usd"][0] > 0.5 and res.runs["reasons"][0].to_list() == [] and res.violations.height == 0


def test_unapproved_reasons_name_every_tool_its_tier_and_refusals() -> None:
    """Two destructive tools in one run are both named, a call a person refused says so, and a
    read-tier breach says 'read tier' (a probe found one tool named, no refusal, 'write tier')."""
    ev = pl.DataFrame({
        "run_id": ["del"] * 3 + ["rd"] * 2 + ["one"] * 2 + ["many"] * 4,
        "step": [1, 2, 3, 1, 2, 1, 2, 1, 2, 3, 4],
        "action": ["delete_invoice", "drop_table", "llm", "llm", "get_customer", "llm", "delete_x",
                   "delete_a", "delete_b", "delete_c", "delete_d"],
        "approved": [None, False, None, None, None, None, False, None, None, None, None],
    })
    pol = Policy(require_approval=("delete", "read"))
    reasons = dict(score_runs(ev, policy=pol).select("run_id", pl.col("reasons").list.first()).rows())
    assert reasons == {
        "del": "delete_invoice, drop_table without approval (2 calls, 1 refused)",
        "rd": "get_customer without approval (read tier)",
        "one": "delete_x without approval (approval refused)",
        "many": "delete_a, delete_b, delete_c, … without approval (4 calls)",
    }


def test_a_sampled_prompt_is_not_described_as_changing_tool_arguments() -> None:
    ev = pl.DataFrame({"run_id": ["r"] * 7, "step": list(range(1, 8)),
                       "action": ["search", "llm", "llm", "llm", "llm", "llm", "answer"],
                       "args": ["q", "p", "p", "p", "p", "p", "x"],
                       "result": ["r", "a1", "a2", "a3", "a4", "a5", "y"]})
    loops = dw.detect_loops(ev)
    assert loops.select("pattern", "kind", "match").rows() == [("llm", "same_action", "prompt")]
    why = dw.score_runs(ev, loops=loops, policy=dw.Policy(review=0.1))["reasons"][0]
    assert "loop: the same prompt sent to the LLM 5x (different answers), 4 wasted steps" in why, why
