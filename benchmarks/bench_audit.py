"""Full-audit benchmark: ``driftwatch audit`` vs a bare Polars scan of the same columns.

Generates a fleet of about ``--events`` events with :func:`driftwatch.synth.write_fleet`
(streamed day by day, row groups of 128k rows) into ``bench_data/audit_<N>/`` (cached:
reused when the parameters match), then times, each in its own subprocess so peak RSS is
measured per command (``os.wait4``):

* ``bare scan (streaming)``: ``pl.scan_parquet(...).group_by("run_id").agg(...)`` over
  every canonical column the audit reads (cheap aggregations that still touch every value:
  sums, min/max, and the byte length of every string), collected with the streaming engine;
* ``bare scan (in-memory)``: the same with the default engine (only up to
  ``--in-memory-max`` events: it holds every column in memory);
* ``pandas read + groupby``: the Parquet files read into pandas (``pyarrow.dataset``) +
  ``groupby("run_id").agg`` of the same aggregations (the UTF-8 byte lengths of the same eight
  string columns, the approved count, the same sums, min/max and mean; only up to
  ``--pandas-max`` events);
* ``driftwatch audit``: the full CLI audit (read, validate, per-run stage in chunks of
  whole runs, fleet stage, all output files); ``--spark`` adds ``--engine spark``. It runs
  the ``driftwatch`` console script next to the Python running the benchmark, or, where there
  is none, ``python -c "from driftwatch.cli import main; ..."`` with the repository first on
  the path.

Each baseline prints its number of runs and the totals of its aggregated columns over all runs;
the benchmark checks that the baselines agree (exactly for counts and lengths, to a relative
1e-9 for float sums added in another order) and prints the verdict.

``--order time`` audits the same fleet rewritten in time order, as a logger writes it (each
day file sorted by ``ts``: concurrent runs interleave), cached beside it.

Peak RSS is reported twice: the command's own process (``os.wait4``) and its whole process
tree sampled every 0.1 s (a Spark run's JVM and Python workers are separate processes). A
command whose tree passes ``--max-rss-gib`` (default 16) is killed and reported as failed,
so a run that would exhaust a shared machine's memory stops before the kernel's OOM killer
picks a victim.

Targets (2 cores / 24 GiB): audit of 10M events <= 4x the bare scan; 100M events with
peak RSS <= 8 GiB.

Usage::

    python benchmarks/bench_audit.py --events 1_000_000          # quick
    python benchmarks/bench_audit.py --events 10_000_000
    python benchmarks/bench_audit.py --events 10_000_000 --order time
    nohup python benchmarks/bench_audit.py --events 100_000_000 > bench_data/bench_100m.log 2>&1 &
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "bench_data"
DAYS = 30
SEED = 7
ROW_GROUP = 128_000

# the aggregations both baselines compute per run; each prints the number of runs, then one JSON line of
# the column totals over all runs (nulls skipped), which main() compares between the two
BARE_SCAN = r"""
import json, sys, polars as pl
path, engine = sys.argv[1], sys.argv[2]
s = pl.col
strings = ("action", "agent", "args", "result", "status", "error_type", "parent_run_id", "version")
aggs = [pl.len().alias("n"), s("step").max(), s("ts").min().alias("t0"), s("ts").max().alias("t1"),
        *[s(c).str.len_bytes().sum().alias(c) for c in strings],
        *[s(c).sum() for c in ("input_tokens", "output_tokens", "cost_usd", "latency_ms")],
        s("approved").sum(), s("confidence").min(), s("feedback").mean(), s("outcome").max()]
lf = pl.scan_parquet(path, hive_partitioning=False).group_by("run_id").agg(aggs)
out = lf.collect(engine="streaming") if engine == "streaming" else lf.collect()
print(out.height)
out = out.with_columns(pl.col("t0", "t1").dt.epoch("us"))
print(json.dumps({c: float(out[c].cast(pl.Float64).sum()) for c in out.columns if c != "run_id"}))
"""

PANDAS_SCAN = r"""
import json, sys, pandas as pd, pyarrow.dataset as ds
path = sys.argv[1]
df = ds.dataset(path, format="parquet").to_table().to_pandas()
strings = ("action", "agent", "args", "result", "status", "error_type", "parent_run_id", "version")
for c in strings:  # UTF-8 byte lengths, as the Polars scan's str.len_bytes()
    df[c + "_len"] = df[c].str.encode("utf-8").str.len()
