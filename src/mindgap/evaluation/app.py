"""mindgap-eval: sample answers on benchmarks, score them, and compare models.

The stage's code is imported by the job, once the config is valid (see ``mindgap.app``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from mindgap.app import run_app, run_cli, stage_tracker
from mindgap.config import EvalAppConfig, MindgapConfig, register_configs
from mindgap.paths import CONFIG_DIR

if TYPE_CHECKING:
    from mindgap.tracking import Tracker

register_configs()


def evaluate(config: MindgapConfig, output_dir: Path, model_path: str | None = None) -> float:
    """Evaluate ``model_path``, else ``eval.models``, else the ``model`` config; compare several models.

    Prints the results table (the comparison for several models) and returns the first model's mean
    avg@n over the benchmarks.
    """
    from mindgap.evaluation.run import RESULTS_TABLE, run_evaluation

    def make_tracker(save_dir: Path, label: str | None, stage: str) -> Tracker:
        return stage_tracker(config, save_dir, stage, label=label)

    outcome = run_evaluation(config, output_dir, make_tracker, model_path)
    if outcome.comparison is not None:
        print(outcome.comparison.markdown(), flush=True)
    else:
        print((outcome.models[0].results_dir / RESULTS_TABLE).read_text(), flush=True)
    first = outcome.models[0].results
    return first["mean"][first["metrics"][0]]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> float:
    return run_app(cfg, EvalAppConfig, evaluate, "eval")


def main() -> None:
    run_cli(_hydra_main, "eval")


if __name__ == "__main__":
    main()
