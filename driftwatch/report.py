"""report.html: one self-contained page a person reads after an audit.

No JavaScript, no network: inline CSS and charts drawn here as inline SVG.
Every string that comes from the logs (run ids, agent and action names, args,
reasons, file names) goes through :func:`html.escape`, so a tool named
``<script>...`` renders as text.

Sections: summary by level; escalated runs with reasons and a step timeline
that marks the loop segment; loops by kind; change-points on per-series metric charts; drift
with the feedback indicators; policy breaches by rule; cost (distribution with
the tail marked, spend by cause, projection); load (each metric against load
with the knee); rejected input.

Examples
--------
>>> import driftwatch as dw
>>> from driftwatch.report import render_report
>>> res = dw.audit(dw.synth.generate(days=2, runs_per_day=30, seed=3).events)
>>> page = render_report(res)
>>> page.startswith("<!DOCTYPE html>") and "<script" not in page
True
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

LEVEL_COLORS = {"ok": "#2e7d32", "review": "#f29d00", "escalate": "#c62828"}
SEVERITY_COLORS = {"info": "#78909c", "warning": "#f29d00", "critical": "#c62828"}
_PALETTE = (
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#ff7f0e", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
)
FEEDBACK_FEATURES = ("action_entropy", "self_similarity", "feedback_outcome_gap")

MAX_ESCALATED_ROWS = 40
MAX_TIMELINES = 6
MAX_TABLE_ROWS = 200


# --------------------------------------------------------------------------- formatting


#: Characters of one logged value the page shows (a 200,000-character action name repeated
#: over 40 rows made a 12 MB page); the rest is counted, not shown.
MAX_TEXT_CHARS = 500


#: Control characters HTML does not allow in text (NUL, form feed, DEL, the C1 controls such as
#: U+0085 NEL, ...): shown as U+FFFD. Bidi
#: controls (a right-to-left override in an agent name reversed the figures after it on the
#: same line) are shown by name, e.g. ``[U+202E]``, so log text cannot rearrange the page.
_CONTROLS = {
    **{c: "\ufffd" for c in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]},
    **{c: f"[U+{c:04X}]" for c in [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]},
}


def e(value: Any) -> str:
    """HTML-escape anything (quotes too, so it is safe in attributes), cut to
    :data:`MAX_TEXT_CHARS` characters; control characters become U+FFFD, bidi controls
    ``[U+202E]``."""
    text = "" if value is None else str(value)
    if len(text) > MAX_TEXT_CHARS:
        text = f"{text[:MAX_TEXT_CHARS]}… ({len(text) - MAX_TEXT_CHARS:,} more characters)"
    return html.escape(text.translate(_CONTROLS), quote=True)


def fmt(value: Any, *, digits: int = 3) -> str:
    """A short human-readable text for a cell (not yet escaped)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if value == 0:
            return "0"
        a = abs(value)
        if a >= 1e5:
            return f"{value:,.0f}"
        if a >= 1:
            return f"{value:,.{max(digits - 1, 0)}f}".rstrip("0").rstrip(".") if a < 1000 else f"{value:,.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        if value.hour == value.minute == value.second == 0 and value.microsecond == 0:
            return value.strftime("%Y-%m-%d")
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "; ".join(fmt(v, digits=digits) for v in value)
    return str(value)


def money(value: Any) -> str:
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return "–"
    v = float(value)
    if abs(v) >= 100:
        return f"${v:,.0f}"
    if abs(v) >= 1:
        return f"${v:,.2f}"
    if v == 0 or abs(v) >= 0.01:
        return f"${v:.3f}"
    return f"${v:.2g}" if abs(v) >= 1e-4 else f"${v:.1e}"  # a tenth of a cent still reads as one


def _color_of(name: str) -> str:
    h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")
    return _PALETTE[h % len(_PALETTE)]


def _col(frame: pl.DataFrame | None, name: str) -> bool:
    return frame is not None and frame.height > 0 and name in frame.columns


# --------------------------------------------------------------------------- html pieces


CSS = """
:root{--fg:#1d2733;--muted:#5f6b7a;--line:#dde3ea;--bg:#f6f8fa;--card:#fff}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#18222e;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:21px;font-weight:600}
header .meta{color:#b8c4d2;font-size:12.5px;margin-top:4px;word-break:break-all}
nav{background:#fff;border-bottom:1px solid var(--line);padding:8px 28px;font-size:13px;position:sticky;top:0}
nav a{color:#1f5fa8;text-decoration:none;margin-right:14px}
main{padding:8px 28px 40px;max-width:1280px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px}
h3{font-size:14.5px;margin:14px 0 6px}
p.note{color:var(--muted);margin:4px 0 10px;font-size:12.5px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 12px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 12px;min-width:120px;background:#fbfcfd}
.card .v{font-size:20px;font-weight:600}
.card .k{color:var(--muted);font-size:12px}
.card.ok .v{color:#2e7d32}.card.review .v{color:#b26a00}.card.escalate .v{color:#c62828}
table{border-collapse:collapse;width:100%;font-size:12.5px;margin:6px 0}
th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.mono,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
td.id{white-space:nowrap;word-break:normal}
.pill{display:inline-block;border-radius:10px;padding:0 8px;font-size:11.5px;color:#fff;font-weight:600}
.pill.ok{background:#2e7d32}.pill.review{background:#f29d00}.pill.escalate{background:#c62828}
.pill.critical{background:#c62828}.pill.warning{background:#f29d00}.pill.info{background:#78909c}
.pill.yes{background:#c62828}.pill.no{background:#90a4ae}
ul.reasons{margin:0;padding-left:16px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
.chart{border:1px solid var(--line);border-radius:6px;padding:6px 8px;background:#fff}
.chart .t{font-size:12.5px;font-weight:600;margin-bottom:2px;word-break:break-all}
.chart .s{font-size:11.5px;color:var(--muted)}
.timeline{margin:4px 0 14px}
.legend{font-size:11.5px;color:var(--muted)}
.legend span.sw{display:inline-block;width:10px;height:10px;margin:0 3px 0 8px;vertical-align:middle;border-radius:2px}
.empty{color:var(--muted);font-style:italic}
footer{color:var(--muted);font-size:12px;padding:0 28px 30px}
.chart svg{max-width:100%;height:auto}
table.grid-table{width:auto}
.scroll{overflow-x:auto}
table.grid-table th.w{white-space:normal;max-width:90px;font-size:11.5px;vertical-align:bottom}
table.grid-table td.cell{text-align:center;color:#90a4ae;min-width:44px;background:#f3f6f8}
table.grid-table td.cell.hit{background:#c62828;color:#fff;font-weight:600}
table.grid-table td.cell.na{background:#fff}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
"""


