# Two commands do all the set-up: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
# the suite is mostly waiting (agents, long polls, sockets): more workers than cores pays on 2 cores
TEST_WORKERS ?= 4
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SAM_CLI_TELEMETRY := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# `sam build` (no container) needs the Lambda runtime's Python (3.12) on PATH; under pyenv we add it.
PY312_ENV := $(shell if python3.12 -V >/dev/null 2>&1; then :; \
	elif command -v pyenv >/dev/null 2>&1; then v=$$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$$)' | tail -1); \
	[ -n "$$v" ] && echo "PYENV_VERSION=$$(pyenv version-name 2>/dev/null | cut -d: -f1):$$v"; fi)

.PHONY: venv demo test unit lint build bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/aipm local demo

# the checks are independent: `make lint` (and `make test`, with the build) runs them side by side,
# each one's output kept together (mypy alone is ~10 s of CPU; the SAM tools start slowly)
LINT_CHECKS := lint-ruff lint-mypy lint-imports lint-cfn lint-sam
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

build: venv
	env $(PY312_ENV) $(BIN)/sam build --template template.yaml --cached --parallel >/dev/null

test: venv
	@$(MAKE) --no-print-directory -j3 --output-sync=target $(LINT_CHECKS) build
	@rc=0; $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 || rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; fi; exit $$rc

unit: venv
	$(BIN)/pytest tests/unit

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf .aws-sam .aipm .pytest_cache .import_linter_cache build
