"""Per-run features shared by scoring, drift, cost and change-points.

One group-by over the events gives one row per run; every detector that needs
run-level numbers starts from :func:`run_features` instead of recomputing them.

Examples
--------
>>> import polars as pl, driftwatch as dw
>>> ev = pl.DataFrame({"run_id": ["r1"] * 3, "step": [1, 2, 3],
...                    "action": ["llm", "search", "llm"],
...                    "status": ["ok", "error", "ok"]})
>>> dw.run_features(ev).select("run_id", "n_steps", "n_tool", "n_errors").to_dicts()
[{'run_id': 'r1', 'n_steps': 3, 'n_tool': 1, 'n_errors': 1}]
"""

from __future__ import annotations

import polars as pl

from driftwatch._frames import as_lazy
from driftwatch.schema import LLM_ACTION

#: Numeric per-run features used by statistical models (drift, anomaly score).
NUMERIC_RUN_FEATURES: tuple[str, ...] = (
    "n_steps",
    "n_tool",
    "llm_ratio",
    "n_distinct_actions",
    "error_rate",
    "tokens",
    "cost_usd",
    "runtime_s",
    "latency_ms_p90",
)


def with_retry_flag(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Sort by ``(run_id, step)`` and add ``_retry``: a tool step that repeats the
    action of the run's previous tool step, which failed (``status == "error"``).

    LLM steps between the two tool calls are skipped, so ``search(err) > llm >
    search`` counts as one retry.
    """
    is_tool = pl.col("action") != LLM_ACTION
    tool_key = pl.when(is_tool).then(pl.col("action"))
    tool_err = pl.when(is_tool).then(pl.col("status") == "error")
    tool_run = pl.when(is_tool).then(pl.col("run_id"))
    return (
        lf.sort("run_id", "step")
        .with_columns(
            tool_key.shift(1).forward_fill().alias("_prev_action"),
            tool_err.shift(1).forward_fill().alias("_prev_err"),
            tool_run.shift(1).forward_fill().alias("_prev_run"),
        )
        .with_columns(
            (
                is_tool
                & (pl.col("_prev_run") == pl.col("run_id"))
                & (pl.col("_prev_action") == pl.col("action"))
                & pl.col("_prev_err")
            )
            .fill_null(False)
            .alias("_retry")
        )
        .drop("_prev_action", "_prev_err", "_prev_run")
    )


def run_feature_exprs() -> list[pl.Expr]:
    """The aggregations of :func:`run_features`, for reuse inside other group-bys.

    They expect the ``_retry`` column added by :func:`with_retry_flag`.
    """
    is_llm = pl.col("action") == LLM_ACTION
    is_err = pl.col("status") == "error"
    return [
        pl.col("agent").first().alias("agent"),
        pl.col("version").drop_nulls().first().alias("version"),
        pl.col("parent_run_id").drop_nulls().first().alias("parent_run_id"),
        pl.col("ts").min().alias("first_ts"),
        pl.col("ts").max().alias("last_ts"),
        pl.len().cast(pl.Int64).alias("n_steps"),
        is_llm.sum().cast(pl.Int64).alias("n_llm"),
        (~is_llm).sum().cast(pl.Int64).alias("n_tool"),
        pl.col("action").filter(~is_llm).n_unique().cast(pl.Int64).alias("n_distinct_actions"),
        is_err.fill_null(False).sum().cast(pl.Int64).alias("n_errors"),
        pl.col("input_tokens").sum().alias("input_tokens"),
        pl.col("output_tokens").sum().alias("output_tokens"),
        pl.col("cost_usd").sum().alias("cost_usd"),
        pl.col("latency_ms").sum().alias("latency_ms"),
        pl.col("latency_ms").quantile(0.9, "nearest").alias("latency_ms_p90"),
        pl.col("cost_usd").filter(is_err).sum().alias("error_cost_usd"),
        pl.col("_retry").sum().cast(pl.Int64).alias("n_retries"),
        pl.col("cost_usd").filter(pl.col("_retry")).sum().alias("retry_cost_usd"),
        pl.col("confidence").min().alias("min_confidence"),
        pl.col("feedback").mean().alias("feedback"),
        pl.col("outcome").drop_nulls().last().alias("outcome"),
    ]


def run_features(events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """One row per run with the features every detector shares.

    Parameters
    ----------
    events : polars.DataFrame or polars.LazyFrame
        Canonical events.

    Returns
    -------
    polars.DataFrame
        ``run_id, agent, version, parent_run_id, first_ts, last_ts, n_steps,
        n_llm, n_tool, n_distinct_actions, n_errors, input_tokens,
        output_tokens, cost_usd, latency_ms, latency_ms_p90, error_cost_usd,
        n_retries, retry_cost_usd, min_confidence,
        feedback, outcome, tokens, error_rate, llm_ratio, runtime_s``, sorted by
        ``run_id``. Sums over missing columns are 0; means are null.
    """
    lf = with_retry_flag(as_lazy(events))
    return (
        lf.group_by("run_id")
        .agg(run_feature_exprs())
        .with_columns(
            (pl.col("input_tokens") + pl.col("output_tokens")).alias("tokens"),
            (pl.col("n_errors") / pl.col("n_steps")).alias("error_rate"),
            (pl.col("n_llm") / pl.col("n_steps")).alias("llm_ratio"),
            ((pl.col("last_ts") - pl.col("first_ts")).dt.total_microseconds() / 1e6).alias(
                "runtime_s"
            ),
        )
        .sort("run_id")
        .collect()
    )


def run_action_counts(events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """How often each run called each action: ``run_id, agent, action, n`` (LLM steps included)."""
    return (
        as_lazy(events)
        .group_by("run_id", "action")
        .agg(pl.col("agent").first(), pl.len().cast(pl.Int64).alias("n"))
        .select("run_id", "agent", "action", "n")
        .sort("run_id", "action")
        .collect()
    )


def run_bigram_counts(events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Consecutive tool-action pairs per run (LLM steps skipped): ``run_id, agent, bigram, n``.

    ``bigram`` is ``"a > b"``: tool ``b`` was the next tool called after ``a``.
    """
    tools = as_lazy(events).filter(pl.col("action") != LLM_ACTION).sort("run_id", "step")
    return (
        tools.with_columns(
            pl.col("action").shift(1).alias("_prev"),
            (pl.col("run_id").shift(1) == pl.col("run_id")).alias("_same"),
        )
        .filter(pl.col("_same"))
        .group_by("run_id", pl.concat_str(pl.col("_prev"), pl.lit(" > "), pl.col("action")).alias("bigram"))
        .agg(pl.col("agent").first(), pl.len().cast(pl.Int64).alias("n"))
        .select("run_id", "agent", "bigram", "n")
        .sort("run_id", "bigram")
        .collect()
    )


__all__ = [
    "NUMERIC_RUN_FEATURES",
    "run_action_counts",
    "run_bigram_counts",
    "run_feature_exprs",
    "run_features",
    "with_retry_flag",
]