def _table(
    frame: pl.DataFrame,
    columns: Sequence[str],
    *,
    limit: int = MAX_TABLE_ROWS,
    cells: Mapping[str, Callable[[Any, dict[str, Any]], str]] | None = None,
    headers: Mapping[str, str] | None = None,
    total: int | None = None,
) -> str:
    """An HTML table of ``columns`` (those present). ``cells`` maps a column to a function
    returning already-escaped HTML; every other cell is escaped here. ``total``: the rows
    of the whole table when ``frame`` holds only its first rows (the note says how many)."""
    cols = [c for c in columns if c in frame.columns]
    if frame.height == 0 or not cols:
        return '<p class="empty">none</p>'
    cells = cells or {}
    headers = headers or {}
    head = "".join(f"<th>{e(headers.get(c, c))}</th>" for c in cols)
    rows = []
    for r in frame.head(limit).iter_rows(named=True):
        tds = []
        for c in cols:
            v = r.get(c)
            if c in cells:
                tds.append(f"<td>{cells[c](v, r)}</td>")
            elif isinstance(v, int | float) and not isinstance(v, bool):
                tds.append(f'<td class="num">{e(fmt(v))}</td>')
            elif c in ("run_id", "example_run", "chain_id"):
                tds.append(f'<td class="mono id">{e(fmt(v))}</td>')
            elif c in ("pattern", "args", "result", "source_file", "worst_pattern", "agents"):
                tds.append(f'<td class="mono">{e(fmt(v))}</td>')
            else:
                tds.append(f"<td>{e(fmt(v))}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    n = frame.height if total is None else total
    more = f'<p class="note">showing {limit:,} of {n:,} rows; all rows are in the Parquet file</p>' if n > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def _pill(value: Any, _row: Any = None) -> str:
    v = e(value)
    return f'<span class="pill {v}">{v}</span>'


def shown_score(value: float, decimals: int) -> float:
    """A run's ``score`` cut (not rounded) to ``decimals``: a shown score never reaches a level's
    threshold the run did not (0.69996 is 0.6999 beside ``review``, not 0.7)."""
    from driftwatch._frames import cut_down

    return float(cut_down(np.array([value]), decimals)[0])


def _score_cell(value: Any, _row: Any = None) -> str:
    if not isinstance(value, float) or not math.isfinite(value):
        return e(fmt(value))
    return e(f"{shown_score(value, 3):.3f}".rstrip("0").rstrip("."))


def _bool_pill(value: Any, _row: Any = None) -> str:
    return '<span class="pill yes">drifted</span>' if value else '<span class="pill no">no</span>'


def _reasons(value: Any, _row: Any = None) -> str:
    items = [value] if isinstance(value, str) else list(value or [])  # (text is one reason, not one per character)
    if not items:
        return '<span class="empty">–</span>'
    return '<ul class="reasons">' + "".join(f"<li>{e(x)}</li>" for x in items) + "</ul>"


def _n_changes(summary: Mapping[str, Any]) -> int:
    """Changes found (a change moves several metrics, a row each); a summary written before
    ``changepoint_changes`` existed counts rows."""
    return int(summary.get("changepoint_changes", summary.get("changepoints", 0)) or 0)


def _cards(items: Iterable[tuple[str, str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card {e(cls)}"><div class="v">{e(v)}</div><div class="k">{e(k)}</div></div>'
        for k, v, cls in items
    ) + "</div>"


# --------------------------------------------------------------------------- SVG charts


def _svg(width: float, height: float, body: str, *, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{e(label)}">{body}</svg>'
    )


def _plot_area(left: float, top: float, pw: float, ph: float) -> str:
    """The light background rectangle of a chart's plotting area."""
    return f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fbfcfd" stroke="#e3e8ee"/>'


def _linear_scales(
    x0: float, x1: float, y0: float, y1: float, *, left: float, top: float, pw: float, ph: float
) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """Data-to-pixel maps ``(sx, sy)`` for a plotting area at (left, top) of size pw x ph (y grows upwards)."""

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    return sx, sy


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    out = []
    v = start
    while v <= hi + 1e-12 and len(out) < 12:
        out.append(round(v, 12))
        v += step
    return out


def _bar_levels(levels: Mapping[str, int], *, width: int = 560) -> str:
    total = sum(levels.values())
    if total == 0:
        return ""
    x = 0.0
    parts = []
    for lvl in ("ok", "review", "escalate"):
        n = levels.get(lvl, 0)
        w = width * n / total
        if w > 0:
            parts.append(
                f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="22" fill="{LEVEL_COLORS[lvl]}">'
                f"<title>{e(lvl)}: {n:,}</title></rect>"
            )
            if w > 60:
                parts.append(
                    f'<text x="{x + 6:.1f}" y="15" fill="#fff" font-size="12">{e(lvl)} {n:,} '
                    f"({100 * n / total:.1f}%)</text>"
                )
        x += w
    return _svg(width, 22, "".join(parts), label="runs per level")


def _line_chart(
    xs: Sequence[float],
    ys: Sequence[float | None],
    *,
    width: int = 320,
    height: int = 120,
    marks: Sequence[tuple[float, str]] = (),
    x_label: Callable[[float], str] = lambda v: fmt(v),
    label: str = "chart",
    color: str = "#1f5fa8",
    segments: Sequence[tuple[float, float, float]] = (),
) -> str:
    """A line over (xs, ys) with vertical marks (x, title) and horizontal level segments (x0, x1, y)."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=False) if y is not None and math.isfinite(float(y))]
    if len(pts) < 2:
        return '<p class="empty">not enough buckets to draw</p>'
    left, right, top, bottom = 42, 8, 8, 20
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    yvals = [p[1] for p in pts] + [s[2] for s in segments if math.isfinite(s[2])]
    y0, y1 = min(yvals), max(yvals)
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 + 1e-9), y1 + (abs(y1) * 0.1 + 1e-9)
    pad = (y1 - y0) * 0.08
    y0, y1 = y0 - pad, y1 + pad
    if x1 == x0:
        x1 = x0 + 1
    pw, ph = width - left - right, height - top - bottom

    sx, sy = _linear_scales(x0, x1, y0, y1, left=left, top=top, pw=pw, ph=ph)
    body = [_plot_area(left, top, pw, ph)]
    for t in _ticks(y0, y1, 3):
        y = sy(t)
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef1f4"/>')
        body.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#5f6b7a">{e(fmt(t))}</text>')
    body.append(f'<text x="{left}" y="{height - 5}" font-size="10" fill="#5f6b7a">{e(x_label(x0))}</text>')
    body.append(
        f'<text x="{left + pw}" y="{height - 5}" font-size="10" text-anchor="end" fill="#5f6b7a">{e(x_label(x1))}</text>'
    )
    for sx0, sx1, lvl in segments:
        if math.isfinite(lvl):
            body.append(
                f'<line x1="{sx(max(sx0, x0)):.1f}" x2="{sx(min(sx1, x1)):.1f}" y1="{sy(lvl):.1f}" y2="{sy(lvl):.1f}" '
                f'stroke="#c62828" stroke-width="1.5" stroke-dasharray="5 3" opacity="0.8"/>'
            )
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(pts))
    body.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
    if len(pts) <= 120:
        body.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="1.8" fill="{color}"/>' for x, y in pts)
    for mx, title in marks:
        if x0 <= mx <= x1:
            body.append(
                f'<line x1="{sx(mx):.1f}" x2="{sx(mx):.1f}" y1="{top}" y2="{top + ph}" stroke="#c62828" '
                f'stroke-width="2"><title>{e(title)}</title></line>'
            )
            body.append(f'<polygon points="{sx(mx) - 4:.1f},{top} {sx(mx) + 4:.1f},{top} {sx(mx):.1f},{top + 6}" fill="#c62828"/>')
    return _svg(width, height, "".join(body), label=label)


def _scatter(
    xs: Sequence[float],
    ys: Sequence[float],
    *,
    knee: float | None,
    below: float | None,
    above: float | None,
    weights: Sequence[float] | None = None,
    width: int = 320,
    height: int = 140,
    label: str = "scatter",
) -> str:
    """Metric against load: binned points (size ~ buckets in the bin) joined by a line, the knee as a
    dashed vertical line, and the levels below/above it as horizontal segments."""
    w = list(weights) if weights is not None and len(weights) == len(xs) else [1.0] * len(xs)
    pts = [(float(x), float(y), float(wt or 1)) for x, y, wt in zip(xs, ys, w, strict=False)
           if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
    if not pts:
        return '<p class="empty">no load bins to draw</p>'
    pts.sort()
    left, right, top, bottom = 44, 10, 10, 30
    xv = [p[0] for p in pts] + ([knee] if knee is not None and math.isfinite(knee) else [])
    yv = [p[1] for p in pts] + [v for v in (below, above) if v is not None and math.isfinite(v)]
    x0, x1 = min(xv), max(xv)
    y0, y1 = min(yv), max(yv)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 + 1e-9), y1 + (abs(y1) * 0.1 + 1e-9)
    xpad, ypad = (x1 - x0) * 0.08, (y1 - y0) * 0.12
    x0, x1, y0, y1 = x0 - xpad, x1 + xpad, y0 - ypad, y1 + ypad
    pw, ph = width - left - right, height - top - bottom

    sx, sy = _linear_scales(x0, x1, y0, y1, left=left, top=top, pw=pw, ph=ph)
    body = [_plot_area(left, top, pw, ph)]
    for t in _ticks(y0, y1, 3):
        body.append(f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" font-size="10" text-anchor="end" fill="#5f6b7a">{e(fmt(t))}</text>')
    for t in _ticks(x0, x1, 4):
        body.append(f'<text x="{sx(t):.1f}" y="{top + ph + 12}" font-size="10" text-anchor="middle" fill="#5f6b7a">{e(fmt(t))}</text>')
    body.append(f'<text x="{left + pw}" y="{height - 3}" font-size="9.5" text-anchor="end" fill="#5f6b7a">load (runs per bucket)</text>')
    if knee is not None and math.isfinite(knee):
        kx = sx(knee)
        if below is not None and math.isfinite(below):
            body.append(f'<line x1="{left}" x2="{kx:.1f}" y1="{sy(below):.1f}" y2="{sy(below):.1f}" stroke="#2e7d32" stroke-width="2"/>')
        if above is not None and math.isfinite(above):
            body.append(f'<line x1="{kx:.1f}" x2="{left + pw}" y1="{sy(above):.1f}" y2="{sy(above):.1f}" stroke="#c62828" stroke-width="2"/>')
        body.append(
            f'<line x1="{kx:.1f}" x2="{kx:.1f}" y1="{top}" y2="{top + ph}" stroke="#c62828" stroke-width="1.5" '
            f'stroke-dasharray="4 3"><title>knee at load {e(fmt(knee))}</title></line>'
        )
        anchor = "end" if kx > left + pw * 0.7 else "start"
        dx = -3 if anchor == "end" else 3
        body.append(f'<text x="{kx + dx:.1f}" y="{top + 11}" font-size="10" text-anchor="{anchor}" fill="#c62828">knee {e(fmt(knee))}</text>')
    if len(pts) > 1:
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y, _) in enumerate(pts))
        body.append(f'<path d="{path}" fill="none" stroke="#1f5fa8" stroke-width="1.2" opacity="0.6"/>')
    wmax = max(p[2] for p in pts) or 1.0
    for x, y, wt in pts:
        r = 2.5 + 3.5 * math.sqrt(wt / wmax)
        body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{r:.1f}" fill="#1f5fa8" opacity="0.85">'
                    f"<title>load {e(fmt(x))}: {e(fmt(y))} ({e(fmt(wt))} buckets)</title></circle>")
    return _svg(width, height, "".join(body), label=label)


def _log_ticks(lo: float, hi: float) -> list[float]:
    out = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**k
            if lo <= v <= hi:
                out.append(v)
    if len(out) > 6:
        out = [v for v in out if f"{v:.0e}".startswith("1")]
    return out


def _histogram(values: np.ndarray, *, marks: Sequence[tuple[float, str]], width: int = 320, height: int = 140,
               label: str = "histogram") -> str:
    """Runs per cost bin on a log-scaled x axis (costs span orders of magnitude); bins above the
    ``p99`` mark are red; zero costs fall in the first bin."""
    vals = values[np.isfinite(values)]
    pos = vals[vals > 0]
    if vals.size < 2 or pos.size < 2:
        return '<p class="empty">not enough runs with a cost to draw</p>'
    lo, hi = float(pos.min()), float(pos.max())
    if hi <= lo * 1.0001:
        hi = lo * 10
    edges = np.logspace(math.log10(lo), math.log10(hi), 41)
    counts, _ = np.histogram(np.clip(vals, lo, hi), bins=edges)
    left, right, top, bottom = 30, 8, 22, 32
    pw, ph = width - left - right, height - top - bottom
    cmax = float(np.sqrt(counts.max())) or 1.0
    llo, lhi = math.log10(lo), math.log10(hi)

    def sx(v: float) -> float:
        return left + (math.log10(min(max(v, lo), hi)) - llo) / (lhi - llo) * pw

    tail = max((x for x, t in marks if t.startswith("p99")), default=None)
    body = [_plot_area(left, top, pw, ph)]
    bw = pw / len(counts)
    for i, c in enumerate(counts):
        if c == 0:
            continue
        h = ph * math.sqrt(c) / cmax
        color = "#c62828" if tail is not None and edges[i] >= tail else "#1f5fa8"
        body.append(
            f'<rect x="{left + i * bw:.1f}" y="{top + ph - h:.1f}" width="{max(bw - 0.8, 0.5):.1f}" height="{h:.1f}" '
            f'fill="{color}"><title>{e(money(edges[i]))}–{e(money(edges[i + 1]))}: {int(c):,} runs</title></rect>'
        )
    for j, (x, t) in enumerate(marks):
        if lo <= x <= hi:
            px = sx(x)
            body.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top - 2 - 9 * (j % 2)}" y2="{top + ph}" '
                        'stroke="#18222e" stroke-dasharray="3 2"/>')
            body.append(f'<text x="{px + 2:.1f}" y="{top - 4 - 9 * (j % 2)}" font-size="9.5" fill="#18222e">{e(t)}</text>')
    for t in _log_ticks(lo, hi):
        body.append(f'<text x="{sx(t):.1f}" y="{height - 18}" font-size="10" text-anchor="middle" fill="#5f6b7a">{e(money(t))}</text>')
    body.append(f'<text x="{left + pw}" y="{height - 3}" font-size="9" text-anchor="end" fill="#5f6b7a">cost per run (log scale)</text>')
    return _svg(width, height, "".join(body), label=label)


def _short_label(name: str, limit: int = 28) -> str:
    """A label that fits the chart's margin: long ones keep their start and their end (series
    such as ``agent=research,version=gpt-4o-2024-08-06`` differ at the end)."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2 - 2
    return name[:head] + "…" + name[-(limit - 1 - head):]


def _hbars(items: Sequence[tuple[str, Sequence[tuple[str, float, str]]]], *, width: int = 560,
           label: str = "bars", value_fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
           stacked: bool = True) -> str:
    """Horizontal bars: (row label, [(part name, value, color)]). ``stacked``: a row's parts
    end to end with their total after them; otherwise each part its own thin bar under the
    row's label, with its value (parts that overlap, which do not add up)."""
    if not items:
        return ""
    label_w = 170
    row_h = 20
    sub_h = 10
    if stacked:
        total_max = max((sum(v for _, v, _ in parts) for _, parts in items), default=0) or 1
    else:
        total_max = max((v for _, parts in items for _, v, _ in parts), default=0) or 1
    body = []
    y = 0
    for name, parts in items:
        body.append(f'<text x="{label_w - 6}" y="{y + 14}" font-size="11.5" text-anchor="end" fill="#1d2733">'
                    f"<title>{e(name)}</title>{e(_short_label(name))}</text>")
        x = float(label_w)
        for k, (part, v, color) in enumerate(parts):
            w = (width - label_w - 70) * v / total_max
            top = y + 3 if stacked else y + 3 + k * sub_h
            if not stacked:
                x = float(label_w)
            if w > 0:
                body.append(
                    f'<rect x="{x:.1f}" y="{top}" width="{w:.1f}" height="{row_h - 6 if stacked else sub_h - 2}" '
                    f'fill="{color}"><title>{e(name)} · {e(part)}: {e(value_fmt(v))}</title></rect>'
                )
            if not stacked:
                body.append(f'<text x="{x + max(w, 0) + 4:.1f}" y="{top + sub_h - 2}" font-size="9.5" '
                            f'fill="#5f6b7a">{e(value_fmt(v))}</text>')
            elif w > 0:
                x += w
        if stacked:
            body.append(
                f'<text x="{x + 4:.1f}" y="{y + 14}" font-size="11" fill="#5f6b7a">'
                f"{e(value_fmt(sum(v for _, v, _ in parts)))}</text>"
            )
            y += row_h
        else:
            y += max(row_h, sub_h * len(parts) + 6)
    return _svg(width, y + 2, "".join(body), label=label)


#: The columns of ``examples.parquet`` a step timeline reads.
TIMELINE_COLUMNS: tuple[str, ...] = ("run_id", "step", "action", "args", "status", "error_type", "approved")


def _timeline(steps: pl.DataFrame, loops: pl.DataFrame, *, width: int = 900) -> str:
    """One run's steps as coloured cells; the loop segments as bands; errors outlined red."""
    steps = steps.sort("step")
    n = steps.height
    if n == 0:
        return ""
    cell = max(min(width / n, 14.0), 2.0)
    w = cell * n + 4
    height = 44
    body = []
    step_list = steps["step"].to_list()
    pos = {s: i for i, s in enumerate(step_list)}
    for lp in loops.iter_rows(named=True):
        s0, s1 = lp.get("start_step"), lp.get("end_step")
        if s0 is None or s1 is None:
            continue
        i0 = min((i for s, i in pos.items() if s >= s0), default=None)
        i1 = max((i for s, i in pos.items() if s <= s1), default=None)
        if i0 is None or i1 is None or i1 < i0:
            continue
        body.append(
            f'<rect x="{2 + i0 * cell:.1f}" y="1" width="{(i1 - i0 + 1) * cell:.1f}" height="34" fill="#f29d00" '
            f'opacity="0.22"><title>loop {e(lp.get("kind"))}: {e(lp.get("pattern"))} ×{e(lp.get("repeats"))} '
            f"(steps {e(s0)}–{e(s1)})</title></rect>"
        )
        body.append(
            f'<line x1="{2 + i0 * cell:.1f}" x2="{2 + (i1 + 1) * cell:.1f}" y1="38" y2="38" stroke="#f29d00" stroke-width="4"/>'
        )
    for i, r in enumerate(steps.iter_rows(named=True)):
        action = r.get("action") or ""
        if action == "llm":
            color = "#c7ced6"
        elif action.startswith("handoff:"):
            color = "#6a3d9a"
        else:
            color = _color_of(action)
        err = r.get("status") == "error"
        stroke = ' stroke="#c62828" stroke-width="1.5"' if err else ""
        detail = f"step {r.get('step')}: {action}"
        if r.get("args"):
            detail += f" · args: {r.get('args')}"
        if err:
            detail += f" · error {r.get('error_type') or ''}"
        if r.get("approved") is False or (r.get("approved") is None and False):
            detail += " · not approved"
        body.append(
            f'<rect x="{2 + i * cell:.1f}" y="6" width="{max(cell - 1, 1):.1f}" height="24" fill="{color}"{stroke}>'
            f"<title>{e(detail)}</title></rect>"
        )
    return _svg(w, height, "".join(body), label="step timeline")


def _legend(actions: Iterable[str]) -> str:
    items = []
    for a in actions:
        color = "#c7ced6" if a == "llm" else "#6a3d9a" if a.startswith("handoff:") else _color_of(a)
        items.append(f'<span class="sw" style="background:{color}"></span>{e(a)}')
    return '<div class="legend">' + "".join(items) + "</div>"


# --------------------------------------------------------------------------- sections


def _get(result: Any, name: str) -> pl.DataFrame:
    v = getattr(result, name, None)
    return v if isinstance(v, pl.DataFrame) else pl.DataFrame()


def _highlights(result: Any, summary: Mapping[str, Any]) -> list[str]:
    """Short sentences (already escaped) on what to look at first."""
    out: list[str] = []
    levels = summary.get("levels", {})
    if levels.get("escalate"):
        out.append(f"<b>{levels['escalate']:,}</b> runs need a human now (escalate), {levels.get('review', 0):,} more "
                   "should be reviewed.")
    cps = _get(result, "changepoints")
    if _col(cps, "metric"):
        # one item per change: its strongest metric (rank 1), and how many more moved with it
        top = cps.filter(pl.col("rank") == 1) if "rank" in cps.columns else cps
        items = [
            f"{e(r.get('series'))} {e(r.get('metric'))} {e(fmt(r.get('before')))} → {e(fmt(r.get('after')))} "
            f"from {e(fmt(r.get('ts')))}" + (f" (+{len(moved) - 1} more metric{'s' if len(moved) > 2 else ''})"
                                             if isinstance(moved := r.get("metrics_moved"), list) and len(moved) > 1
                                             else "")
            for r in top.sort("score", descending=True, nulls_last=True).head(4).iter_rows(named=True)
        ]
        if items:
            out.append("Change-points: " + "; ".join(items) + ("; …" if top.height > 4 else "."))
    drift = _get(result, "drift")
    if _col(drift, "drifted") and "feature" in drift.columns:
        fb = drift.filter(pl.col("drifted") & pl.col("feature").is_in(list(FEEDBACK_FEATURES)))
        if fb.height:
            series = sorted(set(fb["series"].to_list()), key=str)
            # the strongest evidence explains (the smallest p-value; its text names its series)
            order = [c for c in ("p_value", "series", "window_start") if c in fb.columns]
            top = fb.sort(order, nulls_last=True).row(0, named=True)
            explain = str(top.get("explain") or "").rstrip(".")
            out.append("Feedback-driven drift in " + ", ".join(e(x) for x in series)
                       + (f". Strongest: {e(explain)}." if explain else "."))
    cost = summary.get("cost") or {}
    if cost.get("projected_daily_usd") is not None:
        out.append(
            f"Spend projected at {e(money(cost.get('projected_daily_usd')))} a day for "
            f"{e(fmt(cost.get('volume_per_day')))} runs/day{_observed_rate(cost, history=bool(summary.get('incremental')))} (interval {e(money(cost.get('projected_daily_lo')))}–"
            f"{e(money(cost.get('projected_daily_hi')))}); the worst run of such a day costs "
            f"{_worst_run_bound(cost)} {e(money(cost.get('worst_run_expected_usd')))}; "
            f"p99/p50 {e(fmt(cost.get('p99_over_p50')))}×"
            + (f" (from the {costed:,} of {summary.get('runs', 0):,} runs that recorded a cost)."
               if isinstance(costed := cost.get("runs_with_cost"), int) and costed < (summary.get("runs") or 0)
               else ".")
        )
    knees = (summary.get("load") or {}).get("items") or []
    if knees:
        items = [
            f"{e(k.get('series'))} {e(k.get('metric'))} ×{e(fmt(k.get('ratio')))} above {e(fmt(k.get('knee')))} runs "
            f"{e((k.get('load_kind') or '').replace('_', ' '))} per bucket"
            for k in knees[:3]
        ]
        out.append("Load knees: " + "; ".join(items) + ("; …" if len(knees) > 3 else "."))
    if summary.get("rows_rejected"):
        out.append(f"{summary['rows_rejected']:,} input rows were rejected (see Rejected input).")
    return out


#: ``worst_run_method`` of a cost headline whose worst-run figure is a lower bound: the tail
#: capped at what was observed (``empirical_capped``), or the fleet's figure raised to its
#: series' largest, which a day of the fleet costs at least (``series_max``).
_LOWER_BOUND_METHODS = frozenset({"empirical_capped", "series_max"})


def _worst_run_bound(cost: Mapping[str, Any]) -> str:
    """``at least`` when summary.json's cost headline says its worst-run figure is a lower bound
    (:data:`_LOWER_BOUND_METHODS`), else ``about`` (a summary without the key too)."""
    return "at least" if cost.get("worst_run_method") in _LOWER_BOUND_METHODS else "about"


def _observed_rate(cost: Mapping[str, Any], *, history: bool = False) -> str:
    """`` (the rate over the 3.3 hours the runs cover)`` when the projection's volume is the
    observed one (not a volume given to the audit); ``history``: an incremental audit's profile,
    over this audit's runs and the history's."""
    days, vol, rate = cost.get("observed_days"), cost.get("volume_per_day"), cost.get("runs_per_day")
    if not isinstance(days, int | float) or not isinstance(vol, int | float) or not isinstance(rate, int | float):
        return ""
    if not math.isclose(vol, rate, rel_tol=1e-9):
        return ""
    seconds = days * 86_400
    if seconds < 120:
        span = f"{seconds:.0f} seconds"
    elif seconds < 7_200:
        span = f"{seconds / 60:.0f} minutes"
    elif days < 2:
        span = f"{days * 24:.1f} hours"
    else:
        span = f"{days:.1f} days"
    runs = "this audit's runs and the history's" if history else "the runs"
    return f" (the rate over the {span} {runs} cover)"


def _section_summary(result: Any, summary: Mapping[str, Any]) -> str:
    levels = summary.get("levels", {})
    cost = summary.get("cost", {}) or {}
    drift = summary.get("drift", {}) or {}
    cards = _cards(
        [
            ("runs", f"{summary.get('runs', 0):,}", ""),
            ("ok", f"{levels.get('ok', 0):,}", "ok"),
            ("review", f"{levels.get('review', 0):,}", "review"),
            ("escalate", f"{levels.get('escalate', 0):,}", "escalate"),
            ("loops", f"{(summary.get('loops') or {}).get('total', 0):,}", ""),
            ("policy breaches", f"{(summary.get('violations') or {}).get('total', 0):,}", ""),
            ("change-points", f"{_n_changes(summary):,}", ""),
            ("drifted tests", f"{drift.get('drifted', 0):,}", ""),
            ("spend", money(cost.get("total_usd")), ""),
        ]
    )
    window = summary.get("window") or {}
    asked = ""
    if summary.get("since") or summary.get("until"):
        bounds = " and ".join(
            part for part in (
                f"at or after {e(_short_ts(summary.get('since')))}" if summary.get("since") else "",
                f"before {e(_short_ts(summary.get('until')))}" if summary.get("until") else "",
            ) if part
        )
        analysed = summary.get("rows_analysed")
        asked = (f" Audited: the runs starting {bounds} (UTC)"
                 + (f", {analysed:,} rows." if isinstance(analysed, int) else "."))
    rows = (
        f"<p class=\"note\">Input: {summary.get('rows_in', 0):,} rows read, {summary.get('rows_valid', 0):,} valid, "
        f"{summary.get('rows_rejected', 0):,} rejected.{asked} The runs span from their first start, "
        f"{e(_short_ts(window.get('first_ts')))}, to their last event, {e(_short_ts(window.get('last_ts')))} "
        "(UTC).</p>"
    )
    hl = _highlights(result, summary)
    hl_html = ("<ul>" + "".join(f"<li>{h}</li>" for h in hl) + "</ul>") if hl else ""
    return ('<section id="summary"><h2>Summary</h2>' + cards + _bar_levels(levels) + rows + _incremental_note(summary)
            + hl_html + "</section>")


def _incremental_note(summary: Mapping[str, Any]) -> str:
    """What an incremental audit's figures cover: this audit's runs, or those with the history."""
    if not summary.get("incremental"):
        return ""
    cost = summary.get("cost") or {}
    since = summary.get("history_since")
    history = f"the history since {e(_short_ts(since))} (UTC)" if since else "the history kept in the state"
    runs = cost.get("profile_runs")
    return (
        f'<p class="note">Incremental audit: the cards, levels, loops, policy breaches, run tables and cost '
        f"histograms cover this audit's {summary.get('runs', 0):,} runs; change-points, drift, the cost profile "
        f"and projection, and load cover them with {history}"
        + (f", {runs:,} runs." if isinstance(runs, int) else ".") + "</p>"
    )


def _short_ts(text: Any) -> str:
    if not text:
        return "–"
    return str(text).replace("T", " ")[:19]


#: The columns of the runs table the report reads (the rest is in runs.parquet).
RUN_COLUMNS: tuple[str, ...] = ("run_id", "agent", "level", "score", "reasons", "n_steps", "cost_usd", "first_ts")


def _top(runs: pl.LazyFrame, k: int) -> pl.DataFrame:
    """The ``k`` runs of highest score (ties by ``run_id``), in that order: a top-k selection
    (sort then head of a LazyFrame), not a sort of every run."""
    return runs.sort(["score", "run_id"], descending=[True, False]).head(k).collect()


def _section_escalated(result: Any) -> str:
    runs = _get(result, "runs")
    head = '<section id="escalated"><h2>Runs that need a human</h2>'
    if not _col(runs, "level"):
        return head + '<p class="empty">no runs</p></section>'
    flagged = runs.lazy().filter(pl.col("level") != "ok")
    n_hot = runs.select((pl.col("level") != "ok").sum()).item()
    if not n_hot:
        return head + '<p class="empty">No run reached review.</p></section>'
    note = (
        f'<p class="note">{n_hot:,} runs at review or escalate, highest score first '
        f"(all of them are in alerts.jsonl and runs.parquet).</p>"
    )
    hot = _top(flagged, MAX_ESCALATED_ROWS)
    table = _table(hot, list(RUN_COLUMNS), limit=MAX_ESCALATED_ROWS,
                   cells={"level": _pill, "reasons": _reasons, "score": _score_cell},
                   headers={"n_steps": "steps", "cost_usd": "cost $", "first_ts": "started"}, total=n_hot)
    # timelines of the top runs we kept events for
    examples = _get(result, "examples")
    loops = _get(result, "loops")
    timelines = []
    if examples.height:
        have = examples["run_id"].unique().implode()
        top = list(_top(flagged.filter(pl.col("run_id").is_in(have)), MAX_TIMELINES).iter_rows(named=True))
        actions: dict[str, int] = {}
        for r in top:
            steps = examples.filter(pl.col("run_id") == r["run_id"])
            for a in steps["action"].to_list():
                actions[a] = actions.get(a, 0) + 1
            run_loops = loops.filter(pl.col("run_id") == r["run_id"]) if _col(loops, "run_id") else pl.DataFrame()
            reasons = "; ".join(r.get("reasons") or [])
            n_steps = r.get("n_steps")
            shown = f"{steps.height:,} steps"
            if isinstance(n_steps, int) and n_steps > steps.height:  # the audit keeps the first steps only
                last = steps["step"].max()
                beyond = run_loops.filter(pl.col("start_step") > last).height if _col(run_loops, "start_step") else 0
                shown = f"the first {steps.height:,} of {n_steps:,} steps" + (
                    f" ({beyond:,} loop{'s' if beyond != 1 else ''} after step {last:,} not drawn)" if beyond else "")
            timelines.append(
                f'<div class="timeline"><div class="mono"><b>{e(r["run_id"])}</b> · {e(r.get("agent"))} · '
                f"{_pill(r['level'])} score {_score_cell(r.get('score'))} · {e(shown)}</div>"
                f'<div class="legend">{e(reasons)}</div>'
                f"{_timeline(steps, run_loops)}</div>"
            )
        legend = _legend(sorted(actions, key=lambda a: (-actions[a], a))[:14])
        timelines.insert(
            0,
            "<h3>Step timelines</h3><p class=\"note\">One cell per step (grey: LLM call, purple: hand-off, "
            "colour: tool; red outline: error). The orange band marks the loop. Hover a cell for the step.</p>"
            + legend,
        )
    if timelines:
        table = f"<h3>All runs at review or escalate (top {MAX_ESCALATED_ROWS})</h3>" + table
    return head + note + "".join(timelines) + table + "</section>"


#: The columns of the worst-loops table (and of a run's loop bands: ``start_step``, ``end_step``).
LOOP_COLUMNS: tuple[str, ...] = ("run_id", "agent", "kind", "pattern", "repeats", "start_step", "end_step",
                                 "wasted_steps", "wasted_cost_usd")
#: The columns of the delegation table.
DELEGATION_COLUMNS: tuple[str, ...] = ("chain_id", "agents", "period", "repeats", "n_runs", "wasted_runs",
                                       "wasted_cost_usd")


def _section_loops(result: Any) -> str:
    loops = _get(result, "loops")
    head = '<section id="loops"><h2>Loops</h2>'
    if not _col(loops, "kind"):
        return head + '<p class="empty">No repeating cycle found.</p></section>'
    note = (
        '<p class="note"><b>exact</b>: the same call gets the same answer again and again (no progress); '
        "<b>error_retry</b>: the cycle keeps failing; <b>same_action</b>: same tools with changing arguments or "
        "results (often legitimate paging or polling, never escalated on its own).</p>"
    )
    by = [c for c in ("agent", "kind") if c in loops.columns]
    agg = loops.group_by(by).agg(
        pl.len().alias("loops"),
        pl.col("run_id").n_unique().alias("runs"),
        pl.col("wasted_steps").sum().alias("wasted_steps") if "wasted_steps" in loops.columns else pl.lit(None),
        # (null, shown "–", when no loop of the group has a known cost: unknown, not $0)
        pl.when(pl.col("wasted_cost_usd").count() > 0).then(pl.col("wasted_cost_usd").sum()).alias("wasted_cost_usd")
        if "wasted_cost_usd" in loops.columns else pl.lit(None),
    ).sort(by)
    severe = loops.with_columns((pl.col("kind") == "same_action").alias("_benign"))
    order = ["_benign"] + [c for c in ("wasted_cost_usd", "repeats") if c in loops.columns] + ["run_id"]
    # (sort then head of a LazyFrame: a top-k selection, not a sort of every loop)
    top = severe.lazy().sort(order, descending=[False] + [True] * (len(order) - 2) + [False], nulls_last=True)
    top = top.head(25).collect()
    cols = list(LOOP_COLUMNS)
    delegation = _get(result, "delegation")
    deleg = ""
    if delegation.height:
        deleg = "<h3>Delegation ping-pong across runs</h3>" + _table(
            delegation, list(DELEGATION_COLUMNS)
        )
    return (
        head + note + _table(agg, [*by, "loops", "runs", "wasted_steps", "wasted_cost_usd"])
        + "<h3>Worst loops</h3>" + _table(top, cols, limit=25, total=loops.height) + deleg + "</section>"
    )


_METRIC_PRIORITY = (
    "steps_mean", "error_rate", "cost_per_run", "loop_rate", "tokens_per_run", "latency_p90", "steps_p90", "llm_ratio",
)


def _ts_float(v: Any) -> float:
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return v.timestamp()
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day, tzinfo=UTC).timestamp()
    return float(v)


def _day_label(x: float) -> str:
    return datetime.fromtimestamp(x, tz=UTC).strftime("%Y-%m-%d")


def _metric_column(metric: str, buckets: pl.DataFrame) -> str | None:
    """The bucket-metrics column drawn for a change-point metric, or None.

    ``tool_share:<tool>`` (and the older ``tool_mix``) map to the ``top{i}_share`` column
    whose ``top{i}_tool`` is that tool.
    """
    if metric in buckets.columns:
        return metric
    tool = metric.partition(":")[2] if metric.startswith("tool_share:") else None
    for i in range(1, 10):
        tcol, scol = f"top{i}_tool", f"top{i}_share"
        if tcol not in buckets.columns or scol not in buckets.columns:
            break
        if metric == "tool_mix" and i == 1:
            return scol
        if tool is not None and buckets[tcol].drop_nulls().head(1).to_list() == [tool]:
            return scol
    return None


def _changepoint_charts(metrics: pl.DataFrame, cps: pl.DataFrame, *, max_per_series: int = 3,
                        only_with_changes: bool = False, strongest_first: bool = False) -> list[str]:
    """Line charts of the bucket metrics, series by series in name order, the metrics with a
    change first. ``strongest_first``: only the metrics that changed, the strongest change
    (``score``) first whatever its series, for views that show only a few charts."""
    charts: list[str] = []
    ranks: list[float] = []
    if not (_col(metrics, "series") and "bucket" in metrics.columns):
        return charts
    order = sorted(metrics["series"].unique().to_list(), key=str)
    strength: dict[tuple[Any, Any], float] = {}
    if strongest_first and _col(cps, "series") and "metric" in cps.columns and "score" in cps.columns:
        top = cps.group_by("series", "metric").agg(pl.col("score").cast(pl.Float64).fill_nan(None).max())
        strength = {(r[0], r[1]): r[2] if r[2] is not None else 0.0 for r in top.iter_rows()}
    if strongest_first:
        best = {s: max((v for (ser, _), v in strength.items() if ser == s), default=-1.0) for s in order}
        order = sorted(order, key=lambda s: -best[s])  # stable: names break ties
    for series in order:
        sub = metrics.filter(pl.col("series") == series).sort("bucket")
        cp_series = cps.filter(pl.col("series") == series) if _col(cps, "series") else pl.DataFrame()
        cp_metrics = sorted(set(cp_series["metric"].to_list())) if cp_series.height else []
        if only_with_changes and not cp_metrics:
            continue
        chosen = [m for m in cp_metrics if _metric_column(m, sub) is not None]
        if strongest_first:
            chosen = sorted(chosen, key=lambda m: -strength.get((series, m), 0.0))
        else:
            chosen += [m for m in _METRIC_PRIORITY if m in sub.columns and m not in chosen]
            chosen = chosen[: max(max_per_series, len(cp_metrics))]
        xs = [_ts_float(x) for x in sub["bucket"].to_list()]
        for m in chosen:
            col = _metric_column(m, sub) or m
            ys = sub[col].to_list()
            rows = list(cp_series.filter(pl.col("metric") == m).iter_rows(named=True)) if cp_series.height else []
            marks, segments = [], []
            for cp in rows:
                t = _ts_float(cp["ts"])
                marks.append((t, f"{m}: {fmt(cp.get('before'))} → {fmt(cp.get('after'))} from {fmt(cp['ts'])}"))
                if col == m and cp.get("before") is not None and cp.get("after") is not None:
                    segments.append((-math.inf, t, float(cp["before"])))
                    segments.append((t, math.inf, float(cp["after"])))
            subtitle = (
                " · ".join(f"{fmt(c.get('ts'))}: {fmt(c.get('before'))} → {fmt(c.get('after'))}" for c in rows)
                if rows else "no change"
            )
            label = m if col == m else f"{m} (share of tool calls)"
            chart = _line_chart(xs, ys, marks=marks, segments=_clip_segments(segments, xs), x_label=_day_label,
                                label=f"{series} {m}", color="#c62828" if rows else "#1f5fa8")
            charts.append(
                f'<div class="chart"><div class="t">{e(series)} · {e(label)}</div><div class="s">{e(subtitle)}</div>'
                f"{chart}</div>"
            )
            ranks.append(-strength.get((series, m), 0.0))
    if strongest_first:  # the strongest metrics of every series first (stable: series, then metric)
        charts = [c for _, c in sorted(zip(ranks, charts, strict=True), key=lambda x: x[0])]
    return charts


#: The columns of the change-point table (``rank`` picks each change's strongest metric).
CHANGEPOINT_COLUMNS: tuple[str, ...] = ("series", "metric", "ts", "before", "after", "magnitude", "score",
                                        "metrics_moved")


def _section_changepoints(result: Any) -> str:
    cps = _get(result, "changepoints")
    metrics = _get(result, "metrics")
    head = '<section id="changepoints"><h2>Change-points in fleet behaviour</h2>'
    note = (
        '<p class="note">Per series, one point per time bucket. A red line marks a detected change '
        "(dashed: the level before and after). Series with a change come first.</p>"
    )
    with_cp = _changepoint_charts(metrics, cps, only_with_changes=True)
    cp_series = set(cps["series"].to_list()) if _col(cps, "series") else set()
    rest = _changepoint_charts(
        metrics.filter(~pl.col("series").is_in(list(cp_series))) if _col(metrics, "series") else metrics,
        cps, max_per_series=2,
    )
    charts = with_cp + rest
    body = f'<div class="grid">{"".join(charts)}</div>' if charts else '<p class="empty">no bucket metrics</p>'
    table = ("<h3>All change-points</h3>" + _table(cps, CHANGEPOINT_COLUMNS)) if cps.height else '<p class="note">No change-point found.</p>'
    return head + note + body + table + "</section>"


def _clip_segments(segments: list[tuple[float, float, float]], xs: list[float]) -> list[tuple[float, float, float]]:
    if not xs:
        return []
    lo, hi = min(xs), max(xs)
    return [(max(a, lo), min(b, hi), y) for a, b, y in segments]


def _drift_grid(drift: pl.DataFrame) -> str:
    """Series x feature: how many windows drifted (red when any; hover for the explanations)."""
    need = {"series", "feature", "drifted"}
    if drift.height == 0 or not need <= set(drift.columns):
        return ""
    present = drift["feature"].unique().to_list()
    features = [f for f in FEEDBACK_FEATURES if f in present] + sorted(f for f in present if f not in FEEDBACK_FEATURES)
    def wrap(f: str) -> str:
        return e(f).replace("_", "_<wbr>")

    head = "".join(f'<th class="w">{wrap(f)}</th>' for f in features)
    agg = drift.group_by("series", "feature").agg(
        pl.len().alias("n"),
        pl.col("drifted").sum().alias("k"),
        pl.col("explain").filter(pl.col("drifted") | (pl.col("feature") == "no_reference")).alias("why")
        if "explain" in drift.columns
        else pl.lit(None, pl.List(pl.String)).alias("why"),
    )
    cells_by = {(r["series"], r["feature"]): r for r in agg.iter_rows(named=True)}
    rows = []
    for series in sorted(drift["series"].unique().to_list(), key=str):
        cells = []
        for f in features:
            r = cells_by.get((series, f))
            if r is None:
                cells.append('<td class="cell na">–</td>')
                continue
            k, n = int(r["k"] or 0), int(r["n"])
            if f == "no_reference":  # a series new since the reference: nothing to compare with
                cells.append(f'<td class="cell na" title="{e(" | ".join(r["why"] or [])[:2000])}">new</td>')
                continue
            title = " | ".join(r["why"] or []) or f"{f}: no drift in {n} window(s)"
            cls = "cell hit" if k else "cell"
            cells.append(f'<td class="{cls}" title="{e(title)}">{k}/{n}</td>')
        rows.append(f"<tr><td>{e(series)}</td>{''.join(cells)}</tr>")
    return (
        '<div class="scroll"><table class="grid-table"><thead><tr><th>series</th>' + head + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></div>"
    )


#: The columns of the drift tables (``window`` is drawn from ``window_start`` and ``window_end``).
DRIFT_COLUMNS: tuple[str, ...] = ("series", "window", "feature", "drifted", "explain", "effect_size", "q_value",
                                  "method")


def _section_drift(result: Any) -> str:
    drift = _get(result, "drift")
    notes = getattr(result, "notes", {}) or {}
    head = '<section id="drift"><h2>Drift</h2>'
    ref = notes.get("drift_reference")
    rng = notes.get("drift_reference_range")
    note = '<p class="note">Reference: ' + e(ref or "–") + (f" ({e(rng[0])} to {e(rng[1])})" if rng else "") + ". "
    note += (
        "Feedback-driven indicators (bold): <b>action_entropy</b> (tool choice collapsing onto habits), "
        "<b>self_similarity</b> (imitating its own recent behaviour), <b>feedback_outcome_gap</b> "
        "(proxy feedback holds while the outcome falls). Each cell: drifted windows / tested windows.</p>"
    )
    if drift.height == 0:
        return head + note + '<p class="empty">no drift rows</p></section>'
    out = head + note + _drift_grid(drift)
    cols = list(DRIFT_COLUMNS)
    if {"window_start", "window_end"} <= set(drift.columns):
        drift = drift.with_columns(_window_text(drift).alias("window"))
    drifted = drift.filter(pl.col("drifted")) if "drifted" in drift.columns else drift.head(0)
    feedback = drift.filter(pl.col("feature").is_in(list(FEEDBACK_FEATURES))) if "feature" in drift.columns else drift.head(0)
    tests = drift.filter(pl.col("feature") != "no_reference").height if "feature" in drift.columns else drift.height
    out += f"<h3>Drifted ({drifted.height:,} of {tests:,} tests)</h3>" + _table(
        drifted, cols, cells={"drifted": _bool_pill}
    )
    if feedback.height:
        fb = feedback.sort(["drifted", "series", "window_start"], descending=[True, False, False]) \
            if "drifted" in feedback.columns else feedback
        out += "<h3>Feedback-driven indicators, every window</h3>" + _table(fb, cols, cells={"drifted": _bool_pill})
    return out + "</section>"


def _section_policy(result: Any) -> str:
    v = _get(result, "violations")
    head = '<section id="policy"><h2>Policy breaches by rule</h2>'
    if v.height == 0 or "rule" not in v.columns:
        return head + '<p class="empty">No policy breach.</p></section>'
    counts = v.group_by("rule", "severity").agg(pl.len().alias("n"), pl.col("run_id").n_unique().alias("runs"))
    order = counts.group_by("rule").agg(pl.col("n").sum()).sort(["n", "rule"], descending=[True, False])["rule"].to_list()
    items = []
    for rule in order:
        parts = []
        for sev in ("critical", "warning", "info"):
            n = counts.filter((pl.col("rule") == rule) & (pl.col("severity") == sev))["n"].sum()
            if n:
                parts.append((sev, float(n), SEVERITY_COLORS.get(sev, "#78909c")))
        items.append((str(rule), parts))
    chart = _hbars(items, label="breaches per rule")
    by_rule = (
        v.group_by("rule")
        .agg(
            pl.len().alias("breaches"),
            pl.col("run_id").n_unique().alias("runs"),
            (pl.col("severity") == "critical").sum().alias("critical"),
            pl.col("detail").first().alias("example"),
            pl.col("run_id").first().alias("example_run"),
        )
        .sort(["breaches", "rule"], descending=[True, False])
    )
    legend = "".join(
        f'<span class="sw" style="background:{c}"></span>{e(s)}' for s, c in SEVERITY_COLORS.items()
    )
    return (
        head + f'<div class="legend">{legend}</div>' + chart
        + _table(by_rule, ["rule", "breaches", "runs", "critical", "example", "example_run"])
        + "</section>"
    )


_CAUSES = (
    ("loop_share", "loops", "#f29d00"),
    ("error_share", "failed steps", "#c62828"),
    ("retry_share", "retries", "#8c564b"),
    ("over_ceiling_share", "runs over the cost ceiling", "#6a3d9a"),
)


#: The columns of the cost profile table (``runs_with_cost`` only when some runs recorded no cost).
COST_PROFILE_COLUMNS: tuple[str, ...] = (
    "series", "runs", "runs_per_day", "runs_with_cost", "total_cost_usd", "cost_p50", "cost_p90", "cost_p99",
    "cost_max", "p99_over_p50", "max_over_p50", "runs_over_ceiling", "success_rate", "cost_per_success",
)
#: The columns of the cost projection table.
COST_PROJECTION_COLUMNS: tuple[str, ...] = (
    "series", "volume_per_day", "projected_daily_usd", "projected_daily_lo", "projected_daily_hi",
    "worst_run_expected_usd", "worst_run_1_in_n_usd", "worst_run_method",
)


def _section_costs(result: Any, summary: Mapping[str, Any]) -> str:
    costs = _get(result, "costs")
    runs = _get(result, "runs")
    out = '<section id="costs"><h2>Cost at volume</h2>'
    drawn = False
    if _col(runs, "cost_usd"):
        runs = runs.select("cost_usd", *(["agent"] if "agent" in runs.columns else []))  # not every column per agent
        charts = []
        groups = sorted(runs["agent"].unique().to_list(), key=str) if "agent" in runs.columns else []
        for agent in [None, *groups]:
            sub = runs if agent is None else runs.filter(pl.col("agent") == agent)
            vals = sub["cost_usd"].drop_nulls().cast(pl.Float64).to_numpy()
            if vals.size < 2:
                continue
            p50, p90, p99 = (float(np.quantile(vals, q)) for q in (0.5, 0.9, 0.99))
            marks = [(p50, "p50"), (p90, "p90"), (p99, "p99")]
            tail = f"{float(vals.max()) / p50:.1f}×" if p50 > 0 else "–"
            charts.append(
                f'<div class="chart"><div class="t">{e("all runs" if agent is None else agent)}</div>'
                f'<div class="s">{vals.size:,} runs · p50 {e(money(p50))} · p90 {e(money(p90))} · p99 {e(money(p99))} · '
                f"max/p50 {e(tail)}</div>"
                f"{_histogram(vals, marks=marks, label='cost per run, ' + ('all runs' if agent is None else f'agent {agent}'))}</div>"
            )
        if charts:
            drawn = True
            out += "<h3>Cost per run</h3><p class=\"note\">Runs per cost bin (log-scaled cost, square-root bar heights); red bars are the tail above p99.</p>" + f'<div class="grid">{"".join(charts)}</div>'
    costed = costs["runs_with_cost"] if costs.height and "runs_with_cost" in costs.columns else None
    if costed is not None and not (costed > 0).any():
        return out + ('<p class="empty">no cost recorded: no run in these logs has a <code>cost_usd</code> value, '
                      "so spend, cost per run and the projection are unknown (not $0)</p></section>")
    if costs.height and "series" in costs.columns:
        drawn = True
        if costed is not None and (costed < costs["runs"]).any():
            out += ('<p class="note">Some runs recorded no cost (<code>runs_with_cost</code> &lt; <code>runs</code>): '
                    "their cost is unknown, and every figure below is over the runs that recorded one.</p>")
        items = []
        for r in costs.iter_rows(named=True):
            parts = []
            for col, name, color in _CAUSES:
                v = r.get(col)
                if v is not None and math.isfinite(float(v)):
                    parts.append((name, 100.0 * float(v), color))
            items.append((str(r["series"]), parts))
        legend = "".join(f'<span class="sw" style="background:{c}"></span>{e(n)}' for _, n, c in _CAUSES)
        out += (
            "<h3>Spend by cause</h3><p class=\"note\">Share of each series' spend, one bar per cause; the "
            "causes overlap (a failed retry inside a loop counts in all three), so they do not add up to a "
            "total.</p>"
            f'<div class="legend">{legend}</div>'
            + _hbars(items, label="spend by cause", value_fmt=lambda v: f"{v:.1f}%", stacked=False)
        )
        if summary.get("incremental"):
            out += ('<p class="note">Incremental audit: the histograms above are this audit\'s runs; the profile '
                    "and projection below are over these runs and the history (see the summary).</p>")
        out += "<h3>Profile</h3>" + _table(
            costs,
            [c for c in COST_PROFILE_COLUMNS
             if c != "runs_with_cost" or (costed is not None and (costed < costs["runs"]).any())],
            headers={"total_cost_usd": "spend $", "p99_over_p50": "p99/p50", "max_over_p50": "max/p50"},
        )
        out += (
            "<h3>Projection</h3><p class=\"note\">Daily spend at the volume (runs per day; the observed volume unless "
            "--volume-per-day is given) with its prediction interval, and the expected cost of the worst run of such "
            "a day (the 1-in-N edge case).</p>"
        ) + _table(
            costs,
            list(COST_PROJECTION_COLUMNS),
            headers={"projected_daily_usd": "daily $", "projected_daily_lo": "low $", "projected_daily_hi": "high $",
                     "worst_run_expected_usd": "worst run $", "worst_run_1_in_n_usd": "1-in-N run $"},
        )
    if not drawn:
        out += '<p class="empty">no cost data</p>'
    return out + "</section>"


def _load_grid(load: pl.DataFrame) -> str:
    """Series x metric: the knee (runs per bucket) where significant, else 'none'; per load kind."""
    need = {"series", "metric", "knee"}
    if load.height == 0 or not need <= set(load.columns):
        return ""
    kinds = load["load_kind"].unique().sort().to_list() if "load_kind" in load.columns else [None]
    metrics = sorted(load["metric"].unique().to_list(), key=str)
    out = []
    for kind in kinds:
        sub = load if kind is None else load.filter(pl.col("load_kind") == kind)
        head = "".join(f'<th class="w">{e(m).replace("_", "_<wbr>")}</th>' for m in metrics)
        rows = []
        for series in sorted(sub["series"].unique().to_list(), key=lambda x: (x == "all", str(x))):
            cells = []
            for m in metrics:
                r = sub.filter((pl.col("series") == series) & (pl.col("metric") == m))
                if r.height == 0:
                    cells.append('<td class="cell na">–</td>')
                    continue
                row = r.row(0, named=True)
                if row.get("knee") is not None:
                    title = (f"{m}: {fmt(row.get('below'))} below, {fmt(row.get('above'))} above "
                             f"(ratio {fmt(row.get('ratio'))}, p {fmt(row.get('p_value'))})")
                    cells.append(f'<td class="cell hit" title="{e(title)}">{e(fmt(row.get("knee")))}</td>')
                else:
                    title = f"{m}: no significant knee (p {fmt(row.get('p_value'))})"
                    cells.append(f'<td class="cell" title="{e(title)}">none</td>')
            rows.append(f"<tr><td>{e(series)}</td>{''.join(cells)}</tr>")
        label = f"load = runs {e(kind).replace('_', ' ')} per bucket" if kind else "load"
        out.append(
            f"<h3>Knees ({label})</h3>"
            '<div class="scroll"><table class="grid-table"><thead><tr><th>series</th>' + head
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
        )
    return "".join(out)


def _window_text(drift: pl.DataFrame) -> pl.Expr:
    """Drift windows as shown: UTC dates when every window starts and ends on UTC midnight
    (``2026-10-01 – 2026-10-08``), else UTC times (``2026-10-08 12:00Z – 2026-10-09 00:00Z``),
    so that half-day windows do not read as whole days or empty ranges."""
    def utc(col: str) -> pl.Expr:
        dtype = drift.schema[col]
        tz = getattr(dtype, "time_zone", None)
        return pl.col(col).dt.convert_time_zone("UTC") if tz else pl.col(col)

    start, end = utc("window_start"), utc("window_end")
    bounds = drift.select(start.alias("s"), end.alias("e"))
    midnight = all(
        (bounds[c].drop_nulls().dt.time() == time(0)).all() for c in ("s", "e")
    )
    if midnight:
        spec = "%Y-%m-%d"
    else:
        seconds = any((bounds[c].drop_nulls().dt.second() != 0).any() for c in ("s", "e"))
        spec = "%Y-%m-%d %H:%M:%SZ" if seconds else "%Y-%m-%d %H:%MZ"
    return pl.concat_str(start.dt.strftime(spec), pl.lit(" – "), end.dt.strftime(spec))


def _section_load(result: Any) -> str:
    load = _get(result, "load")
    head = '<section id="load"><h2>Behaviour under load</h2>'
    note = (
        '<p class="note">Load is the number of runs started per bucket (or in flight). Each point is the metric '
        "pooled over the buckets of one load bin. The dashed line is the knee, the load above which the metric "
        "departs from its low-load level (green: level below, red: above); a knee is reported only when the "
        "dependence on load is significant within day-level controls.</p>"
    )
    if load.height == 0:
        return head + note + '<p class="empty">no load rows (too few busy buckets)</p></section>'
    sig = load.filter(pl.col("knee").is_not_null()) if "knee" in load.columns else load.head(0)
    charts = []
    for r in sig.head(12).iter_rows(named=True):
        xs = list(r.get("curve_load") or [])
        ys = list(r.get("curve_value") or [])
        chart = _scatter(xs, ys, knee=r.get("knee"), below=r.get("below"), above=r.get("above"),
                         weights=list(r.get("curve_buckets") or []) or None,
                         label=f"{r.get('series')} {r.get('metric')} vs load")
        charts.append(
            f'<div class="chart"><div class="t">{e(r.get("series"))} · {e(r.get("metric"))} '
            f'vs runs {e((r.get("load_kind") or "").replace("_", " "))}</div>'
            f'<div class="s">knee {e(fmt(r.get("knee")))} · below {e(fmt(r.get("below")))} · above '
            f'{e(fmt(r.get("above")))} · ratio {e(fmt(r.get("ratio")))} · p {e(fmt(r.get("p_value")))}</div>{chart}</div>'
        )
    shown = (f'<p class="note">showing the first {len(charts):,} of {sig.height:,} knees; every knee is in the '
             "grid below and in load.parquet</p>") if sig.height > len(charts) else ""
    body = (
        f'{shown}<div class="grid">{"".join(charts)}</div>' if charts
        else '<p class="note">No load knee found: no metric departs from its low-load level as load grows.</p>'
    )
    return head + note + body + _load_grid(load) + "</section>"


#: The columns of the rejected rows' table (counted by ``source_file`` and ``reason``).
REJECTED_COLUMNS: tuple[str, ...] = ("source_file", "reason", "run_id", "step", "ts", "action")


def _section_rejected(result: Any, summary: Mapping[str, Any]) -> str:
    rej = _get(result, "rejected")
    head = '<section id="rejected"><h2>Rejected input</h2>'
    n = summary.get("rows_rejected", rej.height)
    if rej.height == 0:
        return head + f'<p class="note">{e(fmt(n))} rows rejected.</p></section>'
    by = [c for c in ("source_file", "reason") if c in rej.columns]
    agg = rej.group_by(by).agg(pl.len().alias("rows")).sort(["rows", *by], descending=[True] + [False] * len(by)) if by else rej.head(0)
    sample_cols = [c for c in REJECTED_COLUMNS if c in rej.columns]
    return (
        head + f'<p class="note">{e(fmt(n))} rows rejected; they are in rejected.parquet with the reason.</p>'
        + _table(agg, [*by, "rows"]) + "<h3>First rows</h3>" + _table(rej.head(20), sample_cols) + "</section>"
    )


# --------------------------------------------------------------------------- pages


def render_report(result: Any, *, summary: Mapping[str, Any] | None = None, title: str = "driftwatch audit") -> str:
    """The full report.html for an :class:`~driftwatch.audit.AuditResult` (or anything with its frames).

    Parameters
    ----------
    result : AuditResult
        The audit (or a result loaded back with :func:`load_results`).
    summary : mapping, optional
        summary.json content (``result.summary()`` when omitted).
    title : str, default="driftwatch audit"

    Returns
    -------
    str
        A self-contained HTML document (inline CSS and SVG, no script).
    """
    if summary is None:
        summary = result.summary()
    src = summary.get("sources") or []
    meta = " · ".join(
        x for x in (
            f"audit {e(summary.get('audit_id'))}" if summary.get("audit_id") else "",
            f"{len(src)} source(s): {e(', '.join(map(str, src[:3])))}{' …' if len(src) > 3 else ''}" if src else "",
            f"engine {e(summary.get('engine'))}" if summary.get("engine") else "",
        ) if x
    )
    nav = "".join(
        f'<a href="#{k}">{e(v)}</a>'
        for k, v in (
            ("summary", "Summary"), ("escalated", "Escalations"), ("loops", "Loops"), ("changepoints", "Change-points"),
            ("drift", "Drift"),
            ("policy", "Policy"), ("costs", "Cost"), ("load", "Load"), ("rejected", "Rejected"),
        )
    )
    sections = [
        _section_summary(result, summary),
        _section_escalated(result),
        _section_loops(result),
        _section_changepoints(result),
        _section_drift(result),
        _section_policy(result),
        _section_costs(result, summary),
        _section_load(result),
        _section_rejected(result, summary),
    ]
    versions = summary.get("versions") or {}
    footer = "generated by " + " · ".join(f"{e(k)} {e(v)}" for k, v in sorted(versions.items()))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{e(title)}</h1><div class=\"meta\">{meta}</div></header><nav>{nav}</nav>"
        f"<main>{''.join(sections)}</main><footer>{footer}</footer></body></html>\n"
    )


