"""mindgap-eval: sample answers on benchmarks and score them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mindgap.app import run_app, run_cli, stage_tracker
from mindgap.config import CONFIG_DIR, MindgapConfig, register_configs
from mindgap.evaluation.run import run_evaluation
from mindgap.models import resolve_model_path

register_configs()


def evaluate(config: MindgapConfig, output_dir: Path, model_path: str | None = None) -> float:
    """Evaluate ``model_path`` (default: eval.model_path, else the configured model); return the mean score."""
    model_path = (
        model_path or config.eval.model_path or resolve_model_path(config.model, config.cache_dir, config.data_root)
    )
    tracker = stage_tracker(config, output_dir, "eval")
    try:
        results: dict[str, Any] = run_evaluation(config, output_dir, model_path, tracker)
    finally:
        tracker.finish()
    return next(iter(results["mean"].values()))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> float:
    return run_app(cfg, MindgapConfig, evaluate, "eval")


def main() -> None:
    run_cli(_hydra_main, "eval")


if __name__ == "__main__":
    main()
