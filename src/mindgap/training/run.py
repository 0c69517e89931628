"""Fit a model on a rewritten dataset with the Lightning Trainer and export it for transformers."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import Logger

from mindgap.config import MindgapConfig
from mindgap.data.datamodule import RewrittenDataModule
from mindgap.models import load_tokenizer, resolve_model_path
from mindgap.training.module import FineTuningModule

EXPORT_DIR = "model"


def run_training(
    config: MindgapConfig, output_dir: Path, logger: Logger | None, callbacks: list[Callback] | None = None
) -> Path:
    """Train (rewriting first when the dataset is missing) and return the exported Hugging Face model."""
    train = config.train
    seed_everything(config.seed, workers=True)
    model_path = resolve_model_path(config.model, config.cache_dir, config.data_root)
    datamodule = RewrittenDataModule(config, output_dir)
    export_dir = output_dir / EXPORT_DIR
    module = FineTuningModule(model_path, config.model.dtype, train.optim, train.loss, export_dir)
    trainer = Trainer(
        accelerator=train.strategy.accelerator,
        devices=train.strategy.devices,
        num_nodes=train.strategy.num_nodes,
        strategy="auto" if train.strategy.name == "single" else train.strategy.name,
        precision=train.strategy.precision,
        max_steps=train.max_steps or -1,
        max_epochs=train.max_epochs,
        accumulate_grad_batches=train.accumulate_grad_batches,
        gradient_clip_val=train.optim.grad_clip,
        logger=logger if logger is not None else False,
        log_every_n_steps=train.log_every_n_steps,
        default_root_dir=str(output_dir),
        callbacks=callbacks,
        enable_checkpointing=False,
        # The data module's step plan already gives each rank its own micro-batches.
        use_distributed_sampler=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    if trainer.is_global_zero:
        load_tokenizer(model_path).save_pretrained(export_dir)
    return export_dir
