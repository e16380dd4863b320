# The two front doors: `make run` and `make test`. Each creates .venv on first use and installs
# everything from this project's own files. `make test` checks the import contracts and ruff's
# rules (both in pyproject.toml) before the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench screenshots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/blockfold demo

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 -q tests

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run_all

screenshots: $(STAMP)
	$(BIN)/python -m console.screenshots screenshots

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
