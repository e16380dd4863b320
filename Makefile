# The two front doors: `make run` and `make test`. Each creates .venv on first use and installs
# everything from this project's own files; pip builds the native core (native/, Rust) with
# maturin, in release mode, and rebuilds it when its sources change. `make test` checks the
# import contracts and ruff's rules (both in pyproject.toml), runs the Rust unit tests, then the
# Python tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NATIVE := $(VENV)/.native
NATIVE_SRC := $(wildcard native/src/*.rs) native/Cargo.toml native/Cargo.lock

.PHONY: run test bench screenshots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $(NATIVE)

$(NATIVE): $(STAMP) $(NATIVE_SRC)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(NATIVE)

run: $(NATIVE)
	$(BIN)/blockfold demo

test: $(NATIVE)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check .
	cd native && cargo test --release --quiet
	$(BIN)/python -m pytest -n 2 -q tests

bench: $(NATIVE)
	$(BIN)/python -m tests.bench.run_all

screenshots: $(NATIVE)
	$(BIN)/python -m console.screenshots screenshots screenshots/png

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis engine/_native*.so
