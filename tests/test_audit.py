"""dw.audit: the two stages, chunking, AuditResult outputs, determinism and crash-safe writes."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import driftwatch as dw
from driftwatch import synth
from driftwatch.audit import (
    ALERT_KEYS,
    CONTRACT_FILES,
    AuditResult,
    RunTables,
    audit,
    fleet_stage,
    parse_reference,
    run_stage,
)
from driftwatch.errors import InputError, InvalidParameterError, NoInputError, SchemaError

#: CONTRACT section 2/3 columns every output file must have.
CONTRACT_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id", "agent", "n_steps", "cost_usd", "score", "level", "reasons"),
    "loops": ("run_id", "agent", "start_step", "end_step", "period", "repeats", "pattern", "kind",
              "wasted_steps", "wasted_tokens", "wasted_cost_usd"),
    "changepoints": ("series", "metric", "ts", "before", "after", "magnitude", "score"),
    "drift": ("series", "window_start", "window_end", "feature", "method", "statistic", "p_value", "drifted"),
    "violations": ("run_id", "step", "rule", "severity", "detail"),
    "costs": ("series",),
    "load": ("series", "metric", "knee", "below", "above", "ratio", "p_value"),
}


@pytest.fixture(scope="module")
def fleet() -> synth.Fleet:
    return synth.generate(days=14, runs_per_day=40, seed=11)


@pytest.fixture(scope="module")
def result(fleet: synth.Fleet) -> AuditResult:
    return audit(fleet.events)


def test_every_run_is_scored_once(fleet: synth.Fleet, result: AuditResult) -> None:
    assert result.runs.height == fleet.events["run_id"].n_unique()
    assert result.runs["run_id"].is_unique().all()
    assert set(result.runs["level"].unique()) <= {"ok", "review", "escalate"}
    for name, cols in CONTRACT_COLUMNS.items():
        frame = getattr(result, name)
        assert set(cols) <= set(frame.columns), (name, frame.columns)


def test_summary_reconciles(result: AuditResult) -> None:
    s = result.summary()
    assert s["rows_in"] == s["rows_valid"] + s["rows_rejected"]
    assert sum(s["levels"].values()) == s["runs"] == result.runs.height
    assert s["loops"]["total"] == result.loops.height
    assert s["violations"]["total"] == result.violations.height == sum(s["violations"]["by_rule"].values())
    assert s["changepoints"] == result.changepoints.height
    assert s["changepoint_changes"] == result.changepoints.select("series", "ts").n_unique() > 0
    assert set(s["versions"]) == {"driftwatch", "polars", "duckdb", "python"}
    assert s["cost"]["total_usd"] == pytest.approx(result.runs["cost_usd"].sum(), rel=1e-6)
    assert {"per_run_stage", "fleet_stage", "total"} <= set(s["timings"])
    # (always there: it was left out when nothing was rejected, a KeyError for a dashboard)
    assert s["rows_rejected"] == 0 and s["rejected_by_reason"] == {}
    json.dumps(s)  # JSON-ready


def test_injected_findings_surface(fleet: synth.Fleet, result: AuditResult) -> None:
    """End to end, the audit sees what was injected: unapproved deletes escalate, loops are found."""
    truth = fleet.truth["runs"]
    unapproved = truth.filter(pl.col("injected").list.contains("unapproved_destructive"))["run_id"]
    assert unapproved.len() > 0
    levels = result.runs.filter(pl.col("run_id").is_in(unapproved.implode()))["level"]
    assert (levels == "escalate").all()
    looped = fleet.truth["loops"].filter(pl.col("kind").is_in(["exact", "error_retry"]))["run_id"].unique()
    found = result.loops.filter(pl.col("kind").is_in(["exact", "error_retry"]))["run_id"].unique()
    assert looped.is_in(found.implode()).mean() >= 0.8


def test_alerts_have_stable_keys(result: AuditResult) -> None:
    alerts = result.alerts()
    hot = result.runs.filter(pl.col("level") != "ok")
    assert len(alerts) == hot.height > 0
    for a in alerts:
        assert tuple(a) == ALERT_KEYS
        assert a["level"] in ("review", "escalate") and a["reasons"]
        assert a["first_ts"].endswith("Z") and a["audit_id"] == result.audit_id
    scores = [a["score"] for a in alerts]
    assert scores == sorted(scores, reverse=True)
    json.dumps(alerts)


def test_chunks_give_the_same_results(fleet: synth.Fleet, result: AuditResult) -> None:
    """Hash partitions of whole runs must not change any output (the per-run stage is chunk-safe)."""
    chunked = audit(fleet.events.lazy(), chunks=3)
    for name, frame in result.output_frames().items():
        assert_frame_equal(frame, chunked.output_frames()[name], check_exact=False, rel_tol=1e-9), name
    assert chunked.audit_id == result.audit_id


def test_example_timelines_do_not_depend_on_the_chunking(
    fleet: synth.Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk keeps the events of at most MAX_EXAMPLES_PER_CHUNK candidate runs; with the
    limit binding, the chunked audit still shows the timelines one chunk of all events shows
    (the chunk count follows the machine's memory, and the output must not)."""
    import importlib

    from driftwatch.audit import RunTables, _global_examples, run_stage

    mod = importlib.import_module("driftwatch.audit")
    monkeypatch.setattr(mod, "MAX_EXAMPLES_PER_CHUNK", 3)
    whole = audit(fleet.events, chunks=1)
    assert whole.examples["run_id"].n_unique() > 0
    assert whole.runs.filter(pl.col("level") == "escalate").height > 3  # the limit binds
    for n in (2, 5):
        assert_frame_equal(audit(fleet.events, chunks=n).examples, whole.examples)
    # without the global re-ranking, the chunks' own top runs would be shown
    odd = pl.col("run_id").str.ends_with("1")
    parts = RunTables.concat([run_stage(fleet.events.filter(odd)), run_stage(fleet.events.filter(~odd))])
    assert parts.examples["run_id"].n_unique() == 6
    assert_frame_equal(_global_examples(parts), run_stage(fleet.events).examples)


@pytest.mark.parametrize("shuffle", [False, True])
def test_run_stage_tables_are_in_canonical_order(fleet: synth.Fleet, shuffle: bool) -> None:
    """The one-chunk audit uses run_stage's tables as they come: they must already be in the
    order RunTables.concat gives (sorted by RUN_TABLE_KEYS, then every column)."""
    from driftwatch.audit import RunTables, run_stage

    ev = fleet.events.sample(fraction=1.0, seed=2) if shuffle else fleet.events
    tables = run_stage(ev)
    again = RunTables.concat([tables])
    assert tables.loops.height and tables.violations.height and tables.examples.height
    for name, frame in tables.frames().items():
        assert_frame_equal(frame, again.frames()[name]), name


def test_interleaved_runs_are_sorted_once_and_give_the_same_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log in time order (concurrent runs interleaved) is sorted once by (run_id, step) and
    flagged, so every detector takes its in-order path; a log written run by run is not
    copied. The tables equal those of the run-ordered log, and those of the detectors' own
    narrow sorts (the sort turned off)."""
    import importlib

    from driftwatch.audit import _in_run_order

    mod = importlib.import_module("driftwatch.audit")
    busy = synth.generate(days=1, runs_per_day=3000, seed=11).events  # about 3.5 concurrent runs
    by_run = busy.sort("run_id", "step")
    runs_reversed = busy.sort("run_id", "step", descending=[True, False])  # contiguous runs
    by_time = busy.sort("ts", "run_id")
    assert _in_run_order(runs_reversed) is runs_reversed  # run by run: left alone
    got = _in_run_order(by_time)
    assert got["run_id"].flags["SORTED_ASC"]
    assert_frame_equal(got, by_run)
    want = run_stage(by_run)
    sorted_once = run_stage(by_time)
    monkeypatch.setattr(mod, "SORT_BLOCKS_PER_RUN", float("inf"))
    narrow = run_stage(by_time)
    for name, frame in want.frames().items():
        assert_frame_equal(frame, sorted_once.frames()[name]), name
        assert_frame_equal(frame, narrow.frames()[name]), name


_RETAIN_SCRIPT = """
import sys, time
import polars as pl
import driftwatch.audit as au
from driftwatch import synth
from driftwatch._io import trim_heap

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 2**20

if sys.argv[2] == "off":
    au._owning_copy = lambda f: f
