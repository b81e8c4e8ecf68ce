"""The canonical event table: one row per agent step (CONTRACT section 1).

Every reader and adapter produces exactly these columns with these dtypes;
missing optional columns are added as typed nulls so that downstream code
never branches on presence.

This module also holds the one place where raw columns become canonical:
:func:`conform` casts compatible types (``Int32`` tokens, ISO-8601 text
timestamps, epoch integers, other time zones and units), fills defaults and,
with ``check=True``, tags every row that cannot be used with a rejection
reason from :data:`REJECT_REASONS`. :func:`driftwatch.read.read_logs` and
:func:`driftwatch._frames.as_lazy` both go through it.

Examples
--------
>>> import polars as pl
>>> import driftwatch.schema as s
>>> s.REQUIRED
('run_id', 'step', 'ts', 'action')
>>> s.CANONICAL_SCHEMA["ts"]
Datetime(time_unit='us', time_zone='UTC')
>>> raw = pl.DataFrame({"run_id": [1, 1], "ts": ["2026-11-01T10:00:00+02:00", "2026-11-01 08:00:01Z"],
...                     "action": ["search", "llm"], "input_tokens": pl.Series([3, -1], dtype=pl.Int32)})
>>> out = s.conform(raw, check=True).collect()
>>> out.select("run_id", "step", "ts", "input_tokens", s.REASON_COL).rows()[1]
('1', None, datetime.datetime(2026, 11, 1, 8, 0, 1, tzinfo=zoneinfo.ZoneInfo(key='UTC')), -1, 'negative_tokens')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from driftwatch.errors import InvalidParameterError, SchemaError

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

#: Values of ``status`` after normalisation.
STATUS_VALUES: tuple[str, ...] = ("ok", "error")

#: Spellings of ``status`` (compared lower-cased and stripped) mapped to ``ok`` / ``error``.
STATUS_ALIASES: dict[str, str] = {
    **{
        s: "ok"
        for s in (
            "ok", "success", "succeeded", "successful", "completed", "complete", "done", "pass", "passed",
            "finished", "true", "unset", "status_code_ok", "status_code_unset",
        )
    },
    **{
        s: "error"
        for s in (
            "error", "err", "errored", "failed", "failure", "fail", "exception", "timeout", "timed_out",
            "timedout", "cancelled", "canceled", "aborted", "fatal", "crashed", "false", "status_code_error",
        )
    },
}

_TRUE_TEXT = ("true", "t", "yes", "y", "1", "approved")
_FALSE_TEXT = ("false", "f", "no", "n", "0", "denied", "rejected")

#: Why a row can be rejected, in the order the checks are applied (a row gets the first).
#: ``bad_value`` appears as ``bad_value:<column>``.
REJECT_REASONS: dict[str, str] = {
    "not_a_step": "a span that is not an agent step: the run's root agent span, a chain or workflow "
    "wrapper, or a span without a GenAI operation (OTel / OpenInference input only)",
    "null_run_id": "run_id is null or blank",
    "null_action": "action is null or blank",
    "bad_ts": "ts is present but is not a timestamp (unparseable text, out-of-range number) or lies "
    "outside 1970-01-01..9999-12-31",
    "null_step": "the input has a step column but this row's step is null",
    "null_ts": "the input has no step column and this row has no timestamp to order it by",
    "bad_value": "a value that cannot be converted to its canonical type (reported as bad_value:<column>), "
    "e.g. 'abc' or 2.5 as tokens, inf as cost, 'maybe' as approved, a token count above a trillion "
    "(MAX_STEP_TOKENS), a step cost above a billion dollars (MAX_STEP_COST_USD) or a latency above a "
    "trillion milliseconds (MAX_STEP_LATENCY_MS); for span formats also bad_value:attributes, JSON-text "
    "attributes that are not valid JSON",
    "negative_tokens": "input_tokens or output_tokens below zero",
    "negative_cost": "cost_usd below zero",
    "negative_latency": "latency_ms below zero",
    "bad_confidence": "confidence outside [0, 1]",
    "bad_status": "status is not a recognised spelling of ok / error (see STATUS_ALIASES; lower, UPPER "
    "or Title case, e.g. OK, Success, ERROR, failed, timeout)",
    "duplicate_step": "a second row with the same (run_id, step) that repeats the action and arguments of the "
    "first one read (a re-delivered copy); the first one is kept",
    "conflicting_step": "a second row with the same (run_id, step) that records another action or other "
    "arguments than the first one read; the first one is kept, and the run is audited without this one",
}

#: Internal column holding the rejection reason (null for a valid row).
REASON_COL = "__dw_reason"

#: The most tokens one step may count in ``input_tokens`` or ``output_tokens`` (a trillion):
#: above, the row is rejected as ``bad_value:<column>``. Sums of up to 9 million such steps
#: still fit a 64-bit integer.
MAX_STEP_TOKENS = 10**12
#: The most one step may cost in ``cost_usd`` (a billion dollars) and last in ``latency_ms`` (a
#: trillion milliseconds, 31 years): above, the row is rejected as ``bad_value:<column>`` (a
#: value such as 1e308 is finite, but a run's or a fleet's sum of it is not).
MAX_STEP_COST_USD = 1e9
MAX_STEP_LATENCY_MS = 1e12
#: Internal column holding a short description of the offending value.
DETAIL_COL = "__dw_detail"

_TMP = "__dw_v_"

_NUMERIC_TOKENS = ("input_tokens", "output_tokens")
#: Canonical text columns that may arrive as nested values (lists/structs) and are JSON-encoded.
_JSON_OK = ("args", "result", "error_type")


def repeat_reason(
    order: pl.Expr, valid: pl.Expr, *keys: str | pl.Expr, compare: Sequence[str] = ("action", "args")
) -> tuple[pl.Expr, pl.Expr]:
    """How a row repeating a step is rejected: ``(first, reason)`` over the rows sharing ``keys``.

    ``first`` is the smallest ``order`` among the ``valid`` rows of the key (the row kept);
    ``reason`` is null for a row that is not valid or is the first, ``duplicate_step`` for a
    re-delivered copy (the kept row's values in every column of ``compare``, nulls equal) and
    ``conflicting_step`` for a row recording something else at the same step: two calls logged
    under one turn number, or a failed call and its later success, are two calls, and the one
    not kept is missing from the audit (its run counts it in ``n_rejected``; a destructive
    call among them is still checked). Compare rows with :data:`STEP_COLUMNS` (a canonical row
    is one step) and spans with ``("action", "args")`` (the same span id is the same span).
    """
    rank = pl.when(valid).then(order)
    first = rank.min().over(*keys)
    row = pl.struct(list(compare)).hash(seed=0)  # (one window for all the columns)
    same = row == row.sort_by(rank, nulls_last=True).first().over(*keys)
    reason = pl.when(valid & (order != first)).then(
        pl.when(same).then(pl.lit("duplicate_step")).otherwise(pl.lit("conflicting_step"))
    )
    return first, reason


def repeated_rows(
    frame: pl.DataFrame, order: str, valid: pl.Expr, keys: Sequence[str], compare: Sequence[str]
) -> pl.DataFrame:
    """``order``, ``first`` and ``reason`` (see :func:`repeat_reason`) of the rows of ``frame``
    that repeat a step, worked out on the rows of repeated keys only (a log without repeats,
    the usual case, costs one hash of the keys)."""
    cand = frame.filter(pl.struct(list(keys)).is_duplicated())
    first, reason = repeat_reason(pl.col(order), valid, *keys, compare=[c for c in compare if c in frame.columns])
    return cand.select(pl.col(order), first.alias("first"), reason.alias("reason")).filter(pl.col("reason").is_not_null())


#: The columns a repeated ``(run_id, step)`` must match to be a re-delivered copy.
STEP_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in ("run_id", "step"))


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


# --------------------------------------------------------------------------------------------
# Conversions: one function per target type, each returning the converted value and a flag
# "the raw value was there but could not be converted" (None when conversion cannot fail).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversion:
    """A converted column: ``value`` (canonical dtype) and ``bad`` (raw value present but unusable)."""

    value: pl.Expr
    bad: pl.Expr | None = None


def _type_error(where: str, col: str, dtype: pl.DataType, expected: str) -> SchemaError:
    return SchemaError(f"{where}: column {col!r} has type {dtype}; expected {expected}")


def _is_nested(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.List | pl.Array | pl.Struct)


def json_text(expr: pl.Expr) -> pl.Expr:
    """Encode any value (lists, structs, scalars) as compact JSON text, keeping nulls null."""
    wrapped = pl.struct(expr.alias("v")).struct.json_encode()
    # {"v":<json>} -> <json>
    text = wrapped.str.slice(5, wrapped.str.len_chars() - 6)
    return pl.when(expr.is_null()).then(None).otherwise(text)


_CONT = "[89ab][0-9a-f]"  # a UTF-8 continuation byte (80-BF), in hex
#: A whole hex-encoded value that is valid UTF-8 (the byte ranges of RFC 3629, section 4:
#: no overlong forms, no surrogates, nothing above U+10FFFF), one character at a time, with
#: no ASCII control character but tab, line feed and carriage return (so that random id
#: bytes, 16 of them printable by chance about once in 10 million ids, keep their hex form).
UTF8_AS_HEX_RE = (
    "^(?:0[9ad]|[2-6][0-9a-f]|7[0-9a-e]"
    f"|(?:c[2-9a-f]|d[0-9a-f]){_CONT}"
    f"|e0[ab][0-9a-f]{_CONT}|(?:e[1-9a-c]|e[ef]){_CONT}{_CONT}|ed[89][0-9a-f]{_CONT}"
    f"|f0(?:9[0-9a-f]|[ab][0-9a-f]){_CONT}{_CONT}|f[1-3]{_CONT}{_CONT}{_CONT}|f48[0-9a-f]{_CONT}{_CONT}"
    ")*$"
)


def binary_text(expr: pl.Expr) -> pl.Expr:
    r"""Binary values as text: decoded where valid UTF-8 text, hex-encoded where not.

    Writers that leave out Parquet's UTF-8 annotation (Impala, some Hive and Go
    writers) store text as plain binary: a status ``b"ok"`` must read ``ok``, not
    ``6f6b``. Raw ids and hashes (control bytes, invalid UTF-8) keep their hex form.
    Polars cannot decode invalid UTF-8 leniently, so validity is checked on the hex
    text, and only the valid values are decoded (from it).

    Examples
    --------
    >>> import polars as pl
    >>> s = pl.Series("x", [b"ok", b"caf\xc3\xa9", b"\xff\x01", None])
    >>> s.to_frame().select(binary_text(pl.col("x")))["x"].to_list()
    ['ok', 'café', 'ff01', None]
    """
    hexed = expr.bin.encode("hex")
    valid = hexed.str.contains(UTF8_AS_HEX_RE)
    decoded = pl.when(valid).then(hexed).str.decode("hex").cast(pl.String)
    return pl.when(valid).then(decoded).otherwise(hexed)


def to_text(expr: pl.Expr, dtype: pl.DataType, *, where: str = "events", col: str = "column",
            nested_ok: bool = True) -> Conversion:
    """Convert ``expr`` of ``dtype`` to ``Utf8``.

    Text passes through, categoricals and numbers are cast, binary values are
    decoded where they are valid UTF-8 (text written without Parquet's UTF-8
    annotation) and hex-encoded where not (raw ids, hashes; see :func:`binary_text`),
    and lists/structs become compact JSON when ``nested_ok``.
    """
    if dtype == pl.String:
        return Conversion(expr)
    if dtype == pl.Null:
        return Conversion(expr.cast(pl.String))
    if isinstance(dtype, pl.Categorical | pl.Enum) or dtype.is_numeric() or dtype == pl.Boolean:
        return Conversion(expr.cast(pl.String))
    if dtype.is_temporal():
        return Conversion(expr.cast(pl.String))
    if dtype == pl.Binary:
        return Conversion(binary_text(expr))
    if _is_nested(dtype) and nested_ok:
        return Conversion(json_text(expr))
    raise _type_error(where, col, dtype, "text (Utf8)")


def _integral(f: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """Float -> Int64 when the value is a whole number; flag fractions and non-finite values."""
    ok = f.is_finite() & (f == f.round(0)) & (f.abs() < 9.2e18)
    value = pl.when(ok).then(f).otherwise(None).cast(pl.Int64)
    bad = f.is_not_null() & ~f.is_nan() & ~ok
    return value, bad


def to_int(expr: pl.Expr, dtype: pl.DataType, *, where: str = "events", col: str = "column") -> Conversion:
    """Convert to ``Int64``: integers widen, whole floats and numeric text convert, the rest is flagged."""
    if dtype == pl.Int64:
        return Conversion(expr)
    if dtype == pl.Null:
        return Conversion(expr.cast(pl.Int64))
    if dtype.is_integer():
        value = expr.cast(pl.Int64, strict=False)  # UInt64 above Int64's range -> null, flagged
        bad = expr.is_not_null() & value.is_null() if dtype == pl.UInt64 else None
        return Conversion(value, bad)
    if dtype == pl.Boolean:
        return Conversion(expr.cast(pl.Int64))
    if dtype.is_float() or isinstance(dtype, pl.Decimal):
        value, bad = _integral(expr.cast(pl.Float64))
        return Conversion(value, bad)
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        text = expr.cast(pl.String).str.strip_chars()
        f = text.cast(pl.Float64, strict=False)
        value, _ = _integral(f)
        bad = (text.is_not_null() & (text != "")) & value.is_null()
        return Conversion(value, bad)
    raise _type_error(where, col, dtype, "an integer (or whole numbers as float/text)")


def to_float(expr: pl.Expr, dtype: pl.DataType, *, where: str = "events", col: str = "column") -> Conversion:
    """Convert to ``Float64``; NaN counts as missing (null), infinities and non-numeric text are flagged."""
    if dtype == pl.Null:
        return Conversion(expr.cast(pl.Float64))
    if dtype.is_numeric() or dtype == pl.Boolean:
        f = expr.cast(pl.Float64)
    elif dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        text = expr.cast(pl.String).str.strip_chars()
        f = text.cast(pl.Float64, strict=False)
        parsed_bad = (text.is_not_null() & (text != "")) & f.is_null()
        value = pl.when(f.is_finite()).then(f).otherwise(None)
        bad = parsed_bad | (f.is_not_null() & f.is_infinite())
        return Conversion(value, bad)
    else:
        raise _type_error(where, col, dtype, "a number")
    if dtype.is_integer() or dtype == pl.Boolean:
        return Conversion(f)
    value = pl.when(f.is_finite()).then(f).otherwise(None)
    return Conversion(value, f.is_infinite())


def to_bool(expr: pl.Expr, dtype: pl.DataType, *, where: str = "events", col: str = "column") -> Conversion:
    """Convert to ``Boolean``: 0/1 and common words (true/false, yes/no, approved/denied)."""
    if dtype == pl.Boolean:
        return Conversion(expr)
    if dtype == pl.Null:
        return Conversion(expr.cast(pl.Boolean))
    if dtype.is_numeric():
        f = expr.cast(pl.Float64)
        value = pl.when(f == 1).then(True).when(f == 0).then(False).otherwise(None)
        return Conversion(value, expr.is_not_null() & ~f.is_nan() & value.is_null())
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        text = expr.cast(pl.String).str.strip_chars().str.to_lowercase()
        value = pl.when(text.is_in(_TRUE_TEXT)).then(True).when(text.is_in(_FALSE_TEXT)).then(False).otherwise(None)
        return Conversion(value, (text.is_not_null() & (text != "")) & value.is_null())
    raise _type_error(where, col, dtype, "a boolean (or 0/1, true/false, yes/no)")


# Epoch integers: the unit is read from the magnitude, per value. Dates between 1973 and 5138
# are unambiguous: seconds < 1e11 <= milliseconds < 1e14 <= microseconds < 1e17 <= nanoseconds.
_EPOCH_SPLITS = (1e11, 1e14, 1e17)


def epoch_to_ts(expr: pl.Expr, dtype: pl.DataType = pl.Int64) -> pl.Expr:
    """Epoch numbers (seconds, ms, us or ns, told apart by magnitude) -> ``Datetime(us, UTC)``.

    Integers are converted with exact integer arithmetic; floats (e.g. ``time.time()`` seconds)
    are rounded to the microsecond. Non-finite or out-of-range values become null.
    """
    s_, ms, us = (int(x) for x in _EPOCH_SPLITS)
    if dtype.is_integer():
        i = expr.cast(pl.Int64, strict=False)
        a = i.abs()
        micros = (
            pl.when(a < s_).then(i * 1_000_000)
            .when(a < ms).then(i * 1_000)
            .when(a < us).then(i)
            .otherwise(i // 1_000)
        )
        return micros.cast(TS_DTYPE)
    f = expr.cast(pl.Float64)
    a = f.abs()
    micros_f = (
        pl.when(a < s_).then(f * 1e6)
        .when(a < ms).then(f * 1e3)
        .when(a < us).then(f)
        .otherwise(f / 1e3)
    )
    ok = f.is_finite() & (micros_f.abs() < 9.2e18)
    return pl.when(ok).then(micros_f.round(0)).otherwise(None).cast(pl.Int64).cast(TS_DTYPE)


def _text_to_ts(expr: pl.Expr) -> pl.Expr:
    """ISO-8601 text -> ``Datetime(us, UTC)``; offsets are honoured, naive text is taken as UTC."""
    text = (
        expr.str.strip_chars()
        .str.replace(r"^(\d{4}-\d{2}-\d{2})[ T]", "${1}T")
        .str.replace(r"[Zz]$", "+00:00")
    )
    aware = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_unit="us", time_zone="UTC", strict=False)
    naive = pl.coalesce(
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", time_unit="us", strict=False),
        text.str.to_datetime("%Y-%m-%dT%H:%M%.f", time_unit="us", strict=False),
        text.str.to_datetime("%Y-%m-%d", time_unit="us", strict=False),
    ).dt.replace_time_zone("UTC")
    return pl.coalesce(aware, naive)


#: The timestamps an agent's log can hold: from the Unix epoch to the end of year 9999 (the
#: last a Python ``datetime`` holds). Others are rejected as ``bad_ts``: one event dated in
#: year 12026 failed the whole audit when its summary was written, and one dated in year 1
#: made every time series of the fleet span two thousand years.
TS_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TS_MAX = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


_UNIT_PER_US = {"ms": (1, 1_000), "us": (1, 1), "ns": (1_000, 1)}  # (multiplier, divisor) from us
_US_PER_DAY = 86_400_000_000
_I64_MAX = 2**63 - 1


def _epoch_us(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _epoch_range(dtype: pl.DataType) -> tuple[int, int]:
    """``[TS_MIN, TS_MAX]`` as raw integers of a ``Datetime`` (in its unit) or ``Date`` (days)."""
    lo, hi = _epoch_us(TS_MIN), _epoch_us(TS_MAX)
    if dtype == pl.Date:
        return lo // _US_PER_DAY, hi // _US_PER_DAY
    assert isinstance(dtype, pl.Datetime)
    mul, div = _UNIT_PER_US[dtype.time_unit or "us"]
    return lo * mul // div, min(hi * mul // div, _I64_MAX)


def to_ts(expr: pl.Expr, dtype: pl.DataType, *, where: str = "events", col: str = "ts") -> Conversion:
    """:func:`_any_ts`, with timestamps outside ``[TS_MIN, TS_MAX]`` flagged (value null)."""
    conv = _any_ts(expr, dtype, where=where, col=col)
    if dtype == pl.Null:
        return conv
    inside = conv.value.is_between(pl.lit(TS_MIN, dtype=TS_DTYPE), pl.lit(TS_MAX, dtype=TS_DTYPE))
    outside = conv.value.is_not_null() & ~inside
    return Conversion(pl.when(inside).then(conv.value), outside if conv.bad is None else conv.bad | outside)


def _any_ts(expr: pl.Expr, dtype: pl.DataType, *, where: str = "events", col: str = "ts") -> Conversion:
    """Convert a timestamp column of any common shape to ``Datetime(us, UTC)``.

    * ``Datetime`` in any unit; a time zone is converted to UTC, a naive value is taken as UTC;
    * ``Date`` -> midnight UTC;
    * ISO-8601 text (``T`` or space separator, optional fraction, ``Z`` or ``+hh[:mm]`` offsets,
      date-only) -> parsed, unparseable text is flagged;
    * epoch integers or floats in seconds, milliseconds, microseconds or nanoseconds, told apart
      by magnitude (see :func:`epoch_to_ts`).
    """
    if dtype == TS_DTYPE:
        return Conversion(expr)
    if dtype == pl.Null:
        return Conversion(expr.cast(TS_DTYPE))
    if isinstance(dtype, pl.Datetime) and dtype.time_unit in ("us", "ns") and dtype.time_zone in (None, "UTC"):
        # (the usual column: to microseconds in UTC without arithmetic that could overflow,
        # and to_ts flags the values outside the range; no per-event mask needed)
        e = expr.dt.replace_time_zone("UTC") if dtype.time_zone is None else expr
        return Conversion(e.dt.cast_time_unit("us"))
    if isinstance(dtype, pl.Datetime | pl.Date):
        # the range is checked on the raw integers in the source unit: a value outside it can
        # overflow the conversion to microseconds (Polars panics on it)
        raw = expr.to_physical()
        inside = raw.is_between(*_epoch_range(dtype))
        kept = pl.when(inside).then(expr)
        if dtype == pl.Date:
            value = kept.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        else:
            utc = kept.dt.replace_time_zone("UTC") if dtype.time_zone is None else kept.dt.convert_time_zone("UTC")
            value = utc.dt.cast_time_unit("us")
        return Conversion(value, raw.is_not_null() & ~inside)
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        text = expr.cast(pl.String)
        value = _text_to_ts(text)
        return Conversion(value, (text.str.strip_chars() != "") & text.is_not_null() & value.is_null())
    if dtype.is_numeric():
        value = epoch_to_ts(expr, dtype)
        f = expr.cast(pl.Float64)
        return Conversion(value, expr.is_not_null() & ~f.is_nan() & value.is_null())
    raise _type_error(
        where, col, dtype,
        "a datetime, a date, ISO-8601 text or epoch seconds/milliseconds/microseconds/nanoseconds",
    )


#: Every accepted spelling (lower-case, UPPER-CASE, Title-case of :data:`STATUS_ALIASES`) -> ok / error.
STATUS_SPELLINGS: dict[str, str] = {
    spelled: value
    for alias, value in STATUS_ALIASES.items()
    for spelled in (alias, alias.upper(), alias.title(), alias.capitalize())
}


def normalize_status(text: pl.Expr) -> pl.Expr:
    """Map common spellings (``OK``, ``Success``, ``ERROR``, ``failed``, ...) to ``ok`` / ``error``.

    One hash lookup per row in :data:`STATUS_SPELLINGS` (lower, UPPER or Title case; no
    whitespace trimming). Empty text becomes null; unrecognised values are kept as they are, so
    that the ``bad_status`` check can report them.

    Examples
    --------
    >>> import polars as pl
    >>> pl.select(normalize_status(pl.lit(pl.Series(["OK", "Failed", "timeout", "", "weird"])))).to_series().to_list()
    ['ok', 'error', 'error', None, 'weird']
    """
    mapped = text.replace_strict(STATUS_SPELLINGS, default=None, return_dtype=pl.String)
    return pl.when(text == "").then(None).otherwise(pl.coalesce(mapped, text))


_CONVERTERS = {
    pl.String: to_text,
    pl.Int64: to_int,
    pl.Float64: to_float,
    pl.Boolean: to_bool,
}


def convert_column(expr: pl.Expr, col: str, dtype: pl.DataType, *, where: str = "events") -> Conversion:
    """Convert a raw column to the canonical dtype of canonical column ``col``."""
    target = CANONICAL_SCHEMA[col]
    if col == "ts":
        return to_ts(expr, dtype, where=where, col=col)
    if target == pl.String:
        return to_text(expr, dtype, where=where, col=col, nested_ok=col in _JSON_OK)
    return _CONVERTERS[type(target)](expr, dtype, where=where, col=col)


def check_required(columns: Sequence[str], *, where: str = "events", found: Sequence[str] | None = None) -> None:
    """Raise :class:`SchemaError` unless ``run_id``, ``action`` and ``step`` or ``ts`` are present.

    ``found``: the input's own column names, when ``columns`` are what was made of them (the
    message lists them, and points at names that differ from a required one only in case).
    """
    missing = [c for c in ALWAYS_REQUIRED if c not in columns]
    if "step" not in columns and "ts" not in columns:
        missing.append("step (or ts)")
    if missing:
        # (driftwatch's own working columns, "__dw_order" and the like, are not the input's)
        found = [c for c in (columns if found is None else found) if not c.startswith("__dw_")]
        wanted = [*ALWAYS_REQUIRED, "step", "ts"]
        near = {c: w for c in found for w in wanted if c != w and c.strip().lower() == w and w not in columns}
        hint = ""
        if near:
            pairs = ", ".join(f"{c!r}: {w!r}" for c, w in near.items())
            flags = " ".join(f"--map {c}={w}" for c, w in near.items())
            hint = f" (column names are case-sensitive: rename, or read with column_map={{{pairs}}}; CLI: {flags})"
        raise SchemaError(
            f"{where}: missing required column(s) {missing}; expected at least "
            f"{list(ALWAYS_REQUIRED)} and step or ts; found {found}{hint}"
        )


def is_blank(e: pl.Expr) -> pl.Expr:
    """Null, empty or whitespace-only text."""
    return e.is_null() | e.str.contains(r"^\s*$")


def conform(
    frame: pl.DataFrame | pl.LazyFrame,
    *,
    where: str = "events",
    check: bool = False,
    normalize: bool | None = None,
    order_by: Sequence[str] = (),
    keep_extra: bool = False,
) -> pl.LazyFrame:
    """Cast a frame whose columns carry canonical names to the canonical schema.

    Parameters
    ----------
    frame : polars.DataFrame or polars.LazyFrame
        Columns named like :data:`CANONICAL_SCHEMA` (any compatible dtype) plus anything else.
    where : str, default="events"
        How to name the input in error messages (a file path, say).
    check : bool, default=False
        Also tag every row that cannot be used: adds :data:`REASON_COL` (the first failed check
        from :data:`REJECT_REASONS`, null for a valid row) and :data:`DETAIL_COL` (the offending
        raw value as text, computed only for tagged rows). Rows are never dropped here;
        duplicates of ``(run_id, step)`` are a global property and are tagged by
        :func:`driftwatch.read.read_logs`. A ``REASON_COL`` / ``DETAIL_COL`` already in the
        frame (set by an adapter) takes precedence.
    normalize : bool, optional
        Map status spellings to ``ok`` / ``error`` (:func:`normalize_status`) and an empty
        ``agent`` to ``"default"``. Defaults to ``check``. (The checks themselves read the raw
        status, so the reasons do not depend on it.)
    order_by : sequence of str, default=()
        Tie-breaking columns (after ``ts``) used when ``step`` is derived from ``ts`` order; kept
        in the output.
    keep_extra : bool, default=False
        Keep every non-canonical column after the canonical ones.

    Returns
    -------
    polars.LazyFrame
        Canonical columns in canonical order, then the kept extra columns (and the reason
        columns with ``check``).

    Raises
    ------
    SchemaError
        A required column is missing or a column's dtype cannot be converted.

    Examples
    --------
    >>> import polars as pl
    >>> from driftwatch.schema import conform
    >>> raw = pl.DataFrame({"run_id": ["a", "a"], "ts": [1_790_000_001_000_000_000, 1_790_000_000],
    ...                     "action": ["llm", "search"], "status": ["SUCCESS", "failed"]})
    >>> conform(raw, check=True).collect().select("step", "ts", "status").rows()
    [(2, datetime.datetime(2026, 9, 21, 14, 13, 21, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 'ok'), \
(1, datetime.datetime(2026, 9, 21, 14, 13, 20, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 'error')]
    """
    if isinstance(frame, pl.DataFrame):
        lf = frame.lazy()
    elif isinstance(frame, pl.LazyFrame):
        lf = frame
    else:
        raise InvalidParameterError(
            f"{where} must be a polars DataFrame or LazyFrame, got {type(frame).__name__}"
        )
    if normalize is None:
        normalize = check
    schema = lf.collect_schema()
    check_required(list(schema), where=where)
    order_by = tuple(order_by)

    values: dict[str, pl.Expr] = {}
    bad: dict[str, pl.Expr] = {}
    for col, target in CANONICAL_SCHEMA.items():
        if col not in schema:
            if col == "agent":
                values[col] = pl.lit(DEFAULT_AGENT, dtype=pl.String)
            elif col != "step":
                values[col] = pl.lit(None, dtype=target)
            continue
        conv = convert_column(pl.col(col), col, schema[col], where=where)
        value = conv.value
        if col == "agent":
            if normalize:
                value = pl.when(value == "").then(None).otherwise(value)
            value = value.fill_null(DEFAULT_AGENT)
        elif normalize and col == "status":
            value = normalize_status(value)
        values[col] = value
        if conv.bad is not None:
            bad[col] = conv.bad

    lf = lf.with_columns([e.alias(_TMP + c) for c, e in values.items()])
    has_step = "step" in schema
    if check:
        raw_status = None
        if "status" in schema:
            raw_status = to_text(pl.col("status"), schema["status"], where=where, col="status").value
        lf = _add_reasons(lf, schema, bad, has_step, raw_status)
    if not has_step:
        key = pl.struct([_v("ts"), *[pl.col(c) for c in order_by]]) if order_by else _v("ts")
        if check:
            key = pl.when(pl.col(REASON_COL).is_null()).then(key)
        lf = lf.with_columns(key.rank("ordinal").over(_v("run_id")).cast(pl.Int64).alias(_TMP + "step"))

    out = [_v(c).alias(c) for c in COLUMNS]
    keep: list[str] = []
    if keep_extra:
        keep = [c for c in schema if c not in CANONICAL_SCHEMA and c not in (REASON_COL, DETAIL_COL)]
    else:
        keep = [c for c in order_by if c not in CANONICAL_SCHEMA]
    out += [pl.col(c) for c in keep]
    if check:
        out += [pl.col(REASON_COL), pl.col(DETAIL_COL)]
    return lf.select(out)


def _v(col: str) -> pl.Expr:
    """The converted (temporary) value of canonical column ``col`` inside :func:`conform`."""
    return pl.col(_TMP + col)


def _add_reasons(
    lf: pl.LazyFrame,
    schema: Mapping[str, pl.DataType],
    bad: dict[str, pl.Expr],
    has_step: bool,
    raw_status: pl.Expr | None,
) -> pl.LazyFrame:
    """REASON_COL (first failed check) and DETAIL_COL (only computed where a reason is set)."""
    checks: list[tuple[pl.Expr, str, pl.Expr | None]] = []
    adapter = REASON_COL in schema
    if adapter:
        # the adapter's own reason first; read from a copy, because the detail is built after
        # REASON_COL has been replaced by the final reason
        lf = lf.with_columns(pl.col(REASON_COL).alias(_TMP + "adapter_reason"))
        checks.append((pl.col(_TMP + "adapter_reason").is_not_null(), "", None))
    checks += [
        (is_blank(_v("run_id")), "null_run_id", None),
        (is_blank(_v("action")), "null_action", None),
    ]
    if "ts" in bad:
        checks.append((bad["ts"], "bad_ts", _raw_text(pl.col("ts"), schema["ts"])))
    if has_step:
        if "step" in bad:
            checks.append((bad["step"], "bad_value:step", _raw_text(pl.col("step"), schema["step"])))
        checks.append((_v("step").is_null(), "null_step", None))
    else:
        checks.append((_v("ts").is_null(), "null_ts", None))
    for c in COLUMNS:
        if c in bad and c not in ("ts", "step"):
            checks.append((bad[c], f"bad_value:{c}", _raw_text(pl.col(c), schema[c])))
    for c in _NUMERIC_TOKENS:
        if c in schema:
            checks.append((_v(c) < 0, "negative_tokens", pl.format(f"{c}={{}}", _v(c))))
            # more than any model reads or writes in one step: a unit or logging bug, and a run's
            # sum of such counts would wrap around in 64-bit integers (a huge run read as negative)
            checks.append((_v(c) > MAX_STEP_TOKENS, f"bad_value:{c}", pl.format(f"{c}={{}}", _v(c))))
    if "cost_usd" in schema:
        checks.append((_v("cost_usd") < 0, "negative_cost", pl.format("cost_usd={}", _v("cost_usd"))))
        # a billion dollars a step is a unit or logging bug, and sums of such values reach inf
        checks.append((_v("cost_usd") > MAX_STEP_COST_USD, "bad_value:cost_usd",
                       pl.format("cost_usd={}", _v("cost_usd"))))
    if "latency_ms" in schema:
        checks.append((_v("latency_ms") < 0, "negative_latency", pl.format("latency_ms={}", _v("latency_ms"))))
        checks.append((_v("latency_ms") > MAX_STEP_LATENCY_MS, "bad_value:latency_ms",
                       pl.format("latency_ms={}", _v("latency_ms"))))
    if "confidence" in schema:
        conf = _v("confidence")
        checks.append(((conf < 0) | (conf > 1), "bad_confidence", pl.format("confidence={}", conf)))
    if raw_status is not None:
        # on the raw text (one hash lookup), so the check does not need the normalised value
        known = raw_status.is_in(list(STATUS_SPELLINGS)) | raw_status.is_null() | (raw_status == "")
        checks.append((~known, "bad_status", _raw_text(pl.col("status"), schema["status"])))
    none = pl.lit(None, dtype=pl.String)
    reason: Any = pl
    detail: Any = pl
    for cond, name, det in checks:
        cond = cond.fill_null(False)
        reason = reason.when(cond).then(pl.col(REASON_COL) if name == "" else pl.lit(name))
        if name == "":
            detail = detail.when(cond).then(pl.col(DETAIL_COL) if DETAIL_COL in schema else none)
        else:
            detail = detail.when(cond).then(det if det is not None else none)
    lf = lf.with_columns(reason.otherwise(none).cast(pl.String).alias(REASON_COL))
    # a separate step, so that a filter on REASON_COL runs before the detail text is built
    return lf.with_columns(
        pl.when(pl.col(REASON_COL).is_not_null()).then(detail.otherwise(none)).cast(pl.String).alias(DETAIL_COL)
    )


#: Raw values that Polars can format as a date (within about year +-260,000), in us and days.
_FORMAT_US = 8_000_000_000_000_000_000
_FORMAT_DAYS = _FORMAT_US // _US_PER_DAY


def _temporal_text(expr: pl.Expr, dtype: pl.Datetime | pl.Date) -> pl.Expr:
    """A date or time as text, the same whichever engine read it: milliseconds as microseconds
    (DuckDB reads them so), time zones as UTC (DuckDB does not keep the name), and a value too
    far out to be a date (Polars panics formatting it) as its raw number."""
    raw = expr.to_physical()
    if dtype == pl.Date:
        ok = raw.abs() <= _FORMAT_DAYS
        text = pl.when(ok).then(expr).cast(pl.String)
        return pl.when(ok).then(text).otherwise(pl.format("{} days since 1970-01-01", raw))
    assert isinstance(dtype, pl.Datetime)
    unit = dtype.time_unit or "us"
    mul, div = _UNIT_PER_US[unit]
    ok = raw.abs() <= _FORMAT_US * mul // div
    kept = pl.when(ok).then(expr)
    if dtype.time_zone is not None:
        kept = kept.dt.convert_time_zone("UTC")
    text = (kept.dt.cast_time_unit("us") if unit == "ms" else kept).cast(pl.String)
    return pl.when(ok).then(text).otherwise(pl.format(f"{{}} {unit} since 1970-01-01", raw))


def _raw_text(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """The raw value as short text for the rejection detail."""
    if isinstance(dtype, pl.Datetime | pl.Date):
        return _temporal_text(expr, dtype)
    try:
        text = to_text(expr, dtype, nested_ok=True).value
    except SchemaError:  # pragma: no cover - every convertible dtype has a text form
        return pl.lit(None, dtype=pl.String)
    return text.str.slice(0, 200)


__all__ = [
    "ALWAYS_REQUIRED",
    "CANONICAL_SCHEMA",
    "COLUMNS",
    "DEFAULT_AGENT",
    "DETAIL_COL",
    "HANDOFF_PREFIX",
    "LLM_ACTION",
    "OPTIONAL",
    "MAX_STEP_COST_USD",
    "MAX_STEP_LATENCY_MS",
    "MAX_STEP_TOKENS",
    "REASON_COL",
    "REJECT_REASONS",
    "REQUIRED",
    "STATUS_ALIASES",
    "STATUS_SPELLINGS",
    "STATUS_VALUES",
    "TS_DTYPE",
    "Conversion",
    "STEP_COLUMNS",
    "check_required",
    "repeat_reason",
    "repeated_rows",
    "conform",
    "convert_column",
    "empty_events",
    "epoch_to_ts",
    "is_blank",
    "json_text",
    "normalize_status",
    "to_bool",
    "to_float",
    "to_int",
    "to_text",
    "to_ts",
    "validate_events",
]
