# README's two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export ARGUS_HOME ?= $(CURDIR)/.argus

.PHONY: install serve test test-fast lint bench bench-peers clean

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

# bench/peers.py: Argus beside FastAPI, LitServe, MLServer and plain BentoML. The peers get
# a venv of their own (the `bench` extra, no torch), never .venv: their pins are not
# bentoml's. A peer that will not install is reported by peers.py as not run.
PEERS_VENV  := .venv-bench
PEERS_STAMP := $(PEERS_VENV)/.installed

$(PEERS_STAMP): pyproject.toml
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	echo '*' > $(PEERS_VENV)/.gitignore
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	if $(PEERS_VENV)/bin/python -m pip install --quiet -e '.[bench]'; then touch $@; else \
	  echo "bench-peers: the bench extra did not install; installing the project alone" >&2; \
	  $(PEERS_VENV)/bin/python -m pip install --quiet -e .; fi

bench-peers: install $(PEERS_STAMP)
	$(BIN)/python bench/peers.py --peer-python $(PEERS_VENV)/bin/python $(ARGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) .argus .pytest_cache .mypy_cache .ruff_cache
