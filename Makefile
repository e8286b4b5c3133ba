# hvla_ros — common tasks. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Every test run gets its own DDS domain and stays on this host (see hvla_ros/test/conftest.py).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl


.PHONY: help setup test-tools test lint typecheck pytest demo bench lock clean

help:
	@echo "make setup  - create .venv with ROS 2 Jazzy wheels + pinned stack, build interfaces (idempotent)"
	@echo "make test   - setup if needed, then ruff, mypy and pytest"
	@echo "make demo   - setup if needed, then run the embedded default (simulated SO-101) end to end"
	@echo "make bench  - run every benchmark under benchmarks/ (results in benchmarks/results/)"

setup:
	@bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check hvla_ros benchmarks scripts

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(PY) -m pytest hvla_ros/test $(PYTEST_ARGS)

test-tools:
	@bash scripts/setup.sh --test-tools

test: test-tools lint typecheck pytest

demo: setup
	$(VENV)/bin/hvla demo $(DEMO_ARGS)

bench: setup
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

lock: setup
	$(PY) -m pip freeze --exclude-editable | sed -E 's/^torch==.*/torch==2.13.0/; s/^torchvision==.*/torchvision==0.28.0/' > requirements/constraints.txt.new
	@echo "review and move requirements/constraints.txt.new over requirements/constraints.txt"

clean:
	rm -rf build log install
