# One command each: `make demo` runs the demo end to end, `make test` sets up and runs every check,
# `make test-fast` is the quick loop (lint and the fast tests on PostgreSQL; no system packages).
SHELL := /bin/bash
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.data/dagster
# the port `make ui` serves the Dagster UI on
PORT ?= 3000
SYSTEM_PACKAGES := unixodbc odbc-postgresql odbc-mariadb chromium openjdk-17-jre-headless docker-compose
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help uv setup setup-python setup-dev system-deps demo ui demo-change test test-fast lint format bench bench-layout clean

help:
	@echo "make demo   - set up, generate the demo database, ingest everything into .data/lake"
	@echo "make ui     - start the Dagster UI on http://127.0.0.1:$(PORT) over the demo instance (PORT=N for another)"
	@echo "make demo-change - change rows of an old and the newest day: the new-data sensor requests those days"
	@echo "make test   - set up (system ODBC packages, all extras) and run lint, types and tests"
	@echo "make test-fast - lint, types and the fast tests, on PostgreSQL only; installs no system packages"
	@echo "make bench  - run the benchmarks in bench/ and print their figures"
	@echo "make bench-layout - the Delta table layout: month clusters against Hive by month"

uv:
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.5"

# Bytecode is compiled at install (uv does not by default, pip does), and the project's once: a
# Python that may not write .pyc files (PYTHONDONTWRITEBYTECODE) otherwise compiles every module it
# imports, every time, which made each run, CLI call and code server start 1.5 s slower
COMPILE := $(BIN)/python -m compileall -q ingestion_assets

# the demo needs only the core package; --inexact keeps extras a test setup installed
setup: uv
	$(UV) sync --frozen --inexact --no-dev --compile-bytecode
	$(COMPILE)

# the Python environment of development (all extras, dev tools): all that lint and test-fast need
setup-python: uv
	$(UV) sync --frozen --all-extras --compile-bytecode
	$(COMPILE)

setup-dev: setup-python system-deps

system-deps:
	@missing=""; for package in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m ingestion_assets.demo

ui: setup
	mkdir -p $(DAGSTER_HOME)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m ingestion_assets.demo ui --port $(PORT)

# corrects and adds orders of two days in the demo database; `make ui`'s sensor then requests them
demo-change: setup
	$(BIN)/python -m ingestion_assets.demo change

lint: setup-python
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup-python
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# every test, spread over the cores; a file's tests stay on one worker, so the module-scoped
# servers (dg dev, the demo, the Docker builds) start once
test: setup-dev lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=20

# markers in pyproject.toml; --dialects (conftest.py) runs the dialect-parametrized tests on one
FAST_MARKERS := not (slow or e2e or spark or s3 or mssql or mariadb)
# one worker more than the cores: about half of the suite's time is spent waiting (on servers
# starting, sensors ticking, subprocesses), during which another file's tests can use the core
PYTEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
test-fast: lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dialects=postgresql -m "$(FAST_MARKERS)"

bench: setup-dev
	BENCH_UV_PYTHON=$(PYTHON) $(BIN)/python bench/run.py $(BENCH_ARGS)

bench-layout: setup-dev
	BENCH_UV_PYTHON=$(PYTHON) $(BIN)/python bench/layout.py $(LAYOUT_ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
