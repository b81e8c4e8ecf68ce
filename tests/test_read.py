"""read_logs: sources, engines, filters, rejections, errors, and the rows_in invariant."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import driftwatch as dw
from driftwatch import synth
from driftwatch.errors import (
    CorruptFileError,
    DriftwatchError,
    InvalidParameterError,
    NoInputError,
    SchemaError,
)
from driftwatch.read import REJECTED_SCHEMA, ReadResult, check_frame, read_logs, resolve_sources
from driftwatch.schema import CANONICAL_SCHEMA, COLUMNS, REJECT_REASONS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_logs"
ENGINES = ("polars", "duckdb")


def _sorted(frame: pl.DataFrame, *keys: str) -> pl.DataFrame:
    return frame.sort(list(keys) or ["run_id", "step"], nulls_last=True)


def _both(source: object, **kw: object) -> tuple[ReadResult, ReadResult]:
    a = read_logs(source, engine="polars", **kw)  # type: ignore[arg-type]
    b = read_logs(source, engine="duckdb", **kw)  # type: ignore[arg-type]
    return a, b


def _assert_same(a: ReadResult, b: ReadResult) -> pl.DataFrame:
    ea, eb = a.events.collect(), b.events.collect()
    assert ea.schema == pl.Schema(CANONICAL_SCHEMA)
    assert_frame_equal(_sorted(ea), _sorted(eb))
    assert_frame_equal(a.rejected, b.rejected)
    sa, sb = a.stats.to_dict(), b.stats.to_dict()
    for d in (sa, sb):
        d.pop("engine"), d.pop("seconds")
    assert sa == sb
    return ea


def _write(frame: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


def _canon(n: int = 4, run: str = "r", start: int = 1, **extra: object) -> pl.DataFrame:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    data = {
        "run_id": [run] * n,
        "step": list(range(start, start + n)),
        "ts": [base + timedelta(minutes=i) for i in range(n)],
        "action": ["llm" if i % 2 == 0 else "search" for i in range(n)],
    }
    data.update(extra)  # type: ignore[arg-type]
    return pl.DataFrame(data)


# ---------------------------------------------------------------- generated fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[synth.Fleet, Path]:
    f = synth.generate(days=4, runs_per_day=80, seed=5)
    root = tmp_path_factory.mktemp("fleet")
    f.write(root)
    return f, root / "events"


def test_written_fleet_reads_back_exactly_with_both_engines(fleet: tuple[synth.Fleet, Path]) -> None:
    f, events_dir = fleet
    a, b = _both(events_dir)
    got = _assert_same(a, b)
    assert_frame_equal(_sorted(got), _sorted(f.events))
    assert a.stats.rows_in == a.stats.rows_valid == f.events.height
    assert a.stats.rows_rejected == 0 and a.rejected.height == 0
    assert a.stats.files == 4 and a.stats.formats == {"canonical": 4}
    assert a.rejected.schema == pl.Schema(REJECTED_SCHEMA)


def test_streamed_fleet_reads_back(tmp_path: Path) -> None:
    synth.write_fleet(tmp_path, days=2, runs_per_day=40, seed=2)
    res = read_logs(tmp_path / "events")
    ev = res.collect()
    assert ev.height == res.stats.rows_in == res.stats.rows_valid > 0
    assert ev.select(pl.struct("run_id", "step").is_duplicated().any()).item() is False


def test_shipped_fleet_sample() -> None:
    a, b = _both(SAMPLES / "fleet" / "events")
    ev = _assert_same(a, b)
    assert a.stats.rows_rejected == 0 and ev.height == a.stats.rows_in > 10_000
    assert a.stats.files == 30


# ---------------------------------------------------------------- adapters through read_logs


@pytest.mark.parametrize("folder", ["otel", "openinference"])
def test_span_samples_agree_across_engines(folder: str) -> None:
    a, b = _both(SAMPLES / folder)
    ev = _assert_same(a, b)
    assert a.stats.formats == {folder: a.stats.files}
    assert set(a.stats.reasons) == {"not_a_step"}
    assert a.stats.rows_in == a.stats.rows_valid + a.stats.rows_rejected
    assert ev.height > 100 and ev["agent"].n_unique() == 2
    assert (a.rejected["reason"] == "not_a_step").all()
    assert a.rejected["source_file"].str.contains(folder).all()


def test_mixed_formats_in_one_read_are_adapted_per_file(tmp_path: Path) -> None:
    canon = _write(_canon(3, run="canon-run"), tmp_path / "canon.parquet")
    a, b = _both([SAMPLES / "otel" / "spans-0.parquet", canon])
    ev = _assert_same(a, b)
    assert a.stats.formats == {"otel": 1, "canonical": 1}
    assert ev.filter(pl.col("run_id") == "canon-run").height == 3
    assert ev["run_id"].n_unique() > 5


def test_forcing_a_format_that_does_not_fit(tmp_path: Path) -> None:
    p = _write(_canon(2), tmp_path / "c.parquet")
    with pytest.raises(SchemaError, match=r"c\.parquet: OTel input is missing required column\(s\)"):
        read_logs(p, format="otel")


# ---------------------------------------------------------------- rejections


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("messy")
    rows = {
        "run_id": ["r1", None, " ", "r1", "r1", "r1", "r1", "r1", "r1", "r1", "r1", "r1", "r1", "r2", "r2"],
        "step": [1, 2, 3, 4, 5, None, 7, 8, 9, 10, 11, 12, 1, 1, 2],
        "ts": ["2026-11-01T00:00:00Z", "2026-11-01T00:00:01Z", "2026-11-01T00:00:02Z", "2026-11-01T00:00:03Z",
               "not a time", "2026-11-01T00:00:05Z", "2026-11-01T00:00:06Z", "2026-11-01T00:00:07Z",
               "2026-11-01T00:00:08Z", "2026-11-01T00:00:09Z", "2026-11-01T00:00:10Z", "2026-11-01T00:00:11Z",
               "2026-11-01T00:00:12Z", "2026-11-01T00:00:13+01:00", None],
        "action": ["llm", "x", "x", None, "x", "x", "x", "x", "x", "x", "x", "x", "x", "x", "x"],
        "input_tokens": [10, 1, 1, 1, 1, 1, -4, 1, 1, 1, 1, 1, 1, 1, 1],
        "cost_usd": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, -1.0, 0.1, 0.1, 0.1, float("inf"), 0.1, 0.1, 0.1],
        "latency_ms": [5.0] * 8 + [-1.0] + [5.0] * 6,
        "confidence": [0.9] * 9 + [2.0] + [0.9] * 5,
        "status": ["OK", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "kaput", "ok", "ok", "failed", "ok"],
    }
    _write(pl.DataFrame(rows), root / "a.parquet")
    # b.parquet repeats (r1, 1) and (r2, 1): the copies in the later file are the duplicates
    dup = pl.DataFrame({k: [v[0], v[13]] for k, v in rows.items()})
    _write(dup, root / "b.parquet")
    return root


EXPECTED_MESSY = {
    ("a.parquet", 1): "null_run_id",
    ("a.parquet", 2): "null_run_id",
    ("a.parquet", 3): "null_action",
    ("a.parquet", 4): "bad_ts",
    ("a.parquet", 5): "null_step",
    ("a.parquet", 6): "negative_tokens",
    ("a.parquet", 7): "negative_cost",
    ("a.parquet", 8): "negative_latency",
    ("a.parquet", 9): "bad_confidence",
    ("a.parquet", 10): "bad_status",
    ("a.parquet", 11): "bad_value:cost_usd",
    ("a.parquet", 12): "conflicting_step",  # (r1, 1) again, later in the same file, with another action
    ("b.parquet", 0): "duplicate_step",
    ("b.parquet", 1): "duplicate_step",
}


def test_every_rejection_reason_with_source_file_and_row(messy: Path) -> None:
    a, b = _both(messy)
    ev = _assert_same(a, b)
    got = {(Path(f).name, r): reason for f, r, reason in a.rejected.select("source_file", "source_row", "reason").rows()}
    assert got == EXPECTED_MESSY
    assert a.stats.rows_in == 17 and a.stats.rows_rejected == len(EXPECTED_MESSY) and a.stats.rows_valid == 3
    assert a.stats.reasons["duplicate_step"] == 2 and a.stats.reasons["conflicting_step"] == 1
    assert a.stats.reasons["null_run_id"] == 2
    assert sum(a.stats.reasons.values()) == a.stats.rows_rejected
    assert {r.split(":")[0] for r in a.stats.reasons} <= set(REJECT_REASONS)
    assert ev.sort("run_id", "step").select("run_id", "step", "status").rows() == [
        ("r1", 1, "ok"), ("r2", 1, "error"), ("r2", 2, "ok")]
    assert ev.filter(pl.col("run_id") == "r2")["ts"].to_list() == [datetime(2026, 11, 1, 0, 0, 13) .replace(
        tzinfo=UTC) - timedelta(hours=1), None]  # ts missing with a step is allowed


def test_rejection_details(messy: Path) -> None:
    rej = read_logs(messy).rejected
    detail = {(Path(f).name, r): d for f, r, d in rej.select("source_file", "source_row", "detail").rows()}
    assert detail[("a.parquet", 4)] == "not a time"
    assert detail[("a.parquet", 6)] == "input_tokens=-4"
    assert detail[("a.parquet", 10)] == "kaput"
    assert detail[("a.parquet", 11)] == "inf"
    assert detail[("b.parquet", 0)] == f"kept {messy / 'a.parquet'} row 0"
    assert detail[("a.parquet", 12)] == f"kept {messy / 'a.parquet'} row 0"
    assert rej.columns == [*COLUMNS, "source_file", "source_row", "reason", "detail"]
    assert rej.filter(pl.col("reason") == "bad_ts")["ts"].item() is None


# ---------------------------------------------------------------- sources


def test_sources_files_globs_lists_and_dedupe(tmp_path: Path) -> None:
    p1 = _write(_canon(2, run="a"), tmp_path / "x" / "one.parquet")
    _write(_canon(2, run="b"), tmp_path / "x" / "sub" / "two.parquet")
    (tmp_path / "x" / "_SUCCESS").write_text("")
    (tmp_path / "x" / ".one.parquet.crc").write_text("crc")
    (tmp_path / "x" / "notes.txt").write_text("hi")
    assert [Path(p).name for p in resolve_sources(tmp_path / "x")] == ["one.parquet", "two.parquet"]
    assert [Path(p).name for p in resolve_sources(str(tmp_path / "x" / "**" / "*.parquet"))] == ["one.parquet", "two.parquet"]
    assert len(resolve_sources([p1, tmp_path / "x", str(p1)])) == 2
    odd = tmp_path / "events.data"
    shutil.copy(p1, odd)
    assert read_logs(odd).stats.rows_in == 2  # an explicitly named file is read whatever its suffix
    res = read_logs([tmp_path / "x" / "sub", p1])
    assert res.stats.files == 2 and res.stats.rows_valid == 4
    assert [Path(p).name for p in res.stats.paths] == ["two.parquet", "one.parquet"]


def test_symlinked_partition_folders_are_read_once(tmp_path: Path) -> None:
    """Partitions linked in from elsewhere are followed; a link back up (a cycle) and two links to
    one folder do not repeat anything."""
    store = tmp_path / "store"
    _write(_canon(2, run="a"), store / "date=2026-11-01" / "part-0.parquet")
    _write(_canon(3, run="b"), store / "date=2026-11-02" / "part-0.parquet")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "date=2026-11-01").symlink_to(store / "date=2026-11-01", target_is_directory=True)
    (logs / "date=2026-11-02").symlink_to(store / "date=2026-11-02", target_is_directory=True)
    (logs / "again").symlink_to(store / "date=2026-11-02", target_is_directory=True)
    (logs / "date=2026-11-01" / "loop").symlink_to(logs, target_is_directory=True)
    found = resolve_sources(logs)  # each real folder under its first name in sorted order
    assert [Path(p).parent.name for p in found] == ["again", "date=2026-11-01"]
    res = read_logs(logs)
    assert res.stats.files == 2 and res.stats.rows_valid == 5


def test_a_glob_through_a_link_cycle_reads_each_file_once(tmp_path: Path) -> None:
    """glob.glob follows links to folders without remembering them: one link back up read the file
    41 times under ever longer names (80 duplicate_step rejections)."""
    logs = tmp_path / "logs"
    _write(_canon(2), logs / "sub" / "one.parquet")
    (logs / "sub" / "loop").symlink_to("..", target_is_directory=True)
    for source in (logs, str(logs / "**" / "*.parquet"), str(logs / "**"), str(logs / "*" / "*" / "*" / "*.parquet")):
        res = read_logs(source)
        assert (res.stats.files, res.stats.rows_in, res.stats.rows_valid, res.stats.reasons) == (1, 2, 2, {}), source
    assert resolve_sources(str(logs / "**" / "*.parquet")) == [str(logs / "sub" / "one.parquet")]


def test_a_glob_through_two_link_cycles_ends(tmp_path: Path) -> None:
    """Two links that lead into each other's cycles made glob.glob's ** run until memory ran out."""
    import subprocess
    import sys

    _write(_canon(2), tmp_path / "h" / "a" / "one.parquet")
    (tmp_path / "h" / "a" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "h" / "b").mkdir()
    (tmp_path / "h" / "b" / "to_a").symlink_to("../a", target_is_directory=True)
    code = ("import sys, driftwatch as dw; s = dw.read_logs(sys.argv[1]).stats; "
            "print(s.files, s.rows_in, s.rows_valid, s.reasons)")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "h" / "**" / "*.parquet")],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("read_logs of a glob through two link cycles did not end within 60 s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "1 2 2 {}"


def test_one_real_file_under_two_names_is_read_once(tmp_path: Path) -> None:
    """Duplicates are real files: a file listed again through a linked folder or a file link is
    read once, under the first name it is listed by."""
    real = _write(_canon(2), tmp_path / "logs" / "one.parquet")
    (tmp_path / "alias.parquet").symlink_to(real)
    (tmp_path / "linked").symlink_to(tmp_path / "logs", target_is_directory=True)
    for source, first in (([real, tmp_path / "alias.parquet"], real),
                          ([tmp_path / "linked" / "one.parquet", tmp_path / "logs"], tmp_path / "linked" / "one.parquet"),
                          (str(tmp_path / "*" / "one.parquet"), tmp_path / "linked" / "one.parquet"),
                          (str(tmp_path / "*.parquet"), tmp_path / "alias.parquet")):
        res = read_logs(source)
        assert res.stats.paths == (str(first),), source
        assert (res.stats.rows_in, res.stats.reasons) == (2, {}), source


def test_glob_expansion_matches_python_glob_without_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without links the expansion is glob.glob(recursive=True): hidden names need a pattern part
    starting with '.', a last ** gives folders and files, relative patterns stay relative. The
    one difference: wildcards skip names starting with '_', as a folder does, unless the pattern
    part starts with '_' too."""
    import glob

    from driftwatch.read import _glob

    for f in ("logs/sub/one.parquet", "logs/sub/deep/two.parquet", "logs/.hid/h.parquet", "logs/_tmp/u.parquet",
              "logs/top.parquet", "logs/.x.parquet", "other/o.parquet"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).touch()
    monkeypatch.chdir(tmp_path)
    for pattern in ("**", "**/*.parquet", "*", "*/*.parquet", "logs/**", "logs/**/*.parquet", "logs/*/", "logs/**/",
                    "l?gs/s*/one.parquet", "logs/[s]ub/*", "**/sub/**/*.parquet", str(tmp_path / "**" / "*.parquet"),
                    "logs/.h*/*", "logs/**/.h*", "logs/*/*", "nope/*"):
        want = [p for p in glob.glob(pattern, recursive=True) if "_tmp" not in p]
        assert _glob(pattern) == sorted(want), pattern
    for pattern in ("logs/_*/*", "logs/_tmp/*.parquet", "logs/_t?p/u.parquet"):
        assert _glob(pattern) == sorted(glob.glob(pattern, recursive=True)) == ["logs/_tmp/u.parquet"], pattern


