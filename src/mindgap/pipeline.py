"""mindgap-pipeline: rewrite, then train, then evaluate, through the same functions as the three apps."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from mindgap.app import is_rank_zero, run_app, run_cli
from mindgap.config import CONFIG_DIR, MindgapConfig, register_configs
from mindgap.errors import ConfigError
from mindgap.eval import evaluate
from mindgap.rewrite import rewrite
from mindgap.train import train

register_configs()


def pipeline(config: MindgapConfig, output_dir: Path) -> float:
    """Run the three stages under ``output_dir/{rewrite,train,eval}``; return the mean eval score."""
    dataset_path = rewrite(config, output_dir / "rewrite")
    if dataset_path is None:
        raise ConfigError("rewrite.shard_index runs one shard of mindgap-rewrite; the pipeline needs them all")
    config.train.dataset_path = str(dataset_path)
    model_dir = train(config, output_dir / "train")
    if not is_rank_zero():
        # A multi-process training run re-runs the app in each extra process; only rank zero evaluates.
        return float("nan")
    score = evaluate(config, output_dir / "eval", str(model_dir))
    if is_rank_zero():
        print(f"mindgap-pipeline: mean eval score {score:.4f}", flush=True)
    return score


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pipeline")
def _hydra_main(cfg: DictConfig) -> float:
    return run_app(cfg, MindgapConfig, pipeline, "pipeline")


def main() -> None:
    run_cli(_hydra_main, "pipeline")


if __name__ == "__main__":
    main()
