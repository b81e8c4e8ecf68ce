"""Atomic results folders: what a killed write leaves behind, and links to results folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from driftwatch._io import MARKER, atomic_directory, check_replaceable
from driftwatch.errors import InvalidParameterError

EXPECTED = ("report.html", "runs.parquet")


def _results(folder: Path, text: str) -> None:
    with atomic_directory(folder, expected=EXPECTED) as tmp:
        (tmp / "report.html").write_text(text)
        (tmp / "runs.parquet").write_text(text)


def test_a_killed_write_of_one_file_does_not_block_the_next_audit(tmp_path: Path) -> None:
    """A `driftwatch report` killed mid-write left .report.html.tmp-<pid>-<hex>; every later
    audit into the folder then refused it as holding files driftwatch did not write."""
    out = tmp_path / "report"
    _results(out, "night 1")
    (out / ".report.html.tmp-999999-1a2b3c4d").write_text("half a page")
    _results(out, "night 2")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, *EXPECTED])
    assert (out / "report.html").read_text() == "night 2"
    # the user's own files are still refused, hidden or not, and so is a temp name of another file
    for name in ("notes.txt", ".notes.tmp-1-ab", ".report.html.tmp-x"):
        (out / name).write_text("mine")
        with pytest.raises(InvalidParameterError, match="holds files driftwatch did not write"):
            check_replaceable(out, expected=EXPECTED)
        (out / name).unlink()


def test_a_link_to_a_results_folder_is_followed(tmp_path: Path) -> None:
    """--out latest, a link to an earlier results folder: the link was replaced by a folder and
    the folder it pointed to kept stale results, with a dangling temporary link left beside."""
    target = tmp_path / "srv" / "2026-11-24"
    _results(target, "old")
    latest = tmp_path / "latest"
    latest.symlink_to(target)
    _results(latest, "new")
    _results(latest, "newer")
    assert latest.is_symlink() and os.readlink(latest) == str(target)
    assert (target / "report.html").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "srv"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["2026-11-24"]


def test_an_unmarked_folder_holding_results_names_is_refused(tmp_path: Path) -> None:
    """A folder without the marker holding the user's own report.html and summary.json was
    replaced as if driftwatch had written it (the user's page and dashboard config were lost)."""
    site = tmp_path / "mysite"
    site.mkdir()
    (site / "report.html").write_text("<h1>my page</h1>")
    with pytest.raises(InvalidParameterError, match=r"not driftwatch results \(report.html; no \.driftwatch file"):
        _results(site, "audit")
    assert (site / "report.html").read_text() == "<h1>my page</h1>"
    assert sorted(p.name for p in site.iterdir()) == ["report.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mysite"]  # no temporary folder left
    # an empty folder and a marked one are still replaced
    (site / "report.html").unlink()
    _results(site, "night 1")
    _results(site, "night 2")
    assert (site / "report.html").read_text() == "night 2"


def test_output_paths_under_a_file_or_a_missing_folder_are_named(tmp_path: Path) -> None:
    """--out afile/sub said "afile: File exists"; loops --out /missing/dir/x.parquet and --out
    /proc/x named the hidden temporary file or folder instead of the user's path."""
    from driftwatch._io import atomic_write_text

    afile = tmp_path / "afile"
    afile.write_text("hi")
    for out in (afile / "sub", afile / "a" / "b"):
        with pytest.raises(InvalidParameterError, match=rf"{afile} is a file, not a folder"):
            _results(out, "x")
        with pytest.raises(InvalidParameterError, match=rf"{afile} is a file, not a folder"):
            atomic_write_text(out / "x.parquet", "x")
    with pytest.raises(InvalidParameterError, match=r"x.parquet: the folder .*missing.*dir does not exist"):
        atomic_write_text(tmp_path / "missing" / "dir" / "x.parquet", "x")
    assert afile.read_text() == "hi" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    if Path("/proc/self").is_dir():  # a folder nobody may create files in, root included
        for write in (lambda: _results(Path("/proc/x"), "x"), lambda: atomic_write_text("/proc/x.parquet", "x")):
            with pytest.raises(OSError) as info:
                write()
            assert info.value.filename in ("/proc/x", "/proc/x.parquet") and ".tmp-" not in str(info.value)


def test_a_single_output_file_writes_through_a_link_and_refuses_what_is_not_a_file(tmp_path: Path) -> None:
    """`loops --out link.parquet` replaced the link by a regular file (the target kept its old
    content), and `--out` a FIFO or a device (/dev/stdout, as root) replaced the node itself."""
    from driftwatch._io import atomic_write_text

    target = tmp_path / "real" / "loops.parquet"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.parquet"
    link.symlink_to(Path("real") / "loops.parquet")
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["loops.parquet"]  # no temp left
    dangling = tmp_path / "dangling.parquet"
    dangling.symlink_to(Path("real") / "later.parquet")
    atomic_write_text(dangling, "x")
    assert (target.parent / "later.parquet").read_text() == "x" and dangling.is_symlink()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InvalidParameterError, match="is not a regular file"):
        atomic_write_text(fifo, "x")
    assert fifo.is_fifo()
    import socket

    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:  # (never a real device: a failing test would replace it)
        sock.bind(str(sock_path))
        with pytest.raises(InvalidParameterError, match="is not a regular file"):
            atomic_write_text(sock_path, "x")
        assert sock_path.is_socket()