def render_notebook(result: Any, *, top: int = 10) -> str:
    """A compact HTML view for notebooks: counts per level, top escalations, change-point charts."""
    summary = result.summary()
    levels = summary.get("levels", {})
    cards = _cards(
        [("runs", f"{summary.get('runs', 0):,}", "")]
        + [(lvl, f"{levels.get(lvl, 0):,}", lvl) for lvl in ("ok", "review", "escalate")]
        + [
            ("loops", f"{(summary.get('loops') or {}).get('total', 0):,}", ""),
            ("change-points", f"{_n_changes(summary):,}", ""),
            ("drifted", f"{(summary.get('drift') or {}).get('drifted', 0):,}", ""),
            ("rejected rows", f"{summary.get('rows_rejected', 0):,}", ""),
        ]
    )
    runs = result.runs
    hot = _top(runs.lazy().filter(pl.col("level") != "ok"), top) if _col(runs, "level") else pl.DataFrame()
    table = _table(hot, ["run_id", "agent", "level", "score", "reasons"],
                   cells={"level": _pill, "reasons": _reasons, "score": _score_cell})
    charts = _changepoint_charts(_get(result, "metrics"), _get(result, "changepoints"), only_with_changes=True,
                                 strongest_first=True)
    cps = (
        f"<h3>Change-points</h3><div class=\"grid\">{''.join(charts[:9])}</div>"
        + (f'<p class="note">The 9 strongest of {len(charts)} changed metrics; all are in <code>.changepoints</code>, '
           "and <code>.write(DIR)</code> writes a report.html that charts every one.</p>" if len(charts) > 9 else "")
        if charts else '<p class="note">No change-point found.</p>'
    )
    return (
        f'<div class="driftwatch-audit"><style>{scoped_css(".driftwatch-audit")}</style>'
        f"<b>driftwatch audit</b>{cards}{_bar_levels(levels)}<h3>Top escalations</h3>{table}{cps}</div>"
    )


