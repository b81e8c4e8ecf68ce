"""Format adapters: detection, OTel GenAI spans, OpenInference spans, column_map."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from driftwatch import formats as f
from driftwatch import schema as s
from driftwatch.errors import InvalidParameterError, SchemaError
from driftwatch.read import read_logs

ROOT = Path(__file__).resolve().parents[1]
OTEL = ROOT / "sample_logs" / "otel"
OI = ROOT / "sample_logs" / "openinference"


def adapted(raw: pl.DataFrame, fmt: str, **kw: object) -> pl.DataFrame:
    lf = raw.lazy()
    out = f.adapt(lf, lf.collect_schema(), fmt, **kw)  # type: ignore[arg-type]
    return s.conform(out, check=True).collect()


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["run_id", "step", "ts", "action"], "canonical"),
        (["run_id", "ts", "action", "trace_id", "attributes.gen_ai.operation.name"], "canonical"),
        (["run_id", "step"], "canonical"),  # incomplete canonical: reported as canonical, error names action
        (["trace_id", "span_id", "name", "start_time_unix_nano"], "otel"),
        (["traceId", "spanId", "attributes.gen_ai.operation.name"], "otel"),
        (["context.trace_id", "context.span_id", "span_kind", "start_time"], "openinference"),
        (["name", "attributes.openinference.span.kind"], "openinference"),
        (["session", "when", "tool"], None),
    ],
)
def test_detect_format(columns: list[str], expected: str | None) -> None:
    assert f.detect_format(columns) == expected


def test_detect_format_uses_column_map() -> None:
    assert f.detect_format(["session", "when", "tool"], column_map={"session": "run_id", "tool": "action"}) == "canonical"
    # a span export whose run and action columns are named keeps its adapter (it switched to
    # canonical and failed on a missing step); with a step or ts column named too, it is canonical
    oi = ["context.trace_id", "context.span_id", "span_kind", "name", "start_time", "attributes.session.id"]
    both = {"attributes.session.id": "run_id", "name": "action"}
    assert f.detect_format(oi, column_map=both) == "openinference"
    assert f.detect_format(oi, column_map={**both, "start_time": "ts"}) == "canonical"
    otel = ["trace_id", "span_id", "name", "start_time_unix_nano", "attributes.session.id"]
    assert f.detect_format(otel, column_map=both) == "otel"


def test_a_mapped_column_of_a_wrong_type_is_named_as_the_users_column(tmp_path: Path) -> None:
    """``column_map={"tags": "run_id"}`` with a list column ``tags`` said "column 'run_id' has type
    List(String)", though the file's own ``run_id`` was text."""
    path = tmp_path / "a.parquet"
    pl.DataFrame({"run_id": ["r1"], "step": [1], "action": ["a"], "tags": [["x", "y"]]}).write_parquet(path)
    for engine in ("polars", "duckdb"):
        with pytest.raises(SchemaError, match=r"a\.parquet: column 'tags' \(read as 'input_tokens'\) has type List"):
            read_logs(path, column_map={"tags": "input_tokens"}, engine=engine)
    other = tmp_path / "b.parquet"  # two files of one schema: the first that fails is named
    pl.DataFrame({"run_id": ["r2"], "step": [1], "action": ["a"], "tags": [["z"]]}).write_parquet(other)
    with pytest.raises(SchemaError, match=r"a\.parquet: column 'tags' \(read as 'run_id'\) has type List"):
        read_logs([path, other], column_map={"tags": "run_id"})


def test_check_column_map_errors() -> None:
    with pytest.raises(InvalidParameterError, match=r"maps 'x' to 'run'.*expected one of \['run_id'"):
        f.check_column_map({"x": "run"})
    with pytest.raises(InvalidParameterError, match="maps both 'a' and 'b' to 'run_id'"):
        f.check_column_map({"a": "run_id", "b": "run_id"})
    with pytest.raises(InvalidParameterError, match="must be a mapping"):
        f.check_column_map([("a", "run_id")])  # type: ignore[arg-type]
    assert f.check_column_map(None) == {}


# ---------------------------------------------------------------- OTel on the shipped sample


@pytest.fixture(scope="module")
def otel_raw() -> pl.DataFrame:
    return pl.read_parquet(sorted(OTEL.glob("*.parquet")))


@pytest.fixture(scope="module")
def otel() -> pl.DataFrame:
    return adapted(pl.read_parquet(sorted(OTEL.glob("*.parquet"))), "otel")


def test_otel_sample_is_detected(otel_raw: pl.DataFrame) -> None:
    assert f.detect_format(otel_raw.columns) == "otel"


def test_otel_actions_agents_and_handoffs(otel: pl.DataFrame, otel_raw: pl.DataFrame) -> None:
    steps = otel.filter(pl.col(s.REASON_COL).is_null())
    op = otel_raw["attributes.gen_ai.operation.name"]
    assert steps.filter(pl.col("action") == s.LLM_ACTION).height == (op == "chat").sum()
    tools = otel_raw.filter(op == "execute_tool")["attributes.gen_ai.tool.name"]
    assert sorted(steps.filter(~pl.col("action").is_in([s.LLM_ACTION, "handoff:billing"]))["action"]) == sorted(tools)
    # hand-offs: the nested invoke_agent spans, performed by the caller (triage)
    handoffs = steps.filter(pl.col("action").str.starts_with(s.HANDOFF_PREFIX))
    assert set(handoffs["action"]) == {"handoff:billing"}
    assert set(handoffs["agent"]) == {"triage"}
    # steps under the billing invoke_agent span belong to billing, the rest to triage
    assert set(steps["agent"]) == {"triage", "billing"}
    assert set(steps.filter(pl.col("action").is_in(["get_invoice", "refund_payment"]))["agent"]) == {"billing"}
    assert set(steps.filter(pl.col("action").is_in(["search_kb", "get_order"]))["agent"]) == {"triage"}


def test_otel_wrappers_are_not_steps(otel: pl.DataFrame, otel_raw: pl.DataFrame) -> None:
    not_steps = otel.filter(pl.col(s.REASON_COL) == "not_a_step")
    n_roots = (otel_raw["parent_span_id"] == "").sum()
    n_http = otel_raw["attributes.gen_ai.operation.name"].is_null().sum()
    assert not_steps.height == n_roots + n_http
    assert not_steps[s.DETAIL_COL].str.contains(r"^span 'invoke_agent triage' \(invoke_agent\)$").sum() == n_roots
    assert not_steps[s.DETAIL_COL].str.contains("POST /v1/chat/completions").sum() == n_http
    assert otel.filter(pl.col(s.REASON_COL).is_not_null() & (pl.col(s.REASON_COL) != "not_a_step")).height == 0


def test_otel_tokens_from_current_and_deprecated_names(otel: pl.DataFrame, otel_raw: pl.DataFrame) -> None:
    chats = otel_raw.filter(pl.col("attributes.gen_ai.operation.name") == "chat")
    expected = chats.select(pl.coalesce("attributes.gen_ai.usage.input_tokens",
                                        "attributes.gen_ai.usage.prompt_tokens")).to_series()
    assert expected.null_count() == 0
    assert chats["attributes.gen_ai.usage.prompt_tokens"].null_count() < chats.height  # both spellings present
    llm = otel.filter(pl.col("action") == s.LLM_ACTION)
    assert llm["input_tokens"].sum() == expected.sum()
    assert llm["output_tokens"].null_count() == 0


