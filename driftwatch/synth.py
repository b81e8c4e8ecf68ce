"""Seeded synthetic agent fleets with recorded ground truth.

The generator produces canonical event tables that look like production agent
logs (several agents with their own tool vocabularies and run lengths, an LLM
step before every tool call whose prompt never repeats, diurnal traffic and
weekly volume swings, benign repetition such as pagination and polling) and
injects the failures driftwatch must find, recording each one in a truth
table:

* stuck loops of periods 1-4: ``exact`` (the same request and the same
  answer), ``near_duplicate`` (the same request and answer up to timestamps,
  request ids and whitespace), ``error_retry`` (the call keeps failing) and
  ``handoff`` (agent hand-off ping-pong);
* change-points in fleet behaviour (run length, error rate, cost per run);
* feedback-driven drift: an agent whose tool choice reinforces its own past
  choices while the proxy feedback rises and the business outcome falls;
* destructive tools called without approval, cost spikes, low-confidence
  steps, calls to tools that do not exist, deep delegation chains;
* load-dependent failure: error rates that rise once the number of runs
  started per bucket passes a threshold;
* optionally (``Scenario(llm_failure_rate=...)``, off in the demo fleet), runs
  whose model calls keep failing (rate limits, timeouts) until the final answer;
* optionally (``Scenario(llm_retry_rate=...)``, off in the demo fleet), runs that
  send one prompt to the model again and again: ``llm_exact`` (the same
  unusable reply each time) and ``llm_error_retry`` (the call keeps failing),
  and, as benign repetition (``llm_sampling_rate``), runs that sample several
  answers to one prompt.

Everything is vectorised with numpy and Polars; each day is drawn from its own
random stream (``seed``, day), so a fleet is identical whether it is generated
in one piece or streamed to disk day by day.

Examples
--------
>>> from driftwatch import synth
>>> fleet = synth.generate(days=3, runs_per_day=50, seed=1)
>>> fleet.events.columns[:4]
['run_id', 'step', 'ts', 'action']
>>> sorted(fleet.truth)
['benign', 'changepoints', 'delegation', 'drift', 'load', 'loops', 'runs']
>>> fleet.events.equals(synth.generate(days=3, runs_per_day=50, seed=1).events)
True
"""

from __future__ import annotations

import numbers
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from driftwatch._frames import check_flag, check_seed, duration_seconds
from driftwatch.errors import InvalidParameterError
from driftwatch.schema import CANONICAL_SCHEMA, LLM_ACTION

LoopKind = Literal["exact", "near_duplicate", "error_retry", "handoff"]
_LOOP_KINDS: tuple[str, ...] = ("exact", "near_duplicate", "error_retry", "handoff")
_ERROR_TYPES = ("TimeoutError", "RateLimitError", "UpstreamHTTP500")
#: Columns of the ``loops`` and ``benign`` truth tables.
_LOOPS_TRUTH_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(), "agent": pl.String(), "kind": pl.String(), "pattern": pl.String(), "period": pl.Int64(),
    "period_steps": pl.Int64(), "repeats": pl.Int64(), "start_step": pl.Int64(), "end_step": pl.Int64(),
}
#: The lowest confidence of an LLM step that is not an injected ``low_confidence`` one (those are
#: drawn in [0.05, 0.25)); above the default policy's ``min_confidence`` of 0.30 with a margin.
_MIN_BACKGROUND_CONFIDENCE = 0.35
_BENIGN_TRUTH_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(), "agent": pl.String(), "kind": pl.String(), "action": pl.String(),
    "start_step": pl.Int64(), "end_step": pl.Int64(),
}


@dataclass(frozen=True)
class AgentSpec:
    """One agent of the fleet.

    Parameters
    ----------
    name : str
        Agent name (the ``agent`` column).
    tools : dict of str to float
        Tool vocabulary with relative choice weights.
    mean_tool_calls : float
        Mean number of tool calls per run (an LLM step precedes each).
    weight : float, default=1.0
        Share of the fleet's traffic.
    price_in, price_out : float
        USD per input / output token of the agent's model.
    error_rate : float, default=0.02
        Probability that a tool call fails.
    pagination_tool, polling_tool : str
        Tools used for benign repetition.
    destructive : tuple of str
        Delete-tier tools; normally called with ``approved == True``.
    handoff_to : str
        The agent this one hands off to in a ping-pong loop.
    """

    name: str
    tools: dict[str, float]
    mean_tool_calls: float = 5.0
    weight: float = 1.0
    price_in: float = 2.5e-6
    price_out: float = 1.0e-5
    error_rate: float = 0.02
    pagination_tool: str = "list_items"
    polling_tool: str = "get_status"
    destructive: tuple[str, ...] = ()
    handoff_to: str = "triage"


@dataclass(frozen=True)
class ChangeSpec:
    """A change-point: from ``day`` on, ``metric`` of ``agent`` is multiplied by ``factor``.

    ``metric`` is one of ``"steps_per_run"``, ``"error_rate"``, ``"cost_per_run"``.
    The agent's ``version`` changes from ``v1`` to ``v2`` that day (a deploy).
    ``steps_per_run`` multiplies the mean number of tool calls ``k`` (a run has ``2k + 1``
    steps), ``error_rate`` the probability that a tool call fails (at most 1). The truth's
    ``before`` and ``after`` are the metric's expected value in the agent's runs with nothing
    injected (changes of one agent and metric compound; ``cost_per_run``: NaN, not stated).
    """

    agent: str
    day: int
    metric: Literal["steps_per_run", "error_rate", "cost_per_run"]
    factor: float


@dataclass(frozen=True)
class DriftSpec:
    """Feedback-driven drift of ``agent`` from ``onset_day`` on.

    Each day after the onset the agent's tool-choice distribution is sharpened
    towards its own most frequent choices (``p ** (1 + strength * days)``),
    the proxy ``feedback`` rises and the business ``outcome`` falls.
    """

    agent: str
    onset_day: int
    strength: float = 0.25


@dataclass(frozen=True)
class LoadSpec:
    """Load-dependent failure for ``agent``.

    Once the agent's runs started per ``every`` bucket exceed ``threshold``,
    the tool error probability grows by ``slope * (load / threshold - 1)``.
    """

    agent: str
    threshold: float
    metric: Literal["error_rate"] = "error_rate"
    slope: float = 0.5
    every: str = "1m"


def default_agents() -> tuple[AgentSpec, ...]:
    """The four agents of the demo fleet."""
    return (
        AgentSpec(
            name="planner",
            tools={"search_web": 3, "read_page": 3, "summarize": 2, "plan_tasks": 1.5, "write_note": 1,
                   "list_documents": 0.5, "get_status": 0.5},
            mean_tool_calls=6.0,
            weight=1.2,
            price_in=3e-6,
            price_out=1.2e-5,
            pagination_tool="list_documents",
            handoff_to="research",
        ),
        AgentSpec(
            name="billing",
            tools={"get_invoice": 3, "list_invoices": 1.5, "update_invoice": 1.5, "refund_payment": 1,
                   "send_email": 1.5, "get_customer": 2, "delete_invoice": 0.15},
            mean_tool_calls=4.0,
            weight=1.0,
            price_in=1e-6,
            price_out=4e-6,
            pagination_tool="list_invoices",
            polling_tool="get_refund_status",
            destructive=("delete_invoice",),
            handoff_to="support",
        ),
        AgentSpec(
            name="support",
            tools={"search_kb": 3, "get_ticket": 2.5, "update_ticket": 2, "send_reply": 1.5,
                   "get_customer": 1, "delete_ticket": 0.15, "list_tickets": 0.6},
            mean_tool_calls=5.0,
            weight=1.0,
            pagination_tool="list_tickets",
            polling_tool="get_ticket_status",
            destructive=("delete_ticket",),
            handoff_to="billing",
        ),
        AgentSpec(
            name="research",
            tools={"search_web": 3, "read_page": 3, "query_db": 2, "run_python": 1.5, "list_results": 0.8,
                   "get_job_status": 0.5, "summarize": 1},
            mean_tool_calls=8.0,
            weight=0.7,
            price_in=5e-6,
            price_out=2e-5,
            pagination_tool="list_results",
            polling_tool="get_job_status",
            handoff_to="planner",
        ),
    )