def scoped_css(scope: str) -> str:
    """:data:`CSS` with every rule limited to elements under ``scope`` (for notebook output cells,
    whose styles would otherwise restyle the whole notebook)."""
    rules = []
    for m in re.finditer(r"([^{}]+)\{([^{}]*)\}", CSS):
        selectors, body = m.group(1).strip(), m.group(2)
        scoped = []
        for sel in selectors.split(","):
            sel = sel.strip()
            if sel in (":root", "body", "*"):
                scoped.append(scope if sel != "*" else f"{scope} *")
            else:
                scoped.append(f"{scope} {sel}")
        rules.append(",".join(scoped) + "{" + body + "}")
    return "\n".join(rules)


# --------------------------------------------------------------------------- rebuild from a folder


class _Loaded:
    """An audit's frames read back from a results folder (enough to render the report)."""

    def __init__(self, folder: Path, summary: dict[str, Any]) -> None:
        self.folder = folder
        self._summary = summary
        self.notes = summary.get("notes") or {}
        self.stats = {k: summary.get(k) for k in ("rows_in", "rows_valid", "rows_rejected", "files")}

    def summary(self) -> dict[str, Any]:
        return self._summary


def load_results(folder: str | os.PathLike[str]) -> Any:
    """Read a results folder written by an audit back into an object with the result's frames.

    Raises
    ------
    NoInputError
        The folder has no summary.json (not an audit results folder).
    CorruptFileError
        A results file cannot be read.
    """
    from driftwatch.errors import CorruptFileError, NoInputError

    d = Path(folder)
    summary_path = d / "summary.json"
    if not d.is_dir():
        raise NoInputError(
            f"{d}: {'not a folder' if d.exists() else 'no such folder'}; expected a results folder "
            "written by 'driftwatch audit --out DIR'"
        )
    if not summary_path.is_file():
        raise NoInputError(
            f"{d}: no summary.json here; expected a folder written by 'driftwatch audit --out {d}'"
        )
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"{summary_path}: cannot read the audit summary ({exc}); rerun the audit") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("levels", {}), dict):
        raise CorruptFileError(f"{summary_path}: not an audit summary (a JSON object with levels); rerun the audit")
    _check_summary(summary, summary_path)
    res = _Loaded(d, summary)
    from driftwatch.audit import CONTRACT_FILES, EXTRA_FILES

    for fname in CONTRACT_FILES + EXTRA_FILES:
        if not fname.endswith(".parquet"):
            continue
        p = d / fname
        frame = pl.DataFrame()
        need = _REQUIRED_COLUMNS.get(fname)
        if p.is_file():
            try:
                frame = pl.read_parquet(p, glob=False)  # (an exact path: a folder named nightly[prod] is no glob)
            except Exception as exc:  # polars raises several error types for bad files
                raise CorruptFileError(
                    f"{p}: not readable Parquet ({type(exc).__name__}); rerun the audit to rewrite it"
                ) from None
            missing = [c for c in need or () if c not in frame.columns]
            if missing:
                raise CorruptFileError(f"{p}: lacks column(s) {missing} of an audit's {fname}; rerun the audit")
            _check_dtypes(frame, p, fname)
        elif fname not in _OPTIONAL_FILES:
            # a page that says "no policy breach" beside a summary of 49 would be wrong, not empty
            raise CorruptFileError(f"{p}: missing from the results folder; rerun the audit to rewrite it")
        setattr(res, fname.removesuffix(".parquet"), frame)
    _check_counts(res, summary, d)
    return res


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_summary(summary: Mapping[str, Any], path: Path) -> None:
    """Refuse a summary.json without the keys and types every audit writes (``{}`` drew a page of
    "0 runs" above "34 runs at review or escalate")."""
    from driftwatch.audit import LEVELS
    from driftwatch.errors import CorruptFileError

    problems: list[str] = []
    for key in _SUMMARY_COUNTS:
        if not _is_int(summary.get(key)):
            problems.append(f"{key} is {_shown(summary.get(key))}, expected a count")
    for key in _SUMMARY_OBJECTS:
        if not isinstance(summary.get(key), dict):
            problems.append(f"{key} is {_shown(summary.get(key))}, expected an object")
    levels = summary.get("levels")
    if isinstance(levels, dict):
        bad = [lv for lv in LEVELS if not _is_int(levels.get(lv))]
        if bad:
            problems.append(f"levels lacks counts for {', '.join(bad)}")
        elif _is_int(summary.get("runs")) and sum(levels[lv] for lv in LEVELS) != summary["runs"]:
            problems.append(f"levels sum to {sum(levels[lv] for lv in LEVELS):,}, not to runs ({summary['runs']:,})")
    for key, sub in (("loops", "total"), ("violations", "total"), ("drift", "drifted")):
        if isinstance(summary.get(key), dict) and not _is_int(summary[key].get(sub)):
            problems.append(f"{key}.{sub} is {_shown(summary[key].get(sub))}, expected a count")
    if not problems and summary["rows_in"] != summary["rows_valid"] + summary["rows_rejected"]:
        problems.append("rows_in is not rows_valid + rows_rejected")
    if problems:
        raise CorruptFileError(
            f"{path}: not an audit summary as an audit wrote it ({'; '.join(problems[:3])}"
            f"{f' and {len(problems) - 3} more' if len(problems) > 3 else ''}); rerun the audit"
        )