def test_otel_status_errors_latency_ts_and_payloads(otel: pl.DataFrame, otel_raw: pl.DataFrame) -> None:
    steps = otel.filter(pl.col(s.REASON_COL).is_null())
    errors = steps.filter(pl.col("status") == "error")
    assert errors.height == (otel_raw["status_code"] == "STATUS_CODE_ERROR").sum() > 0
    assert set(errors["error_type"]) == {"TimeoutError"}
    assert set(steps["status"]) == {"ok", "error"}
    raw = otel_raw.sort("start_time_unix_nano").row(1, named=True)
    row = otel.filter(pl.col("ts") == datetime.fromtimestamp(raw["start_time_unix_nano"] // 1000 / 1e6, UTC)).row(0, named=True)
    assert row["latency_ms"] == pytest.approx((raw["end_time_unix_nano"] - raw["start_time_unix_nano"]) / 1e6)
    tool = steps.filter(pl.col("action") == "get_order").row(0, named=True)
    assert tool["args"].startswith('{"id":') and tool["result"] is not None
    chat = steps.filter(pl.col("action") == s.LLM_ACTION).row(0, named=True)
    assert chat["args"].startswith('[{"role":"user"') and chat["result"].startswith('[{"role":"assistant"')
    assert chat["version"] == "gpt-4.1-mini-2026-04-14"


def test_otel_steps_follow_span_start_time_within_the_trace(otel: pl.DataFrame) -> None:
    steps = otel.filter(pl.col(s.REASON_COL).is_null())
    per_run = steps.sort("ts").group_by("run_id", maintain_order=True).agg("step")
    assert all(v.to_list() == list(range(1, len(v) + 1)) for v in per_run["step"])
    # the stuck trace repeats the same call with the same answer
    stuck = steps.filter((pl.col("action") == "get_order") & (pl.col("args") == '{"id":"C4005"}'))
    assert stuck.height >= 5 and stuck["run_id"].n_unique() == 1


# ---------------------------------------------------------------- OTel edge shapes


def _otel_trace(**overrides: object) -> pl.DataFrame:
    base = {
        "trace_id": ["t1"] * 4,
        "span_id": ["a", "b", "c", "d"],
        "parent_span_id": ["", "a", "a", "0000000000000000"],
        "name": ["invoke_agent planner", "chat gpt", "execute_tool search", "GET /health"],
        "start_time_unix_nano": [1_793_527_200_000_000_000 + i * 1_000_000_000 for i in range(4)],
        "end_time_unix_nano": [1_793_527_200_500_000_000 + i * 1_000_000_000 for i in range(4)],
        "status_code": [0, 1, 2, 0],
        "attributes.gen_ai.operation.name": ["invoke_agent", "chat", "execute_tool", None],
        "attributes.gen_ai.agent.name": ["planner", None, None, None],
        "attributes.gen_ai.tool.name": [None, None, "search", None],
    }
    base.update(overrides)  # type: ignore[arg-type]
    return pl.DataFrame(base)


def test_otel_integer_status_codes_and_zero_parent_ids() -> None:
    out = adapted(_otel_trace(), "otel")
    assert out["action"].to_list() == [None, "llm", "search", None]
    assert out[s.REASON_COL].to_list() == ["not_a_step", None, None, "not_a_step"]
    assert out["status"].to_list()[1:3] == ["ok", "error"]
    assert out["agent"].to_list()[1:3] == ["planner", "planner"]
    assert out["step"].to_list()[1:3] == [1, 2]
    assert out["latency_ms"].to_list()[1] == pytest.approx(500.0)


@pytest.mark.parametrize("codes", [
    ["0", " 1 ", "2", "1"], ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR", "OK"], [0.0, 1.0, 2.0, None],
    [float("nan"), 1.0, 2.0, float("nan")],  # pandas writes a missing code as NaN: unset
])
def test_otel_status_codes_as_text_digits_names_or_floats(codes: list[object]) -> None:
    ops = {"attributes.gen_ai.operation.name": ["chat", "chat", "execute_tool", "execute_tool"],
           "attributes.gen_ai.tool.name": [None, None, "search", "search"]}
    out = adapted(_otel_trace(status_code=codes, **ops), "otel")
    assert out[s.REASON_COL].to_list() == [None] * 4
    assert out["status"].to_list() == ["ok", "ok", "error", "ok"]
    # other digits are not OTLP codes: reported with their value
    out = adapted(_otel_trace(status_code=["3", "0", "2.5", "0"], **ops), "otel")
    assert out.select(s.REASON_COL, s.DETAIL_COL).rows()[::2] == [("bad_status", "3"), ("bad_status", "2.5")]


def test_otel_operation_from_span_name_and_binary_ids_and_datetime_start() -> None:
    raw = _otel_trace().drop("attributes.gen_ai.operation.name", "attributes.gen_ai.tool.name").with_columns(
        pl.col("trace_id").cast(pl.Binary),
        pl.from_epoch("start_time_unix_nano", time_unit="ns").dt.replace_time_zone("UTC").alias("start_time"),
        pl.from_epoch("end_time_unix_nano", time_unit="ns").dt.replace_time_zone("UTC").alias("end_time"),
    ).drop("start_time_unix_nano", "end_time_unix_nano")
    out = adapted(raw, "otel")
    assert out["action"].to_list() == [None, "llm", "search", None]
    assert out["run_id"].to_list() == ["7431"] * 4  # b"t1" hex-encoded
    assert out["latency_ms"].to_list()[2] == pytest.approx(500.0)


def test_otel_tool_spans_without_a_tool_name_fall_back_to_the_span_name() -> None:
    names = ["search_kb", "execute_tool lookup", "Execute_Tool  refund ", "execute_tool", "  ", "execute_tool x"]
    n = len(names)
    raw = pl.DataFrame({
        "trace_id": ["t"] * n, "span_id": [str(i) for i in range(n)], "name": names,
        "start_time_unix_nano": [1_793_527_200_000_000_000 + i for i in range(n)],
        "attributes.gen_ai.operation.name": ["execute_tool"] * n,
        "attributes.gen_ai.tool.name": [None, None, None, None, None, " "],  # blank: as if absent
    })
    out = adapted(raw, "otel")
    assert out["action"].to_list() == ["search_kb", "lookup", "refund", None, None, "x"]
    assert out.select(s.REASON_COL, s.DETAIL_COL).rows()[3:5] == [
        ("null_action", "span 'execute_tool' (execute_tool) names no tool"),
        ("null_action", "span '  ' (execute_tool) names no tool")]
    # a null trace id is reported first, as for any span
    out = adapted(raw[3:4].with_columns(pl.lit(None, pl.String).alias("trace_id")), "otel")
    assert out[s.REASON_COL].to_list() == ["null_run_id"]
    # an OpenInference TOOL span with neither a tool name nor a span name is said so too
    oi = pl.DataFrame({"context.trace_id": ["t"], "context.span_id": ["a"], "span_kind": ["TOOL"], "name": [""],
                       "start_time": [datetime(2026, 11, 2, tzinfo=UTC)], "attributes.tool.name": [""]})
    assert adapted(oi, "openinference").select(s.REASON_COL, s.DETAIL_COL).rows() == [
        ("null_action", "span '' (TOOL) names no tool")]


def test_otel_nested_agents_inherit_through_deep_ancestry() -> None:
    # planner -> (8 wrapper levels) -> invoke_agent coder -> chat ; agent found through 9 ancestors
    n = 10
    ids = [f"s{i}" for i in range(n + 2)]
    raw = pl.DataFrame({
        "trace_id": ["t"] * (n + 2),
        "span_id": ids,
        "parent_span_id": [""] + ids[:-1],
        "name": ["invoke_agent planner"] + ["step"] * (n - 1) + ["invoke_agent coder", "chat m"],
        "start_time_unix_nano": [1_793_527_200_000_000_000 + i for i in range(n + 2)],
        "attributes.gen_ai.operation.name": ["invoke_agent"] + ["invoke_workflow"] * (n - 1) + ["invoke_agent", "chat"],
        "attributes.gen_ai.agent.name": ["planner"] + [None] * (n - 1) + ["coder", None],
    })
    out = adapted(raw, "otel").filter(pl.col(s.REASON_COL).is_null())
    assert out.select("action", "agent").rows() == [("handoff:coder", "planner"), ("llm", "coder")]


def test_otel_messages_as_nested_lists_are_json() -> None:
    raw = _otel_trace(**{"attributes.gen_ai.input.messages": [None, [{"role": "user", "content": "hi"}], None, None]})
    out = adapted(raw, "otel")
    assert out["args"].to_list()[1] == '[{"role":"user","content":"hi"}]'


def test_otel_missing_required_columns() -> None:
    with pytest.raises(SchemaError, match=r"t\.parquet: OTel input is missing required column\(s\) \['span_id'\]"):
        f.adapt(_otel_trace().drop("span_id").lazy(), _otel_trace().drop("span_id").schema, "otel", where="t.parquet")
    raw = _otel_trace().drop("name", "attributes.gen_ai.operation.name")
    with pytest.raises(SchemaError, match="needs attributes.gen_ai.operation.name or a span name"):
        f.adapt(raw.lazy(), raw.schema, "otel")


def test_a_start_time_of_another_type_is_an_error_naming_the_users_column() -> None:
    raw = _otel_trace().drop("start_time_unix_nano").with_columns(pl.lit(True).alias("start_time"))
    with pytest.raises(SchemaError, match=r"t\.parquet: column 'start_time' has type Boolean"):
        f.adapt(raw.lazy(), raw.schema, "otel", where="t.parquet")
    oi = pl.DataFrame({"context.trace_id": ["t"], "context.span_id": ["a"], "span_kind": ["LLM"], "start_time": [True]})
    with pytest.raises(SchemaError, match=r"t\.parquet: column 'start_time' has type Boolean"):
        f.adapt(oi.lazy(), oi.schema, "openinference", where="t.parquet")


def test_an_unset_end_time_gives_no_latency_rather_than_a_negative_one() -> None:
    t0 = 1_793_527_200_000_000_000
    ends = {"int": [0, t0 + 3 * 10**6], "text": ["0", str(t0 + 3 * 10**6)]}
    for kind, end in ends.items():
        raw = pl.DataFrame({"traceId": ["t", "t"], "spanId": ["a", "b"], "name": ["chat m", "chat m"],
                            "startTimeUnixNano": [t0, t0 + 10**6], "endTimeUnixNano": end})
        out = adapted(raw, "otel")
        assert out[s.REASON_COL].to_list() == [None, None], kind
        assert out["latency_ms"].to_list() == [None, 2.0], kind
    start = datetime(2026, 11, 2, tzinfo=UTC)
    for end in ([datetime(1970, 1, 1, tzinfo=UTC)], ["1970-01-01T00:00:00Z"]):
        oi = pl.DataFrame({"context.trace_id": ["t"], "context.span_id": ["a"], "span_kind": ["LLM"],
                           "start_time": [start], "end_time": end})
        out = adapted(oi, "openinference")
        assert (out[s.REASON_COL][0], out["latency_ms"][0]) == (None, None)


def test_an_unset_start_time_is_no_step_in_1970() -> None:
    """A span with start time 0 (OTLP's unset time) became a 1970 step whose run escalated for a
    runtime of 56 years; with a real end, its latency was read in the wrong unit and rejected."""
    t0 = 1_793_527_200_000_000_000
    for starts, ends in (([t0, 0, 0], [t0 + 10**6, 0, t0 + 3 * 10**9]),
                         ([str(t0), "0", "0"], [str(t0 + 10**6), "0", str(t0 + 3 * 10**9)])):
        raw = pl.DataFrame({"traceId": ["t"] * 3, "spanId": ["a", "b", "c"], "name": ["chat m"] * 3,
                            "startTimeUnixNano": starts, "endTimeUnixNano": ends})
        out = adapted(raw, "otel")
        assert out.select(s.REASON_COL, "step", "latency_ms").rows() == [
            (None, 1, 1.0), ("null_ts", None, None), ("null_ts", None, None)]
    start = [datetime(2026, 11, 2, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)]
    oi = pl.DataFrame({"context.trace_id": ["t", "t"], "context.span_id": ["a", "b"], "span_kind": ["LLM", "LLM"],
                       "start_time": start, "end_time": [datetime(2026, 11, 2, 0, 0, 1, tzinfo=UTC)] * 2})
    out = adapted(oi, "openinference")
    assert out.select(s.REASON_COL, "latency_ms").rows() == [(None, 1000.0), ("null_ts", None)]


def test_an_invoke_agent_span_without_a_name_names_no_agent() -> None:
    """Spans named just ``invoke_agent`` (the agent's name is optional in the conventions) named
    their agent "invoke_agent", and a nested one handed off to ``handoff:invoke_agent``."""
    raw = pl.DataFrame({
        "trace_id": ["t"] * 5, "span_id": ["r", "a", "n", "b", "x"], "parent_span_id": [None, "r", "r", "n", "r"],
        "name": ["invoke_agent supervisor", "chat m", "invoke_agent", "chat m", "invoke_agent  billing "],
        "start_time_unix_nano": [_T0 + i * 10**6 for i in range(5)],
        "attributes.gen_ai.operation.name": ["invoke_agent", "chat", "invoke_agent", "chat", "invoke_agent"],
    })
    out = adapted(raw, "otel")
    assert out.select("action", "agent", s.REASON_COL, s.DETAIL_COL).rows() == [
        (None, "default", "not_a_step", "span 'invoke_agent supervisor' (invoke_agent)"),
        ("llm", "supervisor", None, None),
        (None, "supervisor", "null_action", "span 'invoke_agent' (invoke_agent) names no agent"),
        ("llm", "supervisor", None, None),
        ("handoff:billing", "supervisor", None, None),
    ]
    root = adapted(raw.with_columns(name=pl.lit("invoke_agent")), "otel")
    assert set(root.filter(pl.col(s.REASON_COL).is_null())["agent"]) == {"default"}


# ---------------------------------------------------------------- OpenInference on the shipped sample


@pytest.fixture(scope="module")
def oi_raw() -> pl.DataFrame:
    return pl.read_parquet(OI / "spans.parquet")


@pytest.fixture(scope="module")
def oi() -> pl.DataFrame:
    return adapted(pl.read_parquet(OI / "spans.parquet"), "openinference")


def test_openinference_sample(oi: pl.DataFrame, oi_raw: pl.DataFrame) -> None:
    assert f.detect_format(oi_raw.columns) == "openinference"
    steps = oi.filter(pl.col(s.REASON_COL).is_null())
    kinds = oi_raw["span_kind"]
    assert steps.filter(pl.col("action") == s.LLM_ACTION).height == (kinds == "LLM").sum()
    assert steps.filter(pl.col("action").str.starts_with("handoff:")).height == (
        (kinds == "AGENT") & (oi_raw["name"] == "billing")).sum()
    not_steps = oi.filter(pl.col(s.REASON_COL) == "not_a_step")
    assert not_steps.height == (kinds == "CHAIN").sum() + ((kinds == "AGENT") & (oi_raw["name"] == "triage")).sum()
    assert set(steps["agent"]) == {"triage", "billing"}
    llm = steps.filter(pl.col("action") == s.LLM_ACTION)
    raw_llm = oi_raw.filter(kinds == "LLM")
    assert llm["input_tokens"].sum() == raw_llm["attributes.llm.token_count.prompt"].sum()
    assert llm["cost_usd"].sum() == pytest.approx(raw_llm["attributes.llm.cost.total"].sum())
    errors = steps.filter(pl.col("status") == "error")
    assert errors.height == (oi_raw["status_code"] == "ERROR").sum() > 0
    assert errors["error_type"].str.starts_with("TimeoutError").all()
    assert steps["ts"].dtype == s.TS_DTYPE and steps["latency_ms"].min() > 0
    assert steps.filter(pl.col("action") == "get_order")["args"].str.starts_with('{"id"').all()


def test_openinference_cost_from_parts_and_missing_columns() -> None:
    raw = pl.DataFrame({
        "context.trace_id": ["t", "t"], "context.span_id": ["a", "b"], "parent_id": [None, "a"],
        "span_kind": ["AGENT", "LLM"], "name": ["bot", "llm"],
        "start_time": [datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC)],
        "attributes.llm.cost.prompt": [None, 0.25], "attributes.llm.cost.completion": [None, 0.5],
    })
    out = adapted(raw, "openinference")
    assert out.filter(pl.col(s.REASON_COL).is_null()).select("action", "agent", "cost_usd").row(0) == ("llm", "bot", 0.75)
    # one part without the other is the cost known (was null), and so is a file with one part only
    half = adapted(raw.with_columns(pl.Series("attributes.llm.cost.completion", [None, None], pl.Float64)), "openinference")
    assert half["cost_usd"].to_list() == [None, 0.25]
    assert adapted(raw.drop("attributes.llm.cost.completion"), "openinference")["cost_usd"].to_list() == [None, 0.25]
    with pytest.raises(SchemaError, match=r"OpenInference input is missing required column\(s\) \['span_kind'\]"):
        f.adapt(raw.drop("span_kind").lazy(), raw.drop("span_kind").schema, "openinference")


# ---------------------------------------------------------------- column_map


def test_column_map_renames_canonical_input() -> None:
    raw = pl.DataFrame({"session": ["s"], "when": ["2026-11-01T00:00:00Z"], "tool": ["search"], "run_id": ["ignored"]})
    out = adapted(raw, "canonical", column_map={"session": "run_id", "when": "ts", "tool": "action"})
    assert out.select("run_id", "step", "action").row(0) == ("s", 1, "search")


def test_column_map_overrides_span_adapters() -> None:
    out = adapted(pl.read_parquet(OI / "spans.parquet"), "openinference",
                  column_map={"attributes.session.id": "run_id"})
    assert out["run_id"].str.starts_with("session-").all()
    res = read_logs(OTEL, column_map={"attributes.gen_ai.conversation.id": "run_id"})
    assert res.events.select(pl.col("run_id").str.starts_with("conv-").all()).collect().item()


def test_canonical_adapter_reports_missing_columns_and_map_sources() -> None:
    raw = pl.DataFrame({"run_id": ["r"], "step": [1]})
    with pytest.raises(SchemaError, match=r"x\.parquet \(column_map source\(s\) \['tool'\] not in this file\): missing required"):
        f.adapt(raw.lazy(), raw.schema, "canonical", column_map={"tool": "action"}, where="x.parquet")


def test_pushdown_columns() -> None:
    schema = {"ts": pl.Datetime("us", "UTC"), "agent": pl.String(), "run_id": pl.String()}
    assert f.pushdown_columns("canonical", schema, {}) == f.Pushdown("ts", "datetime", "agent")
    assert f.pushdown_columns("canonical", {"ts": pl.String()}, {}) == f.Pushdown(None, None, None)
    otel = {"start_time_unix_nano": pl.Int64()}
    assert f.pushdown_columns("otel", otel, {}) == f.Pushdown("start_time_unix_nano", "epoch_ns", None)
    assert f.pushdown_columns("openinference", {"start_time": pl.Datetime("ns", "UTC")}, {}).ts_kind == "datetime"
    assert f.pushdown_columns("canonical", {"when": pl.Datetime("ms")}, {"when": "ts"}).ts_column == "when"


def test_adapt_rejects_unknown_format() -> None:
    with pytest.raises(InvalidParameterError, match="format must be one of"):
        f.adapt(pl.LazyFrame({"a": [1]}), {"a": pl.Int64()}, "jsonl")


# ---------------------------------------------------------------- nested attributes, epochs, details

_T0 = 1_793_000_000_000_000_000  # ns


def _any_value(v: str) -> dict:
    """An OTLP AnyValue: numbers typed as numbers."""
    if v.isdigit():
        return {"stringValue": None, "intValue": int(v), "doubleValue": None}
    if v.replace(".", "", 1).isdigit():
        return {"stringValue": None, "intValue": None, "doubleValue": float(v)}
    return {"stringValue": v, "intValue": None, "doubleValue": None}


def _nested_variants() -> dict[str, dict]:
    import pyarrow as pa

    attrs = [{"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "p"},
             {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "7", "gen_ai.usage.cost": "0.5"},
             {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "s", "error.type": "Timeout",
              "gen_ai.tool.call.arguments": '{"q":1}'}]
    base = {"trace_id": ["t1"] * 3, "span_id": ["r", "a", "b"], "parent_span_id": [None, "r", "r"],
            "name": ["invoke_agent p", "chat m1", "execute_tool s"],
            "start_time_unix_nano": pa.array([_T0, _T0 + 10**6, _T0 + 2 * 10**6], pa.int64()),
            "end_time_unix_nano": pa.array([_T0 + 10**9, _T0 + 2 * 10**6, _T0 + 3 * 10**6], pa.int64())}
    keys = sorted({k for a in attrs for k in a})
    tree_rows = []  # {"gen_ai": {"operation": {"name": ...}}}
    for a in attrs:
        row: dict = {}
        for k in keys:
            node = row
            parts = k.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = a.get(k)
        tree_rows.append(row)
    return {
        "flat": {**base, **{"attributes." + k: [a.get(k) for a in attrs] for k in keys}},
        "map": {**base, "attributes": pa.array([list(a.items()) for a in attrs], pa.map_(pa.string(), pa.string()))},
        "struct_dotted": {**base, "attributes": pa.array([{k: a.get(k) for k in keys} for a in attrs])},
        "struct_nested": {**base, "attributes": pa.array(tree_rows)},
        "map_any_value": {**base, "attributes": pa.array(
            [[(k, _any_value(v)) for k, v in a.items()] for a in attrs],
            pa.map_(pa.string(), pa.struct([("stringValue", pa.string()), ("intValue", pa.int64()),
                                            ("doubleValue", pa.float64())])))},
        "otlp_kv_list": {**base, "attributes": pa.array(
            [[{"key": k, "value": {"stringValue": v}} for k, v in a.items()] for a in attrs])},
        "json_text": {**base, "attributes": [json.dumps(a) for a in attrs]},
        # the same nested, as Phoenix stores span attributes (was read as nulls)
        "json_nested": {**base, "attributes": [json.dumps(r) for r in tree_rows]},
        "status_struct": {**base, **{"attributes." + k: [a.get(k) for a in attrs] for k in keys if k != "error.type"},
                          "status": pa.array([{"code": 0, "message": ""}, {"code": 1, "message": ""},
                                              {"code": 2, "message": "Timeout"}])},
    }


@pytest.mark.parametrize("variant", ["flat", "map", "map_any_value", "struct_dotted", "struct_nested", "otlp_kv_list", "json_text",
                                     "json_nested", "status_struct"])
@pytest.mark.parametrize("engine", ["polars", "duckdb"])
def test_otel_attributes_as_struct_map_or_key_value_list(tmp_path: Path, variant: str, engine: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"{variant}.parquet"
    pq.write_table(pa.table(_nested_variants()[variant]), path)
    res = read_logs(path, engine=engine)
    assert res.stats.formats == {"otel": 1}
    rows = res.collect().sort("step").select("action", "agent", "status", "error_type", "input_tokens", "cost_usd",
                                             "args").rows()
    assert rows == [("llm", "p", "ok", None, 7, 0.5, None), ("s", "p", "error", "Timeout", None, None, '{"q":1}')]


def test_openinference_attributes_struct_and_unreadable_attributes() -> None:
    t = datetime(2026, 10, 1, tzinfo=UTC)
    at = [{"llm": {"token_count": {"prompt": 7}}, "tool": {"name": None}, "exception": {"type": None}},
          {"llm": {"token_count": {"prompt": None}}, "tool": {"name": "search_kb"}, "exception": {"type": "Timeout"}}]
    raw = pl.DataFrame({"context.trace_id": ["T", "T"], "context.span_id": ["a", "b"], "parent_id": [None, "a"],
                        "name": ["ChatOpenAI", "search"], "span_kind": ["LLM", "TOOL"], "status_code": ["OK", "ERROR"],
                        "start_time": [t, t], "attributes": at})
    out = adapted(raw, "openinference")
    assert out.select("action", "status", "error_type", "input_tokens").rows() == [
        ("llm", "ok", None, 7), ("search_kb", "error", "Timeout", None)]
    bad = raw.with_columns(pl.lit(3).alias("attributes"))
    with pytest.raises(SchemaError, match="column 'attributes' has type Int32.*Flatten"):
        adapted(bad, "openinference")


def test_otel_text_epochs_exact_latency_and_full_precision_order(tmp_path: Path) -> None:
    raw = pl.DataFrame({
        "traceId": ["t"] * 4, "spanId": ["c", "a", "b", "d"], "parentSpanId": [""] * 4,
        "name": ["execute_tool c", "execute_tool a", "execute_tool b", "execute_tool d"],
        "startTimeUnixNano": [str(_T0 + 300), str(_T0 + 100), f" {_T0 + 200} ", "yesterday"],
        "endTimeUnixNano": [str(_T0 + 250 * 10**6 + 300), str(_T0 + 100), str(_T0 + 200), "yesterday"],
        "attributes.gen_ai.operation.name": ["execute_tool"] * 4,
    })
    out = adapted(raw, "otel")
    assert out[s.REASON_COL].to_list() == [None, None, None, "bad_ts"]
    assert out[s.DETAIL_COL].to_list()[3] == "yesterday"
    assert out["ts"].to_list()[0] == datetime(2026, 10, 26, 7, 33, 20, tzinfo=UTC)
    assert out["latency_ms"].to_list()[:3] == [250.0, 0.0, 0.0]
    # steps follow the start time in nanoseconds, which ts (microseconds) does not hold
    raw.write_parquet(tmp_path / "x.parquet")
    for engine in ("polars", "duckdb"):
        ev = read_logs(tmp_path, engine=engine).collect().sort("step")
        assert ev.select("step", "action").rows() == [(1, "a"), (2, "b"), (3, "c")]


@pytest.mark.parametrize("fmt", ["otel", "openinference"])
def test_iso_text_start_times_order_steps_at_nanoseconds(tmp_path: Path, fmt: str) -> None:
    starts = ["2026-11-02T09:00:00.000000003Z", "2026-11-02 11:00:00.000000001+02:00",  # 09:00:00.000000001 UTC
              "2026-11-02T09:00:00.0000000029Z", "2026-11-02T09:00:00.000000002", "2026-11-02T08:59:59Z"]
    n = len(starts)
    ids = {"trace_id": ["t"] * n, "span_id": list("edcba")} if fmt == "otel" else {
        "context.trace_id": ["t"] * n, "context.span_id": list("edcba"), "span_kind": ["TOOL"] * n}
    op = {"attributes.gen_ai.operation.name": ["execute_tool"] * n} if fmt == "otel" else {}
    pl.DataFrame({**ids, "name": ["s3", "s1", "s2a", "s2b", "s0"], "start_time": starts, **op}).write_parquet(
        tmp_path / "x.parquet")
    for engine in ("polars", "duckdb"):
        ev = read_logs(tmp_path, engine=engine).collect().sort("step")
        # 2.9 ns and 2 ns share the nanosecond: the order read breaks the tie
        assert ev["action"].to_list() == ["s0", "s1", "s2a", "s2b", "s3"], engine


@pytest.mark.parametrize("unit", [1, 10**3, 10**6])
@pytest.mark.parametrize("names", [("start_time_unix_nano", "end_time_unix_nano"), ("start_time", "end_time")])
def test_otel_latency_from_integer_epochs_is_exact_in_their_unit(unit: int, names: tuple[str, str]) -> None:
    raw = pl.DataFrame({"trace_id": ["T"], "span_id": ["a"], "name": ["chat m"],
                        "attributes.gen_ai.operation.name": ["chat"],
                        names[0]: [_T0 // unit], names[1]: [(_T0 + 250 * 10**6) // unit]})
    out = adapted(raw, "otel")
    assert out["latency_ms"].to_list() == [250.0]
    assert out["ts"].to_list() == [datetime(2026, 10, 26, 7, 33, 20, tzinfo=UTC)]


def test_span_rejections_carry_the_raw_value() -> None:
    raw = pl.DataFrame({"trace_id": ["T"] * 4, "span_id": list("abcd"), "parent_span_id": [None] * 4,
                        "name": ["chat m"] * 4, "start_time_unix_nano": [_T0 + i * 10**6 for i in range(4)],
                        "end_time_unix_nano": [_T0 + 10**6, _T0 + 2 * 10**6, _T0 + 3 * 10**6, _T0],
                        "status_code": [None, None, "WHATEVER", None], "attributes.gen_ai.operation.name": ["chat"] * 4,
                        "attributes.gen_ai.usage.input_tokens": ["abc", "-5", None, None]})
    out = adapted(raw, "otel")
    assert out.select(s.REASON_COL, s.DETAIL_COL).rows() == [
        ("bad_value:input_tokens", "abc"), ("negative_tokens", "input_tokens=-5"), ("bad_status", "WHATEVER"),
        ("negative_latency", "latency_ms=-3.0")]


def test_nested_trace_ids_are_a_schema_error_as_for_canonical_run_ids() -> None:
    raw = pl.DataFrame({"trace_id": [["x"], ["x"]], "span_id": ["a", "b"], "parent_span_id": [None, "a"],
                        "name": ["invoke_agent p", "chat m"], "start_time_unix_nano": [_T0, _T0 + 1000],
                        "attributes.gen_ai.operation.name": ["invoke_agent", "chat"]})
    with pytest.raises(SchemaError, match=r"column 'trace_id' has type List\(String\); expected text"):
        adapted(raw, "otel")


def test_span_messages_do_not_list_internal_columns() -> None:
    raw = pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"], "__dw_order": [0]})
    with pytest.raises(SchemaError) as err:
        f.adapt(raw.lazy(), raw.schema, "otel", where="x.parquet")
    assert "__dw_order" not in str(err.value) and "found ['run_id', 'step', 'action']" in str(err.value)


def test_otel_with_map_attributes_and_datetime_start_is_detected(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = datetime(2026, 10, 1, tzinfo=UTC)
    attrs = [[("gen_ai.operation.name", "chat")], [("gen_ai.operation.name", "execute_tool"), ("gen_ai.tool.name", "s")]]
    pq.write_table(pa.table({
        "trace_id": ["T", "T"], "span_id": ["a", "b"], "name": ["chat m", "execute_tool s"],
        "start_time": pa.array([t, t.replace(second=1)], pa.timestamp("us", tz="UTC")),
        "attributes": pa.array(attrs, pa.map_(pa.string(), pa.string())),
    }), tmp_path / "m.parquet")
    res = read_logs(tmp_path)
    assert res.stats.formats == {"otel": 1}
    assert res.collect().sort("step").select("step", "action").rows() == [(1, "llm"), (2, "s")]


def test_span_sources_name_the_column_each_input_reads() -> None:
    from driftwatch.formats import span_sources

    flat = {"trace_id": pl.String(), "traceId": pl.String(), "start_time_unix_nano": pl.Int64(),
            "attributes.gen_ai.tool.name": pl.String()}
    src = span_sources(flat, "otel")
    assert src["trace"] == ("trace_id", True) and src["start"] == ("start_time_unix_nano", True)
    assert src["attributes.gen_ai.tool.name"] == ("attributes.gen_ai.tool.name", True)
    assert "attributes.gen_ai.agent.name" not in src  # absent: no conflict with a file that has it
    nested = {"traceId": pl.String(), "attributes": pl.Struct({"gen_ai.tool.name": pl.String()})}
    src = span_sources(nested, "otel")
    assert src["trace"] == ("traceId", True)
    assert src["attributes.gen_ai.tool.name"] == ("attributes.gen_ai.tool.name", False)
    ctx = span_sources({"context": pl.Struct({"trace_id": pl.String(), "span_id": pl.String()})}, "openinference")
    assert ctx["trace"] == ("context.trace_id", False)
    assert span_sources({"run_id": pl.String()}, "canonical") == {}


# ---------------------------------------------------------------- fixes: context ids, type errors, costs, JSON


def _same(a: object, b: object) -> None:
    """Two reads (polars / duckdb engine) give the same events, rejected rows and counts."""
    from polars.testing import assert_frame_equal

    ea, eb = a.events.collect().sort("run_id", "step"), b.events.collect().sort("run_id", "step")  # type: ignore[attr-defined]
    assert_frame_equal(ea, eb)
    assert_frame_equal(a.rejected, b.rejected)  # type: ignore[attr-defined]
    for r in (a, b):
        st = r.stats  # type: ignore[attr-defined]
        assert st.rows_in == st.rows_valid + st.rows_rejected
    assert a.stats.reasons == b.stats.reasons  # type: ignore[attr-defined]


def test_otel_span_ids_in_a_context_struct_are_read(tmp_path: Path) -> None:
    """OTel spans with ids in a ``context`` struct were detected as OpenInference ("missing
    span_kind, start_time") and format="otel" said "missing trace_id, span_id"."""
    raw = pl.DataFrame({
        "context": [{"trace_id": "t1", "span_id": "s1"}, {"trace_id": "t1", "span_id": "s2"}],
        "parent_span_id": [None, "s1"], "name": ["chat gpt-4", "execute_tool search"],
        "start_time_unix_nano": [_T0, _T0 + 10**9], "end_time_unix_nano": [_T0 + 10**8, _T0 + 2 * 10**9],
        "attributes": [{"gen_ai.operation.name": "chat", "gen_ai.agent.name": "p", "gen_ai.tool.name": None},
                       {"gen_ai.operation.name": "execute_tool", "gen_ai.agent.name": None, "gen_ai.tool.name": "search"}],
    })
    raw.write_parquet(tmp_path / "spans.parquet")
    for fmt in ("auto", "otel"):
        a, b = (read_logs(tmp_path, format=fmt, engine=e) for e in ("polars", "duckdb"))
        _same(a, b)
        assert a.stats.formats == {"otel": 1}
        assert a.collect().sort("step").select("run_id", "step", "action", "agent", "latency_ms").rows() == [
            ("t1", 1, "llm", "p", 100.0), ("t1", 2, "search", "p", 1000.0)]


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        # OTel marks only, or OpenInference unable to read the file (no start_time / span kind)
        (["context.trace_id", "context.span_id", "start_time_unix_nano", "name"], "otel"),
        (["context.trace_id", "context.span_id", "start_time", "attributes.gen_ai.operation.name"], "otel"),
        (["context.trace_id", "context.span_id", "span_kind", "start_time_unix_nano",
          "attributes.gen_ai.operation.name"], "otel"),
        # a Phoenix frame that also records gen_ai.* attributes stays OpenInference
        (["context.trace_id", "context.span_id", "span_kind", "start_time", "attributes.gen_ai.usage.input_tokens"],
         "openinference"),
        (["context.trace_id", "context.span_id", "name"], "openinference"),  # neither: its error names span_kind
    ],
)
def test_detect_format_with_context_ids_decides_by_the_other_columns(columns: list[str], expected: str) -> None:
    assert f.detect_format(columns) == expected


def test_a_file_that_fits_both_span_formats_is_refused_clearly(tmp_path: Path) -> None:
    cols = ["context.trace_id", "context.span_id", "span_kind", "start_time", "start_time_unix_nano",
            "attributes.gen_ai.operation.name"]
    with pytest.raises(SchemaError, match="both OpenInference columns .* and OTel ones .*format='otel'"):
        f.detect_format(cols)
    # looked-up attribute names (map / JSON attributes) do not make a file ambiguous
    assert f.detect_format(cols[:5], lookups=["attributes.gen_ai.operation.name"]) == "openinference"
    t = datetime(2026, 10, 1, tzinfo=UTC)
    pl.DataFrame({"context.trace_id": ["T"], "context.span_id": ["a"], "span_kind": ["LLM"], "name": ["chat m"],
                  "start_time": [t], "start_time_unix_nano": [_T0], "attributes.gen_ai.operation.name": ["chat"]},
                 ).write_parquet(tmp_path / "both.parquet")
    for engine in ("polars", "duckdb"):
        with pytest.raises(SchemaError, match=r"both.parquet: cannot tell the span format.*format='openinference'"):
            read_logs(tmp_path, engine=engine)
        assert read_logs(tmp_path, engine=engine, format="otel").collect()["action"].to_list() == ["llm"]
        assert read_logs(tmp_path, engine=engine, format="openinference").collect()["action"].to_list() == ["llm"]


@pytest.mark.parametrize("engine", ["polars", "duckdb"])
def test_a_span_attribute_of_a_wrong_type_is_named_as_the_users_column(tmp_path: Path, engine: str) -> None:
    """The error said "column 'input_tokens' has type List(Int64)", a column the file does not have."""
    pl.DataFrame({"trace_id": ["t1"], "span_id": ["s1"], "name": ["chat m"], "start_time_unix_nano": [_T0],
                  "attributes.gen_ai.operation.name": ["chat"], "attributes.gen_ai.usage.input_tokens": [[1, 2]]},
                 ).write_parquet(tmp_path / "otel.parquet")
    with pytest.raises(SchemaError, match=r"otel.parquet: column 'attributes.gen_ai.usage.input_tokens' "
                                          r"\(read as 'input_tokens'\) has type List\(Int64\)"):
        read_logs(tmp_path / "otel.parquet", engine=engine)
    t = datetime(2026, 10, 1, tzinfo=UTC)
    base = {"context.trace_id": ["t1"], "context.span_id": ["s1"], "span_kind": ["LLM"], "name": ["ChatOpenAI"],
            "start_time": [t]}
    pl.DataFrame({**base, "attributes.llm.cost.total": [[0.1]]}).write_parquet(tmp_path / "oi.parquet")
    pl.DataFrame({**base, "attributes.llm.cost.total": [0.1], "attributes.llm.cost.prompt": [[0.1]]}).write_parquet(
        tmp_path / "oi_part.parquet")
    for name, col in (("oi", "attributes.llm.cost.total"), ("oi_part", "attributes.llm.cost.prompt")):
        with pytest.raises(SchemaError, match=rf"{name}.parquet: column '{col}' \(read as 'cost_usd'\) has type List"):
            read_logs(tmp_path / f"{name}.parquet", engine=engine)


def test_an_unreadable_openinference_total_cost_is_rejected_even_with_cost_parts(tmp_path: Path) -> None:
    """An ``llm.cost.total`` of "abc" was replaced by prompt + completion cost when those columns
    existed; only a missing total falls back to the parts."""
    t = datetime(2026, 10, 1, tzinfo=UTC)
    n = 4
    pl.DataFrame({
        "context.trace_id": ["t1"] * n, "context.span_id": list("abcd"), "span_kind": ["LLM"] * n,
        "name": ["ChatOpenAI"] * n, "start_time": [t + timedelta(seconds=i) for i in range(n)],
        "attributes.llm.cost.total": ["abc", "0.5", None, " "],
        "attributes.llm.cost.prompt": [0.01, 0.2, 0.1, None], "attributes.llm.cost.completion": [0.02, 0.3, 0.2, 0.4],
    }).write_parquet(tmp_path / "oi.parquet")
    a, b = (read_logs(tmp_path, engine=e) for e in ("polars", "duckdb"))
    _same(a, b)
    assert a.rejected.select("source_row", "reason", "detail").rows() == [(0, "bad_value:cost_usd", "abc")]
    assert a.collect().sort("step").select("step", "cost_usd").rows() == [
        (1, 0.5), (2, pytest.approx(0.3)), (3, 0.4)]
    # a numeric total: null (or NaN) falls back to the parts
    pl.DataFrame({
        "context.trace_id": ["t1"] * 3, "context.span_id": list("abc"), "span_kind": ["LLM"] * 3,
        "name": ["ChatOpenAI"] * 3, "start_time": [t + timedelta(seconds=i) for i in range(3)],
        "attributes.llm.cost.total": [1.5, None, float("nan")],
        "attributes.llm.cost.prompt": [0.01, 0.1, 0.2], "attributes.llm.cost.completion": [0.02, 0.2, None],
    }).write_parquet(tmp_path / "oi.parquet")
    a, b = (read_logs(tmp_path, engine=e) for e in ("polars", "duckdb"))
    _same(a, b)
    assert a.collect().sort("step")["cost_usd"].to_list() == [1.5, pytest.approx(0.3), 0.2]


@pytest.mark.parametrize("nested", [False, True])
def test_attributes_that_are_not_json_reject_the_span(tmp_path: Path, nested: bool) -> None:
    """Invalid JSON text attributes lost all of the span's attributes silently (a valid row
    without its tokens); the span is rejected as bad_value:attributes with the raw text.
    Null, empty and JSON-null attributes are no attributes, not an error."""
    good = ('{"gen_ai": {"operation": {"name": "chat"}, "usage": {"input_tokens": 50}}}' if nested
            else '{"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 50}')
    cut = good[:-3]
    attrs = [good, cut, None, "", " null ", "not json"]
    n = len(attrs)
    pl.DataFrame({"trace_id": ["t1"] * n, "span_id": [f"s{i}" for i in range(n)], "name": ["chat gpt-4"] * n,
                  "start_time_unix_nano": [_T0 + i * 10**9 for i in range(n)], "attributes": attrs},
                 ).write_parquet(tmp_path / "spans.parquet")
    a, b = (read_logs(tmp_path, engine=e) for e in ("polars", "duckdb"))
    _same(a, b)
    assert a.stats.reasons == {"bad_value:attributes": 2}
    assert a.rejected.select("source_row", "reason", "detail").rows() == [
        (1, "bad_value:attributes", cut), (5, "bad_value:attributes", "not json")]
    assert a.collect().sort("step").select("step", "action", "input_tokens").rows() == [
        (1, "llm", 50), (2, "llm", None), (3, "llm", None), (4, "llm", None)]


def test_json_text_attributes_are_read_in_one_parse_as_a_json_path_reads_them() -> None:
    """Every looked-up key of JSON-text attributes comes from one parse of the row (DuckDB's
    json_extract_string with all paths) and reads exactly what ``str.json_path_match`` reads:
    numbers and booleans as their text, objects and arrays as compact JSON, escapes decoded,
    the dotted spelling over the nested one; text that is not JSON reads null."""
    values = ["5", "1.0", "1e3", "-0.5", "12345678901234567890", "true", "null", '"x"', "[1,2]",
              '{"m": [1, {"r": "u"}]}', '"a\\u00e9\\n"', "0.1", '""', "[]", "{}", '"\\ud83d\\ude00"']
    rows = [f'{{"llm": {{"model_name": {v}}}}}' for v in values]
    rows += ['{"llm.model_name": "flat", "llm": {"model_name": "nested"}}', "{bad", "", None, "[1]",
             '{"session": {"id": "s1"}, "odd\\"key": 3, "a": {"": {"b": 4}}}']
    frame = pl.DataFrame({"attributes": rows}, schema={"attributes": pl.String})
    # a key with a quote (escaped in the path) and one with an empty step (looked up on its own)
    cmap = {"attributes.odd\"key": "tenant", "attributes.a..b": "team"}
    lf, schema = f.expand_nested(frame.lazy(), frame.schema, cmap)
    got = lf.collect()
    assert f.JSON_LOOKUPS not in got.columns and set(schema) == set(got.columns)
    text = pl.col("attributes")
    want = frame.select(
        pl.coalesce(text.str.json_path_match('$["llm.model_name"]'),
                    text.str.json_path_match('$["llm"]["model_name"]')).alias("m"),
        text.str.json_path_match('$["session"]["id"]').alias("s"),
    ).with_columns(pl.when(pl.Series([r == "{bad" for r in rows])).then(None).otherwise(pl.col("m")).alias("m"))
    assert got["attributes.llm.model_name"].to_list() == want["m"].to_list()
    assert got["attributes.llm.model_name"].to_list()[:4] == ["5", "1.0", "1000.0", "-0.5"]
    assert got["attributes.llm.model_name"].to_list()[len(values)] == "flat"
    assert got["attributes.session.id"].to_list() == want["s"].to_list()
    assert got['attributes.odd"key'].to_list()[-1] == "3" and got["attributes.a..b"].to_list()[-1] == "4"
    # streaming, in batches, gives the same
    assert lf.collect(engine="streaming").equals(got)


# ---------------------------------------------------------------- speed without a change of result


def _deep_traces() -> pl.DataFrame:
    """Chains 20 spans deep (past the 16 ancestry levels searched), an agent at the top or in the
    middle, a span delivered twice with another parent, a trace without agents, null ids."""
    rows = []
    for t, agent_at in (("t1", {0}), ("t2", {5, 12}), ("t3", set())):
        for i in range(20):
            rows.append({"trace_id": t, "span_id": f"s{i}", "parent_span_id": f"s{i - 1}" if i else None,
                         "op": "invoke_agent" if i in agent_at else "chat", "agent": f"a{i}" if i in agent_at else None})
    rows.append({"trace_id": "t2", "span_id": "s19", "parent_span_id": "s3", "op": "chat", "agent": None})
    rows.append({"trace_id": None, "span_id": "x", "parent_span_id": "s1", "op": "chat", "agent": None})
    rows.append({"trace_id": "t1", "span_id": None, "parent_span_id": "s1", "op": "chat", "agent": None})
    frame = pl.DataFrame(rows)
    return pl.DataFrame({
        "trace_id": frame["trace_id"], "span_id": frame["span_id"], "parent_span_id": frame["parent_span_id"],
        "name": frame["op"], "start_time_unix_nano": [1_793_527_200_000_000_000 + i for i in range(frame.height)],
        "attributes.gen_ai.operation.name": frame["op"], "attributes.gen_ai.agent.name": frame["agent"],
    })


@pytest.mark.parametrize("steps", [0, 1, 2, 4, 5])
def test_span_context_computed_once_gives_what_the_lazy_hierarchy_gives(
    monkeypatch: pytest.MonkeyPatch, steps: int
) -> None:
    """The agent context worked out once, eagerly (and stopping when no ancestor is left to look
    at), is what the lazy pointer doubling gives, however many levels are searched."""
    monkeypatch.setattr(f, "_AGENT_DOUBLING_STEPS", steps)
    raw = _deep_traces()
    lf, schema = raw.lazy(), raw.schema
    tree = f.span_tree(lf, schema, "otel")
    context = f.span_context(tree)
    assert context.columns == ["__dw_trace", "__dw_parent", "__dw_pctx"] and context.null_count().sum_horizontal().item() == 0
    lazy = s.conform(f.adapt(lf, schema, "otel", tree=tree), check=True).collect()
    eager = s.conform(f.adapt(lf, schema, "otel", context=context), check=True).collect()
    assert eager.equals(lazy)
    if steps == 4:  # (the chain in t1 is deeper than 16 levels: its spans below the 17th have no agent)
        assert lazy.filter(pl.col("run_id") == "t1")["agent"].to_list()[16:20] == ["a0", *["default"] * 3]


@pytest.mark.parametrize("engine", ["polars", "duckdb"])
def test_span_reads_give_what_they_gave_before_the_context_was_computed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """read_logs works the span context out once and joins it in every pass; building the
    hierarchy again in each pass (as before) gives the same events, rejections and stats,
    for flattened and JSON-text attributes, with a bad JSON text and a span delivered twice."""
    from driftwatch import read as r

    monkeypatch.setattr(f, "_AGENT_DOUBLING_STEPS", 2)  # (4 levels: the lazy hierarchy, read twice, stays quick)
    raw = _deep_traces()
    raw.write_parquet(tmp_path / "flat.parquet")
    attrs = [json.dumps({"gen_ai": {"operation": {"name": o}, **({"agent": {"name": a}} if a else {})}})
             for o, a in raw.select("attributes.gen_ai.operation.name", "attributes.gen_ai.agent.name").iter_rows()]
    attrs[7] = "{bad"
    raw.drop("attributes.gen_ai.operation.name", "attributes.gen_ai.agent.name").with_columns(
        pl.Series("attributes", attrs)).write_parquet(tmp_path / "json.parquet")

    def read() -> tuple[pl.DataFrame, pl.DataFrame, dict[str, object]]:
        res = read_logs([tmp_path / "flat.parquet", tmp_path / "json.parquet"], engine=engine)
        stats = res.stats.to_dict()
        stats.pop("seconds")
        return res.events.collect(), res.rejected, stats

    new = read()
    assert new[2]["reasons"]["bad_value:attributes"] == 1 and new[2]["reasons"]["duplicate_step"] >= 1
    monkeypatch.setattr(r, "_span_context", lambda *a, **k: None)  # (each pass builds the hierarchy itself)
    old = read()
    assert new[0].equals(old[0]) and new[1].equals(old[1]) and new[2] == old[2]


def test_the_json_check_from_the_lookups_parse_is_json_path_matchs() -> None:
    """The validity flag of the one DuckDB parse says what ``str.json_path_match("$")`` says, also
    for what DuckDB alone accepts beyond the JSON grammar (NaN, Infinity, trailing commas), except
    for JSON that ``json_path_match`` gives up on (nesting past 127 levels, numbers beyond the
    float range): that is valid JSON, read (a span's attributes nested deep were rejected); text
    reading JSON ``null`` is no rejection either way."""
    texts = ["{}", "[]", "1", '"x"', "true", " {} ", "\t{}\r\n", "NaN", "-Infinity", "nan", '{"a": NaN}',
             '{"a": inf}', '{"a": 1,}', "[1, 2 ,]", "1e999", '{"a": 1.8e308}', '{"a": 1.5e308}', '{"a": 1e-400}',
             '{"a": 1E0400}', "1" * 400, '{"a": ' + "9" * 309 + "}", "[" * 127 + "]" * 127, "[" * 128 + "]" * 128,
             '{"a":' * 130 + "1" + "}" * 130, '{"x": "inf, nan, [1,]"}', '{"info": "infinite"}', "{a: 1}", "{bad",
             '{"a": 1} {"b": 2}', "\ufeff{}", '{"a": "\\ud800"}', '{"a": "\\ud83d\\ude00"}', '{"a": 01}',
             '{"a": "tab\there"}', "", "  ", None]
    frame = pl.DataFrame({"attributes": texts}, schema={"attributes": pl.String})
    lf, schema = f.expand_nested(frame.lazy(), frame.schema)
    assert schema[f.JSON_OK] == pl.Boolean
    got = lf.collect()[f.JSON_OK]
    grammar = {"1e999", '{"a": 1.8e308}', '{"a": 1e-400}', '{"a": 1E0400}', "1" * 400, '{"a": ' + "9" * 309 + "}",
               "[" * 128 + "]" * 128, '{"a":' * 130 + "1" + "}" * 130}  # (JSON that json_path_match gives up on)
    want = frame["attributes"].str.json_path_match("$").is_not_null() | frame["attributes"].is_in(list(grammar))
    assert got.to_list()[:-1] == want.to_list()[:-1]
    assert not got.to_list()[texts.index("NaN")] and got.to_list()[texts.index('{"x": "inf, nan, [1,]"}')]
    # and the adapter rejects exactly the texts json_path_match cannot read
    spans = pl.DataFrame({"context.trace_id": ["t"] * len(texts), "context.span_id": [f"s{i}" for i in range(len(texts))],
                          "span_kind": ["LLM"] * len(texts), "start_time": [datetime(2026, 11, 2, tzinfo=UTC)] * len(texts),
                          "attributes": texts}, schema_overrides={"attributes": pl.String})
    out = adapted(spans, "openinference")
    blank = spans["attributes"].str.strip_chars()
    bad = ((blank != "") & (blank != "null") & want.not_()).fill_null(False)
    assert (out[s.REASON_COL] == "bad_value:attributes").fill_null(False).to_list() == bad.to_list()
