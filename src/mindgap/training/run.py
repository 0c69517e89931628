"""Fit a model on a rewritten dataset with the Lightning Trainer and export it for transformers."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import Logger

from mindgap.config import MindgapConfig
from mindgap.data.datamodule import RewrittenDataModule
from mindgap.models import load_tokenizer, resolve_model_path
from mindgap.training.module import FineTuningModule

EXPORT_DIR = "model"


def run_training(config: MindgapConfig, output_dir: Path, logger: Logger | None) -> Path:
    """Train (rewriting first when the dataset is missing) and return the exported Hugging Face model."""
    train = config.train
    seed_everything(config.seed, workers=True)
    model_path = resolve_model_path(config.model, config.cache_dir, config.data_root)
    datamodule = RewrittenDataModule(config, output_dir)
    module = FineTuningModule(model_path, config.model.dtype, train.optim, train.loss)
    trainer = Trainer(
        accelerator=train.strategy.accelerator,
        devices=train.strategy.devices,
        num_nodes=train.strategy.num_nodes,
        strategy="ddp" if train.strategy.name == "ddp" else "auto",
        precision=train.strategy.precision,
        max_steps=train.max_steps or -1,
        max_epochs=train.max_epochs,
        accumulate_grad_batches=train.accumulate_grad_batches,
        gradient_clip_val=train.optim.grad_clip,
        logger=logger if logger is not None else False,
        log_every_n_steps=train.log_every_n_steps,
        default_root_dir=str(output_dir),
        enable_checkpointing=False,
        # The data module's step plan already gives each rank its own micro-batches.
        use_distributed_sampler=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    export_dir = output_dir / EXPORT_DIR
    if trainer.is_global_zero:
        assert module.model is not None
        module.model.save_pretrained(export_dir)
        load_tokenizer(model_path).save_pretrained(export_dir)
    return export_dir
