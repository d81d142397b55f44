# `make test` and `make train` install first when .venv is missing, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install test train bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,embodied]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q test torchrl_crossq

train: $(STAMP)
	$(PY) sota_implementations/crossq.py $(ARGS)

# Allocator settings of perf-notes.md (big freed buffers stay mapped); BENCH_ENV= to disable.
BENCH_ENV ?= MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(BENCH_ENV) $(PY) bench/update.py --precision bf16 --compile --write-results $(ARGS)
	$(BENCH_ENV) $(PY) bench/e2e.py --write-results
	$(BENCH_ENV) $(PY) bench/phases.py --write-results
	$(BENCH_ENV) $(PY) bench/replay.py
	$(BENCH_ENV) $(PY) bench/collect.py
	$(BENCH_ENV) $(PY) bench/learning.py --impls ours sb3 ours_bf16

lint: $(STAMP)
	$(VENV)/bin/ruff check torchrl_crossq sota_implementations test bench
	$(VENV)/bin/ruff format --check torchrl_crossq sota_implementations test bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
