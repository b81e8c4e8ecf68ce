"""Small helpers shared by every detector: accept frames, name series, parse durations."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import polars as pl

from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.schema import CANONICAL_SCHEMA, DEFAULT_AGENT

FrameLike = pl.DataFrame | pl.LazyFrame

_DURATION_RE = re.compile(r"^(\d+)(ns|us|ms|s|m|h|d|w)$")
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
    schema = lf.collect_schema()
    missing = [c for c in ("run_id", "action") if c not in schema]
    if "step" not in schema and "ts" not in schema:
        missing.append("step (or ts)")
    if missing:
        raise SchemaError(
            f"{name}: missing required column(s) {missing}; found {list(schema)}"
        )
    exprs: list[pl.Expr] = []
    for col, dtype in CANONICAL_SCHEMA.items():
        if col in schema:
            if schema[col] == dtype:
                exprs.append(pl.col(col))
            elif col == "ts":
                exprs.append(_ts_expr(schema[col]).alias("ts"))
            else:
                exprs.append(pl.col(col).cast(dtype, strict=False))
        elif col == "agent":
            exprs.append(pl.lit(DEFAULT_AGENT, dtype=pl.String).alias(col))
        elif col == "step":
            exprs.append(
                pl.col("ts").rank("ordinal").over("run_id").cast(pl.Int64).alias("step")
            )
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(col))
    extra = [pl.col(c) for c in schema if c not in CANONICAL_SCHEMA]
    return lf.select(exprs + extra)


def _ts_expr(dtype: pl.DataType) -> pl.Expr:
    col = pl.col("ts")
    if isinstance(dtype, pl.Datetime):
        col = col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col.dt.convert_time_zone("UTC")
        return col.dt.cast_time_unit("us")
    if dtype == pl.String:
        return col.str.to_datetime(time_unit="us", time_zone="UTC", strict=False)
    if dtype.is_integer():
        return pl.from_epoch(col, time_unit="ns").dt.replace_time_zone("UTC").dt.cast_time_unit("us")
    if dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    raise SchemaError(f"events: column 'ts' has type {dtype}; expected a datetime, ISO-8601 text or epoch ns")


def collect(lf: pl.LazyFrame | pl.DataFrame, *, streaming: bool = False) -> pl.DataFrame:
    """Collect a LazyFrame (eager frames pass through)."""
    if isinstance(lf, pl.DataFrame):
        return lf
    if streaming:
        return lf.collect(engine="streaming")
    return lf.collect()


def normalize_by(by: str | Sequence[str] | None) -> tuple[str, ...]:
    """``by`` as a tuple of column names (a bare string is one column)."""
    if by is None:
        return ()
    if isinstance(by, str):
        return (by,)
    return tuple(by)


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
    m = _DURATION_RE.match(every.strip())
    if not m:
        raise InvalidParameterError(
            f"{name} must be a Polars duration string such as '1m' (minute), '1h', '1d' or '1w'; "
            f"got {every!r}"
        )
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def duration(every: str, *, name: str = "every") -> timedelta:
    """A Polars duration string as a :class:`datetime.timedelta`."""
    return timedelta(seconds=duration_seconds(every, name=name))


__all__ = [
    "FrameLike",
    "as_lazy",
    "collect",
    "duration",
    "duration_seconds",
    "normalize_by",
    "series_expr",
]
