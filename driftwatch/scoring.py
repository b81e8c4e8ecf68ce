"""One explainable escalation score per run.

:func:`score_runs` gives every run a ``score`` in [0, 1], a ``level`` (``ok``,
``review``, ``escalate``) and ``reasons``: sentences a person can act on, most
important first ("loop: search > read repeated 9x, 14 wasted steps, $0.21",
"delete_invoice without approval", "cost $1.30 > ceiling $0.50").

How the score works
-------------------
Each signal gives a component score ``s`` in [0, 1] and a reason:

============================  ===================================================================
component                     ``s``
============================  ===================================================================
``unapproved`` (delete tier)  1.0: an unapproved destructive call always escalates
``unapproved_write``          0.6 (only when the policy requires approval for writes)
``max_*``, ``retries``        ``0.45 + 0.25 * (value / limit - 1)``, clipped to [0.45, 0.9]
``unknown_tool``              0.5, +0.1 per further call, at most 0.7
``low_confidence``            ``0.45 + 0.5 * (1 - min_confidence / threshold)``
``delegation``                0.5, +0.1 per level beyond the limit, at most 0.8 (cycles 0.8)
``loop``                      the loop summary's ``loop_severity``; ``same_action`` loops (paging,
                              polling) are capped below ``escalate``, so they never escalate alone
``errors`` (error storm)      ``0.6 * min(1, rate / 0.6) * min(1, (failed - 1) / 5)``, >= 3 failed
                              calls; tool calls and LLM calls apart, the worse of the two
``cost`` / ``length``         ``0.75 * clip((z - 4) / 8, 0, 1)`` of the robust z-score (median/MAD
                              of log cost / log steps, per agent) so a long agent is not flagged
``anomaly``                   IsolationForest over per-agent robust z-scores of the run features,
                              ``0.5 * clip((a - 0.62) / 0.18, 0, 1)`` of its anomaly score ``a``
``drift``                     0.1 when the run's agent is in a drifted window (context: never a
                              level alone, but it lifts a run just below a threshold)
============================  ===================================================================

and ``score = 1 - prod(1 - s)`` (a noisy-OR: one strong signal is enough, two
review-level signals escalate). ``level`` is ``escalate`` at ``score >=
policy.escalate``, ``review`` at ``score >= policy.review``. With a fitted
:class:`EscalationModel` (:func:`fit_escalation`), ``score`` is the model's
calibrated probability over the same components instead, the rule score stays in
``score_rules``, and unapproved destructive calls still escalate.

Examples
--------
>>> import polars as pl, driftwatch as dw
>>> ev = pl.DataFrame({"run_id": ["a", "a", "b", "b"], "step": [1, 2, 1, 2],
...                    "action": ["llm", "delete_invoice", "llm", "get_invoice"],
...                    "approved": [None, False, None, None]})
>>> out = dw.score_runs(ev, loops=pl.DataFrame())
>>> out.select("run_id", "level", "reasons").rows()
[('a', 'escalate', ['delete_invoice without approval (approval refused)']), ('b', 'ok', [])]
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from driftwatch._frames import as_lazy, check_seed, series_expr, series_keys
from driftwatch.errors import InputError, InvalidParameterError
from driftwatch.features import run_features
from driftwatch.policy import (
    Policy,
    _as_policy,
    _money,
    below,
    check_delegation,
    check_policy,
    exceeds,
    fmt_int,
    fmt_money,
    fmt_num,
    fmt_seconds_vs_limit,
    fmt_vs_limit,
    limit_text,
    rejected_steps,
)
from driftwatch.schema import HANDOFF_PREFIX, LLM_ACTION

LEVELS: tuple[str, ...] = ("ok", "review", "escalate")

#: Component scores, in the order they are computed (each has ``score_<name>`` in the output).
COMPONENTS: tuple[str, ...] = (
    "unapproved",
    "unapproved_write",
    "max_steps",
    "max_runtime",
    "max_tokens",
    "max_cost",
    "retries",
    "unknown_tool",
    "rejected_steps",
    "low_confidence",
    "delegation",
    "loop",
    "errors",
    "cost",
    "length",
    "anomaly",
    "drift",
)

#: Extra numeric columns the supervised model sees besides the component scores.
MODEL_EXTRA: tuple[str, ...] = ("cost_z", "steps_z", "anomaly", "error_rate_tool", "n_retries")

#: Per-run features the anomaly model standardises per agent: (name, MAD floor, orientation).
#: Orientation +1: high values are suspicious, -1: low values are, 0: both. One-sided z-scores
#: are floored at -3; a run that stands out with one of them below 0 is scored again with them
#: floored at 0 (the agent's median) and keeps the lower score, so a run that is merely cheap,
#: short or confident is not "unusual" (:func:`_anomaly_scores`).
_ANOMALY_FEATURES: tuple[tuple[str, float, int], ...] = (
    ("log_steps", 0.1, 1),
    ("log_cost", 0.1, 1),
    ("log_tokens", 0.1, 1),
    ("log_runtime", 0.1, 1),
    ("log_latency_p90", 0.1, 1),
    ("error_rate_tool", 0.05, 1),
    ("llm_ratio", 0.02, 0),
    ("n_distinct_actions", 1.0, 0),
    ("n_retries", 1.0, 1),
    ("min_confidence_filled", 0.05, -1),
)

#: How the anomaly features are named in reasons.
_FEATURE_LABELS: dict[str, str] = {
    "log_steps": "steps",
    "log_cost": "cost",
    "log_tokens": "tokens",
    "log_runtime": "runtime",
    "log_latency_p90": "p90 latency",
    "error_rate_tool": "tool error rate",
    "llm_ratio": "LLM share of steps",
    "n_distinct_actions": "distinct tools",
    "n_retries": "retries",
    "min_confidence_filled": "confidence",
}

#: Trees of the anomaly forest, and how many of them screen every run of a large fleet.
ANOMALY_TREES = 100
SCREEN_TREES = 16
#: Screening score from which a run is re-scored by the full forest.
SCREEN_AT = 0.5
#: Fleets up to this many runs are fitted on all runs and scored by the full forest directly.
SCREEN_MIN_RUNS = 50_000
#: Runs the forests are fitted on in fleets above :data:`SCREEN_MIN_RUNS` (a seeded random
#: sample; about as many runs as 100 trees of 256 runs can use).
ANOMALY_FIT_RUNS = 25_600

#: Threads walking the isolation trees over a large fleet's runs, in blocks of at least _WALK_BLOCK runs.
_WALK_THREADS = min(4, os.cpu_count() or 1)
_WALK_BLOCK = 50_000

#: Agents with fewer runs are compared with the whole fleet instead of themselves.
MIN_AGENT_RUNS = 20

_LOOP_SUMMARY_COLS = (
    "n_loops",
    "worst_kind",
    "worst_pattern",
    "worst_repeats",
    "wasted_steps",
    "wasted_tokens",
    "wasted_cost_usd",
    "loop_severity",
    "worst_error_share",
)


# --------------------------------------------------------------------------- loops


def _summarize_loops(loops: pl.DataFrame | pl.LazyFrame | None) -> pl.DataFrame | None:
    """``loops`` as a loop summary (one row per run), whatever the caller passed.

    Accepts a :func:`driftwatch.loop_summary` result (has ``loop_severity``) or a
    :func:`driftwatch.detect_loops` result (summarised with ``loop_summary``).
    """
    if loops is None:
        return None
    df = loops.collect() if isinstance(loops, pl.LazyFrame) else loops
    if not isinstance(df, pl.DataFrame):
        raise InvalidParameterError(
            f"loops must be a detect_loops or loop_summary DataFrame, got {type(loops).__name__}"
        )
    if df.width == 0 or df.height == 0:
        return None
    if "loop_severity" in df.columns:
        missing = [c for c in ("run_id", "worst_kind", "worst_pattern", "worst_repeats", "loop_severity")
                   if c not in df.columns]
        if missing:
            raise InvalidParameterError(f"loops: a loop summary needs columns {missing}; found {df.columns}")
        return df
    if "pattern" in df.columns and "repeats" in df.columns:
        from driftwatch.loops import loop_summary

        return loop_summary(df)
    raise InvalidParameterError(
        "loops must be detect_loops output (run_id, pattern, repeats, kind, ...) or loop_summary output "
        f"(run_id, worst_kind, worst_pattern, worst_repeats, loop_severity, ...); found columns {df.columns}"
    )


def _detect_loop_summary(events: Any) -> pl.DataFrame | None:
    try:
        from driftwatch.loops import detect_loops, loop_summary
    except ImportError:  # the loop detector is optional for scoring
        return None
    return loop_summary(detect_loops(events))


# --------------------------------------------------------------------------- drift


def _drift_context(runs: pl.DataFrame, drift: pl.DataFrame | None) -> pl.DataFrame | None:
    """Per run, in the order of ``runs``: ``run_id``, the drifted features of its series at the run's
    start (``_drift_what``, categorical text) and the earliest start of those windows (``_drift_since``).

    ``None`` when no run starts in a drifted window. Which drifted windows contain a run depends
    only on the run's series columns and on where its start falls among the windows' bounds, so
    the windows are matched to the distinct (series columns, segment between consecutive bounds)
    combinations, a handful, and each run is joined to its combination once (no join of every
    run with every drifted window of its series).
    """
    if drift is None or drift.height == 0:
        return None
    need = ("series", "window_start", "window_end", "feature", "drifted")
    missing = [c for c in need if c not in drift.columns]
    if missing:
        raise InvalidParameterError(f"drift must be detect_drift output; missing columns {missing}")
    d = drift.filter(pl.col("drifted").fill_null(False))
    if d.height == 0:
        return None
    method = pl.col("method") if "method" in d.columns else pl.lit(None, dtype=pl.String)
    d = d.select(
        "series",
        pl.col("window_start").cast(pl.Datetime("us", "UTC")),
        pl.col("window_end").cast(pl.Datetime("us", "UTC")),
        pl.concat_str(pl.col("feature"), pl.lit(" ("), method.fill_null("test"), pl.lit(")")).alias("_what"),
    )
    # series name each run belongs to, for every grouping used in the drift table
    series_names = d["series"].unique().to_list()
    keysets: dict[tuple[str, ...], None] = {}
    for s in series_names:  # a handful of distinct series
        keys = series_keys(s)  # () for "all"
        keysets[keys] = None
    usable = [keys for keys in keysets if all(k in runs.columns for k in keys)]
    if not usable:
        return None
    cols = list(dict.fromkeys(k for keys in usable for k in keys))
    # a window [start, end) contains t exactly when it contains the last bound at or before t
    bounds = (
        pl.concat([d["window_start"], d["window_end"]]).drop_nulls().unique().sort().to_physical()
    )
    ts = runs["first_ts"].dt.cast_time_unit("us").to_physical()
    seg = bounds.search_sorted(ts, side="right").cast(pl.Int64)  # 0: before every bound, or no start
    keyed = runs.select("run_id", *cols).with_columns(seg.alias("_seg"))
    combos = keyed.filter(pl.col("_seg") > 0).select(*cols, "_seg").unique()
    if combos.height == 0:
        return None
    at = bounds.cast(pl.Datetime("us", "UTC")).gather(combos["_seg"] - 1)  # the segment's first instant
    combos = combos.with_columns(at.alias("_at"))
    hits = [
        combos.with_columns(series_expr(keys))
        .join(d, on="series", how="inner")
        .filter((pl.col("_at") >= pl.col("window_start")) & (pl.col("_at") < pl.col("window_end")))
        for keys in usable
    ]
    h = pl.concat(hits)
    if h.height == 0:
        return None
    per_combo = h.group_by(*cols, "_seg").agg(
        # the series that drifted (the run's agent, its version, the fleet: what the drift table grouped by)
        pl.col("series").unique().sort().str.join(", ").cast(pl.Categorical).alias("_drift_series"),
        # a handful of distinct texts, one per run: categorical (4 bytes a run, not a string)
        pl.col("_what").unique().sort().str.join(", ").cast(pl.Categorical).alias("_drift_what"),
        pl.col("window_start").min().alias("_drift_since"),
    )
    found = keyed.select(*cols, "_seg").join(
        per_combo, on=[*cols, "_seg"], how="left", nulls_equal=True, maintain_order="left"
    )
    return runs.select("run_id").hstack(found.select("_drift_what", "_drift_since", "_drift_series"))


# --------------------------------------------------------------------------- helpers


def _optional_frame(value: Any, name: str, what: str) -> pl.DataFrame | None:
    """``value`` (a Polars DataFrame or LazyFrame, or ``None``) as a DataFrame or ``None``;
    anything else (a path, a list, a pandas frame) is refused naming the parameter ``name``
    and the output (``what``) it expects."""
    if value is None or isinstance(value, pl.DataFrame):
        return value
    if isinstance(value, pl.LazyFrame):
        return value.collect()
    kind = f"{type(value).__module__.split('.')[0]}.{type(value).__name__}" if type(value).__module__ != "builtins" \
        else type(value).__name__
    raise InvalidParameterError(f"{name} must be a polars DataFrame ({what} output) or None, got {kind}")


def _first_per_run(table: pl.DataFrame) -> pl.DataFrame:
    """The first row of each ``run_id`` of ``table``, in the table's order. A table sorted by
    ``run_id`` with one row per run (a loop summary as the audit makes it) is checked in one
    pass and returned as is (hashing 2M run ids for nothing took 0.7 s at 100M events)."""
    rid = table.get_column("run_id")
    one_each = rid.len() < 2 or not rid.slice(1).eq(rid.slice(0, rid.len() - 1)).any()
    if rid.null_count() == 0 and rid.is_sorted() and one_each:
        return table.with_columns(rid.set_sorted())
    return table.unique("run_id", keep="first", maintain_order=True)


def _with_lookup(rows: pl.DataFrame, table: pl.DataFrame, on: str) -> pl.DataFrame:
    """``rows`` with the columns of ``table`` (one row per ``on`` value) added: a left join.

    The looked-up columns are stacked on, so the wide per-run table is not copied. When the
    keys of ``rows`` are flagged sorted and have no nulls (the per-run table's ``run_id``),
    the table's keys are found by binary search and its columns gathered into place (no hash
    join of every run); otherwise the key column alone is joined. Columns ``rows`` already has
    keep their values (as after a join, where the table's copy would be suffixed ``_right``).
    """
    new = [c for c in table.columns if c != on and c not in rows.columns]
    if not new:
        return rows
    keys, wanted = rows[on], table[on]
    n = rows.height
    sorted_keys = keys.flags["SORTED_ASC"]  # flagged, not checked: a check would cost a pass
    if n and sorted_keys and keys.dtype == wanted.dtype and not keys.has_nulls() and not wanted.has_nulls():
        pos = keys.search_sorted(wanted, side="left")
        hit = (pos < n) & (keys.gather(pos.clip(0, n - 1)) == wanted)
        where = pl.Series("_row", [None], dtype=pl.UInt32).extend_constant(None, n - 1)
        where = where.scatter(pos.filter(hit), pl.Series(np.flatnonzero(hit.to_numpy()), dtype=pl.UInt32))
        return rows.hstack(table.select(pl.col(new).gather(where)))
    found = rows.select(on).join(table.select(on, *new), on=on, how="left", maintain_order="left")
    return rows.hstack(found.drop(on))


#: How each anomaly feature is computed from the per-run table. A cost, token count or latency
#: the run did not record stays null: the medians skip it and its z-score is 0 (nothing unusual).
_FEATURE_EXPRS: dict[str, pl.Expr] = {
    "log_steps": pl.col("n_steps").cast(pl.Float64).log(),
    "log_cost": (pl.col("cost_usd").clip(lower_bound=0.0) + 1e-3).log(),  # (a refund: no cost)
    "log_tokens": (pl.col("tokens").cast(pl.Float64) + 1.0).log(),
    "log_runtime": (pl.col("runtime_s").fill_null(0.0) + 1.0).log(),
    "log_latency_p90": (pl.col("latency_ms_p90") + 1.0).log(),
    "min_confidence_filled": pl.col("min_confidence").fill_null(1.0),
}


def _feature(name: str) -> pl.Expr:
    return _FEATURE_EXPRS.get(name, pl.col(name)).alias(name)


@dataclass(frozen=True)
class _RobustZ:
    """Median/MAD z-scores of features within groups of runs (agents; small agents pooled as
    the fleet), as group tables plus expressions that read the run's group from ``_gid``.

    Nothing per run is stored but ``gid``: the z-scores are expressions, evaluated for all
    runs where every run needs them (the anomaly model, ``cost_z``, ``steps_z``) and for the
    flagged runs only where only they do (reasons).
    """

    gid: pl.Series  # per run: its group's row in ``med`` / ``mad`` (UInt32)
    med: pl.DataFrame  # per group: "_zgroup", "_med_<feature>", "_med_cost", "_med_steps"
    mad: pl.DataFrame  # per group (in gid order): "_mad_<feature>"
    specs: tuple[tuple[str, float], ...]

    @staticmethod
    def _of_group(table: pl.DataFrame, col: str) -> pl.Expr:  # the run's group's value
        return pl.lit(table[col]).gather(pl.col("_gid"))

    def z(self, name: str) -> pl.Expr:
        """Robust z-score of feature ``name`` (named ``_z_<name>``)."""
        floor = dict(self.specs)[name]
        dev = _feature(name) - self._of_group(self.med, f"_med_{name}")
        return (
            (dev / pl.max_horizontal(self._of_group(self.mad, f"_mad_{name}"), pl.lit(floor)))
            .clip(-50.0, 50.0)
            .fill_null(0.0)
            .alias(f"_z_{name}")
        )

    def context(self) -> list[pl.Expr]:
        """``_z_<feature>`` of every feature, and the group's ``_zgroup``, ``_med_cost`` and
        ``_med_steps`` (what the reasons quote)."""
        return [
            *[self.z(n) for n, _ in self.specs],
            self._of_group(self.med, "_zgroup").alias("_zgroup"),
            self._of_group(self.med, "_med_cost").alias("_med_cost"),
            self._of_group(self.med, "_med_steps").alias("_med_steps"),
        ]


def _robust_z(f: pl.DataFrame, group: pl.Expr, specs: Sequence[tuple[str, float]]) -> _RobustZ:
    """The median/MAD z-scores of each feature of ``specs`` within the groups ``group``.

    The MAD is scaled by 1.4826 (a standard deviation under normality) and floored at
    the feature's floor, so near-constant features do not blow up. Two small group-bys over
    a narrow frame of the features; the group's medians and MADs are read by group index
    inside the expressions (no join, no per-run copy of every median).
    """
    names = [n for n, _ in specs]
    narrow = f.select(
        group.alias("_zgroup"), *[_feature(n) for n in names], pl.col("cost_usd"), pl.col("n_steps")
    )
    med = narrow.group_by("_zgroup").agg(
        *[pl.col(n).median().alias(f"_med_{n}") for n in names],
        pl.col("cost_usd").median().alias("_med_cost"),
        pl.col("n_steps").median().alias("_med_steps"),
    )
    gid = narrow["_zgroup"].replace_strict(
        med["_zgroup"], pl.int_range(med.height, dtype=pl.UInt32, eager=True), return_dtype=pl.UInt32
    ).cast(pl.UInt32)  # (an empty column keeps its own dtype through replace_strict)
    narrow = narrow.select(*names).with_columns(gid.alias("_gid"))
    of_group = _RobustZ._of_group
    mad = (
        narrow.select("_gid", *[(pl.col(n) - of_group(med, f"_med_{n}")).abs().alias(n) for n in names])
        .group_by("_gid")
        .agg(*[(pl.col(n).median() * 1.4826).alias(f"_mad_{n}") for n in names])
        .sort("_gid")
    )
    return _RobustZ(gid=gid.alias("_gid"), med=med, mad=mad, specs=tuple(specs))


#: Largest robust z-score the anomaly forest sees (larger ones are clipped to it).
_Z_CLIP = 10.0
#: Floor of the one-sided z-scores of the anomaly forest (its second opinion floors them at 0).
_FIT_FLOOR = -3.0
#: Anomaly score from which the anomaly component counts.
ANOMALY_AT = 0.62


def _oriented_z(name: str, orientation: int, floor: float = 0.0) -> pl.Expr:
    """The robust z-score of feature ``name`` as an anomaly forest sees it: two-sided features
    clipped to [-10, 10]; one-sided ones oriented (suspicious direction positive) and clipped to
    [``floor``, 10]. With ``floor=0`` (the default, what the reasons quote) a deviation in the
    harmless direction counts as none."""
    z = pl.col(f"_z_{name}")
    if orientation == 0:
        return z.clip(-_Z_CLIP, _Z_CLIP).alias(name)
    return (z * orientation).clip(floor, _Z_CLIP).alias(name)


def _most_unusual(*, z: bool = False) -> pl.Expr:
    """The run's most unusual anomaly feature (largest oriented z-score, as the forest saw it, in
    float32), by name, or with ``z=True`` that z-score as text, as the forest saw it: clipped
    (``"≥ 10"`` at the clip), with the feature's own sign (low confidence is negative)."""
    seen = pl.concat_list([_oriented_z(c, o).cast(pl.Float32).abs() for c, _, o in _ANOMALY_FEATURES])
    top = seen.list.arg_max()
    if z:
        value = pl.concat_list([_oriented_z(c, o) * (o or 1) for c, _, o in _ANOMALY_FEATURES]).list.get(top)
        return (
            pl.when(value >= _Z_CLIP).then(pl.lit(f"≥ {_Z_CLIP:g}"))
            .when(value <= -_Z_CLIP).then(pl.lit(f"≤ -{_Z_CLIP:g}"))
            .otherwise(fmt_num(value, 1))
        )
    labels = [_FEATURE_LABELS.get(c, c) for c, _, _ in _ANOMALY_FEATURES]
    return top.replace_strict(list(range(len(labels))), labels, return_dtype=pl.String)


