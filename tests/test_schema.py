"""Canonical schema: casting, typed nulls, timestamps, rejection reasons, validation."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from driftwatch import schema as s
from driftwatch._frames import as_lazy
from driftwatch.errors import SchemaError

UTC_TS = pl.Datetime("us", "UTC")


def _ts(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def conformed(frame: pl.DataFrame, **kw: object) -> pl.DataFrame:
    return s.conform(frame, **kw).collect()  # type: ignore[arg-type]


def test_conform_output_has_exact_canonical_schema_with_typed_nulls() -> None:
    out = conformed(pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["llm"]}))
    assert out.schema == pl.Schema(s.CANONICAL_SCHEMA)
    row = out.row(0, named=True)
    assert row["agent"] == s.DEFAULT_AGENT
    assert all(row[c] is None for c in s.OPTIONAL if c != "agent")
    s.validate_events(out)


def test_int32_tokens_float_costs_and_text_numbers_are_cast() -> None:
    raw = pl.DataFrame(
        {
            "run_id": ["r", "r", "r"],
            "step": pl.Series([1, 2, 3], dtype=pl.Int32),
            "action": ["a", "b", "c"],
            "input_tokens": pl.Series([10, None, 7], dtype=pl.Int32),
            "output_tokens": [3.0, 4.0, None],  # pandas writes nullable ints as floats
            "cost_usd": pl.Series([0.5, 1.0, 2.0], dtype=pl.Float32),
            "latency_ms": ["12.5", " 3 ", None],
            "confidence": pl.Series([1, 0, 1], dtype=pl.UInt8),
            "approved": ["yes", "False", None],
            "version": pl.Series([1, 2, 3], dtype=pl.Int16),
        }
    )
    out = conformed(raw, check=True)
    assert out.schema[s.REASON_COL] == pl.String
    assert out.get_column(s.REASON_COL).null_count() == 3
    assert out["step"].to_list() == [1, 2, 3]
    assert out["input_tokens"].to_list() == [10, None, 7]
    assert out["output_tokens"].to_list() == [3, 4, None]
    assert out["latency_ms"].to_list() == [12.5, 3.0, None]
    assert out["confidence"].to_list() == [1.0, 0.0, 1.0]
    assert out["approved"].to_list() == [True, False, None]
    assert out["version"].to_list() == ["1", "2", "3"]
    assert out.select(pl.exclude(s.REASON_COL, s.DETAIL_COL)).schema == pl.Schema(s.CANONICAL_SCHEMA)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01T10:00:00Z", _ts(2026, 11, 1, 10)),
        ("2026-11-01T10:00:00+02:00", _ts(2026, 11, 1, 8)),
        ("2026-11-01 10:00:00.250-05:30", datetime(2026, 11, 1, 15, 30, 0, 250000, tzinfo=UTC)),
        ("2026-11-01T10:00:00+0200", _ts(2026, 11, 1, 8)),
        ("2026-11-01T10:00:00", _ts(2026, 11, 1, 10)),  # naive text is UTC
        ("2026-11-01T10:00:00.123456789Z", datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-01 10:00", _ts(2026, 11, 1, 10)),
        ("2026-11-01", _ts(2026, 11, 1)),
        ("  2026-11-01T10:00:00z ", _ts(2026, 11, 1, 10)),
    ],
)
def test_iso8601_text_timestamps(text: str, expected: datetime) -> None:
    out = conformed(pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"], "ts": [text]}), check=True)
    assert out["ts"].dtype == UTC_TS
    assert out["ts"].item() == expected
    assert out[s.REASON_COL].item() is None


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (1_793_527_200, pl.Int64),  # seconds
        (1_793_527_200_000, pl.Int64),  # milliseconds
        (1_793_527_200_000_000, pl.Int64),  # microseconds
        (1_793_527_200_000_000_000, pl.Int64),  # nanoseconds (OTel)
        (1_793_527_200, pl.UInt32),
        (1_793_527_200.0, pl.Float64),  # time.time()
        (1_793_527_200_000.0, pl.Float64),
    ],
)
def test_epoch_numbers_in_any_unit(value: float, dtype: pl.DataType) -> None:
    raw = pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"], "ts": pl.Series([value], dtype=dtype)})
    assert conformed(raw)["ts"].item() == _ts(2026, 11, 1, 10)


def test_epoch_keeps_sub_second_precision() -> None:
    raw = pl.DataFrame({"run_id": ["r"] * 2, "step": [1, 2], "action": ["a"] * 2,
                        "ts": [1_793_527_200_123_456_789, 1_793_527_200_123_456]})
    got = conformed(raw)["ts"].to_list()
    assert got == [datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=UTC)] * 2
    floats = pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"], "ts": [1_793_527_200.25]})
    assert conformed(floats)["ts"].item() == datetime(2026, 11, 1, 10, 0, 0, 250000, tzinfo=UTC)


def test_datetimes_in_other_zones_units_and_dates_become_utc_microseconds() -> None:
    berlin = pl.Series([datetime(2026, 11, 1, 11, 0)]).dt.replace_time_zone("Europe/Berlin").dt.cast_time_unit("ns")
    naive_ms = pl.Series([datetime(2026, 11, 1, 10, 0)]).dt.cast_time_unit("ms")
    for series in (berlin, naive_ms):
        raw = pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"], "ts": series})
        out = conformed(raw)
        assert out["ts"].dtype == UTC_TS
        assert out["ts"].item() == _ts(2026, 11, 1, 10)
    day = pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"], "ts": [date(2026, 11, 1)]})
    assert conformed(day)["ts"].item() == _ts(2026, 11, 1)


def test_unparseable_and_out_of_range_timestamps_are_rejected_with_the_raw_value() -> None:
    raw = pl.DataFrame({"run_id": ["r"] * 4, "step": [1, 2, 3, 4], "action": ["a"] * 4,
                        "ts": ["yesterday", "2026-13-01T00:00:00", "", None]})
    out = conformed(raw, check=True)
    assert out[s.REASON_COL].to_list() == ["bad_ts", "bad_ts", None, None]
    assert out[s.DETAIL_COL].to_list() == ["yesterday", "2026-13-01T00:00:00", None, None]
    inf = pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"], "ts": [float("inf")]})
    assert conformed(inf, check=True)[s.REASON_COL].item() == "bad_ts"


def test_timestamps_outside_1970_to_9999_are_rejected() -> None:
    """Year 12026 failed a whole audit (Python's datetime ends in 9999); year 1 stretched every
    time series of the fleet over two thousand years."""
    text = ["+12026-10-01T00:00:00Z", "0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-10-01T00:00:00Z"]
    raw = pl.DataFrame({"run_id": ["r"] * 6, "step": range(1, 7), "action": ["a"] * 6, "ts": text})
    out = conformed(raw, check=True)
    assert out[s.REASON_COL].to_list() == ["bad_ts", "bad_ts", "bad_ts", None, None, None]
    assert out["ts"].to_list()[3:] == [_ts(1970, 1, 1), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
                                        _ts(2026, 10, 1)]
    native = raw.with_columns(pl.col("ts").str.to_datetime(strict=False, time_zone="UTC"))
    native = native.with_columns(pl.when(pl.col("step") == 1).then(pl.datetime(12026, 10, 1, time_zone="UTC"))
                                 .otherwise(pl.col("ts")).alias("ts"))
    assert conformed(native, check=True)[s.REASON_COL].to_list() == ["bad_ts", "bad_ts", "bad_ts", None, None, None]


def test_every_reason_in_priority_order() -> None:
    raw = pl.DataFrame(
        {
            "run_id": [None, "  ", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r"],
            "step": ["1", "2", "3", "4", "x", None, "7", "8", "9", "10", "11", "12", "13", "14", "2.5"],
            "action": ["a", "a", "", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a"],
            "ts": ["2026-11-01"] * 3 + ["nope"] + ["2026-11-01"] * 11,
            "input_tokens": [1, 1, 1, 1, 1, 1, -1, 1, 1, 1, 1, 1, 1, 1, 1],
            "output_tokens": ["1", "1", "1", "1", "1", "1", "1", "-2", "abc", "1", "1", "1", "1", "1", "1"],
            "cost_usd": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, -0.5, float("inf"), 0.1, 0.1, 0.1, 0.1],
            "latency_ms": [1.0] * 11 + [-3.0, 1.0, 1.0, 1.0],
            "confidence": [0.5] * 12 + [1.5, 0.5, 0.5],
            "status": ["ok"] * 13 + ["maybe", "ok"],
        }
    )
    out = conformed(raw, check=True)
    assert out[s.REASON_COL].to_list() == [
        "null_run_id", "null_run_id", "null_action", "bad_ts", "bad_value:step", "null_step", "negative_tokens",
        "negative_tokens", "bad_value:output_tokens", "negative_cost", "bad_value:cost_usd", "negative_latency",
        "bad_confidence", "bad_status", "bad_value:step",
    ]
    detail = dict(zip(out[s.REASON_COL].to_list(), out[s.DETAIL_COL].to_list(), strict=False))
    assert detail["bad_ts"] == "nope"
    assert detail["negative_cost"] == "cost_usd=-0.5"
    assert detail["bad_value:output_tokens"] == "abc"
    assert detail["bad_confidence"] == "confidence=1.5"
    assert detail["bad_status"] == "maybe"
    assert detail["bad_value:cost_usd"] == "inf"
    assert out.filter(pl.col(s.REASON_COL) == "negative_tokens")[s.DETAIL_COL].to_list() == [
        "input_tokens=-1", "output_tokens=-2"]
    assert set(r.split(":")[0] for r in out[s.REASON_COL]) <= set(s.REJECT_REASONS)


def test_nan_is_missing_not_rejected() -> None:
    raw = pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"], "cost_usd": [float("nan")],
                        "input_tokens": [float("nan")], "approved": [float("nan")]})
    out = conformed(raw, check=True)
    assert out[s.REASON_COL].item() is None
    assert out.select("cost_usd", "input_tokens", "approved").row(0) == (None, None, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("OK", "ok"), ("Success", "ok"), ("SUCCEEDED", "ok"), ("completed", "ok"), ("STATUS_CODE_UNSET", "ok"),
     ("ERROR", "error"), ("failed", "error"), ("Failure", "error"), ("timeout", "error"),
     ("CANCELLED", "error"), ("status_code_error", "error"), ("ok", "ok"), ("error", "error")],
)
def test_status_spellings_are_normalised(raw: str, expected: str) -> None:
    out = conformed(pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"], "status": [raw]}), check=True)
    assert out["status"].item() == expected
    assert out[s.REASON_COL].item() is None


def test_status_booleans_and_blank() -> None:
    raw = pl.DataFrame({"run_id": ["r"] * 3, "step": [1, 2, 3], "action": ["a"] * 3, "status": [True, False, None]})
    assert conformed(raw, check=True)["status"].to_list() == ["ok", "error", None]
    blank = pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"], "status": [""]})
    out = conformed(blank, check=True)
    assert out["status"].item() is None and out[s.REASON_COL].item() is None


def test_agent_defaults_for_missing_null_and_blank() -> None:
    raw = pl.DataFrame({"run_id": ["r"] * 3, "step": [1, 2, 3], "action": ["a"] * 3, "agent": ["planner", None, ""]})
    assert conformed(raw, check=True)["agent"].to_list() == ["planner", "default", "default"]


def test_nested_args_become_json_and_binary_ids_hex() -> None:
    raw = pl.DataFrame(
        {
            "run_id": [b"\x01\xab", b"\x02"],
            "step": [1, 2],
            "action": ["search", "llm"],
            "args": [{"q": "x", "page": 1}, None],
            "result": [[{"role": "assistant", "content": "hi"}], []],
        }
    )
    out = conformed(raw, check=True)
    assert out["run_id"].to_list() == ["01ab", "02"]
    assert out["args"].to_list() == ['{"q":"x","page":1}', None]
    assert out["result"].to_list() == ['[{"role":"assistant","content":"hi"}]', "[]"]


def _binary_text_reference(b: bytes) -> str:
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError:
        return b.hex()
    controls = set(range(32)) - {9, 10, 13} | {127}
    return b.hex() if any(ord(c) in controls for c in text) else text


def test_binary_text_is_the_utf8_text_where_valid_and_hex_elsewhere() -> None:
    """Text written without Parquet's UTF-8 annotation reads as text; id bytes stay hex.
    Checked against Python's own strict decoder on edge cases and 100,000 random values."""
    import random

    edge = [b"ok", b"caf\xc3\xa9", b"\xf0\x9f\x98\x80", b"\xe2\x82\xac", b"", b"tab\tline\nCR\r",
            b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"nul\x00", b"\x7f"]
    rng = random.Random(3)
    rand = [bytes(rng.choice(b"ab\t\x00\x7f\x80\xbf\xc2\xe0\xed\xf0\xf4\xff\xa0\x90") for _ in range(rng.randint(0, 6)))
            for _ in range(100_000)]
    values = [*edge, *rand, None]
    got = pl.DataFrame({"x": pl.Series(values, dtype=pl.Binary)}).lazy().select(
        s.binary_text(pl.col("x"))).collect(engine="streaming")["x"].to_list()
    assert got == [None if v is None else _binary_text_reference(v) for v in values]
    assert got[:6] == ["ok", "café", "😀", "€", "", "tab\tline\nCR\r"]
    assert sum(g != (v or b"").hex() for g, v in zip(got[len(edge):-1], rand, strict=True)) > 1000  # both kinds


def test_step_derived_from_ts_order_with_stable_ties_and_only_valid_rows() -> None:
    raw = pl.DataFrame(
        {
            "run_id": ["a", "a", "a", "b", "a", "a"],
            "ts": ["2026-11-01T00:00:03Z", "2026-11-01T00:00:01Z", "2026-11-01T00:00:01Z", "2026-11-01T00:00:00Z",
                   None, "2026-11-01T00:00:02Z"],
            "action": ["x", "y", "z", "w", "v", None],
            "order": [0, 1, 2, 3, 4, 5],
        }
    )
    out = conformed(raw, check=True, order_by=("order",))
    assert out["step"].to_list() == [3, 1, 2, 1, None, None]
    assert out[s.REASON_COL].to_list() == [None, None, None, None, "null_ts", "null_action"]
    assert out.columns[-3:] == ["order", s.REASON_COL, s.DETAIL_COL]


def test_missing_required_columns_name_what_was_found() -> None:
    with pytest.raises(SchemaError, match=r"logs\.parquet: missing required column\(s\) \['action', 'step \(or ts\)'\]"):
        s.conform(pl.DataFrame({"run_id": ["r"], "tool": ["x"]}), where="logs.parquet")
    with pytest.raises(SchemaError, match=r"found \['run_id', 'tool'\]"):
        s.conform(pl.DataFrame({"run_id": ["r"], "tool": ["x"]}))


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("run_id", pl.Series([[1, 2]]), "text"),
        ("ts", pl.Series([True]), "a datetime"),
        ("input_tokens", pl.Series([datetime(2026, 1, 1)]), "an integer"),
        ("cost_usd", pl.Series([[1.0]]), "a number"),
        ("approved", pl.Series([date(2026, 1, 1)]), "a boolean"),
        ("agent", pl.Series([{"a": 1}]), "text"),
    ],
)
def test_unconvertible_types_raise_schema_error(column: str, values: pl.Series, expected: str) -> None:
    base = {"run_id": ["r"], "step": [1], "action": ["a"]}
    base[column] = values  # type: ignore[assignment]
    with pytest.raises(SchemaError, match=rf"f\.parquet: column '{column}' has type .*; expected {expected}"):
        s.conform(pl.DataFrame(base), where="f.parquet")


