"""GPU tests: skipped without CUDA. Models have real architectures (configs/*.json) and random weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).parent / "configs"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def qwen_model_path(tiny_model_path: str):
    """``qwen_model_path(name)``: the directory of configs/<name>.json with random weights (built once)."""
    from mindgap.models.tiny import build_from_config_file

    def build(name: str) -> str:
        return str(build_from_config_file(CONFIGS / f"{name}.json", tiny_model_path, os.environ["MINDGAP_CACHE_DIR"]))

    return build
