"""scripts/gpu_check.sh --dry-run: the install plan, the GPU tests (skipped without CUDA) and the benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mindgap.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow

CARRIED = [
    "hydra-core",
    "omegaconf",
    "datasets",
    "dill",
    "multiprocess",
    "xxhash",
    "fsspec",
    "math-verify",
    "latex2sympy2_extended",
    "trl",
    "submitit",
    "hydra-submitit-launcher",
    "antlr4-python3-runtime",
]


def test_dry_run_writes_one_report(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "dry-run"
    # Every package the GPU machine lacks has a step: here all are installed already.
    assert sorted(report["install_plan"]) == sorted(CARRIED)
    assert all("installed" in step for step in report["install_plan"].values())
    # Without CUDA the GPU tests are collected and skipped, none fails.
    tests = report["tests"]
    assert tests["tests"] == tests["skipped"] == 8 and tests["failures"] == tests["errors"] == 0
    bench = report["bench_train"]
    assert bench["config"] == "dry-run" and bench["device"] == "cpu"
    assert sorted(bench["variants"]) == ["dft", "fsdp2-dft", "is", "sft"]
    assert bench["variants"]["sft"]["step_time_vs_sft"] == 1.0
    # 2 rows x 64 tokens, each with a prompt of 64 // 8 = 8 to 64 // 4 = 16 tokens masked.
    assert 2 * 48 <= bench["loss_tokens_per_step"] <= 2 * 56
    assert all(variant["tokens_per_s"] > 0 for variant in bench["variants"].values())
