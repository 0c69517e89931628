"""mindgap-train: fine-tune on rewritten records (the data module runs the rewriting stage when needed)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from mindgap.app import run_app, run_cli, stage_tracker
from mindgap.config import CONFIG_DIR, MindgapConfig, register_configs
from mindgap.training.run import run_training

register_configs()


def train(config: MindgapConfig, output_dir: Path) -> Path:
    """Train and return the exported model directory."""
    tags = [f"loss:{config.train.loss.name}", f"rewrite:{config.rewrite.strategy}", f"data:{config.data.name}"]
    tracker = stage_tracker(config, output_dir, "train", tags)
    try:
        return run_training(config, output_dir, tracker.logger)
    finally:
        tracker.finish()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    run_app(cfg, MindgapConfig, train, "train")


def main() -> None:
    run_cli(_hydra_main, "train")


if __name__ == "__main__":
    main()
