"""Shared frame helpers: duration strings and series keys, checked at every public boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import driftwatch as dw
from driftwatch import _frames
from driftwatch._frames import duration_seconds, normalize_by, series_expr, series_keys, series_label
from driftwatch.errors import InvalidParameterError
from driftwatch.schema import CANONICAL_SCHEMA


@pytest.mark.parametrize(("text", "seconds"), [("1m", 60), ("1d", 86_400), ("1d12h", 129_600), ("2w", 1_209_600),
                                               ("500ms", 0.5), ("1h30m", 5_400)])
def test_durations_single_and_compound(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0m", "0d", "0d0h"])
def test_zero_durations_are_refused(text: str) -> None:
    """A zero bucket made the change-point grid divide by zero ("conversion from f64 to i64")."""
    with pytest.raises(InvalidParameterError, match="drift_every must be a positive duration"):
        duration_seconds(text, name="drift_every")


# (" 1h30m " was read here and then passed as it is to Polars, which failed on the space:
# the detectors' callers give the string to dt.truncate, so spaces are refused here)
@pytest.mark.parametrize("text", ["1x", "d1", "1.5h", "", "-1d", 3600, " 1h30m ", "1d\n"])
def test_malformed_durations_are_refused(text: object) -> None:
    with pytest.raises(InvalidParameterError, match="every must be a Polars duration string"):
        duration_seconds(text)  # type: ignore[arg-type]


def test_series_keys_are_distinct_column_names() -> None:
    assert normalize_by(None) == ()
    assert normalize_by("agent") == ("agent",)
    assert normalize_by(["agent", "version", "agent"]) == ("agent", "version")  # --by agent,version,agent
    for bad in (["run_id"], ["agent", "bucket"], "series", [1], [""], 5):
        with pytest.raises(InvalidParameterError, match=r"by \(--by\)"):
            normalize_by(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("column", ["action", "cost_usd", "latency_ms", "outcome", "status"])
def test_measured_columns_are_not_series_labels(column: str) -> None:
    """by="cost_usd" (or action, latency_ms, outcome) crashed with Polars' DuplicateError: they
    are columns of the tables the series are built from. Now one clear message, everywhere."""
    import driftwatch as dw
    from driftwatch import synth

    ev = synth.generate(days=3, runs_per_day=20, seed=2).events
    for call in (dw.detect_changepoints, dw.cost_profile, dw.load_curve, dw.audit,
                 lambda e, by: dw.detect_drift(e, reference="1d", by=by)):
        with pytest.raises(InvalidParameterError, match=f"cannot group by '{column}': it is measured at every step"):
            call(ev, by=column)
    assert dw.detect_changepoints(ev.with_columns(tenant=pl.lit("t1")), by="tenant")["series"].unique().to_list() in (
        [], ["tenant=t1"])


def test_status_spellings_mean_the_same_to_every_detector() -> None:
    """A boolean, ``failed`` or ``ERROR`` status made the detectors see no error at all while
    ``dw.audit`` on the same frame (the reader's mapping) found the retry storm."""
    import polars as pl

    import driftwatch as dw
    from driftwatch._frames import as_lazy

    acts = ["plan"] + ["search"] * 6 + ["final"]

    def frame(good: object, bad: object) -> pl.DataFrame:
        return pl.DataFrame({"run_id": "r1", "step": range(1, 9), "action": acts, "args": "q",
                             "status": [good] + [bad] * 6 + [good], "result": "boom"})

    expected = None
    for good, bad in (("ok", "error"), (True, False), ("success", "failed"), ("OK", "ERROR")):
        ev = frame(good, bad)
        for given in (ev, ev.lazy()):
            assert as_lazy(given).collect()["status"].to_list() == ["ok"] + ["error"] * 6 + ["ok"]
        got = (dw.detect_loops(ev).select("kind", "error_share").rows(),
               dw.check_policy(ev, dw.Policy())["rule"].to_list(),
               dw.score_runs(ev).select("level", "n_errors").rows())
        assert got[0] == [("error_retry", 1.0)] and got[2] == [("escalate", 6)]
        expected = expected or got
        assert got == expected
    # already canonical: passed through (the audit's own frames are never re-mapped)
    canonical = frame("ok", "error").with_columns(pl.col("status").cast(pl.String))
    assert as_lazy(canonical).collect().equals(as_lazy(canonical.lazy()).collect())


@pytest.mark.parametrize(("column", "values", "shown"), [
    ("step", ["1", "2", "abc"], "'abc'"),
    ("step", [1.0, 2.5, 3.0], "'2.5'"),
    ("cost_usd", ["0.1", "x", "0.2"], "'x'"),
    ("cost_usd", [0.1, float("inf"), 0.2], "'inf'"),
    ("ts", ["2026-10-01T00:00:00Z", "yesterday", "2026-10-01T00:00:02Z"], "'yesterday'"),
    ("approved", ["yes", "maybe", "no"], "'maybe'"),
    # values the reader rejects although they convert (a probe found -0.5 confidence escalated
    # at score 1.0 and 87.0, a percent scale, read as confident)
    ("confidence", [0.5, -0.5, 0.9], "in \\[0, 1\\].*'-0.5'"),
    ("confidence", [0.5, 87.0, 0.9], "in \\[0, 1\\].*'87.0'"),
    ("input_tokens", [10, -1, 3], r"in \[0, 1e12\].*'-1'"),
    ("output_tokens", [10, 10**13, 3], r"in \[0, 1e12\].*'10000000000000'"),
    ("latency_ms", [10.0, -1.0, 3.0], r"in \[0, 1e12\].*'-1.0'"),
    ("latency_ms", [10.0, 1e300, 3.0], r"in \[0, 1e12\].*'1e\+300'"),
    # finite, but a run's sum of it is not (the report read the run's cost as unknown)
    ("cost_usd", [0.1, 1e308, 0.2], r"up to 1e9.*'1e\+308'"),
    # a status spelling the reader rejects (bad_status) read as success before
    ("status", ["error", "error ", "ok"], "ok or error.*'error '"),
    ("status", ["ok", "weird", "failed"], "ok or error.*'weird'"),
])
def test_values_that_cannot_be_converted_are_an_error(column: str, values: list[object], shown: str) -> None:
    """Unconvertible values used to become nulls silently (a run with text steps had no
    ``max_steps`` check at all); the detectors now say which column and what was found."""
    import polars as pl

    import driftwatch as dw
    from driftwatch.errors import SchemaError

    ev = pl.DataFrame({"run_id": "r", "step": [1, 2, 3], "action": "a"}).with_columns(pl.Series(column, values))
    for call in (dw.detect_loops, lambda e: dw.check_policy(e, dw.Policy()), dw.score_runs):
        for given in (ev, ev.lazy()):
            with pytest.raises(SchemaError, match=rf"column '{column}': 1 value\(s\) cannot be read as .*{shown}.*"
                                                  r"dw.audit, which rejects"):
                call(given)
    # NaN is a missing value, not a bad one
    nan = pl.DataFrame({"run_id": "r", "step": [1, 2, 3], "action": "a", "cost_usd": [0.1, float("nan"), 0.2]})
    assert dw.check_policy(nan, dw.Policy()).height == 0


def test_seeds_and_flags_are_checked_at_every_boundary() -> None:
    """random_state=-1 leaked numpy's or scikit-learn's own errors (1.5 was accepted by
    load_curve); streaming="no" or delegation="no" were read as True."""
    import numpy as np

    import driftwatch as dw
    from driftwatch import synth
    from driftwatch._frames import check_flag, check_seed

    assert check_seed(np.int64(7)) == 7 and check_seed(None, allow_none=True) is None
    for bad in (-1, 2**32, 1.5, True, "1", None):
        with pytest.raises(InvalidParameterError, match="random_state must be an integer in"):
            check_seed(bad)
    assert check_flag(np.bool_(True), name="x") is True
    ev = synth.generate(days=14, runs_per_day=40, seed=3).events
    calls = {
        "score_runs": lambda rs: dw.score_runs(ev, random_state=rs),
        "cost_profile": lambda rs: dw.cost_profile(ev, random_state=rs),
        "load_curve": lambda rs: dw.load_curve(ev, random_state=rs, every="1h"),
        "detect_drift": lambda rs: dw.detect_drift(ev, reference="7d", random_state=rs),
        "fit_escalation": lambda rs: dw.fit_escalation(dw.score_runs(ev), pl.Series([True, False] * 280),
                                                       random_state=rs),
    }
    for call in calls.values():
        for bad in (-1, 2**32, 1.5):
            with pytest.raises(InvalidParameterError, match="random_state must be"):
                call(bad)
    flags = {
        "streaming": lambda v: dw.detect_loops(ev, streaming=v),
        "fuzzy": lambda v: dw.detect_loops(ev, fuzzy=v),
        "delegation": lambda v: dw.check_policy(ev, dw.Policy(), delegation=v),
        "sparse": lambda v: dw.detect_changepoints(ev, sparse=v),
        "log": lambda v: dw.detect_run_changepoints(ev, log=v),
        "detrend": lambda v: dw.detect_run_changepoints(ev, detrend=v),
    }
    for name, call in flags.items():
        with pytest.raises(InvalidParameterError, match=f"{name} must be True or False, got 'no'"):
            call("no")


def test_time_based_analyses_say_they_need_timestamps() -> None:
    """Without ts, detect_drift said "the per-run table is empty" and load_curve returned an
    empty frame without a word; every time-based analysis now names the missing column."""
    import driftwatch as dw
    from driftwatch import synth
    from driftwatch.errors import SchemaError

    ev = synth.generate(days=14, runs_per_day=40, seed=3).events
    for frame in (ev.drop("ts"), ev.with_columns(ts=None)):
        for what, call in (("change-points", dw.detect_changepoints), ("load buckets", dw.load_curve),
                           ("drift windows", lambda e: dw.detect_drift(e, reference="7d"))):
            with pytest.raises(SchemaError, match=f"{what} need timestamps, but column 'ts' is missing or all null"):
                call(frame)
        with pytest.raises(SchemaError, match="reference: drift windows need timestamps"):
            dw.detect_drift(ev, reference=frame)
    assert dw.loop_summary(dw.detect_loops(ev.drop("ts"))).height > 0  # step order is enough there


def test_a_numeric_status_is_refused_by_every_detector() -> None:
    """0/1 status: the reader rejects the rows (bad_status); run_features and detect_loops read
    them as success while score_runs refused them (a probe found the split)."""
    import driftwatch as dw
    from driftwatch.errors import SchemaError

    ev = pl.DataFrame({"run_id": ["r"] * 3, "step": [1, 2, 3], "action": ["llm", "search", "search"],
                       "status": [0, 1, 1]})
    for call in (dw.run_features, dw.detect_loops, dw.check_policy, dw.score_runs, dw.cost_profile):
        with pytest.raises(SchemaError, match=r"column 'status': 3 value\(s\) cannot be read as ok or error"):
            call(ev)


def test_series_names_never_collide_and_read_back() -> None:
    """A missing agent and an agent named "null" shared the series ``agent=null``, and an agent
    named ``a,version=v2`` by itself looked like the series of agent a, version v2."""
    values = [None, "null", "a", "a,version=v2", 'say "hi"', "back\\slash", "", "k=v", "null "]
    frame = pl.DataFrame({"agent": values, "version": ["v2"] * len(values)}, schema={"agent": pl.String, "version": pl.String})
    one = frame.select(series_expr(["agent"]))["series"].to_list()
    two = frame.select(series_expr(["agent", "version"]))["series"].to_list()
    assert len(set(one)) == len(values) and len(set(two)) == len(values)
    assert set(one).isdisjoint(two)
    assert one[0] == "agent=null" and one[1] == 'agent="null"' and one[2] == "agent=a" and one[7] == "agent=k=v"
    assert one[3] == 'agent="a,version=v2"' and one[4] == 'agent="say \\"hi\\""'
    assert one == [series_label("agent", v) for v in values]
    assert all(series_keys(s) == ("agent",) for s in one)
    assert all(series_keys(s) == ("agent", "version") for s in two)
    assert series_keys("all") == () and series_keys('agent="open') == ()
    assert frame.select(series_expr([]))["series"].unique().to_list() == ["all"]


# ``by`` names a series by labels of a run: the per-run features the audit computes (``n_steps``,
# ``first_ts``, ``tokens``, ...) and nested columns (a list of tags) are refused with one clear
# message by every public function that takes ``by``, and label columns of any plain type still work.

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def _events() -> pl.DataFrame:
    """Six runs of two steps with labels of every plain type and a list of tags."""
    n = 6
    return pl.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(n) for _ in range(2)],
            "step": [1, 2] * n,
            "ts": [T0 + timedelta(minutes=i, seconds=s) for i in range(n) for s in (0, 5)],
            "action": ["llm", "search"] * n,
            "agent": [("a", "b")[i % 2] for i in range(n) for _ in range(2)],
            "cost_usd": [0.1, 0.2] * n,
            "tenant": [f"t{i % 3}" for i in range(n) for _ in range(2)],
            "tier": [i % 2 for i in range(n) for _ in range(2)],
            "paid": [i % 2 == 0 for i in range(n) for _ in range(2)],
            "meta": [{"region": ("eu", "us")[i % 2]} for i in range(n) for _ in range(2)],
            "tags": [[("x", "y")[i % 2]] for i in range(n) for _ in range(2)],
        }
    )


