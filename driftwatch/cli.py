"""The ``driftwatch`` command.

::

    driftwatch audit SOURCE... --out DIR [--policy FILE] [--format F] [--engine polars|duckdb|spark]
                     [--since T] [--until T] [--reference START..END|PATH] [--fail-on review|escalate]
                     [--quiet] [--state DIR | --db FILE] [--volume-per-day N]
    driftwatch validate SOURCE...          schema check and a summary of rejected rows
    driftwatch loops SOURCE...             repeating action cycles
    driftwatch drift SOURCE... --reference START..END|PATH
    driftwatch generate OUT --days N --runs-per-day N --seed N
    driftwatch report DIR                  rebuild DIR/report.html from the results files

Exit codes: 0 done; 1 done and some run reached ``--fail-on``; 2 bad input or
usage. Every error is one line on stderr (what, where, what to do), never a
traceback (set ``DRIFTWATCH_DEBUG=1`` to see one for unexpected errors).
Progress goes to stderr, only on a terminal and without ``--quiet``.

Examples
--------
>>> from driftwatch.cli import main
>>> main(["audit", "/no/such/folder", "--out", "/tmp/x", "--quiet"])
2
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

EXIT_OK = 0
EXIT_FAIL_ON = 1
EXIT_BAD_INPUT = 2

FORMATS = ("auto", "canonical", "otel", "openinference")
ENGINES = ("polars", "duckdb", "spark")


def _escape(c: int) -> str:
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


#: Characters a terminal obeys rather than shows (ESC starts colour, title and clear-screen
#: sequences; CR overwrites a line; a tab moves to a column; bidi controls reorder it):
#: printed as ``\\x1b`` / ``\\r`` / ``\\t`` / ``\\u202e``, so a log or a file name cannot drive
#: the terminal and shows as it is. Newline is left to the stream (the CLI's own line
#: breaks); :func:`_field` escapes it in text from the data.
_TERMINAL = {
    c: _escape(c)
    for c in (*range(0x0A), *range(0x0B, 0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F,
              *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)
} | {0x09: "\\t", 0x0D: "\\r"}
_FIELD = {**_TERMINAL, 0x0A: "\\n"}


def _count(n: int, noun: str) -> str:
    """``1 run``, ``2 runs``, ``1,234 runs``."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _field(value: Any) -> str:
    """Text from a log or a path, for one line of the terminal: every control character escaped."""
    return str(value).translate(_FIELD)


def _field_expr(name: str) -> Any:
    """:func:`_field` as a Polars expression on a text column (for tables printed by Polars)."""
    import polars as pl

    raw = [chr(c) for c in _FIELD]
    return pl.col(name).cast(pl.String).str.replace_many(raw, list(_FIELD.values()))


