"""Small helpers shared by every detector: accept frames, name series, parse durations."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import polars as pl

from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.schema import conform

FrameLike = pl.DataFrame | pl.LazyFrame

_DURATION_PART = r"(\d+)(ns|us|ms|s|m|h|d|w)"
_DURATION_RE = re.compile(rf"^(?:{_DURATION_PART})+$")
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


def as_lazy(events: Any, *, name: str = "events") -> pl.LazyFrame:
    """Return ``events`` as a canonical ``LazyFrame``.

    Accepts a DataFrame, a LazyFrame or anything with an ``.events`` attribute
    (a :class:`~driftwatch.read.ReadResult`). Missing optional columns are added
    as typed nulls and compatible dtypes are cast, so notebooks can pass partial
    frames; missing required columns raise :class:`SchemaError`.
    """
    if hasattr(events, "events") and not isinstance(events, FrameLike):
        events = events.events
    if isinstance(events, pl.DataFrame):
        lf = events.lazy()
    elif isinstance(events, pl.LazyFrame):
        lf = events
    else:
        raise InvalidParameterError(
            f"{name} must be a polars DataFrame or LazyFrame of canonical events, "
            f"got {type(events).__name__}"
        )
    # casting, typed nulls and step derivation live in driftwatch.schema.conform (shared with read_logs)
    return conform(lf, where=name, keep_extra=True)


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


def normalize_by(by: str | Sequence[str] | None) -> tuple[str, ...]:
    """``by`` as a tuple of distinct column names (a bare string is one column)."""
    if by is None:
        return ()
    cols = (by,) if isinstance(by, str) else tuple(by)
    for c in cols:
        if not isinstance(c, str) or not c:
            raise InvalidParameterError(f"by (--by) must name columns (non-empty strings), got {by!r}")
        if c in _RESERVED_BY:
            raise InvalidParameterError(
                f"by (--by) cannot group by {c!r}; expected columns such as 'agent' or 'agent,version'"
            )
    return tuple(dict.fromkeys(cols))  # (--by agent,agent is agent)


def series_expr(by: Sequence[str]) -> pl.Expr:
    """An expression naming each group, e.g. ``agent=planner`` or ``agent=a,version=v2``.

    With an empty ``by`` the whole fleet is one series named ``all``.
    """
    if not by:
        return pl.lit("all").alias("series")
    parts: list[pl.Expr] = []
    for i, col in enumerate(by):
        if i:
            parts.append(pl.lit(","))
        parts.append(pl.lit(f"{col}="))
        parts.append(pl.col(col).cast(pl.String).fill_null("null"))
    return pl.concat_str(parts).alias("series")


def duration_seconds(every: str, *, name: str = "every") -> float:
    """Seconds in a Polars duration string such as ``"1m"``, ``"6h"``, ``"1d"``, ``"1w"``."""
    if not isinstance(every, str):
        raise InvalidParameterError(f"{name} must be a Polars duration string like '1h', got {every!r}")
    text = every.strip()
    if not _DURATION_RE.match(text):
        raise InvalidParameterError(
            f"{name} must be a Polars duration string such as '1m' (minute), '1h', '1d', '1w' or '1d12h'; "
            f"got {every!r}"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in re.findall(_DURATION_PART, text))
    if seconds <= 0:
        raise InvalidParameterError(f"{name} must be a positive duration such as '1m' or '1d', got {every!r}")
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
    "collect",
    "detect_loops_if_available",
    "duration",
    "duration_seconds",
    "normalize_by",
    "run_table",
    "series_expr",
]