ev = synth.generate(days=1, runs_per_day=20000, seed=11).events.sort("ts", "run_id")
ev.with_columns(pl.col("args") + pl.lit("x" * 2000)).write_parquet(sys.argv[1])  # 0.5 GiB of text
del ev
trim_heap(); time.sleep(1)
r0 = rss()
tables = au.run_stage(pl.scan_parquet(sys.argv[1]))
trim_heap(); time.sleep(1.5)
assert tables.examples.height > 1000
print(rss() - r0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_examples_do_not_keep_the_chunks_text_alive(tmp_path: Path) -> None:
    """The few example rows picked from a chunk must not keep the chunk's whole text buffers
    alive (Polars' text columns are views into shared buffers). Measured in a fresh process:
    with the picked rows copied into buffers of their own, run_stage keeps well under the
    0.5 GiB of text it read; with the copy turned off it keeps most of it."""
    def kept(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _RETAIN_SCRIPT, str(tmp_path / "ev.parquet"), mode],
                             capture_output=True, text=True, timeout=300, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    on = kept("on")
    assert on < 0.2
    # the measurement can tell: without the copy most of the text stays (on a busy machine
    # the allocator sometimes returns it anyway, and a run that cannot tell proves nothing)
    for _ in range(3):
        off = kept("off")
        if off > 0.3:
            break
    else:
        pytest.skip(f"this machine's measurement cannot tell (without the copy {off:.2f} GiB stayed)")


@pytest.mark.parametrize("case", ["big_steps", "null_steps", "duplicates"])
def test_run_step_order_edge_cases(case: str) -> None:
    """The permutation is the stable (run_id, step) sort, nulls last, also when steps do not
    fit the packed 64-bit key or repeat."""
    from driftwatch.audit import _run_step_order

    steps = {"big_steps": [2**40, -3, 5, 2**33, 1, 0], "null_steps": [3, None, 1, 2, None, 0],
             "duplicates": [1, 1, 1, 2, 1, 1]}[case]
    frame = pl.DataFrame({"run_id": ["b", "a", "b", "a", "b", "a"], "step": steps, "i": range(6)})
    idx = _run_step_order(frame["run_id"], frame["step"])
    want = frame.sort("run_id", "step", nulls_last=True, maintain_order=True)
    assert_frame_equal(frame[idx], want)


def test_fleet_steps_on_threads_give_the_same_results(
    fleet: synth.Fleet, result: AuditResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fleet-stage steps two at a time (up to FLEET_CONCURRENT_MAX_RUNS runs) or one after
    another: the same outputs and the same notes."""
    import importlib

    monkeypatch.setattr(importlib.import_module("driftwatch.audit"), "FLEET_CONCURRENT_MAX_RUNS", 0)
    one_by_one = audit(fleet.events)
    assert set(one_by_one.timings) == set(result.timings)
    assert one_by_one.notes == result.notes
    for name, frame in result.output_frames().items():
        assert_frame_equal(frame, one_by_one.output_frames()[name], check_exact=False, rel_tol=1e-12), name


def test_run_stage_side_thread_gives_the_same_tables(fleet: synth.Fleet) -> None:
    """The loop detector on a side thread (the one-chunk audit) changes nothing in the tables."""
    from driftwatch.audit import run_stage

    one = run_stage(fleet.events, side_thread=False)
    two = run_stage(fleet.events, side_thread=True)
    assert one.loops.height > 0
    for name, frame in one.frames().items():
        assert_frame_equal(frame, two.frames()[name]), name


def test_chunks_in_flight_do_not_change_results(fleet: synth.Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks analysed two at a time on threads (the default) give what one at a time gives,
    and the progress reports every chunk in order."""
    import importlib

    mod = importlib.import_module("driftwatch.audit")
    said: list[str] = []
    two = audit(fleet.events, chunks=5, progress=said.append)
    assert [m.split(",")[0] for m in said if "chunk " in m and "/5" in m] == [
        f"per-run stage: chunk {i}/5" for i in range(1, 6)
    ]
    monkeypatch.setattr(mod, "CHUNK_WORKERS", 1)
    one = audit(fleet.events, chunks=5)
    for name, frame in one.output_frames().items():
        # (bucket metrics carry a parallel mean's last-bit jitter from one audit to the next,
        # whatever the chunking: the written files are rounded to 12 significant digits)
        assert_frame_equal(frame, two.output_frames()[name], check_exact=False, rel_tol=1e-12), name


def test_chunk_files_outlive_the_chunks_in_flight(
    fleet: synth.Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With chunks read from partition files two at a time, the files of the last chunks
    must still be there when their (slow) analysis reads them, and be gone afterwards."""
    import importlib
    import time as time_mod

    mod = importlib.import_module("driftwatch.audit")
    monkeypatch.setattr(mod, "IN_MEMORY_BYTES", 0)
    fleet.write(tmp_path / "logs")
    whole = audit(tmp_path / "logs" / "events", chunks=1)
    original = mod.run_stage

    def slow(events: object, **kwargs: object) -> object:
        time_mod.sleep(0.3)  # the main thread has moved on to the next chunk by now
        return original(events, **kwargs)

    monkeypatch.setattr(mod, "run_stage", slow)
    chunked = audit(tmp_path / "logs" / "events", chunks=3, out=tmp_path / "out")
    assert_frame_equal(whole.runs, chunked.runs, check_exact=False, rel_tol=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "out"]


def test_auto_chunks_keep_a_log_that_fits_in_memory_whole(
    fleet: synth.Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``chunks="auto"`` analyses a log within the in-memory budget as one chunk, however many
    rows it has; over the budget it takes ``ceil(rows / chunk_rows)`` chunks."""
    import importlib

    mod = importlib.import_module("driftwatch.audit")
    fleet.write(tmp_path / "logs")
    rows = fleet.events.height
    monkeypatch.setattr(mod, "IN_MEMORY_BYTES", 2**40)
    assert audit(tmp_path / "logs" / "events", chunk_rows=rows // 3).stats["chunks"] == 1
    assert audit(fleet.events, chunks="auto", chunk_rows=rows // 3).stats["chunks"] == 1
    monkeypatch.setattr(mod, "IN_MEMORY_BYTES", 1)
    want = -(-rows // (rows // 3))  # ceil
    assert want >= 3
    # (files are cut into `want` ranges of rows, plus a chunk for the runs across ranges)
    assert want <= audit(tmp_path / "logs" / "events", chunk_rows=rows // 3).stats["chunks"] <= want + 1
    assert audit(fleet.events, chunk_rows=rows // 3).stats["chunks"] == want
    assert audit(fleet.events, chunks=2).stats["chunks"] == 2


def _assert_same_outputs(a: AuditResult, b: AuditResult, *, rejected: bool = True) -> None:
    for name, frame in a.output_frames().items():
        if name != "rejected" or rejected:
            assert_frame_equal(frame, b.output_frames()[name], check_exact=False, rel_tol=1e-9), name


def test_chunked_files_are_cut_into_row_ranges_without_copies(
    fleet: synth.Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parquet sources larger than the in-memory budget are cut into consecutive ranges of
    rows, read straight from the files (no chunk files); the runs crossing a range boundary
    (here, runs crossing midnight between day files) get a chunk of their own. The result
    equals the single-chunk audit and the in-memory chunked one, with or without a window."""
    import importlib

    monkeypatch.setattr(importlib.import_module("driftwatch.audit"), "IN_MEMORY_BYTES", 0)
    fleet.write(tmp_path / "logs")
    whole = audit(tmp_path / "logs" / "events", chunks=1)
    said: list[str] = []
    chunked = audit(tmp_path / "logs" / "events", chunks=4, out=tmp_path / "out", progress=said.append)
    line = next(m for m in said if "ranges of" in m)
    assert "4 ranges" in line and "partitioned" not in " ".join(said), said
    assert chunked.stats["chunks"] == 5  # the runs across ranges in a chunk of their own
    in_memory = audit(fleet.events, chunks=4)
    _assert_same_outputs(whole, chunked)
    _assert_same_outputs(whole, in_memory, rejected=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "out"]
    # the --since/--until window (runs by their first step) is applied per chunk of whole runs
    window = {"since": "2026-10-05", "until": "2026-10-08"}
    whole = audit(tmp_path / "logs" / "events", chunks=1, **window)
    chunked = audit(tmp_path / "logs" / "events", chunks=3, **window)
    assert whole.runs.height == chunked.runs.height > 0
    _assert_same_outputs(whole, chunked)


def test_row_ranges_with_scattered_runs_duplicates_and_rejected_rows(
    fleet: synth.Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Known answer for the range cut: a run whose steps sit at both ends of the log, steps
    logged twice far apart (the later copy rejected), rejected rows and a run crossing files
    all land whole in one chunk; every output equals the single-chunk audit's."""
    import importlib

    mod = importlib.import_module("driftwatch.audit")
    monkeypatch.setattr(mod, "IN_MEMORY_BYTES", 0)
    ev = fleet.events.sort("run_id", "step")
    ids = ev["run_id"].unique(maintain_order=True)
    split, dup = ids[3], ids[10]
    head = ev.filter((pl.col("run_id") == split) & (pl.col("step") <= 2))
    rest = ev.filter(~((pl.col("run_id") == split) & (pl.col("step") <= 2)))
    copies = ev.filter(pl.col("run_id") == dup).head(3)
    log = pl.concat([rest, head, copies])  # `split` starts at the very end; `dup` repeats there
    log = log.with_columns(  # one rejected row in the middle
        pl.when(pl.int_range(pl.len()) == log.height // 2).then(None).otherwise(pl.col("action")).alias("action")
    )
    folder = tmp_path / "logs"
    folder.mkdir()
    third = log.height // 3 + 1
    for i in range(3):
        log.slice(i * third, third).write_parquet(folder / f"part-{i}.parquet")
    whole = audit(folder, chunks=1)
    said: list[str] = []
    chunked = audit(folder, chunks=4, progress=said.append)
    line = next(m for m in said if "ranges of" in m)
    assert "4 ranges" in line, said
    assert whole.stats["rows_rejected"] == chunked.stats["rows_rejected"] == 4  # 3 copies + null action
    _assert_same_outputs(whole, chunked)
    assert chunked.runs.filter(pl.col("run_id") == split)["n_steps"].item() == ev.filter(
        pl.col("run_id") == split).height


def test_logs_not_ordered_by_run_are_partitioned_by_hash(
    fleet: synth.Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When most runs have rows all over the log (rows shuffled) or the input's rows cannot be
    cut (span formats), the chunks are partitioned by a hash of ``run_id`` in one pass into
    chunk files, removed afterwards; the result is the same."""
    import importlib

    monkeypatch.setattr(importlib.import_module("driftwatch.audit"), "IN_MEMORY_BYTES", 0)
    folder = tmp_path / "logs"
    folder.mkdir()
    fleet.events.sample(fraction=1.0, shuffle=True, seed=3).write_parquet(folder / "all.parquet")
    whole = audit(folder, chunks=1)
    said: list[str] = []
    chunked = audit(folder, chunks=2, out=tmp_path / "out", progress=said.append)
    assert any("spread over the log" in m for m in said), said
    assert any("partitioned into 2 chunks" in m for m in said) and not any("into memory" in m for m in said)
    assert chunked.stats["chunks"] == 2
    _assert_same_outputs(whole, chunked)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "out"]
    otel = Path(__file__).resolve().parents[1] / "sample_logs" / "otel"
    said.clear()
    whole, chunked = audit(otel, chunks=1), audit(otel, chunks=3, progress=said.append)
    assert any("partitioned into 3 chunks" in m for m in said), said
    _assert_same_outputs(whole, chunked)


def test_small_chunked_sources_are_read_into_memory_once(fleet: synth.Fleet, tmp_path: Path) -> None:
    """Under the in-memory budget a chunked Parquet source whose rows cannot be cut into ranges
    (here, shuffled: every run spread over the log) is decoded once and split in memory (no
    partition files); the outputs equal the single-chunk audit's."""
    folder = tmp_path / "logs"
    folder.mkdir()
    fleet.events.sample(fraction=1.0, shuffle=True, seed=4).write_parquet(folder / "all.parquet")
    whole = audit(folder, chunks=1)
    said: list[str] = []
    chunked = audit(folder, chunks=3, progress=said.append)
    assert any("read into memory" in m for m in said) and not any("partitioned" in m for m in said)
    assert chunked.stats["bytes_uncompressed"] > 0
    _assert_same_outputs(whole, chunked)


def test_chunk_tables_spilled_to_disk_give_the_same_results(
    fleet: synth.Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a zero spill budget every chunk's per-run tables go through temporary Parquet
    files (the 100M-event path); the outputs are those of the single-chunk audit and the
    temporary folders are removed."""
    import importlib

    audit_mod = importlib.import_module("driftwatch.audit")
    fleet.write(tmp_path / "logs")
    whole = audit(tmp_path / "logs" / "events", chunks=1)
    spills: list[int] = []
    real_spill = audit_mod._RunTableSink._spill

    def counting_spill(self: object) -> None:
        spills.append(1)
        real_spill(self)

    monkeypatch.setattr(audit_mod, "SPILL_BYTES", 0)
    monkeypatch.setattr(audit_mod._RunTableSink, "_spill", counting_spill)
    spilled = audit(tmp_path / "logs" / "events", chunks=5, out=tmp_path / "out")
    assert len(spills) == spilled.stats["chunks"] >= 5
    for name, frame in whole.output_frames().items():
        assert_frame_equal(frame, spilled.output_frames()[name], check_exact=False, rel_tol=1e-9), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "out"]


def test_canonical_order_sorts_unique_key_tables_by_keys_only() -> None:
    import importlib

    audit_mod = importlib.import_module("driftwatch.audit")
    ac = pl.DataFrame({"run_id": ["b", "a", "b", "a"], "agent": ["x", "y", "x", "y"], "action": ["s", "t", "r", "s"],
                       "n": [1, 2, 3, 4]})
    out = audit_mod.canonical_order("action_counts", ac)
    assert out.select("run_id", "action").rows() == [("a", "s"), ("a", "t"), ("b", "r"), ("b", "s")]
    # tables whose keys may repeat are ordered by every column after the keys
    v = pl.DataFrame({"run_id": ["a", "a"], "step": [1, 1], "rule": ["r", "r"], "detail": ["z", "y"]})
    assert audit_mod.canonical_order("violations", v)["detail"].to_list() == ["y", "z"]

@pytest.mark.parametrize("layout", ["ranges", "ranges+scattered", "three chains", "hash", "one part", "with empty"])
def test_chunk_tables_are_assembled_in_canonical_order(
    fleet: synth.Fleet, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk tables (disjoint runs, each in canonical order) put together by chains, merges or one
    sort equal the canonical order of their concatenation, whatever the run ids' layout."""
    import importlib

    audit_mod = importlib.import_module("driftwatch.audit")
    ev = fleet.events.filter(pl.col("ts") < datetime(2026, 10, 5, tzinfo=UTC))
    whole = run_stage(ev)
    ids = whole.features["run_id"].to_list()
    n = len(ids)
    if layout == "ranges":
        groups = [ids[i : i + 7] for i in range(0, n, 7)]
    elif layout == "ranges+scattered":
        scattered = ids[3::17]
        rest = [r for r in ids if r not in set(scattered)]
        groups = [rest[i : i + 9] for i in range(0, len(rest), 9)] + [scattered]
    elif layout == "three chains":
        groups = [ids[k::3][i : i + 5] for k in range(3) for i in range(0, len(ids[k::3]), 5)]
    elif layout == "hash":
        groups = [ids[k::6] for k in range(6)]
    elif layout == "one part":
        groups = [ids]
    else:
        groups = [ids[: n // 2], [], ids[n // 2 :]]
    parts = [run_stage(ev.filter(pl.col("run_id").is_in(g))) if g else run_stage(ev.head(0)) for g in groups]
    order = list(range(len(parts)))[::-1]  # chunk order does not matter
    for name in ("features", "action_counts", "bigram_counts", "loops", "loop_summary", "violations",
                 "run_changepoints", "examples"):
        frames = [getattr(parts[i], name) for i in order]
        expected = getattr(whole, name) if name != "examples" else audit_mod.canonical_order(
            name, pl.concat([f for f in frames if f.width], how="diagonal_relaxed"))
        got = audit_mod._assemble_ordered(name, list(frames))
        assert_frame_equal(got, expected, check_dtypes=name != "examples"), (layout, name)
    # the branches taken: chains concatenated, merged, or sorted once
    merges: list[int] = []
    real = pl.LazyFrame.merge_sorted
    monkeypatch.setattr(pl.LazyFrame, "merge_sorted", lambda self, *a, **k: merges.append(1) or real(self, *a, **k))
    sorts: list[int] = []
    real_gather = audit_mod._gather_sorted
    monkeypatch.setattr(audit_mod, "_gather_sorted", lambda *a: sorts.append(1) or real_gather(*a))
    audit_mod._assemble_ordered("features", [p.features for p in parts])
    n_merges, n_sorts = {"ranges": (0, 0), "ranges+scattered": (1, 0), "three chains": (2, 0),
                         "hash": (0, 1), "one part": (0, 0), "with empty": (0, 0)}[layout]
    assert (len(merges), len(sorts)) == (n_merges, n_sorts)


def test_chunk_tables_out_of_order_fall_back_to_a_full_sort() -> None:
    import importlib

    audit_mod = importlib.import_module("driftwatch.audit")
    a = pl.DataFrame({"run_id": ["b", "a"], "step": [1, 2], "rule": ["r", "r"], "detail": ["x", "y"]})
    b = pl.DataFrame({"run_id": ["c", None], "step": [1, 1], "rule": ["r", "r"], "detail": ["z", "w"]})
    parts = [a, b]
    out = audit_mod._assemble_ordered("violations", parts)
    assert out["run_id"].to_list() == ["a", "b", "c", None]
    assert parts == []  # consumed
    # differing schemas: concatenated diagonally, then sorted
    out = audit_mod._assemble_ordered("violations", [a.drop("detail"), b])
    assert out["detail"].to_list() == [None, None, "z", "w"]


def test_run_stage_tables_concatenate(fleet: synth.Fleet) -> None:
    ev = fleet.events.filter(pl.col("ts") < datetime(2026, 10, 4, tzinfo=UTC))
    whole = run_stage(ev)
    ids = ev["run_id"].unique().sort()
    half = ids.head(ids.len() // 2).implode()
    parts = RunTables.concat([run_stage(ev.filter(pl.col("run_id").is_in(half))),
                              run_stage(ev.filter(~pl.col("run_id").is_in(half)))])
    for name in ("features", "action_counts", "bigram_counts", "loops", "loop_summary", "violations",
                 "run_changepoints", "examples"):
        assert_frame_equal(getattr(whole, name), getattr(parts, name)), name
    with pytest.raises(InvalidParameterError):
        RunTables.concat([])


def test_run_stage_tables_concatenate_in_order(fleet: synth.Fleet) -> None:
    """``ordered=True`` (parts from run_stage, as Spark's buckets) gives what the full sort gives,
    for buckets of a hash of run_id (every range overlaps) and for ranges."""
    ev = fleet.events.filter(pl.col("ts") < datetime(2026, 10, 4, tzinfo=UTC))
    ranges = (pl.col("run_id").rank("dense") - 1) * 4 // pl.col("run_id").n_unique()
    for bucket in (pl.col("run_id").hash(5) % 4, ranges):
        keyed = ev.with_columns(bucket.alias("_b"))
        parts = [run_stage(keyed.filter(pl.col("_b") == b).drop("_b")) for b in range(4)][::-1]
        assert all(p.n_runs for p in parts)
        want, got = RunTables.concat(parts), RunTables.concat(parts, ordered=True)
        for name, frame in want.frames().items():
            assert_frame_equal(got.frames()[name], frame), name


def test_fleet_stage_scores_only_requested_runs(fleet: synth.Fleet) -> None:
    tables = run_stage(fleet.events)
    keep = tables.features["run_id"].head(25)
    res = fleet_stage(tables, score_run_ids=keep)
    assert sorted(res.runs["run_id"].to_list()) == sorted(keep.to_list())
    assert res.loops["run_id"].is_in(keep.implode()).all()
    assert res.changepoints.height >= 0 and "drift" in res.timings


def test_window_keeps_whole_runs_by_first_step(fleet: synth.Fleet) -> None:
    res = audit(fleet.events, since="2026-10-05", until="2026-10-08")
    first = fleet.events.group_by("run_id").agg(pl.col("ts").min().alias("t0"))
    expected = first.filter(
        (pl.col("t0") >= datetime(2026, 10, 5, tzinfo=UTC)) & (pl.col("t0") < datetime(2026, 10, 8, tzinfo=UTC))
    )
    assert sorted(res.runs["run_id"].to_list()) == sorted(expected["run_id"].to_list())
    steps = fleet.events.filter(pl.col("run_id").is_in(expected["run_id"].implode())).height
    assert res.runs["n_steps"].sum() == steps  # no run cut at the window edge
    assert res.summary()["drift"]["rows"] == 0 and "skipped" in res.notes["drift_reference"]
    # the counts say how much of what was read the window kept
    s = res.summary()
    assert s["rows_analysed"] == steps < s["rows_valid"] == fleet.events.height == s["rows_in"] - s["rows_rejected"]
    assert audit(fleet.events).summary()["rows_analysed"] == fleet.events.height
    with pytest.raises(NoInputError, match="window"):
        audit(fleet.events, since="2030-01-01")
    with pytest.raises(InvalidParameterError, match="after since"):
        audit(fleet.events, since="2026-10-05", until="2026-10-01")


def test_a_frame_is_audited_as_the_same_rows_in_a_file(tmp_path: Path) -> None:
    """A duplicated step, a null id and an odd status spelling: dw.audit(frame) used to skip the
    reader's checks, count a null-id run and miss the retry breach."""
    t0 = datetime(2026, 10, 1, 12, tzinfo=UTC)
    raw = pl.DataFrame({"run_id": ["r1"] * 6 + [None], "step": [1, 2, 3, 4, 5, 5, 9],
                        "ts": [t0 + timedelta(seconds=s) for s in (0, 1, 2, 3, 4, 4, 6)], "action": ["search"] * 7,
                        "args": ["q"] * 7, "result": ["boom"] * 7, "status": ["ERROR"] * 7})
    raw.write_parquet(tmp_path / "raw.parquet")
    a, b = audit(raw), audit(tmp_path / "raw.parquet")
    for key in ("rows_in", "rows_valid", "rows_rejected"):
        assert a.stats[key] == b.stats[key], key
    assert a.runs.select("run_id", "n_steps").rows() == b.runs.select("run_id", "n_steps").rows() == [("r1", 5)]
    assert a.violations["rule"].to_list() == b.violations["rule"].to_list() == ["max_consecutive_retries"]
    assert a.rejected["reason"].to_list() == b.rejected["reason"].to_list() == ["duplicate_step", "null_run_id"]
    assert a.rejected.columns == b.rejected.columns


def test_a_read_result_keeps_its_engine_and_files(tmp_path: Path) -> None:
    pl.DataFrame({"run_id": ["a", "b"], "step": [1, 1], "action": ["s", "s"]}).write_parquet(tmp_path / "a.parquet")
    s = audit(dw.read_logs(tmp_path, engine="duckdb")).summary()
    assert s["engine"] == "duckdb" and s["sources"] == [str(tmp_path / "a.parquet")]


def test_options_are_checked_before_any_work(fleet: synth.Fleet) -> None:
    with pytest.raises(InvalidParameterError, match="progress must be a callable"):
        audit(fleet.events, progress=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match=r"out \(--out\) is empty"):
        audit(fleet.events, out="")
    with pytest.raises(InvalidParameterError, match=r"load_every \(--load-every\) must be a positive duration"):
        audit(fleet.events, load_every="0s")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # the load test compares buckets within UTC days: a bucket must be at most half a day
        ({"load_every": "1d"}, r"load_every \(--load-every\) must be at most half of control \('1d'.*got '1d': use at "
                               r"most 12h$"),
        ({"load_every": "13h"}, r"load_every \(--load-every\) must be at most half .*got '13h'"),
        ({"load_every": "1ns"}, r"load_every \(--load-every\) must be at least 1 microsecond .*got '1ns'"),
        ({"volume_per_day": math.inf}, r"volume_per_day \(--volume-per-day\) must be a positive finite number .*got inf"),
        ({"volume_per_day": "1000"}, r"volume_per_day \(--volume-per-day\) must be .*got '1000' \(a str\)"),
        ({"volume_per_day": -5}, r"volume_per_day \(--volume-per-day\) must be .*got -5"),
    ],
)
def test_fleet_stage_options_are_checked_before_any_work(
    fleet: synth.Fleet, kwargs: dict[str, object], match: str
) -> None:
    """A load bucket the load test refuses, or a volume the cost profile refuses, was said only
    after the whole audit had run (its stages reported, then thrown away)."""
    stages: list[str] = []
    with pytest.raises(InvalidParameterError, match=match):
        audit(fleet.events, progress=stages.append, **kwargs)  # type: ignore[arg-type]
    assert stages == []


def test_reference_range_and_errors(fleet: synth.Fleet) -> None:
    res = audit(fleet.events, reference="2026-10-01..2026-10-06")
    assert res.notes["drift_reference"] == "given" and res.drift.height > 0
    assert res.drift["window_start"].min() >= datetime(2026, 10, 6, tzinfo=UTC)
    assert parse_reference(("2026-10-01", "2026-10-02"))[1] == datetime(2026, 10, 2, tzinfo=UTC)
    for bad in ("2026-10-01", "2026-10-05..2026-10-01", "yesterday..today"):
        with pytest.raises(InvalidParameterError, match="reference"):
            audit(fleet.events.head(50), reference=bad)


def test_bad_options_and_input(fleet: synth.Fleet) -> None:
    with pytest.raises(InvalidParameterError, match="engine"):
        audit(fleet.events, engine="pandas")
    with pytest.raises(InvalidParameterError, match="chunks"):
        audit(fleet.events, chunks=0)
    with pytest.raises(SchemaError, match="action"):
        audit(fleet.events.drop("action"))
    with pytest.raises(InvalidParameterError, match="file sources"):
        audit(fleet.events, state="/tmp/never-used.duckdb")


def test_write_outputs_and_determinism(result: AuditResult, fleet: synth.Fleet, tmp_path: Path) -> None:
    out1, out2 = tmp_path / "a", tmp_path / "b"
    result.write(out1)
    audit(fleet.events, out=out2)  # a second, independent audit of the same input
    for name in CONTRACT_FILES:
        assert (out1 / name).is_file(), name
    for name, cols in CONTRACT_COLUMNS.items():
        assert set(cols) <= set(pl.read_parquet_schema(out1 / f"{name}.parquet")), name
    assert set(pl.read_parquet_schema(out1 / "rejected.parquet")) >= set() and (out1 / "rejected.parquet").is_file()
    for p in sorted(out1.glob("*.parquet")):
        assert p.read_bytes() == (out2 / p.name).read_bytes(), f"{p.name} differs between two audits"
    assert (out1 / "alerts.jsonl").read_bytes() == (out2 / "alerts.jsonl").read_bytes()
    lines = (out1 / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == result.summary()["levels"]["review"] + result.summary()["levels"]["escalate"]
    assert all(tuple(json.loads(x)) == ALERT_KEYS for x in lines)
    summary = json.loads((out1 / "summary.json").read_text())
    assert summary["runs"] == result.runs.height
    # only the files we own, and no temp leftovers next to the folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_gives_the_same_files_with_or_without_overlap(
    result: AuditResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runs table written during the report (small audits) or before it (huge ones): same files."""
    import importlib

    result.write(tmp_path / "a")
    monkeypatch.setattr(importlib.import_module("driftwatch.audit"), "WRITE_OVERLAP_MAX_RUNS", 0)
    result.write(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and "runs.parquet" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_a_failed_parquet_write_leaves_no_folder(
    result: AuditResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails on the side thread fails the whole write: nothing is swapped in."""
    from driftwatch import _io

    real = _io.atomic_write_parquet

    def failing(frame: pl.DataFrame, path: Path) -> Path:
        if Path(path).name == "runs.parquet":
            raise OSError("disk full")
        return real(frame, path)

    monkeypatch.setattr(_io, "atomic_write_parquet", failing)
    with pytest.raises(OSError, match="disk full"):
        result.write(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_refuses_a_folder_of_other_files(result: AuditResult, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InvalidParameterError, match="not driftwatch results"):
        result.write(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_write_needs_a_path_and_results_compare_by_identity(result: AuditResult, fleet: synth.Fleet,
                                                             tmp_path: Path) -> None:
    for bad in (5, None, ["report"]):
        with pytest.raises(InvalidParameterError, match="must be a folder path"):
            result.write(bad)  # type: ignore[arg-type]
    # frames have no truth value: == on results, fleets and reads is identity, never an error
    assert (result == result) is True and (result == copy.copy(result)) is False
    assert (fleet == copy.copy(fleet)) is False
    for i in range(3):
        fleet.events.head(10).write_parquet(tmp_path / f"part-{i}.parquet")
    rr = dw.read_logs(tmp_path)
    assert (rr == rr) is True and (rr == dw.read_logs(tmp_path)) is False
    # the files read are in .paths, not in the repr (a log folder holds thousands)
    assert "part-0" not in repr(rr) and len(rr.stats.paths) == 3


def test_write_refuses_an_earlier_results_folder_with_the_users_own_files(result: AuditResult, tmp_path: Path) -> None:
    """The marker says the folder was driftwatch's, not that everything in it still is."""
    out = tmp_path / "report"
    result.write(out)
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    with pytest.raises(InvalidParameterError, match=r"also holds files driftwatch did not write \(mine, notes.txt\)"):
        result.write(out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "mine").is_dir()
    (out / "notes.txt").unlink()
    (out / "mine").rmdir()
    result.write(out)  # an earlier results folder alone is replaced
    assert (out / "runs.parquet").exists()


def test_failure_while_writing_keeps_previous_results(
    result: AuditResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report"
    result.write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import driftwatch._io as io_mod

    calls = {"n": 0}
    real = io_mod.atomic_write_parquet

    def flaky(frame: pl.DataFrame, path: os.PathLike[str]) -> Path:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        return real(frame, path)

    monkeypatch.setattr(io_mod, "atomic_write_parquet", flaky)
    with pytest.raises(OSError, match="No space"):
        result.write(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # the half-built folder is gone


def test_killed_while_writing_keeps_previous_results(result: AuditResult, tmp_path: Path) -> None:
    """SIGKILL in the middle of writing (a real kill, not an exception): the previous folder stays whole
    and readable, and the next write cleans up what the dead process left."""
    out = tmp_path / "report"
    result.write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    ev_path = tmp_path / "events.parquet"
    result.examples.head(0).write_parquet(ev_path)
    script = textwrap.dedent(
        f"""
        import sys, time, polars as pl
        import driftwatch._io as io_mod
        from driftwatch.report import load_results
        real = io_mod.atomic_write_parquet
        n = 0
        def slow(frame, path):
            global n
            n += 1
            out = real(frame, path)
            if n == 3:
                print("writing", flush=True)
                time.sleep(60)
            return out
        io_mod.atomic_write_parquet = slow
        import driftwatch.audit as a
        res = load_results({str(out)!r})
        r = a.AuditResult(**{{k: getattr(res, k) for k in ("runs", "loops", "changepoints", "drift", "violations",
                              "rejected", "costs", "load")}}, stats=res.stats)
        r.write({str(out)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    for name in ("runs", "loops", "violations"):
        pl.read_parquet(out / f"{name}.parquet")  # readable
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".report.tmp-")]
    assert leftovers, "the killed writer should have left its temp folder"
    result.write(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.")]


def test_repr_and_notebook_html(result: AuditResult) -> None:
    text = repr(result)
    assert text.startswith("<AuditResult runs=") and len(text) < 300
    page = result._repr_html_()
    lv = result.level_counts()
    assert f"{lv['escalate']:,}" in page and "Top escalations" in page and "<svg" in page
    assert "<script" not in page
    css = page[page.index("<style>") + 7 : page.index("</style>")]
    assert all(rule.startswith(".driftwatch-audit") for rule in css.splitlines())  # no restyling of the notebook


def test_dw_audit_is_callable_however_imported(fleet: synth.Fleet) -> None:
    """``import driftwatch.audit`` makes ``dw.audit`` the submodule; calling it must still audit."""
    import driftwatch.audit  # noqa: F401 - the import is the point

    small = fleet.events.filter(pl.col("ts") < datetime(2026, 10, 2, tzinfo=UTC))
    res = dw.audit(small)
    assert isinstance(res, AuditResult) and res.runs.height == small["run_id"].n_unique()
    assert dw.AuditResult is AuditResult


def test_alert_frame_encodes_like_the_alert_dicts(result: AuditResult) -> None:
    """alerts.jsonl lines are encoded from columns: each parses to the matching alerts() dict;
    times are ISO-8601 UTC with a fraction only when there is one; NaN becomes null."""
    lines = result.alert_frame().select(pl.struct(pl.all()).struct.json_encode().alias("j"))["j"].to_list()
    assert [json.loads(x) for x in lines] == result.alerts()
    one = result.runs.filter(pl.col("level") != "ok").head(2).with_columns(
        pl.Series("first_ts", [datetime(2026, 11, 1, 8, 30, tzinfo=UTC), datetime(2026, 11, 1, 8, 30, 0, 1500, tzinfo=UTC)]),
        pl.Series("cost_usd", [float("nan"), 0.1234567]),
        pl.Series("score", [0.9, 0.8]),
    )
    from dataclasses import replace

    got = replace(result, runs=one).alert_frame()
    assert got["first_ts"].to_list() == ["2026-11-01T08:30:00Z", "2026-11-01T08:30:00.001500Z"]
    assert got["cost_usd"].to_list() == [None, 0.1234567]  # (as runs.parquet holds it: 12 significant digits)
    assert tuple(got.columns) == ALERT_KEYS


def test_fleet_stage_can_release_the_count_tables(fleet: synth.Fleet) -> None:
    """release_counts empties the count tables after drift without changing any output."""
    tables = run_stage(fleet.events)
    kept = fleet_stage(tables)
    released = fleet_stage(tables, release_counts=True)
    assert tables.action_counts.height == 0 and tables.bigram_counts.height == 0
    for name, frame in kept.output_frames().items():
        assert_frame_equal(frame, released.output_frames()[name]), name


def test_parquet_bytes_do_not_depend_on_the_frames_chunks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Assembled tables arrive in as many chunks as the audit had; the files must not show it."""
    import pyarrow.parquet as pq

    from driftwatch import _io

    monkeypatch.setattr(_io, "ROW_GROUP_ROWS", 1000)
    frame = pl.DataFrame({"run_id": [f"r{i:05d}" for i in range(4500)], "x": [i * 0.5 for i in range(4500)]})
    pieces = pl.concat([frame.slice(0, 7), frame.slice(7, 2500), frame.slice(2507, 3), frame.slice(2510)], rechunk=False)
    assert pieces.n_chunks() == 4
    a = _io.atomic_write_parquet(frame, tmp_path / "a.parquet")
    b = _io.atomic_write_parquet(pieces, tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes()
    meta = pq.ParquetFile(a).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 1000, 1000, 500]


def test_trim_heap_never_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit gives freed C-heap pages back between stages; where glibc's malloc_trim is
    missing it says so and carries on."""
    import ctypes

    from driftwatch import _io

    blocks = [bytearray(64 * 1024) for _ in range(500)]  # small blocks: on the heap, not mmap'd
    del blocks
    assert isinstance(_io.trim_heap(), bool)  # True when pages went back, False when none were free

    def no_libc(*args: object, **kwargs: object) -> None:
        raise OSError("no C library here")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    _io._libc.cache_clear()
    try:
        assert _io.trim_heap() is False
    finally:
        _io._libc.cache_clear()


def test_c_library_calls_start_no_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """trim_heap runs between stages and the folder swap at the end: neither may start a child
    process (ctypes.util.find_library runs ldconfig: a fork of the whole audit process)."""
    import subprocess
    import sys

    from driftwatch import _io

    started: list[object] = []

    def record(*args: object, **kwargs: object) -> None:
        started.append(args)
        raise OSError("no child processes in this test")

    monkeypatch.setattr(subprocess, "Popen", record)
    _io._libc.cache_clear()
    try:
        assert isinstance(_io.trim_heap(), bool) and isinstance(_io.trim_heap(), bool)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        (tmp_path / "a" / "mark").touch()
        swapped = _io._renameat2_exchange(tmp_path / "a", tmp_path / "b")
        if sys.platform.startswith("linux"):  # glibc >= 2.28 everywhere this project runs
            assert swapped and (tmp_path / "b" / "mark").exists()
    finally:
        _io._libc.cache_clear()
    assert started == []


def test_incremental_audit_in_row_ranges(fleet: synth.Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An incremental audit reads only the new files; cut into row ranges, it records and
    scores exactly what the one-chunk incremental audit does."""
    import importlib

    monkeypatch.setattr(importlib.import_module("driftwatch.audit"), "IN_MEMORY_BYTES", 0)
    fleet.write(tmp_path / "logs")
    events = tmp_path / "logs" / "events"
    days = sorted(p for p in events.iterdir() if p.is_dir())
    first = [str(p) for p in days[:7]]
    results = {}
    for name, chunks in (("one", 1), ("ranges", 3)):
        db = tmp_path / f"{name}.duckdb"
        audit(first, state=db, chunks=chunks)
        said: list[str] = []
        results[name] = audit(str(events), state=db, chunks=chunks, progress=said.append)
        assert any("7 new file(s)" in m for m in said), said
        if chunks > 1:
            assert any("3 ranges" in m for m in said), said
    assert results["one"].runs.height > 0
    _assert_same_outputs(results["one"], results["ranges"])



def test_history_merged_table_by_table_equals_the_concat(fleet: synth.Fleet) -> None:
    """The incremental audit merges each history table with this audit's as it is read; the
    result is RunTables.concat's, counts kept compact (the history comes with String labels and
    an ``agent`` column, as from DuckDB)."""
    import importlib

    mod = importlib.import_module("driftwatch.audit")
    ev = fleet.events.filter(pl.col("ts") < datetime(2026, 10, 5, tzinfo=UTC))
    old_runs = pl.col("ts").min().over("run_id") < datetime(2026, 10, 3, tzinfo=UTC)
    hist, new = run_stage(ev.filter(old_runs)), run_stage(ev.filter(~old_runs))
    hist.examples = pl.DataFrame()  # the history keeps no example events
    want = RunTables.concat([hist, new])
    raw = {n: f for n, f in hist.frames().items() if n != "examples"}
    raw["action_counts"] = raw["action_counts"].with_columns(pl.col("action").cast(pl.String), pl.lit("a").alias("agent"))
    merged = {n: mod._merge_history(n, raw.get(n), new) for n in mod.RUN_TABLE_KEYS}
    for name, frame in want.frames().items():
        assert_frame_equal(merged[name], frame), name


def test_incremental_history_is_capped_by_runs(fleet: synth.Fleet, tmp_path: Path) -> None:
    """On a busy fleet the history the fleet stage loads is the most recent whole days that fit
    in ``history_max_runs``, said in the progress and in ``stats["history_since"]``; within
    the cap it is the last ``history_days``."""
    import re

    fleet.write(tmp_path / "logs")
    events = tmp_path / "logs" / "events"
    days = sorted(p for p in events.iterdir() if p.is_dir())
    for name in ("capped", "whole"):
        audit([str(p) for p in days[:-1]], state=tmp_path / f"{name}.duckdb")
    said: list[str] = []
    capped = audit(str(events), state=tmp_path / "capped.duckdb", history_max_runs=100, progress=said.append)
    whole = audit(str(events), state=tmp_path / "whole.duckdb", history_max_runs=None)
    first_new = capped.runs["first_ts"].min()
    assert datetime.fromisoformat(whole.stats["history_since"]) == first_new - timedelta(days=90)
    since = datetime.fromisoformat(capped.stats["history_since"])
    assert since == datetime(since.year, since.month, since.day, tzinfo=UTC)  # whole days
    assert first_new - timedelta(days=3) < since <= first_new  # about 40 runs a day: two days fit
    loading = [m for m in said if "hold more than 100 runs" in m]
    assert len(loading) == 1, said
    n = int(re.search(r"loading the ([0-9,]+) since", loading[0]).group(1).replace(",", ""))
    assert 0 < n <= 100 and any(f"history: {n:,} earlier runs" in m for m in said)
    assert capped.runs.height == whole.runs.height  # this night's runs only, as without the cap
    with pytest.raises(InvalidParameterError, match="history_max_runs"):
        audit(str(events), state=tmp_path / "capped.duckdb", history_max_runs=0)


@pytest.mark.parametrize("how", ["one chunk", "row ranges", "partitioned"])
def test_damaged_pages_outside_the_checked_columns_name_the_file(
    damaged_args_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A damaged ``args`` page gets through the checking pass; reading the events then fails
    with a CorruptFileError that names the source, on every path (one chunk, row ranges, the
    partition pass), not with Polars' own error."""
    import importlib

    from driftwatch.errors import CorruptFileError

    mod = importlib.import_module("driftwatch.audit")
    path = damaged_args_log
    assert dw.read_logs(path).stats.rows_valid == 20_000
    kw: dict[str, object] = {}
    if how != "one chunk":
        monkeypatch.setattr(mod, "IN_MEMORY_BYTES", 0)
        kw["chunks"] = 2
    if how == "partitioned":
        monkeypatch.setattr(mod, "RANGE_SCATTER_MAX", -1.0)
    with pytest.raises(CorruptFileError, match=r"bad\.parquet, column 'args': reading the events failed: "):
        audit(path, out=tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".driftwatch-chunks") for p in tmp_path.iterdir())  # no chunk files left


def test_invalid_utf8_in_a_text_column_names_the_file_and_the_column(tmp_path: Path) -> None:
    """A writer that stored invalid UTF-8 in a column annotated as text: Polars refuses the whole
    read, so the error at least says which file and which column to re-export."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from driftwatch.errors import CorruptFileError

    logs = tmp_path / "logs"
    logs.mkdir()
    good = {"run_id": ["r1"] * 10, "step": list(range(1, 11)), "action": ["search"] * 10,
            "agent": pa.array([b"billing"] * 10, pa.binary()).view(pa.string())}
    pq.write_table(pa.table(good), logs / "a.parquet")
    bad = dict(good, run_id=["r2"] * 10, agent=pa.array([b"billing"] * 9 + [b"\xff\xfe"], pa.binary()).view(pa.string()))
    pq.write_table(pa.table(bad), logs / "b.parquet")
    # (the reader's checking pass decodes agent too, for empty names: it fails there, and says the same)
    with pytest.raises(CorruptFileError, match=r"b\.parquet, column 'agent': reading (the events )?failed: .*UTF-8"):
        audit(logs)


def test_fleet_stage_flags_sorted_run_ids_only_where_true(fleet: synth.Fleet) -> None:
    """The per-run tables' run_id gets Polars' sorted flag when (and only when) it is sorted;
    the fleet stage's outputs do not change with it."""
    from driftwatch.audit import _flag_run_order

    tables = run_stage(fleet.events)
    tables.loops = tables.loops.reverse()  # no longer in run order
    for name, frame in tables.frames().items():
        setattr(tables, name, pl.from_arrow(frame.to_arrow()))  # no flags
    assert not tables.features["run_id"].flags["SORTED_ASC"]
    _flag_run_order(tables)
    assert tables.features["run_id"].flags["SORTED_ASC"]
    assert tables.action_counts["run_id"].flags["SORTED_ASC"]
    assert not tables.loops["run_id"].flags["SORTED_ASC"]
    plain = run_stage(fleet.events)
    import importlib

    mod = importlib.import_module("driftwatch.audit")
    flagged = fleet_stage(run_stage(fleet.events))
    original = mod._flag_run_order
    try:
        mod._flag_run_order = lambda t: None
        unflagged = fleet_stage(plain)
    finally:
        mod._flag_run_order = original
    _assert_same_outputs(flagged, unflagged)


def test_audit_of_a_frame_takes_column_map_and_checks_format(tmp_path: Path) -> None:
    """dw.audit(frame, column_map=...) ignored the map (and said to pass it); format= was
    ignored too. The map renames the frame's columns as read_logs renames a file's."""
    import driftwatch as dw
    from driftwatch.errors import InvalidParameterError, SchemaError

    raw = pl.DataFrame({"session": ["s", "s", "t"], "Step": [1, 2, 1], "tool": ["a", "b", "c"], "run_id": "x"})
    res = dw.audit(raw, column_map={"session": "run_id", "Step": "step", "tool": "action"})
    assert sorted(res.runs["run_id"].to_list()) == ["s", "t"]  # the mapped column replaced run_id
    same = dw.audit(raw.lazy(), column_map={"session": "run_id", "Step": "step", "tool": "action"})
    assert same.runs.equals(res.runs) and same.audit_id == res.audit_id
    with pytest.raises(SchemaError, match=r"column_map names column\(s\) \['nope'\]"):
        dw.audit(raw, column_map={"nope": "run_id"})
    with pytest.raises(InvalidParameterError, match="format='otel' applies to files"):
        dw.audit(raw, format="otel")



def test_a_log_without_costs_reports_unknown_spend_not_zero(
    fleet: synth.Fleet, result: AuditResult, tmp_path: Path
) -> None:
    """No cost column (nor tokens or latency): per-run costs, the cost profile, the summary,
    alerts and the page say "unknown", never $0; the levels are those of the full log minus the
    cost rules, and nothing warns."""
    bare = fleet.events.drop("cost_usd", "input_tokens", "output_tokens", "latency_ms")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = audit(bare)
    assert res.runs["cost_usd"].is_null().all() and res.runs["tokens"].is_null().all()
    assert res.loops.height and res.loops["wasted_cost_usd"].is_null().all()
    assert res.costs.height and (res.costs["runs_with_cost"] == 0).all() and res.costs["total_cost_usd"].is_null().all()
    assert not res.load.filter(pl.col("metric").is_in(["cost_per_run", "latency_p90"])).height
    cost = res.summary()["cost"]
    assert cost["total_usd"] is None and cost["runs_with_cost"] == 0 and cost["projected_daily_usd"] is None
    assert all(a["cost_usd"] is None for a in res.alerts())
    assert not any("$" in r for a in res.alerts() for r in a["reasons"])
    res.write(tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "no cost recorded" in page and "$0.000" not in page
    # the runs that escalate without costs are those that escalate with them for other reasons
    hot = res.runs.filter(pl.col("level") == "escalate")["run_id"]
    assert hot.len() and hot.is_in(result.runs.filter(pl.col("level") != "ok")["run_id"].implode()).all()
    # costs for some agents only: the projection says what it stands on
    some = fleet.events.with_columns(
        pl.when(pl.col("agent") == "billing").then(None).otherwise(pl.col("cost_usd")).alias("cost_usd")
    )
    part = audit(some)
    part.write(tmp_path / "part")
    costed = part.summary()["cost"]["runs_with_cost"]
    assert 0 < costed < part.runs.height
    assert f"(from the {costed:,} of {part.runs.height:,} runs that recorded a cost)" in (
        tmp_path / "part" / "report.html").read_text()


def test_runs_missing_rejected_steps_are_reviewed_and_their_destructive_calls_checked(tmp_path: Path) -> None:
    """A step the reader rejects (an unreadable approval flag, an unknown status, a confidence
    out of range) is not analysed: its run is at least review with a reason naming why, and a
    destructive call among those steps is an unapproved_action breach (a probe found such runs
    rated ok with the deletion unseen). Spans that wrap steps and re-delivered copies do not count."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    ev = pl.DataFrame({
        "run_id": ["r1"] * 3 + ["r2"] * 3 + ["r3"] * 3 + ["ok"] * 3,
        "step": [1, 2, 3] * 4,
        "ts": [t0 + timedelta(seconds=i) for i in range(12)],
        "action": ["llm", "delete_invoice", "llm"] * 3 + ["llm", "search", "llm"],
        "approved": [None, "pending", None] + [None] * 3 + [None] * 3 + [None] * 3,
        "status": ["ok"] * 3 + ["ok", "in_progress", "ok"] + ["ok"] * 3 + ["ok", "weird", "ok"],
        "confidence": [None] * 7 + [1.2, None] + [None] * 3,
    })
    # a re-delivered copy of a valid row: rejected as duplicate_step, but nothing is missing
    ev = pl.concat([ev, ev.filter(pl.col("run_id") == "r1", pl.col("step") == 1)])
    ev.write_parquet(tmp_path / "ev.parquet")
    res = audit(tmp_path / "ev.parquet")
    assert res.rejected.height == 5
    runs = {r["run_id"]: r for r in res.runs.iter_rows(named=True)}
    assert {k: (r["n_steps"], r["n_rejected"], r["level"]) for k, r in runs.items()} == {
        "r1": (2, 1, "escalate"), "r2": (2, 1, "escalate"), "r3": (2, 1, "escalate"), "ok": (2, 1, "review"),
    }
    assert runs["r1"]["reasons"] == [
        "delete_invoice without approval",
        "1 step rejected by the reader (bad_value:approved): audited without it; see rejected.parquet",
    ]
    assert runs["ok"]["reasons"] == [
        "1 step rejected by the reader (bad_status): audited without it; see rejected.parquet"
    ]
    v = res.violations.filter(pl.col("rule") == "unapproved_action")
    assert v.select("run_id", "step", "severity").rows() == [("r1", 2, "critical"), ("r2", 2, "critical"),
                                                             ("r3", 2, "critical")]
    assert v["detail"][1] == "delete_invoice (delete tier) without approval (step rejected: bad_status)"
    # a frame gives the same (the reader checks it the same way)
    assert audit(ev).runs.select("run_id", "n_rejected", "level").equals(res.runs.select("run_id", "n_rejected", "level"))
    # strict thresholds cannot hide an incomplete run
    strict = dw.Policy(review=0.9, escalate=0.95)
    assert dict(audit(tmp_path / "ev.parquet", policy=strict).runs.select("run_id", "level").rows())["ok"] == "review"


def test_alerts_jsonl_is_one_line_per_alert_for_any_reader(result: AuditResult, tmp_path: Path) -> None:
    """U+2028/U+2029 in logged text are escaped: str.splitlines() (and JavaScript) would split
    an alert in two on them (a probe found 10 alerts read as 18 lines)."""
    from dataclasses import replace

    odd = result.runs.with_columns(pl.lit("bill\u2028ing\u2029x").alias("agent"))
    res = replace(result, runs=odd)
    res.write(tmp_path / "out")
    text = (tmp_path / "out" / "alerts.jsonl").read_text()
    assert "\u2028" not in text and "\u2029" not in text
    lines = text.splitlines()
    assert len(lines) == len(res.alerts()) > 0
    assert [json.loads(x)["agent"] for x in lines] == ["bill\u2028ing\u2029x"] * len(lines)


def test_incremental_audit_in_python_takes_the_clis_state_folder(tmp_path: Path) -> None:
    """state= takes the CLI's --state folder as well as a file; nothing new raises the exported
    dw.NothingToAudit (a NoInputError); history_days is checked like every option."""
    synth.write_fleet(tmp_path / "f", days=2, runs_per_day=20, seed=1)
    folder = tmp_path / "state"
    folder.mkdir()
    assert audit(tmp_path / "f" / "events", state=folder).runs.height > 0
    assert (folder / "audit.duckdb").is_file()
    with pytest.raises(dw.NothingToAudit, match="no new data since the last audit"):
        audit(tmp_path / "f" / "events", state=folder / "audit.duckdb")
    assert issubclass(dw.NothingToAudit, NoInputError)
    for bad in (float("nan"), "x", -1, 0, True):
        with pytest.raises(InvalidParameterError, match="history_days must be a positive number of days"):
            audit(tmp_path / "f" / "events", state=tmp_path / "other.duckdb", history_days=bad)
    assert not (tmp_path / "other.duckdb").exists()  # checked before the state was made


def test_a_run_whose_every_step_was_rejected_still_reaches_the_runs_and_alerts() -> None:
    """Its only step a delete with an unreadable approval: the run was missing from runs,
    alerts and levels, and its breach from the violations (a probe found it); now it escalates,
    scored on its own from the rows' ids, order, time and action (a status 'weird' or a
    confidence 1.2 in them crashed the audit; their cost and confidence are not judged), and
    it does not move the anomaly model of the valid runs. A windowed audit leaves such runs
    out: their start cannot be placed against the window."""
    t = datetime(2026, 10, 1, tzinfo=UTC)
    ev = pl.DataFrame({
        "run_id": ["good", "good", "bad", "late"],
        "step": [1, 2, 1, 1],
        "ts": [t, t + timedelta(seconds=1), t, t + timedelta(days=3)],
        "action": ["llm", "get_invoice", "delete_invoice", "delete_invoice"],
        "approved": [None, None, "pending", "pending"],
    })
    res = audit(ev)
    runs = {r["run_id"]: r for r in res.runs.iter_rows(named=True)}
    assert (runs["bad"]["level"], runs["bad"]["n_rejected"]) == ("escalate", 1)
    assert runs["bad"]["reasons"][0] == "delete_invoice without approval"
    assert res.violations.filter(pl.col("rule") == "unapproved_action")["run_id"].to_list() == ["bad", "late"]
    assert [a["run_id"] for a in res.alerts()] == ["bad", "late"]
    assert res.stats["rows_analysed"] == 2  # their rows are not analysed, only scored
    windowed = audit(ev, until=t + timedelta(days=1))
    assert sorted(windowed.runs["run_id"]) == ["good"] and windowed.violations.height == 0
    # raw bad values in the rejected rows, and a cost and confidence there: no crash, no cost
    # reason without a violation behind it
    odd = pl.DataFrame({"run_id": ["good", "good", "bad", "bad"], "step": [1, 2, 1, 2],
                        "ts": [t, t + timedelta(seconds=1)] * 2, "action": ["llm", "search", "delete_x", "llm"],
                        "status": ["ok", "ok", "weird", "ok"], "confidence": [0.9, 0.9, 0.9, 1.2],
                        "cost_usd": [0.01, 0.01, 0.6, 0.4]})
    res = audit(odd)
    bad = res.runs.filter(pl.col("run_id") == "bad").row(0, named=True)
    assert bad["level"] == "escalate" and bad["cost_usd"] is None and bad["n_rejected"] == 2
    assert bad["reasons"] == ["delete_x without approval",
                              "2 steps rejected by the reader (bad_confidence, bad_status): audited without them; "
                              "see rejected.parquet"]
    assert res.summary()["cost"]["total_usd"] == pytest.approx(0.02)
    # many unreadable runs beside a few valid ones: the valid runs are scored as without them
    good = pl.DataFrame({"run_id": [f"g{i // 4}" for i in range(400)], "step": [i % 4 + 1 for i in range(400)],
                         "ts": [t + timedelta(seconds=i) for i in range(400)], "action": ["llm", "search"] * 200})
    junk = pl.DataFrame({"run_id": [f"b{i // 5}" for i in range(20_000)], "step": [i % 5 + 1 for i in range(20_000)],
                         "ts": [t + timedelta(seconds=i) for i in range(20_000)], "action": ["llm"] * 20_000,
                         "status": ["weird"] * 20_000})
    alone = audit(good).runs.select("run_id", "score", "level")
    mixed = audit(pl.concat([good.with_columns(status=pl.lit("ok")), junk])).runs
    assert mixed.filter(pl.col("run_id").str.starts_with("g")).select("run_id", "score", "level").equals(alone)



def _state_rows(db: Path, *queries: str) -> list[list[tuple]]:
    """The rows of each SQL query on the state database (opened read-only, closed again)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return [con.execute(q).fetchall() for q in queries]
    finally:
        con.close()


def test_incremental_runs_every_step_of_which_was_rejected_are_stored_once(tmp_path: Path) -> None:
    """Incremental: a run whose only step was rejected is stored with its breach, and stored once
    when its step is delivered again in another file (its rows were added, never replaced); the
    second delivery finds nothing new, so it is not scored or alerted again."""

    t = datetime(2026, 10, 1, tzinfo=UTC)
    logs = tmp_path / "logs"
    logs.mkdir()
    for night in (1, 2):  # each night a new valid run, and B's one step again, rejected again
        pl.DataFrame({"run_id": [f"S{night}", f"S{night}", "B"], "step": [1, 2, 1],
                      "ts": [t, t + timedelta(seconds=1), t], "action": ["llm", "search", "delete_invoice"],
                      "approved": [None, None, "pending"]},
                     schema_overrides={"approved": pl.String}).write_parquet(logs / f"night{night}.parquet")
        res = audit(logs, state=tmp_path / "st.duckdb")
        assert dict(res.runs.select("run_id", "level").rows()).get("B") == ("escalate" if night == 1 else None)
    rows, breaches = _state_rows(tmp_path / "st.duckdb", "select level from runs where run_id = 'B'",
                                 "select count(*) from violations where run_id = 'B'")
    assert rows == [("escalate",)] and breaches == [(1,)]


def _night_one(tmp_path: Path) -> tuple[datetime, Path]:
    """A logs folder with night 1: runs R (llm, get_invoice) and S (llm, search)."""
    t = datetime(2026, 10, 1, tzinfo=UTC)
    logs = tmp_path / "logs"
    logs.mkdir()
    pl.DataFrame({"run_id": ["R", "R", "S", "S"], "step": [1, 2, 1, 2],
                  "ts": [t, t + timedelta(seconds=1), t, t + timedelta(seconds=2)],
                  "action": ["llm", "get_invoice", "llm", "search"]}).write_parquet(logs / "night1.parquet")
    return t, logs


def test_a_rejected_delete_arriving_a_night_after_its_run_is_a_breach_of_that_run(tmp_path: Path) -> None:
    """Incremental: run R's valid steps were audited on night 1; on night 2 its delete arrives
    with an unreadable approval. The breach was dropped (R was not among night 2's runs); now R
    is re-scored with its history, alerted and stored with the breach, its other tables kept."""

    t, logs = _night_one(tmp_path)
    state = tmp_path / "state.duckdb"
    assert dict(audit(logs, state=state).runs.select("run_id", "level").rows())["R"] == "ok"
    t2 = t + timedelta(days=1)
    pl.DataFrame({"run_id": ["R", "T", "T"], "step": [3, 1, 2], "ts": [t + timedelta(seconds=5), t2, t2],
                  "action": ["delete_invoice", "llm", "search"], "approved": ["pending", None, None]},
                 schema_overrides={"approved": pl.String}).write_parquet(logs / "night2.parquet")
    second = audit(logs, state=state)
    r = second.runs.filter(pl.col("run_id") == "R").row(0, named=True)
    assert r["level"] == "escalate" and r["reasons"][0] == "delete_invoice without approval"
    assert r["n_steps"] == 2 and r["n_rejected"] == 1  # scored from its history steps
    assert "R" in [a["run_id"] for a in second.alerts()] and "S" not in second.runs["run_id"].to_list()
    stored, breaches, features = _state_rows(
        state, "select level from runs where run_id = 'R'", "select rule from violations where run_id = 'R'",
        "select n_steps from features where run_id = 'R'",
    )
    assert stored == [("escalate",)] and breaches == [("unapproved_action",)] and features == [(2,)]


def test_a_night_of_only_rejected_rows_still_scores_their_runs(tmp_path: Path, run_cli) -> None:
    """Night 2's only file held R's late delete with an unreadable approval: the audit exited 2
    ("no valid events to audit") with no alert. Likewise a file whose one run has every step
    rejected. Both are scored now; only sources with nothing to score are refused."""
    t, logs = _night_one(tmp_path)
    state = tmp_path / "state"
    assert run_cli("audit", str(logs), "--out", str(tmp_path / "out1"), "--state", str(state), "-q")[0] == 0
    late = pl.DataFrame({"run_id": ["R"], "step": [3], "ts": [t + timedelta(seconds=5)],
                         "action": ["delete_invoice"], "approved": ["pending"]})
    late.write_parquet(logs / "night2.parquet")
    code, _, err = run_cli("audit", str(logs), "--out", str(tmp_path / "out2"), "--state", str(state), "-q",
                           "--fail-on", "escalate")
    assert code == 1, err
    alerts = [json.loads(line) for line in (tmp_path / "out2" / "alerts.jsonl").read_text().splitlines()]
    assert [(a["run_id"], a["level"], a["rules"]) for a in alerts] == [("R", "escalate", ["unapproved_action"])]
    # a plain audit of the late file alone: its one run, every step rejected, is listed and escalated
    alone = audit(logs / "night2.parquet")
    assert alone.runs.select("run_id", "level", "n_rejected").rows() == [("R", "escalate", 1)]
    code, out, _ = run_cli("audit", str(logs / "night2.parquet"), "--out", str(tmp_path / "alone"))
    assert code == 0 and out.startswith("audited 1 run (0 of 1 rows valid, 1 rejected): ok 0, review 0, escalate 1")
    # a drift reference range: drift is skipped with a note (it stopped the audit: "reference holds no runs")
    ranged = audit(logs / "night2.parquet", reference=("2026-09-25", "2026-10-02"))
    assert ranged.runs["level"].to_list() == ["escalate"]
    assert ranged.notes["drift_reference"].startswith("skipped: no run was analysed")
    # nothing to score: every row without a run id, or a window (such runs cannot be placed in it)
    pl.DataFrame({"run_id": [None], "step": [1], "action": ["x"]}, schema_overrides={"run_id": pl.String}) \
        .write_parquet(tmp_path / "anon.parquet")
    with pytest.raises(NoInputError, match="no valid events to audit"):
        audit(tmp_path / "anon.parquet")
    with pytest.raises(NoInputError, match="no valid events to audit in the --since/--until window"):
        audit(logs / "night2.parquet", since="2026-09-01")

def test_incremental_rejected_breaches_are_neither_doubled_nor_overwrite_unloaded_history(tmp_path: Path) -> None:
    """The same rejected delete delivered on two nights is one breach (it was stored twice); a
    rejected row of a history run older than the loaded history leaves that run as stored (it was
    scored as a run with every step rejected and overwrote the run: n_steps 1, breaches gone)."""

    t = datetime(2026, 10, 1, tzinfo=UTC)
    logs = tmp_path / "logs"
    logs.mkdir()
    text = {"approved": pl.String}
    pol = dw.Policy(max_steps=5)
    pl.DataFrame({"run_id": ["R"] * 2 + ["Q"] * 8, "step": [1, 2, *range(1, 9)],
                  "ts": [t, t + timedelta(seconds=1), *[t + timedelta(seconds=i) for i in range(8)]],
                  "action": ["llm", "get_invoice", *["search", "get_invoice"] * 4]}).write_parquet(logs / "n1.parquet")
    audit(logs, state=tmp_path / "st.duckdb", policy=pol)
    for night in (2, 3):  # R's delete with an unreadable approval, delivered twice
        pl.DataFrame({"run_id": ["R", f"T{night}"], "step": [3, 1], "ts": [t + timedelta(seconds=5), t + timedelta(days=night)],
                      "action": ["delete_invoice", "llm"], "approved": ["pending", None]},
                     schema_overrides=text).write_parquet(logs / f"n{night}.parquet")
        audit(logs, state=tmp_path / "st.duckdb", policy=pol)
    # ten days on, with two days of history: Q is not loaded when its rejected delete arrives
    pl.DataFrame({"run_id": ["Q", "U"], "step": [9, 1], "ts": [t + timedelta(seconds=20), t + timedelta(days=10)],
                  "action": ["delete_invoice", "llm"], "approved": ["pending", None]},
                 schema_overrides=text).write_parquet(logs / "n4.parquet")
    audit(logs, state=tmp_path / "st.duckdb", policy=pol, history_days=2)
    r_breaches, q_run, q_breaches = _state_rows(
        tmp_path / "st.duckdb", "select step, rule from violations where run_id = 'R' order by all",
        "select n_steps, level from runs where run_id = 'Q'", "select rule from violations where run_id = 'Q'",
    )
    assert r_breaches == [(3, "unapproved_action")]
    assert q_run == [(8, "review")] and q_breaches == [("max_steps",)]


def test_alert_text_is_cut_but_the_run_id_is_whole(result: AuditResult, tmp_path: Path) -> None:
    """A 100 kB agent name (logged text comes from agents) would make a 100 kB alert line that
    webhooks refuse: alerts cut their text at ALERT_TEXT_MAX characters and say so."""
    from dataclasses import replace

    from driftwatch.audit import ALERT_TEXT_MAX

    long = "a" * 100_000
    hot = pl.col("level") != "ok"
    odd = result.runs.with_columns(
        pl.when(hot).then(pl.lit(long)).otherwise(pl.col("agent")).alias("agent"),
        pl.when(hot).then(pl.concat_list(pl.lit("b" * 5_000), pl.lit("short"))).otherwise(pl.col("reasons")).alias("reasons"),
        pl.when(hot).then(pl.lit("r" * 2_000)).otherwise(pl.col("run_id")).alias("run_id"),
    )
    res = replace(result, runs=odd)
    alerts = res.alerts()
    assert alerts
    a = alerts[0]
    assert a["agent"] == "a" * ALERT_TEXT_MAX + f"… ({100_000 - ALERT_TEXT_MAX} more characters)"
    assert a["reasons"] == ["b" * ALERT_TEXT_MAX + f"… ({5_000 - ALERT_TEXT_MAX} more characters)", "short"]
    assert a["run_id"] == "r" * 2_000
    res.write(tmp_path / "out")
    lines = (tmp_path / "out" / "alerts.jsonl").read_text().splitlines()
    assert max(map(len, lines)) < 10_000
    # short text is untouched
    assert [x["agent"] for x in result.alerts()] == result.runs.filter(hot).sort(
        ["score", "run_id"], descending=[True, False])["agent"].to_list()


@pytest.mark.parametrize("order", ["copy first", "delete first"])
def test_a_second_call_logged_at_the_same_step_is_not_a_copy(tmp_path: Path, order: str) -> None:
    """Parallel tool calls logged under one turn number: the reader keeps the first row read,
    and the other, recording another action, is a conflicting_step, missing from the audit,
    not a harmless re-delivered copy. A probe found an unapproved delete logged second at the
    same step dropped (run ok, no breach) or caught, by the order of the rows alone."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    calls = [("search", None), ("delete_all_customers", None)]
    if order == "delete first":
        calls.reverse()
    ev = pl.DataFrame({
        "run_id": ["r"] * 4 + ["c"] * 3 + ["b"] * 2,
        "step": [1, 2, 2, 3, 1, 2, 2, 1, 1],
        "ts": [t0 + timedelta(seconds=i) for i in range(7)] * 1 + [t0, t0 + timedelta(minutes=10)],
        "action": ["llm", calls[0][0], calls[1][0], "llm", "llm", "search", "search", "charge_card", "charge_card"],
        "args": [None, None, None, None, None, '{"q": 1}', '{"q": 1}', '{"c": 5}', '{"c": 5}'],
        # a failed call logged again at the same step when it succeeded later: not a copy
        "status": ["ok"] * 7 + ["error", "ok"],
        "cost_usd": [0.01] * 7 + [0.0, 4.0],
    })
    # a copy is the same row: c's second search repeats every column
    ev = ev.with_columns(pl.when((pl.col("run_id") == "c") & (pl.col("step") == 2)).then(
        pl.lit(t0 + timedelta(seconds=5))).otherwise(pl.col("ts")).alias("ts"))
    ev.write_parquet(tmp_path / "ev.parquet")
    res = audit(tmp_path / "ev.parquet")
    got = sorted(res.rejected.select("run_id", "step", "action", "reason").rows())
    assert got == [("b", 1, "charge_card", "conflicting_step"), ("c", 2, "search", "duplicate_step"),
                   ("r", 2, calls[1][0], "conflicting_step")]
    runs = {r["run_id"]: r for r in res.runs.iter_rows(named=True)}
    assert runs["r"]["level"] == "escalate" and runs["r"]["n_rejected"] == 1
    assert "delete_all_customers without approval" in runs["r"]["reasons"]
    assert runs["c"]["level"] == "ok" and runs["c"]["n_rejected"] == 0  # a re-delivered copy is not missing
    assert res.violations.filter(pl.col("run_id") == "r")["rule"].to_list() == ["unapproved_action"]
    # a frame is checked the same way
    assert sorted(audit(ev).rejected.select("run_id", "step", "action", "reason").rows()) == got


def test_late_runs_ahead_of_a_capped_history_keep_the_stored_fleet_results(tmp_path: Path) -> None:
    """A night's file holding a few runs that started ten days earlier, with the history capped
    (--history-max-runs): the stored change-points and drift of the days the fleet stage did not
    load were deleted and nothing recomputed them (a probe saw 4 change-points become 0)."""
    import duckdb

    fleet = synth.write_fleet(tmp_path / "f", days=20, runs_per_day=150, seed=3)
    assert fleet is not None
    events = tmp_path / "f" / "events"
    days = sorted(p for p in events.iterdir() if p.is_dir())
    db = tmp_path / "st.duckdb"
    audit([str(p) for p in days[:-1]], state=db, history_max_runs=300)

    def stored() -> tuple[list[tuple], list[tuple]]:
        with duckdb.connect(str(db), read_only=True) as con:
            cps = con.execute("SELECT series, metric, ts FROM changepoints ORDER BY ALL").fetchall()
            drift = con.execute("SELECT series, feature, window_start FROM drift ORDER BY ALL").fetchall()
        return cps, drift

    cps, drift = stored()
    assert cps and drift
    night = pl.read_parquet(days[-1] / "*.parquet")
    old = pl.read_parquet(days[-11] / "*.parquet")
    ids = old["run_id"].unique().sort().head(3).implode()
    late = old.filter(pl.col("run_id").is_in(ids)).with_columns(("late-" + pl.col("run_id")).alias("run_id"))
    (tmp_path / "night").mkdir()
    pl.concat([night, late]).write_parquet(tmp_path / "night" / "part-0.parquet")
    (tmp_path / "plain").mkdir()
    night.write_parquet(tmp_path / "plain" / "part-0.parquet")
    shutil.copy(db, tmp_path / "copy.duckdb")
    plain = audit(str(tmp_path / "plain"), state=tmp_path / "copy.duckdb", history_max_runs=300)
    res = audit(str(tmp_path / "night"), state=db, history_max_runs=300)
    since = datetime.fromisoformat(res.stats["history_since"])
    assert since > late["ts"].max()  # the history was capped after the late runs
    cps2, drift2 = stored()
    # what lies before the loaded history is kept as it was; nothing is stored twice
    assert [c for c in cps2 if c[2] < since] == [c for c in cps if c[2] < since]
    assert [d for d in drift2 if d[2] < since] == [d for d in drift if d[2] < since]
    assert len(set(cps2)) == len(cps2) and len(set(drift2)) == len(drift2)
    # the late runs are scored, but the time series do not see them (nor the unloaded days)
    assert res.runs.height == plain.runs.height + 3
    assert res.runs.filter(pl.col("run_id").str.starts_with("late-")).height == 3
    assert res.changepoints.equals(plain.changepoints) and res.drift.equals(plain.drift)
    assert res.summary()["cost"]["profile_runs"] == plain.summary()["cost"]["profile_runs"]


def test_summary_figures_keep_significant_digits(tmp_path: Path) -> None:
    """summary.json rounds floats as the Parquet tables do (12 significant digits), not to six
    decimals: a fleet of $0.0000001-$0.000001 runs kept p50 $0.000001 (true $0.00000055),
    the same figure as its p99 next to p99_over_p50 1.82. Integers stay integers."""
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    n = 300
    ev = pl.DataFrame({"run_id": [f"r{i:04d}" for i in range(n)], "step": 1,
                       "ts": [t0 + timedelta(minutes=5 * i) for i in range(n)], "action": "llm", "agent": "embedder",
                       "status": "ok", "outcome": [1.0 if i % 3 else 0.0 for i in range(n)],
                       "cost_usd": [(1 + i % 10) * 1e-7 for i in range(n)]})
    audit(ev, out=tmp_path / "r", policy=dw.Policy(max_cost_usd=5e-7))
    cost = json.loads((tmp_path / "r" / "summary.json").read_text())["cost"]
    row = pl.read_parquet(tmp_path / "r" / "costs.parquet").filter(series="all").row(0, named=True)
    assert cost["cost_p50"] == pytest.approx(5.5e-7, rel=1e-9) and cost["cost_p99"] == pytest.approx(1e-6, rel=1e-9)
    assert cost["p99_over_p50"] == pytest.approx(1e-6 / 5.5e-7, rel=1e-11)
    for key in ("total_cost_usd", "cost_p50", "cost_p99", "cost_max", "p99_over_p50", "cost_per_success",
                "projected_daily_usd", "projected_daily_lo", "projected_daily_hi", "worst_run_expected_usd",
                "runs_per_day", "observed_days", "over_ceiling_share"):
        assert cost[key] == row[key], key  # the same figure in both files
    for key in ("runs_with_cost", "profile_runs", "runs_over_ceiling"):
        assert type(cost[key]) is int, key
    assert (cost["profile_runs"], cost["runs_over_ceiling"]) == (n, 150)
    assert cost["total_usd"] == cost["total_cost_usd"] == pytest.approx(n * 5.5e-7, rel=1e-9)


def test_summary_number_rounding() -> None:
    import numpy as np

    from driftwatch.audit import _num

    assert _num(5.5e-7) == 5.5e-7 and _num(1 / 3) == 0.333333333333 and _num(123456.7890123456) == 123456.789012
    assert _num(2.0 / 3 * 1e-9) == 6.66666666667e-10 and _num(0.0) == 0.0
    for whole in (3, np.int64(3), True):
        assert type(_num(whole)) is int
    assert _num(None) is None and _num(math.nan) is None and _num(math.inf) is None and _num("x") is None
    # exactly as the Parquet tables round
    values = np.random.default_rng(0).random(200) * 10.0 ** np.arange(-10, 10).repeat(10)
    assert [_num(v) for v in values] == pl.Series(values).round_sig_figs(12).to_list()


def test_summary_spend_is_one_figure_for_the_same_runs() -> None:
    """total_usd and the profile's total_cost_usd were two sums in different orders (116.852456
    next to 116.852455 on a plain audit); over the same runs they are one figure, and over other
    runs (an incremental audit) total_usd is exact whatever the order of the runs."""
    from driftwatch.audit import _cost_headline

    below, above = 116.8524555 - 1e-12, 116.8524555 + 1e-12  # one sum each side of a 6-decimal tie
    runs = pl.DataFrame({"run_id": ["a", "b"], "cost_usd": [below - 100.0, 100.0]})
    costs = pl.DataFrame({"series": ["all"], "runs": [2], "runs_with_cost": [2], "total_cost_usd": [above]})
    head = _cost_headline(runs, costs)
    assert head["total_usd"] == head["total_cost_usd"] == pytest.approx(above, rel=1e-12)
    # a profile over more runs (history): this audit's own spend, exactly summed in any order
    history = costs.with_columns(runs=10, runs_with_cost=10)
    for order in ([1e16, 1.0, -1e16], [1.0, 1e16, -1e16], [-1e16, 1e16, 1.0]):
        head = _cost_headline(pl.DataFrame({"run_id": ["a", "b", "c"], "cost_usd": order}), history)
        assert head["total_usd"] == 1.0 and head["total_cost_usd"] == pytest.approx(above), order


def test_incremental_cost_headline_says_what_it_covers(small_fleet_dir: Path, tmp_path: Path) -> None:
    """summary.json's cost block in an incremental audit: total_usd and runs_with_cost are the
    night's runs, the profile's figures the loaded history's with them (profile_runs)."""
    events = small_fleet_dir / "events"
    days = sorted(p for p in events.iterdir() if p.is_dir())
    db = tmp_path / "st.duckdb"
    audit([str(p) for p in days[:-1]], state=db)
    res = audit(str(events), state=db, out=tmp_path / "out")
    cost = json.loads((tmp_path / "out" / "summary.json").read_text())["cost"]
    assert cost["runs_with_cost"] == res.runs["cost_usd"].drop_nulls().len() < cost["profile_runs"]
    whole = audit(str(events))
    assert cost["profile_runs"] == whole.summary()["cost"]["profile_runs"] == whole.runs.height


def test_state_paths_and_values_of_the_python_api(small_fleet_dir: Path, tmp_path: Path) -> None:
    """state="audit_state/" (a folder that does not exist yet) is a folder, as the CLI's --state;
    an empty state is refused; a huge history_days means all the history."""
    events = small_fleet_dir / "events"
    days = sorted(p for p in events.iterdir() if p.is_dir())
    for name in ("audit_state/", "plain_name"):
        audit(str(days[0]), state=tmp_path / name if not name.endswith("/") else f"{tmp_path}/{name}")
        assert (tmp_path / name.rstrip("/") / "audit.duckdb").is_file()
    audit(str(days[0]), state=tmp_path / "file.duckdb")
    assert (tmp_path / "file.duckdb").is_file()
    with pytest.raises(InvalidParameterError, match="state is empty"):
        audit(str(days[0]), state="")
    res = audit([str(p) for p in days[:2]], state=tmp_path / "plain_name", history_days=1_000_000)
    assert res.stats["history_since"].startswith("0001-01-02")


def test_a_state_written_by_hand_is_named_and_leaves_out_alone(small_fleet_dir: Path, tmp_path: Path) -> None:
    """A state DB whose tables have other columns or types failed deep in DuckDB ("unexpected
    error", the real error hidden by an aborted transaction) after the results folder had been
    replaced. Now: one InputError naming the file, and --out as it was."""
    import duckdb

    events = small_fleet_dir / "events"
    files = "create table files(path varchar, size bigint, mtime_ns bigint, hash varchar, audit_id varchar);"
    cases = {
        "features": files + "create table features(run_id varchar, n_steps int); insert into features values ('x', 3);",
        "types": files + "create table runs(run_id varchar, score varchar, level int); insert into runs values ('z','h',5);",
        "files": "create table files(path int, size varchar, mtime_ns varchar, hash int, audit_id int);"
                 "insert into files values (1,'a','b',2,3);",
    }
    for name, sql in cases.items():
        db = tmp_path / f"{name}.duckdb"
        with duckdb.connect(str(db)) as con:
            con.execute(sql)
        out = tmp_path / f"out_{name}"
        with pytest.raises(InputError, match=rf"{name}\.duckdb: the audit state database failed while"):
            audit(str(events), state=db, out=out)
        assert not out.exists(), name


def test_audit_id_follows_the_content_of_frames_and_read_results(tmp_path: Path) -> None:
    """alerts.jsonl consumers send alerts when audit_id changes: a frame with one run's actions and
    costs changed, or a ReadResult of other files, must not keep the id (every ReadResult had
    one id, and frames were hashed on run ids, steps and times only)."""
    ev = synth.generate(days=1, runs_per_day=40, seed=2).events
    first = ev["run_id"][0]
    changed = ev.with_columns(
        pl.when(pl.col("run_id") == first).then(pl.lit("delete_invoice")).otherwise("action").alias("action"))
    swapped = ev.with_columns(pl.col("cost_usd").shuffle(seed=3))  # the same values, on other rows
    base = dw.audit(ev).audit_id
    assert dw.audit(ev.reverse()).audit_id == base  # the rows' order does not count
    assert dw.audit(ev.lazy()).audit_id == base
    assert len({base, dw.audit(changed).audit_id, dw.audit(swapped).audit_id}) == 3
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ev.filter(pl.col("agent") == "planner").write_parquet(a / "part.parquet")
    ev.filter(pl.col("agent") != "planner").write_parquet(b / "part.parquet")
    ids = {dw.audit(dw.read_logs(d)).audit_id for d in (a, b)}
    assert len(ids) == 2
    assert dw.audit(dw.read_logs(a)).audit_id in ids  # the same read, the same id
    # a read of the same files with a narrower window is another input
    since = ev["ts"].sort()[ev.height // 2]
    assert dw.audit(dw.read_logs(b, since=since)).audit_id not in ids


def test_default_reference_of_a_window_shorter_than_a_day_holds_the_first_runs() -> None:
    """--drift-every 6h on data that starts at 09:08: the reference was midnight to 06:00, which
    held no run, and the audit stopped with 'reference holds no runs'."""
    from driftwatch.audit import default_reference

    t0 = datetime(2026, 10, 5, 9, 8, tzinfo=UTC)
    feats = pl.DataFrame({"first_ts": [t0 + timedelta(minutes=10 * i) for i in range(200)]})
    assert default_reference(feats, window="6h") == (datetime(2026, 10, 5, 6, tzinfo=UTC),
                                                     datetime(2026, 10, 5, 12, tzinfo=UTC))
    assert default_reference(feats, window="1d")[0] == datetime(2026, 10, 5, tzinfo=UTC)  # (days: midnight)
    assert default_reference(feats, window="5h")[0] == datetime(2026, 10, 5, 5, tzinfo=UTC)
    ev = synth.generate(days=2, runs_per_day=200, seed=1).events
    nine = ev["ts"].min().replace(hour=9, minute=0, second=0, microsecond=0)
    late = ev.filter(pl.col("ts").min().over("run_id") >= nine)
    start = late["ts"].min()
    assert start >= nine
    res = dw.audit(late, drift_every="6h")
    lo, hi = (datetime.fromisoformat(x) for x in res.notes["drift_reference_range"])
    assert lo <= start < hi and hi - lo == timedelta(hours=6)


def test_audit_id_follows_the_reference_and_every_option_but_not_column_order() -> None:
    """The id ignored a reference frame's content (repr cut short), changed from process to
    process with a ReadResult reference (its repr names an address), ignored drift_every and
    load_every, and changed with the order of a frame's columns."""
    ev = synth.generate(days=16, runs_per_day=30, seed=2).events
    cut = ev["ts"].min() + timedelta(days=7)
    ref, cur = ev.filter(pl.col("ts") < cut), ev.filter(pl.col("ts") >= cut)
    base = dw.audit(cur, reference=ref).audit_id
    assert dw.audit(cur, reference=ref.reverse()).audit_id == base
    assert dw.audit(cur, reference=ref.with_columns(pl.col("cost_usd") * 10)).audit_id != base
    assert dw.audit(cur[::-1].select(reversed(cur.columns)), reference=ref).audit_id == base
    ids = {dw.audit(cur, reference=ref, drift_every=d, load_every=le).audit_id
           for d, le in (("7d", "1m"), ("3d", "1m"), ("7d", "5m"))}
    assert len(ids) == 3 and base in ids
    lo, hi = ev["ts"].min().date(), cut.date()  # a range, however it is spelled
    spelled = {dw.audit(ev, reference=r).audit_id for r in ((lo, hi), (str(lo), str(hi)), f"{lo}..{hi}")}
    assert len(spelled) == 1
    assert dw.audit(cur, reference=ref, format="canonical").audit_id == base  # a frame's format is canonical
    code = ("import driftwatch as dw, polars as pl, sys; ev = pl.read_parquet(sys.argv[1]); "
            "print(dw.audit(ev, reference=dw.read_logs(sys.argv[2])).audit_id)")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        cur.write_parquet(f"{tmp}/cur.parquet")
        ref.write_parquet(f"{tmp}/ref.parquet")
        runs = [subprocess.run([sys.executable, "-c", code, f"{tmp}/cur.parquet", f"{tmp}/ref.parquet"],
                               capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].strip()


def test_audit_id_follows_which_copy_is_kept_and_how_logs_were_read(tmp_path: Path) -> None:
    """Two frames of the same rows in another order, where a step has two conflicting copies
    (the first is kept: other costs, other levels), shared an id; so did two ReadResults of one
    folder read with and without a column_map."""
    t = datetime(2026, 10, 1, tzinfo=UTC)
    rows = pl.DataFrame({"run_id": ["r1"] * 4, "step": [1, 2, 2, 3], "ts": [t + timedelta(seconds=i) for i in range(4)],
                         "action": ["llm", "search", "search", "llm"], "cost_usd": [0.01, 0.01, 5.0, 0.01]})
    one, other = dw.audit(rows), dw.audit(rows.reverse())
    assert one.runs["cost_usd"].to_list() != other.runs["cost_usd"].to_list()
    assert one.audit_id != other.audit_id
    clean = rows.filter(pl.int_range(pl.len()) != 2)  # no copies: the row order does not count
    assert dw.audit(clean).audit_id == dw.audit(clean.reverse()).audit_id
    rows.filter(pl.int_range(pl.len()) != 2).rename({"cost_usd": "tool_cost"}).write_parquet(tmp_path / "e.parquet")
    plain = dw.audit(dw.read_logs(tmp_path))
    mapped = dw.audit(dw.read_logs(tmp_path, column_map={"tool_cost": "cost_usd"}))
    assert plain.runs["cost_usd"].to_list() != mapped.runs["cost_usd"].to_list()
    assert plain.audit_id != mapped.audit_id
    assert mapped.audit_id == dw.audit(dw.read_logs(tmp_path, column_map={"tool_cost": "cost_usd"})).audit_id


def test_incremental_audit_id_follows_the_history_and_its_options(tmp_path: Path, monkeypatch) -> None:
    """The same new file on the same backlog with --history-days 90 or 2 (other change-points and
    drift), and a plain audit of it, had one audit_id; so had a re-read of a same-size rewrite
    (the README's way: delete its row from `files`). A shipper keyed on the id dropped alerts."""
    ev = synth.generate(days=6, runs_per_day=40, seed=2).events
    logs = tmp_path / "logs"
    logs.mkdir()
    last = ev["ts"].max().date()
    ev.filter(pl.col("ts").dt.date() < last).write_parquet(logs / "backlog.parquet")
    ev.filter(pl.col("ts").dt.date() == last).write_parquet(logs / "last.parquet")

    def night(state: Path, **kw: object) -> dw.AuditResult:
        dw.audit(logs / "backlog.parquet", state=state, **kw)
        return dw.audit([logs / "backlog.parquet", logs / "last.parquet"], state=state, **kw)

    ids = {night(tmp_path / "a").audit_id, night(tmp_path / "b", history_days=2).audit_id,
           night(tmp_path / "c", history_max_runs=50).audit_id, dw.audit(logs / "last.parquet").audit_id}
    assert len(ids) == 4
    assert night(tmp_path / "d").audit_id in ids  # the same history and options: the same id
    assert night(tmp_path / "e", history_days=90.0).audit_id in ids  # (90 and 90.0 are one option)
    # a same-size rewrite keeping the old mtime, re-read once its row in `files` is deleted: the
    # path, size and mtime are those of the first read, the content (its hash) is not
    import duckdb

    import driftwatch.state as state_mod

    path = logs / "last.parquet"
    with duckdb.connect(str(tmp_path / "a" / "audit.duckdb")) as con:
        first_id = con.execute("select audit_id from files where path = ?", [str(path.absolute())]).fetchone()[0]
        con.execute("delete from files where path = ?", [str(path.absolute())])
    real = state_mod.file_hash
    monkeypatch.setattr(state_mod, "file_hash", lambda p: "rewritten" if Path(p) == path.absolute() else real(p))
    again = dw.audit([logs / "backlog.parquet", path], state=tmp_path / "a")
    assert again.audit_id != first_id


def test_audit_id_follows_the_escalation_model_file_and_ignores_object_columns(tmp_path: Path) -> None:
    """A refitted model file (the policy names the file only) changed every score and kept the
    id; an Object column was hashed with Python's per-process hash(), so the id of the same frame
    changed from process to process."""
    fleet = synth.generate(days=2, runs_per_day=60, seed=1)
    ev = fleet.events
    labels = fleet.truth["runs"].select("run_id", "needs_human")
    scored = dw.score_runs(ev)
    (tmp_path / "policy.toml").write_text(dw.Policy(model="escalation.pkl").to_toml())
    dw.fit_escalation(scored, labels).save(tmp_path / "escalation.pkl")
    first = dw.audit(ev, policy=tmp_path / "policy.toml")
    dw.fit_escalation(scored, labels.with_columns(~pl.col("needs_human"))).save(tmp_path / "escalation.pkl")
    second = dw.audit(ev, policy=tmp_path / "policy.toml")
    assert not first.runs["score"].equals(second.runs["score"]) and first.audit_id != second.audit_id
    path = tmp_path / "ev.parquet"
    ev.write_parquet(path)
    code = ("import polars as pl, driftwatch as dw, sys; ev = pl.read_parquet(sys.argv[1]); "
            "print(dw.audit(ev.with_columns(pl.Series('note', [object()] * ev.height, dtype=pl.Object))).audit_id)")
    ids = {subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(ids) == 1


def test_drift_that_tested_nothing_says_why_in_the_notes() -> None:
    """Windows too short to hold 20 runs of a series: summary.json's note said only "given"."""
    ev = synth.generate(days=3, runs_per_day=40, seed=4).events
    res = audit(ev, reference=("2026-10-01", "2026-10-02"), drift_every="1h")
    assert res.drift.filter(pl.col("method") != "none").height == 0
    assert res.notes["drift_reference"].startswith("given; nothing compared: no series had 20 runs in the reference")


def test_shown_scores_never_reach_a_threshold_their_level_did_not(result: AuditResult) -> None:
    """0.6999575 is a review; rounded to 4 digits it read 0.7, the escalate threshold."""
    import dataclasses

    from driftwatch.report import _score_cell, shown_score

    hot = result.runs.filter(pl.col("level") != "ok").head(4)["run_id"].to_list()
    raw = [0.6999575, 0.3999999999999999, 0.875, 0.57]
    runs = result.runs.with_columns(
        pl.col("run_id").replace_strict(hot, raw, default=pl.col("score"), return_dtype=pl.Float64).alias("score"),
        pl.col("run_id").replace_strict(hot, ["review", "review", "escalate", "review"], default=pl.col("level"))
        .alias("level"),
    )
    alerts = {a["run_id"]: a["score"] for a in dataclasses.replace(result, runs=runs).alerts()}
    assert [alerts[r] for r in hot] == [0.6999, 0.3999, 0.875, 0.57]
    assert [_score_cell(x) for x in raw] == ["0.699", "0.399", "0.875", "0.57"]
    assert shown_score(1.0, 3) == 1.0 and _score_cell(1.0) == "1" and _score_cell(None) == "–"
    assert shown_score(0.7, 4) == 0.7 and shown_score(0.6999999999999998, 4) == 0.6999


def _chain_run(run_id: str, parent: str | None, minute: int) -> list[dict]:
    t0 = datetime(2026, 10, 1, 9, tzinfo=UTC)
    return [{"run_id": run_id, "step": s, "ts": t0 + timedelta(minutes=minute, seconds=s), "action": a,
             "agent": "planner", "parent_run_id": parent, "status": "ok", "cost_usd": 0.01}
            for s, a in enumerate(["llm", "search_web", "llm"], 1)]


def test_a_late_link_of_a_delegation_chain_flags_the_runs_audited_before(tmp_path: Path) -> None:
    """c0 <- c1 <- c2 <- c3 <- c4 with c3 delivered a night late: c4's depth 4 was never
    checked again, and the breach a full audit finds was lost for good."""
    chain = [("c0", None), ("c1", "c0"), ("c2", "c1"), ("c3", "c2"), ("c4", "c3")]
    rows = {rid: _chain_run(rid, p, i) for i, (rid, p) in enumerate(chain)}
    others = [r for i in range(40) for r in _chain_run(f"x{i:02d}", None, 10 + i)]
    day = tmp_path / "logs" / "date=2026-10-01"
    day.mkdir(parents=True)
    pl.DataFrame([r for rid in ("c0", "c1", "c2", "c4") for r in rows[rid]] + others).write_parquet(day / "a.parquet")
    first = audit(tmp_path / "logs", state=tmp_path / "state")
    assert first.violations.filter(pl.col("rule") == "delegation_depth").height == 0
    pl.DataFrame(rows["c3"]).write_parquet(day / "b.parquet")
    night = audit(tmp_path / "logs", state=tmp_path / "state")
    full = audit(tmp_path / "logs")

    def depth(res: AuditResult) -> list[tuple]:
        return res.violations.filter(pl.col("rule") == "delegation_depth").select("run_id", "detail").rows()

    assert depth(night) == depth(full) == [("c4", "delegation depth 4 > limit 3 (chain root c0)")]
    assert night.runs.filter(pl.col("run_id") == "c4")["level"].to_list() == ["review"]
    from driftwatch.state import AuditState

    with AuditState.open(state_dir=tmp_path / "state") as st:
        stored = st.con.execute("select run_id, level from runs where run_id = 'c4'").fetchall()
        breaches = st.con.execute("select count(*) from violations where rule = 'delegation_depth'").fetchall()
    assert stored == [("c4", "review")] and breaches == [(1,)]
    # a night after that changes nothing more: the breach is stored once, not again
    (day.parent / "date=2026-10-02").mkdir()
    pl.DataFrame(_chain_run("y0", None, 60 * 24)).write_parquet(day.parent / "date=2026-10-02" / "a.parquet")
    again = audit(tmp_path / "logs", state=tmp_path / "state")
    assert depth(again) == [] and again.runs["run_id"].to_list() == ["y0"]


def test_a_fixed_reference_older_than_the_loaded_history_is_read_from_the_state(tmp_path: Path) -> None:
    """A fixed --reference (the README's baseline that stays) made every night fail once its
    days were older than --history-days: 'reference holds no runs'."""
    fleet = synth.generate(days=12, runs_per_day=40, seed=5)
    fleet.write(tmp_path / "fleet")
    days = sorted((tmp_path / "fleet" / "events").iterdir())
    logs = tmp_path / "logs"
    logs.mkdir()
    ref = ("2026-10-01", "2026-10-04")
    for d in days:
        shutil.copytree(d, logs / d.name)
        night = audit(logs, state=tmp_path / "state", reference=ref, history_days=5)
    full = audit(logs, reference=ref)
    assert datetime.fromisoformat(night.stats["history_since"]) > datetime(2026, 10, 4, tzinfo=UTC)
    # the same reference runs and the same windows; the night's window holds the runs of the
    # history it loaded (since history_since), as documented for the fleet tables
    key = ["series", "window_start", "feature", "method"]
    mine, whole = (r.drift.sort(key) for r in (night, full))
    assert mine.height > 0 and mine.select(*key, "n_ref").equals(whole.select(*key, "n_ref"))
    assert (mine["n_cur"] <= whole["n_cur"]).all() and (mine["n_cur"] > 0).all()
    assert night.notes["drift_reference"] == "given"


def test_since_and_until_in_a_named_time_zone() -> None:
    """A ZoneInfo datetime was compared with the UTC column as is: 'reading the events failed'."""
    from zoneinfo import ZoneInfo

    ev = pl.concat([pl.DataFrame(_chain_run(f"r{i}", None, 60 * i)) for i in range(6)])
    berlin = ZoneInfo("Europe/Berlin")
    # 12:00 Berlin (CEST) is 10:00 UTC: runs r1.. start at 10:00 UTC and later
    got = audit(ev, since=datetime(2026, 10, 1, 12, tzinfo=berlin), until=datetime(2026, 10, 1, 14, tzinfo=berlin))
    assert got.runs["run_id"].to_list() == ["r1", "r2"]
    utc = audit(ev, since=datetime(2026, 10, 1, 10, tzinfo=UTC), until=datetime(2026, 10, 1, 12, tzinfo=UTC))
    assert got.runs.equals(utc.runs)


def test_a_failed_night_writes_nothing_to_the_state(tmp_path: Path) -> None:
    """An audited file touched (same bytes, new mtime) was remembered at once: a night that
    then failed on a corrupt new file had changed the state all the same."""
    import duckdb

    day = tmp_path / "logs" / "date=2026-10-01"
    day.mkdir(parents=True)
    pl.concat([pl.DataFrame(_chain_run(f"r{i}", None, 10 * i)) for i in range(30)]).write_parquet(day / "a.parquet")
    audit(tmp_path / "logs", state=tmp_path / "state")
    db = tmp_path / "state" / "audit.duckdb"

    def files() -> list[tuple]:
        with duckdb.connect(str(db), read_only=True) as con:
            return con.execute("select path, size, mtime_ns from files order by path").fetchall()

    before = files()
    os.utime(day / "a.parquet", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    bad = tmp_path / "logs" / "date=2026-10-02"
    bad.mkdir()
    (bad / "a.parquet").write_bytes((day / "a.parquet").read_bytes()[:300])
    with pytest.raises(InputError):
        audit(tmp_path / "logs", state=tmp_path / "state")
    assert files() == before
    (bad / "a.parquet").unlink()
    with pytest.raises(dw.NothingToAudit):
        audit(tmp_path / "logs", state=tmp_path / "state")
    assert files() != before and files()[0][2] == 1_700_000_000_000_000_000  # remembered on a night that ends well


def test_an_ancestor_leaving_the_loaded_history_does_not_undo_a_stored_breach(tmp_path: Path) -> None:
    """A chain r0 <- r1 <- ... one run a day, audited nightly with 4 days of history: r4's
    depth 4 was stored, then read as a shallower change once r0 left the history, and the
    breach was deleted (the late-link re-check of this release re-scored it as ok)."""
    from driftwatch.state import AuditState

    logs = tmp_path / "logs"
    for i in range(7):
        day = logs / f"date=2026-10-0{i + 1}"
        day.mkdir(parents=True)
        pl.DataFrame(_chain_run(f"r{i}", f"r{i - 1}" if i else None, 60 * 24 * i)).write_parquet(day / "a.parquet")
        night = audit(logs, state=tmp_path / "state", history_days=4)
        assert night.runs["run_id"].to_list() == [f"r{i}"]
    with AuditState.open(state_dir=tmp_path / "state") as st:
        stored = st.con.execute("select run_id, level from runs where level != 'ok' order by run_id").fetchall()
        breaches = st.con.execute("select run_id from violations where rule = 'delegation_depth' order by run_id")
        breaches = [r[0] for r in breaches.fetchall()]
    assert breaches == ["r4", "r5", "r6"] and [r[0] for r in stored] == ["r4", "r5", "r6"]


def test_alerts_quote_the_scores_and_costs_the_runs_table_holds(fleet: synth.Fleet, tmp_path: Path) -> None:
    # a noisy-or of 0.4 and 0.9 is 0.6399999999999999 in floating point: runs.parquet holds
    # 0.64 (12 significant digits), and the alert read 0.6399 and rounded money to 6 decimals
    from driftwatch._frames import cut_down

    policy = tmp_path / "allowed.toml"
    policy.write_text('[tools]\nallowed = ["search_web", "get_customer"]\n')
    res = audit(fleet.events, policy=policy)
    res.write(tmp_path / "out")
    runs = pl.read_parquet(tmp_path / "out" / "runs.parquet")
    alerts = pl.read_ndjson(tmp_path / "out" / "alerts.jsonl")
    both = alerts.join(runs.select("run_id", "level", pl.col("score").alias("kept"), pl.col("cost_usd").alias("cost")),
                       on="run_id")
    assert both.height == alerts.height == runs.filter(pl.col("level") != "ok").height > 0
    assert (both["level"] == both["level_right"]).all()
    assert both["score"].to_list() == cut_down(both["kept"].to_numpy(), 4).tolist()
    assert both["cost_usd"].to_list() == both["cost"].to_list()
    # and the frame in memory holds what the file holds
    assert res.runs.sort("run_id")["score"].to_list() == runs.sort("run_id")["score"].to_list()


def test_summary_says_how_to_read_the_worst_run_figure(result: AuditResult) -> None:
    fleet_row = result.costs.filter(pl.col("series") == "all").row(0, named=True)
    cost = result.summary()["cost"]
    assert cost["worst_run_method"] == fleet_row["worst_run_method"]
    assert isinstance(cost["worst_run_method"], str) and cost["worst_run_method"]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"chunk_rows": "x"}, "chunk_rows must be a positive int"),
        ({"chunk_rows": 0}, "chunk_rows must be a positive int"),
        ({"chunk_rows": 2.5}, "chunk_rows must be a positive int"),
        ({"chunks": 0}, "chunks must be None, 'auto' or a positive int"),
        ({"out": 5}, "out (--out) must be a path"),
        ({"state": 5}, "state (--state) must be a path"),
        ({"reference": 5}, "reference (--reference) must be a (start, end) pair"),
    ],
)
def test_options_are_checked_before_the_work(fleet: synth.Fleet, options: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidParameterError, match=re.escape(says)):
        audit(fleet.events.head(50), **options)


@pytest.mark.parametrize(("engine", "chunks"), [("polars", None), ("polars", 3), ("duckdb", None)])
def test_a_window_keeps_the_steps_without_a_time_of_the_runs_it_selects(
    tmp_path: Path, engine: str, chunks: int | None
) -> None:
    # a step with a number and no time is valid; a windowed audit dropped it (its ts fails any
    # comparison), and with it an unapproved destructive call
    t0 = datetime(2026, 10, 5, 12, tzinfo=UTC)
    rows = [
        {"run_id": f"r{r}", "step": s, "ts": None if (r, s) == (1, 3) else t0 + timedelta(hours=30 * r, seconds=s),
         "action": "delete_account" if (r, s) == (1, 3) else ("llm" if s % 2 else "search"),
         "agent": "a", "status": "ok", "cost_usd": 0.01}
        for r in range(3) for s in range(1, 6)
    ]
    path = tmp_path / "log.parquet"
    pl.DataFrame(rows, schema_overrides={"ts": pl.Datetime("us", "UTC")}).write_parquet(path)
    whole = audit(path, engine=engine)
    window = audit(path, engine=engine, chunks=chunks, since="2026-10-06", until="2026-10-08")
    assert window.runs["run_id"].to_list() == ["r1"]
    cols = ["run_id", "n_steps", "cost_usd", "level", "reasons"]
    assert window.runs.select(cols).rows() == whole.runs.filter(pl.col("run_id") == "r1").select(cols).rows()
    assert window.runs["n_steps"].to_list() == [5] and window.runs["level"].to_list() == ["escalate"]
    assert window.violations.select("run_id", "step", "rule").rows() == [("r1", 3, "unapproved_action")]
    assert window.summary()["rows_analysed"] == 5


def test_a_list_of_frames_is_refused_in_one_line(fleet: synth.Fleet) -> None:
    with pytest.raises(InvalidParameterError) as err:
        audit([fleet.events.head(50)])
    assert "\n" not in str(err.value) and len(str(err.value)) < 250
    assert "not a list of frames" in str(err.value)


def test_chunk_and_spill_files_beside_an_out_whose_path_holds_glob_characters(
    fleet: synth.Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the chunk files sit beside --out: a glob over 'nightly[prod]/...' matched nothing, and
    # the partitioned chunks' runs were lost without a word
    import importlib

    mod = importlib.import_module("driftwatch.audit")
    fleet.write(tmp_path / "logs")
    whole = audit(tmp_path / "logs" / "events", chunks=1)
    monkeypatch.setattr(mod, "IN_MEMORY_BYTES", 0)  # partitioned into chunk files
    monkeypatch.setattr(mod, "SPILL_BYTES", 1)  # and the chunks' tables spilled to files
    (tmp_path / "nightly[prod]").mkdir()
    chunked = audit(tmp_path / "logs" / "events", chunks=3, out=tmp_path / "nightly[prod]" / "out")
    assert chunked.runs.height == whole.runs.height
    assert_frame_equal(whole.runs, chunked.runs, check_exact=False, rel_tol=1e-9)
    assert sorted(p.name for p in (tmp_path / "nightly[prod]").iterdir()) == ["out"]


def test_more_chunks_than_rows_are_as_many_chunks_as_rows(fleet: synth.Fleet) -> None:
    # --chunks 2000 on a small log ran 2000 mostly empty chunks one after another (and
    # --chunks 99999999999999999999 never ended)
    small = fleet.events.head(60)
    res = audit(small, chunks=10**20)
    assert res.stats["chunks"] <= 60
    assert_frame_equal(res.runs, audit(small, chunks=1).runs)


def test_an_unreadable_reference_is_named_as_the_reference(fleet: synth.Fleet, tmp_path: Path) -> None:
    # the reference logs' errors named a file but not that it was the --reference
    bad = tmp_path / "ref.parquet"
    pl.DataFrame({"x": [1]}).write_parquet(bad)
    with pytest.raises(SchemaError, match=r"^reference: .*ref\.parquet: cannot tell the log format"):
        audit(fleet.events.head(200), reference=bad)
    with pytest.raises(NoInputError, match=r"^reference: "):
        audit(fleet.events.head(200), reference=tmp_path / "nothing_here" / "*.parquet")
