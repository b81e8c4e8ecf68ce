"""Small helpers shared by every detector: accept frames, name series, parse durations."""

from __future__ import annotations

import functools
import numbers
import re
import weakref
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl

from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.schema import (
    CANONICAL_SCHEMA,
    MAX_STEP_COST_USD,
    MAX_STEP_LATENCY_MS,
    MAX_STEP_TOKENS,
    STATUS_SPELLINGS,
    conform,
    convert_column,
)

FrameLike = pl.DataFrame | pl.LazyFrame

_DURATION_PART = r"(\d+)(ns|us|ms|s|m|h|d|w)"
_DURATION_RE = re.compile(rf"(?:{_DURATION_PART})+")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}


#: Eager frames known to be canonical already (the audit's per-run stage registers the chunk
#: it has read through the reader's checks): :func:`as_lazy` does not look at their values
#: again (about 0.13 s per detector at 10M events). Keyed by ``id``, held weakly, so an entry
#: lives exactly as long as its frame; it changes no result, only skips a check that passes.
_CHECKED: weakref.WeakValueDictionary[int, pl.DataFrame] = weakref.WeakValueDictionary()


def mark_checked(frame: pl.DataFrame) -> pl.DataFrame:
    """Register ``frame`` (canonical events that went through the reader's checks) so that
    :func:`as_lazy` skips its value checks; returns ``frame``."""
    _CHECKED[id(frame)] = frame
    return frame


def as_lazy(events: Any, *, name: str = "events", checked: bool = False) -> pl.LazyFrame:
    """Return ``events`` as a canonical ``LazyFrame``.

    Accepts a DataFrame, a LazyFrame or anything with an ``.events`` attribute
    (a :class:`~driftwatch.read.ReadResult`). Missing optional columns are added
    as typed nulls and compatible dtypes are cast, so notebooks can pass partial
    frames; status spellings (``"failed"``, ``"ERROR"``, booleans, ...) are mapped to
    ``ok`` / ``error`` as the reader maps them. Missing required columns raise
    :class:`SchemaError`, and so do values that cannot be converted (``step`` ``"abc"``
    or ``1.5``, ``cost_usd`` ``"x"`` or infinite): the detectors analyse the rows they
    are given, while :func:`driftwatch.audit` (and :func:`driftwatch.read_logs` on files) reject
    such rows with a reason. Rows are not checked further (null ids, duplicated steps):
    that is the reader's job. ``checked=True`` (events from the reader, or a frame passed to
    :func:`mark_checked`) skips the value checks and the status mapping; a ``ReadResult`` is
    the reader's output, so it is checked already.
    """
    if hasattr(events, "events") and not isinstance(events, FrameLike):
        events, checked = events.events, True
    if isinstance(events, pl.DataFrame):
        lf = events.lazy()
    elif isinstance(events, pl.LazyFrame):
        lf = events
    else:
        module = type(events).__module__.split(".")[0]
        kind = type(events).__name__ if module == "builtins" else f"{module}.{type(events).__name__}"
        hint = ""
        if kind.split(".")[0] in ("pandas", "pyarrow"):
            hint = "; convert it with polars.from_pandas(df) or polars.from_arrow(table)"
        raise InvalidParameterError(
            f"{name} must be a polars DataFrame or LazyFrame of canonical events, got {kind}{hint}"
        )
    if checked or (isinstance(events, pl.DataFrame) and _CHECKED.get(id(events)) is events):
        return conform(lf, where=name, keep_extra=True)
    schema = lf.collect_schema()
    _check_convertible(lf, schema, name)
    # casting, typed nulls and step derivation live in driftwatch.schema.conform (shared with read_logs)
    return conform(lf, where=name, keep_extra=True, normalize=_needs_mapping(events, schema))


def _needs_mapping(events: pl.DataFrame | pl.LazyFrame, schema: pl.Schema) -> bool:
    """Whether ``status`` holds anything but ``ok``, ``error`` and nulls, or ``agent`` an empty
    name (then they are mapped as the reader maps them). An eager frame is looked at (one
    comparison pass, about 40 ms at 10M rows, where mapping costs ten times that); a lazy one
    is always mapped."""
    checks = []
    if "status" in schema:
        if schema["status"] != pl.String:
            return True
        s = pl.col("status")
        checks.append(~((s == "ok") | (s == "error") | s.is_null()).all())
    if "agent" in schema:
        if schema["agent"] != pl.String:
            return True
        checks.append((pl.col("agent") == "").any())
    if not checks:
        return False
    if isinstance(events, pl.LazyFrame):
        return True
    return any(events.select(checks).row(0))