def test_globs_skip_unfinished_spark_output_delta_logs_and_results_folders(tmp_path: Path) -> None:
    """`logs/**/*.parquet` read a Spark job's _temporary/ attempt files (the same rows again,
    rejected as duplicated steps), a Delta table's _delta_log/ checkpoints and, with
    `--out logs/report`, the audit's own runs.parquet (every row rejected: no action column)."""
    logs = tmp_path / "logs"
    _write(_canon(3, run="a"), logs / "date=2026-11-01" / "part-0.parquet")
    _write(_canon(3, run="a"), logs / "date=2026-11-01" / "_temporary" / "0" / "part-0.parquet")
    _write(_canon(2, run="z"), logs / "_delta_log" / "00000000000000000010.checkpoint.parquet")
    (logs / "date=2026-11-01" / "_SUCCESS").write_text("")
    dw.audit(logs, out=logs / "report")
    assert (logs / "report" / "runs.parquet").exists()
    for source in (logs, str(logs / "**" / "*.parquet"), str(logs / "*" / "*.parquet"), str(logs / "**")):
        res = read_logs(source)
        assert [Path(p).relative_to(logs).as_posix() for p in res.stats.paths] == ["date=2026-11-01/part-0.parquet"], source
        assert (res.stats.rows_in, res.stats.rows_rejected) == (3, 0), source
    named = read_logs(str(logs / "date=*" / "_temporary" / "*" / "*.parquet"))  # a pattern naming it reads it
    assert named.stats.files == 1 and named.stats.rows_valid == 3
    # a last wildcard that matches the results folder does not walk into it (`logs/*`)
    assert [Path(p).relative_to(logs).as_posix() for p in resolve_sources(str(logs / "*"))] == [
        "date=2026-11-01/part-0.parquet"]
    # `_`-prefixed files named by the pattern's last part are read
    _write(_canon(2, run="u"), logs / "date=2026-11-02" / "_part-x.parquet")
    assert [Path(p).name for p in resolve_sources(str(logs / "**" / "_*.parquet"))] == ["_part-x.parquet"]
    with pytest.raises(dw.NoInputError, match="the pattern matches only what is skipped"):
        resolve_sources(str(logs / "rep*" / "*.parquet"))


def test_hive_partitions_fill_agent_and_prune(tmp_path: Path) -> None:
    for agent in ("alpha", "beta"):
        for day in ("2026-11-01", "2026-11-02"):
            _write(_canon(3, run=f"{agent}-{day}"), tmp_path / f"agent={agent}" / f"date={day}" / "part-0.parquet")
    a, b = _both(tmp_path)
    ev = _assert_same(a, b)
    assert ev.group_by("agent").len().sort("agent").rows() == [("alpha", 6), ("beta", 6)]
    assert ev.columns == list(COLUMNS)  # the date partition is not a canonical column
    fa, fb = _both(tmp_path, agents="beta")
    ev = _assert_same(fa, fb)
    assert set(ev["agent"]) == {"beta"} and fa.stats.rows_in == 6
    plan = fa.events.explain()
    assert "agent=beta" in plan and "agent=alpha" not in plan  # partitions pruned in the scan


def test_since_until_agents_are_pushed_down_and_agree(fleet: tuple[synth.Fleet, Path]) -> None:
    f, events_dir = fleet
    since, until = datetime(2026, 10, 2, 6, tzinfo=UTC), date(2026, 10, 3)
    a, b = _both(events_dir, since=since, until=until, agents=["planner", "billing"])
    ev = _assert_same(a, b)
    exp = f.events.filter(
        (pl.col("ts") >= since) & (pl.col("ts") < datetime(2026, 10, 3, tzinfo=UTC))
        & pl.col("agent").is_in(["planner", "billing"])
    )
    assert_frame_equal(_sorted(ev), _sorted(exp))
    assert a.stats.rows_in == exp.height
    plan = a.events.explain()
    scan = plan[plan.index("Parquet SCAN"):]
    assert "SELECTION" in scan and '"ts"' in scan and "is_in" in scan


