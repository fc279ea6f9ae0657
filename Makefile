# The two setup commands (README): `make run` and `make test`. Both work as root on a fresh Debian 12 machine
# with only Python and git: they install what they need (Debian packages, then a venv from constraints.txt).

SHELL := /bin/bash
# Debian's interpreter, the one the packages are built against; any python3 >= 3.11 works for development.
PYTHON ?= $(shell command -v /usr/bin/python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check clean venv deps-run deps-test lint typecheck unit slow sandbox-test package system-test fuzz reliability bench
.PHONY: repo

# --- setup --------------------------------------------------------------------------------------------------
deps-run:
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || bash packaging/install-build-deps.sh --venv-only

deps-test:
	@bash packaging/install-build-deps.sh

$(STAMP): pyproject.toml constraints.txt | deps-run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U 'pip>=24'
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(STAMP)

# --- the two setup commands ---------------------------------------------------------------------------------
run: venv
	$(BIN)/p0-ssh-agent dev-backend --demo

# Everything: the suite inside the namespace sandbox (real useradd/visudo/sshd on a throwaway /etc and /home),
# then the package test, which boots real systemd with nspawn and so runs outside the sandbox.
test: deps-test venv
	tests/sandbox/enter $(BIN)/pytest -q -m 'not system' tests
	$(BIN)/pytest -q -m system tests

# --- pieces of `make test`, for development ----------------------------------------------------------------
# The fast loop: no root, no sandbox, and no `slow` test (a real agent or backend process waited on in wall-clock
# time). `make unit` and `make slow` together are every test that runs outside the sandbox; `make test` and
# `make sandbox-test` select by `not system` only, so they run the slow tests too.
unit: venv
	$(BIN)/pytest -q -m 'not system and not sandbox and not slow' tests

slow: venv
	$(BIN)/pytest -q -m 'slow and not system and not sandbox' tests

sandbox-test: deps-test venv
	tests/sandbox/enter $(BIN)/pytest -q -m 'not system' tests

# ARCH=arm64 cross-compiles the runtime (packaging/runtime/build-runtime.sh) and smoke-tests it under qemu-user.
ARCH ?= amd64
package:
	@bash packaging/install-build-deps.sh --package $(ARCH)
	ARCH=$(ARCH) bash packaging/build.sh

# Signed apt and dnf repositories of every package in dist/, in dist/repo (packaging/repo.sh, docs/install.md).
# A test key unless P0_REPO_GPG_HOME and P0_REPO_KEY_ID name the release key; P0_REPO_URL is where it is served.
repo: package deps-test
	bash packaging/repo.sh dist/repo dist/*.deb dist/*.rpm

system-test: deps-test venv
	$(BIN)/pytest -q -m system tests

# Coverage-guided fuzzing of the network-facing parsers, FUZZ_SECONDS per target; the corpus grows in tests/fuzz.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := frame forwarded request keys publickey sudoers config
fuzz: venv
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,fuzz]'
	mkdir -p build/fuzz
	for target in $(FUZZ_TARGETS); do \
		mkdir -p tests/fuzz/corpus/$$target; \
		$(BIN)/python tests/fuzz/fuzz_parsers.py $$target -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
			-artifact_prefix=build/fuzz/$$target- tests/fuzz/corpus/$$target || exit 1; \
	done

# Hostile input, kill -9 during grants, injected faults, backend chaos, a 100,000-request soak and fuzzing;
# writes docs/reliability.md. RELIABILITY_PROFILE=short is what `make test` already covers.
RELIABILITY_PROFILE ?= long
reliability: deps-test venv
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,fuzz]'
	tests/sandbox/enter $(BIN)/python tests/reliability/run.py --profile $(RELIABILITY_PROFILE) \
		--fuzz-seconds $(FUZZ_SECONDS)

# The performance targets of docs/benchmarks.md: prints every number and PASS/MISS, rewrites the report and plot.
# Inside the sandbox because real grants run useradd/visudo on a throwaway /etc.
bench: deps-test venv
	tests/sandbox/enter $(BIN)/python -m bench.run

# --- developer checks ---------------------------------------------------------------------------------------
lint: venv
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench

typecheck: venv
	$(BIN)/mypy

check: lint typecheck

clean:
	rm -rf $(VENV) build dist .mypy_cache .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
