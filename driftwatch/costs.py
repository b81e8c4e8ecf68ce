"""Cost at volume: where the money goes per run, and what a day costs at scale.

:func:`cost_profile` answers the production questions a demo never does: what a
run costs at the median and in the tail, how much of the spend is burnt in
loops, failed steps and retries, how much sits in runs over the policy's cost
ceiling, what a successful outcome costs, and what a day costs at a given
volume, with an interval, together with the expected cost of the worst run of
such a day (the 1-in-N edge case).

It runs in the fleet stage: :func:`cost_profile_from_runs` works on the
per-run tables only (:func:`driftwatch.features.run_features` and, optionally,
the loop table), so it also runs after a chunked or Spark per-run stage.

Examples
--------
>>> import driftwatch as dw
>>> fleet = dw.synth.generate(days=2, runs_per_day=300, seed=1)
>>> prof = dw.cost_profile(fleet.events, volume_per_day=10_000)
>>> prof["series"].to_list()
['agent=billing', 'agent=planner', 'agent=research', 'agent=support', 'all']
>>> row = prof.filter(series="all").row(0, named=True)
>>> row["projected_daily_lo"] < row["projected_daily_usd"] < row["projected_daily_hi"]
True
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from driftwatch._frames import (
    FrameLike,
    as_lazy,
    check_by_types,
    check_seed,
    detect_loops_if_available,
    normalize_by,
    run_table,
    series_expr,
    series_label,
)
from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.loops import _waste_once
from driftwatch.policy import exceeds

#: Runs whose ``outcome`` is at least this count as successful.
SUCCESS_OUTCOME = 0.5

#: Largest number of random draws one bootstrap matrix may hold (memory bound).
_DRAW_BUDGET = 20_000_000

#: Minimum number of runs before the tail is extrapolated with a Pareto fit.
_MIN_TAIL_RUNS = 200

#: Largest generalised-Pareto shape accepted for extrapolation (0.5: infinite variance beyond).
_MAX_TAIL_SHAPE = 0.5

#: Columns of :func:`cost_profile`, in order.
COST_COLUMNS: tuple[str, ...] = (
    "series",
    "runs",
    "days",
    "runs_per_day",
    "observed_days",
    "runs_with_cost",
    "total_cost_usd",
    "cost_mean",
    "cost_p50",
    "cost_p90",
    "cost_p99",
    "cost_max",
    "p99_over_p50",
    "max_over_p50",
    "loop_cost_usd",
    "loop_share",
    "error_cost_usd",
    "error_share",
    "retry_cost_usd",
    "retry_share",
    "cost_ceiling_usd",
    "runs_over_ceiling",
    "over_ceiling_cost_usd",
    "over_ceiling_share",
    "runs_with_outcome",
    "successes",
    "success_rate",
    "cost_per_success",
    "volume_per_day",
    "projected_daily_usd",
    "projected_daily_lo",
    "projected_daily_hi",
    "interval",
    "worst_run_expected_usd",
    "worst_run_1_in_n_usd",
    "worst_run_method",
    "tail_shape",
)

VolumeLike = float | int | Mapping[str, float] | None


# --------------------------------------------------------------------------------------------
# public API


def cost_profile(
    events: Any,
    *,
    by: str | Sequence[str] | None = ("agent",),
    volume_per_day: VolumeLike = None,
    loops: pl.DataFrame | pl.LazyFrame | None = None,
    policy: Any = None,
    interval: float = 0.95,
    n_boot: int = 1000,
    random_state: int = 0,
) -> pl.DataFrame:
    """Cost per run, spend by cause and projected spend at volume, per series.

    A thin wrapper: computes :func:`driftwatch.run_features` (and, when
    ``loops`` is not given, :func:`driftwatch.detect_loops`) and calls
    :func:`cost_profile_from_runs`.

    Parameters
    ----------
    events : polars.DataFrame, polars.LazyFrame or ReadResult
        Canonical events.
    by : str or sequence of str, default=("agent",)
        Columns of the run table that define a series (``agent``, ``version``).
        The whole fleet is always added as series ``"all"``.
    volume_per_day : float, int, mapping or None, default=None
        Runs per day to project to. A number is the fleet's volume; each series
        gets its observed share of it. A mapping gives the volume of named
        series (``{"agent=billing": 50_000, "all": 200_000}``, or ``{"billing": 50_000}``
        when ``by`` is one column); unnamed series get no projection, ``"all"`` is the sum
        when every series is named, and a name that is no series is an error.
        ``None`` projects at the observed runs per day.
    loops : polars.DataFrame or LazyFrame, optional
        :func:`driftwatch.detect_loops` or :func:`driftwatch.loop_summary`
        output (``run_id, wasted_cost_usd``). Detected from ``events`` when
        omitted. ``same_action`` loops (the same tools with changing arguments
        or results, such as pagination) are progress, not waste, and are left
        out; a step wasted by two overlapping loops counts once (a
        ``loop_summary`` table gives this as ``no_progress_cost_usd``).
    policy : driftwatch.Policy, float or None, default=None
        Where the per-run cost ceiling comes from: a ``Policy`` (its
        ``max_cost_usd``), or a number in USD. ``None``: no ceiling columns.
    interval : float, default=0.95
        Coverage of the projection interval.
    n_boot : int, default=1000
        Bootstrap replicates for the projection interval.
    random_state : int, default=0
        Seed of the bootstrap.

    Returns
    -------
    polars.DataFrame
        One row per series (see :func:`cost_profile_from_runs`).

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> ev = pl.DataFrame({"run_id": ["a", "a", "b", "c"], "step": [1, 2, 1, 1],
    ...                    "action": ["llm", "search", "llm", "llm"],
    ...                    "cost_usd": [0.1, 0.02, 0.1, 0.5]})
    >>> out = dw.cost_profile(ev, by=(), loops=pl.DataFrame({"run_id": [], "wasted_cost_usd": []}))
    >>> out.select("series", "runs", pl.col("cost_p50").round(4), "cost_max").to_dicts()
    [{'series': 'all', 'runs': 3, 'cost_p50': 0.12, 'cost_max': 0.5}]
    """
    from driftwatch.features import run_features

    lf = as_lazy(events)
    features = run_features(lf, by=normalize_by(by, lf.collect_schema()))
    if loops is None:
        loops = detect_loops_if_available(lf)
    return cost_profile_from_runs(
        features,
        by=by,
        volume_per_day=volume_per_day,
        loops=loops,
        policy=policy,
        interval=interval,
        n_boot=n_boot,
        random_state=random_state,
    )


def cost_profile_from_runs(
    features: FrameLike,
    *,
    by: str | Sequence[str] | None = ("agent",),
    volume_per_day: VolumeLike = None,
    loops: pl.DataFrame | pl.LazyFrame | None = None,
    policy: Any = None,
    interval: float = 0.95,
    n_boot: int = 1000,
    random_state: int = 0,
) -> pl.DataFrame:
    """:func:`cost_profile` on the per-run tables (the audit's fleet stage).

    Parameters
    ----------
    features : polars.DataFrame or LazyFrame
        :func:`driftwatch.run_features` output: at least ``run_id, cost_usd``;
        ``first_ts`` (observed volume), ``error_cost_usd``, ``retry_cost_usd``
        and ``outcome`` are used when present, plus the ``by`` columns.
    by, volume_per_day, policy, interval, n_boot, random_state
        As in :func:`cost_profile`.
    loops : polars.DataFrame or LazyFrame, optional
        Loop table with ``run_id, wasted_cost_usd`` (per loop or per run;
        ``same_action`` loops are left out, see :func:`cost_profile`).
        ``None``: the loop columns are null.

    Returns
    -------
    polars.DataFrame
        One row per series, sorted by series with ``"all"`` last:

        - ``series`` (str), ``runs`` (int), ``days`` (distinct UTC dates with a
          run start), ``runs_per_day`` (runs / ``observed_days``),
          ``observed_days`` (the time the whole fleet's run starts cover, in days:
          see :func:`observed_days`),
          ``runs_with_cost`` (runs with a recorded cost: every figure below is
          over these; all null when there are none, e.g. a log without costs).
        - ``total_cost_usd``, ``cost_mean``, ``cost_p50``, ``cost_p90``,
          ``cost_p99``, ``cost_max``: cost per run (linear-interpolated quantiles).
        - ``p99_over_p50``, ``max_over_p50``: tail ratios (null when p50 is 0).
        - ``loop_cost_usd``/``loop_share``, ``error_cost_usd``/``error_share``,
          ``retry_cost_usd``/``retry_share``: spend wasted in loops, in failed
          steps and in retries, and its share of ``total_cost_usd``. The causes
          overlap (a failed retry inside a loop counts in all three), so the
          shares do not add up.
        - ``cost_ceiling_usd``, ``runs_over_ceiling``, ``over_ceiling_cost_usd``,
          ``over_ceiling_share``: runs whose cost exceeds the policy ceiling.
        - ``runs_with_outcome``, ``successes`` (``outcome >= 0.5``),
          ``success_rate``, ``cost_per_success`` (spend of the runs with an
          outcome and a cost / their successes).
        - ``volume_per_day``, ``projected_daily_usd`` (volume x mean cost),
          ``projected_daily_lo``/``projected_daily_hi`` (prediction interval of
          one day's spend), ``interval`` (its coverage).
        - ``worst_run_expected_usd``: expected cost of the most expensive run
          of a day at that volume, E[max of N runs]; ``worst_run_1_in_n_usd``:
          the cost exceeded by one run in N (quantile 1 - 1/N);
          ``worst_run_method``: ``"empirical"``, ``"pareto_tail"``,
          ``"empirical_capped"`` or, on the ``"all"`` row, ``"series_max"`` (all
          three null at a volume under one run a day);
          ``tail_shape``: the fitted generalised-Pareto shape (``pareto_tail``).

    Notes
    -----
    **Projection.** A day at volume N costs S = sum of N run costs. The
    interval combines two sources of uncertainty, each simulated with one
    vectorised numpy draw: (1) the mean cost per run, by a nonparametric
    bootstrap of the observed run costs (a matrix of ``n_boot`` resamples; when
    ``n_boot x runs`` exceeds 2e7 draws the bootstrap distribution of the mean is
    replaced by its normal limit, mean +- sd/sqrt(n)); (2) the day's own
    randomness, the sum of N runs drawn from the observed costs (simulated
    directly when ``n_boot x N`` fits the same budget, else its normal limit
    N*mean +- sd*sqrt(N)). The interval is the central ``interval`` range of
    ``N * mean_b + (S_b - N * mean)`` over the replicates. When both fit the
    budget together, the two are simulated at once (a double bootstrap: each
    replicate draws the day's N runs from its own resample of the observed
    runs). The interval never leaves ``N * [min, max]`` of the observed costs.
    It assumes future runs look like the observed ones (same mix, same behaviour).

    **Worst run of a day.** When N <= runs / 2 the expected maximum of N draws
    from the observed costs is computed exactly from the order statistics,
    ``sum_i x_(i) [(i/n)^N - ((i-1)/n)^N]`` (method ``"empirical"``). Beyond
    that the observed maximum would cap the answer, so the tail is
    extrapolated by peaks over threshold: a generalised Pareto distribution is
    fitted by maximum likelihood to the top 10% of runs (else 5%, else 2.5%;
    30 to 1000 runs), and the first fit that passes a Kolmogorov-Smirnov check
    (p >= 0.05) with a shape <= 0.5 is used. E[max] is then integrated over the
    spliced quantile function (empirical below the threshold, Pareto above) and
    the 1-in-N cost read from it (method ``"pareto_tail"``). When no fit
    passes (typically a tail made of a separate cluster of rare, very expensive
    runs, or fewer than 200 runs) the empirical formula is kept and the method
    is ``"empirical_capped"``: the figures are then bounded by the largest
    observed run and understate the worst case.

    A day of the fleet holds each series' runs, so the ``"all"`` row's worst run
    (and 1-in-N run) is never below a series': where the fleet's own figure is
    lower (a series' tail extrapolated by ``pareto_tail`` while the fleet's mix
    of tails passes no fit), it takes the largest series figure and the method
    is ``"series_max"`` (a lower bound; ``tail_shape`` null). With ``"all"``
    given its own volume, only series whose volume is at most their observed
    share of it bound it.

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> from driftwatch.costs import cost_profile_from_runs
    >>> runs = pl.DataFrame({"run_id": ["a", "b", "c", "d"], "agent": ["x"] * 4,
    ...                      "cost_usd": [0.25, 0.25, 0.5, 1.0],
    ...                      "error_cost_usd": [0.0, 0.0, 0.25, 0.5]})
    >>> out = cost_profile_from_runs(runs, by=(), policy=0.5)
    >>> out.select("runs", "cost_max", "error_share", "runs_over_ceiling").to_dicts()
    [{'runs': 4, 'cost_max': 1.0, 'error_share': 0.375, 'runs_over_ceiling': 1}]
    """
    by_cols = normalize_by(by)
    _check_options(interval=interval, n_boot=n_boot, volume_per_day=volume_per_day)
    random_state = check_seed(random_state)
    ceiling = cost_ceiling(policy)
    runs = _prepare_runs(features, by_cols, loops)

    fleet_days = observed_days(runs["_start"])
    # each level aggregated on its own (the series name is built per group, not per run): the
    # by-columns, then the whole fleet as "all"
    sorted_costs = pl.col("cost_usd").drop_nulls().sort().alias("_costs")
    parts = []
    for keys in [by_cols] + ([()] if by_cols else []):
        if keys:
            part = runs.lazy().group_by(*keys).agg(*_summary_exprs(ceiling), sorted_costs)
        else:
            part = runs.lazy().select(*_summary_exprs(ceiling), sorted_costs.implode())
        parts.append(part.with_columns(series_expr(keys)).select("series", pl.all().exclude("series", *keys)))
    agg = (
        pl.concat(pl.collect_all(parts))
        .with_columns(pl.lit(fleet_days, dtype=pl.Float64).alias("_fleet_days"))
        .sort(pl.col("series") == "all", "series")
    )
    costs_by_series = agg.get_column("_costs")  # numpy per series below: no Python floats
    agg = agg.drop("_costs")
    total_runs = runs.height
    mixed = False  # "all" is a mix of series volumes given one by one
    if isinstance(volume_per_day, Mapping):
        mixed = "all" not in {str(k) for k in volume_per_day}
        volume_per_day = _volumes_by_series(volume_per_day, agg.get_column("series").to_list(), by_cols)
        mixed = mixed and "all" in volume_per_day

    fleet_sums = _fleet_sums(runs, ceiling)
    rows: list[dict[str, Any]] = []
    days: dict[str, np.ndarray] = {}
    parts: list[tuple[np.ndarray, float, np.ndarray]] = []
    for i, rec in enumerate(agg.iter_rows(named=True)):
        if rec["series"] == "all":  # (a by series is named "agent=...", never "all")
            rec.update(fleet_sums)
        # one stream per series (seeded by its name): a series' interval does not depend on the others
        rng = np.random.default_rng([random_state, zlib.crc32(rec["series"].encode())])
        costs = costs_by_series[i].to_numpy().astype(np.float64, copy=False)
        volume = _series_volume(volume_per_day, rec, total_runs)
        row = _series_row(rec, costs=costs, ceiling=ceiling, volume=volume, interval=interval, n_boot=n_boot,
                          rng=rng, has_loops=loops is not None, days=days if mixed else None)
        if mixed and rec["series"] != "all":
            parts.append((costs, volume, days.get(rec["series"])))  # type: ignore[arg-type]
        elif mixed:  # the mix the volumes give, not the fleet's observed one
            unknown = [v for c, v, d in parts if d is None and v]
            row.update(dict.fromkeys(_PROJECTION_COLUMNS))
            if not unknown and parts:
                row.update(_mixed_projection([p for p in parts if p[2] is not None], interval))
        if rec["series"] == "all" and len(rows) > 1:
            _bound_by_series(row, rows, total_runs=total_runs, mixed=mixed)
        rows.append(row)
    return pl.DataFrame(rows, schema=_output_schema(), orient="row")


def _bound_by_series(fleet: dict[str, Any], series: Sequence[Mapping[str, Any]], *, total_runs: int,
                     mixed: bool) -> None:
    """Keep the fleet's worst run of a day (row ``fleet``, series ``"all"``) at or above those of
    its series: a day of the fleet holds each series' runs, so its most expensive run costs at
    least theirs, and so does its 1-in-N run (P(X > q) >= N_s/N * 1/N_s). The fleet's own figures
    can fall below when a series' tail is extrapolated (``pareto_tail``) and the fleet's mixed tail
    is not (``empirical_capped``). Each figure below its series' largest is raised to it, and the
    method reads ``"series_max"`` (``tail_shape`` null: no fit of the fleet's tail is used).

    A series counts when its day is part of the fleet's: at its share of the fleet's volume (a
    number, or the observed rates), in a mix of series volumes (``mixed``), or, with ``"all"``
    given its own volume, when the series' volume is at most its observed share of it."""
    if fleet["worst_run_expected_usd"] is None or not total_runs:
        return
    volume = fleet["volume_per_day"]
    inside = [
        r for r in series
        if r["worst_run_expected_usd"] is not None
        and (mixed or r["volume_per_day"] <= volume * r["runs"] / total_runs * (1.0 + 1e-9))
    ]
    raised = False
    for col in ("worst_run_expected_usd", "worst_run_1_in_n_usd"):
        bound = max((r[col] for r in inside if r[col] is not None), default=None)
        if bound is not None and (fleet[col] is None or bound > fleet[col]):
            fleet[col] = bound
            raised = True
    if raised:
        fleet["worst_run_method"] = "series_max"
        fleet["tail_shape"] = None


#: The columns a volume projects (null without one).
_PROJECTION_COLUMNS = ("projected_daily_usd", "projected_daily_lo", "projected_daily_hi", "worst_run_expected_usd",
                       "worst_run_1_in_n_usd", "worst_run_method", "tail_shape")


def observed_days(starts: pl.Series) -> float | None:
    """The time the runs' starts cover, in days: the gaps between consecutive starts, each at
    most a day (a longer gap is a day the log misses, or a quiet one), times n / (n - 1) for
    the time after the last start. It does not depend on where UTC midnight falls: runs from
    Monday noon to Tuesday noon cover one day, not two dates. ``None`` without two distinct
    starts (one instant shows no rate).

    Examples
    --------
    >>> import polars as pl
    >>> from datetime import datetime, timedelta
    >>> from driftwatch.costs import observed_days
    >>> starts = pl.Series([datetime(2026, 1, 5, 12) + timedelta(hours=h) for h in range(24)])
    >>> observed_days(starts)
    1.0
    """
    t = starts.drop_nulls().sort()
    if t.len() < 2:
        return None
    span = (t.diff().drop_nulls().dt.total_microseconds().clip(upper_bound=86_400_000_000).sum()) / 86_400e6
    if span <= 0:
        return None
    return float(span) * t.len() / (t.len() - 1)


def cost_ceiling(policy: Any) -> float | None:
    """The per-run cost ceiling (USD) of ``policy``, or ``None``.

    Accepts a number, a :class:`driftwatch.Policy` (``max_cost_usd``), the path of a
    policy TOML file (as every other function does), an object with
    ``limits.max_cost_usd`` or a mapping with a ``max_cost_usd`` key.
    """
    if policy is None:
        return None
    if isinstance(policy, bool | np.bool_):
        raise InvalidParameterError(f"policy must be a Policy or a cost ceiling in USD, got {policy!r}")
    if isinstance(policy, str | os.PathLike):
        from driftwatch.policy import Policy

        policy = Policy.from_toml(policy)
    if isinstance(policy, numbers.Real):
        value: Any = policy
    elif isinstance(policy, Mapping):
        value = policy.get("max_cost_usd")
    elif hasattr(policy, "max_cost_usd"):
        value = policy.max_cost_usd
    elif hasattr(policy, "limits") and hasattr(policy.limits, "max_cost_usd"):
        value = policy.limits.max_cost_usd
    else:
        raise InvalidParameterError(
            "policy must be a driftwatch.Policy, a policy file path, a mapping with 'max_cost_usd' or a "
            f"number (USD); got {type(policy).__name__}"
        )
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise InvalidParameterError(f"policy max_cost_usd must be a non-negative number of USD, got {value!r}")
    return float(value)


def expected_max(costs: np.ndarray, n_draws: float) -> tuple[float | None, float, str | None, float | None]:
    """Expected maximum of ``n_draws`` runs and the 1-in-N cost, from observed ``costs``.

    Returns ``(expected_max, one_in_n, method, tail_shape)``; see the Notes of
    :func:`cost_profile_from_runs` for the method.

    Examples
    --------
    >>> import numpy as np
    >>> from driftwatch.costs import expected_max
    >>> e, q, method, _ = expected_max(np.array([1.0, 2.0, 3.0, 4.0]), 2)
    >>> round(e, 4), method
    (3.125, 'empirical')
    """
    x = np.sort(np.asarray(costs, dtype=np.float64))
    n = x.size
    if n == 0 or not n_draws or n_draws < 1:  # (under one run a day has no worst run of a day)
        return None, math.nan, None, None
    big_n = float(n_draws)
    one_in_n_emp = float(np.quantile(x, 1.0 - 1.0 / big_n)) if big_n > 1 else float(x.mean())
    if big_n <= n / 2:
        return _emp_expected_max(x, big_n, n), one_in_n_emp, "empirical", None
    fit = _fit_tail(x) if n >= _MIN_TAIL_RUNS else None
    if fit is None:
        return _emp_expected_max(x, big_n, n), one_in_n_emp, "empirical_capped", None
    k, xi, sigma = fit
    u = float(x[n - k - 1])
    p_u = k / n  # P(X > u)

    def tail_q(s: np.ndarray) -> np.ndarray:  # quantile at 1 - s, for s <= p_u
        r = s / p_u
        if abs(xi) < 1e-9:
            return u - sigma * np.log(r)
        return u + sigma / xi * (np.power(r, -xi) - 1.0)

    one_in_n = float(tail_q(np.array([1.0 / big_n]))[0]) if 1.0 / big_n < p_u else one_in_n_emp
    # body: empirical order statistics up to the threshold
    body = _emp_expected_max(x[: n - k], big_n, n)
    # tail: integral over s = 1 - q in (0, p_u] of Q(1 - s) * N (1 - s)^(N - 1) ds, on a log grid
    s = np.geomspace(min(p_u, 1e-9 / big_n), p_u, 4000)
    dens = big_n * np.exp((big_n - 1.0) * np.log1p(-s))
    tail = float(np.trapezoid(tail_q(s) * dens * s, np.log(s)))
    return body + tail, one_in_n, "pareto_tail", xi


def _emp_expected_max(x_low: np.ndarray, big_n: float, n: int) -> float:
    """sum_i x_(i) [(i/n)^N - ((i-1)/n)^N] over the first ``len(x_low)`` order statistics of n."""
    i = np.arange(1, x_low.size + 1, dtype=np.float64)
    prev = np.log((i - 1) / n, where=i > 1, out=np.full(i.size, -np.inf))
    w = np.exp(big_n * np.log(i / n)) - np.exp(big_n * prev)
    return float(w @ x_low)


def _fit_tail(x: np.ndarray) -> tuple[int, float, float] | None:
    """Peaks over threshold on sorted ``x``: the largest top-k (10%, 5%, 2.5% of runs; 30..1000)
    whose generalised-Pareto fit passes a Kolmogorov-Smirnov check (p >= 0.05) with shape <= 0.5."""
    from scipy import stats

    n = x.size
    for frac in (0.1, 0.05, 0.025):
        k = int(min(max(round(frac * n), 30), 1000))
        if k >= n - 1:
            continue
        exc = x[n - k :] - x[n - k - 1]
        xi, sigma = _fit_gpd(exc)
        if not (sigma > 0 and xi <= _MAX_TAIL_SHAPE):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = stats.kstest(exc, stats.genpareto(xi, loc=0.0, scale=sigma).cdf).pvalue
        if p >= 0.05:
            return k, xi, sigma
    return None


# --------------------------------------------------------------------------------------------
# internals


def _check_options(*, interval: float, n_boot: int, volume_per_day: VolumeLike) -> None:
    if not isinstance(interval, int | float) or not 0.0 < float(interval) < 1.0:
        raise InvalidParameterError(f"interval must be a coverage in (0, 1) such as 0.95, got {interval!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 50:
        raise InvalidParameterError(f"n_boot must be an integer >= 50, got {n_boot!r}")
    check_volume(volume_per_day)


#: The most runs per day a projection accepts (10^18; far beyond any fleet, and short of the
#: float overflow of the worst-run figures).
MAX_VOLUME = 1e18


def check_volume(volume_per_day: VolumeLike, *, name: str = "volume_per_day") -> None:
    """Refuse a ``volume_per_day`` the cost profile cannot project: anything but ``None``, a
    positive finite number, or a mapping of series to one. ``name`` is how the message names
    it (:func:`driftwatch.audit` says ``volume_per_day (--volume-per-day)``). An empty mapping
    names no series and would leave every projection null without a word: it is refused too."""
    if volume_per_day is None:
        return
    if isinstance(volume_per_day, Mapping) and not volume_per_day:
        raise InvalidParameterError(
            f"{name} is an empty mapping: it names no series, so nothing would be projected; give the fleet's "
            "runs per day as a number, a mapping of series to runs per day (e.g. {'agent=billing': 50000}), "
            "or None for the observed rate"
        )
    values = volume_per_day.values() if isinstance(volume_per_day, Mapping) else [volume_per_day]
    for v in values:
        if isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) and math.isfinite(v) and v > MAX_VOLUME:
            raise InvalidParameterError(
                f"{name} must be at most {MAX_VOLUME:.0e} runs per day (a day's worst run is projected over "
                f"that many runs), got {volume_per_day!r}"
            )
        if isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            number = isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)
            raise InvalidParameterError(
                f"{name} must be a positive finite number of runs per day (or a mapping of series to one), "
                f"got {volume_per_day!r}" + ("" if number else f" (a {type(v).__name__})")
            )


def _prepare_runs(
    features: FrameLike, by_cols: tuple[str, ...], loops: pl.DataFrame | pl.LazyFrame | None
) -> pl.DataFrame:
    lf, schema = run_table(features, ("run_id", "cost_usd", *by_cols))
    check_by_types(schema, by_cols)
    known = pl.col("cost_usd").is_not_null()  # a run's cost is unknown when none of its steps recorded one

    def part(name: str) -> pl.Expr:  # a share of the run's cost: 0 when absent, unknown with the cost
        value = pl.col(name).cast(pl.Float64).fill_null(0.0) if name in schema else pl.lit(0.0, dtype=pl.Float64)
        return pl.when(known).then(value).alias(name)

    start = pl.col("first_ts") if "first_ts" in schema else pl.lit(None, pl.Datetime("us", "UTC"))
    start_type = schema.get("first_ts")
    if isinstance(start_type, pl.Datetime) and start_type.time_zone is not None:
        start = start.dt.convert_time_zone("UTC")  # (a naive first_ts is UTC already)
    cols = [
        pl.col("run_id"),
        *[pl.col(c) for c in by_cols if c != "run_id"],
        pl.col("cost_usd").cast(pl.Float64).alias("cost_usd"),
        part("error_cost_usd"),
        part("retry_cost_usd"),
        (pl.col("outcome").cast(pl.Float64) if "outcome" in schema else pl.lit(None, pl.Float64)).alias("outcome"),
        start.dt.date().alias("_day"),  # the UTC date, whatever the table's time zone
        start.alias("_start"),
    ]
    lf = lf.select(cols)
    if loops is not None:
        lf = lf.join(_loop_cost(loops), on="run_id", how="left", maintain_order="left").with_columns(
            pl.when(pl.col("cost_usd").is_not_null()).then(pl.col("loop_cost_usd").fill_null(0.0))
        )
    else:
        lf = lf.with_columns(pl.lit(None, dtype=pl.Float64).alias("loop_cost_usd"))
    runs = lf.collect()
    # a fixed order (float sums do not depend on the input's order); per-run tables from the
    # audit are in run_id order already, which one pass checks
    return runs if runs["run_id"].is_sorted(nulls_last=True) else runs.sort("run_id", nulls_last=True)


def _loop_cost(loops: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    if not isinstance(loops, pl.DataFrame | pl.LazyFrame):
        raise InvalidParameterError(
            f"loops must be a detect_loops() or loop_summary() DataFrame, got {type(loops).__name__}"
        )
    lf = loops.lazy()
    schema = lf.collect_schema()
    missing = [c for c in ("run_id", "wasted_cost_usd") if c not in schema]
    if missing:
        raise SchemaError(
            f"loops: missing column(s) {missing} (expected detect_loops() or loop_summary() output); "
            f"found {list(schema)}"
        )
    waste = pl.col("wasted_cost_usd").cast(pl.Float64)
    if "no_progress_cost_usd" in schema:  # a loop_summary table: its runs' no-progress waste
        # (history stored before the column: the run's worst loop decides)
        old = pl.when(_worst_not_same_action()).then(waste).otherwise(0.0) if "worst_kind" in schema else waste
        known = pl.col("no_progress_loops").is_not_null() if "no_progress_loops" in schema else pl.lit(True)
        waste = pl.when(known).then(pl.col("no_progress_cost_usd")).otherwise(old)
    else:
        lf = lf.filter(no_progress_loops(schema))
        if {"end_step", "wasted_steps"} <= set(schema):  # a detect_loops table: each wasted step once
            lf = _waste_once(lf, schema, prefix="_dw_")
            waste = pl.col("_dw_cost")
    return (
        lf.select(pl.col("run_id").cast(pl.String), waste.cast(pl.Float64).alias("loop_cost_usd"))
        .group_by("run_id")
        .agg(pl.col("loop_cost_usd").fill_null(0.0).sum())
    )


def _worst_not_same_action() -> pl.Expr:
    return pl.col("worst_kind").fill_null("") != "same_action"


def no_progress_loops(schema: Mapping[str, Any]) -> pl.Expr:
    """Rows of a loop table with waste: every kind but ``same_action`` (the same tools with
    changing arguments or results, e.g. pagination, which is progress). With a
    :func:`driftwatch.loop_summary` table, the runs with such a loop (``no_progress_loops``; in
    history stored before that column, the run's worst loop decides)."""
    if "kind" in schema:
        return pl.col("kind").fill_null("") != "same_action"
    if "no_progress_loops" in schema:
        return pl.coalesce(pl.col("no_progress_loops") > 0, _worst_not_same_action())
    if "worst_kind" in schema:
        return _worst_not_same_action()
    return pl.lit(True)


def _over_ceiling(ceiling: float | None) -> pl.Expr:
    """The runs over the cost ceiling, as the policy's ``max_cost`` rule decides."""
    return exceeds(pl.col("cost_usd"), ceiling) if ceiling is not None else pl.lit(False)


def _summed_values(ceiling: float | None) -> dict[str, pl.Expr]:
    """The per-run values each float sum of :func:`_summary_exprs` adds up (nulls are left out)."""
    cost = pl.col("cost_usd")
    costed_outcome = pl.col("outcome").is_not_null() & cost.is_not_null()
    return {
        "total_cost_usd": cost,
        "loop_cost_usd": pl.col("loop_cost_usd"),
        "error_cost_usd": pl.col("error_cost_usd"),
        "retry_cost_usd": pl.col("retry_cost_usd"),
        "over_ceiling_cost_usd": cost.filter(_over_ceiling(ceiling)),
        "_outcome_cost": cost.filter(costed_outcome),
    }


def _summary_exprs(ceiling: float | None) -> list[pl.Expr]:
    cost = pl.col("cost_usd")
    has_outcome = pl.col("outcome").is_not_null()
    costed_outcome = has_outcome & cost.is_not_null()
    over = _over_ceiling(ceiling)
    sums = {name: values.sum().alias(name) for name, values in _summed_values(ceiling).items()}
    return [
        pl.len().cast(pl.Int64).alias("runs"),
        pl.col("_day").drop_nulls().n_unique().cast(pl.Int64).alias("days"),
        cost.count().cast(pl.Int64).alias("runs_with_cost"),
        sums["total_cost_usd"],
        cost.mean().alias("cost_mean"),
        cost.quantile(0.5, "linear").alias("cost_p50"),
        cost.quantile(0.9, "linear").alias("cost_p90"),
        cost.quantile(0.99, "linear").alias("cost_p99"),
        cost.max().alias("cost_max"),
        sums["loop_cost_usd"],
        sums["error_cost_usd"],
        sums["retry_cost_usd"],
        over.sum().cast(pl.Int64).alias("runs_over_ceiling"),
        sums["over_ceiling_cost_usd"],
        has_outcome.sum().cast(pl.Int64).alias("runs_with_outcome"),
        (pl.col("outcome") >= SUCCESS_OUTCOME).fill_null(False).sum().cast(pl.Int64).alias("successes"),
        sums["_outcome_cost"],
        (pl.col("outcome") >= SUCCESS_OUTCOME).filter(costed_outcome).sum().cast(pl.Int64).alias("_costed_successes"),
    ]


def _fleet_sums(runs: pl.DataFrame, ceiling: float | None) -> dict[str, float | None]:
    """The float sums of the whole fleet (series ``"all"``) and its mean cost, added up by numpy
    over the runs in their fixed (``run_id``) order. Polars splits one aggregation over a whole
    column between its threads, so its sum changed in the last bits with the number of threads
    (``POLARS_MAX_THREADS``); a group's sum (a ``by`` series) runs over the group's rows in order."""
    values = runs.select(**{name: e.drop_nulls().implode() for name, e in _summed_values(ceiling).items()})
    sums = {name: float(np.sum(values.get_column(name)[0].to_numpy().astype(np.float64, copy=False)))
            for name in values.columns}
    n_costed = runs.get_column("cost_usd").count()
    return {**sums, "cost_mean": sums["total_cost_usd"] / n_costed if n_costed else None}


def _volumes_by_series(volume: Mapping[str, Any], series: list[str], by_cols: Sequence[str]) -> dict[str, float]:
    """``volume_per_day`` by series label: ``"agent=billing"``, or ``"billing"`` alone when the
    series are one column's values; a name that is no series is an error (it used to leave every
    projection empty without a word). ``"all"``, when not given, is the sum of the others when
    every series has one."""
    labels = set(series)
    out: dict[str, float] = {}
    unknown = []
    for key, value in volume.items():
        label = str(key)
        if label not in labels and len(by_cols) == 1 and series_label(by_cols[0], label) in labels:
            label = series_label(by_cols[0], label)
        if label not in labels:
            unknown.append(key)
        if label in out and float(value) != out[label]:
            raise InvalidParameterError(
                f"volume_per_day gives series {label!r} twice ({out[label]:g} and {float(value):g}, as {key!r}); "
                "give each series once"
            )
        out[label] = float(value)
    if unknown:
        raise InvalidParameterError(
            f"volume_per_day names no series {unknown}; the series are {sorted(labels)}"
            + (f" (or the {by_cols[0]} alone)" if len(by_cols) == 1 else "")
        )
    others = [s for s in series if s != "all"]
    if "all" in labels and "all" not in out and others and all(s in out for s in others):
        out["all"] = sum(out[s] for s in others)
    return out


def _series_volume(volume: VolumeLike, rec: Mapping[str, Any], total_runs: int) -> float | None:
    if isinstance(volume, Mapping):
        v = volume.get(rec["series"])
        return float(v) if v is not None else None
    if volume is None:
        days = rec["_fleet_days"]
        return rec["runs"] / days if days else None
    return float(volume) * rec["runs"] / total_runs if total_runs else None


def _share(part: float | None, total: float) -> float | None:
    if part is None or total <= 0:
        return None
    return part / total


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _series_row(
    rec: dict[str, Any],
    *,
    costs: np.ndarray,
    ceiling: float | None,
    volume: float | None,
    interval: float,
    n_boot: int,
    rng: np.random.Generator,
    has_loops: bool,
    days: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    costed = rec["runs_with_cost"] > 0
    if not costed:  # no run recorded a cost: every cost figure is unknown, none is 0
        for key in ("total_cost_usd", "loop_cost_usd", "error_cost_usd", "retry_cost_usd", "over_ceiling_cost_usd",
                    "runs_over_ceiling", "_outcome_cost"):
            rec[key] = None
    total = float(rec["total_cost_usd"] or 0.0)
    p50 = rec["cost_p50"]
    loop_cost = rec["loop_cost_usd"] if has_loops else None
    outcomes = rec["runs_with_outcome"]
    fleet_days = rec["_fleet_days"]
    row: dict[str, Any] = {
        "series": rec["series"],
        "runs": rec["runs"],
        "days": rec["days"],
        "runs_per_day": rec["runs"] / fleet_days if fleet_days else None,
        "observed_days": fleet_days,
        "runs_with_cost": rec["runs_with_cost"],
        "total_cost_usd": total if costed else None,
        "cost_mean": rec["cost_mean"],
        "cost_p50": p50,
        "cost_p90": rec["cost_p90"],
        "cost_p99": rec["cost_p99"],
        "cost_max": rec["cost_max"],
        "p99_over_p50": _ratio(rec["cost_p99"], p50),
        "max_over_p50": _ratio(rec["cost_max"], p50),
        "loop_cost_usd": loop_cost,
        "loop_share": _share(loop_cost, total),
        "error_cost_usd": rec["error_cost_usd"],
        "error_share": _share(rec["error_cost_usd"], total),
        "retry_cost_usd": rec["retry_cost_usd"],
        "retry_share": _share(rec["retry_cost_usd"], total),
        "cost_ceiling_usd": ceiling,
        "runs_over_ceiling": rec["runs_over_ceiling"] if ceiling is not None else None,
        "over_ceiling_cost_usd": rec["over_ceiling_cost_usd"] if ceiling is not None else None,
        "over_ceiling_share": _share(rec["over_ceiling_cost_usd"], total) if ceiling is not None else None,
        "runs_with_outcome": outcomes,
        "successes": rec["successes"] if outcomes else None,
        "success_rate": rec["successes"] / outcomes if outcomes else None,
        "cost_per_success": _ratio(rec["_outcome_cost"], rec["_costed_successes"]) if outcomes else None,
        "volume_per_day": volume,
        "projected_daily_usd": None,
        "projected_daily_lo": None,
        "projected_daily_hi": None,
        "interval": interval,
        "worst_run_expected_usd": None,
        "worst_run_1_in_n_usd": None,
        "worst_run_method": None,
        "tail_shape": None,
    }
    if volume is not None and costs.size:
        day = _day_replicates(costs, volume, n_boot=n_boot, gen=rng)
        if days is not None:
            days[rec["series"]] = day
        row.update(_projection(costs, volume, day, interval))
    return row


def _projection(costs: np.ndarray, volume: float, day: np.ndarray, interval: float) -> dict[str, Any]:
    """One series' projection columns at ``volume`` runs a day, from its simulated days."""
    lo, hi = _day_interval(day, volume * float(costs.min()), volume * float(costs.max()), interval)
    e_max, one_in_n, method, shape = expected_max(costs, volume)
    return {
        "projected_daily_usd": volume * float(costs.mean()),
        "projected_daily_lo": lo,
        "projected_daily_hi": hi,
        "worst_run_expected_usd": e_max,
        "worst_run_1_in_n_usd": one_in_n if math.isfinite(one_in_n) else None,
        "worst_run_method": method,
        "tail_shape": shape,
    }


def _day_interval(day: np.ndarray, lowest: float, highest: float, interval: float) -> tuple[float, float]:
    """The central ``interval`` range of simulated days, inside what the day's runs can cost (the
    normal limits can reach past it)."""
    alpha = (1.0 - interval) / 2.0
    lo, hi = np.quantile(day, [alpha, 1.0 - alpha])
    return float(np.clip(lo, lowest, highest)), float(np.clip(hi, lowest, highest))


def _mixed_projection(
    parts: Sequence[tuple[np.ndarray, float, np.ndarray]], interval: float
) -> dict[str, Any]:
    """The projection of a day made of ``volume`` runs of each series, from each series'
    ``(costs, volume, simulated days)``: the day is the sum of the series' days (independent
    draws), and its worst run the largest of all of them, P(max <= x) = prod F_s(x)^N_s over
    the series' observed costs (method ``"empirical"``, or ``"empirical_capped"`` when a series'
    volume exceeds half its runs). The 1-in-N cost is the quantile 1 - 1/N of the mix."""
    if len(parts) == 1:  # one series named: its own projection, as its row gives it
        return _projection(*parts[0], interval)
    point = sum(v * float(c.mean()) for c, v, _ in parts)
    day = np.sum([d for _, _, d in parts], axis=0)
    lowest = sum(v * float(c.min()) for c, v, _ in parts)
    highest = sum(v * float(c.max()) for c, v, _ in parts)
    lo, hi = _day_interval(day, lowest, highest, interval)
    support = np.unique(np.concatenate([c for c, _, _ in parts]))
    big_n = float(sum(v for _, v, _ in parts))
    log_g = np.zeros(support.size)  # log P(the day's worst run <= x), summed series by series
    mix = np.zeros(support.size)  # the CDF of the mix (one series' CDF at a time: bounded memory)
    for c, v, _ in parts:
        cdf = np.searchsorted(np.sort(c), support, side="right") / c.size
        with np.errstate(divide="ignore"):
            log_g += v * np.log(cdf)
        mix += (v / big_n) * cdf
    g = np.exp(log_g)
    e_max = float(np.diff(g, prepend=0.0) @ support) if big_n >= 1 else None
    if big_n > 1:
        one_in_n = float(support[min(int(np.searchsorted(mix, 1.0 - 1.0 / big_n, side="left")), support.size - 1)])
    else:
        one_in_n = point / big_n
    capped = any(v > c.size / 2 for c, v, _ in parts)
    return {
        "projected_daily_usd": point,
        "projected_daily_lo": lo,
        "projected_daily_hi": hi,
        "worst_run_expected_usd": e_max,
        "worst_run_1_in_n_usd": one_in_n if e_max is not None else None,
        "worst_run_method": ("empirical_capped" if capped else "empirical") if e_max is not None else None,
        "tail_shape": None,
    }


def project_daily_spend(
    costs: np.ndarray,
    volume: float,
    *,
    interval: float = 0.95,
    n_boot: int = 1000,
    rng: np.random.Generator | int | None = 0,
) -> tuple[float, float, float]:
    """Point estimate and prediction interval of one day's spend at ``volume`` runs.

    See the Notes of :func:`cost_profile_from_runs`.

    Examples
    --------
    >>> import numpy as np
    >>> from driftwatch.costs import project_daily_spend
    >>> point, lo, hi = project_daily_spend(np.full(100, 0.2), 1000)
    >>> round(point, 6), round(lo, 6), round(hi, 6)
    (200.0, 200.0, 200.0)
    """
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    x = np.asarray(costs, dtype=np.float64)
    big_n = float(volume)
    day = _day_replicates(x, big_n, n_boot=n_boot, gen=gen)
    lo, hi = _day_interval(day, big_n * float(x.min()), big_n * float(x.max()), interval)
    return big_n * float(x.mean()), lo, hi


def _day_replicates(x: np.ndarray, big_n: float, *, n_boot: int, gen: np.random.Generator) -> np.ndarray:
    """``n_boot`` simulated spends of one day at ``big_n`` runs (see :func:`project_daily_spend`),
    not yet clipped to what N runs can cost."""
    n = x.size
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    n_int = max(1, round(big_n))
    if (n + n_int) * n_boot <= _DRAW_BUDGET:
        # both at once (a double bootstrap): each replicate resamples the observed runs, then
        # draws the day's N runs from its resample, so the day stays inside N * [min, max]
        day = np.empty(n_boot)
        chunk = max(1, _DRAW_BUDGET // (4 * (n + n_int)))
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            res = gen.integers(0, n, size=(stop - start, n))
            pick = np.take_along_axis(res, gen.integers(0, n, size=(stop - start, n_int)), axis=1)
            day[start:stop] = x[pick].sum(axis=1)
        return day * (big_n / n_int)
    # (1) uncertainty of the mean cost per run
    if n * n_boot <= _DRAW_BUDGET:
        means = np.empty(n_boot)
        chunk = max(1, _DRAW_BUDGET // (4 * n))
        for start in range(0, n_boot, chunk):  # bounded memory; a handful of chunks
            stop = min(n_boot, start + chunk)
            means[start:stop] = x[gen.integers(0, n, size=(stop - start, n))].mean(axis=1)
    else:
        means = mean + sd / math.sqrt(n) * gen.standard_normal(n_boot)
    # (2) the day's own randomness: the sum of N runs
    if n_int * n_boot <= _DRAW_BUDGET:
        day = np.empty(n_boot)
        chunk = max(1, _DRAW_BUDGET // (4 * n_int))
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            day[start:stop] = x[gen.integers(0, n, size=(stop - start, n_int))].sum(axis=1)
        noise = day - n_int * mean
    else:
        noise = sd * math.sqrt(big_n) * gen.standard_normal(n_boot)
    return big_n * means + noise


def _fit_gpd(exc: np.ndarray) -> tuple[float, float]:
    """Generalised Pareto (shape, scale) of exceedances over a threshold (MLE, PWM fallback)."""
    from scipy import stats

    exc = exc[exc > 0]
    if exc.size < 10 or float(exc.std()) == 0.0:
        return 0.0, float(exc.mean()) if exc.size else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            xi, _, sigma = stats.genpareto.fit(exc, floc=0.0)
        except Exception:  # numerical failure of the optimiser: use moments instead
            xi, sigma = math.nan, math.nan
    if not (math.isfinite(xi) and math.isfinite(sigma) and sigma > 0):
        xs = np.sort(exc)
        p = (np.arange(1, xs.size + 1) - 0.35) / xs.size
        a0 = float(xs.mean())
        a1 = float(np.mean((1.0 - p) * xs))
        xi = 2.0 - a0 / (a0 - 2.0 * a1)
        sigma = 2.0 * a0 * a1 / (a0 - 2.0 * a1)
    return float(xi), float(sigma)


def _output_schema() -> dict[str, pl.DataType]:
    ints = {"runs", "days", "runs_with_cost", "runs_over_ceiling", "runs_with_outcome", "successes"}
    out: dict[str, pl.DataType] = {}
    for c in COST_COLUMNS:
        if c in ("series", "worst_run_method"):
            out[c] = pl.String()
        elif c in ints:
            out[c] = pl.Int64()
        else:
            out[c] = pl.Float64()
    return out


__all__ = [
    "COST_COLUMNS",
    "SUCCESS_OUTCOME",
    "check_volume",
    "cost_ceiling",
    "cost_profile",
    "cost_profile_from_runs",
    "expected_max",
    "no_progress_loops",
    "observed_days",
    "project_daily_spend",
]
