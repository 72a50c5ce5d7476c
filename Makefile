# Two commands on a fresh machine with Python 3.10+ and git: `make train`, `make test`.
# Both bootstrap uv (with pip, if missing) and the locked environment first: `make train`
# what training needs, `make test` every optional extra too (export, launchers, dev).
# Extras for your own use: uv sync --inexact --extra export
# (docs/configuration.md#optional-extras).
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --frozen --no-sync
# Installs compile every module's bytecode once: where Python may not write its cache
# (PYTHONDONTWRITEBYTECODE=1, as in many containers and CI runners), each command would
# otherwise compile torch and MLflow again (seconds per process).
export UV_COMPILE_BYTECODE := 1

.PHONY: help uv setup setup-all train test test-fast lint format ui server clean

help:
	@echo "make train      train the default model (fetches MNIST first); ARGS='model=cnn4 ...'"
	@echo "make test       full test suite; tests needing real MNIST fetch it or say why they skip"
	@echo "make test-fast  the suite without tests marked slow"
	@echo "make lint       ruff check + ruff format --check + tests/test_code.py (names defined twice)"
	@echo "make ui         MLflow UI on the repository's store (http://127.0.0.1:5000); PORT, WORKERS=1, STORE"
	@echo "make server     MLflow tracking server on the store for jobs elsewhere; PORT=5000, WORKERS=1, STORE"

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv \
		|| $(PYTHON) -m pip install --quiet --user uv \
		|| $(PYTHON) -m pip install --quiet --user --break-system-packages uv

# --inexact: extras installed by `make test` (or by hand) stay installed. No stamp file:
# one would outlive an exact sync run by hand, which removes what it does not name.
# The check (--check, milliseconds) finds any difference from the lock, and only then does
# make sync (a sync compiles every module's bytecode again: seconds).
SYNC := $(UV) sync --frozen --inexact
setup: | uv
	@$(SYNC) --check >/dev/null 2>&1 || $(SYNC)

setup-all: | uv
	@$(SYNC) --all-extras --check >/dev/null 2>&1 || $(SYNC) --all-extras

train: setup
	$(RUN) python scripts/train.py $(ARGS)

# In parallel (pytest-xdist), one worker per core, each with its share of torch's threads
# (tests/__init__.py). TEST_WORKERS=0 runs them in this process (for a debugger).
# --dist worksteal: a worker that runs out of tests takes half of another's queue. Under the
# default (load) the slow tests, queued to one worker, ran one after the other for minutes
# while the other worker idled (make test: 551 s, against 421 s with worksteal, 2 cores).
TEST_WORKERS ?= auto
PYTEST := $(RUN) pytest -n $(TEST_WORKERS) --dist worksteal
test: setup-all
	$(PYTEST) $(ARGS)

test-fast: setup-all
	$(PYTEST) -m "not slow" $(ARGS)

# tests/test_code.py: a function or class defined twice in one scope, which ruff misses.
lint: setup-all
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) pytest -q -p no:cacheprovider tests/test_code.py

format: setup-all
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

# One server worker by default (MLflow's is 4): each is a Python process importing MLflow,
# competing with training for a small machine's cores. WORKERS=4 for a server many people use.
# MLflow's job runner is off (JOBS=true turns it on): it runs the UI's GenAI jobs, which
# this project has none of, in about 8 more processes (10 and 2.1 GB in all, instead of 2
# and 0.5 GB, measured on MLflow 3.17). STORE: the store's directory (mlflow.db, artifacts/).
# Both record the address they serve in $(STORE)/ui_address: the UI links that commands
# print for that store point there (mnist/tracking/ui.py; its DEFAULT_ADDRESS is PORT's
# default). A store on a read-only mount is served all the same, unrecorded.
HOST := 127.0.0.1
PORT ?= 5000
WORKERS ?= 1
JOBS ?= false
STORE ?= $(CURDIR)/mlruns
MLFLOW_SERVE := MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$(JOBS) $(RUN) mlflow
RECORD_ADDRESS := mkdir -p '$(STORE)' && echo http://$(HOST):$(PORT) > '$(STORE)/ui_address' \
	|| echo "note: $(STORE)/ui_address not written: printed links may name another port"
ui: setup
	@$(RECORD_ADDRESS)
	$(MLFLOW_SERVE) ui --backend-store-uri sqlite:///$(STORE)/mlflow.db --host $(HOST) \
		--port $(PORT) --workers $(WORKERS)

# The repository's store behind a tracking server, for jobs in other processes or on other
# machines: MLFLOW_TRACKING_URI=http://127.0.0.1:$(PORT) python scripts/train.py -m ...
# Artifacts go through the server into mlruns/artifacts. Loopback only: reach it from a
# cluster through an SSH tunnel (docs/sweeps.md#parallel-cluster-server).
server: setup
	@$(RECORD_ADDRESS)
	$(MLFLOW_SERVE) server --backend-store-uri sqlite:///$(STORE)/mlflow.db \
		--artifacts-destination $(STORE)/artifacts --host $(HOST) --port $(PORT) \
		--workers $(WORKERS)
