"""Drift of agent behaviour between a reference period and current windows.

:func:`detect_drift` compares a *reference* (a time range or a frame of
reference events) with *current* windows (by default: everything after a
reference range, or every run a reference frame does not hold, in windows of
``every``) for every series (``by``), and reports one
row per (series, window, feature). Besides ordinary behaviour drift (tool mix,
action sequences, run length, tokens, cost, errors, latency and a multivariate
classifier test) it reports three **feedback-driven drift** indicators, for an
adaptive agent that slowly optimises for its own past behaviour while a proxy
signal keeps looking fine:

* ``action_entropy``: the tool-choice distribution collapsing onto its habits
  (entropy below the reference);
* ``self_similarity``: each window keeps moving the way the previous window
  moved away from the reference, and resembles that window more than the
  reference (the agent imitating itself);
* ``feedback_outcome_gap``: the proxy ``feedback`` rising or holding while the
  business ``outcome`` falls.

Everything is computed for all series and windows at once: one pass builds a
per-run category matrix and per-(series, window) sums, and the tests are numpy
array operations on those (see *Method* in :func:`detect_drift`). The fleet-level
entry point :func:`drift_from_runs` works on the small per-run tables
(:func:`~driftwatch.features.run_features`,
:func:`~driftwatch.features.run_action_counts`,
:func:`~driftwatch.features.run_bigram_counts`) and never reads events.

Examples
--------
>>> import driftwatch as dw
>>> from driftwatch import synth
>>> fleet = synth.generate(days=35, runs_per_day=120, seed=3)
>>> drift = dw.detect_drift(fleet.events, reference=("2026-10-01", "2026-10-15"))
>>> hit = drift.filter(pl.col("drifted") & (pl.col("feature") == "action_entropy"))
>>> hit["series"].unique().to_list()
['agent=planner']
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl
from scipy import sparse, special, stats
from threadpoolctl import threadpool_limits

from driftwatch._frames import (
    as_lazy,
    check_by_types,
    check_seed,
    duration_seconds,
    normalize_by,
    require_timestamps,
    series_expr,
)
from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.features import NUMERIC_RUN_FEATURES, run_action_counts, run_bigram_counts, run_features
from driftwatch.schema import LLM_ACTION, TS_DTYPE

#: Every feature :func:`detect_drift` reports, in output order.
FEATURES: tuple[str, ...] = (
    "tool_mix",
    "action_bigrams",
    "steps_per_run",
    "tokens_per_run",
    "cost_per_run",
    "error_rate",
    "latency",
    "run_classifier",
    "action_entropy",
    "self_similarity",
    "feedback_outcome_gap",
)

#: The feedback-driven drift indicators (fixed names; alerts key on them).
FEEDBACK_FEATURES: tuple[str, ...] = ("action_entropy", "self_similarity", "feedback_outcome_gap")

#: Minimum effect size for ``drifted``, per feature (see ``effect_size`` in :func:`detect_drift`).
DEFAULT_MIN_EFFECT: dict[str, float] = {
    "tool_mix": 0.10,  # Jensen-Shannon distance (base 2, in [0, 1]), corrected for sampling noise
    "action_bigrams": 0.10,  # Jensen-Shannon distance, corrected for sampling noise
    "steps_per_run": 0.25,  # Wasserstein-1 / reference standard deviation
    "tokens_per_run": 0.25,
    "cost_per_run": 0.25,
    "latency": 0.25,
    "error_rate": 0.10,  # Cohen's h
    "run_classifier": 0.20,  # 2 * AUC - 1
    "action_entropy": 0.05,  # relative entropy drop (H_ref - H) / H_ref
    "self_similarity": 0.10,  # JS distance to reference minus JS distance to previous window
    "feedback_outcome_gap": 0.20,  # min(gap widening, outcome drop), in reference standard deviations
}

_METHODS: dict[str, str] = {
    "tool_mix": "wald_clustered+jensen_shannon",
    "action_bigrams": "wald_clustered+jensen_shannon",
    "steps_per_run": "ks+wasserstein",
    "tokens_per_run": "ks+wasserstein",
    "cost_per_run": "ks+wasserstein",
    "latency": "ks+wasserstein",
    "error_rate": "chi2+cohen_h",
    "run_classifier": "c2st_hgb_auc",
    "action_entropy": "entropy_z_one_sided",
    "self_similarity": "persistence_z+js_gap",
    "feedback_outcome_gap": "welch_t_one_sided",
}

# numeric run features: drift feature name -> expression over run_features columns
_NUMERIC: dict[str, pl.Expr] = {
    "steps_per_run": pl.col("n_steps").cast(pl.Float64),
    "tokens_per_run": pl.col("tokens").cast(pl.Float64),
    "cost_per_run": pl.col("cost_usd").cast(pl.Float64),
    # per step that recorded a latency (tool steps only, in many logs: per step of any kind, a
    # change in the mix of LLM and tool steps read as a change of latency); see _latency_expr
    "latency": pl.col("latency_ms").cast(pl.Float64) / pl.col("n_latency").cast(pl.Float64),
}
_NUMERIC_NEEDS: dict[str, tuple[str, ...]] = {
    "steps_per_run": ("n_steps",),
    "tokens_per_run": ("tokens",),
    "cost_per_run": ("cost_usd",),
    "latency": ("latency_ms", "n_steps"),
}

_LABELS: dict[str, tuple[str, str]] = {  # (drifted, not drifted)
    "tool_mix": ("tool mix shifted", "tool mix steady"),
    "action_bigrams": ("action sequences shifted", "action sequences steady"),
    "steps_per_run": ("steps per run changed", "steps per run steady"),
    "tokens_per_run": ("tokens per run changed", "tokens per run steady"),
    "cost_per_run": ("cost per run changed", "cost per run steady"),
    "latency": ("step latency changed", "step latency steady"),
    "error_rate": ("error rate changed", "error rate steady"),
    "run_classifier": ("runs distinguishable from reference", "runs not distinguishable from reference"),
    "action_entropy": ("tool choice narrowing", "tool choice not narrowing"),
    "self_similarity": ("behaviour imitating itself", "no self-reinforcing shift"),
    "feedback_outcome_gap": ("feedback holds while outcome falls", "feedback and outcome in line"),
}

_OUT_COLUMNS: dict[str, pl.DataType] = {
    "series": pl.String(),
    "window_start": TS_DTYPE,
    "window_end": TS_DTYPE,
    "feature": pl.String(),
    "method": pl.String(),
    "statistic": pl.Float64(),
    "p_value": pl.Float64(),
    "q_value": pl.Float64(),
    "drifted": pl.Boolean(),
    "effect_size": pl.Float64(),
    "threshold": pl.Float64(),
    "reference_value": pl.Float64(),
    "current_value": pl.Float64(),
    "n_ref": pl.Int64(),
    "n_cur": pl.Int64(),
    "explain": pl.String(),
}

_OTHER = "(other)"
_QUANTILE_GRID = 256
_CLF_FOLDS = 2
_CLF_SHARES = 8
_RATIOS: dict[str, tuple[str, str]] = {
    "cost_per_token": ("cost_usd", "tokens"),
    "tokens_per_step": ("tokens", "n_steps"),
    "latency_per_step": ("latency_ms", "n_steps"),
}
_EPS = 1e-12
# the features that read each per-run count table
_COUNT_FEATURES: dict[str, set[str]] = {
    "actions": {"tool_mix", "action_entropy", "self_similarity", "run_classifier"},
    "bigrams": {"action_bigrams"},
}

Tables = tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame | None]


# --------------------------------------------------------------------------------------------
# public API


def detect_drift(
    events: Any,
    *,
    reference: Any,
    current: Any = None,
    by: str | Sequence[str] | None = ("agent",),
    every: str = "1w",
    alpha: float = 0.01,
    fdr: str = "series",
    min_effect: Mapping[str, float] | None = None,
    min_runs: int = 20,
    include: Sequence[str] | None = None,
    max_categories: int = 30,
    classifier_max_train: int = 10_000,
    classifier_max_runs: int | None = 5_000,
    random_state: int = 0,
) -> pl.DataFrame:
    """Compare current windows with a reference period, per series and feature.

    Parameters
    ----------
    events : polars.DataFrame, polars.LazyFrame or ReadResult
        Canonical events (the current data, and the reference when
        ``reference`` is a time range).
    reference : tuple of (start, end), str, or frame
        ``(start, end)`` (datetimes, dates or ISO-8601 strings; naive means
        UTC; ``end`` exclusive): the runs of ``events`` whose first step lies
        in the range. A duration string such as ``"14d"``: that long from
        UTC midnight of the first run's day. ``"auto"``: the same with a
        quarter of the data's span, between one and four windows
        (:func:`auto_reference_length`). A frame: reference events of their own.
    current : tuple of (start, end), frame or None, default=None
        ``None``: with a time-range or duration reference, every run of
        ``events`` starting at or after the reference end; with a reference
        frame, every run of ``events`` the reference does not hold (by
        ``run_id``), whenever it starts, so reference logs from the same
        period (a baseline cohort beside a canary) compare, and the same logs
        given as both, or events that also hold the reference's, never put a
        run in both samples. A range: the runs of ``events`` in that range
        (with a reference frame, those it does not hold). A frame: events of
        their own, less any run that is also a reference run (the same
        ``run_id``: frames exported over overlapping periods, or the same
        frame given as both). In every case split into consecutive windows
        of ``every`` (the first starting at the reference end, the range start, or UTC
        midnight of the first current run's day when the reference or the
        current runs are a frame).
    by : str or sequence of str, default=("agent",)
        Run-level columns (``agent``, ``version``) naming the series.
    every : str, default="1w"
        Window length, a Polars duration string (``"1d"``, ``"1w"``).
    alpha : float, default=0.01
        False-discovery rate of the Benjamini-Hochberg correction.
    fdr : {"series", "all"}, default="series"
        The family of the correction: ``"series"`` corrects across the
        features and windows of each series separately (one drifting agent
        does not relax the bar for the others); ``"all"`` corrects across
        every row at once.
    min_effect : mapping of str to float, optional
        Overrides of :data:`DEFAULT_MIN_EFFECT` per feature.
    min_runs : int, default=20
        Windows (and references) with fewer runs in a series are not tested.
    include : sequence of str, optional
        Features to compute (default: all of :data:`FEATURES`). Leaving out
        ``"run_classifier"`` saves most of the time.
    max_categories : int, default=30
        Tools (or bigrams) per series kept as their own category; rarer ones
        are pooled into ``"(other)"``.
    classifier_max_train : int, default=10_000
        Training runs per fold of the classifier two-sample test (a random
        subsample beyond that); every scored run is scored out of fold.
    classifier_max_runs : int or None, default=5_000
        Runs per (series, window) cell, the reference included, that the
        classifier test scores: a larger cell is represented by a seeded
        uniform sample of this many runs (never fewer than ``min_runs``;
        the models still train on runs drawn from all runs), and
        ``n_ref``/``n_cur`` of its rows count the sampled runs. ``None``
        scores every run. With 5,000 runs a side the standard error of a
        cell's AUC is about 0.006 when nothing changed
        (``sqrt((2n + 1) / (12 n^2))``) and at most 0.007 in any case
        (``sqrt(AUC (1 - AUC) / n)``), against the 0.1 shift of the AUC that
        the default threshold (``2 * AUC - 1 >= 0.2``) asks for.
    random_state : int, default=0
        Seed of the classifier, its folds and the reference split.

    Returns
    -------
    polars.DataFrame
        One row per (series, window, feature) that could be tested, sorted by
        ``series, window_start, feature``, with columns ``series``, the ``by``
        columns, ``window_start, window_end`` (UTC), ``feature``, ``method``,
        ``statistic`` (the test statistic), ``p_value``, ``q_value``
        (Benjamini-Hochberg, see ``fdr``), ``drifted`` (``q_value <= alpha`` and
        ``effect_size >= threshold``), ``effect_size``, ``threshold``,
        ``reference_value``, ``current_value`` (means, shares or rates the
        explanation quotes), ``n_ref, n_cur`` (runs) and ``explain``, a
        sentence a person can read.

    Raises
    ------
    InvalidParameterError
        Bad options (``include=[]`` among them), or a reference that holds
        no runs.
    SchemaError
        Events without the required columns, or without a ``by`` column
        (naming the frame that lacks it: ``events``, ``reference`` or
        ``current``).

    Warns
    -----
    UserWarning
        When nothing is compared, saying why: no current run is left (every
        run of ``events``, or of a ``current`` frame, is also in the
        reference; no run starts after the reference or in the ``current``
        range; an empty ``current``), or no series has ``min_runs`` runs in
        its reference and in a window. The result is then empty (but for
        ``no_reference`` rows).

    Notes
    -----
    **Method.** Runs are assigned to windows by their first step. Per series
    and window (all at once, as array operations):

    * ``tool_mix`` / ``action_bigrams``: the distribution of tool calls (LLM
      steps excluded) or of consecutive tool pairs (rare ones pooled into
      ``"(other)"``). Test: a Wald chi-square test of equal shares whose
      covariance is clustered by run (a run that pages through a list 8
      times is one observation, not 8), estimated once per series from all
      its runs. Where no run varies about its window's mix (every reference
      run calls only ``a``, every run of a window only ``b``), the covariance
      of runs each making one choice from the series' pooled shares stands
      in, so a total shift is tested as runs, not read as steady. A series
      with a single category (one tool, or all of them pooled into
      ``"(other)"``) is not tested. Effect: Jensen-Shannon
      distance (base 2), corrected for sampling noise so that small windows
      do not look drifted. The
      explanation also quotes the PSI and names the category whose share
      moved most.
    * ``steps_per_run``, ``tokens_per_run``, ``cost_per_run``, ``latency``
      (mean step latency of a run): two-sample Kolmogorov-Smirnov on runs
      (asymptotic p-value with Stephens' correction). Effect: Wasserstein-1 distance (on a 256-point
      quantile grid) divided by the reference standard deviation (by the
      absolute reference mean when every reference run has the same value).
    * ``error_rate``: share of runs with at least one failed step (runs are
      independent, so error bursts inside one run count once); chi-square;
      effect Cohen's h.
    * ``run_classifier``: a classifier two-sample test. One seeded
      ``HistGradientBoostingClassifier`` (the series is a categorical input)
      learns to tell reference runs from current runs on per-run features
      (``NUMERIC_RUN_FEATURES``, cost per token, tokens and latency per step,
      and the shares of the series' 8 main tools; each robustly standardised
      against its series' reference runs)
      and scores every run out of fold (2 folds; at most
      ``classifier_max_runs`` runs per window and reference, a seeded sample
      of a larger one); the AUC of each window's runs against its series'
      reference runs is the statistic, with a one-sided Mann-Whitney
      p-value. Effect: ``2 * AUC - 1``. For series with a window significant
      before correction, the explanation names the three run features whose
      own AUC departs most from 0.5.
    * ``action_entropy``: Shannon entropy (bits) of the tool mix; one-sided z
      test that it fell below the reference entropy (bias-corrected
      entropies; first- and second-order variance from the clustered
      covariance), combined with the tool-mix test as an intersection-union
      test (the p-value is the larger of the two). Effect: relative entropy
      drop.
    * ``self_similarity`` (windows after the first): the reference is split
      at random into halves A and B; the direction in which the previous
      window departed from A is projected onto the departure of this window
      from B, a one-sided z test (clustered variances) that the window keeps
      moving the same way. Effect: JS distance to the reference minus JS
      distance to the previous window. A drift that has settled persistently
      (a deploy) can also register here; together with ``action_entropy``
      and a growing ``tool_mix`` distance it marks an agent reinforcing its
      own habits.
    * ``feedback_outcome_gap`` (runs logging both ``feedback`` and
      ``outcome``): per run, the standardised feedback minus the standardised
      outcome (reference means and standard deviations); one-sided Welch t
      test that the gap widened. Feedback without any spread in the series
      (a proxy holding at one value) is not standardised: the gap is then
      the outcome drop alone; a series whose outcome never varies is not
      tested. Where the gap has no spread in the reference nor in the window
      (outcome 1 in every reference run, 0 in every current run), the
      standard error of exchangeable runs stands in: ``t = sqrt(n_ref + n_cur
      - 1)``, or 0 with p = 1 for the same value. Effect: the smaller of the gap widening and
      the outcome drop, in reference standard deviations, so a rising proxy
      alone is not an alarm.

    With large samples p-values collapse towards zero, so ``drifted`` needs
    both a q-value at most ``alpha`` and ``effect_size >= threshold``
    (defaults: :data:`DEFAULT_MIN_EFFECT`).

    Examples
    --------
    >>> import driftwatch as dw
    >>> from driftwatch import synth
    >>> fleet = synth.generate(days=35, runs_per_day=120, seed=3)
    >>> d = dw.detect_drift(fleet.events, reference=("2026-10-01", "2026-10-15"),
    ...                     include=["tool_mix", "action_entropy", "feedback_outcome_gap"])
    >>> d.filter("drifted").group_by("series").len().sort("series")["series"].to_list()
    ['agent=planner']
    """
    opts = _Options.make(
        by=by,
        every=every,
        alpha=alpha,
        fdr=fdr,
        min_effect=min_effect,
        min_runs=min_runs,
        include=include,
        max_categories=max_categories,
        classifier_max_train=classifier_max_train,
        classifier_max_runs=classifier_max_runs,
        random_state=random_state,
    )
    lf = as_lazy(events)
    require_timestamps(lf, "drift windows")
    # every frame is checked before any per-run table is computed (a by column missing from the reference
    # logs only is named as theirs)
    _check_by(lf, opts.by, "events")
    ref_lf, cur_lf = _frame_lazy(reference, "reference", opts.by), _frame_lazy(current, "current", opts.by)
    main = _tables_from_events(lf, opts.by)
    ref = None if ref_lf is None else _tables_from_events(ref_lf, opts.by)
    cur = None if cur_lf is None else _tables_from_events(cur_lf, opts.by)
    rows, notes = _drift_of_tables(
        main, reference if ref is None else ref, current if cur is None else cur, opts
    )
    _tell(notes)
    return rows


def drift_from_runs(
    features: pl.DataFrame | pl.LazyFrame,
    action_counts: pl.DataFrame | pl.LazyFrame | None = None,
    bigram_counts: pl.DataFrame | pl.LazyFrame | None = None,
    *,
    reference: Any,
    current: Any = None,
    by: str | Sequence[str] | None = ("agent",),
    every: str = "1w",
    alpha: float = 0.01,
    fdr: str = "series",
    min_effect: Mapping[str, float] | None = None,
    min_runs: int = 20,
    include: Sequence[str] | None = None,
    max_categories: int = 30,
    classifier_max_train: int = 10_000,
    classifier_max_runs: int | None = 5_000,
    random_state: int = 0,
) -> pl.DataFrame:
    """:func:`detect_drift` on per-run tables (the fleet stage of the audit).

    Parameters
    ----------
    features : polars.DataFrame or polars.LazyFrame
        :func:`~driftwatch.features.run_features` output (at least ``run_id``,
        ``first_ts`` and the ``by`` columns; the other columns feed the
        features they name). Chunks may be concatenated.
    action_counts, bigram_counts : polars.DataFrame or LazyFrame, optional
        :func:`~driftwatch.features.run_action_counts` and
        :func:`~driftwatch.features.run_bigram_counts` output; without them
        the tool-mix (and feedback indicators built on it) or bigram rows are
        skipped.
    reference, current
        As in :func:`detect_drift`; frames are canonical events (their
        per-run tables are computed), or a tuple ``(features, action_counts,
        bigram_counts)`` of per-run tables.
    by, every, alpha, fdr, min_effect, min_runs, include, max_categories
        As in :func:`detect_drift`.
    classifier_max_train, classifier_max_runs, random_state
        As in :func:`detect_drift`.

    Returns
    -------
    polars.DataFrame
        Same columns as :func:`detect_drift`.

    Examples
    --------
    >>> from driftwatch import synth, features as F
    >>> ev = synth.generate(days=28, runs_per_day=100, seed=1).events
    >>> d = drift_from_runs(F.run_features(ev), F.run_action_counts(ev), F.run_bigram_counts(ev),
    ...                     reference="14d", include=["tool_mix", "steps_per_run"])
    >>> sorted(d["feature"].unique())
    ['steps_per_run', 'tool_mix']
    """
    opts = _Options.make(
        by=by,
        every=every,
        alpha=alpha,
        fdr=fdr,
        min_effect=min_effect,
        min_runs=min_runs,
        include=include,
        max_categories=max_categories,
        classifier_max_train=classifier_max_train,
        classifier_max_runs=classifier_max_runs,
        random_state=random_state,
    )
    rows, notes = _drift_of_tables((features, action_counts, bigram_counts), reference, current, opts)
    _tell(notes)
    return rows


# why a comparison holds no current run (every run of the data is in the reference logs, none
# starts after the reference, ...): :func:`detect_drift` and :func:`drift_from_runs` warn with it
# (UserWarning), or, inside :func:`_collecting_notes`, add it to that list instead (the audit's
# notes, the CLI's message)
_NOTES: ContextVar[list[str] | None] = ContextVar("driftwatch_drift_notes", default=None)


@contextmanager
def _collecting_notes() -> Iterator[list[str]]:
    """The notes of the drift calls made inside the block (in this thread), instead of warnings."""
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def _tell(notes: list[str]) -> None:
    """Hand ``notes`` to the collecting block, or warn with them (at the public function's caller)."""
    sink = _NOTES.get()
    if sink is not None:
        sink.extend(notes)
        return
    for note in notes:
        warnings.warn(f"drift: nothing to compare: {note}", UserWarning, stacklevel=3)


def _drift_of_tables(main: Any, reference: Any, current: Any, opts: _Options) -> tuple[pl.DataFrame, list[str]]:
    """The drift rows of the per-run tables ``main`` (and why nothing was compared, when so)."""
    main = _check_tables(main, "features")
    notes: list[str] = []
    # the classifier test (model fits and scoring, which release the GIL) runs on a second thread while the
    # other features are computed; scikit-learn is imported there meanwhile
    with ThreadPoolExecutor(max_workers=1) as pool:
        side = pool if "run_classifier" in opts.include and len(opts.include) > 1 else None
        if side is not None:
            side.submit(_import_classifier)
        data, unreferenced = _assemble(main, reference, current, opts, notes)
        few = None if data is None else _too_few(data, opts)
        if few is not None:
            notes.append(few)
        if data is None or few is not None:
            out = _empty(opts.by)
        else:
            # the array work is many small operations: BLAS/OpenMP threads only add overhead (and stall on
            # a busy machine)
            with threadpool_limits(limits=1):
                out = _drift(data, opts, side)
    if unreferenced is None or unreferenced.height == 0:
        return out, notes
    return pl.concat([out, unreferenced.select(out.columns).cast(out.schema)]).sort(  # type: ignore[arg-type]
        "series", "window_start", maintain_order=True), notes


def _too_few(data: _Data, opts: _Options) -> str | None:
    """Why nothing can be tested when no series has ``min_runs`` runs in its reference and in one of its
    windows (every test needs that many), else ``None``."""
    n = np.bincount(data.gid, minlength=data.groups).reshape(data.n_series, data.n_slots)
    ref, cur = n[:, 0], n[:, 1:]
    if ((ref >= opts.min_runs)[:, None] & (cur >= opts.min_runs)).any():
        return None
    m = opts.min_runs
    return (
        f"no series had {m} runs in the reference and {m} in a window (windows are {opts.every} long; "
        f"min_runs={m}): a series holds at most {int(ref.max(initial=0)):,} reference runs and "
        f"{int(cur.max(initial=0)):,} runs in a window; use longer windows or a smaller min_runs"
    )


def _import_classifier() -> None:
    """Import scikit-learn's model (on the classifier's thread, while the main thread assembles the runs)."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: F401


def _drift(data: _Data, opts: _Options, side: ThreadPoolExecutor | None = None) -> pl.DataFrame:
    parts: list[pl.DataFrame] = []
    want = set(opts.include)
    tool = None
    if want & _COUNT_FEATURES["actions"]:
        tool = _category_block(data, "actions", opts)
    # with a second thread, the classifier runs there; it only reads the shared arrays, and its rows go
    # last as before
    clf = None
    if side is not None and "run_classifier" in want:
        data.gid  # noqa: B018 (computed once, before the second thread reads it)
        clf = side.submit(_classifier_rows, data, tool, opts)
    if tool is not None:
        if "tool_mix" in want:
            parts.append(_categorical_rows(data, tool, "tool_mix", opts))
        if "action_entropy" in want:
            parts.append(_entropy_rows(data, tool, opts))
        if "self_similarity" in want:
            parts.append(_self_similarity_rows(data, tool, opts))
    # each block's mapped count rows are released once its sparse runs x categories counts are built
    data._counts.pop("actions", None)
    if "action_bigrams" in want:
        big = _category_block(data, "bigrams", opts)
        data._counts.pop("bigrams", None)
        if big is not None:
            parts.append(_categorical_rows(data, big, "action_bigrams", opts))
        del big
    if "error_rate" in want:
        err = _error_block(data)
        if err is not None:
            parts.append(_categorical_rows(data, err, "error_rate", opts))
        del err
    for name in _NUMERIC:
        if name in want:
            part = _numeric_rows(data, name, opts)
            if part is not None:
                parts.append(part)
    if "feedback_outcome_gap" in want:
        part = _gap_rows(data, opts)
        if part is not None:
            parts.append(part)
    if "run_classifier" in want:
        part = _classifier_rows(data, tool, opts) if clf is None else clf.result()
        if part is not None:
            parts.append(part)
    parts = [p for p in parts if p.height]
    if not parts:
        return _empty(opts.by)
    return _finish(pl.concat(parts, how="diagonal_relaxed"), data, opts)


# --------------------------------------------------------------------------------------------
# options and inputs


@dataclass(frozen=True)
class _Options:
    by: tuple[str, ...]
    every_us: int
    alpha: float
    fdr: str
    min_effect: dict[str, float]
    min_runs: int
    include: tuple[str, ...]
    max_categories: int
    classifier_max_train: int
    classifier_max_runs: int | None
    random_state: int
    every: str = ""  # as given (for notes)

    @classmethod
    def make(cls, **kw: Any) -> _Options:
        by = normalize_by(kw["by"])
        for c in by:
            if not isinstance(c, str):
                raise InvalidParameterError(f"by must name columns (strings), got {kw['by']!r}")
        every_us = int(round(duration_seconds(kw["every"], name="every") * 1e6))
        if every_us <= 0:
            raise InvalidParameterError(f"every must be a positive duration, got {kw['every']!r}")
        alpha = kw["alpha"]
        if not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise InvalidParameterError(f"alpha must be a number in (0, 1), got {alpha!r}")
        if kw["fdr"] not in ("series", "all"):
            raise InvalidParameterError(f"fdr must be 'series' or 'all', got {kw['fdr']!r}")
        me = dict(DEFAULT_MIN_EFFECT)
        if kw["min_effect"] is not None:
            if not isinstance(kw["min_effect"], Mapping):
                raise InvalidParameterError(
                    "min_effect must be a mapping of feature name to minimum effect size, e.g. "
                    f"{{'tool_mix': 0.15}}; got {kw['min_effect']!r}"
                )
            for k, v in kw["min_effect"].items():
                if k not in me:
                    raise InvalidParameterError(f"min_effect has unknown feature {k!r}; features are {list(FEATURES)}")
                # a negative floor (effects of some features can be negative) or NaN would turn it off
                if not isinstance(v, numbers.Real) or isinstance(v, bool | np.bool_) or not (
                    np.isfinite(v) and v >= 0
                ):
                    raise InvalidParameterError(
                        f"min_effect[{k!r}] must be a finite number >= 0 (the minimum effect size for "
                        f"'drifted'), got {v!r}"
                    )
                me[k] = float(v) + 0.0  # (-0.0 reads 0.0)
        min_runs = kw["min_runs"]
        if not isinstance(min_runs, numbers.Integral) or isinstance(min_runs, bool | np.bool_) or min_runs < 2:
            raise InvalidParameterError(f"min_runs must be an integer >= 2, got {min_runs!r}")
        min_runs = int(min_runs)
        inc = kw["include"]
        if inc is None:
            include = FEATURES
        else:
            if isinstance(inc, str):
                inc = (inc,)
            bad = [f for f in inc if f not in FEATURES]
            if bad:
                raise InvalidParameterError(f"include has unknown feature(s) {bad}; features are {list(FEATURES)}")
            include = tuple(f for f in FEATURES if f in set(inc))
            if not include:
                raise InvalidParameterError(
                    f"include must name at least one feature, got {list(inc)!r}; features are {list(FEATURES)}"
                )
        mc = kw["max_categories"]
        if not isinstance(mc, int) or isinstance(mc, bool) or mc < 2:
            raise InvalidParameterError(f"max_categories must be an integer >= 2, got {mc!r}")
        cmt = kw["classifier_max_train"]
        if not isinstance(cmt, int) or isinstance(cmt, bool) or cmt < 50:
            raise InvalidParameterError(f"classifier_max_train must be an integer >= 50, got {cmt!r}")
        cmr = kw["classifier_max_runs"]
        if cmr is not None and (not isinstance(cmr, int) or isinstance(cmr, bool) or cmr < 100):
            raise InvalidParameterError(f"classifier_max_runs must be None or an integer >= 100, got {cmr!r}")
        rs = check_seed(kw["random_state"])
        return cls(by, every_us, float(alpha), kw["fdr"], me, min_runs, include, mc, cmt, cmr, rs, str(kw["every"]))


def _is_frame(x: Any) -> bool:
    return isinstance(x, pl.DataFrame | pl.LazyFrame) or (
        hasattr(x, "events") and isinstance(getattr(x, "events", None), pl.DataFrame | pl.LazyFrame)
    )


def _tables_from_events(lf: pl.LazyFrame, by: Sequence[str] = (), name: str | None = None) -> Tables:
    """The per-run tables of events; ``by`` columns that are not features are carried.

    With ``name`` (``"reference"``, ``"current"``), a ``by`` column the events lack is named as theirs.
    """
    if name is not None:
        _check_by(lf, by, name)
    return run_features(lf, by=by), run_action_counts(lf), run_bigram_counts(lf)


def _check_by(lf: pl.LazyFrame, by: Sequence[str], name: str) -> None:
    """Raise :class:`SchemaError` naming ``name`` when its events lack a ``by`` column."""
    have = lf.collect_schema().names()
    missing = [c for c in by if c not in have]
    if missing:  # (a by column may also name a per-run feature: the columns of an empty table)
        feats = run_features(lf.head(0)).columns
        missing = [c for c in missing if c not in feats]
    if missing:
        where = "events" if name == "events" else f"the {name} events"
        raise SchemaError(f"{name}: by column(s) {missing} not in {where}; found {have}")


def _frame_lazy(x: Any, name: str, by: Sequence[str] = ()) -> pl.LazyFrame | None:
    """An events frame as a checked lazy frame (timestamps, ``by`` columns); anything else -> None."""
    if not _is_frame(x):
        return None
    lf = as_lazy(x, name=name)
    require_timestamps(lf, "drift windows", name=name)
    _check_by(lf, by, name)
    return lf


def _collect(x: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    return x.collect() if isinstance(x, pl.LazyFrame) else x


def _check_tables(t: Sequence[Any], name: str) -> Tables:
    feats, acts, bigr = t
    if not isinstance(feats, pl.DataFrame | pl.LazyFrame):
        raise InvalidParameterError(
            f"{name} must be a polars DataFrame or LazyFrame of per-run features "
            f"(driftwatch.features.run_features), got {type(feats).__name__}"
        )
    feats = _collect(feats)
    missing = [c for c in ("run_id", "first_ts") if c not in feats.columns]
    if missing:
        raise SchemaError(f"{name}: per-run features need column(s) {missing}; found {feats.columns}")
    if not isinstance(feats.schema["first_ts"], pl.Datetime):
        raise SchemaError(f"{name}: column 'first_ts' must be a datetime, found {feats.schema['first_ts']}")
    dtype = feats.schema["first_ts"]
    if dtype != TS_DTYPE:
        ts = pl.col("first_ts")
        ts = ts.dt.replace_time_zone("UTC") if dtype.time_zone is None else ts.dt.convert_time_zone("UTC")  # type: ignore[union-attr]
        feats = feats.with_columns(ts.dt.cast_time_unit("us"))
    out: list[pl.DataFrame | None] = [feats]
    for tab, col, label in ((acts, "action", "action_counts"), (bigr, "bigram", "bigram_counts")):
        if tab is None:
            out.append(None)
            continue
        if not isinstance(tab, pl.DataFrame | pl.LazyFrame):
            raise InvalidParameterError(f"{label} must be a polars DataFrame or LazyFrame, got {type(tab).__name__}")
        tab = _collect(tab)
        need = [c for c in ("run_id", col, "n") if c not in tab.columns]
        if need:
            raise SchemaError(f"{label}: need column(s) {need}; found {tab.columns}")
        cat = pl.col(col) if isinstance(tab.schema[col], pl.Categorical | pl.Enum) else pl.col(col).cast(pl.String)
        # integer or float counts stay as they are (a Float64 copy of 30M counts is 250 MB): _map_counts reads
        # them into numpy
        dt = tab.schema["n"]
        n = pl.col("n") if dt.is_integer() or dt.is_float() else pl.col("n").cast(pl.Float64)
        out.append(tab.select("run_id", cat.alias("category"), n))
    return out[0], out[1], out[2]  # type: ignore[return-value]


def _to_utc(x: Any, name: str) -> datetime:
    if isinstance(x, str):
        try:
            x = datetime.fromisoformat(x.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidParameterError(f"{name}: expected an ISO-8601 date or datetime, got {x!r}") from None
    elif isinstance(x, np.datetime64):
        x = datetime.fromtimestamp(int(x.astype("datetime64[us]").astype(np.int64)) / 1e6, tz=UTC)
    elif isinstance(x, date) and not isinstance(x, datetime):
        x = datetime(x.year, x.month, x.day)
    if not isinstance(x, datetime):
        raise InvalidParameterError(f"{name}: expected a datetime, date or ISO-8601 string, got {x!r}")
    return x.replace(tzinfo=UTC) if x.tzinfo is None else x.astimezone(UTC)


def _range(x: Any, name: str) -> tuple[datetime, datetime]:
    start, end = _to_utc(x[0], f"{name}[0]"), _to_utc(x[1], f"{name}[1]")
    if not start < end:
        raise InvalidParameterError(f"{name} must be a (start, end) range with start < end, got {start} .. {end}")
    return start, end


def _is_range(x: Any) -> bool:
    return isinstance(x, tuple | list) and len(x) == 2 and not any(_is_frame(v) for v in x)


def _is_tables(x: Any) -> bool:
    return isinstance(x, tuple | list) and len(x) == 3 and isinstance(x[0], pl.DataFrame | pl.LazyFrame)


@dataclass
class _Counts:
    """One per-run count table mapped onto the runs: a row per (run, category) count."""

    row: np.ndarray  # _row of the run (int32 unless there are 2**31 runs)
    code: np.ndarray  # index into names (int32)
    n: np.ndarray  # the count (float32 for whole counts below 2**24, else float64)
    names: np.ndarray  # category names (object), sorted
    whole: bool = True  # every count a whole number: sums of counts are exact in any order


class _Runs:
    """The run columns the features read, in row order, gathered from their source tables when asked for.

    A sorted copy of all of them would live through the whole computation (0.7 GB at 7M runs); each test
    reads a column or two (the classifier a sample of the rows).

    Parameters
    ----------
    sources : list of polars.DataFrame
        The per-run tables the runs come from (one, or the reference and the current tables).
    src : numpy.ndarray
        Per run (row order): the index of its source.
    orig : numpy.ndarray
        Per run (row order): its row in its source.
    """

    def __init__(self, sources: list[pl.DataFrame], src: np.ndarray, orig: np.ndarray) -> None:
        self.sources = [t.select([c for c in t.columns if c in _RUN_COLUMNS]) for t in sources]  # no copies
        self.src = src
        self.orig = orig
        self.height = int(orig.size)
        self.columns = list(dict.fromkeys(c for t in self.sources for c in t.columns))

    def frame(self, columns: Sequence[str], rows: np.ndarray | None = None) -> pl.DataFrame:
        """The ``columns`` (those there are) of the runs ``rows`` (all by default), in that order.

        With two sources, a column only one of them has is null for the other's runs, and a column of two
        types gets their common supertype (as a diagonal concatenation of the sources makes it).
        """
        cols = [c for c in dict.fromkeys(columns) if c in self.columns]
        orig = self.orig if rows is None else self.orig[rows]
        if len(self.sources) == 1:
            return self.sources[0].select(cols)[orig]
        src = self.src if rows is None else self.src[rows]
        parts = []
        for i, t in enumerate(self.sources):
            at = orig[src == i]
            have = [c for c in cols if c in t.columns]
            part = t.select(have)[at] if have else pl.select(pl.repeat(None, at.size).alias(cols[0]))
            parts.append(part.with_columns([pl.lit(None).alias(c) for c in cols if c not in part.columns]))
        both = pl.concat(parts, how="diagonal_relaxed")  # the runs of source 0, then those of source 1
        back = np.empty(src.size, dtype=np.int64)
        back[np.argsort(src, kind="stable")] = np.arange(src.size)
        return both[back].select(cols)

    def column(self, name: str) -> pl.Series:
        """One column of all runs, in row order."""
        return self.frame([name]).to_series()


@dataclass
class _Data:
    """All runs of the comparison, sorted by (series, slot, source, run_id); slot 0 is the reference."""

    runs: _Runs  # the run columns the features read, in row order
    # "actions" / "bigrams": per source, (count table, the source's run ids, source row -> _row or -1)
    count_parts: dict[str, list[tuple[pl.DataFrame, pl.Series, np.ndarray]]]
    series: pl.DataFrame  # _s, series, by columns
    n_series: int
    n_slots: int
    origin: datetime
    s: np.ndarray  # per run (row order; int32 unless there are 2**31 runs or groups)
    slot: np.ndarray
    end: datetime | None = None  # the end of a current range: the last window ends there
    _counts: dict[str, _Counts | None] = field(default_factory=dict)

    def counts(self, kind: str) -> _Counts | None:
        """The count table ``kind`` mapped onto the runs (LLM steps left out of "actions"), once, when first asked."""
        if kind not in self._counts:
            parts = self.count_parts.get(kind)
            drop = LLM_ACTION if kind == "actions" else None
            self._counts[kind] = None if parts is None else _map_counts(parts, drop=drop)
        return self._counts[kind]

    @property
    def groups(self) -> int:
        return self.n_series * self.n_slots

    @cached_property
    def gid(self) -> np.ndarray:
        return self.s.astype(np.int64) * self.n_slots + self.slot


# run columns some feature reads (the rest of the per-run table is not carried along)
_RUN_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            *NUMERIC_RUN_FEATURES,
            *(c for need in _NUMERIC_NEEDS.values() for c in need),
            *(c for pair in _RATIOS.values() for c in pair),
            "n_latency",
            "n_errors",
            "feedback",
            "outcome",
        ]
    )
)


def _assemble(
    main: Tables, reference: Any, current: Any, opts: _Options, notes: list[str] | None = None
) -> tuple[_Data | None, pl.DataFrame | None]:
    """The runs of the comparison, and the ``no_reference`` rows of the series that have
    current runs but no reference runs (a new agent or version: nothing to compare them with).

    When there is no current run, ``(None, None)``, and why is added to ``notes``.
    """
    notes = [] if notes is None else notes
    first = main[0]["first_ts"]
    # ---- reference
    if isinstance(reference, str):
        if first.is_empty() or first.null_count() == first.len():
            raise InvalidParameterError("reference: the per-run table is empty, so a duration reference has no start")
        fmin: datetime = first.min()  # type: ignore[assignment]
        start = datetime(fmin.year, fmin.month, fmin.day, tzinfo=UTC)  # UTC midnight of the first run
        if reference == "auto":
            dur = auto_reference_length(first.max() - start, timedelta(microseconds=opts.every_us))  # type: ignore[operator]
        else:
            dur = timedelta(seconds=duration_seconds(reference, name="reference"))
        ref_tabs, ref_lo, ref_hi, src_ref = main, start, start + dur, 0
    elif _is_range(reference):
        lo, hi = _range(reference, "reference")
        ref_tabs, ref_lo, ref_hi, src_ref = main, lo, hi, 0
    elif _is_tables(reference):
        ref_tabs = _check_tables(reference, "reference")
        ref_lo = ref_hi = None
        src_ref = 1
    elif _is_frame(reference):
        ref_tabs = _tables_from_events(as_lazy(reference, name="reference"), opts.by, "reference")
        ref_tabs = _check_tables(ref_tabs, "reference")
        ref_lo = ref_hi = None
        src_ref = 1
    else:
        raise InvalidParameterError(
            "reference must be a (start, end) range, a duration string like '14d', 'auto', a frame of reference "
            f"events or a tuple (features, action_counts, bigram_counts); got {type(reference).__name__}"
        )
    ref_runs = _window_frame(ref_tabs[0], ref_lo, ref_hi, None, 0, src_ref, opts.by)
    if ref_runs.height == 0 and ref_lo is None:  # reference logs (a frame or per-run tables)
        h = ref_tabs[0].height
        raise InvalidParameterError(
            "reference holds no runs: the reference frame is empty" if h == 0 else
            f"reference holds no runs: none of the reference frame's {h:,} runs has a timestamp"
        )
    if ref_runs.height == 0:
        span = (first.min(), first.max()) if first.len() else (None, None)
        raise InvalidParameterError(
            f"reference holds no runs (range {ref_lo} .. {ref_hi}); the runs start between {span[0]} and {span[1]}"
        )
    # ---- current
    # With reference logs (src_ref 1) the current runs of the data are those the reference logs do not hold
    # (by run_id), wherever they lie in time: the same logs given as both, or data that holds the reference
    # files, never put a run in both samples, and a late step in the reference logs cuts nothing.
    logs = src_ref == 1
    keep = None  # with reference logs, the runs of the data they do not hold
    if logs and (current is None or _is_range(current)):
        keep = _outside(main[0], ref_tabs[0]["run_id"])
    n_runs = int(first.len() - first.null_count())
    if current is None and not logs:
        cur_tabs, lo, hi, origin, src_cur = main, ref_hi, None, ref_hi, 0
        why = (f"no run of the data starts at or after the reference's end ({_when(ref_hi)}); the last run "
               f"starts {_when(first.max())}" if n_runs else "the data holds no runs")
    elif current is None:
        cur_tabs, lo, hi, src_cur = main, None, None, 0
        fmin = first.filter(keep).min()  # type: ignore[arg-type]
        if fmin is None:
            notes.append("the data holds no runs" if n_runs == 0 else (
                f"every run of the data ({n_runs:,}) is also in the reference (the same run_id), so no run is left "
                "to compare with it; give data with runs of its own (not the reference logs, nor logs that hold "
                "them)"))
            return None, None
        origin = datetime(fmin.year, fmin.month, fmin.day, tzinfo=UTC)  # type: ignore[attr-defined]
        why = ""  # (there are current runs)
    elif _is_range(current):
        lo, hi = _range(current, "current")
        if src_ref == 0 and ref_lo is not None and lo < ref_hi and hi > ref_lo:
            raise InvalidParameterError(
                f"current ({lo} .. {hi}) overlaps the reference ({ref_lo} .. {ref_hi}): its runs would be in both "
                "samples; start the current range at or after the reference's end"
            )
        cur_tabs, origin, src_cur = main, lo, 0
        why = f"no run of the data starts in current ({_when(lo)} .. {_when(hi)})" + (
            " outside the reference" if logs else "")
    elif _is_tables(current) or _is_frame(current):
        cur_tabs = _check_tables(current, "current") if _is_tables(current) else _check_tables(
            _tables_from_events(as_lazy(current, name="current"), opts.by, "current"), "current"
        )
        lo = hi = None
        # a run of the current frame that is also a reference run (the same run_id: frames exported
        # over overlapping periods, the same frame given as both) is left out of the current sample, as
        # with current=None or a range: no run is in both samples
        cur_first = cur_tabs[0]["first_ts"]
        n_cur = int(cur_first.len() - cur_first.null_count())
        ref_ids = ref_tabs[0]["run_id"] if logs else ref_tabs[0]["run_id"].gather(ref_runs["_orig"])
        keep = _outside(cur_tabs[0], ref_ids)
        fmin = cur_first.filter(keep).min()
        why = "current holds no runs" if n_cur == 0 else (
            f"every run of current ({n_cur:,}) is also in the reference (the same run_id), so no run is left to "
            "compare with it; give current runs of their own (not the reference's, nor runs that hold them)")
        if fmin is None:
            notes.append(why)
            return None, None
        origin = datetime(fmin.year, fmin.month, fmin.day, tzinfo=UTC)  # type: ignore[attr-defined]
        src_cur = 2
    else:
        raise InvalidParameterError(
            "current must be None, a (start, end) range, a frame of events or a tuple of per-run tables; "
            f"got {type(current).__name__}"
        )
    cur_runs = _window_frame(cur_tabs[0], lo, hi, origin, opts.every_us, src_cur, opts.by, keep)
    if cur_runs.height == 0:
        notes.append(why)
        return None, None
    for c in opts.by:
        for label, fr in (("reference", ref_tabs[0]), ("current", cur_tabs[0])):
            if c not in fr.columns:
                raise SchemaError(f"{label}: by column {c!r} is not in the per-run features; found {fr.columns}")
    runs = pl.concat([ref_runs, cur_runs], how="diagonal_relaxed")
    slot = runs["_slot"].to_numpy()
    src = runs["_src"].to_numpy().astype(np.int64)
    # ---- series: those with reference runs, numbered in name order
    code, series = _series_codes(runs, opts.by)
    has_ref = np.bincount(code[slot == 0], minlength=series.height) > 0
    unreferenced = None
    if not has_ref.all():
        unreferenced = _unreferenced_rows(code, slot, series, has_ref, origin, opts, hi)
        keep_series = np.flatnonzero(has_ref)
        renum = np.full(series.height, -1, dtype=np.int64)
        renum[keep_series] = np.arange(keep_series.size)
        series = series[keep_series]
        code = renum[code]
    keep = code >= 0
    if not (keep & (slot > 0)).any():
        return None, unreferenced
    names_order = np.asarray(series.select(pl.col("series").arg_sort()).to_series().to_numpy(), dtype=np.int64)
    s_of = np.empty(series.height, dtype=np.int64)
    s_of[names_order] = np.arange(series.height)
    series = (
        series[names_order].with_row_index("_s").with_columns(pl.col("_s").cast(pl.Int64))
    )
    n_slots = int(slot[keep].max()) + 1
    if series.height * n_slots > 2_000_000:
        raise InvalidParameterError(
            f"every={timedelta(microseconds=opts.every_us)} gives {n_slots - 1} windows for {series.height} "
            "series; use a longer window"
        )
    # ---- row order: (series, slot, source, run_id), as integer keys (a run_id's rank within its source table)
    tabs_of = {src_ref: ref_tabs, src_cur: cur_tabs}
    orig = runs["_orig"].to_numpy().astype(np.int64)
    rank = np.empty(runs.height, dtype=np.int64)
    del runs
    for sv, t in tabs_of.items():
        at = src == sv
        rank[at] = _run_id_rank(t[0]["run_id"])[orig[at]]
    m = int(max(t[0].height for t in tabs_of.values())) + 1
    s = np.where(keep, s_of[np.maximum(code, 0)], 0)
    key = ((s * n_slots + slot) * 3 + src) * m + rank
    order = np.flatnonzero(keep)
    order = order[np.argsort(key[order])]  # keys are unique: (source, rank) names one row
    del key, rank
    s, slot, src, orig = s[order], slot[order], src[order], orig[order]
    idt = np.int32 if orig.size < 2**31 else np.int64
    # ---- per-run counts (mapped onto rows when a feature first asks for them)
    count_parts: dict[str, list[tuple[pl.DataFrame, pl.Series, np.ndarray]]] = {}
    for i, kind in ((1, "actions"), (2, "bigrams")):
        if not set(opts.include) & _COUNT_FEATURES[kind]:
            continue  # no feature asked for reads this table
        parts = []
        for sv, t in tabs_of.items():
            if t[i] is None:
                continue
            rowmap = np.full(t[0].height, -1, dtype=idt)
            at = np.flatnonzero(src == sv)
            rowmap[orig[at]] = at
            parts.append((t[i], t[0]["run_id"], rowmap))
        if len(parts) == len(tabs_of):
            count_parts[kind] = parts
    srcs = sorted(tabs_of)
    # per-run numbers in 32 bits (they live through the whole computation); group ids are computed in 64
    small = np.int32 if max(series.height * n_slots, int(orig.max(initial=0)) + 1) < 2**31 else np.int64
    runs = _Runs([tabs_of[v][0] for v in srcs], np.searchsorted(srcs, src).astype(np.int8), orig.astype(small))
    s, slot = s.astype(small), slot.astype(small)
    return _Data(
        runs=runs,
        count_parts=count_parts,
        series=series,
        n_series=series.height,
        n_slots=n_slots,
        origin=origin,
        s=s,
        slot=slot,
        end=hi,
    ), unreferenced


def _window_end(start: pl.Expr, every_us: int, end: datetime | None) -> pl.Expr:
    """A window's end: ``every`` after its start, or the end of the current range if that is sooner."""
    full = start + pl.duration(microseconds=every_us)
    return full if end is None else pl.min_horizontal(full, pl.lit(end, dtype=TS_DTYPE))


def _unreferenced_rows(
    code: np.ndarray, slot: np.ndarray, series: pl.DataFrame, has_ref: np.ndarray, origin: datetime, opts: _Options,
    end: datetime | None = None,
) -> pl.DataFrame:
    """One ``no_reference`` row per window of a series without reference runs: it is not compared
    (``drifted`` false, no statistic), but it is there, so a new agent or a version deployed after
    the reference does not vanish from the result."""
    new = ~has_ref[code] & (slot > 0)
    cells = pl.DataFrame({"_c": code[new], "_slot": slot[new]}).group_by("_c", "_slot").len("n_cur")
    names = series.with_row_index("_c").with_columns(pl.col("_c").cast(pl.Int64))
    start = pl.lit(origin, dtype=TS_DTYPE) + pl.duration(microseconds=(pl.col("_slot").cast(pl.Int64) - 1) * opts.every_us)
    return (
        cells.with_columns(pl.col("_c").cast(pl.Int64))
        .join(names, on="_c", how="left")
        .with_columns(
            start.alias("window_start"),
            _window_end(start, opts.every_us, end).alias("window_end"),
            pl.lit("no_reference").alias("feature"),
            pl.lit("none").alias("method"),
            pl.lit(False).alias("drifted"),
            pl.lit(0, dtype=pl.Int64).alias("n_ref"),
            pl.format("{}: no reference runs (a new agent, version or other series value), not compared; "
                      "{} runs in this window", "series", "n_cur").alias("explain"),
            *[pl.lit(None, dtype=pl.Float64).alias(c) for c in ("statistic", "p_value", "q_value", "effect_size",
                                                               "threshold", "reference_value", "current_value")],
        )
        .sort("series", "window_start")
    )


def _series_codes(runs: pl.DataFrame, by: tuple[str, ...]) -> tuple[np.ndarray, pl.DataFrame]:
    """Each run's series as an index into a frame of the distinct series (``series`` and the ``by`` columns)."""
    h = runs.height
    if not by:
        return np.zeros(h, dtype=np.int64), pl.DataFrame({"series": ["all"]})
    check_by_types(runs.schema, by)  # (a list of tags cannot name a series)
    key = np.zeros(h, dtype=np.int64)
    size = 1
    for c in by:  # mixed-radix key of the by columns' value codes (null reads "null", as in the name)
        v = runs[c].cast(pl.String).fill_null("null")
        u = v.unique()
        key += v.cast(pl.Enum(u)).to_physical().to_numpy().astype(np.int64) * size
        size *= max(u.len(), 1)
        if size > 2**40:  # too many combinations for a direct key: compress
            uk, key = np.unique(key, return_inverse=True)
            size = uk.size
    if size <= 4 * h + 1024:
        present = np.bincount(key, minlength=size) > 0
        idx = np.cumsum(present) - 1
        code = idx[key]
        n = int(present.sum())
    else:
        _, code = np.unique(key, return_inverse=True)
        n = int(code.max()) + 1
    first = np.full(n, h, dtype=np.int64)
    np.minimum.at(first, code, np.arange(h, dtype=np.int64))
    series = runs[first].select(series_expr(by), *by)
    return code.astype(np.int64), series


def _run_id_rank(run_id: pl.Series) -> np.ndarray:
    """Each row's position when the table is sorted by ``run_id`` (nulls first; fast when already sorted)."""
    order = run_id.arg_sort().to_numpy()
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return rank


# values of the first column per step of the sorted merge (a merge of two columns of 7M run ids at once makes
# about 0.5 GB of temporaries)
_MERGE_STEP = 1 << 20


def _merge_sorted_ids(a: pl.Series, b: pl.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """Positions ``(i, j)`` of the equal values of two sorted string columns, found by merging them.

    ``None`` (use a join) unless both are sorted, free of nulls and of repeated values. The merge goes
    in steps of ``a``, each with the stretch of ``b`` between the step's first and last value.
    """
    if a.null_count() or b.null_count() or not (a.is_sorted() and b.is_sorted()):
        return None
    for col in (a, b):  # a value repeated within one column (next to each other: the column is sorted)
        if col.len() > 1 and col.slice(1).eq(col.slice(0, col.len() - 1)).any():
            return None
    tag = pl.Int64
    gs, fs = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for lo in range(0, a.len(), _MERGE_STEP):
        part = a.slice(lo, _MERGE_STEP)
        b_lo = b.search_sorted(part[0], side="left")
        b_hi = b.search_sorted(part[-1], side="right")
        if b_hi <= b_lo:  # no value of b in the step's range
            continue
        m = pl.DataFrame({"k": part, "i": pl.int_range(lo, lo + part.len(), dtype=tag, eager=True)}).merge_sorted(
            pl.DataFrame({"k": b.slice(b_lo, b_hi - b_lo), "i": -1 - pl.int_range(b_lo, b_hi, dtype=tag, eager=True)}),
            key="k",
        )
        k, i = m["k"], m["i"].to_numpy()
        eq = np.flatnonzero(k.slice(1).eq(k.slice(0, m.height - 1)).to_numpy())
        x, y = i[eq], i[eq + 1]
        gs.append(np.where(x >= 0, x, y))
        fs.append(-1 - np.where(x >= 0, y, x))
        del m, k, i
    return np.concatenate(gs), np.concatenate(fs)


def _category_codes(col: pl.Series) -> tuple[np.ndarray, list[str]]:
    """Codes of a string or categorical column and the names they stand for.

    Nulls get code ``-1`` or ``len(names)`` (both pick the last entry of a lookup table with one entry
    past the names). The codes are 32-bit: at 30M count rows an int64 copy is 250 MB.
    """
    if isinstance(col.dtype, pl.Categorical | pl.Enum):  # the physical codes are codes already
        phys = col.to_physical()
        first = phys.arg_unique()  # the first row of each code
        used = phys.gather(first)
        ok = used.is_not_null()
        used = used.filter(ok).to_numpy().astype(np.int64)
        lut = np.full(int(used.max()) + 2 if used.size else 1, -1, dtype=np.int32)
        lut[used] = np.arange(used.size)
        return lut[phys.fill_null(lut.size - 1).to_numpy()], col.gather(first).filter(ok).cast(pl.String).to_list()
    names = col.drop_nulls().unique()
    code = col.cast(pl.Enum(names)).to_physical().fill_null(names.len()).to_numpy()
    return code, names.to_list()


def _count_values(col: pl.Series) -> tuple[np.ndarray, bool]:
    """A count column as floats, and whether every count is a whole number.

    Whole numbers below ``2**24`` come as float32 (exact; half the memory), anything else as float64.
    Sums of whole counts are exact, so they do not depend on the order of the additions.
    """
    if col.dtype.is_integer() and col.null_count() == 0:
        small = col.len() == 0 or (col.min() > -(2**24) and col.max() < 2**24)  # type: ignore[operator]
        out = np.empty(col.len(), dtype=np.float32 if small else np.float64)
        lo = 0
        for chunk in col.get_chunks():  # chunk by chunk (no contiguous int64 copy of a chunked column)
            out[lo : lo + chunk.len()] = chunk.to_numpy()
            lo += chunk.len()
        return out, True
    n = np.asarray(col.to_numpy(), dtype=np.float64)
    whole = bool(np.all(np.trunc(n) == n)) and (n.size == 0 or float(np.abs(n).max()) < 2**53)
    if whole and (n.size == 0 or float(np.abs(n).max()) < 2**24):
        return n.astype(np.float32), True
    return n, whole


# rows per step when a column is compared with itself shifted by one row
_SHIFT_STEP = 1 << 22


def _run_starts(rid: pl.Series) -> np.ndarray:
    """Where a new value starts (``True`` at row 0 and wherever a row differs from the one before, nulls alike).

    In steps: comparing a column of many chunks with itself shifted by a row at once realigns (copies)
    both sides (0.5 GB for 30M run ids).
    """
    h = rid.len()
    new = np.ones(h, dtype=bool)
    for lo in range(0, h - 1, _SHIFT_STEP):
        part = rid.slice(lo, _SHIFT_STEP + 1)
        new[lo + 1 : lo + part.len()] = part.slice(1).ne_missing(part.slice(0, part.len() - 1)).to_numpy()
    return new


def _map_counts(parts: list[tuple[pl.DataFrame, pl.Series, np.ndarray]], drop: str | None) -> _Counts | None:
    """Count tables (each with its source's run ids and source row -> ``_row`` map) as arrays."""
    coded: list[tuple[np.ndarray, list[str]] | None] = [_category_codes(tab["category"]) for tab, _, _ in parts]
    names = pl.Series(sorted({x for c in coded if c is not None for x in c[1]} - {drop}), dtype=pl.String).sort()
    if names.len() == 0:
        return None
    index = {x: i for i, x in enumerate(names.to_list())}
    n_rows = max((int(rowmap.max()) + 1 if rowmap.size else 0) for _, _, rowmap in parts)
    idt = np.int32 if n_rows < 2**31 else np.int64  # row numbers (30M count rows: 120 MB instead of 240 MB)
    rows, codes, ns = [], [], []
    whole = True
    for i, (tab, run_id, rowmap) in enumerate(parts):
        part_code, part_names = coded[i]  # type: ignore[misc]
        coded[i] = None  # released once mapped
        h = tab.height
        if h == 0:
            continue
        # count tables come grouped by run: match each stretch of one run_id once
        rid = tab["run_id"]
        new = _run_starts(rid)
        at = np.flatnonzero(new)
        del new
        firsts, lens = rid.gather(at), np.diff(np.append(at, h))
        del at
        if firsts.len() == run_id.len() and bool((firsts == run_id).fill_null(False).all()):
            g = f = np.arange(firsts.len())  # the usual case: the same runs in the same order
        elif (pairs := _merge_sorted_ids(firsts, run_id)) is not None:
            g, f = pairs
        else:
            j = pl.DataFrame({"run_id": firsts, "_g": np.arange(firsts.len())}).join(
                pl.DataFrame({"run_id": run_id, "_f": np.arange(run_id.len(), dtype=np.int64)}),
                on="run_id",
                how="inner",  # null run ids match nothing
            )
            g, f = j["_g"].to_numpy(), j["_f"].to_numpy()
            del j
        del firsts
        r = rowmap[f]
        del f
        g, r = g[r >= 0], r[r >= 0]
        if g.size and np.bincount(g).max() > 1:  # a run id on several runs: each of them gets the counts
            grp = np.repeat(np.arange(lens.size), lens)
            e = (
                pl.DataFrame({"_g": grp, "_i": np.arange(h)})
                .join(pl.DataFrame({"_g": g, "_r": r}), on="_g", how="inner")
                .sort("_i", "_r")
            )
            idx, row = e["_i"].to_numpy(), e["_r"].to_numpy().astype(idt)
        else:
            row_of = np.full(lens.size, -1, dtype=idt)
            row_of[g] = r
            row = np.repeat(row_of, lens)
            idx = None
            del row_of
        del g, r, lens
        # codes into the names of all parts (the dropped name and nulls: -1, via the last entry of lut)
        lut = np.array([index.get(x, -1) for x in part_names] + [-1], dtype=np.int32)
        code = lut[part_code]
        del part_code
        if idx is not None:
            code = code[idx]
        keep = (row >= 0) & (code >= 0)
        some = not keep.all()
        if some:  # one array at a time (each is 120 MB at 30M count rows)
            row = row[keep]
            code = code[keep]
        n, part_whole = _count_values(tab["n"])
        whole &= part_whole
        if idx is not None:
            n = n[idx]
        if some:
            n = n[keep]
        del keep, idx
        rows.append(row)
        codes.append(code)
        ns.append(n)
    if not rows:
        return None
    if len(rows) == 1:  # one table: no concatenated copies
        return _Counts(row=rows[0], code=codes[0], n=ns[0], names=names.to_numpy().astype(object), whole=whole)
    return _Counts(row=np.concatenate(rows), code=np.concatenate(codes), n=np.concatenate(ns),
                   names=names.to_numpy().astype(object), whole=whole)


def auto_reference_length(span: timedelta, every: timedelta) -> timedelta:
    """Length of the ``reference="auto"`` period for data spanning ``span``.

    A quarter of the span, at least one window (``every``) and at most four,
    rounded down to whole days (when ``every`` is at least a day).

    Examples
    --------
    >>> from datetime import timedelta
    >>> auto_reference_length(timedelta(days=60), timedelta(weeks=1)).days
    15
    >>> auto_reference_length(timedelta(days=365), timedelta(weeks=1)).days
    28
    """
    length = min(max(span / 4, every), 4 * every)
    if every >= timedelta(days=1):
        length = timedelta(days=max(length.days, 1))
    return length


def _when(t: Any) -> str:
    """A time in a note: ``2026-10-15 00:00:00+00:00``."""
    return t.isoformat(sep=" ") if isinstance(t, datetime) else str(t)


def _outside(feats: pl.DataFrame, ids: pl.Series) -> pl.Series:
    """Per run of ``feats``: its ``run_id`` is not one of ``ids`` (compared as text; a null run_id is in
    no table). By merging the two columns when both are sorted without repeats (the usual case), else by
    a hash lookup."""
    a, b = feats["run_id"].cast(pl.String), ids.cast(pl.String)
    pairs = _merge_sorted_ids(a, b)
    if pairs is not None:
        keep = np.ones(a.len(), dtype=bool)
        keep[pairs[0]] = False
        return pl.Series("_keep", keep)
    b = b.drop_nulls().unique()
    return pl.select((~a.is_in(b.implode()).fill_null(False)).alias("_keep")).to_series()


def _window_frame(
    feats: pl.DataFrame,
    lo: datetime | None,
    hi: datetime | None,
    origin: datetime | None,
    every_us: int,
    src: int,
    by: tuple[str, ...],
    keep: pl.Series | None = None,
) -> pl.DataFrame:
    """The runs of ``feats`` in a range: their row in ``feats`` (``_orig``), slot, source and ``by`` columns.

    With ``keep`` (a boolean per row of ``feats``), only the runs it marks.
    """
    lf = feats.lazy().with_row_index("_orig")
    if keep is not None:
        lf = lf.filter(pl.lit(keep))
    if lo is not None:
        lf = lf.filter(pl.col("first_ts") >= lo)
    if hi is not None:
        lf = lf.filter(pl.col("first_ts") < hi)
    if origin is None:
        slot = pl.lit(0, dtype=pl.Int64)
    else:
        slot = (pl.col("first_ts") - pl.lit(origin, dtype=TS_DTYPE)).dt.total_microseconds() // every_us + 1
        lf = lf.filter(pl.col("first_ts") >= origin)
    keep = [c for c in by if c in feats.columns]
    return (
        lf.filter(pl.col("first_ts").is_not_null())
        .select(
            pl.col("_orig"),
            slot.cast(pl.Int64).alias("_slot"),
            pl.lit(src, dtype=pl.Int8).alias("_src"),
            *keep,
        )
        .collect()
    )


# --------------------------------------------------------------------------------------------
# group sums


def _gsum(x: np.ndarray | sparse.csr_matrix, gid: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum rows of ``x`` (1-D, 2-D or a sparse matrix) per group id."""
    if x.ndim == 1:
        return np.bincount(gid, weights=x, minlength=n_groups)
    onehot = sparse.csr_matrix((np.ones(gid.size), (gid, np.arange(gid.size))), shape=(n_groups, gid.size))
    if sparse.issparse(x):
        return (onehot @ x).toarray()
    return np.asarray(onehot @ x)


@dataclass
class _Cat:
    """Per-run category counts and per-(series, slot) sums of one categorical feature.

    ``unit_cov`` is each series' clustered covariance of the category shares per
    unit of count: ``Cov(p_g) ~ unit_cov[s] / N_g`` for any window ``g`` of
    series ``s``. It is estimated once per series from all its runs (residuals
    about each window's own shares), so it stays stable when a window holds only
    a few runs that carry a rare, clustered category.
    """

    C: sparse.csr_matrix | None  # runs x K counts (sparse, uint16 or float32; None where no test reads them)
    m: np.ndarray  # runs: total count
    names: np.ndarray  # series x K category names
    S1: np.ndarray  # groups x K
    N: np.ndarray  # groups
    n_runs: np.ndarray  # groups: all runs
    unit_cov: np.ndarray  # series x K x K
    clustered: bool

    @property
    def K(self) -> int:
        """Number of categories (columns)."""
        return int(self.S1.shape[1])

    def p(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.S1 / self.N[:, None]


# rows of a series per step while its clustered residuals are filled in
_COV_STEP = 1 << 16
# count rows per step of the category sums (bounded temporaries: 30M count rows make 250 MB per int64 array)
_COUNT_STEP = 1 << 22


def _cat_from_matrix(
    data: _Data,
    C: sparse.csr_matrix | None,
    names: np.ndarray,
    *,
    clustered: bool = True,
    m: np.ndarray,
    S1: np.ndarray,
) -> _Cat:
    """The :class:`_Cat` of per-run counts ``C`` (runs x K, sparse), their row sums ``m`` and group sums ``S1``.

    ``C`` is only read for the clustered covariance (``clustered``); unclustered counts may pass ``None``.
    """
    gid, G, S = data.gid, data.groups, data.n_series
    N = _gsum(m, gid, G)
    R = _gsum((m > 0).astype(float), gid, G)
    with np.errstate(invalid="ignore", divide="ignore"):
        pg = np.nan_to_num(S1 / N[:, None])
        w = np.sqrt(np.where(R > 1, R / np.maximum(R - 1.0, 1.0), 1.0))  # small-sample factor per group
    K = S1.shape[1]
    cov = np.zeros((S, K, K))
    bounds = np.searchsorted(data.s, np.arange(S + 1))  # runs are sorted by series
    NS = N.reshape(S, data.n_slots).sum(1)
    for s in range(S if clustered else 0):  # one K x K product per series (unclustered tests do not use it)
        a, b = bounds[s], bounds[s + 1]
        if NS[s] > 0:
            cov[s] = _residual_gram(C, pg, m, w, gid, a, b) / NS[s]  # type: ignore[arg-type]
    if clustered:
        with np.errstate(invalid="ignore", divide="ignore"):
            pbar = np.nan_to_num(S1.reshape(S, data.n_slots, K).sum(1) / NS[:, None])
            deff = np.nan_to_num(np.bincount(data.s, weights=m * m, minlength=S) / NS)
        cov = _floor_degenerate(cov, pbar, deff)
    return _Cat(C=C, m=m, names=names, S1=S1, N=N, n_runs=np.bincount(gid, minlength=G).astype(float),
                unit_cov=cov, clustered=clustered)


def _kept(lam: np.ndarray) -> np.ndarray:
    """Which eigenvalues (last axis) of a covariance count as variance: not round-off of its largest."""
    return lam > np.maximum(lam.max(-1, keepdims=True), 0) * 1e-9 + 1e-300


def _floor_degenerate(cov: np.ndarray, pbar: np.ndarray, deff: np.ndarray) -> np.ndarray:
    """Each series' clustered ``cov`` (series x K x K) with no direction of the shares left without variance.

    Where every run of each window has its window's mix (a reference whose runs call only ``a``, windows whose
    runs call only ``b``), the residuals about the windows' own shares vanish and so does the clustered
    covariance: the Wald test had no degree of freedom and read a total shift of the mix as steady (p = 1).
    In the directions where ``cov`` has no variance, the covariance of runs that each put all their count on
    one category drawn from the series' pooled shares ``pbar`` (series x K) stands in: the multinomial
    ``diag(pbar) - pbar pbar'`` per run, that is times ``deff = sum(m^2) / sum(m)`` per unit of count (the
    largest a run's shares can vary: a run, not a call, is the unit). Directions without a share (categories
    the series lacks, and the sum of the shares) stay without variance, and a series whose covariance has
    variance in every other direction keeps it exactly as it is.
    """
    lam, U = np.linalg.eigh(cov)
    kept = _kept(lam)
    short = kept.sum(-1) < (pbar > 0).sum(-1) - 1  # series with a direction of the shares without variance
    if not short.any():
        return cov
    Un = U * ~kept[:, None, :]  # eigenvectors of the directions without variance
    P = Un @ np.swapaxes(Un, 1, 2)  # projection onto them
    M = (pbar[:, :, None] * np.eye(pbar.shape[1]) - pbar[:, :, None] * pbar[:, None, :]) * deff[:, None, None]
    floor = P @ M @ P
    return np.where(short[:, None, None], cov + 0.5 * (floor + np.swapaxes(floor, 1, 2)), cov)


def _residual_gram(
    C: sparse.csr_matrix, pg: np.ndarray, m: np.ndarray, w: np.ndarray, gid: np.ndarray, a: int, b: int
) -> np.ndarray:
    """``E.T @ E`` of the residuals ``E = (C - p_g m) * w_g`` of runs ``a:b`` (one series).

    ``E`` is filled in steps of rows straight from the sparse counts (no dense count block): where a run
    has no count, ``0 - p_g m`` is what ``C - p_g m`` gives, and where it has one, ``(0 - p_g m) + c`` is
    the same number as ``c - p_g m`` (IEEE subtraction adds the negation). The product is one matrix
    product over all of the series' runs, as in a dense computation, so the sum runs in the same order.
    """
    E = np.empty((b - a, pg.shape[1]))
    for lo in range(a, b, _COV_STEP):
        hi = min(lo + _COV_STEP, b)
        g = gid[lo:hi]
        blk = E[lo - a : hi - a]
        np.take(pg, g, axis=0, out=blk, mode="clip")  # g is in range
        blk *= m[lo:hi, None]
        np.subtract(0.0, blk, out=blk)
        part = C[lo:hi]  # canonical: one entry per (run, category)
        blk[np.repeat(np.arange(hi - lo), np.diff(part.indptr)), part.indices] += part.data
        blk *= w[g][:, None]
    return E.T @ E


def _category_block(data: _Data, kind: str, opts: _Options) -> _Cat | None:
    cnt = data.counts(kind)
    data._counts.pop(kind, None)  # read once: released when this block is built
    data.count_parts.pop(kind, None)
    if cnt is None or cnt.row.size == 0:
        return None
    S, W1, U = data.n_series, data.n_slots, cnt.names.size
    K = opts.max_categories
    G, R, nnz = S * W1, data.runs.height, cnt.row.size
    # the sums over count rows go in steps (bounded temporaries); sums of whole counts are exact in any
    # order, other counts are summed in one step, in row order as ever
    step = _COUNT_STEP if cnt.whole else nnz
    steps = [(lo, min(lo + step, nnz)) for lo in range(0, nnz, step)]

    # a category keeps its own cell when it is among the K - 1 most frequent of its series and not rare:
    # at least 10 occurrences, 0.5% of the series' count, and 5 expected occurrences in a median window
    # (chi-square-type tests misbehave on sparse cells); the rest share "(other)"
    per_window, rows_g = np.zeros(G), np.zeros(G, dtype=np.int64)
    tot, rows_sc = np.zeros(S * U), np.zeros(S * U, dtype=np.int64)
    for lo, hi in steps:
        g = data.gid[cnt.row[lo:hi]]
        n = cnt.n[lo:hi]
        per_window += np.bincount(g, weights=n, minlength=G)
        rows_g += np.bincount(g, minlength=G)
        sc = g // W1 * U + cnt.code[lo:hi]
        tot += np.bincount(sc, weights=n, minlength=S * U)
        rows_sc += np.bincount(sc, minlength=S * U)
        del g, sc
    per_window = per_window.reshape(S, W1)[:, 1:]
    seen = (rows_g.reshape(S, W1) > 0)[:, 1:]  # windows with a count row
    med = _row_median(per_window, seen)
    tot = tot.reshape(S, U)
    present = (rows_sc > 0).reshape(S, U)
    allc = tot.sum(1, where=present, keepdims=True)
    # rank within the series: most frequent first, ties by name (codes follow the sorted names)
    order = np.lexsort((np.broadcast_to(np.arange(U), (S, U)), -tot, ~present), axis=1)
    rk = np.empty((S, U), dtype=np.int64)
    np.put_along_axis(rk, order, np.arange(1, U + 1)[None, :].repeat(S, 0), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        big = present & (tot >= 10) & (tot >= 0.005 * allc) & (tot / allc * med[:, None] >= 5)
    own = big & (rk < K)  # a prefix of the ranks
    n_own = own.sum(1)
    kmap = np.where(own, rk - 1, n_own[:, None])  # "(other)" comes after the own categories
    Keff = int(kmap[present].max()) + 1
    kflat = kmap.ravel().astype(np.int32)
    # each count row's cell; row and (series, window) sums straight from the counts
    col = np.empty(nnz, dtype=np.int32)
    m, S1 = np.zeros(R), np.zeros(G * Keff)
    for lo, hi in steps:
        g = data.gid[cnt.row[lo:hi]]
        k = kflat[g // W1 * U + cnt.code[lo:hi]]
        col[lo:hi] = k
        n = cnt.n[lo:hi]
        S1 += np.bincount(g * Keff + k, weights=n, minlength=G * Keff)
        m += np.bincount(cnt.row[lo:hi], weights=n, minlength=R)
        del g, k
    S1 = S1.reshape(G, Keff)
    # the runs x categories counts, sparse (a dense float64 block is R x Keff x 8 bytes: 1.7 GB at 7M runs
    # and 30 categories); duplicates (categories pooled into "(other)") are summed
    row, n = cnt.row, cnt.n
    names = np.full((S, Keff), "", dtype=object)
    si, ui = np.nonzero(present)
    names[si, kmap[si, ui]] = np.where(own[si, ui], cnt.names[ui], _OTHER)
    if cnt.whole and nnz and n.min() >= 0 and m.max() < 2**16:
        n = n.astype(np.uint16)  # exact, and so are the sums of a run's pooled categories (at most its total)
    del cnt
    C = sparse.csr_matrix((n, (row, col)), shape=(R, Keff))
    del row, col, n
    return _cat_from_matrix(data, C, names, m=m, S1=S1)


def _row_median(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Median of each row's valid entries (``inf`` for a row without any)."""
    k = valid.sum(1)
    v = np.sort(np.where(valid, x, np.inf), axis=1)
    if v.shape[1] == 0:
        return np.full(x.shape[0], np.inf)
    lo = np.take_along_axis(v, np.maximum((k - 1) // 2, 0)[:, None], 1)[:, 0]
    hi = np.take_along_axis(v, np.minimum(k // 2, v.shape[1] - 1)[:, None], 1)[:, 0]
    with np.errstate(invalid="ignore"):
        return np.where(k > 0, lo + (hi - lo) * 0.5, np.inf)


def _error_block(data: _Data) -> _Cat | None:
    """Runs with at least one failed step vs runs without (one unit per run, so no clustering)."""
    if "n_errors" not in data.runs.columns:
        return None
    err = data.runs.column("n_errors").fill_null(0).to_numpy().astype(float)
    if err.sum() == 0:
        return None  # status not logged (or a fleet without a single error): nothing to test
    failed = (err > 0).astype(float)
    del err
    names = np.tile(np.array(["failed", "ok"], dtype=object), (data.n_series, 1))
    S1 = np.stack([np.bincount(data.gid, weights=c, minlength=data.groups) for c in (failed, 1.0 - failed)], axis=1)
    return _cat_from_matrix(data, None, names, clustered=False, m=np.ones(failed.size), S1=S1)


# --------------------------------------------------------------------------------------------
# rows


def _pair_frame(data: _Data, mask: np.ndarray, feature: str, cols: dict[str, np.ndarray]) -> pl.DataFrame:
    """Rows for the (series, current slot) cells selected by ``mask`` (shape series x n_slots-1)."""
    s_idx, w_idx = np.nonzero(mask)
    out: dict[str, Any] = {
        "_s": s_idx.astype(np.int64),
        "_slot": (w_idx + 1).astype(np.int64),
        "feature": feature,
        "method": _METHODS[feature],
    }
    for k, v in cols.items():
        out[k] = v[s_idx, w_idx] if isinstance(v, np.ndarray) and v.ndim == 2 else v
    return pl.DataFrame(out)


def _js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (base 2) along the last axis."""
    m = 0.5 * (p + q)
    with np.errstate(invalid="ignore", divide="ignore"):
        kp = np.where(p > 0, p * np.log2(p / np.where(m > 0, m, 1.0)), 0.0).sum(-1)
        kq = np.where(q > 0, q * np.log2(q / np.where(m > 0, m, 1.0)), 0.0).sum(-1)
    return np.sqrt(np.clip(0.5 * (kp + kq), 0.0, 1.0))


def _shape(data: _Data, a: np.ndarray) -> np.ndarray:
    return a.reshape(data.n_series, data.n_slots, *a.shape[1:])


def _testable(data: _Data, n_runs: np.ndarray, opts: _Options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = _shape(data, n_runs)
    n_ref = np.broadcast_to(n[:, :1], (data.n_series, data.n_slots - 1))
    n_cur = n[:, 1:]
    ok = (n_ref >= opts.min_runs) & (n_cur >= opts.min_runs)
    return ok, n_ref, n_cur


def _pair(cat: _Cat, a: np.ndarray, na: np.ndarray, b: np.ndarray, nb: np.ndarray) -> dict[str, np.ndarray]:
    """Two-sample statistics of category counts ``a`` vs ``b`` (series x windows x categories).

    ``na``/``nb`` are the totals (series x windows). Clustered counts get a Wald
    test with the series' clustered covariance; unclustered ones (one unit per
    run) the Pearson chi-square. Also returns the shares and the Jensen-Shannon
    distance, raw and corrected for sampling noise.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        pa, pb = a / na[..., None], b / nb[..., None]
        pa, pb = np.broadcast_arrays(pa, pb)
        c = 1 / na + 1 / nb  # series x windows
        if cat.clustered:
            lam, U = np.linalg.eigh(cat.unit_cov)  # S x K, S x K x K
            keep = _kept(lam)
            inv = np.where(keep, 1 / np.where(keep, lam, 1.0), 0.0)
            proj = np.einsum("swk,skj->swj", np.nan_to_num(pa - pb), U)
            stat = (proj**2 * inv[:, None, :]).sum(-1) / c
            df = np.broadcast_to(keep.sum(-1)[:, None], stat.shape)
            noise = np.diagonal(cat.unit_cov, axis1=1, axis2=2)[:, None, :] * c[..., None]
        else:
            A, B = np.broadcast_arrays(a, b)
            NA, NB = np.broadcast_arrays(na[..., None], nb[..., None])
            pool = (A + B) / (NA + NB)
            live = pool > 0
            ea, eb = NA * pool, NB * pool
            stat = np.where(live, (A - ea) ** 2 / np.where(live, ea, 1) + (B - eb) ** 2 / np.where(live, eb, 1),
                            0).sum(-1)
            df = live.sum(-1) - 1
            noise = pool * (1 - pool) * c[..., None]
        p = np.where(df > 0, stats.chi2.sf(stat, np.maximum(df, 1)), 1.0)
        js = _js(pa, pb)
        # E[JS] under no change ~ sum_k Var(pa_k - pb_k) / (8 m_k) (second-order expansion), in bits
        m = 0.5 * (pa + pb)
        bias = np.where(m > 0, noise / (8 * np.where(m > 0, m, 1)), 0.0).sum(-1) / np.log(2.0)
        js_c = np.sqrt(np.clip(js**2 - bias, 0.0, 1.0))
        qa, qb = np.nan_to_num(pa) + 1e-4, np.nan_to_num(pb) + 1e-4
        psi = ((qb - qa) * np.log(qb / qa)).sum(-1)
    return {"pa": pa, "pb": pb, "stat": stat, "p": p, "js": js, "js_c": js_c, "psi": psi}


def _categorical_rows(data: _Data, cat: _Cat, feature: str, opts: _Options) -> pl.DataFrame:
    S1, N = _shape(data, cat.S1), _shape(data, cat.N)
    r = _pair(cat, S1[:, :1], N[:, :1], S1[:, 1:], N[:, 1:])
    pa_b, pb, stat, p = r["pa"], r["pb"], r["stat"], r["p"]
    with np.errstate(invalid="ignore", divide="ignore"):
        if feature == "error_rate":
            ref_v, cur_v = pa_b[..., 0], pb[..., 0]
            effect = np.abs(2 * np.arcsin(np.sqrt(cur_v)) - 2 * np.arcsin(np.sqrt(ref_v)))
            what = np.full(ref_v.shape, "", dtype=object)
        else:
            effect = r["js_c"]
            # name the category whose share moved most ("(other)" only if nothing else moved)
            moved = np.abs(np.nan_to_num(pb - pa_b)) * np.where(cat.names == _OTHER, 1e-6, 1.0)[:, None, :]
            k = np.argmax(moved, axis=-1)
            ref_v = np.take_along_axis(pa_b, k[..., None], -1)[..., 0]
            cur_v = np.take_along_axis(pb, k[..., None], -1)[..., 0]
            what = np.take_along_axis(np.broadcast_to(cat.names[:, None, :], pb.shape), k[..., None], -1)[..., 0]
    ok, n_ref, n_cur = _testable(data, cat.n_runs, opts)
    ok &= (N[:, :1] > 0) & (N[:, 1:] > 0)
    # a series with a single category (one tool, or every tool or bigram pooled into "(other)": too rare
    # for a cell of its own) has shares of 100% on both sides: nothing is tested, so it gets no row (a
    # p-value of 1 would only dilute the correction of the others)
    ok &= ((cat.names != "").sum(1) >= 2)[:, None]
    return _pair_frame(
        data,
        ok,
        feature,
        {
            "statistic": stat,
            "p_value": p,
            "effect_size": effect,
            "reference_value": ref_v,
            "current_value": cur_v,
            "n_ref": n_ref,
            "n_cur": n_cur,
            "_what": what.astype(str),
            "_psi": r["psi"],
        },
    )


def _series_shares(data: _Data, cat: _Cat) -> np.ndarray:
    """Each series' shares over all its runs (series x K)."""
    tot = _shape(data, cat.S1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(tot / tot.sum(-1, keepdims=True))


def _entropy_rows(data: _Data, cat: _Cat, opts: _Options) -> pl.DataFrame:
    P, N = _shape(data, cat.p()), _shape(data, cat.N)
    with np.errstate(invalid="ignore", divide="ignore"):
        logp = np.where(P > 0, np.log(np.where(P > 0, P, 1.0)), 0.0)
        H = -(np.nan_to_num(P) * logp).sum(-1)  # plug-in entropy (nats), series x slots
        pbar = _series_shares(data, cat)
        # the plug-in entropy is biased low by ~ sum_k Var(p_k) / (2 p_k) (more so in small windows than in
        # the reference): correct it (a clustered Miller-Madow correction) before comparing
        diag = np.diagonal(cat.unit_cov, axis1=1, axis2=2)
        bias_unit = np.where(pbar > 0, diag / (2 * np.where(pbar > 0, pbar, 1.0)), 0.0).sum(-1)
        Hc = H + bias_unit[:, None] / N
        # variance under no change, from the series-wide clustered covariance (stable even when a small
        # window happens to miss a rare, clustered tool): first order g' Sigma g c, plus the second-order
        # term, which dominates near a uniform mix: H moves with the square of the share changes
        g = np.where(pbar > 0, -np.log(np.where(pbar > 0, pbar, 1.0)), 0.0)
        v1 = np.einsum("sk,skl,sl->s", g, cat.unit_cov, g)
        dinv = np.where(pbar > 0, 1 / np.where(pbar > 0, pbar, 1.0), 0.0)
        A = dinv[:, :, None] * cat.unit_cov  # D^-1 Sigma
        v2 = 0.5 * np.einsum("skl,slk->s", A, A)
        c = 1 / N[:, :1] + 1 / N[:, 1:]
        h0, h1 = Hc[:, :1], Hc[:, 1:]
        z = (h1 - h0) / np.sqrt(v1[:, None] * c + v2[:, None] * c**2)
        # narrowing implies a changed mix: report the larger of the two p-values (an intersection-union
        # test), since the normal tail of an entropy difference is too thin when a rare, clustered tool
        # happens to be missing from a small window
        S1 = _shape(data, cat.S1)
        p = np.maximum(stats.norm.cdf(z), _pair(cat, S1[:, :1], N[:, :1], S1[:, 1:], N[:, 1:])["p"])
        effect = np.where(h0 > 0, (h0 - h1) / np.where(h0 > 0, h0, 1), 0.0)
        h0, h1 = H[:, :1], H[:, 1:]  # report the plug-in values
    ok, n_ref, n_cur = _testable(data, cat.n_runs, opts)
    ok &= (N[:, :1] > 0) & (N[:, 1:] > 0) & np.isfinite(z)
    ln2 = np.log(2.0)
    return _pair_frame(
        data,
        ok,
        "action_entropy",
        {
            "statistic": z,
            "p_value": p,
            "effect_size": effect,
            "reference_value": np.broadcast_to(h0 / ln2, h1.shape),
            "current_value": h1 / ln2,
            "n_ref": n_ref,
            "n_cur": n_cur,
            "_what": np.full(h1.shape, "", dtype=object).astype(str),
        },
    )


def _self_similarity_rows(data: _Data, cat: _Cat, opts: _Options) -> pl.DataFrame:
    S, W1, K = data.n_series, data.n_slots, cat.K
    if W1 < 3:
        return pl.DataFrame()
    # split the reference runs into halves A / B at random (seeded)
    rng = np.random.default_rng(opts.random_state)
    ref_rows = np.flatnonzero(data.slot == 0)
    half = rng.integers(0, 2, ref_rows.size)
    gh = data.s[ref_rows] * 2 + half
    S1h = _gsum(cat.C[ref_rows], gh, 2 * S).reshape(S, 2, K)
    Nh = _gsum(cat.m[ref_rows], gh, 2 * S).reshape(S, 2)
    nh = np.bincount(gh, minlength=2 * S).reshape(S, 2)
    S1, N = _shape(data, cat.S1), _shape(data, cat.N)
    P = _shape(data, cat.p())  # S x W1 x K
    with np.errstate(invalid="ignore", divide="ignore"):
        pA, pB = S1h[:, 0] / Nh[:, :1], S1h[:, 1] / Nh[:, 1:]
        pref = np.nan_to_num(P[:, 0])
        # direction in which the previous window departed from half A (chi-square metric) ...
        b = np.nan_to_num((P[:, 1:-1] - pA[:, None]) / (pref[:, None] + 1e-3))  # S x (W1-2) x K, slots 2..
        # ... projected on this window's departure from half B (independent of A and of the previous window)
        L = (b * np.nan_to_num(P[:, 2:] - pB[:, None])).sum(-1)
        unit = np.einsum("swk,skl,swl->sw", b, cat.unit_cov, b)
        z = L / np.sqrt(unit * (1 / N[:, 2:] + 1 / Nh[:, 1:]))
        pval = stats.norm.sf(z)
    d_ref = _pair(cat, S1[:, :1], N[:, :1], S1[:, 2:], N[:, 2:])["js_c"]
    d_prev = _pair(cat, S1[:, 1:-1], N[:, 1:-1], S1[:, 2:], N[:, 2:])["js_c"]
    ok, n_ref, n_cur = _testable(data, cat.n_runs, opts)
    n = _shape(data, cat.n_runs)
    ok2 = ok[:, 1:] & (n[:, 1:-1] >= opts.min_runs) & (nh.min(axis=1) >= max(2, opts.min_runs // 2))[:, None]
    ok2 &= np.isfinite(z)
    full = np.zeros((S, W1 - 1), dtype=bool)
    full[:, 1:] = ok2

    def pad(x: np.ndarray) -> np.ndarray:
        o = np.full((S, W1 - 1), np.nan)
        o[:, 1:] = x
        return o

    return _pair_frame(
        data,
        full,
        "self_similarity",
        {
            "statistic": pad(z),
            "p_value": pad(pval),
            "effect_size": pad(d_ref - d_prev),
            "reference_value": pad(d_ref),
            "current_value": pad(d_prev),
            "n_ref": n_ref,
            "n_cur": n_cur,
            "_what": np.full((S, W1 - 1), "", dtype=object).astype(str),
        },
    )


def _latency_expr(data: _Data) -> pl.Expr:
    """Latency per step that recorded one, when every run of the comparison counts those steps
    (``n_latency``); else, for all of them alike, per step: a per-run table stored by an
    earlier version lacks the count, and mixing the two readings (history against tonight)
    would be a change of units read as drift."""
    runs = data.runs.frame(["latency_ms", "n_latency"])
    counted = "n_latency" in runs.columns and not runs.select(
        (pl.col("latency_ms").is_not_null() & pl.col("n_latency").is_null()).any()).item()
    den = pl.col("n_latency") if counted else pl.col("n_steps")
    return pl.col("latency_ms").cast(pl.Float64) / den.cast(pl.Float64)


def _numeric_values(data: _Data, name: str) -> np.ndarray | None:
    if any(c not in data.runs.columns for c in _NUMERIC_NEEDS[name]):
        return None
    expr = _latency_expr(data) if name == "latency" else _NUMERIC[name]
    runs = data.runs.frame([*_NUMERIC_NEEDS[name], "n_latency"])
    x = runs.select(expr.alias("x"))["x"].fill_nan(None).to_numpy()
    x = x.astype(float)
    fin = np.isfinite(x)
    if not fin.any() or np.all(x[fin] == 0):
        return None  # not logged
    return x


def _small_ints(a: np.ndarray, bound: int) -> np.ndarray:
    """``a`` (values below ``bound``) in the smallest integer type, so that a stable argsort is a radix sort."""
    return a.astype(np.int16 if bound < 2**15 else np.int32 if bound < 2**31 else np.int64)


def _tie_bounds(v: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last position of each element's stretch of equal ``(g, v)`` (both sorted by ``g``, then ``v``)."""
    size = v.size
    new = np.ones(size, dtype=bool)
    new[1:] = (v[1:] != v[:-1]) | (g[1:] != g[:-1])
    pos = np.arange(size)
    first = np.maximum.accumulate(np.where(new, pos, 0))
    last = np.ones(size, dtype=bool)
    last[:-1] = new[1:]
    return first, np.minimum.accumulate(np.where(last, pos, size - 1)[::-1])[::-1]


# runs per batch of consecutive series in the numeric tests (their sorts and scans are per series, so a
# batch needs memory for its own runs only)
_NUMERIC_BATCH = 1 << 20


def _series_batches(bounds: np.ndarray, cap: int) -> list[tuple[int, int]]:
    """Ranges ``[lo, hi)`` of consecutive series (row bounds ``bounds``) of at most ``cap`` rows, or one series."""
    out, lo, S = [], 0, bounds.size - 1
    while lo < S:
        hi = lo + 1
        while hi < S and bounds[hi + 1] - bounds[lo] <= cap:
            hi += 1
        out.append((lo, hi))
        lo = hi
    return out


def _numeric_parts(
    x: np.ndarray, gid: np.ndarray, s: np.ndarray, S: int, W1: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """KS statistic, quantile grid, sum, sum of squares and count of the finite ``x`` per (series, slot).

    ``gid`` and ``s`` (sorted) number the groups and series of the runs from 0; returns arrays over the
    ``S * W1`` groups (the grid: groups x ``_QUANTILE_GRID``).
    """
    G = S * W1
    fin = np.isfinite(x)
    gid = gid[fin]
    xv = x[fin]
    s_fin = s[fin]
    del fin
    nz = np.bincount(gid, minlength=G)
    starts = np.concatenate([[0], np.cumsum(nz)])
    n = nz.astype(float)
    # one sort by value, then stable (radix) sorts by series and by window: each series' values in order
    # (for its reference's distribution function), and each window's values in order (for its own)
    o = np.argsort(xv)
    os_ = o[np.argsort(_small_ints(s_fin[o], S), kind="stable")]
    del o
    g_s = gid[os_]
    x_s = xv[os_]
    del os_
    to_g = np.argsort(_small_ints(g_s, G), kind="stable")  # series order -> window order (gid sorted)
    xs = x_s[to_g]
    sstart = np.concatenate([[0], np.cumsum(np.bincount(s_fin, minlength=S))])
    del s_fin
    cz = np.zeros(xv.size + 1, dtype=np.int64)
    np.cumsum((g_s % W1) == 0, out=cz[1:])  # reference values before each position
    ss = g_s // W1
    del g_s
    lo, hi = _tie_bounds(x_s, ss)
    del x_s
    base = cz[sstart[ss]]
    del ss
    ref_lt = (cz[lo] - base)[to_g]  # reference values of the series below / up to each value
    del lo
    ref_le = (cz[hi + 1] - base)[to_g]
    del hi, base, cz, to_g
    lo, hi = _tie_bounds(xs, gid)
    cur = (gid % W1) != 0  # window order: runs of one window form one stretch
    gc = gid[cur]
    g0 = (gc // W1) * W1
    with np.errstate(invalid="ignore", divide="ignore"):
        fw_r = (hi[cur] + 1 - starts[gc]) / n[gc]  # values of the own window up to / below each value
        del hi
        fw_l = (lo[cur] - starts[gc]) / n[gc]
        del lo
        n0 = np.maximum(n[g0], 1.0)
        del g0
        fr_r = ref_le[cur] / n0
        del ref_le
        fr_l = ref_lt[cur] / n0
        del ref_lt, n0, cur
    d = np.maximum(np.abs(fr_r - fw_r), np.abs(fr_l - fw_l))
    del fr_r, fw_r, fr_l, fw_l
    D = np.zeros(G)
    if gc.size:
        first = np.flatnonzero(np.concatenate([[True], gc[1:] != gc[:-1]]))
        D[gc[first]] = np.maximum.reduceat(d, first)
    del d, gc
    # Wasserstein-1 on a quantile grid
    u = (np.arange(_QUANTILE_GRID) + 0.5) / _QUANTILE_GRID
    has = n > 0
    ni = np.diff(starts)
    qi = starts[:-1, None] + np.minimum((u[None, :] * n[:, None]).astype(np.int64), np.maximum(ni[:, None] - 1, 0))
    Q = np.where(has[:, None], xs[np.clip(qi, 0, max(xs.size - 1, 0))], np.nan) if xs.size else np.full(
        (G, _QUANTILE_GRID), np.nan
    )
    return D, Q, _gsum(xv, gid, G), _gsum(xv**2, gid, G), n


def _numeric_rows(data: _Data, name: str, opts: _Options) -> pl.DataFrame | None:
    x = _numeric_values(data, name)
    if x is None:
        return None
    S, W1, G = data.n_series, data.n_slots, data.groups
    D, Q, s1, s2, n = np.zeros(G), np.full((G, _QUANTILE_GRID), np.nan), np.zeros(G), np.zeros(G), np.zeros(G)
    spread = np.zeros(G, dtype=bool)
    bounds = np.searchsorted(data.s, np.arange(S + 1))  # runs are sorted by series
    for lo, hi in _series_batches(bounds, _NUMERIC_BATCH):
        a, b = bounds[lo], bounds[hi]
        at = slice(lo * W1, hi * W1)
        g = data.gid[a:b] - lo * W1
        D[at], Q[at], s1[at], s2[at], n[at] = _numeric_parts(x[a:b], g, data.s[a:b] - lo, hi - lo, W1)
        fin = np.isfinite(x[a:b])
        spread[at] = _spread(x[a:b][fin], g[fin], (hi - lo) * W1)
        del g, fin
    del x
    Q = _shape(data, Q)
    w1 = np.abs(Q[:, 1:] - Q[:, :1]).mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = _shape(data, s1 / n)
        var = _shape(data, (s2 - s1**2 / n) / np.maximum(n - 1, 1))
    # a reference without any spread (every run 0.7) has no standard deviation, whatever the round-off of
    # its sums of squares says (1e-8 made a change of 7% an effect of millions): relative to its mean then
    sd0 = np.where(_shape(data, spread)[:, 0], np.sqrt(np.maximum(var[:, 0], 0)), 0.0)
    m0 = mean[:, 0]
    scale = np.where(sd0 > 0, sd0, np.where(np.abs(m0) > 0, np.abs(m0), 1.0))
    effect = w1 / scale[:, None]
    nn = _shape(data, n)
    n_ref = np.broadcast_to(nn[:, :1], (S, W1 - 1))
    n_cur = nn[:, 1:]
    Dw = _shape(data, D)[:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        # asymptotic Kolmogorov distribution with Stephens' small-sample correction (within a few percent
        # of scipy's exact two-sample p-value, and vectorised)
        en = np.sqrt(n_ref * n_cur / np.maximum(n_ref + n_cur, 1))
        p = special.kolmogorov((en + 0.12 + 0.11 / np.maximum(en, 1e-9)) * Dw)
    ok = (n_ref >= opts.min_runs) & (n_cur >= opts.min_runs)
    return _pair_frame(
        data,
        ok,
        name,
        {
            "statistic": Dw,
            "p_value": p,
            "effect_size": effect,
            "reference_value": np.broadcast_to(m0[:, None], (S, W1 - 1)),
            "current_value": mean[:, 1:],
            "n_ref": n_ref,
            "n_cur": n_cur,
            "_what": np.full((S, W1 - 1), "", dtype=object).astype(str),
        },
    )


def _spread(x: np.ndarray, key: np.ndarray, n_keys: int) -> np.ndarray:
    """Per key: whether its values are not all equal (``key`` sorted; exact, no variance round-off)."""
    out = np.zeros(n_keys, dtype=bool)
    if x.size > 1:
        out[key[1:][(x[1:] != x[:-1]) & (key[1:] == key[:-1])]] = True
    return out


def _gap_rows(data: _Data, opts: _Options) -> pl.DataFrame | None:
    cols = data.runs.columns
    if "feedback" not in cols or "outcome" not in cols:
        return None
    f = data.runs.column("feedback").cast(pl.Float64).fill_nan(None).to_numpy().astype(float)
    o = data.runs.column("outcome").cast(pl.Float64).fill_nan(None).to_numpy().astype(float)
    ok_run = np.isfinite(f) & np.isfinite(o)
    if ok_run.sum() < 2 * opts.min_runs:
        return None
    S, W1, G = data.n_series, data.n_slots, data.groups
    gid = data.gid[ok_run]
    f, o = f[ok_run], o[ok_run]
    n = _shape(data, np.bincount(gid, minlength=G).astype(float))
    sf, so = _shape(data, _gsum(f, gid, G)), _shape(data, _gsum(o, gid, G))
    sff, soo, sfo = (_shape(data, _gsum(v, gid, G)) for v in (f * f, o * o, f * o))
    # which (series, slot) cells and series have values that differ at all: a constant value (feedback
    # always 1.0) has no spread, whatever the round-off of its sums of squares says
    ser = gid // W1
    cell_f, cell_o = _shape(data, _spread(f, gid, G)), _shape(data, _spread(o, gid, G))
    ser_f, ser_o = _spread(f, ser, S), _spread(o, ser, S)
    with np.errstate(invalid="ignore", divide="ignore"):
        mf, mo = sf / n, so / n
        d1 = np.maximum(n - 1, 1)
        vf = np.where(cell_f, np.maximum(sff - sf * mf, 0) / d1, 0.0)
        vo = np.where(cell_o, np.maximum(soo - so * mo, 0) / d1, 0.0)
        cfo = np.where(cell_f & cell_o, (sfo - sf * mo) / d1, 0.0)
        # reference scale; a constant reference falls back to the series-wide spread
        nt, tf, to = n.sum(1), sf.sum(1), so.sum(1)
        vf_all = np.where(ser_f, np.maximum(sff.sum(1) - tf**2 / nt, 0) / np.maximum(nt - 1, 1), 0.0)
        vo_all = np.where(ser_o, np.maximum(soo.sum(1) - to**2 / nt, 0) / np.maximum(nt - 1, 1), 0.0)
        sdf = np.sqrt(np.where(vf[:, 0] > 0, vf[:, 0], vf_all))
        sdo = np.sqrt(np.where(vo[:, 0] > 0, vo[:, 0], vo_all))
        # a series whose outcome never varies cannot show it falling (not tested); feedback without any
        # spread (a proxy that holds at one value) has not moved: only what has spread is standardised,
        # and the gap is the outcome's drop alone
        live = sdo > 0
        has_f = (sdf > 0)[:, None]
        sdf, sdo = np.where(has_f[:, 0], sdf, 1.0)[:, None], np.where(live, sdo, 1.0)[:, None]
        dfb = np.where(has_f, (mf[:, 1:] - mf[:, :1]) / sdf, 0.0)
        dob = (mo[:, 1:] - mo[:, :1]) / sdo
        gap = dfb - dob
        vg = np.where(has_f, vf / sdf**2, 0.0) + vo / sdo**2 - np.where(has_f, 2 * cfo / (sdf * sdo), 0.0)
        vg = np.maximum(vg, 0)
        a, b = vg[:, :1] / n[:, :1], vg[:, 1:] / n[:, 1:]
        se = np.sqrt(a + b)
        dof = (a + b) ** 2 / (a**2 / np.maximum(n[:, :1] - 1, 1) + b**2 / np.maximum(n[:, 1:] - 1, 1))
        # both samples without any spread of the gap (outcome 1 in every reference run, 0 in every run of
        # the window): Welch's standard error is 0, and t was infinite (or 0 / 0) and the row dropped. Then
        # the standard error of the difference when the pair's runs are exchangeable stands in (the spread
        # of the pooled runs, set by the difference alone): t = sqrt(n_ref + n_cur - 1), with n_ref + n_cur
        # - 2 degrees of freedom; the same value on both sides gives t = 0, p = 1
        flat = se == 0
        nn = n[:, :1] + n[:, 1:]
        t = np.where(flat, np.sign(gap) * np.sqrt(np.maximum(nn - 1, 0)), gap / np.where(flat, 1.0, se))
        dof = np.where(flat, np.maximum(nn - 2, 1), np.nan_to_num(dof, nan=1.0))
        p = np.where(flat & (gap == 0), 1.0, stats.t.sf(t, dof))
        effect = np.minimum(gap, -dob)
    n_ref = np.broadcast_to(n[:, :1], (S, W1 - 1))
    n_cur = n[:, 1:]
    ok = (n_ref >= opts.min_runs) & (n_cur >= opts.min_runs) & live[:, None] & np.isfinite(t)
    what = np.char.add(
        np.char.add(_fmt_arr(np.broadcast_to(mf[:, :1], (S, W1 - 1))), " -> "), _fmt_arr(mf[:, 1:])
    )
    return _pair_frame(
        data,
        ok,
        "feedback_outcome_gap",
        {
            "statistic": t,
            "p_value": p,
            "effect_size": effect,
            "reference_value": np.broadcast_to(mo[:, :1], (S, W1 - 1)),
            "current_value": mo[:, 1:],
            "n_ref": n_ref,
            "n_cur": n_cur,
            "_what": what,
        },
    )


def _fmt_arr(x: np.ndarray) -> np.ndarray:
    return np.char.mod("%.2f", np.nan_to_num(np.asarray(x, dtype=float)))


def _grouped_auc(
    group: np.ndarray, slot: np.ndarray, value: np.ndarray, n_series: int, n_slots: int
) -> tuple[np.ndarray, np.ndarray]:
    """AUC of each (series, current slot)'s values against the series' slot-0 values (ties count half).

    ``group`` (the series) must be sorted. ``value`` holds one column of values per run, or several
    (runs x columns, one AUC each). Returns ``(auc, n)`` of shape (series, slots), or (series, slots,
    columns) for 2-D ``value``; NaN values are ignored.
    """
    flat = value.ndim == 1
    V = value[:, None] if flat else value
    R, J = V.shape
    G = n_series * n_slots
    auc, cnt = np.full((J, G), np.nan), np.zeros((J, G))
    if R == 0:
        out = auc.T.reshape(n_series, n_slots, J)
        return (out[..., 0], cnt.T.reshape(n_series, n_slots, J)[..., 0]) if flat else (
            out, cnt.T.reshape(n_series, n_slots, J))
    gdt = np.int16 if n_series < 2**15 else np.int64  # small ints sort by radix
    grp = group.astype(gdt)
    seg = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=n_series))])  # rows of each series
    cell = group.astype(np.int64) * n_slots + slot
    is_ref0, is_cur0 = slot == 0, slot > 0
    step = max(1, 4_000_000 // R)  # columns per block (bounded memory)
    for j0 in range(0, J, step):
        v = np.array(V[:, j0 : j0 + step].T, order="C")  # columns x runs (a copy: modified below)
        B = v.shape[0]
        fin = np.isfinite(v)
        v[np.isnan(v)] = np.inf  # left out below either way; NaNs would slow the sort down
        # each column in value order, then stably by series: every series' runs in value order
        o = np.argsort(v, axis=1)
        gs = grp[o]
        by_series = np.argsort(gs, axis=1, kind="stable")
        o = np.take_along_axis(o, by_series, 1)
        gs = np.take_along_axis(gs, by_series, 1)
        vs = np.take_along_axis(v, o, 1)
        ref = is_ref0[o] & np.isfinite(vs)
        idt = np.int32 if R < 2**31 - 1 else np.int64
        cz = np.zeros((B, R + 1), dtype=idt)
        np.cumsum(ref, axis=1, out=cz[:, 1:])  # cz[:, p]: reference values before position p
        # ties: a run of equal values within a series
        new = np.ones((B, R), dtype=bool)
        new[:, 1:] = (vs[:, 1:] != vs[:, :-1]) | (gs[:, 1:] != gs[:, :-1])
        last = np.ones((B, R), dtype=bool)
        last[:, :-1] = new[:, 1:]
        pos = np.arange(R, dtype=idt)
        start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
        end = np.minimum.accumulate(np.where(last, pos, R - 1)[:, ::-1], axis=1)[:, ::-1]
        end += 1
        # reference values of the series below the value, plus those up to it
        twice = np.take_along_axis(cz, start, 1).astype(np.int64) + np.take_along_axis(cz, end, 1)
        twice -= 2 * np.take_along_axis(cz, seg[gs].astype(idt), 1)
        n_ref = (cz[:, seg[1:]] - cz[:, seg[:-1]]).astype(float)  # columns x series
        with np.errstate(invalid="ignore", divide="ignore"):
            place_s = twice / (2.0 * np.take_along_axis(n_ref, gs, 1))
        place = np.empty((B, R))
        np.put_along_axis(place, o, place_s, 1)  # back to row order: sums run in row order, as before
        # per (column, cell) sums in row order; reference and NaN entries go to a spare last bin
        key = np.where(is_cur0[None, :] & fin, np.arange(B)[:, None] * G + cell[None, :], B * G).ravel()
        c = np.bincount(key, minlength=B * G + 1)[:-1].astype(float)
        tot = np.bincount(key, weights=place.ravel(), minlength=B * G + 1)[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            auc[j0 : j0 + B] = (tot / c).reshape(B, G)
        cnt[j0 : j0 + B] = c.reshape(B, G)
    auc_o = auc.T.reshape(n_series, n_slots, J)
    cnt_o = cnt.T.reshape(n_series, n_slots, J)
    return (auc_o[..., 0], cnt_o[..., 0]) if flat else (auc_o, cnt_o)


def _ref_scale(X: np.ndarray, s: np.ndarray, ref_rows: np.ndarray, S: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-series median and robust scale (IQR / 1.349, else std, else 1) of the reference rows of ``X``.

    Returns two arrays of shape (series, columns).
    """
    cols = [f"x{j}" for j in range(X.shape[1])]
    fr = pl.DataFrame({"s": s[ref_rows], **{c: X[ref_rows, j] for j, c in enumerate(cols)}}).with_columns(
        pl.col(cols).fill_nan(None)
    )
    q = fr.group_by("s").agg(
        *[pl.col(c).quantile(0.5).alias(f"m{c}") for c in cols],
        *[((pl.col(c).quantile(0.75) - pl.col(c).quantile(0.25)) / 1.349).alias(f"i{c}") for c in cols],
        *[pl.col(c).std().alias(f"d{c}") for c in cols],
    )
    med, scale = np.zeros((S, len(cols))), np.ones((S, len(cols)))
    idx = q["s"].to_numpy()
    m = q.select([f"m{c}" for c in cols]).fill_null(0.0).to_numpy()
    iqr = q.select([f"i{c}" for c in cols]).fill_null(0.0).to_numpy()
    sd = q.select([f"d{c}" for c in cols]).fill_null(0.0).to_numpy()
    med[idx] = m
    scale[idx] = np.where(iqr > 0, iqr, np.where(sd > 0, sd, 1.0))
    return med, scale


def _cell_sample(gid: np.ndarray, n_groups: int, cap: int | None, seed: int) -> np.ndarray | None:
    """Rows (sorted) of a seeded uniform sample of at most ``cap`` runs per (series, slot) cell.

    ``None`` when no cell holds more than ``cap`` runs (every run is kept). ``gid`` must be sorted.
    """
    n = np.bincount(gid, minlength=n_groups)
    if cap is None or gid.size == 0 or n.max() <= cap:
        return None
    # its own random stream, so that the classifier's folds and training draws do not depend on it
    key = np.random.default_rng([seed, 1]).random(gid.size)
    key *= 0.5
    key += gid  # gid + 0.5 * u: cells stay contiguous (gid sorted, 0.5 * u < 1); random within
    order = np.argsort(key)
    del key
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    within = np.arange(gid.size)
    within -= start[gid[order]]
    rank = np.empty(gid.size, dtype=np.int64)
    rank[order] = within
    del order, within
    return np.flatnonzero(rank < cap)


#: A run feature recorded for this much larger a share of one window's runs than of the
#: other's (cost logging switched on, a tokens field added) measures the logging, not the
#: behaviour: the run classifier leaves it out for that series.
_LOGGING_CHANGE = 0.2


def _drop_logging_changes(X: np.ndarray, s: np.ndarray, slot: np.ndarray, S: int) -> None:
    """Blank (NaN, in place) the features of a series whose share of recorded values differs
    by more than :data:`_LOGGING_CHANGE` between its reference (slot 0) and any of its current
    windows with at least 10 runs: a classifier would tell the windows apart by what was logged
    (AUC 1.0 when costs start being logged)."""
    if X.size == 0:
        return
    W = int(slot.max()) + 1 if slot.size else 1
    cell = s * W + slot  # (series, window)
    n = np.bincount(cell, minlength=S * W).astype(float).reshape(S, W)
    known = np.isfinite(X)
    changed = np.zeros((S, X.shape[1]), dtype=bool)
    for j in range(X.shape[1]):  # a handful of features
        share = (np.bincount(cell, weights=known[:, j], minlength=S * W).reshape(S, W) / np.maximum(n, 1.0))
        gap = np.abs(share[:, 1:] - share[:, :1]) > _LOGGING_CHANGE
        changed[:, j] = (gap & (n[:, 1:] >= 10) & (n[:, :1] >= 10)).any(axis=1)
    if changed.any():
        X[changed[s]] = np.nan


def _classifier_rows(data: _Data, tool: _Cat | None, opts: _Options) -> pl.DataFrame | None:
    """Classifier two-sample test: one seeded model over all series (the series is a feature)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    S, W1 = data.n_series, data.n_slots
    # a large cell is represented by a seeded uniform sample of its runs (see classifier_max_runs)
    cap_runs = None if opts.classifier_max_runs is None else max(opts.classifier_max_runs, opts.min_runs)
    take = _cell_sample(data.gid, data.groups, cap_runs, opts.random_state)
    s, slot = (data.s, data.slot) if take is None else (data.s[take], data.slot[take])
    have = set(data.runs.columns)
    exprs = {c: pl.col(c).cast(pl.Float64) for c in NUMERIC_RUN_FEATURES if c in have}
    for name, (num, den) in _RATIOS.items():  # ratios trees find hard to build from their parts
        if num in have and den in have:
            exprs[name] = pl.col(num).cast(pl.Float64) / pl.col(den).cast(pl.Float64)
    if "latency_per_step" in exprs:
        exprs["latency_per_step"] = _latency_expr(data)
    cols = list(exprs)
    read = [c for c in (*NUMERIC_RUN_FEATURES, *(c for pair in _RATIOS.values() for c in pair), "n_latency")
            if c in have]
    k = 0 if tool is None else min(_CLF_SHARES, tool.K)

    def inputs(rows: np.ndarray | None) -> np.ndarray:
        """Run features (and tool shares) of ``rows`` (every run for ``None``)."""
        runs = data.runs.frame(read, rows)
        x = runs.select([e.fill_nan(None).alias(c) for c, e in exprs.items()]).to_numpy().astype(float)
        x[~np.isfinite(x)] = np.nan
        if tool is not None:
            C = tool.C if rows is None else tool.C[rows]  # type: ignore[index]
            m = tool.m if rows is None else tool.m[rows]
            with np.errstate(invalid="ignore", divide="ignore"):
                x = np.hstack([x, C[:, :k].toarray() / m[:, None]])  # share of the series' k-th most used tool
        return x

    X = inputs(take)
    _drop_logging_changes(X, s, slot, S)
    fnames = np.array([np.array(cols, dtype=object)] * S).reshape(S, len(cols))
    if tool is not None:
        fnames = np.hstack([fnames, np.char.add("share:", tool.names[:, :k].astype(str)).astype(object)])
    # inputs with at least two different finite values (an absent optional column is all NaN:
    # no np.nanstd, which warns on it)
    fin = np.isfinite(X)
    cnt = fin.sum(0)
    mean = np.where(fin, X, 0.0).sum(0) / np.maximum(cnt, 1)
    live = (cnt > 0) & ((np.where(fin, X - mean, 0.0) ** 2).sum(0) > 0)
    if not live.any():
        return None
    X, fnames = X[:, live], fnames[:, live]
    y = (slot > 0).astype(np.int64)
    n_ref_s = np.bincount(s[y == 0], minlength=S)
    n_cur_s = np.bincount(s[y == 1], minlength=S)
    use = (n_ref_s >= opts.min_runs) & (n_cur_s >= opts.min_runs)
    if not use.any():
        return None
    # robust standardisation per series against its reference runs, so one model can learn shifts that
    # look alike across series (a doubled cost per token is "+3 IQRs" whatever the agent's prices)
    med, scale = _ref_scale(X, s, slot == 0, S)
    cat_series = S <= 250

    def model_inputs(x: np.ndarray, series: np.ndarray) -> np.ndarray:
        return np.hstack([series[:, None].astype(float), (x - med[series]) / scale[series]])

    Xf = model_inputs(X, s)
    rng = np.random.default_rng(opts.random_state)
    # folds of all runs, stratified by (series, reference/current); the models train on runs of the other
    # fold drawn from all runs (so a sample of large cells trains no differently) and score the sample
    s_all, y_all = data.s, data.slot > 0  # (labels as int64 where the models read them)
    strata = s_all * 2 + y_all  # sorted: runs are in (series, slot) order
    order = np.argsort(rng.random(y_all.size))  # random order, then (radix) by stratum
    order = order[np.argsort(_small_ints(strata[order], 2 * S), kind="stable")]
    start = np.concatenate([[0], np.cumsum(np.bincount(strata, minlength=2 * S))])
    within = np.arange(y_all.size)
    within -= start[strata[order]]
    del strata
    rank = np.empty(y_all.size, dtype=np.int64)
    rank[order] = within
    del order, within
    fold_all = (rank % _CLF_FOLDS).astype(np.int8)
    del rank
    fold = fold_all if take is None else fold_all[take]
    score = np.full(y.size, np.nan)
    cap = opts.classifier_max_train
    for f in range(_CLF_FOLDS):  # a couple of fits
        test = fold == f
        tr = np.flatnonzero((fold_all != f) & use[s_all])
        if tr.size > cap:
            tr = np.sort(rng.choice(tr, cap, replace=False))
        y_tr = y_all[tr].astype(np.int64)
        if np.unique(y_tr).size < 2:
            continue
        X_tr = Xf[tr] if take is None else model_inputs(inputs(tr)[:, live], s_all[tr])
        model = HistGradientBoostingClassifier(
            max_iter=40,
            max_bins=64,
            learning_rate=0.1,
            max_leaf_nodes=15,
            min_samples_leaf=20,
            l2_regularization=1.0,
            early_stopping=False,
            categorical_features=[0] if cat_series else None,
            random_state=opts.random_state,
        )
        # one OpenMP thread (set here: sklearn's OpenMP runtime may have been loaded just now, after the
        # limits of drift_from_runs were applied): small fits gain little and stall on a busy machine
        with threadpool_limits(limits=1, user_api="openmp"):
            model.fit(X_tr, y_tr)
            score[test] = model.predict_proba(Xf[test])[:, 1]
    auc, cnt = _grouped_auc(s, slot, score, S, W1)
    n0 = n_ref_s[:, None].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (auc - 0.5) / np.sqrt((n0 + cnt + 1) / (12.0 * n0 * cnt))
    pval = stats.norm.sf(z)
    ok = use[:, None] & (cnt >= opts.min_runs) & np.isfinite(z)
    ok[:, 0] = False
    si, wi = np.nonzero(ok)
    if si.size == 0:
        return None
    out = pl.DataFrame(
        {
            "_s": si.astype(np.int64),
            "_slot": wi.astype(np.int64),
            "feature": "run_classifier",
            "method": _METHODS["run_classifier"],
            "statistic": auc[si, wi],
            "p_value": pval[si, wi],
            "effect_size": 2 * auc[si, wi] - 1,
            "reference_value": np.full(si.size, 0.5),
            "current_value": auc[si, wi],
            "n_ref": n_ref_s[si].astype(np.int64),
            "n_cur": cnt[si, wi].astype(np.int64),
        }
    )
    what = np.full(si.size, "", dtype=object)
    if take is not None:  # say so when the AUC comes from a sample of the runs
        n_all = np.bincount(data.gid, minlength=data.groups).reshape(S, W1)
        sampled = (n_all[si, 0] > n_ref_s[si]) | (n_all[si, wi] > cnt[si, wi])
        if sampled.any():
            i = np.flatnonzero(sampled)
            note = np.char.add(
                np.char.add(
                    np.char.add(np.char.add(" on a sample of ", n_ref_s[si[i]].astype(str)), " of "),
                    n_all[si[i], 0].astype(str),
                ),
                np.char.add(
                    np.char.add(np.char.add(" reference and ", cnt[si[i], wi[i]].astype(np.int64).astype(str)),
                                " of "),
                    np.char.add(n_all[si[i], wi[i]].astype(str), " current runs"),
                ),
            )
            what[i] = note
    # importances: each run feature's own AUC per window; the three furthest from 0.5 are named. Only for
    # the series with a window significant before correction (the others are explained by the AUC alone).
    cand = np.zeros(S, dtype=bool)
    cand[si[pval[si, wi] <= opts.alpha]] = True
    rows_c = cand[s]
    if rows_c.any():
        imp = _grouped_auc(s[rows_c], slot[rows_c], X[rows_c], S, W1)[0]  # all features at once
        sel = cand[si]
        imp_c = imp[si[sel], wi[sel]]  # rows x features
        dist = np.nan_to_num(np.abs(imp_c - 0.5), nan=-1.0)
        top = np.argsort(-dist, axis=1, kind="stable")[:, :3]
        names = fnames[si[sel][:, None], top].astype(str)
        vals = np.take_along_axis(imp_c, top, 1)
        text = np.char.add(np.char.add(np.char.add(names, " (AUC "), np.char.mod("%.2f", np.nan_to_num(vals))), ")")
        joined = np.char.add("; most different: ", text[:, 0])
        for j in range(1, text.shape[1]):
            joined = np.char.add(np.char.add(joined, ", "), text[:, j])
        what[sel] = np.char.add(what[sel].astype(str), joined)
    return out.with_columns(pl.Series("_what", what.astype(str)))


# --------------------------------------------------------------------------------------------
# output


def _bh(p: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values within each group (NaN stays NaN)."""
    fr = pl.DataFrame({"i": np.arange(p.size), "g": groups, "p": p}).with_columns(pl.col("p").fill_nan(None))
    q = (
        fr.drop_nulls("p")
        .sort("g", "p", "i")
        .with_columns(
            (pl.col("p") * pl.len().over("g") / (pl.int_range(pl.len()).over("g") + 1)).alias("raw")
        )
        .with_columns(pl.col("raw").cum_min(reverse=True).over("g").clip(upper_bound=1.0).alias("q"))
        .select("i", "q")
    )
    out = np.full(p.size, np.nan)
    out[q["i"].to_numpy()] = q["q"].to_numpy()
    return out


def _num(expr: pl.Expr) -> pl.Expr:
    """A number rounded for reading: 3 significant-ish digits."""
    a = expr.abs()
    return (
        pl.when(expr.is_null() | expr.is_nan())
        .then(pl.lit("n/a"))
        .when(a >= 100)
        .then(expr.round(0).cast(pl.Int64).cast(pl.String))
        .when(a >= 1)
        .then(expr.round(2).cast(pl.String))
        .when(a >= 0.1)
        .then(expr.round(3).cast(pl.String))
        .otherwise(expr.round(4).cast(pl.String))
    )


def _pct(expr: pl.Expr) -> pl.Expr:
    return pl.concat_str((expr * 100).round(1).cast(pl.String), pl.lit("%"))


def _unsigned_zero(expr: pl.Expr) -> pl.Expr:
    """``expr`` (rounded) with a zero read as ``0.0``: a change that rounds to ``-0.0`` is no change."""
    return pl.when(expr == 0).then(pl.lit(0.0)).otherwise(expr)


def _detail() -> pl.Expr:
    f = pl.col("feature")
    ref, cur = pl.col("reference_value"), pl.col("current_value")
    return (
        pl.when(f == "tool_mix")
        .then(pl.format("{} {} -> {} (JS distance {}, PSI {})", "_what", _pct(ref), _pct(cur),
                        pl.col("effect_size").round(3), pl.col("_psi").round(2)))
        .when(f == "action_bigrams")
        .then(pl.format("'{}' {} -> {} (JS distance {}, PSI {})", "_what", _pct(ref), _pct(cur),
                        pl.col("effect_size").round(3), pl.col("_psi").round(2)))
        .when(f == "error_rate")
        .then(pl.format("runs with a failed step {} -> {}", _pct(ref), _pct(cur)))
        .when(f == "steps_per_run")
        .then(pl.format("mean {} -> {} steps (KS {})", _num(ref), _num(cur), pl.col("statistic").round(3)))
        .when(f == "tokens_per_run")
        .then(pl.format("mean {} -> {} tokens (KS {})", _num(ref), _num(cur), pl.col("statistic").round(3)))
        .when(f == "cost_per_run")
        .then(pl.format("mean ${} -> ${} (KS {})", _num(ref), _num(cur), pl.col("statistic").round(3)))
        .when(f == "latency")
        .then(pl.format("mean {} ms -> {} ms per step (KS {})", _num(ref), _num(cur), pl.col("statistic").round(3)))
        .when(f == "run_classifier")
        .then(pl.format("AUC {}{}", pl.col("statistic").round(3), pl.col("_what").fill_null("")))
        .when(f == "action_entropy")
        .then(pl.format("entropy {} -> {} bits ({}%)", _unsigned_zero(ref.round(2)), _unsigned_zero(cur.round(2)),
                        _unsigned_zero((-(pl.col("effect_size")) * 100).round(1))))
        .when(f == "self_similarity")
        .then(pl.format("tool mix {} from reference vs {} from previous window (JS distance)", ref.round(3),
                        cur.round(3)))
        .when(f == "feedback_outcome_gap")
        .then(pl.format("feedback {}, outcome {} -> {}", "_what", _num(ref), _num(cur)))
        .otherwise(pl.lit(""))
    )


def _finish(rows: pl.DataFrame, data: _Data, opts: _Options) -> pl.DataFrame:
    for col, dtype in (("_what", pl.String), ("_psi", pl.Float64)):
        if col not in rows.columns:
            rows = rows.with_columns(pl.lit(None, dtype=dtype).alias(col))
    p = rows["p_value"].cast(pl.Float64).fill_nan(None).to_numpy().astype(float)
    q = _bh(p, rows["_s"].to_numpy() if opts.fdr == "series" else np.zeros(rows.height, dtype=np.int64))
    thr = pl.col("feature").replace_strict(opts.min_effect, return_dtype=pl.Float64)
    drifted_label = pl.col("feature").replace_strict({k: v[0] for k, v in _LABELS.items()}, return_dtype=pl.String)
    steady_label = pl.col("feature").replace_strict({k: v[1] for k, v in _LABELS.items()}, return_dtype=pl.String)
    origin = pl.lit(data.origin, dtype=TS_DTYPE)
    out = (
        rows.with_columns(
            pl.Series("q_value", q),
            pl.col("p_value").cast(pl.Float64).fill_nan(None),
            thr.alias("threshold"),
        )
        .with_columns(
            (
                pl.col("q_value").is_not_null()
                & (pl.col("q_value") <= opts.alpha)
                & (pl.col("effect_size").fill_nan(None).fill_null(-np.inf) >= pl.col("threshold"))
            ).alias("drifted"),
            (origin + pl.duration(microseconds=(pl.col("_slot") - 1) * opts.every_us)).alias("window_start"),
        )
        .with_columns(_window_end(pl.col("window_start"), opts.every_us, data.end).alias("window_end"))
        .join(data.series, on="_s", how="left")
        .with_columns(
            pl.format(
                "{}: {}, {}",
                "series",
                pl.when(pl.col("drifted")).then(drifted_label).otherwise(steady_label),
                _detail(),
            ).alias("explain"),
            pl.col("feature").replace_strict({f: i for i, f in enumerate(FEATURES)}, return_dtype=pl.Int64)
            .alias("_forder"),
        )
        .sort("series", "window_start", "_forder")
    )
    cols = ["series", *opts.by, *_OUT_COLUMNS]
    cols = list(dict.fromkeys(cols))
    return out.select(
        [pl.col(c).cast(_OUT_COLUMNS[c]) if c in _OUT_COLUMNS else pl.col(c) for c in cols]
    )


def _empty(by: tuple[str, ...]) -> pl.DataFrame:
    schema: dict[str, pl.DataType] = {"series": pl.String()}
    for c in by:
        schema[c] = pl.String()
    schema.update(_OUT_COLUMNS)
    return pl.DataFrame(schema=schema)


__all__ = [
    "DEFAULT_MIN_EFFECT",
    "FEATURES",
    "FEEDBACK_FEATURES",
    "auto_reference_length",
    "detect_drift",
    "drift_from_runs",
]
