"""Audit history in DuckDB: idempotent upserts, file planning, history reads, safe SQL."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from driftwatch.errors import InputError, InvalidParameterError
from driftwatch.state import DB_NAME, TABLE_KEYS, AuditState, SourceFile, file_hash

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def features(ids: list[str], day: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "run_id": ids,
            "agent": ["a"] * len(ids),
            "first_ts": [T0 + timedelta(days=day, minutes=i) for i in range(len(ids))],
            "n_steps": list(range(1, len(ids) + 1)),
        }
    )


@pytest.fixture
def state(tmp_path: Path) -> AuditState:
    st = AuditState(tmp_path / "s" / DB_NAME)
    yield st
    st.close()


def test_upsert_replaces_rows_of_the_same_runs(state: AuditState) -> None:
    state.upsert("runs", pl.DataFrame({"run_id": ["a", "b"], "score": [0.1, 0.9]}))
    state.upsert("runs", pl.DataFrame({"run_id": ["b", "c"], "score": [0.5, 0.2]}))
    assert state.table("runs").sort("run_id").rows() == [("a", 0.1), ("b", 0.5), ("c", 0.2)]


def test_per_run_table_loses_rows_a_run_no_longer_has(state: AuditState) -> None:
    """A run re-audited with fewer loops must not keep its old loop rows."""
    state.upsert("loops", pl.DataFrame({"run_id": ["a", "a", "b"], "start_step": [1, 9, 2]}))
    state.upsert("loops", pl.DataFrame({"run_id": ["a"], "start_step": [1]}))
    assert state.table("loops").sort("run_id", "start_step").rows() == [("a", 1), ("b", 2)]
    # and a run that now has none: delete by the audited run ids, insert nothing
    state.upsert("loops", pl.DataFrame(schema={"run_id": pl.String, "start_step": pl.Int64}),
                 run_ids=pl.Series(["b"]))
    assert state.table("loops").rows() == [("a", 1)]


def test_fleet_tables_upsert_by_natural_key(state: AuditState) -> None:
    cp = pl.DataFrame({"series": ["agent=x"], "metric": ["error_rate"], "ts": [T0], "after": [0.2]})
    state.upsert("changepoints", cp)
    state.upsert("changepoints", cp.with_columns(pl.lit(0.3).alias("after")))
    state.upsert("changepoints", cp.with_columns(pl.lit("cost_per_run").alias("metric")))
    got = state.table("changepoints").sort("metric")
    assert got.select("metric", "after").rows() == [("cost_per_run", 0.2), ("error_rate", 0.3)]
    assert got["ts"].dtype == pl.Datetime("us", "UTC")


def test_record_twice_is_idempotent_and_atomic(state: AuditState, tmp_path: Path) -> None:
    f = tmp_path / "part.parquet"
    f.write_bytes(b"data")
    feats = features(["r1", "r2", "r3"])
    kw = dict(
        audit={"audit_id": "A1", "watermark": T0 + timedelta(hours=1), "runs": 3},
        per_run={"features": feats, "runs": feats.select("run_id", pl.lit(0.5).alias("score"))},
        fleet={"drift": pl.DataFrame({"series": ["s"], "window_start": [T0], "window_end": [T0],
                                      "feature": ["tool_mix"], "method": ["chi2"], "p_value": [0.5]})},
        run_ids=feats["run_id"],
        files=[SourceFile.stat(f)],
    )
    state.record(**kw)
    first = state.counts()
    state.record(**kw)
    assert state.counts() == first == {"audits": 1, "drift": 1, "features": 3, "files": 1, "runs": 3}
    assert state.watermark() == T0 + timedelta(hours=1)
    assert state.audited_files()["hash"].to_list() == [file_hash(f)]

    # a failure inside the transaction leaves nothing behind
    bad = dict(kw, per_run={"features": features(["r9"]), "runs": pl.DataFrame({"run_id": ["r9"], "bad col": [1]})},
               run_ids=pl.Series(["r9"]))
    with pytest.raises(InvalidParameterError, match="bad col"):
        state.record(**bad)
    assert state.counts() == first
    assert "r9" not in state.table("features")["run_id"].to_list()


def test_new_columns_are_added(state: AuditState) -> None:
    state.upsert("features", features(["a"]))
    state.upsert("features", features(["b"]).with_columns(pl.lit(2.5).alias("extra")))
    got = state.table("features").sort("run_id")
    assert got["extra"].to_list() == [None, 2.5]


def test_values_are_parameters_not_sql(state: AuditState) -> None:
    evil = "x'); DROP TABLE runs; --"
    state.upsert("runs", pl.DataFrame({"run_id": ["ok", evil], "score": [0.1, 0.2]}))
    state.upsert("runs", pl.DataFrame({"run_id": [evil], "score": [0.3]}))
    assert dict(state.table("runs").rows()) == {"ok": 0.1, evil: 0.3}
    assert state.table("runs", where_run_ids=[evil]).rows() == [(evil, 0.3)]


@pytest.mark.parametrize("name", ["runs; DROP TABLE x", "sqlite_master", "Runs"])
def test_unknown_table_names_are_refused(state: AuditState, name: str) -> None:
    with pytest.raises(InvalidParameterError, match="unknown history table"):
        state.upsert(name, pl.DataFrame({"run_id": ["a"]}))


def test_odd_column_names_are_refused(state: AuditState) -> None:
    with pytest.raises(InvalidParameterError, match="cannot be stored"):
        state.upsert("runs", pl.DataFrame({"run_id": ["a"], 'x" INT); --': [1]}))


def test_plan_new_unchanged_touched_and_changed_files(state: AuditState, tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in ("a.parquet", "b.parquet", "c.parquet"))
    a.write_bytes(b"aaaa")
    b.write_bytes(b"bbbb")
    todo, done = state.plan([a, b])
    assert [Path(f.path).name for f in todo] == ["a.parquet", "b.parquet"] and done == []
    state.record(audit={"audit_id": "1"}, per_run={}, fleet={}, run_ids=pl.Series([], dtype=pl.String), files=todo)

    c.write_bytes(b"cccc")
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 5_000_000_000))  # touched, same bytes
    b.write_bytes(b"bbbB")  # same size, new content
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 7_000_000_000))
    todo, done = state.plan([a, b, c])
    assert sorted(Path(f.path).name for f in todo) == ["b.parquet", "c.parquet"]
    assert [Path(f.path).name for f in done] == ["a.parquet"]
    state.touch(done)
    todo2, done2 = state.plan([a])
    assert todo2 == [] and done2[0].mtime_ns == a.stat().st_mtime_ns


def test_a_night_with_nothing_new_writes_nothing(state: AuditState, tmp_path: Path, monkeypatch) -> None:
    """Every audit rewrote the whole ``files`` table (plan() gives unchanged files their stored
    hash, and touch() upserted them all): a state folder that is read-only failed even on a
    night with nothing new, and the database changed on every run."""
    a = tmp_path / "a.parquet"
    a.write_bytes(b"aaaa")
    todo, _ = state.plan([a])
    state.record(audit={"audit_id": "1"}, per_run={}, fleet={}, run_ids=pl.Series([], dtype=pl.String), files=todo)
    _, done = state.plan([a])
    assert done[0].hash is not None
    monkeypatch.setattr(state, "upsert", lambda *a, **k: pytest.fail("wrote an unchanged file's row"))
    state.touch(done)  # nothing to write
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 5_000_000_000))  # touched: its new time is kept
    _, done = state.plan([a])
    monkeypatch.undo()
    state.touch(done)
    assert state.audited_files()["mtime_ns"].to_list() == [a.stat().st_mtime_ns]


def test_a_state_that_cannot_be_written_is_not_called_damaged(state: AuditState) -> None:
    """A read-only state folder was reported as "damaged or changed by hand: start a new state",
    advice that throws the history away."""
    import duckdb

    with pytest.raises(InputError, match="cannot be written while recording this audit") as err, \
            state.errors("recording this audit"):
        raise duckdb.IOException('Cannot open file "s/audit.duckdb.wal": Permission denied')
    assert "damaged" not in str(err.value) and "write access" in str(err.value)
    with pytest.raises(InputError, match="damaged or was changed by hand"), state.errors("reading the history"):
        raise duckdb.CatalogException("Table with name runs does not exist")

def test_a_file_rewritten_during_the_audit_is_read_again(state: AuditState, tmp_path: Path) -> None:
    """New files are hashed when planned, before they are read: a file rewritten while the
    audit ran was recorded with its new bytes (hashed at the end) and never audited."""
    a = tmp_path / "a.parquet"
    a.write_bytes(b"old bytes")
    todo, _ = state.plan([a])
    assert todo[0].hash is not None  # hashed at plan time
    a.write_bytes(b"new bytes, written while the audit read the old ones")
    state.record(audit={"audit_id": "1"}, per_run={}, fleet={}, run_ids=pl.Series([], dtype=pl.String), files=todo)
    todo2, done2 = state.plan([a])
    assert [Path(f.path).name for f in todo2] == ["a.parquet"] and done2 == []


def test_copies_of_audited_files_under_new_paths_are_not_audited_again(state: AuditState, tmp_path: Path) -> None:
    """A file re-delivered under another name, or a log folder moved elsewhere, holds bytes
    that were audited: not audited (and alerted on) again. The same bytes in another hive
    partition are other rows (the partition value is a column) and are audited."""
    day = tmp_path / "logs" / "date=2026-10-01"
    day.mkdir(parents=True)
    (day / "part-0.parquet").write_bytes(b"day one")
    todo, _ = state.plan([day / "part-0.parquet"])
    state.record(audit={"audit_id": "night1"}, per_run={}, fleet={}, run_ids=pl.Series([], dtype=pl.String),
                 files=todo)
    (day / "part-0-resend.parquet").write_bytes(b"day one")
    moved = tmp_path / "mnt" / "date=2026-10-01"
    moved.mkdir(parents=True)
    (moved / "part-0.parquet").write_bytes(b"day one")
    other = tmp_path / "logs" / "date=2026-10-02"
    other.mkdir()
    (other / "part-0.parquet").write_bytes(b"day one")  # same bytes, another partition
    todo, done = state.plan([day / "part-0-resend.parquet", moved / "part-0.parquet", other / "part-0.parquet"])
    assert [f.path for f in todo] == [str(other / "part-0.parquet")]
    assert sorted(f.path for f in done) == sorted([str(day / "part-0-resend.parquet"), str(moved / "part-0.parquet")])
    # a key the reader drops (date=) does not make the rows differ; one it keeps (agent=) does
    assert state.plan([other / "part-0.parquet"], hive_keys={"agent"})[0] == []
    agent = tmp_path / "logs" / "agent=b" / "date=2026-10-01"
    agent.mkdir(parents=True)
    (agent / "part-0.parquet").write_bytes(b"day one")
    assert len(state.plan([agent / "part-0.parquet"], hive_keys={"agent"})[0]) == 1
    state.touch(done)  # remembered under the new paths, as read by the audit of the original
    files = state.audited_files()
    assert dict(zip(files["path"], files["audit_id"], strict=True))[str(moved / "part-0.parquet")] == "night1"
    todo2, done2 = state.plan([moved / "part-0.parquet"])
    assert todo2 == [] and len(done2) == 1


def test_history_excludes_current_runs_and_old_runs(state: AuditState) -> None:
    feats = pl.concat([features(["old"], day=0), features(["mid"], day=10), features(["cur"], day=20)])
    counts = pl.DataFrame({"run_id": ["old", "mid", "cur"], "action": ["x", "y", "z"], "n": [1, 2, 3]})
    state.record(audit={"audit_id": "1"}, per_run={"features": feats, "action_counts": counts},
                 fleet={}, run_ids=feats["run_id"])
    hist = state.history(exclude_run_ids=pl.Series(["cur"]), since=T0 + timedelta(days=5))
    assert hist["features"]["run_id"].to_list() == ["mid"]
    assert hist["action_counts"]["run_id"].to_list() == ["mid"]
    assert hist["features"]["first_ts"].dtype == pl.Datetime("us", "UTC")
    assert AuditState(state.path.parent / "empty.duckdb").history() == {}


def test_features_stored_twice_name_the_state(state: AuditState) -> None:
    """A features table with a run's row inserted twice by hand failed in the fleet stage with
    "features must have one row per run", naming no state file."""
    feats = features(["a", "b"])
    state.record(audit={"audit_id": "1"}, per_run={"features": feats}, fleet={}, run_ids=feats["run_id"])
    state.con.execute("INSERT INTO features SELECT * FROM features WHERE run_id = 'b'")
    with pytest.raises(InputError, match=r"features table holds run 'b' more than once") as err:
        state.history()
    assert str(state.path) in str(err.value)

def test_open_needs_exactly_one_location(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError):
        AuditState.open()
    with pytest.raises(InvalidParameterError):
        AuditState.open(state_dir=tmp_path, db=tmp_path / "x.duckdb")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InvalidParameterError, match="must be a folder"):
        AuditState.open(state_dir=f)
    st = AuditState.open(state_dir=tmp_path / "state")
    assert st.path == tmp_path / "state" / DB_NAME
    st.close()


def test_not_a_database_and_locked_database_are_input_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.duckdb"
    junk.write_text("this is not a duckdb file\n" * 100)
    with pytest.raises(InputError, match="junk.duckdb: not a DuckDB database; --db needs"):
        AuditState(junk)
    # DuckDB opens a Parquet file as an in-memory database: an audit kept no state at all
    logs = tmp_path / "state.parquet"
    pl.DataFrame({"run_id": ["a"]}).write_parquet(logs)
    before = logs.read_bytes()
    with pytest.raises(InputError, match=r"not a DuckDB database \(it is a Parquet file\)"):
        AuditState(logs)
    assert logs.read_bytes() == before
    # another process holds the database open for writing
    db = tmp_path / "locked.duckdb"
    code = (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); c.execute('create table t(x int)');"
        "print('ready', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(InputError, match="no other audit is running"):
            AuditState(db)
    finally:
        proc.kill()
        proc.wait()


def test_history_window_keeps_the_most_recent_whole_days_that_fit(state: AuditState) -> None:
    # days 0..4 with 3, 4, 5, 6, 7 runs (25 runs), and the current audit's run
    feats = pl.concat([features([f"d{d}-{i}" for i in range(3 + d)], day=d) for d in range(5)]
                      + [features(["cur"], day=4)])
    state.record(audit={"audit_id": "1"}, per_run={"features": feats}, fleet={}, run_ids=feats["run_id"])
    cur = pl.Series(["cur"])
    assert state.history_window(exclude_run_ids=cur, since=T0) == (T0, 25)
    assert state.history_window(exclude_run_ids=cur, since=T0, max_runs=25) == (T0, 25)
    assert state.history_window(exclude_run_ids=cur, since=T0, max_runs=None) == (T0, 25)
    # 20 runs at most: days 2..4 (5 + 6 + 7 = 18); day 1 would make 22
    start, n = state.history_window(exclude_run_ids=cur, since=T0, max_runs=20)
    assert (start, n) == (T0 + timedelta(days=2), 18)
    hist = state.history(exclude_run_ids=cur, since=start)
    assert hist["features"].height == 18 and hist["features"]["first_ts"].min() == T0 + timedelta(days=2)
    # a later `since` is kept when it fits already
    assert state.history_window(exclude_run_ids=cur, since=T0 + timedelta(days=3), max_runs=20) == (
        T0 + timedelta(days=3), 13)
    # the latest day alone holds more than max_runs: its most recent runs
    start, n = state.history_window(exclude_run_ids=cur, since=T0, max_runs=4)
    assert n == 4 and start == T0 + timedelta(days=4, minutes=2, microseconds=1)
    assert state.history(exclude_run_ids=cur, since=start)["features"]["run_id"].to_list() == [
        f"d4-{i}" for i in range(3, 7)]
    assert AuditState(state.path.parent / "empty.duckdb").history_window(since=T0, max_runs=1) == (T0, 0)


def test_the_state_connection_has_a_memory_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB's own default is 80% of RAM, and it keeps the pages an audit writes."""
    import driftwatch.state as state_mod

    def limit(st: AuditState) -> str:
        return st.con.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]

    st = AuditState(tmp_path / "a.duckdb")
    assert limit(st) == "976.5 MiB"  # 1024 MB
    st.close()
    monkeypatch.setattr(state_mod, "STATE_MEMORY_LIMIT_MB", 512)
    st = AuditState(tmp_path / "a.duckdb")
    assert limit(st) == "488.2 MiB"
    st.close()