def test_an_output_path_that_is_a_link_loop_is_named(tmp_path: Path) -> None:
    """`--out loopA` with loopA -> selfloop1 -> loopA ended in "unexpected error: RuntimeError:
    Symlink loop", after the whole audit had run."""
    import driftwatch as dw
    from driftwatch._io import atomic_write_text

    (tmp_path / "loopA").symlink_to("selfloop1")
    (tmp_path / "selfloop1").symlink_to("loopA")
    with pytest.raises(InvalidParameterError, match="loopA: cannot be followed"):
        atomic_write_text(tmp_path / "loopA", "x")
    with pytest.raises(InvalidParameterError, match="loopA: cannot be followed"):
        _results(tmp_path / "loopA", "x")
    with pytest.raises(InvalidParameterError, match="loopA: cannot be followed"):
        dw.audit("/nonexistent-logs", out=tmp_path / "loopA")  # (said before the logs are read)


@pytest.mark.parametrize("name", ["r" * 250, "é" * 120 + "x"])
def test_a_long_legal_folder_name_is_written_and_recovered(tmp_path: Path, name: str) -> None:
    """A 250-byte --out name is legal (the limit is 255), but the temporary sibling
    ``.<name>.tmp-<pid>-<hex>`` was not: the audit failed with "File name too long" at the end."""
    from driftwatch._io import _tmp_sibling, recover_directory

    dest = tmp_path / name
    for _ in range(2):  # written, then replaced
        with atomic_directory(dest, expected=["summary.json"]) as tmp:
            (tmp / "summary.json").write_text("{}")
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "summary.json"]
    assert [p.name for p in tmp_path.iterdir()] == [name]  # nothing left beside it
    leftover = _tmp_sibling(dest, ".tmp-").with_name(_tmp_sibling(dest, ".tmp-").name.replace(
        f"-{os.getpid()}-", "-999999999-"))  # a killed audit's (no such process)
    assert len(os.fsencode(leftover.name)) <= 255
    leftover.mkdir()
    recover_directory(dest)
    assert not leftover.exists()


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_mount_point_is_refused_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A volume mounted at --out (Docker, Kubernetes) failed every night with "Device or resource
    busy; check the path and permissions": a mount point cannot be swapped."""
    out = tmp_path / "mnt"
    out.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or real(p))
    with pytest.raises(InvalidParameterError, match=r"mnt: is a mount point.*give a folder inside it, e.g. --out .*mnt/report"):
        _results(out, "x")
    _results(out / "report", "inside")
    assert (out / "report" / "report.html").read_text() == "inside"


def test_a_replaced_results_folder_keeps_its_mode_and_group(tmp_path: Path) -> None:
    """A folder kept to its group (0770, setgid) became world-readable with the default group."""
    import stat

    out = tmp_path / "report"
    _results(out, "night 1")
    os.chmod(out, 0o2750)
    gid = 65534 if os.geteuid() == 0 else out.stat().st_gid
    if os.geteuid() == 0:
        os.chown(out, -1, gid)
    _results(out, "night 2")
    st = out.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2750, gid)
    assert (out / "report.html").read_text() == "night 2"
    if os.geteuid() == 0:
        assert (out / "runs.parquet").stat().st_gid == gid  # (setgid: the files inherit the group)
    os.chmod(out, 0o555)  # a folder its owner may not write in is still replaced, and stays so
    _results(out, "night 3")
    assert stat.S_IMODE(out.stat().st_mode) == 0o555 and (out / "report.html").read_text() == "night 3"
    os.chmod(out, 0o755)


