"""The driftwatch command: outputs, exit codes 0/1/2, one-line errors, incremental audits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import garble_pages  # (tests/ is on sys.path: no package)

from driftwatch.audit import ALERT_KEYS, CONTRACT_FILES

Cli = Callable[..., tuple[int, str, str]]

CONTRACT_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id", "agent", "n_steps", "cost_usd", "score", "level", "reasons"),
    "loops": ("run_id", "agent", "start_step", "end_step", "period", "repeats", "pattern", "kind",
              "wasted_steps", "wasted_tokens", "wasted_cost_usd"),
    "changepoints": ("series", "metric", "ts", "before", "after", "magnitude", "score"),
    "drift": ("series", "window_start", "window_end", "feature", "method", "statistic", "p_value", "drifted"),
    "violations": ("run_id", "step", "rule", "severity", "detail"),
    "rejected": ("source_file", "reason"),
    "costs": ("series",),
    "load": ("series", "metric", "knee", "below", "above", "ratio", "p_value"),
}


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def fleet_events(small_fleet_dir: Path) -> Path:
    return small_fleet_dir / "events"


@pytest.fixture(scope="module")
def messy_logs(small_fleet_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fleet's files plus one file with rows the reader rejects (null run_id, negative cost)."""
    root = tmp_path_factory.mktemp("messy")
    shutil.copytree(small_fleet_dir / "events", root / "events")
    first = sorted((root / "events").rglob("*.parquet"))[0]
    bad = pl.read_parquet(first).head(6).with_columns(
        pl.Series("run_id", [None, None, "zz-1", "zz-1", "zz-2", "zz-2"], dtype=pl.String),
        pl.Series("cost_usd", [0.1, 0.1, -5.0, 0.1, 0.1, 0.1]),
    )
    bad.write_parquet(root / "events" / "extra.parquet")
    return root / "events"


@pytest.fixture(scope="module")
def audited(messy_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str, str]:
    from io import StringIO

    from driftwatch.cli import main

    out = tmp_path_factory.mktemp("audit") / "report"
    so, se = StringIO(), StringIO()
    code = main(["audit", str(messy_logs), "--out", str(out), "--volume-per-day", "5000"], stdout=so, stderr=se)
    return out, code, so.getvalue(), se.getvalue()


def test_audit_writes_every_file_with_contract_columns(audited: tuple[Path, int, str, str]) -> None:
    out, code, stdout, stderr = audited
    assert code == 0, stderr
    assert stderr == ""  # not a terminal: no progress
    for name in CONTRACT_FILES:
        assert (out / name).is_file(), name
    for name, cols in CONTRACT_COLUMNS.items():
        schema = pl.read_parquet_schema(out / f"{name}.parquet")
        assert set(cols) <= set(schema), (name, list(schema))
    assert stdout.strip().splitlines()[-1] == f"report: {out.absolute() / 'report.html'}"


def test_summary_reconciles(audited: tuple[Path, int, str, str]) -> None:
    out = audited[0]
    s = json.loads((out / "summary.json").read_text())
    assert s["rows_in"] == s["rows_valid"] + s["rows_rejected"]
    assert s["rows_rejected"] >= 3
    assert pl.read_parquet(out / "rejected.parquet").height == s["rows_rejected"]
    runs = pl.read_parquet(out / "runs.parquet")
    assert s["runs"] == runs.height == sum(s["levels"].values())
    for lvl, n in s["levels"].items():
        assert runs.filter(pl.col("level") == lvl).height == n
    assert s["cost"]["volume_per_day"] == 5000 and s["cost"]["projected_daily_usd"] > 0
    assert set(s["versions"]) == {"driftwatch", "polars", "duckdb", "python"}
    alerts = [json.loads(x) for x in (out / "alerts.jsonl").read_text().splitlines()]
    assert len(alerts) == s["levels"]["review"] + s["levels"]["escalate"]
    assert all(tuple(a) == ALERT_KEYS for a in alerts)


def test_fail_on_exit_codes(fleet_events: Path, tmp_path: Path, run_cli: Cli) -> None:
    code, out, err = run_cli("audit", fleet_events, "--out", tmp_path / "r", "--fail-on", "escalate", "--quiet")
    assert code == 1 and out == "" and err == ""  # the demo fleet has unapproved deletes
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["levels"]["escalate"] > 0


def test_fail_on_not_reached_is_zero(tmp_path: Path, run_cli: Cli) -> None:
    from driftwatch import synth

    quiet = synth.generate(days=2, runs_per_day=25, seed=5, scenario=synth.Scenario.stable())
    quiet.events.filter(pl.col("action").str.contains("delete|refund|drop").not_()).write_parquet(tmp_path / "q.parquet")
    code, _, err = run_cli("audit", tmp_path / "q.parquet", "--out", tmp_path / "r", "--quiet",
                           "--policy", _policy(tmp_path, "[escalation]\nreview = 0.98\nescalate = 0.99\n"),
                           "--fail-on", "escalate")
    assert code == 0, err


def _policy(tmp: Path, text: str) -> Path:
    p = tmp / "policy.toml"
    p.write_text(text)
    return p


def test_bad_input_exits_2_with_one_line(
    fleet_events: Path, damaged_args_log: Path, tmp_path: Path, run_cli: Cli
) -> None:
    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt.parquet"
    good = sorted(fleet_events.rglob("*.parquet"))[0]
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated
    nocol = tmp_path / "nocol.parquet"
    pl.read_parquet(good).drop("action").write_parquet(nocol)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "corrupt": (["audit", corrupt, "--out", out], str(corrupt)),
        "damaged args pages": (["audit", damaged_args_log, "--out", out],
                               f"{damaged_args_log}, column 'args': reading the events failed"),
        "missing column": (["audit", nocol, "--out", out], "action"),
        "empty folder": (["audit", empty, "--out", out], str(empty)),
        "no such path": (["audit", tmp_path / "nope", "--out", out], "nope"),
        "unreadable policy": (["audit", good, "--out", out, "--policy", tmp_path / "missing.toml"], "missing.toml"),
        "bad policy": (["audit", good, "--out", out, "--policy", _policy(tmp_path, "[limits]\nmax_stepz = 3\n")],
                       "max_stepz"),
        "policy is a folder": (["audit", good, "--out", out, "--policy", empty], str(empty)),
        "bad reference": (["audit", good, "--out", out, "--reference", "last week"], "reference"),
        "bad since": (["audit", good, "--out", out, "--since", "soon"], "since"),
        "out is a file": (["audit", good, "--out", good], "folder"),
        "bad chunks": (["audit", good, "--out", out, "--chunks", "-1"], "chunks"),
    }
    for label, (argv, needle) in cases.items():
        code, stdout, err = run_cli(*argv)
        line = one_line_error(err)
        assert code == 2, (label, code, err)
        assert needle in line, (label, line)
        assert line.startswith("driftwatch audit: error:"), (label, line)
    assert not out.exists()  # nothing written by a failed audit


