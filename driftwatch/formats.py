"""Adapters from the log formats users have to the canonical event table.

Each adapter takes a raw frame (LazyFrame) and its schema and returns a LazyFrame whose
columns carry canonical names (raw dtypes; :func:`driftwatch.schema.conform` casts them
afterwards). Span formats also tag spans that are not agent steps (``not_a_step``).

Formats
-------
``canonical``
    Columns already named like CONTRACT section 1 (``run_id``, ``step``, ``ts``, ``action``, ...).
``otel``
    OpenTelemetry GenAI spans flattened to columns: ``trace_id``, ``span_id`` (or a ``context``
    struct {trace_id, span_id}), ``parent_span_id``,
    ``name``, ``start_time_unix_nano`` (or ``start_time``), ``end_time_unix_nano`` (or ``end_time``),
    ``status_code``, ``status_message`` and ``attributes.gen_ai.*`` / ``attributes.error.type``.
``openinference``
    Arize Phoenix / OpenInference span dataframes: ``context.trace_id``, ``context.span_id``,
    ``parent_id``, ``name``, ``span_kind``, ``start_time``, ``end_time``, ``status_code``,
    ``status_message`` and ``attributes.*`` (``tool.name``, ``llm.token_count.*``, ``llm.cost.*``,
    ``input.value``, ``output.value``, ``agent.name``, ``llm.model_name``).

A ``column_map={"source column": "canonical column"}`` renames columns for the canonical
format and overrides an adapter's choice for the span formats.

Examples
--------
>>> import polars as pl
>>> from driftwatch.formats import detect_format
>>> detect_format(["trace_id", "span_id", "name", "attributes.gen_ai.operation.name"])
'otel'
>>> detect_format(["context.trace_id", "context.span_id", "span_kind"])
'openinference'
>>> detect_format(["run_id", "step", "action"])
'canonical'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.schema import (
    CANONICAL_SCHEMA,
    DETAIL_COL,
    HANDOFF_PREFIX,
    LLM_ACTION,
    REASON_COL,
    check_required,
    convert_column,
    epoch_to_ts,
    json_text,
    to_float,
    to_text,
    to_ts,
)

#: Formats ``read_logs(format=...)`` accepts.
FORMATS: tuple[str, ...] = ("auto", "canonical", "otel", "openinference")

#: Prefix of driftwatch's internal columns (kept through adapters untouched).
INTERNAL_PREFIX = "__dw_"

# --- OpenTelemetry GenAI ------------------------------------------------------------------

#: ``gen_ai.operation.name`` values that are LLM calls (action ``llm``).
OTEL_LLM_OPS: tuple[str, ...] = ("chat", "text_completion", "generate_content")
#: Operations that wrap steps rather than being one (``not_a_step``); ``invoke_agent`` counts
#: as a wrapper only when no agent is above it (the run's root agent).
OTEL_WRAPPER_OPS: tuple[str, ...] = ("create_agent", "invoke_workflow")
OTEL_KNOWN_OPS: tuple[str, ...] = (
    *OTEL_LLM_OPS, *OTEL_WRAPPER_OPS, "execute_tool", "invoke_agent", "embeddings", "retrieval",
    "plan", "create_memory", "search_memory", "update_memory", "upsert_memory", "delete_memory",
    "create_memory_store", "delete_memory_store",
)

# (flattened columns first; a ``context`` struct {trace_id, span_id} is read as ``context.*``)
_OTEL_TRACE = ("trace_id", "traceId", "TraceId", "context.trace_id", "context.traceId")
_OTEL_SPAN = ("span_id", "spanId", "SpanId", "context.span_id", "context.spanId")
_OTEL_PARENT = ("parent_span_id", "parentSpanId", "ParentSpanId", "parent_id", "context.parent_span_id",
                "context.parentSpanId", "context.parent_id")
#: Start-time columns only OTel exports have (OpenInference's is ``start_time``).
_OTEL_NANO_START = ("start_time_unix_nano", "startTimeUnixNano")
_OTEL_NAME = ("name", "span_name", "SpanName")
_OTEL_START = ("start_time_unix_nano", "startTimeUnixNano", "start_time", "Timestamp")
_OTEL_END = ("end_time_unix_nano", "endTimeUnixNano", "end_time")
_OTEL_STATUS = ("status_code", "status.code", "statusCode", "StatusCode")
_OTEL_STATUS_MSG = ("status_message", "status.message", "statusMessage", "StatusMessage")

# --- OpenInference -------------------------------------------------------------------------

#: ``span_kind`` values that are LLM calls.
OI_LLM_KINDS: tuple[str, ...] = ("LLM",)
#: Span kinds that wrap steps (``not_a_step``); ``AGENT`` only when no agent is above it.
OI_WRAPPER_KINDS: tuple[str, ...] = ("CHAIN", "UNKNOWN", "PROMPT")

_OI_TRACE = ("context.trace_id",)
_OI_SPAN = ("context.span_id",)
_OI_PARENT = ("parent_id", "context.parent_id")
_OI_KIND = ("span_kind", "attributes.openinference.span.kind")

#: Levels of span ancestry searched for the agent a span belongs to (pointer doubling: 2**4).
_AGENT_DOUBLING_STEPS = 4


@dataclass(frozen=True)
class Pushdown:
    """Raw columns that ``since`` / ``until`` / ``agents`` filters can be pushed to.

    ``ts_kind`` is ``"datetime"`` (a Parquet timestamp column) or ``"epoch_ns"`` (integer
    nanoseconds, OTel); ``None`` when the raw time column cannot be compared directly (text,
    epochs of unknown unit): the filter is then applied after conversion.
    """

    ts_column: str | None = None
    ts_kind: str | None = None
    agent_column: str | None = None


def _find(columns: Sequence[str] | Mapping[str, object], names: Sequence[str]) -> str | None:
    for n in names:
        if n in columns:
            return n
    return None


def _attr(columns: Sequence[str] | Mapping[str, object], key: str) -> str | None:
    return _find(columns, (f"attributes.{key}", key))


# --- nested attribute columns ----------------------------------------------------------------

#: Attribute names the span adapters read; looked up in map, key/value-list and JSON-text
#: attribute columns (whose keys are not in the schema). Struct attributes give every field.
SPAN_ATTRIBUTE_KEYS: tuple[str, ...] = (
    "gen_ai.operation.name", "gen_ai.tool.name", "gen_ai.agent.name", "gen_ai.agent.version", "error.type",
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
    "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.completion_tokens", "gen_ai.usage.cost", "gen_ai.response.model", "gen_ai.request.model",
    "openinference.span.kind", "agent.name", "agent.version", "tool.name", "exception.type", "input.value",
    "output.value", "llm.token_count.prompt", "llm.token_count.completion", "llm.cost.total", "llm.cost.prompt",
    "llm.cost.completion", "llm.model_name", "session.id",
)
#: Columns whose nested fields are read as dotted columns (``attributes`` -> ``attributes.<name>``,
#: ``status`` {code, message} -> ``status.code``, ``context`` -> ``context.trace_id``).
_NESTED_BASES = ("attributes", "status", "context")
#: Scalar fields of an OTLP ``AnyValue`` (key/value lists), in both JSON and proto spellings.
_ANY_VALUE_SCALARS = ("stringValue", "string_value", "intValue", "int_value", "doubleValue", "double_value",
                      "boolValue", "bool_value")


def _is_kv_list(dtype: pl.DataType) -> bool:
    if not isinstance(dtype, pl.List) or not isinstance(dtype.inner, pl.Struct):
        return False
    names = {f.name for f in dtype.inner.fields}
    return {"key", "value"} <= names


def _leaf(expr: pl.Expr, dtype: pl.DataType) -> tuple[pl.Expr, pl.DataType]:
    """A nested attribute value: scalars as they are, nested values as JSON text."""
    if isinstance(dtype, pl.List | pl.Array | pl.Struct | pl.Map):
        return json_text(expr), pl.String()
    return expr, dtype


def _struct_leaves(expr: pl.Expr, dtype: pl.Struct, prefix: str) -> list[tuple[str, pl.Expr, pl.DataType]]:
    out: list[tuple[str, pl.Expr, pl.DataType]] = []
    for fld in dtype.fields:
        e = expr.struct.field(fld.name)
        name = f"{prefix}.{fld.name}"
        if isinstance(fld.dtype, pl.Struct):
            out += _struct_leaves(e, fld.dtype, name)
        else:
            out.append((name, *_leaf(e, fld.dtype)))
    return out


def _kv_value(value: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """An OTLP ``AnyValue`` struct (or a plain value) as text: the scalar that is set, else JSON."""
    if not isinstance(dtype, pl.Struct):
        return _leaf(value, dtype)[0].cast(pl.String)
    fields = {f.name: f.dtype for f in dtype.fields}
    scalars = [value.struct.field(n).cast(pl.String) for n in _ANY_VALUE_SCALARS if n in fields
               and not isinstance(fields[n], pl.List | pl.Array | pl.Struct | pl.Map)]
    return pl.coalesce([*scalars, json_text(value)])


def nested_columns(
    schema: Mapping[str, pl.DataType], column_map: Mapping[str, str] | None = None, *, where: str = "input"
) -> dict[str, tuple[pl.Expr, pl.DataType]]:
    """Dotted columns read out of nested span columns: name -> (expression, dtype).

    ``attributes`` / ``status`` / ``context`` structs (dotted field names or nested structs) give
    one column per leaf field; an ``attributes`` map<string, ...>, OTLP key/value list
    (``[{key, value: {stringValue | intValue | ...}}]``) or JSON text gives the attributes the
    adapters read (:data:`SPAN_ATTRIBUTE_KEYS`) and the ``attributes.*`` sources of
    ``column_map``. Columns already in ``schema`` (flattened ones) win. An ``attributes`` column
    of another shape is a :class:`~driftwatch.errors.SchemaError` rather than silently ignored.
    """
    out: dict[str, tuple[pl.Expr, pl.DataType]] = {}
    for base in _NESTED_BASES:
        dtype = schema.get(base)
        if dtype is None or dtype == pl.Null:
            continue
        if isinstance(dtype, pl.Struct):
            for name, e, d in _struct_leaves(pl.col(base), dtype, base):
                out.setdefault(name, (e, d))
            continue
        if base != "attributes":
            continue
        keys = _attr_keys(column_map)
        if isinstance(dtype, pl.Map) and dtype.key == pl.String:
            for k in keys:  # a struct value is an OTLP AnyValue, read as in key/value lists
                got = pl.col(base).map.get(k)
                out[f"{base}.{k}"] = ((_kv_value(got, dtype.value), pl.String()) if isinstance(dtype.value, pl.Struct)
                                      else _leaf(got, dtype.value))
        elif _is_kv_list(dtype):
            assert isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)
            vdtype = {f.name: f.dtype for f in dtype.inner.fields}["value"]
            el = pl.element()
            for k in keys:
                hit = el.filter(el.struct.field("key") == k).struct.field("value")
                out[f"{base}.{k}"] = (pl.col(base).list.eval(_kv_value(hit, vdtype)).list.first(), pl.String())
        elif dtype == pl.String:
            # a dotted key ('{"gen_ai.usage.input_tokens": 100}') or the same nested
            # ('{"gen_ai": {"usage": {"input_tokens": 100}}}', as Phoenix stores them); every
            # key is read from one parse of the text (JSON_LOOKUPS, added by json_prelude)
            paths = _json_paths(keys)
            for k in keys:
                if k in paths:
                    i = paths[k]
                    looked = pl.col(JSON_LOOKUPS).struct.field("v").list
                    out[f"{base}.{k}"] = (pl.coalesce(looked.get(2 * i), looked.get(2 * i + 1)), pl.String())
                else:  # (a key with an empty step, 'a..b', which DuckDB's paths cannot spell)
                    q = k.replace('"', '\\"')
                    nested = "$" + "".join(f'["{part}"]' for part in q.split("."))
                    text = pl.col(base)
                    out[f"{base}.{k}"] = (pl.coalesce(text.str.json_path_match(f'$["{q}"]'),
                                                      text.str.json_path_match(nested)), pl.String())
        else:
            raise SchemaError(
                f"{where}: column 'attributes' has type {dtype}; span attributes are read flattened to columns "
                "(attributes.<name>), or from a struct, a map<string, ...>, an OTLP key/value list or JSON text. "
                "Flatten the attributes to columns (e.g. polars: df.unnest('attributes') with the fields renamed "
                "to 'attributes.<name>')"
            )
    return {name: v for name, v in out.items() if name not in schema}


#: The hidden column :func:`json_prelude` adds: JSON-text attributes parsed once per row, a
#: struct of ``v`` (the looked-up values, two per key: its dotted spelling, then its nested one)
#: and ``ok`` (whether the text is strict JSON, as ``str.json_path_match`` parses it).
JSON_LOOKUPS = "__driftwatch_json_lookups"
#: The column :func:`expand_nested` keeps from :data:`JSON_LOOKUPS`: its ``ok`` flag.
JSON_OK = "__driftwatch_json_ok"
#: What DuckDB's JSON reader accepts and ``str.json_path_match`` (serde_json) does not, as a
#: superset of the texts holding it: NaN / Infinity literals, trailing commas, numbers out of
#: the float range (a 3-digit exponent, 200 integer digits); nesting 128 deep is counted apart.
_LENIENT_JSON = r"(?i)(^|[:\[,])[\t\n\r ]*[+-]?(nan|inf)|,[\t\n\r ]*[\]}]"


def _json_paths(keys: Sequence[str]) -> dict[str, int]:
    """Each key's position among the JSON lookups (keys a quoted JSON path can spell)."""
    fine = [k for k in keys if all(k.split("."))]  # (DuckDB's paths have no empty step: 'a..b')
    return {k: i for i, k in enumerate(fine)}


