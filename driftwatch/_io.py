"""Crash-safe writes: a killed audit never leaves a partial file or a half-written folder.

Two levels of atomicity:

* **Files.** :func:`atomic_write_bytes`, :func:`atomic_write_text`,
  :func:`atomic_write_json` and :func:`atomic_write_parquet` write into a
  temporary file in the destination's own directory (same filesystem), flush
  and ``fsync`` it, then ``os.replace`` it over the destination. Readers see
  either the old file or the new one, never a prefix.
* **Folders.** :func:`atomic_directory` yields a fresh temporary folder next to
  the destination; when the block finishes without error, the temporary folder
  is swapped with the destination in one step (``renameat2(RENAME_EXCHANGE)``
  on Linux), and the previous contents are deleted afterwards. If the process
  dies before the swap, the destination still holds the previous, complete
  results; the orphaned temporary folder (hidden, named after the destination,
  this machine and the process) is removed by the next call that writes in the
  same folder, whatever its destination. Where the atomic exchange is unavailable (not
  Linux, or a filesystem that refuses it) two renames are used, and a run that
  dies between them is repaired by the next call (:func:`recover_directory`).

Examples
--------
>>> import tempfile, pathlib
>>> from driftwatch._io import atomic_directory, atomic_write_text
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_directory(root / "results") as tmp:
...     _ = atomic_write_text(tmp / "summary.json", "{}")
>>> sorted(p.name for p in (root / "results").iterdir())
['.driftwatch', 'summary.json']
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from driftwatch.errors import InvalidParameterError

#: Marker file written into every results folder managed by :func:`atomic_directory`.
MARKER = ".driftwatch"

_TMP_TAG = ".tmp-"
_OLD_TAG = ".old-"


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry to disk (best effort: not every OS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_sibling(path: Path, tag: str) -> Path:
    """``.<name><tag><host>-<pid>-<hex>`` beside ``path``: the host tag and the process id tell
    the next write, whatever its destination, whether the process that made it is dead
    (:func:`_remove_dead_siblings`)."""
    return path.parent / f"{_sibling_stem(path.name)}{tag}{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


#: A temporary sibling made by :func:`_tmp_sibling` (``.<name>.tmp-<host>-<pid>-<hex>``); group 1
#: is the host tag, group 2 the process id.
_OWN_TMP = re.compile(rf"\..+{re.escape(_TMP_TAG)}([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{8}}", re.DOTALL)


def _remove_dead_siblings(folder: Path) -> None:
    """Delete the temporary siblings (``.<name>.tmp-<host>-<pid>-<hex>``, files and folders) in
    ``folder`` that a dead process of this machine or container left, whatever their destination:
    an audit killed while writing ``night1/`` left ``.night1.tmp-*`` for ever when the next audit
    wrote ``night2/``. A name of another host, of an older version (no host tag), not exactly of
    this pattern, or of a live process (this one included: another of its writes) stays."""
    host = _host_tag()
    own = [p for p in folder.glob(f".*{_TMP_TAG}{host}-*")
           if (m := _OWN_TMP.fullmatch(p.name)) and int(m[2]) != os.getpid()]  # (this process's: being written)
    if own:
        _remove_dead(folder, None, also=own, host=host)


#: The longest file name most file systems take, in bytes.
_NAME_MAX = 255
#: Bytes a sibling's name adds after its stem: the tag, the host tag, the process id and the random part.
_SIBLING_TAIL = 32


def _sibling_stem(name: str) -> str:
    """``.<name>``, the start of the temporary siblings' names of ``name``; for a name so long
    that a sibling's would pass the file system's limit (a 250-byte ``--out`` is legal), a cut
    of it and a hash of the whole: the sibling failed with "File name too long" once the whole
    audit was done."""
    raw = os.fsencode(name)
    if len(raw) + 1 + _SIBLING_TAIL <= _NAME_MAX:
        return f".{name}"
    digest = hashlib.blake2b(raw, digest_size=4).hexdigest()
    keep = raw[: _NAME_MAX - _SIBLING_TAIL - 1 - 1 - len(digest)]
    return f".{os.fsdecode(keep).encode('utf-8', 'surrogateescape').decode('utf-8', 'ignore')}~{digest}"


def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` absolute, with symbolic links followed; a link loop (``a -> b -> a``) is an
    :class:`InvalidParameterError` naming the path, not Python's ``RuntimeError``."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:
        raise InvalidParameterError(f"{path}: cannot be followed ({exc}); choose another output path") from None


@contextlib.contextmanager
def _replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; once the body has written and synced it, move it onto ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. A symbolic link
    is written through (its target is replaced); a path that is not a regular file (a FIFO, a
    device such as ``/dev/stdout``) is refused, never replaced.
    """
    dest = Path(path)
    if not str(path).strip():
        raise InvalidParameterError("the output path is empty; expected a file name such as loops.parquet")
    if dest.is_dir():
        raise InvalidParameterError(f"{dest}: is a folder; expected a file name for the output (e.g. {dest / 'out.parquet'})")
    if dest.is_symlink():  # write through the link (the target is replaced, the link stays)
        dest = resolved(dest)
    if dest.exists() and not dest.is_file():  # a FIFO, a device (/dev/stdout), a socket
        raise InvalidParameterError(
            f"{path}: is not a regular file; expected a file name for the output (it is replaced as a whole)"
        )
    _check_ancestors(dest, create=False)
    _remove_dead(dest.parent, f"{glob.escape(_sibling_stem(dest.name))}{_TMP_TAG}*")  # of a killed write
    _remove_dead_siblings(dest.parent)  # (and of killed writes to other files of the folder)
    tmp = _tmp_sibling(dest, _TMP_TAG)
    try:
        yield tmp
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _naming(exc, tmp, dest) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)