@dataclass(frozen=True)
class Scenario:
    """Everything a fleet is made of. ``Scenario()`` is the demo fleet; :meth:`stable` injects nothing.

    Rates are fractions of runs. Change-points, drift and load effects whose
    day lies outside the generated period are ignored.
    """

    agents: tuple[AgentSpec, ...] = field(default_factory=default_agents)
    loop_rate: float = 0.03
    loop_kinds: dict[str, float] = field(
        default_factory=lambda: {"exact": 0.3, "near_duplicate": 0.3, "error_retry": 0.25, "handoff": 0.15}
    )
    pagination_rate: float = 0.08
    polling_rate: float = 0.04
    unapproved_rate: float = 0.004
    cost_spike_rate: float = 0.004
    low_confidence_rate: float = 0.005
    unknown_tool_rate: float = 0.003
    #: runs whose model calls keep failing (rate limits, timeouts): every LLM call but the final
    #: answer fails, in runs of at least 5 tool calls (drawn from a stream of their own, so a
    #: fleet with them is the same fleet otherwise)
    llm_failure_rate: float = 0.0
    #: runs that send one prompt (before one of their tool calls) 4-10 times in a row, LLM
    #: steps only, then go on: the model gives the same unusable reply (``exact``) or the
    #: call fails (``error_retry``) every time but the last. Like ``llm_sampling_rate``, drawn
    #: from a stream of their own among the runs with nothing else injected.
    llm_retry_rate: float = 0.0
    llm_retry_kinds: dict[str, float] = field(default_factory=lambda: {"exact": 0.5, "error_retry": 0.5})
    #: benign: runs that sample 3-5 answers to one prompt (same prompt, different answers)
    llm_sampling_rate: float = 0.0
    delegation_rate: float = 0.05
    delegation_chains_per_day: float = 0.1
    delegation_chain_depth: int = 6
    changepoints: tuple[ChangeSpec, ...] = (
        ChangeSpec("billing", 12, "steps_per_run", 1.7),
        ChangeSpec("support", 18, "error_rate", 4.0),
        ChangeSpec("research", 9, "cost_per_run", 2.0),
    )
    feedback_drift: tuple[DriftSpec, ...] = (DriftSpec("planner", 15, 0.25),)
    load: tuple[LoadSpec, ...] = ()
    weekly_swing: float = 0.35
    diurnal: bool = True

    @classmethod
    def stable(cls, **overrides: object) -> Scenario:
        """Benign repetition, weekly swings and diurnal traffic only: nothing to find."""
        base = cls(
            loop_rate=0.0,
            unapproved_rate=0.0,
            cost_spike_rate=0.0,
            low_confidence_rate=0.0,
            unknown_tool_rate=0.0,
            delegation_chains_per_day=0.0,
            changepoints=(),
            feedback_drift=(),
            load=(),
        )
        return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass(eq=False)  # frames have no truth value: == is identity
class Fleet:
    """A generated fleet: canonical ``events`` and ``truth`` tables."""

    events: pl.DataFrame
    truth: dict[str, pl.DataFrame]

    def write(self, path: str | os.PathLike[str], *, row_group_size: int = 128_000) -> Path:
        """Write ``events/date=YYYY-MM-DD/part-0.parquet`` and ``truth/<name>.parquet`` under ``path``."""
        root = _fresh_fleet_dir(path)
        _write_events_by_day(self.events, root / "events", row_group_size=row_group_size)
        _write_truth(self.truth, root / "truth")
        return root


#: Written into every fleet folder first: only a folder holding it (and ``events/``, ``truth/``)
#: is an earlier fleet that a new one may replace. A user's own ``events/`` and ``truth/``
#: folders (production logs, reviewers' labels) look the same and were deleted.
FLEET_MARKER = ".driftwatch-fleet"


