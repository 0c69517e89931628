"""The LightningModule: wiring between the model, the loss and the logs."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule

from mindgap.config import OptimConfig
from mindgap.models import load_causal_lm
from mindgap.training.losses import token_logprobs


def warmup_cosine(step: int, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_lr_ratio``."""
    warmup_steps = int(total_steps * warmup_ratio)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class FineTuningModule(LightningModule):
    def __init__(self, model_path: str, dtype: str, optim: OptimConfig):
        super().__init__()
        self.model_path = model_path
        self.model_dtype = dtype
        self.optim = optim
        self.model: torch.nn.Module | None = None
        # Loss of the optimiser step in progress, summed over its micro-batches on this rank.
        self.step_loss = torch.zeros(())

    def configure_model(self) -> None:
        self.step_loss = torch.zeros((), device=self.device)
        if self.model is None:
            # from_pretrained returns the model in eval mode; dropout and friends must train.
            self.model = load_causal_lm(self.model_path, dtype=self.model_dtype).train()

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        assert self.model is not None
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logprobs, mask = token_logprobs(logits, batch["labels"])
        # This micro-batch's share of the step's per-token mean: its summed loss over the step's tokens.
        loss = -(logprobs * mask).sum() / batch["step_loss_tokens"]
        self.step_loss += loss.detach()
        # Lightning divides by the accumulation and DDP/FSDP average gradients over ranks: undo both,
        # so the step's gradient is that of the per-token mean over all its micro-batches and ranks.
        return loss * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        step_loss = self.trainer.strategy.reduce(self.step_loss, reduce_op="sum")
        self.log("train/loss", step_loss, prog_bar=True, rank_zero_only=True)
        self.step_loss = torch.zeros((), device=self.device)

    def configure_optimizers(self) -> dict[str, Any]:
        parameters = [p for p in self.trainer.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            parameters, lr=self.optim.lr, betas=tuple(self.optim.betas), weight_decay=self.optim.weight_decay
        )
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, total_steps, self.optim.warmup_ratio, self.optim.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
