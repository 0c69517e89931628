# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: on the CPU machines this resolves to the local CPU wheel instead of a CUDA build.
TORCH := torch==2.13.0
DEMO_DIR ?= outputs/demo

.PHONY: demo test lint env clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

env: $(VENV)/.installed

demo: env
	$(BIN)/mindgap-pipeline experiment=smoke output_dir=$(DEMO_DIR)

test: env
	$(BIN)/python -m pytest

lint: env
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs multirun