def _check_convertible(lf: pl.LazyFrame, schema: pl.Schema, name: str) -> None:
    """Raise :class:`SchemaError` when a canonical column holds values its conversion cannot
    use (those the reader rejects as ``bad_value:<column>`` / ``bad_ts``). Only columns whose
    conversion can fail are read, in one pass."""
    bad = {}
    for col in CANONICAL_SCHEMA:
        if col in schema:
            conv = convert_column(pl.col(col), col, schema[col], where=name)
            out = _RANGES[col][0](conv.value) if col in _RANGES else None
            if conv.bad is not None or out is not None:
                bad[col] = pl.any_horizontal(*(e.fill_null(False) for e in (conv.bad, out) if e is not None))
    if "status" in schema and schema["status"] not in (pl.Boolean, pl.Null):  # (booleans map to ok/error)
        # a spelling the reader does not know ("error ", "weird") is its bad_status: here it
        # would read as success (a retry storm of failures seen as exact repeats)
        raw = pl.col("status").cast(pl.String)
        bad["status"] = ~(raw.is_in(list(STATUS_SPELLINGS)) | raw.is_null() | (raw == "")).fill_null(True)
    if not bad:
        return
    counts = lf.select([e.sum().alias(c) for c, e in bad.items()]).collect().row(0, named=True)
    for col, n in counts.items():
        if n:
            example = lf.filter(bad[col]).select(pl.col(col).cast(pl.String, strict=False)).head(1).collect().item()
            expected = _RANGES[col][1] if col in _RANGES else _EXPECTED.get(col, "a finite number")
            raise SchemaError(
                f"{name}: column {col!r}: {n:,} value(s) cannot be read as {expected} "
                f"(for example {example!r}); fix them, or pass the frame to dw.audit, "
                f"which rejects such rows with a reason instead"
            )


#: Values the reader rejects although they convert (``negative_*``, ``bad_confidence``): the
#: test on the converted value, and what the column must hold. A negative cost is not among
#: them: given a frame, the detectors keep a refund or credit line as it is.
_RANGES: dict[str, tuple[Any, str]] = {
    "input_tokens": (lambda v: (v < 0) | (v > MAX_STEP_TOKENS), "a whole number in [0, 1e12]"),
    "output_tokens": (lambda v: (v < 0) | (v > MAX_STEP_TOKENS), "a whole number in [0, 1e12]"),
    "latency_ms": (lambda v: (v < 0) | (v > MAX_STEP_LATENCY_MS), "a finite number in [0, 1e12]"),
    "cost_usd": (lambda v: v > MAX_STEP_COST_USD, "a finite number up to 1e9 (USD per step)"),
    "confidence": (lambda v: (v < 0) | (v > 1), "a number in [0, 1]"),
}

#: What :func:`_check_convertible` says a canonical column must hold.
_EXPECTED = {
    "step": "an integer step",
    "ts": "a timestamp between 1970 and 9999 (datetime, ISO-8601 text or epoch number)",
    "input_tokens": "a whole number",
    "output_tokens": "a whole number",
    "cost_usd": "a finite number",
    "latency_ms": "a finite number",
    "confidence": "a finite number",
    "approved": "a boolean (true/false, yes/no, 0/1)",
    "status": "ok or error (a spelling the reader knows: ok, success, failed, ERROR, ...; no padding)",
}


def check_seed(value: Any, *, name: str = "random_state", allow_none: bool = False) -> int | None:
    """``value`` as a seed for numpy and scikit-learn: an integer in ``[0, 2**32)`` (numpy
    integers too), or ``None`` where ``allow_none``; anything else is an
    :class:`InvalidParameterError` naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= int(value) < 2**32:
        return int(value)
    expected = "an integer in [0, 2**32)" + (" or None" if allow_none else "")
    raise InvalidParameterError(f"{name} must be {expected} (the random seed), got {value!r}")


def check_flag(value: Any, *, name: str) -> bool:
    """``value`` as a boolean option: ``True``/``False`` (numpy booleans too), else an
    :class:`InvalidParameterError` naming ``name`` (``"no"`` is truthy in Python)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise InvalidParameterError(f"{name} must be True or False, got {value!r}")


