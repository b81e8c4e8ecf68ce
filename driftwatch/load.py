"""The load where it breaks: how run behaviour depends on load, and the knee.

:func:`load_curve` cuts time into buckets (``every``, ``"1m"`` by default) and
measures, per series and bucket, the **load** (runs started in the bucket, and
runs in flight during it) and the behaviour of the runs started in it (error
rate, retry rate, loop rate, p90 latency, steps and cost per run). For each
metric it returns the relationship with load, binned by load quantiles, and
the **knee**: the load above which the metric departs from its low-load level,
with a permutation p-value so that a fleet whose behaviour does not depend on
load reports none.

It runs in the fleet stage: :func:`load_curve_from_runs` needs only the
per-run tables (:func:`driftwatch.features.run_features` and, for the loop
rate, the loop table).

Method
------
For one series, metric and kind of load, every bucket ``j`` with at least one
started run gives a load ``L_j``, a metric value ``y_j`` and a weight ``w_j``.
Every metric is a **mean over the runs** started in the bucket (the error rate
is the mean of the runs' failed-step shares, the latency the mean of the runs'
p90 step latencies) and ``w_j`` is the number of those runs: a pooled ratio
(errors / steps) would drift with the number of runs when long runs fail more,
and a quantile over runs grows with their number, and either would fake a
load effect. The knee model is a hinge (segmented regression with a flat
low-load segment, Hudson 1966) with an optional plateau where the metric
saturates::

    y_j = alpha_stratum(j) + beta * (min(L_j, k2) - k)_+ + e_j

fitted by weighted least squares. ``alpha_stratum`` are fixed effects of the
time strata (``control``, one UTC day by default): the knee is estimated and
tested **only from load differences inside the same day**, so a day-level
trend (a deploy that raises errors in a busy week, weekly volume swings) is
not mistaken for a load effect. ``control="1h"`` compares buckets only within
the same hour (guards against time-of-day effects as well, at the cost of
power and time); ``control=None`` switches the guard off.

The search along the load axis is exhaustive (all candidate knees are scored
from the same sufficient statistics, a change-point search with one
breakpoint along the load-ordered data): ``k`` runs over a grid of loads that
leave at least ``max(10, 2%)`` of the buckets on either side (a few busy
buckets cannot make a knee) and, for the rates, at least 10 expected events
on either side; the plateau ``k2`` runs over load quantiles (or none). A
coarse pass is refined near its best knee, so the knee is continuous rather
than an observed load (where a step fits best, i.e. a knee followed directly by
a plateau at the next observed load, every knee between the two loads fits
equally well and the lowest is reported). The test statistic is the largest
share of the within-strata variance a hinge explains over the coarse knees (a
sup-F statistic), and its null distribution comes from permuting the buckets'
standardised residuals ``sqrt(w_j) * (y_j - alpha)`` within strata
(studentised permutation, so that a bucket of many runs is not compared with
the noise of a bucket of one), with sequential stopping (Besag-Clifford): 39
permutations first, more (up to ``n_boot``) only while a significant answer is possible, i.e.
until 10 permutations beat the observed statistic or so many that ``n_boot`` could not bring the
p-value to the Bonferroni level. A significant knee takes all ``n_boot`` permutations (stopping
at the first look below the level would test at every look, and reject too often).
The permutations are random rotations of a random cyclic order of each
stratum's buckets (a group of within-strata permutations, so the test stays
exact, and a draw costs one random number per stratum; uniform shuffles when
the strata are too small for enough distinct rotations).
A knee is reported (``significant``) when the p-value, Bonferroni-corrected
over the rows of its series (metrics x load kinds), is at most ``alpha`` and
the metric above the knee departs from the level below it by at least
``min_effect`` (relative).

Examples
--------
>>> import driftwatch as dw
>>> sc = dw.synth.Scenario.stable(load=(dw.synth.LoadSpec("planner", threshold=3.0, slope=1.0),))
>>> fleet = dw.synth.generate(days=2, runs_per_day=6000, seed=0, scenario=sc)
>>> out = dw.load_curve(fleet.events, metrics=["error_rate"], load="started")
>>> row = out.filter(series="agent=planner").row(0, named=True)
>>> row["significant"], 2.5 < row["knee"] < 3.5
(True, True)
>>> out.filter(series="agent=billing")["knee"].to_list()
[None]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from driftwatch._frames import (
    _DURATION_PART,
    _UNIT_SECONDS,
    FrameLike,
    as_lazy,
    check_by_types,
    check_seed,
    detect_loops_if_available,
    duration_seconds,
    normalize_by,
    require_timestamps,
    run_table,
    series_expr,
)
from driftwatch.costs import no_progress_loops
from driftwatch.errors import InvalidParameterError, SchemaError

#: Behaviour metrics measured per bucket (in output order).
METRICS: tuple[str, ...] = (
    "error_rate",
    "retry_rate",
    "loop_rate",
    "latency_p90",
    "steps_per_run",
    "cost_per_run",
)

#: Kinds of load.
LOAD_KINDS: tuple[str, ...] = ("started", "in_flight")

#: Output columns of :func:`load_curve`, in order.
LOAD_COLUMNS: tuple[str, ...] = (
    "series",
    "metric",
    "load_kind",
    "knee",
    "below",
    "above",
    "ratio",
    "p_value",
    "p_adjusted",
    "significant",
    "candidate_knee",
    "slope",
    "n_buckets",
    "n_runs",
    "every",
    "control",
    "curve_load",
    "curve_value",
    "curve_buckets",
)

_COARSE_GRID = 40
_FINE_GRID = 200
_PLATEAU_GRID = 25
_CHUNK_SIZES = (39, 60)  # then chunks of _CHUNK: 39, 99, 199, 299, ... permutations in all
_CHUNK = 100
_STOP_EXCEEDANCES = 10
_MIN_BUCKETS = 30
_MIN_EVENTS = 10.0


# --------------------------------------------------------------------------------------------
# public API


def load_curve(
    events: Any,
    *,
    every: str = "1m",
    by: str | Sequence[str] | None = ("agent",),
    metrics: Sequence[str] | None = None,
    loops: pl.DataFrame | pl.LazyFrame | None = None,
    load: str | Sequence[str] = LOAD_KINDS,
    control: str | None = "1d",
    n_bins: int = 10,
    n_boot: int = 999,
    alpha: float = 0.05,
    min_effect: float = 0.2,
    random_state: int = 0,
) -> pl.DataFrame:
    """How behaviour depends on load, per series and metric, with the knee.

    A thin wrapper: computes :func:`driftwatch.run_features` (and, when the
    loop rate is wanted and ``loops`` is not given, :func:`driftwatch.detect_loops`)
    and calls :func:`load_curve_from_runs`.

    Parameters
    ----------
    events : polars.DataFrame, polars.LazyFrame or ReadResult
        Canonical events with ``ts``.
    every : str, default="1m"
        Bucket width, a Polars duration string (``"1m"`` is a minute) of whole
        microseconds, at least ``"1us"`` (timestamps are kept to the microsecond).
    by : str or sequence of str, default=("agent",)
        Columns that define a series (any event column: each run's first
        non-null value); the fleet is added as series ``"all"``. Load is
        counted per series.
    metrics : sequence of str, optional
        Subset of :data:`METRICS`; default all (``loop_rate`` only with loops).
    loops : polars.DataFrame or LazyFrame, optional
        :func:`driftwatch.detect_loops` / :func:`driftwatch.loop_summary` output.
    load : str or sequence of str, default=("started", "in_flight")
        Which load to relate the metrics to: runs started per bucket, and/or
        runs in flight during the bucket (from each run's first and last step).
    control : str or None, default="1d"
        Time strata (a duration string, at least twice ``every``: see :func:`check_every`) within which
        buckets are compared; ``None`` for no time control.
    n_bins : int, default=10
        Load quantile bins of the returned curve.
    n_boot : int, default=999
        Largest number of within-strata permutations of the test.
    alpha : float, default=0.05
        Family-wise error rate per series.
    min_effect : float, default=0.2
        Smallest relative departure ``|above - below| / below`` reported as a knee.
    random_state : int, default=0
        Seed of the permutations.

    Returns
    -------
    polars.DataFrame
        One row per series, metric and load kind (see :func:`load_curve_from_runs`).
    """
    from driftwatch.features import run_features

    check_every(every, control)  # (before the run features are computed)
    lf = as_lazy(events)
    require_timestamps(lf, "load buckets")
    features = run_features(lf, by=normalize_by(by, lf.collect_schema()))
    wanted = _check_metrics(metrics, have_loops=True)
    if loops is None and "loop_rate" in wanted:
        loops = detect_loops_if_available(lf)
        if loops is None and metrics is None:
            wanted = tuple(m for m in wanted if m != "loop_rate")
    return load_curve_from_runs(
        features,
        loops=loops,
        every=every,
        by=by,
        metrics=wanted,
        load=load,
        control=control,
        n_bins=n_bins,
        n_boot=n_boot,
        alpha=alpha,
        min_effect=min_effect,
        random_state=random_state,
    )


def load_curve_from_runs(
    features: FrameLike,
    *,
    loops: pl.DataFrame | pl.LazyFrame | None = None,
    every: str = "1m",
    by: str | Sequence[str] | None = ("agent",),
    metrics: Sequence[str] | None = None,
    load: str | Sequence[str] = LOAD_KINDS,
    control: str | None = "1d",
    n_bins: int = 10,
    n_boot: int = 999,
    alpha: float = 0.05,
    min_effect: float = 0.2,
    random_state: int = 0,
) -> pl.DataFrame:
    """:func:`load_curve` on the per-run tables (the audit's fleet stage).

    Parameters
    ----------
    features : polars.DataFrame or LazyFrame
        :func:`driftwatch.run_features` output (``run_id, first_ts, last_ts,
        n_steps, n_tool, n_errors, n_retries, cost_usd, latency_ms_p90`` and
        the ``by`` columns).
    loops : polars.DataFrame or LazyFrame, optional
        Loop table with ``run_id`` (per loop or per run); needed for ``loop_rate``,
        the share of runs with a loop that is not ``same_action`` (pagination and
        polling are progress).
    every, by, metrics, load, control, n_bins, n_boot, alpha, min_effect, random_state
        As in :func:`load_curve`.

    Returns
    -------
    polars.DataFrame
        One row per ``series, metric, load_kind`` (runs without ``first_ts``
        are ignored; without timestamps the frame is empty):

        - ``knee`` (f64, load units per bucket): the load above which the
          metric departs from its low-load level; null unless ``significant``.
        - ``below``, ``above``: the metric pooled over buckets at or below /
          above ``candidate_knee``; ``ratio = above / below``.
        - ``p_value``: permutation p-value of "no load dependence"; null when
          no split can be tested (fewer than 30 buckets, or no candidate knee
          with enough buckets and, for rates, events on both sides);
          ``p_adjusted`` its Bonferroni correction within the series;
          ``significant``: ``p_adjusted <= alpha`` and the relative departure
          is at least ``min_effect``.
        - ``candidate_knee``: the best knee whether significant or not;
          ``slope``: change of the metric per unit of load above it (within strata).
        - ``n_buckets``, ``n_runs``, ``every``, ``control``.
        - ``curve_load``, ``curve_value``, ``curve_buckets`` (lists): the
          metric per load quantile bin (weighted mean load, pooled metric,
          number of buckets) for plotting.

    Examples
    --------
    >>> import driftwatch as dw
    >>> from driftwatch.load import load_curve_from_runs
    >>> fleet = dw.synth.generate(days=2, runs_per_day=2000, seed=3, scenario=dw.synth.Scenario.stable())
    >>> runs = dw.run_features(fleet.events)
    >>> out = load_curve_from_runs(runs, by=(), metrics=["error_rate", "steps_per_run"])
    >>> out.select("metric", "load_kind", "significant").rows()
    [('error_rate', 'started', False), ('error_rate', 'in_flight', False), ('steps_per_run', 'started', False), ('steps_per_run', 'in_flight', False)]
    """
    opts = _Options.build(
        every=every,
        metrics=metrics,
        load=load,
        control=control,
        n_bins=n_bins,
        n_boot=n_boot,
        alpha=alpha,
        min_effect=min_effect,
        have_loops=loops is not None,
    )
    random_state = check_seed(random_state)
    by_cols = normalize_by(by)
    buckets = load_buckets_from_runs(features, loops=loops, every=every, by=by_cols, control=control)
    rows: list[dict[str, Any]] = []
    series_names = buckets.select(pl.col("series").unique(maintain_order=True)).to_series().to_list()
    series_names.sort(key=lambda s: (s == "all", s))
    # the tests are many small array operations: BLAS threads only add overhead (and stall on a
    # busy machine)
    with threadpool_limits(limits=1):
        for s_idx, name in enumerate(series_names):
            part = buckets.filter(pl.col("series") == name).sort("_stratum", "bucket")
            rows.extend(_analyse_series(name, part, opts, seed=(random_state, s_idx)))
    if not rows:
        return pl.DataFrame(schema=_output_schema())
    return pl.DataFrame(rows, schema=_output_schema(), orient="row")


def load_buckets_from_runs(
    features: FrameLike,
    *,
    loops: pl.DataFrame | pl.LazyFrame | None = None,
    every: str = "1m",
    by: str | Sequence[str] | None = ("agent",),
    control: str | None = "1d",
) -> pl.DataFrame:
    """Per-bucket load and behaviour: the data behind :func:`load_curve`.

    Returns
    -------
    polars.DataFrame
        One row per ``series`` and ``bucket`` (bucket start, UTC) with at least
        one started run: ``started``, ``in_flight``, the metric columns of
        :data:`METRICS` (``loop_rate`` null without loops; ``cost_per_run`` and
        ``latency_p90`` are means over the runs that recorded them, null when none
        did), the counts behind them (``runs_with_tools``, ``runs_with_cost``,
        ``runs_with_latency``, ``n_steps``, ``n_tool``, ``n_errors``, ``n_retries``,
        ``n_loops``), plus ``_stratum`` (start of the control window).

    Examples
    --------
    >>> import polars as pl
    >>> from datetime import datetime, UTC
    >>> from driftwatch.load import load_buckets_from_runs
    >>> t = lambda m, s: datetime(2026, 1, 1, 0, m, s, tzinfo=UTC)
    >>> runs = pl.DataFrame({"run_id": ["a", "b", "c"], "agent": ["x"] * 3,
    ...     "first_ts": [t(0, 5), t(0, 50), t(1, 10)], "last_ts": [t(0, 20), t(1, 30), t(1, 20)],
    ...     "n_steps": [3, 5, 3], "n_tool": [1, 2, 1], "n_errors": [0, 1, 0], "n_retries": [0, 0, 0],
    ...     "cost_usd": [0.1, 0.2, 0.1], "latency_ms_p90": [100.0, 200.0, 100.0]})
    >>> b = load_buckets_from_runs(runs, by=())
    >>> b.select(pl.col("bucket").dt.minute(), "started", "in_flight", "error_rate").rows()
    [(0, 2, 2, 0.1), (1, 1, 2, 0.0)]
    """
    every_us = check_every(every, control)
    by_cols = normalize_by(by)
    runs = _prepare_runs(features, by_cols, loops)
    step = pl.duration(microseconds=every_us)
    lf = runs.select(
        *dict.fromkeys([*by_cols, *_RUN_COLUMNS, "_looped"]),
        pl.col("first_ts").dt.truncate(every).alias("bucket"),
        (pl.col("last_ts").dt.truncate(every) + step).alias("_end"),  # first bucket after the run
    ).rechunk()  # one chunk, in run_id order: the float sums of each group run in that order
    # every metric is a mean over the runs started in the bucket (a pooled ratio such as
    # sum(errors) / sum(steps) would drift with the number of runs when long runs fail more, and a
    # quantile over the runs would grow with their number: both would fake a load effect)
    has_tools = pl.col("n_tool") > 0
    aggs = [
        pl.len().cast(pl.Int64).alias("started"),
        has_tools.sum().cast(pl.Int64).alias("runs_with_tools"),
        pl.col("cost_usd").count().cast(pl.Int64).alias("runs_with_cost"),
        pl.col("latency_ms_p90").count().cast(pl.Int64).alias("runs_with_latency"),
        pl.col("n_steps").sum().cast(pl.Float64).alias("n_steps"),
        pl.col("n_tool").sum().cast(pl.Float64).alias("n_tool"),
        pl.col("n_errors").sum().cast(pl.Float64).alias("n_errors"),
        pl.col("n_retries").sum().cast(pl.Float64).alias("n_retries"),
        pl.col("_looped").sum().cast(pl.Float64).alias("n_loops"),
        pl.col("_looped").is_not_null().all().alias("_has_loops"),
        (pl.col("n_errors") / pl.col("n_steps")).filter(pl.col("n_steps") > 0).mean().alias("error_rate"),
        (pl.col("n_retries") / pl.col("n_tool")).filter(has_tools).mean().alias("retry_rate"),
        pl.col("_looped").mean().alias("loop_rate"),
        pl.col("latency_ms_p90").mean().alias("latency_p90"),
        pl.col("n_steps").mean().alias("steps_per_run"),
        pl.col("cost_usd").mean().alias("cost_per_run"),
    ]
    parts: list[pl.DataFrame] = []
    # each series grouping (the by columns, and the whole fleet) straight from the runs: the series
    # name is written per bucket, not per run
    for keys in (by_cols, ()) if by_cols else ((),):
        per_bucket = (
            lf.group_by(*keys, "bucket")
            .agg(aggs)
            .with_columns(series_expr(keys))
            .drop(*keys)
            .sort("bucket")
            .with_columns(pl.col("started").cum_sum().over("series").alias("_began"))
        )
        # runs in flight during a bucket: those started by its end, less those whose last bucket
        # came before it (the number of run ends at or before it, from the last end time)
        ended = (
            lf.lazy()
            .group_by(*keys, "_end")
            .agg(pl.len().cast(pl.Int64).alias("_n"))
            .with_columns(series_expr(keys))
            .sort("_end")
            .select("series", "_end", pl.col("_n").cum_sum().over("series").alias("_ended"))
            .collect()
        )
        parts.append(
            per_bucket.join_asof(  # both sorted by time above
                ended, left_on="bucket", right_on="_end", by="series", strategy="backward", check_sortedness=False
            )
            .with_columns((pl.col("_began") - pl.col("_ended").fill_null(0)).alias("in_flight"))
            .select("series", "bucket", "started", "in_flight", *METRICS, "_has_loops", *_COUNT_COLUMNS)
        )
    out = (
        pl.concat(parts)
        .sort("series", "bucket")
        .with_columns(
            pl.col("in_flight").cast(pl.Int64),
            pl.when(pl.col("_has_loops")).then(pl.col("loop_rate")).alias("loop_rate"),
            (pl.col("bucket").dt.truncate(control) if control else pl.lit(None, pl.Datetime("us", "UTC"))).alias(
                "_stratum"
            ),
        )
        .select(
            "series",
            "bucket",
            "started",
            "in_flight",
            *METRICS,
            *_COUNT_COLUMNS,
            "_stratum",
        )
    )
    return out


#: Counts behind the metrics in :func:`load_buckets_from_runs` (after the metrics, in order).
_COUNT_COLUMNS = (
    "runs_with_tools", "runs_with_cost", "runs_with_latency", "n_steps", "n_tool", "n_errors", "n_retries", "n_loops"
)


# --------------------------------------------------------------------------------------------
# options and input


@dataclass(frozen=True)
class _Options:
    every: str
    metrics: tuple[str, ...]
    kinds: tuple[str, ...]
    control: str | None
    n_bins: int
    n_boot: int
    alpha: float
    min_effect: float

    @classmethod
    def build(
        cls,
        *,
        every: str,
        metrics: Sequence[str] | None,
        load: str | Sequence[str],
        control: str | None,
        n_bins: int,
        n_boot: int,
        alpha: float,
        min_effect: float,
        have_loops: bool,
    ) -> _Options:
        check_every(every, control)
        kinds = (load,) if isinstance(load, str) else tuple(load)
        bad = [k for k in kinds if k not in LOAD_KINDS]
        if bad or not kinds:
            raise InvalidParameterError(f"load must be among {list(LOAD_KINDS)}, got {load!r}")
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
            raise InvalidParameterError(f"n_bins must be an integer >= 2, got {n_bins!r}")
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 99:
            raise InvalidParameterError(f"n_boot must be an integer >= 99, got {n_boot!r}")
        if not isinstance(alpha, int | float) or not 0.0 < alpha < 1.0:
            raise InvalidParameterError(f"alpha must be in (0, 1), got {alpha!r}")
        if not isinstance(min_effect, int | float) or min_effect < 0 or not math.isfinite(min_effect):
            raise InvalidParameterError(f"min_effect must be a non-negative number, got {min_effect!r}")
        chosen = _check_metrics(metrics, have_loops=have_loops)
        kinds = tuple(dict.fromkeys(kinds))
        rows = len(chosen) * len(kinds)
        least = math.ceil(rows / float(alpha) - 1e-9) - 1
        if n_boot < least:  # the smallest p-value, 1 / (n_boot + 1), must reach the Bonferroni level
            raise InvalidParameterError(
                f"n_boot={n_boot} cannot find a knee: its smallest p-value, 1/{n_boot + 1}, is above the level "
                f"alpha / rows = {float(alpha):g} / {rows} of a series with {rows} rows (metrics x load kinds); "
                f"use n_boot >= {least}, or fewer metrics or load kinds"
            )
        return cls(
            every=every,
            metrics=chosen,
            kinds=kinds,
            control=control,
            n_bins=n_bins,
            n_boot=n_boot,
            alpha=float(alpha),
            min_effect=float(min_effect),
        )


def _fmt_duration(microseconds: int) -> str:
    """A Polars duration string for a whole number of microseconds ("12h", "90m", "45s", "500ms")."""
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000),
                       ("ms", 1_000)):
        if microseconds and microseconds % size == 0:
            return f"{microseconds // size}{unit}"
    return f"{microseconds}us"


#: Nanoseconds per unit of a Polars duration string (as :func:`duration_seconds` reads them).
_UNIT_NS = {unit: round(seconds * 1e9) for unit, seconds in _UNIT_SECONDS.items()}


def _microseconds(value: str, name: str) -> int:
    """A load duration (``every`` or ``control``) in whole microseconds, the timestamps' unit.

    Shorter durations, or ones that are not whole microseconds, are refused: buckets are cut on
    microsecond timestamps, and a step rounded to another number of microseconds (0 for "1ns")
    would count runs as ended before they were.
    """
    duration_seconds(value, name=name)  # the format, and a positive duration
    ns = sum(int(n) * _UNIT_NS[unit] for n, unit in re.findall(_DURATION_PART, value))
    if ns < 1_000:
        raise InvalidParameterError(
            f"{name} must be at least 1 microsecond ('1us'; timestamps are kept to the microsecond), got {value!r}"
        )
    if ns % 1_000:
        raise InvalidParameterError(
            f"{name} must be a whole number of microseconds (timestamps are kept to the microsecond), got {value!r}"
        )
    return ns // 1_000


def check_every(
    every: str,
    control: str | None = "1d",
    *,
    name: str = "every",
    fix: str = ", a longer control, or control=None",
) -> int:
    """``every``, a load bucket, in microseconds, checked as the load curve checks it.

    ``every`` and ``control`` must be durations of whole microseconds (at least ``"1us"``), and
    ``every`` at most half of ``control`` so that each stratum holds several buckets.
    ``name`` is how the message names ``every`` (:func:`driftwatch.audit` says
    ``load_every (--load-every)``), ``fix`` what it suggests besides a shorter ``every``.

    Raises
    ------
    InvalidParameterError
        Saying what was expected and what was given.
    """
    every_us = _microseconds(every, name)
    if control is None:
        return every_us
    control_us = _microseconds(control, "control")
    if control_us < 2 * every_us:
        raise InvalidParameterError(
            f"{name} must be at most half of control ({control!r}, the strata the load test compares buckets "
            f"within, so each holds several buckets); got {every!r}: use at most {_fmt_duration(control_us // 2)}"
            f"{fix}"
        )
    return every_us


def _check_metrics(metrics: Sequence[str] | None, *, have_loops: bool) -> tuple[str, ...]:
    if metrics is None:
        return METRICS if have_loops else tuple(m for m in METRICS if m != "loop_rate")
    chosen = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    bad = [m for m in chosen if m not in METRICS]
    if bad or not chosen:
        raise InvalidParameterError(f"metrics must be among {list(METRICS)}, got {metrics!r}")
    if "loop_rate" in chosen and not have_loops:
        raise InvalidParameterError("metric 'loop_rate' needs the loop table: pass loops=detect_loops(events)")
    return tuple(dict.fromkeys(chosen))


_RUN_COLUMNS: dict[str, pl.DataType] = {
    "n_steps": pl.Float64(),
    "n_tool": pl.Float64(),
    "n_errors": pl.Float64(),
    "n_retries": pl.Float64(),
    "cost_usd": pl.Float64(),
    "latency_ms_p90": pl.Float64(),
}


#: Run columns whose null means "not recorded": a metric's mean is over the runs that have them.
_UNKNOWN_WHEN_NULL = frozenset({"cost_usd", "latency_ms_p90"})


def _prepare_runs(
    features: FrameLike, by_cols: tuple[str, ...], loops: pl.DataFrame | pl.LazyFrame | None
) -> pl.DataFrame:
    lf, schema = run_table(features, ("run_id", "first_ts", "last_ts", "n_steps", *by_cols))
    check_by_types(schema, by_cols)
    for c in ("first_ts", "last_ts"):
        if not isinstance(schema[c], pl.Datetime):
            raise SchemaError(f"features: column {c!r} must be a datetime, found {schema[c]}")
    cols: list[pl.Expr] = [pl.col("run_id"), *[pl.col(c) for c in by_cols if c != "run_id"]]
    for c in ("first_ts", "last_ts"):
        ts = pl.col(c)
        tz = schema[c].time_zone  # type: ignore[union-attr]
        ts = ts.dt.replace_time_zone("UTC") if tz is None else ts.dt.convert_time_zone("UTC")
        cols.append(ts.dt.cast_time_unit("us").alias(c))
    for c, dtype in _RUN_COLUMNS.items():
        col = pl.col(c).cast(dtype) if c in schema else pl.lit(None, dtype)
        # counts are 0 when absent; a cost or latency nobody recorded stays unknown (null)
        cols.append((col if c in _UNKNOWN_WHEN_NULL else col.fill_null(0.0)).alias(c))
    lf = lf.select(cols).filter(pl.col("first_ts").is_not_null())
    lf = lf.with_columns(pl.max_horizontal("first_ts", pl.col("last_ts").fill_null(pl.col("first_ts"))).alias("last_ts"))
    if loops is not None:
        if not isinstance(loops, pl.DataFrame | pl.LazyFrame):
            raise InvalidParameterError(
                f"loops must be a detect_loops() or loop_summary() DataFrame, got {type(loops).__name__}"
            )
        lschema = loops.lazy().collect_schema()
        if "run_id" not in lschema:
            raise SchemaError(f"loops: missing column 'run_id'; found {list(lschema)}")
        looped = loops.lazy().filter(no_progress_loops(lschema)).select(pl.col("run_id").cast(pl.String)).unique().with_columns(
            pl.lit(1.0).alias("_looped")
        )
        lf = lf.join(looped, on="run_id", how="left", maintain_order="left").with_columns(
            pl.col("_looped").fill_null(0.0)
        )
    else:
        lf = lf.with_columns(pl.lit(None, dtype=pl.Float64).alias("_looped"))
    runs = lf.collect()
    # a fixed order (run_id), so float sums do not depend on the input's order; the run stage's
    # tables usually come sorted
    return runs if runs["run_id"].is_sorted() else runs.sort("run_id")


# --------------------------------------------------------------------------------------------
# analysis


def _weights(part: pl.DataFrame, metric: str) -> np.ndarray:
    """Runs behind each bucket's value of ``metric`` (the retry rate counts runs with a tool call,
    cost and latency the runs that recorded them)."""
    col = _WEIGHT_COLUMNS.get(metric, "started")
    return part[col].to_numpy().astype(np.float64)


_WEIGHT_COLUMNS = {
    "retry_rate": "runs_with_tools", "cost_per_run": "runs_with_cost", "latency_p90": "runs_with_latency"
}

#: Event counts behind the rate metrics (for the minimum-events rule).
_EVENT_COLUMNS = {"error_rate": "n_errors", "retry_rate": "n_retries", "loop_rate": "n_loops"}


def _analyse_series(
    name: str, part: pl.DataFrame, opts: _Options, *, seed: tuple[int, int]
) -> list[dict[str, Any]]:
    m_rows = len(opts.metrics) * len(opts.kinds)
    strata_raw = part["_stratum"]
    if strata_raw.null_count() == part.height:
        strata = np.zeros(part.height, dtype=np.int64)
    else:
        strata = strata_raw.rank("dense").to_numpy().astype(np.int64) - 1
    started = part["started"].to_numpy()
    pools: dict[bytes, _PermutationPool] = {}
    bins: dict[tuple[str, bytes], tuple[np.ndarray, int, np.ndarray]] = {}
    cells: dict[tuple[str, bytes], _Cells] = {}
    rows: list[dict[str, Any]] = []
    for metric in opts.metrics:
        y_all = part[metric].to_numpy().astype(np.float64)
        w_all = _weights(part, metric)
        keep = np.isfinite(y_all) & (w_all > 0)
        if not keep.any():  # not recorded in this series (e.g. a log without costs): no row
            continue
        ev_col = _EVENT_COLUMNS.get(metric)
        events = part[ev_col].to_numpy().astype(np.float64)[keep] if ev_col else None
        key = keep.tobytes()
        if key not in pools:
            pools[key] = _PermutationPool(strata[keep], (*seed, len(pools)), opts.n_boot)
        for kind in opts.kinds:
            load_all = part[kind].to_numpy().astype(np.float64)
            shared = (kind, key)  # cells and curve bins depend on the loads only: shared by the metrics
            if shared not in cells and keep.sum() >= _MIN_BUCKETS:
                cells[shared] = _Cells(load_all[keep], strata[keep])
            res = _knee_test(
                load_all[keep],
                y_all[keep],
                w_all[keep],
                strata[keep],
                opts=opts,
                pool=pools[key],
                events=events,
                m_rows=m_rows,
                cells=cells.get(shared),
            )
            p_adj = min(1.0, res.p_value * m_rows) if res.p_value is not None else None
            effect = _relative(res.above, res.below)
            significant = bool(
                p_adj is not None and p_adj <= opts.alpha and effect is not None and effect >= opts.min_effect
            )
            if shared not in bins and keep.any():
                bins[shared] = _curve_bins(load_all[keep], opts.n_bins)
            curve = _curve(load_all[keep], y_all[keep], w_all[keep], opts.n_bins, bins.get(shared))
            rows.append(
                {
                    "series": name,
                    "metric": metric,
                    "load_kind": kind,
                    "knee": res.knee if significant else None,
                    "below": res.below,
                    "above": res.above,
                    "ratio": _ratio(res.above, res.below),
                    "p_value": res.p_value,
                    "p_adjusted": p_adj,
                    "significant": significant,
                    "candidate_knee": res.knee,
                    "slope": res.slope,
                    "n_buckets": int(keep.sum()),
                    "n_runs": int(started[keep].sum()),
                    "every": opts.every,
                    "control": opts.control,
                    "curve_load": curve[0],
                    "curve_value": curve[1],
                    "curve_buckets": curve[2],
                }
            )
    return rows


def _relative(above: float | None, below: float | None) -> float | None:
    if above is None or below is None:
        return None
    if below == 0:
        return math.inf if above != 0 else 0.0
    return abs(above - below) / abs(below)


def _ratio(above: float | None, below: float | None) -> float | None:
    if above is None or below is None or below == 0:
        return None
    return above / below


@dataclass
class _KneeResult:
    knee: float | None = None
    below: float | None = None
    above: float | None = None
    slope: float | None = None
    p_value: float | None = None


def _knee_test(
    load: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    strata: np.ndarray,
    *,
    opts: _Options,
    pool: _PermutationPool,
    events: np.ndarray | None = None,
    m_rows: int = 1,
    cells: _Cells | None = None,
) -> _KneeResult:
    """Hinge fit with stratum fixed effects, on cell sufficient statistics, and its permutation test.

    Buckets are ordered by (stratum, load) so that every (stratum, load) cell is a contiguous
    block and every stratum a contiguous run of cells (:class:`_Cells`, built from ``load`` and
    ``strata`` unless given): the regressors are constant within a cell, so the fit needs only
    cell sums, and every candidate (knee, plateau) pair is scored at once from prefix sums over
    the cells (:class:`_HingeSums`).
    """
    n = load.size
    if n < _MIN_BUCKETS:
        return _KneeResult()
    c = cells if cells is not None else _Cells(load, strata)
    order, cell_starts, cell_load = c.order, c.cell_starts, c.cell_load
    cell_stratum, stratum_starts, bucket_stratum = c.cell_stratum, c.stratum_starts, c.bucket_stratum
    y_s, w_s = y[order], w[order]
    cell_w = np.add.reduceat(w_s, cell_starts)
    stratum_w = np.add.reduceat(cell_w, stratum_starts)

    # null model (stratum means only): residuals per bucket
    wy_s = w_s * y_s
    stratum_mean = np.add.reduceat(np.add.reduceat(wy_s, cell_starts), stratum_starts) / stratum_w
    resid = y_s - stratum_mean[bucket_stratum]
    u = w_s * resid  # score contributions
    cell_u = np.add.reduceat(u, cell_starts)
    sse0 = float(np.sum(w_s * resid * resid))

    # candidate knees leave at least max(10, 2%) of the buckets on either side
    min_side = max(10, math.ceil(0.02 * n))
    values, n_below = c.values, c.n_below
    ok_side = (n_below >= min_side) & (n - n_below >= min_side)
    if events is not None:
        # rates of rare events: each side must expect at least _MIN_EVENTS events under the null
        # (the events of a stratum spread over its buckets in proportion to their runs)
        ev_s = events[order]
        stratum_events = np.bincount(bucket_stratum, weights=ev_s, minlength=stratum_starts.size)
        expected = w_s * (stratum_events / stratum_w)[bucket_stratum]
        cum_expected = np.cumsum(expected[c.by_load])
        exp_below = cum_expected[n_below - 1]
        ok_side &= (exp_below >= _MIN_EVENTS) & (cum_expected[-1] - exp_below >= _MIN_EVENTS)
    feasible = np.flatnonzero(ok_side)
    if feasible.size == 0:
        return _KneeResult()
    lo_k = float(values[feasible[0]])
    hi_next = float(values[feasible[-1] + 1])  # knees in [lo_k, hi_next) keep the partition feasible

    sums = _HingeSums(cell_load, cell_stratum, stratum_starts, cell_w, cell_u, values)

    # the estimate: knees on a grid, each with an optional plateau from k2 on (saturation: the
    # metric stops rising, e.g. an error rate near 100%); coarse pass, then a fine pass near the best
    coarse = np.unique(np.r_[np.linspace(lo_k, hi_next, _COARSE_GRID + 1)[:-1], values[feasible]])
    if coarse.size > 2 * _COARSE_GRID:
        coarse = np.unique(np.quantile(coarse, np.linspace(0.0, 1.0, 2 * _COARSE_GRID)))
    tops_all = values[values > lo_k]
    tops = np.unique(np.quantile(tops_all, np.linspace(0.0, 1.0, _PLATEAU_GRID))) if tops_all.size else tops_all
    plateaus = np.r_[math.inf, tops]
    gain, beta = sums.fit(coarse, plateaus)  # K x T
    best = (-1.0, lo_k, math.inf, 0.0)
    for j, k2 in enumerate(plateaus.tolist()):  # in order: ties go to the earlier plateau (none first)
        i = _first_max(gain[:, j])
        if gain[i, j] > best[0] * (1.0 + 1e-9):
            best = (float(gain[i, j]), float(coarse[i]), k2, float(beta[i, j]))
    step = (hi_next - lo_k) / _COARSE_GRID
    fine = np.linspace(max(lo_k, best[1] - step), min(hi_next, best[1] + step), _FINE_GRID)
    fine = fine[fine < hi_next] if np.any(fine < hi_next) else fine
    gain, beta = sums.fit(fine, np.array([best[2]]))
    i = _first_max(gain[:, 0])
    if gain[i, 0] > best[0] * (1.0 + _TIE):
        best = (float(gain[i, 0]), float(fine[i]), best[2], float(beta[i, 0]))
    best_gain, knee, _, slope = best
    below_m = load <= knee
    below = float(np.sum(w[below_m] * y[below_m]) / np.sum(w[below_m])) if below_m.any() else None
    above = float(np.sum(w[~below_m] * y[~below_m]) / np.sum(w[~below_m])) if (~below_m).any() else None
    if sse0 <= 1e-15 * max(1.0, float(np.sum(w * y * y))) or best_gain <= 0:
        return _KneeResult(knee=knee, below=below, above=above, slope=slope, p_value=1.0)

    # the test: sup over the coarse knees of the share of within-strata variance the hinge
    # explains; null distribution by permuting the buckets' standardised residuals within strata
    # (studentised permutation: a bucket of w runs has variance sigma^2 / w under the null, so the
    # residuals are scaled by sqrt(w) before they change places and rescaled after)
    h = np.maximum(0.0, cell_load[None, :] - coarse[:, None])  # K x C
    means = np.add.reduceat(h * cell_w, stratum_starts, axis=1) / stratum_w  # K x S
    rh = h - means[:, cell_stratum]
    hh = (rh * rh) @ cell_w
    ok = hh > 1e-12 * max(1.0, float(hh.max(initial=0.0)))
    rh, hh = rh[ok], hh[ok]
    if rh.shape[0] == 0:
        return _KneeResult(knee=knee, below=below, above=above, slope=slope, p_value=1.0)
    stat_obs = float(np.max((rh @ cell_u) ** 2 / hh)) / sse0
    # The pool permutes positions within strata blocks; sorting by (stratum, load) kept the blocks
    # where they were, so its permutations apply to the sorted arrays directly. With
    # y*_j = f_j + z_pi(j) / sqrt(w_j) (f the stratum mean, z = sqrt(w) * residual) only
    # g_j = sqrt(w_j) z_pi(j) varies: the cell sums of w*y* are fixed + cell sums of g (the fixed
    # part is orthogonal to the residualised regressors) and sse0* = sum z^2 - sum_s G_s^2 / W_s.
    sqrt_w = np.sqrt(w_s)
    z = resid * sqrt_w
    z2 = float(np.sum(z * z))
    z32, sqrt_w32 = pool.source(z.astype(np.float32)), sqrt_w.astype(np.float32)  # halves the memory traffic
    buf = pool.buffer()  # reused across chunks and tests: no fresh pages to fault in
    # float32 like the permuted sums themselves (their rounding is far below the test's resolution)
    rh_t = np.ascontiguousarray(rh.T, dtype=np.float32)
    threshold = opts.alpha / max(1, m_rows)
    exceed = 0
    done = 0
    chunk = 0
    while done < opts.n_boot:
        idx = pool.chunk(chunk)[: opts.n_boot - done]
        chunk += 1
        g = buf[: idx.shape[0]]
        np.take(z32, idx, out=g, mode="clip")  # positions are in range: no bounds checks
        np.multiply(g, sqrt_w32, out=g)
        cell_g = np.add.reduceat(g, cell_starts, axis=1)  # P x C
        big_g = np.add.reduceat(cell_g, stratum_starts, axis=1, dtype=np.float64)  # P x S
        sse0_p = z2 - np.sum(big_g**2 / stratum_w, axis=1)
        cross = (cell_g @ rh_t).astype(np.float64)
        stat = np.max(cross**2 / hh, axis=1) / np.where(sse0_p > 0, sse0_p, np.inf)
        exceed += int(np.sum(stat >= stat_obs * (1.0 - 1e-9)))
        done += idx.shape[0]
        # stop once the answer cannot be significant: 10 exceedances (Besag-Clifford), or so many
        # that even n_boot permutations would leave the p-value above the Bonferroni level. A
        # significant answer takes all n_boot: stopping as soon as the running p-value dips below
        # the level tests it at every look, which rejected 6.4% of null series at alpha 0.05
        if exceed >= _STOP_EXCEEDANCES or (exceed + 1) / (opts.n_boot + 1) > threshold:
            break
    p_value = (exceed + 1) / (done + 1)
    return _KneeResult(knee=knee, below=below, above=above, slope=slope, p_value=float(p_value))


#: Relative difference below which two fits count as equally good (rounding of the fit's sums).
_TIE = 1e-12


def _first_max(gain: np.ndarray) -> int:
    """Index of the first entry within :data:`_TIE` of the largest: among equally good knees (a
    knee anywhere between two observed loads followed by a plateau at the upper one is the
    same step), the lowest."""
    top = float(gain.max())
    return int(np.argmax(gain >= top - _TIE * abs(top)))


class _HingeSums:
    """Weighted least-squares fits of the hinge ``(min(L, k2) - k1)_+`` for many (k1, k2) at once.

    With stratum fixed effects, the reduction of the weighted SSE by a regressor ``h`` is
    ``(h'u)^2 / h'M h`` (``u`` the weighted null residuals, ``M`` the within-strata projection),
    and ``h'M h = sum_c w_c h_c^2 - sum_s (sum_{c in s} w_c h_c)^2 / W_s``. Within a stratum the
    cells are in load order and the hinge is ``(L - k1)_+`` up to ``k2`` and ``k2 - k1`` above,
    so each of these sums is a prefix sum of ``w h1, w h1^2, u h1`` (``h1 = (L - k1)_+``, one
    row per knee) up to where ``k2`` falls in the stratum, plus ``k2 - k1`` times the weight or
    residual sum above it: O(strata) per (k1, k2) pair instead of O(cells). The prefix sums run
    within each stratum over non-negative terms, so no large sums cancel.
    """

    def __init__(
        self,
        cell_load: np.ndarray,
        cell_stratum: np.ndarray,
        stratum_starts: np.ndarray,
        cell_w: np.ndarray,
        cell_u: np.ndarray,
        values: np.ndarray,
    ) -> None:
        n_strata = stratum_starts.size
        self.n_cells = np.diff(np.r_[stratum_starts, cell_load.size])  # cells per stratum
        self.local = np.arange(cell_load.size) - stratum_starts[cell_stratum]  # position in stratum
        width = int(self.n_cells.max()) + 1
        self.cell_load, self.cell_stratum, self.cell_w, self.cell_u = cell_load, cell_stratum, cell_w, cell_u
        self.shape = (n_strata, width)  # strata x (leading 0 + cells): prefix sums, padded
        self.cum_w = self._prefix(cell_w[None, :])[0]
        self.cum_u = self._prefix(cell_u[None, :])[0]
        self.stratum_w = self.cum_w[np.arange(n_strata), self.n_cells]
        self.values = values
        # (stratum, rank of load) keys, increasing along the cells
        self.keys = cell_stratum.astype(np.int64) * (values.size + 1) + np.searchsorted(values, cell_load)
        self.starts = stratum_starts

    def _prefix(self, v: np.ndarray) -> np.ndarray:
        """R x C cell values -> R x S x (1 + max cells) prefix sums within each stratum."""
        out = np.zeros((v.shape[0], *self.shape))
        out[:, self.cell_stratum, self.local + 1] = v
        return np.cumsum(out, axis=2, out=out)

    def _split(self, t: np.ndarray) -> np.ndarray:
        """S x T: cells of each stratum with load at or below each ``t``."""
        q = np.searchsorted(self.values, t, side="right")  # loads at or below t: ranks < q
        s = np.arange(self.shape[0], dtype=np.int64)[:, None]
        first_above = np.searchsorted(self.keys, s * (self.values.size + 1) + q[None, :], side="left")
        return first_above - self.starts[:, None]

    def fit(self, k1: np.ndarray, k2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reduction of the weighted SSE and the slope for knees ``k1`` (K) and plateaus ``k2`` (T).

        Returns two K x T arrays; pairs that cannot be fitted (``k1 >= k2``, or a hinge without
        variation within strata) have gain -1 and slope 0.
        """
        n_strata = self.shape[0]
        h1 = np.maximum(0.0, self.cell_load[None, :] - k1[:, None])  # K x C
        finite = np.isfinite(k2)
        q = np.broadcast_to(self.n_cells[:, None], (n_strata, k2.size)).copy()  # S x T
        if finite.any():
            q[:, finite] = self._split(k2[finite])
        s_idx = np.arange(n_strata)[:, None]
        w_top = self.stratum_w[:, None] - self.cum_w[s_idx, q]  # S x T: weight above k2
        u_top = self.cum_u[s_idx, self.n_cells[:, None]] - self.cum_u[s_idx, q]
        width = np.where(finite[None, :], k2[None, :] - k1[:, None], 0.0)  # K x T
        wd = width[:, :, None]  # K x T x 1, against S x T -> transposed below

        if k2.size == 1:  # one plateau (the fine pass): sums over each stratum's cells up to it
            h1 *= self.local < q[self.cell_stratum, 0]

            def below(v: np.ndarray) -> np.ndarray:  # K x C -> K x 1 x S
                return np.add.reduceat(v, self.starts, axis=1)[:, None, :]

            wh, wh2, uh = below(h1 * self.cell_w), below(h1 * h1 * self.cell_w), below(h1 * self.cell_u)
        else:  # prefix sums within each stratum, read where each plateau falls

            def below(v: np.ndarray) -> np.ndarray:  # K x C -> K x T x S
                return self._prefix(v)[:, s_idx, q].transpose(0, 2, 1)

            wh, wh2, uh = below(h1 * self.cell_w), below(h1 * h1 * self.cell_w), below(h1 * self.cell_u)
        b = wh + wd * w_top.T[None]  # sum of w h per stratum
        sum_wh2 = (wh2 + wd * wd * w_top.T[None]).sum(axis=2)
        cross = (uh + wd * u_top.T[None]).sum(axis=2)
        hh = sum_wh2 - (b * b / self.stratum_w[None, None, :]).sum(axis=2)
        # no variation within strata leaves only rounding (~1e-16 of sum(w h^2))
        ok = (hh > 1e-12 * sum_wh2) & (k1[:, None] < k2[None, :])
        ok &= hh > 1e-12 * np.maximum(1.0, np.where(ok, hh, 0.0).max(axis=0, initial=0.0))[None, :]
        safe = np.where(ok, hh, 1.0)
        return np.where(ok, cross**2 / safe, -1.0), np.where(ok, cross / safe, 0.0)


class _Cells:
    """The (stratum, load) cells of a set of buckets, shared by the metrics tested on the same loads.

    ``order`` sorts the buckets by (stratum, load); ``cell_starts`` are the first sorted bucket
    of each cell, ``stratum_starts`` the first cell of each stratum; ``values`` are the distinct
    loads and ``n_below`` the buckets at or below each; ``by_load`` sorts the sorted buckets by
    load alone (stable).
    """

    def __init__(self, load: np.ndarray, strata: np.ndarray) -> None:
        n = load.size
        self.order = np.lexsort((load, strata))
        load_s, strata_s = load[self.order], strata[self.order]
        self.cell_starts = np.flatnonzero(
            np.r_[True, (strata_s[1:] != strata_s[:-1]) | (load_s[1:] != load_s[:-1])]
        )
        self.cell_load = load_s[self.cell_starts]
        new_stratum = np.r_[True, strata_s[self.cell_starts][1:] != strata_s[self.cell_starts][:-1]]
        self.cell_stratum = np.cumsum(new_stratum) - 1
        self.stratum_starts = np.flatnonzero(new_stratum)  # first cell of each stratum
        self.bucket_stratum = np.repeat(self.cell_stratum, np.diff(np.r_[self.cell_starts, n]))
        self.by_load = np.argsort(load_s, kind="stable")
        srt = load_s[self.by_load]
        self.values = np.unique(srt)
        self.n_below = np.searchsorted(srt, self.values, side="right")


class _PermutationPool:
    """Within-strata permutations of bucket positions, in chunks, shared by every metric and load
    kind of a series that uses the same buckets.

    Each permutation is an independent uniform draw from the rotations of a random cyclic order
    of each stratum's buckets: the cyclic order is drawn once per pool, and a permutation moves
    every bucket of stratum ``s`` ``r_s`` places along it (``r_s`` uniform). These permutations
    form a group of within-strata permutations, so under the null (buckets exchangeable within
    strata) the Monte Carlo test is exact, as with uniform permutations (Hemerik & Goeman 2018,
    "Exact testing with random permutations"); a draw costs one random number per stratum
    instead of a shuffle of every bucket. When the group is small (fewer than
    ``10 * (n_boot + 1)`` rotations in all, which would floor the p-value), or with
    ``shuffle=True``, the permutations are uniform shuffles within strata instead.

    Chunk ``i`` depends only on the pool's seed and ``i``, so every test that uses the pool sees
    the same permutations whether the chunk was kept or is drawn again.
    """

    _MAX_CACHED_BYTES = 128 * 1024 * 1024

    def __init__(self, strata: np.ndarray, seed: Sequence[int], n_boot: int, *, shuffle: bool = False) -> None:
        n = strata.size
        self.n = n
        self.seed = [int(x) for x in seed]
        starts = np.flatnonzero(np.r_[True, strata[1:] != strata[:-1]]) if n else np.zeros(0, np.int64)
        self.sizes = np.diff(np.r_[starts, n]).astype(np.int64)
        self.starts = starts
        self.chunks: list[np.ndarray] = []
        self.cached_bytes = 0
        self._buffer: np.ndarray | None = None
        big = bool(n) and float(np.sum(np.log(self.sizes))) >= math.log(10.0 * (n_boot + 1))
        self.rotations = big and not shuffle
        if self.rotations:
            rng = np.random.default_rng([*self.seed, 1])
            stratum_start = np.repeat(starts, self.sizes)
            cycle = np.lexsort((rng.random(n), np.repeat(np.arange(starts.size), self.sizes)))
            local = np.empty(n, dtype=np.intp)  # each bucket's place on its stratum's cycle
            local[cycle] = np.arange(n) - stratum_start
            # the cycle written out twice per stratum, so that a rotation needs no modulo
            doubled = np.empty(2 * n, dtype=np.intp)
            at = 2 * stratum_start + np.arange(n) - stratum_start
            doubled[at] = cycle
            doubled[at + np.repeat(self.sizes, self.sizes)] = cycle
            self.doubled = doubled
            self.base = 2 * stratum_start + local  # each bucket's place in the doubled cycle

    @staticmethod
    def size_of(i: int) -> int:
        """Permutations in chunk ``i``: small first chunks, since most tests stop early."""
        return _CHUNK_SIZES[i] if i < len(_CHUNK_SIZES) else _CHUNK

    def buffer(self) -> np.ndarray:
        """A float32 work array for the largest chunk, shared by the tests that use this pool."""
        if self._buffer is None:
            self._buffer = np.empty((max(*_CHUNK_SIZES, _CHUNK), self.n), dtype=np.float32)
        return self._buffer

    def source(self, values: np.ndarray) -> np.ndarray:
        """What the chunks index: ``values`` laid along the doubled cycles (rotations), or as is."""
        return values[self.doubled] if self.rotations else values

    def _draw(self, i: int) -> np.ndarray:
        size = self.size_of(i)
        rng = np.random.default_rng([*self.seed, 0, i])
        if self.rotations:
            shift = rng.integers(0, self.sizes, size=(size, self.sizes.size))  # one per stratum
            idx = np.repeat(shift, self.sizes, axis=1)
            idx += self.base  # bucket j takes the value shift places further along its cycle
            return idx
        out = np.empty((size, self.n), dtype=np.intp)
        for lo, m in zip(self.starts.tolist(), self.sizes.tolist(), strict=True):  # one block per stratum
            out[:, lo : lo + m] = rng.permuted(np.broadcast_to(np.arange(lo, lo + m), (size, m)), axis=1)
        return out

    def chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` of the permutations: ``size_of(i)`` rows, for each bucket the position in
        :meth:`source` of the value it takes."""
        if i < len(self.chunks):
            return self.chunks[i]
        out = self._draw(i)
        if i == len(self.chunks) and self.cached_bytes + out.nbytes <= self._MAX_CACHED_BYTES:
            self.chunks.append(out)
            self.cached_bytes += out.nbytes
        return out


def _curve_bins(load: np.ndarray, n_bins: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Load quantile bin of each bucket, the number of bins and the buckets per bin."""
    edges = np.unique(np.quantile(load, np.linspace(0.0, 1.0, n_bins + 1)))
    if edges.size == 1:
        b = np.zeros(load.size, dtype=np.int64)
        nb = 1
    else:
        b = np.searchsorted(edges[1:-1], load, side="left")
        nb = edges.size - 1
    return b, nb, np.bincount(b, minlength=nb)


def _curve(
    load: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    n_bins: int,
    bins: tuple[np.ndarray, int, np.ndarray] | None = None,
) -> tuple[list[float], list[float], list[int]]:
    if load.size == 0:
        return [], [], []
    b, nb, cnt = bins if bins is not None else _curve_bins(load, n_bins)
    ws = np.bincount(b, weights=w, minlength=nb)
    wy = np.bincount(b, weights=w * y, minlength=nb)
    wl = np.bincount(b, weights=w * load, minlength=nb)
    ok = cnt > 0
    return (
        (wl[ok] / ws[ok]).tolist(),
        (wy[ok] / ws[ok]).tolist(),
        cnt[ok].astype(int).tolist(),
    )


def _output_schema() -> dict[str, pl.DataType]:
    return {
        "series": pl.String(),
        "metric": pl.String(),
        "load_kind": pl.String(),
        "knee": pl.Float64(),
        "below": pl.Float64(),
        "above": pl.Float64(),
        "ratio": pl.Float64(),
        "p_value": pl.Float64(),
        "p_adjusted": pl.Float64(),
        "significant": pl.Boolean(),
        "candidate_knee": pl.Float64(),
        "slope": pl.Float64(),
        "n_buckets": pl.Int64(),
        "n_runs": pl.Int64(),
        "every": pl.String(),
        "control": pl.String(),
        "curve_load": pl.List(pl.Float64()),
        "curve_value": pl.List(pl.Float64()),
        "curve_buckets": pl.List(pl.Int64()),
    }


__all__ = [
    "LOAD_COLUMNS",
    "LOAD_KINDS",
    "METRICS",
    "check_every",
    "load_buckets_from_runs",
    "load_curve",
    "load_curve_from_runs",
]
