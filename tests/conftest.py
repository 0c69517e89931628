"""Shared fixtures: one model cache per test session, the shared data, and the tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mindgap.models.config import TinyModelConfig
from mindgap.paths import PROJECT_ROOT

# Two workers with torch's default two threads each oversubscribe two cores, and its OpenMP pool then
# slows by an order of magnitude: under pytest-xdist each worker and every process it starts use one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

# The slowest test files, slowest first (measured on 2 cores). With one worker per core and a file per
# worker, the run lasts as long as the busier worker: the long files start first and the short unit files
# fill in the end (make test passes --no-loadscope-reorder, which keeps this order).
SLOWEST_FILES = [
    "integration/test_real_model.py",
    "integration/test_apps.py",
    "integration/test_rewrite_stage.py",
    "integration/test_resume.py",
    "integration/test_training_recipe.py",
    "integration/test_vllm.py",
    "integration/test_faults.py",
    "integration/test_eval.py",
    "integration/test_step_normalisation.py",
    "integration/test_gpu_check.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.relative_to(Path(__file__).parent).as_posix()
        return SLOWEST_FILES.index(path) if path in SLOWEST_FILES else len(SLOWEST_FILES)

    items.sort(key=rank)


DATA_ROOT = os.environ.get("MINDGAP_DATA_ROOT") or str(PROJECT_ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Built models go to a per-session cache; W&B never leaves the machine."""
    os.environ["MINDGAP_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(scope="session")
def data_root() -> str:
    return DATA_ROOT


@pytest.fixture(scope="session")
def tiny_model_path(_isolated_environment: None) -> str:
    from mindgap.models.tiny import build_tiny_model

    return str(build_tiny_model(TinyModelConfig(), os.environ["MINDGAP_CACHE_DIR"], DATA_ROOT))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path: str):
    from mindgap.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_path)


# Each app's module, as the console scripts of pyproject.toml name them.
APP_MODULES = {
    "rewrite": "mindgap.rewriting.app",
    "train": "mindgap.training.app",
    "eval": "mindgap.evaluation.app",
    "compare": "mindgap.evaluation.compare_app",
    "pipeline": "mindgap.pipeline.app",
}


def run_app_subprocess(app: str, *overrides: str, cwd: Path | None = None):
    """Run ``mindgap-<app> overrides...`` (as ``python -m``) and return the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", APP_MODULES[app], *overrides],
        capture_output=True,
        text=True,
        cwd=cwd or PROJECT_ROOT,
        env=os.environ.copy(),
        timeout=600,
    )


# Sampling defaults a real model's generation_config.json may carry; none may reach the generators, which
# sample from softmax(logits / T) over the top-p nucleus only (each of these would change that distribution).
GENERATION_CONFIG_PROCESSORS = {"repetition_penalty": 1.5, "top_k": 3, "min_p": 0.3, "no_repeat_ngram_size": 2}


@pytest.fixture(scope="session")
def tiny_model_with_sampling_defaults(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model with GENERATION_CONFIG_PROCESSORS written into its generation_config.json."""
    import json
    import shutil

    target = tmp_path_factory.mktemp("tiny-sampling-defaults") / "model"
    shutil.copytree(tiny_model_path, target)
    config_file = target / "generation_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **GENERATION_CONFIG_PROCESSORS}))
    return str(target)
