"""Fit a model on a rewritten dataset with the Lightning Trainer and export it for transformers."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import Logger

from mindgap.config import MindgapConfig
from mindgap.data.datamodule import RewrittenDataModule
from mindgap.models.loading import load_tokenizer
from mindgap.models.resolve import resolve_model
from mindgap.training.checkpoints import MarkedCheckpoint, resume_path, run_fingerprint
from mindgap.training.module import FineTuningModule
from mindgap.training.strategy import build_strategy, lightning_precision

EXPORT_DIR = "model"
CHECKPOINT_DIR = "checkpoints"


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
    fingerprint = run_fingerprint(config)
    # Before the model loads: a checkpoint that cannot be resumed is refused at once.
    resume = resume_path(train.checkpoint.resume, checkpoint_dir, fingerprint)
    if train.checkpoint.every_n_steps is not None:
        callbacks.append(
            MarkedCheckpoint(
                fingerprint,
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
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    if trainer.is_global_zero:
        load_tokenizer(model).save_pretrained(export_dir)
    return export_dir