def _check_ancestors(dest: Path, *, create: bool) -> None:
    """Refuse an output path under a regular file (``afile/sub``: said "afile: File exists") or,
    unless the folders are to be created, under a folder that does not exist."""
    parent = dest.absolute().parent
    for anc in (parent, *parent.parents):
        if anc.is_dir():
            break
        if anc.exists() or anc.is_symlink():
            what = "a file, not a folder" if anc.is_file() else "not a folder"
            raise InvalidParameterError(f"{dest}: {anc} is {what}; choose an output path in a folder")
    if not create and not parent.is_dir():
        raise InvalidParameterError(
            f"{dest}: the folder {dest.parent} does not exist; create it or choose an output path in a folder"
        )


def _naming(exc: OSError, tmp: Path, dest: Path) -> OSError:
    """``exc`` (raised on the temporary ``tmp``) naming the user's ``dest`` instead: the hidden
    ``.x.tmp-<pid>-<hex>`` means nothing to the user. An error without a file name (a write
    that found the disk full: "No space left on device") names ``dest`` too."""
    if exc.filename is None and exc.errno is not None and exc.strerror and str(tmp) not in str(exc):
        return type(exc)(exc.errno, exc.strerror, str(dest))
    if exc.filename not in (str(tmp), tmp) and str(tmp) not in str(exc):
        return exc
    if exc.strerror:
        return type(exc)(exc.errno, exc.strerror, str(dest))
    code = re.search(r"\(os error (\d+)\)", str(exc))  # Polars: "No such file ... (os error 2): <tmp>"
    if code:
        return type(exc)(int(code[1]), os.strerror(int(code[1])), str(dest))
    text = str(exc).replace(str(tmp), str(dest))
    try:
        return type(exc)(text)
    except TypeError:  # pragma: no cover - an OSError subclass with another constructor
        return OSError(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then ``os.replace``).

    Parameters
    ----------
    path : str or path-like
        Destination file. Its folder must exist.
    data : bytes
        The complete new content.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with _replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def trim_heap() -> bool:
    """Give the C heap's free memory back to the operating system (glibc's ``malloc_trim``).

    numpy's arrays live on the C heap; after a large stage frees them, glibc keeps the pages
    (in one arena per thread that allocated) for reuse, and the process's RSS stays high.
    The audit calls this between stages of a large fleet. Returns False where it is not
    available (another C library, another OS); it never fails.
    """
    libc = _libc()
    try:
        return bool(libc.malloc_trim(0)) if libc is not None else False
    except AttributeError:  # a C library without it (musl)
        return False


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library's functions (Linux), loaded once; ``None`` elsewhere.

    ``ctypes.CDLL(None)`` is the process's own symbol table, which holds the C library's:
    ``ctypes.util.find_library("c")`` would run ``ldconfig`` in a child process, a fork of the
    whole audit (gigabytes at 100M events) at every call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as pretty, key-sorted JSON (UTF-8, trailing newline) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


