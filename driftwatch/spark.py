"""The audit on Apache Spark: the per-event work runs distributed, the fleet stage on the driver.

Install with ``pip install 'driftwatch[spark]'`` (PySpark 4 and a Java 17+ runtime).

How it works
------------
1. The raw rows (canonical Parquet read by Spark, or a PySpark DataFrame) get an order key
   (file, row: the reader's "first one read" order) and ``bucket = pmod(xxhash64(run_id),
   n_buckets)``: every run lies whole inside one bucket, and each bucket holds many runs.
2. ``groupBy("bucket").applyInArrow(fn, schema)`` hands each bucket to ``fn`` as a
   ``pyarrow.Table``. ``fn`` converts it to Polars and runs exactly what the local engine
   runs: the reader's conversion and row checks (:func:`driftwatch.formats.adapt`,
   :func:`driftwatch.schema.conform`, duplicate ``(run_id, step)`` rows, which are
   always within one run), the ``--since/--until`` window, then
   :func:`driftwatch.audit.run_stage`. There is one implementation of each detector.
3. ``applyInArrow`` returns one schema, but a bucket yields several tables
   (:class:`~driftwatch.audit.RunTables`, its rejected rows and its row counts). Each
   bucket therefore returns rows ``(bucket, table, part, data)`` where ``data`` is one
   table (or a slice of at most :data:`PART_ROWS` rows) as an LZ4-compressed Arrow IPC
   stream written by Polars. Every dtype survives exactly (lists, time zones), the stage
   runs once per bucket, and only the small per-run results travel.
4. The driver collects those rows (``DataFrame.toArrow``), decodes them,
   :meth:`RunTables.concat` puts them in canonical order, and
   :func:`driftwatch.audit.fleet_stage` computes change-points, drift, scores, costs and
   load, exactly as the local engine does.

What is distributed: reading, conversion, row checks, per-run features, action and
bigram counts, loop detection, policy checks, within-run change-points. What is collected
to the driver: the per-run tables (about one row per run, per loop, per violation), the
rejected rows and the events of a few example runs; the fleet stage runs there.

Examples
--------
>>> import driftwatch as dw                                        # doctest: +SKIP
>>> from driftwatch.spark import audit_spark, get_session          # doctest: +SKIP
>>> spark = get_session("local[2]")                                # doctest: +SKIP
>>> ev = dw.synth.generate(days=3, runs_per_day=50, seed=1).events # doctest: +SKIP
>>> result = audit_spark(spark.createDataFrame(ev.to_arrow()))     # doctest: +SKIP
>>> result.runs.height == ev["run_id"].n_unique()                  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import math
import os
import re
import shutil
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import polars as pl
import pyarrow as pa
from pyspark.sql import DataFrame as SparkDataFrame
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from driftwatch._frames import duration_seconds, normalize_by
from driftwatch.errors import (
    CorruptFileError,
    DriftwatchError,
    InvalidParameterError,
    NoInputError,
    SchemaError,
)
from driftwatch.formats import FORMATS, adapt, check_canonical, check_column_map, detect_format, span_tree
from driftwatch.schema import COLUMNS, DETAIL_COL, REASON_COL, STEP_COLUMNS, conform, repeated_rows

# the module, not the function of the same name that ``driftwatch.audit`` may resolve to
_audit = importlib.import_module("driftwatch.audit")

#: Target events per bucket when ``n_buckets`` is not given (one Python worker holds one
#: bucket in memory while it audits the bucket's runs).
DEFAULT_ROWS_PER_BUCKET = 1_000_000

#: Most rows of one per-run table serialised into one output row of a bucket.
PART_ROWS = 250_000

#: The packed output schema of the per-bucket function.
PACKED_SCHEMA = "bucket long, table string, part int, data binary"

_ORDER = "__dw_order"  # file rank << _ROW_BITS | row in file: the reader's "first one read" order
_FIRST = "__dw_first"  # order key of the row kept when a (run_id, step) is duplicated
# set on the rows of a file without a step column (their steps are derived, as the local reader
# derives them): file index in the sorted listing << _ROW_BITS | row in file, the order read
_SEQ = "__dw_seq"
_POSITION = "__dw_position"  # a Polars frame's row index, carried into Spark
_NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
_ROW_BITS = 36
_META = "_meta"
_REJECTED = "_rejected"
_BUCKET = "__dw_bucket"
_VARIANT = "__dw_variant"  # the read (files of one schema) a row comes from, when there are several
_TYPED = "__dw_typed"  # prefix of the columns holding one type of a column whose type varies by read

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- session


def _java_ok() -> bool:
    home = os.environ.get("JAVA_HOME")
    if home and os.path.exists(os.path.join(home, "bin", "java")):
        return True
    return shutil.which("java") is not None


def get_session(
    master: str | None = None,
    *,
    app_name: str = "driftwatch",
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """The active SparkSession, or a new one set up for driftwatch.

    A new session runs the Python workers with this interpreter (``PYSPARK_PYTHON``
    unless already set), keeps timestamps in UTC and enables Arrow.

    Parameters
    ----------
    master : str, optional
        Spark master of a new session. ``None``: the active session if there is one,
        else the master given by ``spark-submit``, else ``local[*]``.
    app_name : str, default="driftwatch"
        Application name of a new session.
    conf : mapping, optional
        Extra Spark settings for a new session, e.g. ``{"spark.driver.memory": "8g"}``.

    Returns
    -------
    pyspark.sql.SparkSession

    Raises
    ------
    DriftwatchError
        No Java runtime was found, or the JVM did not start.

    Examples
    --------
    >>> from driftwatch.spark import get_session                               # doctest: +SKIP
    >>> spark = get_session("local[2]", conf={"spark.ui.enabled": "false"})    # doctest: +SKIP
    """
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    if not _java_ok():
        raise DriftwatchError(
            "engine 'spark' needs a Java runtime (17 or newer) and none was found on PATH or in JAVA_HOME; "
            "install one (Debian/Ubuntu: apt-get install default-jre-headless) or use engine 'polars'"
        )
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    submitted = "spark.master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "") or "SPARK_ENV_LOADED" in os.environ
    if master is not None:
        builder = builder.master(master)
    elif not submitted:
        builder = builder.master("local[*]")
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.memory": "2g",
        # Parquet timestamps in nanoseconds (what pandas writes) as their epoch numbers, which
        # each bucket turns back into the nanosecond timestamps the local reader reads; Spark
        # refuses them otherwise
        _NANOS_AS_LONG: "true",
        # no console progress bar: it overwrote stderr with \r, so the one-line error of a
        # failed audit was glued to a "[Stage 0: ...]" line (driftwatch prints its own progress)
        "spark.ui.showConsoleProgress": "false",
    }
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    from pyspark import SparkContext

    fresh = SparkContext._active_spark_context is None  # (else getOrCreate returns a session that runs)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM failed to start: say why in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DriftwatchError(
            f"could not start Spark ({first}); check the Java runtime (17+) and the PySpark installation, "
            "or use engine 'polars'"
        ) from None
    if fresh:  # warnings of a session driftwatch started are not the user's (a running one keeps its level)
        session.sparkContext.setLogLevel("ERROR")
    return session


#: The SparkContext of the session driftwatch started for an audit given none (the CLI's): its
#: log output is silenced while driftwatch's jobs run (:func:`_quiet`). A session the user made
#: or passed in keeps its log level.
_owned_context: weakref.ref[Any] | None = None


def _own_session() -> SparkSession:
    """The session of an audit given none: the active one (the user's), else a new one that
    driftwatch owns (:func:`get_session`)."""
    global _owned_context
    from pyspark import SparkContext

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    fresh = SparkContext._active_spark_context is None
    session = get_session()
    if fresh:
        _owned_context = weakref.ref(session.sparkContext)
    return session


@contextlib.contextmanager
def _quiet(session: SparkSession) -> Iterator[None]:
    """Spark's own log output off while the block runs, in a session driftwatch started
    (:func:`_own_session`): a failed read otherwise prints the executor's ERROR log and its Java
    stack trace (~70 lines) on stderr before driftwatch's one-line message, even with --quiet.
    Any other session is left as it is."""
    try:
        sc = session.sparkContext
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext (and is never driftwatch's)
        sc = None
    if sc is None or _owned_context is None or _owned_context() is not sc:
        yield
        return
    before = _log_level(sc)
    sc.setLogLevel("OFF")
    # PySpark logs a DataFrame-API error (with its Java stack trace, as one JSON line) through
    # these Python loggers before it raises it
    loggers = _query_loggers()
    was = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, disabled in zip(loggers, was, strict=True):
            lg.disabled = disabled
        with contextlib.suppress(Exception):  # (a JVM that died says so through the error raised)
            sc.setLogLevel(before)


#: PySpark's loggers of failed queries (``pyspark.errors.exceptions.base``).
_QUERY_LOGGERS = ("DataFrameQueryContextLogger", "SQLQueryContextLogger")


def _query_loggers() -> list[logging.Logger]:
    """PySpark's loggers of failed queries, made as PySpark makes them (a plain ``logging.Logger``
    of that name would break PySpark's own logging of its errors); none in a PySpark without them."""
    try:
        from pyspark.logger import PySparkLogger
    except ImportError:  # (PySpark before 4 logs no query errors)
        return []
    return [PySparkLogger.getLogger(name) for name in _QUERY_LOGGERS]


_CASE_SENSITIVE = "spark.sql.caseSensitive"


def _case_clashes(names: Iterable[str]) -> list[list[str]]:
    """The groups of column names that differ only in case (``status`` and ``Status``)."""
    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        groups.setdefault(name.lower(), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


@contextlib.contextmanager
def _case_sensitive(session: SparkSession, names: Iterable[str]) -> Iterator[None]:
    """Spark resolves column names case-sensitively while the block runs when ``names`` holds
    names that differ only in case: Spark's default (``spark.sql.caseSensitive=false``) finds
    ``status`` ambiguous beside ``Status`` ([AMBIGUOUS_REFERENCE]) and refuses to read a file
    holding both ([COLUMN_ALREADY_EXISTS]); the local reader reads names case-sensitively (the
    column that is not canonical is not read). The session's setting is restored afterwards;
    input without such names leaves the session as it is."""
    if not _case_clashes(names):
        yield
        return
    before = str(session.conf.get(_CASE_SENSITIVE, "false"))
    if before.lower() == "true":
        yield
        return
    session.conf.set(_CASE_SENSITIVE, "true")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # (a session that stopped keeps nothing to restore)
            session.conf.set(_CASE_SENSITIVE, before)


def _log_level(sc: Any) -> str:
    """The root log level of the JVM (what ``setLogLevel`` set); ``ERROR``, what
    :func:`get_session` sets, when it cannot be read."""
    try:
        return str(sc._jvm.org.apache.logging.log4j.LogManager.getRootLogger().getLevel().toString())
    except Exception:  # noqa: BLE001 - (another logging back end)
        return "ERROR"


# --------------------------------------------------------------------------- input plans


@dataclass
class _Input:
    """Raw rows to audit: the Spark frame (raw columns + order key), where they came from."""

    sdf: SparkDataFrame
    run_col: str
    files: list[str] = field(default_factory=list)
    rows: int | None = None
    description: str = "<spark DataFrame>"
    #: files listed, with those without rows (which no group reads); None: ``len(files)``
    listed: int | None = None
    #: files per format, as the local reader counts them; None: every file in ``files`` is canonical
    formats: dict[str, int] | None = None
    #: rows from memory (a Polars frame): ``files`` only names them ("events"), 0 files are read
    in_memory: bool = False
    #: a ReadResult's own rejected rows and stats (its events are what Spark audits)
    read_rejected: pl.DataFrame | None = None
    read_stats: dict[str, Any] | None = None
    #: how each read's rows come back to the local reader's columns and dtypes in a bucket
    #: (``__dw_variant`` names the read of a row when there are several); None: as Spark gives them
    variants: tuple[_Variant, ...] | None = None
    #: the columns of ``sdf`` that hold the run id (several: it has other types in other files)
    run_cols: tuple[str, ...] = ()

    def run_key(self) -> Any:
        """The column whose hash buckets the rows: the run id (as text where its type varies)."""
        cols = self.run_cols or (self.run_col,)
        if len(cols) == 1:
            return F.col(cols[0])
        return F.coalesce(*[F.col(c).cast("string") for c in cols])


@dataclass(frozen=True)
class _Column:
    """One raw column as the local reader reads it, rebuilt in a bucket from what Spark carried."""

    #: the column's name in the files (before ``column_map``)
    name: str
    #: the column of the Spark frame holding it; None: the files of this read lack it (nulls)
    source: str | None
    #: Spark carried the 64-bit physical values of this dtype (a timestamp read as its number,
    #: a UInt64 as its bits); None: Spark's own type
    bits: pl.DataType | None = None
    #: the dtype the local reader reads it as (the schema of the files' group); None: Spark's
    dtype: pl.DataType | None = None


#: The raw columns of one read (the files of one schema, or a frame), in a bucket.
_Variant = tuple[_Column, ...]


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file:")


def _spark_path(path: str) -> str:
    """Normalise a path as Spark reports it (``file:/x``, ``file:///x``) to compare strings."""
    if path.startswith("file:"):
        return "/" + path[len("file:") :].lstrip("/")
    return path


def _needed_columns(schema_names: Sequence[str], cmap: Mapping[str, str]) -> list[str]:
    keep = set(COLUMNS) | set(cmap)
    return [c for c in schema_names if c in keep]


def _run_column(schema_names: Sequence[str], cmap: Mapping[str, str]) -> str:
    for src, dst in cmap.items():
        if dst == "run_id" and src in schema_names:
            return src
    return "run_id"


def _input_from_paths(
    paths: Any, *, spark: SparkSession, column_map: Mapping[str, str] | None, format: str = "auto",
    stack: contextlib.ExitStack | None = None,
) -> _Input:
    """Plan the read of canonical Parquet: local files are listed and checked by the local
    reader's own code (same errors, same file order); URIs with a scheme go to Spark.
    ``stack``: where a file whose column names differ only in case turns on Spark's
    case-sensitive names (:func:`_case_sensitive`) until the audit's Spark work is done."""
    from driftwatch import read as _read

    cmap = check_column_map(column_map)
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not items:
        raise NoInputError("source is an empty list; expected at least one path, folder or glob")
    texts = [os.fspath(p) for p in items]
    local = [p for p in texts if not _is_uri(p)]
    remote = [p for p in texts if _is_uri(p)]

    # (frame, hive keys, numbered, how its rows come back to the local reader's columns)
    planned: list[tuple[SparkDataFrame, tuple[str, ...], bool, _Variant | None]] = []
    groups: list[Any] = []  # the local files' groups, as the local reader groups them
    files: list[str] = []
    seq: dict[str, int] = {}  # file -> its index in the sorted listing (the local reader's _SEQ)
    rows: int | None = 0
    listed = 0
    formats: Counter[str] = Counter()
    if local:
        infos = _read._probe_all(_read.resolve_sources(local))
        listed += len(infos)  # (the local reader counts a file without rows among the files read)
        if format in SPAN_FORMATS and any(i.rows for i in infos):  # (no rows: said as such below)
            # the local reader's checks first (canonical files lack the span columns: the same
            # error, naming the same group of files); spans themselves are converted by the
            # local reader only
            for group in _read._group(_read._assign_formats(infos, format, cmap)):
                schema = {**group.schema, **{k: pl.String() for k in group.hive}}
                span_tree(pl.LazyFrame(schema=schema), schema, group.format, column_map=cmap,
                          where=_read._group_where(group))  # (a plan: nothing is read)
            raise _not_canonical(next(i.path for i in infos if i.rows), format)
        for info in infos:
            if not info.rows:  # a quiet day's empty partition, maybe without columns: nothing to read
                found = format if format != "auto" else detect_format(
                    _read._columns(info, cmap, lookups=False), column_map=cmap)
                formats[found or ""] += 1  # (counted as the local reader counts it)
                continue
            formats["canonical"] += 1
            if format == "auto":  # (format="canonical": the local reader's check of each file, below)
                fmt = detect_format(list(info.schema) + list(info.hive), column_map=cmap)
                if fmt != "canonical":
                    raise _not_canonical(info.path, fmt)
        if stack is not None:  # (Spark refuses to read a file holding `status` and `Status` otherwise)
            clashing = [c for i in infos if i.rows for c in _case_clashes([*i.schema, *i.hive])]
            stack.enter_context(_case_sensitive(spark, [n for g in clashing for n in g]))
        _check_nanos(spark, infos)
        # the local reader's order: group by group, files in order within a group. The files of
        # a group are read per exact schema (Spark's schema merge fails where Polars' does not:
        # Int32 beside Int64 tokens), millisecond timestamps as their numbers (Spark turns them
        # into microseconds and fails on a value that overflows); each bucket rebuilds the
        # columns the local reader reads from the group (_restore), and converts them as it does
        groups = _read._group(_read._assign_formats(infos, "canonical", cmap))
        for group in groups:
            by_schema: dict[tuple[Any, ...], list[Any]] = {}
            for f in group.files:
                key = (tuple((c, str(t)) for c, t in f.schema.items()), _millis(f, cmap))
                by_schema.setdefault(key, []).append(f)
            for (_, millis), same in by_schema.items():
                sdf, bits = _read_exact(spark, same, millis, cmap)
                planned.append((sdf, group.hive, _read._row_local(group),
                                _group_variant(group.schema, same[0].schema, bits, group.hive, cmap)))
            files.extend(f.path for f in group.files)
            seq.update({f.path: f.index for f in group.files})
        rows = sum(i.rows for i in infos)
    if remote:
        if format in SPAN_FORMATS:
            raise _not_canonical(remote[0], format)
        sdf = _read_parquet(spark, remote)
        planned.append((sdf, (), True, None))
        files.extend(sorted(unquote(_spark_path(f)) for f in sdf.inputFiles()))
        listed += len(sdf.inputFiles())
        formats["canonical"] += len(sdf.inputFiles())
        rows = None
    if rows == 0:  # (every file listed is local: a URI's rows are not counted)
        raise _read.no_rows_error([i.path for i in infos])
    if len(files) >= 1 << (63 - _ROW_BITS):
        raise InvalidParameterError(f"too many input files for engine 'spark' ({len(files):,})")
    rank = {f: i for i, f in enumerate(files)}

    frames: list[SparkDataFrame] = []
    for sdf, hive, numbered, _ in planned:
        # Spark reports files as percent-encoded URIs; key the maps by Spark's own spelling
        spelled = {_spark_path(f): unquote(_spark_path(f)) for f in sdf.inputFiles()}
        unknown = [f for f in spelled.values() if f not in rank]
        if unknown:  # pragma: no cover - Spark names a file differently from the local listing
            raise DriftwatchError(
                f"spark: cannot match the file {unknown[0]!r} that Spark read to the input listing; "
                "pass the files without symbolic links or unusual characters, or use engine 'polars'"
            )
        path = F.regexp_replace(F.col("_metadata.file_path"), "^file:/+", "/")
        order_map = F.create_map(*[x for k, f in spelled.items() for x in (F.lit(k), F.lit(rank[f]))])
        order = F.element_at(order_map, path).cast("long") * F.lit(1 << _ROW_BITS) + F.col("_metadata.row_index")
        # hive partitions (e.g. agent=...) fill a canonical column, as locally: the partition's
        # value wins over a column of the same name in the files (Spark's merged schema may hold
        # it from some files only)
        filled = _filled_keys(hive, cmap)
        cols = [F.col(c) for c in _needed_columns(sdf.columns, cmap) if c not in filled]
        for key in filled:
            values = {k: v for k, f in spelled.items() if (v := _hive_value(f, key)) is not None}
            if values:  # (a file of a null partition, __HIVE_DEFAULT_PARTITION__, is in no map: null)
                hive_map = F.create_map(*[x for k, v in values.items() for x in (F.lit(k), F.lit(v))])
                cols.append(F.element_at(hive_map, path).alias(key))
            else:  # (every file's partition is null: an empty map has no type)
                cols.append(F.lit(None).cast("string").alias(key))
        if not numbered:
            # a file without a step column: its rows' steps are derived in the bucket, over the
            # run's rows from such files, by ts, ties in the order read (the local reader's
            # _whole_frame); once united with files that have a step, their step is just null
            seq_map = F.create_map(*[x for k, f in spelled.items() for x in (F.lit(k), F.lit(seq[f]))])
            cols.append((F.element_at(seq_map, path).cast("long") * F.lit(1 << _ROW_BITS)
                         + F.col("_metadata.row_index")).alias(_SEQ))
        frames.append(sdf.select(*cols, order.alias(_ORDER)))
    where = _audit._describe(paths)
    # (local files were checked one by one by _assign_formats, naming the file; URIs are checked
    # on Spark's merged schema, every column of which the message lists)
    found = list(dict.fromkeys(c for sdf, _, _, _ in planned for c in sdf.columns))
    merged, renames = _union(frames)
    variants: list[_Variant] = []
    for frame, (_, _, _, variant), renamed in zip(frames, planned, renames, strict=True):
        if variant is None:  # (URIs: their columns as Spark reads them)
            names = _needed_columns(frame.columns, cmap)
            variant = tuple(_Column(c, c) for c in names)
        variants.append(tuple(_Column(c.name, None if c.source is None else renamed.get(c.source, c.source),
                                      c.bits, c.dtype) for c in variant))
    try:
        _check_schema(merged, cmap, where=where, found=found, variants=variants)
    except SchemaError:
        # the local reader names the file whose columns fail (checked on its own, footer only),
        # not the folder: the first such file in its order
        for group in groups:
            _read._blame_file(group, {k: pl.String() for k in group.hive}, cmap)
        raise
    names = list(dict.fromkeys(c.name for v in variants for c in v))
    run_col = _run_column(names, cmap)
    run_cols = tuple(dict.fromkeys(c.source for v in variants for c in v if c.name == run_col and c.source))
    return _Input(sdf=merged, run_col=run_col, files=files, rows=rows, description=where, listed=listed,
                  formats={k: v for k, v in formats.items() if k}, variants=tuple(variants),
                  run_cols=run_cols)


#: The span formats, which the Spark engine does not convert (the local reader does).
SPAN_FORMATS = ("otel", "openinference")


def _not_canonical(where: str, fmt: str | None) -> InvalidParameterError:
    return InvalidParameterError(
        f"{where}: engine 'spark' reads canonical Parquet; this file looks like "
        f"{fmt or 'an unknown format'}. Convert it first (driftwatch.read_logs(...), then write "
        "the events) or use engine 'polars'"
    )


def _check_format(format: str, source: Any) -> None:
    """``format`` as ``dw.audit`` checks it: one of FORMATS; a span format applies to files only."""
    if format not in FORMATS:
        raise InvalidParameterError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if format in SPAN_FORMATS and isinstance(source, SparkDataFrame | pl.DataFrame | pl.LazyFrame):
        raise InvalidParameterError(
            f"format={format!r} applies to files: a frame passed to audit must hold canonical events "
            "(column_map renames its columns); write the spans to Parquet and audit the path"
        )


def _filled_keys(hive: Sequence[str], cmap: Mapping[str, str]) -> list[str]:
    """The hive partition keys that fill a column the audit reads."""
    return [key for key in hive if key in COLUMNS or key in cmap]


def _millis(info: Any, cmap: Mapping[str, str]) -> tuple[str, ...]:
    """The millisecond timestamp columns the audit reads from a file that Spark can read as the
    numbers stored: 64-bit values (its footer says; an INT96 timestamp that the stored Arrow schema
    reads as milliseconds has none)."""
    cols = [c for c in _needed_columns(list(info.schema), cmap)
            if isinstance(info.schema[c], pl.Datetime) and info.schema[c].time_unit == "ms"]
    if not cols:
        return ()
    import pyarrow.parquet as pq

    try:
        parquet = pq.read_metadata(info.path).schema
        physical = {parquet.column(i).path: parquet.column(i).physical_type for i in range(len(parquet))}
    except Exception:  # noqa: BLE001 - (the footer was read by the probe: Spark says what is wrong)
        return ()
    return tuple(c for c in cols if physical.get(c) == "INT64")


def _read_exact(
    spark: SparkSession, same: Sequence[Any], millis: Sequence[str], cmap: Mapping[str, str]
) -> tuple[SparkDataFrame, dict[str, pl.DataType]]:
    """Files of one schema read by Spark, and the columns Spark carries as the numbers stored
    (``bits``, by column: the dtype they are numbers of). Timestamps in nanoseconds come as
    numbers (``nanosAsLong``); the ``millis`` columns are read as numbers too: Spark turns a
    millisecond timestamp into microseconds and fails the whole read on a value that overflows
    (an epoch in ns written as ms), which the local reader rejects as ``bad_ts``."""
    from pyspark.sql.types import LongType, StructField, StructType

    targets = ["file://" + f.path for f in same]
    sdf = _read_parquet(spark, targets, merge=False)
    schema = same[0].schema
    needed = set(_needed_columns(list(schema), cmap))
    bits: dict[str, pl.DataType] = {}
    for fld in sdf.schema.fields:
        dt = schema.get(fld.name)
        if fld.name in needed and isinstance(dt, pl.Datetime) and (
            fld.dataType.typeName() == "long" or fld.name in millis
        ):
            bits[fld.name] = dt
    if not any(fld.dataType.typeName() != "long" for fld in sdf.schema.fields if fld.name in bits):
        return sdf, bits
    read_as = StructType([StructField(f.name, LongType(), True) if f.name in bits else f
                          for f in sdf.schema.fields])
    try:
        return spark.read.schema(read_as).option("mergeSchema", "false").parquet(*targets), bits
    except Exception as exc:
        raise _spark_error(exc) from None


def _group_variant(
    group_schema: Mapping[str, pl.DataType],
    file_schema: Mapping[str, pl.DataType],
    bits: Mapping[str, pl.DataType],
    hive: Sequence[str],
    cmap: Mapping[str, str],
) -> _Variant:
    """The columns the local reader reads from the files of one schema: every column of their
    group (nulls where these files lack it) in the group's dtype."""
    filled = _filled_keys(hive, cmap)
    cols = [_Column(c, c if c in file_schema else None, bits.get(c), group_schema[c])
            for c in _needed_columns(list(group_schema), cmap) if c not in filled]
    cols += [_Column(key, key) for key in filled]  # (text, from the folder names)
    return tuple(cols)


def _check_nanos(spark: SparkSession, infos: Sequence[Any]) -> None:
    """Spark reads Parquet timestamps in nanoseconds only as numbers (``nanosAsLong``, set by
    :func:`get_session`); in another session, say how to read them instead of Spark's
    "Illegal Parquet type"."""
    nanos = next(((i.path, c) for i in infos for c, t in i.schema.items()
                  if isinstance(t, pl.Datetime) and t.time_unit == "ns"), None)
    if nanos is None or str(spark.conf.get(_NANOS_AS_LONG, "false")).lower() == "true":
        return
    raise InvalidParameterError(
        f"{nanos[0]}: column {nanos[1]!r} holds timestamps in nanoseconds, which this Spark session does not "
        f"read; set spark.conf.set({_NANOS_AS_LONG!r}, 'true') (driftwatch.spark.get_session does), or use "
        "engine 'polars'"
    )


#: The folder name Hive and Spark write for a null partition value (``agent=__HIVE_DEFAULT_PARTITION__``).
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def _hive_value(path: str, key: str) -> str | None:
    """The value of partition ``key`` in ``path``'s folders, decoded as Polars' hive parsing
    (the local reader) decodes it: percent-escapes undone, :data:`_HIVE_NULL` read as null (as
    ``spark.read.parquet`` reads it too), not as that text; None: no such folder."""
    for part in os.path.normpath(os.path.dirname(path)).split(os.sep):
        if part.startswith(key + "="):
            value = unquote(part.split("=", 1)[1])
            return None if value == _HIVE_NULL else value
    return None


def _read_parquet(spark: SparkSession, targets: list[str], *, merge: bool = True) -> SparkDataFrame:
    try:
        return spark.read.option("mergeSchema", "true" if merge else "false").parquet(*targets)
    except Exception as exc:
        raise _spark_error(exc) from None


def _union(frames: list[SparkDataFrame]) -> tuple[SparkDataFrame, list[dict[str, str]]]:
    """Union frames by name, each row tagged with the index of its frame (``__dw_variant``) when
    there are several; and, per frame, the columns renamed. A column whose type differs between
    frames is kept in one column per type (``__dw_typed<k>_<name>``), from which each bucket takes
    the rows of each frame back (:func:`_restore`): the local reader converts each group of files
    on its own (text beside typed timestamps, epoch numbers beside timestamps), and a common type
    (text, say) would convert otherwise."""
    if len(frames) == 1:
        return frames[0], [{}]
    types: dict[str, list[str]] = {}
    for f in frames:
        for fld in f.schema.fields:
            seen = types.setdefault(fld.name, [])
            if fld.dataType.simpleString() not in seen:
                seen.append(fld.dataType.simpleString())
    out: SparkDataFrame | None = None
    renames: list[dict[str, str]] = []
    for i, f in enumerate(frames):
        renamed = {fld.name: f"{_TYPED}{types[fld.name].index(fld.dataType.simpleString())}_{fld.name}"
                   for fld in f.schema.fields if len(types[fld.name]) > 1}
        part = f.select(*[F.col(c).alias(renamed.get(c, c)) for c in f.columns], F.lit(i).alias(_VARIANT))
        out = part if out is None else out.unionByName(part, allowMissingColumns=True)
        renames.append(renamed)
    assert out is not None
    return out, renames


def _from_bits(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """64-bit physical values back to ``dtype``: a timestamp's number in its unit (UTC), a
    UInt64's bits."""
    value = expr.cast(pl.Int64)
    if dtype == pl.UInt64:
        return value.reinterpret(signed=False)
    return value.cast(dtype)


def _cast_as_read(expr: pl.Expr, have: pl.DataType, want: pl.DataType) -> pl.Expr:
    """A column Spark carried in another dtype than the local reader reads it in, cast as its
    scan casts the files of a group: numbers to the group's type (Int32 to Int64, Spark's
    Decimal(20, 0) or Int64 of unsigned columns back to UInt64/UInt32), timestamps to the
    group's unit and time zone (an INT96 timestamp arrives in the session's zone)."""
    if have == want:
        return expr
    if isinstance(have, pl.Datetime) and isinstance(want, pl.Datetime):
        value = expr
        if have.time_zone != want.time_zone:
            if have.time_zone is None:
                value = value.dt.replace_time_zone("UTC")
            value = value.dt.convert_time_zone(want.time_zone or "UTC")
            if want.time_zone is None:
                value = value.dt.replace_time_zone(None)
        return value.dt.cast_time_unit(want.time_unit or "us") if have.time_unit != want.time_unit else value
    if have.is_numeric() and want.is_numeric():
        return expr.cast(want)
    return expr  # (text beside a categorical, and the like: converted alike)


def _restore(frame: pl.DataFrame, variant: _Variant) -> pl.DataFrame:
    """The rows of one read with the raw columns the local reader reads: their names, their
    dtypes, nulls for a column of the group these files lack; and the order keys."""
    schema = frame.schema
    exprs: list[pl.Expr] = []
    for col in variant:
        if col.source is None:
            exprs.append(pl.lit(None, dtype=col.dtype or pl.String()).alias(col.name))
            continue
        have = schema[col.source]
        value = pl.col(col.source)
        if col.bits is not None:
            value, have = _from_bits(value, col.bits), col.bits
        if col.dtype is not None:
            value = _cast_as_read(value, have, col.dtype)
        exprs.append(value.alias(col.name))
    return frame.select(*exprs, *[c for c in (_ORDER, _SEQ) if c in schema])


def _sendable(frame: pl.DataFrame, cmap: Mapping[str, str]) -> tuple[pl.DataFrame, _Variant | None]:
    """A Polars frame in dtypes Spark takes from Arrow, and how a bucket gets its columns back
    (None: nothing to change). Unsigned integers (Spark has none) travel as Int64, a UInt64 as
    its bits (the local reader rejects a value beyond Int64's range); timestamps as their
    numbers (Spark makes microseconds of milliseconds and nanoseconds, and a far-off value
    overflows; it reads a naive timestamp in the session's time zone, where naive means UTC
    here, and gives a zoned one back in the session's zone); nested columns holding unsigned
    integers or timestamps as the JSON text the local reader makes of them."""
    from driftwatch.schema import to_text

    def unsigned(dt: pl.DataType) -> bool:  # (or a timestamp, which Spark would shift or zone)
        if dt.is_unsigned_integer() or isinstance(dt, pl.Datetime):
            return True
        inner = getattr(dt, "inner", None)
        if isinstance(inner, pl.DataType) and unsigned(inner):
            return True
        return any(unsigned(f.dtype) for f in getattr(dt, "fields", None) or [])

    cols: list[_Column] = []
    exprs: list[pl.Expr] = []
    for c in _needed_columns(frame.columns, cmap):
        dt = frame.schema[c]
        if dt == pl.UInt64 or isinstance(dt, pl.Datetime):
            exprs.append(pl.col(c).to_physical().reinterpret(signed=True).alias(c))
            cols.append(_Column(c, c, bits=dt))
        elif dt.is_unsigned_integer():
            exprs.append(pl.col(c).cast(pl.Int64))
            cols.append(_Column(c, c, dtype=dt))
        elif unsigned(dt):
            exprs.append(to_text(pl.col(c), dt, col=c).value.alias(c))
            cols.append(_Column(c, c))
        else:
            cols.append(_Column(c, c))
    if not exprs:
        return frame, None
    return frame.with_columns(exprs), tuple(cols)


def _input_from_frame(
    df: SparkDataFrame, *, column_map: Mapping[str, str] | None, order: str | None = None,
    variant: _Variant | None = None,
) -> _Input:
    """``df`` to audit; ``order``: a column holding each row's position (a Polars frame's row
    index), else Spark's own row ids; ``variant``: how a bucket gets the columns back (a Polars
    frame's dtypes that Spark does not carry)."""
    cmap = check_column_map(column_map)
    names = [c for c in df.columns if c != order]
    variants = None if variant is None else (variant,)
    _check_schema(df.select(*names), cmap, where="events", found=names, variants=variants)
    cols = [F.col(c) for c in _needed_columns(names, cmap)]
    files: list[str] = []
    if order is not None:
        key = F.col(order).cast("long")
    elif (meta := _file_metadata(df)) is not None:
        # read from Parquet files (spark.read.parquet(...)): the local reader's order, files in
        # its order and rows in file order (Spark orders its splits by size, not by name), so
        # the same row of a repeated step is kept, and rejected rows name their file and row
        spelled = {_spark_path(f): unquote(_spark_path(f)) for f in df.inputFiles()}
        files = _read_order(sorted(set(spelled.values())), cmap)
        if len(files) >= 1 << (63 - _ROW_BITS):
            raise InvalidParameterError(f"too many input files for engine 'spark' ({len(files):,})")
        rank = {f: i for i, f in enumerate(files)}
        order_map = F.create_map(*[x for k, f in spelled.items() for x in (F.lit(k), F.lit(rank[f]))])
        path = F.regexp_replace(meta.getField("file_path"), "^file:/+", "/")
        key = F.element_at(order_map, path).cast("long") * F.lit(1 << _ROW_BITS) + meta.getField("row_index")
    else:  # rows not read from files: the order read is Spark's
        key = F.monotonically_increasing_id()
    sdf = df.select(*cols, key.alias(_ORDER))
    return _Input(sdf=sdf, run_col=_run_column(names, cmap), files=files, variants=variants)


def _file_metadata(df: SparkDataFrame) -> Any:
    """The hidden ``_metadata`` column of a DataFrame read from Parquet files (with each row's
    ``file_path`` and ``row_index`` in its file), or ``None`` (rows made in memory, a union of
    reads, a format without row indexes)."""
    try:
        meta = df.metadataColumn("_metadata")
        fields = df.select(meta.alias("m")).schema["m"].dataType.fieldNames()
    except Exception:  # no such column: not read from files (or a Spark without it)
        return None
    if "file_path" not in fields or "row_index" not in fields or not df.inputFiles():
        return None
    return meta


def _read_order(paths: list[str], cmap: Mapping[str, str]) -> list[str]:
    """Files in the local reader's order: sorted, then group by group (files that differ in
    hive keys, a step column or mapped columns are read as separate groups). Files that are
    not local (URIs) keep the sorted order."""
    from driftwatch import read as _read

    if not paths or any(_is_uri(p) or not os.path.isfile(p) for p in paths):
        return paths
    try:
        infos = _read._probe_all(paths)
        groups = _read._group(_read._assign_formats(infos, "canonical", dict(cmap)))
    except DriftwatchError:  # (the audit reports such a file's problem itself)
        return paths
    ordered = [f.path for g in groups for f in g.files]
    seen = set(ordered)
    ordered += [p for p in paths if p not in seen]  # (files without rows are in no group)
    return ordered if sorted(ordered) == paths else paths


def _check_schema(
    sdf: SparkDataFrame, cmap: Mapping[str, str], *, where: str, found: Sequence[str],
    variants: Sequence[_Variant] | None = None,
) -> None:
    """Fail on the driver, with the local reader's message, when columns are missing or unusable.
    ``found``: every column of the input (the message lists them and points at a column that
    differs from a required one only in case: ``--map Action=action``). ``variants``: the
    columns each read gives a bucket (:func:`_restore`), each checked as the bucket converts it;
    None: the columns of ``sdf``."""
    from pyspark.sql.pandas.types import to_arrow_schema

    check_canonical({c: pl.String() for c in found}, cmap, where)
    if variants is None:
        variants = (tuple(_Column(c, c) for c in _needed_columns(sdf.columns, cmap)),)
    keep = list(dict.fromkeys(c.source for v in variants for c in v if c.source is not None))
    try:  # the Arrow schema the workers will see, without running a job
        arrow = to_arrow_schema(sdf.select(*keep).schema, timezone="UTC")
    except Exception as exc:
        raise SchemaError(f"{where}: a column has a type Arrow cannot carry ({exc})") from None
    empty = pl.from_arrow(arrow.empty_table())
    assert isinstance(empty, pl.DataFrame)
    for variant in variants:
        raw = _restore(empty, variant)
        lf = adapt(raw.lazy(), raw.schema, "canonical", column_map=cmap, where=where)
        conform(lf, where=where, check=True, normalize=True).collect()


# --------------------------------------------------------------------------- per-bucket function


def _pack(bucket: int, tables: Mapping[str, pl.DataFrame]) -> pa.Table:
    """Serialise named Polars frames into rows ``(bucket, table, part, data)``."""
    names: list[str] = []
    parts: list[int] = []
    blobs: list[bytes] = []
    for name, frame in tables.items():
        n_parts = max(1, math.ceil(frame.height / PART_ROWS))
        for i in range(n_parts):
            buf = io.BytesIO()
            frame.slice(i * PART_ROWS, PART_ROWS).write_ipc_stream(buf, compression="lz4")
            names.append(name)
            parts.append(i)
            blobs.append(buf.getvalue())
    return pa.table(
        {
            "bucket": pa.array([bucket] * len(names), pa.int64()),
            "table": pa.array(names, pa.string()),
            "part": pa.array(parts, pa.int32()),
            "data": pa.array(blobs, pa.binary()),
        }
    )


def _unpack(packed: pa.Table) -> dict[int, dict[str, pl.DataFrame]]:
    """Inverse of :func:`_pack` over the collected rows of every bucket."""
    rows = pl.from_arrow(packed)
    assert isinstance(rows, pl.DataFrame)
    out: dict[int, dict[str, list[pl.DataFrame]]] = {}
    for bucket, name, blob in rows.sort("bucket", "table", "part").select("bucket", "table", "data").iter_rows():
        out.setdefault(bucket, {}).setdefault(name, []).append(pl.read_ipc_stream(io.BytesIO(blob)))
    return {
        b: {name: (fr[0] if len(fr) == 1 else pl.concat(fr)) for name, fr in tables.items()}
        for b, tables in out.items()
    }


def check_rows(raw: pl.DataFrame, *, column_map: Mapping[str, str] | None = None, where: str = "events",
               variants: Sequence[_Variant] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The local reader's row checks on raw rows of whole runs: ``(events, rejected)``.

    ``raw`` holds raw columns and the order key ``__dw_order``. Rows are converted and
    checked by :func:`driftwatch.schema.conform` (as :func:`driftwatch.read_logs` does); of
    rows sharing a ``(run_id, step)`` the first in order is kept and the others are
    rejected as ``duplicate_step`` (copies) or ``conflicting_step`` (another action or
    other arguments). ``rejected`` has the canonical columns, ``reason``,
    ``detail`` and the order keys (the driver turns them into ``source_file`` /
    ``source_row``). ``variants`` (internal): how the rows of each read (``__dw_variant``) get
    the columns and dtypes the local reader reads back.

    Examples
    --------
    >>> import polars as pl
    >>> from driftwatch.spark import check_rows
    >>> raw = pl.DataFrame({"run_id": ["a", "a", "a", None], "step": [1, 2, 2, 1],
    ...                     "action": ["llm", "search", "search", "llm"], "__dw_order": [0, 1, 2, 3]})
    >>> events, rejected = check_rows(raw)
    >>> events.height, rejected.select("step", "__dw_reason").rows()
    (2, [(1, 'null_run_id'), (2, 'duplicate_step')])
    """
    checked = _conform_rows(raw, column_map=column_map, where=where, variants=variants)
    bad = checked.filter(pl.col(REASON_COL).is_not_null())
    valid = checked.filter(pl.col(REASON_COL).is_null())
    # (worked out on the repeated keys only: a bucket without repeats costs one hash of the keys)
    rep = repeated_rows(valid, _ORDER, pl.lit(True), ("run_id", "step"), STEP_COLUMNS)
    valid = valid.drop(REASON_COL).join(
        rep.rename({"first": _FIRST, "reason": REASON_COL}), on=_ORDER, how="left", maintain_order="left"
    )
    dup = pl.col(REASON_COL).is_not_null()
    dups = valid.filter(dup)
    events = valid.filter(~dup).select(COLUMNS)
    rejected = pl.concat(
        [
            bad.with_columns(pl.lit(None, dtype=pl.Int64).alias(_FIRST)).select(
                *COLUMNS, _ORDER, _FIRST, REASON_COL, DETAIL_COL
            ),
            dups.select(*COLUMNS, _ORDER, _FIRST, REASON_COL, DETAIL_COL),
        ]
    )
    return events, rejected


def _conform_rows(raw: pl.DataFrame, *, column_map: Mapping[str, str] | None, where: str,
                  variants: Sequence[_Variant] | None = None) -> pl.DataFrame:
    """Raw rows converted and tagged as the local reader converts them: the rows of each read
    (the files of one schema) on their own, with the columns and dtypes the local reader reads
    (:func:`_restore`), as it converts each group of files on its own. Rows of files without a
    step column (``__dw_seq`` set) are converted without it: their steps are derived within
    the run from ``ts``, ties in the order read, over the valid rows of all such files."""
    if variants is None:
        reads = [raw]
    elif _VARIANT in raw.columns:
        parts = raw.partition_by(_VARIANT, as_dict=True, include_key=False, maintain_order=True)
        reads = [_restore(part, variants[int(key[0])]) for key, part in parts.items()]
    else:
        reads = [_restore(raw, variants[0])]
    numbered: list[pl.DataFrame] = []
    derived: list[pl.DataFrame] = []
    for frame in reads:
        if _SEQ not in frame.columns:
            numbered.append(frame)
            continue
        mark = pl.col(_SEQ).is_not_null()
        sources = ["step", *[s for s, d in (column_map or {}).items() if d == "step"]]
        numbered.append(frame.filter(~mark).drop(_SEQ))
        derived.append(frame.filter(mark).drop([c for c in sources if c in frame.columns]))

    def convert(frame: pl.DataFrame, order_by: tuple[str, ...]) -> pl.DataFrame:
        lf = adapt(frame.lazy(), frame.schema, "canonical", column_map=column_map, where=where)
        return conform(lf, where=where, check=True, normalize=True, order_by=order_by).collect()

    out = [convert(f, (_ORDER,)) for f in numbered if f.height]
    steps = [convert(f, (_SEQ, _ORDER)) for f in derived if f.height]
    if len(steps) > 1:  # steps derived over the rows of every read, as conform derives them
        both = pl.concat(steps)
        key = pl.when(pl.col(REASON_COL).is_null()).then(pl.struct("ts", _SEQ, _ORDER))
        steps = [both.with_columns(key.rank("ordinal").over("run_id").cast(pl.Int64).alias("step"))]
    out += [f.drop(_SEQ) for f in steps]
    if not out:  # no rows: typed empty columns from the same code
        out = [convert(numbered[0], (_ORDER,)) if numbered
               else convert(derived[0], (_SEQ, _ORDER)).drop(_SEQ)]
    return out[0] if len(out) == 1 else pl.concat(out)


@dataclass(frozen=True)
class _BucketJob:
    """Everything the per-bucket function needs (pickled once and shipped to the workers)."""

    policy: Any
    since: datetime | None
    until: datetime | None
    column_map: dict[str, str]
    n_examples: int
    options: dict[str, Any]
    where: str
    variants: tuple[_Variant, ...] | None = None


def _run_bucket(job: _BucketJob, key: tuple[Any, ...], table: pa.Table) -> pa.Table:
    """Audit the runs of one bucket (module level, so Spark pickles it by reference)."""
    from driftwatch.audit import _window_expr, run_stage

    bucket = int(key[0].as_py())
    raw = pl.from_arrow(table.drop_columns([_BUCKET]))
    assert isinstance(raw, pl.DataFrame)
    events, rejected = check_rows(raw, column_map=job.column_map, where=job.where, variants=job.variants)
    n_valid = events.height
    if job.since is not None or job.until is not None:
        first = pl.col("ts").min().over("run_id")
        events = events.filter(_window_expr(first, job.since, job.until))
    tables = run_stage(events, policy=job.policy, n_examples=job.n_examples, **job.options)
    frames = tables.frames()
    frames[_REJECTED] = rejected
    frames[_META] = pl.DataFrame(
        {"rows_in": [raw.height], "rows_valid": [n_valid], "rows_audited": [events.height]},
        schema={"rows_in": pl.Int64, "rows_valid": pl.Int64, "rows_audited": pl.Int64},
    )
    return _pack(bucket, frames)


def make_bucket_function(
    *,
    policy: Any,
    since: datetime | None = None,
    until: datetime | None = None,
    column_map: Mapping[str, str] | None = None,
    n_examples: int | None = None,
    stage_options: Mapping[str, Any] | None = None,
    where: str = "events",
    variants: Sequence[_Variant] | None = None,
) -> Callable[[tuple[Any, ...], pa.Table], pa.Table]:
    """The function ``applyInArrow`` runs on each bucket of whole runs.

    Arrow -> Polars, :func:`check_rows`, the ``[since, until)`` window on each run's first
    step, :func:`driftwatch.audit.run_stage`; everything packed with :func:`_pack` (the
    per-run tables, ``_rejected`` and ``_meta`` row counts). Exposed for tests and for
    custom Spark pipelines. ``variants`` (internal): see :func:`check_rows`.
    """
    job = _BucketJob(
        policy=policy,
        since=since,
        until=until,
        column_map=dict(column_map or {}),
        n_examples=_audit.MAX_EXAMPLES_PER_CHUNK if n_examples is None else n_examples,
        options=dict(stage_options or {}),
        where=where,
        variants=None if variants is None else tuple(variants),
    )

    # No annotations here: applyInArrow infers the UDF kind from type hints and takes an
    # un-annotated (key, table) function as the pyarrow.Table form. The closure holds only
    # ``job`` and refers to the module-level ``_run_bucket``, so Spark pickles it cheaply.
    def run_bucket(key, table):  # type: ignore[no-untyped-def]
        return _run_bucket(job, key, table)

    return run_bucket


# --------------------------------------------------------------------------- the per-run stage on Spark


def _auto_buckets(spark: SparkSession, n_rows: int, rows_per_bucket: int) -> int:
    try:
        par = int(spark.sparkContext.defaultParallelism)
    except Exception:  # Spark Connect has no SparkContext
        par = 2
    return max(2 * par, math.ceil(n_rows / max(rows_per_bucket, 1)))


@dataclass
class SparkStage:
    """What :func:`run_stage_spark` returns: the collected per-run tables and read results."""

    tables: _audit.RunTables
    rejected: pl.DataFrame
    stats: dict[str, Any]


def run_stage_spark(
    source: Any,
    *,
    policy: Any = None,
    since: datetime | None = None,
    until: datetime | None = None,
    column_map: Mapping[str, str] | None = None,
    n_buckets: int | None = None,
    rows_per_bucket: int = DEFAULT_ROWS_PER_BUCKET,
    n_examples: int | None = None,
    stage_options: Mapping[str, Any] | None = None,
    spark: SparkSession | None = None,
    progress: Progress | None = None,
    format: str = "auto",
) -> SparkStage:
    """Read, check and run the per-run stage on Spark; collect the per-run tables.

    This is what the local audit does before its fleet stage (``read_logs`` + chunked
    :func:`driftwatch.audit.run_stage`), distributed.

    Parameters
    ----------
    source : pyspark.sql.DataFrame, path(s) or Polars events
        Canonical events (see :func:`audit_spark`).
    policy : Policy, path or None, default=None
        Policy for the per-run checks.
    since, until : datetime, optional
        Keep runs whose first step is in ``[since, until)``.
    column_map : mapping, optional
        Column renames, as for :func:`driftwatch.read_logs` (canonical input).
    n_buckets : int, optional
        Hash buckets of ``run_id``. ``None``: ``max(2 * defaultParallelism,
        rows / rows_per_bucket)`` (rows come from Parquet footers; a Spark DataFrame
        costs one ``count()``).
    rows_per_bucket : int, default=1_000_000
        Target bucket size for the automatic ``n_buckets``.
    n_examples : int, optional
        Runs whose events are kept for the report (``None``: ``run_stage``'s default). Each
        bucket keeps its top runs; the driver keeps the global top ones, as one local chunk
        would.
    stage_options : mapping, optional
        ``max_period``, ``min_repeats``, ``fuzzy`` for :func:`driftwatch.audit.run_stage`.
    spark : SparkSession, optional
        ``None``: the session of ``source``, the active one, or a new local one.
    progress : callable, optional
        Receives one line per step.
    format : {"auto", "canonical", "otel", "openinference"}, default="auto"
        As for :func:`driftwatch.read_logs`; the span formats are checked as the local
        reader checks them, then refused (Spark reads canonical Parquet).

    Returns
    -------
    SparkStage
        ``tables`` (:class:`~driftwatch.audit.RunTables`), ``rejected`` (as
        ``ReadResult.rejected``) and ``stats`` (``rows_in, rows_valid, rows_rejected,
        files, reasons, formats, engine, buckets, rows_audited``; the last counts the valid
        rows of the runs inside ``[since, until)``).
    """
    from driftwatch import policy as policy_mod

    say = progress or (lambda _msg: None)
    pol = policy_mod._as_policy(policy)
    if n_buckets is not None and (not isinstance(n_buckets, int) or isinstance(n_buckets, bool) or n_buckets < 1):
        raise InvalidParameterError(f"n_buckets must be a positive int or None, got {n_buckets!r}")
    _check_format(format, source)
    t0 = time.perf_counter()
    # (case-sensitive column names until the bucket jobs ran, for input whose names differ only in case)
    with contextlib.ExitStack() as case_names:
        inp = _as_input(source, spark=spark, column_map=column_map, format=format, stack=case_names)
        session = inp.sdf.sparkSession
        n_rows = inp.rows
        with _quiet(session):  # (a session driftwatch started prints no Java log of a failed read)
            if n_buckets is None:
                if n_rows is None:
                    try:
                        n_rows = int(inp.sdf.count())
                    except Exception as exc:
                        raise _spark_error(exc) from None
                n_buckets = _auto_buckets(session, n_rows, rows_per_bucket)
            say(f"spark: {n_buckets} buckets of whole runs" + (f", {n_rows:,} rows" if n_rows is not None else ""))

            fn = make_bucket_function(
                policy=pol, since=since, until=until, column_map=column_map, n_examples=n_examples,
                stage_options=stage_options, where=inp.description, variants=inp.variants,
            )
            packed = (
                inp.sdf.withColumn(_BUCKET, F.pmod(F.xxhash64(inp.run_key()), F.lit(n_buckets)))
                .groupBy(_BUCKET)
                .applyInArrow(fn, PACKED_SCHEMA)
            )
            try:
                collected = packed.toArrow()
            except Exception as exc:
                raise _spark_error(exc) from None
    say(
        f"spark: per-run stage done in {time.perf_counter() - t0:.1f}s "
        f"({collected.nbytes / 1e6:.1f} MB collected from {n_buckets} buckets)"
    )

    by_bucket = _unpack(collected)
    del collected  # the decoded tables replace the packed bytes on the driver
    names = [f.name for f in fields(_audit.RunTables)]
    parts: list[_audit.RunTables] = []
    rejected_parts: list[pl.DataFrame] = []
    meta = {"rows_in": 0, "rows_valid": 0, "rows_audited": 0}
    for b in sorted(by_bucket):
        tabs = by_bucket.pop(b)
        m = tabs.pop(_META)
        for k in meta:
            meta[k] += int(m[k].sum())
        rejected_parts.append(tabs.pop(_REJECTED))
        parts.append(_audit.RunTables(**{n: tabs[n] for n in names if n in tabs}))
    if not parts:  # no rows at all: typed empty tables from the same code
        from driftwatch.schema import empty_events

        parts.append(_audit.run_stage(empty_events(), policy=pol, n_examples=0, **dict(stage_options or {})))
    tables = _audit.RunTables.concat(parts, ordered=True)  # each bucket's tables come from run_stage
    del parts
    tables.examples = _audit._global_examples(tables, n_examples)
    rejected = _rejected_frame(rejected_parts, inp)
    if meta["rows_in"] == 0:
        raise NoInputError(f"{inp.description}: no rows to read; expected at least one event, found 0 rows")

    reasons: dict[str, int] = {}
    if rejected.height:
        reasons = {str(r): int(n) for r, n in rejected["reason"].value_counts().sort("reason").iter_rows()}
    stats: dict[str, Any] = {
        "rows_in": meta["rows_in"],
        "rows_valid": meta["rows_valid"],
        "rows_rejected": rejected.height,
        "files": 0 if inp.in_memory else len(inp.files) if inp.listed is None else inp.listed,
        "reasons": reasons,
        "formats": ({} if inp.in_memory or not inp.files else
                    dict(inp.formats) if inp.formats is not None else {"canonical": len(inp.files)}),
        "engine": "spark",
        "buckets": n_buckets,
        "rows_audited": meta["rows_audited"],
    }
    if inp.read_stats is not None and inp.read_rejected is not None:  # a ReadResult: its reader's rows too
        rejected = pl.concat([inp.read_rejected.select(list(rejected.columns)).cast(rejected.schema), rejected])
        for r, n in inp.read_stats.get("reasons", {}).items():
            reasons[r] = reasons.get(r, 0) + int(n)
        stats.update({k: v for k, v in inp.read_stats.items() if k not in stats})
        stats.update(rows_in=stats["rows_in"] + inp.read_rejected.height, rows_rejected=rejected.height,
                     reasons=dict(sorted(reasons.items())), files=inp.read_stats.get("files", 0),
                     formats=dict(inp.read_stats.get("formats", {})))
    if stats["rows_in"] != stats["rows_valid"] + stats["rows_rejected"]:  # pragma: no cover - consistency
        raise DriftwatchError(
            f"internal error: {stats['rows_in']} rows read but {stats['rows_valid']} valid + "
            f"{stats['rows_rejected']} rejected"
        )
    return SparkStage(tables=tables, rejected=rejected, stats=stats)


def _rejected_frame(parts: list[pl.DataFrame], inp: _Input) -> pl.DataFrame:
    """The rejected rows as ``ReadResult.rejected``: canonical columns, ``source_file``,
    ``source_row``, ``reason``, ``detail``; sorted by file and row."""
    from driftwatch.read import REJECTED_SCHEMA

    nonempty = [p for p in parts if p.height]
    if not nonempty:
        return pl.DataFrame(schema=REJECTED_SCHEMA)
    got = pl.concat(nonempty)
    order = got[_ORDER]
    kept = got[_FIRST]
    if inp.files:
        paths = pl.Series(inp.files, dtype=pl.String)
        unit = 1 << _ROW_BITS
        source_file = paths.gather(order // unit)
        source_row = order % unit
        kept_file = paths.gather(kept.fill_null(0) // unit)
        kept_row = kept.fill_null(0) % unit
    else:  # a Spark DataFrame has no files
        source_file = pl.Series([None] * got.height, dtype=pl.String)
        source_row = pl.Series([None] * got.height, dtype=pl.Int64)
        kept_file = source_file
        kept_row = kept
    is_dup = got[REASON_COL].is_in(["duplicate_step", "conflicting_step"])
    detail = pl.select(
        pl.when(pl.lit(is_dup))
        .then(pl.format("kept {} row {}", pl.lit(kept_file), pl.lit(kept_row)))
        .otherwise(pl.lit(got[DETAIL_COL]))
    ).to_series()
    out = got.select(COLUMNS).with_columns(
        source_file.alias("source_file"),
        source_row.cast(pl.Int64).alias("source_row"),
        got[REASON_COL].alias("reason"),
        detail.cast(pl.String).alias("detail"),
    )
    return out.sort("source_file", "source_row", nulls_last=True, maintain_order=True).select(list(REJECTED_SCHEMA))


def _spark_error(exc: Exception) -> Exception:
    """A Spark failure as a driftwatch error whose message is one line with the root cause."""
    if isinstance(exc, DriftwatchError):
        return exc
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for marker, cls in (("SchemaError", SchemaError), ("InvalidParameterError", InvalidParameterError),
                        ("CorruptFileError", CorruptFileError), ("DriftwatchError", DriftwatchError)):
        hit = next((ln for ln in lines if f"driftwatch.errors.{marker}" in ln or ln.startswith(marker)), None)
        if hit:
            return cls(f"spark: {hit.split(':', 1)[-1].strip()}")
    first = lines[0] if lines else type(exc).__name__
    # a Python worker's traceback: its last "SomethingError: message" line is the cause
    causes = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception): ", ln)]
    if causes and ("Python worker" in text or type(exc).__name__ == "PythonException"):
        first = causes[-1]
        if "No module named" in first:
            return DriftwatchError(
                f"spark: the Python workers cannot import driftwatch or a dependency ({first}); install "
                "driftwatch on the executors or ship it (spark-submit --py-files driftwatch.zip, "
                "--archives env.tar.gz#env); see the README section 'Scale'"
            )
    if "PATH_NOT_FOUND" in text:
        return NoInputError(f"spark: {first}")
    if "FAILED_READ_FILE" in text or "CANNOT_READ_FILE_FOOTER" in text:
        if _OTHER_SCHEMA in text:  # a sound file read with another file's types (spark.read.parquet)
            return SchemaError(_read_failure(text, first))
        return CorruptFileError(_read_failure(text, first))
    return DriftwatchError(f"spark: the distributed stage failed ({type(exc).__name__}: {first[:500]})")


def _read_failure(text: str, first: str) -> str:
    """The message of a file Spark could not read: the file, the column when Spark names it (or
    the millisecond timestamp column of a local file whose value overflowed), and the cause (the
    last Java "Caused by", else Spark's own words); not the Py4J wrapper's "An error occurred
    while calling o189.getResult"."""
    found = re.search(r"(?:reading|read) file (\S+?)\.?(?:\s|$)", text)
    path = unquote(_spark_path(found.group(1))) if found else None
    column = re.search(r"Parquet column [\[`'\"]*([^\]`'\"\s]+?)[\]`'\"]*[.,\s]", text)
    causes = re.findall(r"Caused by: (?:[\w$]+\.)*([\w$]+(?:Exception|Error)(?:: [^\n]*)?)", text)
    spark_text = re.search(
        r"\[(?:FAILED_READ_FILE[.\w]*|CANNOT_READ_FILE_FOOTER)\] ([^\n]*?)\s*(?:SQLSTATE|$)", text, re.MULTILINE)
    own = spark_text.group(1).strip() if spark_text else first
    own = re.sub(r"^(?:Encountered error|Error) while reading file \S+?\.(?:\s+|$)", "", own).strip()
    cause = causes[-1].strip() if causes else (own or first)
    col = column.group(1) if column else None
    hint = ""
    if col is None and path is not None and "overflow" in cause and os.path.isfile(path):
        try:  # a millisecond timestamp beyond Spark's range (microseconds in 64 bits)
            ms = [c for c, t in pl.read_parquet_schema(path).items()
                  if isinstance(t, pl.Datetime) and t.time_unit == "ms"]
        except BaseException as err:  # noqa: BLE001 - the hint is optional (a zone Polars cannot read panics)
            if isinstance(err, KeyboardInterrupt | SystemExit):
                raise
            ms = []
        if ms:
            col = ms[0]
            hint = ("; a millisecond timestamp there is too large for Spark's microseconds: pass the files "
                    "by path (driftwatch reads them and rejects such rows as bad_ts), or use engine 'polars'")
    where = path or "a Parquet file"
    if _OTHER_SCHEMA in text:
        # spark.read.parquet took one schema from one of the files, and reads every file with it
        mismatch = re.search(r"(Expected Spark type [^,]+, actual Parquet type [^.\s]+)", text)
        found_text = mismatch.group(1) if mismatch else cause[:300]
        what = f"column {col!r}" if col else "a column"
        return (f"spark: {where}: {what} has another type in this file than in the schema Spark read the files "
                f"with ({found_text}): Spark read all the files with one schema, taken from another file, so "
                "this file could not be read, though it is sound. Pass the paths instead (audit_spark(paths), or "
                "driftwatch audit --engine spark PATH): driftwatch then reads each file by its own schema, as "
                "the local engine does")
    if col is None and path is not None and os.path.isfile(path):
        # Spark's cause names no column (a damaged page): find it as the local engine does,
        # decoding the failed file column by column (it failed already: this costs one read)
        located = _locate_column(path)
        if located is not None:
            where = located
    what = f"column {col!r}: " if col else ""
    return (f"spark: {where}: the Parquet file could not be read ({what}{cause[:300]})"
            f"{hint or '; check the file'}")


#: What Spark raises for a file whose column has another type than the schema it reads with.
_OTHER_SCHEMA = "SchemaColumnConvertNotSupportedException"


def _locate_column(path: str) -> str | None:
    """``"<file>, column '<name>'"`` of the first column of the file that cannot be decoded (the
    local reader's :func:`driftwatch.read.locate_read_failure`), or None: not found, or the
    search failed itself."""
    from driftwatch import read as _read

    try:
        return _read.locate_read_failure([path])
    except BaseException as exc:  # noqa: BLE001 - the column is only a hint: the message stands without it
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return None


# --------------------------------------------------------------------------- the audit


def _as_input(
    source: Any, *, spark: SparkSession | None, column_map: Mapping[str, str] | None, format: str = "auto",
    stack: contextlib.ExitStack | None = None,
) -> _Input:
    """``source`` planned for Spark. ``stack``: holds Spark's case-sensitive names
    (:func:`_case_sensitive`) while the caller's Spark work runs, when the input has column
    names that differ only in case (without one, such input resolves them case-insensitively)."""

    def case_sensitive(session: SparkSession, names: Iterable[str]) -> None:
        if stack is not None:
            stack.enter_context(_case_sensitive(session, names))

    if isinstance(source, SparkDataFrame):
        case_sensitive(source.sparkSession, source.columns)
        with _quiet(source.sparkSession):
            try:
                return _input_from_frame(source, column_map=column_map)
            except Exception as exc:  # (a Spark error as one line, not a raw AnalysisException)
                raise _spark_error(exc) from None
    if isinstance(source, str | os.PathLike) or (
        isinstance(source, list | tuple) and source and all(isinstance(s, str | os.PathLike) for s in source)
    ):
        session = spark or _own_session()
        with _quiet(session):
            return _input_from_paths(source, spark=session, column_map=column_map, format=format, stack=stack)
    if _is_read_result(source):
        # its events go to Spark; the rows its reader rejected, and its counts, are kept as the
        # local engine keeps them (they are reported and scored: a run with rejected steps)
        inp = _as_input(source.events, spark=spark, column_map=None, stack=stack)
        rejected = source.rejected
        inp.read_rejected = rejected if isinstance(rejected, pl.DataFrame) else rejected.collect()
        stats = source.stats.to_dict() if hasattr(source.stats, "to_dict") else dict(source.stats)
        inp.read_stats = {k: v for k, v in stats.items() if k not in ("paths", "seconds", "engine")}
        return inp
    if isinstance(source, pl.DataFrame | pl.LazyFrame):
        frame = source.collect() if isinstance(source, pl.LazyFrame) else source
        session = spark or _own_session()
        # each row's position rides along, so rejected rows name it as the local reader does
        # (source_file "events", source_row the position)
        sendable, variant = _sendable(frame, check_column_map(column_map))
        with_pos = sendable.with_row_index(_POSITION).with_columns(pl.col(_POSITION).cast(pl.Int64))
        case_sensitive(session, with_pos.columns)
        with _quiet(session):
            try:
                inp = _input_from_frame(session.createDataFrame(with_pos.to_arrow()), column_map=column_map,
                                        order=_POSITION, variant=variant)
            except Exception as exc:  # (a Spark error as one line, not a raw AnalysisException)
                raise _spark_error(exc) from None
        inp.files = ["events"]  # (how the rejected rows name them; no file is read: stats say 0 files)
        inp.in_memory = True
        inp.description = "<in-memory events>"
        return inp
    raise InvalidParameterError(
        "engine 'spark' expects a PySpark DataFrame, Parquet path(s) or Polars events, "
        f"got {type(source).__name__}"
    )


def _is_read_result(source: Any) -> bool:
    return hasattr(source, "events") and hasattr(source, "stats") and not isinstance(source, pl.DataFrame)


def audit_spark(
    df: Any,
    *,
    policy: Any = None,
    reference: Any = None,
    n_buckets: int | None = None,
    spark: SparkSession | None = None,
    since: Any = None,
    until: Any = None,
    column_map: Mapping[str, str] | None = None,
    rows_per_bucket: int = DEFAULT_ROWS_PER_BUCKET,
    volume_per_day: float | None = None,
    every: str = "1d",
    drift_every: str = "7d",
    load_every: str = "1m",
    by: Sequence[str] = ("agent",),
    out: str | os.PathLike[str] | None = None,
    stage_options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    format: str = "auto",
) -> _audit.AuditResult:
    """The full audit with the per-event work on Spark; results equal :func:`driftwatch.audit`'s.

    Parameters
    ----------
    df : pyspark.sql.DataFrame, path(s), or Polars events
        Canonical events: a Spark DataFrame (e.g. ``spark.read.parquet(...)`` or
        ``spark.table(...)``); Parquet files/folders/globs, or URIs such as
        ``s3a://bucket/logs/`` (read by Spark); or Polars events (sent to Spark).
    policy : Policy, path or None, default=None
        ``None``: ``dw.Policy()``.
    reference : (start, end), "START..END", path(s) or events, optional
        Drift reference, as for :func:`driftwatch.audit`; reference logs given as paths or
        a Spark DataFrame go through Spark too.
    n_buckets : int, optional
        Hash buckets of ``run_id`` (``None``: automatic, see :func:`run_stage_spark`).
    spark : SparkSession, optional
        ``None``: the session of ``df``, the active one, or a new local one (:func:`get_session`).
    since, until : datetime, date or ISO text, optional
        Audit only runs whose first step is in ``[since, until)``.
    column_map : mapping, optional
        Column renames for canonical input, as for :func:`driftwatch.read_logs`.
    rows_per_bucket : int, default=1_000_000
        Target events per bucket for the automatic ``n_buckets``.
    volume_per_day, every, drift_every, load_every, by
        As for :func:`driftwatch.audit`.
    out : path, optional
        Write every output file there (on the driver's file system).
    stage_options : mapping, optional
        ``max_period``, ``min_repeats``, ``fuzzy`` for :func:`driftwatch.audit.run_stage`.
    progress : callable, optional
        Receives one line per stage.
    format : {"auto", "canonical", "otel", "openinference"}, default="auto"
        The log format, as for :func:`driftwatch.audit`: files given with a span format get the
        local reader's checks (canonical files lack the span columns), then are refused: convert
        spans first (``driftwatch.read_logs``). A frame must hold canonical events.

    Returns
    -------
    AuditResult
        ``stats["engine"] == "spark"``; ``stats["chunks"]`` is the number of buckets.

    Raises
    ------
    DriftwatchError
        Bad input (missing files, corrupt Parquet, missing columns), bad options, or
        no Java runtime.

    Examples
    --------
    >>> from driftwatch.spark import audit_spark                                   # doctest: +SKIP
    >>> result = audit_spark(spark.read.parquet("s3a://logs/agents/"), policy="policy.toml")  # doctest: +SKIP
    >>> result.write("audit-out")                                                  # doctest: +SKIP
    """
    from driftwatch import policy as policy_mod

    say = progress or (lambda _msg: None)
    t_start = time.perf_counter()
    pol = policy_mod._as_policy(policy)
    since_dt = _audit._parse_time(since, name="since") if since is not None else None
    until_dt = _audit._parse_time(until, name="until") if until is not None else None
    if since_dt and until_dt and until_dt <= since_dt:
        raise InvalidParameterError(f"until ({until_dt.isoformat()}) must be after since ({since_dt.isoformat()})")
    # the options dw.audit checks before its work, checked before the Spark stage (not after it)
    by = normalize_by(by)
    _audit._check_by_columns(by)
    if progress is not None and not callable(progress):
        raise InvalidParameterError(f"progress must be a callable taking one str (e.g. print), got {progress!r}")
    if out is not None and not str(out).strip():
        raise InvalidParameterError("out (--out) is empty; expected a folder for the results such as report/")
    for name, value in (("every", every), ("drift_every", drift_every), ("load_every", load_every)):
        duration_seconds(value, name=f"{name} (--{name.replace('_', '-')})")
    if reference is not None and _audit._is_range(reference):
        _audit.parse_reference(reference)
    _check_format(format, df)
    if reference is not None and not _audit._is_range(reference):
        _check_format(format, reference)
    timings: dict[str, float] = {}
    common = {"n_buckets": n_buckets, "rows_per_bucket": rows_per_bucket, "stage_options": stage_options,
              "spark": spark, "column_map": column_map, "format": format}

    # ---------------------------------------------------------------- reference logs
    reference_tables: _audit.RunTables | None = None
    ref_arg = reference
    if reference is not None and not _audit._is_range(reference):
        t0 = time.perf_counter()
        reference_tables = run_stage_spark(reference, policy=pol, n_examples=0, **common).tables
        ref_arg = None
        timings["reference"] = round(time.perf_counter() - t0, 4)

    # ---------------------------------------------------------------- read + per-run stage on Spark
    t0 = time.perf_counter()
    stage = run_stage_spark(df, policy=pol, since=since_dt, until=until_dt, progress=say, **common)
    tables = stage.tables
    timings["per_run_stage"] = round(time.perf_counter() - t0, 4)
    say(f"per-run stage: {tables.n_runs:,} runs, {tables.loops.height:,} loops ({timings['per_run_stage']:.1f}s)")
    scored_rejected = _audit.rejected_in_window(stage.rejected, tables.features["run_id"], since_dt, until_dt)
    if tables.n_runs == 0 and not _audit._has_unread_runs(scored_rejected):  # (as the local engine)
        raise NoInputError(
            f"{_audit._describe(df) if not isinstance(df, SparkDataFrame) else 'events'}: no valid events to audit"
            + (" in the --since/--until window" if since_dt or until_dt else "")
            + f" ({stage.stats['rows_in']} rows read, {stage.stats['rows_rejected']} rejected); "
            "check the window, or run driftwatch validate on the source to see why rows were rejected"
        )

    # ---------------------------------------------------------------- fleet stage on the driver
    t0 = time.perf_counter()
    result = _audit.fleet_stage(
        tables,
        policy=pol,
        reference=ref_arg,
        reference_tables=reference_tables,
        volume_per_day=volume_per_day,
        every=every,
        drift_every=drift_every,
        load_every=load_every,
        by=by,
        progress=say,
        rejected=scored_rejected,
    )
    timings["fleet_stage"] = round(time.perf_counter() - t0, 4)
    result.rejected = _audit.sort_frame(stage.rejected, ("source_file",))
    timings.update({f"fleet.{k}": v for k, v in result.timings.items()})

    stats = {k: v for k, v in stage.stats.items() if k not in ("buckets", "rows_audited")}
    stats["rows_analysed"] = stage.stats["rows_audited"]  # the rows of the runs in the window
    files = _source_files(df)
    is_polars = isinstance(df, pl.DataFrame | pl.LazyFrame)
    if files:
        sources = [str(s) for s in files]
    elif _is_read_result(df):
        sources = _audit._source_names(df)  # the files its reader read, as the local engine names them
    else:
        sources = ["<in-memory events>" if is_polars else "<spark DataFrame>"]
    stats.update(
        {
            "runs": result.runs.height,
            "engine": "spark",
            "chunks": stage.stats["buckets"],
            "sources": sources,
            "since": _audit._iso(since_dt),
            "until": _audit._iso(until_dt),
        }
    )
    result.stats = stats
    if (files and not any(_is_uri(os.fspath(f)) for f in files)) or is_polars or _is_read_result(df):
        src_fp: list[Any] = [*_audit._sources_fingerprint(files or df, []),  # as the local engine's
                             *_audit._kept_copies_fingerprint(df, stage.rejected)]
    else:
        src_fp = [_spark_fingerprint(df, column_map)]
    result.audit_id = _audit.audit_fingerprint(
        src_fp, since=since_dt, until=until_dt, policy=pol, reference=reference, volume_per_day=volume_per_day,
        every=every, drift_every=drift_every, load_every=load_every, by=by, column_map=column_map,
        format="canonical" if _audit._is_frame(df) else format,  # (as the local engine's)
    )
    timings["total"] = round(time.perf_counter() - t_start, 4)
    result.timings = timings
    if out is not None:
        t0 = time.perf_counter()
        result.write(out)
        say(f"write: {out} ({time.perf_counter() - t0:.1f}s)")
    return result


def _spark_fingerprint(df: Any, column_map: Mapping[str, str] | None) -> Any:
    """A content fingerprint of a Spark DataFrame (one aggregate job): its row count and a sum of
    row hashes over the columns the audit reads, in name order (``repr(df)``, the schema only,
    gave every canonical frame the same audit_id); anything else (a list of URIs) by its repr."""
    if not isinstance(df, SparkDataFrame):
        return repr(df)
    names = sorted(_needed_columns(df.columns, check_column_map(column_map)))
    row_hash = F.xxhash64(*[F.col(c) for c in names]) % F.lit(1_000_000_007)  # (no overflow in ANSI mode)
    try:
        with _case_sensitive(df.sparkSession, df.columns):  # (`status` beside `Status`: see _case_sensitive)
            row = df.select(F.count(F.lit(1)), F.sum(row_hash.cast("long"))).first()
    except Exception as exc:
        raise _spark_error(exc) from None
    return [names, int(row[0]), None if row[1] is None else int(row[1])]


def _source_files(source: Any) -> list[str]:
    if isinstance(source, str | os.PathLike):
        return [os.fspath(source)]
    if isinstance(source, list | tuple) and source and all(isinstance(s, str | os.PathLike) for s in source):
        return [os.fspath(s) for s in source]
    return []


def audit_spark_paths(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    spark: SparkSession | None = None,
    **options: Any,
) -> _audit.AuditResult:
    """:func:`audit_spark` over canonical Parquet read by Spark (``driftwatch audit --engine spark``).

    Parameters
    ----------
    paths : path, folder, glob, URI or a list of them
        Local paths are expanded and checked like the local reader does (same file order,
        same errors); URIs with a scheme (``s3a://``, ``hdfs://``, ``abfss://``, ``gs://``)
        are handed to Spark.
    spark : SparkSession, optional
        ``None``: the active session or a new local one.
    **options
        Keyword options of :func:`audit_spark`.

    Examples
    --------
    >>> from driftwatch.spark import audit_spark_paths                        # doctest: +SKIP
    >>> audit_spark_paths("logs/events", out="audit-out").stats["engine"]     # doctest: +SKIP
    'spark'
    """
    source = list(paths) if isinstance(paths, list | tuple) else paths
    if not isinstance(source, str | os.PathLike | list):
        raise InvalidParameterError(f"paths must be a path or a list of paths, got {type(paths).__name__}")
    return audit_spark(source, spark=spark, **options)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``spark-submit``: ``driftwatch audit --engine spark`` with the given arguments.

    ``spark-submit [options] path/to/driftwatch/spark.py SOURCE... --out DIR [audit options]``
    runs the audit inside the session ``spark-submit`` created.
    """
    from driftwatch import cli

    args = list(sys.argv[1:] if argv is None else argv)
    if "--engine" not in args:
        args += ["--engine", "spark"]
    return int(cli.main(["audit", *args]) or 0)


__all__ = [
    "DEFAULT_ROWS_PER_BUCKET",
    "PACKED_SCHEMA",
    "SparkStage",
    "audit_spark",
    "audit_spark_paths",
    "check_rows",
    "get_session",
    "make_bucket_function",
    "run_stage_spark",
]


if __name__ == "__main__":  # pragma: no cover - spark-submit entry point
    sys.exit(main())
