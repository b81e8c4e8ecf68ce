"""Incremental, scheduled audits: what has been audited, and the results so far, in one DuckDB file.

A nightly ``driftwatch audit logs/ --out report --state audit_state/`` over a
folder that grows by one file a day should audit only the new file, yet see
weeks of history when looking for change-points and drift. :class:`AuditState`
keeps both in a DuckDB database (``<state dir>/audit.duckdb`` or ``--db FILE``):

* ``files``: every audited source file with its size, modification time and a
  BLAKE2b hash of its bytes. A file whose size and mtime are unchanged is skipped
  without reading it; one whose size or mtime changed is hashed and re-audited
  only when its bytes differ.
* ``audits``: one row per audit (id, window, counts, the ts watermark).
* history tables of results: ``runs``, ``loops``, ``changepoints``, ``drift``,
  ``violations``; and the small per-run tables the fleet stage needs
  (``features``, ``action_counts``, ``bigram_counts``, ``loop_summary``,
  ``run_changepoints``), so that change-points and drift are computed over the
  history, not over one night.

Writes are idempotent: per-run tables are replaced by ``run_id`` (delete then
insert), fleet tables by their natural key (``changepoints``: series, metric, ts;
``drift``: series, window, feature, method) and, from the start of the period
the fleet stage re-analysed, as a whole, ``audits`` by ``audit_id``, all in one
transaction. Auditing the same window twice leaves the same rows.

All SQL is parameterised; table and key names come from the fixed allow-list
:data:`TABLE_KEYS`, and column names from result frames are checked against a
strict identifier pattern and quoted.

Examples
--------
>>> import tempfile, polars as pl
>>> from driftwatch.state import AuditState
>>> st = AuditState(tempfile.mkdtemp() + "/audit.duckdb")
>>> st.upsert("runs", pl.DataFrame({"run_id": ["r1", "r2"], "score": [0.1, 0.9]}))
>>> st.upsert("runs", pl.DataFrame({"run_id": ["r2"], "score": [0.8]}))
>>> st.table("runs").sort("run_id").rows()
[('r1', 0.1), ('r2', 0.8)]
>>> st.close()
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from driftwatch.errors import InputError, InvalidParameterError

#: History table -> the columns that identify a row (delete+insert key).
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    # per-run tables: replaced run by run
    "runs": ("run_id",),
    "loops": ("run_id",),
    "violations": ("run_id",),
    "features": ("run_id",),
    "action_counts": ("run_id",),
    "bigram_counts": ("run_id",),
    "loop_summary": ("run_id",),
    "run_changepoints": ("run_id",),
    # fleet tables: replaced by natural key
    "changepoints": ("series", "metric", "ts"),
    "drift": ("series", "window_start", "window_end", "feature", "method"),
    # bookkeeping
    "audits": ("audit_id",),
    "files": ("path",),
}

#: Fleet tables: the time column that places a row inside the analysed window.
FLEET_TIME_COLUMNS: dict[str, str] = {"changepoints": "ts", "drift": "window_start"}

#: Per-run tables (keyed by ``run_id``) read back as history by the fleet stage.
PER_RUN_TABLES: tuple[str, ...] = (
    "features",
    "action_counts",
    "bigram_counts",
    "loops",
    "loop_summary",
    "violations",
    "run_changepoints",
)

#: DuckDB's memory limit for the state connection (its own buffer pool; it spills beyond).
STATE_MEMORY_LIMIT_MB = 1024

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

DB_NAME = "audit.duckdb"


def _quote(name: str) -> str:
    if not _IDENT.match(name):
        raise InvalidParameterError(
            f"column name {name!r} cannot be stored in the audit history; expected letters, digits, '_'"
        )
    return f'"{name}"'


def _table(name: str) -> str:
    if name not in TABLE_KEYS:
        raise InvalidParameterError(
            f"unknown history table {name!r}; expected one of {sorted(TABLE_KEYS)}"
        )
    return f'"{name}"'


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A source file as seen now: absolute path, size in bytes, mtime in ns, optional hash."""

    path: str
    size: int
    mtime_ns: int
    hash: str | None = None

    @classmethod
    def stat(cls, path: str | os.PathLike[str]) -> SourceFile:
        p = Path(path).absolute()
        st = p.stat()
        return cls(str(p), int(st.st_size), int(st.st_mtime_ns))

    def hashed(self) -> SourceFile:
        """This file with its BLAKE2b-256 content hash filled in."""
        if self.hash is not None:
            return self
        return SourceFile(self.path, self.size, self.mtime_ns, file_hash(self.path))