def _shown(v: Any) -> str:
    """A value of a results file in a message: JSON, ASCII only (no control character of the file
    reaches the terminal), cut to 40 characters."""
    if v is None:
        return "missing"
    text = json.dumps(v, ensure_ascii=True, default=str)
    return text if len(text) <= 40 else text[:40] + "..."


def _check_dtypes(frame: pl.DataFrame, path: Path, fname: str) -> None:
    """Refuse a results file whose columns have another type than an audit writes (``reasons`` as
    text was drawn as one list item per character)."""
    from driftwatch.errors import CorruptFileError

    kinds = {c: _kind_of(fname, c) for c in frame.columns}
    wrong = [
        f"{c} is {frame.schema[c]}, expected {kind}"
        for c, kind in kinds.items()
        if kind is not None and not _DTYPE_KINDS[kind](frame.schema[c])
    ]
    if wrong:
        raise CorruptFileError(
            f"{path}: columns not as an audit wrote them ({'; '.join(wrong[:5])}"
            f"{f' and {len(wrong) - 5} more' if len(wrong) > 5 else ''}); rerun the audit to rewrite it"
        )


def _check_counts(res: Any, summary: Mapping[str, Any], folder: Path) -> None:
    """The summary's counts must be those of the files beside it, and alerts.jsonl must be there
    with one line per run at review or above."""
    from driftwatch.audit import LEVELS
    from driftwatch.errors import CorruptFileError

    runs = res.runs
    summary_path = folder / "summary.json"
    if runs.height != summary["runs"]:
        raise CorruptFileError(
            f"{summary_path}: says {summary['runs']:,} runs but runs.parquet holds {runs.height:,}; "
            "the results files are not from one audit, rerun the audit"
        )
    counts = dict.fromkeys(LEVELS, 0)
    for lvl, n in runs["level"].value_counts().iter_rows():
        if lvl not in counts:
            raise CorruptFileError(
                f"{folder / 'runs.parquet'}: level {_shown(lvl)} is not one of {', '.join(LEVELS)}; rerun the audit"
            )
        counts[lvl] = int(n)
    if counts != {lv: summary["levels"][lv] for lv in LEVELS}:
        raise CorruptFileError(
            f"{summary_path}: levels {_shown(summary['levels'])} are not those of runs.parquet {_shown(counts)}; "
            "the results files are not from one audit, rerun the audit"
        )
    for fname, frame, said in (
        ("loops.parquet", res.loops, summary["loops"]["total"]),
        ("violations.parquet", res.violations, summary["violations"]["total"]),
        ("changepoints.parquet", res.changepoints, summary["changepoints"]),
    ):
        if frame.height != said:
            raise CorruptFileError(
                f"{summary_path}: says {said:,} rows of {fname} but the file holds {frame.height:,}; "
                "the results files are not from one audit, rerun the audit"
            )
    alerts = folder / "alerts.jsonl"
    if not alerts.is_file():
        raise CorruptFileError(f"{alerts}: missing from the results folder; rerun the audit to rewrite it")
    lines = 0
    try:
        with open(alerts, "rb") as fh:
            while block := fh.read(1 << 20):
                lines += block.count(b"\n")
    except OSError as exc:
        raise CorruptFileError(f"{alerts}: cannot be read ({exc.strerror or exc}); rerun the audit") from None
    hot = counts["review"] + counts["escalate"]
    if lines != hot:
        raise CorruptFileError(
            f"{alerts}: holds {lines:,} lines for {hot:,} runs at review or escalate; "
            "the results files are not from one audit, rerun the audit"
        )


