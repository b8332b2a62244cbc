# Two entry points for a fresh machine: `make train` and `make test`.
# Each creates .venv from the pinned requirements when it is missing or stale.
# On an NVIDIA GPU machine add ACCEL=cuda (e.g. `make train ACCEL=cuda`): it also installs the
# CUDA build of the same jax (requirements-cuda.txt).
PYTHON ?= python3
ACCEL ?= cpu
VENV := .venv
PY := $(VENV)/bin/python
REQUIREMENTS := requirements.txt $(if $(filter cuda,$(ACCEL)),requirements-cuda.txt)
STAMP := $(VENV)/.installed-$(ACCEL)
WORKDIR ?= runs/default
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: help train test test-slow test-all lint format clean
.DEFAULT_GOAL := help

help:
	@echo "make train      train configs/default.py (ResNet-20 on shapes10) into WORKDIR=$(WORKDIR)"
	@echo "make test       the test suite without the slow tests (under 5 minutes on 2 cores)"
	@echo "make test-slow  only the slow tests;  make test-all: every test"
	@echo "make lint       ruff format --check and ruff check;  make format: apply them"
	@echo "make clean      remove .venv and runs/"
	@echo "Add ACCEL=cuda on an NVIDIA GPU machine. Each target installs .venv first when needed."

$(STAMP): $(REQUIREMENTS)
	@echo "Installing the pinned requirements into $(VENV) (once; 1-2 minutes, quiet)..."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(addprefix -r ,$(REQUIREMENTS))
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m resnet_jax.main --config=configs/default.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -n 2 --dist worksteal --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -n 2 --dist worksteal --durations=15

test-all: $(STAMP)
	$(PY) -m pytest -n 2 --dist worksteal --durations=25

# One style (ruff format: PEP 8, 4-space indents) and one rule set (pyproject.toml), checked in CI.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs
