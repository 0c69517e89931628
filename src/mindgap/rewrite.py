"""mindgap-rewrite: rewrite an expert data set with the model itself."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from mindgap.app import run_app, run_cli, stage_tracker
from mindgap.config import CONFIG_DIR, MindgapConfig, register_configs
from mindgap.rewriting.run import finished_dataset, run_rewrite_stage

register_configs()


def rewrite(config: MindgapConfig, output_dir: Path) -> Path:
    """Rewrite into ``output_dir``, reusing a dataset already written there for the same inputs."""
    finished = finished_dataset(config, output_dir)
    if finished is not None:
        return finished
    tracker = stage_tracker(config, output_dir, "rewrite")
    try:
        return run_rewrite_stage(config, output_dir, tracker)
    finally:
        tracker.finish()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="rewrite")
def _hydra_main(cfg: DictConfig) -> None:
    run_app(cfg, MindgapConfig, rewrite, "rewrite")


def main() -> None:
    run_cli(_hydra_main, "rewrite")


if __name__ == "__main__":
    main()
