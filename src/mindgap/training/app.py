"""mindgap-train: fine-tune on rewritten records (the data module runs the rewriting stage when needed).

The stage's code is imported by the job, once the config is valid (see ``mindgap.app``).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from mindgap.app import is_rank_zero, run_app, run_cli, stage_tracker
from mindgap.config import MindgapConfig, register_configs
from mindgap.paths import CONFIG_DIR

register_configs()


STEP_METRICS = "metrics.csv"


def train(config: MindgapConfig, output_dir: Path, label: str | None = None) -> Path:
    """Train and return the exported model directory; ``label`` names the run among a pipeline's variants.

    Besides the configured logger, every step's metrics go to ``output_dir/metrics.csv``, which the
    pipeline's report and the analysis notebook read whatever the logger. A resumed run appends to it; a
    finished one is reused.
    """
    from mindgap.tracking import AppendingCSVLogger
    from mindgap.training.run import finished_training, run_training

    finished = finished_training(config, output_dir)
    if finished is not None:
        if is_rank_zero():
            print(
                f"mindgap-train: reusing the finished run in {output_dir} (same settings, weights and data)", flush=True
            )
        return finished
    tags = [f"loss:{config.train.loss.name}", f"rewrite:{config.rewrite.strategy}", f"data:{config.data.name}"]
    tracker = stage_tracker(config, output_dir, "train", tags, label=label)
    step_metrics = AppendingCSVLogger(save_dir=str(output_dir), name="", version="")
    loggers = [logger for logger in (tracker.logger, step_metrics) if logger is not None]
    try:
        return run_training(config, output_dir, loggers)
    finally:
        tracker.finish()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    run_app(cfg, MindgapConfig, train, "train")


def main() -> None:
    run_cli(_hydra_main, "train")


if __name__ == "__main__":
    main()
