# hardnegs: `make demo` runs the pipeline on the bundled sample, offline; `make test` the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export DVC_NO_ANALYTICS ?= 1

.PHONY: help setup demo test test-fast lint typecheck bench lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv with the locked dependencies (CPU torch), if missing

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup ## run the whole pipeline on the bundled sample (Prefect flow over DVC stages)
	$(PY) -m tasks.config check
	time $(PY) -m flows.pipeline
	@echo "report: $$($(PY) -m tasks.config show paths | awk '/report:/{print $$2}')/report.md"

test: setup ## run the test suite (what CI runs)
	$(PY) -m pytest

test-fast: setup ## the suite without tests marked slow
	$(PY) -m pytest -m "not slow"

lint: setup ## ruff lint + format check
	$(PY) -m ruff check tasks flows tests benchmarks
	$(PY) -m ruff format --check tasks flows tests benchmarks

typecheck: setup ## mypy on tasks/
	$(PY) -m mypy

bench: setup ## install benchmark extras and list the benchmark scripts
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,bench]"
	@ls benchmarks/*.py

lock: ## regenerate constraints.txt (dev + bench extras) from the current .venv (after changing pyproject)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' > constraints.txt

clean: ## remove pipeline outputs (keeps .venv and the DVC cache)
	rm -rf data .prefect
