# One entry point for humans and CI.
#   make demo   install fastctc and compute a real batch's loss and gradient
#   make test   install the test dependencies, lint, and run the whole test suite
#   make lint   formatting and lints only (Rust and Python)
#   make bench  fastctc vs torch, side by side (not part of the tests)

PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The tests need torch and a GPU adapter: a missing one fails instead of skipping. Without a
# GPU, Mesa's software Vulkan driver (lavapipe) is the adapter; `system-deps` installs it.
export FASTCTC_REQUIRE_TORCH ?= 1
export FASTCTC_REQUIRE_GPU ?= 1
# Mesa's device-select layer prints a harmless warning on machines without a display.
export NODEVICE_SELECT ?= 1
SYSTEM_PACKAGES := mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri

.PHONY: demo install install-test system-deps lint test test-rust test-python bench

demo: install
	$(PYTHON) -m fastctc info
	$(PYTHON) -m fastctc demo

install:
	$(PIP) install --quiet .

install-test: system-deps
	$(PIP) install --quiet ".[test]"

# Debian/Ubuntu packages for the GPU tests, installed only when missing.
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing $$missing"; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; \
	fi

lint:
	cargo fmt --check
	cargo clippy --all-targets --features python,gpu -- -D warnings
	$(PYTHON) -m ruff check python tests benches examples
	$(PYTHON) -m ruff format --check python tests benches examples

test-rust:
	cargo test
	cargo test --features gpu

test-python:
	$(PYTHON) -m pytest -q
	WGPU_BACKEND=gl $(PYTHON) -m pytest -q tests/test_gpu.py
	# Short samples run side by side where a cost model says so; run the semantics and
	# property tests again with every short sample in a group.
	FASTCTC_GROUPS=always $(PYTHON) -m pytest -q tests/test_properties.py \
		tests/test_semantics.py tests/test_reference.py tests/test_torch_parity.py

test: install-test lint test-rust test-python

bench: install
	$(PYTHON) benches/compare.py
