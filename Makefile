# One entry point for humans and CI.
#   make demo   install fastctc and compute a real batch's loss and gradient
#   make test   install the test dependencies, lint, and run the whole test suite
#   make lint   formatting and lints only (Rust and Python)
#   make bench  fastctc vs torch, side by side (not part of the tests)

PYTHON ?= python3
PIP := $(PYTHON) -m pip
export FASTCTC_REQUIRE_TORCH ?= 1

.PHONY: demo install install-test lint test test-rust test-python bench

demo: install
	$(PYTHON) -m fastctc info
	$(PYTHON) -m fastctc demo

install:
	$(PIP) install --quiet .

install-test:
	$(PIP) install --quiet ".[test]"

lint:
	cargo fmt --check
	cargo clippy --all-targets --features python -- -D warnings
	$(PYTHON) -m ruff check python tests benches examples
	$(PYTHON) -m ruff format --check python tests benches examples

test-rust:
	cargo test

test-python:
	$(PYTHON) -m pytest -q

test: install-test lint test-rust test-python

bench: install
	$(PYTHON) benches/compare.py