#: Rows per row group of the Parquet files the audit writes.
ROW_GROUP_ROWS = 128 * 1024


def atomic_write_parquet(frame: pl.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` as Parquet (zstd, statistics, row groups of :data:`ROW_GROUP_ROWS`) atomically.

    The bytes depend only on the frame's content and schema (no timestamps are
    embedded, and the row groups do not follow the frame's chunks in memory), so the
    same frame always gives the same file.
    """
    with _replacing(path) as tmp:
        try:
            frame.write_parquet(tmp, compression="zstd", statistics=True, row_group_size=ROW_GROUP_ROWS)
        except pl.exceptions.PolarsError:
            # Polars says a full disk as a broken file ("File out of specification: Invalid
            # thrift: transport error"): say what it is when the disk has no room left
            if _disk_full(tmp.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from None
            raise
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    return Path(path)


def _disk_full(folder: Path) -> bool:
    """Whether the file system of ``folder`` has (almost) no room left for this user."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # (no statvfs on Windows)
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


# --------------------------------------------------------------------------- folders

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux ``renameat2``). False when unsupported."""
    libc = _libc()
    try:
        fn = libc.renameat2 if libc is not None else None
    except AttributeError:  # glibc before 2.28
        return False
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def recover_directory(path: str | os.PathLike[str]) -> None:
    """Repair what an interrupted :func:`atomic_directory` may have left next to ``path``.

    * ``path`` missing but a previous version parked as ``.<name>.old-*``: put it back.
    * Leftover ``.<name>.tmp-*`` / ``.<name>.old-*`` folders of dead processes: delete them.
    * Leftover ``.<other>.tmp-<host>-<pid>-<hex>`` files and folders in the same folder, of dead
      processes of this machine (a killed audit into another ``--out``): delete them.
    """
    dest = Path(path)
    parent = dest.parent
    if not parent.is_dir():
        return
    stem = glob.escape(_sibling_stem(dest.name))
    olds = sorted(parent.glob(f"{stem}{_OLD_TAG}*"), key=lambda p: p.stat().st_mtime)
    if not dest.exists() and olds:
        os.rename(olds[-1], dest)
        olds = olds[:-1]
    _remove_dead(parent, f"{stem}{_TMP_TAG}*", also=olds)
    _remove_dead_siblings(parent)  # (those of killed writes to other destinations in this folder)


def _remove_dead(folder: Path, pattern: str | None, *, also: Iterable[Path] = (), host: str | None = None) -> None:
    """Delete the files and folders of ``folder`` matching ``pattern`` (and ``also``) that a dead
    process left (their names end in ``-<pid>-<random>``); those of a live process stay. With
    ``host``, only names that carry it before the pid (``-<host>-<pid>-<random>``) and a pid: a
    process of another machine or container sharing the folder cannot be told dead from here."""
    for leftover in [*(folder.glob(pattern) if pattern is not None else ()), *also]:
        pid = _pid_of(leftover)
        if host is not None and (pid is None or leftover.name.rsplit("-", 3)[-3:-2] != [host]):
            continue
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue  # another audit is writing right now
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                leftover.unlink()


#: Start of the name of a temporary folder for an audit's chunk and spill files.
CHUNK_DIR_PREFIX = "driftwatch-chunks-"


def chunk_dir(parent: Path | None) -> str:
    """A fresh temporary folder for an audit's chunk and spill files, in ``parent`` (hidden there)
    or in the system's temporary folder. Its name carries the process id, so that the next
    audit removes the folders of audits that were killed (a cron or Airflow timeout) rather than
    leaving their spilled tables on the disk."""
    host = _host_tag()
    prefix = f".{CHUNK_DIR_PREFIX}" if parent is not None else CHUNK_DIR_PREFIX
    folder = parent if parent is not None else Path(tempfile.gettempdir())
    _remove_dead(folder, f"{prefix}*", host=host)
    return tempfile.mkdtemp(prefix=f"{prefix}{host}-{os.getpid()}-", dir=folder)


@functools.cache
def _host_tag() -> str:
    """A short tag of this machine and process-id namespace (a container has its own): process
    ids are only comparable between processes with the same tag."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return hashlib.blake2b(f"{platform.node()}/{ns}".encode(), digest_size=4).hexdigest()


def _pid_of(p: Path) -> int | None:
    tail = p.name.rsplit("-", 2)
    try:
        return int(tail[-2])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_replaceable(path: str | os.PathLike[str], *, expected: Collection[str] = ()) -> None:
    """Raise :class:`InvalidParameterError` unless ``path`` may be replaced as a whole.

    A folder may be replaced when it does not exist, is empty, or carries the :data:`MARKER`
    of an earlier driftwatch write and holds nothing else but names in ``expected``. Anything
    else (``--out .``, a folder of the user's own files, even ones named ``report.html`` or
    ``summary.json`` when no marker says driftwatch wrote them, an earlier results folder the
    user added notes to) is refused rather than deleted.

    The folder the results are built in beside ``path`` must be creatable too: a parent the user
    may not write in (or a read-only mount) raises the ``OSError`` the write would raise at the
    end (``PermissionError``, ``OSError`` read-only file system), naming ``path``, and a path under
    a regular file an :class:`InvalidParameterError`, so that an audit says so before its work.
    """
    dest = Path(path)
    if not dest.exists():
        _check_creatable(dest)
        return
    if not dest.is_dir():
        raise InvalidParameterError(
            f"{dest}: exists and is not a folder; --out needs a folder for the results "
            "(choose a new or an earlier results folder)"
        )
    if os.path.ismount(dest):  # (a container's volume mounted at --out: it cannot be swapped)
        raise InvalidParameterError(
            f"{dest}: is a mount point; the results folder is replaced as a whole, which a mount point "
            f"cannot be: give a folder inside it, e.g. --out {dest / 'report'}"
        )
    names = {p.name for p in dest.iterdir()}
    if names and MARKER not in names:
        # every results folder driftwatch has ever written carries the marker: without it the
        # files are the user's, even when named report.html or summary.json
        shown = ", ".join(sorted(names)[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise InvalidParameterError(
            f"{dest}: folder holds files that are not driftwatch results ({shown}; no {MARKER} file marks it "
            "as a results folder); the results folder is replaced as a whole, so choose a new or empty "
            "folder for --out"
        )
    # (a temporary file of a driftwatch write that was killed, e.g. .report.html.tmp-<host>-<pid>-<hex>
    # of a `driftwatch report`, goes with the folder)
    tmp_of = "|".join(map(re.escape, expected))
    ours = re.compile(rf"^\.(?:{tmp_of}){re.escape(_TMP_TAG)}(?:[0-9a-f]{{8}}-)?\d+-[0-9a-f]+$") if expected else None
    foreign = sorted(n for n in names - set(expected) - {MARKER} if ours is None or not ours.match(n))
    if not foreign:
        _check_creatable(dest)
        return
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    # an earlier results folder, with the user's own files added since
    raise InvalidParameterError(
        f"{dest}: earlier results folder now also holds files driftwatch did not write ({shown}); "
        "the results folder is replaced as a whole, so move them out or choose another folder for --out"
    )


def _check_creatable(dest: Path) -> None:
    """Raise what building ``dest`` beside itself would raise at the end, by creating (and
    removing) an empty temporary folder where that one will be made: in ``dest``'s folder, or,
    when that folder is still to be created, in the nearest one that exists (named then as the
    first folder to create, as ``mkdir`` would). A write test, not a test of the mode bits: it
    finds a read-only mount or an ACL too, and holds for root as for any user."""
    target = dest.absolute()
    _check_ancestors(target, create=True)
    first = target
    while not first.parent.is_dir():  # (a folder to create: the probe goes in the one that exists)
        if first.parent == first:
            return
        first = first.parent
    probe = _tmp_sibling(first, _TMP_TAG)
    try:
        probe.mkdir()
    except OSError as exc:  # (said as the late failure would: "<dest>: Permission denied")
        raise _naming(exc, probe, first) from None
    with contextlib.suppress(OSError):
        probe.rmdir()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, expected: Collection[str] = ()) -> Iterator[Path]:
    """Build a folder's new content aside and swap it in only when complete.

    Parameters
    ----------
    path : str or path-like
        The folder to (re)place. Its parent is created if needed.
    expected : collection of str, default=()
        File names an earlier results folder (one with the :data:`MARKER`) may hold and
        still be replaced (see :func:`check_replaceable`).

    Yields
    ------
    pathlib.Path
        An empty temporary folder on the same filesystem. Write everything into
        it; on normal exit it becomes ``path`` (with a :data:`MARKER` file). On
        an exception it is deleted and ``path`` is left untouched.
    """
    dest = Path(path).absolute()
    if dest.is_symlink():  # a link to the results (``latest -> 2026-11-24/``): replace what it points to
        dest = resolved(dest)
    _check_ancestors(dest, create=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(dest)
    check_replaceable(dest, expected=expected)
    tmp = _tmp_sibling(dest, _TMP_TAG)
    try:
        tmp.mkdir()
    except OSError as exc:  # (a folder the user may not write in: said as the user's path)
        raise _naming(exc, tmp, dest) from None
    mode = _keep_mode_and_group(dest, tmp)
    try:
        yield tmp
        (tmp / MARKER).write_text("driftwatch results folder; replaced as a whole by each audit\n")
        if mode is not None:
            with contextlib.suppress(OSError):
                os.chmod(tmp, mode)
        _fsync_dir(tmp)
        _swap_in(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        name = str(exc.filename or "")
        if exc.errno is not None and exc.strerror and name.startswith(str(tmp)):
            # (a file of the folder being built: named as the user's, not the hidden .x.tmp-<pid>-<hex>/f)
            raise type(exc)(exc.errno, exc.strerror, str(dest) + name[len(str(tmp)):]) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_state_outside_results(db: Path, out: Path | None) -> None:
    """Raise :class:`InvalidParameterError` when the state database ``db`` would sit inside the
    results folder ``out`` or inside any results folder (one with the :data:`MARKER`): each
    audit replaces that folder, and the database would then block it."""
    db = db.absolute()
    if out is not None:
        results = out.absolute()
        if db == results or results in db.parents:
            raise InvalidParameterError(
                f"the state database ({db}) cannot be inside the results folder --out {results}: each audit "
                "replaces that folder; keep the state next to it (e.g. --state state/ --out report/)"
            )
    inside = next((p for p in db.parents if (p / MARKER).is_file()), None)
    if inside is not None:
        raise InvalidParameterError(
            f"the state database ({db}) cannot be inside a results folder ({inside}, marked by its {MARKER} "
            "file): each audit replaces that folder; keep the state next to it (e.g. --state state/ --out report/)"
        )


def _keep_mode_and_group(dest: Path, tmp: Path) -> int | None:
    """Give ``tmp`` the group of the folder it replaces, and while it is written that folder's
    mode with write access for its owner; return the mode to set once it is written (``None``
    for a new folder). A results folder kept to its group (``0770``, setgid) was replaced by a
    world-readable one owned by the default group."""
    try:
        st = dest.stat()
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    with contextlib.suppress(OSError):
        if st.st_gid != tmp.stat().st_gid:
            os.chown(tmp, -1, st.st_gid)
    with contextlib.suppress(OSError):
        os.chmod(tmp, mode | stat.S_IRWXU)  # (setgid too: the files inherit the group)
    return mode


def _swap_in(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(tmp, dest)
        _fsync_dir(dest.parent)
        return
    if _renameat2_exchange(tmp, dest):
        # ``tmp`` now holds the previous results
        _fsync_dir(dest.parent)
        _remove_old(tmp)
        return
    old = _tmp_sibling(dest, _OLD_TAG)
    os.rename(dest, old)
    os.rename(tmp, dest)
    _fsync_dir(dest.parent)
    _remove_old(old)


def _remove_old(folder: Path) -> None:
    """Delete the previous results (a folder its owner had made read-only too)."""
    with contextlib.suppress(OSError):
        os.chmod(folder, stat.S_IMODE(folder.stat().st_mode) | stat.S_IRWXU)
    shutil.rmtree(folder, ignore_errors=True)


__all__ = [
    "MARKER",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "check_replaceable",
    "check_state_outside_results",
    "chunk_dir",
    "recover_directory",
]
