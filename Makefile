# Two commands on a fresh machine:  `make demo` (the main job on the demo corpus)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
# torch first, pinned (an unpinned torch would let pip pick any build). Where a local CPU wheel for the pin exists
# pip takes it; with only the public index, torch==2.13.0 for Linux is the CUDA build (several GB). TORCH_SPEC is
# split into words, so it may carry pip options, e.g. a CPU-only build:
#     make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# (quote a range inside it for the shell: TORCH_SPEC="'torch>=2.6,<2.14'").
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo train test lint docs bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The main job: a 6-trial study on the demo objective and the embedded eSpeak NG corpus (built on first use), two
# trials at a time: on 2 cores two trainings of one thread each do more steps together than one with both.
demo: setup
	$(BIN)/python -m smart_tuner optimize --trials 6 --workers 2

# One training run of the demo preset.
train: setup
	$(BIN)/python -m smart_tuner train --config objectives/demo.yaml

# The test suite (what CI runs): fast tests plus the few marked slow.
test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff: lint and import order (configured in pyproject.toml); CI runs it before the tests.
lint: setup
	$(BIN)/ruff check .

# The config reference (docs/config.md), generated from smart_tuner/config.py; tests/test_docs.py checks it.
docs: setup
	$(BIN)/python scripts/config_reference.py

bench: setup
	$(BIN)/python benchmarks/align_demo.py

clean-venv:
	rm -rf $(VENV)
