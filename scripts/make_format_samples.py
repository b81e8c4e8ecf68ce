"""Write the small OTel GenAI and OpenInference span samples under ``sample_logs/``.

Both samples describe the same kind of fleet: a ``triage`` agent that answers support
requests with tools and sometimes hands off to a ``billing`` agent. They are real-shaped:

* ``sample_logs/otel/spans-0.parquet``, ``spans-1.parquet``: OpenTelemetry spans flattened to
  columns the way OTLP-to-Parquet sinks write them (``trace_id``, ``span_id``,
  ``parent_span_id``, ``start_time_unix_nano``, ``status_code`` as ``STATUS_CODE_*``,
  ``attributes.gen_ai.*``). Traces mix the current semantic conventions
  (``gen_ai.usage.input_tokens``) with the deprecated ones (``gen_ai.usage.prompt_tokens``) as
  fleets on several instrumentation versions do, carry the HTTP client spans an instrumented
  SDK emits under each chat span, and one trace is stuck calling the same tool.
* ``sample_logs/openinference/spans.parquet``: a Phoenix span dataframe
  (``px.Client().get_spans_dataframe()`` saved to Parquet): ``context.trace_id``, ``span_kind``,
  ``parent_id``, ``start_time`` / ``end_time`` timestamps, ``attributes.llm.token_count.*``,
  ``attributes.llm.cost.total``, ``attributes.input.value``, ... with a LangChain-style CHAIN
  wrapper span at the root.

Deterministic: the same seed writes the same content. Run from the repository root::

    python scripts/make_format_samples.py
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
TRIAGE_TOOLS = ("search_kb", "get_order", "get_customer", "create_ticket")
BILLING_TOOLS = ("get_invoice", "refund_payment")
MODEL = "gpt-4.1-mini"


class _Ids:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def hex(self, nbytes: int) -> str:
        return bytes(self.rng.integers(0, 256, nbytes, dtype=np.uint8).tolist()).hex()


def _plan(rng: np.random.Generator, n_traces: int) -> list[dict]:
    """The steps of each trace: (agent, kind, tool, args, result, error) in order."""
    traces = []
    for t in range(n_traces):
        steps: list[tuple] = []
        n_tools = int(rng.integers(1, 4))
        for i in range(n_tools):
            tool = TRIAGE_TOOLS[int(rng.integers(0, len(TRIAGE_TOOLS)))]
            args = {"query": f"order {1000 + t} item {i}"} if tool == "search_kb" else {"id": f"C{4000 + t}"}
            error = "TimeoutError" if rng.random() < 0.12 else None
            steps.append(("triage", "chat", None, None, None, None))
            steps.append(("triage", "tool", tool, args, None if error else {"ok": True, "n": int(rng.integers(1, 9))}, error))
        if t == 5:  # a stuck run: the same call, the same answer, again and again
            for _ in range(5):
                steps.append(("triage", "chat", None, None, None, None))
                steps.append(("triage", "tool", "get_order", {"id": "C4005"}, {"status": "pending"}, None))
        if t % 4 == 1:  # hand-off to billing
            steps.append(("triage", "handoff", "billing", None, None, None))
            for tool in BILLING_TOOLS[: int(rng.integers(1, 3))]:
                steps.append(("billing", "chat", None, None, None, None))
                steps.append(("billing", "tool", tool, {"invoice": f"INV-{t:04d}"}, {"done": True}, None))
            steps.append(("billing", "chat", None, None, None, None))
        steps.append(("triage", "chat", None, None, None, None))
        traces.append({"steps": steps, "start": START + timedelta(seconds=95 * t + int(rng.integers(0, 30)))})
    return traces


def _messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}], separators=(",", ":"))


def make_otel(rng: np.random.Generator, n_traces: int = 24) -> pl.DataFrame:
    """OTel GenAI spans flattened to columns (one row per span)."""
    ids = _Ids(rng)
    rows: list[dict] = []
    for t, trace in enumerate(_plan(rng, n_traces)):
        trace_id, conv = ids.hex(16), f"conv-{t:03d}"
        legacy = t % 3 == 2  # an older instrumentation: deprecated token attribute names
        clock = trace["start"]

        def span(name: str, parent: str, start: datetime, dur_ms: float, *, _trace: str = trace_id,
                 _conv: str = conv, **attrs: object) -> dict:
            sid = ids.hex(8)
            row = {
                "trace_id": _trace, "span_id": sid, "parent_span_id": parent, "name": name,
                "kind": attrs.pop("kind", "SPAN_KIND_INTERNAL"),
                "start_time_unix_nano": int(start.timestamp() * 1e9) + int(rng.integers(0, 1000)),
                "end_time_unix_nano": int((start + timedelta(milliseconds=dur_ms)).timestamp() * 1e9),
                "status_code": attrs.pop("status", "STATUS_CODE_UNSET"), "status_message": attrs.pop("message", ""),
                "resource.service.name": "support-bot",
                "attributes.gen_ai.conversation.id": _conv,
            }
            row.update({f"attributes.{k}": v for k, v in attrs.items()})
            rows.append(row)
            return row

        steps = trace["steps"]
        total_ms = 0.0
        root = span("invoke_agent triage", "", clock, 1.0, **{"gen_ai.operation.name": "invoke_agent",
                                                             "gen_ai.agent.name": "triage", "gen_ai.agent.id": "ag-triage",
                                                             "gen_ai.provider.name": "openai"})
        parent = {"triage": root["span_id"]}
        clock += timedelta(milliseconds=15)
        for agent, kind, tool, args, result, error in steps:
            if kind == "chat":
                dur = float(rng.gamma(4.0, 180.0))
                tin, tout = int(rng.integers(300, 2400)), int(rng.integers(20, 400))
                usage = ({"gen_ai.usage.prompt_tokens": tin, "gen_ai.usage.completion_tokens": tout} if legacy
                         else {"gen_ai.usage.input_tokens": tin, "gen_ai.usage.output_tokens": tout})
                chat = span(f"chat {MODEL}", parent[agent], clock, dur, kind="SPAN_KIND_CLIENT", **{
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": MODEL, "gen_ai.response.model": MODEL + "-2026-04-14",
                    "gen_ai.input.messages": _messages("user", f"step context {len(rows)}"),
                    "gen_ai.output.messages": _messages("assistant", f"thinking {len(rows)}"),
                    **usage,
                })
                # the HTTP client span the OpenAI SDK instrumentation nests under the chat span
                span("POST /v1/chat/completions", chat["span_id"], clock + timedelta(milliseconds=2), dur - 4,
                     kind="SPAN_KIND_CLIENT", **{"http.request.method": "POST", "http.response.status_code": 200})
            elif kind == "tool":
                dur = float(rng.gamma(2.0, 60.0)) + (3000.0 if error else 0.0)
                extra = {"status": "STATUS_CODE_ERROR", "message": f"{tool} timed out after 3s",
                         "error.type": error} if error else {}
                span(f"execute_tool {tool}", parent[agent], clock, dur, **{
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
                    "gen_ai.tool.type": "function", "gen_ai.tool.call.id": "call_" + ids.hex(6),
                    "gen_ai.tool.call.arguments": json.dumps(args, separators=(",", ":")),
                    "gen_ai.tool.call.result": None if result is None else json.dumps(result, separators=(",", ":")),
                }, **extra)
            else:  # hand-off: invoke_agent billing under the triage root
                dur = 1.0
                sub = span(f"invoke_agent {tool}", parent[agent], clock, dur, **{
                    "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": tool, "gen_ai.agent.id": f"ag-{tool}",
                })
                parent[tool] = sub["span_id"]
            clock += timedelta(milliseconds=dur + float(rng.integers(5, 40)))
            total_ms = (clock - trace["start"]).total_seconds() * 1e3
        root["end_time_unix_nano"] = int((trace["start"] + timedelta(milliseconds=total_ms)).timestamp() * 1e9)
        root["status_code"] = "STATUS_CODE_OK"
    frame = pl.DataFrame(rows, infer_schema_length=None)
    int_cols = [c for c in frame.columns if c.endswith("_tokens") or c.endswith("status_code") and "http" in c]
    return frame.with_columns(pl.col(int_cols).cast(pl.Int64)).sort("start_time_unix_nano")


def make_openinference(rng: np.random.Generator, n_traces: int = 20) -> pl.DataFrame:
    """A Phoenix spans dataframe (``get_spans_dataframe()``) for the same kind of fleet."""
    ids = _Ids(rng)
    rows: list[dict] = []
    for t, trace in enumerate(_plan(rng, n_traces)):
        trace_id, session = ids.hex(16), f"session-{t // 2:03d}"
        clock = trace["start"]

        def span(name: str, kind: str, parent: str | None, start: datetime, dur_ms: float, *,
                 _trace: str = trace_id, _session: str = session, **attrs: object) -> dict:
            row = {
                "name": name, "span_kind": kind, "parent_id": parent,
                "start_time": start, "end_time": start + timedelta(milliseconds=dur_ms),
                "status_code": attrs.pop("status", "OK"), "status_message": attrs.pop("message", ""),
                "context.span_id": ids.hex(8), "context.trace_id": _trace,
                "attributes.openinference.span.kind": kind, "attributes.session.id": _session,
            }
            row.update({f"attributes.{k}": v for k, v in attrs.items()})
            rows.append(row)
            return row

        chain = span("AgentExecutor", "CHAIN", None, clock, 1.0, **{"input.value": f"customer {4000 + t} asks about an order"})
        agent_span = span("triage", "AGENT", chain["context.span_id"], clock + timedelta(milliseconds=1), 1.0,
                          **{"agent.name": "triage"})
        parent = {"triage": agent_span["context.span_id"]}
        clock += timedelta(milliseconds=20)
        for agent, kind, tool, args, result, error in trace["steps"]:
            if kind == "chat":
                dur = float(rng.gamma(4.0, 180.0))
                tin, tout = int(rng.integers(300, 2400)), int(rng.integers(20, 400))
                span("ChatOpenAI", "LLM", parent[agent], clock, dur, **{
                    "llm.model_name": MODEL, "llm.provider": "openai", "llm.system": "openai",
                    "llm.token_count.prompt": tin, "llm.token_count.completion": tout,
                    "llm.token_count.total": tin + tout,
                    "llm.cost.prompt": round(tin * 0.4e-6, 8), "llm.cost.completion": round(tout * 1.6e-6, 8),
                    "llm.cost.total": round(tin * 0.4e-6 + tout * 1.6e-6, 8),
                    "input.value": f"step context {len(rows)}", "input.mime_type": "text/plain",
                    "output.value": f"thinking {len(rows)}", "output.mime_type": "text/plain",
                })
            elif kind == "tool":
                dur = float(rng.gamma(2.0, 60.0)) + (3000.0 if error else 0.0)
                extra = {"status": "ERROR", "message": f"{error}: {tool} timed out after 3s"} if error else {}
                span(tool, "TOOL", parent[agent], clock, dur, **{
                    "tool.name": tool, "tool.description": f"the {tool} tool",
                    "input.value": json.dumps(args, separators=(",", ":")), "input.mime_type": "application/json",
                    "output.value": None if result is None else json.dumps(result, separators=(",", ":")),
                }, **extra)
            else:
                dur = 1.0
                sub = span(tool, "AGENT", parent[agent], clock, dur, **{"agent.name": tool})
                parent[tool] = sub["context.span_id"]
            clock += timedelta(milliseconds=dur + float(rng.integers(5, 40)))
        total = clock - trace["start"]
        chain["end_time"] = trace["start"] + total
        agent_span["end_time"] = trace["start"] + total
    frame = pl.DataFrame(rows, infer_schema_length=None)
    return frame.with_columns(
        pl.col("start_time", "end_time").dt.cast_time_unit("ns"),
        pl.col("^attributes\\.llm\\.token_count\\..*$").cast(pl.Int64),
    ).sort("start_time")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="sample_logs", help="root folder (default: sample_logs)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    root = Path(args.out)
    otel = make_otel(np.random.default_rng(args.seed))
    (root / "otel").mkdir(parents=True, exist_ok=True)
    traces = otel.get_column("trace_id").unique(maintain_order=True).to_list()
    half = set(traces[: len(traces) // 2])
    otel.filter(pl.col("trace_id").is_in(half)).write_parquet(root / "otel" / "spans-0.parquet")
    otel.filter(~pl.col("trace_id").is_in(half)).write_parquet(root / "otel" / "spans-1.parquet")
    oi = make_openinference(np.random.default_rng(args.seed + 1))
    (root / "openinference").mkdir(parents=True, exist_ok=True)
    oi.write_parquet(root / "openinference" / "spans.parquet")
    print(f"wrote {otel.height} OTel spans ({len(traces)} traces) and {oi.height} OpenInference spans under {root}/")


if __name__ == "__main__":
    main()
