"""Read agent logs (Parquet) into the canonical event table, losing nothing.

:func:`read_logs` takes files, folders (hive-partitioned or not), globs or lists of them,
adapts each file's format (canonical, OpenTelemetry GenAI spans, OpenInference spans, or a
``column_map``), converts types, and splits the rows into

* ``events``: a lazy canonical frame of the valid rows, and
* ``rejected``: every row that could not be used, with ``source_file``, ``source_row``,
  ``reason`` and ``detail``,

so that ``stats.rows_in == stats.rows_valid + stats.rows_rejected`` always.

Two engines read the Parquet files: ``polars`` (``scan_parquet``) and ``duckdb``
(``read_parquet(..., union_by_name = true)``). They decode, merge schemas, read hive
partitions and apply pushed-down filters; the conversion and the checks after that are the
same Polars expressions, so both engines give identical frames.

Examples
--------
>>> import driftwatch as dw
>>> res = dw.read_logs("sample_logs/otel")                      # doctest: +SKIP
>>> res.stats.rows_in == res.stats.rows_valid + res.stats.rows_rejected  # doctest: +SKIP
True
"""

from __future__ import annotations

import fnmatch as _fnmatch
import glob as _glob_module
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from driftwatch._io import MARKER as RESULTS_MARKER
from driftwatch.errors import (
    CorruptFileError,
    DriftwatchError,
    EmptyInputError,
    InputError,
    InvalidParameterError,
    NoInputError,
    SchemaError,
    short_repr,
)
from driftwatch.formats import (
    FORMATS,
    INTERNAL_PREFIX,
    SPAN_ID,
    SPAN_START_NS,
    SPAN_TRACE,
    Pushdown,
    adapt,
    check_canonical,
    check_column_map,
    detect_format,
    format_hint,
    json_prelude,
    name_mapped_sources,
    nested_columns,
    pushdown_columns,
    span_context,
    span_sources,
    span_tree,
)
from driftwatch.schema import (
    CANONICAL_SCHEMA,
    COLUMNS,
    DEFAULT_AGENT,
    DETAIL_COL,
    REASON_COL,
    STEP_COLUMNS,
    TS_DTYPE,
    conform,
    repeat_reason,
    repeated_rows,
    to_ts,
)

#: Engines ``read_logs(engine=...)`` accepts.
ENGINES: tuple[str, ...] = ("polars", "duckdb")

#: File name endings taken from folders and globs.
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".parq", ".pq")

_FILE = f"{INTERNAL_PREFIX}file"
_ROW = f"{INTERNAL_PREFIX}row"
_ORDER = f"{INTERNAL_PREFIX}order"
_FIRST = f"{INTERNAL_PREFIX}first"
_REPEAT = f"{INTERNAL_PREFIX}repeat"
_HASH = f"{INTERNAL_PREFIX}hash"
_READ = f"{INTERNAL_PREFIX}read"  # file index in the read (sorted path order) << 40 | row in file
_SEQ = f"{INTERNAL_PREFIX}seq"  # file index in the read << 40 | row in file: the order read
_ROW_BITS = 40  # order key = file index << 40 | row in file
_ROW_MASK = (1 << _ROW_BITS) - 1

#: Columns of ``ReadResult.rejected`` after the canonical ones.
REJECTED_EXTRA: dict[str, pl.DataType] = {
    "source_file": pl.String(),
    "source_row": pl.Int64(),
    "reason": pl.String(),
    "detail": pl.String(),
}
REJECTED_SCHEMA: dict[str, pl.DataType] = {**CANONICAL_SCHEMA, **REJECTED_EXTRA}


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadStats:
    """Counts of one :func:`read_logs` call.

    ``rows_in == rows_valid + rows_rejected`` always. ``rows_in`` counts the rows that passed
    the ``since`` / ``until`` / ``agents`` filters (all rows when there are none).
    Also readable like a dict: ``stats["rows_in"]``.

    Attributes
    ----------
    rows_in, rows_valid, rows_rejected : int
        Rows read, rows in ``events``, rows in ``rejected``.
    files : int
        Number of Parquet files read.
    reasons : dict of str to int
        Rejected rows per reason (see :data:`driftwatch.schema.REJECT_REASONS`).
    formats : dict of str to int
        Files per detected format (a file without rows whose format cannot be told is in none).
    engine : str
        ``polars`` or ``duckdb``.
    seconds : float
        Wall time of the checking pass.
    paths : tuple of str
        The files read, in reading order.
    bytes_uncompressed : int
        Uncompressed size of the files' data (Parquet footers: the sum of the row groups'
        ``total_byte_size``), close to the size of the columns in memory.
    """

    rows_in: int
    rows_valid: int
    rows_rejected: int
    files: int
    reasons: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    engine: str = "polars"
    seconds: float = 0.0
    paths: tuple[str, ...] = field(default=(), repr=False)  # (thousands of files: see .paths)
    bytes_uncompressed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the stats (``paths`` as a list)."""
        d = asdict(self)
        d["paths"] = list(self.paths)
        return d

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        """The stat names (so ``dict(stats)`` works)."""
        return list(self.__dataclass_fields__)


@dataclass(frozen=True, eq=False)  # frames have no truth value: == is identity
class ReadResult:
    """What :func:`read_logs` returns.

    Attributes
    ----------
    events : polars.LazyFrame
        The valid rows in the canonical schema (lazy: collecting reads the files again,
        projecting only the columns asked for). Not sorted.
    rejected : polars.DataFrame
        Rejected rows: canonical columns (values that could not be converted are null) plus
        ``source_file``, ``source_row`` (0-based row in that file), ``reason`` and ``detail``
        (the offending raw value).
    stats : ReadStats
        Counts; ``rows_in == rows_valid + rows_rejected``.
    slicer : RowSlicer or None
        The same events by ranges of raw rows (used by chunked audits), when the input's rows
        convert one by one; ``None`` otherwise.
    """

    events: pl.LazyFrame
    rejected: pl.DataFrame
    stats: ReadStats
    slicer: RowSlicer | None = field(default=None, repr=False, compare=False)

    def collect(self, *, streaming: bool = False) -> pl.DataFrame:
        """Collect ``events``, turning read failures into :class:`~driftwatch.errors.InputError`."""
        return _guard(lambda: self.events.collect(engine="streaming" if streaming else "auto"),
                      self.stats.paths)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

_GLOB_CHARS = ("*", "?", "[")


def _is_parquet_name(name: str) -> bool:
    return name.lower().endswith(PARQUET_SUFFIXES) and not name.startswith((".", "_"))


def _real_dirs(folder: str, skip: Callable[[str], bool]) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(folder)`` (top-down, sorted) following symbolic links to folders, each real
    folder once, under its first name in sorted order, so a link cycle ends. Folders whose name
    ``skip`` accepts are not entered; the caller may empty ``dirs`` to prune, as with os.walk."""
    seen = {os.path.realpath(folder)}
    for root, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirs):
            if skip(d):
                continue
            real = os.path.realpath(os.path.join(root, d))
            if real not in seen:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        yield root, dirs, files


def _walk(folder: str) -> list[str]:
    """Parquet files under ``folder``, in sorted order. Symbolic links to folders are followed
    (partitions linked in from elsewhere), each real folder once, so a link cycle ends."""
    out: list[str] = []
    for root, dirs, files in _real_dirs(folder, lambda d: d.startswith((".", "_"))):
        if root != folder and RESULTS_MARKER in files:
            dirs[:] = []  # an audit's results folder inside the logs (--out logs/report): not logs
            continue
        out.extend(os.path.join(root, f) for f in sorted(files) if _is_parquet_name(f))
    # sorted as paths, as a glob's are (os.walk gives a folder's files before its subfolders':
    # logs/b.parquet before logs/a/x.parquet), so the first copy of a step is the same either way
    return sorted(out)