def require_timestamps(lf: pl.LazyFrame, what: str, *, name: str = "events") -> None:
    """Raise :class:`SchemaError` when ``lf`` (canonical events) has rows but no timestamp:
    ``what`` (e.g. "change-points") cannot be computed without ``ts``."""
    has_ts, rows = lf.select(pl.col("ts").is_not_null().any(), pl.len()).collect().row(0)
    if rows and not has_ts:
        raise SchemaError(
            f"{name}: {what} need timestamps, but column 'ts' is missing or all null "
            "(steps order the events within a run; time-based analyses need ts)"
        )


def collect(lf: pl.LazyFrame | pl.DataFrame, *, streaming: bool = False) -> pl.DataFrame:
    """Collect a LazyFrame (eager frames pass through)."""
    if isinstance(lf, pl.DataFrame):
        return lf
    if streaming:
        return lf.collect(engine="streaming")
    return lf.collect()


#: Names ``by`` cannot take: one series per run is no series, and the others name the
#: columns the series tables are built of.
_RESERVED_BY = ("run_id", "series", "bucket")


#: Canonical columns that are measured per step, not labels of a run: a series per value of
#: them means nothing, and they are columns of the tables the series are built from.
_MEASURED = ("step", "ts", "action", "args", "result", "status", "error_type", "input_tokens", "output_tokens",
             "cost_usd", "latency_ms", "approved", "confidence", "feedback", "outcome")


#: Columns of the per-run feature table (:func:`driftwatch.run_features`) that the audit computes
#: from the steps: a run's step count, time span or latency quantile is a feature to analyse, not
#: a label that names a series, and a ``by`` of that name would clash with the computed column
#: (the per-run label columns ``agent``, ``version`` and ``parent_run_id`` are event columns).
#: ``tests/test_frames.py`` checks that this list covers every computed column of ``run_features``.
_RUN_FEATURES = ("first_ts", "last_ts", "n_steps", "n_llm", "n_tool", "n_distinct_actions", "n_errors",
                 "n_tool_errors", "latency_ms_p90", "n_latency", "error_cost_usd", "min_confidence", "n_retries",
                 "retry_cost_usd", "tokens", "error_rate", "llm_ratio", "runtime_s")

#: What a ``by`` refusal suggests instead.
_BY_EXPECTED = "expected label columns such as 'agent', 'version' or one of your own (e.g. 'tenant')"