def test_validate_events_names_missing_and_wrong_columns() -> None:
    with pytest.raises(SchemaError, match=r"missing canonical column\(s\) \['agent'"):
        s.validate_events(pl.DataFrame({"run_id": ["r"], "step": [1], "ts": [None], "action": ["a"]}))
    bad = s.empty_events().with_columns(pl.col("step").cast(pl.Int32))
    with pytest.raises(SchemaError, match="step is Int32, expected Int64"):
        s.validate_events(bad.lazy())
    s.validate_events(s.empty_events())


def test_conform_keep_extra_and_unchecked_mode_keeps_values() -> None:
    raw = pl.DataFrame({"run_id": ["r"], "step": [1], "action": [" "], "status": ["OK"], "span": ["s1"]})
    out = conformed(raw, keep_extra=True)
    assert out.columns == [*s.COLUMNS, "span"]
    # without normalize the values pass through untouched (as_lazy on user frames)
    assert out.select("action", "status").row(0) == (" ", "OK")


def test_as_lazy_uses_conform() -> None:
    raw = pl.DataFrame({"run_id": [1, 1], "ts": ["2026-11-01T00:00:02+01:00", "2026-11-01T00:00:01Z"],
                        "action": ["a", "b"], "input_tokens": pl.Series([5, 6], dtype=pl.Int32), "x": [1, 2]})
    out = as_lazy(raw).collect()
    assert out.columns == [*s.COLUMNS, "x"]
    assert out["step"].to_list() == [1, 2]
    assert out["ts"].to_list() == [_ts(2026, 10, 31, 23, 0, 2), _ts(2026, 11, 1, 0, 0, 1)]
    assert out["input_tokens"].dtype == pl.Int64
    canonical = s.conform(raw).collect()
    assert_frame_equal(as_lazy(canonical).collect(), canonical)