def test_since_until_on_otel_epoch_nanoseconds() -> None:
    full = read_logs(SAMPLES / "otel").collect()
    cut = full["ts"].sort()[full.height // 2]
    a, b = _both(SAMPLES / "otel", since=cut.isoformat())
    ev = _assert_same(a, b)
    assert ev.height > 0 and ev["ts"].min() >= cut
    assert "start_time_unix_nano" in a.events.explain()


def test_time_filter_with_text_timestamps_and_naive_bounds(tmp_path: Path) -> None:
    _write(pl.DataFrame({"run_id": ["r"] * 3, "step": [1, 2, 3], "action": ["a"] * 3,
                         "ts": ["2026-11-01T10:00:00+02:00", "2026-11-01T09:00:00Z", "garbage"]}), tmp_path / "t.parquet")
    a, b = _both(tmp_path, since=datetime(2026, 11, 1, 8, 30))  # naive -> UTC
    ev = _assert_same(a, b)
    assert ev["step"].to_list() == [2]
    assert a.stats.rows_in == 1  # rows without a readable timestamp are outside any time window


# ---------------------------------------------------------------- schema handling across files


def test_schema_evolution_across_files(tmp_path: Path) -> None:
    old = _canon(3, run="old").with_columns(pl.lit(5, dtype=pl.Int32).alias("input_tokens"))
    new = _canon(3, run="new").with_columns(
        pl.lit(7, dtype=pl.Int64).alias("input_tokens"), pl.lit(0.5).alias("confidence"), pl.lit("x").alias("extra"),
        pl.col("ts").dt.cast_time_unit("ns"),
    )
    text_ts = _canon(2, run="text").with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%z"))
    for name, frame in (("1.parquet", old), ("2.parquet", new), ("3.parquet", text_ts)):
        _write(frame, tmp_path / name)
    a, b = _both(tmp_path)
    ev = _assert_same(a, b)
    assert ev.group_by("run_id").agg(pl.col("input_tokens").first(), pl.col("confidence").first()).sort("run_id").rows() == [
        ("new", 7, 0.5), ("old", 5, None), ("text", None, None)]
    assert ev["ts"].null_count() == 0


def test_ts_absent_with_step_and_step_absent_with_ts(tmp_path: Path) -> None:
    _write(_canon(3, run="no-ts").drop("ts"), tmp_path / "a.parquet")
    _write(_canon(3, run="no-step").drop("step").reverse(), tmp_path / "b.parquet")
    a, b = _both(tmp_path)
    ev = _assert_same(a, b).sort("run_id", "step")
    assert ev.filter(pl.col("run_id") == "no-ts")["ts"].null_count() == 3
    no_step = ev.filter(pl.col("run_id") == "no-step")
    assert no_step["step"].to_list() == [1, 2, 3] and no_step["ts"].is_sorted()


def test_zero_row_file_next_to_others_is_fine(tmp_path: Path) -> None:
    _write(_canon(0), tmp_path / "empty.parquet")
    _write(_canon(2), tmp_path / "full.parquet")
    a, b = _both(tmp_path)
    _assert_same(a, b)
    assert a.stats.files == 2 and a.stats.rows_in == 2


def test_filters_that_select_nothing_give_empty_events(tmp_path: Path) -> None:
    _write(_canon(2), tmp_path / "a.parquet")
    res = read_logs(tmp_path, agents="nobody")
    assert res.stats.rows_in == 0 and res.collect().height == 0


# ---------------------------------------------------------------- errors


def test_error_no_such_path(tmp_path: Path) -> None:
    with pytest.raises(NoInputError, match=r"nope: no such file or folder"):
        read_logs(tmp_path / "nope")


def test_error_glob_matches_nothing_or_no_parquet(tmp_path: Path) -> None:
    with pytest.raises(NoInputError, match=r"\*\.parquet: the pattern matches no file or folder"):
        read_logs(str(tmp_path / "*.parquet"))
    (tmp_path / "a.csv").write_text("run_id,step\n")
    with pytest.raises(NoInputError, match=r"matches 1 entry but no Parquet file.*a\.csv"):
        read_logs(str(tmp_path / "*.csv"))


def test_error_empty_folder_and_folder_without_parquet(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoInputError, match=r"empty: the folder holds no Parquet files.*found 0 entries"):
        read_logs(tmp_path / "empty")
    (tmp_path / "csvs").mkdir()
    (tmp_path / "csvs" / "events.csv").write_text("run_id,step\n")
    with pytest.raises(NoInputError, match=r"found 1 entry: \['events\.csv'\]"):
        read_logs(tmp_path / "csvs")
    with pytest.raises(NoInputError, match="empty list"):
        read_logs([])


def test_error_all_files_have_zero_rows(tmp_path: Path) -> None:
    _write(_canon(0), tmp_path / "a.parquet")
    _write(_canon(0), tmp_path / "b.parquet")
    with pytest.raises(NoInputError, match=r"all 2 files under .*: no rows to read; expected at least one event, found 0 rows"):
        read_logs(tmp_path)


def test_error_csv_renamed_parquet(tmp_path: Path) -> None:
    p = tmp_path / "events.parquet"
    p.write_text("run_id,step,action\nr1,1,llm\n")
    with pytest.raises(CorruptFileError, match=r"events\.parquet: not a Parquet file: expected the magic bytes b'PAR1'.*found b'run_'.*CSV"):
        read_logs(p)


def test_error_truncated_and_empty_files(tmp_path: Path) -> None:
    good = _write(_canon(50), tmp_path / "good.parquet")
    data = good.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.parquet: truncated or corrupt Parquet file"):
        read_logs(tmp_path / "cut.parquet")
    (tmp_path / "zero.parquet").write_bytes(b"")
    with pytest.raises(CorruptFileError, match=r"zero\.parquet: the file is empty \(0 bytes\)"):
        read_logs(tmp_path / "zero.parquet")
    # one bad file in a folder fails the read and names that file
    with pytest.raises(CorruptFileError, match=r"cut\.parquet"):
        read_logs(tmp_path)


@pytest.mark.parametrize("engine", ENGINES)
def test_error_corrupt_data_pages_are_wrapped(tmp_path: Path, engine: str) -> None:
    p = tmp_path / "bad.parquet"
    pl.DataFrame({"run_id": [f"r{i % 100}" for i in range(20_000)], "step": list(range(20_000)),
                  "action": ["x"] * 20_000}).write_parquet(p, compression="zstd")
    raw = bytearray(p.read_bytes())
    for i in range(100, len(raw) // 2):
        raw[i] = (raw[i] * 7 + 13) % 256
    p.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=r"bad\.parquet(, column '\w+')?: reading failed: .*(zstd|ZSTD)"):
        read_logs(p, engine=engine)


def test_error_missing_required_column_names_file_and_columns(tmp_path: Path) -> None:
    p = _write(_canon(2).drop("action"), tmp_path / "noaction.parquet")
    with pytest.raises(SchemaError, match=r"noaction\.parquet: missing required column\(s\) \['action'\].*found \['run_id', 'step', 'ts'\]"):
        read_logs(p)


def test_error_unknown_format_and_unconvertible_type(tmp_path: Path) -> None:
    p = _write(pl.DataFrame({"session": ["s"], "tool": ["x"]}), tmp_path / "odd.parquet")
    with pytest.raises(SchemaError, match=r"odd\.parquet: cannot tell the log format: expected canonical columns.*found \['session', 'tool'\]"):
        read_logs(p)
    q = _write(_canon(1).with_columns(pl.lit(True).alias("ts")), tmp_path / "boolts.parquet")
    with pytest.raises(SchemaError, match=r"boolts\.parquet: column 'ts' has type Boolean; expected a datetime"):
        read_logs(q)


def test_error_column_map_source_in_no_file(tmp_path: Path) -> None:
    p = _write(_canon(1), tmp_path / "a.parquet")
    with pytest.raises(SchemaError, match=r"column_map source column\(s\) \['sessoin'\] are in none of the 1 file"):
        read_logs(p, column_map={"sessoin": "run_id"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "csv"}, "format must be one of"),
        ({"engine": "spark"}, "engine must be one of"),
        ({"since": "last tuesday"}, "since must be a datetime, a date or ISO-8601 text"),
        ({"since": 5}, "since must be a datetime"),
        ({"since": "2026-11-02", "until": "2026-11-01"}, "until .* must be later than since"),
        ({"agents": []}, "agents is empty"),
        ({"agents": [1, 2]}, "agents must be an agent name or a list"),
        ({"column_map": {"a": "nope"}}, "not a canonical column"),
    ],
)
def test_error_invalid_parameters(tmp_path: Path, kwargs: dict, message: str) -> None:
    p = _write(_canon(1), tmp_path / "a.parquet")
    with pytest.raises(InvalidParameterError, match=message):
        read_logs(p, **kwargs)


def test_error_source_of_wrong_type() -> None:
    with pytest.raises(InvalidParameterError, match="source must be a path"):
        read_logs(42)
    with pytest.raises(InvalidParameterError, match="source items must be paths"):
        read_logs(["a.parquet", 3])
    import pandas as pd

    with pytest.raises(InvalidParameterError, match=r"got pandas.DataFrame; convert it with polars.from_pandas"):
        dw.audit(pd.DataFrame({"run_id": ["a"], "step": [1], "action": ["x"]}))


def test_every_error_is_a_driftwatch_error() -> None:
    for cls in (NoInputError, CorruptFileError, SchemaError, InvalidParameterError):
        assert issubclass(cls, DriftwatchError)


# ---------------------------------------------------------------- result objects


def test_stats_are_dict_like_and_json_ready(messy: Path) -> None:
    st_ = read_logs(messy).stats
    d = dict(st_)
    assert d["rows_in"] == st_["rows_in"] == st_.rows_in
    json.dumps(st_.to_dict())
    with pytest.raises(KeyError):
        st_["nope"]
    assert st_.engine == "polars" and st_.seconds >= 0


def test_read_result_is_accepted_by_detectors(fleet: tuple[synth.Fleet, Path]) -> None:
    res = read_logs(fleet[1])
    feats = dw.run_features(res)
    assert feats.height == fleet[0].events["run_id"].n_unique()


# ---------------------------------------------------------------- property: nothing lost

_GOOD_TS = {
    "2026-11-01T00:00:00Z": datetime(2026, 11, 1, tzinfo=UTC),
    "2026-11-01T03:00:01+02:00": datetime(2026, 11, 1, 1, 0, 1, tzinfo=UTC),
    "2026-11-02": datetime(2026, 11, 2, tzinfo=UTC),
}
_OK_STATUS = {"ok", "OK", "Error", "failed", "Success", "TIMEOUT"}

row_strategy = st.fixed_dictionaries(
    {
        "run_id": st.sampled_from(["r1", "r2", "r3", None, "", " "]),
        "step": st.one_of(st.none(), st.integers(0, 4)),
        "action": st.sampled_from(["llm", "search", "handoff:b", None, "", "  "]),
        "ts": st.sampled_from([*_GOOD_TS, "yesterday", "2026-02-30", "", None]),
        "input_tokens": st.one_of(st.none(), st.integers(-3, 40)),
        "cost_usd": st.one_of(st.none(), st.floats(-1, 1), st.just(math.nan), st.just(math.inf), st.just(-math.inf)),
        "confidence": st.one_of(st.none(), st.floats(-0.5, 1.5)),
        "status": st.sampled_from([*_OK_STATUS, "weird", "", None]),
    }
)


def _blank(x: str | None) -> bool:
    return x is None or x.strip() == ""


def _expected_reason(r: dict) -> str | None:
    if _blank(r["run_id"]):
        return "null_run_id"
    if _blank(r["action"]):
        return "null_action"
    if r["ts"] not in (None, "") and r["ts"] not in _GOOD_TS:
        return "bad_ts"
    if r["step"] is None:
        return "null_step"
    if r["cost_usd"] is not None and math.isinf(r["cost_usd"]):
        return "bad_value:cost_usd"
    if r["input_tokens"] is not None and r["input_tokens"] < 0:
        return "negative_tokens"
    if r["cost_usd"] is not None and r["cost_usd"] < 0:
        return "negative_cost"
    if r["confidence"] is not None and not 0 <= r["confidence"] <= 1:
        return "bad_confidence"
    if r["status"] not in (None, "") and r["status"] not in _OK_STATUS:
        return "bad_status"
    return None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row_strategy, min_size=1, max_size=25), split=st.integers(0, 25))