def normalize_by(by: str | Sequence[str] | None, schema: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """``by`` as a tuple of distinct column names (a bare string is one column).

    Refuses (:class:`InvalidParameterError`) the names no series can be grouped by: ``run_id``
    and the names of the series tables' own columns, the canonical columns measured at every
    step (``cost_usd``), and the per-run features the audit computes (``n_steps``, ``first_ts``,
    ``latency_ms_p90``, ...). With the ``schema`` of the frame the columns come from, a column
    whose type cannot name a series (a list) is refused too (:func:`check_by_types`; without it,
    :func:`series_expr` refuses such a column when the name is written).
    """
    cols = _by_names(by)
    if schema is not None:
        check_by_types(schema, cols)
    return cols


def check_by_types(schema: Mapping[str, Any], by: Sequence[str]) -> None:
    """Raise :class:`InvalidParameterError` when a ``by`` column of ``schema`` holds a type that
    cannot name a series: a list, an array or a Python object (a struct of labels can, as its
    text). Columns missing from ``schema`` are left to the caller."""
    for c in by:
        if c in schema and not _can_name(schema[c]):
            raise _nested_by_error(c, schema[c])


def _can_name(dtype: Any) -> bool:
    """Whether values of ``dtype`` can be written as a series name (cast to text)."""
    if isinstance(dtype, pl.Struct):
        return all(_can_name(f.dtype) for f in dtype.fields)
    return not isinstance(dtype, pl.List | pl.Array | pl.Object) and dtype not in (pl.List, pl.Array, pl.Object)


def _nested_by_error(column: str, dtype: Any) -> InvalidParameterError:
    return InvalidParameterError(
        f"by (--by) cannot group by {column!r}: column {column!r} holds {dtype} values, and a nested "
        f"type cannot name a series; {_BY_EXPECTED}"
    )


def _by_names(by: str | Sequence[str] | None) -> tuple[str, ...]:
    if by is None:
        return ()
    if not isinstance(by, str) and not (isinstance(by, Sequence) or hasattr(by, "__iter__")):
        raise InvalidParameterError(f"by (--by) must be a column name or a list of them, got {by!r}")
    cols = (by,) if isinstance(by, str) else tuple(by)
    for c in cols:
        if not isinstance(c, str) or not c:
            raise InvalidParameterError(f"by (--by) must name columns (non-empty strings), got {by!r}")
        if c in _RESERVED_BY:
            raise InvalidParameterError(
                f"by (--by) cannot group by {c!r}; expected columns such as 'agent' or 'agent,version'"
            )
        if c in _MEASURED:
            raise InvalidParameterError(
                f"by (--by) cannot group by {c!r}: it is measured at every step, not a label of a run; "
                f"{_BY_EXPECTED}"
            )
        if c in _RUN_FEATURES:
            raise InvalidParameterError(
                f"by (--by) cannot group by {c!r}: it is a per-run feature the audit computes from the steps "
                f"(run_features), not an event column that labels a run; {_BY_EXPECTED}"
            )
        if c.startswith("_") or c in _series_table_columns():
            raise InvalidParameterError(
                f"by (--by) cannot group by {c!r}: the series tables (cost profile, load curve, bucket metrics, "
                f"change-points) have a column of that name (and names starting with '_' are their working "
                f"columns); rename the label column, e.g. with polars' rename({{{c!r}: 'label'}}); {_BY_EXPECTED}"
            )
    return tuple(dict.fromkeys(cols))  # (--by agent,agent is agent)


@functools.cache
def _series_table_columns() -> frozenset[str]:
    """The columns of the tables ``by`` names series of (a label named like one would clash)."""
    from driftwatch.changepoints import BUCKET_METRICS
    from driftwatch.costs import COST_COLUMNS
    from driftwatch.load import LOAD_COLUMNS

    changepoint_columns = ("metric", "before", "after", "magnitude", "score", "rank", "n", "coverage", "partial")
    return frozenset(
        (*COST_COLUMNS, *LOAD_COLUMNS, *BUCKET_METRICS, *changepoint_columns, "runs_with_outcome", "successes")
    )


def known_sum(name: str) -> pl.Expr:
    """The sum of column ``name`` over the group, null when no row has a value (a run whose
    log recorded no cost has an unknown cost, not a cost of 0)."""
    col = pl.col(name)
    return pl.when(col.count() > 0).then(col.sum()).alias(name)


def series_expr(by: Sequence[str]) -> pl.Expr:
    """An expression naming each group, e.g. ``agent=planner`` or ``agent=a,version=v2``.

    With an empty ``by`` the whole fleet is one series named ``all``. A missing value reads
    ``null``; a value that would be mistaken for one, or for the separator (the text ``null``,
    or one holding ``,``, ``"`` or ``\\``), is written in double quotes with ``"`` and
    ``\\`` escaped, so two groups never share a name (:func:`series_keys` reads the names back).
    """
    if not by:
        return pl.lit("all").alias("series")
    parts: list[pl.Expr] = []
    for i, col in enumerate(by):
        if i:
            parts.append(pl.lit(","))
        parts.append(pl.lit(f"{col}="))
        parts.append(_series_value(pl.col(col).map_batches(_as_label, return_dtype=pl.String, is_elementwise=True)))
    return pl.concat_str(parts).alias("series")


def _as_label(values: pl.Series) -> pl.Series:
    """A ``by`` column as text (what :func:`series_expr` writes); a type that cannot name a
    series (a list) is an :class:`InvalidParameterError` naming the column, not Polars' cast error,
    wherever the frame it came from was not checked (:func:`check_by_types`)."""
    if not _can_name(values.dtype):
        raise _nested_by_error(values.name, values.dtype)
    return values.cast(pl.String)


def _series_value(value: pl.Expr) -> pl.Expr:
    quoted = pl.concat_str(
        pl.lit('"'),
        value.str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True),
        pl.lit('"'),
    )
    odd = (value == "null") | value.str.contains(r'[,"\\]')
    return pl.when(value.is_null()).then(pl.lit("null")).when(odd).then(quoted).otherwise(value)


_SERIES_PART = re.compile(r'([^=,]*)=(?:"(?:[^"\\]|\\.)*"|[^,"]*)(?:,|$)')


def series_label(column: str, value: Any) -> str:
    """The :func:`series_expr` name of one column's value (``agent=planner``)."""
    one = pl.DataFrame({column: [None if value is None else str(value)]}, schema={column: pl.String})
    return one.select(series_expr([column])).item()


def series_keys(name: str) -> tuple[str, ...]:
    """The columns a :func:`series_expr` name was made of: ``("agent", "version")`` for
    ``agent=a,version="v,2"``; ``()`` for ``all`` or a name no :func:`series_expr` made."""
    keys: list[str] = []
    pos = 0
    while pos < len(name):
        m = _SERIES_PART.match(name, pos)
        if m is None or m.end() == pos:
            return ()
        keys.append(m.group(1))
        pos = m.end()
    return tuple(keys)