#: What the operating system says when the state's file or folder cannot be written.
_DENIED = ("Permission denied", "Operation not permitted", "Read-only file system")


def _hive_parts(path: str, keys: Collection[str] | None = None) -> tuple[str, ...]:
    """The ``key=value`` folders of a path (of ``keys`` only, when given): the values a hive
    layout gives its rows."""
    return tuple(
        part for part in Path(path).parts[:-1]
        if "=" in part and (keys is None or part.split("=", 1)[0] in keys)
    )


def file_hash(path: str | os.PathLike[str]) -> str:
    """BLAKE2b-256 hex digest of a file's bytes (streamed, constant memory)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=32)).hexdigest()


def _arrow(frame: pl.DataFrame) -> Any:
    """``frame`` as Arrow for DuckDB, text as string views: Polars' own layout, so no copy of
    every string (the older large-string layout held 0.65 GiB more after the runs of a
    70M-event backlog were recorded)."""
    return frame.to_arrow(compat_level=pl.CompatLevel.newest())


#: The ``files`` table: the source files audited so far (also the sign of a state database).
FILES_COLUMNS: dict[str, pl.DataType] = {
    "path": pl.String(), "size": pl.Int64(), "mtime_ns": pl.Int64(), "hash": pl.String(), "audit_id": pl.String(),
}


def _files_frame(files: Sequence[SourceFile], audit_id: str | Sequence[str | None]) -> pl.DataFrame:
    """The ``files`` table's rows for hashed source files (one audit id, or one per file)."""
    return pl.DataFrame(
        {
            "path": [f.path for f in files],
            "size": [f.size for f in files],
            "mtime_ns": [f.mtime_ns for f in files],
            "hash": [f.hash for f in files],
            "audit_id": [audit_id] * len(files) if isinstance(audit_id, str) else list(audit_id),
        },
        schema=FILES_COLUMNS,
    )


