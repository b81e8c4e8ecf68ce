"""Reader benchmark: ``dw.read_logs`` vs a bare Polars scan and a plain pandas reader.

Generates a fleet of about ``--events`` canonical events with
:func:`driftwatch.synth.write_fleet` into ``bench_data/read_<N>/`` (cached), plus a messy
copy with ``--messy`` of the rows broken (duplicated steps, negative tokens, unknown
statuses) so that the rejection path is timed too. Each measurement runs in its own
subprocess so peak RSS is per command (``os.wait4``); times exclude interpreter start-up and
imports and are the best of ``--repeat`` runs:

* ``bare scan + collect`` / ``+ sink``: ``pl.scan_parquet(path).collect()`` of all 19 columns, or
  ``.sink_parquet(...)`` (the floors; ratios are against the first);
* ``read_logs (check)``: ``read_logs(path)``: the checking pass (counts per reason,
  duplicate candidates, rejected rows); ``events`` stays lazy;
* ``read_logs + collect``: the same, then ``events.collect()`` (the valid rows in memory);
* ``read_logs + sink``: the same, then ``events.sink_parquet(...)`` (streaming, bounded memory);
* ``pandas``: ``pd.read_parquet`` + the same checks with pandas (nulls, negatives, status
  spellings, ``duplicated(keep="first")``), only up to ``--pandas-max`` events.

Usage::

    python benchmarks/bench_read.py --events 1_000_000          # quick
    python benchmarks/bench_read.py --events 10_000_000 --engines polars duckdb
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "bench_data"
DAYS = 30
SEED = 11
EVENTS_PER_RUN = 14.5  # measured on the default scenario

# Each snippet times its own work (imports excluded), best of REPEAT runs, and prints
# "<seconds> <details>"; the parent process measures the peak RSS.
BARE = r"""
import sys, os, time, tempfile, polars as pl
best = 1e9
for _ in range(int(sys.argv[-1])):
    t = time.perf_counter()
    lf = pl.scan_parquet(sys.argv[1], hive_partitioning=True)
    if sys.argv[2] == "sink":
        lf.sink_parquet(os.path.join(tempfile.mkdtemp(), "events.parquet"))
    else:
        lf.collect()
    best = min(best, time.perf_counter() - t)
print(best)
"""

READ = r"""
import sys, time, tempfile, os, polars as pl, driftwatch as dw
path, engine, mode = sys.argv[1], sys.argv[2], sys.argv[3]
best = 1e9
for _ in range(int(sys.argv[-1])):
    t = time.perf_counter()
    res = dw.read_logs(path, engine=engine)
    if mode == "collect":
        n = res.events.collect().height
    elif mode == "sink":
        out = os.path.join(tempfile.mkdtemp(), "events.parquet")
        res.events.sink_parquet(out)
        n = pl.scan_parquet(out).select(pl.len()).collect().item()
    else:
        n = res.stats.rows_valid
    best = min(best, time.perf_counter() - t)
    assert n == res.stats.rows_valid, (n, res.stats)
print(best, res.stats.rows_in, res.stats.rows_rejected)
"""

PANDAS = r"""
import sys, glob, time, numpy as np, pandas as pd
from driftwatch.schema import STATUS_SPELLINGS
t = time.perf_counter()
files = sorted(glob.glob(sys.argv[1] + "/**/*.parquet", recursive=True))
df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
def blank(s):
    return s.isna() | (s.astype("string").str.strip() == "")
status = df["status"].map(STATUS_SPELLINGS).where(df["status"].notna())
bad = (blank(df["run_id"]) | blank(df["action"]) | df["step"].isna()
       | (df["input_tokens"] < 0) | (df["output_tokens"] < 0) | (df["cost_usd"] < 0) | (df["latency_ms"] < 0)
       | (df["confidence"] < 0) | (df["confidence"] > 1) | (df["status"].notna() & status.isna()))
