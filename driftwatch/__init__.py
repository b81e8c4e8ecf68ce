"""driftwatch: batch audits of LLM-agent logs.

Find repeating action cycles, change-points in behaviour, feedback-driven
drift and policy breaches in agent logs, and score every run for human
escalation with reasons a person can act on.

>>> import driftwatch as dw
>>> sorted(n for n in dw.__all__ if n.startswith("detect_"))
['detect_changepoints', 'detect_delegation_cycles', 'detect_drift', 'detect_loops', 'detect_run_changepoints']

The public names are imported lazily, so ``import driftwatch`` stays fast and
optional dependencies (PySpark) load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from driftwatch.errors import (
    CorruptFileError,
    DriftwatchError,
    EmptyInputError,
    InputError,
    InvalidParameterError,
    NoInputError,
    NothingToAudit,
    PolicyError,
    SchemaError,
)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "read_logs": "driftwatch.read",
    "ReadResult": "driftwatch.read",
    "CANONICAL_SCHEMA": "driftwatch.schema",
    "validate_events": "driftwatch.schema",
    "run_features": "driftwatch.features",
    "run_action_counts": "driftwatch.features",
    "run_bigram_counts": "driftwatch.features",
    "detect_loops": "driftwatch.loops",
    "loop_summary": "driftwatch.loops",
    "detect_delegation_cycles": "driftwatch.loops",
    "detect_changepoints": "driftwatch.changepoints",
    "changepoints_from_runs": "driftwatch.changepoints",
    "bucket_metrics_from_runs": "driftwatch.changepoints",
    "detect_run_changepoints": "driftwatch.changepoints",
    "detect_drift": "driftwatch.drift",
    "drift_from_runs": "driftwatch.drift",
    "Policy": "driftwatch.policy",
    "check_policy": "driftwatch.policy",
    "check_delegation": "driftwatch.policy",
    "score_runs": "driftwatch.scoring",
    "score_runs_from_runs": "driftwatch.scoring",
    "EscalationModel": "driftwatch.scoring",
    "fit_escalation": "driftwatch.scoring",
    "cost_profile": "driftwatch.costs",
    "cost_profile_from_runs": "driftwatch.costs",
    "load_curve": "driftwatch.load",
    "load_curve_from_runs": "driftwatch.load",
    "audit": "driftwatch.audit",
    "AuditResult": "driftwatch.audit",
    "audit_spark": "driftwatch.spark",
    "synth": "driftwatch.synth",
}

__all__ = [
    "CorruptFileError",
    "DriftwatchError",
    "EmptyInputError",
    "InputError",
    "InvalidParameterError",
    "NoInputError",
    "NothingToAudit",
    "PolicyError",
    "SchemaError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'driftwatch' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == "synth" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

