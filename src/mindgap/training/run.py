"""Fit a model on a rewritten dataset with the Lightning Trainer and export it for transformers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import Logger

from mindgap import publish
from mindgap.app import is_rank_zero
from mindgap.config import MindgapConfig
from mindgap.data.datamodule import RewrittenDataModule
from mindgap.models.loading import ModelSource, load_tokenizer, model_fingerprint
from mindgap.models.resolve import resolve_model
from mindgap.rewriting.run import MANIFEST
from mindgap.tracking import AppendingCSVLogger
from mindgap.training.checkpoints import CHECKPOINT_NAME, MarkedCheckpoint, resume_path, run_fingerprint
from mindgap.training.module import FineTuningModule
from mindgap.training.strategy import build_strategy, lightning_precision

EXPORT_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
# Written after the export: the run is finished, and what it computed from (finished_training).
FINISHED = "finished.json"


def training_fingerprint(config: MindgapConfig, model: ModelSource) -> dict[str, str]:
    """Per part, what a run computes from: its settings (run_fingerprint), the content of its initial weights and
    the fingerprint of its dataset's manifest. Checkpoints and finished runs carry it, so that other weights at
    the same path (an earlier round retrained) or another dataset published at ``train.dataset_path`` are never
    resumed or reused."""
    dataset = config.train.dataset_path
    manifest = Path(dataset).parent / MANIFEST if dataset is not None else None
    return {
        **run_fingerprint(config),
        "initial weights": model_fingerprint(model, config.cache_dir),
        "dataset content": json.loads(manifest.read_text())["fingerprint"] if manifest and manifest.is_file() else "",
    }


def finished_training(config: MindgapConfig, output_dir: Path) -> Path | None:
    """The exported model of ``output_dir`` when the same run (training_fingerprint) finished there: a rerun (a
    resumed pipeline, a sweep run again) reuses it instead of training again."""
    marker, export_dir = output_dir / FINISHED, output_dir / EXPORT_DIR
    if not (marker.is_file() and export_dir.is_dir()):
        return None
    model = resolve_model(config.model, config.cache_dir, config.data_root)
    return export_dir if json.loads(marker.read_text()) == training_fingerprint(config, model) else None


def _start_step(resume: str | None) -> int | None:
    """The step a run starts from: 0 fresh, the checkpoint's step resumed; None for a checkpoint named otherwise."""
    if resume is None:
        return 0
    match = CHECKPOINT_NAME.match(Path(resume).name)
    return int(match.group(1)) if match else None


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
    fingerprint = training_fingerprint(config, model)
    # Before the model loads: a checkpoint that cannot be resumed is refused at once.
    resume = resume_path(train.checkpoint.resume, checkpoint_dir, fingerprint)
    start = _start_step(resume)
    if is_rank_zero():
        # From here the directory's export is this run's to write: an earlier run's marker no longer vouches for it.
        publish.remove(output_dir / FINISHED)
    for item in logger if isinstance(logger, list) else [logger]:
        if isinstance(item, AppendingCSVLogger) and start is not None:
            # Steps the run computes again (all of them when it starts afresh) are logged again, not twice.
            item.forget_from(start)
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
        publish.write_json(output_dir / FINISHED, fingerprint)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every rank returns once the export is whole: the next stage (a round's rewrite) reads and hashes it.
        torch.distributed.barrier()
    return export_dir