def test_property_rows_in_equals_valid_plus_rejected(rows: list[dict], split: int) -> None:
    schema = {"run_id": pl.String, "step": pl.Int64, "action": pl.String, "ts": pl.String,
              "input_tokens": pl.Int64, "cost_usd": pl.Float64, "confidence": pl.Float64, "status": pl.String}
    frame = pl.DataFrame(rows, schema=schema)
    split = min(split, len(rows))
    expected: dict[tuple[str, int], str] = {}
    kept: dict[tuple[str, int], dict] = {}
    either: set[tuple[str, int]] = set()  # a copy that differs from the row kept in a raw value
    for i, r in enumerate(rows):
        where = ("a.parquet", i) if i < split else ("b.parquet", i - split)
        reason = _expected_reason(r)
        if reason is None:
            key = (r["run_id"], r["step"])
            if key in kept:
                # an identical copy is a duplicate; one that records another value may be a
                # conflicting step (the reader compares converted values: 'ok' and 'Success'
                # are one status, 'ok' and 'TIMEOUT' are not)
                reason = "duplicate_step"
                if r != kept[key]:
                    either.add(where)
            kept.setdefault(key, r)
        if reason is not None:
            expected[where] = reason
    with tempfile.TemporaryDirectory() as tmp:
        parts = [("a.parquet", frame.head(split)), ("b.parquet", frame.slice(split))]
        for name, part in parts:
            if part.height:
                part.write_parquet(Path(tmp) / name)
        a, b = _both(tmp)
        ev = _assert_same(a, b)
        for res in (a, b):
            stats = res.stats
            assert stats.rows_in == len(rows) == stats.rows_valid + stats.rows_rejected
            assert stats.rows_rejected == res.rejected.height == sum(stats.reasons.values())
            got = {(Path(f).name, n): reason for f, n, reason in res.rejected.select(
                "source_file", "source_row", "reason").rows()}
            assert got == {w: ("conflicting_step" if w in either and got.get(w) == "conflicting_step" else x)
                           for w, x in expected.items()}
        assert ev.height == len(rows) - len(expected)
        assert ev.select(pl.sum_horizontal(pl.col("run_id", "action", "step").null_count())).item() == 0
        assert not ev.select(pl.struct("run_id", "step").is_duplicated().any()).item()
        assert set(ev["status"].drop_nulls()) <= {"ok", "error"}


def test_hive_partitions_with_schema_evolution_and_time_filter(tmp_path: Path) -> None:
    _write(_canon(3, run="x").with_columns(pl.lit(1, dtype=pl.Int32).alias("input_tokens")),
           tmp_path / "date=2026-11-01" / "p.parquet")
    _write(_canon(3, run="y").with_columns(pl.lit(2).alias("input_tokens"), pl.lit("v2").alias("version"),
                                           pl.lit("p").alias("agent")),
           tmp_path / "date=2026-11-02" / "agent=p" / "p.parquet")
    a, b = _both(tmp_path, since="2026-11-01T00:01:00")
    ev = _assert_same(a, b)
    assert ev.sort("run_id", "step").select("run_id", "step", "input_tokens", "version", "agent").rows() == [
        ("x", 2, 1, None, "default"), ("x", 3, 1, None, "default"), ("y", 2, 2, "v2", "p"), ("y", 3, 2, "v2", "p")]


# ---------------------------------------------------------------- row ranges (chunked audits)