def test_table_keys_cover_the_history_tables_of_the_issue() -> None:
    assert {"runs", "loops", "changepoints", "drift", "violations", "audits"} <= set(TABLE_KEYS)


class _SpyConnection:
    """The state's DuckDB connection, with the statements it runs and the relations it registers."""

    def __init__(self, con: object) -> None:
        self._con = con
        self.statements: list[str] = []
        self.registered: list[str] = []

    def execute(self, sql: str, *args: object) -> object:
        self.statements.append(sql)
        return self._con.execute(sql, *args)

    def register(self, name: str, obj: object) -> object:
        self.registered.append(name)
        return self._con.register(name, obj)

    def __getattr__(self, name: str) -> object:
        return getattr(self._con, name)


def test_record_registers_the_run_ids_once_and_deletes_only_what_is_stored(state: AuditState) -> None:
    """Recording a 70M-event backlog joined its 5M run ids once per per-run table, into empty
    tables too: 8 distinct-id passes and +0.6 GiB each."""
    feats = features(["r1", "r2", "r3"])
    loops = pl.DataFrame({"run_id": ["r1", "r1"], "start_step": [1, 9]})
    empty = pl.DataFrame(schema={"run_id": pl.String, "start_step": pl.Int64})
    kw = dict(audit={"audit_id": "A1"}, fleet={}, run_ids=feats["run_id"])
    spy = _SpyConnection(state.con)
    state.con = spy  # type: ignore[assignment]
    state.record(per_run={"features": feats, "loops": loops, "run_changepoints": empty}, **kw)
    assert not [s for s in spy.statements if s.startswith("DELETE")]  # a new state: nothing to replace
    assert spy.registered.count("_dw_ids") == 1

    spy.statements.clear()
    spy.registered.clear()
    # the same runs again, r1 now without loops: its old loop rows go
    state.record(per_run={"features": feats, "loops": empty, "run_changepoints": empty}, **kw)
    deletes = [s for s in spy.statements if s.startswith("DELETE") and "_dw_ids" in s]
    assert [d.split('"')[1] for d in deletes] == ["features", "loops"]  # run_changepoints holds no row
    assert spy.registered.count("_dw_ids") == 1
    assert state.counts() == {"audits": 1, "features": 3, "loops": 0, "run_changepoints": 0}