def _quoted(name: str) -> str:
    """``name`` as one quoted step of a DuckDB JSON path (its quotes and backslashes escaped)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def json_prelude(schema: Mapping[str, pl.DataType], column_map: Mapping[str, str] | None = None) -> list[pl.Expr]:
    """The columns :func:`nested_columns`' expressions read, to add before them: for JSON-text
    ``attributes``, :data:`JSON_LOOKUPS` (empty otherwise).

    Each row's text is parsed once (DuckDB's ``json_extract_string`` with a list of paths) rather
    than once per key and spelling (``str.json_path_match``, sixty parses a row); text that is
    not JSON reads null (the span adapter rejects it). The same parse says whether the text is
    JSON (``ok``): the few texts with what DuckDB accepts beyond the JSON grammar (NaN, Infinity,
    trailing commas) are checked by ``str.json_path_match("$")``; deep nesting and numbers beyond
    the float range are JSON (DuckDB reads them; ``json_path_match`` gives up on them).
    """
    if schema.get("attributes") != pl.String:
        return []
    paths: list[str] = []
    for k in _json_paths(_attr_keys(column_map)):
        paths += ["$." + _quoted(k), "$" + "".join("." + _quoted(part) for part in k.split("."))]
    if not paths:
        return []
    dtype = pl.Struct({"v": pl.List(pl.String), "ok": pl.Boolean})

    def lookup(text: pl.Series) -> pl.Series:
        import duckdb

        con = duckdb.connect()
        try:
            # (Arrow string views: handed over without copying the text)
            con.register("attrs", text.to_frame("a").to_arrow(compat_level=pl.CompatLevel.newest()))
            got = con.sql(
                "select case when json_valid(a) then json_extract_string(a, ?::VARCHAR[]) end as v, "
                "json_valid(a) as ok, json_valid(a) and regexp_matches(a, ?) as lenient from attrs",
                params=[paths, _LENIENT_JSON],
            ).to_arrow_table()
        finally:
            con.close()
        out = pl.from_arrow(got)
        assert isinstance(out, pl.DataFrame)
        lenient = out.get_column("lenient").fill_null(False)
        ok = out.get_column("ok")
        if lenient.any():  # (rare: checked the strict way, row by row as json_path_match reads)
            strict = text.filter(lenient).str.json_path_match("$").is_not_null()
            ok = ok.scatter(lenient.arg_true(), strict)
        return pl.DataFrame({"v": out.get_column("v").cast(pl.List(pl.String)), "ok": ok}).to_struct(text.name)

    return [pl.col("attributes").map_batches(lookup, return_dtype=dtype).alias(JSON_LOOKUPS)]


def _attr_keys(column_map: Mapping[str, str] | None) -> list[str]:
    """The attribute names the span adapters look up, with the ``attributes.*`` sources of ``column_map``."""
    return list(dict.fromkeys([*SPAN_ATTRIBUTE_KEYS, *[src[len("attributes."):] for src in (column_map or {})
                                                       if src.startswith("attributes.")]]))


def span_sources(
    schema: Mapping[str, pl.DataType], fmt: str, column_map: Mapping[str, str] | None = None, *, where: str = "input"
) -> dict[str, tuple[str, bool]]:
    """Which column each input of a span adapter reads in a file of this ``schema``: role ->
    (column, whether it is a column of the file rather than a field of a nested column).

    Files can share one (union-by-name) scan only when no role reads different columns in them:
    a merged scan reads the first spelling present in any file (``trace_id`` over ``traceId``) and
    a flattened column over a struct field of the same name, so the other file's values would be
    null. Roles a file does not have (``None``) do not conflict. Canonical input: ``{}``.
    """
    if fmt not in ("otel", "openinference"):
        return {}
    try:
        nested = nested_columns(schema, column_map, where=where)
    except SchemaError:  # an attributes column of an unreadable shape: the adapter says so
        nested = {}
    cols = {**schema, **nested}
    if fmt == "otel":
        roles: dict[str, Sequence[str]] = {
            "trace": _OTEL_TRACE, "span": _OTEL_SPAN, "parent": _OTEL_PARENT, "name": _OTEL_NAME,
            "start": _OTEL_START, "end": _OTEL_END, "status": _OTEL_STATUS, "status_message": _OTEL_STATUS_MSG}
    else:
        roles = {"trace": _OI_TRACE, "span": _OI_SPAN, "parent": _OI_PARENT, "kind": _OI_KIND, "name": ("name",),
                 "start": ("start_time",), "end": ("end_time",), "status": ("status_code",),
                 "status_message": ("status_message",)}
    roles = {**roles, **{f"attributes.{k}": (f"attributes.{k}", k) for k in _attr_keys(column_map)},
             **{f"map:{src}": (src,) for src in (column_map or {})}}
    out: dict[str, tuple[str, bool]] = {}
    for role, names in roles.items():
        col = _find(cols, names)
        if col is not None:
            out[role] = (col, col in schema)
    return out


def expand_nested(
    lf: pl.LazyFrame, schema: Mapping[str, pl.DataType], column_map: Mapping[str, str] | None = None,
    *, where: str = "input",
) -> tuple[pl.LazyFrame, dict[str, pl.DataType]]:
    """``lf`` with the :func:`nested_columns` added, and its schema (with :data:`JSON_OK` for
    JSON-text attributes: whether each row's text is JSON)."""
    extra = nested_columns(schema, column_map, where=where)
    if not extra:
        return lf, dict(schema)
    prelude = json_prelude(schema, column_map)
    lf = lf.with_columns(prelude) if prelude else lf
    ok = [pl.col(JSON_LOOKUPS).struct.field("ok").alias(JSON_OK)] if prelude else []
    lf = lf.with_columns([e.alias(name) for name, (e, _) in extra.items()] + ok)
    lf = lf.drop(JSON_LOOKUPS) if prelude else lf
    return lf, {**schema, **{name: d for name, (_, d) in extra.items()}, **({JSON_OK: pl.Boolean()} if prelude else {})}


def check_column_map(column_map: Mapping[str, str] | None) -> dict[str, str]:
    """Validate ``column_map`` (source column -> canonical column) and return it as a dict."""
    if column_map is None:
        return {}
    if not isinstance(column_map, Mapping):
        raise InvalidParameterError(
            f"column_map must be a mapping {{'source column': 'canonical column'}}, got {type(column_map).__name__}"
        )
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for src, dst in column_map.items():
        if not isinstance(src, str) or not isinstance(dst, str):
            raise InvalidParameterError(f"column_map keys and values must be column names (str), got {src!r}: {dst!r}")
        if dst not in CANONICAL_SCHEMA:
            raise InvalidParameterError(
                f"column_map maps {src!r} to {dst!r}, which is not a canonical column; expected one of "
                f"{list(CANONICAL_SCHEMA)}"
            )
        if dst in seen:
            raise InvalidParameterError(f"column_map maps both {seen[dst]!r} and {src!r} to {dst!r}")
        seen[dst] = src
        out[src] = dst
    return out


def detect_format(
    columns: Sequence[str], *, column_map: Mapping[str, str] | None = None, lookups: Sequence[str] = ()
) -> str | None:
    """Guess the format of a file from its column names (``None`` when nothing fits).

    Canonical wins when ``run_id`` and ``action`` are present (after ``column_map``) with
    ``step`` or ``ts``, or in a file that is no span export. Span ids in ``context``
    (``context.trace_id`` / ``context.span_id``, flattened or a struct) are written by both span
    formats, so the columns only one of them has decide: OpenInference's span kind (``span_kind``
    or ``attributes.openinference.span.kind``) and ``start_time`` against OTel's
    ``start_time_unix_nano`` and ``gen_ai.*`` attributes. Such a file is OTel when OpenInference
    cannot read it (no span kind or no ``start_time``) and it has an OTel column, else
    OpenInference, unless it has all four kinds of columns: that is a
    :class:`~driftwatch.errors.SchemaError` asking for ``format=``. Other files are OpenInference
    with an ``attributes.openinference.span.kind`` column, OTel with a trace id column and
    ``gen_ai.*`` attributes or ``start_time_unix_nano``. A span export whose ``column_map`` names
    its run and action columns keeps its adapter (which orders steps by start time). A file with
    some canonical columns but not all is reported as canonical so the error names what is missing.

    ``lookups`` are attribute names read out of map, key/value-list or JSON-text attributes, whose
    keys are not in the schema (the data may not hold them): they count as a span kind or as
    ``gen_ai.*`` attributes, but never against another format's columns.
    """
    own = set(columns)
    cols = own | set(lookups)
    mapped = cols | set((column_map or {}).values())
    span: str | None = None
    ambiguous = False
    if set(_OI_TRACE) & cols and set(_OI_SPAN) & cols:
        oi_ok = bool(set(_OI_KIND) & cols) and "start_time" in cols
        nano = set(_OTEL_NANO_START) & own
        gen_ai = any("gen_ai." in c for c in own)
        if not oi_ok and (nano or gen_ai or any("gen_ai." in c for c in cols)):
            span = "otel"
        else:
            span = "openinference"
            ambiguous = bool(nano) and gen_ai
    elif "attributes.openinference.span.kind" in own:
        span = "openinference"
    elif set(_OTEL_TRACE) & cols and (any("gen_ai." in c for c in cols) or set(_OTEL_NANO_START) & cols):
        span = "otel"
    if {"run_id", "action"} <= mapped and (span is None or {"step", "ts"} & mapped):
        return "canonical"
    if ambiguous:
        raise SchemaError(
            "cannot tell the span format: span ids in context.trace_id / context.span_id with both "
            "OpenInference columns (a span kind and start_time) and OTel ones (start_time_unix_nano and "
            "gen_ai.* attributes); pass format='openinference' or format='otel' (CLI: --format)"
        )
    if span is not None:
        return span
    if mapped & {"run_id", "action", "step"}:
        return "canonical"
    return None


def format_hint(columns: Sequence[str]) -> str:
    """What each format expects, for error messages."""
    return (
        "expected canonical columns (run_id, action, and step or ts), OTel GenAI span columns "
        "(trace_id, span_id, start_time_unix_nano, attributes.gen_ai.*) or OpenInference columns "
        f"(context.trace_id, context.span_id, span_kind); found {list(columns)}. "
        "Pass format=... or column_map={'your column': 'run_id', ...} (CLI: --format, --map SRC=COLUMN)"
    )


def pushdown_columns(fmt: str, schema: Mapping[str, pl.DataType], column_map: Mapping[str, str]) -> Pushdown:
    """Which raw columns a time / agent filter can be pushed to for this format and schema."""
    inverse = {dst: src for src, dst in column_map.items() if src in schema}
    if "ts" in inverse:
        ts_col: str | None = inverse["ts"]
    elif fmt == "canonical":
        ts_col = "ts" if "ts" in schema else None
    elif fmt == "otel":
        ts_col = _find(schema, _OTEL_START)
    else:
        ts_col = _find(schema, ("start_time",))
    ts_kind = None
    if ts_col is not None:
        dtype = schema[ts_col]
        if isinstance(dtype, pl.Datetime):
            ts_kind = "datetime"
        elif dtype.is_integer() and fmt == "otel" and "unix_nano" in ts_col.lower() and "ts" not in inverse:
            ts_kind = "epoch_ns"
    agent_col = None
    if "agent" in inverse:
        agent_col = inverse["agent"]
    elif fmt == "canonical" and "agent" in schema:
        agent_col = "agent"
    if agent_col is not None and schema[agent_col] != pl.String:
        agent_col = None
    return Pushdown(ts_col if ts_kind else None, ts_kind, agent_col)


def adapt(
    lf: pl.LazyFrame,
    schema: Mapping[str, pl.DataType],
    fmt: str,
    *,
    column_map: Mapping[str, str] | None = None,
    where: str = "input",
    tree: pl.LazyFrame | None = None,
    context: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """Rename / derive canonical columns from a raw frame of format ``fmt``.

    Parameters
    ----------
    lf : polars.LazyFrame
        The raw frame (as scanned).
    schema : mapping of str to polars.DataType
        Its schema.
    fmt : {"canonical", "otel", "openinference"}
        The format of the frame.
    column_map : mapping of str to str, optional
        Source column -> canonical column; overrides the adapter.
    where : str, default="input"
        How to name the input in error messages.
    tree : polars.LazyFrame, optional
        Span formats: the spans of every file of the read (:func:`span_tree` of each, concatenated),
        so that a span whose parent is in another file still finds its agent. Default: ``lf``'s own.
    context : polars.DataFrame, optional
        Span formats: :func:`span_context` of that tree, computed once for several plans over the
        same spans (``tree`` is then not used).

    Returns
    -------
    polars.LazyFrame
        Canonical column names (raw dtypes), the internal ``__dw_*`` columns of ``lf`` and, for
        span formats, :data:`~driftwatch.schema.REASON_COL` / ``DETAIL_COL``.

    Examples
    --------
    >>> import polars as pl
    >>> raw = pl.LazyFrame({"session": ["s1"], "t": ["2026-11-01T00:00:00Z"], "tool": ["search"]})
    >>> adapt(raw, raw.collect_schema(), "canonical",
    ...       column_map={"session": "run_id", "t": "ts", "tool": "action"}).collect_schema().names()
    ['run_id', 'ts', 'action']
    """
    cmap = check_column_map(column_map)
    if fmt == "canonical":
        return _adapt_canonical(lf, schema, cmap, where)
    if fmt in ("otel", "openinference"):
        lf, full = expand_nested(lf, schema, cmap, where=where)
        return _adapt_spans(lf, full, cmap, where, _span_fields(full, fmt, where), tree, context)
    raise InvalidParameterError(f"format must be one of {list(FORMATS)}, got {fmt!r}")


def _span_fields(schema: Mapping[str, pl.DataType], fmt: str, where: str) -> _SpanFields:
    return _otel_fields(schema, where) if fmt == "otel" else _oi_fields(schema, where)


def span_tree(
    lf: pl.LazyFrame,
    schema: Mapping[str, pl.DataType],
    fmt: str,
    *,
    column_map: Mapping[str, str] | None = None,
    where: str = "input",
) -> pl.LazyFrame:
    """The span hierarchy of a raw span frame: trace, span, parent and the agent each span names
    (internal ``__dw_*`` text columns). Concatenate it over files and pass it to :func:`adapt` as
    ``tree`` to build hierarchies across files."""
    cmap = check_column_map(column_map)
    lf, full = expand_nested(lf, schema, cmap, where=where)
    f = _span_fields(full, fmt, where)
    return lf.select(f.trace.alias(_T), f.span.alias(_S), f.parent.alias(_P), f.own_agent.alias(_OWN))


def _internal(schema: Mapping[str, pl.DataType]) -> list[pl.Expr]:
    return [pl.col(c) for c in schema if c.startswith(INTERNAL_PREFIX)]


def check_canonical(schema: Mapping[str, pl.DataType], cmap: Mapping[str, str], where: str) -> dict[str, str]:
    """Canonical column -> the column of ``schema`` read as it (after ``cmap``); raises
    :class:`SchemaError` naming ``where`` unless ``run_id``, ``action`` and ``step`` or ``ts``
    are among them. Applied to each file (a file without ``run_id`` next to one with it is
    still an error) and to each merged scan."""
    sources: dict[str, str] = {}
    for col in CANONICAL_SCHEMA:
        if col in schema and col not in cmap:
            sources[col] = col
    for src, dst in cmap.items():
        if src in schema:  # a source missing from this file leaves the canonical column (if any) in place
            sources[dst] = src
    check_required(list(sources), where=where + _mapped_hint(schema, cmap),
                   found=[c for c in schema if not c.startswith(INTERNAL_PREFIX)])
    return sources


def _adapt_canonical(
    lf: pl.LazyFrame, schema: Mapping[str, pl.DataType], cmap: dict[str, str], where: str
) -> pl.LazyFrame:
    sources = check_canonical(schema, cmap, where)
    exprs = [pl.col(src).alias(dst) for dst, src in sources.items()]
    return lf.select(exprs + _internal(schema))


def name_mapped_sources(exc: SchemaError, schema: Mapping[str, pl.DataType], cmap: Mapping[str, str]) -> SchemaError:
    """``exc`` with each canonical column that ``cmap`` reads from another column of ``schema``
    named by that column: "column 'tags' (read as 'run_id') has type List(String)", since the
    file has no (usable) column of the canonical name. ``exc`` itself when nothing is renamed."""
    msg = str(exc)
    for src, dst in cmap.items():
        if src in schema and src != dst:
            msg = msg.replace(f"column {dst!r} has type", f"column {src!r} (read as {dst!r}) has type")
    return exc if msg == str(exc) else SchemaError(msg)


def _mapped_hint(schema: Mapping[str, pl.DataType], cmap: dict[str, str]) -> str:
    hints = []
    missing = [src for src in cmap if src not in schema]
    if missing:
        hints.append(f"column_map source(s) {missing} not in this file")
    mapped_to = set(cmap.values())
    moved = [src for src, dst in cmap.items() if src in schema and src in ("run_id", "action", "step", "ts") and dst != src
             and src not in mapped_to]
    if moved:  # {"run_id": "parent_run_id"} takes the column away from run_id
        pairs = ", ".join(f"{src!r} is read as {cmap[src]!r}" for src in moved)
        hints.append(f"column_map moves canonical column(s) away: {pairs}, so no column is read as "
                     f"{moved[0]!r}; map another column to it")
    return "".join(f" ({h})" for h in hints)


# --------------------------------------------------------------------------------------------
# Span formats
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SpanFields:
    """Canonical expressions of one span format (before column_map overrides)."""

    trace: pl.Expr
    span: pl.Expr
    parent: pl.Expr
    name: pl.Expr
    kind: pl.Expr  # "llm" | "tool" | "agent" | "wrapper" | "other" (lower-case classification)
    tool_name: pl.Expr
    own_agent: pl.Expr  # the agent this span establishes for itself and its children
    handoff_target: pl.Expr
    kind_text: pl.Expr  # for the not_a_step detail
    columns: dict[str, pl.Expr]  # canonical columns other than run_id / action / agent
    start_ns: pl.Expr  # start time in integer ns (full-precision order), null when unknown


def _text(schema: Mapping[str, pl.DataType], col: str | None, where: str) -> pl.Expr:
    if col is None:
        return pl.lit(None, dtype=pl.String)
    return to_text(pl.col(col), schema[col], where=where, col=col).value


def _present(text: pl.Expr) -> pl.Expr:
    """Text, null when empty or blank."""
    return pl.when(text.str.strip_chars() != "").then(text)


def _id(schema: Mapping[str, pl.DataType], col: str | None, where: str) -> pl.Expr:
    """A span / trace id as text; empty strings and all-zero ids (OTLP 'no parent') are null.
    Binary ids are always hex (never read as text, even when their bytes happen to be)."""
    if col is not None and schema[col] == pl.Binary:
        e = pl.col(col).bin.encode("hex")
    elif col is None:
        e = pl.lit(None, dtype=pl.String)
    else:  # a list or struct id is an error (as a canonical run_id of that type), not JSON text
        e = to_text(pl.col(col), schema[col], where=where, col=col, nested_ok=False).value.str.strip_chars()
    return pl.when((e == "") | e.str.contains(r"^0+$")).then(None).otherwise(e)


def _read_as(schema: Mapping[str, pl.DataType], col: str, dst: str, where: str) -> None:
    """Raise the :class:`SchemaError` of a column ``col`` whose type canonical column ``dst``
    cannot be read from, naming the file's column: "column 'attributes.gen_ai.usage.input_tokens'
    (read as 'input_tokens') has type List(Int64)" (not the canonical name, which the file lacks)."""
    try:
        convert_column(pl.col(col), dst, schema[col], where=where)
    except SchemaError as exc:
        if col == dst:
            raise
        raise SchemaError(str(exc).replace(f"column {dst!r} has type", f"column {col!r} (read as {dst!r}) has type",
                                           1)) from None


def _coalesce(schema: Mapping[str, pl.DataType], cols: Sequence[str | None], dst: str, where: str) -> pl.Expr | None:
    """The first non-null of ``cols`` (those present), read as canonical column ``dst`` (a column of
    a type it cannot be read from is an error naming that column)."""
    present = [c for c in cols if c is not None]
    for c in present:
        _read_as(schema, c, dst, where)
    if not present:
        return None
    if len(present) == 1:
        return pl.col(present[0])
    dtypes = {schema[c] for c in present}
    if len(dtypes) == 1 or all(d.is_numeric() for d in dtypes):
        return pl.coalesce([pl.col(c) for c in present])
    return pl.coalesce([pl.col(c).cast(pl.String) for c in present])


def _is_unix_nano(col: str) -> bool:
    return "unixnano" in col.lower().replace("_", "")


def _epoch_int(schema: Mapping[str, pl.DataType], col: str | None) -> pl.Expr | None:
    """An epoch column as Int64 (its own unit): integers, and numeric text in ``*UnixNano``
    columns (OTLP JSON writes fixed64 as decimal strings); ``None`` for other columns."""
    if col is None:
        return None
    dtype = schema[col]
    if dtype.is_integer():
        return pl.col(col).cast(pl.Int64, strict=False)
    if (dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)) and _is_unix_nano(col):
        text = pl.col(col).cast(pl.String).str.strip_chars()
        return pl.when(text.str.contains(r"^-?\d{1,19}$")).then(text.cast(pl.Int64, strict=False))
    return None


def _diff_ms(epoch: pl.Expr, diff: pl.Expr) -> pl.Expr:
    """An integer difference of epochs in milliseconds; the epochs' unit is told by the
    magnitude of ``epoch``, as :func:`driftwatch.schema.epoch_to_ts` does for ``ts``."""
    a = epoch.abs()
    d = diff.cast(pl.Float64)
    return pl.when(a < 1e11).then(d * 1e3).when(a < 1e14).then(d).when(a < 1e17).then(d / 1e3).otherwise(d / 1e6)


def _start_ns(schema: Mapping[str, pl.DataType], start: str) -> pl.Expr:
    """The start time in integer nanoseconds: orders spans at full precision, where ``ts`` keeps
    microseconds. ISO text: the time ``ts`` reads plus the fraction's digits past the microsecond
    (``...00.000000002Z``); null for other columns (dates, float epochs: ``ts`` orders them)."""
    dtype = schema[start]
    if isinstance(dtype, pl.Datetime):
        ns = pl.col(start).dt.epoch("ns")
        return pl.when(ns != 0).then(ns)
    i = _epoch_int(schema, start)
    if i is None and (dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)):
        text = pl.col(start).cast(pl.String)
        us = to_ts(text, pl.String(), col=start).value.dt.epoch("us")
        fraction = text.str.extract(r"\d{2}:\d{2}:\d{2}\.(\d+)", 1)
        below_us = fraction.str.pad_end(9, "0").str.slice(6, 3).cast(pl.Int64, strict=False).fill_null(0)
        return us * 1000 + below_us
    if i is None:
        return pl.lit(None, dtype=pl.Int64)
    a = i.abs()
    return (
        pl.when(i == 0).then(None)  # (unset)
        .when(a < 10**11).then(i * 1_000_000_000)
        .when(a < 10**14).then(i * 1_000_000)
        .when(a < 10**17).then(i * 1_000)
        .otherwise(i)
    )


