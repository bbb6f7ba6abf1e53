# p2v: two commands on a fresh Debian 12 machine (as root): `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest exits 5 when it collects nothing: say so plainly; it stays a failure.
PYTEST := scripts/pytest-honest $(PY) -m pytest
export LIBGUESTFS_BACKEND_SETTINGS ?= $(if $(filter kvm,$(P2V_ACCEL)),,force_tcg)

.PHONY: setup sysdeps venv completion fixtures demo test test-slow test-unit test-integration test-e2e \
        lint bench-fix clean-venv

setup: sysdeps venv completion

sysdeps:
	@scripts/install-system-deps

# The venv sees Debian's site-packages: the guestfs and libvirt bindings live only there.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,fleet]'
	@# The dev tools belong to the venv even where the system python already has them.
	$(PY) -m pip install -q --disable-pip-version-check --ignore-installed \
	  ruff mypy pytest pytest-timeout import-linter
	@touch $@

venv: sysdeps $(STAMP)

# bash and zsh completion of p2v, from its own parser (as root; otherwise says where to put it).
completion: venv
	@scripts/install-completion $(VENV)/bin/p2v

fixtures: setup
	$(PY) -m p2v.demo.fixtures build bios uefi

demo: setup
	$(VENV)/bin/p2v demo

lint: setup
	$(PY) -m ruff check p2v tests bench
	$(PY) -m mypy p2v
	@# The layers and each outside library's one home (pyproject.toml [tool.importlinter]).
	$(VENV)/bin/lint-imports --no-cache
	@# No function over 60 lines but those listed, and those may not grow.
	$(PY) scripts/shape_metrics.py --check
	@# The sh programs p2v runs on the source: POSIX sh, as old servers have it.
	shellcheck -s sh p2v/source/remote/*.sh

# What CI runs: lint, unit, integration and the e2e boots (not the tests marked slow).
test: lint fixtures
	$(PYTEST) -m "not slow" --durations=15 tests

test-slow: setup fixtures
	$(PYTEST) -m slow tests

test-unit: setup
	$(PYTEST) tests/unit

test-integration: setup fixtures
	$(PYTEST) -m "not slow" tests/integration

test-e2e: setup fixtures
	$(PYTEST) -m "not slow" tests/e2e

# bench/fix: p2v fix vs virt-v2v (virt-v2v needs nbdcopy from libnbd-bin); not part of `make test`.
BENCH_FIX_PACKAGES := virt-v2v libnbd-bin
bench-fix: setup fixtures
	@scripts/install-system-deps $(BENCH_FIX_PACKAGES)
	bench/fix $(BENCH_FIX_ARGS)

clean-venv:
	rm -rf $(VENV)
