"""Policy files and policy checks: hand-built cases per rule, TOML errors with lines, generated fleets."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import driftwatch as dw
from driftwatch.errors import InvalidParameterError, PolicyError
from driftwatch.policy import (
    RULES,
    VIOLATION_SCHEMA,
    Policy,
    check_delegation,
    check_policy,
    glob_to_regex,
)

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def run(run_id: str, actions: list[str], **cols: list) -> pl.DataFrame:
    """One run: steps 1..n, one second apart, plus any extra canonical columns."""
    n = len(actions)
    data: dict = {
        "run_id": [run_id] * n,
        "step": list(range(1, n + 1)),
        "ts": [T0 + timedelta(seconds=i) for i in range(n)],
        "action": actions,
        "agent": [cols.pop("agent", "billing")] * n,
    }
    data.update(cols)
    return pl.DataFrame(data)


def rules(v: pl.DataFrame) -> list[tuple[str, int | None, str]]:
    return list(zip(v["run_id"], v["step"], v["rule"], strict=True))


# --------------------------------------------------------------------------- Policy


def test_defaults_are_documented_values() -> None:
    p = Policy()
    assert (p.max_steps, p.max_consecutive_retries, p.max_runtime_s, p.max_cost_usd, p.max_tokens) == (
        50, 3, 300.0, 0.5, 200_000,
    )
    assert p.max_delegation_depth == 3
    assert p.require_approval == ("delete",)
    assert (p.review, p.escalate, p.min_confidence) == (0.4, 0.7, 0.3)
    assert dw.Policy is Policy


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"review": 0.8, "escalate": 0.5}, "review < escalate"),
        ({"review": 0.7, "escalate": 0.7}, "review < escalate"),
        ({"escalate": 1.5}, r"escalate must be a number in \[0, 1\]"),
        ({"min_confidence": -0.1}, "min_confidence"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"max_steps": 2.5}, "max_steps must be an integer"),
        ({"max_cost_usd": -1}, "max_cost_usd must be > 0"),
        ({"require_approval": ("delete", "admin")}, r"unknown tier\(s\) \['admin'\]"),
        ({"allowed": "search"}, "allowed must be a list"),
        ({"delete": ("",)}, "non-empty glob"),
    ],
)
def test_policy_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        Policy(**kwargs)


@pytest.mark.parametrize(
    ("action", "tier"),
    [
        ("delete_record", "delete"),
        ("purgeCache", "delete"),
        ("DROP_TABLE", "delete"),
        ("records.remove", "delete"),
        ("send_email", "write"),
        ("update_ticket", "write"),
        ("refund_payment", "write"),
        ("deploy", "write"),
        ("get_posts", "read"),  # "post" is a word of the write tier, "posts" is not
        ("search_web", "read"),
        ("undeleted_items", None),
        ("summarize", None),
        ("llm", None),
        ("handoff:billing", None),
    ],
)
def test_default_tiers_from_action_words(action: str, tier: str | None) -> None:
    assert Policy().tier_of(action) == tier


def test_tool_globs_replace_default_words() -> None:
    p = Policy(delete=("delete_*", "refund*"), write=("update_*",))
    assert p.tier_of("refund_payment") == "delete"
    assert p.tier_of("purge_cache") is None  # globs given: words no longer apply
    assert p.tier_of("update_invoice") == "write"
    assert p.tier_of("send_email") is None
    assert p.tier_of("search") == "read"  # read left to the built-in words


@pytest.mark.parametrize(
    ("glob", "yes", "no"),
    [
        ("get_*", ["get_x", "get_"], ["xget_x", "Get_x"]),
        ("a?c", ["abc"], ["ac", "abbc"]),
        ("del[ae]te", ["delete", "delate"], ["delite"]),
        ("x[!0-9]", ["xa"], ["x1"]),
        ("a.b+c", ["a.b+c"], ["aXb+c", "a.bbc"]),
    ],
)
def test_glob_to_regex(glob: str, yes: list[str], no: list[str]) -> None:
    import re

    rx = re.compile("^(?:" + glob_to_regex(glob) + ")$")
    assert all(rx.match(s) for s in yes)
    assert not any(rx.match(s) for s in no)


def test_globs_mean_what_fnmatch_means_in_polars_and_python() -> None:
    """Classes with a literal bracket (``tool[[]v2]``, ``x[]]y``) made Rust's regex parser fail
    inside check_policy, and ``&&`` / ``--`` in a class were Rust set operations. 2,000 random
    globs over the awkward characters, against fnmatch.fnmatchcase."""
    import fnmatch
    import random
    import re

    rng = random.Random(5)
    names = ["".join(rng.choice("ab[]!-^&~\\") for _ in range(rng.randint(0, 4))) for _ in range(300)]
    names += ["tool[v2]", "x]y", "tool_a", "tool_&", "tool_b"]
    globs = ["".join(rng.choice("ab[]!-^&~\\*?") for _ in range(rng.randint(1, 6))) for _ in range(2000)]
    # (fnmatch reads a leading ^ in a class as a member; driftwatch, as bash did before, as a negation:
    # those globs are compared with their [! spelling below)
    globs = [g for g in globs if "[^" not in g]
    globs += ["tool[[]v2]", "x[]]y", "x[!]]y", "tool_[a&&b]", "tool_[a--b]", "[[:alpha:]]*"]
    for caret, bang in (("x[^0-9]", "x[!0-9]"), ("[^]]a", "[!]]a"), ("a[^b-]", "a[!b-]")):
        rx = "^(?:" + glob_to_regex(caret) + ")$"
        assert [re.match(rx, x) is not None for x in names] == [fnmatch.fnmatchcase(x, bang) for x in names]
    for g in globs:
        rx = "^(?:" + glob_to_regex(g) + ")$"
        expected = [fnmatch.fnmatchcase(x, g) for x in names]
        assert pl.Series(names).str.contains(rx).to_list() == expected, g
        assert [re.match(rx, x) is not None for x in names] == expected, g
    ev = pl.DataFrame({"run_id": ["r", "r"], "step": [1, 2], "action": ["tool[v2]", "x]y"]})
    assert check_policy(ev, Policy(allowed=("tool[[]v2]", "x[]]y"))).is_empty()


FULL_TOML = """\
# example policy
[limits]            # stop conditions
max_steps = 40
max_consecutive_retries = 2
max_runtime_s = 120
max_cost_usd = 0.25          # per run, retries included
max_tokens = 100000
max_delegation_depth = 2
[tools]
read   = ["search*", "get_*", "read_*", "list_*"]
write  = ["update_*", "send_*", "edit_*"]
delete = ["delete_*", "drop_*", "refund*"]
require_approval = ["delete", "write"]
allowed = []
[escalation]
review = 0.35
escalate = 0.65
min_confidence = 0.25
"""


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_from_toml_reads_every_key(tmp_path: Path) -> None:
    p = Policy.from_toml(write(tmp_path, FULL_TOML))
    assert p.max_steps == 40 and p.max_runtime_s == 120.0 and isinstance(p.max_runtime_s, float)
    assert p.max_cost_usd == 0.25 and p.max_tokens == 100_000 and p.max_delegation_depth == 2
    assert p.delete == ("delete_*", "drop_*", "refund*")
    assert p.require_approval == ("delete", "write")
    assert (p.review, p.escalate, p.min_confidence) == (0.35, 0.65, 0.25)
    assert p.source == str(tmp_path / "policy.toml")
    assert Policy.from_toml(str(tmp_path / "policy.toml")) == p


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert Policy.from_toml(write(tmp_path, "# nothing\n")) == Policy()


def test_to_toml_round_trip(tmp_path: Path) -> None:
    p = Policy(max_steps=80, max_tokens=None, allowed=("search", 'we"ird*'), delete=("rm_*",),
               require_approval=("delete", "write"), review=0.3, model="m.pkl")
    text = p.to_toml(tmp_path / "out.toml")
    assert "max_tokens = false" in text
    back = Policy.from_toml(tmp_path / "out.toml")
    assert back == p
    assert Policy.from_toml_text(Policy().to_toml()) == Policy()


def test_false_disables_a_limit(tmp_path: Path) -> None:
    p = Policy.from_toml(write(tmp_path, "[limits]\nmax_cost_usd = false\nmax_steps = false\n"))
    assert p.max_cost_usd is None and p.max_steps is None
    ev = run("r", ["llm"] * 60, cost_usd=[1.0] * 60)
    assert check_policy(ev, p).height == 0


def _toml_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    """The policy file holding ``text``, and the PolicyError its reading raises."""
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        Policy.from_toml(path)
    return path, str(info.value)


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("[limits]\nmax_steps = 3\nmax_stepz = 4\n", 3, "unknown key 'max_stepz' in [limits]"),
        ("[limits]\nmax_steps = 3\n\n[tools]\nallowed = [\"a\"]\nforbidden = [\"b\"]\n", 6, "'forbidden'"),
        ("[limits]\nmax_steps = \"fifty\"\n", 2, "[limits] max_steps must be an integer"),
        ("[limits]\nmax_steps = true\n", 2, "max_steps must be an integer"),
        ("[limits]\nmax_cost_usd = \"1\"\n", 2, "max_cost_usd must be a number"),
        ("[tools]\n\n\nallowed = \"search\"\n", 4, "allowed must be a list of strings"),
        ("[tools]\nrequire_approval = [\"delete\", 3]\n", 2, "require_approval must be a list of strings"),
        ("# c\n[escalation]\nreview = \"high\"\n", 3, "review must be a number"),
        ("[limits]\nmax_steps = 3\n[limitz]\nmax_steps = 3\n", 3, "unknown table [limitz]"),
        ("limits.max_steps = \"x\"\n", 1, "max_steps must be an integer"),
        ("limits = { max_steps = 1, max_tokens = \"x\" }\n", 1, "max_tokens must be an integer"),
        ("[escalation]\nescalate = 0.5\n\nreview = 0.6\n", 2, "review < escalate"),
        ("[escalation]\nreview = 0\n", 2, "0 < review < escalate"),
        ("[escalation]\nmin_confidence = 2\n", 2, "min_confidence"),
        ("[tools]\nrequire_approval = [\"admin\"]\n", 2, "unknown tier"),
        ("[limits]\nmax_steps = 0\n", 2, "max_steps must be >= 1"),
        ("# c\ntop = 1\n", 2, "unknown top-level key 'top'"),
        ("[limits]\nmax_steps = 3\n\n[[tools]]\nallowed = []\n", 4, "'tools' must be a table"),
        ("[escalation]\nreview = 0.4\n\n\n[escalation.per_agent]\nbilling = 0.5\n", 5, "unknown key 'per_agent'"),
    ],
)
def test_toml_errors_name_key_and_line(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path, msg = _toml_error(tmp_path, text)
    assert f"line {line}:" in msg, msg
    assert needle in msg, msg
    assert str(path) in msg


def test_invalid_toml_reports_file_and_parser_message(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_steps = = 3\n")
    with pytest.raises(PolicyError, match=r"policy\.toml: invalid TOML: .*line 2"):
        Policy.from_toml(path)


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot be read"):
        Policy.from_toml(tmp_path / "nope.toml")
    assert issubclass(PolicyError, dw.DriftwatchError)
    # an empty path (--policy "$UNSET") was read as the current folder: "cannot be read (Is a directory: '.')"
    for empty in ("", " "):
        with pytest.raises(PolicyError, match="policy file path is empty; expected a TOML file"):
            Policy.from_toml(empty)


def test_model_path_resolves_next_to_the_policy(tmp_path: Path) -> None:
    p = Policy.from_toml(write(tmp_path, "[escalation]\nmodel = \"esc.pkl\"\n"))
    assert p.model_path() == tmp_path / "esc.pkl"
    assert Policy().model_path() is None


# --------------------------------------------------------------------------- rules, hand-built


def test_no_breach_gives_empty_typed_frame() -> None:
    v = check_policy(run("r", ["llm", "search_kb", "llm"]))
    assert v.height == 0
    assert v.schema == pl.Schema(VIOLATION_SCHEMA)


def test_max_steps_reports_first_step_over_the_limit() -> None:
    v = check_policy(run("r", ["llm"] * 8), Policy(max_steps=5))
    assert rules(v) == [("r", 6, "max_steps")]
    assert v["detail"][0] == "8 steps > limit 5"
    assert v["severity"][0] == "warning"
    v = check_policy(run("r", ["llm"] * 10), Policy(max_steps=5))
    assert v["severity"][0] == "critical"  # two-fold over the limit


def test_max_runtime() -> None:
    ev = run("r", ["llm"] * 4).with_columns(
        pl.Series("ts", [T0, T0 + timedelta(seconds=50), T0 + timedelta(seconds=70), T0 + timedelta(seconds=90)])
    )
    v = check_policy(ev, Policy(max_runtime_s=60))
    assert rules(v) == [("r", 3, "max_runtime")]
    assert v["detail"][0] == "runtime 90s > limit 60s"
    assert v["value"][0] == 90.0


def test_max_cost_crossing_step_and_detail() -> None:
    ev = run("r", ["llm", "search", "llm", "llm"], cost_usd=[0.2, 0.002, 0.3, 0.8])
    v = check_policy(ev, Policy())
    assert rules(v) == [("r", 3, "max_cost")]
    assert v["detail"][0] == "cost $1.30 > ceiling $0.50"
    assert v["severity"][0] == "critical"


def test_max_tokens() -> None:
    ev = run("r", ["llm", "llm", "llm"], input_tokens=[100_000, 90_000, 60_000], output_tokens=[1000, 1000, None])
    v = check_policy(ev, Policy())
    assert rules(v) == [("r", 3, "max_tokens")]
    assert v["detail"][0] == "tokens 252,000 > limit 200,000"


def test_consecutive_retries_skip_llm_steps_and_reset() -> None:
    acts = ["llm", "search"] * 6 + ["llm", "get_x", "llm", "search", "llm", "search"]
    status = ["ok", "error"] * 6 + ["ok", "ok", "ok", "error", "ok", "error"]
    v = check_policy(run("r", acts, status=status), Policy(max_consecutive_retries=3))
    # search fails 6 times in a row: calls 2..6 are retries; the 4th retry is call 5 (step 10)
    assert rules(v) == [("r", 10, "max_consecutive_retries")]
    assert v["detail"][0] == "search retried 5x in a row after errors > limit 3"
    # a streak broken by another tool stays under the limit
    acts2 = ["search", "search", "get_x", "search", "search", "search"]
    status2 = ["error"] * 6
    assert check_policy(run("r2", acts2, status=status2), Policy(max_consecutive_retries=2)).height == 0


def test_retry_needs_the_previous_call_to_fail() -> None:
    ev = run("r", ["search"] * 6, status=["ok"] * 6)
    assert check_policy(ev, Policy(max_consecutive_retries=1)).height == 0


def test_unapproved_destructive_is_critical_and_detailed() -> None:
    ev = run("r", ["llm", "delete_invoice", "llm", "delete_invoice", "delete_invoice", "send_email"],
             approved=[None, False, None, None, True, None])
    v = check_policy(ev, Policy())
    assert rules(v) == [("r", 2, "unapproved_action"), ("r", 4, "unapproved_action")]
    assert set(v["severity"]) == {"critical"}
    assert v["detail"].to_list() == [
        "delete_invoice (delete tier) without approval (approved=false)",
        "delete_invoice (delete tier) without approval (approval not recorded)",
    ]


def test_write_tier_needs_approval_only_when_required() -> None:
    ev = run("r", ["send_email", "update_ticket", "get_ticket"], approved=[None, True, None])
    assert check_policy(ev, Policy()).height == 0
    v = check_policy(ev, Policy(require_approval=("write", "delete")))
    assert rules(v) == [("r", 1, "unapproved_action")]
    assert v["severity"][0] == "warning"
    assert "(write tier)" in v["detail"][0]


def test_unknown_tool_outside_allowed() -> None:
    ev = run("r", ["llm", "search_kb", "llm", "format_disk", "handoff:support", "llm"])
    v = check_policy(ev, Policy(allowed=("search_*", "get_*")))
    assert rules(v) == [("r", 4, "unknown_tool")]
    assert v["detail"][0] == "unknown tool: format_disk (not in allowed tools)"


@pytest.mark.parametrize(
    ("error_type", "result", "hit"),
    [
        ("ToolNotFoundError", "ToolNotFoundError: no such tool 'lookup'", True),
        (None, "Error: unknown tool 'lookup_order'", True),
        ("KeyError", "tool 'x' not found in registry", True),
        ("ValidationError", "invalid arguments for search: 'q' is required", True),
        ("TypeError", "search() got an unexpected keyword argument 'qq'", True),
        ("TypeError", "search() missing 1 required positional argument: 'q'", True),
        ("UnknownToolError", None, True),
        ("FileNotFoundError", "file report.pdf does not exist", False),
        ("TimeoutError", "error: TimeoutError calling upstream service", False),
        ("HTTPError", "404 page not found", False),
        ("ToolError", "Tool lookup_order does not exist", True),
        ("NameError", "Function 'foo' is not defined", True),
        (None, "'bar' is not a valid tool, try one of [search, read_page]", True),
        (None, "Action 'format_disk' is not available", True),
        # business errors of tools that exist (a probe found these flagged as unknown tools)
        ("HTTPError", "Tool call failed: customer 42 not found", False),
        ("HTTPError", "function get_user: record does not exist", False),
        ("HTTPError", "The action is not available right now (rate limited)", False),
        ("HTTPError", "the function returned no results; the action was not found in cache", False),
        ("HTTPError", "tool is not available right now, retry later", False),
        (None, "Tool with name lookup_order not found", True),
        (None, "The requested tool with name lookup_order does not exist", True),
        ("HTTPError", "Tool output: not found", False),
        ("HTTPError", "tool response: not found", False),
        ("HTTPError", "Function result: not found", False),
        # a business rule about an action that exists (the verdict is not the sentence's end)
        ("HTTPError", "Action 'refund' is not available for orders in state shipped", False),
        (None, "Action 'format_disk' was not found.", True),
        # a database's error about the query a tool ran, not about the tool
        ("BinderException", "Binder Error: unknown function 'datediff'", False),
        (None, "Catalog Error: Scalar Function with name datediff does not exist!", False),
        ("OperationalError", "sqlite3.OperationalError: no such function: datediff", False),
        (None, "ERROR: function date_part(unknown, text) does not exist", False),
        (None, "[UNRESOLVED_ROUTINE] Cannot resolve function `datediff`", False),
        (None, "unknown function 'get_weather'", True),
        # ... but a missing tool whose name or context speaks of SQL is still a missing tool
        ("ToolNotFoundError", "unknown tool 'sql'", True),
        (None, "Tool 'text-to-sql' not found", True),
        (None, "no such tool 'lookup_order'; available tools: search, sql, send_email", True),
        ("ValidationError", "invalid arguments: syntax error in JSON arguments", True),
        (None, "tool query_db not found (see SQL tools)", True),
    ],
)
def test_unknown_tool_from_error_text(error_type: str | None, result: str | None, hit: bool) -> None:
    ev = run("r", ["llm", "lookup"], status=["ok", "error"], error_type=[None, error_type], result=["x", result])
    v = check_policy(ev)
    assert (v["rule"].to_list() == ["unknown_tool"]) is hit
    if hit:
        assert v["detail"][0].startswith("tool cannot run: lookup failed: ")


def test_failed_llm_and_handoff_steps_are_not_tools_that_cannot_run() -> None:
    """An LLM call refused for its own arguments, or a failed hand-off, is not an unknown tool
    (a probe found both flagged, the run at review)."""
    ev = run("r", ["llm", "handoff:billing", "lookup"], status=["error", "error", "error"],
             result=["Invalid argument: max_tokens must be <= 4096", "unknown function transfer_to_billing",
                     "unknown tool 'lookup'"])
    assert rules(check_policy(ev)) == [("r", 3, "unknown_tool")]


def test_error_text_on_a_successful_step_is_not_a_breach() -> None:
    ev = run("r", ["search"], status=["ok"], result=["docs about 'unknown tool' errors"])
    assert check_policy(ev).height == 0


def test_low_confidence_per_step() -> None:
    ev = run("r", ["llm", "get_x", "llm", "llm"], confidence=[0.9, None, 0.12, 0.29])
    v = check_policy(ev)
    assert rules(v) == [("r", 3, "low_confidence"), ("r", 4, "low_confidence")]
    assert v["detail"][0] == "confidence 0.12 < 0.30 at llm"
    assert check_policy(ev, Policy(min_confidence=0.0)).height == 0


def chain(n: int, *, prefix: str = "c", cycle: bool = False) -> pl.DataFrame:
    ids = [f"{prefix}{i}" for i in range(n)]
    parents = [ids[-1] if cycle else None] + ids[:-1]
    return pl.concat(
        [run(i, ["llm", "handoff:x"], parent_run_id=[p, p]) for i, p in zip(ids, parents, strict=True)],
        how="vertical_relaxed",
    )


def test_delegation_depth_from_parent_chain() -> None:
    ev = pl.concat([chain(6), chain(3, prefix="s")])
    v = check_policy(ev)
    assert v["run_id"].to_list() == ["c4", "c5"]
    assert set(v["rule"]) == {"delegation_depth"}
    assert v["detail"].to_list() == [
        "delegation depth 4 > limit 3 (chain root c0)",
        "delegation depth 5 > limit 3 (chain root c0)",
    ]
    assert v["step"].null_count() == 2
    assert check_policy(ev, Policy(max_delegation_depth=5)).height == 0
    assert check_policy(ev, delegation=False).height == 0


def test_delegation_long_chain_and_missing_parent() -> None:
    # a 300-run chain whose root's parent is outside the data: depth counts that link
    ids = [f"x{i:03d}" for i in range(300)]
    runs = pl.DataFrame({"run_id": ids, "parent_run_id": ["gone"] + ids[:-1], "agent": ["a"] * 300})
    v = check_delegation(runs.sample(fraction=1.0, shuffle=True, seed=1), Policy(max_delegation_depth=100))
    assert v.height == 200
    depth = dict(zip(v["run_id"], v["value"], strict=True))
    assert depth["x100"] == 101.0 and depth["x299"] == 300.0
    assert v.filter(pl.col("run_id") == "x299")["detail"][0].endswith("(chain root gone)")


def test_delegation_cycle_is_critical() -> None:
    v = check_policy(chain(3, cycle=True))
    assert v.height == 3
    assert set(v["severity"]) == {"critical"}
    assert v["detail"][0].startswith("delegation cycle")
    assert v["value"].null_count() == 3


def test_a_run_named_as_its_own_parent_has_none() -> None:
    """A span export read with trace ids as run ids (LangSmith's ``parent_run_id`` is the trace's
    root there) escalated every run as a delegation cycle; a self-link is no parent, while a run
    below it still counts its depth and a real cycle stays critical."""
    from driftwatch.policy import check_delegation

    runs = pl.DataFrame({"run_id": ["t1", "t2", "c1", "c2", "x", "y"],
                         "parent_run_id": ["t1", "t2", "t1", "c1", "y", "x"]})
    got = check_delegation(runs, dw.Policy(max_delegation_depth=1)).sort("run_id")
    assert got.select("run_id", "severity", "value").rows() == [
        ("c2", "warning", 2.0), ("x", "critical", None), ("y", "critical", None)]
    ev = run("t1", ["search", "llm"]).with_columns(parent_run_id=pl.lit("t1"))
    assert check_policy(ev).height == 0


def test_check_delegation_rejects_frames_without_links() -> None:
    with pytest.raises(InvalidParameterError, match="parent_run_id"):
        check_delegation(pl.DataFrame({"run_id": ["a"]}))


def test_policy_argument_forms(tmp_path: Path) -> None:
    ev = run("r", ["llm"] * 8)
    path = write(tmp_path, "[limits]\nmax_steps = 5\n")
    a = check_policy(ev, path)
    b = check_policy(ev.lazy(), str(path))
    assert a.equals(b) and a.height == 1
    with pytest.raises(InvalidParameterError, match="policy must be"):
        check_policy(ev, {"max_steps": 5})  # type: ignore[arg-type]


def test_rule_names_are_the_documented_ones() -> None:
    assert RULES == ("max_steps", "max_runtime", "max_consecutive_retries", "max_tokens", "max_cost",
                     "unapproved_action", "unknown_tool", "low_confidence", "delegation_depth")


# --------------------------------------------------------------------------- generated fleets


@pytest.fixture(scope="module")
def fleet():
    from driftwatch import synth

    return synth.generate(days=8, runs_per_day=300, seed=11)


@pytest.fixture(scope="module")
def violations(fleet) -> pl.DataFrame:
    return check_policy(fleet.events)


def injected(fleet, flag: str) -> set[str]:
    t = fleet.truth["runs"]
    return set(t.filter(pl.col("injected").list.contains(flag))["run_id"])


def test_fleet_every_unapproved_destructive_call_found(fleet, violations: pl.DataFrame) -> None:
    found = set(violations.filter((pl.col("rule") == "unapproved_action") & (pl.col("severity") == "critical"))[
        "run_id"])
    truth = injected(fleet, "unapproved_destructive")
    assert truth and found == truth  # recall 1 and no false alarm (approved destructive calls exist)
    approved = fleet.events.filter(pl.col("approved").fill_null(False))
    assert approved.height > 0


def test_fleet_unknown_tools_and_low_confidence_found(fleet, violations: pl.DataFrame) -> None:
    unk = set(violations.filter(pl.col("rule") == "unknown_tool")["run_id"])
    assert unk == injected(fleet, "unknown_tool")
    low = set(violations.filter(pl.col("rule") == "low_confidence")["run_id"])
    truth = injected(fleet, "low_confidence")
    assert truth <= low
    assert low == truth  # the generator's background confidence stays above the threshold


def test_fleet_delegation_matches_truth(fleet, violations: pl.DataFrame) -> None:
    deep = set(fleet.truth["delegation"].filter(pl.col("depth") > 3)["run_id"])
    found = set(violations.filter(pl.col("rule") == "delegation_depth")["run_id"])
    assert deep and found == deep


def test_fleet_cost_spikes_breach_a_ceiling(fleet, violations: pl.DataFrame) -> None:
    spikes = injected(fleet, "cost_spike")
    over = set(violations.filter(pl.col("rule").is_in(["max_tokens", "max_cost"]))["run_id"])
    assert spikes and spikes <= over


def test_chunks_of_whole_runs_concatenate(fleet, violations: pl.DataFrame) -> None:
    ev = fleet.events
    key = pl.col("run_id").hash(seed=0) % 3
    parts = [check_policy(ev.filter(key == k), delegation=False) for k in range(3)]
    runs = dw.run_features(ev)
    chunked = pl.concat([*parts, check_delegation(runs)]).sort("run_id", "step", "rule", nulls_last=True)
    assert chunked.equals(violations)


def test_unsorted_input_gives_the_same_result(fleet, violations: pl.DataFrame) -> None:
    shuffled = fleet.events.sample(fraction=1.0, shuffle=True, seed=5)
    assert check_policy(shuffled.lazy()).equals(violations)


def test_run_totals_from_features_give_the_same_breaches(fleet, violations: pl.DataFrame) -> None:
    """``features=`` (the audit passes its run features) replaces the totals group-by; every
    run-limit rule fires, and the breaches are the same."""
    tight = Policy(max_steps=12, max_runtime_s=60, max_tokens=4000, max_cost_usd=0.05, max_consecutive_retries=1)
    feats = dw.run_features(fleet.events)
    given = check_policy(fleet.events, tight, features=feats)
    assert given.equals(check_policy(fleet.events, tight))
    assert {"max_steps", "max_runtime", "max_tokens", "max_cost", "max_consecutive_retries"} <= set(given["rule"])
    assert check_policy(fleet.events, features=feats).equals(violations)


def test_cost_exactly_at_the_ceiling_from_features() -> None:
    """$0.10 + $0.20 is 0.30000000000000004 in floating point, and $0.30 on the bill: at a $0.30
    ceiling it is no breach, with or without features, and the score agrees; a cent over is one."""
    costs = [0.1, 0.2]
    ev = run("r", ["llm"] * 2, cost_usd=costs)
    feats = dw.run_features(ev)
    assert feats["cost_usd"][0] == 0.3 and sum(costs) > 0.3
    pol = Policy(max_cost_usd=0.3)
    assert check_policy(ev, pol, features=feats).equals(check_policy(ev, pol))
    assert check_policy(ev, pol).height == 0
    assert dw.score_runs(ev, policy=pol)["score_max_cost"][0] == 0.0
    over = run("r", ["llm"] * 2, cost_usd=[0.1, 0.21])
    assert rules(check_policy(over, pol, features=dw.run_features(over))) == [("r", 2, "max_cost")]


def test_features_must_be_run_features() -> None:
    ev = run("r", ["llm", "search"])
    with pytest.raises(InvalidParameterError, match="features: expected run_features output.*without n_steps"):
        check_policy(ev, features=pl.DataFrame({"run_id": ["r"]}))
    with pytest.raises(InvalidParameterError, match="got dict"):
        check_policy(ev, features={"run_id": ["r"]})  # type: ignore[arg-type]


def test_to_toml_keeps_the_model_reachable_from_the_new_file(tmp_path: Path) -> None:
    """A policy read from m/p.toml with model = "esc.pkl", written to other/p.toml, used to say
    model = "esc.pkl" there too: a model next to the new file, which does not exist."""
    (tmp_path / "m").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "m" / "esc.pkl").write_bytes(b"model")
    (tmp_path / "m" / "p.toml").write_text('[escalation]\nmodel = "esc.pkl"\n')
    p = Policy.from_toml(tmp_path / "m" / "p.toml")
    p.to_toml(tmp_path / "other" / "p.toml")
    q = Policy.from_toml(tmp_path / "other" / "p.toml")
    assert q.model == "../m/esc.pkl" and q.model_path().resolve() == (tmp_path / "m" / "esc.pkl").resolve()
    text_only = Policy.from_toml_text(p.to_toml())  # no file to be relative to: absolute
    assert Path(text_only.model) == (tmp_path / "m" / "esc.pkl").absolute()
    assert Policy(model="esc.pkl").to_toml().count('model = "esc.pkl"') == 1  # no source: as given


def test_a_breach_just_past_its_limit_does_not_read_as_the_limit() -> None:
    """``confidence 0.30 < 0.30``, ``cost $0.50 > ceiling $0.50`` and ``runtime 300s > limit 300s``
    read as no breach at all; the value is shown exactly where the usual decimals hide it."""
    from datetime import UTC, datetime, timedelta

    t = datetime(2026, 10, 1, tzinfo=UTC)
    ev = pl.DataFrame({"run_id": ["a", "a", "b", "b"], "step": [1, 2, 1, 2],
                       "ts": [t, t + timedelta(seconds=300.0004), t, t + timedelta(seconds=301)],
                       "action": ["search"] * 4, "confidence": [0.2999, 0.9, 0.25, 0.9],
                       "cost_usd": [0.25, 0.250001, 0.3, 0.3]})
    got = sorted(check_policy(ev, Policy(max_cost_usd=0.5, max_runtime_s=300))["detail"].to_list())
    assert got == sorted(["confidence 0.2999 < 0.30 at search", "cost $0.500001 > ceiling $0.50",
                          "runtime 300.0004s > limit 300s", "confidence 0.25 < 0.30 at search",
                          "cost $0.60 > ceiling $0.50", "runtime 301s > limit 300s"])
    # a limit with decimals shows them in the value too (not "runtime 300s > limit 300.3s")
    for limit, b, text in ((300.3, 300.4, "runtime 300.4s > limit 300.3s"),
                           (4.5, 4.9, "runtime 4.9s > limit 4.5s"),
                           (300.3, 300.34, "runtime 300.34s > limit 300.3s")):
        ev = pl.DataFrame({"run_id": ["a", "a"], "step": [1, 2], "ts": [t, t + timedelta(seconds=b)],
                           "action": ["search"] * 2})
        pol = Policy(max_runtime_s=limit)
        assert check_policy(ev, pol)["detail"].to_list() == [text]
        assert dw.score_runs(ev, policy=pol)["reasons"].to_list() == [[text]]


@pytest.mark.parametrize("glob", ["tab\there", "multi\nline", "ctrl\x01", "cr\r", "nul\x00", "del\x7f", 'q"uo\\te'])
def test_to_toml_escapes_control_characters(tmp_path: Path, glob: str) -> None:
    """A glob with a newline or a control character was written raw, and the file could not
    be read back ("Illegal character")."""
    p = Policy(read=[glob], write=["send_*"])
    p.to_toml(tmp_path / "p.toml")
    assert Policy.from_toml(tmp_path / "p.toml") == p


def test_notebook_values_and_windows_files_are_accepted(tmp_path: Path) -> None:
    """numpy integers (what a notebook computes) were refused as limits; a policy saved with a
    UTF-8 byte-order mark (Windows Notepad) failed at line 1, column 1."""
    import numpy as np

    p = Policy(max_steps=np.int64(10), max_cost_usd=np.float64(1.5), max_delegation_depth=np.int32(2))
    assert (p.max_steps, p.max_delegation_depth) == (10, 2) and type(p.max_steps) is int
    with pytest.raises(InvalidParameterError, match="max_steps must be an integer"):
        Policy(max_steps=np.float64(10.0))
    with pytest.raises(InvalidParameterError, match="max_steps must be an integer"):
        Policy(max_steps=np.bool_(True))
    (tmp_path / "bom.toml").write_text("[limits]\nmax_steps = 10\n", encoding="utf-8-sig")
    assert Policy.from_toml(tmp_path / "bom.toml").max_steps == 10
    ev = pl.DataFrame({"run_id": "r", "step": [1, 2], "action": "a", "cost_usd": 0.1,
                       "ts": [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 1, tzinfo=UTC)]})
    assert dw.cost_profile(ev, volume_per_day=np.int64(1000))["volume_per_day"].max() == 1000


def test_a_cost_exactly_at_the_ceiling_is_no_breach_in_any_order() -> None:
    """$0.10 + $0.20 + $0.15 + $0.05 is $0.50 on paper and 0.5000000000000001 in one order of
    float additions: the ceiling of $0.50 must not depend on the order (a probe found it did)."""
    costs = [0.10, 0.20, 0.15, 0.05]
    ev = pl.concat([run("x", ["llm"] * 4, cost_usd=costs), run("y", ["llm"] * 4, cost_usd=costs[::-1])])
    for frame in (ev, ev.reverse(), ev.sample(fraction=1.0, shuffle=True, seed=3)):
        assert check_policy(frame).height == 0
        assert check_policy(frame, features=dw.run_features(frame)).height == 0
    over = pl.concat([ev, run("z", ["llm"] * 2, cost_usd=[0.25, 0.25004])])
    v = check_policy(over)
    assert rules(v) == [("z", 2, "max_cost")] and v["detail"][0] == "cost $0.50004 > ceiling $0.50"


def test_tier_globs_ignore_case_and_an_empty_list_means_the_built_in_words() -> None:
    p = Policy.from_toml_text('[tools]\ndelete = ["delete_*"]\nwrite = []\n')
    assert [p.tier_of(a) for a in ("delete_invoice", "Delete_Invoice", "DELETE_INVOICE", "purge_cache")] == [
        "delete", "delete", "delete", None,  # globs given: only they count (case ignored)
    ]
    assert p.tier_of("send_email") == "write"  # no globs: the built-in words
    empty = Policy.from_toml_text('[tools]\ndelete = []\nrequire_approval = ["delete"]\n')
    ev = run("r", ["llm", "delete_invoice"], approved=[None, None])
    assert rules(check_policy(ev, empty)) == [("r", 2, "unapproved_action")]
    assert Policy.from_toml_text(empty.to_toml()) == empty
    # whitespace around a name is ignored as case is: it must not slip past the approval check
    assert [p.tier_of(a) for a in (" delete_invoice", "delete_invoice\n", "\tDELETE_X ")] == ["delete"] * 3
    ev = run("r", ["llm", " delete_invoice"], approved=[None, None])
    assert rules(check_policy(ev, Policy(delete=("delete_*",)))) == [("r", 2, "unapproved_action")]
    # allowed globs stay exact: a tool spelled differently is not the allowed one
    strict = Policy(allowed=("search",))
    assert rules(check_policy(run("r", ["Search"]), strict)) == [("r", 1, "unknown_tool")]


def test_limits_are_compared_at_seven_significant_digits_both_sides() -> None:
    """A value equal to a limit with more digits than 7 is no breach (1/3 confidence at a 1/3
    floor was flagged once only the value was rounded); a refund that brings a run back under
    the ceiling is no breach, with or without features, and the reported cost is the run's own
    (as score_runs reads it); tiny limits read in the same notation as the value."""
    ev = pl.DataFrame({"run_id": ["c1", "m1"], "step": [1, 1], "action": ["llm"] * 2,
                       "confidence": [1 / 3, 0.9], "cost_usd": [0.1, 2 / 3]})
    pol = Policy(min_confidence=1 / 3, max_cost_usd=2 / 3)
    assert check_policy(ev, pol).height == 0
    assert dw.score_runs(ev, policy=pol).select(pl.col("score_low_confidence").max(), pl.col("score_max_cost").max()).row(0) == (0.0, 0.0)
    refund = run("r", ["llm", "refund_line"], cost_usd=[0.6, -0.1])
    cut = Policy(max_cost_usd=0.5)
    assert check_policy(refund, cut).height == 0 == check_policy(refund, cut, features=dw.run_features(refund)).height
    still = run("r", ["llm", "refund_line"], cost_usd=[0.7, -0.15])
    detail = "cost $0.55 > ceiling $0.50"
    assert check_policy(still, cut)["detail"].to_list() == [detail] == dw.score_runs(still, policy=cut)["reasons"][0].to_list()
    assert check_policy(still, cut)["step"].to_list() == [1]  # where the running cost first passed the ceiling
    tiny = run("t", ["llm"], cost_usd=[2e-11])
    assert check_policy(tiny, Policy(max_cost_usd=1e-11))["detail"].to_list() == ["cost $2e-11 > ceiling $1e-11"]


def test_amounts_past_int64_are_written_not_crashed_on() -> None:
    """A run costing $1e17 or summing to inf failed the whole audit: the detail text scaled the
    cost to cents with a strict Int64 cast. Step costs over MAX_STEP_COST_USD ($1e9) are now
    rejected by the reader (and refused in a frame); the texts still handle amounts past Int64."""
    from driftwatch.errors import SchemaError

    ev = pl.DataFrame({"run_id": ["a", "a", "b"], "step": [1, 2, 1], "action": ["llm", "llm", "llm"],
                       "cost_usd": [1e17, 1.0, 1e308], "input_tokens": [10, 10, 10]})
    with pytest.raises(SchemaError, match="up to 1e9"):
        dw.check_policy(ev, dw.Policy())
    big = pl.DataFrame({"run_id": "a", "step": list(range(1, 101)), "action": "llm", "cost_usd": 9e8})
    got = dw.check_policy(big, dw.Policy()).filter(pl.col("rule") == "max_cost")
    assert got["detail"].to_list() == ["cost $90000000000.00 > ceiling $0.50"]
    from driftwatch.policy import fmt_int, fmt_money
    out = pl.select(fmt_money(pl.lit(1e19)).alias("m"), fmt_int(pl.lit(-1e19)).alias("i"))
    assert out.row(0) == ("$1e+19", "-1e+19")


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        # the message lists the tiers, which are keys of [tools] too: the error is the key it is about
        ('[tools]\nread = ["get_*"]\nwrite = ["send_*"]\nrequire_approval = ["destroy"]\n', 4,
         "[tools] require_approval: Policy.require_approval: unknown tier(s) ['destroy']"),
        ('[tools]\ndelete = ["drop_*"]\nrequire_approval = ["delete", "bogus"]\n', 3,
         "[tools] require_approval: Policy.require_approval: unknown tier(s) ['bogus']"),
        ('[tools]\nwrite = ["send_*"]\n\nrequire_approval = ["write", "reed"]\n', 4, "[tools] require_approval:"),
        # the rule across keys is reported at the first of its keys in the file
        ('[tools]\nrequire_approval = ["read"]\n[escalation]\nreview = 0.9\n', 4, "[escalation] review:"),
        ('[escalation]\nmin_confidence = 0.2\nescalate = 0.3\nreview = 0.5\n', 3, "[escalation] escalate:"),
    ],
)
def test_toml_value_errors_name_the_key_they_are_about(tmp_path: Path, text: str, line: int, needle: str) -> None:
    """A probe found ``require_approval = ["destroy"]`` on line 4 reported at line 2, ``[tools] read``:
    the key was the first one named anywhere in the message, and the message lists the tiers."""
    path, msg = _toml_error(tmp_path, text)
    assert f"{path}, line {line}: " in msg, msg
    assert needle in msg, msg


def test_glob_stars_and_question_marks_match_line_breaks_as_fnmatch_does() -> None:
    """``delete = ["delete_*"]`` missed a tool named ``"delete_\\ninvoice"``: ``*`` (and ``?``) did
    not match a line break, so an unapproved destructive call came out ok."""
    import fnmatch
    import re

    p = Policy(delete=("delete_*", "wipe?all"), write=("send_[!a]*",), allowed=("get_*", "a?c", "x[!y]z", "delete_*"))
    names = ["delete_\ninvoice", "DELETE_\r\nALL", "wipe\nall", "send_\nmail", "get_\n", "a\nc", "x\nz", "get_x"]
    assert [p.tier_of(a) for a in names[:4]] == ["delete", "delete", "delete", "write"]
    ev = run("r", ["llm", "delete_\ninvoice", "get_\nrecord", "a\nc", "x\nz"], approved=[None] * 5)
    v = check_policy(ev, p)
    assert rules(v) == [("r", 2, "unapproved_action")] and v["severity"].to_list() == ["critical"]
    rej = pl.DataFrame({"run_id": ["r"], "step": [3], "action": ["delete_\nrow"], "approved": [None],
                        "reason": ["bad_value:approved"]})
    assert dw.policy.check_rejected(rej, p)["rule"].to_list() == ["unapproved_action"]
    runs = dw.score_runs(ev, policy=p)
    assert runs["level"].to_list() == ["escalate"]
    for g in ("delete_*", "a?c", "x[!y]z", "*", "?", "[!a]", "get_*\n", "a*b?c"):
        rx = glob_to_regex(g)
        expected = [fnmatch.fnmatchcase(a, g) for a in names + ["ab\nxc", "\n", "get_*\n"]]
        assert [re.fullmatch(rx, a) is not None for a in names + ["ab\nxc", "\n", "get_*\n"]] == expected, g
        assert pl.Series(names + ["ab\nxc", "\n", "get_*\n"]).str.contains(f"^(?:{rx})$").to_list() == expected, g


def test_long_allowed_and_tier_lists_work() -> None:
    """8,000 allowed names or 4,500 tier globs crashed the audit ("ComputeError: regex error: Compiled
    regex exceeds size limit"): plain names are looked up in a hash set now, and globs go into several
    regexes of bounded size. Matching stays fnmatch's: tiers ignore case and spaces around the name,
    ``allowed`` is exact."""
    import fnmatch
    import time

    allowed = tuple(f"get_customer_record_{i}" for i in range(8_000)) + ("search_*", "tool[0-9]")
    delete = tuple(f"svc{i}_[a-z]*_[a-z]*" for i in range(4_500)) + tuple(f"purge_cache_{i}" for i in range(3_000))
    p = Policy(allowed=allowed, delete=delete)
    actions = ["get_customer_record_7999", "Get_customer_record_7", "get_customer_record_8000", "search_kb",
               "tool7", " search_kb", "svc4499_purge_cache", "SVC12_x_y", "svc7_\nx_y", "svc4500_a_b",
               "PURGE_CACHE_2999", " purge_cache_0\n", "purge_cache_3000", "llm"]
    started = time.perf_counter()
    ev = run("r", actions, approved=[None] * len(actions))
    got = check_policy(ev, p)
    assert time.perf_counter() - started < 20
    outside = [a for a in actions[:-1] if not any(fnmatch.fnmatchcase(a, g) for g in allowed)]
    deleted = [a for a in actions[:-1] if any(fnmatch.fnmatchcase(a.strip().lower(), g.lower()) for g in delete)]
    assert deleted == ["svc4499_purge_cache", "SVC12_x_y", "PURGE_CACHE_2999", " purge_cache_0\n"]
    assert got.filter(pl.col("rule") == "unknown_tool")["action"].to_list() == outside
    assert got.filter(pl.col("rule") == "unapproved_action")["action"].to_list() == deleted
    assert len(dw.policy.globs_regexes(delete)) > 1


def test_plain_names_and_globs_match_alike() -> None:
    """A plain name (looked up in a hash set) means what the same name spelled as a glob (a regex)
    means: in tiers case is ignored as a ``(?i)`` regex ignores it (the Kelvin sign is a ``K``, the
    long s an ``s``), ``allowed`` is exact."""
    import fnmatch
    import random

    names = ["kill", "KILL", "\u212aill", "search", "\u017fearch", "SEARCH", "s\u0131ze", "size", "SIZE", "\u0130d",
             "id", "ID", "caf\u00e9", "CAF\u00c9", "cafe", " size ", "size\n", "si ze", "", "ki", "\u00df", "SS"]
    plain = ("kill", "search", "size", "id", "caf\u00e9", "\u00df")
    globbed = ("kil[l]", "searc[h]", "siz[e]", "i[d]", "caf[\u00e9]", "[\u00df]")
    assert [Policy(delete=plain).tier_of(a) for a in names] == [Policy(delete=globbed).tier_of(a) for a in names]
    assert Policy(delete=plain).tier_of("\u212aILL") == "delete"
    frame = pl.DataFrame({"a": names})
    from driftwatch.policy import globs_expr, globs_regexes

    assert frame.select(globs_expr(pl.col("a"), plain))["a"].to_list() == [a in plain for a in names]
    rng = random.Random(7)
    globs = ["".join(rng.choice("ab*?[]!-") for _ in range(rng.randint(1, 5))) for _ in range(300)]
    sample = ["".join(rng.choice("ab[]!-\n") for _ in range(rng.randint(0, 4))) for _ in range(300)]
    parts = globs_regexes(globs, max_chars=60)
    assert len(parts) > 10
    got = pl.DataFrame({"a": sample}).select(pl.any_horizontal(pl.col("a").str.contains(r) for r in parts))["a"]
    assert got.to_list() == [any(fnmatch.fnmatchcase(a, g) for g in globs) for a in sample]
    got = pl.DataFrame({"a": sample}).select(globs_expr(pl.col("a"), globs))["a"]
    assert got.to_list() == [any(fnmatch.fnmatchcase(a, g) for g in globs) for a in sample]


@pytest.mark.parametrize(
    ("result", "hit"),
    [
        ("Tool with name 'lookup_order' does not exist", True),
        ('Tool with name "lookup_order" does not exist', True),
        ("Tool with name `lookup_order` is not registered", True),
        ("Tool with name lookup_order does not exist", True),
        ("Tool with the name 'lookup_order' was not found", True),
        # a function "with name" is most often one the tool called: a serverless or a database function
        ("Function with the name \"lookup_order\" is not defined", False),
        ("Function with name 'thumbnailer' does not exist in project acme", False),
        ('ERROR: function with name "my_udf" does not exist', False),
        ("#NAME? function with name XLOOKUP not found", False),
        ("Tool with name lookup_order not found", True),
        ("function lookup_order not found", True),
        # a cloud function the tool invoked, unless the text speaks of the tool
        ("ResourceNotFoundException: Function not found: arn:aws:lambda:us-east-1:123456789012:function:thumb", False),
        ("Function not found: arn:aws:lambda:eu-west-1:1:function:resize", False),
        ("function projects/acme/locations/europe-west1/functions/resize does not exist", False),
        ("Function not found", True),
        ("unknown tool 'invoke_lambda' (arn:aws:lambda:us-east-1:1:function:x)", True),
        # "tool" inside the function's own name is no word about the tool
        ("Function not found: arn:aws:lambda:us-east-1:1:function:agent-tools-resize", False),
        ("function projects/acme/locations/eu/functions/pdf-toolkit does not exist", False),
        ("Function 'lookup_order' is not defined", True),
        ("Tool 'lookup_order' does not exist", True),
        # near misses: the verdict is about something else than the named tool
        ("Tool with name 'lookup_order' failed: customer 'C42' does not exist", False),
        ("Tool with name lookup_order: customer 42 does not exist", False),
        ("Catalog Error: Scalar Function with name 'datediff' does not exist!", False),
    ],
)
def test_unknown_tool_named_with_name(result: str, hit: bool) -> None:
    """``Tool with name 'x' does not exist`` (a quoted name after "with name") was not flagged, though
    the unquoted form and ``Tool 'x' does not exist`` were."""
    ev = run("r", ["llm", "lookup_order"], status=["ok", "error"], result=["x", result])
    assert (check_policy(ev)["rule"].to_list() == ["unknown_tool"]) is hit


def test_a_glob_past_the_regex_size_limit_is_named_at_the_boundary(tmp_path: Path) -> None:
    """A single glob of some 100,000 characters failed in check_policy with Polars' raw error and a
    dump of the whole expression; it is refused where the policy is made, naming the key (and the
    file's line), while a long glob that compiles is kept and matches."""
    huge = "[ab]*?" * 20_000
    with pytest.raises(InvalidParameterError, match=r"Policy\.delete: the glob '\[ab\]\*\?.*120,000 characters"):
        Policy(delete=[huge])
    path, msg = _toml_error(tmp_path, f'[tools]\nread = ["get_*"]\ndelete = ["{huge}"]\n')
    assert f"{path}, line 3: [tools] delete:" in msg and "split it into shorter globs" in msg
    long = "a*" * 2_000  # 10,000 regex characters: past the chunk size, still compiles
    assert Policy(delete=[long]).tier_of("a" * 2_000) == "delete"


def test_thresholds_accept_numpy_floats() -> None:
    """``Policy(review=np.float32(0.5))`` was refused ("must be a number in [0, 1]") while the
    money limits took the same value: the thresholds take any real number in [0, 1], stored as
    a plain float."""
    import numpy as np

    p = Policy(review=np.float32(0.5), escalate=np.float16(0.75), min_confidence=np.float64(0.25))
    assert (p.review, p.escalate, p.min_confidence) == (0.5, 0.75, 0.25)
    assert all(type(v) is float for v in (p.review, p.escalate, p.min_confidence))
    for bad in (np.bool_(True), np.float32("nan"), np.float32(1.5), "0.5"):
        with pytest.raises(InvalidParameterError, match=r"review must be a number in \[0, 1\]"):
            Policy(review=bad)


def test_a_refused_call_whose_row_was_rejected_still_says_refused() -> None:
    """A destructive call a person refused (``approved = false``) whose row the reader rejected
    (an unknown status) lost the refusal: its breach read "(step rejected: bad_status)" and the
    run's reason "delete_z without approval", where an ordinary refused call says "(approval
    refused)"."""
    rej = pl.DataFrame({"run_id": ["r5", "r1"], "step": [1, 2], "action": ["delete_z", "delete_x"],
                        "approved": [False, None], "reason": ["bad_status", "bad_value:approved"]})
    v = dw.policy.check_rejected(rej)
    assert v["detail"].to_list() == [
        "delete_z (delete tier) without approval (approved=false; step rejected: bad_status)",
        "delete_x (delete tier) without approval (step rejected: bad_value:approved)",
    ]
    ev = pl.concat([run("r5", ["get_z"]), run("r1", ["get_x"])])
    out = dw.score_runs(ev, loops=pl.DataFrame(), violations=v).sort("run_id")
    assert [r[0] for r in out["reasons"].to_list()] == [
        "delete_x without approval", "delete_z without approval (approval refused)"]


@pytest.mark.parametrize("path", [None, 5, ["policy.toml"]])
def test_a_policy_path_that_is_no_path_is_a_policy_error(path: object) -> None:
    with pytest.raises(PolicyError, match="policy file path must be a path"):
        Policy.from_toml(path)  # type: ignore[arg-type]