@pytest.mark.parametrize("size", [1, 3, 5, 17])
def test_slicer_ranges_partition_the_events(messy: Path, size: int) -> None:
    """Consecutive ranges of raw rows give back exactly the events (rejected rows and the later
    copies of duplicated steps left out), across file boundaries, in reading order."""
    res = read_logs(messy)
    sl = res.slicer
    assert sl is not None and sl.n_rows == 17
    parts = [sl.events(lo, size).collect() for lo in range(0, sl.n_rows, size)]
    assert_frame_equal(pl.concat(parts), res.events.collect())
    spans = sl.run_ranges(size).collect().sort("run_id", nulls_last=True)
    # r1 has raw rows 0, 3-12 (a.parquet) and 15 (b.parquet); r2 rows 13, 14 and 16
    want = {"r1": (0, 15 // size, 12), "r2": (13 // size, 16 // size, 3)}
    got = {r: (a, b, n) for r, a, b, n in spans.rows() if r in want}
    assert got == want


def test_slicer_on_a_generated_fleet_with_filters(fleet: tuple[synth.Fleet, Path]) -> None:
    f, root = fleet
    res = read_logs(root, since="2026-10-02", agents=["billing", "support"])
    sl = res.slicer
    assert sl is not None
    per = sl.n_rows // 4 + 1
    got = pl.concat([sl.events(lo, per).collect() for lo in range(0, sl.n_rows, per)])
    assert got.height == res.stats.rows_valid > 0
    assert_frame_equal(got, res.events.collect())


def test_slicer_ranges_across_groups_of_files(tmp_path: Path) -> None:
    """Files with different columns or types are scanned as separate groups; ranges of rows
    run across them in reading order, and a run split over two groups is found in both."""
    _write(_canon(3, run="a").with_columns(pl.lit(5, dtype=pl.Int32).alias("input_tokens")), tmp_path / "1.parquet")
    _write(_canon(4, run="b").with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%z")), tmp_path / "2.parquet")
    _write(_canon(2, run="a", start=4).with_columns(pl.lit(0.5).alias("confidence")), tmp_path / "3.parquet")
    res = read_logs(tmp_path)
    sl = res.slicer
    # 1 and 3 share a group (integer tokens, datetime ts): rows are numbered 1, 3, then 2
    assert sl is not None and len(sl.groups) == 2 and sl.n_rows == 9
    for size in (1, 2, 4, 9):
        got = pl.concat([sl.events(lo, size).collect() for lo in range(0, 9, size)])
        assert_frame_equal(got, res.events.collect())
    spans = dict((r, (a, b, n)) for r, a, b, n in sl.run_ranges(4).collect().rows())
    assert spans == {"a": (0, 1, 5), "b": (1, 2, 4)}
    assert sl.events(9, 5).collect().height == 0


def test_slicer_only_for_row_by_row_input(tmp_path: Path) -> None:
    """Derived steps (no step column), span formats and the duckdb engine have no slicer:
    their rows are not converted one by one."""
    assert read_logs(SAMPLES / "otel").slicer is None
    assert read_logs(SAMPLES / "fleet" / "events", engine="duckdb").slicer is None
    assert read_logs(SAMPLES / "fleet" / "events").slicer is not None
    no_step = _write(_canon().drop("step"), tmp_path / "a.parquet")
    assert read_logs(no_step).slicer is None


@pytest.mark.parametrize("engine", ["polars", "duckdb"])
def test_text_written_as_plain_binary_reads_as_text(tmp_path: Path, engine: str) -> None:
    """Writers that leave out Parquet's UTF-8 annotation (Impala, some Go and Hive writers)
    store every text column as plain binary: it must read as the text it is, or the status is
    rejected and a destructive call evades the policy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = {"run_id": ["run-1"] * 3, "step": [1, 2, 3], "action": ["search", "delete_invoice", "llm"],
            "status": ["ok", "error", "ok"], "args": ['{"q": "café"}', None, "line\nbreak"]}
    binary = {k: pa.array([None if v is None else v.encode() for v in vals], pa.binary()) if k != "step" else vals
              for k, vals in text.items()}
    pq.write_table(pa.table(binary), tmp_path / "binary.parquet")
    assert pq.read_schema(tmp_path / "binary.parquet").field("action").type == pa.binary()
    got = read_logs(tmp_path / "binary.parquet", engine=engine)
    assert got.stats["rows_rejected"] == 0
    events = got.events.collect()
    for col, vals in text.items():
        assert events[col].to_list() == vals, col
    assert dw.check_policy(events, dw.Policy())["rule"].to_list() == ["unapproved_action"]  # delete tier


def test_a_results_folder_inside_the_logs_is_not_read_as_logs(tmp_path: Path) -> None:
    """`driftwatch audit logs --out logs/report` twice: the second run must not read the first
    run's results (runs.parquet, loops.parquet, ...) as logs."""
    logs = tmp_path / "logs"
    (logs / "day=1").mkdir(parents=True)
    pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["a"]}).write_parquet(logs / "day=1" / "part-0.parquet")
    report = logs / "report"
    report.mkdir()
    pl.DataFrame({"run_id": ["r"], "score": [0.5]}).write_parquet(report / "runs.parquet")
    assert resolve_sources(logs) == [str(logs / "day=1" / "part-0.parquet"), str(report / "runs.parquet")]
    (report / ".driftwatch").write_text("driftwatch results folder\n")
    assert resolve_sources(logs) == [str(logs / "day=1" / "part-0.parquet")]
    assert resolve_sources(report) == [str(report / "runs.parquet")]  # named itself, it is read


def test_frames_get_the_checks_files_get(tmp_path: Path) -> None:
    """The same raw rows audited from a DataFrame and from a Parquet file: same valid rows,
    same rejected rows and reasons (a frame used to skip every check)."""
    from driftwatch.read import check_frame

    t0 = datetime(2026, 10, 1, 12, tzinfo=UTC)
    raw = pl.DataFrame({
        "run_id": ["r1"] * 6 + [None, "r2"],
        "step": [1, 2, 3, 4, 5, 5, 9, 1],
        "ts": [t0 + timedelta(seconds=s) for s in (0, 1, 2, 3, 4, 4, 6, 7)],  # (row 5: a copy of row 4)
        "action": ["search"] * 8,
        "status": ["ERROR"] * 7 + ["ok"],
        "cost_usd": [0.1, -1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
    })
    raw.write_parquet(tmp_path / "raw.parquet")
    from_file = read_logs(tmp_path / "raw.parquet")
    from_frame = check_frame(raw)
    for key in ("rows_in", "rows_valid", "rows_rejected", "reasons"):
        assert from_frame.stats[key] == from_file.stats[key], key
    assert from_frame.stats.reasons == {"duplicate_step": 1, "negative_cost": 1, "null_run_id": 1}
    cols = ["source_row", "reason", "detail"]
    assert from_frame.rejected.select(cols).rows() == [(1, "negative_cost", "cost_usd=-1.0"),
                                                       (5, "duplicate_step", "kept events row 4"),
                                                       (6, "null_run_id", None)]
    assert from_file.rejected.select(cols[:2]).rows() == from_frame.rejected.select(cols[:2]).rows()
    assert from_frame.rejected.schema == pl.Schema(REJECTED_SCHEMA)
    assert_frame_equal(from_frame.collect().sort("run_id", "step"), from_file.collect().sort("run_id", "step"))
    lazy = check_frame(raw.lazy())
    assert (lazy.stats.rows_valid, lazy.stats.reasons) == (from_frame.stats.rows_valid, from_frame.stats.reasons)


# ---------------------------------------------------------------- whole runs across groups of files

_T0 = 1_793_000_000_000_000_000  # ns, 2026-10-26


def _span(sid: str, parent: str | None, name: str, op: str, k: int, trace: str = "T", **attrs: object) -> dict:
    row: dict[str, object] = {
        "trace_id": trace, "span_id": sid, "parent_span_id": parent, "name": name,
        "start_time_unix_nano": _T0 + k * 10**9, "end_time_unix_nano": _T0 + k * 10**9 + 10**8,
        "attributes.gen_ai.operation.name": op, "attributes.gen_ai.agent.name": None,
        "attributes.gen_ai.tool.name": None, "attributes.gen_ai.usage.input_tokens": None,
    }
    row.update({"attributes." + key.replace("__", "."): v for key, v in attrs.items()})
    return row


def _handoff_trace() -> pl.DataFrame:
    return pl.DataFrame([
        _span("r", None, "invoke_agent planner", "invoke_agent", 0, gen_ai__agent__name="planner"),
        _span("s1", "r", "chat m", "chat", 1, gen_ai__usage__input_tokens=10),
        _span("s2", "r", "execute_tool x", "execute_tool", 2, gen_ai__tool__name="x"),
        _span("h", "r", "invoke_agent billing", "invoke_agent", 3, gen_ai__agent__name="billing"),
        _span("h1", "h", "chat m", "chat", 4, gen_ai__usage__input_tokens=5),
        _span("h2", "h", "execute_tool refund", "execute_tool", 5, gen_ai__tool__name="refund"),
    ], schema_overrides={"attributes.gen_ai.usage.input_tokens": pl.Int64})


_HANDOFF_STEPS = [(1, "llm", "planner"), (2, "x", "planner"), (3, "handoff:billing", "planner"),
                  (4, "llm", "billing"), (5, "refund", "billing")]


def test_steps_are_derived_over_files_scanned_separately(tmp_path: Path) -> None:
    t = datetime(2026, 10, 1, tzinfo=UTC)

    def run(first: int, n: int) -> pl.DataFrame:
        return pl.DataFrame({"run_id": ["r1"] * n, "ts": [t + timedelta(seconds=first + i) for i in range(n)],
                             "action": [f"a{first + i}" for i in range(n)]})

    cases = {  # each pair differs in a way that puts the files in separate scans
        "float_tokens": (run(0, 3).with_columns(pl.lit(1).alias("input_tokens")),
                         run(10, 3).with_columns(pl.lit(1.0).alias("input_tokens"))),
        "null_typed": (run(0, 3).with_columns(pl.Series("error_type", ["Timeout", None, None])),
                       run(10, 3).with_columns(pl.lit(None).alias("error_type"))),
        "naive_ts": (run(0, 3), run(10, 3).with_columns(pl.col("ts").dt.replace_time_zone(None))),
        "epoch_ts": (run(0, 3), run(10, 3).with_columns(pl.col("ts").dt.epoch("ms"))),
    }
    for name, (a, b) in cases.items():
        # the later file first in path order: steps follow ts, not the order of the scans
        _write(b, tmp_path / name / "part-0.parquet")
        _write(a, tmp_path / name / "part-1.parquet")
        ra, rb = _both(tmp_path / name)
        ev = _assert_same(ra, rb).sort("step")
        assert ra.stats.rows_rejected == 0, (name, ra.stats.reasons)
        assert ev["action"].to_list() == ["a0", "a1", "a2", "a10", "a11", "a12"], name
        assert ev["step"].to_list() == [1, 2, 3, 4, 5, 6], name
    # a hive layout change (daily -> hourly partitions) within one run
    e = run(0, 4)
    _write(e[:2], tmp_path / "hive" / "date=2026-10-01" / "hour=23" / "p.parquet")
    _write(e[2:], tmp_path / "hive" / "date=2026-10-02" / "p.parquet")
    ra, rb = _both(tmp_path / "hive")
    assert _assert_same(ra, rb).sort("step")["action"].to_list() == ["a0", "a1", "a2", "a3"]
    # ties in ts: the order read (files in path order, rows in file order), across scans
    _write(run(0, 2).with_columns(pl.lit(t).alias("ts"), pl.lit(1).alias("input_tokens")), tmp_path / "tie" / "0.parquet")
    _write(run(5, 2).with_columns(pl.lit(t).alias("ts"), pl.lit(1.0).alias("input_tokens")), tmp_path / "tie" / "1.parquet")
    ra, rb = _both(tmp_path / "tie")
    assert _assert_same(ra, rb).sort("step")["action"].to_list() == ["a0", "a1", "a5", "a6"]


def test_span_hierarchy_is_built_across_files_scanned_separately(tmp_path: Path) -> None:
    full = _handoff_trace()
    _write(full[:3], tmp_path / "batch-0.parquet")
    _write(full[3:].with_columns(pl.col("attributes.gen_ai.usage.input_tokens").cast(pl.Float64)),
           tmp_path / "batch-1.parquet")
    a, b = _both(tmp_path)
    ev = _assert_same(a, b)
    assert a.stats.reasons == {"not_a_step": 1}
    assert ev.sort("step").select("step", "action", "agent").rows() == _HANDOFF_STEPS


def _relayout(frame: pl.DataFrame, layout: str) -> pl.DataFrame:
    """The same spans as another exporter writes them."""
    attrs = [c for c in frame.columns if c.startswith("attributes.")]
    if layout == "otlp_json":
        return frame.rename({"trace_id": "traceId", "span_id": "spanId", "parent_span_id": "parentSpanId",
                             "start_time_unix_nano": "startTimeUnixNano", "end_time_unix_nano": "endTimeUnixNano"})
    if layout == "bare_attributes":
        return frame.rename({c: c.removeprefix("attributes.") for c in attrs})
    assert layout == "attributes_struct"
    return frame.select(pl.exclude(attrs), pl.struct(pl.col(c).alias(c.removeprefix("attributes.")) for c in attrs)
                        .alias("attributes"))


@pytest.mark.parametrize("layout", ["otlp_json", "bare_attributes", "attributes_struct"])
def test_span_files_of_different_layouts_are_read_each_by_its_own_columns(tmp_path: Path, layout: str) -> None:
    """A merged scan reads one spelling per input (trace_id over traceId, a flattened
    attributes.* column over a struct field): files whose columns differ so are scanned apart."""
    full = _handoff_trace()
    _write(full[:3], tmp_path / "batch-0.parquet")
    _write(_relayout(full[3:], layout), tmp_path / "batch-1.parquet")
    a, b = _both(tmp_path)
    ev = _assert_same(a, b).sort("step")
    assert (a.stats.rows_in, a.stats.rows_valid, a.stats.reasons) == (6, 5, {"not_a_step": 1})
    assert ev.select("step", "action", "agent").rows() == _HANDOFF_STEPS
    assert ev["input_tokens"].to_list() == [10, None, None, 5, None]
    assert ev["latency_ms"].to_list() == [100.0] * 5


def test_openinference_files_with_flat_and_struct_context_are_both_read(tmp_path: Path) -> None:
    t = datetime(2026, 11, 2, 9, tzinfo=UTC)
    common = {"name": ["ChatOpenAI", "lookup"], "span_kind": ["LLM", "TOOL"], "parent_id": [None, None],
              "start_time": [t, t + timedelta(seconds=1)], "end_time": [t + timedelta(seconds=1), t + timedelta(seconds=2)]}
    _write(pl.DataFrame({**common, "context.trace_id": ["aa"] * 2, "context.span_id": ["1", "2"]}), tmp_path / "a.parquet")
    _write(pl.DataFrame({**common, "context": [{"trace_id": "bb", "span_id": "1"}, {"trace_id": "bb", "span_id": "2"}]}),
           tmp_path / "b.parquet")
    a, b = _both(tmp_path)
    ev = _assert_same(a, b)
    assert (a.stats.rows_in, a.stats.rows_valid, a.stats.rows_rejected) == (4, 4, 0)
    assert sorted(ev.select("run_id", "step", "action").rows()) == [
        ("aa", 1, "llm"), ("aa", 2, "lookup"), ("bb", 1, "llm"), ("bb", 2, "lookup")]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_span_delivered_twice_is_a_duplicate_step(tmp_path: Path, engine: str) -> None:
    batch = _handoff_trace()
    _write(pl.concat([batch, batch[1:3]]), tmp_path / "export-0.parquet")  # the collector retried a batch
    _write(batch[4:5], tmp_path / "export-1.parquet")
    res = read_logs(tmp_path, engine=engine)
    assert res.stats.reasons == {"duplicate_step": 3, "not_a_step": 1}
    assert res.collect().sort("step").select("step", "action", "agent").rows() == _HANDOFF_STEPS
    dups = res.rejected.filter(pl.col("reason") == "duplicate_step")
    first = str(tmp_path / "export-0.parquet")
    assert dups.select("source_file", "source_row", "detail").rows() == [
        (first, 6, f"kept {first} row 1"), (first, 7, f"kept {first} row 2"),
        (str(tmp_path / "export-1.parquet"), 0, f"kept {first} row 4"),
    ]
    assert res.stats.rows_in == res.stats.rows_valid + res.stats.rows_rejected == 9


def test_span_filters_apply_after_the_hierarchy_is_built(tmp_path: Path) -> None:
    _write(_handoff_trace(), tmp_path / "spans.parquet")
    start = datetime.fromtimestamp(_T0 / 1e9, UTC)
    a, b = _both(tmp_path, since=start + timedelta(milliseconds=500))
    ev = _assert_same(a, b)
    assert ev.sort("step").select("step", "action", "agent").rows() == _HANDOFF_STEPS
    assert a.stats.rows_rejected == 0  # the root span is outside the window
    a, b = _both(tmp_path, agents=["billing"])
    assert _assert_same(a, b).sort("step").select("step", "action").rows() == [(4, "llm"), (5, "refund")]
    oi = read_logs(SAMPLES / "openinference")
    want = oi.events.filter(pl.col("agent") == "billing").collect().sort("run_id", "step")
    got = read_logs(SAMPLES / "openinference", agents=["billing"]).collect().sort("run_id", "step")
    assert_frame_equal(got, want)


def test_duckdb_reads_utc_span_times_like_polars(tmp_path: Path) -> None:
    t = datetime(2026, 10, 1, tzinfo=UTC)
    _write(pl.DataFrame({
        "context.trace_id": ["T", "T"], "context.span_id": ["a", "b"], "parent_id": [None, "a"],
        "name": ["ChatOpenAI", "search"], "span_kind": ["LLM", "TOOL"],
        "start_time": [t, t + timedelta(seconds=1)], "end_time": [t + timedelta(seconds=0.5), t + timedelta(seconds=2)],
        "status_code": ["OK", "OK"],
    }), tmp_path / "spans.parquet")
    a, b = _both(tmp_path)
    ev = _assert_same(a, b)
    assert ev.sort("step")["latency_ms"].to_list() == [500.0, 1000.0]


def test_column_map_that_moves_a_required_column_away_says_so(tmp_path: Path) -> None:
    p = _write(_canon(2), tmp_path / "x.parquet")
    with pytest.raises(SchemaError, match=r"'run_id' is read as 'parent_run_id'.*missing required column\(s\) \['run_id'\]"):
        read_logs(p, column_map={"run_id": "parent_run_id"})
    with pytest.raises(SchemaError) as err:
        read_logs(p, format="otel")
    assert "__dw_" not in str(err.value) and "found ['run_id', 'step', 'ts', 'action']" in str(err.value)


def test_column_map_source_missing_from_some_files_leaves_them_as_they_are(
    tmp_path: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    """A file without the mapped source keeps its own target column: the files' union scan read the
    source as null there and nulled the target (cost_usd of old files, run_id: null_run_id)."""
    t = datetime(2026, 10, 1, tzinfo=UTC)

    def frame(run_col: str, run: str, **extra: object) -> pl.DataFrame:
        return pl.DataFrame({run_col: [run] * 2, "step": [1, 2], "ts": [t] * 2, "action": ["llm", "search"], **extra})

    _write(frame("run_id", "old", cost_usd=[0.9, 0.9]), tmp_path / "a_old.parquet")
    _write(frame("run_id", "new", cost=[0.2, 0.2]), tmp_path / "b_new.parquet")
    a, b = _both(tmp_path, column_map={"cost": "cost_usd"})
    ev = _assert_same(a, b)
    assert ev.sort("run_id", "step").select("run_id", "cost_usd").rows() == [
        ("new", 0.2), ("new", 0.2), ("old", 0.9), ("old", 0.9)]
    _write(frame("session", "s"), tmp_path / "c_sess.parquet")
    cmap = {"session": "run_id", "cost": "cost_usd"}
    a, b = _both(tmp_path, column_map=cmap)
    ev = _assert_same(a, b)
    assert (a.stats.rows_in, a.stats.rows_valid, a.stats.reasons) == (6, 6, {})
    assert ev.sort("run_id", "step").select("run_id", "cost_usd").rows() == [
        ("new", 0.2), ("new", 0.2), ("old", 0.9), ("old", 0.9), ("s", None), ("s", None)]
    # a file with both the source and the target: the map wins (its own cost_usd is not read)
    _write(frame("session", "both", cost=[0.5, None], cost_usd=[7.0, 7.0]), tmp_path / "d_both.parquet")
    a, b = _both(tmp_path, column_map=cmap)
    ev = _assert_same(a, b)
    assert ev.filter(pl.col("run_id") == "both").sort("step")["cost_usd"].to_list() == [0.5, None]
    assert ev.filter(pl.col("run_id") == "old")["cost_usd"].to_list() == [0.9, 0.9]
    # the CLI's --map is the same column_map
    code, out, err = run_cli("validate", tmp_path, "--strict", "--map", "session=run_id", "--map", "cost=cost_usd")
    assert code == 0, (out, err)


def test_column_map_source_missing_from_some_span_files(tmp_path: Path) -> None:
    """An adapter override applies to the files that have the source; the others keep the adapter's choice."""
    t = datetime(2026, 10, 1, tzinfo=UTC)

    def spans(trace: str, **extra: object) -> pl.DataFrame:
        return pl.DataFrame({
            "context.trace_id": [trace] * 2, "context.span_id": [trace + "a", trace + "b"], "parent_id": [None, None],
            "name": ["ChatOpenAI", "search"], "span_kind": ["LLM", "TOOL"],
            "start_time": [t, t + timedelta(seconds=1)], "end_time": [t + timedelta(seconds=1), t + timedelta(seconds=2)],
            "status_code": ["OK", "OK"], **extra,
        })

    _write(spans("T1", **{"attributes.session.id": ["S", "S"]}), tmp_path / "a.parquet")
    _write(spans("T2"), tmp_path / "b.parquet")
    a, b = _both(tmp_path, column_map={"attributes.session.id": "run_id"})
    ev = _assert_same(a, b)
    assert a.stats.reasons == {}
    assert ev.sort("run_id", "step").select("run_id", "step", "action").rows() == [
        ("S", 1, "llm"), ("S", 2, "search"), ("T2", 1, "llm"), ("T2", 2, "search")]


@pytest.mark.parametrize("engine", ["polars", "duckdb"])
def test_a_hive_value_holding_an_equals_sign_is_one_clear_error(tmp_path: Path, engine: str) -> None:
    """agent=a=b/ crashed both readers with a query-plan dump (Polars' ColumnNotFoundError,
    DuckDB's "Hive partition mismatch" read as a corrupt file)."""
    from driftwatch.errors import SchemaError

    (tmp_path / "agent=a=b").mkdir()
    pl.DataFrame({"run_id": ["a", "a"], "step": [1, 2], "action": ["x", "y"]}).write_parquet(
        tmp_path / "agent=a=b" / "p.parquet")
    with pytest.raises(SchemaError, match=r"p.parquet: folder 'agent=a=b' is a hive partition whose value holds '='"):
        read_logs(tmp_path, engine=engine)


def test_reserved_and_engine_column_names_are_clear_errors(tmp_path: Path) -> None:
    """A column __dw_reason was read as the reader's own rejection reason (its runs vanished);
    __dw_file / __dw_row crashed Polars; file_row_number broke the duckdb engine with a
    "corrupt file" message (now both engines read it: see
    test_duckdb_reads_columns_named_like_its_own_in_any_case)."""
    import driftwatch as dw
    from driftwatch.errors import SchemaError
    from driftwatch.read import check_frame

    base = pl.DataFrame({"run_id": ["a", "a"], "step": [1, 2], "action": ["llm", "search"]})
    for col in ("__dw_reason", "__dw_file", "__dw_row"):
        p = tmp_path / f"{col}.parquet"
        base.with_columns(pl.lit("nothing to see").alias(col)).write_parquet(p)
        for engine in ("polars", "duckdb"):
            with pytest.raises(SchemaError, match=rf"\['{col}'\] use the prefix '__dw_' that driftwatch reserves"):
                read_logs(p, engine=engine)
        with pytest.raises(SchemaError, match="reserves"):
            check_frame(base.with_columns(pl.lit("x").alias(col)))
        with pytest.raises(SchemaError, match="reserves"):
            dw.audit(base.with_columns(pl.lit("x").alias(col)))
    p = tmp_path / "frn.parquet"
    base.with_columns(file_row_number=pl.Series([0, 1])).write_parquet(p)
    assert read_logs(p).stats.rows_valid == 2
    assert read_logs(p, engine="duckdb").events.collect().height == 2


@pytest.mark.parametrize("engine", ["polars", "duckdb"])
def test_an_empty_agent_is_the_default_agent(tmp_path: Path, engine: str) -> None:
    """The README: agent "null or empty -> 'default'"; an empty name stayed "" (the reader maps
    values only when its checking pass sees something to map, and did not look at agent)."""
    import driftwatch as dw

    p = tmp_path / "a.parquet"
    pl.DataFrame({"run_id": ["a", "b", "c"], "step": [1, 1, 1], "action": ["x", "y", "z"],
                  "agent": ["", None, "planner"]}).write_parquet(p)
    assert read_logs(p, engine=engine).events.collect().sort("run_id")["agent"].to_list() == [
        "default", "default", "planner"]
    frame = pl.read_parquet(p)
    assert dw.run_features(frame).sort("run_id")["agent"].to_list() == ["default", "default", "planner"]


def test_timestamps_too_far_out_for_their_unit_are_bad_ts_on_both_engines(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ns = 1_790_000_000_000_000_000  # an epoch in nanoseconds, written as ms / us / days
    columns = {
        "ms": pa.array([1_790_000_000_000, ns], pa.timestamp("ms")),
        "ms_utc": pa.array([1_790_000_000_000, ns], pa.timestamp("ms", tz="UTC")),
        "us": pa.array([1_790_000_000_000_000, ns], pa.timestamp("us")),
        "date": pa.array([20_000, 10**8], pa.date32()),
    }
    for name, ts in columns.items():
        pq.write_table(pa.table({"run_id": ["r", "r"], "step": [0, 1], "ts": ts, "action": ["a", "a"]}),
                       tmp_path / f"{name}.parquet")
        a, b = _both(tmp_path / f"{name}.parquet")
        _assert_same(a, b)
        assert a.stats.reasons == {"bad_ts": 1}, name
        assert a.rejected.get_column("source_row").to_list() == [1]
        assert a.rejected.get_column("detail").item()  # the raw value, as text
    # a millisecond file next to a microsecond one (one merged scan would upcast, and overflow)
    a, b = _both([tmp_path / "ms.parquet", tmp_path / "us.parquet"])
    _assert_same(a, b)
    assert a.stats.reasons["bad_ts"] == 2


def test_cli_turns_an_engine_panic_into_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from polars.exceptions import PanicException

    import driftwatch.read
    from driftwatch.cli import main

    def panic(*args: object, **kwargs: object) -> None:
        raise PanicException("invalid or out-of-range datetime")

    monkeypatch.setattr(driftwatch.read, "read_logs", panic)
    monkeypatch.delenv("DRIFTWATCH_DEBUG", raising=False)
    assert main(["validate", str(_write(_canon(), tmp_path / "a.parquet"))]) == 2
    err = capsys.readouterr().err
    assert "internal error" in err and "out-of-range datetime" in err and "Traceback" not in err


def test_bad_ts_detail_is_the_same_text_on_both_engines(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    year_10000 = 253_402_300_800_000  # ms
    for name, ts in {
        "ms_utc": pa.array([1_790_000_000_000, year_10000], pa.timestamp("ms", tz="UTC")),
        "ms_paris": pa.array([1_790_000_000_000, year_10000], pa.timestamp("ms", tz="Europe/Paris")),
        "ms_naive": pa.array([1_790_000_000_000, -86_400_000], pa.timestamp("ms")),
    }.items():
        pq.write_table(pa.table({"run_id": ["r", "r"], "step": [0, 1], "action": ["a", "a"], "ts": ts}),
                       tmp_path / f"{name}.parquet")
        a, b = _both(tmp_path / f"{name}.parquet")
        _assert_same(a, b)
        detail = a.rejected.get_column("detail").item()
        assert detail == ("1969-12-31 00:00:00.000000" if name == "ms_naive" else "+10000-01-01 00:00:00.000000+00:00")


@pytest.mark.parametrize("engine", ENGINES)
def test_paths_holding_wildcard_characters_are_read_as_named(tmp_path: Path, engine: str) -> None:
    names = ["batch[1]/part-0.parquet", "star*/part-0.parquet", "what?/part-0.parquet", "esc\x1b[31m.parquet"]
    for i, name in enumerate(names):
        _write(_canon(2, run=f"r{i}"), tmp_path / "logs" / name)
    # decoys a wildcard would match instead: batch1/, starX/, whatX/
    for decoy in ("batch1", "starX", "whatX"):
        _write(_canon(3, run=decoy), tmp_path / "decoys" / decoy / "part-0.parquet")
        shutil.copytree(tmp_path / "decoys" / decoy, tmp_path / "logs" / decoy)
    named = [str(tmp_path / "logs" / n) for n in names]
    res = read_logs(named, engine=engine)
    assert res.stats.rows_in == 8 and res.stats.paths == tuple(named)
    assert sorted(res.events.collect().get_column("run_id").unique()) == ["r0", "r1", "r2", "r3"]
    walked = read_logs(tmp_path / "logs", engine=engine)
    assert walked.stats.rows_in == 8 + 9


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("missing", ["run_id", "action"])
def test_a_file_missing_a_required_column_is_an_error_next_to_good_files(
    tmp_path: Path, engine: str, missing: str
) -> None:
    _write(_canon(2), tmp_path / "a.parquet")
    _write(_canon(2, run="r9").rename({missing: "other"}), tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match=rf"b\.parquet: missing required column\(s\) \['{missing}'\]"):
        read_logs(tmp_path, engine=engine)
    # a file without step but with ts is still fine: its steps are derived from ts
    (tmp_path / "b.parquet").unlink()
    _write(_canon(2, run="r9").drop("step"), tmp_path / "b.parquet")
    assert read_logs(tmp_path, engine=engine).stats.rows_valid == 4


def test_agents_default_keeps_rows_whose_agent_is_empty(tmp_path: Path) -> None:
    _write(pl.DataFrame({"run_id": ["r1", "r2", "r3", "r4"], "step": [1, 1, 1, None], "action": ["a"] * 4,
                         "agent": ["x", "", None, ""]}), tmp_path / "a.parquet")
    a, b = _both(tmp_path, agents=["default"])
    _assert_same(a, b)
    assert a.stats.rows_in == 3 and a.stats.reasons == {"null_step": 1}  # r4 is counted, and rejected
    assert _sorted(a.events.collect()).select("run_id", "agent").rows() == [("r2", "default"), ("r3", "default")]
    x = read_logs(tmp_path, agents="x")
    assert x.stats.rows_in == 1 and x.events.collect().get_column("run_id").to_list() == ["r1"]


def test_zero_row_files_without_columns_or_required_columns_next_to_others(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write(_canon(2), tmp_path / "day1.parquet")
    pq.write_table(pa.table({}), tmp_path / "day2.parquet")  # pd.DataFrame([]).to_parquet(...)
    _write(_canon(0).drop("action"), tmp_path / "day3.parquet")
    a, b = _both(tmp_path)
    _assert_same(a, b)
    assert a.stats.files == 3 and a.stats.rows_in == 2 and a.stats.formats == {"canonical": 2}
    # only files without rows: still the clear error
    with pytest.raises(NoInputError, match="no rows to read"):
        read_logs([tmp_path / "day2.parquet", tmp_path / "day3.parquet"])


@pytest.mark.parametrize("engine", ENGINES)
def test_a_type_error_in_a_merged_scan_names_the_file(tmp_path: Path, engine: str) -> None:
    _write(_canon(2).drop("ts"), tmp_path / "a.parquet")
    _write(_canon(1, run="r2").with_columns(ts=pl.lit(True)), tmp_path / "b.parquet")
    _write(_canon(2, run="r3").drop("ts"), tmp_path / "c.parquet")
    with pytest.raises(SchemaError, match=r"b\.parquet: column 'ts' has type Boolean"):
        read_logs(tmp_path, engine=engine)


def test_a_repeated_step_is_a_copy_only_when_every_column_is_the_same(tmp_path: Path) -> None:
    """A row repeating (run_id, step) with the same action and args but another status, cost,
    result or time (a failed call and its later success) was a harmless duplicate_step, its
    cost lost; only a row equal in every column is a re-delivered copy. Both engines agree."""
    base = _canon(2, run="r").with_columns(pl.lit("search").alias("action"), pl.lit("{}").alias("args"),
                                          pl.lit("ok").alias("status"), pl.lit(0.5).alias("cost_usd"))
    again = pl.concat([
        base.head(1),                                                    # the same row: a copy
        base.head(1).with_columns(pl.lit(4.0).alias("cost_usd")),        # another cost
        base.head(1).with_columns(pl.lit("error").alias("status")),      # another status
        base.head(1).with_columns(pl.lit("done").alias("result")),       # another result
    ], how="diagonal_relaxed")
    _write(base, tmp_path / "a.parquet")
    _write(again, tmp_path / "b.parquet")
    a, b = _both(tmp_path)
    _assert_same(a, b)
    assert a.rejected.sort("source_row")["reason"].to_list() == [
        "duplicate_step", "conflicting_step", "conflicting_step", "conflicting_step"]
    framed = check_frame(pl.concat([base, again], how="diagonal_relaxed"))
    assert framed.rejected["reason"].to_list() == a.rejected.sort("source_row")["reason"].to_list()


def test_a_page_the_decoder_panics_on_is_a_corrupt_file_naming_its_column(tmp_path: Path, run_cli) -> None:
    """Some damaged pages make Polars' Parquet decoder panic (a pyo3 PanicException, which is not
    an Exception) instead of failing: every command said 'internal error: the engine panicked'
    and named no file. It is a CorruptFileError naming the file and the column now."""
    import pyarrow.parquet as pq

    import driftwatch as dw
    from driftwatch.errors import CorruptFileError

    ev = dw.synth.generate(days=1, runs_per_day=40, seed=1).events
    base, bad = tmp_path / "base.parquet", tmp_path / "logs" / "f.parquet"
    bad.parent.mkdir()
    ev.write_parquet(base, compression="zstd", row_group_size=100)
    col = next(c for c in (pq.ParquetFile(base).metadata.row_group(0).column(i) for i in range(ev.width))
               if c.path_in_schema == "feedback")
    raw = bytearray(base.read_bytes())
    mid = col.data_page_offset + col.total_compressed_size // 2
    raw[mid:mid + 16] = bytes(b ^ 0xFF for b in raw[mid:mid + 16])
    bad.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=rf"{bad}, column 'feedback': reading failed"):
        dw.read_logs(bad.parent)
    # DuckDB fails where Polars panics; its failure does not always repeat when the file is read
    # again column by column, so the column is named when it does (about 4 times in 5)
    with pytest.raises(CorruptFileError, match=rf"{bad}(, column 'feedback')?: reading failed"):
        dw.read_logs(bad.parent, engine="duckdb")
    for cmd in (["validate"], ["loops"], ["audit", "--out", str(tmp_path / "out")]):
        code, _, err = run_cli(cmd[0], bad.parent, *cmd[1:])
        assert code == 2 and f"{bad}, column 'feedback': reading failed" in err.strip().splitlines()[-1], err


@pytest.mark.parametrize("engine", ENGINES)
def test_the_first_copy_kept_is_the_first_in_sorted_path_order(tmp_path: Path, engine: str) -> None:
    """Files of one schema share a scan, and the first copy of a repeated step was the first of
    the scans: c.parquet (the scan of a and c) won over b.parquet (its text ts: a scan of its
    own), though b sorts first; a path and a frame of the same rows kept other copies. And a
    folder listed its own files before its subfolders' (b.parquet before a/x.parquet) where a
    glob sorts the paths: auditing the folder or the glob kept other copies."""
    t = datetime(2026, 10, 1, tzinfo=UTC)
    run = pl.DataFrame({"run_id": ["r1"] * 3, "step": [1, 2, 3], "ts": [t + timedelta(seconds=i) for i in range(3)],
                        "action": ["llm", "search", "llm"], "cost_usd": [0.01] * 3})
    run.with_columns(run_id=pl.lit("r0")).write_parquet(tmp_path / "a.parquet")
    run.slice(1, 1).with_columns(cost_usd=pl.lit(5.0), ts=pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")) \
        .write_parquet(tmp_path / "b.parquet")
    run.write_parquet(tmp_path / "c.parquet")
    res = read_logs(tmp_path, engine=engine)
    assert res.rejected.select(pl.col("source_file").str.ends_with("c.parquet"), "reason", "detail").rows() == [
        (True, "conflicting_step", f"kept {tmp_path / 'b.parquet'} row 0")]
    frame = pl.concat([pl.read_parquet(tmp_path / f"{x}.parquet").with_columns(pl.col("ts").cast(pl.String))
                       for x in "abc"])
    for source in (tmp_path, frame):
        assert dw.audit(source, engine=engine).runs.filter(pl.col("run_id") == "r1")["cost_usd"].to_list() == [5.02]

    nested = tmp_path / "nested"
    (nested / "a").mkdir(parents=True)
    run.write_parquet(nested / "a" / "x.parquet")
    run.slice(1, 1).with_columns(cost_usd=pl.lit(5.0)).write_parquet(nested / "b.parquet")
    for source in (nested, str(nested / "**" / "*.parquet")):
        got = read_logs(source, engine=engine)
        assert [Path(p).relative_to(nested).as_posix() for p in got.stats.paths] == ["a/x.parquet", "b.parquet"]
        assert got.rejected["source_file"].to_list() == [str(nested / "b.parquet")]


# ---------------------------------------------------------------- time zones and DuckDB's names


def _zoned_logs(root: Path, tz: str) -> Path:
    """Two hive partitions, each with a file whose ``ts`` is in ``tz`` and a UTC file (as pandas
    writes ``pd.to_datetime("2026-10-01T09:00:00+05:30")``: Arrow ``timestamp[us, tz=+05:30]``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = datetime(2026, 10, 1, 3, 30, tzinfo=UTC)
    for agent in ("planner", "billing"):
        for k, zone in enumerate((tz, "UTC")):
            ts = [base + timedelta(hours=k, minutes=i) for i in range(6)]
            table = pa.table({
                "run_id": [f"{agent}-{k}-{i % 2}" for i in range(6)], "step": list(range(6)),
                "ts": pa.array(ts, pa.timestamp("us", "UTC")).cast(pa.timestamp("us", zone)),
                "action": ["llm", "search", "read"] * 2,
            })
            (root / f"agent={agent}").mkdir(parents=True, exist_ok=True)
            pq.write_table(table, root / f"agent={agent}" / f"p{k}.parquet")
    return root


@pytest.mark.parametrize("tz", ["+05:30", "Z", "-03:45"])
def test_a_fixed_offset_time_zone_reads_as_utc_on_both_engines(tmp_path: Path, tz: str) -> None:
    """``ts`` in a fixed-offset zone Polars' Parquet reader cannot parse (``+05:30``) made it
    panic while reading the footer: read_logs raised a pyo3 PanicException, the CLI printed a
    Rust panic. The README: ts in any unit and time zone, converted to UTC."""
    zoned, utc = _zoned_logs(tmp_path / "zoned", tz), _zoned_logs(tmp_path / "utc", "UTC")
    for engine in ENGINES:
        for kw in ({}, {"since": "2026-10-01T04:32:00Z", "agents": ["billing"]}):
            got = read_logs(zoned, engine=engine, **kw)  # type: ignore[arg-type]
            want = read_logs(utc, engine=engine, **kw)  # type: ignore[arg-type]
            assert_frame_equal(_sorted(got.events.collect()), _sorted(want.events.collect()))
            assert got.stats.rows_in == want.stats.rows_in > 0
    assert read_logs(zoned).events.collect().get_column("ts").min() == datetime(2026, 10, 1, 3, 30, tzinfo=UTC)


def test_a_fixed_offset_time_zone_in_validate_audit_and_chunked_audits(tmp_path: Path, run_cli) -> None:
    """Every path that reads the files: the CLI's validate (no Rust panic), dw.audit on both
    engines, and in chunks (the row slicer cannot cut DuckDB's scans: it is off for such input)."""
    zoned, utc = _zoned_logs(tmp_path / "zoned", "+05:30"), _zoned_logs(tmp_path / "utc", "UTC")
    assert read_logs(zoned).slicer is None and read_logs(utc).slicer is not None
    for engine in ENGINES:
        code, _, err = run_cli("validate", "--engine", engine, str(zoned))
        assert code == 0, err
    for engine, chunks in (("polars", 3), ("duckdb", None)):
        a = dw.audit(zoned, engine=engine, chunks=chunks, chunk_rows=5)
        b = dw.audit(utc, engine=engine, chunks=chunks, chunk_rows=5)
        assert_frame_equal(a.runs.sort("run_id"), b.runs.sort("run_id"))


def test_a_fixed_offset_time_zone_nested_or_beside_step_less_files(tmp_path: Path) -> None:
    """A zone inside a struct column panicked as well; a step-less zoned file's steps are
    derived in UTC order with the other files'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = datetime(2026, 10, 1, 3, 30, tzinfo=UTC)
    zoned = pa.array([t0 + timedelta(seconds=5), t0], pa.timestamp("us", "UTC")).cast(pa.timestamp("us", "+05:30"))
    meta = pa.StructArray.from_arrays([zoned], ["at"])
    pq.write_table(pa.table({"run_id": ["a", "a"], "ts": zoned, "action": ["x", "y"], "meta": meta}), tmp_path / "a.parquet")
    _write(pl.DataFrame({"run_id": ["a"], "ts": [t0 + timedelta(seconds=2)], "action": ["z"]}), tmp_path / "b.parquet")
    a, b = _both(tmp_path)
    ev = _assert_same(a, b)
    assert ev.sort("step").select("step", "action").rows() == [(1, "y"), (2, "z"), (3, "x")]


def test_a_fixed_offset_zone_in_a_file_duckdb_cannot_read_either_is_one_schema_error(tmp_path: Path) -> None:
    """Only DuckDB reads such a zone; a file it cannot read as Polars does (``action`` and
    ``Action``: DuckDB renames one) is a SchemaError naming the file and the columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ts = pa.array([0, 1], pa.timestamp("us", "+05:30"))
    pq.write_table(pa.table({"run_id": ["a", "a"], "step": [1, 2], "ts": ts, "action": ["x", "y"],
                             "Action": ["p", "q"]}), tmp_path / "a.parquet")
    for engine in ENGINES:
        with pytest.raises(SchemaError, match=r"a\.parquet: column\(s\) \['ts'\] hold timestamps in time zone\(s\) "
                                              r"\['\+05:30'\].*'action' and 'Action' differ only in case"):
            read_logs(tmp_path, engine=engine)


def test_duckdb_does_not_merge_column_names_that_differ_in_case(tmp_path: Path) -> None:
    """DuckDB's union_by_name matches names ignoring case: engine="duckdb" read file b's
    ``Agent`` as the canonical ``agent`` and ``TS`` as ``ts``, and a hive folder ``Agent=x/``
    replaced the files' own ``agent``. Column names are case-sensitive (polars engine, README)."""
    _write(_canon(2, "r1", agent=["planner"] * 2), tmp_path / "cols" / "a.parquet")
    _write(_canon(2, "r2").rename({"ts": "TS"}).with_columns(Agent=pl.lit("billing")), tmp_path / "cols" / "b.parquet")
    _write(_canon(2, "r3", agent=["x"] * 2), tmp_path / "hive" / "Agent=planner" / "p.parquet")
    _write(_canon(2, "r4").drop("ts"), tmp_path / "hive" / "Agent=billing" / "p.parquet")
    _write(pl.DataFrame({"Action": ["A", "B"]}).hstack(_canon(2, "r5")), tmp_path / "one" / "p.parquet")
    found = {}
    for folder in ("cols", "hive", "one"):
        a, b = _both(tmp_path / folder)
        found[folder] = sorted(set(_assert_same(a, b).select("run_id", "agent", "action", pl.col("ts").is_null()).rows()))
    assert found["cols"] == [("r1", "planner", "llm", False), ("r1", "planner", "search", False),
                             ("r2", "default", "llm", True), ("r2", "default", "search", True)]
    assert found["hive"] == [("r3", "x", "llm", False), ("r3", "x", "search", False),
                             ("r4", "default", "llm", True), ("r4", "default", "search", True)]
    assert found["one"] == [("r5", "default", "llm", False), ("r5", "default", "search", False)]


@pytest.mark.parametrize("col", ["file_row_number", "FILE_ROW_NUMBER", "__DW_FILE", "__Dw_Row"])
def test_duckdb_reads_columns_named_like_its_own_in_any_case(tmp_path: Path, col: str) -> None:
    """Names like the duckdb engine's helper columns in another case gave a CorruptFileError
    with a Binder Error, or a raw ColumnNotFoundError; the polars engine reads them."""
    _write(_canon(3).with_columns(pl.Series(col, [7, 8, 9])), tmp_path / "a.parquet")
    _write(_canon(2, "s"), tmp_path / "b.parquet")
    a, b = _both(tmp_path)
    assert _assert_same(a, b).height == 5


def test_a_duckdb_read_failure_from_its_arrow_stream_names_file_and_column(tmp_path: Path) -> None:
    """A damaged page read by DuckDB fails as its error, or, from the Arrow stream it exports,
    as an OSError ("Invalid Error: ..."): that one was not located ("2 files under <dir>") and
    its message kept DuckDB's raw control byte. Both now name the file and column, alike."""
    import duckdb

    from driftwatch.read import _guard, resolve_sources

    for name, run in (("a.parquet", "r1"), ("b.parquet", "r2")):
        _write(pl.DataFrame({"run_id": [run] * 3, "step": [1, 2, 3], "action": ["a", "b", "c"]}), tmp_path / name)
    raw = bytearray((tmp_path / "b.parquet").read_bytes())
    raw[8:60] = b"\xff" * 52  # the first data page; header and footer intact
    (tmp_path / "b.parquet").write_bytes(bytes(raw))
    paths = resolve_sources(tmp_path)
    messages = set()
    for err in (OSError("Invalid Error: don't know what type: \x0f"), duckdb.Error("don't know what type: \x0f")):
        def fail(err: BaseException = err) -> None:
            raise err
        with pytest.raises(CorruptFileError) as info:
            _guard(fail, paths)
        messages.add(str(info.value))
    assert messages == {f"{tmp_path / 'b.parquet'}, column 'run_id': reading failed: don't know what type: \\x0f"}
    # an OSError with an errno is the system's (a full disk), not the file's content: raised as is
    import errno

    from driftwatch.audit import _reading

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    for guard in (lambda f: _guard(f, paths), _reading):
        with pytest.raises(OSError, match="No space left") as info:
            guard(full)
        assert not isinstance(info.value, CorruptFileError)
    with pytest.raises(CorruptFileError, match=r"^reading the events failed: don't know what type: \\x0f$"):
        _reading(lambda: (_ for _ in ()).throw(OSError("Invalid Error: don't know what type: \x0f")))
    for _ in range(3):  # (which of the two DuckDB gives varies from run to run)
        with pytest.raises(CorruptFileError, match=r"b\.parquet, column 'run_id': reading failed: [^\x00-\x1f]*$"):
            read_logs(tmp_path, engine="duckdb")


def test_a_hive_agent_partition_fills_the_agent_of_spans_that_name_none(tmp_path: Path) -> None:
    """OTel / OpenInference spans under agent=planner/ came out agent "default" and
    agents=["planner"] selected nothing; an agent the spans name still wins."""
    t0 = 1_793_000_000_000_000_000
    _write(pl.DataFrame({
        "trace_id": ["t1"] * 3, "span_id": ["s1", "s2", "s3"], "parent_span_id": [None, None, None],
        "name": ["chat gpt-4", "execute_tool search", "chat gpt-4"], "start_time_unix_nano": [t0 + i * 10**9 for i in range(3)],
        "attributes.gen_ai.operation.name": ["chat", "execute_tool", "chat"],
        "attributes.gen_ai.tool.name": [None, "search", None], "attributes.gen_ai.agent.name": [None, None, "billing"],
    }, schema_overrides={"parent_span_id": pl.String}), tmp_path / "otel" / "agent=planner" / "part-0.parquet")
    t = datetime(2026, 10, 1, tzinfo=UTC)
    _write(pl.DataFrame({"context.trace_id": ["T"] * 2, "context.span_id": ["a", "b"], "span_kind": ["LLM", "TOOL"],
                         "name": ["ChatOpenAI", "search"], "start_time": [t, t + timedelta(seconds=1)]}),
           tmp_path / "oi" / "agent=planner" / "part-0.parquet")
    for folder, expected in (("otel", ["planner", "planner", "billing"]), ("oi", ["planner", "planner"])):
        a, b = _both(tmp_path / folder)
        ev = _assert_same(a, b)
        assert ev.sort("step")["agent"].to_list() == expected
        a, b = _both(tmp_path / folder, agents=["planner"])
        ev = _assert_same(a, b)
        assert ev.height == 2 and set(ev["agent"]) == {"planner"}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", ["json", "map", "kv_list"])
def test_a_column_map_typo_inside_nested_attributes_is_an_error(tmp_path: Path, engine: str, shape: str) -> None:
    """A key that no row's map / key-value / JSON attributes hold (attributes.sesion.id) passed as a
    column of its own: every span was rejected as null_run_id instead of the typo being named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = datetime(2026, 10, 1, tzinfo=UTC)
    attrs = [{"session.id": "S"}, {}, {"session.id": "S", "agent.name": "a"}]
    if shape == "json":
        col = pa.array([json.dumps(a) for a in attrs])
    elif shape == "map":
        col = pa.array([list(a.items()) for a in attrs], pa.map_(pa.string(), pa.string()))
    else:
        col = pa.array([[{"key": k, "value": {"stringValue": v}} for k, v in a.items()] for a in attrs],
                       pa.list_(pa.struct([("key", pa.string()), ("value", pa.struct([("stringValue", pa.string())]))])))
    table = pa.table({"context.trace_id": ["T1", "T1", "T2"], "context.span_id": ["a", "b", "c"],
                      "span_kind": ["LLM", "TOOL", "LLM"], "name": ["ChatOpenAI", "search", "ChatOpenAI"],
                      "start_time": pa.array([t, t + timedelta(seconds=1), t], pa.timestamp("us", tz="UTC")),
                      "attributes": col})
    pq.write_table(table, tmp_path / "a.parquet")
    pq.write_table(table.slice(1, 1), tmp_path / "b.parquet")  # (no row of this file holds session.id)
    with pytest.raises(SchemaError, match=r"column_map source column\(s\) \['attributes.sesion.id'\] are in none "
                                          r"of the 2 file\(s\) \(no row .* holds the key\(s\) \['sesion.id'\]\)"):
        read_logs(tmp_path, engine=engine, column_map={"attributes.sesion.id": "run_id"})
    res = read_logs(tmp_path, engine=engine, column_map={"attributes.session.id": "run_id"})
    assert res.stats.rows_in == res.stats.rows_valid + res.stats.rows_rejected == 4
    assert res.collect().filter(pl.col("run_id") == "S").height == 2
