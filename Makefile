# Two commands a new user needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
DIST_STAMP := $(VENV)/.installed-dist
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: serve test lint format bench catalog chaos fuzz dist clean

# `make serve` installs only what the service needs; the test tools (Playwright,
# schemathesis, mypy, ...) come with the first `make test`.
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

## serve: run the service on 127.0.0.1:8080 with the demo operations (./bulkjobs.sqlite3)
serve: $(RUN_STAMP)
	$(BIN)/bulkjobs serve

## test: lint, type-check and run the whole test suite
test: $(DEV_STAMP) lint
	$(BIN)/python -m pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: every benchmark of benchmarks/ as one table of medians (~10 min; QUICK=1 for a smoke run)
$(BENCH_STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_all.py $(if $(QUICK),--quick) $(BENCH_ARGS)

## fuzz: raw-request fuzzing at volume (10,000 requests) plus schemathesis (~5 min)
fuzz: $(DEV_STAMP)
	BULKJOBS_FUZZ_EXAMPLES=2500 BULKJOBS_FUZZ_SCHEMA_EXAMPLES=10 $(BIN)/python -m pytest \
		-p no:cacheprovider -s -q tests/test_faults_fuzz.py tests/test_schemathesis.py

## chaos: kill -9 a real server 100 times under mixed load and check nothing is lost (~5 min; KILLS=, SEED=)
chaos: $(DEV_STAMP)
	$(BIN)/python -m tests.chaos --kills $(or $(KILLS),100) $(if $(SEED),--seed $(SEED))

## catalog: regenerate the README's error catalog from bulkjobs/errors.py
catalog: $(DEV_STAMP)
	$(BIN)/python scripts/gen_error_catalog.py

$(DIST_STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install -q -e '.[dist]'
	touch $(DIST_STAMP)

## dist: build dist/bulkjobs, one executable that needs no Python on the host (APP=myapp.ops bundles your --app module)
dist: $(DIST_STAMP)
	$(BIN)/python scripts/build_dist.py $(if $(APP),--app $(APP))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
