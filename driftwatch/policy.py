"""Policy files and policy checks: stop conditions, least privilege, cost ceilings, confidence.

A :class:`Policy` states the rules a fleet of agents must follow; :func:`check_policy`
finds every breach in the logs, one row per breach, vectorised over the whole event
table (no Python loop over rows or runs).

The policy file is TOML with three tables (every key optional)::

    [limits]                     # stop conditions, per run
    max_steps = 50
    max_consecutive_retries = 3  # consecutive failed calls of the same tool, retried
    max_runtime_s = 300
    max_cost_usd = 0.50          # retries included
    max_tokens = 200000
    max_delegation_depth = 3     # parent_run_id chain length
    [tools]                      # least privilege: globs over action names
    read   = ["search*", "get_*", "read_*", "list_*"]
    write  = ["update_*", "send_*", "edit_*"]
    delete = ["delete_*", "drop_*", "refund*"]
    require_approval = ["delete", "write"]
    allowed = []                 # when non-empty, any other tool is an unknown tool
    [escalation]
    review = 0.4
    escalate = 0.7
    min_confidence = 0.3
    model = "escalation.pkl"     # optional, relative to the policy file

Rules reported by :func:`check_policy` (names are stable):

``max_steps``, ``max_runtime``, ``max_consecutive_retries``, ``max_tokens``, ``max_cost``
    run-level stop conditions; the row's ``step`` is where the limit was first crossed.
``unapproved_action``
    a call in a tier listed in ``require_approval`` whose ``approved`` is not ``true``.
``unknown_tool``
    a call outside ``allowed`` (when given), or an error saying the tool or its
    arguments do not exist ("unknown tool", "no such tool", "invalid arguments", ...).
``low_confidence``
    a step whose ``confidence`` is below ``min_confidence``.
``delegation_depth``
    a run whose ``parent_run_id`` chain is deeper than ``max_delegation_depth`` (or cyclic).

Examples
--------
>>> import polars as pl, driftwatch as dw
>>> ev = pl.DataFrame({"run_id": ["r1", "r1"], "step": [1, 2],
...                    "action": ["search", "delete_record"], "approved": [None, False]})
>>> dw.check_policy(ev, dw.Policy()).select("run_id", "step", "rule", "severity").to_dicts()
[{'run_id': 'r1', 'step': 2, 'rule': 'unapproved_action', 'severity': 'critical'}]
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from driftwatch._frames import as_lazy, check_flag
from driftwatch.errors import InvalidParameterError, PolicyError
from driftwatch.schema import HANDOFF_PREFIX, LLM_ACTION

# --------------------------------------------------------------------------- names

#: Stable rule names, in the order they are documented.
RULES: tuple[str, ...] = (
    "max_steps",
    "max_runtime",
    "max_consecutive_retries",
    "max_tokens",
    "max_cost",
    "unapproved_action",
    "unknown_tool",
    "low_confidence",
    "delegation_depth",
)

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")

TIERS: tuple[str, ...] = ("read", "write", "delete")

#: Output schema of :func:`check_policy`.
VIOLATION_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "agent": pl.String(),
    "step": pl.Int64(),
    "action": pl.String(),
    "rule": pl.String(),
    "severity": pl.String(),
    "detail": pl.String(),
    "value": pl.Float64(),
    "limit": pl.Float64(),
}

#: Words that put an action in a tier when the policy gives no globs for it.
DEFAULT_TIER_WORDS: dict[str, tuple[str, ...]] = {
    "delete": ("delete", "drop", "remove", "purge", "truncate", "destroy", "erase", "wipe"),
    "write": (
        "write", "update", "create", "send", "post", "publish", "refund", "transfer", "restart",
        "scale", "deploy", "edit", "insert", "upsert", "patch", "modify", "upload", "charge",
    ),
    "read": (
        "read", "get", "list", "search", "fetch", "query", "find", "lookup", "retrieve", "browse",
        "view", "check", "describe", "show",
    ),
}

#: Error text (``error_type`` or ``result`` of a failed step) meaning the plan cannot run.
UNKNOWN_TOOL_PATTERN = (
    r"(?i)(unknown|unrecognized|unsupported|undefined|invalid) (tool|function|action)"
    r"|no such (tool|function|action)"
    r"|not a valid (tool|function|action)"
    # a tool named right before the verdict ("tool lookup not found", "Tool with name 'lookup' does
    # not exist", quoted or not); a quoted name also for actions and "not available" ("Action 'x'
    # is not available"). Anything between the noun (or its name) and the verdict is another
    # subject: "tool call failed: customer 42 not found" is a business error
    r"|(tool (with (the )?name )?|function )([\w.:/-]*[\w./-] )?(was |is )?"
    r"(not found|does not exist|not exist|not registered|not defined)"
    # ("with name" before a name, quoted or not, for tools only: "Function with name 'thumbnailer'
    # does not exist in project acme" is a serverless function the tool called, "function with
    # name "my_udf" does not exist" a database's, "function with name XLOOKUP not found" a
    # spreadsheet's)
    r"|(tool (with (the )?name )?|function )['\"`][^'\"`]{1,80}['\"`] (was |is )?"
    r"(not found|does not exist|not exist|not registered|not defined|not available)"
    # an action only as the sentence's end: "Action 'refund' is not available for orders in
    # state shipped" is a business rule about an action that exists
    r"|action ['\"`][^'\"`]{1,80}['\"`] (was |is )?"
    r"(not found|does not exist|not exist|not registered|not defined|not available)([.!;:,)]|\s*$)"
    r"|invalid (tool |function )?arguments?"
    r"|(unexpected|unknown) (keyword )?(argument|parameter)"
    r"|missing (\d+ )?required (positional )?(argument|parameter)"
    r"|argument validation (failed|error)"
    r"|(tool|function)_?not_?found|unknown_?(tool|function)|no_?such_?(tool|function)|invalid_?arguments?"
)

#: Error text of a database a tool ran a query on: "unknown function 'datediff'" or "Scalar
#: Function with name datediff does not exist" there is about the query the tool ran, not
#: about the tool (DuckDB, PostgreSQL, SQLite, Spark SQL spellings). Only the database's own
#: markers count, and never in a text that speaks of a tool or its arguments
#: (:data:`TOOL_WORDS`): "unknown tool 'sql'" is a missing tool.
SQL_ERROR_PATTERN = (
    r"(?i)\b(binder|catalog|parser) error\b"
    r"|\b(scalar|aggregate|table|window|macro) function\b"
    r"|\bsqlstate\b|\bsqlite3?\.|\bundefined_function\b|\bUNRESOLVED_ROUTINE\b"
    r"|\bno such function\b|\bfunction [\w.]+\([^)]*\) does not exist"
)

#: Error text of a cloud service a tool called: AWS Lambda's "ResourceNotFoundException: Function
#: not found: arn:aws:lambda:..." is about the function the tool invoked, not about the tool. Only
#: the service's markers count (an ARN, the exception's name, a Google Cloud function's resource
#: name), and never in a text that speaks of a tool or its arguments (:data:`TOOL_WORDS`).
CLOUD_ERROR_PATTERN = (
    r"\barn:aws[\w-]*:|\bResourceNotFoundException\b"
    r"|\bprojects/[^/\s]+/locations/[^/\s]+/functions/"
)
#: A cloud resource's name inside an error text (an ARN, a Google Cloud resource path): left out
#: when looking for :data:`TOOL_WORDS`, which a function named ``agent-tools-resize`` holds.
CLOUD_RESOURCE_PATTERN = r"\barn:aws[\w-]*:\S*|\bprojects/\S*"

#: Words that make an error text about a tool or its arguments (see :data:`SQL_ERROR_PATTERN`).
TOOL_WORDS = r"(?i)tool|argument|parameter"

# --------------------------------------------------------------------------- Policy

_SECTIONS: dict[str, tuple[str, ...]] = {
    "limits": (
        "max_steps",
        "max_consecutive_retries",
        "max_runtime_s",
        "max_cost_usd",
        "max_tokens",
        "max_delegation_depth",
    ),
    "tools": ("read", "write", "delete", "require_approval", "allowed"),
    "escalation": ("review", "escalate", "min_confidence", "model"),
}
_INT_LIMITS = ("max_steps", "max_consecutive_retries", "max_tokens", "max_delegation_depth")
_FLOAT_LIMITS = ("max_runtime_s", "max_cost_usd")
_GLOB_LISTS = ("read", "write", "delete", "allowed")
_UNIT_FIELDS = ("review", "escalate", "min_confidence")
#: Fields checked one by one, in this order (then the thresholds rule, then ``model``).
_CHECKED_FIELDS = (*_GLOB_LISTS, "require_approval", *_INT_LIMITS, *_FLOAT_LIMITS, *_UNIT_FIELDS)


def _checked(name: str, value: Any) -> Any:
    """``value`` checked as the :class:`Policy` field ``name`` and converted to the field's type.

    Raises :class:`InvalidParameterError` (``"Policy.<name> ..."``). One field at a time, so a
    policy file's error names the key that is wrong (:meth:`Policy.from_toml_text`).
    """
    if name in _GLOB_LISTS:
        if value is None:
            return None
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise InvalidParameterError(f"Policy.{name} must be a list of glob patterns, got {value!r}")
        value = tuple(value)
        bad = [v for v in value if not isinstance(v, str) or not v]
        if bad:
            raise InvalidParameterError(f"Policy.{name} must hold non-empty glob strings, found {bad!r}")
        for g in value:
            _check_compiles(name, g)
        return value
    if name == "require_approval":
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise InvalidParameterError(
                f"Policy.require_approval must be a list of tiers from {list(TIERS)}, got {value!r}"
            )
        value = tuple(value)
        unknown = [t for t in value if t not in TIERS]
        if unknown:
            raise InvalidParameterError(
                f"Policy.require_approval: unknown tier(s) {unknown}; expected some of {list(TIERS)}"
            )
        return value
    if name in _INT_LIMITS:
        if value is None:
            return None
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
            raise InvalidParameterError(f"Policy.{name} must be an integer or None, got {value!r}")
        low = 0 if name == "max_delegation_depth" else 1
        if value < low:
            raise InvalidParameterError(f"Policy.{name} must be >= {low}, got {value}")
        return int(value)  # (a numpy integer from a notebook)
    if name in _FLOAT_LIMITS:
        if value is None:
            return None
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise InvalidParameterError(f"Policy.{name} must be a number or None, got {value!r}")
        if value <= 0:
            raise InvalidParameterError(f"Policy.{name} must be > 0, got {value}")
        return float(value)
    if name in _UNIT_FIELDS:
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise InvalidParameterError(f"Policy.{name} must be a number in [0, 1], got {value!r}")
        return float(value)  # (a numpy float from a notebook: stored as a plain float)
    return value  # (model: checked in __post_init__)


def _check_compiles(name: str, glob: str) -> None:
    """Raise :class:`InvalidParameterError` when ``glob`` compiles past Polars' regex size limit.

    Only a glob whose regex is longer than :data:`REGEX_CHUNK_CHARS` can (shorter ones always
    compile), so the check costs nothing for ordinary lists. Tiers match ignoring case, the
    costlier form, which is the one tried.
    """
    if is_plain_name(glob) or len(rx := glob_to_regex(glob)) <= REGEX_CHUNK_CHARS:
        return
    try:
        pl.Series([""]).str.contains(f"(?i)^(?:{rx})$")
    except pl.exceptions.PolarsError:
        shown = glob if len(glob) <= 60 else f"{glob[:60]}..."
        raise InvalidParameterError(
            f"Policy.{name}: the glob {shown!r} ({len(glob):,} characters) is too complex to match "
            "(past the regex size limit); split it into shorter globs"
        ) from None


def _check_thresholds(review: float, escalate: float) -> None:
    """The rule across two fields; its message names them as ``review=`` and ``escalate=``."""
    if not 0 < review < escalate:
        # (review = 0 put every run, the cleanest included, at review without a reason)
        raise InvalidParameterError(
            f"Policy thresholds must satisfy 0 < review < escalate, got review={review}, escalate={escalate}"
        )


@dataclass(frozen=True)
class Policy:
    """Rules for a fleet of agents: stop conditions, tool tiers, escalation thresholds.

    Every field has a default, so ``Policy()`` works; ``Policy.from_toml(path)`` reads
    the file format described in the module docs (each TOML key is the field of the
    same name). A limit set to ``None`` (``false`` in TOML) is not checked.

    Parameters
    ----------
    max_steps : int or None, default=50
        Steps per run (LLM calls, tool calls, hand-offs) before the run should have stopped.
    max_consecutive_retries : int or None, default=3
        Consecutive retries of a tool call that failed (the same tool called again right
        after an error; LLM steps in between are skipped).
    max_runtime_s : float or None, default=300.0
        Seconds from the run's first to its last step.
    max_cost_usd : float or None, default=0.5
        Cost ceiling per run, retries included.
    max_tokens : int or None, default=200000
        Input plus output tokens per run.
    max_delegation_depth : int or None, default=3
        Longest allowed ``parent_run_id`` chain above a run (a run started by a run that
        was itself started by another has depth 2).
    read, write, delete : tuple of str or None, default=None
        Glob patterns (``*``, ``?``, ``[abc]``) over action names for each tier, ignoring
        case. ``None`` (or no globs) uses the built-in name words (:data:`DEFAULT_TIER_WORDS`): ``delete_record``,
        ``purgeCache`` -> delete; ``send_email``, ``update_ticket`` -> write. A tool
        matching several tiers gets the most dangerous one.
    require_approval : tuple of str, default=("delete",)
        Tiers whose calls need ``approved == true``. Most logs record approval only for
        destructive calls, so only ``delete`` needs it unless the policy says more.
    allowed : tuple of str, default=()
        Globs of the tools agents may call; when non-empty, any other tool call
        (LLM calls and ``handoff:`` steps excluded) is an ``unknown_tool``.
    review, escalate : float, default=0.4, 0.7
        Score thresholds of the ``review`` and ``escalate`` levels, ``0 < review < escalate <= 1``.
    min_confidence : float, default=0.3
        Steps with a lower ``confidence`` are ``low_confidence`` breaches.
    model : str or None, default=None
        Path of a saved escalation model (:func:`driftwatch.fit_escalation`), relative to
        the policy file; :func:`driftwatch.score_runs` uses it when given no ``model``.
    source : str or None, default=None
        The file this policy was read from (set by :meth:`from_toml`).

    Examples
    --------
    >>> import driftwatch as dw
    >>> p = dw.Policy(max_cost_usd=1.0)
    >>> p.max_cost_usd, p.require_approval, p.tier_of("delete_record")
    (1.0, ('delete',), 'delete')
    """

    max_steps: int | None = 50
    max_consecutive_retries: int | None = 3
    max_runtime_s: float | None = 300.0
    max_cost_usd: float | None = 0.5
    max_tokens: int | None = 200_000
    max_delegation_depth: int | None = 3
    read: tuple[str, ...] | None = None
    write: tuple[str, ...] | None = None
    delete: tuple[str, ...] | None = None
    require_approval: tuple[str, ...] = ("delete",)
    allowed: tuple[str, ...] = ()
    review: float = 0.4
    escalate: float = 0.7
    min_confidence: float = 0.3
    model: str | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in _CHECKED_FIELDS:
            object.__setattr__(self, name, _checked(name, getattr(self, name)))
        _check_thresholds(self.review, self.escalate)
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise InvalidParameterError(f"Policy.model must be a file path or None, got {self.model!r}")

    # ------------------------------------------------------------------ TOML

    @classmethod
    def from_toml(cls, path: str | Path) -> Policy:
        """Read a policy file.

        Parameters
        ----------
        path : str or pathlib.Path
            A TOML file with optional ``[limits]``, ``[tools]`` and ``[escalation]`` tables.

        Returns
        -------
        Policy

        Raises
        ------
        PolicyError
            The file cannot be read, is not valid TOML, or has an unknown table or key,
            a value of the wrong type or out of range; the message names the file, the
            key and its line.

        Examples
        --------
        >>> import pathlib, tempfile, driftwatch as dw
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "policy.toml"
        >>> _ = f.write_text("[limits]\\nmax_cost_usd = 1.5\\n")
        >>> dw.Policy.from_toml(f).max_cost_usd
        1.5
        """
        if not isinstance(path, str | os.PathLike):
            raise PolicyError(f"policy file path must be a path (str or pathlib.Path), got {type(path).__name__} {path!r}")
        if not str(path).strip():  # (an unset variable: Path("") is the current folder)
            raise PolicyError("policy file path is empty; expected a TOML file such as policy.toml")
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"policy file {p}: cannot be read ({exc})") from exc
        return cls.from_toml_text(text, source=str(p))

    @classmethod
    def from_toml_text(cls, text: str, *, source: str | None = None) -> Policy:
        """Parse policy TOML given as a string (see :meth:`from_toml`)."""
        where = f"policy file {source}" if source else "policy"
        try:
            doc = tomllib.loads(text.removeprefix("\ufeff"))  # (a byte-order mark: Windows editors)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{where}: invalid TOML: {exc}") from exc
        kwargs: dict[str, Any] = {}
        located: dict[str, tuple[str, int]] = {}  # key -> (table, line)
        for section, table in doc.items():
            if section not in _SECTIONS:
                tables = ["[" + s + "]" for s in _SECTIONS]
                if isinstance(table, dict):
                    line = _find_line(text, None, section, table_header=True)
                    raise PolicyError(f"{where}, line {line}: unknown table [{section}]; expected one of {tables}")
                line = _find_line(text, None, section)
                raise PolicyError(
                    f"{where}, line {line}: unknown top-level key '{section}'; keys belong in one of the "
                    f"tables {tables}"
                )
            if not isinstance(table, dict):
                line = _find_line(text, None, section)
                if line == 1:
                    line = _find_line(text, None, section, table_header=True)
                raise PolicyError(f"{where}, line {line}: '{section}' must be a table like [{section}]")
            for key, value in table.items():
                line = _find_line(text, section, key)
                if key not in _SECTIONS[section]:
                    raise PolicyError(
                        f"{where}, line {line}: unknown key '{key}' in [{section}]; expected one of "
                        f"{list(_SECTIONS[section])}"
                    )
                kwargs[key] = _convert(key, value, f"{where}, line {line}: [{section}] {key}")
                try:  # checked key by key (in file order): a wrong value is reported at its own key
                    kwargs[key] = _checked(key, kwargs[key])
                except InvalidParameterError as exc:
                    raise PolicyError(f"{where}, line {line}: [{section}] {key}: {exc}") from exc
                located[key] = (section, line)
        try:
            return cls(**kwargs, source=source)
        except InvalidParameterError as exc:
            # a rule across keys (0 < review < escalate): point at the first key in the file that the
            # message is about, by its "Policy.<key>" prefix or its "<key>=" values (not any word
            # of the message: a list of expected values names other keys)
            msg = str(exc)
            named = re.findall(r"^Policy\.(\w+)|\b(\w+)=", msg)
            about = {a or b for a, b in named}
            key = next((k for k in located if k in about), None)
            if key is not None:
                section, line = located[key]
                raise PolicyError(f"{where}, line {line}: [{section}] {key}: {msg}") from exc
            raise PolicyError(f"{where}: {msg}") from exc

    def to_toml(self, path: str | Path | None = None) -> str:
        """The policy as TOML text (readable again by :meth:`from_toml`); written to ``path`` when given.

        Examples
        --------
        >>> import driftwatch as dw
        >>> p = dw.Policy(max_steps=80, allowed=("search", "get_*"))
        >>> dw.Policy.from_toml_text(p.to_toml()) == p
        True
        """
        lines: list[str] = []
        for section, keys in _SECTIONS.items():
            lines.append(f"[{section}]")
            for key in keys:
                value = getattr(self, key)
                if value is None:
                    if key in _INT_LIMITS or key in _FLOAT_LIMITS:
                        lines.append(f"{key} = false")
                    continue  # tiers left to the built-in words, no model
                if key == "model" and self.source is not None and not Path(value).is_absolute():
                    # relative to this policy's file: written relative to the new file (or absolute)
                    where = self.model_path().absolute()  # type: ignore[union-attr]
                    value = os.path.relpath(where, Path(path).absolute().parent) if path is not None else str(where)
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        text = "\n".join(lines)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    # ------------------------------------------------------------------ helpers

    def model_path(self) -> Path | None:
        """The escalation model file, resolved against the policy file's folder."""
        if self.model is None:
            return None
        p = Path(self.model)
        if not p.is_absolute() and self.source is not None:
            p = Path(self.source).parent / p
        return p

    def tier_expr(self, action: pl.Expr | None = None) -> pl.Expr:
        """A Polars expression giving each action's tier (``delete``, ``write``, ``read`` or null).

        LLM calls and ``handoff:`` steps have no tier. Whitespace around a name is ignored, as
        case is: ``" delete_invoice"`` must not slip past ``delete = ["delete_*"]``.
        """
        action = pl.col("action") if action is None else action
        is_tool = (action != LLM_ACTION) & ~action.str.starts_with(HANDOFF_PREFIX)
        name = action.str.strip_chars()
        expr: pl.Expr = pl.lit(None, dtype=pl.String)
        for tier in ("read", "write", "delete"):  # later tiers win
            expr = pl.when(self._tier_match(tier, name)).then(pl.lit(tier)).otherwise(expr)
        return pl.when(is_tool).then(expr).otherwise(pl.lit(None, dtype=pl.String))

    def tier_of(self, action: str) -> str | None:
        """The tier of one action name (see :meth:`tier_expr`)."""
        return pl.select(self.tier_expr(pl.lit(action, dtype=pl.String))).item()

    def _tier_match(self, tier: str, name: pl.Expr) -> pl.Expr:
        """Whether ``name`` (stripped) is in ``tier``: its globs, else the built-in words."""
        globs = getattr(self, tier)
        if not globs:  # none given (or an empty list): the built-in words
            return name.str.contains(_words_regex(DEFAULT_TIER_WORDS[tier]))
        # tier globs ignore case, as the words do: "delete_*" must not miss DELETE_INVOICE
        return globs_expr(name, globs, ignore_case=True)  # type: ignore[return-value]


