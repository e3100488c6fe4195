# Quick start: `make run` serves CityOS on 127.0.0.1:1026; `make test` runs every test and linter;
# `make clean` removes .venv and the caches (not the database, cityos.db).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# A .venv made by another Python (an older one, another install, or one since removed) is made
# again: its packages were built for that interpreter.
PYTHON_ID = import sys; print(".".join(map(str, sys.version_info[:3])), sys.base_prefix)
WANTED := $(shell $(PYTHON) -c '$(PYTHON_ID)' 2>/dev/null)
FOUND := $(shell $(BIN)/python -c '$(PYTHON_ID)' 2>/dev/null)
ifneq ($(WANTED),)
ifneq ($(wildcard $(VENV)),)
ifneq ($(WANTED),$(FOUND))
$(info $(VENV) was made by Python $(or $(FOUND),that is gone); making it again with $(PYTHON) ($(WANTED)))
$(shell rm -rf $(VENV))
endif
endif
endif

.PHONY: run test lint typecheck unit bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/cityos serve --demo-on-empty --indicators-interval 3600

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# three pytest workers, each test file on one of them (--dist loadfile): most tests wait on real
# servers, so three keep 2 cores busy; files marked `slow` start first, longest first (tests/conftest.py;
# --no-loadscope-reorder keeps that order: xdist's own puts the files with fewest tests, the slowest,
# last); PYTEST_WORKERS=0 runs them in one process. A worker that crashes (or a test past its
# timeout, which ends its worker) is not replaced: xdist 3.8's loadfile scheduler can wait forever for
# a replacement, so the run fails at once instead of hanging until CI's limit
PYTEST_WORKERS ?= 3
unit: $(VENV)/.dev
	$(BIN)/pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --max-worker-restart=0)

test: lint typecheck unit

# the full benchmark (hours on 2 cores): both back-ends, the main table at 100,000 entities, then the
# scaling table at 10,000 / 100,000 / 1,000,000 (`--no-scale`: the main table only); see docs/performance.md
bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
