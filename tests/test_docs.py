"""The README's Python examples run as written (the docstrings' examples run as doctests:
``pytest`` collects ``driftwatch/`` with ``--doctest-modules``)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Blocks that name what only a user has (their logs, state, reviews, a cluster): shown, not run.
PLACEHOLDERS = ("policy.toml\"", "/srv/", "exports/", "reviewed", "last_quarter_events", "F.run_features(ev)",
                "pyspark", "driftwatch.spark")


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", text, re.S)]


def runnable(block: str) -> bool:
    # (a block that reads sample_logs/policy.toml is runnable; one that reads the user's policy.toml is not)
    return not any(p in block.replace('sample_logs/policy.toml"', "") for p in PLACEHOLDERS)


@pytest.mark.slow
def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = readme_blocks()
    run = [b for b in blocks if runnable(b)]
    # most of them: a README rewritten into placeholders would no longer be checked
    assert len(run) >= 10 and len(run) >= len(blocks) // 2, (len(run), len(blocks))
    (tmp_path / "sample_logs").symlink_to(ROOT / "sample_logs")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}  # one namespace, read top to bottom: later blocks use earlier names
    for i, block in enumerate(run):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover (the message is the point)
            raise AssertionError(f"README example failed: {type(exc).__name__}: {exc}\n{block}") from exc
    assert (tmp_path / "report" / "report.html").is_file()  # the first example writes its report


def test_placeholder_blocks_are_recognised() -> None:
    assert not runnable('res = dw.audit("logs/", policy="policy.toml")')
    assert runnable('policy = dw.Policy.from_toml("sample_logs/policy.toml")')
    assert not runnable("from driftwatch.spark import audit_spark")
