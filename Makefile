# Two commands do all the set-up: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
# the suite is mostly waiting (agents, long polls, sockets): more workers than cores pays on 2 cores
TEST_WORKERS ?= 6
# How the suite is spread (README "Test times"): one file per worker at a time (its module fixtures
# made once), the longest files first (tests/conftest.py orders them by the last run's times, kept in
# pytest's cache, else by those committed in tests/file_seconds.json, else by tier) and xdist's own
# reorder by test count off, which would leave the long one-test chaos files for last. Bytecode is
# written even where PYTHONDONTWRITEBYTECODE is set: without it every worker, runner and CLI process
# compiles the project again (~0.1 CPU-s a process) and pytest rewrites every test module's asserts
# again (~4 CPU-s a worker; `make suite-bytecode` writes them once before the workers start).
PYTEST_SPEED := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
SUITE_PYTEST = env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SAM_CLI_TELEMETRY := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# `sam build` (no container) needs the Lambda runtime's Python (3.12) on PATH; under pyenv we add it.
PY312_ENV := $(shell if python3.12 -V >/dev/null 2>&1; then :; \
	elif command -v pyenv >/dev/null 2>&1; then v=$$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$$)' | tail -1); \
	[ -n "$$v" ] && echo "PYENV_VERSION=$$(pyenv version-name 2>/dev/null | cut -d: -f1):$$v"; fi)

.PHONY: setup venv node-deps web-deps browser demo test test-order suite-bytecode unit lint scan build runner-package publish-runner bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# agents run in bubblewrap by default (AGENT_SANDBOX=bwrap): install it where it is missing
venv: $(STAMP)
	@command -v bwrap >/dev/null || apt-get install -y -q bubblewrap >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null) \
		|| echo "bubblewrap is not installed and could not be: install it, or set AGENT_SANDBOX=off (README)"

# Node packages the tests use (jsonwebtoken: a Node backend's token), pinned by tests/node's lock file
NODE_STAMP := tests/node/node_modules/.installed
$(NODE_STAMP): tests/node/package-lock.json
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The real agent CLIs the tests drive (Claude Code, Codex: ~660 MB, native binaries inside the npm
# packages), pinned by tests/agent_clis's lock file, in its ignored node_modules; the product never
# depends on them. ~10 s from an empty npm cache here.
AGENT_CLIS_STAMP := tests/agent_clis/node_modules/.installed
$(AGENT_CLIS_STAMP): tests/agent_clis/package-lock.json
	npm ci --prefix tests/agent_clis --no-audit --no-fund --loglevel=error
	touch $(AGENT_CLIS_STAMP)

node-deps: $(NODE_STAMP) $(AGENT_CLIS_STAMP)

# the terminal page's xterm.js (web/package-lock.json), served by the local stack from the page's origin
WEB_STAMP := web/node_modules/.installed
$(WEB_STAMP): web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	touch $(WEB_STAMP)

web-deps: $(WEB_STAMP)

# the browser tests and the page's bench drive Debian's chromium (Playwright's own download cannot
# work offline): install it where it is missing, as bubblewrap
browser:
	@command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null) \
		|| echo "chromium is not installed and could not be: the browser tests will be skipped (README)"

demo: venv web-deps
	$(BIN)/aipm local demo

# the checks are independent: `make lint` (and `make test`, with the build) runs them side by side,
# each one's output kept together (mypy alone is ~10 s of CPU; the SAM tools start slowly)
LINT_CHECKS := lint-ruff lint-mypy lint-imports lint-cfn lint-sam scan
.PHONY: $(LINT_CHECKS)

lint: venv
	@$(MAKE) --no-print-directory -j3 --output-sync=target $(LINT_CHECKS)

lint-ruff:
	$(BIN)/ruff check .
lint-mypy:
	$(BIN)/mypy
lint-imports:
	$(BIN)/lint-imports
lint-cfn:
	$(BIN)/cfn-lint template.yaml
lint-sam:
	$(BIN)/sam validate --lint --template template.yaml

