"""The LightningModule: wiring between the model, the loss and the logs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from mindgap.config import LossConfig, OptimConfig
from mindgap.errors import DataError
from mindgap.models import load_causal_lm
from mindgap.training.losses import WeightRule, source_ids, token_logprobs, weight_rules, weighted_loss
from mindgap.training.stats import WeightSums, finish, weight_sums


def warmup_cosine(step: int, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_lr_ratio``."""
    warmup_steps = int(total_steps * warmup_ratio)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class FineTuningModule(LightningModule):
    def __init__(self, model_path: str, dtype: str, optim: OptimConfig, loss: LossConfig, export_dir: Path):
        super().__init__()
        self.model_path = model_path
        self.model_dtype = dtype
        self.optim = optim
        self.loss = loss
        self.export_dir = export_dir
        self.model: torch.nn.Module | None = None
        # Loss and importance-weight sums of the optimiser step in progress, over its micro-batches on this rank.
        self.step_loss = torch.zeros(())
        self.step_weights = WeightSums.zeros()

    def configure_model(self) -> None:
        self._reset_step()
        if self.model is None:
            # from_pretrained returns the model in eval mode; dropout and friends must train.
            self.model = load_causal_lm(self.model_path, dtype=self.model_dtype).train()

    def _reset_step(self) -> None:
        self.step_loss = torch.zeros((), device=self.device)
        self.step_weights = WeightSums.zeros(self.device)

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        assert self.model is not None
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logprobs, mask = token_logprobs(logits, batch["labels"])
        sources = source_ids(batch["sources"], device=logprobs.device)
        rules = weight_rules(self.loss.name, sources, self.loss.expert_behavior)
        missing = (rules == WeightRule.MODEL) & ~batch["has_behavior"]
        if missing.any():
            ids = [record_id for record_id, lacks in zip(batch["ids"], missing.tolist(), strict=True) if lacks]
            raise DataError(f"records {ids}: loss=is needs behaviour log-probs and these have none")
        # This micro-batch's share of the step's per-token mean: its summed loss over the step's tokens.
        result = weighted_loss(
            logprobs,
            mask,
            rules,
            batch["behavior_logprobs"][:, 1:],
            num_step_tokens=batch["step_loss_tokens"],
            clip_max=self.loss.clip.max,
            clip_min=self.loss.clip.min,
            clip_mode=self.loss.clip.mode,
            level=self.loss.level,
        )
        if not torch.isfinite(result.loss):
            raise DataError(f"non-finite loss {result.loss.item()} on the batch of records {batch['ids']}")
        self.step_loss += result.loss.detach()
        self.step_weights = self.step_weights.merge(
            weight_sums(result.weights, result.log_ratio, result.clipped, mask, sources)
        )
        # Lightning divides by the accumulation and DDP/FSDP average gradients over ranks: undo both,
        # so the step's gradient is that of the per-token mean over all its micro-batches and ranks.
        return result.loss * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        step_loss = self.trainer.strategy.reduce(self.step_loss, reduce_op="sum")
        sums, maxima = self.step_weights.sums, self.step_weights.maxima
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM)
            torch.distributed.all_reduce(maxima, op=torch.distributed.ReduceOp.MAX)
        metrics = {"train/loss": step_loss.item()} | finish(WeightSums(sums, maxima))
        self.log_dict(metrics, prog_bar=False, rank_zero_only=True)
        self._reset_step()

    def on_train_end(self) -> None:
        # Runs in the training processes (also spawned ones, where the weights live).
        if self.trainer.is_global_zero:
            assert self.model is not None
            self.model.save_pretrained(self.export_dir)

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
