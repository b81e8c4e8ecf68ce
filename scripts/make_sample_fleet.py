"""Regenerate sample_logs/fleet: a 30-day, four-agent demo fleet with its truth tables.

usage: .venv/bin/python scripts/make_sample_fleet.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

from driftwatch import synth

ROOT = Path(__file__).resolve().parent.parent / "sample_logs" / "fleet"

if __name__ == "__main__":
    shutil.rmtree(ROOT, ignore_errors=True)
    # the demo scenario, plus a few runs that send one prompt to the model again and again
    # (retries: loops) and a few that sample several answers to one prompt (benign)
    scenario = synth.Scenario(llm_retry_rate=0.005, llm_sampling_rate=0.01)
    counts = synth.write_fleet(ROOT, days=30, runs_per_day=150, seed=7, start="2026-10-01",
                               row_group_size=16_000, scenario=scenario)
    print(f"wrote {counts['events']} events, {counts['runs']} runs, {counts['days']} days to {ROOT}")
