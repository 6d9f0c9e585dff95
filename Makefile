# First commands on a fresh machine:  make demo   then   make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: demo test lint setup bench traces clean

# The stamp is rebuilt when the dependency files change.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build; a GPU user who already has torch keeps theirs.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	# DeepSpeed compiles its CPU shared-memory collective op on first use (about a minute on 2 cores, once per
	# venv); doing it here keeps that minute out of the first ZeRO run's measured time. Not fatal: GPUs lack it.
	-$(BIN)/python -c "from deepspeed.accelerator import get_accelerator as a; b = a().create_op_builder('ShareMemCommBuilder'); b and b.load()" >/dev/null 2>&1
	# Optimizer offload runs DeepSpeedCPUAdam, another op compiled on first use (about 2 CPU-minutes): prebuilt too.
	-$(BIN)/python -c "from deepspeed.accelerator import get_accelerator as a; b = a().create_op_builder('CPUAdamBuilder'); b and b.load()" >/dev/null 2>&1
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/ftopt demo

# Two workers (pytest-xdist), one per core of a CI runner, each on one thread (torch would start one per core in
# each); --durations names the slowest tests of every run.
test: setup lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --durations=20

# Style holds without review: lint (pyflakes, pycodestyle, import order, pyupgrade, bugbear), format check, the
# layer contract (import-linter, configured in pyproject.toml: imports point only downward, no cycles), and the docs
# site (mkdocs.yml; --strict fails on a broken link or a page missing from the nav).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: setup
	$(BIN)/python benchmarks/plan_speed.py

# The traces ftopt ships for its preset plans (src/ftopt/presets/traces.json) answer only while the source files they
# ran are unchanged: after a change to the estimators, tests/estimate/test_trace_seed.py says to run this.
traces: setup
	OMP_NUM_THREADS=1 $(BIN)/python scripts/trace_seed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
