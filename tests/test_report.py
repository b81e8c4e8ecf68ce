"""report.html: self-contained, every section renders in a real headless Chromium, log content is inert."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from driftwatch import synth
from driftwatch.audit import AuditResult, audit
from driftwatch.report import load_results, render_report

pytestmark = pytest.mark.browser

XSS_ACTION = "<script>document.title='pwned'</script>"
XSS_ARGS = "<img src=x onerror=\"document.title='xss'\">"
XSS_AGENT = "agent\"><svg onload=alert(1)>"
SECTIONS = ("summary", "escalated", "loops", "changepoints", "drift", "policy", "costs", "load", "rejected")


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (as root), else the tests skip saying why."""
    path = _find_chromium()
    if path:
        return path
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("headless Chromium is not installed and cannot be installed here (needs root and apt-get): "
                    "apt-get install chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True,
                       timeout=1200, env=env)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"headless Chromium could not be installed with apt-get ({type(exc).__name__}: {exc})")
    path = _find_chromium()
    if not path:
        pytest.skip("apt-get install chromium finished but no chromium binary is on PATH")
    return path


def _chrome(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'chrome-profile'}",
    ]
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def xss_result() -> AuditResult:
    """A small fleet whose logs carry markup in action names, args, agents and results."""
    fleet = synth.generate(days=10, runs_per_day=30, seed=4)
    ev = fleet.events
    # the looping tool of a few period-1 loops gets a markup name (so it shows in patterns, reasons, timelines)
    loops = fleet.truth["loops"].filter(pl.col("period") == 1).head(3)
    assert loops.height > 0
    victims = loops.select("run_id", pl.col("pattern").alias("_a"))
    ev = ev.join(victims, on="run_id", how="left").with_columns(
        pl.when(pl.col("action") == pl.col("_a")).then(pl.lit(XSS_ACTION)).otherwise(pl.col("action")).alias("action"),
        pl.when(pl.col("_a").is_not_null() & (pl.col("action") != "llm")).then(pl.lit(XSS_ARGS))
        .otherwise(pl.col("args")).alias("args"),
        pl.when(pl.col("agent") == "support").then(pl.lit(XSS_AGENT)).otherwise(pl.col("agent")).alias("agent"),
    ).drop("_a")
    # an unapproved destructive call whose name is markup, so it is escalated and shown with reasons
    ev = ev.with_columns(
        pl.when(pl.col("action").str.starts_with("delete_"))
        .then(pl.lit("delete_<b onmouseover=alert(1)>x</b>"))
        .otherwise(pl.col("action"))
        .alias("action")
    )
    return audit(ev)


@pytest.fixture(scope="module")
def page(xss_result: AuditResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("xss") / "report"
    xss_result.write(out)
    return out / "report.html"


def test_page_is_self_contained_and_escaped(page: Path, xss_result: AuditResult) -> None:
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html.lower()
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) is None  # no network fetches
    assert "<img" not in html and "onerror=" not in html.replace("onerror=&quot;", "")
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;document.title=&#x27;xss&#x27;&quot;&gt;" in html
    assert "<svg onload" not in html and "<b onmouseover" not in html
    # the probe really reached the page's data (a loop on the markup-named tool is shown)
    assert xss_result.loops["pattern"].str.contains("<script>", literal=True).any()
    assert "Content-Security-Policy" in html
    assert 'aria-label="cost per run, all runs"' in html and "cost per run None" not in html
    for sec in SECTIONS:
        assert f'<section id="{sec}">' in html, sec


