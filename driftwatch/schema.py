"""The canonical event table: one row per agent step (CONTRACT section 1).

Every reader and adapter produces exactly these columns with these dtypes;
missing optional columns are added as typed nulls so that downstream code
never branches on presence.

Examples
--------
>>> import driftwatch.schema as s
>>> s.REQUIRED
('run_id', 'step', 'ts', 'action')
>>> s.CANONICAL_SCHEMA["ts"]
Datetime(time_unit='us', time_zone='UTC')
"""

from __future__ import annotations

import polars as pl

from driftwatch.errors import SchemaError

TS_DTYPE = pl.Datetime("us", "UTC")

#: Column name -> dtype, in canonical order.
CANONICAL_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "step": pl.Int64(),
    "ts": TS_DTYPE,
    "action": pl.String(),
    "agent": pl.String(),
    "args": pl.String(),
    "result": pl.String(),
    "status": pl.String(),
    "error_type": pl.String(),
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "cost_usd": pl.Float64(),
    "latency_ms": pl.Float64(),
    "parent_run_id": pl.String(),
    "approved": pl.Boolean(),
    "confidence": pl.Float64(),
    "version": pl.String(),
    "feedback": pl.Float64(),
    "outcome": pl.Float64(),
}

COLUMNS: tuple[str, ...] = tuple(CANONICAL_SCHEMA)

#: Columns every input must have (``step`` may be derived from ``ts``; ``ts`` is
#: needed by time-based analyses only, but readers require one of the two).
REQUIRED: tuple[str, ...] = ("run_id", "step", "ts", "action")

#: Columns that must be present in the raw input (``step`` and ``ts`` can stand
#: in for each other).
ALWAYS_REQUIRED: tuple[str, ...] = ("run_id", "action")

OPTIONAL: tuple[str, ...] = tuple(c for c in COLUMNS if c not in REQUIRED)

DEFAULT_AGENT = "default"

#: Action name used for LLM calls by every adapter.
LLM_ACTION = "llm"

#: Prefix of hand-off actions (``handoff:<agent>``).
HANDOFF_PREFIX = "handoff:"


def empty_events() -> pl.DataFrame:
    """An empty canonical frame with the right dtypes."""
    return pl.DataFrame(schema=CANONICAL_SCHEMA)


def validate_events(frame: pl.DataFrame | pl.LazyFrame, *, where: str = "events") -> None:
    """Check that ``frame`` is a canonical event table.

    Raises :class:`~driftwatch.errors.SchemaError` naming every missing column
    and every column whose dtype differs from :data:`CANONICAL_SCHEMA`.

    Parameters
    ----------
    frame : polars.DataFrame or polars.LazyFrame
        The frame to check (a LazyFrame's schema is resolved, not collected).
    where : str, default="events"
        How to name the frame in the message (a file path, say).
    """
    schema = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
    missing = [c for c in COLUMNS if c not in schema]
    if missing:
        raise SchemaError(
            f"{where}: missing canonical column(s) {missing}; expected {list(COLUMNS)}, "
            f"found {list(schema)}. Use dw.read_logs(...) to convert raw logs."
        )
    wrong = [
        f"{c} is {schema[c]}, expected {dtype}"
        for c, dtype in CANONICAL_SCHEMA.items()
        if schema[c] != dtype
    ]
    if wrong:
        raise SchemaError(f"{where}: wrong column type(s): " + "; ".join(wrong))


__all__ = [
    "ALWAYS_REQUIRED",
    "CANONICAL_SCHEMA",
    "COLUMNS",
    "DEFAULT_AGENT",
    "HANDOFF_PREFIX",
    "LLM_ACTION",
    "OPTIONAL",
    "REQUIRED",
    "TS_DTYPE",
    "empty_events",
    "validate_events",
]
