# Quick start: `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED ?= 0
# `make demo` keeps Ray's token authentication on (and its Ray listens on 127.0.0.1 only, ADR-011);
# the tests and benchmarks start their own loopback-only Ray without a token.
test bench: export RAY_AUTH_MODE ?= disabled

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/es-actors demo --store ./demo-store

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) -m benchmarks.run $(if $(ONLY),--only $(ONLY),)

clean:
	rm -rf demo-store .pytest_cache