def _fresh_fleet_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` ready for a fleet: new, empty, or an earlier fleet (its marker, ``events/`` and
    ``truth/`` only), whose files are removed so that no day or truth table of it survives
    into the new one. Any other content is refused, never deleted."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise InvalidParameterError(f"{root}: exists and is not a folder; a fleet is written into a folder")
    if root.is_dir():
        names = {p.name for p in root.iterdir()}
        foreign = sorted(names - {"events", "truth", FLEET_MARKER})
        if foreign or (names and FLEET_MARKER not in names):
            shown = ", ".join((foreign or sorted(names))[:5])
            raise InvalidParameterError(
                f"{root}: folder holds files that are not a fleet written by driftwatch ({shown}); "
                "a fleet replaces events/ and truth/, so choose a new or empty folder"
            )
        for name in names - {FLEET_MARKER}:
            shutil.rmtree(root / name)
    root.mkdir(parents=True, exist_ok=True)
    (root / FLEET_MARKER).write_text("a synthetic fleet written by driftwatch; generate may replace this folder\n")
    return root


# --------------------------------------------------------------------------------------------
# public entry points


def generate(
    *,
    days: int = 30,
    runs_per_day: int = 400,
    seed: int = 0,
    start: str | date | datetime = "2026-10-01",
    scenario: Scenario | None = None,
) -> Fleet:
    """Generate a fleet in memory.

    Parameters
    ----------
    days : int, default=30
        Number of days.
    runs_per_day : int, default=400
        Mean number of runs on a weekday (weekends are lower by ``weekly_swing``).
    seed : int, default=0
        Random seed; the same seed gives the same fleet.
    start : str, date or datetime, default="2026-10-01"
        First day (UTC midnight).
    scenario : Scenario, optional
        What to inject; ``None`` is the demo :class:`Scenario`.

    Returns
    -------
    Fleet
        ``events`` sorted by ``run_id, step`` and the truth tables.
    """
    sc, t0, days, runs_per_day = _check(days, runs_per_day, scenario, start)
    check_seed(seed, name="seed (--seed)")
    parts = [_generate_day(d, runs_per_day=runs_per_day, seed=seed, t0=t0, sc=sc) for d in range(days)]
    events = pl.concat([p[0] for p in parts]).sort("run_id", "step")
    truth = _merge_truth([p[1] for p in parts], sc, t0, days)
    return Fleet(events=events, truth=truth)


def write_fleet(
    path: str | os.PathLike[str],
    *,
    days: int = 30,
    runs_per_day: int = 400,
    seed: int = 0,
    start: str | date | datetime = "2026-10-01",
    scenario: Scenario | None = None,
    row_group_size: int = 128_000,
) -> dict[str, int]:
    """Generate a fleet day by day straight to Parquet (bounded memory).

    Writes the same files as :meth:`Fleet.write` and returns counts
    (``events``, ``runs``, ``days``). Output is identical to
    ``generate(...).write(path)``.
    """
    sc, t0, days, runs_per_day = _check(days, runs_per_day, scenario, start)
    check_seed(seed, name="seed (--seed)")
    root = _fresh_fleet_dir(path)
    truths: list[dict[str, pl.DataFrame]] = []
    n_events = 0
    n_runs = 0
    for d in range(days):
        ev, tr = _generate_day(d, runs_per_day=runs_per_day, seed=seed, t0=t0, sc=sc)
        ev = ev.sort("run_id", "step")
        _write_events_by_day(ev, root / "events", row_group_size=row_group_size)
        n_events += ev.height
        n_runs += tr["runs"].height
        truths.append(tr)
    _write_truth(_merge_truth(truths, sc, t0, days), root / "truth")
    return {"events": n_events, "runs": n_runs, "days": days}


def read_truth(path: str | os.PathLike[str]) -> dict[str, pl.DataFrame]:
    """Read the truth tables written by :meth:`Fleet.write` / :func:`write_fleet`."""
    root = Path(path) / "truth"
    return {p.stem: pl.read_parquet(p, glob=False) for p in sorted(root.glob("*.parquet"))}


# --------------------------------------------------------------------------------------------
# internals


def _integer(value: object, name: str, *, least: int) -> int:
    """``value`` as an int (numpy integers too, not bools) of at least ``least``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_) and int(value) >= least:
        return int(value)
    what = "a positive integer" if least == 1 else f"an integer >= {least}"
    raise InvalidParameterError(f"{name} must be {what}, got {value!r}")


def _number(value: object, name: str, *, least: float = 0.0, most: float = float("inf"),
            positive: bool = False) -> float:
    """``value`` as a finite float (numpy numbers too, not bools) in ``[least, most]`` (``> least``
    where ``positive``)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
        v = float(value)
        if np.isfinite(v) and (v > least if positive else v >= least) and v <= most:
            return v
    if positive and least == 0.0 and most == float("inf"):
        what = "a positive number"
    elif most == float("inf"):
        what = f"a number {'>' if positive else '>='} {least:g}"
    else:
        what = f"a number in {'(' if positive else '['}{least:g}, {most:g}]"
    raise InvalidParameterError(f"{name} must be {what}, got {value!r}")


def _name(value: object, name: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise InvalidParameterError(f"{name} must be a non-empty string, got {value!r}")


#: The most tool calls a run may have on average (after steps_per_run change-points): a day is
#: built in memory.
_MAX_MEAN_TOOL_CALLS = 10_000.0
#: Bounds of the delegation chains (a day's chains are built in memory).
_MAX_CHAINS_PER_DAY = 10_000.0
_MAX_CHAIN_DEPTH = 1_000


def _check_agent(i: int, a: object) -> None:
    if not isinstance(a, AgentSpec):
        raise InvalidParameterError(f"scenario.agents[{i}] must be an AgentSpec, got {type(a).__name__}")
    name = _name(a.name, f"scenario.agents[{i}].name")
    where = f"AgentSpec {name!r}:"
    if not isinstance(a.tools, Mapping) or not all(isinstance(t, str) and t.strip() for t in a.tools):
        raise InvalidParameterError(f"{where} tools must be a dict of tool name to weight, got {a.tools!r}")
    for t, w in a.tools.items():
        _number(w, f"{where} the weight of tool {t!r}")
    if not isinstance(a.destructive, tuple | list) or not all(isinstance(t, str) and t.strip() for t in a.destructive):
        raise InvalidParameterError(f"{where} destructive must be a tuple of tool names, got {a.destructive!r}")
    if not sum(w for t, w in a.tools.items() if t not in a.destructive) > 0:
        raise InvalidParameterError(
            f"{where} tools must give a positive weight to at least one tool that is not destructive "
            f"(the agent's choices), got {a.tools!r} with destructive {tuple(a.destructive)!r}"
        )
    _number(a.mean_tool_calls, f"{where} mean_tool_calls", most=_MAX_MEAN_TOOL_CALLS, positive=True)
    _number(a.weight, f"{where} weight (a share of the traffic)")
    _number(a.price_in, f"{where} price_in (USD per token)")
    _number(a.price_out, f"{where} price_out (USD per token)")
    _number(a.error_rate, f"{where} error_rate", most=1.0)
    for attr in ("pagination_tool", "polling_tool", "handoff_to"):
        _name(getattr(a, attr), f"{where} {attr}")


def _check_start(start: object, days: int) -> datetime:
    """The fleet's first day, UTC midnight; its last day (``days - 1`` later) must leave the next
    day, where runs that cross midnight end, within 9999-12-31 (later dates overflow)."""
    if isinstance(start, str):
        try:
            t0 = datetime.fromisoformat(start)
        except ValueError:
            raise InvalidParameterError(
                f"start (--start) must be an ISO-8601 date or time such as 2026-10-01, got {start!r}"
            ) from None
    elif isinstance(start, datetime):
        t0 = start
    elif isinstance(start, date):
        t0 = datetime(start.year, start.month, start.day)
    else:
        raise InvalidParameterError(
            f"start (--start) must be a date: an ISO-8601 string such as '2026-10-01', a datetime.date or a "
            f"datetime.datetime, got {start!r}"
        )
    try:
        t0 = t0.replace(tzinfo=UTC) if t0.tzinfo is None else t0.astimezone(UTC)
    except OverflowError:
        raise InvalidParameterError(
            f"start (--start) must be a day from 1970-01-01 to 9999-12-30 in UTC, got {start!r}"
        ) from None
    t0 = t0.replace(hour=0, minute=0, second=0, microsecond=0)
    if t0.year < 1970:  # the readers reject timestamps before 1970 (bad_ts)
        raise InvalidParameterError(f"start (--start) must be in 1970 or later, got {t0.date().isoformat()}")
    last_ok = date.max - timedelta(days=1)  # runs of the last day may end the next day
    room = last_ok.toordinal() - t0.date().toordinal() + 1  # days that fit from start on
    if days > room:
        raise InvalidParameterError(
            f"start (--start) {t0.date().isoformat()} and days (--days) {days}: the last day must be "
            f"{last_ok.isoformat()} or earlier (its runs may end the next day, and dates stop at 9999-12-31), "
            f"so at most {max(room, 0)} day(s) from that start; give an earlier start or fewer days"
        )
    return t0


def _check(
    days: object, runs_per_day: object, scenario: Scenario | None, start: object
) -> tuple[Scenario, datetime, int, int]:
    days = _integer(days, "days", least=1)
    runs_per_day = _integer(runs_per_day, "runs_per_day", least=1)
    sc = Scenario() if scenario is None else scenario
    if not isinstance(sc, Scenario):
        raise InvalidParameterError(f"scenario must be a synth.Scenario or None, got {type(sc).__name__}")
    if not isinstance(sc.agents, tuple | list) or not sc.agents:
        raise InvalidParameterError(f"scenario.agents must be a non-empty tuple of AgentSpec, got {sc.agents!r}")
    for i, a in enumerate(sc.agents):
        _check_agent(i, a)
    names = [a.name for a in sc.agents]
    if len(set(names)) != len(names):
        raise InvalidParameterError(f"scenario.agents must have distinct names, got {names}")
    if not sum(a.weight for a in sc.agents) > 0:
        raise InvalidParameterError(
            f"scenario.agents: some agent must have a positive weight (share of the traffic), got "
            f"{[a.weight for a in sc.agents]}"
        )
    for field_name, kind in (("changepoints", ChangeSpec), ("feedback_drift", DriftSpec), ("load", LoadSpec)):
        specs = getattr(sc, field_name)
        if not isinstance(specs, tuple | list) or not all(isinstance(s, kind) for s in specs):
            raise InvalidParameterError(f"scenario.{field_name} must be a tuple of {kind.__name__}, got {specs!r}")
    for spec in (*sc.changepoints, *sc.feedback_drift, *sc.load):
        if spec.agent not in names:
            raise InvalidParameterError(f"{type(spec).__name__} names agent {spec.agent!r}; agents are {names}")
    for spec in sc.changepoints:
        if spec.metric not in ("steps_per_run", "error_rate", "cost_per_run"):
            raise InvalidParameterError(
                f"ChangeSpec.metric must be 'steps_per_run', 'error_rate' or 'cost_per_run', got {spec.metric!r}"
            )
        _number(spec.factor, "ChangeSpec.factor", positive=True)
        _integer(spec.day, "ChangeSpec.day (days after start)", least=0)
    for a in sc.agents:
        mean = a.mean_tool_calls
        for spec in sc.changepoints:
            if spec.agent == a.name and spec.metric == "steps_per_run":
                mean *= spec.factor
                if mean > _MAX_MEAN_TOOL_CALLS:
                    raise InvalidParameterError(
                        f"ChangeSpec.factor: the steps_per_run changes of {a.name!r} make its mean_tool_calls "
                        f"{mean:g}; at most {_MAX_MEAN_TOOL_CALLS:g} (a day is built in memory)"
                    )
    for ds in sc.feedback_drift:
        _integer(ds.onset_day, "DriftSpec.onset_day (days after start)", least=0)
        _number(ds.strength, "DriftSpec.strength")
    for ls in sc.load:
        if ls.metric != "error_rate":
            raise InvalidParameterError(f"LoadSpec.metric must be 'error_rate', got {ls.metric!r}")
        _number(ls.threshold, "LoadSpec.threshold (runs started per bucket)", positive=True)
        _number(ls.slope, "LoadSpec.slope")
        duration_seconds(ls.every, name="LoadSpec.every")
    kinds_ok = set(_LOOP_KINDS)
    if not isinstance(sc.loop_kinds, Mapping) or not sc.loop_kinds or not set(sc.loop_kinds) <= kinds_ok or any(
        not isinstance(w, numbers.Real) or isinstance(w, bool) or not 0 <= w < float("inf")
        for w in sc.loop_kinds.values()
    ) or sum(sc.loop_kinds.values()) <= 0:
        raise InvalidParameterError(
            f"scenario.loop_kinds must weigh some of {sorted(kinds_ok)} (weights >= 0, not all 0), got {sc.loop_kinds!r}"
        )
    if not isinstance(sc.weekly_swing, numbers.Real) or not 0.0 <= sc.weekly_swing < 1.0:
        raise InvalidParameterError(f"scenario.weekly_swing must be in [0, 1), got {sc.weekly_swing!r}")
    for name in ("loop_rate", "pagination_rate", "polling_rate", "unapproved_rate", "cost_spike_rate",
                 "low_confidence_rate", "unknown_tool_rate", "delegation_rate", "llm_failure_rate",
                 "llm_retry_rate", "llm_sampling_rate"):
        rate = getattr(sc, name)
        if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
            raise InvalidParameterError(f"scenario.{name} must be a fraction of runs in [0, 1], got {rate!r}")
    if sc.llm_retry_rate + sc.llm_sampling_rate > 1.0:
        raise InvalidParameterError(
            f"scenario.llm_retry_rate + llm_sampling_rate must be at most 1, got {sc.llm_retry_rate + sc.llm_sampling_rate}"
        )
    kinds = sc.llm_retry_kinds
    if sc.llm_retry_rate > 0 and (
        not isinstance(kinds, Mapping) or not kinds or not set(kinds) <= {"exact", "error_retry"}
        or any(not isinstance(w, numbers.Real) or isinstance(w, bool) or not 0 <= w < float("inf")
               for w in kinds.values())
        or sum(kinds.values()) <= 0
    ):
        raise InvalidParameterError(
            "scenario.llm_retry_kinds must weigh 'exact' and/or 'error_retry' (weights >= 0, not all 0), "
            f"got {kinds!r}"
        )
    # (a day's chains are built in memory: chains x depth runs)
    _number(sc.delegation_chains_per_day, "scenario.delegation_chains_per_day", most=_MAX_CHAINS_PER_DAY)
    depth = _integer(sc.delegation_chain_depth, "scenario.delegation_chain_depth (runs per chain)", least=1)
    if depth > _MAX_CHAIN_DEPTH:
        raise InvalidParameterError(
            f"scenario.delegation_chain_depth (runs per chain) must be at most {_MAX_CHAIN_DEPTH:,}, got {depth!r}"
        )
    check_flag(sc.diurnal, name="scenario.diurnal")
    t0 = _check_start(start, days)
    return sc, t0, days, runs_per_day


def _diurnal_pdf(diurnal: bool) -> np.ndarray:
    minutes = np.arange(1440)
    if not diurnal:
        return np.full(1440, 1 / 1440)
    # a daytime peak around 14:00 UTC and a quiet night
    w = 0.15 + np.exp(-0.5 * ((minutes - 14 * 60) / 200.0) ** 2)
    return w / w.sum()


def _weekday_factor(day_date: date, swing: float) -> float:
    return 1.0 - swing if day_date.weekday() >= 5 else 1.0


def _hex(x: pl.Expr) -> pl.Expr:
    """An integer as a hex-looking id (digits and a-f), for request ids and job ids."""
    return (
        x.cast(pl.UInt64)
        .cast(pl.String)
        .str.replace_many(["1", "4", "7", "9"], ["a", "c", "e", "f"])
    )


_WORDS = ["refund", "order", "invoice", "account", "status", "delayed", "missing", "charge", "customer", "ticket", "shipping", "address", "payment", "failed", "double", "billing", "plan", "upgrade", "cancel", "subscription", "password", "reset", "login", "error", "report", "summary", "quarterly", "revenue", "forecast", "churn", "policy", "api", "latency", "outage", "region", "europe", "pricing", "discount", "coupon", "tax", "vat", "receipt", "export", "csv", "contract", "renewal", "seats", "enterprise", "trial", "warehouse", "inventory", "supplier", "delivery", "tracking", "return", "label", "damaged", "item", "exchange", "credit", "balance", "statement"]


def _words(x: pl.Expr, n: int = 4) -> pl.Expr:
    """An integer token as ``n`` words (distinct tokens give distinct phrases)."""
    vocab = pl.lit(list(_WORDS), dtype=pl.List(pl.String))
    size = len(_WORDS)
    parts = [vocab.list.get((x // (size**i)) % size) for i in range(n)]
    return pl.concat_str(parts, separator=" ")


def _generate_day(
    d: int, *, runs_per_day: int, seed: int, t0: datetime, sc: Scenario
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    rng = np.random.default_rng([seed, d])
    day0 = t0 + timedelta(days=d)
    agents = sc.agents
    n_agents = len(agents)
    names = [a.name for a in agents]

    # ---- runs --------------------------------------------------------------------------
    n_runs = int(rng.poisson(runs_per_day * _weekday_factor(day0.date(), sc.weekly_swing)))
    n_runs = max(n_runs, 1)
    weights = np.array([a.weight for a in agents], dtype=float)
    agent_idx = rng.choice(n_agents, size=n_runs, p=weights / weights.sum())
    minute = rng.choice(1440, size=n_runs, p=_diurnal_pdf(sc.diurnal))
    start_s = np.sort(minute * 60.0 + rng.uniform(0, 60, n_runs))
    # the order of agent_idx is arbitrary, so sorting start times keeps runs independent
    run_seq = np.arange(n_runs)

    # per-agent, per-day parameters (change-points, drift, load)
    mean_calls = np.array([a.mean_tool_calls for a in agents])
    err_base = np.array([a.error_rate for a in agents])
    price_factor = np.ones(n_agents)
    version = np.array(["v1"] * n_agents, dtype=object)
    for cp in sc.changepoints:
        ai = names.index(cp.agent)
        if d >= cp.day:
            version[ai] = "v2"
            if cp.metric == "steps_per_run":
                mean_calls[ai] *= cp.factor
            elif cp.metric == "error_rate":
                err_base[ai] *= cp.factor
            elif cp.metric == "cost_per_run":
                price_factor[ai] *= cp.factor

    # runs started per load bucket, per agent (for load-dependent failure)
    run_err = err_base[agent_idx].copy()
    for ls in sc.load:
        ai = names.index(ls.agent)
        width = duration_seconds(ls.every, name="LoadSpec.every")
        mine = agent_idx == ai
        bucket = np.floor(start_s / width).astype(np.int64)
        counts = np.bincount(bucket[mine], minlength=int(86400 / width) + 1)
        load = counts[bucket]
        extra = ls.slope * np.maximum(0.0, load / ls.threshold - 1.0)
        run_err = np.where(mine, np.minimum(run_err + extra, 0.95), run_err)

    # ---- injections: disjoint sets of runs ---------------------------------------------
    u = rng.random(n_runs)
    edges = np.cumsum(
        [
            sc.loop_rate,
            sc.pagination_rate,
            sc.polling_rate,
        ]
    )
    is_loop = u < edges[0]
    is_pag = (u >= edges[0]) & (u < edges[1])
    is_poll = (u >= edges[1]) & (u < edges[2])
    has_destructive = np.array([len(a.destructive) > 0 for a in agents])[agent_idx]
    is_unapproved = (rng.random(n_runs) < sc.unapproved_rate / max(has_destructive.mean(), 1e-9)) & has_destructive
    is_spike = rng.random(n_runs) < sc.cost_spike_rate
    is_lowconf = rng.random(n_runs) < sc.low_confidence_rate
    is_unknown = rng.random(n_runs) < sc.unknown_tool_rate

    kinds = list(sc.loop_kinds)
    kp = np.array([sc.loop_kinds[k] for k in kinds], dtype=float)
    loop_kind = np.full(n_runs, -1)
    loop_kind[is_loop] = np.array([_LOOP_KINDS.index(k) for k in kinds])[
        rng.choice(len(kinds), size=int(is_loop.sum()), p=kp / kp.sum())
    ]
    period = rng.integers(1, 5, n_runs)  # tool calls per cycle
    period = np.where(loop_kind == _LOOP_KINDS.index("error_retry"), rng.integers(1, 3, n_runs), period)
    period = np.where(loop_kind == _LOOP_KINDS.index("handoff"), 2, period)
    repeats = rng.integers(4, 11, n_runs)
    pre = rng.integers(0, 4, n_runs)
    post = rng.integers(0, 3, n_runs)
    ben_len = rng.integers(3, 9, n_runs)

    # a looping run that also calls a destructive tool unapproved (its last call) or a missing
    # tool (its first) has a call after (before) the loop: the injected call would otherwise
    # replace one of the loop's, and the truth table would describe a loop the events lack
    post = np.where(is_loop & is_unapproved, np.maximum(post, 1), post)
    pre = np.where(is_loop & is_unknown, np.maximum(pre, 1), pre)
    # the same for a paginating or polling run (the last poll, "done", would never happen): the
    # injected call takes a call from the other side of the segment if it has one to spare, else
    # the segment's own last (first) page or poll while 3 remain, so the run keeps its length
    # (and the day its random stream); only a run with neither grows by one call
    ben = is_pag | is_poll
    need = ben & is_unapproved & (post == 0)
    spare = need & (pre > is_unknown)
    shrink = need & ~spare & (ben_len > 3)
    pre, ben_len, post = pre - spare, ben_len - shrink, np.where(need, 1, post)
    need = ben & is_unknown & (pre == 0)
    spare = need & (post > is_unapproved)
    shrink = need & ~spare & (ben_len > 3)
    post, ben_len, pre = post - spare, ben_len - shrink, np.where(need, 1, pre)

    # tool calls per run
    k = 1 + rng.poisson(np.maximum(mean_calls[agent_idx] - 1.0, 0.1))
    k = np.where(is_loop, pre + period * repeats + post, k)
    k = np.where(is_pag | is_poll, pre + ben_len + post, k)
    k = np.where(is_unapproved | is_unknown, np.maximum(k, 2), k)
    k = k.astype(np.int64)

    # ---- tool-call slots -----------------------------------------------------------------
    n_slots = int(k.sum())
    slot_run = np.repeat(run_seq, k)
    offsets = np.concatenate([[0], np.cumsum(k)[:-1]])
    slot_j = np.arange(n_slots) - np.repeat(offsets, k)
    slot_agent = agent_idx[slot_run]

    # global tool vocabulary: every agent's tools, handoffs, benign tools, oddities
    vocab: list[str] = []
    for a in agents:
        for t in (*a.tools, a.pagination_tool, a.polling_tool, *a.destructive, f"handoff:{a.handoff_to}",
                  f"handoff:{a.name}"):
            if t not in vocab:
                vocab.append(t)
    vocab.append("lookup_order_history")  # the tool that does not exist
    unknown_code = len(vocab) - 1
    code_of = {t: i for i, t in enumerate(vocab)}

    tool = np.empty(n_slots, dtype=np.int64)
    for ai, a in enumerate(agents):
        mine = slot_agent == ai
        names_a = [t for t in a.tools if t not in a.destructive]
        p = np.array([a.tools[t] for t in names_a], dtype=float)
        p = p / p.sum()
        for ds in sc.feedback_drift:
            if ds.agent == a.name and d >= ds.onset_day:
                # habit reinforcement: sharpen towards the agent's own favourite choices
                # (in logs: p ** 300 after years of drift underflowed to 0 / 0)
                logp = np.log(p) * (1.0 + ds.strength * (d - ds.onset_day + 1))
                p = np.exp(logp - logp.max())
                p = p / p.sum()
        codes_a = np.array([code_of[t] for t in names_a])
        tool[mine] = codes_a[rng.choice(len(names_a), size=int(mine.sum()), p=p)]
        # destructive tools: rare, approved
        if a.destructive:
            dmask = mine & (rng.random(n_slots) < 0.004 * sum(a.tools.values()) / max(len(a.tools), 1))
            tool[dmask] = code_of[a.destructive[0]]

    arg_tok = rng.integers(1, 2**62, n_slots)
    res_tok = rng.integers(1, 2**62, n_slots)
    noise = np.zeros(n_slots, dtype=bool)
    page = np.full(n_slots, -1)
    progress = np.full(n_slots, -1)
    slot_err = rng.random(n_slots) < run_err[slot_run]
    approved = np.full(n_slots, 0, dtype=np.int8)  # 0 = null, 1 = True, 2 = False

    # loops
    sr_loop = loop_kind[slot_run]
    s_pre = pre[slot_run]
    s_per = period[slot_run]
    in_loop = (sr_loop >= 0) & (slot_j >= s_pre) & (slot_j < s_pre + s_per * repeats[slot_run])
    cyc = np.where(in_loop, (slot_j - s_pre) % np.maximum(s_per, 1), 0)
    # pattern tools per (run, cycle position): distinct tools from the agent's vocabulary
    pat = np.zeros((n_runs, 4), dtype=np.int64)
    for ai, a in enumerate(agents):
        mine = np.flatnonzero((agent_idx == ai) & is_loop)
        if mine.size == 0:
            continue
        names_a = [t for t in a.tools if t not in a.destructive]
        codes_a = np.array([code_of[t] for t in names_a])
        keys = rng.random((mine.size, len(names_a)))
        order = np.argsort(keys, axis=1)[:, :4]
        chosen = codes_a[order]
        if chosen.shape[1] < 4:
            chosen = np.pad(chosen, ((0, 0), (0, 4 - chosen.shape[1])), mode="wrap")
        pat[mine] = chosen
        hand = mine[loop_kind[mine] == _LOOP_KINDS.index("handoff")]
        pat[hand, 0] = code_of[f"handoff:{a.handoff_to}"]
        pat[hand, 1] = code_of[f"handoff:{a.name}"]
    loop_tok = rng.integers(1, 2**62, (n_runs, 4))
    loop_res = rng.integers(1, 2**62, (n_runs, 4))
    tool = np.where(in_loop, pat[slot_run, cyc], tool)
    arg_tok = np.where(in_loop, loop_tok[slot_run, cyc], arg_tok)
    res_tok = np.where(in_loop, loop_res[slot_run, cyc], res_tok)
    noise = in_loop & (sr_loop == _LOOP_KINDS.index("near_duplicate"))
    retry = in_loop & (sr_loop == _LOOP_KINDS.index("error_retry"))
    slot_err = np.where(in_loop, retry, slot_err)

    # benign repetition
    in_ben = (is_pag | is_poll)[slot_run] & (slot_j >= s_pre) & (slot_j < s_pre + ben_len[slot_run])
    pag_code = np.array([code_of[a.pagination_tool] for a in agents])
    poll_code = np.array([code_of[a.polling_tool] for a in agents])
    bpos = slot_j - s_pre
    pag_slot = in_ben & is_pag[slot_run]
    poll_slot = in_ben & is_poll[slot_run]
    tool = np.where(pag_slot, pag_code[slot_agent], tool)
    tool = np.where(poll_slot, poll_code[slot_agent], tool)
    page = np.where(pag_slot, bpos + 1, page)
    n_ben = ben_len[slot_run]
    progress = np.where(poll_slot, np.minimum(100, ((bpos + 1) * 100) // n_ben), progress)
    arg_tok = np.where(poll_slot, loop_tok[slot_run, 0], arg_tok)  # same job id every poll
    slot_err = np.where(in_ben, False, slot_err)

    # destructive without approval: the last tool call of the run
    last_slot = offsets + k - 1
    unap_slot = np.zeros(n_slots, dtype=bool)
    unap_slot[last_slot[is_unapproved]] = True
    destr_code = np.array([code_of[a.destructive[0]] if a.destructive else -1 for a in agents])
    tool = np.where(unap_slot, destr_code[slot_agent], tool)
    destr_codes = {code_of[t] for a in agents for t in a.destructive}
    is_destr = np.isin(tool, list(destr_codes)) if destr_codes else np.zeros(n_slots, dtype=bool)
    approved = np.where(is_destr, 1, approved)
    unap_val = np.where(rng.random(n_slots) < 0.5, 2, 0)  # false or not recorded
    approved = np.where(unap_slot, unap_val, approved)

    # a call to a tool that does not exist: the first tool call, failing
    unk_slot = np.zeros(n_slots, dtype=bool)
    unk_slot[offsets[is_unknown]] = True
    tool = np.where(unk_slot, unknown_code, tool)
    slot_err = np.where(unk_slot, True, slot_err)
    slot_err = np.where(unap_slot, False, slot_err)

    # ---- steps: an LLM step before every tool call, and a final LLM answer ----------------
    n_llm = n_slots + n_runs
    llm_run = np.concatenate([slot_run, run_seq])
    llm_turn = np.concatenate([slot_j, k])  # turn index; the final answer is turn k
    llm_next = np.concatenate([tool, np.full(n_runs, -1)])
    llm_step = 2 * llm_turn + 1
    tool_step = 2 * slot_j + 2

    # tokens grow with the conversation
    in_tok = (700 + 380 * llm_turn + rng.integers(0, 300, n_llm)).astype(np.int64)
    out_tok = rng.integers(40, 260, n_llm).astype(np.int64)
    spike_llm = np.zeros(n_llm, dtype=bool)
    spike_idx = np.flatnonzero(is_spike)
    spike_llm[n_slots + spike_idx] = True  # the final answer blows up the context
    in_tok = np.where(spike_llm, in_tok * 120 + 150_000, in_tok)
    llm_agent = agent_idx[llm_run]
    p_in = np.array([a.price_in for a in agents])[llm_agent] * price_factor[llm_agent]
    p_out = np.array([a.price_out for a in agents])[llm_agent] * price_factor[llm_agent]
    llm_cost = in_tok * p_in + out_tok * p_out
    llm_lat = rng.lognormal(np.log(700.0), 0.35, n_llm) * (1 + in_tok / 8000.0) ** 0.3
    # clipped well above the default policy's min_confidence (0.30): the only low-confidence
    # steps are the injected ones, recorded in the truth (unbounded, about 1 LLM step in 7,000
    # fell below 0.30; clipping keeps the random stream)
    conf = np.maximum(rng.beta(9.0, 2.0, n_llm), _MIN_BACKGROUND_CONFIDENCE)
    low_llm = np.zeros(n_llm, dtype=bool)
    low_llm[n_slots + np.flatnonzero(is_lowconf)] = True
    conf = np.where(low_llm, rng.uniform(0.05, 0.25, n_llm), conf)

    tool_lat = np.where(slot_err, rng.uniform(1500, 5000, n_slots), rng.lognormal(np.log(180.0), 0.5, n_slots))
    tool_cost_tab = np.array([0.002 if t.startswith("search") else 0.0 for t in vocab])
    tool_cost = tool_cost_tab[tool]

    # ---- assemble -----------------------------------------------------------------------
    step_run = np.concatenate([llm_run, slot_run])
    step_no = np.concatenate([llm_step, tool_step]).astype(np.int64)
    order = np.lexsort((step_no, step_run))
    step_run = step_run[order]
    step_no = step_no[order]
    is_llm = np.concatenate([np.ones(n_llm, bool), np.zeros(n_slots, bool)])[order]
    lat = np.concatenate([llm_lat, tool_lat])[order]
    # start time of each step: run start + latencies of the previous steps + small gaps
    n_steps = 2 * k + 1
    run_off = np.concatenate([[0], np.cumsum(n_steps)[:-1]])
    elapsed = np.cumsum(lat + 25.0) - (lat + 25.0)
    elapsed = elapsed - np.repeat(elapsed[run_off], n_steps)
    ts_us = (
        int(day0.timestamp() * 1e6)
        + np.round(start_s[step_run] * 1e6).astype(np.int64)
        + np.round(elapsed * 1e3).astype(np.int64)
    )

    def cat(a_llm: np.ndarray, a_tool: np.ndarray) -> np.ndarray:
        return np.concatenate([a_llm, a_tool])[order]

    run_agent = np.array(names, dtype=object)
    vocab_arr = np.array(vocab + [""], dtype=object)
    frame = pl.DataFrame(
        {
            "_r": step_run,
            "step": step_no,
            "ts_us": ts_us,
            "_llm": is_llm,
            "_tool": cat(llm_next, tool),
            "_turn": cat(llm_turn, slot_j),
            "_arg": cat(rng.integers(1, 2**62, n_llm), arg_tok),
            "_res": cat(np.zeros(n_llm, np.int64), res_tok),
            "_noise": cat(np.zeros(n_llm, bool), noise),
            "_noise_tok": rng.integers(1, 2**62, n_llm + n_slots),
            "_page": cat(np.full(n_llm, -1), page),
            "_progress": cat(np.full(n_llm, -1), progress),
            "_err": cat(np.zeros(n_llm, bool), slot_err),
            "_errtype": rng.integers(0, len(_ERROR_TYPES), n_llm + n_slots),
            "_unknown": cat(np.zeros(n_llm, bool), unk_slot),
            "input_tokens": cat(in_tok, np.full(n_slots, -1)),
            "output_tokens": cat(out_tok, np.full(n_slots, -1)),
            "cost_usd": cat(llm_cost, tool_cost),
            "latency_ms": lat,
            "_approved": cat(np.zeros(n_llm, np.int8), approved),
            "confidence": cat(conf, np.full(n_slots, np.nan)),
        }
    )
    run_info = pl.DataFrame(
        {
            "_r": run_seq,
            "agent": pl.Series(names, dtype=pl.String).gather(agent_idx),
            "version": pl.Series(list(version), dtype=pl.String).gather(agent_idx),
            "_k": k,
            "_delegated": rng.random(n_runs) < sc.delegation_rate,
            "_parent_pick": rng.integers(0, max(n_runs, 1), n_runs),
            "feedback": _feedback(rng, agent_idx, names, sc, d),
            "outcome": _outcome(rng, agent_idx, names, sc, d, is_loop | is_unknown),
        }
    )
    run_id_expr = pl.format("r{}-{}", pl.lit(f"{d:04d}"), pl.col("_r").cast(pl.String).str.zfill(6))
    run_info = run_info.with_columns(run_id_expr.alias("run_id"))
    # delegated runs of planner/research name an earlier run of the day as parent
    parent = run_info.select(
        pl.col("_r"),
        pl.when(pl.col("_delegated") & (pl.col("_parent_pick") < pl.col("_r")))
        .then(pl.format("r{}-{}", pl.lit(f"{d:04d}"), pl.col("_parent_pick").cast(pl.String).str.zfill(6)))
        .alias("parent_run_id"),
    )
    run_info = run_info.join(parent, on="_r")

    tool_name = pl.Series(vocab_arr, dtype=pl.String)
    ev = frame.join(run_info, on="_r", how="left")
    is_llm_fail = (np.random.default_rng([seed, d, 1]).random(n_runs) < sc.llm_failure_rate) & (k >= 5)
    if is_llm_fail.any():  # every LLM call but the final answer fails
        failing = pl.lit(pl.Series(is_llm_fail)).gather(pl.col("_r"))
        ev = ev.with_columns((pl.col("_err") | (pl.col("_llm") & (pl.col("_turn") < pl.col("_k")) & failing)).alias("_err"))
    tool_str = pl.col("_tool").replace_strict(
        list(range(len(vocab_arr))) + [-1],
        tool_name.to_list() + ["final"],
        return_dtype=pl.String,
    )
    noise_sfx = pl.when(pl.col("_noise")).then(
        pl.concat_str(
            pl.lit(',  "request_id": "'),
            _hex(pl.col("_noise_tok")).str.slice(0, 12),
            pl.lit("-"),
            _hex(pl.col("_noise_tok") // 7).str.slice(0, 8),
            pl.lit('", "sent_at": "'),
            pl.from_epoch(pl.col("ts_us"), time_unit="us").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
            pl.lit('"'),
        )
    ).otherwise(pl.lit(""))
    err_txt = pl.lit(list(_ERROR_TYPES), dtype=pl.List(pl.String)).list.get(pl.col("_errtype"))
    tool_args = (
        pl.when(pl.col("_page") >= 0)
        .then(pl.format('{{"page": {}, "page_size": 50}}', pl.col("_page")))
        .when(pl.col("_progress") >= 0)
        .then(pl.format('{{"job_id": "job-{}"}}', _hex(pl.col("_arg")).str.slice(0, 10)))
        .otherwise(pl.concat_str(pl.lit('{"query": "'), _words(pl.col("_arg")), pl.lit('"'), noise_sfx, pl.lit("}")))
    )
    tool_result = (
        pl.when(pl.col("_unknown"))
        .then(pl.format("ToolNotFoundError: no such tool '{}'", tool_str))
        .when(pl.col("_err"))
        .then(pl.concat_str(pl.lit("error: "), err_txt, pl.lit(" calling upstream service")))
        .when(pl.col("_page") >= 0)
        .then(pl.format('{{"items": ["it{}", "it{}"], "page": {}, "has_more": true}}',
                        _hex(pl.col("_res")).str.slice(0, 8), _hex(pl.col("_res") // 3).str.slice(0, 8),
                        pl.col("_page")))
        .when(pl.col("_progress") >= 0)
        .then(pl.when(pl.col("_progress") >= 100).then(pl.lit('{"status": "done", "progress": 100}'))
              .otherwise(pl.format('{{"status": "running", "progress": {}}}', pl.col("_progress"))))
        .otherwise(pl.concat_str(pl.lit('{"status": 200, "data": "'), _words(pl.col("_res"), 6), pl.lit('"'),
                                 pl.when(pl.col("_noise")).then(pl.concat_str(
                                     pl.lit(', "retrieved_at": "'),
                                     pl.from_epoch(pl.col("ts_us") + 180_000, time_unit="us")
                                     .dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                     pl.lit('"'))).otherwise(pl.lit("")),
                                 pl.lit("}")))
    )
    llm_args = pl.format(
        "system: you are the {} agent. conversation turn {} of {}; context {} tokens; user asks: {}",
        pl.col("agent"), pl.col("_turn"), pl.col("run_id"), pl.col("input_tokens"), _words(pl.col("_arg"), 5),
    )
    llm_result = pl.when(pl.col("_tool") >= 0).then(pl.concat_str(pl.lit("call "), tool_str)).otherwise(
        pl.lit("final answer")
    )
    is_last_llm = pl.col("_llm") & (pl.col("_turn") == pl.col("_k"))
    ev = ev.select(
        pl.col("run_id"),
        pl.col("step"),
        pl.from_epoch(pl.col("ts_us"), time_unit="us").dt.replace_time_zone("UTC").alias("ts"),
        pl.when(pl.col("_llm")).then(pl.lit(LLM_ACTION)).otherwise(tool_str).alias("action"),
        pl.col("agent"),
        pl.when(pl.col("_llm")).then(llm_args).otherwise(tool_args).alias("args"),
        pl.when(pl.col("_llm") & pl.col("_err")).then(pl.concat_str(pl.lit("error: "), err_txt, pl.lit(" from the model API")))
        .when(pl.col("_llm")).then(llm_result).otherwise(tool_result).alias("result"),
        pl.when(pl.col("_err")).then(pl.lit("error")).otherwise(pl.lit("ok")).alias("status"),
        pl.when(pl.col("_unknown")).then(pl.lit("ToolNotFoundError")).when(pl.col("_err")).then(err_txt)
        .alias("error_type"),
        pl.when(pl.col("input_tokens") >= 0).then(pl.col("input_tokens")).alias("input_tokens"),
        pl.when(pl.col("output_tokens") >= 0).then(pl.col("output_tokens")).alias("output_tokens"),
        pl.col("cost_usd"),
        pl.col("latency_ms"),
        pl.col("parent_run_id"),
        pl.when(pl.col("_approved") == 1).then(True).when(pl.col("_approved") == 2).then(False)
        .alias("approved"),
        pl.col("confidence").fill_nan(None),
        pl.col("version"),
        pl.when(is_last_llm).then(pl.col("feedback")).alias("feedback"),
        pl.when(is_last_llm).then(pl.col("outcome")).alias("outcome"),
    ).cast(CANONICAL_SCHEMA)  # type: ignore[arg-type]

    # ---- the same prompt again and again (own stream: the fleet is the same otherwise) ------
    plain = ~(is_loop | is_pag | is_poll | is_unapproved | is_spike | is_lowconf | is_unknown | is_llm_fail)
    ev, llm_rep = _repeat_llm_calls(ev, np.random.default_rng([seed, d, 2]), d, plain, k, sc)

    # ---- delegation ping-pong chains (extra runs that name the previous one as parent) ----
    chains = _delegation_chains(rng, d, day0, sc, names, version)
    if chains is not None:
        ev = pl.concat([ev, chains[0]])

    # ---- truth ------------------------------------------------------------------------------
    rid = run_info.select("_r", "run_id", "agent").sort("_r")
    run_ids = rid["run_id"].to_numpy()
    inj = pl.DataFrame(
        {
            "run_id": run_ids,
            "agent": rid["agent"],
            "first_ts": pl.Series(
                int(day0.timestamp() * 1e6) + np.round(start_s * 1e6).astype(np.int64)
            ).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "_loop": pl.Series(list(_LOOP_KINDS), dtype=pl.String).gather(np.maximum(loop_kind, 0)).set(
                pl.Series(~is_loop), None
            ),
            "pagination": is_pag,
            "polling": is_poll,
            "unapproved_destructive": is_unapproved,
            "cost_spike": is_spike,
            "low_confidence": is_lowconf,
            "unknown_tool": is_unknown,
            "llm_failures": is_llm_fail,
            "_llm_rep": pl.Series(llm_rep.label.tolist(), dtype=pl.String),
        }
    )
    flags = ["unapproved_destructive", "cost_spike", "low_confidence", "unknown_tool", "llm_failures",
             "pagination", "polling"]
    runs_truth = inj.select(
        "run_id",
        "agent",
        "first_ts",
        pl.concat_list(
            [pl.when(pl.col("_loop").is_not_null()).then(pl.concat_str(pl.lit("loop:"), pl.col("_loop")))]
            + [pl.when(pl.col(f)).then(pl.lit(f)) for f in flags]
            + [pl.col("_llm_rep")]
        ).list.drop_nulls().alias("injected"),
        (
            pl.col("_loop").is_not_null()
            | pl.col("unapproved_destructive")
            | pl.col("cost_spike")
            | pl.col("low_confidence")
            | pl.col("unknown_tool")
            | pl.col("llm_failures")
            | pl.col("_llm_rep").str.starts_with("loop:").fill_null(False)
        ).alias("needs_human"),
    )
    if chains is not None:
        runs_truth = pl.concat([runs_truth, chains[1]])

    lp = np.flatnonzero(is_loop)
    pat_names = vocab_arr[pat[lp]]
    loops_truth = pl.DataFrame(
        {
            "run_id": run_ids[lp].tolist(),
            "agent": run_agent[agent_idx[lp]].tolist(),
            "kind": np.array(_LOOP_KINDS, dtype=object)[loop_kind[lp]].tolist(),
            "pattern": [" > ".join(row[: period[i]]) for row, i in zip(pat_names, lp, strict=True)],
            "period": period[lp],
            "period_steps": 2 * period[lp],
            "repeats": repeats[lp],
            "start_step": 2 * pre[lp] + 1,
            "end_step": 2 * (pre[lp] + period[lp] * repeats[lp]),
        },
        schema=_LOOPS_TRUTH_SCHEMA,
    )
    bn = np.flatnonzero(is_pag | is_poll)
    benign_truth = pl.DataFrame(
        {
            "run_id": run_ids[bn].tolist(),
            "agent": run_agent[agent_idx[bn]].tolist(),
            "kind": np.where(is_pag[bn], "pagination", "polling").tolist(),
            "action": vocab_arr[np.where(is_pag[bn], pag_code[agent_idx[bn]], poll_code[agent_idx[bn]])].tolist(),
            "start_step": 2 * pre[bn] + 1,
            "end_step": 2 * (pre[bn] + ben_len[bn]),
        },
        schema=_BENIGN_TRUTH_SCHEMA,
    )
    if llm_rep.loops.height:
        loops_truth = pl.concat([loops_truth, llm_rep.loops]).sort("run_id", maintain_order=True)
    if llm_rep.benign.height:
        benign_truth = pl.concat([benign_truth, llm_rep.benign]).sort("run_id", maintain_order=True)
    truth = {"runs": runs_truth, "loops": loops_truth, "benign": benign_truth}
    truth["delegation"] = chains[2] if chains is not None else _empty_delegation()
    return ev, truth


@dataclass
class _LlmRepeats:
    label: np.ndarray  #: per run: "loop:llm_exact", "loop:llm_error_retry", "llm_sampling" or None
    loops: pl.DataFrame  #: truth rows of the retries (the loops table's columns)
    benign: pl.DataFrame  #: truth rows of the sampling (the benign table's columns)


def _repeat_llm_calls(
    ev: pl.DataFrame, rr: np.random.Generator, d: int, plain: np.ndarray, k: np.ndarray, sc: Scenario
) -> tuple[pl.DataFrame, _LlmRepeats]:
    """Runs that send the LLM step before one of their tool calls (turn ``j``, step ``2j + 1``)
    ``c + 1`` times in a row: ``c`` copies first, then the original step (which goes on to the
    tool call); the run's later steps move ``c`` steps and the copies' time later."""
    n_runs = plain.size
    u = rr.random(n_runs)
    retry = plain & (u < sc.llm_retry_rate)
    sampling = plain & ~retry & (u < sc.llm_retry_rate + sc.llm_sampling_rate)
    names = list(sc.llm_retry_kinds)
    kp = np.array([sc.llm_retry_kinds[x] for x in names], dtype=float)
    kind = np.array(names, dtype=object)[rr.choice(len(names), size=n_runs, p=kp / kp.sum())] if names else None
    turn = np.floor(rr.random(n_runs) * k).astype(np.int64)  # an LLM step followed by a tool call
    copies = np.where(sampling, rr.integers(2, 5, n_runs), rr.integers(3, 10, n_runs))
    tok = rr.integers(1, 2**62, (n_runs, 9))
    errtype = rr.integers(0, len(_ERROR_TYPES), (n_runs, 9))
    lat = rr.uniform(1500, 5000, (n_runs, 9))
    label = np.full(n_runs, None, dtype=object)
    sel = np.flatnonzero(retry | sampling)
    if sel.size == 0 or kind is None:
        return ev, _LlmRepeats(label, pl.DataFrame(schema=_LOOPS_TRUTH_SCHEMA),
                               pl.DataFrame(schema=_BENIGN_TRUTH_SCHEMA))
    mode = np.where(sampling[sel], "sampling", kind[sel].astype(str))  # exact | error_retry | sampling
    label[sel] = np.where(mode == "sampling", "llm_sampling", np.char.add("loop:llm_", mode.astype(str)))
    c = copies[sel]
    info = pl.DataFrame({
        "run_id": pl.select(pl.format("r{}-{}", pl.lit(f"{d:04d}"), pl.lit(pl.Series(sel)).cast(pl.String)
                                      .str.zfill(6))).to_series(),
        "_s": 2 * turn[sel] + 1,
        "_c": c,
        "_mode": mode.tolist(),
        "_b": np.arange(sel.size),
    })
    # the copies: the original step repeated, i = 0..c-1, each with its own draws
    # (one row per selected run, in the order of sel: row b is run sel[b]; not sorted by run id,
    # which with more than 999,999 runs a day does not sort as the run numbers do)
    base = ev.join(info, on="run_id", how="inner").filter(pl.col("step") == pl.col("_s")).sort("_b")
    row = np.repeat(np.arange(base.height), c)  # the run of every copy
    i = np.arange(row.size) - np.repeat(np.cumsum(c) - c, c)  # the copy's number within its run
    err = pl.col("_mode") == "error_retry"
    et = pl.lit(list(_ERROR_TYPES), dtype=pl.List(pl.String)).list.get(pl.col("_et"))
    cp = base[row].with_columns(
        pl.Series("_i", i), pl.Series("_tok", tok[sel][row, i]), pl.Series("_et", errtype[sel][row, i]),
        pl.Series("_lat", lat[sel][row, i]),
    ).with_columns(
        (pl.col("_s") + pl.col("_i")).alias("step"),
        pl.when(err).then(pl.concat_str(pl.lit("error: "), et, pl.lit(" from the model API")))
        .when(pl.col("_mode") == "exact")
        .then(pl.concat_str(pl.lit('could not parse the reply: {"tool": "'), pl.col("result").str.strip_prefix("call ")))
        .otherwise(pl.concat_str(pl.lit("candidate answer: "), _words(pl.col("_tok"), 6))).alias("result"),
        pl.when(err).then(pl.lit("error")).otherwise(pl.col("status")).alias("status"),
        pl.when(err).then(et).otherwise(pl.col("error_type")).alias("error_type"),
        pl.when(err).then(None).otherwise(pl.col("output_tokens")).alias("output_tokens"),
        pl.when(err).then(0.0).otherwise(pl.col("cost_usd")).alias("cost_usd"),
        pl.when(err).then(pl.col("_lat")).otherwise(pl.col("latency_ms")).alias("latency_ms"),
    )
    gap = ((pl.col("latency_ms") + 25.0) * 1000).round().cast(pl.Int64)
    cp = cp.with_columns(gap.cum_sum().over("run_id").alias("_done"))
    cp = cp.with_columns((pl.col("ts") + pl.duration(microseconds=pl.col("_done") - gap)).alias("ts"))
    shift = cp.group_by("run_id").agg(pl.col("_done").max().alias("_shift_us"))
    moved = (pl.col("_s").is_not_null() & (pl.col("step") >= pl.col("_s"))).fill_null(False)
    out = (
        ev.join(info, on="run_id", how="left").join(shift, on="run_id", how="left")
        .with_columns(
            pl.when(moved).then(pl.col("step") + pl.col("_c")).otherwise(pl.col("step")).alias("step"),
            pl.when(moved).then(pl.col("ts") + pl.duration(microseconds=pl.col("_shift_us")))
            .otherwise(pl.col("ts")).alias("ts"),
        )
        .select(ev.columns)
    )
    out = pl.concat([out, cp.select(ev.columns)]).sort("run_id", "step")
    agent = base["agent"]
    start = base["_s"].to_numpy()
    n_copies = base["_c"].to_numpy()
    modes = base["_mode"].to_numpy()
    is_retry = modes != "sampling"
    loops = pl.DataFrame({
        "run_id": base["run_id"].filter(pl.Series(is_retry)),
        "agent": agent.filter(pl.Series(is_retry)),
        "kind": np.char.add("llm_", modes[is_retry].astype(str)).tolist(),
        "pattern": [LLM_ACTION] * int(is_retry.sum()),
        "period": np.ones(int(is_retry.sum()), np.int64),
        "period_steps": np.ones(int(is_retry.sum()), np.int64),
        "repeats": n_copies[is_retry],
        "start_step": start[is_retry],
        "end_step": start[is_retry] + n_copies[is_retry] - 1,  # the copies; the original reply differs
    }, schema=_LOOPS_TRUTH_SCHEMA)
    benign = pl.DataFrame({
        "run_id": base["run_id"].filter(pl.Series(~is_retry)),
        "agent": agent.filter(pl.Series(~is_retry)),
        "kind": ["llm_sampling"] * int((~is_retry).sum()),
        "action": [LLM_ACTION] * int((~is_retry).sum()),
        "start_step": start[~is_retry],
        "end_step": start[~is_retry] + n_copies[~is_retry],  # copies and original: one prompt
    }, schema=_BENIGN_TRUTH_SCHEMA)
    return out.cast(CANONICAL_SCHEMA), _LlmRepeats(label, loops, benign)  # type: ignore[arg-type]


def _feedback(
    rng: np.random.Generator, agent_idx: np.ndarray, names: list[str], sc: Scenario, d: int
) -> np.ndarray:
    fb = np.clip(rng.normal(0.70, 0.10, agent_idx.size), 0, 1)
    for ds in sc.feedback_drift:
        if d >= ds.onset_day:
            mine = agent_idx == names.index(ds.agent)
            fb = np.where(mine, np.clip(fb + 0.02 * (d - ds.onset_day + 1) * ds.strength / 0.25, 0, 1), fb)
    return fb


def _outcome(
    rng: np.random.Generator, agent_idx: np.ndarray, names: list[str], sc: Scenario, d: int, failed: np.ndarray
) -> np.ndarray:
    p = np.full(agent_idx.size, 0.85)
    for ds in sc.feedback_drift:
        if d >= ds.onset_day:
            mine = agent_idx == names.index(ds.agent)
            p = np.where(mine, np.maximum(0.2, 0.85 - 0.04 * (d - ds.onset_day + 1) * ds.strength / 0.25), p)
    p = np.where(failed, 0.1, p)
    return (rng.random(agent_idx.size) < p).astype(float)


def _empty_delegation() -> pl.DataFrame:
    return pl.DataFrame(schema={"chain_id": pl.String, "run_id": pl.String, "depth": pl.Int64})


def _delegation_chains(
    rng: np.random.Generator, d: int, day0: datetime, sc: Scenario, names: list[str], version: np.ndarray
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame] | None:
    """Chains of runs handing off to one another (``version``: each agent's version that day)."""
    n_chains = int(rng.poisson(sc.delegation_chains_per_day)) if sc.delegation_chains_per_day > 0 else 0
    if n_chains == 0 or len(names) < 2:
        return None
    depth = sc.delegation_chain_depth
    c = np.repeat(np.arange(n_chains), depth)
    lvl = np.tile(np.arange(depth), n_chains)
    pair = rng.choice(len(names), size=(n_chains, 2), replace=True)
    pair[:, 1] = np.where(pair[:, 1] == pair[:, 0], (pair[:, 0] + 1) % len(names), pair[:, 1])
    agent = np.array(names, dtype=object)[pair[c, lvl % 2]]
    run_version = version[pair[c, lvl % 2]]  # v2 from the agent's change-point on, as its other runs
    start = rng.uniform(8 * 3600, 18 * 3600, n_chains)[c] + lvl * 20.0
    run_id = np.array([f"d{d:04d}-{ci:03d}-{li}" for ci, li in zip(c, lvl, strict=True)], dtype=object)
    parent = np.where(lvl > 0, np.array([f"d{d:04d}-{ci:03d}-{li - 1}" for ci, li in zip(c, lvl, strict=True)],
                                        dtype=object), None)
    n = c.size
    # each chain run: llm > handoff:<next agent> > llm
    other = np.array(names, dtype=object)[pair[c, (lvl + 1) % 2]]
    t = int(day0.timestamp() * 1e6) + np.round(start * 1e6).astype(np.int64)
    steps = pl.DataFrame(
        {
            "run_id": np.repeat(run_id, 3).tolist(),
            "step": np.tile(np.arange(1, 4), n),
            "ts": (np.repeat(t, 3) + np.tile(np.array([0, 900_000, 1_200_000]), n)),
            "action": np.column_stack([np.full(n, LLM_ACTION, dtype=object),
                                       np.array([f"handoff:{o}" for o in other], dtype=object),
                                       np.full(n, LLM_ACTION, dtype=object)]).ravel().tolist(),
            "agent": np.repeat(agent, 3).tolist(),
            "parent_run_id": pl.Series(np.repeat(parent, 3).tolist(), dtype=pl.String),
            "version": pl.Series(np.repeat(run_version, 3).tolist(), dtype=pl.String),
        }
    ).with_columns(
        pl.from_epoch("ts", time_unit="us").dt.replace_time_zone("UTC"),
        pl.when(pl.col("action") == LLM_ACTION)
        .then(pl.format("system: you are the {} agent; delegated task {}, turn {}", pl.col("agent"), pl.col("run_id"),
                        pl.col("step")))
        .otherwise(pl.format('{{"task": "{}"}}', pl.col("run_id")))
        .alias("args"),
        pl.lit("ok").alias("status"),
        pl.when(pl.col("action") == LLM_ACTION).then(pl.lit(1200)).alias("input_tokens"),
        pl.when(pl.col("action") == LLM_ACTION).then(pl.lit(80)).alias("output_tokens"),
        pl.when(pl.col("action") == LLM_ACTION).then(pl.lit(0.004)).otherwise(0.0).alias("cost_usd"),
        pl.lit(600.0).alias("latency_ms"),
        pl.when(pl.col("action") == LLM_ACTION).then(pl.lit(0.8)).alias("confidence"),
    )
    steps = steps.with_columns(
        [pl.lit(None, dtype=dt).alias(col) for col, dt in CANONICAL_SCHEMA.items() if col not in steps.columns]
    ).select(list(CANONICAL_SCHEMA)).cast(CANONICAL_SCHEMA)  # type: ignore[arg-type]
    deleg = pl.DataFrame(
        {"chain_id": [f"d{d:04d}-{ci:03d}" for ci in c], "run_id": run_id.tolist(), "depth": lvl},
        schema={"chain_id": pl.String, "run_id": pl.String, "depth": pl.Int64},
    )
    runs = pl.DataFrame(
        {
            "run_id": run_id.tolist(),
            "agent": agent.tolist(),
            "first_ts": pl.Series(t).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "injected": [["delegation_chain"]] * n,
            "needs_human": lvl > 3,
        },
        schema={"run_id": pl.String, "agent": pl.String, "first_ts": pl.Datetime("us", "UTC"),
                "injected": pl.List(pl.String), "needs_human": pl.Boolean},
    )
    return steps, runs, deleg


def _merge_truth(
    parts: list[dict[str, pl.DataFrame]], sc: Scenario, t0: datetime, days: int
) -> dict[str, pl.DataFrame]:
    truth = {name: pl.concat([p[name] for p in parts]).sort("run_id") for name in parts[0]}
    ts_of = [t0 + timedelta(days=int(cp.day)) for cp in sc.changepoints if cp.day < days]
    cps = [cp for cp in sc.changepoints if cp.day < days]
    base = {a.name: a for a in sc.agents}

    def expected(cp: ChangeSpec, upto: int) -> float:
        """The metric's expected value in ``cp.agent``'s runs with nothing injected, with the
        changes of that agent and metric up to day ``upto`` applied (as ``_generate_day`` does)."""
        a = base[cp.agent]
        factor = 1.0
        for other in sc.changepoints:
            if other.agent == cp.agent and other.metric == cp.metric and other.day <= upto:
                factor *= other.factor
        if cp.metric == "steps_per_run":
            # k = 1 + Poisson(max(mean - 1, 0.1)) tool calls, an LLM step before each, a final answer
            return 2.0 * max(a.mean_tool_calls * factor, 1.1) + 1.0
        if cp.metric == "error_rate":
            return min(a.error_rate * factor, 1.0)
        return float("nan")  # cost per run: not stated

    before = [expected(cp, cp.day - 1) for cp in cps]
    after = [expected(cp, cp.day) for cp in cps]
    truth["changepoints"] = pl.DataFrame(
        {
            "agent": [cp.agent for cp in cps],
            "metric": [cp.metric for cp in cps],
            "ts": ts_of,
            "day": [int(cp.day) for cp in cps],
            "factor": [float(cp.factor) for cp in cps],
            "before": before,
            "after": after,
        },
        schema={"agent": pl.String, "metric": pl.String, "ts": pl.Datetime("us", "UTC"), "day": pl.Int64,
                "factor": pl.Float64, "before": pl.Float64, "after": pl.Float64},
    )
    drifts = [ds for ds in sc.feedback_drift if ds.onset_day < days]
    truth["drift"] = pl.DataFrame(
        {
            "agent": [ds.agent for ds in drifts],
            "onset": [t0 + timedelta(days=int(ds.onset_day)) for ds in drifts],
            "onset_day": [int(ds.onset_day) for ds in drifts],
            "strength": [float(ds.strength) for ds in drifts],
            "kind": ["feedback"] * len(drifts),
        },
        schema={"agent": pl.String, "onset": pl.Datetime("us", "UTC"), "onset_day": pl.Int64,
                "strength": pl.Float64, "kind": pl.String},
    )
    truth["load"] = pl.DataFrame(
        {
            "agent": [ls.agent for ls in sc.load],
            "metric": [ls.metric for ls in sc.load],
            "threshold": [float(ls.threshold) for ls in sc.load],
            "slope": [float(ls.slope) for ls in sc.load],
            "every": [ls.every for ls in sc.load],
        },
        schema={"agent": pl.String, "metric": pl.String, "threshold": pl.Float64, "slope": pl.Float64,
                "every": pl.String},
    )
    return truth


def _write_events_by_day(events: pl.DataFrame, root: Path, *, row_group_size: int) -> None:
    if events.is_empty():
        return
    by_day = events.with_columns(pl.col("ts").dt.date().alias("_date")).partition_by("_date", as_dict=True)
    for (day_value,), part in sorted(by_day.items()):
        target = root / f"date={day_value.isoformat()}" / "part-0.parquet"
        part = part.drop("_date").sort("run_id", "step")
        if target.exists():  # runs that cross midnight land in the next day's file
            part = pl.concat([pl.read_parquet(target, glob=False), part]).sort("run_id", "step")
        _atomic_parquet(part, target, row_group_size=row_group_size)


def _write_truth(truth: dict[str, pl.DataFrame], root: Path) -> None:
    for name, frame in truth.items():
        _atomic_parquet(frame, root / f"{name}.parquet", row_group_size=128_000)


def _atomic_parquet(frame: pl.DataFrame, target: Path, *, row_group_size: int) -> None:
    """Write ``frame`` to ``target`` through a temporary sibling moved onto it. The sibling is
    created with mode ``0o666`` less the umask (as any new file): ``tempfile.mkstemp`` made it
    ``0o600``, and every file of a generated fleet was readable by its owner only."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:  # (a name taken by another writer: draw again, as mkstemp does)
        tmp = str(target.parent / f".tmp-{secrets.token_hex(8)}.parquet")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # (the umask applies)
        except FileExistsError:
            continue
        break
    os.close(fd)
    try:
        frame.write_parquet(tmp, row_group_size=row_group_size, statistics=True)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def clear(path: str | os.PathLike[str]) -> None:
    """Remove a fleet folder written by :func:`write_fleet` (events and truth); a folder
    without the fleet's marker is refused (see :data:`FLEET_MARKER`)."""
    root = Path(path)
    if not (root / FLEET_MARKER).is_file():
        raise InvalidParameterError(f"{root}: not a fleet written by driftwatch (no {FLEET_MARKER}); nothing removed")
    for sub in ("events", "truth"):
        shutil.rmtree(root / sub, ignore_errors=True)
    (root / FLEET_MARKER).unlink()


__all__ = [
    "AgentSpec",
    "ChangeSpec",
    "DriftSpec",
    "Fleet",
    "LoadSpec",
    "Scenario",
    "clear",
    "default_agents",
    "generate",
    "read_truth",
    "write_fleet",
]
