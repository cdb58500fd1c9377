# README's two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export ARGUS_HOME ?= $(CURDIR)/.argus

.PHONY: install serve test test-fast lint bench clean

install: $(STAMP)

# Re-install whenever pyproject.toml changes. torch is pinned to 2.13.0 (a CPU build).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

serve: install
	$(BIN)/argus serve --train-if-empty

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not integration"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/serving.py

clean:
	rm -rf $(VENV) .argus .pytest_cache .mypy_cache .ruff_cache
