# Two commands on a fresh machine with Python 3.10+ and git: `make train`, `make test`.
# Both bootstrap uv (with pip, if missing) and the locked environment first.
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --frozen --extra dev

.PHONY: help setup train test test-fast lint format ui server clean

help:
	@echo "make train      train the default model (fetches MNIST first); ARGS='model=cnn4 ...'"
	@echo "make test       full test suite; tests needing real MNIST fetch it or say why they skip"
	@echo "make test-fast  the suite without tests marked slow"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make ui         MLflow UI on the repository's store (http://127.0.0.1:5000)"
	@echo "make server     MLflow tracking server on the store for jobs elsewhere; PORT=5000"

.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv \
		|| $(PYTHON) -m pip install --quiet --user uv \
		|| $(PYTHON) -m pip install --quiet --user --break-system-packages uv
	$(UV) sync --frozen --extra dev
	@touch $@

setup: .venv/.synced

train: setup
	$(RUN) python scripts/train.py $(ARGS)

test: setup
	$(RUN) pytest $(ARGS)

test-fast: setup
	$(RUN) pytest -m "not slow" $(ARGS)

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: setup
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

ui: setup
	$(RUN) mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

# The repository's store behind a tracking server, for jobs in other processes or on other
# machines: MLFLOW_TRACKING_URI=http://127.0.0.1:$(PORT) python scripts/train.py -m ...
# Artifacts go through the server into mlruns/artifacts. Loopback only: reach it from a
# cluster through an SSH tunnel (see README).
PORT ?= 5000
server: setup
	$(RUN) mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--artifacts-destination $(CURDIR)/mlruns/artifacts --host 127.0.0.1 --port $(PORT)
