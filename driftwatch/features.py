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

from collections.abc import Sequence

import numpy as np
import polars as pl

from driftwatch._frames import as_lazy, known_sum, normalize_by
from driftwatch.errors import SchemaError
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


#: Columns :func:`run_features` reads (everything but the raw text).
FEATURE_COLUMNS: tuple[str, ...] = (
    "run_id", "step", "ts", "action", "agent", "version", "parent_run_id", "status",
    "input_tokens", "output_tokens", "cost_usd", "latency_ms", "confidence", "feedback", "outcome",
)


def sorted_steps(events: pl.DataFrame | pl.LazyFrame, columns: tuple[str, ...] = FEATURE_COLUMNS) -> pl.DataFrame:
    """The ``columns`` of ``events``, each run's steps together and in step order.

    Only the named columns are materialised, and only the runs that need it are
    sorted: logs are usually written run by run, so most runs already sit in
    one contiguous block in step order (even when the run ids themselves are
    not in order), and only runs split across files (a run crossing midnight)
    or logged out of order are moved, to the end, sorted by ``(run_id, step)``.
    """
    frame = as_lazy(events).select(columns).collect()
    if frame.height == 0:
        return _with_run_key(frame)
    # blocks of consecutive rows with one run id; a block is misplaced when its run has
    # other blocks (its head's id repeats) or its steps go backwards (nulls are not checked)
    starts = (pl.col("run_id") != pl.col("run_id").shift(1)).fill_null(True)
    marks = frame.select(
        starts.alias("start"), (starts | (pl.col("step") > pl.col("step").shift(1))).fill_null(True).alias("ok")
    )
    start = marks["start"].to_numpy()
    heads = frame["run_id"].filter(marks["start"])  # (a gather from the events' many chunks took 6x longer)
    bad_block = heads.is_duplicated().to_numpy()
    back = np.flatnonzero(~marks["ok"].to_numpy())
    block = np.cumsum(start) - 1
    bad_block[block[back]] = True
    if not bad_block.any():
        return _with_run_key(frame)
    if heads.filter(pl.Series(bad_block)).n_unique() * 4 > frame.height:  # mostly unordered: one sort is cheaper
        return _with_run_key(frame.sort("run_id", "step"))
    bad = pl.Series(bad_block[block])
    return _with_run_key(pl.concat([frame.filter(~bad), frame.filter(bad).sort("run_id", "step")]))


