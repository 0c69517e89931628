"""The one module that talks to Weights & Biases (and its CSV / no-op stand-ins).

Training hands ``lightning_logger`` to the Trainer; the other stages use a ``Tracker``
built on the same Lightning logger objects, so every stage logs through one code path.
Metric keys follow one scheme: ``train/``, ``val/``, ``is/<source>/...``, ``rewrite/...``,
``eval/<bench>/...``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from mindgap.config import LoggerConfig


def lightning_logger(
    config: LoggerConfig,
    save_dir: Path,
    run_name: str,
    experiment_name: str,
    hyperparameters: dict[str, Any],
    job_type: str,
) -> Logger | None:
    """A Lightning logger for ``config.backend``, with the resolved config recorded; None for ``none``."""
    if config.backend == "none":
        return None
    save_dir.mkdir(parents=True, exist_ok=True)
    if config.backend == "csv":
        logger: Logger = CSVLogger(save_dir=str(save_dir), name="csv", version=run_name)
    else:
        os.environ.setdefault("WANDB_SILENT", "true")
        logger = WandbLogger(
            name=run_name,
            save_dir=str(save_dir),
            project=config.project,
            entity=config.entity,
            group=config.group or experiment_name,
            tags=list(config.tags),
            offline=config.mode == "offline",
            job_type=job_type,
            # Stages can nest (training's data module may run the rewriting stage): runs must coexist.
            reinit="create_new",
        )
    logger.log_hyperparams(hyperparameters)
    return logger


class Tracker:
    """Metrics, tables and a summary for the stages that run outside a Lightning Trainer."""

    def __init__(self, logger: Logger | None):
        self.logger = logger

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if isinstance(self.logger, WandbLogger):
            self.logger.log_table(key=key, columns=columns, data=rows)
        elif isinstance(self.logger, CSVLogger):
            path = Path(self.logger.log_dir) / f"{key.replace('/', '_')}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows(rows)

    def finish(self) -> None:
        if self.logger is None:
            return
        self.logger.finalize("success")
        if isinstance(self.logger, WandbLogger):
            self.logger.experiment.finish()