def test_chromium_renders_sections_and_runs_no_script(page: Path, chromium: str, tmp_path: Path) -> None:
    proc = _chrome(chromium, tmp_path, "--dump-dom", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert "<title>driftwatch audit</title>" in dom  # neither 'pwned' nor 'xss': no script ran
    for sec in SECTIONS:
        assert f'id="{sec}"' in dom, sec
    assert dom.count("<svg") >= 10  # charts rendered as inline SVG
    assert "<img" not in dom and "<script" not in dom.lower()
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom  # shown as text

    shot = tmp_path / "report.png"
    proc = _chrome(chromium, tmp_path, "--window-size=1300,2400", f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a real, non-blank page


def test_report_rebuilt_from_the_folder_is_identical(page: Path) -> None:
    res = load_results(page.parent)
    assert render_report(res, summary=res.summary()) == page.read_text()


def test_empty_sections_render(tmp_path: Path) -> None:
    """A tiny clean log: no loops, no breaches, drift skipped; every section still says so."""
    ev = synth.generate(days=1, runs_per_day=12, seed=9, scenario=synth.Scenario.stable()).events
    html = render_report(audit(ev))
    for sec in SECTIONS:
        assert f'<section id="{sec}">' in html
    assert "skipped" in html  # the drift reference note
    assert "rows rejected" in html


def test_top_tables_pick_the_first_rows_of_the_full_order(xss_result: AuditResult, monkeypatch: pytest.MonkeyPatch) -> None:
    """The escalated and worst-loop tables select their top rows without sorting every row; the rows,
    their order and the "showing k of n" note are those of the full sort."""
    from driftwatch import report

    monkeypatch.setattr(report, "MAX_ESCALATED_ROWS", 5)
    html = render_report(xss_result)
    runs = xss_result.runs
    hot = runs.filter(pl.col("level") != "ok").sort(["score", "run_id"], descending=[True, False])
    assert hot.height > 5
    section = html.split('<section id="escalated">')[1].split("</section>")[0]
    table = section.split("<table>")[-1]
    shown = re.findall(r'<td class="mono id">([^<]*)</td>', table)
    assert shown == [report.e(r) for r in hot["run_id"].head(5).to_list()]
    assert f"showing 5 of {hot.height:,} rows" in section
    loops = xss_result.loops
    worst = loops.with_columns((pl.col("kind") == "same_action").alias("_b")).sort(
        ["_b", "wasted_cost_usd", "repeats", "run_id"], descending=[False, True, True, False], nulls_last=True
    )
    section = html.split('<section id="loops">')[1].split("</section>")[0]
    table = section.split("<h3>Worst loops</h3>")[1]
    shown = re.findall(r'<td class="mono id">([^<]*)</td>', table)
    assert shown[: min(25, loops.height)] == [report.e(r) for r in worst["run_id"].head(25).to_list()]
    if loops.height > 25:
        assert f"showing 25 of {loops.height:,} rows" in table


def test_long_logged_text_is_cut_on_the_page(xss_result: AuditResult, tmp_path: Path) -> None:
    """A 200,000-character action name in 40 rows made a 12 MB page: each logged value shows
    its first MAX_TEXT_CHARS characters and how many more there are."""
    from driftwatch.report import MAX_TEXT_CHARS, e

    huge = "<" + "x" * 199_999
    cut = e(huge)
    assert cut.startswith("&lt;" + "x" * (MAX_TEXT_CHARS - 1)) and cut.endswith("… (199,500 more characters)")
    assert e("short <b>") == "short &lt;b&gt;"
    loops = xss_result.loops.with_columns(pl.lit(huge).alias("pattern"))
    long_result = dataclasses.replace(xss_result, loops=loops)
    long_result.write(tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "199,500 more characters" in page
    assert len(page) < len(huge)


def test_control_characters_never_reach_the_page(tmp_path: Path) -> None:
    """A NUL byte in an action name was copied raw into report.html and the notebook view
    (NUL is not allowed in HTML text); control characters now show as U+FFFD."""
    from driftwatch.report import e

    assert e("a\x00b\x0cc\x7fd\te\nf<") == "a\ufffdb\ufffdc\ufffdd\te\nf&lt;"
    # a right-to-left override reversed the figures after it on the same line of the page
    assert e("research\u202e cost 0.148 \u2066x\u2069") == "research[U+202E] cost 0.148 [U+2066]x[U+2069]"
    ev = pl.DataFrame({"run_id": "r", "step": [1, 2, 3, 4, 5], "action": ["plan"] + ["nul\x00tool"] * 4,
                       "args": "q", "result": "same"})
    res = audit(ev)
    assert res.loops["pattern"].to_list() == ["nul\x00tool"]  # the data keep the byte
    res.write(tmp_path / "r")
    for html in ((tmp_path / "r" / "report.html").read_text(), res._repr_html_()):
        assert "\x00" not in html and "nul\ufffdtool" in html


def test_rebuild_refuses_incomplete_or_foreign_results(tmp_path: Path) -> None:
    """A rebuild without violations.parquet said "No policy breach." beside a summary of 49;
    edited files gave "unexpected error ... please report it". Both are one clear error now;
    a killed rebuild's temporary file is cleared by the next."""
    import json

    from driftwatch.errors import CorruptFileError, NoInputError
    from driftwatch.report import rebuild

    fleet = synth.generate(days=3, runs_per_day=40, seed=2)
    good = tmp_path / "good"
    audit(fleet.events).write(good)
    page = (good / "report.html").read_text()

    def damaged(name: str, damage) -> Path:  # noqa: ANN001
        d = tmp_path / name
        shutil.copytree(good, d)
        damage(d)
        return d

    cases = {
        "no_violations": (lambda d: (d / "violations.parquet").unlink(), r"violations.parquet: missing from"),
        "no_runs": (lambda d: (d / "runs.parquet").unlink(), r"runs.parquet: missing from"),
        # every file an audit writes (a probe found "no load rows" drawn without load.parquet)
        "no_load": (lambda d: (d / "load.parquet").unlink(), r"load.parquet: missing from"),
        "no_delegation": (lambda d: (d / "delegation.parquet").unlink(), r"delegation.parquet: missing from"),
        "no_costs": (lambda d: (d / "costs.parquet").unlink(), r"costs.parquet: missing from"),
        "summary_list": (lambda d: (d / "summary.json").write_text("[]"), "not an audit summary"),
        "levels_null": (lambda d: (d / "summary.json").write_text(json.dumps({"levels": None})), "not an audit summary"),
        "runs_cut": (lambda d: pl.read_parquet(d / "runs.parquet").select("run_id", "level")
                     .write_parquet(d / "runs.parquet"), r"lacks column\(s\) \['agent', 'score', 'reasons', 'n_steps', 'cost_usd'\]"),
        "loops_text": (lambda d: pl.read_parquet(d / "loops.parquet").with_columns(pl.col("wasted_steps").cast(pl.String))
                       .write_parquet(d / "loops.parquet"), "not as an audit wrote them"),
        # '{}' drew "0 runs" above "34 runs at review or escalate", exit 0
        "summary_empty": (lambda d: (d / "summary.json").write_text("{}"),
                          r"summary.json: not an audit summary as an audit wrote it \(runs is missing"),
        "summary_text_count": (lambda d: _edit_summary(d, runs="559"), r"runs is \"559\", expected a count"),
        "summary_levels_moved": (lambda d: _edit_summary(d, levels=_moved(d)), r"levels .* are not those of runs.parquet"),
        "summary_runs_off": (lambda d: _edit_summary(d, runs=_summary(d)["runs"] + 1), "levels sum to"),
        "summary_loops_off": (lambda d: _edit_summary(d, loops={**_summary(d)["loops"], "total": 0}),
                              r"says 0 rows of loops.parquet but the file holds"),
        "no_alerts": (lambda d: (d / "alerts.jsonl").unlink(), r"alerts.jsonl: missing from"),
        "alerts_cut": (lambda d: (d / "alerts.jsonl").write_text(
            "".join((d / "alerts.jsonl").read_text().splitlines(keepends=True)[1:])), r"alerts.jsonl: holds \d+ lines for"),
        # reasons as text was drawn as one <li> per character
        "reasons_text": (lambda d: pl.read_parquet(d / "runs.parquet").with_columns(pl.col("reasons").list.join("; "))
                         .write_parquet(d / "runs.parquet"), r"runs.parquet: columns not as an audit wrote them "
                                                             r"\(reasons is String, expected a list of text\)"),
    }
    for name, (damage, message) in cases.items():
        d = damaged(name, damage)
        with pytest.raises(CorruptFileError, match=message):
            rebuild(d)
    with pytest.raises(NoInputError, match="nope: no such folder"):
        rebuild(tmp_path / "nope")
    # older folders without the extra files still rebuild
    old = damaged("old", lambda d: [(d / f).unlink() for f in ("examples.parquet", "metrics.parquet")])
    assert rebuild(old).is_file()
    # a killed rebuild's temporary file is cleared, and the page is the audit's own
    (good / ".report.html.tmp-999999-00ff00ff").write_text("half")
    rebuild(good)
    assert not list(good.glob(".report.html.tmp-*")) and (good / "report.html").read_text() == page


def _summary(d: Path) -> dict:
    import json

    return json.loads((d / "summary.json").read_text())


def _edit_summary(d: Path, **changes: object) -> None:
    import json

    (d / "summary.json").write_text(json.dumps({**_summary(d), **changes}))


def _moved(d: Path) -> dict:
    """The summary's levels with one run moved from ok to escalate (the sum still matches)."""
    levels = dict(_summary(d)["levels"])
    levels["ok"] -= 1
    levels["escalate"] += 1
    return levels


def test_c1_controls_never_reach_the_page_or_split_an_alert(tmp_path: Path) -> None:
    """U+0085 (NEL) and the other C1 controls passed raw into alerts.jsonl (str.splitlines() split
    one alert in two unparseable lines) and into report.html (README: control characters show as
    U+FFFD)."""
    import json

    from driftwatch.report import e

    assert e("a\x85b\x9bc\x80d\x9fe\xa0f") == "a\ufffdb\ufffdc\ufffdd\ufffde\xa0f"  # (NBSP is text)
    ev = synth.generate(days=2, runs_per_day=40, seed=3).events
    ev = ev.with_columns((pl.lit("ag\u0085ent\u009b\u2028\x7f") + pl.col("agent")).alias("agent"))
    res = audit(ev)
    res.write(tmp_path / "r")
    text = (tmp_path / "r" / "alerts.jsonl").read_text(encoding="utf-8")
    assert text and text.count("\n") == len(text.splitlines())
    alerts = [json.loads(line) for line in text.splitlines()]
    assert alerts[0]["agent"].startswith("ag\u0085ent\u009b\u2028\x7f")  # the value is kept, escaped
    assert "\\u0085" in text and "\\u009b" in text and "\\u2028" in text and "\\u007f" in text
    for html in ((tmp_path / "r" / "report.html").read_text(encoding="utf-8"), res._repr_html_()):
        assert not {c for c in html if 0x7F <= ord(c) <= 0x9F}
        assert "ag\ufffdent\ufffd" in html


def test_small_amounts_and_long_series_names_stay_readable() -> None:
    from driftwatch.report import _hbars, money

    assert money(0.00043) == "$0.00043" and money(0.0049) == "$0.0049" and money(0.012) == "$0.012"
    assert money(0.0) == "$0.000" and money(4.3e-7) == "$4.3e-07" and money(12.5) == "$12.50"
    names = ["agent=research,version=gpt-4o-2024-08-06", "agent=research,version=gpt-4o-2024-11-20"]
    svg = _hbars([(n, [("loops", 1.0, "#000")]) for n in names])
    labels = re.findall(r"</title>([^<]*)</text>", svg)
    assert len(labels) == 2 and len(set(labels)) == 2 and all(len(x) <= 28 for x in labels)
    assert all(f"<title>{n}</title>" in svg for n in names)  # the whole name on hover


def test_spend_by_cause_draws_each_cause_without_a_sum(tmp_path: Path) -> None:
    """The causes overlap: one bar per cause and its own share, never their sum."""
    from driftwatch.report import _hbars

    parts = [("loops", 20.0, "#111"), ("errors", 10.0, "#222"), ("retries", 5.0, "#333")]
    side = _hbars([("all", parts)], value_fmt=lambda v: f"{v:.1f}%", stacked=False)
    assert re.findall(r">(\d+\.\d%)</text>", side) == ["20.0%", "10.0%", "5.0%"]
    assert "35.0%" not in side
    stacked = _hbars([("all", parts)], value_fmt=lambda v: f"{v:.1f}%")
    assert "35.0%" in stacked  # (counts that do add up keep their total)
    ev = synth.generate(days=2, runs_per_day=60, seed=3).events
    html = render_report(audit(ev))
    costs = html[html.index('<section id="costs">'):]
    costs = costs[:costs.index("</section>")]
    chart = costs[costs.index("Spend by cause"):]
    assert "one bar per cause" in chart
    assert re.search(r"runs/day \(the rate over the 4\d\.\d hours the runs cover\)", html)


def test_truncated_timeline_says_so_and_window_text_is_exact(tmp_path: Path) -> None:
    """A run longer than the steps kept for its timeline says how many it has; the window
    sentence gives the first start and the last event, and the --since/--until window."""
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
    n = 1000
    long_run = pl.DataFrame({
        "run_id": "long", "step": range(1, n + 1), "ts": [t0 + timedelta(seconds=i) for i in range(n)],
        "action": ["search"] * n, "args": ["q"] * n, "result": ["none"] * n, "cost_usd": 0.01,
    }).with_columns(pl.col("step").cast(pl.Int64))
    short = pl.DataFrame({"run_id": "short", "step": [1, 2], "ts": [t0, t0 + timedelta(seconds=5)],
                          "action": ["llm", "search"], "args": ["a", "b"], "result": ["x", "y"], "cost_usd": 0.01})
    ev = pl.concat([long_run, short], how="diagonal_relaxed")
    html = render_report(audit(ev))
    assert "the first 400 of 1,000 steps" in html
    assert "first start, 2026-03-02 09:00:00, to their last event, 2026-03-02 09:16:39" in html
    windowed = render_report(audit(ev, since="2026-03-02T09:00:00", until="2026-03-03"))
    assert "Audited: the runs starting at or after 2026-03-02 09:00:00 and before 2026-03-03" in windowed


def test_feedback_highlight_explains_the_strongest_row_once() -> None:
    from driftwatch.report import _highlights

    drift = pl.DataFrame({
        "series": ["agent=planner", "agent=planner"], "feature": ["feedback_outcome_gap"] * 2,
        "window_start": [1, 2], "p_value": [1e-5, 1e-90], "statistic": [3.0, 40.0], "drifted": [True, True],
        "explain": ["agent=planner: feedback holds while outcome falls, feedback 0.69 -> 0.75",
                    "agent=planner: feedback holds while outcome falls, feedback 0.69 -> 1.00"],
    })
    result = dataclasses.make_dataclass("R", [("drift", pl.DataFrame)])(drift)
    (text,) = _highlights(result, {})
    assert text.count("agent=planner") == 2 and "0.69 -&gt; 1.00" in text and "0.75" not in text


def test_observed_rate_names_its_period_at_its_scale() -> None:
    """80 seconds of runs read 'the rate over the 0.0 hours the runs cover'."""
    from driftwatch.report import _observed_rate

    def said(days: float, given: float | None = None) -> str:
        rate = 20 / days
        return _observed_rate({"observed_days": days, "runs_per_day": rate, "volume_per_day": given or rate})

    assert said(80 / 86_400) == " (the rate over the 80 seconds the runs cover)"
    assert said(45 * 60 / 86_400) == " (the rate over the 45 minutes the runs cover)"
    assert said(0.5) == " (the rate over the 12.0 hours the runs cover)"
    assert said(14.0) == " (the rate over the 14.0 days the runs cover)"
    assert said(14.0, given=5000) == ""  # a volume given to the audit: not an observed rate
    assert _observed_rate({"observed_days": None, "runs_per_day": None, "volume_per_day": 5.0}) == ""


def test_loop_groups_without_a_known_cost_show_no_dollar_zero() -> None:
    """Logs without cost: the loops-by-kind table said $0 wasted where loops.parquet (and every
    other figure on the page) said unknown."""
    from driftwatch.report import _section_loops

    loops = pl.DataFrame({"run_id": ["a", "b", "c"], "agent": ["x", "x", "y"], "kind": ["exact"] * 3,
                          "pattern": ["s"] * 3, "repeats": [3, 4, 3], "wasted_steps": [2, 3, 2],
                          "wasted_cost_usd": pl.Series([None, None, 0.5], dtype=pl.Float64)})
    result = dataclasses.make_dataclass("R", [("loops", pl.DataFrame)])(loops)
    html = _section_loops(result)
    table = html[:html.index("<h3>Worst loops</h3>")]
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", table)]
    assert [r for r in rows if r] == [["x", "exact", "2", "2", "5", "–"], ["y", "exact", "1", "1", "2", "0.5"]]


def test_drift_windows_shorter_than_a_day_show_their_times() -> None:
    """12h drift windows read as dates only ("2026-10-02 – 2026-10-02"): alternating whole days
    and empty ranges, with no way to tell which half-day drifted."""
    from datetime import UTC, datetime

    from driftwatch.report import _section_drift

    def page(starts: list[datetime], ends: list[datetime]) -> str:
        drift = pl.DataFrame({"series": ["agent=a"] * len(starts), "window_start": starts, "window_end": ends,
                              "feature": ["action_entropy"] * len(starts), "drifted": [True] * len(starts),
                              "explain": ["x"] * len(starts), "method": ["ks"] * len(starts)})
        return _section_drift(dataclasses.make_dataclass("R", [("drift", pl.DataFrame)])(drift))

    d = [datetime(2026, 10, 1, h, tzinfo=UTC) for h in (0, 12)] + [datetime(2026, 10, 2, tzinfo=UTC)]
    assert "2026-10-01 12:00Z – 2026-10-02 00:00Z" in page(d[1:2], d[2:3])
    assert "2026-10-01 00:00Z – 2026-10-01 12:00Z" in page(d[:2], d[1:])
    assert "2026-10-01 – 2026-10-02" in page(d[:1], d[2:]) and "00:00Z" not in page(d[:1], d[2:])


def test_load_section_says_when_it_draws_only_some_knees() -> None:
    from driftwatch.report import _section_load

    n = 14
    load = pl.DataFrame({
        "series": ["all"] * n, "metric": [f"m{i}" for i in range(n)], "load_kind": ["started"] * n,
        "knee": [4.0] * n, "below": [0.1] * n, "above": [0.3] * n, "ratio": [3.0] * n, "p_value": [0.001] * n,
        "curve_load": [[1.0, 2.0, 6.0]] * n, "curve_value": [[0.1, 0.1, 0.3]] * n, "curve_buckets": [[5, 5, 5]] * n,
    })
    html = _section_load(dataclasses.make_dataclass("R", [("load", pl.DataFrame)])(load))
    assert "showing the first 12 of 14 knees" in html
    assert "showing the first" not in _section_load(dataclasses.make_dataclass("R", [("load", pl.DataFrame)])(
        load.head(12)))


def test_an_incremental_audit_says_what_its_figures_cover() -> None:
    """An incremental audit's page gave this night's runs and window next to the history's profile
    and its days ("the rate over the 29.9 days the runs cover") without a word on which is which."""
    from driftwatch.report import _incremental_note, _observed_rate

    summary = {"incremental": True, "runs": 748, "history_since": "2026-07-23T01:19:27+00:00",
               "cost": {"profile_runs": 2214}}
    note = _incremental_note(summary)
    assert "this audit&#x27;s 748 runs" in note or "this audit's 748 runs" in note
    assert "history since 2026-07-23 01:19:27 (UTC), 2,214 runs" in note
    assert _incremental_note({"runs": 5}) == ""
    cost = {"observed_days": 29.9, "runs_per_day": 74.1, "volume_per_day": 74.1}
    assert _observed_rate(cost, history=True) == " (the rate over the 29.9 days this audit's runs and the history's cover)"


def test_changes_are_counted_once_and_the_notebook_charts_the_strongest_first() -> None:
    """One change moves several metrics, a row each: the highlights name each change once, and
    the notebook's few charts are the strongest changes, not the first series by name."""
    from datetime import UTC, datetime, timedelta

    from driftwatch.cli import _changes
    from driftwatch.report import _changepoint_charts, _highlights, _n_changes

    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    buckets = [t0 + timedelta(days=d) for d in range(10)]
    metrics = pl.DataFrame({
        "series": [s for s in ("agent=a", "agent=b", "agent=c") for _ in buckets],
        "bucket": buckets * 3,
        "steps_mean": [float(d > 5) for d in range(10)] * 3,
        "cost_per_run": [float(d > 5) for d in range(10)] * 3,
        "error_rate": [float(d > 5) for d in range(10)] * 3,
    })
    cps = pl.DataFrame({
        "series": ["agent=a", "agent=a", "agent=b", "agent=c", "agent=c", "agent=c"],
        "metric": ["steps_mean", "cost_per_run", "error_rate", "cost_per_run", "steps_mean", "error_rate"],
        "ts": [buckets[6]] * 6, "before": [0.0] * 6, "after": [1.0] * 6,
        "score": [3.0, 2.0, 7.5, 9.0, 8.0, 7.0], "rank": [1, 2, 1, 1, 2, 3],
        "metrics_moved": [["steps_mean", "cost_per_run"]] * 2 + [["error_rate"]]
        + [["cost_per_run", "steps_mean", "error_rate"]] * 3,
    })
    charts = _changepoint_charts(metrics, cps, only_with_changes=True, strongest_first=True)
    titles = [re.search(r'class="t">([^<]*)<', c).group(1) for c in charts]
    # (by strength across series: agent=b's one change, 7.5, before agent=c's third metric, 7.0)
    assert titles == ["agent=c · cost_per_run", "agent=c · steps_mean", "agent=b · error_rate",
                      "agent=c · error_rate", "agent=a · steps_mean", "agent=a · cost_per_run"]
    result = dataclasses.make_dataclass("R", [("changepoints", pl.DataFrame)])(cps)
    (text,) = _highlights(result, {})
    assert text.count("agent=") == 3 and "(+2 more metrics)" in text and "(+1 more metric)" in text
    assert text.index("agent=c") < text.index("agent=b") < text.index("agent=a")
    summary = {"changepoints": 6, "changepoint_changes": 3}
    assert _n_changes(summary) == 3 and _n_changes({"changepoints": 6}) == 6
    assert _changes(summary) == "3 (6 metric rows)" and _changes({"changepoints": 2, "changepoint_changes": 2}) == "2"


@pytest.mark.parametrize(("name", "matched"), [("nightly[prod]", "nightlyp"), ("res*star", "res-star"),
                                              ("res?q", "resAq"), ("[x]", "x")])
def test_a_results_folder_whose_path_holds_glob_characters_is_redrawn(
    page: Path, tmp_path: Path, name: str, matched: str
) -> None:
    """`driftwatch report 'nightly[prod]'` refused a valid results folder ("runs.parquet: not
    readable Parquet (ComputeError)"): each file was read as a glob pattern (which a folder
    beside it, ``matched``, also matches)."""
    from driftwatch.report import rebuild

    d = tmp_path / name
    shutil.copytree(page.parent, d)
    other = shutil.copytree(page.parent, tmp_path / matched)
    pl.read_parquet(other / "runs.parquet").head(3).write_parquet(other / "runs.parquet")  # (not these results)
    assert rebuild(d) == d / "report.html"
    assert (d / "report.html").read_text() == page.read_text()


def test_the_timeline_header_shows_the_score_cut_as_the_table_does() -> None:
    """A review run at 0.69977 read "review score 0.7" above its timeline (the escalate
    threshold) while the table beside it said 0.699 and alerts.jsonl 0.6997."""
    from datetime import UTC, datetime

    from driftwatch.report import _section_escalated

    runs = pl.DataFrame({"run_id": ["r1"], "agent": ["a"], "level": ["review"], "score": [0.69977],
                         "reasons": [["retries"]], "n_steps": [3], "cost_usd": [0.1],
                         "first_ts": [datetime(2026, 1, 1, tzinfo=UTC)]})
    examples = pl.DataFrame({"run_id": ["r1"] * 3, "step": [1, 2, 3], "action": ["llm", "search", "search"]})
    result = dataclasses.make_dataclass("R", [("runs", pl.DataFrame), ("examples", pl.DataFrame)])(runs, examples)
    html = _section_escalated(result)
    assert re.findall(r"</span> score ([0-9.]+) ·", html) == ["0.699"]
    assert "<td>0.699</td>" in html and "0.7 " not in html


def _filled(name: str, frame: pl.DataFrame, series: str) -> pl.DataFrame:
    """``frame`` itself, or for an empty one two rows of its schema (so each section draws)."""
    from datetime import UTC, datetime

    if frame.height:
        return frame
    special = {"feature": "action_entropy", "metric": "steps_mean", "series": series, "drifted": True,
               "rank": 1, "reason": "bad_ts", "kind": "exact"}

    def value(col: str, dtype: pl.DataType, i: int) -> object:
        if col in special:
            return special[col]
        if isinstance(dtype, pl.List):
            return [value(col, dtype.inner, i)]
        if isinstance(dtype, pl.Datetime):
            return datetime(2026, 1, 1 + i, tzinfo=UTC)
        if dtype == pl.Boolean:
            return bool(i)
        if dtype.is_integer():
            return i + 1
        if dtype.is_numeric():
            return 0.25 + i
        return f"{name}-{col}-{i}"

    return pl.DataFrame({c: [value(c, t, i) for i in range(2)] for c, t in frame.schema.items()},
                        schema=frame.schema)


def test_every_column_the_page_reads_is_checked(page: Path) -> None:
    """A results file with a column of another type was drawn (runs.parquet cost_usd as text, exit
    0) or refused naming only the folder (drift.parquet window_start as text). Every column the
    page reads is declared with its kind: dropping all the others leaves the page the same, and
    each declared one, of another type, is refused naming the file and the column."""
    from driftwatch.audit import CONTRACT_FILES, EXTRA_FILES
    from driftwatch.errors import CorruptFileError
    from driftwatch.report import _check_dtypes, _kind_of, load_results

    res = load_results(page.parent)
    series = res.metrics["series"][0]
    names = [f for f in CONTRACT_FILES + EXTRA_FILES if f.endswith(".parquet")]
    for fname in names:
        attr = fname.removesuffix(".parquet")
        setattr(res, attr, _filled(attr, getattr(res, attr), series))
    # (a knee, so that a load chart is drawn from its curve)
    res.load = res.load.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(4.0)).otherwise("knee").alias("knee"))
    whole = render_report(res, summary=res.summary())
    assert ' vs load"' in whole and "Feedback-driven indicators, every window" in whole and "All change-points" in whole
    for fname in names:
        attr = fname.removesuffix(".parquet")
        frame = getattr(res, attr)
        read = [c for c in frame.columns if _kind_of(fname, c) is not None]
        setattr(res, attr, frame.select(read))
        assert render_report(res, summary=res.summary()) == whole, f"{fname}: the page reads a column not checked"
        setattr(res, attr, frame)
        for col in read:
            wrong = pl.lit(1) if _kind_of(fname, col) == "text" else pl.lit("x")
            with pytest.raises(CorruptFileError, match=rf"{re.escape(fname)}: columns not as an audit wrote them "
                                                       rf"\({re.escape(col)} is (Int32|String), expected"):
                _check_dtypes(frame.with_columns(wrong.alias(col)), page.parent / fname, fname)


@pytest.mark.parametrize(("fname", "damage", "said"), [
    ("drift.parquet", lambda d: d.with_columns(pl.col("window_start").cast(pl.String)), "window_start is String, expected a time"),
    ("examples.parquet", lambda d: d.drop("action"), r"lacks column\(s\) \['action'\]"),
    ("metrics.parquet", lambda d: d.with_columns(pl.col("bucket").cast(pl.String)), "bucket is String, expected a time"),
    ("costs.parquet", lambda d: d.with_columns(pl.col("runs_with_cost").cast(pl.String)),
     "runs_with_cost is String, expected an integer"),
    ("runs.parquet", lambda d: d.with_columns(pl.col("cost_usd").cast(pl.String)), "cost_usd is String, expected a number"),
    ("runs.parquet", lambda d: d.with_columns(pl.col("first_ts").cast(pl.String)), "first_ts is String, expected a time"),
    ("metrics.parquet", lambda d: d.with_columns(pl.col("top1_tool").cast(pl.Categorical).to_physical()),
     "top1_tool is UInt32, expected text"),
])
def test_a_wrongly_typed_column_is_refused_naming_the_file_and_the_column(
    page: Path, tmp_path: Path, fname: str, damage: Callable[[pl.DataFrame], pl.DataFrame], said: str
) -> None:
    """README: a folder with a file not as an audit wrote it is refused with the file's name (exit
    2); these were refused naming only the folder, or drawn with exit 0."""
    from driftwatch.cli import main
    from driftwatch.errors import CorruptFileError
    from driftwatch.report import rebuild

    d = tmp_path / "r"
    shutil.copytree(page.parent, d)
    damage(pl.read_parquet(d / fname)).write_parquet(d / fname)
    with pytest.raises(CorruptFileError, match=rf"{re.escape(str(d / fname))}: .*{said}"):
        rebuild(d)
    assert main(["report", str(d)]) == 2


def test_the_worst_run_headline_says_when_it_is_a_lower_bound() -> None:
    """The cost headline said "the worst run of such a day costs about $X" when summary.json's
    figure was a lower bound (the tail capped at the runs observed)."""
    from driftwatch.report import _highlights

    cost = {"projected_daily_usd": 120.0, "volume_per_day": 1000.0, "projected_daily_lo": 100.0,
            "projected_daily_hi": 140.0, "worst_run_expected_usd": 12.5, "p99_over_p50": 8.0}
    result = dataclasses.make_dataclass("R", [])()

    def said(**extra: object) -> str:
        (text,) = _highlights(result, {"runs": 10, "cost": {**cost, **extra}})
        return text

    assert "the worst run of such a day costs at least $12.50;" in said(worst_run_method="empirical_capped")
    # (the fleet's figure raised to its series' largest: a day of the fleet costs at least that)
    assert "the worst run of such a day costs at least $12.50;" in said(worst_run_method="series_max")
    assert "the worst run of such a day costs about $12.50;" in said(worst_run_method="pareto_tail")
    assert "the worst run of such a day costs about $12.50;" in said()  # (an older summary)
