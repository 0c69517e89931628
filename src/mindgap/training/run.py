"""Fit a model on a rewritten dataset with the Lightning Trainer and export it for transformers."""

from __future__ import annotations

import re
from pathlib import Path

from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import Logger

from mindgap.config import MindgapConfig
from mindgap.data.datamodule import RewrittenDataModule
from mindgap.errors import ConfigError
from mindgap.models import load_tokenizer, resolve_model
from mindgap.training.module import FineTuningModule
from mindgap.training.strategy import build_strategy, lightning_precision

EXPORT_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = re.compile(r"step-(\d+)(\.ckpt)?$")


def run_training(
    config: MindgapConfig,
    output_dir: Path,
    logger: Logger | list[Logger] | None,
    callbacks: list[Callback] | None = None,
) -> Path:
    """Train (rewriting first when the dataset is missing) and return the exported Hugging Face model."""
    train = config.train
    seed_everything(config.seed, workers=True)
    model = resolve_model(config.model, config.cache_dir, config.data_root)
    datamodule = RewrittenDataModule(config, output_dir)
    export_dir = output_dir / EXPORT_DIR
    checkpoint_dir = output_dir / CHECKPOINT_DIR
    module = FineTuningModule(model, config.model.dtype, train, export_dir)
    callbacks = list(callbacks or [])
    if train.checkpoint.every_n_steps is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoint_dir,
                filename="step-{step:06d}",
                auto_insert_metric_name=False,
                every_n_train_steps=train.checkpoint.every_n_steps,
                # Ranked by step, so ``keep`` keeps the most recent ones.
                monitor="step",
                mode="max",
                save_top_k=train.checkpoint.keep if train.checkpoint.keep is not None else -1,
                save_on_train_epoch_end=False,
            )
        )
    if train.progress_bar:
        callbacks.append(RichProgressBar())
    trainer = Trainer(
        accelerator=train.strategy.accelerator,
        devices=train.strategy.devices,
        num_nodes=train.strategy.num_nodes,
        strategy=build_strategy(train, model),
        precision=lightning_precision(train),
        max_steps=train.max_steps or -1,
        max_epochs=train.max_epochs,
        accumulate_grad_batches=train.accumulate_grad_batches,
        gradient_clip_val=train.optim.grad_clip,
        logger=logger if logger else False,
        log_every_n_steps=train.log_every_n_steps,
        default_root_dir=str(output_dir),
        callbacks=callbacks,
        enable_checkpointing=train.checkpoint.every_n_steps is not None,
        enable_progress_bar=train.progress_bar,
        # The data module's step plan already gives each rank its own micro-batches.
        use_distributed_sampler=False,
        enable_model_summary=False,
        # FineTuningModule.setup turns train.val_every_n_steps into micro-batches of the epoch.
        val_check_interval=1,
        check_val_every_n_epoch=1,
        limit_val_batches=1.0 if module.validates else 0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(train.checkpoint.resume, checkpoint_dir))
    if trainer.is_global_zero:
        load_tokenizer(model).save_pretrained(export_dir)
    return export_dir


def resume_path(resume: str | None, checkpoint_dir: Path) -> str | None:
    """The checkpoint ``train.checkpoint.resume`` names: ``last`` is the newest in this run's directory."""
    if resume is None:
        return None
    if resume != "last":
        if not Path(resume).exists():
            raise ConfigError(f"train.checkpoint.resume={resume}: no such checkpoint")
        return resume
    steps = {
        int(match.group(1)): path
        for path in (checkpoint_dir.iterdir() if checkpoint_dir.is_dir() else [])
        if (match := CHECKPOINT_NAME.match(path.name))
    }
    return str(steps[max(steps)]) if steps else None