#: Results files a folder may lack (folders of earlier versions): they add the example
#: timelines and the change-point charts, and the page says nothing about findings without them.
#: Without any other file a section would read "nothing found": the folder is incomplete.
_OPTIONAL_FILES = frozenset({"examples.parquet", "metrics.parquet"})

#: Columns the page reads from each results file: the tables' columns and those the sections
#: compute with. Each is checked against :data:`_COLUMN_KINDS` when present; a file lacking one
#: of :data:`_REQUIRED_COLUMNS` is refused. (``test_every_column_the_page_reads_is_checked``
#: drops every other column and checks the page stays the same.)
_READ_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs.parquet": RUN_COLUMNS,
    "loops.parquet": LOOP_COLUMNS,
    "violations.parquet": ("run_id", "rule", "severity", "detail"),
    "changepoints.parquet": (*CHANGEPOINT_COLUMNS, "rank"),
    "drift.parquet": (*(c for c in DRIFT_COLUMNS if c != "window"), "window_start", "window_end", "p_value"),
    "rejected.parquet": REJECTED_COLUMNS,
    "costs.parquet": (*COST_PROFILE_COLUMNS, *(c for c, _, _ in _CAUSES), *COST_PROJECTION_COLUMNS),
    "load.parquet": ("series", "metric", "load_kind", "knee", "below", "above", "ratio", "p_value",
                     "curve_load", "curve_value", "curve_buckets"),
    "delegation.parquet": DELEGATION_COLUMNS,
    "examples.parquet": TIMELINE_COLUMNS,
    "metrics.parquet": ("series", "bucket", *_METRIC_PRIORITY),
}

