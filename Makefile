# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make run CONFIG=my.yaml`, or `GATEWAY_CONFIG=my.yaml make run`
CONFIG ?= $(or $(GATEWAY_CONFIG),config.yaml)
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test lint format bench fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	GATEWAY_CONFIG=$(CONFIG) $(BIN)/uvicorn gateway.app:app --host $(HOST) --port $(PORT) \
		--timeout-graceful-shutdown 15

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

# A longer schemathesis run against the real server than `make test` does (FUZZ_EXAMPLES per
# operation; the default test run uses 5).
FUZZ_EXAMPLES ?= 200
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q --timeout=1800 tests/test_fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