def _call(name: str, events: pl.DataFrame, by: Any, tmp_path: Path) -> pl.DataFrame | Any:
    if name == "detect_drift":
        return dw.detect_drift(events, by=by, reference=(T0, T0 + timedelta(minutes=3)), every="1d")
    if name == "audit":
        return dw.audit(events, out=tmp_path / "out", by=by)
    return getattr(dw, name)(events, by=by)


PUBLIC_BY = ["detect_changepoints", "detect_drift", "cost_profile", "load_curve", "audit"]


def test_every_computed_run_feature_is_refused() -> None:
    """The list of refused names covers every column run_features computes (not an event column)."""
    computed = [c for c in dw.run_features(pl.DataFrame(schema=CANONICAL_SCHEMA)).columns
                if c not in CANONICAL_SCHEMA]
    assert computed and set(computed) <= set(getattr(_frames, "_RUN_FEATURES", ()))
    for c in computed:
        with pytest.raises(InvalidParameterError, match=rf"cannot group by '{c}': it is a per-run feature"):
            normalize_by(("agent", c))
    assert normalize_by(("agent", "version", "parent_run_id", "tenant")) == ("agent", "version", "parent_run_id",
                                                                               "tenant")


@pytest.mark.parametrize("by", ["n_steps", "first_ts", "latency_ms_p90", "tokens"])
@pytest.mark.parametrize("name", PUBLIC_BY)
def test_public_functions_refuse_a_run_feature(name: str, by: str, tmp_path: Path) -> None:
    """load_curve(by="n_steps") died with Polars' DuplicateError, cost_profile grouped by step
    count, the audit's CLI exited with "DuplicateError ... please report it"."""
    with pytest.raises(InvalidParameterError, match=rf"cannot group by '{by}': it is a per-run feature the audit "
                                                    r"computes from the steps \(run_features\), not an event column"):
        _call(name, _events(), by, tmp_path)