#: Columns of :data:`_READ_COLUMNS` a results file must have: those the page cannot be drawn
#: without, and those the contract lists; the others are drawn when present.
_REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs.parquet": ("run_id", "agent", "score", "level", "reasons", "n_steps", "cost_usd"),
    "loops.parquet": ("run_id", "agent", "kind", "pattern", "repeats", "start_step", "end_step", "wasted_steps",
                      "wasted_cost_usd"),
    "violations.parquet": ("run_id", "rule", "severity", "detail"),
    "changepoints.parquet": ("series", "metric", "ts", "before", "after", "magnitude", "score"),
    "drift.parquet": ("series", "feature", "drifted", "window_start", "window_end", "p_value", "method"),
    "rejected.parquet": ("source_file", "reason"),
    "costs.parquet": ("series", "runs"),
    "load.parquet": ("series", "metric", "knee", "below", "above", "ratio", "p_value"),
    "examples.parquet": ("run_id", "step", "action"),
    "metrics.parquet": ("series", "bucket"),
}

#: Columns of ``metrics.parquet`` named by pattern (a change-point's ``tool_share:<tool>``).
_PATTERN_KINDS: dict[str, tuple[tuple[re.Pattern[str], str], ...]] = {
    "metrics.parquet": ((re.compile(r"top\d+_tool"), "text"), (re.compile(r"top\d+_share"), "a number")),
}

