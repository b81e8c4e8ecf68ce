"""Shared frame helpers: duration strings and series keys, checked at every public boundary."""

from __future__ import annotations

import pytest

from driftwatch._frames import duration_seconds, normalize_by
from driftwatch.errors import InvalidParameterError


@pytest.mark.parametrize(("text", "seconds"), [("1m", 60), ("1d", 86_400), ("1d12h", 129_600), ("2w", 1_209_600),
                                               ("500ms", 0.5), (" 1h30m ", 5_400)])
def test_durations_single_and_compound(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0m", "0d", "0d0h"])
def test_zero_durations_are_refused(text: str) -> None:
    """A zero bucket made the change-point grid divide by zero ("conversion from f64 to i64")."""
    with pytest.raises(InvalidParameterError, match="drift_every must be a positive duration"):
        duration_seconds(text, name="drift_every")


@pytest.mark.parametrize("text", ["1x", "d1", "1.5h", "", "-1d", 3600])
def test_malformed_durations_are_refused(text: object) -> None:
    with pytest.raises(InvalidParameterError, match="every must be a Polars duration string"):
        duration_seconds(text)  # type: ignore[arg-type]


def test_series_keys_are_distinct_column_names() -> None:
    assert normalize_by(None) == ()
    assert normalize_by("agent") == ("agent",)
    assert normalize_by(["agent", "version", "agent"]) == ("agent", "version")  # --by agent,version,agent
    for bad in (["run_id"], ["agent", "bucket"], "series", [1], [""]):
        with pytest.raises(InvalidParameterError, match=r"by \(--by\)"):
            normalize_by(bad)  # type: ignore[arg-type]
