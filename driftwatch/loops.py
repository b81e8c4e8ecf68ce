"""Loop detection: repeating action cycles inside runs, and delegation cycles across runs.

An agent that repeats a task without progress burns tokens until something
stops it. :func:`detect_loops` finds every repeating cycle of tool calls, and
every prompt sent to the model again and again, in every run of a log, says
what kind of repetition it is and what it cost;
:func:`loop_summary` reduces that to one row per run for escalation scoring;
:func:`detect_delegation_cycles` finds runs that delegate back and forth
between agents through ``parent_run_id``.

How steps are compared
----------------------
Events are read as if sorted by ``(run_id, step)`` (see Scaling). **LLM steps** (``action ==
"llm"``) are taken out of the sequence: their prompts grow every turn and
never repeat, so ``llm > search(q) > llm > search(q) > ...`` is the loop
``search`` of period 1. Positions are mapped back to the original ``step``
values, and the LLM steps inside a loop count towards its waste. (LLM steps
in a row with one prompt are searched on their own: see *Repeated LLM
calls*.) Every other
action is a tool step, hand-offs (``handoff:<agent>``) included. Tool steps
are compared at two levels:

* **action level**: the action name only;
* **signature level**: action, arguments and result. With ``fuzzy=False``
  the texts must be byte-identical. With ``fuzzy=True`` (default) two texts
  also match when they are *near-duplicates*: equal after normalisation
  (lowercase, whitespace collapsed, ISO timestamps, UUIDs, hex-like ids or
  numbers of 8+ characters and generated ids of 16+ letters and digits
  masked), or having the same standalone numbers
  and an estimated Jaccard similarity of their character 4-gram shingle sets
  (MinHash, 64 hashes, punctuation read as spaces; see
  :mod:`driftwatch._signatures`) of at least ``similarity`` (default 0.8). Numbers are
  content: ``page=2`` vs ``page=3`` or ``progress 40`` vs ``progress 50``
  never match, so pagination and polling are not mistaken for no-progress
  loops. Both arguments *and* result must match: the same request answered
  with new results is progress. Arguments or results that were not recorded
  (null or empty; a failure is its own result) match nothing, so repeats of
  such calls stay action-level, hand-offs included (OpenTelemetry records no
  arguments for them: ping-pong read from it is ``same_action`` with
  ``handoff`` set, reported, not escalated on its own); a hand-off's result
  (seldom logged) need not be recorded: the same task handed over again is
  ping-pong.

How cycles are found
--------------------
Every step gets a 64-bit hash of its action (Polars, in the one pass that reads
the events). For every period ``p`` in ``1..max_period``, ``eq_p[i]`` says tool
step ``i`` has the action of tool step ``i - p`` of the same run (numpy, one
shifted comparison of the hashes per period, pairs across a run boundary masked
out), and only the stretches of ``eq_p`` long enough to matter are located
(an AND of shifted copies, by doubling spans). A maximal stretch of ``eq_p`` of length at least
``p * (min_repeats - 1)`` is a periodic segment ``[i0 - p, i1]`` covering at
least ``min_repeats`` cycles. Candidates with the same extent keep the
smallest period (a loop of period ``p`` is also periodic with ``2p``, with
exactly the same maximal extent), and a candidate strictly inside another
one of the same level is dropped (``A A A B`` x 3 is one loop of period 4,
not three loops ``A A A`` plus one). Signature-level segments are the loops
of kind ``exact``; action-level segments are kept as ``same_action`` unless
signature-level loops cover at least half of their tool steps. Either becomes
``error_retry`` when at least ``error_share`` (default 0.5) of its tool steps
failed (``status == "error"``) and at least ``min_repeats`` of them did (two
failures and a success is a retry that worked, not a storm). A failed step's
result is compared as "failed", whatever its error message says, so retries
of the same call that fail with varying messages are one loop. Runs may have
several loops.

The work is linear in the number of events times ``max_period``. Signatures
are compared only for pairs inside action-level candidates: arguments are
hashed only for the candidate steps of an eager frame (every step of a
``LazyFrame``, in its one pass), results only for the pairs whose arguments
match, and fuzzy matching only reads and normalises the texts of pairs whose
hashes differ. A signature-level loop of period ``p`` needs ``span = p *
(min_repeats - 1)`` consecutive matching pairs, and any ``span`` consecutive
positions hold exactly one multiple of ``span``; so near-duplicates are judged
first for the pairs at those anchor positions, and then only for pairs less
than ``span`` positions from an anchor that matches. Pairs never judged cannot
be part of a loop (the loops are those found by judging every pair, tested).
Independent parts run on two threads (numpy and Polars release
the GIL): the money columns while the periods are scanned, periods two at a
time, argument hashes while the pairs are listed, MinHash in two halves.

Repeated LLM calls
------------------
An agent that retries a model call (a rate limit, a reply it cannot parse) sends
the same prompt again with no tool call between: at least ``min_repeats`` LLM
steps in a row with the same prompt (``args``) are a loop of period 1 and
pattern ``llm``. Only prompts of the same length in bytes are compared (a retry
re-renders its template, with timestamps and ids of the same format; a
conversation that moved on is longer): byte for byte, or with ``fuzzy=True`` also
after normalisation (timestamps, UUIDs and long ids masked, case and whitespace),
but never by MinHash: a conversation that grows by one turn stays similar to the
last one, and is progress. A prompt or a reply that was not recorded (null or
empty) matches nothing. The replies then say what kind of loop it is, as results do for
tools: the same reply each time (a model at temperature 0 that keeps answering
what the agent cannot use) is ``exact``, failures are ``error_retry``, and
different replies to one prompt (sampling several answers, ``match ==
"prompt"``) are ``same_action``: reported, never escalated on their own. A
stretch of LLM steps that lies in the waste of a tool loop matched on signatures
is part of that loop and is not reported again. Only runs of consecutive LLM
steps at least ``min_repeats`` long are read, and of them only the prompts of
neighbours of equal length: an agent that alternates LLM and tool steps costs one
bitmap pass, a chat log (LLM steps only, the prompt growing) one length
comparison per step.

Extent and waste
----------------
A cycle starts with the LLM steps that led to its first tool call (the steps
after the previous tool call of the run) and ends with its last tool call,
so ``start_step`` is the first such step and ``end_step`` the last tool step
of the loop. ``wasted_steps`` counts the steps (LLM steps included) after the
first full cycle, and ``wasted_tokens`` / ``wasted_cost_usd`` sum
``input_tokens + output_tokens`` and ``cost_usd`` over them. Sums are taken
over each range on its own (not as differences of global prefix sums), so
results are bit-identical whatever else is in the frame.

Severity
--------
``severity`` (per loop) and ``loop_severity`` (per run, the maximum) are in
[0, 1]. With ``intensity = max(waste share, 1 - 2 ** (-(repeats - 1) / 3))``,
where the waste share is ``wasted_cost_usd / run_cost_usd`` (or the step share
when the run has no cost): ``exact`` and ``error_retry`` loops score
``0.5 + 0.5 * intensity`` (so in [0.5, 1]); ``same_action`` loops score
``0.3 * intensity`` (at most 0.3: reported, never escalated on their own).

Scaling
-------
:func:`detect_loops` and :func:`loop_summary` are correct on any subset of
whole runs, so the audit applies them per chunk of runs and concatenates.
Nothing is sorted when each run's rows are contiguous and in step order: runs
are read in place, and only the rows of runs that are split into several
blocks or out of step order (runs crossing midnight in day-partitioned files,
a shuffled frame) are sorted apart and read after them; the output is the same
as for the sorted log. Delegation cycles
span runs and are detected in the fleet stage from the per-run table
(:func:`driftwatch.features.run_features`). A ``LazyFrame`` is collected once
with only the needed columns, text reduced to 64-bit hashes (about 90 bytes
per event), plus one second filtered read of ``args``/``result`` for the
candidate steps when ``fuzzy=True``. See the README for measured speed and
peak memory.

Examples
--------
>>> import polars as pl, driftwatch as dw
>>> ev = pl.DataFrame({
...     "run_id": ["r1"] * 8,
...     "step": list(range(1, 9)),
...     "action": ["llm", "search"] * 4,
...     "args": ["prompt 1", "q", "prompt 2", "q", "prompt 3", "q", "prompt 4", "q"],
...     "result": ["call search", "nothing"] * 4,
... })
>>> dw.detect_loops(ev).select("start_step", "end_step", "period", "repeats", "pattern", "kind",
...                            "wasted_steps").to_dicts()
[{'start_step': 1, 'end_step': 8, 'period': 1, 'repeats': 4, 'pattern': 'search', 'kind': 'exact', 'wasted_steps': 6}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from driftwatch._frames import as_lazy, check_flag, collect, known_sum
from driftwatch._signatures import _pair_index, near_duplicates, normalize
from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.schema import HANDOFF_PREFIX, LLM_ACTION

#: Columns of :func:`detect_loops` output, in order (CONTRACT section 2, then extras).
LOOP_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "agent": pl.String(),
    "start_step": pl.Int64(),
    "end_step": pl.Int64(),
    "period": pl.Int64(),
    "repeats": pl.Int64(),
    "pattern": pl.String(),
    "kind": pl.String(),
    "wasted_steps": pl.Int64(),
    "wasted_tokens": pl.Int64(),
    "wasted_cost_usd": pl.Float64(),
    "waste_start_step": pl.Int64(),
    "match": pl.String(),
    "change": pl.String(),
    "error_share": pl.Float64(),
    "handoff": pl.Boolean(),
    "n_steps": pl.Int64(),
    "cycle_steps": pl.Int64(),
    "run_steps": pl.Int64(),
    "run_tokens": pl.Int64(),
    "run_cost_usd": pl.Float64(),
    "severity": pl.Float64(),
}

#: Columns of :func:`loop_summary` output.
SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "agent": pl.String(),
    "n_loops": pl.Int64(),
    "worst_kind": pl.String(),
    "worst_pattern": pl.String(),
    "worst_repeats": pl.Int64(),
    "wasted_steps": pl.Int64(),
    "wasted_tokens": pl.Int64(),
    "wasted_cost_usd": pl.Float64(),
    "loop_severity": pl.Float64(),
    "no_progress_loops": pl.Int64(),
    "no_progress_cost_usd": pl.Float64(),
    "worst_error_share": pl.Float64(),
    "worst_change": pl.String(),
}

#: Columns of :func:`detect_delegation_cycles` output.
DELEGATION_SCHEMA: dict[str, pl.DataType] = {
    "chain_id": pl.String(),
    "start_run_id": pl.String(),
    "end_run_id": pl.String(),
    "run_ids": pl.List(pl.String()),
    "agents": pl.String(),
    "period": pl.Int64(),
    "repeats": pl.Int64(),
    "start_depth": pl.Int64(),
    "end_depth": pl.Int64(),
    "n_runs": pl.Int64(),
    "kind": pl.String(),
    "wasted_runs": pl.Int64(),
    "wasted_tokens": pl.Int64(),
    "wasted_cost_usd": pl.Float64(),
}

KINDS: tuple[str, ...] = ("exact", "error_retry", "same_action")
_SEVERE_KINDS = ("exact", "error_retry")
_SAME_ACTION_WEIGHT = 0.3
_ERROR_RESULT = "\x00<error>"
_ERROR_HASH = 0x5EED_E770_0000_0001
#: The result hash of a step that recorded no result (null or empty) and did not fail: it
#: matches nothing (but at a hand-off, whose target is its content).
_UNRECORDED_HASH = 0x5EED_E770_0000_0002


# ---------------------------------------------------------------------------------------------
# parameter checks
# ---------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= value <= hi:
        raise InvalidParameterError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def _check_fraction(name: str, value: Any, *, open_low: bool = True) -> float:
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (0.0 < v <= 1.0) if open_low else (0.0 <= v <= 1.0)
    if not ok:
        lo = "(0" if open_low else "[0"
        raise InvalidParameterError(f"{name} must be a number in {lo}, 1], got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# periodic segments (numpy kernel shared by runs and delegation chains)
# ---------------------------------------------------------------------------------------------


def _segments_from_eq(eq: np.ndarray, p: int, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Maximal stretches of ``eq`` (``eq[k]`` compares position ``k + p`` with ``k``)
    at least ``min_len`` long, as periodic segments ``(start, end)`` (inclusive)."""
    if eq.size == 0:
        z = np.zeros(0, np.int64)
        return z, z
    edges = np.flatnonzero(eq[1:] != eq[:-1]) + 1  # where a stretch starts or ends
    parts = [edges]
    if eq[0]:
        parts.insert(0, np.zeros(1, np.int64))
    if eq[-1]:
        parts.append(np.full(1, eq.size, np.int64))
    edges = np.concatenate(parts) if len(parts) > 1 else edges
    lo, hi = edges[0::2], edges[1::2]  # eq[lo:hi] is a stretch of trues
    keep = (hi - lo) >= min_len
    # positions lo + p .. hi - 1 + p match p earlier -> the segment starts p before
    return lo[keep], hi[keep] - 1 + p