def test_conform_rejects_non_frames() -> None:
    from driftwatch.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="got dict"):
        s.conform({"run_id": [1]})  # type: ignore[arg-type]


def test_a_required_column_in_another_case_is_pointed_at() -> None:
    with pytest.raises(SchemaError, match=r"found \['run_id', 'Step', 'Action'\] \(column names are case-sensitive: "
                       r"rename, or read with column_map=\{'Step': 'step', 'Action': 'action'\}; "
                       r"CLI: --map Step=step --map Action=action\)"):
        s.check_required(["run_id"], where="f.parquet", found=["run_id", "Step", "Action"])


def test_token_counts_past_a_trillion_are_rejected_before_they_wrap_a_sum() -> None:
    """Two steps of 2**62 input tokens each were read, and the run's sum wrapped around to
    -9.2e18 tokens: no max_tokens breach, the run ok. Counts above MAX_STEP_TOKENS are rejected
    by the reader (bad_value:<column>) and refused by the detectors given a frame."""
    import driftwatch as dw
    from driftwatch.errors import SchemaError

    raw = pl.DataFrame({"run_id": ["a", "a", "b"], "step": [1, 2, 1], "action": ["llm"] * 3,
                        "input_tokens": [2**62, s.MAX_STEP_TOKENS, 5], "output_tokens": [1, 2, 2**40]})
    out = s.conform(raw, check=True).collect()
    assert out.select(s.REASON_COL, s.DETAIL_COL).rows() == [
        ("bad_value:input_tokens", f"input_tokens={2**62}"), (None, None), ("bad_value:output_tokens", f"output_tokens={2**40}"),
    ]
    with pytest.raises(SchemaError, match=r"'input_tokens'.*a whole number in \[0, 1e12\]"):
        dw.check_policy(raw)