def test_killed_audits_leave_no_chunk_folders_or_half_files(tmp_path: Path) -> None:
    """A killed audit's .driftwatch-chunks-* folder (spilled per-run tables) and a killed
    `loops --out`'s .loops.parquet.tmp-* file stayed on the disk for ever."""
    import polars as pl

    from driftwatch._io import _host_tag, atomic_write_parquet, chunk_dir

    dead, live, host = _dead_pid(), os.getppid(), _host_tag()
    (tmp_path / f".driftwatch-chunks-{host}-{dead}-abc12345").mkdir()
    (tmp_path / f".driftwatch-chunks-{host}-{dead}-abc12345" / "loops-0.parquet").write_text("spilled")
    kept = [f".driftwatch-chunks-{host}-{live}-def67890",
            # another container's (its pids mean nothing here), an older version's (no pid)
            f".driftwatch-chunks-0badc0de-{dead}-ghi12345", ".driftwatch-chunks-jkl67890"]
    for name in kept:
        (tmp_path / name).mkdir()
    made = Path(chunk_dir(tmp_path))
    assert made.name.startswith(f".driftwatch-chunks-{host}-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, made.name])
    (tmp_path / f".loops.parquet.tmp-{dead}-1a2b3c4d").write_text("half a file")
    atomic_write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "loops.parquet")
    assert not list(tmp_path.glob(".loops.parquet.tmp-*"))


def test_a_full_disk_is_said_with_the_output_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk gave "No space left on device" with no path, or, from Polars, "File out of
    specification: Invalid thrift: transport error" as an unexpected error."""
    import errno

    import polars as pl

    from driftwatch import _io

    dest = tmp_path / "runs.parquet"
    named = _io._naming(OSError(errno.ENOSPC, "No space left on device"), tmp_path / ".runs.parquet.tmp-1-ab", dest)
    assert (named.errno, named.filename) == (errno.ENOSPC, str(dest))

    def broken(self: pl.DataFrame, *args: object, **kwargs: object) -> None:
        raise pl.exceptions.ComputeError("parquet: File out of specification: Invalid thrift: transport error")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", broken)
    monkeypatch.setattr(_io, "_disk_full", lambda folder: True)
    with pytest.raises(OSError, match="No space left on device") as info:
        _io.atomic_write_parquet(pl.DataFrame({"a": [1]}), dest)
    assert info.value.filename == str(dest) and not list(tmp_path.iterdir())
    monkeypatch.setattr(_io, "_disk_full", lambda folder: False)  # another failure stays what it is
    with pytest.raises(pl.exceptions.ComputeError):
        _io.atomic_write_parquet(pl.DataFrame({"a": [1]}), dest)


def test_a_file_of_the_results_being_built_is_named_under_the_output_folder(tmp_path: Path) -> None:
    """A full disk while writing the results said ".R.tmp-476-92d965f3/report.html"."""
    import errno

    out = tmp_path / "R"
    with pytest.raises(OSError, match="No space left") as info, atomic_directory(out) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "report.html"))
    assert info.value.filename == str(out.absolute() / "report.html")
    assert not list(tmp_path.iterdir())


def test_a_state_inside_any_results_folder_is_refused_by_the_library_too(tmp_path: Path) -> None:
    import polars as pl

    import driftwatch as dw

    logs = tmp_path / "logs"
    logs.mkdir()
    pl.DataFrame({"run_id": ["r"], "step": [1], "action": ["search"]}).write_parquet(logs / "a.parquet")
    dw.audit(logs, out=tmp_path / "R2")
    with pytest.raises(InvalidParameterError, match="cannot be inside a results folder"):
        dw.audit(logs, out=tmp_path / "R1", state=tmp_path / "R2" / "state")
    with pytest.raises(InvalidParameterError, match="cannot be inside the results folder --out"):
        dw.audit(logs, out=tmp_path / "R4", state=tmp_path / "R4" / "st")
    assert not (tmp_path / "R2" / "state").exists() and not (tmp_path / "R4").exists()