def test_text_round_trips_through_the_state(state: AuditState) -> None:
    """Text goes to DuckDB as Arrow string views (no copy of every string): short, long,
    non-ASCII, empty and null values, in lists and as categoricals, come back as they went."""
    long = "x" * 40 + "é"
    frame = pl.DataFrame(
        {
            "run_id": ["a", "b", "c", "d"],
            "agent": ["short", long, "", None],
            "reasons": [["loop: 7x", long], [], None, [None, "ünïcode ✓"]],
            "level": pl.Series(["ok", "review", "ok", "escalate"], dtype=pl.Categorical),
            "kind": pl.Series(["ok", None, "ok", "escalate"], dtype=pl.Enum(["ok", "escalate"])),
        }
    )
    state.upsert("runs", frame)
    got = state.table("runs").sort("run_id")
    assert got["agent"].to_list() == frame["agent"].to_list()
    assert got["reasons"].to_list() == frame["reasons"].to_list()
    assert got["level"].cast(pl.String).to_list() == ["ok", "review", "ok", "escalate"]
    assert got["kind"].cast(pl.String).to_list() == ["ok", None, "ok", "escalate"]


def test_a_database_of_other_tables_is_refused(tmp_path: Path) -> None:
    """--db pointed at someone else's DuckDB file must not add columns and rows to their tables."""
    import duckdb

    db = tmp_path / "theirs.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE runs (x INTEGER)")
        con.execute("INSERT INTO runs VALUES (42)")
    with pytest.raises(InputError, match=r"not a driftwatch state database \(it holds other tables: runs\)"):
        AuditState(db)
    # tables of other names too (only driftwatch's own names were looked at: 11 tables were added)
    sales = tmp_path / "analytics.duckdb"
    with duckdb.connect(str(sales)) as con:
        con.execute("CREATE TABLE sales (id INTEGER, amount DOUBLE)")
    before = sales.read_bytes()
    with pytest.raises(InputError, match=r"it holds other tables: sales"):
        AuditState(sales)
    assert sales.read_bytes() == before
    with duckdb.connect(str(db)) as con:  # untouched, and not left locked
        assert con.execute("SELECT * FROM runs").fetchall() == [(42,)]
    # a state, or a state the user added tables to, opens
    st = AuditState(tmp_path / "ours.duckdb")
    st.mark_audited([SourceFile.stat(db)], audit_id="A")
    st.con.execute("CREATE TABLE my_notes (x INTEGER)")
    st.close()
    AuditState(tmp_path / "ours.duckdb").close()


def test_a_state_file_that_cannot_be_opened_for_writing_says_so(tmp_path: Path, monkeypatch) -> None:
    """A read-only audit.duckdb got "check that no other audit is running and that the file is a
    driftwatch state DB", advice that points the wrong way."""
    import duckdb

    AuditState(tmp_path / "s.duckdb").close()

    def denied(*args: object, **kwargs: object) -> None:
        raise duckdb.IOException(f'IO Error: Cannot open file "{tmp_path}/s.duckdb": Permission denied')

    monkeypatch.setattr(duckdb, "connect", denied)
    with pytest.raises(InputError, match="cannot be opened for writing .*Permission denied.*give it write access"):
        AuditState(tmp_path / "s.duckdb")