dup = pd.Series(False, index=df.index)
dup[~bad] = df.loc[~bad].duplicated(["run_id", "step"], keep="first")
events = df[~bad & ~dup].assign(status=status[~bad & ~dup])
rejected = df[bad | dup]
print(time.perf_counter() - t, len(df), len(rejected))
"""


def _run(code: str, *args: str) -> tuple[float, float, str]:
    """Run ``code`` in a fresh interpreter; return (its seconds, peak RSS MiB, the rest of stdout)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(code)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, fh.name, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    os.unlink(fh.name)
    if status != 0:
        raise SystemExit(f"benchmark step failed after {time.perf_counter() - t0:.0f}s: {args}\n{err}")
    seconds, _, rest = out.strip().partition(" ")
    return float(seconds), usage.ru_maxrss / 1024, rest


def _data(events: int, data: Path, messy: float) -> tuple[Path, Path]:
    import polars as pl

    from driftwatch import synth

    runs_per_day = max(1, round(events / EVENTS_PER_RUN / DAYS))
    root = data / f"read_{events}"
    clean = root / "clean"
    stamp = root / "params.json"
    params = {"runs_per_day": runs_per_day, "days": DAYS, "seed": SEED, "messy": messy}
    if not (stamp.exists() and json.loads(stamp.read_text()) == params):
        print(f"generating ~{events:,} events into {root} ...", flush=True)
        synth.write_fleet(clean, days=DAYS, runs_per_day=runs_per_day, seed=SEED)
        # messy: the same files with a fraction of rows broken and some rows duplicated
        for src in sorted((clean / "events").rglob("*.parquet")):
            dst = root / "messy" / src.relative_to(clean)
            dst.parent.mkdir(parents=True, exist_ok=True)
            df = pl.read_parquet(src, hive_partitioning=False)
            i = pl.int_range(pl.len())
            k = max(1, int(1 / messy))
            df = df.with_columns(
                pl.when(i % k == 1).then(-1).otherwise(pl.col("input_tokens")).alias("input_tokens"),
                pl.when(i % k == 2).then(pl.lit("??")).otherwise(pl.col("status")).alias("status"),
            )
            pl.concat([df, df.filter(i % k == 3)]).write_parquet(dst, row_group_size=128_000)
        stamp.write_text(json.dumps(params))
    return clean / "events", root / "messy" / "events"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=lambda s: int(s.replace("_", "")), default=1_000_000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--engines", nargs="+", default=["polars", "duckdb"], choices=["polars", "duckdb"])
    parser.add_argument("--messy", type=float, default=0.001, help="fraction of rows broken in the messy copy")
    parser.add_argument("--pandas-max", type=lambda s: int(s.replace("_", "")), default=5_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs per command (default 2)")
    args = parser.parse_args(argv)

    clean, messy = _data(args.events, args.data, args.messy)
    import polars as pl

    n = pl.scan_parquet(clean).select(pl.len()).collect().item()
    rows: list[tuple[str, str, float, float, str]] = []
    rep = str(args.repeat)
    bare_s, bare_mb, _ = _run(BARE, str(clean), "collect", rep)
    rows.append(("bare scan + collect", "clean", bare_s, bare_mb, ""))
    s, mb, _ = _run(BARE, str(clean), "sink", rep)
    rows.append(("bare scan + sink", "clean", s, mb, ""))
    for engine in args.engines:
        for label, path in (("clean", clean), ("messy", messy)):
            for mode in ("check", "collect", "sink"):
                s, mb, out = _run(READ, str(path), engine, mode, rep)
                rows.append((f"read_logs {engine} + {mode}" if mode != "check" else f"read_logs {engine} (check)",
                             label, s, mb, out))
    if n <= args.pandas_max:
        for label, path in (("clean", clean), ("messy", messy)):
            s, mb, out = _run(PANDAS, str(path))
            rows.append(("pandas read + checks", label, s, mb, out))

    print(f"\n{n:,} events, {len(list(clean.rglob('*.parquet')))} files; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, polars {pl.__version__}")
    print(f"{'command':32s} {'data':6s} {'seconds':>8s} {'Mev/s':>7s} {'x bare':>7s} {'peak MiB':>9s}  rows_in rejected")
    for name, label, s, mb, out in rows:
        print(f"{name:32s} {label:6s} {s:8.2f} {n / s / 1e6:7.2f} {s / bare_s:7.2f} {mb:9.0f}  {out}")


if __name__ == "__main__":
    main()