def _with_run_key(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``_run``: the run's block number, an ascending integer key flagged as sorted.

    Group-bys on it slice contiguous blocks instead of hashing run-id strings.
    """
    starts = (pl.col("run_id") != pl.col("run_id").shift(1)).fill_null(True)
    return frame.with_columns(starts.cum_sum().cast(pl.Int64).set_sorted().alias("_run"))


def _retry_table(steps: pl.DataFrame) -> pl.LazyFrame:
    """Per run: tool steps repeating the run's previous tool action, which failed (LLM steps skipped)."""
    tools = steps.lazy().filter(pl.col("action") != LLM_ACTION).select("_run", "run_id", "action", "status", "cost_usd")
    retry = (
        (pl.col("run_id") == pl.col("run_id").shift(1))
        & (pl.col("action") == pl.col("action").shift(1))
        & (pl.col("status").shift(1) == "error")
    ).fill_null(False)
    return (
        tools.with_columns(retry.alias("_retry"))
        .group_by("_run")
        .agg(
            pl.col("_retry").sum().cast(pl.Int64).alias("n_retries"),
            pl.col("cost_usd").filter(pl.col("_retry")).sum().alias("retry_cost_usd"),
        )
    )


def run_feature_exprs() -> list[pl.Expr]:
    """The order-free aggregations of :func:`run_features`, for reuse inside other group-bys.

    ``outcome`` takes the last non-null value, so the frame must be sorted by
    ``(run_id, step)`` (see :func:`sorted_steps`).
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
        pl.col("action").hash().filter(~is_llm).n_unique().cast(pl.Int64).alias("n_distinct_actions"),
        is_err.fill_null(False).sum().cast(pl.Int64).alias("n_errors"),
        (is_err.fill_null(False) & ~is_llm).sum().cast(pl.Int64).alias("n_tool_errors"),
        known_sum("input_tokens"),
        known_sum("output_tokens"),
        known_sum("cost_usd"),
        known_sum("latency_ms"),
        pl.col("latency_ms").quantile(0.9, "nearest").alias("latency_ms_p90"),
        pl.col("latency_ms").count().cast(pl.Int64).alias("n_latency"),
        pl.when(pl.col("cost_usd").count() > 0).then(pl.col("cost_usd").filter(is_err).sum()).alias("error_cost_usd"),
        pl.col("confidence").min().alias("min_confidence"),
        pl.col("feedback").mean().alias("feedback"),
        pl.col("outcome").drop_nulls().last().alias("outcome"),
    ]


def run_features(events: pl.DataFrame | pl.LazyFrame, *, by: str | Sequence[str] | None = None) -> pl.DataFrame:
    """One row per run with the features every detector shares.

    Parameters
    ----------
    events : polars.DataFrame or polars.LazyFrame
        Canonical events, in any order.
    by : str or sequence of str, optional
        Columns that name a series (``"tenant"``): those that are not features
        are added, each run's first non-null value (steps in order). Every one
        must be a column of ``events``.

    Returns
    -------
    polars.DataFrame
        ``run_id, agent, version, parent_run_id, first_ts, last_ts, n_steps,
        n_llm, n_tool, n_distinct_actions, n_errors, n_tool_errors, input_tokens,
        output_tokens, cost_usd, latency_ms, latency_ms_p90, n_latency, error_cost_usd,
        min_confidence, feedback, outcome, n_retries, retry_cost_usd, tokens,
        error_rate, llm_ratio, runtime_s``, sorted by ``run_id``. Sums (tokens,
        cost, latency) are null for a run none of whose steps recorded the
        column (unknown, not 0; ``tokens`` is known when either token count
        is, and so are ``error_cost_usd`` and ``retry_cost_usd`` when the
        cost is); means are null likewise. ``n_errors`` counts the failed
        steps (``status == "error"``), ``n_tool_errors`` those that are not LLM
        calls (``n_errors - n_tool_errors`` LLM calls failed: rate limits,
        unparseable output). ``n_retries`` counts tool steps
        that repeat the run's previous tool action, which failed (LLM steps in
        between are skipped); ``retry_cost_usd`` is their cost.

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> ev = pl.DataFrame({"run_id": ["a", "a", "b"], "step": [1, 2, 1], "action": ["llm", "search", "llm"],
    ...                    "tenant": [None, "acme", "zeta"]})
    >>> dw.run_features(ev, by="tenant").select("run_id", "n_steps", "tenant").rows()
    [('a', 2, 'acme'), ('b', 1, 'zeta')]
    """
    steps = sorted_steps(events)
    feats = _features(steps)
    by_cols = normalize_by(by)
    extra = [c for c in by_cols if c not in feats.columns]
    if not extra:
        return feats
    have = events.collect_schema().names() if isinstance(events, pl.LazyFrame) else events.columns
    unknown = [c for c in extra if c not in have]
    if unknown:
        raise SchemaError(f"by: column(s) {unknown} not in events; found {have}")
    firsts = (
        as_lazy(events).filter(pl.col("run_id").is_not_null())
        .group_by("run_id").agg([pl.col(c).sort_by("step").drop_nulls().first() for c in extra])
        .collect()
    )
    return feats.join(firsts.with_columns(pl.col("run_id").cast(feats.schema["run_id"])), on="run_id", how="left")


def _features(steps: pl.DataFrame) -> pl.DataFrame:
    """:func:`run_features` of :func:`sorted_steps` output."""
    base = steps.lazy().group_by("_run").agg(pl.col("run_id").first(), *run_feature_exprs())
    # float sums depend (in the last bits) on how the group-by splits the frame; rounding to
    # 12 significant digits makes per-run features identical however the runs were chunked
    sums = ["cost_usd", "latency_ms", "error_cost_usd", "retry_cost_usd", "feedback"]
    return (
        base.join(_retry_table(steps), on="_run", how="left")
        .with_columns(
            pl.col("n_retries").fill_null(0),
            pl.when(pl.col("cost_usd").is_not_null()).then(pl.col("retry_cost_usd").fill_null(0.0)),
        )
        .with_columns(pl.col(sums).round_sig_figs(12))
        .with_columns(
            pl.when(pl.col("input_tokens").is_not_null() | pl.col("output_tokens").is_not_null())
            .then(pl.sum_horizontal("input_tokens", "output_tokens"))
            .alias("tokens"),
            (pl.col("n_errors") / pl.col("n_steps")).alias("error_rate"),
            (pl.col("n_llm") / pl.col("n_steps")).alias("llm_ratio"),
            # (the division's last bit depends on how Polars splits the column: rounded as the sums)
            ((pl.col("last_ts") - pl.col("first_ts")).dt.total_microseconds() / 1e6).round_sig_figs(12)
            .alias("runtime_s"),
        )
        .drop("_run")
        .sort("run_id")
        .collect()
    )


def _action_code() -> pl.Expr:
    """A small integer code per action text (categorical codes + 1: equal texts, equal codes; null is 0)."""
    return (pl.col("action").cast(pl.Categorical).to_physical().cast(pl.UInt64) + 1).fill_null(0)


def _count_keys(frame: pl.LazyFrame, parts: list[pl.Expr]) -> pl.DataFrame:
    """``_i`` (the first row) and ``n`` (the rows) of each distinct combination of ``parts``.

    Integer parts are packed into one 64-bit key when they fit (a single-key group-by is
    several times faster than one on several columns); otherwise they are grouped as is.
    """
    names = [f"_k{i}" for i in range(len(parts))]
    keyed = frame.with_columns([e.cast(pl.UInt64).alias(n) for e, n in zip(parts, names, strict=True)])
    top = keyed.select([pl.col(n).max() for n in names]).collect().row(0)
    bits = [max(int(m or 0), 1).bit_length() for m in top]
    if sum(bits) <= 64:
        packed = pl.lit(0, pl.UInt64)
        for n, b in zip(names, bits, strict=True):
            packed = (packed * pl.lit(2**b, pl.UInt64)) + pl.col(n)
        by: list[pl.Expr] = [packed.alias("_key")]
    else:  # pragma: no cover - needs over 2**64 combinations of codes
        by = [pl.col(n) for n in names]
    return keyed.group_by(by).agg(pl.col("_i").first(), pl.len().cast(pl.Int64).alias("n")).select("_i", "n").collect()


def _action_counts(steps: pl.DataFrame) -> pl.DataFrame:
    """:func:`run_action_counts` of :func:`sorted_steps` output (grouped on integer codes)."""
    counts = _count_keys(steps.lazy().with_row_index("_i"), [pl.col("_run"), _action_code()])
    idx = counts["_i"]
    return (
        pl.DataFrame([steps[c].gather(idx) for c in ("run_id", "agent", "action")])
        .with_columns(counts["n"])
        .sort("run_id", "action")
    )


def _tool_pairs(steps: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Consecutive tool steps of a run (LLM steps skipped) of :func:`sorted_steps` output:
    per second step its row ``_i``, ``_run``, action code ``_a``, previous action ``_prev``
    and its code ``_pa``; and the count of each ``(run, previous action, action)``
    (:func:`_count_keys`: ``_i`` of its first pair, ``n``)."""
    tools = (
        steps.lazy()
        .with_row_index("_i")
        .filter(pl.col("action") != LLM_ACTION)
        .select(
            "_i",
            "_run",
            _action_code().alias("_a"),
            pl.col("action").shift(1).alias("_prev"),
            (pl.col("_run").shift(1) == pl.col("_run")).alias("_same"),
        )
        .with_columns(pl.col("_a").shift(1).alias("_pa"))
        .filter(pl.col("_same"))
        .collect()
    )
    return tools, _count_keys(tools.lazy(), [pl.col("_run"), pl.col("_pa"), pl.col("_a")])