def _start_ts(schema: Mapping[str, pl.DataType], start: str, where: str) -> pl.Expr:
    """The raw start column for ``ts``; numeric text epochs become ISO text (the epoch's UTC time),
    other text stays as it is (so that garbage is reported as ``bad_ts`` with its value). A column
    of a type no time is read from is a :class:`SchemaError` naming it (not ``ts``). A start of 0
    (the epoch), OTLP's unset time, is null: the span is rejected as ``null_ts``, not a 1970 step."""
    dtype = schema[start]
    to_ts(pl.col(start), dtype, where=where, col=start)
    i = _epoch_int(schema, start)
    if isinstance(dtype, pl.Datetime):
        return pl.when(pl.col(start).dt.epoch("ns") != 0).then(pl.col(start))
    if i is None:
        return pl.col(start)
    if dtype.is_integer():
        return pl.when(i == 0).then(None).otherwise(pl.col(start))
    iso = epoch_to_ts(i, pl.Int64()).dt.replace_time_zone(None).dt.to_string("%Y-%m-%dT%H:%M:%S%.6f")
    return pl.when(i == 0).then(None).otherwise(pl.coalesce(iso, pl.col(start).cast(pl.String)))


def _latency_ms(schema: Mapping[str, pl.DataType], start: str | None, end: str | None, where: str) -> pl.Expr | None:
    if start is None or end is None:
        return None
    # a start or end time of 0 (the epoch) is an unset one, as OTLP writes it: no latency (not
    # -56 years, and not 56 years read in the wrong unit)
    si, ei = _epoch_int(schema, start), _epoch_int(schema, end)
    if si is not None and ei is not None:  # exact: subtract integers, then scale from their unit
        return pl.when((ei != 0) & (si != 0)).then(_diff_ms(si, ei - si))
    if isinstance(schema[start], pl.Datetime) and isinstance(schema[end], pl.Datetime):
        s_ns, e_ns = pl.col(start).dt.epoch("ns"), pl.col(end).dt.epoch("ns")
        return pl.when((e_ns != 0) & (s_ns != 0)).then((e_ns - s_ns).cast(pl.Float64) / 1e6)
    s = to_ts(pl.col(start), schema[start], where=where, col=start).value
    e = to_ts(pl.col(end), schema[end], where=where, col=end).value
    return pl.when((e.dt.epoch("us") != 0) & (s.dt.epoch("us") != 0)).then(
        (e - s).dt.total_microseconds().cast(pl.Float64) / 1e3)


