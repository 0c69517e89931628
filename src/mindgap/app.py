"""What the four Hydra apps share: typed config, output directory, one-line errors, the final message.

The apps import their stage's code (torch, transformers, Lightning: 15-20 s on 2 cores) inside the job,
after the config is validated, so that a misspelt key or a wrong value fails within a second.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mindgap.config import CommonConfig, to_typed
from mindgap.errors import MindgapError

if TYPE_CHECKING:
    from mindgap.tracking import Tracker

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
    # "Seed set to 0" at every training run, twice (Lightning's handler and Hydra's): the seed is in the config.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")


def _describe(error: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages folded into one line."""
    parts = [str(error).splitlines()[0].strip()] if str(error).strip() else [type(error).__name__]
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        parts.append(str(cause).splitlines()[0].strip())
    options = getattr(error, "options", None)
    if options:
        parts.append(f"available: {', '.join(options)}")
    full_key = getattr(cause, "full_key", None) or getattr(error, "full_key", None)
    if full_key:
        parts.append(f"(key: {full_key})")
    return " ".join(parts)


def run_cli(hydra_main: Callable[[], Any], app: str) -> None:
    """Console-script entry: composition errors (misspelt key, wrong type, unknown option) as one line."""
    # Let Hydra's errors reach this function instead of being printed by Hydra over several lines.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as error:
        print(f"mindgap-{app}: error: {_describe(error)}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_app(cfg: DictConfig, schema: type[C], job: Callable[[C, Path], Any], app: str) -> Any:
    """Validate ``cfg`` against ``schema``, run ``job`` in the output directory, report one line on bad input."""
    try:
        config = to_typed(cfg, schema)
        quiet_libraries()
        output_dir = Path(HydraConfig.get().runtime.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        result = job(config, output_dir)
    except MindgapError as error:
        print(f"mindgap-{app}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    if is_rank_zero():
        print(f"mindgap-{app}: outputs in {output_dir}", flush=True)
    return result


def is_rank_zero() -> bool:
    """False in the extra processes a multi-process training run starts (they re-run the app)."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def stage_tracker(
    config: CommonConfig, save_dir: Path, stage: str, tags: Sequence[str] = (), label: str | None = None
) -> Tracker:
    """A tracker for one stage run, grouped by experiment and tagged with ``tags``.

    The run is named ``<experiment>-<stage>[-<label>]-seed<seed>``: ``label`` tells apart the runs of one
    stage (the models of one evaluation).
    """
    from mindgap.tracking import Tracker, lightning_logger

    stage_name = stage if label is None else f"{stage}-{label}"
    return Tracker(
        lightning_logger(
            config.logger,
            save_dir,
            run_name=f"{config.experiment_name}-{stage_name}-seed{config.seed}",
            experiment_name=config.experiment_name,
            hyperparameters=dataclasses.asdict(config),
            job_type=stage,
            tags=tags,
        )
    )