def _limit_s(ratio: pl.Expr) -> pl.Expr:
    return (0.45 + 0.25 * (ratio - 1.0)).clip(0.45, 0.9)


def _noisy_or(cols: Sequence[str]) -> pl.Expr:
    prod = pl.lit(1.0)
    for c in cols:
        prod = prod * (1.0 - pl.col(c).fill_null(0.0))
    return (1.0 - prod).clip(0.0, 1.0)


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """Expected path length of an unsuccessful search in a binary search tree of ``n`` points.

    The normalisation of isolation-forest path lengths (Liu et al. 2008), computed as
    scikit-learn's ``IsolationForest`` does.
    """
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros(n.shape)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _tree_path_lengths(tree: Any) -> np.ndarray:
    """Per node of a fitted isolation tree: its depth (edges from the root) plus the average
    path length of the training runs that ended in it (the per-leaf term of the anomaly score)."""
    t = tree.tree_
    left, right = t.children_left, t.children_right
    nodes = np.ones(t.node_count)  # nodes on the path from the root, as scikit-learn counts them
    inner = np.flatnonzero(left >= 0)
    for _ in range(t.max_depth):  # children are numbered after their parent: one pass per level
        nodes[left[inner]] = nodes[inner] + 1.0
        nodes[right[inner]] = nodes[inner] + 1.0
    return nodes + _average_path_length(t.n_node_samples) - 1.0


