"""What the benchmark scripts share to check a baseline's table against driftwatch's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl


def compare_tables(
    ours: pl.DataFrame, theirs: pl.DataFrame, *, keys: Sequence[str], columns: Sequence[str], count: str
) -> tuple[bool, str]:
    """Join ``ours`` (driftwatch) and ``theirs`` (a baseline) on ``keys`` and compare ``columns``
    (floats within 1e-9 relative; NaN equals NaN). ``count`` is a column both have on every row,
    which tells the rows found in one table only. Returns (agree, a line saying what differs)."""
    a = ours.select(*keys, *columns)
    b = theirs.select(*keys, *columns)
    j = a.join(b, on=list(keys), how="full", suffix="_pd", coalesce=True)
    missing = j.filter(pl.col(count).is_null() | pl.col(f"{count}_pd").is_null()).height
    bad = {}
    for c in columns:
        x, y = j[c].cast(pl.Float64).to_numpy(), j[f"{c}_pd"].cast(pl.Float64).to_numpy()
        ok = np.isclose(x, y, rtol=1e-9, atol=1e-12) | (np.isnan(x) & np.isnan(y))
        if not ok.all():
            bad[c] = int((~ok).sum())
    what = ", ".join(keys)
    return missing == 0 and not bad, (f"{j.height:,} ({what}) rows, {missing} in one table only, "
                                      f"differing values: {bad or 'none'}")