def test_step_costs_and_latencies_whose_sums_overflow_are_rejected() -> None:
    """A step cost of 1e308 is finite, but its run's sum is inf: the run read 'cost $inf > ceiling'
    and the fleet's spend as unknown. Costs above MAX_STEP_COST_USD and latencies above
    MAX_STEP_LATENCY_MS are bad values, on every engine (they share these checks)."""
    import driftwatch as dw

    raw = pl.DataFrame({"run_id": ["a", "a", "b", "b"], "step": [1, 2, 1, 2], "action": ["llm"] * 4,
                        "cost_usd": [1e308, 1e308, s.MAX_STEP_COST_USD, 0.5],
                        "latency_ms": [1.0, 2.0, 3.0, 1e300]})
    out = s.conform(raw, check=True).collect()
    assert out[s.REASON_COL].to_list() == ["bad_value:cost_usd", "bad_value:cost_usd", None, "bad_value:latency_ms"]
    assert out[s.DETAIL_COL][0] == "cost_usd=1e+308"
    res = dw.audit(raw)
    assert res.stats["rows_rejected"] == 3 and res.summary()["cost"]["total_usd"] == s.MAX_STEP_COST_USD


def test_a_frame_missing_a_column_lists_only_its_own_columns() -> None:
    """The frame check numbers rows in a working column; the message listed it as found."""
    import driftwatch as dw
    from driftwatch.errors import SchemaError

    with pytest.raises(SchemaError, match=r"found \['run_id', 'step', 'Action'\] \(column names"):
        dw.audit(pl.DataFrame({"run_id": ["a"], "step": [1], "Action": ["x"]}))
