"""The one module that talks to Weights & Biases (and its CSV / no-op stand-ins).

Training hands ``lightning_logger`` to the Trainer; the other stages use a ``Tracker``
built on the same Lightning logger objects, so every stage logs through one code path.
Metric keys follow one scheme: ``train/``, ``val/``, ``is/<source>/...``, ``rewrite/...``,
``eval/<bench>/...``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from mindgap import publish
from mindgap.config import LoggerConfig
from mindgap.records import SOURCES


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing metrics.csv is continued instead of deleted."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                # The columns so far, so that new rows line up (and new keys widen the header).
                self.metrics_keys = next(csv.reader(handle), [])


class AppendingCSVLogger(CSVLogger):
    """A CSVLogger whose metrics.csv survives a resumed run: its rows are appended to the earlier ones."""

    def forget_from(self, step: int) -> None:
        """Drop the rows of ``step`` and later: the steps a resumed (or restarted) run computes and logs again."""
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file():
            return
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header, rows = reader.fieldnames or [], [row for row in reader if int(row["step"]) < step]
        kept = io.StringIO()
        writer = csv.DictWriter(kept, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        publish.write_text(path, kept.getvalue())

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def lightning_logger(
    config: LoggerConfig,
    save_dir: Path,
    run_name: str,
    experiment_name: str,
    hyperparameters: dict[str, Any],
    job_type: str,
    tags: Sequence[str] = (),
) -> Logger | None:
    """A Lightning logger for ``config.backend``, with the resolved config recorded; None for ``none``.

    W&B runs carry ``config.tags`` followed by ``tags`` (the stage's own, such as the loss).
    """
    if config.backend == "none":
        return None
    save_dir.mkdir(parents=True, exist_ok=True)
    if config.backend == "csv":
        logger: Logger = AppendingCSVLogger(save_dir=str(save_dir), name="csv", version=run_name)
    else:
        os.environ.setdefault("WANDB_SILENT", "true")
        logger = WandbLogger(
            name=run_name,
            save_dir=str(save_dir),
            project=config.project,
            entity=config.entity,
            group=config.group or experiment_name,
            tags=[*config.tags, *tags],
            offline=config.mode == "offline",
            job_type=job_type,
            # Stages can nest (training's data module may run the rewriting stage): runs must coexist.
            reinit="create_new",
        )
        # Lightning always passes anonymous=None, and W&B warns on every run that the setting has no effect.
        logger._wandb_init.pop("anonymous", None)
    logger.log_hyperparams(hyperparameters)
    return logger


def log_weight_histograms(loggers: list[Logger], counts: torch.Tensor, edges: torch.Tensor, step: int) -> None:
    """``is/<source>/log10_weight`` histograms (W&B only) from per-source bin counts [len(SOURCES), bins]."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        histograms = {
            f"is/{source}/log10_weight": wandb.Histogram(np_histogram=(row.tolist(), edges.tolist()))
            for source, row in zip(SOURCES, counts.cpu(), strict=True)
            if row.sum() > 0
        }
        if histograms:
            # The key WandbLogger steps its own metrics by, so histograms line up with the scalars.
            logger.experiment.log({**histograms, "trainer/global_step": step})


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

    def log_summary(self, values: dict[str, Any]) -> None:
        """Run-level results (the W&B run summary; ``summary.json`` beside the CSV metrics)."""
        if isinstance(self.logger, WandbLogger):
            self.logger.experiment.summary.update(values)
        elif isinstance(self.logger, CSVLogger):
            path = Path(self.logger.log_dir) / "summary.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values, indent=2, default=str))

    def finish(self) -> None:
        if self.logger is None:
            return
        self.logger.finalize("success")
        if isinstance(self.logger, WandbLogger):
            self.logger.experiment.finish()