df["approved_n"] = df["approved"].eq(True)  # a boolean's sum counts the true values; nulls count none
g = df.groupby("run_id", sort=False)
out = g.agg(n=("step", "size"), step=("step", "max"), t0=("ts", "min"), t1=("ts", "max"),
            **{c: (c + "_len", "sum") for c in strings},
            input_tokens=("input_tokens", "sum"), output_tokens=("output_tokens", "sum"),
            cost_usd=("cost_usd", "sum"), latency_ms=("latency_ms", "sum"), approved=("approved_n", "sum"),
            confidence=("confidence", "min"), feedback=("feedback", "mean"), outcome=("outcome", "max"))
print(len(out))
for c in ("t0", "t1"):
    out[c] = out[c].dt.as_unit("us").astype("int64")
print(json.dumps({c: float(out[c].astype("float64").sum()) for c in out.columns}))
"""


def totals(tail: str) -> dict[str, float] | None:
    """The column totals a baseline printed (its last line), or None."""
    for line in reversed(tail.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def compare_totals(a: dict[str, float], b: dict[str, float], rel: float = 1e-9) -> list[str]:
    """The columns whose totals differ (beyond ``rel``, relative: float sums in another order)."""
    bad = [c for c in sorted(set(a) | set(b)) if c not in a or c not in b]
    for c in sorted(set(a) & set(b)):
        x, y = a[c], b[c]
        if abs(x - y) > rel * max(abs(x), abs(y), 1.0):
            bad.append(f"{c}: {x!r} vs {y!r}")
    return bad


def driftwatch_cli(py: str) -> tuple[list[str], str]:
    """The command that runs the driftwatch CLI: the console script installed next to ``py``, or else
    ``py -c`` calling ``driftwatch.cli.main`` (driftwatch has no ``__main__``; the repository's copy
    is put first on the path)."""
    script = Path(py).with_name("driftwatch")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], str(script)
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from driftwatch.cli import main; sys.exit(main())"
    return [py, "-c", code], f"{py} -c 'from driftwatch.cli import main' (no console script next to {py})"


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 2**20:.0f} GiB RAM"
                break
    except OSError:
        pass
    return f"{os.cpu_count()} x {cpu}{mem}, Python {platform.python_version()}"


def calibrate(target: int) -> int:
    """runs_per_day that gives about ``target`` events over DAYS days (generator is linear in it)."""
    from driftwatch import synth

    probe = 150
    n = synth.generate(days=DAYS, runs_per_day=probe, seed=SEED).events.height
    return max(1, round(probe * target / n))


def ensure_data(target: int, data_dir: Path) -> tuple[Path, dict]:
    from driftwatch import synth

    folder = data_dir / f"audit_{target}"
    meta_path = folder / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("target") == target and meta.get("seed") == SEED and meta.get("days") == DAYS:
            return folder, meta
    if folder.exists():
        shutil.rmtree(folder)
    rpd = calibrate(target)
    print(f"generating ~{target:,} events: days={DAYS}, runs_per_day={rpd:,}, seed={SEED} -> {folder}", flush=True)
    t0 = time.perf_counter()
    counts = synth.write_fleet(folder, days=DAYS, runs_per_day=rpd, seed=SEED, row_group_size=ROW_GROUP)
    meta = {"target": target, "seed": SEED, "days": DAYS, "runs_per_day": rpd, **counts,
            "generate_s": round(time.perf_counter() - t0, 1),
            "bytes": sum(f.stat().st_size for f in (folder / "events").rglob("*.parquet"))}
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"generated {counts['events']:,} events, {counts['runs']:,} runs in {meta['generate_s']}s", flush=True)
    return folder, meta


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def _rss_gib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total / 2**20


def timed(cmd: list[str], *, max_rss_gib: float | None = None) -> dict:
    """Run ``cmd``: wall seconds, peak RSS (GiB) of the process (``wait4``) and of its whole
    process tree (sampled every 0.1 s: includes a Spark JVM and its Python workers), exit code,
    output tail. The command is killed when the tree's RSS passes ``max_rss_gib``."""
    t0 = time.perf_counter()
    tree_peak = 0.0
    killed = False
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        except OSError as e:  # the command cannot start (not found, not executable): a failed row, not a crash
            return {"wall_s": 0.0, "cpu_s": 0.0, "sys_s": 0.0, "load_avg": os.getloadavg()[0], "rss_gib": 0.0,
                    "tree_rss_gib": 0.0, "code": 127, "killed_at_cap": False, "tail": f"cannot run {cmd[0]}: {e}"}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_gib(_tree(proc.pid))
            tree_peak = max(tree_peak, rss)
            if max_rss_gib is not None and rss > max_rss_gib and not killed:
                killed = True
                for p in reversed(_tree(proc.pid)):
                    with contextlib.suppress(OSError):
                        os.kill(p, 9)
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        out.seek(0)
        tail = out.read().decode(errors="replace")[-2000:]
    code = os.waitstatus_to_exitcode(status)
    if killed:
        tail = f"killed by the benchmark: process tree RSS passed --max-rss-gib {max_rss_gib}\n" + tail
    # CPU seconds of the command's own process (a Spark JVM's are not in them), and the machine's
    # 1-minute load average as it ended (the command's own load included)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "sys_s": usage.ru_stime,
            "load_avg": os.getloadavg()[0], "rss_gib": usage.ru_maxrss / 2**20, "tree_rss_gib": tree_peak,
            "code": code, "killed_at_cap": killed, "tail": tail}


