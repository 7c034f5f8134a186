.DEFAULT_GOAL := help
PY ?= python3

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install:  ## install zaphub and the test tools (editable)
	$(PY) -m pip install -e '.[test]'
	npm ci --prefix tests/e2e/js

run:  ## run the host with ./config.yaml
	zaphub run

test:  ## the whole test suite (the README's command)
	$(PY) -m pip install -e '.[test]' && npm ci --prefix tests/e2e/js && $(PY) -m pytest

lint:  ## ruff (lint + format check) and mypy
	ruff check .
	ruff format --check .
	mypy

bench:  ## webhook and fan-out benchmarks (figures go to docs/benchmarks.md)
	$(PY) bench/webhooks.py
	$(PY) bench/webhooks.py --rate 1000
	$(PY) bench/fanout.py

.PHONY: help install run test lint bench