def _require(schema: Mapping[str, pl.DataType], fmt: str, what: dict[str, str | None], where: str) -> None:
    missing = [name for name, col in what.items() if col is None]
    if missing:
        raise SchemaError(
            f"{where}: {fmt} input is missing required column(s) {missing}; found {_found(schema)}"
        )


def _found(schema: Mapping[str, pl.DataType]) -> list[str]:
    """The input's own columns, for messages (not driftwatch's internal ones)."""
    return [c for c in schema if not c.startswith(INTERNAL_PREFIX)]


def _otel_fields(schema: Mapping[str, pl.DataType], where: str) -> _SpanFields:
    trace_c, span_c, parent_c = _find(schema, _OTEL_TRACE), _find(schema, _OTEL_SPAN), _find(schema, _OTEL_PARENT)
    name_c, start_c, end_c = _find(schema, _OTEL_NAME), _find(schema, _OTEL_START), _find(schema, _OTEL_END)
    op_c = _attr(schema, "gen_ai.operation.name")
    _require(schema, "OTel", {"trace_id": trace_c, "span_id": span_c, "start_time_unix_nano or start_time": start_c}, where)
    if op_c is None and name_c is None:
        raise SchemaError(
            f"{where}: OTel input needs attributes.gen_ai.operation.name or a span name to tell LLM calls "
            f"from tool calls; found {_found(schema)}"
        )
    name = _text(schema, name_c, where)
    name_op = name.str.extract(r"^\s*([A-Za-z_]+)", 1).str.to_lowercase()
    name_op = pl.when(name_op.is_in(OTEL_KNOWN_OPS)).then(name_op)
    op = _text(schema, op_c, where).str.strip_chars().str.to_lowercase()
    op = pl.coalesce(pl.when(op != "").then(op), name_op)
    # the name after a known operation ('invoke_agent billing' -> 'billing'; null for a span named
    # just 'invoke_agent', which names no agent), else the whole name
    after_op = pl.when(name_op.is_not_null()).then(
        _present(name.str.replace(r"^\s*[A-Za-z_]+", "").str.strip_chars())).otherwise(name)
    # a tool span without gen_ai.tool.name: the span name, without the operation in front of it
    # ('execute_tool search_kb', or 'search_kb'); a span named just 'execute_tool' names no tool
    from_name = name.str.strip_chars().str.replace(r"(?i)^execute_tool(\s+|$)", "")
    tool_name = pl.coalesce(_present(_text(schema, _attr(schema, "gen_ai.tool.name"), where)), _present(from_name))
    agent_attr = _text(schema, _attr(schema, "gen_ai.agent.name"), where)
    own = pl.coalesce(agent_attr, pl.when(name_op == "invoke_agent").then(after_op))
    kind = (
        pl.when(op.is_in(OTEL_LLM_OPS)).then(pl.lit("llm"))
        .when(op == "execute_tool").then(pl.lit("tool"))
        .when(op == "invoke_agent").then(pl.lit("agent"))
        .when(op.is_in(OTEL_WRAPPER_OPS) | op.is_null()).then(pl.lit("wrapper"))
        .otherwise(pl.lit("other"))
    )
    # status: OTLP codes 0 unset / 1 ok / 2 error, or their names; error.type marks an error too
    status_c = _find(schema, _OTEL_STATUS)
    err_c = _attr(schema, "error.type")
    if status_c is None:
        status = pl.lit("ok")
    elif schema[status_c].is_numeric():
        code = pl.col(status_c).cast(pl.Float64).fill_nan(None)  # (NaN: pandas' missing code, unset)
        status = pl.when(code == 2).then(pl.lit("error")).when(code.is_in([0.0, 1.0]) | code.is_null()).then(
            pl.lit("ok")).otherwise(pl.col(status_c).cast(pl.String))
    else:  # names (STATUS_CODE_ERROR, ERROR, ...) or the codes as text digits (after a CSV / JSON hop)
        raw = _text(schema, status_c, where)
        digits = raw.str.strip_chars()
        status = (pl.when(digits == "2").then(pl.lit("error")).when(digits.is_in(["0", "1"])).then(pl.lit("ok"))
                  .otherwise(pl.coalesce(raw, pl.lit("ok"))))
    err_type = _text(schema, err_c, where)
    status = pl.when(err_type.is_not_null()).then(pl.lit("error")).otherwise(status)
    status_msg = _text(schema, _find(schema, _OTEL_STATUS_MSG), where)
    is_error = status.str.to_lowercase().str.contains("error")
    cols: dict[str, pl.Expr] = {"ts": _start_ts(schema, start_c, where), "status": status,
                                "error_type": pl.coalesce(err_type, pl.when(is_error).then(status_msg))}
    llm_in = _text(schema, _attr(schema, "gen_ai.input.messages"), where)
    llm_out = _text(schema, _attr(schema, "gen_ai.output.messages"), where)
    tool_in = _text(schema, _attr(schema, "gen_ai.tool.call.arguments"), where)
    tool_out = _text(schema, _attr(schema, "gen_ai.tool.call.result"), where)
    cols["args"] = pl.when(kind == "llm").then(llm_in).when(kind == "tool").then(tool_in)
    cols["result"] = pl.when(kind == "llm").then(llm_out).when(kind == "tool").then(tool_out)
    tok_in = _coalesce(schema, [_attr(schema, "gen_ai.usage.input_tokens"), _attr(schema, "gen_ai.usage.prompt_tokens")],
                       "input_tokens", where)
    tok_out = _coalesce(schema, [_attr(schema, "gen_ai.usage.output_tokens"),
                                 _attr(schema, "gen_ai.usage.completion_tokens")], "output_tokens", where)
    cost = _coalesce(schema, [_attr(schema, "gen_ai.usage.cost")], "cost_usd", where)
    latency = _latency_ms(schema, start_c, end_c, where)
    version = _coalesce(schema, [_attr(schema, "gen_ai.agent.version"), _attr(schema, "gen_ai.response.model"),
                                 _attr(schema, "gen_ai.request.model")], "version", where)
    for key, e in (("input_tokens", tok_in), ("output_tokens", tok_out), ("cost_usd", cost),
                   ("latency_ms", latency), ("version", version)):
        if e is not None:
            cols[key] = e
    handoff = pl.coalesce(agent_attr, after_op)
    return _SpanFields(
        trace=_id(schema, trace_c, where), span=_id(schema, span_c, where), parent=_id(schema, parent_c, where),
        name=name, kind=kind, tool_name=tool_name, own_agent=own, handoff_target=handoff,
        kind_text=pl.coalesce(op, pl.lit("no gen_ai.operation.name")), columns=cols,
        start_ns=_start_ns(schema, start_c),
    )


