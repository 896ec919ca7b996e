# Two commands a new user needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test lint format bench catalog clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## serve: run the service on 127.0.0.1:8080 with the demo operations (./bulkjobs.sqlite3)
serve: $(STAMP)
	$(BIN)/bulkjobs serve

## test: lint, type-check and run the whole test suite
test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: the benchmarks of benchmarks/ (prints medians; takes a few minutes)
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

## catalog: regenerate the README's error catalog from bulkjobs/errors.py
catalog: $(STAMP)
	$(BIN)/python scripts/gen_error_catalog.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