class _Escaped:
    """A text stream that escapes the control characters of everything written to it
    (:data:`_TERMINAL`): file names in error lines, log text in tables."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(text.translate(_TERMINAL))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _UsageError(Exception):
    """An argparse usage error, carried out of the parser as one line."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line naming the command and pointing at --help."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _build_parser() -> _Parser:
    p = _Parser(
        prog="driftwatch",
        description="Batch audits of LLM-agent logs: loops, change-points, drift, policy breaches, escalation scores.",
    )
    from driftwatch import __version__

    p.add_argument("--version", action="version", version=f"driftwatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def sources(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="Parquet file, folder (hive partitions too) or glob; several allowed")
        sp.add_argument("--format", choices=FORMATS, default="auto", help="input format (default: auto-detect)")
        sp.add_argument("--map", action="append", default=[], metavar="SRC=COLUMN",
                        help="read the input's column SRC as canonical COLUMN (e.g. --map Action=action); repeatable")

    a = sub.add_parser("audit", help="run every detector and write the results folder",
                       description="Run every detector over the logs and write the results folder.")
    sources(a)
    a.add_argument("--out", required=True, metavar="DIR", help="results folder (replaced as a whole, atomically)")
    a.add_argument("--policy", metavar="FILE", help="policy TOML (default: built-in policy)")
    a.add_argument("--engine", choices=ENGINES, default="polars", help="reader/compute engine (default: polars)")
    a.add_argument("--since", metavar="TIME", help="audit runs starting at or after this time (ISO-8601, UTC)")
    a.add_argument("--until", metavar="TIME", help="audit runs starting before this time (ISO-8601, UTC)")
    a.add_argument("--reference", metavar="START..END|PATH|GLOB",
                   help="drift reference: a time range or reference logs "
                        "(default: the first --drift-every of the data)")
    a.add_argument("--fail-on", choices=("review", "escalate"),
                   help="exit 1 when a run reaches this level (for CI and cron alerts)")
    a.add_argument("--quiet", "-q", action="store_true", help="no progress and no closing summary")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--state", metavar="DIR", help="incremental mode: state folder (holds audit.duckdb)")
    g.add_argument("--db", metavar="FILE", help="incremental mode: DuckDB state/history file")
    a.add_argument("--volume-per-day", type=_positive_float, metavar="N",
                   help="runs per day for the cost projection (default: the observed volume)")
    a.add_argument("--every", default="1d", metavar="DUR", help="change-point bucket (default: 1d)")
    a.add_argument("--drift-every", default="7d", metavar="DUR", help="drift window (default: 7d)")
    a.add_argument("--load-every", default="1m", metavar="DUR", help="load-curve bucket (default: 1m)")
    a.add_argument("--by", default="agent", metavar="COLS", help="series columns, comma-separated (default: agent)")
    a.add_argument("--chunks", default="auto", metavar="N|auto",
                   help="chunks of whole runs for the per-run stage (default: auto: one if the log "
                        "fits in memory, else 2M rows each)")
    a.add_argument("--history-days", type=_positive_float, default=90.0, metavar="DAYS",
                   help="incremental mode: days of history the fleet stage sees (default: 90)")
    a.add_argument("--history-max-runs", type=_positive_int, default=3_000_000, metavar="N",
                   help="incremental mode: the most history runs loaded; on a busier fleet only the most "
                        "recent whole days that fit (default: 3000000)")

    v = sub.add_parser("validate", help="check the schema and summarise rejected rows",
                       description="Read the logs, check the schema and summarise rejected rows.")
    sources(v)
    v.add_argument("--engine", choices=("polars", "duckdb"), default="polars")
    v.add_argument("--strict", action="store_true",
                   help="exit 1 when any row is rejected (spans that are not steps, such as a trace's root span, "
                        "do not count)")

    lo = sub.add_parser("loops", help="find repeating action cycles",
                        description="Find repeating action cycles in every run.")
    sources(lo)
    lo.add_argument("--out", metavar="FILE", help="also write all loops to this Parquet file")
    lo.add_argument("--max-period", type=int, default=8)
    lo.add_argument("--min-repeats", type=int, default=3)
    lo.add_argument("--no-fuzzy", action="store_true", help="exact matching of args/results only")
    lo.add_argument("--top", type=_nonneg_int, default=20, help="rows to print (default: 20)")

    d = sub.add_parser("drift", help="compare current windows with a reference period",
                       description="Compare current windows with a reference period, per agent.")
    sources(d)
    d.add_argument("--reference", required=True, metavar="START..END|PATH|DURATION",
                   help="a time range, reference logs, or a duration from the start such as 14d")
    d.add_argument("--every", default="7d", metavar="DUR", help="window length (default: 7d)")
    d.add_argument("--by", default="agent", metavar="COLS")
    d.add_argument("--min-runs", type=_min_runs, default=20, metavar="N",
                   help="runs a series needs in the reference and in a window to be tested (default: 20)")
    d.add_argument("--out", metavar="FILE", help="also write all rows to this Parquet file")
    d.add_argument("--all", action="store_true", help="print every row, not only drifted ones")

    ge = sub.add_parser("generate", help="write a synthetic fleet with ground truth",
                        description="Write a seeded synthetic fleet (events + truth tables) as Parquet.")
    ge.add_argument("out", metavar="OUT", help="folder to write (events/date=.../part-0.parquet, truth/)")
    ge.add_argument("--days", type=_positive_int, default=30, help="days of traffic (default: 30)")
    ge.add_argument("--runs-per-day", type=_runs_per_day, default=400,
                    help=f"runs per day, at most {MAX_RUNS_PER_DAY:,} (default: 400)")
    ge.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same files (default: 0)")
    ge.add_argument("--start", default="2026-10-01", help="first day (default: 2026-10-01)")
    ge.add_argument("--stable", action="store_true", help="inject nothing (a clean fleet)")

    r = sub.add_parser("report", help="rebuild report.html from a results folder",
                       description="Rebuild DIR/report.html from the results files in DIR.")
    r.add_argument("dir", metavar="DIR")
    return p


_Num = TypeVar("_Num", int, float)


def _positive(text: str, kind: type[_Num], what: str) -> _Num:
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}") from None
    if not v > 0 or (isinstance(v, float) and not math.isfinite(v)):  # (float() reads "inf" and "nan")
        raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    """A positive finite number: ``inf`` and ``nan`` are refused."""
    return _positive(text, float, "finite number")


def _positive_int(text: str) -> int:
    return _positive(text, int, "integer")


def _min_runs(text: str) -> int:
    """At least 2 runs: a sample of one has no spread to test."""
    v = _positive_int(text)
    if v < 2:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 2 (a sample needs a spread), got {text!r}")
    return v


#: The most runs per day ``driftwatch generate`` accepts: a day is generated in memory, about
#: 17 KB per run (1M runs/day is about 17 GB at peak); a typo'd 100000000 was killed by the OS.
MAX_RUNS_PER_DAY = 1_000_000


def _runs_per_day(text: str) -> int:
    v = _positive_int(text)
    if v > MAX_RUNS_PER_DAY:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_RUNS_PER_DAY:,} (each day is generated in memory, about 17 KB per run), got {text!r}; "
            "spread the runs over more --days"
        )
    return v


def _nonneg_int(text: str) -> int:
    """An integer >= 0 (``--top 0`` prints no rows; ``-1`` printed all but the last)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


class _Progress:
    """Progress lines on stderr with elapsed time (only on a terminal, never with --quiet)."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {message}", file=self.stream, flush=True)


