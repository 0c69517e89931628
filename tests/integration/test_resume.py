"""Resuming from a mid-run checkpoint reproduces the uninterrupted run, under ddp and fsdp2 (2 CPU processes)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mindgap.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow

# 16 raw expert records, micro-batch 2 on each of 2 ranks: 4 optimiser steps per epoch, 2 epochs.
# A checkpoint every 3 steps; the resumed run starts from the step-3 checkpoint (mid first epoch),
# as a preempted job would, and crosses an epoch boundary. A checkpoint is written when its step
# ends, so what the later steps of the uninterrupted run do cannot change it.
COMMON = [
    "experiment=smoke",
    "rewrite=none",
    "data.limit=16",
    "loss=is",
    "train.micro_batch_size=2",
    "train.max_steps=null",
    "train.max_epochs=2",
    "train.checkpoint.every_n_steps=3",
    "train.checkpoint.keep=null",
    "train.progress_bar=false",
    "train.strategy.accelerator=cpu",
]


def _train(output_dir: Path, *overrides: str) -> None:
    job = [sys.executable, "-m", "tests.integration.logged_training", str(output_dir)]
    result = subprocess.run(
        [*job, *COMMON, *overrides],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _losses(output_dir: Path) -> dict[int, float]:
    with (output_dir / "csv" / "run" / "metrics.csv").open() as handle:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(handle) if row["train/loss"]}


# fsdp2 also runs with the chunked lm head and activation checkpointing, so that the same runs
# show that sharding, chunking and recomputation leave training unchanged.
STRATEGIES = {
    "ddp": ["strategy=ddp"],
    "fsdp2": ["strategy=fsdp2", "train.logits_chunk_size=7", "train.strategy.activation_checkpointing=true"],
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Output directory of the uninterrupted run of each strategy."""
    runs = {}
    for name, overrides in STRATEGIES.items():
        runs[name] = tmp_path_factory.mktemp(f"full-{name}")
        _train(runs[name], *overrides)
    return runs


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_resumed_run_reproduces_the_uninterrupted_losses_and_weights(
    tmp_path: Path, strategy: str, uninterrupted: dict[str, Path]
) -> None:
    full, resumed = uninterrupted[strategy], tmp_path / "resumed"
    checkpoints = sorted(path.name for path in (full / "checkpoints").glob("*.ckpt"))
    assert checkpoints == ["step-000003.ckpt", "step-000006.ckpt"]
    _train(resumed, *STRATEGIES[strategy], f"train.checkpoint.resume={full / 'checkpoints' / checkpoints[0]}")

    expected = _losses(full)
    assert sorted(expected) == list(range(8))
    # CPU training is deterministic: the resumed steps are bit-identical to the uninterrupted ones.
    assert _losses(resumed) == {step: expected[step] for step in range(3, 8)}
    full_weights = load_file(full / "model" / "model.safetensors")
    resumed_weights = load_file(resumed / "model" / "model.safetensors")
    assert full_weights.keys() == resumed_weights.keys()
    for name, tensor in full_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=0, atol=0, msg=name)


def test_fsdp2_with_chunked_head_and_recomputation_trains_like_ddp(uninterrupted: dict[str, Path]) -> None:
    ddp, fsdp2 = _losses(uninterrupted["ddp"]), _losses(uninterrupted["fsdp2"])
    assert ddp.keys() == fsdp2.keys()
    # Same weights and data at step 0; afterwards only fp32 summation order differs.
    for step in ddp:
        assert fsdp2[step] == pytest.approx(ddp[step], rel=1e-5), step
    ddp_weights, fsdp2_weights = (load_file(uninterrupted[name] / "model" / "model.safetensors") for name in STRATEGIES)
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(fsdp2_weights[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