def _bigram_counts(steps: pl.DataFrame) -> pl.DataFrame:
    """:func:`run_bigram_counts` of :func:`sorted_steps` output.

    Pairs are counted on integer codes of ``(run, previous action, action)`` and the
    ``"a > b"`` text is built once per counted pair, not once per step.
    """
    tools, counts = _tool_pairs(steps)
    # each pair's first row is its second step; ``_prev`` is the tool action one row up
    first = counts.join(tools.select("_i", "_prev"), on="_i", how="left")
    return (
        pl.DataFrame([steps[c].gather(first["_i"]) for c in ("run_id", "agent", "action")])
        .with_columns(first["_prev"], first["n"])
        .select(
            "run_id",
            "agent",
            pl.concat_str(pl.col("_prev"), pl.lit(" > "), pl.col("action")).alias("bigram"),
            "n",
        )
        .sort("run_id", "bigram")
    )


def _run_order(steps: pl.DataFrame) -> tuple[np.ndarray, pl.Series]:
    """Per run key ``_run`` (1..R, index ``_run``) of :func:`sorted_steps` output: the run's rank
    by ``run_id`` (nulls last; runs moved to the end break the block order), and the run ids
    in rank order."""
    first = steps.select(pl.col("run_id").filter((pl.col("_run") != pl.col("_run").shift(1)).fill_null(True)))
    ids = first.to_series()
    rank = np.zeros(ids.len() + 1, dtype=np.int64)
    if ids.is_sorted(nulls_last=True):
        rank[1:] = np.arange(ids.len())
        return rank, ids
    order = ids.arg_sort(nulls_last=True)
    rank[1 + order.to_numpy()] = np.arange(ids.len())
    return rank, ids.gather(order)