@pytest.mark.parametrize("name", ["detect_changepoints", "cost_profile", "load_curve"])
def test_public_functions_refuse_a_list_column(name: str, tmp_path: Path) -> None:
    """A List[str] column died with Polars' InvalidOperationError (cannot cast List type)."""
    with pytest.raises(InvalidParameterError, match=r"cannot group by 'tags': column 'tags' holds List\(String\) "
                                                    r"values, and a nested type cannot name a series"):
        _call(name, _events(), ("agent", "tags"), tmp_path)


def test_nested_types_are_refused_where_the_schema_is_known() -> None:
    schema = pl.Schema({"tags": pl.List(pl.String), "arr": pl.Array(pl.Int64, 2), "meta": pl.Struct({"r": pl.String}),
                        "bad": pl.Struct({"l": pl.List(pl.Int64)}), "tenant": pl.String, "tier": pl.Int64})
    _frames.check_by_types(schema, ("meta", "tenant", "tier", "missing"))  # (a missing column is the caller's to report)
    assert normalize_by("tenant", schema) == ("tenant",)
    for c in ("tags", "arr", "bad"):
        with pytest.raises(InvalidParameterError, match=f"cannot group by '{c}'.*nested type cannot name a series"):
            normalize_by(("tenant", c), schema)


def test_series_expr_refuses_a_list_and_names_plain_labels() -> None:
    frame = pl.DataFrame({"tags": [["x"]], "tier": [2], "paid": [True], "meta": [{"r": 1}]})
    with pytest.raises(InvalidParameterError, match="cannot group by 'tags'"):
        frame.lazy().select(series_expr(["tags"])).collect()
    assert frame.select(series_expr(["tier", "paid", "meta"])).item() == "tier=2,paid=true,meta={1}"