def _oi_fields(schema: Mapping[str, pl.DataType], where: str) -> _SpanFields:
    trace_c, span_c, parent_c = _find(schema, _OI_TRACE), _find(schema, _OI_SPAN), _find(schema, _OI_PARENT)
    kind_c, start_c = _find(schema, _OI_KIND), _find(schema, ("start_time",))
    _require(schema, "OpenInference",
             {"context.trace_id": trace_c, "context.span_id": span_c, "span_kind": kind_c, "start_time": start_c},
             where)
    name = _text(schema, _find(schema, ("name",)), where)
    k = _text(schema, kind_c, where).str.strip_chars().str.to_uppercase()
    kind = (
        pl.when(k.is_in(OI_LLM_KINDS)).then(pl.lit("llm"))
        .when(k == "TOOL").then(pl.lit("tool"))
        .when(k == "AGENT").then(pl.lit("agent"))
        .when(k.is_in(OI_WRAPPER_KINDS) | k.is_null() | (k == "")).then(pl.lit("wrapper"))
        .otherwise(pl.lit("other"))
    )
    agent_attr = _text(schema, _attr(schema, "agent.name"), where)
    own = pl.coalesce(agent_attr, pl.when(k == "AGENT").then(name))
    status_raw = _text(schema, _find(schema, ("status_code",)), where)
    status = pl.coalesce(status_raw, pl.lit("ok"))
    status_msg = _text(schema, _find(schema, ("status_message",)), where)
    is_error = status.str.to_lowercase().str.contains("error")
    cols: dict[str, pl.Expr] = {
        "ts": _start_ts(schema, start_c, where),
        "status": status,
        "error_type": pl.when(is_error).then(pl.coalesce(
            _text(schema, _attr(schema, "exception.type"), where), pl.when(status_msg != "").then(status_msg))),
        "args": _text(schema, _attr(schema, "input.value"), where),
        "result": _text(schema, _attr(schema, "output.value"), where),
    }
    tok_in = _coalesce(schema, [_attr(schema, "llm.token_count.prompt")], "input_tokens", where)
    tok_out = _coalesce(schema, [_attr(schema, "llm.token_count.completion")], "output_tokens", where)
    cost = _oi_cost(schema, where)
    latency = _latency_ms(schema, start_c, _find(schema, ("end_time",)), where)
    version = _coalesce(schema, [_attr(schema, "agent.version"), _attr(schema, "llm.model_name")], "version", where)
    for key, e in (("input_tokens", tok_in), ("output_tokens", tok_out), ("cost_usd", cost),
                   ("latency_ms", latency), ("version", version)):
        if e is not None:
            cols[key] = e
    return _SpanFields(
        trace=_id(schema, trace_c, where), span=_id(schema, span_c, where), parent=_id(schema, parent_c, where),
        name=name, kind=kind, tool_name=pl.coalesce(_present(_text(schema, _attr(schema, "tool.name"), where)),
                                                   _present(name)),
        own_agent=own, handoff_target=pl.coalesce(agent_attr, name), kind_text=pl.coalesce(k, pl.lit("no span_kind")),
        columns=cols, start_ns=_start_ns(schema, start_c),
    )


