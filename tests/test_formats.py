"""Format adapters: detection, OTel GenAI spans, OpenInference spans, column_map."""

from __future__ import annotations

from datetime import UTC, datetime
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