@pytest.mark.parametrize("by", ["agent", ("agent", "version"), "tenant", "tier", "paid", "meta"])
def test_label_columns_still_name_series(by: Any) -> None:
    ev = _events()
    prof = dw.cost_profile(ev, by=by, volume_per_day=100)
    first = by if isinstance(by, str) else by[0]
    names = [s for s in prof["series"].to_list() if s != "all"]
    assert names and all(s.startswith(f"{first}=") for s in names)
    assert prof.filter(series="all")["runs"].item() == 6
    curve = dw.load_curve(ev, by=by, every="1m", control="3m", metrics=["error_rate"])
    assert set(curve["series"]) <= {*names, "all"}


def test_durations_are_bounded_and_calendar_units_are_named() -> None:
    # an absurd duration passed the check and then overflowed in a timestamp sum (a raw Polars
    # or OverflowError); '1mo' was said not to be a Polars duration, which it is
    assert duration_seconds("36525d") == 36_525 * 86_400
    for text in ("36526d", "999999999999d", "5218w"):
        with pytest.raises(InvalidParameterError, match=r"at most 36,525 days"):
            duration_seconds(text)
    for text in ("1mo", "2y", "1q", "1d1mo"):
        with pytest.raises(InvalidParameterError, match="calendar units"):
            duration_seconds(text)
    with pytest.raises(InvalidParameterError) as err:
        duration_seconds("banana")
    assert "calendar" not in str(err.value)


