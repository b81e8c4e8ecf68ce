# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,spark]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/driftwatch audit sample_logs/fleet/events --out report --policy sample_logs/policy.toml

test: $(STAMP)
	bash scripts/ensure_java.sh || true
	$(PY) -m ruff check driftwatch tests benchmarks
	$(PY) -m pytest -n 2 --dist loadfile tests driftwatch

lint: $(STAMP)
	$(PY) -m ruff check driftwatch tests benchmarks

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) report .pytest_cache
