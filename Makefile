# The README's two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps demo test test-unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Debian packages the integration tests start for real (Redis, PostgreSQL, Chromium)
system-deps:
	scripts/system_deps.sh

## Main job on embedded defaults: simulate -> features -> feast apply/materialize -> train -> serve
demo: $(STAMP)
	$(BIN)/rewards demo

## Whole test suite (unit, model and integration tiers)
test: $(STAMP) system-deps
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

## Benchmarks (results go to BENCHMARKS.md). Pipeline and serving need `make demo`'s data first.
bench: $(STAMP)
	$(BIN)/python bench/bench_simulate.py --members 100000 --days 90
	$(BIN)/python bench/bench_features.py --members 100000 --days 90
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_serving.py --rate 500 --seconds 60

clean:
	rm -rf data/ .pytest_cache
