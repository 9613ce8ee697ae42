# One entry point for humans and CI.
#   make demo   install fastctc and compute a real batch's loss and gradient
#   make test   install the test dependencies, lint, and run the whole test suite
#   make lint   formatting and lints only (Rust, Python and the release workflow)
#   make bench  fastctc vs torch, side by side (not part of the tests)
#   make wheel  the release wheel and the sdist into dist/ (TARGET=aarch64: the Linux aarch64
#               wheel, cross-built); make install-wheel installs it to run the tests against

PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The tests need torch and a GPU adapter: a missing one fails instead of skipping. Without a
# GPU, Mesa's software Vulkan driver (lavapipe) is the adapter; `system-deps` installs it.
export FASTCTC_REQUIRE_TORCH ?= 1
export FASTCTC_REQUIRE_GPU ?= 1
# Mesa's device-select layer prints a harmless warning on machines without a display.
export NODEVICE_SELECT ?= 1
SYSTEM_PACKAGES := mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri

# Where pip put the command-line tools of $(PYTHON)'s environment (zizmor has no module).
SCRIPTS = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
# The one version number, Cargo.toml's (maturin gives it to the Python package).
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
# Release wheels: TARGET is an architecture (x86_64, aarch64) to build for instead of
# this machine's. Linux wheels are linked by zig against glibc 2.28 (manylinux_2_28, the
# baseline of torch's own wheels), whatever glibc the build machine has.
TARGET ?=
MANYLINUX := manylinux_2_28
ifeq ($(OS),Windows_NT)
HOST_OS := Windows
else
HOST_OS := $(shell uname -s)
endif
WHEEL_ARCH := $(or $(TARGET),$(shell uname -m))
RUST_TARGET_Linux := $(WHEEL_ARCH)-unknown-linux-gnu
RUST_TARGET_Darwin := $(WHEEL_ARCH)-apple-darwin
RUST_TARGET_Windows := $(WHEEL_ARCH)-pc-windows-msvc
RUST_TARGET := $(RUST_TARGET_$(HOST_OS))
MATURIN_BUILD := $(PYTHON) -m maturin build --release --sdist --out dist \
	$(if $(filter Linux,$(HOST_OS)),--zig --compatibility $(MANYLINUX)) \
	$(if $(TARGET),--target $(RUST_TARGET))

.PHONY: demo install install-test system-deps lint test test-rust test-python bench \
	version release-deps wheel install-wheel

demo: install
	$(PYTHON) -m fastctc info
	$(PYTHON) -m fastctc demo

install:
	$(PIP) install --quiet .

install-test: system-deps
	$(PIP) install --quiet ".[test]"

# Debian/Ubuntu packages for the GPU tests, installed only when missing.
system-deps:
	@command -v apt-get >/dev/null || { echo "system-deps: no apt-get, nothing installed"; exit 0; }; \
	missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
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
	# The release workflow: GitHub's workflow schema and zizmor's static analysis, offline.
	$(SCRIPTS)/zizmor --offline --strict-collection --no-progress .github/workflows

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

version:
	@echo $(VERSION)

# The tools that build and check the release artefacts (pinned in requirements-release.txt).
release-deps:
	$(PIP) install --quiet -r requirements-release.txt
	$(if $(and $(TARGET),$(shell command -v rustup)),rustup target add $(RUST_TARGET))

# The abi3 wheel (CPython 3.10+, CPU and GPU backends) and the sdist, into dist/. maturin
# builds the wheel from the unpacked sdist, so the wheel also shows that the sdist builds.
# A Linux wheel is checked twice: maturin refuses symbols newer than $(MANYLINUX), and
# auditwheel must report a manylinux tag no newer than it.
wheel: release-deps
	$(MATURIN_BUILD)
ifeq ($(HOST_OS),Linux)
	@report=$$($(PYTHON) -m auditwheel show \
		dist/fastctc-$(VERSION)-cp310-abi3-manylinux_*_$(WHEEL_ARCH).whl) && echo "$$report" && \
	echo "$$report" | tr '\n' ' ' | grep -Eq 'platform +tag: *"manylinux_2_(1[0-9]|2[0-8])_' || \
	{ echo "auditwheel: not a manylinux wheel for glibc 2.28 or older"; exit 1; }
endif

# Installs the wheel in dist/ that fits this machine, then the test dependencies, so that
# `make test-python` runs against the installed wheel (the release workflow does this).
install-wheel: system-deps
	$(PIP) install --force-reinstall --no-deps --no-index --find-links dist \
		--only-binary fastctc "fastctc==$(VERSION)"
	$(PIP) install --quiet --find-links dist --only-binary fastctc "fastctc[test]==$(VERSION)"