def _lexical_codes(values: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Each value's rank among the distinct values in lexical order (null: the number of
    distinct values, after them all), and the distinct values in that order."""
    labels = values.drop_nulls().unique().sort()
    code = values.cast(pl.Enum(labels)).to_physical().fill_null(labels.len()).to_numpy()
    return code.astype(np.int64, copy=False), labels


def _pair_counts(run: np.ndarray, label: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct ``(run, label)`` pairs of two integer arrays (labels in ``[0, width)``) and
    how often each occurs, sorted by run, then label: one ``bincount`` when the grid of runs x
    labels is small next to the rows (the usual case: a few dozen actions), else a sort."""
    n_runs = int(run.max(initial=-1)) + 1
    key = run * width + label
    if n_runs * width <= max(4 * key.size, 1 << 20):
        counts = np.bincount(key, minlength=n_runs * width)
        at = np.flatnonzero(counts)
        n = counts[at]
    else:
        at, n = np.unique(key, return_counts=True)
    return at // width, at % width, n


def _count_frame(ids: pl.Series, run: np.ndarray, labels: pl.Series, label: np.ndarray, n: np.ndarray,
                 name: str) -> pl.DataFrame:
    return pl.DataFrame({
        "run_id": ids.gather(run),
        name: labels.cast(pl.Categorical).gather(label),
        "n": pl.Series(n, dtype=pl.UInt32),
    })