def _oi_cost(schema: Mapping[str, pl.DataType], where: str) -> pl.Expr | None:
    """``llm.cost.total``, else prompt + completion cost (or the one of them recorded).

    Only a missing total (null, blank text, NaN) falls back to the parts: an unreadable one
    (``"abc"``) stays as it is, for :func:`~driftwatch.schema.conform` to reject the span as
    ``bad_value:cost_usd`` with that value, as it does when the file has no cost parts.
    """
    total_c = _attr(schema, "llm.cost.total")
    part_cs = [c for c in (_attr(schema, "llm.cost.prompt"), _attr(schema, "llm.cost.completion")) if c]
    for c in (total_c, *part_cs):
        if c is not None:
            _read_as(schema, c, "cost_usd", where)
    part_values = [to_float(pl.col(c), schema[c], where=where, col=c).value for c in part_cs]
    parts = None
    if part_values:  # prompt + completion cost; one recorded without the other is the cost known
        parts = pl.when(pl.any_horizontal(v.is_not_null() for v in part_values)).then(pl.sum_horizontal(part_values))
    if total_c is None:
        return parts
    total = pl.col(total_c)
    if parts is None:
        return total
    dtype = schema[total_c]
    if dtype.is_numeric() or dtype in (pl.Boolean, pl.Null):
        return pl.coalesce(total.cast(pl.Float64).fill_nan(None), parts)
    # text: the raw total where one is written (checked by conform), else the parts as text
    text = total.cast(pl.String)
    missing = text.is_null() | (text.str.strip_chars() == "") | (text.str.strip_chars().str.to_lowercase() == "nan")
    return pl.when(missing).then(parts.cast(pl.String)).otherwise(text)


