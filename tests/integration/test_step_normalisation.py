"""The loss is a per-token mean over the optimiser step: batching, accumulation and ranks leave the gradient alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.paths import CONFIG_DIR
from mindgap.rewriting.app import rewrite
from mindgap.training.run import run_training

pytestmark = pytest.mark.slow

# Four expert records of different lengths: one optimiser step holds all of them in every layout.
COMMON = [
    "experiment=smoke",
    "rewrite=none",
    "data.limit=4",
    "loss=is",
    "train.max_steps=1",
    "train.optim.grad_clip=null",
]


class SaveFirstGradient(Callback):
    """Writes the flat gradient of the first optimiser step (rank 0), before any clipping or update."""

    def __init__(self, path: Path):
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0 and trainer.is_global_zero:
            gradient = torch.cat([p.grad.flatten() for p in pl_module.parameters() if p.grad is not None])
            torch.save(gradient, self.path)


def _config(output_dir: Path, *overrides: str) -> MindgapConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*COMMON, f"output_dir={output_dir}", *overrides])
    return to_typed(cfg, MindgapConfig)


def test_gradients_agree_across_micro_batching_accumulation_and_ranks(tmp_path: Path) -> None:
    dataset = rewrite(_config(tmp_path / "rewrite"), tmp_path / "rewrite")
    layouts = {
        "micro4_acc1": ["train.micro_batch_size=4", "train.accumulate_grad_batches=1"],
        "micro1_acc4": ["train.micro_batch_size=1", "train.accumulate_grad_batches=4"],
        "micro2_ranks2": ["train.micro_batch_size=2", "strategy=ddp_spawn", "train.strategy.accelerator=cpu"],
    }
    gradients = {}
    for name, overrides in layouts.items():
        out = tmp_path / name
        config = _config(out, f"train.dataset_path={dataset}", *overrides)
        run_training(config, out, logger=None, callbacks=[SaveFirstGradient(tmp_path / f"{name}.pt")])
        gradients[name] = torch.load(tmp_path / f"{name}.pt")
    reference = gradients["micro4_acc1"]
    scale = reference.abs().max()
    assert scale > 1e-4
    # Measured: differences of about 2e-11 against gradients of about 2e-4 (fp32 summation order).
    for name in ("micro1_acc4", "micro2_ranks2"):
        torch.testing.assert_close(gradients[name], reference, atol=1e-6 * scale.item(), rtol=0, msg=name)