_TEXT_COLUMNS = (
    "run_id", "agent", "level", "kind", "pattern", "rule", "severity", "detail", "series", "metric", "feature",
    "explain", "method", "source_file", "reason", "action", "worst_run_method", "load_kind", "chain_id",
    "agents", "args", "status", "error_type",
)
_INTEGER_COLUMNS = (
    "n_steps", "repeats", "start_step", "end_step", "wasted_steps", "rank", "step", "runs", "runs_with_cost",
    "runs_over_ceiling", "period", "n_runs", "wasted_runs",
)
_TIME_COLUMNS = ("first_ts", "ts", "window_start", "window_end", "bucket")

#: What each column the page reads may be (the type an audit writes it with, or one like it).
_COLUMN_KINDS: dict[str, str] = {
    **dict.fromkeys(_TEXT_COLUMNS, "text"),
    **dict.fromkeys(_INTEGER_COLUMNS, "an integer"),
    **dict.fromkeys(_TIME_COLUMNS, "a time"),
    "reasons": "a list of text", "metrics_moved": "a list of text",
    "drifted": "a boolean", "approved": "a boolean",
    "curve_load": "a list of numbers", "curve_value": "a list of numbers", "curve_buckets": "a list of numbers",
}


def _kind_of(fname: str, column: str) -> str | None:
    """The kind :func:`_check_dtypes` expects of ``column`` of ``fname`` (``None``: not read)."""
    from driftwatch.changepoints import BUCKET_METRICS  # (a change-point on any of them is charted)

    if column in _READ_COLUMNS.get(fname, ()) or (fname == "metrics.parquet" and column in BUCKET_METRICS):
        return _COLUMN_KINDS.get(column, "a number")
    return next((kind for pat, kind in _PATTERN_KINDS.get(fname, ()) if pat.fullmatch(column)), None)


#: summary.json keys every audit writes: counts, and objects.
_SUMMARY_COUNTS = ("runs", "rows_in", "rows_valid", "rows_rejected", "changepoints")
_SUMMARY_OBJECTS = ("levels", "window", "loops", "violations", "drift", "cost", "load")


def _text(t: Any) -> bool:
    return isinstance(t, pl.String | pl.Categorical | pl.Enum | pl.Null)


#: What each kind of column may be.
_DTYPE_KINDS: dict[str, Callable[[Any], bool]] = {
    "text": _text,
    "a number": lambda t: t.is_numeric() or isinstance(t, pl.Null),
    "an integer": lambda t: t.is_integer() or isinstance(t, pl.Null),
    "a boolean": lambda t: isinstance(t, pl.Boolean | pl.Null),
    "a time": lambda t: isinstance(t, pl.Datetime | pl.Date | pl.Null),
    "a list of text": lambda t: isinstance(t, pl.Null) or (isinstance(t, pl.List) and _text(t.inner)),
    "a list of numbers": lambda t: isinstance(t, pl.Null) or (
        isinstance(t, pl.List) and (t.inner.is_numeric() or isinstance(t.inner, pl.Null))),
}


def rebuild(folder: str | os.PathLike[str]) -> Path:
    """Re-render ``folder/report.html`` from the results files in ``folder`` (atomic replace)."""
    from driftwatch._io import atomic_write_text, recover_directory
    from driftwatch.errors import CorruptFileError

    res = load_results(folder)
    path = Path(folder) / "report.html"
    recover_directory(path)  # temporary files of a killed rebuild
    try:
        page = render_report(res, summary=res.summary())
    except Exception as exc:  # results edited or written by something else: one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(
            f"{folder}: the results files are not as an audit wrote them ({type(exc).__name__}: {first[:200]}); "
            "rerun the audit to rewrite them"
        ) from None
    atomic_write_text(path, page)
    return path


__all__ = ["load_results", "rebuild", "render_notebook", "render_report"]