def time_ordered(folder: Path, meta: dict) -> Path:
    """The fleet in ``folder`` with each day file sorted by ``ts`` (cached in ``<folder>_time``)."""
    import polars as pl

    out = folder.with_name(folder.name + "_time")
    meta_path = out / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) == meta:
        return out
    if out.exists():
        shutil.rmtree(out)
    print(f"rewriting {folder.name} in time order -> {out}", flush=True)
    for src in sorted((folder / "events").rglob("*.parquet")):
        dst = out / "events" / src.relative_to(folder / "events")
        dst.parent.mkdir(parents=True, exist_ok=True)
        # one day at a time (bounded memory); ties in ts keep the generator's order
        pl.read_parquet(src, hive_partitioning=False).sort("ts", maintain_order=True).write_parquet(
            dst, row_group_size=ROW_GROUP)
    meta_path.write_text(json.dumps(meta, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=lambda s: int(s.replace("_", "")), default=1_000_000,
                    help="approximate events to generate (default 1_000_000)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--in-memory-max", type=int, default=20_000_000,
                    help="largest size for the in-memory bare scan (default 20M)")
    ap.add_argument("--pandas-max", type=int, default=10_000_000,
                    help="largest size for the pandas baseline (default 10M)")
    ap.add_argument("--spark", action="store_true", help="also run `driftwatch audit --engine spark` (local[*])")
    ap.add_argument("--no-audit", action="store_true", help="baselines only")
    ap.add_argument("--order", choices=("run", "time"), default="run",
                    help="rows as generated, run by run (default), or each day file in time order")
    ap.add_argument("--max-rss-gib", type=float, default=16.0,
                    help="kill a command whose process tree passes this RSS (protects a shared machine; default 16)")
    args = ap.parse_args(argv)

    folder, meta = ensure_data(args.events, args.data_dir)
    if args.order == "time":
        folder = time_ordered(folder, meta)
    n = int(meta["events"])
    events_glob = str(folder / "events" / "**" / "*.parquet")
    py = sys.executable
    cli, cli_name = driftwatch_cli(py)
    rows: list[tuple[str, dict]] = []

    def run(name: str, cmd: list[str]) -> dict:
        print(f"running {name} ...", flush=True)
        r = timed(cmd, max_rss_gib=args.max_rss_gib)
        if r["code"] not in (0, 1):
            print(f"  FAILED (exit {r['code']}):\n{r['tail']}", flush=True)
        else:
            print(f"  {r['wall_s']:.1f}s ({r['cpu_s']:.1f} CPU-s, {r['sys_s']:.1f} of them system), peak RSS "
                  f"{r['rss_gib']:.2f} GiB (process tree {r['tree_rss_gib']:.2f}), load average {r['load_avg']:.1f}",
                  flush=True)
        rows.append((name, r))
        return r

    run("bare scan (streaming)", [py, "-c", BARE_SCAN, events_glob, "streaming"])
    if n <= args.in_memory_max:
        run("bare scan (in-memory)", [py, "-c", BARE_SCAN, events_glob, "in-memory"])
    if n <= args.pandas_max:
        run("pandas read + groupby", [py, "-c", PANDAS_SCAN, str(folder / "events")])
    summaries: dict[str, dict] = {}
    if not args.no_audit:
        engines = ["polars"] + (["spark"] if args.spark else [])
        for engine in engines:
            out_dir = Path(tempfile.mkdtemp(prefix=f"dw-bench-{engine}-", dir=args.data_dir))
            cmd = [*cli, "audit", str(folder / "events"), "--out", str(out_dir), "--quiet"]
            if engine != "polars":
                cmd += ["--engine", engine]
            r = run(f"driftwatch audit --engine {engine}", cmd)
            summary = out_dir / "summary.json"
            if summary.exists():
                summaries[engine] = json.loads(summary.read_text())
            shutil.rmtree(out_dir, ignore_errors=True)

    ok = [r for _, r in rows if r["code"] in (0, 1)]
    scans = [r["wall_s"] for name, r in rows if name.startswith("bare scan") and r["code"] == 0]
    base = min(scans) if scans else float("nan")
    print()
    size = sum(f.stat().st_size for f in (folder / "events").rglob("*.parquet"))
    print(f"events: {n:,} ({meta['runs']:,} runs, {size / 2**30:.2f} GiB Parquet, "
          f"{DAYS} days, row groups {ROW_GROUP:,}, {args.order} order)")
    print(f"machine: {machine()}")
    print()
    print(f"| {'command':<32} | {'wall s':>8} | {'CPU s':>7} | {'events/s':>12} | {'peak RSS GiB':>12} "
          f"| {'tree RSS GiB':>12} | {'x bare scan':>11} | {'load':>5} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 9}|{'-' * 14}|{'-' * 14}|{'-' * 14}|{'-' * 13}|{'-' * 7}|")
    for name, r in rows:
        if r["code"] not in (0, 1):
            why = "killed" if r.get("killed_at_cap") else f"exit {r['code']}"
            print(f"| {name:<32} | {'failed':>8} | {'':>7} | {why:>12} | {r['rss_gib']:>12.2f} "
                  f"| {r['tree_rss_gib']:>12.2f} | {'':>11} | {r['load_avg']:>5.1f} |")
            continue
        print(f"| {name:<32} | {r['wall_s']:>8.1f} | {r['cpu_s']:>7.1f} | {n / r['wall_s']:>12,.0f} "
              f"| {r['rss_gib']:>12.2f} | {r['tree_rss_gib']:>12.2f} | {r['wall_s'] / base:>11.2f} "
              f"| {r['load_avg']:>5.1f} |")
    # the two baselines must compute the same thing: the same runs and the same column totals
    got = {name: totals(r["tail"]) for name, r in rows
           if name.startswith(("bare scan", "pandas")) and r["code"] == 0}
    got = {k: v for k, v in got.items() if v is not None}
    if len(got) > 1:
        names = list(got)
        print()
        for other in names[1:]:
            bad = compare_totals(got[names[0]], got[other])
            verdict = "agree" if not bad else "DIFFER: " + "; ".join(bad)
            print(f"{other} vs {names[0]}: per-run aggregations ({len(got[other])} columns, totals over the "
                  f"runs) {verdict}")
    print(f"driftwatch CLI: {cli_name}")
    for engine, s in summaries.items():
        timings = s.get("timings", {})
        top = {k: v for k, v in timings.items() if not k.startswith("fleet.")}
        print(f"\naudit ({engine}) stage timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in top.items()))
        fleet = {k[6:]: v for k, v in timings.items() if k.startswith("fleet.")}
        if fleet:
            print("  fleet stage: " + ", ".join(f"{k}={v:.1f}" for k, v in fleet.items()))
        print(f"  runs={s.get('runs')}, chunks={s.get('chunks')}, levels={s.get('levels')}")

    audit_rows = [r for name, r in rows if name.startswith("driftwatch audit --engine polars")]
    if audit_rows and audit_rows[0]["code"] in (0, 1) and scans:
        ratio = audit_rows[0]["wall_s"] / base
        print(f"\ntarget: audit <= 4x bare scan: {ratio:.2f}x -> {'met' if ratio <= 4 else 'MISSED'}")
        rss = audit_rows[0]["rss_gib"]
        print(f"target: peak RSS <= 8 GiB: {rss:.2f} GiB -> {'met' if rss <= 8 else 'MISSED'}")
    record = {
        "events": n, "runs": meta["runs"], "order": args.order, "machine": machine(), "command": " ".join(sys.argv),
        "results": {name: {k: v for k, v in r.items() if k != "tail"} for name, r in rows},
        "audit_timings": {e: s.get("timings") for e, s in summaries.items()},
    }
    suffix = "" if args.order == "run" else f"_{args.order}"
    (args.data_dir / f"bench_audit_{args.events}{suffix}.json").write_text(json.dumps(record, indent=1))
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