#: The longest duration accepted (``every``, windows): 100 years, far from the overflow of
#: timestamps a longer one would meet when added to them.
MAX_DURATION_DAYS = 36_525


def duration_seconds(every: str, *, name: str = "every") -> float:
    """Seconds in a Polars duration string such as ``"1m"``, ``"6h"``, ``"1d"``, ``"1w"``."""
    if not isinstance(every, str):
        raise InvalidParameterError(f"{name} must be a Polars duration string like '1h', got {every!r}")
    text = every  # (no spaces: Polars reads "1d " as no duration)
    if not _DURATION_RE.fullmatch(text):
        calendar = re.fullmatch(r"(?:\d+(?:ns|us|ms|s|m|h|d|w|mo|q|y|i))+", text) is not None
        why = (" (calendar units 'mo', 'q', 'y' and the index unit 'i' have no fixed length: use days "
               "or weeks, e.g. '30d' or '52w')") if calendar else ""
        raise InvalidParameterError(
            f"{name} must be a Polars duration string such as '1m' (minute), '1h', '1d', '1w' or '1d12h'{why}; "
            f"got {every!r}"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in re.findall(_DURATION_PART, text))
    if seconds <= 0:
        raise InvalidParameterError(f"{name} must be a positive duration such as '1m' or '1d', got {every!r}")
    if seconds > MAX_DURATION_DAYS * 86_400:
        raise InvalidParameterError(
            f"{name} must be at most {MAX_DURATION_DAYS:,} days (100 years: buckets and windows are added to "
            f"timestamps), got {every!r}"
        )
    return seconds


def duration(every: str, *, name: str = "every") -> timedelta:
    """A Polars duration string as a :class:`datetime.timedelta`."""
    return timedelta(seconds=duration_seconds(every, name=name))


def run_table(features: FrameLike, required: Sequence[str]) -> tuple[pl.LazyFrame, pl.Schema]:
    """``features`` (a :func:`~driftwatch.run_features` frame) as a LazyFrame with its schema.

    Raises :class:`InvalidParameterError` when ``features`` is not a Polars frame and
    :class:`SchemaError` when a ``required`` column is missing.
    """
    if not isinstance(features, pl.DataFrame | pl.LazyFrame):
        raise InvalidParameterError(
            f"features must be a polars DataFrame or LazyFrame from run_features(), got {type(features).__name__}"
        )
    lf = features.lazy()
    schema = lf.collect_schema()
    missing = [c for c in required if c not in schema]
    if missing:
        raise SchemaError(
            f"features: missing column(s) {missing} (expected run_features() output); found {list(schema)}"
        )
    return lf, schema


def detect_loops_if_available(lf: pl.LazyFrame) -> pl.DataFrame | None:
    """:func:`driftwatch.detect_loops` on ``lf``, or ``None`` when the loop detector is not installed."""
    try:
        from driftwatch.loops import detect_loops
    except ImportError:  # the loop detector is optional for the fleet-stage modules
        return None
    return detect_loops(lf)


__all__ = [
    "FrameLike",
    "as_lazy",
    "check_by_types",
    "check_flag",
    "check_seed",
    "collect",
    "detect_loops_if_available",
    "duration",
    "duration_seconds",
    "mark_checked",
    "normalize_by",
    "require_timestamps",
    "run_table",
    "series_expr",
    "series_keys",
    "series_label",
]


def cut_down(values: np.ndarray, decimals: int) -> np.ndarray:
    """``values`` cut (not rounded) to ``decimals``: the largest ``k / 10**decimals`` whose float
    is at most the value, so that a shown score reaches a threshold of that many decimals
    (``0.7``) exactly when the score does (``0.69996`` -> ``0.6999``; the float ``0.7`` stays
    ``0.7``).

    >>> cut_down(np.array([0.69996, 0.7, 0.6999999999999998, 0.57, 1.0]), 4).tolist()
    [0.6999, 0.7, 0.6999, 0.57, 1.0]
    """
    x = np.asarray(values, dtype=np.float64)
    scale = 10.0**decimals
    with np.errstate(invalid="ignore"):
        k = np.floor(x * scale)
        k = np.where(np.divide(k + 1, scale) <= x, k + 1, k)  # (x * scale rounded down a step)
        k = np.where(np.divide(k, scale) > x, k - 1, k)  # (or up one)
        return np.where(np.isfinite(x), np.divide(k, scale), x)