def test_public_functions_refuse_a_duration_past_the_bound() -> None:
    from driftwatch import synth

    ev = synth.generate(days=3, runs_per_day=20, seed=0).events
    big = "999999999999d"
    for call in (lambda: dw.detect_changepoints(ev, every=big), lambda: dw.detect_drift(ev, reference=big),
                 lambda: dw.detect_drift(ev, reference="1d", every=big), lambda: dw.audit(ev, drift_every=big),
                 lambda: dw.load_curve(ev, every=big)):
        with pytest.raises(InvalidParameterError, match="at most 36,525 days"):
            call()


@pytest.mark.parametrize(("name", "call"), [
    ("runs", "cost_profile"), ("days", "cost_profile"), ("_day", "cost_profile"), ("loop_cost_usd", "cost_profile"),
    ("n", "detect_changepoints"), ("runs", "detect_changepoints"), ("runs_with_cost", "load_curve"),
])
def test_a_label_named_like_a_series_table_column_is_refused(name: str, call: str) -> None:
    # such a label column crashed with a raw Polars DuplicateError (or a sum of text)
    from driftwatch import synth

    ev = synth.generate(days=2, runs_per_day=20, seed=0).events.with_columns(pl.col("agent").alias(name))
    with pytest.raises(InvalidParameterError, match=f"cannot group by {name!r}: the series tables"):
        getattr(dw, call)(ev, by=name)
