# vchan: `make demo` shows it working, `make test` proves it. See README.md.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PREFIX ?= /usr/local
export PREFIX

.PHONY: all lib demo test lint typecheck pytest test-sanitize install bench soak clean

all: lib

lib:
	$(MAKE) -C libvchan-socket

$(VENV)/.installed: pyproject.toml version
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

demo:
	PYTHONPATH=src $(PYTHON) -m vchan demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

pytest: $(VENV)/.installed lib
	$(VPY) -m pytest -q

test: lint typecheck pytest test-sanitize

test-sanitize: $(VENV)/.installed
	$(MAKE) -C libvchan-socket sanitize
	PYTHON=$(abspath $(VPY)) ./libvchan-socket/run-sanitized-tests.sh

install:
	$(MAKE) -C libvchan-socket install

$(VENV)/.bench: $(VENV)/.installed
	$(VPY) -m pip install -q -e '.[test,bench]'
	touch $@

bench: $(VENV)/.bench lib
	$(VPY) -m bench $(BENCH_ARGS)

# Random verified transfers for as long as asked (not in CI): make soak SOAK_SECONDS=3600
SOAK_SECONDS ?= 600
soak: $(VENV)/.installed lib
	$(VPY) tests/soak.py --seconds $(SOAK_SECONDS)

clean:
	-$(MAKE) -C libvchan-socket clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
