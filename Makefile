# labkit: two commands on a fresh machine.
#   make lab   — create .venv, install, run the lab on the auto-selected profile
#   make test  — create .venv if missing, install, run the test suite
#   make gpu-check — on a GPU machine, the short NCCL checks of every method, as a table
#   make assignments — the students' release of the exercises (nbgrader) in assignments/release/
#   make browser-check — a method notebook run in JupyterLab in headless Chromium (live bar, figures)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: lock lab test test-all install clean-results gpu-check assignments browser-deps browser-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install -r requirements.lock   # exact versions: every install gets the same stack
	$(BIN)/pip install --no-deps -e .
	touch $@

# Refresh requirements.lock from the requirements files, then commit it: one universal resolution
# (uv) for every supported platform, an entry that holds on some only carrying its marker (the
# CUDA stack: sys_platform == 'linux'); pip installs the entries whose markers hold where it runs.
lock: $(BIN)/python
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile --universal --python-version 3.11 --upgrade --no-emit-index-url \
		-o requirements.lock requirements-test.txt requirements-assignments.txt

install: $(VENV)/.installed

lab: install
	$(BIN)/labkit lab

test: install   # the suite CI runs; long end-to-end runs (marked slow) are in test-all
	$(BIN)/python -m pytest -q --durations=15 -m "not slow" tests

test-all: install   # everything: also the whole lab, the recipe and cost-model measurements, all six exercises autograded
	LABKIT_TEST_ALL=1 $(BIN)/python -m pytest -q --durations=25 tests

gpu-check: install   # the short NCCL checks of the GPU path (one line and exit 0 without a GPU)
	$(BIN)/python -m labkit.measure.gpu_check

assignments: install   # nbgrader generate_assignment for every exercise in assignments/source/
	cd assignments && PATH="$(CURDIR)/$(BIN):$$PATH" nbgrader generate_assignment "*" --force

browser-deps: install   # Debian's chromium (apt, as root or with sudo) and Playwright for Python
	command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	$(BIN)/pip install -c requirements.lock -r requirements-browser.txt   # shared packages stay at the lock's versions

browser-check: browser-deps
	$(BIN)/python tests/browser/check_notebook.py

clean-results:
	rm -rf results/runs results/plots results/notebooks results/performance_report.txt results/lessons.json
