"""mindgap-compare: the side-by-side table of several mindgap-eval results directories."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from mindgap.app import run_app, run_cli
from mindgap.config import register_configs
from mindgap.evaluation.config import CompareConfig
from mindgap.paths import CONFIG_DIR

if TYPE_CHECKING:
    from mindgap.evaluation.compare import Comparison

register_configs()


def compare_app(config: CompareConfig, output_dir: Path) -> Comparison:
    """Read every results directory, write comparison.{md,csv,json} to ``output_dir`` and print the table."""
    from mindgap.evaluation.compare import compare, load_variant, write_comparison

    labels = config.labels or [None] * len(config.results)
    variants = [load_variant(results_dir, label) for results_dir, label in zip(config.results, labels, strict=True)]
    comparison = compare(variants, config.baseline, config.bootstrap)
    write_comparison(comparison, output_dir)
    print(comparison.markdown(), flush=True)
    return comparison


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="compare")
def _hydra_main(cfg: DictConfig) -> Comparison:
    return run_app(cfg, CompareConfig, compare_app, "compare")


def main() -> None:
    run_cli(_hydra_main, "compare")


if __name__ == "__main__":
    main()
