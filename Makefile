# l1forge: `make demo` and `make test` set everything up themselves, idempotently.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.l1forge-installed
ROOT_VENV := .venv-root

.PHONY: setup system demo test lint validate bench clean root-venv

setup: system $(STAMP)

system:
	@bash scripts/setup-system.sh

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) scripts/typecheck_tree.py
	$(VENV)/bin/mypy

test: setup lint
	$(VENV)/bin/python -m pytest -m "not slow" -q

validate: setup lint root-venv
	$(VENV)/bin/python -m pytest -q
	$(MAKE) bench

# ROOT from the package index (~700 MB) in a venv of its own: tests/online/datapath/test_root_reads.py
root-venv: $(ROOT_VENV)/.installed

$(ROOT_VENV)/.installed: requirements-root.txt
	@test -x $(ROOT_VENV)/bin/python || $(PYTHON) -m venv $(ROOT_VENV)
	$(ROOT_VENV)/bin/python -m pip install -q -r requirements-root.txt
	@touch $@

# Every benchmark runs even when one fails its own check; each JSON is kept in out/bench-results/.
bench: setup
	@set -o pipefail; mkdir -p out/bench-results; failed=""; \
	for b in benchmarks/*.py; do n=$$(basename $$b .py); echo "== $$b"; \
	    $(PY) $$b | tee out/bench-results/$$n.json || failed="$$failed $$n"; done; \
	if [ -n "$$failed" ]; then echo "benchmarks that failed their checks:$$failed" >&2; exit 1; fi

demo: setup
	$(VENV)/bin/l1forge demo

clean:
	rm -rf $(VENV) $(ROOT_VENV) out build *.egg-info .pytest_cache .ruff_cache .mypy_cache