def _convert(key: str, value: Any, where: str) -> Any:
    """Check one TOML value's type and convert it to the dataclass field's type."""
    if key in _INT_LIMITS:
        if value is False:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{where} must be an integer (or false to disable), got {value!r}")
        return value
    if key in _FLOAT_LIMITS:
        if value is False:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyError(f"{where} must be a number (or false to disable), got {value!r}")
        return float(value)
    if key in ("review", "escalate", "min_confidence"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyError(f"{where} must be a number in [0, 1], got {value!r}")
        return float(value)
    if key in _GLOB_LISTS or key == "require_approval":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyError(f"{where} must be a list of strings, got {value!r}")
        return tuple(value)
    if key == "model":
        if not isinstance(value, str):
            raise PolicyError(f"{where} must be a file path string, got {value!r}")
        return value
    raise PolicyError(f"{where}: unhandled key")  # pragma: no cover - _SECTIONS and _convert agree


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    return "[" + ", ".join(_toml_str(v) for v in value) + "]"


#: TOML basic-string escapes; every other control character is written as \uXXXX.
_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_str(s: str) -> str:
    """``s`` as a TOML basic string (control characters escaped, so the file reads back)."""
    return '"' + "".join(
        _TOML_ESCAPES.get(ch) or (f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch) for ch in s
    ) + '"'


_HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _key_re(key: str) -> str:
    k = re.escape(key)
    return rf"""(?:{k}|"{k}"|'{k}')"""


def _find_line(text: str, section: str | None, key: str, *, table_header: bool = False) -> int:
    """1-based line of ``key`` inside ``[section]`` (tomllib does not report lines).

    Scans the text, tracking the current ``[table]``; also finds dotted keys
    (``limits.max_steps = 3``) and keys in inline tables. Falls back to the table's
    header line, then to line 1.
    """
    lines = text.splitlines()
    current: str | None = None
    header_line: int | None = None
    kre = _key_re(key)
    assign = re.compile(rf"^\s*{kre}\s*=")
    if section is not None:
        dotted = re.compile(rf"^\s*{_key_re(section)}\s*\.\s*{kre}\s*=")
        inline = re.compile(rf"(?:^|[{{,])\s*{kre}\s*=")
    for i, raw in enumerate(lines, start=1):
        m = _HEADER_RE.match(raw)
        if m:
            current = m.group(1).strip().strip("\"'")
            if table_header and current.split(".")[0].strip().strip("\"'") == key:
                return i
            if section is not None and current == section and header_line is None:
                header_line = i
            parts = [p.strip().strip("\"'") for p in current.split(".")]
            if section is not None and parts == [section, key]:  # a sub-table [section.key]
                return i
            continue
        if section is None:
            if current is None and assign.match(raw):
                return i
            continue
        if current == section and assign.match(raw):
            return i
        if current is None and dotted.match(raw):
            return i
        if current is None and re.match(rf"^\s*{_key_re(section)}\s*=", raw) and inline.search(
            raw.split("=", 1)[1]
        ):
            return i
    return header_line or 1


# --------------------------------------------------------------------------- regex helpers


def _class_chars(text: str) -> str:
    """Characters of a glob class as literal members of a Rust regex class (every character
    that could mean something there, ``[``, ``&&``, ``--``, ``~~`` included, escaped)."""
    return "".join("\\" + ch if ch in "\\-[]&~|^" else ch for ch in text)


def glob_to_regex(glob: str) -> str:
    """An unanchored Rust/Python regex for a shell glob, with :func:`fnmatch.fnmatchcase`'s
    meaning: ``*``, ``?``, classes ``[abc]``, ``[a-z]``, ``[!abc]`` (or bash's ``[^abc]``), a ``]`` first in a class
    (``[]]``) is a member, ``[[]`` matches ``[``, and an ``[`` without its ``]`` is literal.
    Inside a class everything is a literal character or a range (Rust's nested classes and set
    operations never apply). ``*`` and ``?`` match any character, a line break included
    (``delete_*`` matches ``"delete_\\ninvoice"``, as fnmatch does), whatever flags surround the regex."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            out.append("(?s:.*)")
        elif c == "?":
            out.append("(?s:.)")
        elif c == "[":
            j = i
            if j < n and glob[j] in "!^":  # (a leading ^ negates too, as in bash and before)
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                continue
            body = glob[i:j]
            i = j + 1
            neg = body[:1] in ("!", "^")
            body = body[1:] if neg else body
            # split at range dashes as fnmatch does (a dash first or last is a member)
            chunks: list[str] = []
            k = 1 if body else 0
            lo = 0
            while True:
                k = body.find("-", k)
                if k < 0 or k == len(body) - 1:
                    break
                chunks.append(body[lo:k])
                lo = k + 1
                k = k + 2
            chunks.append(body[lo:])
            # drop empty ranges (a > b), as fnmatch does
            for m in range(len(chunks) - 1, 0, -1):
                if chunks[m - 1] and chunks[m] and chunks[m - 1][-1] > chunks[m][0]:
                    chunks[m - 1] = chunks[m - 1][:-1] + chunks[m][1:]
                    del chunks[m]
            members = "-".join(_class_chars(ch) for ch in chunks)
            if not members:
                out.append("(?s:.)" if neg else "[^\\s\\S]")  # [!] is any character; [] none
            else:
                out.append("[" + ("^" if neg else "") + members + "]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def globs_regex(globs: Sequence[str]) -> str | None:
    """One anchored alternation matching any of ``globs`` (``None`` when empty).

    Fine for a few hundred globs; a long list compiles past Polars' regex size limit (10 MB):
    match with :func:`globs_expr`, which splits it (and matches plain names by hash lookup).
    """
    if not globs:
        return None
    return "^(?:" + "|".join(glob_to_regex(g) for g in globs) + ")$"


#: Glob characters with a meaning: a glob without any of them matches only itself (fnmatchcase).
GLOB_META = "*?["

#: Longest pattern (in characters) of one regex :func:`globs_regexes` builds. Polars refuses a regex
#: compiled past 10 MB: one alternation of ~7,600 plain names (~190,000 characters) or ~3,900
#: ``*`` globs under ``(?i)`` (~80,000). The costliest globs measured (``?``, ``*``, ``[!k]`` under
#: ``(?i)``) still compile at 32,000 characters, eight times this.
REGEX_CHUNK_CHARS = 4_000


def is_plain_name(glob: str) -> bool:
    """Whether ``glob`` has no glob characters (``*``, ``?``, ``[``): it matches that name only."""
    return not any(c in glob for c in GLOB_META)


def globs_regexes(globs: Sequence[str], *, max_chars: int = REGEX_CHUNK_CHARS) -> list[str]:
    """Anchored alternations that together match what ``globs`` match, each at most ``max_chars``
    long (a glob longer than that alone in its own); ``[]`` when there are no globs."""
    out: list[str] = []
    part: list[str] = []
    size = 0
    for g in globs:
        rx = glob_to_regex(g)
        if part and size + len(rx) > max_chars:
            out.append("^(?:" + "|".join(part) + ")$")
            part, size = [], 0
        part.append(rx)
        size += len(rx) + 1
    if part:
        out.append("^(?:" + "|".join(part) + ")$")
    return out


def fold_case(name: pl.Expr) -> pl.Expr:
    """``name`` lower-cased the way a ``(?i)`` regex compares an ASCII name: ``DELETE``, and the
    Kelvin sign and the long s (``\\u212a``, ``\\u017f``, which case-fold to ``k`` and ``s``), as
    ``(?i)delete`` and ``(?i)kill`` would match them."""
    return name.str.to_lowercase().str.replace_all("\u017f", "s", literal=True)


def globs_expr(name: pl.Expr, globs: Sequence[str], *, ignore_case: bool = False) -> pl.Expr | None:
    """Whether ``name`` matches any of ``globs`` (:func:`fnmatch.fnmatchcase`), as a Polars expression
    (``None`` when there are no globs), for lists of any length.

    Plain names (no ``*``, ``?``, ``[``) are looked up in a hash set, the other globs are split into
    regexes of bounded size (:func:`globs_regexes`). ``ignore_case``: as a ``(?i)`` regex would (plain
    ASCII names are compared lower-cased with :func:`fold_case`, other plain names go to the regexes).

    Examples
    --------
    >>> import polars as pl
    >>> from driftwatch.policy import globs_expr
    >>> s = pl.Series(["get_user", "GET_USER", "get_\\nuser", "search", "put"])
    >>> s.to_frame("a").select(globs_expr(pl.col("a"), ["get_*", "search"]))["a"].to_list()
    [True, False, True, True, False]
    """
    if not globs:
        return None
    if ignore_case:
        plain = sorted({g.lower() for g in globs if is_plain_name(g) and g.isascii()})
        rest = [g for g in globs if not (is_plain_name(g) and g.isascii())]
    else:
        plain = sorted({g for g in globs if is_plain_name(g)})
        rest = [g for g in globs if not is_plain_name(g)]
    hits: list[pl.Expr] = []
    if plain:
        key = fold_case(name) if ignore_case else name
        hits.append(key.is_in(pl.Series(plain, dtype=pl.String).implode()))
    prefix = "(?i)" if ignore_case else ""
    hits += [name.str.contains(prefix + rx) for rx in globs_regexes(rest)]
    return hits[0] if len(hits) == 1 else pl.any_horizontal(hits)


def _words_regex(words: Sequence[str]) -> str:
    """Match an action whose name contains one of ``words`` as a whole word.

    Words are delimited by non-letters or camelCase humps: ``delete_record``,
    ``record.delete``, ``deleteRecord``, ``recordDelete`` and ``DELETE_ROW`` match
    ``delete``; ``undeleted`` and ``get_posts`` (for ``post``) do not.
    """
    low = "|".join(words)
    cap = "|".join(w.capitalize() for w in words)
    up = "|".join(w.upper() for w in words)
    return (
        rf"(?:^|[^A-Za-z])(?:{low})(?:$|[^a-z])"
        rf"|(?:{cap})(?:$|[^a-z])"
        rf"|(?:^|[^A-Z])(?:{up})(?:$|[^A-Z])"
    )


# --------------------------------------------------------------------------- formatting exprs


def fmt_num(expr: pl.Expr, decimals: int) -> pl.Expr:
    """Format a float expression with a fixed number of decimals (``1.3`` -> ``"1.30"``)."""
    scale = 10**decimals
    # (a value past Int64 once scaled, 1e17 or an infinite sum, is written as it is: a
    # strict cast failed the whole audit)
    scaled = (expr.abs() * scale).round(0).cast(pl.Int64, strict=False)
    whole = (scaled // scale).cast(pl.String)
    sign = pl.when(expr < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    if decimals == 0:
        text = pl.concat_str(sign, whole)
    else:
        frac = (scaled % scale).cast(pl.String).str.zfill(decimals)
        text = pl.concat_str(sign, whole, pl.lit("."), frac)
    return pl.when(scaled.is_null() & expr.is_not_null()).then(expr.cast(pl.String)).otherwise(text)


def fmt_money(expr: pl.Expr) -> pl.Expr:
    """``$1.30``; amounts under a cent keep four decimals (``$0.0042``)."""
    return pl.concat_str(
        pl.lit("$"),
        pl.when(expr.abs() < 0.01).then(fmt_num(expr, 4)).otherwise(fmt_num(expr, 2)),
    )


def fmt_vs_limit(value: pl.Expr, limit: float, *, money: bool = False) -> tuple[pl.Expr, str]:
    """``(value's text, limit's text)`` for "value > limit" sentences: the limit with as many
    decimals as it has (``0.305``, ``$0.505``), the value with as many as the limit shows, and
    exact where it would still read as the limit (``$0.50004``, ``0.2999999``)."""
    text = _money(limit) if money else limit_text(limit, 2)
    prefix = "$" if money else ""
    exact = pl.concat_str(pl.lit(prefix), value.cast(pl.String))
    if "e" in text:  # a limit too small (or large) for decimals: the value as it is
        return exact, text
    decimals = len(text.rsplit(".", 1)[1]) if "." in text else 0
    default = 4 if money and abs(limit) < 0.01 else 2
    shown = fmt_money(value) if money and decimals <= default else pl.concat_str(
        pl.lit(prefix), fmt_num(value, max(decimals, 2))
    )
    return fmt_past(shown, text, exact), text


def fmt_seconds_vs_limit(value: pl.Expr, limit: float) -> tuple[pl.Expr, str]:
    """``(value's text, limit's text)`` for "runtime 412s > limit 300s": the value with as
    many decimals as the limit shows (``300.4s > limit 300.3s``), exact where it would still
    read as the limit (``300.34s > limit 300.3s``)."""
    text = f"{limit:g}"
    if "e" in text:
        return value.cast(pl.String), text
    decimals = len(text.rsplit(".", 1)[1]) if "." in text else 0
    return fmt_past(fmt_num(value, decimals), text, value.cast(pl.String)), text


def fmt_past(shown: pl.Expr, limit_text: str, exact: pl.Expr) -> pl.Expr:
    """``shown`` (a value formatted as its limit is), or ``exact`` where ``shown`` reads as
    the limit itself: a breach must not read ``cost $0.50 > ceiling $0.50``."""
    return pl.when(shown == pl.lit(limit_text)).then(exact).otherwise(shown)


def fmt_int(expr: pl.Expr) -> pl.Expr:
    """An integer with thousands separators (``250000`` -> ``"250,000"``)."""
    n = expr.round(0).cast(pl.Int64, strict=False)
    s = n.cast(pl.String)
    grouped = s.str.reverse().str.replace_all(r"(\d{3})", "$1,").str.reverse().str.strip_prefix(",").str.replace(
        r"^-,", "-"
    )
    return pl.when(n.is_null() & expr.is_not_null()).then(expr.cast(pl.String)).otherwise(grouped)


def _money(x: float) -> str:
    """A limit in USD: cents (four decimals below one cent), more digits when they round it."""
    return "$" + limit_text(x, 4 if abs(x) < 0.01 else 2)


def limit_text(x: float, decimals: int) -> str:
    """``x`` with ``decimals`` decimals, or with the :data:`LIMIT_DIGITS` significant digits it
    is compared at when those round it: a limit of 0.305 must not read "0.30" (then
    "0.302 < 0.30" would read as false)."""
    text = f"{x:.{decimals}f}"
    if float(text) == _at_limit_digits(x):
        return text
    return f"{_at_limit_digits(x):.{LIMIT_DIGITS}g}"


#: Significant digits a run total or a confidence is compared with its limit at: a sum of
#: Float32 costs of $0.05 each (0.05000000074505806) is $0.50, not over a $0.50 ceiling.
LIMIT_DIGITS = 7


def _at_limit_digits(x: float) -> float:
    return float(f"{x:.{LIMIT_DIGITS}g}")


def exceeds(value: pl.Expr, limit: float) -> pl.Expr:
    """``value > limit``, both at :data:`LIMIT_DIGITS` significant digits."""
    return value.round_sig_figs(LIMIT_DIGITS) > _at_limit_digits(limit)


def below(value: pl.Expr, limit: float) -> pl.Expr:
    """``value < limit``, both at :data:`LIMIT_DIGITS` significant digits."""
    return value.round_sig_figs(LIMIT_DIGITS) < _at_limit_digits(limit)


# --------------------------------------------------------------------------- checks


def as_policy(policy: Policy | str | Path | None) -> Policy:
    """A :class:`Policy` from a Policy, a path to a policy TOML file, or ``None`` (defaults).

    Examples
    --------
    >>> from driftwatch.policy import as_policy
    >>> as_policy(None).max_steps
    50
    """
    if policy is None:
        return Policy()
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str | Path):
        return Policy.from_toml(policy)
    raise InvalidParameterError(
        f"policy must be a driftwatch Policy, a path to a policy TOML file or None, got {type(policy).__name__}"
    )


_as_policy = as_policy  # the name other modules used first


def empty_violations() -> pl.DataFrame:
    """An empty :func:`check_policy` result with the right dtypes."""
    return pl.DataFrame(schema=VIOLATION_SCHEMA)


def _severity_by_ratio(value: pl.Expr, limit: float) -> pl.Expr:
    return pl.when(value >= 2 * limit).then(pl.lit("critical")).otherwise(pl.lit("warning"))


def _run_limit_violations(
    lf: pl.LazyFrame, policy: Policy, features: pl.DataFrame | None = None
) -> list[pl.LazyFrame]:
    """Run-level stop conditions: one row per run and rule, at the step the limit was crossed.

    Totals are computed for every run in one group-by (or taken from ``features``); only the
    (few) runs over a limit are sorted to find the crossing step.
    """
    tokens = pl.col("input_tokens").fill_null(0) + pl.col("output_tokens").fill_null(0)
    conds: list[pl.Expr] = []
    limits = {
        "max_steps": policy.max_steps,
        "max_runtime": policy.max_runtime_s,
        "max_tokens": policy.max_tokens,
        "max_cost": policy.max_cost_usd,
    }
    if all(v is None for v in limits.values()) and policy.max_consecutive_retries is None:
        return []
    slack = 1.0
    if features is not None:
        # the same totals, from run_features (its cost is rounded to 12 significant digits:
        # the cost test lets a hair more runs through, and the exact running sums below decide)
        totals = features.lazy().select(
            "run_id",
            pl.col("n_steps").alias("_n"),
            pl.col("runtime_s").alias("_runtime"),
            pl.col("tokens").alias("_tokens"),
            pl.col("cost_usd").alias("_cost"),
            pl.col("n_errors").alias("_errors"),
        )
        slack = 1.0 - 1e-9
    else:
        totals = lf.group_by("run_id").agg(
            pl.len().alias("_n"),
            ((pl.col("ts").max() - pl.col("ts").min()).dt.total_microseconds() / 1e6).alias("_runtime"),
            tokens.sum().alias("_tokens"),
            pl.col("cost_usd").sum().round_sig_figs(12).alias("_cost"),  # as run_features (and below)
            (pl.col("status") == "error").sum().alias("_errors"),
        )
    if policy.max_steps is not None:
        conds.append(pl.col("_n") > policy.max_steps)
    if policy.max_runtime_s is not None:
        conds.append(pl.col("_runtime") > policy.max_runtime_s)
    if policy.max_tokens is not None:
        conds.append(pl.col("_tokens") > policy.max_tokens)
    if policy.max_cost_usd is not None:
        conds.append(pl.col("_cost") > policy.max_cost_usd * slack)
    if policy.max_consecutive_retries is not None:
        # a streak of k+1 retries needs at least k+1 failed calls
        conds.append(pl.col("_errors") > policy.max_consecutive_retries)
    cand = totals.filter(pl.any_horizontal(conds)).select("run_id")
    ev = (
        lf.join(cand, on="run_id", how="semi")
        .sort("run_id", "step")
        .with_columns(
            pl.int_range(1, pl.len() + 1).over("run_id").alias("_i"),
            ((pl.col("ts") - pl.col("ts").min().over("run_id")).dt.total_microseconds() / 1e6).alias(
                "_elapsed"
            ),
            tokens.cum_sum().over("run_id").alias("_cum_tokens"),
            # rounded to 12 significant digits, as run_features' cost: whether $0.10 + $0.20 +
            # $0.15 + $0.05 passes a $0.50 ceiling must not depend on the order of the additions
            pl.col("cost_usd").fill_null(0.0).cum_sum().over("run_id").round_sig_figs(12).alias("_cum_cost"),
        )
    )
    out: list[pl.LazyFrame] = []

    def first_cross(
        rule: str, cond: pl.Expr, value: pl.Expr, limit: float, detail: pl.Expr, over: pl.Expr | None = None
    ) -> None:
        """One row per run where ``cond`` first holds (and ``over``, on the run's ``value``, when given)."""
        rows = (
            ev.group_by("run_id")
            .agg(
                pl.col("agent").first(),
                pl.col("step").filter(cond).first().alias("step"),
                pl.col("action").filter(cond).first().alias("action"),
                value.alias("value"),
            )
            .filter(pl.col("step").is_not_null() & (over if over is not None else pl.lit(True)))
            .with_columns(
                pl.lit(rule).alias("rule"),
                _severity_by_ratio(pl.col("value"), limit).alias("severity"),
                pl.lit(float(limit)).alias("limit"),
            )
            .with_columns(detail.alias("detail"))
        )
        out.append(rows)

    if policy.max_steps is not None:
        lim = policy.max_steps
        first_cross(
            "max_steps",
            pl.col("_i") == lim + 1,
            pl.len().cast(pl.Float64),
            lim,
            pl.concat_str(fmt_num(pl.col("value"), 0), pl.lit(f" steps > limit {lim}")),
        )
    if policy.max_runtime_s is not None:
        lim_f = policy.max_runtime_s
        first_cross(
            "max_runtime",
            pl.col("_elapsed") > lim_f,
            pl.col("_elapsed").max(),
            lim_f,
            pl.concat_str(
                pl.lit("runtime "), fmt_seconds_vs_limit(pl.col("value"), lim_f)[0], pl.lit(f"s > limit {lim_f:g}s"),
            ),
        )
    if policy.max_tokens is not None:
        lim = policy.max_tokens
        first_cross(
            "max_tokens",
            pl.col("_cum_tokens") > lim,
            pl.col("_cum_tokens").max().cast(pl.Float64),
            lim,
            pl.concat_str(pl.lit("tokens "), fmt_int(pl.col("value")), pl.lit(f" > limit {lim:,}")),
        )
    if policy.max_cost_usd is not None:
        lim_f = policy.max_cost_usd
        first_cross(
            "max_cost",
            exceeds(pl.col("_cum_cost"), lim_f),
            pl.col("_cum_cost").last(),  # the run's cost (refunds included), as the score reads it
            lim_f,
            pl.concat_str(
                pl.lit("cost "),
                fmt_vs_limit(pl.col("value"), lim_f, money=True)[0],
                pl.lit(f" > ceiling {_money(lim_f)}"),
            ),
            over=exceeds(pl.col("value"), lim_f),  # a run brought back under by a refund is not over
        )
    if policy.max_consecutive_retries is not None:
        out.append(_retry_streaks(ev, policy.max_consecutive_retries))
    return out


def _retry_streaks(ev: pl.LazyFrame, limit: int) -> pl.LazyFrame:
    """Consecutive retries: a tool call repeating the previous tool call of the run, which failed.

    ``ev`` is sorted by ``(run_id, step)``. LLM steps are skipped; the streak length is a
    running count of retries since the last non-retry tool call (global cumulative sums,
    no per-run window needed because a run's first tool call is never a retry).
    """
    tools = ev.filter(pl.col("action") != LLM_ACTION).with_columns(
        (
            (pl.col("run_id") == pl.col("run_id").shift(1))
            & (pl.col("action") == pl.col("action").shift(1))
            & (pl.col("status").shift(1) == "error")
        )
        .fill_null(False)
        .alias("_retry")
    )
    c = pl.col("_retry").cast(pl.Int64).cum_sum()
    tools = tools.with_columns(
        (c - pl.when(~pl.col("_retry")).then(c).otherwise(None).forward_fill()).alias("_streak")
    )
    cond = pl.col("_streak") == limit + 1
    return (
        tools.group_by("run_id")
        .agg(
            pl.col("agent").first(),
            pl.col("step").filter(cond).first().alias("step"),
            pl.col("action").filter(cond).first().alias("action"),
            pl.col("_streak").max().cast(pl.Float64).alias("value"),
        )
        .filter(pl.col("step").is_not_null())
        .with_columns(
            pl.lit("max_consecutive_retries").alias("rule"),
            _severity_by_ratio(pl.col("value"), limit).alias("severity"),
            pl.lit(float(limit)).alias("limit"),
        )
        .with_columns(
            pl.concat_str(
                pl.col("action"),
                pl.lit(" retried "),
                fmt_num(pl.col("value"), 0),
                pl.lit(f"x in a row after errors > limit {limit}"),
            ).alias("detail")
        )
    )


def _event_violations(lf: pl.LazyFrame, policy: Policy) -> list[pl.LazyFrame]:
    """Per-step rules: unapproved actions, unknown tools, low confidence."""
    out: list[pl.LazyFrame] = []
    action = pl.col("action")
    is_tool = (action != LLM_ACTION) & ~action.str.starts_with(HANDOFF_PREFIX)

    # classify the (few) distinct actions once, then select events with a hash lookup:
    # far cheaper than running the tier and allowed-list regexes over every event
    allowed = globs_expr(action, policy.allowed)  # exact names and globs (case and spaces count)
    need_tiers = list(policy.require_approval)
    acts = pl.DataFrame({"action": []}, schema={"action": pl.String})
    if need_tiers or allowed is not None:
        acts = (
            lf.select(pl.col("action").unique())
            .collect()
            .with_columns(
                policy.tier_expr().alias("_tier"),
                (is_tool & ~allowed).fill_null(False).alias("_outside")
                if allowed is not None
                else pl.lit(False).alias("_outside"),
            )
        )
    tiered = acts.filter(pl.col("_tier").is_in(need_tiers)) if need_tiers else acts.head(0)
    if tiered.height:
        unapproved = (
            lf.filter(pl.col("action").is_in(tiered["action"].implode()))
            .filter(pl.col("approved").fill_null(False).not_())
            .join(tiered.lazy().select("action", "_tier"), on="action", how="left")
            .select(
                "run_id",
                "agent",
                "step",
                "action",
                pl.lit("unapproved_action").alias("rule"),
                pl.when(pl.col("_tier") == "delete")
                .then(pl.lit("critical"))
                .otherwise(pl.lit("warning"))
                .alias("severity"),
                pl.concat_str(
                    action,
                    pl.lit(" ("),
                    pl.col("_tier"),
                    pl.lit(" tier) without approval ("),
                    pl.when(pl.col("approved").is_null())
                    .then(pl.lit("approval not recorded"))
                    .otherwise(pl.lit("approved=false")),
                    pl.lit(")"),
                ).alias("detail"),
                pl.lit(None, dtype=pl.Float64).alias("value"),
                pl.lit(None, dtype=pl.Float64).alias("limit"),
            )
        )
        out.append(unapproved)

    outside_actions = acts.filter(pl.col("_outside"))["action"] if acts.height else acts["action"]
    # a failed tool call only: an LLM step's "invalid argument: max_tokens" or a failed
    # hand-off is not a tool that cannot run
    is_err = ((pl.col("status") == "error") & is_tool).fill_null(False)
    cand = lf.filter(is_err | pl.col("action").is_in(outside_actions.implode()))
    # the with_columns keeps the optimiser from fusing the regex into the cheap filter above
    cand = cand.with_columns(
        pl.when(is_err)
        .then(pl.concat_str(pl.col("error_type").fill_null(""), pl.lit(" | "), pl.col("result").fill_null("")))
        .alias("_err_text"),
        pl.col("action").is_in(outside_actions.implode()).alias("_outside"),
    )
    # quote the text that says the tool cannot run (the result, else the error type)
    msg = (
        pl.when(pl.col("result").str.contains(UNKNOWN_TOOL_PATTERN).fill_null(False))
        .then(pl.col("result"))
        .otherwise(pl.coalesce(pl.col("error_type"), pl.col("result"), pl.lit("")))
        .str.slice(0, 120)
    )
    out.append(
        cand.filter(pl.col("_outside") | (
            pl.col("_err_text").str.contains(UNKNOWN_TOOL_PATTERN)
            & ~(
                pl.col("_err_text").str.contains(SQL_ERROR_PATTERN)
                & ~pl.col("_err_text").str.contains(TOOL_WORDS)
            )
            & ~(
                pl.col("_err_text").str.contains(CLOUD_ERROR_PATTERN)
                & ~pl.col("_err_text").str.replace_all(CLOUD_RESOURCE_PATTERN, "").str.contains(TOOL_WORDS)
            )
        ).fill_null(False))
        .select(
            "run_id",
            "agent",
            "step",
            "action",
            pl.lit("unknown_tool").alias("rule"),
            pl.lit("warning").alias("severity"),
            pl.when(pl.col("_outside"))
            .then(pl.concat_str(pl.lit("unknown tool: "), action, pl.lit(" (not in allowed tools)")))
            .otherwise(pl.concat_str(pl.lit("tool cannot run: "), action, pl.lit(" failed: "), msg))
            .alias("detail"),
            pl.lit(None, dtype=pl.Float64).alias("value"),
            pl.lit(None, dtype=pl.Float64).alias("limit"),
        )
    )

    mc = policy.min_confidence
    if mc > 0:
        out.append(
            lf.filter(below(pl.col("confidence"), mc)).select(
                "run_id",
                "agent",
                "step",
                "action",
                pl.lit("low_confidence").alias("rule"),
                pl.lit("warning").alias("severity"),
                pl.concat_str(
                    pl.lit("confidence "),
                    fmt_vs_limit(pl.col("confidence"), mc)[0],
                    pl.lit(f" < {limit_text(mc, 2)} at "),
                    action,
                ).alias("detail"),
                pl.col("confidence").alias("value"),
                pl.lit(mc).alias("limit"),
            )
        )
    return out


#: Rejection reasons that do not make a run incomplete: spans wrapping the steps (not steps),
#: re-delivered copies of a step that was read, and rows without a run.
NOT_MISSING_REASONS = ("not_a_step", "duplicate_step", "null_run_id")


def rejected_steps(rejected: pl.DataFrame | None) -> pl.DataFrame:
    """The rejected rows that were steps of a run: what an audit of the run is missing.

    Parameters
    ----------
    rejected : polars.DataFrame or None
        ``ReadResult.rejected`` (canonical columns, ``reason``, ...).

    Returns
    -------
    polars.DataFrame
        Those rows (``run_id``, ``action``, ``approved``, ``step``, ``agent``, ``reason``)
        whose reason is not in :data:`NOT_MISSING_REASONS`, one per step (a step delivered
        twice and rejected twice is one missing step).
    """
    cols = {"run_id": pl.String, "agent": pl.String, "step": pl.Int64, "action": pl.String,
            "approved": pl.Boolean, "reason": pl.String}
    if rejected is None or rejected.height == 0 or "reason" not in rejected.columns:
        return pl.DataFrame(schema=cols)
    present = [pl.col(c).cast(t) if c in rejected.columns else pl.lit(None, dtype=t).alias(c) for c, t in cols.items()]
    return distinct_steps(rejected.lazy().select(present).filter(
        pl.col("run_id").is_not_null() & ~pl.col("reason").is_in(NOT_MISSING_REASONS)
    ).collect())


def distinct_steps(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with one row per ``(run_id, step)`` (the first; rows without a step all kept)."""
    numbered = pl.col("step").is_not_null()
    if rows.height == 0 or not rows.filter(numbered).select(pl.struct("run_id", "step").is_duplicated().any()).item():
        return rows
    return pl.concat([
        rows.filter(numbered).unique(subset=["run_id", "step"], keep="first", maintain_order=True),
        rows.filter(~numbered),
    ])


def check_rejected(rejected: pl.DataFrame | None, policy: Policy | None = None) -> pl.DataFrame:
    """``unapproved_action`` breaches among the steps the reader rejected.

    A call in a ``require_approval`` tier whose row could not be read (an unreadable
    ``approved`` flag, a status spelling the reader does not know, ...) is not checked by
    :func:`check_policy`, which sees valid rows only. Unless its ``approved`` was read as
    ``true`` it is a breach like an unapproved call, with the rejection reason in ``detail``
    (after ``approved=false;`` when a person refused the call, as :func:`check_policy` says it).

    Parameters
    ----------
    rejected : polars.DataFrame or None
        ``ReadResult.rejected``.
    policy : Policy, optional

    Returns
    -------
    polars.DataFrame
        :data:`VIOLATION_SCHEMA` rows.

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> from driftwatch.policy import check_rejected
    >>> bad = pl.DataFrame({"run_id": ["r"], "step": [2], "action": ["delete_invoice"],
    ...                     "approved": [None], "reason": ["bad_value:approved"]})
    >>> check_rejected(bad)["detail"].to_list()
    ['delete_invoice (delete tier) without approval (step rejected: bad_value:approved)']
    """
    policy = _as_policy(policy)
    steps = rejected_steps(rejected)
    need = tuple(policy.require_approval)
    if steps.height == 0 or not need:
        return empty_violations()
    tiered = steps.filter(pl.col("action").is_not_null()).with_columns(policy.tier_expr().alias("_tier")).filter(
        pl.col("_tier").is_in(need) & ~pl.col("approved").fill_null(False)
    )
    return tiered.select(
        "run_id",
        pl.col("agent").fill_null("default"),
        "step",
        "action",
        pl.lit("unapproved_action").alias("rule"),
        pl.when(pl.col("_tier") == "delete").then(pl.lit("critical")).otherwise(pl.lit("warning")).alias("severity"),
        pl.concat_str(
            pl.col("action"), pl.lit(" ("), pl.col("_tier"), pl.lit(" tier) without approval ("),
            # a person refused it (approved read as false): said as check_policy says it
            pl.when(pl.col("approved").eq(False)).then(pl.lit("approved=false; ")).otherwise(pl.lit("")),
            pl.lit("step rejected: "), pl.col("reason"), pl.lit(")"),
        ).alias("detail"),
        pl.lit(None, dtype=pl.Float64).alias("value"),
        pl.lit(None, dtype=pl.Float64).alias("limit"),
    ).cast(VIOLATION_SCHEMA)  # type: ignore[arg-type]


def check_delegation(run_features: pl.DataFrame | pl.LazyFrame, policy: Policy | None = None) -> pl.DataFrame:
    """Delegation chains deeper than ``policy.max_delegation_depth`` (a fleet-level check).

    The depth of a run is the number of ``parent_run_id`` links above it (a parent that
    is not in the table still counts as one level). Depths are computed by pointer
    doubling: each round joins the small ``run -> ancestor`` table with itself, so a
    chain of length ``d`` needs ``log2(d) + 1`` joins, never a loop over runs. Runs
    whose chain never reaches a root (``parent_run_id`` cycles) are reported as
    ``critical``. A run whose ``parent_run_id`` is its own ``run_id`` has no parent (a span
    export read with trace ids as run ids names the trace's root there), not a cycle.

    Parameters
    ----------
    run_features : polars.DataFrame or polars.LazyFrame
        One row per run with at least ``run_id`` and ``parent_run_id`` (``agent`` used
        when present), e.g. :func:`driftwatch.run_features` output, concatenated across chunks.
    policy : Policy, optional
        Defaults to ``Policy()``.

    Returns
    -------
    polars.DataFrame
        :data:`VIOLATION_SCHEMA` rows with ``rule = "delegation_depth"``, ``step`` and
        ``action`` null, ``value`` the depth (null for a cycle).

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> from driftwatch.policy import check_delegation
    >>> runs = pl.DataFrame({"run_id": ["a", "b", "c", "d"], "parent_run_id": [None, "a", "b", "c"]})
    >>> check_delegation(runs, dw.Policy(max_delegation_depth=2))["detail"].to_list()
    ['delegation depth 3 > limit 2 (chain root a)']
    """
    policy = _as_policy(policy)
    limit = policy.max_delegation_depth
    df = run_features.collect() if isinstance(run_features, pl.LazyFrame) else run_features
    if limit is None or df.height == 0:
        return empty_violations()
    missing = [c for c in ("run_id", "parent_run_id") if c not in df.columns]
    if missing:
        raise InvalidParameterError(
            f"check_delegation needs per-run rows with columns run_id, parent_run_id; missing {missing}"
        )
    agent = pl.col("agent") if "agent" in df.columns else pl.lit(None, dtype=pl.String)
    # only linked runs matter: a chain stops at a run without a parent, in the table or not
    # (filtered first: usually a few percent of the runs). A run named as its own parent has
    # none: span exports read with trace ids as run ids name the trace's root there
    runs = (
        df.lazy()
        .filter(pl.col("parent_run_id").is_not_null()
                & (pl.col("parent_run_id").cast(pl.String) != pl.col("run_id").cast(pl.String)))
        .select(
            pl.col("run_id").cast(pl.String), agent.cast(pl.String).alias("agent"),
            pl.col("parent_run_id").cast(pl.String),
        )
        .unique("run_id", keep="first", maintain_order=True)
        .collect()
    )
    if runs.height == 0:
        return empty_violations()
    cur = runs.select(
        "run_id",
        pl.col("parent_run_id").alias("_ptr"),
        pl.col("parent_run_id").is_not_null().cast(pl.Int64).alias("_dist"),
    )
    n = cur.height
    max_rounds = max(1, math.ceil(math.log2(n + 1))) + 2
    for _ in range(max_rounds):
        step = cur.join(
            cur.select(pl.col("run_id").alias("_ptr"), pl.col("_ptr").alias("_ptr2"), pl.col("_dist").alias("_d2")),
            on="_ptr",
            how="left",
        )
        active = step["_ptr2"].is_not_null()
        if not active.any():
            break
        cur = step.select(
            "run_id",
            pl.coalesce("_ptr2", "_ptr").alias("_ptr"),
            (pl.col("_dist") + pl.col("_d2").fill_null(0)).alias("_dist"),
        )
    # a chain still pointing at a run with a parent after enough doublings is a cycle
    ptr_parent = cur.join(
        runs.select(pl.col("run_id").alias("_ptr"), pl.col("parent_run_id").alias("_pp")), on="_ptr", how="left"
    )
    ptr_parent = ptr_parent.with_columns(
        (pl.col("_pp").is_not_null() | (pl.col("_dist") > n)).alias("_cycle")
    )
    res = runs.join(ptr_parent.select("run_id", "_ptr", "_dist", "_cycle"), on="run_id", how="left")
    bad = res.filter(pl.col("_cycle") | (pl.col("_dist") > limit))
    if bad.height == 0:
        return empty_violations()
    return (
        bad.select(
            "run_id",
            "agent",
            pl.lit(None, dtype=pl.Int64).alias("step"),
            pl.lit(None, dtype=pl.String).alias("action"),
            pl.lit("delegation_depth").alias("rule"),
            pl.when(pl.col("_cycle")).then(pl.lit("critical")).otherwise(pl.lit("warning")).alias("severity"),
            pl.when(pl.col("_cycle"))
            .then(pl.lit("delegation cycle: parent_run_id links never reach a root run"))
            .otherwise(
                pl.concat_str(
                    pl.lit("delegation depth "),
                    pl.col("_dist").cast(pl.String),
                    pl.lit(f" > limit {limit} (chain root "),
                    pl.col("_ptr"),
                    pl.lit(")"),
                )
            )
            .alias("detail"),
            pl.when(pl.col("_cycle")).then(None).otherwise(pl.col("_dist")).cast(pl.Float64).alias("value"),
            pl.lit(float(limit)).alias("limit"),
        )
        .sort("run_id")
    )


def check_policy(
    events: Any,
    policy: Policy | str | Path | None = None,
    *,
    delegation: bool = True,
    features: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Find every policy breach in the events.

    Parameters
    ----------
    events : polars.DataFrame, polars.LazyFrame or ReadResult
        Canonical events (any subset of whole runs).
    policy : Policy, path or None, default=None
        A :class:`Policy`, a path to a policy TOML file, or ``None`` for ``Policy()``.
    delegation : bool, default=True
        Include the fleet-level ``delegation_depth`` check (:func:`check_delegation`).
        The chunked audit passes ``False`` per chunk and runs :func:`check_delegation`
        once over all runs.
    features : polars.DataFrame, optional
        :func:`~driftwatch.features.run_features` of the same events, when the caller has
        it: the run totals of the ``max_*`` rules are read from it instead of computed again.
        The breaches are the same.

    Returns
    -------
    polars.DataFrame
        One row per breach: ``run_id, agent, step, action, rule, severity, detail,
        value, limit`` (:data:`VIOLATION_SCHEMA`), sorted by ``run_id, step, rule``.
        Run-level rules (``max_*``) give the step where the limit was first crossed and
        ``value`` the run's total; per-step rules give one row per offending step.
        ``severity`` is ``critical`` for unapproved ``delete``-tier calls, limits
        exceeded two-fold or more and delegation cycles, ``warning`` otherwise.

    Examples
    --------
    >>> import polars as pl, driftwatch as dw
    >>> ev = pl.DataFrame({"run_id": ["r1"] * 3, "step": [1, 2, 3],
    ...                    "action": ["llm", "refund_order", "llm"],
    ...                    "cost_usd": [0.4, 0.0, 0.3]})
    >>> dw.check_policy(ev, dw.Policy(max_cost_usd=0.5, require_approval=("write", "delete")))[
    ...     ["step", "rule", "detail"]].rows()
    [(2, 'unapproved_action', 'refund_order (write tier) without approval (approval not recorded)'), (3, 'max_cost', 'cost $0.70 > ceiling $0.50')]
    """
    policy = _as_policy(policy)
    delegation = check_flag(delegation, name="delegation")
    if features is not None:
        need = ("run_id", "n_steps", "runtime_s", "tokens", "cost_usd", "n_errors")
        missing = [c for c in need if c not in getattr(features, "columns", ())]
        if not isinstance(features, pl.DataFrame) or missing:
            raise InvalidParameterError(
                f"features: expected run_features output (a DataFrame with {', '.join(need)}), "
                f"got {type(features).__name__}" + (f" without {', '.join(missing)}" if missing else "")
            )
    lf = as_lazy(events).select(
        "run_id", "agent", "step", "ts", "action", "status", "error_type", "result",
        "input_tokens", "output_tokens", "cost_usd", "approved", "confidence", "parent_run_id",
    )
    parts = _run_limit_violations(lf, policy, features) + _event_violations(lf, policy)
    cols = list(VIOLATION_SCHEMA)
    frames = pl.collect_all([p.select(cols).cast(VIOLATION_SCHEMA) for p in parts]) if parts else []
    if delegation and policy.max_delegation_depth is not None:
        # only runs with a parent matter: a chain stops at a run without one, whether
        # or not that run is in the table
        table = (
            lf.filter(pl.col("parent_run_id").is_not_null())
            .group_by("run_id")
            .agg(pl.col("agent").first(), pl.col("parent_run_id").first())
            .collect()
        )
        frames.append(check_delegation(table, policy))
    if not frames:
        return empty_violations()
    return pl.concat(frames).sort("run_id", "step", "rule", nulls_last=True)


__all__ = [
    "DEFAULT_TIER_WORDS",
    "RULES",
    "SEVERITIES",
    "TIERS",
    "SQL_ERROR_PATTERN",
    "CLOUD_ERROR_PATTERN",
    "TOOL_WORDS",
    "UNKNOWN_TOOL_PATTERN",
    "VIOLATION_SCHEMA",
    "Policy",
    "as_policy",
    "NOT_MISSING_REASONS",
    "check_delegation",
    "check_policy",
    "check_rejected",
    "rejected_steps",
    "empty_violations",
    "fold_case",
    "glob_to_regex",
    "globs_expr",
    "globs_regex",
    "globs_regexes",
    "is_plain_name",
]