def _check_is_duckdb_file(path: Path) -> None:
    """Refuse an existing file that is not a DuckDB database: DuckDB opens a Parquet file as
    an in-memory database, so an audit with ``--db logs.parquet`` kept no state at all."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except FileNotFoundError:
        return  # a new state
    except OSError as exc:
        raise InputError(f"{path}: cannot open the audit state database ({exc.strerror})") from None
    if head and head[8:12] != b"DUCK":
        kind = " (it is a Parquet file)" if head[:4] == b"PAR1" else ""
        raise InputError(
            f"{path}: not a DuckDB database{kind}; --db needs a driftwatch state database, or a new file name"
        )


def _sanitize(frame: pl.DataFrame) -> pl.DataFrame:
    """Make a frame storable: all-null columns become text, nested nulls too."""
    casts = {c: pl.String for c, t in frame.schema.items() if t == pl.Null}
    casts.update({c: pl.List(pl.String) for c, t in frame.schema.items() if t == pl.List(pl.Null)})
    return frame.cast(casts) if casts else frame


class AuditState:
    """The audit history of one deployment, in a DuckDB file.

    Parameters
    ----------
    path : str or path-like
        The DuckDB file (created with its folder when missing).

    Notes
    -----
    One audit at a time may hold the file open for writing (DuckDB locks it);
    a second concurrent audit gets an :class:`~driftwatch.errors.InputError`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import duckdb

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _check_is_duckdb_file(self.path)
        try:
            self.con = duckdb.connect(str(self.path))
        except duckdb.Error as exc:  # locked by another process, not a DuckDB file, ...
            first = str(exc).splitlines()[0]
            if any(s in first for s in _DENIED):
                raise InputError(
                    f"{self.path}: the audit state cannot be opened for writing ({first}); an incremental audit "
                    "records what it audited: give it write access to the state's file and folder, or choose a "
                    "--state folder or --db file it can write"
                ) from None
            raise InputError(
                f"{self.path}: cannot open the audit state database ({first}); "
                "check that no other audit is running and that the file is a driftwatch state DB"
            ) from None
        self.con.execute("SET TimeZone = 'UTC'")
        self._check_is_state()
        # DuckDB's buffer pool may grow to 80% of RAM, and keeps the pages an audit writes:
        # recording the first audit of 70M events took the process from 5.8 to 8.5 GiB
        self.con.execute(f"SET memory_limit = '{int(STATE_MEMORY_LIMIT_MB)}MB'")
        # (DuckDB's preserve_insertion_order stays on: without it the runs of a 70M-event
        # backlog went in 12 s faster, but the nightly audit after it, reading that history in
        # run order, peaked 0.2-0.3 GiB higher and its recording took longer)

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn a failure of the database inside the block into one line naming the file.

        A state written by hand or by another program (a table without a column driftwatch
        stores, a column of another type) or damaged on disk fails deep inside DuckDB; the
        user needs the file and what to do, not DuckDB's trace.
        """
        import duckdb

        try:
            yield
        except (duckdb.Error, pl.exceptions.PolarsError, TypeError, KeyError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            if any(s in first for s in _DENIED):
                raise InputError(
                    f"{self.path}: the audit state cannot be written while {doing} ({type(exc).__name__}: {first}); "
                    "an incremental audit records what it audited: give it write access to the state's folder, "
                    "or choose a --state folder or --db file it can write"
                ) from None
            raise InputError(
                f"{self.path}: the audit state database failed while {doing} ({type(exc).__name__}: {first}); "
                "it is damaged or was changed by hand: restore a backup, or start a new state "
                "(a new --state folder or --db file)"
            ) from None

    def _check_is_state(self) -> None:
        """Refuse a database that holds tables but is not a driftwatch state (its ``files``
        table is the sign): an audit would add tables, columns and rows to someone else's
        database."""
        rows = self.con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database() ORDER BY 1"
        ).fetchall()
        tables = [r[0] for r in rows]  # every table, not only the history's
        if not tables:
            return
        if "files" in tables and set(FILES_COLUMNS) <= set(self._columns("files")):
            return
        self.con.close()
        shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
        raise InputError(
            f"{self.path}: not a driftwatch state database (it holds other tables: {shown}); "
            "choose a new file for --db (or a new folder for --state)"
        )

    @classmethod
    def open(
        cls, *, state_dir: str | os.PathLike[str] | None = None, db: str | os.PathLike[str] | None = None
    ) -> AuditState:
        """Open ``<state_dir>/audit.duckdb`` or the file ``db`` (exactly one of them)."""
        if (state_dir is None) == (db is None):
            raise InvalidParameterError("give exactly one of state_dir (--state DIR) or db (--db FILE)")
        if db is not None:
            return cls(db)
        assert state_dir is not None
        d = Path(state_dir)
        if d.exists() and not d.is_dir():
            raise InvalidParameterError(f"{d}: --state must be a folder (use --db for a DuckDB file)")
        return cls(d / DB_NAME)

    # ------------------------------------------------------------------ basics
    def close(self) -> None:
        """Close the database (idempotent)."""
        with contextlib.suppress(Exception):
            self.con.close()

    def __enter__(self) -> AuditState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tables(self) -> list[str]:
        """History tables that exist in the database."""
        rows = self.con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database() AND table_schema = 'main' ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows if r[0] in TABLE_KEYS]

    def _columns(self, table: str) -> dict[str, str]:
        rows = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_catalog = current_database() AND table_schema = 'main' AND table_name = ? "
            "ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def _query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        rel = self.con.sql(sql, params=list(params) if params else None)
        return pl.from_arrow(rel.to_arrow_table())  # type: ignore[return-value]

    def table(self, name: str, *, where_run_ids: Iterable[str] | None = None) -> pl.DataFrame:
        """A history table as a polars DataFrame (empty frame when it does not exist yet)."""
        quoted = _table(name)
        if name not in self.tables():
            return pl.DataFrame()
        if where_run_ids is None:
            return self._query(f"SELECT * FROM {quoted}")
        with self._registered_ids(pl.Series("run_id", list(where_run_ids), dtype=pl.String)) as ids:
            return self._query(f"SELECT t.* FROM {quoted} t SEMI JOIN {ids} USING (run_id)")

    # ------------------------------------------------------------------ writes
    def _ensure_table(self, name: str, frame: pl.DataFrame) -> None:
        quoted = _table(name)
        for col in frame.columns:
            _quote(col)
        existing = self._columns(name)
        if not existing:
            self.con.execute(f"CREATE TABLE {quoted} AS SELECT * FROM _dw_new LIMIT 0")
            return
        missing = [c for c in frame.columns if c not in existing]
        if missing:
            # learn DuckDB's types for the new columns from the registered frame
            self.con.execute("CREATE OR REPLACE TEMP TABLE _dw_types AS SELECT * FROM _dw_new LIMIT 0")
            types = dict(
                self.con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = '_dw_types' AND table_catalog = 'temp'"
                ).fetchall()
            )
            for col in missing:
                dtype = types[col]
                if not re.fullmatch(r"[A-Za-z0-9_ ,()\[\]]+", dtype):
                    raise InvalidParameterError(f"cannot store column {col!r} of type {dtype!r}")
                self.con.execute(f"ALTER TABLE {quoted} ADD COLUMN {_quote(col)} {dtype}")
            self.con.execute("DROP TABLE _dw_types")

    def _upsert_in_tx(
        self,
        name: str,
        frame: pl.DataFrame,
        *,
        delete_ids: str | None = None,
        since: datetime | None = None,
    ) -> None:
        """Replace rows of ``name`` by ``frame`` inside the open transaction. ``delete_ids``
        names a registered relation of ``run_id`` values whose rows go first (per-run tables);
        ``since`` drops a fleet table's rows from then on."""
        quoted = _table(name)
        keys = TABLE_KEYS[name]
        frame = _sanitize(frame)
        if frame.width == 0:
            return
        time_col = FLEET_TIME_COLUMNS.get(name)
        if since is not None and time_col is not None and time_col in frame.columns:
            # rows before ``since`` come from days the fleet stage did not re-analyse whole
            # (late runs ahead of a capped history): the stored rows of those days stay
            frame = frame.filter(pl.col(time_col) >= since)
        self.con.register("_dw_new", _arrow(frame))
        try:
            # nothing stored yet (the first audit of a backlog): no join of its run ids to delete
            replace = name in self.tables() and not self._is_empty(name)
            self._ensure_table(name, frame)
            if replace:
                if since is not None and time_col is not None and time_col in self._columns(name):
                    # the fleet stage re-analysed everything from ``since``: its rows replace the old ones
                    self.con.execute(f"DELETE FROM {quoted} WHERE {_quote(time_col)} >= ?", [since])
                if keys == ("run_id",) and delete_ids is not None:
                    self.con.execute(f"DELETE FROM {quoted} WHERE run_id IN (SELECT run_id FROM {delete_ids})")
                elif all(k in frame.columns for k in keys) and frame.height:
                    cond = " AND ".join(f"t.{_quote(k)} IS NOT DISTINCT FROM n.{_quote(k)}" for k in keys)
                    self.con.execute(
                        f"DELETE FROM {quoted} t WHERE EXISTS (SELECT 1 FROM _dw_new n WHERE {cond})"
                    )
            if frame.height:
                self.con.execute(f"INSERT INTO {quoted} BY NAME SELECT * FROM _dw_new")
        finally:
            with contextlib.suppress(Exception):  # (in an aborted transaction: keep the real error)
                self.con.unregister("_dw_new")

    def _is_empty(self, name: str) -> bool:
        rows = self.con.execute(f"SELECT 1 FROM {_table(name)} LIMIT 1").fetchall()
        return not rows

    @contextlib.contextmanager
    def _registered_ids(self, run_ids: pl.Series | None, alias: str = "_dw_ids") -> Iterator[str | None]:
        """Register the distinct ``run_ids`` as relation ``alias`` for the block (``None``: none)."""
        if run_ids is None:
            yield None
            return
        ids = pl.DataFrame({"run_id": run_ids.cast(pl.String)}).unique()
        self.con.register(alias, _arrow(ids))
        try:
            yield alias
        finally:
            with contextlib.suppress(Exception):  # (in an aborted transaction: keep the real error)
                self.con.unregister(alias)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[AuditState]:
        """All writes inside the block commit together or not at all."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def upsert(self, name: str, frame: pl.DataFrame, *, run_ids: pl.Series | None = None) -> None:
        """Replace rows of history table ``name`` by key, in one transaction.

        Parameters
        ----------
        name : str
            A table of :data:`TABLE_KEYS`.
        frame : polars.DataFrame
            New rows. Columns unknown to the table are added to it.
        run_ids : polars.Series, optional
            For per-run tables: every row of these runs is deleted first (so a
            run that lost its loops loses its old loop rows). Defaults to the
            frame's own ``run_id`` values.
        """
        with self.transaction():
            self._upsert(name, frame, run_ids=run_ids)

    def _upsert(
        self, name: str, frame: pl.DataFrame, *, run_ids: pl.Series | None = None, since: datetime | None = None
    ) -> None:
        _table(name)
        if TABLE_KEYS[name] != ("run_id",):
            run_ids = None
        elif run_ids is None and "run_id" in frame.columns:
            run_ids = frame["run_id"]
        with self._registered_ids(run_ids) as ids:
            self._upsert_in_tx(name, frame, delete_ids=ids, since=since)

    def record(
        self,
        *,
        audit: Mapping[str, Any],
        per_run: Mapping[str, pl.DataFrame],
        fleet: Mapping[str, pl.DataFrame],
        run_ids: pl.Series,
        files: Sequence[SourceFile] = (),
        fleet_since: datetime | None = None,
        rescored_ids: pl.Series | None = None,
        before_commit: Callable[[], Any] | None = None,
    ) -> None:
        """Store one audit's results atomically (one transaction).

        Parameters
        ----------
        audit : mapping
            The ``audits`` row (must hold ``audit_id``).
        per_run : mapping of str to DataFrame
            Per-run tables (``runs``, ``loops``, ``features``, ...); every row of
            ``run_ids`` is replaced.
        fleet : mapping of str to DataFrame
            ``changepoints`` and ``drift``, replaced by natural key.
        run_ids : polars.Series
            The runs this audit covered.
        files : sequence of SourceFile
            Source files to mark as audited (hashes are computed when missing).
        fleet_since : datetime, optional
            Start of the period the fleet stage analysed: stored change-points and drift
            rows from then on are replaced by ``fleet`` (a later, better-informed estimate
            of a change-point moves it instead of adding a second row).
        rescored_ids : polars.Series, optional
            Runs outside ``run_ids`` whose scores (``runs``) and breaches (``violations``)
            this audit replaces, their other tables kept: runs of the history whose later
            steps arrived rejected, and runs every step of which was rejected.
        before_commit : callable, optional
            Called once everything is stored, before the transaction commits (the audit
            writes its results folder there): if it fails, nothing is stored; if storing
            fails, it is not called.
        """
        hashed = [f.hashed() for f in files]
        audit_row = pl.DataFrame([dict(audit)])
        scored = run_ids if rescored_ids is None else pl.concat([run_ids.cast(pl.String), rescored_ids.cast(pl.String)])
        with self.transaction(), self._registered_ids(run_ids) as ids, \
                self._registered_ids(scored, alias="_dw_scored") as scored_ids:
            for name, frame in per_run.items():
                # (the ids registered once for all)
                self._upsert_in_tx(name, frame, delete_ids=scored_ids if name in ("runs", "violations") else ids)
            for name, frame in fleet.items():
                self._upsert(name, frame, since=fleet_since)
            self._upsert("audits", audit_row)
            if hashed:
                self._upsert("files", _files_frame(hashed, str(audit["audit_id"])))
            if before_commit is not None:  # (what fails here rolls the state back)
                before_commit()

    def mark_audited(self, files: Sequence[SourceFile], *, audit_id: str) -> None:
        """Remember ``files`` as audited without results (files that hold no rows: a quiet
        day's empty partition is not read again every night)."""
        hashed = [f.hashed() for f in files]
        if hashed:
            self.upsert("files", _files_frame(hashed, audit_id))

    # ------------------------------------------------------------------ reads
    def audited_files(self) -> pl.DataFrame:
        """``path, size, mtime_ns, hash, audit_id`` of every file audited so far."""
        df = self.table("files")
        if df.width == 0:
            return pl.DataFrame(schema=FILES_COLUMNS)
        return df

    def plan(
        self, files: Sequence[str | os.PathLike[str]], *, hive_keys: Collection[str] | None = None
    ) -> tuple[list[SourceFile], list[SourceFile]]:
        """Split source files into (to audit, already audited).

        A file is already audited when its path is known with the same size and
        mtime (as rsync decides: the bytes are not read again), or with the same
        content hash (touched but unchanged; its new mtime is remembered at the
        next :meth:`record`). A new path is already audited when its bytes are
        those of an audited file in the same hive partition (``key=value``
        folders): a file delivered twice under two names, or a log folder moved
        or mounted elsewhere, is not audited (and alerted on) again. ``hive_keys``:
        the keys whose values the reader keeps as columns (the others, e.g.
        ``date=``, do not make the rows differ); ``None``: every key.
        """
        known = {r["path"]: r for r in self.audited_files().iter_rows(named=True)}
        copies = {(r["hash"], _hive_parts(r["path"], hive_keys)) for r in known.values() if r["hash"] is not None}
        todo: list[SourceFile] = []
        done: list[SourceFile] = []
        for f in files:
            sf = SourceFile.stat(f)
            prev = known.get(sf.path)
            if prev is None:
                # hashed now, before it is read: a file rewritten while the audit runs is then
                # recorded with the bytes before, and read again next time (hashed after the
                # audit, the new bytes were recorded as audited, and never were)
                h = sf.hashed()
                (done if (h.hash, _hive_parts(h.path, hive_keys)) in copies else todo).append(h)
            elif prev["size"] == sf.size and prev["mtime_ns"] == sf.mtime_ns:
                done.append(SourceFile(sf.path, sf.size, sf.mtime_ns, prev["hash"]))
            else:
                h = sf.hashed()
                (done if h.hash == prev["hash"] else todo).append(h)
        return todo, done

    def touch(self, files: Sequence[SourceFile], *, audit_id: str | None = None) -> None:
        """Remember new size/mtime of files whose content did not change (and new paths of
        copies); files recorded as they are now are not written again (a night with nothing
        new writes nothing)."""
        known = self.audited_files()
        now = {(p, s, m) for p, s, m in zip(known["path"].to_list(), known["size"].to_list(),
                                             known["mtime_ns"].to_list(), strict=True)}
        changed = [f for f in files if f.hash is not None and (f.path, f.size, f.mtime_ns) not in now]
        if not changed:
            return
        prev = dict(zip(known["path"].to_list(), known["audit_id"].to_list(), strict=True))
        # a copy under a new path: the audit that read the original
        by_hash = dict(zip(known["hash"].to_list(), known["audit_id"].to_list(), strict=True))
        ids = [prev.get(f.path, by_hash.get(f.hash, audit_id)) for f in changed]
        self.upsert("files", _files_frame(changed, ids))

    def history(
        self, *, exclude_run_ids: pl.Series | None = None, since: datetime | None = None
    ) -> dict[str, pl.DataFrame]:
        """The stored per-run tables (see :data:`PER_RUN_TABLES`) for the fleet stage.

        Parameters
        ----------
        exclude_run_ids : polars.Series, optional
            Runs the current audit recomputes (left out of the history).
        since : datetime, optional
            Only runs that started at or after this time (bounds memory on a
            long history).

        Returns
        -------
        dict of str to polars.DataFrame
            Missing tables are absent from the dict.
        """
        return dict(self.iter_history(exclude_run_ids=exclude_run_ids, since=since))

    def iter_history(
        self, *, exclude_run_ids: pl.Series | None = None, since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[tuple[str, pl.DataFrame]]:
        """:meth:`history` one ``(name, table)`` at a time, each read when the one before has
        been taken: a caller that merges and releases each table holds one raw history table
        at a time, not all of them (the audit's fleet stage on a long history). ``since`` /
        ``until``: the runs that start in ``[since, until)``."""
        existing = set(self.tables())
        if "features" not in existing:
            return
        with self._history_filter(exclude_run_ids, since, until) as (where, params):
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE _dw_keep AS SELECT f.run_id FROM features f{where}", params
            )
            try:
                for name in PER_RUN_TABLES:
                    if name in existing:
                        table = self._query(
                            f"SELECT t.* FROM {_table(name)} t SEMI JOIN _dw_keep USING (run_id) ORDER BY t.run_id"
                        )
                        if name == "features" and "run_id" in table.columns:
                            self._check_one_row_per_run(table)
                        yield name, table
            finally:
                self.con.execute("DROP TABLE IF EXISTS _dw_keep")

    def _check_one_row_per_run(self, features: pl.DataFrame) -> None:
        """The stored ``features`` hold one row per run, as driftwatch writes them."""
        twice = features.filter(pl.col("run_id").is_duplicated())["run_id"]
        if twice.len():
            raise InputError(
                f"{self.path}: the audit state's features table holds run {twice[0]!r} more than once "
                f"({twice.n_unique():,} run(s) repeated); it is damaged or was changed by hand: restore a "
                "backup, or start a new state (a new --state folder or --db file)"
            )

    def history_window(
        self, *, exclude_run_ids: pl.Series | None = None, since: datetime | None = None,
        max_runs: int | None = None,
    ) -> tuple[datetime | None, int]:
        """Where the history the fleet stage loads starts, and how many runs it holds.

        ``since``, unless more than ``max_runs`` stored runs started since then: the history
        is then the most recent whole days (UTC) that hold at most ``max_runs`` runs (or, when
        the latest day alone holds more, the ``max_runs`` most recent runs), so that the fleet
        stage's memory stays bounded however long the history and however busy the fleet.

        Parameters
        ----------
        exclude_run_ids : polars.Series, optional
            Runs the current audit recomputes (not counted).
        since : datetime, optional
            The earliest start wanted (``--history-days`` before the new runs).
        max_runs : int, optional
            The most runs to load (``None``: no limit).

        Returns
        -------
        tuple
            ``(start, n_runs)``: pass ``start`` as :meth:`history`'s ``since``.
        """
        if "features" not in set(self.tables()):
            return since, 0
        with self._history_filter(exclude_run_ids, since) as (where, params):
            n = int(self.con.execute(f"SELECT count(*) FROM features f{where}", params).fetchall()[0][0])
            if max_runs is None or n <= max_runs:
                return since, n
            # the (max_runs + 1)-th most recent start; history begins the next day (whole days)
            last_out = self._query(  # (through Arrow: a TIMESTAMPTZ fetched as Python needs pytz)
                f"SELECT f.first_ts FROM features f{where} ORDER BY f.first_ts DESC LIMIT 1 OFFSET ?",
                [*params, max_runs],
            ).item()
            last_out = last_out.replace(tzinfo=UTC) if last_out.tzinfo is None else last_out.astimezone(UTC)
            day = datetime(last_out.year, last_out.month, last_out.day, tzinfo=UTC)
            start = day + timedelta(days=1)
            n = self._count_since(where, params, start)
            if n == 0:  # the latest day alone holds more than max_runs runs
                start = last_out + timedelta(microseconds=1)
                n = self._count_since(where, params, start)
            return start, n

    def _count_since(self, where: str, params: list[Any], start: datetime) -> int:
        cond = (where + " AND " if where else " WHERE ") + "f.first_ts >= ?"
        return int(self.con.execute(f"SELECT count(*) FROM features f{cond}", [*params, start]).fetchall()[0][0])

    @contextlib.contextmanager
    def _history_filter(
        self, exclude_run_ids: pl.Series | None, since: datetime | None, until: datetime | None = None
    ) -> Iterator[tuple[str, list[Any]]]:
        """The ``WHERE`` clause (over ``features f``) and its parameters for the history's runs;
        the excluded run ids are registered for the duration."""
        conds: list[str] = []
        params: list[Any] = []
        if since is not None:
            conds.append("f.first_ts >= ?")
            params.append(since)
        if until is not None:
            conds.append("f.first_ts < ?")
            params.append(until)
        excluded = exclude_run_ids if exclude_run_ids is not None and exclude_run_ids.len() else None
        with self._registered_ids(excluded, "_dw_excl") as ids:
            if ids is not None:
                conds.append(f"f.run_id NOT IN (SELECT run_id FROM {ids})")
            yield (" WHERE " + " AND ".join(conds)) if conds else "", params

    def known_runs(self, run_ids: pl.Series) -> int:
        """How many of ``run_ids`` (distinct) the history already holds."""
        if "features" not in self.tables() or not run_ids.len():
            return 0
        with self._registered_ids(run_ids) as ids:
            return int(self.con.execute(f"SELECT count(*) FROM features SEMI JOIN {ids} USING (run_id)").fetchall()[0][0])

    def stored_runs(self, run_ids: pl.Series) -> pl.Series:
        """Those of ``run_ids`` (distinct) the history holds a ``runs`` or ``features`` row of."""
        names = [n for n in ("runs", "features") if n in self.tables()]
        if not names or not run_ids.len():
            return pl.Series("run_id", [], dtype=pl.String)
        with self._registered_ids(run_ids) as ids:
            union = " UNION ".join(f"SELECT run_id FROM {_table(n)} SEMI JOIN {ids} USING (run_id)" for n in names)
            rows = self.con.execute(union).fetchall()
        return pl.Series("run_id", [r[0] for r in rows], dtype=pl.String)

    def watermark(self) -> datetime | None:
        """The latest event time audited so far (``None`` before the first audit)."""
        if "audits" not in self.tables() or "watermark" not in self._columns("audits"):
            return None
        value = self._query("SELECT max(watermark) AS w FROM audits")["w"][0]
        return value if isinstance(value, datetime) else None

    def counts(self) -> dict[str, int]:
        """Row count of every history table."""
        return {
            name: int(self.con.execute(f"SELECT count(*) FROM {_table(name)}").fetchone()[0])  # type: ignore[index]
            for name in self.tables()
        }


__all__ = ["DB_NAME", "FLEET_TIME_COLUMNS", "PER_RUN_TABLES", "TABLE_KEYS", "AuditState", "SourceFile", "file_hash"]
