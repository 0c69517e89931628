"""The LightningModule: wiring between the model, the loss and the logs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from mindgap.data.datamodule import REFERENCE
from mindgap.errors import DataError
from mindgap.models.loading import ModelSource, load_causal_lm, load_model_config
from mindgap.records import SOURCES
from mindgap.tracking import log_weight_histograms
from mindgap.training.config import TrainConfig
from mindgap.training.logits import label_logprobs
from mindgap.training.losses import WeightRule, source_ids, weight_rules, weighted_loss
from mindgap.training.stats import HISTOGRAM_EDGES, WeightSums, finish, weight_histogram, weight_sums
from mindgap.training.strategy import master_dtype, shard_model

# Validation groups: reference solutions (val/loss), then held-out records per source (val/<source>/loss).
VAL_GROUPS = (REFERENCE, *SOURCES)
_EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_dtype(model: ModelSource, dtype: str) -> torch.dtype:
    """The dtype a trained model is saved in: ``model.dtype``, or for ``auto`` the initial model's own."""
    if dtype != "auto":
        return _EXPORT_DTYPES[dtype]
    initial = load_model_config(model).dtype
    if isinstance(initial, str):
        return _EXPORT_DTYPES[initial]
    return initial or torch.float32


def warmup_cosine(step: int, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay to ``min_lr_ratio``."""
    warmup_steps = int(total_steps * warmup_ratio)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class FineTuningModule(LightningModule):
    """Trains fp32 (or, under ``train.precision=bf16-true``, bf16) weights; exports them in ``export_dtype``."""

    def __init__(self, model: ModelSource, export_dtype: str, train: TrainConfig, export_dir: Path):
        super().__init__()
        self.model_source = model
        # model.dtype: what rewriting and evaluation load; ``auto`` keeps the initial model's dtype.
        self.export_dtype = export_dtype
        self.train_config = train
        self.export_dir = export_dir
        # Set by export(). A run resumed from its final checkpoint has no training left: Lightning then
        # skips on_train_end, and on_fit_end exports instead.
        self.exported = False
        self.model: torch.nn.Module | None = None
        # Sums over the optimiser step in progress (its micro-batches on this rank): loss, importance
        # weights, weight histogram, and real vs processed (padded) tokens.
        self.step_loss = torch.zeros(())
        self.step_weights = WeightSums.zeros()
        self.step_histogram = torch.zeros(())
        self.step_tokens = torch.zeros(2)
        # Per validation group: summed NLL and token count of this rank's validation batches.
        self.val_sums = torch.zeros(len(VAL_GROUPS), 2)

    @property
    def validates(self) -> bool:
        return self.train_config.val is not None or self.train_config.val_share is not None

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.validates:
            # Every N optimiser steps of the epoch, in micro-batches; at most once an epoch (Lightning's bound).
            datamodule = self.trainer.datamodule
            self.trainer.val_check_interval = min(
                self.train_config.val_every_n_steps * self.trainer.accumulate_grad_batches,
                datamodule.micro_batches_per_epoch(),
            )

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_index: int) -> None:
        trainer = self.trainer
        last_of_run = (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps) or (
            trainer.current_epoch == trainer.max_epochs - 1 and batch_index == trainer.num_training_batches - 1
        )
        if self.validates and last_of_run:
            # Lightning validates when the run is asked to stop: so the last step is always validated.
            trainer.should_stop = True

    def configure_model(self) -> None:
        self._reset_step()
        if self.model is not None:
            return
        # from_pretrained returns the model in eval mode; dropout and friends must train.
        self.model = load_causal_lm(self.model_source, dtype=master_dtype(self.train_config)).train()
        strategy = self.train_config.strategy
        if strategy.activation_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if isinstance(self.trainer.strategy, ModelParallelStrategy):
            shard_model(self.model, self.device_mesh["data_parallel"], self.train_config)

    def _reset_step(self) -> None:
        self.step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.step_weights = WeightSums.zeros(self.device)
        self.step_histogram = torch.zeros(
            len(SOURCES), len(HISTOGRAM_EDGES) - 1, dtype=torch.float64, device=self.device
        )
        self.step_tokens = torch.zeros(2, dtype=torch.float64, device=self.device)

    def _histogram_step(self) -> bool:
        every = self.train_config.histogram_every_n_steps
        return every is not None and self.train_config.loss.name != "sft" and (self.global_step + 1) % every == 0

    def _label_logprobs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.model is not None
        return label_logprobs(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            self.train_config.logits_chunk_size,
        )

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        loss = self.train_config.loss
        logprobs, mask = self._label_logprobs(batch)
        sources = source_ids(batch["sources"], device=logprobs.device)
        rules = weight_rules(loss.name, sources, loss.expert_behavior)
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
            clip_max=loss.clip.max,
            clip_min=loss.clip.min,
            clip_mode=loss.clip.mode,
            level=loss.level,
        )
        if not torch.isfinite(result.loss):
            raise DataError(f"non-finite loss {result.loss.item()} on the batch of records {batch['ids']}")
        self.step_loss += result.loss.detach()
        self.step_weights = self.step_weights.merge(
            weight_sums(result.weights, result.log_ratio, result.clipped, mask, sources, rules)
        )
        if self._histogram_step():
            self.step_histogram += weight_histogram(result.weights, mask, sources)
        self.step_tokens += torch.tensor(
            [batch["attention_mask"].sum().item(), batch["attention_mask"].numel()], dtype=torch.float64
        ).to(self.device)
        # Lightning divides by the accumulation and DDP/FSDP average gradients over ranks: undo both,
        # so the step's gradient is that of the per-token mean over all its micro-batches and ranks.
        return result.loss * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        summed = torch.cat([self.step_loss[None], self.step_tokens, self.step_weights.sums.flatten()])
        maxima = self.step_weights.maxima
        histogram = self.step_histogram
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(summed, op=torch.distributed.ReduceOp.SUM)
            torch.distributed.all_reduce(maxima, op=torch.distributed.ReduceOp.MAX)
            if self._histogram_step():
                torch.distributed.all_reduce(histogram, op=torch.distributed.ReduceOp.SUM)
        step_loss, real_tokens, processed_tokens = summed[:3].tolist()
        sums = WeightSums(summed[3:].view_as(self.step_weights.sums), maxima)
        metrics = {
            "train/loss": step_loss,
            "train/padding_efficiency": real_tokens / processed_tokens,
            "train/lr": optimizer.param_groups[0]["lr"],
        } | finish(sums)
        self.log_dict(metrics, prog_bar=False, rank_zero_only=True)
        if self._histogram_step() and self.trainer.is_global_zero:
            log_weight_histograms(self.loggers, histogram, HISTOGRAM_EDGES, self.global_step)
        self._reset_step()

    def on_validation_epoch_start(self) -> None:
        self.val_sums = torch.zeros(len(VAL_GROUPS), 2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        logprobs, mask = self._label_logprobs(batch)
        if not batch["counted"]:
            return
        groups = torch.tensor([VAL_GROUPS.index(source) for source in batch["sources"]], device=logprobs.device)
        per_row = torch.stack([-(logprobs * mask).sum(-1), mask.sum(-1)], dim=-1).to(torch.float64)
        self.val_sums.index_add_(0, groups, per_row)

    def on_validation_epoch_end(self) -> None:
        sums = self.val_sums.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM)
        metrics = {}
        for group, (nll, tokens) in zip(VAL_GROUPS, sums.tolist(), strict=True):
            if tokens > 0:
                metrics["val/loss" if group == REFERENCE else f"val/{group}/loss"] = nll / tokens
        self.log_dict(metrics, rank_zero_only=True)

    def on_train_end(self) -> None:
        self.export()

    def on_fit_end(self) -> None:
        if not self.exported:
            self.export()

    def export(self) -> None:
        """Write the trained weights to ``export_dir`` as a Hugging Face model.

        Runs in the training processes (also spawned ones, where the weights live). Every rank takes
        part in gathering sharded weights; rank zero writes them, cast from the master weights.
        """
        assert self.model is not None
        full_state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.trainer.is_global_zero:
            dtype = export_dtype(self.model_source, self.export_dtype)
            exported = {
                name: value.to(dtype) if value.is_floating_point() else value for name, value in full_state.items()
            }
            self.model.save_pretrained(self.export_dir, state_dict=exported)
            # save_pretrained records the dtype of the (fp32 master) parameters, not of the saved tensors.
            config_file = self.export_dir / "config.json"
            config = json.loads(config_file.read_text())
            config["dtype"] = str(dtype).removeprefix("torch.")
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        self.exported = True

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if gradient_clip_val is None:
            return
        if isinstance(self.trainer.strategy, FSDPStrategy):
            # Lightning's FSDP1 plugin refuses norm clipping: the norm must come from the root
            # FSDP module, which reduces it over every rank's shards.
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _total_steps(self) -> int:
        # Not ``trainer.estimated_stepping_batches``: it builds the train loader before a checkpoint is
        # restored, and Lightning then never hands that loader its saved position.
        trainer = self.trainer
        total = trainer.datamodule.optimizer_steps_per_epoch() * trainer.max_epochs
        return total if trainer.max_steps == -1 else min(total, trainer.max_steps)

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.train_config.optim
        parameters = [p for p in self.trainer.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            parameters, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
        )
        total_steps = self._total_steps()
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, total_steps, optim.warmup_ratio, optim.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
