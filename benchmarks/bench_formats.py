"""Span-format reader benchmark: OpenInference spans with JSON-text attributes (as Phoenix
exports them) against the same spans with attributes flattened to columns, and a bare scan.

Builds ``--spans`` spans from ``sample_logs/openinference/spans.parquet`` (its 188 spans
repeated under new trace, span and session ids) into ``bench_data/formats_<N>/``: one file
with ``attributes.*`` columns, one with a single JSON-text ``attributes`` column holding the
same values nested (``{"llm": {"token_count": {"prompt": 12}}}``). Times, best of
``--repeat``, in this process:

* ``bare scan``: ``pl.scan_parquet(path).collect()`` of the JSON file (the floor);
* ``read_logs flattened`` / ``read_logs JSON``: ``dw.read_logs(path).events.collect()`` (the
  checking passes, the rejected rows and the events; the span hierarchy's agent context is
  worked out once per read and joined in each pass);
* ``JSON lookups``: the attribute columns read out of the JSON text, as the reader does (one
  parse of each row: DuckDB's ``json_extract_string`` with every path, and whether the text is
  JSON, which the reader's ``bad_value:attributes`` check reads instead of parsing again);
* ``json_path_match per key``: the plain way, two ``str.json_path_match`` per key and spelling
  (sixty parses a row), only up to ``--plain-max`` spans.

Usage::

    python benchmarks/bench_formats.py --spans 200_000
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

import driftwatch as dw
from driftwatch import formats

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_logs" / "openinference" / "spans.parquet"


def _data(n: int, folder: Path) -> tuple[Path, Path]:
    flat_path, json_path = folder / "flat.parquet", folder / "json.parquet"
    if flat_path.exists() and json_path.exists():
        return flat_path, json_path
    folder.mkdir(parents=True, exist_ok=True)
    base = pl.read_parquet(SAMPLE)
    copies = -(-n // base.height)
    rep = pl.concat([base.with_columns(pl.lit(i).alias("_copy")) for i in range(copies)]).head(n)
    ids = ["context.trace_id", "context.span_id", "parent_id", "attributes.session.id"]
    flat = rep.with_columns(
        [pl.when(pl.col(c).is_not_null()).then(pl.format("{}-{}", pl.col(c), pl.col("_copy"))).alias(c) for c in ids]
    ).drop("_copy")
    flat.write_parquet(flat_path, row_group_size=128_000)
    attrs = [c for c in flat.columns if c.startswith("attributes.")]

    def nest(row: dict[str, object]) -> str:
        out: dict[str, object] = {}
        for name in attrs:
            value = row[name]
            if value is None:
                continue
            node = out
            *parents, leaf = name[len("attributes."):].split(".")
            for p in parents:
                node = node.setdefault(p, {})  # type: ignore[assignment]
            node[leaf] = value  # type: ignore[index]
        return json.dumps(out)

    # (building the input, not timed: a Python loop over the sample's rows is fine here)
    text = [nest(r) for r in flat.select(attrs).iter_rows(named=True)]
    flat.drop(attrs).with_columns(pl.Series("attributes", text)).write_parquet(json_path, row_group_size=128_000)
    return flat_path, json_path


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=lambda s: int(s.replace("_", "")), default=200_000)
    parser.add_argument("--data", type=Path, default=ROOT / "bench_data")
    parser.add_argument("--plain-max", type=lambda s: int(s.replace("_", "")), default=50_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    flat_path, json_path = _data(args.spans, args.data / f"formats_{args.spans}")
    frame = pl.read_parquet(json_path)
    lookups = formats.nested_columns(frame.schema)
    prelude = formats.json_prelude(frame.schema)

    def ours() -> pl.DataFrame:
        return frame.with_columns(prelude).select([e.alias(k) for k, (e, _) in lookups.items()])

    def plain(part: pl.DataFrame) -> pl.DataFrame:
        text = pl.col("attributes")
        exprs = []
        for k in formats.SPAN_ATTRIBUTE_KEYS:
            nested = "$" + "".join(f'["{p}"]' for p in k.split("."))
            exprs.append(pl.coalesce(text.str.json_path_match(f'$["{k}"]'), text.str.json_path_match(nested)).alias(k))
        return part.select(exprs)

    rows = {
        "bare scan": _best(lambda: pl.scan_parquet(json_path).collect(), args.repeat),
        "read_logs flattened": _best(lambda: dw.read_logs(flat_path).events.collect(), args.repeat),
        "read_logs JSON": _best(lambda: dw.read_logs(json_path).events.collect(), args.repeat),
        "JSON lookups": _best(ours, args.repeat),
    }
    n_plain = min(args.plain_max, frame.height)
    if n_plain:
        part = frame.head(n_plain)
        rows["json_path_match per key"] = _best(lambda: plain(part), 1) * frame.height / n_plain
        ours_part = part.with_columns(prelude).select([e.alias(k) for k, (e, _) in lookups.items()])
        assert ours_part.select(list(lookups)).rename(lambda c: c[len("attributes."):]).equals(
            plain(part).select([c[len("attributes."):] for c in lookups])
        ), "the JSON lookups differ from json_path_match"
    print(f"{args.spans:,} OpenInference spans, JSON-text attributes ({json_path.stat().st_size / 2**20:.1f} MiB)")
    floor = rows["bare scan"]
    for name, sec in rows.items():
        note = f" (scaled from {n_plain:,} spans)" if name == "json_path_match per key" and n_plain < frame.height else ""
        print(f"  {name:<26} {sec:8.2f} s  {sec / floor:8.1f}x bare scan  {args.spans / sec:12,.0f} spans/s{note}")


if __name__ == "__main__":
    main()