def test_usage_errors_exit_2(run_cli: Cli) -> None:
    for argv in ([], ["audit"], ["audit", "x"], ["audit", "x", "--out", "y", "--engine", "pandas"],
                 ["frobnicate"], ["audit", "x", "--out", "y", "--state", "s", "--db", "d"],
                 ["generate", "o", "--days", "0"], ["audit", "x", "--out", "y", "--history-max-runs", "0"]):
        code, _, err = run_cli(*argv)
        assert code == 2, argv
        line = one_line_error(err)
        assert "driftwatch" in line and ("--help" in line or "command is required" in line), line
    code, out, _ = run_cli("--version")
    assert code == 0


def test_console_script_and_exit_code_in_a_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "driftwatch"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from driftwatch.cli import main; sys.exit(main())"]
    proc = subprocess.run([*cmd, "audit", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no such file or folder; check the path" in one_line_error(proc.stderr)


class _ClosedAfter:
    """A stdout whose reader goes away after ``n`` writes (``| head``)."""

    def __init__(self, n: int) -> None:
        self.n, self.lines = n, []

    def write(self, text: str) -> int:
        if len(self.lines) >= self.n:
            raise BrokenPipeError(32, "Broken pipe")
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        if len(self.lines) >= self.n:
            raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False


def test_a_reader_that_goes_away_keeps_the_exit_code(fleet_events: Path, tmp_path: Path) -> None:
    """``driftwatch audit ... | head -1``: printing stops quietly, the results are written and the
    exit code is the audit's (here 1: --fail-on reached), not 2 with a misleading error."""
    import io

    from driftwatch.cli import main

    err = io.StringIO()
    code = main(["audit", str(fleet_events), "--out", str(tmp_path / "r"), "--fail-on", "escalate"],
                stdout=_ClosedAfter(1), stderr=err)  # type: ignore[arg-type]
    assert code == 1 and err.getvalue() == ""
    assert (tmp_path / "r" / "summary.json").exists()


def test_a_closed_stdout_in_a_subprocess(fleet_events: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "driftwatch"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from driftwatch.cli import main; sys.exit(main())"]
    proc = subprocess.Popen([*cmd, "loops", str(fleet_events)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads: every write of the child fails with EPIPE
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0
    assert stderr == ""


def test_identical_outputs_on_rerun(fleet_events: Path, tmp_path: Path, run_cli: Cli) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("audit", fleet_events, "--out", a, "--quiet")[0] == 0
    assert run_cli("audit", fleet_events, "--out", b, "--quiet")[0] == 0
    for p in sorted(a.glob("*.parquet")):
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    assert (a / "alerts.jsonl").read_text() == (b / "alerts.jsonl").read_text()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    sa.pop("timings"), sb.pop("timings")
    assert sa == sb


def test_incremental_audit_appends_only_new_runs(small_fleet_dir: Path, tmp_path: Path, run_cli: Cli) -> None:
    days = sorted((small_fleet_dir / "events").iterdir())
    logs = tmp_path / "logs"
    logs.mkdir()
    for d in days[:10]:
        shutil.copytree(d, logs / d.name)
    db = tmp_path / "audit.duckdb"
    code, out, err = run_cli("audit", logs, "--out", tmp_path / "r1", "--db", db, "--quiet")
    assert code == 0, err
    runs1 = pl.read_parquet(tmp_path / "r1" / "runs.parquet")

    # the next night: one more day arrives
    shutil.copytree(days[10], logs / days[10].name)
    code, out, err = run_cli("audit", logs, "--out", tmp_path / "r2", "--db", db)
    assert code == 0, err
    runs2 = pl.read_parquet(tmp_path / "r2" / "runs.parquet")
    new_ids = pl.read_parquet(days[10])["run_id"].unique()
    assert sorted(runs2["run_id"].to_list()) == sorted(new_ids.to_list())  # only the new runs
    assert not runs2["run_id"].is_in(runs1["run_id"].implode()).any()
    summary2 = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert summary2["incremental"] is True and summary2["skipped_files"] == 10

    counts = history_counts(db)
    assert counts["runs"] == counts["distinct_runs"] == runs1.height + runs2.height
    assert counts["audits"] == 2 and counts["files"] == 11

    # rerun with nothing new: exit 0, nothing appended, previous results untouched
    before = (tmp_path / "r2" / "runs.parquet").read_bytes()
    code, out, err = run_cli("audit", logs, "--out", tmp_path / "r2", "--db", db)
    assert code == 0 and "no new data" in out, (out, err)
    assert (tmp_path / "r2" / "runs.parquet").read_bytes() == before
    # the same data under new paths (a copy of the folder, or the folder moved): recognised by
    # its bytes, not audited (and alerted on) again; the new paths are remembered
    shutil.copytree(logs, tmp_path / "logs2")
    code, out, err = run_cli("audit", tmp_path / "logs2", "--out", tmp_path / "r3", "--db", db)
    assert code == 0 and "no new data" in out and "11 file(s) already audited" in out, (out, err)
    again = history_counts(db)
    for table in ("runs", "distinct_runs", "loops", "violations", "features", "changepoints", "drift"):
        assert again[table] == counts[table], table
    assert again["audits"] == 2 and again["files"] == 22
    # re-auditing the same runs from other bytes (a re-export) replaces them: still idempotent
    for f in sorted((tmp_path / "logs2").rglob("*.parquet")):
        pl.read_parquet(f).write_parquet(f, compression="lz4")
    assert run_cli("audit", tmp_path / "logs2", "--out", tmp_path / "r3", "--db", db, "--quiet")[0] == 0
    again = history_counts(db)
    for table in ("runs", "distinct_runs", "loops", "violations", "features", "changepoints", "drift"):
        assert again[table] == counts[table], table
    assert again["audits"] == 3 and again["files"] == 22


def _first_day_audited(fleet_dir: Path, tmp_path: Path, run_cli: Cli) -> tuple[list[Path], Path, Path]:
    """(the fleet's day folders, a logs folder holding the first day, a state that audited it)."""
    days = sorted((fleet_dir / "events").iterdir())
    logs = tmp_path / "logs"
    shutil.copytree(days[0], logs / days[0].name)
    db = tmp_path / "audit.duckdb"
    assert run_cli("audit", logs, "--out", tmp_path / "r", "--db", db, "--quiet")[0] == 0
    return days, logs, db


def test_incremental_audit_of_only_empty_new_files_is_nothing_to_do(small_fleet_dir: Path, tmp_path: Path,
                                                                   run_cli: Cli) -> None:
    """A quiet day's zero-row partition is not an error at night: exit 0, and it is not read again."""
    days, logs, db = _first_day_audited(small_fleet_dir, tmp_path, run_cli)
    (logs / "date=2099-01-01").mkdir()
    pl.read_parquet(next(days[0].glob("*.parquet"))).head(0).write_parquet(logs / "date=2099-01-01" / "part-0.parquet")
    code, out, err = run_cli("audit", logs, "--out", tmp_path / "r", "--db", db)
    assert code == 0 and "1 new file(s) hold no rows" in out, (out, err)
    code, out, err = run_cli("audit", logs, "--out", tmp_path / "r", "--db", db)
    assert code == 0 and "no new data since the last audit (2 file(s) already audited)" in out, (out, err)
    assert history_counts(db)["audits"] == 1
    # without the state an empty input stays an error
    code, out, err = run_cli("audit", logs / "date=2099-01-01", "--out", tmp_path / "r2")
    assert code == 2 and "no rows to read" in err


def test_incremental_audit_says_when_it_replaces_audited_runs(small_fleet_dir: Path, tmp_path: Path,
                                                             run_cli: Cli) -> None:
    """Another source reusing run ids (or a run split over nights) replaces stored runs: said, not silent."""
    days, logs, db = _first_day_audited(small_fleet_dir, tmp_path, run_cli)
    first = pl.read_parquet(next(days[0].glob("*.parquet")))
    reused = first.filter(pl.col("run_id") == first["run_id"][0]).with_columns(pl.col("ts").dt.offset_by("1d"))
    (logs / "team-b").mkdir()
    reused.write_parquet(logs / "team-b" / "part-0.parquet")
    code, out, err = run_cli("audit", logs, "--out", tmp_path / "r", "--db", db)
    assert code in (0, 1) and "note: 1 of these runs were audited before" in out, (out, err)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["history_replaced_runs"] == 1


def test_incremental_audit_refuses_a_time_window(small_fleet_dir: Path, tmp_path: Path, run_cli: Cli) -> None:
    """The state records whole files as audited: with --since/--until the rows of those files
    outside the window would never be audited by a later run."""
    db = tmp_path / "audit.duckdb"
    for window in (["--since", "2026-10-03"], ["--until", "2026-10-04"]):
        code, out, err = run_cli("audit", small_fleet_dir / "events", "--out", tmp_path / "r", "--db", db, *window)
        assert code == 2 and "cannot be combined with an incremental audit" in err, (out, err)
        assert "Traceback" not in err
    assert not (tmp_path / "r").exists()
    assert not db.exists()  # refused before the state database was made
    # the state inside the results folder: refused up front (it made X/audit.duckdb, then
    # refused X for holding a file driftwatch did not write)
    code, out, err = run_cli("audit", small_fleet_dir / "events", "--out", tmp_path / "x", "--state", tmp_path / "x")
    assert code == 2 and "cannot be inside the results folder" in err and not (tmp_path / "x").exists(), err
    # the spark engine keeps no state: refused before the state database was made (a probe found
    # st/audit.duckdb created, then the refusal)
    code, out, err = run_cli("audit", small_fleet_dir / "events", "--out", tmp_path / "r", "--state", tmp_path / "st",
                             "--engine", "spark")
    assert code == 2 and "not on spark" in err and not (tmp_path / "st").exists(), err
    code, out, err = run_cli("audit", small_fleet_dir / "events", "--out", tmp_path / "y",
                             "--db", tmp_path / "y" / "s.duckdb")
    assert code == 2 and "cannot be inside the results folder" in err and not (tmp_path / "y").exists(), err
    # nor inside another audit's results folder: its next audit refused the folder for holding
    # a file "driftwatch did not write"
    (tmp_path / "latest").mkdir()
    (tmp_path / "latest" / ".driftwatch").write_text("results")
    code, out, err = run_cli("audit", small_fleet_dir / "events", "--out", tmp_path / "other",
                             "--state", tmp_path / "latest" / "st")
    assert code == 2 and "cannot be inside a results folder" in err, err
    assert not (tmp_path / "latest" / "st").exists() and not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--every", "0m"], "every (--every) must be a positive duration"),
        (["--drift-every", "0d"], "drift_every (--drift-every) must be a positive duration"),
        (["--load-every", "1x"], "load_every (--load-every) must be a Polars duration string"),
        # said before the audit, not after it ran (the load test compares buckets within UTC days)
        (["--load-every", "13h"], "load_every (--load-every) must be at most half of control ('1d', "),
        (["--load-every", "1ns"], "load_every (--load-every) must be at least 1 microsecond"),
        (["--volume-per-day", "inf"], "argument --volume-per-day: expected a positive finite number, got 'inf'"),
        (["--volume-per-day", "nan"], "argument --volume-per-day: expected a positive finite number, got 'nan'"),
        (["--volume-per-day", "-5"], "argument --volume-per-day: expected a positive finite number, got '-5'"),
        (["--history-days", "inf"], "argument --history-days: expected a positive finite number, got 'inf'"),
        (["--by", "run_id"], "by (--by) cannot group by 'run_id'"),
        (["--by", "agent,series"], "by (--by) cannot group by 'series'"),
        (["--by", "agent,status"], "by (--by) cannot group by 'status': it is measured at every step"),
        (["--by", "agent,tenant"], "by (--by): ['tenant'] not column(s) of the run table"),
    ],
)
def test_audit_options_are_checked_with_their_names(small_fleet_dir: Path, tmp_path: Path, run_cli: Cli,
                                                    args: list[str], message: str) -> None:
    code, out, err = run_cli("audit", small_fleet_dir / "events", "--out", tmp_path / "r", *args)
    assert code == 2 and message in err and "unexpected error" not in err, err
    assert not (tmp_path / "r").exists()


def test_map_reads_columns_under_other_names(small_fleet_dir: Path, tmp_path: Path, run_cli: Cli) -> None:
    """A log whose columns are named in another case: the error says how to map them, --map does."""
    src = sorted((small_fleet_dir / "events").rglob("*.parquet"))[0]
    renamed = tmp_path / "Renamed.parquet"
    pl.read_parquet(src).rename({"action": "Action", "step": "Step"}).write_parquet(renamed)
    code, out, err = run_cli("validate", renamed)
    assert code == 2 and "CLI: --map Step=step --map Action=action" in err, err
    code, out, err = run_cli("audit", renamed, "--out", tmp_path / "r", "--map", "Step=step", "--map", "Action=action",
                             "--quiet")
    assert code in (0, 1), err
    code, direct, err = run_cli("validate", src)
    code2, mapped, err2 = run_cli("validate", renamed, "--map", "Action=action", "--map", "Step=step")
    assert code == code2 == 0 and direct.split(":", 1)[1] == mapped.split(":", 1)[1]
    assert run_cli("validate", renamed, "--map", "Action")[0] == 2
    # a source column whose name holds "=" (split at the last "=": canonical names hold none)
    odd = tmp_path / "odd.parquet"
    pl.read_parquet(src).rename({"action": "tool=name"}).write_parquet(odd)
    assert run_cli("validate", odd, "--map", "tool=name=action")[0] == 0
    assert run_cli("loops", src, "--top", "-1")[0] == 2  # printed every row but the last
    # the same column given twice: said so (the first mapping used to be dropped silently)
    code, out, err = run_cli("validate", renamed, "--map", "Action=action", "--map", "Action=agent")
    assert code == 2 and "--map gives column 'Action' twice" in err, err
    assert run_cli("validate", renamed, "--map", "Action=action", "--map", "Action=action", "--map", "Step=step")[0] == 0


def test_generate_checks_its_start(tmp_path: Path, run_cli: Cli) -> None:
    code, out, err = run_cli("generate", tmp_path / "g", "--start", "notadate")
    assert code == 2 and "start (--start) must be an ISO-8601 date" in err and "unexpected" not in err, err


def history_counts(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as con:
        out = {t: con.execute(f"select count(*) from {t}").fetchone()[0]
               for t in ("runs", "loops", "violations", "features", "changepoints", "drift", "audits", "files")}
        out["distinct_runs"] = con.execute("select count(distinct run_id) from runs").fetchone()[0]
    return out


def test_incremental_history_reaches_change_points(tmp_path: Path, run_cli: Cli) -> None:
    """A nightly audit of one day still finds a change-point that needs the previous weeks."""
    from driftwatch import synth

    sc = synth.Scenario.stable(changepoints=(synth.ChangeSpec("billing", 10, "steps_per_run", 2.0),))
    synth.write_fleet(tmp_path / "fleet", days=14, runs_per_day=60, seed=3, scenario=sc)
    days = sorted((tmp_path / "fleet" / "events").iterdir())
    logs = tmp_path / "logs"
    logs.mkdir()
    state = tmp_path / "state"
    for i, d in enumerate(days):
        shutil.copytree(d, logs / d.name)
        if i >= 11:  # the first audit sees days 0..11, then one audit per night
            code, _, err = run_cli("audit", logs, "--out", tmp_path / "r", "--state", state, "--quiet")
            assert code == 0, err
    cps = pl.read_parquet(tmp_path / "r" / "changepoints.parquet")
    # the history starts 90 days before the night's first run (the fleet is far below the run cap)
    since = json.loads((tmp_path / "r" / "summary.json").read_text())["history_since"]
    assert since.startswith(days_ts(13 - 90).date().isoformat() + "T"), since
    hit = cps.filter((pl.col("series") == "agent=billing") & pl.col("metric").str.starts_with("steps"))
    assert hit.height >= 1, cps
    assert abs((hit["ts"].min() - days_ts(10)).days) <= 2
    runs = pl.read_parquet(tmp_path / "r" / "runs.parquet")
    assert runs.height == pl.read_parquet(days[-1])["run_id"].n_unique()


def days_ts(day: int):  # noqa: ANN201 - tiny helper
    from datetime import UTC, datetime, timedelta

    return datetime(2026, 10, 1, tzinfo=UTC) + timedelta(days=day)


def test_validate_loops_drift_generate_report(fleet_events: Path, messy_logs: Path, tmp_path: Path,
                                             audited: tuple[Path, int, str, str], run_cli: Cli) -> None:
    code, out, err = run_cli("validate", messy_logs)
    assert code == 0 and "schema OK" in out and "rejected" in out, err
    assert run_cli("validate", messy_logs, "--strict")[0] == 1
    assert run_cli("validate", fleet_events, "--strict")[0] == 0

    code, out, err = run_cli("loops", fleet_events, "--out", tmp_path / "loops.parquet")
    assert code == 0 and "loops in" in out and "rejected" not in out, err
    for cmd in (["loops"], ["drift", "--reference", "7d"]):  # rows left out are said (they were silent)
        code, out, err = run_cli(*cmd, messy_logs)
        assert code == 0 and "rows were rejected and are not analysed; driftwatch validate" in out, (cmd, out, err)
    # --out naming a log being read (it was replaced by the loops), or a file inside its folder
    day = sorted(fleet_events.rglob("*.parquet"))[0]
    before = day.read_bytes()
    for cmd in (["loops"], ["drift", "--reference", "7d"]):
        for target in (day, fleet_events / "results.parquet"):
            code, out, err = run_cli(*cmd, fleet_events, "--out", target)
            assert code == 2 and "is one of the logs being read, or inside their folder" in err, err
    assert day.read_bytes() == before and not (fleet_events / "results.parquet").exists()
    assert pl.read_parquet(tmp_path / "loops.parquet").height > 0
    # an option the library refuses is named as typed, once
    for cmd, flag in ((["loops", "--max-period", "0"], "max_period (--max-period) must be"),
                      (["loops", "--min-repeats", "1"], "min_repeats (--min-repeats) must be"),
                      (["drift", "--reference", "7d", "--every", "0d"], "every (--every) must be"),
                      (["drift", "--reference", "7d", "--min-runs", "1"], "--min-runs: expected an integer of at least 2")):
        code, out, err = run_cli(cmd[0], day, *cmd[1:])
        assert code == 2 and flag in err and err.count("(--") <= 1 and err.count("\n") == 1, (cmd, err)
    # a SOURCE that happens to be called like a flag is named as the path it is
    code, out, err = run_cli("loops", "out", "--max-period", "3")
    assert code == 2 and "error: out: no such file" in err, err

    code, out, err = run_cli("drift", fleet_events, "--reference", "2026-10-01..2026-10-08",
                             "--out", tmp_path / "drift.parquet")
    assert code == 0 and "tests" in out, err
    assert pl.read_parquet(tmp_path / "drift.parquet").height > 0
    assert run_cli("drift", fleet_events, "--reference", "7d")[0] == 0
    # nothing testable: the command says why instead of a bare "0 tests"
    code, out, err = run_cli("drift", fleet_events, "--reference", "7d", "--min-runs", "100000")
    assert code == 0 and out.startswith("0 tests") and "no series had 100000 runs in the reference and 100000 in a window" in out and "--min-runs" in out, err
    loose, strict = (run_cli("drift", fleet_events, "--reference", "7d", "--every", "1d", "--min-runs", n)[1]
                     for n in ("2", "5"))
    assert int(loose.split()[0].replace(",", "")) > int(strict.split()[0].replace(",", "")) > 0

    code, out, err = run_cli("generate", tmp_path / "gen", "--days", "2", "--runs-per-day", "10", "--seed", "1")
    assert code == 0 and (tmp_path / "gen" / "events").is_dir(), err

    report_dir = audited[0]
    before = (report_dir / "report.html").read_text()
    (report_dir / "report.html").unlink()
    code, out, err = run_cli("report", report_dir)
    assert code == 0 and out.strip() == f"report: {report_dir.absolute() / 'report.html'}"
    assert (report_dir / "report.html").read_text() == before
    code, _, err = run_cli("report", tmp_path)
    assert code == 2 and "summary.json" in one_line_error(err)


class _Tty:
    """A text stream that says it is a terminal."""

    def __init__(self) -> None:
        import io

        self.buf = io.StringIO()

    def write(self, text: str) -> int:
        return self.buf.write(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_not_quiet(fleet_events: Path, tmp_path: Path) -> None:
    import io

    from driftwatch.cli import main

    day = sorted(fleet_events.iterdir())[0]
    err = _Tty()
    assert main(["audit", str(day), "--out", str(tmp_path / "a")], stdout=io.StringIO(), stderr=err) == 0
    lines = err.buf.getvalue().splitlines()
    assert any("read:" in x and "rows" in x for x in lines) and any("per-run stage" in x for x in lines)
    assert any("drift" in x for x in lines) and all(x.startswith("[") and "s]" in x for x in lines)
    quiet = _Tty()
    out = io.StringIO()
    assert main(["audit", str(day), "--out", str(tmp_path / "b"), "--quiet"], stdout=out, stderr=quiet) == 0
    assert quiet.buf.getvalue() == "" and out.getvalue() == ""


def test_duckdb_engine_gives_the_same_results(fleet_events: Path, tmp_path: Path, run_cli: Cli) -> None:
    days = sorted(fleet_events.iterdir())[:4]
    args = [*days, "--quiet"]
    assert run_cli("audit", *args, "--out", tmp_path / "p")[0] == 0
    assert run_cli("audit", *args, "--out", tmp_path / "d", "--engine", "duckdb")[0] == 0
    for name in ("runs", "loops", "violations", "changepoints", "costs"):
        assert (tmp_path / "p" / f"{name}.parquet").read_bytes() == (tmp_path / "d" / f"{name}.parquet").read_bytes(), name
    code, _, err = run_cli("audit", *args, "--out", tmp_path / "s", "--engine", "spark", "--db", tmp_path / "x.db")
    assert code == 2 and "spark" in one_line_error(err)


def test_reference_logs_by_glob(fleet_events: Path, tmp_path: Path, run_cli: Cli) -> None:
    days = sorted(fleet_events.iterdir())
    code, _, err = run_cli("audit", *days[7:], "--reference", str(fleet_events / "date=2026-10-0[1-7]"),
                           "--out", tmp_path / "r", "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["notes"]["drift_reference"] == "reference logs" and s["drift"]["rows"] > 0
    runs = pl.read_parquet(tmp_path / "r" / "runs.parquet")
    assert runs["first_ts"].min().day >= 8  # the reference runs are not audited


def test_outputs_named_badly_and_reference_globs(small_fleet_dir: Path, tmp_path: Path, run_cli: Cli) -> None:
    events = small_fleet_dir / "events"
    code, out, err = run_cli("loops", events, "--out", tmp_path)  # a folder where a file is expected
    assert code == 2 and "is a folder; expected a file name" in err, err
    code, out, err = run_cli("audit", events, "--out", "")
    assert code == 2 and "out (--out) is empty" in err, err
    days = sorted(p.name for p in events.iterdir())
    glob = str(events / f"{days[0][:-1]}*" / "*.parquet")  # the first days' files, as reference logs
    code, out, err = run_cli("drift", events, "--reference", glob)
    assert code == 0 and "tests" in out, err
    code, out, err = run_cli("drift", events, "--reference", str(tmp_path / "nothing-*.parquet"))
    assert code == 2 and "nothing-*.parquet" in err and "duration" not in err, err


def test_log_text_and_file_names_cannot_drive_the_terminal(tmp_path: Path, run_cli: Cli) -> None:
    """`loops --top` printed action names raw (an OSC set-title and a colour reached the
    terminal), and error lines echoed file names with ESC sequences raw on stderr."""
    from driftwatch import synth

    ev = synth.generate(days=2, runs_per_day=60, seed=3).events
    ev = ev.with_columns((pl.lit("\x1b]0;pwned\x07\x1b[31m\u202e\x85") + pl.col("action")).alias("action"))
    logs = tmp_path / "logs"
    logs.mkdir()
    ev.write_parquet(logs / "a.parquet")
    code, out, err = run_cli("loops", logs, "--top", "3")
    assert code == 0 and "loops in" in out, err
    assert r"\x1b]0;pwned\x07\x1b[31m\u202e\x85" in out  # shown, not obeyed
    assert not {c for c in out if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"}
    # a newline in log text does not split a table row
    ev.with_columns((pl.lit("two\nlines") + pl.col("action")).alias("action")).write_parquet(logs / "a.parquet")
    code, out, err = run_cli("loops", logs, "--top", "3")
    assert code == 0 and r"two\nlines" in out, err
    # file names in error lines
    bad = tmp_path / "x\x1b[31mRED\x1b]0;pwned\x07.parquet"
    bad.write_text("garbage")
    code, out, err = run_cli("loops", bad)
    assert code == 2 and r"x\x1b[31mRED\x1b]0;pwned\x07.parquet: " in one_line_error(err)
    assert "\x1b" not in err and "\x07" not in err
    code, out, err = run_cli("audit", tmp_path / "no\x1b[2Jpe", "--out", tmp_path / "r")
    assert code == 2 and r"no\x1b[2Jpe" in one_line_error(err) and "\x1b" not in err


def test_reference_paths_with_dots_and_missing_references(fleet_events: Path, tmp_path: Path, run_cli: Cli,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`--reference '../logs/date=*/*.parquet'` (a glob with '..') was read as START..END ("reference
    start: expected an ISO-8601 date ... got ''"); a mistyped reference file was blamed on the
    duration syntax; a reference covering all the data got a note blaming --min-runs."""
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    up = Path("..") / "logs"
    shutil.copytree(fleet_events, tmp_path / "logs")
    days = sorted(p.name for p in (tmp_path / "logs").iterdir())
    code, out, err = run_cli("drift", up, "--reference", str(up / f"{days[0][:-1]}*" / "*.parquet"))
    assert code == 0 and "tests" in out and "ISO-8601" not in err, err
    for cmd in (["drift", up], ["audit", up, "--out", tmp_path / "r"]):
        for missing in ("refs/ref.parquet", "../logs/nope", "ref.parquet"):
            code, out, err = run_cli(*cmd, "--reference", missing)
            line = one_line_error(err)
            assert code == 2 and f"--reference {missing}: no such file or folder" in line, (cmd, line)
            assert "duration string" not in line and "ISO-8601" not in line
    assert not (tmp_path / "r").exists()
    # a range and a duration are still read as such
    code, out, err = run_cli("drift", up, "--reference", "2026-10-01..2026-10-08")
    assert code == 0 and "tests" in out, err
    code, out, err = run_cli("drift", up, "--reference", "14days")
    assert code == 2 and "duration" in one_line_error(err)
    # nothing after the reference: the note says so, not --min-runs
    for ref in ("100d", "2026-10-01..2027-01-01"):
        code, out, err = run_cli("drift", up, "--reference", ref)
        assert code == 0 and out.startswith("0 tests") and "no run starts after the reference" in out, (ref, out)
        assert "--min-runs" not in out
    code, out, err = run_cli("drift", up, "--reference", "7d", "--min-runs", "100000")
    assert "no series had 100000 runs" in out and "longer windows (--every)" in out and "no run starts after" not in out


def test_messages_name_the_users_path_and_the_cause(tmp_path: Path, run_cli: Cli,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--out afile/sub said "afile: File exists"; report /nonexistent said "no summary.json here";
    generate --runs-per-day 100000000 ran out of memory and was told "check the path and permissions"."""
    from driftwatch import synth

    afile = tmp_path / "afile"
    afile.write_text("hi")
    log = tmp_path / "log.parquet"
    synth.generate(days=1, runs_per_day=10, seed=1).events.write_parquet(log)
    code, out, err = run_cli("audit", log, "--out", afile / "sub", "--quiet")
    assert code == 2 and f"{afile} is a file, not a folder" in one_line_error(err), err
    code, out, err = run_cli("loops", log, "--out", tmp_path / "missing" / "x.parquet")
    line = one_line_error(err)
    assert code == 2 and f"the folder {tmp_path / 'missing'} does not exist" in line and ".tmp-" not in line, line
    code, out, err = run_cli("report", tmp_path / "nope")
    assert code == 2 and "nope: no such folder" in one_line_error(err), err
    code, out, err = run_cli("report", afile)
    assert code == 2 and "afile: not a folder" in one_line_error(err), err
    code, out, err = run_cli("generate", tmp_path / "g", "--runs-per-day", "100000000")
    assert code == 2 and "at most 1,000,000" in one_line_error(err) and not (tmp_path / "g").exists(), err

    def oom(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(synth, "write_fleet", oom)
    code, out, err = run_cli("generate", tmp_path / "g", "--runs-per-day", "1000")
    line = one_line_error(err)
    assert code == 2 and "out of memory" in line and "--runs-per-day" in line and "permissions" not in line, line


def test_drift_names_series_it_could_not_compare_and_the_report_marks_them(tmp_path: Path, run_cli) -> None:
    import driftwatch as dw
    from driftwatch import synth
    from driftwatch.report import render_report

    ev = synth.generate(days=28, runs_per_day=60, seed=4, scenario=synth.Scenario.stable()).events
    late = pl.col("ts") >= pl.datetime(2026, 10, 15, time_zone="UTC")
    ev = ev.with_columns(pl.when(late & (pl.col("agent") == "support")).then(pl.lit("triage\x1b[2J"))
                         .otherwise(pl.col("agent")).alias("agent"))
    (tmp_path / "logs").mkdir()
    ev.write_parquet(tmp_path / "logs" / "a.parquet")
    code, out, _ = run_cli("drift", tmp_path / "logs", "--reference", "14d")
    assert code == 0
    assert "not compared (no reference runs): agent=triage\\x1b[2J" in out
    tests = int(out.split(" tests,")[0].replace(",", ""))
    rows = dw.detect_drift(ev, reference="14d")
    assert tests == rows.filter(pl.col("feature") != "no_reference").height > 0
    res = dw.audit(ev, reference="2026-10-01..2026-10-15")
    page = render_report(res)
    assert '<td class="cell na" title="agent=triage' in page and ">new</td>" in page
    tested = res.drift.filter(pl.col("feature") != "no_reference").height
    assert tested < res.drift.height and f"of {tested:,} tests)</h3>" in page
    assert res.summary()["drift"]["tests"] == tested and res.summary()["drift"]["rows"] == res.drift.height
    code, out, _ = run_cli("drift", tmp_path / "logs", "--reference", "14d", "--all")
    assert "  new agent=triage" in out and "  ok  agent=triage" not in out


def test_numpy_floating_point_notes_do_not_reach_stderr(tmp_path: Path) -> None:
    """Two steps of $1e308 summed to inf: numpy's 'overflow encountered' / 'invalid value
    encountered' warnings added lines to stderr. The reader now rejects such costs
    (bad_value:cost_usd, over MAX_STEP_COST_USD): the run is flagged for its rejected steps, and
    stderr stays clean."""
    from driftwatch import synth

    ev = synth.generate(days=2, runs_per_day=60, seed=3).events
    first = ev["run_id"][0]
    ev = ev.with_columns(pl.when((pl.col("run_id") == first) & (pl.col("step") <= 2)).then(1e308)
                         .otherwise(pl.col("cost_usd")).alias("cost_usd"))
    (tmp_path / "logs").mkdir()
    ev.write_parquet(tmp_path / "logs" / "a.parquet")
    done = subprocess.run([sys.executable, "-c", "import sys; from driftwatch.cli import main; sys.exit(main())",
                           "audit", str(tmp_path / "logs"), "--out", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1) and done.stderr == "", done.stderr
    run = pl.read_parquet(tmp_path / "out" / "runs.parquet").filter(pl.col("run_id") == first).row(0, named=True)
    assert run["level"] != "ok" and not any("inf" in r for r in run["reasons"])
    rejected = pl.read_parquet(tmp_path / "out" / "rejected.parquet")
    assert rejected["reason"].to_list() == ["bad_value:cost_usd"] * 2


def test_validate_strict_passes_span_exports_whose_only_rejections_are_non_steps(run_cli, tmp_path: Path) -> None:
    """Every OTel / OpenInference export has root agent spans (not_a_step): --strict failed on
    every one of them, the shipped samples included, which made it useless in CI for spans."""
    root = Path(__file__).resolve().parents[1] / "sample_logs"
    for fmt in ("otel", "openinference"):
        code, out, _ = run_cli("validate", root / fmt, "--strict")
        assert "not_a_step" in out and code == 0, (fmt, out)
    spans = pl.read_parquet(next((root / "otel").rglob("*.parquet")))
    bad = spans.with_columns(pl.lit("not a time").alias(next(c for c in spans.columns if "start" in c)))
    bad.head(5).write_parquet(tmp_path / "bad.parquet")
    code, out, _ = run_cli("validate", tmp_path / "bad.parquet", "--strict")
    assert code == 1, out


@pytest.mark.parametrize("flag", ["--state", "--db"])
def test_an_empty_state_option_is_refused(fleet_events: Path, tmp_path: Path, run_cli: Cli, flag: str) -> None:
    """`--state "$STATE"` with the variable unset ran a plain audit, exit 0, every night
    re-alerting everything."""
    code, out, err = run_cli("audit", fleet_events, "--out", tmp_path / "out", flag, "", "--quiet")
    assert code == 2, err
    assert f"{flag} is empty" in one_line_error(err)
    assert not (tmp_path / "out").exists()


def _damaged(path: Path, column: str | None) -> Path:
    """A log whose ``column`` pages are garbled (the footer intact), as a bad disk leaves it."""
    from datetime import UTC, datetime, timedelta

    n = 20_000
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    pl.DataFrame({"run_id": [f"r{i // 10:05d}" for i in range(n)], "step": [i % 10 + 1 for i in range(n)],
                  "ts": [t0 + timedelta(seconds=9 * i) for i in range(n)], "action": ["search"] * n,
                  "version": [f"v{i % 7}" for i in range(n)]}).write_parquet(path, compression="zstd")
    if column is not None:
        garble_pages(path, column)
    return path


def test_a_damaged_page_in_an_unchecked_column_is_named_by_validate_loops_and_drift(
    damaged_args_log: Path, tmp_path: Path, run_cli: Cli
) -> None:
    """The reader's checking pass skips args, version, ...: validate said "schema OK" on a file
    the audit cannot read, and loops / drift failed with "unexpected error: ComputeError"
    naming no file. All three now name the file and the column, exit 2."""
    for cmd in (["validate"], ["validate", "--engine", "duckdb"], ["loops"]):
        code, out, err = run_cli(*cmd, damaged_args_log)
        line = one_line_error(err)
        assert code == 2 and "schema OK" not in out, (cmd, out, err)
        assert line.startswith(f"driftwatch {cmd[0]}: error: {damaged_args_log}, column 'args': reading the events "
                               "failed: "), (cmd, line)
    version = _damaged(tmp_path / "version.parquet", "version")
    for ref in ("1d", version):  # the damaged file as the logs, then as the reference logs
        logs = version if ref == "1d" else _damaged(tmp_path / "ok.parquet", None)
        code, out, err = run_cli("drift", logs, "--reference", ref)
        assert code == 2 and f"{version}, column 'version': reading the events failed: " in one_line_error(err), err


def test_validate_lists_every_reason_and_counts_the_files_it_leaves_out(tmp_path: Path, run_cli: Cli) -> None:
    """validate printed the first 20 (reason, file) lines: with 22 files of bad_status rows the
    one negative_tokens row was never mentioned, and nothing said lines were left out."""
    from driftwatch.cli import FILES_PER_REASON

    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(22):
        pl.DataFrame({"run_id": [f"r{i}"] * 2, "step": [1, 2], "action": ["llm", "search"],
                      "status": ["ok", "??"]}).write_parquet(logs / f"a{i:02d}.parquet")
    pl.DataFrame({"run_id": ["z", "z"], "step": [1, 2], "action": ["llm", "search"],
                  "input_tokens": [10, -5]}).write_parquet(logs / "z.parquet")
    code, out, err = run_cli("validate", logs)
    assert code == 0, err
    lines = out.splitlines()
    assert "23 rejected; schema OK" in lines[0]
    assert lines[1] == "  rejected 22 row(s): bad_status in 22 files"
    assert sum(" row(s) in " in x for x in lines) == FILES_PER_REASON
    assert f"    … and {22 - FILES_PER_REASON} more files ({22 - FILES_PER_REASON} rows)" in lines
    assert lines[-1] == f"  rejected 1 row(s): negative_tokens in {logs / 'z.parquet'}"


def test_a_closed_stderr_keeps_the_exit_code(tmp_path: Path) -> None:
    """`driftwatch validate /nonexistent 2>&1 | true` exited 1: the error line to the closed
    stderr raised BrokenPipeError. Every exit path keeps its code (0, 1, 2)."""
    import io
    import os

    from driftwatch.cli import main

    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"run_id": ["a", "a"], "step": [1, 2], "action": ["x", "y"], "status": ["ok", "??"]}).write_parquet(bad)
    for argv, expected in ((["validate", str(tmp_path / "nope")], 2), (["frobnicate"], 2),
                           (["validate", str(bad), "--strict"], 1), (["validate", str(bad)], 0)):
        assert main(argv, stdout=io.StringIO(), stderr=_ClosedAfter(0)) == expected, argv  # type: ignore[arg-type]
        assert main(argv, stdout=_ClosedAfter(0), stderr=_ClosedAfter(0)) == expected, argv  # type: ignore[arg-type]
    exe = Path(sys.executable).parent / "driftwatch"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from driftwatch.cli import main; sys.exit(main())"]
    for argv, expected in ((["validate", str(tmp_path / "nope")], 2), (["--help"], 0), (["validate", str(bad), "--strict"], 1)):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line: every write fails with EPIPE
        try:
            proc = subprocess.run([*cmd, *argv], stdout=write, stderr=write, timeout=120)
        finally:
            os.close(write)
        assert proc.returncode == expected, argv
    # descriptors closed before the start (`>&-`, `2>&-`): Python's sys.stdout / sys.stderr are None
    # (a traceback from flushing None, and exit 1, before)
    import shlex
    line = " ".join(shlex.quote(c) for c in cmd)
    for argv, redirect, expected in ((["validate", str(bad)], ">&-", 0), (["validate", str(tmp_path / "nope")], "2>&-", 2),
                                     (["--help"], ">&- 2>&-", 0), (["validate", str(bad), "--strict"], ">&- 2>&-", 1)):
        proc = subprocess.run(["bash", "-c", f"{line} {' '.join(map(shlex.quote, argv))} {redirect}"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == expected and "Traceback" not in proc.stderr + proc.stdout, (argv, redirect, proc)


def test_file_names_are_shown_exactly_in_error_lines(tmp_path: Path, run_cli: Cli) -> None:
    """Whitespace in file names was collapsed ('part  1.parquet' shown as 'part 1.parquet', a tab
    or a newline as a space): the line stays one line, the name stays exact."""
    for name, shown in (("part  1.parquet", "part  1.parquet"), ("b\tc.parquet", r"b\tc.parquet"),
                        ("d\ne.parquet", r"d\ne.parquet")):
        path = tmp_path / name
        path.write_text("garbage")
        code, _, err = run_cli("validate", path)
        assert code == 2 and f"{tmp_path}/{shown}: not a Parquet file" in one_line_error(err), err


def test_drift_with_reference_logs_of_the_same_period(fleet_events: Path, tmp_path: Path, run_cli: Cli) -> None:
    """`drift canary --reference baseline/` with both cohorts over the same days printed '0 tests'
    and blamed --min-runs (the canary's runs were cut at the baseline's last timestamp); the same
    logs given as both, or logs that hold the reference files, were not told apart from too few runs,
    and audit wrote an empty drift table with no note."""
    events = pl.read_parquet(fleet_events / "**" / "*.parquet", hive_partitioning=False)
    canary = events.with_columns(
        ("c-" + pl.col("run_id")).alias("run_id"),
        pl.when(pl.col("parent_run_id").is_not_null()).then("c-" + pl.col("parent_run_id")).alias("parent_run_id"),
    )
    canary.write_parquet(tmp_path / "canary.parquet")
    code, out, err = run_cli("drift", tmp_path / "canary.parquet", "--reference", fleet_events, "--all")
    assert code == 0 and not out.startswith("0 tests") and "note:" not in out, (out, err)
    assert " 2026-10-01..2026-10-08 " in out  # windows from UTC midnight of the first canary run
    # every run also in the reference logs: said, not blamed on --min-runs
    code, out, err = run_cli("drift", fleet_events, "--reference", fleet_events)
    assert code == 0 and out.startswith("0 tests"), (out, err)
    assert "is also in the reference" in out and "--min-runs" not in out
    code, out, err = run_cli("audit", fleet_events, "--reference", fleet_events, "--out", tmp_path / "r", "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["drift"]["rows"] == 0 and s["notes"]["drift_reference"].startswith("reference logs; nothing compared: ")
    assert "is also in the reference" in s["notes"]["drift_reference"]
    assert "nothing compared: every run" in (tmp_path / "r" / "report.html").read_text()


def test_drift_prints_window_times_when_not_on_midnight(fleet_events: Path, run_cli: Cli) -> None:
    """Windows were printed as dates only: --every 12h gave '2026-10-08..2026-10-08'."""
    import re

    code, out, err = run_cli("drift", fleet_events, "--reference", "7d", "--every", "12h", "--min-runs", "3", "--all")
    assert code == 0 and not out.startswith("0 tests"), (out, err)
    windows = {line.split()[2] for line in out.splitlines()[1:] if line[:5] in ("DRIFT", "  ok ", "  new")}
    assert windows and all(re.fullmatch(r"2026-10-\d\dT(00|12):00Z\.\.2026-10-\d\dT(00|12):00Z", w) for w in windows)
    assert "2026-10-08T00:00Z..2026-10-08T12:00Z" in windows and "2026-10-08T12:00Z..2026-10-09T00:00Z" in windows
    code, out, err = run_cli("drift", fleet_events, "--reference", "7d", "--every", "1d", "--min-runs", "3", "--all")
    windows = {line.split()[2] for line in out.splitlines()[1:] if line[:5] in ("DRIFT", "  ok ", "  new")}
    assert code == 0 and "2026-10-08..2026-10-09" in windows, (out, err)
    assert all(re.fullmatch(r"2026-10-\d\d\.\.2026-10-\d\d", w) for w in windows)


def test_a_full_disk_is_said_as_such(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_cli: Cli) -> None:
    """A full disk was reported with "check the path and permissions"."""
    import errno

    from driftwatch import cli

    def full(args: object, out: object, err: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "R" / "report.html"))

    monkeypatch.setitem(cli._COMMANDS, "validate", full)
    code, _, err = run_cli("validate", tmp_path)
    assert code == 2 and f"{tmp_path / 'R' / 'report.html'}: No space left on device; the disk is full" in err, err
    assert "permissions" not in err


def test_drift_reference_auto_that_leaves_no_window_says_why(fleet_events: Path, tmp_path: Path,
                                                             run_cli: Cli) -> None:
    """`--reference auto` covering every run (at least one --every window): the note of an
    untestable reference, exit 0, as with a duration; it failed "'auto' is not a duration", exit 2,
    after printing "0 tests" and writing --out."""
    code, out, err = run_cli("drift", fleet_events, "--reference", "auto", "--every", "14d",
                             "--out", tmp_path / "drift.parquet")
    assert code == 0 and err == "", err
    assert out.startswith("0 tests, 0 drifted")
    assert "note: no window could be tested: no run starts after the reference" in out
    assert "--reference auto is at least one window (--every 14d)" in out
    assert (tmp_path / "drift.parquet").is_file()
    code, out, err = run_cli("drift", fleet_events, "--reference", "auto", "--every", "2d")  # windows to test
    assert code == 0 and not out.startswith("0 tests"), (out, err)


@pytest.mark.parametrize("cmd", [["loops"], ["drift", "--reference", "7d"]])
@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_out_file_is_refused(fleet_events: Path, run_cli: Cli, cmd: list[str], value: str) -> None:
    """`--out "$OUT"` with the variable unset wrote nothing, silently, exit 0 (a blank one was
    refused without naming --out)."""
    code, out, err = run_cli(cmd[0], fleet_events, *cmd[1:], "--out", value)
    assert code == 2 and out == "", out
    example = "loops.parquet" if cmd[0] == "loops" else "drift.parquet"
    assert f"error: --out is empty; expected a Parquet file name such as {example}" in one_line_error(err)


def test_an_out_file_a_source_glob_reads_is_refused(small_fleet_dir: Path, tmp_path: Path, run_cli: Cli) -> None:
    """With a glob for SOURCE, --out among the files it reads was written, and every later read of
    the logs failed on it (a folder SOURCE refused it)."""
    events = tmp_path / "events"
    shutil.copytree(small_fleet_dir / "events", events)
    days = sorted(p.name for p in events.iterdir())  # date=2026-10-01 ...
    every = str(events / "*" / "*.parquet")
    first3 = str(events / f"{days[0][:-1]}[1-3]" / "*.parquet")
    refused = [
        (every, events / days[0] / "loops.parquet", "the SOURCE pattern"),  # the pattern matches it
        (str(events / "*"), events / days[0] / "loops.parquet", "the SOURCE pattern"),  # in a folder it matches
        (str(tmp_path / "**" / "*.parquet"), tmp_path / "out.parquet", "the SOURCE pattern"),
        (first3, events / days[4] / "loops.parquet", "the folder of the log folders"),  # another partition
        (every, events / "loops.PARQUET", "the folder of the log folders"),  # where `audit events/` reads
    ]
    for cmd in (["loops"], ["drift", "--reference", "7d"]):
        for pattern, target, said in refused:
            code, out, err = run_cli(cmd[0], pattern, *cmd[1:], "--out", target)
            assert code == 2 and said in one_line_error(err) and f"--out {target}" in err, (cmd, pattern, err)
            assert not target.exists()
    # what the logs' reads do not take is written: outside, or not a Parquet name beside them
    for target in (tmp_path / "loops.parquet", events / days[4] / "loops.txt"):
        code, out, err = run_cli("loops", first3, "--out", target)
        assert code == 0 and target.is_file(), err
    assert run_cli("loops", every)[0] == 0 and run_cli("loops", events)[0] == 0


def test_a_top_beyond_int64_prints_every_loop(fleet_events: Path, run_cli: Cli) -> None:
    """`loops --top 99999999999999999999` printed the count, then "OverflowError", exit 2."""
    code, out, err = run_cli("loops", fleet_events, "--top", "99999999999999999999")
    assert code == 0 and err == "", err
    n = int(out.split()[0].replace(",", ""))
    assert n > 0 and out == run_cli("loops", fleet_events, "--top", str(n))[1]  # every loop a row


def test_library_messages_name_the_cli_options(small_fleet_dir: Path, tmp_path: Path, run_cli: Cli) -> None:
    """A library's parameter said as the option typed: --map (not column_map), --by (not "events:"),
    and reference logs that are no logs named as the --reference."""
    events = small_fleet_dir / "events"
    for cmd in (["loops"], ["validate"], ["drift", "--reference", "7d"], ["audit", "--out", tmp_path / "o"]):
        code, out, err = run_cli(cmd[0], events, *cmd[1:], "--map", "a=b")
        assert code == 2 and "error: column_map (--map) maps 'a' to 'b'" in one_line_error(err), (cmd, err)
        code, out, err = run_cli(cmd[0], events, *cmd[1:], "--map", "nosuch=action")
        assert code == 2 and "error: column_map (--map) source column(s) ['nosuch']" in one_line_error(err), err
    code, out, err = run_cli("drift", events, "--reference", "7d", "--by", "nosuch")
    assert code == 2 and "error: by (--by): column(s) ['nosuch'] not in the events; found" in one_line_error(err)
    truth = small_fleet_dir / "truth"  # Parquet files, but no logs
    for ref in (truth, truth / "runs.parquet", f"{truth}/*.parquet"):
        code, out, err = run_cli("drift", events, "--reference", ref)
        line = one_line_error(err)
        assert code == 2 and f"error: --reference {ref}: " in line and "missing required column(s)" in line, err
    code, out, err = run_cli("drift", events, "--reference", tmp_path / "nothing-*.parquet")
    assert code == 2 and f"error: --reference {tmp_path / 'nothing-*.parquet'}: the pattern matches" in err, err


def test_named_flag_reads_the_reference_by_message_and_leaves_paths() -> None:
    from driftwatch.cli import _build_parser, _named_flag

    p = _build_parser()
    text = "reference: by column(s) ['tenant'] not in the reference events; found ['run_id']"
    assert _named_flag(text, p, "drift") == ("by (--by): column(s) ['tenant'] not in the reference logs "
                                            "(--reference); found ['run_id']")
    text = "column_map: missing required column(s) ['action']"  # a SOURCE file named column_map
    assert _named_flag(text, p, "loops", paths={"column_map"}) == text
    assert _named_flag(text, p, "loops").startswith("column_map (--map): ")
