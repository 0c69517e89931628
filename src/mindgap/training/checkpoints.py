"""Checkpoints a run may resume from: complete ones (marked after the save) of the same run (fingerprinted).

A checkpoint ``step-NNNNNN.ckpt`` (a file, or a directory of shards under fsdp2) counts only once
``step-NNNNNN.ckpt.complete`` exists beside it: rank zero writes that marker after every rank has
finished saving, with the run fingerprint, per part, of what decides the training. Resuming another
run's checkpoint (another loss, data set, optimiser, strategy or batch layout in the same output
directory) is refused with the differing part named.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mindgap import publish
from mindgap.config import MindgapConfig
from mindgap.errors import ConfigError
from mindgap.fingerprints import config_fingerprint
from mindgap.rewriting.run import SCHEDULING_KEYS

CHECKPOINT_NAME = re.compile(r"step-(\d+)(\.ckpt)?$")
MARKER_SUFFIX = ".complete"
START_FRESH = "set train.checkpoint.resume=null (or use another output_dir) to start from the initial model"


def run_fingerprint(config: MindgapConfig) -> dict[str, str]:
    """Per part, a fingerprint of the settings that decide what training computes (not where it logs)."""
    train = config.train
    rewrite = {key: value for key, value in dataclasses.asdict(config.rewrite).items() if key not in SCHEDULING_KEYS}
    parts: dict[str, Any] = {
        "model": dataclasses.asdict(config.model),
        "data": {
            "data": dataclasses.asdict(config.data),
            "dataset_path": train.dataset_path,
            "rewrite": rewrite if train.dataset_path is None else None,
            "prompt_type": config.prompt_type,
            "val": dataclasses.asdict(train.val) if train.val is not None else None,
            "val_share": train.val_share,
            "max_length": train.max_length,
            "overlong": train.overlong,
        },
        "loss": dataclasses.asdict(train.loss),
        # The schedule's length decides the learning rate of every step.
        "optimiser": {
            "optim": dataclasses.asdict(train.optim),
            "max_steps": train.max_steps,
            "max_epochs": train.max_epochs,
        },
        "strategy": {"strategy": dataclasses.asdict(train.strategy), "precision": train.precision},
        "batch layout": {
            "micro_batch_size": train.micro_batch_size,
            "accumulate_grad_batches": train.accumulate_grad_batches,
        },
        "seed": config.seed,
    }
    return {name: config_fingerprint(value) for name, value in parts.items()}


def marker_of(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + MARKER_SUFFIX)


class MarkedCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, marking each checkpoint complete (with the run fingerprint) after it is saved."""

    def __init__(self, fingerprint: dict[str, str], **kwargs: Any):
        super().__init__(**kwargs)
        self.fingerprint = fingerprint

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        # Trainer.save_checkpoint returns once every rank has written its part.
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            marker = {"fingerprint": self.fingerprint, "step": trainer.global_step}
            publish.write_json(marker_of(Path(filepath)), marker, indent=2)

    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        # The marker first: a kill in between must not leave a marked, half-deleted checkpoint.
        if trainer.is_global_zero:
            publish.remove(marker_of(Path(filepath)))
        super()._remove_checkpoint(trainer, filepath)


def _check_provenance(checkpoint: Path, fingerprint: dict[str, str]) -> None:
    marker = marker_of(checkpoint)
    if not marker.is_file():
        raise ConfigError(f"checkpoint {checkpoint} is incomplete (no {marker.name}: killed mid-save); {START_FRESH}")
    saved = json.loads(marker.read_text())["fingerprint"]
    differing = [part for part in fingerprint if saved.get(part) != fingerprint[part]]
    if differing:
        raise ConfigError(
            f"checkpoint {checkpoint} is of another run: its {', '.join(differing)} differ from this config's; "
            f"{START_FRESH}"
        )


def resume_path(resume: str | None, checkpoint_dir: Path, fingerprint: dict[str, str]) -> str | None:
    """The checkpoint ``train.checkpoint.resume`` names: ``last`` is the newest complete one in this run's directory."""
    if resume is None:
        return None
    if resume != "last":
        if not Path(resume).exists():
            raise ConfigError(f"train.checkpoint.resume={resume}: no such checkpoint")
        _check_provenance(Path(resume), fingerprint)
        return resume
    steps = {
        int(match.group(1)): path
        for path in (checkpoint_dir.iterdir() if checkpoint_dir.is_dir() else [])
        if (match := CHECKPOINT_NAME.match(path.name))
    }
    for step in sorted(steps, reverse=True):
        if not marker_of(steps[step]).is_file():
            print(f"train: checkpoint {steps[step]} is incomplete (killed while saving): skipped", flush=True)
            continue
        _check_provenance(steps[step], fingerprint)
        return str(steps[step])
    if steps:
        print(f"train: no complete checkpoint in {checkpoint_dir}: starting from the initial model", flush=True)
    return None