def _path_length_sums(trees: Sequence[Any], X: np.ndarray) -> np.ndarray:
    """Sum over ``trees`` (in order) of each row's isolation path length.

    Large inputs are cut into blocks of rows walked on separate threads (scikit-learn's tree
    walk releases the GIL); every row's sum still runs over the trees in order, so the result
    does not depend on the number of threads.
    """
    lengths = [_tree_path_lengths(tree) for tree in trees]

    def walk(rows: slice) -> np.ndarray:
        part = X[rows]
        depths = np.zeros(part.shape[0])
        for tree, length in zip(trees, lengths, strict=True):
            depths += length[tree.tree_.apply(part)]
        return depths

    n = X.shape[0]
    workers = min(_WALK_THREADS, max(1, n // _WALK_BLOCK))
    if workers == 1:
        return walk(slice(0, n))
    from concurrent.futures import ThreadPoolExecutor

    cuts = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(max_workers=workers) as ex:
        parts = list(ex.map(walk, [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]))
    return np.concatenate(parts)


def _anomaly_scores(frame: pl.DataFrame, random_state: int | None) -> np.ndarray:
    """IsolationForest anomaly score in (0, 1) per run.

    The forest reads the runs' robust z-scores (:func:`_oriented_z`), the one-sided features
    floored at -3 (:data:`_FIT_FLOOR`); a run that stands out while below its agent's median in
    one of those (shorter, cheaper, more confident) gets a second opinion with them floored at
    0 (:func:`_second_opinion`), so that alone never makes it unusual.

    Fleets up to :data:`SCREEN_MIN_RUNS` runs: scikit-learn's ``IsolationForest`` of
    :data:`ANOMALY_TREES` trees, fitted on all runs, scores every run.

    Larger fleets: scoring costs one tree walk per run and tree, so a forest of
    :data:`SCREEN_TREES` trees screens every run, and the full forest of
    :data:`ANOMALY_TREES` trees re-scores the runs the screen puts at or above
    :data:`SCREEN_AT` (well below :data:`ANOMALY_AT`, where the anomaly component starts). The others keep
    their screening score. The two forests are grown together (one forest of
    ``SCREEN_TREES + ANOMALY_TREES`` trees, split; the re-score does not reuse the screening
    trees, so a lucky screen does not bias it). scikit-learn's fit walks every row it is given
    (a tree grows on 256 runs; the others get weight 0), so the trees are fitted on a random
    sample of :data:`ANOMALY_FIT_RUNS` runs, seeded by ``random_state`` (each tree still grows
    on a random 256-run subsample of the fleet). Scores are computed from the fitted trees as
    ``IsolationForest.score_samples`` computes them.
    """
    n = frame.height
    # float32 rows, as the forest reads them (one C-ordered copy; Polars' cast rounds as numpy's)
    X = frame.select(
        _oriented_z(c, o, _FIT_FLOOR).cast(pl.Float32) for c, _, o in _ANOMALY_FEATURES
    ).to_numpy(order="c")
    if n < MIN_AGENT_RUNS:
        return np.zeros(n)
    from sklearn.ensemble import IsolationForest

    sub = min(256, n)
    if n <= SCREEN_MIN_RUNS:
        full = IsolationForest(n_estimators=ANOMALY_TREES, max_samples=sub, random_state=random_state).fit(X)
        return _second_opinion(X, np.arange(n), -full.score_samples(X), random_state)
    rows = np.sort(np.random.default_rng(random_state).choice(n, size=ANOMALY_FIT_RUNS, replace=False))
    X = np.ascontiguousarray(X)
    forest = IsolationForest(
        n_estimators=SCREEN_TREES + ANOMALY_TREES, max_samples=sub, random_state=random_state
    ).fit(X[rows])
    trees = forest.estimators_
    norm = float(_average_path_length(np.array([forest.max_samples_]))[0])
    a = 2.0 ** (-_path_length_sums(trees[:SCREEN_TREES], X) / (SCREEN_TREES * norm))
    cand = np.flatnonzero(a >= SCREEN_AT)
    if cand.size:
        a[cand] = 2.0 ** (-_path_length_sums(trees[SCREEN_TREES:], X[cand]) / (ANOMALY_TREES * norm))
    return _second_opinion(X, rows, a, random_state)


def _second_opinion(X: np.ndarray, rows: np.ndarray, a: np.ndarray, random_state: int | None) -> np.ndarray:
    """``a`` with the runs that stand out (at or above :data:`ANOMALY_AT`) while below their
    agent's median in a one-sided feature (shorter, cheaper, more confident) scored again by a
    forest of :data:`ANOMALY_TREES` trees fitted on the runs ``rows`` of ``X`` with those
    features floored at 0, each keeping the lower of its two scores.

    A run that stands out only by being short or cheap is typical once floored (an agent whose
    runs are all alike isolates a run one step shorter at once: 0.9), so it is not "unusual";
    a run that stands out on the suspicious side keeps standing out. The lower score: the
    floored forest alone sees half the runs piled at 0, and an ordinary run a little above
    the median would stand out there. Runs without such a deviation keep ``a`` as it is.
    """
    one_sided = np.array([o != 0 for _, _, o in _ANOMALY_FEATURES])
    cand = np.flatnonzero(a >= ANOMALY_AT)  # (a few runs: their rows of X only are read)
    cand = cand[(X[cand][:, one_sided] < 0).any(axis=1)]
    if cand.size == 0:
        return a
    from sklearn.ensemble import IsolationForest

    def floored(part: np.ndarray) -> np.ndarray:
        part = part.copy()
        part[:, one_sided] = np.maximum(part[:, one_sided], 0.0)
        return part

    fit = floored(X[rows])
    forest = IsolationForest(n_estimators=ANOMALY_TREES, max_samples=min(256, len(rows)), random_state=random_state)
    a[cand] = np.minimum(a[cand], -forest.fit(fit).score_samples(floored(X[cand])))
    return a


# --------------------------------------------------------------------------- main


def score_runs_from_runs(
    features: pl.DataFrame | pl.LazyFrame,
    *,
    policy: Policy | str | Path | None = None,
    loops: pl.DataFrame | pl.LazyFrame | None = None,
    violations: pl.DataFrame | pl.LazyFrame | None = None,
    drift: pl.DataFrame | pl.LazyFrame | None = None,
    model: EscalationModel | str | Path | None = None,
    random_state: int | None = 0,
    rejected: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Score runs from per-run tables only (the fleet stage of the audit; no events).

    Parameters
    ----------
    features : polars.DataFrame or polars.LazyFrame
        :func:`driftwatch.run_features` output (concatenated across chunks).
    policy : Policy, path or None, default=None
        Thresholds and limits; ``None`` means ``Policy()``.
    loops : polars.DataFrame, optional
        :func:`driftwatch.loop_summary` output (or :func:`driftwatch.detect_loops`
        output, summarised here). ``None``: no loop signal.
    violations : polars.DataFrame, optional
        :func:`driftwatch.check_policy` output. Used for the rules that need events
        (``unapproved_action``, ``unknown_tool``, ``max_consecutive_retries``,
        ``delegation_depth``); step/runtime/token/cost limits and low confidence are
        read from ``features``. Delegation depth is computed from ``features`` when
        ``violations`` holds no ``delegation_depth`` rows.
    drift : polars.DataFrame, optional
        :func:`driftwatch.detect_drift` output; runs of a drifted series in a drifted
        window get a small context bump and a reason.
    model : EscalationModel, path or None, default=None
        A fitted supervised model (:func:`fit_escalation`) or its file. ``None`` uses
        ``policy.model`` when the policy names one, else the rule score.
    random_state : int or None, default=0
        Seed of the IsolationForest.
    rejected : polars.DataFrame, optional
        ``ReadResult.rejected``: a run some of whose steps the reader rejected (see
        :func:`driftwatch.policy.rejected_steps`) was audited without them, so it is at
        least ``review``, with a reason naming the rejection reasons, and the output gains
        ``n_rejected``. Destructive calls among those steps are breaches when
        ``violations`` holds :func:`driftwatch.policy.check_rejected` rows.

    Returns
    -------
    polars.DataFrame
        One row per run, sorted by ``run_id``: ``run_id, agent, n_steps, cost_usd,
        score, level, reasons, first_ts, last_ts``, then ``score_rules``,
        ``score_<component>`` for every component in :data:`COMPONENTS`, ``cost_z``,
        ``steps_z``, ``anomaly``, ``error_rate_tool``, the loop summary columns and the
        remaining feature columns.

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> from driftwatch.scoring import score_runs_from_runs
    >>> ev = pl.DataFrame({"run_id": ["a"] * 3, "step": [1, 2, 3], "action": ["llm"] * 3,
    ...                    "cost_usd": [0.2, 0.2, 0.2]})
    >>> out = score_runs_from_runs(dw.run_features(ev))
    >>> out.select("score", "level", "reasons").row(0)
    (0.5, 'review', ['cost $0.60 > ceiling $0.50'])
    """
    pol = _as_policy(policy)
    random_state = check_seed(random_state, allow_none=True)
    feats = features.collect() if isinstance(features, pl.LazyFrame) else features
    if not isinstance(feats, pl.DataFrame):
        raise InvalidParameterError(f"features must be a run_features DataFrame, got {type(features).__name__}")
    need = ("run_id", "agent", "n_steps", "n_tool", "n_errors", "cost_usd", "tokens", "runtime_s",
            "first_ts", "last_ts", "min_confidence", "n_retries", "llm_ratio", "n_distinct_actions",
            "latency_ms_p90", "parent_run_id")
    missing = [c for c in need if c not in feats.columns]
    if missing:
        raise InvalidParameterError(
            f"features must be driftwatch.run_features output; missing columns {missing}"
        )
    viol = _optional_frame(violations, "violations", "check_policy")
    summary = _summarize_loops(loops)
    drift_df = _optional_frame(drift, "drift", "detect_drift")
    rejected = _optional_frame(rejected, "rejected", "ReadResult.rejected")
    esc_model = _resolve_model(model, pol)

    f = feats if feats["run_id"].is_sorted() else feats.sort("run_id")
    f = f.with_columns(pl.col("run_id").set_sorted())  # checked or sorted just above
    dup = f["run_id"].filter(f["run_id"] == f["run_id"].shift(1))
    if dup.len():
        raise InvalidParameterError(
            f"features must have one row per run; run_id {dup[0]!r} appears more than once "
            "(concatenate run_features of disjoint chunks of whole runs)"
        )
    # failed tool calls and failed LLM calls apart (features without n_tool_errors, from before it
    # existed, count every failure as a tool call's, as then)
    tool_err = (
        pl.coalesce(pl.col("n_tool_errors"), pl.col("n_errors")) if "n_tool_errors" in f.columns else pl.col("n_errors")
    )
    f = f.with_columns(
        (tool_err / pl.max_horizontal(pl.col("n_tool"), pl.lit(1))).alias("error_rate_tool"),
        tool_err.alias("_tool_err"),
        (pl.col("n_errors") - tool_err).clip(lower_bound=0).alias("_llm_err"),
    )
    # agents with few runs are compared with the whole fleet (a handful of agents: Python list is fine)
    counts = f.group_by("agent").len()
    small = counts.filter(pl.col("len") < MIN_AGENT_RUNS)["agent"].to_list()
    group = (
        pl.when(pl.col("agent").is_in(small) | pl.col("agent").is_null() if small else pl.col("agent").is_null())
        .then(pl.lit("\x00fleet"))
        .otherwise(pl.col("agent"))
    )
    rz = _robust_z(f, group, [(src, floor) for src, floor, _ in _ANOMALY_FEATURES])
    f = f.with_columns(rz.gid)
    f = f.with_columns(rz.z("log_cost").alias("cost_z"), rz.z("log_steps").alias("steps_z"))

    # ---- anomaly (IsolationForest over per-agent robust z-scores) ----
    # (the z-scores are a transient frame; the most unusual feature, for the reason, is found
    # for the flagged runs only: _components)
    anomaly = _anomaly_scores(f.select(rz.z(n) for n, _, _ in _ANOMALY_FEATURES), random_state)
    f = f.with_columns(pl.Series("anomaly", anomaly, dtype=pl.Float64))
    del anomaly

    # ---- violations needing events ----
    f, viol_texts = _join_violations(f, viol, pol)
    f, viol_texts = _join_rejected(f, viol_texts, rejected)

    # ---- loops ----
    if summary is not None:
        keep = ["run_id"] + [c for c in (*_LOOP_SUMMARY_COLS, "worst_change") if c in summary.columns]
        f = _with_lookup(f, _first_per_run(summary.select(keep)), "run_id")
    # what changed between the repeats of a same_action loop (read by its reason only; a summary
    # without the column gives neutral wording)
    f = f.with_columns(
        (pl.col("worst_change").cast(pl.String) if "worst_change" in f.columns else pl.lit(None, dtype=pl.String))
        .alias("_worst_change")
    )
    for c, dt in (("n_loops", pl.Int64), ("worst_kind", pl.String), ("worst_pattern", pl.String),
                  ("worst_repeats", pl.Int64), ("wasted_steps", pl.Int64), ("wasted_tokens", pl.Int64),
                  ("wasted_cost_usd", pl.Float64), ("loop_severity", pl.Float64), ("worst_error_share", pl.Float64)):
        if c not in f.columns:
            f = f.with_columns(pl.lit(None, dtype=dt).alias(c))

    # ---- drift ----
    ctx = _drift_context(f, drift_df)
    if ctx is not None:
        f = f.with_columns(ctx["_drift_what"], ctx["_drift_since"], ctx["_drift_series"])
    else:
        f = f.with_columns(
            pl.lit(None, dtype=pl.Categorical).alias("_drift_what"),
            pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("_drift_since"),
            pl.lit(None, dtype=pl.Categorical).alias("_drift_series"),
        )

    score_exprs, text_exprs = _components(pol)
    f = f.with_columns(score_exprs)
    s_cols = [f"score_{c}" for c in COMPONENTS]
    f = f.with_columns(_noisy_or(s_cols).alias("score_rules"))
    if esc_model is not None:
        p = esc_model.predict_proba(f)
        f = f.with_columns(pl.Series("_p", p, dtype=pl.Float64))
        score = pl.max_horizontal(pl.col("_p"), pl.col("score_unapproved"))
    else:
        score = pl.col("score_rules")
    # rounded to the 12 significant digits the audit's files hold before the level is read from
    # it, so float noise (1 - 0.4 * 0.9 = 0.6399999999999999) never puts the stored score and the
    # level on two sides of a threshold
    f = f.with_columns(score.clip(0.0, 1.0).round_sig_figs(12).alias("score"))
    forced = pl.col("score_unapproved") >= 1.0
    incomplete = pl.col("score_rejected_steps") > 0  # whatever the thresholds or a model say
    f = f.with_columns(
        pl.when(forced | (pl.col("score") >= pol.escalate))
        .then(pl.lit("escalate"))
        .when((pl.col("score") >= pol.review) | incomplete)
        .then(pl.lit("review"))
        .otherwise(pl.lit("ok"))
        .alias("level")
    )
    # what only the reasons quote is added for the flagged runs only
    flagged = f.filter(pl.col("level") != "ok").with_columns(rz.context())
    reasons = _reasons(_with_lookup(flagged, viol_texts, "run_id").lazy(), text_exprs, esc_model)
    del flagged
    f = _with_lookup(f, reasons, "run_id").with_columns(
        pl.col("reasons").fill_null(pl.lit([], dtype=pl.List(pl.String)))
    )

    front = ["run_id", "agent", "n_steps", "cost_usd", "score", "level", "reasons", "first_ts", "last_ts",
             "score_rules", *s_cols, "cost_z", "steps_z", "anomaly", "error_rate_tool", *_LOOP_SUMMARY_COLS,
             "n_unapproved", "n_unknown_tool", "delegation_depth", *(["n_rejected"] if rejected is not None else [])]
    rest = [c for c in feats.columns if c not in front]
    out = f.select(front + rest)
    return out if out["run_id"].is_sorted() else out.sort("run_id")


#: Texts of the violations that only the reasons quote (looked up for the flagged runs only).
_VIOLATION_TEXTS = (
    "_crit_action", "_crit_refused", "_warn_action", "_warn_refused", "_warn_tier", "_unk_detail", "_ret_detail",
    "_dep_detail",
)


def _distinct_actions(rows: pl.Expr, most: int = 3) -> pl.Expr:
    """The distinct actions of a run's violation ``rows``, in step order, the first ``most``
    named (an aggregation)."""
    acts = pl.col("action").filter(rows).drop_nulls().unique(maintain_order=True)
    return pl.when(acts.len() > 0).then(
        pl.concat_str(acts.head(most).str.join(", "), pl.when(acts.len() > most).then(pl.lit(", …")).otherwise(
            pl.lit("")
        ))
    )


def _unapproved_reason(actions: str, n: str, refused: str, what: str, tier: pl.Expr | None = None) -> pl.Expr:
    """``"delete_invoice, drop_table without approval (2 calls, 1 refused)"``: the actions,
    then (when they say something) the tier, the number of calls and how many ran although a
    person had refused them (``approved = false``)."""
    n_, refused_ = pl.col(n), pl.col(refused)
    parts = [
        tier,
        pl.when(n_ > 1).then(pl.format("{} calls", n_)),
        pl.when(refused_ > 0).then(
            pl.when(n_ > 1).then(pl.format("{} refused", refused_)).otherwise(pl.lit("approval refused"))
        ),
    ]
    inner = pl.concat_str([p for p in parts if p is not None], separator=", ", ignore_nulls=True)
    return pl.concat_str(
        pl.col(actions).fill_null(what), pl.lit(" without approval"),
        pl.when(inner != "").then(pl.concat_str(pl.lit(" ("), inner, pl.lit(")"))).otherwise(pl.lit("")),
    )


def _join_violations(f: pl.DataFrame, viol: pl.DataFrame | None, pol: Policy) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-run aggregates of the event-level rules (one small group-by over the violations):
    ``f`` with the counts and values added, and the texts the reasons quote (``run_id`` and
    :data:`_VIOLATION_TEXTS`, one row per run with a violation)."""
    parts: list[pl.DataFrame] = []
    if viol is not None and viol.height:
        missing = [c for c in ("run_id", "rule", "severity", "detail") if c not in viol.columns]
        if missing:
            raise InvalidParameterError(f"violations must be check_policy output; missing columns {missing}")
        v = viol
        for c, dt in (("action", pl.String), ("value", pl.Float64), ("limit", pl.Float64), ("step", pl.Int64)):
            if c not in v.columns:
                v = v.with_columns(pl.lit(None, dtype=dt).alias(c))
        v = v.filter(pl.col("rule").is_in(["unapproved_action", "unknown_tool", "max_consecutive_retries",
                                           "delegation_depth"]))
        parts.append(v)
    has_deleg = bool(parts) and (parts[0]["rule"] == "delegation_depth").any()
    if not has_deleg and pol.max_delegation_depth is not None:
        d = check_delegation(f.select("run_id", "agent", "parent_run_id"), pol)
        if d.height:
            parts.append(d)
    if not parts:
        v = pl.DataFrame(schema={"run_id": pl.String, "rule": pl.String, "severity": pl.String,
                                 "detail": pl.String, "action": pl.String, "value": pl.Float64,
                                 "limit": pl.Float64, "step": pl.Int64})
    else:
        v = pl.concat([p.select("run_id", "rule", "severity", "detail", "action", "value", "limit", "step")
                       for p in parts])
    crit = (pl.col("rule") == "unapproved_action") & (pl.col("severity") == "critical")
    warn = (pl.col("rule") == "unapproved_action") & (pl.col("severity") != "critical")
    unk = pl.col("rule") == "unknown_tool"
    ret = pl.col("rule") == "max_consecutive_retries"
    dep = pl.col("rule") == "delegation_depth"
    # check_policy writes "<action> (<tier> tier) without approval (approved=false)" when a
    # person refused the call, check_rejected "... (approved=false; step rejected: <reason>)"
    # (read from the end: the action is logged text)
    refused = pl.col("detail").str.contains(r" without approval \(approved=false(; step rejected: [^()]*)?\)$")
    tier = pl.col("detail").str.extract(r"\((\w+) tier\) without approval \([^()]*\)$", 1)
    agg = v.group_by("run_id", maintain_order=True).agg(
        crit.sum().cast(pl.Int64).alias("_n_crit"),
        _distinct_actions(crit).alias("_crit_action"),
        (crit & refused).sum().cast(pl.Int64).alias("_crit_refused"),
        warn.sum().cast(pl.Int64).alias("_n_warn"),
        _distinct_actions(warn).alias("_warn_action"),
        (warn & refused).sum().cast(pl.Int64).alias("_warn_refused"),
        tier.filter(warn).drop_nulls().unique(maintain_order=True).str.join("/").alias("_warn_tier"),
        unk.sum().cast(pl.Int64).alias("n_unknown_tool"),
        pl.col("detail").filter(unk).first().alias("_unk_detail"),
        (pl.col("value") / pl.col("limit")).filter(ret).max().alias("_ret_ratio"),
        pl.col("detail").filter(ret).first().alias("_ret_detail"),
        pl.col("value").filter(dep).max().alias("delegation_depth"),
        pl.col("limit").filter(dep).max().alias("_dep_limit"),
        (dep & (pl.col("severity") == "critical")).any().alias("_dep_cycle"),
        pl.col("detail").filter(dep).first().alias("_dep_detail"),
    )
    f = _with_lookup(f, agg.drop(_VIOLATION_TEXTS), "run_id")
    f = f.with_columns(
        pl.col("_n_crit").fill_null(0),
        pl.col("_n_warn").fill_null(0),
        pl.col("n_unknown_tool").fill_null(0),
        (pl.col("_n_crit").fill_null(0) + pl.col("_n_warn").fill_null(0)).alias("n_unapproved"),
        pl.col("_dep_cycle").fill_null(False),
    )
    return f, agg.select("run_id", *_VIOLATION_TEXTS)


def _join_rejected(
    f: pl.DataFrame, texts: pl.DataFrame, rejected: pl.DataFrame | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n_rejected`` per run (0 without a rejected table) added to ``f``, and the reason
    text ``_rej_detail`` ("2 steps rejected (bad_status, bad_value:approved)") to ``texts``."""
    steps = rejected_steps(rejected)
    if steps.height == 0:
        return f.with_columns(pl.lit(0, dtype=pl.Int64).alias("n_rejected")), texts.with_columns(
            pl.lit(None, dtype=pl.String).alias("_rej_detail")
        )
    per_run = steps.group_by("run_id").agg(
        pl.len().cast(pl.Int64).alias("n_rejected"),
        pl.col("reason").unique().sort().str.join(", ").alias("_rej_reasons"),
    )
    f = _with_lookup(f, per_run.select("run_id", "n_rejected"), "run_id").with_columns(pl.col("n_rejected").fill_null(0))
    detail = per_run.select(
        "run_id",
        pl.format(
            "{} {} rejected by the reader ({}): audited without {}; see rejected.parquet",
            pl.col("n_rejected"),
            pl.when(pl.col("n_rejected") == 1).then(pl.lit("step")).otherwise(pl.lit("steps")),
            pl.col("_rej_reasons"),
            pl.when(pl.col("n_rejected") == 1).then(pl.lit("it")).otherwise(pl.lit("them")),
        ).alias("_rej_detail"),
    )
    texts = texts.join(detail, on="run_id", how="full", coalesce=True)
    return f, texts


def _components(pol: Policy) -> tuple[list[pl.Expr], list[pl.Expr]]:
    """Expressions for ``score_<component>`` (Float64 in [0, 1]) and ``_r_<component>`` (reason text).

    The reason texts are only evaluated for the runs above ``ok``.
    """
    out: list[pl.Expr] = []
    texts: list[pl.Expr] = []

    def comp(name: str, s: pl.Expr, reason: pl.Expr) -> None:
        s = s.fill_null(0.0).cast(pl.Float64).clip(0.0, 1.0)
        out.append(s.alias(f"score_{name}"))
        texts.append(reason.alias(f"_r_{name}"))

    comp(
        "unapproved",
        pl.when(pl.col("_n_crit") > 0).then(1.0).otherwise(0.0),
        _unapproved_reason("_crit_action", "_n_crit", "_crit_refused", "a destructive action"),
    )
    warn_tier = pl.concat_str(pl.col("_warn_tier").replace("", None).fill_null("write"), pl.lit(" tier"))
    comp(
        "unapproved_write",
        pl.when(pl.col("_n_warn") > 0).then(0.6).otherwise(0.0),
        _unapproved_reason("_warn_action", "_n_warn", "_warn_refused", "a write action", warn_tier),
    )
    lim_steps, lim_rt, lim_tok, lim_cost = pol.max_steps, pol.max_runtime_s, pol.max_tokens, pol.max_cost_usd
    if lim_steps is not None:
        v = pl.col("n_steps").cast(pl.Float64)
        comp("max_steps", pl.when(v > lim_steps).then(_limit_s(v / lim_steps)),
             pl.concat_str(fmt_num(v, 0), pl.lit(f" steps > limit {lim_steps}")))
    else:
        comp("max_steps", pl.lit(0.0), pl.lit(None, dtype=pl.String))
    if lim_rt is not None:
        v = pl.col("runtime_s")
        comp("max_runtime", pl.when(v > lim_rt).then(_limit_s(v / lim_rt)),
             pl.concat_str(pl.lit("runtime "), fmt_seconds_vs_limit(v, lim_rt)[0], pl.lit(f"s > limit {lim_rt:g}s")))
    else:
        comp("max_runtime", pl.lit(0.0), pl.lit(None, dtype=pl.String))
    if lim_tok is not None:
        v = pl.col("tokens").cast(pl.Float64)
        comp("max_tokens", pl.when(v > lim_tok).then(_limit_s(v / lim_tok)),
             pl.concat_str(pl.lit("tokens "), fmt_int(v), pl.lit(f" > limit {lim_tok:,}")))
    else:
        comp("max_tokens", pl.lit(0.0), pl.lit(None, dtype=pl.String))
    if lim_cost is not None:
        v = pl.col("cost_usd")
        ceiling = _money(lim_cost)
        comp("max_cost", pl.when(exceeds(v, lim_cost)).then(_limit_s(v / lim_cost)),
             pl.concat_str(pl.lit("cost "),
                           # just over the ceiling: enough decimals to show the difference
                           fmt_vs_limit(v, lim_cost, money=True)[0],
                           pl.lit(f" > ceiling {ceiling}")))
    else:
        comp("max_cost", pl.lit(0.0), pl.lit(None, dtype=pl.String))
    comp("retries", _limit_s(pl.col("_ret_ratio")), pl.col("_ret_detail"))
    comp(
        "unknown_tool",
        pl.when(pl.col("n_unknown_tool") > 0).then(
            (0.5 + 0.1 * (pl.col("n_unknown_tool") - 1)).clip(0.5, 0.7)
        ),
        pl.col("_unk_detail"),
    )
    comp("rejected_steps", pl.when(pl.col("n_rejected") > 0).then(0.45), pl.col("_rej_detail"))
    thr = pol.min_confidence
    mc = pl.col("min_confidence")
    if thr > 0:
        comp(
            "low_confidence",
            pl.when(below(mc, thr)).then(0.45 + 0.5 * (1.0 - mc / thr)),
            pl.concat_str(pl.lit("lowest confidence "), fmt_vs_limit(mc, thr)[0], pl.lit(f" < {limit_text(thr, 2)}")),
        )
    else:
        comp("low_confidence", pl.lit(0.0), pl.lit(None, dtype=pl.String))
    comp(
        "delegation",
        pl.when(pl.col("_dep_cycle"))
        .then(0.8)
        .when(pl.col("delegation_depth").is_not_null())
        .then((0.5 + 0.1 * (pl.col("delegation_depth") - pl.col("_dep_limit") - 1)).clip(0.5, 0.8)),
        pl.col("_dep_detail"),
    )
    # loops: same_action loops (paging, polling, ...) never escalate on their own
    sev = pl.col("loop_severity").fill_null(0.0)
    same = pl.col("worst_kind") == "same_action"
    loop_s = pl.when(same).then(pl.min_horizontal(sev, pl.lit(max(pol.escalate - 0.05, 0.0)))).otherwise(sev)
    share = pl.col("worst_error_share")
    change = pl.col("_worst_change")  # loop_summary's worst_change, when it has the column
    kind_note = (
        pl.when((pl.col("worst_kind") == "error_retry") & (share.is_null() | (share >= 1.0)))
        .then(pl.lit(" (failing each time)"))
        .when(pl.col("worst_kind") == "error_retry")  # at least error_share of the calls, not all
        .then(pl.concat_str(pl.lit(" ("), (share * 100).floor().clip(1, 99).cast(pl.Int64).cast(pl.String),
                            pl.lit("% of the calls failing)")))
        .when(same & (pl.col("worst_pattern") == LLM_ACTION) & (change == "unrecorded"))
        .then(pl.lit(" (replies not recorded)"))
        .when(same & (pl.col("worst_pattern") == LLM_ACTION))
        .then(pl.lit(" (different answers)"))  # (sampling: one prompt, several replies)
        .when(same & _ping_pong(pl.col("worst_pattern")) & (change == "unrecorded"))
        .then(pl.lit(" (hand-off ping-pong; arguments not recorded)"))
        .when(same & (change == "arguments"))
        .then(pl.lit(" (same tools, changing arguments)"))
        .when(same & (change == "results"))
        .then(pl.lit(" (same tools, changing results)"))  # (polling)
        .when(same & (change == "unrecorded"))
        .then(pl.lit(" (same tools; arguments or results not recorded)"))
        .when(same)  # (a summary that does not say what changed)
        .then(pl.lit(" (same tools only)"))
        .when(_ping_pong(pl.col("worst_pattern")))
        .then(pl.lit(" (hand-off ping-pong)"))
        .otherwise(pl.lit(""))
    )
    wasted = pl.when(pl.col("wasted_steps").fill_null(0) > 0).then(
        pl.concat_str(pl.lit(", "), pl.col("wasted_steps").cast(pl.String), pl.lit(" wasted steps"))
    ).otherwise(pl.lit(""))
    wasted_cost = pl.when(pl.col("wasted_cost_usd").fill_null(0.0) > 0).then(
        pl.concat_str(pl.lit(", "), fmt_money(pl.col("wasted_cost_usd")))
    ).otherwise(pl.lit(""))
    more = pl.when(pl.col("n_loops").fill_null(1) > 1).then(
        pl.concat_str(pl.lit(" (+"), (pl.col("n_loops") - 1).cast(pl.String), pl.lit(" more)"))
    ).otherwise(pl.lit(""))
    comp(
        "loop",
        loop_s,
        pl.concat_str(
            pl.lit("loop: "),
            pl.when(pl.col("worst_pattern") == LLM_ACTION).then(pl.lit("the same prompt sent to the LLM "))
            .otherwise(pl.concat_str(pl.col("worst_pattern").fill_null("?"), pl.lit(" repeated "))),
            pl.col("worst_repeats").fill_null(0).cast(pl.String), pl.lit("x"), kind_note, wasted, wasted_cost,
            more,
        ),
    )
    def storm(failed: pl.Expr, calls: pl.Expr) -> pl.Expr:
        rate = failed / pl.max_horizontal(calls, pl.lit(1))
        return pl.when(failed >= 3).then(
            0.6 * pl.min_horizontal(rate / 0.6, pl.lit(1.0)) * pl.min_horizontal((failed - 1) / 5.0, pl.lit(1.0))
        ).otherwise(0.0)

    # failed tool calls, or failed LLM calls (a model retried into a cost explosion), whichever is worse
    tool_s, llm_s = storm(pl.col("_tool_err"), pl.col("n_tool")), storm(pl.col("_llm_err"), pl.col("n_llm"))
    comp(
        "errors",
        pl.max_horizontal(tool_s, llm_s),
        pl.when(llm_s > tool_s)
        .then(pl.concat_str(pl.lit("error storm: "), pl.col("_llm_err").cast(pl.String), pl.lit(" of "),
                            pl.col("n_llm").cast(pl.String), pl.lit(" LLM calls failed")))
        .otherwise(pl.concat_str(pl.lit("error storm: "), pl.col("_tool_err").cast(pl.String), pl.lit(" of "),
                                 pl.col("n_tool").cast(pl.String), pl.lit(" tool calls failed"))),
    )
    who = pl.when(pl.col("_zgroup") == "\x00fleet").then(pl.lit("fleet")).otherwise(pl.col("agent"))
    comp(
        "cost",
        0.75 * ((pl.col("cost_z") - 4.0) / 8.0).clip(0.0, 1.0),
        pl.concat_str(pl.lit("cost "), fmt_money(pl.col("cost_usd")), pl.lit(" vs "), who,
                      pl.lit(" median "), fmt_money(pl.col("_med_cost")), pl.lit(" (robust z "),
                      fmt_num(pl.col("cost_z"), 1), pl.lit(")")),
    )
    comp(
        "length",
        0.75 * ((pl.col("steps_z") - 4.0) / 8.0).clip(0.0, 1.0),
        pl.concat_str(pl.col("n_steps").cast(pl.String), pl.lit(" steps vs "), who, pl.lit(" median "),
                      fmt_num(pl.col("_med_steps"), 0), pl.lit(" (robust z "), fmt_num(pl.col("steps_z"), 1),
                      pl.lit(")")),
    )
    comp(
        "anomaly",
        0.5 * ((pl.col("anomaly") - ANOMALY_AT) / 0.18).clip(0.0, 1.0),
        pl.concat_str(pl.lit("unusual run for "), who, pl.lit(" (isolation-forest anomaly "),
                      fmt_num(pl.col("anomaly"), 2), pl.lit("; most unusual: "),
                      _most_unusual(), pl.lit(" z "), _most_unusual(z=True), pl.lit(")")),
    )
    comp(
        "drift",
        pl.when(pl.col("_drift_what").is_not_null()).then(0.1),
        # (the series that drifted, by its name: "planner" for agent=planner, "version=v1", "the fleet")
        pl.concat_str(pl.lit("context: "),
                      # (the fleet first: an agent named "all" is agent=all, not the fleet)
                      pl.col("_drift_series").cast(pl.String).str.replace(r"^all$", "the fleet")
                      .str.replace(r"^agent=([^,]*)$", "$1"),
                      pl.lit(" drifting in "), pl.col("_drift_what").cast(pl.String),
                      pl.lit(" since "), pl.col("_drift_since").dt.strftime("%Y-%m-%d")),
    )
    return out, texts


def _ping_pong(pattern: pl.Expr) -> pl.Expr:
    """A loop pattern of hand-offs only, between two agents or more (``handoff:a > handoff:b``)."""
    parts = pattern.str.split(" > ")
    return parts.list.eval(pl.element().str.starts_with(HANDOFF_PREFIX)).list.all() & (parts.list.n_unique() >= 2)


def _reasons(flagged: pl.LazyFrame, texts: list[pl.Expr], model: EscalationModel | None) -> pl.DataFrame:
    """``run_id, reasons`` for the runs above ``ok``: component texts, strongest first.

    Components below 0.05 are left out unless they are the run's strongest. Built in
    long format (one row per run and reported component): each component's text is
    written only for the flagged runs it is reported for.
    """
    score_cols = [f"score_{c}" for c in COMPONENTS]
    top = pl.col("_top")
    lf = flagged.with_columns(pl.max_horizontal(score_cols).alias("_top"))
    parts = []
    for i, (c, text) in enumerate(zip(COMPONENTS, texts, strict=True)):
        s = pl.col(f"score_{c}")
        parts.append(
            lf.filter((s >= 0.05) | ((s >= top) & (top > 0))).select(
                "run_id",
                pl.lit(i, dtype=pl.Int32).alias("_i"),
                s.alias("_w"),
                # a text can only be missing when its inputs are (a hand-made violations frame,
                # say): name the component rather than drop the reason
                pl.coalesce(text, pl.concat_str(pl.lit(f"{c.replace('_', ' ')} (component score "),
                                                fmt_num(s, 2), pl.lit(")"))).alias("_t"),
            )
        )
    reasons = (
        pl.concat(parts)
        .sort(["run_id", "_w", "_i"], descending=[False, True, False])
        .group_by("run_id", maintain_order=True)
        .agg(pl.col("_t").alias("reasons"))
    )
    base = flagged.select("run_id", *(["_p"] if model is not None else []))
    out = base.join(reasons, on="run_id", how="left").collect()
    empty = pl.lit([], dtype=pl.List(pl.String))
    if model is not None:
        # a run the learned model flags without any rule signal still gets a sentence
        model_reason = pl.concat_list(
            pl.concat_str(pl.lit("learned escalation model: p="), fmt_num(pl.col("_p"), 2))
        )
        fill = model_reason
    else:
        fill = empty
    return out.select(
        "run_id",
        pl.when(pl.col("reasons").is_null() | (pl.col("reasons").list.len() == 0))
        .then(fill)
        .otherwise(pl.col("reasons"))
        .alias("reasons"),
    )


def score_runs(
    events: Any,
    *,
    policy: Policy | str | Path | None = None,
    loops: pl.DataFrame | pl.LazyFrame | None = None,
    violations: pl.DataFrame | pl.LazyFrame | None = None,
    drift: pl.DataFrame | pl.LazyFrame | None = None,
    model: EscalationModel | str | Path | None = None,
    random_state: int | None = 0,
) -> pl.DataFrame:
    """Give every run an escalation score, a level and reasons.

    Computes the per-run tables (:func:`driftwatch.run_features`, the loop summary,
    :func:`driftwatch.check_policy`) that were not passed in and calls
    :func:`score_runs_from_runs`. See the module docs for how the score works.

    Parameters
    ----------
    events : polars.DataFrame, polars.LazyFrame or ReadResult
        Canonical events.
    policy : Policy, path or None, default=None
        ``None`` means ``Policy()``.
    loops : polars.DataFrame, optional
        :func:`driftwatch.detect_loops` or :func:`driftwatch.loop_summary` output;
        ``None`` runs ``dw.detect_loops`` (when the loop detector is installed). Pass an
        empty frame to score without loops.
    violations : polars.DataFrame, optional
        :func:`driftwatch.check_policy` output; ``None`` runs it with ``policy``.
    drift : polars.DataFrame, optional
        :func:`driftwatch.detect_drift` output, used as context.
    model : EscalationModel, path or None, default=None
        A supervised model from :func:`fit_escalation` (or its file).
    random_state : int or None, default=0
        Seed of the IsolationForest.

    Returns
    -------
    polars.DataFrame
        One row per run: ``run_id, agent, n_steps, cost_usd, score, level, reasons,
        first_ts, last_ts`` and the component and feature columns
        (see :func:`score_runs_from_runs`).

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> ev = pl.DataFrame({"run_id": ["r1"] * 4, "step": [1, 2, 3, 4],
    ...                    "action": ["llm", "get_invoice", "llm", "get_invoice"],
    ...                    "confidence": [0.1, None, 0.9, None]})
    >>> dw.score_runs(ev, loops=pl.DataFrame()).select("level", "reasons").row(0)
    ('escalate', ['lowest confidence 0.10 < 0.30'])
    """
    pol = _as_policy(policy)
    random_state = check_seed(random_state, allow_none=True)
    lf = as_lazy(events)
    feats = run_features(lf)
    summary = _detect_loop_summary(lf) if loops is None else loops
    if violations is None:
        violations = check_policy(lf, pol)
    return score_runs_from_runs(
        feats, policy=pol, loops=summary, violations=violations, drift=drift, model=model,
        random_state=random_state,
    )


# --------------------------------------------------------------------------- supervised model

_MAGIC = "driftwatch-escalation-model"
_FORMAT_VERSION = 1


@dataclass
class EscalationModel:
    """A calibrated classifier that learned from past human review outcomes.

    Made by :func:`fit_escalation`; used by ``score_runs(..., model=...)``. The
    classifier is a scikit-learn ``CalibratedClassifierCV`` around a standardised
    logistic regression over :attr:`feature_names` (the component scores and a few
    robust z-scores of :func:`score_runs_from_runs`), so its weights stay readable
    (:meth:`weights`).

    Attributes
    ----------
    feature_names : tuple of str
    classifier : sklearn.calibration.CalibratedClassifierCV
    cv_auroc_ : float
        Mean cross-validated AUROC of the model on the training runs.
    cv_auroc_std_ : float
    n_train_ : int
    positive_rate_ : float
    """

    feature_names: tuple[str, ...]
    classifier: Any
    cv_auroc_: float
    cv_auroc_std_: float
    n_train_: int
    positive_rate_: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"EscalationModel(cv_auroc={self.cv_auroc_:.3f} ± {self.cv_auroc_std_:.3f}, "
            f"n_train={self.n_train_}, positive_rate={self.positive_rate_:.3f})"
        )

    def _matrix(self, frame: pl.DataFrame) -> np.ndarray:
        missing = [c for c in self.feature_names if c not in frame.columns]
        if missing:
            raise InvalidParameterError(
                f"EscalationModel needs score_runs columns {missing}; pass score_runs output or run features"
            )
        return frame.select(pl.col(c).cast(pl.Float64).fill_null(0.0) for c in self.feature_names).to_numpy()

    def predict_proba(self, frame: pl.DataFrame) -> np.ndarray:
        """Probability that each run needs a human (one value per row of a scored frame)."""
        if frame.height == 0:
            return np.zeros(0)
        return self.classifier.predict_proba(self._matrix(frame))[:, 1]

    def weights(self) -> dict[str, float]:
        """Logistic-regression coefficient per (standardised) feature, averaged over the calibration folds."""
        coefs = [
            cal.estimator.named_steps["logisticregression"].coef_[0]
            for cal in self.classifier.calibrated_classifiers_
        ]
        mean = np.mean(coefs, axis=0)
        return {n: float(w) for n, w in sorted(zip(self.feature_names, mean, strict=True), key=lambda t: -abs(t[1]))}

    def save(self, path: str | Path) -> Path:
        """Pickle the model to ``path`` (e.g. next to the policy file; name it in ``[escalation] model``).

        Pickle runs code when loaded: only load model files you made yourself.
        """
        import sklearn

        p = Path(path)
        payload = {"magic": _MAGIC, "format": _FORMAT_VERSION, "sklearn": sklearn.__version__, "model": self}
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> EscalationModel:
        """Load a model saved by :meth:`save`.

        Uses :mod:`pickle`, which can run arbitrary code: load only files you trust
        (ones you wrote with :meth:`save`). Raises :class:`~driftwatch.errors.InputError`
        when the file is missing or is not a driftwatch escalation model.
        """
        import sklearn

        p = Path(path)
        try:
            with open(p, "rb") as fh:
                payload = pickle.load(fh)  # noqa: S301 - documented trust boundary
        except FileNotFoundError as exc:
            raise InputError(f"escalation model {p}: file not found") from exc
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError,
                KeyError, IndexError, MemoryError, RecursionError) as exc:  # (what garbage makes pickle raise)
            raise InputError(f"escalation model {p}: not a readable driftwatch model ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("magic") != _MAGIC or not isinstance(
            payload.get("model"), EscalationModel
        ):
            raise InputError(f"escalation model {p}: not a driftwatch escalation model file")
        if payload.get("format") != _FORMAT_VERSION:
            raise InputError(
                f"escalation model {p}: format {payload.get('format')}, this driftwatch reads {_FORMAT_VERSION}"
            )
        if payload.get("sklearn") != sklearn.__version__:
            warnings.warn(
                f"escalation model {p} was saved with scikit-learn {payload.get('sklearn')}, "
                f"running {sklearn.__version__}; refit if scores look wrong",
                stacklevel=2,
            )
        return payload["model"]


def _resolve_model(model: EscalationModel | str | Path | None, pol: Policy) -> EscalationModel | None:
    if model is None:
        path = pol.model_path()
        return EscalationModel.load(path) if path is not None else None
    if isinstance(model, EscalationModel):
        return model
    if isinstance(model, str | Path):
        return EscalationModel.load(model)
    raise InvalidParameterError(
        f"model must be an EscalationModel, a path to a saved model or None, got {type(model).__name__}"
    )


def model_feature_names() -> tuple[str, ...]:
    """The columns an :class:`EscalationModel` is trained on."""
    return tuple(f"score_{c}" for c in COMPONENTS) + MODEL_EXTRA


def _labels_for(runs: pl.DataFrame, labels: Any) -> np.ndarray:
    if isinstance(labels, pl.LazyFrame):
        labels = labels.collect()
    if isinstance(labels, pl.DataFrame):
        if "run_id" not in labels.columns:
            raise InvalidParameterError(
                f"labels as a DataFrame need a run_id column and one label column; found {labels.columns}"
            )
        cand = [c for c in labels.columns if c != "run_id"]
        for pref in ("label", "needs_human", "escalated"):
            if pref in cand:
                cand = [pref]
                break
        if len(cand) != 1:
            raise InvalidParameterError(
                f"labels: expected run_id and one label column (or one named 'label'), found {labels.columns}"
            )
        lab = labels.select(pl.col("run_id").cast(pl.String), pl.col(cand[0]).alias("_y")).unique()
        clash = lab.filter(pl.col("run_id").is_duplicated())["run_id"]
        if clash.len():  # one kept at random made the model depend on the labels' row order
            raise InvalidParameterError(
                f"labels: run {clash[0]!r} (and {clash.n_unique() - 1} more) has contradictory labels; "
                "give each run one label"
            )
        j = runs.select("run_id").join(lab, on="run_id", how="left")
        n_missing = j["_y"].null_count()
        if n_missing:
            raise InvalidParameterError(
                f"labels: {n_missing} of {runs.height} runs have no label (join on run_id)"
            )
        y = j["_y"]
    else:
        y = pl.Series("_y", list(labels) if not isinstance(labels, pl.Series | np.ndarray) else labels)
        if y.len() != runs.height:
            raise InvalidParameterError(
                f"labels: expected one label per run ({runs.height}), got {y.len()}"
            )
    if y.dtype != pl.Boolean:
        vals = set(y.drop_nulls().unique().to_list())
        if not vals <= {0, 1}:
            raise InvalidParameterError(f"labels must be booleans or 0/1, found values {sorted(vals)[:5]}")
    return y.cast(pl.Int64).to_numpy()


def fit_escalation(
    runs_or_features: Any,
    labels: Any,
    *,
    policy: Policy | str | Path | None = None,
    loops: pl.DataFrame | pl.LazyFrame | None = None,
    violations: pl.DataFrame | pl.LazyFrame | None = None,
    cv: int = 5,
    random_state: int = 0,
    verbose: bool = False,
) -> EscalationModel:
    """Learn escalation weights from past human review outcomes.

    Parameters
    ----------
    runs_or_features : polars.DataFrame or polars.LazyFrame
        :func:`score_runs` output (preferred), :func:`driftwatch.run_features` output
        (scored here with ``policy``, ``loops``, ``violations``), or canonical events.
    labels : polars.DataFrame, Series or array-like
        Whether each run needed a human: a DataFrame with ``run_id`` and one boolean or
        0/1 column (joined on ``run_id``), or one value per row of ``runs_or_features``.
    policy, loops, violations
        Passed to :func:`score_runs` / :func:`score_runs_from_runs` when the input is
        not already scored.
    cv : int, default=5
        Cross-validation folds, both for the reported AUROC and for calibration.
    random_state : int, default=0
        Seed of the fold split and the anomaly model.
    verbose : bool, default=False
        Print the cross-validated AUROC.

    Returns
    -------
    EscalationModel
        With ``cv_auroc_`` (mean cross-validated AUROC) and ``cv_auroc_std_``.

    Examples
    --------
    >>> import driftwatch as dw
    >>> from driftwatch import synth
    >>> fleet = synth.generate(days=2, runs_per_day=300, seed=3)
    >>> scored = dw.score_runs(fleet.events, loops=fleet.truth["loops"].head(0))
    >>> m = dw.fit_escalation(scored, fleet.truth["runs"].select("run_id", "needs_human"))
    >>> 0.5 <= m.cv_auroc_ <= 1.0
    True
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
        raise InvalidParameterError(f"cv must be an integer >= 2, got {cv!r}")
    random_state = check_seed(random_state)
    data = runs_or_features.collect() if isinstance(runs_or_features, pl.LazyFrame) else runs_or_features
    if hasattr(data, "events") and not isinstance(data, pl.DataFrame):
        data = data.events
        data = data.collect() if isinstance(data, pl.LazyFrame) else data
    if not isinstance(data, pl.DataFrame):
        raise InvalidParameterError(
            f"runs_or_features must be score_runs output, run features or events, got {type(data).__name__}"
        )
    names = model_feature_names()
    if all(c in data.columns for c in names):
        scored = data
    elif "n_steps" in data.columns and "action" not in data.columns:
        scored = score_runs_from_runs(data, policy=policy, loops=loops, violations=violations,
                                      random_state=random_state)
    elif "action" in data.columns:
        if not isinstance(labels, pl.DataFrame | pl.LazyFrame):
            raise InvalidParameterError("labels for an events input must be a DataFrame with run_id")
        scored = score_runs(data, policy=policy, loops=loops, violations=violations, random_state=random_state)
    else:
        raise InvalidParameterError(
            f"runs_or_features must be score_runs output, run features or events; found columns {data.columns}"
        )
    y = _labels_for(scored, labels)
    n_pos = int(y.sum())
    n_neg = int(len(y) - n_pos)
    # the calibration cross-validates inside each training fold: a training fold (cv-1)/cv of
    # each class must still hold cv runs of it (with fewer, scikit-learn's fits failed or the
    # cross-validated AUROC came out NaN)
    need = cv * cv // (cv - 1) + 1
    if min(n_pos, n_neg) < need:
        raise InvalidParameterError(
            f"labels: need at least {need} runs of each class to fit and cross-validate with cv={cv}; "
            f"found {n_pos} needing a human and {n_neg} not (lower cv, or label more runs)"
        )
    X = scored.select(pl.col(c).cast(pl.Float64).fill_null(0.0) for c in names).to_numpy()
    base = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced"))
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    method = "isotonic" if min(n_pos, n_neg) >= 200 else "sigmoid"
    clf = CalibratedClassifierCV(base, method=method, cv=folds)
    aucs = cross_val_score(clf, X, y, cv=folds, scoring="roc_auc")
    clf.fit(X, y)
    model = EscalationModel(
        feature_names=names,
        classifier=clf,
        cv_auroc_=float(np.mean(aucs)),
        cv_auroc_std_=float(np.std(aucs)),
        n_train_=len(y),
        positive_rate_=n_pos / len(y),
        meta={"calibration": method, "cv": cv, "random_state": random_state, "fold_auroc": aucs.tolist()},
    )
    if verbose:
        print(f"fit_escalation: cross-validated AUROC {model.cv_auroc_:.3f} ± {model.cv_auroc_std_:.3f} "
              f"({cv} folds, {len(y)} runs, {n_pos} positive)")
    return model


__all__ = [
    "COMPONENTS",
    "LEVELS",
    "EscalationModel",
    "fit_escalation",
    "model_feature_names",
    "score_runs",
    "score_runs_from_runs",
]

