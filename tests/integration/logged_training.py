"""A training run that logs every step's metrics to ``OUTPUT_DIR/csv/run/metrics.csv``.

``python -m tests.integration.logged_training OUTPUT_DIR OVERRIDE...``. Multi-process strategies
re-run this script in every rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import CSVLogger

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.paths import CONFIG_DIR
from mindgap.training.run import run_training


def main() -> None:
    output_dir, *overrides = sys.argv[1:]
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"output_dir={output_dir}"])
    logger = CSVLogger(save_dir=output_dir, name="csv", version="run")
    run_training(to_typed(cfg, MindgapConfig), Path(output_dir), logger=logger)


if __name__ == "__main__":
    main()