def _count_tables_compact(steps: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`_action_counts` and :func:`_bigram_counts` as the audit holds them (``run_id``,
    ``action``/``bigram`` Categorical, ``n`` UInt32, no ``agent``; sorted by ``run_id``, then
    the label, nulls last).

    Runs and actions become their lexical ranks (once for both tables), so every distinct
    pair and its count comes out of one ``bincount``, already in order
    (:func:`_pair_counts`); ``run_id`` is gathered once per counted row and each label text
    is made once. Bigrams pair consecutive tool steps of a run (LLM steps and null actions
    skipped) on action codes; their ``"a > b"`` texts are made once per distinct pair and
    ranked lexically.
    """
    rank, ids = _run_order(steps)
    code, labels = _lexical_codes(steps["action"])
    width = labels.len()
    run_key = steps["_run"].to_numpy()
    run, label, n = _pair_counts(rank[run_key], code, width + 1)  # code width: the null action, last
    actions = _count_frame(ids, run, labels.extend_constant(None, 1), label, n, "action")

    llm = labels.index_of(LLM_ACTION)
    tool = code != width  # not null
    if llm is not None:
        tool &= code != llm
    at = np.flatnonzero(tool)
    run_of = run_key[at]
    same = run_of[1:] == run_of[:-1]
    pair = code[at[:-1]][same] * width + code[at[1:]][same]
    run = rank[run_of[1:][same]]
    if width * width <= max(4 * pair.size, 1 << 20):
        distinct = np.flatnonzero(np.bincount(pair, minlength=width * width))
        lookup: np.ndarray | None = np.zeros(width * width, dtype=np.int64)
    else:
        distinct, lookup = np.unique(pair), None
    texts = pl.select(
        pl.concat_str(
            pl.lit(labels.gather(distinct // width)), pl.lit(" > "), pl.lit(labels.gather(distinct % width))
        )
    ).to_series()
    order = texts.arg_sort().to_numpy()
    pair_rank = np.empty(order.size, dtype=np.int64)
    pair_rank[order] = np.arange(order.size)
    if lookup is not None:
        lookup[distinct] = pair_rank
        label = lookup[pair]
    else:
        label = pair_rank[np.searchsorted(distinct, pair)]
    run, label, n = _pair_counts(run, label, max(texts.len(), 1))
    return actions, _count_frame(ids, run, texts.gather(order), label, n, "bigram")


def run_action_counts(events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """How often each run called each action: ``run_id, agent, action, n`` (LLM steps included).

    ``agent`` is the agent of the run's first step with that action; rows are sorted by
    ``run_id, action``.
    """
    return _action_counts(sorted_steps(events, ("run_id", "step", "action", "agent")))


def run_bigram_counts(events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Consecutive tool-action pairs per run (LLM steps skipped): ``run_id, agent, bigram, n``.

    ``bigram`` is ``"a > b"``: tool ``b`` was the next tool called after ``a``.
    """
    return _bigram_counts(sorted_steps(events, ("run_id", "step", "action", "agent")))


def run_tables(
    events: pl.DataFrame | pl.LazyFrame, *, compact: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """:func:`run_features`, :func:`run_action_counts` and :func:`run_bigram_counts` at once.

    The events are put in run and step order once (:func:`sorted_steps`) and every table
    is grouped on the integer run key, which is cheaper than three separate calls.
    With ``compact=True`` the count tables come as the audit holds them
    (:func:`driftwatch.audit.compact_counts`: ``run_id``, ``action``/``bigram`` Categorical,
    ``n`` UInt32, no ``agent``; sorted by ``run_id`` and label, nulls last), counted on
    lexical ranks of runs and actions, so they come out in order without a sort (labels are
    made once per distinct value, ``run_id`` is gathered once per counted row).

    Examples
    --------
    >>> import driftwatch as dw
    >>> from driftwatch.features import run_tables
    >>> ev = dw.synth.generate(days=1, runs_per_day=20, seed=1).events
    >>> feats, actions, bigrams = run_tables(ev)
    >>> feats.equals(dw.run_features(ev)) and actions.equals(dw.run_action_counts(ev))
    True
    """
    steps = sorted_steps(events)
    if compact:
        return _features(steps), *_count_tables_compact(steps)
    return _features(steps), _action_counts(steps), _bigram_counts(steps)


__all__ = [
    "FEATURE_COLUMNS",
    "NUMERIC_RUN_FEATURES",
    "run_action_counts",
    "run_bigram_counts",
    "run_tables",
    "run_feature_exprs",
    "run_features",
    "sorted_steps",
]