# The template's security scan. checkov pins boto3/botocore below aws-sam-cli's, so it lives in a
# venv of its own. Every finding is fixed or skipped with its reason: those that hold for every
# function are skipped here, the others on their resource (Metadata: checkov: skip).
#   CKV_AWS_115 reserved concurrency: the functions scale with their event sources; a cap would
#               throttle the stream and the relay (API Gateway already throttles the stage)
#   CKV_AWS_116 a function DLQ: only for async invokes; these are stream/SQS/API/schedule invokes
#               (the stream retries then bisects, SQS redrives, the reconciler re-signals)
#   CKV_AWS_117 functions in a VPC: they reach only AWS APIs; a VPC adds NAT cost and cold starts
#   CKV_AWS_173 env var KMS CMK: the environment holds names and ARNs, no secrets (those are in
#               Secrets Manager)
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q checkov==$(CHECKOV_VERSION)
	touch $@

scan: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation -f template.yaml \
		--skip-check CKV_AWS_115,CKV_AWS_116,CKV_AWS_117,CKV_AWS_173

# The runner's pinned code for the fleet (template parameter RunnerPackageUri): the wheel, the exact
# versions of this environment (the ones the test suite passed with; pip installs only those the
# wheel needs) and SHA256SUMS. `make publish-runner BUCKET=b` uploads it to a folder named by the
# SHA-256 of SHA256SUMS, which the user data checks on boot.
RUNNER_DIST := dist/runner
runner-package: venv
	rm -rf $(RUNNER_DIST) build *.egg-info && mkdir -p $(RUNNER_DIST)
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w $(RUNNER_DIST) .
	rm -rf build *.egg-info
	$(BIN)/pip freeze --exclude-editable | grep -v -e ' @ ' -e '^-e ' -e '^aipm-kiro-runner==' > $(RUNNER_DIST)/constraints.txt
	cd $(RUNNER_DIST) && sha256sum -- *.whl constraints.txt > SHA256SUMS
	@echo "$(RUNNER_DIST): folder name $$(sha256sum $(RUNNER_DIST)/SHA256SUMS | cut -c1-64)"

publish-runner: runner-package
	@test -n "$(BUCKET)" || { echo "make publish-runner BUCKET=<a bucket the deploying account can read>"; exit 2; }
	@uri="s3://$(BUCKET)/aipm-runner/$$(sha256sum $(RUNNER_DIST)/SHA256SUMS | cut -c1-64)/"; \
	$(BIN)/aws s3 cp --recursive --only-show-errors $(RUNNER_DIST)/ "$$uri"; \
	echo "RunnerPackageUri=$$uri"

# `sam build --cached` still takes ~10 s with nothing to build: it runs when its inputs change
BUILD_STAMP := .aws-sam/.built
$(BUILD_STAMP): $(STAMP) template.yaml $(wildcard shared/*.py shared/Makefile shared/*.txt functions/*.py functions/*/*.py)
	env $(PY312_ENV) $(BIN)/sam build --template template.yaml --cached --parallel >/dev/null
	touch $@

build: venv $(BUILD_STAMP)

# Everything `make test` installs or builds before it checks anything (README "Test times": the
# budget counts from here): the venvs, the Node packages, Chromium, the Lambdas' build.
setup: venv $(CHECKOV_VENV)/.installed node-deps web-deps browser build

# Each test module's assertion-rewritten bytecode, written once before the test workers start: six
# workers collecting a clean checkout side by side each rewrote every module again (~4 CPU-s each)
suite-bytecode: venv
	@$(SUITE_PYTEST) --collect-only -q -p no:cacheprovider >$(VENV)/collect.log \
		|| { cat $(VENV)/collect.log; exit 1; }

# the checks and the suite, timed from the end of the set-up (the budget's start)
test: setup
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory -j3 --output-sync=target $(LINT_CHECKS) suite-bytecode || exit $$?; \
	checked=$$(date +%s); rc=0; \
	$(SUITE_PYTEST) $(PYTEST_SPEED) --durations=15 || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; fi; \
	echo "make test after set-up: $$(( $$(date +%s) - start )) s (lint and bytecode $$(( checked - start )) s, then pytest)"; \
	exit $$rc

# the order a clean clone runs the test files in (longest first): each file's time in this checkout's
# last runs, written to tests/file_seconds.json (commit it when files come or change much)
test-order: venv
	$(BIN)/python -m tests.file_order

unit: venv
	$(BIN)/pytest tests/unit

bench: venv web-deps browser
	$(BIN)/python -m bench

clean:
	rm -rf .aws-sam .aipm .pytest_cache .import_linter_cache build dist