def _column_map(pairs: list[str]) -> dict[str, str] | None:
    """``--map SRC=COLUMN`` options as a column map (``None`` when there are none)."""
    from driftwatch.errors import InvalidParameterError

    out: dict[str, str] = {}
    for pair in pairs:
        src, sep, dst = pair.rpartition("=")  # (the last "=": canonical names hold none)
        if not sep or not src.strip() or not dst.strip():
            raise InvalidParameterError(f"--map expects SRC=COLUMN (e.g. --map Action=action), got {pair!r}")
        src, dst = src.strip(), dst.strip()
        if out.get(src, dst) != dst:
            raise InvalidParameterError(f"--map gives column {src!r} twice ({src}={out[src]} and {src}={dst}); "
                                        "a column maps to one canonical column")
        out[src] = dst
    return out or None


def _by(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _chunks(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        from driftwatch.errors import InvalidParameterError

        raise InvalidParameterError(f"--chunks: expected 'auto' or a positive integer, got {text!r}")
    return n


def _one(sources: Sequence[str]) -> str | list[str]:
    return sources[0] if len(sources) == 1 else list(sources)


# --------------------------------------------------------------------------- commands


def _check_state_args(args: argparse.Namespace) -> None:
    """Options that cannot go with --state/--db, refused before the database file is made."""
    from driftwatch.audit import SPARK_WITH_STATE, WINDOW_WITH_STATE
    from driftwatch.errors import InvalidParameterError

    if args.since or args.until:
        raise InvalidParameterError(WINDOW_WITH_STATE)
    if args.engine == "spark":
        raise InvalidParameterError(SPARK_WITH_STATE)
    from driftwatch._io import check_state_outside_results

    check_state_outside_results(Path(args.db if args.db else Path(args.state) / "audit.duckdb"), Path(args.out))


def _cmd_audit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from driftwatch.audit import NothingToAudit, audit

    progress = _Progress(err, enabled=err.isatty() and not args.quiet)
    state: Any = None
    if args.reference:
        _reference_kind(args.reference, durations=False)  # a missing reference path is said as such, before any work
    for flag, value in (("--state", args.state), ("--db", args.db)):
        if value is not None and not value.strip():  # an unset variable in a cron line
            from driftwatch.errors import InvalidParameterError

            raise InvalidParameterError(
                f"{flag} is empty; expected a {'folder' if flag == '--state' else 'DuckDB file'} for the audit "
                "history (without it the audit is not incremental and every night audits everything again)"
            )
    if args.state is not None or args.db is not None:
        from driftwatch.state import AuditState

        _check_state_args(args)  # before the state database is created
        state = AuditState.open(state_dir=args.state, db=args.db)
    try:
        result = audit(
            _one(args.sources),
            policy=args.policy,
            reference=args.reference,
            out=args.out,
            engine=args.engine,
            since=args.since,
            until=args.until,
            chunks=_chunks(args.chunks),
            format=args.format,
            column_map=_column_map(args.map),
            volume_per_day=args.volume_per_day,
            every=args.every,
            drift_every=args.drift_every,
            load_every=args.load_every,
            by=_by(args.by),
            state=state,
            history_days=args.history_days,
            history_max_runs=args.history_max_runs,
            progress=progress,
        )
    except NothingToAudit as exc:
        if not args.quiet:
            print(f"driftwatch: {_field(exc)}", file=out)
        return EXIT_OK
    finally:
        if state is not None:
            state.close()
    lv = result.level_counts()
    report = Path(args.out).absolute() / "report.html"
    if not args.quiet:
        s = result.summary()
        window = (
            f"{s['rows_analysed']:,} rows in the --since/--until window; "
            if s.get("since") or s.get("until") else ""
        )
        print(
            f"audited {_count(s['runs'], 'run')} ({window}{s['rows_valid']:,} of {s['rows_in']:,} rows "
            f"{'read ' if window else ''}valid, {s['rows_rejected']:,} rejected): "
            f"ok {lv['ok']:,}, review {lv['review']:,}, escalate {lv['escalate']:,}",
            file=out,
        )
        if s.get("history_replaced_runs"):
            print(
                f"note: {s['history_replaced_runs']:,} of these runs were audited before; their stored results "
                "were replaced (a run split over files audited on different nights, or run ids reused by another source)",
                file=out,
            )
        print(
            f"loops {s['loops']['total']:,} in {_count(s['loops']['runs_with_loops'], 'run')} · policy breaches "
            f"{s['violations']['total']:,} · change-points {_changes(s)} · drifted rows {s['drift']['drifted']:,} "
            f"· load knees {s['load']['knees']:,}",
            file=out,
        )
        print(f"results: {_field(Path(args.out).absolute())}", file=out)
        print(f"report: {_field(report)}", file=out)
    if args.fail_on == "review" and (lv["review"] + lv["escalate"]) > 0:
        return EXIT_FAIL_ON
    if args.fail_on == "escalate" and lv["escalate"] > 0:
        return EXIT_FAIL_ON
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import polars as pl

    from driftwatch.audit import _reading, naming_read_failures
    from driftwatch.read import read_logs
    from driftwatch.schema import validate_events

    rr = read_logs(_one(args.sources), format=args.format, engine=args.engine, column_map=_column_map(args.map))
    events = rr.events
    where = ", ".join(args.sources)
    validate_events(events, where=where)
    st = rr.stats
    lf = events.lazy() if isinstance(events, pl.DataFrame) else events
    # every column the detectors are given is decoded once (the reader's checking pass skips
    # args, result, version, ...: a damaged page there passed validate and failed the audit)
    decoded = [pl.col(c).str.len_bytes().sum() if t == pl.String else pl.col(c).max()
               for c, t in lf.collect_schema().items() if c != "run_id"]
    with naming_read_failures(args.sources, otherwise=where):
        counts = _reading(lambda: lf.select(pl.col("run_id").n_unique(), *decoded).collect(engine="streaming"))
    n_runs = counts.item(0, 0)
    n_files = st["files"]
    print(
        f"{_field(where)}: {st['rows_in']:,} rows in {n_files} file(s): {st['rows_valid']:,} valid "
        f"({_count(n_runs, 'run')}), {st['rows_rejected']:,} rejected; schema OK",
        file=out,
    )
    rej = rr.rejected if isinstance(rr.rejected, pl.DataFrame) else rr.rejected.collect()
    if rej.height:
        _say_rejected_by_reason(rej, out)
        # spans that are not steps by design (a trace's root agent span, chains) are how span
        # exports look, not bad rows: --strict fails on the others
        if args.strict and (rej["reason"] != "not_a_step").any():
            return EXIT_FAIL_ON
    return EXIT_OK


#: Files listed per rejection reason by ``driftwatch validate`` (the rest are counted).
FILES_PER_REASON = 10


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _say_rejected_by_reason(rej: Any, out: TextIO) -> None:
    """Every reason of the rejected rows with its total, most rows first, and the files it is
    in: one line for a reason in one file, else at most :data:`FILES_PER_REASON` files (most
    rows first) and ``… and N more files (M rows)``."""
    import polars as pl

    if "source_file" not in rej.columns:
        rej = rej.with_columns(pl.lit(None, dtype=pl.String).alias("source_file"))
    per_file = rej.group_by("reason", "source_file").agg(pl.len().alias("rows"))
    per_reason = per_file.group_by("reason").agg(pl.col("rows").sum(), pl.len().alias("files")).sort(
        ["rows", "reason"], descending=[True, False], nulls_last=True)
    for reason, rows, n_files in per_reason.iter_rows():
        files = per_file.filter(pl.col("reason").eq_missing(reason)).sort(
            ["rows", "source_file"], descending=[True, False], nulls_last=True)
        head = f"  rejected {rows:,} row(s): {_field(reason)}"
        if n_files == 1:
            file = files.item(0, "source_file")
            print(head + (f" in {_field(file)}" if file is not None else ""), file=out)
            continue
        print(f"{head} in {n_files:,} files", file=out)
        for file, n in files.head(FILES_PER_REASON).select("source_file", "rows").iter_rows():
            print(f"    {n:,} row(s) in {_field(file)}", file=out)
        if n_files > FILES_PER_REASON:
            more = files.slice(FILES_PER_REASON)
            print(f"    … and {_plural(more.height, 'more file')} ({_plural(int(more['rows'].sum()), 'row')})",
                  file=out)


def _cmd_loops(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import polars as pl

    from driftwatch._io import atomic_write_parquet
    from driftwatch.audit import naming_read_failures
    from driftwatch.loops import detect_loops
    from driftwatch.read import read_logs

    _check_out_file(args.out, args.sources, example="loops.parquet")
    rr = read_logs(_one(args.sources), format=args.format, column_map=_column_map(args.map))
    with naming_read_failures(args.sources):  # a damaged page in a column the reader does not check
        loops = detect_loops(  # (the ReadResult: its events were checked by the reader, not again)
            rr, max_period=args.max_period, min_repeats=args.min_repeats, fuzzy=not args.no_fuzzy
        )
    if args.out is not None:
        atomic_write_parquet(loops, args.out)
    kinds = {k: n for k, n in loops["kind"].value_counts().sort("kind").iter_rows()} if loops.height else {}
    print(
        f"{_count(loops.height, 'loop')} in {_count(loops['run_id'].n_unique() if loops.height else 0, 'run')}"
        + (" (" + ", ".join(f"{k} {n:,}" for k, n in kinds.items()) + ")" if kinds else ""),
        file=out,
    )
    if loops.height:
        n_top = min(args.top, loops.height)  # (a --top beyond 2**63 overflowed Polars' head)
        top = loops.sort(["wasted_cost_usd", "run_id"], descending=[True, False], nulls_last=True).head(n_top)
        top = top.select("run_id", "agent", "kind", "pattern", "repeats", "start_step", "end_step",
                         "wasted_steps", "wasted_cost_usd")
        # log text escaped before Polars lays out the table (a newline in an action split a row)
        top = top.with_columns(_field_expr(c) for c, t in top.schema.items() if t in (pl.String, pl.Categorical))
        with pl.Config(tbl_rows=n_top, tbl_cols=10, fmt_str_lengths=40, tbl_width_chars=160):
            print(top, file=out)
    if args.out is not None:
        print(f"wrote {_field(Path(args.out).absolute())}", file=out)
    _say_rejected(rr, out)
    return EXIT_OK


def _changes(summary: dict[str, Any]) -> str:
    """Change-points as counted in the headline: the changes, then their metric rows when more
    (one change moves several metrics: ``5 (14 metric rows)``)."""
    rows = int(summary.get("changepoints") or 0)
    changes = int(summary.get("changepoint_changes", rows) or 0)
    return f"{changes:,}" + (f" ({rows:,} metric rows)" if rows != changes else "")


def _say_rejected(rr: Any, out: TextIO) -> None:
    """One line when the reader rejected rows: they are not in the numbers above."""
    n = int(getattr(rr.stats, "rows_rejected", 0) or 0)
    if n:
        print(f"note: {n:,} of {int(rr.stats.rows_in):,} rows were rejected and are not analysed; "
              "driftwatch validate SOURCE lists the reasons", file=out)


def _check_out_file(path: str | None, sources: Sequence[str], *, example: str) -> None:
    """Refuse an empty --out (an unset variable in a cron line: nothing was written, silently),
    and an --out file that is one of the logs being read, inside a logs folder, or one that a
    SOURCE glob would read (the file was replaced by the results; inside a folder or under a
    glob it becomes a log of the next read, which then fails)."""
    if path is None:
        return
    from driftwatch._io import resolved
    from driftwatch.errors import InvalidParameterError
    from driftwatch.read import PARQUET_SUFFIXES, resolve_sources

    if not path.strip():
        raise InvalidParameterError(
            f"--out is empty; expected a Parquet file name such as {example} (without --out nothing is written)"
        )
    target = resolved(path)
    folders = [Path(s).resolve() for s in sources if Path(s).is_dir()]
    files = {Path(f).resolve() for f in resolve_sources(list(sources))}
    globs = [s for s in sources if _is_glob(s)]
    if target in files or any(d == target or d in target.parents for d in folders):
        raise InvalidParameterError(
            f"--out {path}: is one of the logs being read, or inside their folder; write the results elsewhere"
        )
    hit = next((g for g in globs if _glob_reads(g, target)), None)
    if hit is not None:
        raise InvalidParameterError(
            f"--out {path}: the SOURCE pattern {hit} matches it (or a folder it is in), so the next read of the "
            "logs would take the results for logs; write the results elsewhere"
        )
    if target.name.lower().endswith(PARQUET_SUFFIXES):  # (a name a read of that folder takes)
        # (e.g. events/date=2026-10-0[1-3]/*.parquet and --out events/date=2026-10-05/x.parquet)
        root = next(((g, b) for g in globs if (b := _partitions_root(g)) is not None and b in target.parents), None)
        if root is not None:
            raise InvalidParameterError(
                f"--out {path}: is inside {root[1]}, the folder of the log folders the SOURCE pattern {root[0]} "
                "reads, so a read of those logs (that folder, or a wider pattern) would take the results for "
                "logs; write the results elsewhere"
            )


def _is_glob(source: str) -> bool:
    """Whether the reader takes ``source`` as a glob (it has wildcards and names no existing path)."""
    import glob

    return glob.has_magic(source) and not os.path.exists(os.path.expanduser(source))


def _split_glob(pattern: str) -> tuple[Path, tuple[str, ...]]:
    """A glob as its fixed folder (absolute, links followed) and the parts from its first wildcard on."""
    import glob

    parts = Path(os.path.abspath(os.path.expanduser(pattern))).parts
    fixed = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
    try:  # (links followed, as the --out path's)
        base = Path(*parts[:fixed]).resolve()
    except (OSError, RuntimeError):
        base = Path(*parts[:fixed])
    return base, parts[fixed:]


def _partitions_root(pattern: str) -> Path | None:
    """The fixed folder of a glob with a wildcard in a folder part (``events/*/*.parquet``,
    ``logs/**/x.parquet``: ``events``, ``logs``), the root of the log folders it reads; ``None``
    for a glob whose only wildcard is in the file name (``*.parquet`` in the working folder)."""
    import glob

    base, pats = _split_glob(pattern)
    return base if any(glob.has_magic(p) for p in pats[:-1]) else None


def _glob_reads(pattern: str, target: Path) -> bool:
    """Whether reading the glob ``pattern`` would take the file ``target`` (absolute, links
    followed): the pattern matches it, or one of its folders (a matched folder is read whole).
    ``**`` matches any number of folders; the wildcards match as :func:`fnmatch.fnmatchcase`
    (a hidden or ``_``-prefixed name the reader would skip counts too: refused, not read)."""
    import fnmatch

    base, pats = _split_glob(pattern)
    try:
        names = target.relative_to(base).parts
    except ValueError:
        return False

    def match(left: tuple[str, ...], j: int) -> bool:  # path parts against pats[j:] (a few: no rows)
        if j == len(pats):
            return not left
        if pats[j] == "**":
            return any(match(left[k:], j + 1) for k in range(len(left) + 1))
        return bool(left) and fnmatch.fnmatchcase(left[0], pats[j]) and match(left[1:], j + 1)

    return any(match(names[:k], 0) for k in range(1, len(names) + 1))


def _cmd_drift(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import polars as pl

    from driftwatch._io import atomic_write_parquet
    from driftwatch.audit import naming_read_failures, parse_reference
    from driftwatch.drift import _collecting_notes, detect_drift
    from driftwatch.read import read_logs

    cmap = _column_map(args.map)
    _check_out_file(args.out, args.sources, example="drift.parquet")
    kind = _reference_kind(args.reference)
    rr = read_logs(_one(args.sources), format=args.format, column_map=cmap)
    ref: Any = args.reference
    if kind == "range":
        ref = parse_reference(ref)
    elif kind == "logs":
        ref = _read_reference(ref, args.format, cmap)
    # a damaged page in a column the reader does not check, in the logs or the reference logs
    with naming_read_failures([*args.sources, args.reference] if kind == "logs" else args.sources), \
            _collecting_notes() as why:  # why nothing was compared, when so (said below, not warned)
        rows = detect_drift(rr, reference=ref, every=args.every, by=_by(args.by), min_runs=args.min_runs)
    if args.out is not None:
        atomic_write_parquet(rows, args.out)
    drifted = rows.filter(pl.col("drifted")) if rows.height else rows
    new = rows.filter(pl.col("feature") == "no_reference") if rows.height else rows
    tests = rows.height - new.height
    print(f"{tests:,} tests, {drifted.height:,} drifted", file=out)
    if new.height:
        print(f"not compared (no reference runs): {', '.join(_field(s) for s in new['series'].unique(maintain_order=True))}",
              file=out)
    _say_rejected(rr, out)
    if not tests:
        print(_why_no_window(rr, ref, kind, args, why), file=out)
    show = rows if args.all else drifted
    for r in show.iter_rows(named=True):
        mark = "DRIFT" if r.get("drifted") else "  new" if r.get("feature") == "no_reference" else "  ok "
        print(
            f"{mark} {_field(r.get('series'))} {_window_text(r.get('window_start'), r.get('window_end'))} "
            f"{_field(r.get('feature'))}: {_field(r.get('explain') or '')}",
            file=out,
        )
    if args.out is not None:
        print(f"wrote {_field(Path(args.out).absolute())}", file=out)
    return EXIT_OK


def _read_reference(ref: str, format: str, cmap: dict[str, str] | None) -> Any:
    """The reference logs read as the logs are; an error that they cannot be read (a file
    without the event columns, such as a results file) names them as the ``--reference`` (the
    file's name alone read as one of the logs)."""
    from driftwatch.errors import InputError, SchemaError
    from driftwatch.read import read_logs

    try:
        return read_logs(ref, format=format, column_map=cmap)
    except (InputError, SchemaError) as exc:
        text = str(exc)
        raise type(exc)(f"--reference {text}" if text.startswith(f"{ref}:") else f"--reference {ref}: {text}") \
            from None


def _looks_like_path(text: str) -> bool:
    """A --reference value that names a file or folder (``../cli/ref.parquet``, ``refs/``), not
    a time range or a duration (ISO times hold no slash)."""
    seps = {"/", os.sep, *(os.altsep or "")}
    return any(c in text for c in seps) or bool(re.search(r"\.(parquet|pq|jsonl?)$", text, re.IGNORECASE))


def _reference_kind(ref: str, *, durations: bool = True) -> str:
    """What a --reference value is: ``"logs"`` (an existing path or a glob, ``..`` in it or not),
    ``"range"`` (``START..END``) or ``"duration"`` (``14d``). A path that does not exist is refused
    as such (it was read as a range with an empty start, or a bad duration)."""
    import glob

    from driftwatch.errors import NoInputError

    if Path(ref).exists() or glob.has_magic(ref):
        return "logs"
    if _looks_like_path(ref):
        raise NoInputError(
            f"--reference {ref}: no such file or folder; check the path, or give a time range START..END"
            + (" or a duration such as 14d" if durations else "")
        )
    return "range" if ".." in ref else "duration"


def _window_text(start: Any, end: Any) -> str:
    """A drift window as printed: its UTC dates when it starts and ends on UTC midnight
    (``2026-10-01..2026-10-08``), else its UTC times (``2026-10-08T12:00Z..2026-10-09T00:00Z``)."""
    if not (isinstance(start, datetime) and isinstance(end, datetime)):
        return f"{str(start)[:10]}..{str(end)[:10]}"
    start, end = (t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC) for t in (start, end))
    if all(t.hour == t.minute == t.second == t.microsecond == 0 for t in (start, end)):
        return f"{start.date()}..{end.date()}"

    def iso(t: datetime) -> str:
        spec = "microseconds" if t.microsecond else "seconds" if t.second else "minutes"
        return t.replace(tzinfo=None).isoformat(timespec=spec) + "Z"

    return f"{iso(start)}..{iso(end)}"


def _why_no_window(rr: Any, ref: Any, kind: str, args: argparse.Namespace, why: Sequence[str] = ()) -> str:
    """The note when drift tested nothing: no run left to compare (``why``, from the drift
    functions: with reference logs, every run of the logs is also in them), no run after the
    reference, or too few runs."""
    import polars as pl

    from driftwatch._frames import duration

    if why:  # (the library's words, with the flags that set what they name)
        said = why[0].replace("min_runs=", "--min-runs ").replace("a smaller min_runs", "a smaller --min-runs")
        said = "note: no window could be tested: " + said.replace("longer windows", "longer windows (--every)")
    if kind == "logs":
        if why:
            return said
        return (f"note: no window could be tested: a series needs at least {args.min_runs} runs in the reference"
                f" logs and {args.min_runs} in a window of the runs they do not hold (--min-runs; windows are"
                f" --every {args.every} long)")
    few = (f"note: no window could be tested: a series needs at least {args.min_runs} runs in the reference"
           f" and {args.min_runs} in a window after it (--min-runs; windows are --every {args.every} long)")
    events = rr.events.lazy() if isinstance(rr.events, pl.DataFrame) else rr.events
    starts = events.group_by("run_id").agg(pl.col("ts").min().alias("t")).select(
        pl.col("t").min().alias("lo"), pl.col("t").max().alias("hi")).collect()
    lo, hi = starts["lo"].item(), starts["hi"].item()
    if lo is None or hi is None:
        return few
    if hi.tzinfo is None:
        hi = hi.replace(tzinfo=UTC)
    if kind == "range":
        end = ref[1]
    else:  # from UTC midnight of the first run's day, as detect_drift measures it
        start = datetime(lo.year, lo.month, lo.day, tzinfo=UTC)
        if ref == "auto":  # (a quarter of the data's span, one to four windows)
            from driftwatch.drift import auto_reference_length

            length = auto_reference_length(hi - start, duration(args.every, name="every"))
        else:
            length = duration(ref, name="reference")
        end = start + length
    if hi < end:
        advice = (f"--reference auto is at least one window (--every {args.every}): give a shorter --every or "
                  "a shorter --reference such as 1d" if ref == "auto" else "give a shorter or earlier --reference")
        return (f"note: no window could be tested: no run starts after the reference (it ends "
                f"{end.isoformat(sep=' ')}, the last run starts {hi.isoformat(sep=' ', timespec='seconds')}); "
                + advice)
    return said if why else few


def _cmd_generate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from driftwatch import synth

    scenario = synth.Scenario.stable() if args.stable else None
    counts = synth.write_fleet(
        args.out, days=args.days, runs_per_day=args.runs_per_day, seed=args.seed, start=args.start,
        scenario=scenario,
    )
    print(
        f"wrote {counts['events']:,} events in {counts['runs']:,} runs over {counts['days']} days to "
        f"{_field(Path(args.out).absolute())}",
        file=out,
    )
    return EXIT_OK


def _cmd_report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from driftwatch.report import rebuild

    path = rebuild(args.dir)
    print(f"report: {_field(path.absolute())}", file=out)
    return EXIT_OK


_COMMANDS = {
    "audit": _cmd_audit,
    "validate": _cmd_validate,
    "loops": _cmd_loops,
    "drift": _cmd_drift,
    "generate": _cmd_generate,
    "report": _cmd_report,
}


class _PipeSafe:
    """A text stream that stops writing, quietly, once its reader has gone away (``driftwatch
    loops ... | head``): the command's work is done and its files written, so its exit code
    stands, and no "Broken pipe" error blames the input."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.broken = True

    def isatty(self) -> bool:
        return self.stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code (0 done, 1 ``--fail-on`` reached, 2 bad input or usage).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).
    stdout, stderr : text streams, optional
        Where results and errors go (default: the process's). A reader of ``stdout`` or
        ``stderr`` that goes away early (``| head``) stops the printing to it, quietly; the exit
        code is the command's.
    """
    # a descriptor closed before the start (`>&-`, `2>&-`): Python sets the stream to None
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stream, for its life
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - (as above)
    out = _PipeSafe(stdout or sys.stdout)
    err = _PipeSafe(stderr or sys.stderr)  # (an error line to a closed stderr must not change the exit code)
    try:
        with warnings.catch_warnings():
            # numpy's floating-point notes (an infinite cost sum, NaN in a statistic) are not
            # errors of the audit, whose results say what they are; stderr is for what is wrong
            warnings.filterwarnings("ignore", category=RuntimeWarning,
                                    message=r"(overflow|invalid value|divide by zero) encountered")
            return _main(argv, _Escaped(out), _Escaped(err))  # type: ignore[arg-type]
    finally:
        for stream, own in ((out, stdout is None), (err, stderr is None)):
            stream.flush()  # (also what went to sys.stdout directly: --help, --version)
            if stream.broken and own:
                _point_at_devnull(stream.stream)


def _point_at_devnull(stream: TextIO) -> None:
    """Send the process's ``stream`` (whose reader has gone away) to /dev/null: the interpreter
    flushes sys.stdout and sys.stderr again at exit, and a failure there exits 120."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a file (replaced by a test's capture): nothing flushes it at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _main(argv: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
    from driftwatch.errors import DriftwatchError, InvalidParameterError, SchemaError

    parser = _build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except _UsageError as exc:
        print(_field(exc), file=err)
        return EXIT_BAD_INPUT
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    if not args.command:
        print("driftwatch: a command is required: audit, validate, loops, drift, generate or report "
              "(see 'driftwatch --help')", file=err)
        return EXIT_BAD_INPUT
    try:
        return _COMMANDS[args.command](args, out, err)
    except DriftwatchError as exc:
        text = _one_line(exc)
        if isinstance(exc, InvalidParameterError):  # (not a path's error: a SOURCE may be named 'out')
            text = _named_flag(text, parser, args.command)
        elif isinstance(exc, SchemaError):  # (a column option's: unless its first word is a path given)
            text = _named_flag(text, parser, args.command, paths=_path_args(args))
        print(f"driftwatch {args.command}: error: {text}{_hint(exc)}", file=err)
        return EXIT_BAD_INPUT
    except MemoryError:
        less = {"generate": "fewer --runs-per-day (more --days)",
                "audit": "--chunks N, a narrower --since/--until"}.get(args.command, "fewer or smaller SOURCE files")
        print(f"driftwatch {args.command}: error: out of memory; give it less to hold at once ({less}) "
              "or run it on a machine with more memory", file=err)
        return EXIT_BAD_INPUT
    except OSError as exc:
        where = f" {_field(exc.filename)}:" if exc.filename else ""
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        hint = "the disk is full: free some space or write elsewhere" if full else "check the path and permissions"
        print(f"driftwatch {args.command}: error:{where} {_one_line(exc)}; {hint}", file=err)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"driftwatch {args.command}: interrupted; previous results are left as they were", file=err)
        return 130
    except Exception as exc:  # a bug: still one line, unless debugging
        if os.environ.get("DRIFTWATCH_DEBUG"):
            raise
        print(
            f"driftwatch {args.command}: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with DRIFTWATCH_DEBUG=1 for the traceback and please report it)",
            file=err,
        )
        return EXIT_BAD_INPUT
    except BaseException as exc:  # a panic inside Polars (pyo3's PanicException is no Exception)
        if type(exc).__name__ != "PanicException" or os.environ.get("DRIFTWATCH_DEBUG"):
            raise
        print(
            f"driftwatch {args.command}: internal error: the engine panicked: {_one_line(exc)} "
            "(rerun with DRIFTWATCH_DEBUG=1 for the traceback and please report it)",
            file=err,
        )
        return EXIT_BAD_INPUT


#: Library parameters that the CLI spells otherwise: the keyword -> the option's ``dest``.
_LIBRARY_NAMES = {"column_map": "map"}

#: detect_drift's message for a ``by`` column the events (or the reference events) lack.
_BY_MISSING = re.compile(r"(?:events|reference): by column\(s\) (.*?) not in (events|the reference events);")


def _named_flag(text: str, parser: argparse.ArgumentParser, command: str, *, paths: Collection[str] = ()) -> str:
    """``text`` with the option named as typed when it starts with the keyword of a flag of
    ``command`` (``max_period must be ...`` -> ``max_period (--max-period) must be ...``;
    ``column_map maps ...`` -> ``column_map (--map) maps ...``), and a missing ``by`` column said
    as the ``--by`` it is. A first word that is one of ``paths`` (a SOURCE named ``out``) is a
    path's, and left as it is."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    sub = subs[0].choices.get(command) if subs else None

    def flag(dest: str) -> str | None:
        return next((o for a in (sub._actions if sub else ()) if a.dest == dest
                     for o in a.option_strings if o.startswith("--")), None)

    by = _BY_MISSING.match(text)
    if by and flag("by"):
        where = "the events" if by.group(2) == "events" else f"the reference logs ({flag('reference')})"
        return f"by ({flag('by')}): column(s) {by.group(1)} not in {where};{text[by.end():]}"
    m = re.match(r"([a-z][a-z0-9_]*)(?=[ :])", text)
    if not m or m.group(1) in paths or text[m.end():].lstrip().startswith("(--"):
        return text
    option = flag(_LIBRARY_NAMES.get(m.group(1), m.group(1)))
    return f"{m.group(1)} ({option}){text[m.end():]}" if option else text


def _path_args(args: argparse.Namespace) -> set[str]:
    """The values of the command's path arguments (SOURCE, --out, --reference, ...), as typed."""
    values = [*getattr(args, "sources", ()), *(getattr(args, k, None) for k in
                                              ("out", "reference", "policy", "state", "db", "dir"))]
    return {v for v in values if isinstance(v, str)}


def _hint(exc: BaseException) -> str:
    """What to do, for errors whose message only says what is wrong."""
    from driftwatch.errors import CorruptFileError, NoInputError

    text = str(exc).lower()
    if isinstance(exc, CorruptFileError) and "re-export" not in text and "rerun" not in text:
        return "; re-export the file or leave it out of SOURCE"
    if isinstance(exc, NoInputError) and not any(w in text for w in ("check", "nothing to do", "expected")):
        return "; check the path or glob"
    return ""


def _one_line(exc: BaseException) -> str:
    """An error's message on one line, as it is: spaces kept (file names are exact), line
    breaks, tabs and other control characters escaped (``\\n``, ``\\t``, ``\\x1b``)."""
    text = str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
    text = text.rstrip().lstrip("\r\n")  # (not leading spaces: the message may start with a file name)
    return _field(text or type(exc).__name__)


__all__ = ["EXIT_BAD_INPUT", "EXIT_FAIL_ON", "EXIT_OK", "main"]