_T, _S, _P, _OWN, _KIND, _NAME = (f"{INTERNAL_PREFIX}{n}" for n in ("trace", "span", "parent", "own", "kind", "name"))
_PCTX, _HANDOFF, _TOOL = (f"{INTERNAL_PREFIX}{n}" for n in ("pctx", "handoff", "tool"))
#: Internal columns the span adapters add to their output: trace id, span id (a span delivered
#: twice has the same pair) and the start time in integer nanoseconds (orders steps at full precision).
SPAN_TRACE, SPAN_ID, SPAN_START_NS = _T, _S, f"{INTERNAL_PREFIX}start_ns"


def _span_nodes(tree: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (trace, span) of a :func:`span_tree` frame: its parent (the nearest ancestor
    searched first, ``__dw_anc``) and the agent it names (``__dw_ctx``)."""
    anc, ctx = f"{INTERNAL_PREFIX}anc", f"{INTERNAL_PREFIX}ctx"
    return (
        tree.select(pl.col(_T), pl.col(_S), pl.col(_P).alias(anc), pl.col(_OWN).alias(ctx))
        .filter(pl.col(_T).is_not_null() & pl.col(_S).is_not_null())
        .group_by(_T, _S)
        .agg(pl.col(anc).min(), pl.col(ctx).min())
    )


def _doubling_step(nodes: pl.LazyFrame) -> pl.LazyFrame:
    """One pointer-doubling step: each span's agent is its own, else its ancestor's; its
    ancestor becomes its ancestor's ancestor (the depth covered doubles)."""
    anc, ctx = f"{INTERNAL_PREFIX}anc", f"{INTERNAL_PREFIX}ctx"
    look = nodes.select(pl.col(_T), pl.col(_S).alias(anc), pl.col(ctx).alias(ctx + "2"), pl.col(anc).alias(anc + "2"))
    return nodes.join(look, on=[_T, anc], how="left", coalesce=True).select(
        pl.col(_T), pl.col(_S), pl.coalesce(pl.col(ctx), pl.col(ctx + "2")).alias(ctx), pl.col(anc + "2").alias(anc),
    )


def span_context(tree: pl.LazyFrame) -> pl.DataFrame:
    """The agent context of a read's spans, computed once: for each span that is the parent of
    a span of ``tree`` (:func:`span_tree` frames, concatenated over files) and has an agent, the
    agent of the nearest span at or above it that names one (text columns trace, parent, context).

    Eager and narrow: the pointer doubling of :func:`adapt` (at most ``_AGENT_DOUBLING_STEPS``
    steps, 2**steps levels) run on materialised (trace, span, ancestor, agent) rows, stopping
    once no span without an agent has an ancestor left to look at (more steps change nothing).
    Pass it to :func:`adapt` as ``context`` so that every pass over the files joins it instead
    of building the hierarchy again. It holds three short text columns (trace, span, agent) per
    span that is a parent and has an agent; while it is built, four per span of ``tree``.
    """
    anc, ctx = f"{INTERNAL_PREFIX}anc", f"{INTERNAL_PREFIX}ctx"
    spans = tree.select(_T, _S, _P, _OWN).collect()
    nodes = _span_nodes(spans.lazy()).collect()
    # (the spans some span names as its parent: only their context is ever joined)
    parent_keys = spans.select(pl.col(_T), pl.col(_P).alias(_S)).drop_nulls().unique()
    del spans
    for _ in range(_AGENT_DOUBLING_STEPS):
        if not nodes.select((pl.col(ctx).is_null() & pl.col(anc).is_not_null()).any()).item():
            break
        nodes = _doubling_step(nodes.lazy()).collect()
    return (
        nodes.filter(pl.col(ctx).is_not_null())
        .join(parent_keys, on=[_T, _S], how="semi")
        .select(pl.col(_T), pl.col(_S).alias(_P), pl.col(ctx).alias(_PCTX))
    )


def _parent_agent_context(
    lf: pl.LazyFrame, tree: pl.LazyFrame | None = None, context: pl.DataFrame | None = None
) -> pl.LazyFrame:
    """Add ``_PCTX``: the agent of the nearest ancestor span that names one (pointer doubling).

    ``context`` (:func:`span_context`) is joined as it is. Otherwise each step joins the narrow
    (trace, span, ancestor, agent) table (of ``tree``, else of ``lf``) with itself, doubling the
    ancestry depth covered; ``_AGENT_DOUBLING_STEPS`` steps cover 2**steps levels.
    """
    if context is not None:
        parents = context.lazy()
    else:
        nodes = _span_nodes(lf if tree is None else tree)
        for _ in range(_AGENT_DOUBLING_STEPS):
            nodes = _doubling_step(nodes)
        parents = nodes.select(pl.col(_T), pl.col(_S).alias(_P), pl.col(f"{INTERNAL_PREFIX}ctx").alias(_PCTX))
    return lf.join(parents, on=[_T, _P], how="left", coalesce=True, maintain_order="left")


def _adapt_spans(
    lf: pl.LazyFrame,
    schema: Mapping[str, pl.DataType],
    cmap: dict[str, str],
    where: str,
    f: _SpanFields,
    tree: pl.LazyFrame | None = None,
    context: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    internal = [c for c in schema if c.startswith(INTERNAL_PREFIX)]
    staged = lf.with_columns(
        f.trace.alias(_T), f.span.alias(_S), f.parent.alias(_P), f.own_agent.alias(_OWN),
        f.kind.alias(_KIND), f.name.alias(_NAME), f.handoff_target.alias(_HANDOFF), f.tool_name.alias(_TOOL),
        f.kind_text.alias(f"{INTERNAL_PREFIX}kindtext"), f.start_ns.cast(pl.Int64).alias(SPAN_START_NS),
    )
    staged = _parent_agent_context(staged, tree, context)
    kind, pctx = pl.col(_KIND), pl.col(_PCTX)
    nested_agent = (kind == "agent") & pctx.is_not_null()
    not_step = (kind == "wrapper") | ((kind == "agent") & pctx.is_null())
    action = (
        pl.when(kind == "llm").then(pl.lit(LLM_ACTION))
        .when(kind == "tool").then(pl.col(_TOOL))
        .when(nested_agent).then(pl.lit(HANDOFF_PREFIX) + pl.col(_HANDOFF))
        .when(kind == "other").then(pl.col(_NAME))
    )
    agent = pl.when(kind == "agent").then(pctx).otherwise(pl.coalesce(pl.col(_OWN), pctx))
    fill = schema.get("agent")
    if fill is not None and "agent" not in cmap and (fill == pl.String or isinstance(fill, pl.Categorical | pl.Enum)):
        # a hive partition agent=planner/ (or a plain agent column): the agent of the spans that name none
        agent = pl.coalesce(_present(agent), _present(pl.col("agent").cast(pl.String)))
    out: dict[str, pl.Expr] = {"run_id": pl.col(_T), "action": action, "agent": agent, **f.columns}
    for src, dst in cmap.items():
        if src in schema:
            out[dst] = pl.col(src)
    # a tool span that names no tool (no tool name attribute, no span name beyond the operation):
    # null_action, said here so the detail can name the span (a null trace id comes first)
    span_text = pl.concat_str([pl.lit("span '"), pl.coalesce(pl.col(_NAME), pl.lit("")), pl.lit("' ("),
                               pl.col(f"{INTERNAL_PREFIX}kindtext"), pl.lit(")")])
    reason: Any = pl  # (pl.when(...) chained: the first condition starts it)
    detail: Any = pl
    if schema.get("attributes") == pl.String:
        # JSON text attributes that are no JSON: the span's attributes cannot be read (its
        # operation, tokens, ... would be silently missing); blank or null attributes are none
        text = pl.col("attributes")
        blank = text.str.strip_chars()
        valid = pl.col(JSON_OK) if JSON_OK in schema else text.str.json_path_match("$").is_not_null()
        bad_json = (blank != "") & (blank != "null") & ~valid
        reason = reason.when(bad_json).then(pl.lit("bad_value:attributes"))
        detail = detail.when(bad_json).then(text)
    reason = reason.when(not_step).then(pl.lit("not_a_step"))
    detail = detail.when(not_step).then(span_text)
    if not {"run_id", "action"} & {dst for src, dst in cmap.items() if src in schema}:
        no_tool = (kind == "tool") & pl.col(_TOOL).is_null() & pl.col(_T).is_not_null()
        reason = reason.when(no_tool).then(pl.lit("null_action"))
        detail = detail.when(no_tool).then(span_text + pl.lit(" names no tool"))
        # a hand-off to an agent the span does not name (an 'invoke_agent' span without
        # gen_ai.agent.name): the steps below it keep the agent above it
        no_agent = nested_agent & pl.col(_HANDOFF).is_null() & pl.col(_T).is_not_null()
        reason = reason.when(no_agent).then(pl.lit("null_action"))
        detail = detail.when(no_agent).then(span_text + pl.lit(" names no agent"))
    exprs = [e.alias(k) for k, e in out.items()]
    exprs += [reason.cast(pl.String).alias(REASON_COL), detail.cast(pl.String).alias(DETAIL_COL)]
    exprs += [pl.col(c) for c in (_T, _S, SPAN_START_NS) if c not in internal]
    return staged.select(exprs + [pl.col(c) for c in internal])


__all__ = [
    "FORMATS",
    "OI_LLM_KINDS",
    "OI_WRAPPER_KINDS",
    "OTEL_LLM_OPS",
    "OTEL_WRAPPER_OPS",
    "SPAN_ATTRIBUTE_KEYS",
    "SPAN_ID",
    "SPAN_START_NS",
    "SPAN_TRACE",
    "Pushdown",
    "adapt",
    "check_canonical",
    "check_column_map",
    "detect_format",
    "expand_nested",
    "format_hint",
    "name_mapped_sources",
    "nested_columns",
    "json_prelude",
    "pushdown_columns",
    "span_context",
    "span_sources",
    "span_tree",
]
