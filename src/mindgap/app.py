"""What the four Hydra apps share: typed config, output directory, one-line errors, the final message."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mindgap.config import CommonConfig, to_typed
from mindgap.errors import MindgapError
from mindgap.tracking import Tracker, lightning_logger

C = TypeVar("C", bound=CommonConfig)


def quiet_libraries() -> None:
    """Keep third-party progress bars and warnings out of the apps' output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")


def run_app(cfg: DictConfig, schema: type[C], job: Callable[[C, Path], Any], app: str) -> Any:
    """Validate ``cfg`` against ``schema``, run ``job`` in the output directory, report one line on bad input."""
    quiet_libraries()
    try:
        config = to_typed(cfg, schema)
        output_dir = Path(HydraConfig.get().runtime.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        result = job(config, output_dir)
    except MindgapError as error:
        print(f"mindgap-{app}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"mindgap-{app}: outputs in {output_dir}", flush=True)
    return result


def stage_tracker(config: CommonConfig, save_dir: Path, stage: str) -> Tracker:
    """A tracker for one stage run, named ``<experiment>/<stage>`` and grouped by experiment."""
    return Tracker(
        lightning_logger(
            config.logger,
            save_dir,
            run_name=f"{config.experiment_name}-{stage}-seed{config.seed}",
            experiment_name=config.experiment_name,
            hyperparameters=dataclasses.asdict(config),
            job_type=stage,
        )
    )