def test_an_output_folder_that_cannot_be_made_is_said_before_the_audit(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--out under a folder the user may not write in failed with "Permission denied" only once the
    whole audit had run (38 s): the write is now tried first, and said as it was at the end."""
    import errno
    import shutil
    import subprocess
    import sys

    import driftwatch as dw
    from driftwatch import _io

    # a folder nobody may create anything in, root included: said before the logs are read
    if Path("/proc/self").is_dir():
        for out, named in (("/proc/driftwatch-out", "/proc/driftwatch-out"), ("/proc/x/y", "/proc/x")):
            with pytest.raises(OSError) as info:
                dw.audit("/nonexistent-logs", out=out)
            assert info.value.filename == named and ".tmp-" not in str(info.value)
            assert not isinstance(info.value, InvalidParameterError)
    afile = tmp_path / "afile"
    afile.write_text("hi")
    with pytest.raises(InvalidParameterError, match=rf"{afile} is a file, not a folder"):
        dw.audit("/nonexistent-logs", out=afile / "sub")
    # a read-only mount: the error the folder's creation raises, naming --out
    real = Path.mkdir

    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        if self.parent == tmp_path / "mnt":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real(self, *args, **kwargs)

    (tmp_path / "mnt").mkdir()
    _results(tmp_path / "mnt" / "old", "x")
    monkeypatch.setattr(Path, "mkdir", read_only)
    for out in (tmp_path / "mnt" / "new", tmp_path / "mnt" / "old"):
        with pytest.raises(OSError, match="Read-only file system") as info:
            check_replaceable(out, expected=EXPECTED)
        assert info.value.filename == str(out)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "mnt").iterdir()) == ["old"]  # (no probe left)
    check_replaceable(tmp_path / "new" / "deeper")  # (writable: nothing said, nothing made)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mnt"]
    # a folder of mode 0555: refused as the user (as root: with the capability to override it dropped)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code = ("import sys; from driftwatch._io import check_replaceable\n"
            "try: check_replaceable(sys.argv[1])\n"
            "except PermissionError as exc: print(exc.filename, exc.strerror)")
    cmd = [sys.executable, "-c", code, str(ro / "new")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            ro.chmod(0o755)
            pytest.skip("root without setpriv: a folder of mode 0555 is writable")
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    env = dict(os.environ, PYTHONPATH=str(Path(_io.__file__).parent.parent))
    said = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    ro.chmod(0o755)
    if said.returncode != 0 and said.stderr.startswith("setpriv"):
        pytest.skip(f"setpriv could not drop the capabilities here: {said.stderr.strip()}")
    assert said.stdout.strip() == f"{ro / 'new'} Permission denied", said.stderr[-2000:]
    assert not list(ro.iterdir())


def test_a_killed_audit_into_another_folder_is_cleaned_up(tmp_path: Path) -> None:
    """An audit killed while writing --out night1 left .night1.tmp-<pid>-<hex> for ever: only the
    next audit into night1 looked for it, and a dated folder per night never comes back."""
    import polars as pl

    from driftwatch._io import _host_tag, _tmp_sibling, atomic_write_parquet

    dead, live, host = _dead_pid(), os.getppid(), _host_tag()
    made = _tmp_sibling(tmp_path / "night1", ".tmp-")  # (the name carries this machine and process)
    assert made.name.startswith(f".night1.tmp-{host}-{os.getpid()}-")
    gone = [f".night1.tmp-{host}-{dead}-1a2b3c4d", f".my-night.tmp-{host}-{dead}-00ff00ff"]
    kept = [
        f".night1.tmp-{host}-{live}-1a2b3c4d",  # a live audit's
        f".night1.tmp-{host}-{os.getpid()}-1a2b3c4d",  # this process's, being written
        f".night1.tmp-0badc0de-{dead}-1a2b3c4d",  # another machine's (its pids mean nothing here)
        f".night1.tmp-{dead}-1a2b3c4d",  # an older version's (no host: cannot be told)
        f".night1.old-{host}-{dead}-1a2b3c4d",  # previous results parked by a killed swap
        f"night1.tmp-{host}-{dead}-1a2b3c4d", f".notes.tmp-{host}-{dead}-mine", "notes.txt",  # the user's
    ]
    for name in gone + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "runs.parquet").write_text("spilled")
    _results(tmp_path / "night2", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "night2"])
    # a one-file write does the same, for half files too
    (tmp_path / f".loops.parquet.tmp-{host}-{dead}-1a2b3c4d").write_text("half a file")
    (tmp_path / f".night3.tmp-{host}-{dead}-1a2b3c4d").mkdir()
    atomic_write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "other.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "night2", "other.parquet"])