def _dedupe_segments(
    group: np.ndarray, start: np.ndarray, end: np.ndarray, period: np.ndarray
) -> np.ndarray:
    """Indices of the segments to keep: per identical extent the smallest period,
    then drop segments strictly inside another segment of the same group."""
    if start.size == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((period, -end, start, group))
    g, s, e = group[order], start[order], end[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1]) | (e[1:] != e[:-1])
    order, g, s, e = order[first], g[first], s[first], e[first]
    # sorted by group, start asc, end desc: contained iff an earlier segment of the
    # group reaches at least as far
    big = np.int64(e.max() + 2)
    e_adj = e + g.astype(np.int64) * big
    prev_max = np.concatenate(([np.iinfo(np.int64).min], np.maximum.accumulate(e_adj)[:-1]))
    return order[prev_max < e_adj]


def periodic_segments(
    codes: np.ndarray,
    group: np.ndarray,
    *,
    max_period: int,
    min_repeats: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Periodic segments of an integer sequence split into contiguous groups.

    Parameters
    ----------
    codes : numpy.ndarray
        One integer code per position; positions of a group are contiguous and in order.
    group : numpy.ndarray
        Group id (a run, a delegation path) of every position.
    max_period, min_repeats : int
        Periods ``1..max_period`` repeated at least ``min_repeats`` times.

    Returns
    -------
    tuple of numpy.ndarray
        ``(start, end, period)``: inclusive positions and the minimal period of
        every maximal periodic segment, after the collapsing rules of the module.

    Examples
    --------
    >>> import numpy as np
    >>> codes = np.array([5, 1, 2, 1, 2, 1, 2, 9])
    >>> periodic_segments(codes, np.zeros(8, int), max_period=4, min_repeats=3)
    (array([1]), array([6]), array([2]))
    """
    starts, ends, periods = [], [], []
    n = codes.size
    for p in range(1, min(max_period, max(n - 1, 0)) + 1):
        eq = (codes[p:] == codes[:-p]) & (group[p:] == group[:-p])
        s, e = _segments_from_eq(eq, p, p * (min_repeats - 1))
        starts.append(s)
        ends.append(e)
        periods.append(np.full(s.size, p, np.int64))
    if not starts:
        z = np.zeros(0, np.int64)
        return z, z, z
    s = np.concatenate(starts)
    e = np.concatenate(ends)
    per = np.concatenate(periods)
    keep = _dedupe_segments(group[s] if s.size else s, s, e, per)
    keep = keep[np.lexsort((s[keep], group[s[keep]]))] if keep.size else keep
    return s[keep], e[keep], per[keep]


# ---------------------------------------------------------------------------------------------
# detect_loops
# ---------------------------------------------------------------------------------------------


def _result_expr() -> pl.Expr:
    """The result as compared between steps: a failed step's outcome is the failure
    itself, so its (varying) error message is replaced by a marker."""
    return pl.when(pl.col("status") == "error").then(pl.lit(_ERROR_RESULT)).otherwise(pl.col("result"))


def _failed_expr() -> pl.Expr:
    return (pl.col("status") == "error").fill_null(False)


def _args_hash_expr() -> pl.Expr:
    return pl.col("args").hash(11).alias("_ha")


def _result_hash_expr() -> pl.Expr:
    """A failed step's result hashes to a fixed marker, whatever its error message; one that
    recorded no result (null or empty) to another, :data:`_UNRECORDED_HASH`."""
    return (
        pl.when(_failed_expr()).then(pl.lit(_ERROR_HASH, pl.UInt64))
        .when(pl.col("result").str.len_bytes().fill_null(0) == 0).then(pl.lit(_UNRECORDED_HASH, pl.UInt64))
        .otherwise(pl.col("result").hash(13))
        .alias("_hr")
    )


def _hash_exprs() -> list[pl.Expr]:
    """The compared values of a tool step: hashes of its arguments and of its result,
    and whether it failed."""
    return [_args_hash_expr(), _result_hash_expr(), _failed_expr().alias("_err")]


#: Worker threads of :func:`detect_loops`.
_THREADS = 2

def _positions(flags: pl.Series) -> np.ndarray:
    """Rows where a boolean column is true."""
    return flags.arg_true().to_numpy().astype(np.int64)


def _numpy(s: pl.Series) -> np.ndarray:
    """``s.to_numpy()`` of a numeric column without nulls, joined by numpy when it has several
    chunks (Polars would first copy it into fresh memory of its own: twice the page faults)."""
    if s.n_chunks() == 1 or s.has_nulls():
        return s.to_numpy()
    return np.concatenate([c.to_numpy() for c in s.get_chunks()])


#: Up to this many rows are gathered directly (see :func:`_take_frame`).
_DIRECT_GATHER = 1024


def _take_frame(df: pl.DataFrame, idx: np.ndarray) -> pl.DataFrame:
    """``df[idx]`` (any order, repeats allowed), fast on a large frame of many chunks, where
    a gather locates the chunk of every index: the distinct rows are picked with a boolean
    mask, then gathered from that small single-chunk frame."""
    if idx.size < _DIRECT_GATHER or max(df.n_chunks("all"), default=1) == 1:
        return df[idx]
    if bool((idx[1:] >= idx[:-1]).all()):  # sorted: distinct rows without a sort
        new = np.ones(idx.size, dtype=bool)
        new[1:] = idx[1:] != idx[:-1]
        uniq, inv = (idx, None) if new.all() else (idx[new], np.cumsum(new) - 1)
    else:
        uniq, inv = np.unique(idx, return_inverse=True)
    mask = np.zeros(df.height, dtype=bool)
    mask[uniq] = True
    sub = df.filter(pl.Series(mask)).rechunk()
    return sub if inv is None else sub[inv]


def _take(s: pl.Series, idx: np.ndarray) -> pl.Series:
    """``s.gather(idx)``, as :func:`_take_frame`."""
    return _take_frame(s.to_frame(), idx).to_series()


class _TextSource:
    """Arguments and results of chosen steps: their hashes, and their raw text for fuzzy matching.

    An eager input keeps its (canonical) ``args``, ``result`` and ``status`` columns in the
    step frame (no copy), so both are computed from the chosen rows only. A LazyFrame's
    hashes are computed for every row in pass 1 (reading the text columns twice would cost
    more); the raw texts of the candidate steps are read again, once, with a filter on the
    row index (only the needed columns).
    """

    def __init__(self, lf: pl.LazyFrame | None, *, streaming: bool) -> None:
        self._lf = lf
        self._streaming = streaming
        self._cache = pl.DataFrame()
        self._args: tuple[pl.DataFrame, np.ndarray, pl.Series] | None = None
        #: more rows (``_row``) to read with the first :meth:`prefetch` (those of runs read apart)
        self.extra: pl.Series | None = None

    @staticmethod
    def has_text(frame: pl.DataFrame) -> bool:
        return "args" in frame.columns

    def args(self, frame: pl.DataFrame, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hashes of the arguments of the step frame's rows ``pos``, whether they failed, and
        whether arguments were recorded (not null, not empty)."""
        if not self.has_text(frame):
            sub = _take_frame(frame[["_ha", "_err", "_la"]], pos)
        else:
            texts = _take_frame(frame[["args", "status"]], pos)
            self._args = (frame, pos, texts["args"])  # kept for :meth:`get`
            sub = texts.lazy().select(
                _args_hash_expr(), _failed_expr().alias("_err"), pl.col("args").str.len_bytes().alias("_la")
            ).collect()
        return sub["_ha"].to_numpy(), sub["_err"].to_numpy(), sub["_la"].fill_null(0).to_numpy() > 0

    def arg_lengths(self, frame: pl.DataFrame, pos: np.ndarray) -> np.ndarray:
        """Byte lengths of the arguments of the step frame's rows ``pos`` (null: 0)."""
        if self.has_text(frame):
            return _take(frame["args"], pos).str.len_bytes().fill_null(0).to_numpy()
        return _take(frame["_la"], pos).fill_null(0).to_numpy()  # (measured in pass 1)

    def results(self, frame: pl.DataFrame, pos: np.ndarray) -> np.ndarray:
        """Hashes of the results of the step frame's rows ``pos`` (see :func:`_hash_exprs`)."""
        if not self.has_text(frame):
            return _take(frame["_hr"], pos).to_numpy()
        sub = _take_frame(frame[["result", "status"]], pos)
        return sub.lazy().select(_result_hash_expr()).collect()["_hr"].to_numpy()

    def prefetch(self, frame: pl.DataFrame, pos: np.ndarray) -> None:
        """Read the texts of the step frame's rows ``pos`` in one pass over a LazyFrame
        (later :meth:`get` calls take theirs from them). Nothing to do for an eager frame."""
        if self.has_text(frame):
            return
        assert self._lf is not None
        rows = _take(frame["_row"], pos)
        if self._cache.height and bool(rows.is_in(self._cache["_row"].implode()).all()):
            return
        if self.extra is not None:
            rows = pl.concat([rows, self.extra])
        self._cache = collect(
            self._lf.select("_row", pl.col("args"), _result_expr().alias("result"))
            .filter(pl.col("_row").is_in(rows.implode())),
            streaming=self._streaming,
        )

    def get(self, frame: pl.DataFrame, pos: np.ndarray, field: str) -> pl.Series:
        """``field`` ("args" or "result") of the step frame's rows ``pos``, in that order."""
        if self.has_text(frame):
            if field == "args":
                if self._args is not None and self._args[0] is frame:  # a subset of the rows hashed last
                    done, texts = self._args[1], self._args[2]
                    idx = np.searchsorted(done, pos)
                    if bool((done[np.minimum(idx, done.size - 1)] == pos).all()):
                        return texts.gather(idx).alias("t")
                return _take(frame["args"], pos).alias("t")
            sub = _take_frame(frame[["result", "status"]], pos)
            return sub.lazy().select(_result_expr().alias("t")).collect()["t"]
        want = _take(frame["_row"], pos).to_frame()
        return want.join(self._cache.select("_row", pl.col(field).alias("t")), on="_row", how="left",
                         maintain_order="left")["t"]


def _order_exprs() -> list[pl.Expr]:
    """``_nb``: a new block of rows with the same ``run_id`` starts here; ``_dis``: the step
    is smaller than the previous row's (nulls first)."""
    step = pl.col("step").fill_null(pl.lit(np.iinfo(np.int64).min, pl.Int64))
    return [
        (pl.col("run_id") != pl.col("run_id").shift(1)).fill_null(True).alias("_nb"),
        (step < step.shift(1)).fill_null(False).alias("_dis"),
    ]


def _llm_pair_expr() -> pl.Expr:
    """``_ll``: this row and the previous one are LLM steps of one block (from ``_tool`` and
    ``_nb``: bitmap operations, no second string comparison)."""
    return (~pl.col("_tool") & ~pl.col("_tool").shift(1).fill_null(True) & ~pl.col("_nb")).alias("_ll")


def _load_steps(events: Any, *, streaming: bool) -> tuple[pl.DataFrame, _TextSource]:
    """Pass 1: one row per event with a non-null run, in input order, with the columns every
    stage needs (``_tool``: not an LLM step; ``_nb``, ``_dis``: see :func:`_order_exprs`; ``_ll``:
    see :func:`_llm_pair_expr`)."""
    frame = events
    if hasattr(frame, "events") and not isinstance(frame, pl.DataFrame | pl.LazyFrame):
        frame = frame.events
    eager = isinstance(frame, pl.DataFrame)
    lf = as_lazy(events)
    act = pl.col("action").fill_null("<none>")
    cols = [
        pl.col("run_id"),
        pl.col("step"),
        pl.col("agent"),
        pl.col("action"),
        act.hash(7).alias("_a"),
        (act != LLM_ACTION).alias("_tool"),
        *_order_exprs(),
    ]
    if eager:
        # the text and money columns pass through without a copy: the texts are hashed later for
        # candidate steps only, tokens and cost summed on a worker thread (see :func:`_money`)
        cols += [pl.col(c) for c in ("args", "result", "status", *_MONEY)]
        if frame["run_id"].null_count():
            lf = lf.filter(pl.col("run_id").is_not_null())
        return collect(lf.select(cols).with_columns(_llm_pair_expr())), _TextSource(None, streaming=streaming)
    lf = lf.drop("_row", strict=False).with_row_index("_row")  # (a column of the user's of that name is not ours)
    cols += [pl.col("_row"), *_hash_exprs(), pl.col("args").str.len_bytes().alias("_la"), *_money_exprs()]
    steps = collect(lf.filter(pl.col("run_id").is_not_null()).select(cols).with_columns(_llm_pair_expr()),
                    streaming=streaming)
    return steps, _TextSource(lf, streaming=streaming)


@dataclass
class _Blocks:
    """Blocks of consecutive rows of the step frame with the same ``run_id``."""

    starts: np.ndarray  #: first row of every block
    bad: np.ndarray  #: the block is not a whole run in step order
    heads: pl.DataFrame  #: ``run_id`` and ``agent`` of every block's first row


def _run_blocks(steps: pl.DataFrame) -> _Blocks:
    """The blocks of ``steps`` and which of them are not a whole run in step order.

    Logs are usually grouped already, except for a few runs (e.g. runs crossing midnight
    in a day-partitioned log, or a shuffled frame). A block is bad when its run has
    other blocks, or when its steps go backwards (the step is smaller than the previous
    row's, nulls first).
    """
    starts = _positions(steps["_nb"])
    heads = _take_frame(steps[["run_id", "agent"]], starts)
    bad = heads["run_id"].is_duplicated().to_numpy()
    dis = _positions(steps["_dis"])
    block = np.searchsorted(starts, dis, side="right") - 1
    bad[block[starts[block] != dis]] = True  # backwards inside a block
    return _Blocks(starts, bad, heads)


def _regroup(steps: pl.DataFrame, blocks: _Blocks) -> pl.DataFrame:
    """The rows of the bad blocks, sorted by ``(run_id, step)`` (nulls first, ties in input
    order), with ``_nb`` and ``_dis`` recomputed."""
    bad = blocks.bad
    lo, hi = blocks.starts[bad], np.append(blocks.starts[1:], steps.height)[bad]
    ln = hi - lo
    rows = np.repeat(lo - (np.cumsum(ln) - ln), ln) + np.arange(int(ln.sum()))
    moved = _take_frame(steps, rows).sort("run_id", "step", nulls_last=False, maintain_order=True)
    return moved.with_columns(_order_exprs()).with_columns(_llm_pair_expr())


def _cumsum0(values: np.ndarray) -> np.ndarray:
    """Prefix sums with a leading 0: ``out[b] - out[a]`` sums ``values[a:b]``."""
    out = np.zeros(values.size + 1, dtype=np.float64 if values.dtype.kind == "f" else np.int64)
    np.cumsum(values, out=out[1:])
    return out


def _range_sums(values: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    """``v[lo:hi].sum()`` for every range and every array ``v`` of ``values``, each range
    summed on its own values only (so that float results do not depend on what else is in
    the frame, e.g. on chunking)."""
    length = hi - lo
    out = [np.zeros(lo.size, dtype=v.dtype) for v in values]
    nz = np.flatnonzero(length > 0)
    if nz.size == 0:
        return out
    ln = length[nz]
    offsets = np.cumsum(ln) - ln
    idx = np.arange(int(ln.sum()), dtype=np.int64) + np.repeat(lo[nz] - offsets, ln)
    for o, v in zip(out, values, strict=True):
        o[nz] = np.add.reduceat(v[idx], offsets)
    return out


def _mask_of_segments(n: int, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Boolean mask of positions covered by any ``[start, end]`` segment."""
    delta = np.bincount(start, minlength=n + 1)[: n + 1].astype(np.int64)
    delta -= np.bincount(end + 1, minlength=n + 1)[: n + 1]
    return np.cumsum(delta[:n]) > 0


def _union_positions(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Sorted positions covered by any ``[start, end]`` segment (linear in the output)."""
    order = np.argsort(start, kind="stable")
    s, e = start[order], end[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > reach[:-1]
    first = np.flatnonzero(new)
    lo = s[first]
    hi = reach[np.append(first[1:] - 1, s.size - 1)]  # inclusive
    ln = hi - lo + 1
    return np.repeat(lo - (np.cumsum(ln) - ln), ln) + np.arange(int(ln.sum()), dtype=np.int64)


def _segments_from_positions(k: np.ndarray, p: int, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_segments_from_eq`, from the sorted positions ``k`` where ``eq`` is true."""
    if k.size == 0:
        z = np.zeros(0, np.int64)
        return z, z
    brk = np.flatnonzero(np.diff(k) != 1)
    lo = k[np.concatenate(([0], brk + 1))]
    hi = k[np.concatenate((brk, [k.size - 1]))]  # inclusive
    keep = (hi - lo + 1) >= min_len
    return lo[keep], hi[keep] + p


def _empty_loops() -> pl.DataFrame:
    return pl.DataFrame(schema=LOOP_SCHEMA)


def detect_loops(
    events: pl.DataFrame | pl.LazyFrame | Any,
    *,
    max_period: int = 8,
    min_repeats: int = 3,
    fuzzy: bool = True,
    similarity: float = 0.8,
    error_share: float = 0.5,
    streaming: bool = False,
) -> pl.DataFrame:
    """Find repeating cycles of tool calls, and repeated LLM calls, in every run.

    Parameters
    ----------
    events : polars.DataFrame, polars.LazyFrame or ReadResult
        Canonical events (needs ``run_id``, ``action`` and ``step`` or ``ts``;
        ``args``, ``result``, ``status``, tokens and cost are used when present).
        Need not be sorted.
    max_period : int, default=8
        Longest cycle, in tool calls, that is searched (1..64).
    min_repeats : int, default=3
        Fewest full cycles that make a loop (2..1000).
    fuzzy : bool, default=True
        Match near-duplicate arguments/results (normalisation + MinHash), see the
        module docstring. ``False`` requires byte-identical texts for ``exact``.
    similarity : float, default=0.8
        Jaccard threshold of the MinHash comparison, in (0, 1].
    error_share : float, default=0.5
        A loop whose tool steps failed at least this often (and at least
        ``min_repeats`` times) is ``error_retry``.
    streaming : bool, default=False
        Collect LazyFrame input with Polars' streaming engine.

    Returns
    -------
    polars.DataFrame
        One row per loop, sorted by ``run_id, start_step``, with the columns of
        :data:`LOOP_SCHEMA`: ``run_id, agent, start_step, end_step, period,
        repeats, pattern, kind, wasted_steps, wasted_tokens, wasted_cost_usd``
        (CONTRACT) and ``match`` (``identical`` | ``near_duplicate`` for exact
        and error loops matched on signatures, ``action`` for action-level loops,
        ``prompt`` for LLM calls with one prompt and different replies),
        ``change`` (what changed between the repeats of a ``same_action`` loop:
        ``arguments``, ``results`` for the same request with new results, or
        ``unrecorded`` when arguments or results were not logged; null for the
        other kinds), ``error_share``, ``handoff`` (every action of the cycle is a hand-off),
        ``n_steps`` (steps in the extent), ``cycle_steps`` (steps of the first
        cycle, LLM steps included), ``run_steps``, ``run_tokens``,
        ``run_cost_usd`` and ``severity`` in [0, 1]. ``agent`` is the run's
        agent (its first step's). ``period`` counts tool calls per cycle and
        ``repeats`` full cycles.

    Raises
    ------
    InvalidParameterError
        An option is out of range.
    SchemaError
        A required column is missing.

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> ev = pl.DataFrame({"run_id": ["r"] * 6, "step": [1, 2, 3, 4, 5, 6],
    ...                    "action": ["a", "b", "a", "b", "a", "b"],
    ...                    "status": ["error"] * 6})
    >>> dw.detect_loops(ev).select("pattern", "period", "repeats", "kind").to_dicts()
    [{'pattern': 'a > b', 'period': 2, 'repeats': 3, 'kind': 'error_retry'}]
    """
    max_period = _check_int("max_period", max_period, 1, 64)
    min_repeats = _check_int("min_repeats", min_repeats, 2, 1000)
    similarity = _check_fraction("similarity", similarity)
    error_share = _check_fraction("error_share", error_share)
    fuzzy = check_flag(fuzzy, name="fuzzy")
    streaming = check_flag(streaming, name="streaming")

    steps, source = _load_steps(events, streaming=streaming)
    if steps.height == 0:
        return _empty_loops()
    opts = {"max_period": max_period, "min_repeats": min_repeats, "fuzzy": fuzzy, "similarity": similarity,
            "error_share": error_share}
    blocks = _run_blocks(steps)
    # runs already whole and in step order are read in place; the others are sorted apart
    # and come after them (as if the frame had been sorted)
    moved = _regroup(steps, blocks) if blocks.bad.any() else None
    if moved is not None and fuzzy and not source.has_text(steps):
        source.extra = moved["_row"]  # texts of both parts in one pass over the LazyFrame
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        parts = [_loops_in(steps, blocks, source, pool, **opts)]
        if moved is not None:
            parts.append(_loops_in(moved, _run_blocks(moved), source, pool, **opts))
    found = [p for p in parts if p is not None]
    if not found:
        return _empty_loops()
    # (a part is a dict of columns, or a frame when it holds tool and LLM loops both)
    frames = [f if isinstance(f, pl.DataFrame) else pl.DataFrame(f) for f in found]
    out = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical_relaxed", rechunk=True)
    # (severity on the whole frame at once: Polars' float kernels may round the last bit
    # differently for a value depending on its position in the column)
    out = out.with_columns(severity_expr().alias("severity")).cast(LOOP_SCHEMA).select(list(LOOP_SCHEMA))  # type: ignore[arg-type]
    if out["run_id"].is_sorted():
        return out
    # each part lists its loops in row order; the parts have no run in common, so when each
    # is sorted by run (the usual case) a merge equals a stable sort of the whole
    n_main = frames[0].height
    main, rest = out.head(n_main), out.tail(out.height - n_main)
    if rest.height and main["run_id"].is_sorted() and rest["run_id"].is_sorted():
        return main.merge_sorted(rest, key="run_id")
    return out.sort("run_id", maintain_order=True)


def _period_scan(
    codes: np.ndarray, boundaries: np.ndarray, p: int, min_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``eq_p`` (tool step ``k + p`` has the action of step ``k``, in the same run) and
    its periodic segments (as :func:`_segments_from_eq`)."""
    eq = codes[p:] == codes[:-p]
    # pairs across a run boundary b: k in [b - p, b - 1]
    cross = (boundaries[:, None] - np.arange(1, p + 1)).ravel()
    eq[cross[(cross >= 0) & (cross < eq.size)]] = False
    # full[k]: eq[k : k + min_len] all true (by doubling spans), so that only the stretches
    # long enough to matter are located
    full, span = eq, 1
    while span * 2 <= min_len:
        full = full[:-span] & full[span:]
        span *= 2
    if span < min_len:
        full = full[: span - min_len] & full[min_len - span :]
    lo, hi = _segments_from_eq(full, 0, 1)  # stretches [lo, hi] of full
    return eq, lo, hi + min_len - 1 + p


_MONEY = ("input_tokens", "output_tokens", "cost_usd")


def _money_exprs() -> list[pl.Expr]:
    return [
        (pl.col("input_tokens").fill_null(0) + pl.col("output_tokens").fill_null(0)).alias("_tok"),
        pl.col("cost_usd").fill_null(0.0).alias("_cost"),
        (pl.col("input_tokens").is_not_null() | pl.col("output_tokens").is_not_null()).alias("_tok_known"),
        pl.col("cost_usd").is_not_null().alias("_cost_known"),
    ]


@dataclass(frozen=True)
class _Money:
    """Tokens and cost of every row, their sums per block (run), and whether the block
    recorded any (a run without a recorded cost has an unknown waste, not a waste of $0)."""

    tok: np.ndarray
    cost: np.ndarray
    block_tok: np.ndarray
    block_cost: np.ndarray
    block_tok_known: np.ndarray
    block_cost_known: np.ndarray

    def columns(self, r: np.ndarray, wasted_tokens: np.ndarray, wasted_cost: np.ndarray) -> dict[str, Any]:
        """The money columns of loops in blocks ``r`` (null where the block recorded none)."""
        tok_known, cost_known = self.block_tok_known[r], self.block_cost_known[r]
        return {
            "wasted_tokens": _null_where_unknown(wasted_tokens, tok_known),
            "wasted_cost_usd": _null_where_unknown(wasted_cost, cost_known),
            "run_tokens": _null_where_unknown(self.block_tok[r], tok_known),
            "run_cost_usd": _null_where_unknown(self.block_cost[r], cost_known),
        }


def _null_where_unknown(values: np.ndarray, known: np.ndarray) -> np.ndarray | pl.Series:
    """``values``, null where ``known`` is False."""
    if known.all():
        return values
    return pl.DataFrame({"v": values, "k": known}).select(pl.when(pl.col("k")).then(pl.col("v"))).to_series()


def _money(steps: pl.DataFrame, starts: np.ndarray) -> _Money:
    """Tokens and cost of every row (``_tok``, ``_cost``, computed here from the raw columns
    when pass 1 left them raw), and their sums per block."""
    if "_tok" not in steps.columns:
        steps = steps.lazy().select(_money_exprs()).collect()
    tok = _numpy(steps["_tok"])
    cost = _numpy(steps["_cost"])
    tok_known = _numpy(steps["_tok_known"]).astype(np.int64)
    cost_known = _numpy(steps["_cost_known"]).astype(np.int64)
    with np.errstate(over="ignore", invalid="ignore"):  # (costs summing past float range: inf, as Polars)
        return _Money(
            tok, cost, np.add.reduceat(tok, starts), np.add.reduceat(cost, starts),
            np.add.reduceat(tok_known, starts) > 0, np.add.reduceat(cost_known, starts) > 0,
        )


def _loops_in(
    steps: pl.DataFrame,
    blocks: _Blocks,
    source: _TextSource,
    pool: ThreadPoolExecutor,
    *,
    max_period: int,
    min_repeats: int,
    fuzzy: bool,
    similarity: float,
    error_share: float,
) -> dict[str, Any] | pl.DataFrame | None:
    """Loops of the runs of ``steps`` whose blocks are not bad (see :func:`_run_blocks`), in row
    order: cycles of tool calls (:func:`_tool_loops`) and repeated LLM calls (:func:`_llm_loops`).

    Work that does not depend on each other runs on ``pool``'s threads (numpy and Polars
    release the GIL): the money columns while the periods are scanned, periods two at a time.
    """
    money = pool.submit(_money, steps, blocks.starts)
    tools = _tool_loops(steps, blocks, source, pool, money, max_period=max_period, min_repeats=min_repeats,
                        fuzzy=fuzzy, similarity=similarity, error_share=error_share)
    llm = _llm_loops(steps, blocks, source, money, min_repeats=min_repeats, fuzzy=fuzzy, similarity=similarity,
                     error_share=error_share)
    if tools is None and llm is None:
        money.cancel()
        return None
    return _merge_loops(tools, llm)


def _tool_loops(
    steps: pl.DataFrame,
    blocks: _Blocks,
    source: _TextSource,
    pool: ThreadPoolExecutor,
    money: Future[_Money],
    *,
    max_period: int,
    min_repeats: int,
    fuzzy: bool,
    similarity: float,
    error_share: float,
) -> dict[str, Any] | None:
    """Cycles of tool calls (the module's *How cycles are found*), in row order."""
    starts, skip = blocks.starts, blocks.bad
    tool_codes = pool.submit(lambda: _numpy(steps["_a"].filter(steps["_tool"])))
    trows = _positions(steps["_tool"])  # tool steps, in row order
    codes = tool_codes.result()  # action hash of every tool step
    nt = trows.size
    if nt < 2:
        return None
    # tool steps of block b: positions first[b] .. first[b + 1] - 1; pairs across the first
    # tool step of a block never match
    first = np.searchsorted(trows, np.append(starts, steps.height))
    boundaries = first[:-1][(first[1:] > first[:-1]) & (first[:-1] > 0)]

    # ---- action level: shifted comparisons of action hashes ---------------------------------
    act_eq: dict[int, np.ndarray] = {}
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    periods = range(1, min(max_period, nt - 1) + 1)
    scans = pool.map(lambda p: _period_scan(codes, boundaries, p, p * (min_repeats - 1)), periods)
    for p, (eq, s, e) in zip(periods, scans, strict=True):
        if s.size:
            act_eq[p] = eq
            found.append((s, e, np.full(s.size, p, np.int64)))
    z = np.zeros(0, np.int64)
    a_s, a_e, a_p = (np.concatenate(x) for x in zip(*found, strict=True)) if found else (z, z, z)
    if skip.any():  # the bad blocks are read apart
        keep = ~skip[np.searchsorted(first, a_s, side="right") - 1]
        a_s, a_e, a_p = a_s[keep], a_e[keep], a_p[keep]
        kept = set(a_p.tolist())
        act_eq = {p: eq for p, eq in act_eq.items() if p in kept}
    if a_s.size == 0:
        return None
    # union of action-level candidates: positions cpos, and position -> index in cpos
    cpos = _union_positions(a_s, a_e)
    cand = np.zeros(nt, dtype=bool)
    cand[cpos] = True
    cidx = np.empty(nt, dtype=np.int64)
    cidx[cpos] = np.arange(cpos.size)

    # ---- signature level: action + args + result, candidate pairs only ----------------------
    crow = trows[cpos]  # rows of the candidates
    # arguments first (fuzzy: near-duplicates too); results only for the pairs whose arguments
    # match. The argument hashes are read while the pairs are listed.
    args = pool.submit(source.args, steps, crow)
    # every compared pair of every period: position k + p against k, both in candidates
    # (cj: the index of k in cpos)
    js = []
    periods = []
    for p, eq in act_eq.items():
        k = cpos[: np.searchsorted(cpos, nt - p)]
        js.append(np.flatnonzero(cand[k + p] & eq[k]))
        periods.append(p)
    del act_eq, cand
    cj = np.concatenate(js)
    pp = np.repeat(np.array(periods, np.int64), [j.size for j in js])
    pk = cpos[cj]
    ci = cidx[pk + pp]
    h_a, failed, recorded = args.result()
    # hand-offs: their target agent is their content, and their result (what the agent handed to
    # returned) is seldom logged, nor are their arguments by OpenTelemetry's agent spans
    _, one, inv = np.unique(codes[cpos], return_index=True, return_inverse=True)
    free = _take(steps["action"], crow[one]).str.starts_with(HANDOFF_PREFIX).fill_null(False).to_numpy()[inv]
    # arguments that were not recorded (null or empty) match nothing: without them "the same
    # call again" cannot be told from paging or polling, so such repeats stay action-level; a
    # hand-off's match as hand-offs (a stuck lookup > handoff:billing > refund is a loop), but a
    # cycle of hand-offs only needs their arguments (below)
    known = (recorded[ci] & recorded[cj]) | (free[ci] & free[cj])
    blind = ~(recorded[ci] & recorded[cj])  # (hand-offs match without arguments: not recorded all the same)
    ok_a = (h_a[ci] == h_a[cj]) & known
    del h_a
    ok_r = np.zeros(ok_a.size, dtype=bool)
    dead_r = np.zeros(ok_a.size, dtype=bool)  # results unrecorded: no match, not even a fuzzy one
    _results_equal(steps, source, ci, cj, crow, ok_r, np.flatnonzero(ok_a), free, dead_r)
    identical = ok_a & ok_r
    ok = identical.copy()
    if fuzzy:
        source.prefetch(steps, crow)
        span = pp * (min_repeats - 1)
        # a signature-level loop needs span consecutive matching pairs of its period, and any
        # span consecutive positions hold exactly one multiple of span: near-duplicates are
        # judged first at those anchors, then only within span of an anchor that matches
        anchor = pk % span == 0
        hashed = ok_a.copy()  # pairs whose results were compared
        todo = known & ~identical
        _near_pairs(steps, source, ci, cj, crow, ok_a, ok_r, hashed, ok, anchor & todo, similarity, free, dead_r)
        close = _near_anchor(pk, pp, span, anchor & ok, nt)
        _near_pairs(steps, source, ci, cj, crow, ok_a, ok_r, hashed, ok, close & ~anchor & todo, similarity, free,
                    dead_r)
    fuzzy_pos = {p: pk[(pp == p) & ok & ~identical] + p for p in periods} if fuzzy else {}
    found = []
    for p in periods:
        s, e = _segments_from_positions(pk[(pp == p) & ok], p, p * (min_repeats - 1))
        if s.size:
            found.append((s, e, np.full(s.size, p, np.int64)))
    s_s, s_e, s_p = (np.concatenate(x) for x in zip(*found, strict=True)) if found else (z, z, z)
    if s_s.size:
        keep = ~_answered_later(s_e, s_p, pk, pp, ci, cj, nt, ok_a, ok, dead_r, failed)
        s_s, s_e, s_p = s_s[keep], s_e[keep], s_p[keep]
    if s_s.size:
        # a cycle of hand-offs only, some without arguments: handing three tasks to one agent, or
        # research then writing for three sections, repeats them too; it stays action-level
        other = _cumsum0((~free).astype(np.int64))
        unrecorded = _cumsum0((~recorded).astype(np.int64))
        a, b = cidx[s_s], cidx[s_e] + 1
        keep = ~(((other[b] - other[a]) == 0) & ((unrecorded[b] - unrecorded[a]) > 0))
        s_s, s_e, s_p = s_s[keep], s_e[keep], s_p[keep]
    del recorded

    def block(pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(starts, trows[pos], side="right") - 1

    keep = _dedupe_segments(block(s_s), s_s, s_e, s_p)
    s_s, s_e, s_p = s_s[keep], s_e[keep], s_p[keep]
    keep = _dedupe_segments(block(a_s), a_s, a_e, a_p)
    a_s, a_e, a_p = a_s[keep], a_e[keep], a_p[keep]
    # drop action-level loops that signature-level loops mostly explain (every segment lies
    # inside the candidates, so coverage is counted over candidate indices)
    covered = _cumsum0(_mask_of_segments(cpos.size, cidx[s_s], cidx[s_e]))
    keep = (covered[cidx[a_e] + 1] - covered[cidx[a_s]]) / (a_e - a_s + 1) < 0.5
    a_s, a_e, a_p = a_s[keep], a_e[keep], a_p[keep]

    seg_s = np.concatenate([s_s, a_s])
    seg_e = np.concatenate([s_e, a_e])
    seg_p = np.concatenate([s_p, a_p])
    is_sig = np.concatenate([np.ones(s_s.size, bool), np.zeros(a_s.size, bool)])
    if seg_s.size == 0:
        return None
    errs = _cumsum0(failed.astype(np.int64))
    n_err = errs[cidx[seg_e] + 1] - errs[cidx[seg_s]]
    change = _what_changed(seg_s, seg_e, seg_p, is_sig, pk, pp, nt, known & ~ok_a, blind | dead_r)
    return _assemble(steps, blocks, money.result(), codes, trows, seg_s, seg_e, seg_p, is_sig, n_err, change,
                     fuzzy_pos, pool, min_repeats=min_repeats, error_share=error_share)


#: What changed between the repeats of a ``same_action`` loop (its ``change``), by code.
_CHANGES = (None, "arguments", "results", "unrecorded")


def _what_changed(
    start: np.ndarray,
    end: np.ndarray,
    period: np.ndarray,
    is_sig: np.ndarray,
    pk: np.ndarray,
    pp: np.ndarray,
    nt: int,
    new_args: np.ndarray,
    unknown: np.ndarray,
) -> np.ndarray:
    """Codes into :data:`_CHANGES` of the action-level loops (tool positions ``[start, end]``
    of ``period``; 0 for signature-level ones): 1 when recorded arguments differ between a call
    and the one a period before (``new_args`` of the compared pairs ``pk``/``pp``), else 3 when
    arguments or results were not recorded (``unknown``), else 2 (the same request, new results:
    polling)."""
    code = np.zeros(start.size, np.int8)
    act = ~is_sig
    if not act.any() or pk.size == 0:
        return code
    key = pp * (nt + 1) + pk  # sorted: periods ascending, positions ascending within each
    lo = np.searchsorted(key, period[act] * (nt + 1) + start[act], side="left")
    hi = np.searchsorted(key, period[act] * (nt + 1) + end[act] - period[act], side="right")
    n_new = (c := _cumsum0(new_args.astype(np.int64)))[hi] - c[lo]
    n_unknown = (c := _cumsum0(unknown.astype(np.int64)))[hi] - c[lo]
    code[act] = np.where(n_new > 0, 1, np.where(n_unknown > 0, 3, 2))
    return code


def _answered_later(
    end: np.ndarray,
    period: np.ndarray,
    pk: np.ndarray,
    pp: np.ndarray,
    ci: np.ndarray,
    cj: np.ndarray,
    nt: int,
    ok_a: np.ndarray,
    ok: np.ndarray,
    dead_r: np.ndarray,
    failed: np.ndarray,
) -> np.ndarray:
    """Which signature-level loops (tool positions ending at ``end``, of ``period``) are polls
    that got their answer: the call after the loop repeats the loop's request (same action and
    arguments) and gets a new, successful result (``running`` x4, then ``done``). Such a loop was
    waiting, not stuck; it stays an action-level (``same_action``) loop.

    ``pk``/``pp`` list the compared pairs (position ``pk`` against ``pk + pp``), sorted by period
    then position; ``ci``/``cj`` are the candidate indices of the later and earlier call of each."""
    if pk.size == 0:
        return np.zeros(end.size, dtype=bool)
    key = pp * (nt + 1) + pk  # sorted: periods ascending, positions ascending within each
    want = period * (nt + 1) + (end + 1 - period)  # the pair that ended the loop
    i = np.minimum(np.searchsorted(key, want), key.size - 1)
    listed = key[i] == want  # the next call has the loop's action at that place
    return listed & ok_a[i] & ~ok[i] & ~dead_r[i] & ~failed[ci[i]] & ~failed[cj[i]]


def _near(
    steps: pl.DataFrame,
    source: _TextSource,
    ci: np.ndarray,
    cj: np.ndarray,
    ok: np.ndarray,
    todo: np.ndarray,
    crow: np.ndarray,
    field: str,
    similarity: float,
) -> None:
    """Set ``ok[todo]`` where the texts of the pair's candidates are near-duplicates."""
    if todo.size:
        need, li, lj = _pair_index(ci[todo], cj[todo])
        texts = source.get(steps, crow[need], field)
        ok[todo] = near_duplicates(texts, li, lj, similarity=similarity)


def _results_equal(
    steps: pl.DataFrame,
    source: _TextSource,
    ci: np.ndarray,
    cj: np.ndarray,
    crow: np.ndarray,
    ok_r: np.ndarray,
    todo: np.ndarray,
    free: np.ndarray,
    dead: np.ndarray,
) -> None:
    """Set ``ok_r[todo]`` where the results of the pair's candidates hash equal, and
    ``dead[todo]`` where either recorded none (and is no hand-off, ``free``): those match
    nothing, so a log without results does not make every poll a no-progress loop."""
    if todo.size:
        need, ri, rj = _pair_index(ci[todo], cj[todo])
        h_r = source.results(steps, crow[need])
        unrecorded = ((h_r[ri] == _UNRECORDED_HASH) & ~free[ci[todo]]) | ((h_r[rj] == _UNRECORDED_HASH) & ~free[cj[todo]])
        ok_r[todo] = (h_r[ri] == h_r[rj]) & ~unrecorded
        dead[todo] = unrecorded


def _near_pairs(
    steps: pl.DataFrame,
    source: _TextSource,
    ci: np.ndarray,
    cj: np.ndarray,
    crow: np.ndarray,
    ok_a: np.ndarray,
    ok_r: np.ndarray,
    hashed: np.ndarray,
    ok: np.ndarray,
    todo: np.ndarray,
    similarity: float,
    free: np.ndarray,
    dead_r: np.ndarray,
) -> None:
    """Judge the pairs ``todo`` (a mask) fuzzily and set ``ok`` for them: arguments equal or
    near-duplicates (``ok_a``), then results equal (compared once: ``hashed``) or
    near-duplicates (``ok_r``; never where a result was not recorded: ``dead_r``)."""
    _near(steps, source, ci, cj, ok_a, np.flatnonzero(todo & ~ok_a), crow, "args", similarity)
    fresh = todo & ok_a & ~hashed
    _results_equal(steps, source, ci, cj, crow, ok_r, np.flatnonzero(fresh), free, dead_r)
    hashed |= fresh
    _near(steps, source, ci, cj, ok_r, np.flatnonzero(todo & ok_a & ~ok_r & ~dead_r), crow, "result", similarity)
    ok[todo] = ok_a[todo] & ok_r[todo]


def _near_anchor(pk: np.ndarray, pp: np.ndarray, span: np.ndarray, live: np.ndarray, nt: int) -> np.ndarray:
    """Pairs (position ``pk``, period ``pp``) less than ``span`` positions from a ``live`` pair
    of the same period."""
    # one sorted key per (period, position); periods are more than any span apart
    stride = nt + int(span.max(initial=0)) + 1
    key = pp * stride + pk
    lk = np.sort(key[live])
    if lk.size == 0:
        return np.zeros(pk.size, dtype=bool)
    i = np.searchsorted(lk, key)
    after = lk[np.minimum(i, lk.size - 1)] - key  # >= 0 unless every live key is smaller
    before = key - lk[np.maximum(i - 1, 0)]  # >= 0 unless every live key is larger
    return ((after >= 0) & (after < span)) | ((before >= 0) & (before < span))


def _llm_loops(
    steps: pl.DataFrame,
    blocks: _Blocks,
    source: _TextSource,
    money: Future[_Money],
    *,
    min_repeats: int,
    fuzzy: bool,
    similarity: float,
    error_share: float,
) -> dict[str, Any] | None:
    """Repeated LLM calls: at least ``min_repeats`` LLM steps in a row (no other step between)
    sending the same prompt, in row order (the module's *Repeated LLM calls*).

    Only stretches of consecutive LLM steps long enough to matter are read (the rows of an
    agent that alternates LLM and tool steps are never touched), and of them only the
    prompts of pairs of equal length in bytes are hashed: a retry re-renders its template,
    while a conversation that moved on is longer (so a chat log, all LLM steps, costs one
    length comparison per step, not a pass over its prompts). Results are read only where
    the prompts match.
    """
    nxt = _positions(steps["_ll"])  # rows i + 1 where rows i and i + 1 are LLM steps of one block
    if nxt.size < min_repeats - 1:
        return None
    starts = blocks.starts
    nxt = nxt[~blocks.bad[np.searchsorted(starts, nxt, side="right") - 1]]  # runs read in place
    lo, hi = _segments_from_positions(nxt - 1, 1, min_repeats - 1)  # stretches of rows [lo, hi]
    if lo.size == 0:
        return None
    ln = hi - lo + 1
    crow = np.repeat(lo - (np.cumsum(ln) - ln), ln) + np.arange(int(ln.sum()), dtype=np.int64)
    inner = np.ones(crow.size - 1, dtype=bool)  # pair q: candidates q and q + 1, in one stretch
    inner[np.cumsum(ln)[:-1] - 1] = False

    size = source.arg_lengths(steps, crow)  # 0: no prompt recorded (null or empty), matches nothing
    pairs = np.flatnonzero(inner & (size[1:] > 0) & (size[1:] == size[:-1]))
    if pairs.size == 0:
        return None
    used, pi, pj = _pair_index(pairs, pairs + 1)
    h_a, f, _ = source.args(steps, crow[used])  # (every prompt read here was recorded: size > 0)
    failed = np.zeros(crow.size, dtype=bool)
    failed[used] = f
    same_prompt = np.zeros(inner.size, dtype=bool)
    same_prompt[pairs] = h_a[pi] == h_a[pj]
    identical = same_prompt.copy()

    def texts(rows: np.ndarray, field: str) -> pl.Series:
        source.prefetch(steps, crow[used])  # (a LazyFrame's texts of these rows: read once)
        return source.get(steps, rows, field)

    if fuzzy:  # equal after normalisation (no MinHash: a prompt that grows stays similar)
        todo = pairs[~same_prompt[pairs]]
        if todo.size:
            need, li, lj = _pair_index(todo, todo + 1)
            norm = normalize(texts(crow[need], "args"), positions=False)  # (a prompt pages nothing)
            nh = norm.hash(3).to_numpy()
            same_prompt[todo] = (nh[li] == nh[lj]) & (norm.str.len_bytes().to_numpy()[li] > 0)
    q = np.flatnonzero(same_prompt)
    same_result = np.zeros(same_prompt.size, dtype=bool)
    unrecorded = np.zeros(same_prompt.size, dtype=bool)  # a reply of the pair was not recorded
    if q.size:
        need, ri, rj = _pair_index(q, q + 1)
        h_r = source.results(steps, crow[need])
        # a reply that was not recorded matches nothing: unrecorded replies cannot tell sampling
        # (new answers) from a stuck retry
        recorded = (h_r[ri] != _UNRECORDED_HASH) & (h_r[rj] != _UNRECORDED_HASH)
        same_result[q] = (h_r[ri] == h_r[rj]) & recorded
        unrecorded[q] = ~recorded
        identical &= same_result
        rest = q[~same_result[q] & recorded]
        if fuzzy and rest.size:
            need, li, lj = _pair_index(rest, rest + 1)
            same_result[rest] = near_duplicates(texts(crow[need], "result"), li, lj, similarity=similarity)
    sig = same_prompt & same_result
    s_lo, s_hi = _segments_from_eq(sig, 1, min_repeats - 1)
    p_lo, p_hi = _segments_from_eq(same_prompt, 1, min_repeats - 1)
    # prompt-only stretches are kept unless signature-level ones cover at least half of them
    covered = _cumsum0(_mask_of_segments(crow.size, s_lo, s_hi))
    keep = (covered[p_hi + 1] - covered[p_lo]) / (p_hi - p_lo + 1) < 0.5
    seg_lo = np.concatenate([s_lo, p_lo[keep]])
    seg_hi = np.concatenate([s_hi, p_hi[keep]])
    if seg_lo.size == 0:
        return None
    is_sig = np.arange(seg_lo.size) < s_lo.size
    order = np.argsort(seg_lo, kind="stable")
    seg_lo, seg_hi, is_sig = seg_lo[order], seg_hi[order], is_sig[order]

    n = seg_hi - seg_lo + 1
    n_err = (c := _cumsum0(failed.astype(np.int64)))[seg_hi + 1] - c[seg_lo]
    n_fuzzy = (c := _cumsum0((sig & ~identical).astype(np.int64)))[seg_hi] - c[seg_lo]
    err_share = n_err / n
    failing = (err_share >= error_share) & (n_err >= min_repeats)
    # a prompt-level loop: new replies (sampling), or replies not recorded
    n_unrec = (c := _cumsum0(unrecorded.astype(np.int64)))[seg_hi] - c[seg_lo]
    change = np.where(failing | is_sig, 0, np.where(n_unrec > 0, 3, 2))
    start_row, end_row = crow[seg_lo], crow[seg_hi]
    r = np.searchsorted(starts, start_row, side="right") - 1
    run_start = starts[r]
    run_end = np.append(starts[1:], steps.height)[r] - 1
    money_ = money.result()
    wasted_tokens, wasted_cost = _range_sums([money_.tok, money_.cost], start_row + 1, end_row + 1)
    ids = blocks.heads[r]
    return {
        "run_id": ids["run_id"],
        "agent": ids["agent"],
        "start_step": _take(steps["step"], start_row),
        "end_step": _take(steps["step"], end_row),
        "period": np.ones(n.size, np.int64),
        "repeats": n,
        "pattern": _take(steps["action"], start_row),
        "kind": pl.Series(["exact", "same_action", "error_retry"]).gather(
            np.where(failing, 2, np.where(is_sig, 0, 1))
        ),
        "wasted_steps": n - 1,
        "waste_start_step": _take(steps["step"], start_row + 1),
        **money_.columns(r, wasted_tokens, wasted_cost),
        "match": pl.Series(["identical", "near_duplicate", "prompt"]).gather(
            np.where(is_sig, np.where(n_fuzzy > 0, 1, 0), 2)
        ),
        "change": pl.Series(_CHANGES, dtype=pl.String).gather(change),
        "error_share": err_share,
        "handoff": np.zeros(n.size, dtype=bool),
        "n_steps": n,
        "cycle_steps": np.ones(n.size, np.int64),
        "run_steps": run_end - run_start + 1,
        "_start_row": start_row,
        "_waste_row": start_row + 1,
        "_end_row": end_row,
    }


#: Private columns of the loops of :func:`_tool_loops` and :func:`_llm_loops`.
_ROW_EXTENTS = ("_start_row", "_waste_row", "_end_row")


def _merge_loops(tools: dict[str, Any] | None, llm: dict[str, Any] | None) -> dict[str, Any] | pl.DataFrame:
    """Tool and LLM loops of one step frame, in row order (start row, then period). An LLM loop
    whose steps all lie in the waste of a tool loop matched on signatures (after its first
    cycle) is part of that loop, and is dropped: its waste is counted there. (Inside an
    action-level loop it is kept: it is the stronger finding.)"""
    sig = (tools["match"] != "action").to_numpy() if tools is not None else np.zeros(0, bool)
    if llm is not None and sig.any():
        # the signature-level tool loops' waste [first row after the first cycle, end row],
        # sorted by its start, with the furthest end reached so far
        waste_from = tools["_waste_row"][sig]  # type: ignore[index]
        by_from = np.argsort(waste_from, kind="stable")
        reach = np.maximum.accumulate(tools["_end_row"][sig][by_from])  # type: ignore[index]
        i = np.searchsorted(waste_from[by_from], llm["_start_row"], side="right") - 1
        inside = (i >= 0) & (reach[np.maximum(i, 0)] >= llm["_end_row"])
        if inside.all():
            llm = None
        elif inside.any():
            llm = {c: v.filter(pl.Series(~inside)) if isinstance(v, pl.Series) else v[~inside]
                   for c, v in llm.items()}
    parts = [x for x in (tools, llm) if x is not None]
    if len(parts) == 1:
        return {c: v for c, v in parts[0].items() if c not in _ROW_EXTENTS}
    order = np.lexsort((np.concatenate([x["period"] for x in parts]),
                        np.concatenate([x["_start_row"] for x in parts])))
    frames = [pl.DataFrame({c: v for c, v in x.items() if c not in _ROW_EXTENTS}) for x in parts]
    return pl.concat(frames, how="vertical_relaxed")[order]


def _patterns(
    steps: pl.DataFrame, codes: np.ndarray, trows: np.ndarray, seg_s: np.ndarray, seg_p: np.ndarray
) -> tuple[pl.Series, np.ndarray]:
    """``pattern`` (the actions of the first cycle joined by " > ") and ``handoff`` (all
    of them are hand-offs) of every segment. Names are read once per distinct action
    (``codes``: action hashes of the tool steps), pattern strings once per distinct cycle."""
    offs = np.cumsum(seg_p) - seg_p  # where each segment's cycle starts in ``pos``
    pos = np.repeat(seg_s - offs, seg_p) + np.arange(int(seg_p.sum()))
    _, first, ids = np.unique(codes[pos], return_index=True, return_inverse=True)
    names = _take(steps["action"], trows[pos[first]]).fill_null("<none>")
    is_handoff = names.str.starts_with(HANDOFF_PREFIX).to_numpy()
    # a segment is a hand-off when none of its cycle's actions is not one
    handoff = np.add.reduceat((~is_handoff[ids]).astype(np.int64), offs) == 0
    n_names = len(names)
    table, pid, base = [], np.zeros(seg_s.size, np.int64), 0
    for p in np.unique(seg_p).tolist():  # one pass per period: cycles of p names
        sel = np.flatnonzero(seg_p == p)
        cyc = ids[offs[sel][:, None] + np.arange(p)]  # (segments, p) name indices
        if p * np.log2(max(n_names, 2)) < 62:  # one integer key per cycle
            key = cyc @ (n_names ** np.arange(p, dtype=np.int64))
            _, one, inv = np.unique(key, return_index=True, return_inverse=True)
        else:
            one, inv = np.arange(sel.size), np.arange(sel.size)
        table.append(names.gather(cyc[one].ravel()).reshape((one.size, p)).arr.join(" > "))
        pid[sel] = base + inv
        base += one.size
    return pl.concat(table, rechunk=True).gather(pid), handoff


def _assemble(
    steps: pl.DataFrame,
    blocks: _Blocks,
    money: _Money,
    codes: np.ndarray,
    trows: np.ndarray,
    seg_s: np.ndarray,
    seg_e: np.ndarray,
    seg_p: np.ndarray,
    is_sig: np.ndarray,
    n_err: np.ndarray,
    change: np.ndarray,
    fuzzy_pos: dict[int, np.ndarray],
    pool: ThreadPoolExecutor,
    *,
    min_repeats: int,
    error_share: float,
) -> dict[str, Any]:
    """Measure every loop (tool positions ``[seg_s, seg_e]``): the output columns (but
    ``severity``), loops in row order."""
    # fuzzy-only matches inside signature loops -> match = near_duplicate
    n_fuzzy = np.zeros(seg_s.size, np.int64)
    for p, pos in fuzzy_pos.items():
        sel = is_sig & (seg_p == p)
        if sel.any() and pos.size:
            n_fuzzy[sel] = np.searchsorted(pos, seg_e[sel], side="right") - np.searchsorted(
                pos, seg_s[sel] + p, side="left"
            )
    starts = blocks.starts
    ends = np.append(starts[1:], steps.height)
    r = np.searchsorted(starts, trows[seg_s], side="right") - 1  # block (run) of every loop
    run_start, run_end = starts[r], ends[r] - 1
    prev = np.maximum(seg_s - 1, 0)
    prev_same = (seg_s > 0) & (trows[prev] >= run_start)
    start_row = np.where(prev_same, trows[prev] + 1, run_start)
    # rows are grouped by run and sorted by step: this orders loops by start_step, period
    # within runs, and runs by run_id whenever the rows are (the usual case)
    order = np.lexsort((seg_p, start_row))
    seg_s, seg_e, seg_p, is_sig, n_err, n_fuzzy, change = (
        a[order] for a in (seg_s, seg_e, seg_p, is_sig, n_err, n_fuzzy, change)
    )
    r, run_start, run_end, start_row = r[order], run_start[order], run_end[order], start_row[order]

    n_tool = seg_e - seg_s + 1
    err_share = n_err / n_tool
    repeats = n_tool // seg_p
    end_row = trows[seg_e]
    first_cycle_end = trows[seg_s + seg_p - 1]
    patterns = pool.submit(_patterns, steps, codes, trows, seg_s, seg_p)
    failing = (err_share >= error_share) & (n_err >= min_repeats)
    kind = pl.Series(["exact", "same_action", "error_retry"]).gather(np.where(failing, 2, np.where(is_sig, 0, 1)))
    match = pl.Series(["identical", "near_duplicate", "action"]).gather(
        np.where(is_sig, np.where(n_fuzzy > 0, 1, 0), 2)
    )
    wasted_tokens, wasted_cost = _range_sums([money.tok, money.cost], first_cycle_end + 1, end_row + 1)
    ids = blocks.heads[r]  # the run's first row
    pattern, handoff = patterns.result()
    change = np.where(failing | is_sig, 0, change)  # (said of same_action loops only)
    return {
            "run_id": ids["run_id"],
            "agent": ids["agent"],
            "start_step": _take(steps["step"], start_row),
            "end_step": _take(steps["step"], end_row),
            "period": seg_p,
            "repeats": repeats,
            "pattern": pattern,
            "kind": kind,
            "wasted_steps": end_row - first_cycle_end,
            "waste_start_step": _take(steps["step"], first_cycle_end + 1),
            **money.columns(r, wasted_tokens, wasted_cost),
            "match": match,
            "change": pl.Series(_CHANGES, dtype=pl.String).gather(change),
            "error_share": err_share,
            "handoff": handoff,
            "n_steps": end_row - start_row + 1,
            "cycle_steps": first_cycle_end - start_row + 1,
            "run_steps": run_end - run_start + 1,
            # (private: row extents, for :func:`_merge_loops`)
            "_start_row": start_row,
            "_waste_row": first_cycle_end + 1,
            "_end_row": end_row,
        }


# ---------------------------------------------------------------------------------------------
# severity and per-run summary
# ---------------------------------------------------------------------------------------------


def severity_expr(
    *,
    repeats: str = "repeats",
    kind: str = "kind",
    wasted_cost: str = "wasted_cost_usd",
    run_cost: str | None = "run_cost_usd",
    wasted_steps: str = "wasted_steps",
    run_steps: str | None = "run_steps",
) -> pl.Expr:
    """Per-loop severity in [0, 1] (see the module docstring).

    ``run_cost`` / ``run_steps`` may be ``None`` (or absent from the frame the
    expression is used on, see :func:`loop_summary`), in which case only the
    repeats count.
    """
    rep_term = 1.0 - (2.0 ** (-(pl.col(repeats).cast(pl.Float64) - 1.0) / 3.0))
    share = pl.lit(0.0)
    if run_steps is not None:
        share = (pl.col(wasted_steps) / pl.col(run_steps)).fill_nan(0.0).fill_null(0.0)
    if run_cost is not None:
        cost_share = pl.col(wasted_cost) / pl.col(run_cost)
        share = pl.when(pl.col(run_cost) > 0).then(cost_share).otherwise(share)
    intensity = pl.max_horizontal(rep_term, share.clip(0.0, 1.0)).clip(0.0, 1.0)
    return (
        pl.when(pl.col(kind).is_in(list(_SEVERE_KINDS)))
        .then(0.5 + 0.5 * intensity)
        .otherwise(_SAME_ACTION_WEIGHT * intensity)
        .cast(pl.Float64)
    )


def loop_summary(loops: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """One row per run that has loops: the worst loop, total waste and a severity.

    Parameters
    ----------
    loops : polars.DataFrame or polars.LazyFrame
        Output of :func:`detect_loops` (or any frame with its contract columns;
        a missing ``severity`` is computed from ``kind`` and ``repeats``).

    Returns
    -------
    polars.DataFrame
        ``run_id, agent, n_loops, worst_kind, worst_pattern, worst_repeats,
        wasted_steps, wasted_tokens, wasted_cost_usd, loop_severity,
        no_progress_loops, no_progress_cost_usd`` sorted by ``run_id``. The
        worst loop has the highest severity (ties: more wasted cost, then earlier
        start); ``loop_severity`` is its severity, in [0, 1]; runs whose loops
        are all ``same_action`` stay at or below 0.3. Waste is summed over the
        run's loops, each wasted step once (loops can overlap: an exact loop
        inside the action-level loop around it).
        ``no_progress_loops`` counts the loops other than ``same_action`` (the same
        tools with changing arguments or results, such as pagination: progress) and
        ``no_progress_cost_usd`` is their waste, each step once (0 without such
        loops; null when they recorded no cost): the cost profile's loop spend.
        ``worst_error_share`` and ``worst_change`` are the worst loop's ``error_share``
        and ``change`` (null when ``loops`` has no such column).

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> ev = pl.DataFrame({"run_id": ["r"] * 4, "step": [1, 2, 3, 4], "action": ["search"] * 4,
    ...                    "args": ["q"] * 4, "result": ["none"] * 4, "cost_usd": [0.01] * 4})
    >>> dw.loop_summary(dw.detect_loops(ev)).select("run_id", "n_loops", "worst_kind",
    ...                                             "loop_severity").to_dicts()
    [{'run_id': 'r', 'n_loops': 1, 'worst_kind': 'exact', 'loop_severity': 0.875}]
    """
    lf = loops.lazy() if isinstance(loops, pl.DataFrame) else loops
    if not isinstance(lf, pl.LazyFrame):
        raise InvalidParameterError(
            f"loops must be a polars DataFrame or LazyFrame from detect_loops, got {type(loops).__name__}"
        )
    schema = lf.collect_schema()
    need = ["run_id", "agent", "kind", "pattern", "repeats", "start_step", "wasted_steps",
            "wasted_tokens", "wasted_cost_usd"]
    missing = [c for c in need if c not in schema]
    if missing:
        raise SchemaError(f"loops: missing column(s) {missing}; expected the output of detect_loops, "
                          f"found {list(schema)}")
    if "severity" not in schema:
        lf = lf.with_columns(
            severity_expr(
                run_cost="run_cost_usd" if "run_cost_usd" in schema else None,
                run_steps="run_steps" if "run_steps" in schema else None,
            ).alias("severity")
        )
    def worst(col: str) -> pl.Expr:
        return (
            pl.col(col)
            .sort_by(
                [pl.col("severity"), pl.col("wasted_cost_usd").fill_null(0.0), pl.col("start_step")],
                descending=[True, True, False],
            )
            .first()
        )

    waste = ("wasted_steps", "wasted_tokens", "wasted_cost_usd")
    no_progress = pl.col("kind").fill_null("") != "same_action"
    np_cost = "wasted_cost_usd"
    if "end_step" in schema:
        lf = _waste_once(lf, schema)
        waste = ("_dw_steps", "_dw_tokens", "_dw_cost")
        # the waste of the loops that make no progress, each step once among them
        lf = _waste_once(lf.with_columns(no_progress.alias("_dw_np")), schema, within=("run_id", "_dw_np"),
                         prefix="_dw_np_")
        np_cost = "_dw_np_cost"
    np_waste = pl.col(np_cost).filter(no_progress)
    out = (
        lf.group_by("run_id")
        .agg(
            pl.col("agent").first(),
            pl.len().cast(pl.Int64).alias("n_loops"),
            worst("kind").alias("worst_kind"),
            worst("pattern").alias("worst_pattern"),
            worst("repeats").alias("worst_repeats"),
            pl.col(waste[0]).sum().alias("wasted_steps"),
            known_sum(waste[1]).alias("wasted_tokens"),
            known_sum(waste[2]).alias("wasted_cost_usd"),
            pl.col("severity").max().clip(0.0, 1.0).alias("loop_severity"),
            no_progress.sum().cast(pl.Int64).alias("no_progress_loops"),
            # 0 without such loops; unknown when they recorded no cost
            pl.when(no_progress.sum() == 0).then(0.0).when(np_waste.count() > 0).then(np_waste.sum())
            .alias("no_progress_cost_usd"),
            (worst("error_share") if "error_share" in schema else pl.lit(None, pl.Float64))
            .alias("worst_error_share"),
            (worst("change") if "change" in schema else pl.lit(None, pl.String)).alias("worst_change"),
        )
        .sort("run_id")
        .collect()
    )
    return out.cast(SUMMARY_SCHEMA).select(list(SUMMARY_SCHEMA))  # type: ignore[arg-type]


def _waste_once(
    lf: pl.LazyFrame, schema: Mapping[str, Any], *, within: Sequence[str] = ("run_id",), prefix: str = "_dw_"
) -> pl.LazyFrame:
    """The loops' waste with the steps another loop of the run wasted already left out.

    A loop's waste is its steps after the first cycle, ``waste_start_step`` to ``end_step``
    (``end_step - wasted_steps + 1`` to ``end_step`` in a table without that column: steps
    numbered one by one). A run can hold overlapping loops (an exact loop inside the
    action-level loop around it, an LLM retry inside a paging loop): summed as they are, a
    run of 11 steps wasted 12. Taken in order of where their waste starts, each loop keeps
    the part of its waste past the furthest step the earlier ones reached (none when they
    reached its end, all when they ended before it began; in between, its steps, tokens and
    cost pro rata to the step numbers left).

    The loops are compared within groups of the ``within`` columns (the run, or the run and a
    class of loop); the results are ``{prefix}steps``, ``{prefix}tokens`` (when the table has
    ``wasted_tokens``) and ``{prefix}cost``.
    """
    end = pl.col("end_step")
    lo = pl.col("waste_start_step") if "waste_start_step" in schema else end - pl.col("wasted_steps") + 1
    reach = end.cum_max().shift(1).over(list(within), order_by=[lo, -end])  # (the outer of two nested first)
    span = (end - lo + 1).cast(pl.Float64)
    left = (end - pl.max_horizontal(lo, reach.fill_null(lo - 1) + 1) + 1).clip(0, None).cast(pl.Float64)
    share = pl.when((pl.col("wasted_steps") > 0) & (span > 0)).then((left / span).clip(0.0, 1.0)).otherwise(0.0)
    kept = (pl.col("wasted_steps") * share).round(0)
    tokens = [(pl.col("wasted_tokens") * share).round(0).cast(pl.Int64).alias(f"{prefix}tokens")]
    return lf.with_columns(
        kept.cast(pl.Int64).alias(f"{prefix}steps"),
        *(tokens if "wasted_tokens" in schema else []),
        (pl.col("wasted_cost_usd") * share).alias(f"{prefix}cost"),
    )


# ---------------------------------------------------------------------------------------------
# delegation cycles (fleet stage: needs whole delegation chains, i.e. the per-run table)
# ---------------------------------------------------------------------------------------------


def _run_table(runs_or_events: Any) -> pl.DataFrame:
    """run_id, agent, parent_run_id, tokens, cost_usd: from a run_features frame or from events."""
    frame = runs_or_events
    if hasattr(frame, "events") and not isinstance(frame, pl.DataFrame | pl.LazyFrame):
        frame = frame.events
    if not isinstance(frame, pl.DataFrame | pl.LazyFrame):
        raise InvalidParameterError(
            "runs must be a polars DataFrame or LazyFrame (run_features output or canonical events), "
            f"got {type(runs_or_events).__name__}"
        )
    lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    schema = lf.collect_schema()
    if "action" in schema:  # events
        ev = as_lazy(lf)
        return (
            ev.sort("run_id", "step")
            .group_by("run_id")
            .agg(
                pl.col("agent").first(),
                pl.col("parent_run_id").drop_nulls().first(),
                (pl.col("input_tokens").fill_null(0) + pl.col("output_tokens").fill_null(0)).sum().alias("tokens"),
                pl.col("cost_usd").fill_null(0.0).sum().alias("cost_usd"),
            )
            .collect()
        )
    missing = [c for c in ("run_id", "agent", "parent_run_id") if c not in schema]
    if missing:
        raise SchemaError(
            f"runs: missing column(s) {missing}; expected run_features output (run_id, agent, "
            f"parent_run_id, ...) or canonical events, found {list(schema)}"
        )
    return lf.select(
        pl.col("run_id").cast(pl.String),
        pl.col("agent").cast(pl.String),
        pl.col("parent_run_id").cast(pl.String),
        (pl.col("tokens") if "tokens" in schema else pl.lit(0)).cast(pl.Int64).fill_null(0).alias("tokens"),
        (pl.col("cost_usd") if "cost_usd" in schema else pl.lit(0.0)).cast(pl.Float64).fill_null(0.0)
        .alias("cost_usd"),
    ).unique("run_id", keep="first", maintain_order=True).collect()


def detect_delegation_cycles(
    runs: pl.DataFrame | pl.LazyFrame | Any,
    *,
    max_period: int = 4,
    min_repeats: int = 2,
    max_depth: int = 256,
) -> pl.DataFrame:
    """Delegation chains (``parent_run_id``) that cycle between agents.

    Run A (agent x) delegates to run B (agent y), which delegates to run C
    (agent x), which delegates to D (agent y)...: the agents along a chain
    repeat with a period of 2 or more. Each root-to-leaf path of the
    delegation forest is a sequence of agents, searched with the same
    periodic-segment kernel as :func:`detect_loops` (periods ``2..max_period``;
    a chain of one agent delegating to itself is recursion, not ping-pong,
    and is not reported). Segments found on several paths that share a
    prefix are reported once.

    This is a fleet-stage detector: chains span runs, so give it the whole
    fleet's per-run table (:func:`driftwatch.features.run_features`), or events.

    Parameters
    ----------
    runs : polars.DataFrame or polars.LazyFrame
        ``run_features`` output (``run_id, agent, parent_run_id`` and, for the
        waste columns, ``tokens, cost_usd``) or canonical events.
    max_period : int, default=4
        Longest cycle of agents searched (2..64).
    min_repeats : int, default=2
        Fewest full cycles (``x > y > x > y`` is 2).
    max_depth : int, default=256
        Chains deeper than this are cut (also guards against ``parent_run_id``
        cycles in corrupt data, whose runs never reach a root and are ignored).

    Returns
    -------
    polars.DataFrame
        One row per cycle (:data:`DELEGATION_SCHEMA`): ``chain_id`` (the root
        run), ``start_run_id``, ``end_run_id``, ``run_ids`` (the runs of the
        cycle, root side first), ``agents`` (the agent cycle joined by
        ``" > "``), ``period``, ``repeats``, ``start_depth``, ``end_depth``
        (0 = root), ``n_runs``, ``kind`` (``"delegation"``), ``wasted_runs``
        (runs after the first cycle), ``wasted_tokens``, ``wasted_cost_usd``.

    Examples
    --------
    >>> import polars as pl
    >>> from driftwatch.loops import detect_delegation_cycles
    >>> runs = pl.DataFrame({"run_id": ["a", "b", "c", "d"], "agent": ["x", "y", "x", "y"],
    ...                      "parent_run_id": [None, "a", "b", "c"]})
    >>> detect_delegation_cycles(runs).select("chain_id", "agents", "repeats", "run_ids").to_dicts()
    [{'chain_id': 'a', 'agents': 'x > y', 'repeats': 2, 'run_ids': ['a', 'b', 'c', 'd']}]
    """
    max_period = _check_int("max_period", max_period, 2, 64)
    min_repeats = _check_int("min_repeats", min_repeats, 2, 1000)
    max_depth = _check_int("max_depth", max_depth, 1, 100_000)
    rt = _run_table(runs).filter(pl.col("run_id").is_not_null())
    empty = pl.DataFrame(schema=DELEGATION_SCHEMA)
    if rt.height == 0:
        return empty
    # only runs that delegate or are delegated to can lie on a chain (usually a few percent)
    parents = rt["parent_run_id"].drop_nulls().unique()
    rt = rt.filter(pl.col("parent_run_id").is_not_null() | pl.col("run_id").is_in(parents.implode()))
    known = rt["run_id"]
    rt = rt.with_columns(
        pl.when(pl.col("parent_run_id").is_in(known.implode()) & (pl.col("parent_run_id") != pl.col("run_id")))
        .then(pl.col("parent_run_id"))
        .alias("parent_run_id")
    )
    # depth by levels from the roots (one vectorised join per level)
    level = rt.filter(pl.col("parent_run_id").is_null()).select("run_id", pl.lit(0, pl.Int64).alias("depth"))
    levels = [level]
    children = rt.filter(pl.col("parent_run_id").is_not_null()).select("run_id", "parent_run_id")
    for d in range(1, max_depth + 1):
        level = children.join(level.select(pl.col("run_id").alias("parent_run_id")), on="parent_run_id").select(
            "run_id", pl.lit(d, pl.Int64).alias("depth")
        )
        if level.height == 0:
            break
        levels.append(level)
    depth = pl.concat(levels)
    min_len = 2 * min_repeats
    has_child = rt.filter(pl.col("parent_run_id").is_not_null())["parent_run_id"].unique()
    leaves = depth.filter(~pl.col("run_id").is_in(has_child.implode()) & (pl.col("depth") >= min_len - 1))
    if leaves.height == 0:
        return empty
    # walk every deep leaf up to its root: long format (path, depth, run_id)
    parent_of = rt.select("run_id", "parent_run_id")
    cur = leaves.with_row_index("_path").select("_path", "run_id", "depth")
    parts = [cur]
    while cur.height:
        cur = (
            cur.join(parent_of, on="run_id")
            .filter(pl.col("parent_run_id").is_not_null())
            .select("_path", pl.col("parent_run_id").alias("run_id"), (pl.col("depth") - 1).alias("depth"))
        )
        if cur.height:
            parts.append(cur)
    paths = (
        pl.concat(parts)
        .join(rt.select("run_id", "agent", "tokens", "cost_usd"), on="run_id", how="left")
        .sort("_path", "depth")
    )
    codes = paths["agent"].fill_null("<none>").hash(7).to_numpy()
    group = paths["_path"].to_numpy().astype(np.int64)
    s, e, per = periodic_segments(codes, group, max_period=max_period, min_repeats=min_repeats)
    ok = per >= 2
    s, e, per = s[ok], e[ok], per[ok]
    if s.size == 0:
        return empty
    run_ids = paths["run_id"]
    seg = pl.DataFrame({"start_run_id": run_ids.gather(s), "end_run_id": run_ids.gather(e),
                        "_s": s, "_e": e, "period": per})
    seg = seg.sort("start_run_id", "end_run_id", "period").unique(
        ["start_run_id", "end_run_id"], keep="first", maintain_order=True
    )
    s = seg["_s"].to_numpy()
    e = seg["_e"].to_numpy()
    per = seg["period"].to_numpy()
    n_runs = e - s + 1
    idx = np.repeat(np.arange(s.size), n_runs)
    pos = np.arange(idx.size) - np.repeat(np.cumsum(n_runs) - n_runs, n_runs) + s[idx]
    tok_cum = np.concatenate(([0], np.cumsum(paths["tokens"].fill_null(0).to_numpy())))
    cost_cum = np.concatenate(([0.0], np.cumsum(paths["cost_usd"].fill_null(0.0).to_numpy())))
    first_end = s + per - 1
    depth_arr = paths["depth"].to_numpy()
    lists = pl.DataFrame({"_k": idx, "run_id": run_ids.gather(pos)}).group_by("_k", maintain_order=True).agg(
        pl.col("run_id").alias("run_ids")
    )
    pat_idx = np.repeat(np.arange(s.size), per)
    pat_pos = np.arange(pat_idx.size) - np.repeat(np.cumsum(per) - per, per) + s[pat_idx]
    pats = pl.DataFrame({"_k": pat_idx, "a": paths["agent"].gather(pat_pos)}).group_by(
        "_k", maintain_order=True
    ).agg(pl.col("a").str.join(" > ").alias("agents"))
    root_pos = np.searchsorted(group, group[s], side="left")
    out = pl.DataFrame(
        {
            "chain_id": run_ids.gather(root_pos),
            "start_run_id": seg["start_run_id"],
            "end_run_id": seg["end_run_id"],
            "run_ids": lists["run_ids"],
            "agents": pats["agents"],
            "period": per,
            "repeats": n_runs // per,
            "start_depth": depth_arr[s],
            "end_depth": depth_arr[e],
            "n_runs": n_runs,
            "kind": "delegation",
            "wasted_runs": e - first_end,
            "wasted_tokens": tok_cum[e + 1] - tok_cum[first_end + 1],
            "wasted_cost_usd": cost_cum[e + 1] - cost_cum[first_end + 1],
        }
    )
    return out.cast(DELEGATION_SCHEMA).select(list(DELEGATION_SCHEMA)).sort("chain_id", "start_depth")  # type: ignore[arg-type]


__all__ = [
    "DELEGATION_SCHEMA",
    "KINDS",
    "LOOP_SCHEMA",
    "SUMMARY_SCHEMA",
    "detect_delegation_cycles",
    "detect_loops",
    "loop_summary",
    "periodic_segments",
    "severity_expr",
]
