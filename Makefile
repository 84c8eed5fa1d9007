# labkit: two commands on a fresh machine.
#   make lab   — create .venv, install, run the lab on the auto-selected profile
#   make test  — create .venv if missing, install, run the test suite
#   make gpu-check — on a GPU machine, the short NCCL checks of every method, as a table
#   make assignments — the students' release of the exercises (nbgrader) in assignments/release/
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: lab test install clean-results gpu-check assignments

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements.txt requirements-test.txt requirements-assignments.txt pyproject.toml
	$(BIN)/pip install -r requirements-test.txt -r requirements-assignments.txt
	$(BIN)/pip install --no-deps -e .
	touch $@

install: $(VENV)/.installed

lab: install
	$(BIN)/labkit lab

test: install
	$(BIN)/python -m pytest -q --durations=15 tests

gpu-check: install   # the short NCCL checks of the GPU path (one line and exit 0 without a GPU)
	$(BIN)/python -m labkit.measure.gpu_check

assignments: install   # nbgrader generate_assignment for every exercise in assignments/source/
	cd assignments && PATH="$(CURDIR)/$(BIN):$$PATH" nbgrader generate_assignment "*" --force

clean-results:
	rm -rf results/runs results/plots results/notebooks results/performance_report.txt
