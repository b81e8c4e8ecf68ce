"""Change-points in fleet behaviour: when agents started behaving differently, in which metric, by how much.

Two layers, so the audit can run the expensive part on chunks of whole runs and
the detection on small per-run tables (see the architecture notes):

1. :func:`bucket_metrics_from_runs` turns per-run tables (``run_features``,
   optionally ``run_action_counts`` and ``loop_summary``) into one row per
   ``(series, time bucket)`` with behaviour metrics: runs, mean and p90 steps per
   run, error rate, loop rate, tokens and cost per run, latency p90, LLM-to-step
   ratio and the shares of each series' top tools.
2. :func:`changepoints_from_buckets` finds change-points in those bucket series
   with ruptures' exact C-backed ``KernelCPD`` (linear kernel, penalised) on the
   multivariate, volume-weighted, whitened series, adds single-metric changes
   from a vectorised per-metric scan, then reports one row per breakpoint and
   metric that moved materially (run-weighted z-test and relative size).

Multivariate detection maps to per-metric rows like this: a breakpoint is found
once per series on all metrics together; every metric whose shift at that
breakpoint is material gets a row, ranked by strength (``rank`` 1 first), and
all rows of the breakpoint carry the same ``metrics_moved`` list.

:func:`changepoints_from_runs` chains the two; :func:`detect_changepoints` (the
contract function) computes the per-run tables from events and calls it.
:func:`detect_run_changepoints` is the within-run variant: a regime change in a
per-step metric inside long runs, found with vectorised CUSUM statistics.

Examples
--------
>>> import numpy as np, polars as pl
>>> from datetime import datetime, timedelta, timezone
>>> import driftwatch as dw
>>> rng = np.random.default_rng(0)
>>> days = np.repeat(np.arange(40), 50)                      # 40 days x 50 runs
>>> steps = rng.poisson(np.where(days < 25, 10, 16))          # runs get 60% longer on day 25
>>> t0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
>>> runs = pl.DataFrame({
...     "run_id": [f"r{i}" for i in range(days.size)], "agent": "planner",
...     "first_ts": [t0 + timedelta(days=int(d), minutes=int(m))
...                  for d, m in zip(days, rng.integers(0, 1440, days.size))],
...     "n_steps": steps, "n_errors": rng.binomial(steps, 0.05),
...     "n_llm": steps // 2, "tokens": steps * 300, "cost_usd": steps * 0.01,
...     "latency_ms": steps * 800.0})
>>> cps = changepoints_from_runs(runs, include_fleet=False)
>>> cps.select("series", "bucket_index").unique().rows()      # one change, on day 25
[('agent=planner', 25)]
>>> cps.filter(pl.col("metric") == "steps_mean").select(pl.col("before", "after").round(1)).row(0)
(10.0, 15.9)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from driftwatch._frames import (
    as_lazy,
    check_flag,
    detect_loops_if_available,
    duration_seconds,
    normalize_by,
    require_timestamps,
    series_expr,
)
from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.schema import LLM_ACTION, TS_DTYPE

#: Behaviour metrics computed per bucket (``runs`` is volume, not behaviour).
BUCKET_METRICS: tuple[str, ...] = (
    "runs",
    "steps_mean",
    "steps_p90",
    "error_rate",
    "error_run_rate",
    "loop_rate",
    "tokens_per_run",
    "cost_per_run",
    "latency_p90",
    "llm_ratio",
)

#: Pseudo-metric: the shares of each series' ``top_tools`` most-used tools.
TOOL_MIX = "tool_mix"

#: Metrics used when ``metrics=None``: every behaviour metric, volume excluded.
DEFAULT_METRICS: tuple[str, ...] = (*(m for m in BUCKET_METRICS if m != "runs"), TOOL_MIX)

#: Per-step metrics :func:`detect_run_changepoints` understands.
RUN_METRICS: tuple[str, ...] = (
    "tokens",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "confidence",
)

#: Columns :func:`changepoints_from_buckets` returns, with dtypes.
CHANGEPOINT_SCHEMA: dict[str, pl.DataType] = {
    "series": pl.String(),
    "metric": pl.String(),
    "ts": TS_DTYPE,
    "before": pl.Float64(),
    "after": pl.Float64(),
    "magnitude": pl.Float64(),
    "score": pl.Float64(),
    "bucket_index": pl.Int64(),
    "rank": pl.Int64(),
    "metrics_moved": pl.List(pl.String()),
    "cp_score": pl.Float64(),
    "runs_before": pl.Int64(),
    "runs_after": pl.Int64(),
    "buckets_before": pl.Int64(),
    "buckets_after": pl.Int64(),
}

#: Columns :func:`detect_run_changepoints` returns, with dtypes.
RUN_CHANGEPOINT_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "agent": pl.String(),
    "metric": pl.String(),
    "step": pl.Int64(),
    "position": pl.Int64(),
    "n_points": pl.Int64(),
    "before": pl.Float64(),
    "after": pl.Float64(),
    "jump": pl.Float64(),
    "magnitude": pl.Float64(),
    "score": pl.Float64(),
}

# Default calibration (see the README, "Change-points", "Method and defaults"): the penalty is
# auto_penalty(d, T) = PENALTY_BETA * (d + 2 sqrt(d log T) + 2 log T) in whitened units, and a breakpoint survives only if some metric moved by at least
# MIN_Z standard errors (heteroscedastic, run-weighted) and MIN_MAGNITUDE relatively.
PENALTY_BETA = 1.5
MIN_Z = 4.0
MIN_MAGNITUDE = 0.1
_WINSOR_3SD = 0.9944  # E[min(Z^2, 9)] for a standard normal Z
_CLIP = 4.0  # bucket residuals beyond this many noise sd are clipped (outliers)
_SHRINK = 0.2  # shrinkage of the noise correlation towards the identity before whitening
_MEDIAN_WINDOW = 7  # buckets in the rolling median used by the volume weighting
_POOL_DOF = 5.0  # pseudo-observations of the series-wide variance added to each segment's

_CAP_MEDIANS = 5.0  # per-run tokens and cost are capped at this multiple of the series median
RUN_THRESHOLD = 6.0  # standardised CUSUM statistic for detect_run_changepoints
_RUN_CLIP = 6.0  # a within-run value this many noise sd from its running median of 5 is clipped
_RUN_COLUMNS = ("run_id", "first_ts", "n_steps", "n_errors", "n_llm", "tokens", "cost_usd", "latency_ms")


# --------------------------------------------------------------------------- buckets


def bucket_metrics_from_runs(
    features: pl.DataFrame | pl.LazyFrame,
    action_counts: pl.DataFrame | pl.LazyFrame | None = None,
    loop_summary: pl.DataFrame | pl.LazyFrame | None = None,
    *,
    by: str | Sequence[str] | None = ("agent",),
    every: str = "1d",
    include_fleet: bool = True,
    top_tools: int = 3,
    min_coverage: float = 0.5,
    loop_min_severity: float = 0.5,
) -> pl.DataFrame:
    """Behaviour metrics per series and time bucket, from per-run tables.

    Runs are bucketed by their ``first_ts`` (``first_ts.dt.truncate(every)``).

    Parameters
    ----------
    features : polars.DataFrame or polars.LazyFrame
        One row per run, as returned by :func:`driftwatch.run_features`. Needs
        ``run_id, first_ts, n_steps, n_errors, n_llm, tokens, cost_usd,
        latency_ms`` and the ``by`` columns.
    action_counts : polars.DataFrame or polars.LazyFrame, optional
        ``run_id, action, n`` (:func:`driftwatch.features.run_action_counts`).
        Without it the tool-share columns are null.
    loop_summary : polars.DataFrame or polars.LazyFrame, optional
        One row per run that has loops (``loops.loop_summary``): ``run_id`` and,
        when present, ``loop_severity``. Without it ``loop_rate`` is null.
    by : str or sequence of str, default ("agent",)
        Run-level columns naming a series (``agent``, ``version``, ...). Empty
        means the whole fleet only.
    every : str, default "1d"
        Bucket width as a Polars duration (``"1h"``, ``"1d"``, ``"1w"``).
    include_fleet : bool, default True
        Also emit the whole fleet as series ``all`` (when ``by`` names more than one series:
        with one, ``all`` would repeat it, and every change-point would be reported twice).
    top_tools : int, default 3
        How many of each series' most-used tools (over the whole period, LLM
        steps excluded) get a share column.
    min_coverage : float, default 0.5
        Buckets at the edges of the observed time span that cover less than this
        fraction of ``every`` are flagged ``partial`` (and skipped by detection).
    loop_min_severity : float, default 0.5
        A run counts as looping when its ``loop_severity`` reaches this value
        (every run in ``loop_summary`` counts when it has no such column).

    Returns
    -------
    polars.DataFrame
        One row per (series, bucket) that has runs, sorted by ``series, bucket``:
        ``series`` (Utf8), ``bucket`` (Datetime UTC, bucket start),
        ``bucket_index`` (Int64, buckets since the first bucket of the data),
        ``runs`` (Int64), ``coverage`` (Float64, share of the bucket inside the
        observed span), ``partial`` (Boolean), ``steps_mean``, ``steps_p90``,
        ``error_rate`` (errors / steps, each run's errors capped at the
        series' 99th percentile), ``error_run_rate`` (share of runs with
        at least one error: unlike ``error_rate`` not dominated by the odd
        retry storm), ``loop_rate`` (share of runs looping),
        ``tokens_per_run``, ``cost_per_run`` (means with each run capped at 5
        times the series' median run, so a few runaway runs do not look like a
        new regime; cost_profile and scoring report them), ``latency_p90`` (p90 over runs of
        the run's total latency, ms), ``llm_ratio`` (LLM steps / steps), then
        ``top1_tool, top1_share, ..., top{k}_tool, top{k}_share`` (share of the
        bucket's tool calls; the tool names are constant within a series).

    Examples
    --------
    >>> import polars as pl
    >>> from datetime import datetime, timezone
    >>> runs = pl.DataFrame({"run_id": ["a", "b", "c"], "agent": "bot",
    ...     "first_ts": [datetime(2026, 1, d, 9, tzinfo=timezone.utc) for d in (1, 1, 2)],
    ...     "n_steps": [4, 6, 10], "n_errors": [0, 1, 2], "n_llm": [2, 3, 5],
    ...     "tokens": [100, 200, 300], "cost_usd": [0.1, 0.2, 0.3], "latency_ms": [1.0, 2.0, 3.0]})
    >>> b = bucket_metrics_from_runs(runs, include_fleet=False, min_coverage=0.0)
    >>> b.select("series", "bucket_index", "runs", "steps_mean", "error_rate").rows()
    [('agent=bot', 0, 2, 5.0, 0.1), ('agent=bot', 1, 1, 10.0, 0.2)]
    """
    by_cols = normalize_by(by)
    every_s = duration_seconds(every)
    _check_int("top_tools", top_tools, lo=0)
    _check_float("min_coverage", min_coverage, lo=0.0, hi=1.0)
    lf = _as_frame(features, "features").lazy()
    schema = lf.collect_schema()
    missing = [c for c in (*_RUN_COLUMNS, *by_cols) if c not in schema]
    if missing:
        hint = ""
        if any(c in by_cols for c in missing):
            hint = (
                "; `by` must name run-level columns of the run table (detect_changepoints(events, by=...) "
                "carries other event columns through as each run's first non-null value)"
            )
        raise SchemaError(
            f"features: missing column(s) {missing}; expected a run_features() table, found {list(schema)}{hint}"
        )
    if not isinstance(schema["first_ts"], pl.Datetime):
        raise SchemaError(f"features: column 'first_ts' must be a Datetime, found {schema['first_ts']}")

    runs = lf.select(
        pl.col("run_id").cast(pl.String),
        pl.col("first_ts").dt.replace_time_zone(None).dt.cast_time_unit("us").dt.replace_time_zone("UTC")
        if schema["first_ts"].time_zone is None  # type: ignore[union-attr]
        else pl.col("first_ts").dt.convert_time_zone("UTC").dt.cast_time_unit("us"),
        *[pl.col(c).cast(pl.Float64) for c in _RUN_COLUMNS[2:]],
        *[pl.col(c) for c in by_cols],
    ).filter(pl.col("first_ts").is_not_null())

    span = runs.select(pl.col("first_ts").min().alias("lo"), pl.col("first_ts").max().alias("hi")).collect()
    t_min, t_max = span.row(0)
    if t_min is None:
        return _empty_buckets(top_tools)

    has_loops = loop_summary is not None
    if loop_summary is not None:
        ls = _as_frame(loop_summary, "loop_summary").lazy()
        ls_schema = ls.collect_schema()
        if "run_id" not in ls_schema:
            raise SchemaError(f"loop_summary: missing column 'run_id'; found {list(ls_schema)}")
        flag = (
            (pl.col("loop_severity").fill_null(0.0) >= loop_min_severity)
            if "loop_severity" in ls_schema
            else pl.lit(True)
        )
        # a run loops when any of its summary rows is flagged (a set lookup: no join, the runs keep their order)
        looped = ls.filter(flag).select(pl.col("run_id").cast(pl.String)).collect().to_series()
        runs = runs.with_columns(pl.col("run_id").is_in(looped.implode()).fill_null(False).alias("_looped"))
    else:
        runs = runs.with_columns(pl.lit(None, dtype=pl.Boolean).alias("_looped"))

    runs = runs.with_columns(pl.col("first_ts").dt.truncate(every).alias("bucket"))
    # (group columns, series name): the series string is built after aggregating, and the
    # fleet series is its own small group-by
    fleet = bool(by_cols) and include_fleet and runs.lazy().select(pl.struct(*by_cols).n_unique()).collect().item() > 1
    levels = [by_cols] + ([()] if fleet else [])
    agg = pl.concat([_aggregate_buckets(runs, keys, has_loops) for keys in levels])
    t0 = _truncate_scalar(t_min, every)
    width = pl.duration(microseconds=int(round(every_s * 1e6)))
    lo = pl.lit(t_min, dtype=TS_DTYPE)
    hi = pl.lit(t_max, dtype=TS_DTYPE)
    start = pl.col("bucket")
    end = pl.col("bucket") + width
    covered = (
        pl.min_horizontal(end, hi).cast(pl.Int64) - pl.max_horizontal(start, lo).cast(pl.Int64)
    ) / (every_s * 1e6)
    agg = agg.with_columns(
        ((pl.col("bucket") - pl.lit(t0, dtype=TS_DTYPE)).dt.total_microseconds() / (every_s * 1e6))
        .round()
        .cast(pl.Int64)
        .alias("bucket_index"),
        covered.clip(0.0, 1.0).alias("coverage"),
    ).with_columns((pl.col("coverage") < min_coverage).alias("partial"))

    tool_cols: list[str] = []
    for i in range(1, top_tools + 1):
        tool_cols += [f"top{i}_tool", f"top{i}_share"]
    if action_counts is not None and top_tools > 0:
        shares = _tool_shares(runs, by_cols, levels, action_counts, top_tools)
        agg = agg.join(shares.lazy(), on=["series", "bucket"], how="left")
    else:
        agg = agg.with_columns(
            *[
                pl.lit(None, dtype=pl.String if c.endswith("_tool") else pl.Float64).alias(c)
                for c in tool_cols
            ]
        )
    out = agg.select(
        "series",
        "bucket",
        "bucket_index",
        "runs",
        "coverage",
        "partial",
        *BUCKET_METRICS[1:],
        *tool_cols,
    ).sort("series", "bucket")
    return out.collect()


def _aggregate_buckets(runs: pl.LazyFrame, keys: Sequence[str], has_loops: bool) -> pl.LazyFrame:
    """The behaviour metrics of every (series, bucket) of ``runs`` (one row per run), series by ``keys``."""

    def per_series(e: pl.Expr) -> pl.Expr:
        return e.over(keys) if keys else e

    # runaway runs (a context blow-up costing 100x) are outliers, not a new regime:
    # tokens and cost are capped at _CAP_MEDIANS times the series' median before averaging
    capped = runs.with_columns(
        *[
            # (min_horizontal skips nulls: an unknown cost would become the cap)
            pl.when(pl.col(c).is_not_null())
            .then(pl.min_horizontal(pl.col(c), _CAP_MEDIANS * per_series(pl.col(c).median())))
            .alias(c)
            for c in ("tokens", "cost_usd")
        ],
        # likewise a retry storm in one run (loop_rate reports it) is not a new error regime
        pl.min_horizontal(
            pl.col("n_errors"), pl.max_horizontal(per_series(pl.col("n_errors").quantile(0.99, "higher")), 1.0)
        ).alias("_errors_capped"),
    )
    steps = pl.col("n_steps")
    return capped.group_by(*keys, "bucket").agg(
        pl.len().cast(pl.Int64).alias("runs"),
        steps.mean().alias("steps_mean"),
        (pl.col("_errors_capped").sum() / steps.sum()).alias("error_rate"),
        (pl.col("n_errors") > 0).mean().alias("error_run_rate"),
        pl.col("_looped").cast(pl.Float64).mean().alias("loop_rate")
        if has_loops
        else pl.lit(None, dtype=pl.Float64).alias("loop_rate"),
        pl.col("tokens").mean().alias("tokens_per_run"),
        pl.col("cost_usd").mean().alias("cost_per_run"),
        pl.col("latency_ms").quantile(0.9, "linear").alias("latency_p90"),
        (pl.col("n_llm").sum() / steps.sum()).alias("llm_ratio"),
    ).join(
        _mid_quantile(runs, [*keys, "bucket"], "n_steps", 0.9, "steps_p90"), on=[*keys, "bucket"], how="left",
        nulls_equal=True,
    ).select(series_expr(keys), pl.all().exclude(keys))


def _mid_quantile(runs: pl.LazyFrame, group: Sequence[str], col: str, p: float, name: str) -> pl.LazyFrame:
    """The ``p`` mid-quantile of the whole numbers ``col`` per ``group``: the inverse of the
    mid-distribution function ``F(k-) + P(k) / 2``, interpolated linearly between the values.

    A plain quantile of counts is a step function of the distribution: the 90th percentile of
    steps per run sits on 9 for days, then on 10 for a few days by chance, and a series with no
    spread inside its segments makes a one-step flicker look like a shift of eight standard
    errors. The mid-quantile moves with the distribution continuously (Ma, Genton and Parzen,
    2011) and equals the value itself when every run has it.

    Examples
    --------
    >>> lf = pl.LazyFrame({"g": [1] * 10 + [2] * 3, "n": [5] * 8 + [9, 10] + [4] * 3})
    >>> _mid_quantile(lf, ["g"], "n", 0.9, "q").sort("g").collect()["q"].to_list()  # mid-ranks .4, .85, .95
    [9.5, 4.0]
    """
    k = pl.col(col).cast(pl.Float64)
    counts = runs.filter(pl.col(col).is_not_null()).group_by(*group, col).agg(pl.len().cast(pl.Float64).alias("_c"))
    counts = counts.sort(*group, col, nulls_last=True).with_columns(
        ((pl.col("_c").cum_sum() - pl.col("_c") / 2) / pl.col("_c").sum()).over(group).alias("_mid")
    )
    below = pl.col("_mid") <= p
    k_lo, m_lo = k.filter(below).max(), pl.col("_mid").filter(below).max()
    k_hi, m_hi = k.filter(~below).min(), pl.col("_mid").filter(~below).min()
    q = (
        pl.when(k_lo.is_null()).then(k_hi)
        .when(k_hi.is_null()).then(k_lo)
        .otherwise(k_lo + (p - m_lo) / (m_hi - m_lo) * (k_hi - k_lo))
    )
    return counts.group_by(group).agg(q.alias(name))


def _tool_shares(
    runs: pl.LazyFrame,
    by_cols: Sequence[str],
    levels: Sequence[Sequence[str]],
    action_counts: pl.DataFrame | pl.LazyFrame,
    top_tools: int,
) -> pl.DataFrame:
    """``top{i}_tool`` / ``top{i}_share`` of every (series, bucket) of every level in ``levels``.

    The per-run counts are joined to the runs once, at the finest level (``by_cols``);
    coarser levels (the fleet) sum those per-bucket counts (whole numbers: exact).
    """
    ac = _as_frame(action_counts, "action_counts").lazy()
    ac_schema = ac.collect_schema()
    missing = [c for c in ("run_id", "action", "n") if c not in ac_schema]
    if missing:
        raise SchemaError(
            f"action_counts: missing column(s) {missing}; expected run_action_counts() output "
            f"(run_id, agent, action, n), found {list(ac_schema)}"
        )
    # the action stays as given (String, or Categorical in the audit's compact per-run tables:
    # both sort lexically) and becomes text only in the few aggregated rows
    tools = ac.filter(pl.col("action") != LLM_ACTION).select(
        pl.col("run_id").cast(pl.String), pl.col("action"), pl.col("n").cast(pl.Float64)
    )
    fine = (
        runs.select(*by_cols, "bucket", "run_id")
        .join(tools, on="run_id", how="inner")
        .group_by(*by_cols, "bucket", "action")
        .agg(pl.col("n").sum())
        .collect()
    )
    out: list[pl.DataFrame] = []
    for keys in levels:
        lvl = fine if list(keys) == list(by_cols) else fine.group_by(*keys, "bucket", "action").agg(pl.col("n").sum())
        per = lvl.lazy().select(series_expr(keys), "bucket", "action", "n")
        totals = per.group_by("series", "bucket").agg(pl.col("n").sum().alias("_tot"))
        top = (
            per.group_by("series", "action")
            .agg(pl.col("n").sum().alias("_all"))
            .sort(["series", "_all", "action"], descending=[False, True, False])
            .with_columns(pl.int_range(pl.len()).over("series").alias("_rank"))
            .filter(pl.col("_rank") < top_tools)
            .select("series", "action", "_rank")
        )
        grid = (
            totals.join(top, on="series", how="inner")
            .join(per, on=["series", "bucket", "action"], how="left")
            .with_columns((pl.col("n").fill_null(0.0) / pl.col("_tot")).alias("_share"))
        )
        aggs: list[pl.Expr] = []
        for i in range(top_tools):
            sel = pl.col("_rank") == i
            aggs += [
                pl.col("action").filter(sel).first().cast(pl.String).alias(f"top{i + 1}_tool"),
                pl.col("_share").filter(sel).first().alias(f"top{i + 1}_share"),
            ]
        out.append(grid.group_by("series", "bucket").agg(aggs).collect())
    return pl.concat(out)


def _empty_buckets(top_tools: int) -> pl.DataFrame:
    schema: dict[str, Any] = {
        "series": pl.String,
        "bucket": TS_DTYPE,
        "bucket_index": pl.Int64,
        "runs": pl.Int64,
        "coverage": pl.Float64,
        "partial": pl.Boolean,
    }
    for m in BUCKET_METRICS[1:]:
        schema[m] = pl.Float64
    for i in range(1, top_tools + 1):
        schema[f"top{i}_tool"] = pl.String
        schema[f"top{i}_share"] = pl.Float64
    return pl.DataFrame(schema=schema)


def _truncate_scalar(ts: Any, every: str) -> Any:
    return pl.select(pl.lit(ts, dtype=TS_DTYPE).dt.truncate(every)).item()


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True, slots=True)
class _Options:
    pen: float | None
    n_bkps: int | None
    beta: float
    min_size: int
    min_z: float
    min_magnitude: float
    weight: bool
    sparse: bool


def changepoints_from_buckets(
    buckets: pl.DataFrame | pl.LazyFrame,
    *,
    metrics: Sequence[str] | None = None,
    pen: float | None = None,
    n_bkps: int | None = None,
    penalty_beta: float = PENALTY_BETA,
    min_size: int = 3,
    min_runs: int = 1,
    min_z: float = MIN_Z,
    min_magnitude: float = MIN_MAGNITUDE,
    weight: Literal["volume"] | None = "volume",
    sparse: bool = True,
) -> pl.DataFrame:
    """Change-points in per-bucket behaviour series (the fleet-stage detector).

    Parameters
    ----------
    buckets : polars.DataFrame or polars.LazyFrame
        :func:`bucket_metrics_from_runs` output (or any table with ``series``,
        ``bucket``, ``runs`` and metric columns; ``bucket_index``, ``partial``
        and the ``top{i}_tool/share`` columns are optional).
    metrics : sequence of str, optional
        Metrics to watch, from :data:`BUCKET_METRICS` plus ``"tool_mix"`` (the
        top-tool shares) or any other numeric column. Default
        :data:`DEFAULT_METRICS` (every behaviour metric; volume ``runs`` is not
        one). All-null or constant metrics are skipped per series.
    pen : float, optional
        Penalty per breakpoint in whitened units (the series is standardised by
        its own noise). Default: :func:`auto_penalty`,
        ``penalty_beta * (d + 2 sqrt(d log T) + 2 log T)`` for ``d`` metrics over
        ``T`` buckets.
    n_bkps : int, optional
        Find exactly this many breakpoints per series (exact dynamic
        programming) instead of a penalty; the materiality filter still applies.
    penalty_beta : float, default 1.5
        Multiplier of the automatic penalty (higher: fewer change-points).
    min_size : int, default 3
        Minimum segment length in buckets (at least 2).
    min_runs : int, default 1
        Buckets with fewer runs are left out of the series.
    min_z : float, default 4.0
        A metric moved materially when its shift is at least this many standard
        errors (segment means weighted by runs, heteroscedastic errors) ...
    min_magnitude : float, default 0.1
        ... and at least this relative change ``|after - before| / |before|``.
        Breakpoints where no metric moved materially are dropped (the search is
        re-scored without them). Set both to 0 to see every breakpoint.
    weight : {"volume", None}, default "volume"
        ``"volume"`` scales each bucket's deviation from a rolling median by
        ``sqrt(runs / median runs)`` so low-volume (weekend, night) buckets,
        whose means are noisier, do not trigger change-points.
    sparse : bool, default True
        After the multivariate search, scan each metric on its own (vectorised
        binary segmentation, threshold :func:`sparse_penalty`) for changes in a
        single metric that the multivariate penalty, paid for every metric,
        would hide (an error rate that triples while nothing else moves).

    Returns
    -------
    polars.DataFrame
        :data:`CHANGEPOINT_SCHEMA`: one row per (breakpoint, material metric),
        sorted by ``series, ts, rank``. ``ts`` is the start of the first bucket
        of the new regime; ``before`` / ``after`` are the run-weighted metric
        means of the segments on either side (up to the neighbouring
        breakpoints); ``magnitude`` the relative change (``inf`` from 0);
        ``score`` the shift in standard errors (``|z|``); ``rank`` 1 for the
        metric that moved most; ``metrics_moved`` every material metric of the
        breakpoint, strongest first; ``cp_score`` the multivariate cost gain of
        the breakpoint divided by the penalty (> 1 passes the penalty).

    Examples
    --------
    >>> import numpy as np, polars as pl
    >>> from datetime import datetime, timedelta, timezone
    >>> rng = np.random.default_rng(1)
    >>> err = np.r_[rng.normal(0.02, 0.002, 30), rng.normal(0.06, 0.002, 30)]
    >>> b = pl.DataFrame({"series": "agent=a", "runs": 100,
    ...     "bucket": [datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=i) for i in range(60)],
    ...     "error_rate": err, "steps_mean": rng.normal(10, 0.3, 60)})
    >>> changepoints_from_buckets(b).select("metric", "bucket_index", "rank").rows()
    [('error_rate', 30, 1)]
    """
    opts = _Options(
        pen=None if pen is None else _check_float("pen", pen, lo=0.0, strict=True),
        n_bkps=None if n_bkps is None else _check_int("n_bkps", n_bkps, lo=1),
        beta=_check_float("penalty_beta", penalty_beta, lo=0.0, strict=True),
        min_size=_check_int("min_size", min_size, lo=2),
        min_z=_check_float("min_z", min_z, lo=0.0),
        min_magnitude=_check_float("min_magnitude", min_magnitude, lo=0.0),
        weight=_check_weight(weight),
        sparse=check_flag(sparse, name="sparse"),
    )
    _check_int("min_runs", min_runs, lo=1)
    b = _as_frame(buckets, "buckets")
    if isinstance(b, pl.LazyFrame):
        b = b.collect()
    missing = [c for c in ("series", "bucket", "runs") if c not in b.columns]
    if missing:
        raise SchemaError(
            f"buckets: missing column(s) {missing}; expected bucket_metrics_from_runs() output, found {b.columns}"
        )
    names = _resolve_metrics(metrics, b.columns)
    if metrics is None:  # defaults: watch what the table has
        names = [m for m in names if m in b.columns or m == TOOL_MIX]
    else:
        absent = [m for m in names if m not in b.columns and m != TOOL_MIX]
        if absent:
            raise SchemaError(f"buckets: metric column(s) {absent} not found; found {b.columns}")
    if "bucket_index" not in b.columns:
        b = b.with_columns(pl.int_range(pl.len()).over("series", order_by="bucket").alias("bucket_index"))
    keep = pl.col("runs") >= min_runs
    if "partial" in b.columns:
        keep = keep & ~pl.col("partial").fill_null(False)
    b = b.filter(keep).sort("series", "bucket")
    if b.height == 0:
        return _empty_changepoints()

    plain = [m for m in names if m != TOOL_MIX]
    tool_pairs: list[tuple[str, str]] = []
    if TOOL_MIX in names:
        i = 1
        while f"top{i}_tool" in b.columns and f"top{i}_share" in b.columns:
            tool_pairs.append((f"top{i}_tool", f"top{i}_share"))
            i += 1
    value_cols = plain + [s for _, s in tool_pairs]
    if not value_cols:
        return _empty_changepoints()
    # too short to split: fewer than two minimum segments
    b = b.filter(pl.len().over("series") >= 2 * opts.min_size)
    if b.height == 0:
        return _empty_changepoints()
    # a bucket without a value (no tool calls that day, no cost recorded yet) takes the series'
    # previous (else next) value for the search, which needs a value in every bucket; the
    # materiality test weighs it 0 (a value copied over ten days is not ten observations)
    known = np.column_stack([b[c].cast(pl.Float64).fill_nan(None).is_not_null().to_numpy() for c in value_cols])
    filled = b.select(
        *[
            pl.col(c).cast(pl.Float64).fill_nan(None).forward_fill().backward_fill().over("series").alias(c)
            for c in value_cols
        ],
        (pl.col("runs").cast(pl.Float64) / pl.col("runs").cast(pl.Float64).median().over("series")).alias("_rel"),
    )
    x = np.column_stack([filled[c].to_numpy() for c in value_cols])
    runs = b["runs"].cast(pl.Float64).to_numpy()
    index = b["bucket_index"].cast(pl.Int64).to_numpy()
    ts = b["bucket"]
    series = b["series"]
    starts = np.flatnonzero(series.ne(series.shift(1)).fill_null(True).to_numpy())
    tool_names = [b[t].gather(starts).to_list() for t, _ in tool_pairs]  # constant within a series
    stk = _stack(x, runs, filled["_rel"].to_numpy(), starts, opts, known)
    stk.volume[:] = [c == "runs" for c in value_cols]  # the volume itself: a bucket is one observation
    algo = _kernel_cpd(opts.min_size)

    rows: list[dict[str, Any]] = []
    for k, a in enumerate(starts):
        a = int(a)
        labels = plain + [
            f"tool_share:{tool_names[j][k]}" if tool_names[j][k] is not None else f"tool_share:#{j + 1}"
            for j in range(len(tool_pairs))
        ]
        name = series[a]
        for bk in _detect_series(stk, k, algo, opts):
            pos = a + bk.position
            for r, j in enumerate(bk.order, start=1):
                rows.append(
                    {
                        "series": name,
                        "metric": labels[j],
                        "ts": ts[pos],
                        "before": float(bk.before[j]),
                        "after": float(bk.after[j]),
                        "magnitude": float(bk.magnitude[j]),
                        "score": float(abs(bk.z[j])),
                        "bucket_index": int(index[pos]),
                        "rank": r,
                        "metrics_moved": [labels[i] for i in bk.order],
                        "cp_score": float(bk.cp_score),
                        "runs_before": int(bk.runs_before),
                        "runs_after": int(bk.runs_after),
                        "buckets_before": int(bk.buckets_before),
                        "buckets_after": int(bk.buckets_after),
                    }
                )
    if not rows:
        return _empty_changepoints()
    return pl.DataFrame(rows, schema=CHANGEPOINT_SCHEMA).sort("series", "ts", "rank")


@dataclass(frozen=True, slots=True)
class _Break:
    position: int  # first row of the new regime, within the series
    order: list[int]  # material metric columns, strongest first
    before: np.ndarray
    after: np.ndarray
    magnitude: np.ndarray
    z: np.ndarray
    cp_score: float
    runs_before: float
    runs_after: float
    buckets_before: int
    buckets_after: int


@dataclass(frozen=True, slots=True)
class _Stacked:
    """Every series stacked row-wise (sorted by series, bucket), prepared in one vectorised pass.

    ``u`` holds the standardised, volume-weighted, outlier-clipped metrics that
    the searches see; ``raw`` and ``test`` feed the materiality test (prefix
    sums per series, built only for series with candidate breakpoints).
    """

    starts: np.ndarray  # first row of each series
    ends: np.ndarray
    usable: np.ndarray  # (S, d): metric has values and is not constant in the series
    u: np.ndarray  # (N, d) standardised, weighted, clipped: what the searches see
    n: np.ndarray  # (N,) runs
    known: np.ndarray  # (N, d) the bucket has a value of its own (not a filled gap)
    volume: np.ndarray  # (d,) the metric is the volume (runs): its buckets are not weighted by runs
    raw: np.ndarray  # (N, d) metric values (gaps filled)
    test: np.ndarray  # (N, d) outlier-clipped values, centred per series: the materiality test


def _stack(
    x: np.ndarray, n: np.ndarray, rel: np.ndarray, starts: np.ndarray, opts: _Options, known: np.ndarray | None = None
) -> _Stacked:
    """Vectorised preparation of all series (no per-series Python work).

    1. level: centred rolling median (7 buckets; shifted inwards at the ends);
    2. volume weighting: residuals from the level times ``sqrt(runs / median runs)``;
    3. noise scale per series and metric from first differences (winsorised
       second moment, so the jumps of real change-points barely count);
    4. residuals clipped at ``_CLIP`` noise sd (single-bucket outliers), then standardised.
    """
    n_rows, _ = x.shape
    ends = np.r_[starts[1:], n_rows]
    lengths = ends - starts
    seg = np.repeat(np.arange(len(starts)), lengths)
    finite = np.isfinite(x)
    x0 = np.where(finite, x, 0.0)
    # gaps are filled within each series, so a metric is either present in all of a series' rows or in none
    present = finite[starts]

    level = _rolling_median_stacked(x0, starts, ends)
    raw = x0 - level
    f = np.clip(np.sqrt(np.nan_to_num(rel, nan=1.0)), 0.05, 2.0)[:, None] if opts.weight else np.ones((n_rows, 1))
    resid = raw * f
    y = level + resid
    dy = np.diff(y, axis=0)
    dy[seg[1:] != seg[:-1]] = 0.0  # no differences across series
    m = np.maximum(lengths - 1, 1)[:, None].astype(float)
    sd0 = math.sqrt(math.pi / 2.0) * np.add.reduceat(np.abs(dy), starts, axis=0) / m  # from mean |d|
    cap = (3.0 * sd0)[seg[:-1]] ** 2
    sd = np.sqrt(np.add.reduceat(np.minimum(dy * dy, cap), starts, axis=0) / m / _WINSOR_3SD)
    s = sd / math.sqrt(2.0)  # noise sd of one bucket
    scale = np.abs(np.add.reduceat(x0, starts, axis=0)) / lengths[:, None]
    usable = present & (s > 1e-12 * np.maximum(scale, 1.0))  # constant metrics have no differences
    s = np.where(usable, s, 1.0)
    s_row = s[seg]
    xc = level + np.clip(resid, -_CLIP * s_row, _CLIP * s_row)
    bound = _CLIP * s_row / f
    x_test = level + np.clip(raw, -bound, bound)  # the same clipping, unweighted units
    mean_c = (np.add.reduceat(xc, starts, axis=0) / lengths[:, None])[seg]
    u = np.where(usable[seg], (xc - mean_c) / s_row, 0.0)
    # centre the clipped values per series before squaring them in prefix sums (precision)
    test = x_test - (np.add.reduceat(x_test, starts, axis=0) / lengths[:, None])[seg]
    known = finite if known is None else known & finite
    return _Stacked(starts=starts, ends=ends, usable=usable, u=u, n=n, known=known,
                    volume=np.zeros(x.shape[1], dtype=bool), raw=x0, test=test)


def _prefix(v: np.ndarray) -> np.ndarray:
    """Prefix sums with a leading zero row: ``out[b] - out[a]`` sums rows ``a..b-1``."""
    out = np.zeros((v.shape[0] + 1, *v.shape[1:]))
    np.cumsum(v, axis=0, out=out[1:])
    return out


def _median7(x: np.ndarray) -> np.ndarray:
    """Median of every 7 consecutive rows (a 13-exchange sorting network)."""
    k = x.shape[0] - 6
    p = [x[i : i + k].copy() for i in range(7)]
    for i, j in ((0, 5), (0, 3), (1, 6), (2, 4), (0, 1), (3, 5), (2, 6), (2, 3), (3, 6), (4, 5), (1, 4), (1, 3), (3, 4)):
        lo = np.minimum(p[i], p[j])
        np.maximum(p[i], p[j], out=p[j])
        p[i] = lo
    return p[3]


def _rolling_median_stacked(x: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Centred rolling median over ``_MEDIAN_WINDOW`` buckets within each series; near a
    series' ends the window is shifted inwards (not padded), so a burst in the last few
    buckets cannot become the local level."""
    n_rows = x.shape[0]
    h = _MEDIAN_WINDOW // 2
    lengths = ends - starts
    full = np.zeros_like(x)
    if n_rows >= _MEDIAN_WINDOW:
        full[h : n_rows - h] = _median7(x)
    idx = np.clip(np.arange(n_rows), np.repeat(starts + h, lengths), np.repeat(ends - h - 1, lengths))
    level = full[idx]
    for a, e in zip(starts[lengths < _MEDIAN_WINDOW], ends[lengths < _MEDIAN_WINDOW], strict=True):
        level[a:e] = _rolling_median(x[a:e], _MEDIAN_WINDOW)  # short series: a smaller window
    return level


def _rolling_median(x: np.ndarray, window: int) -> np.ndarray:
    t_len = x.shape[0]
    w = min(window, t_len if t_len % 2 else t_len - 1)
    if w < 3:
        return np.median(x, axis=0, keepdims=True).repeat(t_len, axis=0)
    med = np.median(np.lib.stride_tricks.sliding_window_view(x, w, axis=0), axis=-1)
    return med[np.clip(np.arange(t_len) - w // 2, 0, t_len - w)]


def _whiten(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Decorrelate the metrics of one series by the correlation of their first differences.

    Returns the whitened series, the whitening matrix and the effective dimension: the trace of the
    noise covariance after whitening with shrinkage, so redundant metrics
    (``steps_mean`` and ``steps_p90``) count less than one each in the penalty.
    """
    if u.shape[1] == 1:
        return np.ascontiguousarray(u), np.ones((1, 1)), 1.0
    du = np.diff(u, axis=0)
    calm = np.abs(du).max(axis=1) <= 5.0 * math.sqrt(2.0)  # leave the jumps out
    if calm.sum() >= max(3, du.shape[1] + 1):
        du = du[calm]
    c = du.T @ du
    sd = np.sqrt(np.clip(np.diag(c), 1e-12, None))
    c = c / sd[:, None] / sd[None, :]
    vals, vecs = np.linalg.eigh((1 - _SHRINK) * c + _SHRINK * np.eye(c.shape[0]))
    w = vecs / np.sqrt(np.clip(vals, 1e-12, None))
    dim = float(np.einsum("ji,jk,ki->", w, c, w))
    return np.ascontiguousarray(u @ w), w, max(dim, 1.0)


def _detect_series(stk: _Stacked, k: int, algo: Any, opts: _Options) -> list[_Break]:
    """Breakpoints of series ``k`` of the stack."""
    cols = np.flatnonzero(stk.usable[k])
    if cols.size == 0:
        return []
    a, e = int(stk.starts[k]), int(stk.ends[k])
    t_len = e - a
    u = stk.u[a:e][:, cols]
    z, w, dim = _whiten(u)
    p_u = _prefix(u)
    pen = opts.pen if opts.pen is not None else auto_penalty(dim, t_len, beta=opts.beta)
    bkps = _search(algo, z, pen, opts)
    sparse_pen = math.inf
    if opts.n_bkps is None and opts.sparse:
        sparse_pen = sparse_penalty(cols.size, t_len, beta=opts.beta)
        if opts.pen is not None:  # keep the ratio of the two penalties
            sparse_pen *= opts.pen / auto_penalty(dim, t_len, beta=opts.beta)
        bkps = _sparse_scan(p_u, bkps, sparse_pen, opts.min_size)
    if not bkps:
        return []

    seg = _Segments(stk, a, e, cols)
    while True:  # materiality: drop the weakest immaterial breakpoint until all are material
        stats = seg.stats(bkps, t_len, opts.min_z, opts.min_magnitude)
        ok = stats["material"].any(axis=1)
        if ok.all():
            break
        bkps.pop(int(np.argmin(np.where(ok, np.inf, np.abs(stats["z"]).max(axis=1)))))
        if not bkps:
            return []
    mv_gain, uni_gain = _gains(p_u, w, bkps)
    strength = np.maximum(mv_gain / pen, uni_gain / sparse_pen)
    width = stk.usable.shape[1]

    def spread(v: np.ndarray) -> np.ndarray:
        out = np.full(width, np.nan)
        out[cols] = v
        return out

    found: list[_Break] = []
    for i, pos in enumerate(bkps):
        zi = stats["z"][i]
        order = [int(cols[j]) for j in np.argsort(-np.abs(zi), kind="stable") if stats["material"][i][j]]
        found.append(
            _Break(
                position=int(pos),
                order=order,
                before=spread(stats["before"][i]),
                after=spread(stats["after"][i]),
                magnitude=spread(stats["magnitude"][i]),
                z=spread(zi),
                cp_score=float(strength[i]),
                runs_before=float(stats["runs_before"][i]),
                runs_after=float(stats["runs_after"][i]),
                buckets_before=int(stats["buckets_before"][i]),
                buckets_after=int(stats["buckets_after"][i]),
            )
        )
    return found


def _sparse_scan(p_u: np.ndarray, bkps: list[int], pen: float, min_size: int) -> list[int]:
    """Add single-metric changes the multivariate penalty hides (binary segmentation).

    ``p_u`` holds the prefix sums (T + 1, d) of the standardised metrics of one
    series. Within each segment the best split of every metric is scored by
    its univariate l2 cost gain (the squared CUSUM statistic), all positions
    and metrics at once; the best one above ``pen`` is added, until none is.
    """
    bkps = sorted(bkps)
    t_len = p_u.shape[0] - 1
    while True:
        edges = [0, *bkps, t_len]
        best_gain, best_pos = pen, -1
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            m = b - a
            if m < 2 * min_size:
                continue
            k = np.arange(min_size, m - min_size + 1)
            left = p_u[a + k] - p_u[a]
            diff = left / k[:, None] - (p_u[b] - p_u[a] - left) / (m - k)[:, None]
            gain = ((k * (m - k) / m)[:, None] * diff * diff).max(axis=1)
            i = int(np.argmax(gain))
            if gain[i] > best_gain:
                best_gain, best_pos = float(gain[i]), a + int(k[i])
        if best_pos < 0:
            return bkps
        bkps = sorted([*bkps, best_pos])


def auto_penalty(dim: float, n_buckets: int, *, beta: float = PENALTY_BETA) -> float:
    """The default penalty per breakpoint for ``dim`` whitened metrics over ``n_buckets`` buckets.

    ``beta * (d + 2 sqrt(d log T) + 2 log T)``: the Birgé-Massart / Lebarbier
    form of a BIC-style penalty, which tracks the 99% quantile of the largest
    cost gain on stationary Gaussian noise for d = 1..14 and T = 30..1000
    (measured; see the README, "Change-points"). ``beta`` absorbs what real
    bucket series add (heavy tails, weekly swings), calibrated on synthetic
    stationary fleets.

    Examples
    --------
    >>> round(auto_penalty(10, 365, beta=1.0), 1)
    37.2
    """
    lg = math.log(max(n_buckets, 2))
    return beta * (dim + 2.0 * math.sqrt(dim * lg) + 2.0 * lg)


def sparse_penalty(n_metrics: int, n_buckets: int, *, beta: float = PENALTY_BETA) -> float:
    """The threshold of the per-metric scan: a univariate penalty, Bonferroni-corrected.

    ``beta * (1 + 2 sqrt(log T) + 2 log T + 2 log m)`` for ``m`` metrics over
    ``T`` buckets: :func:`auto_penalty` with ``d = 1`` plus ``2 log m``, which
    divides the tail probability of the largest of ``m`` univariate gains by ``m``.

    Examples
    --------
    >>> round(sparse_penalty(11, 60, beta=1.0), 1)
    18.0
    """
    lg = math.log(max(n_buckets, 2))
    return beta * (1.0 + 2.0 * math.sqrt(lg) + 2.0 * lg + 2.0 * math.log(max(n_metrics, 1)))


def _kernel_cpd(min_size: int) -> Any:
    import ruptures as rpt

    return rpt.KernelCPD(kernel="linear", min_size=min_size)


def _search(algo: Any, z: np.ndarray, pen: float, opts: _Options) -> list[int]:
    """Exact penalised (PELT) or fixed-count (dynamic programming) search, ruptures' C code."""
    algo.fit(z)
    t_len = z.shape[0]
    if opts.n_bkps is not None:
        k = min(opts.n_bkps, t_len // opts.min_size - 1)
        if k < 1:
            return []
        bk = algo.predict(n_bkps=k)
    else:
        bk = algo.predict(pen=pen)
    return [int(v) for v in bk[:-1]]


class _Segments:
    """Run-weighted segment statistics of one series from the stack's prefix sums."""

    def __init__(self, stk: _Stacked, start: int, end: int, cols: np.ndarray) -> None:
        n = stk.n[start:end]
        known = stk.known[start:end][:, cols]
        # a filled gap weighs nothing; the volume's mean is per bucket (weighted by itself, a
        # doubling read 37 -> 75 runs a day where the days held 31 -> 63)
        w = np.where(stk.volume[cols], 1.0, n[:, None]) * known
        t = stk.test[start:end][:, cols]
        self.p_n = _prefix(n)
        self.p_w = _prefix(w)
        self.p_k = _prefix(known.astype(float))
        self.p_raw = _prefix(w * stk.raw[start:end][:, cols])
        self.p_t1 = _prefix(w * t)
        self.p_t2 = _prefix(w * t * t)

    def stats(self, bkps: list[int], t_len: int, min_z: float, min_mag: float) -> dict[str, np.ndarray]:
        edges = np.array([0, *bkps, t_len])
        lo, hi = edges[:-1], edges[1:]
        seg_n = self.p_n[hi] - self.p_n[lo]
        seg_len = (hi - lo).astype(float)
        seg_w = self.p_w[hi] - self.p_w[lo]  # (segments, metrics): runs of the buckets with a value
        seg_k = self.p_k[hi] - self.p_k[lo]  # buckets with a value
        s1 = self.p_t1[hi] - self.p_t1[lo]
        s2 = self.p_t2[hi] - self.p_t2[lo]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = s1 / seg_w
            seg_ss = np.where(seg_w > 0, np.maximum(s2 - s1 * mean, 0.0), 0.0)  # sum n (x - mean)^2
            dof = np.maximum(seg_k - 1.0, 0.0)
            pooled = seg_ss.sum(axis=0) / np.maximum(dof.sum(axis=0), 1.0)
            var = (seg_ss + _POOL_DOF * pooled) / (dof + _POOL_DOF)  # per-run variance, shrunk
            se2 = var / seg_w
            shift = mean[1:] - mean[:-1]  # on outlier-clipped values
            se = np.sqrt(se2[:-1] + se2[1:])
            raw_mean = (self.p_raw[hi] - self.p_raw[lo]) / seg_w
            before, after = raw_mean[:-1], raw_mean[1:]
            diff = after - before
            t_stat = np.where(se > 0, shift / se, np.where(shift != 0, np.inf * np.sign(shift), 0.0))
            mag = np.where(before != 0, diff / np.abs(before), np.where(diff != 0, np.inf * np.sign(diff), 0.0))
        # a side with fewer than two buckets of its own values (a metric recorded from the day
        # before the breakpoint on) has no segment to compare
        seen = (seg_k[:-1] >= 2) & (seg_k[1:] >= 2)
        # the per-run variance comes from the spread of bucket means (T - segments degrees of
        # freedom across the series, plus the pooled pseudo-observations), so the ratio is a t
        # statistic; it is reported and tested as the normal z of the same tail probability (at
        # weekly buckets, T = 9 for 60 days, a t of 4 passed min_z as if normal: 5% of stable
        # series had a change-point). The segment's own degrees of freedom would be stricter,
        # and lost a doubled step count four days before a nightly audit.
        df = np.maximum(dof.sum(axis=0), 1.0) + _POOL_DOF  # per metric
        z = np.where(seen, _t_as_z(np.where(seen, t_stat, 0.0), np.broadcast_to(df, t_stat.shape)), 0.0)
        material = (
            seen & (np.abs(z) >= min_z) & (np.abs(mag) >= min_mag) & (diff != 0) & (np.sign(diff) == np.sign(shift))
        )
        return {
            "before": before,
            "after": after,
            "z": z,
            "magnitude": mag,
            "material": material,
            "runs_before": seg_n[:-1],
            "runs_after": seg_n[1:],
            "buckets_before": seg_len[:-1],
            "buckets_after": seg_len[1:],
        }


def _t_as_z(t_stat: np.ndarray, df: np.ndarray) -> np.ndarray:
    """The normal z with the tail probability of ``t_stat`` under Student's t with ``df``."""
    from scipy import stats

    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = stats.t.logsf(np.abs(t_stat), df)
        z = np.abs(stats.norm.isf(np.exp(log_p)))
        z = np.where(np.isfinite(z) & (log_p > -700), z, np.abs(t_stat))  # beyond float range: as is
    return np.sign(t_stat) * np.minimum(z, np.abs(t_stat))


def _gains(p_u: np.ndarray, w: np.ndarray, bkps: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cost gain of each breakpoint given its neighbours: whitened multivariate, and best single metric.

    For the l2 cost the gain of splitting ``[l, r)`` at ``m`` is
    ``(m - l)(r - m)/(r - l) * ||mean_left - mean_right||^2``, so prefix sums of
    the standardised metrics (``p_u``) and the whitening matrix ``w`` suffice.
    """
    edges = np.array([0, *bkps, p_u.shape[0] - 1])
    left, mid, right = edges[:-2], edges[1:-1], edges[2:]
    nl, nr = (mid - left)[:, None], (right - mid)[:, None]
    diff = (p_u[mid] - p_u[left]) / nl - (p_u[right] - p_u[mid]) / nr
    scale = nl * nr / (nl + nr)
    return (scale[:, 0] * ((diff @ w) ** 2).sum(axis=1)), (scale * diff * diff).max(axis=1)


def changepoints_from_runs(
    features: pl.DataFrame | pl.LazyFrame,
    action_counts: pl.DataFrame | pl.LazyFrame | None = None,
    loop_summary: pl.DataFrame | pl.LazyFrame | None = None,
    *,
    by: str | Sequence[str] | None = ("agent",),
    every: str = "1d",
    metrics: Sequence[str] | None = None,
    pen: float | None = None,
    n_bkps: int | None = None,
    penalty_beta: float = PENALTY_BETA,
    min_size: int = 3,
    min_runs: int = 1,
    min_z: float = MIN_Z,
    min_magnitude: float = MIN_MAGNITUDE,
    weight: Literal["volume"] | None = "volume",
    sparse: bool = True,
    include_fleet: bool = True,
    top_tools: int = 3,
    min_coverage: float = 0.5,
) -> pl.DataFrame:
    """Change-points from per-run tables (the audit's fleet stage).

    :func:`bucket_metrics_from_runs` followed by :func:`changepoints_from_buckets`;
    see those for the parameters.

    Returns
    -------
    polars.DataFrame
        :data:`CHANGEPOINT_SCHEMA` rows (``series, metric, ts, before, after,
        magnitude, score, bucket_index, rank, metrics_moved, cp_score, ...``).

    Examples
    --------
    >>> import polars as pl
    >>> from datetime import datetime, timezone
    >>> runs = pl.DataFrame({"run_id": ["a"], "agent": "bot",
    ...     "first_ts": [datetime(2026, 1, 1, tzinfo=timezone.utc)], "n_steps": [3],
    ...     "n_errors": [0], "n_llm": [1], "tokens": [10], "cost_usd": [0.1], "latency_ms": [5.0]})
    >>> changepoints_from_runs(runs).height  # one bucket: nothing to compare
    0
    """
    buckets = bucket_metrics_from_runs(
        features,
        action_counts,
        loop_summary,
        by=by,
        every=every,
        include_fleet=include_fleet,
        top_tools=top_tools,
        min_coverage=min_coverage,
    )
    return changepoints_from_buckets(
        buckets,
        metrics=metrics,
        pen=pen,
        n_bkps=n_bkps,
        penalty_beta=penalty_beta,
        min_size=min_size,
        min_runs=min_runs,
        min_z=min_z,
        min_magnitude=min_magnitude,
        weight=weight,
        sparse=sparse,
    )


def detect_changepoints(
    events: Any,
    *,
    by: str | Sequence[str] | None = ("agent",),
    every: str = "1d",
    metrics: Sequence[str] | None = None,
    pen: float | None = None,
    n_bkps: int | None = None,
    penalty_beta: float = PENALTY_BETA,
    min_size: int = 3,
    min_runs: int = 1,
    min_z: float = MIN_Z,
    min_magnitude: float = MIN_MAGNITUDE,
    weight: Literal["volume"] | None = "volume",
    sparse: bool = True,
    include_fleet: bool = True,
    top_tools: int = 3,
    min_coverage: float = 0.5,
    loops: pl.DataFrame | pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """When did the agents start behaving differently, in which metric, by how much.

    Computes the per-run tables from ``events`` (:func:`driftwatch.run_features`,
    :func:`driftwatch.features.run_action_counts`) and calls
    :func:`changepoints_from_runs`.

    Parameters
    ----------
    events : polars.DataFrame, polars.LazyFrame or ReadResult
        Canonical events (``ts`` required).
    by : str or sequence of str, default ("agent",)
        Columns naming a series. Columns that are not run features (anything
        but ``agent`` / ``version``) are taken as each run's first non-null value.
    every : str, default "1d"
        Bucket width (Polars duration).
    metrics, pen, n_bkps, penalty_beta, min_size, min_runs, min_z, min_magnitude, weight, sparse
        See :func:`changepoints_from_buckets`.
    include_fleet, top_tools, min_coverage
        See :func:`bucket_metrics_from_runs`.
    loops : polars.DataFrame or polars.LazyFrame, optional
        ``detect_loops`` output or its ``loop_summary``; enables ``loop_rate``.

    Returns
    -------
    polars.DataFrame
        At least ``series, metric, ts, before, after, magnitude, score``; see
        :data:`CHANGEPOINT_SCHEMA`.

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> from datetime import datetime, timezone
    >>> ev = pl.DataFrame({"run_id": ["r1", "r1"], "step": [1, 2], "action": ["llm", "search"],
    ...     "ts": [datetime(2026, 1, 1, tzinfo=timezone.utc)] * 2})
    >>> dw.detect_changepoints(ev).columns[:7]
    ['series', 'metric', 'ts', 'before', 'after', 'magnitude', 'score']
    """
    from driftwatch.features import run_action_counts, run_features

    by_cols = normalize_by(by)
    lf = as_lazy(events)
    schema = lf.collect_schema()
    unknown = [c for c in by_cols if c not in schema]
    if unknown:
        raise SchemaError(f"by: column(s) {unknown} not in events; found {list(schema)}")
    require_timestamps(lf, "change-points")
    feats = run_features(lf, by=by_cols)
    names = _resolve_metrics(metrics, None)
    counts = run_action_counts(lf) if TOOL_MIX in names and top_tools > 0 else None
    if loops is None and metrics is not None and "loop_rate" in names:
        loops = detect_loops_if_available(lf)  # asked for by name: found, not silently left out
        if loops is None:
            raise InvalidParameterError("metrics: 'loop_rate' needs loops=detect_loops(events) output "
                                        "(driftwatch.loops is not available to compute it)")
    summary = _loop_summary(loops) if loops is not None else None
    return changepoints_from_runs(
        feats,
        counts,
        summary,
        by=by_cols,
        every=every,
        metrics=metrics,
        pen=pen,
        n_bkps=n_bkps,
        penalty_beta=penalty_beta,
        min_size=min_size,
        min_runs=min_runs,
        min_z=min_z,
        min_magnitude=min_magnitude,
        weight=weight,
        sparse=sparse,
        include_fleet=include_fleet,
        top_tools=top_tools,
        min_coverage=min_coverage,
    )


def _loop_summary(loops: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """Accept ``loop_summary`` output as is, or reduce ``detect_loops`` output to it."""
    loops = _as_frame(loops, "loops")
    cols = loops.collect_schema().names()
    if "run_id" not in cols:
        raise SchemaError(f"loops: missing column 'run_id'; expected detect_loops() or loop_summary() output, found {cols}")
    if "loop_severity" in cols or "n_loops" in cols:
        return loops
    try:
        from driftwatch.loops import loop_summary
    except ImportError:  # pragma: no cover - loops module missing
        return loops.lazy().select("run_id").unique()
    return loop_summary(loops.collect() if isinstance(loops, pl.LazyFrame) else loops)


# --------------------------------------------------------------------------- within runs


def detect_run_changepoints(
    events: Any,
    *,
    metric: str = "tokens",
    min_steps: int = 20,
    min_size: int = 5,
    steps: Literal["auto", "llm", "tool", "all"] = "auto",
    detrend: bool | None = None,
    log: bool | None = None,
    threshold: float = RUN_THRESHOLD,
    min_magnitude: float = 0.25,
) -> pl.DataFrame:
    """Regime changes inside long runs (token usage per step jumps), at most one per run.

    Everything is Polars expressions over ``(run_id, step)``, no per-run
    Python or ruptures call. Per run with at least ``min_steps`` values of
    ``metric``:

    1. noise ``sigma`` from the median absolute deviation of first
       differences (a trend shifts them all, a jump is one outlier among them);
       a value more than 6 ``sigma`` from the median of its 5 neighbouring
       values is clipped (one or two runaway steps are not a regime; a jump is
       the majority on its side of the window and survives);
    2. the model ``y = a + b * position + delta * [position >= k] + noise``:
       the context of an LLM agent grows, so input tokens rise by about the
       same amount every step, and the trend ``b`` is part of the null model
       (``detrend``). By Frisch-Waugh, the least-squares evidence for a jump at
       ``k`` is the partial sum ``C_k`` of the trend-fit residuals scaled by the
       residual norm ``V_k`` of the step regressor; both have closed forms from
       per-run sums, so every ``k`` of every run is scored at once:
       ``z_k = |C_k| / (sigma sqrt(V_k))`` (without a trend ``V_k = k (n - k) / n``,
       the classic standardised CUSUM);
    3. the largest ``z_k`` with ``min_size`` values on each side locates the
       single likeliest change (at-most-one-change model); it is reported when
       ``z_k >= threshold`` and the jump ``delta`` is at least ``min_magnitude``
       of the level just before it.

    Runs are independent, so this is correct on any subset of whole runs (the
    audit's per-run stage) and outputs concatenate.

    Parameters
    ----------
    events : polars.DataFrame, polars.LazyFrame or ReadResult
        Canonical events (sorted or not).
    metric : str, default "tokens"
        Per-step value: one of :data:`RUN_METRICS` (``tokens`` is input +
        output tokens).
    min_steps : int, default 20
        Runs with fewer values are skipped.
    min_size : int, default 5
        Minimum number of values on each side of the change.
    steps : {"auto", "llm", "tool", "all"}, default "auto"
        Which steps carry the metric; ``"auto"`` uses LLM steps for token and
        cost metrics and every step otherwise.
    detrend : bool, optional
        Remove a per-run linear trend first. Default: True for ``tokens`` and
        ``input_tokens`` (context growth), False otherwise.
    log : bool, optional
        Detect on ``log(value + offset)`` (multiplicative changes, heavy tails): offset 1
        for token counts, a hundredth of the run's median positive value for ``cost_usd``
        and ``latency_ms`` (so the result does not depend on their unit).
        Default: True for ``output_tokens``, ``cost_usd`` and ``latency_ms``
        when not detrending.
    threshold : float, default 6.0
        Minimum standardised CUSUM statistic. Calibrated on stationary and
        trending runs with heavy-tailed noise and runaway steps (well under
        0.5% false alarms per run up to 1,000 steps; see the tests).
    min_magnitude : float, default 0.25
        Minimum relative size of the jump.

    Returns
    -------
    polars.DataFrame
        :data:`RUN_CHANGEPOINT_SCHEMA`, sorted by ``run_id``: ``run_id, agent,
        metric``, ``step`` (first step of the new regime), ``position`` (its
        0-based index among the run's values), ``n_points``, ``before`` and
        ``after`` (mean of the values before / from the change), ``jump``
        (estimated level shift in the metric's units, net of the trend),
        ``magnitude`` (``jump`` relative to the level just before the change;
        a ratio minus one when ``log``), ``score`` (the CUSUM statistic).

    Examples
    --------
    >>> import numpy as np, polars as pl
    >>> rng = np.random.default_rng(0)
    >>> turn = np.arange(60)
    >>> tok = 700 + 380 * turn + rng.integers(0, 300, 60) + np.where(turn >= 35, 6000, 0)
    >>> ev = pl.DataFrame({"run_id": "r1", "step": 2 * turn + 1, "action": "llm",
    ...                    "input_tokens": tok, "output_tokens": 100})
    >>> detect_run_changepoints(ev).select("run_id", "step", "position").rows()
    [('r1', 71, 35)]
    """
    if metric not in RUN_METRICS:
        raise InvalidParameterError(f"metric must be one of {list(RUN_METRICS)}, got {metric!r}")
    _check_int("min_steps", min_steps, lo=4)
    _check_int("min_size", min_size, lo=2)
    if steps not in ("auto", "llm", "tool", "all"):
        raise InvalidParameterError(f"steps must be 'auto', 'llm', 'tool' or 'all', got {steps!r}")
    _check_float("threshold", threshold, lo=0.0)
    _check_float("min_magnitude", min_magnitude, lo=0.0)
    use_trend = (metric in ("tokens", "input_tokens")) if detrend is None else check_flag(detrend, name="detrend")
    use_log = ((metric in ("output_tokens", "cost_usd", "latency_ms") and not use_trend) if log is None
               else check_flag(log, name="log"))

    lf = as_lazy(events)
    if metric == "tokens":
        value = (
            pl.when(pl.col("input_tokens").is_null() & pl.col("output_tokens").is_null())
            .then(None)
            .otherwise(pl.col("input_tokens").fill_null(0) + pl.col("output_tokens").fill_null(0))
        )
    else:
        value = pl.col(metric)
    if steps == "auto":
        steps = "llm" if metric in ("tokens", "input_tokens", "output_tokens", "cost_usd") else "all"
    if steps == "llm":
        lf = lf.filter(pl.col("action") == LLM_ACTION)
    elif steps == "tool":
        lf = lf.filter(pl.col("action") != LLM_ACTION)

    run = "run_id"
    # the log scale: log(value + offset). Token counts take offset 1 (log1p); money and times
    # are small numbers in their units (a $0.01 call), where log1p is nearly linear and a
    # +80% jump read as +0.8%, so their offset is a hundredth of the run's median positive
    # value: the result does not depend on the unit
    if metric in ("cost_usd", "latency_ms"):
        offset = (pl.col("_v").filter(pl.col("_v") > 0).median().over("run_id") * 0.01).fill_null(1.0)
    else:
        offset = pl.lit(1.0)
    y = (pl.col("_v").clip(lower_bound=0.0) + offset).log() if use_log else pl.col("_v")
    c = pl.col
    base = (
        lf.select("run_id", "step", "agent", value.cast(pl.Float64).alias("_v"))
        .filter(c("_v").is_not_null() & c("_v").is_finite())
        .with_columns(pl.len().over(run).alias("_n"))
        .filter(c("_n") >= min_steps)
        .sort(run, "step")
        .with_columns(y.alias("_y"), pl.int_range(pl.len()).over(run).cast(pl.Float64).alias("_p"))
        .with_columns(
            # noise of one value from first differences (a trend shifts them, a jump is one outlier)
            ((c("_y").diff() - c("_y").diff().median()).abs().median() * (1.4826 / math.sqrt(2.0)))
            .over(run)
            .alias("_sig"),
            c("_y").abs().median().over(run).alias("_lvl"),
        )
        .with_columns(pl.max_horizontal(c("_sig"), c("_lvl") * 1e-3, pl.lit(1e-9)).alias("_sig"))
    )
    # runaway steps (one or two in a row) are clipped around the median of 5 neighbouring
    # values; a level jump is a majority on its side of the window and survives
    base = _median5(base, "_y", "_med5").with_columns(
        c("_y").clip(c("_med5") - _RUN_CLIP * c("_sig"), c("_med5") + _RUN_CLIP * c("_sig")).alias("_yc")
    )
    # Least squares with a trend (Frisch-Waugh): y = a + b p + delta [p >= k] + noise.
    # With run sums n, Sp, Spp and, for the split at k, m = n - k ones whose positions sum
    # to Pk, the residual norm of the step regressor is V_k = m - q' (X'X)^-1 q, q = (m, Pk),
    # and the OLS residuals' partial sum C_k gives delta_k = -C_k / V_k and
    # z_k = |C_k| / (sigma sqrt(V_k)). Without a trend X = [1] and V_k = k (n - k) / n.
    n = c("_n").cast(pl.Float64)
    k = c("_k").cast(pl.Float64)
    m = n - k
    sp = c("_p").sum().over(run)
    spp = (c("_p") * c("_p")).sum().over(run)
    det = n * spp - sp * sp
    pk = sp - c("_pcum")
    if use_trend:
        sy = c("_yc").sum().over(run)
        spy = (c("_p") * c("_yc")).sum().over(run)
        slope = (n * spy - sp * sy) / det
        icpt = (sy - slope * sp) / n
        var_k = m - (spp * m * m - 2.0 * sp * m * pk + n * pk * pk) / det
    else:
        slope = pl.lit(0.0)
        icpt = c("_yc").mean().over(run)
        var_k = k * m / n
    scored = (
        base.with_columns(slope.alias("_b"), icpt.alias("_a"))
        .with_columns(
            (pl.int_range(pl.len()).over(run) + 1).alias("_k"),
            (c("_yc") - c("_a") - c("_b") * c("_p")).cum_sum().over(run).alias("_C"),
            c("_p").cum_sum().over(run).alias("_pcum"),
            c("_v").cum_sum().over(run).alias("_cv"),
            c("_v").sum().over(run).alias("_tv"),
            c("step").shift(-1).over(run).alias("_next_step"),
        )
        .with_columns(var_k.alias("_V"), sp.alias("_sp"), spp.alias("_spp"), pk.alias("_pk"))
        .with_columns(
            pl.when((k >= min_size) & (k <= n - min_size) & (c("_V") > 1e-9))
            .then(c("_C").abs() / (c("_sig") * c("_V").sqrt()))
            .alias("_stat")
        )
    )
    best = (
        scored.filter(c("_stat") >= threshold)
        .sort(run, "_stat", "_k", descending=[False, True, False])
        .group_by(run, maintain_order=True)
        .first()
    )
    delta = -c("_C") / c("_V")  # the jump on the detection scale, net of the trend
    if use_trend:
        det_b = n * c("_spp") - c("_sp") * c("_sp")
        # trend line of the model with the jump: (a, b) minus delta times the step's own fit
        c1 = (n * c("_pk") - c("_sp") * m) / det_b
        c0 = (m - c1 * c("_sp")) / n
        level = (c("_a") - delta * c0) + (c("_b") - delta * c1) * (k - 1.0)
    else:
        level = c("_a") - delta * m / n  # the mean before the change
    jump = (level.exp() * (delta.exp() - 1.0)) if use_log else delta
    magnitude = (
        (delta.exp() - 1.0)
        if use_log
        else pl.when(level != 0).then(delta / level.abs()).otherwise(pl.when(delta != 0).then(float("inf")).otherwise(0.0))
    )
    best = (
        best.with_columns(
            (c("_cv") / k).alias("before"),
            ((c("_tv") - c("_cv")) / m).alias("after"),
            jump.alias("jump"),
            magnitude.alias("magnitude"),
        )
        .filter(c("magnitude").abs() >= min_magnitude)
        .select(
            c("run_id"),
            c("agent"),
            pl.lit(metric).alias("metric"),
            c("_next_step").cast(pl.Int64).alias("step"),
            c("_k").cast(pl.Int64).alias("position"),
            c("_n").cast(pl.Int64).alias("n_points"),
            c("before"),
            c("after"),
            c("jump"),
            c("magnitude"),
            c("_stat").alias("score"),
        )
        .sort("run_id")
    )
    return best.collect().cast(RUN_CHANGEPOINT_SCHEMA)  # type: ignore[arg-type]


def _median5(lf: pl.LazyFrame, col: str, out: str) -> pl.LazyFrame:
    """Centred running median of 5 values of ``col`` within each run of a frame sorted by run.

    Global shifts masked at run boundaries (at a run's ends the window is
    mirrored, so a runaway last step is still compared with two earlier values)
    and a 7-exchange sorting network: cheaper than ``rolling_median().over()``.
    """
    rid = pl.col("run_id")
    names = [f"_m{i}" for i in range(5)]
    shifted = []
    for i, k in enumerate((-2, -1, 0, 1, 2)):
        shifted.append(
            pl.when(rid.shift(-k) == rid)
            .then(pl.col(col).shift(-k))
            .when(rid.shift(k) == rid)
            .then(pl.col(col).shift(k))
            .otherwise(pl.col(col))
            .alias(names[i])
        )
    lf = lf.with_columns(shifted)
    for i, j in ((0, 1), (3, 4), (0, 3), (1, 4), (1, 2), (2, 3), (1, 2)):
        a, b = pl.col(names[i]), pl.col(names[j])
        lf = lf.with_columns(pl.min_horizontal(a, b).alias(names[i]), pl.max_horizontal(a, b).alias(names[j]))
    return lf.with_columns(pl.col(names[2]).alias(out)).drop(names)


# --------------------------------------------------------------------------- helpers


def _empty_changepoints() -> pl.DataFrame:
    return pl.DataFrame(schema=CHANGEPOINT_SCHEMA)


def _as_frame(obj: Any, name: str) -> pl.DataFrame | pl.LazyFrame:
    if isinstance(obj, pl.DataFrame | pl.LazyFrame):
        return obj
    raise InvalidParameterError(f"{name} must be a polars DataFrame or LazyFrame, got {type(obj).__name__}")


def _resolve_metrics(metrics: Sequence[str] | None, columns: Sequence[str] | None) -> list[str]:
    if metrics is None:
        return list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    names = list(dict.fromkeys(metrics))
    if not names:
        raise InvalidParameterError("metrics must name at least one metric, got an empty list")
    known = set(BUCKET_METRICS) | {TOOL_MIX}
    allowed = known | set(columns or ())
    bad = [m for m in names if m not in allowed]
    if bad:
        raise InvalidParameterError(
            f"metrics: unknown metric(s) {bad}; expected names from {sorted(known)}"
            + (" or numeric columns of the bucket table" if columns is not None else "")
        )
    return names


def _check_int(name: str, value: Any, *, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise InvalidParameterError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, *, lo: float, hi: float | None = None, strict: bool = False) -> float:
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if strict else value >= lo) and (hi is None or value <= hi)
    if not ok:
        rng = f"{'>' if strict else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise InvalidParameterError(f"{name} must be a finite number {rng}, got {value!r}")
    return float(value)


def _check_weight(weight: Any) -> bool:
    if weight is None:
        return False
    if weight == "volume":
        return True
    raise InvalidParameterError(f"weight must be 'volume' or None, got {weight!r}")


__all__ = [
    "BUCKET_METRICS",
    "CHANGEPOINT_SCHEMA",
    "DEFAULT_METRICS",
    "RUN_CHANGEPOINT_SCHEMA",
    "RUN_METRICS",
    "TOOL_MIX",
    "auto_penalty",
    "bucket_metrics_from_runs",
    "changepoints_from_buckets",
    "changepoints_from_runs",
    "detect_changepoints",
    "detect_run_changepoints",
    "sparse_penalty",
]