def _has_magic(part: str) -> bool:
    return any(ch in part for ch in _GLOB_CHARS)


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, sorted, but ``**`` visits each real folder once
    (:func:`_real_dirs`): Python's glob follows symbolic links to folders without remembering
    them, so a link cycle repeats the files below it under ever longer names, or never ends.
    As in glob, wildcards do not match names starting with ``.`` unless the pattern part does;
    nor, as in a folder (:func:`_walk`), names starting with ``_`` (a Spark job's
    ``_temporary/``, ``_SUCCESS``, a Delta table's ``_delta_log/``), nor does any wildcard enter
    a driftwatch results folder (``logs/**/*.parquet`` with ``--out logs/report``)."""
    parts = pattern.split(os.sep)
    first = next(i for i, part in enumerate(parts) if _has_magic(part))
    base = os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else "")
    out: list[str] = []

    def join(path: str, name: str) -> str:
        return os.path.join(path, name) if path else name

    def names(path: str, part: str) -> list[str]:
        try:
            entries = os.listdir(path or os.curdir)
        except OSError:
            return []
        hidden, private = part.startswith("."), part.startswith("_")
        return [n for n in entries
                if (hidden or not n.startswith(".")) and (private or not n.startswith("_"))
                and _fnmatch.fnmatch(n, part)]

    def results(folder: str) -> bool:
        return os.path.isfile(os.path.join(folder or os.curdir, RESULTS_MARKER))

    def expand(path: str, rest: list[str]) -> None:
        if not rest:
            out.append(path)
            return
        part, tail = rest[0], rest[1:]
        if part == "**":  # this folder and every folder below it, each real folder once
            start = path or os.curdir
            for root, dirs, files in _real_dirs(start, lambda d: d.startswith((".", "_"))):
                if root != start and RESULTS_MARKER in files:
                    dirs[:] = []
                    continue
                here = root if path else root[len(os.curdir) + 1:]  # (glob names "sub/x", not "./sub/x")
                if tail:
                    expand(here, tail)
                    continue
                # a last ``**`` matches folders and files; glob names the start folder "logs/"
                if root != start or path:
                    out.append(here if root != start else join(path, ""))
                out.extend(join(here, f) for f in files if not f.startswith((".", "_")))
        elif _has_magic(part):
            for name in names(path, part):
                here = join(path, name)
                if os.path.isdir(here) and results(here):
                    continue  # (a last part too: `logs/*` would walk into it)
                if not tail or os.path.isdir(here):
                    expand(here, tail)
        elif tail:
            if os.path.isdir(join(path, part)):
                expand(join(path, part), tail)
        elif os.path.lexists(join(path, part)) or (not part and os.path.isdir(path)):
            out.append(join(path, part))

    if not base or os.path.isdir(base):
        expand(base, parts[first:])
    return sorted(dict.fromkeys(out))


def resolve_sources(source: Any) -> list[str]:
    """Expand ``source`` (path, folder, glob or a list of them) into absolute Parquet file paths.

    Folders are searched recursively for ``*.parquet`` (``.parq``, ``.pq``), skipping hidden
    and ``_``-prefixed entries (``_SUCCESS``, ``.crc``) and driftwatch results folders inside
    them (marked by a ``.driftwatch`` file: ``--out logs/report``), and following symbolic links to
    folders (each real folder once, under its first name in sorted order: a link cycle
    ends); files named explicitly are taken whatever their
    suffix. Globs are expanded as by :func:`glob.glob` (``recursive=True``), except that ``**``
    also visits each real folder once, and that wildcards skip what a folder skips: names
    starting with ``_`` (``_temporary/`` of an unfinished Spark job, ``_delta_log/``) unless
    the pattern's part does, and driftwatch results folders. Order: each item in turn, sorted within a folder or glob;
    duplicates (the same real file under several names: links) are read once, under the first name.

    Raises
    ------
    NoInputError
        A path that does not exist, a glob that matches nothing, a folder without Parquet files.
    InvalidParameterError
        ``source`` is not a path or a list of paths.
    """
    if isinstance(source, str | os.PathLike):
        items = [source]
    elif isinstance(source, Sequence | set | frozenset) and not isinstance(source, bytes):
        items = list(source)
        if not items:
            raise NoInputError("source is an empty list; expected at least one path, folder or glob")
    else:
        hint = ""
        if type(source).__module__.split(".")[0] in ("pandas", "pyarrow"):
            hint = "; convert it with polars.from_pandas(df) or polars.from_arrow(table) and pass the polars frame"
        raise InvalidParameterError(
            f"source must be a path, folder, glob or a list of them (or, for dw.audit, a polars frame), "
            f"got {type(source).__module__.split('.')[0]}.{type(source).__name__}{hint}"
        )
    for item in items:
        if not isinstance(item, str | os.PathLike):
            frame = isinstance(item, pl.DataFrame | pl.LazyFrame)
            hint = " (dw.audit takes one frame of events, not a list of frames)" if frame else ""
            raise InvalidParameterError(
                f"source items must be paths, got {type(item).__name__}: {short_repr(item)}{hint}"
            )
    files: list[str] = []
    for item in items:
        s = os.path.expanduser(os.fspath(item))
        if any(ch in s for ch in _GLOB_CHARS) and not os.path.exists(s):
            matches = _glob(s)
            if not matches:
                skipped = "**" not in s and bool(_glob_module.glob(s))  # (** may loop through links)
                raise NoInputError(
                    f"{s}: the pattern matches only what is skipped (names starting with '_' or '.', driftwatch "
                    "results folders); name such parts in the pattern, e.g. 'logs/_tmp/*.parquet'" if skipped
                    else f"{s}: the pattern matches no file or folder"
                )
            found: list[str] = []
            last = os.path.basename(s)
            for m in matches:
                name = os.path.basename(m)
                if os.path.isdir(m):
                    found.extend(_walk(m))
                elif _is_parquet_name(name) or (last.startswith("_") and name.startswith("_")
                                                and _is_parquet_name(name[1:])):
                    found.append(m)  # (a pattern `_*.parquet` names `_`-prefixed files on purpose)
            if not found:
                raise NoInputError(
                    f"{s}: the pattern matches {len(matches)} entr{'y' if len(matches) == 1 else 'ies'} but no "
                    f"Parquet file (*.parquet); matched e.g. {matches[:3]}"
                )
            files.extend(found)
        elif os.path.isdir(s):
            found = _walk(s)
            if not found:
                entries = sorted(os.listdir(s))
                raise NoInputError(
                    f"{s}: the folder holds no Parquet files (*.parquet, searched recursively); found "
                    f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}{': ' + str(entries[:5]) if entries else ''}"
                )
            files.extend(found)
        elif os.path.isfile(s):
            files.append(s)
        else:
            raise NoInputError(f"{s}: no such file or folder")
    seen: set[str] = set()
    out: list[str] = []
    for f in files:  # one real file is read once, under the first name it is listed by
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            out.append(os.path.abspath(f))
    return out


@dataclass(frozen=True)
class _FileInfo:
    path: str
    schema: dict[str, pl.DataType]
    rows: int
    hive: tuple[str, ...]
    format: str = ""
    has_step: bool = True  # a step column (or a column mapped to step): decides whether steps are derived
    nbytes: int = 0  # uncompressed size of the data (row groups' total_byte_size)
    index: int = 0  # position in the read (stats.paths)
    mapped: tuple[str, ...] = ()  # the column_map sources this file has
    #: span formats: the column each adapter input reads in this file (see formats.span_sources)
    sources: dict[str, tuple[str, bool]] = field(default_factory=dict)
    #: a millisecond timestamp DuckDB cannot read (see _duckdb_overflows): Polars scans the file
    duck_ms: bool = False
    #: columns holding timestamps in a time zone Polars cannot read (a fixed offset such as
    #: ``+05:30``, see _unreadable_zones): DuckDB scans the file, and they read as UTC
    zoned: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, tuple[str, ...], bool, tuple[str, ...]]:
        """Files can share a scan only with the same format, hive keys, step presence and
        column_map sources: in a merged scan a source column missing from a file reads as null
        there, and would replace that file's own target column."""
        return (self.format, self.hive, self.has_step, self.mapped)


def _hive_keys(path: str) -> tuple[str, ...]:
    parts = [p for p in os.path.normpath(os.path.dirname(path)).split(os.sep) if "=" in p and not p.startswith("=")]
    odd = next((p for p in parts if "=" in p.split("=", 1)[1]), None)
    if odd is not None:  # Polars and DuckDB fail on it with a query-plan dump
        raise SchemaError(
            f"{path}: folder {odd!r} is a hive partition whose value holds '='; the readers cannot parse it: "
            "rename the folder (write '=' in a value as %3D)"
        )
    return tuple(p.split("=", 1)[0] for p in parts)


def _looks_like(head: bytes) -> str:
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return " (it looks like JSON text)"
    if text[:2] == b"\x1f\x8b":
        return " (it looks like gzip data)"
    if text[:4] == b"ORC":
        return " (it looks like ORC)"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    if "," in decoded or "\t" in decoded:
        return " (it looks like CSV/TSV text)"
    return " (it looks like text)"


def _probe(path: str) -> _FileInfo:
    """Read a file's footer: schema and row count. Raises CorruptFileError for non-Parquet files."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(64)
            if size >= 8:
                fh.seek(-4, os.SEEK_END)
                tail = fh.read(4)
            else:
                tail = b""
    except OSError as err:
        raise InputError(f"{path}: cannot be opened: {err.strerror or err}") from None
    if size == 0:
        raise CorruptFileError(f"{path}: the file is empty (0 bytes); expected a Parquet file")
    if head[:4] != b"PAR1":
        raise CorruptFileError(
            f"{path}: not a Parquet file: expected the magic bytes b'PAR1' at the start, found {head[:4]!r}"
            f"{_looks_like(head)}"
        )
    if tail != b"PAR1":
        raise CorruptFileError(
            f"{path}: truncated or corrupt Parquet file: expected the footer magic b'PAR1' at the end "
            f"({size} bytes), found {tail!r}"
        )
    try:
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        rows = meta.num_rows
        nbytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        arrow = meta.schema.to_arrow_schema()
        zoned, utc = _unreadable_zones(arrow)
        if zoned:  # Polars' reader panics on the whole file: the schema as Polars would read it in UTC
            schema = dict(pl.from_arrow(utc.empty_table()).schema)  # type: ignore[union-attr]
        else:
            schema = dict(pl.scan_parquet(path, glob=False).collect_schema())  # (a name with [1] is no pattern)
        duck_ms = _duckdb_overflows(meta, schema)
    except Exception as err:  # noqa: BLE001 - any reader failure means the footer is unusable
        raise CorruptFileError(f"{path}: corrupt Parquet footer: {_first_line(err)}") from None
    hive = _hive_keys(path)
    if zoned:
        why = _DUCKDB_MS if duck_ms else _duckdb_clash([*schema, *hive])
        if why:
            zones = sorted({str(_zone_of(arrow.field(c).type)) for c in zoned})
            raise SchemaError(
                f"{path}: column(s) {list(zoned)} hold timestamps in time zone(s) {zones}, which Polars cannot read; "
                f"DuckDB can, but not this file: {why}; write those timestamps in UTC or in a named zone "
                "('Asia/Kolkata')"
            )
    return _FileInfo(path=path, schema=schema, rows=int(rows), hive=hive, nbytes=int(nbytes),
                     duck_ms=duck_ms, zoned=zoned)


#: Column names the duckdb engine adds to each scan (DuckDB matches names ignoring case).
_DUCKDB_OWN = ("file_row_number", _FILE, _ROW)
_DUCKDB_MS = "a millisecond timestamp beyond DuckDB's range"


def _duckdb_clash(names: Sequence[str]) -> str:
    """Why DuckDB cannot read columns (and hive keys) ``names`` as Polars does, or ``""``:
    DuckDB matches column names ignoring case, so it merges names that differ only in case
    (``agent`` and ``Agent``: in one scan, or a file's column and a hive key) or renames one of
    them, and a name like one of the columns its scan adds (``FILE_ROW_NUMBER``) clashes."""
    seen: dict[str, str] = {}
    for name in dict.fromkeys(names):
        low = name.casefold()
        if low in seen:
            return f"columns {seen[low]!r} and {name!r} differ only in case, which DuckDB does not tell apart"
        seen[low] = name
        if low in _DUCKDB_OWN:
            return f"a column named {name!r} clashes with the column {low!r} that the duckdb engine adds"
    return ""


def _zone_of(dtype: Any) -> str | None:
    """The first time zone of a timestamp in ``dtype`` (nested too) that Polars cannot read."""
    import pyarrow as pa

    if pa.types.is_timestamp(dtype):
        return dtype.tz if dtype.tz is not None and not _polars_zone(dtype.tz) else None
    children = [dtype.field(i).type for i in range(dtype.num_fields)]
    return next((z for z in map(_zone_of, children) if z is not None), None)


@lru_cache(maxsize=64)
def _polars_zone(tz: str) -> bool:
    """Whether Polars reads timestamps in time zone ``tz`` (IANA names and whole-hour offsets
    map to ``Etc/GMT-5``; ``+05:30`` or ``Z`` make its Parquet reader panic)."""
    import pyarrow as pa

    try:
        pl.from_arrow(pa.array([], pa.timestamp("us", tz)))
    except BaseException as err:  # noqa: BLE001 - its ComputeError (the reader panics on the same zone)
        if not is_read_failure(err):
            raise
        return False
    return True


def _in_utc(dtype: Any) -> Any:
    """``dtype`` with every timestamp Polars cannot read (see :func:`_polars_zone`) in UTC: the
    stored values are UTC instants whatever the zone, so this is the same time."""
    import pyarrow as pa

    if pa.types.is_timestamp(dtype):
        return pa.timestamp(dtype.unit, "UTC") if dtype.tz is not None and not _polars_zone(dtype.tz) else dtype
    if pa.types.is_struct(dtype):
        return pa.struct([f.with_type(_in_utc(f.type)) for f in dtype])
    if pa.types.is_map(dtype):
        return pa.map_(dtype.key_field.with_type(_in_utc(dtype.key_type)),
                       dtype.item_field.with_type(_in_utc(dtype.item_type)))
    lists = ((pa.types.is_list, pa.list_), (pa.types.is_large_list, pa.large_list),
             (pa.types.is_list_view, pa.list_view), (pa.types.is_large_list_view, pa.large_list_view))
    for test, make in lists:
        if test(dtype):
            return make(dtype.value_field.with_type(_in_utc(dtype.value_type)))
    if pa.types.is_fixed_size_list(dtype):
        return pa.list_(dtype.value_field.with_type(_in_utc(dtype.value_type)), dtype.list_size)
    return dtype


def _unreadable_zones(arrow: Any) -> tuple[tuple[str, ...], Any]:
    """The columns of Arrow schema ``arrow`` with a time zone Polars cannot read, and the
    schema with those timestamps in UTC."""
    zoned = tuple(f.name for f in arrow if _zone_of(f.type) is not None)
    if not zoned:
        return (), arrow
    import pyarrow as pa

    return zoned, pa.schema([f.with_type(_in_utc(f.type)) for f in arrow])


#: DuckDB reads millisecond timestamps as microseconds and fails on a value beyond this.
_DUCKDB_MAX_MS = (2**63 - 1) // 1_000


def _duckdb_overflows(meta: Any, schema: Mapping[str, pl.DataType]) -> bool:
    """Whether a millisecond timestamp column may hold a value DuckDB cannot convert to
    microseconds (beyond year ~294,000: an epoch in ns written as ms), by the footer's
    statistics; a column chunk without them may."""
    ms = {c for c, d in schema.items() if isinstance(d, pl.Datetime) and d.time_unit == "ms"}
    if not ms:
        return False
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if col.path_in_schema not in ms:
                continue
            st = col.statistics
            if st is None or not st.has_min_max:
                if st is None or st.null_count != col.num_values:  # (not all null)
                    return True
            elif max(abs(int(st.min_raw)), abs(int(st.max_raw))) > _DUCKDB_MAX_MS:
                return True
    return False


def _first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, control characters escaped (DuckDB quotes a damaged
    page's raw bytes: ``don't know what type: \\x0f``)."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", line)


# --------------------------------------------------------------------------------------------
# Grouping files whose schemas can be read by one scan
# --------------------------------------------------------------------------------------------


def _dtype_class(dtype: pl.DataType) -> str:
    if dtype == pl.UInt64:
        return "uint64"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if isinstance(dtype, pl.Datetime):  # (milliseconds apart: an upcast in the scan can overflow)
        return f"datetime[{dtype.time_zone}{', ms' if dtype.time_unit == 'ms' else ''}]"
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return "str"
    return str(dtype)


def _merge_dtype(a: pl.DataType, b: pl.DataType) -> pl.DataType:
    if a == b:
        return a
    if a.is_integer() and b.is_integer():
        return pl.Int64()
    if a.is_float() and b.is_float():
        return pl.Float64()
    if isinstance(a, pl.Datetime) and isinstance(b, pl.Datetime):
        return pl.Datetime("us", a.time_zone)
    return pl.String()


@dataclass
class _Group:
    key: tuple[str, tuple[str, ...], bool, tuple[str, ...]]
    files: list[_FileInfo]
    classes: dict[str, str]
    schema: dict[str, pl.DataType]
    sources: dict[str, tuple[str, bool]] = field(default_factory=dict)

    def accepts(self, info: _FileInfo) -> bool:
        """Same key, no column of conflicting types and, for spans, no adapter input read from
        different columns (``trace_id`` in one file, ``traceId`` in the other; a flattened
        ``attributes.*`` column in one, an ``attributes`` struct in the other): a merged scan
        would read one of them, null in the other file."""
        if info.key != self.key:
            return False
        if any(self.sources.get(role, src) != src for role, src in info.sources.items()):
            return False
        if (info.zoned or self.zoned) and (  # only DuckDB reads them: no file it cannot read as Polars does
            info.duck_ms or self.duckdb_clash(info)
        ):
            return False
        return all(self.classes.get(c, _dtype_class(d)) == _dtype_class(d) for c, d in info.schema.items())

    def add(self, info: _FileInfo) -> None:
        self.files.append(info)
        for role, src in info.sources.items():
            self.sources.setdefault(role, src)
        for c, d in info.schema.items():
            self.classes.setdefault(c, _dtype_class(d))
            self.schema[c] = _merge_dtype(self.schema[c], d) if c in self.schema else d

    @property
    def zoned(self) -> bool:
        """A file has a time zone only DuckDB reads (see :func:`_unreadable_zones`)."""
        return any(f.zoned for f in self.files)

    def duckdb_clash(self, info: _FileInfo | None = None) -> str:
        """Why DuckDB cannot read the group (with ``info``) as Polars does, or ``""``: column
        names that differ only in case, or a millisecond timestamp it cannot read."""
        if (info is not None and info.duck_ms) or any(f.duck_ms for f in self.files):
            return _DUCKDB_MS
        return _duckdb_clash([*self.schema, *(info.schema if info is not None else ()), *self.hive])

    @property
    def format(self) -> str:
        return self.key[0]

    @property
    def hive(self) -> tuple[str, ...]:
        return self.key[1]

    @property
    def uniform(self) -> bool:
        return all(f.schema == self.files[0].schema for f in self.files)


def _group(infos: Sequence[_FileInfo]) -> list[_Group]:
    """Files that can share a scan; files without rows are in none (they have nothing to read)."""
    groups: list[_Group] = []
    for info in infos:
        if not info.rows:
            continue
        for g in groups:
            if g.accepts(info):
                g.add(info)
                break
        else:
            g = _Group(info.key, [], {}, {})
            g.add(info)
            groups.append(g)
    return groups


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------


def _as_utc(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        parsed = pl.select(to_ts(pl.lit(value), pl.String()).value).item()
        if parsed is None:
            raise InvalidParameterError(
                f"{name} must be a datetime, a date or ISO-8601 text such as '2026-11-01' or "
                f"'2026-11-01T12:00:00Z', got {value!r}"
            )
        return parsed
    raise InvalidParameterError(
        f"{name} must be a datetime, a date or ISO-8601 text, got {type(value).__name__}: {value!r}"
    )


def _as_agents(agents: Any) -> tuple[str, ...] | None:
    if agents is None:
        return None
    if isinstance(agents, str):
        return (agents,)
    if isinstance(agents, Sequence | set | frozenset) and all(isinstance(a, str) for a in agents):
        if not agents:
            raise InvalidParameterError("agents is empty; pass None to read every agent, or agent names")
        return tuple(sorted(set(agents)))
    raise InvalidParameterError(f"agents must be an agent name or a list of names, got {agents!r}")


@dataclass(frozen=True)
class _Filters:
    since: datetime | None
    until: datetime | None
    agents: tuple[str, ...] | None


def _epoch_ns(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _raw_bounds(filters: _Filters, push: Pushdown, dtype: pl.DataType | None) -> list[tuple[str, Any]]:
    """(op, python value) pairs comparable with the raw time column."""
    out: list[tuple[str, Any]] = []
    for op, t in ((">=", filters.since), ("<", filters.until)):
        if t is None or push.ts_column is None or dtype is None:
            continue
        if push.ts_kind == "epoch_ns":
            out.append((op, _epoch_ns(t)))
        elif isinstance(dtype, pl.Datetime):
            out.append((op, t.replace(tzinfo=None) if dtype.time_zone is None else t.astimezone(ZoneInfo(dtype.time_zone))))
    return out


def _conjunction(preds: list[pl.Expr]) -> pl.Expr | None:
    """``preds[0] & preds[1] & ...``, or ``None`` when there is no predicate."""
    if not preds:
        return None
    out = preds[0]
    for p in preds[1:]:
        out = out & p
    return out


def _polars_raw_filter(filters: _Filters, push: Pushdown, schema: Mapping[str, pl.DataType]) -> pl.Expr | None:
    preds: list[pl.Expr] = []
    if push.ts_column is not None:
        dtype = schema[push.ts_column]
        for op, v in _raw_bounds(filters, push, dtype):
            lit = pl.lit(v, dtype=dtype) if isinstance(dtype, pl.Datetime) else pl.lit(v, dtype=pl.Int64)
            col = pl.col(push.ts_column)
            preds.append(col >= lit if op == ">=" else col < lit)
    if filters.agents is not None and push.agent_column is not None and "default" not in filters.agents:
        preds.append(pl.col(push.agent_column).is_in(list(filters.agents)))
    return _conjunction(preds)


def _duckdb_raw_filters(filters: _Filters, push: Pushdown, schema: Mapping[str, pl.DataType]) -> list[Any]:
    import duckdb

    out: list[Any] = []
    if push.ts_column is not None:
        col = duckdb.ColumnExpression(push.ts_column)
        for op, v in _raw_bounds(filters, push, schema[push.ts_column]):
            const = duckdb.ConstantExpression(v)
            out.append(col >= const if op == ">=" else col < const)
    if filters.agents is not None and push.agent_column is not None and "default" not in filters.agents:
        col = duckdb.ColumnExpression(push.agent_column)
        out.append(col.isin(*[duckdb.ConstantExpression(a) for a in filters.agents]))
    return out


def _canonical_filter(filters: _Filters) -> pl.Expr | None:
    preds: list[pl.Expr] = []
    if filters.since is not None:
        preds.append(pl.col("ts") >= pl.lit(filters.since, dtype=TS_DTYPE))
    if filters.until is not None:
        preds.append(pl.col("ts") < pl.lit(filters.until, dtype=TS_DTYPE))
    if filters.agents is not None:
        # the agent the events get: conform leaves an empty one as it is unless it normalises
        agent = pl.when(pl.col("agent") == "").then(pl.lit(DEFAULT_AGENT)).otherwise(pl.col("agent"))
        preds.append(agent.is_in(list(filters.agents)))
    return _conjunction(preds)


# --------------------------------------------------------------------------------------------
# Engines: one raw LazyFrame per group with _FILE (path) and _ROW (row order) columns
# --------------------------------------------------------------------------------------------


def _scan_polars(
    group: _Group, filters: _Filters, push: Pushdown, rows: tuple[int, int] | None = None
) -> pl.LazyFrame:
    """One group's scan, with row numbers; ``rows`` = (first row, row count) of the group's
    raw rows to read (the slice is pushed into the scan: other row groups are not decoded)."""
    paths = [f.path for f in group.files]
    lf = pl.scan_parquet(
        paths,
        schema=None if group.uniform else dict(group.schema),
        missing_columns="insert",
        extra_columns="ignore",
        hive_partitioning=bool(group.hive),
        hive_schema={k: pl.String for k in group.hive} if group.hive else None,
        include_file_paths=_FILE,
        row_index_name=_ROW,
        glob=False,
        cast_options=pl.ScanCastOptions(
            integer_cast="upcast",
            float_cast="upcast",
            datetime_cast=["nanosecond-downcast", "millisecond-upcast", "convert-timezone"],
            categorical_to_string="allow",
        ),
    )
    if rows is not None:  # before the filters: row numbers are positions in the files
        lf = lf.slice(rows[0], rows[1])
    pred = _polars_raw_filter(filters, push, group.schema)
    if pred is not None:
        lf = lf.filter(pred)
    return lf


def _duckdb_literal(path: str) -> str:
    """``path`` as a DuckDB file pattern that matches just that file: DuckDB expands wildcards
    in every path it reads (``batch[1]/part-0.parquet`` would read ``batch1/...``), so each
    wildcard character is bracketed (``[[]``), which matches it literally."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def _scan_duckdb(
    group: _Group, filters: _Filters, push: Pushdown, only: pl.DataFrame | None = None
) -> pl.LazyFrame:
    """DuckDB ``read_parquet`` of one group as a Polars LazyFrame (an IO source streaming Arrow batches).

    ``only`` (columns ``__dw_file``, ``__dw_row``) keeps just those rows, with a semi-join inside
    DuckDB, so only they are exported to Arrow.
    """
    import duckdb
    from polars.io.plugins import register_io_source

    paths = [f.path for f in group.files]
    con = duckdb.connect()
    # fixed SQL text: the file list is a bound parameter, filters are expression objects
    sql = (
        "SELECT * EXCLUDE (file_row_number), file_row_number AS __dw_row "
        "FROM read_parquet($files, union_by_name = true, hive_partitioning = $hive, "
        "hive_types_autocast = false, filename = '__dw_file', file_row_number = true)"
    )
    params = {"files": [_duckdb_literal(p) for p in paths], "hive": bool(group.hive)}
    raw_filters = _duckdb_raw_filters(filters, push, group.schema)
    wanted = None if only is None else only.select(_FILE, pl.col(_ROW).cast(pl.Int64)).to_arrow()

    def relation(cur: Any) -> Any:
        # time zones come out as Polars reads them ('UTC', not the machine's zone, e.g. 'Etc/UTC');
        # a setting of the connection, and every cursor is one
        cur.execute("SET TimeZone = 'UTC'")
        rel = cur.sql(sql, params=params)
        for f in raw_filters:
            rel = rel.filter(f)
        if wanted is not None:
            rel = rel.join(cur.from_arrow(wanted), [_FILE, _ROW], how="semi")
        return rel

    schema = _guard(lambda: pl.from_arrow(relation(con).limit(0).to_arrow_table()).schema, paths)

    def source(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        cur = con.cursor()
        try:
            rel = relation(cur)
            if with_columns is not None:
                rel = rel.select(*[duckdb.ColumnExpression(c) for c in with_columns])
            reader = rel.to_arrow_reader(batch_size or 131_072)
            remaining = n_rows
            try:
                for batch in iter(reader.read_next_batch, None):
                    df = pl.from_arrow(batch)
                    assert isinstance(df, pl.DataFrame)
                    if predicate is not None:
                        df = df.filter(predicate)
                    if remaining is not None:
                        df = df.head(remaining)
                        remaining -= df.height
                    yield df
                    if remaining is not None and remaining <= 0:
                        break
            except StopIteration:
                return
            finally:
                reader.close()
        finally:
            cur.close()

    return register_io_source(source, schema=schema, is_pure=True)


def locate_read_failure(paths: Sequence[str]) -> str | None:
    """``"<file>, column '<name>'"`` of the first column of ``paths`` that cannot be decoded
    (invalid UTF-8 in a text column, a damaged page), or ``None``. Called only after a read
    failed: it decodes the files column by column until one fails."""
    import pyarrow.parquet as pq

    for path in paths:
        try:  # a time zone Polars' reader panics on (see _unreadable_zones): DuckDB reads the file
            arrow = pq.read_schema(path)
            zoned = bool(_unreadable_zones(arrow)[0])
        except Exception:  # noqa: BLE001 - a footer pyarrow cannot read: Polars' reader says where
            zoned = False
        try:
            names = arrow.names if zoned else pl.scan_parquet(path, glob=False).collect_schema().names()
        except BaseException as err:  # noqa: BLE001 - a read failure or a decoder's panic, nothing else
            if not (is_read_failure(err) or isinstance(err, OSError)):
                raise
            return path
        for name in () if zoned else names:
            try:
                pl.scan_parquet(path, glob=False).select(name).collect()
            except BaseException as err:  # noqa: BLE001 - (as above)
                if not (is_read_failure(err) or isinstance(err, OSError)):
                    raise
                return f"{path}, column {name!r}"
        # Polars decoded every column alone: DuckDB's decoder may still fail on one (a damaged
        # page each reads its own way; the decoder's panic on it is not always repeated)
        found = _locate_with_duckdb(path, names)
        if found is not None:
            return found
    return None


def _locate_with_duckdb(path: str, names: Sequence[str]) -> str | None:
    import duckdb

    con = duckdb.connect()
    try:
        rel = con.read_parquet(path)
        for name in names:
            try:  # (a column expression, not SQL text: the names come from the file)
                rel.select(duckdb.ColumnExpression(name)).to_arrow_table()
            except duckdb.Error:
                return f"{path}, column {name!r}"
    except duckdb.Error:
        return path
    finally:
        con.close()
    return None


def is_panic(err: BaseException) -> bool:
    """A Rust panic raised through pyo3 (``PanicException`` derives from ``BaseException``, not
    ``Exception``): the Parquet decoder panics on some damaged pages instead of failing."""
    return type(err).__name__ == "PanicException"


def is_read_failure(err: BaseException) -> bool:
    """A Polars error or a decoder's panic: what a damaged file gives when it is decoded."""
    return isinstance(err, pl.exceptions.PolarsError) or is_panic(err)


def _guard(fn: Callable[[], Any], paths: Sequence[str]) -> Any:
    """Run ``fn``, turning Polars / DuckDB / OS read failures into driftwatch errors."""
    try:
        return fn()
    except DriftwatchError:
        raise
    except BaseException as err:  # noqa: BLE001 - the boundary: no raw engine traceback reaches the user
        if is_panic(err):  # a damaged page the decoder panics on (a bug panic is not located: re-raised)
            where = locate_read_failure(paths)
            if where is None:
                raise
            raise CorruptFileError(f"{where}: reading failed: {_first_line(err)}") from None
        if not isinstance(err, Exception):
            raise
        import duckdb

        msg = _first_line(err)
        named = next((p for p in paths if p in str(err)), None)
        where = named or (paths[0] if len(paths) == 1 else f"{len(paths)} files under {os.path.commonpath(paths)}")
        if isinstance(err, pl.exceptions.SchemaError | pl.exceptions.ColumnNotFoundError | pl.exceptions.SchemaFieldNotFoundError):
            raise SchemaError(f"{where}: incompatible columns across files: {msg}") from None
        if isinstance(err, OSError) and err.errno is not None:
            raise  # the system's (a full disk, a permission): not the file's content
        if isinstance(err, pl.exceptions.PolarsError | duckdb.Error | OSError):
            # a page that cannot be decoded: which file, column. (DuckDB's failure comes as its
            # error, or, from the Arrow stream it exports, as an OSError whose text starts with
            # its kind: "Invalid Error: ...")
            if isinstance(err, pl.exceptions.ComputeError | duckdb.Error | OSError):
                where = locate_read_failure(paths) or where
                msg = re.sub(r"^Invalid Error: ", "", msg)
            raise CorruptFileError(f"{where}: reading failed: {msg}") from None
        raise


# --------------------------------------------------------------------------------------------
# read_logs
# --------------------------------------------------------------------------------------------


def _probe_all(paths: Sequence[str]) -> list[_FileInfo]:
    if len(paths) <= 4:
        return [_probe(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        return list(pool.map(_probe, paths))


def _columns(info: _FileInfo, cmap: Mapping[str, str], *, lookups: bool = True) -> list[str]:
    """A file's columns, hive keys and the dotted columns of its nested span columns (struct
    fields; the keys looked up in map / key-value / JSON attributes: with ``lookups``, all of
    them, else only the ``gen_ai.*`` ones, which tell OTel apart without naming another format)."""
    try:
        nested = list(nested_columns(info.schema, cmap, where=info.path))
    except SchemaError:
        nested = []  # an attributes column of an unreadable shape: the span adapter says so
    if not lookups:
        nested = [c for c in nested
                  if isinstance(info.schema.get(c.split(".", 1)[0]), pl.Struct) or c.startswith("attributes.gen_ai.")]
    return [*info.schema, *info.hive, *nested]


def _lookups(info: _FileInfo, cmap: Mapping[str, str]) -> list[str]:
    """The dotted columns read out of a file's map / key-value / JSON-text ``attributes``: keys
    the schema does not list, so the data may not hold them (struct fields are real columns)."""
    try:
        nested = nested_columns(info.schema, cmap, where=info.path)
    except SchemaError:
        return []
    return [c for c in nested if not isinstance(info.schema.get(c.split(".", 1)[0]), pl.Struct)]


def _detect(info: _FileInfo, cols: list[str], cmap: Mapping[str, str]) -> str | None:
    """``detect_format`` of one file (columns ``cols``), the looked-up attributes as such; a
    file that fits two formats is an error naming it, unless it holds no rows."""
    lookups = set(_lookups(info, cmap))
    kind = "attributes.openinference.span.kind"
    guessed = [c for c in cols if c in lookups] + ([kind] if kind in lookups else [])
    try:
        return detect_format([c for c in cols if c not in lookups], column_map=cmap, lookups=guessed)
    except SchemaError as exc:
        if not info.rows:
            return None
        raise SchemaError(f"{info.path}: {exc}; found {[*info.schema, *info.hive]}") from None


def _held_lookups(info: _FileInfo, names: Sequence[str], cmap: Mapping[str, str]) -> set[str]:
    """Which of ``names`` (dotted columns looked up in the file's map / key-value / JSON-text
    ``attributes``) some row of the file holds: one aggregate over the attributes column. A file
    that cannot be read here counts as holding them (the read proper reports what is wrong)."""
    exprs = nested_columns(info.schema, cmap, where=info.path)
    wanted = [n for n in names if n in exprs]
    if not wanted:
        return set()
    aggs = [exprs[n][0].is_not_null().any().alias(n) for n in wanted]
    try:
        if info.zoned:  # (Polars' reader cannot open the file: the attributes column through pyarrow)
            import pyarrow.parquet as pq

            frame = pl.from_arrow(pq.read_table(info.path, columns=["attributes"]))
            assert isinstance(frame, pl.DataFrame)
            row = frame.with_columns(json_prelude(info.schema, cmap)).select(aggs)
        else:
            scan = pl.scan_parquet(info.path, glob=False).with_columns(json_prelude(info.schema, cmap))
            row = scan.select(aggs).collect(engine="streaming")
    except Exception:  # noqa: BLE001 - any failure: the read proper names it
        return set(wanted)
    return {n for n in wanted if row.get_column(n).item()}


def _unused_sources(infos: Sequence[_FileInfo], cmap: Mapping[str, str]) -> list[str]:
    """The ``column_map`` sources that no file has: neither a column (or struct field) of any file
    nor a key that some row of a map / key-value / JSON-text ``attributes`` column holds."""
    lookups = [set(_lookups(i, cmap)) for i in infos]
    real = set().union(*[set(_columns(i, cmap)) - looked for i, looked in zip(infos, lookups, strict=True)])
    unused = [src for src in cmap if src not in real]
    for info, looked in zip(infos, lookups, strict=True):
        if not unused:
            break
        looked_up = [src for src in unused if src in looked]
        if looked_up and info.rows:
            held = _held_lookups(info, looked_up, cmap)
            unused = [src for src in unused if src not in held]
    return unused


def _assign_formats(infos: list[_FileInfo], fmt: str, cmap: dict[str, str]) -> list[_FileInfo]:
    out = []
    for index, info in enumerate(infos):
        reserved = [c for c in (*info.schema, *info.hive) if c.startswith(INTERNAL_PREFIX)]
        if reserved:  # (a column __dw_reason was read as the reader's own rejection reason)
            raise SchemaError(
                f"{info.path}: column(s) {reserved} use the prefix {INTERNAL_PREFIX!r} that driftwatch reserves "
                "for its own columns; rename them"
            )
        cols = _columns(info, cmap, lookups=False)
        found = fmt if fmt != "auto" else _detect(info, cols, cmap)
        if not info.rows:  # a quiet day's partition, maybe without columns: nothing to read (_group skips it)
            out.append(_FileInfo(info.path, info.schema, 0, info.hive, found or "", True, info.nbytes, index,
                                 zoned=info.zoned))
            continue
        if found is None:
            raise SchemaError(f"{info.path}: cannot tell the log format: {format_hint(cols)}")
        if found == "canonical":  # per file: in a merged scan a missing column reads as nulls
            check_canonical({**info.schema, **{k: pl.String() for k in info.hive}}, cmap, info.path)
        step_sources = ["step", *[src for src, dst in cmap.items() if dst == "step"]]
        has_step = any(c in info.schema or c in info.hive for c in step_sources)
        present = set(_columns(info, cmap)) if cmap else set()
        mapped = tuple(src for src in cmap if src in present)  # per file: a missing source leaves the file as it is
        sources = span_sources({**info.schema, **{k: pl.String() for k in info.hive}}, found, cmap, where=info.path)
        out.append(_FileInfo(info.path, info.schema, info.rows, info.hive, found, has_step, info.nbytes, index,
                             mapped, sources, info.duck_ms, info.zoned))
    return out


def _row_local(group: _Group) -> bool:
    """Rows convert one by one: canonical input with a step column. Otherwise steps are derived
    from ``ts`` or span hierarchies are built, which needs whole runs (all files at once)."""
    return group.format == "canonical" and group.key[2]


def _raw_frame(
    gi: int,
    group: _Group,
    engine: str,
    filters: _Filters,
    cmap: dict[str, str],
    *,
    only: pl.Series | None = None,
    rows: tuple[int, int] | None = None,
) -> tuple[pl.LazyFrame, dict[str, pl.DataType], str, bool]:
    """One group's scan with ``_ORDER`` (and ``_SEQ`` for groups converted by whole runs): the raw
    frame, its schema, how to name it in messages, and whether ``only`` was applied to it."""
    schema = {**group.schema, **{k: pl.String() for k in group.hive}}
    row_local = _row_local(group)
    # span hierarchies need every span of a trace: filters apply after the tree is built
    push = pushdown_columns(group.format, schema, cmap) if group.format == "canonical" else Pushdown()
    early = only is not None and row_local
    if rows is not None and (group.zoned or not (row_local and engine == "polars")):  # pragma: no cover - RowSlicer guards
        raise InvalidParameterError("internal: row ranges need canonical input with a step column, polars engine")
    if group.zoned:  # a time zone Polars' reader panics on: DuckDB reads the same rows, in UTC
        engine = "duckdb"
    elif engine == "duckdb" and group.duckdb_clash():  # (a millisecond timestamp DuckDB cannot read; names
        engine = "polars"  # it would merge or rename, ignoring case): Polars' reader gives the same rows
    extra: list[pl.Expr] = []
    if engine == "polars":
        raw = _scan_polars(group, filters, push, rows)
        order = pl.col(_ROW).cast(pl.Int64) + (gi << _ROW_BITS)
        if not row_local:  # _ROW counts across the group's files
            seq_base = {f.path: (f.index << _ROW_BITS) - off for f, off in zip(group.files, _offsets(group), strict=True)}
            extra.append(pl.col(_FILE).replace_strict(seq_base, return_dtype=pl.Int64) + pl.col(_ROW).cast(pl.Int64))
    else:
        pairs = None
        if early:
            assert only is not None
            files, rows_in = _locate_in_group(only.to_numpy() & _ROW_MASK, group)
            pairs = pl.DataFrame({_FILE: files, _ROW: rows_in})
        raw = _scan_duckdb(group, filters, push, pairs)
        offsets = dict(zip([f.path for f in group.files], _offsets(group), strict=True))
        order = pl.col(_FILE).replace_strict(offsets, return_dtype=pl.Int64) + pl.col(_ROW) + (gi << _ROW_BITS)
        if not row_local:  # _ROW is the row in its file
            seq_base = {f.path: f.index << _ROW_BITS for f in group.files}
            extra.append(pl.col(_FILE).replace_strict(seq_base, return_dtype=pl.Int64) + pl.col(_ROW).cast(pl.Int64))
    raw = raw.with_columns(order.alias(_ORDER), *[e.alias(_SEQ) for e in extra]).drop(_ROW, _FILE)
    if early and engine == "polars":
        assert only is not None
        raw = raw.filter(pl.col(_ORDER).is_in(only.implode()))
    raw_schema = {**schema, _ORDER: pl.Int64(), **({_SEQ: pl.Int64()} if extra else {})}
    return raw, raw_schema, _group_where(group), early


def _group_where(group: _Group) -> str:
    """How to name a group of files in messages: its file, or its files' common folder."""
    if len(group.files) == 1:
        return group.files[0].path
    return f"{len(group.files)} {group.format} files under {os.path.commonpath([f.path for f in group.files])}"


def _group_frame(
    gi: int,
    group: _Group,
    engine: str,
    filters: _Filters,
    cmap: dict[str, str],
    *,
    check: bool,
    normalize: bool,
    only: pl.Series | None = None,
    rows: tuple[int, int] | None = None,
    tree: pl.LazyFrame | None = None,
    context: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """Scan, adapt and conform one group of files; ``_ORDER`` = group index << 40 | row in group.

    ``only`` (order keys) keeps just those rows: filtered right after the scan (inside DuckDB
    for the duckdb engine) when the rows can be converted one by one (canonical input with a
    ``step`` column), else after conversion. ``rows`` (first row, row count; polars engine,
    row-by-row convertible groups only) reads just that range of the group's rows.

    Groups converted by whole runs (see :func:`_whole_frame`, which derives their steps over all
    such groups) keep ``_SEQ`` and, for span formats, the span keys, and are not filtered by
    time or agent here when they are spans (the hierarchy comes first).
    """
    raw, raw_schema, where, early = _raw_frame(gi, group, engine, filters, cmap, only=only, rows=rows)
    order_by: tuple[str, ...] = (_ORDER,)
    if not _row_local(group):
        order_by += (_SEQ,) if group.format == "canonical" else (_SEQ, SPAN_START_NS, SPAN_TRACE, SPAN_ID)
    try:
        adapted = adapt(raw, raw_schema, group.format, column_map=cmap, where=where, tree=tree, context=context)
        out = conform(adapted, where=where, check=check, normalize=normalize, order_by=order_by)
    except SchemaError as exc:
        if len(group.files) > 1:
            _blame_file(group, raw_schema, cmap)
        raise name_mapped_sources(exc, raw_schema, cmap) from None
    post = _canonical_filter(filters)
    if post is not None and group.format == "canonical":
        out = out.filter(post)
    if only is not None and not early:
        out = out.filter(pl.col(_ORDER).is_in(only.implode()))
    return out


def no_rows_error(paths: Sequence[str]) -> EmptyInputError:
    """The error for files that hold no rows, naming the file, or all of them."""
    where = paths[0] if len(paths) == 1 else f"all {len(paths)} files under {os.path.commonpath(paths)}"
    return EmptyInputError(f"{where}: no rows to read; expected at least one event, found 0 rows")


def _blame_file(group: _Group, raw_schema: Mapping[str, pl.DataType], cmap: dict[str, str]) -> None:
    """Raise the :class:`SchemaError` of the first file of ``group`` that fails conversion on its
    own (so that a message names that file, not the group's folder); return if none does."""
    own = {c: d for c, d in raw_schema.items() if c.startswith(INTERNAL_PREFIX) or c in group.hive}
    for f in group.files:
        schema = {**f.schema, **own}
        lf = pl.LazyFrame(schema=schema)
        try:  # (plans only: nothing is read)
            conform(adapt(lf, schema, group.format, column_map=cmap, where=f.path), where=f.path, check=True)
        except SchemaError as exc:
            raise name_mapped_sources(exc, schema, cmap) from None
        except Exception:  # noqa: BLE001 - another failure says nothing about this file's types
            continue


def _span_tree(
    members: Sequence[tuple[int, _Group]], engine: str, filters: _Filters, cmap: dict[str, str]
) -> pl.LazyFrame:
    """The span hierarchy (:func:`~driftwatch.formats.span_tree`) of span groups, over all of them."""
    trees = []
    for gi, g in members:
        raw, raw_schema, where, _ = _raw_frame(gi, g, engine, filters, cmap)
        trees.append(span_tree(raw, raw_schema, g.format, column_map=cmap, where=where))
    return trees[0] if len(trees) == 1 else pl.concat(trees, how="vertical")


def _span_context(
    groups: Sequence[_Group], engine: str, filters: _Filters, cmap: dict[str, str], paths: Sequence[str]
) -> pl.DataFrame | None:
    """The agent context of every span of the read (:func:`~driftwatch.formats.span_context`),
    computed once and joined by each pass over the files (``None`` without span groups)."""
    members = [(gi, g) for gi, g in enumerate(groups) if not _row_local(g) and g.format != "canonical"]
    if not members:
        return None
    tree = _span_tree(members, engine, filters, cmap)
    return _guard(lambda: span_context(tree), paths)


def _whole_frame(
    members: Sequence[tuple[int, _Group]],
    engine: str,
    filters: _Filters,
    cmap: dict[str, str],
    *,
    normalize: bool,
    context: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """Groups whose conversion needs whole runs, converted to canonical dtypes group by group,
    then concatenated: span hierarchies are built over all of them (a span's parent may be in
    another file; ``context``, when given, is that hierarchy's agent context, computed once), a
    span read again (same trace and span id: OTLP delivers at least once) is a
    ``duplicate_step`` of the first copy read, and steps are derived over all of them: the order
    of ``ts`` within the run (spans: the full-precision start time), ties in the order read.
    Checked (``REASON_COL``) always, so that steps number the valid rows only."""
    spans = members[0][1].format != "canonical"
    tree = _span_tree(members, engine, filters, cmap) if spans and context is None else None
    parts = [_group_frame(gi, g, engine, filters, cmap, check=True, normalize=normalize, tree=tree,
                          context=context if spans else None)
             for gi, g in members]
    lf = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")
    reason, seq = pl.col(REASON_COL), pl.col(_SEQ)
    key: list[pl.Expr] = [pl.col("ts"), seq]
    if spans:
        ok = reason.is_null() & pl.col(SPAN_TRACE).is_not_null() & pl.col(SPAN_ID).is_not_null()
        first, repeat = repeat_reason(seq, ok, SPAN_TRACE, SPAN_ID)
        paths = {f.index: f.path for _, g in members for f in g.files}
        kept = pl.format("kept {} row {}", (first // (1 << _ROW_BITS)).replace_strict(paths, return_dtype=pl.String),
                         first % (1 << _ROW_BITS))
        lf = lf.with_columns(repeat.alias(_REPEAT)).with_columns(
            pl.when(pl.col(_REPEAT).is_not_null()).then(kept).otherwise(pl.col(DETAIL_COL)).alias(DETAIL_COL),
            pl.coalesce(_REPEAT, reason).alias(REASON_COL),
        ).drop(_REPEAT)
        key = [pl.col("ts"), pl.col(SPAN_START_NS), seq]
    step = pl.when(reason.is_null()).then(pl.struct(key)).rank("ordinal").over("run_id").cast(pl.Int64)
    lf = lf.with_columns(step.alias("step"))
    post = _canonical_filter(filters)
    if spans and post is not None:
        lf = lf.filter(post)
    return lf


def _frames(
    groups: Sequence[_Group],
    engine: str,
    filters: _Filters,
    cmap: dict[str, str],
    *,
    check: bool,
    normalize: bool,
    only: pl.Series | None = None,
    context: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """The converted rows of every group: canonical columns, ``_ORDER`` (and the reason columns
    with ``check``). ``only`` (sorted order keys) keeps just those rows; ``context`` is the span
    groups' agent context (:func:`_span_context`), built again when not given."""
    cols = [*COLUMNS, _ORDER, *((REASON_COL, DETAIL_COL) if check else ())]
    parts: list[pl.LazyFrame] = []
    whole: dict[bool, list[tuple[int, _Group]]] = {}
    for gi, g in enumerate(groups):
        if not _row_local(g):
            whole.setdefault(g.format != "canonical", []).append((gi, g))
            continue
        mine = None
        if only is not None:
            mine = only.filter((only // (1 << _ROW_BITS)) == gi)
            if not mine.len():
                continue
        parts.append(_group_frame(gi, g, engine, filters, cmap, check=check, normalize=normalize, only=mine))
    for members in whole.values():
        lf = _whole_frame(members, engine, filters, cmap, normalize=normalize, context=context)
        if only is not None:
            lf = lf.filter(pl.col(_ORDER).is_in(only.implode()))
        parts.append(lf.select(cols))
    if not parts:
        return pl.LazyFrame(schema={**CANONICAL_SCHEMA, _ORDER: pl.Int64(), REASON_COL: pl.String(),
                                    DETAIL_COL: pl.String()}).select(cols)
    return parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")


def _offsets(group: _Group) -> list[int]:
    """Row offset of each file of the group within the group's row numbering."""
    out, acc = [], 0
    for f in group.files:
        out.append(acc)
        acc += f.rows
    return out


def _locate_in_group(rows_in_group: Any, group: _Group) -> tuple[pl.Series, pl.Series]:
    """Row numbers within a group's scan -> (file path, row in that file)."""
    import numpy as np

    offs = np.asarray(_offsets(group), dtype=np.int64)
    idx = np.searchsorted(offs, rows_in_group, side="right") - 1
    paths = np.asarray([f.path for f in group.files], dtype=object)[idx]
    return (pl.Series("source_file", paths, dtype=pl.String),
            pl.Series("source_row", rows_in_group - offs[idx], dtype=pl.Int64))


def _read_order(orders: pl.Series, groups: Sequence[_Group]) -> pl.Series:
    """Order keys (group << 40 | row in the group's scan) as keys of the read's order: the
    file's index in the read (sorted path order) << 40 | row in the file."""
    import numpy as np

    o = orders.to_numpy()
    g = o >> _ROW_BITS
    r = o & _ROW_MASK
    out = np.zeros(len(o), dtype=np.int64)
    for gi, group in enumerate(groups):  # (a handful of groups)
        sel = g == gi
        if sel.any():
            offs = np.asarray(_offsets(group), dtype=np.int64)
            idx = np.searchsorted(offs, r[sel], side="right") - 1
            index = np.asarray([f.index for f in group.files], dtype=np.int64)[idx]
            out[sel] = (index << _ROW_BITS) + r[sel] - offs[idx]
    return pl.Series(_READ, out, dtype=pl.Int64)


def _locate(orders: pl.Series, groups: Sequence[_Group]) -> tuple[pl.Series, pl.Series]:
    """Decode order keys into (source file path, row in that file); vectorised per group."""
    import numpy as np

    o = orders.to_numpy()
    g = o >> _ROW_BITS
    r = o & _ROW_MASK
    paths = np.empty(len(o), dtype=object)
    rows = np.zeros(len(o), dtype=np.int64)
    for gi, group in enumerate(groups):
        sel = g == gi
        if sel.any():
            p, q = _locate_in_group(r[sel], group)
            paths[sel] = p.to_numpy()
            rows[sel] = q.to_numpy()
    return pl.Series("source_file", paths, dtype=pl.String), pl.Series("source_row", rows, dtype=pl.Int64)


def _events_plan(
    groups: Sequence[_Group],
    engine: str,
    filters: _Filters,
    cmap: dict[str, str],
    *,
    normalize: bool,
    checked: bool,
    dup_orders: pl.Series | None,
    ranges: Mapping[int, tuple[int, int]] | None = None,
    context: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """The valid events of every group (or of ``ranges``: group index -> (first row, row count)).

    ``checked``: some rows are rejected, so the checks run again and only rows without a reason
    pass, minus the duplicate steps (``dup_orders``, order keys); without rejected rows the
    conversion runs alone.
    """
    if ranges is None:
        lf = _frames(groups, engine, filters, cmap, check=checked, normalize=normalize, context=context)
    else:
        parts = [
            _group_frame(gi, g, engine, filters, cmap, check=checked, normalize=normalize, rows=ranges[gi])
            for gi, g in enumerate(groups)
            if gi in ranges
        ]
        lf = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")
    if checked:
        lf = lf.filter(pl.col(REASON_COL).is_null())
        if dup_orders is not None and dup_orders.len():
            lf = lf.filter(~pl.col(_ORDER).is_in(dup_orders.implode()))
    return lf.select([pl.col(c) for c in COLUMNS])


@dataclass(frozen=True)
class RowSlicer:
    """The events of a :class:`ReadResult` by ranges of raw rows, for audits in chunks.

    Rows are numbered across the files in reading order (the order of ``stats.paths`` within
    each group of files that share a format and columns). Only input whose rows convert one by
    one (canonical columns with ``step``, the polars engine) can be cut into ranges: derived
    steps and span hierarchies need a whole run at once, and files with a time zone Polars
    cannot read (``+05:30``) are scanned by DuckDB. :attr:`ReadResult.slicer` is ``None``
    otherwise.
    """

    groups: tuple[_Group, ...]
    engine: str
    filters: _Filters
    cmap: dict[str, str]
    normalize: bool
    checked: bool
    dup_orders: pl.Series | None
    paths: tuple[str, ...]

    @property
    def n_rows(self) -> int:
        """Raw rows in all files (before any row is filtered or rejected)."""
        return sum(f.rows for g in self.groups for f in g.files)

    def _ranges(self, lo: int, n: int) -> dict[int, tuple[int, int]]:
        out: dict[int, tuple[int, int]] = {}
        start = 0
        for gi, g in enumerate(self.groups):
            size = sum(f.rows for f in g.files)
            a, b = max(lo, start), min(lo + n, start + size)
            if a < b:
                out[gi] = (a - start, b - a)
            start += size
        return out

    def events(self, lo: int, n: int) -> pl.LazyFrame:
        """The valid events among raw rows ``[lo, lo + n)``, as :attr:`ReadResult.events` has them."""
        ranges = self._ranges(lo, n)
        if not ranges:
            return pl.LazyFrame(schema=CANONICAL_SCHEMA)
        return _events_plan(self.groups, self.engine, self.filters, self.cmap, normalize=self.normalize,
                            checked=self.checked, dup_orders=self.dup_orders, ranges=ranges)

    def run_ranges(self, rows_per_range: int) -> pl.LazyFrame:
        """Per ``run_id``: the first and last range of ``rows_per_range`` raw rows it has rows in
        (``first``, ``last``, UInt32) and its row count ``n``.

        Lazy; reads only the run ids. Counts every row that passed the read's filters, rejected
        ones included, so a run is never placed in fewer ranges than its valid rows span.
        """
        parts = []
        start = 0
        for gi, g in enumerate(self.groups):
            conv = _group_frame(gi, g, self.engine, self.filters, self.cmap, check=False, normalize=False)
            piece = ((pl.col(_ORDER) & _ROW_MASK) + start) // max(int(rows_per_range), 1)
            parts.append(conv.select(pl.col("run_id"), piece.cast(pl.UInt32).alias("_piece")))
            start += sum(f.rows for f in g.files)
        lf = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical")
        return lf.group_by("run_id").agg(
            pl.col("_piece").min().alias("first"), pl.col("_piece").max().alias("last"),
            pl.len().cast(pl.Int64).alias("n"),
        )

    def guard(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a collect), turning read failures into :class:`~driftwatch.errors.InputError`."""
        return _guard(fn, self.paths)


def read_logs(
    source: Any,
    *,
    format: str = "auto",
    engine: str = "polars",
    column_map: Mapping[str, str] | None = None,
    since: datetime | date | str | None = None,
    until: datetime | date | str | None = None,
    agents: str | Sequence[str] | None = None,
) -> ReadResult:
    """Read agent logs from Parquet into canonical events, rejected rows and stats.

    Parameters
    ----------
    source : str, path, or list of them
        Files, folders (searched recursively; hive partitions such as ``date=2026-11-01/``
        become columns, and ``agent=...`` partitions fill ``agent``), or globs (``logs/**/*.parquet``).
    format : {"auto", "canonical", "otel", "openinference"}, default="auto"
        ``auto`` detects each file's format from its column names, so one call can mix formats;
        any other value forces it for every file.
    engine : {"polars", "duckdb"}, default="polars"
        Which engine scans the Parquet files (both give identical frames).
    column_map : dict, optional
        ``{"source column": "canonical column"}``: renames for canonical input, overrides for
        span formats (e.g. ``{"attributes.session.id": "run_id"}``). Applied per file: a file
        with the source column reads it as the canonical column (even when it also has that
        column), a file without it keeps its own canonical column (or the adapter's choice).
    since, until : datetime, date or ISO-8601 str, optional
        Keep steps with ``since <= ts < until`` (naive values are UTC). Pushed down to the scan
        where the raw time column allows (Parquet timestamps, OTel epoch nanoseconds); rows
        without a readable timestamp are not read when a time filter is given.
    agents : str or list of str, optional
        Keep these agents only (pushed down for canonical input, hive ``agent=`` partitions too).

    Returns
    -------
    ReadResult
        ``events`` (canonical LazyFrame of valid rows), ``rejected`` (DataFrame with
        ``source_file``, ``source_row``, ``reason``, ``detail``) and ``stats``.

    Raises
    ------
    NoInputError
        Nothing matches ``source``, a folder holds no Parquet file, or every file has zero rows.
    CorruptFileError
        A file is not Parquet (a CSV renamed ``.parquet``), is truncated or cannot be decoded.
    SchemaError
        A required column is missing, a column has an unconvertible type, the format cannot be
        detected, or a ``column_map`` source is in no file.
    InvalidParameterError
        An option has a value outside what is accepted.

    Notes
    -----
    ``read_logs`` makes one checking pass over the columns needed to validate (not ``args`` /
    ``result``) to count rows per reason and find duplicated ``(run_id, step)``, then collects
    the rejected rows; ``events`` stays a lazy plan that filters the valid rows when collected.

    Examples
    --------
    >>> import driftwatch as dw
    >>> res = dw.read_logs("sample_logs/fleet/events", since="2026-10-05", agents=["billing"])
    >>> res.stats.rows_in == res.stats.rows_valid + res.stats.rows_rejected
    True
    >>> res.events.select("agent").unique().collect().item()
    'billing'
    """
    if format not in FORMATS:
        raise InvalidParameterError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if engine not in ENGINES:
        raise InvalidParameterError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    cmap = check_column_map(column_map)
    filters = _Filters(_as_utc(since, "since"), _as_utc(until, "until"), _as_agents(agents))
    if filters.since is not None and filters.until is not None and filters.until <= filters.since:
        raise InvalidParameterError(f"until ({filters.until}) must be later than since ({filters.since})")
    t0 = time.perf_counter()

    paths = resolve_sources(source)
    infos = _probe_all(paths)
    total = sum(i.rows for i in infos)
    if total == 0:
        raise no_rows_error(paths)
    unused = _unused_sources(infos, cmap)
    if unused:
        cols = sorted({c for i in infos for c in i.schema})
        keys = [src for src in unused if any(src in _lookups(i, cmap) for i in infos)]
        held = (f" (no row of a map, key/value-list or JSON-text 'attributes' column holds the key(s) "
                f"{[k[len('attributes.'):] for k in keys]})") if keys else ""
        raise SchemaError(
            f"column_map source column(s) {unused} are in none of the {len(paths)} file(s){held}; found {cols}")
    infos = _assign_formats(infos, format, cmap)
    groups = _group(infos)

    reason = pl.col(REASON_COL)
    key_hash = (pl.col("run_id").hash(1) ^ pl.col("step").hash(2)).alias(_HASH)
    # Pass 1, over the columns the checks need (the queries share the scan): rows per reason,
    # whether valid rows spell status other than ok/error (then values get normalised), the
    # order keys of rejected rows, and the (run_id, step) hashes that occur twice among valid
    # rows (found by sorting 8-byte hashes).
    context = _span_context(groups, engine, filters, cmap, paths)  # (spans: once, not in every pass)
    base = _frames(groups, engine, filters, cmap, check=True, normalize=False, context=context)
    valid = base.filter(reason.is_null())
    odd_status = (reason.is_null() & pl.col("status").is_not_null() & ~pl.col("status").is_in(["ok", "error"]))
    odd_agent = reason.is_null() & (pl.col("agent") == "")  # (empty: "default", as null)
    q_counts = base.group_by(REASON_COL).agg(pl.len().alias("n"), (odd_status | odd_agent).sum().alias("odd_status"))
    q_bad = base.filter(reason.is_not_null()).select(_ORDER)
    q_hashes = valid.select(key_hash).sort(_HASH).filter(pl.col(_HASH) == pl.col(_HASH).shift(1)).unique()
    counts, bad_orders, hashes = _guard(lambda: pl.collect_all([q_counts, q_bad, q_hashes]), paths)
    reasons = {r: int(n) for r, n in counts.select(REASON_COL, "n").iter_rows() if r is not None}
    rows_in = int(counts.get_column("n").sum())
    normalize = bool(counts.get_column("odd_status").sum())
    wanted = bad_orders.get_column(_ORDER)
    if hashes.height:  # a narrow pass for the rows behind a repeated hash: the duplicate candidates
        cands = _guard(
            lambda: valid.filter(key_hash.is_in(hashes.get_column(_HASH).implode())).select(_ORDER).collect(), paths
        )
        wanted = pl.concat([wanted, cands.get_column(_ORDER)])

    # Pass 2, only when there are such rows: fetch them with all their columns (streamed; for
    # row-by-row convertible input only those rows are converted, or even exported by DuckDB).
    dup_keys = pl.DataFrame(schema={_ORDER: pl.Int64, _FIRST: pl.Int64})
    got = pl.DataFrame()
    if wanted.len():
        wanted = wanted.unique().sort()
        fetch = _frames(groups, engine, filters, cmap, check=True, normalize=normalize, only=wanted, context=context)
        got = _guard(
            lambda: fetch.select(*COLUMNS, _ORDER, REASON_COL, DETAIL_COL).collect(engine="streaming"), paths
        )
        # exact duplicates among the candidates: keep the first row read, reject the others
        # (copies as duplicate_step, other actions or arguments as conflicting_step)
        # "first" in the order of the read (files in sorted path order, rows in file order), not of
        # the scans: files of one schema share a scan, so a later file could come first
        got = got.with_columns(_read_order(got.get_column(_ORDER), groups).alias(_READ))
        first, repeat = repeat_reason(pl.col(_READ), pl.lit(True), "run_id", "step", compare=STEP_COLUMNS)
        dup_keys = (
            got.filter(pl.col(REASON_COL).is_null())
            .with_columns(first.alias(_READ + "_first"), repeat.alias(_REPEAT))
            .filter(pl.col(_REPEAT).is_not_null())
            .join(got.select(pl.col(_READ).alias(_READ + "_first"), pl.col(_ORDER).alias(_FIRST)),
                  on=_READ + "_first", how="left")
            .select(_ORDER, _FIRST, _REPEAT)
        )
        got = got.join(dup_keys, on=_ORDER, how="left").with_columns(
            pl.coalesce(_REPEAT, reason).alias(REASON_COL)
        ).filter(reason.is_not_null())
        for r, n in dup_keys.group_by(_REPEAT).len().iter_rows():  # (spans read twice are counted already)
            reasons[r] = reasons.get(r, 0) + n
    rows_rejected = sum(reasons.values())

    if rows_rejected:
        source_file, source_row = _locate(got.get_column(_ORDER), groups)
        kept_file, kept_row = _locate(got.get_column(_FIRST).fill_null(0), groups)
        detail = pl.select(
            pl.when(pl.lit(got.get_column(_FIRST)).is_not_null())
            .then(pl.format("kept {} row {}", pl.lit(kept_file), pl.lit(kept_row)))
            .otherwise(pl.lit(got.get_column(DETAIL_COL)))
        ).to_series()
        rejected = (
            got.select(COLUMNS)
            .with_columns(source_file, source_row, got.get_column(REASON_COL).alias("reason"), detail.alias("detail"))
            .sort("source_file", "source_row")
        )
    else:
        rejected = pl.DataFrame(schema=REJECTED_SCHEMA)
    if rejected.height != rows_rejected:  # pragma: no cover - internal consistency
        raise InputError(
            f"internal error: counted {rows_rejected} rejected rows but collected {rejected.height}; "
            "did the input change while it was read?"
        )

    # without rejected rows the events plan converts without evaluating the checks again
    dup_orders = dup_keys.get_column(_ORDER) if dup_keys.height else None
    events = _events_plan(groups, engine, filters, cmap, normalize=normalize, checked=bool(rows_rejected),
                          dup_orders=dup_orders, context=context)
    slicer = None
    if engine == "polars" and all(g.format == "canonical" and g.key[2] and not g.zoned for g in groups):
        slicer = RowSlicer(tuple(groups), engine, filters, cmap, normalize, bool(rows_rejected), dup_orders,
                           tuple(paths))
    stats = ReadStats(
        rows_in=rows_in,
        rows_valid=rows_in - rows_rejected,
        rows_rejected=rows_rejected,
        files=len(paths),
        reasons=dict(sorted(reasons.items())),
        formats=dict(Counter(i.format for i in infos if i.format)),
        engine=engine,
        seconds=round(time.perf_counter() - t0, 4),
        paths=tuple(paths),
        bytes_uncompressed=sum(i.nbytes for i in infos),
    )
    return ReadResult(events=events, rejected=rejected, stats=stats, slicer=slicer)


def check_frame(frame: pl.DataFrame | pl.LazyFrame, *, where: str = "events") -> ReadResult:
    """The checks of :func:`read_logs` for events already in memory.

    The same conversions and reasons as for files: the rows that cannot be used (null ids,
    bad timestamps or values, a repeated ``(run_id, step)`` after its first row, ...) go to
    ``rejected`` with ``source_file`` = ``where`` and ``source_row`` = the row's position, and
    ``rows_in == rows_valid + rows_rejected``. :func:`driftwatch.audit` applies it to frames.
    The frame is collected (a LazyFrame too): logs larger than memory are read from their
    paths, by :func:`read_logs`, in bounded passes.

    Examples
    --------
    >>> import polars as pl
    >>> raw = pl.DataFrame({"run_id": ["a", "a", "a", None], "step": [1, 1, 1, 2], "action": ["x", "x", "y", "z"]})
    >>> rr = check_frame(raw)  # row 1 repeats row 0; row 2 gives step 1 another action
    >>> rr.stats.rows_valid, rr.rejected.select("source_row", "reason").rows()
    (1, [(1, 'duplicate_step'), (2, 'conflicting_step'), (3, 'null_run_id')])
    """
    t0 = time.perf_counter()
    lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    reserved = [c for c in lf.collect_schema() if c.startswith(INTERNAL_PREFIX)]
    if reserved:
        raise SchemaError(
            f"{where}: column(s) {reserved} use the prefix {INTERNAL_PREFIX!r} that driftwatch reserves for its "
            "own columns; rename them"
        )
    checked = conform(lf.with_row_index(_ORDER), where=where, check=True, keep_extra=True).collect()
    checked = checked.select(*COLUMNS, pl.col(_ORDER).cast(pl.Int64), REASON_COL, DETAIL_COL)
    reason = pl.col(REASON_COL)
    # a repeated (run_id, step): the first valid row is kept
    rep = repeated_rows(checked, _ORDER, reason.is_null(), ("run_id", "step"), STEP_COLUMNS)
    if rep.height:
        checked = checked.join(
            rep.rename({"first": _FIRST, "reason": _REPEAT}), on=_ORDER, how="left", maintain_order="left"
        ).with_columns(
            pl.when(pl.col(_REPEAT).is_not_null()).then(pl.format("kept {} row {}", pl.lit(where), _FIRST))
            .otherwise(pl.col(DETAIL_COL)).alias(DETAIL_COL),
            pl.coalesce(_REPEAT, reason).alias(REASON_COL),
        )
    bad = checked.filter(reason.is_not_null())
    rejected = bad.select(
        *COLUMNS,
        pl.lit(where, dtype=pl.String).alias("source_file"),
        pl.col(_ORDER).alias("source_row"),
        reason.alias("reason"),
        pl.col(DETAIL_COL).alias("detail"),
    ).cast(REJECTED_SCHEMA)
    events = checked.filter(reason.is_null()).select(COLUMNS)
    reasons = {str(r): int(n) for r, n in bad.group_by(REASON_COL).len().iter_rows()}
    stats = ReadStats(
        rows_in=checked.height,
        rows_valid=events.height,
        rows_rejected=rejected.height,
        files=0,
        reasons=dict(sorted(reasons.items())),
        formats={},
        engine="polars",
        seconds=round(time.perf_counter() - t0, 4),
        paths=(),
        bytes_uncompressed=0,
    )
    return ReadResult(events=events.lazy(), rejected=rejected, stats=stats, slicer=None)


__all__ = [
    "ENGINES",
    "PARQUET_SUFFIXES",
    "REJECTED_SCHEMA",
    "ReadResult",
    "ReadStats",
    "RowSlicer",
    "check_frame",
    "read_logs",
    "resolve_sources",
]
